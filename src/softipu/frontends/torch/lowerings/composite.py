"""Lowerings composed of other lowerings and library ops: the ``*_copy`` forms of views,
``diagonal_scatter`` / ``as_strided_scatter``, ``addmv``, ``addbmm``, ``dist``, ``_trilinear``
(``bilinear``), ``angle`` of reals, ``bucketize`` / ``searchsorted`` (counts of comparisons)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from softipu.dtypes import float32, int32
from softipu.frontends.torch.lowerings.backward import _bn_functional
from softipu.frontends.torch.lowerings.indexing import _gather
from softipu.frontends.torch.lowerings.nn import _matmul
from softipu.frontends.torch.lowerings.pointwise import _map
from softipu.frontends.torch.lowerings.reduce import _vector_norm, reduce_to
from softipu.frontends.torch.lowerings.shape import (
    _as_strided,
    _dim,
    _fancy,
    _permute,
    _slice,
    _unbind,
)
from softipu.frontends.torch.registry import register_lowering
from softipu.graph import program as P
from softipu.graph.tensor import Tensor
from softipu.ops import indexing as ix
from softipu.ops.elementwise import E
from softipu.ops.indexing.scatter_reduce import scatter_reduce
from softipu.ops.reduce import ReduceOp

__all__: list[str] = []

register_lowering("aten::permute_copy", _permute)
register_lowering("aten::as_strided_copy", _as_strided)
register_lowering("aten::unbind_copy.int", _unbind)


@register_lowering("aten::narrow_copy")
def _narrow_copy(ctx: Any, node: Any, x: Tensor, dim: int, start: int, length: int) -> Tensor:
    start = int(start) % x.shape[_dim(dim, x.ndim)] if start < 0 else int(start)
    return _slice(ctx, node, x, dim, start, start + int(length))


def _diagonal_index(shape: tuple[int, ...], offset: int, d1: int, d2: int) -> tuple[Any, list[int]]:
    rest = [d for d in range(len(shape)) if d not in (d1, d2)]
    n = max(0, min(shape[d1] - max(-offset, 0), shape[d2] - max(offset, 0)))
    return (..., np.arange(n) + max(-offset, 0), np.arange(n) + max(offset, 0)), rest + [d1, d2]


@register_lowering("aten::diagonal_scatter")
def _diagonal_scatter(ctx: Any, node: Any, x: Tensor, src: Tensor, offset: int = 0, dim1: int = 0,
                      dim2: int = 1) -> Tensor:
    out = ctx.copy(x)
    d1, d2 = _dim(dim1, x.ndim), _dim(dim2, x.ndim)
    index, perm = _diagonal_index(x.shape, int(offset), d1, d2)
    view = _fancy(out.transpose(perm), index)
    if view.numel:
        ctx.prog.add(P.Copy(ctx.cast(src, out.dtype).broadcast(view.shape), view))
    return out


@register_lowering("aten::as_strided_scatter")
def _as_strided_scatter(ctx: Any, node: Any, x: Tensor, src: Tensor, size: Any, stride: Any,
                        storage_offset: Any = None) -> Tensor:
    out = ctx.copy(x)
    view = _as_strided(ctx, node, out, size, stride, storage_offset)
    if view.numel:
        ctx.prog.add(P.Copy(ctx.cast(src, out.dtype).broadcast(view.shape), view))
    return out


def _axpby(ctx: Any, product: Tensor, bias: Tensor, alpha: Any, beta: Any) -> Tensor:
    """``alpha * product + beta * bias`` (bias ignored, NaNs and all, when beta is 0)."""
    if beta == 0:
        return _map(ctx, E.mul(E.input(0), float(alpha)), [product])
    bias = ctx.cast(bias, product.dtype).broadcast(product.shape)
    return _map(ctx, E.add(E.mul(E.input(0), float(alpha)), E.mul(E.input(1), float(beta))), [product, bias])


@register_lowering("aten::addmv")
def _addmv(ctx: Any, node: Any, bias: Tensor, mat: Tensor, vec: Tensor, *, beta: Any = 1,
           alpha: Any = 1) -> Tensor:
    n, m = mat.shape
    if not n or not m:
        product = ctx.constant(0, ctx.out_dtype(), (n,))
    else:
        product = _matmul(ctx, mat, vec.reshape(m, 1), "/matmul").reshape(n)
    return _axpby(ctx, product, bias, alpha, beta)


@register_lowering("aten::addbmm")
def _addbmm(ctx: Any, node: Any, bias: Tensor, a: Tensor, b: Tensor, *, beta: Any = 1,
            alpha: Any = 1) -> Tensor:
    batch, n, k = a.shape
    p = b.shape[2]
    if not batch or not k or not n or not p:
        product = ctx.constant(0, ctx.out_dtype(), (n, p))
    else:  # the sum over the batch is one matmul over the joined (batch, k) axis
        product = _matmul(ctx, a.transpose(1, 0, 2).reshape(n, batch * k), b.reshape(batch * k, p), "/matmul")
    return _axpby(ctx, product, bias, alpha, beta)


@register_lowering("aten::dist")
def _dist(ctx: Any, node: Any, a: Tensor, b: Tensor, p: Any = 2) -> Tensor:
    a, b = ctx.cast(a, ctx.out_dtype()), ctx.cast(b, ctx.out_dtype())
    shape = np.broadcast_shapes(a.shape, b.shape)
    diff = _map(ctx, E.sub(E.input(0), E.input(1)), [a.broadcast(shape), b.broadcast(shape)], "/diff")
    return _vector_norm(ctx, node, diff, float(p), None, False)


@register_lowering("aten::_trilinear")
def _trilinear(ctx: Any, node: Any, i1: Tensor, i2: Tensor, i3: Tensor, expand1: Any, expand2: Any,
               expand3: Any, sumdim: Any, unroll_dim: int = 1) -> Tensor:
    """``sum over sumdim of i1 * i2 * i3``, each unsqueezed at its ``expand`` dims."""
    ndim = i1.ndim + len(expand1)
    views = []
    for t, expand in ((i1, expand1), (i2, expand2), (i3, expand3)):
        shape = list(t.shape)
        for d in sorted(expand):
            shape.insert(d, 1)
        views.append(ctx.cast(t, ctx.out_dtype()).reshape(tuple(shape)))
    full = tuple(max(v.shape[d] for v in views) for d in range(ndim))
    product = _map(ctx, E.mul(E.mul(E.input(0), E.input(1)), E.input(2)), [v.broadcast(full) for v in views],
                   "/product")
    if sumdim:
        product = reduce_to(ctx, product, ReduceOp.ADD, tuple(sorted(int(d) for d in sumdim)), False, "/sum")
    return product.reshape(ctx.out_shape())


@register_lowering("aten::angle")
def _angle(ctx: Any, node: Any, x: Tensor) -> Tensor:
    """The argument of a real number: pi for negatives, 0 otherwise, NaN for NaN."""
    x = ctx.cast(x, ctx.out_dtype())
    X = E.input(0)
    return _map(ctx, E.select(E.ne(X, X), X, E.select(E.lt(X, 0.0), math.pi, 0.0)), [x])


def _count_below(ctx: Any, seq: Tensor, values: Tensor, right: bool) -> Tensor:
    """For each value, how many entries of the sorted last axis of ``seq`` lie below it (or at
    or below it, ``right``): the insertion index, as a sum of comparisons."""
    values = ctx.cast(values, float32)
    seq = ctx.cast(seq, float32)
    k = seq.shape[-1]
    lead = values.shape
    if seq.ndim == 1:
        s = seq.reshape((1,) * values.ndim + (k,)).broadcast(lead + (k,))
    else:
        s = seq.reshape(seq.shape[:-1] + (1, k)).broadcast(lead + (k,))
    v = values.reshape(lead + (1,)).broadcast(lead + (k,))
    cmp = E.le(E.input(0), E.input(1)) if right else E.lt(E.input(0), E.input(1))
    below = _map(ctx, E.cast(cmp, ctx.out_dtype()), [s, v], "/compare")
    return reduce_to(ctx, below, ReduceOp.ADD, (below.ndim - 1,), False, "/count")


@register_lowering("aten::bucketize.Tensor")
def _bucketize(ctx: Any, node: Any, x: Tensor, boundaries: Tensor, *, out_int32: bool = False,
               right: bool = False) -> Tensor:
    if x.ndim == 0:
        return _count_below(ctx, boundaries, x.reshape((1,)), right).reshape(())
    return _count_below(ctx, boundaries, x, right)


@register_lowering("aten::searchsorted.Tensor")
def _searchsorted(ctx: Any, node: Any, seq: Tensor, values: Tensor, *, out_int32: bool = False,
                  right: bool = False, side: Any = None, sorter: Any = None) -> Tensor:
    right = bool(right) or side == "right"
    if sorter is not None:  # the sequence in sorted order: a gather along its last axis
        seq = _gather(ctx, node, seq, -1, sorter)
    if values.ndim == 0:
        return _count_below(ctx, seq, values.reshape((1,)), right).reshape(())
    return _count_below(ctx, seq, values, right)


@register_lowering("aten::_batch_norm_with_update_functional")
def _batch_norm_with_update(ctx: Any, node: Any, x: Tensor, weight: Any, bias: Any, running_mean: Tensor,
                            running_var: Tensor, momentum: float, eps: float) -> tuple:
    """Training batch norm with running statistics; the reserve (cuDNN's workspace) is empty."""
    out, mean, inv_std, new_mean, new_var = _bn_functional(ctx, node, x, weight, bias, running_mean,
                                                           running_var, True, momentum, eps)
    reserve = ctx.constant(0, ctx.out_dtype(3), ctx.out_shape(3))
    return out, mean, inv_std, reserve, new_mean, new_var


@register_lowering("aten::_upsample_bilinear2d_aa")
def _upsample_bilinear_aa(ctx: Any, node: Any, x: Tensor, output_size: Any, align_corners: bool,
                          scales_h: Any = None, scales_w: Any = None) -> Tensor:
    """Antialiased bilinear resizing is linear in the input with static weights: the weights are
    torch's op applied to the unit images once, when lowering, and the resize one matmul."""
    hin, win = x.shape[-2:]
    hout, wout = ctx.out_shape()[-2:]
    rows = math.prod(x.shape[:-2])
    if not rows or not hin * win * hout * wout:
        return ctx.constant(0, ctx.out_dtype(), ctx.out_shape())
    unit = torch.eye(hin * win, dtype=torch.float32).reshape(hin * win, 1, hin, win)
    weights = torch.ops.aten._upsample_bilinear2d_aa(unit, output_size, align_corners, scales_h, scales_w)
    size = (hin * win, hout * wout)
    w = ctx.constant(weights.reshape(size).numpy(), ctx.out_dtype(), size, "weights")
    y = _matmul(ctx, ctx.cast(x, ctx.out_dtype()).reshape(rows, hin * win), w, "/resize")
    return y.reshape(ctx.out_shape())


def _grid_check(node: Any) -> str | None:
    mode = node.args[2] if len(node.args) > 2 else 0
    return "bicubic grid sampling is not supported (use bilinear or nearest)" if mode == 2 else None


def _source_coordinate(g: Any, size: int, align: bool, padding: int) -> Any:
    """torch's grid_sampler_compute_source_index as an expression of the grid value ``g``."""
    if align:
        x = E.mul(E.add(g, 1.0), (size - 1) / 2)
    else:
        x = E.div(E.sub(E.mul(E.add(g, 1.0), float(size)), 1.0), 2.0)
    if padding == 1:  # border
        return E.clamp(x, 0.0, float(size - 1))
    if padding == 2:  # reflection, then clipped
        low, high = (0.0, 2.0 * (size - 1)) if align else (-1.0, 2.0 * size - 1.0)
        if high == low:
            return E.mul(x, 0.0)
        lo, span = low / 2, (high - low) / 2
        d = E.abs(E.sub(x, lo))
        extra = E.rem(d, span)
        flips = E.floor(E.div(d, span))
        even = E.eq(E.rem(flips, 2.0), 0.0)
        x = E.select(even, E.add(extra, lo), E.add(E.sub(span, extra), lo))
        return E.clamp(x, 0.0, float(size - 1))
    return x


@register_lowering("aten::grid_sampler_2d", check=_grid_check)
@register_lowering("aten::grid_sampler_3d", check=_grid_check)
def _grid_sampler(ctx: Any, node: Any, x: Tensor, grid: Tensor, interpolation: int, padding: int,
                  align_corners: bool) -> Tensor:
    """Bilinear or trilinear (weights of the 2**k neighbours) or nearest sampling at the grid's
    points, for k = 2 or 3 spatial axes: the neighbours' positions are computed elementwise and
    gathered; outside ones count zero. The grid's last axis holds (x, y[, z]): x indexes the
    last spatial axis."""
    n, c, *spatial = x.shape
    k = len(spatial)
    out_spatial = tuple(grid.shape[1:1 + k])
    dtype = ctx.out_dtype()
    if not x.numel or not grid.numel:
        return ctx.constant(0, dtype, ctx.out_shape())
    grid = ctx.cast(grid, float32)
    sizes = spatial[::-1]  # the size each grid coordinate indexes: (w, h[, d])
    coords = [_map(ctx, _source_coordinate(E.input(0), size, bool(align_corners), int(padding)),
                   [grid[..., a]], f"/i{a}") for a, size in enumerate(sizes)]
    volume = math.prod(spatial)
    base = (np.arange(n * c, dtype=np.int32) * volume).reshape(n, c, *([1] * k))
    base = ctx.constant(base, int32, base.shape, "base")
    full = (n, c, *out_spatial)
    one_channel = (n, 1, *out_spatial)
    flat = ctx.cast(x, float32).reshape(-1)
    steps = [math.prod(sizes[:a]) for a in range(k)]  # element step of each coordinate's axis

    def corner(offsets: tuple[int, ...]) -> Tensor:
        X = [E.input(a) for a in range(k)]
        cs = [E.round(v) if interpolation == 1 else E.add(E.floor(v), float(d))
              for v, d in zip(X, offsets, strict=True)]
        inside = E.logical_and(E.ge(cs[0], 0.0), E.le(cs[0], float(sizes[0] - 1)))
        offset = E.mul(E.clamp(cs[0], 0.0, float(sizes[0] - 1)), float(steps[0]))
        weight = E.const(1.0)
        for a in range(1, k):
            inside = E.logical_and(inside, E.logical_and(E.ge(cs[a], 0.0), E.le(cs[a], float(sizes[a] - 1))))
            offset = E.add(offset, E.mul(E.clamp(cs[a], 0.0, float(sizes[a] - 1)), float(steps[a])))
        if interpolation != 1:
            for v, d in zip(X, offsets, strict=True):
                frac = E.sub(v, E.floor(v))
                weight = E.mul(weight, frac if d else E.sub(1.0, frac))
        tag = "".join(map(str, offsets))
        off = _map(ctx, E.cast(offset, int32), coords, f"/offset{tag}").reshape(one_channel)
        wt = _map(ctx, E.mul(weight, E.cast(inside, float32)), coords, f"/weight{tag}")
        pos = _map(ctx, E.add(E.input(0), E.input(1)), [base.broadcast(full), off.broadcast(full)],
                   f"/pos{tag}")
        vals = ix_gather(ctx, flat, pos.reshape(-1)).reshape(full)
        return _map(ctx, E.mul(E.input(0), E.input(1)), [vals, wt.reshape(one_channel).broadcast(full)],
                    f"/term{tag}")

    if interpolation == 1:
        return ctx.cast(corner((0,) * k), dtype)
    terms = [corner(tuple((i >> a) & 1 for a in range(k))) for i in range(2 ** k)]
    total = E.input(0)
    for i in range(1, len(terms)):
        total = E.add(total, E.input(i))
    return ctx.cast(_map(ctx, total, terms, "/sum"), dtype)


def ix_gather(ctx: Any, flat: Tensor, positions: Tensor) -> Tensor:
    return ix.gather(ctx.graph, flat, positions, ctx.prog, axis=0, name=f"{ctx.name}/gather")


@register_lowering("aten::nonzero_static")
def _nonzero_static(ctx: Any, node: Any, x: Tensor, *, size: int, fill_value: int = -1) -> Tensor:
    """The coordinates of the first ``size`` nonzero elements, rows of ``fill_value`` after them:
    each nonzero element's rank among them (a running count) is its row."""
    size, ndim = int(size), x.ndim
    out_dtype = ctx.out_dtype()
    if not size or not ndim or not x.numel:
        return ctx.constant(fill_value, out_dtype, ctx.out_shape())
    flat = x.reshape(-1)
    nonzero = _map(ctx, E.cast(E.ne(E.input(0), 0), int32), [flat], "/nonzero")
    count = ix.cumsum(ctx.graph, nonzero, ctx.prog, name=f"{ctx.name}/rank")
    rows = _map(ctx, E.select(E.logical_and(E.ne(E.input(0), 0), E.le(E.input(1), size)),
                              E.sub(E.input(1), 1), -1), [nonzero, count], "/row")  # -1: not kept
    col = ctx.constant(np.arange(ndim, dtype=np.int32), int32, (ndim,), "col").reshape(1, ndim)
    pos = _map(ctx, E.select(E.ge(E.input(0), 0), E.add(E.mul(E.input(0), ndim), E.input(1)), -1),
               [rows.reshape(-1, 1).broadcast((x.numel, ndim)), col.broadcast((x.numel, ndim))], "/pos")
    coords = np.stack(np.unravel_index(np.arange(x.numel), x.shape), axis=1).astype(np.int32)
    src = ctx.constant(coords, int32, coords.shape, "coords")
    filled = ctx.constant(fill_value, int32, (size, ndim), "fill")
    out = scatter_reduce(ctx.graph, filled.reshape(-1), pos.reshape(-1), src.reshape(-1), ctx.prog,
                         reduce="assign", name=ctx.name)
    return ctx.cast(out.reshape(size, ndim), out_dtype)


_BAG_REDUCE = {0: "sum", 1: "mean", 2: "amax"}


def _bag_check(node: Any) -> str | None:
    used = any(u.args[1] != 0 for u in node.users)
    return "only the bags output is supported (not offset2bag, bag_size, max_indices)" if used else None


@register_lowering("aten::_embedding_bag_forward_only", check=_bag_check)
def _embedding_bag(ctx: Any, node: Any, weight: Tensor, indices: Tensor, offsets: Tensor,
                   scale_grad_by_freq: bool = False, mode: int = 0, sparse: bool = False,
                   per_sample_weights: Any = None, include_last_offset: bool = False,
                   padding_idx: int = -1) -> tuple[Tensor, ...]:
    """Bags of embedding rows reduced (sum, mean, max): an entry's bag is the number of offsets
    at or before it, less one; its row is gathered and reduced into its bag's output row
    (``scatter_reduce``), padding entries skipped. Empty bags are zero, as in torch."""
    dtype = ctx.out_dtype(0)
    bags, dim = ctx.out_shape(0)
    count = indices.numel
    # offset2bag, bag_size, max_indices: the forward-only form keeps them for a backward; unused.
    extras = (None, None, None)
    if not count or not bags or not dim:
        return (ctx.constant(0, dtype, (bags, dim)), *extras)
    offs = ctx.cast(offsets, int32)
    starts = offs.reshape(1, -1).broadcast((count, offs.numel))
    j = np.broadcast_to(np.arange(count, dtype=np.int32)[:, None], starts.shape)
    j = ctx.constant(j, int32, starts.shape, "entry")
    at_or_before = _map(ctx, E.cast(E.le(E.input(1), E.input(0)), int32), [j, starts], "/started")
    bag = _map(ctx, E.sub(E.input(0), 1),
               [reduce_to(ctx, at_or_before, ReduceOp.ADD, (1,), False, "/bags")], "/bag")
    idx = ctx.cast(indices, int32).reshape(-1)
    keep = E.logical_and(E.lt(E.input(0), bags), E.ne(E.input(1), int(padding_idx)))
    col = ctx.constant(np.arange(dim, dtype=np.int32), int32, (dim,), "col").reshape(1, dim)
    pos = _map(ctx, E.select(keep, E.add(E.mul(E.input(0), dim), E.input(2)), -1),
               [bag.reshape(count, 1).broadcast((count, dim)), idx.reshape(count, 1).broadcast((count, dim)),
                col.broadcast((count, dim))], "/pos")
    rows = ix.gather(ctx.graph, ctx.cast(weight, dtype), idx, ctx.prog, axis=0, name=f"{ctx.name}/rows")
    if per_sample_weights is not None:
        w = ctx.cast(per_sample_weights, dtype).reshape(count, 1).broadcast((count, dim))
        rows = _map(ctx, E.mul(E.input(0), E.input(1)), [rows, w], "/weighted")
    zeros = ctx.constant(0, dtype, (bags * dim,), "zeros")
    out = scatter_reduce(ctx.graph, zeros, pos.reshape(-1), rows.reshape(-1), ctx.prog,
                         reduce=_BAG_REDUCE[int(mode)], include_self=False, name=ctx.name)
    return (out.reshape(bags, dim), *extras)


@register_lowering("aten::unfold")
def _unfold(ctx: Any, node: Any, x: Tensor, dimension: int, size: int, step: int) -> Tensor:
    """Sliding windows along ``dimension`` as a new last axis: an indexed view (no data moves)."""
    if x.ndim == 0:
        return x.reshape((1,))
    d = _dim(dimension, x.ndim)
    windows = (x.shape[d] - size) // step + 1
    index = np.arange(windows)[:, None] * step + np.arange(size)[None, :]
    addr = np.moveaxis(np.take(x.addresses(), index, axis=d), d + 1, -1)
    return Tensor(x.graph, x.dtype, tuple(addr.shape), 0, (), np.ascontiguousarray(addr))


def _indices_of(fn: Any) -> Any:
    def lower(ctx: Any, node: Any, row: int, col: int, offset: int = 0, **kwargs: Any) -> Tensor:
        # Static arguments: torch computes the indices once, at compile time, exactly as it would.
        values = fn(int(row), int(col), int(offset)).numpy()
        return ctx.constant(values, ctx.out_dtype(), ctx.out_shape())
    return lower


register_lowering("aten::triu_indices", _indices_of(torch.triu_indices))
register_lowering("aten::tril_indices", _indices_of(torch.tril_indices))


@register_lowering("aten::histc")
def _histc(ctx: Any, node: Any, x: Tensor, bins: int = 100, min: Any = 0, max: Any = 0) -> Tensor:  # noqa: A002
    """Counts in ``bins`` equal bins of ``[min, max]`` (the data's range when both are 0; widened
    by 1 each way when that is one value); values outside are not counted, ``max`` is in the last."""
    dtype = ctx.out_dtype()
    bins = int(bins)
    flat = ctx.cast(x, float32).reshape(-1)
    n = flat.numel
    if not n:
        return ctx.constant(0, dtype, (bins,))
    if min == max == 0:
        lo = reduce_to(ctx, flat, ReduceOp.MIN, (0,), False, "/min")
        hi = reduce_to(ctx, flat, ReduceOp.MAX, (0,), False, "/max")
    else:
        lo = ctx.constant(float(min), float32, (), "lo")
        hi = ctx.constant(float(max), float32, (), "hi")
    L, H = E.input(1), E.input(2)
    same = E.eq(L, H)
    lo_e, hi_e = E.select(same, E.sub(L, 1.0), L), E.select(same, E.add(H, 1.0), H)
    X = E.input(0)
    b = E.floor(E.div(E.mul(E.sub(X, lo_e), float(bins)), E.sub(hi_e, lo_e)))
    b = E.select(E.eq(X, hi_e), float(bins - 1), b)
    b = E.select(E.logical_and(E.ge(X, lo_e), E.le(X, hi_e)), b, -1.0)
    which = _map(ctx, b, [flat, lo.reshape(()).broadcast((n,)), hi.reshape(()).broadcast((n,))], "/bin")
    return ctx.cast(_count_bins(ctx, which, bins), dtype)


def _count_bins(ctx: Any, which: Tensor, bins: int, weight: Tensor | None = None) -> Tensor:
    """The float32 sums, per bin, of ``weight`` (1 when None) over the elements whose bin index
    ``which`` (float32; -1: in none) is that bin: a one-hot comparison reduced over elements."""
    n = which.numel
    index = ctx.constant(np.arange(bins, dtype=np.float32), float32, (bins,), "bins")
    grid = (n, bins)
    operands = [which.reshape(n, 1).broadcast(grid), index.reshape(1, bins).broadcast(grid)]
    hit = E.cast(E.eq(E.input(0), E.input(1)), float32)
    if weight is not None:
        operands.append(ctx.cast(weight, float32).reshape(n, 1).broadcast(grid))
        hit = E.mul(hit, E.input(2))
    hits = _map(ctx, hit, operands, "/hits")
    return reduce_to(ctx, hits, ReduceOp.ADD, (0,), False, "/count")


def _linspace_edges(ctx: Any, lo: Tensor, hi: Tensor, bins: int) -> Tensor:
    """``torch.linspace(lo, hi, bins + 1)`` of device scalars, in float32 as torch's kernel
    computes it: ``lo + step * i`` for the first half, ``hi - step * (bins - i)`` for the rest."""
    steps = bins + 1
    i = ctx.constant(np.arange(steps, dtype=np.float32), float32, (steps,), "edge")
    step = E.div(E.sub(E.input(1), E.input(0)), float(bins))
    first = E.add(E.input(0), E.mul(step, E.input(2)))
    rest = E.sub(E.input(1), E.mul(step, E.sub(float(bins), E.input(2))))
    edge = E.select(E.lt(E.input(2), float(steps // 2)), first, rest)
    ends = [lo.reshape(()).broadcast((steps,)), hi.reshape(()).broadcast((steps,))]
    return _map(ctx, edge, [*ends, i], "/edges")


@register_lowering("aten::histogram")
def _histogram(ctx: Any, node: Any, x: Tensor, bins: Any = 100, *, range: Any = None,  # noqa: A002
               weight: Tensor | None = None, density: bool = False) -> tuple[Tensor, Tensor]:
    """numpy's histogram as torch computes it: ``bins`` equal bins of ``range`` (the data's, widened
    by 0.5 each way when that is one value; [0, 1] when empty) or the given edges; an element's bin
    is the number of edges at or below it less one (the last edge in the last bin), which is
    what torch's interpolation with local search finds; ``density`` divides by the total and
    the bin widths."""
    dtype = ctx.out_dtype(0)
    flat = ctx.cast(x, float32).reshape(-1)
    n = flat.numel
    if isinstance(bins, Tensor):
        edges = ctx.cast(bins, float32).reshape(-1)
    elif range is not None:
        values = torch.linspace(float(range[0]), float(range[1]), int(bins) + 1, dtype=torch.float32)
        edges = ctx.constant(values.numpy(), float32, tuple(values.shape), "edges")
    elif not n:
        values = torch.linspace(0.0, 1.0, int(bins) + 1, dtype=torch.float32)
        edges = ctx.constant(values.numpy(), float32, tuple(values.shape), "edges")
    else:
        lo = reduce_to(ctx, flat, ReduceOp.MIN, (0,), False, "/min")
        hi = reduce_to(ctx, flat, ReduceOp.MAX, (0,), False, "/max")
        same = E.eq(E.input(0), E.input(1))
        lo2 = _map(ctx, E.select(same, E.sub(E.input(0), 0.5), E.input(0)), [lo, hi], "/lo")
        hi2 = _map(ctx, E.select(same, E.add(E.input(1), 0.5), E.input(1)), [lo, hi], "/hi")
        edges = _linspace_edges(ctx, lo2, hi2, int(bins))
    count = edges.numel - 1
    if not n:
        hist = ctx.constant(0, float32, (count,), "hist")
    else:
        grid = (n, edges.numel)
        below = _map(ctx, E.cast(E.ge(E.input(0), E.input(1)), float32),
                     [flat.reshape(n, 1).broadcast(grid), edges.reshape(1, -1).broadcast(grid)], "/below")
        rank = reduce_to(ctx, below, ReduceOp.ADD, (1,), False, "/rank")
        first, last = edges[0].reshape(()).broadcast((n,)), edges[count].reshape(()).broadcast((n,))
        X, R, F0, FN = E.input(0), E.input(1), E.input(2), E.input(3)
        b = E.select(E.eq(X, FN), float(count - 1), E.sub(R, 1.0))
        b = E.select(E.logical_and(E.ge(X, F0), E.le(X, FN)), b, -1.0)
        which = _map(ctx, b, [flat, rank, first, last], "/bin")
        hist = _count_bins(ctx, which, count, weight)
    if density:
        total = reduce_to(ctx, hist, ReduceOp.ADD, (0,), False, "/total")
        hist = _map(ctx, E.div(E.input(0), E.mul(E.input(1), E.sub(E.input(3), E.input(2)))),
                    [hist, total.reshape(()).broadcast((count,)), edges[:count], edges[1:]], "/density")
    return ctx.cast(hist, dtype), ctx.cast(edges, ctx.out_dtype(1))


_SEGMENT_IDENTITY = {"sum": 0.0, "mean": 0.0, "prod": 1.0, "max": -math.inf, "min": math.inf}
_SEGMENT_REDUCE = {"sum": "sum", "mean": "sum", "prod": "prod", "max": "amax", "min": "amin"}


def _segment_check(node: Any) -> str | None:
    axis = node.kwargs.get("axis", 0)
    counts = node.kwargs.get("lengths") or node.kwargs.get("offsets")
    if axis != 0 or counts is None or counts.meta["val"].ndim != 1:
        return "only 1-D lengths or offsets along axis 0 are supported"
    return None


@register_lowering("aten::segment_reduce", check=_segment_check)
def _segment_reduce(ctx: Any, node: Any, data: Tensor, reduce: str, *, lengths: Any = None,
                    indices: Any = None, offsets: Any = None, axis: int = 0, unsafe: bool = False,
                    initial: Any = None) -> Tensor:
    """Each segment (consecutive rows: ``lengths``, or ``[offsets[i], offsets[i+1])``) reduced from
    ``initial`` (or the reduction's identity); a row's segment is how many segment ends lie at or
    before it. Empty segments give ``initial``, or NaN for a mean without one."""
    dtype = ctx.out_dtype()
    segments = ctx.out_shape()[0]
    rest = data.shape[1:]
    width = math.prod(rest)
    rows = data.shape[0]
    start = float(initial) if initial is not None else _SEGMENT_IDENTITY[reduce]
    if lengths is not None:
        counts = ctx.cast(lengths, int32)
        ends = ix.cumsum(ctx.graph, counts, ctx.prog, name=f"{ctx.name}/ends")
    else:
        offs = ctx.cast(offsets, int32)
        ends = offs[1:]
        counts = _map(ctx, E.sub(E.input(0), E.input(1)), [offs[1:], offs[:-1]], "/lengths")
    out = ctx.constant(start, dtype, (segments * width,), "initial")
    if rows and segments and width:
        grid = (rows, segments)
        j = np.broadcast_to(np.arange(rows, dtype=np.int32)[:, None], grid).copy()
        j = ctx.constant(j, int32, grid, "row")
        done = _map(ctx, E.cast(E.le(E.input(1), E.input(0)), int32),
                    [j, ends.reshape(1, segments).broadcast(grid)], "/done")
        seg = reduce_to(ctx, done, ReduceOp.ADD, (1,), False, "/segment")
        col = ctx.constant(np.arange(width, dtype=np.int32), int32, (width,), "col").reshape(1, width)
        at = E.select(E.lt(E.input(0), segments), E.add(E.mul(E.input(0), width), E.input(1)), -1)
        cells = (rows, width)
        pos = _map(ctx, at, [seg.reshape(rows, 1).broadcast(cells), col.broadcast(cells)], "/pos")
        out = scatter_reduce(ctx.graph, out, pos.reshape(-1), ctx.cast(data, dtype).reshape(-1), ctx.prog,
                             reduce=_SEGMENT_REDUCE[reduce], include_self=True, name=ctx.name)
    out = out.reshape((segments,) + rest)
    if reduce == "mean":
        n = ctx.cast(counts, dtype).reshape((segments,) + (1,) * len(rest)).broadcast(out.shape)
        empty = float(initial) if initial is not None else math.nan
        mean = E.select(E.gt(E.input(1), 0.0), E.div(E.input(0), E.input(1)), empty)
        out = _map(ctx, mean, [out, n], "/mean")
    return out


register_lowering("aten::_embedding_bag", _embedding_bag, check=_bag_check)
