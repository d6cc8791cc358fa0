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
(the codelet's ``group_runner``): the vertices of one band (same non-zero values, slices of the
free dimension) run as one, so each block's values are read once and the dense operand once per
block, then one batched block product and a segmented sum, like scipy's BSR product.
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


# Bytes of fp32 operands one piece of a runner's class copies (about half a core's L2).
PIECE_BYTES = 512 * 1024


class SparseProductRunner:
    """All groups of one :func:`sparse_block_codelet` codelet in a compute set, run as one product
    (the fast engine's ``group_runner`` hook; one replica).

    Built once from the fields' addresses alone: vertices whose ``nz`` addresses are the same (one
    band, cut into slices of the free dimension) merge into one whose dense pieces and output are
    the slices side by side. A merged vertex's ``nb`` blocks are one GEMM with a contraction of
    ``nb * b``: ``[S_1 .. S_nb] . [D_1; ..; D_nb]`` (``"sd"``) or ``[D_1 .. D_nb] . [S_1; ..; S_nb]``
    (``"ds"``); merged vertices of equal ``nb`` and free length are one batched ``matmul`` (in
    pieces of :data:`PIECE_BYTES`). A run
    is, per such class, two ``take`` s of addresses laid out for that GEMM (fp32 for fp16 data),
    the ``matmul`` and one write of the outputs, rounded once to their type: each output element's
    contraction in another fixed order, within the same bound (design.md principle 6)."""

    __slots__ = ("group", "where", "classes", "sd")

    def __init__(self, groups, storage, where: str, block: int, sd: bool) -> None:
        self.group, self.where, self.sd = groups[0], where, sd
        b, area = block, block * block
        merged: dict[bytes, tuple[np.ndarray, list, list]] = {}
        for g in groups:
            nz, dense, out = (g.fields[n].addresses() for n in ("nz", "dense", "out"))
            nb, z = nz.shape[1] // area, out.shape[1] // b
            d_shape, o_shape = ((nb, b, z), (b, z)) if sd else ((nb, z, b), (z, b))
            for v in range(nz.shape[0]):
                entry = merged.setdefault(nz[v].tobytes(), (nz[v], [], []))
                entry[1].append(dense[v].reshape(d_shape))
                entry[2].append(out[v].reshape(o_shape))
        axis = -1 if sd else -2
        classes: dict[tuple[int, int], list] = {}
        for nz_row, ds, os in merged.values():
            d, o = np.concatenate(ds, axis=axis), np.concatenate(os, axis=axis)
            classes.setdefault((d.shape[0], o.shape[axis]), []).append((nz_row, d, o))
        buf = storage.buffers[groups[0].codelet.fields["out"].dtype][0]
        self.classes = []
        for (nb, z), members in classes.items():
            nz_idx = np.stack([m[0] for m in members]).reshape(-1, nb, b, b)
            d_idx = np.stack([m[1] for m in members])
            if sd:  # S (b, nb*b) . D (nb*b, z)
                left = nz_idx.transpose(0, 2, 1, 3).reshape(-1, b, nb * b)
                right = d_idx.reshape(-1, nb * b, z)
            else:  # D (z, nb*b) . S (nb*b, b)
                left = d_idx.transpose(0, 2, 1, 3).reshape(-1, z, nb * b)
                right = nz_idx.reshape(-1, nb * b, b)
            o_idx = np.stack([m[2] for m in members])
            # In pieces whose copied operands stay in cache until the product reads them.
            step = max(1, PIECE_BYTES // ((left[0].size + right[0].size) * 4))
            for lo in range(0, len(o_idx), step):
                self.classes.append(tuple(_access(buf, a[lo:lo + step]) for a in (left, right, o_idx)))

    def jobs(self, storage) -> list:
        """The pieces in up to ``2 x`` the host's cores shares of about equal work (largest first),
        which the fast engine may run side by side: each piece writes its own outputs, so the
        values are the same bits however they are shared."""
        shares = min(len(self.classes), 2 * CORES)
        if shares < 2:
            return [self.run]
        work = [_elements(left) + _elements(right) for left, right, _ in self.classes]
        loads = [[0, i, []] for i in range(shares)]
        for c in sorted(range(len(work)), key=work.__getitem__, reverse=True):
            share = min(loads)
            share[0] += work[c]
            share[2].append(c)
        loads.sort(reverse=True)
        return [partial(self._run, [self.classes[c] for c in members]) for _, _, members in loads if members]

    def run(self) -> None:
        self._run(self.classes)

    def _run(self, classes: list) -> None:
        for left, right, out in classes:
            product = np.matmul(_read(left), _read(right))
            if out[0] is None:
                out[1][out[2]] = product
            else:
                out[0][out[1]] = product


def _access(buf: np.ndarray, index: np.ndarray) -> tuple:
    """How a run reads or writes the elements at ``index``: ``(rows, row ids)`` where the last
    axis is runs of consecutive addresses starting a whole number of runs apart (a row-major
    dense operand's rows: copied row by row), else ``(None, buf, addresses)`` (element by element)."""
    index = np.ascontiguousarray(index, np.intp)
    w = index.shape[-1]
    starts = index[..., 0]
    if index.size and w > 1 and np.all(np.diff(index, axis=-1) == 1):
        lo = int(starts.min())
        if np.all((starts - lo) % w == 0):
            hi = int(starts.max()) + w
            return buf[lo:hi].reshape(-1, w), (starts - lo) // w
    return None, buf, index


def _elements(access: tuple) -> int:
    """How many values :func:`_read` of ``access`` reads."""
    return int(access[2].size) if access[0] is None else int(access[1].size) * access[0].shape[1]


def _read(access: tuple) -> np.ndarray:
    """The fp32 values ``access`` (from :func:`_access`) points at."""
    if access[0] is None:
        return access[1].take(access[2]).astype(np.float32, copy=False)
    return access[0].take(access[1], axis=0).astype(np.float32, copy=False)
