"""The Engine: compiles a graph and its programs, holds device memory, runs programs.

>>> import numpy as np, softipu as sp
>>> from softipu import program as P
>>> g = sp.Graph(sp.targets.ipu_model(tiles=2))
>>> x = g.add_variable(sp.float32, (4,), name="x"); y = g.add_variable(sp.float32, (4,), name="y")
>>> sp.ops.map_linearly(g, x); sp.ops.map_linearly(g, y)
>>> eng = sp.Engine(g, [P.Copy(x, y)])
>>> eng.write_tensor(x, [1, 2, 3, 4]); eng.run(0); eng.read_tensor(y)
array([1., 2., 3., 4.], dtype=float32)
>>> eng.report.cycles > 0
True
"""

from __future__ import annotations

import contextlib
import difflib
import gc
import json
import math
import mmap
import operator
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from softipu.codelets.host import BLAS
from softipu.compiler import Executable, compile_graph
from softipu.debug import at, caller_location
from softipu.engine import fpchecks
from softipu.engine.distributed import process_group
from softipu.engine.estimate import StaticCost
from softipu.engine.fast import FastInterpreter
from softipu.engine.interpreter import RunLog
from softipu.engine.reference import ReferenceInterpreter
from softipu.engine.rounding import with_stochastic_rounding
from softipu.engine.storage import Storage
from softipu.engine.streams import HostStreams
from softipu.errors import CodeletError, EngineError, OptionError, ProgramError
from softipu.graph import program as P
from softipu.graph.graph import Graph
from softipu.graph.remote import RemoteBuffer
from softipu.graph.tensor import Tensor
from softipu.log import progress_job
from softipu.profile import Report

__all__ = ["Engine", "EngineOptions", "base_pages_array", "collector_paused", "host_pages"]


