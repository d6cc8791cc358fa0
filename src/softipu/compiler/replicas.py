"""Checking and pricing ``CrossReplicaCopy`` steps: data moved between replicas over IPU-Links.

One rule prices every cross-replica step (``cross_replica_copy_cycles``): each replica of the
map sends ``src``'s bytes to one other replica at the same time, so a step costs the bytes one
replica sends over the links it may use, plus the exchange latency, plus a sync across the IPUs
of every replica the step touches (an inter-IPU sync: ``Target.global_sync_cycles``). The link
figures are the target's (``ipu_link_bytes_per_cycle``: raw rate x efficiency); how many links a
ring step drives between neighbours is ``links`` (one by default: a ring sends each fragment to
one neighbour over one IPU-Link [U]; poplibs' bidirectional algorithms use a link each way).
"""

from __future__ import annotations

import math

import numpy as np

from softipu.compiler.costs import Step, StepKind
from softipu.debug import at
from softipu.graph import program as P
from softipu.graph.graph import Graph
from softipu.target import Target

__all__ = ["check_cross_replica_copy", "cross_replica_copy_cycles", "price_cross_replica_copy"]


def check_cross_replica_copy(graph: Graph, node: P.CrossReplicaCopy) -> list[str]:
    """Problems of one step: foreign tensors, dtype or shape mismatch, replicas out of range."""
    where = f"CrossReplicaCopy{at(node.location)}"
    src, dst, r = node.src, node.dst, graph.replication_factor
    problems = [f"{where}: tensor {t.name} belongs to another graph"
                for t in (src, dst) if t.graph is not graph]
    if src.dtype != dst.dtype:
        problems.append(f"{where}: source {src.name} is {src.dtype} but destination {dst.name} is "
                        f"{dst.dtype}; cast first")
    elif src.shape != dst.shape:
        problems.append(f"{where}: source {src.name} has shape {src.shape} but destination {dst.name} "
                        f"has {dst.shape}")
    bad = sorted({k for pair in node.replica_map.items() for k in pair if not 0 <= k < r})
    if bad:
        problems.append(f"{where}: replicas {bad} do not exist (replication factor {r})")
    if dst.repeats_elements():
        problems.append(f"{where}: destination {dst.name} repeats elements (a broadcast view?)")
    return problems


def cross_replica_copy_cycles(target: Target, num_bytes: int, links: int = 1) -> int:
    """Cycles for every replica to send ``num_bytes`` to a neighbour over ``links`` IPU-Links at
    once, without the sync: the link time plus the exchange latency."""
    if num_bytes <= 0:
        return 0
    rate = target.ipu_link_bytes_per_cycle * max(1, min(links, target.ipu_links_per_ipu))
    return target.exchange_latency_cycles + math.ceil(num_bytes / rate)


def price_cross_replica_copy(pricer, node: P.CrossReplicaCopy, index: int) -> Step:
    """The step of one ``CrossReplicaCopy`` (``StepPricer`` calls it as its ``price_`` method)."""
    target = pricer.target
    moving = {s for s, d in node.replica_map.items() if s != d}
    num_bytes = node.src.numel * node.src.dtype.itemsize if moving else 0
    touched = moving | {node.replica_map[s] for s in moving}
    ipus = max(2, len(touched)) * target.num_ipus
    return Step(index, StepKind.COPY, f"CrossReplicaCopy {node.src.name} -> {node.dst.name}",
                node.location, "CrossReplicaCopy",
                exchange_cycles=cross_replica_copy_cycles(target, num_bytes),
                sync_cycles=target.global_sync_cycles(ipus) if moving else 0,
                inter_ipu_bytes=num_bytes, recv_tiles=np.zeros(0, np.int64),
                recv_tile_bytes=np.zeros(0, np.int64))
