"""Host threads for the fast engine: spread independent work over this machine's idle cores.

Two levels share one pool. The engine runs a compute set's vertex groups (and a large group's
chunks) side by side (:func:`run_side_by_side`), since vertices of a compute set never write what
another reads or writes (the compiler checks it). A codelet may also cut one large batch into
vertex ranges (:func:`on_idle_cores`), each vertex computed whole by one call, or into pieces cut
by their size alone (:func:`run_pieces`: a merged GEMM); inside a side-by-side run it does not
split, as the other cores already have work. Either way results never depend on how the work was
shared out, nor on how many cores there are (design.md principle 6).

numpy's own OpenBLAS runs single-threaded meanwhile (:meth:`Blas.single_threaded`): its threads
would otherwise compete with these for the same cores on every small product.

Helper threads run in a copy of the caller's context, so ``np.errstate`` (how the engine turns
floating-point exceptions on or off) holds in them too. While shares keep coming, they go to *hot*
helpers that wait spinning instead of sleeping (:class:`HotHelpers`: a sleeping thread takes
20-50 us to wake on a VM, as long as a small GEMM piece); the pool takes the rest.
"""

from __future__ import annotations

import contextvars
import ctypes
import glob
import itertools
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import numpy as np

from softipu.errors import OptionError

__all__ = ["BLAS", "PARALLEL_WORK", "Frozen", "FrozenList", "frozen", "idle_cores", "keep_freed_pages",
           "memo", "on_idle_cores", "run_in_turn", "run_pieces", "run_side_by_side", "scratch"]


def _host_cores() -> int:
    """The cores the engine may use: ``$SOFTIPU_HOST_THREADS`` when set (1 runs everything on the
    calling thread; results are the same bits either way), else the cores this process may run on."""
    forced = os.environ.get(HOST_THREADS, "").strip()
    if forced:
        if not forced.isdigit() or int(forced) < 1:
            raise OptionError(f"${HOST_THREADS} must be a whole number >= 1, got {forced!r}")
        return int(forced)
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


HOST_THREADS = "SOFTIPU_HOST_THREADS"
CORES = _host_cores()
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()
_LOCAL = threading.local()  # .side_by_side: this thread runs one share of a side-by-side run
_load_at, _idle = -1e9, 0


class Blas:
    """numpy's OpenBLAS thread count, held at one while any caller is inside ``with
    BLAS.single_threaded():`` (counted, so concurrent callers neither serialize nor restore it
    early; the engine holds it for a whole run, so a codelet's own entry costs a counter).
    Without an OpenBLAS this finds, nothing is changed."""

    def __init__(self) -> None:
        self.get = self.set = None
        self.lock = threading.Lock()
        self.users = 0
        self.before = 1
        libs = os.path.join(os.path.dirname(os.path.dirname(np.__file__)), "numpy.libs")
        for path in sorted(glob.glob(os.path.join(libs, "*openblas*"))):
            try:
                lib = ctypes.CDLL(path)
                get, set_ = lib.scipy_openblas_get_num_threads64_, lib.scipy_openblas_set_num_threads64_
            except (OSError, AttributeError):
                continue
            get.restype, set_.argtypes = ctypes.c_int, [ctypes.c_int]
            self.get, self.set = get, set_
            return

    def single_threaded(self) -> Blas:
        return self

    def __enter__(self) -> None:
        if self.set is None:
            return
        with self.lock:
            if self.users == 0:
                self.before = self.get()
                self.set(1)
            self.users += 1

    def __exit__(self, *exc: object) -> None:
        if self.set is None:
            return
        with self.lock:
            self.users -= 1
            if self.users == 0:
                self.set(self.before)


BLAS = Blas()

# glibc malloc: blocks up to this size come from the heap, and the heap keeps up to the second
# figure of freed memory instead of handing it back to the OS.
_MMAP_THRESHOLD, _TRIM_THRESHOLD = 32 << 20, 256 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameter numbers (malloc.h)
_kept = False


def keep_freed_pages() -> None:
    """Let this process reuse the pages of freed temporaries (once; glibc only, else nothing).

    A codelet's numpy temporaries (``y[...] = x + 1`` makes ``x + 1``) are allocated and freed on
    every call. With glibc's defaults a block over 128 KiB is mapped afresh, and freed heap over a
    few times that is returned to the OS, so each call pays page faults for memory it just gave
    back: the heat-stencil showcase ran 3-5x slower on its first run than once a large numpy
    array had raised glibc's adaptive thresholds. Fixed thresholds keep up to 256 MiB of freed
    heap for reuse.
    """
    global _kept
    if _kept:
        return
    _kept = True
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
    mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)


