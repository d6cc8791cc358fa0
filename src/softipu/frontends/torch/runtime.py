"""``inference_model``: a torch module as a callable that runs on a simulated IPU.

The first call (or ``compile``) exports the module, checks every op has a lowering, lowers it,
compiles an ``Engine`` and loads the weights once; later calls only stream inputs in and outputs
out. Outputs come back as torch tensors in the module's own structure (tensor, tuple, dict,
dataclass or HuggingFace ``ModelOutput``). ``export(path, *inputs)`` writes a compiled signature
to a directory and ``load_executable(path)`` loads it into a model of the same module and options
without compiling (PopTorch's ``compileAndExport`` and ``loadExecutable``).

>>> import torch, softipu as sp, softipu.torch as st
>>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU())
>>> model = st.inference_model(net, st.Options(target=sp.targets.ipu_model(tiles=4)))
>>> x = torch.randn(2, 4)
>>> torch.allclose(model(x), net(x), rtol=1e-4, atol=1e-6)
True
>>> model.cycle_count > 0
True
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.fx.traceback as fx_traceback
from torch.utils import _pytree as pytree

from softipu.compiler.executable import Executable
from softipu.engine import Engine
from softipu.engine.engine import collector_paused
from softipu.errors import SoftIPUError
from softipu.frontends.defaults import engine_options as frontend_engine_options
from softipu.frontends.errors import ExportError, FrontendError, InputError
from softipu.frontends.torch.cache import ExecutableCache, export_compiled, load_exported
from softipu.frontends.torch.custom_ops import NAME_SCOPES, connect_host_calls
from softipu.frontends.torch.export import check_supported, export_program
from softipu.frontends.torch.lower import Lowered, StreamSlot, host_values, lower_program, to_host_array
from softipu.frontends.torch.options import Options, OutputMode, warn_unused
from softipu.frontends.torch.pipeline import stage_errors
from softipu.frontends.torch.replicas import input_slices
from softipu.log import progress_stage, progress_task
from softipu.profile import Report

__all__ = ["InferenceModel", "inference_model", "logger", "unpack_output"]

logger = logging.getLogger("softipu.torch")


@dataclass(frozen=True, slots=True)
class _Leaf:
    """One flattened input as compiled: a tensor's shape and dtype, or a constant's value."""

    name: str
    shape: tuple[int, ...] | None  # None: not a tensor
    dtype: torch.dtype | None
    value: Any = None

    def describe(self) -> str:
        if self.shape is None:
            return f"{self.name}={self.value!r}"
        return f"{self.name}: {str(self.dtype).replace('torch.', '')}{list(self.shape)}"


def _leaf_of(name: str, value: Any) -> _Leaf:
    if isinstance(value, torch.Tensor):
        return _Leaf(name, tuple(int(d) for d in value.shape), value.dtype)
    try:
        hash(value)
    except TypeError:  # an unhashable constant (a custom object): matched by its repr
        value = repr(value)
    return _Leaf(name, None, None, value)


def _plain(value: Any) -> Any:
    """``value`` with mappings pytree does not know (an ``OrderedDict`` subclass, a ``UserDict``)
    as plain dicts, in their order, so any nesting of them flattens."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, Mapping) and type(value) not in pytree.SUPPORTED_NODES:
        return {k: _plain(v) for k, v in value.items()}
    if type(value) in (list, tuple, dict):
        items = value.items() if isinstance(value, dict) else None
        return (type(value)((k, _plain(v)) for k, v in items) if items is not None
                else type(value)(_plain(v) for v in value))
    return value


def _reorder(value: Any, template: Any) -> Any:
    """``value`` with its dicts' keys in ``template``'s order where they hold the same keys (a
    later call passing a dict in another order matches the compiled model, as in PopTorch)."""
    if isinstance(value, dict) and isinstance(template, dict) and set(value) == set(template):
        return type(value)((k, _reorder(value[k], template[k])) for k in template)
    if type(value) in (list, tuple) and type(template) is type(value) and len(value) == len(template):
        return type(value)(_reorder(v, t) for v, t in zip(value, template, strict=True))
    return value


