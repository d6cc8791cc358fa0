"""Lowerings of view, shape and factory ops: zero-copy tensor views wherever torch's are views.

softipu tensors are views over variables (strided, or indexed where strides cannot express
them), so ``view``, ``permute``, ``expand``, ``slice``, ``select``, ``cat``, ``repeat``,
``flip`` and ``diagonal`` move no data. Because the exported graph is functional (nothing is
written in place), ``clone`` and ``alias`` can share their input. Factories with values known
at compile time (``full``, ``arange``, ``scalar_tensor``) become graph constants.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from softipu.frontends.torch.registry import register_lowering
from softipu.graph import program as P
from softipu.graph.tensor import Tensor, concat
from softipu.ops import indexing as ix

__all__: list[str] = []


def _dim(d: int, ndim: int) -> int:
    return d % ndim if ndim else 0


# -- views ---------------------------------------------------------------------------------------------
def _reshape(ctx: Any, node: Any, x: Tensor, *rest: Any, **kwargs: Any) -> Tensor:
    return x.reshape(ctx.out_shape())


for _name in ("view", "_unsafe_view", "reshape", "unsqueeze", "squeeze", "flatten.using_ints",
              "view_copy", "squeeze_copy", "unsqueeze_copy", "_reshape_alias"):
    register_lowering(f"aten::{_name}", _reshape)


def _same(ctx: Any, node: Any, x: Any, *rest: Any, **kwargs: Any) -> Any:
    return x


# _to_copy returns its input: the node's result is cast to torch's dtype after every lowering.
for _name in ("clone", "alias", "lift_fresh_copy", "detach", "_to_copy", "contiguous", "alias_copy",
              "detach_copy"):
    register_lowering(f"aten::{_name}", _same)


@register_lowering("aten::permute")
def _permute(ctx: Any, node: Any, x: Tensor, dims: Any) -> Tensor:
    return x.transpose([_dim(d, x.ndim) for d in dims]) if x.ndim else x


@register_lowering("aten::transpose.int")
def _transpose(ctx: Any, node: Any, x: Tensor, dim0: int, dim1: int) -> Tensor:
    perm = list(range(x.ndim))
    a, b = _dim(dim0, x.ndim), _dim(dim1, x.ndim)
    perm[a], perm[b] = perm[b], perm[a]
    return x.transpose(perm) if x.ndim else x


@register_lowering("aten::t")
def _t(ctx: Any, node: Any, x: Tensor) -> Tensor:
    return x.transpose() if x.ndim == 2 else x


@register_lowering("aten::expand")
def _expand(ctx: Any, node: Any, x: Tensor, size: Any, *, implicit: bool = False) -> Tensor:
    return x.broadcast(ctx.out_shape())


@register_lowering("aten::expand_copy")
def _expand_copy(ctx: Any, node: Any, x: Tensor, size: Any, *, implicit: bool = False) -> Tensor:
    return x.broadcast(ctx.out_shape())


@register_lowering("aten::slice.Tensor")
def _slice(ctx: Any, node: Any, x: Tensor, dim: int = 0, start: Any = None, end: Any = None,
           step: int = 1) -> Tensor:
    key = [slice(None)] * x.ndim
    key[_dim(dim, x.ndim)] = _clamped(x, dim, start, end, step)
    return x[tuple(key)]


def _clamped(x: Tensor, dim: int, start: Any, end: Any, step: int) -> slice:
    """torch's slice bounds clamped to the axis, as torch clamps them (``x[1:]`` exports with end
    ``2**63 - 1``); softipu's own slices refuse bounds beyond the axis."""
    return slice(*slice(start, end, step).indices(x.shape[_dim(dim, x.ndim)]))


@register_lowering("aten::select.int")
def _select(ctx: Any, node: Any, x: Tensor, dim: int, index: int) -> Tensor:
    key: list[Any] = [slice(None)] * x.ndim
    key[_dim(dim, x.ndim)] = index
    return x[tuple(key)]


@register_lowering("aten::split_with_sizes")
def _split_with_sizes(ctx: Any, node: Any, x: Tensor, sizes: Any, dim: int = 0) -> list[Tensor]:
    d = _dim(dim, x.ndim)
    out, start = [], 0
    for size in sizes:
        key = [slice(None)] * x.ndim
        key[d] = slice(start, start + size)
        out.append(x[tuple(key)])
        start += size
    return out


