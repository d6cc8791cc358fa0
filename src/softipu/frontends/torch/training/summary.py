"""What a training step costs: memory by role, per tile, and cycles by phase.

Memory, from the compiled memory plan's placement of every variable on tiles (the same bytes the
report's categories add up, alignment included): ``weights`` (parameters and buffers),
``gradients`` (the accumulators with gradient accumulation, else the variables holding the
step's gradients), ``optimizer_state`` (state slots, variable hyper-parameters, the step counter)
and ``activations`` (the variables of forward values the backward reads). ``memory_per_tile`` holds
each role's bytes on every tile, ``memory`` their totals; ``worst_tile`` is the fullest tile with
its bytes by role and ``dominant`` the role with the most bytes there. When the step does not fit,
``advice`` names that role and what to do. ``locations``: where each role lives (on chip,
Streaming Memory, sharded over replicas) with its bytes per replica and per IPU
(:func:`~softipu.frontends.torch.training.locations.tensor_locations`). Cycles: the step cycles
per call (averaged over the calls so far), split by the phase prefix of each compute set's name
(``fwd/``, ``bwd/``, ``upd/``); the rest (streams, copies, loops) is ``other``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from softipu.frontends.torch.training.locations import tensor_locations

__all__ = ["training_summary", "memory_by_role_per_tile", "ROLES"]

_PHASES = {"fwd/": "forward", "bwd/": "backward", "upd/": "weight_update", "accum/": "backward"}
ROLES = ("weights", "gradients", "optimizer_state", "activations")
_PREFIXES = {"weights/": "weights", "buffers/": "weights", "accum/": "gradients",
             "optimizer/": "optimizer_state"}


def phase_of(name: str) -> str:
    for prefix, phase in _PHASES.items():
        if name.startswith(prefix) or f"/{prefix}" in name:
            return phase
    return "other"


def _role_of_variables(low: Any) -> dict[int, int]:
    """Variable id -> index in :data:`ROLES`: by name for the roles' own variables, by the ids the
    lowering recorded for gradients (without accumulation) and saved activations."""
    roles: dict[int, int] = {}
    for var_id in low.extra.get("saved_variables", ()):
        roles[int(var_id)] = ROLES.index("activations")
    for var_id in low.extra.get("gradient_variables", ()):
        roles[int(var_id)] = ROLES.index("gradients")
    for v in low.graph.variables:
        for prefix, role in _PREFIXES.items():
            if v.name.startswith(prefix):
                roles[v.id] = ROLES.index(role)
    return roles


def _roles_of_pieces(low: Any, plan: Any) -> np.ndarray:
    """The role index (-1: none) of each (variable, tile) piece of the memory plan."""
    lookup = np.full(max(len(low.graph.variables), 1), -1, np.int64)
    for var_id, role in _role_of_variables(low).items():
        if var_id < lookup.size:
            lookup[var_id] = role
    return lookup[plan.var_ids] if plan.var_ids.size else plan.var_ids


def memory_by_role_per_tile(low: Any, plan: Any, tiles: int) -> dict[str, np.ndarray]:
    """Bytes of each role on each tile, from the memory plan's (variable, tile, bytes) placement."""
    role = _roles_of_pieces(low, plan)
    out = {}
    for i, name in enumerate(ROLES):
        sel = role == i
        out[name] = np.bincount(plan.var_tiles[sel], weights=plan.var_bytes[sel],
                                minlength=tiles).astype(np.int64)
    return out


