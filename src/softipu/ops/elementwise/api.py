"""The public elementwise ops: ``map``/``map_``, ``cast``, the ternaries and one function per
unary/binary op name (and its in-place ``*_`` form). The package docstring has the rules."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from softipu.codelets.elementwise import Expr, ExprKind, Kinds, Result, TernaryOp
from softipu.dtypes import as_dtype, float16, float32
from softipu.errors import DTypeError
from softipu.graph import program as P
from softipu.graph.graph import Graph
from softipu.graph.tensor import Tensor
from softipu.ops.common import OpContext, parse_options
from softipu.ops.elementwise._driver import _bind, _run, _start
from softipu.ops.elementwise._expr import BINARY_OPS, UNARY_OPS, E, Number

__all__ = [
    "E", "map", "map_", "cast", "where", "select", "clamp", "clamp_",
    # unary
    "abs", "neg", "sign", "exp", "expm1", "log", "log1p", "sqrt", "rsqrt", "cbrt", "sin", "cos", "tan",
    "tanh", "sigmoid", "erf", "gelu", "gelu_erf", "relu", "square", "reciprocal", "floor", "ceil",
    "round", "trunc", "is_finite", "is_nan", "is_inf", "logical_not", "bitwise_not", "popcount",
    "count_leading_zeros",
    # binary
    "add", "sub", "mul", "div", "pow", "rem", "remainder", "maximum", "minimum", "atan2", "eq", "ne",
    "lt", "le", "gt", "ge", "logical_and", "logical_or", "logical_xor", "bitwise_and", "bitwise_or",
    "bitwise_xor", "shift_left", "shift_right_logical", "shift_right_arithmetic",
    # in place
    "abs_", "neg_", "sign_", "exp_", "expm1_", "log_", "log1p_", "sqrt_", "rsqrt_", "cbrt_", "sin_",
    "cos_", "tan_", "tanh_", "sigmoid_", "erf_", "gelu_", "gelu_erf_", "relu_", "square_",
    "reciprocal_", "floor_", "ceil_", "round_", "trunc_", "bitwise_not_", "add_", "sub_", "mul_",
    "div_", "pow_", "rem_", "remainder_", "maximum_", "minimum_", "atan2_", "bitwise_and_",
    "bitwise_or_", "bitwise_xor_", "shift_left_", "shift_right_logical_", "shift_right_arithmetic_",
]


def map(graph: Graph, expr: Expr, inputs: Sequence[Tensor], prog: P.Sequence, *, name: str = "",
        options: dict | None = None) -> Tensor:
    """Evaluate an expression tree elementwise in ONE compute set (popops::map).

    ``expr`` is built with :class:`E`; ``E.input(i)`` is ``inputs[i]``. Inputs broadcast
    together; dtypes follow the module's rules (casts are inserted where dtypes promote). The
    fused codelet's cycles are the sum of the nodes' inner loops per element. No options.

    >>> import numpy as np, softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops.elementwise import E, map
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=2)); prog = P.Sequence()
    >>> a = g.add_variable(sp.float32, (4,)); sp.ops.map_linearly(g, a)
    >>> y = map(g, E.add(E.input(0), E.mul(E.input(0), 2.0)), [a], prog)
    >>> eng = sp.Engine(g, [prog]); eng.write_tensor(a, [1, 2, 3, 4]); eng.run(0)
    >>> eng.read_tensor(y)
    array([ 3.,  6.,  9., 12.], dtype=float32)
    """
    ctx = _start_map(graph, prog, "map", name, expr, inputs)
    parse_options(ctx, options, {})
    return _run(ctx, expr, list(inputs))


def map_(graph: Graph, expr: Expr, inputs: Sequence[Tensor], prog: P.Sequence, *, name: str = "",
         options: dict | None = None) -> Tensor:
    """:func:`map` writing its result into ``inputs[0]`` (popops::mapInPlace); returns it.

    The result must have ``inputs[0]``'s shape and cast to its dtype (same kind). Other inputs
    that share elements with ``inputs[0]`` are copied first, so they are read as they were.
    """
    ctx = _start_map(graph, prog, "map_", name, expr, inputs)
    parse_options(ctx, options, {})
    if not inputs:
        raise ctx.error("map_ needs at least one input: the tensor to update")
    return _run(ctx, expr, list(inputs), inplace=True)


def _start_map(graph: Graph, prog: Any, op: str, name: str, expr: Any, inputs: Any) -> OpContext:
    if isinstance(inputs, Tensor) or not isinstance(inputs, Sequence):
        raise OpContext.start(graph, prog, op, name).error(
            f"inputs must be a list of tensors, got {type(inputs).__name__}")
    ctx = OpContext.start(graph, prog, op, name, *inputs)
    if not isinstance(expr, Expr):
        raise ctx.error(f"expr must be an expression built with E (E.add(E.input(0), ...)), got "
                        f"{type(expr).__name__}")
    return ctx


def cast(graph: Graph, x: Tensor, dtype: Any, prog: P.Sequence, *, name: str = "",
         options: dict | None = None) -> Tensor:
    """``x`` converted to ``dtype`` (popops::cast).

    Floats round to nearest even; float -> int truncates toward zero and saturates (NaN -> 0);
    to bool is ``x != 0``; int -> int wraps. Options:

    * ``stochasticRounding`` (bool, default False): float32 -> float16 rounds up or down with
      probability proportional to the distance (the IPU's hardware SR);
    * ``seed`` (int, default 0): the SR key. Element ``i`` of the output uses a counter-based hash
      of ``(seed, i)``, so results are bitwise reproducible whatever the tile count or batching.

    >>> import numpy as np, softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops.elementwise import cast
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=2)); prog = P.Sequence()
    >>> x = g.add_variable(sp.float32, (3,)); sp.ops.map_linearly(g, x)
    >>> y = cast(g, x, sp.int32, prog)
    >>> eng = sp.Engine(g, [prog]); eng.write_tensor(x, [2.7, -2.7, np.nan]); eng.run(0)
    >>> eng.read_tensor(y)
    array([ 2, -2,  0], dtype=int32)
    """
    ctx = OpContext.start(graph, prog, "cast", name, x)
    opts = parse_options(ctx, options, {"stochasticRounding": False, "seed": 0})
    try:
        dtype = as_dtype(dtype)
    except DTypeError as exc:
        raise ctx.error(str(exc)) from None
    seed = None
    if opts["stochasticRounding"]:
        if (x.dtype, dtype) != (float32, float16):
            raise ctx.error(f"stochasticRounding applies to float32 -> float16 casts, not {x.dtype} "
                            f"-> {dtype} ({x.name})")
        seed = int(opts["seed"])
    return _run(ctx, Expr(ExprKind.CAST, args=(Expr(ExprKind.INPUT),), dtype=dtype), [x], seed=seed)


def _ternary(graph: Graph, prog: Any, op_label: str, name: str, options: Any, op: TernaryOp,
             args: Sequence[Any], inplace: bool = False) -> Tensor:
    ctx = _start(graph, prog, op_label, name, args)
    parse_options(ctx, options, {})
    exprs, tensors = _bind(ctx, args)
    if inplace and not isinstance(args[0], Tensor):
        raise ctx.error("the first operand of an in-place op must be a tensor")
    return _run(ctx, Expr(ExprKind.TERNARY, op, tuple(exprs)), tensors, inplace=inplace)


def where(graph: Graph, cond: Tensor, a: Tensor | Number, b: Tensor | Number, prog: P.Sequence, *,
          name: str = "", options: dict | None = None) -> Tensor:
    """``cond ? a : b`` elementwise (numpy.where; popops SELECT). ``cond`` must be bool_.

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops.elementwise import where
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=2)); prog = P.Sequence()
    >>> c = g.add_variable(sp.bool_, (2, 3)); x = g.add_variable(sp.float16, (3,))
    >>> sp.ops.map_linearly(g, c); sp.ops.map_linearly(g, x)
    >>> y = where(g, c, x, 0.0, prog); y.shape, y.dtype
    ((2, 3), sp.float16)
    """
    return _ternary(graph, prog, "where", name, options, TernaryOp.SELECT, (cond, a, b))


def select(graph: Graph, cond: Tensor, a: Tensor | Number, b: Tensor | Number, prog: P.Sequence, *,
           name: str = "", options: dict | None = None) -> Tensor:
    """popops' name for :func:`where`, with numpy's argument order ``(cond, a, b)``."""
    return _ternary(graph, prog, "select", name, options, TernaryOp.SELECT, (cond, a, b))


def clamp(graph: Graph, x: Tensor, lo: Tensor | Number, hi: Tensor | Number, prog: P.Sequence, *,
          name: str = "", options: dict | None = None) -> Tensor:
    """``minimum(maximum(x, lo), hi)`` (torch.clamp: NaN stays NaN; ``lo > hi`` gives ``hi``).

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops.elementwise import clamp
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=2)); prog = P.Sequence()
    >>> x = g.add_variable(sp.float32, (5,)); sp.ops.map_linearly(g, x)
    >>> clamp(g, x, -1.0, 1.0, prog).shape
    (5,)
    """
    return _ternary(graph, prog, "clamp", name, options, TernaryOp.CLAMP, (x, lo, hi))


def clamp_(graph: Graph, x: Tensor, lo: Tensor | Number, hi: Tensor | Number, prog: P.Sequence, *,
           name: str = "", options: dict | None = None) -> Tensor:
    """:func:`clamp` written into ``x``; returns ``x``."""
    return _ternary(graph, prog, "clamp_", name, options, TernaryOp.CLAMP, (x, lo, hi), inplace=True)


_EXAMPLE = """
    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops import elementwise as ew
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=2)); prog = P.Sequence()
    >>> x = g.add_variable(sp.{dtype}, (2, 5)); sp.ops.map_linearly(g, x)
    >>> {call}
    {result}
