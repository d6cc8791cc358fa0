"""ONNX elementwise ops (unary, binary, variadic, activations, casts) onto ``softipu.ops.elementwise``:
each node is one ``map`` (one compute set), its activation formula written as an expression."""

from __future__ import annotations

from functools import reduce
from typing import Any

import numpy as np

from softipu.dtypes import bool_, float32
from softipu.frontends.onnx.registry import register_onnx_lowering
from softipu.graph.tensor import Tensor
from softipu.ops import elementwise as ew
from softipu.ops.elementwise import E

X, Y = E.input(0), E.input(1)


def _map(ctx: Any, expr: Any, inputs: list[Tensor]) -> Tensor:
    return ew.map(ctx.graph, expr, inputs, ctx.prog, name=ctx.name)


def _unary(expr: Any) -> Any:
    def lower(ctx: Any, node: Any) -> Tensor:
        return _map(ctx, expr(ctx) if callable(expr) else expr, [ctx.input(0)])
    return lower


_UNARY = {
    "Abs": E.abs(X), "Neg": E.neg(X), "Sign": E.sign(X), "Exp": E.exp(X), "Log": E.log(X),
    "Sqrt": E.sqrt(X), "Reciprocal": E.reciprocal(X), "Floor": E.floor(X), "Ceil": E.ceil(X),
    "Round": E.round(X), "Sin": E.sin(X), "Cos": E.cos(X), "Tan": E.tan(X), "Tanh": E.tanh(X),
    "Sigmoid": E.sigmoid(X), "Erf": E.erf(X), "Relu": E.relu(X), "Not": E.logical_not(X),
    "BitwiseNot": E.bitwise_not(X), "IsNaN": E.is_nan(X),
    "Atan": E.atan2(X, 1.0),
    "Asin": E.atan2(X, E.sqrt(E.sub(1.0, E.square(X)))),
    "Acos": E.atan2(E.sqrt(E.sub(1.0, E.square(X))), X),
    "Sinh": E.mul(0.5, E.sub(E.exp(X), E.exp(E.neg(X)))),
    "Cosh": E.mul(0.5, E.add(E.exp(X), E.exp(E.neg(X)))),
    "Asinh": E.log(E.add(X, E.sqrt(E.add(E.square(X), 1.0)))),
    "Acosh": E.log(E.add(X, E.sqrt(E.sub(E.square(X), 1.0)))),
    "Atanh": E.mul(0.5, E.log(E.div(E.add(1.0, X), E.sub(1.0, X)))),
    "Softsign": E.div(X, E.add(1.0, E.abs(X))),
    "Softplus": E.log1p(E.exp(X)),
    "HardSwish": E.mul(X, E.clamp(E.add(E.mul(X, 1 / 6), 0.5), 0.0, 1.0)),
    "Mish": E.mul(X, E.tanh(E.log1p(E.exp(X)))),
}
for _name, _expr in _UNARY.items():
    register_onnx_lowering(_name, _unary(_expr))

_ACTIVATIONS = {
    "LeakyRelu": lambda c: E.select(E.lt(X, 0.0), E.mul(X, float(c.attr("alpha", 0.01))), X),
    "Elu": lambda c: E.select(E.lt(X, 0.0), E.mul(float(c.attr("alpha", 1.0)), E.expm1(X)), X),
    "Celu": lambda c: E.add(E.maximum(X, 0.0), E.minimum(0.0, E.mul(float(c.attr("alpha", 1.0)), E.expm1(
        E.div(X, float(c.attr("alpha", 1.0))))))),
    "Selu": lambda c: E.mul(float(c.attr("gamma", 1.0507009873554805)), E.select(
        E.le(X, 0.0), E.mul(float(c.attr("alpha", 1.6732632423543772)), E.expm1(X)), X)),
    "HardSigmoid": lambda c: E.clamp(E.add(E.mul(X, float(c.attr("alpha", 0.2))), float(c.attr("beta", 0.5))),
                                     0.0, 1.0),
    "ThresholdedRelu": lambda c: E.select(E.gt(X, float(c.attr("alpha", 1.0))), X, 0.0),
    "Shrink": lambda c: E.select(E.lt(X, -float(c.attr("lambd", 0.5))), E.add(X, float(c.attr("bias", 0.0))),
                                 E.select(E.gt(X, float(c.attr("lambd", 0.5))),
                                          E.sub(X, float(c.attr("bias", 0.0))), 0.0)),
    "Gelu": lambda c: E.gelu(X) if c.attr("approximate", "none") == "tanh" else E.gelu_erf(X),
    "IsInf": lambda c: _is_inf(c),
    "Swish": lambda c: E.mul(X, E.sigmoid(E.mul(X, float(c.attr("alpha", 1.0))))),
}
for _name, _fn in _ACTIVATIONS.items():
    register_onnx_lowering(_name, _unary(_fn))


