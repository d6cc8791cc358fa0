"""Softmax and log-softmax rows and their gradients."""

from __future__ import annotations

from functools import cache

import numpy as np

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
from softipu.dtypes import DType, int32
from softipu.graph.vertex import Input, Output, Param, Vertex

__all__ = ["softmax_rows_codelet", "softmax_grad_rows_codelet"]


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
            np.subtract(xs, xs.max(axis=-1, keepdims=True), out=o)
            if log:
                o -= np.log(np.exp(o).sum(axis=-1, keepdims=True))
            else:
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
