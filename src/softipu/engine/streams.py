"""Host-side ends of data streams: arrays or callbacks the host connects by stream name."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

import numpy as np

from softipu.errors import StreamError
from softipu.graph.streams import DataStream, StreamDirection

__all__ = ["HostStreams"]


class _ArrayConnection:
    """A host array used as a ring of transfers, one row per transfer."""

    __slots__ = ("rows", "position")

    def __init__(self, rows: np.ndarray) -> None:
        self.rows = rows
        self.position = 0

    def next_row(self) -> np.ndarray:
        row = self.rows[self.position]
        self.position = (self.position + 1) % self.rows.shape[0]
        return row

    def pull(self, stream: DataStream) -> np.ndarray:
        return self.next_row()

    def push(self, stream: DataStream, data: np.ndarray) -> None:
        self.next_row()[...] = data


class _CallbackConnection:
    """A host function: fills a buffer (host to device) or receives the data (device to host)."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[np.ndarray], Any]) -> None:
        self.fn = fn

    def pull(self, stream: DataStream) -> np.ndarray:
        buffer = np.zeros(stream.num_elements, stream.dtype.numpy)
        result = self.fn(buffer)
        if result is not None:
            result = np.asarray(result)
            if result.size != stream.num_elements:
                raise StreamError(f"callback of stream {stream.name!r} returned {result.size} "
                                  f"elements; the stream moves {stream.num_elements} per transfer")
            buffer[...] = result.reshape(-1)
        return buffer

    def push(self, stream: DataStream, data: np.ndarray) -> None:
        self.fn(data.copy())


class HostStreams:
    """Connections of every stream, shared by all replicas or one per replica."""

    def __init__(self, streams: dict[str, DataStream], replicas: int) -> None:
        self.streams = streams
        self.replicas = replicas
        self._connections: dict[tuple[str, int | None], Any] = {}

    def connect(self, name: str, data: Any, replica: int | None = None) -> None:
        stream = self.streams.get(name) if isinstance(name, str) else None
        if stream is None:
            near = difflib.get_close_matches(name, list(self.streams), n=2) if isinstance(name, str) else []
            hint = f"; did you mean {' or '.join(map(repr, near))}?" if near else ""
            raise StreamError(f"no stream named {name!r}; streams are {sorted(self.streams)}{hint}")
        if replica is not None and not (isinstance(replica, int) and 0 <= replica < self.replicas):
            raise StreamError(f"replica {replica} of stream {name!r} does not exist "
                              f"(replication factor {self.replicas})")
        self._connections[(name, replica)] = self._connection(stream, data)

    def _connection(self, stream: DataStream, data: Any) -> Any:
        if callable(data):
            return _CallbackConnection(data)
        if not isinstance(data, np.ndarray):
            raise StreamError(f"stream {stream.name!r} connects to a numpy array or a callback, "
                              f"got {type(data).__name__}")
        if data.dtype != stream.dtype.numpy:
            raise StreamError(f"stream {stream.name!r} carries {stream.dtype}; got a {data.dtype} "
                              f"array: pass array.astype(np.{stream.dtype.numpy.name})")
        n = stream.num_elements
        if n == 0:  # transfers of nothing: any empty array will do
            return _ArrayConnection(np.zeros((1, 0), stream.dtype.numpy))
        if data.size == 0 or data.size % n or not data.flags.c_contiguous:
            raise StreamError(f"stream {stream.name!r} moves {n} elements per transfer; the host "
                              f"array must be C-contiguous with a positive multiple of {n} "
                              f"elements, got shape {data.shape}")
        if stream.direction is StreamDirection.DEVICE_TO_HOST and not data.flags.writeable:
            raise StreamError(f"stream {stream.name!r} writes into its host array, which is read-only")
        return _ArrayConnection(data.reshape(-1, n))

    def _for(self, stream: DataStream, replica: int, where: str) -> Any:
        conn = self._connections.get((stream.name, replica)) or self._connections.get((stream.name, None))
        if conn is None:
            raise StreamError(f"stream {stream.name!r} is not connected{where}; call "
                              f"engine.connect_stream({stream.name!r}, array_or_callback) before run")
        return conn

    def pull(self, stream: DataStream, where: str) -> np.ndarray:
        """One transfer for every replica: ``(replicas, num_elements)``."""
        if self.replicas == 1:  # no copy of the host data (a model's weights, at load)
            return self._for(stream, 0, where).pull(stream)[None]
        return np.stack([self._for(stream, r, where).pull(stream) for r in range(self.replicas)])

    def push(self, stream: DataStream, data: np.ndarray, where: str) -> None:
        for r in range(self.replicas):
            self._for(stream, r, where).push(stream, data[r].reshape(-1))
