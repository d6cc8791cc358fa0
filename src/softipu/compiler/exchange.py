"""The exchange plan: which bytes each tile sends and receives in a step, and what that costs.

Data moves when a vertex reads elements that live on another tile (they are received before
compute) or writes an Output that lives elsewhere (sent after compute), and when a Copy's source
and destination elements sit on different tiles. Everything is computed on address intervals:

* an interval a tile needs is split at the mapping's interval boundaries into pieces with one
  home tile each (usually one piece per vertex field row);
* a tile **receives** the union of the remote pieces it needs (an element several of its vertices
  read arrives once);
* a tile **sends** the union of its pieces anyone else needs (the exchange multicasts: one send
  reaches every tile that listens);
* two tiles of a supertile share one exchange bus, so a tile whose partner is idle moves data at
  twice the per-tile rate (ipu-facts.md §1);
* pieces crossing IPUs also travel on IPU-Links, routed over the ladder of the replica's IPUs
  (``softipu.target.links.exchange_link_cycles``: hops, and contention per link group).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from softipu.compiler.conflicts import field_intervals
from softipu.compiler.dense import FieldRows, dense_clusters
from softipu.compiler.executable import CompiledComputeSet
from softipu.dtypes import DType
from softipu.graph.mapping import ResolvedMapping
from softipu.graph.tensor import Tensor
from softipu.graph.vertex import Direction
from softipu.target import Target
from softipu.target.links import exchange_link_cycles

__all__ = ["Transfers", "Traffic", "compute_set_traffic", "compute_set_transfers", "copy_transfers",
           "copy_traffic", "traffic", "union_per_key", "exchange_cycles"]


@dataclass(slots=True)
class Transfers:
    """Columns of address intervals moving from one tile to another, per dtype."""

    starts: list[np.ndarray]
    ends: list[np.ndarray]
    src: list[np.ndarray]
    dst: list[np.ndarray]
    dtypes: list[DType]
    # How many pieces contiguous on both sides each interval stands for (None: one each): a
    # transposing copy's interval is contiguous in the source only, one piece per element.
    pieces: list[np.ndarray | None]

    @classmethod
    def empty(cls) -> Transfers:
        return cls([], [], [], [], [], [])

    def add(self, starts, ends, src, dst, dtype: DType, pieces: np.ndarray | None = None) -> None:
        moving = src != dst
        if moving.any():
            self.starts.append(starts[moving])
            self.ends.append(ends[moving])
            self.src.append(src[moving])
            self.dst.append(dst[moving])
            self.dtypes.append(dtype)
            self.pieces.append(None if pieces is None else pieces[moving])

    def pieces_per_tile(self, num_tiles: int) -> tuple[np.ndarray, np.ndarray]:
        """(pieces each tile sends, pieces each tile receives), counting pieces contiguous on both
        sides of the move."""
        send = np.zeros(num_tiles, np.int64)
        recv = np.zeros(num_tiles, np.int64)
        for src, dst, pieces in zip(self.src, self.dst, self.pieces, strict=True):
            send += np.bincount(src, weights=pieces, minlength=num_tiles).astype(np.int64)
            recv += np.bincount(dst, weights=pieces, minlength=num_tiles).astype(np.int64)
        return send, recv

    def per_dtype(self):
        """``(starts, ends, src, dst, itemsize)`` of all intervals of each dtype's address space."""
        for dtype in dict.fromkeys(self.dtypes):
            pick = [i for i, d in enumerate(self.dtypes) if d is dtype]
            yield (*(np.concatenate([col[i] for i in pick]) for col in
                     (self.starts, self.ends, self.src, self.dst)), dtype.itemsize)


@dataclass(frozen=True, slots=True, eq=False)
class Traffic:
    """Bytes and contiguous regions each tile sends and receives in one step."""

    send_bytes: np.ndarray  # int64 (tiles,)
    recv_bytes: np.ndarray
    send_regions: np.ndarray
    recv_regions: np.ndarray
    ipu_out_bytes: np.ndarray  # int64 (ipus,): bytes leaving each IPU on IPU-Links
    ipu_in_bytes: np.ndarray
    # Bytes each supertile's shared bus receives: partners receiving the same data share it.
    supertile_recv_bytes: np.ndarray | None = None
    # int64 (ipus, ipus): bytes from IPU a to IPU b, routed over the IPU-Link ladder when priced.
    ipu_pair_bytes: np.ndarray | None = None

    @property
    def total_bytes(self) -> int:
        return int(self.recv_bytes.sum())

    @property
    def inter_ipu_bytes(self) -> int:
        return int(self.ipu_out_bytes.sum())


