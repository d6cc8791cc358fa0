"""Elementwise op records: every popops unary/binary/ternary op, map, casts and in-place forms.

Oracles are independent: numpy in float64 (rounded once to the result dtype), ``math`` for erf,
and plain Python integer arithmetic wherever softipu pins a semantics numpy leaves open (integer
division truncating toward zero, negative integer powers, shifts past the width, float -> int
casts).
"""

from __future__ import annotations

import math

import numpy as np
from tests.records import OpRecord, default_input

import softipu as sp
from softipu.ops import elementwise as ew
from softipu.ops.elementwise import E

F = (sp.float32, sp.float16)
F32 = (sp.float32,)

UNARY_SHAPES = (((7, 13),), ((1000,),), ((),), ((0, 3),), ((3, 5, 4),))
BINARY_SHAPES = (((7, 13), (7, 13)), ((7, 13), (13,)), ((9, 1), (1, 6)), ((5, 1, 6), (3, 1)),
                 ((1000,), ()), ((0, 3), (3,)), ((), ()), ((3, 5, 4), (5, 1)))
FEW_BINARY_SHAPES = (((7, 13), (13,)), ((1000,), ()), ((3, 5, 4), (5, 1)))
EDGES = (np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, 0.5, -2.5, 3.5)


def edges(rng: np.random.Generator, shape, dtype: sp.DType, i: int) -> np.ndarray:
    """Normals (x2) with NaN, +-Inf, signed zeros and halves planted at random places."""
    x = default_input(rng, shape, dtype, i)
    if not dtype.is_float:
        return x
    x = (x * 2).astype(dtype.numpy)
    flat = x.reshape(-1)
    k = min(flat.size // 3, len(EDGES))
    if k:
        flat[rng.choice(flat.size, k, replace=False)] = np.asarray(EDGES[:k], dtype.numpy)
    return x


def nonzero_ints(rng: np.random.Generator, shape, dtype: sp.DType, i: int) -> np.ndarray:
    """Integers with zeros and negatives; divisors (input 1) keep some zeros too."""
    x = default_input(rng, shape, dtype, i)
    if dtype.is_float or dtype is sp.bool_:
        return edges(rng, shape, dtype, i)
    return x


def shift_amounts(rng: np.random.Generator, shape, dtype: sp.DType, i: int) -> np.ndarray:
    if i == 0:
        info = np.iinfo(dtype.numpy)
        return rng.integers(info.min, info.max, size=shape, dtype=np.int64, endpoint=True).astype(dtype.numpy)
    return rng.integers(-3, 8 * dtype.itemsize + 4, size=shape).astype(dtype.numpy)


def wide_ints(rng: np.random.Generator, shape, dtype: sp.DType, i: int) -> np.ndarray:
    info = np.iinfo(dtype.numpy)
    return rng.integers(info.min, info.max, size=shape, dtype=np.int64, endpoint=True).astype(dtype.numpy)


def _f64(fn):
    """An oracle computing in float64 and rounding once to the (promoted) input dtype."""
    def oracle(*xs):
        dtype = np.result_type(*xs)
        with np.errstate(all="ignore"):
            return np.asarray(fn(*(np.asarray(x, np.float64) for x in xs))).astype(dtype)
    return oracle


def _ints(fn, out=None):
    """An oracle applying ``fn`` to Python ints elementwise (broadcast), wrapped to the dtype."""
    def oracle(*xs):
        dtype = np.dtype(out) if out else np.result_type(*xs)
        b = np.broadcast_arrays(*(np.asarray(x).astype(object) for x in xs))
        flat = [fn(*(int(v) for v in vals)) for vals in zip(*(a.reshape(-1) for a in b), strict=True)]
        bits = 8 * dtype.itemsize
        wrapped = [((v + (1 << (bits - 1))) % (1 << bits)) - (1 << (bits - 1)) if dtype.kind == "i"
                   else v % (1 << bits) for v in flat]
        return np.array(wrapped, dtype=object).reshape(b[0].shape if b else ()).astype(dtype)
    return oracle


def _erf64(x):
    return np.asarray(np.frompyfunc(math.erf, 1, 1)(x), np.float64)


def _gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def _trunc_div(a, b):
    if b == 0:
        return 0
    q = abs(a) // abs(b)
    return q if (a < 0) == (b < 0) else -q


def _c_fmod(a, b):
    return 0 if b == 0 else a - _trunc_div(a, b) * b


def _int_pow(a, b):
    if b >= 0:
        return a**b
    return 1 if a == 1 else (-1 if b % 2 else 1) if a == -1 else 0


def _shift_left(bits):
    return lambda a, s: (a << s) if 0 <= s < bits else 0


def _shift_right_arith(bits):
    return lambda a, s: a >> min(s, bits - 1) if s >= 0 else (-1 if a < 0 else 0)


def _shift_right_logical(bits):
    mask = (1 << bits) - 1
    return lambda a, s: ((a & mask) >> s) if 0 <= s < bits else 0


def _unary_record(name, oracle, dtypes=F, make_input=edges, shapes=UNARY_SHAPES, **kw):
    return OpRecord(f"elementwise.{name}", getattr(ew, name), oracle, shapes, dtypes, make_input, **kw)


def _binary_record(name, oracle, dtypes=F, make_input=edges, shapes=BINARY_SHAPES, label="", **kw):
    return OpRecord(f"elementwise.{name}{label}", getattr(ew, name), oracle, shapes, dtypes, make_input, **kw)


_I32 = (sp.int32,)
_U8 = (sp.uint8,)

UNARY = [
    _unary_record("abs", _f64(np.abs)),
    _unary_record("abs", lambda x: np.abs(x.astype(np.int64)), _I32 + (sp.int8,), shapes=UNARY_SHAPES[:2]),
    _unary_record("neg", _f64(np.negative)),
    _unary_record("neg", _ints(lambda a: -a), _U8 + _I32, shapes=UNARY_SHAPES[:2]),
    _unary_record("sign", _f64(np.sign)),
    _unary_record("sign", _ints(lambda a: (a > 0) - (a < 0)), _I32, shapes=UNARY_SHAPES[:2]),
    _unary_record("exp", _f64(np.exp)),
    _unary_record("expm1", _f64(np.expm1)),
    _unary_record("log", _f64(np.log)),
    _unary_record("log1p", _f64(np.log1p)),
    _unary_record("sqrt", _f64(np.sqrt)),
    _unary_record("rsqrt", _f64(lambda x: 1 / np.sqrt(x))),
    _unary_record("cbrt", _f64(np.cbrt)),
    _unary_record("sin", _f64(np.sin)),
    _unary_record("cos", _f64(np.cos)),
    _unary_record("tan", _f64(np.tan), tolerance={sp.float32: (1e-5, 1e-5)}),
    _unary_record("tanh", _f64(np.tanh)),
    _unary_record("sigmoid", _f64(lambda x: 1 / (1 + np.exp(-x)))),
    _unary_record("erf", _f64(_erf64)),
    _unary_record("gelu", _f64(_gelu_tanh)),
    _unary_record("gelu_erf", _f64(lambda x: 0.5 * x * (1 + _erf64(x / np.sqrt(2))))),
    _unary_record("relu", _f64(lambda x: np.where(x > 0, x, np.where(np.isnan(x), x, 0.0)))),
    _unary_record("relu", lambda x: np.maximum(x.astype(np.int64), 0), _I32, shapes=UNARY_SHAPES[:2]),
    _unary_record("square", _f64(np.square)),
    _unary_record("square", _ints(lambda a: a * a), _I32 + _U8, shapes=UNARY_SHAPES[:2]),
    _unary_record("reciprocal", _f64(lambda x: 1 / x)),
    _unary_record("floor", _f64(np.floor)),
    _unary_record("ceil", _f64(np.ceil)),
    _unary_record("round", _f64(lambda x: np.vectorize(lambda v: float(round(v)) if np.isfinite(v) else v)(x)
                                if x.size else x)),
    _unary_record("trunc", _f64(np.trunc)),
    _unary_record("floor", lambda x: x, _I32, shapes=UNARY_SHAPES[:1]),
    _unary_record("is_finite", lambda x: np.isfinite(x.astype(np.float64))),
    _unary_record("is_nan", lambda x: np.isnan(x.astype(np.float64))),
    _unary_record("is_inf", lambda x: np.isinf(x.astype(np.float64))),
    _unary_record("is_finite", lambda x: np.ones(x.shape, bool), _I32, shapes=UNARY_SHAPES[:1]),
    _unary_record("logical_not", lambda x: x.astype(np.float64) == 0, (sp.bool_, sp.float32)),
    _unary_record("bitwise_not", _ints(lambda a: ~a), _I32 + _U8, make_input=wide_ints),
    _unary_record("bitwise_not", lambda x: ~x.astype(bool), (sp.bool_,), shapes=UNARY_SHAPES[:1]),
    _unary_record("popcount", lambda x: np.array([bin(int(v) & 0xFFFFFFFF).count("1") for v in x.reshape(-1)],
                                                 np.int64).reshape(x.shape), _I32, make_input=wide_ints),
    _unary_record("count_leading_zeros",
                  lambda x: np.array([32 - (int(v) & 0xFFFFFFFF).bit_length() for v in x.reshape(-1)],
                                     np.int64).reshape(x.shape), _I32, make_input=wide_ints),
]

BINARY = [
    _binary_record("add", _f64(np.add)),
    _binary_record("add", _ints(lambda a, b: a + b), _I32 + _U8, shapes=FEW_BINARY_SHAPES),
    _binary_record("add", lambda a, b: a | b, (sp.bool_,), shapes=FEW_BINARY_SHAPES[:1], label=".bool"),
    _binary_record("add", _f64(np.add), (sp.float32,), input_dtypes=(sp.float16, sp.float32),
                   shapes=FEW_BINARY_SHAPES, label=".f16+f32"),
    _binary_record("add", _f64(np.add), (sp.float16,), input_dtypes=(sp.int8, sp.float16),
                   shapes=FEW_BINARY_SHAPES[:1], label=".i8+f16"),
    _binary_record("add", _ints(lambda a, b: a + b, out=np.int64), (sp.int64,), input_dtypes=(sp.int32, sp.int64),
                   shapes=FEW_BINARY_SHAPES[:1], label=".i32+i64"),
    _binary_record("sub", _f64(np.subtract)),
    _binary_record("sub", _ints(lambda a, b: a - b), _I32 + _U8, shapes=FEW_BINARY_SHAPES),
    _binary_record("mul", _f64(np.multiply)),
    _binary_record("mul", _ints(lambda a, b: a * b), _I32 + _U8, shapes=FEW_BINARY_SHAPES),
    _binary_record("div", _f64(np.divide)),
    _binary_record("div", _ints(_trunc_div), _I32 + (sp.int8,), nonzero_ints, FEW_BINARY_SHAPES),
    _binary_record("pow", _f64(np.power), tolerance={sp.float32: (1e-5, 1e-5)}),
    _binary_record("pow", _ints(_int_pow), _I32, lambda r, s, d, i: r.integers(-3, 4 if i else 6, size=s).astype(d.numpy),
                   FEW_BINARY_SHAPES),
    _binary_record("rem", _f64(np.fmod)),
    _binary_record("rem", _ints(_c_fmod), _I32, nonzero_ints, FEW_BINARY_SHAPES),
    _binary_record("remainder", _f64(np.mod)),
    _binary_record("remainder", _ints(lambda a, b: a % b if b else 0), _I32, nonzero_ints, FEW_BINARY_SHAPES),
    _binary_record("maximum", _f64(lambda a, b: np.where(np.isnan(a) | np.isnan(b), np.nan, np.where(a > b, a, b)))),
    _binary_record("maximum", _ints(max), _I32, shapes=FEW_BINARY_SHAPES),
    _binary_record("minimum", _f64(lambda a, b: np.where(np.isnan(a) | np.isnan(b), np.nan, np.where(a < b, a, b)))),
    _binary_record("minimum", _ints(min), _I32 + _U8, shapes=FEW_BINARY_SHAPES),
    _binary_record("atan2", _f64(np.arctan2)),
    _binary_record("shift_left", _ints(_shift_left(32)), _I32, shift_amounts, FEW_BINARY_SHAPES),
    _binary_record("shift_left", _ints(_shift_left(8)), (sp.int8,), shift_amounts, FEW_BINARY_SHAPES[:1]),
    _binary_record("shift_right_arithmetic", _ints(_shift_right_arith(32)), _I32, shift_amounts, FEW_BINARY_SHAPES),
    _binary_record("shift_right_logical", _ints(_shift_right_logical(32)), _I32, shift_amounts, FEW_BINARY_SHAPES),
    _binary_record("shift_right_logical", _ints(_shift_right_logical(16)), (sp.uint16,), shift_amounts,
                   FEW_BINARY_SHAPES[:1]),
]
for _name, _fn in (("eq", np.equal), ("ne", np.not_equal), ("lt", np.less), ("le", np.less_equal),
                   ("gt", np.greater), ("ge", np.greater_equal)):
    BINARY.append(_binary_record(_name, lambda a, b, _fn=_fn: _fn(a.astype(np.float64), b.astype(np.float64)),
                                 F32 + (sp.int32, sp.float16), shapes=FEW_BINARY_SHAPES))
for _name, _fn in (("logical_and", np.logical_and), ("logical_or", np.logical_or),
                   ("logical_xor", np.logical_xor)):
    BINARY.append(_binary_record(_name, lambda a, b, _fn=_fn: _fn(a != 0, b != 0), (sp.bool_, sp.float32),
                                 shapes=FEW_BINARY_SHAPES))
for _name, _fn in (("bitwise_and", lambda a, b: a & b), ("bitwise_or", lambda a, b: a | b),
                   ("bitwise_xor", lambda a, b: a ^ b)):
    BINARY.append(_binary_record(_name, _ints(_fn), _I32 + _U8, wide_ints, FEW_BINARY_SHAPES))
    BINARY.append(_binary_record(_name, lambda a, b, _fn=_fn: _fn(a.astype(bool), b.astype(bool)), (sp.bool_,),
                                 shapes=FEW_BINARY_SHAPES[:1], label=".bool"))

SCALAR_OPERANDS = [
    OpRecord("elementwise.mul.number", lambda g, x, p: ew.mul(g, x, 2.5, p), _f64(lambda x: x * 2.5),
             (((7, 13),), ((1000,),), ((4,),)), F),
    OpRecord("elementwise.sub.number_first", lambda g, x, p: ew.sub(g, 1, x, p), _ints(lambda a: 1 - a),
             UNARY_SHAPES[:2], _I32 + _U8),
    OpRecord("elementwise.div.int_by_float", lambda g, x, p: ew.div(g, x, 2.0, p), lambda x: (x / 2.0).astype(np.float32),
             UNARY_SHAPES[:2], (sp.int16,)),
]

TERNARY = [
    OpRecord("elementwise.where", ew.where, lambda c, a, b: np.where(c, a, b),
             (((7, 13), (7, 13), (13,)), ((9, 1), (1, 6), ()), ((1000,), (1000,), (1000,)),
              ((3, 5, 4), (5, 1), (4,))), F + (sp.int32,), edges, input_dtypes=(sp.bool_,), exact=True),
    OpRecord("elementwise.where.numbers", lambda g, c, a, p: ew.where(g, c, a, 0.0, p),
             lambda c, a: np.where(c, a, 0).astype(a.dtype), (((7, 13), (13,)), ((2, 3), (2, 3))), F,
             edges, input_dtypes=(sp.bool_,), exact=True),
    OpRecord("elementwise.clamp", ew.clamp,
             _f64(lambda x, lo, hi: np.where(np.isnan(x), x, np.minimum(np.maximum(x, lo), hi))),
             (((7, 13), (13,), (7, 1)), ((1000,), (), ()), ((3, 5, 4), (4,), ())), F),
    OpRecord("elementwise.clamp.numbers", lambda g, x, p: ew.clamp(g, x, -1, 1.5, p),
             _f64(lambda x: np.where(np.isnan(x), x, np.clip(x, -1, 1.5))), UNARY_SHAPES[:2] + (((4, 3),),), F),
    OpRecord("elementwise.clamp.int", lambda g, x, p: ew.clamp(g, x, -10, 20, p),
             lambda x: np.clip(x.astype(np.int64), -10, 20), UNARY_SHAPES[:2], _I32),
]

MAPS = [
    OpRecord("elementwise.map.axpy", lambda g, a, b, p: ew.map(g, E.add(E.input(0), E.mul(E.input(1), 2.0)), [a, b], p),
             _f64(lambda a, b: a + b * 2.0), BINARY_SHAPES[:5] + (((4, 3), (3,)),), F),
    OpRecord("elementwise.map.three_inputs",
             lambda g, a, b, c, p: ew.map(g, E.select(E.gt(E.input(0), 0.0), E.mul(E.input(1), E.input(2)),
                                                      E.neg(E.input(2))), [a, b, c], p),
             _f64(lambda a, b, c: np.where(a > 0, b * c, -c)),
             (((7, 13), (13,), (7, 1)), ((1000,), (), (1000,)), ((3, 5, 4), (4,), (5, 1))), F),
    OpRecord("elementwise.map.mixed_dtypes",
             lambda g, a, b, p: ew.map(g, E.sigmoid(E.add(E.input(0), E.cast(E.input(1), sp.float32))), [a, b], p),
             lambda a, b: (1 / (1 + np.exp(-(a.astype(np.float64) + b.astype(np.float32).astype(np.float64)))))
             .astype(np.float32),
             (((7, 13), (13,)), ((5, 4), (5, 4))), F32, edges, input_dtypes=(sp.float32, sp.float16)),
    OpRecord("elementwise.map.constant_only", lambda g, p: ew.map(g, E.mul(E.const(3), 4), [], p),
             lambda: np.array(12, np.int32), ((),), F32),
    OpRecord("elementwise.map.int_chain",
             lambda g, a, b, p: ew.map(g, E.bitwise_and(E.add(E.input(0), E.input(1)), 7), [a, b], p),
             _ints(lambda a, b: (a + b) & 7), FEW_BINARY_SHAPES, _I32),
]

INPLACE = [
    OpRecord("elementwise.add_", ew.add_, _f64(np.add), (((7, 13), (13,)), ((1000,), ()), ((7, 13), (7, 13)),
                                                          ((3, 5, 4), (5, 1))), F),
    OpRecord("elementwise.mul_.broadcast_rows", ew.mul_, _f64(np.multiply), (((9, 6), (9, 1)), ((4, 5), (4, 1))), F),
    OpRecord("elementwise.sub_.int", ew.sub_, _ints(lambda a, b: a - b), FEW_BINARY_SHAPES, _I32),
    OpRecord("elementwise.add_.f16_plus_f32", ew.add_, lambda a, b: (a.astype(np.float64) + b).astype(np.float16),
             (((7, 13), (13,)), ((5,), (5,))), (sp.float16,), input_dtypes=(sp.float16, sp.float32)),
    OpRecord("elementwise.exp_", ew.exp_, _f64(np.exp), UNARY_SHAPES, F),
    OpRecord("elementwise.relu_", ew.relu_, _f64(lambda x: np.where(x > 0, x, np.where(np.isnan(x), x, 0.0))),
             UNARY_SHAPES[:2] + (((4, 3),),), F),
    OpRecord("elementwise.clamp_", lambda g, x, p: ew.clamp_(g, x, -0.5, 0.5, p),
             _f64(lambda x: np.where(np.isnan(x), x, np.clip(x, -0.5, 0.5))), UNARY_SHAPES[:2] + (((4, 3),),), F),
    OpRecord("elementwise.map_", lambda g, a, b, p: ew.map_(g, E.add(E.input(0), E.square(E.input(1))), [a, b], p),
             _f64(lambda a, b: a + b * b), (((7, 13), (13,)), ((1000,), (1000,)), ((4, 3), ())), F),
    OpRecord("elementwise.shift_left_", ew.shift_left_, _ints(_shift_left(32)), FEW_BINARY_SHAPES, _I32,
             shift_amounts),
]


def _cast_oracle(to):
    def oracle(x):
        x64 = x.astype(np.float64)
        if to.kind == "b":
            return x != 0
        if x.dtype.kind == "f" and to.kind in "iu":
            info = np.iinfo(to)
            out = np.array([0 if math.isnan(v) else info.max if v >= info.max else info.min if v <= info.min
                            else int(v) for v in x64.reshape(-1)], dtype=object)
            return out.reshape(x.shape).astype(to)
        if x.dtype.kind in "iub" and to.kind in "iu":
            return _ints(lambda a: a, out=to)(x)
        return x64.astype(to)
    return oracle


def _big_floats(rng, shape, dtype, i):
    x = edges(rng, shape, dtype, i)
    return (x * (1e3 if dtype is sp.float16 else 1e9)).astype(dtype.numpy)


CASTS = [
    OpRecord(f"elementwise.cast.{src.name}_to_{dst.name}", lambda g, x, p, dst=dst: ew.cast(g, x, dst, p),
             _cast_oracle(dst.numpy), UNARY_SHAPES, (src,), make, exact=True)
    for src, dst, make in (
        (sp.float32, sp.float16, edges), (sp.float16, sp.float32, edges), (sp.float32, sp.int32, _big_floats),
        (sp.float32, sp.uint8, _big_floats), (sp.float32, sp.int64, _big_floats), (sp.float16, sp.int16, _big_floats),
        (sp.int32, sp.float32, wide_ints), (sp.int32, sp.int8, wide_ints), (sp.int32, sp.uint16, wide_ints),
        (sp.float32, sp.bool_, edges), (sp.bool_, sp.float32, default_input), (sp.uint8, sp.int32, wide_ints))
] + [
    OpRecord("elementwise.cast.stochastic", lambda g, x, p: ew.cast(g, x, sp.float16, p,
                                                                    options={"stochasticRounding": True, "seed": 7}),
             lambda x: x.astype(np.float16), UNARY_SHAPES, F32, tolerance={sp.float32: (2e-3, 1e-7)}),
]

RECORDS: list[OpRecord] = UNARY + BINARY + SCALAR_OPERANDS + TERNARY + MAPS + INPLACE + CASTS
