"""Fusing the optimizer update's elementwise chains into one ``map`` each.

An optimizer's update is a few dozen elementwise ATen ops per parameter (Adam: the moments, the
bias corrections, the step). Lowered one by one, each is a compute set of its own: hundreds of
tiny supersteps per model, each planned, verified and priced at compile time and synced at run
time. PopART runs each parameter's update as a handful of fused optimizer codelets instead. Here a
chain of elementwise ops whose intermediate values have one user is one ``popops::map`` expression
(:func:`softipu.ops.elementwise.map`): one compute set, one pass over the data.

A value is materialized (its chain lowered as one map) when it has more than one user, is an
output of the update, feeds an op that is not fused (a reduction, a cast, a ``where``...), or is
smaller than the op consuming it (a 0-d scalar chain, the bias correction, is computed once and
broadcast, not once per element). Only float ops whose tensor operands all have the result's
dtype are fused, so no dtype promotion happens inside an expression; each node of the expression
rounds to that dtype as the separate op would, giving the same values bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from softipu.frontends.torch.lowerings.pointwise import ordered
from softipu.graph.tensor import Tensor
from softipu.ops import elementwise as ew

__all__ = ["Pending", "fusible", "fuse_node", "materialize"]

_aten = torch.ops.aten
_BINARY = {_aten.add.Tensor: "add", _aten.sub.Tensor: "sub", _aten.mul.Tensor: "mul",
           _aten.div.Tensor: "div", _aten.add.Scalar: "add", _aten.sub.Scalar: "sub",
           _aten.mul.Scalar: "mul", _aten.div.Scalar: "div", _aten.minimum.default: "minimum",
           _aten.maximum.default: "maximum"}
_UNARY = {_aten.sqrt.default: "sqrt", _aten.neg.default: "neg", _aten.expm1.default: "expm1",
          _aten.exp.default: "exp", _aten.reciprocal.default: "reciprocal", _aten.rsqrt.default: "rsqrt"}
_MAX_LEAVES = 8  # operands of one map: more would be a wide vertex with many fields


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


def fusible(node: torch.fx.Node, dtype_of: Callable[[torch.dtype], Any]) -> bool:
    """Whether ``node`` is an elementwise float op this module fuses (no alpha or rounding mode)."""
    if node.target not in _BINARY and node.target not in _UNARY or node.kwargs:
        return False
    val = node.meta.get("val")
    return isinstance(val, torch.Tensor) and val.dtype in (torch.float32, torch.float16)


def materialize(value: Any, ctx: Any, node: torch.fx.Node | None = None) -> Any:
    """``value`` as a tensor: a pending expression lowered as one ``map`` (named after ``node``,
    the op that completes it); anything else as it is."""
    if not isinstance(value, Pending):
        return value
    leaves = value.leaves()
    expr = _expr(value, leaves)
    outer = ctx.node
    if node is not None:
        ctx.node = node
    try:
        return ordered(lambda *ts: ew.map(ctx.graph, expr, list(ts), ctx.prog, name=f"{ctx.name}/fused"),
                       *leaves)
    finally:
        ctx.node = outer


def _expr(value: Any, leaves: list[Tensor]) -> Any:
    if isinstance(value, Pending):
        args = [_expr(a, leaves) for a in value.args]
        return getattr(ew.E, value.op)(*args)
    if isinstance(value, Tensor):
        return ew.E.input(next(i for i, t in enumerate(leaves) if t is value))
    return value  # a number: a constant of the expression


def fuse_node(node: torch.fx.Node, env: dict[torch.fx.Node, Any], ctx: Any) -> Pending | None:
    """``node`` as a pending expression over its operands, or None when it cannot be fused with
    them (then its operands are materialized and it is lowered as usual)."""
    val = node.meta["val"]
    dtype = ctx.dtype(val.dtype)
    shape = tuple(int(d) for d in val.shape)
    args = []
    for a in node.args:
        v = env[a] if isinstance(a, torch.fx.Node) else a
        if isinstance(v, (Pending, Tensor)):
            if v.dtype is not dtype:
                return None  # a promotion inside the expression: leave it to the lowering
            if isinstance(v, Pending) and _numel(v.shape) < _numel(shape):
                v = materialize(v, ctx, a)  # a scalar chain: computed once, then broadcast
        elif not isinstance(v, (int, float)) or isinstance(v, bool):
            return None
        args.append(v)
    op = _BINARY.get(node.target) or _UNARY[node.target]
    pending = Pending(op, tuple(args), shape, dtype)
    if not 0 < len(pending.leaves()) <= _MAX_LEAVES:
        return None
    return pending