def split_by_mapping(starts: np.ndarray, ends: np.ndarray, mapping: ResolvedMapping):
    """Pieces of each interval that lie on one tile: (starts, ends, tiles, parent index)."""
    if starts.size == 0 or mapping.starts.size == 0:
        z = np.zeros(0, np.int64)
        return z, z, z.astype(np.int32), z
    k0, k1 = _intervals_holding(mapping.starts, starts, ends - 1)
    k0 = np.maximum(k0, 0)
    count = k1 - k0 + 1
    if np.all(count == 1):
        return starts, ends, mapping.tiles[k0], np.arange(starts.size)
    parent = np.repeat(np.arange(starts.size), count)
    offset = np.arange(parent.size) - np.repeat(np.cumsum(count) - count, count)
    k = k0[parent] + offset
    p_starts = np.maximum(starts[parent], mapping.starts[k])
    p_ends = np.minimum(ends[parent], mapping.ends[k])
    return p_starts, p_ends, mapping.tiles[k], parent


def _intervals_holding(mapping_starts: np.ndarray, first: np.ndarray, last: np.ndarray):
    """For each address of ``first`` and of ``last``: the index of the last mapping interval
    starting at or before it (-1 before the first), as ``searchsorted(..., side="right") - 1``.

    Where the addresses are dense in their span (a copy cut into single elements, say), one
    table over the span answers all of them, cheaper than a binary search each.
    """
    lo = min(int(first.min()), int(last.min()))  # an empty interval's last precedes its first
    hi = max(int(first.max()), int(last.max())) + 1
    span = hi - lo
    if span > 8 * (first.size + last.size):
        return (np.searchsorted(mapping_starts, first, side="right") - 1,
                np.searchsorted(mapping_starts, last, side="right") - 1)
    a = max(int(np.searchsorted(mapping_starts, lo, side="right")) - 1, 0)
    b = int(np.searchsorted(mapping_starts, hi - 1, side="right"))
    marks = np.zeros(span, np.int32)  # int32 halves the passes' bytes over the span
    marks[np.maximum(mapping_starts[a:b] - lo, 0)] = 1
    index = np.cumsum(marks, dtype=np.int64 if b >= 1 << 31 else np.int32)
    index += a - 1
    return index[first - lo], index[last - lo]


def compute_set_traffic(compiled: CompiledComputeSet, mappings: dict[DType, ResolvedMapping],
                        target: Target) -> Traffic:
    """:func:`traffic` of :func:`compute_set_transfers`, with the fields' dense address clusters
    counted per address (:func:`softipu.compiler.dense.dense_clusters`) instead of listed piece
    by piece: the same figures."""
    sparse: list[tuple[DType, FieldRows]] = []
    dense = []
    for dtype, rows in _field_rows(compiled).items():
        counts, rest = dense_clusters(rows, mappings[dtype], target) if target.num_ipus == 1 else (None, rows)
        sparse += [(dtype, r) for r in rest]
        if counts is not None:
            item = dtype.itemsize
            dense.append((counts[0] * item, counts[1] * item, counts[2], counts[3], counts[4] * item))
    moved = traffic(_transfers(sparse, mappings), target)
    if not dense:
        return moved
    send, recv, send_regions, recv_regions, st_recv = (sum(c) for c in zip(*dense, strict=True))
    return Traffic(moved.send_bytes + send, moved.recv_bytes + recv,
                   moved.send_regions + send_regions, moved.recv_regions + recv_regions,
                   moved.ipu_out_bytes, moved.ipu_in_bytes, moved.supertile_recv_bytes + st_recv,
                   moved.ipu_pair_bytes)


def compute_set_transfers(compiled: CompiledComputeSet,
                          mappings: dict[DType, ResolvedMapping]) -> Transfers:
    """Remote reads (home tile -> vertex tile) and remote writes (vertex tile -> home tile).

    Every field row of every group is collected first, so the mapping is searched once per
    dtype and direction, however many vertex groups the compute set has.
    """
    return _transfers([(dtype, r) for dtype, rows in _field_rows(compiled).items() for r in rows], mappings)


