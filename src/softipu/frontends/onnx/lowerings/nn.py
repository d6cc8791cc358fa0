"""ONNX neural-network ops onto poplin/popnn-shaped ops: MatMul/Gemm, Conv, pooling, norms,
softmax, reductions, arg/top-k, cumulative sums."""

from __future__ import annotations

from typing import Any

import numpy as np

from softipu.dtypes import float32, int32
from softipu.frontends.errors import LoweringError
from softipu.frontends.onnx.registry import register_onnx_lowering
from softipu.graph.tensor import Tensor
from softipu.ops import elementwise as ew
from softipu.ops import indexing as ix
from softipu.ops import nn
from softipu.ops.conv import conv
from softipu.ops.elementwise import E
from softipu.ops.matmul import matmul
from softipu.ops.reduce import ReduceOp, argmax, argmin, reduce


def _map(ctx: Any, expr: Any, inputs: list[Tensor], suffix: str = "") -> Tensor:
    return ew.map(ctx.graph, expr, inputs, ctx.prog, name=ctx.name + suffix)


# -- matmul ------------------------------------------------------------------------------------------
def _float_check(ctx: Any) -> str | None:
    x = ctx.input(0)
    return None if x.dtype.is_float else f"{x.dtype} operands: lowered for float data only"


def _mm(ctx: Any, a: Tensor, b: Tensor, suffix: str = "") -> Tensor:
    """numpy's ``a @ b`` (1-d operands, broadcast batch dims) as one planned (batched) matmul."""
    squeeze_a, squeeze_b = a.ndim == 1, b.ndim == 1
    a = a.reshape((1, a.shape[0])) if squeeze_a else a
    b = b.reshape((b.shape[0], 1)) if squeeze_b else b
    m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
    batch = tuple(np.broadcast_shapes(a.shape[:-2], b.shape[:-2]))
    if b.ndim == 2 and a.ndim > 2:  # a shared weight: one (B*M, K) @ (K, N)
        out = matmul(ctx.graph, a.reshape((-1, k)), b, ctx.prog, name=ctx.name + suffix)
        out = out.reshape(batch + (m, n))
    elif not batch:
        out = matmul(ctx.graph, a, b, ctx.prog, name=ctx.name + suffix)
    else:
        nb = int(np.prod(batch, dtype=np.int64))
        a3 = a.broadcast(batch + (m, k)).reshape((nb, m, k))
        b3 = b.broadcast(batch + (k, n)).reshape((nb, k, n))
        out = matmul(ctx.graph, a3, b3, ctx.prog, name=ctx.name + suffix).reshape(batch + (m, n))
    if squeeze_a:
        out = out.reshape(out.shape[:-2] + (n,))
    if squeeze_b:
        out = out.reshape(out.shape[:-1]) if not squeeze_a else out.reshape(out.shape[:-1])
    return out


@register_onnx_lowering("MatMul", check=_float_check)
def _matmul(ctx: Any, node: Any) -> Tensor:
    return _mm(ctx, ctx.input(0), ctx.input(1))


@register_onnx_lowering("Gemm", check=_float_check)
def _gemm(ctx: Any, node: Any) -> Tensor:
    a, b = ctx.input(0), ctx.input(1)
    a = a.transpose(1, 0) if int(ctx.attr("transA", 0)) else a
    b = b.transpose(1, 0) if int(ctx.attr("transB", 0)) else b
    alpha, beta = float(ctx.attr("alpha", 1.0)), float(ctx.attr("beta", 1.0))
    product = _mm(ctx, a, b, "/matmul" if ctx.has(2) or alpha != 1 else "")
    if not ctx.has(2) or beta == 0:
        return product if alpha == 1 else _map(ctx, E.mul(E.input(0), alpha), [product])
    c = ctx.input(2)
    return _map(ctx, E.add(E.mul(E.input(0), alpha), E.mul(E.input(1), beta)), [product, c])


