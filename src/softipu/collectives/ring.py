"""Ring algorithms as compute sets and cross-replica copies, their structure independent of the
group size (a ``Repeat`` over ring steps, as GCL builds them).

Ranks sit around a ring in poplibs' order for the system (``links.ring_order``: interleaved,
``0, 2, 4, ..., 5, 3, 1``, with one IPU per replica; flat with several on a torus); below, ``q``
stands for ring positions and fragment ``q`` for the fragment of the rank at position ``q``. A
replica sends to the one ``d`` places on (+1 clockwise, -1 anticlockwise). Which fragment (row of
the ``(n, w)`` data) a replica works on at a step is read from its own sequence of rows (a table
indexed by the replication index constant, made at compile time from the ring order) at a step
counter that is the same on every replica, so every step is the same program on every replica:

* reduce-scatter: ``send = x[q - d]``; then ``n - 1`` times: ``send`` goes to the next replica's
  ``recv``; ``recv = recv op x[c]`` with ``c = q - 2d, q - 3d, ...`` and the two buffers swap
  roles (``_alternating``: a ``Repeat`` of two steps, no copies); the replica ends holding
  fragment ``q`` reduced over its group. Fragment ``q``'s sum is accumulated in ring order from
  ``q + d``: ``((x[q+d] + x[q+2d]) + ...) + x[q]`` (ranks mod n);
* all-gather: ``z[q] = own``; then ``n - 1`` times: ``send`` goes to the next replica, which
  stores it at ``z[c]``, ``c = q - d, q - 2d, ...``, and forwards it.

All-to-all (not a ring) is one exchange of every rank pair's row (``api.all_to_all_to_destination``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import softipu.ops as ops
from softipu.collectives.codelets import FUSED, FUSED_DTYPES, ring_step
from softipu.collectives.groups import CollectiveOperator, Groups
from softipu.collectives.whole import RingRepeat, WholeRing
from softipu.dtypes import int32
from softipu.graph import program as P
from softipu.graph.tensor import Tensor
from softipu.ops.common import OpContext, tile_regions
from softipu.ops.mapping import map_linearly

__all__ = ["Ring", "map_by_columns", "ring_rows"]

_OP_INPLACE = {
    CollectiveOperator.ADD: ops.add_, CollectiveOperator.MEAN: ops.add_,
    CollectiveOperator.SQUARE_ADD: ops.add_, CollectiveOperator.MUL: ops.mul_,
    CollectiveOperator.MIN: ops.minimum_, CollectiveOperator.MAX: ops.maximum_,
    CollectiveOperator.LOGICAL_AND: ops.minimum_, CollectiveOperator.LOGICAL_OR: ops.maximum_,  # on bools
}


_FUSED_OP = {CollectiveOperator.ADD: "add", CollectiveOperator.MEAN: "add",
             CollectiveOperator.SQUARE_ADD: "add", CollectiveOperator.MUL: "mul",
             CollectiveOperator.MIN: "min", CollectiveOperator.MAX: "max",
             CollectiveOperator.LOGICAL_AND: "min", CollectiveOperator.LOGICAL_OR: "max"}  # on bools


def map_by_columns(graph, t: Tensor) -> None:
    """Map a (rows, w) ring buffer so that every tile holds the same columns of every row (a 1-D
    one linearly): a fragment then spreads over all tiles, as GCL lays out its buffers, and a row
    slice or update works on every tile instead of the few that hold one row."""
    if t.ndim != 2:
        map_linearly(graph, t)
        return
    grain = t.shape[0] * graph.target.vector_width(t.dtype.itemsize)
    map_linearly(graph, t.transpose(), grain_size=grain)


@dataclass(frozen=True, slots=True)
class Ring:
    """One ring direction over the replica groups of a collective call."""

    ctx: OpContext
    groups: Groups
    clockwise: bool
    fault: tuple[int, ...] | None
    order: tuple[int, ...] = ()  # ring position -> rank (``links.ring_order``); () is 0..n-1

    @property
    def n(self) -> int:
        return self.groups.n

    @property
    def d(self) -> int:
        return 1 if self.clockwise else -1

    def rank_at(self, position: int) -> int:
        return self.order[position % self.n] if self.order else position % self.n

    def position(self, replica: int) -> int:
        rank = self.groups.rank(replica)
        return self.order.index(rank) if self.order else rank

    def step_map(self) -> dict[int, int]:
        """Each replica to its neighbour ``d`` places on around its group's ring."""
        return {r: self.groups.member(r, self.rank_at(self.position(r) + self.d))
                for r in range(self.groups.replicas)}

    def var(self, dtype, shape: tuple[int, ...], suffix: str, like: Tensor | None = None) -> Tensor:
        """A ring buffer, mapped as ``like`` (a fragment row of the input, same shape) where that is
        mapped, as GCL clones its buffers from the input: a fragment's columns then sit on the
        tiles that hold those columns of every row of a column-mapped input (no exchange in the
        steps' compute sets); by columns otherwise."""
        graph = self.ctx.graph
        t = graph.add_variable(dtype, shape, name=f"{self.ctx.name}/{suffix}")
        starts, lengths, tiles = tile_regions(graph, like) if like is not None else ((), (), np.zeros(0))
        if like is None or tiles.size == 0 or tiles.min() < 0 or int(np.sum(lengths)) != t.numel:
            map_by_columns(graph, t)
        else:
            graph.map_intervals(t, starts, starts + lengths, tiles)
        return t

    def per_replica(self, values: list, suffix: str, prog: P.Sequence) -> Tensor:
        """``values[replica]`` (an int, or a list of L ints) on each replica, as a (1,) or (1, L)
        int32: a table indexed by the replication index constant (Poplar's
        ``addReplicationIndexConstant``)."""
        graph = self.ctx.graph
        values = np.array(values, np.int32)
        table = graph.add_constant(int32, values.shape, values, name=f"{self.ctx.name}/{suffix}_table")
        index = graph.add_replication_index_constant(name=f"{self.ctx.name}/replica")
        graph.set_tile_mapping(table, 0)
        graph.set_tile_mapping(index, 0)
        return ops.dynamic_slice(graph, table, index, prog, size=1, name=f"{self.ctx.name}/{suffix}")

    def rows_at(self, steps_on: int, suffix: str, prog: P.Sequence) -> Tensor:
        """Per replica (position p), the rank at position ``p - steps_on * d``: a fragment row."""
        values = [self.rank_at(self.position(r) - steps_on * self.d) for r in range(self.groups.replicas)]
        return self.per_replica(values, suffix, prog)

    def sequence(self, steps_on: int, length: int, suffix: str, prog: P.Sequence) -> Tensor:
        """Per replica (position p), the ranks at positions ``p - (steps_on + j) * d`` for the ring's
        steps ``j = 0 .. length-1``: the fragment rows it works on, as a (length,) tensor that a
        replica-independent step counter indexes (no modular arithmetic on the device)."""
        values = [[self.rank_at(self.position(r) - (steps_on + j) * self.d) for j in range(length)]
                  for r in range(self.groups.replicas)]
        return self.per_replica(values, suffix, prog).reshape(length)


