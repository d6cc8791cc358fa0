"""``training_model``: a torch module and an optimizer as a callable training step on a simulated IPU.

The first call traces forward and backward (:mod:`.joint`), lowers them with the optimizer's
update (:mod:`.lowering`), compiles one ``Engine`` and writes the weights, the optimizer state and
its variable hyper-parameters into device variables. Each call then streams a host batch in and
runs ``device_iterations`` optimizer steps (each over ``gradient_accumulation`` micro-batches).

Weights live in both places as in PopTorch: after a step the host copy is stale ("dirty") and is
copied back when the module's parameters, buffers or ``state_dict`` are read (or on
``copy_weights_to_host``); edits made on the host need ``copy_weights_to_device``. A step that
fails leaves the device weights and optimizer state as they were before it.
"""

from __future__ import annotations

import copyreg
import time
import weakref
from typing import Any

import numpy as np
import torch
from torch.utils import _pytree as pytree

from softipu.engine import Engine
from softipu.errors import SoftIPUError
from softipu.frontends.defaults import engine_options as frontend_engine_options
from softipu.frontends.errors import FrontendError, InputError
from softipu.frontends.torch.lower import StreamSlot, to_host_array
from softipu.frontends.torch.options import Options, OutputMode
from softipu.frontends.torch.replicas import input_slices
from softipu.frontends.torch.runtime import _positional_names, connect_extra, logger, unpack_output
from softipu.frontends.torch.training.joint import joint_graph
from softipu.frontends.torch.training.locations import check_exportable, read_state, write_state
from softipu.frontends.torch.training.lowering import TrainLowered, lower_training
from softipu.frontends.torch.training.offload import read_weight, write_weight
from softipu.frontends.torch.training.pipeline import keep_annotations, placed_summary, stage_errors
from softipu.frontends.torch.training.recompute import recompute
from softipu.frontends.torch.training.replication import per_replica, replica_view
from softipu.frontends.torch.training.rollback import Rollback
from softipu.log import progress_stage, progress_task

__all__ = ["TrainingModel", "training_model", "optimizer_spec"]


def optimizer_spec(optimizer: Any, named: dict[str, torch.nn.Parameter], **kwargs: Any) -> Any:
    """The optimizer's device description (``softipu.frontends.torch.optim.optimizer_spec``)."""
    from softipu.frontends.torch.optim import optimizer_spec as spec  # noqa: PLC0415 - optional module

    return spec(optimizer, named, **kwargs)


def default_optimizer(module: torch.nn.Module) -> Any:
    """PopTorch's default: ``poptorch.optim.SGD(lr=0.01)``."""
    from softipu.frontends.torch import optim  # noqa: PLC0415 - poptorch.optim's definitions

    return optim.SGD(module.parameters(), lr=0.01)


