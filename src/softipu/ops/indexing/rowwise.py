"""Row-wise ops along one axis: sort, sort with indices, top-k, cumsum.

Each row goes to one vertex on the tile that holds the output row (outputs are mapped in whole
rows); the result is returned in the input's layout.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from softipu.codelets.indexing import SortOrder, cumsum_codelet, sort_codelet
from softipu.codelets.scans import Scan, scan_apply_codelet, scan_carry_codelet, scan_total_codelet
from softipu.codelets.sort_pieces import merge_split_codelet, sort_piece_codelet
from softipu.dtypes import float32, int32
from softipu.graph import program as P
from softipu.graph.graph import Graph
from softipu.graph.tensor import Tensor
from softipu.ops.common import OpContext, parse_options, rows_of
from softipu.ops.indexing import row_pieces as rp
from softipu.ops.indexing._common import _axis, _int, _moveaxis, _prod

__all__ = ["sort", "sort_with_indices", "top_k", "cumsum"]

# A sort in pieces runs one merge round per piece: more pieces shorten each piece's sort and each
# round but add rounds (compute sets), so a row takes at most this many unless its length needs more.
SORT_MOST_PIECES = 8


# -- row-wise: sort, top-k, cumsum ---------------------------------------------------------------------
def _scan_pieces(ctx: OpContext, x: Tensor, axis: int, op: Scan) -> tuple[Tensor, Tensor | None]:
    """A running ``op`` along ``axis`` whose rows are longer than a vertex takes: each row cut into
    pieces over the tiles that hold it (``row_pieces``); each piece's total, each row's carries
    into its pieces (one vertex per row), then each piece's scan from its carry where it lives
    (``codelets.scans``). MAX/MIN also return the int32 index of each value."""
    moved = _moveaxis(x, axis, -1)
    n = moved.shape[-1]
    x2 = moved.reshape(_prod(moved.shape[:-1]), n)
    plan = rp.plan_pieces(ctx, x2)
    kv = op in (Scan.MAX, Scan.MIN)
    work = x.dtype if kv or not (x.dtype.is_float and x.dtype.itemsize < 4) else float32
    totals = {"total": rp.piece_values(ctx, plan, work, "piece_total")}
    carries = {"carry": rp.row_values(ctx, plan, work, "carry", plan.pieces)}
    starts = {}
    if kv:
        totals["tindex"] = rp.piece_values(ctx, plan, int32, "piece_total_index")
        carries["cindex"] = rp.row_values(ctx, plan, int32, "carry_index", plan.pieces)
        first = np.tile(plan.starts(), (plan.rows, 1))
        starts["start"] = rp.piece_constant(ctx, plan, int32, first, "starts")
    cs = ctx.compute_set("totals")
    rp.add_piece_vertices(ctx, cs, scan_total_codelet(op, x.dtype), plan, {"x": x2}, totals | starts)
    ctx.execute(cs)
    cs = ctx.compute_set("carries")
    rp.add_row_vertices(ctx, cs, scan_carry_codelet(op, x.dtype), plan, totals | carries)
    ctx.execute(cs)
    outs = {"out": rp.piece_output(ctx, plan, x.dtype, "out")}
    if kv:
        outs["index"] = rp.piece_output(ctx, plan, int32, "indices")
    cs = ctx.compute_set("scan")
    rp.add_piece_vertices(ctx, cs, scan_apply_codelet(op, x.dtype), plan, {"x": x2} | outs, carries | starts)
    ctx.execute(cs)
    back = [_moveaxis(t.reshape(moved.shape), -1, axis) for t in outs.values()]
    return back[0], (back[1] if kv else None)


def _sort_pieces(ctx: OpContext, x: Tensor, axis: int, order: SortOrder,
                 with_index: bool) -> tuple[Tensor, Tensor | None]:
    """``x`` sorted along ``axis`` (and each value's int32 position) when rows are longer than a
    vertex takes: each row cut into pieces over the tiles that hold it (``row_pieces``), each
    piece sorted where it lives, then ``pieces`` rounds of merge-split between neighbouring pieces
    (``codelets.sort_pieces``), two buffers taking turns."""
    moved = _moveaxis(x, axis, -1)
    n = moved.shape[-1]
    x2 = moved.reshape(_prod(moved.shape[:-1]), n)
    plan = rp.plan_pieces(ctx, x2, most=SORT_MOST_PIECES)
    buffers = [{"out": rp.piece_output(ctx, plan, x.dtype, f"sorted{b}")} for b in (0, 1)]
    if with_index:
        for b, buf in enumerate(buffers):
            buf["index"] = rp.piece_output(ctx, plan, int32, f"indices{b}")
    starts = {"start": rp.piece_constant(ctx, plan, int32, np.tile(plan.starts(), (plan.rows, 1)), "starts")}
    cs = ctx.compute_set("pieces")
    rp.add_piece_vertices(ctx, cs, sort_piece_codelet(x.dtype, order, with_index), plan,
                          {"x": x2} | buffers[0], starts if with_index else None)
    ctx.execute(cs)
    for t in range(plan.pieces if plan.pieces > 1 else 0):
        _merge_round(ctx, plan, t, buffers[t % 2], buffers[(t + 1) % 2], x.dtype, order)
    done = buffers[plan.pieces % 2 if plan.pieces > 1 else 0]
    back = {k: _moveaxis(v.reshape(moved.shape), -1, axis) for k, v in done.items()}
    return back["out"], back.get("index")


def _merge_round(ctx: OpContext, plan: rp.RowPieces, t: int, src: dict[str, Tensor], dst: dict[str, Tensor],
                 dtype: Any, order: SortOrder) -> None:
    """Round ``t``: pieces ``(j, j + 1)``, ``j = t mod 2, t mod 2 + 2, ...`` merge-split from ``src``
    into ``dst``; a piece in no pair is copied across."""
    def view(t2: Tensor, r: np.ndarray, j: np.ndarray, length: int) -> Tensor:
        return rows_of(t2.flatten(), r * plan.n + j * plan.length, length)

    with_index = "index" in src
    firsts = np.arange(t % 2, plan.pieces - 1, 2)
    cs = ctx.compute_set(f"merge{t}")
    for pick in (firsts + 1 < plan.pieces - 1, firsts + 1 == plan.pieces - 1):
        if not pick.any():
            continue
        r, j = (a.ravel() for a in np.meshgrid(np.arange(plan.rows), firsts[pick], indexing="ij"))
        right = plan.length if (j[0] + 1) < plan.pieces - 1 else plan.last
        fields = {"a": view(src["out"], r, j, plan.length), "b": view(src["out"], r, j + 1, right)}
        if with_index:
            fields |= {"ai": view(src["index"], r, j, plan.length), "bi": view(src["index"], r, j + 1, right)}
        for lower, piece, length in ((True, j, plan.length), (False, j + 1, right)):
            outs = {name: view(dst[name], r, piece, length) for name in dst}
            ctx.graph.add_vertices(cs, merge_split_codelet(dtype, order, with_index, lower), fields | outs,
                                   plan.tiles[r, piece])
    ctx.execute(cs)
    alone = sorted(set(range(plan.pieces)) - set(firsts.tolist()) - set((firsts + 1).tolist()))
    for j in alone:
        length = plan.last if j == plan.pieces - 1 else plan.length
        r = np.arange(plan.rows)
        for name in src:
            ctx.prog.add(P.Copy(view(src[name], r, np.full(r.size, j), length),
                                view(dst[name], r, np.full(r.size, j), length)))


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


def _first_along(t: Tensor, axis: int, k: int) -> Tensor:
    """The first ``k`` entries of ``t`` along ``axis`` (a view)."""
    moved = _moveaxis(t, axis, -1)
    rows = _prod(moved.shape[:-1])
    return _moveaxis(moved.reshape(rows, moved.shape[-1])[:, :k].reshape(moved.shape[:-1] + (k,)), -1, axis)


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
    if rp.needs_pieces(x.shape[axis]):  # a row too long for one vertex: split it across tiles
        return _sort_pieces(ctx, x, axis, order, False)[0]
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
    if rp.needs_pieces(x.shape[axis]):  # a row too long for one vertex: split it across tiles
        values, index = _sort_pieces(ctx, x, axis, order, True)
    else:
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
    if rp.needs_pieces(x.shape[axis]):  # a row too long for one vertex: sort it across tiles
        values, index = _sort_pieces(ctx, x, axis, SortOrder.DESCENDING, True)
        assert index is not None
        return tuple(_first_along(t, axis, k) for t in (values, index))  # type: ignore[return-value]
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
    if rp.needs_pieces(x.shape[axis]):  # a row too long for one vertex: split it across tiles
        return _scan_pieces(ctx, x, axis, Scan.SUM)[0]
    values, _ = _row_op(ctx, x, axis, cumsum_codelet(x.dtype), x.shape[axis], False)
    return values
