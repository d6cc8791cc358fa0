"""Row-wise scan and selection codelets: running product, running max/min with their indices,
log-cum-sum-exp, and the order statistics (median, nan-median, k-th value, mode).

One vertex works on one row (the last axis of its fields). Estimates **[U]**, like the sort and
cumsum codelets of ``indexing.py``: a fixed vertex cost plus a dependent chain per element for
scans (:data:`SCAN_CYCLES`), and a sort's ``n log2 n`` compares for selections.
"""

from __future__ import annotations

import enum
from functools import cache
from typing import Any

import numpy as np

from softipu.codelets.indexing import FIXED_CYCLES, SCAN_CYCLES_PER_ELEMENT, SORT_CYCLES_PER_COMPARE, _named
from softipu.dtypes import DType, float32, int32
from softipu.graph.vertex import Input, Output, Vertex

__all__ = ["Scan", "Select", "scan_codelet", "select_codelet", "SCAN_CYCLES", "scan_total_codelet",
           "scan_carry_codelet", "scan_apply_codelet"]


class Scan(enum.Enum):
    SUM = "sum"  # cumsum's own codelet is indexing.cumsum_codelet; this is for rows in pieces
    PROD = "prod"
    MAX = "max"
    MIN = "min"
    LOGSUMEXP = "logsumexp"


class Select(enum.Enum):
    MEDIAN = "median"  # the lower median; NaN if the row has one
    NANMEDIAN = "nanmedian"  # the lower median of the non-NaN values
    KTH = "kth"  # the k-th smallest (1-based k, a vertex parameter)
    MODE = "mode"  # the most frequent value (the smallest of equals), its last index


# [U] cycles per element of each scan: a multiply; a compare, select and index store; exp + log.
SCAN_CYCLES = {Scan.SUM: SCAN_CYCLES_PER_ELEMENT, Scan.PROD: 2, Scan.MAX: 4, Scan.MIN: 4, Scan.LOGSUMEXP: 24}


def _extremum(x: np.ndarray, is_max: bool, best: np.ndarray | None = None, at: np.ndarray | None = None,
              offset: Any = 0) -> tuple[np.ndarray, np.ndarray]:
    """torch's cummax/cummin: NaN propagates; ties and NaNs take the latest index. ``best`` and
    ``at`` carry in a value and index from before the row (a row in pieces); ``offset`` is added
    to the positions."""
    out = np.empty_like(x)
    idx = np.empty(x.shape, np.int32)
    start = 0
    if best is None:
        best = x[..., 0].copy()
        at = np.zeros(x.shape[:-1], np.int32) + offset
        out[..., 0], idx[..., 0] = best, at
        start = 1
    for i in range(start, x.shape[-1]):
        v = x[..., i]
        better = (v >= best) if is_max else (v <= best)
        take = np.isnan(v) | (~np.isnan(best) & better)
        best = np.where(take, v, best)
        at = np.where(take, i + offset, at)
        out[..., i], idx[..., i] = best, at
    return out, idx


@cache
def scan_codelet(op: Scan, dtype: DType) -> type[Vertex]:
    """``Scan``: a running ``op`` along one row; MAX/MIN also write the index of each value."""
    work = float32.numpy if dtype.is_float and dtype.itemsize < 4 else dtype.numpy
    per = SCAN_CYCLES[op]

    if op in (Scan.MAX, Scan.MIN):
        class ScanKV(Vertex):
            x = Input(dtype)
            out = Output(dtype)
            index = Output(int32)

            @staticmethod
            def compute(x, out, index):
                out[...], index[...] = _extremum(x, op is Scan.MAX)

            @staticmethod
            def cycles(x, out, index, target):
                return FIXED_CYCLES + per * x

        return _named(ScanKV, f"Scan<{dtype.name},{op.name}>")

    class ScanV(Vertex):
        x = Input(dtype)
        out = Output(dtype)

        @staticmethod
        def compute(x, out):
            out[...] = _accumulate(op, x.astype(work))

        @staticmethod
        def cycles(x, out, target):
            return FIXED_CYCLES + per * x

        @staticmethod
        def flops(x, out):
            return x

    return _named(ScanV, f"Scan<{dtype.name},{op.name}>")


