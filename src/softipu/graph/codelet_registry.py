"""Codelets by name: how a compiled executable refers to vertex types without pickling them.

Every ``Vertex`` subclass is noted when it is created (a hook in ``Vertex.__init_subclass__``):

* a class made at the top level of a module (or nested in such a class) is **static**: its name is
  ``{"module": ..., "qualname": ...}`` and it is found again in this registry, never by importing
  the module (a module not imported in this process is a miss);
* a class made inside a function is **made by a factory** (the library's ``@cache``-d
  ``binary_op_codelet(op, dtype)`` and the like): its name is the factory's module and name and the
  arguments it was called with, JSON-encoded (DTypes, enums, numbers, strings, tuples and frozen
  softipu dataclasses such as ``map``'s ``Expr`` trees). Rebuilding calls that factory again.

A name is only handed out after a check that rebuilding gives the same codelet (the very class, or
one with the same fields and the same code and closure values), so a factory that rebinds its
arguments or keeps state elsewhere makes its classes unnameable rather than wrong. Unnameable
codelets (a user's class defined in a function, a lambda-made factory...) raise
:class:`UnnameableCodelet`; callers such as the executable cache then skip caching.

Factories that may be called when decoding are those seen making a codelet in this process and the
module-level functions of already imported ``softipu.*`` modules; decoding never imports anything.

>>> from softipu.graph.vertex import Input, Output, Vertex
>>> from softipu.dtypes import float32
>>> def make(scale):
...     class Scale(Vertex):
...         x = Input(float32)
...         y = Output(float32)
...         @staticmethod
...         def compute(x, y):
...             y[...] = x * scale
...     return Scale
>>> try:
...     codelet_name(make(2.0))
... except UnnameableCodelet as exc:
...     "module-level" in str(exc)
True
"""

from __future__ import annotations

import dataclasses
import enum
import sys
import types
import weakref
from typing import Any

import numpy as np

from softipu.dtypes import DType, as_dtype
from softipu.errors import CodeletError

__all__ = ["UnnameableCodelet", "note_codelet", "codelet_name", "rebuild_codelet", "encode_arg",
           "decode_arg"]


class UnnameableCodelet(CodeletError):
    """A codelet that cannot be named for rebuilding in another process (or a name that cannot be
    resolved here)."""


@dataclasses.dataclass(frozen=True, slots=True)
class _Origin:
    code: types.CodeType  # the factory's code
    module: str
    args: tuple[Any, ...] | None  # positional arguments as bound at class creation; None: *args/**kw
    kwargs: dict[str, Any]  # keyword-only arguments


_STATIC: dict[tuple[str, str], weakref.ref] = {}
_ORIGINS: weakref.WeakKeyDictionary[type, _Origin] = weakref.WeakKeyDictionary()
_NAMES: weakref.WeakKeyDictionary[type, Any] = weakref.WeakKeyDictionary()  # name, or the failure
_FACTORIES: dict[tuple[str, str], Any] = {}  # factories seen making a codelet in this process
_SKIP_FILES = frozenset({__file__.removesuffix("codelet_registry.py") + "vertex.py", __file__})
_VARARGS = 0x04 | 0x08  # CO_VARARGS | CO_VARKEYWORDS


# -- noting classes as they are made -------------------------------------------------------------
def note_codelet(cls: type) -> None:
    """Record where ``cls`` was made (called by ``Vertex.__init_subclass__``)."""
    frame = sys._getframe(1)
    while frame is not None and (frame.f_code.co_filename in _SKIP_FILES
                                 or frame.f_code.co_name == "__init_subclass__"):
        frame = frame.f_back
    if frame is None:
        return
    code = frame.f_code
    namespace = frame.f_locals
    # A class body's code has no CO_NEWLOCALS (0x02); a class statement in a function has
    # "<locals>" in its qualname while it is being made.
    in_class_body = "__module__" in namespace and "__qualname__" in namespace and not code.co_flags & 0x02
    if "<locals>" not in cls.__qualname__ and (code.co_name == "<module>" or in_class_body):
        _STATIC[(cls.__module__, cls.__qualname__)] = weakref.ref(cls)
        return
    args, kwargs = None, {}
    names = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
    if not code.co_flags & _VARARGS and all(n in namespace for n in names):
        args = tuple(namespace[n] for n in names[: code.co_argcount])
        kwargs = {n: namespace[n] for n in names[code.co_argcount :]}
    _ORIGINS[cls] = _Origin(code, str(frame.f_globals.get("__name__", "")), args, kwargs)


# -- naming ----------------------------------------------------------------------------------------
def codelet_name(cls: type) -> dict[str, Any]:
    """A JSON-able name from which :func:`rebuild_codelet` makes ``cls`` (or an equivalent class)
    again; raises :class:`UnnameableCodelet` saying why not."""
    found = _NAMES.get(cls)
    if found is None:
        try:
            found = _name_of(cls)
        except UnnameableCodelet as exc:
            found = exc
        _NAMES[cls] = found
    if isinstance(found, UnnameableCodelet):
        raise found
    return found


