"""PopTorch's names over softipu's torch frontend: a PopTorch script runs with only its import
changed (``import softipu.poptorch as poptorch``).

Options PopTorch has that softipu gives no meaning yet (pipelining, tensor locations,
distribution...) are accepted and stored; each is named in a one-time
:class:`~softipu.frontends.torch.options.UnusedOptionWarning`. None is silently ignored.

>>> import torch, softipu.poptorch as poptorch
>>> opts = poptorch.Options().deviceIterations(2).logCycleCount(True)
>>> model = poptorch.inferenceModel(torch.nn.Linear(4, 2), opts)
>>> model(torch.randn(6, 4)).shape
torch.Size([6, 2])
>>> model.cycleCount() > 0
True
"""

from __future__ import annotations

import contextlib
import enum
import os
import warnings
import weakref
from collections.abc import Iterator
from typing import Any

import torch

from softipu.frontends.errors import FrontendError
from softipu.frontends.poptorch_data import AsynchronousDataAccessor, DataLoaderMode, SharingStrategy
from softipu.frontends.torch.custom_ops import ipu_print_op
from softipu.frontends.torch.options import Options as TorchOptions
from softipu.frontends.torch.options import OutputMode as _Mode
from softipu.frontends.torch.options import UnusedOptionWarning, warn_unused
from softipu.frontends.torch.runtime import InferenceModel, logger
from softipu.frontends.torch.training import TrainingModel, record_loss
from softipu.target import BOW, GC2, GC200, Target

__all__ = [
    "Options", "OutputMode", "inferenceModel", "trainingModel", "PoplarExecutor", "TrainingExecutor",
    "BeginBlock", "Block",
    "ipu_print_tensor", "identity_loss", "recomputationCheckpoint", "set_available_memory", "DataLoader",
    "AsynchronousDataAccessor", "DataLoaderMode", "SharingStrategy",
    "HalfFloatCastingBehavior", "ReductionType", "MeanReductionStrategy", "ConnectionType", "SyncPattern",
    "ShardedExecution",
    "PipelinedExecution", "SerialPhasedExecution", "ParallelPhasedExecution", "ipuHardwareIsAvailable",
    "ipuHardwareVersion", "setLogLevel", "block_of", "load", "__version__",
]

__version__ = "3.3.0+softipu"


class OutputMode(enum.IntEnum):
    """PopTorch's ``OutputMode`` (which iterations' outputs come back to the host)."""

    Final = 0
    EveryN = 1
    All = 2
    Sum = 3
    Default = 4


_MODES = {OutputMode.Final: _Mode.FINAL, OutputMode.EveryN: _Mode.EVERY_N, OutputMode.All: _Mode.ALL,
          OutputMode.Sum: _Mode.SUM, OutputMode.Default: _Mode.DEFAULT}


class HalfFloatCastingBehavior(enum.IntEnum):
    FloatDowncastToHalf = 0
    HalfUpcastToFloat = 1
    Default = 2


class ReductionType(enum.IntEnum):
    Sum = 0
    Mean = 1
    NoReduction = 2


class MeanReductionStrategy(enum.IntEnum):
    """When a mean reduction of accumulated gradients divides (PopTorch's enum): ``Running`` keeps
    the accumulator the mean so far (never larger than the largest micro-batch gradient: no fp16
    overflow), ``Post`` adds them up and divides once before the update, ``PostAndLoss``
    (deprecated in PopTorch) divides by the replica count before the backward, the same as
    ``Post`` with one replica."""

    Running = 0
    Post = 1
    PostAndLoss = 2


class ConnectionType(enum.IntEnum):
    Always = 0
    OnDemand = 1
    Never = 2


class SyncPattern(enum.IntEnum):
    Full = 0
    SinglePipeline = 1
    ReplicaAndLadder = 2


