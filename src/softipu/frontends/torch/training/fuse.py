"""Fusing the optimizer update's elementwise chains into one ``map`` each.

An optimizer's update is a few dozen elementwise ATen ops per parameter (Adam: the moments, the
bias corrections, the step). Lowered one by one, each is a compute set of its own: hundreds of
tiny supersteps per model, each planned, verified and priced at compile time and synced at run
time. PopART runs each parameter's update as a handful of fused optimizer codelets instead. Here a
chain of elementwise ops whose intermediate values have one user is one ``popops::map`` expression
(:func:`softipu.ops.elementwise.map`): one compute set, one pass over the data.

A value is materialized (its chain lowered as one map) when it has more than one user, is an
output of the update, feeds an op that is not fused (a reduction, a ``where``...), or is
smaller than the op consuming it (a 0-d scalar chain, the bias correction, is computed once and
broadcast, not once per element). Only float ops whose tensor operands all have the result's
dtype, or are float16 operands of a float32 result (torch's promotion: an exact cast node), are
fused, and casts between float dtypes (an fp16 weight's ``p.float()`` ... ``.half()``) are nodes
of it; each node of the expression rounds to its dtype as the separate op would, giving the same
values bit for bit. The training lowering fuses the joint graph's casts the same way
(``lowering._joint_node``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from softipu.dtypes import float16, float32
from softipu.frontends.torch.lowerings.pointwise import ordered
from softipu.graph.tensor import Tensor
from softipu.ops import elementwise as ew

__all__ = ["Pending", "fusible", "fuse_node", "is_cast", "materialize", "materialize_into",
           "stochastic_rounding"]

_aten = torch.ops.aten
_BINARY = {_aten.add.Tensor: "add", _aten.sub.Tensor: "sub", _aten.mul.Tensor: "mul",
           _aten.div.Tensor: "div", _aten.add.Scalar: "add", _aten.sub.Scalar: "sub",
           _aten.mul.Scalar: "mul", _aten.div.Scalar: "div", _aten.minimum.default: "minimum",
           _aten.maximum.default: "maximum"}
_UNARY = {_aten.sqrt.default: "sqrt", _aten.neg.default: "neg", _aten.expm1.default: "expm1",
          _aten.exp.default: "exp", _aten.reciprocal.default: "reciprocal", _aten.rsqrt.default: "rsqrt",
          _aten.erf.default: "erf", _aten.log.default: "log", _aten.tanh.default: "tanh",
          _aten.sigmoid.default: "sigmoid", _aten.abs.default: "abs", _aten.log1p.default: "log1p"}
_FLOATS = (torch.float32, torch.float16)
_PLAIN_FORMATS = (None, torch.contiguous_format, torch.preserve_format)
_MAX_LEAVES = 8  # operands of one map: more would be a wide vertex with many fields
LEAD_BY_LAYOUT = True  # False: a fused map's result follows its first operand (tests compare both)


@dataclass(frozen=True, slots=True)
class Pending:
    """An elementwise expression not lowered yet: an op name over operands (tensors, numbers or
    other pending expressions), with the shape and dtype torch gives its result."""

    op: str
    args: tuple[Any, ...]
    shape: tuple[int, ...]
    dtype: Any  # softipu DType

    def leaves(self) -> list[Tensor]:
        out: list[Tensor] = []
        for a in self.args:
            if isinstance(a, Pending):
                out += [t for t in a.leaves() if not any(t is o for o in out)]
            elif isinstance(a, Tensor) and not any(a is o for o in out):
                out.append(a)
        return out


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def is_cast(node: torch.fx.Node) -> bool:
    """``x.to(dtype)`` between float dtypes (``_to_copy`` with only a dtype, and perhaps a
    contiguous or preserved memory format: autograd's layer-norm backward writes
    ``x.to(float32, memory_format=torch.contiguous_format)``, and a device tensor has no memory
    format, the ``_to_copy`` lowering ignores it): a cast node of the map (round to nearest even,
    as the separate cast; a downcast stays a Cast vertex when the device rounds stochastically,
    see :func:`fuse_node`)."""
    if node.target is not _aten._to_copy.default or "dtype" not in node.kwargs or len(node.args) != 1:
        return False
    if any(k != "dtype" and not (k == "memory_format" and v in _PLAIN_FORMATS)
           for k, v in node.kwargs.items()):
        return False
    src = node.args[0].meta.get("val") if isinstance(node.args[0], torch.fx.Node) else None
    return isinstance(src, torch.Tensor) and src.dtype in _FLOATS


def fusible(node: torch.fx.Node, dtype_of: Callable[[torch.dtype], Any]) -> bool:
    """Whether ``node`` is an elementwise float op this module fuses (no alpha or rounding mode),
    or a cast between float dtypes."""
    if not (node.target in _BINARY or node.target in _UNARY) or node.kwargs:
        if not is_cast(node):
            return False
    val = node.meta.get("val")
    return isinstance(val, torch.Tensor) and val.dtype in _FLOATS


def materialize(value: Any, ctx: Any, node: torch.fx.Node | None = None,
                scalars: dict[tuple, Tensor] | None = None) -> Any:
    """``value`` as a tensor: a pending expression lowered as one ``map`` (named after ``node``,
    the op that completes it); anything else as it is. With ``scalars`` (a table the caller keeps
    for one program), a 0-d expression over whole 0-d variables is lowered once and its tensor
    reused: every parameter's update computes the same bias corrections from the step and the
    hyper-parameters (PopART has no compute set of their own: ``AdamUpdaterOpx`` folds them into
    its one map), so they are computed once per step, not once per parameter."""
    if not isinstance(value, Pending):
        return value
    leaves = value.leaves()
    if LEAD_BY_LAYOUT and str(getattr(ctx, "phase", "")).startswith("bwd/"):  # a gradient's map
        leaves = lead_operand(ctx.graph, leaves, tuple(value.shape))
    expr = _expr(value, leaves)
    key = _scalar_key(value, leaves, expr, ctx.graph) if scalars is not None else None
    if key is not None and key in scalars:
        return scalars[key]
    outer = ctx.node
    if node is not None:
        ctx.node = node
    try:
        out = ordered(lambda *ts: ew.map(ctx.graph, expr, list(ts), ctx.prog, name=f"{ctx.name}/fused"),
                      *leaves)
    finally:
        ctx.node = outer
    if key is not None:
        scalars[key] = out
    return out


def lead_operand(graph: Any, leaves: list[Tensor], shape: tuple[int, ...]) -> list[Tensor]:
    """``leaves`` with the operand the map's result is laid out like first (the elementwise
    driver follows its first full operand). PopART's one-op gradients lay their result out like
    the forward activation they read, not like the incoming gradient (popnn's
    ``nonLinearityInputGradient`` makes it with ``createOutputForElementWiseOp(graph, {out})``):
    so does a fused backward map reading a value the forward kept (``fwd/...``). A matmul's
    output (a backward gradient cut into 32-element regions) then no longer sets the layout of a
    GELU gradient: ~8,800 vertices instead of 98,304 for a 1024 x 3072 map."""
    if leaves and _from_forward(graph, leaves[0]):
        return leaves
    full = [t for t in leaves if t.shape == shape and t.numel > 1 and not t.repeats_elements()]
    if not full or full[0] is not leaves[0]:
        return leaves  # the first operand is not full: the driver picks, as before
    best = next((t for t in full if _from_forward(graph, t)), None)
    return leaves if best is None else [best, *(t for t in leaves if t is not best)]


def _from_forward(graph: Any, t: Tensor) -> bool:
    var = graph.variable_of(t)
    return var is not None and var.name.startswith("fwd/")


def _scalar_key(value: Pending, leaves: list[Tensor], expr: Any, graph: Any) -> tuple | None:
    """A 0-d expression's identity: its text, dtype and the variables it reads (each leaf a whole
    0-d variable); None for anything else."""
    if value.shape != ():
        return None
    ids = []
    for t in leaves:
        var = graph.variable_of(t)
        if t.shape != () or var is None or var.numel != 1:
            return None
        ids.append(var.id)
    return str(expr), str(value.dtype), tuple(ids)


def materialize_into(value: Pending, ctx: Any, node: torch.fx.Node, into: Tensor) -> Tensor | None:
    """``value`` lowered as one in-place ``map_`` into ``into`` (popops::mapInPlace), which must be
    one of its operands with its shape and dtype: an optimizer's new weight or state written where
    it lives, no new tensor and no copy back. None (nothing lowered) when it cannot be."""
    leaves = value.leaves()
    if value.shape != into.shape or value.dtype is not into.dtype or not any(t is into for t in leaves):
        return None
    leaves = [into, *(t for t in leaves if t is not into)]
    expr = _expr(value, leaves)
    outer, ctx.node = ctx.node, node
    try:
        ordered(lambda *ts: ew.map_(ctx.graph, expr, list(ts), ctx.prog, name=f"{ctx.name}/fused"), *leaves)
    finally:
        ctx.node = outer
    return into


def stochastic_rounding(ctx: Any) -> bool:
    """Whether the engine will round float32 -> float16 casts stochastically (``prng.
    enableStochasticRounding``): it rounds Cast vertices, not the float16 results of a map."""
    options = getattr(ctx, "options", None)
    return bool(getattr(options, "engine_options", {}).get("prng.enableStochasticRounding", False))


def _expr(value: Any, leaves: list[Tensor]) -> Any:
    if isinstance(value, Pending):
        args = [_expr(a, leaves) for a in value.args]
        if value.op == "cast":
            return ew.E.cast(args[0], value.dtype)
        return getattr(ew.E, value.op)(*args)
    if isinstance(value, Tensor):
        return ew.E.input(next(i for i, t in enumerate(leaves) if t is value))
    return value  # a number: a constant of the expression


def fuse_node(node: torch.fx.Node, env: dict[torch.fx.Node, Any], ctx: Any,
              scalars: dict[tuple, Tensor] | None = None) -> Pending | None:
    """``node`` as a pending expression over its operands, or None when it cannot be fused with
    them (then its operands are materialized and it is lowered as usual); ``scalars``: see
    :func:`materialize`."""
    val = node.meta["val"]
    dtype = ctx.dtype(val.dtype)
    shape = tuple(int(d) for d in val.shape)
    if node.target is _aten._to_copy.default:
        v = env[node.args[0]]
        if not isinstance(v, (Pending, Tensor)) or v.dtype is dtype or tuple(v.shape) != shape:
            return None  # no conversion (or not a tensor): lowered as usual
        if dtype is float16 and stochastic_rounding(ctx):
            return None  # a Cast vertex, which the device's stochastic rounding mode rounds
        pending = Pending("cast", (v,), shape, dtype)
        return pending if 0 < len(pending.leaves()) <= _MAX_LEAVES else None
    args = []
    for a in node.args:
        v = env[a] if isinstance(a, torch.fx.Node) else a
        if isinstance(v, (Pending, Tensor)):
            if v.dtype is not dtype and not (v.dtype is float16 and dtype is float32):
                return None  # a narrowing promotion inside the expression: left to the lowering
            if isinstance(v, Pending) and _numel(v.shape) < _numel(shape):
                env[a] = v = materialize(v, ctx, a, scalars)  # a scalar chain: computed once, then broadcast
            if v.dtype is not dtype:  # torch's promotion of a float16 operand: exact
                v = Pending("cast", (v,), tuple(int(d) for d in v.shape), dtype)
        elif not isinstance(v, (int, float)) or isinstance(v, bool):
            return None
        args.append(v)
    op = _BINARY.get(node.target) or _UNARY[node.target]
    pending = Pending(op, tuple(args), shape, dtype)
    if not 0 < len(pending.leaves()) <= _MAX_LEAVES:
        return None
    return pending
