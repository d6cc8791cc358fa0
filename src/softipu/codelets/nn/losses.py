"""NLL, cross-entropy and MSE losses, their gradients and finishing codelets."""

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
    NN,
    VERTEX_CYCLES,
    _ceil_div,
    _f32,
    _io,
    _multi,
    _named,
    _param,
    _row_cycles,
    _split,
)
from softipu.dtypes import DType, float32, int32
from softipu.graph.vertex import Input, MultiVertex, Output, Param, Vertex

__all__ = ["loss_finish_codelet", "LossGradCoef", "class_loss_rows_codelet",
           "class_loss_grad_rows_codelet", "ValidCount", "mse_codelet", "mse_grad_codelet"]


# -- finishing a reduced loss ---------------------------------------------------------------------
@cache
def loss_finish_codelet(dtype: DType, mean: bool) -> type[Vertex]:
    """The loss from its reduced sums ``[sum(loss), count]``: ``sum / count`` or ``sum``."""

    class LossFinish(Vertex):
        sums = Input(float32)
        out = Output(dtype)

        @staticmethod
        def compute(sums, out):
            out[...] = sums[..., 0:1] / sums[..., 1:2] if mean else sums[..., 0:1]

        @staticmethod
        def cycles(sums, out, target):
            return VERTEX_CYCLES + C_DIVIDE

    return _named(LossFinish, f"LossFinish<{dtype.name},{'mean' if mean else 'sum'}>")


class LossGradCoef(Vertex):
    """``coef = grad / count``: the factor a mean-reduced loss's gradient carries."""

    grad = Input(float32)
    count = Input(float32)
    coef = Output(float32)

    @staticmethod
    def compute(grad, count, coef):
        coef[...] = grad / count

    @staticmethod
    def cycles(grad, count, coef, target):
        return VERTEX_CYCLES + C_DIVIDE


# -- losses ---------------------------------------------------------------------------------------
def _class_rows(x: np.ndarray, labels: np.ndarray, log_input: bool):
    """(per-row log-probabilities, labels clipped to the classes) of ``k = labels.size`` rows."""
    k = labels.shape[-1]
    xs = _split(_f32(x), k)
    if log_input:
        logp = xs
    else:
        shifted = xs - xs.max(axis=-1, keepdims=True)
        logp = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return logp, np.clip(labels, 0, xs.shape[-1] - 1)


@cache
def class_loss_rows_codelet(dtype: DType, log_input: bool, reduce: bool) -> type[Vertex]:
    """NLL (``log_input``: rows are log-probabilities) or cross-entropy (rows are logits) of
    ``k = labels.size`` rows against int32 class indices. ``reduce``: write the vertex's
    ``[sum(loss), count]`` (fp32) for a later reduction; else each row's loss. Rows whose label
    equals ``ignore_index`` count as 0 (and are not counted); other labels are clipped to the
    class range (a device cannot raise)."""
    per_vector = C_ACC if log_input else (C_MAX + C_ADD + C_EXP + C_ACC)

    class ClassLossRows(Vertex):
        x = Input(dtype)
        labels = Input(int32)
        out = Output(float32) if reduce else Output(dtype)
        ignore_index = Param(int32)

        @staticmethod
        def compute(x, labels, out, ignore_index):
            logp, t = _class_rows(x, labels, log_input)
            valid = labels != _param(ignore_index)
            picked = np.take_along_axis(logp, t[..., None].astype(np.intp), axis=-1)[..., 0]
            loss = np.where(valid, -picked, np.float32(0))
            if reduce:
                out[..., 0] = loss.sum(axis=-1, dtype=np.float32)
                out[..., 1] = valid.sum(axis=-1, dtype=np.float32)
            else:
                out[...] = loss

        @staticmethod
        def cycles(x, labels, out, ignore_index, target):
            return _row_cycles(x, labels, per_vector, 0 if log_input else C_LOG, dtype, target, 1)

        @staticmethod
        def flops(x, labels, out, ignore_index, target):
            return x if log_input else 4 * x

    kind = "Nll" if log_input else "CrossEntropy"
    return _named(ClassLossRows, f"{kind}Rows<{dtype.name},{'partial' if reduce else 'none'}>")


