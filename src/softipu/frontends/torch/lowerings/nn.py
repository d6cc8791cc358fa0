"""Lowerings of matmuls, softmax, norms, pooling and random ops onto ``softipu.ops``."""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

from softipu.dtypes import float32
from softipu.frontends.torch.lowerings.pointwise import ordered
from softipu.frontends.torch.registry import register_lowering
from softipu.graph import program as P
from softipu.graph.tensor import Tensor
from softipu.ops import elementwise as ew
from softipu.ops import nn
from softipu.ops import random as rnd
from softipu.ops.conv import conv
from softipu.ops.elementwise import E
from softipu.ops.indexing import sort_with_indices
from softipu.ops.matmul import matmul

__all__: list[str] = []


def _pair(v: Any, n: int = 2) -> tuple[int, ...]:
    v = [v] if isinstance(v, int) else list(v)
    return tuple(int(a) for a in (v * n if len(v) == 1 else v))


def _uses_output(node: Any, index: int) -> bool:
    return any(u.target is operator.getitem and u.args[1] == index for u in node.users)


def _float_result(node: Any) -> str | None:
    val = node.meta.get("val")
    if val is not None and not val.dtype.is_floating_point:
        kind = str(val.dtype).replace("torch.", "")
        return f"{kind} matmuls are not supported; the IPU's AMP multiplies floats"
    return None


def _matmul(ctx: Any, a: Tensor, b: Tensor, suffix: str = "") -> Tensor:
    dtype = ctx.out_dtype()
    return matmul(ctx.graph, ctx.cast(a, dtype), ctx.cast(b, dtype), ctx.prog,
                     name=f"{ctx.name}{suffix}", options=ctx.matmul_options(dtype))


@register_lowering("aten::mm", check=_float_result)
def _mm(ctx: Any, node: Any, a: Tensor, b: Tensor) -> Tensor:
    return _matmul(ctx, a, b)


def _broadcast_batch(t: Tensor) -> bool:
    """True when a 3-D operand repeats one matrix along its batch dim (an ``expand`` view)."""
    return t.ndim == 3 and t.shape[0] > 1 and t.is_strided and t.strides[0] == 0


@register_lowering("aten::bmm", check=_float_result)
def _bmm(ctx: Any, node: Any, a: Tensor, b: Tensor) -> Tensor:
    # torch's matmul decomposition expands a weight along the batch (``x @ W`` with a permuted
    # 3-D x becomes bmm(x, expand(W))). One matrix shared by every batch is one big matmul, not
    # a batch of small ones over copies of it.
    batch, m, n = a.shape[0], a.shape[1], b.shape[2]
    if _broadcast_batch(b):
        return _matmul(ctx, a.reshape(batch * m, a.shape[2]), b[0]).reshape(batch, m, n)
    if _broadcast_batch(a):
        rhs = b.transpose(1, 0, 2).reshape(b.shape[1], batch * n)
        return _matmul(ctx, a[0], rhs).reshape(m, batch, n).transpose(1, 0, 2)
    return _matmul(ctx, a, b)


register_lowering("aten::matmul", _mm, check=_float_result)


@register_lowering("aten::addmm", check=_float_result)
def _addmm(ctx: Any, node: Any, bias: Tensor, a: Tensor, b: Tensor, *, beta: Any = 1,
           alpha: Any = 1) -> Tensor:
    product = _matmul(ctx, a, b, "/matmul")
    bias = ctx.cast(bias, product.dtype)
    if beta == 0:
        return product if alpha == 1 else ew.mul(ctx.graph, product, alpha, ctx.prog, name=ctx.name)
    if alpha == 1 and beta == 1:
        return ordered(lambda p, b: ew.add(ctx.graph, p, b, ctx.prog, name=ctx.name), product, bias)
    expr = E.add(E.mul(E.input(0), float(alpha)), E.mul(E.input(1), float(beta)))
    return ordered(lambda p, b: ew.map(ctx.graph, expr, [p, b], ctx.prog, name=ctx.name), product, bias)


