"""The Engine: compute, control flow, host streams, replication and errors, against numpy.

Tests that only need a value run on both interpreters (``reference`` parametrizes the fast,
batched engine and the per-vertex reference engine); every expected value is computed here with
numpy, never read back from softipu.
"""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest

import softipu as sp
from codelets_for_tests import (
    Accumulate,
    AddOne,
    Boom,
    Divide,
    Increment,
    Less,
    RowSum,
    Scale,
    WritesItsInput,
    WritesItsParam,
    sequential_sum,
)
from softipu import program as P
from softipu.dtypes import ALL_DTYPES

ENGINES = pytest.mark.parametrize("reference", [False, True], ids=["fast", "reference"])


def engine(g: sp.Graph, programs, reference: bool = False, **options) -> sp.Engine:
    return sp.Engine(g, programs, {"engine.reference": reference, **options})


def variable(g: sp.Graph, dtype, shape, name: str, tile: int | None = None) -> sp.Tensor:
    """A variable mapped linearly over the tiles, or all on ``tile``."""
    t = g.add_variable(dtype, shape, name=name)
    if tile is None:
        sp.ops.map_linearly(g, t)
    else:
        g.set_tile_mapping(t, tile)
    return t


def next_line() -> int:
    """The line after the caller's: where the next statement's source location should point."""
    return sys._getframe(1).f_lineno + 1


def counter_step(g: sp.Graph, count: sp.Tensor, step: int, name: str) -> P.Program:
    """A program adding ``step`` to the int32 scalar ``count``."""
    cs = g.add_compute_set(name)
    g.add_vertex(cs, Increment, {"count": count, "step": step}, tile=0)
    return P.Execute(cs)


# -- compute -------------------------------------------------------------------------------------
@ENGINES
def test_readme_add_one_over_four_tiles(reference):
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    x = g.add_variable(sp.float32, (8,), name="x")
    y = g.add_variable(sp.float32, (8,), name="y")
    cs = g.add_compute_set("add_one")
    for tile in range(4):
        part = slice(2 * tile, 2 * tile + 2)
        g.set_tile_mapping(x[part], tile)
        g.set_tile_mapping(y[part], tile)
        g.add_vertex(cs, AddOne, {"x": x[part], "y": y[part]}, tile=tile)
    eng = engine(g, [P.Execute(cs)], reference)
    xs = np.arange(8, dtype=np.float32) * 1.5
    eng.write_tensor(x, xs)
    eng.run(0)
    np.testing.assert_array_equal(eng.read_tensor(y), xs + 1)
    np.testing.assert_array_equal(eng.read_tensor(x), xs)


def test_read_and_write_tensor_copy_their_data():
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    x = variable(g, sp.float32, (2, 3), "x")
    eng = engine(g, [P.Sequence()])
    host = np.arange(6, dtype=np.float32).reshape(2, 3)
    eng.write_tensor(x, host)
    host[...] = -1  # the device keeps what was written
    got = eng.read_tensor(x)
    got[...] = 99  # and a read is the caller's own copy
    np.testing.assert_array_equal(eng.read_tensor(x), np.arange(6).reshape(2, 3))
    np.testing.assert_array_equal(eng.read_tensor(x.T[::-1]), np.arange(6).reshape(2, 3).T[::-1])


class ShapeSpy(sp.Vertex):
    """Records the shapes and dtypes compute gets."""

    x = sp.Input(sp.float16)
    s = sp.Input(sp.int32, sp.SCALAR)
    xs = sp.Input(sp.float32, sp.VECTOR_LIST)
    p = sp.Param(sp.int32)
    y = sp.Output(sp.float16)
    seen: list = []

    @staticmethod
    def compute(x, s, xs, p, y):
        ShapeSpy.seen.append({"x": (x.shape, x.dtype), "s": (s.shape, s.dtype), "p": (p.shape, p.dtype),
                              "xs": [(a.shape, a.dtype) for a in xs], "y": (y.shape, y.dtype)})
        y[...] = x


