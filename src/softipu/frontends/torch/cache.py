"""The executable cache of ``softipu.torch``: compiled models kept on disk between processes.

With ``Options(executable_cache_dir=path)`` (PopTorch: ``enableExecutableCaching(path)``) the first
call of a model looks its key up in ``path``; a hit skips ``torch.export``, lowering and compiling:
the executable is loaded (:mod:`softipu.compiler.serialize`, JSON and plain arrays, never pickle)
and the module's current weights are streamed in. A miss compiles as usual and stores the result.

The key is computed without exporting (the module's and softipu's parts in :mod:`.fingerprint`), from
everything that shapes the compiled graph:

* softipu (its version and a hash of its source), torch, numpy and Python versions;
* the module: every submodule's class (module, name, and a hash of the file defining it and of
  its base classes' files), its plain attributes (hyperparameters such as ``eps`` or a head
  count, functions and hooks by code), the names, shapes and dtypes of parameters and buffers
  (not their values: changed weights reuse the entry) and which of them are shared, and the values
  of plain tensor attributes (they are baked into the graph as constants);
* the registered ATen lowerings (a user's lowering by the hash of its file);
* the inputs' structure, shapes, dtypes and non-tensor values;
* every option that changes what is compiled (target, replication, device iterations, precision,
  partials, memory proportion, seed, output mode and period, engine and stored options).

NOTE: what the key cannot see is code outside the files of the module's classes that ``forward``
calls (a helper in another file of yours, a global variable it reads). Change such code and a
stale entry would be used: clear the cache directory (or change the option) after such edits.

Entries are directories named by their key, written to a temporary directory and renamed into
place, so a reader never sees half an entry. A corrupt entry, or one from another format version,
is a miss: it is logged and removed. Each use refreshes an entry's time; when the entries exceed
``Options.executable_cache_max_bytes`` the least recently used are removed.

The same files serve PopTorch's ``compileAndExport`` / ``loadExecutable``
(:func:`export_compiled`, :func:`load_exported`): an exported model is an entry written to a
path of the user's choosing, with its input signature and the parts of its key, so that loading
it into another model names what differs instead of missing silently.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils import _pytree as pytree

from softipu.compiler.executable import Executable
from softipu.compiler.serialize import MANIFEST, ExecutableFormatError, load_executable, save_executable
from softipu.frontends.errors import FrontendError
from softipu.frontends.torch.fingerprint import (
    _digest,
    _identity,
    _module_digest,
    _softipu_build,
    _softipu_version,
)
from softipu.frontends.torch.lower import Lowered, StreamSlot, host_values, to_host_array
from softipu.frontends.torch.options import Options
from softipu.frontends.torch.registry import LOWERINGS
from softipu.graph.graph import Graph
from softipu.target import Target

__all__ = ["ExecutableCache", "CachedModel", "CACHE_FORMAT", "ExportedModel", "InputRecord",
           "export_compiled", "load_exported", "key_parts", "EXPORT_FORMAT"]

logger = logging.getLogger("softipu.torch.cache")

CACHE_FORMAT = 1  # what ``extra`` holds besides the executable
EXPORT_FORMAT = 1  # what an exported model adds to ``extra`` (its "export" section)
_ENTRY = re.compile(r"^[0-9a-f]{64}$")
_STALE_TEMP_SECONDS = 3600.0

# Options that change what is compiled (or loaded: the seed) are in the key; the rest are not.
KEY_OPTIONS = ("target", "replication_factor", "device_iterations", "precision", "partials_type",
               "available_memory_proportion", "serial_loops", "seed", "output_mode", "output_return_period",
               "engine_options", "stored", "gradient_accumulation", "accumulation_reduction",
               "mean_reduction_strategy",
               "auto_loss_scaling", "input_group_size", "input_group_type", "merge_all_reduce",
               "recomputation", "tensor_locations", "model_parallel")
NOT_KEY_OPTIONS = ("log_cycle_count", "recompile_on_shape_change", "executable_cache_dir",
                   "executable_cache_max_bytes")


@dataclass(frozen=True, slots=True)
class CachedModel:
    """What a hit gives the runtime: a lowered model whose graph is the loaded skeleton, the
    output structure, and the executable to run."""

    lowered: Lowered
    out_spec: Any
    executable: Executable


class ExecutableCache:
    """Compiled models in ``directory``, at most ``max_bytes`` in all (least recently used go first).

    >>> import tempfile, torch, softipu as sp, softipu.torch as st
    >>> opts = st.Options(target=sp.targets.ipu_model(tiles=4), executable_cache_dir=tempfile.mkdtemp())
    >>> net, x = torch.nn.Linear(4, 3), torch.randn(2, 4)
    >>> a = st.inference_model(net, opts); _ = a(x)           # compiles and stores
    >>> b = st.inference_model(net, opts); _ = b(x)           # loads: no export, no compile
    >>> sorted(b.compile_seconds), len(ExecutableCache(opts.executable_cache_dir, 10**9).entries())
    (['cache_load', 'load'], 1)
    """

    def __init__(self, directory: str | os.PathLike, max_bytes: int) -> None:
        self.directory = Path(directory).expanduser()
        self.max_bytes = int(max_bytes)

    @classmethod
    def for_options(cls, options: Options) -> ExecutableCache | None:
        if options.executable_cache_dir is None:
            return None
        return cls(options.executable_cache_dir, options.executable_cache_max_bytes)

    # -- the key ----------------------------------------------------------------------------------
    def key(self, module: torch.nn.Module, inputs: Any, leaves: Any, options: Options) -> str | None:
        """The entry name for ``module`` called with ``inputs`` (the ``(args, kwargs)`` tree, whose
        flattened leaves the runtime describes in ``leaves``) under ``options``; None (logged) when
        something in the module cannot be described, and the model then runs uncached."""
        try:
            return self._key(module, inputs, leaves, options)
        except Exception as exc:  # noqa: BLE001 - an odd attribute must not fail the user's call
            logger.info("executable cache: no key for %s (%s: %s); compiling without the cache",
                        type(module).__name__, type(exc).__name__, exc)
            return None

    def _key(self, module: torch.nn.Module, inputs: Any, leaves: Any, options: Options) -> str:
        return _key_of(key_parts(module, str(pytree.tree_structure(inputs)), leaves, options))

    # -- entries ----------------------------------------------------------------------------------
    def path(self, key: str) -> Path:
        return self.directory / key

    def entries(self) -> list[tuple[Path, int, float]]:
        """(path, bytes, last use) of every entry."""
        found = []
        for path in self._children():
            if _ENTRY.match(path.name):
                try:
                    found.append((path, _size(path), path.stat().st_mtime))
                except OSError:
                    continue  # removed meanwhile
        return found

    def _children(self) -> Iterator[Path]:
        try:
            yield from (p for p in self.directory.iterdir() if p.is_dir())
        except OSError:
            return

    def load(self, key: str | None, module: torch.nn.Module) -> CachedModel | None:
        """The cached model of ``key`` with ``module``'s current weights, or None (a miss)."""
        if key is None:
            return None
        path = self.path(key)
        if path.is_symlink():  # could point anywhere: an entry is read only inside the cache folder
            logger.warning("executable cache: entry %s in %s is a symbolic link, which the cache does not "
                           "follow; compiling instead (remove the link)", key[:12], self.directory)
            return None
        if not (path / MANIFEST).is_file():
            logger.info("executable cache miss %s in %s", key[:12], self.directory)
            return None
        try:
            executable, graph, extra = load_executable(path)
            model = _restore(executable, graph, extra, key, module)
        except Exception as exc:  # noqa: BLE001 - whatever is wrong with an entry, it is a miss
            logger.info("executable cache: entry %s is unusable and was removed (%s: %s)", key[:12],
                        type(exc).__name__, exc)
            shutil.rmtree(path, ignore_errors=True)
            return None
        _touch(path)
        logger.info("executable cache hit %s in %s", key[:12], self.directory)
        return model

    def store(self, key: str | None, module: torch.nn.Module, executable: Executable, lowered: Lowered,
              out_spec: Any) -> bool:
        """Save a freshly compiled model under ``key``; False (with a log line) when it cannot be
        cached. Never raises for what the model holds or the disk does: the user's call goes on."""
        if key is None:
            return False
        temp = self.directory / f".tmp-{key[:16]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            extra = _extra(key, module, lowered, out_spec, executable)
            self.directory.mkdir(parents=True, exist_ok=True)
            nbytes = save_executable(executable, temp, extra)
        except (_Uncacheable, ExecutableFormatError) as exc:
            shutil.rmtree(temp, ignore_errors=True)
            logger.info("executable cache: not storing %s: %s", key[:12], exc)
            return False
        except OSError as exc:  # a read-only folder, a full disk: the model runs, compiled each time
            shutil.rmtree(temp, ignore_errors=True)
            logger.warning("executable cache: cannot write %s (%s); the model was compiled and runs, but "
                           "it is not cached: make the folder writable or choose another "
                           "(executable_cache_dir)", self.directory, exc)
            return False
        except Exception:  # a bug in saving: say so loudly, but the user's call goes on
            shutil.rmtree(temp, ignore_errors=True)
            logger.warning("executable cache: saving %s failed", key[:12], exc_info=True)
            return False
        if nbytes > self.max_bytes:
            shutil.rmtree(temp, ignore_errors=True)
            logger.info("executable cache: not storing %s: %d bytes exceed the bound of %d", key[:12],
                        nbytes, self.max_bytes)
            return False
        self._evict(self.max_bytes - nbytes, keep=key)
        try:
            os.rename(temp, self.path(key))
        except OSError:  # another process stored the same key first: theirs is as good
            shutil.rmtree(temp, ignore_errors=True)
            return False
        logger.info("executable cache: stored %s (%.1f MB) in %s", key[:12], nbytes / 1e6, self.directory)
        return True

    def evict(self) -> None:
        """Remove least recently used entries until the cache holds at most ``max_bytes``."""
        self._evict(self.max_bytes)

    def _evict(self, budget: int, keep: str = "") -> None:
        now = time.time()
        for path in self._children():
            if path.name.startswith(".tmp-") and _age(path, now) > _STALE_TEMP_SECONDS:
                shutil.rmtree(path, ignore_errors=True)  # left by a writer that died
        entries = sorted((e for e in self.entries() if e[0].name != keep), key=lambda e: e[2])
        total = sum(nbytes for _, nbytes, _ in entries)
        for path, nbytes, _ in entries:
            if total <= budget:
                break
            shutil.rmtree(path, ignore_errors=True)
            total -= nbytes
            logger.info("executable cache: evicted %s (%.1f MB, least recently used)", path.name[:12],
                        nbytes / 1e6)


