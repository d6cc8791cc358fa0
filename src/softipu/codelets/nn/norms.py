"""Layer norm and group norm rows, and batch norm over channel blocks, with their gradients."""

from __future__ import annotations

from functools import cache

import numpy as np

from softipu.codelets.nn._common import (
    C_ACC,
    C_ADD,
    C_DIVIDE,
    C_RSQRT,
    ROW_CYCLES,
    VERTEX_CYCLES,
    _ceil_div,
    _f32,
    _named,
    _param,
    _row_cycles,
    _split,
)
from softipu.dtypes import DType, float32
from softipu.graph.vertex import Input, Output, Param, Vertex

__all__ = ["norm_rows_codelet", "norm_grad_rows_codelet", "plane_moments_codelet", "BatchNormStatsFinish",
           "RowMomentsFinish", "layer_norm_apply_codelet",
           "batch_norm_apply_codelet", "batch_norm_grad_sums_codelet", "batch_norm_grad_finish_codelet",
           "batch_norm_grad_apply_codelet"]


# -- layer norm / group norm rows ----------------------------------------------------------------
def _row_mean(a: np.ndarray) -> np.ndarray:
    """``a.mean(axis=-1, keepdims=True, dtype=np.float32)`` bit for bit without numpy's Python
    wrapper (half this op's time on small rows): the same float32 sum, divided by the row length
    (exact in float32; a division rounds correctly whether numpy divides in float32 or float64)."""
    s = np.add.reduce(a, axis=-1, dtype=np.float32, keepdims=True)
    s /= np.float32(a.shape[-1])
    return s


def _row_stats(xs: np.ndarray, eps: float):
    """(mean, centred x, 1/sqrt(var + eps)) per row, two passes in fp32."""
    mean = _row_mean(xs)
    centred = xs - mean
    var = _row_mean(np.multiply(centred, centred))
    var += np.float32(eps)
    return mean, centred, np.float32(1) / np.sqrt(var, out=var)


