"""Reductions over a transposed view are planned in storage order (issue 14/19): a matmul's logits
stored ``(vocab, tokens)`` and read ``(tokens, vocab)`` reduce over the storage's address runs, as
popops plans over each tile's contiguous regions (Reduction.cpp ``getSortedContiguousRegions``),
not one piece per element of the logical view. Counts worked by hand; values against numpy."""

from __future__ import annotations

import numpy as np
import pytest

import softipu as sp
from softipu import program as P
from softipu.codelets._common import contraction_bound
from softipu.ops.reduce import ReduceOp, reduce

V, N, VB, NB, TILES = 12, 8, 3, 4, 4


def _blocked(dtype=sp.float32):
    """(12, 8) storage in (3, 4) blocks, block i (row-major over the 4 x 2 grid) on tile i % 4: tile
    0 holds rows 0-2 and 6-8 of columns 0-3, tile 1 the same rows of columns 4-7, and so on."""
    g = sp.Graph(sp.targets.ipu_model(tiles=TILES, bytes_per_tile=64 * 1024))
    y = g.add_variable(dtype, (V, N), name="y")
    for i, (v0, n0) in enumerate((v, n) for v in range(0, V, VB) for n in range(0, N, NB)):
        g.set_tile_mapping(y[v0 : v0 + VB, n0 : n0 + NB], i % TILES)
    return g, y


@pytest.fixture
def vertices(monkeypatch):
    """Vertices added, by codelet name (up to its template arguments)."""
    seen: dict[str, int] = {}
    real = sp.Graph.add_vertices

    def counting(self, cs, codelet, fields, tiles):
        name = codelet.__name__.split("<")[0]
        seen[name] = seen.get(name, 0) + int(np.size(tiles))
        return real(self, cs, codelet, fields, tiles)

    monkeypatch.setattr(sp.Graph, "add_vertices", counting)
    return seen


def test_max_over_vocab_of_transposed_logits_folds_each_block_by_hand(vertices) -> None:
    """amax over dim 1 of ``y.T`` (8 tokens x 12 vocab). In storage (12, 8) the reduced dim is
    outer: the view has 24 address runs of 4 tokens. Each tile folds each of its two blocks (3
    evenly spaced rows of 4 columns: popops' strided reduce) into a row of 4 partials: 8 vertices,
    32 partials in 8 rows; each output then reduces the 4 rows covering its column (12 / 3). Over
    the logical view every one of the 96 elements was its own piece."""
    g, y = _blocked()
    prog = P.Sequence()
    out = reduce(g, y.T, prog, dims=1, op=ReduceOp.MAX)
    partials = next(v for v in g.variables if v.name == "reduce/partials")
    assert partials.numel == 8 * NB
    assert vertices["ReduceColumnsRaw"] == 8 and "ReduceSegments" not in vertices
    eng = sp.Engine(g, [prog])
    a = np.random.default_rng(0).standard_normal((V, N)).astype(np.float32)
    eng.write_tensor(y, a)
    eng.run(0)
    np.testing.assert_array_equal(eng.read_tensor(out), a.T.max(axis=1))


def test_sum_over_tokens_of_transposed_logits_reduces_runs_by_hand() -> None:
    """A decoder bias gradient: the sum over dim 0 of ``y.T`` is, in storage, an inner reduction of
    rows of 8: each run of 4 on a tile gives one partial (24 partials, one a run, not one an element),
    and each of the 12 outputs adds its row's 2."""
    g, y = _blocked()
    prog = P.Sequence()
    out = reduce(g, y.T, prog, dims=0)
    partials = next(v for v in g.variables if v.name == "reduce/partials")
    assert partials.numel == 2 * V
    eng = sp.Engine(g, [prog])
    a = np.random.default_rng(1).standard_normal((V, N)).astype(np.float32)
    eng.write_tensor(y, a)
    eng.run(0)
    exact = a.astype(np.float64).sum(axis=1)
    assert np.all(np.abs(eng.read_tensor(out) - exact) <= contraction_bound(np.abs(a).sum(axis=1), N))