def _counters(ring: Ring, prog: P.Sequence) -> tuple[Tensor, Tensor]:
    """The ring steps' two counters (even steps read the first and write the second, odd steps
    the other way round), the first 0 at the first step, the same on every replica."""
    graph = ring.ctx.graph
    counters = ring.var(int32, (1,), "step"), ring.var(int32, (1,), "step")
    zero = graph.add_constant(int32, (1,), 0, name=f"{ring.ctx.name}/first_step")
    graph.set_tile_mapping(zero, 0)
    prog.add(P.Copy(zero, counters[0]))
    return counters


def _sequences(rings: list[Ring], steps_on: int | list[int], length: int, prog: P.Sequence) -> Tensor:
    """Every ring's fragment rows (:meth:`Ring.sequence`; ``steps_on`` one for all or one a
    ring), a (rings, length) table made once before the loop (GCL's ``initIndex``: no index
    arithmetic in the loop)."""
    ring0 = rings[0]
    ons = steps_on if isinstance(steps_on, list) else [steps_on] * len(rings)
    values = [[[ring.rank_at(ring.position(r) - (on + j) * ring.d) for j in range(length)]
               for ring, on in zip(rings, ons, strict=True)] for r in range(ring0.groups.replicas)]
    return ring0.per_replica(values, "rows", prog).reshape(len(rings), length)


