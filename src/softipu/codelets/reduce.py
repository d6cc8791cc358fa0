"""popops-style reduction codelets: the two stages of a multi-stage reduce, and arg-max/min.

A reduction runs in two compute sets (ops/reduce.py plans them):

* **stage 1** on the tiles that hold the input: each vertex reduces one contiguous piece of the
  input into partials (fp32 partials for fp16 inputs, as PopLibs' ``accumType.inVertex``);
  :func:`segments_codelet` when the reduced elements of an output are contiguous (an inner
  reduction), :func:`runs_codelet` for a tile's evenly spaced runs of one output each (popops'
  ContinuousReduce a worker's share, ops/reduce_runs.py), :func:`rows_codelet` when they are
  strided rows of a 2-D piece (an outer one);
* **stage 2** on the tiles that own the outputs: :func:`gather_codelet` reduces a few partials
  per output element, :func:`columns_codelet` reduces whole rows of partials column-wise.

Numerics: every vertex's result depends only on its own fields, never on how many vertices the
engine batches into one call (design.md principle 6). Stage 1 of an inner reduction reduces each
segment on its own (``ufunc.reduceat``); rows are combined in a fixed order, first to last, and a
row of partials is reduced with numpy's pairwise order along a contiguous vector. Max and min
propagate NaN like numpy.

Speed: each codelet makes a fixed, small number of numpy calls per batch of vertices, whatever
their phases or segment counts (per-batch index arrays and rotation plans are built once and kept
in the memo of the fast engine's frozen params, :class:`softipu.codelets.host.Frozen`), and reads
its input in place. A piece that starts mid-row folds in piece order into a per-thread scratch
(in cache) and is written out rotated by one ``concatenate`` of its two parts per row; stage 2
reduces a group's contiguous columns as one ``(rows, columns)`` view. What is left is memory
traffic: on 4096 x 4096 fp32 over 1,472 tiles, stage 1 reads the input and writes 1,472 rows of
partials (37% of the input), stage 2 reads them back; numpy's own ``max(axis=0)`` reads the input
once. For max, min and the logical ops (exact, so any grouping gives the same bits) the fast
engine runs both stages of an outer reduction as that one numpy reduction
(:mod:`softipu.engine.reductions`), where the vertices prove it equivalent.

Cycle estimates: stage 1's ``ReduceSegments`` and stage 2's ``ReduceColumns`` (float partials)
are priced with poplibs' own reduction estimators, per worker share (:func:`segments_cycles`,
:func:`columns_cycles`: getCycleEstimateReduceAllRegionsContinuous,
getCyclesEstimateForStridedReduce and getCyclesEstimateForReduce of
lib/popops/reduction/CycleEstimationFunctions.cpp in graphcore/poplibs). The others are
documented estimates **[U]**: the vector loop of BinaryOp1D (one vector per cycle per worker,
``target.vector_width`` elements, fp16 read 4-wide and accumulated in fp32) plus a fixed cost
per vertex and per output written.
"""

from __future__ import annotations

import enum
import operator
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np

from softipu.codelets._common import ceil_div as _ceil_div
from softipu.codelets.halves import widened
from softipu.codelets.host import memo, scratch
from softipu.dtypes import DType, bool_, float16, float32, int32, int64
from softipu.graph.vertex import FieldShape, Input, MultiVertex, Output, Param, Vertex
from softipu.target import Target

__all__ = ["ReduceOp", "partials_dtype", "identity_of", "segments_codelet", "runs_codelet", "run_cycles",
           "rows_codelet", "gather_codelet", "columns_codelet", "arg_segments_codelet", "arg_gather_codelet",
           "columns_cycles", "strided_reduce_cycles", "default_reduce_cycles", "segments_cycles"]


@dataclass(frozen=True, slots=True)
class ReduceEstimates:
    """The [U] figures of this module's cycle estimates (see the module docstring: ReduceColumns
    of float partials follows poplibs' estimators instead), in one place to change."""

    fixed: int = 30  # [U] worker cycles of a reduce vertex (set-up, pointers, loop entry)
    per_output: int = 8  # [U] per output that ends a segment: a horizontal add and a store
    gather_fixed: int = 12  # [U] a single-worker stage-2 vertex
    gather_per_vector: int = 2  # [U] ReduceGather: a load and an op per vector of partials
    arg_gather_per_value: int = 3  # [U] ArgGather: compare, select value and index per value
    int_cycles_per_element: int = 2  # [U] integer reductions have no vector op: 2 per element
    arg_passes: int = 2  # [U] ArgSegments walks its segment twice (extreme, then its index)


