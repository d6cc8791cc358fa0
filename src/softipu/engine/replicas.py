"""Running a ``CrossReplicaCopy`` (data moved along the replica axis of storage) and a
``RemoteCopy`` (rows to and from a remote buffer in Streaming Memory, :class:`RemoteMemory`).

Storage holds every variable once per replica as ``(replicas, elements)`` arrays (design.md
principle 3), so a copy between replicas is a copy between rows of those arrays: replica ``r``'s
``src`` lands in replica ``replica_map[r]``'s ``dst``. The fast path copies between zero-copy
views; the reference path goes element by element through addresses, independent of the views.

An injected fault (the node's ``fault``: a link ``(from, to)`` or one replica) raises
:class:`LinkFailure` before anything is written, so the step's destination keeps its values.
"""

from __future__ import annotations

import numpy as np

from softipu.debug import at, caller_location
from softipu.engine.storage import Storage, poison_value
from softipu.errors import EngineError
from softipu.graph import program as P
from softipu.graph.remote import RemoteBuffer
from softipu.graph.tensor import Tensor

__all__ = ["LinkFailure", "RemoteMemory", "cross_replica_copy", "remote_copy"]


class LinkFailure(EngineError):
    """An IPU-Link or a replica's process failed during a cross-replica step (an injected fault)."""


def cross_replica_copy(storage: Storage, node: P.CrossReplicaCopy, *, by_address: bool = False) -> None:
    """Run one ``CrossReplicaCopy`` on ``storage``; ``by_address`` is the reference interpreter's way."""
    group = storage.group  # replicas split over processes (engine/distributed.py)
    _check_fault(node, group.replicas if group else storage.replicas)  # before anything moves
    if group is not None:
        return group.cross_replica_copy(storage, node, by_address)
    for src, dst, replica_map in node.transfers:
        _transfer(storage, src, dst, replica_map, by_address)


def _transfer(storage: Storage, src_t: Tensor, dst_t: Tensor, replica_map: dict[int, int],
              by_address: bool) -> None:
    pairs = [(s, d) for s, d in replica_map.items() if not (s == d and src_t is dst_t)]
    if not pairs or src_t.numel == 0:
        return
    srcs = np.fromiter((s for s, _ in pairs), np.int64, len(pairs))
    dsts = np.fromiter((d for _, d in pairs), np.int64, len(pairs))
    if by_address:
        buf = storage.buffers[src_t.dtype]
        src_at, dst_at = src_t.addresses().reshape(-1), dst_t.addresses().reshape(-1)
        # Fancy indexing reads every source first: overlapping src and dst behave as a real
        # exchange does (everything sent before anything lands).
        buf[dsts[:, None], dst_at[None, :]] = buf[srcs[:, None], src_at[None, :]]
        return
    if src_t.index is None and dst_t.index is None:
        src = storage.view(src_t, writeable=False, replica_axis=True)
        dst = storage.view(dst_t, writeable=True, replica_axis=True)
        if _may_overlap(src_t, dst_t):
            dst[dsts] = src[srcs]  # the fancy read copies first
        else:
            for s, d in pairs:  # one pass per replica, no temporary
                np.copyto(dst[d], src[s])
        return
    values = storage.gather(dst_t, replica_axis=True)
    values[dsts] = storage.gather(src_t, replica_axis=True)[srcs]
    storage.scatter(dst_t, values, replica_axis=True)


def _may_overlap(a: Tensor, b: Tensor) -> bool:
    """Whether two strided tensors' address extents meet (np.shares_memory is exact but slow)."""
    def extent(t: Tensor) -> tuple[int, int]:
        span = [s * (n - 1) for s, n in zip(t.strides, t.shape, strict=True)]
        return t.offset + sum(x for x in span if x < 0), t.offset + sum(x for x in span if x > 0)
    (a0, a1), (b0, b1) = extent(a), extent(b)
    return a.dtype == b.dtype and a0 <= b1 and b0 <= a1


