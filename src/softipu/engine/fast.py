"""The fast path: each vertex group of a compute set runs as batched numpy calls.

Regular groups bind zero-copy strided views of storage once, at load; irregular fields (and
rows whose elements are not consecutive) are gathered into contiguous arrays before the call
and scattered after. All replicas run in the
same call (a leading replica axis).

Large regular groups are split into chunks of vertices of about :data:`CHUNK_BYTES` per field,
so the temporaries a codelet makes (``y[...] = x + 1`` builds ``x + 1`` first) stay in cache
instead of costing a fresh allocation and an extra pass over memory. Vertices of a compute set
are independent (the compiler checked), so any split gives the same result.

The groups and chunks of a compute set also run side by side on the host's idle cores
(:func:`softipu.codelets.host.run_side_by_side`), largest first as timed on the compute set's
first run, from its third run on where that proved faster than one thread. Only softipu's own
codelets are shared out so: a user's codelet runs on the calling thread, in order, as it would
without threads.

A library matmul's AMP steps and partials reduction run instead as a few whole GEMMs
(:mod:`softipu.engine.chains`), and a copy between two strided tensors (or from an indexed one
into a strided one) binds its views once. A user's codelet whose body is one elementwise
assignment runs as the same ufunc calls writing into its output (:mod:`softipu.engine.inplace`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from softipu.codelets.host import (
    FrozenList,
    frozen,
    keep_freed_pages,
    run_in_turn,
    run_pieces,
    run_side_by_side,
)
from softipu.compiler.executable import Executable, VertexGroup
from softipu.debug import at
from softipu.engine.blas_warmup import warm_blas_buffers
from softipu.engine.copy_fusion import FusedChains
from softipu.engine.inplace import InPlace, plan
from softipu.engine.interpreter import ProgramInterpreter, RunLog
from softipu.engine.joins import join_groups
from softipu.engine.reductions import Reductions
from softipu.engine.rounding import StochasticRounding
from softipu.engine.storage import BLOCKED_MIN, Storage, assign, common_refinement, copy_rows, strided_form
from softipu.engine.streams import HostStreams
from softipu.errors import CodeletError
from softipu.graph import program as P
from softipu.graph.streams import DataStream
from softipu.graph.tensor import Tensor, strides_never_meet
from softipu.graph.vertex import Direction

__all__ = ["FastInterpreter", "GroupRunner", "MergedRunner", "CHUNK_BYTES", "MERGE_BYTES",
           "SIDE_BY_SIDE_SECONDS"]

# Measured on the 8,832-vertex AddOne benchmark: 256 KiB-1 MiB chunks run 0.64-0.75x numpy's
# `y = x + 1`; one call over the whole group runs 1.47x (bench/bench_engine.py).
CHUNK_BYTES = 512 * 1024
# A group of at least this many bytes a field is cut into two chunks or more, so that a costly
# op on one mid-sized group (the demo encoder's erf GELU over 64 K floats: 0.55 ms) can share its
# work with a second core where that proves faster (below).
HALVES_BYTES = 256 * 1024
# A compute set that took less than this on its first run stays on one thread: handing work to
# another costs tens of microseconds.
SIDE_BY_SIDE_SECONDS = 5e-4


class GroupRunner:
    """Runs one vertex group: bind or gather fields, call ``compute``, scatter outputs."""

    __slots__ = ("group", "where", "fixed", "gathers", "scatters", "compute", "calls")

    def __init__(self, group: VertexGroup, storage: Storage, where: str,
                 bodies: dict[type, InPlace | None] | None = None) -> None:
        self.group = group
        self.where = where
        self.compute = group.codelet.compute
        self.fixed: dict[str, Any] = {}
        # (field, part, tensor, read-only, bound): ``bound`` for a strided tensor is (its view, a
        # contiguous array, what the codelet gets of it, the copy in, the copy out if written),
        # made once; indexed tensors get None.
        self.gathers: list[tuple[str, int, Tensor, bool, tuple | None]] = []
        self.scatters: list[tuple[str, int, Tensor, tuple | None]] = []
        replica_axis = storage.replicas > 1
        for name, f in group.codelet.fields.items():
            value = group.fields[name]
            if f.direction is Direction.PARAM:  # frozen: codelets keep plans in its memo
                self.fixed[name] = frozen(value.reshape(-1, 1))
                continue
            parts: list[Any] = []
            for k, t in enumerate(group.tensors(name)):
                if _unit_inner_stride(t):
                    parts.append(storage.view(t, writeable=f.direction.writes, replica_axis=replica_axis))
                else:
                    parts.append(None)
                    bound = _bound(storage, t, f.direction.writes, replica_axis)
                    self.gathers.append((name, k, t, not f.direction.writes, bound))
                    if f.direction.writes:
                        self.scatters.append((name, k, t, bound))
            self.fixed[name] = FrozenList(parts) if isinstance(value, tuple) else parts[0]
        self.calls = [self.fixed] if self.gathers else _chunks(self.fixed, group, storage.replicas)
        if bodies is not None and not self.gathers and not _host_safe(group.codelet):
            # A user's ``y[...] = x + 1`` as ``np.add(x, 1, out=y)``: bitwise the same (inplace.py).
            codelet = group.codelet
            if codelet not in bodies:
                bodies[codelet] = plan(codelet, set(codelet.fields))
            body = bodies[codelet]
            if body is not None and body.fits(self.fixed):
                self.compute = body
                self.calls = [self.fixed]  # no temporaries to keep in cache: one call

    def jobs(self, storage: Storage) -> list[Callable[[], None]]:
        """This group as pieces that may run side by side: its chunks, or the whole group where
        it gathers and scatters."""
        if self.gathers:
            return [partial(self, storage)]
        if self.compute is not self.group.codelet.compute:  # a user's body in place
            return [partial(self._compute, args) for args in self.calls]
        return [_bound_run(self.group.codelet, args) or partial(self._compute, args) for args in self.calls]

    def _compute(self, args: dict[str, Any]) -> None:
        try:
            self.compute(**args)
        except Exception as exc:
            raise _codelet_failure(self.group, self.where, exc) from exc

    def __call__(self, storage: Storage) -> None:
        calls = self.calls if not self.gathers else [self._gather(storage)]
        for args in calls:
            self._compute(args)
        args = calls[0]
        for name, k, t, bound in self.scatters:
            value = args[name]
            value = value[k] if isinstance(value, list) else value
            if bound is not None:  # the codelet wrote ``bound[2]``, a view of ``bound[1]``
                bound[4]()
            else:
                storage.scatter(t, value, replica_axis=storage.replicas > 1)

    def _gather(self, storage: Storage) -> dict[str, Any]:
        args = {n: list(v) if isinstance(v, list) else v for n, v in self.fixed.items()}
        for name, k, t, read_only, bound in self.gathers:
            if bound is not None:  # a strided tensor: copied through its view bound at load
                arr = bound[2]
                bound[3]()
            else:
                arr = storage.gather(t, replica_axis=storage.replicas > 1)
                arr.flags.writeable = not read_only
            if isinstance(args[name], list):
                args[name][k] = arr
            else:
                args[name] = arr
        return args


def _bound_run(codelet: type, args: dict[str, Any]) -> Callable[[], Any] | None:
    """The codelet's work on these arguments as a call bound once, where the codelet offers one
    (``bound_run``: its fields' arrays and params in, a zero-argument callable or None out; a
    transpose's one ``np.copyto`` between fixed views): the arrays are the same on every run."""
    bind = getattr(codelet, "bound_run", None)
    return None if bind is None else bind(**args)


def _bound(storage: Storage, t: Tensor, writes: bool, replica_axis: bool) -> tuple | None:
    """(view, contiguous array, the array as the codelet gets it: read-only unless written) of a
    strided tensor that is gathered (rows not consecutive), made once; likewise for an indexed
    input whose addresses form a strided view of other axes (:func:`_as_strided`) and a slab
    layout of several pieces (:func:`_slab_bound`); else None. The contiguous arrays are lent by
    :class:`~softipu.engine.storage.SharedArrays` (filled before every use, so nothing carries
    over from another compute set)."""
    if t.numel == 0:
        return None
    if not t.is_strided:  # indexed, or slab-laid (its index not built to say so)
        found = _as_strided(storage, t, replica_axis, writes)
        if found is None and t.slabs is not None:
            found = _slab_bound(storage, t, replica_axis, writes)
        return found
    view = storage.view(t, writeable=writes, replica_axis=replica_axis)
    buf = storage.shared.get(view.shape, view.dtype)  # the compute sets run one at a time: shared
    handed = buf if writes else buf.view()
    handed.flags.writeable = writes
    return _with_copies(view, buf, handed, writes)


def _with_copies(view: np.ndarray, buf: np.ndarray, handed: np.ndarray, writes: bool) -> tuple:
    """``(view, buf, handed)`` and the copies between the view and its contiguous buffer, bound
    once (:func:`~softipu.engine.storage.copy_rows`: rows of a few contiguous elements moved as
    one item each; a LayerNorm's cross-tile partials, pairs 1 KiB apart, 93 -> 12 us a run)."""
    return view, buf, handed, copy_rows(buf, view), copy_rows(view, buf) if writes else None


# Indexed inputs up to this many elements are checked for a strided form when a group is bound.
STRIDED_FORM_MAX = 1 << 20


def _as_strided(storage: Storage, t: Tensor, replica_axis: bool, writes: bool = False) -> tuple | None:
    """An indexed or slab-laid field (a broadcast attention mask, rows of a column-major table, a
    pooling vertex's pixels) whose addresses are a strided view of other axes
    (:func:`strided_form`): copied through that view into a contiguous array on every run (and
    back, where written), instead of a ``take`` reading an int64 per element or a slab writer
    made per run. A written field's view must not repeat an element."""
    grouped = t._grouped() if t.slabs is not None else None  # a grid read from its structure
    if grouped is not None:
        offset, shape, strides = grouped.offset, grouped.shape, grouped.strides
    else:
        if t.numel > STRIDED_FORM_MAX:
            return None
        form = strided_form(t.index if t.index is not None else t.addresses())
        if form is None:
            return None
        offset, shape, strides = form
    if writes and any(n > 1 and st == 0 for n, st in zip(shape, strides, strict=True)):
        return None
    view = storage.view(Tensor(t.graph, t.dtype, shape, offset, strides), writeable=writes,
                        replica_axis=replica_axis)
    lead = view.shape[:len(view.shape) - len(shape)]
    kept = storage.shared.get(lead + t.shape, view.dtype)
    buf, handed = kept.reshape(view.shape), kept.view()
    handed.flags.writeable = writes
    return _with_copies(view, buf, handed, writes)


def _slab_bound(storage: Storage, t: Tensor, replica_axis: bool, writes: bool) -> tuple | None:
    """A slab-laid field of several pieces (rows of a matrix laid out in column slabs, cut between
    tiles: a training step's logits-sized fields come in hundreds of row runs) copied piece by
    piece through strided views into a contiguous array kept for every run (and back, where
    written: then no piece may repeat an element), instead of a ``take`` through an int64 index
    built from the slabs on first use and a fresh array each run. Same elements in the same
    order, so the codelet computes the same values. The array is lent by
    :class:`~softipu.engine.storage.SharedArrays`: other compute sets' fields of its shape use it too."""
    lead = (storage.replicas,) if replica_axis else ()
    handed = storage.shared.get(lead + t.shape, t.dtype.numpy)  # shared with other compute sets
    pairs = storage.slab_pairs(t, handed)
    if pairs is None or (writes and not all(strides_never_meet(v.shape[len(lead):], v.strides[len(lead):])
                                            for v, _ in pairs)):
        return None
    copy_in = partial(run_in_turn, [copy_rows(part, view) for view, part in pairs])
    copy_out = partial(run_in_turn, [copy_rows(view, part) for view, part in pairs]) if writes else None
    out = handed if writes else handed.view()
    out.flags.writeable = writes
    return None, handed, out, copy_in, copy_out


def _unit_inner_stride(t: Tensor) -> bool:
    """Rows with consecutive elements: numpy then reduces each row exactly as the reference does.

    A row strided in memory (a column of a matrix, say) is gathered into a contiguous copy
    instead: numpy sums a non-contiguous axis in another order, and results must not depend
    on how the engine batches (design.md principle 6).
    """
    return t.is_strided and (t.shape[1] <= 1 or t.strides[1] == 1)  # no index built to say so


def _chunks(args: dict[str, Any], group: VertexGroup, replicas: int) -> list[dict[str, Any]]:
    """The group's arguments split along the vertex axis into cache-sized pieces."""
    num, replica_axis = group.num_vertices, replicas > 1
    sizing = group.codelet.chunk_fields
    row_bytes = replicas * max((t.shape[1] * t.dtype.itemsize for name, _ in group.field_items(*_DATA)
                                if sizing is None or name in sizing for t in group.tensors(name)), default=0)
    rows = max(1, CHUNK_BYTES // max(row_bytes, 1))
    if num * row_bytes >= HALVES_BYTES:  # at least two chunks: a second core may take one
        rows = min(rows, -(-num // 2))
    elif num <= 2 * rows:
        return [args]
    if rows >= num:
        return [args]
    axis_of = {name: (1 if replica_axis and f.direction is not Direction.PARAM else 0)
               for name, f in group.codelet.fields.items()}
    return [{name: _rows(v, axis_of[name], lo, lo + rows) for name, v in args.items()}
            for lo in range(0, num, rows)]


_DATA = (Direction.INPUT, Direction.OUTPUT, Direction.INOUT)


def _rows(value: Any, axis: int, lo: int, hi: int) -> Any:
    if isinstance(value, list):
        return FrozenList(_rows(v, axis, lo, hi) for v in value)
    return value[lo:hi] if axis == 0 else value[:, lo:hi]


def _codelet_failure(group: VertexGroup, where: str, exc: Exception) -> CodeletError:
    codelet = group.codelet
    tiles = np.unique(group.tiles)
    tile_text = f"tile {tiles[0]}" if tiles.size == 1 else f"tiles {tiles[0]}..{tiles[-1]}"
    hint = ""
    if isinstance(exc, ValueError) and "read-only" in str(exc):
        hint = " (an Input field is read-only: declare it InOut to update it in place)"
    return CodeletError(
        f"codelet {codelet.__name__} (defined at {codelet.defined_at}) failed in {where}: "
        f"{group.num_vertices} vertices on {tile_text}, added{at(group.location(0))}: "
        f"{type(exc).__name__}: {exc}{hint}"
    )


class MergedRunner:
    """Small vertex groups of one compute set, of one codelet that allows it (``merge_groups``),
    with equal field lengths and equal constant params, whose fields lie at evenly spaced offsets
    (a matmul's tile blocks, one group per block row), run as one call: every field a zero-copy
    ``(runs, groups, vertices, n)`` view of a grid of groups (``(groups, vertices, n)`` for one
    run), the groups leading axes (a BERT-style model on a GC200 cuts each small matmul into ~90
    groups of a few tile blocks; a call each cost more than the products). Vertices of a compute
    set are independent, so the merge changes no value a vertex computes alone; a contraction's
    merged products are the same on every run."""

    __slots__ = ("group", "where", "compute", "args")

    def __init__(self, grid: list[list[VertexGroup]], storage: Storage, where: str) -> None:
        self.group, self.where = grid[0][0], where
        self.compute = self.group.codelet.compute
        self.args: dict[str, Any] = {}
        for name, f in self.group.codelet.fields.items():
            first = self.group.fields[name]
            if f.direction is Direction.PARAM:
                self.args[name] = frozen(np.asarray(first).reshape(-1, 1))
                continue
            views = [storage.view(_stacked([[g.tensors(name)[k] for g in run] for run in grid]),
                                  writeable=f.direction.writes, replica_axis=False)
                     for k in range(len(self.group.tensors(name)))]
            self.args[name] = FrozenList(views) if isinstance(first, tuple) else views[0]

    def jobs(self, storage: Storage) -> list[Callable[[], None]]:
        return [_bound_run(self.group.codelet, self.args) or self.run]

    def run(self) -> None:
        try:
            self.compute(**self.args)
        except Exception as exc:
            raise _codelet_failure(self.group, self.where, exc) from exc


# A group whose data fields hold fewer bytes than this may be merged with others like it: about
# what numpy copies in the time a Python-level call of a group costs.
MERGE_BYTES = 64 * 1024


def _stacked(grid: list[list[Tensor]]) -> Tensor:
    """A grid of tensors of one layout at evenly spaced offsets (rows of equal steps, rows evenly
    spaced) as one tensor with the grid's axes leading (the row axis dropped for one row)."""
    first = grid[0][0]
    inner = grid[0][1].offset - first.offset if len(grid[0]) > 1 else 0
    if len(grid) == 1:
        return Tensor(first.graph, first.dtype, (len(grid[0]),) + first.shape, first.offset,
                      (inner,) + first.strides)
    outer = grid[1][0].offset - first.offset
    return Tensor(first.graph, first.dtype, (len(grid), len(grid[0])) + first.shape, first.offset,
                  (outer, inner) + first.strides)


def _merge_key(group: VertexGroup, replicas: int) -> tuple | None:
    """What groups must share to run as one :class:`MergedRunner` call, or None if this one runs
    alone (a large group, a vector list, an indexed field, per-vertex params, replicas, or a
    codelet that does not take a leading groups axis)."""
    codelet = group.codelet
    if replicas > 1 or not getattr(codelet, "merge_groups", False):
        return None
    key: list[Any] = [codelet, group.num_vertices]
    size = 0
    for name, f in codelet.fields.items():  # the size first: most large groups stop here
        if f.direction is not Direction.PARAM:
            tensors = group.tensors(name)
            if not all(_unit_inner_stride(t) for t in tensors):
                return None
            key.append(tuple((t.shape, t.strides) for t in tensors))
            size += sum((t.shape[1] if t.strides[0] == 0 else t.numel) * t.dtype.itemsize for t in tensors)
            if size >= MERGE_BYTES:
                return None
    for name, f in codelet.fields.items():
        if f.direction is Direction.PARAM:
            param = np.asarray(group.fields[name]).reshape(-1)
            if param.size and not np.all(param == param[0]):
                return None
            key.append(param[0].item() if param.size else None)
    return tuple(key)


def _even_runs(groups: list[VertexGroup]) -> list[list[VertexGroup]]:
    """The groups (alike by :func:`_merge_key`) in runs whose every field steps evenly from one
    group to the next, in order of their first field's offset."""
    names = [n for n, f in groups[0].codelet.fields.items() if f.direction is not Direction.PARAM]

    def offsets(g: VertexGroup) -> list[int]:
        return [t.offset for n in names for t in g.tensors(n)]

    def steps(a: VertexGroup, b: VertexGroup) -> list[int]:
        return [y - x for x, y in zip(offsets(a), offsets(b), strict=True)]

    groups = sorted(groups, key=lambda g: offsets(g)[0])

    runs: list[list[VertexGroup]] = []
    for g in groups:
        run = runs[-1] if runs else None
        if run and (len(run) == 1 or steps(run[-1], g) == steps(run[0], run[1])):
            run.append(g)
        else:
            runs.append([g])
    return runs


def _runners(groups: tuple[VertexGroup, ...], storage: Storage, where: str,
             bodies: dict[type, InPlace | None] | None = None) -> list[Any]:
    """A runner per group; small groups alike and evenly spaced merged (:class:`MergedRunner`).
    ``bodies``: the in-place forms of codelets' bodies found so far (see :class:`GroupRunner`)."""
    runners: list[Any] = []
    own: dict[type, list[VertexGroup]] = {}  # codelets running all their groups as one (group_runner)
    for g in groups if storage.replicas == 1 else ():
        if getattr(g.codelet, "group_runner", None) is not None:
            own.setdefault(g.codelet, []).append(g)
    for c, gs in own.items():  # None: the codelet's groups run one by one after all
        runner = c.group_runner(gs, storage, where)
        if runner is not None:
            runners.append(runner)
            groups = tuple(g for g in groups if g.codelet is not c)
    alike: dict[tuple, list[VertexGroup]] = {}
    for g in join_groups(groups):  # pieces of one group (a lookup over tiles) as one (joins.py)
        key = _merge_key(g, storage.replicas)
        if key is None:
            runners.append(GroupRunner(g, storage, where, bodies))
        else:
            alike.setdefault(key, []).append(g)
    for gs in alike.values():
        for grid in _grids(_even_runs(gs)):
            alone = len(grid) == 1 and len(grid[0]) == 1
            runners.append(GroupRunner(grid[0][0], storage, where) if alone else
                           MergedRunner(grid, storage, where))
    return runners


def _grids(runs: list[list[VertexGroup]]) -> list[list[list[VertexGroup]]]:
    """Consecutive runs of equal length and steps whose first groups step evenly too, as grids
    (a matmul's blocks indexed by two block coordinates)."""
    def step(a: VertexGroup, b: VertexGroup) -> list[int]:
        return [y.offset - x.offset for n in names for x, y in zip(a.tensors(n), b.tensors(n), strict=True)]

    names = [n for n, f in runs[0][0].codelet.fields.items() if f.direction is not Direction.PARAM]
    grids: list[list[list[VertexGroup]]] = []
    for run in runs:
        grid = grids[-1] if grids else None
        if (grid and len(run) == len(grid[0]) and len(run) > 1
                and step(run[0], run[1]) == step(grid[0][0], grid[0][1])
                and (len(grid) == 1 or step(grid[-1][0], run[0]) == step(grid[0][0], grid[1][0]))):
            grid.append(run)
        else:
            grids.append([run])
    return grids


class _ComputeSetRunner:
    """A compute set's jobs (groups and chunks). Its first run times them one by one on this
    thread (and touches their memory); where that took long enough to be worth sharing, the
    second run is timed on this thread alone, the third shares the jobs out, largest first, and
    whichever of the two ran faster is kept. (Jobs that are mostly Python contend for the
    interpreter lock and can run slower side by side.)"""

    __slots__ = ("jobs", "shared", "runs", "serial_seconds")

    def __init__(self, runners: list[Any], storage: Storage) -> None:
        self.jobs = [job for r in runners for job in r.jobs(storage)]
        self.shared = len(self.jobs) > 1 and all(_host_safe(r.group.codelet) for r in runners)
        self.runs = 0
        self.serial_seconds = 0.0

    def __call__(self) -> None:
        if self.runs >= 3 or not self.shared:
            if self.shared:
                run_side_by_side(self.jobs)
            else:
                for job in self.jobs:
                    job()
            return
        self.runs += 1
        if self.runs == 1:
            seconds = []
            for job in self.jobs:
                start = time.perf_counter()
                job()
                seconds.append(time.perf_counter() - start)
            order = sorted(range(len(self.jobs)), key=seconds.__getitem__, reverse=True)
            self.jobs = [self.jobs[i] for i in order]
            self.shared = sum(seconds) >= SIDE_BY_SIDE_SECONDS
            return
        start = time.perf_counter()
        if self.runs == 2:
            for job in self.jobs:
                job()
            self.serial_seconds = time.perf_counter() - start
            return
        run_side_by_side(self.jobs)
        self.shared = time.perf_counter() - start < self.serial_seconds


def _host_safe(codelet: type) -> bool:
    """softipu's own codelets may share host threads; a user's may keep state between calls."""
    return codelet.__module__.startswith("softipu.")


# A copy of at least two pieces of this many elements is cut into such pieces along its longest
# axis (by its shape alone), run on idle cores: a copy's values do not depend on the cut.
COPY_PIECE = 1 << 17
_COPY_PIECES = 4


def _copy_pieces(to: np.ndarray, of: np.ndarray) -> list[Callable[[], Any]]:
    """``to[...] = of`` (same shapes, not overlapping) as pieces along ``to``'s longest axis."""
    axis = int(np.argmax(to.shape))
    parts = max(1, min(_COPY_PIECES, to.size // COPY_PIECE, to.shape[axis]))
    cuts = [to.shape[axis] * p // parts for p in range(parts + 1)]
    pieces = []
    for lo, hi in zip(cuts[:-1], cuts[1:], strict=True):
        at_ = (slice(None),) * axis + (slice(lo, hi),)
        pieces.append(copy_rows(to[at_], of[at_]))
    return pieces


class FastInterpreter(ProgramInterpreter):
    """The engine's executor: batched compute sets, precomputed views."""

    def __init__(self, executable: Executable, storage: Storage, streams: HostStreams,
                 log: RunLog, out: Any = None) -> None:
        super().__init__(executable, storage, streams, log, out)
        keep_freed_pages()  # codelets' temporaries reuse pages instead of faulting fresh ones
        warm_blas_buffers()  # numpy's OpenBLAS at full speed from the first product (blas_warmup.py)
        self._runners: dict[int, _ComputeSetRunner] = {}
        self._bodies: dict[type, InPlace | None] = {}  # codelet -> its body in place (engine/inplace.py)
        # Library matmuls as whole GEMMs (engine/chains.py), each built on its first run. Not under
        # stochastic rounding, which counts executed compute sets and rounds from the partials.
        # Outer max/min/logical reductions as one numpy reduction (engine/reductions.py), likewise.
        rounding = isinstance(self, StochasticRounding)
        self._chains = None if rounding else FusedChains(executable, storage)
        # A chain's compute sets get their runners only if one runs as usual (the chain is not
        # taken): a model's matmuls are most of its vertex groups, and their GEMMs never use them.
        lazy = self._chains.compute_sets() if self._chains else set()
        for cs_id in executable.compute_sets:
            if cs_id not in lazy:
                self._runners[cs_id] = self._runner(cs_id)
        self._reductions = None if rounding else Reductions(executable, storage)
        # Step -> the fusion that may take it over (a step belongs to one at most).
        self._fused = {step: f for f in (self._chains, self._reductions) if f for step in f.steps()}
        # Copy step -> its tensor-to-tensor copy between views bound once (None: not such a copy).
        self._copies: dict[int, Callable[[], Any] | None] = {}

    def run_execute(self, node: P.Execute) -> None:
        step = self._step_of.get(id(node))
        if step is not None:
            self.log.add(step, self._step_cycles[step])  # as account(node)
            fusion = self._fused.get(step)
            if fusion is not None and fusion.handle(step):
                return
        self.execute(node.compute_set.id)

    def run_copy(self, node: P.Copy) -> None:
        """A copy between two strided tensors with its views bound on its first run (a small
        model's later call makes dozens); anything else as the base interpreter copies."""
        step = self._step_of.get(id(node))
        copy = self._copies.get(step, False) if step is not None else None
        if self._chains and step in self._chains.skipped():  # a chain gathers from its source
            self.log.add(step, self._step_cycles[step])
            return
        if copy is False:
            copy = self._copies[step] = self._bound_copy(node)
        if isinstance(node.src, DataStream) and isinstance(node.dst, Tensor) and self._chains:
            self._chains.scratch.streamed(node.dst)  # weights loaded: kept copies are stale
        if copy is None:
            super().run_copy(node)
            return
        self.log.add(step, self._step_cycles[step])
        copy()

    def _bound_copy(self, node: P.Copy) -> Callable[[], Any] | None:
        src, dst = node.src, node.dst
        if isinstance(src, DataStream) and isinstance(dst, Tensor) and dst.slabs is not None and dst.numel:
            # A stream into a slab-laid tensor (a matmul's input): its pieces' views made once.
            return partial(self._stream_into, src, dst, self.storage.slab_writer(dst, replica_axis=True),
                           at(node.location))
        if isinstance(src, DataStream) and isinstance(dst, Tensor) and dst.is_strided and dst.numel:
            # A stream into a strided tensor (the demo's token ids): its view made once.
            to = self.storage.view(dst, writeable=True, replica_axis=True)
            return partial(self._stream_view, src, to, at(node.location))
        if isinstance(src, Tensor) and isinstance(dst, DataStream) and src.is_strided and src.numel:
            # A strided tensor to the host (a model's output): pushed from its view, no gather first.
            of = self.storage.view(src, writeable=False, replica_axis=True)
            return partial(self.streams.push, dst, of, at(node.location))
        if not (isinstance(src, Tensor) and isinstance(dst, Tensor)) or dst.index is not None:
            return None
        if src.index is not None:
            return self._bound_take(src, dst)
        view = self.storage.view
        to, of = view(dst, writeable=True, replica_axis=True), view(src, writeable=False, replica_axis=True)
        if to.size >= 2 * COPY_PIECE and of.shape == to.shape and not np.may_share_memory(to, of):
            return partial(run_pieces, _copy_pieces(to, of))  # a convolution's im2col window, say
        # In blocks where the layouts cross (a transposing copy), else one call over rows.
        if np.may_share_memory(to, of) or of.shape != to.shape:
            return partial(assign, to, of) if to.size >= BLOCKED_MIN else partial(np.copyto, to, of)
        return copy_rows(to, of)

    def _stream_into(self, src: DataStream, dst: Tensor, write: Callable[[np.ndarray], None],
                     where: str) -> None:
        write(self.streams.pull(src, where).reshape((self.storage.replicas,) + dst.shape))

    def _stream_view(self, src: DataStream, to: np.ndarray, where: str) -> None:
        assign(to, self.streams.pull(src, where).reshape(to.shape))

    def _bound_take(self, src: Tensor, dst: Tensor) -> Callable[[], Any] | None:
        """An indexed source copied into a strided destination: one ``take`` of the source's
        addresses straight into the destination's view (a gather and a scatter before). numpy
        buffers the take where the two may overlap. Where the addresses form a strided view
        (:func:`strided_form`: an attention head's block of a matmul's output), a copy between
        the two views instead (:func:`_view_copy`)."""
        if dst.slabs is not None or src.dtype != dst.dtype \
                or src.index.shape != dst.shape or dst.numel == 0:
            return None
        to = self.storage.view(dst, writeable=True, replica_axis=True)
        copy = self._view_copy(src, dst, to)
        if copy is not None:
            return copy
        index = np.ascontiguousarray(src.index, dtype=np.intp)
        reach = [(n - 1) * st for n, st in zip(dst.shape, dst.strides, strict=True)]
        lo, hi = dst.offset + sum(min(r, 0) for r in reach), dst.offset + sum(max(r, 0) for r in reach)
        apart = int(index.max()) < lo or int(index.min()) > hi
        return partial(np.take, self.storage.buffers[src.dtype], index, 1, to, "clip" if apart else "raise")

    def _view_copy(self, src: Tensor, dst: Tensor, to: np.ndarray) -> Callable[[], Any] | None:
        """``to[...] = `` the indexed ``src`` as a copy between two views, bound once, where its
        addresses form a strided view that does not meet ``to`` and the two views split into a
        common shape (:func:`common_refinement`): the same elements in the same order, without
        reading an int64 address per element (the demo encoder's ten such copies a call:
        ~4x faster). None where that does not hold, or ``dst`` repeats an element."""
        if src.numel > STRIDED_FORM_MAX or any(n > 1 and st == 0 for n, st in zip(dst.shape, dst.strides,
                                                                                    strict=True)):
            return None
        form = strided_form(src.index)
        common = None if form is None else common_refinement(form[1], dst.shape)
        if common is None:
            return None
        offset, shape, strides = form
        of = self.storage.view(Tensor(src.graph, src.dtype, shape, offset, strides), writeable=False,
                               replica_axis=True)
        if np.may_share_memory(to, of):
            return None
        lead = to.shape[:1]
        try:
            return copy_rows(to.reshape(lead + common, copy=False), of.reshape(lead + common, copy=False))
        except ValueError:  # NOTE: splitting axes is always a view; kept as the take otherwise
            return None

    def _runner(self, cs_id: int) -> _ComputeSetRunner:
        compiled = self.executable.compute_sets[cs_id]
        where = f"compute set {compiled.compute_set.name!r}"
        self.storage.shared.compute_set()  # its gathered slab fields' arrays: shared with other sets
        return _ComputeSetRunner(_runners(compiled.groups, self.storage, where, self._bodies), self.storage)

    def execute(self, compute_set_id: int) -> None:
        runner = self._runners.get(compute_set_id)
        if runner is None:
            runner = self._runners[compute_set_id] = self._runner(compute_set_id)
        runner()
