"""The compiler: a flat list of named, pure passes over the graph and programs.

Each pass reads what earlier passes produced (a ``CompileState``) and returns new artifacts; none
mutates the graph, so a failed compile leaves the graph usable. Later issues append passes
(memory plan, exchange plan, schedule) to :data:`PASSES`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from softipu.compiler.conflicts import check_conflicts
from softipu.compiler.costs import StepPricer
from softipu.compiler.executable import CompiledComputeSet, Executable, VertexGroup
from softipu.compiler.memory import MemoryPlan, plan_memory
from softipu.compiler.replicas import (
    check_cross_replica_copy,
    check_remote_copy,
    price_cross_replica_copy,
    price_remote_copy,
    price_sync,
)
from softipu.compiler.structure import StructureKeys, grid_piece
from softipu.debug import at
from softipu.dtypes import DType
from softipu.errors import CompileError, MappingError, ProgramError, SoftIPUError
from softipu.graph import program as P
from softipu.graph.graph import ComputeSet, Function, Graph
from softipu.graph.mapping import ResolvedMapping
from softipu.graph.streams import DataStream, StreamDirection
from softipu.graph.tensor import Tensor
from softipu.graph.vertex import Direction
from softipu.graph.vertices import BulkGroup, PendingGroup
from softipu.log import progress_detail

__all__ = ["compile_graph", "PASSES", "CompileState"]


@dataclass(slots=True)
class CompileState:
    """Artifacts passed from pass to pass (the graph itself is only read)."""

    graph: Graph
    programs: tuple[P.Program, ...]
    mappings: dict[DType, ResolvedMapping] = field(default_factory=dict)
    functions: dict[int, P.Program] = field(default_factory=dict)
    used_compute_sets: tuple[ComputeSet, ...] = ()
    compute_sets: dict[int, CompiledComputeSet] = field(default_factory=dict)
    allow_out_of_memory: bool = False
    outline: bool = False  # repeated work's code held once, as PopART outlines (compiler/outline.py)
    pricer: StepPricer | None = None
    memory: MemoryPlan | None = None
    keys: StructureKeys | None = None  # structurally identical work is checked and priced once
    timings: list[tuple[str, float]] = field(default_factory=list)


# -- pass: verify_mapping ------------------------------------------------------------------------
def verify_mapping(state: CompileState) -> None:
    """Every element of every variable lives on exactly one existing tile."""
    problems: list[str] = []
    for dtype, space in state.graph.spaces.items():
        try:
            resolved = space.mapping.resolved(space.variable_at)
        except MappingError as exc:
            problems.append(str(exc))
            continue
        state.mappings[dtype] = resolved
        if _covers(resolved, space.size):
            continue
        starts = np.array([v.start for v in space.variables], np.int64)
        ends = np.array([v.end for v in space.variables], np.int64)
        unmapped = (ends - starts) - resolved.mapped_between(starts, ends)
        for i in np.flatnonzero(unmapped).tolist():
            var = space.variables[i]
            first = _first_unmapped(resolved, var.start) - var.start
            problems.append(
                f"variable {var.name!r} {var.shape}{at(var.location)}: {int(unmapped[i])} of "
                f"{var.numel} elements are not mapped to a tile (first: flat element {first}); "
                "map them with graph.set_tile_mapping or sp.ops.map_linearly"
            )
    if problems:
        raise CompileError(_listing("tile mapping", problems))


def _covers(resolved: ResolvedMapping, size: int) -> bool:
    """Whether the resolved intervals (sorted, disjoint) map every address of a space of ``size``
    (its variables lie end to end from 0): all inside ``[0, size)`` and their lengths add up to
    ``size``. Two sums, not a count per variable over a cumulative table of every interval (BERT-Large
    at availableMemoryProportion 0.1: 18 M intervals). The int64 sums may wrap; their difference is
    still the lengths' sum, which lies in [0, size)."""
    s, e = resolved.starts, resolved.ends
    if s.size == 0:
        return size == 0
    if int(s[0]) < 0 or int(e[-1]) > size:
        return False
    with np.errstate(over="ignore"):
        return int(np.subtract(e.sum(), s.sum(), dtype=np.int64)) == size