class _Strategy:
    """An execution strategy (pipelining, sharding, phases): accepted and stored."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(map(repr, self.args))})"


class ShardedExecution(_Strategy):
    pass


class PipelinedExecution(_Strategy):
    pass


class SerialPhasedExecution(_Strategy):
    pass


class ParallelPhasedExecution(_Strategy):
    pass


# PopTorch's setters that softipu stores without giving them a meaning yet, per section.
_STORED = {
    "": ("autoRoundNumIPUs", "connectionType", "disableModuleNamescope", "enableProfiling",
         "enableStableNorm", "enableSyntheticData", "logDir", "loadFromFile", "modelName",
         "setExecutionStrategy", "sourceLocationExcludes", "appendToLocationExcludes", "syncPattern",
         "useIpuId", "updatableNamedBuffers", "relaxOptimizerAttributesChecks",
         "showCompilationProgressBar", "defaultOutputMode", "setPopartLogLevel"),
    "Precision": ("autocastEnabled", "halfFloatCasting", "runningStatisticsAlwaysFloat"),
    "Training": ("setConvolutionDithering",),
    "TensorLocations": ("setActivationLocation", "setWeightLocation", "setOptimizerLocation",
                        "setAccumulatorLocation", "numIOTiles"),
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


class _Distributed(_Section):
    _label = "Distributed"


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
        values = set(available_memory_proportion.values())
        if len(values) > 1:  # one IPU today: one proportion
            self._stored["setAvailableMemoryProportion"] = dict(available_memory_proportion)
            warn_unused(["setAvailableMemoryProportion (different values per IPU)"], "PopTorch option")
        return self._set("available_memory_proportion", float(min(values)))

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
        engine = dict(self._engine)
        if engine.get("prng.enableStochasticRounding") and "seed" in values:
            engine.setdefault("prng.seed", values["seed"])
        return TorchOptions(**values, engine_options=engine, stored=dict(self._stored))

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


# -- the executor -----------------------------------------------------------------------------------------
class PoplarExecutor:
    """PopTorch's executor: call it like the model; ``compile``, ``cycleCount``, weights, attach."""

    def __init__(self, model: torch.nn.Module, options: Options | None = None) -> None:
        self._options = options or Options()
        opts = self._options.toSoftipu()
        if opts.gradient_accumulation != 1:
            raise FrontendError(f"Training.gradientAccumulation is {opts.gradient_accumulation}, but it "
                                "must be 1 for inference: use poptorch.trainingModel, or other Options")
        self._impl = InferenceModel(model, opts)
        self.model = model
        self._seen_version = model.__dict__.get("_softipu_host_version", 0)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        version = self.model.__dict__.get("_softipu_host_version", 0)
        if version != self._seen_version:  # a trainingModel on the same module has trained it since
            self._seen_version = version
            if self._impl._current is not None:
                self._impl.copy_weights_to_device()
        return self._impl(*args, **kwargs)

    def compile(self, *args: Any, **kwargs: Any) -> None:
        self._impl.compile(*args, **kwargs)

    def compileAndExport(self, filename: str | os.PathLike, *args: Any, export_model: bool = True,  # noqa: N802
                         **kwargs: Any) -> None:
        """Compile for these inputs and write the executable to ``filename`` (a directory of JSON and
        plain arrays). The model stays compiled. softipu never pickles, so the torch module is not
        saved: ``export_model=True`` (PopTorch's default) warns once and writes the executable only.
        Load it with :meth:`loadExecutable` on a wrapper of the same module code and options."""
        if export_model:
            warnings.warn(_NO_MODEL_IN_EXPORT, UnusedOptionWarning, stacklevel=2)
        self._impl.export(filename, *args, **kwargs)

    def loadExecutable(self, filename: str | os.PathLike) -> None:  # noqa: N802
        """Load an executable written by :meth:`compileAndExport` from a wrapper of the same module
        code and options; the weights are the module's current ones. Raises naming what differs
        when the file was exported from another module, options or softipu."""
        self._impl.load_executable(filename)

    def isCompiled(self) -> bool:  # noqa: N802
        return self._impl._current is not None

    def cycleCount(self) -> int:  # noqa: N802
        if not self._impl.options.log_cycle_count:
            raise FrontendError("Cycle count logging is disabled: call options.logCycleCount(True) "
                                "before inferenceModel (softipu.torch's model.cycle_count needs no option)")
        return self._impl.cycle_count

    def copyWeightsToDevice(self) -> None:  # noqa: N802
        self._impl.copy_weights_to_device()

    def copyWeightsToHost(self) -> None:  # noqa: N802
        """Inference never changes the weights on the device: the host copy is already current."""

    def detachFromDevice(self) -> None:  # noqa: N802
        self._impl.detach()

    def attachToDevice(self) -> None:  # noqa: N802
        self._impl.attach()

    def isAttachedToDevice(self) -> bool:  # noqa: N802
        return self._impl.is_attached

    def destroy(self) -> None:
        self._impl.destroy()

    def getPerfCounters(self) -> dict[str, Any]:  # noqa: N802
        """Modeled cycles and seconds of the last call (PopTorch reports host timestamps)."""
        cycles = self._impl.cycle_count
        return {"cycles": cycles, "seconds": cycles / self._impl.options.target.clock_hz}

    @property
    def report(self) -> Any:
        return self._impl.report

    @property
    def options(self) -> Options:
        return self._options

    def __getattr__(self, name: str) -> Any:
        # PopTorch forwards attribute reads to the wrapped model.
        if name.startswith("_") or name == "model":
            raise AttributeError(name)
        return getattr(self.model, name)

    def __repr__(self) -> str:
        return f"PoplarExecutor({self._impl!r})"


