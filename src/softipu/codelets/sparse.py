"""popsparse-style static block-sparse codelets: one vertex multiplies the non-zero blocks of one
block-row (sparse x dense) or block-column (dense x sparse) of a sparse matrix by the matching
slices of a dense operand, for one slice of the dense operand's free dimension.

**SparseDenseBlock** (``SupervisorVertex``), fields ``nz`` (``nb`` blocks of ``b x b``, row-major
each), ``dense`` (the ``nb`` matching dense pieces, concatenated) and ``out`` (one ``b``-wide band
of the result):

* mode ``"sd"`` (sparse x dense, popsparse's ForwardAMPBlock): ``dense`` holds ``nb`` pieces of
  ``b x z`` (the rows of the dense operand that each block's columns select), ``out`` is ``b x z``
  and ``out = sum_j nz_j . dense_j``;
* mode ``"ds"`` (dense x sparse, TransposeAMPBlock): ``dense`` holds ``nb`` pieces of ``z x b``,
  ``out`` is ``z x b`` and ``out = sum_j dense_j . nz_j``.

Block length 1 (element sparsity) uses the same fields with ``b = 1``.

Cycle estimates. poplibs' static vertices (``popsparse::StaticSparseDenseMatMulBlock`` and
``StaticSparseDenseElementWise``, lib/popsparse/StaticMatMulPartitioner / codelets) have no
published estimator of their own: ``MAKE_CYCLE_ESTIMATOR_NAME(SparseDenseMatMulBlock)`` in
lib/popsparse/popsparseCycleEstimators.cpp returns 0 [V]. We use the planner's model of the same
AMP block kernels, ``sparseDenseBlockMultiply`` (block lengths 4, 8, 16) and
``sparseDenseElementwiseMultiply`` (length 1), graphcore/poplibs lib/popsparse/
PerformanceEstimation.hpp [V formulas], with one bucket holding this vertex's one sub-group
(``numBuckets = numBucketsWithInfoForPN = averageSubgroupsPerBucket = 1``: a static pattern has no
bucket search) [U: that the static vertex costs what the dynamic planner's model says], ``numX = 1``
block-row, ``numY = [nb]``, ``numZ`` = the busiest worker's share ``ceil(z / W)`` of the free
dimension (the planner's ``workerZElems``). Partials are the data type (ipu-facts-scale §5), so
``floatPartials = floatInput``. Every figure is in :data:`BLOCK` / :data:`ELEMENT`.

Worked check (fp16, 16x16 block, one block, z = 16 so numZ = 3, 16 conv units, retainX):
workers ``6 x (22 + (22 + 3 x 4 - 3)) = 318``; supervisor ``40 + (0 + 1) x 46 + 56 = 142`` plus
block loads ``(1 x (256 / 4 + 3 + 12) + 1) x 1 + 2 = 82``: **542** cycles.

The engine evaluates a batch of vertices as one stacked ``matmul`` and sums over blocks, in fp32
for fp16 data (any accumulation order, design.md principle 6), rounding once to the output type.
The fast engine hands every group of a product's compute set to :class:`SparseProductRunner`
(the codelet's ``group_runner``): the pattern is fixed at load, so the whole compute set becomes
one element-wise CSR matrix whose data is a fixed permutation of the values' storage, and a run is
one ``take`` of the values, scipy.sparse's product with the dense operand read in place (a view of
the buffer), and one write of the outputs (scipy is a runtime dependency for this).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache, partial

import numpy as np

from softipu.codelets._common import ceil_div
from softipu.codelets.host import CORES
from softipu.dtypes import DType
from softipu.graph.vertex import Input, Output, SupervisorVertex, Vertex
from softipu.target import Target

__all__ = ["BLOCK", "ELEMENT", "BLOCK_SIZES", "BlockEstimates", "ElementEstimates", "SparseProductRunner",
           "block_multiply_cycles", "element_multiply_cycles", "sparse_block_codelet",
           "sparse_grad_codelet"]

BLOCK_SIZES = (1, 4, 8, 16)


@dataclass(frozen=True, slots=True)
class BlockEstimates:
    """``sparseDenseBlockMultiply`` figures [V] (poplibs lib/popsparse/PerformanceEstimation.hpp)."""

    supervisor_overhead: int = 40
    per_bucket_not_for_pn: int = 33  # x (buckets without info for this PN) x subgroups
    per_subgroup_searched: int = 46  # x (subgroups searched until the first match)
    per_bucket_for_pn: int = 56
    coeff_load_divisor: tuple[int, int] = (4, 2)  # elements per 64-bit load: (half, float)
    per_block_load: int = 3
    per_weight_load: int = 12
    retain_x_saving: int = 3  # worker cycles saved per weight load when X is retained
    # by block length: cycles per Z element (half, float)
    cycles_per_z: tuple[tuple[int, tuple[int, int]], ...] = ((4, (2, 4)), (8, (4, 8)), (16, (4, 4)))

    def worker_overhead(self, block: int, float_in: bool, float_partials: bool, conv_units: int) -> int:
        if block == 4:
            return 26
        if block == 8:
            return 23 if float_in else (20 if float_partials else 23)
        if float_partials:
            return 23
        return 22 if conv_units == 16 else 23

    def inner_overhead(self, block: int, float_in: bool, float_partials: bool, conv_units: int,
                       num_z: np.ndarray) -> np.ndarray:
        """``innerOverhead`` by numZ = 1, 2, >= 3 [V]."""
        if block == 4:
            table = (14, 14, 14) if float_partials and float_in else (
                (17, 18, 19) if float_partials else (15, 16, 17))
        elif block == 8:
            table = ((22, 22, 23) if float_in else (22, 23, 23)) if float_partials else (19, 20, 20)
        elif float_partials or conv_units == 8:
            table = (24, 25, 24)
        else:
            table = (22, 23, 22)
        return np.asarray(table, np.int64)[np.clip(num_z, 1, 3) - 1]


@dataclass(frozen=True, slots=True)
class ElementEstimates:
    """``sparseDenseElementwiseMultiply`` figures [V] (same file), block length 1."""

    supervisor_overhead: int = 30
    per_subgroup_searched: int = 44
    per_bucket_for_pn: int = 46


BLOCK = BlockEstimates()
ELEMENT = ElementEstimates()


def block_multiply_cycles(num_y, num_z, block: int, float_in: bool, conv_units: int,
                          workers: int, retain_x: bool):
    """Tile cycles of one vertex: one X block against ``num_y`` non-zero blocks, ``num_z``
    free-dimension elements per worker (ints or int arrays) [V formula, see :data:`BLOCK`]."""
    e = BLOCK
    num_y = np.asarray(num_y, np.int64)
    num_z = np.asarray(num_z, np.int64)
    float_partials = float_in  # static: partials are the data type
    supervisor = e.supervisor_overhead + e.per_subgroup_searched + e.per_bucket_for_pn
    loads = 2 if (block == 16 and conv_units == 8) else 1
    coeff = block * block // e.coeff_load_divisor[int(float_in)]
    block_loads = (num_y * (coeff + e.per_block_load + e.per_weight_load * loads) + int(retain_x)) + 2
    inner = (e.inner_overhead(block, float_in, float_partials, conv_units, num_z)
             + num_z * dict(e.cycles_per_z)[block][int(float_in)])
    worker = (e.worker_overhead(block, float_in, float_partials, conv_units)
              + num_y * loads * (inner - e.retain_x_saving * int(retain_x)))
    return worker * workers + supervisor + block_loads


def _half_inner(y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """``sparseDenseElementwiseMultiply`` worker inner cycles of one row, half input [V]."""
    general = (np.where(z // 8 > 0, 16 + z // 8 * 3 * y, 0) + np.where(z & 4, 13 + 2 * y, 0)
               + np.where(z & 3, 11 + 2 * y * (z & 3), 0))
    return np.where(z == 8, 3 * y, np.where(z == 4, 2 * y, general))


def _float_inner(y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """The same, float input [V]."""
    general = (np.where(z // 4 > 0, 12 + z // 4 * 3 * y, 0) + np.where(z & 2, 8 + z // 2 * 2 * y, 0)
               + np.where(z & 1, 8 + 2 * y, 0) + np.where(z & 3, 3, 1))
    return np.where(z == 4, 3 * y, np.where(z == 2, 2 * y, general))


def element_multiply_cycles(num_y, num_z, float_in: bool, workers: int):
    """Tile cycles of one element-sparse vertex: one row with ``num_y`` non-zeros, ``num_z``
    free-dimension elements per worker [V formula, see :data:`ELEMENT`]."""
    e = ELEMENT
    y = np.asarray(num_y, np.int64)
    z = np.asarray(num_z, np.int64)
    supervisor = e.supervisor_overhead + e.per_subgroup_searched + e.per_bucket_for_pn
    if float_in:
        overhead = np.where(z == 4, 22, np.where(z == 2, 24, 27))
        x_overhead = np.where(z == 4, 13, np.where(z == 2, 11, 12))
        inner = _float_inner(y, z)
    else:
        overhead = np.where(z == 8, 25, np.where(z == 4, 27, 30))
        x_overhead = np.where(z == 8, 15, 11)
        inner = _half_inner(y, z)
    return (overhead + x_overhead + inner) * workers + supervisor


@cache
def sparse_block_codelet(dtype: DType, block: int, mode: str) -> type[Vertex]:
    """The static block-sparse product vertex for ``dtype``, block length ``block`` and ``mode``
    ``"sd"`` (sparse x dense) or ``"ds"`` (dense x sparse); see the module docstring."""
    if block not in BLOCK_SIZES or mode not in ("sd", "ds"):
        raise ValueError(f"sparse_block_codelet: block {block} mode {mode!r}")
    area = block * block
    sd = mode == "sd"

    class SparseDenseBlock(SupervisorVertex):
        nz = Input(dtype)
        dense = Input(dtype)
        out = Output(dtype)

        @staticmethod
        def compute(nz, dense, out):
            lead = out.shape[:-1]
            nb = nz.shape[-1] // area
            z = out.shape[-1] // block
            s = nz.reshape(lead + (nb, block, block)).astype(np.float32, copy=False)
            if sd:
                d = dense.reshape(lead + (nb, block, z)).astype(np.float32, copy=False)
                prod = np.matmul(s, d)
            else:
                d = dense.reshape(lead + (nb, z, block)).astype(np.float32, copy=False)
                prod = np.matmul(d, s)
            out[...] = prod.sum(axis=-3).reshape(out.shape)

        @staticmethod
        def cycles(nz, dense, out, target: Target):
            workers = target.workers_per_tile
            num_z = ceil_div(out // block, workers)
            float_in = dtype.itemsize == 4
            if block == 1:
                return element_multiply_cycles(nz, num_z, float_in, workers)
            units = target.conv_units_fp32 if float_in else target.conv_units_fp16
            return block_multiply_cycles(nz // area, num_z, block, float_in, units, workers, sd)

        @staticmethod
        def flops(nz, dense, out):
            return 2 * (nz // area) * area * (out // block)

        @staticmethod
        def group_runner(groups, storage, where):  # the fast engine's whole-compute-set hook
            return SparseProductRunner(groups, storage, where, block, sd)

    name = "StaticSparseDenseMatMulBlock" if sd else "StaticDenseSparseMatMulBlock"
    SparseDenseBlock.__name__ = SparseDenseBlock.__qualname__ = f"{name}<{dtype.name},{block}>"
    return SparseDenseBlock


@cache
def sparse_grad_codelet(dtype: DType, block: int) -> type[Vertex]:
    """The gradient of a sparse operand's values, one non-zero block per vertex (a sampled dense x
    dense^T product): fields ``a`` and ``b`` (``block x L`` each, already laid out by the op's index
    arrays) and ``out`` (``block x block``), ``out = a . b^T``.

    Cycles [U]: poplibs' static ops have no gradient of the values; popsparse's dynamic
    ``GradWAMPBlock`` estimator is not modelled yet. We price one vertex as the forward AMP kernel
    above running the same multiply-accumulates: ``ceil(L / block)`` blocks against a free dimension
    of ``block`` (block lengths 4, 8, 16), or the element kernel with ``L`` non-zeros and a free
    dimension of 1 (block length 1)."""
    if block not in BLOCK_SIZES:
        raise ValueError(f"sparse_grad_codelet: block {block}")
    area = block * block

    class SparseGradBlock(SupervisorVertex):
        a = Input(dtype)
        b = Input(dtype)
        out = Output(dtype)

        @staticmethod
        def compute(a, b, out):
            lead = out.shape[:-1]
            length = a.shape[-1] // block
            x = a.reshape(lead + (block, length)).astype(np.float32, copy=False)
            y = b.reshape(lead + (block, length)).astype(np.float32, copy=False)
            out[...] = np.matmul(x, np.swapaxes(y, -1, -2)).reshape(out.shape)

        @staticmethod
        def cycles(a, b, out, target: Target):
            workers = target.workers_per_tile
            length = a // block
            float_in = dtype.itemsize == 4
            if block == 1:
                return element_multiply_cycles(length, 1, float_in, workers)
            units = target.conv_units_fp32 if float_in else target.conv_units_fp16
            return block_multiply_cycles(ceil_div(length, block), ceil_div(block, workers), block, float_in,
                                         units, workers, True)

        @staticmethod
        def flops(a, b, out):
            return 2 * area * (a // block)

    SparseGradBlock.__name__ = SparseGradBlock.__qualname__ = f"StaticSparseGradW<{dtype.name},{block}>"
    return SparseGradBlock


class SparseProductRunner:
    """All groups of one :func:`sparse_block_codelet` codelet in a compute set, run as scipy.sparse
    CSR products (the fast engine's ``group_runner`` hook; one replica).

    The pattern is fixed when the engine loads, so this is built once, from the fields' addresses
    alone. Vertices whose ``nz`` addresses are the same (one band, cut into slices of the free
    dimension) merge into one whose dense pieces and output are the slices side by side, in address
    order. A merged vertex is ``b`` rows of one product ``Y = A . X`` (one per free length, see
    :class:`_CsrProduct`): ``X``'s rows are the distinct dense rows the vertices read (``"sd"``: rows
    of the dense operand; ``"ds"``: its columns), ``A`` is element-wise CSR whose data is a fixed
    permutation of the ``nz`` values (``"sd"``: row ``i`` of a merged vertex holds row ``i`` of its
    blocks; ``"ds"``: column ``i``). A K split's partials are outputs like any other: the reduction's
    compute set reads them as planned. Each output element's contraction runs in scipy's fixed order,
    in fp32 (fp16 data too), rounded once to its type: within the same bound as the vertices' sums
    (design.md principle 6)."""

    __slots__ = ("group", "where", "shares")

    def __init__(self, groups, storage, where: str, block: int, sd: bool) -> None:
        self.group, self.where = groups[0], where
        buf = storage.buffers[groups[0].codelet.fields["out"].dtype][0]
        by_free: dict[int, list] = {}
        for vals, rows, out in _merged(groups, block, sd):
            by_free.setdefault(rows.shape[1], []).append((vals, rows, out))
        self.shares = [share for members in by_free.values() for share in _CsrProduct(buf, members).shares]

    def jobs(self, storage) -> list:
        """The products' row shares, largest first (each writes its own outputs, so the values
        are the same bits however the engine runs them)."""
        if len(self.shares) < 2:
            return [self.run]
        shares = sorted(self.shares, key=lambda s: s.matrix.nnz, reverse=True)
        return [partial(self._run, [s]) for s in shares]

    def run(self) -> None:
        self._run(self.shares)

    def _run(self, shares: list) -> None:
        for share in shares:
            share()


def _merged(groups, b: int, sd: bool):
    """Each merged vertex (see :class:`SparseProductRunner`) as ``(values, rows, out)`` addresses:
    ``values`` ``(b, nb * b)`` (row ``i``: the values output row ``i`` contracts with ``rows``),
    ``rows`` ``(nb * b, Z)`` (the dense rows, ``Z`` the free length), ``out`` ``(b, Z)``."""
    area = b * b
    merged: dict[bytes, tuple[np.ndarray, list, list]] = {}
    for g in groups:
        nz, dense, out = (g.fields[n].addresses() for n in ("nz", "dense", "out"))
        nb, z = nz.shape[1] // area, out.shape[1] // b
        for v in range(nz.shape[0]):
            if sd:  # out (b, z) = sum_j S_j (b, b) . D_j (b, z)
                rows, o = dense[v].reshape(nb * b, z), out[v].reshape(b, z)
            else:  # out^T (b, z) = sum_j S_j^T . D_j^T, D_j (z, b)
                rows = dense[v].reshape(nb, z, b).transpose(0, 2, 1).reshape(nb * b, z)
                o = out[v].reshape(z, b).T
            entry = merged.setdefault(nz[v].tobytes(), (nz[v], [], []))
            entry[1].append(rows)
            entry[2].append(o)
    for nz_row, rows, outs in merged.values():
        rows, out = np.concatenate(rows, axis=1), np.concatenate(outs, axis=1)
        order = np.argsort(rows[0], kind="stable")  # the slices in address order
        blocks = nz_row.reshape(-1, b, b)
        vals = blocks.transpose(1, 0, 2) if sd else blocks.transpose(2, 0, 1)
        yield vals.reshape(b, -1), rows[:, order], out[:, order]


class _CsrProduct:
    """``Y = A . X`` for the merged vertices of one free length ``Z`` (see
    :class:`SparseProductRunner`), in row shares of about equal non-zeros (:class:`_Share`, the jobs
    the engine may run side by side: scipy's product releases the interpreter lock). ``X`` is a
    view of the buffer when its rows are ``Z`` consecutive addresses a whole number of rows apart
    (a row-major dense operand's rows), read in place; else one ``take`` a run (then one share)."""

    __slots__ = ("shares",)

    def __init__(self, buf: np.ndarray, members: list) -> None:
        x_addr, cols = _distinct_rows([m[1] for m in members])
        view = _row_view(buf, x_addr)
        if view is None:
            x, ncols = np.ascontiguousarray(x_addr, np.intp), x_addr.shape[0]
        else:
            x, ids = view
            ncols, cols = x.shape[0], [ids[c] for c in cols]
        b = members[0][0].shape[0]
        indices = np.concatenate([np.tile(c, b) for c in cols])
        lengths = np.concatenate([np.full(m[0].shape[0], m[0].shape[1], np.int64) for m in members])
        values = np.concatenate([m[0].ravel() for m in members])
        out = np.concatenate([m[2] for m in members])
        # Rows in their outputs' address order (a share's outputs one block of the buffer where
        # they lie so), each row's non-zeros in column order (X's rows read in address order).
        rank = np.empty(lengths.size, np.int64)
        rank[np.argsort(out[:, 0], kind="stable")] = np.arange(lengths.size)
        order = np.lexsort((indices, np.repeat(rank, lengths)))
        indices, values = indices[order], values[order]
        lengths, out = lengths[np.argsort(rank)], out[np.argsort(rank)]
        indptr = np.concatenate([[0], np.cumsum(lengths)])
        work = int(indptr[-1]) * x.shape[-1]
        parts = 1 if view is None or buf.dtype != np.float32 else max(1, min(2 * CORES, work // SHARE_WORK))
        cuts = np.unique(np.searchsorted(indptr, np.arange(parts + 1) * indptr[-1] / parts))
        cuts[0], cuts[-1] = 0, lengths.size
        self.shares = [_Share(buf, x, ncols, view is not None, values[indptr[lo]:indptr[hi]],
                              indices[indptr[lo]:indptr[hi]], indptr[lo:hi + 1] - indptr[lo], out[lo:hi])
                       for lo, hi in zip(cuts[:-1].tolist(), cuts[1:].tolist(), strict=True) if hi > lo]


@cache
def _matvecs():
    """scipy.sparse's own kernel behind ``csr @ dense`` (Y += A . X, called with Y given), or None
    in a scipy without it (then ``csr @ dense`` and a copy). Imported at the first product: scipy.sparse
    costs ~0.2 s, which ``import softipu`` should not pay."""
    try:
        from scipy.sparse._sparsetools import csr_matvecs
    except ImportError:
        return None
    return csr_matvecs

# Multiply-accumulates of one share of a product at least (rows cut into at most 2 x the host's
# cores; a share of this many takes about 0.2 ms).
SHARE_WORK = 1 << 19


class _Share:
    """Rows of one :class:`_CsrProduct`: a run takes the values into ``A.data`` (fp32), reads
    ``X``, multiplies with scipy.sparse and writes ``Y`` to the outputs (by rows where they lie as
    rows of ``Z`` consecutive addresses a whole number of rows apart, else element by element)."""

    __slots__ = ("buf", "matrix", "values", "x", "x_view", "out", "out_rows", "direct", "kernel")

    def __init__(self, buf, x, ncols: int, x_view: bool, values, indices, indptr, out) -> None:
        import scipy.sparse  # a runtime dependency: the host's product of a static pattern

        self.buf, self.x, self.x_view = buf, x, x_view
        self.values = np.ascontiguousarray(values, np.intp)
        self.matrix = scipy.sparse.csr_matrix((np.zeros(indices.size, np.float32), indices, indptr),
                                              shape=(indptr.size - 1, ncols))
        view = _row_view(buf, out)
        self.out_rows = view is not None
        self.out = view if view is not None else np.ascontiguousarray(out, np.intp)
        # fp32 outputs that are one block of rows in row order, X read in place: scipy's kernel
        # accumulates straight into them (no result to allocate and copy).
        self.direct, self.kernel = None, _matvecs()
        if (self.kernel is not None and view is not None and x_view and buf.dtype == np.float32
                and np.array_equal(view[1], view[1][0] + np.arange(view[1].size))):
            self.direct = view[0][int(view[1][0]):int(view[1][0]) + view[1].size].reshape(-1)

    def __call__(self) -> None:
        data = self.matrix.data
        if self.buf.dtype == np.float32:
            np.take(self.buf, self.values, out=data, mode="clip")  # addresses are in range
        else:
            data[...] = self.buf.take(self.values)
        if self.direct is not None:
            a = self.matrix
            self.direct.fill(0)
            self.kernel(a.shape[0], a.shape[1], self.x.shape[1], a.indptr, a.indices, data,
                        self.x.reshape(-1), self.direct)
            return
        x = self.x if self.x_view else self.buf.take(self.x)
        y = self.matrix @ x.astype(np.float32, copy=False)
        if self.out_rows:
            rows, ids = self.out
            rows[ids] = y
        else:
            self.buf[self.out] = y


def _distinct_rows(rows: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """The distinct dense rows of the merged vertices (``(R, Z)`` addresses) and, per merged vertex,
    each of its rows' index among them. Rows are told apart by their first address and checked whole
    (a tensor's element has one address, so rows that start alike are the same row)."""
    first = np.concatenate([r[:, 0] for r in rows])
    keys, at, inv = np.unique(first, return_index=True, return_inverse=True)
    starts = np.concatenate([[0], np.cumsum([r.shape[0] for r in rows])])
    member = np.searchsorted(starts, at, side="right") - 1
    x_addr = np.stack([rows[m][i] for m, i in zip(member.tolist(), (at - starts[member]).tolist(),
                                                    strict=True)])
    cols = [inv[starts[m]:starts[m + 1]] for m in range(len(rows))]
    step = 64  # merged vertices checked at a time
    if all(np.array_equal(x_addr[np.concatenate(cols[i:i + step])], np.concatenate(rows[i:i + step]))
           for i in range(0, len(rows), step)):
        return x_addr, cols
    whole = np.concatenate(rows)  # rows that start alike but differ: told apart whole
    x_addr, inv = np.unique(whole, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    return x_addr, [inv[starts[m]:starts[m + 1]] for m in range(len(rows))]


def _row_view(buf: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """``(rows, row ids)``: ``buf`` as rows of ``w`` (``index``'s last axis) and the row of each
    of ``index``'s rows, when each is ``w`` consecutive addresses starting a whole number of rows
    from the lowest (a row-major operand's rows); else None."""
    w = index.shape[-1]
    if not index.size or (w > 1 and not np.all(np.diff(index, axis=-1) == 1)):
        return None
    starts = index[:, 0]
    lo = int(starts.min())
    if np.any((starts - lo) % w):
        return None
    hi = int(starts.max()) + w
    return buf[lo:hi].reshape(-1, w), (starts - lo) // w