def _name_of(cls: type) -> dict[str, Any]:
    label = f"codelet {cls.__name__} (from {cls.__module__})"
    origin = _ORIGINS.get(cls)
    if origin is None:
        ref = _STATIC.get((cls.__module__, cls.__qualname__))
        if ref is None or ref() is not cls:
            raise UnnameableCodelet(f"{label} was not made at module level or by a factory softipu saw")
        return {"module": cls.__module__, "qualname": cls.__qualname__}
    if origin.args is None:
        raise UnnameableCodelet(f"{label}: its factory takes *args or **kwargs")
    factory = _find_factory(origin)
    if factory is None:
        raise UnnameableCodelet(f"{label} was made inside a function that is not a module-level "
                                f"factory of {origin.module} (define codelets at module level, or "
                                "in a module-level factory function)")
    qualname = factory.__name__
    try:
        encoded = [encode_arg(a) for a in origin.args]
        encoded_kw = {k: encode_arg(v) for k, v in origin.kwargs.items()}
    except TypeError as exc:
        raise UnnameableCodelet(f"{label}: an argument of {qualname} cannot be named ({exc})") from None
    name = {"factory": [origin.module, qualname], "args": encoded, "kwargs": encoded_kw}
    _FACTORIES[(origin.module, qualname)] = factory
    try:
        rebuilt = rebuild_codelet(name)
    except Exception as exc:  # a factory refusing its own arguments: not nameable
        raise UnnameableCodelet(f"{label}: calling {qualname} again failed: {exc}") from None
    if not same_codelet(cls, rebuilt):
        raise UnnameableCodelet(f"{label}: calling {origin.module}.{qualname} with the arguments it was "
                                "made with gives a different codelet")
    return name


def _find_factory(origin: _Origin) -> Any:
    """The module-level, cached function whose code made the class (calling it again with the same
    arguments returns the cached class without running the body: naming runs no user code)."""
    module = sys.modules.get(origin.module)
    if module is None:
        return None
    for value in list(vars(module).values()):
        if isinstance(value, types.FunctionType) or not callable(getattr(value, "cache_info", None)):
            continue
        fn = getattr(value, "__wrapped__", None)
        if isinstance(fn, types.FunctionType) and fn.__code__ is origin.code:
            return value
    return None


# -- rebuilding ------------------------------------------------------------------------------------
def rebuild_codelet(name: Any) -> type:
    """The codelet a name stands for, from this registry; :class:`UnnameableCodelet` on a miss."""
    from softipu.graph.vertex import Vertex  # noqa: PLC0415 - vertex.py imports this module

    if not isinstance(name, dict):
        raise UnnameableCodelet(f"not a codelet name: {name!r}")
    if "module" in name:
        ref = _STATIC.get((str(name["module"]), str(name["qualname"])))
        cls = ref() if ref is not None else None
        if cls is None:
            raise UnnameableCodelet(f"no codelet {name['module']}.{name['qualname']} in this process "
                                    "(is its module imported?)")
        return cls
    module, qualname = name["factory"]
    factory = _factory(str(module), str(qualname))
    kwargs = {str(k): decode_arg(v) for k, v in name.get("kwargs", {}).items()}
    cls = factory(*(decode_arg(a) for a in name["args"]), **kwargs)
    if not (isinstance(cls, type) and issubclass(cls, Vertex)):
        raise UnnameableCodelet(f"{module}.{qualname} did not make a codelet")
    return cls


def _factory(module: str, qualname: str) -> Any:
    found = _FACTORIES.get((module, qualname))
    if found is not None:
        return found
    loaded = sys.modules.get(module)
    value = vars(loaded).get(qualname) if loaded is not None and module.startswith("softipu.") else None
    inner = getattr(value, "__wrapped__", None)
    if not (callable(getattr(value, "cache_info", None)) and isinstance(inner, types.FunctionType)
            and inner.__module__ == module):
        raise UnnameableCodelet(f"no codelet factory {module}.{qualname} in this process")
    return value


# -- equivalence -----------------------------------------------------------------------------------
def same_codelet(a: type, b: type) -> bool:
    """True when ``b`` behaves as ``a``: the same class, or the same name, bases, fields and
    class attributes, with functions of the same code over equal closure values."""
    if a is b:
        return True
    if a.__name__ != b.__name__ or a.__bases__ != b.__bases__:
        return False
    skip = {"__dict__", "__weakref__", "__doc__", "defined_at", "__qualname__"}
    da = {k: v for k, v in vars(a).items() if k not in skip}
    db = {k: v for k, v in vars(b).items() if k not in skip}
    return da.keys() == db.keys() and all(_same(da[k], db[k], 0) for k in da)


