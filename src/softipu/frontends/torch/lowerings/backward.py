"""Lowerings of the backward ops a training step's joint graph keeps after Core ATen decomposition
(and of the training forms of their forward ops) onto ``softipu.ops``' gradient ops.

The decompositions ``torch.export`` uses turn most backward ops into elementwise ops and
reductions (softmax, layer norm, GELU, tanh, embedding...); what stays is lowered here:
``convolution_backward`` (``conv_input_grad`` / ``conv_weight_grad`` and a reduction for the
bias), ``max_pool2d_with_indices_backward`` (``max_pool_grad``, from the input), ``avg_pool2d_backward``
(``avg_pool_grad``), batch norm in training (``batch_norm_training`` with the running statistics
updated as torch does) and ``native_batch_norm_backward`` (``batch_norm_grad``). The negative
log-likelihood and the softmax backwards have lowerings too (``nll_loss``, ``nll_loss_grad``,
``softmax_grad``, ``log_softmax_grad``), though ``training.joint`` decomposes them: those ops keep
each row on one tile, which a vocabulary-wide row overflows.
"""

from __future__ import annotations

from typing import Any

from softipu.dtypes import float32
from softipu.frontends.torch.registry import register_lowering
from softipu.graph.tensor import Tensor
from softipu.ops import elementwise as ew
from softipu.ops import nn
from softipu.ops.conv import conv_input_grad, conv_weight_grad
from softipu.ops.reduce import reduce

__all__ = ["BACKWARD_OPS"]

# The backward (and training-forward) ops lowered here, for docs/torch_coverage.md.
BACKWARD_OPS = ("aten::convolution_backward", "aten::max_pool2d_with_indices_backward",
                "aten::avg_pool2d_backward", "aten::_native_batch_norm_legit_functional",
                "aten::_native_batch_norm_legit", "aten::native_batch_norm_backward",
                "aten::nll_loss_forward", "aten::nll_loss_backward", "aten::_log_softmax_backward_data",
                "aten::_softmax_backward_data")


def _pair(v: Any, n: int = 2) -> tuple[int, ...]:
    v = [v] if isinstance(v, int) else list(v)
    return tuple(int(a) for a in (v * n if len(v) == 1 else v))


def _conv_backward_check(node: Any) -> str | None:
    args = list(node.args) + [None] * 11
    if args[7]:
        return "transposed convolution is not supported"
    if any(int(p) for p in (args[8] or [])):
        return "output_padding is not supported"
    if node.args[2].meta["val"].ndim != 4:
        return "only 2-d convolutions have a lowered backward"
    return None


@register_lowering("aten::convolution_backward", check=_conv_backward_check)
def _convolution_backward(ctx: Any, node: Any, grad_out: Tensor, x: Tensor, weight: Tensor, bias_sizes: Any,
                          stride: Any, padding: Any, dilation: Any, transposed: bool, output_padding: Any,
                          groups: int, output_mask: Any) -> tuple[Any, Any, Any]:
    dtype = ctx.dtype(node.args[0].meta["val"].dtype)
    geometry = {"stride": _pair(stride), "padding": _pair(padding), "dilation": _pair(dilation),
                "groups": int(groups)}
    dy = ctx.cast(grad_out, dtype)
    dx = dw = db = None
    if output_mask[0]:
        dx = conv_input_grad(ctx.graph, dy, ctx.cast(weight, dtype), ctx.prog, input_shape=x.shape,
                             name=f"{ctx.name}/dx", options=ctx.matmul_options(dtype), **geometry)
    if output_mask[1]:
        dw = conv_weight_grad(ctx.graph, dy, ctx.cast(x, dtype), ctx.prog, weight_shape=weight.shape,
                              name=f"{ctx.name}/dw", options=ctx.matmul_options(dtype), **geometry)
    if output_mask[2]:
        db = reduce(ctx.graph, dy, ctx.prog, dims=(0, 2, 3), name=f"{ctx.name}/db")
    return dx, dw, db


