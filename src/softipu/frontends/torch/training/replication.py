"""Data-parallel training over replicas (PopTorch's ``replicationFactor`` in a training model).

Every replica runs the same training step on its own micro-batches (the host batch is laid out
``[device_iterations, gradient_accumulation, replicas, micro_batch, ...]`` as PopART's input
layout, and each replica's stream takes its slice). Before the optimizer update, each gradient
(the accumulator under gradient accumulation) is all-reduced across all replicas with
:mod:`softipu.collectives`, so the update, and thus the weights and optimizer state, are the same
on every replica. The reduction is PopTorch's ``accumulationAndReplicationReductionType``:
``Mean`` (the default) divides by the replica count on top of gradient accumulation's mean, so the
step is that of one model on the effective batch ``micro_batch x replicas x accumulation`` with a
mean loss; ``Sum`` adds the replicas' gradients.

The collectives' compute sets are named ``upd/all_reduce/<parameter>/...`` and their
``CrossReplicaCopy`` steps are priced on the IPU-Links of the smallest IPU-Fabric holding the
replicas (``compiler/replicas.py``), so ``cycle_count`` and the report include them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from softipu.collectives import CollectiveOperator, all_reduce, all_reduce_in_place
from softipu.graph import program as P
from softipu.graph.graph import Graph
from softipu.graph.tensor import Tensor, concat

__all__ = ["per_replica", "reduce_gradients", "replica_view"]


def reduce_gradients(graph: Graph, grads: dict[str, Tensor], prog: P.Sequence, options: Any,
                     in_place: bool) -> dict[str, Tensor]:
    """``grads`` all-reduced across replicas, appended to ``prog`` (before the update reads them).

    ``in_place``: the gradients are whole variables (the accumulators) and are replaced by the
    reduction, as PopART does; else each reduction is a new tensor laid out like its gradient.
    With ``options.merge_all_reduce``, the gradients of each dtype are reduced as one collective
    over their concatenation (PopART's ``mergeAllReduceCollectives``). With one replica, ``grads``
    as they are."""
    if graph.replication_factor == 1:
        return grads
    op = CollectiveOperator.MEAN if options.accumulation_reduction == "mean" else CollectiveOperator.ADD
    reduce = all_reduce_in_place if in_place else all_reduce
    if not options.merge_all_reduce:
        return {n: reduce(graph, g, prog, op=op, name=f"upd/all_reduce/{n}") for n, g in grads.items()}
    out: dict[str, Tensor] = {}
    for dtype in dict.fromkeys(g.dtype for g in grads.values()):  # one collective per dtype
        names = [n for n, g in grads.items() if g.dtype is dtype]
        merged = concat([grads[n].flatten() for n in names])
        reduced = reduce(graph, merged, prog, op=op, name=f"upd/all_reduce/merged_{dtype.name}")
        start = 0
        for n in names:
            g = grads[n]
            out[n] = g if in_place else reduced[start:start + g.numel].reshape(g.shape)
            start += g.numel
    return {n: out[n] for n in grads}


def replica_view(values: np.ndarray, replicas: int) -> np.ndarray:
    """Replica 0's copy of a replica-identical variable read from the device (weights, optimizer
    state): ``read_tensor`` gives a leading replica axis when the graph is replicated."""
    return values[0] if replicas > 1 else values


def per_replica(values: np.ndarray, shape: tuple[int, ...], replicas: int) -> np.ndarray:
    """Saved values (an exported step's, read with a leading replica axis when replicated) as
    ``write_tensor`` takes them: one per replica, or ``shape`` for every replica."""
    if replicas > 1 and values.size == replicas * int(np.prod(shape)):
        return values.reshape((replicas, *shape))
    return values.reshape(shape)
