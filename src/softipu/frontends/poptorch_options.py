"""PopTorch's ``poptorch.Options``: chaining camelCase setters over ``softipu.torch.Options``.

Options PopTorch has that softipu gives no meaning yet (pipelining, tensor locations,
distribution...) are accepted and stored; each is named in a one-time
:class:`~softipu.frontends.torch.options.UnusedOptionWarning`. None is silently ignored.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from softipu.frontends.errors import FrontendError
from softipu.frontends.poptorch_blocks import (
    ParallelPhasedExecution,
    PipelinedExecution,
    SerialPhasedExecution,
    ShardedExecution,
    _Strategy,
)
from softipu.frontends.poptorch_enums import CommGroupType, MeanReductionStrategy, OutputMode, ReductionType
from softipu.frontends.torch.options import Options as TorchOptions
from softipu.frontends.torch.options import OutputMode as _Mode
from softipu.frontends.torch.options import warn_unused
from softipu.target import BOW, GC2, GC200, Target

__all__ = ["Options", "ParallelPhasedExecution", "PipelinedExecution", "SerialPhasedExecution",
           "ShardedExecution", "TensorLocationSettings"]


_MODES = {OutputMode.Final: _Mode.FINAL, OutputMode.EveryN: _Mode.EVERY_N, OutputMode.All: _Mode.ALL,
          OutputMode.Sum: _Mode.SUM, OutputMode.Default: _Mode.DEFAULT}


# PopTorch's setters that softipu stores without giving them a meaning yet, per section.
_STORED = {
    "": ("connectionType", "disableModuleNamescope", "enableProfiling",
         "enableStableNorm", "enableSyntheticData", "logDir", "loadFromFile", "modelName",
         "sourceLocationExcludes", "appendToLocationExcludes", "syncPattern",
         "useIpuId", "updatableNamedBuffers", "relaxOptimizerAttributesChecks",
         "showCompilationProgressBar", "defaultOutputMode", "setPopartLogLevel"),
    "Precision": ("autocastEnabled", "halfFloatCasting", "runningStatisticsAlwaysFloat"),
    "Training": ("setConvolutionDithering",),
    "TensorLocations": (),
    "Distributed": ("configureProcessId", "setEnvVarNames", "disableProcessGroup"),
    "Jit": ("traceModel",),
    "_Popart": ("set", "setPatterns"),
}


def _no_such_setter(section: str, name: str, methods: list[str]) -> AttributeError:
    import difflib  # noqa: PLC0415 - only on the error path

    near = difflib.get_close_matches(name, methods, n=2)
    hint = f"; did you mean {' or '.join(map(repr, near))}?" if near else ""
    where = f"poptorch.Options.{section}" if section else "poptorch.Options"
    return AttributeError(f"{where} has no option {name!r}{hint}")


class _Section:
    """A group of PopTorch options (``opts.Training``...): every setter chains.

    Setters with a softipu meaning are real methods of the subclasses; PopTorch's other setters
    (``_STORED``) are accepted, stored under ``"<Section>.<name>"`` and warned about once.
    """

    _label = "Section"

    def __init__(self, owner: Options) -> None:
        self._owner = owner

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name not in _STORED.get(self._label, ()):
            own = [m for m in dir(type(self)) if not m.startswith("_")]
            raise _no_such_setter(self._label, name, own + list(_STORED.get(self._label, ())))
        return self._owner._stored_setter(f"{self._label}.{name}", self)


class _Popart(_Section):
    _label = "_Popart"

    def set(self, key: str, value: Any) -> _Popart:
        """PopART session options: ``replicatedCollectivesSettings.mergeAllReduceCollectives`` has
        a softipu meaning (one all-reduce per dtype for replicated training); the rest are stored."""
        if key == "replicatedCollectivesSettings.mergeAllReduceCollectives":
            self._owner._set("merge_all_reduce", bool(value))
            return self
        if key == "autoRecomputation":  # a RecomputationType: recomputation in training
            from softipu.frontends.torch.training.recompute import recomputation_mode  # noqa: PLC0415

            self._owner._set("recomputation", recomputation_mode(value))
            return self
        return self._owner._stored_setter("_Popart.set", self)(key, value)


class _Precision(_Section):
    _label = "Precision"

    def setPartialsType(self, dtype: torch.dtype) -> _Precision:  # noqa: N802 - PopTorch's name
        if dtype not in (torch.float, torch.half):
            raise FrontendError(f"Precision.setPartialsType takes torch.float or torch.half, got {dtype}")
        self._owner._set("partials_type", "half" if dtype == torch.half else "float")
        return self

    def enableFloatingPointExceptions(self, enabled: bool) -> _Precision:  # noqa: N802
        self._owner._engine["debug.floatingPointExceptions"] = bool(enabled)
        return self

    def enableStochasticRounding(self, enabled: bool) -> _Precision:  # noqa: N802
        """float32 -> float16 casts and fp16 partial results round stochastically, keyed by
        ``randomSeed`` (Poplar's engine option ``prng.enableStochasticRounding``)."""
        self._owner._engine["prng.enableStochasticRounding"] = bool(enabled)
        return self


class _Training(_Section):
    _label = "Training"

    def gradientAccumulation(self, gradient_accumulation: int) -> _Training:  # noqa: N802 - PopTorch's name
        self._owner._set("gradient_accumulation", int(gradient_accumulation))
        return self

    def accumulationAndReplicationReductionType(self, reduction_type: ReductionType) -> _Training:  # noqa: N802
        reduction = ReductionType(reduction_type)
        if reduction is ReductionType.NoReduction:
            raise FrontendError("accumulationAndReplicationReductionType takes ReductionType.Mean or "
                                "ReductionType.Sum (NoReduction is not supported by PopTorch either)")
        self._owner._set("accumulation_reduction", "mean" if reduction is ReductionType.Mean else "sum")
        return self

    def setMeanAccumulationAndReplicationReductionStrategy(  # noqa: N802 - PopTorch's name
            self, mean_reduction_strategy: MeanReductionStrategy) -> _Training:
        """With ``ReductionType.Mean``: ``Running`` (a running mean in the accumulators) or ``Post``
        (sum, then one division before the update). Unset, PopTorch picks Running for float16
        accumulators (``accum_type``) and Post otherwise."""
        strategy = MeanReductionStrategy(mean_reduction_strategy)
        self._owner._set("mean_reduction_strategy",
                         "running" if strategy is MeanReductionStrategy.Running else "post")
        return self

    @property
    def meanAccumulationAndReplicationReductionStrategy(self) -> MeanReductionStrategy | None:  # noqa: N802
        value = self._owner._values.get("mean_reduction_strategy")
        return None if value is None else (MeanReductionStrategy.Running if value == "running"
                                           else MeanReductionStrategy.Post)

    def setAutomaticLossScaling(self, enabled: bool) -> _Training:  # noqa: N802 - PopTorch's name
        """PopART's automatic loss scaling: the loss scale (a device variable) halves or doubles after
        each optimizer step by the proportion of gradient elements in the histogram's upper bin."""
        self._owner._set("auto_loss_scaling", bool(enabled))
        return self

    @property
    def gradient_accumulation(self) -> int:
        return self._owner._values.get("gradient_accumulation", 1)


class _TensorLocations(_Section):
    _label = "TensorLocations"

    def _location(self, kind: str, location: TensorLocationSettings) -> _TensorLocations:
        """A tensor class's location (``frontends/torch/training/locations.py``)."""
        from softipu.frontends.torch.training.locations import poptorch_location  # noqa: PLC0415

        if not isinstance(location, TensorLocationSettings):
            raise FrontendError(f"TensorLocations.set{kind.capitalize()}Location takes a "
                                f"poptorch.TensorLocationSettings, got {type(location).__name__}")
        current = dict(self._owner._values.get("tensor_locations", {}))
        current[kind] = poptorch_location(kind, location.stored)
        self._owner._set("tensor_locations", current)
        return self

    def setWeightLocation(self, location: TensorLocationSettings) -> _TensorLocations:  # noqa: N802
        return self._location("weight", location)

    def setOptimizerLocation(self, location: TensorLocationSettings) -> _TensorLocations:  # noqa: N802
        return self._location("optimizer", location)

    def setAccumulatorLocation(self, location: TensorLocationSettings) -> _TensorLocations:  # noqa: N802
        return self._location("accumulator", location)

    def setActivationLocation(self, location: TensorLocationSettings) -> _TensorLocations:  # noqa: N802
        return self._location("activation", location)

    def numIOTiles(self, num_tiles: int) -> _TensorLocations:  # noqa: N802 - PopTorch's name
        """Reserve ``num_tiles`` tiles of each IPU for I/O (an even number from 32 to 192, as
        PopTorch checks): the model is placed on the other tiles only, a chip with that many
        fewer compute tiles. Overlapping I/O with compute is not modeled (``set_overlap_for_*``)."""
        if isinstance(num_tiles, bool) or not isinstance(num_tiles, int) or num_tiles % 2 \
                or not 32 <= num_tiles <= 192:
            raise FrontendError(f"numIOTiles must be an even number between 32 and 192, got {num_tiles!r}")
        self._owner._values["_num_io_tiles"] = num_tiles
        return self


class _Distributed(_Section):
    _label = "Distributed"

    @property
    def numProcesses(self) -> int:  # noqa: N802 - PopTorch's names
        """One host process (softipu runs every replica in this process)."""
        return 1

    @property
    def processId(self) -> int:  # noqa: N802
        return 0


class _Jit(_Section):
    _label = "Jit"


class Options:
    """PopTorch's ``poptorch.Options``: chaining camelCase setters over ``softipu.torch.Options``.

    ``toSoftipu()`` gives the frozen :class:`softipu.torch.Options` they describe. The softipu
    extension ``setTarget(sp.targets.X)`` picks the chip (GC200 by default, like a Mk2 IPU);
    ``useOfflineIpuTarget(2 | 21)`` picks GC200 or BOW.
    """

    def __init__(self) -> None:
        self._values: dict[str, Any] = {}
        self._engine: dict[str, Any] = {}
        self._stored: dict[str, Any] = {}
        self._anchors: dict[str, tuple[str, _Mode | None, int]] = {}
        self._parallel: dict[str, Any] = {}  # strategy, auto_round, per-IPU memory: model_parallel
        self.Precision = _Precision(self)
        self.Training = _Training(self)
        self.TensorLocations = _TensorLocations(self)
        self.Distributed = _Distributed(self)
        self.Jit = _Jit(self)
        self._Popart = _Popart(self)

    # -- setters with a softipu meaning -------------------------------------------------------------
    def deviceIterations(self, device_iterations: int) -> Options:  # noqa: N802 - PopTorch's names
        return self._set("device_iterations", int(device_iterations))

    def replicationFactor(self, replication_factor: int) -> Options:  # noqa: N802
        return self._set("replication_factor", int(replication_factor))

    def inputReplicaGrouping(self, input_group_size: int,  # noqa: N802
                             input_group_type: CommGroupType) -> Options:
        """Replicas of a group are fed the same inputs (checked against replicationFactor when the
        model is made, as PopTorch does at compile time)."""
        kind = CommGroupType(input_group_type)
        if kind is CommGroupType.All:
            raise FrontendError("inputReplicaGrouping: CommGroupType.All is not allowed for input "
                                "grouping; use Consecutive or Orthogonal (or NoGrouping)")
        size = 1 if kind is CommGroupType.NoGrouping else int(input_group_size)
        self._values["input_group_size"] = size
        self._values["input_group_type"] = "orthogonal" if kind is CommGroupType.Orthogonal else "consecutive"
        return self

    def randomSeed(self, random_seed: int) -> Options:  # noqa: N802
        return self._set("seed", int(random_seed))

    def logCycleCount(self, log_cycle_count: bool) -> Options:  # noqa: N802
        return self._set("log_cycle_count", bool(log_cycle_count))

    def outputMode(self, output_mode: OutputMode, output_return_period: int | None = None) -> Options:  # noqa: N802
        mode = OutputMode(output_mode)
        self._set("output_mode", _MODES[mode])
        if mode is OutputMode.EveryN:
            if not output_return_period:
                raise FrontendError("outputMode(OutputMode.EveryN, N) needs the period N")
            self._set("output_return_period", int(output_return_period))
        return self

    anchorMode = outputMode  # PopTorch 2.x's name

    def setAvailableMemoryProportion(  # noqa: N802
            self, available_memory_proportion: dict[str, float]) -> Options:
        """Per IPU (``{"IPU0": 0.5, "IPU1": 0.3}``), the share of each tile's memory the matmul and
        convolution planners of that IPU may use; IPUs not named keep the default."""
        per_ipu: dict[int, float] = {}
        for key, value in dict(available_memory_proportion).items():
            if not (isinstance(key, str) and key.startswith("IPU") and key[3:].isdigit()):
                raise FrontendError('Available memory proportions are expected to be in a dictionary of '
                                    '{"IPU0": 0.5} where the 0 in IPU is the index of the IPU. Invalid '
                                    f"key: {key}")
            per_ipu[int(key[3:])] = float(value)
        self._set("available_memory_proportion", float(min(per_ipu.values())) if per_ipu else 0.6)
        self._parallel["memory"] = per_ipu
        return self

    # -- model parallelism (frontends/poptorch_blocks.py, frontends/torch/pipeline.py) ------------------
    def setExecutionStrategy(self, strategy: _Strategy) -> Options:  # noqa: N802 - PopTorch's names
        """How the blocks' stages use the IPUs: ``PipelinedExecution`` (the default),
        ``ShardedExecution``, ``SerialPhasedExecution`` or ``ParallelPhasedExecution``."""
        if not isinstance(strategy, _Strategy):
            raise FrontendError(f"setExecutionStrategy: strategy must be one of PipelinedExecution, "
                                f"ShardedExecution, SerialPhasedExecution, ParallelPhasedExecution; got "
                                f"{type(strategy).__name__}")
        self._parallel["strategy"] = strategy
        return self

    def autoRoundNumIPUs(self, auto_round_num_ipus: bool = True) -> Options:  # noqa: N802
        """Round the IPU count the blocks use up to a power of two (else that is an error)."""
        self._parallel["auto_round"] = bool(auto_round_num_ipus)
        return self

    def enableExecutableCaching(self, path: str) -> Options:  # noqa: N802
        return self._set("executable_cache_dir", str(path))

    def useIpuModel(self, use_model: bool) -> Options:  # noqa: N802
        # Every softipu device is a model of the IPU, with cycle counts: nothing to switch.
        self._values["_use_ipu_model"] = bool(use_model)
        return self

    def useOfflineIpuTarget(self, ipu_version: int = 2) -> Options:  # noqa: N802
        targets = {1: GC2, 2: GC200, 21: BOW}
        if ipu_version not in targets:
            raise FrontendError(f"useOfflineIpuTarget: IPU version {ipu_version} is not one of "
                                f"{sorted(targets)}")
        return self._set("target", targets[ipu_version])

    def setTarget(self, target: Target) -> Options:  # noqa: N802 - softipu's extension
        return self._set("target", target)

    def broadcastBuffers(self, broadcast_buffers: bool = True) -> Options:  # noqa: N802
        """PopTorch's buffer broadcasting (on by default): PopTorch cannot broadcast buffers, so a
        replicated model that changes a buffer raises unless this is False, which lets each
        replica keep its own buffers (they drift apart)."""
        self._values["_broadcast_buffers"] = bool(broadcast_buffers)
        return self

    def anchorTensor(self, short_name: str, long_name: str,  # noqa: N802
                     output_mode: OutputMode | None = None, output_return_period: int | None = 1, *,
                     anchor_mode: OutputMode | None = None,
                     anchor_return_period: int | None = None) -> Options:
        """Stream the tensor ``long_name`` (a name from the executor's ``getTensorNames()``) back
        each run, as ``getAnchoredTensor(short_name)``, in ``output_mode`` (default: the model's;
        ``EveryN`` takes ``output_return_period``; PopTorch 2.x's ``anchor_mode`` and
        ``anchor_return_period`` are the same), shaped as PopART's anchor buffer
        (``softipu.frontends.poptorch_state``)."""
        output_mode = anchor_mode if anchor_mode is not None else output_mode
        output_return_period = anchor_return_period or output_return_period
        mode = None if output_mode is None else _MODES[OutputMode(output_mode)]
        period = 1 if output_return_period is None else int(output_return_period)
        if mode is _Mode.EVERY_N and period < 1:
            raise FrontendError(f"anchorTensor({short_name!r}, {long_name!r}): OutputMode.EveryN needs "
                                f"output_return_period >= 1, got {output_return_period!r}")
        self._anchors[str(short_name)] = (str(long_name), mode, period)
        return self

    @property
    def anchored_tensors(self) -> dict[str, str]:
        """Short name -> tensor name of each anchored tensor (PopTorch's attribute)."""
        return {short: long for short, (long, _, _) in self._anchors.items()}

    # -- reading back (PopTorch has these properties) ------------------------------------------------
    @property
    def replication_factor(self) -> int:
        return self._values.get("replication_factor", 1)

    @property
    def device_iterations(self) -> int:
        return self._values.get("device_iterations", 1)

    @property
    def stored(self) -> dict[str, Any]:
        """Options accepted without a softipu meaning yet, by name."""
        return dict(self._stored)

    def toSoftipu(self) -> TorchOptions:  # noqa: N802
        """The :class:`softipu.torch.Options` these options describe (validated)."""
        values = {k: v for k, v in self._values.items() if not k.startswith("_")}
        io_tiles = self._values.get("_num_io_tiles", 0)
        if io_tiles:
            values["target"] = _with_io_tiles(values.get("target", GC200), io_tiles)
        engine = dict(self._engine)
        if engine.get("prng.enableStochasticRounding") and "seed" in values:
            engine.setdefault("prng.seed", values["seed"])
        return TorchOptions(**values, engine_options=engine, stored=dict(self._stored),
                            model_parallel=self._model_parallel())

    def _model_parallel(self) -> dict[str, Any]:
        """The torch options' ``model_parallel``: the strategy's config, the IPU rounding and the
        per-IPU memory proportions (empty: the strategy is the default pipelining)."""
        p = self._parallel
        if not p:
            return {}
        strategy = p.get("strategy") or PipelinedExecution()
        return {**strategy.config(), "auto_round": p.get("auto_round", False),
                "memory": dict(p.get("memory", {}))}

    def clone(self) -> Options:
        """An independent copy of these options (PopTorch's ``Options.clone``)."""
        twin = Options()
        twin._values, twin._engine = dict(self._values), dict(self._engine)
        twin._stored, twin._anchors = dict(self._stored), dict(self._anchors)
        twin._parallel = dict(self._parallel)
        return twin

    def toDict(self) -> dict[str, Any]:  # noqa: N802
        return {**self._values, **{f"engine.{k}": v for k, v in self._engine.items()}, **self._stored}

    def __repr__(self) -> str:
        return f"poptorch.Options({self.toDict()!r})"

    # -- storing ----------------------------------------------------------------------------------
    def _set(self, key: str, value: Any) -> Options:
        trial = dict(self._values, **{key: value})
        TorchOptions(**{k: v for k, v in trial.items() if not k.startswith("_")})  # validate now
        self._values[key] = value
        return self

    def _stored_setter(self, name: str, returns: Any) -> Any:
        def setter(*args: Any, **kwargs: Any) -> Any:
            self._stored[name] = (args, kwargs) if kwargs else (args[0] if len(args) == 1 else args)
            warn_unused([name], "PopTorch option")
            return returns
        return setter

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name not in _STORED[""]:
            own = [m for m in dir(type(self)) if not m.startswith("_")]
            raise _no_such_setter("", name, own + list(_STORED[""]))
        return self._stored_setter(name, self)


def _with_io_tiles(target: Target, io_tiles: int) -> Target:
    """``target`` with ``io_tiles`` of each IPU's tiles reserved for I/O (``Target.num_io_tiles``):
    the frontends lower the model's work onto the remaining compute tiles and place its inputs on
    the I/O tiles, as PopART splits each IPU into two virtual graphs (``frontends/placement.py``)."""
    if io_tiles >= target.tiles_per_ipu:
        raise FrontendError(f"TensorLocations.numIOTiles({io_tiles}) leaves no compute tiles on "
                            f"{target.name} ({target.tiles_per_ipu} tiles per IPU); use fewer I/O tiles")
    return dataclasses.replace(target, name=f"{target.name} ({io_tiles} I/O tiles)", num_io_tiles=io_tiles)


class TensorLocationSettings:
    """PopTorch's per-kind tensor location settings (``TensorLocations.setWeightLocation(...)``):
    every setter chains; training models place the optimizer state by them (off chip, sharded over
    replicas: ``frontends/torch/training/locations.py``), other tensor classes off chip are refused."""

    def __init__(self) -> None:
        self.stored: dict[str, Any] = {}

    def _store(self, name: str, value: Any) -> TensorLocationSettings:
        self.stored[name] = value
        return self

    def minElementsForOffChip(self, min_elements: int) -> TensorLocationSettings:  # noqa: N802
        return self._store("minElementsForOffChip", int(min_elements))

    def minElementsForReplicatedTensorSharding(self, min_elements: int) -> TensorLocationSettings:  # noqa: N802
        return self._store("minElementsForReplicatedTensorSharding", int(min_elements))

    def useOnChipStorage(self, use: bool = True) -> TensorLocationSettings:  # noqa: N802
        return self._store("useOnChipStorage", bool(use))

    def useReplicatedTensorSharding(self, use: bool = True) -> TensorLocationSettings:  # noqa: N802
        return self._store("useReplicatedTensorSharding", bool(use))

    def useIOTilesToLoad(self, use: bool = True) -> TensorLocationSettings:  # noqa: N802
        return self._store("useIOTilesToLoad", bool(use))

    def useIOTilesToStore(self, use: bool = True) -> TensorLocationSettings:  # noqa: N802
        return self._store("useIOTilesToStore", bool(use))

    def __repr__(self) -> str:
        return f"TensorLocationSettings({self.stored!r})"
