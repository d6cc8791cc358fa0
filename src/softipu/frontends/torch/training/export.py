"""Training executables on disk: PopTorch's ``compileAndExport`` / ``loadExecutable`` for training.

An export is the executable cache's safe format (:mod:`softipu.compiler.serialize`: JSON and plain
arrays, never pickle) holding the compiled training step and, unlike an inference export, the
device state at the time of the export: weights, buffers, optimizer state, the step counter and the
device's hyper-parameters (an automatic loss scale included). A training model of the same module
code, options and optimizer structure loads it and trains on from there, with the losses the
exporting model would have had. The optimizer given to the loading model supplies the variable
attributes (``lr``...) as ``setOptimizer`` would; its constants and structure must match the file's.

What must match is checked as for inference exports (:func:`softipu.frontends.torch.cache.key_parts`:
versions, options, module code and parameter shapes, lowerings, inputs) plus the optimizer; an
error names what differs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils import _pytree as pytree

from softipu.compiler.executable import Executable
from softipu.compiler.serialize import MANIFEST, ExecutableFormatError, load_executable, save_executable
from softipu.dtypes import as_dtype
from softipu.frontends.errors import FrontendError
from softipu.frontends.torch import cache as _cache
from softipu.frontends.torch.lower import StreamSlot, host_values
from softipu.frontends.torch.options import Options
from softipu.frontends.torch.training.lowering import TrainLowered
from softipu.graph.graph import Graph
from softipu.graph.tensor import Tensor

__all__ = ["TRAINING_EXPORT_FORMAT", "LoadedTraining", "export_training", "load_training", "optimizer_digest"]

TRAINING_EXPORT_FORMAT = 1


def optimizer_digest(spec: Any) -> tuple[str, str]:
    """(digest, short description) of what an optimizer compiles into a step: its kind, groups,
    constants, which attributes are variables, state slots and structural options."""
    groups = [(list(g.params), sorted((a, repr(v)) for a, v in g.values if a not in g.variables),
               sorted(g.variables), g.nesterov) for g in spec.groups]
    state = [(s.param_name, s.name, list(s.shape), str(s.torch_dtype), s.initial) for s in spec.state]
    described = (spec.kind.value, groups, state, [(h.name, str(h.torch_dtype)) for h in spec.hyper],
                 None if spec.loss_scaling_variable else spec.loss_scaling, spec.loss_scaling_variable,
                 spec.max_grad_norm, str(spec.accum_type), list(spec.options))
    short = (f"{spec.kind.value} with {len(spec.groups)} param group(s), {len(spec.state)} state tensors, "
             f"variables {[h.name for h in spec.hyper][:4]}")
    return _cache._digest(described), short


def _view(t: Tensor) -> dict[str, Any]:
    if t.index is not None or t.slabs is not None:
        raise FrontendError("cannot export this training model: a device tensor is an indexed view, "
                            "which the export format does not record")
    return {"dtype": t.dtype.name, "shape": list(t.shape), "offset": int(t.offset),
            "strides": [int(s) for s in t.strides]}


def _unview(graph: Graph, d: dict[str, Any]) -> Tensor:
    return Tensor(graph, as_dtype(str(d["dtype"])), tuple(int(x) for x in d["shape"]), int(d["offset"]),
                  tuple(int(x) for x in d["strides"]))


def _output(slot: Any) -> dict[str, Any]:
    return {"slot": _cache._slot(slot)} if isinstance(slot, StreamSlot) else {"const": _cache._constant(slot)}


def _tensors(low: TrainLowered) -> dict[str, Any]:
    return {"params": {n: _view(t) for n, t in low.params.items()},
            "buffers": {n: _view(t) for n, t in low.buffers.items()},
            "state": [[p, s, _view(t)] for (p, s), t in low.state.items()],
            "hyper": {n: _view(t) for n, t in low.hyper.items()}, "step": _view(low.step)}


def _values(low: TrainLowered, read: Any) -> dict[str, Any]:
    """The device's current values of every tensor :func:`_tensors` records, in the same layout."""
    return {"params": {n: read(t) for n, t in low.params.items()},
            "buffers": {n: read(t) for n, t in low.buffers.items()},
            "state": [read(t) for t in low.state.values()],
            "hyper": {n: read(t) for n, t in low.hyper.items()}, "step": read(low.step)}


