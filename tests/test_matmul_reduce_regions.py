"""Issues 11 and 19: a matmul reduce with several N blocks built as poplin builds it
(lib/poplin/ConvReduce.cpp ``reduce``: one ReduceAdd a tile over its rows of a block, divided
between the workers): a ReducePartials vertex per worker's share of whole rows of each tile's
chunk, its output ``rows x width`` at a row stride of N, not one vertex per output row. Hand
counts of vertices, vertex state and cycles; values against numpy on both engines."""

from __future__ import annotations

import numpy as np
import pytest

import softipu as sp
from softipu import program as P
from softipu.codelets._common import contraction_bound
from softipu.engine import chains
from softipu.ops.matmul import plan_matmul

T = sp.targets.ipu_model(tiles=16, bytes_per_tile=256 * 1024)
SHAPE_A, SHAPE_B = (130, 1024), (1024, 100)


def _build(dtype=sp.float32):
    g = sp.Graph(T)
    a = g.add_variable(dtype, SHAPE_A, name="a")
    b = g.add_variable(dtype, SHAPE_B, name="b")
    for t in (a, b):
        sp.ops.map_linearly(g, t)
    prog = P.Sequence()
    c = sp.ops.matmul(g, a, b, prog)
    return g, prog, a, b, c


def _values(dtype):
    rng = np.random.default_rng(11)
    return (rng.standard_normal(SHAPE_A).astype(dtype.numpy), rng.standard_normal(SHAPE_B).astype(dtype.numpy))


def _run(dtype, reference=False):
    g, prog, a, b, c = _build(dtype)
    eng = sp.Engine(g, [prog], {"engine.reference": reference})
    av, bv = _values(dtype)
    eng.write_tensor(a, av)
    eng.write_tensor(b, bv)
    eng.run(0)
    return eng, eng.read_tensor(c), av, bv


def _reduce(eng):
    [(cs_id, cs)] = [(i, cs) for i, cs in eng.executable.compute_sets.items()
                     if cs.groups and cs.groups[0].codelet.__name__.startswith("ReducePartials")]
    return cs_id, cs


def test_two_n_blocks_reduce_by_hand():
    """130 x 1024 @ 1024 x 100 fp32 on 16 tiles: one M block of 130 rows, N blocks of 56 and 44,
    K split 8 ways. Each of a block's 8 tiles reduces a chunk of ceil(130 / 8) = 17 rows (the
    last 130 - 7 x 17 = 11), in worker shares of ceil(17 / 6) = 3 rows: 3, 3, 3, 3, 3, 2 (6
    vertices) a 17-row chunk, 3, 3, 3, 2 (4) the last: 2 x (7 x 6 + 4) = 92 vertices (one a row
    and N block before: 2 x 130 = 260).

    State (graph.accounting): out 8 B + partials 4 + 8 x 8 B = 76 B a vertex: 6 x 76 = 456 B a
    tile (4 x 76 = 304 on the last chunk's; 17 x 76 = 1,292 before).

    Cycles (poplin's ReduceAdd per worker, codelets.matmul.REDUCE, 8 fp32 partials: 3 x 8 + 7 =
    31 a loop of 4): N block 0 (56 wide): 3 rows = 168 elements, 32 + 42 x 31 = 1,334; 2 rows =
    112, 32 + 28 x 31 = 900; a 17-row tile 6 x max(1,334, ceil((5 x 1,334 + 900) / 6) = 1,262)
    = 8,004, the slowest (N block 1, 44 wide: 1,055 and 714, 6 x 1,055 = 6,330)."""
    pl = plan_matmul(T, sp.float32, SHAPE_A, SHAPE_B)
    assert (pl.k_split, pl.n_split, pl.m_split, pl.blocks[2]) == (8, 2, 1, 56)
    g, prog, _, _, c = _build()
    eng = sp.Engine(g, [prog], estimate_only=True)
    cs_id, cs = _reduce(eng)
    tiles = np.concatenate([grp.tiles for grp in cs.groups])
    count = np.bincount(tiles, minlength=16)
    state = eng.executable.memory.cs_state_bytes[cs_id]
    for j in range(2):
        for h in range(8):
            tile = int(pl.tile_of(0, 0, j, h))
            assert count[tile] == (6 if h < 7 else 4)
            assert state[tile] == (456 if h < 7 else 304)
    assert count.sum() == 92
    eng.run(0)
    step = next(s for s in eng.executable.steps if s.name.endswith("/reduce"))
    assert step.compute_cycles == 8004
    # Every output row of N block j stays on the tile of its chunk (it holds one of its partials).
    mapping = g.tile_of(c)
    for j, (lo, hi) in enumerate(((0, 56), (56, 100))):
        want = np.array([int(pl.tile_of(0, 0, j, r // 17)) for r in range(130)])
        assert (mapping[:, lo:hi] == want[:, None]).all()


@pytest.mark.parametrize("dtype", [sp.float32, sp.float16])
def test_two_n_blocks_values_on_both_engines(dtype, monkeypatch):
    """numpy's product on the reference; the fast engine's fused chain within the contraction
    bound of it (fp16: the output's one rounding); unfused, the fast engine's vertices give the
    reference's bits (the reduce adds the partials in the same fixed order)."""
    ref_eng, ref, av, bv = _run(dtype, reference=True)
    exact = av.astype(np.float64) @ bv.astype(np.float64)
    tol = 1e-4 if dtype is sp.float32 else 2e-2
    np.testing.assert_allclose(ref.astype(np.float64), exact, rtol=tol, atol=tol * 10)
    eng, got, _, _ = _run(dtype)
    assert eng._interpreter._chains.fused(), "the matmul chain did not form"
    terms = np.abs(av.astype(np.float64)) @ np.abs(bv.astype(np.float64))
    out = np.float16 if dtype is sp.float16 else None
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    assert np.all(diff <= contraction_bound(terms, SHAPE_A[1], out=out))
    monkeypatch.setattr(chains, "FUSE_MATMULS", False)
    _, unfused, _, _ = _run(dtype)
    assert unfused.tobytes() == ref.tobytes()
