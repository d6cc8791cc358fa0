"""Elementwise numerics: the op table's cost and kind types and the numpy implementations
the op vocabularies bind (NaN rules, integer division, erf/GELU polynomials).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from softipu.dtypes import DType, bool_


@dataclass(frozen=True, slots=True)
class _OpCost:
    """Cycles per inner loop and elements per loop (0 = the dtype's natural vector width)."""

    float_cycles: int
    float_width: int
    half_cycles: int
    half_width: int
    int_cycles: int = 7  # poplibs: int ADD 7 cycles per element [V] (ipu-facts §5)


class Kinds(enum.Flag):
    """Which element kinds an op accepts."""

    FLOAT = enum.auto()
    INT = enum.auto()
    BOOL = enum.auto()
    NUMERIC = FLOAT | INT
    INTEGRAL = INT | BOOL
    ANY = FLOAT | INT | BOOL

    @staticmethod
    def of(dtype: DType) -> Kinds:
        return Kinds.FLOAT if dtype.is_float else Kinds.BOOL if dtype is bool_ else Kinds.INT


class Result(enum.Enum):
    SAME = "same"  # the (promoted) operand dtype
    BOOL = "bool"  # bool_ (comparisons, predicates)


@dataclass(frozen=True, slots=True)
class _OpSpec:
    """Everything about one op: numpy implementation, cost, accepted kinds, result dtype."""

    fn: Callable[..., Any]  # fn(*operands, out=None) -> array; writes ``out`` last when given
    cost: _OpCost
    domain: Kinds
    result: Result = Result.SAME
    promote: bool = True  # operands cast to a common dtype first (not for logical ops)


# -- numerics --------------------------------------------------------------------------------------
def _store(result: Any, out: np.ndarray | None, dtype: np.dtype | None = None) -> np.ndarray:
    """``result`` written into ``out`` (last, so ``out`` may alias an operand), or returned."""
    if out is None:
        return np.asarray(result) if dtype is None else np.asarray(result).astype(dtype, copy=False)
    out[...] = result
    return out


def _f32(x: np.ndarray) -> np.ndarray:
    """float16 composites compute in float32 and round once, as the IPU's f16 functions do."""
    return x.astype(np.float32) if x.dtype == np.float16 else x


def _ufunc(f: np.ufunc) -> Callable[..., Any]:
    def apply(*xs, out=None):
        return f(*xs) if out is None else f(*xs, out=out)
    apply.__name__ = f.__name__
    return apply


def _sigmoid(x, out=None):
    with np.errstate(over="ignore"):  # exp(-x) = inf for x < -88 gives the exact 0, not an IPU trap
        t = np.exp(-_f32(x))
    t += 1
    return _store(np.reciprocal(t, out=t), out, x.dtype)


def _rsqrt(x, out=None):
    return _store(np.reciprocal(np.sqrt(_f32(x))), out, x.dtype)


def _relu(x, out=None):
    return np.maximum(x, x.dtype.type(0), out=out) if out is not None else np.maximum(x, x.dtype.type(0))


# erf for float32 (Eigen's generic_fast_erf_float rational approximation, ~1 ulp): x clamped to
# [-4, 4], erf = x p(x^2) / q(x^2).
_ERF_P = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06, -5.69250639462346e-05,
          -7.34990630326855e-04, -2.95459980854025e-03, -1.60960333262415e-02)
_ERF_Q = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03, -7.37332916720468e-03,
          -1.42647390514189e-02)


def _horner(coeffs: tuple[float, ...], x: np.ndarray) -> np.ndarray:
    """``np.polyval(coeffs, x)`` in x's dtype with the same roundings, in place (no temporaries):
    starts at ``c0 * x + c1`` (bitwise ``full(c0) * x + c1``, one pass fewer)."""
    dtype = x.dtype.type
    y = np.multiply(x, dtype(coeffs[0]))
    y += dtype(coeffs[1])
    for c in coeffs[2:]:
        y *= x
        y += dtype(c)
    return y


