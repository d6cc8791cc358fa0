"""Static block-sparse products (popsparse::static_-shaped): a pattern fixed at compile time.

The pattern is a :class:`CSRMatrix` by blocks: ``shape`` (rows, cols) of the sparse matrix,
``block_size`` (1, 4, 8 or 16), ``row_indices`` (``rows / b + 1`` offsets into the blocks, CSR
style) and ``column_indices`` (each block's block-column, in blocks). The non-zero values live on
the device as a tensor ``(nnz_blocks, b, b)`` in CSR order, created for the plan by
:func:`create_sparse_dense_matmul_lhs` / :func:`create_dense_sparse_matmul_rhs`.

* :func:`sparse_dense_matmul`: ``out (M, N) = S (M, K) . D (K, N)``;
* :func:`dense_sparse_matmul`: ``out (M, N) = D (M, K) . S (K, N)``.

Partitioner: a work unit is one block-row (sparse x dense) or block-column (dense x sparse) of
the sparse matrix against one slice of the dense operand's free dimension; the free dimension is
cut into as many slices as keep every tile busy, and units are placed largest first on the least
loaded tile (by the codelet's own cycle estimate), so non-zero blocks spread evenly. A unit's
non-zero blocks, output band and (for the first slice) values live on its tile. Output bands with
no non-zero blocks are zeroed. Not done yet: splitting one long row over tiles with a partials
reduction (popsparse's K split), grouped products.

Gradients (training): of the dense operand, through the other product with the same values
(:func:`sparse_dense_matmul_grad_rhs`: ``dD = S^T . G = (G^T . S)^T``;
:func:`dense_sparse_matmul_grad_lhs`: ``dD = G . S^T = (S . G^T)^T``); of the values at the
pattern's blocks only (:func:`sparse_values_grad`, a sampled dense product, one vertex per block on
the block's own tile, the contraction not split over tiles yet).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any

import numpy as np

from softipu.codelets.sparse import BLOCK_SIZES, sparse_block_codelet, sparse_grad_codelet
from softipu.debug import at, caller_location
from softipu.dtypes import DType, as_dtype
from softipu.graph.graph import Graph
from softipu.graph.tensor import Tensor
from softipu.ops.common import OpContext, OpError, parse_options
from softipu.ops.mapping import map_linearly

__all__ = ["CSRMatrix", "create_sparse_dense_matmul_lhs", "create_sparse_dense_matmul_rhs",
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
    inner block indices ``inner``, free-dimension slice ``[z0, z1)``, tile."""

    mode: str
    bands: list[int]
    blocks: list[np.ndarray]
    inner: list[np.ndarray]
    z: list[tuple[int, int]]
    tiles: np.ndarray
    empty_bands: np.ndarray
    block_tiles: np.ndarray


def _unit_cost(nb: int, width: int, block: int, dtype: DType, sd: bool, graph: Graph) -> int:
    codelet = sparse_block_codelet(dtype, block, "sd" if sd else "ds")
    return int(codelet.cycles(nb * block * block, 0, block * width, graph.target))


