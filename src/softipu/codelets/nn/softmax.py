"""Softmax and log-softmax rows and their gradients."""

from __future__ import annotations

from functools import cache

import numpy as np

from softipu.codelets.host import scratch
from softipu.codelets.nn._common import (
    C_ACC,
    C_ADD,
    C_DIVIDE,
    C_EXP,
    C_LOG,
    C_MAX,
    _f32,
    _named,
    _param,
    _row_cycles,
    _split,
)
from softipu.dtypes import DType, float32, int32
from softipu.graph.vertex import InOut, Input, Output, Param, Vertex

__all__ = ["softmax_rows_codelet", "softmax_grad_rows_codelet", "softmax_piece_max_codelet",
           "row_combine_codelet", "softmax_piece_exp_codelet", "softmax_piece_scale_codelet",
           "softmax_grad_piece_sum_codelet", "softmax_grad_piece_codelet"]


# -- softmax -------------------------------------------------------------------------------------
@cache
def softmax_rows_codelet(dtype: DType, log: bool) -> type[Vertex]:
    """Stable (log-)softmax of ``x.size // n`` rows of ``n``: subtract the row max, exponentiate,
    normalise. Passes: max, exp-accumulate, scale [U]."""
    per_vector = C_MAX + C_ADD + C_EXP + C_ACC + C_ADD

    class SoftmaxRows(Vertex):
        x = Input(dtype)
        out = Output(dtype)
        n = Param(int32)

        @staticmethod
        def compute(x, out, n):
            k = x.shape[-1] // _param(n)
            xs = _split(_f32(x), k)
            # fp32 outputs are computed in place: no temporaries beyond the row statistics
            o = _split(out, k) if out.dtype == np.float32 else np.empty(xs.shape, np.float32)
            if log:
                np.subtract(xs, xs.max(axis=-1, keepdims=True), out=o)
                o -= np.log(np.exp(o).sum(axis=-1, keepdims=True))
            else:
                np.subtract(xs, _row_max(xs), out=o)
                np.exp(o, out=o)
                o *= np.float32(1) / o.sum(axis=-1, keepdims=True)
            if out.dtype != np.float32:
                _split(out, k)[...] = o

        @staticmethod
        def cycles(x, out, n, target):
            return _row_cycles(x, x // n, per_vector, C_LOG if log else C_DIVIDE, dtype, target, 2)

        @staticmethod
        def flops(x, out, n, target):
            return 5 * x

    return _named(SoftmaxRows, f"{'LogSoftmax' if log else 'Softmax'}Rows<{dtype.name}>")


# Rows at most this long take their maximum over a transposed copy (:func:`_row_max`).
SHORT_ROW = 256
SHORT_ROW_ELEMENTS = 1 << 20  # the scratch copy kept per thread stays <= 4 MiB
_LANES = 4  # float32s a 16-byte item of _row_max's copy


def _row_max(xs: np.ndarray) -> np.ndarray:
    """``xs.max(axis=-1, keepdims=True)`` for softmax. numpy reduces each row of a short last
    axis in a loop of its own (512 rows of 64: ~30 us, the demo encoder's attention softmax);
    short rows are copied column-major into a scratch buffer and reduced along axis 0 instead,
    one vectorised ``maximum`` a column (~20 us). Rows of a multiple of 4 move as 16-byte
    items (a strided copy costs about the same an item whatever its size), each column of the
    copy holding 4 lanes that two ``maximum`` passes of the ``rows`` results fold (~12 us).
    A maximum is exact: the same value, except
    which of +0 and -0 a row of equal zeros keeps, and which NaN a row of NaNs with different
    payloads keeps. Softmax's ``exp(x - max)`` is the same bits either way (x - (+0) and
    x - (-0) differ only for x = -0, where exp gives 1 for both); log-softmax, where the sign
    could reach the output, keeps numpy's row reduction."""
    n = xs.shape[-1]
    rows = xs.size // max(n, 1)
    if n > SHORT_ROW or rows < 2 or n < 2 or xs.size > SHORT_ROW_ELEMENTS:
        return xs.max(axis=-1, keepdims=True)
    flat = xs.reshape(rows, n)
    lanes = _LANES if n % _LANES == 0 and flat.strides[-1] == flat.itemsize else 1
    cols = scratch((n // lanes, rows * lanes), "softmax_max")
    item = np.dtype((np.void, lanes * flat.itemsize))  # bytes moved as they are
    np.copyto(cols.view(item), flat.view(item).T)
    m = np.maximum.reduce(cols, axis=0)
    if lanes > 1:
        m = m.reshape(rows, lanes)
        m = np.maximum(np.maximum(m[:, 0], m[:, 1]), np.maximum(m[:, 2], m[:, 3]))
    return m.reshape(*xs.shape[:-1], 1)


@cache
def softmax_grad_rows_codelet(dtype: DType, log: bool) -> type[Vertex]:
    """Row gradient from the forward output ``y``: softmax ``dx = y * (dy - sum(dy * y))``;
    log-softmax ``dx = dy - exp(y) * sum(dy)``."""
    per_vector = (C_EXP + C_ACC + C_ADD) if log else (C_ADD + C_ACC + 2 * C_ADD)

    class SoftmaxGradRows(Vertex):
        y = Input(dtype)
        dy = Input(dtype)
        dx = Output(dtype)
        n = Param(int32)

        @staticmethod
        def compute(y, dy, dx, n):
            n = _param(n)
            k = y.shape[-1] // n
            ys, gs = _split(_f32(y), k), _split(_f32(dy), k)
            if log:
                res = gs - np.exp(ys) * gs.sum(axis=-1, keepdims=True)
            else:
                res = ys * (gs - (gs * ys).sum(axis=-1, keepdims=True))
            _split(dx, k)[...] = res

        @staticmethod
        def cycles(y, dy, dx, n, target):
            return _row_cycles(y, y // n, per_vector, 0, dtype, target, 3)

        @staticmethod
        def flops(y, dy, dx, n, target):
            return 4 * y

    return _named(SoftmaxGradRows, f"{'LogSoftmax' if log else 'Softmax'}GradRows<{dtype.name}>")


# -- rows cut into pieces over tiles (ops.indexing.row_pieces) -------------------------------------
# popnn's softmax on a tensor spread over tiles is popops passes: a MAX reduction of each row
# (each tile's piece, then the row's partials), a subtract and exp in place with an ADD reduction,
# then a divide (log-softmax: subtract the log of the sum). Each vertex below is one piece's pass
# of that chain, priced per vector as the popops estimators it stands for [U].
@cache
def softmax_piece_max_codelet(dtype: DType) -> type[Vertex]:
    """``m = max(x)`` of one piece, fp32 (the first stage of the row max)."""

    class SoftmaxPieceMax(Vertex):
        x = Input(dtype)
        m = Output(float32)

        @staticmethod
        def compute(x, m):
            m[...] = _f32(x).max(axis=-1, keepdims=True)

        @staticmethod
        def cycles(x, m, target):
            return _row_cycles(x, 1, C_MAX, 0, dtype, target, 1)

    return _named(SoftmaxPieceMax, f"SoftmaxPieceMax<{dtype.name}>")


@cache
def row_combine_codelet(is_max: bool) -> type[Vertex]:
    """``out = max(partial)`` or ``sum(partial)`` of one row's per-piece fp32 partials (the second
    stage of the row's reduction)."""

    class RowCombine(Vertex):
        partial = Input(float32)
        out = Output(float32)

        @staticmethod
        def compute(partial, out):
            out[...] = partial.max(axis=-1, keepdims=True) if is_max else \
                partial.sum(axis=-1, keepdims=True, dtype=np.float32)

        @staticmethod
        def cycles(partial, out, target):
            return _row_cycles(partial, 1, C_MAX if is_max else C_ACC, 0, float32, target, 0)

    return _named(RowCombine, f"RowCombine<{'max' if is_max else 'add'}>")


@cache
def softmax_piece_exp_codelet(dtype: DType, log: bool) -> type[Vertex]:
    """``d = x - m`` (the row max); ``s = sum(exp(d))`` fp32; ``out = exp(d)`` (softmax) or ``d``
    (log-softmax), in ``dtype``."""

    class SoftmaxPieceExp(Vertex):
        x = Input(dtype)
        m = Input(float32)
        out = Output(dtype)
        s = Output(float32)

        @staticmethod
        def compute(x, m, out, s):
            d = _f32(x) - m
            e = np.exp(d)
            s[...] = e.sum(axis=-1, keepdims=True, dtype=np.float32)
            out[...] = d if log else e

        @staticmethod
        def cycles(x, m, out, s, target):
            return _row_cycles(x, 1, C_ADD + C_EXP + C_ACC, 0, dtype, target, 2)

    return _named(SoftmaxPieceExp, f"{'LogSoftmax' if log else 'Softmax'}PieceExp<{dtype.name}>")


@cache
def softmax_piece_scale_codelet(dtype: DType, log: bool) -> type[Vertex]:
    """In place on one output piece: ``out *= 1 / s`` (softmax) or ``out -= log(s)``."""

    class SoftmaxPieceScale(Vertex):
        s = Input(float32)
        out = InOut(dtype)

        @staticmethod
        def compute(s, out):
            if log:
                out[...] = _f32(out) - np.log(s)
            else:
                out[...] = _f32(out) * (np.float32(1) / s)

        @staticmethod
        def cycles(s, out, target):
            return _row_cycles(out, 1, C_ADD, C_LOG if log else C_DIVIDE, dtype, target, 2)

    return _named(SoftmaxPieceScale, f"{'LogSoftmax' if log else 'Softmax'}PieceScale<{dtype.name}>")


@cache
def softmax_grad_piece_sum_codelet(dtype: DType, log: bool) -> type[Vertex]:
    """One piece's part of the gradient's row sum, fp32: ``sum(dy * y)`` (softmax) or ``sum(dy)``."""

    class SoftmaxGradPieceSum(Vertex):
        y = Input(dtype)
        dy = Input(dtype)
        s = Output(float32)

        @staticmethod
        def compute(y, dy, s):
            g = _f32(dy)
            s[...] = (g if log else g * _f32(y)).sum(axis=-1, keepdims=True, dtype=np.float32)

        @staticmethod
        def cycles(y, dy, s, target):
            return _row_cycles(y, 1, C_ACC if log else C_ADD + C_ACC, 0, dtype, target, 2)

    return _named(SoftmaxGradPieceSum, f"{'LogSoftmax' if log else 'Softmax'}GradPieceSum<{dtype.name}>")


@cache
def softmax_grad_piece_codelet(dtype: DType, log: bool) -> type[Vertex]:
    """One piece of the gradient from its row's sum ``s``: ``y * (dy - s)`` or ``dy - exp(y) * s``."""

    class SoftmaxGradPiece(Vertex):
        y = Input(dtype)
        dy = Input(dtype)
        s = Input(float32)
        dx = Output(dtype)

        @staticmethod
        def compute(y, dy, s, dx):
            ys, g = _f32(y), _f32(dy)
            dx[...] = g - np.exp(ys) * s if log else ys * (g - s)

        @staticmethod
        def cycles(y, dy, s, dx, target):
            return _row_cycles(y, 1, C_EXP + 2 * C_ADD if log else 2 * C_ADD, 0, dtype, target, 3)

    return _named(SoftmaxGradPiece, f"{'LogSoftmax' if log else 'Softmax'}GradPiece<{dtype.name}>")