def _row_affine(w: np.ndarray, k: int, n: int, per_channel: bool) -> np.ndarray:
    """Weights broadcastable against ``(..., k, n)`` rows: shared ``(n,)`` for layer norm,
    ``(k * cg,)`` per row and channel for group norm (each channel ``n // cg`` long)."""
    if not per_channel:
        return _f32(w)[..., None, :]
    cg = w.shape[-1] // k
    per = _split(_f32(w), k)  # (..., k, cg)
    return np.repeat(per, n // cg, axis=-1)


@cache
def norm_rows_codelet(dtype: DType, wdtype: DType, per_channel: bool, stats: DType = float32) -> type[Vertex]:
    """Layer norm (``per_channel=False``: ``weight``/``bias`` of the row length, shared by all
    rows) or group norm (``True``: one weight per row and channel, ``k * cg`` of them) over
    ``k = mean.size`` rows; writes each row's mean and 1/std, computed in float32 and stored as
    ``stats`` (float16: rounded to nearest, as poplin's ``InverseStdDeviation<MeanType,
    PowerType, OutType>`` writes its OutType). Passes: sum, centre-square-sum, scale-shift [U]."""
    per_vector = C_ACC + 2 * C_ADD + C_ACC + 2 * C_ADD

    class NormRows(Vertex):
        x = Input(dtype)
        weight = Input(wdtype)
        bias = Input(wdtype)
        out = Output(dtype)
        mean = Output(stats)
        inv_std = Output(stats)
        eps = Param(float32)

        @staticmethod
        def compute(x, weight, bias, out, mean, inv_std, eps):
            k = mean.shape[-1]
            xs = _split(_f32(x), k)
            n = xs.shape[-1]
            mu, centred, rstd = _row_stats(xs, _param(eps))
            rows = _split(out, k)  # float32 rows are written in place: the same ops, fewer passes
            res = np.multiply(centred, rstd, out=rows if out.dtype == np.float32 else centred)
            res *= _row_affine(weight, k, n, per_channel)
            res += _row_affine(bias, k, n, per_channel)
            if res is not rows:
                rows[...] = res
            mean[...] = mu[..., 0]
            inv_std[...] = rstd[..., 0]

        @staticmethod
        def cycles(x, weight, bias, out, mean, inv_std, eps, target):
            return _row_cycles(x, mean, per_vector, C_RSQRT + C_DIVIDE, dtype, target, 2)

        @staticmethod
        def flops(x, weight, bias, out, mean, inv_std, eps, target):
            return 7 * x

    kind = "GroupNorm" if per_channel else "LayerNorm"
    types = f"{dtype.name},{wdtype.name}" + ("" if stats is float32 else f",{stats.name}")
    return _named(NormRows, f"{kind}Rows<{types}>")


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


# -- batch norm: channel blocks of one sample ----------------------------------------------------
# A vertex holds ``cb`` channels x ``L`` spatial elements of one sample; per-channel vectors
# (``shift``, ``mean``, ``weight`` ...) have length ``cb``. With ``pixels`` (an activation stored
# channels innermost, ops/nn/norm_pixels.py) a vertex's field is ``L`` pixels x ``cb`` channels
# instead, pixel by pixel: the same arithmetic per element, read through a transposed view.
def _by_channel(a: np.ndarray, cb: int, pixels: bool) -> np.ndarray:
    """A vertex field ``(..., cb * L)`` as ``(..., cb, L)``: channel-major, or a view of the
    pixel-major ``(..., L, cb)`` (writes through it land in place)."""
    return a.reshape(*a.shape[:-1], -1, cb).swapaxes(-1, -2) if pixels else _split(a, cb)


def _layout(name: str, pixels: bool) -> str:
    return name.replace("Plane", "Pixel") if pixels else name


def _single_moments(d: np.ndarray, p: np.ndarray) -> None:
    """``p[..., 0] = d.sum(axis=-1)``, ``p[..., 1] = (d * d).sum(axis=-1)`` of a ``(..., cb, 1)``
    ``d`` handed as ``(..., cb)``, without numpy's reduction loop per element (256 x 64 channels
    of one element: ~15 us, ~3x the arithmetic). numpy sums one element as ``0 + d`` (-0 gives
    +0, a NaN keeps its payload): the same bits as ``d + 0``; ``d * d`` is never -0, so adding 0
    leaves it as it is."""
    np.add(d, np.float32(0), out=p[..., 0])
    np.multiply(d, d, out=p[..., 1])


@cache
def plane_moments_codelet(dtype: DType, pixels: bool = False) -> type[Vertex]:
    """``partial = [sum(x - shift), sum((x - shift)^2)]`` per channel, fp32. ``shift`` is 0 in
    the one-pass statistics and the first-pass mean in the stable (two-pass) ones."""

    class PlaneMoments(Vertex):
        x = Input(dtype)
        shift = Input(float32)
        partial = Output(float32)

        @staticmethod
        def compute(x, shift, partial):
            cb = shift.shape[-1]
            p = _split(partial, cb)
            if x.shape[-1] == cb:  # one element a channel (a layer norm row cut over tiles)
                _single_moments(np.subtract(_f32(x), shift), p)
                return
            d = _by_channel(_f32(x), cb, pixels) - shift[..., None]
            p[..., 0] = d.sum(axis=-1, dtype=np.float32)
            p[..., 1] = (d * d).sum(axis=-1, dtype=np.float32)

        @staticmethod
        def cycles(x, shift, partial, target):
            return _row_cycles(x, shift, C_ACC + C_ADD + C_ACC, 0, dtype, target, 1)

        @staticmethod
        def flops(x, shift, partial, target):
            return 4 * x

    return _named(PlaneMoments, f"{_layout('PlaneMoments', pixels)}<{dtype.name}>")


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


# -- layer norm over the tile pieces of its rows (rows cut across tiles) -------------------------
# A vertex holds one piece of one row (the run of it on one tile): its moments are PlaneMoments
# with one channel; the row's statistics finish on one tile from its pieces' moments; the apply
# vertex normalises the piece where it lives with the weight and bias of the piece's columns.
class RowMomentsFinish(Vertex):
    """One row's statistics from the moments of its ``k`` pieces: ``partial`` holds ``k`` pairs
    ``[s1, s2]`` of ``x - shift``; ``mean = shift + S1 / M`` and ``inv_std = 1 / sqrt(S2 / M -
    (S1 / M)^2 + eps)`` over the row's ``M = count`` elements (popops reduce's last stage and
    poplin's ``InverseStdDeviation`` vertex, lib/poplin/Norms.cpp ``computeInvStdDev``, in one)."""

    partial = Input(float32)
    shift = Input(float32)
    mean = Output(float32)
    inv_std = Output(float32)
    count = Param(float32)
    eps = Param(float32)

    @staticmethod
    def compute(partial, shift, mean, inv_std, count, eps):
        s = _split(partial, partial.shape[-1] // 2).sum(axis=-2, dtype=np.float32)
        m = np.float32(_param(count))
        m1 = s[..., 0:1] / m
        mean[...] = shift + m1
        var = np.maximum(s[..., 1:2] / m - m1 * m1, np.float32(0))
        var += np.float32(_param(eps))
        inv_std[...] = np.float32(1) / np.sqrt(var)

    @staticmethod
    def cycles(partial, shift, mean, inv_std, count, eps, target):
        return VERTEX_CYCLES + ROW_CYCLES + _ceil_div(partial, 2) * C_ACC + C_DIVIDE + C_RSQRT

    @staticmethod
    def flops(partial, shift, mean, inv_std, count, eps, target):
        return partial + 8


@cache
def layer_norm_apply_codelet(dtype: DType, wdtype: DType) -> type[Vertex]:
    """``out = (x - mean) * inv_std * weight + bias`` over one piece of a row: ``mean`` and
    ``inv_std`` the row's (one each), ``weight``/``bias`` the piece's columns."""

    class LayerNormApply(Vertex):
        x = Input(dtype)
        mean = Input(float32)
        inv_std = Input(float32)
        weight = Input(wdtype)
        bias = Input(wdtype)
        out = Output(dtype)

        @staticmethod
        def compute(x, mean, inv_std, weight, bias, out):
            res = _f32(x) - mean
            res *= inv_std
            res *= _f32(weight)
            res += _f32(bias)
            out[...] = res

        @staticmethod
        def cycles(x, mean, inv_std, weight, bias, out, target):
            # popnn's group/layer norm whitens then scales: poplin::normWhiten (addToChannel of
            # -mean, channelMul by iStdDev) and poplin::normalise (channelMul by gamma,
            # addToChannel of beta), lib/poplin/Norms.cpp [V]: four popops passes of C_ADD per
            # vector of ``dtype``, each over the activations where they live.
            vectors = _ceil_div(x, target.vector_width(dtype.itemsize))
            return VERTEX_CYCLES + ROW_CYCLES + vectors * 4 * C_ADD

        @staticmethod
        def flops(x, mean, inv_std, weight, bias, out, target):
            return 4 * x

    return _named(LayerNormApply, f"LayerNormApply<{dtype.name},{wdtype.name}>")


@cache
def batch_norm_apply_codelet(dtype: DType, sdtype: DType, wdtype: DType,
                             pixels: bool = False) -> type[Vertex]:
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
            # the same ops in the same order, each into a buffer of its own, not a new one
            scale = np.add(_f32(var), np.float32(_param(eps)), dtype=np.float32)
            np.sqrt(scale, out=scale)
            np.divide(_f32(weight), scale, out=scale)
            shift = np.multiply(_f32(mean), scale)
            np.subtract(_f32(bias), shift, out=shift)
            rows = _by_channel(out, cb, pixels)
            if out.dtype == np.float32:  # (numpy buffers an out that overlaps x)
                np.multiply(_by_channel(_f32(x), cb, pixels), scale[..., None], out=rows)
                rows += shift[..., None]
            else:
                res = _by_channel(_f32(x), cb, pixels) * scale[..., None]
                res += shift[..., None]
                rows[...] = res

        @staticmethod
        def cycles(x, mean, var, weight, bias, out, eps, target):
            # popnn's inference batch norm is poplin::normalise: a popops ``mul`` by the combined
            # multiplicand then an ``addInPlace`` of the addend, both broadcast per channel and run
            # in the activations' type (poplibs lib/popnn/BatchNorm.cpp batchNormalise,
            # lib/poplin/Norms.cpp normalise) [V]: two passes of C_ADD per vector of ``dtype``
            # (4 halves or 2 floats a 64-bit vector), so half costs half of float. (Priced as one
            # fp32 pass plus widening and narrowing, half cost 30% more than float.)
            vectors = _ceil_div(x, target.vector_width(dtype.itemsize))
            return VERTEX_CYCLES + mean * (ROW_CYCLES + C_RSQRT + 2 * C_ADD) + vectors * 2 * C_ADD

        @staticmethod
        def flops(x, mean, var, weight, bias, out, eps, target):
            return 2 * x

    kind = "BatchNormPixelApply" if pixels else "BatchNormApply"
    return _named(BatchNormApply, f"{kind}<{dtype.name},{sdtype.name},{wdtype.name}>")


@cache
def batch_norm_grad_sums_codelet(dtype: DType, sdtype: DType, pixels: bool = False) -> type[Vertex]:
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
            xhat = (_by_channel(_f32(x), cb, pixels) - _f32(mean)[..., None]) * rstd[..., None]
            g = _by_channel(_f32(dy), cb, pixels)
            p = _split(partial, cb)
            p[..., 0] = g.sum(axis=-1, dtype=np.float32)
            p[..., 1] = (g * xhat).sum(axis=-1, dtype=np.float32)

        @staticmethod
        def cycles(dy, x, mean, var, partial, eps, target):
            return _row_cycles(x, mean, C_ACC + 2 * C_ADD + C_ACC, C_RSQRT, dtype, target, 2)

        @staticmethod
        def flops(dy, x, mean, var, partial, eps, target):
            return 5 * x

    kind = "BatchNormPixelGradSums" if pixels else "BatchNormGradSums"
    return _named(BatchNormGradSums, f"{kind}<{dtype.name},{sdtype.name}>")


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
def batch_norm_grad_apply_codelet(dtype: DType, sdtype: DType, wdtype: DType,
                                  pixels: bool = False) -> type[Vertex]:
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
            xhat = (_by_channel(_f32(x), cb, pixels) - _f32(mean)[..., None]) * rstd
            res = _by_channel(_f32(dy), cb, pixels) - c[..., 0:1] - xhat * c[..., 1:2]
            _by_channel(dx, cb, pixels)[...] = res * (rstd * _f32(weight)[..., None])

        @staticmethod
        def cycles(dy, x, mean, var, weight, coef, dx, eps, target):
            return _row_cycles(x, mean, 4 * C_ADD, C_RSQRT + 2 * C_ADD, dtype, target, 3)

        @staticmethod
        def flops(dy, x, mean, var, weight, coef, dx, eps, target):
            return 6 * x

    kind = "BatchNormPixelGradApply" if pixels else "BatchNormGradApply"
    return _named(BatchNormGradApply, f"{kind}<{dtype.name},{sdtype.name},{wdtype.name}>")
