"""The vertex contract: what a codelet declares and how the engine calls it.

A codelet is a class with typed fields and a vectorized ``compute``::

    class AddOne(sp.Vertex):
        x = sp.Input(sp.float32)      # a 1-D vector field
        y = sp.Output(sp.float32)

        @staticmethod
        def compute(x, y):            # once per batch of same-shape vertices
            y[...] = x + 1

        @staticmethod
        def cycles(x, y):             # per-vertex cycle estimate from the field lengths (ints)
            return 20 + x

``compute`` receives one numpy array per field, batched over every vertex of a compute set that
has the same codelet and field sizes. The **last axis** of a vector field is the vector;
leading axes index vertices — ``(vertices, n)``, or ``(replicas, vertices, n)`` when the graph is
replicated. Scalar fields and params arrive as ``(..., vertices, 1)``; a vector-list field
arrives as a list of arrays ``(..., vertices, n_i)``. Input arrays are read-only. Write outputs in
place (``y[...] = ...``, ``np.add(x, 1, out=y)``).

``cycles`` receives each field's length as an int (a tuple of ints for vector lists, 1 for
scalars) and each param as an int/float array over the batch's vertices; it may return an int or
an array. It may also take a ``target`` argument (the chip, for worker counts and vector widths).
``flops`` has the same signature and counts floating-point operations. ``code_bytes`` is the
size of the codelet's code on a tile, for the memory plan (the target's default when unset).
Cycles of a plain ``Vertex`` are one worker's cycles; the cost model spreads a tile's vertices
over its worker contexts. ``MultiVertex`` and ``SupervisorVertex`` estimates are whole-tile
cycles (poplibs' estimators already include the ``workers x`` factor).
"""

from __future__ import annotations

import enum
import inspect
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from softipu.debug import SourceLocation, caller_location
from softipu.dtypes import DType, as_dtype
from softipu.errors import CodeletError
from softipu.graph.codelet_registry import note_codelet

__all__ = [
    "Direction",
    "FieldShape",
    "Field",
    "Input",
    "Output",
    "InOut",
    "Param",
    "Vertex",
    "MultiVertex",
    "SupervisorVertex",
    "VertexKind",
]


class Direction(enum.Enum):
    INPUT = "Input"  # never written by the vertex
    OUTPUT = "Output"  # never read before written
    INOUT = "InOut"
    PARAM = "Param"  # a per-vertex constant (Poplar's setInitialValue on a vertex field)

    @property
    def reads(self) -> bool:
        return self is not Direction.OUTPUT

    @property
    def writes(self) -> bool:
        return self in (Direction.OUTPUT, Direction.INOUT)


class FieldShape(enum.Enum):
    SCALAR = "scalar"  # one element
    VECTOR = "vector"  # Poplar's Vector<T>
    VECTOR_LIST = "vector_list"  # Poplar's VectorList<T>: a jagged list of vectors


class VertexKind(enum.Enum):
    VERTEX = "Vertex"  # runs on one worker
    MULTI_VERTEX = "MultiVertex"  # compute(workerId) on all workers
    SUPERVISOR = "SupervisorVertex"  # runs on the supervisor thread


@dataclass(frozen=True, slots=True)
class Field:
    direction: Direction
    dtype: DType
    shape: FieldShape = FieldShape.VECTOR

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", as_dtype(self.dtype))
        if self.direction is Direction.PARAM and self.shape is not FieldShape.SCALAR:
            raise CodeletError("a Param field is a per-vertex scalar; drop the shape argument")


def Input(dtype: DType, shape: FieldShape = FieldShape.VECTOR) -> Field:  # noqa: N802
    """A field the vertex reads and never writes."""
    return Field(Direction.INPUT, dtype, shape)


def Output(dtype: DType, shape: FieldShape = FieldShape.VECTOR) -> Field:  # noqa: N802
    """A field the vertex writes completely and never reads first; it may live on another tile."""
    return Field(Direction.OUTPUT, dtype, shape)


def InOut(dtype: DType, shape: FieldShape = FieldShape.VECTOR) -> Field:  # noqa: N802
    """A field the vertex reads and writes in place."""
    return Field(Direction.INOUT, dtype, shape)


