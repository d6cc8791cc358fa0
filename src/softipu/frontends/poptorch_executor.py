"""PopTorch's executors: ``inferenceModel`` / ``trainingModel`` wrappers over softipu's torch frontend.

Where softipu.poptorch behaves as PopTorch and unlike ``softipu.torch``:

* 64-bit types run as 32-bit and come back 32-bit (int64 -> int32, float64 -> float32), as PopTorch
  returns them; an input value that does not fit 32 bits is an error, never a silent wrap.
  ``softipu.torch`` returns the module's own dtypes.
* Errors are ``poptorch.Error`` (a run that fails on the device: ``poptorch.RecoverableError``)
  as well as ``sp.SoftIPUError``.
* A ``.half()`` model gets float32 inputs as float16 (PopTorch's default half casting).
* ``compileAndExport`` writes one file (a zip archive of softipu's export directory).
* ``getPerfCounters`` gives PopTorch's structure, from the modeled timeline of the last call.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils import _pytree as pytree

from softipu.compiler.serialize import MANIFEST
from softipu.errors import CodeletError, SoftIPUError
from softipu.frontends.errors import FrontendError, PoptorchError, RecoverableError, as_poptorch_error
from softipu.frontends.poptorch_enums import HalfFloatCastingBehavior
from softipu.frontends.poptorch_ops import POST_COMPILE_HOOKS
from softipu.frontends.poptorch_options import Options
from softipu.frontends.poptorch_state import (
    AnchorPlan,
    check_broadcast_buffers,
    read_rng_state,
    tensor_names,
    write_rng_state,
)
from softipu.frontends.torch.options import UnusedOptionWarning
from softipu.frontends.torch.runtime import InferenceModel
from softipu.frontends.torch.training import TrainingModel

__all__ = ["PoplarExecutor", "TrainingExecutor", "inferenceModel", "load", "trainingModel"]

_NARROW = {torch.int64: torch.int32, torch.float64: torch.float32}


def _as_32bit(out: Any) -> Any:
    """PopTorch's outputs: int64 and float64 results come back as int32 and float32."""
    def narrow(t: Any) -> Any:
        return t.to(_NARROW[t.dtype]) if isinstance(t, torch.Tensor) and t.dtype in _NARROW else t
    return pytree.tree_map(narrow, out)


def _float_dtypes(model: torch.nn.Module) -> set[torch.dtype]:
    """The dtypes of ``model``'s floating-point parameters and buffers, read afresh on every call
    (so ``.half()`` or a new submodule after compiling counts) by one plain walk of the module
    tree: torch's ``parameters()``/``buffers()`` generators cost ~5x more, and this runs per call."""
    dtypes: set[torch.dtype] = set()
    stack, seen = [model], {model}
    while stack:
        m = stack.pop()
        for tensors in (m._parameters, m._buffers):
            for t in tensors.values():
                if t is not None:
                    dtypes.add(t.dtype)
        for c in m._modules.values():
            if c is not None and c not in seen:  # a module shared by two parents is read once
                seen.add(c)
                stack.append(c)
    return {d for d in dtypes if d.is_floating_point}