def _erf_values(x: np.ndarray, scratch: bool = False) -> np.ndarray:
    """erf of float32 ``x`` (float16 widened); ``scratch``: ``x`` is a float32 temporary this may
    overwrite (clamped in place)."""
    x = np.clip(x, -4.0, 4.0, out=x) if scratch else np.clip(_f32(x), -4.0, 4.0)
    x2 = np.multiply(x, x)
    p = _horner(_ERF_P, x2)
    p *= x
    p /= _horner(_ERF_Q, x2)
    return p


def _erf(x, out=None):
    return _store(_erf_values(x), out, x.dtype)


def _gelu(x, out=None):  # popnn GELU: the tanh approximation
    y = _f32(x)
    inner = np.tanh(np.sqrt(2 / np.pi).astype(y.dtype) * (y + y.dtype.type(0.044715) * y * y * y))
    return _store(y.dtype.type(0.5) * y * (1 + inner), out, x.dtype)


def _gelu_erf(x, out=None):  # popnn GELU_ERF: the exact form, (0.5 y) (1 + erf(y sqrt(1/2)))
    y = _f32(x)
    f32 = y.dtype.type
    e = _erf_values(np.multiply(y, f32(np.sqrt(0.5))), scratch=True)
    e += f32(1)
    half = np.multiply(y, f32(0.5))  # before ``out`` is written: it may alias x
    if out is not None and out.dtype == y.dtype:  # straight into out: the same ops, one pass fewer
        return np.multiply(half, e, out=out)
    return _store(np.multiply(half, e, out=e), out, x.dtype)


def _float_only(f: np.ufunc) -> Callable[..., Any]:
    """floor/ceil/round/trunc: integers are already integral, so they pass through."""
    def apply(x, out=None):
        if x.dtype.kind != "f":
            return _store(x, out, x.dtype)
        return f(x) if out is None else f(x, out=out)
    apply.__name__ = f.__name__
    return apply


def _unsigned(x: np.ndarray) -> np.ndarray:
    return x.view(np.dtype(f"u{x.dtype.itemsize}"))


def _popcount(x, out=None):
    return _store(np.bitwise_count(_unsigned(x)), out, x.dtype)


def _count_leading_zeros(x, out=None):
    u = _unsigned(x).astype(np.uint64)
    length = np.zeros(u.shape, np.int64)  # bit length by binary search, 6 vector steps
    for s in (32, 16, 8, 4, 2, 1):
        big = (u >> np.uint64(s)) != 0
        length += np.where(big, s, 0)
        u = np.where(big, u >> np.uint64(s), u)
    length += u != 0
    return _store(8 * x.dtype.itemsize - length, out, x.dtype)


def _divide(a, b, out=None):
    if np.result_type(a, b).kind == "f":
        return np.divide(a, b) if out is None else np.divide(a, b, out=out)
    r = np.fmod(a, b)  # C semantics: truncate toward zero; x / 0 = 0
    return _store((a - r) // b, out)


def _power(a, b, out=None):
    a, b = np.asarray(a), np.asarray(b)
    if np.result_type(a, b).kind == "f":
        return np.power(a, b) if out is None else np.power(a, b, out=out)
    signed = b.dtype.kind == "i"
    r = np.power(a, np.maximum(b, 0) if signed else b)
    if signed:  # a negative exponent gives C's truncated 1 / a^-b: 1, +-1 for a = -1, else 0
        odd = (b & 1) != 0
        alt = np.where(a == 1, 1, np.where(a == -1, np.where(odd, -1, 1), 0)).astype(r.dtype)
        r = np.where(b < 0, alt, r)
    return _store(r, out)


def _shift_right_logical(a, b, out=None):
    u = _unsigned(np.asarray(a))
    r = np.right_shift(u, np.asarray(b).astype(u.dtype))  # amounts < 0 or >= bits give 0
    return _store(r.view(np.asarray(a).dtype), out)


def _select(c, a, b, out=None):
    return _store(np.where(c, a, b), out, np.result_type(a, b))


def _clamp(x, lo, hi, out=None):  # torch.clamp: NaN stays NaN; lo > hi gives hi
    m = np.maximum(x, lo)
    return np.minimum(m, hi) if out is None else np.minimum(m, hi, out=out)