def _select_rows(x: np.ndarray, op: Select, k: int) -> tuple[np.ndarray, np.ndarray]:
    n = x.shape[-1]
    perm = np.argsort(x, axis=-1, kind="stable")  # NaN last
    ordered = np.take_along_axis(x, perm, axis=-1)
    if op is Select.MODE:
        return _mode(ordered, perm)
    if op is Select.KTH:
        pos = np.full(x.shape[:-1], k - 1)
    elif op is Select.MEDIAN:
        pos = np.full(x.shape[:-1], (n - 1) // 2)
    else:
        count = (~np.isnan(ordered)).sum(axis=-1) if x.dtype.kind == "f" else np.full(x.shape[:-1], n)
        pos = np.maximum(count - 1, 0) // 2
    pos = pos[..., None]
    value = np.take_along_axis(ordered, pos, axis=-1)[..., 0]
    index = np.take_along_axis(perm, pos, axis=-1)[..., 0]
    if op is Select.MEDIAN and x.dtype.kind == "f":  # a NaN anywhere: NaN, at the first NaN
        has_nan = np.isnan(x).any(axis=-1)
        value = np.where(has_nan, np.nan, value).astype(x.dtype)
        index = np.where(has_nan, np.argmax(np.isnan(x), axis=-1), index)
    return value, index


def _mode(ordered: np.ndarray, perm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The most frequent value of each sorted row (the smallest of equally frequent ones) and
    the largest original index where it occurs."""
    n = ordered.shape[-1]
    starts = np.ones(ordered.shape, bool)
    starts[..., 1:] = ordered[..., 1:] != ordered[..., :-1]
    run_id = np.cumsum(starts, axis=-1) - 1
    lengths = np.zeros(ordered.shape, np.int64)
    np.put_along_axis(lengths, run_id, 0, axis=-1)
    for i in range(n):  # run lengths, one column at a time (rows are short)
        col = run_id[..., i:i + 1]
        np.put_along_axis(lengths, col, np.take_along_axis(lengths, col, axis=-1) + 1, axis=-1)
    best = np.argmax(lengths, axis=-1)[..., None]  # first (smallest) run of the largest length
    in_best = run_id == best
    value = np.take_along_axis(ordered, np.argmax(in_best, axis=-1)[..., None], axis=-1)[..., 0]
    index = np.where(in_best, perm, -1).max(axis=-1)
    return value, index


@cache
def select_codelet(op: Select, dtype: DType, k: int = 0) -> type[Vertex]:
    """``Select``: one order statistic of a row (``out`` and ``index`` hold one element; ``k``
    is KTH's 1-based rank)."""
    class SelectKV(Vertex):
        x = Input(dtype)
        out = Output(dtype)
        index = Output(int32)

        @staticmethod
        def compute(x, out, index):
            value, at = _select_rows(x, op, k)
            out[..., 0], index[..., 0] = value, at

        @staticmethod
        def cycles(x, out, index, target):
            return FIXED_CYCLES + SORT_CYCLES_PER_COMPARE * x * max(1, int(np.ceil(np.log2(max(x, 2)))))

    return _named(SelectKV, f"Select<{dtype.name},{op.name},{k}>")


def _accumulate(op: Scan, x: np.ndarray) -> np.ndarray:
    """The inclusive running ``op`` along the last axis, in ``x``'s (working) dtype."""
    if op is Scan.SUM:
        return np.cumsum(x, axis=-1, dtype=x.dtype)
    if op is Scan.PROD:
        return np.cumprod(x, axis=-1, dtype=x.dtype)
    return np.logaddexp.accumulate(x, axis=-1)


def _identity(op: Scan, dtype: np.dtype) -> Any:
    """The value that leaves ``op`` unchanged (the carry into a row's first piece)."""
    if op is Scan.SUM:
        return 0
    if op is Scan.PROD:
        return 1
    if dtype.kind == "f":
        return np.inf if op is Scan.MIN else -np.inf
    info = np.iinfo(dtype)
    return info.max if op is Scan.MIN else info.min


# -- rows in pieces over tiles (ops.indexing.row_pieces): reduce, carry, scan again ---------------
# A running op over a row cut into pieces on several tiles runs as a scan over tiles does: each
# piece reduces to its total (the op's last running value), one vertex per row turns the totals
# into each piece's carry-in (an exclusive running op over the pieces), then each piece runs its
# scan again from its carry. Floats are accumulated in float32 throughout (as the whole-row
# codelets do); MAX/MIN carry the value and its index. Estimates [U] as the whole-row codelets.
def _work(op: Scan, dtype: DType) -> DType:
    return float32 if dtype.is_float and dtype.itemsize < 4 and op not in (Scan.MAX, Scan.MIN) else dtype


@cache
def scan_total_codelet(op: Scan, dtype: DType) -> type[Vertex]:
    """One piece's total: the last value of its running ``op`` (in the working dtype); MAX/MIN also
    its index in the row (``start``: the piece's first position)."""
    work = _work(op, dtype)
    per = SCAN_CYCLES[op]
    if op in (Scan.MAX, Scan.MIN):
        class ScanTotalKV(Vertex):
            x = Input(dtype)
            start = Input(int32)
            total = Output(dtype)
            tindex = Output(int32)

            @staticmethod
            def compute(x, start, total, tindex):
                values, index = _extremum(x, op is Scan.MAX, offset=start[..., 0])
                total[...], tindex[...] = values[..., -1:], index[..., -1:]

            @staticmethod
            def cycles(x, start, total, tindex, target):
                return FIXED_CYCLES + per * x

        return _named(ScanTotalKV, f"ScanTotal<{dtype.name},{op.name}>")

    class ScanTotal(Vertex):
        x = Input(dtype)
        total = Output(work)

        @staticmethod
        def compute(x, total):
            total[...] = _accumulate(op, x.astype(work.numpy))[..., -1:]

        @staticmethod
        def cycles(x, total, target):
            return FIXED_CYCLES + per * x

    return _named(ScanTotal, f"ScanTotal<{dtype.name},{op.name}>")


@cache
def scan_carry_codelet(op: Scan, dtype: DType) -> type[Vertex]:
    """One row's carries: ``carry[j]`` is ``op`` over the totals of pieces ``0 .. j - 1`` (the
    identity for the first piece); MAX/MIN also the index of that value."""
    work = _work(op, dtype)
    per = SCAN_CYCLES[op]
    if op in (Scan.MAX, Scan.MIN):
        class ScanCarryKV(Vertex):
            total = Input(dtype)
            tindex = Input(int32)
            carry = Output(dtype)
            cindex = Output(int32)

            @staticmethod
            def compute(total, tindex, carry, cindex):
                best = np.full(total.shape[:-1], _identity(op, total.dtype), total.dtype)
                at = np.zeros(total.shape[:-1], np.int32)
                for j in range(total.shape[-1]):
                    carry[..., j], cindex[..., j] = best, at
                    v = total[..., j]
                    better = (v >= best) if op is Scan.MAX else (v <= best)
                    take = np.isnan(v) | (~np.isnan(best) & better)
                    best, at = np.where(take, v, best), np.where(take, tindex[..., j], at)

            @staticmethod
            def cycles(total, tindex, carry, cindex, target):
                return FIXED_CYCLES + per * total

        return _named(ScanCarryKV, f"ScanCarry<{dtype.name},{op.name}>")

    class ScanCarry(Vertex):
        total = Input(work)
        carry = Output(work)

        @staticmethod
        def compute(total, carry):
            first = np.full(total.shape[:-1] + (1,), _identity(op, total.dtype), total.dtype)
            carry[...] = _accumulate(op, np.concatenate([first, total[..., :-1]], axis=-1))

        @staticmethod
        def cycles(total, carry, target):
            return FIXED_CYCLES + per * total

    return _named(ScanCarry, f"ScanCarry<{dtype.name},{op.name}>")


@cache
def scan_apply_codelet(op: Scan, dtype: DType) -> type[Vertex]:
    """One piece's running ``op`` from its carry-in: ``out`` (and MAX/MIN's ``index`` in the row)."""
    work = _work(op, dtype)
    per = SCAN_CYCLES[op]
    if op in (Scan.MAX, Scan.MIN):
        class ScanApplyKV(Vertex):
            x = Input(dtype)
            carry = Input(dtype)
            cindex = Input(int32)
            start = Input(int32)
            out = Output(dtype)
            index = Output(int32)

            @staticmethod
            def compute(x, carry, cindex, start, out, index):
                out[...], index[...] = _extremum(x, op is Scan.MAX, carry[..., 0].copy(),
                                                 cindex[..., 0].copy(), offset=start[..., 0])

            @staticmethod
            def cycles(x, carry, cindex, start, out, index, target):
                return FIXED_CYCLES + per * x

        return _named(ScanApplyKV, f"ScanApply<{dtype.name},{op.name}>")

    class ScanApply(Vertex):
        x = Input(dtype)
        carry = Input(work)
        out = Output(dtype)

        @staticmethod
        def compute(x, carry, out):
            out[...] = _accumulate(op, np.concatenate([carry, x.astype(work.numpy)], axis=-1))[..., 1:]

        @staticmethod
        def cycles(x, carry, out, target):
            return FIXED_CYCLES + per * x

        @staticmethod
        def flops(x, carry, out):
            return x

    return _named(ScanApply, f"ScanApply<{dtype.name},{op.name}>")
