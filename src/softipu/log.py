"""Logging and progress for softipu (a base-layer module: it imports nothing of softipu).

Logging. Every module logs under the ``softipu`` logger (``logging.getLogger(__name__)``). Like
PopTorch's ``POPTORCH_LOG_LEVEL``, two environment variables, read when softipu is imported, set it
up without code:

* ``SOFTIPU_LOG_LEVEL``: ``ERR``, ``WARN``, ``INFO``, ``DEBUG``, ``TRACE`` or ``OFF`` (also the
  ``logging`` names ``ERROR``, ``WARNING``, ``CRITICAL``); unset leaves logging alone, so
  warnings reach stderr through Python's default handler;
* ``SOFTIPU_LOG_DEST``: ``stderr`` (the default), ``stdout``, or a file path (appended to).

Recompiles, executable-cache hits and stores, and options stored without effect are logged at
INFO; compile stage times at INFO; each compiler pass as it starts at DEBUG. :func:`configure`
does the same from code.

Progress. :func:`progress_task` is a progress line for a slow job made of named stages (a model's
export, lower, compile, load). It is drawn only on an interactive terminal, never in a pipe, a
file, under pytest, in CI or with ``SOFTIPU_PROGRESS=0``, and only once the job has run for about
a second, so quick compiles stay silent. Code deep inside the job marks stages with
:func:`progress_stage`, which does nothing when no job is in progress::

    with progress_task("BertModel", ("export", "lower", "compile", "load")):
        ...                          # export
        progress_stage("lower")      # anywhere below, in the same thread
        ...
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from contextvars import ContextVar
from typing import IO

__all__ = ["LEVELS", "TRACE", "configure", "configure_from_env", "progress_task", "progress_stage",
           "progress_job", "progress_detail", "Progress", "progress_enabled"]

TRACE = 5  # below DEBUG, like PopTorch's TRACE
logging.addLevelName(TRACE, "TRACE")
LEVELS = {"ERR": logging.ERROR, "ERROR": logging.ERROR, "CRITICAL": logging.CRITICAL,
          "WARN": logging.WARNING, "WARNING": logging.WARNING, "INFO": logging.INFO,
          "DEBUG": logging.DEBUG, "TRACE": TRACE, "OFF": logging.CRITICAL + 10}
_HANDLER_NAME = "softipu-env"
_FORMAT = "[softipu %(levelname)s %(asctime)s.%(msecs)03d] %(name)s: %(message)s"


def configure(level: str | int | None = None, dest: str | IO[str] | None = None) -> logging.Logger:
    """Set the ``softipu`` logger's level (a name of :data:`LEVELS` or a number) and where it
    writes (``"stderr"``, ``"stdout"``, a path, or an open text stream). Replaces what an earlier
    call set; returns the logger."""
    logger = logging.getLogger("softipu")
    if level is not None:
        if isinstance(level, str):
            key = level.strip().upper()
            if key not in LEVELS:
                raise ValueError(f"unknown softipu log level {level!r}: use one of "
                                 "ERR, WARN, INFO, DEBUG, TRACE, OFF")
            level = LEVELS[key]
        logger.setLevel(level)
    for h in [h for h in logger.handlers if h.get_name() == _HANDLER_NAME]:
        logger.removeHandler(h)
        if isinstance(h, logging.FileHandler):
            h.close()
    handler: logging.Handler
    if dest is None or dest == "stderr":
        handler = logging.StreamHandler(sys.stderr)
    elif dest == "stdout":
        handler = logging.StreamHandler(sys.stdout)
    elif isinstance(dest, str):
        handler = logging.FileHandler(dest, encoding="utf-8")
    else:
        handler = logging.StreamHandler(dest)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(logging.Formatter(_FORMAT, "%H:%M:%S"))
    logger.addHandler(handler)
    return logger


def configure_from_env(environ: dict[str, str] | None = None) -> None:
    """:func:`configure` from ``SOFTIPU_LOG_LEVEL`` / ``SOFTIPU_LOG_DEST``; nothing when neither
    is set. A bad level is reported on stderr once and ignored (an import must not fail)."""
    env = os.environ if environ is None else environ
    level, dest = env.get("SOFTIPU_LOG_LEVEL"), env.get("SOFTIPU_LOG_DEST")
    if not level and not dest:
        return
    try:
        configure(level or None, dest or None)
    except (ValueError, OSError) as exc:
        print(f"softipu: SOFTIPU_LOG_LEVEL/SOFTIPU_LOG_DEST ignored: {exc}", file=sys.stderr)


# -- progress ----------------------------------------------------------------------------------------
DELAY_S = 1.0  # a job shorter than this never draws
_TICK_S = 0.2


def progress_enabled(stream: IO[str] | None = None) -> bool:
    """Whether a progress line may be drawn on ``stream`` (default stderr)."""
    stream = sys.stderr if stream is None else stream
    if os.environ.get("SOFTIPU_PROGRESS", "").strip() in ("0", "off", "false", "no"):
        return False
    if "PYTEST_CURRENT_TEST" in os.environ or os.environ.get("CI"):
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class Progress:
    """One job's stages, drawn as ``softipu: NAME  export 2.1s | lower 0.4s | compile 12.3s...``."""

    def __init__(self, name: str, stages: Sequence[str], stream: IO[str] | None = None,
                 enabled: bool | None = None, clock=time.monotonic) -> None:
        self.name, self.stages = name, list(stages)
        self.stream = sys.stderr if stream is None else stream
        self.enabled = progress_enabled(self.stream) if enabled is None else enabled
        self.clock = clock
        self.start = clock()
        self.times: dict[str, float] = {}
        self.current = self.stages[0] if self.stages else ""
        self.detail = ""  # what the current stage is doing (a compiler pass)
        self._stage_start = self.start
        self.finished = False
        self.drawn = False
        self._lock = threading.Lock()
        self._token = None
        if self.enabled:
            _Ticker(self).start()

    def __enter__(self) -> Progress:
        self._token = _CURRENT.set(self)
        return self

    def __exit__(self, kind, value, tb) -> None:
        if self._token is not None:
            _CURRENT.reset(self._token)
        self.done(failed=kind is not None)

    def stage(self, name: str) -> None:
        """The current stage ends; ``name`` begins."""
        now = self.clock()
        with self._lock:
            self.times[self.current] = now - self._stage_start
            self.current, self._stage_start, self.detail = name, now, ""
            if name not in self.stages:
                self.stages.append(name)
        self.draw()

    def done(self, failed: bool = False) -> None:
        """The job ended: the line is finished with its times (cleared instead when it failed)."""
        now = self.clock()
        with self._lock:
            if self.finished:
                return
            self.times[self.current] = now - self._stage_start
            self.current = ""
            self.finished = True
            if self.drawn:
                self._write("\r\x1b[2K" if failed else "\r\x1b[2K" + self.line() + "\n")

    def line(self) -> str:
        parts = []
        now = self.clock()
        for s in self.stages:
            if s in self.times and s != self.current:
                parts.append(f"{s} {self.times[s]:.1f}s")
            elif s == self.current:
                detail = f": {self.detail}" if self.detail else ""
                parts.append(f"[{s} {now - self._stage_start:.1f}s{detail}]")
            else:
                parts.append(s)
        head = "done in" if self.finished else "compiling"
        total = sum(self.times.values()) if self.finished else now - self.start
        return f"softipu: {head} {self.name} {total:.1f}s: " + " | ".join(parts)

    def draw(self) -> None:
        with self._lock:  # never between done()'s last line and its newline
            if not self.enabled or self.finished or self.clock() - self.start < DELAY_S:
                return
            self.drawn = True
            self._write("\r\x1b[2K" + self.line())

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            self.enabled = False