def ring_rows(rings: list[Ring], prog: P.Sequence) -> Tensor:
    """Every ring's fragment rows from the replica's own on, ``n + 1`` of them: the all-gather
    reads the first ``n``, the reduce-scatter the last ``n`` (one table, one look-up)."""
    return _sequences(rings, 0, rings[0].n + 1, prog)


def _whole(rings: list[Ring], ufunc, pieces: list[Tensor], first: list[Tensor], second: list[Tensor],
           steps_on: int, counters: tuple[Tensor, Tensor], steps: int) -> WholeRing:
    """The values of the rings' ``Repeat`` computed whole (collectives/whole.py): each ring's row
    sequences (as :func:`_sequences`) and each replica's sender."""
    rows, senders = [], []
    for ring in rings:
        replicas = ring.groups.replicas
        rows.append(np.array([[ring.rank_at(ring.position(r) - (steps_on + j) * ring.d)
                               for j in range(ring.n)] for r in range(replicas)], np.int64))
        back = np.zeros(replicas, np.int64)
        for r, to in ring.step_map().items():
            back[to] = r
        senders.append(back)
    return WholeRing(ufunc, pieces, first, second, rows, senders, counters, steps // 2,
                     rings[0].fault is not None)


def _exchange(rings: list[Ring], sends: list[Tensor], recvs: list[Tensor]) -> P.CrossReplicaCopy:
    """One exchange in which every ring sends its buffer to its neighbour (both directions of a
    bidirectional pair at once: one step, priced as such)."""
    transfers = [(s, r, ring.step_map()) for ring, s, r in zip(rings, sends, recvs, strict=True)]
    (src, dst, first), rest = transfers[0], tuple(transfers[1:])
    return P.CrossReplicaCopy(src, dst, first, rings[0].fault, rest)


def reduce_scatter(rings: list[Ring], pieces: list[Tensor], op: CollectiveOperator,
                   prog: P.Sequence, rows: Tensor | None = None) -> list[Tensor]:
    """Per ring, the (w,) fragment ``q`` of its piece (n, w) reduced over the group, on rank
    ``q``; the rings step together. ``rows``: :func:`ring_rows` (looked up here if None)."""
    ring0 = rings[0]
    graph, name, n = ring0.ctx.graph, ring0.ctx.name, ring0.n
    if n == 1:
        return [rows[0] for rows in pieces]
    firsts = [ring.var(rows.dtype, (rows.shape[1],), "first", rows[0])
              for ring, rows in zip(rings, pieces, strict=True)]
    recvs = [ring.var(rows.dtype, (rows.shape[1],), "recv", rows[0])
             for ring, rows in zip(rings, pieces, strict=True)]
    table = _sequences(rings, 1, n, prog) if rows is None else rows[:, 1:]  # the first send's row, then
    tables = [table[i] for i in range(len(rings))]  # each step's
    counters = _counters(ring0, prog)
    ring_step(ring0.ctx, "copy", list(zip(firsts, pieces, tables, strict=True)), *counters, prog)
    fused = _FUSED_OP.get(op) if pieces[0].dtype.name in FUSED_DTYPES else None

    def step(sends: list[Tensor], intos: list[Tensor], turn: int) -> P.Sequence:  # into op= own row
        seq = P.Sequence([_exchange(rings, sends, intos)])
        now, after = counters[turn], counters[1 - turn]
        if fused:  # GCL's one pass, every direction and the index increment in one compute set
            ring_step(ring0.ctx, fused, list(zip(intos, pieces, tables, strict=True)), now, after, seq)
            return seq
        for i, (rows, into) in enumerate(zip(pieces, intos, strict=True)):  # popops' ops
            row = ops.dynamic_slice(graph, tables[i], now, seq, size=1, name=f"{name}/row")
            own = ops.dynamic_slice(graph, rows, row, seq, size=1, name=f"{name}/fragment")
            _OP_INPLACE[op](graph, into, own.reshape(into.shape), seq, name=f"{name}/reduce")
        seq.add(P.Copy(now, after))
        ops.add_(graph, after, 1, seq, name=f"{name}/next")
        return seq

    whole = _whole(rings, FUSED[fused][0], pieces, firsts, recvs, 1, counters, n - 1) if fused else None
    return _alternating(n - 1, step(firsts, recvs, 1), step(recvs, firsts, 0), (recvs, firsts), prog, whole)


