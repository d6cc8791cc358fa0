"""PopART's pipeline schedule as pure arithmetic: stages, cycles, bubble and stash depth.

The one source of truth for how a pipelined step is laid out in time; the functional pipelining
(PopTorch's ``PipelinedExecution``) and the estimate-only pricing at Pod scale both read it.

The rule [V] (PopART ``willow/src/transforms/pipeline.cpp``, ``popx/popprograms.cpp``, ``ir.cpp``;
``ipu-facts-scale.md`` §2 "Pipeline schedule"):

* **Stages.** A model on ``N`` IPUs has ``S = N`` pipeline stages for inference. For training the
  last forward stage is merged with the first backward stage (PopART's ``2 x finalLossStage``), so
  ``S = 2N - 1``: stages ``0 .. N-2`` are forward on IPUs ``0 .. N-2``, stage ``N-1`` is the last
  IPU's forward + backward, stages ``N .. 2N-2`` are backward on IPUs ``N-2 .. 0``. Stage ``s`` runs
  on IPU ``min(s, S-1-s)`` (training) or ``s`` (inference).
* **Depth.** With gradient accumulation the accumulation factor ``A`` must be at least ``S``
  ("depth (gradient accumulation factor) must equal at least the number of pipeline stages").
* **Program.** ``fill`` = ``S-1`` pipeline cycles, then ``Repeat(A-(S-1), main)`` in which every
  stage runs once a cycle, then ``flush`` = ``S-1`` cycles, then the accumulate / optimizer
  fragment. Stage ``s`` runs in pipeline cycle ``p`` iff ``s <= p < s + A``; there are
  ``A + S - 1`` cycles in all.
* **One pipeline cycle.** Every IPU runs its active stages (Fwd, Stash, Restore, Bwd), then the
  inter-IPU copies of the stages' outputs, then a sync. The IPUs run side by side, so a cycle lasts
  as long as its busiest IPU plus its dearest copy (and ``cycle_overhead``, the sync). Which work a
  stage's cycles include (recomputation, stash copies) is the caller's choice.
* **Bubble.** In cycles, ``(S-1) / (A+S-1)`` of the schedule has some stage idle [D]: the
  BERT-Base POD16 configuration (4 IPUs, ``S = 7``, ``A = 512``) gives 6/518 ~ 1.2%.
  ``bubble_cycles`` is the time beyond ``A`` steady cycles (fill and flush cycles can be cheaper
  than a steady one when their stages are cheaper).
* **Stash.** In training, IPU ``i`` keeps ``2 x (IPUs to the end) + 1 = 2(N-1-i) + 1`` micro-batches
  of its forward activations (the stash depth), the last IPU none (its backward follows its
  forward in the same stage). Inference stashes nothing.
* **Several stages on one IPU.** A model may come back to an IPU it has used (PopTorch's
  ``AutoStage.AutoIncrement``: Graphcore's BERT puts its embedding on IPU 0, the encoder on IPUs
  1..3 and the MLM/NSP head, tied to the embedding, on IPU 0 again [V graphcore/examples
  ``nlp/bert/pytorch/modeling.py``]). ``stage_ipus`` gives the IPU of each FORWARD stage (``F``
  of them; ``S = 2F - 1`` for training, as above with stages in place of IPUs); backward stage
  ``s`` runs on the IPU of forward stage ``S-1-s``. An IPU runs all its active stages in a
  pipeline cycle, one after the other; the stash depth is then per forward stage,
  ``2(F-1-f) + 1`` (the last forward stage none).

>>> t = pipeline_schedule([10] * 7, accumulation=512, training=True)
>>> t.stages, t.num_ipus, t.pipeline_cycles, str(t.bubble_fraction)
(7, 4, 518, '3/259')
>>> t.stash_depth
(7, 5, 3, 0)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from softipu.errors import TargetError

__all__ = ["PipelineTimeline", "pipeline_schedule", "training_stages", "stage_ipu", "stash_depths",
           "num_stages"]

DEPTH_MESSAGE = "depth (gradient accumulation factor) must equal at least the number of pipeline stages"


@dataclass(frozen=True, slots=True)
class PipelineTimeline:
    """One pipelined step (one weight update) laid out in time; every figure in chip cycles."""

    stages: int  # S: 2F-1 training, F inference (F forward stages; F = N with one stage an IPU)
    num_ipus: int  # N
    accumulation: int  # A: micro-batches through the pipeline per step
    training: bool
    fill: int  # cycles of the S-1 fill pipeline cycles
    main: int  # cycles of the A-(S-1) steady pipeline cycles
    flush: int  # cycles of the S-1 flush pipeline cycles
    optimizer: int  # the accumulate / optimizer fragment after the flush
    steady_cycle: int  # one steady pipeline cycle: busiest IPU + dearest copy + overhead
    ipu_busy: tuple[int, ...]  # per IPU: cycles it computes during the step (all its stages x A)
    stash_depth: tuple[int, ...]  # per forward stage (= per IPU when one stage each): micro-batches stashed
    cycle_lengths: tuple[int, ...]  # every pipeline cycle's length, fill, main, flush (A+S-1 values)
    stage_ipus: tuple[int, ...] = ()  # the IPU of each schedule stage (S values)

    @property
    def pipeline_cycles(self) -> int:
        """Pipeline cycles (steps of the schedule, not clock cycles): A + S - 1."""
        return self.accumulation + self.stages - 1

    @property
    def total(self) -> int:
        return self.fill + self.main + self.flush + self.optimizer

    @property
    def bubble_fraction(self) -> Fraction:
        """(S-1) / (A+S-1): the schedule's share of cycles with some stage idle [D]."""
        return Fraction(self.stages - 1, self.pipeline_cycles)

    @property
    def bubble_cycles(self) -> int:
        """Clock cycles beyond A steady pipeline cycles: what fill and flush cost over full use."""
        return self.fill + self.main + self.flush - self.accumulation * self.steady_cycle

    def ipu_idle(self, ipu: int) -> int:
        """Cycles IPU ``ipu`` waits during the pipeline (fill, flush, and for slower stages)."""
        return self.fill + self.main + self.flush - self.ipu_busy[ipu]

    def as_dict(self) -> dict:
        return {"stages": self.stages, "num_ipus": self.num_ipus, "accumulation": self.accumulation,
                "training": self.training, "fill_cycles": self.fill, "main_cycles": self.main,
                "flush_cycles": self.flush, "optimizer_cycles": self.optimizer, "total_cycles": self.total,
                "steady_cycle": self.steady_cycle, "pipeline_cycles": self.pipeline_cycles,
                "bubble_fraction": float(self.bubble_fraction), "bubble_cycles": self.bubble_cycles,
                "ipu_busy_cycles": list(self.ipu_busy), "stash_depth": list(self.stash_depth),
                "stage_ipus": list(self.stage_ipus)}