def _check_fault(node: P.CrossReplicaCopy, replicas: int) -> None:
    fault = node.fault
    if fault is None:
        return
    where = at(node.location)
    step = f"CrossReplicaCopy {node.src.name} -> {node.dst.name}{where}"
    kept = "; nothing was written: the collective's destination keeps its previous values"
    maps = [replica_map for _, _, replica_map in node.transfers]
    if len(fault) == 2:
        a, b = fault
        if any(m.get(a) == b for m in maps):
            raise LinkFailure(f"{step}: the link from replica {a} to replica {b} failed (an injected "
                              f"fault){kept}. Check the link, or route the collective around it")
        return
    (r,) = fault
    if any(r in m or r in m.values() for m in maps):
        raise LinkFailure(f"{step}: the process of replica {r} of {replicas} failed (an injected "
                          f"fault){kept}. Restart that replica's instance")


class RemoteMemory:
    """The contents of a device's remote buffers (Streaming Memory): per buffer, a
    ``(replicas, repeats, *shape)`` array, allocated on first use (zeros, or poison)."""

    __slots__ = ("replicas", "poison", "buffers")

    def __init__(self, replicas: int, poison: bool = False) -> None:
        self.replicas = replicas
        self.poison = poison
        self.buffers: dict[str, np.ndarray] = {}

    def array(self, buffer: RemoteBuffer) -> np.ndarray:
        arr = self.buffers.get(buffer.name)
        if arr is None:
            shape = (self.replicas, buffer.repeats, *buffer.shape)
            arr = np.full(shape, poison_value(buffer.dtype)) if self.poison else \
                np.zeros(shape, buffer.dtype.numpy)
            self.buffers[buffer.name] = arr
        return arr

    def write(self, buffer: RemoteBuffer, values: object, repeat: int | None = None) -> None:
        """Host values into the buffer: every row (``(repeats, *shape)``, or one per replica), or
        row ``repeat`` (``shape``, or one per replica)."""
        arr = self.array(buffer)
        target = arr if repeat is None else arr[:, _row(buffer, repeat)]
        values = np.asarray(values)
        if values.shape not in (target.shape, target.shape[1:]):
            raise EngineError(f"write_remote_buffer{at(caller_location())}: values of shape {values.shape} "
                              f"do not fit {buffer!r}; give {target.shape[1:]} or {target.shape}")
        target[...] = values

    def read(self, buffer: RemoteBuffer) -> np.ndarray:
        arr = self.array(buffer)
        return arr[0].copy() if self.replicas == 1 else arr.copy()


def _row(buffer: RemoteBuffer, repeat: int) -> int:
    if not isinstance(repeat, int) or not 0 <= repeat < buffer.repeats:
        raise EngineError(f"{buffer!r}{at(caller_location())}: repeat {repeat!r} is not in "
                          f"0..{buffer.repeats - 1}")
    return repeat


def remote_copy(storage: Storage, memory: RemoteMemory, node: P.RemoteCopy) -> None:
    """Run one ``RemoteCopy``: rows at the node's offsets (per replica) to or from the tensor."""
    buffer, tensor = node.buffer, node.tensor
    arr = memory.array(buffer)
    rows = tensor.numel // max(1, buffer.row_elements) if buffer.row_elements else 1
    if isinstance(node.offset, int):
        offsets = np.full((storage.replicas, rows), node.offset, np.int64) + np.arange(rows)
    else:
        offsets = storage.gather(node.offset, replica_axis=True).reshape(storage.replicas, -1)
        offsets = offsets.astype(np.int64)
    bad = (offsets < 0) | (offsets >= buffer.repeats)
    if bad.any():
        r, k = np.argwhere(bad)[0].tolist()
        raise EngineError(f"RemoteCopy{at(node.location)}: offset {int(offsets[r, k])} on replica {r} is "
                          f"outside {buffer!r} (rows 0..{buffer.repeats - 1}); keep offsets in range")
    replica = np.arange(storage.replicas)[:, None]
    flat = arr.reshape(storage.replicas, buffer.repeats, -1)
    if node.dst is tensor:
        values = flat[replica, offsets].reshape((storage.replicas, *tensor.shape))
        storage.scatter(tensor, values, replica_axis=True)
    else:
        flat[replica, offsets] = storage.gather(tensor, replica_axis=True).reshape(storage.replicas, rows, -1)
