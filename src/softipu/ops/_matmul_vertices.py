"""Matmul vertices (part of :mod:`softipu.ops.matmul`): the result and partials variables, the
``AmpMatMul`` vertices of each serial K step, and the ``ReducePartials`` vertices that add the
partials of a K split over tiles.
"""

from __future__ import annotations

import numpy as np

from softipu.codelets.matmul import A_TRANSPOSED, B_TRANSPOSED, amp_codelet, reduce_codelet
from softipu.graph.graph import ComputeSet
from softipu.graph.tensor import Tensor
from softipu.ops._matmul_blocks import _Blocks, _Grid
from softipu.ops.bulk import add_vertex_runs, evenly_spaced, map_runs
from softipu.ops.common import OpContext
from softipu.ops.planner import Plan


# -- output and partials ---------------------------------------------------------------------------
def _output(ctx: OpContext, pl: Plan, grids: tuple[_Grid, _Grid, _Grid]):
    """The result variable and, when the AMP writes it directly, its blocks."""
    q = pl.problem
    gm, gn, _ = grids
    out = ctx.graph.add_variable(q.out_dtype, (q.groups, q.m, q.n), name=f"{ctx.name}/out")
    if pl.two_stage:
        return out, None
    # One block per (g, i): whole rows, so each is contiguous.
    starts = (out.offset + np.arange(q.groups)[:, None, None] * q.m * q.n
              + gm.starts[None, :, None] * q.n + gn.starts[None, None, :])
    sizes = gm.sizes[None, :, None] * gn.sizes[None, None, :]
    g = np.arange(q.groups)[:, None, None]
    tiles = pl.tile_of(g // pl.blocks[0], np.arange(len(gm))[None, :, None],
                       np.arange(len(gn))[None, None, :], 0)
    map_runs(ctx.graph, out, starts.ravel(), np.broadcast_to(sizes, starts.shape).ravel(),
             np.broadcast_to(tiles, starts.shape).ravel())
    return out, _Blocks(out, starts, False, np.arange(q.groups))