def _first_unmapped(resolved: Any, lo: int) -> int:
    """The first address from ``lo`` that no interval maps, found among the intervals rather than
    by listing the variable's addresses (a 2**31-element variable took minutes and 16 GiB)."""
    starts, ends = resolved.starts, resolved.ends
    i = int(np.searchsorted(ends, lo, side="right"))  # the first interval ending after lo
    if i == starts.size or starts[i] > lo:
        return lo
    gaps = np.flatnonzero(starts[i + 1 :] != ends[i:-1])  # back-to-back intervals up to the first gap
    return int(ends[i + int(gaps[0]) if gaps.size else starts.size - 1])


# -- pass: verify_programs -----------------------------------------------------------------------
def verify_programs(state: CompileState) -> None:
    """Freeze the program trees, check every node, collect the compute sets they run."""
    checker = _ProgramChecker(state.graph)
    state.programs = tuple(checker.freeze(p) for p in state.programs)
    pending = list(checker.called)
    while pending:
        fn = pending.pop()
        if fn.id not in state.functions:
            before = set(checker.called)
            state.functions[fn.id] = checker.freeze(fn.program)
            pending.extend(f for f in checker.called if f not in before)
    _check_recursion(state.functions, state.graph.functions)
    if checker.problems:
        raise CompileError(_listing("programs", checker.problems))
    state.used_compute_sets = tuple(checker.compute_sets.values())