@register_lowering("aten::split.Tensor")
def _split(ctx: Any, node: Any, x: Tensor, split_size: int, dim: int = 0) -> list[Tensor]:
    n = x.shape[_dim(dim, x.ndim)]
    sizes = [min(split_size, n - s) for s in range(0, n, split_size)] or [0]
    return _split_with_sizes(ctx, node, x, sizes, dim)


@register_lowering("aten::unbind.int")
def _unbind(ctx: Any, node: Any, x: Tensor, dim: int = 0) -> list[Tensor]:
    d = _dim(dim, x.ndim)
    return [_select(ctx, node, x, d, i) for i in range(x.shape[d])]


@register_lowering("aten::cat")
def _cat(ctx: Any, node: Any, tensors: Any, dim: int = 0) -> Tensor:
    dtype = ctx.out_dtype()
    shape = ctx.out_shape()
    # torch lets a legacy 1-D empty tensor join anything; it adds nothing.
    parts = [ctx.cast(t, dtype) for t in tensors if not (t.ndim == 1 and t.shape[0] == 0 and len(shape) != 1)]
    if not parts:
        return ctx.variable(dtype, shape)
    return concat(parts, axis=_dim(dim, len(shape)))


@register_lowering("aten::stack")
def _stack(ctx: Any, node: Any, tensors: Any, dim: int = 0) -> Tensor:
    nd = len(ctx.out_shape())
    d = _dim(dim, nd)
    return concat([ctx.cast(t, ctx.out_dtype()).expand_dims(d) for t in tensors], axis=d)


@register_lowering("aten::flip")
def _flip(ctx: Any, node: Any, x: Tensor, dims: Any) -> Tensor:
    for d in dims:
        x = x.reverse(_dim(d, x.ndim))
    return x


def _fancy(x: Tensor, index: Any) -> Tensor:
    """An indexed view: ``x.addresses()[index]`` (moves no data)."""
    addr = x.addresses()[index]
    return Tensor(x.graph, x.dtype, tuple(addr.shape), 0, (), addr)


@register_lowering("aten::repeat")
def _repeat(ctx: Any, node: Any, x: Tensor, repeats: Any) -> Tensor:
    lead = len(repeats) - x.ndim
    x = x.reshape((1,) * lead + x.shape)
    idx = [np.tile(np.arange(d), r) for d, r in zip(x.shape, repeats, strict=True)]
    return _fancy(x, np.ix_(*idx))


@register_lowering("aten::diagonal")
def _diagonal(ctx: Any, node: Any, x: Tensor, offset: int = 0, dim1: int = 0, dim2: int = 1) -> Tensor:
    d1, d2 = _dim(dim1, x.ndim), _dim(dim2, x.ndim)
    rest = [d for d in range(x.ndim) if d not in (d1, d2)]
    moved = x.transpose(rest + [d1, d2])
    n = ctx.out_shape()[-1]
    i = np.arange(n) + max(-offset, 0)
    j = np.arange(n) + max(offset, 0)
    return _fancy(moved, (..., i, j))


@register_lowering("aten::as_strided")
def _as_strided(ctx: Any, node: Any, x: Tensor, size: Any, stride: Any, storage_offset: Any = None) -> Tensor:
    # Positions in x's row-major elements (x is the whole storage in a functional graph).
    pos = np.full(tuple(size), int(storage_offset or 0), np.int64)
    for axis, (n, s) in enumerate(zip(size, stride, strict=True)):
        pos += (np.arange(n, dtype=np.int64) * s).reshape((n,) + (1,) * (len(size) - axis - 1))
    flat = x.addresses().reshape(-1)
    if pos.size and int(pos.max()) >= flat.size:
        raise ValueError(f"as_strided reaches element {int(pos.max())} of a {flat.size}-element tensor")
    return Tensor(x.graph, x.dtype, tuple(pos.shape), 0, (), flat[pos])


