"""The Engine: errors it raises, every dtype, empty and 0-d tensors and constants, against numpy.

Tests that only need a value run on both interpreters (``reference`` parametrizes the fast,
batched engine and the per-vertex reference engine); every expected value is computed here with
numpy, never read back from softipu.
"""

from __future__ import annotations

import numpy as np
import pytest

import softipu as sp
from _engine_helpers import ENGINES, engine, variable
from codelets_for_tests import AddOne, Divide
from softipu import program as P
from softipu.dtypes import ALL_DTYPES


# -- engine errors -------------------------------------------------------------------------------
def test_program_index_out_of_range():
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    eng = engine(g, [P.Sequence(), P.Sequence()])
    for bad in (2, -1):
        with pytest.raises(sp.ProgramError, match=r"2 program\(s\)"):
            eng.run(bad)
    with pytest.raises(sp.ProgramError):
        eng.run("0")
    with pytest.raises(sp.ProgramError):
        sp.Engine(g, [])


@pytest.mark.parametrize(("key", "near"), [("engine.referense", "engine.reference"),
                                           ("debug.floatPointOpException", "debug.floatingPointExceptions")])
def test_unknown_option_suggests_the_near_name(key, near):
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    with pytest.raises(sp.OptionError, match=f"did you mean '{near}'"):
        sp.Engine(g, [P.Sequence()], {key: True})
    with pytest.raises(sp.OptionError, match="bool"):
        sp.Engine(g, [P.Sequence()], {near: "yes"})


def test_write_tensor_checks_shape_and_dtype_kind():
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    i = variable(g, sp.int32, (3,), "i")
    f = variable(g, sp.float16, (3,), "f")
    eng = engine(g, [P.Sequence()])
    with pytest.raises(sp.EngineError, match=r"shape \(4,\)"):
        eng.write_tensor(i, [1, 2, 3, 4])
    with pytest.raises(sp.EngineError, match="int32"):
        eng.write_tensor(i, np.array([1.0, 2.0, 3.0]))
    with np.errstate(over="ignore"):  # float64 into float16: same kind; rounds, overflows to inf
        eng.write_tensor(f, np.array([0.5, 1e-3, 70000.0]))
    np.testing.assert_array_equal(eng.read_tensor(f), np.array([0.5, 1e-3, np.inf], np.float16))
    eng.write_tensor(f, [1, 2, 3])  # Python ints into a float tensor
    np.testing.assert_array_equal(eng.read_tensor(f), [1, 2, 3])


def test_write_tensor_of_python_ints_into_unsigned_and_bool():
    # Python ints are int64 to numpy; an unsigned or bool tensor must still take them (the kind
    # that must not be lost is float vs integer).
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    u = variable(g, sp.uint32, (3,), "u")
    b = variable(g, sp.bool_, (3,), "b")
    eng = engine(g, [P.Sequence()])
    eng.write_tensor(u, [1, 2, 4000000000])
    eng.write_tensor(b, [0, 1, 1])
    np.testing.assert_array_equal(eng.read_tensor(u), np.array([1, 2, 4000000000], np.uint32))
    np.testing.assert_array_equal(eng.read_tensor(b), [False, True, True])


def test_write_tensor_refuses_integers_that_do_not_fit():
    # uint8 and bool refuse out-of-range ints; a signed narrowing must not wrap them silently either.
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    tensors = {dtype: variable(g, dtype, (2,), dtype.name) for dtype in (sp.int8, sp.uint8, sp.bool_)}
    eng = engine(g, [P.Sequence()])
    for dtype, values in [(sp.uint8, [300, 1]), (sp.uint8, [-1, 1]), (sp.bool_, [2, 1]), (sp.int8, [300, 1]),
                          (sp.int8, np.array([-129, 1], np.int32))]:
        with pytest.raises(sp.EngineError, match="do not fit"):
            eng.write_tensor(tensors[dtype], values)
    eng.write_tensor(tensors[sp.int8], [-128, 127])
    np.testing.assert_array_equal(eng.read_tensor(tensors[sp.int8]), [-128, 127])


