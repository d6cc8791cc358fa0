"""Batch norm over an activation stored channels innermost, computed where its pieces live.

A convolution's output is stored channels innermost (``[N][H][W][C]``, poplin's channel-grouped
``[C1][N][H][W][C2]`` with one group) and each tile holds a run of whole pixels (or, where the
plan splits the output channels, a run of pixels of one channel block). popnn's batch norm works
on that layout as it lies: its statistics are popops reductions over the activations' own mapping
(lib/poplin/Norms.cpp ``normStatistics``: ``popops::reduceWithOutput`` of x and x^2 over every
axis but the channels; the reduction's first stage adds each tile's own elements, one partial per
channel a tile), and its output and gradients are channel ops applied in place where the
activations live (``normWhiten`` / ``normalise``: ``addToChannel`` and ``channelMul``, which
broadcast a per-channel vector along the innermost channel group). Nothing is re-laid out.

Here the activation is seen as its ``(pixels, C)`` matrix; each tile's piece of it is a block of
whole pixel rows (``rows x C``, one contiguous run) or of one channel range (``rows x cb``, rows
``C`` apart). A block is cut into at most a worker's share of vertices, by channel range first
(each vertex keeps all of the tile's rows, so the tile holds one partial per channel) and by rows
where the channels run out. A vertex writes its channels' moments into one slot (row) of the
``(slots, C, 2)`` partials; the slots are then reduced as :func:`softipu.ops.nn._common._sum_rows`
reduces any partials: on each tile first, then across tiles. Channel-plane vertices (one channel
of a sample each, :func:`softipu.ops.nn.norms._plan_planes`) read such an activation an element
per channel-count apart from every tile of the plane's pixels: ResNet-50's third batch norm at
batch 2 took 245,272 exchange regions (a region per element) for its apply alone.

The sums are fp32 in another order than the plane vertices': within the bound of any fp32 sum of
``M`` terms, ``|error| <= (M - 1) * 2**-24 * sum(|x|)`` (principle 6: reductions may reorder).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from softipu.codelets import nn as C
from softipu.dtypes import float32
from softipu.graph.graph import ComputeSet
from softipu.graph.tensor import Tensor
from softipu.ops._tile_blocks import even_runs, matrix_blocks
from softipu.ops.common import OpContext, rows_of, tile_regions
from softipu.ops.indexing.fills import zero as zero_fill
from softipu.ops.nn._common import PLANE_VERTEX_MIN_ELEMENTS, _map_pieces, _sum_rows, _variable

__all__ = ["Pixels", "plan_pixels"]


@dataclass(frozen=True, slots=True)
class Pixels:
    """Vertex ``i`` reads pixel rows ``[m0[i], m0[i] + rows[i])`` and channels ``[c0[i], c0[i] +
    cb[i])`` of the ``(M, C)`` pixel matrix, runs on ``tiles[i]`` and writes its channels' partial
    moments into row ``slot[i]`` of the ``(slots, C, 2)`` partials."""

    shape: tuple[int, int]  # (M, C)
    m0: np.ndarray
    rows: np.ndarray
    c0: np.ndarray
    cb: np.ndarray
    tiles: np.ndarray
    slot: np.ndarray
    chunk: np.ndarray  # the vertex's row chunk in its block (vertices of one chunk step evenly)
    slots: int
    gaps: bool  # some (slot, channel) of the partials no vertex writes (zeroed first)
    slot_tiles: np.ndarray | None  # the tile of each slot row, where each lies on one

    def add(self, ctx: OpContext, cs: ComputeSet, codelet: type, planes: Mapping[str, Tensor],
            channels: Mapping[str, Tensor], partial: Tensor | None = None,
            params: Mapping[str, Any] | None = None) -> None:
        """As :func:`softipu.ops.nn.norms._add_planes`: ``planes`` shaped like x as ``(N, C, P)``
        (stored channels innermost, as x), ``channels`` ``(C, q)`` per-channel tensors,
        ``partial`` the ``(slots, C, 2)`` fp32 partials."""
        _, c = self.shape
        views = {name: pixel_rows(t) for name, t in planes.items()}
        key = self.rows * (c + 1) + self.cb  # one field shape a group
        for value in np.unique(key).tolist():
            group = np.flatnonzero(key == value)
            group = group[np.lexsort((self.m0[group], self.c0[group], self.chunk[group]))]
            for sel in even_runs(self.m0[group] * c + self.c0[group], group):
                rows, cb = int(self.rows[sel[0]]), int(self.cb[sel[0]])
                starts = self.m0[sel] * c + self.c0[sel]
                fields: dict[str, Any] = dict(params or {})
                for name, v in views.items():
                    fields[name] = _block_field(v, starts, rows, cb)
                for name, t in channels.items():
                    q = t.shape[1]
                    fields[name] = rows_of(t.flatten(), self.c0[sel] * q, cb * q)
                if partial is not None:
                    fields["partial"] = rows_of(partial.flatten(), (self.slot[sel] * c + self.c0[sel]) * 2,
                                                cb * 2)
                ctx.graph.add_vertices(cs, codelet, fields, self.tiles[sel])

    def partials(self, ctx: OpContext, suffix: str) -> Tensor:
        """The ``(slots, C, 2)`` fp32 partials, each vertex's piece on its tile (zeroed where no
        vertex writes: a Fill where each element lives, nothing exchanged)."""
        _, c = self.shape
        t = _variable(ctx, float32, (self.slots, c, 2), suffix)
        if self.gaps:  # each slot row is one block's: whole on its tile
            ctx.graph.set_tile_mappings(t, self.slot_tiles)
            zero_fill(ctx.graph, t, ctx.prog, name=f"{ctx.name}/{suffix}/zero")
        else:
            _map_pieces(ctx.graph, t.flatten(), (self.slot * c + self.c0) * 2, self.cb * 2, self.tiles)
        return t

    def sums(self, ctx: OpContext, partial: Tensor) -> Tensor:
        """The partials reduced over slots: ``(C * 2,)`` fp32 ``[s1, s2]`` pairs. With more slots
        than ``2 sqrt(tiles)`` (popops' bound on the fan-in it sends straight to the output,
        ops/reduce_stages.py ``needs_intermediate``), runs of about ``sqrt(slots)`` slots are
        first added, each channel range on the tile of the run's first slot (popops'
        intermediate stage), so no tile receives more than about ``sqrt(slots)`` rows: with a
        slot a tile, one column block's tile of a ResNet-50 bottleneck's batch norm at batch 18
        received 1,471 exchange regions."""
        _, c = self.shape
        rows = partial.reshape(self.slots, 2 * c)
        if self.slots <= 2 * np.sqrt(ctx.graph.num_tiles):
            return _sum_rows(ctx, rows, self.slot_tiles, grain=2)
        ranges = np.unique(np.stack([self.c0, self.cb]), axis=1)
        lo, width = ranges
        if self.gaps or np.any(lo[1:] < lo[:-1] + width[:-1]):
            lo, width = np.zeros(1, np.int64), np.full(1, c, np.int64)
        rows, row_tiles = _intermediate(ctx, rows, lo * 2, width * 2)
        return _sum_rows(ctx, rows, row_tiles, grain=2)


def _intermediate(ctx: OpContext, rows: Tensor, lo: np.ndarray, width: np.ndarray):
    """``rows`` ``(S, w)`` added in runs of ``ceil(sqrt(S))`` consecutive rows, column range ``[lo[j],
    lo[j] + width[j])`` by column range, each on the tile holding the run's first row there:
    ``(ceil(S / run), w)`` rows (and their tiles where each lies on one tile, else None)."""
    s, w = rows.shape
    run = int(np.ceil(np.sqrt(s)))
    first = np.arange(0, s, run)
    count = np.minimum(run, s - first)
    out = _variable(ctx, float32, (first.size, w), "reduce/intermediate")
    mapping = ctx.graph.resolved_mapping(float32)
    g, j = (a.ravel() for a in np.meshgrid(np.arange(first.size), np.arange(lo.size), indexing="ij"))
    flat = rows.flatten()
    tiles = mapping.tiles_of(flat.offset + (first[g] * w + lo[j]) * flat.strides[0]).astype(np.int64)
    _map_pieces(ctx.graph, out.flatten(), g * w + lo[j], width[j], tiles)
    cs = ctx.compute_set("reduce/intermediate")
    out_flat = out.flatten()
    for k in np.unique(count).tolist():
        for n in np.unique(width).tolist():
            pick = np.flatnonzero((count[g] == k) & (width[j] == n))
            for sel in even_runs(first[g[pick]] * w + lo[j[pick]], pick):
                at = first[g[sel]] * w + lo[j[sel]]
                step = int(at[1] - at[0]) if sel.size > 1 else 0
                block = Tensor(rows.graph, float32, (sel.size, k, n), flat.offset + int(at[0]), (step, w, 1))
                ctx.graph.add_vertices(cs, C.ReduceAddColumns, {
                    "partial": block.reshape(sel.size, k * n),
                    "out": rows_of(out_flat, g[sel] * w + lo[j[sel]], n)}, tiles[sel])
    ctx.execute(cs)
    one = lo.size == 1
    return out, (tiles if one else None)


def pixel_rows(t: Tensor) -> Tensor | None:
    """The ``(N, C, P)`` tensor's ``(N * P, C)`` pixel matrix where it is stored channels innermost
    (one dense row-major block: rows ``C`` apart, channels adjacent), else None."""
    n, c, p = t.shape
    if not t.is_strided:
        return None
    v = t.transpose(0, 2, 1).reshape(n * p, c)
    return v if v.is_strided and tuple(v.strides) == (c, 1) else None


def plan_pixels(ctx: OpContext, x3: Tensor, *others: Tensor) -> Pixels | None:
    """The vertices of a batch norm of ``x3`` ``(N, C, P)`` (and ``others`` of its shape, read or
    written beside it) where every one is stored channels innermost and ``x3`` is mapped to
    tiles; None otherwise (planes of one channel then: an NCHW activation, a vector)."""
    n, c, p = x3.shape
    if c < 2 or p < 2 or any(pixel_rows(t) is None for t in (x3, *others)):
        return None
    v = pixel_rows(x3)
    starts, lengths, tiles = tile_regions(ctx.graph, v)
    if tiles.size == 0 or tiles.min() < 0:
        return None
    m0, rows, c0, cb, tile = matrix_blocks(starts, lengths, tiles, c)
    target = ctx.graph.target
    workers, vw = target.workers_per_tile, target.vector_width(x3.dtype.itemsize)
    # Per block: channel chunks (kc, each >= a vector) then row chunks, up to `workers` vertices.
    want = np.clip(rows * cb // PLANE_VERTEX_MIN_ELEMENTS, 1, workers)
    kc = np.maximum(1, np.minimum(want, cb // vw))
    cw = np.minimum(cb, vw * -(-cb // (kc * vw)))  # whole vectors a chunk
    kc = -(-cb // cw)
    kr = np.maximum(1, np.minimum(rows, want // kc))
    rr = -(-rows // kr)
    kr = -(-rows // rr)
    # Slots: a block's row chunks, numbered within its channel range. Ranges that are disjoint,
    # cover every channel and have as many slots each (whole pixels, or an even channel split)
    # share the slot numbers; others (a block cut inside a pixel) each get slots of their own.
    keys, group = np.unique(np.stack([c0, cb]), axis=1, return_inverse=True)
    group = group.reshape(-1)
    counts = np.bincount(group, weights=kr).astype(np.int64)
    order = np.lexsort((m0, group))
    within = np.empty(m0.size, np.int64)
    ends = np.cumsum(kr[order])
    within[order] = ends - kr[order] - np.repeat(np.cumsum(counts) - counts, np.bincount(group))
    lo, width = keys
    shared = bool(np.all(counts == counts[0]) and int(width.sum()) == c
                  and np.all(lo[1:] >= lo[:-1] + width[:-1]))
    first = within if shared else within + (np.cumsum(counts) - counts)[group]
    slots = int(counts[0]) if shared else int(counts.sum())
    # the vertices: block b's (row chunk i, channel chunk j)
    per = kr * kc
    b = np.repeat(np.arange(m0.size), per)
    k = np.arange(b.size) - np.repeat(np.cumsum(per) - per, per)
    i, j = k // kc[b], k % kc[b]
    v_m0 = m0[b] + i * rr[b]
    v_rows = np.minimum(rr[b], rows[b] - i * rr[b])
    v_c0 = c0[b] + j * cw[b]
    v_cb = np.minimum(cw[b], cb[b] - j * cw[b])
    v_slot = first[b] + i
    slot_tiles = np.full(slots, -1, np.int64)
    slot_tiles[v_slot] = tile[b]
    one_tile = bool(np.all(slot_tiles[v_slot] == tile[b]))
    return Pixels((n * p, c), v_m0, v_rows, v_c0, v_cb, tile[b], v_slot, i, slots, not shared,
                  slot_tiles if one_tile else None)


def _block_field(v: Tensor, starts: np.ndarray, rows: int, cb: int) -> Tensor:
    """Each vertex's ``(rows, cb)`` block of the pixel matrix ``v`` (rows ``C`` apart), flat: a run
    of ``rows * C`` for whole pixels, else one strided view over vertices whose starts step evenly."""
    c = v.shape[1]
    if cb == c:
        return rows_of(v.flatten(), starts, rows * c)
    step = int(starts[1] - starts[0]) if starts.size > 1 else 0
    block = Tensor(v.graph, v.dtype, (starts.size, rows, cb), v.offset + int(starts[0]), (step, c, 1))
    return block.reshape(starts.size, rows * cb)
