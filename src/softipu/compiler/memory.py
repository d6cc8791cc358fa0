"""The memory plan: what every tile holds, by category, at its peak.

Categories follow PopVision's memory report:

* ``always_live_variables`` / ``constants`` — values that must survive the whole program: read
  before they are written (their value comes from the host or an earlier run), never written on
  the device, or written but never read back on the device (results the host will read), unless
  a ``WriteUndef`` after the last write discards the value;
* ``not_always_live`` — intermediates written and then read on the device, or written and then
  discarded by a ``WriteUndef`` (live from the write to the last write). They are allocated
  by liveness: two never live at the same program point share bytes. The category is each tile's
  peak over program points, including the receive buffers of each step's exchange;
* ``vertex_state`` — each vertex's field pointers and params;
* ``codelet_code`` — the code of each codelet type present on a tile, once;
* ``exchange_code`` — instructions for each contiguous region a tile sends or receives;
* ``control_code`` — the program's control flow, on every tile;
* ``stacks`` — worker and supervisor stacks.

Liveness is computed on a timeline of program points (functions inlined at each call; loop bodies
once). A value used inside a loop and outside it, or carried from one turn to the next, is live
for the whole loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from softipu.compiler.conflicts import address_runs
from softipu.compiler.exchange import split_by_mapping, union_per_key
from softipu.compiler.executable import CompiledComputeSet
from softipu.compiler.outline import Outline
from softipu.compiler.structure import StructureKeys
from softipu.debug import at
from softipu.dtypes import DType
from softipu.errors import OutOfMemoryError
from softipu.graph import program as P
from softipu.graph.accounting import control_code_bytes, exchange_code_bytes, vertex_state_bytes
from softipu.graph.graph import Graph, Variable
from softipu.graph.mapping import ResolvedMapping
from softipu.graph.tensor import Tensor
from softipu.graph.vertex import Direction, FieldShape
from softipu.target import Target

__all__ = ["MemoryPlan", "plan_memory", "CATEGORIES", "out_of_memory_message"]

CATEGORIES = ("always_live_variables", "constants", "not_always_live", "vertex_state",
              "codelet_code", "exchange_code", "control_code", "stacks")

_READ, _WRITE, _KILL = 0, 1, 2


@dataclass(frozen=True, slots=True, eq=False)
class MemoryPlan:
    """Bytes per tile by category, and the liveness that shaped them."""

    bytes_per_tile: int  # what a tile has
    categories: dict[str, np.ndarray]  # name -> int64 (tiles,)
    always_live: np.ndarray  # bool per variable id
    var_ids: np.ndarray  # sparse (variable, tile, bytes) placement
    var_tiles: np.ndarray
    var_bytes: np.ndarray
    liveness_bytes: np.ndarray  # not-always-live bytes over all tiles at each program point
    point_steps: np.ndarray  # the step index of each program point
    cs_state_bytes: dict[int, np.ndarray] = field(default_factory=dict)  # per compute set, per tile
    var_first: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # live range per
    var_last: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # variable, in points

    @property
    def tile_bytes(self) -> np.ndarray:
        return sum(self.categories.values())  # type: ignore[return-value]

    @property
    def total_bytes(self) -> int:
        return int(self.tile_bytes.sum())


# -- variables on tiles ----------------------------------------------------------------------
_PLACEMENT_PIECES = 1 << 18  # mapping pieces a placement batch holds (memory, not results)

def _placement(graph: Graph, mappings: dict[DType, ResolvedMapping], target: Target):
    """Sparse (variable id, tile, bytes) triples, each rounded up to the alignment."""
    ids, tiles, nbytes = [], [], []
    for dtype, space in graph.spaces.items():
        if not space.variables:
            continue
        vars_ = space.variables
        starts = np.array([v.start for v in vars_], np.int64)
        ends = np.array([v.end for v in vars_], np.int64)
        var_ids = np.array([v.id for v in vars_], np.int64)
        mapping = mappings[dtype]
        # Variables in batches of about _PLACEMENT_PIECES mapping pieces: only one batch's pieces
        # are held at once (a model's are millions). A (variable, tile) pair lies in one batch.
        pieces = np.maximum(np.searchsorted(mapping.starts, ends) - np.searchsorted(mapping.ends, starts,
                                                                                   side="right"), 1)
        cuts = np.searchsorted(np.cumsum(pieces), np.arange(_PLACEMENT_PIECES, int(pieces.sum()),
                                                            _PLACEMENT_PIECES), side="right")
        bounds = np.unique(np.concatenate(([0], cuts, [len(vars_)])))
        keys, totals = [], []
        for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
            p_starts, p_ends, p_tiles, parent = split_by_mapping(starts[a:b], ends[a:b], mapping)
            key = var_ids[a:b][parent] * target.num_tiles + p_tiles
            uniq, inverse = np.unique(key, return_inverse=True)
            keys.append(uniq)
            totals.append(np.bincount(inverse, weights=(p_ends - p_starts) * dtype.itemsize))
        order = np.argsort(np.concatenate(keys), kind="stable")
        uniq = np.concatenate(keys)[order]
        total = np.concatenate(totals)[order].astype(np.int64)
        align = target.variable_alignment_bytes
        ids.append(uniq // target.num_tiles)
        tiles.append(uniq % target.num_tiles)
        nbytes.append(-(-total // align) * align)
    if not ids:
        z = np.zeros(0, np.int64)
        return z, z, z
    return np.concatenate(ids), np.concatenate(tiles), np.concatenate(nbytes)


# -- liveness --------------------------------------------------------------------------------
class _Timeline:
    """Program points in execution order, with the variables each point reads and writes."""

    def __init__(self, graph: Graph, compute_sets: dict[int, CompiledComputeSet],
                 functions: dict[int, P.Program], step_of: dict[int, int],
                 keys: StructureKeys | None = None) -> None:
        self.graph, self.compute_sets, self.functions, self.step_of = graph, compute_sets, functions, step_of
        self.keys = keys  # compute sets with equal layout keys touch their n-th variables alike
        self._by_layout: dict[tuple, list] = {}  # layout key -> (dtype, numbers, full, kind) per part
        self.points: list[int] = []  # step index per point
        self.access: list[tuple[int, np.ndarray, int]] = []  # (point, variable ids, kind)
        self.loops: list[tuple[int, int]] = []
        self.program_starts: list[int] = []
        self.executes: list[tuple[int, int]] = []  # (point, compute set id) of each Execute
        self._cs_fields: dict[int, list] = {}
        self._ranges: dict[DType, tuple[ResolvedMapping, np.ndarray]] = {}

    def _point(self, node: P.Program) -> int:
        self.points.append(self.step_of.get(id(node), -1))
        return len(self.points) - 1

    def _touch(self, point: int, tensors, kind: int) -> None:
        for t in tensors:
            if isinstance(t, Tensor):
                starts, lengths = address_runs(t)
                self._record(point, self.graph.spaces[t.dtype], starts, starts + lengths, kind)

    def _record(self, point: int, space, starts: np.ndarray, ends: np.ndarray, kind: int) -> None:
        self._record_ids(point, *self._ids_in(space, starts, ends), kind)

    def _record_ids(self, point: int, ids: np.ndarray, full: np.ndarray, kind: int) -> None:
        if not ids.size:
            return
        if kind == _WRITE:
            # A partial write keeps the rest of the old value: for liveness it also reads it.
            if not full.all():
                self.access.append((point, ids[~full], _READ))
        self.access.append((point, ids, kind))

    def _ids_in(self, space, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The variables the intervals touch, and whether the intervals cover each completely."""
        if starts.size == 0:
            return np.zeros(0, np.int64), np.zeros(0, bool)
        ranges, sizes = self._variable_ranges(space)
        if starts.size == 1 and ends[0] > starts[0]:  # one interval (a contiguous copy end)
            lo, hi = int(starts[0]), int(ends[0])
            a = max(int(np.searchsorted(ranges.starts, lo, side="right")) - 1, 0)
            b = int(np.searchsorted(ranges.starts, hi, side="left"))
            inside = np.flatnonzero(ranges.ends[a:b] > lo) + a
            if inside.size:
                ks = ranges.tiles[inside]
                full = (ranges.starts[inside] >= lo) & (ranges.ends[inside] <= hi)
                return np.array([space.variables[i].id for i in ks.tolist()], np.int64), full
            return np.zeros(0, np.int64), np.zeros(0, bool)
        p_starts, p_ends, k, _ = split_by_mapping(starts, ends, ranges)
        covered, _ = union_per_key(k, p_starts, p_ends, sizes.size)
        ks = np.unique(k)
        full = covered[ks] >= sizes[ks]
        return np.array([space.variables[i].id for i in ks.tolist()], np.int64), full

    def _variable_ranges(self, space) -> tuple[ResolvedMapping, np.ndarray]:
        """The space's variables as an interval table whose 'tile' is the variable's index, and
        each variable's size. Empty variables hold no address, so they are left out of the table
        (one would share its start with the next variable, which then looks split in two)."""
        found = self._ranges.get(space.dtype)
        if found is None:
            starts = np.asarray(space.starts, np.int64)
            ends = np.array([v.end for v in space.variables], np.int64)
            held = np.flatnonzero(ends > starts)
            found = self._ranges[space.dtype] = (
                ResolvedMapping(starts[held], ends[held], held), ends - starts)
        return found

    def walk(self, node: P.Program) -> None:
        getattr(self, f"walk_{node.kind.name.lower()}")(node)

    def walk_sequence(self, node: P.Sequence) -> None:
        for child in node.programs:
            self.walk(child)

    def walk_execute(self, node: P.Execute) -> None:
        point = self._point(node)
        self.executes.append((point, node.compute_set.id))
        for ids, full, kind in self._compute_set_fields(node.compute_set.id):
            self._record_ids(point, ids, full, kind)

    def _compute_set_fields(self, cs_id: int) -> list:
        """(variable ids, fully covered?, kind) of everything a compute set reads and writes, per
        dtype; kept per compute set (a few ints a variable, never its fields' address runs). A
        compute set laid out like one seen before (equal layout keys: a repeated layer's) touches
        the corresponding variables alike, so its parts are that one's, renumbered."""
        cached = self._cs_fields.get(cs_id)
        if cached is not None:
            return cached
        compiled = self.compute_sets[cs_id]
        key = self.keys.layout(compiled) if self.keys is not None else None
        if key is None:
            cached = [(ids, full, kind) for _, ids, full, kind in self._fields_of(compiled)]
        else:
            used = self.keys.layout_variables(compiled)
            shared = self._by_layout.get(key)
            if shared is None:
                number = {(d, v.id): n for n, (d, v) in enumerate(used)}
                shared = self._by_layout[key] = [
                    (dtype, np.array([number[(dtype, i)] for i in ids.tolist()], np.int64), full, kind)
                    for dtype, ids, full, kind in self._fields_of(compiled)]
            cached = [(np.array([used[n][1].id for n in numbers.tolist()], np.int64), full, kind)
                      for _, numbers, full, kind in shared]
        self._cs_fields[cs_id] = cached
        return cached

    def _fields_of(self, compiled: CompiledComputeSet) -> list:
        """(dtype, variable ids, fully covered?, kind) per dtype and access kind, from the fields'
        address runs."""
        parts: dict[tuple, list] = {}
        rows: dict[tuple, list] = {}  # (offset, vertices, n, row stride) of (vertices, n) rows fields
        for group in compiled.groups:
            for name, f in group.field_items(Direction.INPUT, Direction.OUTPUT, Direction.INOUT):
                kinds = [_WRITE] if f.direction is Direction.OUTPUT else [_READ]
                kinds += [_WRITE] if f.direction is Direction.INOUT else []
                for t in group.tensors(name):
                    shape, strides = t.shape, t.strides
                    if t.is_strided and len(shape) == 2 and shape[0] and shape[1] \
                            and (shape[1] == 1 or strides[1] == 1):
                        for kind in kinds:
                            parts.setdefault((t.dtype, kind), [])
                            rows.setdefault((t.dtype, kind), []).append((t.offset, *shape, strides[0]))
                        continue
                    starts, lengths = address_runs(t)
                    for kind in kinds:
                        parts.setdefault((t.dtype, kind), []).append((starts, starts + lengths))
        for key, found in rows.items():
            parts[key].append(_row_intervals(np.array(found, np.int64)))
        return [(dtype, *self._ids_in(self.graph.spaces[dtype], np.concatenate([p[0] for p in pieces]),
                                      np.concatenate([p[1] for p in pieces])), kind)
                for (dtype, kind), pieces in parts.items()]

    def walk_copy(self, node: P.Copy) -> None:
        point = self._point(node)
        self._touch(point, [node.src], _READ)
        self._touch(point, [node.dst], _WRITE)

    def walk_cross_replica_copy(self, node: P.CrossReplicaCopy) -> None:
        point = self._point(node)  # collectives' maps cover every replica: a whole write
        self._touch(point, [src for src, _, _ in node.transfers], _READ)
        self._touch(point, [dst for _, dst, _ in node.transfers], _WRITE)

    def walk_remote_copy(self, node: P.RemoteCopy) -> None:
        point = self._point(node)
        offset = [node.offset] if isinstance(node.offset, Tensor) else []
        self._touch(point, offset + ([node.src] if node.src is node.tensor else []), _READ)
        if node.dst is node.tensor:
            self._touch(point, [node.dst], _WRITE)

    def _loop(self, body) -> None:
        start = len(self.points)
        body()
        self.loops.append((start, len(self.points) - 1))

    def walk_repeat(self, node: P.Repeat) -> None:
        self._point(node)
        self._loop(lambda: self.walk(node.body))

    def walk_repeat_while(self, node: P.RepeatWhileTrue) -> None:
        def body() -> None:
            self.walk(node.condition)
            self._touch(self._point(node), [node.predicate], _READ)
            self.walk(node.body)
        self._loop(body)

    def walk_if(self, node: P.If) -> None:
        self._touch(self._point(node), [node.predicate], _READ)
        for branch in node.children():
            self.walk(branch)

    def walk_switch(self, node: P.Switch) -> None:
        self._touch(self._point(node), [node.control], _READ)
        for branch in node.children():
            self.walk(branch)

    def walk_call(self, node: P.Call) -> None:
        self._point(node)
        self.walk(self.functions[node.function.id])

    def walk_write_undef(self, node: P.WriteUndef) -> None:
        self._touch(self._point(node), [node.tensor], _KILL)

    def walk_print_tensor(self, node: P.PrintTensor) -> None:
        self._touch(self._point(node), [node.tensor], _READ)

    def walk_sync(self, node: P.Sync) -> None:
        self._point(node)

    def walk_cycle_count(self, node: P.CycleCount) -> None:
        if node.body is not None:
            self.walk(node.body)
        self._touch(self._point(node), [node.counter], _WRITE)


