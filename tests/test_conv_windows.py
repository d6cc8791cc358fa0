"""Convolutions whose vertices read their input windows in place (no im2col copy): values against
torch, and the field and offsets worked out by hand."""

import numpy as np
import pytest
import torch

import softipu as sp
from softipu import program as P
from softipu.codelets.nn.conv import window_indices
from softipu.ops.conv import conv


def _conv(n, c, h, w, o, k, stride, padding, dilation=1, dtype=sp.float32, tiles=4, one_d=False,
          options=None):
    g = sp.Graph(sp.targets.ipu_model(tiles=tiles, bytes_per_tile=512 * 1024))
    xs, ws = ((n, c, w), (o, c, k)) if one_d else ((n, c, h, w), (o, c, k, k))
    x = g.add_variable(dtype, xs, name="x")
    sp.ops.map_linearly(g, x)
    wt = g.add_variable(dtype, ws, name="w")
    sp.ops.map_linearly(g, wt)
    prog = P.Sequence()
    y = conv(g, x, wt, prog, stride=stride, padding=padding, dilation=dilation, options=options)
    return g, x, wt, y, prog


def _window_groups(eng):
    return [grp for cs in eng.executable.compute_sets.values() for grp in cs.groups
            if grp.codelet.__name__.startswith("ConvWindow")]


@pytest.mark.parametrize("case", [
    dict(n=2, c=3, h=11, w=9, o=5, k=3, stride=2, padding=1),            # blocks straddle samples
    dict(n=3, c=2, h=7, w=7, o=4, k=2, stride=1, padding=0, dilation=2),
    dict(n=2, c=3, h=12, w=12, o=8, k=7, stride=2, padding=3, tiles=1),  # a ResNet stem, small
    dict(n=2, c=4, h=1, w=13, o=3, k=3, stride=2, padding=1, one_d=True),
    dict(n=2, c=3, h=6, w=6, o=4, k=3, stride=1, padding=1, dtype=sp.float16),
    dict(n=2, c=3, h=6, w=6, o=4, k=3, stride=1, padding=1, dtype=sp.float16,
         options={"partialsType": "half"}),                               # written straight in fp16
])
def test_window_convolution_matches_torch(case):
    dtype = case.get("dtype", sp.float32)
    g, x, wt, y, prog = _conv(**case)
    eng = sp.Engine(g, [prog])
    assert _window_groups(eng), "the convolution was expected to read its windows in place"
    assert not any(v.name.endswith("conv/a") for v in g.variables), "no im2col matrix"
    rng = np.random.default_rng(0)
    xv = rng.standard_normal(x.shape).astype(dtype.numpy)
    wv = rng.standard_normal(wt.shape).astype(dtype.numpy)
    eng.write_tensor(x, xv)
    eng.write_tensor(wt, wv)
    eng.run(0)
    fn = torch.nn.functional.conv1d if case.get("one_d") else torch.nn.functional.conv2d
    ref = fn(torch.tensor(xv.astype(np.float32)), torch.tensor(wv.astype(np.float32)),
             stride=case["stride"], padding=case["padding"], dilation=case.get("dilation", 1)).numpy()
    got = eng.read_tensor(y).astype(np.float32)
    tol = 2e-2 * np.abs(ref).max() if dtype == sp.float16 else 1e-4
    np.testing.assert_allclose(got, ref, atol=tol, rtol=0)


def test_window_field_is_the_input_range_its_pixels_read():
    # N=2, C=3, 5x5, 3x3 kernel, stride 2, padding 1: padded 7x7, output 3x3, 18 pixels. On one
    # tile the plan has one block: its field runs from pixel 0's first element (0) to pixel 17's
    # (n=1, ho=2, wo=2): ((1*7 + 2*2)*7 + 2*2)*3 = 243, plus its window's extent
    # ((3-1)*7 + (3-1) + 1)*3 = 51: 294 elements = the whole padded input, 2*7*7*3.
    g, x, wt, y, prog = _conv(2, 3, 5, 5, 4, 3, 2, 1, tiles=1)
    eng = sp.Engine(g, [prog])
    (grp,) = _window_groups(eng)
    assert grp.tensors("x")[0].shape[-1] == 294
    # The im2col matrix would have been 18 x 27 elements; nothing of that size exists.
    assert all(v.numel != 18 * 27 for v in g.variables)


def test_window_indices_by_hand():
    # Pixel 4 of the geometry above is (n=0, ho=1, wo=1): its window starts at padded row 2,
    # column 2, offset (2*7 + 2)*3 = 48. Kernel position (1, 2), channel 1 reads row 3, column 4:
    # (3*7 + 4)*3 + 1 = 76, i.e. K index (1*3 + 2)*3 + 1 = 16.
    geo = dict(ho=3, wo=3, hp=7, wp=7, c=3, kh=3, kw=3, sh=2, sw=2, dh=1, dw=1)
    idx = window_indices(np.array([4]), np.array([0]), 1, geo)
    assert idx.shape == (1, 1, 27)
    assert idx[0, 0, 0] == 48 and idx[0, 0, 16] == 76
    # relative to a field that starts at x0 = 48
    assert window_indices(np.array([4]), np.array([48]), 1, geo)[0, 0, 16] == 28


def test_strided_pointwise_convolution_keeps_its_subsampling_copy():
    # 1x1 stride 2: a block's input range would hold 4x the elements its pixels read.
    g, x, wt, y, prog = _conv(2, 8, 8, 8, 4, 1, 2, 0, tiles=1)
    assert not _window_groups(sp.Engine(g, [prog]))


def test_window_convolution_replicated():
    # Each replica's fields are its own rows of the group (replica-major): both replicas right.
    g = sp.Graph(sp.targets.ipu_model(tiles=2, bytes_per_tile=512 * 1024), replication_factor=2)
    x = g.add_variable(sp.float32, (2, 3, 9, 9), name="x")
    sp.ops.map_linearly(g, x)
    wt = g.add_variable(sp.float32, (4, 3, 3, 3), name="w")
    sp.ops.map_linearly(g, wt)
    prog = P.Sequence()
    y = conv(g, x, wt, prog, stride=2, padding=1)
    eng = sp.Engine(g, [prog])
    assert _window_groups(eng)
    rng = np.random.default_rng(1)
    xv = rng.standard_normal((2, 2, 3, 9, 9)).astype(np.float32)
    wv = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    eng.write_tensor(x, xv)
    eng.write_tensor(wt, wv)
    eng.run(0)
    got = eng.read_tensor(y)
    for r in range(2):
        ref = torch.nn.functional.conv2d(torch.tensor(xv[r]), torch.tensor(wv), stride=2, padding=1).numpy()
        np.testing.assert_allclose(got[r], ref, atol=1e-4, rtol=0)


def test_window_convolution_reference_engine():
    # The per-vertex reference interpreter runs the same codelet one vertex at a time.
    g, x, wt, y, prog = _conv(2, 3, 11, 9, 5, 3, 2, 1)
    eng = sp.Engine(g, [prog], {"engine.reference": True})
    assert _window_groups(eng)
    rng = np.random.default_rng(2)
    xv = rng.standard_normal(x.shape).astype(np.float32)
    wv = rng.standard_normal(wt.shape).astype(np.float32)
    eng.write_tensor(x, xv)
    eng.write_tensor(wt, wv)
    eng.run(0)
    ref = torch.nn.functional.conv2d(torch.tensor(xv), torch.tensor(wv), stride=2, padding=1).numpy()
    np.testing.assert_allclose(eng.read_tensor(y), ref, atol=1e-4, rtol=0)