def _half_inputs(model: torch.nn.Module, options: Options, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """A model converted with ``.half()`` (every float parameter and buffer float16) gets its
    float32 inputs as float16, as PopTorch's default half casting (``FloatDowncastToHalf``) does;
    ``Precision.halfFloatCasting(HalfUpcastToFloat)`` keeps them float32 (torch's promotion)."""
    if options.stored.get("Precision.halfFloatCasting") == HalfFloatCastingBehavior.HalfUpcastToFloat:
        return args, kwargs
    leaves = pytree.tree_leaves((args, kwargs))
    if not any(isinstance(t, torch.Tensor) and t.dtype == torch.float32 for t in leaves):
        return args, kwargs  # nothing to cast (token ids, masks): the module's walk is skipped
    if _float_dtypes(model) != {torch.float16}:
        return args, kwargs
    def cast(t: Any) -> Any:
        return t.half() if isinstance(t, torch.Tensor) and t.dtype == torch.float32 else t
    return pytree.tree_map(cast, (args, kwargs))


def _poptorch_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` raising softipu's errors as PopTorch's: a failure while running on the device is a
    ``poptorch.RecoverableError``, any other a ``poptorch.Error`` (both stay SoftIPUErrors)."""
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SoftIPUError as exc:
            raise as_poptorch_error(exc, RecoverableError if isinstance(exc, CodeletError)
                                    else PoptorchError) from None
    wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
    wrapper.__qualname__ = fn.__qualname__
    return wrapper


def _run_hooks() -> None:
    for hook in list(POST_COMPILE_HOOKS.values()):
        hook()


# -- one-file exports ------------------------------------------------------------------------------
def _export_file(filename: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Write an export as ONE file at ``filename``: ``write`` fills a temporary directory, which is
    stored in a zip archive (uncompressed) that replaces ``filename`` whole."""
    target = Path(filename)
    if target.is_dir() and not (target / MANIFEST).is_file() and any(target.iterdir()):
        raise FrontendError(f"cannot export to {target}: it is a directory and not a softipu export; "
                            "remove it or choose another path")
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    archive = work.with_name(work.name + ".zip")
    try:
        write(work / "export")
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as z:
            for f in sorted((work / "export").rglob("*")):
                if f.is_file():
                    z.write(f, f.relative_to(work / "export").as_posix())
        if target.is_dir():  # an export of an earlier softipu (a directory): replaced by the file
            shutil.rmtree(target)
        os.replace(archive, target)
    except OSError as exc:
        raise FrontendError(f"cannot export to {target}: {exc}; the earlier file there (if any) is "
                            "unchanged") from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)
        archive.unlink(missing_ok=True)


def _load_file(filename: str | os.PathLike, load: Callable[[Path], None]) -> None:
    """Load an export written by :func:`_export_file` (or an export directory) with ``load``."""
    path = Path(filename)
    if path.is_dir() or not path.exists():
        load(path)  # softipu.torch's directory format (its own errors for a missing path)
        return
    if not zipfile.is_zipfile(path):
        raise FrontendError(f"{path} is not a model exported by softipu's compileAndExport: it is a file "
                            "but not a softipu archive (a PopTorch export?); export the model with "
                            "softipu.poptorch's compileAndExport")
    work = Path(tempfile.mkdtemp(prefix=f".{path.name}.load-", dir=path.parent))
    try:
        try:
            with zipfile.ZipFile(path) as z:
                z.extractall(work)
        except (zipfile.BadZipFile, OSError) as exc:
            raise FrontendError(f"cannot load {path}: a damaged archive ({exc}); export the model "
                                "again") from exc
        load(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# -- performance counters -------------------------------------------------------------------------------
_STREAM = re.compile(r"Copy '(inputs|outputs)/(\d+)")


def perf_counters(engine: Any) -> dict[str, list[list[float]]]:
    """PopTorch's ``getPerfCounters()`` from the engine's modeled timeline of its last run: for each
    input (output) tensor, the seconds at which each transfer was requested ('input', 'output')
    and done ('input_complete', 'output_complete'), one value per iteration, from the run's
    start. Transfers whose trace events were dropped (very long runs) are missing."""
    clock = engine.graph.target.clock_hz
    steps = engine.report.steps
    log = engine.log
    start = log.cycles - (log.runs[-1][1] if log.runs else 0)
    found: dict[str, dict[int, list[tuple[float, float]]]] = {"inputs": {}, "outputs": {}}
    for step, begin, times in log.trace:
        if begin < start:
            continue
        m = _STREAM.match(steps[step]["name"])
        if m is None:
            continue
        cycles = steps[step]["cycles"]
        spans = found[m.group(1)].setdefault(int(m.group(2)), [])
        for j in range(times):
            first = begin - start + j * cycles
            spans.append((first / clock, (first + cycles) / clock))
    out: dict[str, list[list[float]]] = {}
    for kind, key in (("inputs", "input"), ("outputs", "output")):
        ordered = [found[kind][k] for k in sorted(found[kind])]
        out[key] = [[a for a, _ in spans] for spans in ordered]
        out[f"{key}_complete"] = [[b for _, b in spans] for spans in ordered]
    return out


def _latency(counters: dict[str, list[list[float]]], first: str, last: str) -> tuple[float, float, float]:
    starts, ends = counters[first], counters[last]
    if not starts or not ends:
        return (0.0, 0.0, 0.0)
    n = min(min(len(s) for s in starts), min(len(e) for e in ends))
    spans = [max(e[i] for e in ends) - min(s[i] for s in starts) for i in range(n)]
    return (min(spans), max(spans), sum(spans) / len(spans)) if spans else (0.0, 0.0, 0.0)


# -- the executor -----------------------------------------------------------------------------------------
class PoplarExecutor:
    """PopTorch's executor: call it like the model; ``compile``, ``cycleCount``, weights, attach."""

    _anchor_memory: dict[str, torch.Tensor] = {}  # replaced (never changed in place) per call

    def __init__(self, model: torch.nn.Module, options: Options | None = None) -> None:
        self._options = options or Options()
        opts = self._options.toSoftipu()
        if opts.gradient_accumulation != 1:
            raise as_poptorch_error(FrontendError(
                f"Training.gradientAccumulation is {opts.gradient_accumulation}, but it must be 1 for "
                "inference: use poptorch.trainingModel, or other Options"))
        self._anchors = _anchor_plan(self._options, opts, training=False)
        if self._anchors is not None:  # a cached executable would lack the anchors' streams
            opts = opts.replace(executable_cache_dir=None)
        self._impl = InferenceModel(model, opts)
        self._impl.lowered_hook = self._anchors
        self.model = model
        self._seen_version = model.__dict__.get("_softipu_host_version", 0)
        self._anchor_memory: dict[str, torch.Tensor] = {}

    @_poptorch_errors
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        version = self.model.__dict__.get("_softipu_host_version", 0)
        if version != self._seen_version:  # a trainingModel on the same module has trained it since
            self._seen_version = version
            if self._impl._current is not None:
                self._impl.copy_weights_to_device()
        before = self._impl.compile_seconds
        args, kwargs = _half_inputs(self.model, self._options, args, kwargs)
        broadcast = self._options._values.get("_broadcast_buffers", True)
        if self._impl.options.replication_factor > 1 and broadcast:
            self._impl.compile(*args, **kwargs)  # PopTorch refuses at compile time
            self._check_buffers()
        out = _as_32bit(self._impl(*args, **kwargs))
        if self._impl.compile_seconds is not before:
            _run_hooks()
        if self._anchors is not None:
            current = self._impl._current
            self._anchor_memory = self._anchors.values(current.extra, current.extra_out)
        return out

    def _check_buffers(self) -> None:
        check_broadcast_buffers(self._impl.lowered.mutations, self._impl.options.replication_factor,
                                self._options._values.get("_broadcast_buffers", True))

    @_poptorch_errors
    def compile(self, *args: Any, **kwargs: Any) -> None:
        before = self._impl.compile_seconds
        args, kwargs = _half_inputs(self.model, self._options, args, kwargs)
        self._impl.compile(*args, **kwargs)
        self._check_buffers()
        if self._impl.compile_seconds is not before:
            _run_hooks()

    @_poptorch_errors
    def getTensorNames(self) -> list[str]:  # noqa: N802
        """The names of every tensor of the compiled graph (its variables: weights, inputs, op
        results); the model must be compiled. Any of them can be anchored (``anchorTensor``)."""
        self._need_compiled("getTensorNames")
        return tensor_names(self._impl.lowered)

    def getAnchoredTensor(self, short_name: str) -> torch.Tensor:  # noqa: N802
        """The value after the last call of the tensor anchored as ``short_name``
        (``Options.anchorTensor``)."""
        if short_name not in self._anchor_memory:
            raise as_poptorch_error(FrontendError(
                f"getAnchoredTensor: no tensor with name {short_name!r} found (anchored: "
                f"{sorted(self._options._anchors) or 'none'}); anchor it with "
                "options.anchorTensor(short_name, name) and run the model first"))
        return self._anchor_memory[short_name]

    @property
    def rng_state(self) -> list[int]:
        """The random generator's seed and state of the compiled model: ``[seed, low, high]``, the
        device seed's two words (advanced after every run). Setting it back makes the next runs
        draw the same numbers again."""
        self._need_compiled("rng_state")
        graph, engine = self._devices()[0]
        return read_rng_state(graph, engine, self._impl.options.seed or 0)

    @rng_state.setter
    def rng_state(self, state: list[int]) -> None:
        self._need_compiled("rng_state")
        for graph, engine in self._devices():
            write_rng_state(graph, engine, state)

    def _devices(self) -> list[tuple[Any, Any]]:
        """(graph, engine) of every compiled signature, the current one first."""
        current = self._impl._current
        others = [c for c in self._impl._compiled.values() if c is not current]
        return [(c.lowered.graph, c.engine) for c in ([current] if current else []) + others]

    def _need_compiled(self, what: str) -> None:
        if not self.isCompiled():
            raise as_poptorch_error(FrontendError(
                f"{what}: the model has not been compiled; call it or model.compile(inputs) first"))

    @_poptorch_errors
    def compileAndExport(self, filename: str | os.PathLike, *args: Any, export_model: bool = True,  # noqa: N802
                         **kwargs: Any) -> None:
        """Compile for these inputs and write the executable to the file ``filename`` (one zip
        archive of JSON and plain arrays). The model stays compiled. softipu never pickles, so the
        torch module is not saved: ``export_model=True`` (PopTorch's default) warns once and writes
        the executable only. Load it with :meth:`loadExecutable` on a wrapper of the same module
        code and options."""
        if export_model:
            warnings.warn(_NO_MODEL_IN_EXPORT, UnusedOptionWarning, stacklevel=3)
        was = self.isCompiled()
        args, kwargs = _half_inputs(self.model, self._options, args, kwargs)
        _export_file(filename, lambda d: self._impl.export(d, *args, **kwargs))
        if not was:
            _run_hooks()

    @_poptorch_errors
    def loadExecutable(self, filename: str | os.PathLike) -> None:  # noqa: N802
        """Load an executable written by :meth:`compileAndExport` from a wrapper of the same module
        code and options; the weights are the module's current ones. Raises naming what differs
        when the file was exported from another module, options or softipu."""
        _load_file(filename, self._impl.load_executable)
        _run_hooks()

    def isCompiled(self) -> bool:  # noqa: N802
        return self._impl._current is not None

    @_poptorch_errors
    def cycleCount(self) -> int:  # noqa: N802
        if not self._impl.options.log_cycle_count:
            raise FrontendError("Cycle count logging is disabled: call options.logCycleCount(True) "
                                "before inferenceModel (softipu.torch's model.cycle_count needs no option)")
        return self._impl.cycle_count

    @_poptorch_errors
    def copyWeightsToDevice(self) -> None:  # noqa: N802
        self._impl.copy_weights_to_device()

    @_poptorch_errors
    def copyNamedBuffersToDevice(self) -> None:  # noqa: N802
        """Write the module's current buffers (not its parameters) to the device."""
        self._impl.copy_weights_to_device(buffers_only=True)

    @_poptorch_errors
    def copyWeightsToHost(self) -> None:  # noqa: N802
        """Bring the buffers the model changed on the device (``self.count += 1`` in forward) back
        into the module; inference never changes the parameters."""
        self._impl.copy_buffers_to_host()

    @_poptorch_errors
    def setOptimizer(self, optimizer: Any) -> None:  # noqa: N802
        """An inference model has no optimizer (PopTorch refuses it too)."""
        raise FrontendError("setOptimizer: this is an inference model (poptorch.inferenceModel), which has "
                            "no optimizer; use poptorch.trainingModel(model, options, optimizer)")

    def detachFromDevice(self) -> None:  # noqa: N802
        self._impl.detach()

    def attachToDevice(self) -> None:  # noqa: N802
        self._impl.attach()

    def isAttachedToDevice(self) -> bool:  # noqa: N802
        return self._impl.is_attached

    def destroy(self) -> None:
        self._impl.destroy()

    @_poptorch_errors
    def getPerfCounters(self) -> dict[str, list[list[float]]]:  # noqa: N802
        """PopTorch's performance counters of the last call: ``{'input', 'input_complete',
        'output', 'output_complete'}``, each a list per input (output) tensor of the times in
        seconds, one per iteration, at which the IPU requested the transfer and had it done, on
        the modeled timeline (its reference point is the run's start)."""
        return perf_counters(self._impl.engine)

    def getLatency(self) -> tuple[float, float, float]:  # noqa: N802
        """(min, max, mean) seconds from the first input requested to the last output transferred,
        over the last call's iterations (modeled)."""
        return _latency(self.getPerfCounters(), "input", "output_complete")

    def getHostIpuLatency(self) -> tuple[float, float, float]:  # noqa: N802
        return _latency(self.getPerfCounters(), "input", "input_complete")

    def getComputeLatency(self) -> tuple[float, float, float]:  # noqa: N802
        return _latency(self.getPerfCounters(), "input_complete", "output")

    def getIpuHostLatency(self) -> tuple[float, float, float]:  # noqa: N802
        return _latency(self.getPerfCounters(), "output", "output_complete")

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
    raise as_poptorch_error(FrontendError(
        f"poptorch.load({str(filename)!r}) needs the torch module pickled in the file, and softipu never "
        "pickles (loading a pickle runs code): build the module again in code, then "
        "model = poptorch.inferenceModel(module, options) (edit the options there instead of with "
        "edit_opts_fn) and model.loadExecutable(filename)"))


def _anchor_plan(options: Options, softipu_options: Any, training: bool) -> AnchorPlan | None:
    """The executor's anchored tensors (``Options.anchorTensor``), streamed out by its lowering."""
    if not options._anchors:
        return None
    try:
        return AnchorPlan(options._anchors, softipu_options, training)
    except FrontendError as exc:
        raise as_poptorch_error(exc) from None


def inferenceModel(model: torch.nn.Module, options: Options | None = None) -> PoplarExecutor:  # noqa: N802
    """PopTorch's ``inferenceModel``: ``model`` compiled for a (simulated) IPU on its first call."""
    return PoplarExecutor(model, options)


class TrainingExecutor(PoplarExecutor):
    """PopTorch's executor for ``trainingModel``: each call runs ``deviceIterations`` optimizer steps
    (forward, backward, update) on the device and returns what the model returns (the last
    micro-batch's by default, ``OutputMode.Final``)."""

    def __init__(self, model: torch.nn.Module, options: Options | None = None, optimizer: Any = None) -> None:
        self._options = options or Options()
        opts = self._options.toSoftipu()
        self._anchors = _anchor_plan(self._options, opts, training=True)
        self._anchor_memory = {}
        self._impl = TrainingModel(model, optimizer, opts)
        self._impl.lowered_hook = self._anchors
        self.model = model

    @_poptorch_errors
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        was = self.isCompiled()
        out = _as_32bit(self._impl(*args, **kwargs))
        if not was:
            _run_hooks()
        if self._anchors is not None:
            self._anchor_memory = self._anchors.values(self._impl._extra, self._impl.extra_out)
        return out

    def isCompiled(self) -> bool:  # noqa: N802
        return self._impl._lowered is not None

    def _check_buffers(self) -> None:
        """Training checks no buffers at compile, as its calls do not: the replicated-buffer refusal
        is the inference rule (``PoplarExecutor._check_buffers``)."""

    def _devices(self) -> list[tuple[Any, Any]]:
        return [(self._impl.lowered.graph, self._impl.engine)]

    @_poptorch_errors
    def setOptimizer(self, optimizer: Any) -> None:  # noqa: N802
        """Use ``optimizer``'s learning rate and other variable attributes from the next call, without
        compiling again; changing an attribute compiled in as a constant raises."""
        self._impl.set_optimizer(optimizer)

    @_poptorch_errors
    def copyWeightsToHost(self) -> None:  # noqa: N802
        """Copy the trained weights from the device into the model now."""
        self._impl.copy_weights_to_host()

    @_poptorch_errors
    def compileAndExport(self, filename: str | os.PathLike, *args: Any, export_model: bool = True,  # noqa: N802
                         **kwargs: Any) -> None:
        """Compile for these inputs (unless compiled) and write the training executable with the
        device's weights and optimizer state to the file ``filename`` (one zip archive). The torch
        module is not saved (softipu never pickles): ``export_model=True`` warns once. Load it with
        :meth:`loadExecutable` on a trainingModel of the same module code, options and optimizer;
        training goes on from the saved state."""
        if export_model:
            warnings.warn(_NO_MODEL_IN_EXPORT.replace("inferenceModel(module, options)",
                                                      "trainingModel(module, options, optimizer)"),
                          UnusedOptionWarning, stacklevel=3)
        _export_file(filename, lambda d: self._impl.export(d, *args, **kwargs))

    @_poptorch_errors
    def loadExecutable(self, filename: str | os.PathLike) -> None:  # noqa: N802
        """Load a training executable written by :meth:`compileAndExport` with its saved weights and
        optimizer state; raises naming what differs when it came from another module, options or
        optimizer."""
        _load_file(filename, self._impl.load_executable)
        _run_hooks()

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