_NO_MODEL_IN_EXPORT = (
    "compileAndExport(export_model=True) saves the executable but not the torch module: softipu never "
    "pickles, since loading a pickle runs code. To load it, build the module again in code, wrap it "
    "with poptorch.inferenceModel(module, options) and call loadExecutable(filename); pass "
    "export_model=False to say so and silence this warning")


def load(filename: str | os.PathLike, edit_opts_fn: Any = None) -> PoplarExecutor:
    """PopTorch's ``poptorch.load`` restores a pickled module with its executable; softipu never
    pickles, so it raises and says what to do instead."""
    raise FrontendError(
        f"poptorch.load({str(filename)!r}) needs the torch module pickled in the file, and softipu never "
        "pickles (loading a pickle runs code): build the module again in code, then "
        "model = poptorch.inferenceModel(module, options) (edit the options there instead of with "
        "edit_opts_fn) and model.loadExecutable(filename)")


def inferenceModel(model: torch.nn.Module, options: Options | None = None) -> PoplarExecutor:  # noqa: N802
    """PopTorch's ``inferenceModel``: ``model`` compiled for a (simulated) IPU on its first call."""
    return PoplarExecutor(model, options)


class TrainingExecutor(PoplarExecutor):
    """PopTorch's executor for ``trainingModel``: each call runs ``deviceIterations`` optimizer steps
    (forward, backward, update) on the device and returns what the model returns (the last
    micro-batch's by default, ``OutputMode.Final``)."""

    def __init__(self, model: torch.nn.Module, options: Options | None = None, optimizer: Any = None) -> None:
        self._options = options or Options()
        self._impl = TrainingModel(model, optimizer, self._options.toSoftipu())
        self.model = model

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._impl(*args, **kwargs)

    def isCompiled(self) -> bool:  # noqa: N802
        return self._impl._lowered is not None

    def setOptimizer(self, optimizer: Any) -> None:  # noqa: N802
        """Use ``optimizer``'s learning rate and other variable attributes from the next call, without
        compiling again; changing an attribute compiled in as a constant raises."""
        self._impl.set_optimizer(optimizer)

    def copyWeightsToHost(self) -> None:  # noqa: N802
        """Copy the trained weights from the device into the model now."""
        self._impl.copy_weights_to_host()

    def compileAndExport(self, filename: str | os.PathLike, *args: Any, export_model: bool = True,  # noqa: N802
                         **kwargs: Any) -> None:
        """Compile for these inputs (unless compiled) and write the training executable with the
        device's weights and optimizer state to ``filename`` (a directory of JSON and plain arrays).
        The torch module is not saved (softipu never pickles): ``export_model=True`` warns once.
        Load it with :meth:`loadExecutable` on a trainingModel of the same module code, options
        and optimizer; training goes on from the saved state."""
        if export_model:
            warnings.warn(_NO_MODEL_IN_EXPORT.replace("inferenceModel(module, options)",
                                                      "trainingModel(module, options, optimizer)"),
                          UnusedOptionWarning, stacklevel=2)
        self._impl.export(filename, *args, **kwargs)

    def loadExecutable(self, filename: str | os.PathLike) -> None:  # noqa: N802
        """Load a training executable written by :meth:`compileAndExport` with its saved weights and
        optimizer state; raises naming what differs when it came from another module, options or
        optimizer."""
        self._impl.load_executable(filename)

    def getPerfCounters(self) -> dict[str, Any]:  # noqa: N802
        cycles = self._impl.cycle_count
        return {"cycles": cycles, "seconds": cycles / self._impl.options.target.clock_hz}

    def parameters(self, *args: Any, **kwargs: Any) -> Any:
        return self.model.parameters(*args, **kwargs)

    def named_parameters(self, *args: Any, **kwargs: Any) -> Any:
        return self.model.named_parameters(*args, **kwargs)

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        return self.model.state_dict(*args, **kwargs)

    def summary(self) -> dict[str, Any]:
        """Memory by role and cycles by phase of the training step (softipu's extension)."""
        return self._impl.summary()

    def __repr__(self) -> str:
        return f"PoplarExecutor({self._impl!r})"


def trainingModel(model: torch.nn.Module, options: Options | None = None,  # noqa: N802
                  optimizer: Any = None) -> TrainingExecutor:
    """PopTorch's ``trainingModel``: ``model`` and ``optimizer`` (default
    ``poptorch.optim.SGD(lr=0.01)``) compiled as one training step for a (simulated) IPU on the
    first call. The model's parameters are the trained ones whenever they are read."""
    return TrainingExecutor(model, options, optimizer)


