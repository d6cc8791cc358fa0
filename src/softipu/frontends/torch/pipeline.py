"""Model parallelism: placing FX nodes on IPUs by their PopTorch blocks, and pricing the strategy.

**Placement.** ``poptorch.BeginBlock`` / ``Block`` annotate the traced nodes
(``node.meta["custom"]["poptorch_block"]``; AOTAutograd copies a forward op's annotation onto the
backward nodes that differentiate it). :func:`place_nodes` gives every node a block as PopTorch
does: a forward node outside any block inherits the block of the node before it (later layers
inherit; nodes before the first block run on IPU 0, stage 0); a backward node outside any block (the loss's
gradient, say) takes the block of the next annotated backward node, which is the block of the
forward op it follows. A block's stage and IPU come from the strategy (``Stage(...).ipu(n)``),
else ``AutoStage``: the stage is the block's IPU (``SameAsIpu``) or the next number
(``AutoIncrement``); the IPU is the stage's, else the block's ``ipu_id``, else the stage id.

**Lowering.** :class:`PlacedLowering` (mixed into the training lowerer) lowers each node into the
virtual graph of its IPU (``graph/virtual.py``), so its variables, vertices and planner see only
that IPU's tiles; an input produced on another IPU is first copied over (the inter-stage
activation or gradient: a priced inter-IPU copy). Weights live on the IPU of their first user,
optimizer state and accumulators with their weight. Under pipelining each forward activation the
backward reads on IPU ``i`` is stashed (a ``depth x`` buffer on that IPU, PopART's stash depth
``2 x (IPUs to the end) + 1``, the last IPU none) and restored before the backward. Pipelined
inference stashes a value a later stage on the same IPU reads (a skip over stages, or two stages
sharing the IPU): ``d + 1`` rows for a reader ``d`` pipeline cycles later.

**Cost.** The program runs the micro-batches one after another (the values of a pipelined step
are those of gradient accumulation on one IPU). :func:`pipeline_summary` groups the micro-batch's
program steps by stage and IPU (their static cycles), and prices the strategy:

* ``pipelined``: PopART's schedule (``target/pipeline.py``): the stage work of the ``A``
  micro-batches is replaced by ``fill + main + flush``; streaming, accumulation and the optimizer
  stay as they run. Stages sharing an IPU (a model coming back to IPU 0, as Graphcore's BERT head)
  run one after the other in a pipeline cycle (the schedule's ``stage_ipus``);
* ``sharded``: the stages run one after another: the program's cycles;
* the phased strategies (:func:`phase_sequence`, :func:`phased_cycles`): the phases run in
  PopTorch's order (forward phases, the last one also the first backward phase, then the backward
  phases in reverse), each phase its slowest stage's compute and loads (``load_fwd`` /
  ``load_bwd`` tags: weights and activations from Streaming Memory, ``training/offload.py``; and
  the activations copied in). ``serial_phased``: load then compute, phase after phase.
  ``parallel_phased`` alternates two groups of IPUs, so phase ``i + 1``'s loads overlap phase
  ``i``'s compute: ``L0 + sum(max(C_i, L_{i+1}))`` per micro-batch.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from softipu.frontends.errors import FrontendError, LoweringError
from softipu.frontends.torch.export import user_line
from softipu.graph import program as P
from softipu.graph.tensor import Tensor
from softipu.graph.virtual import VirtualGraph
from softipu.target.pipeline import (
    DEPTH_MESSAGE,
    num_stages,
    pipeline_schedule,
    stash_depths,
    training_stages,
)

__all__ = ["PipelinePlan", "Placement", "PlacedLowering", "place_nodes", "placed_lowerer", "placed_summary",
           "pipeline_summary", "plan_from_json", "plan_to_json", "stage_errors"]

BLOCK_KEY = "poptorch_block"  # as frontends/poptorch_blocks.py writes it (frontends may not import up)


@dataclass
class Placement:
    """Where every node of a traced graph runs."""

    strategy: str  # "pipelined" | "sharded" | "serial_phased" | "parallel_phased"
    num_ipus: int  # the target's IPUs (a power of two unless rounded up)
    stages: list[tuple[str, int, int]]  # (block id, stage, ipu) of each stage, in forward order
    ipu_of: dict[torch.fx.Node, int]
    stage_of: dict[torch.fx.Node, int]  # index into ``stages``
    memory: dict[int, float] = field(default_factory=dict)  # per-IPU availableMemoryProportion
    phases: list[int] = field(default_factory=list)  # each stage's phase (phased strategies)

    @property
    def stage_ipus(self) -> list[int]:
        return [ipu for _, _, ipu in self.stages]


def _blocks(nodes: Sequence[torch.fx.Node]) -> dict[torch.fx.Node, tuple]:
    found = {}
    for n in nodes:
        ann = (n.meta.get("custom") or {}).get(BLOCK_KEY)
        if ann is not None:
            found[n] = tuple(ann)
    return found


class _Resolver:
    """Block annotation -> (block id, stage, ipu), as PopTorch's stage managers."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.blocks = dict(config.get("blocks") or {})
        self.auto = config.get("auto_stage", "same_as_ipu")
        self.ids: dict[int, str] = {}  # token -> block id
        self.done: dict[str, tuple[str, int, int]] = {}
        self.next_auto = 0
        self.next_stage = 1  # PopTorch's AutoIncrement starts at 1

    def __call__(self, ann: tuple, node: torch.fx.Node) -> tuple[str, int, int]:
        token, user_id, ipu = ann
        if token not in self.ids:
            if user_id is None:
                user_id, self.next_auto = str(self.next_auto), self.next_auto + 1
            self.ids[token] = user_id
        block = self.ids[token]
        if block in self.done:
            return self.done[block]
        if self.blocks:
            if block not in self.blocks:
                raise FrontendError(f"Unknown Block '{block}' list of expected Blocks: {list(self.blocks)}"
                                    f"{_at(node)}")
            stage, _, stage_ipu = self.blocks[block]
        elif self.auto == "same_as_ipu":
            if ipu is None:
                raise FrontendError(f"poptorch.AutoStage.SameAsIpu was selected but no IPU was specified for "
                                    f"block {block}{_at(node)}")
            stage, stage_ipu = ipu, None
        else:
            stage, stage_ipu, self.next_stage = self.next_stage, None, self.next_stage + 1
        chosen = stage_ipu if stage_ipu is not None else ipu if ipu is not None else stage
        self.done[block] = (block, int(stage), int(chosen))
        return self.done[block]


