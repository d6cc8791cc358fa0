"""poplin-style matmul codelets: the AMP partial-product vertex and the partials reduction.

**AmpMatMul** (``MultiVertex``) computes one tile's partial product ``out = a . b`` of an
``m x k`` block of the left operand and a ``k x n`` block of the right one, with the
accumulating matrix product (AMP) unit. Its estimate follows poplibs' ConvPartial1x1Out
supervisor estimator (``getConvPartial1x1SupervisorCycleEstimate``, lib/poplin/
PerformanceEstimation.hpp, sdk-release-3.x; ipu-facts.md §5), with a matmul being a 1x1
convolution whose field is the ``m`` rows, input channels ``k`` and output channels ``n``:

* the AMP takes ``in_chans`` input channels per pass: ``amp_macs_per_cycle x cycles_per_row /
  conv_units`` (16 for fp16 and for fp32 on a GC200) and produces one output channel per conv
  unit (``target.conv_units_fp16`` = 16, ``conv_units_fp32`` = 8): the k and n dimensions are cut
  into ``ceil(k / in_chans) x ceil(n / conv_units)`` weight passes;
* each pass loads the weights into the conv units:
  ``conv_units x weight_bytes_per_unit / coeff_load_bytes_per_cycle`` cycles [V formula]
  (``weight_bytes_per_unit = in_chans x itemsize``; the coefficient load path is taken as two
  64-bit vectors per cycle, 16 B on a GC200 [U]);
* the workers split the ``m`` rows; a worker's inner loop costs [V] (fp16) ``43 + 4 (r - 3)``,
  (fp32) ``50 + 8 (r - 3)`` cycles for ``r >= 3`` rows (41/42 and 50 for 1/2 rows), plus output
  zeroing on the first input-channel pass (``2 + z r``, z = 8 fp32, 4 fp16 with float partials,
  2 with half partials); 4 and 8 cycles per row are the AMP's core loop (ipu-facts §5). The pass
  costs ``workers x worker cycles + 14``;
* supervisor overheads [V]: ``50 + n_in x (13 + n_out x (18 + 6 + loads + inner))``.

Peak check: 4 worker cycles per fp16 row over 6 interleaved workers produce 16 x 16 MACs every
4 tile cycles = 64 MACs/cycle = ``target.amp_macs_per_cycle_fp16``; fp32 16 x 8 / 8 = 16.

**ReducePartials** (``Vertex``, one worker) adds ``P`` partial rows of ``n`` elements in fp32 and
writes one output row (cast to the output type). Estimate [U], after poplin's ReduceAdd: a
16-cycle prologue, per partial 3 cycles of setup and one partials vector per cycle, and one output
vector per cycle for the store.

The engine runs a group's AMP vertices as one batched ``np.matmul`` over ``(vertices, m, k)`` x
``(vertices, k, n)`` views of tile memory, one BLAS product per vertex; see :func:`gemm` for
why never more and how it keeps both host cores busy.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from softipu.codelets.host import BLAS, PARALLEL_WORK, on_idle_cores, scratch
from softipu.dtypes import DType, float16, float32, int32
from softipu.graph.vertex import FieldShape as _Shape
from softipu.graph.vertex import InOut, Input, MultiVertex, Output, Param, Vertex
from softipu.target import Target

__all__ = ["AMP_CYCLES_PER_ROW", "amp_in_chans", "amp_out_chans", "amp_cycles", "amp_codelet",
           "reduce_cycles", "reduce_codelet", "gemm", "A_TRANSPOSED", "B_TRANSPOSED"]

# Layout bits of the AmpMatMul ``layout`` param: a block is stored as its transpose.
A_TRANSPOSED, B_TRANSPOSED = 1, 2

# AMP core loop: worker cycles per output row (field element) [V] (ipu-facts §5), by itemsize.
AMP_CYCLES_PER_ROW = {2: 4, 4: 8}
AMP_SUPERVISOR_CYCLES = 50  # [V] supervisorNonloopOverhead
AMP_IN_GROUP_CYCLES = 13  # [V] per input-channel group
AMP_OUT_GROUP_CYCLES = 18 + 6  # [V] per output-channel group and pass
AMP_TAG_CYCLES = 14  # [V] cost tagged onto the least busy worker


def _ceil_div(a, b):
    return -(-a // b)


def _macs_per_cycle(dtype: DType, target: Target) -> int:
    return target.amp_macs_per_cycle_fp16 if dtype.itemsize == 2 else target.amp_macs_per_cycle_fp32


def amp_out_chans(dtype: DType, target: Target) -> int:
    """Output channels of one AMP pass: one per conv unit."""
    return target.conv_units_fp16 if dtype.itemsize == 2 else target.conv_units_fp32


def amp_in_chans(dtype: DType, target: Target) -> int:
    """Input channels one AMP pass consumes per output row."""
    return max(1, _macs_per_cycle(dtype, target) * AMP_CYCLES_PER_ROW[dtype.itemsize]
               // amp_out_chans(dtype, target))


def coeff_load_bytes_per_cycle(target: Target) -> int:
    """Weight-load bandwidth into the conv units: two 64-bit vectors per cycle [U]."""
    return 2 * target.vector_width_bytes


def _worker_cycles(rows, float_in: bool, half_partials: bool, zeroing: bool):
    """One worker's inner-loop cycles for ``rows`` output rows (poplin 1x1, [V])."""
    rows = np.asarray(rows, np.int64)
    if float_in:
        body = np.where(rows >= 3, 50 + (rows - 3) * 8, 50)
        zero = 8
    else:
        body = np.where(rows >= 3, 43 + (rows - 3) * 4, np.where(rows == 2, 42, 41))
        body = body + (2 if half_partials else 0)
        zero = 2 if half_partials else 4
    body = np.where(rows == 0, 28, body)
    if zeroing:
        body = body + np.where(rows > 0, 2 + zero * rows, 0)
    return body