@dataclass(frozen=True, slots=True)
class EngineOptions:
    """Engine options, given as Poplar-style dotted keys: ``{"engine.reference": True}``.

    * ``engine.reference`` (bool): run the per-vertex reference interpreter.
    * ``debug.floatingPointExceptions`` (bool): raise on overflow, invalid and divide-by-zero
      inside codelets instead of producing inf/nan as the hardware does by default; underflow is
      not trapped, as on the IPU (:mod:`softipu.engine.fpchecks`).
    * ``prng.enableStochasticRounding`` (bool): float32 -> float16 casts round stochastically,
      keyed by ``prng.seed`` (int, default 0) (:mod:`softipu.engine.rounding`).
    * ``debug.allowOutOfMemory`` (bool): compile even when a tile overflows, to read the report.
    * ``opt.enableOutlining`` (bool): hold the code (vertex state, exchange code) of work that
      repeats an earlier compute set or copy exactly once, and charge each occurrence its input
      copy, as PopART's outlining of repeated layers does (:mod:`softipu.compiler.outline`).
    * ``estimate.whileIterations`` (int): turns an estimate-only engine assumes for each
      ``RepeatWhileTrue``/``RepeatWhileFalse`` (default 1).
    * ``debug.poisonUnwritten`` (bool): memory nothing has written (and a ``WriteUndef``'s tensor)
      holds NaN in floats, True in bools and 0xDEADBEEF's low bytes in integers instead of zeros,
      so a program that reads values it never wrote shows it (real device memory is not zeroed).
    * ``distributed.enabled`` (bool): this process holds only its instance's replicas and
      cross-replica copies reach the other processes over torch.distributed
      (:mod:`softipu.engine.distributed`); ``distributed.timeoutSeconds`` (int, default 60).
    * ``host.hugePages`` (bool, default True): the host arrays the engine makes take numpy's
      transparent-huge-page advice; False: base pages, cheaper to touch first, slower to stream
      through (see :func:`host_pages`; the torch training frontend sets False).

    Options given in the JSON object of the environment variable ``SOFTIPU_ENGINE_OPTIONS`` (as
    Poplar's ``POPLAR_ENGINE_OPTIONS``) apply to every engine; those passed in ``options`` win.
    """

    reference: bool = False
    floating_point_exceptions: bool = False
    allow_out_of_memory: bool = False
    outline: bool = False
    while_iterations: int = 1
    poison_unwritten: bool = False
    stochastic_rounding: bool = False
    seed: int = 0
    distributed: bool = False
    distributed_timeout: int = 60
    huge_pages: bool = True

    KEYS: ClassVar[dict[str, str]] = {
        "engine.reference": "reference",
        "debug.floatingPointExceptions": "floating_point_exceptions",
        "debug.allowOutOfMemory": "allow_out_of_memory",
        "opt.enableOutlining": "outline",
        "estimate.whileIterations": "while_iterations",
        "debug.poisonUnwritten": "poison_unwritten",
        "prng.enableStochasticRounding": "stochastic_rounding",
        "prng.seed": "seed",
        "distributed.enabled": "distributed",
        "distributed.timeoutSeconds": "distributed_timeout",
        "host.hugePages": "huge_pages",
    }
    ENVIRONMENT: ClassVar[str] = "SOFTIPU_ENGINE_OPTIONS"

    @classmethod
    def parse(cls, options: Mapping[str, Any] | None) -> EngineOptions:
        values: dict[str, Any] = {}
        where: dict[str, str] = {}  # attr -> where its value came from, for the error
        if options is not None and not isinstance(options, Mapping):
            raise OptionError(f"engine options are a dict such as {{'debug.poisonUnwritten': True}}, "
                              f"got {type(options).__name__}")
        for key, value in cls._from_environment().items():
            attr = cls._attr(key, f" (in ${cls.ENVIRONMENT})")
            values[attr], where[attr] = value, f" (in ${cls.ENVIRONMENT})"
        for key, value in (options or {}).items():
            attr = cls._attr(key, "")
            values[attr], where[attr] = value, ""
        for attr, value in values.items():
            want = type(getattr(cls(), attr))
            if type(value) is not want or (want is int and value < 0):
                kind = "non-negative int" if want is int else "bool"
                key = next(k for k, a in cls.KEYS.items() if a == attr)
                raise OptionError(f"engine option {key!r}{where[attr]} takes a {kind}, got {value!r}")
        return cls(**values)

    @classmethod
    def _attr(cls, key: str, where: str) -> str:
        attr = cls.KEYS.get(key) if isinstance(key, str) else None
        if attr is None:
            near = difflib.get_close_matches(key, list(cls.KEYS), n=2) if isinstance(key, str) else []
            hint = f"; did you mean {' or '.join(map(repr, near))}?" if near else ""
            raise OptionError(f"unknown engine option {key!r}{where}{hint}; options are {sorted(cls.KEYS)}")
        return attr

    @classmethod
    def _from_environment(cls) -> dict[str, Any]:
        text = os.environ.get(cls.ENVIRONMENT, "").strip()
        if not text:
            return {}
        try:
            found = json.loads(text)
        except json.JSONDecodeError as exc:
            found = exc
        if not isinstance(found, dict):
            raise OptionError(f"${cls.ENVIRONMENT} must hold a JSON object such as "
                              f'{{"debug.poisonUnwritten": true}}, got {text!r}')
        return found