def _at(node: torch.fx.Node | None) -> str:
    line = user_line(node) if node is not None else None
    return f" (from {line})" if line else ""


def place_nodes(graph: torch.fx.Graph, forward: set[torch.fx.Node] | None, config: dict[str, Any],
                training: bool, accumulation: int, label: str = "the model") -> Placement | None:
    """Each node's IPU and stage from its block annotations (None when the model has no blocks).
    ``forward``: the forward nodes of a joint graph (None: every node is forward)."""
    calls = [n for n in graph.nodes if n.op == "call_function"]
    annotated = _blocks(calls)
    if not annotated:
        return None
    resolve = _Resolver(config)
    fwd = [n for n in calls if forward is None or n in forward]
    bwd = [n for n in calls if forward is not None and n not in forward]
    chosen: dict[torch.fx.Node, tuple[str, int, int]] = {}
    # Nodes before the first block run on IPU 0 as stage 0 (PopTorch's default placement).
    first = ("", 0, 0)
    current = first
    for n in fwd:
        current = resolve(annotated[n], n) if n in annotated else current
        chosen[n] = current
    after = first  # backward nodes after the last annotated one: the gradient of those before any block
    for n in reversed(bwd):
        after = resolve(annotated[n], n) if n in annotated else after
        chosen[n] = after
    stages = _stage_order([chosen[n] for n in fwd], fwd, config.get("strategy", "pipelined"))
    index = {pair: i for i, pair in enumerate(stages)}
    block_stage = {b: index[(s, ipu)] for b, s, ipu in chosen.values() if (s, ipu) in index}
    ipu_of = {n: c[2] for n, c in chosen.items()}
    stage_of = {n: block_stage.get(c[0], index.get((c[1], c[2]), 0)) for n, c in chosen.items()}
    for n in graph.nodes:  # placeholders and constants: with their first user
        if n.op in ("placeholder", "get_attr"):
            user = next((u for u in n.users if u in ipu_of), None)
            if user is not None:
                ipu_of[n], stage_of[n] = ipu_of[user], stage_of[user]
    num_ipus = _num_ipus(max(ipu_of.values()) + 1, bool(config.get("auto_round")), label)
    phase_of = {int(st): int(ph) for st, ph, _ in (config.get("blocks") or {}).values()}
    placement = Placement(config.get("strategy", "pipelined"), num_ipus,
                          [(f"stage {s}", s, ipu) for (s, ipu) in index], ipu_of, stage_of,
                          {int(k): float(v) for k, v in (config.get("memory") or {}).items()},
                          [phase_of.get(s, 0) for (s, _) in index])
    if placement.strategy == "pipelined" and len(stages) > 1:
        _check_depth(len(stages), training, accumulation, label)
    return placement