class _ProgramChecker:
    """Copies a program tree with Sequences frozen to tuples, checking each node on the way."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.problems: list[str] = []
        self.compute_sets: dict[int, ComputeSet] = {}
        self.called: list[Function] = []
        self._open: set[int] = set()  # nodes being frozen: one seen again contains itself

    def freeze(self, node: P.Program) -> P.Program:
        if not isinstance(node, P.Program):
            self.problems.append(f"{node!r} is not a program; wrap compute sets in program.Execute")
            return node
        if id(node) in self._open:
            raise CompileError(f"{node.kind.value}{at(node.location)} contains itself; programs are "
                               "trees: use Repeat for loops and add_function + Call to reuse code")
        self._open.add(id(node))
        try:
            return self._freeze(node)
        finally:
            self._open.discard(id(node))

    def _freeze(self, node: P.Program) -> P.Program:
        check = getattr(self, f"check_{node.kind.name.lower()}", None)
        if check is not None:
            check(node)
        if isinstance(node, P.Sequence):
            frozen = object.__new__(P.Sequence)
            frozen.programs = tuple(self.freeze(p) for p in node.programs)  # type: ignore[assignment]
            frozen.location, frozen.name = node.location, node.name
            return frozen
        changes = {}
        for f in dataclasses.fields(node):  # type: ignore[arg-type]
            value = getattr(node, f.name)
            if isinstance(value, P.Program):
                changes[f.name] = self.freeze(value)
            elif f.name == "cases":
                changes[f.name] = {k: self.freeze(v) for k, v in value.items()}
        return dataclasses.replace(node, **changes) if changes else node  # type: ignore[type-var]

    def check_execute(self, node: P.Execute) -> None:
        cs = node.compute_set
        graph_cs = self.graph.compute_sets
        if not isinstance(cs, ComputeSet) or cs.id >= len(graph_cs) or graph_cs[cs.id] is not cs:
            self.problems.append(f"Execute{at(node.location)} runs {cs!r}, not a compute set of this graph")
            return
        self.compute_sets[cs.id] = cs

    def check_copy(self, node: P.Copy) -> None:
        src, dst, where = node.src, node.dst, at(node.location)
        for end in (src, dst):
            if isinstance(end, Tensor) and end.graph is not self.graph:
                self.problems.append(f"Copy{where}: tensor {end.name} belongs to another graph")
                return
            if isinstance(end, DataStream) and self.graph.streams.get(end.name) is not end:
                self.problems.append(f"Copy{where}: stream {end.name!r} is not a stream of this graph")
                return
        if isinstance(src, DataStream) and src.direction is not StreamDirection.HOST_TO_DEVICE:
            self.problems.append(f"Copy{where}: stream {src.name!r} is device-to-host; "
                                 "it cannot be a source")
        if isinstance(dst, DataStream) and dst.direction is not StreamDirection.DEVICE_TO_HOST:
            self.problems.append(f"Copy{where}: stream {dst.name!r} is host-to-device; "
                                 "it cannot be a destination")
        if src.dtype != dst.dtype:
            self.problems.append(f"Copy{where}: {_end(src)} is {src.dtype} but {_end(dst)} is "
                                 f"{dst.dtype}; cast first")
        elif _mismatch(src, dst):
            self.problems.append(f"Copy{where}: {_end(src)} has shape {_shape(src)} but "
                                 f"{_end(dst)} has {_shape(dst)}")
        if isinstance(dst, Tensor) and dst.repeats_elements():
            self.problems.append(f"Copy{where}: destination {dst.name} repeats elements (a broadcast view?)")

    def check_cross_replica_copy(self, node: P.CrossReplicaCopy) -> None:
        self.problems += check_cross_replica_copy(self.graph, node)

    def check_remote_copy(self, node: P.RemoteCopy) -> None:
        self.problems += check_remote_copy(self.graph, node)

    def check_call(self, node: P.Call) -> None:
        fn, fns = node.function, self.graph.functions
        if not isinstance(fn, Function) or fn.id >= len(fns) or fns[fn.id] is not fn:
            self.problems.append(f"Call{at(node.location)}: {fn!r} is not a function of this graph")
            return
        if fn not in self.called:
            self.called.append(fn)

    def _check_graph_tensor(self, node: P.Program, t: Tensor, what: str) -> None:
        if t.graph is not self.graph:
            self.problems.append(f"{node.kind.value}{at(node.location)}: {what} {t.name} belongs to "
                                 "another graph")

    def check_repeat_while(self, node: P.RepeatWhileTrue) -> None:
        self._check_graph_tensor(node, node.predicate, "predicate")

    def check_if(self, node: P.If) -> None:
        self._check_graph_tensor(node, node.predicate, "predicate")

    def check_switch(self, node: P.Switch) -> None:
        self._check_graph_tensor(node, node.control, "control")
        if node.control.dtype.is_float:
            self.problems.append(f"Switch{at(node.location)}: control {node.control.name} must be an "
                                 "integer tensor")

    def check_write_undef(self, node: P.WriteUndef) -> None:
        self._check_graph_tensor(node, node.tensor, "tensor")

    def check_print_tensor(self, node: P.PrintTensor) -> None:
        self._check_graph_tensor(node, node.tensor, "tensor")


def _check_recursion(functions: Mapping[int, P.Program], defined: list[Function]) -> None:
    calls = {fid: {n.function.id for n in P.walk(p) if isinstance(n, P.Call)}
             for fid, p in functions.items()}
    state: dict[int, int] = {}  # 1 = on the stack, 2 = done

    def visit(fid: int) -> None:
        state[fid] = 1
        for callee in calls.get(fid, ()):
            if state.get(callee) == 1:
                fn = defined[callee]
                raise CompileError(f"function {fn.name!r}{at(fn.location)} calls itself (directly or "
                                   "through others); IPU programs cannot recurse: use Repeat or "
                                   "RepeatWhileTrue")
            if callee not in state:
                visit(callee)
        state[fid] = 2

    for fid in calls:
        if fid not in state:
            visit(fid)


# -- pass: build_vertex_groups -------------------------------------------------------------------
def build_vertex_groups(state: CompileState) -> None:
    """Turn each compute set's vertices into batched groups over strided views where possible."""
    problems: list[str] = []
    grids: dict[int, tuple] = {}  # compute set id -> its grid calls cut into rows (StructureKeys)
    for cs in state.used_compute_sets:
        table = state.graph.vertex_tables[cs.id]
        for index, (codelet, _tile, values, location) in sorted(table.unfinished.items()):
            missing = [n for n in codelet.fields if n not in values]
            problems.append(f"vertex {index} ({codelet.__name__}) in compute set {cs.name!r}"
                            f"{at(location)}: fields {missing} are not connected")
        groups = [_batch_pending(g) for g in table.pending.values()]
        cut: list[tuple[int, int, int, BulkGroup]] = []  # (first group, rows, vertices a row, call)
        for g, start in zip(table.bulk, table.bulk_starts, strict=True):
            grid = _grid_rows(g)
            rows = _batch_bulk(g, start, grid)
            if grid is not None:
                cut.append((len(groups), *grid, g))
            groups += rows
        state.compute_sets[cs.id] = CompiledComputeSet(cs, tuple(groups))
        if cut:
            grids[cs.id] = tuple(cut)
    if problems:
        raise CompileError(_listing("vertices", problems))
    state.keys = StructureKeys(state.graph, state.mappings, grids)