def key_parts(module: torch.nn.Module, structure: str, leaves: Sequence[Any], options: Options
              ) -> dict[str, str]:
    """The parts of a key, each a digest, by what they describe: a file whose parts differ from a
    model's can say which. ``structure`` is ``str`` of the inputs' pytree structure and ``leaves``
    the flattened inputs (``name``, ``shape``, ``dtype``, ``value``)."""
    return {
        "versions": _digest("softipu-torch-cache", CACHE_FORMAT, _softipu_build(), torch.__version__,
                            np.__version__, sys.version_info[:2]),
        "options": _digest(sorted(_option_digests(options).items())),
        "inputs": _digest(structure, [(leaf.name, leaf.shape, str(leaf.dtype), _identity(leaf.value))
                                      for leaf in leaves]),
        "lowerings": _digest([(name, _identity(low.fn), _identity(low.check))
                              for name, low in LOWERINGS.items()]),
        "module": _module_digest(module),
    }


def _key_of(parts: dict[str, str]) -> str:
    return _digest(sorted(parts.items()))


def _option_digests(options: Options) -> dict[str, str]:
    return {name: _digest(_identity(getattr(options, name))) for name in KEY_OPTIONS}


class _Uncacheable(Exception):
    """The compiled model holds something the cache cannot store."""


