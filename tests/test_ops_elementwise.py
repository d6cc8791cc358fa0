"""Elementwise ops beyond the record table: errors, dtype rules, planning, fusion costs, in-place
aliasing, stochastic rounding, engines and replicas agreeing. Values are in tests/records."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import sys

import numpy as np
import pytest

import softipu as sp
from softipu import program as P
from softipu.codelets.elementwise import BinaryOp, binary_op_codelet
from softipu.ops import OpError
from softipu.ops import elementwise as ew
from softipu.ops.elementwise import E


def small(tiles: int = 8) -> sp.Graph:
    return sp.Graph(sp.targets.ipu_model(tiles=tiles, bytes_per_tile=256 * 1024))


def var(g: sp.Graph, dtype: sp.DType, shape, name: str = "v") -> sp.Tensor:
    t = g.add_variable(dtype, shape, name=name)
    sp.ops.map_linearly(g, t)
    return t


def run(g: sp.Graph, prog: P.Sequence, inputs: dict, outputs: list, options=None) -> tuple[list, sp.Engine]:
    eng = sp.Engine(g, [prog], options=options)
    for t, a in inputs.items():
        eng.write_tensor(t, a)
    eng.run(0)
    return [eng.read_tensor(o) for o in outputs], eng


def here() -> int:
    """The caller's line number (errors must point at the user's line)."""
    return sys._getframe(1).f_lineno


def assert_at_line(err: pytest.ExceptionInfo, line: int) -> None:
    assert f"test_ops_elementwise.py:{line}" in str(err.value), str(err.value)


def compute_steps(eng: sp.Engine) -> list[dict]:
    return [s for s in eng.report.steps if s["kind"] == "compute"]


def groups(eng: sp.Engine) -> list:
    return [grp for cs in eng.executable.compute_sets.values() for grp in cs.groups]


# -- errors ------------------------------------------------------------------------------------------
def test_broadcast_error_names_op_shapes_and_line():
    g, prog = small(), P.Sequence()
    a, b = var(g, sp.float32, (3, 4), "a"), var(g, sp.float32, (5,), "b")
    with pytest.raises(OpError, match=r"add 'add'.*\(3, 4\), \(5,\) do not broadcast") as err:
        line = here() + 1
        ew.add(g, a, b, prog)
    assert_at_line(err, line)


def test_unsupported_dtype_mix_names_dtypes_and_line():
    g, prog = small(), P.Sequence()
    a, b = var(g, sp.int32, (4,), "a"), var(g, sp.float32, (4,), "b")
    with pytest.raises(OpError, match=r"mul.*int32 and sp.float32 have no common softipu dtype.*float64.*cast") as err:
        line = here() + 1
        ew.mul(g, a, b, prog)
    assert_at_line(err, line)
    assert "a sp.int32 (4,)" in str(err.value) and "b sp.float32 (4,)" in str(err.value)


@pytest.mark.parametrize(("fn", "dtype", "words"), [
    (ew.exp, sp.int32, "exponent is not defined for sp.int32: it takes float"),
    (ew.popcount, sp.float32, "popcount is not defined for sp.float32: it takes int"),
    (ew.logical_not, None, ""),
])
def test_unary_domain_errors(fn, dtype, words):
    g, prog = small(), P.Sequence()
    if dtype is None:  # logical_not takes anything
        assert fn(g, var(g, sp.float16, (3,)), prog).dtype is sp.bool_
        return
    with pytest.raises(OpError, match=words) as err:
        line = here() + 1
        fn(g, var(g, dtype, (3,), "x"), prog)
    assert_at_line(err, line)


@pytest.mark.parametrize(("fn", "dtype", "words"), [
    (ew.bitwise_and, sp.float32, "bitwise_and is not defined for sp.float32"),
    (ew.shift_left, sp.float16, "shift_left is not defined for sp.float16"),
    (ew.sub, sp.bool_, "subtract is not defined for sp.bool_"),
    (ew.atan2, sp.int32, "atan2 is not defined for sp.int32"),
])
def test_binary_domain_errors(fn, dtype, words):
    g, prog = small(), P.Sequence()
    with pytest.raises(OpError, match=words):
        fn(g, var(g, dtype, (3,)), var(g, dtype, (3,)), prog)


def test_option_errors():
    g, prog = small(), P.Sequence()
    x = var(g, sp.float32, (4,), "x")
    with pytest.raises(OpError, match="unknown option 'stochasticRoundng'.*did you mean 'stochasticRounding'") as err:
        line = here() + 1
        ew.cast(g, x, sp.float16, prog, options={"stochasticRoundng": True})
    assert_at_line(err, line)
    with pytest.raises(OpError, match="option 'stochasticRounding' takes a bool"):
        ew.cast(g, x, sp.float16, prog, options={"stochasticRounding": "yes"})
    with pytest.raises(OpError, match="unknown option 'fast'"):
        ew.add(g, x, x, prog, options={"fast": True})
    with pytest.raises(OpError, match=r"stochasticRounding applies to float32 -> float16 casts, not sp.float32 -> sp.int32"):
        ew.cast(g, x, sp.int32, prog, options={"stochasticRounding": True})
    with pytest.raises(OpError, match="'complex' is not a softipu dtype"):
        ew.cast(g, x, "complex", prog)


def test_inplace_errors():
    g, prog = small(), P.Sequence()
    x, y = var(g, sp.float32, (3,), "x"), var(g, sp.float32, (2, 3), "y")
    with pytest.raises(OpError, match=r"add_.*keep x's shape \(3,\); the operands broadcast to \(2, 3\)") as err:
        line = here() + 1
        ew.add_(g, x, y, prog)
    assert_at_line(err, line)
    with pytest.raises(OpError, match="repeats elements"):
        ew.add_(g, x.broadcast((2, 3)), y, prog)
    i8, h = var(g, sp.int8, (3,), "i8"), var(g, sp.float16, (3,), "h")
    with pytest.raises(OpError, match=r"the result is sp.float16, which cannot be stored in i8 \(sp.int8\)"):
        ew.add_(g, i8, h, prog)
    with pytest.raises(OpError, match="first operand of mul_ must be the tensor to update"):
        ew.mul_(g, 2.0, x, prog)
    with pytest.raises(OpError, match="map_ needs at least one input"):
        ew.map_(g, E.const(1.0), [], prog)


def test_where_condition_must_be_bool():
    g, prog = small(), P.Sequence()
    c, a = var(g, sp.int32, (4,), "c"), var(g, sp.float32, (4,), "a")
    with pytest.raises(OpError, match=r"where.*condition must be sp.bool_, got sp.int32"):
        ew.where(g, c, a, a, prog)


def test_map_argument_errors():
    g, prog = small(), P.Sequence()
    a = var(g, sp.float32, (4,), "a")
    i8 = var(g, sp.int8, (4,), "i8")
    with pytest.raises(OpError, match="expr must be an expression built with E"):
        ew.map(g, "a + 1", [a], prog)
    with pytest.raises(OpError, match="inputs must be a list of tensors, got Tensor"):
        ew.map(g, E.input(0), a, prog)
    with pytest.raises(OpError, match=r"uses input 1 but 1 input\(s\) were given") as err:
        line = here() + 1
        ew.map(g, E.add(E.input(0), E.input(1)), [a], prog)
    assert_at_line(err, line)
    with pytest.raises(OpError, match=r"constant 300 does not fit sp.int8 \(-128..127\)"):
        ew.add(g, i8, 300, prog)
    with pytest.raises(OpError, match="operands must be tensors or numbers, got str"):
        ew.add(g, a, "1", prog)
    with pytest.raises(sp.DTypeError, match="a binary expression takes 2 expression"):
        sp.ops.elementwise.Expr(sp.ops.elementwise.ExprKind.BINARY, BinaryOp.ADD, (E.input(0),))


# -- dtype rules -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("a", "b", "fn", "want"), [
    (sp.float16, sp.float32, ew.add, sp.float32),
    (sp.int8, sp.float16, ew.add, sp.float16),
    (sp.int16, sp.float16, ew.add, sp.float32),
    (sp.uint8, sp.int8, ew.add, sp.int16),
    (sp.int32, sp.int64, ew.sub, sp.int64),
    (sp.int32, 1, ew.add, sp.int32),
    (sp.int32, 0.5, ew.mul, sp.float32),
    (sp.float16, 2.0, ew.mul, sp.float16),
    (sp.uint8, True, ew.add, sp.uint8),
    (sp.bool_, 3, ew.add, sp.int32),
    (sp.float16, sp.float32, ew.lt, sp.bool_),
    (sp.int32, sp.float32, ew.logical_and, sp.bool_),
    (sp.int16, sp.int16, ew.div, sp.int16),
])
def test_result_dtypes(a, b, fn, want):
    g, prog = small(), P.Sequence()
    x = var(g, a, (2, 3))
    y = var(g, b, (3,)) if isinstance(b, sp.DType) else b
    assert fn(g, x, y, prog).dtype is want


def test_weak_constants_keep_tensor_dtype_in_map():
    g, prog = small(), P.Sequence()
    h = var(g, sp.float16, (5,), "h")
    y = ew.map(g, E.add(E.mul(E.input(0), 2.0), E.exp(1.0)), [h], prog)
    assert y.dtype is sp.float16
    (got,), _ = run(g, prog, {h: np.arange(5)}, [y])
    np.testing.assert_allclose(got, (np.arange(5) * 2 + np.e).astype(np.float16), rtol=1e-3)


def test_signed_zero_constants_are_distinct_codelets():
    g, prog = small(), P.Sequence()
    x = var(g, sp.float32, (4,), "x")
    pos = ew.map(g, E.mul(E.input(0), 0.0), [x], prog)
    neg = ew.map(g, E.mul(E.input(0), -0.0), [x], prog)
    (p, n), _ = run(g, prog, {x: [1, 2, 3, 4]}, [pos, neg])
    assert not np.signbit(p).any() and np.signbit(n).all()


def test_numpy_scalars_are_numbers():
    g, prog = small(), P.Sequence()
    x = var(g, sp.float16, (3,), "x")
    y = ew.mul(g, x, np.float32(2), prog)
    assert y.dtype is sp.float16
    (got,), _ = run(g, prog, {x: [1, 2, 3]}, [y])
    np.testing.assert_array_equal(got, [2, 4, 6])


# -- planning -----------------------------------------------------------------------------------------
def test_same_shape_op_is_zero_copy_local_and_mapped_like_its_input():
    g, prog = small(16), P.Sequence()
    a, b = var(g, sp.float32, (10_001,), "a"), var(g, sp.float32, (10_001,), "b")
    y = ew.add(g, a, b, prog)
    assert g.get_tile_mapping(y) == g.get_tile_mapping(a)
    (got,), eng = run(g, prog, {a: np.arange(10_001), b: np.ones(10_001)}, [y])
    np.testing.assert_array_equal(got, np.arange(10_001) + 1)
    gs = groups(eng)
    assert len(gs) <= 2 and all(grp.codelet.__name__ == "BinaryOp1D<ADD,float32>" for grp in gs)
    assert all(t.is_strided and t.strides[1] == 1 for grp in gs for t in grp.fields.values())
    assert sum(grp.num_vertices for grp in gs) == 16  # one vertex per tile region
    assert compute_steps(eng)[0]["bytes_exchanged"] == 0


def test_bias_broadcast_reads_the_bias_row_as_a_view():
    g, prog = small(16), P.Sequence()
    x, bias = var(g, sp.float32, (96, 40), "x"), var(g, sp.float32, (40,), "bias")
    y = ew.add(g, x, bias, prog)
    rng = np.random.default_rng(0)
    xs, bs = rng.standard_normal((96, 40)), rng.standard_normal(40)
    (got,), eng = run(g, prog, {x: xs, bias: bs}, [y])
    np.testing.assert_allclose(got, (xs.astype(np.float32) + bs.astype(np.float32)), rtol=1e-6)
    gs = groups(eng)
    assert len(gs) <= 2
    for grp in gs:
        assert all(t.is_strided and t.strides[1] == 1 for t in grp.fields.values())
        assert grp.fields["in1"].strides[0] == 0  # every vertex reads the same bias row
        assert grp.fields["in0"].shape[1] % 40 == 0  # whole rows per vertex
    vertices_per_tile = np.bincount(np.concatenate([grp.tiles for grp in gs]), minlength=16)
    assert vertices_per_tile.min() >= 1 and vertices_per_tile.max() <= 2 * vertices_per_tile.mean()
    # the output is mapped where its vertices run: only the bias (and block edges of x) move
    step = compute_steps(eng)[0]
    assert step["bytes_exchanged"] <= 16 * 40 * 4 + 96 * 40 * 4 // 4


def test_per_row_scale_and_outer_sum_plans():
    g, prog = small(8), P.Sequence()
    x, s = var(g, sp.float32, (50, 7), "x"), var(g, sp.float32, (50, 1), "s")
    r = var(g, sp.float32, (1, 9), "r")
    y, outer = ew.mul(g, x, s, prog), ew.add(g, s, r, prog)
    rng = np.random.default_rng(1)
    xs, ss, rs = rng.standard_normal((50, 7)), rng.standard_normal((50, 1)), rng.standard_normal((1, 9))
    (got, got_outer), eng = run(g, prog, {x: xs, s: ss, r: rs}, [y, outer])
    np.testing.assert_allclose(got, np.float32(xs) * np.float32(ss), rtol=1e-6)
    np.testing.assert_allclose(got_outer, np.float32(ss) + np.float32(rs), rtol=1e-6)
    names = {grp.codelet.__name__ for grp in groups(eng)}
    assert "Map2D<multiply(in0,in1)[full,col],float32>" in names
    assert "Map2D<add(in0,in1)[col,row],float32>" in names
    assert all(t.is_strided for grp in groups(eng) for t in grp.fields.values())


def test_scalar_operand_is_a_stride_zero_view():
    g, prog = small(), P.Sequence()
    x, s = var(g, sp.float32, (100,), "x"), var(g, sp.float32, (), "s")
    y = ew.sub(g, x, s, prog)
    (got,), eng = run(g, prog, {x: np.arange(100), s: 5}, [y])
    np.testing.assert_array_equal(got, np.arange(100) - 5)
    for grp in groups(eng):
        assert grp.fields["b"].shape[1] == 1 and grp.fields["b"].strides[0] == 0


def test_transposed_input_is_spread_evenly():
    g, prog = small(8), P.Sequence()
    a = var(g, sp.float32, (64, 64), "a")
    y = ew.add(g, a.T, 1.0, prog)
    (got,), eng = run(g, prog, {a: np.arange(64 * 64).reshape(64, 64)}, [y])
    np.testing.assert_array_equal(got, np.arange(64 * 64).reshape(64, 64).T + 1)
    per_tile = [sum(e - b for b, e in iv) for iv in g.get_tile_mapping(y)]
    assert max(per_tile) <= 1.25 * 64 * 64 / 8 + 64 * 64 / 8 / 6 + 64
    assert eng.report.fits


def test_strided_views_as_inputs_and_in_place_targets():
    g, prog = small(4), P.Sequence()
    x, w = var(g, sp.float32, (40,), "x"), var(g, sp.float32, (80,), "w")
    y = ew.sub(g, x[::-1], w[::2], prog)
    assert g.tile_of(y).tolist() == g.tile_of(x[::-1]).tolist()  # mapped like the reversed input
    ew.mul_(g, w[1::2], 3.0, prog)
    xs, ws = np.arange(40, dtype=np.float32), np.arange(80, dtype=np.float32) / 7
    (got_y, got_w), _ = run(g, prog, {x: xs, w: ws}, [y, w])
    np.testing.assert_array_equal(got_y, xs[::-1] - ws[::2])
    expected_w = ws.copy()
    expected_w[1::2] *= 3
    np.testing.assert_array_equal(got_w, expected_w)


def test_irregular_input_mapping_still_runs_as_few_groups():
    g, prog = small(8), P.Sequence()
    n = 3000
    a = g.add_variable(sp.float32, (n,), name="a")
    cuts = np.sort(np.random.default_rng(0).choice(np.arange(1, n), 200, replace=False))
    for k, (lo, hi) in enumerate(zip(np.r_[0, cuts], np.r_[cuts, n], strict=True)):
        g.set_tile_mapping(a[int(lo):int(hi)], k % 8)
    y = ew.exp(g, a, prog)
    (got,), eng = run(g, prog, {a: np.linspace(-1, 1, n)}, [y])
    np.testing.assert_allclose(got, np.exp(np.linspace(-1, 1, n, dtype=np.float32)), rtol=1e-6)
    assert len(groups(eng)) <= 3  # 200 irregular regions fall back to regular blocks


# -- fusion and costs ----------------------------------------------------------------------------------
def test_map_is_one_compute_set_with_summed_node_costs():
    target = sp.targets.ipu_model(tiles=1, bytes_per_tile=256 * 1024)
    g, prog = sp.Graph(target), P.Sequence()
    a, b, c = (var(g, sp.float32, (1200,), n) for n in "abc")
    y = ew.map(g, E.exp(E.add(E.mul(E.input(0), E.input(1)), E.input(2))), [a, b, c], prog)
    assert len(prog.programs) == 1 and len(g.compute_sets) == 1
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(1200).astype(np.float32) for _ in range(3)]
    (got,), eng = run(g, prog, dict(zip((a, b, c), arrays, strict=True)), [y])
    np.testing.assert_allclose(got, np.exp(arrays[0] * arrays[1] + arrays[2]), rtol=1e-5)
    # per worker 200 floats = 100 vectors; mul and add {1 + 2}, exp {6 + 2}; fixed 29 + 4 (3 inputs)
    assert compute_steps(eng)[0]["compute_cycles"] == 6 * (29 + 4 + 100 * 3 + 100 * 3 + 100 * 8) + 11
    separate_g, separate = sp.Graph(target), P.Sequence()
    a2, b2, c2 = (var(separate_g, sp.float32, (1200,), n) for n in "abc")
    ew.exp(separate_g, ew.add(separate_g, ew.mul(separate_g, a2, b2, separate), c2, separate), separate)
    _, eng2 = run(separate_g, separate, {}, [])
    assert sum(s["cycles"] for s in compute_steps(eng2)) > compute_steps(eng)[0]["cycles"]


def test_calibration_example_still_holds():
    g = sp.Graph(sp.targets.GC200)
    a, b, out = (g.add_variable(sp.float16, (1200,), name=n) for n in "abc")
    for t in (a, b, out):
        g.set_tile_mapping(t, 0)
    cs = g.add_compute_set("add")
    g.add_vertex(cs, binary_op_codelet(BinaryOp.ADD, sp.float16), {"a": a, "b": b, "out": out}, tile=0)
    eng = sp.Engine(g, [P.Execute(cs)], estimate_only=True)
    eng.run(0)
    assert compute_steps(eng)[0]["compute_cycles"] == 1067


def test_cost_sanity():
    def cycles(dtype, fn):
        g, prog = sp.Graph(sp.targets.ipu_model(tiles=4)), P.Sequence()
        x = var(g, dtype, (4000,))
        fn(g, x, prog)
        eng = sp.Engine(g, [prog], estimate_only=True)
        eng.run(0)
        return compute_steps(eng)[0]["compute_cycles"]

    add32 = cycles(sp.float32, lambda g, x, p: ew.add(g, x, x, p))
    assert cycles(sp.float32, ew.exp) > add32 > cycles(sp.float16, lambda g, x, p: ew.add(g, x, x, p))
    assert cycles(sp.float32, lambda g, x, p: ew.div(g, x, x, p)) > add32
    assert cycles(sp.int32, lambda g, x, p: ew.add(g, x, x, p)) > add32  # ints: 7 cycles per element


def test_inplace_uses_inplace_codelets():
    g, prog = small(), P.Sequence()
    x, y = var(g, sp.float32, (100,), "x"), var(g, sp.float32, (100,), "y")
    assert ew.add_(g, x, y, prog) is x
    assert ew.exp_(g, x, prog) is x
    (got,), eng = run(g, prog, {x: np.zeros(100), y: np.arange(100) / 10}, [x])
    np.testing.assert_allclose(got, np.exp(np.arange(100, dtype=np.float32) / 10), rtol=1e-6)
    names = {grp.codelet.__name__ for grp in groups(eng)}
    assert {"BinaryOp1DInPlace<ADD,float32>", "UnaryOp1DInPlace<EXPONENT,float32>"} <= names
    assert len(g.variables) == 2  # nothing new


@pytest.mark.parametrize("other", ["same", "reversed", "transposed", "row0"])
def test_inplace_reads_aliased_operands_as_they_were(other):
    g, prog = small(), P.Sequence()
    x = var(g, sp.float32, (6, 6), "x")
    xs = np.arange(36, dtype=np.float32).reshape(6, 6)
    operand, expected = {"same": (x, xs + xs), "reversed": (x[::-1], xs + xs[::-1]),
                         "transposed": (x.T, xs + xs.T), "row0": (x[0], xs + xs[0])}[other]
    ew.add_(g, x, operand, prog)
    (got,), _ = run(g, prog, {x: xs}, [x])
    np.testing.assert_array_equal(got, expected)


# -- stochastic rounding -------------------------------------------------------------------------------
def _sr(target: sp.Target, values: np.ndarray, seed: int, grain: int = 1) -> np.ndarray:
    g, prog = sp.Graph(target), P.Sequence()
    x = g.add_variable(sp.float32, values.shape, name="x")
    sp.ops.map_linearly(g, x, grain_size=grain)
    y = ew.cast(g, x, sp.float16, prog, options={"stochasticRounding": True, "seed": seed})
    (got,), _ = run(g, prog, {x: values}, [y])
    return got


def test_stochastic_rounding_is_reproducible_whatever_the_tiles():
    values = np.random.default_rng(0).standard_normal((37, 29)).astype(np.float32)
    a = _sr(sp.targets.ipu_model(tiles=3), values, seed=11)
    b = _sr(sp.targets.ipu_model(tiles=16), values, seed=11, grain=7)
    c = _sr(sp.targets.GC200, values, seed=11)
    assert a.tobytes() == b.tobytes() == c.tobytes()
    assert a.tobytes() != _sr(sp.targets.ipu_model(tiles=3), values, seed=12).tobytes()


def test_stochastic_rounding_is_unbiased_between_neighbours():
    x = np.float32(1 + 2**-12)  # a quarter of the way from 1 to the next half, 1 + 2**-10
    got = _sr(sp.targets.ipu_model(tiles=4), np.full(40_000, x, np.float32), seed=5).astype(np.float64)
    assert set(np.unique(got)) == {1.0, 1 + 2**-10}
    assert abs(got.mean() - float(x)) < 4 * 2**-10 * np.sqrt(0.25 * 0.75 / 40_000)
    exact = _sr(sp.targets.ipu_model(tiles=4), np.array([0.5, -2.0, np.inf, np.nan], np.float32), seed=5)
    np.testing.assert_array_equal(exact, np.array([0.5, -2.0, np.inf, np.nan], np.float16))


# -- engines and replicas ------------------------------------------------------------------------------
def _mixed_program(g: sp.Graph):
    prog = P.Sequence()
    a, b, c = var(g, sp.float32, (6, 10), "a"), var(g, sp.float32, (10,), "b"), var(g, sp.float32, (6, 1), "c")
    y = ew.map(g, E.gelu(E.add(E.mul(E.input(0), E.input(1)), E.input(2))), [a, b, c], prog)
    h = ew.cast(g, y, sp.float16, prog, options={"stochasticRounding": True, "seed": 3})
    z = ew.where(g, ew.gt(g, a, 0.0, prog), a, b, prog)
    ew.mul_(g, a, c, prog)
    return prog, (a, b, c), (y, h, z, a)


def test_fast_and_reference_engines_agree_bitwise():
    rng = np.random.default_rng(0)
    values = [rng.standard_normal(s).astype(np.float32) for s in ((6, 10), (10,), (6, 1))]
    results = []
    for options in ({}, {"engine.reference": True}):
        g = small(4)
        prog, ins, outs = _mixed_program(g)
        got, _ = run(g, prog, dict(zip(ins, values, strict=True)), list(outs), options)
        results.append(got)
    for fast, ref in zip(*results, strict=True):
        assert fast.tobytes() == ref.tobytes()


def test_replicas_compute_independently():
    g = sp.Graph(sp.targets.ipu_model(tiles=4), replication_factor=2)
    prog, (a, b, c), (y, h, z, a_after) = _mixed_program(g)
    rng = np.random.default_rng(1)
    av, bv, cv = rng.standard_normal((2, 6, 10)), rng.standard_normal(10), rng.standard_normal((6, 1))
    (got_y, got_z, got_a), _ = run(g, prog, {a: av, b: bv, c: cv}, [y, z, a_after])
    av, bv, cv = av.astype(np.float32), bv.astype(np.float32), cv.astype(np.float32)
    t = av * bv + cv
    np.testing.assert_allclose(got_y, 0.5 * t * (1 + np.tanh(np.sqrt(2 / np.pi) * (t + 0.044715 * t**3))),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got_z, np.where(av > 0, av, bv))
    np.testing.assert_array_equal(got_a, av * cv)


def test_docstring_examples_run():
    modules = [ew] + [importlib.import_module(f"{ew.__name__}.{m.name}") for m in pkgutil.iter_modules(ew.__path__)]
    results = [doctest.testmod(m, optionflags=doctest.ELLIPSIS) for m in modules]
    assert sum(r.attempted for r in results) > 100 and all(r.failed == 0 for r in results)


def _greedy_runs(starts: list[int], lengths: list[int]) -> list[tuple[int, int]]:
    """The region runs by their definition, one region at a time: a run's first two regions set
    its length and spacing, and it takes every following region that keeps both."""
    runs, i = [], 0
    while i < len(starts):
        j = i + 1
        if j < len(starts) and lengths[j] == lengths[i]:
            step = starts[j] - starts[i]
            while j < len(starts) and lengths[j] == lengths[i] and starts[j] - starts[j - 1] == step:
                j += 1
        runs.append((i, j))
        i = j
    return runs


def test_region_runs_match_the_greedy_definition():
    from softipu.ops.elementwise._planning import _runs

    rng = np.random.default_rng(0)
    for trial in range(400):
        k = int(rng.integers(0, 40))
        lengths = rng.choice([1, 2, 3], size=k) if trial % 2 else np.full(k, 4)
        gaps = rng.choice([0, 1, 5], size=k) if trial % 3 else np.zeros(k, np.int64)
        starts = np.concatenate(([0], np.cumsum(lengths[:-1] + gaps[:-1]))).astype(np.int64)[:k]
        want = _greedy_runs(starts.tolist(), lengths.tolist())
        assert _runs(starts, lengths.astype(np.int64)) == want
        assert _runs(starts, lengths.astype(np.int64), 2) == want[:3]