def _batch_bulk(group: BulkGroup, start: int, grid: tuple[int, int] | None) -> list[VertexGroup]:
    """A bulk call's vertex groups: one, or one per row of a grid call (``grid``: its rows and
    vertices a row, from :func:`_grid_rows`)."""
    fields = {}
    for name, f in group.codelet.fields.items():
        value = group.fields[name]
        fields[name] = value.reshape(-1) if f.direction is Direction.PARAM else value
    end = start + group.num_vertices  # int32 where it fits: kept for the compile, one a vertex
    indices = np.arange(start, end, dtype=np.int32 if end < 1 << 31 else np.int64)
    if grid is None:
        return [VertexGroup(group.codelet, group.tiles, fields, indices, (group.location,))]
    count, size = grid
    # Per field: its params, or each of its tensors as :func:`_grid_piece` describes it.
    plan = []
    for name, f in group.codelet.fields.items():
        value = fields[name]
        if f.direction is Direction.PARAM:
            plan.append((name, None, value))
        else:
            ends = value if isinstance(value, tuple) else (value,)
            plan.append((name, isinstance(value, tuple), [_grid_piece(t) for t in ends]))
    rows = []
    location = (group.location,)
    for r in range(count):
        lo, hi = r * size, (r + 1) * size
        row = {}
        for name, is_list, value in plan:
            if is_list is None:
                row[name] = value[lo:hi]
                continue
            ts = tuple(_row_view(g, d, shape, offset + r * outer, strides)
                       for g, d, shape, offset, outer, strides in value)
            row[name] = ts if is_list else ts[0]
        rows.append(VertexGroup(group.codelet, group.tiles[lo:hi], row, indices[lo:hi], location))
    return rows


_NEW_TENSOR = Tensor.__new__
_SET = object.__setattr__


def _row_view(graph: Graph, dtype: DType, shape: tuple[int, int], offset: int,
              strides: tuple[int, int]) -> Tensor:
    """``Tensor(graph, dtype, shape, offset, strides)`` without its ``__post_init__`` checks: a grid
    row's field is the grid tensor's ``(size, n)`` slice (its graph already the root, two dims,
    two strides), made once a row and field (BERT-Large at availableMemoryProportion 0.1: 0.77 M
    of them, mostly the serial loops' slice vertices, whose base field holds a row a turn)."""
    t = _NEW_TENSOR(Tensor)
    _SET(t, "graph", graph)
    _SET(t, "dtype", dtype)
    _SET(t, "shape", shape)
    _SET(t, "offset", offset)
    _SET(t, "strides", strides)
    _SET(t, "index", None)
    _SET(t, "slabs", None)
    return t


def _grid_piece(t: Tensor) -> tuple:
    """(graph, dtype, row shape, offset, row step, row strides) of a grid field (:func:`_grid_rows`):
    row ``r`` is the strided ``(size, n)`` view at ``offset + r * step``."""
    offset, outer, size, n, step = grid_piece(t)
    return (t.graph, t.dtype, (size, n), offset, outer, (step, 1))


