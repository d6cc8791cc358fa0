"""What the fuzz campaigns (bench/fuzz_graph.py, fuzz_loaders.py, fuzz_torch.py, bench_onnx_fuzz.py)
share: the per-input time bound and the command line every campaign takes.

The bound is on the process's CPU time (``setitimer(ITIMER_PROF)``), so that a machine shared with
other work does not turn slow inputs into hangs; a wall-clock alarm at ``WALL_FACTOR`` times the
bound catches an input blocked without using CPU (a read from a pipe). Either raises
:class:`Timeout`, a ``BaseException`` so that code catching ``Exception`` (as loaders and lowerings
do to turn failures into clear errors) cannot swallow it. A body that holds the GIL in C (a numpy
call) is interrupted only when it returns, so the CPU time is checked as well: an input over the
bound is a hang either way.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

WALL_FACTOR = 10  # a blocked input (no CPU used) is a hang after this many times the CPU bound

__all__ = ["Timeout", "alarm_handler", "bounded", "campaign_parser"]


class Timeout(BaseException):  # not an Exception: code catching those must not swallow it
    pass


_ARMED = [False]  # one Timeout an input: the other timer may still fire while the first unwinds


def _on_alarm(signum: int, frame: Any) -> None:
    if _ARMED[0]:
        _ARMED[0] = False
        raise Timeout


@contextlib.contextmanager
def alarm_handler() -> Iterator[None]:
    """Install the alarm handler for a campaign's inputs (each then bounded with :func:`bounded`)."""
    old = signal.signal(signal.SIGALRM, _on_alarm), signal.signal(signal.SIGPROF, _on_alarm)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGALRM, old[0])
        signal.signal(signal.SIGPROF, old[1])


def bounded(body: Callable[[], Any], limit: float) -> tuple[Any, BaseException | None, bool]:
    """``(value, error, hang)`` of ``body()`` run under a bound of ``limit`` CPU seconds (and
    ``WALL_FACTOR * limit`` wall seconds): ``error`` is the exception it raised (None when it
    returned), ``hang`` whether it ran over the bound (then ``error`` is a :class:`Timeout`, or
    whatever it raised late, or None). Needs :func:`alarm_handler`."""
    _ARMED[0] = True
    signal.setitimer(signal.ITIMER_PROF, limit)
    signal.setitimer(signal.ITIMER_REAL, limit * WALL_FACTOR)
    start = time.process_time()
    value, error = None, None
    try:  # (nested: a Timeout that lands in the inner ``except`` is caught by the outer one)
        try:
            value = body()
        except Exception as exc:  # noqa: BLE001 - the campaigns classify it
            error = exc
        finally:
            _ARMED[0] = False  # before disarming: a signal between here and there is ignored
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.setitimer(signal.ITIMER_PROF, 0)
    except Timeout as exc:
        error = exc
    return value, error, isinstance(error, Timeout) or time.process_time() - start > limit


def campaign_parser(doc: str) -> argparse.ArgumentParser:
    """The options every campaign takes: how many inputs, for how long, from which seed, how long
    one input may take, and the index of the first input (``--first I --count 1`` reruns one)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=float, default=5.0, help="CPU seconds one input may take")
    parser.add_argument("--first", type=int, default=0, help="index of the first input (to rerun one)")
    return parser