@register_lowering("aten::max_pool2d_with_indices_backward")
def _max_pool2d_backward(ctx: Any, node: Any, grad_out: Tensor, x: Tensor, kernel_size: Any, stride: Any,
                         padding: Any, dilation: Any, ceil_mode: bool, indices: Any = None) -> Tensor:
    squeeze = x.ndim == 3
    x4 = x.expand_dims(0) if squeeze else x
    g4 = grad_out.expand_dims(0) if squeeze else grad_out
    out = nn.max_pool_grad(ctx.graph, x4, g4, ctx.prog, kernel=_pair(kernel_size),
                           stride=_pair(stride) if stride else None, padding=_pair(padding), name=ctx.name)
    return out[0] if squeeze else out


def _avg_pool_backward_check(node: Any) -> str | None:
    args = list(node.args) + [None] * 8
    if args[5]:
        return "ceil_mode=True is not supported"
    if args[7] is not None:
        return "divisor_override is not supported"
    return None


@register_lowering("aten::avg_pool2d_backward", check=_avg_pool_backward_check)
def _avg_pool2d_backward(ctx: Any, node: Any, grad_out: Tensor, x: Tensor, kernel_size: Any, stride: Any,
                         padding: Any, ceil_mode: bool, count_include_pad: bool,
                         divisor_override: Any = None) -> Tensor:
    squeeze = x.ndim == 3
    g4 = grad_out.expand_dims(0) if squeeze else grad_out
    shape = ((1,) + x.shape) if squeeze else x.shape
    out = nn.avg_pool_grad(ctx.graph, g4, ctx.prog, input_shape=shape, kernel=_pair(kernel_size),
                           stride=_pair(stride) if stride else None, padding=_pair(padding),
                           count_include_pad=bool(count_include_pad), name=ctx.name)
    return out[0] if squeeze else out


def _bn_stats(ctx: Any, x: Tensor, weight: Any, bias: Any, eps: float) -> tuple[Tensor, ...]:
    out, mean, var = nn.batch_norm_training(ctx.graph, x, weight, bias, ctx.prog, eps=float(eps),
                                            name=ctx.name)
    inv_std = ew.rsqrt(ctx.graph, ew.add(ctx.graph, var, float(eps), ctx.prog, name=f"{ctx.name}/var_eps"),
                       ctx.prog, name=f"{ctx.name}/inv_std")
    return out, mean, var, inv_std


def _running(ctx: Any, old: Tensor, batch: Tensor, momentum: float, scale: float, what: str) -> Tensor:
    """``(1 - momentum) * old + momentum * scale * batch`` as torch updates running statistics."""
    kept = ew.mul(ctx.graph, ctx.cast(old, float32), 1.0 - momentum, ctx.prog, name=f"{ctx.name}/{what}_keep")
    new = ew.mul(ctx.graph, batch, momentum * scale, ctx.prog, name=f"{ctx.name}/{what}_new")
    return ctx.cast(ew.add(ctx.graph, kept, new, ctx.prog, name=f"{ctx.name}/{what}"), old.dtype)


@register_lowering("aten::_native_batch_norm_legit_functional")
def _bn_functional(ctx: Any, node: Any, x: Tensor, weight: Any, bias: Any, running_mean: Tensor,
                   running_var: Tensor, training: bool, momentum: float, eps: float) -> tuple:
    if not training:
        out = nn.batch_norm(ctx.graph, x, weight, bias, running_mean, running_var, ctx.prog,
                            eps=float(eps), name=ctx.name)
        empty = (ctx.variable(ctx.out_dtype(i), ctx.out_shape(i), f"stat{i}") for i in (1, 2))
        return (out, *empty, running_mean, running_var)
    out, mean, var, inv_std = _bn_stats(ctx, x, weight, bias, eps)
    count = x.numel // x.shape[1]
    unbias = count / (count - 1) if count > 1 else float("nan")
    new_mean = _running(ctx, running_mean, mean, float(momentum), 1.0, "running_mean")
    new_var = _running(ctx, running_var, var, float(momentum), unbias, "running_var")
    return out, mean, inv_std, new_mean, new_var