def _grid_rows(group: BulkGroup) -> tuple[int, int] | None:
    """(rows, vertices a row) where every field of a bulk call is a grid: a one-piece slab layout
    ``(rows, size, n)`` read as ``(rows * size, n)`` (``ops.bulk.add_vertex_runs`` joins evenly
    spaced groups so, one call for them all); None for any other call. Each row is the group
    that call would have added alone: the same vertices, fields and figures."""
    shape = None
    for name, f in group.codelet.fields.items():
        if f.direction is Direction.PARAM:
            continue
        value = group.fields[name]
        for t in value if isinstance(value, tuple) else (value,):
            s = t.slabs
            if s is None or len(s.pieces) != 1 or s.axis != 0 or s.perm != (0, 1):
                return None
            _, piece, strides, mid = s.pieces[0]
            if len(piece) != 3 or strides[2] != 1 or mid != (piece[0] * piece[1], piece[2]):
                return None
            if shape is not None and piece[:2] != shape:
                return None
            shape = piece[:2]
    return shape


def _batch_pending(group: PendingGroup) -> VertexGroup:
    codelet, num = group.codelet, group.num_vertices
    order = _row_order(group)
    fields: dict[str, Any] = {}
    for name, f in codelet.fields.items():
        column = group.columns[name]
        if f.direction is Direction.PARAM:
            fields[name] = np.array(column, dtype=f.dtype.numpy)[order]
        elif isinstance(column[0], tuple):
            fields[name] = tuple(_stack_rows([row[k] for row in column], order)
                                 for k in range(len(column[0])))
        else:
            fields[name] = _stack_rows(column, order)
    tiles = np.array(group.tiles, dtype=np.int32)[order]
    indices = np.array(group.indices, dtype=np.int64)[order]
    locations = tuple(group.locations[i] for i in order.tolist()) if num > 1 else tuple(group.locations)
    return VertexGroup(codelet, tiles, fields, indices, locations)


def _row_order(group: PendingGroup) -> np.ndarray:
    """Vertices sorted by their first vector field's address, so regular layouts show up."""
    for name, f in group.codelet.fields.items():
        column = group.columns[name]
        if f.direction is not Direction.PARAM and not isinstance(column[0], tuple):
            if all(t.index is None for t in column):
                return np.argsort(np.fromiter((t.offset for t in column), np.int64, len(column)),
                                  kind="stable")
            break
    return np.arange(group.num_vertices)


def _stack_rows(rows: list[Tensor], order: np.ndarray) -> Tensor:
    """One (vertices, n) tensor from per-vertex 1-D tensors: strided if regularly spaced."""
    first, num = rows[0], len(rows)
    n = first.numel
    inner = first.strides[0] if first.index is None and n > 1 else 1
    if all(t.index is None and (n <= 1 or t.strides[0] == inner) for t in rows):
        offsets = np.fromiter((t.offset for t in rows), np.int64, num)[order]
        step = int(offsets[1] - offsets[0]) if num > 1 else 0
        if num <= 2 or bool(np.all(np.diff(offsets) == step)):
            return Tensor(first.graph, first.dtype, (num, n), int(offsets[0]), (step, inner))
    addresses = np.stack([t.addresses().reshape(n) for t in rows])[order]
    return Tensor(first.graph, first.dtype, (num, n), 0, (), addresses)


# -- pass: verify_compute_sets -------------------------------------------------------------------
def verify_compute_sets(state: CompileState) -> None:
    """No two vertices of a compute set write one element; none reads what another writes.

    A compute set laid out like one already checked (equal layout keys: a repeated layer's)
    has the same conflicts, none, and is not checked again."""
    passed: set[tuple] = set()
    for compiled in state.compute_sets.values():
        key = state.keys.layout(compiled) if state.keys is not None else None
        if key is not None and key in passed:
            continue
        check_conflicts(compiled)
        if key is not None:
            passed.add(key)


