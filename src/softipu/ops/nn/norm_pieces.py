"""Layer norm of rows cut across tiles, computed where the pieces live (popnn's layout).

popnn's layer norm is group norm with one group (poplibs popnn/LayerNorm.hpp), whose statistics
are popops reductions over the activations as they are mapped (lib/poplin/Norms.cpp
``normStatistics``: ``popops::reduceWithOutput`` of x and x^2 over all but the row axis; the
reduction's first stage adds each tile's own elements where they live) and whose output is made
by channel ops in place on a duplicate of the activations (``normWhiten``: ``addToChannel`` of
-mean, ``channelMul`` by iStdDev; ``normalise``: ``channelMul`` by gamma, ``addToChannel`` of
beta). So nothing is re-laid out: here each row is cut into its *pieces* (the runs of it on one
tile); one vertex per piece takes its moments, one vertex per row adds its pieces' moments and
finishes the statistics, and one vertex per piece normalises it in place of its input, reading
the row's mean and 1/std and the weight and bias of the piece's columns (one region of each a
piece). A ViT-B/16 residual stream, mapped 102 elements a tile per token across the batch, gives
8 pieces a tile of 102 columns each.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from softipu.codelets import nn as C
from softipu.dtypes import DType, float32
from softipu.graph.tensor import Tensor
from softipu.ops.common import OpContext, rows_of, tile_regions
from softipu.ops.mapping import map_linearly
from softipu.ops.nn._common import _by_value, _output_like, _variable

__all__: list[str] = []


@dataclass(frozen=True, slots=True)
class _Pieces:
    """Piece ``i`` is ``x2.flatten()[start[i] : start[i] + length[i]]``, part of row ``row[i]``,
    on ``tiles[i]``; pieces are ordered by row then column, row ``r``'s are ``first[r]`` on
    (``count[r]`` of them)."""

    rows: int
    n: int
    row: np.ndarray
    start: np.ndarray
    length: np.ndarray
    tiles: np.ndarray
    first: np.ndarray
    count: np.ndarray

    def groups(self):
        """Piece selections of one length (one bulk call each)."""
        for _, pick in _by_value(self.length):
            yield np.flatnonzero(pick)

    def row_tiles(self) -> np.ndarray:
        """Each row's home: the tile of its middle piece."""
        return self.tiles[self.first + self.count // 2]


def pieces_of(ctx: OpContext, x2: Tensor) -> _Pieces:
    """The tile pieces of the ``(rows, n)`` view's rows: its tile regions cut at row ends, and
    pieces longer than a worker's share of a tile cut evenly (so each tile's workers all have
    work where a tile holds one long run)."""
    rows, n = x2.shape
    starts, lengths, tiles = tile_regions(ctx.graph, x2)
    if tiles.size and tiles.min() < 0:
        raise ctx.error(f"input {x2.name} {x2.shape} has elements that are not mapped to a tile; map it "
                        "first (sp.ops.map_linearly)")
    ends = starts + lengths
    first_row, last_row = starts // n, (ends - 1) // n
    per = last_row - first_row + 1
    parent = np.repeat(np.arange(starts.size), per)
    row = first_row[parent] + np.arange(parent.size) - np.repeat(np.cumsum(per) - per, per)
    lo = np.maximum(starts[parent], row * n)
    hi = np.minimum(ends[parent], (row + 1) * n)
    tiles = tiles[parent]
    target = ctx.graph.target
    share = -(-rows * n // (target.num_tiles * target.workers_per_tile))
    cap = max(64, -(-share // 8) * 8)
    parts = -(-(hi - lo) // cap)
    if np.any(parts > 1):
        parent = np.repeat(np.arange(lo.size), parts)
        k = np.arange(parent.size) - np.repeat(np.cumsum(parts) - parts, parts)
        size = -(-(hi - lo) // parts)[parent]
        lo, hi = lo[parent] + k * size, np.minimum(hi[parent], lo[parent] + (k + 1) * size)
        row, tiles = row[parent], tiles[parent]
    order = np.lexsort((lo, row))
    row, lo, hi, tiles = row[order], lo[order], hi[order], tiles[order]
    count = np.bincount(row, minlength=rows)
    first = np.cumsum(count) - count
    return _Pieces(rows, n, row, lo, hi - lo, tiles.astype(np.int64), first, count)


def _row_vector(ctx: OpContext, plan: _Pieces, suffix: str) -> Tensor:
    """A ``(rows,)`` fp32 variable, each row's element on the row's home tile."""
    t = _variable(ctx, float32, (plan.rows, 1), suffix)
    ctx.graph.set_tile_mappings(t, plan.row_tiles())
    return t.reshape(plan.rows)


def _statistics(ctx: OpContext, plan: _Pieces, xflat: Tensor, shift: Tensor, eps: float,
                stage: str) -> tuple[Tensor, Tensor]:
    """(mean, inv_std) of each row from its pieces' moments of ``x - shift`` (popops reduce:
    each tile's elements first, then the row's pieces on the row's home tile)."""
    partial = _variable(ctx, float32, (plan.row.size, 2), f"{stage}/partials")
    ctx.graph.set_tile_mappings(partial, plan.tiles)
    pflat = partial.flatten()
    cs = ctx.compute_set(stage)
    codelet = C.plane_moments_codelet(xflat.dtype)
    for sel in plan.groups():
        length = int(plan.length[sel[0]])
        ctx.graph.add_vertices(cs, codelet, {
            "x": rows_of(xflat, plan.start[sel], length), "shift": rows_of(shift, plan.row[sel], 1),
            "partial": rows_of(pflat, sel * 2, 2)}, plan.tiles[sel])
    ctx.execute(cs)
    mean, inv_std = _row_vector(ctx, plan, f"{stage}/mean"), _row_vector(ctx, plan, f"{stage}/inv_std")
    homes = plan.row_tiles()
    cs = ctx.compute_set(f"{stage}/finish")
    for k, pick in _by_value(plan.count):
        rows = np.flatnonzero(pick)
        ctx.graph.add_vertices(cs, C.RowMomentsFinish, {
            "partial": rows_of(pflat, plan.first[rows] * 2, 2 * k), "shift": rows_of(shift, rows, 1),
            "mean": rows_of(mean, rows, 1), "inv_std": rows_of(inv_std, rows, 1),
            "count": float(plan.n), "eps": eps}, homes[rows])
    ctx.execute(cs)
    return mean, inv_std


def _spread(ctx: OpContext, dtype: DType, size: int, value: float, suffix: str) -> Tensor:
    t = ctx.graph.add_constant(dtype, (size,), value, name=f"{ctx.name}/{suffix}")
    map_linearly(ctx.graph, t, grain_size=ctx.graph.target.vector_width(dtype.itemsize))
    return t


def layer_norm_pieces(ctx: OpContext, x: Tensor, x2: Tensor, weight: Tensor | None, bias: Tensor | None,
                      eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """``(out, mean, inv_std)`` of the ``(rows, n)`` view ``x2`` of ``x``, each piece of each row
    normalised on the tile holding it; ``out`` is mapped like ``x``. Two-pass statistics (the
    moments of x, then of x minus its mean: stable in fp32)."""
    rows, n = x2.shape
    plan = pieces_of(ctx, x2)
    xflat = x2.flatten()
    zeros = _spread(ctx, float32, rows, 0.0, "zeros")
    mean, _ = _statistics(ctx, plan, xflat, zeros, eps, "moments")
    mean, inv_std = _statistics(ctx, plan, xflat, mean, eps, "centred_moments")
    wdtype = (weight if weight is not None else bias if bias is not None else x).dtype
    weight = weight.flatten() if weight is not None else _spread(ctx, wdtype, n, 1.0, "ones")
    bias = bias.flatten() if bias is not None else _spread(ctx, wdtype, n, 0.0, "zeros_bias")
    out = _output_like(ctx, x, x.dtype)
    oflat = out.reshape(rows, n).flatten()
    cs = ctx.compute_set("apply")
    codelet = C.layer_norm_apply_codelet(x.dtype, wdtype)
    cols = plan.start - plan.row * n
    for sel in plan.groups():
        length = int(plan.length[sel[0]])
        ctx.graph.add_vertices(cs, codelet, {
            "x": rows_of(xflat, plan.start[sel], length), "out": rows_of(oflat, plan.start[sel], length),
            "mean": rows_of(mean, plan.row[sel], 1), "inv_std": rows_of(inv_std, plan.row[sel], 1),
            "weight": rows_of(weight, cols[sel], length), "bias": rows_of(bias, cols[sel], length)},
            plan.tiles[sel])
    ctx.execute(cs)
    return out, mean, inv_std
