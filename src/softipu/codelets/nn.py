"""popnn-style codelets: non-linearities, softmax, norms, pooling, losses, and the column reduction
their statistics and parameter gradients share. Compute and cycle estimate sit side by side.

Layouts. A *row* codelet (softmax, layer/group norm, losses) gets whole rows: its vector fields
hold ``k`` rows of ``n`` elements back to back and it reduces along each row, so no row is ever
split across vertices or tiles. The row length comes from a field of length ``k`` (per-row
statistics) or from a ``Param`` when no such field exists. Plane codelets (batch norm) get ``cb``
channel blocks of one sample, pooling codelets a band of output rows of one ``(n, c)`` plane.

Numerics: every statistic, sum and transcendental is computed in float32 (fp16 storage, fp32
arithmetic, as popnn does); outputs are rounded once to the output dtype. Reductions run along a
fixed axis of per-vertex data, so results do not depend on how the engine batches vertices.

NOTE: ``Param`` values must be equal across one ``add_vertices`` call (the ops add one group per
geometry); compute reads the first and checks the rest.

Cycle estimates. PopLibs publishes no formulas for popnn's fused codelets, so every estimate
here is **[U]**, built from the per-vector costs of the popops estimators that *are* published
(ipu-facts.md §5; W workers, fp32 vector width 2):

============  =====================================================  =================
pass          cycles per fp32 vector, one worker                     source
============  =====================================================  =================
max           3                                                      [V] MAX float {3,2}
add/mul/sub   3  (1 + 2 load/store)                                  [V] ADD {1,natural}
accumulate    1  (loads pipelined into an add, no store)             [U]
exp           10 (6 + 4)                                             [V] EXP float {6,2}
log           16 (12 + 4)                                            [V] LOG float
tanh          16 (12 + 4)                                            [V] TANH float
sigmoid       14 (10 + 4)                                            [V] SIGMOID float
divide        10 per row (one reciprocal, then multiplies)           [V] DIVIDE float
rsqrt         8 per row                                              [V] RSQRT float
half I/O      +1 per 4 halves read or written (f16v4 <-> f32v2 cvt)  [U]
============  =====================================================  =================

plus :data:`VERTEX_CYCLES` per vertex and :data:`ROW_CYCLES` per row (loop set-up) [U].
MultiVertex estimates follow popops' UnaryOp1D shape ``W x (fixed + inner(ceil(n / W))) + 20``.
"""

from __future__ import annotations

import enum
import math
from functools import cache

import numpy as np

from softipu.dtypes import DType, float32, int32
from softipu.errors import CodeletError
from softipu.graph.vertex import Input, MultiVertex, Output, Param, Vertex
from softipu.target import Target

__all__ = [
    "NonLinearity", "non_linearity_codelet", "non_linearity_grad_codelet", "softmax_rows_codelet",
    "softmax_grad_rows_codelet", "norm_rows_codelet", "norm_grad_rows_codelet", "ReduceAddColumns",
    "cast_scale_codelet", "loss_finish_codelet", "LossGradCoef", "plane_moments_codelet",
    "BatchNormStatsFinish", "batch_norm_apply_codelet", "batch_norm_grad_sums_codelet",
    "batch_norm_grad_finish_codelet", "batch_norm_grad_apply_codelet", "PoolMode", "pool_codelet",
    "pool_grad_codelet", "class_loss_rows_codelet", "class_loss_grad_rows_codelet", "ValidCount",
    "mse_codelet", "mse_grad_codelet", "erf",
]

VERTEX_CYCLES = 30  # [U] vertex entry, field pointer loads, return
ROW_CYCLES = 20  # [U] per-row loop set-up and the row's scalar work
C_MAX, C_ADD, C_ACC, C_EXP, C_LOG, C_TANH, C_SIGMOID = 3, 3, 1, 10, 16, 16, 14  # see the table above
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
    """The one value of a param across a batch of vertices (see the module NOTE)."""
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