@contextlib.contextmanager
def collector_paused():
    """Python's cyclic garbage collector held off while the engine loads or runs: both make many
    small objects that live on (views, bound calls, chain plans), and a full collection walks every
    object of the process — after a model's export and compile, millions (profiled: ~0.75 s of a
    4-layer BERT-base load went to collections). Garbage made meanwhile is collected afterwards.
    The torch frontend holds it off over a whole compile too (export, lowering, compile, load)."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


# numpy asks the kernel for transparent huge pages on every array of 4 MiB or more
# (madvise(MADV_HUGEPAGE)). Where the kernel's THP defrag setting is "madvise" (this machine's and
# many VMs' default), the first touch of such memory compacts memory synchronously: measured here,
# 1.4-2.2 s of system time per GiB against 0.31-0.39 s in base pages (np.zeros + fill of 1 GiB,
# four times in one process; the first GiB, while free huge pages last, 0.07 s). Once touched, huge
# pages are faster to stream through (fewer TLB misses): the 8,832-vertex AddOne bench runs 1.00-1.03x
# numpy's in-place add with them, 1.08-1.15x in base pages. So it is a choice per engine
# (``host.hugePages``): a training step first touches several GB (storage, gathered fields, the
# rollback's copies) and its frontend turns them off; inference engines keep numpy's default.
_SET_HUGEPAGE = getattr(getattr(np, "_core", None), "multiarray", None)
_SET_HUGEPAGE = getattr(_SET_HUGEPAGE, "_set_madvise_hugepage", None)


@contextlib.contextmanager
def host_pages(huge: bool = True):
    """With ``huge=False``, arrays made meanwhile come in base pages (numpy's huge-page advice off,
    restored after); with ``huge=True``, numpy's own choice. numpy's switch is process-wide:
    arrays other threads make meanwhile follow it too."""
    if huge or _SET_HUGEPAGE is None:
        yield
        return
    before = _SET_HUGEPAGE(False)
    try:
        yield
    finally:
        _SET_HUGEPAGE(before)


def base_pages_array(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """A zeroed array in memory mapped for it alone, so in base pages whatever the heap held:
    :func:`host_pages` only stops numpy advising new memory, and malloc may hand out a freed heap
    chunk that numpy advised before (the advice stays with the mapping)."""
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    if nbytes == 0:
        return np.zeros(shape, dtype)
    return np.frombuffer(mmap.mmap(-1, nbytes), dtype).reshape(shape)


class Engine:
    """Compile ``programs`` for ``graph`` and load them onto a simulated device.

    ``programs`` is a program or a list of programs; ``run(i)`` runs the i-th. With
    ``estimate_only=True`` nothing is allocated: ``run`` prices the program statically (see
    :mod:`softipu.engine.estimate`) and ``report`` tells what a real IPU would spend.
    """

    def __init__(self, graph: Graph, programs: P.Program | Iterable[P.Program],
                 options: Mapping[str, Any] | None = None, *, estimate_only: bool = False) -> None:
        if not isinstance(graph, Graph):
            raise EngineError(f"Engine needs a softipu Graph, got {type(graph).__name__}")
        self.options = EngineOptions.parse(options)
        with progress_job(f"Engine on {graph.target.name}", ("compile", "load")) as bar:  # terminals only
            executable = compile_graph(graph, programs, allow_out_of_memory=self.options.allow_out_of_memory,
                                       outline=self.options.outline)
            if bar is not None:
                bar.stage("load")
            self._load(graph, executable, estimate_only)

    @classmethod
    def from_executable(cls, executable: Executable, graph: Graph, options: Mapping[str, Any] | None = None,
                        *, estimate_only: bool = False) -> Engine:
        """An engine for an executable compiled earlier for ``graph`` (e.g. one loaded by
        :func:`softipu.compiler.serialize.load_executable`), without compiling again."""
        self = cls.__new__(cls)
        self.options = EngineOptions.parse(options)
        self._load(graph, executable, estimate_only)
        return self

    def _load(self, graph: Graph, executable: Executable, estimate_only: bool) -> None:
        with collector_paused(), host_pages(self.options.huge_pages):
            self._load_now(graph, executable, estimate_only)

    def _load_now(self, graph: Graph, executable: Executable, estimate_only: bool) -> None:
        self.graph = graph
        self.estimate_only = estimate_only
        self.executable: Executable = executable
        self.log = RunLog(len(self.executable.steps))
        self._static = StaticCost(self.executable, self.options.while_iterations)
        self._errstate = fpchecks.TRAPS if self.options.floating_point_exceptions else fpchecks.IGNORE
        if estimate_only:
            return
        group = process_group(graph.replication_factor, self.options.distributed_timeout) \
            if self.options.distributed else None  # None: one process holds every replica
        self.storage = Storage(self.executable, poison=self.options.poison_unwritten, group=group)
        self.streams = HostStreams(self.executable.streams, self.storage.replicas)
        interpreter = ReferenceInterpreter if self.options.reference else FastInterpreter
        if self.options.stochastic_rounding:
            interpreter = with_stochastic_rounding(interpreter, self.options.seed)
        self._interpreter = interpreter(self.executable, self.storage, self.streams, self.log)

    @property
    def num_programs(self) -> int:
        return len(self.executable.programs)

    def run(self, index: int = 0) -> None:
        """Run program ``index`` of the list the engine was made with."""
        program = self.executable.programs[self._program_index(index)]
        start = self.log.cycles
        if self.estimate_only:
            cycles, counts = self._static.cost(program)
            for step, times in sorted(counts.items()):
                if times:  # a loop of zero turns runs nothing
                    self.log.add(step, self.executable.steps[step].cycles, times)
        else:
            with np.errstate(**self._errstate), BLAS.single_threaded(), collector_paused(), \
                    host_pages(self.options.huge_pages):
                try:
                    self._interpreter.run(program)
                except CodeletError as exc:
                    if isinstance(exc.__cause__, FloatingPointError):
                        raise fpchecks.reword(exc) from exc.__cause__
                    raise
        self.log.runs.append((int(index), self.log.cycles - start))

    def _program_index(self, index: Any) -> int:
        try:
            i = operator.index(index)
        except TypeError:
            raise ProgramError(f"program index must be an int, got {index!r}") from None
        if not 0 <= i < self.num_programs:
            raise ProgramError(f"program index {i} is out of range: this engine has "
                               f"{self.num_programs} program(s), 0..{self.num_programs - 1}")
        return i

    @property
    def report(self) -> Report:
        """Memory, cycles and steps of everything run so far (see :class:`softipu.Report`)."""
        return Report.build(self.executable, self.log, estimate_only=self.estimate_only)

    def write_tensor(self, tensor: Tensor, values: Any) -> None:
        """Set a tensor's values: ``tensor.shape`` for every replica, or one per replica."""
        self._data("write_tensor").write(self._own(tensor, "write_tensor"), values)

    def read_tensor(self, tensor: Tensor) -> np.ndarray:
        """A copy of a tensor's values (with a leading replica axis when replicated)."""
        return self._data("read_tensor").read(self._own(tensor, "read_tensor"))

    def write_remote_buffer(self, buffer: RemoteBuffer, values: Any, repeat: int | None = None) -> None:
        """Poplar's ``copyToRemoteBuffer``: host values into a remote buffer (every row, or ``repeat``)."""
        self._data("write_remote_buffer")
        self._interpreter.remote.write(buffer, values, repeat)

    def read_remote_buffer(self, buffer: RemoteBuffer) -> np.ndarray:
        """Poplar's ``copyFromRemoteBuffer``: a remote buffer's rows (leading replica axis if replicated)."""
        self._data("read_remote_buffer")
        return self._interpreter.remote.read(buffer)

    def connect_stream(self, name: str, data: Any, replica: int | None = None) -> None:
        """Connect a host array (a ring of transfers) or a callback to the stream ``name``.

        Unless ``replica`` is given, every replica uses this connection in turn, so one
        ``Copy`` of a host-to-device stream consumes one transfer per replica.
        """
        storage = self._data("connect_stream")
        if replica is not None and storage.group is not None:  # a global replica number
            replica = storage.group.local_row(replica, f"connect_stream({name!r})")
        self.streams.connect(name, data, replica)

    def _data(self, what: str) -> Storage:
        if self.estimate_only:
            raise EngineError(f"{what}: this engine is estimate-only and holds no tensor data; "
                              "make it without estimate_only=True to run on values")
        return self.storage

    def _own(self, tensor: Any, what: str) -> Tensor:
        if not isinstance(tensor, Tensor):
            raise EngineError(f"{what}{at(caller_location())} needs a tensor, got {type(tensor).__name__}")
        if tensor.graph is not self.graph:
            raise EngineError(f"{what}{at(caller_location())}: tensor {tensor.name} belongs to another graph "
                              "than this engine's")
        starts, lengths = tensor.runs()
        if starts.size and int((starts + lengths).max()) > self.executable.space_sizes.get(tensor.dtype, 0):
            raise EngineError(f"{what}{at(caller_location())}: tensor {tensor.name} was added to the graph "
                              "after this engine was compiled; make a new Engine")
        return tensor
