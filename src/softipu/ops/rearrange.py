"""Transposing re-layouts done as popops' rearrangement does them: exchange blocks, transpose on tile.

A copy from a column-major matrix into one laid out by rows (a swapped matmul's output, or a
``k.transpose(-1, -2)`` view, feeding the next matmul's column slabs) is contiguous on both sides
only one element at a time: copied directly, every element is its own exchange region, and each
region costs exchange code on the sending and the receiving tile (``Target.exchange_code_bytes_
per_region``). popops (``rearrange::regroupTensor``) and poplin instead move whole runs that are
contiguous in the source to the tile that needs them, into a buffer kept in the source's order,
and transpose there with ``Transpose2d`` vertices. :func:`transpose_into_slabs` does that:

* the destination is a matrix in column slabs (slab ``j`` holds the ``R`` rows of column block
  ``j``, row-major), each row block of each slab cut into *pieces* of whole rows, each piece on
  one tile;
* the exchange copies, for each piece and each of its columns, the piece's rows of that column:
  one run contiguous in the source, landing contiguous in the piece's buffer (``cols x rows``);
* ``Transpose2d`` vertices write it into the slab, one per *unit* of the piece's rows: the whole
  piece, or (4-byte types) the tallest unit on poplibs' fast path (:func:`unit_rows`); the buffer
  holds the piece unit by unit, each ``cols x unit rows``.

So a piece of ``r`` rows and ``w`` columns is ``w`` exchange regions (``w r / u`` with units of
``u`` rows), not ``r w``. Everything is described by strides (a few boxes of units), never by one
address per element.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from softipu.codelets.transpose import TRANSPOSE, transpose_codelet
from softipu.graph import program as P
from softipu.graph.graph import ComputeSet
from softipu.graph.tensor import Tensor
from softipu.ops.common import OpContext
from softipu.ops.indexing._common import _runs

__all__ = ["MIN_PIECE_ROWS", "MIN_UNIT_ROWS", "is_column_major", "pieces_per_block", "transpose_into_slabs",
           "unit_rows", "PieceTiles"]

# A piece of r rows and w columns is w exchange regions (16 B of exchange code each on the sending
# and the receiving tile, Target.exchange_code_bytes_per_region) holding r w elements: below 16
# rows the code outweighs the data it moves in fp16 (2 r B per region). Fewer, taller pieces put
# a block on fewer of the tiles that read it; the matmul's own exchange broadcasts it anyway. [U]
MIN_PIECE_ROWS = 16
# A piece is transposed in units on Transpose2d's fast path, but none shorter than this. [U]
MIN_UNIT_ROWS = 8

# tile_of(g, row_block, piece, col_block) -> tiles (numpy arrays that broadcast)
PieceTiles = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def is_column_major(x: Tensor) -> bool:
    """Whether the ``(G, R, C)`` view ``x`` runs contiguously down its columns rather than along
    its rows (so copying it into a row-major layout would cut it element by element)."""
    _, r, c = x.shape
    if r < 2 or x.numel < 4:
        return False
    if x.is_strided:
        return x.strides[1] == 1 and (c == 1 or x.strides[2] != 1)
    # An indexed or grouped view: judged on a corner, so no address per element is made.
    addr = x[:1, :min(r, 16), :min(c, 16)].addresses()
    down = np.count_nonzero(np.diff(addr, axis=1) == 1)
    along = np.count_nonzero(np.diff(addr, axis=2) == 1) if c > 1 else 0
    return down > 2 * along


@dataclass(frozen=True, slots=True)
class _Box:
    """Units (one Transpose2d each) of equal shape at evenly spaced places: row blocks
    ``rb0 + [0, nrb)`` (height ``h``), units ``p0 + [0, np_)`` of ``nr`` rows (every unit but a
    block's last is ``pr`` rows; unit ``p`` is on the tile of the block's piece ``p // per``),
    column blocks ``cb0 + [0, ncb)`` of width ``w``."""

    r0: int  # first row of the box's first unit
    rb0: int
    nrb: int
    h: int
    p0: int
    np_: int
    pr: int
    nr: int
    cb0: int
    c0: int
    ncb: int
    w: int
    per: int  # units per piece

    @property
    def shape(self) -> tuple[int, ...]:
        """Row blocks, units, column blocks, columns, rows: a unit's rows innermost, so the
        copy's element order walks the runs contiguous on both sides."""
        return (self.nrb, self.np_, self.ncb, self.w, self.nr)


def _runs_of_equal(sizes: np.ndarray) -> list[tuple[int, int, int]]:
    """(first index, count, size) of each run of equal consecutive sizes."""
    starts, lengths = _runs(sizes)
    return list(zip(starts.tolist(), lengths.tolist(), sizes[starts].tolist(), strict=True))


def pieces_per_block(height: int, spread: int) -> int:
    """How many tiles a block of ``height`` rows is cut over: ``spread``, but no piece shorter
    than :data:`MIN_PIECE_ROWS` rows (one piece when the block is shorter)."""
    return max(1, min(spread, height // MIN_PIECE_ROWS))


def unit_rows(piece_rows: int, width: int, itemsize: int) -> int:
    """Rows of one Transpose2d unit of a piece ``piece_rows`` x ``width``: the whole piece, but
    for 4-byte types the tallest even unit, of at least :data:`MIN_UNIT_ROWS`, on poplibs' fast
    path (its largest stride ``width (rows - 2) / 2`` under 512 words, codelets.transpose): about
    one cycle an element instead of two, for a region per ``rows`` elements."""
    t = TRANSPOSE
    if itemsize < 4 or width % 2 or width >= t.stride_limit:
        return piece_rows
    fast = 1 + -(-2 * t.stride_limit // width)  # largest rows with width (rows - 2) < 1024
    unit = min(piece_rows, fast) // 2 * 2
    return unit if unit >= MIN_UNIT_ROWS else piece_rows


def _boxes(row_starts: np.ndarray, row_sizes: np.ndarray, col_starts: np.ndarray,
           col_sizes: np.ndarray, spread: int, itemsize: int) -> list[_Box]:
    boxes = []
    for rb0, nrb, h in _runs_of_equal(row_sizes):
        tall = -(-h // pieces_per_block(h, spread))
        for cb0, ncb, w in _runs_of_equal(col_sizes):
            pr = unit_rows(tall, w, itemsize)
            full, rem = divmod(h, pr)
            for p0, np_, nr in [(0, full, pr)] + ([(full, 1, rem)] if rem else []):
                boxes.append(_Box(int(row_starts[rb0]) + p0 * pr, rb0, nrb, h, p0, np_, pr, nr, cb0,
                                  int(col_starts[cb0]), ncb, w, -(-tall // pr)))
    return boxes


def _source_box(x: Tensor, b: _Box) -> Tensor:
    """``x``'s elements of box ``b`` as a ``(G, nrb, units, ncb, w, rows)`` view."""
    shape = (x.shape[0],) + b.shape
    if x.is_strided:
        sg, sr, sc = x.strides
        strides = (sg, b.h * sr, b.pr * sr, b.w * sc, sc, sr)
        return Tensor(x.graph, x.dtype, shape, x.offset + b.r0 * sr + b.c0 * sc, strides)
    # Other views by view ops, which keep a grouped view's structure where they can.
    r1, c1 = b.r0 - b.p0 * b.pr + b.nrb * b.h, b.c0 + b.ncb * b.w
    box = x[:, b.r0 - b.p0 * b.pr:r1, b.c0:c1].reshape(shape[0], b.nrb, b.h, b.ncb, b.w)
    box = box[:, :, b.p0 * b.pr:b.p0 * b.pr + b.np_ * b.nr]
    return box.reshape(shape[0], b.nrb, b.np_, b.nr, b.ncb, b.w).transpose(0, 1, 2, 4, 5, 3)


def _piece_starts(b: _Box, groups: int, rows: int, cols: int) -> np.ndarray:
    """Offset of each unit of ``b`` in the slab layout, ``(G, nrb, units, ncb)``."""
    g = np.arange(groups)[:, None, None, None] * rows * cols
    rb = np.arange(b.nrb)[None, :, None, None] * b.h * b.w
    p = np.arange(b.np_)[None, None, :, None] * b.pr * b.w
    cb = np.arange(b.ncb)[None, None, None, :] * b.w * rows
    return g + rb + p + cb + b.c0 * rows + b.r0 * b.w


def transpose_into_slabs(ctx: OpContext, x: Tensor, row_starts: np.ndarray, row_sizes: np.ndarray,
                         col_starts: np.ndarray, col_sizes: np.ndarray, spread: int,
                         tile_of: PieceTiles, name: str) -> Tensor:
    """Copy the column-major ``(G, R, C)`` view ``x`` into a new column-slab variable.

    Column block ``j`` (``col_starts[j]``, ``col_sizes[j]`` wide) is slab ``j``, holding the
    ``R`` rows row-major; row block ``i`` of each slab is cut into :func:`pieces_per_block`
    pieces of whole rows, piece ``p`` of block ``(g, i, j)`` on tile ``tile_of(g, i, p, j)``. Returns the
    flat variable (block ``(g, i, j)`` starts at ``g R C + col_starts[j] R + row_starts[i]
    col_sizes[j]``). Appends the exchange (``Copy``) and the on-tile ``Transpose2d`` compute set.
    """
    graph = ctx.graph
    groups, rows, cols = x.shape
    dst = graph.add_variable(x.dtype, (groups * rows * cols,), name=name)
    buf = graph.add_variable(x.dtype, (groups * rows * cols,), name=f"{name}/rearranged")
    boxes = _boxes(row_starts, row_sizes, col_starts, col_sizes, spread, x.dtype.itemsize)
    cs = ctx.compute_set("transpose")
    # The buffer is written box by box: each copy alone is a partial write, which liveness reads
    # as keeping an older value (always live) unless the buffer is declared dead first.
    ctx.prog.add(P.WriteUndef(buf))
    starts, lengths, tiles = [], [], []
    for b in boxes:
        first = _piece_starts(b, groups, rows, cols)
        rb = b.rb0 + np.arange(b.nrb)[None, :, None, None]
        p = (b.p0 + np.arange(b.np_)[None, None, :, None]) // b.per
        cb = b.cb0 + np.arange(b.ncb)[None, None, None, :]
        tile = np.broadcast_to(tile_of(np.arange(groups)[:, None, None, None], rb, p, cb), first.shape)
        # The buffer holds each unit in the source's order: its w columns of nr rows.
        view = Tensor(graph, x.dtype, (groups,) + b.shape, buf.offset + int(first.flat[0]),
                      (rows * cols, b.h * b.w, b.pr * b.w, b.w * rows, b.nr, 1))
        ctx.prog.add(P.Copy(_source_box(x, b), view))
        _add_transposes(graph, cs, x.dtype, buf.offset + first, dst.offset + first, tile, b)
        starts.append(first.ravel())
        lengths.append(np.full(first.size, b.nr * b.w, np.int64))
        tiles.append(tile.ravel())
    s, n, t = (np.concatenate(a) for a in (starts, lengths, tiles))
    for var in (dst, buf):
        graph.map_intervals(var, s, s + n, t)
    ctx.execute(cs)
    return dst


def _add_transposes(graph, cs: ComputeSet, dtype, src_starts: np.ndarray, dst_starts: np.ndarray,
                    tiles: np.ndarray, b: _Box) -> None:
    """One Transpose2d per unit (``w x nr`` in the buffer to ``nr x w`` in the slab), in bulk
    calls along the box's longest axis, where the units are evenly spaced."""
    codelet = transpose_codelet(dtype)
    axis = int(np.argmax(src_starts.shape))
    src = np.moveaxis(src_starts, axis, -1).reshape(-1, src_starts.shape[axis])
    dst = np.moveaxis(dst_starts, axis, -1).reshape(src.shape)
    til = np.moveaxis(tiles, axis, -1).reshape(src.shape)
    n = b.nr * b.w
    for s_row, d_row, t_row in zip(src, dst, til, strict=True):
        v = s_row.size
        step = int(s_row[1] - s_row[0]) if v > 1 else 0
        fields = {"src": Tensor(graph, dtype, (v, n), int(s_row[0]), (step, 1)),
                  "dst": Tensor(graph, dtype, (v, n), int(d_row[0]), (step, 1)),
                  "rows": np.full(v, b.w), "cols": np.full(v, b.nr)}
        graph.add_vertices(cs, codelet, fields, t_row)
