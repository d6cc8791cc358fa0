"""What the nn codelets share: the per-vector cycle constants (the table in the package
docstring), batch helpers, the row-codelet estimate, and the fp32 column reduction and
cast-scale codelets that finish statistics and parameter gradients."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

from softipu.codelets._common import ceil_div as _ceil_div
from softipu.dtypes import DType, float32
from softipu.errors import CodeletError
from softipu.graph.vertex import Input, MultiVertex, Output, Param, Vertex
from softipu.target import Target

__all__ = ["ReduceAddColumns", "cast_scale_codelet", "NnEstimates", "NN"]


@dataclass(frozen=True, slots=True)
class NnEstimates:
    """Every figure of the nn codelets' cycle estimates, with its tag (the table in the package
    docstring explains each). fp32 cycles per vector per worker unless named otherwise."""

    vertex: int = 30  # [U] vertex entry, field pointer loads, return
    row: int = 20  # [U] per-row loop set-up and the row's scalar work
    max: int = 3  # [V] popops MAX float {3, 2}
    add: int = 3  # [V] popops ADD {1, natural} + 2 load/store
    acc: int = 1  # [U] loads pipelined into an add, no store
    exp: int = 10  # [V] popops EXP float {6, 2} + 4
    log: int = 16  # [V] popops LOG float {12, 2} + 4
    tanh: int = 16  # [V] popops TANH float {12, 2} + 4
    sigmoid: int = 14  # [V] popops SIGMOID float {10, 2} + 4
    relu: int = 6  # [V] popops RELU {2, vw} + 4
    divide: int = 10  # [V] per row: popops DIVIDE float {10, 2}, one reciprocal
    rsqrt: int = 8  # [V] per row: popops RSQRT float {8, 2}
    multi_fixed: int = 17  # [V] popops UnaryOp1D fixed worker cycles (non-EXP)
    multi_supervisor: int = 20  # [V] popops UnaryOp1D supervisor cycles
    per_label: int = 1  # [U] a compare-add per label (loss counts)


NN = NnEstimates()
# The public names of the former single module, read from the one table.
VERTEX_CYCLES, ROW_CYCLES = NN.vertex, NN.row
C_MAX, C_ADD, C_ACC, C_EXP = NN.max, NN.add, NN.acc, NN.exp
C_LOG, C_TANH, C_SIGMOID = NN.log, NN.tanh, NN.sigmoid
C_DIVIDE, C_RSQRT, C_RELU = NN.divide, NN.rsqrt, NN.relu


def _vectors(n, target: Target):
    """fp32 vectors in ``n`` elements (all nn math runs in fp32)."""
    return _ceil_div(n, target.vector_width(4))


def _io(n, dtype: DType, target: Target):
    """Extra cycles to widen or narrow ``n`` half elements [U]; zero for float32."""
    return 0 if dtype is float32 else _ceil_div(n, target.vector_width(2))


def _multi(n, per_vector: int, fixed: int, target: Target):
    """popops' MultiVertex shape: ``W x (fixed + ceil(ceil(n / W) / vw) x c) + 20`` [V] (§5)."""
    workers = target.workers_per_tile
    return workers * (fixed + _vectors(_ceil_div(n, workers), target) * per_vector) + NN.multi_supervisor


def _param(p: np.ndarray):
    """The one value of a param across a batch of vertices (see the package NOTE). The fast
    engine's params are :class:`~softipu.codelets.host.Frozen`, the same read-only array on every
    run of a group: their value is found and checked once and kept in the array's ``memo``."""
    memo = getattr(p, "memo", None)
    if memo is not None and "param" in memo:
        return memo["param"]
    first = p.flat[0]
    if p.size > 1 and (p != first).any():
        raise CodeletError("nn codelets need one param value per vertex group")
    value = first.item()
    if memo is not None:
        memo["param"] = value
    return value


def _int_params(params: dict, names: tuple[str, ...]) -> dict[str, int]:
    """``{name: int(_param(params[name]))}`` for the ``names`` present, checked in one pass (a
    vertex group's geometry: one numpy comparison, not one per param, on every run)."""
    names = tuple(k for k in names if k in params)
    if not names:
        return {}
    flat = [np.asarray(params[k]).reshape(-1) for k in names]
    if len({f.size for f in flat}) > 1:  # params of different lengths: one check each
        return {k: int(_param(f)) for k, f in zip(names, flat, strict=True)}
    rows = np.stack(flat)
    if rows.shape[1] > 1 and (rows != rows[:, :1]).any():
        raise CodeletError("nn codelets need one param value per vertex group")
    return dict(zip(names, rows[:, 0].tolist(), strict=True))


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
SHORT_ROWS = 64  # ReduceAddColumns blocks narrower than this are summed over a transposed copy


class ReduceAddColumns(MultiVertex):
    """``out[j] = sum_s partial[s, j]`` over a ``(S, w)`` block in fp32, rows in order: the
    on-tile and cross-tile stages of the two-stage reduction (popops ReduceAdd's shape:
    one accumulate per vector [U], MultiVertex over W workers)."""

    partial = Input(float32)
    out = Output(float32)

    @staticmethod
    def compute(partial, out):
        w = out.shape[-1]
        rows = partial.reshape(*partial.shape[:-1], partial.shape[-1] // w, w)
        if 2 <= w < SHORT_ROWS and rows.size > rows.shape[-2] * w:
            # numpy sums a (vertices, S, w) block's S axis in order with an inner loop of w: slow
            # for narrow blocks (the demo encoder's embedding LayerNorm, w = 2: 0.26 ms a run).
            # The same order, S outermost over one contiguous copy: the same bits, ~3x faster.
            np.add.reduce(_s_outermost(rows), axis=0, out=out)
        else:  # (w = 1 sums pairwise, as numpy sums a contiguous axis)
            out[...] = rows.sum(axis=-2)

    @staticmethod
    def cycles(partial, out, target):
        return _multi(partial, C_ACC, NN.multi_fixed, target) + _multi(out, C_ADD, 0, target)

    @staticmethod
    def flops(partial, out, target):
        return partial


def _s_outermost(rows: np.ndarray) -> np.ndarray:
    """A ``(..., S, w)`` block as a contiguous ``(S, ..., w)`` copy, each row's ``w`` elements
    moved as one item (a copy element by element of 2-element runs cost 7x as much)."""
    moved = np.moveaxis(rows, -2, 0)
    if rows.strides[-1] != rows.itemsize:
        return np.ascontiguousarray(moved)
    flat = np.empty(moved.shape, rows.dtype)
    item = np.dtype((np.void, rows.shape[-1] * rows.itemsize))
    np.copyto(flat.view(item)[..., 0], moved.view(item)[..., 0])
    return flat


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
            return _multi(out, C_ADD, NN.multi_fixed, target) + _io(out, src, target) + _io(out, dst, target)

        @staticmethod
        def flops(x, out, scale, target):
            return out

    return _named(CastScale, f"CastScale<{src.name},{dst.name}>")
