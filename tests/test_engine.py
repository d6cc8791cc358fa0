"""The Engine: compute, control flow and a full-size chip, against numpy. Host streams and
replication are in test_engine_streams.py, errors, dtypes and constants in test_engine_errors.py.

Tests that only need a value run on both interpreters (``reference`` parametrizes the fast,
batched engine and the per-vertex reference engine); every expected value is computed here with
numpy, never read back from softipu.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import softipu as sp
from _engine_helpers import ENGINES, counter_step, engine, next_line, variable
from codelets_for_tests import (
    Accumulate,
    AddOne,
    Boom,
    Increment,
    Less,
    RowSum,
    Scale,
    WritesItsInput,
    WritesItsParam,
    sequential_sum,
)
from softipu import program as P


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
def test_small_amp_groups_run_merged_within_the_rounding_bound(memory, monkeypatch):
    """Small AMP groups of one compute set run as one merged job (groups a leading axis, fields
    gathered and scattered through address tables); the values stay within the contraction
    bound of the per-vertex reference, and the same on every run. (Matmul chains off: a fused
    chain's compute sets never run group by group, and get no runners.)"""
    from softipu.codelets._common import contraction_bound
    from softipu.engine import chains
    from softipu.engine.fast import MergedRunner
    monkeypatch.setattr(chains, "FUSE_MATMULS", False)
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


def test_writes_reads_and_copies_across_layouts_in_blocks_equal_numpy():
    """A transposed view of 300 x 260 (over the blocked-copy threshold) written, read and copied
    into a row-major one: the engine copies such crossing layouts in cache-sized blocks
    (``storage.assign``); the values are numpy's."""
    from softipu.engine import storage

    g = sp.Graph(sp.targets.ipu_model(tiles=4, bytes_per_tile=1 << 20))
    x = g.add_variable(sp.float32, (260, 300), name="x")
    y = g.add_variable(sp.float32, (300, 260), name="y")
    sp.ops.map_linearly(g, x)
    sp.ops.map_linearly(g, y)
    xt = x.transpose()
    assert xt.numel >= storage.BLOCKED_MIN and storage._crossing(np.zeros((300, 260)).T, np.zeros((260, 300)))
    eng = sp.Engine(g, [P.Copy(xt, y)])
    values = np.random.default_rng(0).standard_normal((300, 260)).astype(np.float32)
    eng.write_tensor(xt, values)
    np.testing.assert_array_equal(eng.read_tensor(x), values.T)
    np.testing.assert_array_equal(eng.read_tensor(xt), values)
    eng.run(0)
    np.testing.assert_array_equal(eng.read_tensor(y), values)
