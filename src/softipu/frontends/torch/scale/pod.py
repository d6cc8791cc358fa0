"""Compose priced layers into a training step on a system: pipeline, collectives, optimizer, memory.

The per-replica model is priced once (:mod:`.layers`: each distinct layer once); the system
multiplies. For a configuration of ``R`` replicas of ``k`` IPUs each (pipelined), one step
(one weight update) is, in order:

1. **The pipeline** (:func:`softipu.target.pipeline.pipeline_schedule`, PopART's schedule): per IPU
   the forward and backward of its layers (backward + recomputation of the forward when
   recomputation is on), ``A`` micro-batches; stage outputs cross IPU-Links
   (:func:`softipu.target.links.flows_cost` between consecutive IPUs of the replica, forward
   activations and their gradients back), a sync over the replica's IPUs per pipeline cycle.
   A model may come back to an IPU (``TrainingConfig.stage_ipus``, PopTorch's
   ``AutoStage.AutoIncrement``: Graphcore's BERT runs its head on IPU 0 with the embedding): that IPU
   then runs several stages a cycle, holds all their layers and stashes each at its stage's depth.
2. **Gradient reduction across replicas**: each IPU's gradients, all at once (the replica's IPUs
   run their rings side by side; the IPU with the most gradient bytes bounds it: priced as
   ``k x`` its bytes over ``k`` IPUs per replica); an all-reduce, or with replicated tensor
   sharding (RTS) a reduce-scatter now and an all-gather of the updated weights after the update
   (:func:`softipu.target.links.collective_cost`).
3. **The optimizer update**: the priced layers' update cycles per parameter element (the real
   optimizer's update, compiled) x the elements this IPU updates (its share of ``1/R`` with RTS).
   With the optimizer state off chip, the state is loaded from and stored back to Streaming
   Memory at the system's rate per IPU (:attr:`System.streaming_memory_bytes_per_second_per_ipu`).
4. **Host I/O**: the step's input bytes over the IPU's share of the host links, serially [U]
   (PopART can overlap it; the serial figure is an upper bound).

Memory per IPU, by class: weights; gradients (accumulators, with GA > 1); optimizer state on chip
(none when off chip; ``1/R`` of it with RTS); stash (per layer its recomputation checkpoint, or all
its saved activations without recomputation, x the IPU's stash depth: the micro-batches in flight);
activations (the current micro-batch's: the largest layer's temporary peak, one layer's backward at
a time, plus every layer's checkpoint or saved activations: an upper bound by one layer's); code
(exchange and control code and vertex state of each DISTINCT layer on the IPU once: PopART
outlines identical layers; codelet code and stacks once per IPU, held per tile whatever runs
there). Optimizer state off chip (``TensorLocations``, sharded over the replicas with RTS) is no
SRAM: it is charged to Streaming Memory, reported per replica against the system's.

The stash follows PopART (graphcore/popart ``willow/src/transforms/pipeline.cpp``): PopTorch turns
``autoRecomputation`` to ``Pipeline`` when it pipelines over several IPUs; PopART then stashes only
an IPU's inputs (what an IpuCopy brings) and the tensors the user checkpointed
(``getStashCandidateTensors``: ``isProducedOnIPU`` / ``hasCheckpointProducer``), each in a stash of
``restore stage - stash stage + 1`` entries (``2 x (IPUs to the end) + 1``; the last IPU, whose
forward and backward are one stage, none). With a checkpoint at every layer's input (Graphcore's
``recompute_checkpoint_every_layer``) that is each layer's input here, the first one being the IPU's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from softipu.frontends.errors import FrontendError
from softipu.frontends.torch.scale.layers import LayerCost
from softipu.target import links
from softipu.target.pipeline import PipelineTimeline, pipeline_schedule, stash_depths, training_stages
from softipu.target.systems import System

__all__ = ["TrainingConfig", "PodEstimate", "IpuMemory", "price_training", "ipu_memory", "MEMORY_CLASSES"]

MEMORY_CLASSES = ("weights", "gradients", "optimizer_state", "stash", "activations", "code")


@dataclass(frozen=True)
class TrainingConfig:
    """The inputs of one priced training configuration (PopTorch's options, by meaning)."""

    micro_batch: int
    accumulation: int  # gradientAccumulation
    replicas: int  # replicationFactor (over the whole system)
    layers_per_ipu: tuple[int, ...]  # consecutive layers of each pipeline stage (one stage an IPU by default)
    recompute: bool = True  # a recomputation checkpoint at each layer's input
    optimizer_state_bytes_per_param: int = 8  # e.g. LAMB/Adam: two fp32 moments
    optimizer_off_chip: bool = False  # TensorLocations: optimizer state in Streaming Memory
    rts: bool = False  # replicated tensor sharding of the optimizer state
    accumulator_bytes_per_param: int = 2  # gradient accumulators (the gradients' dtype)
    gradient_bytes_per_param: int = 2  # what the replicas reduce
    input_bytes_per_sample: int = 0  # host -> device per sample (ids, labels...)
    label: str = ""
    # The IPU of each stage of ``layers_per_ipu`` when a model comes back to an IPU (PopTorch's
    # AutoStage.AutoIncrement, e.g. (0, 1, 2, 3, 0): BERT's head on IPU 0); None: stage i on IPU i.
    stage_ipus: tuple[int, ...] | None = None

    @property
    def ipus_per_replica(self) -> int:
        return max(self.stage_ipus) + 1 if self.stage_ipus else len(self.layers_per_ipu)

    @property
    def ipu_of_stage(self) -> tuple[int, ...]:
        return tuple(self.stage_ipus) if self.stage_ipus else tuple(range(len(self.layers_per_ipu)))

    @property
    def samples_per_step(self) -> int:
        return self.micro_batch * self.accumulation * self.replicas


@dataclass(frozen=True)
class IpuMemory:
    """Bytes on one IPU of a replica, by class."""

    ipu: int
    layers: tuple[str, ...]
    by_class: dict[str, int]
    capacity: int

    @property
    def total(self) -> int:
        return sum(self.by_class.values())

    @property
    def fits(self) -> bool:
        return self.total <= self.capacity

    @property
    def dominant(self) -> str:
        return max(self.by_class, key=self.by_class.__getitem__)

    def as_dict(self) -> dict[str, Any]:
        return {"ipu": self.ipu, "layers": list(self.layers), "bytes": dict(self.by_class),
                "total": self.total, "capacity": self.capacity, "fits": self.fits, "dominant": self.dominant}


@dataclass(frozen=True)
class PodEstimate:
    """One priced training step on a system."""

    system: str
    config: TrainingConfig
    clock_hz: float
    timeline: PipelineTimeline
    split: dict[str, int]  # cycles by where the time goes (sums to ``cycles``)
    collectives: dict[str, Any]
    memory: tuple[IpuMemory, ...]
    off_chip_bytes_per_replica: int
    streaming_memory_bytes_per_replica: int
    stage_cycles: tuple[int, ...] = ()  # the PopART stages' compute cycles, in schedule order
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def cycles(self) -> int:
        return sum(self.split.values())

    @property
    def seconds(self) -> float:
        return self.cycles / self.clock_hz

    @property
    def samples_per_second(self) -> float:
        return self.config.samples_per_step / self.seconds

    @property
    def fits(self) -> bool:
        return all(m.fits for m in self.memory) and \
            self.off_chip_bytes_per_replica <= self.streaming_memory_bytes_per_replica

    def as_dict(self) -> dict[str, Any]:
        c = self.config
        return {"system": self.system, "clock_hz": self.clock_hz, "label": c.label,
                "micro_batch": c.micro_batch,
                "accumulation": c.accumulation, "replicas": c.replicas,
                "ipus_per_replica": c.ipus_per_replica,
                "layers_per_ipu": list(c.layers_per_ipu), "stage_ipus": list(c.ipu_of_stage),
                "recompute": c.recompute,
                "optimizer_off_chip": c.optimizer_off_chip, "rts": c.rts,
                "samples_per_step": c.samples_per_step, "step_cycles": self.cycles,
                "step_seconds": self.seconds, "samples_per_second": self.samples_per_second,
                "split_cycles": dict(self.split),
                "pipeline": {**self.timeline.as_dict(), "stage_cycles": list(self.stage_cycles),
                             "cycle_lengths": list(self.timeline.cycle_lengths)},
                "collectives": self.collectives, "memory_per_ipu": [m.as_dict() for m in self.memory],
                "off_chip_bytes_per_replica": self.off_chip_bytes_per_replica,
                "streaming_memory_bytes_per_replica": self.streaming_memory_bytes_per_replica,
                "fits": self.fits, "notes": list(self.notes)}


def _split_layers(layers: Sequence[LayerCost], counts: Sequence[int], label: str) -> list[list[LayerCost]]:
    if any(c < 0 for c in counts) or sum(counts) != len(layers):
        raise FrontendError(f"{label}: layers_per_ipu {list(counts)} must place each of the {len(layers)} "
                            f"layers once (they add up to {sum(counts)})")
    out, at = [], 0
    for c in counts:
        out.append(list(layers[at:at + c]))
        at += c
    return out


def ipu_memory(ipu: int, layers: Sequence[LayerCost], config: TrainingConfig, depth: int | Sequence[int],
               capacity: int) -> IpuMemory:
    """One IPU's bytes by class for ``layers`` at stash ``depth`` (one for all, or one per layer:
    the depth of its pipeline stage) (see the module docstring)."""
    params = sum(x.params for x in layers)
    shard = config.replicas if config.rts else 1
    on_chip_state = 0 if config.optimizer_off_chip else math.ceil(params / shard) * \
        config.optimizer_state_bytes_per_param
    stash_each = [x.input_bytes if config.recompute else x.saved_bytes for x in layers]
    depths = [depth] * len(layers) if isinstance(depth, int) else list(depth)
    distinct: dict[str, int] = {}
    for x in layers:
        distinct[x.name.split("[")[0]] = max(distinct.get(x.name.split("[")[0], 0), x.code_bytes)
    by_class = {
        "weights": sum(x.param_bytes for x in layers),
        "gradients": params * config.accumulator_bytes_per_param if config.accumulation > 1 else 0,
        "optimizer_state": on_chip_state,
        "stash": sum(d * b for d, b in zip(depths, stash_each, strict=True)),
        "activations": max((x.temporary_bytes for x in layers), default=0) + sum(stash_each),
        # per tile whatever runs there, so once per IPU: codelet code (the distinct layers' codelet
        # types mostly coincide, matmul, map and reduce vertices; the largest layer's set is a lower
        # bound on their union) and the workers' stacks
        "code": sum(distinct.values()) + max((x.codelet_bytes for x in layers), default=0)
        + max((x.stack_bytes for x in layers), default=0),
    }
    return IpuMemory(ipu, tuple(x.name for x in layers), by_class, capacity)


def _transfers(system: System, stages: Sequence[list[LayerCost]], ipus: Sequence[int]) -> list[int]:
    """Training pipeline boundaries: forward activations stage f -> f+1 (IPU ``ipus[f]`` to
    ``ipus[f+1]``; nothing when both are one IPU), then the gradients back."""
    out_bytes = [s[-1].output_bytes if s else 0 for s in stages]

    def cost(a: int, b: int, nbytes: int) -> int:
        return 0 if a == b else links.flows_cost(system, [(a, b)], nbytes).cycles

    f = len(stages)
    fwd = [cost(ipus[i], ipus[i + 1], out_bytes[i]) for i in range(f - 1)]
    bwd = [cost(ipus[i + 1], ipus[i], out_bytes[i]) for i in reversed(range(f - 1))]
    return fwd + bwd


def _per_ipu(stages: Sequence[list[LayerCost]], ipus: Sequence[int], k: int) -> list[list[LayerCost]]:
    """Each IPU's layers, its stages' in stage order."""
    out: list[list[LayerCost]] = [[] for _ in range(k)]
    for s, i in zip(stages, ipus, strict=True):
        out[i].extend(s)
    return out


def price_training(layers: Sequence[LayerCost], config: TrainingConfig, system: System) -> PodEstimate:
    """Price one training step of ``config`` on ``system`` from the model's layers in order."""
    k, r = config.ipus_per_replica, config.replicas
    label = config.label or "training configuration"
    if k & (k - 1):
        raise FrontendError(f"{label} uses {k} IPUs a replica: the number of IPUs must be a power of 2 "
                            f"(PopTorch; Options.autoRoundNumIPUs(True) rounds it up): add or drop a stage")
    system.check_fits(k, r, what=label)
    stages = _split_layers(layers, config.layers_per_ipu, label)
    ipus = config.ipu_of_stage
    if len(ipus) != len(stages):
        raise FrontendError(f"{label}: stage_ipus {list(ipus)} must give the IPU of each of the "
                            f"{len(stages)} stages of layers_per_ipu")
    fwd = [sum(x.forward for x in s) for s in stages]
    bwd = [sum(x.backward + (x.recompute() if config.recompute else 0) for x in s) for s in stages]
    per_stage = training_stages(fwd, bwd)
    overhead = system.sync_cycles(k) if k > 1 else 0
    timeline = pipeline_schedule(per_stage, accumulation=config.accumulation, training=True,
                                 transfer_cycles=_transfers(system, stages, ipus) if len(stages) > 1 else (),
                                 cycle_overhead=overhead, stage_ipus=ipus)
    clock = system.chip.clock_hz
    on_ipu = _per_ipu(stages, ipus, k)
    # Gradients across replicas: the busiest IPU's bytes bound the replica's rings.
    grad_bytes = max(sum(x.params for x in s) for s in on_ipu) * config.gradient_bytes_per_param
    coll: dict[str, Any] = {}
    reduce_cycles = gather_cycles = 0
    if r > 1:
        op = "reduce_scatter" if config.rts else "all_reduce"
        c = links.collective_cost(system, op, k * grad_bytes, r, ipus_per_replica=k,
                                  itemsize=config.gradient_bytes_per_param)
        reduce_cycles = c.cycles
        coll[op] = {"bytes_per_ipu": grad_bytes, "method": c.method, "cycles": c.cycles}
        if config.rts:
            g = links.collective_cost(system, "all_gather", k * grad_bytes, r, ipus_per_replica=k,
                                      itemsize=config.gradient_bytes_per_param)
            gather_cycles = g.cycles
            coll["all_gather"] = {"bytes_per_ipu": grad_bytes, "method": g.method, "cycles": g.cycles}
    shard = r if config.rts else 1
    update = max(math.ceil(sum(x.params * x.update_per_param for x in s) / shard) for s in on_ipu)
    state_bytes = [math.ceil(sum(x.params for x in s) / shard) * config.optimizer_state_bytes_per_param
                   for s in on_ipu]
    streaming = 0
    if config.optimizer_off_chip:  # load and store the IPU's (share of the) state
        streaming = math.ceil(2 * max(state_bytes) / system.streaming_memory_bytes_per_second_per_ipu * clock)
    host = math.ceil(config.micro_batch * config.accumulation * config.input_bytes_per_sample
                     / system.host_bytes_per_second_per_ipu * clock)
    split = _time_split(timeline, on_ipu, config)
    split.update({"gradient_reduction": reduce_cycles, "weight_all_gather": gather_cycles,
                  "optimizer": update, "streaming_memory": streaming, "host_io": host})
    depth_of_stage = stash_depths(len(stages), True)
    layer_depths: list[list[int]] = [[] for _ in range(k)]
    for f, (s, i) in enumerate(zip(stages, ipus, strict=True)):
        layer_depths[i] += [depth_of_stage[f]] * len(s)
    capacity = system.chip.num_tiles * system.chip.bytes_per_tile
    memory = tuple(ipu_memory(i, s, config, layer_depths[i], capacity) for i, s in enumerate(on_ipu))
    off_chip = sum(state_bytes) if config.optimizer_off_chip else 0
    sm = system.streaming_memory_bytes // max(1, r)
    notes = tuple(f"IPU {m.ipu} does not fit: {m.total:,} B of {m.capacity:,} B, {m.dominant} dominates "
                  f"({m.by_class[m.dominant]:,} B)" for m in memory if not m.fits)
    return PodEstimate(system.name, config, clock, timeline, split, coll, memory, off_chip, sm,
                       tuple(per_stage), notes)


def _time_split(timeline: PipelineTimeline, stages: Sequence[list[LayerCost]],
                config: TrainingConfig) -> dict[str, int]:
    # ``stages``: each IPU's layers (all its pipeline stages')
    """The pipeline's cycles split into forward, backward, recomputation (the slowest IPU's, as in a
    steady cycle), inter-IPU copies and syncs (a steady cycle's beyond its work, every pipeline
    cycle) and the bubble (fill and flush beyond full use: what is left)."""
    a = config.accumulation
    per_ipu = [(sum(x.forward for x in s), sum(x.backward for x in s),
                sum(x.recompute() for x in s) if config.recompute else 0) for s in stages]
    slowest = max(range(len(per_ipu)), key=lambda i: sum(per_ipu[i]))
    f, b, rc = (v * a for v in per_ipu[slowest])
    pipeline = timeline.fill + timeline.main + timeline.flush
    links_sync = (timeline.steady_cycle - sum(per_ipu[slowest])) * timeline.pipeline_cycles
    bubble = max(0, pipeline - f - b - rc - links_sync)
    return {"forward": f, "backward": b, "recompute": rc,
            "ipu_links_and_sync": pipeline - f - b - rc - bubble, "pipeline_bubble": bubble}
