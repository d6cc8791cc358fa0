"""What every op shares: argument checks, option parsing, outputs, and tile-local work splitting.

Every op has the signature ``op(graph, *inputs, prog, *, name="", options=None) -> Tensor`` and
appends its work to ``prog`` (a ``program.Sequence``). Errors name the op, the shapes and the
user's source line.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from softipu.debug import at, caller_location
from softipu.dtypes import DType
from softipu.errors import SoftIPUError
from softipu.graph import program as P
from softipu.graph.graph import ComputeSet, Graph
from softipu.graph.tensor import Slabs, Tensor
from softipu.ops.mapping import map_linearly

__all__ = ["OpError", "OpContext", "parse_options", "broadcast_shapes", "tile_regions", "rows_of",
           "storage_order"]


class OpError(SoftIPUError, ValueError):
    """An op got inputs, shapes, dtypes or options it cannot work with."""


@dataclass(frozen=True, slots=True)
class OpContext:
    """One op call: its graph, program, name and the user's line, for outputs and messages."""

    graph: Graph
    prog: P.Sequence
    op: str
    name: str

    @classmethod
    def start(cls, graph: Graph, prog: Any, op: str, name: str, *inputs: Any) -> OpContext:
        if not isinstance(graph, Graph):
            raise OpError(f"{op}: the first argument must be the graph, got {type(graph).__name__}")
        if not isinstance(prog, P.Sequence):
            raise OpError(f"{op}{at(caller_location())}: prog must be a program.Sequence to append "
                          f"to, got {type(prog).__name__}")
        for i, t in enumerate(inputs):
            if not isinstance(t, Tensor):
                raise OpError(f"{op}{at(caller_location())}: input {i} must be a tensor, got "
                              f"{type(t).__name__}")
            if t.graph is not graph.root:  # a virtual graph's tensors are its root's
                raise OpError(f"{op}{at(caller_location())}: tensor {t.name} belongs to another graph")
        return cls(graph, prog, op, name or op)

    def error(self, message: str) -> OpError:
        return OpError(f"{self.op} {self.name!r}{at(caller_location())}: {message}")

    def compute_set(self, stage: str = "") -> ComputeSet:
        return self.graph.add_compute_set(f"{self.name}/{stage}" if stage else self.name, op=self.op)

    def execute(self, cs: ComputeSet) -> None:
        self.prog.add(P.Execute(cs))

    def output(self, dtype: DType, shape: Sequence[int], suffix: str = "out",
               grain_size: int | None = None) -> Tensor:
        """A new variable mapped linearly over the tiles in vector-sized grains."""
        t = self.graph.add_variable(dtype, tuple(shape), name=f"{self.name}/{suffix}")
        grain = grain_size or max(1, self.graph.target.vector_width(dtype.itemsize))
        map_linearly(self.graph, t, grain_size=grain, min_elements_per_tile=grain * 8)
        return t


def parse_options(ctx: OpContext, options: Mapping[str, Any] | None,
                  defaults: Mapping[str, Any]) -> dict[str, Any]:
    """``defaults`` updated by ``options``; unknown keys and wrong types are errors."""
    out = dict(defaults)
    for key, value in (options or {}).items():
        if key not in defaults:
            near = difflib.get_close_matches(key, list(defaults), n=2)
            hint = f"; did you mean {' or '.join(map(repr, near))}?" if near else ""
            raise ctx.error(f"unknown option {key!r}{hint}; options are {sorted(defaults)}")
        want = type(defaults[key])
        if defaults[key] is not None and not isinstance(value, want) and not (
                want is float and isinstance(value, int) and not isinstance(value, bool)):
            raise ctx.error(f"option {key!r} takes a {want.__name__}, got {value!r}")
        out[key] = value
    return out


def broadcast_shapes(ctx: OpContext, *shapes: tuple[int, ...]) -> tuple[int, ...]:
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        raise ctx.error(f"shapes {', '.join(map(str, shapes))} do not broadcast together") from None