def test_write_to_views_that_repeat_elements_is_refused():
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    x = variable(g, sp.float32, (4,), "x")
    eng = engine(g, [P.Sequence()])
    with pytest.raises(sp.EngineError, match="repeats elements"):
        eng.write_tensor(x[0:1].broadcast((3,)), [1, 2, 3])
    with pytest.raises(sp.EngineError, match="repeats elements"):
        eng.write_tensor(x[[0, 2, 0]], [1, 2, 3])
    eng.write_tensor(x[[3, 0]], [5, 6])  # an indexed view without repeats is fine
    np.testing.assert_array_equal(eng.read_tensor(x), [6, 0, 0, 5])
    np.testing.assert_array_equal(eng.read_tensor(x[0:1].broadcast((3,))), [6, 6, 6])


def test_tensors_of_another_graph_or_added_after_compile_are_refused():
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    x = variable(g, sp.float32, (4,), "x")
    eng = engine(g, [P.Sequence()])
    other = sp.Graph(sp.targets.ipu_model(tiles=4))
    foreign = variable(other, sp.float32, (4,), "x")
    late = variable(g, sp.float32, (4,), "late")
    late_int = variable(g, sp.int8, (2,), "late_int")
    for t in (foreign, late, late_int):
        with pytest.raises(sp.EngineError):
            eng.write_tensor(t, np.zeros(t.shape, t.dtype.numpy))
        with pytest.raises(sp.EngineError):
            eng.read_tensor(t)
    with pytest.raises(sp.EngineError):
        eng.read_tensor(np.zeros(4))
    eng.write_tensor(x, [1, 2, 3, 4])  # the engine itself still works
    np.testing.assert_array_equal(eng.read_tensor(x), [1, 2, 3, 4])


@ENGINES
def test_floating_point_exceptions_option(reference):
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    x, d, q = (variable(g, sp.float32, (4,), name) for name in ("x", "d", "q"))
    cs = g.add_compute_set("divide")
    g.add_vertex(cs, Divide, {"x": x, "d": d, "q": q}, tile=0)
    default = engine(g, [P.Execute(cs)], reference)
    strict = engine(g, [P.Execute(cs)], reference, **{"debug.floatingPointExceptions": True})
    for eng in (default, strict):
        eng.write_tensor(x, [1, -1, 6, 0])
        eng.write_tensor(d, [0, 0, 3, 2])
    default.run(0)
    np.testing.assert_array_equal(default.read_tensor(q), [np.inf, -np.inf, 2, 0])
    with pytest.raises(sp.CodeletError, match="Divide") as info:
        strict.run(0)
    assert isinstance(info.value.__cause__, FloatingPointError)
    strict.write_tensor(d, [1, 1, 1, 1])  # without a division by zero it runs
    strict.run(0)
    np.testing.assert_array_equal(strict.read_tensor(q), [1, -1, 6, 0])


# -- dtypes, empty and 0-d tensors, constants ---------------------------------------------------
def _extremes(dtype: sp.DType, n: int) -> np.ndarray:
    rng = np.random.default_rng(3)
    npt = dtype.numpy
    if dtype is sp.bool_:
        return rng.random(n) < 0.5
    if dtype.is_float:
        info = np.finfo(npt)
        special = np.array([np.nan, np.inf, -np.inf, -0.0, info.max, info.min, info.tiny, info.smallest_subnormal])
        return np.concatenate([special, rng.standard_normal(n - special.size)]).astype(npt)
    info = np.iinfo(npt)
    special = np.array([info.min, info.max, 0, 1], dtype=npt)
    return np.concatenate([special, rng.integers(info.min, info.max, n - 4, dtype=npt, endpoint=True)])


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=[d.name for d in ALL_DTYPES])
def test_every_dtype_round_trips_and_copies(dtype):
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    x, y, z = (variable(g, dtype, (12,), name) for name in ("x", "y", "z"))
    eng = engine(g, [P.Sequence([P.Copy(x, y), P.Copy(x.reverse(), z)])])
    values = _extremes(dtype, 12)
    eng.write_tensor(x, values)
    eng.run(0)
    for t, want in ((x, values), (y, values), (z, values[::-1])):
        got = eng.read_tensor(t)
        assert got.dtype == dtype.numpy
        assert got.tobytes() == np.ascontiguousarray(want).tobytes()


