"""A training step over several IPUs: the joint graph lowered block by block onto each block's IPU.

The lowering is the one-IPU lowering (:mod:`.lowering`) with each node placed on its IPU's
virtual graph (:class:`~softipu.frontends.torch.pipeline.PlacedLowering`): the same ops, the same
order, so the values are those of gradient accumulation on one IPU. Under pipelining the forward
activations the backward reads are stashed on their IPU and restored before the backward (the
memory a pipelined step holds); the cost of the strategy is worked out from the compiled steps
by :func:`~softipu.frontends.torch.pipeline.pipeline_summary` (``TrainingModel.summary()``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from softipu.frontends.torch.options import Options
from softipu.frontends.torch.pipeline import (
    PipelinePlan,
    PlacedLowering,
    Placement,
    place_nodes,
    placed_summary,
    stage_errors,
)
from softipu.frontends.torch.training.joint import Joint
from softipu.frontends.torch.training.lowering import TrainLowered, _TrainLowerer
from softipu.graph import program as P
from softipu.graph.tensor import Tensor

__all__ = ["keep_annotations", "lower_placed", "placed_summary", "placement_of", "stage_errors"]


def placement_of(joint: Joint, options: Options, label: str = "the model") -> Placement | None:
    """The joint graph's placement from its block annotations (None: no blocks, one IPU)."""
    return place_nodes(joint.gm.graph, joint.forward_nodes, dict(options.model_parallel or {}), True,
                       options.gradient_accumulation, label)


class _PlacedTrainLowerer(PlacedLowering, _TrainLowerer):
    def __init__(self, joint: Joint, spec: Any, options: Options, input_names: Sequence[str],
                 named: dict[str, torch.Tensor], placement: Placement) -> None:
        super().__init__(joint, spec, options, input_names, named)
        self.init_placement(placement)
        self.pipelined = placement.strategy == "pipelined" and len(placement.stages) > 1
        self.stashed: dict[torch.fx.Node, Tensor] = {}
        self.restored: set[torch.fx.Node] = set()

    def lower_node(self, node: torch.fx.Node, env: Any) -> Any:
        phase = {"fwd/": "fwd", "bwd/": "bwd"}.get(self.ctx.phase) if node in self.placement.ipu_of else None
        if phase == "bwd" and self.pipelined:
            self._restore(node, env)
        before = len(self.graph.variables)
        result = self.placed_node(node, env, super().lower_node, phase)
        if phase == "fwd":
            self.activations.update(self.graph.variables[before:])
            # an activation stored off chip is stashed there (training/offload.py), not on chip
            if self.pipelined and any(u not in self.joint.forward_nodes for u in node.users) \
                    and not self.offload.stores(node, result):
                buf = self.stash(node, result)
                if buf is not None:
                    self.stashed[node] = buf
        return result

    def _restore(self, node: torch.fx.Node, env: Any) -> None:
        """Before the first backward reader: the activation back from the stash (PopART's Restore)."""
        for a in node.all_input_nodes:
            buf = self.stashed.get(a)
            if buf is None or a in self.restored:
                continue
            self.restored.add(a)
            with self.on_ipu(self.placement.ipu_of[a]):
                self.ctx.prog.add(P.Copy(buf[0], env[a]))
            self.tags.append((self.ctx.prog.programs[-1], self.placement.stage_of[a], "bwd"))

    def _var(self, name: str, torch_dtype: torch.dtype, shape: Sequence[int],
             like: Tensor | None = None, clone: bool = False) -> Tensor:
        """Accumulators and optimizer state on their weight's (gradient's) IPU."""
        ipu = self.home_of(like)
        if ipu is None:
            return super()._var(name, torch_dtype, shape, like, clone)
        root, self.graph = self.graph, self.views[ipu]
        try:
            with self.on_ipu(ipu):
                return super()._var(name, torch_dtype, shape, like, clone)
        finally:
            self.graph = root

    def build(self) -> TrainLowered:
        lowered = super().build()
        self.place(None)
        lowered.extra["pipeline"] = PipelinePlan(self.placement, self.tags, self.stash_bytes,
                                                 self.options.gradient_accumulation,
                                                 self.options.device_iterations, True)
        return lowered


def lower_placed(joint: Joint, spec: Any, options: Options, input_names: Sequence[str],
                 named: dict[str, torch.Tensor], placement: Placement) -> TrainLowered:
    """Lower ``joint`` with every node on its block's IPU (a target of ``placement.num_ipus``)."""
    if options.target.num_ipus != placement.num_ipus:
        options = options.replace(target=options.target.with_num_ipus(placement.num_ipus))
    lowerer = _PlacedTrainLowerer(joint, spec, options, input_names, named, placement)
    low = lowerer.build()
    low.locations = lowerer.locations  # where the optimizer state lives (training/locations.py)
    low.offload = lowerer.offload  # weights and activations in Streaming Memory (training/offload.py)
    return low


def keep_annotations() -> Any:
    """Around a trace: keep ``torch.fx.traceback.annotate``'s node annotations (PopTorch blocks,
    name scopes) once a script has made one; else nothing."""
    import contextlib  # noqa: PLC0415

    from torch.fx import traceback as fx_traceback  # noqa: PLC0415

    from softipu.frontends.torch.custom_ops import NAME_SCOPES  # noqa: PLC0415

    return fx_traceback.preserve_node_meta() if NAME_SCOPES[0] else contextlib.nullcontext()
