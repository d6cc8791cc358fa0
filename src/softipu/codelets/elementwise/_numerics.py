"""Elementwise numerics: the op table's cost and kind types and the numpy implementations
the op vocabularies bind (NaN rules, integer division, erf/GELU polynomials).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from softipu.codelets.halves import HALVES_MIN, to_half, widened
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
    if f in _ROUNDED_ONCE:
        def apply(*xs, out=None):
            if out is None:
                done = _halves_in_float32(f, xs, None)
                return f(*xs) if done is None else done
            if out.dtype == _HALF:  # (another result dtype never takes the float16 path)
                done = _halves_in_float32(f, xs, out)
                if done is not None:
                    return done
            return f(*xs, out=out)
    else:
        def apply(*xs, out=None):
            return f(*xs) if out is None else f(*xs, out=out)
    apply.__name__ = f.__name__
    return apply


_HALF = np.dtype(np.float16)
# Correctly rounded float ops: a float16 result is the float32 result of the
# widened operands rounded once to float16 (float32 carries 24 >= 2 x 11 + 2 bits, so rounding
# twice gives the correctly rounded half), which is how numpy's float16 loops compute them. numpy's
# loop makes each half with a scalar cast that raises the underflow flag for every subnormal result
# (~120 ns an element, against ~8 for a normal one); widened by table and narrowed by
# codelets/halves.py the same bits cost ~5 ns whatever the values. The value says whether numpy's
# float16 loop hands the float32 operation its operands swapped (add and multiply: where both are
# NaN the result is the second's, quieted), so that NaN payloads match too. exp, log, tanh and the
# like are not correctly rounded (a float16 loop may use another approximation), and numpy's
# float16 max/min pick another zero of +0 and -0 than its float32 ones: they stay numpy's float16
# loops.
_ROUNDED_ONCE = {np.add: True, np.multiply: True, np.subtract: False, np.divide: False,
                 np.square: False, np.sqrt: False}


def _halves_in_float32(f: np.ufunc, xs: tuple, out: np.ndarray | None) -> np.ndarray | None:
    """``f(*xs, out=out)`` for float16 operands and result, computed in float32 and rounded once
    (:data:`_ROUNDED_ONCE`); None where the operands are not all float16 arrays or the result is
    small (numpy's loop then). A large result is made in pieces along its first axis, so that the
    float32 temporaries stay in cache (4 M elements in one piece: 9.5 ns an element, in pieces of
    64 K: ~6.5)."""
    if not all(isinstance(x, np.ndarray) and x.dtype == np.float16 for x in xs):
        return None
    if out is not None and out.dtype != np.float16:
        return None
    shape = out.shape if out is not None else np.broadcast_shapes(*(x.shape for x in xs))
    size = math.prod(shape)
    if size < HALVES_MIN:
        return None
    if out is None:
        out = np.empty(shape, np.float16)
    swap = _ROUNDED_ONCE[f]
    step = max(1, _OP_PIECE // max(size // shape[0], 1)) if shape and size > _OP_PIECE else None
    if step is None or step >= shape[0] or not all(_apart_or_same(x, out) for x in xs):
        _rounded_once(f, xs, swap, out)
        return out
    nd = len(shape)
    for lo in range(0, shape[0], step):
        part = slice(lo, lo + step)
        pieces = tuple(x[part] if x.ndim == nd and x.shape[0] > 1 else x for x in xs)
        _rounded_once(f, pieces, swap, out[part])
    return out


# A float16 op's float32 temporaries are made this many elements at a time (three of them, 768 KiB,
# stay in a core's 1 MiB cache).
_OP_PIECE = 1 << 16


def _rounded_once(f: np.ufunc, xs: tuple, swap: bool, out: np.ndarray) -> None:
    wide = f(*(widened(x) for x in (xs[::-1] if swap else xs)))
    to_half(np.broadcast_to(wide, out.shape) if out.shape != wide.shape else wide, out)


def _apart_or_same(x: np.ndarray, out: np.ndarray) -> bool:
    """Whether an operand shares no memory with ``out`` or is the same view of it (in place), so
    that ``out`` may be written piece by piece."""
    if not np.may_share_memory(x, out):
        return True
    return x.shape == out.shape and x.strides == out.strides and \
        x.__array_interface__["data"][0] == out.__array_interface__["data"][0]


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
        done = _halves_in_float32(np.divide, (a, b), out)
        if done is not None:
            return done
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
