"""Meet-in-middle rings (poplibs' ``meetInMiddleReduceScatterSequence`` / ``...AllGatherSequence``,
CollectivesProgram.hpp): a clockwise and an anticlockwise ring over the WHOLE fragment, each
carrying it half way round, so ``(n - 1) // 2`` steps go both ways (plus one clockwise step when
``n`` is even) instead of the ``n - 1`` steps of a ring.

With ``c = ceil((n - 1) / 2)`` and ``a = (n - 1) // 2`` (ring positions ``q``; ``d`` = +1 clockwise):

* reduce-scatter: fragment ``q``'s clockwise partial starts at ``q - c`` and adds each rank's row on
  its way (``x[q-c] + x[q-c+1] + ... + x[q]``, own row last); its anticlockwise partial starts at
  ``q + a`` (``x[q+a] + ... + x[q+1]``); rank ``q`` then combines them, ``clockwise op
  anticlockwise`` (GCL's ``combineBuffersProg``). The last anticlockwise arrival is not reduced;
* all-gather: each rank's own fragment goes ``c`` steps clockwise and ``a`` anticlockwise; every
  arrival is stored at its rank's row.

Each step is a cross-replica copy and one compute set (:func:`codelets.ring_step`), as the rings
in :mod:`softipu.collectives.ring`; middle steps are a ``Repeat`` of two (buffers take turns).
"""

from __future__ import annotations

import numpy as np

from softipu.collectives.codelets import ring_step
from softipu.collectives.ring import Ring, _counters, _exchange, _sequences
from softipu.dtypes import int32
from softipu.graph import program as P
from softipu.graph.tensor import Tensor

__all__ = ["meet_reduce_scatter", "meet_all_gather", "chains"]


def chains(n: int) -> tuple[int, int]:
    """(clockwise steps, anticlockwise steps) of a meet-in-middle ring of ``n`` ranks."""
    return n // 2, (n - 1) // 2


def _repeat(first: int, last: int, body, prog: P.Sequence) -> None:
    """Steps ``first .. last`` (each ``body(s)``, the same program for steps of one parity) as
    ``Repeat(count // 2, [body(first), body(first + 1)])``, plus ``body(first)`` for an odd count."""
    count = last - first + 1
    if count <= 0:
        return
    if count >= 2:
        prog.add(P.Repeat(count // 2, P.Sequence([body(first), body(first + 1)])))
    if count % 2:
        prog.add(body(first))


def meet_reduce_scatter(pair: tuple[Ring, Ring], rows: Tensor, op: str, prog: P.Sequence) -> Tensor:
    """The (w,) fragment ``q`` of ``rows`` (n, w) reduced over the group, on rank ``q``, by the
    fused ``op`` (a :data:`codelets.FUSED` name); ``n >= 3``."""
    cw, acw = pair
    n, w = cw.n, rows.shape[1]
    c, a = chains(n)
    graph, name = cw.ctx.graph, cw.ctx.name
    bufs = [[ring.var(rows.dtype, (w,), s, rows[0]) for s in ("first", "recv")] for ring in pair]
    table = _sequences([cw, acw], [n - c, n - a], c + 1, prog)  # first sends, then each step's row
    tables = [table[0], table[1]]
    counters = _counters(cw, prog)
    ring_step(cw.ctx, "copy", [(bufs[i][0], rows, tables[i]) for i in range(2)], *counters, prog)

    def body(s: int, directions: int = 2, reduces: int = 2) -> P.Sequence:
        sends = [bufs[i][(s - 1) % 2] for i in range(directions)]
        recvs = [bufs[i][s % 2] for i in range(directions)]
        seq = P.Sequence([_exchange(list(pair[:directions]), sends, recvs)])
        parts = [(bufs[i][s % 2], rows, tables[i]) for i in range(reduces)]
        ring_step(cw.ctx, op, parts, counters[s % 2], counters[(s + 1) % 2], seq)
        return seq

    _repeat(1, a - 1, body, prog)
    prog.add(body(a, 2, 1))  # the anticlockwise partial arrives: not reduced with the own row
    if c > a:
        prog.add(body(c, 1, 1))
    result, other = bufs[0][c % 2], bufs[1][a % 2]
    zero = graph.add_constant(int32, (1,), np.zeros(1, np.int32), name=f"{name}/combine_row")
    graph.set_tile_mapping(zero, 0)
    ring_step(cw.ctx, op, [(result, other.reshape(1, w), zero)], counters[(c + 1) % 2],
              counters[c % 2], prog)  # GCL's combineBuffersProg: clockwise op= anticlockwise
    return result


def meet_all_gather(pair: tuple[Ring, Ring], own: Tensor, z: Tensor, prog: P.Sequence,
                    scratch: bool = False, divisor: int = 1) -> Tensor:
    """``z`` (n, w) gets every group member's (w,) ``own`` at its rank's row; ``n >= 3``.
    ``scratch``: ``own`` is the collective's own buffer (it sends, then receives); ``divisor``
    > 1 (MEAN, with ``scratch``): the first store divides it in place first."""
    cw, acw = pair
    n = cw.n
    c, a = chains(n)
    table = _sequences([cw, acw], 0, c + 1, prog)  # the own row, then each step's arrival
    tables = [table[0], table[1]]
    counters = _counters(cw, prog)
    ring_step(cw.ctx, None, [(own, z, tables[0])], *counters, prog, divisor)
    first = own if scratch else cw.var(own.dtype, own.shape, "send", own)
    if first is not own:
        prog.add(P.Copy(own, first))
    bufs = [[first, cw.var(own.dtype, own.shape, "recv", own)],
            [acw.var(own.dtype, own.shape, "recv", own), acw.var(own.dtype, own.shape, "recv", own)]]

    def body(s: int, directions: int = 2) -> P.Sequence:
        sends = [bufs[0][(s - 1) % 2], first if s == 1 else bufs[1][(s - 1) % 2]][:directions]
        recvs = [bufs[i][s % 2] for i in range(directions)]
        seq = P.Sequence([_exchange(list(pair[:directions]), sends, recvs)])
        parts = [(bufs[i][s % 2], z, tables[i]) for i in range(directions)]
        ring_step(cw.ctx, None, parts, counters[s % 2], counters[(s + 1) % 2], seq)
        return seq

    prog.add(body(1))
    _repeat(2, a, body, prog)
    if c > a:
        prog.add(body(c, 1))
    return z
