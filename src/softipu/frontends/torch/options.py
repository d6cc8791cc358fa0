"""``softipu.torch.Options``: how a model is compiled and run, as one frozen, checked value.

>>> from softipu.frontends.torch.options import Options
>>> Options(device_iterations=4).device_iterations
4
>>> Options(precision="fp64")
Traceback (most recent call last):
...
softipu.errors.OptionError: Options: precision must be 'fp32' or 'fp16', got 'fp64'
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from softipu.errors import OptionError
from softipu.target import GC200, Target

__all__ = ["Options", "OutputMode", "UnusedOptionWarning", "warn_unused"]


class OutputMode(enum.Enum):
    """Which outputs of the ``device_iterations`` on-device loop come back to the host.

    ALL: every iteration's (concatenated along dim 0); FINAL: the last iteration's; SUM: the sum
    over iterations; EVERY_N: every ``output_return_period``-th iteration's; DEFAULT: ALL for
    inference, FINAL for training (PopTorch's defaults).
    """

    ALL = "all"
    FINAL = "final"
    SUM = "sum"
    EVERY_N = "every_n"
    DEFAULT = "default"


class UnusedOptionWarning(UserWarning):
    """An option was accepted and stored but has no effect in softipu yet."""


_WARNED: set[str] = set()


def warn_unused(names: list[str] | tuple[str, ...], what: str = "option") -> None:
    """Warn once per process about each of ``names``: stored, but without effect yet."""
    logging.getLogger("softipu.torch").info("%s(s) stored without effect: %s", what, ", ".join(names))
    fresh = [n for n in names if n not in _WARNED]
    if not fresh:
        return
    _WARNED.update(fresh)
    listed = ", ".join(fresh)
    many = len(fresh) > 1
    warnings.warn(f"softipu accepted and stored the {what}{'s' if many else ''} {listed}, which "
                  f"{'have' if many else 'has'} no effect in softipu yet (see docs/torch_coverage.md)",
                  UnusedOptionWarning, stacklevel=3)


_PRECISIONS = ("fp32", "fp16")
_PARTIALS = ("float", "half")
_RECOMPUTATION = ("none", "standard", "norm_only", "pipeline", "recompute_all")
_LOCATION_KINDS = ("weight", "optimizer", "accumulator", "activation")


@dataclass(frozen=True, slots=True)
class Options:
    """How ``inference_model`` compiles and runs a module.

    * ``target``: the chip (``sp.targets.GC200`` by default; ``sp.targets.ipu_model(tiles=16)``
      for fast experiments).
    * ``replication_factor``: copies of the model, each fed its own micro-batches.
    * ``device_iterations``: batches run by one call in an on-device loop; every input's dim 0 is
      ``device_iterations * replication_factor * micro_batch``.
    * ``precision``: ``"fp32"``, or ``"fp16"`` (float weights, inputs and work in float16; outputs
      come back in the module's dtypes).
    * ``partials_type``: ``"float"`` or ``"half"``: what float16 matmuls accumulate in (float32
      matmuls always accumulate in float32).
    * ``available_memory_proportion``: the share of each tile's memory a matmul plan may use for
      temporaries (PopTorch's ``setAvailableMemoryProportion``).
    * ``serial_loops``: a matmul plan's serial split as one loop body, as poplin runs it (True),
      or unrolled (False: the fast engine runs it as fused GEMM chains, several times faster to
      simulate, and the memory plan holds each step's code); None, the default: True for
      inference models, False for training models (which run every step on the host).
    * ``seed``: the seed of random ops on the device.
    * ``output_mode`` / ``output_return_period``: see :class:`OutputMode`.
    * ``log_cycle_count``: log the modeled cycles of each run (``model.cycle_count`` works always).
    * ``recompile_on_shape_change``: a call with new input shapes compiles again (with a log line)
      instead of raising :class:`~softipu.frontends.errors.InputError`.
    * ``engine_options``: Poplar-style engine options (``{"engine.reference": True}``).
    * ``executable_cache_dir``: a directory where compiled models are cached between processes
      (see :mod:`softipu.frontends.torch.cache`); None: no cache.
    * ``executable_cache_max_bytes``: the bound on that cache's size; least recently used entries go.
    * ``gradient_accumulation``: micro-batches whose gradients a training step adds up before
      one optimizer update (PopTorch's ``Training.gradientAccumulation``; 1 for inference).
    * ``accumulation_reduction``: ``"mean"`` (PopTorch's default) or ``"sum"``: how accumulated
      gradients are reduced (``accumulationAndReplicationReductionType``).
    * ``mean_reduction_strategy``: with the mean, ``"post"`` adds the micro-batches' gradients and
      divides once before the update, ``"running"`` keeps the accumulator the running mean (PopART's
      ``MeanReductionStrategy``); None: PopTorch's choice, running for float16 accumulators.
    * ``auto_loss_scaling``: PopART's automatic loss scaling in training (the loss scale halves or
      doubles after each step by the gradients' upper-bin proportion; ``setAutomaticLossScaling``).
    * ``input_group_size`` / ``input_group_type``: PopTorch's ``inputReplicaGrouping``: the
      replicas of a group (``"consecutive"`` {0..k-1}, {k..2k-1}...; ``"orthogonal"`` {0, m, 2m...}
      with m = replicas / k) are fed the same micro-batches, so inputs carry
      ``replication_factor / input_group_size`` replicas' worth.
    * ``merge_all_reduce``: replicated training all-reduces all gradients of a dtype as one
      collective (PopART's ``replicatedCollectivesSettings.mergeAllReduceCollectives``; default
      one collective per gradient, as PopART).
    * ``recomputation``: training only: which forward values the backward recomputes instead of
      keeping (PopART's ``autoRecomputation``: ``"none"``, ``"standard"``, ``"norm_only"``,
      ``"pipeline"``, ``"recompute_all"``; see ``frontends/torch/training/recompute.py``).
    * ``tensor_locations``: training only: where weights, optimizer state, accumulators and
      activations live (PopTorch's ``TensorLocations``: on chip, in Streaming Memory, sharded over
      replicas), ``{"weight" | "optimizer" | "accumulator" | "activation": {setting: value}}``
      (see ``frontends/torch/training/locations.py``).
    * ``model_parallel``: PopTorch's execution strategy over the blocks' IPUs (``strategy``
      ``"pipelined"`` | ``"sharded"`` | ``"serial_phased"`` | ``"parallel_phased"``, ``blocks``,
      ``auto_stage``, ``auto_round``, per-IPU ``memory``; see ``frontends/torch/pipeline.py``); used
      only when the model has blocks (``poptorch.BeginBlock`` / ``Block``).
    * ``stored``: options accepted for compatibility (PopTorch's) that have no effect yet.
    """

    target: Target = GC200
    replication_factor: int = 1
    device_iterations: int = 1
    precision: str = "fp32"
    partials_type: str = "float"
    available_memory_proportion: float = 0.6
    serial_loops: bool | None = None
    seed: int | None = None
    output_mode: OutputMode = OutputMode.DEFAULT
    output_return_period: int = 1
    log_cycle_count: bool = False
    recompile_on_shape_change: bool = True
    engine_options: Mapping[str, Any] = field(default_factory=dict)
    executable_cache_dir: str | None = None
    executable_cache_max_bytes: int = 2 * 1024**3
    gradient_accumulation: int = 1
    accumulation_reduction: str = "mean"
    mean_reduction_strategy: str | None = None
    auto_loss_scaling: bool = False
    input_group_size: int = 1
    input_group_type: str = "consecutive"
    merge_all_reduce: bool = False
    recomputation: str = "none"
    tensor_locations: Mapping[str, Any] = field(default_factory=dict)
    model_parallel: Mapping[str, Any] = field(default_factory=dict)
    stored: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.target, Target):
            self._bad(f"target must be a softipu Target (sp.targets.GC200, sp.targets.ipu_model(...)), "
                      f"got {self.target!r}")
        for name in ("replication_factor", "device_iterations", "output_return_period",
                     "executable_cache_max_bytes", "gradient_accumulation", "input_group_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                self._bad(f"{name} must be an int >= 1, got {value!r}")
        for name, allowed in (("precision", _PRECISIONS), ("partials_type", _PARTIALS),
                              ("accumulation_reduction", ("mean", "sum")),
                              ("mean_reduction_strategy", (None, "post", "running")),
                              ("input_group_type", ("consecutive", "orthogonal")),
                              ("serial_loops", (None, True, False)),
                              ("recomputation", _RECOMPUTATION)):
            if getattr(self, name) not in allowed:
                self._bad(f"{name} must be {' or '.join(map(repr, allowed))}, got {getattr(self, name)!r}")
        self._check_input_groups()
        amp = self.available_memory_proportion
        if isinstance(amp, bool) or not isinstance(amp, (int, float)) or not 0.0 < amp <= 1.0:
            self._bad(f"available_memory_proportion must be a number in (0, 1], got {amp!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            self._bad(f"seed must be an int or None, got {self.seed!r}")
        if not isinstance(self.output_mode, OutputMode):
            self._bad(f"output_mode must be an OutputMode ({', '.join(m.name for m in OutputMode)}), "
                      f"got {self.output_mode!r}")
        for name in ("log_cycle_count", "recompile_on_shape_change", "auto_loss_scaling", "merge_all_reduce"):
            if not isinstance(getattr(self, name), bool):
                self._bad(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.executable_cache_dir is not None and not isinstance(self.executable_cache_dir, str):
            self._bad(f"executable_cache_dir must be a path string or None, got "
                      f"{self.executable_cache_dir!r}")
        # Read-only copies, so a frozen Options cannot change under a compiled model.
        object.__setattr__(self, "engine_options", MappingProxyType(dict(self.engine_options)))
        object.__setattr__(self, "stored", MappingProxyType(dict(self.stored)))
        self._freeze_locations()

    def _freeze_locations(self) -> None:
        locations = self.tensor_locations
        if not isinstance(locations, Mapping) or set(locations) - set(_LOCATION_KINDS):
            self._bad(f"tensor_locations must map {' / '.join(_LOCATION_KINDS)} to settings, got "
                      f"{locations!r}")
        object.__setattr__(self, "tensor_locations", MappingProxyType(
            {k: MappingProxyType(dict(v)) for k, v in locations.items()}))

    def _check_input_groups(self) -> None:
        if self.replication_factor % self.input_group_size:
            self._bad(f"inputReplicaGrouping: the input group size {self.input_group_size} must divide "
                      f"the replication factor {self.replication_factor}")

    @staticmethod
    def _bad(message: str) -> None:
        raise OptionError(f"Options: {message}")

    def replace(self, **changes: Any) -> Options:
        """A copy with ``changes`` applied (and checked)."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            import difflib  # noqa: PLC0415 - only on the error path

            near = {k: difflib.get_close_matches(k, [f.name for f in dataclasses.fields(self)], n=1)
                    for k in unknown}
            hints = "; ".join(f"{k!r}" + (f" (did you mean {v[0]!r}?)" if v else "") for k, v in near.items())
            self._bad(f"unknown option {hints}")
        return dataclasses.replace(self, **changes)

    @property
    def batches_per_call(self) -> int:
        """Micro-batches one call consumes: ``device_iterations * replication_factor`` (divided by
        ``input_group_size``: a group's replicas share their micro-batches)."""
        return self.device_iterations * (self.replication_factor // self.input_group_size)

    def matmul_options(self, half: bool = False) -> dict[str, Any]:
        """The ``softipu.ops.matmul`` options these options imply (for a float16 matmul if ``half``)."""
        return {"availableMemoryProportion": float(self.available_memory_proportion),
                "partialsType": self.partials_type if half else "float",
                "serialLoops": self.serial_loops is not False}

    def warn_unused(self) -> None:
        """The one-time warning for options that are stored but have no effect yet."""
        names = sorted(self.stored)
        if names:
            warn_unused(names)