def export_training(path: str | Path, model: Any, structure: str, leaves: list[_cache.InputRecord]) -> int:
    """Write ``model``'s compiled training step and its device state to the directory ``path``
    (replacing an earlier export); returns the bytes written. Raises :class:`FrontendError`."""
    low, eng, module, options = model.lowered, model.engine, model.module, model.options
    target, label = Path(path), type(module).__name__
    if target.exists() and not (target / MANIFEST).is_file() and not _cache._empty_directory(target):
        raise FrontendError(f"cannot export {label} to {target}: it exists and is not a softipu export; "
                            "remove it or choose another path")
    try:
        parts = _parts(module, structure, leaves, options, model._spec)
        digest, short = optimizer_digest(model._spec)
        extra = {
            "key": _cache._key_of(parts), "cache_format": _cache.CACHE_FORMAT,
            "softipu": _cache._softipu_version(),
            "export": {"format": _cache.EXPORT_FORMAT, "kind": "training", "parts": parts,
                       "versions": _cache._versions(),
                       "signature": {"structure": structure, "leaves": [_cache._record(x) for x in leaves]},
                       "options": {name: [d, _cache._short(getattr(options, name))]
                                   for name, d in _cache._option_digests(options).items()},
                       "state": [[n, list(t.shape), str(t.dtype)] for n, t in
                                 _cache._module_state(module).items()],
                       "optimizer": short},
            "training": {
                "format": TRAINING_EXPORT_FORMAT, "optimizer": digest,
                "out_spec": pytree.treespec_dumps(model._out_spec),
                "inputs": [None if s is None else _cache._slot(s) for s in low.inputs],
                "outputs": [_output(s) for s in low.outputs],
                "tensors": _tensors(low), "values": _values(low, lambda t: np.array(eng.read_tensor(t))),
                "hyper_written": dict(model._hyper_written),
                "seed_weights": [[stream, host_values(v)] for stream, v in low.seed_weights],
                "nodes": low.nodes, "saved_bytes": low.saved_bytes, "grad_bytes": low.grad_bytes,
                "variables": {k: [int(i) for i in v] for k, v in low.extra.items() if k != "pipeline"},
                **_placement(low, eng)},
        }
    except _cache._Uncacheable as exc:
        raise FrontendError(f"cannot export {label}: {exc}") from None
    except FrontendError:
        raise
    except Exception as exc:  # noqa: BLE001 - something in the module the key cannot describe
        raise FrontendError(f"cannot export {label}: describing it failed ({type(exc).__name__}: "
                            f"{exc})") from exc
    return _cache._write_replacing(target, lambda temp: save_executable(eng.executable, temp, extra))


def _placement(low: TrainLowered, engine: Any) -> dict[str, Any]:
    """Model parallelism's plan (blocks, stages, the steps of each stage), when there is one."""
    plan = low.extra.get("pipeline")
    if plan is None:
        return {}
    from softipu.frontends.torch.pipeline import plan_to_json  # noqa: PLC0415

    return {"pipeline": plan_to_json(plan, engine.executable)}


def _parts(module: torch.nn.Module, structure: str, leaves: Any, options: Options,
           spec: Any) -> dict[str, str]:
    parts = _cache.key_parts(module, structure, leaves, options)
    parts["optimizer"] = optimizer_digest(spec)[0]
    parts["kind"] = _cache._digest("training", TRAINING_EXPORT_FORMAT)
    return parts


class LoadedTraining:
    """A loaded training export: what :class:`TrainingModel` needs to run it."""

    def __init__(self, lowered: TrainLowered, executable: Executable, out_spec: Any, structure: str,
                 leaves: tuple[_cache.InputRecord, ...], values: dict[str, Any],
                 hyper_written: dict[str, float]) -> None:
        self.lowered, self.executable, self.out_spec = lowered, executable, out_spec
        self.structure, self.leaves = structure, leaves
        self.values, self.hyper_written = values, hyper_written

    def writes(self) -> list[tuple[Tensor, np.ndarray]]:
        """(device tensor, saved value) for every saved tensor."""
        low, v = self.lowered, self.values
        pairs = [(low.params[n], a) for n, a in v["params"].items()]
        pairs += [(low.buffers[n], a) for n, a in v["buffers"].items()]
        pairs += list(zip(low.state.values(), v["state"], strict=True))
        pairs += [(low.hyper[n], a) for n, a in v["hyper"].items()]
        return [*pairs, (low.step, v["step"])]


