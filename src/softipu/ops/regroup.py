"""An elementwise operand laid out across the output's grouping, regrouped first as popops does.

popops' binary ops first regroup each operand to the grouping of the output
(graphcore/poplibs lib/popops/ElementWise.cpp ``binaryOpGeneral``: "First try to regroup to match
the grouping of the output tensor", ``rearrange::regroupIfBeneficial(graph, in, out, copies,
cs)``): when the operand's elements run contiguously along another dimension than the output's
(a swapped matmul's output, stored column-major, added to a row-major residual stream), its
blocks are copied into a ``preRegroup`` variable whose transpositions are spread evenly over the
tiles and transposed there (lib/popops/Rearrange.cpp ``regroupTensorInternal``: "Map
transpositions on this IPU evenly across the tiles", then ``partialTranspose`` on
``Transpose2d`` vertices). The op then reads the operand in runs as long as a block's width
instead of one exchange region per element: BERT-Large's first residual adds received 1,024
regions on every tile (16 KiB of exchange code each).

Here (:func:`regroup_operands`, :func:`regroup_into`) the block is :data:`GROUP` x :data:`GROUP`
elements, a multiple of popops' smallest regroup grain (``getMinimumRegroupGrainSize``: 4 half,
2 float elements; popops' own blocks are the detected groupings, ``detectDimGroupings``, cut by
``updateGroupingInternal``: not modelled); the blocks, in order, ``ceil(blocks / tiles)`` a tile;
the gather and the transposes are :func:`softipu.ops.rearrange.transpose_into_slabs` (column
blocks of :data:`GROUP`, pieces of :data:`GROUP` rows), then one copy in runs of :data:`GROUP`
into a variable laid out like the output (popops' op reads the blocks where they were
transposed: the same runs, over exchange in its own step). The values are copied, never
computed: the op's results are unchanged.
"""

from __future__ import annotations

import math

import numpy as np

from softipu.dtypes import float16, float32
from softipu.graph import program as P
from softipu.graph.tensor import Tensor
from softipu.ops.common import OpContext, tile_regions

__all__ = ["GROUP", "can_regroup", "regroup_into", "regroup_operands"]

# Rows and columns of a regrouped block: a multiple of popops' smallest regroup grain (4 half, 2
# float: Rearrange.cpp getMinimumRegroupGrainSize), the rows of rearrange.py's smallest piece
# (MIN_PIECE_ROWS, below which a region's exchange code outweighs the data it moves). [U]
GROUP = 16


def regroup_operands(ctx: OpContext, tensors: list[Tensor], shape: tuple[int, ...],
                     ref: int | None) -> list[Tensor]:
    """``tensors`` with each full-shape operand other than ``ref`` (the one the output is laid out
    like) that is stored column-major where the reference is not replaced by a regrouped copy (see
    the module docstring); the others as they are."""
    if ref is None or len(shape) < 2:
        return tensors
    rows, cols = math.prod(shape[:-1]), shape[-1]
    if rows % GROUP or cols % GROUP or tensors[ref].shape != shape:
        return tensors
    if _column_major(tensors[ref].reshape(rows, cols)):
        return tensors
    out = list(tensors)
    for i, t in enumerate(tensors):
        if i == ref or t.shape != shape:
            continue
        t2 = t.reshape(rows, cols)
        if can_regroup(t2):
            dst = ctx.graph.add_variable(t.dtype, (rows, cols), name=f"{ctx.name}/regrouped{i}/like_out")
            r_starts, r_lengths, r_tiles = tile_regions(ctx.graph, tensors[ref].reshape(rows, cols))
            ctx.graph.map_intervals(dst, r_starts, r_starts + r_lengths, r_tiles)
            out[i] = regroup_into(ctx, t2, dst, f"{ctx.name}/regrouped{i}").reshape(shape)
    return out


def can_regroup(t2: Tensor) -> bool:
    """Whether :func:`regroup_into` takes the ``(R, C)`` view: float, stored column-major, both
    sides multiples of :data:`GROUP`."""
    rows, cols = t2.shape
    return (t2.dtype in (float16, float32) and not rows % GROUP and not cols % GROUP
            and _column_major(t2))


def _column_major(t2: Tensor) -> bool:
    from softipu.ops.rearrange import is_column_major  # noqa: PLC0415 - rearrange imports elementwise

    return is_column_major(t2.reshape(1, *t2.shape))


def regroup_into(ctx: OpContext, t2: Tensor, dst: Tensor, name: str) -> Tensor:
    """Copy ``t2`` (``(R, C)``, column-major, :func:`can_regroup`) into ``dst`` (a fresh mapped
    ``(R, C)`` row-major variable): gathered in :data:`GROUP` x :data:`GROUP` blocks spread over
    the tiles and transposed there, then copied in runs of :data:`GROUP` into ``dst``. Returns
    ``dst``."""
    from softipu.ops.rearrange import transpose_into_slabs  # noqa: PLC0415 - rearrange imports elementwise

    graph = ctx.graph
    rows, cols = t2.shape
    # The blocks in order (row block, then column block) spread evenly over the tiles, as
    # regroupTensorInternal maps its transpositions ("spread across all tiles": ceil(blocks /
    # tiles) consecutive blocks a tile).
    nrb, ncb = rows // GROUP, cols // GROUP
    per_tile = -(-nrb * ncb // graph.num_tiles)

    def tile_of(_g, rb, _p, cb):  # a block is one piece (GROUP rows); broadcast by the caller
        return (rb * ncb + cb) // per_tile

    starts = np.arange(0, rows, GROUP, dtype=np.int64)
    col_starts = np.arange(0, cols, GROUP, dtype=np.int64)
    flat = transpose_into_slabs(ctx, t2.reshape(1, rows, cols), starts, np.full(starts.size, GROUP),
                                col_starts, np.full(col_starts.size, GROUP), 1, tile_of, name=name)
    ctx.prog.add(P.Copy(flat.reshape(cols // GROUP, rows, GROUP).transpose(1, 0, 2).reshape(rows, cols),
                        dst))
    return dst
