"""Remote buffers: tensors kept in the system's Streaming Memory (Poplar's ``RemoteBuffer``).

A remote buffer holds ``repeats`` rows of ``shape`` elements per replica, outside the chip;
``program.RemoteCopy`` moves a row (or several, at run-time offsets) between it and a tensor.
Its size is checked when it is added: the buffers of one replica must fit that replica's share
of Streaming Memory on the smallest IPU-Fabric holding the replicas (each IPU's share of its
machine's ``streaming_memory_bytes_per_machine``, 256 GB by default: ``softipu.target.systems``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from softipu.debug import SourceLocation, at
from softipu.dtypes import DType, as_dtype
from softipu.errors import StreamError
from softipu.target.systems import system_of

if TYPE_CHECKING:
    from softipu.graph.graph import Graph

__all__ = ["RemoteBuffer", "make_remote_buffer", "streaming_memory_bytes_per_replica"]


@dataclass(frozen=True, slots=True, eq=False)
class RemoteBuffer:
    """``repeats`` rows of ``shape`` elements of ``dtype`` in Streaming Memory, per replica."""

    name: str
    dtype: DType
    shape: tuple[int, ...]
    repeats: int
    location: SourceLocation = field(compare=False)

    @property
    def row_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes per replica."""
        return self.repeats * self.row_elements * self.dtype.itemsize

    def __repr__(self) -> str:
        return f"RemoteBuffer({self.name!r}, {self.repeats} x {self.shape} x {self.dtype})"


def streaming_memory_bytes_per_replica(graph: Graph) -> int:
    """One replica's share of Streaming Memory: its IPUs' share of their machine's."""
    system = system_of(graph)
    return system.streaming_memory_bytes_per_machine * graph.target.num_ipus // system.ipus_per_machine


def make_remote_buffer(graph: Graph, name: str, dtype: Any, shape: Any, repeats: int,
                       location: SourceLocation) -> RemoteBuffer:
    """A checked remote buffer of ``graph`` (``Graph.add_remote_buffer``)."""
    where = f"remote buffer {name!r}{at(location)}"
    shape_t = (int(shape),) if isinstance(shape, int) else tuple(shape)
    if not name or name in graph.remote_buffers:
        raise StreamError(f"{where}: remote buffer names must be unique and not empty")
    if any(not isinstance(d, int) or d < 0 for d in shape_t):
        raise StreamError(f"{where}: shape must be ints >= 0, got {shape!r}")
    if not isinstance(repeats, int) or repeats < 1:
        raise StreamError(f"{where}: repeats must be an int >= 1, got {repeats!r}")
    buffer = RemoteBuffer(name, as_dtype(dtype), shape_t, repeats, location)
    used = sum(b.nbytes for b in graph.remote_buffers.values())
    limit = streaming_memory_bytes_per_replica(graph)
    if used + buffer.nbytes > limit:
        raise StreamError(f"{where}: {buffer.nbytes:,} bytes per replica (with {used:,} in other remote "
                          f"buffers) exceed the {limit:,} bytes of Streaming Memory each replica of "
                          f"{graph.target.num_ipus} IPU(s) has; use fewer repeats or shard the buffer "
                          "over replicas")
    return buffer
