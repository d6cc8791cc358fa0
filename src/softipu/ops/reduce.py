"""Reductions (popops Reduce): any dims, any operator, multi-stage across tiles; argmax/argmin.

The plan, like PopLibs':

1. The input is viewed as ``(A, R, B)`` — kept dims before, the reduced dims (``R`` elements per
   output), kept dims after — or, when the reduced dims are not adjacent, transposed to
   ``(M, R, 1)``. Output element ``(a, b)`` reduces ``x[a, :, b]``. An inner reduction whose
   tile mapping cuts that view into more pieces than popops' own ``(1, R, M)`` view (outputs
   inner; a channels-last input such as a convolution's output) is planned over the latter.
2. **Stage 1** (one compute set): every contiguous piece of the input that lives on one tile is
   reduced there into partials (fp32 for fp16 inputs). An inner reduction (``B == 1``) cuts the
   piece into segments of one output each; an outer one folds the piece's rows of ``B`` columns
   into one row of partials.
3. **Stage 2** (one compute set): each output element's partials are exchanged to the tile that
   owns it and reduced there, in input order.

Partials live on the tiles that made them; an outer reduction keeps one row of them per piece,
in input order, so stage 2 reads an output's rows evenly spaced. The output is mapped linearly;
an outer reduction's is spread over as many tiles as its grain allows, because every output
reduces a row of partials from each input tile. Empty reductions give the operator's identity;
NaN propagates through max and min like numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from softipu.codelets.reduce import (
    ReduceOp,
    arg_gather_codelet,
    arg_segments_codelet,
    columns_codelet,
    gather_codelet,
    identity_of,
    partials_dtype,
    rows_codelet,
    runs_codelet,
    segments_codelet,
)
from softipu.dtypes import DType, as_dtype, bool_, float16, float32, int32
from softipu.errors import DTypeError
from softipu.graph.graph import Graph
from softipu.graph.tensor import Tensor
from softipu.ops.common import OpContext, parse_options, rows_of, tile_regions
from softipu.ops.mapping import map_linearly
from softipu.ops.reduce_layout import Canonical, by_layout, canonical, normalize_dims, storage_order
from softipu.ops.reduce_runs import RUN_OPS, memory_runs, share_leads
from softipu.ops.reduce_stages import (
    PartialRows,
    even_runs,
    even_step,
    intermediate_stages,
    needs_intermediate,
    row_fields,
    tensor_at,
)

__all__ = ["ReduceOp", "reduce", "reduce_sum", "reduce_mean", "reduce_max", "reduce_min",
           "reduce_prod", "argmax", "argmin"]

_OPTIONS = {"keepdims": False}


def reduce(graph: Graph, x: Tensor, prog: Any, *, dims: int | Sequence[int] | None = None,
           op: ReduceOp = ReduceOp.ADD, name: str = "", options: dict | None = None,
           out_dtype: DType | None = None) -> Tensor:
    """Reduce ``x`` over ``dims`` (all dims when None) with ``op``; popops ``reduce``.

    Options: ``keepdims`` (bool, default False) keeps the reduced dims with size 1.

    The result has ``out_dtype`` (default ``x``'s dtype; popops ``reduce(graph, in, outType,
    dims, params)``): fp16 inputs are accumulated in fp32, and the last stage's vertices write
    the fp32 accumulator straight in ``out_dtype``, rounded once (no cast compute set). A float
    input may give either float type; other dtypes give their own. For fp32 input and fp16
    output this is bitwise ``reduce`` then a cast (which rounds the same fp32 result once); for
    fp16 input and fp32 output it is the unrounded fp32 accumulator, where ``reduce`` then a cast
    keeps the fp16 rounding (the cast itself is exact). Reducing no elements gives the
    operator's identity (0, 1, -inf, +inf, True, False).

    >>> import numpy as np, softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops.reduce import reduce, ReduceOp
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=4))
    >>> x = g.add_variable(sp.float32, (3, 5), name="x"); sp.ops.map_linearly(g, x)
    >>> prog = P.Sequence()
    >>> y = reduce(g, x, prog, dims=1, op=ReduceOp.MAX)
    >>> eng = sp.Engine(g, [prog]); eng.write_tensor(x, np.arange(15).reshape(3, 5)); eng.run(0)
    >>> eng.read_tensor(y)
    array([ 4.,  9., 14.], dtype=float32)
    """
    ctx = OpContext.start(graph, prog, "reduce", name, x)
    return _reduce(ctx, x, dims, op, options, scale=None, out_dtype=out_dtype)


def _reduce(ctx: OpContext, x: Tensor, dims: Any, op: Any, options: dict | None,
            scale: str | None, out_dtype: DType | None) -> Tensor:
    opts = parse_options(ctx, options, _OPTIONS)
    if not isinstance(op, ReduceOp):
        raise ctx.error(f"op must be a ReduceOp ({', '.join(o.name for o in ReduceOp)}), got {op!r}")
    _check_dtype(ctx, x.dtype, op)
    out_dtype = _check_out_dtype(ctx, x, out_dtype)
    axes = normalize_dims(ctx, x, dims)
    stored, stored_axes = storage_order(x, axes)
    cv = by_layout(ctx.graph, stored, stored_axes, canonical(stored, stored_axes), stored is not x)
    out_shape = tuple(d for i, d in enumerate(x.shape) if i not in axes)
    out = _output(ctx, cv, out_dtype, out_shape)
    factor = 1.0
    if scale == "mean":
        factor = 1.0 / cv.R if cv.R else float("nan")
    _plan(ctx, cv, op, out, factor)
    if opts["keepdims"]:
        out = out.reshape(tuple(1 if i in axes else d for i, d in enumerate(x.shape)))
    return out


def _output(ctx: OpContext, cv: Canonical, dtype: DType, shape: tuple[int, ...]) -> Tensor:
    """The result, mapped linearly in vector-sized grains.

    An outer reduction's stage 2 reduces one row of partials per input tile for every output:
    its outputs are spread over as many tiles as the grain allows, so each tile receives and
    reduces few columns of those rows (not the 8 grains per tile an op's output gets by default).
    """
    if cv.B == 1 or cv.R <= 1:
        return ctx.output(dtype, shape)
    graph = ctx.graph
    out = graph.add_variable(dtype, shape, name=f"{ctx.name}/out")
    grain = max(1, graph.target.vector_width(dtype.itemsize))
    # Each output tile receives a row of partials from every input tile, one exchange region each:
    # successive reductions start their outputs at staggered tiles (by the graph's variable count,
    # so the same graph gets the same layout) instead of all at tile 0, whose exchange code would
    # otherwise hold every reduction's receives (a training step's bias and norm gradients).
    used = min(graph.num_tiles, -(-out.numel // grain))
    start = (len(graph.variables) * used) % graph.num_tiles
    tiles = np.roll(np.arange(graph.num_tiles), -start)
    map_linearly(graph, out, grain_size=grain, min_elements_per_tile=grain, tiles=tiles)
    return out


def _check_out_dtype(ctx: OpContext, x: Tensor, out_dtype: Any) -> DType:
    """``out_dtype`` (``x``'s dtype when None): float inputs give float16 or float32, others
    their own dtype."""
    if out_dtype is None:
        return x.dtype
    try:
        out_dtype = as_dtype(out_dtype)
    except DTypeError:
        raise ctx.error(f"out_dtype must be a dtype (sp.float16, sp.float32, ...), "
                        f"got {out_dtype!r}") from None
    if out_dtype is x.dtype:
        return out_dtype
    if not (x.dtype.is_float and out_dtype in (float16, float32)):
        allowed = "float16 or float32" if x.dtype.is_float else f"{x.dtype} (its own dtype)"
        raise ctx.error(f"out_dtype {out_dtype} for {x.dtype} tensor {x.name}: a reduce of {x.dtype} "
                        f"writes {allowed}; cast the input or the result instead")
    return out_dtype


def _check_dtype(ctx: OpContext, dtype: DType, op: ReduceOp) -> None:
    if op.is_logical and dtype is not bool_:
        raise ctx.error(f"{op.name} reduces bool tensors, got {dtype}; compare first to get bools")
    if dtype is bool_ and op not in (ReduceOp.LOGICAL_AND, ReduceOp.LOGICAL_OR, ReduceOp.MAX,
                                      ReduceOp.MIN):
        raise ctx.error(f"{op.name} does not reduce bool tensors; use LOGICAL_OR/LOGICAL_AND or "
                        "cast to a number first")



def _plan(ctx: OpContext, cv: Canonical, op: ReduceOp, out: Tensor, scale: float) -> None:
    if out.numel == 0:
        return
    if cv.R == 0:
        from softipu.ops.indexing import fill_tensor  # noqa: PLC0415 - indexing imports reduce

        fill_tensor(ctx, out, identity_of(op, out.dtype))
        return
    if cv.B == 1:
        _plan_inner(ctx, cv, op, out.reshape(-1), scale)
    else:
        _plan_outer(ctx, cv, op, out.reshape(-1), scale)


# -- shared helpers ------------------------------------------------------------------------------
def partials_variable(ctx: OpContext, dtype: DType, sizes: Sequence[tuple[int, int]],
                      tiles: Sequence[np.ndarray], suffix: str = "partials") -> list[Tensor]:
    """One variable holding a ``(V_g, S_g)`` block per group, row ``i`` mapped to ``tiles[g][i]``."""
    total = sum(v * s for v, s in sizes)
    var = ctx.graph.add_variable(dtype, (total,), name=f"{ctx.name}/{suffix}")
    blocks, offset = [], 0
    for (v, s), t in zip(sizes, tiles, strict=True):
        block = var[offset : offset + v * s].reshape(v, s)
        if v * s:
            ctx.graph.set_tile_mappings(block, t)
        blocks.append(block)
        offset += v * s
    return blocks


def _expand(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(owner, k): for each owner ``i`` the items ``0..counts[i]-1``."""
    owner = np.repeat(np.arange(counts.size), counts)
    k = np.arange(owner.size) - np.repeat(np.cumsum(counts) - counts, counts)
    return owner, k


def _split_at(starts: np.ndarray, lengths: np.ndarray, tiles: np.ndarray, period: int):
    """Cut each ``[start, start + length)`` at multiples of ``period``."""
    pieces = (starts + lengths - 1) // period - starts // period + 1
    if np.all(pieces == 1):
        return starts, lengths, tiles
    owner, k = _expand(pieces)
    s = np.where(k == 0, starts[owner], (starts[owner] // period + k) * period)
    end = np.minimum(starts[owner] + lengths[owner], (starts[owner] // period + k + 1) * period)
    return s, end - s, tiles[owner]


# -- inner reductions: B == 1 ------------------------------------------------------------------------
def _plan_inner(ctx: OpContext, cv: Canonical, op: ReduceOp, out: Tensor, scale: float) -> None:
    graph, dtype, r = ctx.graph, cv.view.dtype, cv.period
    partial = partials_dtype(dtype)
    starts, lengths, tiles = tile_regions(graph, cv.view)
    segments = (starts + lengths - 1) // r - starts // r + 1
    flat = cv.flat
    in_run, lead = np.zeros(starts.size, bool), np.zeros(starts.size, np.int64)
    if op in RUN_OPS:  # a tile's runs of one output each: popops' ContinuousReduce a worker
        runs = memory_runs(starts, lengths, tiles, segments)
        if runs:
            in_run[np.concatenate(runs)] = True
            lead = share_leads(runs, starts.size, graph.target.workers_per_tile)
    groups = [(p, run) for run in (False, True) for n in np.unique(lengths[in_run == run]).tolist()
              if (p := np.flatnonzero((in_run == run) & (lengths == n))).size]
    # A tile's runs write its partials side by side (popops' per-tile partials tensor): the
    # outputs' partials then leave each tile in a few regions, not one a run. The vertices stay
    # in input order (their rows of the input one strided field), their partials' rows not.
    order = [np.lexsort((starts[p], tiles[p])) if run else np.arange(p.size) for p, run in groups]
    sizes = [(int(p.size), int(segments[p].max())) for p, _ in groups]
    blocks = partials_variable(ctx, partial, sizes,
                               [tiles[p][o] for (p, _), o in zip(groups, order, strict=True)])
    cs1 = ctx.compute_set("partials")
    slot0 = np.zeros(starts.size, np.int64)  # address of each piece's first partial
    for (pick, run), o, block, (v, s) in zip(groups, order, blocks, sizes, strict=True):
        length = int(lengths[pick][0])
        x = rows_of(flat, starts[pick], length)
        if run:
            rank = np.argsort(o)  # the row of its tile's partials each piece writes
            fields = {"x": x, "out": rows_of(block.reshape(-1), rank, 1), "lead": lead[pick]}
            graph.add_vertices(cs1, runs_codelet(op, dtype), fields, tiles[pick])
            slot0[pick] = block.offset + rank
            continue
        first = np.minimum(r - starts[pick] % r, length)
        graph.add_vertices(cs1, segments_codelet(op, dtype), {"x": x, "out": block, "first": first,
                                                              "period": r}, tiles[pick])
        # A piece's segments fill the last slots of its row (padding first: segments_codelet).
        slot0[pick] = block.offset + np.arange(v) * s + (s - segments[pick])
    ctx.execute(cs1)
    piece, k = _expand(segments)
    output = starts[piece] // r + k
    if cv.wrap:
        output %= cv.A
    rows = _partial_rows(piece, output, slot0[piece] + k, tiles)
    if needs_intermediate(rows, out.numel, graph.num_tiles):  # a high fan-in (a full reduction)
        rows = intermediate_stages(ctx, op, partial, rows, out.numel)
        _columns_stage(ctx, op, partial, out, rows.lo, rows.width, rows.address, scale)
        return
    order = np.lexsort((starts[piece], output))
    address = (slot0[piece] + k)[order]
    _gather_stage(ctx, op, partial, out, output[order], address, scale)


def _partial_rows(piece: np.ndarray, output: np.ndarray, address: np.ndarray,
                  tiles: np.ndarray) -> PartialRows:
    """Stage 1's partials (in piece order) as rows: runs of consecutive outputs of one piece."""
    cut = np.flatnonzero((piece[1:] != piece[:-1]) | (output[1:] != output[:-1] + 1)) + 1
    first = np.concatenate(([0], cut)).astype(np.int64)
    width = np.diff(np.append(first, piece.size))
    return PartialRows(output[first], width, address[first], tiles[piece[first]])


def _gather_stage(ctx: OpContext, op: ReduceOp, partial: DType, out: Tensor, output: np.ndarray,
                  address: np.ndarray, scale: float) -> None:
    """Stage 2 with one vertex per output element; ``output`` sorted, ``address`` alongside."""
    graph = ctx.graph
    count = np.bincount(output, minlength=out.numel)
    begin = np.cumsum(count) - count
    out_tiles = graph.tile_of(out).reshape(-1).astype(np.int64)
    cs2 = ctx.compute_set("reduce")
    codelet = gather_codelet(op, partial, out.dtype)
    for k in np.unique(count).tolist():
        which = np.flatnonzero(count == k)
        parts = tensor_at(graph, partial, address[begin[which][:, None] + np.arange(k)])
        graph.add_vertices(cs2, codelet, {"parts": parts, "out": rows_of(out, which, 1),
                                          "scale": scale}, out_tiles[which])
    ctx.execute(cs2)


# -- outer reductions: B > 1 -------------------------------------------------------------------------
def _plan_outer(ctx: OpContext, cv: Canonical, op: ReduceOp, out: Tensor, scale: float) -> None:
    graph, dtype, r, b = ctx.graph, cv.view.dtype, cv.R, cv.B
    partial = partials_dtype(dtype)
    starts, lengths, tiles = _split_at(*tile_regions(graph, cv.view), r * b)
    short = lengths < b  # pieces shorter than a row: cut at row ends, kept column by column
    if np.any(short):
        s2, l2, t2 = _split_at(starts[short], lengths[short], tiles[short], b)
        starts = np.concatenate((starts[~short], s2))
        lengths = np.concatenate((lengths[~short], l2))
        tiles = np.concatenate((tiles[~short], t2))
        order = np.argsort(starts, kind="stable")
        starts, lengths, tiles = starts[order], lengths[order], tiles[order]
    full = lengths >= b
    fold = _Fold.of(starts, lengths, tiles, full, r * b, b)
    if lengths.max() < 2 * b and not fold.reduces:
        # No tile holds two rows of any output's elements: stage 1 could not reduce anything.
        # NOTE: popops would take the input itself as the partials (tensorToIntermediatePartials)
        # and may add intermediate stages; not modelled: the regions are then cut at every row's
        # tile boundaries, and a vertex list per (region, row) costs O(rows x regions) host time
        # (a (1024, 30522) bias gradient: 0.8 -> 50 s).
        _raw_columns_stage(ctx, cv, op, out, scale)
        return
    # One row of partials per whole-row piece (its rows folded) and per fold of a tile's shorter
    # pieces over the same columns, in input order (of their first piece), on their tile: the rows
    # an output reduces in stage 2 are then evenly spaced where the pieces are.
    first = np.concatenate((np.flatnonzero(full), fold.first))
    width = np.concatenate((np.full(int(full.sum()), b, np.int64), lengths[fold.first]))
    order = np.argsort(starts[first], kind="stable")
    row0 = np.zeros(first.size, np.int64)
    row0[order] = np.cumsum(width[order]) - width[order]
    parts = graph.add_variable(partial, (int(width.sum()),), name=f"{ctx.name}/partials")
    graph.map_intervals(parts, row0, row0 + width, tiles[first])  # each row on its piece's tile
    cs1 = ctx.compute_set("partials")
    whole = np.flatnonzero(full)
    piece_row = np.zeros(starts.size, np.int64)
    piece_row[whole] = row0[: whole.size]
    codelet = rows_codelet(op, dtype)
    for length in np.unique(lengths[whole]).tolist():
        for run in even_runs(whole[lengths[whole] == length], starts, piece_row):
            block = rows_of(parts, piece_row[run], b)
            graph.add_vertices(cs1, codelet, {"x": rows_of(cv.flat, starts[run], length), "out": block,
                                              "phase": starts[run] % b}, tiles[run])
    _fold_stage(ctx, cs1, cv, op, fold, (starts, lengths, tiles), (parts, row0[whole.size :]), b)
    ctx.execute(cs1)
    # Row i supplies outputs [lo[i], lo[i] + width[i]) from its partials.
    lo = (starts[first] // (r * b)) * b + starts[first] % b * ~full[first]
    rows = PartialRows(lo[order], width[order], (parts.offset + row0)[order], tiles[first][order])
    if np.all(full) or fold.reduces:
        # NOTE: not when the rows are pieces cut mid-row left as they are (no tile folds any):
        # they would cut popops' column regions at every tile boundary, and a vertex list per
        # (region, row) would cost O(rows x regions) host time.
        rows = intermediate_stages(ctx, op, partial, rows, out.numel)
    _columns_stage(ctx, op, partial, out, rows.lo, rows.width, rows.address, scale)


@dataclass(frozen=True, slots=True)
class _Fold:
    """A tile's pieces shorter than a row, grouped by the columns they hold (popops folds every
    value of a column on a tile into one partial: inputToIntermediateNoExchange over the tile's
    contiguous regions). Group ``g`` is the pieces ``member[begin[g] : begin[g] + count[g]]``, in
    input order; ``first[g]`` is its first piece."""

    member: np.ndarray
    begin: np.ndarray
    count: np.ndarray

    @property
    def first(self) -> np.ndarray:
        return self.member[self.begin]

    @property
    def reduces(self) -> bool:
        return bool(self.count.size) and int(self.count.max()) > 1

    @staticmethod
    def of(starts: np.ndarray, lengths: np.ndarray, tiles: np.ndarray, full: np.ndarray, block: int,
           b: int) -> _Fold:
        member = np.flatnonzero(~full)
        s, t = starts[member], tiles[member]
        member = member[np.lexsort((s, lengths[member], s % b, s // block, t))]
        s, n, t = starts[member], lengths[member], tiles[member]
        new = np.ones(member.size, bool)
        new[1:] = (t[1:] != t[:-1]) | (s[1:] // block != s[:-1] // block) | (s[1:] % b != s[:-1] % b) | \
            (n[1:] != n[:-1])
        begin = _even_folds(s, np.flatnonzero(new))
        count = np.diff(np.append(begin, member.size))
        by_start = np.argsort(s[begin], kind="stable")  # groups in input order of their first piece
        begin, count = begin[by_start], count[by_start]
        return _Fold(member, begin, count)


_MAX_RUNS = 8  # a (rows, width) class of folds cut into more runs goes in one call, rows listed


def _even_folds(s: np.ndarray, begin: np.ndarray) -> np.ndarray:
    """The groups starting at ``begin`` (of positions ``s``, ascending in each) cut into runs of
    evenly spaced pieces: each fold's rows are then one strided pattern, popops' STRIDED_REDUCE
    (a tile holding several blocks of a matmul's output folds each block apart)."""
    end = np.append(begin[1:], s.size)
    d = np.diff(s)
    step = np.where(end - begin > 1, d[np.minimum(begin, d.size - 1)] if d.size else 0, 0)
    uneven = np.zeros(begin.size, bool)
    if d.size:
        same = np.append(d == np.repeat(step, end - begin)[:-1], True)
        same[end - 1] = True  # the step from a group's last piece to the next group's first
        uneven = np.logical_and.reduceat(same, begin) == 0
    if not np.any(uneven):
        return begin
    cuts = [begin[~uneven]]
    for g in np.flatnonzero(uneven).tolist():
        runs = even_runs(np.arange(begin[g], end[g]), s)
        cuts.append(np.array([r[0] for r in runs], np.int64))
    return np.sort(np.concatenate(cuts))


def _fold_stage(ctx: OpContext, cs: Any, cv: Canonical, op: ReduceOp, fold: _Fold,
                pieces: tuple[np.ndarray, np.ndarray, np.ndarray], rows: tuple[Tensor, np.ndarray],
                b: int) -> None:
    """Stage 1 for the folds: one ``ReduceColumnsRaw`` vertex per fold, reducing its pieces (rows
    of the input) into its row of partials ``rows[1][g]`` of ``rows[0]``."""
    if not fold.count.size:
        return
    graph, flat = ctx.graph, cv.flat
    starts, lengths, tiles = pieces
    parts_var, row0 = rows
    partial = parts_var.dtype
    codelet = columns_codelet(op, flat.dtype, partial, raw=True)
    first = fold.first
    n_of = lengths[first]
    keys = fold.count * (int(n_of.max()) + 1) + n_of
    index = None if flat.is_strided else flat.addresses()  # any other view: its addresses, once
    stride = int(flat.strides[0]) if index is None else 0
    for key in np.unique(keys).tolist():
        group = np.flatnonzero(keys == key)
        k, n = int(fold.count[group[0]]), int(n_of[group[0]])
        # By column, then input order: the folds of one column block step evenly (a matmul's
        # output blocks), so a run of them is one call with strided fields.
        group = group[np.lexsort((starts[first[group]], starts[first[group]] % b))]
        # An indexed view lists addresses whatever the order: one call for the whole group; so
        # do folds that step evenly only a few at a time (a call per run would cost more).
        runs = even_runs(group, starts[first], row0) if index is None else [group]
        for run in runs if len(runs) <= _MAX_RUNS else [group]:
            at = starts[fold.member[fold.begin[run][:, None] + np.arange(k)]]  # (V, k) positions
            if index is None:  # a strided 1-D view: rows of n elements `stride` apart
                address = flat.offset + at * stride
                step = even_step(address) if stride == 1 else 0
                fields = row_fields(graph, flat.dtype, address, n, step, stride)
            else:
                step = 0
                fields = [tensor_at(graph, flat.dtype, index[at[:, j : j + 1] + np.arange(n)])
                          for j in range(k)]
            graph.add_vertices(cs, codelet, {"parts": fields, "out": rows_of(parts_var, row0[run], n),
                                             "scale": 1.0, "part_step": step}, tiles[first[run]])


def _columns_stage(ctx: OpContext, op: ReduceOp, partial: DType, out: Tensor, lo: np.ndarray,
                   width: np.ndarray, row0: np.ndarray, scale: float) -> None:
    """Stage 2 over runs of outputs that share one tile and one set of partial rows."""
    graph = ctx.graph
    o_starts, o_lengths, o_tiles = tile_regions(graph, out)
    edges = np.unique(np.concatenate((lo, lo + width, o_starts, o_starts + o_lengths)))
    first = np.searchsorted(edges, lo)
    count = np.searchsorted(edges, lo + width) - first
    piece, k = _expand(count)
    run = first[piece] + k  # the run (edges[run], edges[run + 1]) that piece `piece` covers
    order = np.lexsort((lo[piece], run))
    run, piece = run[order], piece[order]
    rows = np.bincount(run, minlength=edges.size - 1)
    begin = np.cumsum(rows) - rows
    n_of = np.diff(edges)
    tile_of = o_tiles[np.searchsorted(o_starts, edges[:-1], side="right") - 1]
    cs2 = ctx.compute_set("reduce")
    codelet = columns_codelet(op, partial, out.dtype)
    keys = rows.astype(np.int64) * (int(n_of.max()) + 1) + n_of
    for key in np.unique(keys[rows > 0]).tolist():
        which = np.flatnonzero((keys == key) & (rows > 0))
        k_rows, n = int(rows[which[0]]), int(n_of[which[0]])
        owners = piece[begin[which][:, None] + np.arange(k_rows)]  # (V, k) pieces, input order
        starts = row0[owners] + (edges[which][:, None] - lo[owners])
        parts = [tensor_at(graph, partial, starts[:, j : j + 1] + np.arange(n))
                 for j in range(k_rows)]
        step = even_step(starts)
        graph.add_vertices(cs2, codelet, {"parts": parts, "out": rows_of(out, edges[which], n),
                                          "scale": scale, "part_step": step}, tile_of[which])
    ctx.execute(cs2)


def _raw_columns_stage(ctx: OpContext, cv: Canonical, op: ReduceOp, out: Tensor,
                       scale: float) -> None:
    """The only stage: each output run reduces its ``R`` input rows where the output lives."""
    graph, r, b = ctx.graph, cv.R, cv.B
    o_starts, o_lengths, o_tiles = tile_regions(graph, out)
    blocks = np.arange(0, cv.A * b + 1, b)
    edges = np.unique(np.concatenate((o_starts, o_starts + o_lengths, blocks)))
    n_of = np.diff(edges)
    tile_of = o_tiles[np.searchsorted(o_starts, edges[:-1], side="right") - 1]
    flat = cv.flat
    cs = ctx.compute_set("reduce")
    codelet = columns_codelet(op, flat.dtype, out.dtype, raw=True)
    for n in np.unique(n_of).tolist():
        which = np.flatnonzero(n_of == n)
        first = (edges[which] // b) * r * b + edges[which] % b  # element (a, 0, b0) of each run
        rows = first[:, None] + np.arange(r) * b  # (V, R) positions of each run's rows
        starts = _addresses(flat, rows)
        first_row = tensor_at(graph, flat.dtype, _addresses(flat, rows[:, :1] + np.arange(n)))
        if first_row.index is None and flat.index is None:  # row k is row 0 moved k * b elements on
            step = b * flat.strides[0]
            parts = [Tensor(graph, flat.dtype, first_row.shape, first_row.offset + k * step,
                            first_row.strides) for k in range(r)]
        else:
            parts = [tensor_at(graph, flat.dtype, _addresses(flat, rows[:, k : k + 1] + np.arange(n)))
                     for k in range(r)]
        graph.add_vertices(cs, codelet, {"parts": parts, "out": rows_of(out, edges[which], n),
                                         "scale": scale, "part_step": even_step(starts)},
                           tile_of[which])
    ctx.execute(cs)


def _addresses(flat: Tensor, positions: np.ndarray) -> np.ndarray:
    """Addresses of elements ``positions`` of a 1-D tensor (strided or indexed)."""
    if flat.index is not None:
        return flat.index[positions]
    return flat.offset + positions * flat.strides[0]


# -- conveniences -------------------------------------------------------------------------------------
def _convenience(op_name: str, op: ReduceOp, scale: str | None = None):
    def fn(graph: Graph, x: Tensor, prog: Any, *, dims: int | Sequence[int] | None = None,
           name: str = "", options: dict | None = None, out_dtype: DType | None = None) -> Tensor:
        ctx = OpContext.start(graph, prog, op_name, name, x)
        if scale == "mean" and not x.dtype.is_float:
            raise ctx.error(f"the mean of {x.dtype} tensor {x.name} is not representable in its "
                            "dtype; cast to a float type first")
        return _reduce(ctx, x, dims, op, options, scale, out_dtype)

    fn.__name__ = fn.__qualname__ = op_name
    fn.__doc__ = (f"``reduce(..., op=ReduceOp.{op.name})``{' divided by the count' if scale else ''}"
                  f" over ``dims`` (all when None); options and ``out_dtype`` as :func:`reduce`.\n\n"
                  f"    >>> import softipu as sp\n"
                  f"    >>> from softipu import program as P\n"
                  f"    >>> from softipu.ops.reduce import {op_name}\n"
                  f"    >>> g = sp.Graph(sp.targets.ipu_model(tiles=2))\n"
                  f"    >>> x = g.add_variable(sp.float32, (4, 3)); sp.ops.map_linearly(g, x)\n"
                  f"    >>> {op_name}(g, x, P.Sequence(), dims=0).shape\n"
                  f"    (3,)\n")
    return fn


reduce_sum = _convenience("reduce_sum", ReduceOp.ADD)
reduce_mean = _convenience("reduce_mean", ReduceOp.ADD, "mean")
reduce_max = _convenience("reduce_max", ReduceOp.MAX)
reduce_min = _convenience("reduce_min", ReduceOp.MIN)
reduce_prod = _convenience("reduce_prod", ReduceOp.MUL)


# -- argmax / argmin ---------------------------------------------------------------------------------
def argmax(graph: Graph, x: Tensor, prog: Any, *, dim: int = -1, name: str = "",
           options: dict | None = None) -> Tensor:
    """The int32 index of the largest element along ``dim`` (first on ties; NaN counts as largest).

    Options: ``keepdims`` (bool, default False).

    >>> import numpy as np, softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops.reduce import argmax
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=2))
    >>> x = g.add_variable(sp.float32, (2, 3)); sp.ops.map_linearly(g, x)
    >>> prog = P.Sequence(); i = argmax(g, x, prog, dim=1)
    >>> eng = sp.Engine(g, [prog]); eng.write_tensor(x, [[1, 5, 2], [7, 0, 7]]); eng.run(0)
    >>> eng.read_tensor(i)
    array([1, 0], dtype=int32)
    """
    ctx = OpContext.start(graph, prog, "argmax", name, x)
    return _arg(ctx, x, dim, True, options)


def argmin(graph: Graph, x: Tensor, prog: Any, *, dim: int = -1, name: str = "",
           options: dict | None = None) -> Tensor:
    """The int32 index of the smallest element along ``dim``; as :func:`argmax`.

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops.reduce import argmin
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=2))
    >>> x = g.add_variable(sp.float16, (2, 3)); sp.ops.map_linearly(g, x)
    >>> argmin(g, x, P.Sequence(), dim=0).shape
    (3,)
    """
    ctx = OpContext.start(graph, prog, "argmin", name, x)
    return _arg(ctx, x, dim, False, options)


def _arg(ctx: OpContext, x: Tensor, dim: Any, largest: bool, options: dict | None) -> Tensor:
    opts = parse_options(ctx, options, _OPTIONS)
    if x.ndim == 0:
        raise ctx.error(f"{ctx.op} needs at least one dimension; {x.name} is 0-d")
    (axis,) = normalize_dims(ctx, x, dim)
    if x.shape[axis] == 0:
        raise ctx.error(f"{ctx.op} over dim {axis} of {x.name} {x.shape}: the dim is empty")
    if x.dtype is bool_:
        raise ctx.error(f"{ctx.op} of bool tensor {x.name}: cast to a number first")
    cv = canonical(x, (axis,))
    if cv.B != 1:  # move the axis last: every output's elements form one segment
        kept = [d for d in range(x.ndim) if d != axis]
        cv = Canonical(x.transpose(kept + [axis]).reshape(cv.A * cv.B, cv.R, 1), cv.A * cv.B,
                        cv.R, 1)
    out_shape = tuple(d for i, d in enumerate(x.shape) if i != axis)
    out = ctx.output(int32, out_shape)
    if out.numel:
        _plan_arg(ctx, cv, largest, out.reshape(-1))
    if opts["keepdims"]:
        out = out.reshape(tuple(1 if i == axis else d for i, d in enumerate(x.shape)))
    return out


def _plan_arg(ctx: OpContext, cv: Canonical, largest: bool, out: Tensor) -> None:
    graph, dtype, r = ctx.graph, cv.view.dtype, cv.R
    starts, lengths, tiles = tile_regions(graph, cv.view)
    segments = (starts + lengths - 1) // r - starts // r + 1
    groups = [lengths == n for n in np.unique(lengths).tolist()]
    sizes = [(int(p.sum()), int(segments[p].max())) for p in groups]
    tile_groups = [tiles[p] for p in groups]
    values = partials_variable(ctx, dtype, sizes, tile_groups, "values")
    indices = partials_variable(ctx, int32, sizes, tile_groups, "indices")
    cs1 = ctx.compute_set("partials")
    codelet = arg_segments_codelet(largest, dtype)
    slot0 = np.zeros(starts.size, np.int64)
    for pick, vb, ib, (v, s) in zip(groups, values, indices, sizes, strict=True):
        length = int(lengths[pick][0])
        first = np.minimum(r - starts[pick] % r, length)
        graph.add_vertices(cs1, codelet, {"x": rows_of(cv.flat, starts[pick], length), "values": vb,
                                          "index": ib, "first": first, "period": r,
                                          "base": starts[pick] % r}, tiles[pick])
        slot0[pick] = (vb.offset - values[0].offset) + np.arange(v) * s
    ctx.execute(cs1)
    piece, k = _expand(segments)
    output = starts[piece] // r + k
    order = np.lexsort((starts[piece], output))
    rel = (slot0[piece] + k)[order]  # offset inside the partials variables
    output = output[order]
    count = np.bincount(output, minlength=out.numel)
    begin = np.cumsum(count) - count
    out_tiles = graph.tile_of(out).reshape(-1).astype(np.int64)
    cs2 = ctx.compute_set("reduce")
    gather = arg_gather_codelet(largest, dtype)
    for kk in np.unique(count).tolist():
        which = np.flatnonzero(count == kk)
        at = rel[begin[which][:, None] + np.arange(kk)]
        graph.add_vertices(cs2, gather, {"values": tensor_at(graph, dtype, at + values[0].offset),
                                         "index": tensor_at(graph, int32, at + indices[0].offset),
                                         "out": rows_of(out, which, 1)}, out_tiles[which])
    ctx.execute(cs2)