def amp_cycles(m, k, n, in_dtype: DType, partials_dtype: DType, target: Target,
               zeroing: bool = True):
    """Tile cycles of one AMP partial product ``(m x k) . (k x n)`` (ints or int arrays).

    ``zeroing``: the first input-channel pass zeroes the partials; an accumulating vertex (a
    later serial K chunk) adds to them instead.
    """
    m, k, n = (np.asarray(x, np.int64) for x in (m, k, n))
    workers = target.workers_per_tile
    float_in = in_dtype.itemsize == 4
    half_partials = partials_dtype.itemsize == 2
    in_chans, out_chans = amp_in_chans(in_dtype, target), amp_out_chans(in_dtype, target)
    n_in = _ceil_div(k, in_chans)
    n_out = _ceil_div(n, out_chans)
    rows = _ceil_div(m, workers)
    loads = out_chans * in_chans * in_dtype.itemsize // coeff_load_bytes_per_cycle(target)
    inner = workers * _worker_cycles(rows, float_in, half_partials, False) + AMP_TAG_CYCLES
    inner0 = workers * _worker_cycles(rows, float_in, half_partials, zeroing) + AMP_TAG_CYCLES
    per_out = AMP_OUT_GROUP_CYCLES + loads
    first = AMP_IN_GROUP_CYCLES + n_out * (per_out + inner0)  # zeroes the partials
    rest = np.maximum(n_in - 1, 0) * (AMP_IN_GROUP_CYCLES + n_out * (per_out + inner))
    cycles = AMP_SUPERVISOR_CYCLES + first + rest
    return np.where((m == 0) | (n == 0), AMP_SUPERVISOR_CYCLES, cycles)


def reduce_cycles(num_partials, n, partials_dtype: DType, out_dtype: DType, target: Target):
    """One worker's cycles to add ``num_partials`` rows of ``n`` elements [U] (see module doc)."""
    num_partials, n = np.asarray(num_partials, np.int64), np.asarray(n, np.int64)
    vw_in = target.vector_width(partials_dtype.itemsize)
    vw_out = target.vector_width(out_dtype.itemsize)
    return 16 + num_partials * (3 + _ceil_div(n, vw_in)) + _ceil_div(n, vw_out)


# -- host execution of the batched GEMM -------------------------------------------------------
_ADD_WORK = 16  # an element added from memory costs the host about as much as 16 MACs


def gemm(a: np.ndarray, b: np.ndarray, out: np.ndarray, accumulate: bool = False) -> None:
    """``out (+)= a @ b`` over float32 blocks ``(..., V, m, k) x (..., V, k, n)``, fast on the host.

    Every block is its own BLAS product, whatever the batch: OpenBLAS picks a kernel by a
    product's shape (small-matrix, direct or blocked; they round differently), so merging blocks
    into one taller GEMM would make results depend on how the engine batches vertices (design.md
    principle 6; the reference engine runs one vertex at a time). numpy's matmul loops over the
    blocks in C; a large batch is cut into ranges of vertices for the host's idle cores, each
    range single-threaded in BLAS. ``accumulate``: ``out += a @ b`` (the product rounded first).
    """
    work = out.size * a.shape[-1]
    with BLAS.single_threaded():
        if work < PARALLEL_WORK:  # the common small batch: no ranges to cut
            _gemm_job(a, b, out, accumulate)
            return

        def job(lo: int, hi: int) -> None:
            _gemm_job(a[..., lo:hi, :, :], b[..., lo:hi, :, :], out[..., lo:hi, :, :], accumulate)

        on_idle_cores(job, out.shape[-3], work)


def _gemm_job(a: np.ndarray, b: np.ndarray, o: np.ndarray, accumulate: bool) -> None:
    if accumulate:
        product = scratch(o.shape, "product")
        np.matmul(a, b, out=product)
        o += product
    else:
        np.matmul(a, b, out=o)


def _as_float32(x: np.ndarray) -> np.ndarray:
    """fp32 values of ``x``; a broadcast batch (stride 0) is converted once, not per vertex."""
    if x.dtype == np.float32:
        return x
    if x.ndim >= 3 and x.shape[-3] > 1 and x.strides[-3] == 0:
        one = x[..., :1, :, :].astype(np.float32)
        return np.broadcast_to(one, x.shape)
    return x.astype(np.float32)


@cache
def amp_codelet(in_dtype: DType, partials_dtype: DType, accumulate: bool = False) -> type[Vertex]:
    """``poplin::ConvPartial1x1Out<in, partials>`` as a matmul: ``out = a . b`` for one block.

    Fields: ``a`` (``m*k``), ``b`` (``k*n``), ``out`` (``m*n``), each block contiguous in memory,
    row-major or (``layout`` bits) stored as its transpose; params ``m``, ``k``, ``n``.
    ``accumulate``: ``out += a . b`` (a later serial K chunk; ``out`` is then InOut).
    """
    out_field = InOut(partials_dtype) if accumulate else Output(partials_dtype)

    class AmpMatMul(MultiVertex):
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