"""


def _example(op: Any, label: str, inplace: bool, binary: bool) -> str:
    dtype = "float32" if op.value.domain & Kinds.FLOAT else "int32"
    args = "x, x[0]" if binary else "x"
    if inplace:
        return _EXAMPLE.format(dtype=dtype, call=f"ew.{label}(g, {args}, prog) is x", result="True")
    out = "bool_" if op.value.result is Result.BOOL else dtype
    return _EXAMPLE.format(dtype=dtype, call=f"y = ew.{label}(g, {args}, prog); y.shape, y.dtype",
                           result=f"((2, 5), sp.{out})")


def _unary(op_name: str, inplace: bool = False) -> Callable[..., Tensor]:
    op = UNARY_OPS[op_name]
    label = op_name + "_" * inplace

    def fn(graph: Graph, x: Tensor, prog: P.Sequence, *, name: str = "",
           options: dict | None = None) -> Tensor:
        ctx = OpContext.start(graph, prog, label, name, x)
        parse_options(ctx, options, {})
        return _run(ctx, Expr(ExprKind.UNARY, op, (Expr(ExprKind.INPUT),)), [x], inplace=inplace)

    fn.__name__ = fn.__qualname__ = label
    what = f"``x = {op_name}(x)`` in place; returns ``x``" if inplace else f"``{op_name}(x)``"
    fn.__doc__ = (f"Elementwise {what} (popops UnaryOpType.{op.name}); takes "
                  f"{_accepts(op)} tensors.\n" + _example(op, label, inplace, binary=False))
    return fn


def _binary(op_name: str, inplace: bool = False) -> Callable[..., Tensor]:
    op = BINARY_OPS[op_name]
    label = op_name + "_" * inplace

    def fn(graph: Graph, a: Tensor | Number, b: Tensor | Number, prog: P.Sequence, *, name: str = "",
           options: dict | None = None) -> Tensor:
        ctx = _start(graph, prog, label, name, (a, b))
        parse_options(ctx, options, {})
        exprs, tensors = _bind(ctx, (a, b))
        if inplace and not isinstance(a, Tensor):
            raise ctx.error(f"the first operand of {label} must be the tensor to update, got "
                            f"{type(a).__name__}")
        return _run(ctx, Expr(ExprKind.BINARY, op, tuple(exprs)), tensors, inplace=inplace)

    fn.__name__ = fn.__qualname__ = label
    what = (f"``a = {op_name}(a, b)`` in place; returns ``a``" if inplace else
            f"``{op_name}(a, b)`` with numpy broadcasting")
    fn.__doc__ = (f"Elementwise {what} (popops BinaryOpType.{op.name}); takes {_accepts(op)} "
                  "tensors; either operand may be a Python number.\n"
                  + _example(op, label, inplace, binary=True))
    return fn


def _accepts(op: Any) -> str:
    return " or ".join(k.name.lower() for k in (Kinds.FLOAT, Kinds.INT, Kinds.BOOL) if k & op.value.domain)


abs = _unary("abs")
neg = _unary("neg")
sign = _unary("sign")
exp = _unary("exp")
expm1 = _unary("expm1")
log = _unary("log")
log1p = _unary("log1p")
sqrt = _unary("sqrt")
rsqrt = _unary("rsqrt")
cbrt = _unary("cbrt")
sin = _unary("sin")
cos = _unary("cos")
tan = _unary("tan")
tanh = _unary("tanh")
sigmoid = _unary("sigmoid")
erf = _unary("erf")
gelu = _unary("gelu")
gelu_erf = _unary("gelu_erf")
relu = _unary("relu")
square = _unary("square")
reciprocal = _unary("reciprocal")
floor = _unary("floor")
ceil = _unary("ceil")
round = _unary("round")
trunc = _unary("trunc")
is_finite = _unary("is_finite")
is_nan = _unary("is_nan")
is_inf = _unary("is_inf")
logical_not = _unary("logical_not")
bitwise_not = _unary("bitwise_not")
popcount = _unary("popcount")
count_leading_zeros = _unary("count_leading_zeros")

add = _binary("add")
sub = _binary("sub")
mul = _binary("mul")
div = _binary("div")
pow = _binary("pow")
rem = _binary("rem")
remainder = _binary("remainder")
maximum = _binary("maximum")
minimum = _binary("minimum")
atan2 = _binary("atan2")
eq = _binary("eq")
ne = _binary("ne")
lt = _binary("lt")
le = _binary("le")
gt = _binary("gt")
ge = _binary("ge")
logical_and = _binary("logical_and")
logical_or = _binary("logical_or")
logical_xor = _binary("logical_xor")
bitwise_and = _binary("bitwise_and")
bitwise_or = _binary("bitwise_or")
bitwise_xor = _binary("bitwise_xor")
shift_left = _binary("shift_left")
shift_right_logical = _binary("shift_right_logical")
shift_right_arithmetic = _binary("shift_right_arithmetic")

abs_ = _unary("abs", inplace=True)
neg_ = _unary("neg", inplace=True)
sign_ = _unary("sign", inplace=True)
exp_ = _unary("exp", inplace=True)
expm1_ = _unary("expm1", inplace=True)
log_ = _unary("log", inplace=True)
log1p_ = _unary("log1p", inplace=True)
sqrt_ = _unary("sqrt", inplace=True)
rsqrt_ = _unary("rsqrt", inplace=True)
cbrt_ = _unary("cbrt", inplace=True)
sin_ = _unary("sin", inplace=True)
cos_ = _unary("cos", inplace=True)
tan_ = _unary("tan", inplace=True)
tanh_ = _unary("tanh", inplace=True)
sigmoid_ = _unary("sigmoid", inplace=True)
erf_ = _unary("erf", inplace=True)
gelu_ = _unary("gelu", inplace=True)
gelu_erf_ = _unary("gelu_erf", inplace=True)
relu_ = _unary("relu", inplace=True)
square_ = _unary("square", inplace=True)
reciprocal_ = _unary("reciprocal", inplace=True)
floor_ = _unary("floor", inplace=True)
ceil_ = _unary("ceil", inplace=True)
round_ = _unary("round", inplace=True)
trunc_ = _unary("trunc", inplace=True)
bitwise_not_ = _unary("bitwise_not", inplace=True)
add_ = _binary("add", inplace=True)
sub_ = _binary("sub", inplace=True)
mul_ = _binary("mul", inplace=True)
div_ = _binary("div", inplace=True)
pow_ = _binary("pow", inplace=True)
rem_ = _binary("rem", inplace=True)
remainder_ = _binary("remainder", inplace=True)
maximum_ = _binary("maximum", inplace=True)
minimum_ = _binary("minimum", inplace=True)
atan2_ = _binary("atan2", inplace=True)
bitwise_and_ = _binary("bitwise_and", inplace=True)
bitwise_or_ = _binary("bitwise_or", inplace=True)
bitwise_xor_ = _binary("bitwise_xor", inplace=True)
shift_left_ = _binary("shift_left", inplace=True)
shift_right_logical_ = _binary("shift_right_logical", inplace=True)
shift_right_arithmetic_ = _binary("shift_right_arithmetic", inplace=True)
