"""Convolutions beyond the record table: torch autograd, errors, layout, cost sanity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import softipu as sp
from softipu import program as P
from softipu.compiler.costs import StepKind
from softipu.ops.common import OpError
from softipu.ops.conv import conv, conv_input_grad, conv_output_shape, conv_weight_grad
from softipu.ops.planner import _plan_cached

SMALL = sp.targets.ipu_model(tiles=8, bytes_per_tile=256 * 1024)
F = torch.nn.functional


def _var(g, dtype, shape, name):
    t = g.add_variable(dtype, shape, name=name)
    sp.ops.map_linearly(g, t)
    return t


def _line_of(marker: str) -> int:
    with open(__file__) as f:
        return next(i for i, line in enumerate(f, 1) if marker in line and "_line_of" not in line)


CASES = [
    ((2, 3, 8, 8), (4, 3, 3, 3), {}),
    ((2, 3, 9, 8), (5, 3, 3, 3), {"stride": 2, "padding": 1}),
    ((1, 4, 9, 10), (6, 2, 3, 2), {"stride": (2, 1), "padding": (1, 2), "dilation": (2, 1), "groups": 2}),
    ((2, 6, 6, 6), (6, 1, 3, 3), {"padding": 1, "groups": 6}),  # depthwise
    ((1, 3, 13, 13), (4, 3, 7, 7), {"stride": 2, "padding": 3}),  # a stem
    ((2, 8, 5, 5), (16, 8, 1, 1), {"stride": 2}),  # a strided 1x1 downsample
    ((2, 3, 17), (4, 3, 5), {"stride": 3, "padding": 2, "dilation": 2}),  # 1-D
    ((2, 3, 7, 7), (4, 3, 1, 1), {"padding": 1}),  # more padding than kernel: dx crops
]


@pytest.mark.parametrize(("x_shape", "w_shape", "kw"), CASES)
def test_forward_and_both_gradients_match_torch_autograd(x_shape, w_shape, kw):
    g = sp.Graph(SMALL)
    x, w = _var(g, sp.float32, x_shape, "x"), _var(g, sp.float32, w_shape, "w")
    rng = np.random.default_rng(7)
    xv = rng.standard_normal(x_shape).astype(np.float32)
    wv = rng.standard_normal(w_shape).astype(np.float32)
    tx, tw = torch.tensor(xv, requires_grad=True), torch.tensor(wv, requires_grad=True)
    ty = (F.conv1d if len(x_shape) == 3 else F.conv2d)(tx, tw, **kw)
    dyv = rng.standard_normal(tuple(ty.shape)).astype(np.float32)
    ty.backward(torch.tensor(dyv))
    prog = P.Sequence()
    y = conv(g, x, w, prog, **kw)
    assert y.shape == tuple(ty.shape) == conv_output_shape(x_shape, w_shape, **kw)
    dy = _var(g, sp.float32, y.shape, "dy")
    dx = conv_input_grad(g, dy, w, prog, input_shape=x_shape, **kw)
    dw = conv_weight_grad(g, dy, x, prog, weight_shape=w_shape, **kw)
    eng = sp.Engine(g, [prog])
    for t, v in ((x, xv), (w, wv), (dy, dyv)):
        eng.write_tensor(t, v)
    eng.run(0)
    np.testing.assert_allclose(eng.read_tensor(y), ty.detach().numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(eng.read_tensor(dx), tx.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(eng.read_tensor(dw), tw.grad.numpy(), rtol=1e-4, atol=1e-4)


def test_fp16_accumulates_in_fp32():
    g = sp.Graph(SMALL)
    x, w = _var(g, sp.float16, (1, 32, 6, 6), "x"), _var(g, sp.float16, (8, 32, 3, 3), "w")
    prog = P.Sequence()
    y = conv(g, x, w, prog, padding=1)
    rng = np.random.default_rng(0)
    xv, wv = (rng.integers(-2, 3, t.shape).astype(np.float16) for t in (x, w))
    eng = sp.Engine(g, [prog])
    eng.write_tensor(x, xv)
    eng.write_tensor(w, wv)
    eng.run(0)
    # Small integers: every partial sum is exact in fp32 (not in fp16 beyond 2048).
    want = F.conv2d(torch.tensor(xv, dtype=torch.float64), torch.tensor(wv, dtype=torch.float64), padding=1)
    np.testing.assert_array_equal(eng.read_tensor(y), want.numpy().astype(np.float16))


def test_a_conv_output_feeds_the_next_conv():
    """The NHWC-stored output view is a fine input (its im2col copy reads any strides)."""
    g = sp.Graph(SMALL)
    x = _var(g, sp.float32, (2, 3, 8, 8), "x")
    w1, w2 = _var(g, sp.float32, (5, 3, 3, 3), "w1"), _var(g, sp.float32, (4, 5, 3, 3), "w2")
    prog = P.Sequence()
    h = conv(g, x, w1, prog, padding=1)
    y = conv(g, h, w2, prog, stride=2)
    assert h.is_strided and h.strides[1] == 1  # channels innermost in memory
    rng = np.random.default_rng(1)
    vals = {t: rng.standard_normal(t.shape).astype(np.float32) for t in (x, w1, w2)}
    eng = sp.Engine(g, [prog])
    for t, v in vals.items():
        eng.write_tensor(t, v)
    eng.run(0)
    tx, t1, t2 = (torch.tensor(vals[t]) for t in (x, w1, w2))
    want = F.conv2d(F.conv2d(tx, t1, padding=1), t2, stride=2)
    np.testing.assert_allclose(eng.read_tensor(y), want.numpy(), rtol=1e-4, atol=1e-4)


# -- errors ----------------------------------------------------------------------------------------
def _bad(x_shape, w_shape, **kw):
    g = sp.Graph(SMALL)
    x, w = _var(g, sp.float32, x_shape, "x"), _var(g, sp.float32, w_shape, "w")
    return g, x, w


def test_channel_mismatch_names_op_shapes_and_line():
    g, x, w = _bad((1, 3, 8, 8), (4, 2, 3, 3))
    with pytest.raises(OpError) as err:
        conv(g, x, w, P.Sequence(), name="c1")  # MARK-channels
    msg = str(err.value)
    assert "conv 'c1'" in msg and "(4, 2, 3, 3)" in msg and "(1, 3, 8, 8)" in msg
    assert f"test_ops_conv.py:{_line_of('MARK-channels')}" in msg


@pytest.mark.parametrize(("x_shape", "w_shape", "kw", "pattern"), [
    ((1, 6, 8, 8), (4, 3, 3, 3), {"groups": 4}, r"divisible by groups=4"),
    ((1, 3, 4, 4), (2, 3, 5, 5), {}, r"larger than the padded input \(4, 4\)"),
    ((1, 3, 8, 8), (2, 3, 3, 3), {"stride": 0}, r"stride must be an int >= 1 or 2 of them, got 0"),
    ((1, 3, 8, 8), (2, 3, 3, 3), {"padding": (1, 2, 3)}, r"padding must be an int >= 0 or 2 of them"),
    ((1, 3, 8), (2, 3, 3, 3), {}, r"need \[N, C, L\] with \[O, C/groups, k\]"),
    ((1, 3, 8, 8), (2, 3, 3, 3), {"dilation": 1.5}, r"dilation must be an int >= 1"),
])
def test_argument_errors(x_shape, w_shape, kw, pattern):
    g, x, w = _bad(x_shape, w_shape)
    with pytest.raises(OpError, match=pattern):
        conv(g, x, w, P.Sequence(), **kw)


def test_dtype_mismatch():
    g = sp.Graph(SMALL)
    x, w = _var(g, sp.float32, (1, 3, 8, 8), "x"), _var(g, sp.float16, (2, 3, 3, 3), "w")
    with pytest.raises(OpError, match=r"sp.float32 and sp.float16; cast one"):
        conv(g, x, w, P.Sequence())


def test_gradient_shape_errors_name_the_expected_output():
    g = sp.Graph(SMALL)
    dy, w = _var(g, sp.float32, (1, 2, 5, 5), "dy"), _var(g, sp.float32, (2, 3, 3, 3), "w")
    with pytest.raises(OpError, match=r"conv_input_grad.*dy has shape \(1, 2, 5, 5\) but the "
                                      r"convolution's output is \(1, 2, 6, 6\)"):
        conv_input_grad(g, dy, w, P.Sequence(), input_shape=(1, 3, 8, 8))
    x = _var(g, sp.float32, (1, 3, 8, 8), "x")
    with pytest.raises(OpError, match=r"conv_weight_grad.*\(1, 2, 6, 6\)"):
        conv_weight_grad(g, dy, x, P.Sequence(), weight_shape=(2, 3, 3, 3))


# -- cost and planning -------------------------------------------------------------------------------
def test_im2col_copies_and_flops_are_in_the_report():
    g = sp.Graph(sp.targets.GC200)
    x, w = _var(g, sp.float16, (2, 16, 14, 14), "x"), _var(g, sp.float16, (32, 16, 3, 3), "w")
    prog = P.Sequence()
    conv(g, x, w, prog, padding=1)
    eng = sp.Engine(g, [prog], estimate_only=True)
    eng.run(0)
    report = eng.report
    macs = 2 * 14 * 14 * 32 * 16 * 9
    assert 2 * macs <= report.flops <= 2 * macs * 1.1
    copies = [s for s in eng.executable.steps if s.kind is StepKind.COPY]
    # padding bands + interior, and the im2col slabs: the input moves kh*kw times over
    assert copies and sum(s.bytes_exchanged for s in copies) > 0
    assert report.fits


def test_a_resnet_conv_plan_fits_and_keeps_kernels_whole():
    # Its planning time (< 50 ms) is conv_plan_ms in bench/bench_host_times.py.
    from softipu.ops.matmul import _options, _plan, _PlanContext, _Spec
    _plan_cached.cache_clear()
    opts = _options(_PlanContext("t"), None, sp.float16)
    m, k, n = 8 * 28 * 28, 128 * 9, 128  # ResNet-50 conv3 3x3, batch 8
    spec = _Spec((1,), m, k, n, sp.float16, (1,), (1,), (1, m, n), False, False)
    pl, swapped = _plan(spec, opts, sp.targets.GC200, grains=(1, 9, 1), allow_swap=False)
    assert pl.fits and not swapped
    assert pl.blocks[3] % 9 == 0  # K blocks hold whole 3x3 kernels
