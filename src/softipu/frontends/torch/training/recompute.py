"""Recomputation: forward values the backward needs, recomputed in the backward instead of kept.

PopART's ``autoRecomputation`` (PopTorch: ``opts._Popart.set("autoRecomputation", int(mode))``,
softipu: ``Options(recomputation=...)``) trades memory for cycles: a forward value the backward
reads is either kept from the forward to the backward (an activation, live the whole step) or
computed again from kept values just before the backward needs it. The decision and the rewrite
are PyTorch's own: the joint graph goes through ``torch._functorch.partitioners``'
``min_cut_rematerialization_partition`` (what ``torch.compile`` uses), with the checkpoint
policies of ``torch.utils.checkpoint`` as node tags (``node.meta["recompute"]``) for the modes
that say what to recompute. The forward and backward graphs it returns are joined back into one
joint graph: the recomputed ops appear twice, once in the forward and again in the backward
(lowered as ``bwd/recompute/...`` compute sets, so their cycles count in the backward).

Modes (PopART's ``RecomputationType``, by value):

* ``none`` (0): every forward value the backward reads is kept (the joint graph as traced).
* ``standard`` (1): the partitioner's min-cut chooses (PopART: checkpoints picked to lower the
  peak): cheap ops whose inputs are kept anyway are recomputed, matmuls and convolutions kept.
* ``norm_only`` (2): only normalisations (and elementwise ops reading their results) are
  recomputed; every other value is kept.
* ``recompute_all`` (4): everything is recomputed from the weights and inputs except the
  tensors marked with ``poptorch.recomputationCheckpoint`` (and random ops, whose second draw
  would differ).
* ``pipeline`` (3): as ``recompute_all``, and each PopTorch block's (stage's) inputs are kept too,
  so each stage recomputes from its own inputs as PopART does under pipelining.

``recomputationCheckpoint(t)`` is the op ``softipu::recomputation_checkpoint``: an identity
(its gradient passes through) that marks ``t`` as kept, whatever the mode.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import operator
from typing import Any

import torch
from torch.utils.checkpoint import CheckpointPolicy

from softipu.frontends.errors import FrontendError
from softipu.frontends.torch.registry import register_lowering

__all__ = ["RECOMPUTATION_MODES", "RecomputationType", "checkpoint_op", "recompute", "recomputation_mode"]

# PopART's RecomputationType values (sessionoptions.hpp) -> softipu's names.
RECOMPUTATION_MODES = ("none", "standard", "norm_only", "pipeline", "recompute_all")


class RecomputationType(enum.IntEnum):
    """PopART's ``popart.RecomputationType`` (its Python binding names None ``NoRecompute``)."""

    NoRecompute = 0
    Standard = 1
    NormOnly = 2
    Pipeline = 3
    RecomputeAll = 4

_aten = torch.ops.aten


@torch.library.custom_op("softipu::recomputation_checkpoint", mutates_args=())
def checkpoint_op(x: torch.Tensor) -> torch.Tensor:
    """``x`` unchanged: a value kept from the forward to the backward when recomputation is on."""
    return x.clone()