def _is_inf(ctx: Any) -> Any:
    pos, neg = int(ctx.attr("detect_positive", 1)), int(ctx.attr("detect_negative", 1))
    if pos and neg:
        return E.is_inf(X)
    if pos:
        return E.logical_and(E.is_inf(X), E.gt(X, 0.0))
    if neg:
        return E.logical_and(E.is_inf(X), E.lt(X, 0.0))
    return E.logical_and(E.is_inf(X), E.ne(X, X))


# -- binary ----------------------------------------------------------------------------------------
_BINARY = {
    "Add": E.add, "Sub": E.sub, "Mul": E.mul, "Equal": E.eq, "Less": E.lt, "LessOrEqual": E.le,
    "Greater": E.gt, "GreaterOrEqual": E.ge, "And": E.logical_and, "Or": E.logical_or,
    "Xor": E.logical_xor, "BitwiseAnd": E.bitwise_and, "BitwiseOr": E.bitwise_or, "BitwiseXor": E.bitwise_xor,
}


def _binary(fn: Any) -> Any:
    def lower(ctx: Any, node: Any) -> Tensor:
        return _map(ctx, fn(X, Y), [ctx.input(0), ctx.input(1)])
    return lower


for _name, _fn in _BINARY.items():
    register_onnx_lowering(_name, _binary(_fn))


@register_onnx_lowering("Div")
def _div(ctx: Any, node: Any) -> Tensor:
    a, b = ctx.input(0), ctx.input(1)
    if a.dtype.is_float:
        return _map(ctx, E.div(X, Y), [a, b])
    # integer division truncates toward zero (C, as onnxruntime)
    q = E.trunc(E.div(E.cast(X, float32), E.cast(Y, float32)))
    return _map(ctx, E.cast(q, a.dtype), [a, b])


@register_onnx_lowering("Pow")
def _pow(ctx: Any, node: Any) -> Tensor:
    a, b = ctx.input(0), ctx.input(1)
    if a.dtype.is_float:
        return _map(ctx, E.pow(X, E.cast(Y, a.dtype)), [a, b])
    return _map(ctx, E.cast(E.round(E.pow(E.cast(X, float32), E.cast(Y, float32))), a.dtype), [a, b])


@register_onnx_lowering("Mod")
def _mod(ctx: Any, node: Any) -> Tensor:
    fn = E.rem if int(ctx.attr("fmod", 0)) else E.remainder
    return _map(ctx, fn(X, Y), [ctx.input(0), ctx.input(1)])


@register_onnx_lowering("BitShift")
def _bit_shift(ctx: Any, node: Any) -> Tensor:
    """Shifts by the type's width or more saturate (0, or -1 for a negative value shifted right),
    as numpy and ONNX's tests define them; bits shifted out on the left are dropped."""
    x, y = ctx.input(0), ctx.input(1)
    bits = 8 * x.dtype.itemsize
    signed = x.dtype.numpy.kind == "i"
    out_of_range = E.logical_or(E.lt(Y, 0), E.ge(Y, bits)) if signed else E.ge(Y, bits)
    if ctx.attr("direction") == "LEFT":
        expr = E.select(out_of_range, E.cast(0, x.dtype), E.shift_left(X, Y))
    elif signed:
        expr = E.shift_right_arithmetic(X, E.select(out_of_range, E.cast(bits - 1, y.dtype), Y))
    else:
        expr = E.select(out_of_range, E.cast(0, x.dtype), E.shift_right_logical(X, Y))
    return _map(ctx, expr, [x, y])


@register_onnx_lowering("PRelu")
def _prelu(ctx: Any, node: Any) -> Tensor:
    return _map(ctx, E.select(E.lt(X, 0.0), E.mul(X, Y), X), [ctx.input(0), ctx.input(1)])


