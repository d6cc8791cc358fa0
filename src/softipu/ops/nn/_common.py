"""Shared checks, layouts and the two-stage reduction of the nn ops."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from softipu.codelets import nn as C
from softipu.dtypes import DType, float16, float32
from softipu.graph import program as P
from softipu.graph.graph import ComputeSet, Graph
from softipu.graph.tensor import Tensor
from softipu.ops.common import OpContext, parse_options, rows_of, storage_order, tile_regions

__all__: list[str] = []

_FLOATS = (float16, float32)
# A row vertex holds at most this many elements (more rows per vertex only when rows are short):
# one worker's share stays well inside a tile, and the engine's batches stay cache-sized.
ROW_VERTEX_ELEMENTS = 16 * 1024
# Plane (batch norm) vertices get at least this many elements when the tensor is small.
PLANE_VERTEX_MIN_ELEMENTS = 64
_REDUCTIONS = ("mean", "sum", "none")


# -- shared checks and mapping helpers ------------------------------------------------------------
def _start(graph: Graph, prog: Any, op: str, name: str, options: Mapping[str, Any] | None,
           *inputs: Tensor | None, defaults: Mapping[str, Any] | None = None):
    ctx = OpContext.start(graph, prog, op, name, *(t for t in inputs if t is not None))
    return ctx, parse_options(ctx, options, defaults or {})


def _check_float(ctx: OpContext, *tensors: Tensor | None) -> None:
    for t in tensors:
        if t is not None and t.dtype not in _FLOATS:
            raise ctx.error(f"needs float16 or float32 tensors, got {t.name} {t.shape} of {t.dtype}")


def _check_same(ctx: OpContext, a: Tensor, b: Tensor, what: str = "") -> None:
    if a.shape != b.shape:
        raise ctx.error(f"{a.name} {a.shape} and {b.name} {b.shape} must have the same shape{what}")
    if a.dtype != b.dtype:
        raise ctx.error(f"{a.name} ({a.dtype}) and {b.name} ({b.dtype}) must have the same dtype")


def _check_vector(ctx: OpContext, t: Tensor | None, shape: tuple[int, ...], what: str) -> None:
    if t is None:
        return
    if t.shape != shape:
        raise ctx.error(f"{what} {t.name} has shape {t.shape}; expected {shape}")
    _check_float(ctx, t)


def _tiles_at(ctx: OpContext, t: Tensor, index: tuple[np.ndarray, ...]) -> np.ndarray:
    """The tiles of ``t[index]`` (integer arrays per axis), without listing all of t's addresses."""
    if t.is_strided:
        addresses = np.full(np.broadcast(*index).shape, t.offset, np.int64)
        for i, stride in zip(index, t.strides, strict=True):
            addresses = addresses + np.asarray(i, np.int64) * stride
    else:
        addresses = t.index[index]
    tiles = ctx.graph.resolved_mapping(t.dtype).tiles_of(addresses).astype(np.int64)
    if tiles.size and tiles.min() < 0:
        raise ctx.error(f"input {t.name} {t.shape} has elements that are not mapped to a tile; map it "
                        "first (sp.ops.map_linearly)")
    return tiles


