"""The negative log-likelihood's one-hot label mask, laid out like the log-probabilities.

The training decomposition of ``nll_loss`` (:mod:`.joint`) selects each row's label with a mask
instead of a gather. Built from plain ATen ops (``arange == target``), the mask is a fresh
row-major variable mapped linearly, while an LM head's logits come out of the matmul stored
column-major and mapped by its plan: every op joining the two (the loss's select, its gradient,
the softmax's backward) then read one exchange region per logit. PopART creates the one-hot as a
clone of the probabilities (``graph().clone(probs2D)`` then ``popops::encodeOneHot`` in
``NllOpx::flattenAndEncodeOneHot`` / ``NllGradOpx::grow``, popart ``willow/src/popx/op/nllx.cpp``),
so it has their layout and tile mapping. ``softipu::label_mask`` is that op: in eager PyTorch the
plain mask; lowered, a variable in the log-probabilities' storage order and tile mapping, filled in
place by one fused map (``class == label``, and ``label != ignore_index`` where that index is a
class).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from softipu.dtypes import bool_, int32
from softipu.frontends.torch.lowerings.pointwise import ordered
from softipu.frontends.torch.registry import register_lowering
from softipu.graph import program as P
from softipu.graph.tensor import Tensor
from softipu.ops import elementwise as ew
from softipu.ops.common import storage_order
from softipu.ops.elementwise import E
from softipu.ops.random import clone_mapping

__all__ = ["label_mask"]


@torch.library.custom_op("softipu::label_mask", mutates_args=())
def label_mask(logp: torch.Tensor, target: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """``hit[..., c] = (c == target[...]) & (target[...] != ignore_index)``, shaped like ``logp``."""
    classes = torch.arange(logp.shape[-1], device=logp.device)
    return (classes == target.unsqueeze(-1)) & (target != ignore_index).unsqueeze(-1)


@label_mask.register_fake
def _label_mask_fake(logp: torch.Tensor, target: torch.Tensor, ignore_index: int) -> torch.Tensor:
    return torch.empty(logp.shape, dtype=torch.bool, device=logp.device)


@register_lowering("softipu::label_mask")
def _lower_label_mask(ctx: Any, node: Any, logp: Tensor, target: Tensor, ignore_index: int) -> Tensor:
    graph, depth = ctx.graph, logp.shape[-1]
    perm = storage_order(logp)
    stored = logp.transpose(perm) if perm != tuple(range(logp.ndim)) else logp
    out = graph.add_variable(bool_, stored.shape, name=f"{ctx.name}/one_hot")
    if out.numel == 0:
        return out.transpose(tuple(np.argsort(perm))) if stored is not logp else out
    clone_mapping(graph, out, stored)  # Poplar's Graph::clone: the same tiles, element for element
    ctx.prog.add(P.WriteUndef(out))  # filled in place, never read before: not live until then
    mask = out.transpose(tuple(np.argsort(perm))) if stored is not logp else out
    classes = ctx.constant(np.arange(depth, dtype=np.int32), int32, (depth,), suffix="classes")
    labels = ctx.cast(target, int32).reshape((*target.shape, 1))
    hit = E.eq(E.input(1), E.input(2))
    if 0 <= ignore_index < depth:  # an index outside the classes never equals one
        hit = E.logical_and(hit, E.ne(E.input(2), int(ignore_index)))
    ordered(lambda m, c, t: ew.map_(graph, hit, [m, c, t], ctx.prog, name=ctx.name), mask, classes, labels)
    return mask
