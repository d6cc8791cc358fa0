"""Host data streams: FIFOs between host memory and device tensors (Poplar's DataStream)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from softipu.debug import SourceLocation
from softipu.dtypes import DType

__all__ = ["StreamDirection", "DataStream"]

# Poplar's DataStream limit [V] (ipu-facts.md §3: DataStream buffers <= 128 MB each).
MAX_STREAM_BYTES = 128 * 1024 * 1024


class StreamDirection(enum.Enum):
    HOST_TO_DEVICE = "host-to-device"
    DEVICE_TO_HOST = "device-to-host"


@dataclass(frozen=True, slots=True)
class DataStream:
    """A FIFO moving ``num_elements`` of ``dtype`` per transfer; used as a ``Copy`` end point."""

    name: str
    dtype: DType
    num_elements: int
    direction: StreamDirection
    location: SourceLocation = field(compare=False)

    @property
    def nbytes(self) -> int:
        return self.num_elements * self.dtype.itemsize

    def __repr__(self) -> str:
        return f"DataStream({self.name!r}, {self.direction.value}, {self.num_elements} x {self.dtype})"