def idle_cores() -> int:
    """Cores beyond this thread that other threads leave idle now (sampled every 50 ms).

    Extra threads only pay where a core is free: on a busy host, handing work to a thread that
    waits for a core makes the whole batch wait for it. The count of runnable threads in
    ``/proc/loadavg`` (this one among them) says so now; a load average would also count this
    process's own recent work, and keep a quiet host's second core idle.
    """
    global _load_at, _idle
    now = time.monotonic()
    if now - _load_at > 0.05:
        _load_at = now
        _idle = CORES - _runnable_threads() + _HOT.spinning()  # a hot helper waits for our jobs
    return _idle


def _runnable_threads() -> int:
    """Threads on this host that are running or ready to run, this one included (at least 1)."""
    try:
        with open("/proc/loadavg") as f:
            return max(1, int(f.read().split()[3].split("/")[0]))
    except (OSError, ValueError, IndexError):
        try:
            return max(1, int(os.getloadavg()[0] + 0.5))
        except OSError:
            return 1


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max(1, CORES - 1), thread_name_prefix="softipu-host")
        return _POOL


# -- hot helpers: threads that take a job within microseconds -------------------------------------
# On this kind of host (a VM whose idle cores sleep) a thread blocked on a lock wakes 20-50 us
# after another hands it work: an empty job's round trip through the pool took 48 us (median), and
# two 42-us GEMM pieces shared through it 95 us against 84 one after the other. A hot helper waits
# instead by spinning on a glibc spin lock inside a ctypes call, with the interpreter lock released
# (an empty job's round trip 5 us; a 128 x 128 x 512 product as two row pieces 94 us against 138 on
# one thread). It spins only while jobs keep coming: a keeper thread turns it back to a blocking
# wait once HOT_IDLE_SECONDS pass without one, so an engine that stopped, or runs one thread's work
# for a while, leaves the core to others. The first share after that goes through the pool and
# makes the helpers hot again. Which thread runs which job never changes a result.
HOT_IDLE_SECONDS = 0.002


def _libc_spin() -> tuple[Any, Any, Any] | None:
    """glibc's ``pthread_spin_init/lock/unlock`` through ctypes (each call releases the interpreter
    lock), or None where there are none (then every share goes through the pool)."""
    try:
        libc = ctypes.CDLL(None)
        init, lock, unlock = libc.pthread_spin_init, libc.pthread_spin_lock, libc.pthread_spin_unlock
    except (OSError, AttributeError):
        return None
    init.argtypes, init.restype = [ctypes.c_void_p, ctypes.c_int], ctypes.c_int
    lock.argtypes = unlock.argtypes = [ctypes.c_void_p]
    lock.restype = unlock.restype = ctypes.c_int
    return init, lock, unlock


_SPIN = _libc_spin()


class _Helper:
    """One hot helper: its job slot and two spin locks, ``go`` (unlocked when a job, or None to
    cool, is in the slot) and ``done`` (unlocked when the job returned), both locked at rest."""

    __slots__ = ("cells", "go", "done", "job", "thread")

    def __init__(self) -> None:
        init, lock, _ = _SPIN
        self.cells = (ctypes.c_int(0), ctypes.c_int(0))  # pthread_spinlock_t is an int
        self.go, self.done = (ctypes.addressof(c) for c in self.cells)
        for at_ in (self.go, self.done):
            init(at_, 0)
            lock(at_)
        self.job: Callable[[], Any] | None = None
        self.thread: threading.Thread | None = None


