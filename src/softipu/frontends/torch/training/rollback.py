"""Nothing half-updated: what a training step writes in place, saved before it and put back if it fails.

A step updates the weights, buffers, optimizer state and step counter where they live. Reading
each of them as a tensor before every step (a gather through its layout: an embedding table's
column blocks, a transposed weight) cost ~60 ms a step for a 2-layer hidden-256 encoder. Here the
storage spans those tensors occupy are found once, merged per dtype, and copied as raw spans of
the engine's memory into arrays kept between steps: a memcpy, nothing allocated, no layout walked.
A failing step copies them back. Remote buffers (state in Streaming Memory) are read and written
back whole, as before.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from softipu.engine.engine import base_pages_array
from softipu.graph.remote import RemoteBuffer
from softipu.graph.tensor import Tensor

__all__ = ["Rollback"]


def merged_spans(tensors: list[Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the storage the tensors' elements cover (one dtype), sorted, overlapping
    and adjacent runs merged."""
    parts = [t.runs() for t in tensors if t.numel]
    if not parts:
        z = np.zeros(0, np.int64)
        return z, z
    starts = np.concatenate([p[0] for p in parts])
    ends = starts + np.concatenate([p[1] for p in parts])
    order = np.argsort(starts, kind="stable")
    starts, ends = starts[order], ends[order]
    reach = np.maximum.accumulate(ends)
    new = np.concatenate(([True], starts[1:] > reach[:-1]))  # a gap before this run: a new span
    first = np.flatnonzero(new)
    last = np.concatenate((first[1:], [starts.size])) - 1
    return starts[first], reach[last]


# Spans are saved in chunks of this many elements; a chunk whose bits are all zero is recorded as
# such and not copied (restored by zeroing it).
CHUNK = 1 << 20


class Rollback:
    """The saved copy of a step's in-place targets in one engine's storage (see the module docstring).

    A chunk of a span that has held only zero bits at every save is not copied but marked, and
    zeroed again by :meth:`restore`; a chunk once found non-zero is copied from then on, unread.
    Before the first step the optimizer state is such memory (Adam's moments: two thirds of a
    1-layer BERT-width model's 656 MB of saved state), untouched since the engine allocated it:
    reading it costs little, while copying it would fault in as many fresh pages of the saved
    array (~1 s of the first step on the project's VM). Those pages are touched when a later save
    first finds the chunk non-zero (the second step: the cost moves, it does not vanish).
    """

    def __init__(self, engine: Any, targets: list[Any]) -> None:
        self.engine = engine
        self._remote = [b for b in targets if isinstance(b, RemoteBuffer)]
        by_dtype: dict[Any, list[Tensor]] = {}
        for t in targets:
            if isinstance(t, Tensor):
                by_dtype.setdefault(t.dtype, []).append(t)
        # per dtype: the chunks (start, end, offset in the saved array), the saved array, and
        # which chunks every save so far found all zero (only those are looked at again)
        self._spans: list[tuple[Any, list[tuple[int, int, int]], np.ndarray, np.ndarray]] = []
        for dtype, ts in by_dtype.items():
            starts, ends = merged_spans(ts)
            chunks = [(a, min(a + CHUNK, e)) for s, e in zip(starts.tolist(), ends.tolist(), strict=True)
                      for a in range(s, e, CHUNK)]
            at, spans = 0, []
            for a, b in chunks:
                spans.append((a, b, at))
                at += b - a
            rows = engine.storage.buffers[dtype].shape[0]
            self._spans.append((dtype, spans, self._array((rows, at), dtype.numpy),
                                np.ones(len(spans), bool)))
        self._remote_saved: list[np.ndarray] = []

    def _array(self, shape: tuple[int, int], dtype: np.dtype) -> np.ndarray:
        """A saved array: in base pages where the engine keeps its memory in them (engine option
        ``host.hugePages`` off), mapped fresh, as a reused heap chunk may carry numpy's advice."""
        if self.engine.options.huge_pages:
            return np.empty(shape, dtype)
        return base_pages_array(shape, dtype)

    def save(self) -> None:
        buffers = self.engine.storage.buffers
        for dtype, spans, saved, zero in self._spans:
            buf = buffers[dtype]
            bits = np.dtype(f"u{buf.itemsize}")  # -0.0 is not zero bits: it is copied
            for k, (s, e, o) in enumerate(spans):
                part = buf[:, s:e]
                if zero[k]:
                    zero[k] = not part.view(bits).any()
                if not zero[k]:
                    saved[:, o : o + e - s] = part
        self._remote_saved = [self.engine.read_remote_buffer(b) for b in self._remote]

    def restore(self) -> None:
        storage = self.engine.storage
        storage.host_writes += 1  # written from the host: copies kept of host-written values are stale
        for dtype, spans, saved, zero in self._spans:
            buf = storage.buffers[dtype]
            for k, (s, e, o) in enumerate(spans):
                if zero[k]:
                    buf[:, s:e] = 0
                else:
                    buf[:, s:e] = saved[:, o : o + e - s]
        for b, data in zip(self._remote, self._remote_saved, strict=True):
            self.engine.write_remote_buffer(b, data)