def all_gather(rings: list[Ring], owns: list[Tensor], prog: P.Sequence,
               into: list[Tensor] | None = None, scratch: bool = False,
               rows: Tensor | None = None, divisor: int = 1) -> list[Tensor]:
    """Per ring, (n, w) rows in rank order of every group member's (w,) ``own`` (written into
    ``into``'s tensors if given); the rings step together. ``scratch``: the owns are the
    collective's own buffers (an all-reduce's reduce-scatter results), so they send the first
    step and take turns receiving (no copy into a send buffer). ``divisor`` > 1 (MEAN, with
    ``scratch``): the first store divides each own by it in place before it is stored and sent."""
    ring0 = rings[0]
    n = ring0.n
    zs = [into[i] if into else ring.var(own.dtype, (n, own.shape[0]), "gathered")
          for i, (ring, own) in enumerate(zip(rings, owns, strict=True))]
    if n == 1:
        for z, own in zip(zs, owns, strict=True):
            prog.add(P.Copy(own, z[0]))
        return zs
    table = _sequences(rings, 0, n, prog) if rows is None else rows[:, :n]  # the own row, then each step's
    tables = [table[i] for i in range(len(rings))]
    counters = _counters(ring0, prog)
    ring_step(ring0.ctx, None, list(zip(owns, zs, tables, strict=True)), *counters, prog, divisor)
    sends = owns if scratch else [ring.var(own.dtype, own.shape, "send", own)
                                  for ring, own in zip(rings, owns, strict=True)]
    recvs = [ring.var(own.dtype, own.shape, "recv", own) for ring, own in zip(rings, owns, strict=True)]
    for own, send in zip(owns, sends, strict=True):
        if own is not send:
            prog.add(P.Copy(own, send))

    def step(froms: list[Tensor], intos: list[Tensor], turn: int) -> P.Sequence:  # z[row] = arrival
        seq = P.Sequence([_exchange(rings, froms, intos)])
        parts = list(zip(intos, zs, tables, strict=True))
        ring_step(ring0.ctx, None, parts, counters[turn], counters[1 - turn], seq)
        return seq

    whole = _whole(rings, None, zs, sends, recvs, 0, counters, n - 1)
    _alternating(n - 1, step(sends, recvs, 1), step(recvs, sends, 0), (recvs, sends), prog, whole)
    return zs


def _alternating(steps: int, even: P.Sequence, odd: P.Sequence, results: tuple, prog: P.Sequence,
                 whole: WholeRing | None = None):
    """``steps`` ring steps as ``Repeat(steps // 2, [even, odd])`` (plus ``even`` once more for an
    odd count): two buffers take turns sending and receiving, so nothing is copied between steps.
    Returns the buffers the last step received into (``results`` = (even's, odd's)). ``whole``:
    the Repeat's values in fewer passes, for the fast engine (collectives/whole.py)."""
    prog.add(RingRepeat(steps // 2, P.Sequence([even, odd]), whole=whole))
    if steps % 2:
        prog.add(even)
    return results[0] if steps % 2 else results[1]
