"""poplin-style matmul codelets: the AMP partial-product vertex and the partials reduction.

**AmpMatMul** (``MultiVertex``) computes one tile's partial product ``out = a . b`` of an
``m x k`` block of the left operand and a ``k x n`` block of the right one, with the
accumulating matrix product (AMP) unit. A matmul is a 1x1 convolution whose field is the ``m``
rows, input channels ``k`` and output channels ``n``; the estimate is poplibs' ConvPartial1x1Out
supervisor estimator (``getConvPartial1x1SupervisorCycleEstimate`` and its inner and outer
loops, graphcore/poplibs lib/poplin/PerformanceEstimation.hpp, the sdk-release-3.x version with
per-type worker figures; the vertex-level wrapper is ``MAKE_CYCLE_ESTIMATOR_NAME(
ConvPartial1x1Out)`` in lib/poplin/poplinCycleEstimators.cpp). Every figure is in
:data:`AMP` with its tag; in outline:

* one AMP pass takes ``in_chans`` input channels of a row (``weightsPerConvUnit``: 16 on a
  GC200, fp16 and fp32) into ``conv_units`` output channels (16 fp16 / 8 fp32), so k and n are
  cut into ``n_in = ceil(k / in_chans)`` input groups and ``n_out = ceil(n / conv_units)``
  output groups (poplin pads both, ConvVertexType.cpp: partialChansPerGroup = numConvUnits);
* each (input group, output group) loads the conv units' weights:
  ``conv_units x in_chans x itemsize / coeff_load_bytes`` cycles, with
  ``target.conv_unit_coeff_load_bytes_per_cycle`` = 8 B (poplin's default 64-bit weight loads);
* the six workers split the ``m`` rows; a worker with ``r`` rows costs (fp16 in, fp32 partials)
  ``41 + 4 (r - 3)`` when its pass zeroes the partials and ``44 + 4 (r - 3)`` when it adds to
  them; (fp16, fp16 partials) ``45 + (2 + 2 r) z + 4 (r - 3)``; (fp32) ``50 + (2 + 8 r) z +
  8 (r - 3)`` (z = 1 on the zeroing pass; figures for r < 3 in :data:`AMP`). The pass costs
  ``max(W x busiest worker, W x least busy + 14)``;
* supervisor loops: ``50 + 12 + (n_in - 1) (15 + n_out (19 + 6 + loads + inner)) +
  (10 + n_out (19 + 6 + loads + inner_zeroing))``.

Peak check: 4 worker cycles per fp16 row over 6 interleaved workers produce 16 x 16 MACs every
4 tile cycles = 64 MACs/cycle = ``target.amp_macs_per_cycle_fp16``; fp32 16 x 8 / 8 = 16.

**ReducePartials** (``Vertex``, one worker) adds ``P`` partial rows of ``n`` elements and writes
one output row. Its estimate is one worker's share of poplin's ReduceAdd estimator
(``getReduceCycleEstimate``, lib/poplin/PerformanceEstimation.hpp): 32 cycles of set-up, then
per loop of 4 fp32 (8 fp16) partials ``3 P + 7`` cycles (``3 P + 6`` writing half; fp16
partials ``3 P + 9`` / ``3 P + 8``), a remainder of 1-3 (1-7) elements one shorter loop of
``2 P + 13`` (``2 P + 11``). See :data:`REDUCE`.

The engine runs a group's AMP vertices over ``(vertices, m, k)`` x ``(vertices, k, n)`` views of
tile memory, merged into larger GEMMs where vertices share a block (:mod:`softipu.codelets.gemm`:
any accumulation order within the written rounding bound of design.md principle 6).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

from softipu.codelets._common import ceil_div as _ceil_div
from softipu.codelets.gemm import as_float32 as _as_float32
from softipu.codelets.gemm import gemm
from softipu.codelets.host import on_idle_cores, scratch
from softipu.dtypes import DType, float16, float32, int32
from softipu.graph.vertex import FieldShape as _Shape
from softipu.graph.vertex import InOut, Input, MultiVertex, Output, Param, Vertex
from softipu.target import Target

__all__ = ["AMP", "REDUCE", "AmpEstimates", "ReduceEstimates", "amp_in_chans", "amp_out_chans",
           "amp_cycles", "amp_worker_cycles", "coeff_load_cycles", "amp_codelet", "reduce_cycles",
           "reduce_codelet", "gemm", "A_TRANSPOSED", "B_TRANSPOSED"]

# Layout bits of the AmpMatMul ``layout`` param: a block is stored as its transpose.
A_TRANSPOSED, B_TRANSPOSED = 1, 2


@dataclass(frozen=True, slots=True)
class AmpEstimates:
    """Every figure of the AMP estimate, each read in poplibs' ConvPartial1x1Out estimator [V]
    (lib/poplin/PerformanceEstimation.hpp, getConvPartial1x1SupervisorInnerLoop/OuterLoop-
    CycleEstimate, without worker register-state retention, whose savings are 0 unless the
    WORKER_REG_STATE_RETAINED build flag is set). Worker figures are one worker's cycles."""

    core_cycles_per_row: tuple[tuple[int, int], ...] = ((2, 4), (4, 8))  # by itemsize [V]
    # fp32 inputs (f32sisoamp): rows 0 / 1-2 / >= 3 base, zeroing per row and fixed [V].
    float_empty: int = 28
    float_base: int = 50
    float_zero_fixed: int = 2
    float_zero_per_row: int = 8
    # fp16 inputs, fp32 partials: (zeroing, accumulating) by rows 0, 1, 2, >= 3 [V]; the
    # zeroing pass is the cheaper one (the AMP starts from clear accumulators).
    half_float_partials: tuple[tuple[int, int], ...] = ((26, 29), (39, 43), (41, 45), (41, 44))
    # fp16 inputs, fp16 partials: base by rows 1, 2, >= 3, empty worker, zeroing [V].
    half_half_base: tuple[int, int, int] = (43, 44, 45)
    half_half_empty: int = 28
    half_zero_fixed: int = 2
    half_zero_per_row: int = 2
    tag_cycles: int = 14  # supervisor work tagged onto the least busy worker [V]
    # Supervisor loops [V]: non-loop overhead, per conv group, per extra input group, the
    # first input group, per output group, per output pass.
    supervisor_overhead: int = 50
    per_conv_group: int = 12
    per_in_group: int = 15
    first_in_group: int = 10
    per_out_group: int = 19
    per_out_pass: int = 6

    def core_cycles(self, itemsize: int) -> int:
        return dict(self.core_cycles_per_row)[itemsize]


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


