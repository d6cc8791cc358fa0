"""Indexing (popops): gather, scatter(-add), multi-slice/update-add (embeddings), dynamic
slice/update with device-side offsets, sort, top-k, cumsum, pad, one-hot, iota, fill.

Data-dependent ops read their indices **at run time** inside the vertex; the graph (which
vertices exist, what they may read and write) is static:

* **multi_slice / gather** split the table's columns into blocks (the table's own column layout
  when it has one, see :func:`create_slicable_table`); each block's vertex looks up every index
  (split into lookup blocks for parallelism). Out-of-range indices (negative or ``>= rows``)
  give rows of **zeros**.
* **multi_update_add / scatter / scatter_add** update a column block in place, one vertex per
  block; out-of-range indices are **skipped**. Repeated indices all add (``*_add``); for plain
  scatter the last update wins.
* **dynamic_slice / dynamic_update** follow popops' DynamicSlice2d: an offset at or past the end
  of the dimension (or negative) starts at 0, and the rows of the slice wrap around the end
  (``row = (start + j) % size``).

Row-wise ops (sort, top-k, cumsum) give each row to one vertex on the tile that holds the
output row (outputs are mapped in whole rows).
"""

from __future__ import annotations

import enum
import operator
from typing import Any

import numpy as np

from softipu.codelets.indexing import (
    SortOrder,
    copy_codelet,
    cumsum_codelet,
    dynamic_slice_codelet,
    dynamic_update_codelet,
    fill_codelet,
    iota_codelet,
    multi_slice_codelet,
    multi_update_codelet,
    one_hot_codelet,
    sort_codelet,
)
from softipu.dtypes import DType, as_dtype, float32, int32
from softipu.errors import DTypeError
from softipu.graph import program as P
from softipu.graph.graph import Graph
from softipu.graph.tensor import Tensor
from softipu.ops.common import OpContext, parse_options, rows_of, tile_regions
from softipu.ops.mapping import map_linearly
from softipu.ops.random import clone_mapping
from softipu.ops.reduce import tensor_at

__all__ = ["fill", "zero", "full", "zeros", "iota", "pad", "PadMode", "one_hot", "gather",
           "scatter", "scatter_add", "multi_slice", "multi_update_add", "create_slicable_table",
           "dynamic_slice", "dynamic_update", "sort", "sort_with_indices", "top_k", "cumsum"]


# -- helpers ---------------------------------------------------------------------------------------
def _dtype(ctx: OpContext, dtype: Any) -> DType:
    try:
        return as_dtype(dtype)
    except DTypeError as exc:
        raise ctx.error(str(exc)) from None


def _int(ctx: OpContext, value: Any, what: str) -> int:
    try:
        return operator.index(value)
    except TypeError:
        raise ctx.error(f"{what} must be an int, got {value!r}") from None


def _axis(ctx: OpContext, x: Tensor, axis: Any) -> int:
    a = _int(ctx, axis, "axis")
    if not -x.ndim <= a < x.ndim:
        raise ctx.error(f"axis {a} is out of range for {x.name} of shape {x.shape}")
    return a % x.ndim


def _index_tensor(ctx: OpContext, t: Tensor, what: str = "indices") -> None:
    if t.dtype.is_float or t.dtype.numpy.kind == "b":
        raise ctx.error(f"{what} must be an integer tensor, {t.name} is {t.dtype}")


def _moveaxis(t: Tensor, src: int, dst: int) -> Tensor:
    src, dst = src % t.ndim, dst % t.ndim
    perm = [d for d in range(t.ndim) if d != src]
    perm.insert(dst, src)
    return t.transpose(perm)


