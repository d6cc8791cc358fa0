"""What a training step costs: memory by role and cycles by phase.

Memory: ``weights`` (parameters and buffers), ``gradients`` (the accumulators with gradient
accumulation, else the step's gradient tensors), ``optimizer_state`` (state slots, variable
hyper-parameters, the step counter) and ``activations`` (forward values the backward reads),
from the lowered variables' roles and the joint graph; ``total`` and ``fit`` from the report.
When the step does not fit, ``advice`` names the largest of these and what to do. Cycles: the
step cycles per call (averaged over the calls so far), split by the phase prefix of each
compute set's name (``fwd/``, ``bwd/``, ``upd/``); the rest (streams, copies, loops) is ``other``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["training_summary"]

_PHASES = {"fwd/": "forward", "bwd/": "backward", "upd/": "weight_update", "accum/": "backward"}


def _bytes(tensors: Any) -> int:
    return sum(int(t.numel) * t.dtype.itemsize for t in tensors)


def phase_of(name: str) -> str:
    for prefix, phase in _PHASES.items():
        if name.startswith(prefix) or f"/{prefix}" in name:
            return phase
    return "other"


def training_summary(model: Any) -> dict[str, Any]:
    low = model.lowered
    report = model.report
    accum = [v for v in low.graph.variables if str(getattr(v, "name", "")).startswith("accum/")] \
        if hasattr(low.graph, "variables") else []
    memory = {
        "weights": _bytes([*low.params.values(), *low.buffers.values()]),
        "gradients": _bytes(accum) if accum else int(low.grad_bytes),
        "optimizer_state": _bytes([*low.state.values(), *low.hyper.values(), low.step]),
        "activations": int(low.saved_bytes),
    }
    cycles = {"forward": 0, "backward": 0, "weight_update": 0, "other": 0}
    for step in report.steps:
        cycles[phase_of(str(step["name"]))] += int(step["cycles"]) * int(step["count"])
    calls = max(1, sum(1 for r in report.runs if r["program"] == 1))
    fit = report.fit()
    return {"memory": memory, "advice": _advice(memory, fit), "memory_total": int(report.tile_memory.sum()),
            "memory_by_category": report.memory_by_category, "fit": fit,
            "cycles": {k: v // calls for k, v in cycles.items()}, "cycles_per_call": model.cycle_count,
            "calls": calls}


_ADVICE = {
    "weights": "the weights dominate: shard the model over more IPUs (pipelining) or train in fp16",
    "gradients": "the gradients/accumulators dominate: keep accumulators in fp16 (accum_type) or "
                 "shard the model over more IPUs",
    "optimizer_state": "the optimizer state dominates: fp16 first/second moments (Adam's "
                       "first_order_momentum_accum_type...), a lighter optimizer, or offloading the "
                       "state to streaming memory",
    "activations": "the activations kept for the backward dominate: a smaller micro-batch with more "
                   "gradient accumulation, or recomputation (poptorch.recomputationCheckpoint)",
}


def _advice(memory: dict[str, int], fit: dict[str, Any]) -> str:
    """What dominates the training memory and what to do, when the step does not fit."""
    if fit["fits"]:
        return ""
    top = max(memory, key=memory.__getitem__)
    return (f"does not fit: {fit['tiles_over']} tiles over; of the model's memory, {_ADVICE[top]} "
            f"({top} {memory[top] / 1e6:.1f} MB of {sum(memory.values()) / 1e6:.1f} MB)")
