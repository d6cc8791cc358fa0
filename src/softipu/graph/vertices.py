"""Columnar vertex tables: a compute set's vertices, grouped by codelet and field sizes.

Vertices added one at a time land in a :class:`PendingGroup` keyed by (codelet, field lengths):
one column per field, no object per vertex. The compiler turns each pending group into one
batched layout. ``add_vertices`` stores a :class:`BulkGroup` directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from softipu.debug import SourceLocation, at
from softipu.errors import FieldError
from softipu.graph.tensor import Tensor
from softipu.graph.vertex import Direction, Vertex

__all__ = ["BulkGroup", "PendingGroup", "VertexTable", "field_lengths"]


@dataclass(frozen=True, slots=True, eq=False)
class BulkGroup:
    """Vertices of one codelet whose fields are rows of ``(vertices, n)`` tensors."""

    codelet: type[Vertex]
    tiles: np.ndarray  # int32, one per vertex
    fields: dict[str, Any]  # name -> Tensor (V, n) | tuple of Tensors | param ndarray (V,)
    location: SourceLocation

    @property
    def num_vertices(self) -> int:
        return int(self.tiles.shape[0])


class PendingGroup:
    """Vertices added one at a time that share a codelet and field lengths."""

    __slots__ = ("codelet", "tiles", "columns", "locations", "indices")

    def __init__(self, codelet: type[Vertex]) -> None:
        self.codelet = codelet
        self.tiles: list[int] = []
        self.columns: dict[str, list[Any]] = {name: [] for name in codelet.fields}
        self.locations: list[SourceLocation] = []
        self.indices: list[int] = []

    def append(self, index: int, tile: int, values: dict[str, Any], location: SourceLocation) -> None:
        self.indices.append(index)
        self.tiles.append(tile)
        self.locations.append(location)
        for name, column in self.columns.items():
            column.append(values[name])

    @property
    def num_vertices(self) -> int:
        return len(self.tiles)


def field_lengths(codelet: type[Vertex], values: dict[str, Any]) -> tuple:
    """The grouping key: each non-param field's length (a tuple for vector lists)."""
    key = []
    for name, f in codelet.fields.items():
        if f.direction is Direction.PARAM:
            continue
        v = values[name]
        key.append(v.numel if isinstance(v, Tensor) else tuple(t.numel for t in v))
    return tuple(key)


class VertexTable:
    """All vertices of one compute set."""

    __slots__ = ("compute_set", "pending", "bulk", "bulk_starts", "count", "unfinished", "_codelets")

    def __init__(self, compute_set: Any) -> None:
        self.compute_set = compute_set
        self.pending: dict[tuple, PendingGroup] = {}
        self.bulk: list[BulkGroup] = []
        self.bulk_starts: list[int] = []  # index of each bulk group's first vertex
        self.count = 0
        self.unfinished: dict[int, tuple[type[Vertex], int, dict[str, Any], SourceLocation]] = {}
        self._codelets: dict[int, type[Vertex]] = {}

    def add(self, codelet: type[Vertex], tile: int, values: dict[str, Any],
            location: SourceLocation) -> int:
        index = self.count
        self.count += 1
        self._codelets[index] = codelet
        if len(values) == len(codelet.fields):
            self._file(index, codelet, tile, values, location)
        else:
            self.unfinished[index] = (codelet, tile, values, location)
        return index

    def _file(self, index: int, codelet: type[Vertex], tile: int, values: dict[str, Any],
              location: SourceLocation) -> None:
        key = (codelet, field_lengths(codelet, values))
        group = self.pending.get(key)
        if group is None:
            group = self.pending[key] = PendingGroup(codelet)
        group.append(index, tile, values, location)

    def add_bulk(self, group: BulkGroup) -> range:
        first = self.count
        self.count += group.num_vertices
        self.bulk.append(group)
        self.bulk_starts.append(first)
        return range(first, self.count)

    def codelet_of(self, index: int) -> type[Vertex]:
        codelet = self._codelets.get(index)
        if codelet is None:
            how = ("was added with add_vertices; connect its fields there" if 0 <= index < self.count
                   else f"does not exist (the compute set has {self.count} vertices)")
            raise FieldError(f"vertex {index} of compute set {self.compute_set.name!r} {how}")
        return codelet

    def connect(self, index: int, name: str, value: Any, location: SourceLocation) -> None:
        entry = self.unfinished.get(index)
        if entry is None or name in entry[2]:
            raise FieldError(
                f"field {name!r} of vertex {index} ({self.codelet_of(index).__name__}) in compute "
                f"set {self.compute_set.name!r}{at(location)} is already connected"
            )
        codelet, tile, values, first_location = entry
        values[name] = value
        if len(values) == len(codelet.fields):
            del self.unfinished[index]
            self._file(index, codelet, tile, values, first_location)
