"""Compiled executables on disk, in a format whose loading never runs code: JSON and plain arrays.

An executable is saved as a directory holding

* ``manifest.json`` — every object of the executable as tagged JSON: the target, variables, tile
  mappings, streams, compute sets and their vertex groups, the program trees and functions, the
  priced steps and which program node each belongs to, the memory plan, plus the caller's ``extra``;
* ``arrays.npz`` — every numpy array, packed into one flat pool per dtype (regular integer arrays,
  such as address ranges and tile numbers, stored as runs of equal steps), read with
  ``np.load(..., allow_pickle=False)``.

Decoding makes only the softipu types listed here, through their validating constructors. Codelets
are stored by name (:mod:`softipu.graph.codelet_registry`) and rebuilt from this process's
registry; a codelet that cannot be named makes :func:`save_executable` raise
:class:`ExecutableFormatError`, and one that cannot be found makes :func:`load_executable` raise it.

Tensors point at their graph, so loading also rebuilds a graph skeleton: the variables, address
spaces (mapped as compiled), compute sets, functions and streams, without vertex tables. An engine
runs the pair with :meth:`softipu.Engine.from_executable`.

>>> import tempfile, numpy as np, softipu as sp
>>> from softipu import program as P
>>> g = sp.Graph(sp.targets.ipu_model(tiles=2))
>>> x = g.add_variable(sp.float32, (4,), name="x"); y = g.add_variable(sp.float32, (4,), name="y")
>>> sp.ops.map_linearly(g, x); sp.ops.map_linearly(g, y)
>>> path = tempfile.mkdtemp() + "/copy"
>>> _ = save_executable(sp.Engine(g, [P.Copy(x, y)]).executable, path, {"note": "a copy"})
>>> exe, graph, extra = load_executable(path)
>>> eng = sp.Engine.from_executable(exe, graph)
>>> x2, y2 = (sp.Tensor(graph, v.dtype, v.shape, v.start, (1,)) for v in graph.variables)
>>> eng.write_tensor(x2, [1, 2, 3, 4]); eng.run(0)
>>> eng.read_tensor(y2), extra
(array([1., 2., 3., 4.], dtype=float32), {'note': 'a copy'})
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np

from softipu.compiler.costs import Step, StepKind
from softipu.compiler.executable import CompiledComputeSet, Executable, VertexGroup
from softipu.compiler.memory import MemoryPlan
from softipu.debug import UNKNOWN, SourceLocation
from softipu.dtypes import DType, as_dtype
from softipu.errors import SoftIPUError
from softipu.graph import program as P
from softipu.graph.codelet_registry import UnnameableCodelet, codelet_name, rebuild_codelet
from softipu.graph.graph import AddressSpace, ComputeSet, Function, Graph, Variable
from softipu.graph.mapping import ResolvedMapping
from softipu.graph.remote import RemoteBuffer
from softipu.graph.streams import DataStream, StreamDirection
from softipu.graph.tensor import Tensor
from softipu.graph.vertex import Direction
from softipu.graph.vertices import VertexTable
from softipu.target import Target

__all__ = ["ExecutableFormatError", "save_executable", "load_executable", "FORMAT", "FORMAT_VERSION",
           "MANIFEST", "ARRAYS"]

FORMAT = "softipu-executable"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ARRAYS = "arrays.npz"

# The only array dtypes a file may hold (numpy's dtype.str), by pool name.
_POOLS = {"b1": "|b1", "i1": "|i1", "u1": "|u1", "i2": "<i2", "u2": "<u2", "i4": "<i4", "u4": "<u4",
          "i8": "<i8", "u8": "<u8", "f2": "<f2", "f4": "<f4", "f8": "<f8"}
_POOL_OF = {np.dtype(s).str: k for k, s in _POOLS.items()}
_DTYPE_OF = {s: np.dtype(s) for s in _POOLS.values()}
# Integer arrays at least this long are stored as runs of equal steps when that is much smaller.
_RLE_MIN = 1024
# Compute set and function ids are indices into the graph's lists: a damaged one must not make a
# list of 2**62 placeholders.
_MAX_ID = 1 << 22
# Arrays over this many bytes are checked against the host's free memory before decoding.
_BIG_ARRAY = 1 << 26

_NODES: dict[str, type] = {c.__name__: c for c in (
    P.Execute, P.Copy, P.Repeat, P.RepeatWhileTrue, P.RepeatWhileFalse, P.If, P.Switch, P.Call,
    P.WriteUndef, P.PrintTensor, P.Sync, P.CycleCount, P.CrossReplicaCopy, P.RemoteCopy)}
_ENUMS: dict[str, type[enum.Enum]] = {c.__name__: c for c in (StepKind, P.SyncType, StreamDirection)}


class ExecutableFormatError(SoftIPUError, ValueError):
    """An executable cannot be saved (it holds something without a safe form) or a file is not a
    readable executable (corrupt, another format version, or naming a codelet not found here)."""


# -- saving ----------------------------------------------------------------------------------------
def save_executable(executable: Executable, path: str | os.PathLike, extra: dict[str, Any] | None = None
                    ) -> int:
    """Write ``executable`` (and ``extra``: JSON values, DTypes and numpy arrays) to the directory
    ``path``; returns the bytes written. Raises :class:`ExecutableFormatError` when something in it
    has no safe form (e.g. a codelet defined inside a function)."""
    writer = _Writer(executable)
    manifest = writer.manifest(extra or {})
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ARRAYS, "wb") as f:
        np.savez(f, **writer.arrays.pools())
    text = json.dumps(manifest, separators=(",", ":"), allow_nan=False)
    (directory / MANIFEST).write_text(text, encoding="utf-8")
    return sum(p.stat().st_size for p in (directory / ARRAYS, directory / MANIFEST))


class _ArrayPool:
    """Arrays as entries of flat per-dtype pools (a numpy file of thousands of tiny arrays is slow)."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []
        self._chunks: dict[str, list[np.ndarray]] = {}
        self._sizes: dict[str, int] = {}
        self._seen: dict[int, tuple[np.ndarray, int]] = {}

    def add(self, a: np.ndarray) -> int:
        seen = self._seen.get(id(a))
        if seen is not None and seen[0] is a:
            return seen[1]
        entry = self._entry(a)
        self.entries.append(entry)
        self._seen[id(a)] = (a, len(self.entries) - 1)
        return len(self.entries) - 1

    def _entry(self, a: np.ndarray) -> dict[str, Any]:
        if a.dtype.str not in _POOL_OF:
            raise ExecutableFormatError(f"cannot save an array of {a.dtype}")
        shape = list(a.shape)
        repeated = [s == 0 and n > 1 for s, n in zip(a.strides, a.shape, strict=True)]
        if a.size and any(repeated):  # a broadcast view: keep it small
            base = a[tuple(slice(0, 1) if r else slice(None) for r in repeated)]
            return {"broadcast": self.add(np.array(base)), "shape": shape}
        integer = a.dtype.kind in "iu" and a.dtype.itemsize < 8 or a.dtype.kind == "i"
        outer = _outer(a) if integer else None
        if outer is not None:  # every row the same pattern from its own start: two small arrays
            return {"outer": [self.add(outer[0]), self.add(outer[1])], "dtype": a.dtype.str, "shape": shape}
        flat = np.ascontiguousarray(a).reshape(-1)
        if integer:
            runs = _runs(flat)
            if runs is not None:
                deltas, lengths = runs
                return {"rle": [int(flat[0]), self._put(deltas), self._put(lengths)], "dtype": a.dtype.str,
                        "shape": shape}
        return {"raw": self._put(flat), "dtype": a.dtype.str, "shape": shape}

    def _put(self, flat: np.ndarray) -> list[Any]:
        key = _POOL_OF[flat.dtype.str]
        offset = self._sizes.get(key, 0)
        self._chunks.setdefault(key, []).append(flat)
        self._sizes[key] = offset + flat.size
        return [key, offset, int(flat.size)]

    def pools(self) -> dict[str, np.ndarray]:
        return {k: np.concatenate(chunks) for k, chunks in self._chunks.items()}