ESTIMATES = ReduceEstimates()


class ReduceOp(enum.Enum):
    """The operators of popops::Operation that reduce (ipu-facts.md §4)."""

    ADD = "add"
    MUL = "mul"
    MIN = "min"
    MAX = "max"
    LOGICAL_AND = "logical_and"
    LOGICAL_OR = "logical_or"
    SQUARE_ADD = "square_add"

    @property
    def ufunc(self) -> np.ufunc:
        """How two partials combine (SQUARE_ADD squares in stage 1, then adds)."""
        return _UFUNCS[self]

    @property
    def is_logical(self) -> bool:
        return self in (ReduceOp.LOGICAL_AND, ReduceOp.LOGICAL_OR)

    @property
    def order_sensitive(self) -> bool:
        """Whether float results depend on the order the elements are combined in."""
        return self in (ReduceOp.ADD, ReduceOp.MUL, ReduceOp.SQUARE_ADD)


_UFUNCS: dict[ReduceOp, np.ufunc] = {
    ReduceOp.ADD: np.add, ReduceOp.MUL: np.multiply, ReduceOp.MIN: np.minimum,
    ReduceOp.MAX: np.maximum, ReduceOp.LOGICAL_AND: np.logical_and,
    ReduceOp.LOGICAL_OR: np.logical_or, ReduceOp.SQUARE_ADD: np.add,
}


def partials_dtype(dtype: DType) -> DType:
    """fp16 reduces into fp32 partials (PopLibs' default accumulation type); others keep theirs."""
    return float32 if dtype is float16 else dtype


def identity_of(op: ReduceOp, dtype: DType):
    """The value an empty reduction gives: 0, 1, -inf/+inf (or the integer extremes), True/False."""
    np_type = dtype.numpy
    if op in (ReduceOp.ADD, ReduceOp.SQUARE_ADD):
        return np_type.type(0)
    if op is ReduceOp.MUL:
        return np_type.type(1)
    if op is ReduceOp.LOGICAL_AND:
        return np.True_
    if op is ReduceOp.LOGICAL_OR:
        return np.False_
    lowest = op is ReduceOp.MAX
    if dtype is bool_:
        return np.bool_(not lowest)
    if dtype.is_float:
        return np_type.type(-np.inf if lowest else np.inf)
    info = np.iinfo(np_type)
    return np_type.type(info.min if lowest else info.max)


def _prepare(op: ReduceOp, partial: DType) -> Callable[[np.ndarray], np.ndarray]:
    """Stage 1's view of the input in the partials type (squared for SQUARE_ADD)."""
    want = partial.numpy
    if op is ReduceOp.SQUARE_ADD:
        return lambda x: np.square(x, dtype=want)
    if partial is float32:  # float16 widened by table (halves.py: no slow loop for subnormals)
        return lambda x: x if x.dtype == want else widened(x) if x.dtype == np.float16 else x.astype(want)
    return lambda x: x if x.dtype == want else x.astype(want)


def _vector_cycles(dtype: DType, elements, outputs, target: Target, vector_outputs: bool = False):
    """[U] A MultiVertex streaming ``elements`` through its workers' vector loop.

    Outputs cost ESTIMATES.per_output each when every output ends a segment (a horizontal
    add and a store), or one cycle per vector when whole rows accumulate column-wise.
    """
    workers = target.workers_per_tile
    width = target.vector_width(dtype.itemsize) if dtype.is_float else 1
    per_worker = _ceil_div(elements, workers)
    loop = _ceil_div(per_worker, width) * (1 if dtype.is_float else ESTIMATES.int_cycles_per_element)
    if vector_outputs:
        store = _ceil_div(_ceil_div(outputs, width), workers)
    else:
        store = _ceil_div(outputs, workers) * ESTIMATES.per_output
    return workers * (ESTIMATES.fixed + loop + store) + target.supervisor_overhead_cycles


