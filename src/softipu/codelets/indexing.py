"""popops-style indexing codelets: fill, iota, copy, one-hot, multi-slice/update, dynamic
slice/update, sort/top-k and cumulative sums.

Estimates: MultiSlice uses poplibs' estimator (ipu-facts.md §5):
``W x (29 + sum over a worker's rows of (19 + ceil(elems / vw) x cyclesPerVector) + 8 x outOfRange)``
with one cycle per 64-bit vector (out-of-range rows are not known when the graph is built; they
count as in range). The others are documented estimates **[U]**: a fixed vertex cost plus a
vector loop per worker (one 64-bit load and store per cycle for copies, ``n log2 n`` compares
for sorting).
"""

from __future__ import annotations

import enum
import math
from functools import cache

import numpy as np

from softipu.codelets._common import ceil_div as _ceil_div
from softipu.dtypes import DType, float32, int32, int64
from softipu.graph.vertex import FieldShape, InOut, Input, MultiVertex, Output, Param, Vertex
from softipu.target import Target

__all__ = ["fill_codelet", "iota_codelet", "copy_codelet", "one_hot_codelet", "multi_slice_codelet",
           "multi_update_codelet", "dynamic_slice_codelet", "dynamic_update_codelet",
           "sort_codelet", "cumsum_codelet", "SortOrder"]

MULTISLICE_FIXED_CYCLES = 29  # [V] ipu-facts §5
MULTISLICE_CYCLES_PER_ROW = 19  # [V]
MULTISLICE_OUT_OF_RANGE_CYCLES = 8  # [V]
FIXED_CYCLES = 20  # [U] a MultiVertex's per-worker set-up
SORT_CYCLES_PER_COMPARE = 3  # [U] compare, select and store per element per pass
SCAN_CYCLES_PER_ELEMENT = 2  # [U] add and store, one element at a time (a dependent chain)


def _stream_cycles(dtype: DType, n, target: Target, per_vector: int = 1):
    """[U] A MultiVertex streaming ``n`` elements through its workers, one vector per cycle."""
    workers = target.workers_per_tile
    vectors = _ceil_div(_ceil_div(n * dtype.itemsize, target.vector_width_bytes), workers)
    return workers * (FIXED_CYCLES + vectors * per_vector) + target.supervisor_overhead_cycles


def _named(cls: type, name: str) -> type:
    cls.__name__ = cls.__qualname__ = name
    return cls


@cache
def fill_codelet(dtype: DType) -> type[Vertex]:
    """``Fill<dtype>``: every element of ``out`` becomes ``value``."""

    class Fill(MultiVertex):
        out = Output(dtype)
        value = Param(dtype)

        @staticmethod
        def compute(out, value):
            out[...] = value

        @staticmethod
        def cycles(out, value, target):
            return _stream_cycles(dtype, out, target)

    return _named(Fill, f"Fill<{dtype.name}>")


@cache
def iota_codelet(dtype: DType) -> type[Vertex]:
    """``Iota<dtype>``: ``out[j] = first + j``."""

    class Iota(MultiVertex):
        out = Output(dtype)
        first = Param(int64)

        @staticmethod
        def compute(out, first):
            out[...] = first + np.arange(out.shape[-1])

        @staticmethod
        def cycles(out, first, target):
            return _stream_cycles(dtype, out, target, per_vector=2)

    return _named(Iota, f"Iota<{dtype.name}>")


@cache
def copy_codelet(dtype: DType) -> type[Vertex]:
    """``Copy<dtype>``: ``out = src`` (a static gather: ``src`` may be any view)."""

    class Copy(MultiVertex):
        src = Input(dtype)
        out = Output(dtype)

        @staticmethod
        def compute(src, out):
            out[...] = src

        @staticmethod
        def cycles(src, out, target):
            return _stream_cycles(dtype, out, target)

    return _named(Copy, f"Copy<{dtype.name}>")


@cache
def one_hot_codelet(index_dtype: DType, dtype: DType) -> type[Vertex]:
    """``EncodeOneHot``: ``out[j] = (index[j] == (first + j) % depth)``.

    ``index`` holds, for every output element, the index of its row (out-of-range indices give a
    row of zeros).
    """

    class OneHot(MultiVertex):
        index = Input(index_dtype)
        out = Output(dtype)
        first = Param(int64)
        depth = Param(int64)

        @staticmethod
        def compute(index, out, first, depth):
            column = (first + np.arange(out.shape[-1])) % depth
            out[...] = index.astype(np.int64) == column

        @staticmethod
        def cycles(index, out, first, depth, target):
            return _stream_cycles(dtype, out, target, per_vector=3)

    return _named(OneHot, f"EncodeOneHot<{index_dtype.name},{dtype.name}>")


