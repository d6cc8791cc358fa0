"""A tile's runs of one output each (a matmul's output blocks summed over the row; the softmax
backward's row sum) reduced as popops does: one ContinuousReduce a worker's share, planned from
the mapping's intervals (no lookup per element, no address per element).

Oracles: numpy (float64 sums within :func:`contraction_bound`), cycle figures worked out by hand
from poplibs' getCycleEstimateReduceAllRegionsContinuous and findSplitsBetweenWorkers.
"""

from __future__ import annotations

import numpy as np
import pytest

import softipu as sp
from softipu import program as P
from softipu.codelets._common import contraction_bound
from softipu.ops.reduce import ReduceOp, reduce, reduce_sum
from softipu.ops.reduce_runs import worker_shares


def _blocks(shape, block, tiles: int, dtype=sp.float32):
    """``x`` mapped in ``block`` (rows, cols) blocks, block ``(i, j)`` on tile ``(i * cols + j) %
    tiles``: each tile holds rows of ``block[1]`` elements, a row's stride apart (a matmul's
    output blocks)."""
    g = sp.Graph(sp.targets.ipu_model(tiles=tiles, bytes_per_tile=256 * 1024))
    x = g.add_variable(dtype, shape, name="x")
    cols = shape[1] // block[1]
    for i in range(shape[0] // block[0]):
        for j in range(cols):
            g.set_tile_mapping(x[i * block[0] : (i + 1) * block[0], j * block[1] : (j + 1) * block[1]],
                               (i * cols + j) % tiles)
    return g, x


@pytest.mark.parametrize(("outputs", "shares"), [(7, (2, 2, 2, 1)), (6, (1,) * 6), (3, (1, 1, 1)),
                                                   (93, (16, 16, 16, 15, 15, 15)), (13, (3, 2, 2, 2, 2, 2))])
def test_worker_shares_as_popops_splits_them(outputs, shares) -> None:
    """findSplitsBetweenWorkers: 7 over 6 is 2,1,1,1,1,1, then the last share merged into another
    while the largest stays 2: 2,2,2,1. 13 is 3,2,2,2,2,2 and stays (2 + 2 and 3 + 2 are not 3)."""
    assert worker_shares(outputs, 6) == shares
    assert sum(shares) == outputs


def test_runs_of_a_tile_cost_a_continuous_reduce_a_worker_by_hand() -> None:
    """(7, 16) fp32 in blocks of 7 rows x 8 columns on 2 tiles, summed over the rows: each tile
    holds 7 runs of 8 floats, 16 apart, one output each. popops: one reduction of 7 outputs
    (innerFactor 8) split over the workers 2, 2, 2, 1; each share a ContinuousReduce of k outputs
    of 8 partials: k * (8 // 2) + 12 k + 10 + 7 = 16 k + 17, the largest 49; the tile runs it on
    6 worker slots: 6 x 49 = 294 cycles. (A ReduceSegments vertex a run: 7 x (6 x (1 + 12 + 17)
    + the supervisor's overhead).)"""
    g, x = _blocks((7, 16), (7, 8), 2)
    prog = P.Sequence()
    y = reduce_sum(g, x, prog, dims=1)
    eng = sp.Engine(g, [prog], estimate_only=True)
    eng.run(0)
    steps = {s.name: s for s in eng.executable.steps if s.compute_cycles}
    assert steps["reduce_sum/partials"].compute_cycles == 6 * (2 * 4 + 12 * 2 + 10 + 7) == 294
    assert y.shape == (7,)


def test_odd_runs_pay_the_odd_partials_cycles_by_hand() -> None:
    """(12, 14) fp16 in blocks of 12 x 7 on 2 tiles: 12 runs of 7 halves a tile, shares 2 each;
    7 // 4 = 1 a run (4 halves a cycle), 2 for the odd count: 2 x 1 + 2 + 24 + 17 = 45; x 6 = 270."""
    g, x = _blocks((12, 14), (12, 7), 2, sp.float16)
    prog = P.Sequence()
    reduce_sum(g, x, prog, dims=1)
    eng = sp.Engine(g, [prog], estimate_only=True)
    eng.run(0)
    steps = {s.name: s for s in eng.executable.steps if s.compute_cycles}
    assert steps["reduce_sum/partials"].compute_cycles == 6 * (2 * 1 + 2 + 2 * 12 + 10 + 7) == 270


@pytest.mark.parametrize("reference", [False, True])
@pytest.mark.parametrize(("dtype", "op"), [(sp.float32, ReduceOp.ADD), (sp.float16, ReduceOp.ADD),
                                           (sp.float32, ReduceOp.SQUARE_ADD), (sp.float32, ReduceOp.MAX),
                                           (sp.int32, ReduceOp.ADD)])
def test_matmul_blocks_summed_over_the_row_match_numpy(dtype, op, reference) -> None:
    """(96, 64) in 24 x 16 blocks over 12 tiles (4 blocks a tile row band), summed over the row:
    stage 1 runs on the tiles' runs, stage 2 gathers each row's 4 partials."""
    g, x = _blocks((96, 64), (24, 16), 12, dtype)
    prog = P.Sequence()
    y = reduce(g, x, prog, dims=1, op=op)
    a = np.random.default_rng(5).standard_normal((96, 64)) * 4
    a = a.astype(dtype.numpy)
    eng = sp.Engine(g, [prog], options={"engine.reference": reference})
    eng.write_tensor(x, a)
    eng.run(0)
    got = eng.read_tensor(y)
    wide = a.astype(np.float64)
    if op is ReduceOp.MAX:
        np.testing.assert_array_equal(got, a.max(axis=1))
    elif dtype is sp.int32:
        np.testing.assert_array_equal(got, a.sum(axis=1))
    else:
        v = wide**2 if op is ReduceOp.SQUARE_ADD else wide
        bound = contraction_bound(np.abs(v).sum(axis=1), 64)
        if dtype is sp.float16:  # written back in fp16: one rounding more
            bound = bound + np.spacing(np.abs(v.sum(axis=1)).astype(np.float16)).astype(np.float64)
        assert np.all(np.abs(got.astype(np.float64) - v.sum(axis=1)) <= bound)


def test_blocks_plan_from_the_mapping_without_element_lookups(monkeypatch) -> None:
    """The memory-order plan is kept (regions: a run a tile, 12 x 64 <= 6,144 elements): no tile
    lookup of the (R, outputs) view's elements (the old plan switched to it and read every
    element's address: 26 M at GPT-2 XL's row sum), only the output's."""
    g, x = _blocks((96, 64), (24, 16), 12)
    looked = []
    real = sp.Graph.tile_of
    monkeypatch.setattr(sp.Graph, "tile_of", lambda self, t: looked.append(t.numel) or real(self, t))
    prog = P.Sequence()
    reduce_sum(g, x, prog, dims=1)
    assert sum(looked) <= 96  # the output's tiles at most
    eng = sp.Engine(g, [prog], estimate_only=True)
    stage1 = next(c for c in eng.executable.compute_sets.values() if c.compute_set.name == "reduce_sum/partials")
    assert {grp.codelet.__name__ for grp in stage1.groups} == {"ReduceRun<ADD,float32>"}
    assert sum(grp.num_vertices for grp in stage1.groups) == 96 * 4  # a run a vertex, 4 a row


def test_sum_over_tokens_of_a_transposed_view_by_hand() -> None:
    """Logits stored (vocab 12, tokens 4) in blocks of 6 vocab rows x 2 tokens, one a tile (4
    tiles), read (tokens, vocab) and summed over the tokens (a decoder bias gradient): in storage
    order each tile holds 6 runs of 2 floats, 4 apart, one output each. popops: 6 workers of 1
    output each, ContinuousReduce 1 * (2 // 2) + 12 + 10 + 7 = 30; 6 x 30 = 180 cycles a tile
    (a ReduceSegments a run: 6 x (6 x 30 + the supervisor's overhead), over 6 times as many)."""
    g = sp.Graph(sp.targets.ipu_model(tiles=4, bytes_per_tile=64 * 1024))
    y = g.add_variable(sp.float32, (12, 4), name="y")
    for i, (v0, n0) in enumerate((v, n) for v in (0, 6) for n in (0, 2)):
        g.set_tile_mapping(y[v0 : v0 + 6, n0 : n0 + 2], i)
    prog = P.Sequence()
    out = reduce(g, y.T, prog, dims=0)
    eng = sp.Engine(g, [prog], estimate_only=True)
    eng.run(0)
    steps = {s.name: s for s in eng.executable.steps if s.compute_cycles}
    assert steps["reduce/partials"].compute_cycles == 6 * (1 * 1 + 12 + 10 + 7) == 180
    a = np.random.default_rng(2).standard_normal((12, 4)).astype(np.float32)
    run = sp.Engine(g, [prog])
    run.write_tensor(y, a)
    run.run(0)
    assert np.all(np.abs(run.read_tensor(out) - a.astype(np.float64).sum(1))
                  <= contraction_bound(np.abs(a.astype(np.float64)).sum(1), 4))


def test_a_tiles_partials_leave_it_side_by_side() -> None:
    """(96, 64) in 24 x 16 blocks over 12 tiles: a tile's 24 runs write 24 partials side by side,
    those of 24 consecutive rows, whose outputs lie on at most 2 of the output tiles (12 to 16
    outputs a tile): the gather stage reads at most 2 regions from any tile (ordered by input
    position, the partials of one row's 4 tiles would interleave: 24 to 48 regions a tile)."""
    from softipu.compiler.exchange import compute_set_traffic  # noqa: PLC0415

    g, x = _blocks((96, 64), (24, 16), 12)
    prog = P.Sequence()
    reduce_sum(g, x, prog, dims=1)
    ex = sp.Engine(g, [prog], estimate_only=True).executable
    stage2 = next(c for c in ex.compute_sets.values() if c.compute_set.name == "reduce_sum/reduce")
    traffic = compute_set_traffic(stage2, ex.mappings, ex.target)
    assert int(traffic.send_regions.max()) <= 2
