"""Layout planning: the op as a 2-D problem, cut into bulk ``add_vertices`` calls over tile
regions (1-D problems) or blocks of rows (broadcast operands), each placed on a tile."""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any

import numpy as np

from softipu.codelets.elementwise import Operand
from softipu.graph.graph import Graph
from softipu.graph.tensor import Tensor
from softipu.ops.common import OpContext, rows_of, tile_regions
from softipu.ops.mapping import map_linearly

# Planning constants [U]: a block vertex holds about a worker's share of a tile's output (so
# blocks straddling tile boundaries move little data) and never below 64 elements; more than
# MAX_RUNS irregular region runs switch to the regular block plan (few engine calls).
MIN_BLOCK_ELEMENTS = 64
MAX_RUNS = 64


@dataclass(frozen=True, slots=True)
class _Problem:
    """The op as a 2-D problem: ``rows x cols`` output elements (row-major) and each operand as a
    ``(rows, cols)`` view with its :class:`Operand` kind."""

    rows: int
    cols: int
    views: tuple[Tensor, ...]
    kinds: tuple[Operand, ...]

    @classmethod
    def of(cls, shape: tuple[int, ...], views: list[Tensor]) -> _Problem:
        """Merge the output's axes wherever every strided operand's strides allow; the innermost
        merged axis is the row."""
        strided = [v for v in views if v.is_strided]
        dims: list[list[Any]] = []  # [size, strides of the strided operands], outer to inner
        for d, size in enumerate(shape):
            if size == 1:
                continue
            st = [v.strides[d] for v in strided]
            if dims and all(p == s * size for p, s in zip(dims[-1][1], st, strict=True)):
                dims[-1][0] *= size
                dims[-1][1] = st
            else:
                dims.append([size, st])
        numel = int(np.prod(shape, dtype=np.int64))
        cols = dims[-1][0] if len(dims) > 1 else max(numel, 1)
        rows = numel // cols if numel else 0
        kinds, j = [], 0
        for v in views:
            if not v.is_strided:
                kinds.append(Operand.FULL)
                continue
            inner_zero = bool(dims) and dims[-1][1][j] == 0
            rows_same = rows == 1 or all(dim[1][j] == 0 for dim in dims[:-1])
            j += 1
            kinds.append(_KIND[inner_zero, rows_same and rows > 1] if rows > 1 else
                         (Operand.SCALAR if inner_zero else Operand.FULL))
        return cls(rows, cols, tuple(v.reshape(rows, cols) for v in views), tuple(kinds))


_KIND = {(False, False): Operand.FULL, (False, True): Operand.ROW, (True, False): Operand.COL,
         (True, True): Operand.SCALAR}


@dataclass(frozen=True, slots=True)
class _Call:
    """One add_vertices call: ``V`` vertices, their tiles, their first output element (flat)."""

    tiles: np.ndarray
    starts: np.ndarray
    out: Tensor  # (V, n)
    operands: tuple[Tensor, ...]  # (V, n_i)


def _reference(problem: _Problem, inplace: bool) -> int | None:
    """The operand whose mapping the output follows: the in-place target, or the first full one."""
    if inplace:
        return 0
    return next((i for i, k in enumerate(problem.kinds) if k is Operand.FULL), None)


def _plan(ctx: OpContext, problem: _Problem, out: Tensor, fresh: bool,
          ref: int | None) -> tuple[list[_Call], bool]:
    """(the bulk calls, whether their vertices are one-worker block vertices); maps a fresh out."""
    out2d = out.reshape(problem.rows, problem.cols)
    if problem.rows == 1:
        calls = _plan_regions(ctx, problem, out2d, fresh, ref)
        if calls is not None:
            return calls, False
    calls = _plan_blocks(ctx.graph, problem, out2d)
    _place(ctx.graph, problem, calls, ref)
    if fresh:
        for call in calls:
            ctx.graph.set_tile_mappings(call.out, call.tiles)
    return calls, True


def _plan_regions(ctx: OpContext, problem: _Problem, out2d: Tensor, fresh: bool,
                  ref: int | None) -> list[_Call] | None:
    """One vertex per contiguous tile region of the reference (1-D problems)."""
    graph, out1d = ctx.graph, out2d[0]
    views = [v[0] for v in problem.views]
    regions = None
    if not fresh:
        regions = _regions(graph, out1d)  # in place: the target's own regions
    elif ref is not None:
        regions = _regions(graph, views[ref])
    mapped_by_ref = regions is not None
    if regions is None:
        if not fresh:
            return None
        grain = graph.target.vector_width(out1d.dtype.itemsize)
        map_linearly(graph, out1d, grain_size=grain, min_elements_per_tile=grain * 8)
        regions = _regions(graph, out1d)
    starts, lengths, tiles = regions
    runs = _runs(starts, lengths, MAX_RUNS)
    if len(runs) > MAX_RUNS:
        return None
    calls = []
    for lo, hi in runs:
        s, n = starts[lo:hi], int(lengths[lo])
        operands = tuple(rows_of(v, s, n) if k is Operand.FULL else v[0:1].broadcast((hi - lo, 1))
                         for v, k in zip(views, problem.kinds, strict=True))
        call = _Call(tiles[lo:hi], s, rows_of(out1d, s, n), operands)
        if fresh and mapped_by_ref:
            graph.set_tile_mappings(call.out, call.tiles)
        calls.append(call)
    return calls