# -- special functions -------------------------------------------------------------------------
_ERFC_COEFFS = (0.17087277, -0.82215223, 1.48851587, -1.13520398, 0.27886807, -0.18628806,
                0.09678418, 0.37409196, 1.00002368, -1.26551223)


def erf(x: np.ndarray) -> np.ndarray:
    """The error function to ~1e-9 absolute, elementwise, in float64 (numpy has none).

    Taylor series for |x| <= 2 (30 terms, float64), Numerical Recipes' Chebyshev ``erfc`` beyond
    (fractional error < 1.2e-7 of erfc, i.e. < 6e-10 of erf there).
    """
    x = np.asarray(x, dtype=np.float64)
    small = np.clip(x, -2.0, 2.0)
    x2 = small * small
    term = small.copy()
    total = small.copy()
    for n in range(1, 30):
        term *= -x2 / n
        total += term / (2 * n + 1)
    series = total * (2.0 / math.sqrt(math.pi))
    z = np.abs(x)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = np.zeros_like(t)
    for c in _ERFC_COEFFS[:-1]:
        poly = (poly + c) * t
    tail = 1.0 - t * np.exp(-z * z + _ERFC_COEFFS[-1] + poly)  # erf(|x|) for |x| > 2
    return np.where(z <= 2.0, series, np.copysign(tail, x))


# -- non-linearities ---------------------------------------------------------------------------
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_C = 0.044715


def _sigmoid(x):
    e = np.exp(-np.abs(x))  # never overflows
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(_SQRT_2_OVER_PI * (x + _GELU_C * x * x * x)))


def _gelu_tanh_grad(x, g):
    t = np.tanh(_SQRT_2_OVER_PI * (x + _GELU_C * x * x * x))
    dt = (1.0 - t * t) * _SQRT_2_OVER_PI * (1.0 + 3.0 * _GELU_C * x * x)
    return g * (0.5 * (1.0 + t) + 0.5 * x * dt)


def _gelu_erf(x):
    x64 = x.astype(np.float64)
    return 0.5 * x64 * (1.0 + erf(x64 / math.sqrt(2.0)))


def _gelu_erf_grad(x, g):
    x64 = x.astype(np.float64)
    cdf = 0.5 * (1.0 + erf(x64 / math.sqrt(2.0)))
    pdf = np.exp(-0.5 * x64 * x64) / math.sqrt(2.0 * math.pi)
    return g * (cdf + x64 * pdf)


def _silu_grad(x, g):
    s = _sigmoid(x)
    return g * (s * (1.0 + x * (1.0 - s)))


class NonLinearity(enum.Enum):
    """popnn's NonLinearityType. ``value``: (forward f(x), gradient, grad reads the forward
    *output* (True) or *input* (False), fp32 cycles per vector [U] = the popops unary cost of
    its transcendental + 3 per extra multiply-add)."""

    RELU = (lambda x: np.maximum(x, 0), lambda y, g: np.where(y > 0, g, 0), True, 2 + 4)
    SIGMOID = (_sigmoid, lambda y, g: g * y * (1 - y), True, C_SIGMOID)
    TANH = (np.tanh, lambda y, g: g * (1 - y * y), True, C_TANH)
    GELU = (_gelu_tanh, _gelu_tanh_grad, False, C_TANH + 4 * C_ADD)  # tanh approximation
    GELU_ERF = (_gelu_erf, _gelu_erf_grad, False, C_EXP + 6 * C_ADD)  # exact: x * Phi(x)
    SILU = (lambda x: x * _sigmoid(x), _silu_grad, False, C_SIGMOID + C_ADD)  # popnn's SWISH

    @property
    def grad_uses_output(self) -> bool:
        return self.value[2]

    @property
    def cycles_per_vector(self) -> int:
        return self.value[3]

    def forward(self, x: np.ndarray) -> np.ndarray:
        return self.value[0](x)

    def backward(self, act: np.ndarray, grad: np.ndarray) -> np.ndarray:
        return self.value[1](act, grad)