@register_lowering("aten::constant_pad_nd")
def _constant_pad_nd(ctx: Any, node: Any, x: Tensor, pad: Any, value: Any = 0) -> Tensor:
    widths = [[0, 0] for _ in range(x.ndim)]
    for k in range(len(pad) // 2):  # pairs from the last dim backwards
        widths[x.ndim - 1 - k] = [int(pad[2 * k]), int(pad[2 * k + 1])]
    key = tuple(slice(max(-a, 0), x.shape[d] - max(-b, 0)) for d, (a, b) in enumerate(widths))
    x = x[key]  # negative padding crops
    widths = [(max(a, 0), max(b, 0)) for a, b in widths]
    if not any(a or b for a, b in widths):
        return x
    return ix.pad(ctx.graph, x, ctx.prog, pad_width=widths, mode="constant", value=value, name=ctx.name)


def _pad_mode(mode: str) -> Any:
    def lower(ctx: Any, node: Any, x: Tensor, padding: Any) -> Tensor:
        k = len(padding) // 2
        widths = [(0, 0)] * (x.ndim - k) + [(int(padding[2 * (k - 1 - i)]), int(padding[2 * (k - 1 - i) + 1]))
                                             for i in range(k)]
        return ix.pad(ctx.graph, x, ctx.prog, pad_width=widths, mode=mode, name=ctx.name)
    return lower


for _name, _mode in (("reflection_pad1d", "reflect"), ("reflection_pad2d", "reflect"),
                     ("reflection_pad3d", "reflect"), ("replication_pad1d", "edge"),
                     ("replication_pad2d", "edge"), ("replication_pad3d", "edge")):
    register_lowering(f"aten::{_name}", _pad_mode(_mode))


# -- writing into a copy -------------------------------------------------------------------------------
def _scatter_view(ctx: Any, x: Tensor, src: Tensor, key: tuple) -> Tensor:
    out = ctx.copy(x)
    view = out[key]
    src = ctx.cast(src, out.dtype)
    if view.numel:
        ctx.prog.add(P.Copy(src.broadcast(view.shape) if src.shape != view.shape else src, view))
    return out


@register_lowering("aten::select_scatter")
def _select_scatter(ctx: Any, node: Any, x: Tensor, src: Tensor, dim: int, index: int) -> Tensor:
    key: list[Any] = [slice(None)] * x.ndim
    key[_dim(dim, x.ndim)] = index
    return _scatter_view(ctx, x, src, tuple(key))


@register_lowering("aten::slice_scatter")
def _slice_scatter(ctx: Any, node: Any, x: Tensor, src: Tensor, dim: int = 0, start: Any = None,
                   end: Any = None, step: int = 1) -> Tensor:
    key: list[Any] = [slice(None)] * x.ndim
    key[_dim(dim, x.ndim)] = _clamped(x, dim, start, end, step)
    return _scatter_view(ctx, x, src, tuple(key))


@register_lowering("aten::copy")
def _copy(ctx: Any, node: Any, x: Tensor, src: Tensor, non_blocking: bool = False) -> Tensor:
    return ctx.cast(src, ctx.out_dtype()).broadcast(x.shape)


# -- factories -----------------------------------------------------------------------------------------
def _full_of(value: Any) -> Any:
    def lower(ctx: Any, node: Any, *args: Any, **kwargs: Any) -> Tensor:
        return ctx.constant(value(args, kwargs), ctx.out_dtype(), ctx.out_shape())
    return lower


register_lowering("aten::full", _full_of(lambda a, k: a[1]))
register_lowering("aten::full_like", _full_of(lambda a, k: a[1]))
register_lowering("aten::new_full", _full_of(lambda a, k: a[2]))
register_lowering("aten::scalar_tensor", _full_of(lambda a, k: a[0]))
register_lowering("aten::fill.Scalar", _full_of(lambda a, k: a[1]))
for _name in ("zeros", "zeros_like", "new_zeros", "empty.memory_format", "empty_like", "new_empty",
              "empty_strided", "new_empty_strided"):
    register_lowering(f"aten::{_name}", _full_of(lambda a, k: 0))
for _name in ("ones", "ones_like", "new_ones"):
    register_lowering(f"aten::{_name}", _full_of(lambda a, k: 1))


@register_lowering("aten::fill.Tensor")
def _fill_tensor(ctx: Any, node: Any, x: Tensor, value: Tensor) -> Tensor:
    return ctx.cast(value, ctx.out_dtype()).broadcast(x.shape)


@register_lowering("aten::arange")
def _arange(ctx: Any, node: Any, *args: Any, **kwargs: Any) -> Tensor:
    # Static arguments: torch computes the values once, at compile time, exactly as it would.
    values = torch.arange(*args, dtype=ctx.out_meta().dtype).numpy()
    return ctx.constant(values, ctx.out_dtype(), ctx.out_shape())


def _nothing(ctx: Any, node: Any, *args: Any, **kwargs: Any) -> None:
    return None


for _name in ("_assert_tensor_metadata", "_assert_scalar", "sym_constrain_range_for_size",
              "sym_constrain_range", "_assert_async.msg"):
    register_lowering(f"aten::{_name}", _nothing, note="a check torch.export inserts; nothing to do")