def _regions(graph: Graph, t: Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(starts, lengths, tiles) of the runs of a 1-D tensor's elements on one tile; None where
    some element is unmapped. Strided tensors are cut at the mapping's interval bounds."""
    n = t.numel
    if t.is_strided and t.strides[0] < 0:
        rev = _regions(graph, t.reverse())
        if rev is None:
            return None
        s, length, tiles = (a[::-1] for a in rev)
        return n - (s + length), length, tiles
    if t.is_strided and t.strides[0] > 0:
        mapping = graph.resolved_mapping(t.dtype)
        step, first = t.strides[0], t.offset
        # Only the mapping's intervals that meet [first, last] can cut the tensor.
        a = max(int(np.searchsorted(mapping.starts, first, side="right")) - 1, 0)
        b = int(np.searchsorted(mapping.starts, first + max(n - 1, 0) * step, side="right"))
        # The intervals are disjoint and in order, so their bounds taken start, end, start, ...
        # ascend, and so do the first elements at or past each: the distinct cuts are the
        # changes along them (what np.unique gave, by one pass instead of a hash and a sort).
        bounds = np.empty(2 * (b - a), np.int64)
        bounds[0::2], bounds[1::2] = mapping.starts[a:b], mapping.ends[a:b]
        cuts = -(-(bounds - first) // step)
        cuts = np.concatenate(([0], cuts[(cuts > 0) & (cuts < n)], [n]))
        starts = cuts[:-1][cuts[1:] != cuts[:-1]]
        tiles = mapping.tiles_of(first + starts * step).astype(np.int64)
    else:
        starts, _, tiles = tile_regions(graph, t)
    if tiles.size and tiles.min() < 0:
        return None
    keep = np.concatenate(([True], tiles[1:] != tiles[:-1]))
    starts, tiles = starts[keep], tiles[keep]
    return starts, np.diff(np.concatenate((starts, [n]))), tiles


def _runs(starts: np.ndarray, lengths: np.ndarray, limit: int | None = None) -> list[tuple[int, int]]:
    """Index ranges of consecutive regions with one length and one spacing (one bulk call each),
    taken greedily from the first region: a run's first two regions set its spacing. Stops after
    ``limit`` + 1 runs where given (the caller gives up beyond ``limit``). Work per run, not per
    region: region ``j`` continues a run begun before ``j - 1`` exactly when its length and its
    spacing equal its predecessor's, so a run ends at the first region from its third on where
    that fails (one array pass finds them all)."""
    k = int(starts.size)
    if k == 0:
        return []
    same_len = lengths[1:] == lengths[:-1]  # [j - 1]: region j's length is region j - 1's
    gaps = np.diff(starts)
    breaks = np.flatnonzero(~(same_len[1:] & (gaps[1:] == gaps[:-1]))) + 2  # regions that end a run
    breaks_list = breaks.tolist()
    runs, i = [], 0
    while i < k and (limit is None or len(runs) <= limit):
        if i + 1 < k and same_len[i]:
            at = bisect.bisect_left(breaks_list, i + 2)
            j = breaks_list[at] if at < len(breaks_list) else k
        else:
            j = i + 1
        runs.append((i, j))
        i = j
    return runs


def _plan_blocks(graph: Graph, problem: _Problem, out2d: Tensor) -> list[_Call]:
    """Vertices over blocks of whole rows (short rows) or column chunks of rows (long rows),
    about one per worker context of every tile."""
    rows, cols = problem.rows, problem.cols
    share = -(-rows * cols // graph.num_tiles)
    block = max(MIN_BLOCK_ELEMENTS, -(-share // graph.target.workers_per_tile))
    views = (out2d,) + problem.views
    kinds = (Operand.FULL,) + problem.kinds
    if cols <= block:
        k = min(rows, max(1, (2 * block + cols) // (2 * cols)))  # the nearest whole number of rows
        whole, tail = divmod(rows, k)
        parts = [(0, whole, k)] * bool(whole) + [(whole * k, 1, tail)] * bool(tail)
        return [_call([_row_block(v, kind, r0, nv, kk) for v, kind in zip(views, kinds, strict=True)],
                      r0 * cols + np.arange(nv, dtype=np.int64) * kk * cols) for r0, nv, kk in parts]
    chunks = -(-cols // block)
    width = -(-cols // chunks)
    full, rest = divmod(cols, width)
    calls = []
    if full <= rows:  # one call per column chunk, a vertex per row
        spans = [(j * width, (j + 1) * width) for j in range(full)]
    else:  # one call per row, a vertex per chunk
        spans = []
        for r in range(rows):
            calls.append(_call([_row_chunks(v, kind, r, full, width)
                                for v, kind in zip(views, kinds, strict=True)],
                               r * cols + np.arange(full, dtype=np.int64) * width))
    if rest:
        spans.append((full * width, cols))
    for c0, c1 in spans:
        calls.append(_call([_col_chunk(v, kind, c0, c1) for v, kind in zip(views, kinds, strict=True)],
                           np.arange(rows, dtype=np.int64) * cols + c0))
    return calls


def _call(fields: list[Tensor], starts: np.ndarray) -> _Call:
    return _Call(np.zeros(starts.size, np.int64), starts, fields[0], tuple(fields[1:]))


def _row_block(v: Tensor, kind: Operand, r0: int, nv: int, kk: int) -> Tensor:
    """``nv`` vertices of ``kk`` whole rows from row ``r0``."""
    if kind is Operand.FULL:
        return v[r0 : r0 + nv * kk].reshape(nv, kk * v.shape[1])
    if kind is Operand.ROW:
        return v[0].broadcast((nv, v.shape[1]))
    if kind is Operand.COL:
        return v[r0 : r0 + nv * kk, 0].reshape(nv, kk)
    return v[0, 0:1].broadcast((nv, 1))


def _col_chunk(v: Tensor, kind: Operand, c0: int, c1: int) -> Tensor:
    """One vertex per row over columns ``c0:c1``."""
    rows = v.shape[0]
    if kind is Operand.FULL and v.is_strided:  # v[:, c0:c1], made directly (hundreds a layer)
        return Tensor(v.graph, v.dtype, (rows, c1 - c0), v.offset + c0 * v.strides[1], v.strides)
    if kind is Operand.FULL:
        return v[:, c0:c1]
    if kind is Operand.ROW:
        return v[0, c0:c1].broadcast((rows, c1 - c0))
    if kind is Operand.COL:
        return v[:, 0:1]
    return v[0, 0:1].broadcast((rows, 1))


def _row_chunks(v: Tensor, kind: Operand, r: int, full: int, width: int) -> Tensor:
    """``full`` vertices of ``width`` columns along row ``r``."""
    if kind in (Operand.FULL, Operand.ROW):
        return v[r if kind is Operand.FULL else 0, : full * width].reshape(full, width)
    return v[r if kind is Operand.COL else 0, 0:1].broadcast((full, 1))


def _place(graph: Graph, problem: _Problem, calls: list[_Call], ref: int | None) -> None:
    """Each block's tile: where the reference holds the block's middle element, unless that
    leaves some tile with much more than its share (a transposed input, say); else linear."""
    total = problem.rows * problem.cols
    placed = [None] * len(calls) if ref is None else _middle_tiles(graph, [c.operands[ref] for c in calls])
    if all(t is not None and (t.size == 0 or t.min() >= 0) for t in placed):
        load = np.zeros(graph.num_tiles, np.int64)
        for c, t in zip(calls, placed, strict=True):
            load += np.bincount(t, minlength=graph.num_tiles) * c.out.shape[1]
        biggest = max(c.out.shape[1] for c in calls)
        if load.max() <= 1.25 * total / graph.num_tiles + biggest:
            calls[:] = [_Call(t, c.starts, c.out, c.operands) for c, t in zip(calls, placed, strict=True)]
            return
    calls[:] = [_Call((c.starts + c.out.shape[1] // 2) * graph.num_tiles // max(total, 1), c.starts,
                      c.out, c.operands) for c in calls]


def _middle_tiles(graph: Graph, fields: list[Tensor]) -> list[np.ndarray]:
    """The tile of each vertex's middle element, per ``(V, n)`` field (one dtype): one mapping
    lookup for all of them."""
    if not fields:
        return []
    addresses = []
    for field in fields:
        v, n = field.shape
        if field.is_strided:
            addresses.append(field.offset + np.arange(v, dtype=np.int64) * field.strides[0]
                             + (n // 2) * field.strides[1])
        else:
            addresses.append(field[:, n // 2].addresses().reshape(-1))
    tiles = graph.resolved_mapping(fields[0].dtype).tiles_of(np.concatenate(addresses)).astype(np.int64)
    return np.split(tiles, np.cumsum([a.size for a in addresses])[:-1])
