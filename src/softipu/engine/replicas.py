"""Running a ``CrossReplicaCopy``: data moved along the replica axis of storage.

Storage holds every variable once per replica as ``(replicas, elements)`` arrays (design.md
principle 3), so a copy between replicas is a copy between rows of those arrays: replica ``r``'s
``src`` lands in replica ``replica_map[r]``'s ``dst``. The fast path copies between zero-copy
views; the reference path goes element by element through addresses, independent of the views.

An injected fault (the node's ``fault``: a link ``(from, to)`` or one replica) raises
:class:`LinkFailure` before anything is written, so the step's destination keeps its values.
"""

from __future__ import annotations

import numpy as np

from softipu.debug import at
from softipu.engine.storage import Storage
from softipu.errors import EngineError
from softipu.graph import program as P

__all__ = ["LinkFailure", "cross_replica_copy"]


class LinkFailure(EngineError):
    """An IPU-Link or a replica's process failed during a cross-replica step (an injected fault)."""


def cross_replica_copy(storage: Storage, node: P.CrossReplicaCopy, *, by_address: bool = False) -> None:
    """Run one ``CrossReplicaCopy`` on ``storage``; ``by_address`` is the reference interpreter's way."""
    _check_fault(node, storage.replicas)
    pairs = [(s, d) for s, d in node.replica_map.items() if not (s == d and node.src is node.dst)]
    if not pairs or node.src.numel == 0:
        return
    srcs = np.fromiter((s for s, _ in pairs), np.int64, len(pairs))
    dsts = np.fromiter((d for _, d in pairs), np.int64, len(pairs))
    if by_address:
        buf = storage.buffers[node.src.dtype]
        src_at, dst_at = node.src.addresses().reshape(-1), node.dst.addresses().reshape(-1)
        # Fancy indexing reads every source first: overlapping src and dst behave as a real
        # exchange does (everything sent before anything lands).
        buf[dsts[:, None], dst_at[None, :]] = buf[srcs[:, None], src_at[None, :]]
        return
    if node.src.index is None and node.dst.index is None:
        src = storage.view(node.src, writeable=False, replica_axis=True)
        dst = storage.view(node.dst, writeable=True, replica_axis=True)
        if np.shares_memory(src, dst):
            dst[dsts] = src[srcs]  # the fancy read copies first
        else:
            for s, d in pairs:  # one pass per replica, no temporary
                np.copyto(dst[d], src[s])
        return
    values = storage.gather(node.dst, replica_axis=True)
    values[dsts] = storage.gather(node.src, replica_axis=True)[srcs]
    storage.scatter(node.dst, values, replica_axis=True)


def _check_fault(node: P.CrossReplicaCopy, replicas: int) -> None:
    fault = node.fault
    if fault is None:
        return
    where = at(node.location)
    step = f"CrossReplicaCopy {node.src.name} -> {node.dst.name}{where}"
    kept = "; nothing was written: the collective's destination keeps its previous values"
    if len(fault) == 2:
        a, b = fault
        if node.replica_map.get(a) == b:
            raise LinkFailure(f"{step}: the link from replica {a} to replica {b} failed (an injected "
                              f"fault){kept}. Check the link, or route the collective around it")
        return
    (r,) = fault
    if r in node.replica_map or r in node.replica_map.values():
        raise LinkFailure(f"{step}: the process of replica {r} of {replicas} failed (an injected "
                          f"fault){kept}. Restart that replica's instance")