def Param(dtype: DType) -> Field:  # noqa: N802
    """A per-vertex constant given as a number when the vertex is added."""
    return Field(Direction.PARAM, dtype, FieldShape.SCALAR)


class Vertex:
    """Base class of codelets; subclass it and declare fields, ``compute`` and ``cycles``."""

    fields: ClassVar[dict[str, Field]] = {}
    kind: ClassVar[VertexKind] = VertexKind.VERTEX
    compute: ClassVar[Callable[..., object]]
    cycles: ClassVar[Callable[..., object] | None] = None
    flops: ClassVar[Callable[..., object] | None] = None
    code_bytes: ClassVar[int | None] = None
    # The fields whose rows size the fast engine's cache-sized chunks of a group (None: every
    # data field). A codelet that picks a few elements of a large input names its outputs.
    chunk_fields: ClassVar[tuple[str, ...] | None] = None
    defined_at: ClassVar[SourceLocation]

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        fields: dict[str, Field] = {}
        for klass in reversed(cls.__mro__):
            fields.update({k: v for k, v in vars(klass).items() if isinstance(v, Field)})
        cls.fields = fields
        cls.defined_at = caller_location()
        note_codelet(cls)  # so compiled executables can name it (softipu.graph.codelet_registry)
        if cls.__dict__.get("abstract", False):
            return
        if not fields:
            raise CodeletError(f"codelet {cls.__name__} (at {cls.defined_at}) declares no fields")
        _check_signature(cls, "compute", required=True)
        _check_signature(cls, "cycles", required=False)
        _check_signature(cls, "flops", required=False)

    def __init__(self) -> None:
        raise CodeletError(
            f"codelet {type(self).__name__} is a vertex type, not an object: pass the class to "
            "graph.add_vertex(cs, codelet, fields, tile=...)"
        )


def takes_target(fn: Callable[..., object]) -> bool:
    """Whether a cycles/flops estimator wants the target passed in (its signature is read once:
    the answer is kept beside the function object, and goes when the function does)."""
    try:
        return _TAKES_TARGET[fn]
    except (KeyError, TypeError):
        found = "target" in inspect.signature(fn).parameters
        try:
            _TAKES_TARGET[fn] = found
        except TypeError:  # not weak-referenceable (a builtin): just don't keep it
            pass
        return found


_TAKES_TARGET: weakref.WeakKeyDictionary[Callable[..., object], bool] = weakref.WeakKeyDictionary()


def _check_signature(cls: type[Vertex], method: str, *, required: bool) -> None:
    fn = inspect.getattr_static(cls, method, None)
    if fn is None:
        if required:
            raise CodeletError(
                f"codelet {cls.__name__} (at {cls.defined_at}) has no compute(); add a "
                f"@staticmethod def compute({', '.join(cls.fields)})"
            )
        return
    if not isinstance(fn, staticmethod):
        raise CodeletError(
            f"{cls.__name__}.{method} (at {cls.defined_at}) must be a @staticmethod taking the "
            f"fields by name: ({', '.join(cls.fields)})"
        )
    params = inspect.signature(fn.__func__).parameters
    has_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    names = [n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    missing = [n for n in cls.fields if n not in names and not has_var_kw]
    optional = ("target",) if method != "compute" else ()
    extra = [n for n in names if n not in cls.fields and n not in optional]
    if missing or extra:
        raise CodeletError(
            f"{cls.__name__}.{method} (at {cls.defined_at}) must take exactly the fields "
            f"({', '.join(cls.fields)}){' and optionally target' if optional else ''}; "
            f"missing {missing}, unknown {extra}"
        )


class MultiVertex(Vertex):
    """A vertex whose work is split over all the tile's worker contexts (Poplar's MultiVertex)."""

    abstract = True
    kind = VertexKind.MULTI_VERTEX


class SupervisorVertex(Vertex):
    """A vertex run by the tile's supervisor thread (Poplar's SupervisorVertex)."""

    abstract = True
    kind = VertexKind.SUPERVISOR
