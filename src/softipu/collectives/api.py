"""GCL-shaped collectives across replicas: ``op(graph, t, prog, *, op=..., group=..., name=...)``.

Each call appends compute sets (popops elementwise reductions, dynamic slices) and
``CrossReplicaCopy`` steps to ``prog``: a ring per direction, a ``Repeat`` over its steps.
With an injected fault, the destination of a collective (its new output, the
``*_to_destination`` tensor, the in-place tensor) is written only after the last cross-replica
step, so a failed link leaves it as it was; without one (nothing can fail), an all-gather stores
straight into it, as GCL does.

Options (``options={...}``):

* ``"method"`` — a :class:`Method` or its name (default ``AUTO``: poplibs' choice,
  :func:`auto_method`). Clockwise and anticlockwise rings run as such; the bidirectional ring
  pair runs half the columns each way, both rings stepping together (one exchange a step).
  Meet-in-middle runs as poplibs' (:mod:`softipu.collectives.meet`: both rings over the whole
  fragment, half way round) from 3 ranks, its reductions with the fused vertex (float16 falls
  back to the bidirectional pair). Quad-directional runs four rings over quarters, stepping
  together: clockwise and anticlockwise on the ring and on its mirror (each rank swapped with its
  rung partner), as poplibs' and as ``links.collective_cost`` prices it. poplibs' AUTO never
  picks it (ipu-facts-scale §3), nor does :func:`auto_method`.
* An all-reduce of every replica whose group spans several IPU-Link domains of the graph's
  system runs GCL's two-level form (reduce-scatter in each domain, all-reduce across domains
  over GW-Links, all-gather in each domain), as ``links.collective_cost`` prices it.
* ``"injectFault"`` — ``("link", a, b)`` or ``("replica", r)``: the collective's cross-replica
  steps fail when they use that link or replica, raising ``LinkFailure`` (an ``EngineError``)
  at run time; nothing the collective writes for the user is touched.

>>> import numpy as np, softipu as sp
>>> from softipu import program as P, collectives as C
>>> g = sp.Graph(sp.targets.ipu_model(tiles=4), replication_factor=4)
>>> x = g.add_variable(sp.int32, (8,), "x"); sp.ops.map_linearly(g, x); prog = P.Sequence()
>>> y = C.all_reduce(g, x, prog)
>>> eng = sp.Engine(g, [prog]); eng.write_tensor(x, np.arange(32).reshape(4, 8)); eng.run(0)
>>> eng.read_tensor(y)[2].tolist()
[48, 52, 56, 60, 64, 68, 72, 76]
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

import softipu.ops as ops
from softipu.collectives.codelets import FUSED_DTYPES, ring_divide
from softipu.collectives.groups import (
    CollectiveError,
    CollectiveOperator,
    CommGroup,
    CommGroupType,
    Groups,
    Method,
    auto_method,
)
from softipu.collectives.meet import meet_all_gather, meet_reduce_scatter
from softipu.collectives.ring import _FUSED_OP, Ring, map_by_columns, ring_rows
from softipu.collectives.ring import all_gather as ring_all_gather
from softipu.collectives.ring import reduce_scatter as ring_reduce_scatter
from softipu.debug import at, caller_location
from softipu.graph import program as P
from softipu.graph.graph import Graph
from softipu.graph.tensor import Tensor
from softipu.ops.common import OpContext, parse_options, tile_regions
from softipu.ops.mapping import map_linearly
from softipu.target import links
from softipu.target.systems import system_of

__all__ = ["all_reduce", "all_reduce_in_place", "all_reduce_to_destination", "reduce_scatter",
           "reduce_scatter_to_destination", "all_gather", "all_gather_to_destination", "all_to_all",
           "all_to_all_to_destination"]

ADD = CollectiveOperator.ADD
ALL = CommGroup()  # every replica in one group
_OPTIONS = {"method": None, "injectFault": None}


class _Call:
    """One collective call: its context, groups, rings and fault."""

    def __init__(self, kind: str, graph: Graph, t: Tensor, prog: Any, op: CollectiveOperator,
                 group: CommGroup, name: str, options: dict | None) -> None:
        self.ctx = ctx = OpContext.start(graph, prog, kind, name, t)
        opts = parse_options(ctx, options, _OPTIONS)
        where = f"{kind} {ctx.name!r}{at(caller_location())}"
        if not isinstance(group, CommGroup):
            raise CollectiveError(f"{where}: group must be a CommGroup, got {type(group).__name__}")
        self.groups = Groups.of(group, graph.replication_factor, where)
        self.op = _operator(ctx, op, t, where)
        self.fault = _fault(where, opts["injectFault"], graph.replication_factor)
        method = _method(where, opts["method"])
        k = graph.target.num_ipus  # on the graph's system (or the smallest IPU-Fabric holding it):
        system = system_of(graph)
        if method is Method.AUTO:
            method = auto_method(system, kind, t.numel * t.dtype.itemsize, self.groups.n, ipus_per_replica=k)
        self.method = method
        self.order = links.ring_order(self.groups.n, links.ring_pattern(system, k))  # poplibs' ring
        self.where = where
        # Meet-in-middle runs as such (collectives.meet) from 3 ranks, reductions with the fused
        # vertex; else as the bidirectional ring pair.
        reduces = kind in ("all_reduce", "reduce_scatter") and self.op is not CollectiveOperator.LOCAL
        self.meets = method is Method.MEET_IN_MIDDLE_RING and self.groups.n >= 3 and (
            not reduces or (t.dtype.name in FUSED_DTYPES and self.op in _FUSED_OP))
        self._rows: Tensor | None = None  # the rings' row sequences, looked up once a call

    def rows(self, rings: list[Ring]) -> Tensor:
        """Every ring's row sequence from its own row (``ring.ring_rows``), looked up by replica
        once for the call: an all-reduce's reduce-scatter and all-gather read the same table."""
        if self._rows is None:
            self._rows = ring_rows(rings, self.ctx.prog)
        return self._rows

    def pair(self) -> tuple[Ring, Ring]:
        """The clockwise and anticlockwise rings of a meet-in-middle collective."""
        return tuple(Ring(self.ctx, self.groups, cw, self.fault, self.order) for cw in (True, False))

    def error(self, message: str) -> CollectiveError:
        return CollectiveError(f"{self.where}: {message}")

    def rings(self, width: int) -> list[tuple[Ring, int, int]]:
        """(ring, first column, end column) per direction the method uses over ``width`` columns."""
        if self.meets:  # both rings over every column: one part
            return [(self.pair()[0], 0, width)]
        order = self.order
        # quad-directional: the second pair runs on the mirrored ring, each rank swapped with its
        # rung partner (poplibs' "mirrored and non mirrored ring pattern")
        mirror = tuple(r ^ 1 if (r ^ 1) < len(order) else r for r in order)
        directions = {Method.CLOCKWISE_RING: [(True, order)], Method.ANTICLOCKWISE_RING: [(False, order)],
                      Method.QUAD_DIRECTIONAL_RING: [(True, order), (False, order), (True, mirror),
                                                     (False, mirror)]}.get(
                          self.method, [(True, order), (False, order)])
        parts = min(len(directions), max(width, 1))
        cuts = [width * i // parts for i in range(parts + 1)]
        return [(Ring(self.ctx, self.groups, directions[i][0], self.fault, directions[i][1]), cuts[i],
                 cuts[i + 1]) for i in range(parts)]

    def output(self, like: Tensor, shape: tuple[int, ...], suffix: str = "out") -> Tensor:
        out = self.ctx.graph.add_variable(like.dtype, shape, name=f"{self.ctx.name}/{suffix}")
        map_by_columns(self.ctx.graph, out)
        return out

    def finish(self, parts: list[tuple[Tensor, int, int]], dst: Tensor, columns: int,
               divide: bool = True) -> Tensor:
        """The collective's last steps, after every cross-replica step: each part (MEAN, unless
        ``divide`` is False: divided by the group size) copied to its columns of ``dst`` seen as
        ``(..., columns)`` (zero padding dropped), the only writes the user sees."""
        prog = self.ctx.prog
        if divide:
            self.mean(parts)
        lead = parts[0][0].shape[:-1]
        if math.prod(lead) * columns == dst.numel:
            cols = dst.reshape(lead + (columns,))
        else:  # padded: assemble, then drop the padding
            cols = self.output(dst, lead + (columns,), "assembled")
        for part, c0, c1 in parts:
            if part is not cols[..., c0:c1] and not _same_view(part, cols[..., c0:c1]):
                prog.add(P.Copy(part, cols[..., c0:c1]))
        if cols.numel != dst.numel:
            prog.add(P.Copy(cols.flatten()[: dst.numel].reshape(dst.shape), dst))
        return dst


    def mean(self, parts: list[tuple[Tensor, int, int]]) -> None:
        """MEAN: each part divided by the group size, in place, one compute set (nothing
        otherwise)."""
        if self.op is CollectiveOperator.MEAN and self.groups.n > 1:
            ring_divide(self.ctx, [part for part, _, _ in parts], self.groups.n, self.ctx.prog)


def _like(graph: Graph, t: Tensor, copies: int | None, name: str) -> Tensor:
    """A new output of ``t``'s shape (``copies`` of it along a new leading axis unless None), each
    copy mapped as ``t`` is: GCL clones its outputs from the input, so a well-spread input (every
    tile holding part of every fragment) gives a well-spread output."""
    out = graph.add_variable(t.dtype, t.shape if copies is None else (copies, *t.shape), name=name)
    copies = copies or 1
    starts, lengths, tiles = tile_regions(graph, t)
    if tiles.size == 0 or tiles.min() < 0:  # the input is not mapped (yet): spread the output
        map_linearly(graph, out)
        return out
    shift = np.repeat(np.arange(copies, dtype=np.int64) * t.numel, starts.size)
    begins = np.tile(starts, copies) + shift
    graph.map_intervals(out, begins, begins + np.tile(lengths, copies), np.tile(tiles, copies))
    return out


def _same_view(a: Tensor, b: Tensor) -> bool:
    """Whether ``a`` and ``b`` are the same elements in the same order (a copy would be a no-op)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.index is None and b.index is None:
        return a.offset == b.offset and a.strides == b.strides
    return bool(np.array_equal(a.addresses(), b.addresses()))


def _operator(ctx: OpContext, op: Any, t: Tensor, where: str) -> CollectiveOperator:
    if not isinstance(op, CollectiveOperator):
        raise CollectiveError(f"{where}: op must be a CollectiveOperator, got {op!r}")
    logical = op in (CollectiveOperator.LOGICAL_AND, CollectiveOperator.LOGICAL_OR)
    if logical != (t.dtype.numpy.kind == "b") and op is not CollectiveOperator.LOCAL:
        raise CollectiveError(f"{where}: {op.name} does not apply to {t.name} of {t.dtype}; "
                              "LOGICAL_AND/OR take bool tensors, the other operators numbers")
    if op is CollectiveOperator.MEAN and not t.dtype.is_float:
        raise CollectiveError(f"{where}: MEAN needs a float tensor, {t.name} is {t.dtype}; "
                              "use ADD and divide")
    return op


def _method(where: str, method: Any) -> Method:
    if method is None:
        return Method.AUTO
    if isinstance(method, Method):
        return method
    try:
        return Method[str(method).upper()]
    except KeyError:
        names = [m.name for m in Method]
        raise CollectiveError(f"{where}: unknown method {method!r}; methods are {names}") from None


def _fault(where: str, fault: Any, replicas: int) -> tuple[int, ...] | None:
    if fault is None:
        return None
    ok = isinstance(fault, (tuple, list)) and (
        (len(fault) == 3 and fault[0] == "link") or (len(fault) == 2 and fault[0] == "replica"))
    if not ok or not all(isinstance(r, int) and 0 <= r < replicas for r in fault[1:]):
        raise CollectiveError(f"{where}: injectFault must be ('link', a, b) or ('replica', r) with "
                              "replicas in "
                        f"0..{replicas - 1}, got {fault!r}")
    return tuple(fault[1:])


def _column_aligned(graph: Graph, rows: Tensor) -> bool:
    """Whether every row of ``rows`` (n, m) has its columns on the same tiles as row 0's: the
    layout a ring wants (a step's fragment and the replica's own row on the same tiles)."""
    first = tile_regions(graph, rows[0])
    if first[2].size == 0 or first[2].min() < 0:
        return False
    return all(all(np.array_equal(a, b) for a, b in zip(first, tile_regions(graph, rows[k]), strict=True))
               for k in range(1, rows.shape[0]))


def _fragments(call: _Call, t: Tensor) -> tuple[Tensor, int]:
    """``t`` as (n, m) rows, zero-padded to a multiple of the group size: a view where ``t`` is
    laid out as the ring wants (:func:`_column_aligned`), else a padded or rearranged copy mapped
    by columns (GCL's ``rearrangePre``: one copy, not an exchange in every step)."""
    n, numel = call.groups.n, t.numel
    m = max(1, math.ceil(numel / n))
    if numel == n * m and (n == 1 or _column_aligned(call.ctx.graph, t.reshape(n, m))):
        return t.reshape(n, m), m
    padded = call.output(t, (n, m), "padded" if numel != n * m else "rearranged").reshape(n * m)
    if numel != n * m:
        ops.zero(call.ctx.graph, padded, call.ctx.prog, name=f"{call.ctx.name}/pad")
    call.ctx.prog.add(P.Copy(t.flatten(), padded[:numel]))
    return padded.reshape(n, m), m


def _reduce_scatter(call: _Call, t: Tensor) -> tuple[list[tuple[Tensor, int, int]], int]:
    """Per ring, (the (w,) reduced columns of fragment ``q`` on rank ``q``, columns); fragment size."""
    rows, m = _fragments(call, t)
    graph, prog, name = call.ctx.graph, call.ctx.prog, call.ctx.name
    if call.op is CollectiveOperator.SQUARE_ADD:
        rows = ops.square(graph, rows, prog, name=f"{name}/square")
    rings = call.rings(m)
    pieces = [rows[:, c0:c1] for _, c0, c1 in rings]
    if call.op is CollectiveOperator.LOCAL:
        owns = [ops.dynamic_slice(graph, piece, ring.rows_at(0, "rank", prog), prog, size=1,
                                  name=f"{name}/local").reshape(piece.shape[1])
                for (ring, _, _), piece in zip(rings, pieces, strict=True)]
    elif call.meets:
        owns = [meet_reduce_scatter(call.pair(), rows, _FUSED_OP[call.op], prog)]
    else:
        just = [ring for ring, _, _ in rings]
        owns = ring_reduce_scatter(just, pieces, call.op, prog, call.rows(just))
    return [(own, c0, c1) for own, (_, c0, c1) in zip(owns, rings, strict=True)], m


def _all_gather(call: _Call, parts: list[tuple[Tensor, int, int]], dst: Tensor,
                scratch: bool = False, divisor: int = 1) -> Tensor:
    """Every rank's (w,) parts gathered into ``dst`` (viewed as (n, columns)), the last writes.

    Without an injected fault, no cross-replica step can fail, so the rings store straight into
    ``dst`` (as GCL does) where it is laid out by columns; otherwise (a fault, another layout)
    they gather into their own buffer and ``dst`` is written after the last step
    (``_Call.finish``), so a failure leaves it as it was. ``divisor`` (an all-reduce's MEAN, with
    ``scratch``): the first store divides the parts by it (one compute set fewer than a
    division of its own; ``links.collective_cost`` prices it so)."""
    columns = sum(c1 - c0 for _, c0, c1 in parts)
    rings = [ring for ring, _, _ in call.rings(columns)]
    n = call.groups.n
    direct = call.fault is None and n * columns == dst.numel and (
        n == 1 or _column_aligned(call.ctx.graph, dst.reshape(n, columns)))
    # Else gather into a buffer laid out as the ring wants, copied to ``dst`` at the end (GCL's
    # ``rearrangePost``); with a fault, that also keeps ``dst`` as it was.
    gathered = dst.reshape(n, columns) if direct else call.output(dst, (n, columns), "gathered")
    into = [gathered[:, c0:c1] for _, c0, c1 in parts]
    if call.meets:
        zs = [meet_all_gather(call.pair(), parts[0][0], into[0], call.ctx.prog, scratch, divisor)]
    else:
        zs = ring_all_gather(rings, [part for part, _, _ in parts], call.ctx.prog, into, scratch,
                             call.rows(rings), divisor)
    return call.finish([(z, c0, c1) for z, (_, c0, c1) in zip(zs, parts, strict=True)], dst, columns,
                       divide=False)


def _check_destination(call: _Call, dst: Tensor, shape: tuple[int, ...], like: Tensor) -> None:
    if not isinstance(dst, Tensor) or dst.graph is not call.ctx.graph:
        raise call.error("the destination must be a tensor of this graph")
    if dst.shape != shape or dst.dtype != like.dtype:
        raise call.error(f"destination {dst.name} is {dst.dtype} {dst.shape}; this collective gives "
                             f"{like.dtype} {shape} (the same on every replica)")


# -- all-reduce ----------------------------------------------------------------------------------
def all_reduce_to_destination(graph: Graph, t: Tensor, dst: Tensor, prog: Any, *,
                              op: CollectiveOperator = ADD,
                              group: CommGroup = ALL, name: str = "",
                              options: dict | None = None) -> Tensor:
    """GCL ``allReduceToDestinationCrossReplica``: ``dst`` = ``op`` over each group of ``t``."""
    call = _Call("all_reduce", graph, t, prog, op, group, name, options)
    _check_destination(call, dst, t.shape, t)
    if call.op is CollectiveOperator.LOCAL:
        if t is not dst:
            prog.add(P.Copy(t, dst))
        return dst
    domain = _domain_size(call, group)
    if domain:
        return _two_level_all_reduce(call, t, dst, domain, options)
    parts, m = _reduce_scatter(call, t)  # its results are the collective's own buffers
    # MEAN divides each reduced fragment in the all-gather's first store, before it is sent (1/n
    # of the elements; the same division of the same values as after, so the same bits)
    n = call.groups.n
    divisor = n if call.op is CollectiveOperator.MEAN and n > 1 else 1
    return _all_gather(call, parts, dst, scratch=n > 1, divisor=divisor)


def _domain_size(call: _Call, group: CommGroup) -> int:
    """Replicas a GW-Link domain holds, where the call's group (every replica) spans several
    domains of the graph's system and so runs the two-level form (as ``links.collective_cost``
    prices it); else 0."""
    system, k = system_of(call.ctx.graph), call.ctx.graph.target.num_ipus
    per_ild = max(1, system.ipus_per_ild // k)
    n = call.groups.n
    spans = group.type is not CommGroupType.ORTHOGONAL and n == call.groups.replicas
    return per_ild if spans and n > per_ild and n % per_ild == 0 else 0


_CROSS_OP = {CollectiveOperator.MEAN: ADD, CollectiveOperator.SQUARE_ADD: ADD}


def _two_level_all_reduce(call: _Call, t: Tensor, dst: Tensor, per_ild: int, options: dict | None) -> Tensor:
    """GCL's hierarchical all-reduce across GW-Links: a reduce-scatter inside each IPU-Link domain
    (its rings over IPU-Links, AUTO choosing as for one domain), an all-reduce of each fragment
    across the domains (a clockwise ring of the same in-domain rank, one per domain, over the
    GW-Links: ORTHOGONAL groups of the domain count), then the all-gather inside each domain
    (MEAN divides there, by the whole group's size). Each ring part of the fragment crosses the
    domains in place; nothing the user sees is written before the last step."""
    graph, prog, name = call.ctx.graph, call.ctx.prog, call.ctx.name
    opts = dict(options or {})
    inner = _Call("all_reduce", graph, t, prog, call.op, CommGroup(CommGroupType.CONSECUTIVE, per_ild),
                  f"{name}/domain", opts)
    parts, _ = _reduce_scatter(inner, t)
    across = CommGroup(CommGroupType.ORTHOGONAL, call.groups.n // per_ild)
    cross_opts = opts | {"method": Method.CLOCKWISE_RING}
    for i, (part, _, _) in enumerate(parts):
        all_reduce_in_place(graph, part, prog, op=_CROSS_OP.get(call.op, call.op), group=across,
                            name=f"{name}/gw{i}", options=cross_opts)
    divisor = call.groups.n if call.op is CollectiveOperator.MEAN else 1
    return _all_gather(inner, parts, dst, scratch=True, divisor=divisor)


def all_reduce(graph: Graph, t: Tensor, prog: Any, *, op: CollectiveOperator = ADD,
               group: CommGroup = ALL, name: str = "", options: dict | None = None) -> Tensor:
    """GCL ``allReduceCrossReplica``: a new tensor, ``op`` over each replica group of ``t``."""
    out = _like(graph, t, None, f"{name or 'all_reduce'}/out")
    return all_reduce_to_destination(graph, t, out, prog, op=op, group=group, name=name, options=options)


def all_reduce_in_place(graph: Graph, t: Tensor, prog: Any, *, op: CollectiveOperator = ADD,
                        group: CommGroup = ALL, name: str = "", options: dict | None = None) -> Tensor:
    """GCL ``allReduceInPlaceCrossReplica``: ``t`` replaced by the reduction (written last)."""
    return all_reduce_to_destination(graph, t, t, prog, op=op, group=group, name=name, options=options)


# -- reduce-scatter ------------------------------------------------------------------------------
def reduce_scatter_to_destination(graph: Graph, t: Tensor, dst: Tensor, prog: Any, *,
                                  op: CollectiveOperator = ADD, group: CommGroup = ALL,
                                  name: str = "", options: dict | None = None) -> Tensor:
    """GCL ``reduceScatterToDestinationCrossReplica``: ``dst`` (ceil(numel / n),) on the replica of
    rank ``q`` is fragment ``q`` of ``t`` flattened (zero-padded), reduced over the group."""
    call = _Call("reduce_scatter", graph, t, prog, op, group, name, options)
    _check_destination(call, dst, (max(1, math.ceil(t.numel / call.groups.n)),), t)
    parts, m = _reduce_scatter(call, t)
    return call.finish(parts, dst, m)


def reduce_scatter(graph: Graph, t: Tensor, prog: Any, *, op: CollectiveOperator = ADD,
                   group: CommGroup = ALL, name: str = "", options: dict | None = None) -> Tensor:
    """GCL ``reduceScatterCrossReplica``: a new (ceil(numel / n),) tensor per replica."""
    call = _Call("reduce_scatter", graph, t, prog, op, group, name, options)
    parts, m = _reduce_scatter(call, t)
    return call.finish(parts, call.output(t, (m,)), m)


# -- all-gather ----------------------------------------------------------------------------------
def all_gather_to_destination(graph: Graph, t: Tensor, dst: Tensor, prog: Any, *,
                              group: CommGroup = ALL, name: str = "",
                              options: dict | None = None) -> Tensor:
    """GCL ``allGatherToDestinationCrossReplica``: ``dst`` (n, *t.shape) holds every group
    member's ``t`` in rank order."""
    call = _Call("all_gather", graph, t, prog, ADD if t.dtype.numpy.kind != "b" else
                 CollectiveOperator.LOGICAL_OR, group, name, options)
    _check_destination(call, dst, (call.groups.n, *t.shape), t)
    own = t.flatten()
    return _all_gather(call, [(own[c0:c1], c0, c1) for _, c0, c1 in call.rings(t.numel)], dst)


def all_gather(graph: Graph, t: Tensor, prog: Any, *, group: CommGroup = ALL, name: str = "",
               options: dict | None = None) -> Tensor:
    """GCL ``allGatherCrossReplica``: a new (n, *t.shape) tensor of every group member's ``t``."""
    where = f"all_gather {name or 'all_gather'!r}{at(caller_location())}"
    n = Groups.of(group, graph.replication_factor, where).n if isinstance(group, CommGroup) else 1
    out = _like(graph, t, n, f"{name or 'all_gather'}/out")
    return all_gather_to_destination(graph, t, out, prog, group=group, name=name, options=options)


# -- all-to-all ----------------------------------------------------------------------------------
def all_to_all_to_destination(graph: Graph, t: Tensor, dst: Tensor, prog: Any, *,
                              group: CommGroup = ALL, name: str = "",
                              options: dict | None = None) -> Tensor:
    """GCL ``allToAllCrossReplica``: ``t`` (n, ...) per replica; replica ``q``'s ``dst[r]`` is
    replica ``r``'s ``t[q]`` (``[A,B], [C,D] -> [A,C], [B,D]``). ONE cross-replica exchange:
    for each pair of ranks ``(r, q)`` a transfer of row ``q`` of the rank-``r`` replica of each
    group to row ``r`` of its rank-``q`` replica, all side by side (every pair's flow at once over
    the links, one sync, as ``links.collective_cost`` prices it; no rotation, no dynamic slices),
    so the program's structure does not grow with the group. An injected fault fails the
    exchange before anything lands: ``dst`` keeps its values."""
    call = _Call("all_to_all", graph, t, prog, ADD if t.dtype.numpy.kind != "b" else
                 CollectiveOperator.LOGICAL_OR, group, name, options)
    groups, n = call.groups, call.groups.n
    if t.ndim == 0 or t.shape[0] != n:
        raise call.error(f"{t.name} {t.shape} needs a leading dim of the group size {n}")
    _check_destination(call, dst, t.shape, t)
    rows = t.reshape(n, t.numel // n)
    # Into ``dst`` directly unless it shares elements with ``t`` (in place): then into a buffer
    # laid out as ``t``, copied to ``dst`` after the exchange.
    into = _like(graph, t, None, f"{call.ctx.name}/received") if _shares(t, dst) else dst
    out = into.reshape(n, t.numel // n)
    of_rank = [[m for m in range(groups.replicas) if groups.rank(m) == r] for r in range(n)]
    transfers = [(rows[q], out[r], {m: groups.member(m, q) for m in of_rank[r]})
                 for r in range(n) for q in range(n)]
    (src, to, first), rest = transfers[0], tuple(transfers[1:])
    prog.add(P.CrossReplicaCopy(src, to, first, call.fault, rest))
    if into is not dst:
        prog.add(P.Copy(into, dst))
    return dst


def _shares(a: Tensor, b: Tensor) -> bool:
    """Whether ``a`` and ``b`` may hold the same elements: same dtype and overlapping address
    extents (strided views), or a common address (gathered views)."""
    if a.dtype != b.dtype:
        return False
    if a.index is None and b.index is None:
        def extent(t: Tensor) -> tuple[int, int]:
            span = [st * (n - 1) for st, n in zip(t.strides, t.shape, strict=True)]
            return t.offset + sum(x for x in span if x < 0), t.offset + sum(x for x in span if x > 0)
        (a0, a1), (b0, b1) = extent(a), extent(b)
        return a0 <= b1 and b0 <= a1
    return bool(np.intersect1d(a.addresses().reshape(-1), b.addresses().reshape(-1)).size)


def all_to_all(graph: Graph, t: Tensor, prog: Any, *, group: CommGroup = ALL, name: str = "",
               options: dict | None = None) -> Tensor:
    """GCL ``allToAllCrossReplica``: a new tensor; see :func:`all_to_all_to_destination`."""
    out = _like(graph, t, None, f"{name or 'all_to_all'}/out")
    return all_to_all_to_destination(graph, t, out, prog, group=group, name=name, options=options)
