"""ONNX QuantizeLinear / DequantizeLinear / DynamicQuantizeLinear for 8- and 16-bit integers:
one fused ``map`` each (scale and zero point broadcast per tensor, per axis or per block)."""

from __future__ import annotations

from typing import Any

import numpy as np

from softipu.dtypes import float32
from softipu.frontends.onnx.lower import device_dtype
from softipu.frontends.onnx.registry import register_onnx_lowering
from softipu.graph.tensor import Tensor
from softipu.ops import elementwise as ew
from softipu.ops.elementwise import E
from softipu.ops.reduce import ReduceOp, reduce

T_UINT8 = 2


def _round_even(v: Any) -> Any:
    """Round half to even (ONNX's rounding), from round-half-away and a tie test."""
    return E.select(E.eq(E.abs(E.sub(v, E.trunc(v))), 0.5), E.mul(2.0, E.round(E.mul(v, 0.5))), E.round(v))


def _aligned(ctx: Any, t: Tensor, x_shape: tuple[int, ...]) -> Tensor:
    """A scale or zero point shaped to broadcast against x: scalar, per axis or per block."""
    if t.ndim == 0 or t.numel == 1:
        return t.reshape(())
    axis = int(ctx.attr("axis", 1)) % len(x_shape)
    block = int(ctx.attr("block_size", 0))
    if t.ndim == 1 and not block:
        return t.reshape((t.shape[0],) + (1,) * (len(x_shape) - axis - 1))
    # blocked: repeat each entry block_size times along the axis (an indexed view)
    idx = np.arange(x_shape[axis]) // block
    addr = t.addresses()[(slice(None),) * axis + (idx,)]
    return Tensor(t.graph, t.dtype, tuple(addr.shape), 0, (), addr)


def _limits(dtype: Any) -> tuple[float, float]:
    info = np.iinfo(dtype.numpy)
    return float(info.min), float(info.max)


@register_onnx_lowering("QuantizeLinear")
def _quantize(ctx: Any, node: Any) -> Tensor:
    x = ctx.input(0)
    scale = _aligned(ctx, ctx.input(1), x.shape)
    out_type = ctx.elem_type(2) if ctx.has(2) else int(ctx.attr("output_dtype", 0) or T_UINT8)
    dtype = device_dtype(out_type, f"QuantizeLinear node {ctx.name!r}")
    lo, hi = _limits(dtype)
    inputs = [x, scale]
    q = _round_even(E.div(E.cast(E.input(0), float32), E.cast(E.input(1), float32)))
    if ctx.has(2):
        inputs.append(_aligned(ctx, ctx.input(2), x.shape))
        q = E.add(q, E.cast(E.input(2), float32))
    return ew.map(ctx.graph, E.cast(E.clamp(q, lo, hi), dtype), inputs, ctx.prog, name=ctx.name)


@register_onnx_lowering("DequantizeLinear")
def _dequantize(ctx: Any, node: Any) -> Tensor:
    x = ctx.input(0)
    scale = ctx.input(1)
    inputs = [x, _aligned(ctx, scale, x.shape)]
    v = E.cast(E.input(0), float32)
    if ctx.has(2):
        inputs.append(_aligned(ctx, ctx.input(2), x.shape))
        v = E.sub(v, E.cast(E.input(2), float32))
    return ew.map(ctx.graph, E.cast(E.mul(v, E.cast(E.input(1), float32)), scale.dtype), inputs, ctx.prog,
                  name=ctx.name)


@register_onnx_lowering("DynamicQuantizeLinear")
def _dynamic_quantize(ctx: Any, node: Any) -> tuple:
    from softipu.dtypes import uint8  # noqa: PLC0415

    x = ctx.input(0)
    hi = reduce(ctx.graph, x, ctx.prog, op=ReduceOp.MAX, name=f"{ctx.name}/max")
    lo = reduce(ctx.graph, x, ctx.prog, op=ReduceOp.MIN, name=f"{ctx.name}/min")
    mx, mn = E.maximum(E.input(1), 0.0), E.minimum(E.input(0), 0.0)
    scale = ew.map(ctx.graph, E.div(E.sub(mx, mn), 255.0), [lo, hi], ctx.prog, name=f"{ctx.name}/scale")
    zp_f = E.clamp(_round_even(E.sub(0.0, E.div(E.minimum(E.input(0), 0.0), E.input(1)))), 0.0, 255.0)
    zp = ew.map(ctx.graph, E.cast(zp_f, uint8), [lo, scale], ctx.prog, name=f"{ctx.name}/zero_point")
    q = E.clamp(E.add(_round_even(E.div(E.input(0), E.input(1))), E.cast(E.input(2), float32)), 0.0, 255.0)
    y = ew.map(ctx.graph, E.cast(q, uint8), [x, scale, zp], ctx.prog, name=ctx.name)
    return y, scale, zp


def _dequantized(ctx: Any, x: Tensor, scale: Tensor | None, zero: Tensor | None, suffix: str) -> Tensor:
    """``(x - zero) * scale`` in float32 (integer inputs of the quantized linear ops)."""
    inputs, v = [x], E.cast(E.input(0), float32)
    if zero is not None:
        inputs.append(_aligned_rows(zero, x))
        v = E.sub(v, E.cast(E.input(len(inputs) - 1), float32))
    if scale is not None:
        inputs.append(_aligned_rows(scale, x))
        v = E.mul(v, E.cast(E.input(len(inputs) - 1), float32))
    return ew.map(ctx.graph, v, inputs, ctx.prog, name=f"{ctx.name}/{suffix}")


