"""Write/read conflicts inside a compute set, found on address intervals, not elements.

Vertices of a compute set run in parallel, so (1) no two of them may write one element, and
(2) no Input element may be written in the compute set (in-place work uses one InOut field).
Each field row becomes one interval when it is contiguous (or reversed contiguous), so a
million-vertex compute set is checked with a few sorts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from softipu.compiler.executable import CompiledComputeSet, VertexGroup
from softipu.debug import at
from softipu.dtypes import DType
from softipu.errors import WriteConflictError
from softipu.graph.tensor import Tensor
from softipu.graph.vertex import Direction

__all__ = ["address_runs", "check_conflicts", "field_intervals"]


@dataclass(slots=True)
class _Intervals:
    """Columns of intervals: address range and who touches it."""

    starts: list[np.ndarray]
    ends: list[np.ndarray]
    owner: list[np.ndarray]  # global vertex number within the compute set
    where: list[np.ndarray]  # index into the (group, field) list

    def columns(self) -> tuple[np.ndarray, ...]:
        return tuple(np.concatenate(c) for c in (self.starts, self.ends, self.owner, self.where))


def field_intervals(t: Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(starts, ends, row) of a (vertices, n) tensor's rows: one interval per contiguous row."""
    rows, n = t.shape
    if rows == 0 or n == 0:
        z = np.zeros(0, np.int64)
        return z, z, z
    if t.is_strided and (n == 1 or abs(t.strides[1]) == 1):
        base = t.offset + np.arange(rows, dtype=np.int64) * t.strides[0]
        starts = base if n == 1 or t.strides[1] > 0 else base - (n - 1)
        return starts, starts + n, np.arange(rows, dtype=np.int64)
    # Runs of consecutive addresses in element order, cut where a row ends: a gathered or grouped
    # field is a few runs per row (a pooling window's pixel rows), not one interval per element.
    starts, lengths = t.element_runs()
    first = np.cumsum(lengths) - lengths  # element position of each run's first element
    row, last_row = first // n, (first + lengths - 1) // n
    if np.array_equal(row, last_row):
        return starts, starts + lengths, row
    count = last_row - row + 1  # a run crossing rows is cut at each row's end
    run = np.repeat(np.arange(starts.size), count)
    piece_row = row[run] + np.arange(run.size) - np.repeat(np.cumsum(count) - count, count)
    lo = np.maximum(first[run], piece_row * n)
    hi = np.minimum(first[run] + lengths[run], (piece_row + 1) * n)
    piece_starts = starts[run] + (lo - first[run])
    return piece_starts, piece_starts + (hi - lo), piece_row