def tile_regions(graph: Graph, t: Tensor, max_elements: int | None = None):
    """Contiguous pieces of ``t``'s flattened elements that live on one tile.

    Returns (starts, lengths, tiles): element offsets into ``t.flatten()``. Pieces longer than
    ``max_elements`` are cut so no vertex gets too much work.
    """
    starts, lengths, tile_of = _mapped_pieces(graph, t)
    if max_elements:
        pieces = -(-lengths // max_elements)
        if np.any(pieces > 1):
            parent = np.repeat(np.arange(starts.size), pieces)
            k = np.arange(parent.size) - np.repeat(np.cumsum(pieces) - pieces, pieces)
            starts = starts[parent] + k * max_elements
            lengths = np.minimum(max_elements, lengths[parent] - k * max_elements)
            tile_of = tile_of[parent]
    return starts, lengths, tile_of.astype(np.int64)


def _mapped_pieces(graph: Graph, t: Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(starts, lengths, tiles) of ``t``'s flattened elements, one piece per tile change."""
    if t.numel and t.is_contiguous():
        # Read the mapping's intervals directly: no per-element address list.
        m = graph.resolved_mapping(t.dtype)
        lo, hi = t.offset, t.offset + t.numel
        i0 = np.searchsorted(m.ends, lo, side="right")
        i1 = np.searchsorted(m.starts, hi, side="left")
        starts, ends = np.maximum(m.starts[i0:i1], lo), np.minimum(m.ends[i0:i1], hi)
        if int((ends - starts).sum()) == t.numel:  # fully mapped: the pieces are the regions
            return starts - lo, ends - starts, m.tiles[i0:i1].astype(np.int64)
    tiles = graph.tile_of(t).reshape(-1)
    if tiles.size == 0:
        z = np.zeros(0, np.int64)
        return z, z, z
    breaks = np.flatnonzero(np.diff(tiles)) + 1
    starts = np.concatenate(([0], breaks)).astype(np.int64)
    lengths = np.diff(np.concatenate((starts, [tiles.size])))
    return starts, lengths, tiles[starts].astype(np.int64)


def rows_of(flat: Tensor, starts: np.ndarray, length: int) -> Tensor:
    """A (len(starts), length) tensor whose row i is ``flat[starts[i] : starts[i] + length]``.

    Strided (zero-copy for the engine) when the starts are evenly spaced and ``flat`` is strided;
    indexed otherwise.
    """
    num = starts.size
    if flat.is_strided and flat.ndim == 1:
        step = int(starts[1] - starts[0]) if num > 1 else 0
        if num <= 1 or np.all(np.diff(starts) == step):
            first = int(starts[0]) if num else 0
            stride = flat.strides[0]
            return Tensor(flat.graph, flat.dtype, (num, length), flat.offset + first * stride,
                          (step * stride, stride))
    if flat.slabs is not None and flat.ndim == 1 and num > 1 and np.all(np.diff(starts) == length):
        first = int(starts[0])  # back-to-back rows of a grouped view: a slice and a reshape of it
        rows = flat[first : first + num * length].reshape(num, length)
        if rows.is_strided or rows.slabs is not None:
            return rows
    if flat.is_strided and flat.ndim == 1 and num > 1:
        slabs = _row_slabs(flat, starts, length)
        if slabs is not None:
            return Tensor(flat.graph, flat.dtype, (num, length), 0, (), None, slabs)
    positions = starts[:, None] + np.arange(length)
    if flat.is_strided and flat.ndim == 1:  # irregular rows: only their addresses, not all of flat's
        index = flat.offset + positions * flat.strides[0]
    else:
        index = flat.addresses().reshape(-1)[positions]
    return Tensor(flat.graph, flat.dtype, (num, length), 0, (), index)


def _row_slabs(flat: Tensor, starts: np.ndarray, length: int) -> Slabs | None:
    """Irregular rows of a strided 1-D tensor as a slab layout: rows whose starts step evenly
    are one strided piece, so a field costs a few ints per piece, not an int64 per element
    (a vocabulary-wide reduction's pieces: tens of millions of addresses). None when the pieces
    would average fewer than 64 elements (an index is then as small)."""
    n = starts.size
    step = np.diff(starts)
    change = np.flatnonzero(step[1:] != step[:-1]) + 1
    run_end = np.concatenate((change, [n - 1]))  # the end of each run of equal steps
    run_of = np.repeat(np.arange(run_end.size), np.diff(np.concatenate(([0], run_end))))
    bounds, i, budget = [], 0, n * length // 64
    while i < n:  # greedy: a piece takes the rows that keep its first row's step
        j = n if i == n - 1 else int(run_end[run_of[i]]) + 1
        bounds.append((i, j))
        i = j
        if len(bounds) > budget:
            return None
    stride = flat.strides[0]
    pieces = tuple((flat.offset + int(starts[a]) * stride, (b - a, length),
                    (int(starts[a + 1] - starts[a]) * stride if b - a > 1 else 0, stride), (b - a, length))
                   for a, b in bounds)
    return Slabs(pieces, 0, (0, 1))


def storage_order(t: Tensor) -> tuple[int, ...]:
    """The axes of ``t`` from slowest to fastest in memory where ``t`` is a dense strided view
    of one block (every element once), else row-major order."""
    rowmajor = tuple(range(t.ndim))
    if not t.is_strided or t.ndim < 2 or t.numel < 2 or t.is_contiguous():
        return rowmajor
    axes = sorted((a for a in rowmajor if t.shape[a] > 1), key=lambda a: -t.strides[a])
    step = 1
    for a in reversed(axes):
        if t.strides[a] != step:
            return rowmajor
        step *= t.shape[a]
    ones = [a for a in rowmajor if t.shape[a] == 1]
    return tuple(ones + axes)