def num_stages(num_ipus: int, training: bool) -> int:
    """S: ``2N - 1`` for training (last forward merged with first backward), ``N`` for inference."""
    _positive("num_ipus", num_ipus)
    return 2 * num_ipus - 1 if training else num_ipus


def stage_ipu(stage: int, stages: int, training: bool) -> int:
    """The IPU that runs pipeline stage ``stage`` of ``stages``."""
    if not 0 <= stage < stages:
        raise TargetError(f"pipeline stage {stage} is outside 0..{stages - 1}")
    return min(stage, stages - 1 - stage) if training else stage


def stash_depths(num_ipus: int, training: bool) -> tuple[int, ...]:
    """Per IPU, micro-batches of forward activations stashed: ``2(N-1-i) + 1``, the last IPU 0;
    nothing for inference."""
    _positive("num_ipus", num_ipus)
    if not training:
        return (0,) * num_ipus
    return tuple(2 * (num_ipus - 1 - i) + 1 if i < num_ipus - 1 else 0 for i in range(num_ipus))


def training_stages(forward: Sequence[int], backward: Sequence[int]) -> tuple[int, ...]:
    """The 2N-1 training stages' cycles from per-IPU forward and backward cycles (backward includes
    any recomputation): ``fwd[0..N-2], fwd[N-1] + bwd[N-1], bwd[N-2..0]``."""
    if len(forward) != len(backward) or not forward:
        raise TargetError(f"training_stages needs one forward and one backward figure per IPU, got "
                          f"{len(forward)} and {len(backward)}")
    n = len(forward)
    return (*forward[:n - 1], forward[n - 1] + backward[n - 1], *reversed(backward[:n - 1]))


