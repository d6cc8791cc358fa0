"""A compute set's exchange counted per address, where its intervals are about as many as the
addresses they cover (a transposed field read one element a row, say).

:func:`softipu.compiler.exchange.traffic` sorts a step's pieces to union them per tile: a few
hundred nanoseconds a piece, and a field read across its rows' stride is one piece per element
(an fp16 training step's transposed casts and updates were tens of millions). Where pieces are
that dense, one pass over the addresses gives the same unions: per address, the one tile reading
it and the one writing it (bincounts of the intervals' tiles over the span, checked to be one
tile: an address read by two tiles, a broadcast scalar, sends the work back to the sort) and its
home tile from the mapping. Then a tile sends what it holds that another tile reads or that it
writes elsewhere, receives likewise, and a region is a run of consecutive addresses in one
tile's set: exactly the unions :func:`~softipu.compiler.exchange.union_per_key` forms, so the
figures are the same, at a few numpy passes an address.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from softipu.graph.mapping import ResolvedMapping
from softipu.target import Target

__all__ = ["DenseCounts", "FieldRows", "dense_clusters", "dense_counts"]

CHUNK = 1 << 21  # addresses held per pass (about 4 MiB an array of tiles)
_MIN_INTERVALS = 1 << 11  # fewer sort quickly
_SPAN = 8  # addresses an interval may stand for, at most, in a cluster counted per address

# (send, recv, send regions, recv regions, supertile recv): elements per tile (per supertile).
DenseCounts = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True, slots=True)
class FieldRows:
    """One field tensor's rows as address intervals, each with its vertex's tile."""

    starts: np.ndarray
    ends: np.ndarray
    tiles: np.ndarray
    reads: bool
    writes: bool
    lo: int  # the least start and the greatest end
    hi: int


def dense_clusters(rows: list[FieldRows], mapping: ResolvedMapping,
                   target: Target) -> tuple[DenseCounts | None, list[FieldRows]]:
    """(counts of the dense clusters, the rows left to sort) of one dtype's field rows.

    Rows are clustered by their address ranges (ranges that overlap join), so clusters lie apart
    and their unions and bytes add up. A cluster is counted per address where its intervals
    number at least ``1 / _SPAN`` of the addresses it spans and no two of its read (or written)
    fields overlap (a field read by several tiles, a multicast, is sorted). Clusters that touch
    (one ends where the next starts: a transposed field just below a broadcast row) are counted
    apart, so a multicast beside a dense field does not send the dense one to the sort; a tile's
    region running over the touching address is then one region, not two (:func:`_joins`)."""
    total = None
    rest: list[FieldRows] = []
    clusters = _clusters(rows)
    counted = []
    for cluster in clusters:
        counts = _dense(cluster, mapping, target)
        counted.append(counts is not None)
        if counts is None:
            rest += cluster
        else:
            total = counts if total is None else tuple(a + b for a, b in zip(total, counts, strict=True))
    for k in range(1, len(clusters)):
        if not (counted[k - 1] or counted[k]):  # two sorted clusters are unioned together
            continue
        below, above = clusters[k - 1], clusters[k]
        x = min(r.lo for r in above)
        if max(r.hi for r in below) == x:
            assert total is not None
            for joined, regions in zip(_joins(below, above, x, mapping), (total[2], total[3]), strict=True):
                np.subtract.at(regions, joined, 1)
    return total, rest


def _joins(below: list[FieldRows], above: list[FieldRows], x: int,
           mapping: ResolvedMapping) -> tuple[np.ndarray, np.ndarray]:
    """The tiles whose send (and receive) set holds address ``x - 1`` from ``below`` and ``x``
    from ``above``: their regions, counted once in each cluster, are one."""
    (send_a, recv_a), (send_b, recv_b) = _sets_at(below, x - 1, mapping), _sets_at(above, x, mapping)
    return (np.array(sorted(send_a & send_b), np.int64), np.array(sorted(recv_a & recv_b), np.int64))


def _sets_at(rows: list[FieldRows], a: int, mapping: ResolvedMapping) -> tuple[set[int], set[int]]:
    """The tiles whose send set and receive set hold address ``a``, by the definition: the home
    tile sends what a remote tile reads, and receives what a remote tile writes; a vertex's tile
    receives what it reads from a remote tile and sends what it writes onto one."""
    readers: set[int] = set()
    writers: set[int] = set()
    for r in rows:
        if r.lo <= a < r.hi:
            tiles = np.unique(r.tiles[(r.starts <= a) & (r.ends > a)]).tolist()
            if r.reads:
                readers.update(tiles)
            if r.writes:
                writers.update(tiles)
    home = int(mapping.tiles_of(np.array([a], np.int64))[0])
    send: set[int] = set()
    recv: set[int] = set()
    if readers - {home}:
        recv |= readers - {home}
        if home >= 0:
            send.add(home)
    if writers - {home}:
        send |= writers - {home}
        if home >= 0:
            recv.add(home)
    return send, recv


def _clusters(rows: list[FieldRows]) -> list[list[FieldRows]]:
    """Rows joined where their address ranges overlap, in address order."""
    if len(rows) == 1:
        return [rows]
    lo = np.array([r.lo for r in rows], np.int64)
    hi = np.array([r.hi for r in rows], np.int64)
    order = np.argsort(lo, kind="stable")
    reach = np.maximum.accumulate(hi[order])
    head = np.concatenate(([True], lo[order][1:] >= reach[:-1]))
    label = np.cumsum(head) - 1
    out: list[list[FieldRows]] = [[] for _ in range(int(label[-1]) + 1)]
    for i, k in zip(order.tolist(), label.tolist(), strict=True):
        out[k].append(rows[i])
    return out


def _overlapping(rows: list[FieldRows]) -> bool:
    if len(rows) < 2:
        return False
    lo = np.array([r.lo for r in rows], np.int64)
    hi = np.array([r.hi for r in rows], np.int64)
    order = np.argsort(lo, kind="stable")
    return bool(np.any(lo[order][1:] < np.maximum.accumulate(hi[order])[:-1]))


def _dense(cluster: list[FieldRows], mapping: ResolvedMapping, target: Target) -> DenseCounts | None:
    count = sum(r.starts.size for r in cluster)
    if count < _MIN_INTERVALS:
        return None
    reads, writes = [r for r in cluster if r.reads], [r for r in cluster if r.writes]
    lo, hi = min(r.lo for r in cluster), max(r.hi for r in cluster)
    if hi - lo > _SPAN * count or _overlapping(reads) or _overlapping(writes):
        return None
    return dense_counts(reads, writes, mapping, target)


def dense_counts(reads: list[FieldRows], writes: list[FieldRows], mapping: ResolvedMapping,
                 target: Target) -> DenseCounts | None:
    """Elements each tile sends and receives, and its regions, of vertices reading the ``reads``
    rows and writing the ``writes`` rows (of one dtype); None where some address is read (or
    written) by two different tiles."""
    tiles = target.num_tiles
    supertiles = -(-tiles // target.tiles_per_supertile)
    out = [np.zeros(tiles + 1, np.int64) for _ in range(4)] + [np.zeros(supertiles + 1, np.int64)]
    if not reads and not writes:
        return tuple(a[1:] for a in out)  # type: ignore[return-value]
    lo, hi = min(r.lo for r in reads + writes), max(r.hi for r in reads + writes)
    kind = np.int16 if tiles < np.iinfo(np.int16).max else np.int32
    r_chunks, w_chunks = _by_chunk(reads, lo, hi), _by_chunk(writes, lo, hi)
    carry = (-1, -1, -1, -1)  # the four tile arrays' values at the address before the chunk
    for k, c0 in enumerate(range(lo, hi, CHUNK)):
        n = min(CHUNK, hi - c0)
        reader = _one_tile(*r_chunks[k], c0, n, kind)
        writer = _one_tile(*w_chunks[k], c0, n, kind)
        if reader is _TWO or writer is _TWO:
            return None
        home = _Homes(mapping, c0, c0 + n, kind)
        carry = _count_chunk(reader, writer, home, carry, out, target.tiles_per_supertile)
    return tuple(a[1:] for a in out)  # type: ignore[return-value]


def _by_chunk(rows: list[FieldRows], lo: int, hi: int) -> list[tuple]:
    """Each chunk's (starts, ends, tiles): a row inside one chunk goes whole, a row over a
    chunk bound is cut at the bounds."""
    chunks = -(-(hi - lo) // CHUNK)
    parts: list[list] = [[] for _ in range(chunks)]
    for r in rows:
        first, last = (r.lo - lo) // CHUNK, (r.hi - 1 - lo) // CHUNK
        if first == last:
            parts[first].append((r.starts, r.ends, r.tiles))
            continue
        starts, ends, tiles = r.starts, r.ends, r.tiles
        c0, c1 = (starts - lo) // CHUNK, (ends - 1 - lo) // CHUNK
        count = c1 - c0 + 1
        if not np.all(count == 1):  # an interval over a chunk bound is cut there
            parent = np.repeat(np.arange(starts.size), count)
            c0 = c0[parent] + np.arange(parent.size) - np.repeat(np.cumsum(count) - count, count)
            starts = np.maximum(starts[parent], lo + c0 * CHUNK)
            ends = np.minimum(ends[parent], lo + (c0 + 1) * CHUNK)
            tiles = tiles[parent]
        order = np.argsort((c0 - first).astype(np.int16 if last - first < 1 << 15 else np.int64),
                           kind="stable")
        starts, ends, tiles = starts[order], ends[order], tiles[order]
        at = np.searchsorted(c0[order], np.arange(first, last + 2))
        for k in range(first, last + 1):
            a, b = at[k - first], at[k - first + 1]
            if b > a:
                parts[k].append((starts[a:b], ends[a:b], tiles[a:b]))
    return [tuple(np.concatenate([p[i] for p in ps]) if len(ps) > 1 else ps[0][i] for i in range(3))
            if ps else (None, None, None) for ps in parts]


_TWO = object()  # :func:`_one_tile`'s answer where two tiles cover one address


def _one_tile(starts: np.ndarray, ends: np.ndarray, tiles: np.ndarray, c0: int, n: int, kind: type):
    """Per address of ``[c0, c0 + n)``: the tile whose intervals cover it, -1 where none does
    (None: no interval at all); ``_TWO`` where two different tiles cover one address."""
    if starts is None:
        return None
    s = starts - c0
    if int((ends - starts).max()) == 1:  # single addresses: write the tiles, read them back
        out = np.full(n, -1, kind)
        out[s] = tiles
        return out if np.array_equal(out[s], tiles) else _TWO
    # Intervals: the count, sum and sum of squares of the covering tiles, each a bincount of the
    # starts less the ends summed along the addresses; one tile exactly where sum² = count · squares.
    e = ends - c0
    t = tiles.astype(np.float64)

    def covered(weights: np.ndarray | None) -> np.ndarray:
        up = np.bincount(s, weights=weights, minlength=n + 1)
        up -= np.bincount(e, weights=weights, minlength=n + 1)
        return np.cumsum(up[:n]).astype(np.int64)

    count = covered(None)
    total = covered(t)
    most = int(count.max())
    if most > 1:
        if most * (int(tiles.max()) + 1) >= 1 << 31:  # the squares below could pass 2**63
            return _TWO
        if not np.array_equal(total * total, count * covered(t * t)):
            return _TWO
        total //= np.maximum(count, 1)
    total[count == 0] = -1
    return total.astype(kind)


class _Homes:
    """The home tile of each address of ``[c0, c1)`` (``tile``, -1 where unmapped), from the
    mapping's intervals there (``starts``, ``tiles``: the runs of one home tile, gaps as -1)."""

    def __init__(self, mapping: ResolvedMapping, c0: int, c1: int, kind: type) -> None:
        a = max(int(np.searchsorted(mapping.starts, c0, side="right")) - 1, 0)
        b = int(np.searchsorted(mapping.starts, c1, side="left"))
        s = np.clip(mapping.starts[a:b], c0, c1) - c0
        e = np.clip(mapping.ends[a:b], c0, c1) - c0
        lengths = np.stack([s - np.concatenate(([0], e[:-1])), e - s], 1).reshape(-1)
        values = np.stack([np.full(s.size, -1, kind), mapping.tiles[a:b].astype(kind)], 1).reshape(-1)
        if int(lengths.sum()) < c1 - c0:
            lengths = np.concatenate((lengths, [c1 - c0 - int(lengths.sum())]))
            values = np.concatenate((values, np.full(1, -1, kind)))
        keep = lengths > 0
        self.tiles, lengths = values[keep], lengths[keep]
        self.starts = np.cumsum(lengths) - lengths
        self.tile = np.repeat(self.tiles, lengths)

    def count(self, picked: np.ndarray, size: int) -> np.ndarray:
        """How many ``picked`` addresses each home tile holds (index 0: none; + 1 as ``size``)."""
        per_run = np.add.reduceat(picked.view(np.int8), self.starts, dtype=np.int64)
        return np.bincount(self.tiles.astype(np.int64) + 1, weights=per_run, minlength=size).astype(np.int64)


