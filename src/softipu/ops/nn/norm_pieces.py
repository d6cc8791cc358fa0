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
from softipu.ops.common import OpContext, rows_of
from softipu.ops.mapping import map_linearly
from softipu.ops.nn._common import _by_value, _tiles_at, _variable

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
    """The tile pieces of the ``(rows, n)`` view's rows: its runs of consecutive addresses cut
    at the tile mapping's interval bounds and at row ends, and pieces longer than a worker's share
    of a tile cut evenly (so each tile's workers all have work where a tile holds one long run).
    ``start`` holds each piece's first *address* (the fields are views of the address space:
    each piece is one run of memory on one tile, whatever view ``x2`` is)."""
    rows, n = x2.shape
    addr, size = x2.element_runs()
    pos = np.cumsum(size) - size
    m = ctx.graph.resolved_mapping(x2.dtype)
    k0 = np.searchsorted(m.starts, addr, side="right") - 1
    k1 = np.searchsorted(m.starts, addr + size - 1, side="right") - 1
    per = k1 - k0 + 1
    parent = np.repeat(np.arange(addr.size), per)
    k = k0[parent] + np.arange(parent.size) - np.repeat(np.cumsum(per) - per, per)
    lo = np.maximum(addr[parent], m.starts[k])
    hi = np.minimum(addr[parent] + size[parent], m.ends[k])
    if k0.min(initial=0) < 0 or np.any(hi <= lo) or int((hi - lo).sum()) != rows * n:
        raise ctx.error(f"input {x2.name} {x2.shape} has elements that are not mapped to a tile; map it "
                        "first (sp.ops.map_linearly)")
    tiles, lpos = m.tiles[k].astype(np.int64), pos[parent] + lo - addr[parent]
    # cut at row ends (in element order)
    first_row, last_row = lpos // n, (lpos + hi - lo - 1) // n
    per = last_row - first_row + 1
    parent = np.repeat(np.arange(lo.size), per)
    row = first_row[parent] + np.arange(parent.size) - np.repeat(np.cumsum(per) - per, per)
    p0 = np.maximum(lpos[parent], row * n)
    p1 = np.minimum(lpos[parent] + hi[parent] - lo[parent], (row + 1) * n)
    a0, tiles = lo[parent] + p0 - lpos[parent], tiles[parent]
    target = ctx.graph.target
    share = -(-rows * n // (target.num_tiles * target.workers_per_tile))
    cap = max(64, -(-share // 8) * 8)
    parts = -(-(p1 - p0) // cap)
    if np.any(parts > 1):
        parent = np.repeat(np.arange(p0.size), parts)
        j = np.arange(parent.size) - np.repeat(np.cumsum(parts) - parts, parts)
        step = (-(-(p1 - p0) // parts))[parent]
        cut0 = p0[parent] + j * step
        p1 = np.minimum(p1[parent], cut0 + step)
        a0 = a0[parent] + cut0 - p0[parent]
        p0, row, tiles = cut0, row[parent], tiles[parent]
    order = np.lexsort((p0, row))
    row, p0, p1, a0, tiles = row[order], p0[order], p1[order], a0[order], tiles[order]
    count = np.bincount(row, minlength=rows)
    first = np.cumsum(count) - count
    return _Pieces(rows, n, row, a0, p1 - p0, tiles, first, count)


def _memory(x2: Tensor, plan: _Pieces) -> Tensor:
    """The dtype's address space as a flat view, up to the last piece's end (piece fields are
    rows of it)."""
    end = int((plan.start + plan.length).max())
    return Tensor(x2.graph, x2.dtype, (end,), 0, (1,))


def _row_vector(ctx: OpContext, plan: _Pieces, suffix: str) -> Tensor:
    """A ``(rows,)`` fp32 variable, each row's element on the row's home tile."""
    t = _variable(ctx, float32, (plan.rows, 1), suffix)
    ctx.graph.set_tile_mappings(t, plan.row_tiles())
    return t.reshape(plan.rows)


def _statistics(ctx: OpContext, plan: _Pieces, memory: Tensor, shift: Tensor, eps: float,
                stage: str) -> tuple[Tensor, Tensor]:
    """(mean, inv_std) of each row from its pieces' moments of ``x - shift`` (popops reduce:
    each tile's elements first, then the row's pieces on the row's home tile)."""
    partial = _variable(ctx, float32, (plan.row.size, 2), f"{stage}/partials")
    ctx.graph.set_tile_mappings(partial, plan.tiles)
    pflat = partial.flatten()
    cs = ctx.compute_set(stage)
    codelet = C.plane_moments_codelet(memory.dtype)
    for sel in plan.groups():
        length = int(plan.length[sel[0]])
        ctx.graph.add_vertices(cs, codelet, {
            "x": rows_of(memory, plan.start[sel], length), "shift": rows_of(shift, plan.row[sel], 1),
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


def _chunks(ctx: OpContext, rows: int, n: int) -> list[tuple[int, int]]:
    """The output's column chunks: about a worker's share of a tile each (popops' map planning of
    a broadcast operand, ops/elementwise ``_plan_blocks``), a whole row where it is shorter."""
    target = ctx.graph.target
    share = -(-rows * n // target.num_tiles)
    block = max(64, -(-share // target.workers_per_tile))
    chunks = -(-n // block)
    width = -(-n // chunks)
    return [(c0, min(n, c0 + width)) for c0 in range(0, n, width)]


def layer_norm_pieces(ctx: OpContext, x: Tensor, x2: Tensor, weight: Tensor | None, bias: Tensor | None,
                      eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """``(out, mean, inv_std)`` of the ``(rows, n)`` view ``x2`` of ``x``: the statistics from
    each row's pieces where they live (two passes: the moments of x, then of x minus its mean,
    stable in fp32); the output normalised and scaled in one step, in column chunks of rows each
    on the tile holding the chunk's middle, reading one region of the weight and of the bias.
    (Normalised in x's own scattered layout, the next matmul's operand copy cost more than it
    saved: ViT-B/16 one layer, its exchange code 14.6 -> 41.3 KiB on the fullest tile.)"""
    rows, n = x2.shape
    plan = pieces_of(ctx, x2)
    memory = _memory(x2, plan)
    zeros = _spread(ctx, float32, rows, 0.0, "zeros")
    mean, _ = _statistics(ctx, plan, memory, zeros, eps, "moments")
    mean, inv_std = _statistics(ctx, plan, memory, mean, eps, "centred_moments")
    wdtype = (weight if weight is not None else bias if bias is not None else x).dtype
    weight = weight.flatten() if weight is not None else _spread(ctx, wdtype, n, 1.0, "ones")
    bias = bias.flatten() if bias is not None else _spread(ctx, wdtype, n, 0.0, "zeros_bias")
    out = _variable(ctx, x.dtype, (rows, n), "out")
    cs = ctx.compute_set("apply")
    codelet = C.layer_norm_apply_codelet(x.dtype, wdtype)
    r = np.arange(rows)
    for c0, c1 in _chunks(ctx, rows, n):
        w = c1 - c0
        tiles = _tiles_at(ctx, x2, (r, np.full(rows, (c0 + c1) // 2)))
        ctx.graph.set_tile_mappings(out[:, c0:c1], tiles)
        ctx.graph.add_vertices(cs, codelet, {
            "x": x2[:, c0:c1], "out": out[:, c0:c1], "mean": mean.reshape(rows, 1),
            "inv_std": inv_std.reshape(rows, 1), "weight": weight[c0:c1].reshape(1, w).broadcast((rows, w)),
            "bias": bias[c0:c1].reshape(1, w).broadcast((rows, w))}, tiles)
    ctx.execute(cs)
    return out.reshape(x.shape), mean, inv_std
