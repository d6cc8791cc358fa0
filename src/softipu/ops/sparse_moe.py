"""A mixture-of-experts layer's experts on dynamic sparse ops: only the routed experts compute.

``y[t] = sum_j gates[t, j] . W2[e_tj] act(W1[e_tj] x[t])`` for each token's top-``k`` experts
``e_tj = indices[t, j]`` (``W1`` ``(experts, hidden, d)`` and ``W2`` ``(experts, d, hidden)``, as
``torch.nn.Linear`` weights).

Lowering: the experts' first weights side by side are ``W1s`` ``(experts * hidden, d)``; the hidden
activations are a sparse ``(tokens, experts * hidden)`` matrix ``H`` whose non-zeros are the
``hidden`` columns of each token's ``k`` experts, exactly ``tokens * k * hidden`` of them, so one
dynamic sparse plan (element sparsity, :mod:`softipu.ops.sparse_dynamic`) holds every routing:

1. the routing's meta-information is made on the device from ``indices``
   (:func:`~softipu.codelets.sparse_dynamic.moe_meta_codelet`, one vertex per bucket);
2. ``H = x . W1s^T`` at the pattern only: :func:`fully_connected_sparse_grad_w_t` with
   ``gradients_t = x`` and ``activations_t = W1s`` (a sampled dense product, rows of each);
3. the activation, in place on ``H``'s values, and each value scaled by its token's gate for that
   expert (:func:`~softipu.codelets.sparse_dynamic.moe_gate_codelet`);
4. ``y^T = W2s^T . H^T``: :func:`fully_connected_fwd` with ``H`` as the sparse weights and
   ``W2s^T`` ``(d, experts * hidden)`` as the activations.

The dense equivalent computes every expert for every token (``tokens x experts x hidden``
products twice); this computes ``tokens x k x hidden``. A routing is data: the same compiled
program serves every batch's choice of experts.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from softipu.codelets.sparse_dynamic import moe_gate_codelet, moe_meta_codelet
from softipu.dtypes import int32
from softipu.graph.graph import Graph
from softipu.graph.tensor import Tensor
from softipu.ops.common import OpContext, parse_options
from softipu.ops.sparse_dynamic import (
    DEFAULT_OPTIONS,
    FCPlan,
    FullyConnectedParams,
    SparseTensor,
    fully_connected_fwd,
    fully_connected_sparse_grad_w_t,
    plan_fully_connected,
)

__all__ = ["ACTIVATIONS", "plan_moe", "moe_experts"]

ACTIVATIONS = ("relu", "gelu", "none")


def plan_moe(graph: Graph, tokens: int, d_model: int, hidden: int, experts: int, k: int, dtype: Any,
             options: dict | None = None) -> FCPlan:
    """The dynamic sparse plan of a layer's hidden activations (see the module docstring)."""
    params = FullyConnectedParams(1, experts * hidden, tokens, d_model, tokens * k * hidden,
                                  name="moe/hidden")
    return plan_fully_connected(graph, params, dtype, options)


def _check(ctx: OpContext, x: Tensor, indices: Tensor, gates: Tensor, w1: Tensor, w2: Tensor,
           activation: str) -> tuple[int, int, int, int, int]:
    if x.ndim != 2 or w1.ndim != 3 or w2.ndim != 3:
        raise ctx.error(f"x {x.shape} must be (tokens, d), w1 {w1.shape} (experts, hidden, d) and w2 "
                        f"{w2.shape} (experts, d, hidden)")
    (t, d), (e, h, d1) = x.shape, w1.shape
    if d1 != d or w2.shape != (e, d, h):
        raise ctx.error(f"w1 {w1.shape} and w2 {w2.shape} do not fit x {x.shape}: need w1 (E, H, {d}) and "
                        f"w2 (E, {d}, H)")
    if indices.ndim != 2 or indices.shape[0] != t or indices.dtype is not int32:
        raise ctx.error(f"indices {indices.name} must be int32 (tokens={t}, k), got {indices.dtype} "
                        f"{indices.shape}")
    if gates.shape != indices.shape:
        raise ctx.error(f"gates {gates.name} {gates.shape} must match indices {indices.shape}")
    if len({x.dtype, gates.dtype, w1.dtype, w2.dtype}) != 1 or x.dtype.name not in ("float16", "float32"):
        raise ctx.error(f"x, gates, w1 and w2 must share float16 or float32; got {x.dtype}, {gates.dtype}, "
                        f"{w1.dtype}, {w2.dtype}")
    if activation not in ACTIVATIONS:
        raise ctx.error(f"activation {activation!r} is not one of {ACTIVATIONS}")
    return t, d, e, h, indices.shape[1]


def moe_experts(graph: Graph, x: Tensor, indices: Tensor, gates: Tensor, w1: Tensor, w2: Tensor, prog: Any,
                *, activation: str = "relu", name: str = "", options: dict | None = None) -> Tensor:
    """``(tokens, d)``: the routed experts' outputs, gate-weighted and summed (module docstring).

    Options: those of :mod:`softipu.ops.sparse_dynamic` (``metaInfoBucketOversizeProportion`` ...).
    ``activation``: "relu", "gelu" (erf form, torch's default) or "none"."""
    ctx = OpContext.start(graph, prog, "moe_experts", name, x, indices, gates, w1, w2)
    opts = parse_options(ctx, options, DEFAULT_OPTIONS)
    t, d, e, h, k = _check(ctx, x, indices, gates, w1, w2, activation)
    plan = plan_moe(graph, t, d, h, e, k, x.dtype, opts)
    parts, cap = plan.partitions, plan.capacity
    meta = graph.add_variable(int32, (parts, plan.meta_length), name=f"{ctx.name}/metaInfo")
    graph.set_tile_mappings(meta, plan.tiles)
    every = np.tile(np.arange(t * k), (parts, 1))
    idx_rows = indices.flatten()[every]
    cs = ctx.compute_set("routing")
    codelet = moe_meta_codelet(t, k, h, plan.xw, plan.yw, plan.qy, parts, cap)
    graph.add_vertices(cs, codelet, {"idx": idx_rows, "meta": meta, "pid": np.arange(parts)}, plan.tiles)
    ctx.execute(cs)
    hid = fully_connected_sparse_grad_w_t(graph, meta, x, w1.reshape((e * h, d)), prog, plan=plan,
                                          name=f"{ctx.name}/hidden", options=opts)
    if activation != "none":
        from softipu.ops.elementwise import gelu_erf_, relu_  # same layer

        (relu_ if activation == "relu" else gelu_erf_)(graph, hid, prog, name=f"{ctx.name}/{activation}")
    cs = ctx.compute_set("gates")
    gate = moe_gate_codelet(x.dtype, k, h, plan.xw, plan.yw, plan.qy)
    graph.add_vertices(cs, gate, {"meta": meta, "nz": hid.reshape((parts, cap)), "idx": idx_rows,
                                  "gates": gates.flatten()[every]}, plan.tiles)
    ctx.execute(cs)
    w2s_t = w2.transpose(1, 0, 2).reshape((d, e * h))
    y_t = fully_connected_fwd(graph, SparseTensor(meta, hid, plan), w2s_t, prog, params=plan.params,
                              name=f"{ctx.name}/out", options=opts)
    return y_t.transpose()
