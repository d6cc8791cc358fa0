"""ops/bulk.add_vertex_runs: which vertices share a bulk call, where each field row starts, and
which calls get strided (zero-copy) or indexed fields; checked against addresses worked out by hand."""

from __future__ import annotations

import numpy as np

import softipu as sp
from softipu.ops.bulk import add_vertex_runs


class Gather(sp.Vertex):
    """out = sum of the parts (a vector list) scaled by ``k``."""

    parts = sp.Input(sp.float32, sp.VECTOR_LIST)
    out = sp.Output(sp.float32)
    k = sp.Param(sp.int32)

    @staticmethod
    def compute(parts, out, k):
        out[...] = sum(parts) * k


def _groups(g: sp.Graph, cs) -> list:
    return g.vertex_tables[cs.id].bulk


def test_groups_rows_and_spacing_by_hand() -> None:
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    cs = g.add_compute_set("cs")
    # Six vertices in two key groups. Key 0 (given out of order) has evenly spaced out rows
    # (order 0, 1, 2 -> 0, 10, 20) and parts rows; key 1's out rows step 100 then 50: irregular.
    key = np.array([1, 0, 1, 0, 0, 1])
    order = np.array([2, 1, 0, 0, 2, 1])
    out = np.array([250, 10, 100, 0, 20, 200])
    parts = np.stack([out + 1000, out + 2000])
    tiles = np.array([3, 1, 3, 0, 2, 3])
    k = np.array([6, 5, 4, 7, 9, 8])  # int64: held as the field's int32
    add_vertex_runs(g, cs, Gather, [key], order, tiles, {"out": out, "parts": parts},
                    {"out": (sp.float32, 4), "parts": (sp.float32, 4)}, {"k": k})
    first, second = _groups(g, cs)
    np.testing.assert_array_equal(first.tiles, [0, 1, 2])
    np.testing.assert_array_equal(first.fields["k"], [7, 5, 9])
    assert first.fields["out"].is_strided and first.fields["out"].strides == (10, 1)
    np.testing.assert_array_equal(first.fields["out"].addresses()[:, 0], [0, 10, 20])
    for row, base in zip(first.fields["parts"], (1000, 2000), strict=True):
        assert row.is_strided
        np.testing.assert_array_equal(row.addresses(), base + np.array([[0], [10], [20]]) + np.arange(4))
    np.testing.assert_array_equal(second.tiles, [3, 3, 3])
    np.testing.assert_array_equal(second.fields["k"], [4, 8, 6])
    assert not second.fields["out"].is_strided
    np.testing.assert_array_equal(second.fields["out"].addresses(),
                                  np.array([[100], [200], [250]]) + np.arange(4))


def test_fine_key_splits_an_irregular_group_and_short_groups_are_strided() -> None:
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    cs = g.add_compute_set("cs")
    # One key group, out rows 0, 8, 16 then 100, 104: irregular as a whole; the fine key splits
    # it into a strided triple (step 8) and a strided pair (step 4).
    out = np.array([0, 8, 16, 100, 104])
    parts = np.stack([out + 500])
    add_vertex_runs(g, cs, Gather, [np.zeros(5)], np.arange(5), np.arange(5) % 4,
                    {"out": out, "parts": parts}, {"out": (sp.float32, 2), "parts": (sp.float32, 2)},
                    {"k": np.ones(5, np.int64)}, fine_key=np.array([0, 0, 0, 1, 1]))
    a, b = _groups(g, cs)
    assert a.fields["out"].is_strided and a.fields["out"].strides == (8, 1)
    assert b.fields["out"].is_strided and b.fields["out"].strides == (4, 1)
    np.testing.assert_array_equal(b.fields["parts"][0].addresses()[:, 0], [600, 604])
    assert a.fields["k"].dtype == np.int32


def test_no_vertices_adds_nothing() -> None:
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    cs = g.add_compute_set("cs")
    empty = np.zeros(0, np.int64)
    add_vertex_runs(g, cs, Gather, [empty], empty, empty, {"out": empty, "parts": empty[None]},
                    {"out": (sp.float32, 2), "parts": (sp.float32, 2)}, {"k": empty})
    assert _groups(g, cs) == []
