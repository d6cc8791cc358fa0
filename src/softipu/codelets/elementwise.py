"""popops-style elementwise codelets, their numerics and their poplibs cycle estimators.

Each (operation, dtype) pair is one codelet class, made on first use and cached, like the
``popops::BinaryOp1D<ADD, half>`` template instances. Compute and estimate sit side by side.
Estimator figures are poplibs sdk-release-3.4's (ipu-facts.md §5):

* BinaryOp1D (MultiVertex): ``W x ((float ? 29 : 26) + inner(ceil(n / W))) + supervisor``, with
  ``inner(m) = ceil(m / vw) x (c + 2)`` for float types and ``m x c`` for integers.
  BinaryOp1DInPlace: ``W x (58 + inner) + supervisor``.
* UnaryOp1D (MultiVertex): ``W x ((EXP ? 33 : 17) + inner(ceil(n / W))) + 20``, with
  ``inner(m) = ceil(m / vw) x (c + 4)``.

Worked example (the calibration target): half ADD, n = 1200, W = 6, vw = 4:
6 x (26 + ceil(200 / 4) x 3) + 11 = 1067 cycles.

Besides the popops vertices this module holds the **expression** vocabulary of ``map``
(:class:`Expr`, a small closed set of node kinds over the op enums), its dtype rules
(:func:`typecheck`: numpy's promotion restricted to softipu dtypes, Python numbers weakly typed)
and the fused :func:`map_codelet` that evaluates a whole tree per vertex. Operands of a fused
vertex may be broadcast inside it (:class:`Operand`): a bias row shared by ``k`` rows of data, a
per-row scalar, or one scalar.

Semantics that differ between libraries are fixed here and documented on the op enums: integer
DIVIDE truncates toward zero (C, popops); REMAINDER is C's ``fmod`` (sign of the dividend, popops'
REMAINDER) and MODULO is Python's ``%`` (sign of the divisor, ``torch.remainder``); integer division
or remainder by zero gives 0; ROUND rounds half to even (numpy, torch); MAXIMUM/MINIMUM propagate
NaN (torch); float -> int casts truncate toward zero, saturate, and send NaN to 0.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np

from softipu.codelets._common import ceil_div as _ceil_div
from softipu.dtypes import ALL_DTYPES, DType, as_dtype, bool_, float16, float32, int32, int64
from softipu.errors import DTypeError
from softipu.graph.vertex import InOut, Input, MultiVertex, Output, Param, Vertex
from softipu.target import Target

__all__ = [
    "BinaryOp", "UnaryOp", "TernaryOp", "Kinds", "Result", "Operand", "ExprKind", "Expr", "typecheck",
    "promote", "evaluate", "cast_values", "stochastic_round_to_half", "binary_op_codelet",
    "unary_op_codelet", "binary_op_inplace_codelet", "unary_op_inplace_codelet", "map_codelet",
    "cast_codelet", "binary_op_cycles", "unary_op_cycles", "map_cycles", "cast_cycles",
]


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
    """``np.polyval(coeffs, x)`` in x's dtype with the same roundings, in place (no temporaries)."""
    dtype = x.dtype.type
    y = np.full_like(x, dtype(coeffs[0]))
    for c in coeffs[1:]:
        y *= x
        y += dtype(c)
    return y


def _erf_values(x: np.ndarray) -> np.ndarray:
    x = np.clip(_f32(x), -4.0, 4.0)
    x2 = x * x
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


def _gelu_erf(x, out=None):  # popnn GELU_ERF: the exact form
    y = _f32(x)
    return _store(y.dtype.type(0.5) * y * (1 + _erf_values(y * y.dtype.type(np.sqrt(0.5)))), out, x.dtype)


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


# -- the op vocabularies ---------------------------------------------------------------------------
_F, _N, _A, _I, _IB = Kinds.FLOAT, Kinds.NUMERIC, Kinds.ANY, Kinds.INT, Kinds.INTEGRAL