class _Stale(Exception):
    """An entry that does not fit this process or model (another format, a renamed key...)."""


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def _age(path: Path, now: float) -> float:
    try:
        return now - path.stat().st_mtime
    except OSError:
        return 0.0


def _touch(path: Path) -> None:
    try:
        os.utime(path)
    except OSError:
        pass


# -- what the runtime needs besides the executable -----------------------------------------------
def _module_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return dict(module.named_parameters(remove_duplicate=False)) | dict(
        module.named_buffers(remove_duplicate=False))


def _extra(key: str, module: torch.nn.Module, lowered: Lowered, out_spec: Any,
           executable: Executable) -> dict[str, Any]:
    from softipu.frontends.torch.pipeline import plan_to_json  # noqa: PLC0415 - model parallelism's plan

    plan = lowered.extra.get("pipeline")
    placement = {"pipeline": plan_to_json(plan, executable)} if plan is not None else {}
    state = _module_state(module)
    weights = []
    for stream, values in lowered.weights:
        t = state.get(stream.removeprefix("weights/"))
        from_module = t is not None and t.numel() == values.size
        # constants, the seed: stored (a lowered HostWeight converted now)
        weights.append([stream, "module" if from_module else host_values(values)])
    try:
        spec = pytree.treespec_dumps(out_spec)
    except Exception as exc:  # noqa: BLE001 - an output type pytree cannot write
        raise _Uncacheable(f"the output structure cannot be saved ({exc})") from None
    return {"key": key, "cache_format": CACHE_FORMAT, "softipu": _softipu_version(), "out_spec": spec,
            "inputs": [None if s is None else _slot(s) for s in lowered.inputs],
            "outputs": [{"slot": _slot(s)} if isinstance(s, StreamSlot) else {"const": _constant(s)}
                        for s in lowered.outputs],
            "weights": weights, "nodes": lowered.nodes,
            "mutations": [[kind, target, _slot(slot)] for kind, target, slot in lowered.mutations],
            **placement}


