"""Dynamic slice / update with a device-side offset (popops' DynamicSlice2d).

The offset is a one-element integer tensor read by the vertices, one vertex per column block
of the sliced tensor. An offset at or past the end of the dimension (or negative) starts at 0,
and the rows of the slice wrap around the end (``row = (start + j) % size``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from softipu.codelets.indexing import dynamic_slice_codelet, dynamic_update_codelet
from softipu.graph.graph import Graph
from softipu.graph.tensor import Tensor
from softipu.ops.common import OpContext, parse_options
from softipu.ops.indexing._common import _axis, _index_tensor, _int, _map_rest, _rows_view
from softipu.ops.indexing.tables import _column_blocks
from softipu.ops.reduce import tensor_at

__all__ = ["dynamic_slice", "dynamic_update"]


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
