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
from softipu.graph import program as P
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
# into row blocks of ceil(rows / row_blocks) rows, the last one shorter (popops' partitions:
# graphcore/poplibs lib/popops/DynamicSlice.cpp multiSlicePlanned, ``sElemsPerPartition =
# ceildiv(sTotalElems, sSplit)``), one vertex each (several on a tile when a tile holds several
# columns), so every vertex field stays a strided view of the table (the engine never gathers
# it): block (c, r) is rows [r h, (r + 1) h) of column c's contiguous storage. A lookup's row
# blocks give partial rows, summed.
MAX_ROW_BLOCKS = 8
MIN_BLOCK_ROWS = 64


def plan_table_split(rows: int, cols: int, tiles: int) -> tuple[int, int]:
    """``(width, row_blocks)`` of a ``[rows, cols]`` slicable table on ``tiles`` tiles: ``width``
    columns a tile and each column cut into ``row_blocks`` blocks of ``ceil(rows / row_blocks)``
    rows (the last one shorter; at most ``MAX_ROW_BLOCKS``, each at least ``MIN_BLOCK_ROWS``
    rows), the pair holding the fewest elements on the fullest tile (the table's, its gradient's
    and optimizer state's bytes there, and the update's work), ties to fewer row blocks (fewer
    partial rows to sum after a lookup). Without a row split the width is ``ceil(cols / tiles)``,
    one block of whole columns a tile.

    popops' embedding planner (graphcore/poplibs lib/popops/DynamicSlice.cpp, ``embedding::plan``)
    splits the rows (``slicedDimSplit``, any count: ``ceildiv`` partitions) and charges a table
    spread less evenly than ``ceil(elements / tiles)`` a tile as if it had to be exchanged into
    place (``alwaysIncludeBaseRearrangementCost``, on by default), for lookups alone too.

    >>> plan_table_split(8192, 256, 1472)
    (1, 5)
    >>> plan_table_split(30522, 768, 1472)
    (4, 7)
    >>> plan_table_split(100, 8, 4)
    (2, 1)
    """
    width = -(-cols // tiles) if cols else 1
    best = (width * rows, width, 1)
    for w in range(1, cols + 1):
        blocks = min(MAX_ROW_BLOCKS, tiles // -(-cols // w), rows // MIN_BLOCK_ROWS)
        if blocks > 1 and w * -(-rows // blocks) < best[0]:
            best = (w * -(-rows // blocks), w, blocks)
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
    block a tile: BERT-Large's 30522 x 1024 words table holds 43,610 B on its fullest tile so,
    61,044 B in whole columns (popops' planner charges a table spread less evenly than the chip
    allows as an exchange into place, ``alwaysIncludeBaseRearrangementCost``).
    A lookup of a row-split table sums partial rows. With ``split_rows=False`` (a table only looked
    up) the columns are spread whole when there are as many as tiles; fewer, and the storage is
    spread evenly over every tile, each lookup receiving the rest of its column from the next
    tiles (:func:`_slice_rows`): no partial rows to sum, one vertex a column.

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
    if not split_rows and cols < graph.num_tiles:
        # Whole columns would leave tiles idle: the storage is spread over every tile instead and
        # each lookup's vertex (on the tile of its column's first row) receives the rest of its
        # column, as popops' planned layout spreads a partition over the tiles of its lookup split
        # and broadcasts it to them for each lookup (graphcore/poplibs lib/popops/DynamicSlice.cpp,
        # createSliceableTensor: "we will broadcast each contiguous chunk of the tensor between
        # tiles while respecting grain size", in grains of the 8-byte exchange atom).
        map_linearly(graph, t.T, grain_size=graph.target.vector_width(t.dtype.itemsize))
        return t
    width, row_blocks = plan_table_split(rows, cols, graph.num_tiles) if split_rows else (1, 1)
    if row_blocks == 1:
        for c0, c1, tile in _column_blocks(graph, t):
            graph.set_tile_mapping(t[:, c0:c1], tile)
        return t
    col, block = np.divmod(np.arange(cols * row_blocks), row_blocks)  # block (c, r): c * row_blocks + r
    height = -(-rows // row_blocks)
    total = -(-cols // width) * row_blocks
    starts = col * rows + block * height
    graph.map_intervals(t.T, starts, np.minimum(starts + height, (col + 1) * rows),
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
    """``[cols, row_blocks]`` tiles of a column-major table whose columns are cut into row blocks
    of ``ceil(rows / row_blocks)`` rows (the last shorter) on distinct tiles
    (:func:`create_slicable_table`'s row split), from its storage's tile regions; else None
    (whole columns a tile)."""
    rows, cols = table.shape
    if not _column_major(table) or rows < 2:
        return None
    starts, lengths, tiles = tile_regions(graph, table.T)
    if starts.size <= cols or starts.size % cols:
        return None
    row_blocks = starts.size // cols
    height = -(-rows // row_blocks)
    if row_blocks > MAX_ROW_BLOCKS or height < MIN_BLOCK_ROWS or (row_blocks - 1) * height >= rows:
        return None  # not plan_table_split's blocks (e.g. a table spread evenly, split_rows=False)
    first = np.arange(row_blocks) * height
    want_starts = (np.arange(cols)[:, None] * rows + first[None, :]).reshape(-1)
    want_lengths = np.tile(np.minimum(height, rows - first), cols)
    if not (np.array_equal(starts, want_starts) and np.array_equal(lengths, want_lengths)):
        return None
    return tiles.reshape(cols, row_blocks)


def _block_column(table: Tensor, tiles: np.ndarray, r: int) -> Tensor:
    """``(cols, rows of block r)``: row block ``r`` of every column (rows ``[r h, (r + 1) h)`` of
    each column's storage), a strided view: one vertex group per row block keeps every field
    strided."""
    rows = table.shape[0]
    cols, row_blocks = tiles.shape
    height = -(-rows // row_blocks)
    return Tensor(table.graph, table.dtype, (cols, min(height, rows - r * height)),
                  table.offset + r * height, (rows, 1))


def _block_width(tiles: np.ndarray) -> int:
    """The columns a tile holds of each row block (``plan_table_split``'s width): the length of the
    runs of equal tiles down ``tiles[:, 0]``, all equal but the last (shorter); 1 when they are not."""
    _, lengths = _runs(tiles[:, 0])
    width = int(lengths[0])
    return width if np.all(lengths[:-1] == width) and lengths[-1] <= width else 1


def _shifted(ctx: OpContext, indices: Tensor, tiles: np.ndarray, height: int, width: int) -> Tensor:
    """``(column blocks, row_blocks, n)``: each tile's copy of the indices less its row block's
    first row (popops' ``baseOffset``, a vertex parameter there; here the index field), on the
    block's tile: the codelets treat rows outside the block as out of range. One copy a tile,
    read by the vertices of all ``width`` columns it holds (a lookup's indices arrive on every
    tile that looks up, once, as popops' broadcast of the offsets does). Declared dead before it
    is written, so it lives only while the lookup runs."""
    from softipu.ops.elementwise import E, map_  # noqa: PLC0415 - elementwise imports indexing

    graph, n = ctx.graph, indices.shape[0]
    cols, row_blocks = tiles.shape
    blocks = -(-cols // width)
    first = graph.add_constant(indices.dtype, (1, row_blocks, 1),
                               (np.arange(row_blocks) * height).reshape(1, -1, 1),
                               name=f"{ctx.name}/first_rows")
    graph.set_tile_mapping(first, int(tiles[0, 0]))
    out = graph.add_variable(indices.dtype, (blocks, row_blocks, n), name=f"{ctx.name}/rows")
    graph.set_tile_mappings(out.reshape(blocks * row_blocks, n), tiles[::width].reshape(-1))
    ctx.prog.add(P.WriteUndef(out))
    map_(graph, E.sub(E.input(1), E.input(2)), [out, indices.reshape(1, 1, n), first], ctx.prog,
         name=f"{ctx.name}/rows")
    return out


def _split_groups(table: Tensor, tiles: np.ndarray, width: int):
    """``(r, j, table block, column selector, vertex tiles)`` per vertex group: row block ``r``
    of the ``j``-th column of every tile's ``width`` (columns ``j, j + width, ...``), whose table
    blocks, indices and outputs are then each evenly spaced (strided fields, never gathered)."""
    cols, row_blocks = tiles.shape
    for r in range(row_blocks):
        block = _block_column(table, tiles, r)
        for j in range(min(width, cols)):
            yield r, j, block[j::width], slice(j, None, width), tiles[j::width, r]


def _slice_split(ctx: OpContext, table: Tensor, indices: Tensor, out: Tensor, tiles: np.ndarray) -> None:
    """Each block looks up every index (zeros outside its rows) into its own partial column; the
    row blocks' partials are summed into ``out`` (mapped in whole rows when contiguous)."""
    from softipu.ops.elementwise import E, map_  # noqa: PLC0415 - elementwise imports indexing

    graph, n = ctx.graph, indices.shape[0]
    cols, row_blocks = tiles.shape
    width = _block_width(tiles)
    if out.is_contiguous():
        map_linearly(graph, out, grain_size=max(1, out.shape[1]))
    elif _column_major(out):  # slice_output's: the j-th column of a tile group's `width` on the
        # tile of its row block j (mod row_blocks), where its sum runs: the lookup's result spread
        # over `width` tiles of each group, as many as whole columns used, not piled on the first
        # row block's (popops spreads its second stage's slices over the sliced split's tiles)
        c = np.arange(cols)
        graph.set_tile_mappings(out.T, tiles[c, (c % width) % row_blocks])
    shifted = _shifted(ctx, indices, tiles, -(-table.shape[0] // row_blocks), width)
    partial = graph.add_variable(table.dtype, (cols * row_blocks, n), name=f"{ctx.name}/partials")
    graph.set_tile_mappings(partial, tiles.reshape(-1))
    parts = partial.reshape(cols, row_blocks, n)
    cs = ctx.compute_set()
    codelet = multi_slice_codelet(table.dtype, indices.dtype, True)
    for r, _, block, sel, vertex_tiles in _split_groups(table, tiles, width):
        graph.add_vertices(cs, codelet, {"table": block, "index": shifted[: block.shape[0], r],
                                         "out": parts[sel, r]}, vertex_tiles)
    ctx.execute(cs)
    total = E.input(1)
    for r in range(1, row_blocks):
        total = E.add(total, E.input(r + 1))
    ctx.prog.add(P.WriteUndef(out))  # every element written by the sum: dead until then
    map_(graph, total, [out.T, *(parts[:, r] for r in range(row_blocks))], ctx.prog, name=f"{ctx.name}/sum")


def _update_split(ctx: OpContext, table: Tensor, indices: Tensor, updates: Tensor, scale: float,
                  accumulate: bool, tiles: np.ndarray) -> None:
    """Each block updates its rows from every index (the others skipped): the table does not
    move, each tile receives its column of the updates."""
    graph = ctx.graph
    cols, row_blocks = tiles.shape
    width = _block_width(tiles)
    shifted = _shifted(ctx, indices, tiles, -(-table.shape[0] // row_blocks), width)
    by_column = _updates_by_column(ctx, updates)
    cs = ctx.compute_set()
    codelet = multi_update_codelet(table.dtype, indices.dtype, accumulate, True)
    for r, _, block, sel, vertex_tiles in _split_groups(table, tiles, width):  # column c's updates
        graph.add_vertices(cs, codelet, {"table": block, "index": shifted[: block.shape[0], r],
                                         "updates": by_column[sel], "scale": scale}, vertex_tiles)
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