@pytest.mark.parametrize("reference", [False, True])
@pytest.mark.parametrize(("dtype", "op"), [
    (sp.float16, ReduceOp.ADD), (sp.float32, ReduceOp.SQUARE_ADD), (sp.float16, ReduceOp.MIN),
    (sp.int32, ReduceOp.ADD), (sp.int32, ReduceOp.MAX), (sp.float32, ReduceOp.MUL),
])
@pytest.mark.parametrize("dims", [0, 1, (0, 1)])
def test_transposed_reductions_match_numpy(dtype, op, dims, reference) -> None:
    g, y = _blocked(dtype)
    prog = P.Sequence()
    out = reduce(g, y.T, prog, dims=dims, op=op)
    eng = sp.Engine(g, [prog], options={"engine.reference": reference})
    rng = np.random.default_rng(2)
    a = (rng.integers(-50, 50, (V, N)) if dtype is sp.int32 else
         rng.uniform(0.5, 1.5, (V, N)) * rng.choice([-1, 1], (V, N))).astype(dtype.numpy)
    eng.write_tensor(y, a)
    eng.run(0)
    x = a.T.astype(np.float64)
    got = eng.read_tensor(out)
    if dtype is sp.int32 or op in (ReduceOp.MIN, ReduceOp.MAX):
        ufunc = {ReduceOp.ADD: np.add, ReduceOp.MAX: np.maximum, ReduceOp.MIN: np.minimum}[op]
        np.testing.assert_array_equal(got, ufunc.reduce(a.T, axis=dims))  # integers: bitwise
        return
    if op is ReduceOp.MUL:
        np.testing.assert_allclose(got, np.prod(x, axis=dims), rtol=1e-5)
        return
    terms = x * x if op is ReduceOp.SQUARE_ADD else x
    k = int(np.prod([x.shape[d] for d in np.atleast_1d(dims)]))
    bound = contraction_bound(np.abs(terms).sum(axis=dims), k)
    exact = terms.sum(axis=dims)
    if dtype is sp.float16:
        bound = bound + np.abs(exact) * 2.0**-10
    assert np.all(np.abs(got - exact) <= bound)


def test_permuted_three_dim_view_matches_numpy() -> None:
    """A (4, 6, 5) storage read transposed (5, 4, 6), reduced over its middle dim: in storage the
    kept dims (6 and 5) keep their order, so the plan runs over the storage."""
    g = sp.Graph(sp.targets.ipu_model(tiles=4, bytes_per_tile=64 * 1024))
    y = g.add_variable(sp.int32, (4, 6, 5), name="y")
    sp.ops.map_linearly(g, y, grain_size=3)
    prog = P.Sequence()
    outs = [reduce(g, y.transpose(2, 0, 1), prog, dims=d) for d in (1, (0, 2), 2)]
    eng = sp.Engine(g, [prog])
    a = np.random.default_rng(3).integers(-9, 9, (4, 6, 5)).astype(np.int32)
    eng.write_tensor(y, a)
    eng.run(0)
    for d, o in zip((1, (0, 2), 2), outs, strict=True):
        np.testing.assert_array_equal(eng.read_tensor(o), a.transpose(2, 0, 1).sum(axis=d))


def test_tall_blocks_stay_in_storage_order_without_element_lookups(monkeypatch) -> None:
    """Blocks of (6 vocab rows x 2 tokens): the user's (tokens, vocab) view has fewer pieces (runs
    of 6) than the storage (runs of 2), but reading it means a tile and an address per element (a
    GPT-2 head's 100 M): the sum over tokens stays an inner reduction of the storage's 48 runs, one
    partial each, with no per-element tile lookup."""
    g = sp.Graph(sp.targets.ipu_model(tiles=TILES, bytes_per_tile=64 * 1024))
    y = g.add_variable(sp.float32, (V, N), name="y")
    for i, (v0, n0) in enumerate((v, n) for v in range(0, V, 6) for n in range(0, N, 2)):
        g.set_tile_mapping(y[v0 : v0 + 6, n0 : n0 + 2], i % TILES)
    looked = []
    real = sp.Graph.tile_of
    monkeypatch.setattr(sp.Graph, "tile_of", lambda self, t: looked.append(t.numel) or real(self, t))
    prog = P.Sequence()
    out = reduce(g, y.T, prog, dims=0)
    assert sum(looked) <= V  # the output's tiles at most
    assert next(v for v in g.variables if v.name == "reduce/partials").numel == V * N // 2
    eng = sp.Engine(g, [prog])
    a = np.random.default_rng(4).standard_normal((V, N)).astype(np.float32)
    eng.write_tensor(y, a)
    eng.run(0)
    assert np.all(np.abs(eng.read_tensor(out) - a.astype(np.float64).sum(1))
                  <= contraction_bound(np.abs(a).sum(axis=1), N))
