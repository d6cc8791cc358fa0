"""Safe cache files (issue 18): entries appear whole or not at all, two processes compiling one model
into one cache both succeed and leave one valid entry, and a cache folder that cannot be written
(read-only, full) gives a warning and a compile, never a crash or a damaged entry."""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import softipu as sp
import softipu.torch as st
from softipu.frontends.torch import cache as cache_module
from softipu.frontends.torch.cache import ExecutableCache

SMALL = sp.targets.ipu_model(tiles=8)
SRC = Path(__file__).resolve().parents[1] / "src"


def model() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    return net, torch.randn(3, 8)


def folder_state(cache: Path) -> tuple[list[str], list[str]]:
    """(entry names, names of anything else) in the cache folder."""
    names = sorted(p.name for p in cache.iterdir()) if cache.exists() else []
    return [n for n in names if cache_module._ENTRY.match(n)], [n for n in names if not cache_module._ENTRY.match(n)]


WORKER = textwrap.dedent("""
    import json, pathlib, sys, time
    import numpy as np, torch
    import softipu as sp, softipu.torch as st
    cache, ready, go, out = sys.argv[1:5]
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    x = torch.randn(3, 8)
    opts = st.Options(target=sp.targets.ipu_model(tiles=8), executable_cache_dir=cache)
    pathlib.Path(ready).touch()
    while not pathlib.Path(go).exists():
        time.sleep(0.002)
    m = st.inference_model(net, opts)
    np.save(out, m(x).detach().numpy())
    print(json.dumps(sorted(m.compile_seconds)))
""")


def test_two_processes_compiling_one_model_into_one_cache_both_succeed_leaving_one_entry(tmp_path):
    cache, go = tmp_path / "cache", tmp_path / "go"
    env = dict(os.environ, PYTHONPATH=str(SRC))
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(cache), str(tmp_path / f"ready{i}"), str(go),
                               str(tmp_path / f"out{i}.npy")], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready{i}").exists() for i in range(2)) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()  # both compile from here, at the same time
    results = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err[-3000:]
    net, x = model()
    expected = net(x).detach().numpy()  # the oracle: torch eager
    a, b = (np.load(tmp_path / f"out{i}.npy") for i in range(2))
    np.testing.assert_allclose(a, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(a, b)
    entries, others = folder_state(cache)
    assert len(entries) == 1 and others == []  # one entry, no temporary left behind
    loaded = ExecutableCache(cache, 10**9).load(entries[0], net)
    assert loaded is not None  # and it is valid


def test_storing_a_key_already_stored_keeps_the_first_entry_whole(tmp_path):
    """What the second of two racing writers meets: the rename fails, its copy is dropped."""
    net, x = model()
    opts = st.Options(target=SMALL, executable_cache_dir=str(tmp_path / "cache"))
    m = st.inference_model(net, opts)
    m(x)
    cache = ExecutableCache.for_options(opts)
    (entry,) = folder_state(cache.directory)[0]
    before = {p.name: p.read_bytes() for p in (cache.directory / entry).iterdir()}
    compiled = m._current
    assert not cache.store(entry, net, compiled.engine.executable, compiled.lowered, compiled.out_spec)
    assert folder_state(cache.directory) == ([entry], [])
    assert {p.name: p.read_bytes() for p in (cache.directory / entry).iterdir()} == before
    assert cache.load(entry, net) is not None


@pytest.mark.parametrize("error", [errno.EACCES, errno.ENOSPC, errno.EROFS])
def test_a_cache_folder_that_cannot_be_written_warns_and_compiles(error, tmp_path, monkeypatch, caplog):
    """A read-only folder or a full disk while saving (simulated: the save writes half the files and
    fails): the model compiles and runs, a warning says why it is not cached, no entry or
    temporary folder is left, and the next process compiles again instead of loading half an entry."""
    real = cache_module.save_executable

    def failing(executable, path, extra):
        real(executable, path, extra)
        (Path(path) / "arrays.npz").write_bytes(b"half")
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr(cache_module, "save_executable", failing)
    net, x = model()
    opts = st.Options(target=SMALL, executable_cache_dir=str(tmp_path / "cache"))
    with caplog.at_level(logging.WARNING, "softipu.torch.cache"):
        out = st.inference_model(net, opts)(x)
    np.testing.assert_allclose(out.detach().numpy(), net(x).detach().numpy(), rtol=1e-5, atol=1e-6)
    assert "cannot write" in caplog.text and os.strerror(error) in caplog.text
    assert folder_state(tmp_path / "cache") == ([], [])
    monkeypatch.undo()
    again = st.inference_model(net, opts)
    again(x)
    assert "cache_load" not in again.compile_seconds  # compiled, and now stored
    assert len(folder_state(tmp_path / "cache")[0]) == 1


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes read-only folders")
def test_a_read_only_cache_folder_warns_and_compiles(tmp_path, caplog):
    net, x = model()
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o555)
    try:
        opts = st.Options(target=SMALL, executable_cache_dir=str(cache))
        with caplog.at_level(logging.WARNING, "softipu.torch.cache"):
            out = st.inference_model(net, opts)(x)
        np.testing.assert_allclose(out.detach().numpy(), net(x).detach().numpy(), rtol=1e-5, atol=1e-6)
        assert "cannot write" in caplog.text
        assert folder_state(cache) == ([], [])
    finally:
        cache.chmod(0o755)