@cache
def non_linearity_codelet(kind: NonLinearity, dtype: DType) -> type[Vertex]:
    """``popnn::NonLinearity1D<dtype, kind>`` (out of place): ``out = f(x)``."""

    class NonLinearity1D(MultiVertex):
        x = Input(dtype)
        out = Output(dtype)

        @staticmethod
        def compute(x, out):
            out[...] = kind.forward(_f32(x))

        @staticmethod
        def cycles(x, out, target):
            return _multi(out, kind.cycles_per_vector, 17, target) + 2 * _io(out, dtype, target)

        @staticmethod
        def flops(x, out, target):
            return out

    return _named(NonLinearity1D, f"NonLinearity1D<{kind.name},{dtype.name}>")


@cache
def non_linearity_grad_codelet(kind: NonLinearity, dtype: DType) -> type[Vertex]:
    """``popnn::NonLinearityGrad1D<dtype, kind>``: ``out = grad * f'(.)`` from ``act`` (the
    forward output for RELU/SIGMOID/TANH, the forward input for GELU/GELU_ERF/SILU)."""

    class NonLinearityGrad1D(MultiVertex):
        act = Input(dtype)
        grad = Input(dtype)
        out = Output(dtype)

        @staticmethod
        def compute(act, grad, out):
            out[...] = kind.backward(_f32(act), _f32(grad))

        @staticmethod
        def cycles(act, grad, out, target):
            return _multi(out, kind.cycles_per_vector + C_ADD, 17, target) + 3 * _io(out, dtype, target)

        @staticmethod
        def flops(act, grad, out, target):
            return 2 * out

    return _named(NonLinearityGrad1D, f"NonLinearityGrad1D<{kind.name},{dtype.name}>")


# -- softmax -------------------------------------------------------------------------------------
def _row_cycles(elements, rows, per_vector: int, per_row: int, dtype: DType, target: Target, io: int):
    return (VERTEX_CYCLES + rows * (ROW_CYCLES + per_row)
            + _vectors(elements, target) * per_vector + io * _io(elements, dtype, target))


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


# -- layer norm / group norm rows ----------------------------------------------------------------
def _row_stats(xs: np.ndarray, eps: float):
    """(mean, centred x, 1/sqrt(var + eps)) per row, two passes in fp32."""
    mean = xs.mean(axis=-1, keepdims=True, dtype=np.float32)
    centred = xs - mean
    var = (centred * centred).mean(axis=-1, keepdims=True, dtype=np.float32)
    return mean, centred, np.float32(1) / np.sqrt(var + np.float32(eps))