def _rows_in_range(index: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray]:
    i = index.astype(np.int64)
    valid = (i >= 0) & (i < rows)
    return np.where(valid, i, 0), valid


def _column_take(table: np.ndarray, safe: np.ndarray, width: int, rows: int) -> np.ndarray:
    """Each vertex's ``(width, rows)`` table block at its rows ``safe`` (``(..., n)``), as
    ``(..., width, n)``: ``take_along_axis``'s values, by one flat ``take`` at computed addresses
    where the blocks lie contiguous (a broadcast index over three axes cost 4x the lookup)."""
    lead = safe.shape[:-1]
    if not table.flags.c_contiguous:
        block = table.reshape(lead + (width, rows))
        return np.take_along_axis(block, safe[..., None, :], axis=-1)
    base = np.arange(math.prod(lead), dtype=np.int64).reshape(lead + (1, 1)) * (width * rows)
    return np.take(table.reshape(-1), base + (np.arange(width, dtype=np.int64) * rows)[:, None]
                   + safe[..., None, :])


@cache
def multi_slice_codelet(dtype: DType, index_dtype: DType, column_major: bool = False) -> type[Vertex]:
    """``MultiSlice``: rows ``index[i]`` of a column block of a table; out-of-range rows give 0.

    ``table`` is the block (``rows x width`` row-major, or ``width x rows`` with
    ``column_major``: a table stored transposed, see ``create_slicable_table``); ``out`` is
    ``len(index) x width``.
    """

    class MultiSlice(MultiVertex):
        table = Input(dtype)
        index = Input(index_dtype)
        out = Output(dtype)
        chunk_fields = ("index", "out")  # a lookup reads a few elements of a long table block
        join_fields = ("index", "out")  # index i fills out row i alone (engine/joins.py)

        @staticmethod
        def compute(table, index, out):
            n = index.shape[-1]
            width = out.shape[-1] // n if n else 0
            if n == 0 or width == 0:
                return
            rows = table.shape[-1] // width
            if rows == 0:
                out[...] = 0
                return
            lead = table.shape[:-1]
            if column_major and index.ndim == 2 and index.shape[0] > 1 and index.strides[0] == 0:
                # Every vertex looks up the same rows (one lookup range, its columns split over
                # the vertices): one take over all of them.
                safe, valid = _rows_in_range(index[0], rows)
                picked = np.take(table.reshape(lead + (width, rows)), safe, axis=-1)
                if not valid.all():
                    picked[..., ~valid] = 0
                out[...] = np.swapaxes(picked, -1, -2).reshape(out.shape)
                return
            safe, valid = _rows_in_range(index, rows)
            if column_major:
                picked = _column_take(table, np.broadcast_to(safe, lead + (n,)), width, rows)
                picked = np.where(np.broadcast_to(valid, lead + (n,))[..., None, :], picked, 0)
                out[...] = np.swapaxes(picked, -1, -2).reshape(out.shape)
                return
            block = table.reshape(lead + (rows, width))
            picked = np.take_along_axis(block, np.broadcast_to(safe, lead + (n,))[..., None], axis=-2)
            picked[~np.broadcast_to(valid, picked.shape[:-1])] = 0
            out[...] = picked.reshape(out.shape)

        @staticmethod
        def cycles(table, index, out, target):
            return _multi_slice_cycles(dtype, index, out, target, update=False)

    return _named(MultiSlice, f"MultiSlice<{dtype.name}{',columnMajor' if column_major else ''}>")


def _multi_slice_cycles(dtype: DType, index, out, target: Target, update: bool):
    """poplibs' MultiSlice estimate [V]; updates add a read-modify-write per vector [U]."""
    workers = target.workers_per_tile
    width = out // index if index else 0
    vectors = _ceil_div(width * dtype.itemsize, target.vector_width_bytes)
    per_vector = 2 if update else 1
    rows_per_worker = _ceil_div(index, workers)
    return workers * (MULTISLICE_FIXED_CYCLES
                      + rows_per_worker * (MULTISLICE_CYCLES_PER_ROW + vectors * per_vector))