class TrainingModel:
    """A module and its optimizer compiled as one training step; call it with a host batch.

    Attributes after the first call: ``report``, ``cycle_count`` (cycles of the last call),
    ``compile_seconds`` (export, lower, compile, load), ``engine``, ``lowered`` and
    :meth:`summary` (memory and cycles split by role and phase).
    """

    def __init__(self, module: torch.nn.Module, optimizer: Any = None,
                 options: Options | None = None) -> None:
        if not isinstance(module, torch.nn.Module):
            raise FrontendError(f"training_model needs a torch.nn.Module, got {type(module).__name__}")
        options = Options() if options is None else options
        if not isinstance(options, Options):
            raise FrontendError(f"options must be softipu.torch.Options, got {type(options).__name__}")
        options.warn_unused()
        if options.serial_loops is None:  # every step runs on the host: unrolled splits run as chains
            options = options.replace(serial_loops=False)
        self.module = module
        self.options = options
        self.optimizer = optimizer if optimizer is not None else default_optimizer(module)
        self.compile_seconds: dict[str, float] = {}
        self._check_optimizer(self.optimizer)
        self._lowered: TrainLowered | None = None
        self._engine: Engine | None = None
        self._rollback: Rollback | None = None  # the step's in-place targets, saved before it
        self._spec: Any = None
        self._leaves: tuple | None = None
        self._in_spec: Any = None
        self._out_spec: Any = None
        self._dirty = False  # the device holds newer weights than the module
        self._hyper_written: dict[str, float] = {}
        self._attached = True
        self._arg_names = _positional_names(module)
        self.lowered_hook: Any = None  # as InferenceModel's (runtime.py): PopTorch's anchors
        self._extra: dict[str, Any] = {}
        self.extra_out: dict[str, np.ndarray] = {}
        _LiveModule.wrap(module, self)

    # -- checks --------------------------------------------------------------------------------------
    @property
    def _label(self) -> str:
        return type(self.module).__name__

    def _named_trainable(self) -> dict[str, torch.nn.Parameter]:
        named = _raw(self.module, "named_parameters")(remove_duplicate=False)
        return {n: p for n, p in named if p.requires_grad}

    def _check_optimizer(self, optimizer: Any) -> None:
        groups = getattr(optimizer, "param_groups", None)
        if groups is None:
            raise FrontendError(f"optimizer must be a poptorch.optim or torch.optim optimizer, got "
                                f"{type(optimizer).__name__}")
        own = {id(p) for _, p in _raw(self.module, "named_parameters")(remove_duplicate=False)}
        foreign = [tuple(p.shape) for g in groups for p in g["params"] if id(p) not in own]
        if foreign:
            raise FrontendError(
                f"the optimizer holds {len(foreign)} parameter(s) that are not {self._label}'s (shapes "
                f"{foreign[:4]}): build it from this module's parameters, e.g. "
                f"poptorch.optim.SGD(model.parameters(), lr=...)")

    def _check_batch(self, leaves: list[tuple[str, Any]]) -> None:
        o = self.options
        per_call = o.batches_per_call * o.gradient_accumulation
        for name, v in leaves:
            if isinstance(v, torch.Tensor) and per_call > 1 and (v.ndim == 0 or v.shape[0] % per_call):
                size = v.shape[0] if v.ndim else 0
                raise InputError(
                    f"Model input {name!r} has batch size {size}, which is not divisible by the product of "
                    f"deviceIterations ({o.device_iterations}) x replicationFactor ({o.replication_factor}) "
                    + (f"/ input group size ({o.input_group_size}) " if o.input_group_size > 1 else "")
                    + f"x gradientAccumulation ({o.gradient_accumulation}) = {per_call}: give each call a "
                    f"multiple of {per_call} samples (poptorch.DataLoader batches this way)")

    # -- compiling -----------------------------------------------------------------------------------
    def compile(self, *args: Any, **kwargs: Any) -> None:
        """Trace, lower, compile and load for these inputs without running a step."""
        self._prepare(args, kwargs)

    def _prepare(self, args: tuple, kwargs: dict) -> list[Any]:
        flat, spec = pytree.tree_flatten_with_path((tuple(args), dict(kwargs)))
        leaves = [(self._input_name(p), v) for p, v in flat]
        self._check_batch(leaves)
        sig = tuple((n, tuple(v.shape), v.dtype) if isinstance(v, torch.Tensor) else (n, v)
                    for n, v in leaves)
        if self._lowered is None:
            with progress_task(self._label, ("export", "lower", "compile", "load")):
                self._compile(args, kwargs, sig)
        elif sig != self._leaves or str(spec) != str(self._in_spec):
            raise InputError(f"{self._label} was compiled for inputs {self._leaves} but was called with "
                             f"{sig}; a training model keeps one input signature (destroy() and compile "
                             "again for another)")
        return [v for _, v in leaves]

    def _input_name(self, path: tuple) -> str:
        """The forward argument's name (then any keys) of a flattened input."""
        if len(path) < 2:
            return pytree.keystr(path)
        if getattr(path[0], "idx", None) == 0:
            i = path[1].idx
            base = self._arg_names[i] if i < len(self._arg_names) else f"input {i}"
        else:
            base = str(getattr(path[1], "key", path[1]))
        return base + pytree.keystr(path[2:])

    def _micro(self, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        o = self.options
        per_call = o.batches_per_call * o.gradient_accumulation
        if per_call == 1:
            return args, kwargs
        return pytree.tree_map(lambda v: v[: v.shape[0] // per_call] if isinstance(v, torch.Tensor) else v,
                               (tuple(args), dict(kwargs)))

    def _compile(self, args: tuple, kwargs: dict, sig: tuple) -> None:
        times: dict[str, float] = {}
        start = time.perf_counter()
        margs, mkwargs = self._micro(args, kwargs)
        named = self._named_trainable()
        if not named:
            raise FrontendError(f"{self._label} has no parameter that requires grad: there is nothing "
                                "to train. Set requires_grad=True on the parameters to train, or use "
                                "inferenceModel")
        auto = {"auto_loss_scaling": True} if self.options.auto_loss_scaling else {}
        spec = optimizer_spec(self.optimizer, named, **auto)
        scaled = spec.loss_scaling != 1.0 or spec.loss_scaling_variable
        was_training = self.module.training
        self.module.train(True)
        try:
            with keep_annotations():  # PopTorch blocks and name scopes reach the joint graph's nodes
                joint = joint_graph(self.module, margs, mkwargs, scaled)
        finally:
            self.module.train(was_training)
        joint = recompute(joint, self.options.recomputation, self._label)
        times["export"] = time.perf_counter() - start
        progress_stage("lower")
        t = time.perf_counter()
        flat = pytree.tree_flatten_with_path((tuple(margs), dict(mkwargs)))[0]
        names = [self._input_name(n) for n, _ in flat]
        every = dict(_raw(self.module, "named_parameters")(remove_duplicate=False))
        lowered = lower_training(joint, spec, self.options, names, every)
        lowered, self._extra = self.lowered_hook(lowered) if self.lowered_hook is not None else (lowered, {})
        times["lower"] = time.perf_counter() - t
        progress_stage("compile")
        t = time.perf_counter()
        with stage_errors(lowered):  # an IPU out of memory names its pipeline stage
            engine = Engine(lowered.graph, list(lowered.programs),
                            options=self._engine_options())
        times["compile"] = time.perf_counter() - t
        progress_stage("load")
        t = time.perf_counter()
        self._lowered, self._engine, self._spec = lowered, engine, spec
        self._leaves, self._out_spec = sig, joint.out_spec
        self._in_spec = pytree.tree_flatten((tuple(args), dict(kwargs)))[1]
        self._write_weights()
        self._write_state(fresh=True)
        self._write_hyper(force=True)
        self._bind_optimizer(self.optimizer)
        self._upload_optimizer_state()
        for stream, values in lowered.seed_weights:
            engine.connect_stream(stream, values)
        engine.run(0)
        times["load"] = time.perf_counter() - t
        self.compile_seconds = times
        logger.info("%s: compiled a training step of %d ops for %s in %.2f s (%s)", self._label,
                    lowered.nodes, self.options.target.name, sum(times.values()),
                    ", ".join(f"{k} {v:.2f} s" for k, v in times.items()))

    # -- exported executables (PopTorch's compileAndExport / loadExecutable) ---------------------------
    def export(self, path: Any, *args: Any, **kwargs: Any) -> None:
        """Compile for these inputs (unless compiled already) and write the training step and the
        device state (weights, optimizer state, step counter) to the directory ``path``; never
        pickles. A training model of the same module code, options and optimizer loads it with
        :meth:`load_executable` and trains on from that state."""
        from softipu.frontends.torch.cache import InputRecord  # noqa: PLC0415
        from softipu.frontends.torch.training.export import export_training  # noqa: PLC0415

        if self._lowered is None or args or kwargs:
            self._prepare(args, kwargs)
        check_exportable(self._lowered, self._label)
        if not self._attached:
            self.attach()
        leaves = [InputRecord(s[0], s[1], s[2], None) if len(s) == 3 else InputRecord(s[0], None, None, s[1])
                  for s in self._leaves]
        nbytes = export_training(path, self, str(self._in_spec), leaves)
        logger.info("%s: exported a training step of %d ops to %s (%.1f MB)", self._label,
                    self._lowered.nodes, path, nbytes / 1e6)

    def load_executable(self, path: Any) -> None:
        """Load what :meth:`export` wrote: the compiled step and the device state saved with it (the
        module's parameters then read as those weights). The file must come from this module's
        code and parameter shapes, these options and an optimizer of the same structure and
        constants (an error names what differs); this optimizer's variable attributes (lr...) are
        used from the next call, as ``setOptimizer`` would. Nothing is compiled."""
        from softipu.frontends.torch.training.export import load_training  # noqa: PLC0415

        start = time.perf_counter()
        named = self._named_trainable()
        auto = {"auto_loss_scaling": True} if self.options.auto_loss_scaling else {}
        self._spec = optimizer_spec(self.optimizer, named, **auto)
        loaded = load_training(path, self)
        engine = Engine.from_executable(loaded.executable, loaded.lowered.graph,
                                        options=self._engine_options())
        times = {"executable_load": time.perf_counter() - start}
        t = time.perf_counter()
        low = loaded.lowered
        for stream, values in low.seed_weights:
            engine.connect_stream(stream, values)
        engine.run(0)
        for var, value in loaded.writes():
            engine.write_tensor(var, per_replica(np.asarray(value, var.dtype.numpy), var.shape,
                                                self.options.replication_factor))
        self._lowered, self._engine = low, engine
        self._leaves = tuple((r.name, r.shape, r.dtype) if r.shape is not None else (r.name, r.value)
                             for r in loaded.leaves)
        self._in_spec, self._out_spec = loaded.structure, loaded.out_spec
        self._hyper_written = dict(loaded.hyper_written)
        self._attached = True
        self._bind_optimizer(self.optimizer)
        self._dirty = True  # the module reads the loaded weights
        _LiveModule.bump(self.module)
        times["load"] = time.perf_counter() - t
        self.compile_seconds = times

    # -- device state --------------------------------------------------------------------------------
    def _write_weights(self) -> None:
        low, eng = self._need("copy_weights_to_device"), self._engine
        params = dict(_raw(self.module, "named_parameters")(remove_duplicate=False))
        buffers = dict(_raw(self.module, "named_buffers")(remove_duplicate=False))
        for name, var in low.params.items():  # on chip, or in Streaming Memory (training/offload.py)
            write_weight(eng, low, name, to_host_array(params[name], var.dtype, f"parameter {name!r}"))
        for name, var in low.buffers.items():
            eng.write_tensor(var, to_host_array(buffers[name], var.dtype, f"buffer {name!r}"))

    def _write_state(self, fresh: bool = False) -> None:
        """The optimizer's initial state and step 0; with ``fresh`` (an engine nothing has written
        yet, whose memory reads as zeros: engine/storage.py) an all-zero slot on chip is not
        written again (Adam's moments of an embedding table: ~0.5 s of a first call)."""
        low, eng = self._need("optimizer state"), self._engine
        plan = getattr(low, "locations", None)
        zeros = fresh and not eng.storage.poison
        for slot in self._spec.state:  # where the state lives: on chip, off chip, sharded (locations.py)
            key = (slot.param_name, slot.name)
            if zeros and (plan is None or key not in plan.remote) and _all_zero_bits(slot.initial):
                continue
            write_state(eng, low, key, np.broadcast_to(slot.initial, slot.shape))
        eng.write_tensor(low.step, np.zeros((), np.float32))

    def _write_hyper(self, force: bool = False) -> None:
        low, eng = self._need("optimizer"), self._engine
        values = self._spec.hyper_values(self.optimizer)
        for name, var in low.hyper.items():
            value = float(values[name])
            if force or self._hyper_written.get(name) != value:
                eng.write_tensor(var, np.asarray(value, var.dtype.numpy))
                self._hyper_written[name] = value

    def _bind_optimizer(self, optimizer: Any) -> None:
        """Back a poptorch optimizer's ``state_dict`` with the device state (PopTorch's protocol)."""
        if hasattr(optimizer, "ipu_state_source"):
            optimizer.ipu_state_source = self._optimizer_state_dict
            optimizer.host_state_is_dirty = self._lowered is not None

    def _optimizer_state_dict(self) -> dict[str, Any]:
        low, eng = self._need("optimizer state_dict"), self._engine
        rf = self.options.replication_factor  # replicas hold the same state: replica 0's
        values = {k: torch.from_numpy(read_state(eng, low, k)) for k in low.state}
        step = int(round(float(replica_view(eng.read_tensor(low.step), rf))))
        return self._spec.state_dict(values, self.optimizer, step)

    def _upload_optimizer_state(self) -> None:
        """Write a state loaded with ``optimizer.load_state_dict`` to the device."""
        opt = self.optimizer
        if not getattr(opt, "ipu_state_is_dirty", False):
            return
        low, eng = self._need("optimizer load_state_dict"), self._engine
        values, step = self._spec.load_state_dict(opt._ipu_state)
        for key, t in values.items():
            write_state(eng, low, key, t.detach().cpu().numpy())
        if step is not None:
            eng.write_tensor(low.step, np.asarray(step, np.float32))
        opt.ipu_state_is_dirty = False

    def _engine_options(self) -> dict:
        """The engine's options: a training step first touches several GB of host memory, which
        base pages make several times cheaper (engine ``host.hugePages``, :func:`host_pages`)
        than numpy's huge-page advice; the user's ``engine_options`` win."""
        return frontend_engine_options({"host.hugePages": False, **self.options.engine_options})

    def _snapshot(self) -> Rollback:
        """What the step writes in place, saved (:mod:`.rollback`); the spans are found once per engine."""
        low, eng = self._lowered, self._engine
        if self._rollback is None or self._rollback.engine is not eng:
            vars_ = [*low.params.values(), *low.buffers.values(), *low.state.values(), low.step]
            plan = getattr(low, "locations", None)  # the optimizer state in Streaming Memory too
            remote = list(plan.remote.values()) if plan is not None else []
            offload = getattr(low, "offload", None)  # and the weights kept there, or sharded
            remote += list(offload.weights.values()) if offload is not None else []
            vars_ += list(offload.fragments.values()) if offload is not None else []
            self._rollback = Rollback(eng, vars_ + remote)
        self._rollback.save()
        return self._rollback

    def copy_weights_to_host(self) -> None:
        """Copy the device's weights and buffers into the module (PopTorch's ``copyWeightsToHost``)."""
        if self._lowered is None or not self._dirty:
            return
        low, eng = self._lowered, self._engine
        self._dirty = False  # first: reading the module below must not copy again
        with torch.no_grad():
            params = dict(_raw(self.module, "named_parameters")(remove_duplicate=False))
            buffers = dict(_raw(self.module, "named_buffers")(remove_duplicate=False))
            rf = self.options.replication_factor  # replicas hold the same weights: replica 0's
            for name in low.params:
                _assign(params[name], replica_view(read_weight(eng, low, name), rf))
            for name, var in low.buffers.items():
                _assign(buffers[name], replica_view(eng.read_tensor(var), rf))

    def __del__(self) -> None:
        # The module outlives its training model: it keeps the trained weights.
        try:
            self.copy_weights_to_host()
        except Exception:  # noqa: BLE001, S110 - nothing can be raised from a finalizer
            pass

    def copy_weights_to_device(self) -> None:
        """Write the module's parameters and buffers to the device (after editing them on the host)."""
        if self._dirty:
            self.copy_weights_to_host()
        self._write_weights()

    # -- running -------------------------------------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        values = self._prepare(args, kwargs)
        if not self._attached:
            self.attach()
        self._write_hyper()
        self._upload_optimizer_state()
        snapshot = self._snapshot()
        try:
            out = self._run(values)
        except BaseException:
            snapshot.restore()  # nothing half-updated
            raise
        self._dirty = True
        if hasattr(self.optimizer, "host_state_is_dirty"):
            self.optimizer.host_state_is_dirty = True
        _LiveModule.bump(self.module)
        if self.options.log_cycle_count:
            logger.info("%s: %d cycles per training call", self._label, self.cycle_count)
        return out

    def _run(self, values: list[Any]) -> Any:
        low, eng, o = self._lowered, self._engine, self.options
        di, rf, ga = o.device_iterations, o.replication_factor, o.gradient_accumulation
        turns = di * ga
        for slot, value in zip(low.inputs, values, strict=True):
            if slot is None or int(np.prod(slot.shape)) == 0:
                continue
            host = to_host_array(value, slot.dtype, f"input {slot.name!r}", InputError)
            host = host.reshape(turns, rf // o.input_group_size, -1)  # a replica group shares its slice
            for r, i in enumerate(input_slices(o)):
                eng.connect_stream(slot.stream, np.ascontiguousarray(host[:, i]), replica=r)
        final = o.output_mode in (OutputMode.FINAL, OutputMode.DEFAULT)
        n = 1 if final else turns
        buffers: list[np.ndarray | None] = []
        for slot in low.outputs:
            if not isinstance(slot, StreamSlot) or int(np.prod(slot.shape)) == 0:
                buffers.append(None)
                continue
            buf = np.empty((rf, n, int(np.prod(slot.shape))), slot.dtype.numpy)
            for r in range(rf):
                eng.connect_stream(slot.stream, buf[r], replica=r)
            buffers.append(buf)
        self.extra_out = connect_extra(eng, self._extra, rf)
        eng.run(1)
        leaves = [self._output(slot, buf) for slot, buf in zip(low.outputs, buffers, strict=True)]
        # A loss forward does not return was traced as one more output: not handed back.
        return pytree.tree_unflatten(leaves[:self._out_spec.num_leaves], self._out_spec)

    def _output(self, slot: Any, buf: np.ndarray | None) -> Any:
        return unpack_output(slot, buf, self.options)

    # -- the optimizer -------------------------------------------------------------------------------
    def set_optimizer(self, optimizer: Any) -> None:
        """Use ``optimizer``'s variable hyper-parameters (lr...) from the next step, without compiling
        again; a changed constant attribute is an error. The device's optimizer state is kept."""
        self._check_optimizer(optimizer)
        if self._spec is not None:
            self._spec.check_compatible(optimizer)
        if optimizer is not self.optimizer and self._spec is not None:
            # The device keeps the optimizer state: the new optimizer's state_dict reads it.
            self._bind_optimizer(optimizer)
        self.optimizer = optimizer
        if self._spec is not None and self._attached:
            self._write_hyper()
            self._upload_optimizer_state()

    # -- attach / detach -----------------------------------------------------------------------------
    def detach(self) -> None:
        """Release the (simulated) device: weights are copied back first; the next call reloads them."""
        self._need("detach")
        self.copy_weights_to_host()
        self._attached = False

    def attach(self) -> None:
        self._need("attach")
        if not self._attached:
            self._write_weights()
            self._write_hyper(force=True)
            self._attached = True

    @property
    def is_attached(self) -> bool:
        return self._lowered is not None and self._attached

    def destroy(self) -> None:
        """Copy the weights back and drop the compiled step; the next call compiles again."""
        self.copy_weights_to_host()
        self._lowered = self._engine = self._spec = None
        self._leaves = None
        self._attached = True

    # -- results -------------------------------------------------------------------------------------
    def _need(self, what: str) -> TrainLowered:
        if self._lowered is None:
            raise FrontendError(f"{what}: {self._label} has not been compiled yet; call it (or "
                                ".compile(*inputs)) first")
        return self._lowered

    @property
    def lowered(self) -> TrainLowered:
        return self._need("lowered")

    @property
    def engine(self) -> Engine:
        self._need("engine")
        return self._engine

    @property
    def report(self) -> Any:
        return self.engine.report

    @property
    def cycle_count(self) -> int:
        """Modeled cycles of the last call (all its device iterations)."""
        runs = [c for i, c in self.engine.log.runs if i == 1]
        placed = placed_summary(self._lowered, self.engine) if runs else None  # blocks' strategy priced
        return placed["cycles"] if placed else int(runs[-1]) if runs else 0

    def summary(self) -> dict[str, Any]:
        """Memory split by role (bytes over all tiles) and the last call's cycles split by phase."""
        from softipu.frontends.torch.training.summary import training_summary  # noqa: PLC0415

        out = training_summary(self)
        placed = placed_summary(self._lowered, self.engine)  # model parallelism (training/pipeline.py)
        return {**out, "pipeline": placed} if placed else out

    def __repr__(self) -> str:
        state = "not compiled" if self._lowered is None else f"{self._lowered.nodes} ops"
        return f"TrainingModel({self._label}, {self.options.target.name}, {state})"


def _assign(t: torch.Tensor, values: np.ndarray) -> None:
    t.data.copy_(torch.from_numpy(np.asarray(values).reshape(t.shape).astype(
        np.dtype(str(t.dtype).removeprefix("torch.")) if t.dtype != torch.bool else np.bool_, copy=False)))


def _raw(module: torch.nn.Module, method: str) -> Any:
    """``module``'s own ``method``, without the lazy copy back."""
    return getattr(torch.nn.Module, method).__get__(module)


class _LiveModule:
    """PopTorch's wrapped module: reading its parameters, buffers or state_dict (or calling it)
    first copies trained weights back from the device when they are newer there."""

    _CLASSES: dict[type, type] = {}

    @classmethod
    def wrap(cls, module: torch.nn.Module, model: TrainingModel) -> None:
        module.__dict__["_softipu_training"] = weakref.ref(model)
        module.__dict__.setdefault("_softipu_host_version", 0)
        base = type(module)
        if getattr(base, "_softipu_live", False):
            return
        sub = cls._CLASSES.get(base)
        if sub is None:
            sub = type(base.__name__, (base,), {
                "_softipu_live": True, "__module__": base.__module__, "__qualname__": base.__qualname__,
                "__reduce_ex__": _syncing(_reduce_as(base)),
                **{m: _syncing(getattr(base, m)) for m in
                   ("parameters", "named_parameters", "buffers", "named_buffers", "state_dict", "__call__")}})
            cls._CLASSES[base] = sub
        module.__class__ = sub

    @staticmethod
    def bump(module: torch.nn.Module) -> None:
        module.__dict__["_softipu_host_version"] = module.__dict__.get("_softipu_host_version", 0) + 1


def _reduce_as(base: type) -> Any:
    """Pickle and deepcopy a wrapped module as the user's own class (trained weights included)."""
    def reduce_ex(self: torch.nn.Module, protocol: int) -> Any:
        state = {k: v for k, v in self.__dict__.items() if not k.startswith("_softipu_")}
        return copyreg._reconstructor, (base, object, None), state
    return reduce_ex


def _syncing(method: Any) -> Any:
    def wrapper(self: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        ref = self.__dict__.get("_softipu_training")
        model = ref() if ref is not None else None
        if model is not None and model._dirty:
            try:
                model.copy_weights_to_host()
            except SoftIPUError:
                pass
        return method(self, *args, **kwargs)
    wrapper.__name__ = getattr(method, "__name__", "method")
    wrapper.__doc__ = getattr(method, "__doc__", None)
    return wrapper


def training_model(module: torch.nn.Module, optimizer: Any = None,
                   options: Options | None = None) -> TrainingModel:
    """``module`` trained by ``optimizer`` (default ``poptorch.optim.SGD(lr=0.01)``) on a simulated IPU;
    see :class:`TrainingModel`."""
    return TrainingModel(module, optimizer, options)


def _all_zero_bits(value: Any) -> bool:
    """Whether every bit of ``value`` is 0, as untouched engine memory reads (a -0.0 is not)."""
    return not np.ascontiguousarray(value).view(np.uint8).any()