def _field_rows(compiled: CompiledComputeSet) -> dict[DType, list[FieldRows]]:
    """Per dtype, each field tensor's rows."""
    fields: dict[DType, list[FieldRows]] = {}
    ramp = np.arange(max((g.num_vertices for g in compiled.groups), default=0), dtype=np.int64)
    for group in compiled.groups:
        for name, f in group.field_items(Direction.INPUT, Direction.OUTPUT, Direction.INOUT):
            for t in group.tensors(name):
                rows, n = t.shape
                if rows == 0 or n == 0:
                    continue
                if t.is_strided and (n == 1 or abs(t.strides[1]) == 1):  # a row an interval, in order
                    starts = t.offset + ramp[:rows] * t.strides[0]
                    if n > 1 and t.strides[1] < 0:
                        starts -= n - 1
                    ends, tiles = starts + n, group.tiles
                    lo, hi = min(int(starts[0]), int(starts[-1])), max(int(starts[0]), int(starts[-1])) + n
                else:
                    starts, ends, row = field_intervals(t)
                    tiles = group.tiles[row]
                    lo, hi = int(starts.min()), int(ends.max())
                if starts.size > 512:  # join a long field at once, before it is held with the rest
                    starts, ends, tiles = _joined(starts, ends, tiles)
                fields.setdefault(t.dtype, []).append(FieldRows(
                    starts, ends, tiles, f.direction.reads, f.direction.writes, lo, hi))
    return fields


def _transfers(rows: list[tuple[DType, FieldRows]], mappings: dict[DType, ResolvedMapping]) -> Transfers:
    """The moving pieces of field rows."""
    parts: dict[tuple[DType, bool], tuple[list, list, list]] = {}
    for dtype, r in rows:
        for side, wanted in ((True, r.reads), (False, r.writes)):
            if wanted:
                cols = parts.setdefault((dtype, side), ([], [], []))
                cols[0].append(r.starts)
                cols[1].append(r.ends)
                cols[2].append(r.tiles)
    out = Transfers.empty()
    for (dtype, reads), cols in parts.items():
        starts, ends, tiles = _joined(*(np.concatenate(c) for c in cols))
        # Vertices of one tile touching the same row (a broadcast bias, say) need it once:
        # split each distinct (tile, interval) only once.
        starts, ends, tiles = _distinct(starts, ends, tiles)
        p_starts, p_ends, home, parent = split_by_mapping(starts, ends, mappings[dtype])
        vertex_tile = tiles[parent]
        if reads:
            out.add(p_starts, p_ends, home, vertex_tile, dtype)
        else:
            out.add(p_starts, p_ends, vertex_tile, home, dtype)
    return out


def _joined(starts: np.ndarray, ends: np.ndarray, tiles: np.ndarray):
    """Field rows as (starts, ends, tiles), a row that continues the one before on the same tile
    joined to it (a vertex's row and its neighbour's are one read): the step's interval count
    then follows the tiles' pieces, not the vertex count."""
    tiles = tiles.astype(np.int64, copy=False)
    if starts.size < 2:
        return starts, ends, tiles
    join = (starts[1:] == ends[:-1]) & (tiles[1:] == tiles[:-1])
    if not join.any():
        return starts, ends, tiles
    head = np.flatnonzero(np.concatenate(([True], ~join)))
    last = np.concatenate((head[1:] - 1, [starts.size - 1]))
    return starts[head], ends[last], tiles[head]


def _distinct(starts: np.ndarray, ends: np.ndarray, tiles: np.ndarray):
    """The (tile, interval) rows with repeats dropped (those that sort next to each other by tile
    and start: the unions after do not need every repeat gone, only most)."""
    if starts.size < 2:
        return starts, ends, tiles
    lo = int(starts.min())
    key = tiles.astype(np.int64) * (int(ends.max()) - lo + 1) + (starts - lo)
    order = np.argsort(key, kind="stable")  # one key, not a three-key lexsort
    k, e = key[order], ends[order]
    keep = np.concatenate(([True], (k[1:] != k[:-1]) | (e[1:] != e[:-1])))
    order = order[keep]
    return starts[order], ends[order], tiles[order]


