"""The ring step's reduction as one vertex: ``acc = acc op rows[offset]``.

GCL reduces what arrives with the replica's own fragment, picked at run time, in one pass; the
same done with popops would be a dynamic slice (a copy of the fragment) and then the binary op.
A multi-vertex (the tile's workers share its piece); the cycle estimate is the sum of the two
library estimates it replaces (a row set-up and vector copy per worker, ``codelets.indexing``;
the binary op, ``codelets.elementwise.estimates``), an upper bound.
Values are the binary op's: numpy's ufunc on the same dtype, as popops' codelets compute it.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from softipu.codelets.elementwise.estimates import binary_op_cycles
from softipu.codelets.elementwise.ops import BinaryOp
from softipu.codelets.indexing import _dynamic_cycles, _dynamic_start
from softipu.dtypes import DType
from softipu.graph import program as P
from softipu.graph.graph import Graph
from softipu.graph.tensor import Tensor
from softipu.graph.vertex import FieldShape, InOut, Input, MultiVertex, Vertex
from softipu.ops.common import OpContext, rows_of, tile_regions

__all__ = ["FUSED", "ring_reduce_codelet", "ring_reduce"]

# Operators (by popops BinaryOp) and dtypes the fused vertex takes: numpy's ufunc gives popops'
# values exactly there (float16 arithmetic is left to popops' own codelets).
FUSED = {"add": (np.add, BinaryOp.ADD), "mul": (np.multiply, BinaryOp.MULTIPLY),
         "min": (np.minimum, BinaryOp.MINIMUM), "max": (np.maximum, BinaryOp.MAXIMUM)}
FUSED_DTYPES = ("float32", "int32", "uint32", "bool")


@cache
def ring_reduce_codelet(dtype: DType, offset_dtype: DType, op: str) -> type[Vertex]:
    """``RingReduce<op, dtype>``: ``acc = acc op rows[offset]`` (popops' offset rule: out of range
    starts at 0); offsets may differ by replica."""
    ufunc, binary = FUSED[op]

    class RingReduce(MultiVertex):
        offset = Input(offset_dtype, FieldShape.SCALAR)
        rows = Input(dtype, FieldShape.VECTOR_LIST)
        acc = InOut(dtype)

        @staticmethod
        def compute(offset, rows, acc):
            if offset.ndim == 3 and offset.strides[1] == 0:  # one offset per replica, broadcast
                per_replica = _dynamic_start(offset[:, :1], len(rows))[:, 0].tolist()
                if len(set(per_replica)) == 1:
                    ufunc(acc, rows[per_replica[0]], out=acc)
                else:
                    for r, at_r in enumerate(per_replica):
                        ufunc(acc[r], rows[at_r][r], out=acc[r])
                return
            start = _dynamic_start(offset, len(rows))
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
        def cycles(offset, rows, acc, target):  # the workers share the piece, as popops' BinaryOp1D
            workers = target.workers_per_tile
            return (workers * _dynamic_cycles(dtype, 1, -(-acc // workers), target)
                    + binary_op_cycles(binary, dtype, acc, target))

    RingReduce.__name__ = RingReduce.__qualname__ = f"RingReduce<{op},{dtype.name}>"
    return RingReduce


def ring_reduce(ctx: OpContext, parts: list[tuple[Tensor, Tensor, Tensor]], op: str, prog: P.Sequence) -> None:
    """Each ``(acc, rows, offset)`` of ``parts``: ``acc`` (w,) op= ``rows[offset]`` (rows (n, w)), a
    multi-vertex per tile piece of ``acc``, every part in ONE compute set (GCL concatenates the
    directions' reductions into one ``ReduceProg``, CollectivesProgram.hpp: one compute set, one
    sync, a step)."""
    graph: Graph = ctx.graph
    cs = graph.add_compute_set(f"{ctx.name}/reduce", op=ctx.op)
    for acc, rows, offset in parts:
        codelet = ring_reduce_codelet(acc.dtype, offset.dtype, op)
        starts, lengths, tiles = tile_regions(graph, acc)
        for width in np.unique(lengths).tolist():
            pick = lengths == width
            s = starts[pick]
            graph.add_vertices(cs, codelet, {"offset": offset.reshape(1, 1).broadcast((s.size, 1)),
                                             "rows": [rows_of(rows[k], s, width) for k in range(rows.shape[0])],
                                             "acc": rows_of(acc, s, width)}, tiles[pick])
    prog.add(P.Execute(cs))