@pytest.mark.parametrize("replicas", [1, 2])
def test_fast_engine_batches_vertices_along_leading_axes(replicas):
    g = sp.Graph(sp.targets.ipu_model(tiles=4), replication_factor=replicas)
    x, y = variable(g, sp.float16, (3, 4), "x"), variable(g, sp.float16, (3, 4), "y")
    s = variable(g, sp.int32, (3,), "s")
    a, b = variable(g, sp.float32, (3, 2), "a"), variable(g, sp.float32, (3, 5), "b")
    cs = g.add_compute_set("spy")
    g.add_vertices(cs, ShapeSpy, {"x": x, "s": s, "xs": [a, b], "p": [1, 2, 3], "y": y}, tiles=[0, 1, 2])
    ShapeSpy.seen.clear()
    eng = engine(g, [P.Execute(cs)])
    eng.run(0)
    lead = (replicas, 3) if replicas > 1 else (3,)
    f16, f32, i32 = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.int32)
    (seen,) = ShapeSpy.seen
    p_shape, p_dtype = seen.pop("p")
    assert p_shape in ((3, 1), lead + (1,)) and p_dtype == i32  # params may leave out the replica axis
    assert seen == {"x": (lead + (4,), f16), "s": (lead + (1,), i32),
                    "xs": [(lead + (2,), f32), (lead + (5,), f32)], "y": (lead + (4,), f16)}


@ENGINES
def test_codelet_writing_its_input_raises_with_inout_hint(reference):
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    x, y = variable(g, sp.float32, (4,), "x"), variable(g, sp.float32, (4,), "y")
    cs = g.add_compute_set("scribble")
    g.add_vertex(cs, WritesItsInput, {"x": x, "y": y}, tile=1)
    eng = engine(g, [P.Execute(cs)], reference)
    eng.write_tensor(x, [1, 2, 3, 4])
    with pytest.raises(sp.CodeletError) as info:
        eng.run(0)
    message = str(info.value)
    assert "WritesItsInput" in message
    assert "'scribble'" in message
    assert "InOut" in message
    np.testing.assert_array_equal(eng.read_tensor(x), [1, 2, 3, 4])


@ENGINES
def test_codelet_writing_its_param_raises(reference):
    # A Param is a per-vertex constant: the fast engine passes it read-only, so the reference
    # engine (the definition) must refuse the write too.
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    y = variable(g, sp.float32, (4,), "y")
    cs = g.add_compute_set("scribble")
    g.add_vertex(cs, WritesItsParam, {"y": y, "p": 2.0}, tile=0)
    eng = engine(g, [P.Execute(cs)], reference)
    with pytest.raises(sp.CodeletError, match="WritesItsParam"):
        eng.run(0)


@ENGINES
def test_exception_in_compute_names_codelet_compute_set_tiles_and_line(reference):
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    x, y = variable(g, sp.float32, (4,), "x"), variable(g, sp.float32, (4,), "y")
    cs = g.add_compute_set("explode")
    line = next_line()
    g.add_vertex(cs, Boom, {"x": x[0:2], "y": y[0:2]}, tile=1)
    g.add_vertex(cs, Boom, {"x": x[2:4], "y": y[2:4]}, tile=3)
    eng = engine(g, [P.Execute(cs)], reference)
    with pytest.raises(sp.CodeletError) as info:
        eng.run(0)
    message = str(info.value)
    assert "Boom" in message
    assert "'explode'" in message
    assert re.search(r"tiles 1\D+3", message), message
    assert f"{__file__}:{line}" in message
    assert "ValueError: boom from the codelet" in message
    assert isinstance(info.value.__cause__, ValueError)


@ENGINES
def test_bsp_output_on_another_tile_in_place_update_and_next_compute_set(reference):
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    x = variable(g, sp.float32, (6,), "x", tile=0)
    y = variable(g, sp.float32, (6,), "y", tile=3)  # written by a vertex on tile 0
    acc = variable(g, sp.float32, (6,), "acc", tile=2)
    z = variable(g, sp.float32, (6,), "z", tile=1)
    first, second = g.add_compute_set("first"), g.add_compute_set("second")
    g.add_vertex(first, Scale, {"x": x, "factor": -2.0, "y": y}, tile=0)
    g.add_vertex(first, Accumulate, {"acc": acc, "x": x}, tile=2)
    g.add_vertex(second, AddOne, {"x": y, "y": z}, tile=1)  # sees what `first` wrote
    eng = engine(g, [P.Sequence([P.Execute(first), P.Execute(second), P.Execute(first)])], reference)
    xs = np.array([1, -2, 3.5, 0, 8, -0.25], np.float32)
    eng.write_tensor(x, xs)
    eng.write_tensor(acc, np.full(6, 10, np.float32))
    eng.run(0)
    np.testing.assert_array_equal(eng.read_tensor(y), xs * -2)
    np.testing.assert_array_equal(eng.read_tensor(z), xs * -2 + 1)
    np.testing.assert_array_equal(eng.read_tensor(acc), 10 + xs + xs)