@cache
def multi_update_codelet(dtype: DType, index_dtype: DType, accumulate: bool,
                         column_major: bool = False) -> type[Vertex]:
    """``MultiUpdate(Add)``: ``table[index[i]] (+)= scale * updates[i]`` on a column block
    (laid out as for :func:`multi_slice_codelet`).

    Out-of-range rows are skipped. With ``accumulate``, repeated indices all add; without, the
    last update of a row wins.
    """

    class MultiUpdate(MultiVertex):
        table = InOut(dtype)
        index = Input(index_dtype)
        updates = Input(dtype)
        scale = Param(float32)

        @staticmethod
        def compute(table, index, updates, scale):
            n = index.shape[-1]
            width = updates.shape[-1] // n if n else 0
            if n == 0 or width == 0:
                return
            rows = table.shape[-1] // width
            lead = table.shape[:-1]
            work = np.float32 if dtype.is_float and dtype.itemsize <= 4 else dtype.numpy
            block = table.reshape(-1, rows, width) if not column_major else \
                np.swapaxes(table.reshape(-1, width, rows), -1, -2)
            block = block.astype(work)
            idx = np.broadcast_to(index, lead + (n,)).reshape(-1, n)
            upd = np.broadcast_to(updates, lead + (n * width,)).reshape(-1, n, width).astype(work)
            safe, valid = _rows_in_range(idx, rows)
            owner = np.broadcast_to(np.arange(block.shape[0])[:, None], valid.shape)[valid]
            if accumulate:
                factor = np.broadcast_to(scale, lead + (1,)).reshape(-1)[owner].astype(work)
                np.add.at(block, (owner, safe[valid]), upd[valid] * factor[:, None])
            else:  # numpy assigns repeated rows in order: the last update wins
                block[owner, safe[valid]] = upd[valid]
            if column_major:
                block = np.swapaxes(block, -1, -2)
            table[...] = block.reshape(table.shape)

        @staticmethod
        def cycles(table, index, updates, scale, target):
            return _multi_slice_cycles(dtype, index, updates, target, update=True)

    kind = "MultiUpdateAdd" if accumulate else "MultiUpdate"
    return _named(MultiUpdate, f"{kind}<{dtype.name}{',columnMajor' if column_major else ''}>")


def _dynamic_start(offset: np.ndarray, size: int) -> np.ndarray:
    """popops' rule: an offset at or past the end (or negative) starts at 0; rows then wrap."""
    off = offset[..., 0].astype(np.int64)
    return np.where((off >= 0) & (off < size), off, 0)


def _dynamic_cycles(dtype: DType, rows: int, width: int, target: Target):
    """[U] Like DynamicSlice2d: a row set-up plus a vector copy per moved row."""
    vectors = _ceil_div(width * dtype.itemsize, target.vector_width_bytes)
    return FIXED_CYCLES + rows * (MULTISLICE_CYCLES_PER_ROW + vectors)


@cache
def dynamic_slice_codelet(dtype: DType, offset_dtype: DType) -> type[Vertex]:
    """``DynamicSlice2d``: ``out[j] = base[(start + j) % len(base)]``, start read at run time."""

    class DynamicSlice(Vertex):
        offset = Input(offset_dtype, FieldShape.SCALAR)
        base = Input(dtype, FieldShape.VECTOR_LIST)
        out = Output(dtype, FieldShape.VECTOR_LIST)

        @staticmethod
        def compute(offset, base, out):
            size = len(base)
            start = _dynamic_start(offset, size)
            first = int(start.flat[0]) if start.size else 0
            if np.all(start == first):
                for j, o in enumerate(out):
                    o[...] = base[(first + j) % size]
                return
            if start.ndim == 2 and np.all(start == start[:, :1]):  # one offset per replica: row copies
                for r, at_r in enumerate(start[:, 0].tolist()):
                    for j, o in enumerate(out):
                        o[r] = base[(at_r + j) % size][r]
                return
            stacked = np.stack(base, axis=-2)
            for j, o in enumerate(out):
                rows = ((start + j) % size)[..., None, None]
                o[...] = np.take_along_axis(stacked, rows, axis=-2)[..., 0, :]

        @staticmethod
        def cycles(offset, base, out, target):
            return _dynamic_cycles(dtype, len(out), out[0] if out else 0, target)

    return _named(DynamicSlice, f"DynamicSlice2d<{dtype.name}>")