def _stage_order(chosen: list[tuple[str, int, int]], nodes: list[torch.fx.Node],
                 strategy: str) -> list[tuple[int, int]]:
    """The distinct (stage, ipu) pairs in forward order; under pipelining stage ids must ascend (an IPU
    may hold several stages: PopTorch's ``Stage``s sharing an ``ipu_id``, PopART runs them one after
    the other in a pipeline cycle)."""
    order: list[tuple[int, int]] = []
    for (block, stage, ipu), node in zip(chosen, nodes, strict=True):
        if order and order[-1] == (stage, ipu):
            continue
        if strategy == "pipelined" and order:
            last_stage, last_ipu = order[-1]
            if stage < last_stage or (stage, ipu) in order:
                raise FrontendError(
                    f"pipelining: block '{block}' (stage {stage}, IPU {ipu}) runs after stage {last_stage}"
                    f"{_at(node)}: under PipelinedExecution the stages must ascend in the order the model "
                    "runs its blocks; give later layers higher stage / ipu_id numbers, or use "
                    "ShardedExecution")
        if (stage, ipu) not in order:
            order.append((stage, ipu))
    return order


def _num_ipus(used: int, auto_round: bool, label: str) -> int:
    if used & (used - 1) == 0:
        return used
    if auto_round:
        return 1 << (used - 1).bit_length()
    raise FrontendError(f"{label} uses {used} IPUs: the number of IPUs must be a power of 2; place the "
                        f"blocks on {1 << (used - 1).bit_length()} IPUs or call "
                        "Options.autoRoundNumIPUs(True) to round up")


def _check_depth(stages: int, training: bool, accumulation: int, label: str) -> None:
    s = num_stages(stages, training)
    if accumulation < s:
        what = ("gradient accumulation (Options.Training.gradientAccumulation)" if training
                else "device iterations (Options.deviceIterations)")
        rule = " (2 x forward stages - 1 for training)" if training else ""
        raise FrontendError(f"{label}: pipelining: {DEPTH_MESSAGE}: {stages} forward stages give {s} "
                            f"pipeline stages{rule} but the {what} is {accumulation}; raise it to at "
                            f"least {s}")


# -- lowering ------------------------------------------------------------------------------------------
class _Overlay:
    """``env`` with some inputs replaced by their copies on the node's IPU."""

    def __init__(self, env: dict, replaced: dict) -> None:
        self.env, self.replaced = env, replaced

    def __getitem__(self, node: Any) -> Any:
        found = self.replaced.get(node)
        return found if found is not None else self.env[node]


