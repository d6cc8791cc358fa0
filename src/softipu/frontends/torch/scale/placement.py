"""Automatic placement: which consecutive layers go on which IPU of a pipelined replica.

Given a model as its priced layers in order (:class:`~.layers.LayerCost`), the IPUs of a replica
and the training configuration (micro-batch, recomputation, optimizer state...), choose the
layers per IPU that minimise the slowest stage's modeled time, each IPU's memory
(:func:`~.pod.ipu_memory`, with that IPU's stash depth) within its capacity. Exact: a dynamic
program over (IPUs used, layers placed), ``O(N L^2)``; every IPU gets at least one layer (a
PopART pipeline stage cannot be empty). A stage's time is its layers' forward + backward (+
recomputation): what one IPU does in a steady pipeline cycle.

The result prints as the ``poptorch.BeginBlock(...)`` lines a user would write, and
:func:`apply_placement` sets those blocks on a module (``softipu.poptorch.BeginBlock``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from softipu.frontends.errors import FrontendError
from softipu.frontends.torch.scale.layers import LayerCost
from softipu.frontends.torch.scale.pod import IpuMemory, TrainingConfig, ipu_memory
from softipu.target.pipeline import stash_depths

__all__ = ["Placement", "propose_split", "stage_cycles", "begin_block_lines", "apply_placement"]


@dataclass(frozen=True)
class Placement:
    layers_per_ipu: tuple[int, ...]
    stage_cycles: tuple[int, ...]  # per IPU: forward + backward (+ recomputation) of its layers
    memory: tuple[IpuMemory, ...]

    @property
    def slowest(self) -> int:
        return max(self.stage_cycles)

    def as_dict(self) -> dict[str, Any]:
        return {"layers_per_ipu": list(self.layers_per_ipu), "stage_cycles": list(self.stage_cycles),
                "memory_total": [m.total for m in self.memory], "fits": all(m.fits for m in self.memory)}


def stage_cycles(layers: Sequence[LayerCost], recompute: bool) -> int:
    """One IPU's work in a steady pipeline cycle: forward + backward (+ recomputation)."""
    return sum(x.forward + x.backward + (x.recompute() if recompute else 0) for x in layers)


def _counts(cuts: Sequence[int]) -> tuple[int, ...]:
    return tuple(b - a for a, b in zip(cuts, cuts[1:], strict=False))


def propose_split(layers: Sequence[LayerCost], num_ipus: int, config: TrainingConfig,
                  capacity: int) -> Placement:
    """The split of ``layers`` over ``num_ipus`` IPUs minimising the slowest stage under memory."""
    n, k = len(layers), num_ipus
    if k < 1 or n < k:
        raise FrontendError(f"automatic placement: {n} layers cannot fill {k} pipeline IPUs (each IPU "
                            f"needs at least one layer); use fewer IPUs per replica")
    cfg = replace(config, layers_per_ipu=(0,) * k)
    depths = stash_depths(k, True)
    prefix = [0]
    for x in layers:
        prefix.append(prefix[-1] + stage_cycles([x], cfg.recompute))

    def fits(i: int, a: int, b: int) -> bool:
        return ipu_memory(i, layers[a:b], cfg, depths[i], capacity).fits

    # best[i][j]: the smallest slowest stage placing layers[:j] on IPUs 0..i-1; cut[i][j]: where IPU
    # i-1 starts.
    inf = math.inf
    best = [[inf] * (n + 1) for _ in range(k + 1)]
    cut = [[-1] * (n + 1) for _ in range(k + 1)]
    best[0][0] = 0
    for i in range(1, k + 1):
        for j in range(i, n - (k - i) + 1):
            for a in range(i - 1, j):
                if best[i - 1][a] == inf or not fits(i - 1, a, j):
                    continue
                value = max(best[i - 1][a], prefix[j] - prefix[a])
                if value < best[i][j]:
                    best[i][j], cut[i][j] = value, a
    if best[k][n] == inf:
        raise FrontendError(_no_fit(layers, k, cfg, capacity))
    cuts = [n]
    for i in range(k, 0, -1):
        cuts.append(cut[i][cuts[-1]])
    cuts.reverse()
    counts = _counts(cuts)
    return _placement(layers, counts, cfg, capacity)


def _placement(layers: Sequence[LayerCost], counts: Sequence[int], cfg: TrainingConfig,
               capacity: int) -> Placement:
    depths = stash_depths(len(counts), True)
    at, cycles, memory = 0, [], []
    for i, c in enumerate(counts):
        part = layers[at:at + c]
        cycles.append(stage_cycles(part, cfg.recompute))
        memory.append(ipu_memory(i, part, cfg, depths[i], capacity))
        at += c
    return Placement(tuple(counts), tuple(cycles), tuple(memory))


def _no_fit(layers: Sequence[LayerCost], k: int, cfg: TrainingConfig, capacity: int) -> str:
    """Name the IPU, its layers and what dominates in the time-balanced split ignoring memory."""
    free = propose_split(layers, k, cfg, capacity=10**30)
    worst = max(free.memory, key=lambda m: m.total - m.capacity)
    return (f"automatic placement: no split of the {len(layers)} layers over {k} IPUs fits {capacity:,} B "
            f"per IPU; in the time-balanced split {list(free.layers_per_ipu)}, IPU {worst.ipu} (stage "
            f"{worst.ipu}, layers {worst.layers[0]}..{worst.layers[-1]}) needs {worst.total:,} B, "
            f"{worst.dominant} dominating ({worst.by_class[worst.dominant]:,} B): use more IPUs per "
            f"replica, recomputation, or optimizer state off chip")


def begin_block_lines(paths: Sequence[str], layers_per_ipu: Sequence[int],
                      model: str = "model") -> list[str]:
    """The ``poptorch.BeginBlock`` lines starting each IPU's first layer (``paths[i]``: the layer's
    attribute path in the model, e.g. ``"layers[3]"``)."""
    if len(paths) != sum(layers_per_ipu):
        raise FrontendError(f"begin_block_lines: {len(paths)} layer paths for {sum(layers_per_ipu)} "
                            "placed layers")
    lines, at = [], 0
    for ipu, c in enumerate(layers_per_ipu):
        if c:
            path = paths[at]
            sep = "" if path.startswith("[") else "."
            ref = f"{model}{sep}{path}"
            lines.append(f'{ref} = poptorch.BeginBlock({ref}, "ipu{ipu}", ipu_id={ipu})')
        at += c
    return lines


def _resolve(module: torch.nn.Module, path: str) -> torch.nn.Module:
    """``layers[3].attn`` -> the submodule (attribute and index steps)."""
    obj: Any = module
    for part in path.replace("]", "").replace("[", ".").split("."):
        if not part:
            continue
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    if not isinstance(obj, torch.nn.Module):
        raise FrontendError(f"apply_placement: {path!r} is not a torch.nn.Module of {type(module).__name__}")
    return obj


def apply_placement(module: torch.nn.Module, paths: Sequence[str],
                    layers_per_ipu: Sequence[int]) -> list[str]:
    """Set the blocks on ``module`` (``softipu.poptorch.BeginBlock`` at each IPU's first layer) and
    return the lines a user would write for the same."""
    from softipu.frontends.poptorch_blocks import BeginBlock  # noqa: PLC0415 - PopTorch's names

    lines = begin_block_lines(paths, layers_per_ipu)
    at = 0
    for ipu, c in enumerate(layers_per_ipu):
        if c:
            BeginBlock(_resolve(module, paths[at]), f"ipu{ipu}", ipu_id=ipu)
        at += c
    return lines
