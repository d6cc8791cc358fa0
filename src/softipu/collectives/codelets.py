"""A ring step's compute as ONE compute set: the reduction (or the all-gather's store) of every
direction with the loop's index increment beside it.

The row a replica works on at a step is read inside the vertex from its row sequence (a table
made before the loop) at the step counter; two counters take turns (``RingNext`` writes the one
the next step reads), so the loop body is a cross-replica copy and one compute set.

GCL reduces what arrives with the replica's own fragment, picked at run time, in one pass; the
same done with popops would be a dynamic slice (a copy of the fragment) and then the binary op.
A multi-vertex (the tile's workers share its piece); its cycle estimate is
``links.ring_vertex_cycles`` (a worker's row set-up, then one pass a vector at a time), the same
formula ``links.collective_cost`` prices a ring step's compute set with: one source of truth.
Values are the binary op's: numpy's ufunc on the same dtype, as popops' codelets compute it.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from softipu.codelets.elementwise.ops import BinaryOp
from softipu.codelets.indexing import _dynamic_start
from softipu.dtypes import DType
from softipu.graph import program as P
from softipu.graph.graph import Graph
from softipu.graph.tensor import Tensor
from softipu.graph.vertex import FieldShape, InOut, Input, MultiVertex, Output, Vertex
from softipu.ops.common import OpContext, rows_of, tile_regions
from softipu.target.links import RING_NEXT_INSTRUCTIONS, ring_vertex_cycles

__all__ = ["FUSED", "ring_reduce_codelet", "ring_store_codelet", "ring_next_codelet", "ring_step",
           "ring_divide_codelet", "ring_divide"]

# Operators (by popops BinaryOp) and dtypes the fused vertex takes: numpy's ufunc gives popops'
# values exactly there (float16 arithmetic is left to popops' own codelets).
FUSED = {"add": (np.add, BinaryOp.ADD), "mul": (np.multiply, BinaryOp.MULTIPLY),
         "min": (np.minimum, BinaryOp.MINIMUM), "max": (np.maximum, BinaryOp.MAXIMUM)}
FUSED_DTYPES = ("float32", "int32", "uint32", "bool")


def _copy(acc, row, out) -> None:  # "copy": acc = row (the first send's fragment), any dtype
    out[...] = row


def _offsets(step: np.ndarray, table: np.ndarray, size: int) -> np.ndarray:
    """Each vertex's row: ``table[step]`` (a step past the table reads its last entry), then
    popops' offset rule (out of range starts at 0)."""
    last = table.shape[-1] - 1
    first = int(step.flat[0]) if step.size else 0
    if np.all(step[..., 0] == first):  # the counter is the same on every replica: a column
        return _dynamic_start(table[..., min(max(first, 0), last), None], size)
    at = np.clip(step[..., :1].astype(np.int64), 0, last)
    return _dynamic_start(np.take_along_axis(table, at, axis=-1), size)


@cache
def ring_reduce_codelet(dtype: DType, offset_dtype: DType, op: str) -> type[Vertex]:
    """``RingReduce<op, dtype>``: ``acc = acc op rows[table[step]]``: the row this replica works
    on at this step read from its row sequence (``table``, made before the loop) at the step
    counter, so no index compute set runs in the loop."""
    ufunc, binary = FUSED[op] if op != "copy" else (_copy, None)

    class RingReduce(MultiVertex):
        step = Input(offset_dtype, FieldShape.SCALAR)
        table = Input(offset_dtype)
        rows = Input(dtype, FieldShape.VECTOR_LIST)
        acc = InOut(dtype)

        @staticmethod
        def compute(step, table, rows, acc):
            start = _offsets(step, table, len(rows))
            first = int(start.flat[0]) if start.size else 0
            if np.all(start == first):
                ufunc(acc, rows[first], out=acc)
            elif start.ndim == 2 and np.all(start == start[:, :1]):  # one offset per replica
                for r, at_r in enumerate(start[:, 0].tolist()):
                    ufunc(acc[r], rows[at_r][r], out=acc[r])
            else:
                own = np.take_along_axis(np.stack(rows, axis=-2), start[..., None, None], axis=-2)
                ufunc(acc, own[..., 0, :], out=acc)

        @staticmethod
        def cycles(step, table, rows, acc, target):  # the workers share the piece: links' model
            return ring_vertex_cycles(target, acc, dtype.itemsize, binary is not None)

    RingReduce.__name__ = RingReduce.__qualname__ = f"RingReduce<{op},{dtype.name}>"
    return RingReduce