def _positive(name: str, value: int, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise TargetError(f"pipeline {name} must be an int >= {minimum}, got {value!r}")
    return value


def _check(stage_cycles: Sequence[int], accumulation: int, training: bool,
           transfer_cycles: Sequence[int]) -> int:
    stages = len(stage_cycles)
    if stages == 0:
        raise TargetError("pipeline_schedule needs at least one stage")
    if training and stages % 2 == 0:
        raise TargetError(f"a training pipeline has 2N-1 stages (an odd count: the last forward stage is "
                          f"merged with the first backward one), got {stages}; build them with "
                          f"training_stages(forward, backward)")
    for s, c in enumerate(stage_cycles):
        _positive(f"stage {s} cycles", int(c) if not isinstance(c, bool) else c, 0)
    _positive("accumulation", accumulation)
    if accumulation < stages:
        raise TargetError(f"pipelining: {DEPTH_MESSAGE} (accumulation {accumulation} < {stages} stages"
                          f"{' = 2 x IPUs - 1' if training else ''}); raise gradientAccumulation to at "
                          f"least {stages}")
    if transfer_cycles and len(transfer_cycles) != stages - 1:
        raise TargetError(f"transfer_cycles gives the copy after each stage but the last: {stages - 1} "
                          f"values, got {len(transfer_cycles)}")
    return stages


def _ipus_of_stages(stages: int, training: bool, stage_ipus: Sequence[int] | None) -> list[int]:
    """The IPU of each of the ``stages`` schedule stages from the forward stages' IPUs."""
    forward = (stages + 1) // 2 if training else stages
    if stage_ipus is None:
        stage_ipus = range(forward)
    ipus = [int(i) for i in stage_ipus]
    if len(ipus) != forward or any(i < 0 for i in ipus):
        raise TargetError(f"stage_ipus gives the IPU (>= 0) of each of the {forward} forward stages, got "
                          f"{list(stage_ipus)}")
    unused = sorted(set(range(max(ipus) + 1)) - set(ipus))
    if unused:
        raise TargetError(f"stage_ipus {ipus} leaves IPU {unused[0]} without a stage; number the IPUs "
                          f"0..N-1 with every one used")
    return [ipus[min(s, stages - 1 - s)] if training else ipus[s] for s in range(stages)]


def pipeline_schedule(stage_cycles: Sequence[int], *, accumulation: int, training: bool,
                      transfer_cycles: Sequence[int] = (), optimizer_cycles: int = 0,
                      cycle_overhead: int = 0, stage_ipus: Sequence[int] | None = None) -> PipelineTimeline:
    """Lay out one pipelined step of ``accumulation`` micro-batches.

    ``stage_cycles``: the S pipeline stages' compute cycles in schedule order (for training, from
    :func:`training_stages`). ``transfer_cycles``: S-1 values, the inter-IPU copy of each stage's
    output to the next stage (paid in the cycles that stage runs). ``optimizer_cycles``: the
    accumulate / optimizer fragment after the flush. ``cycle_overhead``: paid by every pipeline
    cycle (its sync and control). ``stage_ipus``: the IPU of each forward stage (default: forward
    stage ``f`` on IPU ``f``); see "Several stages on one IPU" in the module docstring.
    """
    stages = _check(stage_cycles, accumulation, training, transfer_cycles)
    _positive("optimizer_cycles", optimizer_cycles, 0)
    _positive("cycle_overhead", cycle_overhead, 0)
    ipu_of = _ipus_of_stages(stages, training, stage_ipus)
    n = max(ipu_of) + 1
    forward = (stages + 1) // 2 if training else stages
    cycles = [int(c) for c in stage_cycles]
    copies = [int(c) for c in transfer_cycles] or [0] * (stages - 1)

    def cycle_length(active: range) -> int:
        work = [0] * n
        for s in active:
            work[ipu_of[s]] += cycles[s]
        copy = max((copies[s] for s in active if s < stages - 1), default=0)
        return max(work) + copy + cycle_overhead

    total_cycles = accumulation + stages - 1
    lengths = []
    for p in range(total_cycles):  # stage s is active in cycles s .. s + A - 1
        if stages - 1 <= p < accumulation:
            lengths.append(None)  # steady: filled in below
        else:
            lengths.append(cycle_length(range(max(0, p - accumulation + 1), min(p, stages - 1) + 1)))
    steady = cycle_length(range(stages))
    lengths = [steady if v is None else v for v in lengths]
    fill = sum(lengths[:stages - 1])
    flush = sum(lengths[accumulation:])
    main = steady * (accumulation - stages + 1)
    busy = [0] * n
    for s in range(stages):
        busy[ipu_of[s]] += cycles[s] * accumulation
    return PipelineTimeline(stages, n, accumulation, training, fill, main, flush, int(optimizer_cycles),
                            steady, tuple(busy), stash_depths(forward, training), tuple(lengths),
                            tuple(ipu_of))
