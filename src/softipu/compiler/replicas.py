"""Checking and pricing ``CrossReplicaCopy`` steps: data moved between replicas over IPU-Links.

The link-level cost model is ``softipu.target.links`` (one source of truth, shared with the
estimate-only collective pricing): a step in which every replica of the map sends ``src``'s bytes
to its destination replica at the same time is ``links.flows_cost`` over the routes of the
system the replicas run on — replica ``r`` of ``k`` IPUs on IPUs ``r*k .. r*k+k-1``, each IPU
sending its ``1/k`` share to the same IPU of the destination replica — with a sync across the
IPUs of every replica the step touches. A graph names only its chip, so the system is the
smallest IPU-Fabric of that chip that holds every replica (``systems.smallest_fabric``).
"""

from __future__ import annotations

import math

import numpy as np

from softipu.compiler.costs import Step, StepKind
from softipu.debug import at
from softipu.graph import program as P
from softipu.graph.graph import Graph
from softipu.graph.tensor import Tensor
from softipu.target import Target, links, systems

__all__ = ["check_cross_replica_copy", "cross_replica_copy_cost", "price_cross_replica_copy",
           "check_remote_copy", "remote_copy_cycles", "price_remote_copy", "price_sync"]


def check_cross_replica_copy(graph: Graph, node: P.CrossReplicaCopy) -> list[str]:
    """Problems of one step: foreign tensors, dtype or shape mismatch, replicas out of range."""
    where = f"CrossReplicaCopy{at(node.location)}"
    problems: list[str] = []
    for src, dst, replica_map in node.transfers:
        problems += _transfer_problems(graph, where, src, dst, replica_map)
    return problems


def _transfer_problems(graph: Graph, where: str, src: Tensor, dst: Tensor, replica_map: dict) -> list[str]:
    r = graph.replication_factor
    problems = [f"{where}: tensor {t.name} belongs to another graph"
                for t in (src, dst) if t.graph is not graph]
    if src.dtype != dst.dtype:
        problems.append(f"{where}: source {src.name} is {src.dtype} but destination {dst.name} is "
                        f"{dst.dtype}; cast first")
    elif src.shape != dst.shape:
        problems.append(f"{where}: source {src.name} has shape {src.shape} but destination {dst.name} "
                        f"has {dst.shape}")
    bad = sorted({k for pair in replica_map.items() for k in pair if not 0 <= k < r})
    if bad:
        problems.append(f"{where}: replicas {bad} do not exist (replication factor {r})")
    if dst.repeats_elements():
        problems.append(f"{where}: destination {dst.name} repeats elements (a broadcast view?)")
    return problems


def cross_replica_copy_cost(target: Target, replicas: int, replica_maps: list[dict[int, int]],
                            num_bytes: int, system: systems.System | None = None) -> links.StepCost:
    """The link-level cost of one cross-replica step: in every map, every replica that moves sends
    ``num_bytes`` at the same time (the maps' flows share the links) on ``system`` (None: the
    smallest that holds the replicas)."""
    k = target.num_ipus
    moving = [(s, d) for m in replica_maps for s, d in m.items() if s != d]
    pairs = [(s * k + j, d * k + j) for s, d in moving for j in range(k)]
    touched = {r for pair in moving for r in pair}
    system = system or systems.smallest_fabric(replicas * k, target)
    return links.flows_cost(system, pairs, num_bytes / k if pairs else 0, sync_ipus=len(touched) * k)


def price_cross_replica_copy(pricer, node: P.CrossReplicaCopy, index: int) -> Step:
    """The step of one ``CrossReplicaCopy`` (``StepPricer`` calls it as its ``price_`` method);
    transfers side by side are priced at the largest one's bytes on every flow (an upper bound
    where they differ: a bidirectional ring's halves differ by at most a column)."""
    transfers = node.transfers
    num_bytes = max(src.numel * src.dtype.itemsize for src, _, _ in transfers)
    maps = [m for _, _, m in transfers]
    cost = cross_replica_copy_cost(pricer.target, pricer.replication_factor, maps, num_bytes,
                                   systems.system_of(node.src.graph))
    sent = sum(src.numel * src.dtype.itemsize * sum(1 for s, d in m.items() if s != d)
               for src, _, m in transfers)
    return Step(index, StepKind.COPY, f"CrossReplicaCopy {node.src.name} -> {node.dst.name}",
                node.location, "CrossReplicaCopy",
                exchange_cycles=cost.link_cycles + cost.latency_cycles, sync_cycles=cost.sync_cycles,
                inter_ipu_bytes=sent // max(1, pricer.replication_factor),
                recv_tiles=np.zeros(0, np.int64), recv_tile_bytes=np.zeros(0, np.int64))


