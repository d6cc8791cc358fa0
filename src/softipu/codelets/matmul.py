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

import ctypes
import glob
import itertools
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import cache

import numpy as np

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
class _Blas:
    """numpy's own OpenBLAS: its thread count, set to one while the engine's own threads run.

    A batch of block products runs best as single-threaded GEMMs on several host threads:
    OpenBLAS would otherwise wake (and, on a busy host, stall) its own threads for every small
    call. Without an OpenBLAS this finds, the batch runs on this thread with numpy's defaults.
    """

    def __init__(self) -> None:
        self.get = self.set = None
        self.lock = threading.Lock()
        self.pool: ThreadPoolExecutor | None = None
        self.cores = max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                         else (os.cpu_count() or 1))
        self._load_at, self._idle = -1e9, 0
        libs = os.path.join(os.path.dirname(os.path.dirname(np.__file__)), "numpy.libs")
        for path in sorted(glob.glob(os.path.join(libs, "*openblas*"))):
            try:
                lib = ctypes.CDLL(path)
                get, set_ = lib.scipy_openblas_get_num_threads64_, lib.scipy_openblas_set_num_threads64_
            except (OSError, AttributeError):
                continue
            get.restype, set_.argtypes = ctypes.c_int, [ctypes.c_int]
            self.get, self.set = get, set_
            return

    def idle_cores(self) -> int:
        """Cores beyond this thread that other threads leave idle now (sampled every 50 ms).

        Extra threads only pay where a core is free: on a busy host, handing work to a thread
        that waits for a core makes the whole batch wait for it. The count of runnable threads
        in ``/proc/loadavg`` (this one among them) says so now; a load average would also count
        this process's own recent work, and keep a quiet host's second core idle.
        """
        now = time.monotonic()
        if now - self._load_at > 0.05:
            self._load_at = now
            self._idle = self.cores - _runnable_threads()
        return self._idle

    def executor(self) -> ThreadPoolExecutor:
        if self.pool is None:
            self.pool = ThreadPoolExecutor(max(1, self.cores - 1), thread_name_prefix="softipu-gemm")
        return self.pool


def _runnable_threads() -> int:
    """Threads on this host that are running or ready to run, this one included (at least 1)."""
    try:
        with open("/proc/loadavg") as f:
            return max(1, int(f.read().split()[3].split("/")[0]))
    except (OSError, ValueError, IndexError):
        try:
            return max(1, int(os.getloadavg()[0] + 0.5))
        except OSError:
            return 1


_BLAS = _Blas()
# Below this much work (multiply-accumulates, elements) a batch is not worth handing to another
# thread.
_PARALLEL_WORK = 1 << 23
_PIECES = 2  # ranges per core: a core slowed by other work takes fewer of them
_PIECE_WORK = 1 << 21
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
    def job(lo: int, hi: int) -> None:
        _gemm_job(a[..., lo:hi, :, :], b[..., lo:hi, :, :], out[..., lo:hi, :, :], accumulate)

    blas = _BLAS
    if blas.set is None:
        _on_idle_cores(job, out.shape[-3], out.size * a.shape[-1])
        return
    with blas.lock:
        before = blas.get()
        blas.set(1)
        try:
            _on_idle_cores(job, out.shape[-3], out.size * a.shape[-1])
        finally:
            blas.set(before)


def _gemm_job(a: np.ndarray, b: np.ndarray, o: np.ndarray, accumulate: bool) -> None:
    if accumulate:
        product = _scratch(o.shape, "product")
        np.matmul(a, b, out=product)
        o += product
    else:
        np.matmul(a, b, out=o)


def _on_idle_cores(job, vertices: int, work: int) -> None:
    """``job(lo, hi)`` over ranges of ``vertices`` that together cover them once, run by this
    thread and helpers on idle cores (``itertools.count`` hands out each range once).

    ``work`` (multiply-accumulates, elements) decides whether splitting pays. Each vertex is
    computed whole by one call, so results never depend on the split.
    """
    parts = 1 if work < _PARALLEL_WORK or vertices < 2 else _parts(work, vertices)
    if parts == 1:
        job(0, vertices)
        return
    cuts = [vertices * p // parts for p in range(parts + 1)]
    ranges = [(lo, hi) for lo, hi in zip(cuts[:-1], cuts[1:], strict=True) if hi > lo]
    counter = itertools.count()

    def drain() -> None:
        for i in counter:
            if i >= len(ranges):
                return
            job(*ranges[i])

    blas = _BLAS
    helpers = [blas.executor().submit(drain)
               for _ in range(min(blas.idle_cores() + 1, blas.cores, len(ranges)) - 1)]
    drain()
    for h in helpers:
        h.result()


def _parts(work: int, vertices: int) -> int:
    """How many vertex ranges to cut a batch into, so that busy or idle cores share it evenly."""
    if _BLAS.idle_cores() < 1:
        return 1
    return max(1, min(_PIECES * _BLAS.cores, vertices, work // _PIECE_WORK))


_SCRATCH = threading.local()


def _scratch(shape: tuple[int, ...], slot: str = "buf") -> np.ndarray:
    """A reused fp32 buffer of ``shape`` (no fresh pages per call), one per thread and ``slot``;
    valid until the next call for the same slot."""
    size = math.prod(shape)
    buf = getattr(_SCRATCH, slot, None)
    if buf is None or buf.size < size:
        buf = np.empty(max(size, 1 << 16), np.float32)
        setattr(_SCRATCH, slot, buf)
    return buf[:size].reshape(shape)


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
            tmp = _scratch(o3.shape)  # half partials: accumulate in fp32, round once
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
                acc = _scratch(part[0].shape)
                np.add(part[0], part[1], out=acc, dtype=np.float32)
                for p in part[2:]:
                    np.add(acc, p, out=acc, dtype=np.float32)
                out[..., lo:hi, :] = acc

            _on_idle_cores(rows, out.shape[-2], out.size * len(partials) * _ADD_WORK)

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
