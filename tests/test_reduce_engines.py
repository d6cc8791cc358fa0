"""Reductions against numpy on both engines, over the fast engine's host paths: pieces cut mid-row
(rotated into columns), whole rows, stage 2 over contiguous or spread columns, chunked groups,
replicas; and the modeled cycles of a rotated piece worked out by hand.

Max and min are exact in any order; integer sums are bitwise; float sums may be accumulated in
another order by the fast engine, within :func:`softipu.codelets._common.contraction_bound`
(design.md principle 6), and both engines are within it of the exact (float64) sum.
"""

from __future__ import annotations

import numpy as np
import pytest

import softipu as sp
from softipu import program as P
from softipu.codelets._common import contraction_bound
from softipu.engine import fast
from softipu.ops.reduce import ReduceOp, reduce

OPS = (ReduceOp.ADD, ReduceOp.MAX, ReduceOp.MIN)
DIMS = (0, -1, None)
NUMPY = {ReduceOp.ADD: np.sum, ReduceOp.MAX: np.max, ReduceOp.MIN: np.min}


def _graph(tiles: int, shape, grain: int, dtype=sp.float32, replicas: int = 1):
    g = sp.Graph(sp.targets.ipu_model(tiles=tiles, bytes_per_tile=256 * 1024), replication_factor=replicas)
    x = g.add_variable(dtype, shape, name="x")
    sp.ops.map_linearly(g, x, grain_size=grain)
    prog = P.Sequence()
    outs = {(op, d): reduce(g, x, prog, dims=d, op=op) for op in OPS for d in DIMS}
    return g, x, prog, outs


def _run(g, x, prog, outs, a, reference: bool):
    eng = sp.Engine(g, [prog], options={"engine.reference": reference})
    eng.write_tensor(x, a)
    eng.run(0)
    return {k: eng.read_tensor(y) for k, y in outs.items()}


def _check(a: np.ndarray, outs: dict, lead: int = 0) -> None:
    """Each result against numpy (``lead`` replica axes first), fast against reference."""
    got = {ref: _run(*outs, a, ref) for ref in (False, True)}
    for (op, d), f in got[False].items():
        r = got[True][(op, d)]
        axis = None if d is None else (d % (a.ndim - lead)) + lead
        axes = tuple(range(lead, a.ndim)) if axis is None else axis
        if op is ReduceOp.ADD and a.dtype.kind == "f":
            k = int(np.prod([a.shape[i] for i in np.atleast_1d(axes)]))
            bound = contraction_bound(np.abs(a.astype(np.float64)).sum(axis=axes), k)
            exact = a.astype(np.float64).sum(axis=axes)
            assert np.all(np.abs(f - exact) <= bound), (op, d)
            assert np.all(np.abs(f.astype(np.float64) - r) <= bound), (op, d)
        else:
            np.testing.assert_array_equal(f, NUMPY[op](a, axis=axes), err_msg=f"{op} {d}")
            np.testing.assert_array_equal(f, r, err_msg=f"{op} {d}")


@pytest.mark.parametrize(("tiles", "shape", "grain"), [
    (3, (37, 61), 1),      # about 12 rows a tile, cut mid-row
    (7, (37, 61), 5),      # a grain that does not divide a row
    (16, (13, 5, 7), 1),   # 3-D; under one row (35) per tile for dim 0
    (5, (40, 64), 64),     # whole rows per tile: no rotation
    (11, (9, 300), 1),     # pieces shorter than a row
    (4, (30, 200), 1),     # 1.5 rows a tile: two phases
])
def test_reductions_match_numpy_on_both_engines(tiles, shape, grain) -> None:
    g, x, prog, outs = _graph(tiles, shape, grain)
    a = np.random.default_rng(tiles).standard_normal(shape).astype(np.float32)
    _check(a, (g, x, prog, outs))


def test_integer_reductions_are_exact_on_both_engines() -> None:
    g, x, prog, outs = _graph(7, (29, 41), 1, sp.int32)
    a = np.random.default_rng(9).integers(-1000, 1000, (29, 41)).astype(np.int32)
    _check(a, (g, x, prog, outs))


