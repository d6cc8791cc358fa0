"""Ring algorithms as compute sets and cross-replica copies, their structure independent of the
group size (a ``Repeat`` over ring steps, as GCL builds them).

Each replica first rotates its ``n`` fragments by its ring offset ``o`` (one dynamic slice with a
per-replica offset read from a replication index constant), so that every ring step is the same
on every replica: with ``y[j] = x[(o + j) % n]`` and offsets rising by one along the ring,

* reduce-scatter: ``send = y[n-1]``; then ``n - 1`` times: ``send`` goes to the next replica's
  ``recv``; ``send = y[c] op recv`` with ``c = n-2, n-3, ... 0`` (a replica-independent
  counter); the replica ends holding fragment ``o`` reduced over its group. For replica ``q``,
  fragment ``q``'s sum is accumulated in ring order from ``q + 1``:
  ``((x[q+1] + x[q+2]) + ...) + x[q]`` (ranks mod n, anticlockwise mirrored);
* all-gather: ``z[0] = own``; then ``n - 1`` times: ``send`` goes to the next replica, which
  stores it at ``z[c]``, ``c = n-1, ... 1``, and forwards it; ``z`` rotated back by ``n - o``
  is the gathered tensor.

An anticlockwise ring sends to rank ``q - 1`` and numbers fragments from the end (rows
reversed), so that replica ``q`` still ends with fragment ``q``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import softipu.ops as ops
from softipu.collectives.groups import CollectiveOperator, Groups
from softipu.dtypes import int32
from softipu.graph import program as P
from softipu.graph.tensor import Tensor
from softipu.ops.common import OpContext
from softipu.ops.mapping import map_linearly

__all__ = ["Ring"]

_OP_INPLACE = {
    CollectiveOperator.ADD: ops.add_, CollectiveOperator.MEAN: ops.add_,
    CollectiveOperator.SQUARE_ADD: ops.add_, CollectiveOperator.MUL: ops.mul_,
    CollectiveOperator.MIN: ops.minimum_, CollectiveOperator.MAX: ops.maximum_,
    CollectiveOperator.LOGICAL_AND: ops.minimum_, CollectiveOperator.LOGICAL_OR: ops.maximum_,  # on bools
}


@dataclass(frozen=True, slots=True)
class Ring:
    """One ring direction over the replica groups of a collective call."""

    ctx: OpContext
    groups: Groups
    clockwise: bool
    fault: tuple[int, ...] | None

    @property
    def n(self) -> int:
        return self.groups.n

    def offset(self, replica: int) -> int:
        rank = self.groups.rank(replica)
        return rank if self.clockwise else self.n - 1 - rank

    def step_map(self) -> dict[int, int]:
        return self.groups.shifted(1 if self.clockwise else -1)

    def var(self, dtype, shape: tuple[int, ...], suffix: str) -> Tensor:
        t = self.ctx.graph.add_variable(dtype, shape, name=f"{self.ctx.name}/{suffix}")
        map_linearly(self.ctx.graph, t)
        return t

    def per_replica(self, values: list[int], suffix: str, prog: P.Sequence) -> Tensor:
        """A (1,) int32 holding ``values[replica]`` on each replica: a table indexed by the
        replication index constant (Poplar's ``addReplicationIndexConstant``)."""
        graph = self.ctx.graph
        table = graph.add_constant(int32, (len(values),), np.array(values, np.int32),
                                   name=f"{self.ctx.name}/{suffix}_table")
        index = graph.add_replication_index_constant(name=f"{self.ctx.name}/replica")
        graph.set_tile_mapping(table, 0)
        graph.set_tile_mapping(index, 0)
        return ops.dynamic_slice(graph, table, index, prog, size=1, name=f"{self.ctx.name}/{suffix}")

    def rotated(self, rows: Tensor, prog: P.Sequence) -> Tensor:
        """``rows`` (n, w) as ``y[j] = rows[(o + j) % n]`` (rows reversed first, anticlockwise)."""
        work = self.var(rows.dtype, rows.shape, "rows")
        prog.add(P.Copy(rows if self.clockwise else rows.reverse(0), work))
        if self.n == 1:
            return work
        offsets = self.per_replica([self.offset(r) for r in range(self.groups.replicas)], "offset", prog)
        return ops.dynamic_slice(self.ctx.graph, work, offsets, prog, size=self.n,
                                 name=f"{self.ctx.name}/rotate")

    def unrotated(self, z: Tensor, prog: P.Sequence) -> Tensor:
        """The gathered rows in rank order from the rotated ``z``."""
        if self.n > 1:
            back = [(self.n - self.offset(r)) % self.n for r in range(self.groups.replicas)]
            z = ops.dynamic_slice(self.ctx.graph, z, self.per_replica(back, "unrotate", prog), prog,
                                  size=self.n, name=f"{self.ctx.name}/unrotate")
        return z if self.clockwise else z.reverse(0)

    def _counter(self, start: int, prog: P.Sequence) -> Tensor:
        graph = self.ctx.graph
        counter = self.var(int32, (1,), "step")
        first = graph.add_constant(int32, (1,), start, name=f"{self.ctx.name}/first_step")
        graph.set_tile_mapping(first, 0)
        prog.add(P.Copy(first, counter))
        return counter

    def _send(self, send: Tensor, recv: Tensor) -> P.CrossReplicaCopy:
        return P.CrossReplicaCopy(send, recv, self.step_map(), self.fault)

    def reduce_scatter(self, y: Tensor, op: CollectiveOperator, prog: P.Sequence) -> Tensor:
        """The (w,) fragment ``o`` of rotated ``y`` (n, w) reduced over the group."""
        n, w = y.shape
        send = self.var(y.dtype, (w,), "send")
        prog.add(P.Copy(y[n - 1], send))
        if n == 1:
            return send
        recv = self.var(y.dtype, (w,), "recv")
        counter = self._counter(n - 2, prog)
        body = P.Sequence()
        body.add(self._send(send, recv))
        own = ops.dynamic_slice(self.ctx.graph, y, counter, body, size=1, name=f"{self.ctx.name}/fragment")
        _OP_INPLACE[op](self.ctx.graph, own.reshape(w), recv, body, name=f"{self.ctx.name}/reduce")
        body.add(P.Copy(own.reshape(w), send))
        ops.sub_(self.ctx.graph, counter, 1, body, name=f"{self.ctx.name}/next")
        prog.add(P.Repeat(n - 1, body))
        return send

    def all_gather(self, own: Tensor, prog: P.Sequence) -> Tensor:
        """Rotated ``z`` (n, w): ``z[j]`` is the fragment of the replica ``j`` places on."""
        (w,) = own.shape
        n = self.n
        z = self.var(own.dtype, (n, w), "gathered")
        prog.add(P.Copy(own, z[0]))
        if n == 1:
            return z
        send = self.var(own.dtype, (w,), "send")
        recv = self.var(own.dtype, (w,), "recv")
        prog.add(P.Copy(own, send))
        counter = self._counter(n - 1, prog)
        body = P.Sequence()
        body.add(self._send(send, recv))
        ops.dynamic_update(self.ctx.graph, z, recv.reshape(1, w), counter, body,
                           name=f"{self.ctx.name}/store")
        body.add(P.Copy(recv, send))
        ops.sub_(self.ctx.graph, counter, 1, body, name=f"{self.ctx.name}/next")
        prog.add(P.Repeat(n - 1, body))
        return z
