"""The fast engine runs an outer max/min/logical reduction's two stages as one numpy reduction
(engine/reductions.py): bitwise equal to the per-vertex reference, and only where the vertices
prove that the two stages compute exactly that."""

from __future__ import annotations

import numpy as np
import pytest

import softipu as sp
from softipu import program as P
from softipu.codelets.reduce import columns_codelet, rows_codelet
from softipu.engine import reductions
from softipu.graph.tensor import Tensor
from softipu.ops.reduce import ReduceOp, reduce

F32 = sp.float32
NUMPY = {ReduceOp.MAX: np.max, ReduceOp.MIN: np.min, ReduceOp.LOGICAL_OR: np.any,
         ReduceOp.LOGICAL_AND: np.all, ReduceOp.ADD: np.sum}


def _values(rng, dtype, shape):
    if dtype is sp.bool_:
        return rng.random(shape) < 0.5 ** 5
    return rng.standard_normal(shape).astype(dtype.numpy)


def _run(g, prog, x, y, value, reference=False):
    eng = sp.Engine(g, [prog], {"engine.reference": reference})
    for _ in range(2):  # built on the first run; the second reuses it
        eng.write_tensor(x, value)
        eng.run(0)
    return eng, eng.read_tensor(y)


def _fused(eng) -> list[bool]:
    return [c.runner is not None for c in eng._interpreter._reductions.first.values()]


@pytest.mark.parametrize(("shape", "dims", "tiles", "grain", "dtype", "op"), [
    ((64, 48), 0, 16, 1, F32, ReduceOp.MAX),  # tile boundaries anywhere in a row
    ((64, 48), 0, 16, 48, F32, ReduceOp.MIN),  # whole rows a tile
    ((8, 64, 12), 1, 16, 1, F32, ReduceOp.MAX),  # kept dims before and after: A = 8 blocks
    ((8, 64, 12), (0, 1), 16, 5, sp.float16, ReduceOp.MAX),  # fp16, fp32 partials
    ((3, 40, 7), 1, 8, 7, F32, ReduceOp.MIN),  # pieces shorter than a row
    ((100, 33), 0, 16, 3, sp.bool_, ReduceOp.LOGICAL_OR),
    ((100, 33), 0, 16, 3, sp.bool_, ReduceOp.LOGICAL_AND),
])
def test_outer_exact_reductions_run_fused_and_bitwise_equal_to_the_reference(shape, dims, tiles, grain,
                                                                             dtype, op):
    g = sp.Graph(sp.targets.ipu_model(tiles=tiles))
    x = g.add_variable(dtype, shape, name="x")
    sp.ops.map_linearly(g, x, grain_size=grain)
    prog = P.Sequence()
    y = reduce(g, x, prog, dims=dims, op=op)
    value = _values(np.random.default_rng(0), dtype, shape)
    eng, got = _run(g, prog, x, y, value)
    assert _fused(eng) == [True]
    _, ref = _run(g, prog, x, y, value, reference=True)
    assert got.tobytes() == ref.tobytes()
    np.testing.assert_array_equal(got, NUMPY[op](value, axis=dims))


def test_signed_zeros_and_nans_match_the_reference_bitwise():
    """Ties between -0.0 and 0.0 keep the first, as the stages do; NaN propagates."""
    g = sp.Graph(sp.targets.ipu_model(tiles=8))
    x = g.add_variable(F32, (40, 6), name="x")
    sp.ops.map_linearly(g, x, grain_size=1)
    prog = P.Sequence()
    y = reduce(g, x, prog, dims=0, op=ReduceOp.MAX)
    value = np.where(np.random.default_rng(1).random((40, 6)) < 0.5, -0.0, 0.0).astype(np.float32)
    value[:, 0] = -1.0
    value[17, 1] = np.nan
    eng, got = _run(g, prog, x, y, value)
    assert _fused(eng) == [True]
    _, ref = _run(g, prog, x, y, value, reference=True)
    assert got.tobytes() == ref.tobytes()
    assert np.isnan(got[1])


def test_replicas_reduce_each_their_own_values():
    g = sp.Graph(sp.targets.ipu_model(tiles=8), replication_factor=2)
    x = g.add_variable(F32, (30, 10), name="x")
    sp.ops.map_linearly(g, x, grain_size=1)
    prog = P.Sequence()
    y = reduce(g, x, prog, dims=0, op=ReduceOp.MAX)
    value = np.random.default_rng(2).standard_normal((2, 30, 10)).astype(np.float32)
    eng, got = _run(g, prog, x, y, value)
    assert _fused(eng) == [True]
    np.testing.assert_array_equal(got, value.max(axis=1))