def _variadic(fn: Any, mean: bool = False) -> Any:
    def lower(ctx: Any, node: Any) -> Tensor:
        xs = [t for t in ctx.inputs() if t is not None]
        expr = reduce(fn, [E.input(i) for i in range(len(xs))])
        if len(xs) == 1:
            expr = E.add(expr, 0) if not mean else E.mul(expr, 1.0)
        if mean:
            expr = E.div(expr, float(len(xs)))
        return _map(ctx, expr, xs)
    return lower


register_onnx_lowering("Sum", _variadic(E.add))
register_onnx_lowering("Mean", _variadic(E.add, mean=True))
register_onnx_lowering("Max", _variadic(E.maximum))
register_onnx_lowering("Min", _variadic(E.minimum))


@register_onnx_lowering("Where")
def _where(ctx: Any, node: Any) -> Tensor:
    cond = ctx.cast(ctx.input(0), bool_)
    return _map(ctx, E.select(E.input(0), E.input(1), E.input(2)), [cond, ctx.input(1), ctx.input(2)])


@register_onnx_lowering("Clip")
def _clip(ctx: Any, node: Any) -> Tensor:
    x = ctx.input(0)
    if ctx.opset.get("", 13) < 11:
        lo, hi = ctx.attr("min"), ctx.attr("max")
        expr, inputs = X, [x]
        expr = E.maximum(expr, float(lo)) if lo is not None else expr
        expr = E.minimum(expr, float(hi)) if hi is not None else expr
        return _map(ctx, E.add(expr, 0) if expr is X else expr, inputs)
    inputs, expr = [x], X
    for i, fn in ((1, E.maximum), (2, E.minimum)):
        if ctx.has(i):
            inputs.append(ctx.input(i).reshape(()))
            expr = fn(expr, E.input(len(inputs) - 1))
    return _map(ctx, E.add(expr, 0) if expr is X else expr, inputs)


# -- casts -----------------------------------------------------------------------------------------
def _cast_check(ctx: Any) -> str | None:
    to = int(ctx.attr("to"))
    from softipu.frontends.onnx.lower import DEVICE_DTYPES  # noqa: PLC0415
    if to not in DEVICE_DTYPES:
        return f"cast to {ctx.attr('to')} ({_type_name(to)}): the IPU has no such dtype"
    return None


def _type_name(t: int) -> str:
    import onnx  # noqa: PLC0415
    return onnx.TensorProto.DataType.Name(t)


@register_onnx_lowering("Cast", check=_cast_check)
def _cast(ctx: Any, node: Any) -> Tensor:
    x = ctx.input(0)
    dtype = ctx.device_dtype(int(ctx.attr("to")))
    if x.dtype is dtype:
        return ctx.copy(x)
    return ew.cast(ctx.graph, x, dtype, ctx.prog, name=ctx.name)


@register_onnx_lowering("CastLike")
def _cast_like(ctx: Any, node: Any) -> Any:
    host = ctx.host(0)
    if host is not None:  # only input 1's type is read: the result is known while compiling
        import onnx  # noqa: PLC0415
        return np.asarray(host).astype(onnx.helper.tensor_dtype_to_np_dtype(ctx.elem_type(1)))
    x = ctx.input(0)
    dtype = ctx.device_dtype(ctx.elem_type(1))
    return ctx.copy(x) if x.dtype is dtype else ew.cast(ctx.graph, x, dtype, ctx.prog, name=ctx.name)


@register_onnx_lowering("Identity")
def _identity(ctx: Any, node: Any) -> Any:
    value = ctx.host(0)
    return value if value is not None else ctx.input(0)


@register_onnx_lowering("Constant")
def _constant(ctx: Any, node: Any) -> np.ndarray:
    for key in ("value", "value_float", "value_int", "value_floats", "value_ints"):
        value = ctx.attr(key)
        if value is not None:
            dtype = {"value_float": np.float32, "value_floats": np.float32, "value_int": np.int64,
                     "value_ints": np.int64}.get(key)
            return np.asarray(value, dtype=dtype)
    raise ValueError("a Constant node with no numeric value (strings and sparse tensors are not supported)")


@register_onnx_lowering("OptionalHasElement")
def _optional_has_element(ctx: Any, node: Any) -> np.ndarray:
    return np.array(ctx.has(0))  # a plain tensor input is always present


@register_onnx_lowering(("OptionalGetElement", "Optional"))
def _optional_get_element(ctx: Any, node: Any) -> Any:
    if not ctx.has(0):
        raise ValueError("an empty optional has no IPU meaning")
    value = ctx.host(0)
    return value if value is not None else ctx.input(0)