def segments_cycles(dtype: DType, elements, outputs, period, target: Target):
    """Tile cycles of a ``ReduceSegments`` vertex: popops' ``ContinuousReduce`` (the
    ``ALL_REGIONS_CONTINUOUS`` specialisation: each output reduces a contiguous run) with the
    outputs split between the six workers, each priced with poplibs'
    getCycleEstimateReduceAllRegionsContinuous (lib/popops/reduction/CycleEstimationFunctions.cpp):
    one cycle per ``dataPathWidth`` elements (64 bits: 4 halves, 2 floats), 12 per output, 2 when
    a run is odd, 10 and 7 of call and return. Integer runs take ESTIMATES.int_cycles_per_element
    an element ([U]: popops runs them as C++ vertices)."""
    workers = target.workers_per_tile
    per_worker = _ceil_div(elements, workers)
    if dtype.is_float:
        loop = _ceil_div(per_worker, target.vector_width(dtype.itemsize))
    else:
        loop = per_worker * ESTIMATES.int_cycles_per_element
    odd = np.asarray(period, np.int64).reshape(-1) % 2
    worker = loop + _continuous_overhead(_ceil_div(outputs, workers), odd)
    result = workers * worker + target.supervisor_overhead_cycles
    return int(result[0]) if np.ndim(elements) == 0 and result.size == 1 else result


def _continuous_overhead(outputs, odd):
    """getCycleEstimateReduceAllRegionsContinuous's worker cycles beside the inner loop
    (lib/popops/reduction/CycleEstimationFunctions.cpp): 12 per output, 2 when a run is odd
    (``odd`` 1), 10, and 7 of call and return; shared by :func:`segments_cycles` and
    :func:`run_cycles`."""
    return 12 * outputs + 2 * odd + 10 + 7


def _finish(res: np.ndarray, scale: np.ndarray, out: np.ndarray) -> None:
    """Scale float results (reduce_mean) and write them in the output type."""
    if res.dtype.kind == "f":
        res = res * scale.astype(res.dtype)
    out[...] = res


# -- stage 1 ---------------------------------------------------------------------------------------
@cache
def segments_codelet(op: ReduceOp, dtype: DType) -> type[Vertex]:
    """``ReduceSegments<op, dtype>``: reduce consecutive segments of one contiguous piece.

    The piece's first segment has ``first`` elements, the following ones ``period`` each (the
    last may be shorter). A piece with ``s`` segments writes them to the *last* ``s`` slots of
    ``out``, in order; the slots before them are padding that stage 2 never reads (they hold an
    arbitrary element of the piece). Pieces with a different segment count thus still share one
    vertex group, and every vertex of a batch is one ``ufunc.reduceat`` call: a padding slot's
    start equals the next slot's, which reduceat turns into a single element.
    """
    partial = partials_dtype(dtype)
    prepare, ufunc = _prepare(op, partial), op.ufunc

    class ReduceSegments(MultiVertex):
        x = Input(dtype)
        out = Output(partial)
        first = Param(int64)
        period = Param(int64)

        @staticmethod
        def compute(x, out, first, period):
            y = prepare(x)
            if out.shape[-1] == 1:
                ufunc.reduce(y, axis=-1, out=out[..., 0])
                return
            index = _segment_index(first, period, out.shape[-1], y.shape[-1], out.shape[:-1])
            flat = (y if y.flags.c_contiguous else np.ascontiguousarray(y)).reshape(-1)
            if out.flags.c_contiguous:
                ufunc.reduceat(flat, index, out=out.reshape(-1))
            else:
                out[...] = ufunc.reduceat(flat, index).reshape(out.shape)

        @staticmethod
        def cycles(x, out, first, period, target):
            return segments_cycles(dtype, x, out, period, target)

        @staticmethod
        def flops(x, out, first, period):
            return x * (2 if op is ReduceOp.SQUARE_ADD else 1) if dtype.is_float else 0

    ReduceSegments.__name__ = ReduceSegments.__qualname__ = f"ReduceSegments<{op.name},{dtype.name}>"
    return ReduceSegments


@cache
def runs_codelet(op: ReduceOp, dtype: DType) -> type[Vertex]:
    """``ReduceRun<op, dtype>``: one run of a worker's share of a tile's runs, one output.

    ``x`` is the run (``n`` contiguous elements), ``out`` its partial. popops reduces a worker's
    share of a tile's runs in one ``ContinuousReduce`` (ops/reduce_runs.py); here each run is a
    plain (one-worker) vertex and ``lead`` is the share's size on its first run (0 on the others),
    which carries the share's whole estimate (:func:`run_cycles`). Reduced along its own
    elements (numpy's pairwise order), as a one-segment ``ReduceSegments``.
    """
    partial = partials_dtype(dtype)
    prepare, ufunc = _prepare(op, partial), op.ufunc

    class ReduceRun(Vertex):
        x = Input(dtype)
        out = Output(partial)
        lead = Param(int64)

        @staticmethod
        def compute(x, out, lead):
            ufunc.reduce(prepare(x), axis=-1, out=out[..., 0])

        @staticmethod
        def cycles(x, out, lead, target):
            return run_cycles(dtype, x, lead, target)

        @staticmethod
        def flops(x, out, lead):
            return x * (2 if op is ReduceOp.SQUARE_ADD else 1) if dtype.is_float else 0

    ReduceRun.__name__ = ReduceRun.__qualname__ = f"ReduceRun<{op.name},{dtype.name}>"
    return ReduceRun


