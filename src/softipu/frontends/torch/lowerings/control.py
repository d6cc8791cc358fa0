"""``torch.cond`` as ``program.If``: each branch is lowered into its own program, and both write
their results into the same variables, so only the branch taken runs (and costs cycles)."""

from __future__ import annotations

from typing import Any

from softipu.dtypes import bool_
from softipu.frontends.torch.registry import register_lowering
from softipu.graph import program as P
from softipu.graph.tensor import Tensor

__all__: list[str] = []


def _branch(ctx: Any, module: Any, operands: Any, outs: list[Tensor], label: str) -> P.Sequence:
    seq = P.Sequence(name=f"{ctx.name}/{label}")
    values = ctx.lower_subgraph(module, list(operands), seq)
    outer, ctx.prog = ctx.prog, seq
    try:
        for value, out in zip(values, outs, strict=True):
            value = ctx.cast(value, out.dtype)
            if out.numel:
                seq.add(P.Copy(value.broadcast(out.shape) if value.shape != out.shape else value, out))
    finally:
        ctx.prog = outer
    return seq


@register_lowering("higher_order::cond")
def _cond(ctx: Any, node: Any, pred: Any, true_fn: Any, false_fn: Any, operands: Any) -> tuple:
    metas = ctx.out_meta()
    outs = [ctx.variable(ctx.dtype(m.dtype), tuple(int(d) for d in m.shape), f"out{i}")
            for i, m in enumerate(metas)]
    then = _branch(ctx, true_fn, operands, outs, "true")
    otherwise = _branch(ctx, false_fn, operands, outs, "false")
    if not isinstance(pred, Tensor):  # a Python bool: torch.export already chose
        ctx.prog.add(then if pred else otherwise)
    else:
        ctx.prog.add(P.If(ctx.cast(pred, bool_).reshape(1), then, otherwise))
    return tuple(outs)
