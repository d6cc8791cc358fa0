"""Fingerprints of a module and of softipu itself, for the executable cache's key (cache.py): a
module's classes, methods (their code, constants and closures, followed to a bounded depth), attributes,
parameter and buffer shapes, and softipu's version and build. Moved out of cache.py by section."""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import importlib.metadata
import inspect
import os
import sys
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch


class _Fingerprint:
    def __init__(self) -> None:
        self._h = hashlib.sha256()

    def add(self, *parts: Any) -> None:
        self._h.update(repr(parts).encode())
        self._h.update(b"\0")

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def _digest(*parts: Any) -> str:
    f = _Fingerprint()
    f.add(*parts)
    return f.hexdigest()


def _module_digest(module: torch.nn.Module) -> str:
    f = _Fingerprint()
    _add_module(f, module)
    return f.hexdigest()


def _softipu_version() -> str:
    try:
        return importlib.metadata.version("softipu")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@functools.cache
def _softipu_build() -> str:
    """The version and a hash of every source file of the softipu package (once per process)."""
    root = Path(__file__).resolve().parents[2]
    h = hashlib.sha256(_softipu_version().encode())
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def _file_hash(path: str) -> str:
    try:
        st = os.stat(path)
        key = (path, st.st_mtime_ns, st.st_size)
        found = _FILE_HASHES.get(key)
        if found is None:
            found = _FILE_HASHES[key] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        return found
    except OSError:
        return "unreadable"


def _is_library(module_name: str) -> bool:
    """Code whose version the key already holds (softipu's build, torch's and Python's versions)."""
    top = module_name.split(".", 1)[0]
    return top in ("softipu", "torch", "builtins", "numpy") or top in sys.stdlib_module_names


def _class_identity(cls: type) -> tuple[Any, ...]:
    """A class by name, and by the files defining it and its bases (outside the libraries)."""
    files = []
    for klass in cls.__mro__:
        if _is_library(klass.__module__):
            continue
        source = _class_file(klass)
        files.append((klass.__module__, klass.__qualname__,
                      _file_hash(source) if source else _code_identity_of_class(klass)))
    return (cls.__module__, cls.__qualname__, tuple(files))


def _methods(cls: type) -> list[tuple[str, types.FunctionType]]:
    found = []
    for name, value in sorted(vars(cls).items()):
        fn = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
        if isinstance(fn, types.FunctionType):
            found.append((name, fn))
    return found


def _class_file(cls: type) -> str | None:
    try:
        return inspect.getsourcefile(cls)
    except (TypeError, OSError):  # e.g. a module made from a spec and not in sys.modules
        files = {fn.__code__.co_filename for _, fn in _methods(cls)}
        return next((f for f in sorted(files) if os.path.isfile(f)), None)


def _code_identity_of_class(cls: type) -> str:
    return repr([(name, _code_identity(fn.__code__)) for name, fn in _methods(cls)])


def _code_identity(code: types.CodeType) -> tuple[Any, ...]:
    consts = tuple(_code_identity(c) if isinstance(c, types.CodeType) else repr(c) for c in code.co_consts)
    return (code.co_code, consts, code.co_names)


def _function_identity(fn: types.FunctionType, depth: int) -> tuple[Any, ...]:
    module = fn.__module__ or ""
    if _is_library(module):
        return ("function", module, fn.__qualname__)
    source = fn.__code__.co_filename
    code = _file_hash(source) if os.path.isfile(source) else _code_identity(fn.__code__)
    cells = tuple(_identity(c.cell_contents, depth + 1) if _cell_full(c) else "<empty>"
                  for c in fn.__closure__ or ())
    return ("function", module, fn.__qualname__, code, _code_identity(fn.__code__),
            _identity(fn.__defaults__, depth + 1), cells)


def _cell_full(cell: types.CellType) -> bool:
    try:
        cell.cell_contents  # noqa: B018 - raises ValueError when empty
    except ValueError:
        return False
    return True


