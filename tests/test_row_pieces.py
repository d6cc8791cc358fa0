"""Issue 12: rows of softmax, the running scans and sort longer than one vertex takes
(``ROW_VERTEX_ELEMENTS`` = 16,384) split across the tiles that hold them
(``softipu.ops.indexing.row_pieces``). Values against torch; the fullest tile's memory and a
piece vertex's cycles worked out by hand."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

import softipu as sp
from softipu import program as P
from softipu.codelets import nn as C
from softipu.codelets.indexing import SortOrder
from softipu.codelets.sort_pieces import merge_split_codelet
from softipu.errors import OutOfMemoryError
from softipu.ops import nn
from softipu.ops.indexing import cumsum, sort, sort_with_indices, top_k
from softipu.ops.indexing.scans import cummax, cummin, cumprod, logcumsumexp

softmax_module = importlib.import_module("softipu.ops.nn.softmax")  # the name is also the function's
RNG = np.random.default_rng(0)


def _run(shape, dtype, build, values, bytes_per_tile=300 * 1024):
    g = sp.Graph(sp.targets.ipu_model(tiles=4, bytes_per_tile=bytes_per_tile))
    x = g.add_variable(dtype, shape, name="x")
    sp.ops.map_linearly(g, x)
    prog = P.Sequence()
    out = build(g, x, prog)
    eng = sp.Engine(g, [prog])
    eng.write_tensor(x, values)
    eng.run(0)
    results = tuple(eng.read_tensor(t) for t in out) if isinstance(out, tuple) else eng.read_tensor(out)
    return eng, results


@pytest.mark.parametrize("log", [False, True])
def test_softmax_rows_longer_than_a_vertex_split_and_fit(log):
    # (2, 60,000) fp32 over 4 tiles: x is 120,000 B a tile. Whole rows would put a row's output
    # (240,000 B) beside x's 120,000 B on one tile: 360,000 B > 300 KiB. Split into 12 pieces of
    # 5,000, each output piece on the tile of its input: 120,000 + 120,000 = 240,000 B a tile.
    x = (RNG.standard_normal((2, 60000)) * 5).astype(np.float32)
    op = nn.log_softmax if log else nn.softmax
    eng, got = _run(x.shape, sp.float32, lambda g, t, prog: op(g, t, prog, dim=1), x)
    want = (torch.log_softmax if log else torch.softmax)(torch.from_numpy(x), 1).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    fit = eng.report.fit()
    assert fit["worst_tile_categories"]["always_live_variables"] == 240_000
    assert fit["worst_tile_bytes"] < 240_000 + 4_096  # code, vertex state, partials


def test_whole_softmax_rows_of_that_size_do_not_fit(monkeypatch):
    monkeypatch.setattr(softmax_module, "ROW_VERTEX_ELEMENTS", 1 << 30)  # the whole-row path
    g = sp.Graph(sp.targets.ipu_model(tiles=4, bytes_per_tile=300 * 1024))
    x = g.add_variable(sp.float32, (2, 60000), name="x")
    sp.ops.map_linearly(g, x)
    prog = P.Sequence()
    nn.softmax(g, x, prog, dim=1)
    with pytest.raises(OutOfMemoryError, match="360,"):
        sp.Engine(g, [prog])


def test_half_softmax_in_pieces_keeps_float32_statistics():
    x = (RNG.standard_normal((1, 40000)) * 4).astype(np.float16)
    _, got = _run(x.shape, sp.float16, lambda g, t, prog: nn.softmax(g, t, prog, dim=-1), x)
    want = torch.softmax(torch.from_numpy(x).float(), -1).numpy()
    np.testing.assert_allclose(got.astype(np.float32), want, rtol=2e-3, atol=1e-6)


def test_piece_vertex_cycles_by_hand():
    # exp pass of a 5,000-float piece: 30 (vertex) + 20 (row) + 2,500 vectors x (3 sub + 10 exp + 1 acc).
    exp = C.softmax_piece_exp_codelet(sp.float32, False)
    n, one = np.array([5000]), np.array([1])
    assert int(exp.cycles(n, one, n, one, sp.targets.GC200)[0]) == 30 + 20 + 2500 * 14
    # scale pass: 30 + (20 + 10 divide) + 2,500 x 3 (mul).
    scale = C.softmax_piece_scale_codelet(sp.float32, False)
    assert int(scale.cycles(one, n, sp.targets.GC200)[0]) == 30 + 30 + 2500 * 3
    # a merge-split side of two 5,000-element pieces: 20 + 3 x 10,000 compare-select-stores.
    merge = merge_split_codelet(sp.float32, SortOrder.ASCENDING, False, True)
    assert int(merge.cycles(n, n, n, sp.targets.GC200)[0]) == 20 + 30_000


def test_cumsum_in_pieces_along_a_long_axis():
    # (40,000, 2) along axis 0: rows of 40,000 (strided), 3 pieces each at least; x is 80,000 B a
    # tile and the output is mapped as its pieces are (80,000 B a tile, not a whole row of 160,000).
    x = RNG.standard_normal((40000, 2)).astype(np.float32)
    eng, got = _run(x.shape, sp.float32, lambda g, t, prog: cumsum(g, t, prog, axis=0), x)
    np.testing.assert_allclose(got, np.cumsum(x.astype(np.float64), axis=0), rtol=1e-4, atol=2e-3)
    assert eng.report.fit()["worst_tile_categories"]["always_live_variables"] <= 2 * 80_000 + 1_024
    xi = RNG.integers(-3, 4, (2, 40000)).astype(np.int32)
    _, got = _run(xi.shape, sp.int32, lambda g, t, prog: cumsum(g, t, prog, axis=1), xi)
    np.testing.assert_array_equal(got, np.cumsum(xi, axis=1))


def test_cumprod_and_logcumsumexp_in_pieces():
    x = (1 + RNG.standard_normal((2, 40000)) * 1e-3).astype(np.float32)
    _, got = _run(x.shape, sp.float32, lambda g, t, prog: cumprod(g, t, prog, axis=1), x)
    np.testing.assert_allclose(got, torch.cumprod(torch.from_numpy(x), 1).numpy(), rtol=1e-4)
    y = RNG.standard_normal((2, 40000)).astype(np.float32)
    _, got = _run(y.shape, sp.float32, lambda g, t, prog: logcumsumexp(g, t, prog, axis=1), y)
    np.testing.assert_allclose(got, torch.logcumsumexp(torch.from_numpy(y), 1).numpy(), rtol=1e-5, atol=1e-5)


def test_cummax_and_cummin_in_pieces_carry_value_and_index():
    x = RNG.standard_normal((2, 17000)).astype(np.float32)
    x[0, 100:103] = 50.0  # a tie: the later index wins
    x[0, 15000] = 60.0  # a new maximum in a later piece
    x[1, 9000] = np.nan  # NaN propagates from its piece into the next ones
    _, (values, index) = _run(x.shape, sp.float32, lambda g, t, prog: cummax(g, t, prog, axis=1), x)
    want = torch.cummax(torch.from_numpy(x), 1)
    np.testing.assert_array_equal(values, want.values.numpy())
    np.testing.assert_array_equal(index, want.indices.numpy())
    xi = RNG.integers(-100, 100, (2, 17000)).astype(np.int32)
    _, (values, index) = _run(xi.shape, sp.int32, lambda g, t, prog: cummin(g, t, prog, axis=1), xi)
    want = torch.cummin(torch.from_numpy(xi), 1)
    np.testing.assert_array_equal(values, want.values.numpy())
    np.testing.assert_array_equal(index, want.indices.numpy())


@pytest.mark.parametrize("descending", [False, True])
def test_sort_in_pieces_is_stable_with_indices(descending):
    x = RNG.integers(-50, 50, (2, 40000)).astype(np.float32)  # many ties
    x[0, 7] = x[1, 39000] = np.nan
    _, (values, index) = _run(x.shape, sp.float32, lambda g, t, prog: sort_with_indices(
        g, t, prog, axis=1, descending=descending), x, bytes_per_tile=1 << 20)
    want = torch.sort(torch.from_numpy(x), dim=1, descending=descending, stable=True)
    np.testing.assert_array_equal(values, want.values.numpy())
    np.testing.assert_array_equal(index, want.indices.numpy())


def test_sort_and_top_k_along_a_long_first_axis():
    x = RNG.standard_normal((40000, 2)).astype(np.float32)
    _, got = _run(x.shape, sp.float32, lambda g, t, prog: sort(g, t, prog, axis=0), x, bytes_per_tile=1 << 20)
    np.testing.assert_array_equal(got, np.sort(x, axis=0))
    _, (values, index) = _run(x.shape, sp.float32, lambda g, t, prog: top_k(g, t, prog, k=5, axis=0), x,
                              bytes_per_tile=1 << 20)
    want = torch.topk(torch.from_numpy(x), 5, dim=0)
    np.testing.assert_array_equal(values, want.values.numpy())
    np.testing.assert_array_equal(index, want.indices.numpy())


@pytest.mark.parametrize("log", [False, True])
def test_softmax_gradient_in_pieces(log):
    x = RNG.standard_normal((2, 20000)).astype(np.float32)
    dy = RNG.standard_normal((2, 20000)).astype(np.float32)
    t = torch.from_numpy(x).requires_grad_()
    y = (torch.log_softmax if log else torch.softmax)(t, 1)
    y.backward(torch.from_numpy(dy))
    g = sp.Graph(sp.targets.ipu_model(tiles=4, bytes_per_tile=300 * 1024))
    yt, dyt = (g.add_variable(sp.float32, x.shape, name=n) for n in ("y", "dy"))
    for v in (yt, dyt):
        sp.ops.map_linearly(g, v)
    prog = P.Sequence()
    dx = (nn.log_softmax_grad if log else nn.softmax_grad)(g, yt, dyt, prog, dim=1)
    eng = sp.Engine(g, [prog])
    eng.write_tensor(yt, y.detach().numpy())
    eng.write_tensor(dyt, dy)
    eng.run(0)
    np.testing.assert_allclose(eng.read_tensor(dx), t.grad.numpy(), rtol=1e-4, atol=1e-6)
