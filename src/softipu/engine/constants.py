"""Which operand blocks of a matmul chain only the host writes (a model's weights in inference),
so the chain may keep their gathered copy from one call to the next (``engine/chain_run.py``).

An element is *constant* for the engine when no compute-set field that writes, and no tensor of a
program node other than an ``Execute`` or a host-to-device stream copy (copies, undefs,
remote-buffer transfers: all counted, reads too, conservatively), touches it. Only the host then
changes it: through ``Storage.write``, or a stream copy (a session's weights load) that the fast
engine reports to ``Scratch.streamed`` as it runs. Either bumps ``Storage.host_writes``, and a
kept copy is made again whenever that count moved since it was made.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from softipu.compiler.executable import Executable
from softipu.graph import program as P
from softipu.graph.streams import DataStream
from softipu.graph.tensor import Tensor

__all__ = ["WrittenSpans"]


class WrittenSpans:
    """The sorted, disjoint ``[starts, ends)`` of each dtype's elements an executable may write,
    built on the first question about that dtype."""

    def __init__(self, executable: Executable) -> None:
        self.executable = executable
        self.spans: dict[Any, tuple[np.ndarray, np.ndarray]] = {}

    def untouched(self, dtype: Any, lo: np.ndarray, hi: np.ndarray) -> bool:
        """Whether no ``[lo, hi)`` range meets an element the executable may write."""
        from softipu.engine.chains import _overlaps  # chains imports chain_run, which uses this

        if dtype not in self.spans:
            self.spans[dtype] = _written(self.executable, dtype)
        starts, ends = self.spans[dtype]
        return not _overlaps(np.stack([lo, hi], 1), starts, ends)


def _written(executable: Executable, dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    from softipu.engine.chains import _extent, _field_extents, _union

    spans = [_extent(t) for t in _written_tensors(executable) if t.dtype == dtype]
    rows = [span for span in spans if span is not None]
    fields = _field_extents(executable, dtype, writes_only=True)[:, 1:]  # every field a compute set writes
    if not rows and not len(fields):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return _union(np.concatenate([np.array(rows, np.int64).reshape(-1, 2), fields]))


def _written_tensors(executable: Executable) -> Iterator[Tensor]:
    """Every tensor a program node other than an Execute names (its reads too)."""
    from softipu.engine.chains import _slots

    for root in list(executable.programs) + list(executable.functions.values()):
        for node in P.walk(root):
            if node.kind is P.ProgramKind.EXECUTE:
                continue
            if node.kind is P.ProgramKind.COPY and isinstance(node.src, DataStream):
                continue  # a host write: the fast engine counts it when it runs (Scratch.streamed)
            for slot in _slots(node):
                value = getattr(node, slot, None)
                for t in value if isinstance(value, (list, tuple)) else (value,):
                    if isinstance(t, Tensor):
                        yield t
