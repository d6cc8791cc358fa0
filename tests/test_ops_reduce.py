"""Reductions beyond the record table: errors, options, the two-stage plan, numerics, costs."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import softipu as sp
from softipu import program as P
from softipu.codelets.reduce import ReduceOp, identity_of
from softipu.ops.common import OpError
from softipu.ops.reduce import argmax, argmin, reduce, reduce_mean, reduce_sum


def small(tiles: int = 8) -> sp.Graph:
    return sp.Graph(sp.targets.ipu_model(tiles=tiles, bytes_per_tile=256 * 1024))


def var(g: sp.Graph, shape, dtype=sp.float32, grain: int = 1) -> sp.Tensor:
    x = g.add_variable(dtype, shape, name="x")
    sp.ops.map_linearly(g, x, grain_size=grain)
    return x


def run(g: sp.Graph, prog, inputs: dict, outputs, options=None):
    eng = sp.Engine(g, [prog], options=options or {})
    for t, a in inputs.items():
        eng.write_tensor(t, a)
    eng.run(0)
    return [eng.read_tensor(o) for o in outputs], eng


def line_of_next_call() -> int:
    return inspect.currentframe().f_back.f_lineno + 1


# -- errors name the op, the shapes and this file's line ---------------------------------------------
@pytest.mark.parametrize(("kwargs", "words"), [
    ({"dims": 2}, ["dim 2", "(3, 4)"]),
    ({"dims": (0, -2)}, ["twice", "(3, 4)"]),
    ({"dims": "a"}, ["ints"]),
    ({"op": "add"}, ["ReduceOp"]),
    ({"op": ReduceOp.LOGICAL_AND}, ["bool", "float32"]),
    ({"options": {"keepdim": True}}, ["unknown option 'keepdim'", "keepdims"]),
    ({"options": {"keepdims": 1}}, ["keepdims", "bool"]),
])
def test_reduce_errors_name_op_shape_and_line(kwargs, words) -> None:
    g = small()
    x = var(g, (3, 4))
    with pytest.raises(OpError) as info:
        line = line_of_next_call()
        reduce(g, x, P.Sequence(), **kwargs)
    message = str(info.value)
    assert message.startswith("reduce ")
    assert f"test_ops_reduce.py:{line}" in message
    for w in words:
        assert w in message


def test_other_reduce_errors() -> None:
    g = small()
    b = var(g, (4,), sp.bool_)
    i = var(g, (4,), sp.int32)
    with pytest.raises(OpError, match="ADD does not reduce bool"):
        reduce(g, b, P.Sequence(), op=ReduceOp.ADD)
    with pytest.raises(OpError, match="reduce_mean .*int32 tensor"):
        reduce_mean(g, i, P.Sequence())
    with pytest.raises(OpError, match="argmax .*0-d"):
        argmax(g, var(g, ()), P.Sequence())
    with pytest.raises(OpError, match="argmin .*dim 1.*empty"):
        argmin(g, var(g, (3, 0)), P.Sequence(), dim=1)
    with pytest.raises(OpError, match="prog must be a program.Sequence"):
        reduce(g, i, P.Execute(g.add_compute_set("c")))


# -- options and results ---------------------------------------------------------------------------------
def test_keepdims_shapes_and_values() -> None:
    g = small()
    x = var(g, (3, 4, 5))
    prog = P.Sequence()
    kept = reduce(g, x, prog, dims=(0, 2), op=ReduceOp.MAX, options={"keepdims": True})
    flat = reduce(g, x, prog, dims=(0, 2), op=ReduceOp.MAX)
    assert kept.shape == (1, 4, 1) and flat.shape == (4,)
    a = np.random.default_rng(0).standard_normal((3, 4, 5)).astype(np.float32)
    (k, f), _ = run(g, prog, {x: a}, [kept, flat])
    np.testing.assert_array_equal(k.reshape(-1), f)
    np.testing.assert_array_equal(f, a.max(axis=(0, 2)))


@pytest.mark.parametrize("op", list(ReduceOp))
def test_empty_reductions_give_the_identity(op) -> None:
    g = small()
    dtype = sp.bool_ if op.is_logical else sp.float32
    x = var(g, (0, 3), dtype)
    prog = P.Sequence()
    y = reduce(g, x, prog, dims=0, op=op)
    (got,), _ = run(g, prog, {}, [y])
    assert got.shape == (3,)
    assert np.all(got == identity_of(op, dtype))


def test_max_and_min_propagate_nan_like_numpy() -> None:
    g = small()
    x = var(g, (6, 40))
    prog = P.Sequence()
    outs = [reduce(g, x, prog, dims=d, op=o) for d in (0, 1, None) for o in (ReduceOp.MAX, ReduceOp.MIN)]
    a = np.random.default_rng(1).standard_normal((6, 40)).astype(np.float32)
    a[2, 17] = np.nan
    got, _ = run(g, prog, {x: a}, outs)
    expected = [f(a, axis=d) for d in (0, 1, None) for f in (np.max, np.min)]
    for gv, ev in zip(got, expected, strict=True):
        np.testing.assert_array_equal(gv, ev)
    assert np.isnan(got[0][17]) and np.isnan(got[2][2]) and np.isnan(got[4])


def test_fp16_sums_use_fp32_partials() -> None:
    g = small(2)
    x = var(g, (5000,), sp.float16)
    prog = P.Sequence()
    y = reduce_sum(g, x, prog)
    partials = [v for v in g.variables if v.name.endswith("/partials")]
    assert partials and all(v.dtype is sp.float32 for v in partials)
    # Each tile adds 2500 ones: an fp16 accumulator would stop at 2048 (2048 + 1 rounds back).
    (got,), _ = run(g, prog, {x: np.ones(5000, np.float16)}, [y])
    assert got == 5000


# -- the plan: two stages, on the right tiles --------------------------------------------------------------
def test_two_compute_sets_stage_one_on_input_tiles_stage_two_on_output_tiles() -> None:
    g = small()
    x = var(g, (16, 33))
    prog = P.Sequence()
    y = reduce(g, x, prog, dims=0)
    executes = [n for n in P.walk(prog) if isinstance(n, P.Execute)]
    assert [e.compute_set.name for e in executes] == ["reduce/partials", "reduce/reduce"]
    eng = sp.Engine(g, [prog])
    stage1 = eng.executable.compute_sets[executes[0].compute_set.id]
    stage2 = eng.executable.compute_sets[executes[1].compute_set.id]
    input_tiles = set(np.unique(g.tile_of(x)).tolist())
    assert set(np.concatenate([grp.tiles for grp in stage1.groups]).tolist()) == input_tiles
    out_tiles = set(np.unique(g.tile_of(y)).tolist())
    assert set(np.concatenate([grp.tiles for grp in stage2.groups]).tolist()) == out_tiles
    # Stage 1 reads only local data: its exchange moves nothing.
    steps = {s.name: s for s in eng.executable.steps}
    assert steps["reduce/partials"].bytes_exchanged == 0
    assert steps["reduce/reduce"].bytes_exchanged > 0


def test_partials_live_on_the_tiles_that_make_them() -> None:
    g = small()
    x = var(g, (8, 100))
    prog = P.Sequence()
    reduce(g, x, prog, dims=1)
    part = next(v for v in g.variables if v.name.endswith("/partials"))
    tiles = g.tile_of(sp.Tensor(g, part.dtype, part.shape, part.start, (1,)))
    assert len(np.unique(tiles)) == 8  # every input tile keeps its own partials


def test_stage_one_reduces_rows_before_the_exchange() -> None:
    """An outer reduction exchanges one row of partials per tile, not every input row."""
    g = small()
    x = var(g, (64, 32), grain=32)  # 8 rows per tile
    prog = P.Sequence()
    reduce(g, x, prog, dims=0)
    eng = sp.Engine(g, [prog])
    step = next(s for s in eng.executable.steps if s.name == "reduce/reduce")
    assert step.bytes_exchanged <= 8 * 32 * 4  # at most one fp32 row per tile moves


# -- numerics: independent of how the engine batches ---------------------------------------------------
@pytest.mark.parametrize(("shape", "dims"), [((37, 61), 0), ((37, 61), 1), ((9, 10, 11), (0, 2)),
                                             ((3000,), None), ((400, 24), 0), ((30, 200), 0)])
def test_fast_engine_matches_reference_bitwise(shape, dims) -> None:
    g = small(16)
    x = var(g, shape)
    prog = P.Sequence()
    outs = [reduce(g, x, prog, dims=dims, op=op) for op in (ReduceOp.ADD, ReduceOp.SQUARE_ADD,
                                                            ReduceOp.MUL, ReduceOp.MAX)]
    outs.append(reduce_mean(g, x, prog, dims=dims))
    a = np.random.default_rng(2).uniform(0.5, 1.5, shape).astype(np.float32)
    fast, _ = run(g, prog, {x: a}, outs)
    ref, _ = run(g, prog, {x: a}, outs, {"engine.reference": True})
    for f, r in zip(fast, ref, strict=True):
        np.testing.assert_array_equal(f, r)


def test_max_does_not_depend_on_tile_count_or_mapping() -> None:
    a = np.random.default_rng(3).standard_normal((50, 70)).astype(np.float32)
    results = []
    for tiles, grain in ((4, 1), (16, 1), (16, 70), (7, 3)):
        g = small(tiles)
        x = var(g, a.shape, grain=grain)
        prog = P.Sequence()
        y = reduce(g, x, prog, dims=0, op=ReduceOp.MAX)
        (got,), _ = run(g, prog, {x: a}, [y])
        results.append(got)
    for r in results:
        np.testing.assert_array_equal(r, a.max(axis=0))


def test_replicas_reduce_their_own_data() -> None:
    g = sp.Graph(sp.targets.ipu_model(tiles=4, bytes_per_tile=256 * 1024), replication_factor=2)
    x = var(g, (12, 9))
    prog = P.Sequence()
    ys = [reduce(g, x, prog, dims=d) for d in (0, 1)]
    a = np.random.default_rng(4).standard_normal((2, 12, 9)).astype(np.float32)
    got, _ = run(g, prog, {x: a}, ys)
    np.testing.assert_allclose(got[0], a.sum(axis=1), rtol=1e-5)
    np.testing.assert_allclose(got[1], a.sum(axis=2), rtol=1e-5)


@pytest.mark.parametrize(("tiles", "shape", "replicas"), [(5, (12, 9), 1), (5, (12, 9), 2), (7, (50, 13), 2)])
def test_pieces_starting_mid_row_are_rotated_into_columns(tiles, shape, replicas) -> None:
    """Tile pieces that start inside a row (a linear mapping cutting rows) fold into partials
    rotated to column order, replicas included, the fast engine bit for bit with the reference."""
    g = sp.Graph(sp.targets.ipu_model(tiles=tiles, bytes_per_tile=256 * 1024),
                 replication_factor=replicas)
    x = var(g, shape)
    prog = P.Sequence()
    ys = [reduce(g, x, prog, dims=0, op=op) for op in (ReduceOp.ADD, ReduceOp.MAX, ReduceOp.SQUARE_ADD)]
    lead = (replicas,) if replicas > 1 else ()
    a = np.random.default_rng(5).standard_normal(lead + shape).astype(np.float32)
    fast, _ = run(g, prog, {x: a}, ys)
    ref, _ = run(g, prog, {x: a}, ys, {"engine.reference": True})
    axis = len(lead)
    np.testing.assert_allclose(fast[0], a.sum(axis=axis), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(fast[1], a.max(axis=axis))
    np.testing.assert_allclose(fast[2], (a * a).sum(axis=axis), rtol=1e-5)
    for f, r in zip(fast, ref, strict=True):
        np.testing.assert_array_equal(f, r)


def test_outer_stage_two_spreads_columns_and_reads_evenly_spaced_partials() -> None:
    """An outer reduction spreads its outputs a grain per tile and keeps one row of partials per
    piece in input order, so stage 2 reads each output's partial rows as one strided view."""
    g = small(64)
    x = var(g, (256, 64))
    prog = P.Sequence()
    y = reduce(g, x, prog, dims=0, op=ReduceOp.MAX)
    assert len(np.unique(g.tile_of(y))) == 32  # 64 outputs in grains of 2 (fp32 vectors)
    eng = sp.Engine(g, [prog])
    stage2 = next(c for c in eng.executable.compute_sets.values() if c.compute_set.name == "reduce/reduce")
    assert all(np.all(grp.fields["part_step"] > 0) for grp in stage2.groups)


