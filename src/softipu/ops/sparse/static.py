"""Static block-sparse products (popsparse::static_-shaped): a pattern fixed at compile time.

The pattern is a :class:`CSRMatrix` by blocks: ``shape`` (rows, cols) of the sparse matrix,
``block_size`` (1, 4, 8 or 16), ``row_indices`` (``rows / b + 1`` offsets into the blocks, CSR
style) and ``column_indices`` (each block's block-column, in blocks). The non-zero values live on
the device as a tensor ``(nnz_blocks, b, b)`` in CSR order, created for the plan by
:func:`create_sparse_dense_matmul_lhs` / :func:`create_dense_sparse_matmul_rhs`.

* :func:`sparse_dense_matmul`: ``out (M, N) = S (M, K) . D (K, N)``;
* :func:`dense_sparse_matmul`: ``out (M, N) = D (M, K) . S (K, N)``.

Partitioner (popsparse's static plan, lib/popsparse/StaticMatMulPartitioner.cpp): the contraction
is cut into ``k_split`` column bands holding about equal numbers of non-zero blocks
(:func:`column_bands`, buildColumnBandInfo); a work unit is the blocks of one block-row (sparse x
dense) or block-column (dense x sparse) that fall in one column band, against one slice of the dense
operand's free dimension, which is cut into as many slices as keep every tile busy. Units are placed
largest first on the least loaded tile by their modeled cycles (the codelet's own estimate plus the
exchange that brings in their dense rows and, when sliced, their values). A unit's non-zero blocks,
output band (or partials) and, for the first slice, values live on its tile. Where a row has blocks
in more than one column band, each of its units writes partials in the data type (popsparse's static
partials) and a second compute set reduces them where the output lives (popops' ``ReduceColumns``,
priced by poplibs' reduce estimators). The planner tries ``k_split`` = 1, 2, 4, .. (up to
:data:`MAX_K_SPLIT`, popsparse's maxKSplit) and keeps the one with the fewest modeled cycles: the
busiest tile's units, plus, when split, the partials' exchange, the reduction and a sync (the terms
popsparse's getPartition adds); option ``numBands`` fixes it (popsparse's MatMulOptions.numBands).
Output bands with no non-zero blocks are zeroed. Not done: popsparse's row/column permutation
pre-processing, its search over the free dimension's split, grouped products.

Gradients (training): of the dense operand, through the other product with the same values
(:func:`sparse_dense_matmul_grad_rhs`: ``dD = S^T . G = (G^T . S)^T``;
:func:`dense_sparse_matmul_grad_lhs`: ``dD = G . S^T = (S . G^T)^T``); of the values at the
pattern's blocks only (:func:`sparse_values_grad`, a sampled dense product, one vertex per block on
the block's own tile, the contraction not split over tiles yet).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from softipu.codelets.reduce import ReduceOp, columns_codelet, columns_cycles
from softipu.codelets.sparse import BLOCK_SIZES, sparse_block_codelet, sparse_grad_codelet
from softipu.debug import at, caller_location
from softipu.dtypes import DType, as_dtype
from softipu.graph.graph import Graph
from softipu.graph.tensor import Tensor
from softipu.ops.common import OpContext, OpError, parse_options
from softipu.ops.mapping import map_linearly

__all__ = ["CSRMatrix", "column_bands", "planned_cycles", "create_sparse_dense_matmul_lhs",
           "create_sparse_dense_matmul_rhs",
           "create_dense_sparse_matmul_lhs", "create_dense_sparse_matmul_rhs", "sparse_dense_matmul",
           "dense_sparse_matmul", "sparse_partition", "sparse_dense_matmul_grad_rhs",
           "dense_sparse_matmul_grad_lhs", "sparse_values_grad"]


@dataclass(frozen=True, eq=False)
class CSRMatrix:
    """A block-sparse pattern (values not included); see the module docstring."""

    shape: tuple[int, int]
    block_size: int
    row_indices: np.ndarray
    column_indices: np.ndarray
    name: str = "sparse"

    def __post_init__(self) -> None:
        b, (m, k) = self.block_size, self.shape
        where = f"sparse pattern {self.name!r}{at(caller_location())}"
        if b not in BLOCK_SIZES:
            raise OpError(f"{where}: block size {b} is not supported; popsparse's static ops take "
                          f"{', '.join(map(str, BLOCK_SIZES))}")
        if m % b or k % b or m <= 0 or k <= 0:
            raise OpError(f"{where}: shape {self.shape} must be positive multiples of the block size {b}")
        rows = np.asarray(self.row_indices, np.int64).reshape(-1)
        cols = np.asarray(self.column_indices, np.int64).reshape(-1)
        if rows.size != m // b + 1 or rows[0] != 0 or np.any(np.diff(rows) < 0) or rows[-1] != cols.size:
            raise OpError(f"{where}: row_indices must be {m // b + 1} non-decreasing offsets from 0 to "
                          f"the {cols.size} blocks; got {rows.tolist()[:8]}...")
        bad = np.flatnonzero((cols < 0) | (cols >= k // b))
        if bad.size:
            raise OpError(f"{where}: block {int(bad[0])} has block-column {int(cols[bad[0]])}, out of "
                          f"range 0..{k // b - 1} for {k} columns in blocks of {b}")
        object.__setattr__(self, "row_indices", rows)
        object.__setattr__(self, "column_indices", cols)

    @property
    def nnz_blocks(self) -> int:
        return int(self.column_indices.size)

    @property
    def block_rows(self) -> np.ndarray:
        """Each block's block-row."""
        return np.repeat(np.arange(self.row_indices.size - 1), np.diff(self.row_indices))

    @classmethod
    def from_mask(cls, mask: Any, block_size: int, name: str = "sparse") -> CSRMatrix:
        """The pattern of a boolean block mask ``(rows / b, cols / b)``."""
        mask = np.asarray(mask, bool)
        r, c = np.nonzero(mask)
        rows = np.concatenate([[0], np.cumsum(np.bincount(r, minlength=mask.shape[0]))])
        return cls((mask.shape[0] * block_size, mask.shape[1] * block_size), block_size, rows, c, name)

    def blocks_of(self, dense: Any) -> np.ndarray:
        """The ``(nnz_blocks, b, b)`` values of a dense ``shape`` array at this pattern's blocks."""
        b = self.block_size
        a = np.asarray(dense).reshape(self.shape[0] // b, b, self.shape[1] // b, b)
        return a[self.block_rows, :, self.column_indices, :]

    def to_dense(self, blocks: Any) -> np.ndarray:
        """The dense matrix with ``blocks`` (``(nnz_blocks, b, b)``) at this pattern's blocks."""
        b = self.block_size
        blocks = np.asarray(blocks)
        out = np.zeros((self.shape[0] // b, b, self.shape[1] // b, b), blocks.dtype)
        out[self.block_rows, :, self.column_indices, :] = blocks
        return out.reshape(self.shape)


@dataclass(frozen=True)
class _Plan:
    """Work units: output band ``band``, non-zero blocks ``blocks`` (CSR positions) with their
    inner block indices ``inner``, free-dimension slice ``[z0, z1)``, tile, and ``partial``: the
    unit's slot in the partials (``-1``: it writes the output itself). ``column_bands`` are the
    K split's boundaries in inner blocks (``k_split + 1`` of them)."""

    mode: str
    bands: list[int]
    blocks: list[np.ndarray]
    inner: list[np.ndarray]
    z: list[tuple[int, int]]
    tiles: np.ndarray
    empty_bands: np.ndarray
    block_tiles: np.ndarray
    k_split: int = 1
    column_bands: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    partial: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


# popsparse's static planner searches K splits up to this many column bands (maxKSplit).
MAX_K_SPLIT = 128


def _unit_costs(nb: np.ndarray, width: np.ndarray, block: int, dtype: DType, sd: bool, graph: Graph):
    codelet = sparse_block_codelet(dtype, block, "sd" if sd else "ds")
    return np.asarray(codelet.cycles(nb * block * block, 0, block * width, graph.target), np.int64)


def column_bands(inner_counts: np.ndarray, k_split: int) -> np.ndarray:
    """Boundaries (in inner blocks) of at most ``k_split`` column bands holding about equal numbers
    of non-zero blocks: each band takes columns in order until it holds ``ceil(nnz / k_split)``
    (popsparse's buildColumnBandInfo, lib/popsparse/StaticMatMulPartitioner.cpp)."""
    n = inner_counts.size
    cum = np.concatenate([[0], np.cumsum(inner_counts)])
    avg = -(-int(cum[-1]) // k_split) if cum[-1] else n
    bounds = [0]
    while bounds[-1] < n and len(bounds) <= k_split and cum[bounds[-1]] < cum[-1]:
        nxt = int(np.searchsorted(cum, cum[bounds[-1]] + avg, side="left"))
        bounds.append(min(max(nxt, bounds[-1] + 1), n))
    if len(bounds) == 1:
        bounds.append(n)
    bounds[-1] = n
    return np.asarray(bounds, np.int64)


def _slices(graph: Graph, pieces: int, free: int) -> np.ndarray:
    """Edges of the free dimension's slices: as many as keep every tile busy, at most one per
    ``workers`` elements."""
    workers = graph.target.workers_per_tile
    slices = int(max(1, min(-(-graph.num_tiles // max(pieces, 1)), -(-free // workers))))
    return np.linspace(0, free, slices + 1).astype(np.int64)


def _lpt(costs: np.ndarray, tiles: int) -> tuple[np.ndarray, int]:
    """Units placed largest first on the least loaded tile: (tile of each unit, busiest load)."""
    heap = [(0, t) for t in range(tiles)]
    placed = np.zeros(costs.size, np.int64)
    for u in np.argsort(-costs, kind="stable").tolist():
        load, t = heapq.heappop(heap)
        placed[u] = t
        heapq.heappush(heap, (load + int(costs[u]), t))
    return placed, max(load for load, _ in heap)


def _units(graph: Graph, nb: np.ndarray, free: int, block: int, dtype: DType, sd: bool):
    """Each piece (``nb`` blocks) against each slice of the free dimension: (piece, z0, z1) per
    unit and its modeled cycles, the vertex's (poplibs' AMP formula) plus the exchange that brings
    in its dense rows and, when the free dimension is sliced, its values (popsparse's planner adds
    exchangeRhsDenseRowsCycles and exchangeNZDataCycles the same way)."""
    edges = _slices(graph, nb.size, free)
    widths = np.diff(edges)
    keep = widths > 0
    piece = np.repeat(np.arange(nb.size), int(keep.sum()))
    z0 = np.tile(edges[:-1][keep], nb.size)
    z1 = np.tile(edges[1:][keep], nb.size)
    w, n = z1 - z0, nb[piece]
    values = n * block * block * int(widths.size > 1)
    moved = (n * block * w + values) * dtype.itemsize / graph.target.exchange_bytes_per_cycle
    return piece, z0, z1, _unit_costs(n, w, block, dtype, sd, graph) + moved.astype(np.int64)


def _split_estimate(graph: Graph, band_of: np.ndarray, cb_of: np.ndarray, k_split: int, free: int,
                    block: int, dtype: DType, sd: bool) -> int:
    """Modeled cycles of one K split: the busiest tile's units once placed, then, with more than one
    column band, the partials' exchange into the reducing tile and popops' reduction (the
    ReduceColumns estimator of the vertex that runs) after a sync, as popsparse's planner adds
    partialsExchange and reductionCompute."""
    pieces, nb = np.unique(band_of * k_split + cb_of, return_counts=True)
    _, z0, z1, costs = _units(graph, nb, free, block, dtype, sd)
    compute = _lpt(costs, graph.num_tiles)[1]
    rows = np.bincount(pieces // k_split)
    r = int(rows.max())
    if r < 2:
        return compute
    target = graph.target
    w = int((z1 - z0).max())
    n_red = int(np.count_nonzero(rows > 1)) * (costs.size // nb.size)  # rows with partials x slices
    one = int(columns_cycles(ReduceOp.ADD, dtype, dtype, r, block * w, 0, target))
    exchange = int((r - 1) * block * w * dtype.itemsize / target.exchange_bytes_per_cycle)
    reduce = one * -(-n_red // graph.num_tiles) + exchange
    return compute + reduce + target.on_chip_sync_cycles + target.exchange_latency_cycles


def _operands(pattern: CSRMatrix, mode: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Each block's output band and inner (contracted) block index, and the number of inner blocks."""
    b = pattern.block_size
    if mode == "sd":
        return pattern.block_rows, pattern.column_indices, pattern.shape[1] // b
    return pattern.column_indices, pattern.block_rows, pattern.shape[0] // b


def _choose_split(graph: Graph, pattern: CSRMatrix, free: int, dtype: DType, mode: str,
                  k_split: int | None = None) -> tuple[int, int]:
    """(k_split, modeled cycles): the given split's, or the best of 1, 2, 4, .. :data:`MAX_K_SPLIT`."""
    band_of, inner_of, num_inner = _operands(pattern, mode)
    if not pattern.nnz_blocks:
        return 1, 0
    inner_counts = np.bincount(inner_of, minlength=num_inner)
    tries = [k_split] if k_split else [1 << i for i in range(MAX_K_SPLIT.bit_length())
                                        if 1 << i <= min(MAX_K_SPLIT, num_inner)]
    best = None
    for ks in tries:
        bounds = column_bands(inner_counts, max(1, min(int(ks), num_inner)))
        cb = np.searchsorted(bounds, inner_of, side="right") - 1
        est = _split_estimate(graph, band_of, cb, bounds.size - 1, free, pattern.block_size, dtype,
                              mode == "sd")
        if best is None or est < best[1]:
            best = (int(ks), est)
    return best


def planned_cycles(graph: Graph, pattern: CSRMatrix, free: int, dtype: Any, mode: str = "sd", *,
                   k_split: int | None = None) -> dict:
    """The partitioner's model of one product (``free``: the dense operand's free dimension) without
    building it: ``{"k_split", "cycles"}``, ``cycles`` the busiest tile's units (vertex estimate plus
    their exchange) and, when split, the partials' exchange and reduction, each step with its sync
    and exchange start-up, and the zeroing of empty bands (popsparse's zeroingCycles of a tile's
    share, StaticMatMulPartitioner.cpp). The same figure (less the zeroing) picks the split;
    the compiled product's priced cycles are the reference (bench_sparse prints both)."""
    dtype = as_dtype(dtype)
    ks, est = _choose_split(graph, pattern, free, dtype, mode, k_split)
    target = graph.target
    est += target.on_chip_sync_cycles + target.exchange_latency_cycles
    band_of, _, _ = _operands(pattern, mode)
    b = pattern.block_size
    empty = (pattern.shape[0 if mode == "sd" else 1] // b) - np.unique(band_of).size
    if empty:  # popsparse's zeroingCycles of the tile's share of the empty bands' outputs, a sync
        per_tile = -(-empty * b * free // graph.num_tiles) * dtype.itemsize
        w = target.workers_per_tile
        loads = -(-per_tile // target.vector_width_bytes)
        est += (12 + -(-loads // w)) * w + target.on_chip_sync_cycles
    return {"k_split": ks, "cycles": int(est)}


def sparse_partition(graph: Graph, pattern: CSRMatrix, free: int, dtype: DType, mode: str, *,
                     k_split: int | None = None) -> _Plan:
    """Spread the pattern's work over the tiles (see the module docstring). ``k_split``: the number
    of column bands to cut the contraction into (default: the one of ``1, 2, 4, ..``
    (up to :data:`MAX_K_SPLIT`) with the fewest modeled cycles)."""
    sd = mode == "sd"
    b = pattern.block_size
    if sd:
        band_of, inner_of = pattern.block_rows, pattern.column_indices
        num_bands, num_inner = pattern.shape[0] // b, pattern.shape[1] // b
    else:
        band_of, inner_of = pattern.column_indices, pattern.block_rows
        num_bands, num_inner = pattern.shape[1] // b, pattern.shape[0] // b
    counts = np.bincount(band_of, minlength=num_bands)
    inner_counts = np.bincount(inner_of, minlength=num_inner)
    if k_split is None:
        k_split = _choose_split(graph, pattern, free, dtype, mode)[0]
    bounds = column_bands(inner_counts, max(1, min(int(k_split), num_inner)))
    k_split = bounds.size - 1
    cb_of = np.searchsorted(bounds, inner_of, side="right") - 1
    key = band_of * k_split + cb_of
    order = np.lexsort((inner_of, key))
    pieces, starts_p, nb = np.unique(key[order], return_index=True, return_counts=True)
    rows_of_band = np.bincount(pieces // k_split, minlength=num_bands)
    piece, z0s, z1s, costs = _units(graph, nb, free, b, dtype, sd)
    placed = _lpt(costs, graph.num_tiles)[0]
    units = [(int(p), int(starts_p[p]), int(a), int(e)) for p, a, e in zip(piece, z0s, z1s, strict=True)]
    block_tiles = np.zeros(pattern.nnz_blocks, np.int64)
    blocks, inner, bands, partial = [], [], [], np.full(len(units), -1, np.int64)
    slot = 0
    for u, (p, s, z0, _) in enumerate(units):
        pos = order[s:s + nb[p]]
        band = int(pieces[p] // k_split)
        blocks.append(pos)
        inner.append(inner_of[pos])
        bands.append(band)
        if rows_of_band[band] > 1:
            partial[u] = slot
            slot += 1
        if z0 == 0:
            block_tiles[pos] = placed[u]
    return _Plan(mode, bands, blocks, inner, [(z0, z1) for *_, z0, z1 in units], placed,
                 np.flatnonzero(counts == 0), block_tiles, k_split, bounds, partial)


def _nz_tensor(graph: Graph, pattern: CSRMatrix, free: int, dtype: Any, mode: str, name: str) -> Tensor:
    dtype = as_dtype(dtype)
    b = pattern.block_size
    plan = sparse_partition(graph, pattern, free, dtype, mode)
    t = graph.add_variable(dtype, (pattern.nnz_blocks, b, b), name=name)
    if pattern.nnz_blocks:
        graph.set_tile_mappings(t, plan.block_tiles)
    return t


def create_sparse_dense_matmul_lhs(graph: Graph, pattern: CSRMatrix, n: int, dtype: Any, *,
                                   name: str = "") -> Tensor:
    """The non-zero values ``(nnz_blocks, b, b)`` of ``S`` for ``S . D`` with ``D`` ``(K, n)``,
    each block on the tile that uses it."""
    return _nz_tensor(graph, pattern, n, dtype, "sd", name or f"{pattern.name}/nz")


def create_sparse_dense_matmul_rhs(graph: Graph, pattern: CSRMatrix, n: int, dtype: Any, *,
                                   name: str = "") -> Tensor:
    """The dense right operand ``(K, n)`` of ``S . D``, spread linearly over the tiles."""
    t = graph.add_variable(as_dtype(dtype), (pattern.shape[1], n), name=name or f"{pattern.name}/rhs")
    map_linearly(graph, t)
    return t


def create_dense_sparse_matmul_lhs(graph: Graph, pattern: CSRMatrix, m: int, dtype: Any, *,
                                   name: str = "") -> Tensor:
    """The dense left operand ``(m, K)`` of ``D . S``, spread linearly over the tiles."""
    t = graph.add_variable(as_dtype(dtype), (m, pattern.shape[0]), name=name or f"{pattern.name}/lhs")
    map_linearly(graph, t)
    return t


def create_dense_sparse_matmul_rhs(graph: Graph, pattern: CSRMatrix, m: int, dtype: Any, *,
                                   name: str = "") -> Tensor:
    """The non-zero values ``(nnz_blocks, b, b)`` of ``S`` for ``D . S`` with ``D`` ``(m, K)``."""
    return _nz_tensor(graph, pattern, m, dtype, "ds", name or f"{pattern.name}/nz")


def _check(ctx: OpContext, pattern: CSRMatrix, nz: Tensor, dense: Tensor, k_axis: int) -> None:
    if not isinstance(pattern, CSRMatrix):
        raise ctx.error(f"pattern must be an ops.sparse.CSRMatrix, got {type(pattern).__name__}")
    b = pattern.block_size
    if nz.shape != (pattern.nnz_blocks, b, b):
        raise ctx.error(f"non-zero values {nz.name} have shape {nz.shape}; pattern {pattern.name!r} needs "
                        f"({pattern.nnz_blocks}, {b}, {b}): make them with create_*_matmul_lhs/rhs")
    k = pattern.shape[0] if k_axis == 1 else pattern.shape[1]
    if dense.ndim != 2 or dense.shape[k_axis] != k:
        raise ctx.error(f"dense operand {dense.name} has shape {dense.shape}; pattern {pattern.name!r} "
                        f"{pattern.shape} needs {k} along axis {k_axis}")
    if nz.dtype is not dense.dtype or nz.dtype.name not in ("float16", "float32"):
        raise ctx.error(f"{nz.name} is {nz.dtype} and {dense.name} is {dense.dtype}; both must be "
                        "float16 or both float32")


_OPTIONS = {"numBands": 0}  # popsparse's MatMulOptions numBands: fix the K split (0: the planner's)


def _product(ctx: OpContext, pattern: CSRMatrix, nz: Tensor, dense: Tensor, mode: str,
             k_split: int = 0) -> Tensor:
    graph, b = ctx.graph, pattern.block_size
    sd = mode == "sd"
    m, n = (pattern.shape[0], dense.shape[1]) if sd else (dense.shape[0], pattern.shape[1])
    free = n if sd else m
    plan = sparse_partition(graph, pattern, free, nz.dtype, mode, k_split=k_split or None)
    out = graph.add_variable(nz.dtype, (m, n), name=f"{ctx.name}/out")
    ii = np.arange(b)

    def out_index(g: int, z0: int, z1: int) -> np.ndarray:
        zz = np.arange(z0, z1)
        return ((g * b + ii)[:, None] * n + zz[None, :]) if sd else (zz[:, None] * n + (g * b + ii)[None, :])

    out_tiles = np.zeros(m * n, np.int64)
    if plan.empty_bands.size:
        empty = np.concatenate([out_index(int(g), 0, free).ravel() for g in plan.empty_bands])
        out_tiles[empty] = np.arange(empty.size) * graph.num_tiles // empty.size  # spread evenly
    groups: dict[tuple[int, int], list[int]] = {}
    sums: dict[tuple[int, int], list[int]] = {}  # (band, z0) -> its units writing partials
    for u, (g, (z0, z1)) in enumerate(zip(plan.bands, plan.z, strict=True)):
        if plan.partial[u] < 0:
            out_tiles[out_index(g, z0, z1).ravel()] = plan.tiles[u]
        else:
            sums.setdefault((g, z0), []).append(u)
        groups.setdefault((plan.blocks[u].size, z1 - z0), []).append(u)
    for units in sums.values():  # each reduced output where its first partial is
        g, (z0, z1) = plan.bands[units[0]], plan.z[units[0]]
        out_tiles[out_index(g, z0, z1).ravel()] = plan.tiles[units[0]]
    graph.set_tile_mappings(out.flatten(), out_tiles)
    if plan.empty_bands.size:
        from softipu.ops.indexing import zero  # same layer: popops' zero of the empty bands

        zero(graph, out.flatten()[empty], ctx.prog, name=f"{ctx.name}/zero")
    if not plan.bands:
        return out
    part_flat, part_start = _partials(ctx, plan, b, nz.dtype)
    out_flat = out.flatten()
    _add_products(ctx, plan, nz, dense, out_flat, part_flat, part_start, groups, out_index)
    if sums:
        _reduce_partials(ctx, plan, sums, part_flat, part_start, out_flat, out_index, b)
    return out


def _add_products(ctx: OpContext, plan: _Plan, nz: Tensor, dense: Tensor, out_flat: Tensor, part_flat: Any,
                  part_start: np.ndarray, groups: dict, out_index: Any) -> None:
    """The product vertices, one per unit, writing the output or (K split) their partials."""
    b, sd = nz.shape[-1], plan.mode == "sd"
    ii, kd = np.arange(b), dense.shape[1]
    codelet = sparse_block_codelet(nz.dtype, b, plan.mode)
    cs = ctx.compute_set()
    nz_flat, dense_flat = nz.flatten(), dense.flatten()
    area = np.arange(b * b)
    for units in groups.values():
        nz_idx, d_idx, o_idx, p_idx = [], [], [], []
        for u in units:
            z0, z1 = plan.z[u]
            zz = np.arange(z0, z1)
            nz_idx.append((plan.blocks[u][:, None] * (b * b) + area[None, :]).ravel())
            rows = plan.inner[u][:, None] * b + ii[None, :]  # (nb, b) rows (sd) / columns (ds) of D
            if sd:
                d = rows[:, :, None] * kd + zz[None, None, :]
            else:
                d = zz[None, :, None] * kd + rows[:, None, :]
            d_idx.append(d.ravel())
            if plan.partial[u] < 0:
                o_idx.append(out_index(plan.bands[u], z0, z1).ravel())
            else:
                p_idx.append(part_start[plan.partial[u]] + np.arange(b * (z1 - z0)))
        for sel, idx, flat in ((plan.partial[units] < 0, o_idx, out_flat),
                               (plan.partial[units] >= 0, p_idx, part_flat)):
            if not idx:
                continue
            which = np.flatnonzero(sel)
            fields = {"nz": nz_flat[np.stack([nz_idx[i] for i in which])],
                      "dense": dense_flat[np.stack([d_idx[i] for i in which])], "out": flat[np.stack(idx)]}
            ctx.graph.add_vertices(cs, codelet, fields, plan.tiles[np.asarray(units)[which]])
    ctx.execute(cs)


def _partials(ctx: OpContext, plan: _Plan, b: int, dtype: DType) -> tuple[Any, np.ndarray]:
    """The K split's partials: one ``b x z`` piece per unit that writes them, on the unit's tile
    (in the data type, as popsparse's static partials), and each piece's first element."""
    units = np.flatnonzero(plan.partial >= 0)
    if not units.size:
        return None, np.zeros(0, np.int64)
    sizes = np.asarray([b * (plan.z[u][1] - plan.z[u][0]) for u in units], np.int64)
    start = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    part = ctx.graph.add_variable(dtype, (int(sizes.sum()),), name=f"{ctx.name}/partials")
    ctx.graph.set_tile_mappings(part, np.repeat(plan.tiles[units], sizes))
    slot_start = np.zeros(units.size, np.int64)
    slot_start[plan.partial[units]] = start
    return part.flatten(), slot_start


def _reduce_partials(ctx: OpContext, plan: _Plan, sums: dict, part_flat: Tensor, part_start: np.ndarray,
                     out_flat: Tensor, out_index: Any, b: int) -> None:
    """popops' reduction of each output piece's partials (one per column band that touches it)
    where the output lives: ``ReduceColumns`` vertices (fp32 accumulation for fp16, one rounding),
    priced by poplibs' reduce estimators (codelets.reduce.columns_cycles)."""
    cs = ctx.compute_set("reduce")
    codelet = columns_codelet(ReduceOp.ADD, out_flat.dtype, out_flat.dtype, raw=True)
    by_shape: dict[tuple[int, int], list[list[int]]] = {}
    for units in sums.values():
        z0, z1 = plan.z[units[0]]
        by_shape.setdefault((len(units), z1 - z0), []).append(units)
    for (r, z), members in by_shape.items():
        starts = np.asarray([[part_start[plan.partial[u]] for u in units] for units in members], np.int64)
        parts = [part_flat[starts[:, j:j + 1] + np.arange(b * z)] for j in range(r)]
        outs = out_flat[np.stack([out_index(plan.bands[u[0]], *plan.z[u[0]]).ravel() for u in members])]
        step = starts[:, 1:] - starts[:, :-1]
        even = int(step[0, 0]) if step.size and step[0, 0] > 0 and np.all(step == step[0, 0]) else 0
        ctx.graph.add_vertices(cs, codelet, {"parts": parts, "out": outs, "scale": 1.0, "part_step": even},
                               plan.tiles[[u[0] for u in members]])
    ctx.execute(cs)


def sparse_dense_matmul(graph: Graph, lhs_nz: Tensor, rhs: Tensor, prog: Any, *, pattern: CSRMatrix,
                        name: str = "", options: dict | None = None) -> Tensor:
    """``S . rhs`` for the block-sparse ``S`` of ``pattern`` with values ``lhs_nz``; ``(M, N)``.

    >>> import numpy as np, softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops import sparse
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=4)); prog = P.Sequence()
    >>> pat = sparse.CSRMatrix.from_mask([[1, 0], [0, 1]], 4)
    >>> nz = sparse.create_sparse_dense_matmul_lhs(g, pat, 3, sp.float32)
    >>> d = sparse.create_sparse_dense_matmul_rhs(g, pat, 3, sp.float32)
    >>> y = sparse.sparse_dense_matmul(g, nz, d, prog, pattern=pat)
    >>> eng = sp.Engine(g, [prog]); eng.write_tensor(nz, np.stack([np.eye(4)] * 2))
    >>> eng.write_tensor(d, np.ones((8, 3))); eng.run(0); float(eng.read_tensor(y).sum())
    24.0
    """
    ctx = OpContext.start(graph, prog, "sparse_dense_matmul", name, lhs_nz, rhs)
    opts = parse_options(ctx, options, _OPTIONS)
    _check(ctx, pattern, lhs_nz, rhs, 0)
    return _product(ctx, pattern, lhs_nz, rhs, "sd", opts["numBands"])


def dense_sparse_matmul(graph: Graph, lhs: Tensor, rhs_nz: Tensor, prog: Any, *, pattern: CSRMatrix,
                        name: str = "", options: dict | None = None) -> Tensor:
    """``lhs . S`` for the block-sparse ``S`` of ``pattern`` with values ``rhs_nz``; ``(M, N)``."""
    ctx = OpContext.start(graph, prog, "dense_sparse_matmul", name, lhs, rhs_nz)
    opts = parse_options(ctx, options, _OPTIONS)
    _check(ctx, pattern, rhs_nz, lhs, 1)
    return _product(ctx, pattern, rhs_nz, lhs, "ds", opts["numBands"])


def sparse_dense_matmul_grad_rhs(graph: Graph, lhs_nz: Tensor, grad_out: Tensor, prog: Any, *,
                                 pattern: CSRMatrix, name: str = "") -> Tensor:
    """The gradient ``(K, N)`` of ``S . D``'s dense ``D`` given ``grad_out`` ``(M, N)``: ``S^T . G``,
    computed as ``(G^T . S)^T`` by :func:`dense_sparse_matmul` on the same values."""
    out = dense_sparse_matmul(graph, grad_out.transpose(), lhs_nz, prog, pattern=pattern,
                              name=name or "sparse_dense_matmul_grad_rhs")
    return out.transpose()


def dense_sparse_matmul_grad_lhs(graph: Graph, grad_out: Tensor, rhs_nz: Tensor, prog: Any, *,
                                 pattern: CSRMatrix, name: str = "") -> Tensor:
    """The gradient ``(M, K)`` of ``D . S``'s dense ``D`` given ``grad_out`` ``(M, N)``: ``G . S^T``,
    computed as ``(S . G^T)^T`` by :func:`sparse_dense_matmul` on the same values."""
    out = sparse_dense_matmul(graph, rhs_nz, grad_out.transpose(), prog, pattern=pattern,
                              name=name or "dense_sparse_matmul_grad_lhs")
    return out.transpose()


def sparse_values_grad(graph: Graph, grad_out: Tensor, dense: Tensor, prog: Any, *, pattern: CSRMatrix,
                       mode: str, name: str = "") -> Tensor:
    """The gradient ``(nnz_blocks, b, b)`` of the sparse operand's values, at its blocks only.

    ``mode="sd"`` for ``Y = S . D`` (``dense`` is ``D`` ``(K, N)``): block ``(r, c)`` gets
    ``G[r] . D[c]^T`` over the rows of band ``r`` / ``c``. ``mode="ds"`` for ``Y = D . S``
    (``dense`` is ``D`` ``(M, K)``): block ``(r, c)`` gets ``D[:, r]^T . G[:, c]``. The result is
    mapped like the values (each block on the tile of the forward plan)."""
    ctx = OpContext.start(graph, prog, "sparse_values_grad", name, grad_out, dense)
    if mode not in ("sd", "ds"):
        raise ctx.error(f"mode must be 'sd' (S . D) or 'ds' (D . S), got {mode!r}")
    sd = mode == "sd"
    if not isinstance(pattern, CSRMatrix):
        raise ctx.error(f"pattern must be an ops.sparse.CSRMatrix, got {type(pattern).__name__}")
    (m, k), b = pattern.shape, pattern.block_size
    want_d = (k, grad_out.shape[1]) if sd else (grad_out.shape[0], m)
    want_g = (m, want_d[1]) if sd else (want_d[0], k)
    if grad_out.ndim != 2 or dense.ndim != 2 or grad_out.shape != want_g or dense.shape != want_d:
        raise ctx.error(f"grad_out {grad_out.name} {grad_out.shape} and dense {dense.name} {dense.shape} do "
                        f"not fit pattern {pattern.name!r} {pattern.shape} in mode {mode!r}: "
                        f"need grad_out {want_g} and dense {want_d}")
    if grad_out.dtype is not dense.dtype or dense.dtype.name not in ("float16", "float32"):
        raise ctx.error(f"{grad_out.name} is {grad_out.dtype} and {dense.name} is {dense.dtype}; both must "
                        "be float16 or both float32")
    length = grad_out.shape[1] if sd else grad_out.shape[0]
    plan = sparse_partition(graph, pattern, length, dense.dtype, mode)
    out = graph.add_variable(dense.dtype, (pattern.nnz_blocks, b, b), name=f"{ctx.name}/out")
    if not pattern.nnz_blocks:
        return out
    graph.set_tile_mappings(out, plan.block_tiles)
    ii, ll = np.arange(b), np.arange(length)
    rows, cols = pattern.block_rows, pattern.column_indices
    if sd:  # a = G[r*b + i, l], b = D[c*b + j, l]
        a_idx = ((rows[:, None] * b + ii)[:, :, None] * length + ll).reshape(len(rows), -1)
        b_idx = ((cols[:, None] * b + ii)[:, :, None] * length + ll).reshape(len(rows), -1)
        a_src, b_src = grad_out, dense
    else:  # a = D[l, r*b + i], b = G[l, c*b + j]
        a_idx = (ll[None, None, :] * m + (rows[:, None] * b + ii)[:, :, None]).reshape(len(rows), -1)
        b_idx = (ll[None, None, :] * k + (cols[:, None] * b + ii)[:, :, None]).reshape(len(rows), -1)
        a_src, b_src = dense, grad_out
    fields = {"a": a_src.flatten()[a_idx], "b": b_src.flatten()[b_idx],
              "out": out.reshape((pattern.nnz_blocks, b * b))}
    cs = ctx.compute_set()
    graph.add_vertices(cs, sparse_grad_codelet(dense.dtype, b), fields, plan.block_tiles)
    ctx.execute(cs)
    return out
