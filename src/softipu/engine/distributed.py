"""The replicas of one program split over several processes (PopDist's instances).

Each process (an *instance*) holds ``local_replicas`` of the program's ``replication_factor``
replicas: the rows ``global_replica_offset .. global_replica_offset + local_replicas - 1`` of the
replica axis of storage (design.md principle 3), a contiguous block as PopRun deals them out.
Every instance runs the same program in lockstep; a ``CrossReplicaCopy`` moves the rows whose two
ends live in one instance as before (``engine/replicas.py``) and the others over torch.distributed
(gloo: point-to-point sends and receives of the rows' bytes, so any dtype travels bit for bit).
Replication index constants and per-replica host streams see global replica numbers.

The layout comes from the environment a launcher sets: PopRun's ``POPDIST_NUM_TOTAL_REPLICAS``,
``POPDIST_NUM_LOCAL_REPLICAS``, ``POPDIST_REPLICA_INDEX_OFFSET``, ``POPDIST_NUM_IPUS_PER_REPLICA``
(``softipu run`` sets them) and torchrun's ``RANK`` / ``WORLD_SIZE`` / ``MASTER_ADDR`` /
``MASTER_PORT``. With one instance nothing changes. Enabled by the engine option
``distributed.enabled``; ``distributed.timeoutSeconds`` bounds how long a collective waits for a
peer (gloo's timeout): a process that died mid-collective is reported by name, never a hang.

The engine's host calls see this instance's replicas: ``write_tensor`` takes ``shape`` or
``(local_replicas, *shape)`` values and ``read_tensor`` gives the local rows (``softipu.popdist``
says which global replicas they are); ``connect_stream(..., replica=r)`` takes a global number
held here. Every instance must make its engines, and run their programs, in the same order.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from softipu.debug import at
from softipu.engine.replicas import LinkFailure, _may_overlap, _transfer
from softipu.errors import EngineError, OptionError
from softipu.graph import program as P
from softipu.graph.tensor import Tensor

__all__ = ["ENV", "InstanceFailure", "Layout", "ProcessGroup", "layout_from_environment", "process_group"]

ENV = {  # what the launcher sets (PopRun's names for the replica layout, torchrun's for processes)
    "total": "POPDIST_NUM_TOTAL_REPLICAS",
    "local": "POPDIST_NUM_LOCAL_REPLICAS",
    "offset": "POPDIST_REPLICA_INDEX_OFFSET",
    "ipus": "POPDIST_NUM_IPUS_PER_REPLICA",
    "instances": "WORLD_SIZE",
    "instance": "RANK",
    "host": "GROUP_RANK",  # torchrun's node rank: which host (agent) this instance runs on
    "local_instances": "LOCAL_WORLD_SIZE",  # instances on this host
}
DEFAULT_TIMEOUT_S = 60


class InstanceFailure(LinkFailure):
    """Another instance (process) of a multi-process run failed or stopped answering."""


@dataclass(frozen=True, slots=True)
class Layout:
    """Which replicas this instance holds, as the launcher's environment says."""

    instance: int = 0
    instances: int = 1
    total_replicas: int | None = None  # None: not set (plain torchrun), taken from the graph
    local_replicas: int | None = None
    replica_offset: int | None = None
    ipus_per_replica: int = 1

    def resolve(self, replicas: int) -> tuple[int, int]:
        """(first global replica, local replicas) of this instance for a program of ``replicas``."""
        if self.total_replicas is not None and self.total_replicas != replicas:
            raise EngineError(f"the launcher runs {self.total_replicas} replicas in all "
                              f"(${ENV['total']}) but the graph's replication factor is {replicas}; make "
                              f"them agree (softipu run --num-replicas {replicas})")
        if self.local_replicas is None:
            if replicas % self.instances:
                raise EngineError(f"{replicas} replicas do not split evenly over {self.instances} "
                                  "instances; use a replication factor divisible by the number of processes")
            local = replicas // self.instances
            return self.instance * local, local
        n = self.local_replicas
        first = self.replica_offset if self.replica_offset is not None else self.instance * n
        if not (0 <= first and first + n <= replicas and n > 0):
            raise EngineError(f"instance {self.instance}'s replicas {first}..{first + n - 1} "
                              f"(${ENV['offset']}, ${ENV['local']}) are not among the graph's {replicas}")
        return first, self.local_replicas