@cache
def dynamic_update_codelet(dtype: DType, offset_dtype: DType) -> type[Vertex]:
    """``DynamicUpdateSlice2d``: ``base[(start + j) % len(base)] = update[j]``."""

    class DynamicUpdate(Vertex):
        offset = Input(offset_dtype, FieldShape.SCALAR)
        base = InOut(dtype, FieldShape.VECTOR_LIST)
        update = Input(dtype, FieldShape.VECTOR_LIST)

        @staticmethod
        def compute(offset, base, update):
            size = len(base)
            start = _dynamic_start(offset, size)
            first = int(start.flat[0]) if start.size else 0
            if np.all(start == first):
                for j, u in enumerate(update):
                    base[(first + j) % size][...] = u
                return
            if start.ndim == 2 and np.all(start == start[:, :1]):  # one offset per replica
                for r, at_r in enumerate(start[:, 0].tolist()):
                    for j, u in enumerate(update):
                        base[(at_r + j) % size][r] = u[r]
                return
            for j, u in enumerate(update):
                row = (start + j) % size
                for k in np.unique(row).tolist():
                    hit = row == k
                    base[k][hit] = u[hit]

        @staticmethod
        def cycles(offset, base, update, target):
            return _dynamic_cycles(dtype, len(update), update[0] if update else 0, target)

    return _named(DynamicUpdate, f"DynamicUpdateSlice2d<{dtype.name}>")


class SortOrder(enum.Enum):
    ASCENDING = "ascending"  # NaN last, like numpy
    DESCENDING = "descending"  # NaN first (largest), like torch.topk


def sort_order(x: np.ndarray, order: SortOrder) -> np.ndarray:
    """Stable sorting permutation along the last axis; ties keep their input order."""
    if order is SortOrder.ASCENDING:
        return np.argsort(x, axis=-1, kind="stable")
    n = x.shape[-1]
    # A stable ascending sort of the reversed row, reversed again: descending, ties in order.
    return (n - 1 - np.argsort(x[..., ::-1], axis=-1, kind="stable"))[..., ::-1]


@cache
def sort_codelet(dtype: DType, order: SortOrder, with_index: bool) -> type[Vertex]:
    """``Sort``: one row sorted; ``out`` keeps its first ``len(out)`` elements (top-k)."""
    compares = SORT_CYCLES_PER_COMPARE

    def cost(x, target):
        return FIXED_CYCLES + compares * x * max(1, int(np.ceil(np.log2(max(x, 2)))))

    if with_index:
        class SortKV(Vertex):
            x = Input(dtype)
            out = Output(dtype)
            index = Output(int32)

            @staticmethod
            def compute(x, out, index):
                perm = sort_order(x, order)[..., : out.shape[-1]]
                out[...] = np.take_along_axis(x, perm, axis=-1)
                index[...] = perm

            @staticmethod
            def cycles(x, out, index, target):
                return cost(x, target)

        return _named(SortKV, f"SortKV<{dtype.name},{order.name}>")

    class Sort(Vertex):
        x = Input(dtype)
        out = Output(dtype)

        @staticmethod
        def compute(x, out):
            if order is SortOrder.ASCENDING and out.shape[-1] == x.shape[-1]:
                out[...] = np.sort(x, axis=-1, kind="stable")
            else:
                perm = sort_order(x, order)[..., : out.shape[-1]]
                out[...] = np.take_along_axis(x, perm, axis=-1)

        @staticmethod
        def cycles(x, out, target):
            return cost(x, target)

    return _named(Sort, f"Sort<{dtype.name},{order.name}>")


@cache
def cumsum_codelet(dtype: DType) -> type[Vertex]:
    """``CumSum``: running sums along one row, first to last (fp16 accumulates in fp32)."""
    work = float32.numpy if dtype.is_float and dtype.itemsize < 4 else dtype.numpy

    class CumSum(Vertex):
        x = Input(dtype)
        out = Output(dtype)

        @staticmethod
        def compute(x, out):
            out[...] = np.cumsum(x, axis=-1, dtype=work)

        @staticmethod
        def cycles(x, out, target):
            return FIXED_CYCLES + SCAN_CYCLES_PER_ELEMENT * x

        @staticmethod
        def flops(x, out):
            return x if dtype.is_float else 0

    return _named(CumSum, f"CumSum<{dtype.name}>")
