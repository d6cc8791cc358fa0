"""PopART's ``ai.graphcore`` ops that ``softipu.popart.Builder.aiGraphcore`` makes: the losses."""

from __future__ import annotations

from typing import Any

import numpy as np

from softipu.dtypes import int32
from softipu.frontends.onnx.registry import register_onnx_lowering
from softipu.graph.tensor import Tensor
from softipu.ops import elementwise as ew
from softipu.ops.elementwise import E
from softipu.ops.reduce import reduce

DOMAIN = "ai.graphcore"


def _reduced(ctx: Any, per_sample: Tensor, weights: Tensor | None = None) -> Tensor:
    red = str(ctx.attr("reduction", "mean")).lower()
    if red in ("none", "noreduction", "2"):
        return per_sample
    total = reduce(ctx.graph, per_sample, ctx.prog, name=f"{ctx.name}/sum")
    if red in ("sum", "0"):
        return total
    if weights is not None:
        count = reduce(ctx.graph, weights, ctx.prog, name=f"{ctx.name}/count")
        return ew.map(ctx.graph, E.div(E.input(0), E.input(1)), [total, count], ctx.prog, name=ctx.name)
    expr = E.div(E.input(0), float(max(per_sample.numel, 1)))
    return ew.map(ctx.graph, expr, [total], ctx.prog, name=ctx.name)


@register_onnx_lowering(f"{DOMAIN}::NllLoss")
def _nll(ctx: Any, node: Any) -> Tensor:
    """PopART's NllLoss: ``-log(probs[label])`` (``inputIsLogProbability=1``: ``-probs[label]``)."""
    probs, labels = ctx.input(0), ctx.cast(ctx.input(1), int32)
    c = probs.shape[-1]
    iota = ctx.constant(np.arange(c, dtype=np.int32), int32, "classes")
    hit = E.eq(E.input(1), E.input(2))
    value = E.input(0) if int(ctx.attr("inputIsLogProbability", 0)) else E.log(E.input(0))
    ignore = ctx.attr("ignoreIndex")
    mask = hit if ignore is None else E.logical_and(hit, E.ne(E.input(1), int(ignore)))
    terms = ew.map(ctx.graph, E.select(mask, E.neg(value), E.cast(0, probs.dtype)),
                   [probs, labels.expand_dims(labels.ndim), iota], ctx.prog, name=f"{ctx.name}/terms")
    per = reduce(ctx.graph, terms, ctx.prog, dims=[terms.ndim - 1], name=f"{ctx.name}/picked")
    weights = None
    if ignore is not None:
        weights = ew.map(ctx.graph, E.cast(E.ne(E.input(0), int(ignore)), probs.dtype), [labels], ctx.prog,
                         name=f"{ctx.name}/valid")
    return _reduced(ctx, per, weights)


@register_onnx_lowering(f"{DOMAIN}::IdentityLoss")
def _identity_loss(ctx: Any, node: Any) -> Tensor:
    x = ctx.input(0)
    red = str(ctx.attr("reduction", "mean")).lower()
    if red in ("none", "noreduction", "2"):
        return ctx.copy(x)
    return _reduced(ctx, x)


@register_onnx_lowering(f"{DOMAIN}::L1Loss")
def _l1_loss(ctx: Any, node: Any) -> Tensor:
    x = ctx.input(0)
    scale = float(ctx.attr("lambda", 1.0))
    per = ew.map(ctx.graph, E.mul(E.abs(E.input(0)), scale), [x], ctx.prog, name=f"{ctx.name}/abs")
    return _reduced(ctx, per)