@pytest.mark.parametrize("replicas", [1, 2])
def test_many_small_chunks_rotate_each_their_own_rows(monkeypatch, replicas) -> None:
    """Groups cut into chunks of a few vertices (each with its own rotation plan); replicas make
    the partial rows a non-contiguous view."""
    monkeypatch.setattr(fast, "CHUNK_BYTES", 2048)
    g, x, prog, outs = _graph(17, (41, 96), 1, replicas=replicas)  # 231.5 elements a tile: 2.4 rows
    lead = (replicas,) if replicas > 1 else ()
    a = np.random.default_rng(7).standard_normal(lead + (41, 96)).astype(np.float32)
    _check(a, (g, x, prog, outs), lead=len(lead))


def test_rotated_piece_costs_the_vector_loop_by_hand() -> None:
    """4 tiles x 15 fp32 of a (10, 6) input: pieces at 0, 15, 30, 45 start 0 or 3 columns into a
    row. ReduceRows on one piece: 6 workers x (30 fixed + ceil(ceil(15 / 6) / 2) = 2 vectors
    + ceil(ceil(6 / 2) / 6) = 1 vector of stores) + the supervisor's overhead; the rotation is
    the host's business and costs nothing."""
    g = sp.Graph(sp.targets.ipu_model(tiles=4, bytes_per_tile=256 * 1024))
    x = g.add_variable(sp.float32, (10, 6), name="x")
    sp.ops.map_linearly(g, x, grain_size=1)
    assert np.bincount(g.tile_of(x).reshape(-1)).tolist() == [15] * 4
    prog = P.Sequence()
    reduce(g, x, prog, dims=0, op=ReduceOp.MAX)
    eng = sp.Engine(g, [prog], estimate_only=True)
    eng.run(0)
    step = next(s for s in eng.executable.steps if s.name == "reduce/partials")
    assert step.compute_cycles == 6 * (30 + 2 + 1) + g.target.supervisor_overhead_cycles


@pytest.mark.parametrize(("dtype", "ops"), [
    (sp.float16, (ReduceOp.ADD, ReduceOp.MAX, ReduceOp.SQUARE_ADD)),  # fp32 partials
    (sp.bool_, (ReduceOp.LOGICAL_OR, ReduceOp.LOGICAL_AND, ReduceOp.MAX)),
    (sp.int32, (ReduceOp.MUL, ReduceOp.MIN)),
])
def test_other_types_and_operators_through_rotated_pieces(dtype, ops) -> None:
    """A (23, 17) input over 6 tiles: pieces of 65-66 elements start mid-row."""
    g = sp.Graph(sp.targets.ipu_model(tiles=6, bytes_per_tile=256 * 1024))
    x = g.add_variable(dtype, (23, 17), name="x")
    sp.ops.map_linearly(g, x, grain_size=1)
    prog = P.Sequence()
    ys = [reduce(g, x, prog, dims=0, op=op) for op in ops]
    rng = np.random.default_rng(0)
    a = {sp.float16: lambda: rng.standard_normal((23, 17)).astype(np.float16),
         sp.bool_: lambda: rng.random((23, 17)) > 0.3,
         sp.int32: lambda: rng.integers(1, 3, (23, 17)).astype(np.int32)}[dtype]()
    wide = a.astype(np.float32) if dtype is sp.float16 else a
    expected = {ReduceOp.ADD: lambda: wide.sum(0), ReduceOp.MAX: lambda: a.max(0),
                ReduceOp.SQUARE_ADD: lambda: (wide * wide).sum(0), ReduceOp.LOGICAL_OR: lambda: a.any(0),
                ReduceOp.LOGICAL_AND: lambda: a.all(0), ReduceOp.MUL: lambda: a.prod(0, dtype=np.int32),
                ReduceOp.MIN: lambda: a.min(0)}
    got = {}
    for reference in (False, True):
        eng = sp.Engine(g, [prog], options={"engine.reference": reference})
        eng.write_tensor(x, a)
        eng.run(0)
        got[reference] = [eng.read_tensor(y) for y in ys]
    for op, f, r in zip(ops, got[False], got[True], strict=True):
        want = expected[op]()
        if op.order_sensitive and dtype is sp.float16:  # fp32 partials, rounded once to fp16
            for result in (f, r):  # each engine's order within fp16 rounding of the fp32 sum
                np.testing.assert_allclose(result.astype(np.float32), want, rtol=2e-3, atol=2e-2)
        else:
            np.testing.assert_array_equal(f, want.astype(f.dtype))
            np.testing.assert_array_equal(f, r)