class PlacedLowering:
    """Mixin for a lowerer (``self.graph``, ``self.ctx``): lowers each placed node into its IPU's
    virtual graph and records which program steps are which stage's work."""

    placement: Placement

    def init_placement(self, placement: Placement) -> None:
        self.placement = placement
        self.views = [VirtualGraph.of_ipu(self.graph, i) for i in range(placement.num_ipus)]
        self.home: dict[Any, int] = {}  # Variable -> IPU
        self._mark = 0
        self._ipu: int | None = None
        self._copies: dict[tuple[Any, int], Tensor] = {}
        self._root_options = self.ctx.options
        self._ipu_options = {i: self.ctx.options.replace(available_memory_proportion=p)
                             for i, p in placement.memory.items()}
        # (micro-batch step, stage, "fwd" | "bwd" | "copy_fwd" | "copy_bwd"): copies land on the stage
        self.tags: list[tuple[P.Program, int, str]] = []
        self.activations: set[Any] = set()  # variables made by forward nodes
        self.stash_bytes = [0] * placement.num_ipus
        self.skips: dict[torch.fx.Node, Tensor] = {}  # inference: values stashed for a later same-IPU stage
        self.skips_restored: set[tuple[torch.fx.Node, int]] = set()

    def place(self, node: torch.fx.Node | None) -> None:
        """Lower what follows on ``node``'s IPU (None: the whole target again)."""
        self._settle()
        ipu = None if node is None else self.placement.ipu_of.get(node)
        self._switch(ipu)

    def _switch(self, ipu: int | None) -> None:
        self._ipu = ipu
        self.ctx.graph = self.graph if ipu is None else self.views[ipu]
        self.ctx.options = self._ipu_options.get(ipu, self._root_options) if ipu is not None \
            else self._root_options

    def _settle(self) -> None:
        """Variables made since the last call live on the current IPU."""
        new = self.graph.variables[self._mark:]
        self._mark = len(self.graph.variables)
        if self._ipu is not None:
            for var in new:
                self.home[var] = self._ipu

    def home_of(self, value: Any) -> int | None:
        if not isinstance(value, Tensor) or value.numel == 0:
            return None
        var = self.graph.variable_of(value)
        return None if var is None else self.home.get(var)

    @contextlib.contextmanager
    def on_ipu(self, ipu: int | None) -> Iterator[None]:
        self._settle()
        outer = self._ipu
        self._switch(ipu)
        try:
            yield
        finally:
            self._settle()
            self._switch(outer)

    def placed_node(self, node: torch.fx.Node, env: Any, lower: Any, phase: str | None = None) -> Any:
        """Lower ``node`` with ``lower(node, env)`` on its IPU (an unplaced node, an optimizer
        update's: on the IPU of its first placed input), copying inputs from other IPUs first.
        With ``phase`` ("fwd" | "bwd") the steps it appends are tagged as its stage's work."""
        ipu = self.placement.ipu_of.get(node)
        if ipu is None:
            ipu = next((h for h in (self.home_of(_value(env, a)) for a in node.all_input_nodes)
                        if h is not None), None)
        if ipu is None:
            return lower(node, env)
        prog = self.ctx.prog
        start = len(prog.programs)
        replaced = {}
        with self.on_ipu(ipu):
            for a in node.all_input_nodes:
                value = _value(env, a)
                home = self.home_of(value)
                if home is not None and home != ipu:
                    replaced[a] = self._copy_to(a, value, ipu)
            copied = len(prog.programs)
            try:
                result = lower(node, _Overlay(env, replaced) if replaced else env)
            except LoweringError as exc:  # a layer too large for its IPU: say which IPU and stage
                stage = self.placement.stage_of.get(node)
                what = f"stage {self.placement.stages[stage][1]}" if stage is not None else "optimizer update"
                where = f"{self.placement.strategy} execution, IPU {ipu} ({what})"
                raise LoweringError(f"{where}: {exc}") from exc
        if phase is not None:
            stage = self.placement.stage_of.get(node, -1)
            self.tags += [(p, stage, f"copy_{phase}") for p in prog.programs[start:copied]]
            self.tags += [(p, stage, phase) for p in prog.programs[copied:]]
        return result

    def _copy_to(self, node: torch.fx.Node, value: Tensor, ipu: int) -> Tensor:
        key = (node, ipu)
        if key not in self._copies:
            view = self.views[ipu]
            out = view.add_variable(value.dtype, value.shape, name=f"ipu{ipu}/{node.name}")
            from softipu.frontends.placement import map_tensor  # noqa: PLC0415 - one call site

            map_tensor(view, out)
            self.ctx.prog.add(P.Copy(value, out))
            self._copies[key] = out
        return self._copies[key]

    def stash_skip(self, node: torch.fx.Node, value: Any) -> None:
        """Pipelined inference: a value read by a later stage on the same IPU (a skip over stages, or
        the next of two stages sharing the IPU) is stashed there, ``d + 1`` rows for a reader ``d``
        pipeline cycles later (the stage in between runs the next micro-batches; within a cycle
        the stash comes before the restore, as PopART orders them)."""
        stage, ipu = self.placement.stage_of.get(node), self.placement.ipu_of.get(node)
        if stage is None or not isinstance(value, Tensor) or value.numel == 0:
            return
        later = [self.placement.stage_of[u] for u in node.users
                 if self.placement.ipu_of.get(u) == ipu and self.placement.stage_of.get(u, stage) > stage]
        if not later:
            return
        depth = max(later) - stage + 1
        with self.on_ipu(ipu):
            buf = self.ctx.graph.add_variable(value.dtype, (depth, *value.shape), name=f"stash/{node.name}")
            from softipu.frontends.placement import map_tensor  # noqa: PLC0415

            map_tensor(self.ctx.graph, buf)
            self.ctx.prog.add(P.Copy(value, buf[0]))
        self.stash_bytes[ipu] += buf.numel * buf.dtype.itemsize
        self.tags.append((self.ctx.prog.programs[-1], stage, "fwd"))
        self.skips[node] = buf

    def restore_skips(self, node: torch.fx.Node, env: Any) -> None:
        """Before a later stage's reader of a stashed value: the value back from the stash."""
        stage = self.placement.stage_of.get(node)
        for a in node.all_input_nodes:
            buf = self.skips.get(a)
            if buf is None or stage is None or stage <= self.placement.stage_of[a] or \
                    (a, stage) in self.skips_restored:
                continue
            self.skips_restored.add((a, stage))
            with self.on_ipu(self.placement.ipu_of[a]):
                self.ctx.prog.add(P.Copy(buf[0], env[a]))
            self.tags.append((self.ctx.prog.programs[-1], stage, "fwd"))

    def stash(self, node: torch.fx.Node, value: Any) -> Tensor | None:
        """Stash a forward activation read by the backward (pipelining): a ``depth``-row buffer on
        its IPU and the copy into it; returns the buffer (restore with :meth:`restore`)."""
        ipu = self.placement.ipu_of.get(node)
        if ipu is None or not isinstance(value, Tensor) or value.numel == 0:
            return None
        var = self.graph.variable_of(value)
        depth = stash_depths(len(self.placement.stages), True)[self.placement.stage_of.get(node, 0)] \
            if len(self.placement.stages) > 1 else 0
        if var not in self.activations or depth == 0:
            return None
        with self.on_ipu(ipu):
            buf = self.ctx.graph.add_variable(value.dtype, (depth, *value.shape), name=f"stash/{node.name}")
            from softipu.frontends.placement import map_tensor  # noqa: PLC0415

            map_tensor(self.ctx.graph, buf)
            self.ctx.prog.add(P.Copy(value, buf[0]))
        self.stash_bytes[ipu] += buf.numel * buf.dtype.itemsize
        self.tags.append((self.ctx.prog.programs[-1], self.placement.stage_of[node], "fwd"))
        return buf


