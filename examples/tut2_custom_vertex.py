"""Tutorial 2: a custom codelet, one vertex per tile.

A *codelet* is the code a tile runs; a *vertex* is one instance of it on one tile, with its
*fields* connected to tensor slices. Each field says how the vertex uses its data:

- ``Input``: only read. It may live on another tile: the exchange brings it in before compute.
- ``Output``: only written (never read first); it too may live on another tile, since results
  move in the next exchange.
- ``InOut``: read and updated in place.
- ``Param``: a per-vertex constant, fixed when the graph is built (not a tensor).

A field is a ``VECTOR`` (the default), a ``SCALAR`` (one element) or a ``VECTOR_LIST`` (a jagged
list of vectors, Poplar's ``VectorList<T>``).

In softipu ``compute`` is *vectorized*: the engine calls it once for all vertices of a compute set
that share a codelet and field sizes, with one row per vertex (a leading replica axis may come
first, hence the ``...`` and ``axis=-1`` below). ``cycles`` is the codelet's cycle estimate from its
field sizes (and, if it asks for it, the ``target`` chip), kept next to ``compute`` so the two
cannot drift apart.
"""

from __future__ import annotations

import numpy as np

import softipu as sp
from softipu import program as P

TILES = 4


class Axpy(sp.Vertex):
    """y <- a * x + y on one tile's slice; also the slice's sum of squares."""

    a = sp.Param(sp.float32)
    x = sp.Input(sp.float32)
    y = sp.InOut(sp.float32)
    sumsq = sp.Output(sp.float32, sp.SCALAR)

    @staticmethod
    def compute(a, x, y, sumsq):
        y[...] = a * x + y  # a arrives as (vertices, 1): one value per vertex, broadcast
        sumsq[...] = np.sum(y * y, axis=-1, keepdims=True)

    @staticmethod
    def cycles(a, x, y, sumsq, target):
        # Field sizes arrive as ints. Two passes over the vector (multiply-add, then
        # square-accumulate), each one vector of fp32 per cycle, plus call overhead.
        lanes = target.vector_width(sp.float32)  # 2 fp32 lanes on a GC200 tile
        return 20 + 2 * -(-x // lanes)


class SumVectors(sp.Vertex):
    """total <- the sum of every element of a jagged list of vectors."""

    vectors = sp.Input(sp.float32, sp.VECTOR_LIST)
    total = sp.Output(sp.float32, sp.SCALAR)

    @staticmethod
    def compute(vectors, total):
        # vectors is a list: one (vertices, n_i) array per vector of the list
        total[...] = sum(v.sum(axis=-1, keepdims=True) for v in vectors)

    @staticmethod
    def cycles(vectors, total, target):
        lanes = target.vector_width(sp.float32)
        return 10 + sum(5 + -(-n // lanes) for n in vectors)  # per vector: loop setup, then lanes


# Which [start, stop) slices of `data` each tile's SumVectors vertex adds up. Slices cross tile
# boundaries on purpose: those elements reach the vertex through the exchange.
SEGMENTS = [
    [(0, 2), (5, 9)],
    [(2, 5)],
    [(9, 10), (10, 16), (20, 24)],
    [(16, 20), (0, 1)],  # reading an element another vertex also reads is fine
]


def axpy(g: sp.Graph, x: sp.Tensor, y: sp.Tensor, sumsq: sp.Tensor) -> sp.ComputeSet:
    cs = g.add_compute_set("axpy")
    n = x.numel // TILES
    for tile in range(TILES):
        part = slice(tile * n, (tile + 1) * n)  # each vertex works where its data lives
        g.add_vertex(cs, Axpy, {"a": tile + 1.0, "x": x[part], "y": y[part], "sumsq": sumsq[tile]},
                     tile=tile)
    return cs


def sum_segments(g: sp.Graph, data: sp.Tensor, totals: sp.Tensor) -> sp.ComputeSet:
    cs = g.add_compute_set("sum_segments")
    for tile, segments in enumerate(SEGMENTS):
        vectors = [data[lo:hi] for lo, hi in segments]
        g.add_vertex(cs, SumVectors, {"vectors": vectors, "total": totals[tile]}, tile=tile)
    return cs


def main() -> dict[str, object]:
    g = sp.Graph(sp.targets.ipu_model(tiles=TILES))
    x = g.add_variable(sp.float32, (16,), name="x")
    y = g.add_variable(sp.float32, (16,), name="y")
    data = g.add_variable(sp.float32, (24,), name="data")
    sumsq = g.add_variable(sp.float32, (TILES,), name="sumsq")
    totals = g.add_variable(sp.float32, (TILES,), name="totals")
    for t in (x, y, data, sumsq, totals):
        sp.ops.map_linearly(g, t)  # sumsq and totals: one element per tile
    prog = P.Sequence(P.Execute(axpy(g, x, y, sumsq)), P.Execute(sum_segments(g, data, totals)))

    eng = sp.Engine(g, [prog])
    eng.write_tensor(x, np.arange(16))
    eng.write_tensor(y, np.ones(16))
    eng.write_tensor(data, np.arange(24) ** 2)
    eng.run(0)
    return {
        "y": eng.read_tensor(y),
        "sumsq": eng.read_tensor(sumsq),
        "totals": eng.read_tensor(totals),
        # The cost model calls these per vertex; here we call them ourselves to see the numbers.
        "axpy_cycles": Axpy.cycles(a=np.float32(1), x=4, y=4, sumsq=1, target=g.target),
        "sum_vectors_cycles": [SumVectors.cycles(vectors=tuple(hi - lo for lo, hi in s), total=1,
                                                 target=g.target) for s in SEGMENTS],
    }


if __name__ == "__main__":
    for key, value in main().items():
        print(f"{key}: {value}")
