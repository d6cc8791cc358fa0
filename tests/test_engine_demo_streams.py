"""The fast engine's stream copies into and out of strided tensors bind the tensor's view once (the
demo encoder's token ids in, its outputs out): no gather or scatter through storage per run, and
the values a host ring or callback sees are numpy's, on one replica or two."""

from __future__ import annotations

import numpy as np
import pytest

import softipu as sp
from softipu import program as P
from softipu.engine.storage import Storage


def _case(replicas: int):
    """x (4 x 6) filled from a stream; its transpose (a strided, non-contiguous view) and x itself
    pushed to two host streams."""
    g = sp.Graph(sp.targets.ipu_model(tiles=4), replication_factor=replicas)
    x = g.add_variable(sp.float32, (4, 6), name="x")
    sp.ops.map_linearly(g, x)
    feed = g.add_host_to_device_fifo("feed", sp.float32, 24)
    out_t = g.add_device_to_host_fifo("out_t", sp.float32, 24)
    out = g.add_device_to_host_fifo("out", sp.float32, 24)
    prog = P.Sequence([P.Copy(feed, x), P.Copy(x.T, out_t), P.Copy(x, out)])
    return sp.Engine(g, [prog], options={"engine.reference": False})


@pytest.mark.parametrize("replicas", [1, 2])
def test_stream_copies_through_bound_views_match_numpy(replicas, monkeypatch):
    calls = []
    for name in ("gather", "scatter"):
        real = getattr(Storage, name)
        monkeypatch.setattr(Storage, name, lambda self, *a, _real=real, _n=name, **k: (calls.append(_n),
                                                                                       _real(self, *a, **k))[1])
    eng = _case(replicas)
    host = np.random.default_rng(1).standard_normal((3 * replicas, 24)).astype(np.float32)
    ring_t = np.zeros((3 * replicas, 24), np.float32)
    got = []
    if replicas == 1:
        eng.connect_stream("feed", host)
        eng.connect_stream("out_t", ring_t)
    else:  # one ring a replica
        for r in range(replicas):
            eng.connect_stream("feed", host[3 * r:3 * r + 3], replica=r)
            eng.connect_stream("out_t", ring_t[3 * r:3 * r + 3], replica=r)
    eng.connect_stream("out", lambda data: got.append(data))
    calls.clear()
    for _ in range(3):
        eng.run(0)
    rows = [host[3 * r:3 * r + 3] for r in range(replicas)] if replicas > 1 else [host]
    want_t = np.concatenate([h.reshape(3, 4, 6).transpose(0, 2, 1).reshape(3, 24) for h in rows])
    assert ring_t.tobytes() == want_t.tobytes()
    # the callback receives each run's rows replica by replica, a copy of its own
    want = [rows[r][k] for k in range(3) for r in range(replicas)]
    assert len(got) == len(want) and all(a.tobytes() == b.tobytes() for a, b in zip(got, want, strict=True))
    assert not any(np.shares_memory(a, b) for a in got for b in got if a is not b)
    assert calls == []  # fails where a run gathers or scatters the streamed tensors