def _same(x: Any, y: Any, depth: int) -> bool:
    if x is y:
        return True
    if type(x) is not type(y) or depth > 6:
        return False
    if isinstance(x, (staticmethod, classmethod)):
        return _same(x.__func__, y.__func__, depth + 1)
    if isinstance(x, types.FunctionType):
        return _same_function(x, y, depth)
    if isinstance(x, np.ndarray):
        return x.dtype == y.dtype and x.shape == y.shape and bool(np.array_equal(x, y, equal_nan=True))
    if isinstance(x, (tuple, list)):
        return len(x) == len(y) and all(_same(p, q, depth + 1) for p, q in zip(x, y, strict=True))
    if isinstance(x, dict):
        return x.keys() == y.keys() and all(_same(x[k], y[k], depth + 1) for k in x)
    try:
        return bool(x == y)
    except Exception:  # noqa: BLE001 - values without a usable ==: not provably the same
        return False


def _same_function(f: types.FunctionType, g: types.FunctionType, depth: int) -> bool:
    if f.__code__ is not g.__code__ or not _same(f.__defaults__, g.__defaults__, depth + 1):
        return False
    cells_f, cells_g = f.__closure__ or (), g.__closure__ or ()
    if len(cells_f) != len(cells_g):
        return False
    for p, q in zip(cells_f, cells_g, strict=True):
        try:
            vp, vq = p.cell_contents, q.cell_contents
        except ValueError:  # an empty cell
            return False
        if isinstance(vp, type) and isinstance(vq, type) and vp is not vq:
            if not (_ORIGINS.get(vp) or _STATIC.get((vp.__module__, vp.__qualname__))):
                return False
            if not same_codelet(vp, vq):
                return False
        elif not _same(vp, vq, depth + 1):
            return False
    return True


# -- arguments -------------------------------------------------------------------------------------
def encode_arg(value: Any) -> Any:
    """A JSON-able form of a factory argument; TypeError for values that have none."""
    if isinstance(value, enum.Enum):
        cls = type(value)
        return {"enum": [cls.__module__, cls.__qualname__], "name": _member_name(value)}
    if value is None or type(value) in (bool, str):
        return value
    if isinstance(value, int):
        return value if type(value) is int else _fail(value)
    if isinstance(value, float):
        return {"float": repr(value)} if type(value) is float else _fail(value)  # keeps nan, -0.0
    if isinstance(value, DType):
        return {"dtype": value.name}
    if isinstance(value, tuple):
        return {"tuple": [encode_arg(v) for v in value]}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _encode_dataclass(value)
    return _fail(value)


def _fail(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} value {value!r}")


def _member_name(value: enum.Enum) -> Any:
    if value.name is not None and type(value)[value.name] is value:
        return value.name
    return int(value.value) if isinstance(value, enum.Flag) else _fail(value)


def _encode_dataclass(value: Any) -> dict[str, Any]:
    cls = type(value)
    params = getattr(cls, "__dataclass_params__", None)
    if not cls.__module__.startswith("softipu.") or params is None or not params.frozen:
        _fail(value)
    fields = {f.name: encode_arg(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
    return {"dataclass": [cls.__module__, cls.__qualname__], "fields": fields}


def decode_arg(obj: Any) -> Any:
    """The value :func:`encode_arg` encoded; only softipu's own enums and frozen dataclasses are
    made, looked up among modules already imported."""
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, dict) and len(obj) >= 1:
        if "float" in obj:
            return float(obj["float"])
        if "dtype" in obj:
            return as_dtype(str(obj["dtype"]))
        if "tuple" in obj:
            return tuple(decode_arg(v) for v in obj["tuple"])
        if "enum" in obj:
            cls = _softipu_class(obj["enum"])
            if not issubclass(cls, enum.Enum):
                raise UnnameableCodelet(f"{cls.__qualname__} is not an enum")
            name = obj["name"]
            return cls[name] if isinstance(name, str) else cls(int(name))
        if "dataclass" in obj:
            cls = _softipu_class(obj["dataclass"])
            params = getattr(cls, "__dataclass_params__", None)
            if params is None or not params.frozen:
                raise UnnameableCodelet(f"{cls.__qualname__} is not a frozen dataclass")
            return cls(**{str(k): decode_arg(v) for k, v in obj["fields"].items()})
    raise UnnameableCodelet(f"not an encoded codelet argument: {obj!r}")


def _softipu_class(path: Any) -> type:
    module, qualname = str(path[0]), str(path[1])
    loaded = sys.modules.get(module) if module.startswith("softipu.") else None
    value: Any = loaded
    for part in qualname.split("."):
        value = vars(value).get(part) if value is not None else None
    if not isinstance(value, type):
        raise UnnameableCodelet(f"no softipu class {module}.{qualname} in this process")
    return value