def run_cycles(dtype: DType, n, lead, target: Target):
    """Worker cycles of a ``ReduceRun`` vertex: 0, or on a share's first run (``lead = k``, the
    share's size) popops' ``ContinuousReduce`` of ``k`` outputs of ``n`` partials each, priced by
    poplibs' getCycleEstimateReduceAllRegionsContinuous
    (lib/popops/reduction/CycleEstimationFunctions.cpp): ``k * (n // w)`` for the inner loop
    (``w = min(accumulator width, dataPathWidth)``: 4 halves, 2 floats a cycle), 2 when ``n`` is
    odd, 12 per output, 10, and 7 of call and return. (getCycleEstimateForReduceVertex passes it
    ``numOutputsM1``; every output runs the loop, so all ``k`` count here, as in
    :func:`segments_cycles`.) Integer runs take ESTIMATES.int_cycles_per_element an element."""
    n = np.asarray(n, np.int64)
    k = np.asarray(lead, np.int64).reshape(-1)
    if dtype.is_float:
        loop = k * (n // target.vector_width(dtype.itemsize))
    else:
        loop = k * n * ESTIMATES.int_cycles_per_element
    result = np.where(k > 0, loop + _continuous_overhead(k, n % 2), 0)
    return int(result[0]) if np.ndim(n) == 0 and result.size == 1 else result


def _segment_index(first: np.ndarray, period: np.ndarray, slots: int, length: int,
                   rows_shape: tuple[int, ...]) -> np.ndarray:
    """Flat reduceat start of every slot of every row, padding slots first (see above); built
    once per frozen ``first`` param (the fast engine's, with ``period`` of the same group)."""
    def build() -> np.ndarray:
        f, p = first.reshape(-1).astype(np.int64), period.reshape(-1).astype(np.int64)
        count = np.where(f < length, 1 + (length - f + p - 1) // np.maximum(p, 1), 1)  # segments
        k = np.arange(slots) - (slots - count)[:, None]  # segment number of each slot (< 0: padding)
        starts = np.where(k > 0, f[:, None] + (k - 1) * p[:, None], 0)
        starts = np.broadcast_to(starts, rows_shape + (slots,)).reshape(-1, slots)
        return (starts + (np.arange(starts.shape[0]) * length)[:, None]).reshape(-1)

    return memo(first, ("segments", slots, length, rows_shape), build)


@cache
def rows_codelet(op: ReduceOp, dtype: DType) -> type[Vertex]:
    """``ReduceRows<op, dtype>``: fold a piece of ``L`` elements into a row of ``S <= L`` columns.

    Element ``j`` of the piece belongs to column ``(phase + j) % S``: the piece is a run of an
    input laid out in rows of ``S``, starting ``phase`` columns into a row. The vertex folds whole
    rows first (from the first to the last), then the leftover tail, then rotates the result so
    that ``out[c]`` is column ``c``. With ``S == L`` it only converts (or squares).
    """
    partial = partials_dtype(dtype)
    prepare, ufunc = _prepare(op, partial), op.ufunc

    class ReduceRows(MultiVertex):
        x = Input(dtype)
        out = Output(partial)
        phase = Param(int64)
        # The engine's chunks are sized by the rows of partials (the rotation's scratch), so they
        # stay in cache; a piece is read once, streaming, and larger chunks cost fewer calls.
        chunk_fields = ("out",)

        @staticmethod
        def compute(x, out, phase):
            y = prepare(x)
            rotation = _rotation(phase, out.shape)
            if rotation is None:  # every piece starts at column 0
                _fold(ufunc, y, out)
                return
            # Fold in piece order into this thread's scratch (in cache), then write every row
            # rotated (its two parts, for every vertex) with one concatenate into ``out``.
            folded = scratch(out.shape, "rotation", partial.numpy)
            _fold(ufunc, y, folded)
            pieces = rotation(folded.reshape(-1))
            if out.flags.c_contiguous:
                np.concatenate(pieces, out=out.reshape(-1))
            else:
                out[...] = np.concatenate(pieces).reshape(out.shape)

        @staticmethod
        def cycles(x, out, phase, target):
            return _vector_cycles(dtype, x, out, target, vector_outputs=True)

        @staticmethod
        def flops(x, out, phase):
            return x * (2 if op is ReduceOp.SQUARE_ADD else 1) if dtype.is_float else 0

    ReduceRows.__name__ = ReduceRows.__qualname__ = f"ReduceRows<{op.name},{dtype.name}>"
    return ReduceRows


def _fold(ufunc: np.ufunc, y: np.ndarray, out: np.ndarray) -> None:
    """``out[c] = y[c] op y[S + c] op ...`` over the whole rows of ``y``, then its tail."""
    width, length = out.shape[-1], y.shape[-1]
    rows, rest = divmod(length, width)
    if rows == 1:
        out[...] = y[..., :width]
    elif rows == 2:
        ufunc(y[..., :width], y[..., width : 2 * width], out=out)
    else:
        ufunc.reduce(y[..., : rows * width].reshape(y.shape[:-1] + (rows, width)), axis=-2, out=out)
    if rest:
        ufunc(out[..., :rest], y[..., rows * width :], out=out[..., :rest])


def _rotation(phase: np.ndarray, out_shape: tuple[int, ...]) -> operator.itemgetter | None:
    """None when no vertex needs rotating, else the getter of the pieces of the flat folded rows
    that, laid end to end, are every row rotated: ``out[v, c]`` is column ``c`` where the folded
    row holds column ``(phase[v] + j) % S`` at ``j``. Planned once per frozen ``phase`` param
    (the vertex rows of any leading replica axis included); the getter makes the slices in C."""
    width, lead = out_shape[-1], out_shape[:-1]

    def build() -> operator.itemgetter | None:
        p = phase.reshape(-1).astype(np.int64)
        if not p.any():
            return None
        p = np.broadcast_to(p.reshape(lead[-1:]), lead).reshape(-1).tolist()
        cuts = [(r * width + lo, r * width + hi) for r, q in enumerate(p)
                for lo, hi in ((width - q, width), (0, width - q)) if hi > lo]
        return operator.itemgetter(*[slice(lo, hi) for lo, hi in cuts], slice(0, 0))

    return memo(phase, ("rotation", out_shape), build)


# -- stage 2 ---------------------------------------------------------------------------------------
@cache
def gather_codelet(op: ReduceOp, partial: DType, out_dtype: DType) -> type[Vertex]:
    """``ReduceGather``: one output element from its ``k`` partials (a plain, one-worker Vertex)."""
    ufunc = op.ufunc

    class ReduceGather(Vertex):
        parts = Input(partial)
        out = Output(out_dtype)
        scale = Param(float32)

        @staticmethod
        def compute(parts, out, scale):
            _finish(ufunc.reduce(parts, axis=-1), scale[:, 0], out[..., 0])

        @staticmethod
        def cycles(parts, out, scale, target):
            width = target.vector_width(partial.itemsize) if partial.is_float else 1
            return (ESTIMATES.gather_fixed + _ceil_div(parts, width) * ESTIMATES.gather_per_vector
                    + ESTIMATES.per_output)

        @staticmethod
        def flops(parts, out, scale):
            return parts if partial.is_float else 0

    ReduceGather.__name__ = ReduceGather.__qualname__ = (
        f"ReduceGather<{op.name},{partial.name},{out_dtype.name}>")
    return ReduceGather


@cache
def columns_codelet(op: ReduceOp, parts_dtype: DType, out_dtype: DType, raw: bool = False) -> type[Vertex]:
    """``ReduceColumns``: ``out = parts[0] op parts[1] op ...``, elementwise over ``n`` columns.

    ``parts`` is a vector list of ``k`` rows, combined first to last: rows of partials, or with
    ``raw`` rows of the input itself (converted to the partials type, squared for SQUARE_ADD).
    ``part_step`` is the address distance between consecutive rows when the op laid them out
    evenly (0 if not): the vertex then reduces them as one strided 3-D view instead of ``k``
    numpy calls.
    """
    ufunc = op.ufunc
    partial = partials_dtype(parts_dtype) if raw else parts_dtype
    prepare = _prepare(op, partial) if raw else (lambda a: a)

    class ReduceColumns(MultiVertex):
        parts = Input(parts_dtype, FieldShape.VECTOR_LIST)
        out = Output(out_dtype)
        scale = Param(float32)
        part_step = Param(int64)

        @staticmethod
        def compute(parts, out, scale, part_step):
            step = int(part_step[0, 0]) if part_step.size else 0
            _finish(_fold_rows(ufunc, parts, step, prepare, partial), scale, out)

        @staticmethod
        def cycles(parts, out, scale, part_step, target):
            return columns_cycles(op, parts_dtype, out_dtype, len(parts), out, part_step, target)

        @staticmethod
        def flops(parts, out, scale, part_step):
            return len(parts) * out if partial.is_float else 0

    kind = "ReduceColumnsRaw" if raw else "ReduceColumns"
    ReduceColumns.__name__ = ReduceColumns.__qualname__ = (
        f"{kind}<{op.name},{parts_dtype.name},{out_dtype.name}>")
    return ReduceColumns


# popops' reduce vertices that use the accumulators (ADD, SQUARE_ADD) work on 128 bits a loop:
# accVectorWidth of getCycleEstimateForReduceVertex, lib/popops/reduction/CycleEstimationFunctions.cpp.
_ACC_VECTOR_BYTES = 16
_VECTORISED = (ReduceOp.ADD, ReduceOp.SQUARE_ADD, ReduceOp.MUL, ReduceOp.MAX, ReduceOp.MIN)


def columns_cycles(op: ReduceOp, parts_dtype: DType, out_dtype: DType, rows: int, n, part_step,
                   target: Target):
    """Tile cycles of a ``ReduceColumns`` vertex: ``rows`` rows of ``n`` columns, per vertex.

    popops (lib/popops/reduction/ReductionConnection.cpp) splits a tile's output columns between
    its six workers and picks the vertex by the partials' layout: rows at one address distance
    (``part_step`` != 0) run the ``STRIDED_REDUCE`` vertex, any other rows the ``DEFAULT`` one,
    which fetches each row's pointer again for every output vector. Each worker is priced with
    poplibs' own estimators, :func:`strided_reduce_cycles` and :func:`default_reduce_cycles`
    (CycleEstimationFunctions.cpp, not an update, no scale); the tile runs the longest worker's
    share at one issue slot in six. Integer and logical reductions keep the [U] rule
    (ESTIMATES.int_cycles_per_element a row element: popops runs them as C++ vertices).
    """
    scalar = np.ndim(n) == 0 and np.size(part_step) <= 1
    step = np.asarray(part_step, np.int64)
    n, step = np.broadcast_arrays(np.asarray(n, np.int64).reshape(-1), step.reshape(-1))
    workers = target.workers_per_tile
    if not (parts_dtype.is_float and op in _VECTORISED):
        per_worker = _ceil_div(rows * n * ESTIMATES.int_cycles_per_element, workers)
        result = workers * (ESTIMATES.fixed + per_worker) + target.supervisor_overhead_cycles
        return int(result[0]) if scalar else result
    strided = strided_reduce_cycles(op, parts_dtype, out_dtype, rows, n, step, target)
    default = default_reduce_cycles(op, parts_dtype, out_dtype, rows, n, target)
    worker = np.where(step != 0, strided, default)
    result = workers * worker + target.supervisor_overhead_cycles
    return int(result[0]) if scalar else result


def _op_width(op: ReduceOp, parts_dtype: DType, target: Target) -> int:
    """Elements one vectorised loop of the op handles (opVectorWidth)."""
    if op in (ReduceOp.ADD, ReduceOp.SQUARE_ADD):
        return _ACC_VECTOR_BYTES // parts_dtype.itemsize
    return target.vector_width(parts_dtype.itemsize)


def _worker_share(n: np.ndarray, grain: int, workers: int) -> np.ndarray:
    """The columns of the busiest worker when ``n`` columns are split in ``grain``-wide pieces."""
    return np.minimum(n, _ceil_div(_ceil_div(n, grain), workers) * grain)


def strided_reduce_cycles(op: ReduceOp, parts_dtype: DType, out_dtype: DType, rows: int, n, step,
                          target: Target) -> np.ndarray:
    """Worker cycles of the busiest worker of a ``STRIDED_REDUCE`` vertex (poplibs'
    getCyclesEstimateForStridedReduce, one outer stride, cyclesPerOp 1): entry/exit 4 and loop
    set-up 11, then per ``elemsPerLoop`` outputs ``3 + post + 3 + (rows - 1)`` cycles, where
    ``elemsPerLoop = gcd(min(opVectorWidth, dataPathWidth), stride)`` and ``post`` is the
    store after the inner loop: half partials 1 + (7, or 6 for ADD into float), float partials
    (3 for ADD, else 2) + 2."""
    load = min(_op_width(op, parts_dtype, target), target.vector_width(parts_dtype.itemsize))
    per_loop = np.gcd(load, np.maximum(np.asarray(step, np.int64), 1))
    if parts_dtype.itemsize == 2:
        post = 1 + (6 if (op is ReduceOp.ADD and out_dtype.itemsize == 4) else 7)
    else:
        post = (3 if op is ReduceOp.ADD else 2) + 2
    outer = 3 + post + 3 + (rows - 1)
    cols = _worker_share(np.asarray(n, np.int64), per_loop, target.workers_per_tile)
    return 4 + 11 + outer * _ceil_div(cols, per_loop)


def default_reduce_cycles(op: ReduceOp, parts_dtype: DType, out_dtype: DType, rows: int, n,
                          target: Target) -> np.ndarray:
    """Worker cycles of the busiest worker of a ``DEFAULT`` reduce vertex with one output region
    of its columns and ``rows`` partials of the same size (poplibs' getCyclesEstimateForReduce):
    entry/exit 7, state 26, region set-up ``16 + 6 + 2 log2(w) + 2``; per output vector of
    ``w = opVectorWidth``: its loop (5 with accumulators, else 3, a store of
    ``2 min(w, outVectorWidth) + acc`` and 1) and per row a pointer fetch (10) and a load and op
    (``acc 2 + 2 + w / dataPathWidth`` + 3); a remainder of ``r`` outputs per set bit of it."""
    acc = int(op in (ReduceOp.ADD, ReduceOp.SQUARE_ADD))
    width = _op_width(op, parts_dtype, target)
    path = target.vector_width(parts_dtype.itemsize)
    out_width = target.vector_width(out_dtype.itemsize)
    checks = max(width - 1, 0).bit_length()  # ceilLog2(width)

    def store(w: int) -> int:
        return 2 * min(w, out_width) + acc

    cols = _worker_share(np.asarray(n, np.int64), width, target.workers_per_tile)
    vectors, rest = cols // width, cols % width
    cycles = 7 + 26 + 16 + 6 + 2 * checks + 2
    cycles = cycles + vectors * ((5 if acc else 3) + store(width) + 1 + rows * 10)
    cycles = cycles + vectors * rows * (2 * acc + 2 + width // min(width, path) + 3)
    for i in range(checks):
        r = 1 << i
        has = (rest & r) != 0
        cycles = cycles + has * ((4 if acc else 2) + store(r) + rows * 10
                                 + rows * (2 + r // min(r, path) + 3))
    return cycles


def _root(a: object) -> object:
    """The object owning ``a``'s memory (views made by as_strided pass through a wrapper)."""
    while True:
        base = getattr(a, "base", None)
        if base is None:
            return a
        a = base


def _rows_stack(parts: list[np.ndarray], step: int) -> bool:
    """Whether the rows are evenly spaced (``step`` elements) views of one buffer; checked once
    per frozen list (the fast engine hands the same one to every run)."""
    return memo(parts, ("stacked", step), lambda: _check_stack(parts, step))


def _check_stack(parts: list[np.ndarray], step: int) -> bool:
    first, last = parts[0], parts[-1]
    root = _root(first)
    if any(p.strides != first.strides or p.shape != first.shape or _root(p) is not root
           for p in parts):
        return False
    step_bytes = step * first.itemsize
    base = first.__array_interface__["data"][0]
    return (parts[1].__array_interface__["data"][0] - base == step_bytes
            and last.__array_interface__["data"][0] - base == (len(parts) - 1) * step_bytes)


def _stacked(parts: list[np.ndarray], step: int) -> np.ndarray | None:
    """The rows as one view when they are evenly spaced views of one buffer: ``(..., k, V * n)``
    when the vertices' columns are one contiguous run (the outputs of a linearly mapped op), so
    the reduction's inner loop is long; else ``(..., V, k, n)`` (columns, ``n >= 2``, inner).

    The op promised the spacing (``step`` elements) for the graph's addresses; the check makes
    sure the arrays really are views of one buffer laid out that way (the fast engine's zero-copy
    views are; the reference engine's per-vertex copies are not). The engine hands the same list
    to every run, so the check runs once per list.
    """
    first = parts[0]
    if step <= 0 or first.ndim < 2 or not _rows_stack(parts, step):
        return None
    (v, n), item = first.shape[-2:], first.itemsize
    lead, lead_strides = first.shape[:-2], first.strides[:-2]
    if first.strides[-1] == item and (v == 1 or first.strides[-2] == n * item) and v * n >= 2:
        shape, strides = lead + (len(parts), v * n), lead_strides + (step * item, item)
    elif n >= 2:
        shape = lead + (v, len(parts), n)
        strides = lead_strides + (first.strides[-2], step * item, first.strides[-1])
    else:
        return None
    return np.lib.stride_tricks.as_strided(first, shape, strides, writeable=False)


def _fold_rows(ufunc: np.ufunc, parts: list[np.ndarray], step: int,
               prepare: Callable[[np.ndarray], np.ndarray], partial: DType) -> np.ndarray:
    """``parts[0] op parts[1] op ...`` elementwise, in that order, whatever the layout.

    The stacked view is reduced along a non-contiguous axis while columns stay the inner loop
    (at least two of them), so numpy combines the rows one after another exactly as the loop does.
    """
    if len(parts) > 2:
        view = _stacked(parts, step)
        if view is not None:
            return ufunc.reduce(prepare(view), axis=-2).reshape(parts[0].shape)
    acc = np.array(prepare(parts[0]), dtype=partial.numpy)
    for p in parts[1:]:
        ufunc(acc, prepare(p), out=acc)
    return acc


# -- arg max / arg min -----------------------------------------------------------------------------
@cache
def arg_segments_codelet(largest: bool, dtype: DType) -> type[Vertex]:
    """Stage 1 of argmax/argmin: per segment the extreme value and its index along the axis.

    Segments as :func:`segments_codelet`; ``base`` is the axis index of the piece's first
    element. NaN wins (numpy's rule), ties go to the first occurrence.
    """
    ufunc = np.maximum if largest else np.minimum
    pad = identity_of(ReduceOp.MAX if largest else ReduceOp.MIN, dtype)

    class ArgSegments(MultiVertex):
        x = Input(dtype)
        values = Output(dtype)
        index = Output(int32)
        first = Param(int64)
        period = Param(int64)
        base = Param(int64)

        @staticmethod
        def compute(x, values, index, first, period, base):
            segments, length = values.shape[-1], x.shape[-1]
            shape = values.shape[:-1] + (segments,)
            starts = first + (np.arange(segments) - 1) * period
            starts[:, 0] = 0
            starts = np.broadcast_to(starts, shape).reshape(-1, segments)
            rows = starts.shape[0]
            valid = starts < length
            flat = np.ascontiguousarray(x).reshape(-1)
            cut = (np.arange(rows)[:, None] * length + starts)[valid]
            best = ufunc.reduceat(flat, cut) if flat.size else flat[:0]
            sizes = np.diff(np.append(cut, flat.size))
            owner = np.repeat(best, sizes)
            hit = (flat == owner) | (np.isnan(flat) & np.isnan(owner) if dtype.is_float else False)
            where = np.where(hit, np.arange(flat.size), flat.size)
            at = np.minimum.reduceat(where, cut) if flat.size else where[:0]
            vals = np.full((rows, segments), pad, dtype.numpy)
            idx = np.zeros((rows, segments), np.int64)
            vals[valid] = best
            idx[valid] = at - np.repeat(np.arange(rows) * length, valid.sum(axis=1))
            b = np.broadcast_to(base, shape).reshape(-1, segments)
            values[...] = vals.reshape(shape)
            index[...] = ((b + idx) % np.broadcast_to(period, shape).reshape(-1, segments)
                          ).reshape(shape)

        @staticmethod
        def cycles(x, values, index, first, period, base, target):
            return ESTIMATES.arg_passes * _vector_cycles(dtype, x, values, target)

    kind = "Max" if largest else "Min"
    ArgSegments.__name__ = ArgSegments.__qualname__ = f"Arg{kind}Segments<{dtype.name}>"
    return ArgSegments


@cache
def arg_gather_codelet(largest: bool, dtype: DType) -> type[Vertex]:
    """Stage 2 of argmax/argmin: the index of the best of ``k`` candidates (first on ties)."""
    pick = np.argmax if largest else np.argmin

    class ArgGather(Vertex):
        values = Input(dtype)
        index = Input(int32)
        out = Output(int32)

        @staticmethod
        def compute(values, index, out):
            j = pick(values, axis=-1)[..., None]
            out[...] = np.take_along_axis(index, j, axis=-1)

        @staticmethod
        def cycles(values, index, out, target):
            return ESTIMATES.gather_fixed + ESTIMATES.arg_gather_per_value * values + ESTIMATES.per_output

    kind = "Max" if largest else "Min"
    ArgGather.__name__ = ArgGather.__qualname__ = f"Arg{kind}Gather<{dtype.name}>"
    return ArgGather
