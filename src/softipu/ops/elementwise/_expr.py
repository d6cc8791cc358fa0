"""The expression builder of ``map``: the op-name tables and :class:`E`."""

from __future__ import annotations

from typing import Any

import numpy as np

from softipu.codelets.elementwise import BinaryOp, Expr, ExprKind, TernaryOp, UnaryOp
from softipu.codelets.elementwise.special import BINARY_SPECIAL, UNARY_SPECIAL
from softipu.dtypes import as_dtype
from softipu.errors import DTypeError

Number = bool | int | float

UNARY_OPS: dict[str, UnaryOp] = {
    "abs": UnaryOp.ABSOLUTE, "neg": UnaryOp.NEGATE, "sign": UnaryOp.SIGNUM, "exp": UnaryOp.EXPONENT,
    "expm1": UnaryOp.EXPONENT_MINUS_ONE, "log": UnaryOp.LOGARITHM, "log1p": UnaryOp.LOGARITHM_ONE_PLUS,
    "sqrt": UnaryOp.SQRT, "rsqrt": UnaryOp.RSQRT, "cbrt": UnaryOp.CBRT, "sin": UnaryOp.SIN,
    "cos": UnaryOp.COS, "tan": UnaryOp.TAN, "tanh": UnaryOp.TANH, "sigmoid": UnaryOp.SIGMOID,
    "erf": UnaryOp.ERF, "gelu": UnaryOp.GELU, "gelu_erf": UnaryOp.GELU_ERF, "relu": UnaryOp.RELU,
    "square": UnaryOp.SQUARE, "reciprocal": UnaryOp.INVERSE, "floor": UnaryOp.FLOOR,
    "ceil": UnaryOp.CEIL, "round": UnaryOp.ROUND, "trunc": UnaryOp.TRUNC,
    "is_finite": UnaryOp.IS_FINITE, "is_nan": UnaryOp.IS_NAN, "is_inf": UnaryOp.IS_INF,
    "logical_not": UnaryOp.LOGICAL_NOT, "bitwise_not": UnaryOp.BITWISE_NOT,
    "popcount": UnaryOp.POPCOUNT, "count_leading_zeros": UnaryOp.COUNT_LEADING_ZEROS,
    **{name: UnaryOp[name.upper()] for name in (*UNARY_SPECIAL, "signbit")},
}
BINARY_OPS: dict[str, BinaryOp] = {
    "add": BinaryOp.ADD, "sub": BinaryOp.SUBTRACT, "mul": BinaryOp.MULTIPLY, "div": BinaryOp.DIVIDE,
    "pow": BinaryOp.POWER, "rem": BinaryOp.REMAINDER, "remainder": BinaryOp.MODULO,
    "maximum": BinaryOp.MAXIMUM, "minimum": BinaryOp.MINIMUM, "atan2": BinaryOp.ATAN2,
    "eq": BinaryOp.EQUAL, "ne": BinaryOp.NOT_EQUAL, "lt": BinaryOp.LESS_THAN,
    "le": BinaryOp.LESS_THAN_EQUAL, "gt": BinaryOp.GREATER_THAN, "ge": BinaryOp.GREATER_THAN_EQUAL,
    "logical_and": BinaryOp.LOGICAL_AND, "logical_or": BinaryOp.LOGICAL_OR,
    "logical_xor": BinaryOp.LOGICAL_XOR, "bitwise_and": BinaryOp.BITWISE_AND,
    "bitwise_or": BinaryOp.BITWISE_OR, "bitwise_xor": BinaryOp.BITWISE_XOR,
    "shift_left": BinaryOp.SHIFT_LEFT, "shift_right_logical": BinaryOp.SHIFT_RIGHT,
    "shift_right_arithmetic": BinaryOp.SHIFT_RIGHT_SIGN_EXTEND,
    **{name: BinaryOp[name.upper()] for name in BINARY_SPECIAL},
}


# -- the expression builder ------------------------------------------------------------------------
def _expr(v: Any) -> Expr:
    if isinstance(v, Expr):
        return v
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, (bool, int, float)):
        return Expr(ExprKind.CONST, value=v)
    raise DTypeError(f"expected an expression or a number, got {type(v).__name__}")


class E:
    """Builds ``map`` expressions: ``E.input(i)``, ``E.const(v)``, ``E.cast(e, dtype)``, one
    method per unary/binary op name of this module (``E.exp(e)``, ``E.add(a, b)``...) and
    ``E.select(cond, a, b)`` / ``E.where``, ``E.clamp(x, lo, hi)``. Numbers are constants.

    >>> from softipu.ops.elementwise import E
    >>> str(E.add(E.input(0), E.mul(E.input(1), 2.0)))
    'add(in0,multiply(in1,2.0))'
    """

    @staticmethod
    def input(index: int) -> Expr:
        return Expr(ExprKind.INPUT, index=index)

    @staticmethod
    def const(value: Number) -> Expr:
        return _expr(value)

    @staticmethod
    def cast(x: Any, dtype: Any) -> Expr:
        return Expr(ExprKind.CAST, args=(_expr(x),), dtype=as_dtype(dtype))

    @staticmethod
    def select(cond: Any, a: Any, b: Any) -> Expr:
        return Expr(ExprKind.TERNARY, TernaryOp.SELECT, (_expr(cond), _expr(a), _expr(b)))

    where = select

    @staticmethod
    def clamp(x: Any, lo: Any, hi: Any) -> Expr:
        return Expr(ExprKind.TERNARY, TernaryOp.CLAMP, (_expr(x), _expr(lo), _expr(hi)))


for _name, _op in UNARY_OPS.items():
    setattr(E, _name, staticmethod(lambda x, _op=_op: Expr(ExprKind.UNARY, _op, (_expr(x),))))
for _name, _op in BINARY_OPS.items():
    setattr(E, _name, staticmethod(lambda a, b, _op=_op: Expr(ExprKind.BINARY, _op, (_expr(a), _expr(b)))))