def _row_affine(w: np.ndarray, k: int, n: int, per_channel: bool) -> np.ndarray:
    """Weights broadcastable against ``(..., k, n)`` rows: shared ``(n,)`` for layer norm,
    ``(k * cg,)`` per row and channel for group norm (each channel ``n // cg`` long)."""
    if not per_channel:
        return _f32(w)[..., None, :]
    cg = w.shape[-1] // k
    per = _split(_f32(w), k)  # (..., k, cg)
    return np.repeat(per, n // cg, axis=-1)


@cache
def norm_rows_codelet(dtype: DType, wdtype: DType, per_channel: bool) -> type[Vertex]:
    """Layer norm (``per_channel=False``: ``weight``/``bias`` of the row length, shared by all
    rows) or group norm (``True``: one weight per row and channel, ``k * cg`` of them) over
    ``k = mean.size`` rows; writes each row's mean and 1/std. Passes: sum, centre-square-sum,
    scale-shift [U]."""
    per_vector = C_ACC + 2 * C_ADD + C_ACC + 2 * C_ADD

    class NormRows(Vertex):
        x = Input(dtype)
        weight = Input(wdtype)
        bias = Input(wdtype)
        out = Output(dtype)
        mean = Output(float32)
        inv_std = Output(float32)
        eps = Param(float32)

        @staticmethod
        def compute(x, weight, bias, out, mean, inv_std, eps):
            k = mean.shape[-1]
            xs = _split(_f32(x), k)
            n = xs.shape[-1]
            mu, centred, rstd = _row_stats(xs, _param(eps))
            res = centred * rstd * _row_affine(weight, k, n, per_channel)
            res += _row_affine(bias, k, n, per_channel)
            _split(out, k)[...] = res
            mean[...] = mu[..., 0]
            inv_std[...] = rstd[..., 0]

        @staticmethod
        def cycles(x, weight, bias, out, mean, inv_std, eps, target):
            return _row_cycles(x, mean, per_vector, C_RSQRT + C_DIVIDE, dtype, target, 2)

        @staticmethod
        def flops(x, weight, bias, out, mean, inv_std, eps, target):
            return 7 * x

    kind = "GroupNorm" if per_channel else "LayerNorm"
    return _named(NormRows, f"{kind}Rows<{dtype.name},{wdtype.name}>")


@cache
def norm_grad_rows_codelet(dtype: DType, wdtype: DType, per_channel: bool) -> type[Vertex]:
    """Input gradient of layer/group norm rows and the rows' parameter-gradient partials.

    ``dx = rstd * (g - mean(g) - xhat * mean(g * xhat))`` with ``g = dy * weight``. ``partial``:
    layer norm ``[sum_rows(dy * xhat) (n), sum_rows(dy) (n)]``; group norm per row and channel
    ``[sum(dy * xhat), sum(dy)]`` (``k * cg * 2``).
    """
    per_vector = 2 * C_ADD + 2 * C_ACC + 3 * C_ADD + 2 * C_ACC

    class NormGradRows(Vertex):
        dy = Input(dtype)
        x = Input(dtype)
        weight = Input(wdtype)
        mean = Input(float32)
        inv_std = Input(float32)
        dx = Output(dtype)
        partial = Output(float32)

        @staticmethod
        def compute(dy, x, weight, mean, inv_std, dx, partial):
            k = mean.shape[-1]
            xs, gs = _split(_f32(x), k), _split(_f32(dy), k)
            n = xs.shape[-1]
            rstd = inv_std[..., None]
            xhat = (xs - mean[..., None]) * rstd
            g = gs * _row_affine(weight, k, n, per_channel)
            res = g - g.mean(axis=-1, keepdims=True, dtype=np.float32)
            res -= xhat * (g * xhat).mean(axis=-1, keepdims=True, dtype=np.float32)
            _split(dx, k)[...] = res * rstd
            if per_channel:
                cg = weight.shape[-1] // k
                p = _split(partial, k * cg).reshape(*partial.shape[:-1], k, cg, 2)
                p[..., 0] = _split(gs * xhat, cg).sum(axis=-1, dtype=np.float32)
                p[..., 1] = _split(gs, cg).sum(axis=-1, dtype=np.float32)
            else:
                p = _split(partial, 2)
                p[..., 0, :] = (gs * xhat).sum(axis=-2, dtype=np.float32)
                p[..., 1, :] = gs.sum(axis=-2, dtype=np.float32)

        @staticmethod
        def cycles(dy, x, weight, mean, inv_std, dx, partial, target):
            return _row_cycles(x, mean, per_vector, 2 * C_DIVIDE, dtype, target, 3)

        @staticmethod
        def flops(dy, x, weight, mean, inv_std, dx, partial, target):
            return 12 * x

    kind = "GroupNorm" if per_channel else "LayerNorm"
    return _named(NormGradRows, f"{kind}GradRows<{dtype.name},{wdtype.name}>")


# -- the column reduction and small finishing codelets ----------------------------------------
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


# -- batch norm: channel blocks of one sample ----------------------------------------------------
# A vertex holds ``cb`` channels x ``L`` spatial elements of one sample; per-channel vectors
# (``shift``, ``mean``, ``weight`` ...) have length ``cb``.
@cache
def plane_moments_codelet(dtype: DType) -> type[Vertex]:
    """``partial = [sum(x - shift), sum((x - shift)^2)]`` per channel, fp32. ``shift`` is 0 in
    the one-pass statistics and the first-pass mean in the stable (two-pass) ones."""

    class PlaneMoments(Vertex):
        x = Input(dtype)
        shift = Input(float32)
        partial = Output(float32)

        @staticmethod
        def compute(x, shift, partial):
            cb = shift.shape[-1]
            d = _split(_f32(x), cb) - shift[..., None]
            p = _split(partial, cb)
            p[..., 0] = d.sum(axis=-1, dtype=np.float32)
            p[..., 1] = (d * d).sum(axis=-1, dtype=np.float32)

        @staticmethod
        def cycles(x, shift, partial, target):
            return _row_cycles(x, shift, C_ACC + C_ADD + C_ACC, 0, dtype, target, 1)

        @staticmethod
        def flops(x, shift, partial, target):
            return 4 * x

    return _named(PlaneMoments, f"PlaneMoments<{dtype.name}>")


class BatchNormStatsFinish(Vertex):
    """Per channel: ``mean = shift + s1 / M``, biased ``var = s2 / M - (s1 / M)^2`` from the
    reduced moments ``sums = [s1, s2]`` of ``M = count`` elements."""

    sums = Input(float32)
    shift = Input(float32)
    mean = Output(float32)
    var = Output(float32)
    count = Param(float32)

    @staticmethod
    def compute(sums, shift, mean, var, count):
        s = _split(sums, sums.shape[-1] // 2)
        m1 = s[..., 0] / np.float32(_param(count))
        mean[...] = shift + m1
        var[...] = np.maximum(s[..., 1] / np.float32(_param(count)) - m1 * m1, 0)

    @staticmethod
    def cycles(sums, shift, mean, var, count, target):
        return VERTEX_CYCLES + mean * (ROW_CYCLES + C_DIVIDE)


@cache
def batch_norm_apply_codelet(dtype: DType, sdtype: DType, wdtype: DType) -> type[Vertex]:
    """``out = (x - mean) / sqrt(var + eps) * weight + bias`` per channel (``cb`` channels)."""

    class BatchNormApply(Vertex):
        x = Input(dtype)
        mean = Input(sdtype)
        var = Input(sdtype)
        weight = Input(wdtype)
        bias = Input(wdtype)
        out = Output(dtype)
        eps = Param(float32)

        @staticmethod
        def compute(x, mean, var, weight, bias, out, eps):
            cb = mean.shape[-1]
            scale = _f32(weight) / np.sqrt(_f32(var) + np.float32(_param(eps)))
            shift = _f32(bias) - _f32(mean) * scale
            _split(out, cb)[...] = _split(_f32(x), cb) * scale[..., None] + shift[..., None]

        @staticmethod
        def cycles(x, mean, var, weight, bias, out, eps, target):
            return _row_cycles(x, mean, C_ADD, C_RSQRT + 2 * C_ADD, dtype, target, 2)

        @staticmethod
        def flops(x, mean, var, weight, bias, out, eps, target):
            return 2 * x

    return _named(BatchNormApply, f"BatchNormApply<{dtype.name},{sdtype.name},{wdtype.name}>")


@cache
def batch_norm_grad_sums_codelet(dtype: DType, sdtype: DType) -> type[Vertex]:
    """``partial = [sum(dy), sum(dy * xhat)]`` per channel, ``xhat = (x - mean) / sqrt(var + eps)``."""

    class BatchNormGradSums(Vertex):
        dy = Input(dtype)
        x = Input(dtype)
        mean = Input(sdtype)
        var = Input(sdtype)
        partial = Output(float32)
        eps = Param(float32)

        @staticmethod
        def compute(dy, x, mean, var, partial, eps):
            cb = mean.shape[-1]
            rstd = np.float32(1) / np.sqrt(_f32(var) + np.float32(_param(eps)))
            xhat = (_split(_f32(x), cb) - _f32(mean)[..., None]) * rstd[..., None]
            g = _split(_f32(dy), cb)
            p = _split(partial, cb)
            p[..., 0] = g.sum(axis=-1, dtype=np.float32)
            p[..., 1] = (g * xhat).sum(axis=-1, dtype=np.float32)

        @staticmethod
        def cycles(dy, x, mean, var, partial, eps, target):
            return _row_cycles(x, mean, C_ACC + 2 * C_ADD + C_ACC, C_RSQRT, dtype, target, 2)

        @staticmethod
        def flops(dy, x, mean, var, partial, eps, target):
            return 5 * x

    return _named(BatchNormGradSums, f"BatchNormGradSums<{dtype.name},{sdtype.name}>")


@cache
def batch_norm_grad_finish_codelet(wdtype: DType) -> type[Vertex]:
    """Per channel from ``sums = [sum(dy), sum(dy * xhat)]``: ``coef = sums / M`` (fp32) for the
    input gradient, ``dweight = sum(dy * xhat)``, ``dbias = sum(dy)``."""

    class BatchNormGradFinish(Vertex):
        sums = Input(float32)
        coef = Output(float32)
        dweight = Output(wdtype)
        dbias = Output(wdtype)
        count = Param(float32)

        @staticmethod
        def compute(sums, coef, dweight, dbias, count):
            s = _split(sums, sums.shape[-1] // 2)
            coef[...] = sums / np.float32(_param(count))
            dbias[...] = s[..., 0]
            dweight[...] = s[..., 1]

        @staticmethod
        def cycles(sums, coef, dweight, dbias, count, target):
            return VERTEX_CYCLES + dweight * (ROW_CYCLES + 2 * C_ADD)

    return _named(BatchNormGradFinish, f"BatchNormGradFinish<{wdtype.name}>")


@cache
def batch_norm_grad_apply_codelet(dtype: DType, sdtype: DType, wdtype: DType) -> type[Vertex]:
    """``dx = weight * rstd * (dy - mean(dy) - xhat * mean(dy * xhat))`` per channel, the means
    coming in ``coef``."""

    class BatchNormGradApply(Vertex):
        dy = Input(dtype)
        x = Input(dtype)
        mean = Input(sdtype)
        var = Input(sdtype)
        weight = Input(wdtype)
        coef = Input(float32)
        dx = Output(dtype)
        eps = Param(float32)

        @staticmethod
        def compute(dy, x, mean, var, weight, coef, dx, eps):
            cb = mean.shape[-1]
            rstd = (np.float32(1) / np.sqrt(_f32(var) + np.float32(_param(eps))))[..., None]
            c = _split(coef, cb)
            xhat = (_split(_f32(x), cb) - _f32(mean)[..., None]) * rstd
            res = _split(_f32(dy), cb) - c[..., 0:1] - xhat * c[..., 1:2]
            _split(dx, cb)[...] = res * (rstd * _f32(weight)[..., None])

        @staticmethod
        def cycles(dy, x, mean, var, weight, coef, dx, eps, target):
            return _row_cycles(x, mean, 4 * C_ADD, C_RSQRT + 2 * C_ADD, dtype, target, 3)

        @staticmethod
        def flops(dy, x, mean, var, weight, coef, dx, eps, target):
            return 6 * x

    return _named(BatchNormGradApply, f"BatchNormGradApply<{dtype.name},{sdtype.name},{wdtype.name}>")


# -- pooling: a band of output rows of one plane ----------------------------------------------
class PoolMode(enum.Enum):
    MAX = "max"
    AVG = "avg"  # divisor: the whole window, padding included (torch's default)
    AVG_EXCLUDE_PAD = "avg_exclude_pad"  # divisor: the window's real elements


_GEOMETRY = ("H", "W", "OW", "kh", "kw", "sh", "sw", "pw", "row0")


def _geometry(params: dict) -> dict:
    return {k: int(_param(params[k])) for k in _GEOMETRY if k in params}


def _padded(x: np.ndarray, rows: int, g: dict, span: int, wp: int, fill: float, dtype) -> np.ndarray:
    """The band's input rows placed in a ``(..., span, wp)`` window-origin frame, ``fill`` around.

    Frame row 0 is input row ``row0`` (may be negative: top padding); column ``pw`` is input
    column 0. Input rows outside the frame and columns past it are unused by every window.
    """
    top = max(0, g["row0"]) - g["row0"]
    frame = np.full((*x.shape[:-1], span, wp), fill, dtype=dtype)
    xs = x.reshape(*x.shape[:-1], rows, g["W"])
    r, c = min(rows, span - top), min(g["W"], wp - g["pw"])
    if r > 0 and c > 0:
        frame[..., top:top + r, g["pw"]:g["pw"] + c] = xs[..., :r, :c]
    return frame


def _windows(frame: np.ndarray, oh: int, g: dict):
    """Yield (offset index, window view ``(..., oh, OW)``) for each kernel offset, row major."""
    for i in range(g["kh"]):
        for j in range(g["kw"]):
            yield i * g["kw"] + j, frame[..., i:i + (oh - 1) * g["sh"] + 1:g["sh"],
                                         j:j + (g["OW"] - 1) * g["sw"] + 1:g["sw"]]


def _divisor(oh: int, g: dict, mode: PoolMode) -> np.ndarray | float:
    if mode is not PoolMode.AVG_EXCLUDE_PAD:
        return float(g["kh"] * g["kw"])
    r0 = g["row0"] + np.arange(oh) * g["sh"]
    rows = np.minimum(r0 + g["kh"], g["H"]) - np.maximum(r0, 0)
    c0 = np.arange(g["OW"]) * g["sw"] - g["pw"]
    cols = np.minimum(c0 + g["kw"], g["W"]) - np.maximum(c0, 0)
    return (rows[:, None] * cols[None, :]).astype(np.float32)


def _pool_cycles(dtype: DType, out_elems, kernel, target: Target, per: int):
    return VERTEX_CYCLES + _vectors(out_elems, target) * kernel * per + 2 * _io(out_elems, dtype, target)


@cache
def pool_codelet(dtype: DType, mode: PoolMode) -> type[Vertex]:
    """Max or average pooling of one plane's band of output rows (``out``: ``oh x OW``) from its
    input rows (``x``: rows ``max(0, row0) ..`` of width ``W``). Cost [U]: per output vector
    ``kh x kw`` max (or accumulate) passes."""
    per = C_MAX if mode is PoolMode.MAX else C_ADD

    class Pool(Vertex):
        x = Input(dtype)
        out = Output(dtype)
        H, W, OW = Param(int32), Param(int32), Param(int32)
        kh, kw, sh, sw, pw, row0 = (Param(int32) for _ in range(6))

        @staticmethod
        def compute(x, out, **params):
            g = _geometry(params)
            oh = out.shape[-1] // g["OW"]
            span, wp = (oh - 1) * g["sh"] + g["kh"], (g["OW"] - 1) * g["sw"] + g["kw"]
            is_max = mode is PoolMode.MAX
            frame = _padded(x, x.shape[-1] // g["W"], g, span, wp, -np.inf if is_max else 0.0,
                            x.dtype if is_max else np.float32)
            acc = None
            for _, win in _windows(frame, oh, g):
                if acc is None:
                    acc = win.copy()
                elif is_max:
                    np.maximum(acc, win, out=acc)
                else:
                    acc += win
            if not is_max:
                acc /= _divisor(oh, g, mode)
            out[...] = acc.reshape(out.shape)

        @staticmethod
        def cycles(x, out, H, W, OW, kh, kw, sh, sw, pw, row0, target):
            return _pool_cycles(dtype, out, kh * kw, target, per)

        @staticmethod
        def flops(x, out, H, W, OW, kh, kw, sh, sw, pw, row0, target):
            return out * kh * kw

    return _named(Pool, f"{mode.name.title().replace('_', '')}Pool<{dtype.name}>")


def _max_index(frame: np.ndarray, valid: np.ndarray, oh: int, g: dict) -> np.ndarray:
    """Per window the kernel offset torch's max pool picks: the first maximum in row-major order,
    any NaN over a number (the last NaN), never a padded position."""
    best = idx = None
    offsets = [win for _, win in _windows(valid, oh, g)]
    for t, win in _windows(frame, oh, g):
        if best is None:
            best = np.full(win.shape, -np.inf, np.float32)
            idx = np.full(win.shape, -1, np.int32)
        take = offsets[t] & ((win > best) | np.isnan(win) | (idx < 0))
        best = np.where(take, win, best)
        idx = np.where(take, t, idx)
    return idx


@cache
def pool_grad_codelet(dtype: DType, mode: PoolMode) -> type[Vertex]:
    """Input gradient of pooling for input rows ``dx_row0 ..`` of one plane, from the gradients
    of every output row whose window touches them (``dy``: ``oh x OW``, window origin at input
    row ``row0``). Max pooling also reads those windows' inputs (``x``, rows ``max(0, row0) ..``)
    and routes each gradient to the window's torch argmax; average pooling spreads it evenly.
    Cost [U]: per ``dy`` vector ``kh x kw`` (compare +) accumulate passes."""
    per = C_MAX + 2 * C_ADD if mode is PoolMode.MAX else 2 * C_ADD
    fields = dict(dy=Input(dtype), dx=Output(dtype))
    if mode is PoolMode.MAX:
        fields = dict(x=Input(dtype), **fields)

    def compute(**args):
        g = _geometry(args)
        dy, dx = args["dy"], args["dx"]
        oh = dy.shape[-1] // g["OW"]
        rows_dx = dx.shape[-1] // g["W"]
        span, wp = (oh - 1) * g["sh"] + g["kh"], (g["OW"] - 1) * g["sw"] + g["kw"]
        dx_off = int(_param(args["dx_row0"])) - g["row0"]
        grads = _f32(dy).reshape(*dy.shape[:-1], oh, g["OW"])
        frame = np.zeros((*dy.shape[:-1], max(span, dx_off + rows_dx), max(wp, g["pw"] + g["W"])),
                         np.float32)
        if mode is PoolMode.MAX:
            x = args["x"]
            xf = _padded(x, x.shape[-1] // g["W"], g, span, wp, -np.inf, x.dtype)
            valid = _padded(np.ones((1, x.shape[-1]), bool), x.shape[-1] // g["W"], g, span, wp,
                            False, bool)[0]
            idx = _max_index(xf, valid, oh, g)
            for t, win in _windows(frame, oh, g):
                win += np.where(idx == t, grads, 0)
        else:
            share = grads / _divisor(oh, g, mode)
            for _, win in _windows(frame, oh, g):
                win += share
        part = frame[..., dx_off:dx_off + rows_dx, g["pw"]:g["pw"] + g["W"]]
        dx[...] = part.reshape(dx.shape)

    def cycles(target, **args):
        return _pool_cycles(dtype, args["dy"], args["kh"] * args["kw"], target, per)

    body = dict(fields, compute=staticmethod(compute), cycles=staticmethod(cycles))
    body |= {k: Param(int32) for k in (*_GEOMETRY, "dx_row0")}
    name = f"{mode.name.title().replace('_', '')}PoolGrad<{dtype.name}>"
    return type(name, (Vertex,), body)


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
        return workers * (17 + _ceil_div(labels, workers)) + 20  # [U] 1 compare-add per label


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
            return _multi(x, 2 * C_ADD, 17, target) + 2 * _io(x, dtype, target)

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
            return _multi(x, 2 * C_ADD, 17, target) + 3 * _io(x, dtype, target)

        @staticmethod
        def flops(x, t, g, dx, scale, target):
            return 3 * x

    return _named(MseGrad, f"MseGrad<{dtype.name},{'elements' if per_element else 'coef'}>")

