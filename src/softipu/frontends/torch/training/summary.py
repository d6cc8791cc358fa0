"""What a training step costs: memory by role and cycles by phase.

Memory: ``weights`` (parameters and buffers), ``gradients`` (the accumulators with gradient
accumulation, else the step's gradient tensors), ``optimizer_state`` (state slots, variable
hyper-parameters, the step counter) and ``activations`` (forward values the backward reads),
from the lowered variables' roles and the joint graph; ``total`` and ``fit`` from the report.
Cycles: the last call's step cycles split by the phase prefix of each compute set's name
(``fwd/``, ``bwd/``, ``upd/``); the rest (streams, copies, loops) is ``other``.
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
    return {"memory": memory, "memory_total": int(report.tile_memory.sum()),
            "memory_by_category": report.memory_by_category, "fit": report.fit(),
            "cycles": cycles, "cycles_per_call": model.cycle_count, "runs": len(report.runs)}