def _aligned_rows(t: Tensor, x: Tensor) -> Tensor:
    """A per-tensor scalar, or a per-row (a's M) / per-column (b's N) vector as the matmul reads it."""
    if t.numel == 1:
        return t.reshape(())
    return t.reshape((t.shape[0],) + (1,) * (x.ndim - 1)) if t.shape[0] == x.shape[-2] and x.ndim >= 2 and \
        t.shape[0] != x.shape[-1] else t.reshape((t.shape[0],))


def _requantize(ctx: Any, y: Tensor, scale: Tensor, zero: Tensor | None, out_type: int) -> Tensor:
    dtype = device_dtype(out_type, f"{ctx.node.op_type} node {ctx.name!r}")
    lo, hi = _limits(dtype)
    inputs = [y, scale.reshape(()) if scale.numel == 1 else scale]
    q = _round_even(E.div(E.input(0), E.cast(E.input(1), float32)))
    if zero is not None:
        inputs.append(zero.reshape(()) if zero.numel == 1 else zero)
        q = E.add(q, E.cast(E.input(2), float32))
    return ew.map(ctx.graph, E.cast(E.clamp(q, lo, hi), dtype), inputs, ctx.prog, name=ctx.name)


@register_onnx_lowering("QLinearMatMul")
def _qlinear_matmul(ctx: Any, node: Any) -> Tensor:
    from softipu.frontends.onnx.lowerings.nn import _mm  # noqa: PLC0415

    a = _dequantized(ctx, ctx.input(0), ctx.input(1), ctx.input(2), "a")
    b = _dequantized(ctx, ctx.input(3), ctx.input(4), ctx.input(5), "b")
    y = _mm(ctx, a, b, "/matmul")
    return _requantize(ctx, y, ctx.input(6), ctx.input(7), ctx.elem_type(7))


@register_onnx_lowering("MatMulInteger")
def _matmul_integer(ctx: Any, node: Any) -> Tensor:
    from softipu.dtypes import int32  # noqa: PLC0415
    from softipu.frontends.onnx.lowerings.nn import _mm  # noqa: PLC0415

    a = _dequantized(ctx, ctx.input(0), None, ctx.input(2) if ctx.has(2) else None, "a")
    b = _dequantized(ctx, ctx.input(1), None, ctx.input(3) if ctx.has(3) else None, "b")
    y = _mm(ctx, a, b, "/matmul")  # exact in fp32 for 8-bit operands and K < 2**8
    return ew.map(ctx.graph, E.cast(E.round(E.input(0)), int32), [y], ctx.prog, name=ctx.name)


def _per_channel(t: Tensor, ndim: int) -> Tensor:
    """A per-output-channel scale or zero point (or a scalar) shaped for a (M, C/g, k...) weight."""
    return t.reshape(()) if t.numel == 1 else t.reshape((t.shape[0],) + (1,) * (ndim - 1))


def _dequantize_conv(ctx: Any, x: Tensor, scale: Tensor | None, zero: Tensor | None, weight: bool,
                     suffix: str) -> Tensor:
    inputs, v = [x], E.cast(E.input(0), float32)
    if zero is not None:
        inputs.append(_per_channel(zero, x.ndim) if weight else zero.reshape(()))
        v = E.sub(v, E.cast(E.input(1), float32))
    if scale is not None:
        inputs.append(_per_channel(scale, x.ndim) if weight else scale.reshape(()))
        v = E.mul(v, E.cast(E.input(len(inputs) - 1), float32))
    return ew.map(ctx.graph, v, inputs, ctx.prog, name=f"{ctx.name}/{suffix}")


@register_onnx_lowering("ConvInteger")
def _conv_integer(ctx: Any, node: Any) -> Tensor:
    from softipu.dtypes import int32  # noqa: PLC0415
    from softipu.frontends.onnx.lowerings.nn import convolve  # noqa: PLC0415

    x = _dequantize_conv(ctx, ctx.input(0), None, ctx.input(2), False, "x")
    w = _dequantize_conv(ctx, ctx.input(1), None, ctx.input(3), True, "w")
    y = convolve(ctx, x, w, None)
    return ew.map(ctx.graph, E.cast(E.round(E.input(0)), int32), [y], ctx.prog, name=f"{ctx.name}/int")


@register_onnx_lowering("QLinearConv")
def _qlinear_conv(ctx: Any, node: Any) -> Tensor:
    from softipu.frontends.onnx.lowerings.nn import convolve  # noqa: PLC0415

    x = _dequantize_conv(ctx, ctx.input(0), ctx.input(1), ctx.input(2), False, "x")
    w = _dequantize_conv(ctx, ctx.input(3), ctx.input(4), ctx.input(5), True, "w")
    bias = None
    if ctx.has(8):  # int32 bias in units of x_scale * w_scale
        bias = _dequantize_conv(ctx, ctx.input(8).reshape((1, -1, 1)), None, None, False, "b")
        scale = ew.map(ctx.graph, E.mul(E.input(0), E.input(1)), [ctx.input(1).reshape(()), ctx.input(4)],
                       ctx.prog, name=f"{ctx.name}/bias_scale")
        bias = ew.map(ctx.graph, E.mul(E.input(0), E.input(1)), [bias.reshape(-1), scale], ctx.prog,
                      name=f"{ctx.name}/bias")
    y = convolve(ctx, x, w, bias)
    return _requantize(ctx, y, ctx.input(6), ctx.input(7), ctx.elem_type(7))
