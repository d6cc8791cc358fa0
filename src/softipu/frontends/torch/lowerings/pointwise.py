"""Lowerings of Core ATen's elementwise ops onto ``softipu.ops.elementwise``.

Dtypes follow torch: arithmetic works in the node's result dtype (operands are cast to it, so
``int_tensor / 2`` divides floats), comparisons in the operands' promoted dtype. Ops the library
has no unary for (``asin``, ``sinh``, ``log2``...) are fused ``map`` expressions of library ops,
one compute set each.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from softipu.dtypes import bool_, int32
from softipu.frontends.torch.registry import register_lowering
from softipu.graph.tensor import Tensor
from softipu.ops import elementwise as ew
from softipu.ops.elementwise import E

__all__: list[str] = []


def _meta_like(value: Any) -> Any:
    """A tiny real tensor (or the number) with the dtype and dim category of an FX argument."""
    if isinstance(value, torch.Tensor):
        return torch.empty(() if value.ndim == 0 else (0,), dtype=value.dtype)
    return value


def promoted(ctx: Any, *positions: int) -> Any:
    """The device dtype torch computes a comparison of the node's args at ``positions`` in."""
    metas = [_meta_like(ctx.arg_meta(i)) for i in positions]
    dtype = torch.result_type(metas[0], metas[1]) if len(metas) > 1 else metas[0].dtype
    return ctx.dtype(dtype)


def _cast_all(ctx: Any, dtype: Any, *values: Any) -> list[Any]:
    return [ctx.cast(v, dtype) if isinstance(v, Tensor) else v for v in values]


def _map(ctx: Any, expr: Any, inputs: list[Tensor], suffix: str = "") -> Tensor:
    return ordered(lambda *ts: ew.map(ctx.graph, expr, list(ts), ctx.prog, name=f"{ctx.name}{suffix}"),
                   *inputs)


def _steps(t: Tensor) -> tuple[int, ...]:
    """Address step along each axis: the strides, or for an indexed view the step from its first
    element (indexed views from reshaping permuted tensors are mostly strided piecewise)."""
    if t.is_strided:
        return t.strides
    first = t.first_address()  # a grouped view's elements are found from its structure, no index
    return tuple(t[(0,) * a + (1,) + (0,) * (t.ndim - a - 1)].first_address() - first if n > 1 else 0
                 for a, n in enumerate(t.shape))


def ordered(fn: Any, *operands: Any) -> Any:
    """``fn(*operands)`` computed in the memory order of the first full-size operand.

    A matmul may return its result as a transposed view; an elementwise op over it (a bias add)
    would then read and write across the tiles element by element. Permuting every operand so the
    first one is row-major, and the result back, keeps the work on the tiles that hold the data
    (the same op, the same values; a view, no copy).
    """
    tensors = [t for t in operands if isinstance(t, Tensor)]
    if not tensors:
        return fn(*operands)
    ndim = max(t.ndim for t in tensors)
    shape = tuple(max(t.shape[i - ndim + t.ndim] if i - ndim + t.ndim >= 0 else 1 for t in tensors)
                  for i in range(ndim))
    lead = next((t for t in tensors if t.shape == shape), None)
    if lead is None or ndim < 2 or lead.numel < 2:
        return fn(*operands)
    steps = _steps(lead)
    perm = sorted(range(ndim), key=lambda a: (-abs(steps[a]) if lead.shape[a] > 1 else 0, a))
    if perm == list(range(ndim)) or all(lead.shape[a] == 1 for a in perm[:-1]):
        return fn(*operands)
    moved = [t.reshape((1,) * (ndim - t.ndim) + t.shape).transpose(perm) if isinstance(t, Tensor) else t
             for t in operands]
    inverse = [perm.index(a) for a in range(ndim)]
    return fn(*moved).transpose(inverse)


X = E.input(0)


# -- unary -------------------------------------------------------------------------------------------
_UNARY = {
    "abs": ew.abs, "neg": ew.neg, "sign": ew.sign, "exp": ew.exp, "expm1": ew.expm1, "log": ew.log,
    "log1p": ew.log1p, "sqrt": ew.sqrt, "rsqrt": ew.rsqrt, "sin": ew.sin, "cos": ew.cos,
    "tan": ew.tan, "tanh": ew.tanh, "sigmoid": ew.sigmoid, "erf": ew.erf, "relu": ew.relu,
    "reciprocal": ew.reciprocal, "floor": ew.floor, "ceil": ew.ceil, "round": ew.round,
    "trunc": ew.trunc, "isnan": ew.is_nan, "isinf": ew.is_inf, "isfinite": ew.is_finite,
    "square": ew.square,
}