def _value(env: Any, node: torch.fx.Node) -> Any:
    try:
        return env[node]
    except KeyError:
        return None


# -- cost ----------------------------------------------------------------------------------------------
def pipeline_summary(placement: Placement, tags: Sequence[tuple[P.Program, int, str]], executable: Any,
                     run_cycles: int, accumulation: int, device_iterations: int, training: bool,
                     stash_bytes: Sequence[int] = ()) -> dict[str, Any]:
    """The strategy's cost: per stage and IPU cycles, the schedule and the step's cycles.

    ``run_cycles``: the program's cycles for one call (all device iterations, micro-batches one
    after another); ``tags``: the micro-batch's steps by stage. Keys: ``strategy``, ``num_ipus``,
    ``stages`` (per stage: ``ipu``, ``forward_cycles``, ``backward_cycles``, ``copy_cycles``),
    ``ipu_cycles`` (per IPU, one micro-batch), ``stash_bytes`` (per IPU), ``ipu_memory_bytes`` and
    ``ipu_max_tile_bytes`` (per IPU, from the compiled memory plan), ``schedule`` (the
    :class:`~softipu.target.pipeline.PipelineTimeline` as a dict, pipelined only), ``other_cycles``
    (pipelined: the call's cycles outside the schedule: streams, accumulation, optimizer) and
    ``step_cycles`` / ``cycles`` (one call)."""
    from softipu.engine.estimate import StaticCost  # noqa: PLC0415 - frontends price with the engine's walk

    cost = StaticCost(executable, 1)
    n = len(placement.stages)
    sums = {k: [0] * n for k in ("fwd", "bwd", "copy_fwd", "copy_bwd", "load_fwd", "load_bwd")}
    for prog, stage, kind in tags:
        if 0 <= stage < n:
            sums[kind][stage] += cost.cost(prog)[0]
    fwd, bwd, cf, cb = sums["fwd"], sums["bwd"], sums["copy_fwd"], sums["copy_bwd"]
    lf, lb = sums["load_fwd"], sums["load_bwd"]  # Streaming Memory loads and stores (offload.py)
    ipus = placement.stage_ipus
    ipu_cycles = [0] * placement.num_ipus
    for s in range(n):
        ipu_cycles[ipus[s]] += fwd[s] + bwd[s]
    staged = sum(fwd) + sum(bwd) + sum(cf) + sum(cb)  # one micro-batch's stage work, sequential
    out: dict[str, Any] = {
        "strategy": placement.strategy, "num_ipus": placement.num_ipus,
        "stages": [{"stage": st, "ipu": ipu, "forward_cycles": fwd[i], "backward_cycles": bwd[i],
                    "copy_in_cycles": cf[i] + cb[i], "load_cycles": lf[i] + lb[i]}
                   for i, (_, st, ipu) in enumerate(placement.stages)],
        "ipu_cycles": ipu_cycles, "stash_bytes": list(stash_bytes) or [0] * placement.num_ipus,
        "sequential_cycles": int(run_cycles),
    }
    memory = getattr(executable, "memory", None)
    if memory is not None:  # per IPU: bytes over its tiles (stash included) and its fullest tile
        per_ipu = memory.tile_bytes.reshape(-1, executable.target.tiles_per_ipu)
        out["ipu_memory_bytes"] = [int(b) for b in per_ipu.sum(axis=1)]
        out["ipu_max_tile_bytes"] = [int(b) for b in per_ipu.max(axis=1)]
    cycles = int(run_cycles)
    if placement.strategy == "pipelined" and n > 1:
        # a stage's Streaming Memory traffic (off-chip weights, activations) is part of its work
        fl, bl = [a + b for a, b in zip(fwd, lf, strict=True)], [a + b for a, b in zip(bwd, lb, strict=True)]
        stage_cycles = training_stages(fl, bl) if training else fl
        transfers = _transfers(cf, cb, training)
        t = pipeline_schedule(stage_cycles, accumulation=accumulation, training=training,
                              transfer_cycles=transfers, stage_ipus=ipus)
        out["schedule"] = t.as_dict()
        cycles = int(run_cycles) - device_iterations * accumulation * (staged + sum(lf) + sum(lb)) \
            + device_iterations * (t.fill + t.main + t.flush)
        # what is not stage work: streaming, accumulation, the optimizer update, sync
        out["other_cycles"] = cycles - device_iterations * (t.fill + t.main + t.flush)
    if placement.strategy in ("serial_phased", "parallel_phased"):
        seq = phase_sequence(placement.phases, sums, training)
        total = phased_cycles(seq, placement.strategy == "parallel_phased")
        loads = sum(sums["load_fwd"]) + sum(sums["load_bwd"])
        out["phases"] = seq
        out["phased_cycles"] = total  # one micro-batch's phases, as the strategy runs them
        out["overlapped_cycles"] = sum(p["compute_cycles"] + p["load_cycles"] for p in seq) - total
        cycles = int(run_cycles) - device_iterations * accumulation * (staged + loads) \
            + device_iterations * accumulation * total
    out["cycles"] = cycles
    out["step_cycles"] = cycles // max(device_iterations, 1)
    return out


