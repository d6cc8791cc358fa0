"""numpy-style gather, scatter and scatter-add along any axis, with run-time indices.

The axis is viewed as the rows of a 2-D table and the work is the multi-slice / multi-update
of :mod:`softipu.ops.indexing.tables`: out-of-range indices give zeros (gather) or are skipped
(scatter); repeated indices all add for ``scatter_add``, and the last update wins for
``scatter``.
"""

from __future__ import annotations

from typing import Any

from softipu.graph import program as P
from softipu.graph.graph import Graph
from softipu.graph.tensor import Tensor
from softipu.ops.common import OpContext, parse_options
from softipu.ops.indexing._common import _axis, _index_tensor, _map_rest, _rows_view
from softipu.ops.indexing.tables import _slice_rows, _update_rows, slice_output
from softipu.ops.random import clone_mapping

__all__ = ["gather", "scatter", "scatter_add"]


# -- gather / scatter ----------------------------------------------------------------------------------
def _gathered_shape(x: Tensor, indices: Tensor, axis: int) -> tuple[int, ...]:
    return x.shape[:axis] + indices.shape + x.shape[axis + 1 :]


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
    table = _rows_view(x, axis, 1)
    if x.ndim == 2 and axis == 0:  # a lookup: the result in the table's column blocks
        rows = slice_output(ctx.graph, table, indices.numel, f"{ctx.name}/out")
        out = rows.reshape(_gathered_shape(x, indices, axis))
        _slice_rows(ctx, table, indices.reshape(-1), rows)
        _map_rest(ctx, out)
        return out
    out = ctx.graph.add_variable(x.dtype, _gathered_shape(x, indices, axis), name=f"{ctx.name}/out")
    _slice_rows(ctx, table, indices.reshape(-1), _rows_view(out, axis, indices.ndim))
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