def _read(directory: Path) -> tuple[Executable, Graph, dict[str, Any], dict[str, Any]]:
    _cache.check_export_directory(directory)
    try:
        executable, graph, extra = load_executable(directory)
    except ExecutableFormatError as exc:
        raise FrontendError(f"cannot load {directory}: {exc}; export the model again") from None
    info = extra.get("export")
    if not isinstance(info, dict) or info.get("format") != _cache.EXPORT_FORMAT:
        raise FrontendError(f"cannot load {directory}: it holds an executable but no exported signature "
                            "(an executable cache entry, or an export from another softipu)")
    if info.get("kind") != "training":
        raise FrontendError(f"{directory} holds an inference executable: load it with "
                            "poptorch.inferenceModel(module, options).loadExecutable(path)")
    return executable, graph, extra, info


def load_training(path: str | Path, model: Any) -> LoadedTraining:
    """The training export at ``path`` for ``model`` (a :class:`TrainingModel` of the module and
    options it was exported from). Raises :class:`FrontendError` naming what differs."""
    directory, module, label = Path(path), model.module, model._label
    executable, graph, extra, info = _read(directory)
    train = extra.get("training")
    try:
        structure = str(info["signature"]["structure"])
        leaves = tuple(_cache._unrecord(d) for d in info["signature"]["leaves"])
        if not isinstance(train, dict) or train.get("format") != TRAINING_EXPORT_FORMAT:
            raise _cache._Stale("its training section is missing or from another softipu")
        parts = _parts(module, structure, leaves, model.options, model._spec)
        wrong = _cache._mismatches(info, parts, module, model.options)
    except (_cache._Stale, KeyError, TypeError, ValueError, IndexError) as exc:
        raise FrontendError(f"cannot load {directory}: its description is damaged ({exc}); export "
                            "the model again") from None
    if info["parts"].get("optimizer") != parts["optimizer"]:
        wrong.append(f"the optimizer differs: the file's is {info.get('optimizer')}, this one is "
                     f"{optimizer_digest(model._spec)[1]} (its type, param groups, constants or state)")
    if wrong:
        raise FrontendError(f"{directory} was not exported from this {label}, its options and optimizer: "
                            + "; ".join(wrong) + ". Build the module, options and optimizer it was "
                            "exported from, or export this model again (compileAndExport)")
    try:
        return _restore(executable, graph, train, structure, leaves)
    except Exception as exc:  # noqa: BLE001 - parts that match around a damaged body
        raise FrontendError(f"cannot load {directory}: {type(exc).__name__}: {exc}; export the model "
                            "again") from None


def _restore(executable: Executable, graph: Graph, train: dict[str, Any], structure: str,
             leaves: tuple[_cache.InputRecord, ...]) -> LoadedTraining:
    t = train["tensors"]
    state = {(str(p), str(s)): _unview(graph, d) for p, s, d in t["state"]}
    lowered = TrainLowered(
        graph, executable.programs,  # type: ignore[arg-type]
        tuple(None if s is None else _cache._unslot(s) for s in train["inputs"]),
        tuple(_cache._unslot(o["slot"]) if "slot" in o else _cache._unconstant(o["const"])
              for o in train["outputs"]),
        {n: _unview(graph, d) for n, d in t["params"].items()},
        {n: _unview(graph, d) for n, d in t["buffers"].items()}, state,
        {n: _unview(graph, d) for n, d in t["hyper"].items()}, _unview(graph, t["step"]),
        [(str(s), np.asarray(v)) for s, v in train["seed_weights"]], int(train["nodes"]),
        int(train["saved_bytes"]), int(train["grad_bytes"]),
        {str(k): [int(i) for i in v] for k, v in train["variables"].items()})
    if "pipeline" in train:  # the placement plan: the strategy is priced as the exporting model's
        from softipu.frontends.torch.pipeline import plan_from_json  # noqa: PLC0415

        lowered.extra["pipeline"] = plan_from_json(train["pipeline"], executable)
    out_spec = pytree.treespec_loads(train["out_spec"])
    written = {str(k): float(v) for k, v in train["hyper_written"].items()}
    return LoadedTraining(lowered, executable, out_spec, structure, leaves, train["values"], written)
