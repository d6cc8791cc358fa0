"""PopTorch's ``AsynchronousDataAccessor``: batches prefetched by a background worker.

A worker thread iterates the wrapped data loader (a ``poptorch.DataLoader`` or any iterable of
batches with ``len``) and keeps up to ``buffer_size`` batches ready, so loading the next batch
overlaps the model's step. PopTorch's worker is a process writing into shared memory; a thread
gives the same order and the same batches (a ``DataLoader`` with ``num_workers > 0`` still loads in
its own processes) without copying tensors between processes.

Each ``for batch in accessor`` is one epoch of the loader. With ``load_indefinitely`` (PopTorch's
default) the worker goes on into the next epoch while the current one is consumed; otherwise it
waits until the next epoch is asked for. An exception raised while loading is raised again in the
consuming loop, at the batch that failed, with a note naming the worker. ``terminate()`` (also on
garbage collection and at the end of a ``with`` block) stops the worker and drops what it
prefetched.

>>> import torch, softipu.poptorch as poptorch
>>> data = torch.utils.data.TensorDataset(torch.arange(8.0))
>>> loader = poptorch.DataLoader(poptorch.Options(), data, batch_size=2)
>>> with poptorch.AsynchronousDataAccessor(loader) as accessor:
...     [b[0].tolist() for b in accessor]
[[0.0, 1.0], [2.0, 3.0], [4.0, 5.0], [6.0, 7.0]]
"""

from __future__ import annotations

import enum
import queue
import threading
from typing import Any

from softipu.frontends.errors import FrontendError

__all__ = ["AsynchronousDataAccessor", "SharingStrategy", "DataLoaderMode"]

_BATCH, _END, _ERROR = 0, 1, 2
_POLL_SECONDS = 0.05


class SharingStrategy(enum.IntEnum):
    """How PopTorch's worker process shares batches (accepted; the worker here is a thread)."""

    SharedMemory = 0
    FileSystem = 1
    ForkSafeFileSystem = 2


class DataLoaderMode(enum.IntEnum):
    """PopTorch's ``DataLoader(mode=...)``: ``Async`` wraps it in an AsynchronousDataAccessor."""

    Sync = 0
    Async = 1
    AsyncRebatched = 2


def _put(q: queue.Queue, stop: threading.Event, item: tuple[int, int, Any]) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=_POLL_SECONDS)
            return True
        except queue.Full:
            continue
    return False


def _work(loader: Any, q: queue.Queue, stop: threading.Event, next_epoch: threading.Semaphore,
          load_indefinitely: bool) -> None:
    """The worker: put (epoch, kind, value) items until stopped, one epoch of the loader after
    another (the next one only when asked for, without ``load_indefinitely``)."""
    epoch = 0
    while not stop.is_set():
        if epoch and not load_indefinitely:
            while not next_epoch.acquire(timeout=_POLL_SECONDS):
                if stop.is_set():
                    return
        loaded = 0
        try:
            for batch in loader:
                if not _put(q, stop, (epoch, _BATCH, batch)):
                    return
                loaded += 1
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, raised there
            exc.add_note(f"(raised in the AsynchronousDataAccessor's worker thread, loading batch "
                         f"{loaded} of epoch {epoch})")
            _put(q, stop, (epoch, _ERROR, exc))
            return
        if not _put(q, stop, (epoch, _END, None)):
            return
        epoch += 1


class AsynchronousDataAccessor:
    """PopTorch's ``AsynchronousDataAccessor(dataset, buffer_size=3, miss_sleep_time_in_ms=0.1,
    load_indefinitely=True, early_preload=False, sharing_strategy=..., rebatched_size=None)``.

    ``dataset`` is the loader to read batches from; ``buffer_size`` how many batches the worker
    keeps ready; ``early_preload`` starts the worker now instead of at the first iteration.
    ``miss_sleep_time_in_ms`` and ``sharing_strategy`` tune PopTorch's process and shared memory
    and are accepted. ``rebatched_size`` (re-batching a loader of single samples) is refused.
    """

    def __init__(self, dataset: Any, buffer_size: int = 3, miss_sleep_time_in_ms: float = 0.1,
                 load_indefinitely: bool = True, early_preload: bool = False,
                 sharing_strategy: SharingStrategy = SharingStrategy.FileSystem,
                 rebatched_size: int | None = None) -> None:
        if isinstance(buffer_size, bool) or not isinstance(buffer_size, int) or buffer_size < 1:
            raise FrontendError(f"AsynchronousDataAccessor: buffer_size must be an int >= 1, got "
                                f"{buffer_size!r}")
        if rebatched_size is not None:
            raise FrontendError("AsynchronousDataAccessor: rebatched_size is not supported: give "
                                "poptorch.DataLoader the batch size the model takes (it combines "
                                "deviceIterations x gradientAccumulation itself)")
        if not hasattr(dataset, "__iter__"):
            raise FrontendError(f"AsynchronousDataAccessor needs an iterable of batches (a "
                                f"poptorch.DataLoader), got {type(dataset).__name__}")
        self._loader = dataset
        self.buffer_size = buffer_size
        self.miss_sleep_time_in_ms = miss_sleep_time_in_ms
        self.sharing_strategy = sharing_strategy
        self.load_indefinitely = bool(load_indefinitely)
        self._queue: queue.Queue = queue.Queue(maxsize=buffer_size)
        self._stop = threading.Event()
        self._next_epoch = threading.Semaphore(0)
        self._thread: threading.Thread | None = None
        self._epoch = 0  # the epoch the next iteration consumes
        self._failed = False
        if early_preload:
            self._start()

    # -- the worker --------------------------------------------------------------------------
    def _start(self) -> None:
        if self._thread is None:
            # NOTE: the worker holds no reference to the accessor, so dropping the accessor
            # collects it and its finalizer stops the worker.
            self._thread = threading.Thread(
                target=_work, args=(self._loader, self._queue, self._stop, self._next_epoch,
                                    self.load_indefinitely),
                name="AsynchronousDataAccessor", daemon=True)
            self._thread.start()

    # -- the consumer ------------------------------------------------------------------------
    def __iter__(self) -> Any:
        if self._stop.is_set():
            raise FrontendError("AsynchronousDataAccessor: iterated after terminate(); make a new one")
        if self._failed:
            raise FrontendError("AsynchronousDataAccessor: its worker failed loading a batch (raised "
                                "earlier); make a new one")
        epoch = self._epoch
        self._epoch += 1
        if epoch and not self.load_indefinitely:
            self._next_epoch.release()
        self._start()
        return self._batches(epoch)

    def _batches(self, epoch: int) -> Any:
        while True:
            try:
                got, kind, value = self._queue.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                if self._stop.is_set() or self._thread is None or not self._thread.is_alive():
                    if self._stop.is_set():
                        return
                    raise FrontendError("AsynchronousDataAccessor: its worker stopped without "
                                        "finishing the epoch") from None
                continue
            if got < epoch:  # the rest of an epoch left early
                continue
            if kind == _ERROR:
                self._failed = True
                raise value
            if kind == _END:
                return
            yield value

    def __len__(self) -> int:
        return len(self._loader)

    # -- ending ------------------------------------------------------------------------------
    def terminate(self) -> None:
        """Stop the worker and drop the batches it prefetched; iterating again raises."""
        self._stop.set()
        thread, self._thread = self._thread, None
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def __enter__(self) -> AsynchronousDataAccessor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.terminate()

    def __del__(self) -> None:
        try:
            self.terminate()
        except Exception:  # noqa: BLE001, S110 - nothing can be raised from a finalizer
            pass