class ChunkSpy(sp.Vertex):
    """y = x * factor; records how many vertices each compute call got."""

    x = sp.Input(sp.float32)
    factor = sp.Param(sp.float32)
    y = sp.Output(sp.float32)
    batches: list[int] = []

    @staticmethod
    def compute(x, factor, y):
        ChunkSpy.batches.append(x.shape[-2])
        y[...] = x * factor


def test_large_group_runs_in_chunks_and_matches_reference():
    vertices, n = 96, 4096  # 1.5 MiB per field per replica: more than two 512 KiB chunks
    g = sp.Graph(sp.targets.ipu_model(tiles=16, bytes_per_tile=624 * 1024), replication_factor=2)
    x = variable(g, sp.float32, (vertices, n), "x")
    y = variable(g, sp.float32, (vertices, n), "y")
    cs = g.add_compute_set("big")
    factors = (np.arange(vertices) % 5 - 2).astype(np.float32) / 4
    g.add_vertices(cs, ChunkSpy, {"x": x, "factor": factors, "y": y}, tiles=np.arange(vertices) // 6)
    xs = np.random.default_rng(0).standard_normal((2, vertices, n)).astype(np.float32)
    results = []
    for reference in (False, True):
        ChunkSpy.batches.clear()
        eng = engine(g, [P.Execute(cs)], reference)
        eng.write_tensor(x, xs)
        eng.run(0)
        results.append(eng.read_tensor(y))
        if not reference:
            assert len(ChunkSpy.batches) > 1, "the group should run in several chunks"
            assert sum(ChunkSpy.batches) == vertices
    np.testing.assert_array_equal(results[0], xs * factors[:, None])
    assert results[0].tobytes() == results[1].tobytes()


class NumpySum(sp.Vertex):
    """total = np.sum(x): numpy's pairwise order, which depends on the memory layout it gets."""

    x = sp.Input(sp.float32)
    total = sp.Output(sp.float32, sp.SCALAR)

    @staticmethod
    def compute(x, total):
        total[...] = x.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("replicas", [1, 2])
@pytest.mark.parametrize("layout", ["rows", "columns", "reversed", "indexed"])
def test_float_sums_do_not_depend_on_the_field_layout(layout, replicas):
    # design.md: numerics are "independent of how the engine batches". The reference engine hands
    # each vertex its vector as one contiguous row; the fast engine must give numpy rows that it
    # sums in the same order, whatever the view (a column, reversed, gathered, per replica).
    vertices, n = 64, 300
    g = sp.Graph(sp.targets.ipu_model(tiles=4, bytes_per_tile=624 * 1024), replication_factor=replicas)
    m = variable(g, sp.float32, (n, vertices) if layout == "columns" else (vertices, n), "m")
    sums = variable(g, sp.float32, (vertices,), "sums")
    perm = np.random.default_rng(1).permutation(n)
    field = {"rows": lambda j: m[j], "columns": lambda j: m[:, j], "reversed": lambda j: m[j].reverse(),
             "indexed": lambda j: m[j][perm]}[layout]
    cs = g.add_compute_set("sums")
    for j in range(vertices):
        g.add_vertex(cs, NumpySum, {"x": field(j), "total": sums[j]}, tile=j % 4)
    ms = np.random.default_rng(0).standard_normal((replicas, *m.shape)).astype(np.float32)
    vectors = {"rows": lambda: ms, "columns": lambda: ms.transpose(0, 2, 1),
               "reversed": lambda: ms[..., ::-1], "indexed": lambda: ms[..., perm]}[layout]()
    want = np.array([[np.ascontiguousarray(v).reshape(1, n).sum(axis=-1)[0] for v in rep] for rep in vectors])
    for reference in (False, True):
        eng = engine(g, [P.Execute(cs)], reference)
        eng.write_tensor(m, ms if replicas > 1 else ms[0])
        eng.run(0)
        got = eng.read_tensor(sums).reshape(replicas, vertices)
        assert got.tobytes() == want.astype(np.float32).tobytes(), "reference" if reference else "fast"


# -- control flow --------------------------------------------------------------------------------
@ENGINES
def test_repeat_runs_its_body_count_times(reference):
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    count = variable(g, sp.int32, (1,), "count", tile=0)
    inc = counter_step(g, count, 3, "inc")
    eng = engine(g, [P.Repeat(5, inc), P.Repeat(0, inc)], reference)
    eng.write_tensor(count, [1])
    eng.run(0)
    assert eng.read_tensor(count).tolist() == [16]
    eng.run(1)
    assert eng.read_tensor(count).tolist() == [16]


def _loop_graph():
    """count, flag = count < limit (evaluated in the condition, which also counts evaluations)."""
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    count = variable(g, sp.int32, (), "count", tile=0)
    flag = variable(g, sp.int32, (), "flag", tile=1)
    evals = variable(g, sp.int32, (), "evals", tile=2)
    cond = g.add_compute_set("cond")
    g.add_vertex(cond, Less, {"count": count, "limit": 4, "flag": flag}, tile=1)
    g.add_vertex(cond, Increment, {"count": evals, "step": 1}, tile=2)
    return g, count, flag, evals, P.Execute(cond)


@ENGINES
@pytest.mark.parametrize(("start", "want_count", "want_evals"), [(0, 4, 5), (9, 9, 1)])
def test_repeat_while_true_with_a_counter(reference, start, want_count, want_evals):
    g, count, flag, evals, cond = _loop_graph()
    body = counter_step(g, count, 1, "up")
    eng = engine(g, [P.RepeatWhileTrue(cond, flag, body)], reference)
    eng.write_tensor(count, start)
    eng.run(0)
    assert (int(eng.read_tensor(count)), int(eng.read_tensor(evals))) == (want_count, want_evals)


@ENGINES
@pytest.mark.parametrize(("start", "want_count", "want_evals"), [(10, 3, 8), (0, 0, 1)])
def test_repeat_while_false_with_a_counter(reference, start, want_count, want_evals):
    g, count, flag, evals, cond = _loop_graph()  # runs while not count < 4
    body = counter_step(g, count, -1, "down")
    eng = engine(g, [P.RepeatWhileFalse(cond, flag, body)], reference)
    eng.write_tensor(count, start)
    eng.run(0)
    assert (int(eng.read_tensor(count)), int(eng.read_tensor(evals))) == (want_count, want_evals)


@ENGINES
def test_if_else_on_a_predicate_tensor(reference):
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    out = variable(g, sp.int32, (1,), "out", tile=0)
    pred = variable(g, sp.int32, (1,), "pred", tile=1)
    fpred = variable(g, sp.float32, (1,), "fpred", tile=1)
    then, else_ = counter_step(g, out, 1, "then"), counter_step(g, out, 100, "else")
    eng = engine(g, [P.If(pred, then, else_), P.If(pred, then), P.If(fpred, then, else_)], reference)
    for program, value, want in [(0, 1, 1), (0, 0, 101), (0, -3, 102), (1, 0, 102), (1, 7, 103)]:
        eng.write_tensor(pred, [value])
        eng.run(program)
        assert eng.read_tensor(out).tolist() == [want], (program, value)
    eng.write_tensor(fpred, [0.5])
    eng.run(2)
    assert eng.read_tensor(out).tolist() == [104]


@ENGINES
def test_switch_runs_the_matching_case_or_default(reference):
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    out = variable(g, sp.int32, (1,), "out", tile=0)
    control = variable(g, sp.int32, (1,), "control", tile=1)
    cases = {0: counter_step(g, out, 1, "c0"), 5: counter_step(g, out, 10, "c5"),
             -2: counter_step(g, out, 1000, "cm2")}
    default = counter_step(g, out, 100, "default")
    eng = engine(g, [P.Switch(control, cases, default), P.Switch(control, cases)], reference)
    total = 0
    for program, value, add in [(0, 0, 1), (0, 5, 10), (0, -2, 1000), (0, 7, 100), (1, 7, 0), (1, 5, 10)]:
        eng.write_tensor(control, [value])
        eng.run(program)
        total += add
        assert eng.read_tensor(out).tolist() == [total], (program, value)


@ENGINES
def test_call_of_a_function_used_twice_and_from_two_programs(reference):
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    count = variable(g, sp.int32, (1,), "count", tile=0)
    fn = g.add_function(counter_step(g, count, 1, "inc"), name="inc")
    twice = g.add_function(P.Sequence([P.Call(fn), P.Call(fn)]), name="twice")
    eng = engine(g, [P.Sequence([P.Call(fn), P.Call(fn), P.Repeat(3, P.Call(fn))]), P.Call(twice)],
                 reference)
    eng.run(0)
    assert eng.read_tensor(count).tolist() == [5]
    eng.run(1)
    assert eng.read_tensor(count).tolist() == [7]


@ENGINES
def test_nested_loops(reference):
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    a = variable(g, sp.int32, (1,), "a", tile=0)
    b = variable(g, sp.int32, (1,), "b", tile=1)
    inc_a, inc_b = counter_step(g, a, 1, "inc_a"), counter_step(g, b, 1, "inc_b")
    loops = P.Repeat(3, P.Sequence([P.Repeat(4, inc_a), inc_b]))
    # while b < 4: a += 2 (twice 1), b += 1
    flag = variable(g, sp.int32, (1,), "flag", tile=2)
    cond = g.add_compute_set("b_below_4")
    g.add_vertex(cond, Less, {"count": b, "limit": 4, "flag": flag}, tile=2)
    while_loop = P.RepeatWhileTrue(P.Execute(cond), flag, P.Sequence([P.Repeat(2, inc_a), inc_b]))
    eng = engine(g, [loops, while_loop], reference)
    eng.run(0)
    assert (eng.read_tensor(a).tolist(), eng.read_tensor(b).tolist()) == ([12], [3])
    eng.run(1)
    assert (eng.read_tensor(a).tolist(), eng.read_tensor(b).tolist()) == ([14], [4])


def test_print_tensor_prints_title_and_values(capsys):
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    x = variable(g, sp.float32, (3,), "x")
    eng = engine(g, [P.PrintTensor(x, "my title"), P.PrintTensor("poplar order", x), P.PrintTensor(x)])
    eng.write_tensor(x, [1.5, -2, 3])
    for i in range(3):
        eng.run(i)
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["my title: [ 1.5 -2.   3. ]", "poplar order: [ 1.5 -2.   3. ]", "x: [ 1.5 -2.   3. ]"]


@ENGINES
def test_write_undef_sync_and_an_empty_compute_set_run(reference):
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    x, y = variable(g, sp.float32, (4,), "x"), variable(g, sp.float32, (4,), "y")
    cs = g.add_compute_set("add_one")
    g.add_vertex(cs, AddOne, {"x": x, "y": y}, tile=0)
    empty = g.add_compute_set("no_vertices")
    program = P.Sequence([P.WriteUndef(y), P.Sync(), P.Execute(empty), P.Execute(cs),
                          P.Sync(P.SyncType.EXTERNAL), P.Sync(P.SyncType.GLOBAL)])
    eng = engine(g, [program], reference)
    eng.write_tensor(x, [0, 1, 2, 3])
    eng.run(0)
    np.testing.assert_array_equal(eng.read_tensor(y), [1, 2, 3, 4])


# -- host streams --------------------------------------------------------------------------------
def _stream_graph(replicas: int = 1):
    g = sp.Graph(sp.targets.ipu_model(tiles=4), replication_factor=replicas)
    x = variable(g, sp.float32, (4,), "x")
    feed = g.add_host_to_device_fifo("feed", sp.float32, 4)
    drain = g.add_device_to_host_fifo("drain", sp.float32, 4)
    return g, x, feed, drain


def test_host_to_device_array_is_a_ring_read_at_run_time():
    g, x, feed, _ = _stream_graph()
    eng = engine(g, [P.Copy(feed, x)])
    host = np.arange(12, dtype=np.float32).reshape(3, 4)
    eng.connect_stream("feed", host)
    for row in (0, 1, 2, 0):
        eng.run(0)
        np.testing.assert_array_equal(eng.read_tensor(x), host[row])
    host[1] = -1  # the engine reads the host buffer when the transfer happens, like Poplar
    eng.run(0)
    np.testing.assert_array_equal(eng.read_tensor(x), [-1, -1, -1, -1])
    eng.connect_stream("feed", np.arange(8, dtype=np.float32))  # 1-D: rows of 4, from the start
    for want in ([0, 1, 2, 3], [4, 5, 6, 7], [0, 1, 2, 3]):
        eng.run(0)
        np.testing.assert_array_equal(eng.read_tensor(x), want)


def test_host_to_device_callback_fills_the_buffer():
    g, x, feed, _ = _stream_graph()
    y = variable(g, sp.float32, (4,), "y")
    eng = engine(g, [P.Copy(feed, x), P.Sequence([P.Copy(feed, x), P.Copy(feed, y)])])
    seen = []

    def fill(buffer):
        seen.append((buffer.shape, buffer.dtype))
        buffer[:] = len(seen)

    eng.connect_stream("feed", fill)
    eng.run(0)
    np.testing.assert_array_equal(eng.read_tensor(x), [1, 1, 1, 1])
    eng.run(1)
    np.testing.assert_array_equal(eng.read_tensor(x), [2, 2, 2, 2])
    np.testing.assert_array_equal(eng.read_tensor(y), [3, 3, 3, 3])
    assert seen == [((4,), np.dtype(np.float32))] * 3
    eng.connect_stream("feed", lambda buffer: np.array([9, 8, 7, 6]))  # returning the data works too
    eng.run(0)
    np.testing.assert_array_equal(eng.read_tensor(x), [9, 8, 7, 6])
    eng.connect_stream("feed", lambda buffer: np.zeros(5))
    with pytest.raises(sp.StreamError, match="feed"):
        eng.run(0)


def test_device_to_host_into_an_array_and_a_callback():
    g, x, _, drain = _stream_graph()
    eng = engine(g, [P.Copy(x, drain)])
    host = np.zeros((2, 4), np.float32)
    eng.connect_stream("drain", host)
    for k in range(3):
        eng.write_tensor(x, np.arange(4) + 10 * k)
        eng.run(0)
    np.testing.assert_array_equal(host, [[20, 21, 22, 23], [10, 11, 12, 13]])  # a ring: row 0 again
    received = []
    eng.connect_stream("drain", received.append)
    eng.write_tensor(x, [5, 6, 7, 8])
    eng.run(0)
    eng.write_tensor(x, [0, 0, 0, 0])
    eng.run(0)
    assert len(received) == 2
    np.testing.assert_array_equal(received[0], [5, 6, 7, 8])  # a copy, not a view of the device
    assert received[0].dtype == np.float32


@pytest.mark.parametrize(
    ("name", "data", "match"),
    [
        ("feed", np.zeros(5, np.float32), "multiple of 4"),
        ("feed", np.zeros(4, np.float64), "float32"),
        ("feed", np.zeros((4, 8), np.float32)[:, ::2], "C-contiguous"),
        ("feed", np.zeros(0, np.float32), "multiple of 4"),
        ("feed", [1.0, 2.0, 3.0, 4.0], "numpy array"),
        ("drain", np.zeros(4, np.float32).view(), "read-only"),
    ],
    ids=["wrong-size", "wrong-dtype", "non-contiguous", "empty", "list", "read-only"],
)
def test_bad_stream_connections_raise(name, data, match):
    g, x, feed, drain = _stream_graph()
    eng = engine(g, [P.Copy(feed, x), P.Copy(x, drain)])
    if match == "read-only":
        data.flags.writeable = False
    with pytest.raises(sp.StreamError, match=match):
        eng.connect_stream(name, data)


def test_unconnected_stream_raises_at_run_naming_it():
    g, x, feed, _ = _stream_graph()
    eng = engine(g, [P.Sequence([P.Copy(feed, x)])])  # compiles without a connection
    with pytest.raises(sp.StreamError, match="'feed' is not connected"):
        eng.run(0)


def test_unconnected_stream_error_names_the_copy_line():
    g, x, feed, _ = _stream_graph()
    line = next_line()
    copy = P.Copy(feed, x)
    eng = engine(g, [copy])
    with pytest.raises(sp.StreamError) as info:
        eng.run(0)
    assert f"{__file__}:{line}" in str(info.value)


def test_stream_name_typo_suggests_the_near_name():
    g, x, feed, _ = _stream_graph()
    eng = engine(g, [P.Copy(feed, x)])
    with pytest.raises(sp.StreamError, match="did you mean 'feed'"):
        eng.connect_stream("fede", np.zeros(4, np.float32))


def test_stream_copy_direction_is_checked_at_compile():
    g, x, feed, drain = _stream_graph()
    with pytest.raises(sp.CompileError, match="'drain' is device-to-host"):
        engine(g, [P.Copy(drain, x)])
    with pytest.raises(sp.CompileError, match="'feed' is host-to-device"):
        engine(g, [P.Copy(x, feed)])


def test_stream_copy_into_a_2d_tensor_of_the_same_size():
    # Poplar's Copy(stream, tensor) needs only equal element counts; the engine already reshapes
    # each transfer to the destination's shape.
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    m = variable(g, sp.float32, (2, 3), "m")
    feed = g.add_host_to_device_fifo("feed", sp.float32, 6)
    eng = engine(g, [P.Copy(feed, m)])
    eng.connect_stream("feed", np.arange(6, dtype=np.float32))
    eng.run(0)
    np.testing.assert_array_equal(eng.read_tensor(m), [[0, 1, 2], [3, 4, 5]])


# -- replication ---------------------------------------------------------------------------------
@ENGINES
def test_replicas_hold_different_data_and_compute_independently(reference):
    g = sp.Graph(sp.targets.ipu_model(tiles=4), replication_factor=2)
    x, y = variable(g, sp.float32, (2, 4), "x"), variable(g, sp.float32, (2, 4), "y")
    cs = g.add_compute_set("sum_rows")
    g.add_vertices(cs, RowSum, {"x": x, "total": y[:, 0]}, tiles=[0, 1])
    g.add_vertex(cs, AddOne, {"x": x[:, 1:4].flatten(), "y": y[:, 1:4].flatten()}, tile=2)
    eng = engine(g, [P.Execute(cs)], reference)
    xs = np.arange(16, dtype=np.float32).reshape(2, 2, 4) * np.array([1, -1], np.float32)[:, None, None]
    eng.write_tensor(x, xs)
    eng.run(0)
    got = eng.read_tensor(y)
    assert got.shape == (2, 2, 4)
    np.testing.assert_array_equal(got[..., 0], sequential_sum(xs)[..., 0])
    np.testing.assert_array_equal(got[..., 1:], xs[..., 1:] + 1)
    eng.write_tensor(x, xs[1])  # one replica's shape: both replicas get it
    np.testing.assert_array_equal(eng.read_tensor(x), np.stack([xs[1], xs[1]]))
    with pytest.raises(sp.EngineError, match=r"\(2, 2, 4\)"):
        eng.write_tensor(x, np.zeros((3, 2, 4), np.float32))


def test_replicated_streams_take_one_row_per_replica_per_copy():
    g, x, feed, drain = _stream_graph(replicas=2)
    eng = engine(g, [P.Copy(feed, x), P.Copy(x, drain)])
    host_in = np.arange(16, dtype=np.float32).reshape(4, 4)
    host_out = np.zeros((2, 4), np.float32)
    eng.connect_stream("feed", host_in)
    eng.connect_stream("drain", host_out)
    eng.run(0)
    np.testing.assert_array_equal(eng.read_tensor(x), host_in[0:2])
    eng.run(0)
    np.testing.assert_array_equal(eng.read_tensor(x), host_in[2:4])
    eng.run(1)
    np.testing.assert_array_equal(host_out, host_in[2:4])  # replica 0 into row 0, replica 1 row 1
    received = []
    eng.connect_stream("drain", received.append)  # a callback shared by the replicas: called by each
    eng.run(1)
    np.testing.assert_array_equal(received, host_in[2:4])


def test_replicated_streams_into_and_out_of_a_transposed_view():
    g = sp.Graph(sp.targets.ipu_model(tiles=4), replication_factor=2)
    m = variable(g, sp.float32, (2, 3), "m")
    feed = g.add_host_to_device_fifo("feed", sp.float32, 6)
    drain = g.add_device_to_host_fifo("drain", sp.float32, 6)
    eng = engine(g, [P.Copy(feed, m.T), P.Copy(m.T, drain)])
    host_in = np.arange(12, dtype=np.float32)
    host_out = np.zeros((2, 6), np.float32)
    eng.connect_stream("feed", host_in)
    eng.connect_stream("drain", host_out)
    eng.run(0)
    want = host_in.reshape(2, 3, 2).transpose(0, 2, 1)  # each replica's transfer fills m.T row-major
    np.testing.assert_array_equal(eng.read_tensor(m), want)
    eng.run(1)
    np.testing.assert_array_equal(host_out, host_in.reshape(2, 6))


def test_per_replica_stream_connections():
    g, x, feed, drain = _stream_graph(replicas=2)
    eng = engine(g, [P.Copy(feed, x), P.Copy(x, drain)])
    shared = np.full((1, 4), 7, np.float32)
    mine = np.full((1, 4), -1, np.float32)
    eng.connect_stream("feed", shared)
    eng.connect_stream("feed", mine, replica=1)  # replica 1's own connection wins
    eng.run(0)
    np.testing.assert_array_equal(eng.read_tensor(x), [[7] * 4, [-1] * 4])
    outs = [[], []]
    eng.connect_stream("drain", outs[0].append, replica=0)
    eng.connect_stream("drain", outs[1].append, replica=1)
    eng.run(1)
    np.testing.assert_array_equal(outs[0], [[7] * 4])
    np.testing.assert_array_equal(outs[1], [[-1] * 4])
    with pytest.raises(sp.StreamError, match="replica 2"):
        eng.connect_stream("feed", shared, replica=2)
    fresh = engine(g, [P.Copy(feed, x)])
    fresh.connect_stream("feed", shared, replica=0)  # replica 1 has no connection
    with pytest.raises(sp.StreamError, match="'feed' is not connected"):
        fresh.run(0)


@ENGINES
def test_control_flow_must_agree_across_replicas(reference):
    g = sp.Graph(sp.targets.ipu_model(tiles=4), replication_factor=2)
    out = variable(g, sp.int32, (1,), "out", tile=0)
    pred = variable(g, sp.int32, (1,), "pred", tile=1)
    eng = engine(g, [P.If(pred, counter_step(g, out, 1, "then")), P.Switch(pred, {0: P.Sequence()})],
                 reference)
    eng.write_tensor(pred, [[3], [3]])
    eng.run(0)
    np.testing.assert_array_equal(eng.read_tensor(out), [[1], [1]])
    eng.write_tensor(pred, [[1], [0]])
    for program in (0, 1):
        with pytest.raises(sp.EngineError, match="replicas disagree"):
            eng.run(program)


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


# -- a full-size chip ----------------------------------------------------------------------------
def test_gc200_all_tiles_six_vertices_each():
    tiles, per_tile, n = 1472, 6, 8
    g = sp.Graph(sp.targets.GC200)
    x = g.add_variable(sp.float32, (tiles * per_tile, n), name="x")
    y = g.add_variable(sp.float32, (tiles * per_tile, n), name="y")
    sums = g.add_variable(sp.float32, (tiles * per_tile,), name="sums")
    tile_of_vertex = np.repeat(np.arange(tiles), per_tile)
    for t in (x, y, sums):
        g.set_tile_mappings(t, tile_of_vertex)
    cs = g.add_compute_set("all_tiles")
    factors = (tile_of_vertex % 7 - 3).astype(np.float32)
    g.add_vertices(cs, Scale, {"x": x, "factor": factors, "y": y}, tiles=tile_of_vertex)
    g.add_vertices(cs, RowSum, {"x": x, "total": sums}, tiles=tile_of_vertex)
    eng = sp.Engine(g, [P.Execute(cs)])
    xs = np.random.default_rng(5).integers(-50, 50, (tiles * per_tile, n)).astype(np.float32) / 8
    eng.write_tensor(x, xs)
    eng.run(0)
    np.testing.assert_array_equal(eng.read_tensor(y), xs * factors[:, None])
    np.testing.assert_array_equal(eng.read_tensor(sums), sequential_sum(xs)[:, 0])


@ENGINES
@pytest.mark.parametrize("views", [
    lambda x: (x[0:6], x[2:8]), lambda x: (x[2:8], x[0:6]), lambda x: (x[::-1], x),
    lambda x: (x.reshape(2, 4).T.reshape(-1), x), lambda x: (x[[7, 6, 5, 4]], x[:4]),
])
def test_a_copy_between_overlapping_views_writes_the_source_values_from_before(views, reference):
    g = sp.Graph(sp.targets.ipu_model(tiles=2))
    x = variable(g, sp.float32, (8,), "x")
    src, dst = views(x)
    eng = engine(g, [P.Copy(src, dst)], reference)
    start = np.arange(8, dtype=np.float32)
    eng.write_tensor(x, start)
    eng.run(0)
    want = start.copy()
    want[np.asarray(dst.addresses()).ravel() - x.offset] = start[np.asarray(src.addresses()).ravel() - x.offset]
    np.testing.assert_array_equal(eng.read_tensor(x), want)


@pytest.mark.parametrize("memory", [0.6, 0.02])
def test_small_amp_groups_run_merged_within_the_rounding_bound(memory):
    """Small AMP groups of one compute set run as one merged job (groups a leading axis, fields
    gathered and scattered through address tables); the values stay within the contraction
    bound of the per-vertex reference, and the same on every run."""
    from softipu.codelets._common import contraction_bound
    from softipu.engine.fast import MergedRunner
    g = sp.Graph(sp.targets.ipu_model(tiles=16, bytes_per_tile=256 * 1024))
    a = variable(g, sp.float32, (64, 256), "a")
    b = variable(g, sp.float32, (256, 64), "b")
    prog = P.Sequence()
    c = sp.ops.matmul(g, a, b, prog, options={"availableMemoryProportion": memory})
    rng = np.random.default_rng(3)
    av, bv = rng.standard_normal(a.shape, np.float32), rng.standard_normal(b.shape, np.float32)
    got = {}
    for reference in (False, True):
        eng = engine(g, [prog], reference)
        eng.write_tensor(a, av)
        eng.write_tensor(b, bv)
        runs = []
        for _ in range(2):
            eng.run(0)
            runs.append(eng.read_tensor(c))
        assert runs[0].tobytes() == runs[1].tobytes()
        got[reference] = runs[0]
        if not reference:
            merged = [r for cs in eng._interpreter._runners.values() for r in cs.jobs
                      if isinstance(getattr(r, "__self__", None), MergedRunner)]
            assert merged, "no AMP groups were merged"
    terms = np.abs(av).astype(np.float64) @ np.abs(bv).astype(np.float64)
    assert np.all(np.abs(got[False].astype(np.float64) - got[True]) <= contraction_bound(terms, 256))
    np.testing.assert_allclose(got[False], av @ bv, rtol=1e-5, atol=1e-4)
