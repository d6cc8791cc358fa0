"""Multi-slice / multi-update-add over slicable tables (embedding lookups and their gradients).

Indices are read **at run time** inside the vertices. The table's columns are split into
blocks (the table's own column layout when it has one, see :func:`create_slicable_table`):

* **multi_slice**: each block's vertex looks up every index (split into lookup blocks for
  parallelism); out-of-range indices (negative or ``>= rows``) give rows of **zeros**.
* **multi_update_add**: one vertex per block updates it in place; out-of-range indices are
  **skipped** and repeated indices all add.

:func:`_slice_rows` and :func:`_update_rows` are the engines that gather and scatter reuse.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

from softipu.codelets.indexing import multi_slice_codelet, multi_update_codelet
from softipu.dtypes import as_dtype, float32
from softipu.graph.graph import Graph
from softipu.graph.tensor import Tensor
from softipu.ops.common import OpContext, parse_options, rows_of, tile_regions
from softipu.ops.indexing._common import _index_tensor, _map_rest, _runs
from softipu.ops.mapping import map_linearly
from softipu.ops.reduce import tensor_at

__all__ = ["multi_slice", "multi_update_add", "create_slicable_table", "create_slicable_like",
           "plan_table_split", "slice_output"]

# popops' slice plan splits the sliced dimension (rows) as well as the columns when the columns
# leave tiles idle (BERT's 768-wide embedding on 1472 tiles). Here a row split cuts every column
# into equal row blocks, one vertex each (several on a tile when a tile holds several columns),
# so every vertex field stays a strided view of the table (the engine never gathers it): block
# (c, r) is storage run c * row_blocks + r. A lookup's row blocks give partial rows, summed.
MAX_ROW_BLOCKS = 8
MIN_BLOCK_ROWS = 64


def plan_table_split(rows: int, cols: int, tiles: int) -> tuple[int, int]:
    """``(width, row_blocks)`` of a ``[rows, cols]`` slicable table on ``tiles`` tiles: ``width``
    columns a tile and each column cut into ``row_blocks`` equal blocks (a divisor of ``rows``, at
    most ``MAX_ROW_BLOCKS``, each at least ``MIN_BLOCK_ROWS`` rows), the pair holding the fewest
    elements on the fullest tile (the table's, its gradient's and optimizer state's bytes there,
    and the update's work), ties to fewer row blocks (fewer partial rows to sum after a lookup).
    Without a row split the width is ``ceil(cols / tiles)``, one block of whole columns a tile.

    >>> plan_table_split(8192, 256, 1472)
    (1, 4)
    >>> plan_table_split(30522, 768, 1472)
    (2, 3)
    >>> plan_table_split(100, 8, 4)
    (2, 1)
    """
    width = -(-cols // tiles) if cols else 1
    best = (width * rows, width, 1)
    for w in range(1, cols + 1):
        most = min(MAX_ROW_BLOCKS, tiles // -(-cols // w), rows // MIN_BLOCK_ROWS)
        blocks = next((k for k in range(most, 1, -1) if rows % k == 0), 1)
        if blocks > 1 and w * (rows // blocks) < best[0]:
            best = (w * (rows // blocks), w, blocks)
    return best[1], best[2]


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


def create_slicable_table(graph: Graph, shape: Any, dtype: Any = float32, name: str = "table", *,
                          split_rows: bool = True) -> Tensor:
    """A ``[rows, columns]`` table laid out for multi_slice: column blocks, and (with
    ``split_rows``) row blocks when columns alone leave tiles idle (:func:`plan_table_split`), one
    block a tile. Row blocks pay where the table's gradient and optimizer state share its layout
    (training); a lookup of a row-split table sums partial rows, so a table only looked up is
    better kept in whole columns (``split_rows=False``).

    (popops ``createSliceableTensor``): each tile holds a few columns of every row, or of a
    block of rows, so a lookup is local wherever the index points (a row-split table's lookups
    are partial rows, zero outside the block, summed). The variable is stored transposed
    (``[columns, rows]``; the result is its ``.T`` view) so each column of a block is one
    contiguous region.

    >>> import softipu as sp
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=4))
    >>> t = create_slicable_table(g, (10, 8)); sorted(set(g.tile_of(t)[0].tolist()))
    [0, 1, 2, 3]
    >>> t = create_slicable_table(g, (256, 2)); sorted(set(g.tile_of(t).reshape(-1).tolist()))
    [0, 1, 2, 3]
    """
    rows, cols = (operator.index(d) for d in shape)
    t = graph.add_variable(as_dtype(dtype), (cols, rows), name=name).T
    if not rows or not cols:
        return t
    width, row_blocks = plan_table_split(rows, cols, graph.num_tiles) if split_rows else (1, 1)
    if row_blocks == 1:
        for c0, c1, tile in _column_blocks(graph, t):
            graph.set_tile_mapping(t[:, c0:c1], tile)
        return t
    col, block = np.divmod(np.arange(cols * row_blocks), row_blocks)  # storage run c * row_blocks + r
    total = -(-cols // width) * row_blocks
    graph.set_tile_mappings(t.T.reshape(cols * row_blocks, rows // row_blocks),
                            ((col // width) * row_blocks + block) * graph.num_tiles // total)
    return t


def create_slicable_like(graph: Graph, like: Tensor, dtype: Any = None, name: str = "table") -> Tensor | None:
    """A fresh table laid out as the slicable table ``like`` (stored transposed, the same column
    blocks on the same tiles), e.g. an embedding table's gradient accumulator or optimizer state,
    so elementwise work between them stays on tile; None when ``like`` is not such a table
    (not stored transposed, or a tile holding part of a column).

    >>> import softipu as sp
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=4))
    >>> t = create_slicable_table(g, (10, 8)); m = create_slicable_like(g, t, sp.float16, "m")
    >>> bool((g.tile_of(m) == g.tile_of(t)).all()), m.dtype is sp.float16
    (True, True)
    """
    if like.ndim != 2 or not _column_major(like):
        return None
    rows, cols = like.shape
    starts, lengths, tiles = tile_regions(graph, like.T)  # pieces of its storage, one tile each
    whole = not np.any(starts % rows) and not np.any(lengths % rows)
    if starts.size == 0 or not (whole or np.all(starts // rows == (starts + lengths - 1) // rows)):
        return None  # not whole columns or parts of one column a tile (e.g. a matmul operand's blocks)
    t = graph.add_variable(as_dtype(dtype) if dtype is not None else like.dtype, (cols, rows), name=name)
    graph.map_intervals(t, starts, starts + lengths, tiles)
    return t.T


def slice_output(graph: Graph, table: Tensor, n: int, name: str) -> Tensor:
    """A fresh ``[n, columns]`` result for looking up ``n`` rows of ``table``: stored transposed
    when the table is (:func:`create_slicable_table`), so that each column block of the result
    is one contiguous region on its table block's tile (popops ``createSliceTensor``: the slices
    are partitioned by lookup and column blocks like the sliceable tensor and each part is made
    where its columns live); row-major otherwise."""
    cols = table.shape[1]
    if _column_major(table) and n > 1:
        return graph.add_variable(table.dtype, (cols, n), name=name).T
    return graph.add_variable(table.dtype, (n, cols), name=name)


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
    grid = _row_grid(graph, table)
    if grid is not None:
        _slice_split(ctx, table, indices, out, grid)
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
    grid = _row_grid(graph, table)
    if grid is not None:
        _update_split(ctx, table, indices, updates, scale, accumulate, grid)
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



# -- row-split tables (create_slicable_table's plan with row blocks) ----------------------------------
def _row_grid(graph: Graph, table: Tensor) -> np.ndarray | None:
    """``[cols, row_blocks]`` tiles of a column-major table whose columns are cut into equal row
    blocks on distinct tiles (:func:`create_slicable_table`'s row split), from its storage's
    tile regions; else None (whole columns a tile)."""
    rows, cols = table.shape
    if not _column_major(table) or rows < 2:
        return None
    starts, lengths, tiles = tile_regions(graph, table.T)
    if starts.size <= cols or starts.size % cols or np.any(lengths != lengths[0]):
        return None
    height = int(lengths[0])
    if rows % height or starts.size != cols * (rows // height) or np.any(starts % height):
        return None
    return tiles.reshape(cols, rows // height)


def _block_column(table: Tensor, tiles: np.ndarray, r: int) -> Tensor:
    """``(cols, height)``: row block ``r`` of every column (storage run ``c * row_blocks + r``), a
    strided view: one vertex group per row block keeps every field strided."""
    cols, row_blocks = tiles.shape
    height = table.shape[0] // row_blocks
    return Tensor(table.graph, table.dtype, (cols, height), table.offset + r * height,
                  (row_blocks * height, 1))


def _shifted(ctx: OpContext, indices: Tensor, tiles: np.ndarray, height: int) -> Tensor:
    """``(cols * row_blocks, n)``: each block's copy of the indices less its first row (popops'
    ``baseOffset``), on the block's tile: the codelets treat rows outside the block as out of
    range, and each vertex reads its own row (a strided field)."""
    from softipu.ops.elementwise import E, map_  # noqa: PLC0415 - elementwise imports indexing

    graph, n = ctx.graph, indices.shape[0]
    cols, row_blocks = tiles.shape
    first = graph.add_constant(indices.dtype, (1, row_blocks, 1),
                               (np.arange(row_blocks) * height).reshape(1, -1, 1),
                               name=f"{ctx.name}/first_rows")
    graph.set_tile_mapping(first, int(tiles[0, 0]))
    out = graph.add_variable(indices.dtype, (cols * row_blocks, n), name=f"{ctx.name}/rows")
    graph.set_tile_mappings(out, tiles.reshape(-1))
    map_(graph, E.sub(E.input(1), E.input(2)),
         [out.reshape(cols, row_blocks, n), indices.reshape(1, 1, n), first], ctx.prog,
         name=f"{ctx.name}/rows")
    return out


def _slice_split(ctx: OpContext, table: Tensor, indices: Tensor, out: Tensor, tiles: np.ndarray) -> None:
    """Each block looks up every index (zeros outside its rows) into its own partial column; the
    row blocks' partials are summed into ``out`` (mapped in whole rows when contiguous)."""
    from softipu.ops.elementwise import E, map_  # noqa: PLC0415 - elementwise imports indexing

    graph, n = ctx.graph, indices.shape[0]
    cols, row_blocks = tiles.shape
    if out.is_contiguous():
        map_linearly(graph, out, grain_size=max(1, out.shape[1]))
    elif _column_major(out):  # slice_output's: each column where its first row block lives
        graph.set_tile_mappings(out.T, tiles[:, 0])
    shifted = _shifted(ctx, indices, tiles, table.shape[0] // row_blocks).reshape(cols, row_blocks, n)
    partial = graph.add_variable(table.dtype, (cols * row_blocks, n), name=f"{ctx.name}/partials")
    graph.set_tile_mappings(partial, tiles.reshape(-1))
    parts = partial.reshape(cols, row_blocks, n)
    cs = ctx.compute_set()
    codelet = multi_slice_codelet(table.dtype, indices.dtype, True)
    for r in range(row_blocks):
        graph.add_vertices(cs, codelet, {"table": _block_column(table, tiles, r), "index": shifted[:, r],
                                         "out": parts[:, r]}, tiles[:, r])
    ctx.execute(cs)
    total = E.input(1)
    for r in range(1, row_blocks):
        total = E.add(total, E.input(r + 1))
    map_(graph, total, [out.T, *(parts[:, r] for r in range(row_blocks))], ctx.prog, name=f"{ctx.name}/sum")


def _update_split(ctx: OpContext, table: Tensor, indices: Tensor, updates: Tensor, scale: float,
                  accumulate: bool, tiles: np.ndarray) -> None:
    """Each block updates its rows from every index (the others skipped): the table does not
    move, each tile receives its column of the updates."""
    graph = ctx.graph
    cols, row_blocks = tiles.shape
    n = indices.shape[0]
    shifted = _shifted(ctx, indices, tiles, table.shape[0] // row_blocks).reshape(cols, row_blocks, n)
    by_column = _updates_by_column(ctx, updates)
    cs = ctx.compute_set()
    codelet = multi_update_codelet(table.dtype, indices.dtype, accumulate, True)
    for r in range(row_blocks):  # block (c, r) reads column c of the updates
        graph.add_vertices(cs, codelet, {"table": _block_column(table, tiles, r), "index": shifted[:, r],
                                         "updates": by_column, "scale": scale}, tiles[:, r])
    ctx.execute(cs)


# Columns of the updates transposed together on one tile (one Transpose2d of every update by this
# many columns): the exchange into it is a region per update, this many columns long. 8 is the
# narrowest on the fp16 fast path (codelets.transpose: at least 8 columns, or 4 with fewer than
# 684 updates); GPT-2 XL's position gradient (1,024 updates) costs 23 k cycles of transposes at 8,
# 36 k at 16, 62 k at 4. [D]
UPDATE_COLUMN_BLOCK = 8


def _updates_by_column(ctx: OpContext, updates: Tensor) -> Tensor:
    """``(cols, n)``: ``updates`` ``(n, cols)`` with each column's ``n`` values contiguous, so each
    table block's vertex reads its column as one region. Updates stored by rows (a layer's output
    gradient) are re-laid out as popops' planned ``multiUpdateAdd`` does (graphcore/poplibs
    lib/popops/DynamicSlice.cpp ``multiUpdateOp`` -> ``regroupSliceTensor``: a slice tensor made
    for the plan, ``createGroupedSliceTensor``, the updates regrouped into it by
    ``rearrange::regroupIfBeneficial``): blocks of :data:`UPDATE_COLUMN_BLOCK` columns arrive a
    run of each update's row a region and are transposed on the tile
    (:func:`softipu.ops.rearrange.transpose_into_slabs`). Read in place, column ``c`` is a
    region per update on every one of its row blocks' tiles (one per element: GPT-2 XL's
    position table, 1,600 columns x 8 row blocks x 1,024 updates, 13 M regions)."""
    from softipu.ops.rearrange import is_column_major, transpose_into_slabs  # noqa: PLC0415 - cycle

    n, cols = updates.shape
    if _column_major(updates) or n < 2 or cols < 2:  # each column already one run
        return updates.T
    x = updates.T.reshape(1, cols, n)
    if not is_column_major(x):
        return updates.T
    starts = np.arange(0, cols, UPDATE_COLUMN_BLOCK, dtype=np.int64)
    sizes = np.minimum(UPDATE_COLUMN_BLOCK, cols - starts)
    tiles = ctx.graph.num_tiles

    def tile_of(g, rb, p, cb):  # the blocks spread evenly over the chip
        return (rb * tiles) // starts.size + 0 * (g + p + cb)

    flat = transpose_into_slabs(ctx, x, starts, sizes, np.array([0]), np.array([n]), 1, tile_of,
                                name=f"{ctx.name}/updates")
    return flat.reshape(cols, n)


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
    out = slice_output(graph, table, indices.shape[0], f"{ctx.name}/out")
    _slice_rows(ctx, table, indices, out)
    _map_rest(ctx, out)
    return out


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
