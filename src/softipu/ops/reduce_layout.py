"""How a reduction sees its input: the ``(A, R, B)`` view of ``ops.reduce`` and the layout
choices made before planning (storage order, popops' ``(1, R, M)`` view of an inner reduction).

Split out of :mod:`softipu.ops.reduce` (its plan's step 1).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import numpy as np

from softipu.graph.graph import Graph
from softipu.graph.tensor import Tensor
from softipu.ops.common import OpContext, tile_regions
from softipu.ops.reduce_runs import memory_runs

__all__ = ["Canonical", "normalize_dims", "storage_order", "canonical", "by_layout", "fewer_pieces", "prod"]


@dataclass(frozen=True, slots=True)
class Canonical:
    """The input as ``(A, R, B)``: output ``(a, b)`` reduces ``view[a, :, b]``.

    With ``wrap`` (an inner reduction, ``B == 1``) the view is ``(R1, A, R2)`` in memory order
    instead: runs of ``seg = R2`` elements belong to output ``run % A`` (reduced dims on both
    sides of the kept ones, as batch norm's). Otherwise ``seg == R``.
    """

    view: Tensor
    A: int
    R: int
    B: int
    seg: int = 0
    wrap: bool = False

    @property
    def flat(self) -> Tensor:
        return self.view.reshape(-1)

    @property
    def period(self) -> int:
        return self.seg or self.R


def normalize_dims(ctx: OpContext, x: Tensor, dims: Any) -> tuple[int, ...]:
    if dims is None:
        return tuple(range(x.ndim))
    raw = (dims,) if not isinstance(dims, (tuple, list)) else tuple(dims)
    try:
        raw = tuple(operator.index(d) for d in raw)
    except TypeError:
        raise ctx.error(f"dims must be ints, got {dims!r}") from None
    for d in raw:
        if not -x.ndim <= d < x.ndim:
            raise ctx.error(f"dim {d} is out of range for {x.name} of shape {x.shape}")
    axes = tuple(sorted(d % x.ndim for d in raw))
    if len(set(axes)) != len(axes):
        raise ctx.error(f"dims {dims!r} name a dimension twice (shape {x.shape})")
    return axes


def storage_order(x: Tensor, axes: tuple[int, ...]) -> tuple[Tensor, tuple[int, ...]]:
    """``x`` with its dims in the order its elements lie in memory, and the reduced dims there.

    popops plans a reduction over the input's contiguous regions on each tile
    (ReductionPlan.cpp / Reduction.cpp: ``getSortedContiguousRegions`` of each tile's mapping),
    not over the logical view: a transposed view (a matmul's logits stored ``(vocab, tokens)``,
    read ``(tokens, vocab)``) reduces over the same address runs as its storage. Planned over the
    logical view, every element of such a view would be a piece of its own (an interval each:
    16.8 M for a GPT-2 head's logits). Used only when the permuted view is contiguous and keeps
    the kept dims in their order (the output's elements then come in the same order).
    """
    if not x.is_strided or x.ndim < 2 or x.is_contiguous():
        return x, axes
    big = [d for d in range(x.ndim) if x.shape[d] != 1]
    if any(x.strides[d] <= 0 for d in big):
        return x, axes
    perm = sorted(big, key=lambda d: -x.strides[d]) + [d for d in range(x.ndim) if x.shape[d] == 1]
    kept = [d for d in perm if d not in axes and x.shape[d] != 1]
    stored = x.transpose(perm)
    if kept != sorted(kept) or not stored.is_contiguous():
        return x, axes
    return stored, tuple(sorted(perm.index(d) for d in axes))


def canonical(x: Tensor, axes: tuple[int, ...]) -> Canonical:
    shape = x.shape
    r = prod(shape[d] for d in axes)
    if not axes or axes == tuple(range(axes[0], axes[-1] + 1)):
        lo, hi = (axes[0], axes[-1] + 1) if axes else (x.ndim, x.ndim)
        a, b = prod(shape[:lo]), prod(shape[hi:])
        if not axes:
            a, b = a * b, 1
        return Canonical(x.reshape(a, r, b), a, r, b)
    kept = [d for d in range(x.ndim) if d not in axes]
    m = prod(shape[d] for d in kept)
    if kept == list(range(kept[0], kept[-1] + 1)):  # reduced dims before and after the kept ones
        r1, r2 = prod(shape[: kept[0]]), prod(shape[kept[-1] + 1 :])
        return Canonical(x.reshape(r1, m, r2), m, r, 1, seg=r2, wrap=True)
    return Canonical(x.transpose(kept + list(axes)).reshape(m, r, 1), m, r, 1)


def by_layout(graph: Graph, x: Tensor, axes: tuple[int, ...], cv: Canonical,
              reordered: bool = False) -> Canonical:
    """An inner reduction seen as popops sees every reduction, ``(1, R, M)`` with the outputs
    inner (popops ``reduce`` shuffles the reduced dims outermost), when the input's tile mapping
    makes that view's pieces fewer: a channels-last layout (a convolution's output) holds each
    output's elements on many tiles, one element per piece in the ``(M, R)`` view, but long runs
    of outputs in the ``(R, M)`` one (ResNet-50's global average pool: 273 one-element pieces per
    tile at batch 4, each a vertex, against one run of 273 outputs)."""
    if cv.B != 1 or cv.R <= 1 or cv.A <= 1 or not axes or len(axes) == x.ndim:
        return cv
    kept = [d for d in range(x.ndim) if d not in axes]
    view = x.transpose(list(axes) + kept).reshape(1, cv.R, cv.A)
    if view.is_contiguous():
        # popops' view's pieces are the mapping's intervals (no lookup per element): switch when
        # the inner view has more pieces than those and than outputs, counted only that far.
        alt = tile_regions(graph, view)[0].size
        rows = cv.view.reshape(-1, cv.view.shape[-1])  # read in runs of its innermost dim
        return cv if fewer_pieces(graph, rows, max(alt, cv.A) + 1) else Canonical(view, 1, cv.R, cv.A)
    if reordered and cv.view.is_contiguous():
        # A view put in storage order: the pieces are the storage's runs (popops' contiguous
        # regions); the user's view, (R, M) here, would look up every element's tile and address
        # (a logits tensor's 100 M).
        return cv
    if cv.view.is_contiguous():
        # The inner view is the storage order: popops' regions are a tile's runs of memory, and
        # a tile's evenly spaced pieces of one output each (a matmul's output blocks summed over
        # the row, ops/reduce_runs.py) are one region of many outputs. Switch only when the
        # (R, M) view has fewer pieces than those regions: planned through that non-contiguous
        # view, every element is a piece address (a GPT-2 XL softmax-backward row sum over the dP
        # matmul's blocks: 26 M, 2.9 GB pricing its fields).
        starts, lengths, tiles = tile_regions(graph, cv.view)
        r = cv.period
        runs = memory_runs(starts, lengths, tiles, (starts + lengths - 1) // r - starts // r + 1)
        regions = starts.size - sum(run.size for run in runs) + len(runs)
        if regions * cv.R <= x.numel or not fewer_pieces(graph, view[0], regions):
            return cv
        return Canonical(view, 1, cv.R, cv.A)
    inner = tile_regions(graph, cv.view)[0].size
    if inner * cv.R <= x.numel:  # pieces already average a whole reduction or more
        return cv
    if not fewer_pieces(graph, view[0], inner):
        return cv
    return Canonical(view, 1, cv.R, cv.A)


def fewer_pieces(graph: Graph, rows: Tensor, limit: int) -> bool:
    """Whether the tile mapping cuts ``rows`` (flattened) into fewer than ``limit`` pieces, as
    ``tile_regions`` counts them. The tiles are read a growing block of rows at a time and the
    count stops at ``limit``: a row-major layout seen transposed (a vocabulary-wide logits
    tensor's, tens of millions of elements) has a piece every few elements and is refused after
    its first rows, not after a tile lookup per element."""
    pieces, last, r, block = 0, None, 0, max(1, -(-limit // max(1, rows.shape[1])))
    while r < rows.shape[0] and pieces < limit:
        tiles = graph.tile_of(rows[r : min(r + block, rows.shape[0])]).reshape(-1)
        if tiles.size:
            pieces += int(np.count_nonzero(tiles[1:] != tiles[:-1])) + (tiles[0] != last)
            last = tiles[-1]
        r, block = r + block, 2 * block
    return pieces < limit


def prod(values) -> int:
    return int(np.prod(list(values), dtype=np.int64))