def test_sums_stay_two_stages():
    """A float sum depends on the order: not fused."""
    g = sp.Graph(sp.targets.ipu_model(tiles=8))
    x = g.add_variable(F32, (30, 10), name="x")
    sp.ops.map_linearly(g, x, grain_size=1)
    prog = P.Sequence()
    reduce(g, x, prog, dims=0, op=ReduceOp.ADD)
    eng = sp.Engine(g, [prog])
    assert not eng._interpreter._reductions


def test_partials_read_elsewhere_keep_the_two_stages():
    """A copy of the partials after the reduce: not fused, and the copy reads what the stages wrote."""
    g = sp.Graph(sp.targets.ipu_model(tiles=8))
    x = g.add_variable(F32, (30, 10), name="x")
    sp.ops.map_linearly(g, x, grain_size=1)
    prog = P.Sequence()
    reduce(g, x, prog, dims=0, op=ReduceOp.MAX)
    var = next(v for v in g.variables if v.name.endswith("/partials"))
    partials = Tensor(g, F32, var.shape, var.start, (1,))
    seen = g.add_variable(F32, partials.shape, name="seen")
    sp.ops.map_linearly(g, seen)
    prog.add(P.Copy(partials, seen))
    value = np.random.default_rng(3).standard_normal((30, 10)).astype(np.float32)
    eng, got = _run(g, prog, x, seen, value)
    assert _fused(eng) == [False]
    _, ref = _run(g, prog, x, seen, value, reference=True)
    np.testing.assert_array_equal(got, ref)


def _by_hand(columns):
    """``x`` (4, 4): two stage-1 vertices fold two rows each into partials rows ``p0``, ``p1``;
    stage 2 as ``columns`` says: (output start, width, [(partials row, column)...]) per vertex."""
    g = sp.Graph(sp.targets.ipu_model(tiles=2))
    x = g.add_variable(F32, (16,), name="x")
    p = g.add_variable(F32, (2, 4), name="p")
    y = g.add_variable(F32, (4,), name="y")
    for t in (x, p, y):
        sp.ops.map_linearly(g, t)
    cs1, cs2 = g.add_compute_set("partials"), g.add_compute_set("reduce")
    rows = rows_codelet(ReduceOp.MAX, F32)
    for i in range(2):
        g.add_vertex(cs1, rows, {"x": x[8 * i : 8 * i + 8], "out": p[i], "phase": 0}, tile=i)
    cols = columns_codelet(ReduceOp.MAX, F32, F32)
    for start, n, parts in columns:
        g.add_vertex(cs2, cols, {"parts": [p[r, c : c + n] for r, c in parts], "out": y[start : start + n],
                                 "scale": 1.0, "part_step": 0}, tile=0)
    return g, P.Sequence([P.Execute(cs1), P.Execute(cs2)]), x, y


@pytest.mark.parametrize(("columns", "fused"), [
    ([(0, 2, [(0, 0), (1, 0)]), (2, 2, [(0, 2), (1, 2)])], True),  # the reduction over dim 0
    ([(0, 2, [(0, 0), (1, 0)]), (2, 2, [(0, 2), (1, 0)])], False),  # a wrong column
    ([(0, 4, [(0, 0)])], False),  # half the input never read
])
def test_stages_by_hand_fuse_only_when_they_compute_the_reduction(columns, fused):
    g, prog, x, y = _by_hand(columns)
    value = np.random.default_rng(4).standard_normal(16).astype(np.float32)
    eng, got = _run(g, prog, x, y, value)
    assert _fused(eng) == [fused]
    _, ref = _run(g, prog, x, y, value, reference=True)
    assert got.tobytes() == ref.tobytes()
    if fused:
        np.testing.assert_array_equal(got, value.reshape(4, 4).max(axis=0))


def test_off_switch_runs_the_stages(monkeypatch):
    monkeypatch.setattr(reductions, "FUSE_REDUCTIONS", False)
    g, prog, x, y = _by_hand([(0, 4, [(0, 0), (1, 0)])])
    value = np.arange(16, dtype=np.float32)
    eng, got = _run(g, prog, x, y, value)
    assert not eng._interpreter._reductions
    np.testing.assert_array_equal(got, [12, 13, 14, 15])