def _unary(op: Any) -> Any:
    def lower(ctx: Any, node: Any, x: Tensor) -> Tensor:
        # Predicates read the input's dtype; other ops work in the result's (exp of ints is float).
        out = ctx.out_dtype()
        if out is not bool_:
            x = ctx.cast(x, out)
        elif x.dtype is bool_:  # isnan, isinf, sign of a bool: the library takes numbers, 0 or 1
            x = ctx.cast(x, int32)
        return ctx.cast(ordered(lambda x: op(ctx.graph, x, ctx.prog, name=ctx.name), x), out)
    return lower


for _name, _op in _UNARY.items():
    register_lowering(f"aten::{_name}", _unary(_op))

# Fused expressions of library ops, for unaries the library has no codelet for.
_COMPOSED = {
    "log2": E.mul(E.log(X), 1.0 / math.log(2.0)),
    "log10": E.mul(E.log(X), 1.0 / math.log(10.0)),
    "exp2": E.exp(E.mul(X, math.log(2.0))),
    "atan": E.atan2(X, 1.0),
    "asin": E.atan2(X, E.sqrt(E.mul(E.sub(1.0, X), E.add(1.0, X)))),
    "acos": E.atan2(E.sqrt(E.mul(E.sub(1.0, X), E.add(1.0, X))), X),
    "sinh": E.mul(E.sub(E.expm1(X), E.expm1(E.neg(X))), 0.5),
    "cosh": E.mul(E.add(E.exp(X), E.exp(E.neg(X))), 0.5),
    "atanh": E.mul(E.sub(E.log1p(X), E.log1p(E.neg(X))), 0.5),
    "asinh": E.mul(E.sign(X), E.log1p(E.add(E.abs(X), E.div(E.square(X),
                                                             E.add(1.0, E.sqrt(E.add(E.square(X), 1.0))))))),
    "acosh": E.log(E.add(X, E.sqrt(E.mul(E.sub(X, 1.0), E.add(X, 1.0))))),
    "silu": E.mul(X, E.sigmoid(X)),
    "hardsigmoid": E.clamp(E.add(E.div(X, 6.0), 0.5), 0.0, 1.0),
    "hardswish": E.mul(X, E.clamp(E.add(E.div(X, 6.0), 0.5), 0.0, 1.0)),
    "mish": E.mul(X, E.tanh(E.log1p(E.exp(X)))),
}


def _composed(expr: Any) -> Any:
    def lower(ctx: Any, node: Any, x: Tensor) -> Tensor:
        return _map(ctx, expr, [ctx.cast(x, ctx.out_dtype())])
    return lower


for _name, _expr in _COMPOSED.items():
    register_lowering(f"aten::{_name}", _composed(_expr))


@register_lowering("aten::logical_not")
def _logical_not(ctx: Any, node: Any, x: Tensor) -> Tensor:
    return ordered(lambda x: ew.logical_not(ctx.graph, x, ctx.prog, name=ctx.name), x)


@register_lowering("aten::bitwise_not")
def _bitwise_not(ctx: Any, node: Any, x: Tensor) -> Tensor:
    op = ew.logical_not if x.dtype is bool_ else ew.bitwise_not
    return ordered(lambda x: op(ctx.graph, x, ctx.prog, name=ctx.name), x)


@register_lowering("aten::round.decimals")
def _round_decimals(ctx: Any, node: Any, x: Tensor, *, decimals: int = 0) -> Tensor:
    scale = 10.0 ** decimals
    return _map(ctx, E.div(E.round(E.mul(X, scale)), scale), [ctx.cast(x, ctx.out_dtype())])


@register_lowering("aten::gelu")
def _gelu(ctx: Any, node: Any, x: Tensor, *, approximate: str = "none") -> Tensor:
    op = ew.gelu if approximate == "tanh" else ew.gelu_erf
    return ordered(lambda x: op(ctx.graph, x, ctx.prog, name=ctx.name), ctx.cast(x, ctx.out_dtype()))


@register_lowering("aten::leaky_relu")
def _leaky_relu(ctx: Any, node: Any, x: Tensor, negative_slope: float = 0.01) -> Tensor:
    return _map(ctx, E.select(E.gt(X, 0.0), X, E.mul(X, float(negative_slope))), [x])


