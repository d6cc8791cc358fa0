"""Virtual graphs (Poplar's createVirtualGraph): ops built on a view of IPU 1 map only onto IPU 1's
tiles and compute numpy's values."""

from __future__ import annotations

import numpy as np
import pytest

import softipu as sp
from softipu import program as P
from softipu.errors import MappingError, TargetError
from softipu.graph.virtual import VirtualGraph

TWO = sp.targets.ipu_model(tiles=4, bytes_per_tile=128 * 1024).with_num_ipus(2)


def _run(g, prog, inputs, outputs):
    eng = sp.Engine(g, [prog])
    for t, v in inputs.items():
        eng.write_tensor(t, v)
    eng.run(0)
    return [eng.read_tensor(o) for o in outputs]


def test_view_of_ipu1_has_local_tiles():
    g = sp.Graph(TWO)
    v = g.create_virtual_graph(4, 8)
    assert isinstance(v, sp.Graph) and v.num_tiles == 4 and v.target.num_tiles == 4 and v.root is g
    x = v.add_variable(sp.float32, (8,), name="x")
    assert x.graph is g  # tensors belong to the top-level graph
    v.set_tile_mapping(x[:4], 1)
    v.map_intervals(x, [4], [8], [3])
    assert g.tile_of(x).tolist() == [5] * 4 + [7] * 4
    assert v.tile_of(x).tolist() == [1] * 4 + [3] * 4
    assert [len(iv) for iv in v.get_tile_mapping(x)] == [0, 1, 0, 1]
    y = g.add_variable(sp.float32, (2,), name="y")
    g.set_tile_mapping(y, 0)  # on IPU 0: outside the view
    assert v.tile_of(y).tolist() == [-1, -1]
    m = v.resolved_mapping(sp.float32)  # the ops' interval reads, in local ids
    assert sorted(m.tiles[:].tolist()) == [-1, 1, 3] and len(m.tiles) == 3
    assert m.tiles_of(np.array([0, 4, 8])).tolist() == [1, 3, -1]


def test_matmul_and_add_on_ipu1_give_numpy_values_on_ipu1_tiles():
    g = sp.Graph(TWO)
    v = VirtualGraph.of_ipu(g, 1)
    prog = P.Sequence()
    a = v.add_variable(sp.float32, (6, 5), name="a")
    b = v.add_variable(sp.float32, (5, 7), name="b")
    sp.ops.map_linearly(v, a)
    sp.ops.map_linearly(v, b)
    c = sp.ops.matmul(v, a, b, prog, name="mm")
    d = sp.ops.add(v, c, c, prog, name="twice")
    rng = np.random.default_rng(0)
    av, bv = rng.standard_normal((6, 5), np.float32), rng.standard_normal((5, 7), np.float32)
    cv, dv = _run(g, prog, {a: av, b: bv}, [c, d])
    np.testing.assert_allclose(cv, av @ bv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dv, 2 * (av @ bv), rtol=1e-5, atol=1e-5)
    for t in (c, d):
        assert set(np.unique(g.tile_of(t)).tolist()) <= {4, 5, 6, 7}
    tiles = [int(t) for tab in g.vertex_tables for grp in (*tab.bulk, *tab.pending.values())
             for t in grp.tiles]
    assert tiles and min(tiles) >= 4  # every vertex on IPU 1


def test_tiles_outside_the_view_are_refused():
    g = sp.Graph(TWO)
    v = g.create_virtual_graph(4, 8)
    x = v.add_variable(sp.float32, (4,), name="x")
    with pytest.raises(MappingError, match="not in this virtual graph"):
        v.set_tile_mapping(x, 4)
    with pytest.raises(TargetError, match="whole IPUs"):
        g.create_virtual_graph(2, 6)
    with pytest.raises(TargetError):
        g.create_virtual_graph(0, 9)
    assert g.create_virtual_graph(0, 8).target.num_ipus == 2
    part = g.create_virtual_graph(5, 7)  # part of IPU 1
    assert part.num_tiles == 2 and part.create_virtual_graph(1, 2).tile_offset == 6