def test_argmax_first_occurrence_and_nan() -> None:
    g = small()
    x = var(g, (3, 40))
    prog = P.Sequence()
    i = argmax(g, x, prog, dim=1)
    j = argmin(g, x, prog, dim=0)
    a = np.zeros((3, 40), np.float32)
    a[0, [5, 30]] = 2.0  # a tie across two tiles: the first wins
    a[1, 33] = np.nan
    a[2, 39] = 1.0
    (gi, gj), _ = run(g, prog, {x: a}, [i, j])
    assert gi.tolist() == [5, 33, 39]
    np.testing.assert_array_equal(gj, np.argmin(a, axis=0))


# -- costs -------------------------------------------------------------------------------------------
def _cycles(shape, dtype=sp.float32, tiles=8, dims=None, op=ReduceOp.ADD):
    g = small(tiles)
    x = var(g, shape, dtype)
    prog = P.Sequence()
    reduce(g, x, prog, dims=dims, op=op)
    eng = sp.Engine(g, [prog], estimate_only=True)
    eng.run(0)
    steps = {s.name: s for s in eng.executable.steps}
    return eng.report.cycles, steps["reduce/partials"], steps["reduce/reduce"]


def test_costs_scale_with_work_and_tiles() -> None:
    small_cycles, s1, _ = _cycles((4000,))
    big_cycles, b1, _ = _cycles((16000,))
    assert big_cycles > small_cycles and b1.compute_cycles > 2 * s1.compute_cycles
    _, spread, _ = _cycles((16000,), tiles=16)
    assert spread.compute_cycles < b1.compute_cycles  # more tiles: less per tile
    # fp16 reads 4 per vector, fp32 2: half the vector loops.
    _, h1, _ = _cycles((16000,), sp.float16)
    assert h1.compute_cycles < b1.compute_cycles
    assert b1.flops == 16000 and _cycles((16000,), op=ReduceOp.MAX)[1].flops == 16000


def test_stage_one_cost_is_the_vector_loop() -> None:
    """8 tiles x 2000 fp32, poplibs' ContinuousReduce per worker: 6 workers x (ceil(334 / 2)
    + ceil(1 / 6) x 12 + 10 + 7) + 11 per tile."""
    _, s1, _ = _cycles((16000,))
    assert s1.compute_cycles == 6 * (167 + 12 + 17) + 11


def test_docstring_examples_run() -> None:
    import doctest  # noqa: PLC0415
    import importlib  # noqa: PLC0415

    # NOTE: ``softipu.ops.reduce`` the attribute is the op; the module lives in sys.modules.
    result = doctest.testmod(importlib.import_module("softipu.ops.reduce"))
    assert result.attempted >= 10 and result.failed == 0
