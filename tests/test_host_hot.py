"""Hot helpers (codelets/host.py): shares handed to spinning threads run every job once, keep errors
and floating-point flags, and the helpers stop spinning once jobs stop coming."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

from softipu.codelets import host

pytestmark = pytest.mark.skipif(host._SPIN is None or host.CORES < 2,
                                reason="hot helpers need glibc spin locks and a second core")


def _hot_share(jobs):
    """``host._share(jobs, 1)`` with the helpers hot (the first share after a pause makes them hot
    and goes through the pool: that share's jobs run on it, so jobs count runs afresh after it)."""
    if not host._HOT.hot:
        host._share([lambda: None] * 2, 1)
    assert host._HOT.hot
    host._share(jobs, 1)


def test_a_hot_share_runs_every_job_once_some_on_a_hot_helper():
    ran, threads = [], set()

    def job(i):
        def run():
            ran.append(i)
            threads.add(threading.current_thread().name)
            time.sleep(0.001)  # leaves the helper time to take a job
        return run

    for _ in range(5):
        ran.clear()
        _hot_share([job(i) for i in range(8)])
        assert sorted(ran) == list(range(8))
    assert any(name.startswith("softipu-hot-") for name in threads)
    assert threading.current_thread().name in threads  # the caller drains too


def test_a_job_failing_on_a_hot_helper_raises_in_the_caller():
    def fails():
        if threading.current_thread().name.startswith("softipu-hot-"):
            raise RuntimeError("ran on a hot helper")
        time.sleep(0.001)

    with pytest.raises(RuntimeError, match="ran on a hot helper"):
        for _ in range(50):
            _hot_share([fails] * 8)


def test_floating_point_exceptions_raise_on_hot_helpers_too():
    flags = []

    def overflow():
        on_helper = threading.current_thread().name.startswith("softipu-hot-")
        time.sleep(0.001)  # leaves the helper time to take a job before this thread's raises
        try:
            np.float32(3e38) * np.float32(10)
        except FloatingPointError:
            flags.append(on_helper)
            raise

    with np.errstate(all="raise"):
        for _ in range(50):
            with pytest.raises(FloatingPointError):
                _hot_share([overflow] * 8)
            if True in flags:
                break
    assert True in flags, "no job ran on a hot helper"
    with np.errstate(all="ignore"):
        _hot_share([overflow] * 8)  # ignored there as on this thread


def _cpu_ticks(thread: threading.Thread) -> int:
    """User + system clock ticks the thread has run (``/proc/self/task/<tid>/stat``)."""
    with open(f"/proc/self/task/{thread.native_id}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="needs /proc")
def test_hot_helpers_stop_spinning_once_jobs_stop_coming():
    _hot_share([lambda: None] * 4)
    assert host._HOT.hot and host._HOT.spinning() == len(host._HOT.helpers) >= 1
    deadline = time.monotonic() + 1.0  # the keeper cools them HOT_IDLE_SECONDS after (a busy host: later)
    while host._HOT.hot and time.monotonic() < deadline:
        time.sleep(host.HOT_IDLE_SECONDS)
    assert not host._HOT.hot and host._HOT.spinning() == 0
    helpers = [h.thread for h in host._HOT.helpers]
    before = [_cpu_ticks(t) for t in helpers]
    time.sleep(0.3)  # a spinning helper would run the whole time: ~30 ticks at 100 Hz
    after = [_cpu_ticks(t) for t in helpers]
    assert all(b - a <= 2 for a, b in zip(before, after, strict=True)), (before, after)


def test_idle_cores_counts_our_spinning_helpers_as_idle(monkeypatch):
    monkeypatch.setattr(host, "_runnable_threads", lambda: host.CORES)  # every core busy ...
    monkeypatch.setattr(host, "_load_at", -1e9)
    monkeypatch.setattr(host._HOT, "hot", True)  # ... one of them with our own spinning helper
    monkeypatch.setattr(host._HOT, "helpers", host._HOT.helpers or [None])
    assert host.idle_cores() == len(host._HOT.helpers)
