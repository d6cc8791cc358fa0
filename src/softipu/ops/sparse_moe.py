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

from softipu.codelets.sparse_dynamic import moe_gate_codelet, moe_gate_grad_codelet, moe_meta_codelet
from softipu.dtypes import float32, int32
from softipu.graph.graph import Graph
from softipu.graph.tensor import Tensor
from softipu.ops.common import OpContext, parse_options
from softipu.ops.sparse_dynamic import (
    DEFAULT_OPTIONS,
    FCPlan,
    FullyConnectedParams,
    SparseTensor,
    fully_connected_fwd,
    fully_connected_grad_a,
    fully_connected_sparse_grad_w_t,
    plan_fully_connected,
)

__all__ = ["ACTIVATIONS", "plan_moe", "moe_experts", "moe_experts_grad"]

ACTIVATIONS = ("relu", "gelu", "none")


def plan_moe(graph: Graph, tokens: int, d_model: int, hidden: int, experts: int, k: int, dtype: Any,
             options: dict | None = None) -> FCPlan:
    """The dynamic sparse plan of a layer's hidden activations (see the module docstring). The
    "batch" of these products is ``d_model``, the hidden layer's contraction: the batch is not split
    (``planConstraints`` ``qz`` 1) unless the options say so, since the planner prices the forward
    pass only and a split hidden layer sums bucket-shaped partials over the groups."""
    params = FullyConnectedParams(1, experts * hidden, tokens, d_model, tokens * k * hidden,
                                  name="moe/hidden")
    opts = dict(options or {})
    opts["planConstraints"] = {"qz": 1, **dict(opts.get("planConstraints") or {})}
    return plan_fully_connected(graph, params, dtype, opts)


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


def _routing(ctx: OpContext, plan: FCPlan, indices: Tensor, k: int, hidden: int) -> tuple[Tensor, Tensor]:
    """The routing's meta-information (made on the device) and each bucket's view of ``indices``."""
    graph, parts = ctx.graph, plan.partitions
    t = plan.params.output_size
    meta = graph.add_variable(int32, (parts, plan.meta_length), name=f"{ctx.name}/metaInfo")
    graph.set_tile_mappings(meta, plan.tiles)
    idx_rows = indices.flatten()[np.tile(np.arange(t * k), (parts, 1))]
    cs = ctx.compute_set("routing")
    codelet = moe_meta_codelet(t, k, hidden, plan.xw, plan.yw, plan.qy, parts, plan.capacity)
    graph.add_vertices(cs, codelet, {"idx": idx_rows, "meta": meta, "pid": np.arange(parts)}, plan.tiles)
    ctx.execute(cs)
    return meta, idx_rows


def _gate(ctx: OpContext, plan: FCPlan, meta: Tensor, values: Tensor, idx_rows: Tensor, gates: Tensor,
          k: int, hidden: int, stage: str) -> None:
    """Each of ``values`` (bucket-shaped) times its token's gate for its expert, in place."""
    parts, cap = plan.partitions, plan.capacity
    cs = ctx.compute_set(stage)
    gate = moe_gate_codelet(values.dtype, k, hidden, plan.xw, plan.yw, plan.qy)
    rows = gates.flatten()[np.tile(np.arange(gates.numel), (parts, 1))]
    ctx.graph.add_vertices(cs, gate, {"meta": meta, "nz": values.reshape((parts, cap)), "idx": idx_rows,
                                      "gates": rows}, plan.tiles)
    ctx.execute(cs)


def _start(graph, prog, op, name, x, indices, gates, w1, w2, activation, options, *more):
    ctx = OpContext.start(graph, prog, op, name, x, indices, gates, w1, w2, *more)
    opts = parse_options(ctx, options, DEFAULT_OPTIONS)
    t, d, e, h, k = _check(ctx, x, indices, gates, w1, w2, activation)
    plan = plan_moe(graph, t, d, h, e, k, x.dtype, opts)
    meta, idx_rows = _routing(ctx, plan, indices, k, h)
    hid = fully_connected_sparse_grad_w_t(graph, meta, x, w1.reshape((e * h, d)), prog, plan=plan,
                                          name=f"{ctx.name}/hidden", options=opts)
    return ctx, opts, (t, d, e, h, k), plan, meta, idx_rows, hid


def moe_experts(graph: Graph, x: Tensor, indices: Tensor, gates: Tensor, w1: Tensor, w2: Tensor, prog: Any,
                *, activation: str = "relu", name: str = "", options: dict | None = None) -> Tensor:
    """``(tokens, d)``: the routed experts' outputs, gate-weighted and summed (module docstring).

    Options: those of :mod:`softipu.ops.sparse_dynamic` (``metaInfoBucketOversizeProportion`` ...).
    ``activation``: "relu", "gelu" (erf form, torch's default) or "none"."""
    ctx, opts, (t, d, e, h, k), plan, meta, idx_rows, hid = _start(
        graph, prog, "moe_experts", name, x, indices, gates, w1, w2, activation, options)
    if activation != "none":
        from softipu.ops.elementwise import gelu_erf_, relu_  # same layer

        (relu_ if activation == "relu" else gelu_erf_)(graph, hid, prog, name=f"{ctx.name}/{activation}")
    _gate(ctx, plan, meta, hid, idx_rows, gates, k, h, "gates")
    w2s_t = w2.transpose(1, 0, 2).reshape((d, e * h))
    y_t = fully_connected_fwd(graph, SparseTensor(meta, hid, plan), w2s_t, prog, params=plan.params,
                              name=f"{ctx.name}/out", options=opts)
    return y_t.transpose()