def _slot(s: StreamSlot) -> dict[str, Any]:
    return {"name": s.name, "stream": s.stream, "shape": list(s.shape),
            "torch_dtype": str(s.torch_dtype).removeprefix("torch."), "dtype": s.dtype}


def _constant(value: Any) -> Any:
    if value is None or type(value) in (bool, int, float, str):
        return value
    if type(value) in (tuple, list):
        return {"tuple" if type(value) is tuple else "list": [_constant(v) for v in value]}
    raise _Uncacheable(f"an output is a constant {type(value).__name__}")


def _restore(executable: Executable, graph: Graph, extra: dict[str, Any], key: str,
             module: torch.nn.Module) -> CachedModel:
    if extra.get("key") != key or extra.get("cache_format") != CACHE_FORMAT \
            or extra.get("softipu") != _softipu_version():
        raise _Stale(f"written for key {str(extra.get('key'))[:12]}, cache format "
                     f"{extra.get('cache_format')}, softipu {extra.get('softipu')}")
    state = _module_state(module)
    weights = []
    for stream, source in extra["weights"]:
        if isinstance(source, np.ndarray):
            weights.append((stream, source))
            continue
        t = state.get(stream.removeprefix("weights/"))
        s = graph.streams[stream]
        if t is None or t.numel() != s.num_elements:
            raise _Stale(f"the module has no weight {stream.removeprefix('weights/')!r} of "
                         f"{s.num_elements} elements")
        what = f"weight {stream.removeprefix('weights/')!r}"
        weights.append((stream, to_host_array(t, s.dtype, what).reshape(-1)))
    try:
        out_spec = pytree.treespec_loads(extra["out_spec"])
    except Exception as exc:  # noqa: BLE001 - a damaged spec is a damaged entry
        raise _Stale(f"its output structure cannot be read ({exc})") from None
    lowered = Lowered(graph, executable.programs,  # type: ignore[arg-type]
                      tuple(None if s is None else _unslot(s) for s in extra["inputs"]),
                      tuple(_unslot(o["slot"]) if "slot" in o else _unconstant(o["const"])
                            for o in extra["outputs"]),
                      tuple(weights), int(extra["nodes"]),
                      mutations=tuple((str(kind), str(target), _unslot(slot))
                                      for kind, target, slot in extra.get("mutations", [])))
    if "pipeline" in extra:  # model parallelism's plan: the strategy priced as when it was compiled
        from softipu.frontends.torch.pipeline import plan_from_json  # noqa: PLC0415

        lowered.extra["pipeline"] = plan_from_json(extra["pipeline"], executable)
    return CachedModel(lowered, out_spec, executable)


def _unslot(d: dict[str, Any]) -> StreamSlot:
    return StreamSlot(str(d["name"]), str(d["stream"]), tuple(int(x) for x in d["shape"]),
                      _torch_dtype(d["torch_dtype"]), d["dtype"])


def _torch_dtype(name: Any) -> torch.dtype:
    torch_dtype = getattr(torch, str(name), None)
    if not isinstance(torch_dtype, torch.dtype):
        raise _Stale(f"unknown torch dtype {name!r}")
    return torch_dtype


def _unconstant(value: Any) -> Any:
    if isinstance(value, dict):
        items = [_unconstant(v) for v in value.get("tuple", value.get("list", []))]
        return tuple(items) if "tuple" in value else items
    return value


# -- exported models: PopTorch's compileAndExport and loadExecutable -----------------------------
class InputRecord(NamedTuple):
    """One flattened input of an exported signature: a tensor's shape and dtype, or a constant."""

    name: str
    shape: tuple[int, ...] | None  # None: not a tensor
    dtype: torch.dtype | None
    value: Any


@dataclass(frozen=True, slots=True)
class ExportedModel:
    """A loaded export: the model, and the signature (``str`` of the inputs' pytree structure and
    the flattened inputs) it was compiled for."""

    model: CachedModel
    structure: str
    leaves: tuple[InputRecord, ...]


