"""Tile mappings as interval tables: columnar, never one entry per element.

Every ``set_tile_mapping`` call appends (start, length, tile) runs of element addresses. Resolving
sorts them once into disjoint ``[start, end) -> tile`` intervals, merging repeats that agree and
refusing elements mapped to two different tiles.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from softipu.debug import SourceLocation, at
from softipu.errors import MappingError

__all__ = ["MappingTable", "ResolvedMapping", "resolve_mapping"]

# ResolvedMapping.tiles_of looks this many addresses or more up in one table over their span
# (when they are dense in it) rather than one binary search each.
_DENSE_MIN_ADDRESSES = 1 << 12


@dataclass(frozen=True, slots=True, eq=False)
class ResolvedMapping:
    """Disjoint, sorted address intervals and their tiles."""

    starts: np.ndarray  # int64, ascending
    ends: np.ndarray  # int64, exclusive
    tiles: np.ndarray  # int32
    _by_tile: list = field(default_factory=list, compare=False, repr=False)  # tile_order(), once

    def __post_init__(self) -> None:
        if not (self.starts.shape == self.ends.shape == self.tiles.shape):
            raise MappingError("resolved mapping columns differ in length")

    def tile_order(self) -> tuple[np.ndarray, np.ndarray, int]:
        """(order, keys, span): the intervals ordered by (tile, start), and their keys
        ``tile * span + start`` (searchable for a tile's intervals near an address); sorted once
        per resolved mapping (it never changes) and kept with it."""
        if not self._by_tile:
            span = int(self.ends[-1]) + 1 if self.ends.size else 1
            order = np.lexsort((self.starts, self.tiles))
            keys = self.tiles[order].astype(np.int64) * span + self.starts[order]
            if order.size < 1 << 31:  # kept for the compile: half the bytes as int32
                order = order.astype(np.int32)
            self._by_tile.append((order, keys, span))
        return self._by_tile[0]

    def tiles_of(self, addresses: np.ndarray) -> np.ndarray:
        """The tile of each address (any shape); -1 where unmapped."""
        a = np.asarray(addresses, dtype=np.int64)
        if self.starts.size == 0:
            return np.full(a.shape, -1, np.int32)
        k = self._interval_at(a) if a.size >= _DENSE_MIN_ADDRESSES else None
        if k is None:
            k = np.searchsorted(self.starts, a, side="right") - 1
        kc = np.clip(k, 0, None)
        ok = (k >= 0) & (a < self.ends[kc])
        return np.where(ok, self.tiles[kc], -1).astype(np.int32)

    def _interval_at(self, a: np.ndarray) -> np.ndarray | None:
        """``searchsorted(starts, a, side="right") - 1`` from one table over the addresses' span,
        where they are dense in it (a gather's whole table, say): a cumulative count of interval
        starts costs a pass over the span, not a binary search with cache misses per address.
        None where the span is too sparse for that."""
        lo, hi = int(a.min()), int(a.max()) + 1
        span = hi - lo
        if span > 2 * a.size:
            return None
        first = max(int(np.searchsorted(self.starts, lo, side="right")) - 1, 0)
        last = int(np.searchsorted(self.starts, hi - 1, side="right"))
        index = np.zeros(span, np.int64 if last >= 1 << 31 else np.int32)
        index[np.maximum(self.starts[first:last] - lo, 0)] = 1  # starts are distinct
        np.cumsum(index, out=index)  # in place: one array over the span
        index += first - 1
        return index[a - lo]

    def mapped_between(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """How many addresses in each ``[lo, hi)`` are mapped."""
        return self._mapped_below(np.asarray(hi)) - self._mapped_below(np.asarray(lo))

    def _mapped_below(self, a: np.ndarray) -> np.ndarray:
        lengths = self.ends - self.starts
        cum = np.concatenate(([0], np.cumsum(lengths)))
        k = np.searchsorted(self.starts, a, side="right") - 1
        kc = np.clip(k, 0, None)
        if self.starts.size == 0:
            return np.zeros(np.shape(a), np.int64)
        inside = np.clip(a - self.starts[kc], 0, lengths[kc])
        return np.where(k >= 0, cum[kc] + inside, 0)


class MappingTable:
    """The runs appended by mapping calls of one dtype's address space.

    Resolution is incremental: runs added since the last resolve are resolved alone and, when
    they all lie above everything mapped so far (the usual case: ops map the variables they just
    made), appended to growable sorted arrays. Anything else re-resolves those arrays together
    with the new runs. Resolved runs are not kept: each resolved interval keeps the mapping call
    that began it (for the message naming both calls that put an element on two tiles), so the
    table holds one entry per interval, not one per run ever added.
    """

    __slots__ = ("_chunks", "_locations", "_resolved", "_buffers", "_size")

    def __init__(self) -> None:
        self._chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray, int]] = []  # not yet resolved
        self._locations: list[SourceLocation] = []
        self._resolved: ResolvedMapping | None = None
        # resolved (starts, ends, tiles, calls), grown geometrically; the first _size are in use
        self._buffers = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int32),
                         np.zeros(0, np.int32))
        self._size = 0

    def add(self, starts: np.ndarray, lengths: np.ndarray, tiles: np.ndarray,
            location: SourceLocation) -> None:
        self._chunks.append((starts, lengths, tiles, len(self._locations)))
        self._locations.append(location)
        self._resolved = None

    def resolved(self, variable_at: Callable[[int], Any]) -> ResolvedMapping:
        if self._resolved is None:
            new, calls = _resolve(self, variable_at, self._take_columns())
            top = int(self._buffers[1][self._size - 1]) if self._size else -1
            if new.starts.size == 0 or int(new.starts[0]) >= top:
                self._append(new, calls)
            else:  # new runs reach below what is mapped: resolve both sets of intervals together
                n = self._size
                s, e, t, c = (b[:n] for b in self._buffers)
                old = (s, e - s, t, c)
                added = (new.starts, new.ends - new.starts, new.tiles, calls)
                whole, calls = _resolve(self, variable_at, list(_joined(old, added)))
                self._size = 0
                self._append(whole, calls)
            s, e, t, _ = self._buffers
            n = self._size
            self._resolved = ResolvedMapping(s[:n], e[:n], t[:n])
        return self._resolved

    def _take_columns(self) -> list[np.ndarray]:
        """:meth:`columns` as a list :func:`_resolve` empties, with the unresolved runs dropped: each
        array is freed as soon as it has been used (estimate-only pricing of large ops keeps one
        run table alive at a time)."""
        columns = list(self.columns())
        self._chunks = []
        return columns

    def _append(self, new: ResolvedMapping, calls: np.ndarray) -> None:
        k = new.starts.size
        if self._size == 0:  # the first intervals become the buffers as they are: no copy
            self._buffers = (new.starts, new.ends, new.tiles, calls.astype(np.int32, copy=False))
            self._size = k
            return
        if self._size + k > self._buffers[0].size:  # grow geometrically: amortised O(new runs)
            # NOTE: by 1.5x into fresh arrays, copying only the used part; np.resize fills the
            # new capacity by repeating the old array (a second, useless copy of every run).
            capacity = max(self._size + k + (self._size + k) // 2, 1024)
            grown = tuple(np.empty(capacity, b.dtype) for b in self._buffers)
            for buf, old in zip(grown, self._buffers, strict=True):
                buf[: self._size] = old[: self._size]
            self._buffers = grown  # type: ignore[assignment]
        for buf, col in zip(self._buffers, (new.starts, new.ends, new.tiles, calls), strict=True):
            buf[self._size : self._size + k] = col
        self._size += k

    def columns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(starts, lengths, tiles, calls) of the runs added since the last resolve."""
        chunks = self._chunks
        if not chunks:
            z = np.zeros(0, np.int64)
            return z, z, z.astype(np.int32), z.astype(np.int32)
        starts = np.concatenate([c[0] for c in chunks]).astype(np.int64, copy=False)
        lengths = np.concatenate([c[1] for c in chunks]).astype(np.int64, copy=False)
        tiles = np.concatenate([c[2] for c in chunks]).astype(np.int32, copy=False)
        calls = np.concatenate([np.full(c[0].shape, c[3], np.int32) for c in chunks])
        return starts, lengths, tiles, calls

    def location(self, call: int) -> SourceLocation:
        return self._locations[call]


def resolve_mapping(table: MappingTable, variable_at: Callable[[int], Any]) -> ResolvedMapping:
    """Sort and merge a table's unresolved runs; raise MappingError naming any element on two
    tiles."""
    return _resolve(table, variable_at, list(table.columns()))[0]


def _joined(a: tuple, b: tuple) -> tuple:
    return tuple(np.concatenate((x, y)) for x, y in zip(a, b, strict=True))


def _resolve(table: MappingTable, variable_at: Callable[[int], Any],
             columns: list[np.ndarray]) -> tuple[ResolvedMapping, np.ndarray]:
    """Runs (starts, lengths, tiles, calls) sorted and merged into disjoint intervals, and the
    call of each interval's first run. ``columns`` is emptied: each array is dropped once used,
    so the host holds about two run tables at a time, not a dozen.

    NOTE: touching intervals on one tile merge even when two calls mapped them (lookups stay
    small); such an interval keeps the first call, so a later conflict inside its second part
    names the call that mapped the part before it."""
    starts, lengths, tiles, calls = columns
    columns.clear()
    keep = lengths > 0
    if not keep.all():
        starts, lengths, tiles, calls = starts[keep], lengths[keep], tiles[keep], calls[keep]
    del keep
    order = np.lexsort((tiles, starts))
    starts = starts[order]
    ends = lengths[order]
    del lengths
    ends += starts
    tiles, calls = tiles[order], calls[order]
    del order
    if starts.size == 0:
        return ResolvedMapping(starts, ends, tiles), calls
    # Overlapping runs form groups; a group is fine when all its runs name the same tile.
    reach = np.maximum.accumulate(ends)
    new_group = np.empty(starts.size, bool)
    new_group[0] = True
    np.greater_equal(starts[1:], reach[:-1], out=new_group[1:])
    del reach
    if not new_group.all():  # some runs overlap: check and merge them
        first = np.flatnonzero(new_group)
        bad = np.flatnonzero(np.minimum.reduceat(tiles, first) != np.maximum.reduceat(tiles, first))
        if bad.size:
            g0 = first[bad[0]]
            g1 = first[bad[0] + 1] if bad[0] + 1 < first.size else starts.size
            raise MappingError(_double_mapping_message(table, variable_at, starts[g0:g1], ends[g0:g1],
                                                       tiles[g0:g1], calls[g0:g1]))
        ends = np.maximum.reduceat(ends, first)
        starts, tiles, calls = starts[first], tiles[first], calls[first]
        del first
    del new_group
    # Merge touching intervals on the same tile so lookups stay small.
    touch = np.zeros(starts.size, bool)
    np.equal(starts[1:], ends[:-1], out=touch[1:])
    touch[1:] &= tiles[1:] == tiles[:-1]
    if not touch.any():
        return ResolvedMapping(starts, ends, tiles), calls
    head = np.flatnonzero(~touch)
    del touch
    return ResolvedMapping(starts[head], np.maximum.reduceat(ends, head), tiles[head]), calls[head]


def _double_mapping_message(table: MappingTable, variable_at: Callable[[int], Any],
                            starts: np.ndarray, ends: np.ndarray, tiles: np.ndarray,
                            calls: np.ndarray) -> str:
    for i in range(len(starts)):
        for j in range(i + 1, len(starts)):
            if starts[j] < ends[i] and tiles[j] != tiles[i]:
                address = int(starts[j])
                var = variable_at(address)
                what = (f"element {address - var.start} of variable {var.name!r}" if var
                        else f"address {address}")
                return (
                    f"{what} is mapped to two tiles: tile {tiles[i]}{at(table.location(calls[i]))} "
                    f"and tile {tiles[j]}{at(table.location(calls[j]))}. Every element lives on "
                    "exactly one tile: map each element once"
                )
    return "an element is mapped to two tiles"  # unreachable: the caller found a conflict