@cache
def class_loss_grad_rows_codelet(dtype: DType, log_input: bool, per_row: bool) -> type[Vertex]:
    """Gradient of NLL (``-onehot * g``) or cross-entropy (``(softmax - onehot) * g``) w.r.t.
    the rows; ``g`` is each row's upstream gradient (``per_row``) or one fp32 ``coef`` for all
    rows. Ignored rows get 0."""
    per_vector = C_ADD if log_input else (C_MAX + C_ADD + C_EXP + C_ACC + 2 * C_ADD)

    class ClassLossGradRows(Vertex):
        x = Input(dtype)
        labels = Input(int32)
        g = Input(dtype if per_row else float32)
        dx = Output(dtype)
        ignore_index = Param(int32)

        @staticmethod
        def compute(x, labels, g, dx, ignore_index):
            k = labels.shape[-1]
            logp, t = _class_rows(x, labels, log_input)
            grad = np.zeros(logp.shape, np.float32) if log_input else np.exp(logp)
            grad -= np.arange(logp.shape[-1]) == t[..., None]
            valid = (labels != _param(ignore_index))[..., None]
            scale = _f32(g)[..., None] if per_row else _f32(g)[..., :1, None]
            _split(dx, k)[...] = np.where(valid, grad * scale, np.float32(0))

        @staticmethod
        def cycles(x, labels, g, dx, ignore_index, target):
            return _row_cycles(x, labels, per_vector, 0 if log_input else C_LOG, dtype, target, 2)

        @staticmethod
        def flops(x, labels, g, dx, ignore_index, target):
            return 2 * x if log_input else 6 * x

    kind = "Nll" if log_input else "CrossEntropy"
    return _named(ClassLossGradRows, f"{kind}GradRows<{dtype.name},{'rows' if per_row else 'coef'}>")


class ValidCount(MultiVertex):
    """``count = [number of labels != ignore_index]`` over a region of class indices, fp32."""

    labels = Input(int32)
    count = Output(float32)
    ignore_index = Param(int32)

    @staticmethod
    def compute(labels, count, ignore_index):
        count[...] = (labels != _param(ignore_index)).sum(axis=-1, keepdims=True, dtype=np.float32)

    @staticmethod
    def cycles(labels, count, ignore_index, target):
        workers = target.workers_per_tile
        return workers * (NN.multi_fixed + NN.per_label * _ceil_div(labels, workers)) + NN.multi_supervisor


@cache
def mse_codelet(dtype: DType, reduce: bool) -> type[Vertex]:
    """``(x - t)^2`` per element, or (``reduce``) its fp32 sum over the region."""

    class Mse(MultiVertex):
        x = Input(dtype)
        t = Input(dtype)
        out = Output(float32) if reduce else Output(dtype)

        @staticmethod
        def compute(x, t, out):
            d = _f32(x) - _f32(t)
            if reduce:
                out[...] = (d * d).sum(axis=-1, keepdims=True, dtype=np.float32)
            else:
                out[...] = d * d

        @staticmethod
        def cycles(x, t, out, target):
            return _multi(x, 2 * C_ADD, NN.multi_fixed, target) + 2 * _io(x, dtype, target)

        @staticmethod
        def flops(x, t, out, target):
            return 3 * x

    return _named(Mse, f"Mse<{dtype.name},{'partial' if reduce else 'none'}>")


@cache
def mse_grad_codelet(dtype: DType, per_element: bool) -> type[Vertex]:
    """``dx = 2 (x - t) * g * scale`` with ``g`` per element or one fp32 ``coef``."""

    class MseGrad(MultiVertex):
        x = Input(dtype)
        t = Input(dtype)
        g = Input(dtype if per_element else float32)
        dx = Output(dtype)
        scale = Param(float32)

        @staticmethod
        def compute(x, t, g, dx, scale):
            coef = _f32(g) if per_element else _f32(g)[..., :1]
            dx[...] = (_f32(x) - _f32(t)) * (coef * np.float32(2 * _param(scale)))

        @staticmethod
        def cycles(x, t, g, dx, scale, target):
            return _multi(x, 2 * C_ADD, NN.multi_fixed, target) + 3 * _io(x, dtype, target)

        @staticmethod
        def flops(x, t, g, dx, scale, target):
            return 3 * x

    return _named(MseGrad, f"MseGrad<{dtype.name},{'elements' if per_element else 'coef'}>")