@register_lowering("aten::baddbmm", check=_float_result)
def _baddbmm(ctx: Any, node: Any, bias: Tensor, a: Tensor, b: Tensor, *, beta: Any = 1,
             alpha: Any = 1) -> Tensor:
    return _addmm(ctx, node, bias, a, b, beta=beta, alpha=alpha)


def _conv_check(node: Any) -> str | None:
    args = list(node.args) + [None] * 9
    if args[6]:
        return "transposed convolution is not supported"
    if any(int(p) for p in (args[7] or [])):
        return "output_padding is not supported"
    weight = node.args[1].meta["val"]
    if weight.ndim not in (3, 4):
        return f"{weight.ndim - 2}-d convolution is not supported (1-d and 2-d are)"
    return _float_result(node)


@register_lowering("aten::convolution", check=_conv_check)
def _convolution(ctx: Any, node: Any, x: Tensor, weight: Tensor, bias: Tensor | None, stride: Any,
                 padding: Any, dilation: Any, transposed: bool, output_padding: Any,
                 groups: int) -> Tensor:
    dtype = ctx.out_dtype()
    spatial = weight.ndim - 2
    out = conv(ctx.graph, ctx.cast(x, dtype), ctx.cast(weight, dtype), ctx.prog,
               stride=_pair(stride, spatial), padding=_pair(padding, spatial),
               dilation=_pair(dilation, spatial), groups=int(groups),
               name=f"{ctx.name}/conv" if bias is not None else ctx.name,
               options=ctx.matmul_options(dtype))
    if bias is None:
        return out
    per_channel = ctx.cast(bias, dtype).reshape((bias.shape[0],) + (1,) * spatial)
    return ordered(lambda o, b: ew.add(ctx.graph, o, b, ctx.prog, name=ctx.name), out, per_channel)


# -- softmax and norms -------------------------------------------------------------------------------
@register_lowering("aten::_softmax")
def _softmax(ctx: Any, node: Any, x: Tensor, dim: int, half_to_float: bool = False) -> Tensor:
    return nn.softmax(ctx.graph, x, ctx.prog, dim=dim, name=ctx.name)


@register_lowering("aten::_log_softmax")
def _log_softmax(ctx: Any, node: Any, x: Tensor, dim: int, half_to_float: bool = False) -> Tensor:
    return nn.log_softmax(ctx.graph, x, ctx.prog, dim=dim, name=ctx.name)


def _stat(ctx: Any, t: Tensor, index: int) -> Tensor:
    return t.reshape(ctx.out_shape(index))