def copy_transfers(src: Tensor, dst: Tensor, mappings: dict[DType, ResolvedMapping], num_tiles: int):
    """(transfers between tiles, on-tile bytes per tile) of ``Copy(src, dst)``.

    Element ``i`` of ``src`` goes to element ``i`` of ``dst``: the copy is cut where either
    side's contiguous runs end and where either side's mapping changes tile, so a copy costs
    work per piece, not per element.
    """
    mapping = mappings[src.dtype]
    item = src.dtype.itemsize
    runs = _source_runs(src, dst)
    pieces = None
    if runs is not None:  # long source runs; the destination steps evenly along each
        starts, ends, src_tile, dst_tile = _split_progressions(*runs, mapping)
        pieces = ends - starts  # never contiguous in the destination: a piece per element
    else:
        s_start, d_start, length = _paired_runs(src, dst)
        # Cut at the source's tile boundaries, then at the destination's.
        p0, p1, p_tile, parent = split_by_mapping(s_start, s_start + length, mapping)
        d0 = d_start[parent] + (p0 - s_start[parent])
        q0, q1, dst_tile, parent = split_by_mapping(d0, d0 + (p1 - p0), mapping)
        starts = p0[parent] + (q0 - d0[parent])
        ends = starts + (q1 - q0)
        src_tile = p_tile[parent]  # each piece lies inside one source piece
    out = Transfers.empty()
    out.add(starts, ends, src_tile, dst_tile, src.dtype, pieces)
    same = src_tile == dst_tile
    local = np.bincount(src_tile[same], weights=(ends - starts)[same] * item,
                        minlength=num_tiles)
    return out, local


def _source_runs(src: Tensor, dst: Tensor):
    """(src starts, run length, dst starts, dst step) of a copy walked in the order that makes
    the source's runs longest, when a destination that is not contiguous with them steps evenly
    along each (a transposed view copied into place, say); None when that does not apply.

    A transfer is a source interval with one source tile and one destination tile: the
    destination need not be contiguous along it, only on one tile, so a transposing copy is
    cut where either side's tile changes, not at every element.
    """
    if not (src.is_strided and dst.is_strided) or src.numel < 2:
        return None
    axes = [k for k in range(src.ndim) if src.shape[k] > 1]
    if any(src.strides[k] == 1 and dst.strides[k] == 1 for k in axes):
        return None  # runs contiguous on both sides exist (an im2col window's row): pair them
    inner = min(axes, key=lambda k: abs(src.strides[k]))
    if src.strides[inner] != 1 or dst.strides[inner] == 1:
        return None  # no contiguous source axis, or the paired runs are long already
    run_axes, length, step = [inner], src.shape[inner], dst.strides[inner]
    grown = True
    while grown:  # axes that continue the run on both sides join it
        grown = False
        for k in axes:
            if k not in run_axes and src.strides[k] == length and dst.strides[k] == step * length:
                run_axes.append(k)
                length *= src.shape[k]
                grown = True
    outer = [k for k in axes if k not in run_axes]

    def outer_starts(t: Tensor) -> np.ndarray:
        view = Tensor(t.graph, t.dtype, tuple(t.shape[k] for k in outer), t.offset,
                      tuple(t.strides[k] for k in outer))
        return view.addresses().reshape(-1)

    return outer_starts(src), length, outer_starts(dst), step


