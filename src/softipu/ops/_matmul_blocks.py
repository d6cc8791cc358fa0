"""Matmul operand blocks (part of :mod:`softipu.ops.matmul`): the plan's block grid, where each
block of an operand starts, and the column-slab layout an operand is copied into when its blocks
are not contiguous in place (see the layout note in :mod:`softipu.ops.matmul`'s docstring).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from softipu.dtypes import DType
from softipu.graph import program as P
from softipu.graph.graph import Graph
from softipu.graph.tensor import Slabs, Tensor
from softipu.ops.bulk import map_runs
from softipu.ops.common import OpContext
from softipu.ops.planner import Plan
from softipu.ops.rearrange import is_column_major, pieces_per_block, transpose_into_slabs

if TYPE_CHECKING:
    from softipu.ops.matmul import _Operand


# -- the block grid ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Grid:
    """Block boundaries of the plan along one dimension."""

    starts: np.ndarray
    sizes: np.ndarray

    @classmethod
    def of(cls, size: int, block: int) -> _Grid:
        starts = np.arange(0, size, block, dtype=np.int64)
        return cls(starts, np.minimum(block, size - starts))

    def __len__(self) -> int:
        return int(self.starts.size)

    @classmethod
    def of_sizes(cls, sizes) -> _Grid:
        sizes = np.asarray(sizes, np.int64)
        return cls(np.concatenate(([0], np.cumsum(sizes[:-1]))).astype(np.int64), sizes)


def k_grid(pl: Plan, serial: int | None = None) -> _Grid:
    """The plan's K blocks: ``k_split`` ranges of ``k_serial`` chunks. Unrolled: chunks of
    ``blocks[3]``, the last block short. A loop (:attr:`Plan.looped`): each range's chunks alike,
    ``blocks[3]`` on every range but the last, whose ``k_serial`` chunks share what is left
    (:func:`softipu.ops.planner._loop_steps`). ``serial``: chunks per range (1: one step's
    blocks, the loop's step buffers)."""
    q, c = pl.problem, pl.blocks[3]
    if not pl.looped:
        return _Grid.of(q.k, c)
    steps, ranges = pl.k_serial, pl.k_split
    last = (q.k - (ranges - 1) * steps * c) // steps
    each = steps if serial is None else serial
    return _Grid.of_sizes([c] * (each * (ranges - 1)) + [last] * each)


# -- operand layouts -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Blocks:
    """Where each block of a ``(groups, rows, cols)`` matrix starts, all blocks contiguous.

    ``starts[g, r, c]`` is the address of block ``(r, c)`` of the operand's own group ``g``;
    ``transposed``: blocks are stored column by column (as the block's transpose).
    """

    tensor: Tensor
    starts: np.ndarray
    transposed: bool
    group_of: np.ndarray


def _place_operand(ctx: OpContext, pl: Plan, op: _Operand, rows: _Grid, cols: _Grid,
                   role: str) -> _Blocks:
    """The operand's blocks in place when contiguous, else copied into column slabs."""
    found = _contiguous_blocks(op.x, rows, cols)
    if found is not None:
        starts, transposed = found
        return _Blocks(op.x, starts, transposed, op.group_of)
    spread = pl.n_split if role == "a" else pl.m_split
    tallest = int(rows.sizes.max())
    if is_column_major(op.x) and tallest // pieces_per_block(tallest, spread) >= 2:
        return _transposed_into_slabs(ctx, pl, op, rows, cols, role, spread)
    slab, starts = _slab_variable(ctx, pl, op.x.dtype, op.x.shape[0], rows, cols, role, op.group_of)
    _copy_into_slabs(ctx, op.x, slab, rows, cols)
    return _Blocks(slab, starts, False, op.group_of)


def _transposed_into_slabs(ctx: OpContext, pl: Plan, op: _Operand, rows: _Grid, cols: _Grid, role: str,
                           spread: int) -> _Blocks:
    """A column-major operand re-laid out into column slabs as popops rearranges: whole source
    runs exchanged to the tiles that hold each piece of a block, then transposed there
    (:func:`~softipu.ops.rearrange.transpose_into_slabs`); pieces sit where :func:`_map_blocks`
    spreads a block, over the tiles that read it."""
    gi = _first_user(op.group_of, op.x.shape[0]) // pl.blocks[0]
    ks = pl.k_serial

    def tile_of(g: np.ndarray, rb: np.ndarray, p: np.ndarray, cb: np.ndarray) -> np.ndarray:
        # A block cut over fewer tiles than read it: the k_serial blocks sharing those tiles
        # take turns, so each tile holds its share.
        if role == "a":  # block (g, i, lt): users (g, i, j, lt // serial)
            used = pieces_per_block(int(rows.sizes[0]), spread)
            return pl.tile_of(gi[g], rb, (p + (cb % ks) * used) % spread, cb // ks)
        used = pieces_per_block(int(rows.sizes[0]), spread)  # block (g, lt, j): users (g, i, j, ..)
        return pl.tile_of(gi[g], (p + (rb % ks) * used) % spread, cb, rb // ks)

    slab = transpose_into_slabs(ctx, op.x, rows.starts, rows.sizes, cols.starts, cols.sizes, spread,
                                tile_of, name=f"{ctx.name}/{role}")
    r_total = int(rows.sizes.sum())
    starts = (slab.offset + np.arange(op.x.shape[0])[:, None, None] * r_total * int(cols.sizes.sum())
              + cols.starts[None, None, :] * r_total + rows.starts[None, :, None] * cols.sizes[None, None, :])
    return _Blocks(slab, starts, False, op.group_of)


def _first_user(group_of: np.ndarray, groups: int) -> np.ndarray:
    """For each own group of an operand, the first product group that uses it."""
    first_user = np.full(groups, group_of.size, np.int64)
    np.minimum.at(first_user, group_of, np.arange(group_of.size))
    return np.minimum(first_user, max(group_of.size - 1, 0))


def _contiguous_blocks(x: Tensor, rows: _Grid, cols: _Grid):
    """(starts, transposed) when every block of ``x`` is one contiguous run; else None."""
    if x.numel == 0:
        return None
    known = _known_blocks(x, rows, cols)
    if known is not None:
        return known, _known_transposed(x)
    if x.is_strided:
        sg, sr, sc = x.strides
        for transposed in (False, True):
            if _strided_blocks_ok(x.strides, rows, cols, transposed):
                starts = (x.offset + np.arange(x.shape[0])[:, None, None] * sg
                          + rows.starts[None, :, None] * sr + cols.starts[None, None, :] * sc)
                return starts, transposed
        return None
    # Block (0, 0) of the first group alone first: a layout whose first block is not one run in
    # an order is rejected in that order without listing its addresses (BERT-Large's attention
    # heads at batch 18: 96 operands, 5.8 CPU s of address lists and whole-tensor comparisons).
    first = x[0, : int(rows.sizes[0]), : int(cols.sizes[0])].addresses()
    orders = [t for t in (False, True) if _is_one_run(first.T if t else first)]
    if not orders:
        return None
    addr = x.addresses()
    for transposed in orders:
        if _indexed_blocks_ok(addr, rows, cols, transposed):
            return addr[:, rows.starts][:, :, cols.starts], transposed
    return None


def _is_one_run(block: np.ndarray) -> bool:
    """True when a block's addresses, read row-major, step by one."""
    flat = block.reshape(-1)
    return bool(np.array_equal(flat, flat[0] + np.arange(flat.size, dtype=np.int64)))


def _strided_blocks_ok(strides: tuple[int, ...], rows: _Grid, cols: _Grid, transposed: bool) -> bool:
    _, sr, sc = strides
    if transposed:
        sr, sc, rows, cols = sc, sr, cols, rows
    if sc != 1 and int(cols.sizes.max()) > 1:
        return False
    if int(rows.sizes.max()) == 1:
        return True
    # Rows of a block are adjacent when the row stride is the block width: one block column.
    return len(cols) == 1 and sr == int(cols.sizes[0])


def _known_blocks(x: Tensor, rows: _Grid, cols: _Grid) -> np.ndarray | None:
    """Block starts of a matrix stored in column slabs (create_matmul_input_*, see
    :func:`_slab_view`), read from its structure alone when its slabs are ``cols`` (or, for a
    transposed view, ``rows``); None when ``x`` is not such a matrix or its slabs differ."""
    slabs = x.slabs
    if slabs is None or x.ndim != 3:
        return None
    mid = slabs.mid
    transposed = slabs.perm[1] == slabs.axis
    if slabs.perm[2 if not transposed else 1] != slabs.axis:
        return None
    s_rows, s_cols = (cols, rows) if transposed else (rows, cols)
    offsets, widths, group_strides = [], [], set()
    for offset, shape, strides, _ in slabs.pieces:
        if len(shape) == 4 and strides[1:] == (shape[3], shape[1] * shape[3], 1):
            n, w = shape[2], shape[3]
        elif len(shape) == 3 and strides[1:] == (shape[2], 1):
            n, w = 1, shape[2]
        else:
            return None
        if shape[0] != x.shape[0] or shape[1] != int(s_rows.sizes.sum()):
            return None
        group_strides.add(strides[0] if shape[0] > 1 else 0)
        offsets.extend(offset + k * shape[1] * w for k in range(n))
        widths.extend([w] * n)
    if len(group_strides) != 1 or mid[slabs.axis] != sum(widths) or not np.array_equal(widths, s_cols.sizes):
        return None
    sg = group_strides.pop()
    starts = (np.asarray(offsets, np.int64)[None, None, :] + np.arange(x.shape[0])[:, None, None] * sg
              + s_rows.starts[None, :, None] * np.asarray(widths, np.int64)[None, None, :])
    return starts.transpose(0, 2, 1) if transposed else starts


def _known_transposed(x: Tensor) -> bool:
    return x.slabs is not None and x.slabs.perm[1] == x.slabs.axis


def _indexed_blocks_ok(addr: np.ndarray, rows: _Grid, cols: _Grid, transposed: bool) -> bool:
    r = np.arange(addr.shape[1], dtype=np.int64)
    c = np.arange(addr.shape[2], dtype=np.int64)
    r_block = np.searchsorted(rows.starts, r, side="right") - 1
    c_block = np.searchsorted(cols.starts, c, side="right") - 1
    r_in, c_in = r - rows.starts[r_block], c - cols.starts[c_block]
    if transposed:
        local = c_in[None, :] * rows.sizes[r_block][:, None] + r_in[:, None]
    else:
        local = r_in[:, None] * cols.sizes[c_block][None, :] + c_in[None, :]
    first = addr[:, rows.starts[r_block]][:, :, cols.starts[c_block]]
    return bool(np.array_equal(first + local[None], addr))


def _slab_variable(ctx: OpContext, pl: Plan, dtype: DType, groups: int, rows: _Grid, cols: _Grid,
                   role: str, group_of: np.ndarray, name: str = "",
                   serial: int | None = None, pieces: list | None = None) -> tuple[Tensor, np.ndarray]:
    """A new ``(groups, R, C)`` matrix in column slabs, mapped as the plan wants.

    Returns its variable (flat) and the start address of each block. ``serial``: the K blocks
    of a tile's range (default the plan's ``k_serial``; 1 for one serial step's blocks);
    ``pieces``: :func:`_block_pieces` of these arguments where the caller has them already.
    """
    r_total, c_total = int(rows.sizes.sum()), int(cols.sizes.sum())
    var = ctx.graph.add_variable(dtype, (groups * r_total * c_total,),
                                 name=name or f"{ctx.name}/{role}")
    slab_start = np.concatenate(([0], np.cumsum(cols.sizes[:-1] * r_total)))
    starts = (var.offset + np.arange(groups)[:, None, None] * r_total * c_total
              + slab_start[None, None, :] + rows.starts[None, :, None] * cols.sizes[None, None, :])
    _map_blocks(ctx.graph, pl, var, starts, rows, cols, role, group_of, serial, pieces)
    return var, starts


def _copy_into_slabs(ctx: OpContext, x: Tensor, slab: Tensor, rows: _Grid, cols: _Grid) -> None:
    """Copy ``x`` (groups, R, C) into the column-slab variable ``slab``: one copy per run of
    slabs of one width (every slab but the last, and the last; a loop's K grid: two runs)."""
    g_, r_total, c_total = x.shape
    runs = _width_runs(cols)
    if len(runs) > 1:  # partial writes: declared dead first, or liveness keeps it always
        ctx.prog.add(P.WriteUndef(slab))
    for n, (c0, count, width) in enumerate(runs):
        src = x[:, :, c0: c0 + count * width]
        if n == 0 or count > 1:
            dst = Tensor(slab.graph, slab.dtype, (g_, r_total, count, width), slab.offset + c0 * r_total,
                         (r_total * c_total, width, r_total * width, 1))
            src = src.reshape(g_, r_total, count, width)
        else:  # a last, narrower slab
            dst = Tensor(slab.graph, slab.dtype, (g_, r_total, width), slab.offset + c0 * r_total,
                         (r_total * c_total, width, 1))
        ctx.prog.add(P.Copy(src, dst))


def _width_runs(cols: _Grid) -> list[tuple[int, int, int]]:
    """(first column, slabs, width) of each run of consecutive slabs of one width."""
    sizes = cols.sizes
    cut = np.flatnonzero(sizes[1:] != sizes[:-1]) + 1
    bounds = np.concatenate(([0], cut, [sizes.size])).tolist()
    return [(int(cols.starts[lo]), hi - lo, int(sizes[lo]))
            for lo, hi in zip(bounds[:-1], bounds[1:], strict=True) if hi > lo]


_MIN_BYTES_PER_TILE = {"a": 128, "b": 256}  # the plan's A is poplin's input, B its weights


def _map_blocks(graph: Graph, pl: Plan, var: Tensor, starts: np.ndarray, rows: _Grid, cols: _Grid,
                role: str, group_of: np.ndarray, serial: int | None = None,
                pieces: list | None = None) -> None:
    """Spread each block over the tiles that read it (A: its N blocks; B: its M blocks)."""
    if pieces is None:
        pieces = _block_pieces(pl, starts.shape[0], rows, cols, role, group_of, var.dtype.itemsize, serial)
    runs = [(np.broadcast_to(starts + lo, lo.shape).ravel(), (hi - lo).ravel(), t.ravel())
            for lo, hi, t in pieces]
    map_runs(graph, var, *(np.concatenate(col) for col in zip(*runs, strict=True)))


def _block_pieces(pl: Plan, groups: int, rows: _Grid, cols: _Grid, role: str, group_of: np.ndarray,
                  itemsize: int, serial: int | None = None) -> list[tuple[np.ndarray, ...]]:
    """``(lo, hi, tile)`` of piece ``p`` of every block, for each ``p`` used (arrays of the block
    grid's shape ``(groups, len(rows), len(cols))``): elements ``[lo, hi)`` of the block sit on
    ``tile``, one of the tiles that read it. ``serial``: the K blocks of a tile's range (default
    the plan's ``k_serial``)."""
    serial = pl.k_serial if serial is None else serial
    first_user = _first_user(group_of, groups)
    bg = pl.blocks[0]
    gi = (first_user // bg)[:, None, None]
    if role == "a":  # block (g, i, lt): users (g, i, j, lt // serial) for every j
        i = np.arange(len(rows))[None, :, None]
        lt = np.arange(len(cols))[None, None, :]
        spread = pl.n_split

        def tile(p: int) -> np.ndarray:
            return pl.tile_of(gi, i, p, lt // serial)
    else:  # block (g, lt, j): users (g, i, j, lt // serial) for every i
        lt = np.arange(len(rows))[None, :, None]
        j = np.arange(len(cols))[None, None, :]
        spread = pl.m_split

        def tile(p: int) -> np.ndarray:
            return pl.tile_of(gi, p, j, lt // serial)
    size = rows.sizes[None, :, None] * cols.sizes[None, None, :]
    # No piece under poplin's minimum per tile (lib/poplin/Convolution.cpp, mapActivationsOrWeights:
    # "Limit the minimum number of bytes per tile to reduce the amount of exchange code", 128 B of
    # activations, 256 B of weights): a small block sits on fewer of its users, each of whom then
    # receives fewer regions (ResNet-50's 7x7 stem: 9,408 weights had been cut over 1,344 tiles,
    # 7 elements each, and every tile received all 1,344 pieces).
    least = -(-_MIN_BYTES_PER_TILE[role] // itemsize)
    piece = np.maximum(-(-size // spread), least)
    # Only the users a piece lands on: past the largest block's piece count every piece is empty
    # (a convolution's weights at batch 64 looped over 1,472 users for ~32 pieces a block).
    used = max(1, min(spread, int((-(-size // piece)).max(initial=0))))
    shape = (groups, len(rows), len(cols))
    out = []
    for p in range(used):
        lo = np.minimum(p * piece, size)
        hi = np.minimum(lo + piece, size)
        out.append(tuple(np.broadcast_to(x, shape) for x in (lo, hi, tile(p))))
    return out


def _slab_view(var: Tensor, groups: int, rows: _Grid, cols: _Grid) -> Tensor:
    """The ``(groups, R, C)`` matrix a column-slab variable holds (strided when one slab).

    Slabs come in runs of one width (:meth:`_Grid.of`: every slab but the last is ``w`` columns
    wide; a loop's K grid, :func:`k_grid`: two runs), so each run is one ``(groups, R, slabs,
    w)`` strided block read as ``(groups, R, slabs * w)`` (a last single slab: ``(groups, R,
    w)``): a :class:`~softipu.graph.tensor.Slabs` layout, a few ints however large the matrix.
    """
    r_total, c_total = int(rows.sizes.sum()), int(cols.sizes.sum())
    if len(cols) == 1:
        return var.reshape(groups, r_total, c_total)
    pieces = []
    for n, (c0, count, w) in enumerate(_width_runs(cols)):
        at = var.offset + c0 * r_total
        if n == 0 or count > 1:
            pieces.append((at, (groups, r_total, count, w), (r_total * c_total, w, r_total * w, 1),
                           (groups, r_total, count * w)))
        else:
            pieces.append((at, (groups, r_total, w), (r_total * c_total, w, 1), (groups, r_total, w)))
    slabs = Slabs(tuple(pieces), axis=2, perm=(0, 1, 2))
    return Tensor(var.graph, var.dtype, (groups, r_total, c_total), 0, (), None, slabs)
