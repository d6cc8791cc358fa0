"""Issue 19: a matmul's partials reduction as poplin builds it (lib/poplin/ConvReduce.cpp: one
ReduceAdd a tile over its contiguous region, divided between the workers), so its vertex state
does not grow with the rows (the batch of a convolution)."""

from __future__ import annotations

import numpy as np

import softipu as sp
from softipu import program as P
from softipu.ops.matmul import plan_matmul

T = sp.targets.ipu_model(tiles=8, bytes_per_tile=256 * 1024)


def _reduce(eng):
    return [(cs_id, c) for cs_id, c in eng.executable.compute_sets.items()
            if c.groups and c.groups[0].codelet.__name__.startswith("ReducePartials")]


def test_one_n_block_reduce_is_a_vertex_per_worker_share_by_hand():
    """64 x 2048 @ 2048 x 16 fp32: one M and one N block, K split over the 8 tiles, so each tile
    reduces 64 / 8 = 8 rows of 16. Whole-row shares of ceil(8 / 6) = 2 rows: 4 vertices a tile
    (was 8, one a row), each 32 elements from 8 partials. State each: out 8 B + partials
    4 + 8 x 8 = 76 B, 304 B a tile. Cycles (poplin's ReduceAdd per worker, REDUCE): 32 +
    32 / 4 loops x (3 x 8 + 7) = 280 on each of 4 workers: 6 x 280 = 1,680 a tile."""
    pl = plan_matmul(T, sp.float32, (64, 2048), (2048, 16))
    assert (pl.k_split, pl.n_split, pl.m_split) == (8, 1, 1)
    g = sp.Graph(T)
    a = g.add_variable(sp.float32, (64, 2048), name="a")
    b = g.add_variable(sp.float32, (2048, 16), name="b")
    for t in (a, b):
        sp.ops.map_linearly(g, t)
    prog = P.Sequence()
    c = sp.ops.matmul(g, a, b, prog)
    eng = sp.Engine(g, [prog])
    [(cs_id, reduce_cs)] = _reduce(eng)
    tiles = np.concatenate([grp.tiles for grp in reduce_cs.groups])
    assert np.bincount(tiles, minlength=8).tolist() == [4] * 8
    assert eng.executable.memory.cs_state_bytes[cs_id].tolist() == [4 * 76] * 8
    step = next(s for s in eng.executable.steps if s.name.endswith("/reduce"))
    assert step.compute_cycles == 6 * 280
    rng = np.random.default_rng(3)
    av, bv = rng.standard_normal(a.shape, np.float32), rng.standard_normal(b.shape, np.float32)
    eng.write_tensor(a, av)
    eng.write_tensor(b, bv)
    eng.run(0)
    np.testing.assert_allclose(eng.read_tensor(c), av.astype(np.float64) @ bv, rtol=1e-4, atol=1e-3)
