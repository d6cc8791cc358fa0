"""Host resources (issue 18): a program whose values would not fit in the host's available memory
is refused before anything is allocated, with the bytes it needs and the advice to price it in
estimate-only mode, which still works."""

from __future__ import annotations

import pytest

import softipu as sp
from softipu import program as P
from softipu.engine import storage

ALLOW_OOM = {"debug.allowOutOfMemory": True}  # the tile overflows too: compile anyway, to reach the host


def huge_graph(elements: int, replicas: int = 1):
    g = sp.Graph(sp.targets.ipu_model(tiles=2, bytes_per_tile=32 * 1024), replication_factor=replicas)
    x = g.add_variable(sp.float32, (elements,), name="huge")
    g.set_tile_mapping(x, 1)
    return g, [P.Sequence([P.WriteUndef(x)])]


def test_a_terabyte_of_values_is_refused_before_allocating():
    g, progs = huge_graph(2**38)  # 1 TiB of float32: more than this (or any test) host has
    with pytest.raises(sp.HostMemoryError) as info:
        sp.Engine(g, progs, options=ALLOW_OOM)
    text = str(info.value)
    assert f"{2**38 * 4:,} bytes" in text
    assert "estimate_only=True" in text and "MemAvailable" in text
    assert "test_resources.py" in text  # the user's line
    assert isinstance(info.value, MemoryError)  # generic handlers still catch it


def test_estimate_only_prices_what_cannot_be_held():
    g, progs = huge_graph(2**38)
    eng = sp.Engine(g, progs, options=ALLOW_OOM, estimate_only=True)
    eng.run(0)
    assert max(eng.report.tile_memory) >= 2**38 * 4  # the tile that holds it, priced


def test_the_need_counts_every_replica_and_dtype(monkeypatch):
    """200 MiB of float32 in 2 replicas plus 64 MiB of float16 needs 2 * (200 + 64) MiB: refused when
    the host has one byte less, loaded when it has exactly that."""
    need = 2 * (200 + 64) << 20
    g, progs = huge_graph(50 << 20, replicas=2)
    half = g.add_variable(sp.float16, (32 << 20,), name="half")
    g.set_tile_mapping(half, 0)
    monkeypatch.setattr(storage, "host_available_bytes", lambda: need - 1)
    with pytest.raises(sp.HostMemoryError, match=f"need {need:,} bytes.*2 replica"):
        sp.Engine(g, progs, options=ALLOW_OOM)
    monkeypatch.setattr(storage, "host_available_bytes", lambda: need)
    sp.Engine(g, progs, options=ALLOW_OOM)  # np.zeros commits no page: nothing is really used


def test_small_programs_never_read_the_host_memory(monkeypatch):
    def unexpected():
        raise AssertionError("read /proc/meminfo for a small program")

    monkeypatch.setattr(storage, "host_available_bytes", unexpected)
    g, progs = huge_graph(1024)
    sp.Engine(g, progs).run(0)


def test_available_bytes_is_linux_memavailable():
    found = storage.host_available_bytes()
    with open("/proc/meminfo") as f:
        line = next(x for x in f if x.startswith("MemAvailable:"))
    kib = int(line.split()[1])
    assert found is not None and abs(found - kib * 1024) < 256 << 20  # moved a little since


def test_listing_a_huge_tensors_addresses_is_refused_before_allocating(monkeypatch):
    """Fancy indexing of a 2**31-element variable listed all its addresses (16 GiB, plus a
    temporary as large): the graph-API campaign's process was OOM-killed (fuzz_graph seed 101
    input 5895). Views made with ints and slices list nothing and still work."""
    from softipu.graph import accounting

    monkeypatch.setattr(accounting, "host_available_bytes", lambda: 8 << 30)
    g = sp.Graph(sp.targets.ipu_model(tiles=2))
    x = g.add_variable(sp.float32, (2**31,), name="big")
    with pytest.raises(sp.HostMemoryError, match=f"addresses of big .*needs {2**31 * 16:,} bytes") as info:
        x[[0, 1]]
    assert "test_resources.py" in str(info.value) and "ints and slices" in str(info.value)
    assert x[2**30 : 2**30 + 4][[0, 3]].shape == (2,)  # a small view's list is made as before