@register_lowering("aten::native_layer_norm")
def _layer_norm(ctx: Any, node: Any, x: Tensor, normalized_shape: Any, weight: Tensor | None,
                bias: Tensor | None, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    # The statistics in the dtype torch gives them (an fp16 model's: fp16), written so by the norm's
    # own vertices (popnn returns them in the activations' type), not cast after it. Not where
    # float16 casts round stochastically: a Cast vertex would round them so (training/fuse.py).
    sr = ctx.options.engine_options.get("prng.enableStochasticRounding", False)
    stats = ctx.out_dtype(1) if ctx.out_dtype(1).is_float and not sr else None
    out, mean, inv_std = nn.layer_norm(ctx.graph, x, weight, bias, ctx.prog,
                                       normalized_shape=tuple(normalized_shape), eps=float(eps),
                                       name=ctx.name, stats_dtype=stats)
    # Statistics nothing reads (inference) are discarded where written, as Poplar's liveness frees
    # an output of popnn's layer norm that no later program step reads (compiler/memory.py).
    used = {u.args[1] for u in node.users if u.target is operator.getitem}
    for index, stat in ((1, mean), (2, inv_std)):
        if index not in used:
            ctx.prog.add(P.WriteUndef(stat))
    return out, _stat(ctx, mean, 1), _stat(ctx, inv_std, 2)


@register_lowering("aten::native_group_norm")
def _group_norm(ctx: Any, node: Any, x: Tensor, weight: Tensor | None, bias: Tensor | None, n: int,
                c: int, hxw: int, group: int, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    out, mean, inv_std = nn.group_norm(ctx.graph, x, weight, bias, ctx.prog, num_groups=int(group),
                                       eps=float(eps), name=ctx.name)
    return out, _stat(ctx, mean, 1), _stat(ctx, inv_std, 2)


@register_lowering("aten::_native_batch_norm_legit_no_training")
def _batch_norm(ctx: Any, node: Any, x: Tensor, weight: Tensor | None, bias: Tensor | None,
                running_mean: Tensor, running_var: Tensor, momentum: float,
                eps: float) -> tuple[Tensor, Tensor, Tensor]:
    out = nn.batch_norm(ctx.graph, x, weight, bias, running_mean, running_var, ctx.prog,
                        eps=float(eps), name=ctx.name)
    # torch returns empty saved statistics in inference.
    return out, ctx.variable(ctx.out_dtype(1), ctx.out_shape(1), "mean"), \
        ctx.variable(ctx.out_dtype(2), ctx.out_shape(2), "inv_std")


def _inference_only(node: Any) -> str | None:
    training = node.args[5] if len(node.args) > 5 else node.kwargs.get("training", False)
    return "batch norm in training mode; inference_model runs modules in eval mode" if training else None


@register_lowering("aten::native_batch_norm", check=_inference_only)
def _native_batch_norm(ctx: Any, node: Any, x: Tensor, weight: Any, bias: Any, running_mean: Tensor,
                       running_var: Tensor, training: bool, momentum: float, eps: float) -> tuple:
    return _batch_norm(ctx, node, x, weight, bias, running_mean, running_var, momentum, eps)


# -- pooling -----------------------------------------------------------------------------------------
def _max_pool_check(node: Any) -> str | None:
    args = list(node.args) + [None] * 6
    dilation, ceil_mode = args[4] if args[4] is not None else 1, bool(args[5])
    if any(d != 1 for d in _pair(dilation)):
        return f"dilation {dilation} is not supported"
    if ceil_mode:
        return "ceil_mode=True is not supported"
    if _uses_output(node, 1):
        return "the indices output (return_indices=True) is not supported"
    return None


def _spatial4(x: Tensor) -> tuple[Tensor, bool]:
    """``(C, H, W)`` input as ``(1, C, H, W)`` (2-d pooling reads the last two dims)."""
    return (x.expand_dims(0), True) if x.ndim == 3 else (x, False)


@register_lowering("aten::max_pool2d_with_indices", check=_max_pool_check)
def _max_pool2d(ctx: Any, node: Any, x: Tensor, kernel_size: Any, stride: Any = (), padding: Any = 0,
                dilation: Any = 1, ceil_mode: bool = False) -> tuple[Tensor, None]:
    x4, squeeze = _spatial4(x)
    out = nn.max_pool(ctx.graph, x4, ctx.prog, kernel=_pair(kernel_size),
                      stride=_pair(stride) if stride else None, padding=_pair(padding), name=ctx.name)
    return (out[0] if squeeze else out), None


def _avg_pool_check(node: Any) -> str | None:
    args = list(node.args) + [None] * 7
    dtype = node.args[0].meta["val"].dtype
    if not dtype.is_floating_point:  # ops.nn.avg_pool averages floats; eager truncates integers
        return f"{str(dtype).removeprefix('torch.')} input: average pooling is lowered for floats only"
    if args[4]:
        return "ceil_mode=True is not supported"
    if args[6] is not None or node.kwargs.get("divisor_override") is not None:
        return "divisor_override is not supported"
    return None


@register_lowering("aten::avg_pool2d", check=_avg_pool_check)
def _avg_pool2d(ctx: Any, node: Any, x: Tensor, kernel_size: Any, stride: Any = (), padding: Any = 0,
                ceil_mode: bool = False, count_include_pad: bool = True,
                divisor_override: Any = None) -> Tensor:
    x4, squeeze = _spatial4(x)
    out = nn.avg_pool(ctx.graph, x4, ctx.prog, kernel=_pair(kernel_size),
                      stride=_pair(stride) if stride else None, padding=_pair(padding),
                      count_include_pad=bool(count_include_pad), name=ctx.name)
    return out[0] if squeeze else out


def _adaptive_check(node: Any) -> str | None:
    shape = node.args[0].meta["val"].shape
    out = _pair(node.args[1])
    if any(int(i) % o for i, o in zip(shape[-2:], out, strict=True)):
        return f"output size {tuple(out)} does not divide the input's {tuple(int(d) for d in shape[-2:])}"
    return None


@register_lowering("aten::_adaptive_avg_pool2d", check=_adaptive_check)
def _adaptive_avg_pool2d(ctx: Any, node: Any, x: Tensor, output_size: Any) -> Tensor:
    out = _pair(output_size)
    kernel = tuple(i // o for i, o in zip(x.shape[-2:], out, strict=True))
    x4, squeeze = _spatial4(x)
    y = nn.avg_pool(ctx.graph, x4, ctx.prog, kernel=kernel, stride=kernel, name=ctx.name)
    return y[0] if squeeze else y


@register_lowering("aten::avg_pool1d", check=lambda node: "ceil_mode=True is not supported"
                   if len(node.args) > 4 and node.args[4] else None)
def _avg_pool1d(ctx: Any, node: Any, x: Tensor, kernel_size: Any, stride: Any = (), padding: Any = 0,
                ceil_mode: bool = False, count_include_pad: bool = True) -> Tensor:
    x3 = x if x.ndim == 3 else x.expand_dims(0)
    out = nn.avg_pool(ctx.graph, x3, ctx.prog, kernel=_pair(kernel_size, 1)[0],
                      stride=_pair(stride, 1)[0] if stride else None, padding=_pair(padding, 1)[0],
                      count_include_pad=bool(count_include_pad), name=ctx.name)
    return out if x.ndim == 3 else out[0]


def _adaptive_1d_check(node: Any) -> str | None:
    n, out = int(node.args[0].meta["val"].shape[-1]), _pair(node.args[1], 1)[0]
    return f"output size {out} does not divide the input's {n}" if n % out else None


@register_lowering("aten::adaptive_avg_pool1d", check=_adaptive_1d_check)
def _adaptive_avg_pool1d(ctx: Any, node: Any, x: Tensor, output_size: Any) -> Tensor:
    k = x.shape[-1] // _pair(output_size, 1)[0]
    return _avg_pool1d(ctx, node, x, [k], [k])


def _source_positions(n_in: int, n_out: int, scale: Any, align_corners: bool):
    """(i0, i1, weight of i1) per output position of torch's linear interpolation."""
    o = np.arange(n_out, dtype=np.float64)
    if align_corners:
        src = o * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
    else:
        ratio = (1.0 / scale) if scale else n_in / n_out
        src = np.maximum((o + 0.5) * ratio - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (src - i0).astype(np.float32)


@register_lowering("aten::upsample_bilinear2d.vec")
def _upsample_bilinear(ctx: Any, node: Any, x: Tensor, output_size: Any, align_corners: bool,
                       scale_factors: Any) -> Tensor:
    """Four corner views of ``x`` (indexed, no copies) blended by constant weights in one ``map``."""
    oh, ow = ctx.out_shape()[-2:]
    sh, sw = scale_factors if scale_factors else (None, None)
    h0, h1, lh = _source_positions(x.shape[-2], oh, sh, bool(align_corners))
    w0, w1, lw = _source_positions(x.shape[-1], ow, sw, bool(align_corners))
    addr = x.addresses()
    corners = [Tensor(x.graph, x.dtype, tuple(a.shape), 0, (), a) for a in
               (addr[..., h[:, None], w[None, :]] for h in (h0, h1) for w in (w0, w1))]
    wh = ctx.constant(lh.reshape(oh, 1), x.dtype, suffix="wh")
    ww = ctx.constant(lw.reshape(1, ow), x.dtype, suffix="ww")
    a, b, c, d, eh, ew_ = (E.input(i) for i in range(6))
    top = E.add(a, E.mul(ew_, E.sub(b, a)))
    bottom = E.add(c, E.mul(ew_, E.sub(d, c)))
    return ew.map(ctx.graph, E.add(top, E.mul(eh, E.sub(bottom, top))), [*corners, wh, ww], ctx.prog,
                  name=ctx.name)


def _nearest(ctx: Any, x: Tensor, scales: Any) -> Tensor:
    """Nearest-neighbour upsampling of the last two dims as an indexed view (moves no data)."""
    oh, ow = ctx.out_shape()[-2:]
    idx = []
    for axis, (n_in, n_out) in enumerate(zip(x.shape[-2:], (oh, ow), strict=True)):
        s = scales[axis] if scales and scales[axis] else None
        scale = (1.0 / s) if s else n_in / n_out
        idx.append(np.minimum(np.floor(np.arange(n_out) * np.float32(scale)).astype(np.int64), n_in - 1))
    addr = x.addresses()[..., idx[0][:, None], idx[1][None, :]]
    return Tensor(x.graph, x.dtype, tuple(addr.shape), 0, (), addr)


@register_lowering("aten::upsample_nearest2d.vec")
def _upsample_nearest_vec(ctx: Any, node: Any, x: Tensor, output_size: Any, scale_factors: Any) -> Tensor:
    return _nearest(ctx, x, scale_factors)


@register_lowering("aten::upsample_nearest2d")
def _upsample_nearest(ctx: Any, node: Any, x: Tensor, output_size: Any, scales_h: Any = None,
                      scales_w: Any = None) -> Tensor:
    return _nearest(ctx, x, (scales_h, scales_w))


# -- random ------------------------------------------------------------------------------------------
def _random_kwargs(ctx: Any) -> dict[str, Any]:
    return {"shape": ctx.out_shape(), "dtype": ctx.out_dtype(), "seed": ctx.seed(),
            "seed_modifier": ctx.seed_modifier(), "name": ctx.name}


@register_lowering("aten::rand")
def _rand(ctx: Any, node: Any, *args: Any, **kwargs: Any) -> Tensor:
    return rnd.uniform(ctx.graph, ctx.prog, **_random_kwargs(ctx))


@register_lowering("aten::randn")
def _randn(ctx: Any, node: Any, *args: Any, **kwargs: Any) -> Tensor:
    return rnd.normal(ctx.graph, ctx.prog, **_random_kwargs(ctx))


register_lowering("aten::rand_like", _rand)
register_lowering("aten::randn_like", _randn)


def _dropout_check(node: Any) -> str | None:
    return "the dropout mask output is not supported" if _uses_output(node, 1) else None


@register_lowering("aten::randperm")
def _randperm(ctx: Any, node: Any, n: int, **kwargs: Any) -> Tensor:
    """The order that sorts ``n`` uniform samples: a uniformly random permutation."""
    keys = rnd.uniform(ctx.graph, ctx.prog, shape=(int(n),), dtype=float32, seed=ctx.seed(),
                       seed_modifier=ctx.seed_modifier(), name=f"{ctx.name}/keys")
    return sort_with_indices(ctx.graph, keys, ctx.prog, name=ctx.name)[1]


@register_lowering("aten::native_dropout", check=_dropout_check)
def _native_dropout(ctx: Any, node: Any, x: Tensor, p: float, train: Any) -> tuple[Tensor, None]:
    if not train or p == 0:
        return x, None
    # NOTE: not _random_kwargs: the node has two outputs, so it has no single out_shape.
    out = rnd.dropout(ctx.graph, x, ctx.prog, p=float(p), seed=ctx.seed(),
                      seed_modifier=ctx.seed_modifier(), name=ctx.name)
    return out, None
