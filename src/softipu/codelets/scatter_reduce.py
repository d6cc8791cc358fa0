"""The ``ScatterReduce`` codelet: ``out = x`` with ``src[i]`` reduced into ``out[pos[i]]``
(sum, prod, mean, amax, amin, or assign: the last write wins), torch's scatter_reduce rules.

One vertex holds the whole target (it is the reference form of popops' MultiUpdateOp over
flat positions). Out-of-range positions are skipped, as in the other scatters. Estimate **[U]**:
a fixed vertex cost, one copy cycle per target element, and per update a load, the reduction
and a store (``SCATTER_CYCLES_PER_UPDATE``).
"""

from __future__ import annotations

from functools import cache

import numpy as np

from softipu.codelets.indexing import FIXED_CYCLES, _named
from softipu.dtypes import DType, int32
from softipu.graph.vertex import Input, Output, Vertex

__all__ = ["REDUCTIONS", "scatter_reduce_codelet", "SCATTER_CYCLES_PER_UPDATE"]

SCATTER_CYCLES_PER_UPDATE = 6  # [U] load index, bounds check, load, reduce, store
REDUCTIONS = ("sum", "prod", "mean", "amax", "amin", "assign")
_UFUNC = {"sum": np.add, "mean": np.add, "prod": np.multiply, "amax": np.fmax, "amin": np.fmin}
_IDENTITY = {"sum": 0, "mean": 0, "prod": 1}


def _reduce(x: np.ndarray, pos: np.ndarray, src: np.ndarray, reduce: str, include_self: bool) -> np.ndarray:
    out = x.copy()
    keep = (pos >= 0) & (pos < x.size)
    pos, src = pos[keep].astype(np.int64), src[keep]
    if reduce == "assign":
        out[pos] = src
        return out
    touched = np.zeros(x.size, bool)
    touched[pos] = True
    if not include_self:
        if reduce in _IDENTITY:
            out[touched] = _IDENTITY[reduce]
        else:  # amax/amin over the sources alone: start from the first source at each position
            first = np.full(x.size, -1)
            first[pos[::-1]] = np.arange(len(pos))[::-1]
            out[touched] = src[first[touched]]
    if reduce in ("amax", "amin"):  # NaN propagates, as torch's maximum/minimum
        nan = np.zeros(x.size, bool)
        if src.dtype.kind == "f":
            np.logical_or.at(nan, pos, np.isnan(src))
        _UFUNC[reduce].at(out, pos, src)
        if src.dtype.kind == "f":
            out[nan] = np.nan
        return out
    _UFUNC[reduce].at(out, pos, src)
    if reduce == "mean":
        count = np.zeros(x.size, np.int64)
        np.add.at(count, pos, 1)
        count += 1 if include_self else 0
        nz = touched & (count > 0)
        if out.dtype.kind == "f":
            out[nz] = out[nz] / count[nz]
        else:
            out[nz] = np.floor_divide(out[nz], count[nz])
    return out


@cache
def scatter_reduce_codelet(dtype: DType, reduce: str, include_self: bool) -> type[Vertex]:
    """``ScatterReduce``: fields ``x`` (the target), ``pos`` (int32 flat positions), ``src``."""
    class ScatterReduce(Vertex):
        x = Input(dtype)
        pos = Input(int32)
        src = Input(dtype)
        out = Output(dtype)

        @staticmethod
        def compute(x, pos, src, out):
            rows = x.reshape(-1, x.shape[-1])
            p, s = pos.reshape(rows.shape[0], -1), src.reshape(rows.shape[0], -1)
            o = out.reshape(rows.shape[0], -1)
            for r in range(rows.shape[0]):
                o[r] = _reduce(rows[r], p[r], s[r], reduce, include_self)

        @staticmethod
        def cycles(x, pos, src, out):
            return FIXED_CYCLES + x + SCATTER_CYCLES_PER_UPDATE * pos

    return _named(ScatterReduce, f"ScatterReduce<{dtype.name},{reduce},{int(include_self)}>")