def training_summary(model: Any) -> dict[str, Any]:
    low = model.lowered
    report = model.report
    per_tile = memory_by_role_per_tile(low, model.engine.executable.memory, int(report.tile_memory.size))
    memory = {k: int(v.sum()) for k, v in per_tile.items()}
    fit = report.fit()
    worst = int(fit["worst_tile"])
    on_worst = {k: int(v[worst]) for k, v in per_tile.items()} if report.tile_memory.size else {}
    dominant = max(on_worst, key=on_worst.__getitem__) if any(on_worst.values()) else ""
    others = _others(_always_live_role_bytes(low, model.engine.executable.memory, worst), fit)
    if others and max(others.values()) > on_worst.get(dominant, 0):
        dominant = max(others, key=others.__getitem__)
    cycles = {"forward": 0, "backward": 0, "weight_update": 0, "other": 0}
    for step in report.steps:
        cycles[phase_of(str(step["name"]))] += int(step["cycles"]) * int(step["count"])
    calls = max(1, sum(1 for r in report.runs if r["program"] == 1))
    return {"memory": memory, "memory_per_tile": per_tile,
            "worst_tile": {"tile": worst, "bytes": int(fit["worst_tile_bytes"]), "by_role": on_worst,
                           "other": int(fit["worst_tile_bytes"]) - sum(on_worst.values())},
            "dominant": dominant, "advice": _advice(memory, on_worst, others, fit),
            "memory_total": int(report.tile_memory.sum()),
            "memory_by_category": report.memory_by_category, "fit": fit,
            "cycles": {k: v // calls for k, v in cycles.items()}, "cycles_per_call": model.cycle_count,
            "calls": calls, "locations": tensor_locations(model, memory)}


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


# What else fills a tile, by the report's memory category, when none of the roles dominates.
_OTHER_ADVICE = {
    "not_always_live": "the step's temporary values (the working sets of its largest ops) dominate: "
                       "a smaller micro-batch with more gradient accumulation, a lower "
                       "availableMemoryProportion, or recomputation",
    "exchange_code": "exchange code dominates (many small ops moving data to this tile): fewer, "
                     "larger ops, or a layout that keeps the data where it is used",
    "codelet_code": "vertex code dominates (many kinds of codelets on this tile): fewer op kinds "
                    "per tile, or spreading the model over more IPUs",
    "vertex_state": "vertex state dominates (many vertices on this tile): larger grains per vertex, "
                    "or spreading the model over more IPUs",
}


def _always_live_role_bytes(low: Any, plan: Any, tile: int) -> tuple[int, int]:
    """(always-live, not-always-live) bytes of the four roles' variables on ``tile``."""
    role = _roles_of_pieces(low, plan)
    on = (plan.var_tiles == tile) & (role >= 0)
    always = plan.always_live[plan.var_ids] if plan.var_ids.size else on
    return int(plan.var_bytes[on & always].sum()), int(plan.var_bytes[on & ~always].sum())


def _others(role_bytes: tuple[int, int], fit: dict[str, Any]) -> dict[str, int]:
    """The fullest tile's bytes outside the four roles, by the report's category (the roles'
    variables taken out of the variable categories they are counted in)."""
    cats = dict(fit.get("worst_tile_categories", {}))
    always, transient = role_bytes
    cats["always_live_variables"] = max(0, cats.get("always_live_variables", 0) - always)
    cats["not_always_live"] = max(0, cats.get("not_always_live", 0) - transient)
    return {k: v for k, v in cats.items() if v > 0}


def _advice(memory: dict[str, int], on_worst: dict[str, int], others: dict[str, int],
            fit: dict[str, Any]) -> str:
    """What dominates the fullest tile and what to do, when the step does not fit: one of the four
    roles, or else the largest other category (temporaries, code, vertex state)."""
    if fit["fits"]:
        return ""
    head = (f"does not fit: {fit['tiles_over']} tiles over; on the fullest tile ({fit['worst_tile']}, "
            f"{fit['worst_tile_bytes']:,} B) ")
    other = max(others, key=others.__getitem__) if others else ""
    where = on_worst if any(on_worst.values()) else memory
    top = max(where, key=where.__getitem__)
    if other in _OTHER_ADVICE and others[other] > where[top]:
        return head + f"{_OTHER_ADVICE[other]} ({other} {others[other]:,} B there; {top} {where[top]:,} B)"
    return head + (f"{_ADVICE[top]} ({top} {where[top]:,} B there; {top} {memory[top] / 1e6:.1f} MB of "
                   f"{sum(memory.values()) / 1e6:.1f} MB over all tiles)")