def sparse_partition(graph: Graph, pattern: CSRMatrix, free: int, dtype: DType, mode: str) -> _Plan:
    """Spread the pattern's work over the tiles (see the module docstring)."""
    sd = mode == "sd"
    b = pattern.block_size
    if sd:
        band_of, inner_of = pattern.block_rows, pattern.column_indices
        num_bands = pattern.shape[0] // b
    else:
        band_of, inner_of = pattern.column_indices, pattern.block_rows
        num_bands = pattern.shape[1] // b
    order = np.argsort(band_of, kind="stable")
    counts = np.bincount(band_of, minlength=num_bands)
    starts = np.concatenate([[0], np.cumsum(counts)])
    busy = np.flatnonzero(counts)
    tiles = graph.num_tiles
    workers = graph.target.workers_per_tile
    slices = int(max(1, min(-(-tiles // max(busy.size, 1)), -(-free // workers))))
    edges = np.linspace(0, free, slices + 1).astype(np.int64)
    units = [(int(g), int(edges[s]), int(edges[s + 1])) for g in busy for s in range(slices)
             if edges[s + 1] > edges[s]]
    costs = [_unit_cost(int(counts[g]), z1 - z0, b, dtype, sd, graph) for g, z0, z1 in units]
    heap = [(0, t) for t in range(tiles)]
    placed = np.zeros(len(units), np.int64)
    for u in sorted(range(len(units)), key=lambda i: -costs[i]):
        load, t = heapq.heappop(heap)
        placed[u] = t
        heapq.heappush(heap, (load + costs[u], t))
    block_tiles = np.zeros(pattern.nnz_blocks, np.int64)
    blocks, inner = [], []
    for u, (g, z0, _) in enumerate(units):
        pos = order[starts[g]:starts[g + 1]]
        blocks.append(pos)
        inner.append(inner_of[pos])
        if z0 == 0:
            block_tiles[pos] = placed[u]
    return _Plan(mode, [g for g, _, _ in units], blocks, inner, [(z0, z1) for _, z0, z1 in units],
                 placed, np.flatnonzero(counts == 0), block_tiles)


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


def _product(ctx: OpContext, pattern: CSRMatrix, nz: Tensor, dense: Tensor, mode: str) -> Tensor:
    graph, b = ctx.graph, pattern.block_size
    sd = mode == "sd"
    m, n = (pattern.shape[0], dense.shape[1]) if sd else (dense.shape[0], pattern.shape[1])
    free = n if sd else m
    plan = sparse_partition(graph, pattern, free, nz.dtype, mode)
    out = graph.add_variable(nz.dtype, (m, n), name=f"{ctx.name}/out")
    ii = np.arange(b)
    kd = dense.shape[1]

    def out_index(g: int, z0: int, z1: int) -> np.ndarray:
        zz = np.arange(z0, z1)
        return ((g * b + ii)[:, None] * n + zz[None, :]) if sd else (zz[:, None] * n + (g * b + ii)[None, :])

    out_tiles = np.zeros(m * n, np.int64)
    if plan.empty_bands.size:
        spread = np.arange(plan.empty_bands.size) % graph.num_tiles
        empty = np.concatenate([out_index(int(g), 0, free).ravel() for g in plan.empty_bands])
        out_tiles[empty] = np.repeat(spread, b * free)
    groups: dict[tuple[int, int], list[int]] = {}
    for u, (g, (z0, z1)) in enumerate(zip(plan.bands, plan.z, strict=True)):
        out_tiles[out_index(g, z0, z1).ravel()] = plan.tiles[u]
        groups.setdefault((plan.blocks[u].size, z1 - z0), []).append(u)
    graph.set_tile_mappings(out.flatten(), out_tiles)
    if plan.empty_bands.size:
        from softipu.ops.indexing import zero  # same layer: popops' zero of the empty bands

        zero(graph, out.flatten()[empty], ctx.prog, name=f"{ctx.name}/zero")
    if not plan.bands:
        return out
    codelet = sparse_block_codelet(nz.dtype, b, mode)
    cs = ctx.compute_set()
    nz_flat, dense_flat, out_flat = nz.flatten(), dense.flatten(), out.flatten()
    area = np.arange(b * b)
    for units in groups.values():
        nz_idx, d_idx, o_idx = [], [], []
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
            o_idx.append(out_index(plan.bands[u], z0, z1).ravel())
        fields = {"nz": nz_flat[np.stack(nz_idx)], "dense": dense_flat[np.stack(d_idx)],
                  "out": out_flat[np.stack(o_idx)]}
        graph.add_vertices(cs, codelet, fields, plan.tiles[units])
    ctx.execute(cs)
    return out


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
    parse_options(ctx, options, {})
    _check(ctx, pattern, lhs_nz, rhs, 0)
    return _product(ctx, pattern, lhs_nz, rhs, "sd")


def dense_sparse_matmul(graph: Graph, lhs: Tensor, rhs_nz: Tensor, prog: Any, *, pattern: CSRMatrix,
                        name: str = "", options: dict | None = None) -> Tensor:
    """``lhs . S`` for the block-sparse ``S`` of ``pattern`` with values ``rhs_nz``; ``(M, N)``."""
    ctx = OpContext.start(graph, prog, "dense_sparse_matmul", name, lhs, rhs_nz)
    parse_options(ctx, options, {})
    _check(ctx, pattern, rhs_nz, lhs, 1)
    return _product(ctx, pattern, rhs_nz, lhs, "ds")


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
