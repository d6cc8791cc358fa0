"""Pooling and convolution in every form torch has, as window views: the forms ``ops.nn`` and
``ops.conv`` take directly keep their planned lowerings (``nn.py``); the rest (3-D, dilated or
ceil-mode pooling, divisors, adaptive windows that do not divide the input, adaptive max,
transposed and 3-D convolution) are lowered here.

A window table lists, for each output position, the flat input positions of its window (-1
outside the input). The windows are then an indexed view of the input (moving no data) in which
the outside positions read one constant element (the pad value: 0, or -inf for max), reduced
over the window axis (max / sum) or, for convolution, multiplied by the weights as one matmul
(im2col). Transposed convolution is the convolution of the input spread out by the stride
(the gaps read the zero element) with the flipped, transposed weights.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from softipu.dtypes import float32, int32
from softipu.frontends.torch.lowerings import backward as bw
from softipu.frontends.torch.lowerings import nn as nnl
from softipu.frontends.torch.lowerings.indexing import _reduce_into
from softipu.frontends.torch.lowerings.nn import _float_result, _pair
from softipu.frontends.torch.lowerings.pointwise import _map
from softipu.frontends.torch.lowerings.reduce import reduce_to
from softipu.frontends.torch.registry import register_lowering
from softipu.graph import program as P
from softipu.graph.tensor import Tensor
from softipu.ops import indexing as ix
from softipu.ops.elementwise import E
from softipu.ops.matmul import matmul
from softipu.ops.reduce import ReduceOp, argmax

__all__: list[str] = []


# -- window tables ---------------------------------------------------------------------------------
def _axis_windows(n_in: int, n_out: int, kernel: int, stride: int, pad: int, dilation: int,
                  spread: int = 1) -> np.ndarray:
    """(n_out, kernel) input positions along one axis (-1 outside); ``spread``: the input is
    spread out by this factor (gaps between its elements read the pad value)."""
    virtual = (n_in - 1) * spread + 1 if n_in else 0
    v = np.arange(n_out)[:, None] * stride + np.arange(kernel)[None, :] * dilation - pad
    ok = (v >= 0) & (v < virtual) & (v % spread == 0)
    return np.where(ok, v // spread, -1)


def _adaptive_windows(n_in: int, n_out: int) -> np.ndarray:
    """torch's adaptive windows: ``[floor(i n/o), ceil((i+1) n/o))``, padded with -1."""
    starts = (np.arange(n_out) * n_in) // n_out
    ends = -((-(np.arange(n_out) + 1) * n_in) // n_out)
    k = int((ends - starts).max()) if n_out else 0
    v = starts[:, None] + np.arange(k)[None, :]
    return np.where(v < ends[:, None], v, -1)


def _combine(axes: list[np.ndarray], sizes: tuple[int, ...]) -> np.ndarray:
    """Per-axis windows combined into (outputs, window) flat positions (-1 if any axis is out)."""
    strides = [math.prod(sizes[a + 1:]) for a in range(len(sizes))]
    out_shape = tuple(w.shape[0] for w in axes)
    k_shape = tuple(w.shape[1] for w in axes)
    table = np.zeros(out_shape + k_shape, np.int64)
    bad = np.zeros(out_shape + k_shape, bool)
    d = len(axes)
    for a, w in enumerate(axes):
        shape = [1] * (2 * d)
        shape[a], shape[d + a] = w.shape
        w = w.reshape(shape)
        table = table + w * strides[a]
        bad = bad | (w < 0)
    return np.where(bad, -1, table).reshape(math.prod(out_shape), math.prod(k_shape))


def _out_size(n: int, k: int, s: int, p: int, d: int, ceil: bool) -> int:
    eff = d * (k - 1) + 1
    out = (n + 2 * p - eff + ((s - 1) if ceil else 0)) // s + 1
    if ceil and (out - 1) * s >= n + p:
        out -= 1
    return max(out, 0)


def _view(like: Tensor, addr: np.ndarray) -> Tensor:
    """A view of ``like``'s dtype at the given element addresses (moves no data)."""
    return Tensor(like.graph, like.dtype, tuple(addr.shape), 0, (), np.ascontiguousarray(addr))


def _window_view(ctx: Any, x: Tensor, table: np.ndarray, pad_value: float) -> Tensor:
    """``x`` ``(R, L)`` seen as ``(R, outputs, window)`` through ``table`` (a view)."""
    pad = ctx.constant(pad_value, x.dtype, (1,), "pad")
    flat = np.concatenate([x.addresses(), np.broadcast_to(pad.addresses(), (x.shape[0], 1))], axis=1)
    idx = np.where(table < 0, x.shape[1], table)
    return _view(x, flat[:, idx])


# -- pooling ---------------------------------------------------------------------------------------
def _pool(ctx: Any, x: Tensor, nsp: int, axes: list[np.ndarray], out_sizes: tuple[int, ...],
          kind: str, divisor: np.ndarray | float | None = None, with_index: bool = False) -> Any:
    """Max or average pooling of the last ``nsp`` dims of ``x`` over the given per-axis windows."""
    lead = x.shape[:-nsp]
    sizes = x.shape[-nsp:]
    rows = math.prod(lead)
    table = _combine(axes, sizes)
    out_shape = lead + out_sizes
    if not rows or not table.size:
        empty = ctx.constant(0, x.dtype, out_shape, "empty")
        return (empty, ctx.constant(0, int32, out_shape, "index")) if with_index else empty
    pad_value = -math.inf if kind == "max" else 0.0
    view = _window_view(ctx, _view(x, x.addresses().reshape(rows, math.prod(sizes))), table, pad_value)
    if kind == "max":
        out = reduce_to(ctx, view, ReduceOp.MAX, (2,), False, "/max").reshape(out_shape)
        if not with_index:
            return out
        best = argmax(ctx.graph, view, ctx.prog, dim=2, name=f"{ctx.name}/argmax")
        base = ctx.constant((np.arange(table.shape[0]) * table.shape[1]).astype(np.int32), int32,
                            (table.shape[0],), "base")
        pos = _map(ctx, E.add(E.input(0), E.input(1)),
                   [ctx.cast(best, int32), base.reshape(1, -1).broadcast(best.shape)], "/pos")
        lut = ctx.constant(table.reshape(-1).astype(np.int32), int32, (table.size,), "table")
        index = ix.gather(ctx.graph, lut, pos.reshape(-1), ctx.prog, axis=0, name=f"{ctx.name}/index")
        return out, index.reshape(out_shape)
    total = reduce_to(ctx, view, ReduceOp.ADD, (2,), False, "/sum")
    scale = 1.0 / np.asarray(divisor, np.float64)
    if scale.ndim:
        s = ctx.constant(scale.astype(np.float32), float32, (scale.size,), "scale")
        s = s.reshape(1, -1).broadcast(total.shape)
        out = _map(ctx, E.mul(E.input(0), E.cast(E.input(1), x.dtype)), [total, s])
    else:
        out = _map(ctx, E.mul(E.input(0), float(scale)), [total])
    return out.reshape(out_shape)


def _pool_args(x: Tensor, nsp: int, kernel: Any, stride: Any, padding: Any, dilation: Any,
               ceil: bool) -> tuple[list[np.ndarray], tuple[int, ...], list[tuple[int, ...]]]:
    k = _pair(kernel, nsp)
    s = _pair(stride, nsp) if stride else k
    p, d = _pair(padding, nsp), _pair(dilation, nsp)
    sizes = x.shape[-nsp:]
    outs = tuple(_out_size(n, *a, bool(ceil)) for n, *a in zip(sizes, k, s, p, d, strict=True))
    axes = [_axis_windows(n, o, *a) for n, o, *a in zip(sizes, outs, k, s, p, d, strict=True)]
    return axes, outs, [k, s, p]


def _avg_divisor(sizes: tuple[int, ...], outs: tuple[int, ...], k: Any, s: Any, p: Any,
                 count_include_pad: bool, divisor_override: Any) -> Any:
    """torch's average-pool divisor per output: the window clipped to the padded input (with
    ``count_include_pad``) or to the input, or ``divisor_override``."""
    if divisor_override:
        return float(divisor_override)
    per_axis = []
    for n, o, kk, ss, pp in zip(sizes, outs, k, s, p, strict=True):
        start = np.arange(o) * ss - pp
        end = np.minimum(start + kk, n + pp)
        if not count_include_pad:
            start, end = np.maximum(start, 0), np.minimum(end, n)
        per_axis.append(end - start)
    return np.asarray([math.prod(c) for c in itertools.product(*per_axis)], np.float64)


def _max_pool(nsp: int) -> Any:
    def lower(ctx: Any, node: Any, x: Tensor, kernel_size: Any, stride: Any = (), padding: Any = 0,
              dilation: Any = 1, ceil_mode: bool = False) -> Any:
        if nsp == 2 and nnl._max_pool_check(node) is None:
            return nnl._max_pool2d(ctx, node, x, kernel_size, stride, padding, dilation, ceil_mode)
        axes, outs, _ = _pool_args(x, nsp, kernel_size, stride, padding, dilation, ceil_mode)
        values, index = _pool(ctx, x, nsp, axes, outs, "max", with_index=True)
        return values, ctx.cast(index, ctx.out_dtype(1))
    return lower


def _avg_pool(nsp: int, fast: Any = None) -> Any:
    def lower(ctx: Any, node: Any, x: Tensor, kernel_size: Any, stride: Any = (), padding: Any = 0,
              ceil_mode: bool = False, count_include_pad: bool = True,
              divisor_override: Any = None) -> Tensor:
        if fast is not None and fast[1](node) is None:
            return fast[0](ctx, node, x, kernel_size, stride, padding, ceil_mode, count_include_pad,
                           *([divisor_override] if nsp == 2 else []))
        axes, outs, (k, s, p) = _pool_args(x, nsp, kernel_size, stride, padding, 1, ceil_mode)
        divisor = _avg_divisor(x.shape[-nsp:], outs, k, s, p, bool(count_include_pad), divisor_override)
        out = _pool(ctx, ctx.cast(x, ctx.out_dtype()), nsp, axes, outs, "avg", divisor)
        return out
    return lower


def _avg1d_check(node: Any) -> str | None:
    return "ceil_mode" if len(node.args) > 4 and node.args[4] else None


def _float_input(node: Any) -> str | None:
    """Average pooling averages floats; eager truncates integer averages (refused up front)."""
    dtype = node.args[0].meta["val"].dtype
    if not dtype.is_floating_point:
        return f"{str(dtype).removeprefix('torch.')} input: average pooling is lowered for floats only"
    return None


register_lowering("aten::max_pool2d_with_indices", _max_pool(2), override=True)
register_lowering("aten::max_pool3d_with_indices", _max_pool(3))
register_lowering("aten::avg_pool2d", _avg_pool(2, (nnl._avg_pool2d, nnl._avg_pool_check)), override=True,
                  check=_float_input)
register_lowering("aten::avg_pool1d", _avg_pool(1, (nnl._avg_pool1d, _avg1d_check)), override=True,
                  check=_float_input)
register_lowering("aten::avg_pool3d", _avg_pool(3), check=_float_input)


def _adaptive(nsp: int, kind: str, fast: Any = None) -> Any:
    def lower(ctx: Any, node: Any, x: Tensor, output_size: Any) -> Any:
        if fast is not None and fast[1](node) is None:
            return fast[0](ctx, node, x, output_size)
        outs = _pair(output_size, nsp)
        axes = [_adaptive_windows(n, o) for n, o in zip(x.shape[-nsp:], outs, strict=True)]
        if kind == "max":
            values, index = _pool(ctx, x, nsp, axes, outs, "max", with_index=True)
            return values, ctx.cast(index, ctx.out_dtype(1))
        counts = [(w >= 0).sum(axis=1) for w in axes]
        divisor = np.asarray([math.prod(c) for c in itertools.product(*counts)], np.float64)
        return _pool(ctx, ctx.cast(x, ctx.out_dtype()), nsp, axes, outs, "avg", divisor)
    return lower


register_lowering("aten::_adaptive_avg_pool2d",
                  _adaptive(2, "avg", (nnl._adaptive_avg_pool2d, nnl._adaptive_check)), override=True,
                  check=_float_input)
register_lowering("aten::adaptive_avg_pool1d",
                  _adaptive(1, "avg", (nnl._adaptive_avg_pool1d, nnl._adaptive_1d_check)), override=True,
                  check=_float_input)
register_lowering("aten::_adaptive_avg_pool3d", _adaptive(3, "avg"), check=_float_input)
register_lowering("aten::adaptive_max_pool2d", _adaptive(2, "max"))
register_lowering("aten::adaptive_max_pool3d", _adaptive(3, "max"))


# -- convolution -----------------------------------------------------------------------------------
def _conv_windows(ctx: Any, x: Tensor, weight: Tensor, stride: Any, padding: Any, dilation: Any,
                  transposed: bool, output_padding: Any, groups: int) -> Tensor:
    """Convolution as an im2col window view times the weights (one matmul per group)."""
    nsp = weight.ndim - 2
    n, c = x.shape[:2]
    sizes = x.shape[2:]
    s, p, d = _pair(stride, nsp), _pair(padding, nsp), _pair(dilation, nsp)
    if transposed:  # spread the input by the stride; flip and transpose the weights
        op = _pair(output_padding, nsp)
        cin, cout_g = weight.shape[:2]
        k = weight.shape[2:]
        addr = weight.addresses().reshape((groups, cin // groups, cout_g) + k)
        flip = (slice(None),) * 3 + (slice(None, None, -1),) * nsp
        addr = addr.transpose([0, 2, 1] + list(range(3, 3 + nsp)))[flip]
        w = _view(weight, addr.reshape((groups * cout_g, cin // groups) + k))
        outs = tuple((i - 1) * ss - 2 * pp + dd * (kk - 1) + oo + 1
                     for i, ss, pp, dd, kk, oo in zip(sizes, s, p, d, k, op, strict=True))
        axes = [_axis_windows(i, o, kk, 1, dd * (kk - 1) - pp, dd, ss)
                for i, o, kk, ss, pp, dd in zip(sizes, outs, k, s, p, d, strict=True)]
    else:
        w = weight
        k = weight.shape[2:]
        outs = tuple(_out_size(i, kk, ss, pp, dd, False)
                     for i, kk, ss, pp, dd in zip(sizes, k, s, p, d, strict=True))
        axes = [_axis_windows(i, o, kk, ss, pp, dd)
                for i, o, kk, ss, pp, dd in zip(sizes, outs, k, s, p, d, strict=True)]
    cout = w.shape[0]
    table = _combine(axes, sizes)  # (O, K)
    positions, window = table.shape
    out_shape = (n, cout) + outs
    if not positions or not n or not cout:
        return ctx.constant(0, x.dtype, out_shape, "empty")
    cg = c // groups
    og = cout // groups
    results = []
    for g in range(groups):
        xg = _view(x, x.addresses()[:, g * cg:(g + 1) * cg].reshape(n * cg, math.prod(sizes)))
        view = _window_view(ctx, xg, table, 0.0)  # (n*cg, O, K)
        cols = _view(x, view.addresses().reshape(n, cg, positions, window).transpose(0, 2, 1, 3)
                     .reshape(n * positions, cg * window))
        wg = _view(w, w.addresses()[g * og:(g + 1) * og].reshape(og, cg * window).T)
        y = matmul(ctx.graph, cols, wg, ctx.prog, name=f"{ctx.name}/g{g}",
                   options=ctx.matmul_options(x.dtype))  # (n*O, og)
        results.append(y.reshape(n, positions, og))
    y = results[0] if groups == 1 else _concat_last(ctx, results)
    return _view(y, y.addresses().transpose(0, 2, 1).reshape(out_shape))


def _concat_last(ctx: Any, parts: list[Tensor]) -> Tensor:
    shape = parts[0].shape[:-1] + (sum(t.shape[-1] for t in parts),)
    out = ctx.variable(parts[0].dtype, shape, "groups")
    at = 0
    for t in parts:
        ctx.prog.add(P.Copy(t, out[..., at:at + t.shape[-1]]))
        at += t.shape[-1]
    return out


def _convolution(ctx: Any, node: Any, x: Tensor, weight: Tensor, bias: Tensor | None, stride: Any,
                 padding: Any, dilation: Any, transposed: bool, output_padding: Any, groups: int) -> Tensor:
    if nnl._conv_check(node) is None:
        return nnl._convolution(ctx, node, x, weight, bias, stride, padding, dilation, transposed,
                                output_padding, groups)
    dtype = ctx.out_dtype()
    unbatched = x.ndim == weight.ndim - 1
    xb = ctx.cast(x, dtype).expand_dims(0) if unbatched else ctx.cast(x, dtype)
    out = _conv_windows(ctx, xb, ctx.cast(weight, dtype), stride, padding, dilation, bool(transposed),
                        output_padding, int(groups))
    if bias is not None:
        nsp = weight.ndim - 2
        per_channel = ctx.cast(bias, dtype).reshape((1, bias.shape[0]) + (1,) * nsp).broadcast(out.shape)
        out = _map(ctx, E.add(E.input(0), E.input(1)), [out, per_channel], "/bias")
    return out[0] if unbatched else out


register_lowering("aten::convolution", _convolution, check=_float_result, override=True)


def _max_pool_backward(ctx: Any, node: Any, grad_out: Tensor, x: Tensor, kernel_size: Any, stride: Any,
                       padding: Any, dilation: Any, ceil_mode: bool, indices: Tensor) -> Tensor:
    """The gradient of max pooling: each output's gradient added at its argmax (``indices``,
    flat in its plane); ops.nn.max_pool_grad's form where it applies (no dilation or ceil mode)."""
    if not ceil_mode and all(d == 1 for d in _pair(dilation)):
        return bw._max_pool2d_backward(ctx, node, grad_out, x, kernel_size, stride, padding, dilation,
                                       ceil_mode, indices)
    plane = x.shape[-2] * x.shape[-1]
    planes = x.numel // plane if plane else 0
    base = ctx.constant((np.arange(planes) * plane).astype(np.int32), int32, (planes,), "plane")
    idx = ctx.cast(indices, int32).reshape(planes, -1)
    base = base.reshape(planes, 1).broadcast(idx.shape)
    pos = _map(ctx, E.add(E.input(0), E.input(1)), [idx, base], "/pos")
    zeros = ctx.constant(0, ctx.out_dtype(), x.shape, "zeros")
    return _reduce_into(ctx, zeros, pos, ctx.cast(grad_out, ctx.out_dtype()), "sum", True)


register_lowering("aten::max_pool2d_with_indices_backward", _max_pool_backward, override=True)


# -- fractional max pooling ------------------------------------------------------------------------
def _fractional_max_pool(nsp: int) -> Any:
    """Windows start at torch's pseudo-random intervals: along an axis of ``n`` inputs, ``o``
    outputs and window ``k``, output ``i < o - 1`` starts at ``floor((i + u) a) - floor(u a)``
    with ``a = (n - k) / (o - 1)`` and ``u`` the plane's sample; the last starts at ``n - k``.
    The starts depend on the samples (data), so the windows are gathered, not viewed."""
    def lower(ctx: Any, node: Any, x: Tensor, kernel_size: Any, output_size: Any,
              random_samples: Tensor) -> tuple[Tensor, Tensor]:
        k, outs = _pair(kernel_size, nsp), _pair(output_size, nsp)
        lead, sizes = x.shape[:-nsp], x.shape[-nsp:]
        planes, plane = math.prod(lead), math.prod(sizes)
        out_shape = lead + outs
        if not planes or not math.prod(outs):
            return ctx.constant(0, x.dtype, out_shape), ctx.constant(0, ctx.out_dtype(1), out_shape)
        samples = ctx.cast(random_samples, float32).reshape(planes, nsp)
        full = (planes,) + outs + k
        pos = ctx.constant(np.arange(planes, dtype=np.int32) * plane, int32, (planes,), "base")
        pos = pos.reshape((planes,) + (1,) * (2 * nsp)).broadcast(full)
        for a in range(nsp):
            sample = samples[:, nsp - 1 - a] if nsp == 2 else samples[:, a]  # 2-d: sample 0 is W
            n, o, kk = sizes[a], outs[a], k[a]
            alpha = (n - kk) / (o - 1) if o > 1 else 0.0
            i = ctx.constant(np.arange(o, dtype=np.float32), float32, (o,), f"i{a}")
            u = sample.reshape(planes, 1).broadcast((planes, o))
            X, U = E.input(0), E.input(1)
            start = E.sub(E.floor(E.mul(E.add(X, U), alpha)), E.floor(E.mul(U, alpha)))
            start = E.select(E.eq(X, float(o - 1)), float(n - kk), start)
            i = i.reshape(1, o).broadcast((planes, o))
            starts = _map(ctx, E.cast(start, int32), [i, u], f"/start{a}")
            stride = math.prod(sizes[a + 1:])
            shape = [planes] + [1] * (2 * nsp)
            shape[1 + a] = o
            kshape = [1] * (1 + 2 * nsp)
            kshape[1 + nsp + a] = kk
            offs = ctx.constant(np.arange(kk, dtype=np.int32) * stride, int32, (kk,), f"k{a}")
            pos = _map(ctx, E.add(E.input(0), E.add(E.mul(E.input(1), stride), E.input(2))),
                       [pos, starts.reshape(tuple(shape)).broadcast(full),
                        offs.reshape(tuple(kshape)).broadcast(full)],
                       f"/pos{a}")
        windows = (planes * math.prod(outs), math.prod(k))
        values = ix.gather(ctx.graph, x.reshape(-1), pos.reshape(-1), ctx.prog, axis=0,
                           name=f"{ctx.name}/gather").reshape(windows)
        out = reduce_to(ctx, values, ReduceOp.MAX, (1,), False, "/max").reshape(out_shape)
        best = ctx.cast(argmax(ctx.graph, values, ctx.prog, dim=1, name=f"{ctx.name}/argmax"), int32)
        flat = _map(ctx, E.add(E.mul(E.input(0), windows[1]), E.input(1)),
                    [ctx.constant(np.arange(windows[0], dtype=np.int32), int32, (windows[0],), "row"), best],
                    "/at")
        chosen = ix.gather(ctx.graph, pos.reshape(-1), flat, ctx.prog, axis=0, name=f"{ctx.name}/index")
        index = _map(ctx, E.rem(E.input(0), plane), [chosen], "/plane")
        return out, ctx.cast(index.reshape(out_shape), ctx.out_dtype(1))
    return lower


register_lowering("aten::fractional_max_pool2d", _fractional_max_pool(2))
register_lowering("aten::fractional_max_pool3d", _fractional_max_pool(3))


@register_lowering("aten::col2im")
def _col2im(ctx: Any, node: Any, cols: Tensor, output_size: Any, kernel_size: Any, dilation: Any,
            padding: Any, stride: Any) -> Tensor:
    """``fold``: each column entry added into the image position its window places it at (the
    window table, static), one scatter-add; positions outside the image are dropped."""
    unbatched = cols.ndim == 2
    cols = cols.expand_dims(0) if unbatched else cols
    n, ck, length = cols.shape
    k, d, p, s = (_pair(v, 2) for v in (kernel_size, dilation, padding, stride))
    sizes = _pair(output_size, 2)
    outs = tuple(_out_size(i, kk, ss, pp, dd, False)
                 for i, kk, ss, pp, dd in zip(sizes, k, s, p, d, strict=True))
    table = _combine([_axis_windows(i, o, kk, ss, pp, dd)
                      for i, o, kk, ss, pp, dd in zip(sizes, outs, k, s, p, d, strict=True)], sizes)  # (L, K)
    window = math.prod(k)
    c = ck // window
    plane = math.prod(sizes)
    # cols[n, c * K + kk, l] goes to image[n, c, table[l, kk]]
    planes = np.arange(n)[:, None, None, None] * c + np.arange(c)[None, :, None, None]
    pos = table.T[None, None, :, :] + planes * plane
    pos = np.where(table.T[None, None, :, :] < 0, -1, pos).astype(np.int32)
    dtype = ctx.out_dtype()
    zeros = ctx.constant(0, dtype, (n * c * plane,), "zeros")
    if not pos.size:
        out = zeros
    else:
        positions = ctx.constant(pos.reshape(-1), int32, (pos.size,), "positions")
        out = _reduce_into(ctx, zeros, positions, ctx.cast(cols, dtype).reshape(-1), "sum", True)
    out = out.reshape((n, c) + sizes)
    return out[0] if unbatched else out