def copy_traffic(src: Tensor, dst: Tensor, mappings: dict[DType, ResolvedMapping], target: Target):
    """(traffic, on-tile bytes per tile) of a one-to-one transposing ``Copy(src, dst)`` on one
    IPU, counted per tile without listing its pieces; None where it does not apply (then
    :func:`copy_transfers`). Its regions are its pieces contiguous on both sides: one per element.

    Each source element moves once, so a tile sends the elements it holds whose destination is
    on another tile and receives the destination elements it holds whose source is elsewhere;
    only the elements staying on their tile need finding: each source run's destination
    progression is met with its own tile's few mapping intervals.
    """
    if target.num_ipus > 1 or src.repeats_elements() or dst.repeats_elements():
        return None
    if src.slabs is None and src.index is not None:  # its addresses exist already
        flat = src.index.reshape(-1)
        if np.count_nonzero(np.diff(flat) != 1) < flat.size // 8:
            return None  # long runs: listing its pieces is cheaper than counting elements
        return _counted_by_element(src, dst, mappings[src.dtype], target)
    runs = _source_runs(src, dst)
    if runs is None:
        return None
    s0, length, d0, step = runs
    mapping, tiles, item = mappings[src.dtype], target.num_tiles, src.dtype.itemsize
    p0, p1, s_tile, parent = split_by_mapping(s0, s0 + length, mapping)
    held = np.bincount(s_tile, weights=p1 - p0, minlength=tiles).astype(np.int64)
    d_starts, d_lengths = dst.runs()
    q0, q1, d_tile, _ = split_by_mapping(d_starts, d_starts + d_lengths, mapping)
    landing = np.bincount(d_tile, weights=q1 - q0, minlength=tiles).astype(np.int64)
    # Elements staying put: a source piece on tile t against tile t's own intervals within the
    # span of its destination progression (intervals ordered by tile, then address).
    k0, k1, base = p0 - s0[parent], p1 - s0[parent], d0[parent]
    ends_at = base + np.where(step > 0, k0, k1 - 1) * step, base + np.where(step > 0, k1 - 1, k0) * step
    by_tile, keys, span = mapping.tile_order()
    tile_key = s_tile.astype(np.int64) * span
    a = np.maximum(np.searchsorted(keys, tile_key + ends_at[0], side="right") - 1,
                   np.searchsorted(keys, tile_key, side="left"))
    count = np.maximum(np.searchsorted(keys, tile_key + ends_at[1], side="right") - a, 0)
    piece = np.repeat(np.arange(p0.size), count)
    j = by_tile[np.repeat(a, count) + np.arange(piece.size) - np.repeat(np.cumsum(count) - count, count)]
    k_lo, k_hi = _progression_range(base[piece], step, mapping.starts[j], mapping.ends[j])
    k0, k1 = k0[piece], k1[piece]
    stay = np.maximum(np.minimum(k_hi, k1) - np.maximum(k_lo, k0), 0)
    local = np.bincount(s_tile[piece], weights=stay, minlength=tiles).astype(np.int64)
    sent, received = held - local, landing - local  # elements, and pieces: one each
    supertiles = -(-tiles // target.tiles_per_supertile)
    st_recv = np.bincount(np.arange(tiles) // target.tiles_per_supertile, weights=received * item,
                          minlength=supertiles).astype(np.int64)
    none = np.zeros(1, np.int64)
    return Traffic(sent * item, received * item, sent, received, none, none.copy(), st_recv), local * item


def _counted_by_element(src: Tensor, dst: Tensor, mapping: ResolvedMapping, target: Target):
    """:func:`copy_traffic` of a gathering copy (an indexed source), from its addresses: a piece
    is a run of elements contiguous on both sides on one pair of tiles."""
    tiles, item = target.num_tiles, src.dtype.itemsize
    a_src, a_dst = src.index.reshape(-1), dst.addresses().reshape(-1)
    s_tile, d_tile = mapping.tiles_of(a_src), mapping.tiles_of(a_dst)
    moving = s_tile != d_tile
    new_piece = np.empty(a_src.size, bool)
    new_piece[0] = True
    new_piece[1:] = ((np.diff(a_src) != 1) | (np.diff(a_dst) != 1) | (s_tile[1:] != s_tile[:-1])
                     | (d_tile[1:] != d_tile[:-1]))
    first = new_piece & moving
    sent = np.bincount(s_tile[moving], minlength=tiles).astype(np.int64) * item
    received = np.bincount(d_tile[moving], minlength=tiles).astype(np.int64) * item
    local = np.bincount(s_tile[~moving], minlength=tiles).astype(np.int64) * item
    supertiles = -(-tiles // target.tiles_per_supertile)
    st_recv = np.bincount(np.arange(tiles) // target.tiles_per_supertile, weights=received,
                          minlength=supertiles).astype(np.int64)
    regions = (np.bincount(s_tile[first], minlength=tiles).astype(np.int64),
               np.bincount(d_tile[first], minlength=tiles).astype(np.int64))
    none = np.zeros(1, np.int64)
    return Traffic(sent, received, *regions, none, none.copy(), st_recv), local


def _progression_range(base: np.ndarray, step: int, lo: np.ndarray, hi: np.ndarray):
    """The ``k`` with ``lo <= base + k * step < hi``, as ``[k_lo, k_hi)`` (``step`` != 0)."""
    if step > 0:
        return -((base - lo) // step), -((base - hi) // step)
    return (base - hi) // -step + 1, (base - lo) // -step + 1


def _split_progressions(s0: np.ndarray, length: int, d0: np.ndarray, step: int,
                        mapping: ResolvedMapping):
    """(starts, ends, src tiles, dst tiles) of source runs ``[s0, s0 + length)`` whose element
    ``k`` goes to ``d0 + k * step``: cut where the source's tile changes and where the
    destination's does (each destination mapping interval a progression crosses is one piece)."""
    p0, p1, s_tile, parent = split_by_mapping(s0, s0 + length, mapping)
    k0, k1, base = p0 - s0[parent], p1 - s0[parent], d0[parent]
    first, last = base + k0 * step, base + (k1 - 1) * step
    i0, i1 = _intervals_holding(mapping.starts, np.minimum(first, last), np.maximum(first, last))
    i0 = np.maximum(i0, 0)
    count = np.maximum(i1 - i0 + 1, 0)
    piece = np.repeat(np.arange(p0.size), count)
    j = i0[piece] + np.arange(piece.size) - np.repeat(np.cumsum(count) - count, count)
    k_lo, k_hi = _progression_range(base[piece], step, mapping.starts[j], mapping.ends[j])
    k_lo, k_hi = np.maximum(k_lo, k0[piece]), np.minimum(k_hi, k1[piece])
    keep = k_lo < k_hi
    piece, k_lo, k_hi, d_tile = piece[keep], k_lo[keep], k_hi[keep], mapping.tiles[j[keep]]
    # Neighbouring cuts of one piece that land on the same destination tile are one transfer.
    if piece.size > 1:
        touch = (k_hi[:-1] == k_lo[1:]) | (k_lo[:-1] == k_hi[1:])
        join = (piece[1:] == piece[:-1]) & (d_tile[1:] == d_tile[:-1]) & touch
        head = np.flatnonzero(np.concatenate(([True], ~join)))
        k_lo, k_hi = np.minimum.reduceat(k_lo, head), np.maximum.reduceat(k_hi, head)
        piece, d_tile = piece[head], d_tile[head]
    starts = s0[parent[piece]] + k_lo
    return starts, starts + (k_hi - k_lo), s_tile[piece], d_tile


def _run_length(shape: tuple[int, ...], strides: tuple[int, ...]) -> int:
    """Elements of the run of consecutive addresses the innermost axes of a strided view make."""
    run = 1
    for size, stride in zip(reversed(shape), reversed(strides), strict=True):
        if size != 1 and stride != run:
            break
        run *= size
    return run


def _paired_order(src: Tensor, dst: Tensor) -> tuple[Tensor, Tensor]:
    """``src`` and ``dst`` with their axes permuted alike so the runs contiguous on BOTH sides are
    longest (element ``i`` of one still meets element ``i`` of the other: the same copy).

    A copy's exchange region is a run contiguous in source and destination; the order the view
    happens to list its axes in does not change which element goes where. An im2col copy listed
    kernel-position first, channels innermost, is cut into runs of one pixel's ``Cg`` channels;
    walked pixel first, a whole kernel row (``kw * Cg`` elements, contiguous in an NHWC input and
    in the column slab) is one region. Of the orders that sort either side's strides, the one with
    the longest shorter run wins (the pieces are ``numel / min(src run, dst run)``)."""
    if src.ndim < 2 or not (src.is_strided or dst.is_strided):
        return src, dst
    if not (src.is_strided and dst.is_strided):
        return _strided_side_order(src, dst)
    axes = [k for k in range(src.ndim) if src.shape[k] > 1]
    best, best_run = None, _paired_run(src, dst, list(range(src.ndim)))
    for side in (dst, src):
        order = sorted(axes, key=lambda k, t=side: -abs(t.strides[k]))
        run = _paired_run(src, dst, order)
        if run > best_run:
            best, best_run = order, run
    if best is None:
        return src, dst

    def permuted(t: Tensor) -> Tensor:
        return Tensor(t.graph, t.dtype, tuple(t.shape[k] for k in best), t.offset,
                      tuple(t.strides[k] for k in best))

    return permuted(src), permuted(dst)


def _strided_side_order(src: Tensor, dst: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`_paired_order` where one side is indexed (a matmul operand's column slabs, a
    ``createWeights`` layout): both walked in the order that sorts the strided side's strides, when
    that makes its runs longer. A weight update written from a gradient laid out ``(kh, kw, C, O)``
    into the weights' slabs, listed ``(O, C, kh, kw)``, is contiguous on neither side in that order,
    one piece per element; walked ``(kh, kw, C, O)`` its pieces are the slabs' rows."""
    strided = src if src.is_strided else dst
    axes = [k for k in range(src.ndim) if src.shape[k] > 1]
    order = sorted(axes, key=lambda k: -abs(strided.strides[k]))
    order += [k for k in range(src.ndim) if k not in order]  # size-1 axes, innermost
    if order == list(range(src.ndim)) or _paired_run(strided, strided, order) <= \
            _paired_run(strided, strided, list(range(src.ndim))):
        return src, dst
    return src.transpose(order), dst.transpose(order)


def _paired_run(src: Tensor, dst: Tensor, order: list[int]) -> int:
    return min(_run_length(tuple(t.shape[k] for k in order), tuple(t.strides[k] for k in order))
               for t in (src, dst))


def _paired_runs(src: Tensor, dst: Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(src starts, dst starts, lengths) of pieces contiguous on both sides of a copy."""
    if src.is_contiguous() and dst.is_contiguous():
        n = np.array([src.numel], np.int64)
        return np.array([src.offset], np.int64), np.array([dst.offset], np.int64), n
    src, dst = _paired_order(src, dst)
    (ss, sl), (ds, dl) = src.element_runs(), dst.element_runs()
    s_edge, d_edge = np.cumsum(sl) - sl, np.cumsum(dl) - dl  # first element of each run
    if ss.size == ds.size and np.array_equal(sl, dl):
        return ss, ds, sl
    cuts = np.sort(np.concatenate((s_edge, d_edge)), kind="stable")  # merges the two sorted runs
    cuts = cuts[np.concatenate(([True], cuts[1:] != cuts[:-1]))]
    lengths = np.diff(np.concatenate((cuts, [src.numel])))
    si = np.searchsorted(s_edge, cuts, side="right") - 1
    di = np.searchsorted(d_edge, cuts, side="right") - 1
    return ss[si] + (cuts - s_edge[si]), ds[di] + (cuts - d_edge[di]), lengths


def union_per_key(keys: np.ndarray, starts: np.ndarray, ends: np.ndarray, num_keys: int,
                  by_start: np.ndarray | Callable[[], np.ndarray] | None = None):
    """Per key: total length of the union of its intervals, and how many regions that union has.

    ``by_start``: the intervals' order by start (``argsort(starts, kind="stable")``), or a function
    giving it, when the caller has it for several keyings of the same intervals: a tile-sized key
    is then ordered by a radix sort of 16-bit keys instead of a comparison sort of 64-bit ones.
    Intervals already in (key, start) order (a read field's pieces listed tile by tile, say) are
    not sorted at all: the unions do not depend on the order of intervals with equal starts.
    """
    if starts.size == 0:
        z = np.zeros(num_keys, np.int64)
        return z, z.copy()
    span = int(ends.max()) + 1
    s = keys.astype(np.int64) * span + starts  # keys never overlap after this shift
    e = keys.astype(np.int64) * span + ends
    if s.size > 1 and not bool((s[1:] >= s[:-1]).all()):
        if by_start is not None and num_keys <= np.iinfo(np.int16).max:
            by_start = by_start() if callable(by_start) else by_start
            order = by_start[np.argsort(keys[by_start].astype(np.int16), kind="stable")]
        else:
            order = np.argsort(s, kind="stable")
        s, e = s[order], e[order]
    reach = np.maximum.accumulate(e)
    head = np.concatenate(([True], s[1:] > reach[:-1]))
    first = np.flatnonzero(head)
    seg_start = s[first]
    seg_end = np.maximum.reduceat(e, first)
    seg_key = seg_start // span
    length = np.bincount(seg_key, weights=seg_end - seg_start, minlength=num_keys)
    regions = np.bincount(seg_key, minlength=num_keys)
    return length.astype(np.int64), regions.astype(np.int64)


def traffic(transfers: Transfers, target: Target, extra_recv: np.ndarray | None = None) -> Traffic:
    """Per-tile bytes and regions of a step's transfers (``extra_recv``: e.g. host data)."""
    tiles, ipus = target.num_tiles, target.num_ipus
    send = np.zeros(tiles, np.int64)
    recv = np.zeros(tiles, np.int64) if extra_recv is None else extra_recv.astype(np.int64)
    send_regions = np.zeros(tiles, np.int64)
    recv_regions = np.zeros(tiles, np.int64)
    ipu_out = np.zeros(ipus, np.int64)
    ipu_in = np.zeros(ipus, np.int64)
    ipu_pairs = np.zeros((ipus, ipus), np.int64)
    supertiles = -(-tiles // target.tiles_per_supertile)
    st_recv = np.bincount(np.arange(tiles) // target.tiles_per_supertile, weights=recv,
                          minlength=supertiles).astype(np.int64)
    # One union per dtype: a tile receives an element once however many fields of the step
    # read it, and sends it once however many tiles listen.
    for starts, ends, src, dst, item in transfers.per_dtype():
        by_start = _Once(lambda starts=starts: np.argsort(starts, kind="stable"))  # if one needs it
        length, regions = union_per_key(src, starts, ends, tiles, by_start)
        send += length * item
        send_regions += regions
        length, regions = union_per_key(dst, starts, ends, tiles, by_start)
        recv += length * item
        recv_regions += regions
        length, _ = union_per_key(dst // target.tiles_per_supertile, starts, ends, supertiles, by_start)
        st_recv += length * item
        if ipus > 1:
            src_ipu, dst_ipu = src // target.tiles_per_ipu, dst // target.tiles_per_ipu
            cross = src_ipu != dst_ipu
            pair = src_ipu[cross] * ipus + dst_ipu[cross]
            length, _ = union_per_key(pair, starts[cross], ends[cross], ipus * ipus)
            per_pair = (length * item).reshape(ipus, ipus)
            ipu_pairs += per_pair
            ipu_out += per_pair.sum(axis=1)
            ipu_in += per_pair.sum(axis=0)
    return Traffic(send, recv, send_regions, recv_regions, ipu_out, ipu_in, st_recv,
                   ipu_pairs if ipus > 1 else None)


class _Once:
    """A value computed on first call and kept: the order by start that several unions may share."""

    __slots__ = ("_make", "_value")

    def __init__(self, make: Callable[[], np.ndarray]) -> None:
        self._make, self._value = make, None

    def __call__(self) -> np.ndarray:
        if self._value is None:
            self._value = self._make()
        return self._value


def exchange_cycles(t: Traffic, target: Target) -> tuple[int, np.ndarray]:
    """(step exchange cycles, per-tile exchange cycles) of one step's traffic."""
    if not t.recv_bytes.any() and not t.send_bytes.any():
        return 0, np.zeros(target.num_tiles, np.int64)
    pair = np.arange(target.num_tiles) // target.tiles_per_supertile
    per_tile = np.zeros(target.num_tiles, np.int64)
    # A supertile's tiles share a bus of twice the per-tile rate: the pair's bytes at that rate.
    # Data both partners receive crosses the bus once (ipu-facts.md §1).
    recv_pair = t.supertile_recv_bytes if t.supertile_recv_bytes is not None else \
        np.bincount(pair, weights=t.recv_bytes)
    send_pair = np.bincount(pair, weights=t.send_bytes)
    # Each region a tile sends or receives costs its exchange code's set-up as well
    # (Target.exchange_phase_cycles, the rule the matmul planner prices with).
    for moved, pair_bytes, regions in ((t.send_bytes, send_pair[pair], t.send_regions),
                                       (t.recv_bytes, recv_pair[pair], t.recv_regions)):
        bus = np.where(moved > 0, np.ceil(pair_bytes / target.tiles_per_supertile), 0).astype(np.int64)
        per_tile = np.maximum(per_tile, target.exchange_tile_cycles(bus, regions))
    on_chip = int(per_tile.max())
    off_chip = 0
    if t.inter_ipu_bytes and t.ipu_pair_bytes is not None:
        # Routed over the IPU-Link ladder, each link group at its rate (target.links).
        off_chip = exchange_link_cycles(target, t.ipu_pair_bytes)
    elif t.inter_ipu_bytes:
        link_rate = target.ipu_links_per_ipu * target.ipu_link_bytes_per_cycle
        off_chip = int(np.ceil(np.maximum(t.ipu_out_bytes, t.ipu_in_bytes).max() / link_rate))
    return max(on_chip, off_chip) + target.exchange_latency_cycles, per_tile