def _live_ranges(timeline: _Timeline, num_vars: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(always live?, first point, last point) per variable."""
    always = np.ones(num_vars, bool)
    first = np.full(num_vars, -1, np.int64)
    last = np.full(num_vars, -1, np.int64)
    if not timeline.access:
        return always, first, last
    point = np.concatenate([np.full(ids.size, p, np.int64) for p, ids, _ in timeline.access])
    var = np.concatenate([ids for _, ids, _ in timeline.access])
    kind = np.concatenate([np.full(ids.size, k, np.int64) for _, ids, k in timeline.access])
    order = np.lexsort((kind, point, var))  # per variable, in program order (reads before writes)
    point, var, kind = point[order], var[order], kind[order]
    head = np.concatenate(([True], var[1:] != var[:-1]))
    starts = np.flatnonzero(head)
    v = var[starts]
    # A trailing WriteUndef ends a value's life; it is not a use. Find each variable's last
    # access other than a kill (its first access if every access is a kill).
    not_kill = np.flatnonzero(kind != _KILL)
    group = np.cumsum(head) - 1
    last_use = np.full(v.size, -1, np.int64)
    last_use[group[not_kill]] = not_kill  # ascending, so the last write per group wins
    last_use = np.where(last_use < 0, starts, last_use)
    first[v], last[v] = point[starts], point[last_use]
    # Intermediates: first touched by a write (or undef) and last used by a read. A value written
    # and never read after is a result the host may read (eng.read_tensor: what Poplar's
    # createHostRead handle makes always live), unless a WriteUndef after its last write discards
    # it: then it is dead after that write, as Poplar's liveness frees it (a layer norm's
    # statistics in inference, written and never read).
    ends = np.append(starts[1:], kind.size) - 1
    discarded = (kind[ends] == _KILL) & (kind[last_use] == _WRITE)
    always[v] = ~((kind[starts] != _READ) & ((kind[last_use] == _READ) | discarded))
    # A program that reads a variable before writing it needs its value from before: always live.
    bounds = np.asarray(timeline.program_starts + [len(timeline.points)], np.int64)
    prog = np.searchsorted(bounds, point, side="right") - 1
    key_head = np.concatenate(([True], (var[1:] != var[:-1]) | (prog[1:] != prog[:-1])))
    read_first = var[key_head & (kind == _READ)]
    always[read_first] = True
    for lo, hi in timeline.loops:  # values used in a loop and beyond it live for the whole loop
        inside = (point >= lo) & (point <= hi)
        in_vars = np.unique(var[inside])
        escapes = (first[in_vars] < lo) | (last[in_vars] > hi)
        carried = _read_first_in(var[inside], kind[inside], in_vars)
        grow = in_vars[escapes | carried]
        first[grow] = np.minimum(first[grow], lo)
        last[grow] = np.maximum(last[grow], hi)
    return always, first, last


def _read_first_in(var: np.ndarray, kind: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """For each id: is its first access in (var, kind) — already in program order — a read?"""
    head = np.concatenate(([True], var[1:] != var[:-1])) if var.size else np.zeros(0, bool)
    first_kind = dict(zip(var[head].tolist(), kind[head].tolist(), strict=True))
    return np.array([first_kind.get(i, _WRITE) == _READ for i in ids.tolist()], bool)


def _peak_per_tile(events: list[tuple[np.ndarray, np.ndarray, np.ndarray]], tiles: int,
                   points: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-tile peak of live bytes, and total live bytes at each point, from +/- events (the
    list is consumed)."""
    if not events:
        return np.zeros(tiles, np.int64), np.zeros(points, np.int64)
    cells = (points + 2) * tiles
    if cells <= _DENSE_CELLS and cells <= 8 * sum(e[0].size for e in events):  # not for a few events
        return _peak_dense(events, tiles, points)
    # One int64 key per event orders them by tile, point, then frees before allocations (the
    # order among frees, or among allocations, cannot change a running maximum). The events are
    # consumed: each is let go once copied into the keys and deltas, which with their order are
    # all the memory this takes.
    span = 2 * (points + 2)
    n = sum(e[0].size for e in events)
    key, d = np.empty(n, np.int64), np.empty(n, np.int64)
    over_time = np.zeros(points + 1)
    at = 0
    while events:
        p, t, w = events.pop(0)
        seg = key[at : at + p.size]
        seg[...] = t
        seg *= span
        seg += p
        seg += p
        seg += w > 0
        d[at : at + p.size] = w
        over_time += np.bincount(p, weights=w, minlength=points + 1)[: points + 1]
        at += p.size
    order = np.argsort(key, kind="stable")
    t = key[order]
    del key
    t //= span
    running = d[order]
    del d, order
    np.cumsum(running, out=running)
    head = np.flatnonzero(np.concatenate(([True], t[1:] != t[:-1])))
    before = np.concatenate(([0], running[:-1]))[head]
    running -= np.repeat(before, np.diff(np.concatenate((head, [t.size]))))
    peak = np.zeros(tiles, np.int64)
    peak[t[head]] = np.maximum.reduceat(running, head)
    return np.maximum(peak, 0), np.cumsum(over_time)[:points].astype(np.int64)


_DENSE_CELLS = 1 << 22  # (point, tile) cells _peak_dense holds at once: 32 MiB of int64


def _peak_dense(events: list[tuple[np.ndarray, np.ndarray, np.ndarray]], tiles: int,
                points: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_peak_per_tile` from a (point, tile) table of net byte changes, no sort: within a
    point its frees come before its allocations there, so a tile's running total is highest at
    the end of some point (or before its first event, at 0): the peak is the largest of the
    table's running sums down the points, at least 0."""
    p = np.concatenate([e[0] for e in events]).astype(np.int64, copy=False)
    cell = p * tiles
    cell += np.concatenate([e[1] for e in events])
    w = np.concatenate([e[2] for e in events]).astype(np.float64)
    events.clear()
    # float sums of whole bytes are exact (< 2**53), as for over_time in _peak_per_tile
    table = np.rint(np.bincount(cell, weights=w, minlength=(points + 2) * tiles)).astype(np.int64)
    over_time = np.rint(np.bincount(p, weights=w, minlength=points + 2)).astype(np.int64)
    del p, cell, w
    table = table.reshape(points + 2, tiles)
    np.cumsum(table, axis=0, out=table)
    return np.maximum(table.max(axis=0), 0), np.cumsum(over_time)[:points]


# -- the pass --------------------------------------------------------------------------------
def plan_memory(graph: Graph, target: Target, mappings: dict[DType, ResolvedMapping],
                compute_sets: dict[int, CompiledComputeSet], programs: tuple[P.Program, ...],
                functions: dict[int, P.Program], steps: list, step_of: dict[int, int],
                exchange_regions: np.ndarray, allow_out_of_memory: bool,
                keys: StructureKeys | None = None, outline: Outline | None = None,
                outline_shared_steps: int = 0) -> MemoryPlan:
    tiles = target.num_tiles
    var_ids, var_tiles, var_bytes = _placement(graph, mappings, target)
    timeline = _Timeline(graph, compute_sets, functions, step_of, keys)
    for prog in programs:
        timeline.program_starts.append(len(timeline.points))
        timeline.walk(prog)
    num_points = len(timeline.points)
    always, first, last = _live_ranges(timeline, len(graph.variables))
    constant = np.array([v.is_constant for v in graph.variables], bool)
    always |= constant
    cats = {name: np.zeros(tiles, np.int64) for name in CATEGORIES}
    for mask, name in ((always & ~constant, "always_live_variables"), (constant, "constants")):
        sel = mask[var_ids]
        cats[name] = np.bincount(var_tiles[sel], weights=var_bytes[sel], minlength=tiles).astype(np.int64)
    events = []
    nal = ~always[var_ids]
    if nal.any():
        v, t, b = var_ids[nal], var_tiles[nal], var_bytes[nal]
        events.append((first[v], t, b))
        events.append((last[v] + 1, t, -b))
        del v, t, b
    point_steps = np.asarray(timeline.points, np.int64)
    for p in np.flatnonzero(point_steps >= 0).tolist():  # each step's receive buffers, at its point
        step = steps[point_steps[p]]
        if step.recv_tiles.size:
            events.append((np.full(step.recv_tiles.size, p), step.recv_tiles, step.recv_tile_bytes))
            events.append((np.full(step.recv_tiles.size, p + 1), step.recv_tiles, -step.recv_tile_bytes))
    control_steps = len(steps)
    if outline is not None:  # each call of an outlined subgraph holds a copy of its weights
        copies, count = _call_input_copies(timeline, outline, always & ~constant, var_ids, var_tiles,
                                           var_bytes)
        events += copies
        control_steps += count - outline_shared_steps
    cats["not_always_live"], liveness = _peak_per_tile(events, tiles, num_points)
    cs_state = _vertex_state(compute_sets, target, outline)
    cats["vertex_state"] = sum(cs_state.values(), np.zeros(tiles, np.int64))
    cats["codelet_code"] = _codelet_code(compute_sets, target)
    cats["exchange_code"] = exchange_code_bytes(exchange_regions, target)
    cats["control_code"] = np.full(tiles, control_code_bytes(control_steps, target), np.int64)
    cats["stacks"] = np.full(tiles, target.workers_per_tile * target.worker_stack_bytes
                             + target.supervisor_stack_bytes, np.int64)
    plan = MemoryPlan(target.bytes_per_tile, cats, always, var_ids, var_tiles, var_bytes,
                      liveness, point_steps, cs_state, first, last)
    if not allow_out_of_memory and int(plan.tile_bytes.max(initial=0)) > target.bytes_per_tile:
        raise OutOfMemoryError(out_of_memory_message(plan, graph, compute_sets, target))
    return plan


def _call_input_copies(timeline: _Timeline, outline: Outline, weight: np.ndarray, var_ids: np.ndarray,
                       var_tiles: np.ndarray, var_bytes: np.ndarray) -> tuple[list, int]:
    """(point, tile, +/- bytes) events: at each Execute of an outlined compute set, the weights
    (always-live, non-constant variables) it reads are held once more on their tiles, in the
    subgraph's input tensor that CallOpx copies them into (compiler/outline.py); and how many
    such copies there are (each a program step of the caller's, with its control code)."""
    order = np.argsort(var_ids, kind="stable")
    sorted_ids = var_ids[order]
    points, tiles, nbytes = [], [], []
    for point, cs_id in timeline.executes:
        if not outline.called(cs_id):
            continue
        read = [ids for ids, _, kind in timeline._compute_set_fields(cs_id) if kind == _READ]
        ids = np.unique(np.concatenate(read)) if read else np.zeros(0, np.int64)
        ids = ids[weight[ids]]
        if not ids.size:
            continue
        lo, hi = np.searchsorted(sorted_ids, ids), np.searchsorted(sorted_ids, ids, side="right")
        rows = order[np.concatenate([np.arange(a, b) for a, b in zip(lo.tolist(), hi.tolist(), strict=True)])]
        points.append(np.full(rows.size, point, np.int64))
        tiles.append(var_tiles[rows])
        nbytes.append(var_bytes[rows])
    if not points:
        return [], 0
    p, t, b = np.concatenate(points), np.concatenate(tiles), np.concatenate(nbytes)
    return [(p, t, b), (p + 1, t, -b)], len(points)


def _vertex_state(compute_sets: dict[int, CompiledComputeSet], target: Target,
                  outline: Outline | None = None) -> dict[int, np.ndarray]:
    out = {}
    each_of: dict[tuple, int] = {}  # (codelet, vector-list lengths) -> bytes a vertex, this compile
    for cs_id, compiled in compute_sets.items():
        if outline is not None and outline.shares_code(cs_id):  # its vertices are the subgraph's
            out[cs_id] = np.zeros(target.num_tiles, np.int64)
            continue
        tiles, weights = [], []
        for g in compiled.groups:
            lists = tuple((name, len(g.tensors(name))) for name, f in g.codelet.fields.items()
                          if f.shape is FieldShape.VECTOR_LIST)
            each = each_of.get((g.codelet, lists))
            if each is None:  # the rule the planner uses too
                each = each_of[(g.codelet, lists)] = vertex_state_bytes(g.codelet, target, dict(lists))
            tiles.append(g.tiles)
            weights.append(np.full(g.tiles.size, float(each)))
        per_tile = np.zeros(target.num_tiles, np.int64)
        if tiles:  # one bincount a compute set; its float sums of whole bytes are exact (< 2**53)
            counted = np.bincount(np.concatenate(tiles), weights=np.concatenate(weights),
                                  minlength=target.num_tiles)
            per_tile += np.rint(counted).astype(np.int64)
        out[cs_id] = per_tile
    return out


def _codelet_code(compute_sets: dict[int, CompiledComputeSet], target: Target) -> np.ndarray:
    present: dict[type, np.ndarray] = {}
    for compiled in compute_sets.values():
        for g in compiled.groups:
            mask = present.setdefault(g.codelet, np.zeros(target.num_tiles, bool))
            mask[g.tiles] = True
    total = np.zeros(target.num_tiles, np.int64)
    for codelet, mask in present.items():
        total += mask * (codelet.code_bytes or target.codelet_code_bytes)
    return total


def out_of_memory_message(plan: MemoryPlan, graph: Graph, compute_sets: dict[int, CompiledComputeSet],
                          target: Target) -> str:
    used = plan.tile_bytes
    over = np.flatnonzero(used > target.bytes_per_tile)
    worst = over[np.argsort(-used[over], kind="stable")][:3]
    tile = int(worst[0])
    lines = [f"out of memory on {over.size} of {target.num_tiles} tiles of {target.name}: tile {tile} "
             f"needs {int(used[tile]):,} bytes but tiles only have {target.bytes_per_tile:,} bytes"]
    if worst.size > 1:
        lines.append("  worst tiles: " + ", ".join(f"tile {int(t)} ({int(used[t]):,} B)" for t in worst))
    by_cat = sorted(((int(a[tile]), n) for n, a in plan.categories.items() if a[tile]), reverse=True)
    lines.append(f"  on tile {tile}, by category: " + ", ".join(f"{n} {b:,} B" for b, n in by_cat))
    on_tile = plan.var_tiles == tile
    order = np.argsort(-plan.var_bytes[on_tile], kind="stable")[:5]
    for i in order.tolist():
        var: Variable = graph.variables[int(plan.var_ids[on_tile][i])]
        live = "always live" if plan.always_live[var.id] else "not always live"
        nbytes = int(plan.var_bytes[on_tile][i])
        lines.append(f"  variable {var.name!r} {var.shape} {var.dtype}: {nbytes:,} B "
                     f"on tile {tile} ({live}){at(var.location)}")
    states = sorted(((int(a[tile]), cs) for cs, a in plan.cs_state_bytes.items() if a[tile]),
                    reverse=True)[:3]
    for nbytes, cs_id in states:
        cs = compute_sets[cs_id].compute_set
        lines.append(f"  compute set {cs.name!r}: vertex state {nbytes:,} B on tile {tile}"
                     f"{at(cs.location)}")
    lines.append(
        "  what to do: spread the largest variables over more tiles (sp.ops.map_linearly), put fewer "
        "vertices on the crowded tiles, split large compute sets, use a target with more tiles or "
        "IPUs, or compile anyway with options={'debug.allowOutOfMemory': True} and read eng.report")
    return "\n".join(lines)


def _row_intervals(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) covering the rows of strided ``(vertices, n)`` fields given as (offset,
    vertices, n, row stride): one interval for a field whose rows follow each other, else one per
    row (the same addresses as their address runs; only their union is used)."""
    offset, v, n, step = rows.T
    whole = (step == n) | (v == 1)
    starts, ends = [offset[whole]], [offset[whole] + v[whole] * n[whole]]
    if not whole.all():
        o, vv, nn, st = offset[~whole], v[~whole], n[~whole], step[~whole]
        local = np.arange(int(vv.sum()), dtype=np.int64) - np.repeat(np.cumsum(vv) - vv, vv)
        first = np.repeat(o, vv) + local * np.repeat(st, vv)
        starts.append(first)
        ends.append(first + np.repeat(nn, vv))
    return np.concatenate(starts), np.concatenate(ends)