def _partials(ctx: OpContext, pl: Plan, grids: tuple[_Grid, _Grid, _Grid]) -> _Blocks:
    """Partials: K range ``kr``'s partial product is a ``(G*M, N)`` matrix in column slabs.

    Slab ``j`` holds the ``G*M`` rows of N block ``j``, so block ``(g, i, j, kr)`` is contiguous,
    the blocks of any one dimension sit at evenly spaced addresses (an AMP bulk call binds them
    as one strided view), and so do the rows a ReducePartials vertex reads: one bulk call per N
    block reduces every row of it.
    """
    q = pl.problem
    gm, gn, _ = grids
    g_, mS, nS, kS = q.groups, len(gm), len(gn), pl.k_split
    rows = g_ * q.m
    var = ctx.graph.add_variable(q.partials_dtype, (kS * rows * q.n,), name=f"{ctx.name}/partials")
    g = np.arange(g_)[:, None, None, None]
    i = np.arange(mS)[None, :, None, None]
    j = np.arange(nS)[None, None, :, None]
    kr = np.arange(kS)[None, None, None, :]
    starts = (var.offset + kr * rows * q.n + rows * gn.starts[j]
              + (g * q.m + gm.starts[i]) * gn.sizes[j])
    sizes = np.broadcast_to(gm.sizes[i] * gn.sizes[j], starts.shape)
    tiles = pl.tile_of(g // pl.blocks[0], i, j, kr)
    map_runs(ctx.graph, var, starts.ravel(), sizes.ravel(), np.broadcast_to(tiles, sizes.shape).ravel())
    return _Blocks(var, starts, False, np.arange(g_))


# -- vertices ---------------------------------------------------------------------------------------
def _add_amp_vertices(ctx: OpContext, cs: ComputeSet, pl: Plan, grids, a: _Blocks, b: _Blocks,
                      out: _Blocks, step: int, accumulate: bool | None = None) -> None:
    """One AmpMatMul vertex per (g, i, j, l) whose K range has a chunk at serial ``step``;
    accumulating onto ``out`` after the first step (``accumulate``: always, or never)."""
    q = pl.problem
    gm, gn, gk = grids
    g_, mS, nS, kS = q.groups, len(gm), len(gn), pl.k_split
    g, i, j, kr = np.meshgrid(np.arange(g_), np.arange(mS), np.arange(nS), np.arange(kS),
                             indexing="ij")
    lt = kr * pl.k_serial + step
    valid = lt < len(gk)
    g, i, j, kr, lt = (x[valid] for x in (g, i, j, kr, lt))
    msz, nsz, ksz = gm.sizes[i], gn.sizes[j], gk.sizes[lt]
    starts = {
        "a": a.starts[a.group_of[g], i, lt],
        "b": b.starts[b.group_of[g], lt, j],
        "out": out.starts[g, i, j] if out.starts.ndim == 3 else out.starts[g, i, j, kr],
    }
    layout = (A_TRANSPOSED if a.transposed else 0) | (B_TRANSPOSED if b.transposed else 0)
    accumulate = step > 0 if accumulate is None else accumulate
    codelet = amp_codelet(q.in_dtype, q.partials_dtype if pl.two_stage else q.out_dtype, accumulate)
    tiles = pl.tile_of(g // pl.blocks[0], i, j, kr)
    coords = {"g": g, "m": i, "n": j, "k": kr}
    vary = _vary(coords, {"g": np.zeros_like(g), "m": msz, "n": nsz, "k": ksz}, a, b)
    # Sizes first: a grid's rows (equal sizes) follow each other and join in one call (ops.bulk).
    keys = [msz, nsz, ksz] + [coords[d] for d in "gmnk" if d != vary]
    tensors = {"a": (a.tensor.dtype, msz * ksz), "b": (b.tensor.dtype, ksz * nsz),
               "out": (out.tensor.dtype, msz * nsz)}
    params = {"m": msz, "k": ksz, "n": nsz, "layout": np.full(g.shape, layout)}
    add_vertex_runs(ctx.graph, cs, codelet, keys, coords[vary], tiles, starts, tensors, params)


def _vary(coords: dict[str, np.ndarray], sizes: dict[str, np.ndarray], a: _Blocks, b: _Blocks) -> str:
    """The dimension whose vertices each bulk call spans: the one that leaves the fewest calls.

    A call holds the vertices that differ only in that dimension and have equal blocks; along
    any of them every field's blocks are evenly spaced (the group dimension only when neither
    operand repeats a group: a broadcast batch).
    """
    best, fewest = "g", None
    for d in "mnkg":
        if d == "g" and not all(evenly_spaced(x.group_of) for x in (a, b)):
            continue
        key = np.zeros_like(coords[d])
        for e in "gmnk":
            value = sizes[d] if e == d else coords[e]
            key = key * (int(value.max(initial=0)) + 1) + value
        calls = np.unique(key).size
        if fewest is None or calls < fewest:
            best, fewest = d, calls
    return best


def _reduce_stage(ctx: OpContext, pl: Plan, grids, partials: _Blocks | None, out: Tensor) -> None:
    """The ``reduce`` compute set adding ``partials`` into ``out``, executed; nothing where the
    AMP (or ConvWindow) vertices wrote the output directly (``partials`` None)."""
    if partials is None:
        return
    cs = ctx.compute_set("reduce")
    _add_reduce_vertices(ctx, cs, pl, grids, partials, out)
    ctx.execute(cs)


def _add_reduce_vertices(ctx: OpContext, cs: ComputeSet, pl: Plan, grids, partials: _Blocks,
                         out: Tensor) -> None:
    """The reduce as poplin builds it (lib/poplin/ConvReduce.cpp, ``reduce``): the rows of block
    ``(g, i, j)`` are shared out over its ``k_split`` tiles, which hold its partials, a ``chunk``
    of ``ceil(rows / k_split)`` rows each, and each tile's rows are one region (concatenated)
    connected to one ``ReduceAdd`` vertex that divides it between the workers. Here: one
    ``ReducePartials`` vertex per worker's share of whole rows of a chunk (the fast engine's
    matmul chains read a reduce by rows), ``piece = ceil(chunk / workers)`` rows, so a tile's
    reduce holds at most six vertices whatever the batch, not one per output row (issue 11's
    BERT-width training layer: 0.88 M of its 1.38 M vertices were reduce rows of 32 elements;
    ResNet-50 fp16 b32: 137 rows a tile). A chunk of fewer than six rows uses fewer workers.

    A share's output is ``rows x width`` elements at a row stride of N (one N block: one
    contiguous run), its partials one contiguous run per K range (column slabs, ``_partials``);
    each output row lives on its share's tile. The shares of a kind (N blocks of one width,
    M blocks of one size, chunks of one size, shares of one size) start on a regular grid of
    (N block, group, M block, chunk, share), so each kind is one bulk call whose fields are
    grid views (a few ints, not an address per element)."""
    q, graph = pl.problem, ctx.graph
    gm, gn, _ = grids
    kS, n, m, workers = pl.k_split, q.n, q.m, graph.target.workers_per_tile
    codelet = reduce_codelet(q.partials_dtype, q.out_dtype)
    slab0 = partials.starts[0, 0]  # row 0 of K range kr's slab j: row v is v * width further
    gs = np.arange(q.groups, dtype=np.int64)
    for msz, i_s in _runs_of(gm.sizes):
        chunk = -(-msz // kS)
        piece = -(-chunk // workers)
        for csz, h_s in _runs_of(np.minimum(chunk, msz - np.arange(-(-msz // chunk)) * chunk)):
            for p, s_s in _runs_of(np.minimum(piece, csz - np.arange(-(-csz // piece)) * piece)):
                first = int(gm.starts[i_s[0]]) + int(h_s[0]) * chunk + int(s_s[0]) * piece  # share 0's row
                grid = (q.groups, i_s.size, h_s.size, s_s.size)
                row_steps = (m, int(gm.sizes[0]), chunk, piece)  # i_s: equal blocks, bm apart
                rows = (gs[:, None, None, None] * m + gm.starts[i_s][:, None, None]
                        + h_s[:, None] * chunk + s_s * piece)  # (grid) first rows
                for width, j_s in _runs_of(gn.sizes):
                    lead = (j_s.size,) + grid
                    tiles = np.broadcast_to(pl.tile_of(
                        gs[None, :, None, None, None] // pl.blocks[0], i_s[None, None, :, None, None],
                        j_s[:, None, None, None, None], h_s[None, None, None, :, None]), lead)
                    o = out.offset + first * n + int(gn.starts[j_s[0]])
                    out_t = Tensor(graph, q.out_dtype, lead + (p, width), o,
                                   (width,) + tuple(r * n for r in row_steps) + (n, 1))
                    part_t = [Tensor(graph, q.partials_dtype, lead + (p * width,),
                                     int(slab0[j_s[0], kr]) + first * width,
                                     (int(slab0[j_s[-1], kr] - slab0[j_s[0], kr]) // max(j_s.size - 1, 1),)
                                     + tuple(r * width for r in row_steps) + (1,))
                              for kr in range(kS)]
                    # Each output row on its share's tile (whole rows of N: one run a share).
                    each = 1 if width == n else p
                    starts = (out.offset + (rows[None, ..., None] + np.arange(each)) * n
                              + gn.starts[j_s].reshape(-1, 1, 1, 1, 1, 1))
                    map_runs(graph, out, starts.ravel(), np.full(starts.size, width * p // each, np.int64),
                             np.repeat(tiles.ravel(), each))
                    graph.add_vertices(cs, codelet, {"out": out_t.reshape(-1, p * width),
                                                     "partials": [t.reshape(-1, p * width) for t in part_t]},
                                       tiles.ravel())


def _runs_of(sizes: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(size, indices) of each run of equal consecutive sizes (a grid's blocks: all equal but
    the last, which may be smaller)."""
    sizes = np.asarray(sizes, np.int64)
    cut = np.flatnonzero(sizes[1:] != sizes[:-1]) + 1
    return [(int(sizes[c[0]]), c) for c in np.split(np.arange(sizes.size), cut) if c.size and sizes[c[0]] > 0]