class _Ticker(threading.Thread):
    """Redraws a bar until it is done (``with progress_task(...)`` always ends it)."""

    def __init__(self, bar: Progress) -> None:
        super().__init__(name="softipu-progress", daemon=True)
        self.bar = bar

    def run(self) -> None:
        while not self.bar.finished and self.bar.enabled:
            self.bar.draw()
            time.sleep(_TICK_S)


_CURRENT: ContextVar[Progress | None] = ContextVar("softipu_progress", default=None)


def progress_task(name: str, stages: Sequence[str]) -> Progress:
    """A progress line for a job of ``stages`` (the first starts now): use it as a context
    manager, so that the line ends however the job does; see the module docstring."""
    return Progress(name, stages)


def progress_job(name: str, stages: Sequence[str]) -> Progress | contextlib.nullcontext[None]:
    """:func:`progress_task`, unless a job is already in progress (a model's compile builds an
    engine inside its own bar): then a context that does nothing and gives ``None``."""
    return contextlib.nullcontext() if _CURRENT.get() is not None else progress_task(name, stages)


def progress_stage(name: str) -> None:
    """The job in progress (if any) moves on to stage ``name``."""
    bar = _CURRENT.get()
    if bar is not None:
        bar.stage(name)


def progress_detail(text: str) -> None:
    """What the current stage is doing now (e.g. a compiler pass's name), shown beside it; also
    logged at DEBUG."""
    logging.getLogger("softipu.progress").debug("%s", text)
    bar = _CURRENT.get()
    if bar is not None:
        bar.detail = text