def phase_sequence(phases: Sequence[int], sums: dict[str, list[int]], training: bool) -> list[dict[str, Any]]:
    """The phases in the order they run, each with its compute (the slowest of its stages, which
    run side by side on their IPUs) and its loads (weights and activations from Streaming Memory
    and the activations copied in from the previous phase's IPUs; the slowest stage's). Training
    runs the forward phases, then the backward phases in reverse; the last forward phase and the
    first backward phase are one phase (PopTorch's default, without ``useSeparateBackwardPhase``)."""
    order = sorted(set(phases))

    def entry(p: int, kinds: tuple[str, ...], label: str) -> dict[str, Any]:
        stages = [s for s, ph in enumerate(phases) if ph == p]
        compute = max(sum(sums[k][s] for k in kinds) for s in stages)
        load = max(sum(sums[f"{c}_{k}"][s] for k in kinds for c in ("load", "copy")) for s in stages)
        return {"phase": p, "pass": label, "compute_cycles": int(compute), "load_cycles": int(load)}

    seq = [entry(p, ("fwd",), "fwd") for p in order[:-1]]
    if order:
        last = ("fwd", "bwd") if training else ("fwd",)
        seq.append(entry(order[-1], last, "+".join(last)))
    if training:
        seq += [entry(p, ("bwd",), "bwd") for p in reversed(order[:-1])]
    return seq


