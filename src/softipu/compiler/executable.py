"""What the compiler produces: frozen, self-describing artifacts the engine runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from softipu.debug import SourceLocation
from softipu.dtypes import DType
from softipu.errors import CompileError
from softipu.graph.graph import ComputeSet, Variable
from softipu.graph.mapping import ResolvedMapping
from softipu.graph.program import Program
from softipu.graph.streams import DataStream
from softipu.graph.tensor import Tensor
from softipu.graph.vertex import Direction, Vertex
from softipu.target import Target

if TYPE_CHECKING:
    from softipu.compiler.costs import Step
    from softipu.compiler.memory import MemoryPlan

__all__ = ["VertexGroup", "CompiledComputeSet", "Executable"]


@dataclass(frozen=True, slots=True, eq=False)
class VertexGroup:
    """Vertices of one codelet with equal field lengths, run as one batched call.

    Each vector/scalar field is one ``(vertices, n)`` tensor (a strided view when the rows are
    regularly spaced, else indexed); vector lists are tuples of such tensors; params are
    ``(vertices,)`` arrays.
    """

    codelet: type[Vertex]
    tiles: np.ndarray  # int32 (V,)
    fields: dict[str, Any]
    vertex_indices: np.ndarray  # int32 or int64 (V,): index of each vertex in its compute set
    locations: tuple[SourceLocation, ...]  # one per vertex, or one for a bulk group

    def __post_init__(self) -> None:
        v = self.tiles.shape[0]
        if self.vertex_indices.shape != (v,) or len(self.locations) not in (1, v):
            raise CompileError(f"vertex group of {self.codelet.__name__}: columns differ in length")

    @property
    def num_vertices(self) -> int:
        return int(self.tiles.shape[0])

    def location(self, i: int) -> SourceLocation:
        return self.locations[i if len(self.locations) > 1 else 0]

    def tensors(self, name: str) -> tuple[Tensor, ...]:
        """The batched tensors of a non-param field (several for a vector list)."""
        value = self.fields[name]
        return value if isinstance(value, tuple) else (value,)

    def field_items(self, *directions: Direction):
        for name, f in self.codelet.fields.items():
            if f.direction in directions:
                yield name, f


@dataclass(frozen=True, slots=True, eq=False)
class CompiledComputeSet:
    compute_set: ComputeSet
    groups: tuple[VertexGroup, ...]

    @property
    def num_vertices(self) -> int:
        return sum(g.num_vertices for g in self.groups)


@dataclass(frozen=True, slots=True, eq=False)
class Executable:
    """A compiled graph and its programs, ready to load into an engine."""

    target: Target
    replication_factor: int
    space_sizes: dict[DType, int]
    variables: tuple[Variable, ...]
    mappings: dict[DType, ResolvedMapping]
    compute_sets: dict[int, CompiledComputeSet]
    programs: tuple[Program, ...]
    functions: dict[int, Program]
    streams: dict[str, DataStream]
    steps: tuple[Step, ...] = ()
    step_of: dict[int, int] = field(default_factory=dict)  # id(program node) -> step index
    memory: MemoryPlan | None = None
    pass_seconds: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        if not self.programs:
            raise CompileError("an executable needs at least one program")

    @property
    def num_vertices(self) -> int:
        return sum(c.num_vertices for c in self.compute_sets.values())
