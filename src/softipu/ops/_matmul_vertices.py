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
                      out: _Blocks, step: int) -> None:
    """One AmpMatMul vertex per (g, i, j, l) whose K range has a chunk at serial ``step``."""
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
    accumulate = step > 0
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


def _add_reduce_vertices(ctx: OpContext, cs: ComputeSet, pl: Plan, grids, partials: _Blocks,
                         out: Tensor) -> None:
    """ReducePartials vertices: one per output row of a block, adding its ``k_split`` partials.

    The rows of block (g, i, j) are shared out over its ``k_split`` tiles, which hold its partials;
    the output rows are mapped to the tile that writes them. Each N block's vertices are one bulk
    call: over the rows ``g*M + row`` both the output rows and (column slabs) the partial rows are
    evenly spaced.
    """
    q = pl.problem
    gm, gn, _ = grids
    if len(gn) == 1:
        _add_reduce_worker_vertices(ctx, cs, pl, gm, partials, out)
        return
    kS, rows = pl.k_split, q.groups * q.m
    j, v = (x.ravel() for x in np.meshgrid(np.arange(len(gn)), np.arange(rows), indexing="ij"))
    g, row = v // q.m, v % q.m
    i = np.searchsorted(gm.starts, row, side="right") - 1
    r = row - gm.starts[i]
    length = gn.sizes[j]
    home = r // -(-gm.sizes[i] // kS)
    tiles = pl.tile_of(g // pl.blocks[0], i, j, home)
    out_start = out.offset + v * q.n + gn.starts[j]
    part_starts = partials.starts[g, i, j, :].T + r * length
    map_runs(ctx.graph, out, out_start, length, tiles)
    codelet = reduce_codelet(q.partials_dtype, q.out_dtype)
    add_vertex_runs(ctx.graph, cs, codelet, [j], v, tiles,
                    {"out": out_start, "partials": part_starts},
                    {"out": (q.out_dtype, length), "partials": (q.partials_dtype, length)}, {})


def _add_reduce_worker_vertices(ctx: OpContext, cs: ComputeSet, pl: Plan, gm: _Grid, partials: _Blocks,
                                out: Tensor) -> None:
    """The reduce of a plan with one N block, as poplin builds it (lib/poplin/ConvReduce.cpp,
    ``reduce``): each tile's rows of a block are one contiguous region of the output and of every
    partial, and poplin connects that region to one ``ReduceAdd`` vertex that divides it between
    the workers. Here: one vertex per worker's share of whole rows (the fast engine's matmul
    chains read a reduce by rows), so a tile's reduce holds at most six vertices whatever the
    batch, not one per output row (ResNet-50 fp16 b32: 137 rows, 2,740 B of vertex state per tile
    and reduce; it grew with the batch). A tile with fewer than six rows uses fewer workers.

    The shares are cut at multiples of one ``piece`` of rows over the whole ``G*M`` matrix (one N
    block: the output and every K range's partials are row-major over all of it, ``_partials``),
    so all full shares are one evenly spaced run: one strided bulk call, not an address per
    element (a share cut at each tile's own rows is spaced irregularly from tile to tile: ResNet-50
    fp16 b16 listed ~2.7 M addresses per reduce). A share starts on the tile whose ``chunk`` of
    its block holds its first row; at most ``ceil(chunk / piece) <= workers`` start in a chunk."""
    q, graph = pl.problem, ctx.graph
    kS, n, workers = pl.k_split, q.n, graph.target.workers_per_tile
    total = q.groups * q.m
    chunk = -(-int(gm.sizes.max()) // kS)  # the rows of a block each of its kS tiles reduces
    piece = -(-chunk // workers)
    r0 = np.arange(0, total, piece, dtype=np.int64)
    length = np.minimum(piece, total - r0) * n
    g, row = r0 // q.m, r0 % q.m
    i = np.searchsorted(gm.starts, row, side="right") - 1
    h = np.minimum((row - gm.starts[i]) // chunk, kS - 1)
    out_start = out.offset + r0 * n
    part_starts = partials.starts[g, i, 0, :].T + (row - gm.starts[i]) * n
    tiles = pl.tile_of(g // pl.blocks[0], i, 0, h)
    map_runs(graph, out, out_start, length, tiles)
    codelet = reduce_codelet(q.partials_dtype, q.out_dtype)
    add_vertex_runs(graph, cs, codelet, [length], out_start, tiles,
                    {"out": out_start, "partials": part_starts},
                    {"out": (q.out_dtype, length), "partials": (q.partials_dtype, length)}, {})
