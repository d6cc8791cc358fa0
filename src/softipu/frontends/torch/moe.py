"""A mixture-of-experts layer with top-k routing that softipu runs on dynamic sparse ops.

:class:`SparseMoE` is a plain ``torch.nn.Module``: a bias-free router ``Linear(d, experts)``, the
top-``k`` experts of each token, softmax gates over their ``k`` logits (Mixtral's routing), and
per expert a two-layer MLP ``W2 act(W1 x)`` without biases. The experts run as one custom op,
``softipu::moe_experts(x, indices, gates, w1, w2, activation)``: in eager PyTorch it computes the
routed experts only (a gather of their weights); on softipu it lowers to
:func:`softipu.ops.sparse_moe.moe_experts`, which builds the routing's sparsity pattern on the device
and computes the ``tokens x k`` routed expert products with popsparse-style dynamic sparse ops
instead of every expert densely. Training: the op's backward is a second custom op,
``softipu::moe_experts_backward``, lowered to :func:`softipu.ops.sparse_moe.moe_experts_grad`
(the same routing, the hidden layer recomputed).

>>> import torch, softipu as sp, softipu.torch as st
>>> from softipu.frontends.torch.moe import SparseMoE
>>> layer = SparseMoE(8, 16, experts=4, k=2).eval()
>>> x = torch.randn(6, 8)
>>> m = st.inference_model(layer, st.Options(target=sp.targets.ipu_model(tiles=8)))
>>> bool(torch.allclose(m(x), layer(x), atol=1e-4))
True
"""

from __future__ import annotations

from typing import Any

import torch

from softipu.dtypes import int32
from softipu.frontends.torch.registry import register_lowering
from softipu.graph.tensor import Tensor
from softipu.ops.sparse_moe import ACTIVATIONS, moe_experts, moe_experts_grad

__all__ = ["SparseMoE", "moe_experts_backward_op", "moe_experts_op"]


def _act(h: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "relu":
        return torch.relu(h)
    if activation == "gelu":
        return torch.nn.functional.gelu(h)
    return h


def _experts(x: torch.Tensor, indices: torch.Tensor, gates: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor,
             activation: str) -> torch.Tensor:
    idx = indices.long()
    hidden = _act(torch.einsum("tkhd,td->tkh", w1[idx], x), activation)
    return torch.einsum("tkdh,tkh->td", w2[idx], hidden * gates[..., None])


@torch.library.custom_op("softipu::moe_experts", mutates_args=())
def moe_experts_op(x: torch.Tensor, indices: torch.Tensor, gates: torch.Tensor, w1: torch.Tensor,
                   w2: torch.Tensor, activation: str) -> torch.Tensor:
    """``y[t] = sum_j gates[t, j] w2[e] act(w1[e] x[t])``, ``e = indices[t, j]``; ``x`` ``(T, d)``,
    ``w1`` ``(E, H, d)``, ``w2`` ``(E, d, H)``."""
    return _experts(x, indices, gates, w1, w2, activation)


@torch.library.custom_op("softipu::moe_experts_backward", mutates_args=())
def moe_experts_backward_op(grad: torch.Tensor, x: torch.Tensor, indices: torch.Tensor, gates: torch.Tensor,
                            w1: torch.Tensor, w2: torch.Tensor,
                            activation: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gradients ``(dx, dgates, dw1, dw2)`` of :func:`moe_experts_op` given ``grad``."""
    def fn(x_, g_, w1_, w2_):
        return _experts(x_, indices, g_, w1_, w2_, activation)

    _, vjp = torch.func.vjp(fn, x, gates, w1, w2)
    return tuple(t.contiguous() for t in vjp(grad))


@moe_experts_backward_op.register_fake
def _moe_backward_fake(grad, x, indices, gates, w1, w2, activation):
    return torch.empty_like(x), torch.empty_like(gates), torch.empty_like(w1), torch.empty_like(w2)


def _setup(ctx, inputs, output):
    x, indices, gates, w1, w2, activation = inputs
    ctx.save_for_backward(x, indices, gates, w1, w2)
    ctx.activation = activation


def _backward(ctx, grad):
    x, indices, gates, w1, w2 = ctx.saved_tensors
    dx, dgates, dw1, dw2 = moe_experts_backward_op(grad, x, indices, gates, w1, w2, ctx.activation)
    return dx, None, dgates, dw1, dw2, None


moe_experts_op.register_autograd(_backward, setup_context=_setup)


@moe_experts_op.register_fake
def _moe_fake(x, indices, gates, w1, w2, activation):
    return torch.empty_like(x)


@register_lowering("softipu::moe_experts_backward")
def _lower_moe_backward(ctx: Any, node: Any, grad: Tensor, x: Tensor, indices: Tensor, gates: Tensor,
                        w1: Tensor, w2: Tensor, activation: str) -> list[Tensor]:
    dt = x.dtype
    outs = moe_experts_grad(ctx.graph, ctx.cast(grad, dt), x, ctx.cast(indices, int32),
                            ctx.cast(gates, dt), ctx.cast(w1, dt), ctx.cast(w2, dt), ctx.prog,
                            activation=activation, name=ctx.name)
    return list(outs)


@register_lowering("softipu::moe_experts")
def _lower_moe(ctx: Any, node: Any, x: Tensor, indices: Tensor, gates: Tensor, w1: Tensor, w2: Tensor,
               activation: str) -> Tensor:
    dt = x.dtype
    return moe_experts(ctx.graph, x, ctx.cast(indices, int32), ctx.cast(gates, dt), ctx.cast(w1, dt),
                       ctx.cast(w2, dt), ctx.prog, activation=activation, name=ctx.name)


class SparseMoE(torch.nn.Module):
    """Mixture of ``experts`` two-layer MLPs ``d_model -> hidden -> d_model`` with top-``k``
    routing; input ``(..., d_model)``. ``activation``: "relu", "gelu" or "none"."""

    def __init__(self, d_model: int, hidden: int, experts: int, k: int = 2, activation: str = "relu") -> None:
        super().__init__()
        if not 0 < k <= experts:
            raise ValueError(f"SparseMoE: k={k} must be in 1..experts={experts}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"SparseMoE: activation {activation!r} is not one of {ACTIVATIONS}")
        self.k, self.activation = k, activation
        self.router = torch.nn.Linear(d_model, experts, bias=False)
        self.w1 = torch.nn.Parameter(torch.randn(experts, hidden, d_model) / d_model ** 0.5)
        self.w2 = torch.nn.Parameter(torch.randn(experts, d_model, hidden) / hidden ** 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        logits, indices = torch.topk(self.router(flat), self.k, dim=-1)
        gates = torch.softmax(logits, dim=-1)
        return moe_experts_op(flat, indices, gates, self.w1, self.w2, self.activation).reshape(x.shape)