def _dgates(ctx: OpContext, plan: FCPlan, meta: Tensor, dg: Tensor, act: Tensor, idx_rows: Tensor, k: int,
            hidden: int) -> Tensor:
    """``(tokens, k)``: per token and choice, the sum of ``dg x act`` over its expert's entries
    (each bucket's share, then a reduction over the buckets)."""
    from softipu.ops.reduce import reduce

    graph, parts, cap = ctx.graph, plan.partitions, plan.capacity
    t = plan.params.output_size
    shares = graph.add_variable(float32, (parts, t * k), name=f"{ctx.name}/dgates_shares")
    graph.set_tile_mappings(shares, plan.tiles)
    cs = ctx.compute_set("dgates")
    codelet = moe_gate_grad_codelet(dg.dtype, t, k, hidden, plan.xw, plan.yw, plan.qy)
    fields = {"meta": meta, "dg": dg.reshape((parts, cap)), "act": act.reshape((parts, cap)), "idx": idx_rows,
              "out": shares}
    graph.add_vertices(cs, codelet, fields, plan.tiles)
    ctx.execute(cs)
    dgates = reduce(graph, shares, ctx.prog, dims=0, name=f"{ctx.name}/dgates").reshape((t, k))
    if dg.dtype is not float32:
        from softipu.ops.elementwise import cast

        dgates = cast(graph, dgates, dg.dtype, ctx.prog, name=f"{ctx.name}/dgates_cast")
    return dgates


def moe_experts_grad(graph: Graph, grad_out: Tensor, x: Tensor, indices: Tensor, gates: Tensor, w1: Tensor,
                     w2: Tensor, prog: Any, *, activation: str = "relu", name: str = "",
                     options: dict | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The gradients ``(dx, dgates, dw1, dw2)`` of :func:`moe_experts` given ``grad_out``
    ``(tokens, d)``, all on dynamic sparse ops over the same routing (the hidden layer recomputed):
    ``dG = dy . W2s^T`` and ``dA = dG x gate`` at the pattern (sampled product), ``dgates`` the
    sum of ``dG x A`` per token and expert, ``dH = dA x act'(H)``; ``dx = dH . W1s`` (forward
    pass), ``dW1s = dH^T . x`` and ``dW2s = G^T . dy`` (grad-A passes with the values as ``W``)."""
    from softipu.ops.elementwise import gelu_erf, relu
    from softipu.ops.nn import NonLinearity, non_linearity_grad

    ctx, opts, (t, d, e, h, k), plan, meta, idx_rows, pre = _start(
        graph, prog, "moe_experts_grad", name, x, indices, gates, w1, w2, activation, options, grad_out)
    if grad_out.shape != (t, d) or grad_out.dtype is not x.dtype:
        raise ctx.error(f"grad_out {grad_out.name} {grad_out.dtype} {grad_out.shape} must be {x.dtype} "
                        f"{(t, d)}")
    acts = {"relu": relu, "gelu": gelu_erf}
    act = acts[activation](graph, pre, prog, name=f"{ctx.name}/{activation}") if activation in acts else pre
    w2s = w2.transpose(0, 2, 1).reshape((e * h, d))
    dg = fully_connected_sparse_grad_w_t(graph, meta, grad_out, w2s, prog, plan=plan,
                                         name=f"{ctx.name}/dgated", options=opts)
    dgates = _dgates(ctx, plan, meta, dg, act, idx_rows, k, h)
    _gate(ctx, plan, meta, dg, idx_rows, gates, k, h, "dact")  # dA, in place
    if activation in acts:
        kind = NonLinearity.RELU if activation == "relu" else NonLinearity.GELU_ERF
        dh = non_linearity_grad(graph, act if activation == "relu" else pre, dg, prog, kind=kind,
                                name=f"{ctx.name}/dhidden")
    else:
        dh = dg
    gated = act if activation in acts else pre
    _gate(ctx, plan, meta, gated, idx_rows, gates, k, h, "gated")  # G (act is not needed again)
    w1s = w1.reshape((e * h, d))
    dx_t = fully_connected_fwd(graph, SparseTensor(meta, dh, plan), w1s.transpose(), prog, params=plan.params,
                               name=f"{ctx.name}/dx", options=opts)
    dw1s_t = fully_connected_grad_a(graph, SparseTensor(meta, dh, plan), x.transpose(), prog,
                                    params=plan.params, name=f"{ctx.name}/dw1", options=opts)
    dw2s_t = fully_connected_grad_a(graph, SparseTensor(meta, gated, plan), grad_out.transpose(), prog,
                                    params=plan.params, name=f"{ctx.name}/dw2", options=opts)
    dw1 = dw1s_t.transpose().reshape((e, h, d))
    dw2 = dw2s_t.reshape((d, e, h)).transpose(1, 0, 2)
    return dx_t.transpose(), dgates, dw1, dw2