def export_compiled(path: str | os.PathLike, module: torch.nn.Module, options: Options, structure: str,
                    leaves: Sequence[Any], executable: Executable, lowered: Lowered, out_spec: Any) -> int:
    """Write one compiled signature of ``module`` to the directory ``path`` (replacing an earlier
    export there); returns the bytes written. The weights are not needed: :func:`load_exported`
    takes them from the module it loads into. Raises :class:`FrontendError`; nothing is left at
    ``path`` but a complete export or what was there before."""
    target = Path(path)
    label = type(module).__name__
    if target.exists() and not (target / MANIFEST).is_file() and not _empty_directory(target):
        raise FrontendError(f"cannot export {label} to {target}: it exists and is not a softipu export; "
                            "remove it or choose another path")
    try:
        parts = key_parts(module, structure, leaves, options)
        extra = _extra(_key_of(parts), module, lowered, out_spec, executable)
        extra["export"] = {
            "format": EXPORT_FORMAT, "parts": parts, "versions": _versions(),
            "signature": {"structure": structure, "leaves": [_record(leaf) for leaf in leaves]},
            "options": {name: [digest, _short(getattr(options, name))]
                        for name, digest in _option_digests(options).items()},
            "state": [[name, list(t.shape), str(t.dtype)] for name, t in _module_state(module).items()]}
    except _Uncacheable as exc:
        raise FrontendError(f"cannot export {label}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - something in the module the key cannot describe
        raise FrontendError(f"cannot export {label}: describing it failed ({type(exc).__name__}: "
                            f"{exc})") from exc
    return _write_replacing(target, lambda temp: save_executable(executable, temp, extra))


def check_export_directory(directory: Path) -> None:
    """Raise :class:`FrontendError` unless ``directory`` holds a softipu export's manifest."""
    if not (directory / MANIFEST).is_file():
        what = ("does not exist" if not directory.exists() else
                "is a file (a PopTorch export?)" if directory.is_file() else f"has no {MANIFEST}")
        raise FrontendError(f"{directory} is not a model exported by softipu's compileAndExport: it {what}")


def load_exported(path: str | os.PathLike, module: torch.nn.Module, options: Options) -> ExportedModel:
    """The model exported to ``path``, with ``module``'s current weights. Raises
    :class:`FrontendError` naming what differs when the file was exported from another module,
    options, softipu or torch, and for a damaged or foreign file."""
    directory, label = Path(path), type(module).__name__
    check_export_directory(directory)
    try:
        executable, graph, extra = load_executable(directory)
        info = extra.get("export")
        if not isinstance(info, dict) or info.get("format") != EXPORT_FORMAT:
            raise _Stale("it holds an executable but no exported signature (an executable cache entry, "
                         "or an export from another softipu)")
        if info.get("kind") == "training":
            raise FrontendError(f"{directory} holds a training executable: load it with "
                                "poptorch.trainingModel(module, options, optimizer).loadExecutable(path)")
        structure = str(info["signature"]["structure"])
        leaves = tuple(_unrecord(d) for d in info["signature"]["leaves"])
    except (ExecutableFormatError, _Stale, KeyError, TypeError, ValueError) as exc:
        raise FrontendError(f"cannot load {directory}: {exc}; export the model again") from None
    try:
        parts = key_parts(module, structure, leaves, options)
    except Exception as exc:  # noqa: BLE001 - something in the module the key cannot describe
        raise FrontendError(f"cannot load {directory} into {label}: describing the module failed "
                            f"({type(exc).__name__}: {exc})") from exc
    try:
        wrong = _mismatches(info, parts, module, options)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:  # e.g. parts not a dict
        raise FrontendError(f"cannot load {directory}: its description is damaged ({exc!r}); export "
                            "the model again") from None
    if wrong:
        raise FrontendError(f"{directory} was not exported from this {label} and its options: "
                            + "; ".join(wrong) + ". Build the module and options it was exported from, "
                            "or export this model again (compileAndExport)")
    try:
        model = _restore(executable, graph, extra, _key_of(parts), module)
    except Exception as exc:  # noqa: BLE001 - parts that match around a damaged body
        raise FrontendError(f"cannot load {directory}: {type(exc).__name__}: {exc}; export the model "
                            "again") from None
    return ExportedModel(model, structure, leaves)


def _empty_directory(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def _write_replacing(target: Path, write: Callable[[Path], int]) -> int:
    """``write(directory)`` into a temporary sibling of ``target``, then swap it into place."""
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    temp, old = target.with_name(f".{target.name}.tmp-{tag}"), target.with_name(f".{target.name}.old-{tag}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        nbytes = write(temp)
        moved = target.exists()
        if moved:
            os.rename(target, old)
        try:
            os.rename(temp, target)
        except OSError:
            if moved:  # put the earlier export back: nothing is lost
                os.rename(old, target)
            raise
    except (ExecutableFormatError, OSError) as exc:
        raise FrontendError(f"cannot export to {target}: {exc}") from None
    finally:
        shutil.rmtree(temp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return nbytes


def _record(leaf: Any) -> dict[str, Any]:
    if leaf.shape is not None:
        return {"name": leaf.name, "shape": list(leaf.shape), "dtype": str(leaf.dtype).removeprefix("torch.")}
    try:
        return {"name": leaf.name, "value": _constant(leaf.value)}
    except _Uncacheable:
        raise _Uncacheable(f"input {leaf.name!r} is a {type(leaf.value).__name__}, which an export "
                           "cannot record (it records tensors, numbers, strings, None and tuples or "
                           "lists of them)") from None


def _unrecord(d: dict[str, Any]) -> InputRecord:
    """The input recorded by :func:`_record`; ValueError for a damaged record (a shape of anything
    but sizes: a float such as inf raised OverflowError, 2.5 became 2)."""
    if "shape" in d:
        shape = d["shape"]
        if not isinstance(shape, list) or not all(type(x) is int and x >= 0 for x in shape):
            raise ValueError(f"input {d['name']!r} has the recorded shape {shape!r}, not a list of sizes")
        return InputRecord(str(d["name"]), tuple(shape), _torch_dtype(d["dtype"]), None)
    return InputRecord(str(d["name"]), None, None, _unconstant(d["value"]))


def _versions() -> dict[str, str]:
    return {"softipu": f"{_softipu_version()} (build {_softipu_build()[:12]})",
            "torch": str(torch.__version__), "numpy": str(np.__version__),
            "Python": ".".join(map(str, sys.version_info[:2]))}


def _listed(versions: Any) -> str:
    return ", ".join(f"{name} {version}" for name, version in sorted(dict(versions).items()))


def _short(value: Any) -> str:
    text = value.name if isinstance(value, Target) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _mismatches(info: dict[str, Any], parts: dict[str, str], module: torch.nn.Module,
                options: Options) -> list[str]:
    """What differs between an export's key parts (``info``) and this module and options'."""
    stored, found = info.get("parts") or {}, []
    if stored.get("versions") != parts["versions"]:
        found.append(f"it was exported with {_listed(info.get('versions', {}))}; this is "
                     f"{_listed(_versions())}")
    if stored.get("options") != parts["options"]:
        was = info.get("options", {})
        for name, digest in _option_digests(options).items():
            if name in was and was[name][0] == digest:
                continue
            here, there = _short(getattr(options, name)), was.get(name, [None, "absent"])[1]
            found.append(f"option {name} is {here} here, {there} in the file" if here != there else
                         f"option {name} differs from the file's in a detail ({here} in short)")
    if stored.get("module") != parts["module"]:
        found += _state_mismatches(info.get("state", []), module) or [
            f"the code, classes or attributes (hyperparameters, hooks) of {type(module).__name__} "
            "differ from the exported module's, whose parameters and buffers were the same"]
    if stored.get("lowerings") != parts["lowerings"]:
        found.append("the registered ATen lowerings differ (one was registered, removed or changed since)")
    if stored.get("inputs") != parts["inputs"]:
        found.append("its input signature does not match its key (a damaged file)")
    return found


def _state_mismatches(stored: list[Any], module: torch.nn.Module) -> list[str]:
    def described(shape: Any, dtype: str) -> str:
        return f"{dtype.removeprefix('torch.')}{list(shape)}"
    was = {str(name): described(shape, str(dtype)) for name, shape, dtype in stored}
    now = {name: described(t.shape, str(t.dtype)) for name, t in _module_state(module).items()}
    found = [f"{name} is {now[name]} here, {was[name]} in the file" for name in now
             if name in was and now[name] != was[name]]
    missing, extra = [n for n in was if n not in now], [n for n in now if n not in was]
    if missing:
        found.append(f"the module has no {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
    if extra:
        found.append(f"the file has no {', '.join(extra[:4])}{' ...' if len(extra) > 4 else ''}")
    return found