@ENGINES
def test_empty_and_0d_tensors(reference):
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    e, e2 = variable(g, sp.float32, (0,), "e"), variable(g, sp.float32, (0,), "e2")
    wide = variable(g, sp.int32, (3, 0), "wide")
    s, s2 = variable(g, sp.float32, (), "s", tile=1), variable(g, sp.float32, (), "s2", tile=2)
    cs = g.add_compute_set("empty_vertex")
    g.add_vertex(cs, AddOne, {"x": e, "y": e2}, tile=0)
    g.add_vertex(cs, AddOne, {"x": s, "y": s2}, tile=2)  # a 0-d tensor as a 1-element vector
    eng = engine(g, [P.Sequence([P.Copy(e, e2), P.Copy(wide, wide), P.Copy(s, s2)]), P.Execute(cs)],
                 reference)
    eng.write_tensor(e, np.zeros(0, np.float32))
    eng.write_tensor(wide, np.zeros((3, 0), np.int32))
    eng.write_tensor(s, 2.5)
    eng.run(0)
    assert eng.read_tensor(e2).shape == (0,)
    assert eng.read_tensor(wide).shape == (3, 0)
    assert eng.read_tensor(s2).shape == ()
    assert float(eng.read_tensor(s2)) == 2.5
    eng.run(1)
    assert float(eng.read_tensor(s2)) == 3.5
    with pytest.raises(sp.EngineError):
        eng.write_tensor(s, [1.0, 2.0])


def test_read_tensor_of_a_0d_tensor_is_an_array():
    # read_tensor promises an ndarray; replicated graphs give one, so should a single replica.
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    s = variable(g, sp.float32, (), "s")
    eng = engine(g, [P.Sequence()])
    eng.write_tensor(s, 1.5)
    got = eng.read_tensor(s)
    assert isinstance(got, np.ndarray) and got.shape == () and got == 1.5


@ENGINES
def test_constants_hold_their_values_after_load(reference):
    g = sp.Graph(sp.targets.ipu_model(tiles=4), replication_factor=2)
    c = g.add_constant(sp.int32, (4,), [1, -2, 3, 2**31 - 1], name="c")
    half = g.add_constant(sp.float32, (2, 3), 0.5, name="half")
    y = variable(g, sp.float32, (6,), "y")
    sp.ops.map_linearly(g, c)
    sp.ops.map_linearly(g, half)
    cs = g.add_compute_set("use")
    g.add_vertex(cs, AddOne, {"x": half.flatten(), "y": y}, tile=3)
    eng = engine(g, [P.Execute(cs)], reference)
    np.testing.assert_array_equal(eng.read_tensor(c), [[1, -2, 3, 2**31 - 1]] * 2)
    eng.run(0)
    np.testing.assert_array_equal(eng.read_tensor(half), np.full((2, 2, 3), 0.5))
    np.testing.assert_array_equal(eng.read_tensor(y), np.full((2, 6), 1.5))


# -- compile errors surfaced by the Engine -------------------------------------------------------
def test_write_conflict_names_the_bulk_vertex():
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    y = variable(g, sp.float32, (4,), "y")
    x = variable(g, sp.float32, (4,), "x")
    cs = g.add_compute_set("clash")
    g.add_vertex(cs, AddOne, {"x": x[0:1], "y": y[0:1]})  # vertex 0
    g.add_vertices(cs, AddOne, {"x": x[1:3].reshape(2, 1), "y": y[1:3].reshape(2, 1)}, tiles=[0, 0])  # 1, 2
    g.add_vertex(cs, AddOne, {"x": x[3:4], "y": y[2:3]})  # vertex 3 writes what vertex 2 writes
    with pytest.raises(sp.WriteConflictError) as info:
        sp.Engine(g, [P.Execute(cs)])
    message = str(info.value)
    assert "vertex 2 " in message and "vertex 3 " in message
