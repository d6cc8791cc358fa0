"""Lowerings of ATen's scans and order statistics (``cumprod``, ``cummax``, ``cummin``,
``logcumsumexp``, ``median``, ``nanmedian``, ``kthvalue``, ``mode``) onto
``softipu.ops.indexing.scans``."""

from __future__ import annotations

from typing import Any

from softipu.frontends.torch.registry import register_lowering
from softipu.graph.tensor import Tensor
from softipu.ops.indexing import scans

__all__: list[str] = []


@register_lowering("aten::cumprod")
def _cumprod(ctx: Any, node: Any, x: Tensor, dim: int, *, dtype: Any = None) -> Tensor:
    x = ctx.cast(x, ctx.out_dtype())
    return x if x.ndim == 0 else scans.cumprod(ctx.graph, x, ctx.prog, axis=dim, name=ctx.name)


@register_lowering("aten::logcumsumexp")
def _logcumsumexp(ctx: Any, node: Any, x: Tensor, dim: int) -> Tensor:
    x = ctx.cast(x, ctx.out_dtype())
    return x if x.ndim == 0 else scans.logcumsumexp(ctx.graph, x, ctx.prog, axis=dim, name=ctx.name)


def _with_index(fn: Any) -> Any:
    def lower(ctx: Any, node: Any, x: Tensor, dim: int) -> tuple[Tensor, Tensor]:
        if x.ndim == 0:
            return x, ctx.constant(0, ctx.out_dtype(1), ())
        values, index = fn(ctx.graph, x, ctx.prog, axis=dim, name=ctx.name)
        return values, ctx.cast(index, ctx.out_dtype(1))
    return lower


register_lowering("aten::cummax", _with_index(scans.cummax))
register_lowering("aten::cummin", _with_index(scans.cummin))


def _statistic(ctx: Any, fn: Any, x: Tensor, dim: Any, keepdim: bool, **kw: Any) -> tuple[Tensor, Tensor]:
    """``fn`` along ``dim`` (None: over every element), the axis kept or dropped as torch does."""
    shape = ctx.out_shape(0)
    if dim is None or x.ndim == 0:
        x, dim = x.reshape((max(x.numel, 1),) if x.numel else (0,)), 0
    values, index = fn(ctx.graph, x, ctx.prog, axis=dim, name=ctx.name, **kw)
    return values.reshape(shape), ctx.cast(index.reshape(ctx.out_shape(1)), ctx.out_dtype(1))


@register_lowering("aten::median")
def _median_all(ctx: Any, node: Any, x: Tensor) -> Tensor:
    values, _ = scans.median(ctx.graph, x.reshape((x.numel,)), ctx.prog, axis=0, name=ctx.name)
    return values.reshape(())


@register_lowering("aten::nanmedian")
def _nanmedian_all(ctx: Any, node: Any, x: Tensor) -> Tensor:
    values, _ = scans.nanmedian(ctx.graph, x.reshape((x.numel,)), ctx.prog, axis=0, name=ctx.name)
    return values.reshape(())


@register_lowering("aten::median.dim")
def _median(ctx: Any, node: Any, x: Tensor, dim: int, keepdim: bool = False) -> tuple[Tensor, Tensor]:
    return _statistic(ctx, scans.median, x, dim, keepdim)


@register_lowering("aten::nanmedian.dim")
def _nanmedian(ctx: Any, node: Any, x: Tensor, dim: int, keepdim: bool = False) -> tuple[Tensor, Tensor]:
    return _statistic(ctx, scans.nanmedian, x, dim, keepdim)


@register_lowering("aten::mode")
def _mode(ctx: Any, node: Any, x: Tensor, dim: int = -1, keepdim: bool = False) -> tuple[Tensor, Tensor]:
    return _statistic(ctx, scans.mode, x, dim, keepdim)


@register_lowering("aten::kthvalue")
def _kthvalue(ctx: Any, node: Any, x: Tensor, k: int, dim: int = -1,
              keepdim: bool = False) -> tuple[Tensor, Tensor]:
    return _statistic(ctx, scans.kthvalue, x, dim, keepdim, k=int(k))