def price_sync(pricer, graph: Graph, node: P.Sync, index: int) -> Step:
    """The step of one ``Sync`` (``StepPricer`` calls it as its ``price_`` method), by its scope on
    the graph's system (``System.sync_cycles``: on chip, over Sync-Links within an IPU-Link domain,
    plus the GW-Link sync across domains): INTERNAL this IPU's tiles; EXTERNAL every IPU of the
    replica; GLOBAL every IPU of every replica."""
    k = pricer.target.num_ipus
    ipus = {P.SyncType.INTERNAL: 1, P.SyncType.EXTERNAL: k,
            P.SyncType.GLOBAL: k * pricer.replication_factor}[node.sync_type]
    return Step(index, StepKind.SYNC, f"Sync {node.sync_type.value}", node.location, "Sync",
                sync_cycles=systems.system_of(graph).sync_cycles(ipus))


# -- remote buffers (Streaming Memory) -----------------------------------------------------------
def check_remote_copy(graph: Graph, node: P.RemoteCopy) -> list[str]:
    """Problems of one ``RemoteCopy``: a foreign buffer or tensor, dtype, shape or offset misfit."""
    where = f"RemoteCopy{at(node.location)}"
    buffer, tensor, offset = node.buffer, node.tensor, node.offset
    if graph.remote_buffers.get(buffer.name) is not buffer:
        return [f"{where}: {buffer!r} is not a remote buffer of this graph"]
    if tensor.graph is not graph:
        return [f"{where}: tensor {tensor.name} belongs to another graph"]
    problems = []
    if tensor.dtype != buffer.dtype:
        problems.append(f"{where}: tensor {tensor.name} is {tensor.dtype} but {buffer!r} holds "
                        f"{buffer.dtype}")
    rows = 1 if tensor.shape == buffer.shape else tensor.shape[0] if tensor.shape[1:] == buffer.shape else 0
    if not rows:
        problems.append(f"{where}: tensor {tensor.name} {tensor.shape} is neither a row {buffer.shape} of "
                        f"{buffer!r} nor (rows, {', '.join(map(str, buffer.shape))})")
    if isinstance(offset, int) and not 0 <= offset <= buffer.repeats - max(rows, 1):
        problems.append(f"{where}: offset {offset} with {rows} row(s) is outside {buffer!r}")
    elif isinstance(offset, Tensor) and (offset.dtype.is_float or offset.numel != rows):
        problems.append(f"{where}: offset {offset.name} must be an integer tensor of {rows} element(s)")
    if node.dst is tensor and tensor.repeats_elements():
        problems.append(f"{where}: destination {tensor.name} repeats elements (a broadcast view?)")
    return problems


def remote_copy_cycles(target: Target, replicas: int, num_bytes: int,
                       system: systems.System | None = None) -> int:
    """Cycles to move ``num_bytes`` per replica to or from Streaming Memory: at each IPU's
    Streaming Memory rate (``System.streaming_memory_bytes_per_second_per_ipu``), plus the
    exchange latency."""
    system = system or systems.smallest_fabric(replicas * target.num_ipus, target)
    rate = system.streaming_memory_bytes_per_second_per_ipu * target.num_ipus / target.clock_hz
    return target.exchange_latency_cycles + math.ceil(num_bytes / rate) if num_bytes else 0


def price_remote_copy(pricer, node: P.RemoteCopy, index: int) -> Step:
    """The step of one ``RemoteCopy``: the Streaming Memory path and an on-chip sync."""
    target, tensor = pricer.target, node.tensor
    num_bytes = tensor.numel * tensor.dtype.itemsize
    name = f"RemoteCopy {node.src.name} -> {node.dst.name}"
    return Step(index, StepKind.HOST, name, node.location, "RemoteCopy",
                exchange_cycles=remote_copy_cycles(target, pricer.replication_factor, num_bytes,
                                                   systems.system_of(tensor.graph)),
                sync_cycles=target.on_chip_sync_cycles, host_bytes=num_bytes)