# -- pass: price_steps (exchange plan and cost model) --------------------------------------------
def price_steps(state: CompileState) -> None:
    """The static cost of every program step: compute, exchange and sync cycles, bytes moved."""
    pricer = StepPricer(state.graph.target, state.mappings, state.compute_sets,
                        state.graph.replication_factor, keys=state.keys, outline=state.outline)
    pricer.price_cross_replica_copy = partial(price_cross_replica_copy, pricer)  # compiler/replicas.py
    pricer.price_remote_copy = partial(price_remote_copy, pricer)
    pricer.price_sync = partial(price_sync, pricer, state.graph)  # by its scope on the graph's system
    for root in list(state.programs) + list(state.functions.values()):
        for node in P.walk(root):
            pricer.price(node)
    state.pricer = pricer


# -- pass: plan_memory -----------------------------------------------------------------------------
def plan_memory_pass(state: CompileState) -> None:
    """Bytes per tile by category with liveness; OutOfMemoryError unless allowed."""
    assert state.pricer is not None
    state.memory = plan_memory(state.graph, state.graph.target, state.mappings, state.compute_sets,
                               state.programs, state.functions, state.pricer.steps,
                               state.pricer.step_of, state.pricer.exchange_code_regions,
                               state.allow_out_of_memory, keys=state.keys, outline=state.pricer.outline,
                               outline_shared_steps=state.pricer.shared_steps)


PASSES: tuple[tuple[str, Callable[[CompileState], None]], ...] = (
    ("verify_mapping", verify_mapping),
    ("verify_programs", verify_programs),
    ("build_vertex_groups", build_vertex_groups),
    ("verify_compute_sets", verify_compute_sets),
    ("price_steps", price_steps),
    ("plan_memory", plan_memory_pass),
)


def compile_graph(graph: Graph, programs: P.Program | Iterable[P.Program], *,
                  allow_out_of_memory: bool = False, outline: bool = False) -> Executable:
    """Run every pass; raise the first pass's CompileError (listing all its problems)."""
    try:
        progs = (programs,) if isinstance(programs, P.Program) else tuple(programs)
    except TypeError:
        raise ProgramError(f"an engine's programs are a program or a list of programs, got "
                           f"{type(programs).__name__}") from None
    if not progs:
        raise ProgramError("an engine needs at least one program; pass [program.Sequence(...)]")
    state = CompileState(graph, progs, allow_out_of_memory=allow_out_of_memory, outline=outline)
    for name, run_pass in PASSES:
        t0 = time.perf_counter()
        progress_detail(name)
        try:
            run_pass(state)
        except SoftIPUError:
            raise
        except Exception as exc:  # a bug in a pass must still read as a compile failure
            raise CompileError(f"compiler pass {name} failed: {type(exc).__name__}: {exc}") from exc
        state.timings.append((name, time.perf_counter() - t0))
    return Executable(
        target=graph.target,
        replication_factor=graph.replication_factor,
        space_sizes={d: s.size for d, s in graph.spaces.items()},
        variables=tuple(graph.variables),
        mappings=state.mappings,
        compute_sets=state.compute_sets,
        programs=state.programs,
        functions=state.functions,
        streams=dict(graph.streams),
        steps=tuple(state.pricer.steps) if state.pricer else (),
        step_of=state.pricer.step_of if state.pricer else {},
        memory=state.memory,
        pass_seconds=tuple(state.timings),
    )


def _listing(what: str, problems: list[str]) -> str:
    shown = problems[:20]
    more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
    return f"compile failed ({what}): {len(problems)} problem(s)\n  " + "\n  ".join(shown) + more


def _end(end: Tensor | DataStream) -> str:
    return f"tensor {end.name}" if isinstance(end, Tensor) else f"stream {end.name!r}"


def _shape(end: Tensor | DataStream) -> tuple[int, ...]:
    return end.shape if isinstance(end, Tensor) else (end.num_elements,)


def _mismatch(src: Tensor | DataStream, dst: Tensor | DataStream) -> bool:
    """Tensors copy shape to shape; a stream transfer only needs the element count to match."""
    if isinstance(src, Tensor) and isinstance(dst, Tensor):
        return src.shape != dst.shape
    return _numel(src) != _numel(dst)


def _numel(end: Tensor | DataStream) -> int:
    return end.numel if isinstance(end, Tensor) else end.num_elements

