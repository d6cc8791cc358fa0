"""``poptorch.AsynchronousDataAccessor`` and ``DataLoader(mode=Async)``: batches prefetched by a
background worker, in the loader's order, with clean termination and the loader's errors raised
in the consuming loop."""

from __future__ import annotations

import gc
import threading
import time

import pytest
import torch

import softipu as sp
import softipu.poptorch as poptorch
from softipu.frontends.errors import FrontendError


def _loader(n: int = 12, batch: int = 2, **kwargs):
    data = torch.utils.data.TensorDataset(torch.arange(float(n)), torch.arange(n) % 3)
    return poptorch.DataLoader(poptorch.Options(), data, batch_size=batch, **kwargs)


def _workers() -> int:
    return sum(t.name == "AsynchronousDataAccessor" and t.is_alive() for t in threading.enumerate())


def test_the_accessor_gives_the_loaders_batches_in_order_for_every_epoch():
    loader = _loader()
    expected = [x.tolist() for x, _ in loader]
    with poptorch.AsynchronousDataAccessor(loader, buffer_size=2) as accessor:
        assert len(accessor) == len(loader) == 6
        for _ in range(3):
            assert [x.tolist() for x, _ in accessor] == expected
    assert _workers() == 0


def test_the_worker_prefetches_ahead_of_the_consumer():
    loaded = []

    class Slow:
        def __iter__(self):
            for i in range(4):
                loaded.append(i)
                yield torch.tensor([i])

        def __len__(self):
            return 4

    accessor = poptorch.AsynchronousDataAccessor(Slow(), buffer_size=3, early_preload=True)
    deadline = time.monotonic() + 5
    while len(loaded) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(loaded) >= 3  # loaded before anything was consumed
    assert [int(b) for b in accessor] == [0, 1, 2, 3]
    accessor.terminate()


def test_an_epoch_left_early_does_not_leak_into_the_next():
    loader = _loader()
    expected = [x.tolist() for x, _ in loader]
    for indefinitely in (False, True):
        with poptorch.AsynchronousDataAccessor(loader, load_indefinitely=indefinitely) as accessor:
            first = next(iter(accessor))[0].tolist()  # one batch of the first epoch, then a new one
            assert first == expected[0] and [x.tolist() for x, _ in accessor] == expected


def test_a_loading_error_is_raised_in_the_loop_and_the_worker_ends():
    class Broken:
        def __iter__(self):
            yield torch.zeros(1)
            raise ValueError("bad sample 7")

        def __len__(self):
            return 2

    accessor = poptorch.AsynchronousDataAccessor(Broken())
    got = []
    with pytest.raises(ValueError, match="bad sample 7") as info:
        for b in accessor:
            got.append(b)
    assert len(got) == 1 and "AsynchronousDataAccessor's worker thread" in "".join(info.value.__notes__)
    with pytest.raises(FrontendError, match="worker failed"):
        list(accessor)
    accessor.terminate()
    assert _workers() == 0


def test_terminate_and_garbage_collection_stop_the_worker():
    accessor = poptorch.AsynchronousDataAccessor(_loader(n=400), buffer_size=1, early_preload=True)
    next(iter(accessor))
    accessor.terminate()
    assert _workers() == 0
    with pytest.raises(FrontendError, match="after terminate"):
        iter(accessor)
    dropped = poptorch.AsynchronousDataAccessor(_loader(n=400), buffer_size=1, early_preload=True)
    del dropped
    gc.collect()
    deadline = time.monotonic() + 5
    while _workers() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _workers() == 0


def test_bad_arguments_are_named():
    with pytest.raises(FrontendError, match="buffer_size must be an int >= 1"):
        poptorch.AsynchronousDataAccessor(_loader(), buffer_size=0)
    with pytest.raises(FrontendError, match="rebatched_size is not supported"):
        poptorch.AsynchronousDataAccessor(_loader(), rebatched_size=4)


def test_an_async_data_loader_feeds_a_training_model_the_synchronous_batches():
    opts = poptorch.Options().setTarget(sp.targets.ipu_model(tiles=4, bytes_per_tile=256 * 1024))
    opts.Training.gradientAccumulation(2)
    data = torch.utils.data.TensorDataset(torch.randn(16, 4, generator=torch.Generator().manual_seed(0)),
                                          torch.arange(16) % 3)
    sync = [x for x, _ in poptorch.DataLoader(opts, data, batch_size=2)]
    loader = poptorch.DataLoader(opts, data, batch_size=2, mode=poptorch.DataLoaderMode.Async,
                                 async_options={"buffer_size": 2})
    net = _Net()
    model = poptorch.trainingModel(net, opts, torch.optim.SGD(net.parameters(), lr=0.1))
    seen = []
    for x, y in loader:  # 2 micro-batches of 2 per call
        seen.append(x)
        assert torch.isfinite(model(x, y)[1])
    loader.terminate()
    assert len(seen) == len(sync) == 4 and all(torch.equal(a, b) for a, b in zip(seen, sync, strict=True))
    assert _workers() == 0


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x, y):
        out = self.fc(x)
        return out, torch.nn.functional.cross_entropy(out, y)
