"""ops/bulk.add_vertex_runs: which vertices share a bulk call, where each field row starts, and
which calls get strided (zero-copy) or indexed fields; checked against addresses worked out by hand."""

from __future__ import annotations

import numpy as np

import softipu as sp
from codelets_for_tests import Gather
from softipu.ops.bulk import add_vertex_runs


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


def test_evenly_spaced_groups_are_one_call_and_compile_to_the_same_groups() -> None:
    """Key groups of one size whose starts step alike (rows of a 2-D grid of blocks) are one bulk
    call with grid fields; the compiler cuts it back into one strided group per key, as if each
    had been its own call."""
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    x = g.add_variable(sp.float32, (4096,), name="x")
    sp.ops.map_linearly(g, x)
    cs = g.add_compute_set("cs")
    # Three key groups of two vertices. In each, out steps 10 and parts 7; from group to group
    # out steps 100 and parts 50: one grid. A fourth group (one vertex) ends the run.
    key = np.array([0, 0, 1, 1, 2, 2, 3])
    out = np.array([0, 10, 100, 110, 200, 210, 900])
    parts = np.stack([1000 + np.array([0, 7, 50, 57, 100, 107, 990])])
    k = np.arange(7) + 1
    add_vertex_runs(g, cs, Gather, [key], np.arange(7), np.arange(7) % 4, {"out": out, "parts": parts},
                    {"out": (sp.float32, 4), "parts": (sp.float32, 4)}, {"k": k})
    grid, single = _groups(g, cs)
    assert grid.num_vertices == 6 and single.num_vertices == 1
    assert grid.fields["out"].slabs is not None  # a few ints, no address list
    np.testing.assert_array_equal(grid.fields["out"].addresses(), out[:6, None] + np.arange(4))
    np.testing.assert_array_equal(grid.fields["parts"][0].addresses(), parts[0, :6, None] + np.arange(4))
    g.add_vertex(cs, Gather, {"parts": [x[3000:3004]], "out": x[3100:3104], "k": 1}, tile=0)
    eng = sp.Engine(g, [sp.program.Sequence([sp.program.Execute(cs)])])
    groups = [gr for gr in eng.executable.compute_sets[cs.id].groups if gr.vertex_indices[0] < 7]
    groups.sort(key=lambda gr: int(gr.vertex_indices[0]))
    assert [gr.num_vertices for gr in groups] == [2, 2, 2, 1]
    for r, gr in enumerate(groups[:3]):
        assert gr.fields["out"].is_strided and gr.fields["out"].offset == x.offset + 100 * r
        assert gr.fields["out"].strides == (10, 1)
        assert gr.fields["parts"][0].strides == (7, 1)
        assert gr.fields["parts"][0].offset == x.offset + 1000 + 50 * r
        np.testing.assert_array_equal(gr.vertex_indices, [2 * r, 2 * r + 1])
        np.testing.assert_array_equal(gr.fields["k"], [2 * r + 1, 2 * r + 2])
        np.testing.assert_array_equal(gr.tiles, np.arange(2 * r, 2 * r + 2) % 4)
    # values: each vertex sums its one part times k
    host = np.arange(4096, dtype=np.float32)
    eng.write_tensor(x, host)
    eng.run(0)
    got = eng.read_tensor(x)
    for v in range(6):
        np.testing.assert_array_equal(got[out[v]:out[v] + 4], host[parts[0, v]:parts[0, v] + 4] * (v + 1))


def test_grid_ends_by_hand() -> None:
    """Where the run of groups from each group that one bulk call would hold ends (``_grid_ends``,
    worked out for all groups at once; add_vertex_runs reads it at each call's first group).

    Six groups of 2 vertices, one field row, step 4, length 3, first starts 0, 10, 20, 35, 45, 55:
    from 0 the starts step by 10 up to 20 (ends at 3), 20 -> 35 breaks the step; from 1 also 3;
    from 2 the pair 2, 3 (two alike groups always join; ends at 4); from 3 on they step by 10 again
    (ends at 6). A group not evenly spaced, with an empty field or of another size joins none.
    """
    from softipu.ops.bulk import _grid_ends

    bounds = np.arange(0, 14, 2)
    first = [0, 10, 20, 35, 45, 55]
    row = ([True] * 6, [4] * 6, first)
    assert _grid_ends(bounds, {"f": [row]}, {"f": [3] * 6}) == [3, 3, 4, 6, 6, 6]
    irregular = ([True, True, True, True, False, True], [4] * 6, first)
    assert _grid_ends(bounds, {"f": [irregular]}, {"f": [3] * 6}) == [3, 3, 4, 4, 5, 6]
    # a field of length 0, or another size, keeps a group out of any grid
    assert _grid_ends(bounds, {"f": [row]}, {"f": [3, 3, 0, 3, 3, 3]}) == [2, 2, 3, 6, 6, 6]
    three = ([True] * 3, [4] * 3, [0, 10, 20])
    assert _grid_ends(np.array([0, 2, 4, 7]), {"f": [three]}, {"f": [3] * 3}) == [2, 2, 3]