# -- convolution and pooling --------------------------------------------------------------------------
def _pads(ctx: Any, x_shape: tuple[int, ...], kernel: list[int], strides: list[int],
          dilations: list[int]) -> list[tuple[int, int]]:
    spatial = len(kernel)
    auto = ctx.attr("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        out = []
        for i in range(spatial):
            size = x_shape[2 + i]
            want = -(-size // strides[i])
            total = max((want - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - size, 0)
            lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
            out.append((lo, total - lo))
        return out
    if auto == "VALID":
        return [(0, 0)] * spatial
    pads = list(ctx.attr("pads", [0] * (2 * spatial)))
    return [(int(pads[i]), int(pads[i + spatial])) for i in range(spatial)]


def _pad_input(ctx: Any, x: Tensor, pads: list[tuple[int, int]], value: float = 0.0) -> tuple[Tensor, tuple]:
    """Symmetric padding goes to the op; an asymmetric remainder is padded explicitly first."""
    sym = tuple(min(lo, hi) for lo, hi in pads)
    extra = [(0, 0), (0, 0)] + [(lo - s, hi - s) for (lo, hi), s in zip(pads, sym, strict=True)]
    if any(a or b for a, b in extra):
        x = ix.pad(ctx.graph, x, ctx.prog, pad_width=extra, mode="constant", value=value,
                   name=f"{ctx.name}/pad")
    return x, sym


def _positive(**lists: list[int]) -> None:
    """A kernel, stride or dilation below 1 is refused (a kernel of -2**31 made 2**30 windows)."""
    for what, values in lists.items():
        if any(int(v) < 1 for v in values):
            raise ValueError(f"{what} {list(values)} must be positive")


def _clamped(strides: list[int], sizes: tuple[int, ...], pads: list[int]) -> list[int]:
    """A stride past the padded length gives one output all the same: it is clamped to that length,
    as a stride of 2**62 makes a view whose byte strides overflow the host's 64-bit integers."""
    return [min(int(s), max(int(n) + int(p), 1)) for s, n, p in zip(strides, sizes, pads, strict=False)]


def _conv_check(ctx: Any) -> str | None:
    w = ctx.shape(1)
    if len(w) not in (3, 4, 5):
        return f"{len(w) - 2}-d convolution is not supported (1-d, 2-d and 3-d are)"
    return _float_check(ctx)


@register_onnx_lowering("Conv", check=_conv_check)
def _conv(ctx: Any, node: Any) -> Tensor:
    return convolve(ctx, ctx.input(0), None, ctx.input(2) if ctx.has(2) else None)


def convolve(ctx: Any, x: Tensor, w: Tensor | None, bias: Tensor | None) -> Tensor:
    """The node's convolution (its pads, strides, dilations and groups) of ``x`` by ``w`` (None:
    the node's input 1, laid out for this convolution when it is a weight)."""
    w_shape = w.shape if w is not None else ctx.shape(1)
    spatial = len(w_shape) - 2
    kernel = list(ctx.attr("kernel_shape", w_shape[2:]))
    strides = list(ctx.attr("strides", [1] * spatial))
    dil = list(ctx.attr("dilations", [1] * spatial))
    _positive(kernel_shape=kernel, strides=strides, dilations=dil)
    x, pads = _pad_input(ctx, x, _pads(ctx, x.shape, kernel, strides, dil))
    strides = _clamped(strides, x.shape[2:], [2 * p for p in pads])
    geometry = {"stride": tuple(strides), "padding": pads, "dilation": tuple(dil),
                "groups": int(ctx.attr("group", 1))}
    if spatial == 3:
        out = _conv3d(ctx, x, w if w is not None else ctx.input(1), geometry)
    else:
        if w is None:
            w = ctx.conv_weight(1, x.shape, **geometry) if x.dtype.is_float else ctx.input(1)
        out = conv(ctx.graph, x, ctx.cast(w, x.dtype), ctx.prog, **geometry,
                   name=f"{ctx.name}/conv" if bias is not None else ctx.name)
    if bias is None:
        return out
    per_channel = ctx.cast(bias, out.dtype).reshape((bias.shape[0],) + (1,) * spatial)
    return _map(ctx, E.add(E.input(0), E.input(1)), [out, per_channel])


def _conv3d(ctx: Any, x: Tensor, w: Tensor, geometry: dict[str, Any]) -> Tensor:
    """A 3-d convolution as one 2-d convolution per depth tap of the kernel: tap ``k`` reads the
    input's depth planes ``k*dilation + stride*j`` (j over the output depth) folded into the batch,
    and the taps' results are added (the IPU's convolutions are 1-d/2-d; poplin folds depth alike)."""
    (sd, sh, sw), (dd, dh, dw) = geometry["stride"], geometry["dilation"]
    (pd, ph, pw), groups = geometry["padding"], geometry["groups"]
    if pd:
        x = ix.pad(ctx.graph, x, ctx.prog, pad_width=[(0, 0), (0, 0), (pd, pd), (0, 0), (0, 0)],
                   mode="constant", value=0, name=f"{ctx.name}/pad_depth")
    n, c, d, h, wd = x.shape
    w = ctx.cast(w, x.dtype)
    taps = w.shape[2]
    dout = (d - dd * (taps - 1) - 1) // sd + 1
    total = None
    for k in range(taps):
        start = k * dd
        planes = x[:, :, start:start + sd * (dout - 1) + 1:sd].transpose(0, 2, 1, 3, 4)
        planes = ctx.copy(planes).reshape(n * dout, c, h, wd)
        y = conv(ctx.graph, planes, w[:, :, k], ctx.prog, stride=(sh, sw), padding=(ph, pw),
                 dilation=(dh, dw), groups=groups, name=f"{ctx.name}/tap{k}")
        total = y if total is None else _map(ctx, E.add(E.input(0), E.input(1)), [total, y], f"/sum{k}")
    o, ho, wo = total.shape[1:]
    return ctx.copy(total.reshape(n, dout, o, ho, wo).transpose(0, 2, 1, 3, 4))


def _pool_geometry(ctx: Any, x: Tensor) -> tuple[list[int], list[int], list[int], list[tuple[int, int]]]:
    kernel = list(ctx.attr("kernel_shape"))
    spatial = len(kernel)
    strides = list(ctx.attr("strides", [1] * spatial))
    dil = list(ctx.attr("dilations", [1] * spatial))
    _positive(kernel_shape=kernel, strides=strides, dilations=dil)
    pads = _pads(ctx, x.shape, kernel, strides, dil)
    return kernel, _clamped(strides, x.shape[2:], [lo + hi for lo, hi in pads]), dil, pads


def _native_pool(ctx: Any, x: Tensor, kind: str, kernel: list[int], strides: list[int], dil: list[int],
                 pads: list[tuple[int, int]]) -> Tensor | None:
    """popnn's pooling where it applies (1-/2-d floats, symmetric pads within half the kernel)."""
    if x.ndim not in (3, 4) or not x.dtype.is_float or any(d != 1 for d in dil) or \
            int(ctx.attr("ceil_mode", 0)):
        return None
    if any(lo != hi or 2 * lo > k for (lo, hi), k in zip(pads, kernel, strict=True)):
        return None
    one_d = x.ndim == 3
    x4 = x.reshape(x.shape[:2] + (1, x.shape[2])) if one_d else x
    k4, s4 = tuple([1] * one_d + kernel), tuple([1] * one_d + strides)
    p4 = tuple([0] * one_d + [lo for lo, _ in pads])
    if kind == "max":
        out = nn.max_pool(ctx.graph, x4, ctx.prog, kernel=k4, stride=s4, padding=p4, name=ctx.name)
    else:
        out = nn.avg_pool(ctx.graph, x4, ctx.prog, kernel=k4, stride=s4, padding=p4,
                          count_include_pad=bool(int(ctx.attr("count_include_pad", 0))), name=ctx.name)
    return out.reshape(out.shape[:2] + (out.shape[3],)) if one_d else out


def _window_pool(ctx: Any, x: Tensor, kind: str, kernel: list[int], strides: list[int], dil: list[int],
                 pads: list[tuple[int, int]]) -> Tensor:
    """Any pooling (N-d, dilated, ceil mode, asymmetric pads, integers): the windows of the padded
    input as one indexed view (no data moves), reduced over the window by popops ``reduce``."""
    ceil = int(ctx.attr("ceil_mode", 0))
    outs, widths, axes_idx = [], [(0, 0), (0, 0)], []
    for i, (k, s, d, (lo, hi)) in enumerate(zip(kernel, strides, dil, pads, strict=True)):
        n = x.shape[2 + i]
        span = n + lo + hi - d * (k - 1) - 1
        o = (-(-span // s) if ceil else span // s) + 1
        if ceil and (o - 1) * s >= n + lo:
            o -= 1
        outs.append(o)
        widths.append((lo, max(hi, (o - 1) * s + d * (k - 1) + 1 - n - lo)))
        axes_idx.append(np.arange(o)[:, None] * s + np.arange(k)[None, :] * d)
    if kind == "max":
        fill = float("-inf") if x.dtype.is_float else int(np.iinfo(x.dtype.numpy).min)
    else:
        fill = 0
    padded = ix.pad(ctx.graph, x, ctx.prog, pad_width=widths, mode="constant", value=fill,
                    name=f"{ctx.name}/pad") \
        if any(a or b for a, b in widths) else x
    nd = len(kernel)
    index: list[Any] = [slice(None), slice(None)]
    for i, idx in enumerate(axes_idx):
        shape = [1] * (2 * nd)
        shape[i], shape[nd + i] = idx.shape
        index.append(idx.reshape(shape))
    addr = padded.addresses()[tuple(index)]
    view = Tensor(padded.graph, padded.dtype, tuple(addr.shape), 0, (), addr)
    view = view.reshape(x.shape[:2] + tuple(outs) + (int(np.prod(kernel)),))
    op = ReduceOp.MAX if kind == "max" else ReduceOp.ADD
    out = reduce(ctx.graph, view, ctx.prog, dims=[view.ndim - 1], op=op, name=f"{ctx.name}/{kind}")
    if kind == "max" and len(ctx.node.output) > 1 and ctx.node.output[1]:
        return out, _argmax_positions(ctx, view, widths, tuple(index))
    if kind in ("max", "sum"):
        return out
    include = bool(int(ctx.attr("count_include_pad", 0)))
    count = np.ones((), np.float64)
    for i, idx in enumerate(axes_idx):
        n, (lo, hi) = x.shape[2 + i], pads[i]
        ok = (idx < n + lo + hi) if include else ((idx >= lo) & (idx < lo + n))
        count = np.multiply.outer(count, ok.sum(axis=1)) if count.ndim else ok.sum(axis=1).astype(np.float64)
    inv = ctx.constant((1.0 / np.maximum(count, 1)).astype(np.float32), float32, "count")
    return _map(ctx, E.mul(E.input(0), E.input(1)), [out, inv])


def _argmax_positions(ctx: Any, view: Tensor, widths: list[tuple[int, int]], index: tuple) -> Tensor:
    """MaxPool's Indices: the flat input position of each window's maximum, read from a table of
    positions laid out as the windows are (worked out while compiling) at the window's argmax."""
    shape = view.shape[:2] + tuple(view.shape[2:-1])
    x_shape = ctx.shape(0)
    area = int(np.prod(x_shape[2:]))
    spatial = np.arange(area).reshape(x_shape[2:])
    if int(ctx.attr("storage_order", 0)):  # column-major positions within each image
        spatial = np.arange(area).reshape(x_shape[2:][::-1]).transpose()
    lead = (np.arange(x_shape[0] * x_shape[1]) * area).reshape(x_shape[:2] + (1,) * (len(x_shape) - 2))
    table = np.pad(lead + spatial, widths, constant_values=-1)[index]
    k = view.shape[-1]
    table = table.reshape(-1, k).reshape(-1)
    which = argmax(ctx.graph, view, ctx.prog, dim=view.ndim - 1, name=f"{ctx.name}/argmax")
    rows = ctx.constant((np.arange(int(np.prod(shape))) * k).reshape(shape).astype(np.int32), int32, "rows")
    flat = _map(ctx, E.add(E.input(0), E.input(1)), [which, rows], "/flat")
    positions = ctx.constant(table.astype(np.int32), int32, "positions")
    found = ix.gather(ctx.graph, positions, flat.reshape(-1), ctx.prog, name=f"{ctx.name}/indices")
    return found.reshape(shape)


def _pool(kind: str) -> Any:
    def lower(ctx: Any, node: Any) -> Tensor:
        x = ctx.input(0)
        kernel, strides, dil, pads = _pool_geometry(ctx, x)
        indices = len(node.output) > 1 and node.output[1]
        out = None if indices else _native_pool(ctx, x, kind, kernel, strides, dil, pads)
        return out if out is not None else _window_pool(ctx, x, kind, kernel, strides, dil, pads)
    return lower


@register_onnx_lowering("LpPool")
def _lp_pool(ctx: Any, node: Any) -> Tensor:
    x = ctx.input(0)
    p = float(ctx.attr("p", 2))
    kernel, strides, dil, pads = _pool_geometry(ctx, x)
    powered = _map(ctx, E.pow(E.abs(E.input(0)), p), [x], "/pow")
    total = _window_pool(ctx, powered, "sum", kernel, strides, dil, pads)
    return _map(ctx, E.pow(E.input(0), 1.0 / p), [total])


register_onnx_lowering("MaxPool", _pool("max"))
register_onnx_lowering("AveragePool", _pool("avg"))


def _global(op: ReduceOp, mean: bool) -> Any:
    def lower(ctx: Any, node: Any) -> Tensor:
        x = ctx.input(0)
        dims = list(range(2, x.ndim))
        out = reduce(ctx.graph, x, ctx.prog, dims=dims, op=op, name=ctx.name, options={"keepdims": True})
        if mean:
            out = _map(ctx, E.div(E.input(0), float(np.prod(x.shape[2:]))), [out], "/mean")
        return out
    return lower


register_onnx_lowering("GlobalAveragePool", _global(ReduceOp.ADD, True))
register_onnx_lowering("GlobalMaxPool", _global(ReduceOp.MAX, False))


# -- normalisation -------------------------------------------------------------------------------------
@register_onnx_lowering("BatchNormalization", check=_float_check)
def _batch_norm(ctx: Any, node: Any) -> Tensor:
    x, scale, bias, mean, var = (ctx.input(i) for i in range(5))
    x3 = x.reshape(x.shape[:2] + (-1,)) if x.ndim != 3 else x
    if x.ndim == 2:
        x3 = x.reshape(x.shape + (1,))
    if int(ctx.attr("training_mode", 0)):
        return _batch_norm_training(ctx, node, x, x3)
    out = nn.batch_norm(ctx.graph, x3, scale, bias, mean, var, ctx.prog, eps=float(ctx.attr("epsilon", 1e-5)),
                        name=ctx.name)
    return out.reshape(x.shape)


def _batch_norm_training(ctx: Any, node: Any, x: Tensor, x3: Tensor) -> Any:
    """``training_mode=1`` (opset 14+): normalised by the batch's own mean and (population) variance
    over every axis but the channels; the running mean and variance outputs are
    ``momentum * running + (1 - momentum) * batch`` (ONNX's reference)."""
    c, count = x3.shape[1], float(x3.shape[0] * x3.shape[2])
    src = ctx.cast(x3, float32)
    keep = {"keepdims": True}
    total = reduce(ctx.graph, src, ctx.prog, dims=[0, 2], name=f"{ctx.name}/sum", options=keep)
    mean = _map(ctx, E.div(E.input(0), count), [total], "/mean")
    centred = _map(ctx, E.sub(E.input(0), E.input(1)), [src, mean], "/centred")
    squares = reduce(ctx.graph, centred, ctx.prog, dims=[0, 2], op=ReduceOp.SQUARE_ADD,
                     name=f"{ctx.name}/sumsq", options=keep)
    var = _map(ctx, E.div(E.input(0), count), [squares], "/var")
    per_channel = [ctx.cast(ctx.input(i), float32).reshape((1, c, 1)) for i in (1, 2)]
    eps = float(ctx.attr("epsilon", 1e-5))
    normed = E.mul(E.mul(E.input(0), E.rsqrt(E.add(E.input(1), eps))), E.input(2))
    y = _map(ctx, E.cast(E.add(normed, E.input(3)), x.dtype), [centred, var, *per_channel], "/y")
    y = y.reshape(x.shape)
    if len([o for o in node.output if o]) == 1:
        return y
    m = float(ctx.attr("momentum", 0.9))
    outs = [y]
    for i, batch in ((3, mean), (4, var)):
        running = ctx.input(i)
        expr = E.cast(E.add(E.mul(E.input(0), m), E.mul(E.input(1), 1.0 - m)), running.dtype)
        outs.append(_map(ctx, expr, [ctx.cast(running, float32), batch.reshape(c)], f"/running{i}"))
    return tuple(outs)


@register_onnx_lowering("InstanceNormalization", check=_float_check)
def _instance_norm(ctx: Any, node: Any) -> Tensor:
    x, scale, bias = ctx.input(0), ctx.input(1), ctx.input(2)
    c = x.shape[1]
    out, _, _ = nn.group_norm(ctx.graph, x.reshape(x.shape[:2] + (-1,)), scale, bias, ctx.prog, num_groups=c,
                              eps=float(ctx.attr("epsilon", 1e-5)), name=ctx.name)
    return out.reshape(x.shape)


@register_onnx_lowering("LayerNormalization", check=_float_check)
def _layer_norm(ctx: Any, node: Any) -> tuple:
    x = ctx.input(0)
    a = int(ctx.attr("axis", -1)) % x.ndim
    shape = x.shape[a:]
    lead = x.shape[:a]
    flat = x.reshape(lead + (int(np.prod(shape, dtype=np.int64)),))
    w = ctx.input(1).broadcast(shape).reshape(-1) if ctx.has(1) else None
    b = ctx.input(2).broadcast(shape).reshape(-1) if ctx.has(2) else None
    out, mean, inv = nn.layer_norm(ctx.graph, flat, w, b, ctx.prog, eps=float(ctx.attr("epsilon", 1e-5)),
                                   name=ctx.name)
    stat_shape = lead + (1,) * len(shape)
    return out.reshape(x.shape), mean.reshape(stat_shape), inv.reshape(stat_shape)


@register_onnx_lowering("GroupNormalization", check=_float_check)
def _group_norm(ctx: Any, node: Any) -> Tensor:
    x, scale, bias = ctx.input(0), ctx.input(1), ctx.input(2)
    g = int(ctx.attr("num_groups"))
    c = x.shape[1]
    if scale.shape[0] == g and g != c:  # opset 18: per-group scale
        scale = scale.reshape((g, 1)).broadcast((g, c // g)).reshape(-1)
        bias = bias.reshape((g, 1)).broadcast((g, c // g)).reshape(-1)
    out, _, _ = nn.group_norm(ctx.graph, x.reshape(x.shape[:2] + (-1,)), scale, bias, ctx.prog, num_groups=g,
                              eps=float(ctx.attr("epsilon", 1e-5)), name=ctx.name)
    return out.reshape(x.shape)


def _softmax(log: bool) -> Any:
    def lower(ctx: Any, node: Any) -> Tensor:
        x = ctx.input(0)
        fn = nn.log_softmax if log else nn.softmax
        a = int(ctx.attr("axis", -1 if ctx.opset.get("", 13) >= 13 else 1)) % max(x.ndim, 1)
        if ctx.opset.get("", 13) < 13:  # softmax over the flattened trailing dims
            lead = int(np.prod(x.shape[:a], dtype=np.int64))
            return fn(ctx.graph, x.reshape((lead, -1)), ctx.prog, dim=1, name=ctx.name).reshape(x.shape)
        return fn(ctx.graph, x, ctx.prog, dim=a, name=ctx.name)
    return lower


register_onnx_lowering("Softmax", _softmax(False), check=_float_check)
register_onnx_lowering("LogSoftmax", _softmax(True), check=_float_check)


@register_onnx_lowering("LpNormalization", check=_float_check)
def _lp_norm(ctx: Any, node: Any) -> Tensor:
    x = ctx.input(0)
    a = int(ctx.attr("axis", -1)) % x.ndim
    p = int(ctx.attr("p", 2))
    op = ReduceOp.SQUARE_ADD if p == 2 else ReduceOp.ADD
    src = x if p == 2 else _map(ctx, E.abs(E.input(0)), [x], "/abs")
    norm = reduce(ctx.graph, src, ctx.prog, dims=[a], op=op, name=f"{ctx.name}/norm",
                  options={"keepdims": True})
    expr = E.div(E.input(0), E.sqrt(E.input(1)) if p == 2 else E.input(1))
    # A zero norm gives zeros, not 0/0 (ONNX's reference: np.where(norm == 0, 0, x / norm)).
    expr = E.select(E.eq(E.input(1), E.cast(0, x.dtype)), E.cast(0, x.dtype), expr)
    return _map(ctx, expr, [x, norm])


@register_onnx_lowering("MeanVarianceNormalization", check=_float_check)
def _mvn(ctx: Any, node: Any) -> Tensor:
    x = ctx.input(0)
    axes = [int(a) % x.ndim for a in ctx.attr("axes", [0, 2, 3])]
    n = float(np.prod([x.shape[a] for a in axes]))
    opts = {"keepdims": True}
    mean = _map(ctx, E.div(E.input(0), n), [reduce(ctx.graph, x, ctx.prog, dims=axes, name=f"{ctx.name}/sum",
                                                   options=opts)], "/mean")
    centered = _map(ctx, E.sub(E.input(0), E.input(1)), [x, mean], "/centered")
    var = reduce(ctx.graph, centered, ctx.prog, dims=axes, op=ReduceOp.SQUARE_ADD, name=f"{ctx.name}/var",
                 options=opts)
    return _map(ctx, E.div(E.input(0), E.add(E.sqrt(E.div(E.input(1), n)), 1e-9)), [centered, var])


# -- reductions ----------------------------------------------------------------------------------------
def _reduce_axes(ctx: Any, x: Tensor) -> list[int] | None:
    if ctx.has(1):
        axes = [int(a) for a in np.asarray(ctx.static(1, "axes")).reshape(-1)]
    else:
        axes = ctx.attr("axes")
        axes = None if axes is None else [int(a) for a in axes]
    if not axes:
        return [] if int(ctx.attr("noop_with_empty_axes", 0)) else list(range(x.ndim))
    return sorted(a % max(x.ndim, 1) for a in axes)


_REDUCE = {
    "ReduceSum": (ReduceOp.ADD, None, None), "ReduceMean": (ReduceOp.ADD, None, "mean"),
    "ReduceMax": (ReduceOp.MAX, None, None), "ReduceMin": (ReduceOp.MIN, None, None),
    "ReduceProd": (ReduceOp.MUL, None, None), "ReduceSumSquare": (ReduceOp.SQUARE_ADD, None, None),
    "ReduceL1": (ReduceOp.ADD, E.abs, None), "ReduceL2": (ReduceOp.SQUARE_ADD, None, E.sqrt),
    "ReduceLogSum": (ReduceOp.ADD, None, E.log), "ReduceLogSumExp": (ReduceOp.ADD, E.exp, E.log),
}


def _reduction(op: ReduceOp, pre: Any, post: Any) -> Any:
    def lower(ctx: Any, node: Any) -> Tensor:
        x = ctx.input(0)
        axes = _reduce_axes(ctx, x)
        keep = bool(int(ctx.attr("keepdims", 1)))
        if not axes:
            return ctx.copy(x) if pre is None else _map(ctx, pre(E.input(0)), [x])
        if op is ReduceOp.ADD and post is E.log and pre is E.exp and x.dtype.is_float:  # stable
            m = reduce(ctx.graph, x, ctx.prog, dims=axes, op=ReduceOp.MAX, name=f"{ctx.name}/max",
                       options={"keepdims": True})
            m = _map(ctx, E.select(E.is_finite(E.input(0)), E.input(0), 0.0), [m], "/safe")
            e = _map(ctx, E.exp(E.sub(E.input(0), E.input(1))), [x, m], "/exp")
            s = reduce(ctx.graph, e, ctx.prog, dims=axes, name=f"{ctx.name}/sum", options={"keepdims": keep})
            mk = m if keep else m.reshape(s.shape)
            return _map(ctx, E.add(E.log(E.input(0)), E.input(1)), [s, mk])
        src = x if pre is None else _map(ctx, pre(E.input(0)), [x], "/pre")
        out = reduce(ctx.graph, src, ctx.prog, dims=axes, op=op,
                     name=ctx.name if post is None else f"{ctx.name}/r",
                     options={"keepdims": keep})
        if post == "mean":
            n = float(np.prod([x.shape[a] for a in axes]))
            return _map(ctx, E.div(E.input(0), n) if x.dtype.is_float else
                        E.cast(E.trunc(E.div(E.cast(E.input(0), float32), n)), x.dtype), [out], "/mean")
        return out if post is None else _map(ctx, post(E.input(0)), [out], "/post")
    return lower


for _name, (_op, _pre, _post) in _REDUCE.items():
    register_onnx_lowering(_name, _reduction(_op, _pre, _post), static=(1,))


def _arg(fn: Any, flip_op: str) -> Any:
    def lower(ctx: Any, node: Any) -> Tensor:
        x = ctx.input(0)
        a = int(ctx.attr("axis", 0)) % x.ndim
        keep = bool(int(ctx.attr("keepdims", 1)))
        last = bool(int(ctx.attr("select_last_index", 0)))
        src = x.reverse(a) if last else x
        out = fn(ctx.graph, src, ctx.prog, dim=a, name=ctx.name, options={"keepdims": keep})
        if last:
            out = _map(ctx, E.sub(x.shape[a] - 1, E.input(0)), [out], "/last")
        return out
    return lower


register_onnx_lowering("ArgMax", _arg(argmax, "max"))
register_onnx_lowering("ArgMin", _arg(argmin, "min"))


@register_onnx_lowering("TopK", static=(1,))
def _top_k(ctx: Any, node: Any) -> tuple:
    x = ctx.input(0)
    k = int(np.asarray(ctx.static(1, "K")).reshape(-1)[0]) if ctx.has(1) else int(ctx.attr("k"))
    a = int(ctx.attr("axis", -1)) % x.ndim
    largest = int(ctx.attr("largest", 1))
    if not largest:
        vals, idx = ix.sort_with_indices(ctx.graph, x, ctx.prog, axis=a, name=ctx.name)
        key = (slice(None),) * a + (slice(0, k),)
        return vals[key], idx[key]
    vals, idx = ix.top_k(ctx.graph, x, ctx.prog, k=k, axis=a, name=ctx.name)
    return vals, idx


def _scan(fn: Any, identity: int) -> Any:
    def lower(ctx: Any, node: Any) -> Tensor:
        from softipu.graph.tensor import concat  # noqa: PLC0415

        x = ctx.input(0)
        a = int(np.asarray(ctx.static(1, "axis")).reshape(-1)[0]) % x.ndim
        rev, excl = int(ctx.attr("reverse", 0)), int(ctx.attr("exclusive", 0))
        src = x.reverse(a) if rev else x
        out = fn(ctx.graph, src, ctx.prog, axis=a, name=ctx.name)
        if excl:  # shifted by one along the axis, the identity first (a view and a constant)
            shape = list(x.shape)
            shape[a] = 1
            first = ctx.constant(np.full(shape, identity, x.dtype.numpy), x.dtype, "identity")
            key = (slice(None),) * a + (slice(0, x.shape[a] - 1),)
            out = concat([first, out[key]], axis=a) if x.shape[a] > 1 else first
        return out.reverse(a) if rev else out
    return lower


def _cumprod(graph: Any, x: Tensor, prog: Any, *, axis: int, name: str) -> Tensor:
    from softipu.ops.indexing.scans import cumprod  # noqa: PLC0415

    return cumprod(graph, x, prog, axis=axis, name=name)


register_onnx_lowering("CumSum", _scan(ix.cumsum, 0), static=(1,))
register_onnx_lowering("CumProd", _scan(_cumprod, 1), static=(1,))


@register_onnx_lowering("Hardmax")
def _hardmax(ctx: Any, node: Any) -> Tensor:
    x = ctx.input(0)
    a = int(ctx.attr("axis", -1)) % x.ndim
    if ctx.opset.get("", 13) < 13:
        lead = int(np.prod(x.shape[:a], dtype=np.int64))
        x2, a2 = x.reshape((lead, -1)), 1
    else:
        x2, a2 = x, a
    idx = argmax(ctx.graph, x2, ctx.prog, dim=a2, name=f"{ctx.name}/argmax", options={"keepdims": True})
    iota = np.arange(x2.shape[a2]).reshape((-1,) + (1,) * (x2.ndim - 1 - a2))
    ids = ctx.constant(iota.astype(np.int32), int32, "iota")
    out = _map(ctx, E.cast(E.eq(E.input(0), E.input(1)), x.dtype), [idx, ids])
    return out.reshape(x.shape)


@register_onnx_lowering("LRN", check=_float_check)
def _lrn(ctx: Any, node: Any) -> Tensor:
    x = ctx.input(0)
    size = int(ctx.attr("size"))
    alpha, beta = float(ctx.attr("alpha", 1e-4)), float(ctx.attr("beta", 0.75))
    bias = float(ctx.attr("bias", 1.0))
    sq = _map(ctx, E.square(E.input(0)), [x], "/square")
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    padded = ix.pad(ctx.graph, sq, ctx.prog, pad_width=[(0, 0), (lo, hi)] + [(0, 0)] * (x.ndim - 2),
                    name=f"{ctx.name}/pad")
    c = x.shape[1]
    windows = [padded[:, i:i + c] for i in range(size)]
    total = _map(ctx, _sum_inputs(size), windows, "/window")
    return _map(ctx, E.div(E.input(0), E.pow(E.add(bias, E.mul(alpha / size, E.input(1))), beta)), [x, total])


def _sum_inputs(n: int) -> Any:
    expr = E.input(0)
    for i in range(1, n):
        expr = E.add(expr, E.input(i))
    return expr if n > 1 else E.add(expr, 0.0)


@register_onnx_lowering("RMSNormalization", check=_float_check)
def _rms_norm(ctx: Any, node: Any) -> Tensor:
    x = ctx.input(0)
    a = int(ctx.attr("axis", -1)) % x.ndim
    axes = list(range(a, x.ndim))
    n = float(np.prod(x.shape[a:]))
    src = ctx.cast(x, float32)
    ms = reduce(ctx.graph, src, ctx.prog, dims=axes, op=ReduceOp.SQUARE_ADD, name=f"{ctx.name}/sumsq",
                options={"keepdims": True})
    eps = float(ctx.attr("epsilon", 1e-5))
    expr = E.cast(E.mul(E.mul(E.input(0), E.rsqrt(E.add(E.div(E.input(1), n), eps))), E.input(2)), x.dtype)
    return _map(ctx, expr, [src, ms, ctx.cast(ctx.input(1), float32)])


# -- losses -------------------------------------------------------------------------------------------
def _class_loss(log_input: bool) -> Any:
    def lower(ctx: Any, node: Any) -> Any:
        x, labels = ctx.input(0), ctx.cast(ctx.input(1), int32)
        c = x.shape[1]
        logp = x if log_input else \
            nn.log_softmax(ctx.graph, x, ctx.prog, dim=1, name=f"{ctx.name}/log_softmax")
        lab = labels.reshape(labels.shape[:1] + (1,) + labels.shape[1:])
        classes = np.arange(c, dtype=np.int32).reshape((c,) + (1,) * (x.ndim - 2))
        iota = ctx.constant(classes, int32, "classes")
        ignore = ctx.attr("ignore_index")
        inputs = [logp, lab, iota]
        hit = E.eq(E.input(1), E.input(2))
        weight = E.cast(hit, x.dtype)
        if ctx.has(2):
            inputs.append(ctx.input(2).reshape((c,) + (1,) * (x.ndim - 2)))
            weight = E.select(hit, E.input(3), E.cast(0, x.dtype))
        if ignore is not None:
            weight = E.select(E.eq(E.input(1), int(ignore)), E.cast(0, x.dtype), weight)
        terms = _map(ctx, E.mul(E.neg(E.input(0)), weight), inputs, "/terms")
        loss = reduce(ctx.graph, terms, ctx.prog, dims=[1], name=f"{ctx.name}/picked")
        red = ctx.attr("reduction", "mean")
        if red == "none":
            out = loss
        elif red == "sum":
            out = reduce(ctx.graph, loss, ctx.prog, name=f"{ctx.name}/sum")
        else:
            wsum = reduce(ctx.graph, _map(ctx, weight, inputs, "/weights"), ctx.prog, name=f"{ctx.name}/wsum")
            total = reduce(ctx.graph, loss, ctx.prog, name=f"{ctx.name}/sum")
            out = _map(ctx, E.div(E.input(0), E.input(1)), [total, wsum], "/mean")
        return (out, logp) if not log_input and len(node.output) > 1 else out
    return lower


register_onnx_lowering("SoftmaxCrossEntropyLoss", _class_loss(False), check=_float_check)
register_onnx_lowering("NegativeLogLikelihoodLoss", _class_loss(True), check=_float_check)


def _conv_transpose_pads(ctx: Any, x: Tensor, kernel: list[int], strides: list[int], dil: list[int],
                         out_pad: list[int]) -> list[tuple[int, int]]:
    spatial = len(kernel)
    out_shape = ctx.attr("output_shape")
    auto = ctx.attr("auto_pad", "NOTSET")
    if out_shape is None and auto not in ("SAME_UPPER", "SAME_LOWER"):
        pads = list(ctx.attr("pads", [0] * (2 * spatial)))
        return [(int(pads[i]), int(pads[i + spatial])) for i in range(spatial)]
    want = list(out_shape)[-spatial:] if out_shape is not None else [n * s for n, s in
                                                                     zip(x.shape[2:], strides, strict=True)]
    out = []
    for i in range(spatial):
        total = strides[i] * (x.shape[2 + i] - 1) + out_pad[i] + (kernel[i] - 1) * dil[i] + 1 - want[i]
        if total < 0:  # the output is longer than the convolution reaches: zeros at the end
            out.append((0, total))
        else:
            half = total // 2
            out.append((half, total - half) if auto != "SAME_LOWER" else (total - half, half))
    return out


@register_onnx_lowering("ConvTranspose", check=_conv_check)
def _conv_transpose(ctx: Any, node: Any) -> Tensor:
    """A transposed convolution as poplin lowers one: the input with zeros inserted between its
    elements (stride), padded by the kernel's reach, convolved with the flipped kernel."""
    from softipu.graph import program as P  # noqa: PLC0415
    from softipu.ops.indexing import zeros  # noqa: PLC0415

    x, w = ctx.input(0), ctx.input(1)
    spatial, g = w.ndim - 2, int(ctx.attr("group", 1))
    kernel = list(ctx.attr("kernel_shape", w.shape[2:]))
    strides = list(ctx.attr("strides", [1] * spatial))
    dil = list(ctx.attr("dilations", [1] * spatial))
    out_pad = list(ctx.attr("output_padding", [0] * spatial))
    pads = _conv_transpose_pads(ctx, x, kernel, strides, dil, out_pad)
    if any(s > 1 for s in strides):
        up_shape = x.shape[:2] + tuple((n - 1) * s + 1 for n, s in zip(x.shape[2:], strides, strict=True))
        up = zeros(ctx.graph, ctx.prog, shape=up_shape, dtype=x.dtype, name=f"{ctx.name}/dilate")
        ctx.prog.add(P.Copy(x, up[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides)]))
        x = up
    widths = [(0, 0), (0, 0)] + [(d * (k - 1) - lo, d * (k - 1) - hi + op) for k, d, (lo, hi), op in
                                 zip(kernel, dil, pads, out_pad, strict=True)]
    key = tuple(slice(max(-a, 0), x.shape[i] - max(-b, 0)) for i, (a, b) in enumerate(widths))
    x = x[key]
    widths = [(max(a, 0), max(b, 0)) for a, b in widths]
    if any(a or b for a, b in widths):
        x = ix.pad(ctx.graph, x, ctx.prog, pad_width=widths, mode="constant", value=0, name=f"{ctx.name}/pad")
    c, mg = w.shape[0], w.shape[1]
    wt = w.reshape((g, c // g, mg) + w.shape[2:]).transpose((0, 2, 1) + tuple(range(3, 3 + spatial)))
    wt = wt.reshape((g * mg, c // g) + w.shape[2:])
    for axis in range(2, 2 + spatial):
        wt = wt.reverse(axis)
    if spatial == 3:  # one 2-d convolution per depth tap, as Conv's 3-d
        out = _conv3d(ctx, x, wt, {"stride": (1, 1, 1), "padding": (0, 0, 0), "dilation": tuple(dil),
                                   "groups": g})
    else:
        out = conv(ctx.graph, x, ctx.cast(wt, x.dtype), ctx.prog, stride=1, padding=0, dilation=tuple(dil),
                   groups=g, name=f"{ctx.name}/conv" if ctx.has(2) else ctx.name)
    if not ctx.has(2):
        return out
    bias = ctx.input(2)
    return _map(ctx, E.add(E.input(0), E.input(1)), [out, bias.reshape((bias.shape[0],) + (1,) * spatial)])


@register_onnx_lowering("MaxUnpool", static=(2,))
def _max_unpool(ctx: Any, node: Any) -> Tensor:
    """MaxPool's inverse: each input value written at its flat index (MaxPool's ``Indices``, over the
    whole N x C x spatial output) of a zero tensor of the inferred shape; an ``output_shape`` larger
    than that keeps it in the leading corner, zeros after (ONNX's reference)."""
    x, idx = ctx.input(0), ctx.input(1)
    kernel = list(ctx.attr("kernel_shape"))
    spatial = len(kernel)
    strides = list(ctx.attr("strides", [1] * spatial))
    pads = list(ctx.attr("pads", [0] * (2 * spatial)))
    inferred = tuple(x.shape[:2]) + tuple((x.shape[2 + d] - 1) * strides[d] - pads[d] - pads[spatial + d]
                                          + kernel[d] for d in range(spatial))
    zeros = ctx.constant(np.zeros(int(np.prod(inferred)), x.dtype.numpy), x.dtype, "zeros")
    y = ix.scatter(ctx.graph, zeros, ctx.cast(idx, int32).reshape(-1), x.reshape(-1), ctx.prog,
                   name=ctx.name).reshape(inferred)
    if not ctx.has(2):
        return y
    shape = [int(d) for d in ctx.static(2, "output_shape")]
    extra = [(0, s - i) for s, i in zip(shape, inferred, strict=True)]
    if any(hi < 0 for _, hi in extra):
        raise LoweringError(f"MaxUnpool node {ctx.name!r}: output_shape {shape} is smaller than the "
                            f"unpooled shape {list(inferred)}")
    return ix.pad(ctx.graph, y, ctx.prog, pad_width=extra, mode="constant", value=0, name=f"{ctx.name}/pad")