def amp_worker_cycles(rows, in_dtype: DType, partials_dtype: DType, zeroing: bool):
    """One worker's cycles for ``rows`` output rows in one AMP pass [V] (see :data:`AMP`)."""
    rows = np.asarray(rows, np.int64)
    z = int(bool(zeroing))
    core = AMP.core_cycles(in_dtype.itemsize)
    extra = np.maximum(rows - 3, 0) * core
    if in_dtype.itemsize == 4:
        body = AMP.float_base + (AMP.float_zero_fixed + AMP.float_zero_per_row * rows) * z + extra
        return np.where(rows == 0, AMP.float_empty, body)
    if partials_dtype.itemsize == 4:
        table = np.array([row[1 - z] for row in AMP.half_float_partials], np.int64)
        return table[np.minimum(rows, 3)] + extra
    base = np.array(AMP.half_half_base, np.int64)[np.clip(rows - 1, 0, 2)]
    body = base + (AMP.half_zero_fixed + AMP.half_zero_per_row * rows) * z + extra
    return np.where(rows == 0, AMP.half_half_empty, body)


def _amp_inner(m, in_dtype: DType, partials_dtype: DType, workers: int, zeroing: bool):
    """Tile cycles of one pass: the busiest worker's (``ceil(m / W)`` rows) times W, or the
    least busy one's (``m // W`` rows) times W plus the supervisor's tagged work [V]."""
    busiest = amp_worker_cycles(_ceil_div(m, workers), in_dtype, partials_dtype, zeroing)
    least = amp_worker_cycles(m // workers, in_dtype, partials_dtype, zeroing)
    return np.maximum(workers * busiest, workers * least + AMP.tag_cycles)


def amp_cycles(m, k, n, in_dtype: DType, partials_dtype: DType, target: Target,
               zeroing: bool = True):
    """Tile cycles of one AMP partial product ``(m x k) . (k x n)`` (ints or int arrays).

    ``zeroing``: the first input-channel group starts the partials from zero; an accumulating
    vertex (a later serial K chunk) adds to them instead, on every input group.
    """
    m, k, n = (np.asarray(x, np.int64) for x in (m, k, n))
    workers = target.workers_per_tile
    n_in = _ceil_div(k, amp_in_chans(in_dtype, target))
    n_out = _ceil_div(n, amp_out_chans(in_dtype, target))
    loads = coeff_load_cycles(in_dtype, target)
    inner = _amp_inner(m, in_dtype, partials_dtype, workers, False)
    inner0 = _amp_inner(m, in_dtype, partials_dtype, workers, zeroing)
    per_out = AMP.per_out_group + AMP.per_out_pass + loads  # one output pass per group
    first = AMP.first_in_group + n_out * (per_out + inner0)
    rest = np.maximum(n_in - 1, 0) * (AMP.per_in_group + n_out * (per_out + inner))
    cycles = AMP.supervisor_overhead + AMP.per_conv_group + first + rest
    return np.where((m == 0) | (n == 0), AMP.supervisor_overhead, cycles)


def reduce_cycles(num_partials, n, partials_dtype: DType, out_dtype: DType, target: Target):
    """One worker's cycles to add ``num_partials`` rows of ``n`` elements (see :data:`REDUCE`).

    poplin's ReduceAdd spreads a vertex's outputs over the six workers and charges each
    ``setup + loops x (3 P + c)``; here one worker owns the row, so its loops are the row's.
    """
    p, n = np.asarray(num_partials, np.int64), np.asarray(n, np.int64)
    per = dict(REDUCE.elems_per_loop)[partials_dtype.itemsize]
    c = dict(REDUCE.loop_fixed)[(partials_dtype.itemsize, out_dtype.itemsize)]
    short = dict(REDUCE.remainder_fixed)[partials_dtype.itemsize]
    full = n // per
    remainder = np.where(n % per > 0, REDUCE.remainder_per_partial * p + short, 0)
    return REDUCE.setup + full * (REDUCE.per_partial * p + c) + remainder


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
    """``poplin::ReduceAdd<out, partials>``: ``out = sum(partials)`` over one row, in fp32."""

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
