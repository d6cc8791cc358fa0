"""Lowerings of reductions onto ``softipu.ops.reduce`` (and norms/variances composed of them)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from softipu.dtypes import bool_, int32
from softipu.frontends.torch.registry import register_lowering
from softipu.graph.tensor import Tensor
from softipu.ops import elementwise as ew
from softipu.ops import indexing as ix
from softipu.ops.elementwise import E
from softipu.ops.reduce import ReduceOp, argmax, argmin, reduce, reduce_mean

__all__: list[str] = []


def dims_of(x: Tensor, dim: Any) -> tuple[int, ...] | None:
    """torch's ``dim`` argument as reduce's ``dims``: None (or []) reduces everything."""
    if dim is None or (isinstance(dim, (list, tuple)) and len(dim) == 0):
        return None
    dims = [dim] if isinstance(dim, int) else list(dim)
    return tuple(sorted({d % x.ndim if x.ndim else 0 for d in dims}))


def _count(x: Tensor, dims: tuple[int, ...] | None) -> int:
    return math.prod(x.shape) if dims is None else math.prod(x.shape[d] for d in dims)


def reduce_to(ctx: Any, x: Tensor, op: ReduceOp, dims: Any, keepdim: bool, suffix: str = "",
              out_dtype: Any = None) -> Tensor:
    """``reduce`` with torch's 0-d conventions: a 0-d input reduces to itself (in its own dtype,
    whatever ``out_dtype``, the result's dtype otherwise: popops ``reduce``'s ``outType``)."""
    if x.ndim == 0:
        return x
    return reduce(ctx.graph, x, ctx.prog, dims=dims, op=op, name=f"{ctx.name}{suffix}",
                  options={"keepdims": bool(keepdim)}, out_dtype=out_dtype)


def _reduction(op: ReduceOp, logical: bool = False) -> Any:
    def lower(ctx: Any, node: Any, x: Tensor, dim: Any = None, keepdim: bool = False, *,
              dtype: Any = None) -> Tensor:
        x = ctx.cast(x, bool_ if logical else ctx.out_dtype())
        return reduce_to(ctx, x, op, dims_of(x, dim), keepdim)
    return lower


for _name, _op, _logical in (("sum", ReduceOp.ADD, False), ("amax", ReduceOp.MAX, False),
                             ("amin", ReduceOp.MIN, False), ("any", ReduceOp.LOGICAL_OR, True),
                             ("all", ReduceOp.LOGICAL_AND, True)):
    register_lowering(f"aten::{_name}", _reduction(_op, _logical))


@register_lowering("aten::prod")
def _prod(ctx: Any, node: Any, x: Tensor, dim: Any = None, keepdim: bool = False, *,
          dtype: Any = None) -> Tensor:
    x = ctx.cast(x, ctx.out_dtype())
    return reduce_to(ctx, x, ReduceOp.MUL, dims_of(x, dim), keepdim)


@register_lowering("aten::mean")
def _mean(ctx: Any, node: Any, x: Tensor, dim: Any = None, keepdim: bool = False, *,
          dtype: Any = None) -> Tensor:
    x = ctx.cast(x, ctx.out_dtype())
    if x.ndim == 0:
        return x
    return reduce_mean(ctx.graph, x, ctx.prog, dims=dims_of(x, dim), name=ctx.name,
                          options={"keepdims": bool(keepdim)})


def _max_min(largest: bool) -> Any:
    def lower(ctx: Any, node: Any, x: Tensor, dim: Any = None, keepdim: bool = False) -> Any:
        op = ReduceOp.MAX if largest else ReduceOp.MIN
        if dim is None:  # max.default: the largest element
            return reduce_to(ctx, x, op, None, False)
        values = reduce_to(ctx, x, op, dims_of(x, dim), keepdim)
        if x.ndim == 0:
            return values, ctx.constant(0, ctx.out_dtype(1), ())
        arg = argmax if largest else argmin
        keys = ctx.cast(x, int32) if x.dtype is bool_ else x  # argmax/argmin take numbers
        index = arg(ctx.graph, keys, ctx.prog, dim=dim, name=f"{ctx.name}/index",
                    options={"keepdims": bool(keepdim)})
        return values, index
    return lower


register_lowering("aten::max.dim", _max_min(True))
register_lowering("aten::min.dim", _max_min(False))
register_lowering("aten::max", _max_min(True))
register_lowering("aten::min", _max_min(False))


def _arg(largest: bool) -> Any:
    def lower(ctx: Any, node: Any, x: Tensor, dim: Any = None, keepdim: bool = False) -> Tensor:
        fn = argmax if largest else argmin
        if x.ndim == 0:
            return ctx.constant(0, ctx.out_dtype(), ())
        if dim is None:
            return fn(ctx.graph, x.flatten(), ctx.prog, dim=0, name=ctx.name).reshape(ctx.out_shape())
        return fn(ctx.graph, x, ctx.prog, dim=dim, name=ctx.name, options={"keepdims": bool(keepdim)})
    return lower


register_lowering("aten::argmax", _arg(True))
register_lowering("aten::argmin", _arg(False))


def variance(ctx: Any, x: Tensor, dim: Any, correction: float, keepdim: bool) -> tuple[Tensor, Tensor]:
    """(variance, mean) over ``dim``: the mean, then the sum of squared deviations (SQUARE_ADD)."""
    dims = dims_of(x, dim)
    g, prog = ctx.graph, ctx.prog
    mean = reduce_mean(g, x, prog, dims=dims, name=f"{ctx.name}/mean", options={"keepdims": True})
    dev = ew.sub(g, x, mean, prog, name=f"{ctx.name}/deviation")
    squares = reduce(g, dev, prog, dims=dims, op=ReduceOp.SQUARE_ADD, name=f"{ctx.name}/squares",
                        options={"keepdims": bool(keepdim)})
    divisor = _count(x, dims) - correction
    var = ew.mul(g, squares, (1.0 / divisor) if divisor > 0 else math.inf, prog, name=ctx.name)
    return var, (mean if keepdim else mean.reshape(var.shape))


@register_lowering("aten::var.correction")
def _var(ctx: Any, node: Any, x: Tensor, dim: Any = None, *, correction: Any = None,
         keepdim: bool = False) -> Tensor:
    x = ctx.cast(x, ctx.out_dtype())
    return variance(ctx, x, dim, 1.0 if correction is None else float(correction), keepdim)[0]


@register_lowering("aten::var.dim")
def _var_dim(ctx: Any, node: Any, x: Tensor, dim: Any = None, unbiased: bool = True,
             keepdim: bool = False) -> Tensor:
    x = ctx.cast(x, ctx.out_dtype())
    return variance(ctx, x, dim, 1.0 if unbiased else 0.0, keepdim)[0]


@register_lowering("aten::var_mean.correction")
def _var_mean(ctx: Any, node: Any, x: Tensor, dim: Any = None, *, correction: Any = None,
              keepdim: bool = False) -> tuple[Tensor, Tensor]:
    x = ctx.cast(x, ctx.out_dtype(0))
    return variance(ctx, x, dim, 1.0 if correction is None else float(correction), keepdim)


@register_lowering("aten::linalg_vector_norm")
def _vector_norm(ctx: Any, node: Any, x: Tensor, ord: Any = 2, dim: Any = None,  # noqa: A002
                 keepdim: bool = False, *, dtype: Any = None) -> Tensor:
    x = ctx.cast(x, ctx.out_dtype())
    g, prog, name = ctx.graph, ctx.prog, ctx.name
    dims = dims_of(x, dim)
    if ord == 2 and x.ndim:
        squares = reduce_to(ctx, x, ReduceOp.SQUARE_ADD, dims, keepdim, "/squares")
        return ew.sqrt(g, squares, prog, name=name)
    if ord == 0:
        nonzero = ew.cast(g, ew.ne(g, x, 0, prog, name=f"{name}/nonzero"), x.dtype, prog)
        return reduce_to(ctx, nonzero, ReduceOp.ADD, dims, keepdim)
    magnitude = ew.abs(g, x, prog, name=f"{name}/abs")
    if ord in (math.inf, -math.inf):
        return reduce_to(ctx, magnitude, ReduceOp.MAX if ord > 0 else ReduceOp.MIN, dims, keepdim)
    if ord == 1:
        return reduce_to(ctx, magnitude, ReduceOp.ADD, dims, keepdim)
    powered = ew.pow(g, magnitude, float(ord), prog, name=f"{name}/pow")
    total = reduce_to(ctx, powered, ReduceOp.ADD, dims, keepdim, "/sum")
    return ew.pow(g, total, 1.0 / float(ord), prog, name=name)


@register_lowering("aten::cumsum")
def _cumsum(ctx: Any, node: Any, x: Tensor, dim: int, *, dtype: Any = None) -> Tensor:
    x = ctx.cast(x, ctx.out_dtype())
    if x.ndim == 0:
        return x
    return ix.cumsum(ctx.graph, x, ctx.prog, axis=dim, name=ctx.name)


@register_lowering("aten::logsumexp")
def _logsumexp(ctx: Any, node: Any, x: Tensor, dim: Any, keepdim: bool = False) -> Tensor:
    x = ctx.cast(x, ctx.out_dtype())
    g, prog = ctx.graph, ctx.prog
    dims = dims_of(x, dim)
    top = reduce_to(ctx, x, ReduceOp.MAX, dims, True, "/max")
    # A row of -inf keeps its max out of the subtraction (torch gives -inf, not NaN).
    safe = ew.map(g, E.select(E.is_inf(E.input(0)), 0.0, E.input(0)), [top], prog, name=f"{ctx.name}/safe")
    shifted = ew.map(g, E.exp(E.sub(E.input(0), E.input(1))), [x, safe], prog, name=f"{ctx.name}/exp")
    total = reduce_to(ctx, shifted, ReduceOp.ADD, dims, True, "/sum")
    out = ew.map(g, E.add(E.log(E.input(0)), E.input(1)), [total, safe], prog, name=ctx.name)
    return out if keepdim else out.reshape(ctx.out_shape())


def _norm_rows(ctx: Any, diff: Tensor, p: float, suffix: str) -> Tensor:
    """The ``p``-norm of ``diff`` along its last dim."""
    g, prog = ctx.graph, ctx.prog
    last = (diff.ndim - 1,)
    if p == 2:
        return ew.sqrt(g, reduce_to(ctx, diff, ReduceOp.SQUARE_ADD, last, False, f"{suffix}/squares"),
                       prog, name=f"{ctx.name}{suffix}")
    magnitude = ew.abs(g, diff, prog, name=f"{ctx.name}{suffix}/abs")
    if p == math.inf:
        return reduce_to(ctx, magnitude, ReduceOp.MAX, last, False, suffix)
    if p == 1:
        return reduce_to(ctx, magnitude, ReduceOp.ADD, last, False, suffix)
    if p == 0:
        nonzero = ew.cast(g, ew.ne(g, diff, 0, prog), diff.dtype, prog)
        return reduce_to(ctx, nonzero, ReduceOp.ADD, last, False, suffix)
    powered = ew.pow(g, magnitude, float(p), prog, name=f"{ctx.name}{suffix}/pow")
    total = reduce_to(ctx, powered, ReduceOp.ADD, last, False, f"{suffix}/sum")
    return ew.pow(g, total, 1.0 / float(p), prog, name=f"{ctx.name}{suffix}")


@register_lowering("aten::_cdist_forward")
def _cdist(ctx: Any, node: Any, x1: Tensor, x2: Tensor, p: float, compute_mode: Any = None) -> Tensor:
    """Distances of every row pair as the norm of a broadcast difference (exact, no ``|a|^2 + |b|^2 -
    2ab`` cancellation)."""
    a = ctx.cast(x1, ctx.out_dtype()).expand_dims(-2)
    b = ctx.cast(x2, ctx.out_dtype()).expand_dims(-3)
    diff = ew.sub(ctx.graph, a, b, ctx.prog, name=f"{ctx.name}/diff")
    return _norm_rows(ctx, diff, float(p), "")


@register_lowering("aten::_pdist_forward")
def _pdist(ctx: Any, node: Any, x: Tensor, p: float = 2.0) -> Tensor:
    i, j = np.triu_indices(x.shape[0], k=1)
    rows = x.addresses()
    a, b = (Tensor(x.graph, x.dtype, (len(k), x.shape[1]), 0, (), rows[k]) for k in (i, j))
    diff = ew.sub(ctx.graph, a, b, ctx.prog, name=f"{ctx.name}/diff")
    return _norm_rows(ctx, diff, float(p), "")