def _outer(a: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(row starts, row pattern) when ``a == starts[:, None] + pattern`` over its last axis (the
    address arrays of regular gathers), else None."""
    if a.ndim < 2 or a.size < _RLE_MIN or a.shape[-1] < 2 or a.size == a.shape[-1]:
        return None
    rows = a.reshape(-1, a.shape[-1])
    starts, pattern = np.ascontiguousarray(rows[:, 0]), rows[0] - rows[0, 0]
    if not np.array_equal(rows - starts[:, None], np.broadcast_to(pattern, rows.shape)):
        return None
    return starts, pattern


def _runs(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(step of each run, its length) when the array is a few runs of equal steps, else None."""
    if flat.size < _RLE_MIN:
        return None
    d = np.diff(flat.astype(np.int64))
    change = np.flatnonzero(d[1:] != d[:-1]) + 1
    if (change.size + 1) * 16 * 4 > flat.nbytes:  # not worth it under a 4x saving
        return None
    starts = np.concatenate(([0], change))
    lengths = np.diff(np.concatenate((starts, [d.size])))
    return d[starts], lengths.astype(np.int64)


class _Writer:
    """Tables of the objects of one executable, encoded as tagged JSON."""

    def __init__(self, executable: Executable) -> None:
        self.exe = executable
        self.arrays = _ArrayPool()
        self.graph: Graph | None = None
        self.locations: dict[SourceLocation, int] = {}
        self.tensors: dict[int, int] = {}
        self.tensor_rows: list[list[Any]] = []
        self._keep: list[Any] = []  # objects whose id() keys a table while it is built
        self.codelets: dict[type, int] = {}
        self.codelet_names: list[Any] = []
        self.nodes: dict[int, int] = {}
        self.node_rows: list[dict[str, Any]] = []
        self.compute_sets: dict[int, ComputeSet] = {}
        self.functions: dict[int, list[Any]] = {}
        self._encoders = self._make_encoders()

    def manifest(self, extra: dict[str, Any]) -> dict[str, Any]:
        exe = self.exe
        body = {
            "programs": [self.node(p) for p in exe.programs],
            "function_programs": [[fid, self.node(p)] for fid, p in exe.functions.items()],
            "compiled": [[cs_id, [self.group(g) for g in c.groups]] for cs_id, c in exe.compute_sets.items()],
            "steps": self.records(exe.steps, Step),
            "step_of": [[self._node_of(key), step] for key, step in exe.step_of.items()],
            "memory": None if exe.memory is None else self.fields(exe.memory),
            "variables": [[v.id, v.name, v.dtype.name, list(v.shape), v.start, self.location(v.location),
                           self.value(v.initial_value)] for v in exe.variables],
            "space_sizes": [[d.name, n] for d, n in exe.space_sizes.items()],
            "mappings": [[d.name, self.value(m.starts), self.value(m.ends), self.value(m.tiles)]
                         for d, m in exe.mappings.items()],
            "streams": [[s.name, s.dtype.name, s.num_elements, s.direction.value, self.location(s.location)]
                        for s in exe.streams.values()],
            "pass_seconds": [[n, self.value(float(t))] for n, t in exe.pass_seconds],
            "extra": self.value(extra),
        }
        for cs in exe.compute_sets.values():
            self.compute_sets.setdefault(cs.compute_set.id, cs.compute_set)
        return {
            "format": FORMAT, "version": FORMAT_VERSION,
            "target": {f.name: self.value(getattr(exe.target, f.name)) for f in dataclasses.fields(Target)},
            "replication_factor": exe.replication_factor,
            **body,
            "compute_sets": [[cs.id, cs.name, self.location(cs.location), cs.op]
                             for cs in sorted(self.compute_sets.values(), key=lambda c: c.id)],
            "functions": [[fid, *row] for fid, row in sorted(self.functions.items())],
            "nodes": self.node_rows,
            "codelets": self.codelet_names,
            "tensors": self.tensor_rows,
            "locations": [[loc.filename, loc.lineno] for loc in self.locations],
            "arrays": self.arrays.entries,
        }

    # -- tables --------------------------------------------------------------------------------
    def location(self, loc: SourceLocation) -> int:
        return self.locations.setdefault(loc, len(self.locations))

    def tensor(self, t: Tensor) -> int:
        found = self.tensors.get(id(t))
        if found is not None:
            return found
        if self.graph is None:
            self.graph = t.graph
        elif t.graph is not self.graph:
            raise ExecutableFormatError(f"tensor {t.name} belongs to another graph than the executable's")
        index = None if t.index is None else self.arrays.add(t.index)
        self.tensor_rows.append([t.dtype.name, list(t.shape), int(t.offset), list(t.strides), index])
        self._keep.append(t)
        self.tensors[id(t)] = len(self.tensor_rows) - 1
        return len(self.tensor_rows) - 1

    def codelet(self, cls: type) -> int:
        found = self.codelets.get(cls)
        if found is None:
            try:
                self.codelet_names.append(codelet_name(cls))
            except UnnameableCodelet as exc:
                raise ExecutableFormatError(f"cannot save: {exc}") from None
            found = self.codelets[cls] = len(self.codelet_names) - 1
        return found

    def function(self, fn: Function) -> int:
        if fn.id not in self.functions:
            program = self.exe.functions.get(fn.id, fn.program)
            self.functions[fn.id] = [fn.name, self.location(fn.location), self.node(program)]
        return fn.id

    def node(self, node: P.Program) -> int:
        """The node's row; children first, so rows decode in order."""
        found = self.nodes.get(id(node))
        if found is not None:
            return found
        if isinstance(node, P.Sequence):
            row = {"k": "Sequence", "programs": [self.node(p) for p in node.programs], "name": node.name,
                   "location": self.location(node.location)}
        elif _NODES.get(type(node).__name__) is type(node):
            row = {"k": type(node).__name__} | {f.name: self.value(getattr(node, f.name))
                                               for f in dataclasses.fields(node) if f.init}
        elif isinstance(node, P.Repeat):  # a collective's ring run whole: saved as its steps
            row = {"k": "Repeat"} | {f.name: self.value(getattr(node, f.name))
                                     for f in dataclasses.fields(P.Repeat) if f.init}
        else:
            raise ExecutableFormatError(f"cannot save a {type(node).__name__} program node")
        self.node_rows.append(row)
        self._keep.append(node)
        self.nodes[id(node)] = len(self.node_rows) - 1
        return len(self.node_rows) - 1

    def _node_of(self, key: int) -> int:
        found = self.nodes.get(key)
        if found is None:
            raise ExecutableFormatError("a priced step belongs to no program node of the executable")
        return found

    def group(self, g: VertexGroup) -> dict[str, Any]:
        locs = np.fromiter((self.location(loc) for loc in g.locations), np.int32, len(g.locations))
        return {"codelet": self.codelet(g.codelet), "tiles": self.value(g.tiles),
                "vertex_indices": self.value(g.vertex_indices), "locations": self.value(locs),
                "fields": [[name, self.value(v)] for name, v in g.fields.items()]}

    def records(self, items: Any, cls: type) -> dict[str, Any]:
        names = [f.name for f in dataclasses.fields(cls) if f.init]
        return {"fields": names, "rows": [[self.value(getattr(x, n)) for n in names] for x in items]}

    def fields(self, obj: Any) -> dict[str, Any]:
        return {f.name: self.value(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}

    # -- values --------------------------------------------------------------------------------
    def value(self, v: Any) -> Any:
        """Tagged JSON for one value: the allowed types, each by its table or as plain JSON."""
        if v is None or type(v) in (bool, int, str):
            return v
        for kind, encode in self._encoders:
            if isinstance(v, kind):
                return encode(v)
        raise ExecutableFormatError(f"cannot save a {type(v).__name__} value")

    def _make_encoders(self) -> tuple[tuple[Any, Any], ...]:
        return (
            (float, lambda v: {"f": repr(float(v))}),  # nan, inf and -0.0 survive
            (np.generic, lambda v: self.value(v.item())),
            (np.ndarray, lambda v: {"a": self.arrays.add(v)}),
            (DType, lambda v: {"dt": v.name}),
            (enum.Enum, self._enum),
            (SourceLocation, lambda v: {"l": self.location(v)}),
            (Tensor, lambda v: {"t": self.tensor(v)}),
            (DataStream, lambda v: {"s": v.name}),
            (RemoteBuffer, lambda v: {"rb": [v.name, v.dtype.name, list(v.shape), v.repeats,
                                             self.location(v.location)]}),
            (ComputeSet, lambda v: {"cs": self.compute_sets.setdefault(v.id, v).id}),
            (Function, lambda v: {"fn": self.function(v)}),
            (P.Program, lambda v: {"p": self.node(v)}),
            (tuple, lambda v: {"tu": [self.value(x) for x in v]}),
            (list, lambda v: {"li": [self.value(x) for x in v]}),
            (dict, lambda v: {"di": [[self.value(k), self.value(x)] for k, x in v.items()]}),
        )

    def _enum(self, v: enum.Enum) -> dict[str, Any]:
        if _ENUMS.get(type(v).__name__) is not type(v):
            raise ExecutableFormatError(f"cannot save a {type(v).__name__} value")
        return {"e": [type(v).__name__, v.name]}


# -- loading ---------------------------------------------------------------------------------------
def load_executable(path: str | os.PathLike) -> tuple[Executable, Graph, dict[str, Any]]:
    """(executable, its graph skeleton, the ``extra`` it was saved with) from the directory ``path``.

    Raises :class:`ExecutableFormatError` for anything but a complete file of this format version
    whose codelets this process can name; nothing in the file is ever executed or unpickled.
    """
    directory = Path(path)
    try:
        with _open_plain(directory, MANIFEST) as f:
            manifest = json.loads(f.read().decode("utf-8"))
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise ExecutableFormatError(f"{directory} is not a saved softipu executable")
        if manifest.get("version") != FORMAT_VERSION:
            raise ExecutableFormatError(f"{directory} holds format version {manifest.get('version')!r}; "
                                        f"this softipu reads version {FORMAT_VERSION}")
        with _open_plain(directory, ARRAYS) as f, np.load(f, allow_pickle=False) as npz:
            pools = {key: npz[key] for key in npz.files}
        return _Reader(manifest, pools).load()
    except ExecutableFormatError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever a damaged file provokes, it is not loadable
        raise ExecutableFormatError(f"cannot load the executable in {directory}: "
                                    f"{type(exc).__name__}: {exc}") from None


def _checked_size(shape: tuple[int, ...], itemsize: int) -> int:
    """The elements of an array of ``shape`` (decoded ``itemsize`` bytes each), refused before
    allocating when the shape is negative or the array would not fit in the host's free memory (a
    damaged or hostile size)."""
    n = math.prod(shape)
    if min(shape, default=0) < 0:
        raise ExecutableFormatError(f"an array has the negative shape {list(shape)}")
    nbytes = n * itemsize
    if nbytes > _BIG_ARRAY:
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            free = 1 << 40
        if nbytes > free:
            raise ExecutableFormatError(f"an array of shape {list(shape)} would need {nbytes} bytes, more "
                                        f"than the host's {free} free bytes: a damaged size")
    return n


def _open_plain(directory: Path, name: str) -> Any:
    """``directory / name`` opened for reading if it is a plain file: a symlink (which could point
    outside the folder, at ``/dev/zero``), a pipe (a read that never ends) or a device is refused."""
    path = directory / name
    try:
        mode = os.lstat(path).st_mode
    except OSError as exc:
        raise ExecutableFormatError(f"{directory} is not a saved softipu executable: no {name} "
                                    f"({exc.strerror})") from None
    if not stat.S_ISREG(mode):
        raise ExecutableFormatError(f"{path} is not a plain file (a link, pipe, device or folder): a saved "
                                    "executable is read only from plain files inside its folder")
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    return os.fdopen(os.open(path, flags), "rb")


# What each field of a Step holds (its annotations are strings: ``from __future__ import annotations``).
_STEP_TYPES = {"int": int, "float": (int, float), "str": str, "bool": bool, "StepKind": StepKind,
               "SourceLocation": SourceLocation, "np.ndarray": np.ndarray}


def _checked_step(step: Step) -> Step:
    """``step`` if each field holds its type: a damaged row (a list for a cycle count) would fail far
    from here, as a TypeError in the engine's cost sums."""
    for f in dataclasses.fields(step):
        value = getattr(step, f.name)
        want = _STEP_TYPES.get(str(f.type))
        if want is not None and (not isinstance(value, want) or (want is int and isinstance(value, bool))):
            raise ExecutableFormatError(f"step {step.index!r}'s {f.name} is a {type(value).__name__}, not "
                                        f"{f.type}: a damaged manifest")
    return step


class _Reader:
    def __init__(self, manifest: dict[str, Any], pools: dict[str, np.ndarray]) -> None:
        self.m = manifest
        self._decoders = self._make_decoders()
        for key, pool in pools.items():
            if _POOLS.get(key) != pool.dtype.str or pool.ndim != 1:
                raise ExecutableFormatError(f"array pool {key!r} holds {pool.dtype} {pool.shape}")
        self.pools = pools
        self.entries = manifest["arrays"]
        self.arrays: dict[int, np.ndarray] = {}
        self.locations = [SourceLocation(str(f), int(n)) for f, n in manifest["locations"]]
        self.graph = Graph(Target(**{k: self.value(v) for k, v in manifest["target"].items()}),
                           int(manifest["replication_factor"]))
        self.tensors: list[Tensor | None] = [None] * len(manifest["tensors"])
        self.nodes: list[P.Program] = []
        self.compute_sets = {int(i): ComputeSet(int(i), str(n), self.locations[loc], str(op))
                             for i, n, loc, op in manifest["compute_sets"]}
        self.function_rows = {int(row[0]): row for row in manifest["functions"]}
        for what, ids in (("compute set", self.compute_sets), ("function", self.function_rows)):
            if ids and not 0 <= min(ids) <= max(ids) < _MAX_ID:  # the gaps are filled: bound them
                raise ExecutableFormatError(f"a {what} id of {min(ids)} or {max(ids)} is out of range")
        self.functions: dict[int, Function] = {}
        self.streams = {str(n): DataStream(str(n), as_dtype(str(d)), int(k), StreamDirection(d2),
                                           self.locations[loc]) for n, d, k, d2, loc in manifest["streams"]}

    def load(self) -> tuple[Executable, Graph, dict[str, Any]]:
        m = self.m
        variables = tuple(Variable(int(i), str(n), as_dtype(str(d)), tuple(int(x) for x in s), int(start),
                                   self.locations[loc], self.value(init))
                          for i, n, d, s, start, loc, init in m["variables"])
        for v in variables:  # a damaged value (a list) would fail in the engine, far from here
            if v.initial_value is not None and not isinstance(v.initial_value, np.ndarray):
                raise ExecutableFormatError(f"variable {v.name!r}'s initial value is a "
                                            f"{type(v.initial_value).__name__}, not an array: a damaged "
                                            "manifest")
        space_sizes = {as_dtype(str(d)): int(n) for d, n in m["space_sizes"]}
        for dtype, size in space_sizes.items():  # the engine allocates each space, once per replica
            _checked_size((self.graph.replication_factor, size), dtype.numpy.itemsize)
        mappings = {as_dtype(str(d)): ResolvedMapping(self.value(s), self.value(e), self.value(t))
                    for d, s, e, t in m["mappings"]}
        self._fill_graph(variables, space_sizes, mappings)
        for row in m["nodes"]:
            self.nodes.append(self.node(row))
        self._fill_functions()
        codelets = [rebuild_codelet(name) for name in m["codelets"]]
        compiled = {int(cs_id): CompiledComputeSet(self.compute_sets[int(cs_id)],
                                                   tuple(self.group(g, codelets) for g in groups))
                    for cs_id, groups in m["compiled"]}
        names = m["steps"]["fields"]
        steps = tuple(_checked_step(Step(**dict(zip(names, (self.value(v) for v in row), strict=True))))
                      for row in m["steps"]["rows"])
        memory = m["memory"] and MemoryPlan(**{k: self.value(v) for k, v in m["memory"].items()})
        executable = Executable(
            target=self.graph.target, replication_factor=self.graph.replication_factor,
            space_sizes=space_sizes, variables=variables, mappings=mappings, compute_sets=compiled,
            programs=tuple(self.nodes[int(i)] for i in m["programs"]),
            functions={int(fid): self.nodes[int(i)] for fid, i in m["function_programs"]},
            streams=self.streams, steps=steps,
            step_of={id(self.nodes[int(i)]): int(step) for i, step in m["step_of"]},
            memory=memory, pass_seconds=tuple((str(n), self.value(t)) for n, t in m["pass_seconds"]))
        extra = self.value(m["extra"])
        if not isinstance(extra, dict):
            raise ExecutableFormatError("the executable's extra data is not a dict")
        return executable, self.graph, extra

    def _fill_graph(self, variables: tuple[Variable, ...], space_sizes: dict[DType, int],
                    mappings: dict[DType, ResolvedMapping]) -> None:
        """The graph the tensors point at: variables, spaces mapped as compiled, compute sets,
        streams. It has no vertex tables: it is for reading, not for adding to."""
        g = self.graph
        g.variables = list(variables)
        g._names = {v.name for v in variables}
        for dtype, size in space_sizes.items():
            space = g.spaces[dtype] = AddressSpace(dtype)
            space.variables = sorted((v for v in variables if v.dtype is dtype), key=lambda v: v.start)
            space.starts = [v.start for v in space.variables]
            space.size = size
            found = mappings.get(dtype)
            if found is not None:
                space.mapping.add(found.starts, found.ends - found.starts, found.tiles, UNKNOWN)
        count = max(self.compute_sets, default=-1) + 1
        g.compute_sets = [self.compute_sets.get(i) or ComputeSet(i, f"<not compiled {i}>", UNKNOWN)
                          for i in range(count)]
        self.compute_sets = {cs.id: cs for cs in g.compute_sets}
        g.vertex_tables = [VertexTable(cs) for cs in g.compute_sets]
        g.streams = dict(self.streams)

    def _fill_functions(self) -> None:
        for fid in self.function_rows:
            self.function(fid)
        fns = self.graph.functions
        for i, fn in enumerate(fns):
            if fn is None:
                fns[i] = Function(i, f"<not compiled {i}>", P.Sequence(), UNKNOWN)

    # -- objects -------------------------------------------------------------------------------
    def tensor(self, i: int) -> Tensor:
        found = self.tensors[i]
        if found is None:
            d, shape, offset, strides, index = self.m["tensors"][i]
            found = Tensor(self.graph, as_dtype(str(d)), tuple(int(x) for x in shape), int(offset),
                           tuple(int(x) for x in strides), None if index is None else self.array(int(index)))
            self.tensors[i] = found
        return found

    def function(self, fid: int) -> Function:
        found = self.functions.get(fid)
        if found is None:
            _, name, loc, node = self.function_rows[fid]
            found = self.functions[fid] = Function(fid, str(name), self.nodes[int(node)], self.locations[loc])
            while len(self.graph.functions) <= fid:
                self.graph.functions.append(None)  # type: ignore[arg-type]
            self.graph.functions[fid] = found
        return found

    def node(self, row: dict[str, Any]) -> P.Program:
        kind = row["k"]
        if kind == "Sequence":
            seq = object.__new__(P.Sequence)
            seq.programs = tuple(self.nodes[int(i)] for i in row["programs"])  # type: ignore[assignment]
            seq.location, seq.name = self.locations[row["location"]], str(row["name"])
            return seq
        cls = _NODES[kind]
        return cls(**{k: self.value(v) for k, v in row.items() if k != "k"})

    def group(self, g: dict[str, Any], codelets: list[type]) -> VertexGroup:
        codelet = codelets[int(g["codelet"])]
        fields = {str(name): self.value(v) for name, v in g["fields"]}
        if fields.keys() != codelet.fields.keys():
            raise ExecutableFormatError(f"a {codelet.__name__} group has fields {sorted(fields)}, "
                                        f"not {sorted(codelet.fields)}")
        for name, f in codelet.fields.items():
            value = fields.get(name)
            want = np.ndarray if f.direction is Direction.PARAM else (Tensor, tuple)
            if not isinstance(value, want):
                raise ExecutableFormatError(f"field {name!r} of a {codelet.__name__} group is "
                                            f"{type(value).__name__}")
        locs = self.value(g["locations"])
        return VertexGroup(codelet, self.value(g["tiles"]), fields, self.value(g["vertex_indices"]),
                           tuple(self.locations[i] for i in locs.tolist()))

    def value(self, v: Any) -> Any:
        if v is None or type(v) in (bool, int, str):
            return v
        if type(v) is not dict or len(v) != 1:
            raise ExecutableFormatError(f"unexpected value {str(v)[:80]!r} in the manifest")
        (tag, x), = v.items()
        decode = self._decoders.get(tag)
        if decode is None:
            raise ExecutableFormatError(f"unknown tag {tag!r} in the manifest")
        return decode(x)

    def _make_decoders(self) -> dict[str, Any]:
        return {
            "f": float, "a": lambda x: self.array(int(x)), "dt": lambda x: as_dtype(str(x)),
            "e": lambda x: _ENUMS[x[0]][x[1]], "l": lambda x: self.locations[x],
            "t": lambda x: self.tensor(int(x)), "s": lambda x: self.streams[x],
            "rb": self.remote_buffer,
            "cs": lambda x: self.compute_sets[x], "fn": lambda x: self.function(int(x)),
            "p": lambda x: self.nodes[int(x)], "tu": lambda x: tuple(self.value(y) for y in x),
            "li": lambda x: [self.value(y) for y in x],
            "di": lambda x: {self.value(k): self.value(y) for k, y in x},
        }

    def remote_buffer(self, x: list) -> RemoteBuffer:
        """A remote buffer of the loaded graph, made on its first mention (one object a name)."""
        try:
            name, dtype, shape, repeats, loc = x
            found = self.graph.remote_buffers.get(str(name))
            if found is None:
                found = RemoteBuffer(str(name), as_dtype(str(dtype)), tuple(int(n) for n in shape),
                                     int(repeats), self.locations[loc])
                self.graph.remote_buffers[found.name] = found
        except (TypeError, ValueError, KeyError, IndexError) as e:
            raise ExecutableFormatError(f"a damaged remote buffer {str(x)[:80]!r} in the manifest") from e
        return found

    def array(self, i: int) -> np.ndarray:
        found = self.arrays.get(i)
        if found is None:
            found = self.arrays[i] = self._array(self.entries[i])
        return found

    def _array(self, e: dict[str, Any]) -> np.ndarray:
        shape = tuple(int(d) for d in e["shape"])
        if "broadcast" in e:
            return np.broadcast_to(self.array(int(e["broadcast"])), shape)
        dtype = _DTYPE_OF[e["dtype"]]
        n = _checked_size(shape, max(dtype.itemsize, 8))  # run-length arrays decode through int64
        if "outer" in e:
            starts, pattern = self.array(int(e["outer"][0])), self.array(int(e["outer"][1]))
            if starts.dtype != dtype or pattern.dtype != dtype or pattern.shape != shape[-1:] \
                    or starts.size * pattern.size != n:
                raise ExecutableFormatError("a row-pattern array does not add up to its shape")
            return (starts.reshape(-1, 1) + pattern).reshape(shape)
        if "raw" in e:
            flat = self._slice(e["raw"])
        else:
            first, deltas, lengths = int(e["rle"][0]), self._slice(e["rle"][1]), self._slice(e["rle"][2])
            if lengths.dtype != np.int64 or deltas.shape != lengths.shape or int(lengths.sum()) != n - 1 \
                    or (lengths.size and int(lengths.min()) < 1):
                raise ExecutableFormatError("a run-length array does not add up to its shape")
            flat = np.empty(n, np.int64)
            flat[0] = first
            np.cumsum(np.repeat(deltas, lengths), out=flat[1:])
            flat[1:] += first
        if flat.size != n:
            raise ExecutableFormatError(f"an array of shape {shape} has {flat.size} elements")
        return flat.astype(dtype, copy=False).reshape(shape)

    def _slice(self, ref: list[Any]) -> np.ndarray:
        key, offset, count = str(ref[0]), int(ref[1]), int(ref[2])
        pool = self.pools[key]
        if offset < 0 or count < 0 or offset + count > pool.size:
            raise ExecutableFormatError(f"array pool {key!r} is shorter than the manifest says")
        return pool[offset : offset + count]