class _Compiled:
    """One compiled signature: its lowered graph, its engine, and how to stream a call."""

    def __init__(self, lowered: Lowered, out_spec: Any, options: Options, leaves: tuple[_Leaf, ...],
                 executable: Executable | None = None) -> None:
        self.lowered = lowered
        self.out_spec = out_spec
        self.options = options
        self.leaves = leaves
        self.weights = list(lowered.weights)  # what the device holds: (stream, host values or HostWeight)
        engine_options = frontend_engine_options(options.engine_options)
        if executable is None:
            with stage_errors(lowered):  # an IPU out of memory names its pipeline stage (PopTorch blocks)
                self.engine = Engine(lowered.graph, list(lowered.programs), options=engine_options)
        else:  # loaded from the executable cache: lowered.graph is the loaded skeleton
            self.engine = Engine.from_executable(executable, lowered.graph, options=engine_options)
        connect_host_calls(self.engine, lowered.graph, options.replication_factor)
        self.skeleton: Any = None  # the inputs' structure, tensors as None (dict key order)
        self.mutated: list[tuple[str, str, torch.Tensor]] = []  # the last run's in-place changes
        self.extra: dict[str, tuple[StreamSlot, int]] = {}  # streams a lowered_hook added: (slot, turns)
        self.extra_out: dict[str, np.ndarray] = {}  # their last run's (replicas, turns, elements)

    def load_weights(self, weights: Sequence[tuple[str, Any]] | None = None) -> None:
        """Run the load program (program 0) on ``weights`` (default: the current ones): host arrays
        or lowered :class:`~softipu.frontends.torch.lower.HostWeight` values."""
        # Lowered weights are converted here, on their first load, and kept as the device's copy.
        self.weights = [(stream, host_values(values))
                        for stream, values in (self.weights if weights is None else weights)]
        for stream, values in self.weights:
            for r in range(self.options.replication_factor):
                self.engine.connect_stream(stream, values, replica=r)
        self.engine.run(0)

    def run(self, values: list[Any]) -> Any:
        opts = self.options
        di, rf = opts.device_iterations, opts.replication_factor
        for slot, value in zip(self.lowered.inputs, values, strict=True):
            if slot is None or math.prod(slot.shape) == 0:
                continue
            host = to_host_array(value, slot.dtype, f"input {slot.name!r}", InputError).reshape(
                di, rf // opts.input_group_size, -1)  # a replica group shares its slice
            for r, i in enumerate(input_slices(opts)):
                self.engine.connect_stream(slot.stream, np.ascontiguousarray(host[:, i]), replica=r)
        turns = 1 if opts.output_mode is OutputMode.FINAL else di
        buffers: list[np.ndarray | None] = []
        for slot in self.lowered.outputs:
            size = math.prod(slot.shape) if isinstance(slot, StreamSlot) else 0
            if size == 0:
                buffers.append(None)
                continue
            buf = np.empty((rf, turns, size), slot.dtype.numpy)
            for r in range(rf):
                self.engine.connect_stream(slot.stream, buf[r], replica=r)
            buffers.append(buf)
        changed = []
        for kind, target, slot in self.lowered.mutations:  # every iteration's value
            buf = np.empty((rf, di, math.prod(slot.shape)), slot.dtype.numpy)
            for r in range(rf):
                self.engine.connect_stream(slot.stream, buf[r], replica=r)
            changed.append((kind, target, slot, buf))
        self.extra_out = connect_extra(self.engine, self.extra, rf)
        self.engine.run(1)
        every = opts.replace(output_mode=OutputMode.ALL) if changed else opts  # a copy only when used
        self.mutated = [(kind, target, unpack_output(slot, buf, every) if kind == "input" else
                         torch.from_numpy(buf[0, -1].reshape(slot.shape)).to(slot.torch_dtype))
                        for kind, target, slot, buf in changed]
        leaves = [self._output(slot, buf) for slot, buf in zip(self.lowered.outputs, buffers, strict=True)]
        return pytree.tree_unflatten(leaves, self.out_spec)

    def _output(self, slot: Any, buf: np.ndarray | None) -> Any:
        return unpack_output(slot, buf, self.options)

    @property
    def cycles(self) -> int:
        # the last run of program 1, looked for from the end (the log holds every call's run)
        last = next((cycles for index, cycles in reversed(self.engine.log.runs) if index == 1), None)
        if last is None:
            return 0
        plan = self.lowered.extra.get("pipeline")  # PopTorch blocks' strategy priced
        return plan.summary(self.engine.executable, int(last))["cycles"] if plan else int(last)


def connect_extra(engine: Engine, extra: Mapping[str, tuple[StreamSlot, int]],
                  rf: int) -> dict[str, np.ndarray]:
    """Host buffers ``(replicas, turns, elements)`` connected to extra device-to-host streams."""
    out = {}
    for name, (slot, turns) in extra.items():
        out[name] = buf = np.zeros((rf, turns, int(np.prod(slot.shape))), slot.dtype.numpy)
        if buf.size:
            for r in range(rf):
                engine.connect_stream(slot.stream, buf[r], replica=r)
    return out


def unpack_output(slot: Any, buf: np.ndarray | None, opts: Options) -> Any:
    """One flat output as the user gets it: a constant as is, a streamed one from its
    ``(replicas, turns, elements)`` host buffer by the output mode (Sum adds the turns, EveryN keeps
    every N-th), micro-batches concatenated along dim 0 in PopTorch's order."""
    if not isinstance(slot, StreamSlot):
        return slot
    rf = opts.replication_factor
    if buf is None:
        buf = np.zeros((rf, 1, 0), slot.dtype.numpy)
    if opts.output_mode is OutputMode.SUM:
        buf = buf.sum(axis=1, keepdims=True, dtype=buf.dtype)
    elif opts.output_mode is OutputMode.EVERY_N:
        buf = buf[:, opts.output_return_period - 1::opts.output_return_period]
    turns = buf.shape[1]
    data = buf.transpose(1, 0, 2)  # (iterations, replicas, elements): the batch order
    if turns * rf == 1:
        data = data.reshape(slot.shape)
    elif slot.shape:
        data = data.reshape((turns * rf * slot.shape[0],) + slot.shape[1:])
    else:
        data = data.reshape(turns * rf)
    # A fresh buffer of this call (the callers make one per call): copied only where not C-ordered
    data = data if data.flags.c_contiguous else np.array(data, order="C")  # keeps 0-d
    return torch.from_numpy(data).to(slot.torch_dtype)


class InferenceModel:
    """A torch module compiled for a simulated IPU; call it like the module.

    Attributes after the first call: ``report`` (:class:`softipu.Report`), ``cycle_count``
    (modeled cycles of the last call), ``compile_seconds`` (export, lower, compile, load),
    ``engine`` and ``graph``.
    """

    def __init__(self, module: torch.nn.Module, options: Options | None = None) -> None:
        if not isinstance(module, torch.nn.Module):
            raise FrontendError(f"inference_model needs a torch.nn.Module, got {type(module).__name__}")
        options = Options() if options is None else options
        if not isinstance(options, Options):
            raise FrontendError(f"options must be softipu.torch.Options, got {type(options).__name__}")
        options.warn_unused()
        inert = [n for n, on in (("recomputation", options.recomputation != "none"),
                                 ("tensor_locations", bool(options.tensor_locations))) if on]
        if inert:  # PopART applies both to training graphs only
            warn_unused([f"{n} (for training: an inference model keeps no activations for a backward "
                         "and has no optimizer state)" for n in inert])
        self.module = module
        self.options = options
        self.compile_seconds: dict[str, float] = {}
        self._compiled: dict[tuple, _Compiled] = {}
        self._current: _Compiled | None = None
        self._attached = True
        self._arg_names = _positional_names(module)
        self._forward_sig: tuple[Any, inspect.Signature] | None = None  # (forward's function, its signature)
        self._buffers: dict[str, torch.Tensor] = {}  # buffers the device changed, by name
        # Run on each new lowering before its engine is made: returns the lowering to compile and
        # the device-to-host streams it added, {name: (slot, turns per run)} (PopTorch's anchors).
        self.lowered_hook: Any = None

    # -- calling ----------------------------------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        compiled, values = self._prepare(args, kwargs)
        if not self._attached:
            self.attach()
        out = compiled.run(values)
        self._write_back(compiled, values)
        if self.options.log_cycle_count and logger.isEnabledFor(logging.INFO):
            logger.info("%s: %d cycles (%.3g ms at %.0f MHz)", self._label, compiled.cycles,
                        1e3 * compiled.cycles / self.options.target.clock_hz,
                        self.options.target.clock_hz / 1e6)
        return out

    def compile(self, *args: Any, **kwargs: Any) -> None:
        """Export, lower, compile and load for these inputs without running (PopTorch's ``compile``)."""
        self._prepare(args, kwargs)

    def _write_back(self, compiled: _Compiled, values: list[Any]) -> None:
        """In-place changes the model made: to the caller's input tensors now (as PopTorch does);
        buffers' kept for :meth:`copy_buffers_to_host` (the device keeps them for the next call)."""
        for kind, target, value in compiled.mutated:
            if kind == "input":
                with torch.no_grad():
                    values[int(target)].copy_(value)
            else:
                self._buffers[target] = value

    def _bind(self, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """The call's inputs as forward's parameters in order, defaults filled in: the same inputs
        passed by position or keyword, or left to their defaults, match the same compiled model
        (PopTorch matches inputs by position)."""
        try:
            sig = self._signature()
            bound = sig.bind(*args, **kwargs)
        except TypeError as exc:
            given = ", ".join([_leaf_of(f"input {i}", a).describe() for i, a in enumerate(args)]
                              + [_leaf_of(k, v).describe() for k, v in kwargs.items()])
            was = "" if self._current is None else (
                f"{self._label} was compiled for inputs "
                f"({', '.join(x.describe() for x in self._current.leaves)}); ")
            raise InputError(f"{was}{self._label}.forward cannot take ({given}): {exc}") from None
        except ValueError:  # no signature to read (a builtin): taken as given
            return tuple(args), dict(kwargs)
        bound.apply_defaults()
        positional: list[Any] = []
        named: dict[str, Any] = {}
        for name, p in sig.parameters.items():
            value = bound.arguments[name]
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
                positional.append(value)
            elif p.kind == p.VAR_POSITIONAL:
                positional.extend(value)
            elif p.kind == p.KEYWORD_ONLY:
                named[name] = value
            else:
                named.update(value)
        return tuple(positional), named

    def _signature(self) -> inspect.Signature:
        """forward's signature, read again only when ``module.forward`` is another function."""
        forward = self.module.forward
        func = getattr(forward, "__func__", forward)
        if self._forward_sig is None or self._forward_sig[0] is not func:
            self._forward_sig = (func, inspect.signature(forward))
        return self._forward_sig[1]

    def _prepare(self, args: tuple, kwargs: dict) -> tuple[_Compiled, list[Any]]:
        args, kwargs = _plain(self._bind(args, kwargs))
        if self._current is not None:
            args, kwargs = _reorder((args, kwargs), self._current.skeleton)
        flat, spec = pytree.tree_flatten_with_path((tuple(args), dict(kwargs)))
        names = [self._name(path) for path, _ in flat]
        values = [v for _, v in flat]
        leaves = tuple(_leaf_of(n, v) for n, v in zip(names, values, strict=True))
        for leaf in leaves:
            self._check_batch(leaf)
        key = (str(spec), leaves)
        compiled = self._compiled.get(key)
        if compiled is None:
            if self._current is not None:
                self._check_against(self._current.leaves, leaves)
            # Python's cyclic collector held off over the whole compile: export, lowering and
            # compile make millions of objects that live on, and each full collection while they
            # pile up walks them all (BERT-base 4 layers: 4 collections, 0.68 s of a 3.9 s first
            # call, against 0.13 s for the one owed afterwards; peak memory the same).
            with progress_task(self._label, ("export", "lower", "compile", "load")), collector_paused():
                compiled = self._compile(args, kwargs, leaves)
            compiled.skeleton = pytree.tree_map(lambda v: None if isinstance(v, torch.Tensor) else v,
                                                (tuple(args), dict(kwargs)))
            self._compiled[key] = compiled
        self._current = compiled  # each signature's engine keeps its own weights
        return compiled, values

    def _check_batch(self, leaf: _Leaf) -> None:
        per_call = self.options.batches_per_call
        if per_call == 1 or leaf.shape is None:
            return
        if not leaf.shape or leaf.shape[0] % per_call:
            raise InputError(
                f"input {leaf.name!r} has shape {list(leaf.shape)}; with device_iterations="
                f"{self.options.device_iterations} and replication_factor={self.options.replication_factor} "
                f"every input's dim 0 must be a multiple of {per_call} (device_iterations x "
                "replication_factor x micro-batch)")

    def _check_against(self, old: tuple[_Leaf, ...], new: tuple[_Leaf, ...]) -> None:
        """Raise for calls that cannot match the compiled model; log a recompile for new shapes."""
        if [leaf.name for leaf in old] != [leaf.name for leaf in new]:
            raise InputError(f"{self._label} was compiled for inputs "
                             f"({', '.join(x.describe() for x in old)}) but was called with "
                             f"({', '.join(x.describe() for x in new)})")
        for a, b in zip(old, new, strict=True):
            if (a.shape is None) != (b.shape is None):
                raise InputError(f"input {b.name!r} was {'not ' if a.shape is None else ''}a tensor when "
                                 f"{self._label} was compiled ({a.describe()}); got {b.describe()}")
            if a.dtype != b.dtype:
                raise InputError(f"input {b.name!r} is {b.dtype} but {self._label} was compiled for "
                                 f"{a.dtype}; convert it with .to({a.dtype})")
        changed = [f"{a.describe()} -> {list(b.shape) if b.shape is not None else repr(b.value)}"
                   for a, b in zip(old, new, strict=True) if a != b]
        if not self.options.recompile_on_shape_change:
            raise InputError(f"{self._label} was compiled for other inputs: {'; '.join(changed)} "
                             "(Options(recompile_on_shape_change=True) compiles again instead)")
        logger.warning("%s: inputs changed (%s); compiling again", self._label, "; ".join(changed))

    def _compile(self, args: tuple, kwargs: dict, leaves: tuple[_Leaf, ...]) -> _Compiled:
        cache = ExecutableCache.for_options(self.options)
        key, cache_seconds = None, 0.0
        if cache is not None:
            start = time.perf_counter()
            key = cache.key(self.module, (tuple(args), dict(kwargs)), leaves, self.options)
            hit = cache.load(key, self.module)
            cache_seconds = time.perf_counter() - start
            if hit is not None:
                return self._from_cache(hit, leaves, cache_seconds)
        times: dict[str, float] = {}
        start = time.perf_counter()
        margs, mkwargs = self._micro_batch(args, kwargs)
        ep = _export(self.module, margs, mkwargs)
        check_supported(ep.graph)
        times["export"] = time.perf_counter() - start
        progress_stage("lower")
        t = time.perf_counter()
        lowered = lower_program(ep, self.options, [leaf.name for leaf in leaves])
        lowered, extra = self.lowered_hook(lowered) if self.lowered_hook is not None else (lowered, {})
        times["lower"] = time.perf_counter() - t
        progress_stage("compile")
        t = time.perf_counter()
        compiled = _Compiled(lowered, ep.call_spec.out_spec, self.options, leaves)
        compiled.extra = extra
        times["compile"] = time.perf_counter() - t
        progress_stage("load")
        t = time.perf_counter()
        compiled.load_weights()
        times["load"] = time.perf_counter() - t
        if cache is not None:
            t = time.perf_counter()
            cache.store(key, self.module, compiled.engine.executable, lowered, ep.call_spec.out_spec)
            times["cache"] = cache_seconds + time.perf_counter() - t  # key, lookup and store
        self.compile_seconds = times
        logger.info("%s: compiled %d ops for %s in %.2f s (%s)", self._label, lowered.nodes,
                    self.options.target.name, sum(times.values()),
                    ", ".join(f"{k} {v:.2f} s" for k, v in times.items()))
        return compiled

    def _from_cache(self, hit: Any, leaves: tuple[_Leaf, ...], seconds: float,
                    source: str = "the executable cache", step: str = "cache_load") -> _Compiled:
        """A compiled signature from an executable cache hit (or an export): no export, lowering or
        compiling. ``step`` names the loading time in ``compile_seconds``."""
        t = time.perf_counter()
        compiled = _Compiled(hit.lowered, hit.out_spec, self.options, leaves, executable=hit.executable)
        times = {step: seconds + time.perf_counter() - t}
        t = time.perf_counter()
        compiled.load_weights()
        times["load"] = time.perf_counter() - t
        self.compile_seconds = times
        logger.info("%s: loaded %d ops for %s from %s in %.2f s", self._label, hit.lowered.nodes,
                    self.options.target.name, source, sum(times.values()))
        return compiled

    # -- exported executables ---------------------------------------------------------------------
    def export(self, path: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        """Compile for these inputs (unless compiled already) and write the executable to the
        directory ``path``. The module is not saved (softipu never pickles): build it again in code
        and call :meth:`load_executable` on a model of it with the same options.

        >>> import tempfile, torch, softipu as sp, softipu.torch as st
        >>> opts, path = st.Options(target=sp.targets.ipu_model(tiles=4)), tempfile.mkdtemp() + "/net"
        >>> net, x = torch.nn.Linear(4, 3), torch.randn(2, 4)
        >>> st.inference_model(net, opts).export(path, x)
        >>> loaded = st.inference_model(net, opts); loaded.load_executable(path)
        >>> torch.allclose(loaded(x), net(x), atol=1e-6), sorted(loaded.compile_seconds)
        (True, ['executable_load', 'load'])
        """
        compiled, _ = self._prepare(args, kwargs)
        structure, leaves = next(key for key, c in self._compiled.items() if c is compiled)
        nbytes = export_compiled(path, self.module, self.options, structure, leaves,
                                 compiled.engine.executable, compiled.lowered, compiled.out_spec)
        logger.info("%s: exported %d ops to %s (%.1f MB)", self._label, compiled.lowered.nodes, path,
                    nbytes / 1e6)

    def load_executable(self, path: str | os.PathLike) -> None:
        """Load what :meth:`export` wrote, with the module's current weights, checking it was
        exported from this module's code, parameters and options (an error names what differs).
        Calls with the exported inputs' shapes then run it; nothing is compiled."""
        start = time.perf_counter()
        exported = load_exported(path, self.module, self.options)
        leaves = tuple(_Leaf(*record) for record in exported.leaves)
        try:
            compiled = self._from_cache(exported.model, leaves, time.perf_counter() - start,
                                        source=str(path), step="executable_load")
        except SoftIPUError:
            raise
        except Exception as exc:  # noqa: BLE001 - a damaged file the format checks let through
            raise FrontendError(f"cannot load {path}: {type(exc).__name__}: {exc}; export the model "
                                "again") from exc
        self._compiled[(exported.structure, leaves)] = compiled
        self._current = compiled
        self._attached = True

    def _micro_batch(self, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        per_call = self.options.batches_per_call
        if per_call == 1:
            return args, kwargs

        def first(v: Any) -> Any:
            return v[: v.shape[0] // per_call] if isinstance(v, torch.Tensor) else v
        return pytree.tree_map(first, (tuple(args), dict(kwargs)))

    def _name(self, path: tuple) -> str:
        """A readable name for a flattened input: the forward argument's name, then any keys."""
        if len(path) < 2:
            return pytree.keystr(path)
        top, key = path[0], path[1]
        if getattr(top, "idx", None) == 0:
            i = key.idx
            base = self._arg_names[i] if i < len(self._arg_names) else f"input {i}"
        else:
            base = str(getattr(key, "key", key))
        return base + pytree.keystr(path[2:])

    @property
    def _label(self) -> str:
        return type(self.module).__name__

    # -- results and state ----------------------------------------------------------------------------
    def _need(self, what: str) -> _Compiled:
        if self._current is None:
            raise FrontendError(f"{what}: {self._label} has not been compiled yet; call it (or "
                                ".compile(*inputs)) first")
        return self._current

    @property
    def report(self) -> Report:
        """Memory and cycles of the compiled model and everything it ran (``softipu.Report``)."""
        return self._need("report").engine.report

    @property
    def cycle_count(self) -> int:
        """Modeled cycles of the last call (0 before any call ran)."""
        return self._need("cycle_count").cycles

    @property
    def engine(self) -> Engine:
        return self._need("engine").engine

    @property
    def graph(self) -> Any:
        return self._need("graph").lowered.graph

    @property
    def lowered(self) -> Lowered:
        return self._need("lowered").lowered

    def copy_weights_to_device(self, buffers_only: bool = False) -> None:
        """Write the module's current parameters and buffers (only its buffers if
        ``buffers_only``) to the device again (to every compiled signature's engine)."""
        self._need("copy_weights_to_device")
        state = dict(self.module.named_buffers())
        if not buffers_only:
            state |= dict(self.module.named_parameters())
        for compiled in self._compiled.values():
            fresh = []
            for stream, values in compiled.weights:
                t = state.get(stream.removeprefix("weights/"))
                if t is not None:
                    dtype = compiled.lowered.graph.streams[stream].dtype
                    values = to_host_array(t, dtype, f"weight {stream.removeprefix('weights/')!r}",
                                           InputError).reshape(-1)
                fresh.append((stream, values))
            compiled.load_weights(fresh)

    def copy_buffers_to_host(self) -> None:
        """Write the buffers the model changed on the device (``self.count += 1`` in forward) into
        the module's buffers: their values after the last call."""
        if not self._buffers:
            return
        buffers = dict(self.module.named_buffers())
        with torch.no_grad():
            for name, value in self._buffers.items():
                if name in buffers:
                    buffers[name].copy_(value)

    def detach(self) -> None:
        """Release the (simulated) device; the next call attaches again and reloads the weights."""
        self._need("detach")
        self._attached = False

    def attach(self) -> None:
        compiled = self._need("attach")
        if not self._attached:
            compiled.load_weights()
            self._attached = True

    @property
    def is_attached(self) -> bool:
        return self._current is not None and self._attached

    def destroy(self) -> None:
        """Drop every compiled executable; the next call compiles again."""
        self._compiled.clear()
        self._current = None
        self._attached = True

    def __repr__(self) -> str:
        state = "not compiled" if self._current is None else f"{self._current.lowered.nodes} ops"
        return f"InferenceModel({self._label}, {self.options.target.name}, {state})"


def _export(module: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
    """``export_program``, keeping node annotations (``poptorch.NameScope``) once a name scope has
    been used in this process (a model that enters one is exported again, keeping them)."""
    before = NAME_SCOPES[0]
    if not before:
        ep = export_program(module, args, kwargs)
        if NAME_SCOPES[0] == before:
            return ep
    try:
        with fx_traceback.preserve_node_meta():
            return export_program(module, args, kwargs)
    except ExportError as exc:  # NOTE: torch.cond's capture trips on kept annotations (torch 2.13)
        if "custom metadata" not in str(exc):
            raise
        return export_program(module, args, kwargs)


def _positional_names(module: torch.nn.Module) -> list[str]:
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def inference_model(module: torch.nn.Module, options: Options | None = None) -> InferenceModel:
    """``module`` compiled for a simulated IPU on first call; see :class:`InferenceModel`.

    The module is exported in eval mode (its training flag is restored afterwards) and its
    parameters are copied to the device once; call ``copy_weights_to_device()`` after changing
    them.
    """
    return InferenceModel(module, options)