class BinaryOp(enum.Enum):
    """popops BinaryOpType. Costs: [V] from poplibs (ipu-facts §5), [U] softipu estimates."""

    ADD = _OpSpec(_ufunc(np.add), _OpCost(1, 0, 1, 0), _A)  # [V] ADD/MUL {1, natural}
    SUBTRACT = _OpSpec(_ufunc(np.subtract), _OpCost(1, 0, 1, 0), _N)  # as ADD [U]
    MULTIPLY = _OpSpec(_ufunc(np.multiply), _OpCost(1, 0, 1, 0), _A)  # [V]
    DIVIDE = _OpSpec(_divide, _OpCost(10, 2, 21, 4, int_cycles=277), _N)  # [V] f{10,2} h{21,4}
    MAXIMUM = _OpSpec(_ufunc(np.maximum), _OpCost(3, 2, 4, 4), _A)  # [V] f{3,2} h{4,4}
    MINIMUM = _OpSpec(_ufunc(np.minimum), _OpCost(3, 2, 4, 4), _A)  # [V]
    POWER = _OpSpec(_power, _OpCost(40, 1, 40, 1, int_cycles=40), _N)  # exp(b log a) [U]
    REMAINDER = _OpSpec(_ufunc(np.fmod), _OpCost(12, 2, 24, 4, int_cycles=277), _N)  # fmod [U]
    MODULO = _OpSpec(_ufunc(np.remainder), _OpCost(14, 2, 26, 4, int_cycles=280), _N)  # python % [U]
    ATAN2 = _OpSpec(_ufunc(np.arctan2), _OpCost(30, 1, 30, 1), _F)  # [U]
    EQUAL = _OpSpec(_ufunc(np.equal), _OpCost(2, 0, 2, 0, 2), _A, Result.BOOL)  # [U] compare + pack
    NOT_EQUAL = _OpSpec(_ufunc(np.not_equal), _OpCost(2, 0, 2, 0, 2), _A, Result.BOOL)
    LESS_THAN = _OpSpec(_ufunc(np.less), _OpCost(2, 0, 2, 0, 2), _A, Result.BOOL)
    LESS_THAN_EQUAL = _OpSpec(_ufunc(np.less_equal), _OpCost(2, 0, 2, 0, 2), _A, Result.BOOL)
    GREATER_THAN = _OpSpec(_ufunc(np.greater), _OpCost(2, 0, 2, 0, 2), _A, Result.BOOL)
    GREATER_THAN_EQUAL = _OpSpec(_ufunc(np.greater_equal), _OpCost(2, 0, 2, 0, 2), _A, Result.BOOL)
    LOGICAL_AND = _OpSpec(_ufunc(np.logical_and), _OpCost(2, 0, 2, 0, 2), _A, Result.BOOL, False)
    LOGICAL_OR = _OpSpec(_ufunc(np.logical_or), _OpCost(2, 0, 2, 0, 2), _A, Result.BOOL, False)
    LOGICAL_XOR = _OpSpec(_ufunc(np.logical_xor), _OpCost(2, 0, 2, 0, 2), _A, Result.BOOL, False)
    BITWISE_AND = _OpSpec(_ufunc(np.bitwise_and), _OpCost(1, 0, 1, 0, 1), _IB)  # [U]
    BITWISE_OR = _OpSpec(_ufunc(np.bitwise_or), _OpCost(1, 0, 1, 0, 1), _IB)
    BITWISE_XOR = _OpSpec(_ufunc(np.bitwise_xor), _OpCost(1, 0, 1, 0, 1), _IB)
    SHIFT_LEFT = _OpSpec(_ufunc(np.left_shift), _OpCost(1, 0, 1, 0, 2), _I)  # [U]
    SHIFT_RIGHT = _OpSpec(_shift_right_logical, _OpCost(1, 0, 1, 0, 2), _I)  # popops: logical
    SHIFT_RIGHT_SIGN_EXTEND = _OpSpec(_ufunc(np.right_shift), _OpCost(1, 0, 1, 0, 2), _I)

    @property
    def fn(self) -> Callable[..., object]:
        return self.value.fn

    @property
    def cost(self) -> _OpCost:
        return self.value.cost