class HotHelpers:
    """The host's hot helpers (module section above): made on first use, one a core beyond the
    caller's. :meth:`share` runs a drain on them and this thread; ``owner`` lets one caller at a
    time use them (another goes through the pool)."""

    def __init__(self) -> None:
        self.helpers: list[_Helper] = []
        self.owner = threading.Lock()
        self.heat = threading.Event()  # set while hot: helpers and the keeper wait on it
        self.hot = False
        self.last = 0.0  # when a share last ended (time.monotonic)

    def spinning(self) -> int:
        """How many helpers spin now, waiting for this process's jobs."""
        return len(self.helpers) if self.hot else 0

    def share(self, drain: Callable[[], None], helpers: int) -> bool:
        """``drain`` on ``helpers`` hot helpers (each in a copy of this context) and this thread,
        returning when all have returned; False, having run nothing, where the helpers are not
        hot (then they are made hot for the next share), are in use, or cannot be made here."""
        if _SPIN is None or CORES < 2 or not self.owner.acquire(blocking=False):
            return False
        try:
            if not self.hot:
                self._heat()
                return False
            _, lock, unlock = _SPIN
            use = self.helpers[:helpers]
            for h in use:
                h.job = partial(contextvars.copy_context().run, drain)
            for h in use:
                unlock(h.go)
            try:
                with BLAS.single_threaded():
                    drain()
            finally:
                for h in use:
                    lock(h.done)
            return True
        finally:
            self.owner.release()

    def _heat(self) -> None:
        """Start the helpers spinning (made on first use); the owner is held."""
        if not self.helpers:
            self.helpers = [_Helper() for _ in range(CORES - 1)]
            for i, h in enumerate(self.helpers):
                h.thread = threading.Thread(target=self._loop, args=(h,), daemon=True,
                                            name=f"softipu-hot-{i}")
                h.thread.start()
            threading.Thread(target=self._keep, daemon=True, name="softipu-hot-keeper").start()
        self.hot = True  # the share that made them hot sets self.last when it ends
        self.heat.set()

    def _cool(self) -> None:
        """Send the helpers back to a blocking wait; the owner is held and no job is out."""
        self.hot = False
        self.heat.clear()
        for h in self.helpers:
            h.job = None
            _SPIN[2](h.go)

    def _loop(self, h: _Helper) -> None:
        _, lock, unlock = _SPIN
        while True:
            self.heat.wait()
            while True:
                lock(h.go)  # spins, the interpreter lock released
                job, h.job = h.job, None
                if job is None:  # cooled
                    break
                try:
                    job()
                except BaseException:  # noqa: BLE001 -- drain keeps a job's exception for its caller
                    pass
                finally:
                    unlock(h.done)

    def _keep(self) -> None:
        """Cool the helpers once HOT_IDLE_SECONDS passed since a share ended (checked that often;
        never while one runs: it holds the owner)."""
        while True:
            self.heat.wait()
            time.sleep(HOT_IDLE_SECONDS)
            if self.hot and time.monotonic() - self.last >= HOT_IDLE_SECONDS \
                    and self.owner.acquire(blocking=False):
                try:
                    if self.hot:
                        self._cool()
                finally:
                    self.owner.release()


_HOT = HotHelpers()


def _forget_hot_helpers() -> None:
    """In a forked child the helper threads do not exist: start afresh there."""
    global _HOT
    _HOT = HotHelpers()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_hot_helpers)


def _share(jobs: Sequence[Callable[[], None]], helpers: int) -> None:
    """Run every job once, on this thread and ``helpers`` pool threads taking the next one in
    turn (``itertools.count`` hands each out once). A job's exception stops the others taking
    new jobs and is raised here."""
    counter = itertools.count()
    failed: list[BaseException] = []

    def drain() -> None:
        _LOCAL.side_by_side = True
        try:
            for i in counter:
                if i >= len(jobs) or failed:
                    return
                try:
                    jobs[i]()
                except BaseException as exc:
                    failed.append(exc)
                    return
        finally:
            _LOCAL.side_by_side = False

    _HOT.last = math.inf  # not cooled during a share
    if not _HOT.share(drain, helpers):
        pool = _pool()
        futures = [pool.submit(contextvars.copy_context().run, drain) for _ in range(helpers)]
        with BLAS.single_threaded():
            drain()
            for f in futures:
                f.result()
    _HOT.last = time.monotonic()  # hot helpers keep spinning HOT_IDLE_SECONDS from here
    if failed:
        raise failed[0]


def run_side_by_side(jobs: Sequence[Callable[[], None]]) -> None:
    """Run independent ``jobs`` on this thread and the host's idle cores. Order them largest
    first: each thread takes the next job when it finishes one, so the shares end together."""
    helpers = 0 if len(jobs) < 2 else min(idle_cores(), len(jobs) - 1)
    if helpers < 1:
        for job in jobs:
            job()
        return
    _share(jobs, helpers)