def _prod(shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


def fill_tensor(ctx: OpContext, t: Tensor, value: Any) -> None:
    """Append a compute set that writes ``value`` into every element of ``t`` where it lives."""
    if t.numel == 0:
        return
    cs = ctx.compute_set("fill")
    flat = t.reshape(-1)
    starts, lengths, tiles = tile_regions(ctx.graph, t)
    for n in np.unique(lengths).tolist():
        pick = lengths == n
        ctx.graph.add_vertices(cs, fill_codelet(t.dtype), {"out": rows_of(flat, starts[pick], n),
                                                           "value": value}, tiles[pick])
    ctx.execute(cs)


def _fill_value(ctx: OpContext, dtype: DType, value: Any) -> Any:
    try:
        v = np.asarray(value)
        if v.ndim != 0:
            raise TypeError
        if not dtype.is_float and v.dtype.kind == "f" and not float(v).is_integer():
            raise ctx.error(f"value {value!r} is not a whole number; {dtype} cannot hold it")
        return dtype.numpy.type(v.item())
    except (TypeError, ValueError, OverflowError):
        raise ctx.error(f"value {value!r} is not a {dtype} number") from None


# -- fill, iota --------------------------------------------------------------------------------------
def fill(graph: Graph, x: Tensor, prog: Any, *, value: Any, name: str = "",
         options: dict | None = None) -> Tensor:
    """Write ``value`` into every element of ``x`` in place (popops ``fill``); returns ``x``.

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops.indexing import fill
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=2)); prog = P.Sequence()
    >>> x = g.add_variable(sp.int32, (5,)); sp.ops.map_linearly(g, x)
    >>> _ = fill(g, x, prog, value=7); eng = sp.Engine(g, [prog]); eng.run(0)
    >>> eng.read_tensor(x).tolist()
    [7, 7, 7, 7, 7]
    """
    ctx = OpContext.start(graph, prog, "fill", name, x)
    parse_options(ctx, options, {})
    if x.repeats_elements():
        raise ctx.error(f"cannot fill {x.name}: the view repeats elements (a broadcast?)")
    fill_tensor(ctx, x, _fill_value(ctx, x.dtype, value))
    return x


def zero(graph: Graph, x: Tensor, prog: Any, *, name: str = "", options: dict | None = None) -> Tensor:
    """Set ``x`` to zero in place (popops ``zero``); returns ``x``.

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops.indexing import zero
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=2)); x = g.add_variable(sp.float32, (3,))
    >>> sp.ops.map_linearly(g, x); zero(g, x, P.Sequence()) is x
    True
    """
    ctx = OpContext.start(graph, prog, "zero", name, x)
    parse_options(ctx, options, {})
    fill_tensor(ctx, x, x.dtype.numpy.type(0))
    return x


def full(graph: Graph, prog: Any, *, shape: Any, value: Any, dtype: Any = float32, name: str = "",
         options: dict | None = None) -> Tensor:
    """A new tensor of ``shape`` filled with ``value`` (mapped linearly).

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops.indexing import full
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=2)); prog = P.Sequence()
    >>> t = full(g, prog, shape=(2, 2), value=1.5); eng = sp.Engine(g, [prog]); eng.run(0)
    >>> eng.read_tensor(t).tolist()
    [[1.5, 1.5], [1.5, 1.5]]
    """
    ctx = OpContext.start(graph, prog, "full", name)
    parse_options(ctx, options, {})
    dt = _dtype(ctx, dtype)
    out = ctx.output(dt, _shape(ctx, shape))
    fill_tensor(ctx, out, _fill_value(ctx, dt, value))
    return out


def zeros(graph: Graph, prog: Any, *, shape: Any, dtype: Any = float32, name: str = "",
          options: dict | None = None) -> Tensor:
    """A new tensor of zeros (see :func:`full`).

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops.indexing import zeros
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=2)); zeros(g, P.Sequence(), shape=(3,)).shape
    (3,)
    """
    ctx = OpContext.start(graph, prog, "zeros", name)
    parse_options(ctx, options, {})
    dt = _dtype(ctx, dtype)
    out = ctx.output(dt, _shape(ctx, shape))
    fill_tensor(ctx, out, dt.numpy.type(0))
    return out


def _shape(ctx: OpContext, shape: Any) -> tuple[int, ...]:
    dims = shape if isinstance(shape, (tuple, list)) else (shape,)
    out = tuple(_int(ctx, d, "a shape dimension") for d in dims)
    if any(d < 0 for d in out):
        raise ctx.error(f"shape {out} has a negative dimension")
    return out


def iota(graph: Graph, prog: Any, *, n: int, dtype: Any = int32, start: int = 0, name: str = "",
         options: dict | None = None) -> Tensor:
    """``[start, start + 1, ..., start + n - 1]`` (popops ``iota``).

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops.indexing import iota
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=2)); prog = P.Sequence()
    >>> t = iota(g, prog, n=5, start=3); eng = sp.Engine(g, [prog]); eng.run(0)
    >>> eng.read_tensor(t).tolist()
    [3, 4, 5, 6, 7]
    """
    ctx = OpContext.start(graph, prog, "iota", name)
    parse_options(ctx, options, {})
    n, start = _int(ctx, n, "n"), _int(ctx, start, "start")
    if n < 0:
        raise ctx.error(f"n must be >= 0, got {n}")
    dt = _dtype(ctx, dtype)
    if dt.numpy.kind == "b":
        raise ctx.error("iota makes numbers; bool was asked for")
    out = ctx.output(dt, (n,))
    if n:
        cs = ctx.compute_set()
        starts, lengths, tiles = tile_regions(graph, out)
        for m in np.unique(lengths).tolist():
            pick = lengths == m
            graph.add_vertices(cs, iota_codelet(dt), {"out": rows_of(out, starts[pick], m),
                                                      "first": start + starts[pick]}, tiles[pick])
        ctx.execute(cs)
    return out


# -- static gathers: pad ------------------------------------------------------------------------------
class PadMode(enum.Enum):
    CONSTANT = "constant"  # the padding holds `value`
    EDGE = "edge"  # repeats the edge element
    REFLECT = "reflect"  # mirrors about the edge element (numpy's "reflect")


def _runs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, lengths) of runs of equal consecutive keys."""
    if keys.size == 0:
        z = np.zeros(0, np.int64)
        return z, z
    starts = np.concatenate(([0], np.flatnonzero(np.diff(keys)) + 1))
    return starts, np.diff(np.append(starts, keys.size))


def static_gather(ctx: OpContext, out: Tensor, source: np.ndarray, src: Tensor, value: Any) -> None:
    """``out.flat[i] = src.flat[source[i]]``, or ``value`` where ``source[i] < 0``; one compute set.

    Each tile copies into the elements of ``out`` it holds, one vertex per run of copied (or
    filled) elements.
    """
    if out.numel == 0:
        return
    graph = ctx.graph
    flat = out.reshape(-1)
    tiles = graph.tile_of(flat).astype(np.int64)
    copied = source >= 0
    starts, lengths = _runs(tiles * 2 + copied)
    src_addr = src.addresses().reshape(-1)
    out_addr = flat.addresses()
    cs = ctx.compute_set()
    for is_copy in (True, False):
        pick_run = copied[starts] == is_copy
        for n in np.unique(lengths[pick_run]).tolist():
            pick = pick_run & (lengths == n)
            pos = starts[pick][:, None] + np.arange(n)
            fields: dict[str, Any] = {"out": tensor_at(graph, out.dtype, out_addr[pos])}
            if is_copy:
                fields["src"] = tensor_at(graph, src.dtype, src_addr[source[pos]])
                codelet = copy_codelet(out.dtype)
            else:
                fields["value"] = value
                codelet = fill_codelet(out.dtype)
            graph.add_vertices(cs, codelet, fields, tiles[starts[pick]])
    ctx.execute(cs)


def pad(graph: Graph, x: Tensor, prog: Any, *, pad_width: Any, mode: PadMode | str = PadMode.CONSTANT,
        value: Any = 0, name: str = "", options: dict | None = None) -> Tensor:
    """``x`` padded like ``numpy.pad(x, pad_width, mode)``; modes constant, edge and reflect.

    ``pad_width`` is numpy's: an int, a ``(before, after)`` pair, or one pair per dim.

    >>> import numpy as np, softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops.indexing import pad
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=2)); prog = P.Sequence()
    >>> x = g.add_variable(sp.int32, (3,)); sp.ops.map_linearly(g, x)
    >>> y = pad(g, x, prog, pad_width=(1, 2), mode="reflect")
    >>> eng = sp.Engine(g, [prog]); eng.write_tensor(x, [1, 2, 3]); eng.run(0)
    >>> eng.read_tensor(y).tolist()
    [2, 1, 2, 3, 2, 1]
    """
    ctx = OpContext.start(graph, prog, "pad", name, x)
    parse_options(ctx, options, {})
    try:
        mode = PadMode(mode.value if isinstance(mode, PadMode) else mode)
    except ValueError:
        raise ctx.error(f"mode {mode!r} is not one of {[m.value for m in PadMode]}") from None
    index = np.arange(x.numel, dtype=np.int64).reshape(x.shape)
    try:
        widths = np.broadcast_to(np.asarray(pad_width, dtype=np.int64), (x.ndim, 2))
        if np.any(widths < 0):
            raise ValueError("negative pad width")
        kwargs = {"constant_values": -1} if mode is PadMode.CONSTANT else {}
        source = np.pad(index, widths, mode=mode.value, **kwargs)
    except (ValueError, TypeError) as exc:
        raise ctx.error(f"cannot pad {x.name} of shape {x.shape} with pad_width={pad_width!r} in "
                        f"mode {mode.value!r}: {exc}") from None
    out = ctx.output(x.dtype, source.shape)
    static_gather(ctx, out, source.reshape(-1), x, _fill_value(ctx, x.dtype, value))
    return out


def one_hot(graph: Graph, indices: Tensor, prog: Any, *, depth: int, dtype: Any = float32,
            name: str = "", options: dict | None = None) -> Tensor:
    """``out[..., d] = (indices[...] == d)`` with ``depth`` classes (popops ``encodeOneHot``).

    Out-of-range indices (negative or ``>= depth``) give rows of zeros.

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops.indexing import one_hot
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=2)); prog = P.Sequence()
    >>> i = g.add_variable(sp.int32, (2,)); sp.ops.map_linearly(g, i)
    >>> h = one_hot(g, i, prog, depth=3); eng = sp.Engine(g, [prog])
    >>> eng.write_tensor(i, [2, 0]); eng.run(0); eng.read_tensor(h).tolist()
    [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]
    """
    ctx = OpContext.start(graph, prog, "one_hot", name, indices)
    parse_options(ctx, options, {})
    _index_tensor(ctx, indices)
    depth = _int(ctx, depth, "depth")
    if depth < 0:
        raise ctx.error(f"depth must be >= 0, got {depth}")
    dt = _dtype(ctx, dtype)
    out = ctx.output(dt, indices.shape + (depth,), grain_size=max(depth, 1))
    if out.numel == 0:
        return out
    flat = out.reshape(-1)
    idx_addr = indices.addresses().reshape(-1)
    starts, lengths, tiles = tile_regions(graph, out)
    cs = ctx.compute_set()
    codelet = one_hot_codelet(indices.dtype, dt)
    for n in np.unique(lengths).tolist():
        pick = lengths == n
        pos = starts[pick][:, None] + np.arange(n)
        graph.add_vertices(cs, codelet, {"index": tensor_at(graph, indices.dtype,
                                                            idx_addr[pos // depth]),
                                         "out": rows_of(flat, starts[pick], n),
                                         "first": starts[pick], "depth": depth}, tiles[pick])
    ctx.execute(cs)
    return out


# -- multi-slice / multi-update -----------------------------------------------------------------------
def _column_blocks(graph: Graph, table: Tensor) -> list[tuple[int, int, int]]:
    """``(c0, c1, tile)`` column blocks of a 2-D table: its own layout, or an even split.

    A table whose first row spans several tiles (e.g. one from :func:`create_slicable_table`)
    is split where its tiles change; otherwise the columns are spread evenly over the tiles.
    """
    rows, cols = table.shape
    if cols == 0:
        return []
    if rows:
        first = graph.tile_of(table[0]).astype(np.int64)
        starts, lengths = _runs(first)
        if starts.size > 1:
            return [(int(s), int(s + n), int(first[s])) for s, n in zip(starts, lengths, strict=True)]
    t = graph.num_tiles
    width = -(-cols // t)
    if not _column_major(table):
        width = max(width, graph.target.vector_width(table.dtype.itemsize))
    nb = -(-cols // width)
    return [(b * width, min(cols, (b + 1) * width), (b * t) // nb) for b in range(nb)]


def _column_major(table: Tensor) -> bool:
    """Whether a 2-D table is stored transposed (each column contiguous), as
    :func:`create_slicable_table` makes it."""
    rows, cols = table.shape
    return table.is_strided and rows > 1 and table.strides == (1, rows)


def _table_blocks(graph: Graph, table: Tensor, columns: list[tuple[int, int]]) -> Tensor:
    """A ``(V, rows * width)`` field of equal-width column blocks, each in storage order: a
    strided view of a column-major table (no address arrays), else the blocks' addresses."""
    rows = table.shape[0]
    if _column_major(table):
        starts = np.array([c0 * rows for c0, _ in columns], np.int64)
        return rows_of(table.T.reshape(-1), starts, (columns[0][1] - columns[0][0]) * rows)
    addr = table.addresses()
    return tensor_at(graph, table.dtype, np.stack([addr[:, c0:c1].reshape(-1) for c0, c1 in columns]))