def address_runs(t: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(starts, lengths) covering ``t``'s elements (a multiset), the cheapest way: a strided
    view's own runs; an indexed view that reorders one whole range (a weight laid out in its
    matmul's blocks, say) as that one range; any other indexed view's runs in element order
    (its addresses are not sorted)."""
    if t.slabs is not None:  # a slab layout's pieces are its runs: no index built
        found = _contiguous_pieces(t)
        return found if found is not None else t.runs()
    if t.is_strided:
        return t.runs()
    if t.index.size > 1:
        lo, hi = int(t.index.min()), int(t.index.max())
        if hi - lo + 1 == t.index.size and not t.repeats_elements():  # all of [lo, hi], once
            return np.array([lo], np.int64), np.array([t.index.size], np.int64)
    return t.element_runs()


def _contiguous_pieces(t: Tensor) -> tuple[np.ndarray, np.ndarray] | None:
    """(starts, lengths) of a slab layout whose pieces are each one contiguous run (a layer
    norm's column blocks, say: a thousand pieces), without a view a piece; None otherwise."""
    starts, lengths = [], []
    for offset, shape, strides, _ in t.slabs.pieces:
        run = 1
        for size, stride in zip(reversed(shape), reversed(strides), strict=True):
            if size != 1 and stride != run:
                return None
            run *= size
        if run:
            starts.append(offset)
            lengths.append(run)
    return np.array(starts, np.int64), np.array(lengths, np.int64)


def _merged(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The union of intervals as sorted, disjoint intervals."""
    if starts.size == 0:
        return starts, ends
    order = np.argsort(starts, kind="stable")
    s, e = starts[order], ends[order]
    first = np.flatnonzero(np.concatenate(([True], s[1:] > np.maximum.accumulate(e)[:-1])))
    return s[first], np.maximum.reduceat(e, first)


def _fields_may_clash(compiled: CompiledComputeSet) -> bool:
    """A cheap first look on each field's merged address runs (a whole (V, n) field is often one
    run): if written fields are disjoint from each other and from every read-only field, and none
    repeats an element, nothing can clash and the per-vertex check is skipped."""
    written: dict[DType, list] = {}
    read: dict[DType, list] = {}
    for group in compiled.groups:
        for name, f in group.field_items(Direction.INPUT, Direction.OUTPUT, Direction.INOUT):
            for t in group.tensors(name):
                starts, lengths = address_runs(t)
                table = written if f.direction.writes else read
                table.setdefault(t.dtype, []).append((starts, starts + lengths))
    for dtype, parts in written.items():
        w_s = np.concatenate([p[0] for p in parts])
        w_e = np.concatenate([p[1] for p in parts])
        u_s, u_e = _merged(w_s, w_e)
        if int((u_e - u_s).sum()) < int((w_e - w_s).sum()):  # some element is written twice
            return True
        if dtype in read:
            r_s, r_e = _merged(np.concatenate([p[0] for p in read[dtype]]),
                               np.concatenate([p[1] for p in read[dtype]]))
            lo = np.searchsorted(u_e, r_s, side="right")
            hi = np.searchsorted(u_s, r_e, side="left")
            if np.any(hi > lo):  # a read-only field touches a written one
                return True
    return False


def check_conflicts(compiled: CompiledComputeSet) -> None:
    if not _fields_may_clash(compiled):
        return
    writes: dict[DType, _Intervals] = {}
    reads: dict[DType, _Intervals] = {}
    sources: list[tuple[VertexGroup, str]] = []
    base = 0
    for group in compiled.groups:
        for name, f in group.field_items(Direction.INPUT, Direction.OUTPUT, Direction.INOUT):
            for t in group.tensors(name):
                starts, ends, row = field_intervals(t)
                for table, wanted in ((writes, f.direction.writes),
                                      (reads, f.direction is Direction.INPUT)):
                    if wanted:
                        cols = table.setdefault(t.dtype, _Intervals([], [], [], []))
                        cols.starts.append(starts)
                        cols.ends.append(ends)
                        cols.owner.append(row + base)
                        cols.where.append(np.full(row.shape, len(sources), np.int64))
            sources.append((group, name))
        base += group.num_vertices
    for dtype, w in writes.items():
        w_cols = _check_writes(compiled, sources, w.columns(), base)
        if dtype in reads:
            _check_reads(compiled, sources, w_cols, reads[dtype].columns(), base)


def _check_writes(compiled: CompiledComputeSet, sources: list, cols: tuple, base: int) -> tuple:
    starts, ends, owner, where = cols
    order = np.argsort(starts, kind="stable")
    starts, ends, owner, where = starts[order], ends[order], owner[order], where[order]
    if starts.size > 1:
        reach = np.maximum.accumulate(ends)
        clash = np.flatnonzero(starts[1:] < reach[:-1])
        if clash.size:
            i = int(clash[0]) + 1
            j = int(np.flatnonzero(ends[:i] > starts[i])[0])
            if owner[i] == owner[j]:
                raise WriteConflictError(
                    f"in compute set {compiled.compute_set.name!r}: "
                    f"{_who(sources, owner[i], where[i], base, compiled)} writes "
                    f"{_element(compiled, sources[where[i]], int(starts[i]))} twice (through field "
                    f"{sources[where[j]][1]!r} too, or a repeated element): every output element "
                    "is written once per compute set"
                )
            raise WriteConflictError(
                f"in compute set {compiled.compute_set.name!r}: "
                f"{_who(sources, owner[j], where[j], base, compiled)} and "
                f"{_who(sources, owner[i], where[i], base, compiled)} both write "
                f"{_element(compiled, sources[where[i]], int(starts[i]))}. Vertices of one compute "
                "set run in parallel: give each vertex its own output elements, or split the work "
                "into two compute sets"
            )
    return starts, ends, owner, where


def _check_reads(compiled: CompiledComputeSet, sources: list, w_cols: tuple, r_cols: tuple,
                 base: int) -> None:
    """No Input element may be written in the compute set, not even by its own vertex.

    An Input is never written (Poplar's rule): in-place work goes through one InOut field. The
    fast engine hands Inputs and Outputs to compute as live views, so an aliased pair would see
    half-written data; the rule keeps every vertex's inputs as they were when the step began.
    """
    w_start, w_end, w_owner, w_where = w_cols
    r_start, r_end, r_owner, r_where = r_cols
    lo = np.searchsorted(w_end, r_start, side="right")  # first write ending after the read starts
    hi = np.searchsorted(w_start, r_end, side="left")  # writes starting before the read ends
    bad = np.flatnonzero(hi > lo)
    if not bad.size:
        return
    r, k = int(bad[0]), int(lo[bad[0]])
    address = max(int(r_start[r]), int(w_start[k]))
    reader = _who(sources, r_owner[r], r_where[r], base, compiled)
    writer = _who(sources, w_owner[k], w_where[k], base, compiled)
    element = _element(compiled, sources[r_where[r]], address)
    if r_owner[r] == w_owner[k]:
        raise WriteConflictError(
            f"in compute set {compiled.compute_set.name!r}: {reader} reads {element} through an "
            f"Input that the same vertex writes through field {sources[w_where[k]][1]!r}. An Input "
            "is never written during its compute set: connect the tensor to one InOut field for "
            "in-place work"
        )
    raise WriteConflictError(
        f"in compute set {compiled.compute_set.name!r}: {reader} reads {element}, which {writer} "
        "writes. Inside a compute set a vertex may not read what another writes: move the reader "
        "to a later compute set"
    )


def _who(sources: list, owner: int, where: int, base: int, compiled: CompiledComputeSet) -> str:
    group, name = sources[int(where)]
    first = sum(g.num_vertices for g in compiled.groups[: compiled.groups.index(group)])
    i = int(owner) - first
    return (f"vertex {int(group.vertex_indices[i])} ({group.codelet.__name__}, field {name!r}, "
            f"tile {int(group.tiles[i])}{at(group.location(i))})")


def _element(compiled: CompiledComputeSet, source: tuple, address: int) -> str:
    group, name = source
    t = group.tensors(name)[0]
    var = t.graph.spaces[t.dtype].variable_at(address)
    if var is None:
        return f"address {address}"
    return f"element {address - var.start} of {var.name!r}"
