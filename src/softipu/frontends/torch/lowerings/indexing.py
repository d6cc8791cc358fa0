"""Lowerings of embedding, gather/index, scatter/index_put, sort and top-k onto ``softipu.ops.indexing``.

torch's element-wise ``gather``/``scatter`` along a dim become the library's row gather/scatter on
the flattened tensor: each output element's flat position is a compile-time constant plus the
run-time index times the dim's stride, computed in one fused ``map``. Negative indices wrap as in
torch; indices out of range give zeros (gather) or are skipped (scatter), where torch raises.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from softipu.dtypes import bool_, int32
from softipu.frontends.torch.registry import register_lowering
from softipu.graph.tensor import Tensor
from softipu.ops import elementwise as ew
from softipu.ops import indexing as ix
from softipu.ops.elementwise import E
from softipu.ops.indexing.scatter_reduce import scatter_reduce

__all__: list[str] = []


def _wrapped(expr: Any, n: int) -> Any:
    """``expr`` with negative indices counted from the end, as torch does."""
    return E.select(E.lt(expr, 0), E.add(expr, n), expr)


def _index(ctx: Any, idx: Tensor, n: int, suffix: str = "index") -> Tensor:
    """An int32 index tensor with negative entries wrapped."""
    idx = ctx.cast(idx, int32)
    return ew.map(ctx.graph, _wrapped(E.input(0), n), [idx], ctx.prog, name=f"{ctx.name}/{suffix}")


def _static_rows(ctx: Any, x: Tensor, indices: Tensor, axis: int) -> Tensor | None:
    """``x`` indexed along ``axis`` by compile-time constant indices (``torch.arange`` positions):
    a view, no gather. None when the indices are only known at run time."""
    values = ctx.constant_value(indices)
    if values is None:
        return None
    values = np.asarray(values, np.int64)
    n = x.shape[axis]
    if values.size and (values.min() < -n or values.max() >= n):
        return None  # let the gather's out-of-range rule apply
    addr = np.take(x.addresses(), values % n if n else values, axis=axis)
    return Tensor(x.graph, x.dtype, tuple(addr.shape), 0, (), addr)


@register_lowering("aten::embedding")
def _embedding(ctx: Any, node: Any, weight: Tensor, indices: Tensor, padding_idx: int = -1,
               scale_grad_by_freq: bool = False, sparse: bool = False) -> Tensor:
    view = _static_rows(ctx, weight, indices, 0)
    if view is not None:
        return view
    return ix.gather(ctx.graph, weight, ctx.cast(indices, int32), ctx.prog, axis=0, name=ctx.name)


@register_lowering("aten::index_select")
def _index_select(ctx: Any, node: Any, x: Tensor, dim: int, index: Tensor) -> Tensor:
    if x.ndim == 0:
        return x
    axis = dim % x.ndim
    view = _static_rows(ctx, x, index, axis)
    if view is not None:
        return view
    return ix.gather(ctx.graph, x, _index(ctx, index, x.shape[axis]), ctx.prog, axis=axis, name=ctx.name)


def _index_check(node: Any) -> str | None:
    indices = node.args[1]
    present = [k for k, t in enumerate(indices) if t is not None]
    for t in indices:
        if t is not None and t.meta["val"].dtype in (torch.bool, torch.uint8):
            return "boolean-mask indexing has a data-dependent shape; use torch.where(mask, x, 0)"
    if present and present != list(range(present[0], present[-1] + 1)):
        return "index tensors separated by slices are not supported"
    return None


def _flat_index(ctx: Any, x: Tensor, indices: list[Any]) -> tuple[Tensor, int, int]:
    """(flat index over the indexed dims, first indexed dim, how many) for adjacent index tensors."""
    present = [k for k, t in enumerate(indices) if t is not None]
    k0, m = present[0], len(present)
    dims = x.shape[k0:k0 + m]
    strides = [math.prod(dims[j + 1:]) for j in range(m)]
    expr = None
    for j, d in enumerate(dims):
        term = E.mul(_wrapped(E.cast(E.input(j), int32), d), strides[j])
        expr = term if expr is None else E.add(expr, term)
    tensors = [indices[k] for k in present]
    flat = ew.map(ctx.graph, expr, tensors, ctx.prog, name=f"{ctx.name}/index")
    return flat, k0, m


@register_lowering("aten::index.Tensor", check=_index_check)
def _index_tensor(ctx: Any, node: Any, x: Tensor, indices: Any) -> Tensor:
    indices = list(indices) + [None] * (x.ndim - len(indices))
    if all(t is None for t in indices):
        return x
    flat, k0, m = _flat_index(ctx, x, indices)
    merged = x.reshape(x.shape[:k0] + (math.prod(x.shape[k0:k0 + m]),) + x.shape[k0 + m:])
    return ix.gather(ctx.graph, merged, flat, ctx.prog, axis=k0, name=ctx.name)


def _positions(ctx: Any, x: Tensor, dim: int, index: Tensor) -> Tensor:
    """Flat positions in ``x`` of ``x[i0, ..., index[i], ...]`` for every element of ``index``."""
    axis = dim % x.ndim if x.ndim else 0
    strides = [math.prod(x.shape[a + 1:]) for a in range(x.ndim)]
    base = np.zeros(index.shape, np.int64)
    for a, n in enumerate(index.shape):
        if a != axis:
            base += (np.arange(n) * strides[a]).reshape((n,) + (1,) * (index.ndim - a - 1))
    base_t = ctx.constant(base.astype(np.int32), int32, suffix="base")
    idx = ctx.cast(index, int32)
    expr = E.add(E.input(0), E.mul(_wrapped(E.input(1), x.shape[axis] if x.ndim else 1), strides[axis]))
    return ew.map(ctx.graph, expr, [base_t, idx], ctx.prog, name=f"{ctx.name}/positions")


@register_lowering("aten::gather")
def _gather(ctx: Any, node: Any, x: Tensor, dim: int, index: Tensor, *, sparse_grad: bool = False) -> Tensor:
    if index.numel == 0:
        return ctx.variable(x.dtype, index.shape)
    pos = _positions(ctx, x, dim, index)
    return ix.gather(ctx.graph, x.reshape(-1), pos.reshape(-1), ctx.prog, axis=0,
                     name=ctx.name).reshape(index.shape)


def _scatter_into(ctx: Any, x: Tensor, dim: int, index: Tensor, src: Any, add: bool) -> Tensor:
    if index.numel == 0:
        return ctx.copy(x)
    pos = _positions(ctx, x, dim, index).reshape(-1)
    if isinstance(src, Tensor):
        src = ctx.cast(src, x.dtype)[tuple(slice(0, n) for n in index.shape)]
    else:
        src = ctx.constant(src, x.dtype, index.shape, "value")
    op = ix.scatter_add if add else ix.scatter
    return op(ctx.graph, x.reshape(-1), pos, src.reshape(-1), ctx.prog, axis=0,
              name=ctx.name).reshape(x.shape)


@register_lowering("aten::scatter.src")
def _scatter_src(ctx: Any, node: Any, x: Tensor, dim: int, index: Tensor, src: Tensor) -> Tensor:
    return _scatter_into(ctx, x, dim, index, src, add=False)


@register_lowering("aten::scatter.value")
def _scatter_value(ctx: Any, node: Any, x: Tensor, dim: int, index: Tensor, value: Any) -> Tensor:
    return _scatter_into(ctx, x, dim, index, value, add=False)


@register_lowering("aten::scatter_add")
def _scatter_add(ctx: Any, node: Any, x: Tensor, dim: int, index: Tensor, src: Tensor) -> Tensor:
    return _scatter_into(ctx, x, dim, index, src, add=True)


def _index_put_check(node: Any) -> str | None:
    indices = node.args[1]
    masks = [t for t in indices if t is not None and t.meta["val"].dtype in (torch.bool, torch.uint8)]
    if masks:
        if len(indices) != 1:
            return "boolean-mask index_put needs one mask (x[mask] = v)"
        return None
    return _index_check(node)


def _embedding_grad(ctx: Any, x: Tensor, indices: list[Any], values: Tensor) -> Tensor | None:
    """An embedding table's gradient (``embedding_dense_backward`` decomposes to ``index_put`` of
    the output gradient's rows into zeros, accumulating): popops ``multiUpdateAdd`` into a fresh
    table laid out as :func:`~softipu.ops.indexing.create_slicable_table` lays out the embedding
    table itself (whole column blocks a tile, stored transposed), so the scatter moves whole rows
    of the output gradient, and the optimizer's update of the table, mapped the same, stays on
    its tiles. None when this is not such an ``index_put``."""
    if x.ndim != 2 or len(indices) != 1 or indices[0] is None or not x.dtype.is_float:
        return None
    base = ctx.constant_value(x)
    if base is None or np.any(np.asarray(base) != 0):
        return None
    index = indices[0]
    want = index.shape + x.shape[1:]
    values = ctx.cast(values, x.dtype)
    values = (values.broadcast(want) if values.shape != want else values).reshape(-1, x.shape[1])
    flat = _index(ctx, index, x.shape[0]).reshape(-1)
    table = ix.create_slicable_table(ctx.graph, x.shape, x.dtype, name=f"{ctx.name}/grad")
    ix.zero(ctx.graph, table.T, ctx.prog, name=f"{ctx.name}/zero")  # its storage, one region a tile
    return ix.multi_update_add(ctx.graph, table, flat, values, 1.0, ctx.prog, name=ctx.name)


def _masked_put(ctx: Any, x: Tensor, mask: Tensor, values: Tensor, accumulate: bool) -> Tensor:
    """``x[mask] = values`` (``+=``): the i-th selected row (the mask covers x's leading dims)
    takes ``values``' i-th row, found by the selected elements' running count."""
    g, prog = ctx.graph, ctx.prog
    rest = x.shape[mask.ndim:]
    width = math.prod(rest)
    values = ctx.cast(values, x.dtype)
    k = values.shape[-len(rest) - 1] if values.ndim > len(rest) else 1
    rows = values.reshape((1,) * max(0, len(rest) + 1 - values.ndim) + values.shape).broadcast((k,) + rest)
    counts = ix.cumsum(g, ctx.cast(mask, int32).reshape(-1), prog, name=f"{ctx.name}/rank")
    rank = ew.map(g, E.clamp(E.sub(E.input(0), 1), 0, k - 1), [counts], prog, name=f"{ctx.name}/row")
    picked = ix.gather(g, rows.reshape(k, width), rank, prog, axis=0, name=f"{ctx.name}/gather")
    picked = picked.reshape(x.shape)
    if accumulate:
        picked = ew.add(g, x, picked, prog, name=f"{ctx.name}/add")
    full = ctx.cast(mask, bool_).reshape(mask.shape + (1,) * len(rest)).broadcast(x.shape)
    return ew.where(g, full, picked, x, prog, name=ctx.name)


@register_lowering("aten::index_put", check=_index_put_check)
def _index_put(ctx: Any, node: Any, x: Tensor, indices: Any, values: Tensor,
               accumulate: bool = False) -> Tensor:
    indices = list(indices)
    if len(indices) == 1 and indices[0] is not None and indices[0].dtype is bool_:
        if values.numel != 1:
            return _masked_put(ctx, x, indices[0], values, accumulate)
        mask = indices[0].reshape(indices[0].shape + (1,) * (x.ndim - indices[0].ndim)).broadcast(x.shape)
        value = ctx.cast(values, x.dtype).reshape(())
        if accumulate:
            value = ew.add(ctx.graph, x, value, ctx.prog, name=f"{ctx.name}/add")
        return ew.where(ctx.graph, mask, value, x, ctx.prog, name=ctx.name)
    grad = _embedding_grad(ctx, x, indices, values) if accumulate else None
    if grad is not None:
        return grad
    indices += [None] * (x.ndim - len(indices))
    flat, k0, m = _flat_index(ctx, x, indices)
    merged = x.reshape(x.shape[:k0] + (math.prod(x.shape[k0:k0 + m]),) + x.shape[k0 + m:])
    want = merged.shape[:k0] + flat.shape + merged.shape[k0 + 1:]
    values = ctx.cast(values, x.dtype)
    values = values.broadcast(want) if values.shape != want else values
    op = ix.scatter_add if accumulate else ix.scatter
    return op(ctx.graph, merged, flat, values, ctx.prog, axis=k0, name=ctx.name).reshape(x.shape)


@register_lowering("aten::sort")
def _sort(ctx: Any, node: Any, x: Tensor, dim: int = -1, descending: bool = False) -> tuple[Tensor, Tensor]:
    if x.ndim == 0:
        return x, ctx.constant(0, int32, ())
    keys = ctx.cast(x, int32) if x.dtype is bool_ else x  # sort_with_indices sorts numbers
    values, index = ix.sort_with_indices(ctx.graph, keys, ctx.prog, axis=dim, descending=bool(descending),
                                         name=ctx.name)
    return ctx.cast(values, x.dtype), index


@register_lowering("aten::sort.stable")
def _sort_stable(ctx: Any, node: Any, x: Tensor, *, stable: Any = None, dim: int = -1,
                 descending: bool = False) -> tuple[Tensor, Tensor]:
    return _sort(ctx, node, x, dim, descending)


@register_lowering("aten::topk")
def _topk(ctx: Any, node: Any, x: Tensor, k: int, dim: int = -1, largest: bool = True,
          sorted: bool = True) -> tuple[Tensor, Tensor]:  # noqa: A002
    if x.ndim == 0:
        return x, ctx.constant(0, int32, ())
    g, prog = ctx.graph, ctx.prog
    if largest:
        return ix.top_k(g, x, prog, k=int(k), axis=dim, name=ctx.name)
    # The k smallest are the k largest of -x, negated back (ties keep input order either way).
    values, index = ix.top_k(g, ew.neg(g, x, prog, name=f"{ctx.name}/neg"), prog, k=int(k), axis=dim,
                             name=ctx.name)
    return ew.neg(g, values, prog, name=f"{ctx.name}/values"), index


def _reduce_into(ctx: Any, x: Tensor, positions: Tensor, src: Any, reduce: str, include_self: bool) -> Tensor:
    """``x`` with ``src`` reduced into its flat ``positions`` (``ops.indexing.scatter_reduce``)."""
    dtype = ctx.out_dtype()
    x = ctx.cast(x, dtype)
    if not isinstance(src, Tensor):
        src = ctx.constant(src, dtype, positions.shape, "value")
    src = ctx.cast(src, dtype)
    out = scatter_reduce(ctx.graph, x.reshape(-1), positions.reshape(-1), src.reshape(-1), ctx.prog,
                         reduce=reduce, include_self=include_self, name=ctx.name)
    return out.reshape(x.shape)


@register_lowering("aten::scatter_reduce.two")
def _scatter_reduce(ctx: Any, node: Any, x: Tensor, dim: int, index: Tensor, src: Tensor, reduce: str,
                    *, include_self: bool = True) -> Tensor:
    if index.numel == 0:
        return ctx.cast(x, ctx.out_dtype())
    src = src[tuple(slice(0, n) for n in index.shape)]  # torch reads src only where index is
    return _reduce_into(ctx, x, _positions(ctx, x, dim, index), src, reduce, bool(include_self))


_SCATTER_REDUCE = {"add": "sum", "multiply": "prod"}


@register_lowering("aten::scatter.reduce")
def _scatter_src_reduce(ctx: Any, node: Any, x: Tensor, dim: int, index: Tensor, src: Any, *,
                        reduce: str) -> Tensor:
    if index.numel == 0:
        return ctx.cast(x, ctx.out_dtype())
    if isinstance(src, Tensor):
        src = src[tuple(slice(0, n) for n in index.shape)]
    return _reduce_into(ctx, x, _positions(ctx, x, dim, index), src, _SCATTER_REDUCE[reduce], True)


register_lowering("aten::scatter.value_reduce", _scatter_src_reduce)


@register_lowering("aten::index_reduce")
def _index_reduce(ctx: Any, node: Any, x: Tensor, dim: int, index: Tensor, source: Tensor, reduce: str,
                  *, include_self: bool = True) -> Tensor:
    """``x[..., index[i], ...] (reduce)= source[..., i, ...]`` along ``dim``."""
    if index.numel == 0 or source.numel == 0:
        return ctx.cast(x, ctx.out_dtype())
    if x.ndim == 0:  # a 0-d x is a 1-element vector here
        return _index_reduce(ctx, node, x.reshape((1,)), 0, index, source.reshape((1,)), reduce,
                             include_self=include_self).reshape(())
    axis = dim % x.ndim
    shape = [1] * source.ndim
    shape[axis] = index.numel
    full = ctx.cast(index, int32).reshape(tuple(shape)).broadcast(source.shape)
    return _reduce_into(ctx, x, _positions(ctx, x, dim, full), source, reduce, bool(include_self))


@register_lowering("aten::put")
def _put(ctx: Any, node: Any, x: Tensor, index: Tensor, source: Tensor, accumulate: bool = False) -> Tensor:
    """``x.flatten()[index] = source`` (``accumulate``: ``+=``); negative indices wrap."""
    if index.numel == 0:
        return ctx.cast(x, ctx.out_dtype())
    positions = ew.map(ctx.graph, _wrapped(E.input(0), max(x.numel, 1)), [ctx.cast(index, int32)], ctx.prog,
                       name=f"{ctx.name}/positions")
    return _reduce_into(ctx, x, positions, source, "sum" if accumulate else "assign", True)


@register_lowering("aten::masked_scatter")
def _masked_scatter(ctx: Any, node: Any, x: Tensor, mask: Tensor, source: Tensor) -> Tensor:
    """``source``'s elements, in order, where ``mask`` is set: each set element's rank among the
    set elements (a running sum of the mask) is its position in ``source``."""
    g, prog = ctx.graph, ctx.prog
    mask = ctx.cast(mask, bool_).broadcast(x.shape) if mask.shape != x.shape else ctx.cast(mask, bool_)
    counts = ix.cumsum(g, ctx.cast(mask, int32).reshape(-1), prog, name=f"{ctx.name}/rank")
    rank = ew.map(g, E.maximum(E.sub(E.input(0), 1), 0), [counts], prog, name=f"{ctx.name}/position")
    flat = ctx.cast(source, x.dtype).reshape(-1)
    picked = ix.gather(g, flat, rank, prog, axis=0, name=f"{ctx.name}/gather")
    return ew.where(g, mask, picked.reshape(x.shape), x, prog, name=ctx.name)
