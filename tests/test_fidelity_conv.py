"""Issue 19: convolutions and batch norms as poplin / PopART run them in inference.

Each test checks a modeling change against a figure worked out by hand from the cited behaviour
(and values against torch).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import softipu as sp
import softipu.torch as st
from softipu import program as P
from softipu.ops.conv import conv, create_conv_weights

SMALL = sp.targets.ipu_model(tiles=8, bytes_per_tile=256 * 1024)


class ConvBn(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 1, bias=False)
        self.bn = torch.nn.BatchNorm2d(1, eps=1.0)
        with torch.no_grad():
            self.conv.weight.fill_(2.0)
            self.bn.weight.fill_(3.0)
            self.bn.bias.fill_(1.0)
            self.bn.running_mean.fill_(0.5)
            self.bn.running_var.fill_(3.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)))


def test_eval_batch_norm_is_folded_into_the_convolution() -> None:
    # PopART's ConvBatchNormFold (inference patterns): s = gamma / sqrt(var + eps) = 3 / sqrt(3 + 1)
    # = 1.5, so W' = 2 * 1.5 = 3 and b' = beta - mean * s = 1 - 0.5 * 1.5 = 0.25.
    net = ConvBn().eval()
    model = st.inference_model(net, st.Options(target=SMALL))
    x = torch.tensor([[[[-1.0, 0.0], [1.0, 2.0]]]])
    out = model(x)
    np.testing.assert_allclose(out.numpy(), np.maximum(3 * x.numpy() + 0.25, 0), rtol=1e-6)
    np.testing.assert_allclose(out.numpy(), net(x).detach().numpy(), rtol=1e-6)
    weights = {s: np.asarray(sp.frontends.torch.lower.host_values(v)) for s, v in model.lowered.weights}
    assert weights["weights/conv.weight#folded"].tolist() == [3.0]
    assert weights["weights/bn.bias#folded"].tolist() == [0.25]
    assert len(model.lowered.rewrites) == 1 and "folded into" in model.lowered.rewrites[0]
    assert not any(s["op"] == "batch_norm" for s in model.report.steps)


def test_batch_norm_after_a_shared_or_non_conv_input_is_not_folded() -> None:
    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(2, 2, 1)
            self.bn = torch.nn.BatchNorm2d(2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return self.bn(y) + y  # the convolution's output is used twice: no fold

    net = Net().eval()
    model = st.inference_model(net, st.Options(target=SMALL))
    x = torch.randn(1, 2, 3, 3)
    np.testing.assert_allclose(model(x).numpy(), net(x).detach().numpy(), rtol=1e-5, atol=1e-6)
    assert model.lowered.rewrites == ()


def _nhwc_input(g: sp.Graph, shape: tuple[int, ...], dtype=sp.float16) -> sp.Tensor:
    n, c, h, w = shape
    var = g.add_variable(dtype, (n, h, w, c), name="x")
    sp.ops.map_linearly(g, var)
    return var.transpose(0, 3, 1, 2)


def _conv_report(shape, wshape, padding, use_created_weights=True):
    g = sp.Graph(SMALL)
    x = _nhwc_input(g, shape)
    if use_created_weights:
        w = create_conv_weights(g, sp.float16, shape, wshape, padding=padding)
    else:
        w = g.add_variable(sp.float16, wshape, name="w")
        sp.ops.map_linearly(g, w)
    prog = P.Sequence()
    y = conv(g, x, w, prog, padding=padding)
    eng = sp.Engine(g, [prog])
    xv = np.random.default_rng(0).standard_normal(shape).astype(np.float16)
    wv = np.random.default_rng(1).standard_normal(wshape).astype(np.float16)
    eng.write_tensor(x, xv)
    eng.write_tensor(w, wv)
    eng.run(0)
    want = torch.nn.functional.conv2d(torch.tensor(xv, dtype=torch.float32),
                                      torch.tensor(wv, dtype=torch.float32), padding=padding).numpy()
    got = eng.read_tensor(y).astype(np.float32)
    assert np.abs(got - want).max() <= 2e-3 * np.abs(want).max()
    return eng.report


def test_padding_is_zeroed_on_its_own_tiles() -> None:
    # popops zero writes each tile's own elements: nothing is exchanged for the padding (it was an
    # exchange region per border element, all sent from one constant on tile 0).
    report = _conv_report((1, 64, 8, 8), (64, 64, 3, 3), 1)
    fills = [s for s in report.steps if s["name"].endswith("pad/fill")]
    assert fills and all(s["bytes_exchanged"] == 0 for s in fills)


def test_im2col_pieces_are_channel_runs() -> None:
    # K in (kh, kw, Cg) order over a channels-innermost input: a piece per output pixel and kernel
    # position, each 64 channels contiguous on both sides. 9 positions x 64 pixels = 576 pieces; at
    # most a send and a receive region each, plus one per tile boundary a run crosses (8 tiles):
    # exchange code <= 16 B x 2 x (576 + 2 x 8) for the im2col, and the padded copy moves 8 rows of
    # 8 x 64 channels (<= 2 x (8 + 8) regions). Per element (K in (Cg, kh, kw) order, as before)
    # the im2col alone was 9 x 64 x 64 = 36,864 pieces: 1.2 MB of exchange code.
    report = _conv_report((1, 64, 8, 8), (64, 64, 3, 3), 1)
    per_region = SMALL.exchange_code_bytes_per_region
    im2col_bound = per_region * 2 * (576 + 16)
    padded_bound = per_region * 2 * (8 + 8)
    exchanges_in_amp = per_region * 2 * 8 * 8 * 4  # generous: the AMP and reduce steps' exchange
    assert report.memory_by_category["exchange_code"] <= im2col_bound + padded_bound + exchanges_in_amp


def test_weights_created_for_the_plan_are_used_in_place() -> None:
    # poplin's createWeights: laid out as the plan wants, the weights need no re-layout per call.
    created = _conv_report((1, 32, 6, 6), (48, 32, 3, 3), 1)
    linear = _conv_report((1, 32, 6, 6), (48, 32, 3, 3), 1, use_created_weights=False)
    assert not [s for s in created.steps if "/b" in s["name"] and s["kind"] != "compute"]
    assert [s for s in linear.steps if "/b" in s["name"]]


def test_pointwise_convolution_reads_its_input_in_place() -> None:
    # A 1x1 stride-1 convolution's im2col is its input: no copy of A when the input is stored
    # channels innermost (every convolution's output is) and a K block holds every channel (16
    # half channels: one AMP pass, poplin's grain).
    report = _conv_report((1, 16, 6, 6), (32, 16, 1, 1), 0)
    assert not [s for s in report.steps if s["name"].startswith("Copy") and "/a" in s["name"]]


@pytest.mark.parametrize("stride", [1, 2])
def test_convolution_with_a_split_kernel_position_matches_torch(stride: int) -> None:
    # Cg = 40: K grain gcd(40, 64) = 8, a low memory proportion forces K blocks that cut kernel
    # positions (the piecewise im2col path), and a strided 1x1 takes the channel-slab path.
    for wshape in ((24, 40, 3, 3), (24, 40, 1, 1)):
        g = sp.Graph(SMALL)
        x = g.add_variable(sp.float32, (1, 40, 9, 9), name="x")
        sp.ops.map_linearly(g, x)
        w = g.add_variable(sp.float32, wshape, name="w")
        sp.ops.map_linearly(g, w)
        prog = P.Sequence()
        pad = wshape[2] // 2
        y = conv(g, x, w, prog, stride=stride, padding=pad, options={"availableMemoryProportion": 0.02})
        eng = sp.Engine(g, [prog])
        xv = np.random.default_rng(2).standard_normal((1, 40, 9, 9)).astype(np.float32)
        wv = np.random.default_rng(3).standard_normal(wshape).astype(np.float32)
        eng.write_tensor(x, xv)
        eng.write_tensor(w, wv)
        eng.run(0)
        want = torch.nn.functional.conv2d(torch.tensor(xv), torch.tensor(wv), stride=stride, padding=pad)
        np.testing.assert_allclose(eng.read_tensor(y), want.numpy(), rtol=1e-4, atol=1e-4)


def test_max_pool_of_a_channels_innermost_input_spreads_its_planes() -> None:
    # Every plane's element of one pixel shares a tile in NHWC (a convolution's output): vertices
    # placed at each plane's middle column piled all planes of a band on one tile (ResNet-50's
    # stem pool on a GC200: 52k compute cycles against 4.9k for NCHW). Here (1, 32, 16, 16) halves
    # on 64 tiles: 4 pixels a tile, so a row spans 4 tiles; 8 bands of one output row. NCHW: 32
    # planes x 8 bands over 64 tiles, 4 vertices a tile. NHWC spread across the row: 32 planes
    # over 4 tiles, 8 vertices a tile (twice NCHW); piled on one tile: 32 (8x NCHW).
    def compute(nhwc: bool) -> int:
        g = sp.Graph(sp.targets.ipu_model(tiles=64, bytes_per_tile=64 * 1024))
        if nhwc:
            v = g.add_variable(sp.float16, (1, 16, 16, 32), name="x")
            sp.ops.map_linearly(g, v)
            x = v.transpose(0, 3, 1, 2)
        else:
            x = g.add_variable(sp.float16, (1, 32, 16, 16), name="x")
            sp.ops.map_linearly(g, x)
        prog = P.Sequence()
        sp.ops.nn.max_pool(g, x, prog, kernel=3, stride=2, padding=1)
        eng = sp.Engine(g, [prog], estimate_only=True)
        eng.run(0)
        return max(s["compute_cycles"] for s in eng.report.steps)

    assert compute(False) == 852  # 4 plane vertices a tile: 6 x 142 (the plane codelet's [U] figure)
    # NHWC is pooled over channel groups now (issue 19, tests/test_fidelity_pool.py): 64 one-pixel
    # vertices of 32 channels, one a tile (piled, a tile would run 64). popnn's worker figure for an
    # interior pixel: 19 + init (4 + 2) + 8 + 13 + row 15 + 9 items x (20 + 1 + 8 x 7 + 1 + 3) + 1
    # = 791, x 6 worker slots.
    assert compute(True) == 6 * 791