def phased_cycles(seq: Sequence[dict[str, Any]], parallel: bool) -> int:
    """One micro-batch through the phases. Serial: each phase loads, then computes. Parallel (the
    phases alternate between two groups of IPUs): phase ``i + 1``'s loads run on the other group
    while phase ``i`` computes, so ``L0 + sum(max(C_i, L_{i+1}))``."""
    if not parallel:
        return sum(p["compute_cycles"] + p["load_cycles"] for p in seq)
    loads = [p["load_cycles"] for p in seq] + [0]
    return loads[0] + sum(max(p["compute_cycles"], loads[i + 1]) for i, p in enumerate(seq))


def _transfers(cf: list[int], cb: list[int], training: bool) -> list[int]:
    """The copy after each schedule stage, priced where it lands: forward stage s sends its output
    to stage s+1 (``cf[s+1]``); for training, the backward of IPU i sends its gradient to IPU i-1
    (``cb[i-1]``), the merged last stage first."""
    n = len(cf)
    forward = [cf[s + 1] for s in range(n - 1)]
    if not training:
        return forward
    return forward + [cb[i - 1] for i in range(n - 1, 0, -1)]


@dataclass
class PipelinePlan:
    """What pricing a placed program needs after the compile: the placement and the micro-batch's
    steps by stage (``Lowered.extra["pipeline"]``, ``TrainLowered.extra["pipeline"]``)."""

    placement: Placement
    tags: list[tuple[P.Program, int, str]]
    stash_bytes: list[int]
    accumulation: int  # micro-batches through the pipeline per step (GA; device iterations for inference)
    device_iterations: int  # steps per call (1 for inference: its device iterations are the pipeline's)
    training: bool

    def summary(self, executable: Any, run_cycles: int) -> dict[str, Any]:
        return pipeline_summary(self.placement, self.tags, executable, run_cycles, self.accumulation,
                                self.device_iterations, self.training, self.stash_bytes)


def _program_nodes(executable: Any) -> list[P.Program]:
    """Every program node of ``executable`` in one fixed order (its programs, then its functions by
    id): the same order for an executable and the one saved and loaded from it."""
    roots = [*executable.programs, *(executable.functions[k] for k in sorted(executable.functions))]
    return [node for root in roots for node in P.walk(root)]


def plan_to_json(plan: PipelinePlan, executable: Any) -> dict[str, Any]:
    """The placement plan as an export records it (JSON values): the placement without its FX
    nodes, and each tagged step as its position in :func:`_program_nodes` (-1: not in the
    executable, e.g. outlined away; it is then dropped on load, as it is never priced)."""
    index = {id(node): i for i, node in enumerate(_program_nodes(executable))}
    pl = plan.placement
    return {"strategy": pl.strategy, "num_ipus": pl.num_ipus, "stages": [list(s) for s in pl.stages],
            "memory": {str(k): v for k, v in pl.memory.items()}, "phases": list(pl.phases),
            "tags": [[index.get(id(q), -1), int(stage), kind] for q, stage, kind in plan.tags],
            "stash_bytes": [int(b) for b in plan.stash_bytes], "accumulation": plan.accumulation,
            "device_iterations": plan.device_iterations, "training": plan.training}


