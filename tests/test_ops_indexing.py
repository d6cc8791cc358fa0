"""Indexing ops beyond the record table: run-time indices, out-of-range rules, plans, gradients,
errors and costs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import softipu as sp
from softipu import program as P
from softipu.codelets.indexing import MULTISLICE_CYCLES_PER_ROW, MULTISLICE_FIXED_CYCLES
from softipu.ops.common import OpError
from softipu.ops.indexing import (
    create_slicable_table,
    cumsum,
    dynamic_slice,
    dynamic_update,
    fill,
    gather,
    multi_slice,
    multi_update_add,
    one_hot,
    pad,
    scatter_add,
    sort,
    top_k,
)


def graph(tiles: int = 8) -> sp.Graph:
    return sp.Graph(sp.targets.ipu_model(tiles=tiles, bytes_per_tile=256 * 1024))


def var(g: sp.Graph, shape, dtype=sp.float32, name: str = "v") -> sp.Tensor:
    t = g.add_variable(dtype, shape, name=name)
    sp.ops.map_linearly(g, t)
    return t


# -- run-time indices ----------------------------------------------------------------------------------
def test_dynamic_slice_reads_the_offset_at_run_time_and_wraps_like_popops() -> None:
    g = graph()
    x = var(g, (6, 10), name="x")
    off = var(g, (1,), sp.int32, "off")
    prog = P.Sequence()
    y = dynamic_slice(g, x, off, prog, axis=0, size=3)
    eng = sp.Engine(g, [prog])
    a = np.arange(60, dtype=np.float32).reshape(6, 10)
    eng.write_tensor(x, a)
    for offset, rows in ((0, [0, 1, 2]), (2, [2, 3, 4]), (4, [4, 5, 0]), (5, [5, 0, 1]),
                         (6, [0, 1, 2]), (1000, [0, 1, 2]), (-1, [0, 1, 2])):
        eng.write_tensor(off, [offset])  # same executable, new offset
        eng.run(0)
        np.testing.assert_array_equal(eng.read_tensor(y), a[rows], err_msg=f"offset {offset}")


def test_dynamic_update_in_place_with_wrap() -> None:
    g = graph()
    x = var(g, (5, 4), sp.int32, "x")
    u = var(g, (2, 4), sp.int32, "u")
    off = var(g, (1,), sp.int32, "off")
    prog = P.Sequence()
    assert dynamic_update(g, x, u, off, prog) is x
    eng = sp.Engine(g, [prog])
    for offset, rows in ((1, [1, 2]), (4, [4, 0]), (7, [0, 1])):
        eng.write_tensor(x, np.zeros((5, 4), np.int32))
        eng.write_tensor(u, [[1] * 4, [2] * 4])
        eng.write_tensor(off, [offset])
        eng.run(0)
        expect = np.zeros((5, 4), np.int32)
        expect[rows[0]], expect[rows[1]] = 1, 2
        np.testing.assert_array_equal(eng.read_tensor(x), expect)


def test_dynamic_slice_of_a_replicated_graph_reads_each_replicas_offset() -> None:
    g = sp.Graph(sp.targets.ipu_model(tiles=4, bytes_per_tile=256 * 1024), replication_factor=2)
    x = var(g, (4, 3), name="x")
    off = var(g, (1,), sp.int32, "off")
    prog = P.Sequence()
    y = dynamic_slice(g, x, off, prog, size=2)
    eng = sp.Engine(g, [prog])
    a = np.arange(12, dtype=np.float32).reshape(4, 3)
    eng.write_tensor(x, a)
    eng.write_tensor(off, [[1], [3]])
    eng.run(0)
    got = eng.read_tensor(y)
    np.testing.assert_array_equal(got[0], a[[1, 2]])
    np.testing.assert_array_equal(got[1], a[[3, 0]])


def test_multi_slice_indices_change_between_runs_and_out_of_range_rows_are_zero() -> None:
    g = graph()
    table = create_slicable_table(g, (20, 16), sp.float16)
    idx = var(g, (6,), sp.int32, "idx")
    prog = P.Sequence()
    out = multi_slice(g, table, idx, prog)
    eng = sp.Engine(g, [prog])
    t = np.random.default_rng(0).standard_normal((20, 16)).astype(np.float16)
    eng.write_tensor(table, t)
    for indices in ([0, 19, 3, 3, 7, 11], [20, -1, 5, 100, 0, 2]):
        eng.write_tensor(idx, indices)
        eng.run(0)
        i = np.array(indices)
        expect = np.where(((i >= 0) & (i < 20))[:, None], t[np.clip(i, 0, 19)], 0)
        np.testing.assert_array_equal(eng.read_tensor(out), expect)


# -- plans -----------------------------------------------------------------------------------------------
def test_slicable_table_keeps_lookups_local() -> None:
    g = graph()
    table = create_slicable_table(g, (100, 64))
    idx = var(g, (10,), sp.int32, "idx")
    prog = P.Sequence()
    out = multi_slice(g, table, idx, prog)
    col_tiles = g.tile_of(table)
    assert np.all(col_tiles == col_tiles[0])  # every row of a column on one tile
    assert len(np.unique(col_tiles[0])) == 8
    assert [len(m) for m in g.get_tile_mapping(table.T)] == [1] * 8  # stored .T: one region a tile
    # The output keeps the table's column blocks (popops createSliceTensor), stored transposed.
    np.testing.assert_array_equal(g.tile_of(out), np.broadcast_to(col_tiles[:1], out.shape))
    assert [len(m) for m in g.get_tile_mapping(out.T)] == [1] * 8
    eng = sp.Engine(g, [prog])
    step = next(s for s in eng.executable.steps if s.name == "multi_slice")
    # Only the 10 indices move (to every block's tile); no table row and no result moves.
    assert step.bytes_exchanged <= 10 * 4 * 8


@pytest.mark.parametrize(("tiles", "cols", "lookups"), [(16, 4, 9), (64, 8, 30), (48, 16, 7)])
def test_lookups_read_their_table_blocks_in_place(tiles, cols, lookups) -> None:
    """Several lookup ranges per column block (more tiles than blocks): each vertex group's table
    field is a strided view, so the engine never gathers the table (a BERT vocabulary table is
    23 M elements), and the engine's chunks are sized by the lookups, not the table."""
    g = graph(tiles)
    table = create_slicable_table(g, (300, cols))
    idx = var(g, (lookups,), sp.int32, "idx")
    prog = P.Sequence()
    out = multi_slice(g, table, idx, prog)
    eng = sp.Engine(g, [prog])
    groups = [grp for cs in eng.executable.compute_sets.values() for grp in cs.groups
              if grp.codelet.__name__.startswith("MultiSlice")]
    assert sum(grp.num_vertices for grp in groups) > min(tiles, cols)  # several ranges a block
    assert all(grp.tensors("table")[0].is_strided and grp.tensors("index")[0].is_strided for grp in groups)
    from softipu.engine.fast import CHUNK_BYTES, _chunks
    for grp in groups:
        rows = max(1, CHUNK_BYTES // (grp.tensors("out")[0].shape[1] * 4))
        assert len(_chunks({}, grp, 1)) == (1 if grp.num_vertices <= 2 * rows else -(-grp.num_vertices // rows))
    rng = np.random.default_rng(cols)
    values = rng.standard_normal((300, cols)).astype(np.float32)
    picks = rng.integers(0, 300, lookups).astype(np.int32)
    eng.write_tensor(table, values)
    eng.write_tensor(idx, picks)
    eng.run(0)
    np.testing.assert_array_equal(eng.read_tensor(out), values[picks])


def test_multi_slice_cycles_follow_the_poplibs_estimator() -> None:
    """8 column blocks x 1 lookup block: W x (29 + ceil(10 / 6) x (19 + ceil(8 x 4 / 8))) per tile."""
    g = graph()
    table = create_slicable_table(g, (100, 64))
    idx = var(g, (10,), sp.int32, "idx")
    prog = P.Sequence()
    multi_slice(g, table, idx, prog)
    eng = sp.Engine(g, [prog], estimate_only=True)
    step = next(s for s in eng.executable.steps if s.name == "multi_slice")
    assert step.compute_cycles == 6 * (MULTISLICE_FIXED_CYCLES + 2 * (MULTISLICE_CYCLES_PER_ROW + 4))


def test_fast_engine_matches_reference_on_indexing_ops() -> None:
    g = graph()
    x = var(g, (12, 9), name="x")
    idx = var(g, (7,), sp.int32, "idx")
    off = var(g, (1,), sp.int32, "off")
    upd = var(g, (7, 9), name="upd")
    prog = P.Sequence()
    outs = [gather(g, x, idx, prog), scatter_add(g, x, idx, upd, prog), sort(g, x, prog, axis=0),
            top_k(g, x, prog, k=4)[1], cumsum(g, x, prog), dynamic_slice(g, x, off, prog, size=5),
            pad(g, x, prog, pad_width=1, mode="reflect"), one_hot(g, idx, prog, depth=5)]
    rng = np.random.default_rng(3)
    inputs = {x: rng.standard_normal((12, 9)).astype(np.float32), idx: rng.integers(-1, 13, 7),
              off: [10], upd: rng.standard_normal((7, 9)).astype(np.float32)}
    results = []
    for options in ({}, {"engine.reference": True}):
        eng = sp.Engine(g, [prog], options=options)
        for t, a in inputs.items():
            eng.write_tensor(t, a)
        eng.run(0)
        results.append([eng.read_tensor(o) for o in outs])
    for f, r in zip(*results, strict=True):
        np.testing.assert_array_equal(f, r)


# -- gradients against torch ---------------------------------------------------------------------------
def test_embedding_lookup_and_update_match_torch_autograd() -> None:
    g = graph()
    table = create_slicable_table(g, (30, 12))
    idx = var(g, (9,), sp.int32, "idx")
    dy = var(g, (9, 12), name="dy")
    grad = create_slicable_table(g, (30, 12), name="grad")
    prog = P.Sequence()
    y = multi_slice(g, table, idx, prog)
    multi_update_add(g, grad, idx, dy, 1.0, prog)  # the embedding's weight gradient
    rng = np.random.default_rng(4)
    w = rng.standard_normal((30, 12)).astype(np.float32)
    i = np.array([3, 7, 3, 0, 29, 7, 7, 1, 3])
    d = rng.standard_normal((9, 12)).astype(np.float32)
    eng = sp.Engine(g, [prog])
    eng.write_tensor(table, w)
    eng.write_tensor(idx, i)
    eng.write_tensor(dy, d)
    eng.write_tensor(grad, np.zeros((30, 12), np.float32))
    eng.run(0)
    tw = torch.tensor(w, requires_grad=True)
    ty = torch.nn.functional.embedding(torch.tensor(i), tw)
    ty.backward(torch.tensor(d))
    np.testing.assert_array_equal(eng.read_tensor(y), ty.detach().numpy())
    np.testing.assert_allclose(eng.read_tensor(grad), tw.grad.numpy(), rtol=1e-6, atol=1e-6)


def test_gather_backward_is_scatter_add_like_torch() -> None:
    g = graph()
    x = var(g, (4, 10), name="x")
    zeros = var(g, (4, 10), name="zeros")
    idx = var(g, (6,), sp.int32, "idx")
    dy = var(g, (4, 6), name="dy")
    prog = P.Sequence()
    y = gather(g, x, idx, prog, axis=1)
    dx = scatter_add(g, zeros, idx, dy, prog, axis=1)
    rng = np.random.default_rng(5)
    a, d = rng.standard_normal((4, 10)).astype(np.float32), rng.standard_normal((4, 6)).astype(np.float32)
    i = np.array([9, 0, 9, 4, 4, 4])
    eng = sp.Engine(g, [prog])
    for t, v in ((x, a), (zeros, np.zeros((4, 10))), (idx, i), (dy, d)):
        eng.write_tensor(t, v)
    eng.run(0)
    tx = torch.tensor(a, requires_grad=True)
    ty = torch.index_select(tx, 1, torch.tensor(i))
    ty.backward(torch.tensor(d))
    np.testing.assert_array_equal(eng.read_tensor(y), ty.detach().numpy())
    np.testing.assert_allclose(eng.read_tensor(dx), tx.grad.numpy(), rtol=1e-6)


def test_cumsum_backward_is_a_reversed_cumsum_like_torch() -> None:
    g = graph()
    dy = var(g, (3, 11), name="dy")
    prog = P.Sequence()
    dx = cumsum(g, dy.reverse(1), prog, axis=1).reverse(1)
    d = np.random.default_rng(6).standard_normal((3, 11)).astype(np.float32)
    eng = sp.Engine(g, [prog])
    eng.write_tensor(dy, d)
    eng.run(0)
    tx = torch.zeros((3, 11), requires_grad=True)
    torch.cumsum(tx, dim=1).backward(torch.tensor(d))
    np.testing.assert_allclose(eng.read_tensor(dx), tx.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_top_k_matches_torch() -> None:
    g = graph()
    x = var(g, (5, 20), name="x")
    prog = P.Sequence()
    v, i = top_k(g, x, prog, k=6)
    a = np.random.default_rng(7).standard_normal((5, 20)).astype(np.float32)
    eng = sp.Engine(g, [prog])
    eng.write_tensor(x, a)
    eng.run(0)
    tv, ti = torch.topk(torch.tensor(a), 6, dim=1)
    np.testing.assert_array_equal(eng.read_tensor(v), tv.numpy())
    np.testing.assert_array_equal(eng.read_tensor(i), ti.numpy())


# -- fill ------------------------------------------------------------------------------------------------
def test_fill_writes_views_in_place() -> None:
    g = graph()
    x = var(g, (6, 8), sp.int32, "x")
    prog = P.Sequence()
    fill(g, x[1:5, ::2], prog, value=3)
    eng = sp.Engine(g, [prog])
    eng.write_tensor(x, np.zeros((6, 8), np.int32))
    eng.run(0)
    expect = np.zeros((6, 8), np.int32)
    expect[1:5, ::2] = 3
    np.testing.assert_array_equal(eng.read_tensor(x), expect)


# -- errors ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("call", "op", "words"), [
    (lambda g, x, i, f: gather(g, x, f, P.Sequence()), "gather", ["integer", "float32"]),
    (lambda g, x, i, f: gather(g, x, i, P.Sequence(), axis=2), "gather", ["axis 2", "(5, 4)"]),
    (lambda g, x, i, f: multi_slice(g, i, i, P.Sequence()), "multi_slice", ["2-D", "(3,)"]),
    (lambda g, x, i, f: multi_update_add(g, x, i, x, 1.0, P.Sequence()), "multi_update_add",
     ["(5, 4)", "(3, 4)"]),
    (lambda g, x, i, f: multi_update_add(g, x, i, x[:3], "a", P.Sequence()), "multi_update_add",
     ["scale"]),
    (lambda g, x, i, f: dynamic_slice(g, x, i, P.Sequence()), "dynamic_slice", ["one index", "(3,)"]),
    (lambda g, x, i, f: dynamic_slice(g, x, i[:1], P.Sequence(), size=6), "dynamic_slice",
     ["size 6", "1..5"]),
    (lambda g, x, i, f: dynamic_update(g, x, x[:3], i[:1], P.Sequence(), axis=1), "dynamic_update",
     ["does not fit"]),
    (lambda g, x, i, f: top_k(g, x, P.Sequence(), k=5), "top_k", ["k=5", "0..4"]),
    (lambda g, x, i, f: sort(g, x, P.Sequence(), axis=3), "sort", ["axis 3"]),
    (lambda g, x, i, f: pad(g, x, P.Sequence(), pad_width=-1), "pad", ["pad_width", "(5, 4)"]),
    (lambda g, x, i, f: pad(g, x, P.Sequence(), pad_width=1, mode="wrap"), "pad", ["'wrap'"]),
    (lambda g, x, i, f: one_hot(g, f, P.Sequence(), depth=3), "one_hot", ["integer"]),
    (lambda g, x, i, f: fill(g, i, P.Sequence(), value=1.5), "fill", ["1.5", "int32"]),
    (lambda g, x, i, f: fill(g, x, P.Sequence(), value=1, options={"fast": True}), "fill",
     ["unknown option 'fast'"]),
])
def test_errors_name_op_shapes_and_line(call, op, words) -> None:
    g = graph()
    x, i, f = var(g, (5, 4), name="x"), var(g, (3,), sp.int32, "i"), var(g, (3,), name="f")
    with pytest.raises(OpError) as info:
        call(g, x, i, f)
    message = str(info.value)
    assert message.startswith(op + " ")
    assert f"test_ops_indexing.py:{call.__code__.co_firstlineno})" in message  # the user's line
    for w in words:
        assert w in message


def test_docstring_examples_run() -> None:
    import doctest  # noqa: PLC0415
    import importlib  # noqa: PLC0415
    import pkgutil  # noqa: PLC0415

    import softipu.ops.indexing as package  # noqa: PLC0415

    modules = [package] + [importlib.import_module(f"{package.__name__}.{m.name}")
                           for m in pkgutil.iter_modules(package.__path__)]
    results = [doctest.testmod(m) for m in modules]
    assert sum(r.attempted for r in results) >= 40 and all(r.failed == 0 for r in results)
