"""The reduce plan's host work follows the structure, not the element count (issue 14/19 lowering
speed): the layout decision of a channels-last sum reads the mapping's intervals and at most a few
rows of the transposed view (it looked up every element's tile: 14.5 M lookups, 13 s for ResNet-50's
batch-norm gradient at batch 18); a sum over the rows of a concatenation (indexed view) keeps one
vertex group per piece with strided rows. Values against numpy."""

from __future__ import annotations

import numpy as np
import pytest

import softipu as sp
from softipu import program as P
from softipu.graph.graph import Graph
from softipu.graph.tensor import concat
from softipu.ops.reduce import reduce_sum


@pytest.fixture
def lookups(monkeypatch):
    seen = []
    real = Graph.tile_of

    def counting(self, t):
        seen.append(int(t.numel))
        return real(self, t)

    monkeypatch.setattr(Graph, "tile_of", counting)
    return seen


def test_channels_last_layout_decision_reads_few_elements(lookups):
    g = sp.Graph(sp.targets.ipu_model(tiles=16, bytes_per_tile=256 * 1024))
    x = g.add_variable(sp.float32, (4, 8, 8, 32), name="x")  # (N, H, W, C) storage
    sp.ops.map_linearly(g, x)
    prog = P.Sequence()
    y = reduce_sum(g, x.transpose([0, 3, 1, 2]), prog, dims=(0, 2, 3))  # per channel
    # The inner view (N, C, H*W) has 4 pieces in each (n, c) run of 64: counted to 33 (more than
    # the 32 outputs and popops' view's 16 intervals) within 1 + 2 + 4 + 8 runs, never all 8,192.
    assert sum(lookups) <= 15 * 64 + y.numel
    eng = sp.Engine(g, [prog])
    v = np.random.default_rng(0).standard_normal((4, 8, 8, 32)).astype(np.float32)
    eng.write_tensor(x, v)
    eng.run(0)
    np.testing.assert_allclose(eng.read_tensor(y), v.astype(np.float64).sum((0, 1, 2)), rtol=1e-5, atol=1e-4)


def test_rows_of_a_concatenation_make_one_group_per_piece(monkeypatch):
    g = sp.Graph(sp.targets.ipu_model(tiles=16, bytes_per_tile=256 * 1024))
    parts = [g.add_variable(sp.float32, (64, 24), name=f"p{i}") for i in range(3)]
    for p in parts:
        sp.ops.map_linearly(g, p)
    x = concat(parts, 1)  # (64, 72): indexed
    calls = []
    real = Graph.add_vertices

    def counting(self, cs, codelet, fields, tiles):
        calls.append(all(p.index is None for p in fields.get("parts", ())))
        return real(self, cs, codelet, fields, tiles)

    monkeypatch.setattr(Graph, "add_vertices", counting)
    prog = P.Sequence()
    y = reduce_sum(g, x, prog, dims=0)
    # A few vertex groups (output-run widths), each a list of 64 strided rows, no address lists.
    assert len(calls) <= 6 and all(calls)
    eng = sp.Engine(g, [prog])
    vals = [np.random.default_rng(i).standard_normal((64, 24)).astype(np.float32) for i in range(3)]
    for p, v in zip(parts, vals, strict=True):
        eng.write_tensor(p, v)
    eng.run(0)
    np.testing.assert_allclose(eng.read_tensor(y), np.concatenate(vals, 1).astype(np.float64).sum(0),
                               rtol=1e-5, atol=1e-4)
