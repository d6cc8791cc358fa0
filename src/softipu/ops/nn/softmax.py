"""Softmax and log-softmax along a dim, and their gradients."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from softipu.codelets import nn as C
from softipu.dtypes import float32
from softipu.graph.graph import Graph
from softipu.graph.tensor import Tensor
from softipu.ops.common import OpContext
from softipu.ops.nn._common import (
    ROW_VERTEX_ELEMENTS,
    _add_rows,
    _check_float,
    _check_same,
    _plan_rows,
    _row_output,
    _rows_along,
    _start,
    _variable,
)

__all__ = ['softmax', 'log_softmax', 'softmax_grad', 'log_softmax_grad']

# -- softmax ---------------------------------------------------------------------------------------
def softmax(graph: Graph, x: Tensor, prog: Any, *, dim: int = -1, name: str = "",
            options: Mapping[str, Any] | None = None) -> Tensor:
    """Numerically stable softmax along ``dim`` (the row max is subtracted first), fp32 inside.
    Each vertex owns whole rows; the output's rows live where the vertices run. No options.

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops import nn
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=4))
    >>> x = g.add_variable(sp.float32, (2, 2), name="x"); sp.ops.map_linearly(g, x)
    >>> prog = P.Sequence(); y = nn.softmax(g, x, prog)
    >>> eng = sp.Engine(g, [prog]); eng.write_tensor(x, [[0, 0], [1000, 1000]]); eng.run(0)
    >>> eng.read_tensor(y).tolist()
    [[0.5, 0.5], [0.5, 0.5]]
    """
    return _softmax(graph, x, prog, dim, False, "softmax", name, options)


def log_softmax(graph: Graph, x: Tensor, prog: Any, *, dim: int = -1, name: str = "",
                options: Mapping[str, Any] | None = None) -> Tensor:
    """Numerically stable ``log(softmax(x))`` along ``dim``: ``x - max - log(sum(exp(x - max)))``.
    Layout as :func:`softmax`. No options.

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops import nn
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=4))
    >>> x = g.add_variable(sp.float32, (2,), name="x"); sp.ops.map_linearly(g, x)
    >>> prog = P.Sequence(); y = nn.log_softmax(g, x, prog)
    >>> eng = sp.Engine(g, [prog]); eng.write_tensor(x, [0, 0]); eng.run(0)
    >>> [round(v, 4) for v in eng.read_tensor(y).tolist()]
    [-0.6931, -0.6931]
    """
    return _softmax(graph, x, prog, dim, True, "log_softmax", name, options)


def _softmax(graph, x, prog, dim, log, op, name, options) -> Tensor:
    ctx, _ = _start(graph, prog, op, name, options, x)
    _check_float(ctx, x)
    x2, restore = _rows_along(ctx, x, dim)
    if x2.numel == 0:
        return restore(_variable(ctx, x.dtype, x2.shape, "out"))
    if x2.shape[1] > ROW_VERTEX_ELEMENTS:  # a row too long for one vertex: split it across tiles
        return restore(_softmax_pieces(ctx, x2, log))
    plan = _plan_rows(ctx, x2)
    out2 = _row_output(ctx, plan, x.dtype, x2.shape[1], "out")
    cs = ctx.compute_set()
    _add_rows(ctx, cs, C.softmax_rows_codelet(x.dtype, log), plan, {"x": x2, "out": out2},
              params={"n": x2.shape[1]})
    ctx.execute(cs)
    return restore(out2)


def _softmax_pieces(ctx: OpContext, x2: Tensor, log: bool) -> Tensor:
    """(Log-)softmax of rows longer than a vertex takes, each row cut into pieces over the tiles
    that hold it (``ops.indexing.row_pieces``), as popnn runs it on a spread tensor: the row max
    (each piece's, then combined per row), ``exp(x - max)`` with each piece's sum, the row sum,
    then each piece scaled (or, log-softmax, shifted by the log of the sum) where it lives."""
    from softipu.ops.indexing import row_pieces as rp  # noqa: PLC0415 - ops.indexing imports ops.nn

    plan = rp.plan_pieces(ctx, x2)
    dtype = x2.dtype
    piece_max = rp.piece_values(ctx, plan, float32, "piece_max")
    cs = ctx.compute_set("max")
    rp.add_piece_vertices(ctx, cs, C.softmax_piece_max_codelet(dtype), plan, {"x": x2}, {"m": piece_max})
    ctx.execute(cs)
    row_max = rp.row_values(ctx, plan, float32, "row_max")
    cs = ctx.compute_set("max/rows")
    rp.add_row_vertices(ctx, cs, C.row_combine_codelet(True), plan, {"partial": piece_max, "out": row_max})
    ctx.execute(cs)
    out = rp.piece_output(ctx, plan, dtype, "out")
    piece_sum = rp.piece_values(ctx, plan, float32, "piece_sum")
    cs = ctx.compute_set("exp")
    rp.add_piece_vertices(ctx, cs, C.softmax_piece_exp_codelet(dtype, log), plan, {"x": x2, "out": out},
                          {"s": piece_sum}, {"m": row_max})
    ctx.execute(cs)
    row_sum = rp.row_values(ctx, plan, float32, "row_sum")
    cs = ctx.compute_set("sum/rows")
    rp.add_row_vertices(ctx, cs, C.row_combine_codelet(False), plan, {"partial": piece_sum, "out": row_sum})
    ctx.execute(cs)
    cs = ctx.compute_set("scale")
    rp.add_piece_vertices(ctx, cs, C.softmax_piece_scale_codelet(dtype, log), plan, {"out": out},
                          per_row={"s": row_sum})
    ctx.execute(cs)
    return out


def softmax_grad(graph: Graph, y: Tensor, grad_out: Tensor, prog: Any, *, dim: int = -1,
                 name: str = "", options: Mapping[str, Any] | None = None) -> Tensor:
    """Input gradient of :func:`softmax` from its output ``y``: ``y * (dy - sum(dy * y))``.

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops import nn
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=4))
    >>> y = g.add_variable(sp.float32, (2,), name="y"); dy = g.add_variable(sp.float32, (2,), name="dy")
    >>> sp.ops.map_linearly(g, y); sp.ops.map_linearly(g, dy)
    >>> prog = P.Sequence(); dx = nn.softmax_grad(g, y, dy, prog)
    >>> eng = sp.Engine(g, [prog]); eng.write_tensor(y, [0.5, 0.5]); eng.write_tensor(dy, [1, 0])
    >>> eng.run(0); eng.read_tensor(dx).tolist()
    [0.25, -0.25]
    """
    return _softmax_grad(graph, y, grad_out, prog, dim, False, "softmax_grad", name, options)


def log_softmax_grad(graph: Graph, y: Tensor, grad_out: Tensor, prog: Any, *, dim: int = -1,
                     name: str = "", options: Mapping[str, Any] | None = None) -> Tensor:
    """Input gradient of :func:`log_softmax` from its output ``y``: ``dy - exp(y) * sum(dy)``.

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops import nn
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=4))
    >>> y = g.add_variable(sp.float32, (2,), name="y"); dy = g.add_variable(sp.float32, (2,), name="dy")
    >>> sp.ops.map_linearly(g, y); sp.ops.map_linearly(g, dy)
    >>> prog = P.Sequence(); dx = nn.log_softmax_grad(g, y, dy, prog)
    >>> eng = sp.Engine(g, [prog]); eng.write_tensor(y, [-0.6931472, -0.6931472])
    >>> eng.write_tensor(dy, [1, 0]); eng.run(0); [round(v, 4) for v in eng.read_tensor(dx).tolist()]
    [0.5, -0.5]
    """
    return _softmax_grad(graph, y, grad_out, prog, dim, True, "log_softmax_grad", name, options)


def _softmax_grad(graph, y, grad_out, prog, dim, log, op, name, options) -> Tensor:
    ctx, _ = _start(graph, prog, op, name, options, y, grad_out)
    _check_float(ctx, y)
    _check_same(ctx, y, grad_out)
    y2, restore = _rows_along(ctx, y, dim)
    dy2, _ = _rows_along(ctx, grad_out, dim)
    if y2.numel == 0:
        return restore(_variable(ctx, y.dtype, y2.shape, "dx"))
    if y2.shape[1] > ROW_VERTEX_ELEMENTS:  # a row too long for one vertex: split it across tiles
        return restore(_softmax_grad_pieces(ctx, y2, dy2, log))
    plan = _plan_rows(ctx, dy2)
    dx2 = _row_output(ctx, plan, y.dtype, y2.shape[1], "dx")
    cs = ctx.compute_set()
    _add_rows(ctx, cs, C.softmax_grad_rows_codelet(y.dtype, log), plan,
              {"y": y2, "dy": dy2, "dx": dx2}, params={"n": y2.shape[1]})
    ctx.execute(cs)
    return restore(dx2)


def _softmax_grad_pieces(ctx: OpContext, y2: Tensor, dy2: Tensor, log: bool) -> Tensor:
    """The gradient of rows longer than a vertex takes, in pieces (``ops.indexing.row_pieces``):
    each piece's part of the row sum, the row sums, then each piece's ``dx`` where it lives."""
    from softipu.ops.indexing import row_pieces as rp  # noqa: PLC0415 - ops.indexing imports ops.nn

    plan = rp.plan_pieces(ctx, dy2)
    piece_sum = rp.piece_values(ctx, plan, float32, "piece_sum")
    cs = ctx.compute_set("sum")
    rp.add_piece_vertices(ctx, cs, C.softmax_grad_piece_sum_codelet(y2.dtype, log), plan,
                          {"y": y2, "dy": dy2}, {"s": piece_sum})
    ctx.execute(cs)
    row_sum = rp.row_values(ctx, plan, float32, "row_sum")
    cs = ctx.compute_set("sum/rows")
    rp.add_row_vertices(ctx, cs, C.row_combine_codelet(False), plan, {"partial": piece_sum, "out": row_sum})
    ctx.execute(cs)
    dx = rp.piece_output(ctx, plan, y2.dtype, "dx")
    cs = ctx.compute_set("dx")
    rp.add_piece_vertices(ctx, cs, C.softmax_grad_piece_codelet(y2.dtype, log), plan,
                          {"y": y2, "dy": dy2, "dx": dx}, per_row={"s": row_sum})
    ctx.execute(cs)
    return dx