@cache
def ring_store_codelet(dtype: DType, offset_dtype: DType, divisor: int = 1) -> type[Vertex]:
    """``RingStore<dtype>``: ``rows[tables[i][step]] = updates[i]`` for each direction ``i`` (GCL's
    ``allgatherCopy`` into the fragment picked by the step's index); the directions of a
    meet-in-middle ring store into the same rows, so one vertex does both (distinct rows).
    ``divisor`` > 1 (MEAN, the all-gather's first store): each update is first divided by it in
    place (``updates[i] /= divisor``, the dtype's division, as popops' ``div_``), then stored."""
    scale = dtype.numpy.type(divisor)

    class RingStore(MultiVertex):
        step = Input(offset_dtype, FieldShape.SCALAR)
        tables = Input(offset_dtype, FieldShape.VECTOR_LIST)
        updates = (InOut if divisor > 1 else Input)(dtype, FieldShape.VECTOR_LIST)
        rows = InOut(dtype, FieldShape.VECTOR_LIST)

        @staticmethod
        def compute(step, tables, updates, rows):
            if divisor > 1:
                for update in updates:
                    np.divide(update, scale, out=update)
            for table, update in zip(tables, updates, strict=True):
                start = _offsets(step, table, len(rows))
                first = int(start.flat[0]) if start.size else 0
                if np.all(start == first):
                    rows[first][...] = update
                    continue
                if start.ndim == 2 and np.all(start == start[:, :1]):  # one row per replica
                    for r, at_r in enumerate(start[:, 0].tolist()):
                        rows[at_r][r] = update[r]
                    continue
                for k in np.unique(start).tolist():
                    hit = start == k
                    rows[k][hit] = update[hit]

        @staticmethod
        def cycles(step, tables, updates, rows, target):
            return sum(ring_vertex_cycles(target, u, dtype.itemsize, divisor > 1, divisor > 1)
                       for u in updates)

    mean = f",/{divisor}" if divisor > 1 else ""
    RingStore.__name__ = RingStore.__qualname__ = f"RingStore<{dtype.name}{mean}>"
    return RingStore


@cache
def ring_divide_codelet(dtype: DType, divisor: int) -> type[Vertex]:
    """``RingDivide<dtype,/n>``: ``acc /= n`` (MEAN after a reduce-scatter), one pass; its estimate
    is ``links.ring_vertex_cycles`` with the divide loop, as ``links.collective_cost`` prices it."""
    scale = dtype.numpy.type(divisor)

    class RingDivide(MultiVertex):
        acc = InOut(dtype)

        @staticmethod
        def compute(acc):
            np.divide(acc, scale, out=acc)

        @staticmethod
        def cycles(acc, target):
            return ring_vertex_cycles(target, acc, dtype.itemsize, True, True)

    RingDivide.__name__ = RingDivide.__qualname__ = f"RingDivide<{dtype.name},/{divisor}>"
    return RingDivide


def ring_divide(ctx: OpContext, parts: list[Tensor], divisor: int, prog: P.Sequence) -> None:
    """Every tensor of ``parts`` divided by ``divisor`` in place, ONE compute set (MEAN)."""
    graph: Graph = ctx.graph
    cs = graph.add_compute_set(f"{ctx.name}/mean", op=ctx.op)
    for t in parts:
        _add_pieces(graph, cs, ring_divide_codelet(t.dtype, divisor), t,
                    lambda s, width, t=t: {"acc": rows_of(t, s, width)})
    prog.add(P.Execute(cs))