class UnaryOp(enum.Enum):
    """popops UnaryOpType (plus popnn's GELU forms). ROUND rounds half to even."""

    EXPONENT = _OpSpec(_ufunc(np.exp), _OpCost(6, 2, 4, 4), _F)  # [V] EXP f{6,2} h{4,4}
    LOGARITHM = _OpSpec(_ufunc(np.log), _OpCost(12, 2, 4, 4), _F)  # [V]
    TANH = _OpSpec(_ufunc(np.tanh), _OpCost(12, 2, 4, 4), _F)  # [V]
    SIGMOID = _OpSpec(_sigmoid, _OpCost(10, 2, 4, 4), _F)  # [V]
    SQRT = _OpSpec(_ufunc(np.sqrt), _OpCost(10, 2, 23, 4), _F)  # [V]
    RSQRT = _OpSpec(_rsqrt, _OpCost(8, 2, 19, 4), _F)  # [V]
    RELU = _OpSpec(_relu, _OpCost(2, 0, 2, 0, 2), _N)  # [V] {2, vw}
    NEGATE = _OpSpec(_ufunc(np.negative), _OpCost(1, 0, 1, 0, 1), _N)  # [U]
    ABSOLUTE = _OpSpec(_ufunc(np.absolute), _OpCost(1, 0, 1, 0, 1), _N)  # [U]
    EXPONENT_MINUS_ONE = _OpSpec(_ufunc(np.expm1), _OpCost(8, 2, 6, 4), _F)  # as EXP + 2 [U]
    LOGARITHM_ONE_PLUS = _OpSpec(_ufunc(np.log1p), _OpCost(14, 2, 6, 4), _F)  # as LOG + 2 [U]
    CBRT = _OpSpec(_ufunc(np.cbrt), _OpCost(20, 2, 20, 4), _F)  # [U]
    SIN = _OpSpec(_ufunc(np.sin), _OpCost(12, 2, 12, 4), _F)  # [U]
    COS = _OpSpec(_ufunc(np.cos), _OpCost(12, 2, 12, 4), _F)  # [U]
    TAN = _OpSpec(_ufunc(np.tan), _OpCost(24, 2, 24, 4), _F)  # sin / cos [U]
    ERF = _OpSpec(_erf, _OpCost(16, 2, 16, 4), _F)  # rational approximation [U]
    GELU = _OpSpec(_gelu, _OpCost(20, 2, 12, 4), _F)  # tanh + 6 mul/add [U]
    GELU_ERF = _OpSpec(_gelu_erf, _OpCost(22, 2, 22, 4), _F)  # erf + 4 [U]
    SIGNUM = _OpSpec(_ufunc(np.sign), _OpCost(2, 0, 2, 0, 2), _N)  # [U]
    SQUARE = _OpSpec(_ufunc(np.square), _OpCost(1, 0, 1, 0), _N)  # as MUL [U]
    INVERSE = _OpSpec(_ufunc(np.reciprocal), _OpCost(10, 2, 21, 4), _F)  # as DIVIDE [U]
    FLOOR = _OpSpec(_float_only(np.floor), _OpCost(2, 0, 2, 0, 1), _N)  # [U]
    CEIL = _OpSpec(_float_only(np.ceil), _OpCost(2, 0, 2, 0, 1), _N)  # [U]
    ROUND = _OpSpec(_float_only(np.rint), _OpCost(2, 0, 2, 0, 1), _N)  # half to even [U]
    TRUNC = _OpSpec(_float_only(np.trunc), _OpCost(2, 0, 2, 0, 1), _N)  # [U]
    IS_FINITE = _OpSpec(_ufunc(np.isfinite), _OpCost(2, 0, 2, 0, 1), _N, Result.BOOL)  # [U]
    IS_NAN = _OpSpec(_ufunc(np.isnan), _OpCost(2, 0, 2, 0, 1), _N, Result.BOOL)  # [U]
    IS_INF = _OpSpec(_ufunc(np.isinf), _OpCost(2, 0, 2, 0, 1), _N, Result.BOOL)  # [U]
    LOGICAL_NOT = _OpSpec(_ufunc(np.logical_not), _OpCost(1, 0, 1, 0, 1), _A, Result.BOOL)  # [U]
    BITWISE_NOT = _OpSpec(_ufunc(np.invert), _OpCost(1, 0, 1, 0, 1), _IB)  # [U]
    POPCOUNT = _OpSpec(_popcount, _OpCost(1, 0, 1, 0, 2), _I)  # popc instruction [U]
    COUNT_LEADING_ZEROS = _OpSpec(_count_leading_zeros, _OpCost(1, 0, 1, 0, 2), _I)  # clz [U]

    @property
    def fn(self) -> Callable[..., object]:
        return self.value.fn

    @property
    def cost(self) -> _OpCost:
        return self.value.cost


class TernaryOp(enum.Enum):
    """popops TernaryOpType: SELECT(cond, a, b) = cond ? a : b; CLAMP(x, lo, hi)."""

    SELECT = _OpSpec(_select, _OpCost(2, 0, 2, 0, 2), _A)  # [U]
    CLAMP = _OpSpec(_clamp, _OpCost(4, 2, 6, 4, 4), _N)  # max then min [U]

    @property
    def fn(self) -> Callable[..., object]:
        return self.value.fn

    @property
    def cost(self) -> _OpCost:
        return self.value.cost


_CAST_COST = _OpCost(2, 0, 2, 0, 2)  # f32v2tof16-style conversions, one vector per 2 cycles [U]


# -- cast semantics --------------------------------------------------------------------------------
def cast_values(x: np.ndarray, to: np.dtype, out: np.ndarray | None = None) -> np.ndarray:
    """``x`` converted to ``to``: floats round to nearest even; float -> int truncates toward
    zero and saturates (NaN -> 0); -> bool is ``x != 0``; int -> int wraps (two's complement)."""
    x = np.asarray(x)
    to = np.dtype(to)
    if x.dtype == to:
        return _store(x, out)
    if to.kind == "b":
        return _store(x != 0, out)
    if x.dtype.kind == "f" and to.kind in "iu":
        return _store(_float_to_int(x, to), out)
    if out is None:
        return x.astype(to)
    np.copyto(out, x, casting="unsafe")
    return out


