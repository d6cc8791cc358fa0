"""Stage 1 of an inner sum over a tile's runs: one vertex per worker, not one per run.

A piece of the input that lies inside one output's reduced elements (a run of a row that the
tile mapping cut: a matmul's output blocks, ``rows x 64`` columns a tile, summed over the row;
a ``(vocab, tokens)`` logits block summed over the tokens) is one contiguous region with one
output. popops does not give each such region a vertex of its own
(graphcore/poplibs, lib/popops/reduction):

* a tile's regions are its memory's contiguous runs (``getSortedContiguousRegionsByTile``), and
  the columns (outputs) that follow each other in one run with the same pattern are one
  reduction with ``innerFactor`` partials an output (ReductionIntrospection.cpp
  ``gatherReductionPatterns``, ``isAdjacent``): a block's rows, laid out one after another in the
  tile's memory, are one reduction of ``rows`` outputs, ``n`` partials each;
* ``connectLargeInnerFactorReductions`` (ReductionConnection.cpp) splits such a reduction's
  outputs between the workers (``findSplitsBetweenWorkers``: as evenly as possible, then workers
  dropped while the largest share stays the same) and each worker's share is one vertex of
  single-output reductions whose partials lie back to back, ``ALL_REGIONS_CONTINUOUS`` for ADD
  and SQUARE_ADD: ``ContinuousReduce`` (``numOutputs``, ``numPartials``), priced by
  ``getCycleEstimateReduceAllRegionsContinuous`` (CycleEstimationFunctions.cpp).

In softipu's address space a tile's rows of a block are evenly spaced pieces of one length
(a tile's memory holds them back to back): :func:`memory_runs` finds them and
:func:`share_leads` cuts each run into the workers' shares. Each piece stays a vertex of its own
(a ``ReduceRun``, one worker's: the compiler's fields stay one strided row a piece), and the
share's first carries the share's whole ``ContinuousReduce`` estimate (the others none): the
tile's cost is its largest share, as popops' worker split gives. Other operators (MAX, MIN, MUL:
popops' SCALAR_OUTPUT_REGIONS vertex) and lone pieces keep a ``ReduceSegments`` vertex a piece.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from softipu.codelets.reduce import ReduceOp
from softipu.ops.reduce_stages import even_runs

__all__ = ["RUN_OPS", "memory_runs", "worker_shares", "share_leads"]

RUN_OPS = (ReduceOp.ADD, ReduceOp.SQUARE_ADD)  # popops' ALL_REGIONS_CONTINUOUS has these only


def memory_runs(starts: np.ndarray, lengths: np.ndarray, tiles: np.ndarray,
                segments: np.ndarray) -> list[np.ndarray]:
    """The runs of pieces (indices, in address order) that one worker-split ``ContinuousReduce``
    reduces: at least two pieces on one tile, of one length of at least 2, each inside one output
    (``segments == 1``), evenly spaced."""
    idx = np.flatnonzero((segments == 1) & (lengths >= 2))
    if idx.size < 2:
        return []
    order = idx[np.lexsort((starts[idx], lengths[idx], tiles[idx]))]
    key = tiles[order] * (int(lengths.max()) + 1) + lengths[order]
    runs = []
    for cls in np.split(order, np.flatnonzero(key[1:] != key[:-1]) + 1):
        if cls.size >= 2:
            runs += [r for r in even_runs(cls, starts) if r.size >= 2]
    return runs


@cache
def worker_shares(outputs: int, workers: int) -> tuple[int, ...]:
    """popops' ``findSplitsBetweenWorkers``: ``outputs`` split over up to ``workers`` as evenly as
    possible (the first ones one more), then the last share merged into another while the
    largest stays the same (7 over 6: 2, 1, 1, 1, 1, 1 -> 2, 2, 2, 1)."""
    splits = min(workers, outputs)
    shares = [outputs // splits + (1 if j < outputs % splits else 0) for j in range(splits)]
    largest = shares[0]
    while len(shares) > 1:
        last = shares[-1]
        k = next((k for k in range(len(shares) - 1) if shares[k] + last == largest), None)
        if k is None:
            break
        shares[k] += last
        shares.pop()
    return tuple(shares)


def share_leads(runs: list[np.ndarray], size: int, workers: int) -> np.ndarray:
    """For each of ``size`` pieces, the size of the worker's share (:func:`worker_shares`, in
    address order) that it opens, else 0: the vertex that carries the share's cost."""
    lead = np.zeros(size, np.int64)
    for run in runs:
        shares = np.asarray(worker_shares(run.size, workers), np.int64)
        lead[run[np.cumsum(shares) - shares]] = shares
    return lead