@cache
def ring_next_codelet(dtype: DType) -> type[Vertex]:
    """``RingNext``: ``next = step + 1``, the loop's index increment (GCL's ``incrementIndex``),
    run in the step's compute set: it writes the other of two counters that take turns. Its
    estimate is whole-tile cycles: a lone worker issues one instruction every ``workers_per_tile``
    tile cycles (the barrel), ``RING_NEXT_INSTRUCTIONS`` of them."""

    class RingNext(MultiVertex):
        step = Input(dtype, FieldShape.SCALAR)
        next = Output(dtype, FieldShape.SCALAR)

        @staticmethod
        def compute(step, next):  # noqa: A002 - the field's name
            next[...] = step + 1

        @staticmethod
        def cycles(step, next, target):  # noqa: A002
            return RING_NEXT_INSTRUCTIONS * target.workers_per_tile

    RingNext.__name__ = RingNext.__qualname__ = f"RingNext<{dtype.name}>"
    return RingNext


def _add_pieces(graph: Graph, cs, codelet, t: Tensor, fields) -> None:
    """Vertices of ``codelet`` over ``t``'s tile pieces (``fields(starts, width)`` gives the rest)."""
    starts, lengths, tiles = tile_regions(graph, t)
    for width in np.unique(lengths).tolist():
        pick = lengths == width
        graph.add_vertices(cs, codelet, fields(starts[pick], width), tiles[pick])


def ring_step(ctx: OpContext, op: str | None, parts: list[tuple[Tensor, Tensor, Tensor]],
              step: Tensor, next_step: Tensor, prog: P.Sequence, divisor: int = 1) -> None:
    """One ring step's compute, ONE compute set (one sync) for every direction, as GCL's loop body
    runs one reduction for both directions (CollectivesProgram.hpp: ``ReduceProg`` concatenated):

    * ``op`` given (reduce-scatter): each ``(acc, rows, table)``: ``acc op= rows[table[step]]``
      (``op`` "copy": ``acc = rows[table[step]]``, the first send);
    * ``op`` None (all-gather): each ``(update, rows, table)``: ``rows[table[step]] = update``;

    and ``next_step = step + 1`` (the counters take turns: even steps read one, odd the other).
    ``divisor`` > 1 (all-gather only): each update is divided by it before it is stored (MEAN).
    ``table`` is this replica's (L,) row sequence; ``rows`` (n, w); ``acc`` / ``update`` (w,).
    """
    graph: Graph = ctx.graph
    cs = graph.add_compute_set(f"{ctx.name}/{'reduce' if op else 'store'}", op=ctx.op)

    def bcast(table, s):
        return table.reshape(1, table.numel).broadcast((s.size, table.numel))

    if op:
        for t, rows, table in parts:
            def fields(s, width, t=t, rows=rows, table=table):
                return {"step": step.reshape(1, 1).broadcast((s.size, 1)), "table": bcast(table, s),
                        "rows": [rows_of(rows[k], s, width) for k in range(rows.shape[0])],
                        "acc": rows_of(t, s, width)}
            _add_pieces(graph, cs, ring_reduce_codelet(t.dtype, step.dtype, op), t, fields)
    else:  # parts storing into the same rows (meet-in-middle's two directions): one vertex
        groups: list[list] = []
        for part in parts:
            same = [g for g in groups if g[0][1] is part[1]]
            if same:
                same[0].append(part)
            else:
                groups.append([part])
        for group in groups:
            rows = group[0][1]

            def fields(s, width, group=group, rows=rows):
                return {"step": step.reshape(1, 1).broadcast((s.size, 1)),
                        "tables": [bcast(table, s) for _, _, table in group],
                        "updates": [rows_of(u, s, width) for u, _, _ in group],
                        "rows": [rows_of(rows[k], s, width) for k in range(rows.shape[0])]}
            _add_pieces(graph, cs, ring_store_codelet(rows.dtype, step.dtype, divisor), group[0][0], fields)
    _, _, tiles = tile_regions(graph, next_step)
    graph.add_vertices(cs, ring_next_codelet(step.dtype),
                       {"step": step.reshape(1, 1), "next": next_step.reshape(1, 1)}, tiles[:1])
    prog.add(P.Execute(cs))
