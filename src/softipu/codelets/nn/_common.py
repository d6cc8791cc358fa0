"""What the nn codelets share: the per-vector cycle constants (the table in the package
docstring), batch helpers, the row-codelet estimate, and the fp32 column reduction and
cast-scale codelets that finish statistics and parameter gradients."""

from __future__ import annotations

from functools import cache

import numpy as np

from softipu.dtypes import DType, float32
from softipu.errors import CodeletError
from softipu.graph.vertex import Input, MultiVertex, Output, Param, Vertex
from softipu.target import Target

__all__ = ["ReduceAddColumns", "cast_scale_codelet"]

VERTEX_CYCLES = 30  # [U] vertex entry, field pointer loads, return
ROW_CYCLES = 20  # [U] per-row loop set-up and the row's scalar work
C_MAX, C_ADD, C_ACC, C_EXP, C_LOG, C_TANH, C_SIGMOID = 3, 3, 1, 10, 16, 16, 14  # see the package docstring
C_DIVIDE, C_RSQRT = 10, 8


def _ceil_div(a, b):
    return -(-a // b)


def _vectors(n, target: Target):
    """fp32 vectors in ``n`` elements (all nn math runs in fp32)."""
    return _ceil_div(n, target.vector_width(4))


def _io(n, dtype: DType, target: Target):
    """Extra cycles to widen or narrow ``n`` half elements [U]; zero for float32."""
    return 0 if dtype is float32 else _ceil_div(n, target.vector_width(2))


def _multi(n, per_vector: int, fixed: int, target: Target):
    """popops' MultiVertex shape: ``W x (fixed + ceil(ceil(n / W) / vw) x c) + 20`` [V] (§5)."""
    workers = target.workers_per_tile
    return workers * (fixed + _vectors(_ceil_div(n, workers), target) * per_vector) + 20


def _param(p: np.ndarray):
    """The one value of a param across a batch of vertices (see the package NOTE)."""
    first = p.flat[0]
    if p.size > 1 and np.any(p != first):
        raise CodeletError("nn codelets need one param value per vertex group")
    return first.item()


def _split(a: np.ndarray, count: int) -> np.ndarray:
    """``(..., count * m)`` -> ``(..., count, m)``; splitting the last axis is always a view."""
    return a.reshape(*a.shape[:-1], count, a.shape[-1] // count)


def _f32(a: np.ndarray) -> np.ndarray:
    return a if a.dtype == np.float32 else a.astype(np.float32)


def _named(cls: type, name: str) -> type:
    cls.__name__ = cls.__qualname__ = name
    return cls


def _row_cycles(elements, rows, per_vector: int, per_row: int, dtype: DType, target: Target, io: int):
    return (VERTEX_CYCLES + rows * (ROW_CYCLES + per_row)
            + _vectors(elements, target) * per_vector + io * _io(elements, dtype, target))


# -- the column reduction and cast-scale (finishing sums) --------------------------------------
class ReduceAddColumns(MultiVertex):
    """``out[j] = sum_s partial[s, j]`` over a ``(S, w)`` block in fp32, rows in order: the
    on-tile and cross-tile stages of the two-stage reduction (popops ReduceAdd's shape:
    one accumulate per vector [U], MultiVertex over W workers)."""

    partial = Input(float32)
    out = Output(float32)

    @staticmethod
    def compute(partial, out):
        w = out.shape[-1]
        out[...] = partial.reshape(*partial.shape[:-1], partial.shape[-1] // w, w).sum(axis=-2)

    @staticmethod
    def cycles(partial, out, target):
        return _multi(partial, C_ACC, 17, target) + _multi(out, C_ADD, 0, target)

    @staticmethod
    def flops(partial, out, target):
        return partial


@cache
def cast_scale_codelet(src: DType, dst: DType) -> type[Vertex]:
    """``out = x * scale`` converted to ``dst`` (finishes sums into parameter gradients)."""

    class CastScale(MultiVertex):
        x = Input(src)
        out = Output(dst)
        scale = Param(float32)

        @staticmethod
        def compute(x, out, scale):
            s = np.float32(_param(scale))
            out[...] = _f32(x) * s if s != 1 else x

        @staticmethod
        def cycles(x, out, scale, target):
            return _multi(out, C_ADD, 17, target) + _io(out, src, target) + _io(out, dst, target)

        @staticmethod
        def flops(x, out, scale, target):
            return out

    return _named(CastScale, f"CastScale<{src.name},{dst.name}>")
