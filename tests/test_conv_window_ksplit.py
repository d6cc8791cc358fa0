"""Convolutions whose plan splits the reduction (input channels and kernel positions) over tiles,
poplin's ``inChanSplit.parallel``: each K range's vertices read their kernel positions' windows in
place and write partial sums, then one reduction adds ``k_split`` partials per output element.
Figures worked out by hand; values against torch."""

import importlib

import numpy as np
import pytest
import torch

import softipu as sp
from softipu import program as P
from softipu.ops.conv import conv


@pytest.fixture(autouse=True)
def _windows_for_k_split(monkeypatch):
    """The path is on by default (ops/conv.py WINDOWS_FOR_K_SPLIT); these tests need it whatever."""
    monkeypatch.setattr(importlib.import_module("softipu.ops.conv"), "WINDOWS_FOR_K_SPLIT", True)


def _build(n, c, h, o, dtype, tiles=16, options=None):
    g = sp.Graph(sp.targets.ipu_model(tiles=tiles, bytes_per_tile=256 * 1024))
    x = g.add_variable(dtype, (n, c, h, h), name="x")
    sp.ops.map_linearly(g, x)
    w = g.add_variable(dtype, (o, c, 3, 3), name="w")
    sp.ops.map_linearly(g, w)
    prog = P.Sequence()
    y = conv(g, x, w, prog, padding=1, options=options)
    return g, x, w, y, prog


def _groups(eng, prefix):
    return [grp for cs in eng.executable.compute_sets.values() for grp in cs.groups
            if grp.codelet.__name__.startswith(prefix)]


def _k_ranges(eng):
    return {int(k) for grp in _groups(eng, "ConvWindow") for k in np.ravel(grp.fields["k0"])}


def test_k_split_windows_by_hand():
    # N=1, C=16, 4x4, O=8, 3x3 padding 1 on 8 tiles (fp32): M=16, K=144, N=8. The plan cuts K in
    # blocks of 32 (two kernel positions of 16 channels) over 5 tiles, one M and one N block.
    g, x, w, y, prog = _build(1, 16, 4, 8, sp.float32, tiles=8)
    eng = sp.Engine(g, [prog])
    windows = _groups(eng, "ConvWindow")
    # One vertex per (M block, N block, K range): 1 x 1 x 5.
    assert sum(grp.num_vertices for grp in windows) == 5
    fields = sorted((int(k0), int(kk), int(x0), grp.tensors("x")[0].shape[-1])
                    for grp in windows for k0, kk, x0 in zip(np.ravel(grp.fields["k0"]), np.ravel(grp.fields["kk"]),
                                                            np.ravel(grp.fields["x0"]), strict=True))
    # Padded input 6x6x16 (NHWC); K index k is kernel position p = k // 16 = (i, j), channel k % 16,
    # at offset (i*6 + j)*16 + k % 16 from a window's first element. A range runs from pixel 0's
    # element k0 to pixel 15's (ho=3, wo=3: (3*6 + 3)*16 = 336) element k0 + kk - 1:
    # [0, 32): 0 .. 336 + 31 + 1 = 368; [32, 64): (0*6 + 2)*16 = 32 .. 336 + (1*6 + 0)*16 + 15 + 1 = 448;
    # [64, 96): (1*6 + 1)*16 = 112 .. 336 + (1*6 + 2)*16 + 16 = 480; [96, 128): 192 .. 336 + 13*16 + 16
    # = 560; [128, 144): 224 .. 336 + 14*16 + 16 = 576.
    assert fields == [(0, 32, 0, 368), (32, 32, 32, 416), (64, 32, 112, 368), (96, 32, 192, 368),
                      (128, 16, 224, 352)]
    # No im2col matrix ("conv/a", 16 x 144): no copy of the input per kernel position.
    assert not any(v.name.endswith("conv/a") for v in g.variables)
    # The reduction adds 5 partials per output element: partials of 5 x 16 x 8 elements.
    (partials,) = [v for v in g.variables if v.name.endswith("/partials")]
    assert partials.numel == 5 * 16 * 8


def test_k_range_reading_more_than_its_block_keeps_the_im2col_copy():
    # N=1, C=64, 4x4, O=16 on 16 tiles: K blocks of one kernel position (64 channels), 9 of them.
    # A range would run from pixel 0 to pixel 15 ((3*6 + 3)*64 = 1344) plus 64: 1408 elements for
    # a 16 x 64 = 1024-element block (the padding columns between rows): the copy is kept.
    g, x, w, y, prog = _build(1, 64, 4, 16, sp.float32)
    assert any(v.name.endswith("conv/a") for v in g.variables)


@pytest.mark.parametrize("n, c, h, o, tiles, dtype, options", [
    (1, 16, 4, 8, 8, sp.float32, None),
    (1, 16, 6, 16, 16, sp.float32, None),   # two M blocks, two N blocks
    (1, 32, 8, 8, 8, sp.float16, None),
    (1, 32, 8, 8, 8, sp.float16, {"partialsType": "half"}),
])
def test_k_split_windows_match_torch(n, c, h, o, tiles, dtype, options):
    g, x, w, y, prog = _build(n, c, h, o, dtype, tiles=tiles, options=options)
    eng = sp.Engine(g, [prog])
    assert len(_k_ranges(eng)) > 1, "the plan was expected to split K"
    rng = np.random.default_rng(0)
    xv = rng.standard_normal(x.shape).astype(dtype.numpy)
    wv = rng.standard_normal(w.shape).astype(dtype.numpy)
    eng.write_tensor(x, xv)
    eng.write_tensor(w, wv)
    eng.run(0)
    ref = torch.nn.functional.conv2d(torch.tensor(xv.astype(np.float32)), torch.tensor(wv.astype(np.float32)),
                                     padding=1).numpy()
    got = eng.read_tensor(y).astype(np.float32)
    # fp32: a sum of 9*C products each within a few ulps; fp16: the inputs' rounding dominates.
    tol = 2e-2 * np.abs(ref).max() if dtype == sp.float16 else 1e-5 * np.abs(ref).max()
    np.testing.assert_allclose(got, ref, atol=tol, rtol=0)


def test_k_split_windows_reference_engine():
    g, x, w, y, prog = _build(1, 16, 6, 16, sp.float32)
    eng = sp.Engine(g, [prog], {"engine.reference": True})
    assert len(_k_ranges(eng)) > 1
    rng = np.random.default_rng(3)
    xv = rng.standard_normal(x.shape).astype(np.float32)
    wv = rng.standard_normal(w.shape).astype(np.float32)
    eng.write_tensor(x, xv)
    eng.write_tensor(w, wv)
    eng.run(0)
    ref = torch.nn.functional.conv2d(torch.tensor(xv), torch.tensor(wv), padding=1).numpy()
    np.testing.assert_allclose(eng.read_tensor(y), ref, atol=1e-5 * np.abs(ref).max(), rtol=0)
