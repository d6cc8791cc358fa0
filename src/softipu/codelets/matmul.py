"""poplin-style matmul codelets: the AMP partial-product vertex and the partials reduction.

**AmpMatMul** (``MultiVertex``) computes one tile's partial product ``out = a . b`` of an
``m x k`` block of the left operand and a ``k x n`` block of the right one, with the
accumulating matrix product (AMP) unit. A matmul is a 1x1 convolution whose field is the ``m``
rows, input channels ``k`` and output channels ``n``; the estimate is poplibs' ConvPartial1x1Out
supervisor estimator (``getConvPartial1x1SupervisorCycleEstimate`` and its inner and outer
loops, graphcore/poplibs lib/poplin/PerformanceEstimation.hpp, the latest published version,
where worker register-state retention always applies; the vertex-level wrapper is
``MAKE_CYCLE_ESTIMATOR_NAME(ConvPartial1x1Out)`` in lib/poplin/poplinCycleEstimators.cpp). Every
figure is in :data:`AMP` with its tag; in outline:

* one AMP pass takes ``in_chans`` input channels of a row (``weightsPerConvUnit``: 16 on a
  GC200, fp16 and fp32: "the 16x8 AMP vertex") into ``conv_units`` output channels (16 fp16 / 8
  fp32), so k and n are cut into ``n_in = ceil(k / in_chans)`` input groups and ``n_out = ceil(n
  / conv_units)`` output groups (poplin pads both, ConvVertexType.cpp: partialChansPerGroup =
  numConvUnits);
* each (input group, output group) loads the conv units' weights:
  ``conv_units x in_chans x itemsize / coeff_load_bytes`` cycles, with
  ``target.conv_unit_coeff_load_bytes_per_cycle`` = 8 B (poplin's default 64-bit weight loads);
* the six workers split the ``m`` rows, one worklist entry each (none, and no cycles, for a
  worker without rows); a worker with ``r >= 3`` rows costs (fp16 in, fp32 partials)
  ``38 + 4 (r - 3) - 10`` on the pass that zeroes the partials and ``40 + 4 (r - 3) - 10`` when it
  adds to them (10: the retained worker state); (fp16, fp16 partials) ``41 + (2 + 2 r) z + 4 (r -
  3)``; (fp32) ``46 + (2 + 4 r) z + 8 (r - 3)`` (z = 1 on the zeroing pass; figures for r < 3 in
  :data:`AMP`). The pass costs ``max(W x busiest worker, W x least busy + 14)``;
* supervisor loops: ``50 + W (10 + 2 (n_in - 1)) [fp16/fp32 only] + 12 + (n_in - 1) (16 + n_out
  (19 + 6 + loads + inner)) + (11 + n_out (19 + 7 + loads + inner_zeroing))``;
* an accumulating vertex (a later serial K chunk) is the zeroing product plus an in-place add of
  its ``m x n`` partials, as poplin implements input-channel serial splits (:func:`amp_cycles`).

Peak check: 4 worker cycles per fp16 row over 6 interleaved workers produce 16 x 16 MACs every
4 tile cycles = 64 MACs/cycle = ``target.amp_macs_per_cycle_fp16``; fp32 16 x 8 / 8 = 16.

**ReducePartials** (``Vertex``, one worker) adds ``P`` partials of ``n`` elements and writes one
output region (a worker's share of whole rows of a tile's chunk, :mod:`softipu.ops._matmul_vertices`;
the sum is elementwise, so the region's shape does not matter). Its estimate is one worker's share
of poplin's ReduceAdd estimator
(``getReduceCycleEstimate``, lib/poplin/PerformanceEstimation.hpp): 32 cycles of set-up, then
per loop of 4 fp32 (8 fp16) partials ``3 P + 7`` cycles (``3 P + 6`` writing half; fp16
partials ``3 P + 9`` / ``3 P + 8``), a remainder of 1-3 (1-7) elements one shorter loop of
``2 P + 13`` (``2 P + 11``). One partial row is a cast (or copy), priced as poplin's
``estimateCastCycles``: ``max(ceil(n / vw_partials), ceil(n / vw_out)) + 26`` per worker. See
:data:`REDUCE`.

The engine runs a group's AMP vertices over ``(vertices, m, k)`` x ``(vertices, k, n)`` views of
tile memory, merged into larger GEMMs where vertices share a block (:mod:`softipu.codelets.gemm`:
any accumulation order within the written rounding bound of design.md principle 6).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

from softipu.codelets._common import ceil_div as _ceil_div
from softipu.codelets.elementwise import BinaryOp
from softipu.codelets.elementwise.estimates import ESTIMATES as ELEMENTWISE
from softipu.codelets.elementwise.estimates import binary_op_cycles
from softipu.codelets.gemm import as_float32 as _as_float32
from softipu.codelets.gemm import gemm
from softipu.codelets.host import on_idle_cores, scratch
from softipu.dtypes import DType, float16, float32, int32
from softipu.graph.vertex import FieldShape as _Shape
from softipu.graph.vertex import InOut, Input, MultiVertex, Output, Param, Vertex
from softipu.target import Target

__all__ = ["AMP", "REDUCE", "AmpEstimates", "ReduceEstimates", "amp_in_chans", "amp_out_chans",
           "amp_cycles", "amp_worker_cycles", "coeff_load_cycles", "accumulate_cycles", "amp_codelet",
           "reduce_cycles",
           "reduce_codelet", "gemm", "A_TRANSPOSED", "B_TRANSPOSED"]

# Layout bits of the AmpMatMul ``layout`` param: a block is stored as its transpose.
A_TRANSPOSED, B_TRANSPOSED = 1, 2


@dataclass(frozen=True, slots=True)
class AmpEstimates:
    """Every figure of the AMP estimate [V], read in poplibs' ConvPartial1x1Out estimator, the
    latest published version (graphcore/poplibs lib/poplin/PerformanceEstimation.hpp, the one
    with quarter (fp8) support: getConvPartial1x1SupervisorInnerLoopCycleEstimate / ...OuterLoop-
    CycleEstimate / getConvPartialAmpSupervisorWeightLoadCycleEstimate). There the worker
    register-state retention (``conv1x1WorkerRetentionSavings``) is no longer behind the
    WORKER_REG_STATE_RETAINED build flag of earlier versions: it always applies. Worker figures
    are one worker's cycles; the worklist has one entry per worker and a worker with no rows has
    none (0 cycles: poplin's partitionConvPartialByWorker skips empty partitions).
    """

    # "Core loop cycles for 16x8 AMP vertex": per output row, by input itemsize [V].
    core_cycles_per_row: tuple[tuple[int, int], ...] = ((2, 4), (4, 8))
    # (in itemsize, partials itemsize) -> (zeroing, accumulating) worker cycles for 1, 2 and >= 3
    # rows, before the per-row zeroing below, the (rows - 3) core loops and the retention saving;
    # a zeroing entry includes the fixed 2 of ``(2 + c r) z`` [V]:
    #   fp32:       47 + (2 + 4) z, 46 + (2 + 8) z, 46 + (2 + 4 r) z          (zeroCyclesPerGroup 4)
    #   fp16/fp16:  39 + (2 + 2) z, 40 + (2 + 4) z, 41 + (2 + 2 r) z          (zeroCyclesPerGroup 2)
    #   fp16/fp32:  31 + (z ? 2 : 4), 40 + (z ? 2 : 4), (z ? 38 : 40): the AMP starts from clear
    #               accumulators, so the zeroing pass is the cheaper one.
    worker_base: tuple[tuple[tuple[int, int], tuple[tuple[int, int], ...]], ...] = (
        ((4, 4), ((49, 47), (48, 46), (48, 46))),
        ((2, 2), ((41, 39), (42, 40), (43, 41))),
        ((2, 4), ((33, 35), (42, 44), (38, 40))))
    # zeroing cost per row on the zeroing pass, by (in, partials) itemsize [V]
    zero_per_row: tuple[tuple[tuple[int, int], int], ...] = (((4, 4), 4), ((2, 2), 2), ((2, 4), 0))
    # Worker state retention [V] (fp16 in, fp32 partials only): each worker saves ``first`` per
    # pass, and the supervisor pays back W x (first + second x (passes' input groups - 1)).
    retention: tuple[tuple[tuple[int, int], tuple[int, int]], ...] = (((2, 4), (10, 2)),)
    tag_cycles: int = 14  # supervisor work tagged onto the least busy worker [V]
    # Supervisor loops [V]: non-loop overhead, per conv group, per extra input group (15 + the
    # excessInChanOverhead 1), the first input group (10 + 1), per output group, per output pass
    # of an accumulating group and of the zeroing group (outPassesOverhead).
    supervisor_overhead: int = 50
    per_conv_group: int = 12
    per_in_group: int = 16
    first_in_group: int = 11
    per_out_group: int = 19
    per_out_pass: int = 6
    first_out_pass: int = 7

    def core_cycles(self, itemsize: int) -> int:
        return dict(self.core_cycles_per_row)[itemsize]

    def base(self, in_size: int, partials_size: int) -> tuple[tuple[int, int], ...]:
        return dict(self.worker_base)[(in_size, partials_size)]

    def zeroing(self, in_size: int, partials_size: int) -> int:
        return dict(self.zero_per_row)[(in_size, partials_size)]

    def retained(self, in_size: int, partials_size: int) -> tuple[int, int]:
        return dict(self.retention).get((in_size, partials_size), (0, 0))


@dataclass(frozen=True, slots=True)
class ReduceEstimates:
    """poplin's ReduceAdd estimator [V] (getReduceCycleEstimate, lib/poplin/
    PerformanceEstimation.hpp), per worker: fixed set-up, elements per loop by partials type,
    loop cycles ``3 P + c`` by (partials, output) type and the shorter remainder loop."""

    setup: int = 32
    per_partial: int = 3
    elems_per_loop: tuple[tuple[int, int], ...] = ((4, 4), (2, 8))  # partials itemsize -> elements
    # (partials itemsize, output itemsize) -> c of 3 P + c
    loop_fixed: tuple[tuple[tuple[int, int], int], ...] = (
        ((4, 4), 7), ((4, 2), 6), ((2, 4), 9), ((2, 2), 8))
    remainder_per_partial: int = 2
    remainder_fixed: tuple[tuple[int, int], ...] = ((4, 13), (2, 11))  # by partials itemsize
    # One partial row (no K split): poplin does not run ReduceAdd but a cast,
    # estimateCastCycles (lib/poplin/PerformanceEstimation.hpp) [V]: per worker
    # ``max(ceil(n / vw_partials), ceil(n / vw_out)) + 26``. A same-type copy (N split, one
    # partial) is priced by the same loop [U]: one vector loaded and stored per cycle.
    cast_fixed: int = 26


AMP = AmpEstimates()
REDUCE = ReduceEstimates()


def _macs_per_cycle(dtype: DType, target: Target) -> int:
    return target.amp_macs_per_cycle_fp16 if dtype.itemsize == 2 else target.amp_macs_per_cycle_fp32


def amp_out_chans(dtype: DType, target: Target) -> int:
    """Output channels of one AMP pass: one per conv unit."""
    return target.conv_units_fp16 if dtype.itemsize == 2 else target.conv_units_fp32


def amp_in_chans(dtype: DType, target: Target) -> int:
    """Input channels one AMP pass consumes per output row (poplin's weightsPerConvUnit)."""
    return max(1, _macs_per_cycle(dtype, target) * AMP.core_cycles(dtype.itemsize)
               // amp_out_chans(dtype, target))


def coeff_load_cycles(dtype: DType, target: Target) -> int:
    """Cycles to load one pass's weights into the conv units [V formula, ipu-facts §5]:
    ``conv_units x weightsPerConvUnit x itemsize / coeff load bytes per cycle``."""
    weight_bytes = amp_out_chans(dtype, target) * amp_in_chans(dtype, target) * dtype.itemsize
    return _ceil_div(weight_bytes, target.conv_unit_coeff_load_bytes_per_cycle)


def _types(in_dtype: DType, partials_dtype: DType) -> tuple[int, int]:
    """(in, partials) itemsizes as the AMP sees them: fp32 inputs always accumulate in fp32."""
    return in_dtype.itemsize, 4 if in_dtype.itemsize == 4 else partials_dtype.itemsize


def amp_worker_cycles(rows, in_dtype: DType, partials_dtype: DType, zeroing: bool):
    """One worker's cycles for ``rows`` output rows in one AMP pass [V] (see :data:`AMP`)."""
    rows = np.asarray(rows, np.int64)
    z = int(bool(zeroing))
    key = _types(in_dtype, partials_dtype)
    base = np.array([pair[1 - z] for pair in AMP.base(*key)], np.int64)
    body = (base[np.clip(rows - 1, 0, 2)] + AMP.zeroing(*key) * rows * z
            + np.maximum(rows - 3, 0) * AMP.core_cycles(in_dtype.itemsize) - AMP.retained(*key)[0])
    return np.where(rows == 0, 0, body)


def _amp_inner(m, in_dtype: DType, partials_dtype: DType, workers: int, zeroing: bool):
    """Tile cycles of one pass: the busiest worker's (``ceil(m / W)`` rows) times W, or the
    least busy one's (``m // W`` rows) times W plus the supervisor's tagged work [V]."""
    busiest = amp_worker_cycles(_ceil_div(m, workers), in_dtype, partials_dtype, zeroing)
    least = amp_worker_cycles(m // workers, in_dtype, partials_dtype, zeroing)
    return np.maximum(workers * busiest, workers * least + AMP.tag_cycles)


def amp_cycles(m, k, n, in_dtype: DType, partials_dtype: DType, target: Target,
               zeroing: bool = True):
    """Tile cycles of one AMP partial product ``(m x k) . (k x n)`` (ints or int arrays).

    ``zeroing=False``: the product is added to partials already in memory (a later serial K
    chunk, :func:`amp_codelet` with ``accumulate``). poplibs' ConvPartial1x1Out cannot do that:
    its first input-channel group always overwrites the partials (``out`` is an Output;
    lib/poplin/codelets/ConvPartial1x1Out.cpp: ``if (ig == 0) out = sum; else out += sum``), so
    poplin computes each serial chunk into fresh partials and adds them in place
    (lib/poplin/ConvModel.cpp addInPlaceEstimate, "this is how we actually implement it"). The
    accumulating vertex is priced the same way: :func:`accumulate_cycles` on top of a zeroing
    product.
    """
    m, k, n = (np.asarray(x, np.int64) for x in (m, k, n))
    workers = target.workers_per_tile
    n_in = _ceil_div(k, amp_in_chans(in_dtype, target))
    n_out = _ceil_div(n, amp_out_chans(in_dtype, target))
    loads = coeff_load_cycles(in_dtype, target)
    inner = _amp_inner(m, in_dtype, partials_dtype, workers, False)
    inner0 = _amp_inner(m, in_dtype, partials_dtype, workers, True)
    first = AMP.first_in_group + n_out * (AMP.per_out_group + AMP.first_out_pass + loads + inner0)
    rest = np.maximum(n_in - 1, 0) * (
        AMP.per_in_group + n_out * (AMP.per_out_group + AMP.per_out_pass + loads + inner))
    keep, per_group = AMP.retained(*_types(in_dtype, partials_dtype))
    retention = workers * (keep + per_group * np.maximum(n_in - 1, 0))
    cycles = AMP.supervisor_overhead + retention + AMP.per_conv_group + first + rest
    cycles = np.where((m == 0) | (n == 0), AMP.supervisor_overhead, cycles)
    if not zeroing:
        cycles = cycles + accumulate_cycles(m * n, partials_dtype, target)
    return cycles


def accumulate_cycles(elements, partials_dtype: DType, target: Target):
    """Tile cycles to add ``elements`` freshly computed partials onto the running ones in place:
    poplibs' BinaryOp1DInPlace ADD estimate (``W x (58 + inner) + 11``, ipu-facts §5), the
    vertex poplin's addInPlaceEstimate prices for an input-channel serial split [V]."""
    return binary_op_cycles(BinaryOp.ADD, partials_dtype, np.asarray(elements, np.int64), target,
                            fixed=ELEMENTWISE.in_place_fixed)


def reduce_cycles(num_partials, n, partials_dtype: DType, out_dtype: DType, target: Target):
    """One worker's cycles to add ``num_partials`` rows of ``n`` elements (see :data:`REDUCE`).

    poplin's ReduceAdd spreads a vertex's outputs over the six workers and charges each
    ``setup + loops x (3 P + c)``; here one worker owns a share of whole rows, so its loops are
    the share's.
    One partial row is a cast (or copy), priced as poplin prices it (``REDUCE.cast_fixed``).
    """
    p, n = np.asarray(num_partials, np.int64), np.asarray(n, np.int64)
    per = dict(REDUCE.elems_per_loop)[partials_dtype.itemsize]
    c = dict(REDUCE.loop_fixed)[(partials_dtype.itemsize, out_dtype.itemsize)]
    short = dict(REDUCE.remainder_fixed)[partials_dtype.itemsize]
    full = n // per
    remainder = np.where(n % per > 0, REDUCE.remainder_per_partial * p + short, 0)
    add = REDUCE.setup + full * (REDUCE.per_partial * p + c) + remainder
    vectors = np.maximum(_ceil_div(n, target.vector_width(partials_dtype.itemsize)),
                         _ceil_div(n, target.vector_width(out_dtype.itemsize)))
    return np.where(p <= 1, vectors + REDUCE.cast_fixed, add)


# -- host execution ----------------------------------------------------------------------------
_ADD_WORK = 16  # an element added from memory costs the host about as much as 16 MACs


@cache
def amp_codelet(in_dtype: DType, partials_dtype: DType, accumulate: bool = False) -> type[Vertex]:
    """``poplin::ConvPartial1x1Out<in, partials>`` as a matmul: ``out = a . b`` for one block.

    Fields: ``a`` (``m*k``), ``b`` (``k*n``), ``out`` (``m*n``), each block contiguous in memory,
    row-major or (``layout`` bits) stored as its transpose; params ``m``, ``k``, ``n``.
    ``accumulate``: ``out += a . b`` (a later serial K chunk; ``out`` is then InOut).
    """
    out_field = InOut(partials_dtype) if accumulate else Output(partials_dtype)

    class AmpMatMul(MultiVertex):
        # No cache-sized chunks: the group's products are merged and cut by gemm itself.
        chunk_fields = ()
        # Small groups of a compute set may run as one call, the groups a leading axis.
        merge_groups = True
        a = Input(in_dtype)
        b = Input(in_dtype)
        out = out_field
        m = Param(int32)
        k = Param(int32)
        n = Param(int32)
        layout = Param(int32)

        @staticmethod
        def compute(a, b, out, m, k, n, layout):
            if out.size == 0:
                return
            mm, kk, nn, bits = m.item(0), k.item(0), n.item(0), layout.item(0)
            lead = out.shape[:-1]
            a3 = a.reshape(lead + (kk, mm)).swapaxes(-1, -2) if bits & A_TRANSPOSED else \
                a.reshape(lead + (mm, kk))
            b3 = b.reshape(lead + (nn, kk)).swapaxes(-1, -2) if bits & B_TRANSPOSED else \
                b.reshape(lead + (kk, nn))
            if a3.dtype != np.float32:
                a3, b3 = _as_float32(a3), _as_float32(b3)
            o3 = out.reshape(lead + (mm, nn))
            if o3.dtype == np.float32:  # straight into (or onto) the partials
                gemm(a3, b3, o3, accumulate)
                return
            tmp = scratch(o3.shape)  # half partials: accumulate in fp32, round once
            if accumulate:
                tmp[...] = o3
            gemm(a3, b3, tmp, accumulate)
            o3[...] = tmp

        @staticmethod
        def cycles(a, b, out, m, k, n, layout, target):
            return amp_cycles(m, k, n, in_dtype, partials_dtype, target, zeroing=not accumulate)

        @staticmethod
        def flops(a, b, out, m, k, n, layout):
            return 2 * np.asarray(m, np.int64) * np.asarray(k, np.int64) * np.asarray(n, np.int64)

    suffix = ",accumulate" if accumulate else ""
    AmpMatMul.__name__ = AmpMatMul.__qualname__ = (
        f"AmpMatMul<{in_dtype.name},{partials_dtype.name}{suffix}>")
    return AmpMatMul


@cache
def reduce_codelet(partials_dtype: DType, out_dtype: DType) -> type[Vertex]:
    """``poplin::ReduceAdd<out, partials>``: ``out = sum(partials)`` over one worker's share, in
    fp32, the partials added in their order."""

    class ReducePartials(Vertex):
        merge_groups = True  # small groups of a compute set may run as one call (groups lead)
        partials = Input(partials_dtype, _Shape.VECTOR_LIST)
        out = Output(out_dtype)

        @staticmethod
        def compute(partials, out):
            if len(partials) == 1:
                out[...] = partials[0]
                return

            def rows(lo: int, hi: int) -> None:
                # Summed in a cache-sized scratch in a fixed order, then stored once.
                part = [p[..., lo:hi, :] for p in partials]
                acc = scratch(part[0].shape)
                np.add(part[0], part[1], out=acc, dtype=np.float32)
                for p in part[2:]:
                    np.add(acc, p, out=acc, dtype=np.float32)
                out[..., lo:hi, :] = acc

            on_idle_cores(rows, out.shape[-2], out.size * len(partials) * _ADD_WORK)

        @staticmethod
        def cycles(partials, out, target):
            return reduce_cycles(len(partials), out, partials_dtype, out_dtype, target)

        @staticmethod
        def flops(partials, out):
            return max(len(partials) - 1, 0) * out

    ReducePartials.__name__ = ReducePartials.__qualname__ = (
        f"ReducePartials<{partials_dtype.name},{out_dtype.name}>")
    return ReducePartials


# fp16 inputs accumulate in fp32 partials by default (poplin's partialsType "float").
DEFAULT_PARTIALS = {float16: float32, float32: float32}