@checkpoint_op.register_fake
def _checkpoint_fake(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


def _checkpoint_backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
    return grad


checkpoint_op.register_autograd(_checkpoint_backward)


@register_lowering("softipu::recomputation_checkpoint")
def _lower_checkpoint(ctx: Any, node: Any, x: Any) -> Any:
    return x


def recomputation_mode(value: Any) -> str:
    """A mode name from PopART's ``RecomputationType`` (an int or enum 0..4) or a softipu name."""
    if isinstance(value, str) and value in RECOMPUTATION_MODES:
        return value
    try:
        index = int(value)
    except (TypeError, ValueError):
        index = -1
    if isinstance(value, bool) or not 0 <= index < len(RECOMPUTATION_MODES):
        raise FrontendError(f"autoRecomputation must be a RecomputationType (None=0, Standard=1, NormOnly=2, "
                            f"Pipeline=3, RecomputeAll=4) or one of {RECOMPUTATION_MODES}, got {value!r}")
    return RECOMPUTATION_MODES[index]


_NORMS = {_aten.native_layer_norm.default, _aten.native_group_norm.default,
          _aten._native_batch_norm_legit_functional.default, _aten._native_batch_norm_legit.default,
          _aten._native_batch_norm_legit_no_training.default, _aten.native_batch_norm.default}


def _is_checkpoint(node: torch.fx.Node) -> bool:
    return node.target is torch.ops.softipu.recomputation_checkpoint.default


def _is_random(node: torch.fx.Node) -> bool:
    return torch.Tag.nondeterministic_seeded in getattr(node.target, "tags", ())


def _stage_inputs(graph: torch.fx.Graph, forward: set[str]) -> set[torch.fx.Node]:
    """Forward values read by a forward op of another PopTorch block (a stage's inputs), each
    node's block inherited from the node before it as PopTorch places them."""
    from softipu.frontends.torch.pipeline import BLOCK_KEY  # noqa: PLC0415

    block: dict[torch.fx.Node, Any] = {}
    current = None
    for node in graph.nodes:
        ann = (node.meta.get("custom") or {}).get(BLOCK_KEY)
        current = tuple(ann) if ann is not None else current
        block[node] = current
    return {n for n in graph.nodes if n.op == "call_function" and n.name in forward
            and any(u.name in forward and block[u] != block[n] for u in n.users)}


def _tag(graph: torch.fx.Graph, forward: set[str], mode: str) -> None:
    """Checkpoint policies on the forward nodes (by the node names in ``forward``) for ``mode``."""
    norm_values: set[torch.fx.Node] = set()
    kept = _stage_inputs(graph, forward) if mode == "pipeline" else set()
    for node in graph.nodes:
        if node.op != "call_function" or node.name not in forward:
            continue
        if _is_checkpoint(node) or _is_random(node) or node in kept:
            policy = CheckpointPolicy.MUST_SAVE
        elif mode in ("pipeline", "recompute_all"):
            policy = CheckpointPolicy.MUST_RECOMPUTE
        elif mode == "norm_only":
            inputs = node.all_input_nodes
            after_norm = len(inputs) == 1 and inputs[0] in norm_values
            norm = node.target in _NORMS or after_norm and (
                node.target is operator.getitem or torch.Tag.pointwise in getattr(node.target, "tags", ()))
            if norm:
                norm_values.add(node)
            policy = CheckpointPolicy.MUST_RECOMPUTE if norm else CheckpointPolicy.MUST_SAVE
        else:
            continue
        node.meta["recompute"] = policy


def _seed(graph: torch.fx.Graph, loss: torch.fx.Node, forward: set[str]) -> torch.fx.Node:
    """The backward's seed: the gradient of the loss, ``full_like(loss, 1)`` in the traced graph."""
    for node in loss.users:
        if node.name not in forward and node.target in (_aten.full_like.default, _aten.ones_like.default):
            return node
    raise FrontendError("recomputation: the joint graph's backward does not start from the loss "
                        f"({loss.name}) as expected; use autoRecomputation None for this model")


def recompute(joint: Any, mode: str, label: str = "model") -> Any:
    """``joint`` (a :class:`~softipu.frontends.torch.training.joint.Joint`) with the forward values
    ``mode`` says to recompute moved into the backward (see the module docstring). ``none``
    returns ``joint`` itself."""
    if mode == "none":
        return joint
    from torch._functorch.partitioners import min_cut_rematerialization_partition  # noqa: PLC0415

    gm = torch.fx.GraphModule(joint.gm, copy.deepcopy(joint.gm.graph))
    graph = gm.graph
    forward = {n.name for n in joint.forward_nodes}
    output = next(n for n in reversed(graph.nodes) if n.op == "output")
    outs = list(output.args[0])
    num_fwd = len(joint.mutated) + joint.num_user_outputs
    seed = _seed(graph, outs[len(joint.mutated) + joint.loss_index], forward)
    first = next(n for n in graph.nodes if n.op != "placeholder")
    with graph.inserting_before(first):
        tangent = graph.placeholder("tangents_1")
    tangent.meta = dict(seed.meta)
    seed.replace_all_uses_with(tangent)
    graph.erase_node(seed)
    _tag(graph, forward, mode)
    gm.recompile()
    try:
        fw, bw = min_cut_rematerialization_partition(gm, None, num_fwd_outputs=num_fwd)
    except Exception as exc:  # noqa: BLE001 - torch's partitioner failing is reported the same way
        raise FrontendError(f"{label}: recomputation ({mode}) failed in PyTorch's partitioner: "
                            f"{type(exc).__name__}: {exc}; use autoRecomputation None") from exc
    return _join(joint, fw, bw, seed, num_fwd)


def _join(joint: Any, fw: torch.fx.GraphModule, bw: torch.fx.GraphModule, seed: torch.fx.Node,
          num_fwd: int) -> Any:
    """One joint graph again: the forward graph, then the backward graph reading the forward's
    saved values (by name) and the seed rebuilt from the loss."""
    new = torch.fx.Graph()
    by_name: dict[str, torch.fx.Node] = {}
    for ph in (n for n in joint.gm.graph.nodes if n.op == "placeholder"):
        by_name[ph.name] = new.placeholder(ph.name)
        by_name[ph.name].meta = dict(ph.meta)
    forward: set[torch.fx.Node] = set(by_name.values())
    fw_out: list[Any] = []
    for node in fw.graph.nodes:
        if node.op == "placeholder":
            continue
        if node.op == "output":
            fw_out = [by_name[a.name] if isinstance(a, torch.fx.Node) else a for a in node.args[0]]
            continue
        copied = new.node_copy(node, lambda a: by_name[a.name])
        by_name[node.name] = copied
        forward.add(copied)
    env: dict[torch.fx.Node, torch.fx.Node] = {}
    bw_out: list[Any] = []
    for node in bw.graph.nodes:
        if node.op == "placeholder":
            if node.name == "tangents_1":
                env[node] = new.node_copy(seed, lambda a: by_name[a.name])
            else:
                env[node] = by_name[node.name]
        elif node.op == "output":
            bw_out = [env[a] if isinstance(a, torch.fx.Node) else a for a in node.args[0]]
        else:
            env[node] = new.node_copy(node, lambda a: env[a])
            if node.name in by_name and node.target is not torch.ops.aten.detach.default:
                env[node].meta["softipu_recomputed"] = True
    new.output((*fw_out[:num_fwd], *bw_out))
    gm = torch.fx.GraphModule(joint.gm, new)
    return dataclasses.replace(joint, gm=gm, forward_nodes=forward)


def recomputed_nodes(joint: Any) -> list[torch.fx.Node]:
    """The backward's copies of forward ops (what recomputation runs again)."""
    return [n for n in joint.gm.graph.nodes if n.meta.get("softipu_recomputed")]