def plan_from_json(d: dict[str, Any], executable: Any) -> PipelinePlan:
    """The plan :func:`plan_to_json` recorded, its tags on the loaded executable's steps."""
    nodes = _program_nodes(executable)
    placement = Placement(str(d["strategy"]), int(d["num_ipus"]),
                          [(str(b), int(s), int(i)) for b, s, i in d["stages"]], {}, {},
                          {int(k): float(v) for k, v in d["memory"].items()}, [int(p) for p in d["phases"]])
    tags = [(nodes[i], int(s), str(k)) for i, s, k in d["tags"] if 0 <= int(i) < len(nodes)]
    return PipelinePlan(placement, tags, [int(b) for b in d["stash_bytes"]], int(d["accumulation"]),
                        int(d["device_iterations"]), bool(d["training"]))


def placed_summary(lowered: Any, engine: Any) -> dict[str, Any] | None:
    """The strategy's cost for the last call (before any call: the program's static cost), as
    :func:`pipeline_summary` gives it; None for a model without blocks."""
    plan = lowered.extra.get("pipeline") if lowered is not None else None
    if plan is None:
        return None
    from softipu.engine.estimate import StaticCost  # noqa: PLC0415

    runs = [c for i, c in engine.log.runs if i == 1]
    run = int(runs[-1]) if runs else StaticCost(engine.executable, 1).cost(engine.executable.programs[1])[0]
    return plan.summary(engine.executable, run)


def placed_lowerer(ep: Any, options: Any, input_names: Sequence[str]) -> Any:
    """An inference lowerer placing nodes on their blocks' IPUs (None: the model has no blocks)."""
    from softipu.frontends.torch.lower import _Lowerer  # noqa: PLC0415 - lower.py calls this

    placement = place_nodes(ep.graph, None, dict(options.model_parallel or {}), False,
                            options.device_iterations, "the model")
    if placement is None:
        return None
    if options.target.num_ipus != placement.num_ipus:
        options = options.replace(target=options.target.with_num_ipus(placement.num_ipus))

    class _PlacedLowerer(PlacedLowering, _Lowerer):
        def lower_node(self, node: torch.fx.Node, env: Any) -> Any:
            tag = "fwd" if self.ctx.prog is self.step else None
            pipelined = tag is not None and self.placement.strategy == "pipelined"
            if pipelined:
                self.restore_skips(node, env)
            result = self.placed_node(node, env, super().lower_node, tag)
            if pipelined:
                self.stash_skip(node, result)
            return result

        def run(self) -> Any:
            self.step = self.ctx.prog
            lowered = super().run()
            self.place(None)
            lowered.extra["pipeline"] = PipelinePlan(self.placement, self.tags, self.stash_bytes,
                                                     self.options.device_iterations, 1, False)
            return lowered

    lowerer = _PlacedLowerer(ep, options, input_names)
    lowerer.init_placement(placement)
    return lowerer



@contextlib.contextmanager
def stage_errors(lowered: Any) -> Iterator[None]:
    """Around the compile of a placed model: an out-of-memory error also names the IPU of the
    worst tile and the stage(s) placed there."""
    from softipu.errors import OutOfMemoryError  # noqa: PLC0415

    plan = lowered.extra.get("pipeline") if lowered is not None else None
    try:
        yield
    except OutOfMemoryError as exc:
        found = re.search(r"tile (\d+) needs", str(exc))
        if plan is None or found is None:
            raise
        ipu = int(found[1]) // lowered.graph.target.tiles_per_ipu
        stages = [str(st) for _, st, i in plan.placement.stages if i == ipu]
        stash = plan.stash_bytes[ipu] if ipu < len(plan.stash_bytes) else 0
        what = f"stage {', '.join(stages)}" if stages else "no stage (inputs, optimizer or copies)"
        raise OutOfMemoryError(f"{plan.placement.strategy} execution: IPU {ipu} ({what}; pipeline stash "
                               f"{stash:,} B) does not fit:\n{exc}\n  or move layers off IPU {ipu} "
                               "(BeginBlock / Stage(...).ipu(n))") from exc