def _float_to_int(x: np.ndarray, to: np.dtype) -> np.ndarray:
    info = np.iinfo(to)
    y = np.trunc(x.astype(np.float64))  # exact for float16 and float32
    top = float(info.max)  # 2**63 for 64-bit types: not representable as the int
    below_top = np.nextafter(top, 0.0) if to.itemsize == 8 else top
    clipped = np.clip(np.where(np.isnan(y), 0.0, y), float(info.min), below_top)
    r = clipped.astype(to)
    if to.itemsize == 8:
        r = np.where(y >= top, to.type(info.max), r)
    return r


_GOLDEN = 0x9E3779B97F4A7C15
_MASK64 = (1 << 64) - 1


def _uniform24(seed: int, index: np.ndarray) -> np.ndarray:
    """A counter-based uniform in [0, 1) with 24 bits per element: splitmix64 of (seed, index)."""
    key = np.uint64(((seed & _MASK64) * _GOLDEN + 0x632BE59BD9B4E019) & _MASK64)
    z = index.astype(np.uint64) * np.uint64(_GOLDEN) + key
    z ^= z >> np.uint64(30)
    z *= np.uint64(0xBF58476D1CE4E5B9)
    z ^= z >> np.uint64(27)
    z *= np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return (z >> np.uint64(40)).astype(np.float32) * np.float32(2.0**-24)