@register_lowering("aten::elu")
def _elu(ctx: Any, node: Any, x: Tensor, alpha: float = 1.0, scale: float = 1.0,
         input_scale: float = 1.0) -> Tensor:
    # expm1 of min(x, 0): the positive lanes are not selected, and exp of them could overflow (and trap)
    neg = E.mul(E.expm1(E.mul(E.minimum(X, 0.0), float(input_scale))), float(alpha) * float(scale))
    return _map(ctx, E.select(E.gt(X, 0.0), E.mul(X, float(scale)), neg), [x])


@register_lowering("aten::hardtanh")
def _hardtanh(ctx: Any, node: Any, x: Tensor, min_val: float = -1.0, max_val: float = 1.0) -> Tensor:
    lo, hi = float(min_val), float(max_val)
    return ordered(lambda x: ew.clamp(ctx.graph, x, lo, hi, ctx.prog, name=ctx.name), x)


# -- binary ------------------------------------------------------------------------------------------
def _arith(op: Any) -> Any:
    def lower(ctx: Any, node: Any, a: Any, b: Any) -> Tensor:
        a, b = _cast_all(ctx, ctx.out_dtype(), a, b)
        return ordered(lambda a, b: op(ctx.graph, a, b, ctx.prog, name=ctx.name), a, b)
    return lower


def _compare(op: Any) -> Any:
    def lower(ctx: Any, node: Any, a: Any, b: Any) -> Tensor:
        a, b = _cast_all(ctx, promoted(ctx, 0, 1), a, b)
        return ordered(lambda a, b: op(ctx.graph, a, b, ctx.prog, name=ctx.name), a, b)
    return lower


for _name, _op in {"mul": ew.mul, "maximum": ew.maximum, "minimum": ew.minimum, "atan2": ew.atan2,
                   "remainder": ew.remainder, "fmod": ew.rem}.items():
    register_lowering(f"aten::{_name}", _arith(_op))
for _name, _op in {"eq": ew.eq, "ne": ew.ne, "lt": ew.lt, "le": ew.le, "gt": ew.gt, "ge": ew.ge,
                   "logical_and": ew.logical_and, "logical_or": ew.logical_or,
                   "logical_xor": ew.logical_xor}.items():
    register_lowering(f"aten::{_name}", _compare(_op))


def _bitwise(op: Any, logical: Any) -> Any:
    def lower(ctx: Any, node: Any, a: Any, b: Any) -> Tensor:
        dtype = ctx.out_dtype()
        a, b = _cast_all(ctx, dtype, a, b)
        fn = logical if dtype is bool_ else op
        return ordered(lambda a, b: fn(ctx.graph, a, b, ctx.prog, name=ctx.name), a, b)
    return lower


for _name, (_op, _logical) in {"bitwise_and": (ew.bitwise_and, ew.logical_and),
                               "bitwise_or": (ew.bitwise_or, ew.logical_or),
                               "bitwise_xor": (ew.bitwise_xor, ew.logical_xor)}.items():
    register_lowering(f"aten::{_name}", _bitwise(_op, _logical))


def _scaled(ctx: Any, op: Any, a: Any, b: Any, alpha: Any) -> Tensor:
    a, b = _cast_all(ctx, ctx.out_dtype(), a, b)
    if alpha != 1:
        if not isinstance(b, Tensor):
            b = b * alpha
        elif not isinstance(a, Tensor):
            return _map(ctx, op(E.const(a), E.mul(E.input(0), alpha)), [b])
        else:
            return _map(ctx, op(E.input(0), E.mul(E.input(1), alpha)), [a, b])
    fn = ew.add if op is E.add else ew.sub
    return ordered(lambda a, b: fn(ctx.graph, a, b, ctx.prog, name=ctx.name), a, b)


@register_lowering("aten::add")
def _add(ctx: Any, node: Any, a: Any, b: Any, alpha: Any = 1) -> Tensor:
    return _scaled(ctx, E.add, a, b, alpha)


@register_lowering("aten::sub")
def _sub(ctx: Any, node: Any, a: Any, b: Any, alpha: Any = 1) -> Tensor:
    return _scaled(ctx, E.sub, a, b, alpha)