def _tensor_identity(t: torch.Tensor) -> tuple[Any, ...]:
    data = t.detach().cpu().contiguous()
    digest = hashlib.sha256(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"").hexdigest()
    return ("tensor", tuple(t.shape), str(t.dtype), digest)


def _identity(value: Any, depth: int = 0) -> Any:
    """A deterministic description of ``value`` for the key (no memory addresses)."""
    if value is None or type(value) in (bool, int, float, str, bytes):
        return (type(value).__name__, repr(value))
    if depth > 4:
        return ("deep", type(value).__qualname__)
    for kind, describe in _DESCRIBE:
        if isinstance(value, kind):
            return describe(value, depth + 1)
    if callable(value) and not hasattr(value, "__dict__"):  # builtins, torch ops
        return ("callable", getattr(value, "__module__", None), getattr(value, "__qualname__", repr(value)))
    if dataclasses.is_dataclass(value):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return ("dataclass", _class_identity(type(value)), _identity(fields, depth + 1))
    if hasattr(value, "__dict__"):
        return ("object", _class_identity(type(value)), _identity(dict(vars(value)), depth + 1))
    text = repr(value)
    return ("value", _class_identity(type(value)), "" if " at 0x" in text else text)


def _mapping_identity(value: Mapping, depth: int) -> Any:
    return ("dict", tuple(sorted((repr(_identity(k, depth)), _identity(v, depth)) for k, v in value.items())))


_DESCRIBE: tuple[tuple[Any, Any], ...] = (
    (enum.Enum, lambda v, d: ("enum", type(v).__module__, type(v).__qualname__, v.name)),
    ((torch.dtype, torch.device, torch.Size), lambda v, d: ("torch", str(v))),
    (torch.nn.Module, lambda v, d: ("module", _class_identity(type(v)))),  # named_modules walks it
    (torch.Tensor, lambda v, d: _tensor_identity(v)),
    ((tuple, list), lambda v, d: (type(v).__name__, tuple(_identity(x, d) for x in v))),
    ((set, frozenset), lambda v, d: ("set", tuple(sorted(repr(_identity(x, d)) for x in v)))),
    (Mapping, _mapping_identity),
    (types.FunctionType, lambda v, d: _function_identity(v, d)),
    (types.MethodType, lambda v, d: ("method", _identity(v.__func__, d), _class_identity(type(v.__self__)))),
    (functools.partial, lambda v, d: ("partial", _identity(v.func, d), _identity(v.args, d),
                                      _identity(v.keywords, d))),
    (type, lambda v, d: ("class", _class_identity(v))),
)


# Module attributes that do not change the exported graph, or that the walk handles itself.
_MODULE_SKIP = frozenset({"training", "_modules", "_parameters", "_buffers"})


def _add_module(f: _Fingerprint, module: torch.nn.Module) -> None:
    first_name: dict[int, str] = {}  # shared tensors export once: which names alias which
    for prefix, sub in module.named_modules(remove_duplicate=False):
        cls = type(sub)
        if getattr(cls, "_softipu_live", False):  # a training model's wrapper: the user's own class
            cls = cls.__mro__[1]
        f.add("module", prefix, _class_identity(cls), tuple(sub._modules))
        for kind in ("_parameters", "_buffers"):
            for name, t in getattr(sub, kind).items():
                full = f"{prefix}.{name}" if prefix else name
                alias = None if t is None else first_name.setdefault(id(t), full)
                f.add(kind, name, None if t is None else (tuple(t.shape), str(t.dtype), alias))
        for name, value in sorted(vars(sub).items()):
            if name in _MODULE_SKIP or name.startswith("_softipu_"):  # a training model's bookkeeping
                continue
            if "hooks" in name and isinstance(value, dict):  # keyed by registration counters
                value = list(value.values())
            f.add("attribute", name, _identity(value))