def stochastic_round_to_half(x: np.ndarray, seed: int, index: np.ndarray) -> np.ndarray:
    """float32 -> float16 rounding up or down with probability proportional to the distance.

    Element ``i`` rounds away from zero iff ``u(seed, index[i]) < (|x| - |lo|) / (|hi| - |lo|)``
    where ``lo``/``hi`` are the float16 neighbours toward/away from zero, so results depend only
    on the seed and each element's index. Values that round to infinity under round-to-nearest
    still do; between the largest half (65504) and that threshold the gap is taken as 32.
    """
    x = np.asarray(x, np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        rn = x.astype(np.float16)
        over = np.abs(rn.astype(np.float32)) > np.abs(x)
        toward = np.where(over, np.nextafter(rn, np.float16(0)), rn)
        sign_inf = np.where(np.signbit(x), np.float16(-np.inf), np.float16(np.inf))
        away = np.nextafter(toward, sign_inf)
        low = np.abs(toward.astype(np.float32))
        gap = np.where(np.isinf(away), np.float32(32), np.abs(away.astype(np.float32)) - low)
        up = _uniform24(seed, np.asarray(index)) < (np.abs(x) - low) / gap
    return np.where(np.isinf(rn), rn, np.where(up, away, toward))


# -- expressions (the vocabulary of map) -----------------------------------------------------------
class ExprKind(enum.Enum):
    INPUT = "input"  # the index-th input tensor
    CONST = "const"  # a number (weakly typed until typecheck: it takes its partner's dtype)
    CAST = "cast"  # conversion to `dtype`
    UNARY = "unary"
    BINARY = "binary"
    TERNARY = "ternary"


_ARITY = {ExprKind.INPUT: 0, ExprKind.CONST: 0, ExprKind.CAST: 1, ExprKind.UNARY: 1,
          ExprKind.BINARY: 2, ExprKind.TERNARY: 3}
_OP_TYPE = {ExprKind.UNARY: UnaryOp, ExprKind.BINARY: BinaryOp, ExprKind.TERNARY: TernaryOp}


@dataclass(frozen=True, slots=True)
class Expr:
    """One node of an elementwise expression tree; build them with ``softipu.ops.E``."""

    kind: ExprKind
    op: UnaryOp | BinaryOp | TernaryOp | None = None
    args: tuple[Expr, ...] = ()
    index: int = 0
    value: bool | int | float = field(default=0, compare=False)
    dtype: DType | None = None  # CAST's target; after typecheck, every node's dtype
    value_key: str = field(default="", init=False)  # so 0.0 != -0.0 and 1 != True in caches

    def __post_init__(self) -> None:
        if len(self.args) != _ARITY[self.kind] or not all(isinstance(a, Expr) for a in self.args):
            raise DTypeError(f"a {self.kind.value} expression takes {_ARITY[self.kind]} expression "
                             f"argument(s), got {self.args!r}")
        want = _OP_TYPE.get(self.kind)
        if (want is None) != (self.op is None) or (want is not None and not isinstance(self.op, want)):
            raise DTypeError(f"a {self.kind.value} expression needs a {want.__name__ if want else 'no'} op, "
                             f"got {self.op!r}")
        if self.kind is ExprKind.INPUT and (not isinstance(self.index, int) or self.index < 0):
            raise DTypeError(f"input index must be an int >= 0, got {self.index!r}")
        if self.kind is ExprKind.CONST and not isinstance(self.value, (bool, int, float)):
            raise DTypeError(f"a constant must be a Python bool, int or float, got {self.value!r}")
        if self.kind is ExprKind.CAST and self.dtype is None:
            raise DTypeError("a cast needs a dtype")
        object.__setattr__(self, "value_key", f"{type(self.value).__name__}:{self.value!r}")

    def __str__(self) -> str:
        if self.kind is ExprKind.INPUT:
            return f"in{self.index}"
        if self.kind is ExprKind.CONST:
            return repr(self.value)
        if self.kind is ExprKind.CAST:
            return f"cast<{self.dtype.name}>({self.args[0]})"
        return f"{self.op.name.lower()}({','.join(map(str, self.args))})"


_DEFAULT = {bool: bool_, int: int32, float: float32}
_RANK = {bool: 0, int: 1, float: 2}


def promote(a: DType, b: DType) -> DType:
    """numpy's result type of two softipu dtypes; DTypeError where numpy leaves softipu's set."""
    r = np.result_type(a.numpy, b.numpy)
    if r not in {d.numpy for d in ALL_DTYPES}:
        raise DTypeError(f"{a} and {b} have no common softipu dtype (numpy promotes them to {r}); "
                         "cast one of them first")
    return as_dtype(r)


def _weak_with(strong: DType, weak: type, node: Expr) -> DType:
    """The dtype a Python number takes next to a tensor of ``strong`` (NEP 50, within softipu)."""
    kind = Kinds.of(strong)
    dtype = strong if (weak is bool or (weak is int and kind is not Kinds.BOOL)
                       or (weak is float and kind is Kinds.FLOAT)) else _DEFAULT[weak]
    if node.kind is ExprKind.CONST and isinstance(node.value, int) and Kinds.of(dtype) is Kinds.INT:
        info = np.iinfo(dtype.numpy)
        if not info.min <= node.value <= info.max:
            raise DTypeError(f"constant {node.value} does not fit {dtype} ({info.min}..{info.max})")
    return dtype


def _common(items: list[tuple[Expr, type | None]]) -> tuple[DType, type | None]:
    strong = [t.dtype for t, w in items if w is None]
    if not strong:  # only numbers: the highest Python kind's default dtype, still weak
        weak = max((w for _, w in items), key=_RANK.__getitem__)
        return _DEFAULT[weak], weak
    d = strong[0]
    for s in strong[1:]:
        d = promote(d, s)
    for t, w in items:
        if w is not None:
            d = _weak_with(d, w, t)
    return d, None


def _as(t: Expr, dtype: DType) -> Expr:
    if t.dtype is dtype:
        return t
    if t.kind is ExprKind.CONST:
        return Expr(ExprKind.CONST, value=t.value, dtype=dtype)
    return Expr(ExprKind.CAST, args=(t,), dtype=dtype)


def _check_domain(op: Any, dtype: DType) -> None:
    if not Kinds.of(dtype) & op.value.domain:
        accepted = " or ".join(k.name.lower() for k in (Kinds.FLOAT, Kinds.INT, Kinds.BOOL)
                               if k & op.value.domain)
        raise DTypeError(f"{op.name.lower()} is not defined for {dtype}: it takes {accepted} "
                         "tensors; cast first")


def _type(node: Expr, in_dtypes: tuple[DType, ...]) -> tuple[Expr, type | None]:
    """(typed node, Python type when the node is weakly typed: built from numbers only)."""
    kind = node.kind
    if kind is ExprKind.INPUT:
        if node.index >= len(in_dtypes):
            raise DTypeError(f"the expression uses input {node.index} but {len(in_dtypes)} "
                             "input(s) were given")
        return Expr(ExprKind.INPUT, index=node.index, dtype=in_dtypes[node.index]), None
    if kind is ExprKind.CONST:
        return Expr(ExprKind.CONST, value=node.value, dtype=_DEFAULT[type(node.value)]), type(node.value)
    args = [_type(a, in_dtypes) for a in node.args]
    if kind is ExprKind.CAST:
        return Expr(ExprKind.CAST, args=(args[0][0],), dtype=as_dtype(node.dtype)), None
    spec = node.op.value
    if node.op is TernaryOp.SELECT:
        cond, cw = args[0]
        if cond.dtype is not bool_:
            raise DTypeError(f"select's condition must be {bool_}, got {cond.dtype}")
        d, weak = _common(args[1:])
        typed = (cond, _as(args[1][0], d), _as(args[2][0], d))
    elif spec.promote:
        d, weak = _common(args)
        typed = tuple(_as(t, d) for t, _ in args)
    else:  # logical ops read truthiness of each operand as it is
        d, weak = bool_, None
        typed = tuple(t for t, _ in args)
    _check_domain(node.op, d)
    out = bool_ if spec.result is Result.BOOL else d
    return Expr(kind, node.op, typed, dtype=out), (None if spec.result is Result.BOOL else weak)


def typecheck(expr: Expr, in_dtypes: tuple[DType, ...]) -> Expr:
    """``expr`` with every node's dtype set and casts made explicit; DTypeError says what is wrong."""
    if not isinstance(expr, Expr):
        raise DTypeError(f"expected an expression (softipu.ops.E...), got {type(expr).__name__}")
    return _type(expr, tuple(in_dtypes))[0]


def evaluate(node: Expr, operands: list[np.ndarray], out: np.ndarray | None = None) -> np.ndarray:
    """A typed expression over numpy operands (any broadcastable shapes); the root writes ``out``."""
    kind = node.kind
    if kind is ExprKind.INPUT:
        return _store(operands[node.index], out)
    if kind is ExprKind.CONST:
        return _store(np.asarray(node.value).astype(node.dtype.numpy), out)
    args = [evaluate(a, operands) for a in node.args]
    if kind is ExprKind.CAST:
        return cast_values(args[0], node.dtype.numpy, out)
    return node.op.fn(*args, out=out)


# -- estimators ------------------------------------------------------------------------------------
def _loop_cost(cost: _OpCost, dtype: DType, target: Target) -> tuple[int, int]:
    """(cycles per loop, elements per loop) of one worker for this dtype."""
    if dtype is float32:
        return cost.float_cycles, cost.float_width or target.vector_width(dtype.itemsize)
    if dtype is float16:
        return cost.half_cycles, cost.half_width or target.vector_width(dtype.itemsize)
    return cost.int_cycles, 1


def _binary_inner(cost: _OpCost, dtype: DType, per_worker, target: Target):
    c, width = _loop_cost(cost, dtype, target)
    extra = 2 if dtype.is_float else 0
    return _ceil_div(per_worker, width) * (c + extra)


def binary_op_cycles(op: BinaryOp, dtype: DType, n, target: Target, fixed: int | None = None):
    """poplibs' BinaryOp1D estimate for ``n`` elements (int or int array)."""
    workers = target.workers_per_tile
    inner = _binary_inner(op.cost, dtype, _ceil_div(n, workers), target)
    if fixed is None:
        fixed = 29 if dtype is float32 else 26  # [V] float ? 29 : 26
    return workers * (fixed + inner) + target.supervisor_overhead_cycles


def unary_op_cycles(op: UnaryOp, dtype: DType, n, target: Target):
    """poplibs' UnaryOp1D estimate for ``n`` elements (int or int array)."""
    workers = target.workers_per_tile
    c, width = _loop_cost(op.cost, dtype, target)
    inner = _ceil_div(_ceil_div(n, workers), width) * (c + 4)
    fixed = 33 if op is UnaryOp.EXPONENT else 17  # [V]
    return workers * (fixed + inner) + 20  # [V] UnaryOp1D's own supervisor cost


def _node_costs(node: Expr) -> list[tuple[_OpCost, DType]]:
    if node.kind in (ExprKind.INPUT, ExprKind.CONST):
        return []
    own = _CAST_COST if node.kind is ExprKind.CAST else node.op.cost
    dtype = node.args[0].dtype if node.kind is ExprKind.CAST else node.dtype
    if node.kind is not ExprKind.CAST and node.op.value.result is Result.BOOL and node.args:
        dtype = node.args[-1].dtype  # a comparison works at its operands' width
    return [(own, dtype)] + [c for a in node.args for c in _node_costs(a)]


def map_cycles(expr: Expr, num_operands: int, n, target: Target, worker: bool = False):
    """A fused map vertex: every node's inner loop per element, summed.

    poplibs has no single estimator for popops::map's generated codelets [U]. The MultiVertex
    form has BinaryOp1D's shape (fixed 29 float / 26 other); the one-worker form (``worker``)
    has BinaryOp2D's ``5 + inner(n)`` [V]; both add 4 per operand beyond two [U].
    """
    extra = 4 * max(0, num_operands - 2)
    if worker:
        return 5 + extra + _inner_sum(expr, n, target)
    workers = target.workers_per_tile
    fixed = (29 if expr.dtype is float32 else 26) + extra
    return workers * (fixed + _inner_sum(expr, _ceil_div(n, workers), target)) \
        + target.supervisor_overhead_cycles


def _inner_sum(expr: Expr, n, target: Target):
    return sum((_binary_inner(cost, dtype, n, target) for cost, dtype in _node_costs(expr)), 0)


def _flops(expr: Expr, n):
    return n * sum(1 for _, d in _node_costs(expr) if d.is_float)


# -- codelets --------------------------------------------------------------------------------------
@cache
def binary_op_codelet(op: BinaryOp, dtype: DType) -> type[Vertex]:
    """``popops::BinaryOp1D<op, dtype>``: ``out = op(a, b)`` elementwise over one vector.

    ``a`` or ``b`` may have length 1 (a scalar operand, numpy-broadcast over the vector).
    """
    fn = op.fn
    out_dtype = bool_ if op.value.result is Result.BOOL else dtype

    class BinaryOp1D(MultiVertex):
        a = Input(dtype)
        b = Input(dtype)
        out = Output(out_dtype)

        @staticmethod
        def compute(a, b, out):
            fn(a, b, out=out)

        @staticmethod
        def cycles(a, b, out, target):
            return binary_op_cycles(op, dtype, out, target)

        @staticmethod
        def flops(a, b, out, target):
            return out if dtype.is_float else 0

    BinaryOp1D.__name__ = BinaryOp1D.__qualname__ = f"BinaryOp1D<{op.name},{dtype.name}>"
    return BinaryOp1D


@cache
def binary_op_inplace_codelet(op: BinaryOp, dtype: DType) -> type[Vertex]:
    """``popops::BinaryOp1DInPlace<op, dtype>``: ``a = op(a, b)``."""
    fn = op.fn
    if op.value.result is Result.BOOL and dtype is not bool_:
        raise DTypeError(f"{op.name} gives bool_; it cannot update a {dtype} tensor in place")

    class BinaryOp1DInPlace(MultiVertex):
        a = InOut(dtype)
        b = Input(dtype)

        @staticmethod
        def compute(a, b):
            fn(a, b, out=a)

        @staticmethod
        def cycles(a, b, target):
            return binary_op_cycles(op, dtype, a, target, fixed=58)  # [V] in-place 1D: 58

        @staticmethod
        def flops(a, b, target):
            return a if dtype.is_float else 0

    BinaryOp1DInPlace.__name__ = BinaryOp1DInPlace.__qualname__ = f"BinaryOp1DInPlace<{op.name},{dtype.name}>"
    return BinaryOp1DInPlace


@cache
def unary_op_codelet(op: UnaryOp, dtype: DType) -> type[Vertex]:
    """``popops::UnaryOp1D<op, dtype>``: ``out = op(x)`` elementwise over one vector."""
    fn = op.fn
    out_dtype = bool_ if op.value.result is Result.BOOL else dtype

    class UnaryOp1D(MultiVertex):
        x = Input(dtype)
        out = Output(out_dtype)

        @staticmethod
        def compute(x, out):
            fn(x, out=out)

        @staticmethod
        def cycles(x, out, target):
            return unary_op_cycles(op, dtype, out, target)

        @staticmethod
        def flops(x, out, target):
            return out if dtype.is_float else 0

    UnaryOp1D.__name__ = UnaryOp1D.__qualname__ = f"UnaryOp1D<{op.name},{dtype.name}>"
    return UnaryOp1D


@cache
def unary_op_inplace_codelet(op: UnaryOp, dtype: DType) -> type[Vertex]:
    """``popops::UnaryOp1DInPlace<op, dtype>``: ``x = op(x)`` (cycles as UnaryOp1D [U])."""
    fn = op.fn
    if op.value.result is Result.BOOL and dtype is not bool_:
        raise DTypeError(f"{op.name} gives bool_; it cannot update a {dtype} tensor in place")

    class UnaryOp1DInPlace(MultiVertex):
        x = InOut(dtype)

        @staticmethod
        def compute(x):
            fn(x, out=x)

        @staticmethod
        def cycles(x, target):
            return unary_op_cycles(op, dtype, x, target)

        @staticmethod
        def flops(x, target):
            return x if dtype.is_float else 0

    UnaryOp1DInPlace.__name__ = UnaryOp1DInPlace.__qualname__ = f"UnaryOp1DInPlace<{op.name},{dtype.name}>"
    return UnaryOp1DInPlace


class Operand(enum.Enum):
    """How one operand of a fused vertex covers the vertex's ``k x C`` block of the output."""

    FULL = "full"  # one element per output element (length k*C)
    ROW = "row"  # one row of C shared by the block's k rows (a bias)
    COL = "col"  # one scalar per row (length k)
    SCALAR = "scalar"  # one element for the whole block (length 1)


def _shaped(out: np.ndarray, operands: list[np.ndarray], kinds: tuple[Operand, ...]):
    """``out`` and the operands as broadcastable ``(..., k, C)`` arrays (views, no copies)."""
    row = next((a.shape[-1] for a, k in zip(operands, kinds, strict=True) if k is Operand.ROW), None)
    if row is None:
        col = next(a.shape[-1] for a, k in zip(operands, kinds, strict=True) if k is Operand.COL)
        row = out.shape[-1] // max(col, 1)
    lead = out.shape[:-1]
    view = out.reshape(lead + (out.shape[-1] // row, row))
    shaped = []
    for a, k in zip(operands, kinds, strict=True):
        if k is Operand.FULL:
            shaped.append(a.reshape(a.shape[:-1] + view.shape[-2:]))
        elif k is Operand.COL:
            shaped.append(a[..., :, None])
        else:  # ROW (1, C) and SCALAR (1, 1)
            shaped.append(a[..., None, :])
    return view, shaped


@cache
def map_codelet(expr: Expr, in_dtypes: tuple[DType, ...], kinds: tuple[Operand, ...],
                inplace: bool = False, worker: bool = False) -> type[Vertex]:
    """A fused vertex evaluating the typed ``expr`` per element (popops::map's generated codelet).

    Fields ``in0``..``in{n-1}`` (``kinds[i]`` says how each covers the block) and ``out``. In
    place, input 0 is the ``out`` field itself (InOut) and has no ``in0``. A ``worker`` codelet
    is a plain one-worker Vertex (popops' 2D vertices: several per tile share the six workers);
    otherwise a MultiVertex covering a whole tile region.
    """
    if expr.dtype is None:
        raise DTypeError("map_codelet needs a typed expression (see typecheck)")
    names = [f"in{i}" for i in range(len(in_dtypes))]
    namespace: dict[str, Any] = {
        name: Input(d) for i, (name, d) in enumerate(zip(names, in_dtypes, strict=True))
        if not (inplace and i == 0)}
    namespace["out"] = (InOut if inplace else Output)(expr.dtype)
    reshape = any(k in (Operand.ROW, Operand.COL) for k in kinds)

    def compute(**fields):
        out = fields["out"]
        operands = [out if inplace and i == 0 else fields[n] for i, n in enumerate(names)]
        if reshape:
            out, operands = _shaped(out, operands, kinds)
        evaluate(expr, operands, out)

    def cycles(target, **fields):
        return map_cycles(expr, len(names), fields["out"], target, worker)

    def flops(target, **fields):
        return _flops(expr, fields["out"])

    namespace |= {"compute": staticmethod(compute), "cycles": staticmethod(cycles),
                  "flops": staticmethod(flops), "__module__": __name__}
    shape = "" if not reshape else "[" + ",".join(k.value for k in kinds) + "]"
    name = f"Map{'2D' if worker else ''}{'InPlace' if inplace else ''}<{expr}{shape},{expr.dtype.name}>"
    return type(name, (Vertex if worker else MultiVertex,), namespace)


@cache
def cast_codelet(src: DType, dst: DType, seed: int | None = None,
                 kind: Operand = Operand.FULL, worker: bool = False) -> type[Vertex]:
    """``popops::Cast1D<src, dst>``: ``out = cast(x)`` (see :func:`cast_values`).

    With a ``seed`` (float32 -> float16 only) each element rounds stochastically
    (:func:`stochastic_round_to_half`) keyed by the seed and its index ``base + i`` in the
    output, ``base`` being a per-vertex param: results never depend on how the work is split.
    ``kind`` says how ``x`` covers the output block (a broadcast input) and ``worker`` picks the
    one-worker form (Cast2D), as for :func:`map_codelet`.
    """
    to = dst.numpy
    namespace: dict[str, Any] = {"x": Input(src), "out": Output(dst), "__module__": __name__}
    reshape = kind in (Operand.ROW, Operand.COL)
    if seed is not None:
        if (src, dst) != (float32, float16):
            raise DTypeError(f"stochastic rounding casts float32 to float16, not {src} to {dst}")
        namespace["base"] = Param(int64)

        def compute(x, out, base):
            index = base.astype(np.int64) + np.arange(out.shape[-1], dtype=np.int64)
            if reshape:
                out, (x,) = _shaped(out, [x], (kind,))
                index = index.reshape(index.shape[:-1] + out.shape[-2:])
            out[...] = stochastic_round_to_half(x, seed, index)

        def cycles(x, out, base, target):  # hardware SR costs nothing extra
            return cast_cycles(src, out, target, worker)
    else:
        def compute(x, out):
            if reshape:
                out, (x,) = _shaped(out, [x], (kind,))
            cast_values(x, to, out)

        def cycles(x, out, target):
            return cast_cycles(src, out, target, worker)
    namespace |= {"compute": staticmethod(compute), "cycles": staticmethod(cycles)}
    shape = f"[{kind.value}]" if kind is not Operand.FULL else ""
    sr = ",SR" if seed is not None else ""
    return type(f"Cast{'2D' if worker else '1D'}<{src.name},{dst.name}{sr}{shape}>",
                (Vertex if worker else MultiVertex,), namespace)


def cast_cycles(src: DType, n, target: Target, worker: bool = False):
    """Cast1D/Cast2D: BinaryOp1D's / BinaryOp2D's shape with a conversion loop of one vector per
    2 cycles [U]."""
    if worker:
        return 5 + _binary_inner(_CAST_COST, src, n, target)
    workers = target.workers_per_tile
    inner = _binary_inner(_CAST_COST, src, _ceil_div(n, workers), target)
    return workers * ((29 if src is float32 else 26) + inner) + target.supervisor_overhead_cycles