@register_lowering("aten::rsub")
def _rsub(ctx: Any, node: Any, a: Any, b: Any, alpha: Any = 1) -> Tensor:
    return _scaled(ctx, E.sub, b, a, alpha)  # b - alpha * a


@register_lowering("aten::div")
def _div(ctx: Any, node: Any, a: Any, b: Any, rounding_mode: str | None = None) -> Tensor:
    dtype = ctx.out_dtype()
    a, b = _cast_all(ctx, dtype, a, b)
    g, prog = ctx.graph, ctx.prog
    if rounding_mode is None or (rounding_mode == "trunc" and not dtype.is_float):
        # true division; integers truncate (C)
        return ordered(lambda a, b: ew.div(g, a, b, prog, name=ctx.name), a, b)
    tensors = [v for v in (a, b) if isinstance(v, Tensor)]
    ea = E.input(0) if isinstance(a, Tensor) else E.const(a)
    eb = E.input(len(tensors) - 1) if isinstance(b, Tensor) else E.const(b)
    if dtype.is_float:
        fn = E.trunc if rounding_mode == "trunc" else E.floor
        return _map(ctx, fn(E.div(ea, eb)), tensors)
    # Integer floor division: C's truncating quotient, one lower where the signs differ and the
    # division is inexact.
    inexact = E.logical_and(E.ne(E.rem(ea, eb), 0), E.ne(E.lt(ea, 0), E.lt(eb, 0)))
    return _map(ctx, E.sub(E.div(ea, eb), E.cast(inexact, dtype)), tensors)


@register_lowering("aten::pow")
def _pow(ctx: Any, node: Any, a: Any, b: Any) -> Tensor:
    dtype = ctx.out_dtype()
    a, b = _cast_all(ctx, dtype, a, b)
    g, prog, name = ctx.graph, ctx.prog, ctx.name
    if isinstance(a, Tensor) and not isinstance(b, Tensor) and dtype.is_float:
        special = {2: ew.square, 0.5: ew.sqrt, -0.5: ew.rsqrt, -1: ew.reciprocal}.get(b)
        if special is not None:
            return special(g, a, prog, name=name)
        if b == 1:
            return a
        b = float(b)
    return ordered(lambda a, b: ew.pow(g, a, b, prog, name=name), a, b)


@register_lowering("aten::where.self")
def _where(ctx: Any, node: Any, cond: Tensor, a: Any, b: Any) -> Tensor:
    a, b = _cast_all(ctx, ctx.out_dtype(), a, b)
    cond = ctx.cast(cond, bool_)
    if not isinstance(a, Tensor) and not isinstance(b, Tensor):
        a = ctx.constant(a, ctx.out_dtype(), (), "a")
    return ordered(lambda c, a, b: ew.where(ctx.graph, c, a, b, ctx.prog, name=ctx.name), cond, a, b)


@register_lowering("aten::where.ScalarSelf")
def _where_scalar_self(ctx: Any, node: Any, cond: Tensor, a: Any, b: Any) -> Tensor:
    return _where(ctx, node, cond, a, b)


@register_lowering("aten::where.ScalarOther")
def _where_scalar_other(ctx: Any, node: Any, cond: Tensor, a: Any, b: Any) -> Tensor:
    return _where(ctx, node, cond, a, b)


@register_lowering("aten::clamp")
def _clamp(ctx: Any, node: Any, x: Tensor, min: Any = None, max: Any = None) -> Tensor:  # noqa: A002
    dtype = ctx.out_dtype()
    x, lo, hi = _cast_all(ctx, dtype, x, min, max)
    g, prog, name = ctx.graph, ctx.prog, ctx.name
    if lo is not None and hi is not None:
        return ordered(lambda x, lo, hi: ew.clamp(g, x, lo, hi, prog, name=name), x, lo, hi)
    if lo is not None:
        return ordered(lambda x, lo: ew.maximum(g, x, lo, prog, name=name), x, lo)
    if hi is not None:
        return ordered(lambda x, hi: ew.minimum(g, x, hi, prog, name=name), x, hi)
    return x


@register_lowering("aten::clamp_min")
def _clamp_min(ctx: Any, node: Any, x: Tensor, lo: Any) -> Tensor:
    return _clamp(ctx, node, x, lo, None)


@register_lowering("aten::clamp_max")
def _clamp_max(ctx: Any, node: Any, x: Tensor, hi: Any) -> Tensor:
    return _clamp(ctx, node, x, None, hi)