def _check_table(ctx: OpContext, table: Tensor, indices: Tensor) -> Tensor:
    if table.ndim != 2:
        raise ctx.error(f"the table must be 2-D [rows, columns]; {table.name} has shape {table.shape}")
    _index_tensor(ctx, indices)
    if indices.ndim == 2 and indices.shape[1] == 1:
        indices = indices.reshape(-1)
    if indices.ndim != 1:
        raise ctx.error(f"indices must be 1-D (or [n, 1]); {indices.name} has shape {indices.shape}")
    return indices


def create_slicable_table(graph: Graph, shape: Any, dtype: Any = float32, name: str = "table") -> Tensor:
    """A ``[rows, columns]`` table laid out for multi_slice: whole column blocks per tile.

    (popops ``createSliceableTensor``): each tile holds every row of a few columns, so a lookup
    is local wherever the index points. The variable is stored transposed (``[columns, rows]``;
    the result is its ``.T`` view) so each tile's block is one contiguous region.

    >>> import softipu as sp
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=4))
    >>> t = create_slicable_table(g, (10, 8)); sorted(set(g.tile_of(t)[0].tolist()))
    [0, 1, 2, 3]
    """
    rows, cols = (operator.index(d) for d in shape)
    t = graph.add_variable(as_dtype(dtype), (cols, rows), name=name).T
    for c0, c1, tile in _column_blocks(graph, t) if rows else []:
        graph.set_tile_mapping(t[:, c0:c1], tile)
    return t


