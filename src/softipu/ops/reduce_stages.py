"""Intermediate reduction stages between the on-tile partials and the output (popops' planner).

After stage 1 every input tile holds rows of partials, each row covering a run of outputs. When
many rows feed each output, sending them all to the output tiles makes those few tiles receive
and reduce thousands of rows (ResNet-50's batch-norm weight gradient over a channels-last
activation: 1,472 rows of 256 channels reduced on 64 tiles). popops' reduction planner adds
intermediate stages instead; this module follows it (graphcore/poplibs, lib/popops/reduction):

* **whether** (``calculateNextStep``, ReductionPlan.cpp): straight to the output when the fan-in
  (partials per output) is below ``2 * sqrt(tiles)`` and the partials sit on more than 3/4 of the
  tiles; else another intermediate stage when more than 32 partials are left per output, else
  the output stage. The decision is taken again after each stage.
* **how** (``intermediateToIntermediate``, ReductionStages.cpp, with ``calculateSplit``): the
  outputs are cut into column regions where the rows' runs start and end, then into partitions
  of at least ``grain`` columns (vector width, doubled for ADD and SQUARE_ADD) so that there are
  up to one per tile (poputil ``splitRegions``); region ``j`` with ``p`` partial rows of ``n``
  columns is reduced in ``N`` pieces, ``N = p * n / ideal`` (``ideal`` = all partials / tiles),
  lowered so that each piece keeps at least 64 partials and 2 rows; pieces of
  ``max(2, ceil(p / N))`` rows are handed to the tiles round-robin, and the pieces of one region
  that land on one tile are merged. Each piece is one vertex writing one new row of partials.

A row of partials is ``(lo, width, address, tile)``: the partials of outputs ``[lo, lo + width)``
at consecutive addresses of the partials variable, on ``tile``. A stage's new rows are laid out
region by region, so the rows of a region are evenly spaced (one strided field for the vertices
that reduce them next).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from softipu.codelets.reduce import ReduceOp, columns_codelet
from softipu.dtypes import DType
from softipu.graph.graph import ComputeSet, Graph
from softipu.graph.tensor import Tensor
from softipu.ops.common import OpContext, rows_of

__all__ = ["PartialRows", "needs_intermediate", "intermediate_stages", "tensor_at", "even_step", "even_runs",
           "row_fields"]

# popops' empirical figures (ReductionPlan.cpp calculateNextStep, ReductionStages.cpp
# intermediateToIntermediate).
PARTIALS_PER_OUTPUT = 32  # more partials left than this per output: another intermediate stage
MIN_PIECE_PARTIALS = 64  # a piece of an intermediate stage reduces at least this many partials
MIN_PIECE_ROWS = 2


@dataclass(frozen=True, slots=True)
class PartialRows:
    """Rows of partials: row ``i`` holds outputs ``[lo[i], lo[i] + width[i])`` at consecutive
    addresses from ``address[i]``, on ``tile[i]``; in the order they are combined."""

    lo: np.ndarray
    width: np.ndarray
    address: np.ndarray
    tile: np.ndarray

    def __post_init__(self) -> None:
        n = self.lo.size
        if not (self.width.size == self.address.size == self.tile.size == n):
            raise ValueError(f"PartialRows: lo/width/address/tile sizes differ ({n}, {self.width.size}, "
                             f"{self.address.size}, {self.tile.size})")


def _fan_in(rows: PartialRows) -> tuple[np.ndarray, np.ndarray]:
    """(edges, count): the outputs cut where rows start or end, and how many rows cover each run
    ``[edges[k], edges[k + 1])``."""
    hi = rows.lo + rows.width
    edges = np.unique(np.concatenate((rows.lo, hi)))
    delta = (np.bincount(np.searchsorted(edges, rows.lo), minlength=edges.size)
             - np.bincount(np.searchsorted(edges, hi), minlength=edges.size))
    return edges, np.cumsum(delta)[:-1]


def needs_intermediate(rows: PartialRows, outputs: int, tiles: int) -> bool:
    """popops' calculateNextStep: True for another intermediate stage, False for the output stage."""
    if rows.lo.size == 0 or int(rows.width.sum()) <= outputs * PARTIALS_PER_OUTPUT:
        return False  # few partials left: the output stage, whatever the fan-in
    _, count = _fan_in(rows)
    fan_in = int(count.max()) if count.size else 0
    return not (fan_in < 2 * np.sqrt(tiles) and np.unique(rows.tile).size > tiles * 3 // 4)


def _regions(edges: np.ndarray, count: np.ndarray, grain: int, tiles: int) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the column regions: the covered runs, cut into partitions of ``per``
    columns of their concatenation (poputil splitRegions: ``ceil(groups / tiles)`` grains each)."""
    covered = count > 0
    lo, hi = edges[:-1][covered], edges[1:][covered]
    total = int((hi - lo).sum())
    groups = -(-total // grain)
    per = grain * max(1, -(-groups // tiles))
    before = np.cumsum(hi - lo) - (hi - lo)  # columns of the concatenation before each run
    first, last = before // per, (before + hi - lo - 1) // per
    cuts = last - first + 1
    run = np.repeat(np.arange(lo.size), cuts)
    k = np.arange(run.size) - np.repeat(np.cumsum(cuts) - cuts, cuts)
    start = np.where(k == 0, lo[run], lo[run] + (first[run] + k) * per - before[run])
    end = np.minimum(hi[run], lo[run] + (first[run] + k + 1) * per - before[run])
    return start, end


def _pieces(sources: np.ndarray, cols: np.ndarray, total: int, tiles: int) -> np.ndarray:
    """Rows per piece of each region (calculateSplit's ``N`` and intermediateToIntermediate's
    ``max(2, ceil(p / N))``)."""
    ideal = max(1, total // tiles)
    size = sources * cols
    n = np.maximum(size // ideal, 1)
    n = np.where(size // n < MIN_PIECE_PARTIALS, np.maximum(size // MIN_PIECE_PARTIALS, 1), n)
    n = np.where(sources // n < MIN_PIECE_ROWS, np.maximum(sources // MIN_PIECE_ROWS, 1), n)
    return np.maximum(MIN_PIECE_ROWS, -(-sources // n))


def _stage(ctx: OpContext, op: ReduceOp, partial: DType, rows: PartialRows, start_tile: int,
           index: int) -> PartialRows:
    """One intermediate stage (see the module docstring); returns the new rows."""
    graph, tiles = ctx.graph, ctx.graph.num_tiles
    edges, count = _fan_in(rows)
    # The grain is doubled for the ops with accumulator instructions (ADD, SQUARE_ADD).
    wide = op in (ReduceOp.ADD, ReduceOp.SQUARE_ADD)
    grain = graph.target.vector_width(partial.itemsize) * (2 if wide else 1)
    r_lo, r_hi = _regions(edges, count, grain, tiles)
    # The rows covering each region, in combining order: a row covers region j when it spans it.
    hi = rows.lo + rows.width
    order = np.argsort(rows.lo, kind="stable")
    first = np.searchsorted(r_lo, rows.lo[order])
    last = np.searchsorted(r_lo, hi[order])  # regions [first, last) of each row
    spans = last - first
    row_of = np.repeat(order, spans)
    region = np.repeat(first, spans) + (np.arange(row_of.size) - np.repeat(np.cumsum(spans) - spans, spans))
    by = np.lexsort((row_of, region))
    region, row_of = region[by], row_of[by]
    sources = np.bincount(region, minlength=r_lo.size)
    cols = r_hi - r_lo
    k = _pieces(sources, cols, int(rows.width.sum()), tiles)
    chunks = -(-sources // k)
    # Round-robin over the tiles, region by region (piece p of all on tile start + p); pieces of
    # one region landing on one tile are merged into one.
    piece_region = np.repeat(np.arange(r_lo.size), chunks)
    piece = np.arange(piece_region.size)
    tile = (start_tile + piece) % tiles
    within = np.arange(region.size) - np.repeat(np.cumsum(sources) - sources, sources)
    member = (np.cumsum(chunks) - chunks)[region] + within // k[region]  # piece of each (region, row)
    key = np.unique(piece_region * tiles + tile, return_inverse=True)[1]  # merged piece
    return _build(ctx, op, partial, rows, (r_lo, cols), (region, row_of, key[member]), (tile, key),
                  index)


def _build(ctx: OpContext, op: ReduceOp, partial: DType, rows: PartialRows,
           regions: tuple[np.ndarray, np.ndarray], members: tuple[np.ndarray, np.ndarray, np.ndarray],
           tiles: tuple[np.ndarray, np.ndarray], index: int) -> PartialRows:
    """Vertices of one stage: merged piece ``m`` reduces the rows ``row_of[merged == m]`` over its
    region's columns into a new row on its tile."""
    graph = ctx.graph
    (r_lo, cols), (region, row_of, merged), (tile, key) = regions, members, tiles
    n_new = int(key.max()) + 1
    new_region = np.zeros(n_new, np.int64)
    new_region[merged] = region
    new_tile = np.zeros(n_new, np.int64)
    new_tile[key] = tile
    # New rows region by region (a region's rows evenly spaced), each as wide as its region.
    width = cols[new_region]
    order = np.lexsort((np.arange(n_new), new_region))
    offset = np.zeros(n_new, np.int64)
    offset[order] = np.cumsum(width[order]) - width[order]
    var = graph.add_variable(partial, (int(width.sum()),), name=f"{ctx.name}/stage{index}")
    for w in np.unique(width).tolist():
        pick = np.flatnonzero(width == w)
        graph.set_tile_mappings(rows_of(var, offset[pick], w), new_tile[pick])
    # Each merged piece's source rows, in combining order.
    by = np.lexsort((row_of, merged))
    src = row_of[by]
    k_of = np.bincount(merged, minlength=n_new)
    begin = np.cumsum(k_of) - k_of
    cs = ctx.compute_set(f"stage{index}")
    codelet = columns_codelet(op, partial, partial)
    group_key = k_of * (int(cols.max()) + 1) + width
    first_address = rows.address[src[begin]] + r_lo[new_region] - rows.lo[src[begin]]
    # Vertices ordered by their piece's place in its region, then by region: the p-th pieces of
    # successive regions start evenly spaced (runs as long as the regions' sequence).
    place = np.arange(n_new) - np.searchsorted(new_region[order], new_region, side="left")
    for gk in np.unique(group_key).tolist():
        group = np.flatnonzero(group_key == gk)
        group = group[np.lexsort((new_region[group], place[group]))]
        # Runs of vertices whose first rows and outputs step evenly: strided fields, one call each.
        for which in even_runs(group, first_address, offset):
            owners = src[begin[which][:, None] + np.arange(int(k_of[which[0]]))]  # (V, k) source rows
            _add_pieces(ctx, cs, codelet, rows, (var, offset[which], int(width[which[0]])), owners,
                        r_lo[new_region[which]], new_tile[which])
    ctx.execute(cs)
    return PartialRows(r_lo[new_region], width, var.offset + offset, new_tile)


def _add_pieces(ctx: OpContext, cs: ComputeSet, codelet: type, rows: PartialRows,
                out: tuple[Tensor, np.ndarray, int], owners: np.ndarray, lo: np.ndarray,
                tiles: np.ndarray) -> None:
    """Vertices reducing rows ``owners`` (``(V, k)``) over ``n`` columns from ``lo`` into the new
    rows ``out`` = (the variable, each vertex's offset in it, ``n``)."""
    var, offset, n = out
    starts = rows.address[owners] + (lo[:, None] - rows.lo[owners])
    step = even_step(starts)
    parts = row_fields(ctx.graph, var.dtype, starts, n, step)
    ctx.graph.add_vertices(cs, codelet, {"parts": parts, "out": rows_of(var, offset, n), "scale": 1.0,
                                         "part_step": step}, tiles)


def row_fields(graph: Graph, dtype: DType, starts: np.ndarray, n: int, step: int,
               inner: int = 1) -> list[Tensor]:
    """The ``k`` row fields ``(V, n)`` of a group of vertices whose row ``j`` starts at
    ``starts[:, j]`` (its elements ``inner`` apart): row ``j`` is row 0 moved ``j * step`` when
    the rows are evenly spaced (no address arrays: a piece may reduce a thousand rows); else each
    row ``j`` whose starts step evenly from vertex to vertex is one strided view, and any other
    row lists its addresses."""
    cols = np.arange(n) * inner
    first = tensor_at(graph, dtype, starts[:, :1] + cols)
    if step and first.index is None:
        return [Tensor(graph, dtype, first.shape, first.offset + j * step, first.strides)
                for j in range(starts.shape[1])]
    v = starts.shape[0]
    outer = starts[1] - starts[0] if v > 1 else np.zeros(starts.shape[1], np.int64)
    regular = np.all(np.diff(starts, axis=0) == outer, axis=0) if v > 2 else np.ones(outer.size, bool)
    return [Tensor(graph, dtype, (v, n), int(starts[0, j]), (int(outer[j]), inner)) if regular[j]
            else tensor_at(graph, dtype, starts[:, j : j + 1] + cols)
            for j in range(starts.shape[1])]


def intermediate_stages(ctx: OpContext, op: ReduceOp, partial: DType, rows: PartialRows,
                        outputs: int) -> PartialRows:
    """As many intermediate stages as popops' planner takes (none when it goes straight to the
    output); the rows of partials left for the output stage."""
    graph, index = ctx.graph, 0
    while needs_intermediate(rows, outputs, graph.num_tiles):
        # Successive stages (and reductions) start their round-robin at different tiles.
        start = (len(graph.variables) * 97 + index * 389) % graph.num_tiles
        rows = _stage(ctx, op, partial, rows, start, index)
        index += 1
    return rows


# -- shared helpers ------------------------------------------------------------------------------
def tensor_at(graph: Graph, dtype: DType, addresses: np.ndarray) -> Tensor:
    """A ``(V, n)`` tensor over explicit addresses: strided when they are regular, else indexed."""
    v, n = addresses.shape
    if v and n:
        inner = int(addresses[0, 1] - addresses[0, 0]) if n > 1 else 1
        outer = int(addresses[1, 0] - addresses[0, 0]) if v > 1 else 0
        expect = addresses[0, 0] + np.arange(v)[:, None] * outer + np.arange(n) * inner
        if np.array_equal(expect, addresses):
            return Tensor(graph, dtype, (v, n), int(addresses[0, 0]), (outer, inner))
    return Tensor(graph, dtype, (v, n), 0, (), addresses.astype(np.int64, copy=False))


def even_step(starts: np.ndarray) -> int:
    """The address step between consecutive rows when it is the same for every vertex, else 0."""
    if starts.shape[1] < 2:
        return 0
    step = starts[:, 1:] - starts[:, :-1]
    s = int(step[0, 0])
    return s if s > 0 and np.all(step == s) else 0


def even_runs(picks: np.ndarray, *positions: np.ndarray) -> list[np.ndarray]:
    """``picks`` cut into runs over which every ``positions[picks]`` steps evenly.

    Each run becomes one ``add_vertices`` call whose fields are strided (zero-copy for the
    engine); a linear mapping gives one or two runs per piece length.
    """
    if picks.size <= 2:
        return [picks] if picks.size else []
    steps = np.stack([np.diff(p[picks]) for p in positions])
    breaks = np.flatnonzero(np.any(steps[:, 1:] != steps[:, :-1], axis=0))  # step i+1 != step i
    runs, a = [], 0
    while a < picks.size:
        # The run from a takes step a; it ends at the first later step that differs.
        k = np.searchsorted(breaks, a)
        b = int(breaks[k]) + 2 if k < breaks.size else picks.size
        runs.append(picks[a:b])
        a = b
    return runs
