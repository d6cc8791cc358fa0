"""Row-wise scan and selection codelets: running product, running max/min with their indices,
log-cum-sum-exp, and the order statistics (median, nan-median, k-th value, mode).

One vertex works on one row (the last axis of its fields). Estimates **[U]**, like the sort and
cumsum codelets of ``indexing.py``: a fixed vertex cost plus a dependent chain per element for
scans (:data:`SCAN_CYCLES`), and a sort's ``n log2 n`` compares for selections.
"""

from __future__ import annotations

import enum
from functools import cache

import numpy as np

from softipu.codelets.indexing import FIXED_CYCLES, SORT_CYCLES_PER_COMPARE, _named
from softipu.dtypes import DType, float32, int32
from softipu.graph.vertex import Input, Output, Vertex

__all__ = ["Scan", "Select", "scan_codelet", "select_codelet", "SCAN_CYCLES"]


class Scan(enum.Enum):
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
SCAN_CYCLES = {Scan.PROD: 2, Scan.MAX: 4, Scan.MIN: 4, Scan.LOGSUMEXP: 24}


def _extremum(x: np.ndarray, is_max: bool) -> tuple[np.ndarray, np.ndarray]:
    """torch's cummax/cummin: NaN propagates; ties and NaNs take the latest index."""
    out = np.empty_like(x)
    idx = np.empty(x.shape, np.int32)
    best = x[..., 0].copy()
    at = np.zeros(x.shape[:-1], np.int32)
    out[..., 0], idx[..., 0] = best, 0
    for i in range(1, x.shape[-1]):
        v = x[..., i]
        better = (v >= best) if is_max else (v <= best)
        take = np.isnan(v) | (~np.isnan(best) & better)
        best = np.where(take, v, best)
        at = np.where(take, i, at)
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
            if op is Scan.PROD:
                out[...] = np.cumprod(x, axis=-1, dtype=work)
            else:
                out[...] = np.logaddexp.accumulate(x.astype(work), axis=-1)

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