# -- annotations ------------------------------------------------------------------------------------------
_BLOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def BeginBlock(layer_to_call: torch.nn.Module, user_id: Any = None, ipu_id: int | None = None) -> Any:  # noqa: N802
    """Mark where a pipeline stage begins: accepted and recorded (``block_of``); everything runs on
    one IPU until multi-IPU placement lands."""
    _BLOCKS[layer_to_call] = (user_id, ipu_id)
    if ipu_id not in (None, 0):
        warn_unused(["BeginBlock(ipu_id > 0)"], "PopTorch annotation")
    return layer_to_call


def block_of(layer: torch.nn.Module) -> tuple[Any, int | None] | None:
    """The ``(user_id, ipu_id)`` a layer was given with :func:`BeginBlock`, if any."""
    return _BLOCKS.get(layer)


@contextlib.contextmanager
def Block(user_id: Any = None, ipu_id: int | None = None) -> Iterator[None]:  # noqa: N802
    """PopTorch's ``with poptorch.Block(...)``: accepted; placement comes with multi-IPU support."""
    if ipu_id not in (None, 0):
        warn_unused(["Block(ipu_id > 0)"], "PopTorch annotation")
    yield


def recomputationCheckpoint(*tensors: torch.Tensor) -> Any:  # noqa: N802
    return tensors[0] if len(tensors) == 1 else tensors


def set_available_memory(tensor: torch.Tensor, available_memory_proportion: float) -> torch.Tensor:
    warn_unused(["set_available_memory (per op)"], "PopTorch annotation")
    return tensor


def ipu_print_tensor(tensor: torch.Tensor, title: str = "") -> torch.Tensor:
    """Print ``tensor`` on the host each time the IPU program computes it (``program.PrintTensor``)."""
    return ipu_print_op(tensor, title)


def identity_loss(x: torch.Tensor, reduction: str = "none") -> torch.Tensor:
    """Mark ``x`` as the loss: its sum, mean or itself (``reduction`` "sum", "mean", "none"). A
    training model differentiates this loss (see :func:`trainingModel`)."""
    if reduction == "sum":
        out = x.sum()
    elif reduction == "mean":
        out = x.mean()
    elif reduction == "none":
        out = x
    else:
        raise FrontendError(f"identity_loss: reduction must be 'sum', 'mean' or 'none', got {reduction!r}")
    record_loss(out)
    return out


class DataLoader(torch.utils.data.DataLoader):
    """PopTorch's ``DataLoader(options, dataset, batch_size, ...)``: each batch holds what one call
    consumes, ``batch_size x deviceIterations x replicationFactor x gradientAccumulation``."""

    def __init__(self, options: Options, dataset: Any, batch_size: int = 1, shuffle: bool = False,
                 num_workers: int = 0, drop_last: bool = True, **kwargs: Any) -> None:
        accumulation = options._values.get("gradient_accumulation", 1)
        combined = batch_size * options.device_iterations * options.replication_factor * accumulation
        mode = DataLoaderMode(kwargs.pop("mode", DataLoaderMode.Sync))
        async_options = dict(kwargs.pop("async_options", None) or {})
        super().__init__(dataset, batch_size=combined, shuffle=shuffle, num_workers=num_workers,
                         drop_last=drop_last, **kwargs)
        self._async = None if mode is DataLoaderMode.Sync else async_options
        self._accessor: AsynchronousDataAccessor | None = None

    def __iter__(self) -> Any:
        """Batches in order; with ``mode=DataLoaderMode.Async`` prefetched by an
        :class:`AsynchronousDataAccessor` (made on the first iteration, with ``async_options``)."""
        if self._async is None:
            return super().__iter__()
        if self._accessor is None:
            self._accessor = AsynchronousDataAccessor(_SyncBatches(self), **self._async)
        return iter(self._accessor)

    def terminate(self) -> None:
        """Stop the asynchronous worker, if any (PopTorch's ``DataLoader.terminate``)."""
        if self._accessor is not None:
            self._accessor.terminate()
            self._accessor = None


class _SyncBatches:
    """A DataLoader's own synchronous batches, for its asynchronous worker."""

    def __init__(self, loader: DataLoader) -> None:
        self._loader = loader

    def __iter__(self) -> Any:
        return torch.utils.data.DataLoader.__iter__(self._loader)

    def __len__(self) -> int:
        return len(self._loader)


def ipuHardwareIsAvailable(num_ipus: int = 1) -> bool:  # noqa: N802
    """No IPU hardware: softipu simulates one."""
    return False


def ipuHardwareVersion() -> int:  # noqa: N802
    return 2


def setLogLevel(level: int | str) -> None:  # noqa: N802
    """Set the level of softipu's torch logger (PopTorch's levels by name or number)."""
    logger.setLevel(level.upper() if isinstance(level, str) else level)