def _slice_rows(ctx: OpContext, table: Tensor, indices: Tensor, out: Tensor) -> None:
    """``out[i, :] = table[indices[i], :]`` by column blocks and lookup blocks; maps ``out``.

    A contiguous ``out`` is mapped in whole rows (what row-wise consumers such as a layer norm
    want; each block's vertex writes its columns to the rows' tiles); any other ``out`` keeps
    each block on its table block's tile.
    """
    graph = ctx.graph
    n = indices.shape[0]
    blocks = _column_blocks(graph, table)
    if n == 0 or not blocks:
        return
    whole_rows = out.is_contiguous()
    if whole_rows:
        map_linearly(graph, out, grain_size=max(1, out.shape[1]))
    column_major = _column_major(table)
    lookups = max(1, min(n, graph.num_tiles // len(blocks)))
    bounds = np.linspace(0, n, lookups + 1).astype(np.int64)
    i_addr, o_addr = indices.addresses(), out.addresses()
    # One group per lookup range and block width: its table blocks are then evenly spaced (a
    # strided field, never gathered) and its index rows one row repeated.
    groups: dict[tuple[int, int, int], list[tuple[int, int, int, int, int]]] = {}
    for c0, c1, tile in blocks:
        for l0, l1 in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
            if l1 > l0:
                if not whole_rows:
                    graph.set_tile_mapping(out[l0:l1, c0:c1], tile)
                groups.setdefault((c1 - c0, l0, l1), []).append((c0, c1, l0, l1, tile))
    cs = ctx.compute_set()
    codelet = multi_slice_codelet(table.dtype, indices.dtype, column_major)
    for members in groups.values():
        fields = {
            "table": _table_blocks(graph, table, [(c0, c1) for c0, c1, *_ in members]),
            "index": tensor_at(graph, indices.dtype, np.stack([i_addr[l0:l1]
                                                               for _, _, l0, l1, _ in members])),
            "out": tensor_at(graph, out.dtype, np.stack([o_addr[l0:l1, c0:c1].reshape(-1)
                                                         for c0, c1, l0, l1, _ in members])),
        }
        graph.add_vertices(cs, codelet, fields, [m[4] for m in members])
    ctx.execute(cs)


def _update_rows(ctx: OpContext, table: Tensor, indices: Tensor, updates: Tensor, scale: float,
                 accumulate: bool) -> None:
    """``table[indices[i], :] (+)= scale * updates[i, :]`` in place, one vertex per column block."""
    graph = ctx.graph
    blocks = _column_blocks(graph, table)
    if indices.shape[0] == 0 or not blocks or table.shape[0] == 0:
        return
    i_addr, u_addr = indices.addresses(), updates.addresses()
    widths: dict[int, list[tuple[int, int, int]]] = {}
    for block in blocks:
        widths.setdefault(block[1] - block[0], []).append(block)
    cs = ctx.compute_set()
    column_major = _column_major(table)
    codelet = multi_update_codelet(table.dtype, indices.dtype, accumulate, column_major)
    for members in widths.values():
        v = len(members)
        fields = {
            "table": _table_blocks(graph, table, [(c0, c1) for c0, c1, _ in members]),
            "index": tensor_at(graph, indices.dtype, np.broadcast_to(i_addr, (v, i_addr.size))),
            "updates": tensor_at(graph, updates.dtype, np.stack([u_addr[:, c0:c1].reshape(-1)
                                                                 for c0, c1, _ in members])),
            "scale": scale,
        }
        graph.add_vertices(cs, codelet, fields, [m[2] for m in members])
    ctx.execute(cs)


def multi_slice(graph: Graph, table: Tensor, indices: Tensor, prog: Any, *, name: str = "",
                options: dict | None = None) -> Tensor:
    """Rows ``table[indices[i], :]`` as a ``[len(indices), columns]`` tensor (embedding lookup).

    popops ``multiSlice`` over dim 0. ``indices`` (int, 1-D or ``[n, 1]``) are read at run
    time; out-of-range indices give rows of zeros. The output's column blocks live where the
    table's do.

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops.indexing import multi_slice, create_slicable_table
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=4)); prog = P.Sequence()
    >>> t = create_slicable_table(g, (5, 4), sp.float32)
    >>> i = g.add_variable(sp.int32, (2,)); sp.ops.map_linearly(g, i)
    >>> y = multi_slice(g, t, i, prog); eng = sp.Engine(g, [prog])
    >>> eng.write_tensor(t, [[r] * 4 for r in range(5)]); eng.write_tensor(i, [3, 9]); eng.run(0)
    >>> eng.read_tensor(y).tolist()
    [[3.0, 3.0, 3.0, 3.0], [0.0, 0.0, 0.0, 0.0]]
    """
    ctx = OpContext.start(graph, prog, "multi_slice", name, table, indices)
    parse_options(ctx, options, {})
    indices = _check_table(ctx, table, indices)
    out = graph.add_variable(table.dtype, (indices.shape[0], table.shape[1]), name=f"{ctx.name}/out")
    _slice_rows(ctx, table, indices, out)
    _map_rest(ctx, out)
    return out


def _map_rest(ctx: OpContext, out: Tensor) -> None:
    """Map what the plan left unmapped (nothing, unless a dim is empty)."""
    if out.numel and np.any(ctx.graph.tile_of(out) < 0):
        map_linearly(ctx.graph, out)


def multi_update_add(graph: Graph, table: Tensor, indices: Tensor, updates: Tensor, scale: float,
                     prog: Any, *, name: str = "", options: dict | None = None) -> Tensor:
    """``table[indices[i], :] += scale * updates[i, :]`` in place (embedding gradient update).

    popops ``multiUpdateAdd``: repeated indices all add (fp16 tables accumulate in fp32);
    out-of-range indices are skipped. Returns ``table``.

    >>> import numpy as np, softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops.indexing import multi_update_add
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=2)); prog = P.Sequence()
    >>> t = g.add_variable(sp.float32, (3, 2)); sp.ops.map_linearly(g, t)
    >>> i = g.add_variable(sp.int32, (2,)); u = g.add_variable(sp.float32, (2, 2))
    >>> sp.ops.map_linearly(g, i); sp.ops.map_linearly(g, u)
    >>> _ = multi_update_add(g, t, i, u, 0.5, prog); eng = sp.Engine(g, [prog])
    >>> eng.write_tensor(t, np.zeros((3, 2))); eng.write_tensor(i, [1, 1])
    >>> eng.write_tensor(u, [[2, 4], [2, 4]]); eng.run(0); eng.read_tensor(t).tolist()
    [[0.0, 0.0], [2.0, 4.0], [0.0, 0.0]]
    """
    ctx = OpContext.start(graph, prog, "multi_update_add", name, table, indices, updates)
    parse_options(ctx, options, {})
    indices = _check_table(ctx, table, indices)
    _check_updates(ctx, table, indices, updates, scale)
    _update_rows(ctx, table, indices, updates, float(scale), accumulate=True)
    return table


def _check_updates(ctx: OpContext, table: Tensor, indices: Tensor, updates: Tensor,
                   scale: Any) -> None:
    want = (indices.shape[0], table.shape[1])
    if updates.shape != want:
        raise ctx.error(f"updates {updates.name} has shape {updates.shape}; with {indices.shape[0]} "
                        f"indices into table {table.name} {table.shape} it must be {want}")
    if updates.dtype is not table.dtype:
        raise ctx.error(f"updates {updates.name} is {updates.dtype} but table {table.name} is "
                        f"{table.dtype}")
    if not isinstance(scale, (int, float)) or isinstance(scale, bool):
        raise ctx.error(f"scale must be a number, got {scale!r}")
    if not table.dtype.is_float and scale != 1:
        raise ctx.error(f"an integer table ({table.dtype}) takes scale 1, got {scale}")


# -- gather / scatter ----------------------------------------------------------------------------------
def _gathered_shape(x: Tensor, indices: Tensor, axis: int) -> tuple[int, ...]:
    return x.shape[:axis] + indices.shape + x.shape[axis + 1 :]


def _rows_view(t: Tensor, axis: int, count: int) -> Tensor:
    """``t`` with dims ``axis .. axis + count`` moved to the front and the rest flattened: 2-D."""
    lead = list(range(axis, axis + count))
    perm = lead + [d for d in range(t.ndim) if d not in lead]
    moved = t.transpose(perm)
    rows = _prod(moved.shape[:count])
    return moved.reshape(rows, _prod(moved.shape[count:]))


def gather(graph: Graph, x: Tensor, indices: Tensor, prog: Any, *, axis: int = 0, name: str = "",
           options: dict | None = None) -> Tensor:
    """``numpy.take(x, indices, axis)`` with indices read at run time; out of range gives zeros.

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops.indexing import gather
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=2)); prog = P.Sequence()
    >>> x = g.add_variable(sp.float32, (2, 3)); i = g.add_variable(sp.int32, (2,))
    >>> sp.ops.map_linearly(g, x); sp.ops.map_linearly(g, i)
    >>> y = gather(g, x, i, prog, axis=1); eng = sp.Engine(g, [prog])
    >>> eng.write_tensor(x, [[1, 2, 3], [4, 5, 6]]); eng.write_tensor(i, [2, 0]); eng.run(0)
    >>> eng.read_tensor(y).tolist()
    [[3.0, 1.0], [6.0, 4.0]]
    """
    ctx = OpContext.start(graph, prog, "gather", name, x, indices)
    parse_options(ctx, options, {})
    if x.ndim == 0:
        raise ctx.error(f"cannot gather from 0-d tensor {x.name}")
    axis = _axis(ctx, x, axis)
    _index_tensor(ctx, indices)
    out = ctx.graph.add_variable(x.dtype, _gathered_shape(x, indices, axis), name=f"{ctx.name}/out")
    _slice_rows(ctx, _rows_view(x, axis, 1), indices.reshape(-1), _rows_view(out, axis, indices.ndim))
    _map_rest(ctx, out)
    return out


def _scatter(op: str, accumulate: bool, graph: Graph, x: Tensor, indices: Tensor, updates: Tensor,
             prog: Any, axis: int, name: str, options: dict | None) -> Tensor:
    ctx = OpContext.start(graph, prog, op, name, x, indices, updates)
    parse_options(ctx, options, {})
    if x.ndim == 0:
        raise ctx.error(f"cannot scatter into 0-d tensor {x.name}")
    axis = _axis(ctx, x, axis)
    _index_tensor(ctx, indices)
    want = _gathered_shape(x, indices, axis)
    if updates.shape != want:
        raise ctx.error(f"updates {updates.name} has shape {updates.shape}; scattering {indices.shape} "
                        f"indices into {x.name} {x.shape} along axis {axis} needs {want}")
    if updates.dtype is not x.dtype:
        raise ctx.error(f"updates {updates.name} is {updates.dtype} but {x.name} is {x.dtype}")
    out = graph.add_variable(x.dtype, x.shape, name=f"{ctx.name}/out")
    clone_mapping(graph, out, x)
    ctx.prog.add(P.Copy(x, out))
    _update_rows(ctx, _rows_view(out, axis, 1), indices.reshape(-1),
                 _rows_view(updates, axis, indices.ndim), 1.0, accumulate)
    return out


def scatter(graph: Graph, x: Tensor, indices: Tensor, updates: Tensor, prog: Any, *, axis: int = 0,
            name: str = "", options: dict | None = None) -> Tensor:
    """A copy of ``x`` with ``out[indices] = updates`` along ``axis`` (last update wins on repeats).

    ``updates`` has the shape of ``gather(x, indices, axis)``; out-of-range indices are skipped.

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops.indexing import scatter
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=2)); prog = P.Sequence()
    >>> x = g.add_variable(sp.float32, (4,)); i = g.add_variable(sp.int32, (1,))
    >>> u = g.add_variable(sp.float32, (1,))
    >>> for t in (x, i, u): sp.ops.map_linearly(g, t)
    >>> y = scatter(g, x, i, u, prog); eng = sp.Engine(g, [prog])
    >>> eng.write_tensor(x, [0, 0, 0, 0]); eng.write_tensor(i, [2]); eng.write_tensor(u, [5])
    >>> eng.run(0); eng.read_tensor(y).tolist()
    [0.0, 0.0, 5.0, 0.0]
    """
    return _scatter("scatter", False, graph, x, indices, updates, prog, axis, name, options)


def scatter_add(graph: Graph, x: Tensor, indices: Tensor, updates: Tensor, prog: Any, *,
                axis: int = 0, name: str = "", options: dict | None = None) -> Tensor:
    """A copy of ``x`` with ``updates`` added at ``indices`` along ``axis`` (repeats all add).

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops.indexing import scatter_add
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=2)); prog = P.Sequence()
    >>> x = g.add_variable(sp.int32, (3,)); i = g.add_variable(sp.int32, (2,))
    >>> u = g.add_variable(sp.int32, (2,))
    >>> for t in (x, i, u): sp.ops.map_linearly(g, t)
    >>> y = scatter_add(g, x, i, u, prog); eng = sp.Engine(g, [prog])
    >>> eng.write_tensor(x, [1, 1, 1]); eng.write_tensor(i, [0, 0]); eng.write_tensor(u, [2, 3])
    >>> eng.run(0); eng.read_tensor(y).tolist()
    [6, 1, 1]
    """
    return _scatter("scatter_add", True, graph, x, indices, updates, prog, axis, name, options)


# -- dynamic slice / update ----------------------------------------------------------------------------
def _check_offset(ctx: OpContext, offset: Tensor) -> Tensor:
    _index_tensor(ctx, offset, "offset")
    if offset.numel != 1:
        raise ctx.error(f"offset must hold one index; {offset.name} has shape {offset.shape}")
    return offset.reshape(1, 1)


def _dynamic(ctx: OpContext, base: Tensor, other: Tensor, offset: Tensor, update: bool) -> None:
    """Vertices over column blocks of ``base`` (rows = the sliced dim); ``other`` the slice."""
    graph = ctx.graph
    blocks = _column_blocks(graph, base)
    if not blocks or other.shape[0] == 0:
        return
    b_addr, o_addr = base.addresses(), other.addresses()
    widths: dict[int, list[tuple[int, int, int]]] = {}
    for block in blocks:
        widths.setdefault(block[1] - block[0], []).append(block)
        if not update:
            graph.set_tile_mapping(other[:, block[0] : block[1]], block[2])
    cs = ctx.compute_set()
    if update:
        codelet = dynamic_update_codelet(base.dtype, offset.dtype)
    else:
        codelet = dynamic_slice_codelet(base.dtype, offset.dtype)
    for members in widths.values():
        cols = np.concatenate([np.arange(c0, c1)[None] for c0, c1, _ in members])  # (V, width)

        def part(addr: np.ndarray, row: int, cols: np.ndarray = cols) -> Tensor:
            return tensor_at(graph, base.dtype, addr[row][cols])

        fields = {"offset": offset.broadcast((len(members), 1)),
                  "base": [part(b_addr, k) for k in range(base.shape[0])],
                  ("update" if update else "out"): [part(o_addr, j) for j in range(other.shape[0])]}
        graph.add_vertices(cs, codelet, fields, [m[2] for m in members])
    ctx.execute(cs)


def dynamic_slice(graph: Graph, x: Tensor, offset: Tensor, prog: Any, *, axis: int = 0, size: int = 1,
                  name: str = "", options: dict | None = None) -> Tensor:
    """``size`` consecutive entries of ``x`` along ``axis`` from a run-time ``offset``.

    popops ``dynamicSlice``: ``offset`` is a one-element integer tensor read by the vertices;
    an offset ``>= x.shape[axis]`` (or negative) starts at 0, and entries past the end wrap.

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops.indexing import dynamic_slice
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=2)); prog = P.Sequence()
    >>> x = g.add_variable(sp.float32, (4, 2)); o = g.add_variable(sp.int32, (1,))
    >>> sp.ops.map_linearly(g, x); sp.ops.map_linearly(g, o)
    >>> y = dynamic_slice(g, x, o, prog, size=2); eng = sp.Engine(g, [prog])
    >>> eng.write_tensor(x, [[0, 0], [1, 1], [2, 2], [3, 3]]); eng.write_tensor(o, [3]); eng.run(0)
    >>> eng.read_tensor(y).tolist()
    [[3.0, 3.0], [0.0, 0.0]]
    """
    ctx = OpContext.start(graph, prog, "dynamic_slice", name, x, offset)
    parse_options(ctx, options, {})
    if x.ndim == 0:
        raise ctx.error(f"cannot slice 0-d tensor {x.name}")
    axis = _axis(ctx, x, axis)
    off = _check_offset(ctx, offset)
    size = _int(ctx, size, "size")
    if not 0 < size <= x.shape[axis]:
        raise ctx.error(f"size {size} must be in 1..{x.shape[axis]} (dim {axis} of {x.name} {x.shape})")
    shape = x.shape[:axis] + (size,) + x.shape[axis + 1 :]
    out = graph.add_variable(x.dtype, shape, name=f"{ctx.name}/out")
    _dynamic(ctx, _rows_view(x, axis, 1), _rows_view(out, axis, 1), off, update=False)
    _map_rest(ctx, out)
    return out


def dynamic_update(graph: Graph, x: Tensor, update: Tensor, offset: Tensor, prog: Any, *,
                   axis: int = 0, name: str = "", options: dict | None = None) -> Tensor:
    """Write ``update`` into ``x`` along ``axis`` at a run-time ``offset``, in place; returns ``x``.

    Offsets follow :func:`dynamic_slice` (out of range starts at 0; rows wrap).

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops.indexing import dynamic_update
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=2)); prog = P.Sequence()
    >>> x = g.add_variable(sp.int32, (4,)); u = g.add_variable(sp.int32, (1,))
    >>> o = g.add_variable(sp.int32, (1,))
    >>> for t in (x, u, o): sp.ops.map_linearly(g, t)
    >>> _ = dynamic_update(g, x, u, o, prog); eng = sp.Engine(g, [prog])
    >>> eng.write_tensor(x, [0, 0, 0, 0]); eng.write_tensor(u, [9]); eng.write_tensor(o, [1])
    >>> eng.run(0); eng.read_tensor(x).tolist()
    [0, 9, 0, 0]
    """
    ctx = OpContext.start(graph, prog, "dynamic_update", name, x, update, offset)
    parse_options(ctx, options, {})
    if x.ndim == 0:
        raise ctx.error(f"cannot update 0-d tensor {x.name}")
    axis = _axis(ctx, x, axis)
    off = _check_offset(ctx, offset)
    want = x.shape[:axis] + x.shape[axis + 1 :]
    if update.ndim != x.ndim or update.shape[:axis] + update.shape[axis + 1 :] != want \
            or not 0 < update.shape[axis] <= x.shape[axis]:
        raise ctx.error(f"update {update.name} {update.shape} does not fit {x.name} {x.shape} along "
                        f"axis {axis}: it needs the other dims and 1..{x.shape[axis]} entries")
    if update.dtype is not x.dtype:
        raise ctx.error(f"update {update.name} is {update.dtype} but {x.name} is {x.dtype}")
    _dynamic(ctx, _rows_view(x, axis, 1), _rows_view(update, axis, 1), off, update=True)
    return x


# -- row-wise: sort, top-k, cumsum ---------------------------------------------------------------------
def _row_op(ctx: OpContext, x: Tensor, axis: int, codelet: type, keep: int,
            with_index: bool) -> tuple[Tensor, Tensor | None]:
    """One vertex per row along ``axis``; outputs mapped in whole rows, returned in x's layout."""
    graph = ctx.graph
    moved = _moveaxis(x, axis, -1)
    n = moved.shape[-1]
    out_shape = moved.shape[:-1] + (keep,)
    out = ctx.output(x.dtype, out_shape, grain_size=max(keep, 1))
    index = ctx.output(int32, out_shape, suffix="indices", grain_size=max(keep, 1)) \
        if with_index else None
    rows = _prod(moved.shape[:-1])
    if rows and n and keep:
        fields: dict[str, Any] = {"x": moved.reshape(rows, n), "out": out.reshape(rows, keep)}
        if index is not None:
            fields["index"] = index.reshape(rows, keep)
        tiles = graph.tile_of(out.reshape(rows, keep)[:, 0]).astype(np.int64)
        cs = ctx.compute_set()
        graph.add_vertices(cs, codelet, fields, tiles)
        ctx.execute(cs)
    back = (lambda t: _moveaxis(t, -1, axis)) if x.ndim else (lambda t: t)
    return back(out), (back(index) if index is not None else None)


def _sort_args(ctx: OpContext, x: Tensor, axis: Any) -> int:
    if x.ndim == 0:
        raise ctx.error(f"{ctx.op} needs at least one dimension; {x.name} is 0-d")
    if x.dtype.numpy.kind == "b":
        raise ctx.error(f"{ctx.op} of bool tensor {x.name}: cast to a number first")
    return _axis(ctx, x, axis)


def sort(graph: Graph, x: Tensor, prog: Any, *, axis: int = -1, descending: bool = False,
         name: str = "", options: dict | None = None) -> Tensor:
    """``x`` sorted along ``axis`` (stable; NaN last ascending, first descending).

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops.indexing import sort
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=2)); prog = P.Sequence()
    >>> x = g.add_variable(sp.float32, (4,)); sp.ops.map_linearly(g, x)
    >>> y = sort(g, x, prog); eng = sp.Engine(g, [prog])
    >>> eng.write_tensor(x, [3, 1, 2, 0]); eng.run(0); eng.read_tensor(y).tolist()
    [0.0, 1.0, 2.0, 3.0]
    """
    ctx = OpContext.start(graph, prog, "sort", name, x)
    parse_options(ctx, options, {})
    axis = _sort_args(ctx, x, axis)
    order = SortOrder.DESCENDING if descending else SortOrder.ASCENDING
    values, _ = _row_op(ctx, x, axis, sort_codelet(x.dtype, order, False), x.shape[axis], False)
    return values


def sort_with_indices(graph: Graph, x: Tensor, prog: Any, *, axis: int = -1,
                      descending: bool = False, name: str = "",
                      options: dict | None = None) -> tuple[Tensor, Tensor]:
    """``(sorted values, int32 positions in x)`` along ``axis``, stable (see :func:`sort`).

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops.indexing import sort_with_indices
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=2)); prog = P.Sequence()
    >>> x = g.add_variable(sp.float32, (3,)); sp.ops.map_linearly(g, x)
    >>> v, i = sort_with_indices(g, x, prog); eng = sp.Engine(g, [prog])
    >>> eng.write_tensor(x, [5, 3, 4]); eng.run(0); eng.read_tensor(i).tolist()
    [1, 2, 0]
    """
    ctx = OpContext.start(graph, prog, "sort_with_indices", name, x)
    parse_options(ctx, options, {})
    axis = _sort_args(ctx, x, axis)
    order = SortOrder.DESCENDING if descending else SortOrder.ASCENDING
    values, index = _row_op(ctx, x, axis, sort_codelet(x.dtype, order, True), x.shape[axis], True)
    assert index is not None
    return values, index


def top_k(graph: Graph, x: Tensor, prog: Any, *, k: int, axis: int = -1, name: str = "",
          options: dict | None = None) -> tuple[Tensor, Tensor]:
    """The ``k`` largest entries along ``axis``, largest first, and their int32 positions.

    Ties keep input order; NaN counts as largest (as torch.topk).

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops.indexing import top_k
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=2)); prog = P.Sequence()
    >>> x = g.add_variable(sp.float32, (5,)); sp.ops.map_linearly(g, x)
    >>> v, i = top_k(g, x, prog, k=2); eng = sp.Engine(g, [prog])
    >>> eng.write_tensor(x, [1, 9, 3, 9, 0]); eng.run(0); eng.read_tensor(i).tolist()
    [1, 3]
    """
    ctx = OpContext.start(graph, prog, "top_k", name, x)
    parse_options(ctx, options, {})
    axis = _sort_args(ctx, x, axis)
    k = _int(ctx, k, "k")
    if not 0 <= k <= x.shape[axis]:
        raise ctx.error(f"k={k} must be in 0..{x.shape[axis]} (dim {axis} of {x.name} {x.shape})")
    values, index = _row_op(ctx, x, axis, sort_codelet(x.dtype, SortOrder.DESCENDING, True), k, True)
    assert index is not None
    return values, index


def cumsum(graph: Graph, x: Tensor, prog: Any, *, axis: int = -1, name: str = "",
           options: dict | None = None) -> Tensor:
    """Inclusive running sums along ``axis`` (fp16 accumulates in fp32).

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops.indexing import cumsum
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=2)); prog = P.Sequence()
    >>> x = g.add_variable(sp.int32, (4,)); sp.ops.map_linearly(g, x)
    >>> y = cumsum(g, x, prog); eng = sp.Engine(g, [prog])
    >>> eng.write_tensor(x, [1, 2, 3, 4]); eng.run(0); eng.read_tensor(y).tolist()
    [1, 3, 6, 10]
    """
    ctx = OpContext.start(graph, prog, "cumsum", name, x)
    parse_options(ctx, options, {})
    axis = _sort_args(ctx, x, axis)
    values, _ = _row_op(ctx, x, axis, cumsum_codelet(x.dtype), x.shape[axis], False)
    return values