def _regions(graph: Graph, t: Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return tile_regions(graph, t)


def _variable(ctx: OpContext, dtype: DType, shape: Sequence[int], suffix: str) -> Tensor:
    return ctx.graph.add_variable(dtype, tuple(shape), name=f"{ctx.name}/{suffix}")


def _map_pieces(graph: Graph, flat: Tensor, starts: np.ndarray, lengths: np.ndarray,
                tiles: np.ndarray) -> None:
    """Map ``flat[starts[i] : starts[i] + lengths[i]]`` to ``tiles[i]``, one call per length."""
    for length in np.unique(lengths).tolist():
        if length:
            pick = lengths == length
            graph.set_tile_mappings(rows_of(flat, starts[pick], length), tiles[pick])


def _output_like(ctx: OpContext, ref: Tensor, dtype: DType, suffix: str = "out") -> Tensor:
    """A new variable of ``ref``'s shape mapped element for element like ``ref`` and, where ``ref``
    is a permuted dense view (a convolution's output is stored channels innermost), laid out in
    the same order, as Poplar's ``Graph::clone`` keeps its input's regions: vertices then read and
    write whole runs, not elements a channel count apart."""
    perm = storage_order(ref)
    out = _variable(ctx, dtype, tuple(ref.shape[a] for a in perm), suffix)
    stored = ref.transpose(perm) if perm != tuple(range(ref.ndim)) else ref
    if ref.numel:
        starts, lengths, tiles = _regions(ctx.graph, stored)
        if tiles.min() < 0:
            raise ctx.error(f"input {ref.name} {ref.shape} is not mapped to tiles; map it first")
        _map_pieces(ctx.graph, out.flatten(), starts, lengths, tiles)
    return out.transpose(tuple(np.argsort(perm))) if stored is not ref else out


def _on_one_tile(ctx: OpContext, t: Tensor, suffix: str) -> Tensor:
    """``t`` itself if it lives on one tile, else a copy gathered onto the tile holding most of it.

    Every vertex reads a shared operand (layer-norm weights) whole: gathered first, each tile
    receives it in one piece from one sender (a multicast), instead of from every tile it was
    spread over — fewer exchange regions on the IPU, and far fewer intervals to price here.
    """
    _, lengths, tiles = _regions(ctx.graph, t)
    if np.unique(tiles).size <= 1:
        return t
    home = int(np.bincount(tiles, weights=lengths).argmax())
    local = _variable(ctx, t.dtype, t.shape, suffix)
    ctx.graph.set_tile_mapping(local, home)
    ctx.prog.add(P.Copy(t, local))
    return local


def _constant(ctx: OpContext, dtype: DType, shape: tuple[int, ...], value: float, suffix: str) -> Tensor:
    """A small constant (default weights, empty results) on tile 0, whole: readers get it by
    multicast, and no gathering copy runs each time."""
    t = ctx.graph.add_constant(dtype, shape, value, name=f"{ctx.name}/{suffix}")
    if t.numel:
        ctx.graph.set_tile_mapping(t, 0)
    return t


def _axis(ctx: OpContext, dim: int, ndim: int, t: Tensor) -> int:
    if not isinstance(dim, (int, np.integer)) or not -max(ndim, 1) <= dim < max(ndim, 1):
        raise ctx.error(f"dim {dim!r} is out of range for {t.name} {t.shape}")
    return int(dim) % max(ndim, 1)


def _reduction(ctx: OpContext, reduction: str) -> str:
    if reduction not in _REDUCTIONS:
        raise ctx.error(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    return reduction


def _by_value(values: np.ndarray) -> Iterator[tuple[Any, np.ndarray]]:
    for v in np.unique(values).tolist():
        yield v, values == v


# -- whole rows per vertex ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Rows:
    """Vertex ``v`` owns rows ``[v k, min((v + 1) k, rows))`` and runs on ``tiles[v]``."""

    rows: int
    k: int
    tiles: np.ndarray  # int64, one per vertex

    def row_tiles(self) -> np.ndarray:
        return np.repeat(self.tiles, self.k)[: self.rows]

    def groups(self) -> Iterator[tuple[int, int, int]]:
        """(first vertex, vertices, rows each): the full vertices, then the short last one."""
        full = self.rows // self.k
        if full:
            yield 0, full, self.k
        if self.rows > full * self.k:
            yield full, 1, self.rows - full * self.k


def _plan_rows(ctx: OpContext, x2: Tensor) -> _Rows:
    """Rows per vertex so that every tile holding rows gets about one vertex per worker."""
    rows, n = x2.shape
    r = np.arange(rows)
    row_tiles = _tiles_at(ctx, x2, (r, np.full(rows, n // 2)))
    used = np.unique(row_tiles).size
    k = max(1, -(-rows // (used * ctx.graph.target.workers_per_tile)))
    k = min(k, max(1, ROW_VERTEX_ELEMENTS // max(n, 1)))
    centres = np.minimum(np.arange(-(-rows // k)) * k + k // 2, rows - 1)
    return _Rows(rows, k, row_tiles[centres])


def _row_output(ctx: OpContext, plan: _Rows, dtype: DType, width: int, suffix: str) -> Tensor:
    """A ``(rows, width)`` variable whose rows live on their vertices' tiles."""
    t = _variable(ctx, dtype, (plan.rows, width), suffix)
    if t.numel:
        ctx.graph.set_tile_mappings(t, plan.row_tiles())
    return t


def _vertex_output(ctx: OpContext, plan: _Rows, width: int, suffix: str) -> Tensor:
    """A ``(vertices, width)`` fp32 variable of per-vertex partials, row ``v`` on vertex v's tile."""
    t = _variable(ctx, float32, (plan.tiles.size, width), suffix)
    ctx.graph.set_tile_mappings(t, plan.tiles)
    return t


def _add_rows(ctx: OpContext, cs: ComputeSet, codelet: type, plan: _Rows,
              per_row: Mapping[str, Tensor], per_vertex: Mapping[str, Tensor] | None = None,
              shared: Mapping[str, Tensor] | None = None, params: Mapping[str, Any] | None = None) -> None:
    """Add the row vertices in one bulk call per row count. ``per_row``: ``(rows, m)`` tensors
    (each vertex gets its rows); ``per_vertex``: ``(vertices, m)``; ``shared``: every vertex
    reads the whole tensor (gathered onto one tile first)."""
    shared = {name: _on_one_tile(ctx, t, f"{name}_gathered") for name, t in (shared or {}).items()}
    for first, count, k in plan.groups():
        fields: dict[str, Any] = dict(params or {})
        starts = first + np.arange(count)
        for name, t in per_row.items():
            m = t.shape[1]
            fields[name] = rows_of(t.flatten(), starts * plan.k * m, k * m)
        for name, t in (per_vertex or {}).items():
            m = t.shape[1]
            fields[name] = rows_of(t.flatten(), starts * m, m)
        for name, t in shared.items():
            fields[name] = t.flatten().reshape(1, t.numel).broadcast((count, t.numel))
        ctx.graph.add_vertices(cs, codelet, fields, plan.tiles[first:first + count])


def _rows_along(ctx: OpContext, x: Tensor, dim: int):
    """``x`` as ``(rows, n)`` with ``dim`` last, and the function mapping a ``(rows, n)`` result
    back to ``x``'s shape."""
    if x.ndim == 0:
        _axis(ctx, dim, 0, x)
        return x.reshape(1, 1), lambda t: t.reshape(())
    d = _axis(ctx, dim, x.ndim, x)
    perm = [i for i in range(x.ndim) if i != d] + [d]
    xt = x.transpose(perm)
    n = x.shape[d]
    rows = math.prod(xt.shape[:-1])
    inverse = tuple(np.argsort(perm).tolist())
    return xt.reshape(rows, n), lambda t: t.reshape(xt.shape).transpose(inverse)


# -- the two-stage column reduction ----------------------------------------------------------------
def _sum_rows(ctx: OpContext, partial: Tensor, row_tiles: np.ndarray | None = None,
              grain: int = 1) -> Tensor:
    """``partial.sum(axis=0)`` in fp32 for a ``(S, C)`` fp32 tensor whose rows lie on tiles.

    Stage A (when ``row_tiles`` says some tile holds several adjacent rows): each tile adds its
    rows. Stage B: blocks of ``grain``-aligned columns, spread over the tiles, add the rows left.
    Returns a ``(C,)`` fp32 tensor mapped in those blocks.
    """
    if row_tiles is not None and partial.shape[0] > 1:
        partial = _reduce_on_tiles(ctx, partial, row_tiles)
    if partial.shape[0] == 1:
        return partial.reshape(partial.shape[1])
    return _reduce_across_tiles(ctx, partial, grain)


def _reduce_on_tiles(ctx: OpContext, partial: Tensor, row_tiles: np.ndarray) -> Tensor:
    rows, cols = partial.shape
    starts = np.flatnonzero(np.diff(row_tiles, prepend=-1))
    counts = np.diff(np.append(starts, rows))
    if counts.max() == 1:
        return partial
    tiles = row_tiles[starts]
    out = _variable(ctx, float32, (starts.size, cols), "reduce/tile_partials")
    ctx.graph.set_tile_mappings(out, tiles)
    cs = ctx.compute_set("reduce/on_tile")
    flat, out_flat = partial.flatten(), out.flatten()
    block = np.arange(starts.size)
    for count, pick in _by_value(counts):
        ctx.graph.add_vertices(cs, C.ReduceAddColumns, {
            "partial": rows_of(flat, starts[pick] * cols, count * cols),
            "out": rows_of(out_flat, block[pick] * cols, cols)}, tiles[pick])
    ctx.execute(cs)
    return out


def _reduce_across_tiles(ctx: OpContext, partial: Tensor, grain: int) -> Tensor:
    rows, cols = partial.shape
    num_tiles = ctx.graph.num_tiles
    units = -(-cols // grain)
    width = grain * -(-units // min(num_tiles, units))
    blocks = -(-cols // width)
    tiles = (np.arange(blocks) * num_tiles) // blocks
    out = _variable(ctx, float32, (cols,), "reduce/sums")
    cs = ctx.compute_set("reduce/cross_tile")
    full = cols // width
    pieces = [(0, full, width)] if full else []
    if cols > full * width:
        pieces.append((full, 1, cols - full * width))
    for first, count, w in pieces:
        lo = first * width
        block_in = partial[:, lo:lo + count * w].reshape(rows, count, w).transpose(1, 0, 2)
        block_out = out[lo:lo + count * w].reshape(count, w)
        ctx.graph.set_tile_mappings(block_out, tiles[first:first + count])
        ctx.graph.add_vertices(cs, C.ReduceAddColumns, {
            "partial": block_in.reshape(count, rows * w), "out": block_out}, tiles[first:first + count])
    ctx.execute(cs)
    return out


def _blocks_of(ctx: OpContext, t: Tensor, grain: int):
    """(first unit, units, tile) of ``t``'s tile regions, in units of ``grain`` elements."""
    starts, lengths, tiles = _regions(ctx.graph, t)
    return starts // grain, lengths // grain, tiles


def _add_blocks(ctx: OpContext, cs: ComputeSet, codelet: type, blocks, fields: Mapping[str, Tensor],
                params: Mapping[str, Any] | None = None) -> None:
    """Vertices over unit blocks (from :func:`_blocks_of`); each field is ``(units, m)``."""
    first, count, tiles = blocks
    for n, pick in _by_value(count):
        batch = dict(params or {})
        for name, t in fields.items():
            m = t.shape[1]
            batch[name] = rows_of(t.flatten(), first[pick] * m, n * m)
        ctx.graph.add_vertices(cs, codelet, batch, tiles[pick])


def _block_output(ctx: OpContext, blocks, dtype: DType, units: int, m: int, suffix: str) -> Tensor:
    """A ``(units, m)`` variable mapped like the blocks."""
    t = _variable(ctx, dtype, (units, m), suffix)
    first, count, tiles = blocks
    _map_pieces(ctx.graph, t.flatten(), first * m, count * m, tiles)
    return t


def _cast(ctx: OpContext, x: Tensor, dtype: DType, scale: float = 1.0, suffix: str = "out") -> Tensor:
    """``x * scale`` as ``dtype`` (a view of ``x`` when nothing changes), mapped like ``x``."""
    if x.dtype is dtype and scale == 1.0:
        return x
    out = _output_like(ctx, x, dtype, suffix)
    if x.numel:
        cs = ctx.compute_set(f"cast/{suffix}")
        _add_regions(ctx, cs, C.cast_scale_codelet(x.dtype, dtype), out, {"x": x, "out": out},
                     params={"scale": scale})
        ctx.execute(cs)
    return out


def _add_regions(ctx: OpContext, cs: ComputeSet, codelet: type, ref: Tensor,
                 elementwise: Mapping[str, Tensor], per_region: Mapping[str, Tensor] | None = None,
                 shared: Mapping[str, Tensor] | None = None,
                 params: Mapping[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One vertex per contiguous tile region of ``ref``: ``elementwise`` fields are tensors of
    ``ref``'s shape, ``per_region`` ``(regions, m)`` tensors (row i for region i), ``shared``
    tensors every vertex reads whole. Returns the regions' (lengths, tiles)."""
    starts, lengths, tiles = _regions(ctx.graph, ref)
    flats = {name: t.flatten() for name, t in elementwise.items()}
    region = np.arange(starts.size)
    for length, pick in _by_value(lengths):
        fields: dict[str, Any] = dict(params or {})
        fields |= {name: rows_of(f, starts[pick], length) for name, f in flats.items()}
        for name, t in (per_region or {}).items():
            fields[name] = rows_of(t.flatten(), region[pick] * t.shape[1], t.shape[1])
        for name, t in (shared or {}).items():
            fields[name] = t.flatten().reshape(1, t.numel).broadcast((int(pick.sum()), t.numel))
        ctx.graph.add_vertices(cs, codelet, fields, tiles[pick])
    return lengths, tiles