def _count_chunk(reader, writer, home: _Homes, carry: tuple, out: list, per_supertile: int) -> tuple:
    """Add one chunk's counts to ``out`` (index 0 of each: no tile); the next chunk's carry.

    A tile sends what it holds that a remote tile reads (``sent_home``) and what it writes on a
    remote tile (``sent_write``); it receives what it reads from a remote tile (``got_read``) and
    what a remote tile writes into its memory (``got_home``). Each set is two arrays of tiles
    (-1: none; None: none at all) that never agree: a remote tile is not the home tile. The
    home-tile sets are counted along the mapping's runs, not element by element."""
    sent_home = got_read = sent_write = got_home = None
    counted: list[np.ndarray | None] = [None, None, None, None]  # elements of the four arrays
    if reader is not None:
        remote = (reader != home.tile) & (reader >= 0)
        sent_home, got_read = np.where(remote, home.tile, -1), np.where(remote, reader, -1)
        counted[0] = home.count(remote, out[0].size)
    if writer is not None:
        remote = (writer != home.tile) & (writer >= 0)
        sent_write, got_home = np.where(remote, writer, -1), np.where(remote, home.tile, -1)
        counted[3] = home.count(remote, out[1].size)
    sent = _count_set(sent_home, sent_write, counted[:2], carry[:2], out[0], out[2])
    got = _count_set(got_read, got_home, counted[2:], carry[2:], out[1], out[3])
    if got[0] is not None and got[1] is None:  # one reader an address: the partners' sums
        per_tile = np.zeros(out[4].size * per_supertile, np.int64)
        per_tile[:out[1].size - 1] = got[2][1:]
        out[4][1:] += per_tile[:(out[4].size - 1) * per_supertile].reshape(-1, per_supertile).sum(1)
        return tuple(-1 if a is None else int(a[-1]) for a in (*sent[:2], *got[:2]))
    if got[0] is not None:
        out[4] += np.bincount(got[0] // per_supertile + 1, minlength=out[4].size)  # -1 // k = -1
    if got[1] is not None:
        st_home = got[1] // per_supertile
        if got[0] is not None:
            st_home[st_home == got[0] // per_supertile] = -1
        out[4] += np.bincount(st_home + 1, minlength=out[4].size)
    return tuple(-1 if a is None else int(a[-1]) for a in (*sent[:2], *got[:2]))


def _count_set(first, second, counted: list, before: tuple[int, int], elements: np.ndarray,
               regions: np.ndarray) -> tuple:
    """Add to ``elements`` and ``regions`` (per tile + 1) a set of (address, tile) given as two
    tile arrays (or None) that never name one tile at one address (``counted``: their elements
    per tile where known), ``before`` the tiles at the address before; a region starts where a
    tile is in the set and was not at the address before. Returns the two arrays and the first
    one's elements per tile."""
    arrays = [(a, c) for a, c in zip((first, second), counted, strict=True) if a is not None]
    first_count = None
    for tile, count in arrays:
        if count is None:
            count = np.bincount(tile + 1, minlength=elements.size)
        first_count = count if first_count is None else first_count
        elements += count
        new = np.ones(tile.size, bool)
        new[0] = int(tile[0]) not in before
        for other, _ in arrays:
            new[1:] &= tile[1:] != other[:-1]
        regions += np.bincount(tile[new] + 1, minlength=regions.size)
    return first, second, first_count