@register_lowering("aten::_native_batch_norm_legit")
def _bn_legit(ctx: Any, node: Any, x: Tensor, weight: Any, bias: Any, *rest: Any) -> tuple:
    """Batch norm without running statistics (``track_running_stats=False``): batch statistics."""
    training, momentum, eps = rest[-3:]
    out, mean, _, inv_std = _bn_stats(ctx, x, weight, bias, eps)
    return out, mean, inv_std


def _bn_backward_check(node: Any) -> str | None:
    train = node.args[7] if len(node.args) > 7 else node.kwargs.get("train", True)
    return None if train else "the backward of batch norm in eval mode is not supported"


@register_lowering("aten::native_batch_norm_backward", check=_bn_backward_check)
def _bn_backward(ctx: Any, node: Any, grad_out: Tensor, x: Tensor, weight: Any, running_mean: Any,
                 running_var: Any, save_mean: Any, save_invstd: Any, train: bool, eps: float,
                 output_mask: Any) -> tuple:
    # batch_norm_grad takes the biased variance: var = 1 / inv_std^2 - eps.
    inv2 = ew.square(ctx.graph, save_invstd, ctx.prog, name=f"{ctx.name}/inv2")
    var = ew.sub(ctx.graph, ew.reciprocal(ctx.graph, inv2, ctx.prog, name=f"{ctx.name}/var_eps"),
                 float(eps), ctx.prog, name=f"{ctx.name}/var")
    dx, dw, db = nn.batch_norm_grad(ctx.graph, grad_out, x, save_mean, var, weight, ctx.prog,
                                    eps=float(eps), name=ctx.name)
    return (dx if output_mask[0] else None, dw if output_mask[1] else None, db if output_mask[2] else None)


# -- losses and softmax: kept whole in training graphs (see training.joint's decompositions) -------------
_REDUCTIONS = {0: "none", 1: "mean", 2: "sum"}


def _nll_check(node: Any, first: int = 0) -> str | None:
    """``first``: where the log-probabilities are (1 in the backward, after the gradient)."""
    args = list(node.args) + [None] * 4
    if args[first + 2] is not None:
        return "class weights are not supported"
    if node.args[first].meta["val"].ndim != 2:
        return "only (N, classes) inputs are supported"
    return None


def _nll_backward_check(node: Any) -> str | None:
    return _nll_check(node, 1)


@register_lowering("aten::nll_loss_forward", check=_nll_check)
def _nll_loss_forward(ctx: Any, node: Any, log_probs: Tensor, target: Tensor, weight: Any, reduction: int,
                      ignore_index: int) -> tuple[Tensor, Tensor]:
    loss = nn.nll_loss(ctx.graph, log_probs, target, ctx.prog, reduction=_REDUCTIONS[int(reduction)],
                       ignore_index=int(ignore_index), name=ctx.name)
    # total_weight only feeds nll_loss_backward, which counts the rows itself.
    return loss, ctx.constant(0.0, ctx.out_dtype(1), (), "total_weight")


@register_lowering("aten::nll_loss_backward", check=_nll_backward_check)
def _nll_loss_backward(ctx: Any, node: Any, grad_out: Tensor, log_probs: Tensor, target: Tensor, weight: Any,
                       reduction: int, ignore_index: int, total_weight: Any) -> Tensor:
    return nn.nll_loss_grad(ctx.graph, log_probs, target, grad_out, ctx.prog,
                            reduction=_REDUCTIONS[int(reduction)], ignore_index=int(ignore_index),
                            name=ctx.name)


@register_lowering("aten::_log_softmax_backward_data")
def _log_softmax_backward(ctx: Any, node: Any, grad_out: Tensor, out: Tensor, dim: int,
                          input_dtype: Any) -> Tensor:
    return nn.log_softmax_grad(ctx.graph, out, grad_out, ctx.prog, dim=int(dim), name=ctx.name)


@register_lowering("aten::_softmax_backward_data")
def _softmax_backward(ctx: Any, node: Any, grad_out: Tensor, out: Tensor, dim: int,
                      input_dtype: Any) -> Tensor:
    return nn.softmax_grad(ctx.graph, out, grad_out, ctx.prog, dim=int(dim), name=ctx.name)
