"""A ring's ``Repeat`` run whole: the values its steps leave, in fewer passes over memory.

A ring step is an exchange (``CrossReplicaCopy``) and a compute set (``codelets.ring_step``); run
one by one, the reduce-scatter's step copies every fragment once and reduces it once (three
passes: copy, read both, write), the all-gather's copies and stores it. A :class:`RingRepeat`
carries beside its steps how to compute what ``count`` iterations leave in every buffer they
touch, which the engine's fast interpreter calls instead of walking the steps (the reference
interpreter always walks them; the cycles and step counts are those of the steps either way):

* reduce-scatter: what replica ``r`` holds after ``k`` steps is a chain along the ring, started
  from the send buffer of the replica ``k`` places back and reduced, one replica after the next,
  with each one's own fragment for that step: ``((b[p^k r] op x[p^(k-1) r]) op ...) op x[r]``
  (``p`` the replica that sends to one). The chain is the steps' own sequence of ``acc = acc op
  own`` ufunc calls in the same order, so the values are BITWISE the steps' (run a cache-sized
  block of columns at a time: one read of each fragment and one write);
* all-gather: what arrives at step ``i`` is the send buffer of the replica ``i`` places back,
  unchanged: each replica's rows are stored straight from a snapshot of the send buffers.

Both buffers of the pair end as the steps leave them (the last arrival and the one before), and
so do the two step counters. Anything it cannot take (a tensor that is not a strided view,
buffers that overlap, replicas split over processes, an injected fault) returns False and the
steps run one by one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from softipu.graph import program as P
from softipu.graph.tensor import Tensor

__all__ = ["RingRepeat", "WholeRing"]

_BLOCK = 1 << 16  # columns a chain runs at a time (two float32 blocks stay in a core's L2)


@dataclass(frozen=True, slots=True, eq=False)
class RingRepeat(P.Repeat):
    """A ``Repeat`` of a ring's steps with ``whole(storage) -> bool``: their values computed
    whole (False: not taken, run the steps)."""

    whole: Callable[[Any], bool] | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class WholeRing:
    """The values ``2 * count`` steps of rings that step together leave (one entry per ring).

    ``ufunc`` None: all-gather (``stores[i]`` (n, w) the rows stored into); else reduce-scatter
    (``pieces[i]`` (n, w) the replica's own fragments). ``first[i]`` is the buffer the first step
    sends, ``second[i]`` the one it receives into; ``rows[i][r][j]`` the row replica ``r`` works
    on at counter ``j``; ``senders[i][r]`` the replica that sends to ``r``."""

    ufunc: Any
    pieces: list[Tensor]
    first: list[Tensor]
    second: list[Tensor]
    rows: list[np.ndarray]
    senders: list[np.ndarray]
    counters: tuple[Tensor, Tensor]
    count: int
    faulty: bool
    plain: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "plain", self._plain())

    def __call__(self, storage: Any) -> bool:
        k = 2 * self.count
        if not self.plain or self.faulty or storage.group is not None or k == 0 or \
                any(len(s) != storage.replicas for s in self.senders):
            return False
        read = storage.view(self.counters[1], writeable=False, replica_axis=True).reshape(-1)
        j0 = int(read[0])
        if np.any(read != j0) or j0 < 0:
            return False
        for i in range(len(self.pieces)):
            views = [storage.view(t, writeable=True, replica_axis=True)
                     for t in (self.pieces[i], self.first[i], self.second[i])]
            steps = [np.minimum(np.arange(j0, j0 + k), self.rows[i].shape[1] - 1)]
            if self.ufunc is None:
                self._gather(*views, self.rows[i], self.senders[i], steps[0])
            else:
                self._reduce(*views, self.rows[i], self.senders[i], steps[0])
        for t, value in zip(self.counters, (j0 + k - 1, j0 + k), strict=True):
            storage.view(t, writeable=True, replica_axis=True)[...] = value
        return True

    def _plain(self) -> bool:
        """Every tensor a strided view, none written overlapping
        another (a reduce-scatter's fragments are only read)."""
        written = [*self.first, *self.second, *self.counters] + (self.pieces if self.ufunc is None else [])
        read = [] if self.ufunc is None else self.pieces
        if any(t.index is not None or t.slabs is not None for t in written + read):
            return False
        return all(not _overlap(a, b) for i, a in enumerate(written) for b in written[i + 1:] + read)

    def _reduce(self, x, b0, b1, rows, senders, steps) -> None:
        """b0 holds each replica's first send; after k steps b0 = v_k, b1 = v_(k-1), where the
        chain that ends on ``r`` passes through ``v_(k-1)`` of the replica that sends to it (its
        working block is that replica's b1: every b1 row is some chain's, b0 is read from a copy)."""
        k, ufunc, replicas = len(steps), self.ufunc, len(senders)
        start = b0.copy()  # every replica's chain starts from another's b0
        back = [np.arange(replicas)]  # back[m][r]: the replica m places before r
        for _ in range(k):
            back.append(senders[back[-1]])
        w = b0.shape[-1]
        for r in range(replicas):
            chain = [int(back[k - i][r]) for i in range(1, k + 1)]  # the replica of step i
            for c0 in range(0, w, _BLOCK):
                c1 = min(w, c0 + _BLOCK)
                acc = b1[int(senders[r]), c0:c1]
                np.copyto(acc, start[int(back[k][r]), c0:c1])
                for i in range(1, k):
                    q = chain[i - 1]
                    ufunc(acc, x[q, rows[q, steps[i - 1]], c0:c1], out=acc)
                ufunc(acc, x[r, rows[r, steps[k - 1]], c0:c1], out=b0[r, c0:c1])

    @staticmethod
    def _gather(z, sends, recvs, rows, senders, steps) -> None:
        """sends holds what each replica sends first; step i stores replica p^i r's at its row."""
        k, replicas = len(steps), len(senders)
        start = sends.copy()
        every = np.arange(replicas)
        back = every
        for i in range(1, k + 1):
            back = senders[back]
            for r, (q, row) in enumerate(zip(back.tolist(), rows[every, steps[i - 1]].tolist(), strict=True)):
                np.copyto(z[r, row], start[q])  # one pass, no temporary
                if i >= k - 1:
                    np.copyto(recvs[r] if i < k else sends[r], start[q])


def _extent(t: Tensor) -> tuple[int, int]:
    span = [s * (n - 1) for s, n in zip(t.strides, t.shape, strict=True)]
    return t.offset + sum(x for x in span if x < 0), t.offset + sum(x for x in span if x > 0)


def _overlap(a: Tensor, b: Tensor) -> bool:
    """Whether two tensors may share an element: their extents meet, unless both are rows of the
    same row stride whose column ranges miss each other (a ring pair's column halves)."""
    if a.dtype != b.dtype or not a.numel or not b.numel:
        return False
    (a0, a1), (b0, b1) = _extent(a), _extent(b)
    if a1 < b0 or b1 < a0:
        return False
    if a.ndim == b.ndim == 2 and a.strides == b.strides and a.strides[1] == 1 and a.strides[0] > 0:
        stride = a.strides[0]
        return not ((b.offset - a.offset) % stride >= a.shape[1]
                    and (a.offset - b.offset) % stride >= b.shape[1])
    return True
