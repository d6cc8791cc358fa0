"""A matmul's serial K steps as one loop (part of :mod:`softipu.ops.matmul`).

poplin runs a plan's serial split as a loop, not as copies of each step (lib/poplin/
ConvProgramTree.hpp, ``ConvProgramTree::lower``: ``Repeat(loopCount, Sequence{slice, body,
update, loopPost})``; lib/poplin/Convolution.cpp, ``convolutionImpl``): a ``loopCounter``
(``UNSIGNED_INT`` on tile 0, zeroed before the loop) picks each turn's slice of the input and
the weights with ``popops::dynamicSlice`` (``slice``), the body's compute sets work on that
slice, the results are accumulated into a zeroed ``serialOut`` (``update``: ``addInPlace``), and
``loopPost`` adds 1 to the counter. The body's compute sets, and so their exchange code, vertex
state and control code, exist once however many turns it runs.

Here (for a plan whose steps are alike, :attr:`~softipu.ops.planner.Plan.looped`):

* before the loop, the partials (or the output the AMP writes directly) are zeroed
  (popops ``zero``) and the counter is reset (a copy of a constant 0);
* ``serialSlice``: a ``DynamicSlice2d`` vertex per piece of each step buffer copies, on the
  piece's tile, the same piece of the turn's K block (A: block ``(g, i, kr x k_serial + turn)``;
  B: block ``(g, kr x k_serial + turn, j)``) into the step buffer, a ``(groups, M, k_split x
  chunk)`` matrix (A) or ``(groups, k_split x chunk, N)`` one (B) laid out as one step's blocks
  are (:func:`~softipu.ops._matmul_blocks._block_pieces`): where the operand was laid out by the
  plan, every row the vertex reads is on its own tile, so the slice moves nothing between tiles
  (poplin rearranges an operand whose sliced dimension is split over tiles before the loop,
  ``rearrangeIfSplitOverTiles``);
* ``amp``: the AMP vertices of one step over the step buffers, accumulating into the zeroed
  partials (poplin's ``addInPlace`` of each turn's result, folded into the AMP's accumulation as
  the unrolled steps already were);
* ``loopIncrement``: the counter's ``+ 1`` (popops ``addInPlace``, tile 0).

The sum is the same as the unrolled steps' (one more addition, of the zeroed start, exact).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from softipu.codelets.indexing import dynamic_slice_codelet
from softipu.graph import program as P
from softipu.ops._matmul_blocks import _block_pieces, _Blocks, _Grid, _slab_variable, k_grid
from softipu.ops._matmul_vertices import _add_amp_vertices
from softipu.ops.bulk import add_vertex_runs
from softipu.ops.common import OpContext
from softipu.ops.planner import LOOP_COUNTER_DTYPE, Plan, slice_share

__all__ = ["run_serial_loop"]


def run_serial_loop(ctx: OpContext, pl: Plan, grids: tuple[_Grid, _Grid, _Grid], a: _Blocks,
                    b: _Blocks, target: _Blocks) -> None:
    """Append the zeroing, the counter reset and ``Repeat(k_serial, body)`` to ``ctx.prog``."""
    from softipu.ops.elementwise import add_
    from softipu.ops.indexing import zero

    graph = ctx.graph
    gm, gn, _ = grids
    step_k = k_grid(pl, serial=1)  # one step's K blocks: one per K range
    zero(graph, target.tensor, ctx.prog, name=f"{ctx.name}/zeroPartials")
    counter = graph.add_variable(LOOP_COUNTER_DTYPE, (1,), name=f"{ctx.name}/loopCounter")
    graph.set_tile_mapping(counter, 0)
    start = graph.add_constant(LOOP_COUNTER_DTYPE, (1,), 0, name=f"{ctx.name}/loopCounterZero")
    graph.set_tile_mapping(start, 0)
    ctx.prog.add(P.Copy(start, counter))

    body = P.Sequence()
    inner = dataclasses.replace(ctx, prog=body)
    cs = inner.compute_set("serialSlice")
    a_step = _slice(inner, cs, pl, a, gm, step_k, "a", counter)
    b_step = _slice(inner, cs, pl, b, step_k, gn, "b", counter)
    inner.execute(cs)
    amp = inner.compute_set("amp")
    one_step = dataclasses.replace(pl, k_serial=1)
    _add_amp_vertices(inner, amp, one_step, (gm, gn, step_k), a_step, b_step, target, 0, accumulate=True)
    inner.execute(amp)
    add_(graph, counter, 1, body, name=f"{ctx.name}/loopIncrement")
    ctx.prog.add(P.Repeat(pl.k_serial, body))


def _slice(ctx: OpContext, cs, pl: Plan, src: _Blocks, rows: _Grid, cols: _Grid, role: str,
           counter) -> _Blocks:
    """The step buffer of operand ``role`` (its blocks: ``rows`` x ``cols``, one K block per K
    range) and the ``DynamicSlice2d`` vertices filling it from ``src`` at the counter's turn."""
    graph = ctx.graph
    dtype = src.tensor.dtype
    groups = src.starts.shape[0]
    ks = pl.k_serial
    pieces = _block_pieces(pl, groups, rows, cols, role, src.group_of, dtype.itemsize, serial=1)
    var, starts = _slab_variable(ctx, pl, dtype, groups, rows, cols, role, src.group_of,
                                 name=f"{ctx.name}/{role}SerialSlice", serial=1, pieces=pieces)
    turns = np.arange(pl.k_split)[:, None] * ks + np.arange(ks)[None, :]  # (K range, turn): K block
    if role == "a":  # (groups, M blocks, K ranges, turns)
        src_starts = src.starts[:, :, turns]
    else:  # (groups, K ranges, N blocks, turns)
        src_starts = src.starts[:, turns, :].transpose(0, 1, 3, 2)
    # Per piece: its source rows, its place in the buffer, its length and tile, and the block
    # coordinates that key a bulk call (vertices differing only in the piece, or only in the M
    # block (A) or the N block (B), read and write evenly spaced runs: one strided view a field).
    gg, rr, cc = np.indices(starts.shape)
    vary, fixed = (rr, cc) if role == "a" else (cc, rr)
    cols_ = {name: [] for name in ("base", "out", "length", "tile", "vary", "g", "fixed", "p")}
    for p, (lo, hi, t) in enumerate(pieces):
        keep = hi > lo
        for name, value in (("base", src_starts + lo[..., None]), ("out", starts + lo),
                            ("length", hi - lo), ("tile", t), ("vary", vary), ("g", gg),
                            ("fixed", fixed), ("p", np.full(starts.shape, p))):
            cols_[name].append(value[keep])
    got = {name: np.concatenate(v) for name, v in cols_.items()}
    share = slice_share(graph.target, dtype, got["length"])
    count = -(-got["length"] // share)
    parent = np.repeat(np.arange(count.size), count)
    k = np.arange(parent.size) - np.repeat(np.cumsum(count) - count, count)
    at = k * share[parent]
    got = {name: v[parent] for name, v in got.items()}
    length = np.minimum(share[parent], got["length"] - at)
    base_s, out_s = got["base"] + at[:, None], got["out"] + at
    codelet = dynamic_slice_codelet(dtype, counter.dtype)
    # A bulk call spans one coordinate: the piece (each a fixed step further in its block) or
    # the block along M (A) / N (B); whichever leaves fewer calls.
    calls = []
    for vary in ("p", "vary"):
        keys = [length, k, got["g"], got["fixed"], got["vary" if vary == "p" else "p"]]
        calls.append((_distinct(keys), keys, got[vary]))
    _, keys, order = min(calls, key=lambda c: c[0])
    add_vertex_runs(graph, cs, codelet, keys, order, got["tile"],
                    {"offset": np.full(out_s.size, counter.offset, np.int64), "base": base_s.T,
                     "out": out_s[None, :]},
                    {"offset": (counter.dtype, np.ones(out_s.size, np.int64)), "base": (dtype, length),
                     "out": (dtype, length)}, {})
    return _Blocks(var, starts, src.transposed, src.group_of)


def _distinct(keys: list[np.ndarray]) -> int:
    """How many distinct key tuples (columns of ``keys``) there are."""
    order = np.lexsort(keys[::-1])
    ordered = np.stack([k[order] for k in keys])
    return 1 + int(np.count_nonzero(np.any(ordered[:, 1:] != ordered[:, :-1], axis=0))) if order.size else 0
