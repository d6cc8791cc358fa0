"""Rows too long for one vertex, cut into pieces over the tiles that hold them.

A row op (softmax, a running scan) whose row is longer than a vertex takes
(``ROW_VERTEX_ELEMENTS``) would put the whole row, its output and the vertex's work on one tile:
a (4, 65536) fp32 softmax is 256 KB a row. Here each row is cut into ``pieces`` equal pieces
(the last may be shorter); piece ``(r, j)`` runs on the tile holding its middle element of the
input, and its output piece lives there. The ops then run as poplibs runs them on a tensor
spread over tiles: a pass over each piece writing one partial per piece, a combine step per row
over its pieces' partials (on the tile of the row's first piece), and a pass over each piece
again that reads its row's combined value (one element, exchanged). Nothing but partials and
row values moves between tiles.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from softipu.dtypes import DType
from softipu.graph.graph import ComputeSet
from softipu.graph.tensor import Tensor
from softipu.ops.common import OpContext, rows_of
from softipu.ops.nn._common import ROW_VERTEX_ELEMENTS, _map_pieces, _tiles_at

__all__ = ["RowPieces", "plan_pieces", "needs_pieces", "piece_output", "piece_values", "piece_constant",
           "row_values", "add_piece_vertices", "add_row_vertices"]

# A piece is at least this long when rows are spread for parallelism (not for memory).
MIN_PIECE = 256


def needs_pieces(n: int) -> bool:
    """Whether rows of ``n`` elements are cut into pieces (longer than one row vertex holds)."""
    return n > ROW_VERTEX_ELEMENTS


@dataclass(frozen=True, slots=True)
class RowPieces:
    """``rows`` rows of ``n``; piece ``(r, j)`` is ``[j * length, min((j + 1) * length, n))`` of row
    ``r`` and runs on ``tiles[r, j]``."""

    rows: int
    n: int
    length: int
    pieces: int
    tiles: np.ndarray  # (rows, pieces) int64

    @property
    def last(self) -> int:
        """The length of each row's last piece."""
        return self.n - (self.pieces - 1) * self.length

    def groups(self) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
        """(rows, piece numbers, piece length) of the pieces of one length: the full ones, then the
        last piece of each row when it is shorter."""
        full = self.pieces if self.last == self.length else self.pieces - 1
        if full:
            r, j = (a.ravel() for a in np.meshgrid(np.arange(self.rows), np.arange(full), indexing="ij"))
            yield r, j, self.length
        if full < self.pieces:
            yield np.arange(self.rows), np.full(self.rows, self.pieces - 1), self.last

    def starts(self) -> np.ndarray:
        """Each piece's first position in its row, ``(pieces,)``."""
        return np.arange(self.pieces, dtype=np.int64) * self.length


def plan_pieces(ctx: OpContext, x2: Tensor, most: int | None = None) -> RowPieces:
    """Pieces of each row of ``x2`` (``(rows, n)``): at most ``ROW_VERTEX_ELEMENTS`` long, and
    enough of them to give every worker of the tiles a piece when rows are few, but no more than
    ``most`` a row where more pieces cost more steps (sort's merge rounds) unless the length needs
    them."""
    rows, n = x2.shape
    target = ctx.graph.target
    want = min(-(-(target.num_tiles * target.workers_per_tile) // rows), n // MIN_PIECE, most or n)
    pieces = max(-(-n // ROW_VERTEX_ELEMENTS), want, 1)
    length = -(-n // pieces)
    pieces = -(-n // length)
    r, j = np.meshgrid(np.arange(rows), np.arange(pieces), indexing="ij")
    middle = np.minimum(j * length + length // 2, n - 1)
    tiles = _tiles_at(ctx, x2, (r, middle)).reshape(rows, pieces)
    return RowPieces(rows, n, length, pieces, tiles)


def piece_output(ctx: OpContext, plan: RowPieces, dtype: DType, suffix: str) -> Tensor:
    """A ``(rows, n)`` variable whose pieces live on their vertices' tiles."""
    t = ctx.graph.add_variable(dtype, (plan.rows, plan.n), name=f"{ctx.name}/{suffix}")
    for r, j, length in plan.groups():
        _map_pieces(ctx.graph, t.flatten(), r * plan.n + j * plan.length, np.full(r.size, length),
                    plan.tiles[r, j])
    return t


def piece_values(ctx: OpContext, plan: RowPieces, dtype: DType, suffix: str) -> Tensor:
    """A ``(rows, pieces)`` variable of one value per piece, each on its piece's tile."""
    t = ctx.graph.add_variable(dtype, (plan.rows, plan.pieces), name=f"{ctx.name}/{suffix}")
    ctx.graph.set_tile_mappings(t.reshape(plan.rows * plan.pieces, 1), plan.tiles.reshape(-1))
    return t


def piece_constant(ctx: OpContext, plan: RowPieces, dtype: DType, values: np.ndarray, suffix: str) -> Tensor:
    """A ``(rows, pieces)`` constant, each value on its piece's tile."""
    t = ctx.graph.add_constant(dtype, (plan.rows, plan.pieces), values, name=f"{ctx.name}/{suffix}")
    ctx.graph.set_tile_mappings(t.reshape(plan.rows * plan.pieces, 1), plan.tiles.reshape(-1))
    return t


def row_values(ctx: OpContext, plan: RowPieces, dtype: DType, suffix: str, width: int = 1) -> Tensor:
    """A ``(rows, width)`` variable, row ``r`` on the tile of its first piece."""
    t = ctx.graph.add_variable(dtype, (plan.rows, width), name=f"{ctx.name}/{suffix}")
    ctx.graph.set_tile_mappings(t, plan.tiles[:, 0])
    return t


def add_piece_vertices(ctx: OpContext, cs: ComputeSet, codelet: type, plan: RowPieces,
                       elements: Mapping[str, Tensor], per_piece: Mapping[str, Tensor] | None = None,
                       per_row: Mapping[str, Tensor] | None = None,
                       params: Mapping[str, Any] | None = None) -> None:
    """One vertex per piece: ``elements`` are ``(rows, n)`` tensors (the vertex gets its piece),
    ``per_piece`` ``(rows, pieces)`` (its one value), ``per_row`` ``(rows, 1)`` (its row's)."""
    for r, j, length in plan.groups():
        fields: dict[str, Any] = dict(params or {})
        for name, t in elements.items():
            fields[name] = rows_of(t.flatten(), r * plan.n + j * plan.length, length)
        for name, t in (per_piece or {}).items():
            fields[name] = rows_of(t.flatten(), r * plan.pieces + j, 1)
        for name, t in (per_row or {}).items():
            fields[name] = rows_of(t.flatten(), r * t.shape[1], t.shape[1])
        ctx.graph.add_vertices(cs, codelet, fields, plan.tiles[r, j])


def add_row_vertices(ctx: OpContext, cs: ComputeSet, codelet: type, plan: RowPieces,
                     fields: Mapping[str, Tensor], params: Mapping[str, Any] | None = None) -> None:
    """The combine step: one vertex per row on the tile of its first piece; each field is a
    ``(rows, m)`` tensor (the vertex gets its row)."""
    batch: dict[str, Any] = dict(params or {})
    rows = np.arange(plan.rows)
    for name, t in fields.items():
        batch[name] = rows_of(t.flatten(), rows * t.shape[1], t.shape[1])
    ctx.graph.add_vertices(cs, codelet, batch, plan.tiles[:, 0])