def _int(name: str, default: int | None) -> int | None:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise EngineError(f"${name} must be an integer, got {text!r}") from None


def layout_from_environment() -> Layout:
    """The layout the launcher's environment describes (one instance holding all when unset)."""
    return Layout(instance=_int(ENV["instance"], 0), instances=_int(ENV["instances"], 1),
                  total_replicas=_int(ENV["total"], None), local_replicas=_int(ENV["local"], None),
                  replica_offset=_int(ENV["offset"], None), ipus_per_replica=_int(ENV["ipus"], 1))


def _dist() -> Any:
    import torch.distributed as dist  # only multi-process runs need torch
    return dist


class ProcessGroup:
    """This instance's place among the instances, and the row exchange between them."""

    def __init__(self, layout: Layout, replicas: int, timeout_s: int = DEFAULT_TIMEOUT_S) -> None:
        self.layout = layout
        self.replicas = replicas
        self.first, self.local = layout.resolve(replicas)
        self.timeout_s = timeout_s
        dist = _dist()
        if not dist.is_initialized():
            dist.init_process_group("gloo", rank=layout.instance, world_size=layout.instances,
                                    timeout=datetime.timedelta(seconds=timeout_s))
        # Every instance's block of replicas (all equal in size: PopRun's uniform layout).
        self.owner = np.repeat(np.arange(layout.instances), replicas // layout.instances) \
            if layout.local_replicas is None else self._owners(dist)

    def _owners(self, dist: Any) -> np.ndarray:
        import torch
        mine = torch.tensor([self.first, self.local], dtype=torch.int64)
        every = [torch.zeros(2, dtype=torch.int64) for _ in range(self.layout.instances)]
        try:
            dist.all_gather(every, mine)
        except RuntimeError as exc:
            raise InstanceFailure(f"instance {self.layout.instance}: the other instances did not make their "
                                  f"engine within {self.timeout_s} s ({_first_line(exc)}); every instance "
                                  "must make the same engines in the same order") from exc
        owner = np.full(self.replicas, -1, np.int64)
        for i, (first, n) in enumerate(t.tolist() for t in every):
            owner[first : first + n] = i
        if (owner < 0).any():
            raise EngineError(f"no instance holds replica {int(np.argmax(owner < 0))} of {self.replicas}; "
                              f"check ${ENV['local']} and ${ENV['offset']}")
        return owner

    def local_row(self, replica: int, what: str) -> int:
        """The storage row of global ``replica``; an error if another instance holds it."""
        if not self.first <= replica < self.first + self.local:
            raise EngineError(f"{what}: replica {replica} is held by instance {int(self.owner[replica])}, "
                              f"not this one (instance {self.layout.instance}, replicas {self.first}.."
                              f"{self.first + self.local - 1}); use softipu.popdist to pick local replicas")
        return replica - self.first

    # -- one CrossReplicaCopy -------------------------------------------------------------------
    def cross_replica_copy(self, storage: Any, node: P.CrossReplicaCopy, by_address: bool) -> None:
        """The node's transfers in as few exchanges as their overlaps allow (usually one): a batch's
        rows are all sent before anything of it lands, so a failed peer leaves it unwritten."""
        for batch in _batches(node.transfers):
            self._run_batch(storage, node, [(s, d, *self._split(m)) for s, d, m in batch], by_address)

    def _run_batch(self, storage: Any, node: P.CrossReplicaCopy, batch: list, by_address: bool) -> None:
        outgoing: dict[int, list[np.ndarray]] = {}
        sizes: dict[int, int] = {}
        for src_t, _, _, sends, recvs in batch:
            for p, rows in sends.items():
                outgoing.setdefault(p, []).append(self._rows(storage, src_t, rows))
            for p, rows in recvs.items():
                sizes[p] = sizes.get(p, 0) + len(rows) * src_t.numel * src_t.dtype.itemsize
        incoming = self._exchange(node, {p: np.concatenate(b) for p, b in outgoing.items()}, sizes)
        read = dict.fromkeys(incoming, 0)
        for src_t, dst_t, local, _, recvs in batch:
            _transfer(storage, src_t, dst_t, local, by_address)
            if not recvs:
                continue
            values = storage.gather(dst_t, replica_axis=True)
            for p, rows in recvs.items():
                n = len(rows) * src_t.numel * src_t.dtype.itemsize
                got = incoming[p][read[p] : read[p] + n].view(src_t.dtype.numpy)
                values[[d - self.first for d in rows]] = got.reshape((len(rows), *dst_t.shape))
                read[p] += n
            storage.scatter(dst_t, values, replica_axis=True)

    def _split(self, replica_map: dict[int, int]) -> tuple[dict[int, int], dict[int, list], dict[int, list]]:
        """The map's pairs held wholly here (as local rows), and per peer instance the global
        destination rows it receives from us / we receive from it, both in source order."""
        lo, hi = self.first, self.first + self.local
        local: dict[int, int] = {}
        sends: dict[int, list[int]] = {}
        recvs: dict[int, list[int]] = {}
        for s, d in sorted(replica_map.items()):
            s_here, d_here = lo <= s < hi, lo <= d < hi
            if s_here and d_here:
                local[s - lo] = d - lo
            elif s_here:
                sends.setdefault(int(self.owner[d]), []).append(s)
            elif d_here:
                recvs.setdefault(int(self.owner[s]), []).append(d)
        return local, sends, recvs

    def _rows(self, storage: Any, t: Tensor, rows: list[int]) -> np.ndarray:
        values = storage.gather(t, replica_axis=True)[[s - self.first for s in rows]]
        return np.ascontiguousarray(values).reshape(-1).view(np.uint8)

    def _exchange(self, node: P.CrossReplicaCopy, outgoing: dict[int, np.ndarray],
                  sizes: dict[int, int]) -> dict[int, np.ndarray]:
        """Bytes to each peer and from each peer (of known sizes), all posted before any wait."""
        import torch
        dist = _dist()
        incoming = {p: np.empty(n, np.uint8) for p, n in sizes.items()}
        works, peer = [], None
        try:
            for p, buf in incoming.items():
                peer = p
                works.append((p, dist.irecv(torch.from_numpy(buf), src=p)))
            for p, buf in outgoing.items():
                peer = p
                works.append((p, dist.isend(torch.from_numpy(buf), dst=p)))
            for p, work in works:
                peer = p
                work.wait(datetime.timedelta(seconds=self.timeout_s))
        except (RuntimeError, ValueError) as exc:  # gloo: peer closed, timed out
            raise InstanceFailure(
                f"CrossReplicaCopy {node.src.name} -> {node.dst.name}{at(node.location)}: instance {peer} "
                f"(process rank {peer}, replicas {self._held(peer)}) did not answer within "
                f"{self.timeout_s} s or failed: {_first_line(exc)}. Nothing of this step was written; "
                "check that process's output: the run cannot go on without it") from exc
        return incoming

    def _held(self, instance: int | None) -> str:
        rows = np.flatnonzero(self.owner == instance)
        return f"{rows[0]}..{rows[-1]}" if rows.size else "?"


def _batches(transfers: tuple) -> list[list]:
    """Consecutive transfers cut where one reads what an earlier one of its batch writes (one
    process runs them in order: the later reads the earlier's result)."""
    batches: list[list] = [[]]
    for transfer in transfers:
        if any(_may_clash(transfer[0], dst) for _, dst, _ in batches[-1]):
            batches.append([])
        batches[-1].append(transfer)
    return batches


def _may_clash(src: Tensor, dst: Tensor) -> bool:
    if src.index is not None or dst.index is not None:
        return src.dtype == dst.dtype  # addresses anywhere: assume they meet
    return _may_overlap(src, dst)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def process_group(replicas: int, timeout_s: int = DEFAULT_TIMEOUT_S,
                  layout: Layout | None = None) -> ProcessGroup | None:
    """The process group of a run with ``distributed.enabled``; None with one instance."""
    if timeout_s < 1:
        raise OptionError(f"engine option 'distributed.timeoutSeconds' must be at least 1, got {timeout_s}")
    layout = layout or layout_from_environment()
    if layout.instances <= 1:
        layout.resolve(replicas)  # still checks the replica count
        return None
    if not 0 <= layout.instance < layout.instances:
        raise EngineError(f"instance {layout.instance} (${ENV['instance']}) is not in "
                          f"0..{layout.instances - 1}")
    return ProcessGroup(layout, replicas, timeout_s)