# Below this much work (multiply-accumulates, elements) a batch is not worth handing to another
# thread.
PARALLEL_WORK = 1 << 23
_PIECES = 2  # ranges per core: a core slowed by other work takes fewer of them
_PIECE_WORK = 1 << 21


def on_idle_cores(job: Callable[[int, int], None], vertices: int, work: int) -> None:
    """``job(lo, hi)`` over ranges of ``vertices`` that together cover them once, run by this
    thread and helpers on idle cores; one call where the batch is small or the other cores are
    busy with a side-by-side run.

    ``work`` (multiply-accumulates, elements) decides whether splitting pays. Each vertex is
    computed whole by one call, so results never depend on the split.
    """
    worth = work >= PARALLEL_WORK and vertices > 1 and not getattr(_LOCAL, "side_by_side", False)
    idle = idle_cores() if worth else 0
    parts = max(1, min(_PIECES * CORES, vertices, work // _PIECE_WORK)) if idle > 0 else 1
    if parts == 1:
        job(0, vertices)
        return
    cuts = [vertices * p // parts for p in range(parts + 1)]
    jobs = [partial(job, lo, hi) for lo, hi in zip(cuts[:-1], cuts[1:], strict=True) if hi > lo]
    _share(jobs, min(idle, len(jobs) - 1))


def run_in_turn(jobs: Sequence[Callable[[], Any]]) -> None:
    """Run ``jobs`` one after another on this thread (a bound call of several small ones)."""
    for job in jobs:
        job()


def run_pieces(jobs: Sequence[Callable[[], None]]) -> None:
    """Run ``jobs`` (pieces the caller cut without asking how many cores there are) on this
    thread and the host's idle cores; in order on this thread inside a side-by-side run, whose
    other shares already keep the cores busy. Where a piece's arithmetic depends on its size
    (a merged GEMM), cutting by the work alone keeps the bits independent of the thread count."""
    if len(jobs) > 1 and not getattr(_LOCAL, "side_by_side", False):
        helpers = min(idle_cores(), len(jobs) - 1)
        if helpers > 0:
            _share(jobs, helpers)
            return
    for job in jobs:
        job()


_SCRATCH = threading.local()


def scratch(shape: tuple[int, ...], slot: str = "buf", dtype: Any = np.float32) -> np.ndarray:
    """A reused buffer of ``shape`` (no fresh pages per call), one per thread, ``slot`` and dtype;
    valid until the next call for the same slot that needs more room."""
    size, name = math.prod(shape), f"{slot}:{np.dtype(dtype).str}"
    buf = getattr(_SCRATCH, name, None)
    if buf is None or buf.size < size:
        buf = np.empty(max(size, 1 << 16), dtype)
        setattr(_SCRATCH, name, buf)
    return buf[:size].reshape(shape)


# -- what a loaded vertex group hands its codelet on every run --------------------------------------
class Frozen(np.ndarray):
    """A read-only array the fast engine hands a codelet on every run of one vertex group (a
    param, or a chunk's rows of it). Its ``memo`` keeps what a codelet derives from it once (a
    segment index, a rotation plan): state owned by the loaded group, living and dying with it,
    not a cache keyed by object identity or data address. Arrays derived from it get an empty
    memo of their own."""

    memo: dict

    def __array_finalize__(self, obj: Any) -> None:
        self.memo = {}


class FrozenList(list):
    """A vector-list field's arrays, the same objects on every run of one group, with a ``memo``
    like :class:`Frozen`'s."""

    __slots__ = ("memo",)

    def __init__(self, items: Any = ()) -> None:
        super().__init__(items)
        self.memo: dict = {}


def frozen(a: np.ndarray) -> Frozen:
    """``a`` as a read-only :class:`Frozen` view."""
    view = a.view(Frozen)
    view.flags.writeable = False
    return view


_MISSING = object()


def memo(owner: Any, key: Any, build: Callable[[], Any]) -> Any:
    """``build()``, kept in ``owner.memo`` under ``key`` where the owner is frozen (the fast
    engine's params and vector lists); built afresh for anything else (the reference engine's
    per-vertex copies). Two threads may both build a missing entry: the same value either way."""
    store = getattr(owner, "memo", None)
    if store is None:
        return build()
    value = store.get(key, _MISSING)
    if value is _MISSING:
        value = store[key] = build()
    return value
