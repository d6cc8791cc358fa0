"""Block-sparse softmax for masked attention (popsparse::experimental's ``bsSoftmax`` /
``bsSoftmaxGrad``, lib/popsparse/BSNonLinearity.cpp).

The input is the non-zero values ``(nnz_blocks, b, b)`` of a :class:`~softipu.ops.sparse.CSRMatrix`
pattern (an attention score matrix kept only at its blocks). Row ``r`` of the matrix is the
elements of row ``r % b`` of every block in block-row ``r // b``; the softmax runs along each row
over those elements only: positions outside the pattern's blocks are excluded (as ``-inf`` logits,
probability 0). ``sub_block_mask`` also excludes, as popsparse's ``SubBlockMask``, the elements
above (``"zero_upper_triangle"``: causal attention) or below (``"zero_lower_triangle"``) the whole
matrix's diagonal; their outputs are 0, and a row with nothing left is all zeros.

Structure as popsparse builds it (sliceAndPad): the rows are gathered into one rectangle
``(rows, L)``, ``L`` the longest row, shorter rows padded with the data type's lowest finite value
(``exp`` makes those 0), empty rows left out; then one dense softmax of the rectangle (popnn's
:func:`softipu.ops.nn.softmax`: row max, ``exp(x - max)``, fp32 sum, divide; its vertices and
cycle estimates) and a copy back into the blocks' layout, masked positions 0. The gradient is
``y * (dy - sum(dy * y))`` per row (:func:`softipu.ops.nn.softmax_grad` on the same rectangle,
padding 0), as bsSoftmaxGrad.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from softipu.graph import program as P
from softipu.graph.graph import Graph
from softipu.graph.tensor import Tensor, concat
from softipu.ops.common import OpContext, parse_options
from softipu.ops.mapping import map_linearly
from softipu.ops.nn.softmax import softmax, softmax_grad
from softipu.ops.sparse.static import CSRMatrix

__all__ = ["SUB_BLOCK_MASKS", "block_sparse_softmax", "block_sparse_softmax_grad"]

SUB_BLOCK_MASKS = ("none", "zero_upper_triangle", "zero_lower_triangle")


def _layout(pattern: CSRMatrix, sub_block_mask: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(rect, kept, rows)``: ``rect`` (rows, L) holds each kept row's element positions in the
    flattened values (``-1`` for padding); ``kept`` is the flattened values' mask of elements that
    take part; ``rows`` the matrix row of each rectangle row."""
    b = pattern.block_size
    area = b * b
    blocks_in = np.diff(pattern.row_indices)
    ii, jj = np.divmod(np.arange(area), b)
    row = (pattern.block_rows[:, None] * b + ii[None, :]).ravel()  # matrix row / column of each element
    col = (pattern.column_indices[:, None] * b + jj[None, :]).ravel()
    kept = np.ones(row.size, bool)
    if sub_block_mask == "zero_upper_triangle":
        kept = col <= row
    elif sub_block_mask == "zero_lower_triangle":
        kept = col >= row
    length = int(blocks_in.max(initial=0)) * b
    # Each row's elements in CSR order (block by block, then column within the block).
    pos = np.arange(row.size)
    order = np.lexsort((jj[pos % area], pos // area, row))
    row_sorted = row[order]
    live = kept[order]
    rows, first = np.unique(row_sorted, return_index=True)
    slot = np.arange(order.size) - np.repeat(first, np.diff(np.append(first, order.size)))
    rect = np.full((rows.size, max(length, 1)), -1, np.int64)
    rect[np.searchsorted(rows, row_sorted), slot] = np.where(live, order, -1)
    has = (rect >= 0).any(axis=1)
    return rect[has], kept, rows[has]


def _rect_view(graph: Graph, flat: Tensor, rect: np.ndarray, pad: float, name: str) -> Tensor:
    """The rectangle ``rect`` of positions of ``flat`` as a tensor view, ``-1`` reading ``pad``."""
    const = graph.add_constant(flat.dtype, (1,), pad, name=name)
    graph.set_tile_mapping(const, 0)
    source = concat([flat, const])
    return source[np.where(rect >= 0, rect, flat.shape[0])]


def _back(ctx: OpContext, rect_out: Tensor, rect: np.ndarray, kept: np.ndarray, like: Tensor) -> Tensor:
    """The rectangle's values copied back into the blocks' layout (``like``), 0 where not kept."""
    graph = ctx.graph
    n = int(np.prod(like.shape))
    where = np.full(n, rect.size, np.int64)  # default: the zero after the rectangle
    hit = rect >= 0
    where[rect[hit]] = np.flatnonzero(hit.ravel())
    where[~kept] = rect.size
    zero = graph.add_constant(like.dtype, (1,), 0.0, name=f"{ctx.name}/zero")
    graph.set_tile_mapping(zero, 0)
    out = graph.add_variable(like.dtype, like.shape, name=f"{ctx.name}/out")
    map_linearly(graph, out)
    source = concat([rect_out.flatten(), zero])
    ctx.prog.add(P.Copy(source[where], out.flatten()))
    return out


def _check(ctx: OpContext, pattern: Any, t: Tensor, what: str) -> None:
    if not isinstance(pattern, CSRMatrix):
        raise ctx.error(f"pattern must be an ops.sparse.CSRMatrix, got {type(pattern).__name__}")
    b = pattern.block_size
    if t.shape != (pattern.nnz_blocks, b, b):
        raise ctx.error(f"{what} {t.name} has shape {t.shape}; pattern {pattern.name!r} needs "
                        f"({pattern.nnz_blocks}, {b}, {b}) (its non-zero blocks)")
    if t.dtype.name not in ("float16", "float32"):
        raise ctx.error(f"{what} {t.name} is {t.dtype}; block-sparse softmax takes float16 or float32")


def block_sparse_softmax(graph: Graph, nz: Tensor, prog: Any, *, pattern: CSRMatrix,
                         sub_block_mask: str = "none", name: str = "",
                         options: dict | None = None) -> Tensor:
    """Softmax along each row of the block-sparse matrix of ``pattern`` with values ``nz``
    ``(nnz_blocks, b, b)``, over its blocks only; see the module docstring. Returns new values of
    the same shape.

    >>> import numpy as np, softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops import sparse
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=4)); prog = P.Sequence()
    >>> pat = sparse.CSRMatrix.from_mask([[1, 1], [0, 1]], 4)
    >>> x = g.add_variable(sp.float32, (3, 4, 4), name="x"); sp.ops.map_linearly(g, x)
    >>> y = sparse.block_sparse_softmax(g, x, prog, pattern=pat)
    >>> eng = sp.Engine(g, [prog]); eng.write_tensor(x, np.zeros((3, 4, 4))); eng.run(0)
    >>> eng.read_tensor(y)[:, 0, 0].tolist()  # rows 0-3 span 8 columns, rows 4-7 span 4
    [0.125, 0.125, 0.25]
    """
    ctx = OpContext.start(graph, prog, "block_sparse_softmax", name, nz)
    parse_options(ctx, options, {})
    _check(ctx, pattern, nz, "values")
    if sub_block_mask not in SUB_BLOCK_MASKS:
        raise ctx.error(f"sub_block_mask {sub_block_mask!r} is not one of {', '.join(SUB_BLOCK_MASKS)} "
                        "(popsparse's SubBlockMask)")
    rect, kept, _ = _layout(pattern, sub_block_mask)
    if not rect.size:
        return _back(ctx, _empty(ctx, nz), rect, kept, nz)
    lowest = float(np.finfo(nz.dtype.numpy).min)  # popsparse's MIN_HALF_VALUE / MIN_FLOAT_VALUE
    x = _rect_view(graph, nz.flatten(), rect, lowest, f"{ctx.name}/pad")
    y = softmax(graph, x, prog, dim=1, name=f"{ctx.name}/rows")
    return _back(ctx, y, rect, kept, nz)


def _empty(ctx: OpContext, like: Tensor) -> Tensor:
    """A one-element stand-in rectangle for a pattern with no elements left (all outputs 0)."""
    t = ctx.graph.add_constant(like.dtype, (1, 1), 0.0, name=f"{ctx.name}/empty")
    ctx.graph.set_tile_mapping(t, 0)
    return t


def block_sparse_softmax_grad(graph: Graph, out: Tensor, grad_out: Tensor, prog: Any, *,
                              pattern: CSRMatrix, name: str = "") -> Tensor:
    """The gradient of :func:`block_sparse_softmax`'s input from its output ``out`` and the
    output's gradient ``grad_out`` (both ``(nnz_blocks, b, b)``): ``y * (dy - sum_row(dy * y))``
    along each row over the pattern's blocks (masked positions have ``y = 0``, so 0 gradient)."""
    ctx = OpContext.start(graph, prog, "block_sparse_softmax_grad", name, out, grad_out)
    _check(ctx, pattern, out, "output")
    _check(ctx, pattern, grad_out, "output gradient")
    if out.dtype is not grad_out.dtype:
        raise ctx.error(f"{out.name} is {out.dtype} and {grad_out.name} is {grad_out.dtype}; they must match")
    rect, kept, _ = _layout(pattern, "none")
    if not rect.size:
        return _back(ctx, _empty(ctx, out), rect, kept, out)
    y = _rect_view(graph, out.flatten(), rect, 0.0, f"{ctx.name}/pad_y")
    dy = _rect_view(graph, grad_out.flatten(), rect, 0.0, f"{ctx.name}/pad_dy")
    dx = softmax_grad(graph, y, dy, prog, dim=1, name=f"{ctx.name}/rows")
    return _back(ctx, dx, rect, kept, out)
