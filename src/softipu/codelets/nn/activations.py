"""Non-linearities (popnn NonLinearity1D) and their gradients, with the error function GELU
needs."""

from __future__ import annotations

import enum
import math
from functools import cache

import numpy as np

from softipu.codelets.nn._common import (
    C_ADD,
    C_EXP,
    C_RELU,
    C_SIGMOID,
    C_TANH,
    NN,
    _f32,
    _io,
    _multi,
    _named,
)
from softipu.dtypes import DType
from softipu.graph.vertex import Input, MultiVertex, Output, Vertex

__all__ = ["erf", "NonLinearity", "non_linearity_codelet", "non_linearity_grad_codelet"]


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

    RELU = (lambda x: np.maximum(x, 0), lambda y, g: np.where(y > 0, g, 0), True, C_RELU)
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
            return _multi(out, kind.cycles_per_vector, NN.multi_fixed, target) + 2 * _io(out, dtype, target)

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
            per_vector = kind.cycles_per_vector + C_ADD
            return _multi(out, per_vector, NN.multi_fixed, target) + 3 * _io(out, dtype, target)

        @staticmethod
        def flops(act, grad, out, target):
            return 2 * out

    return _named(NonLinearityGrad1D, f"NonLinearityGrad1D<{kind.name},{dtype.name}>")
