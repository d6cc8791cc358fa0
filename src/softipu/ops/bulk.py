"""Vertices and tile mappings added in bulk over address runs.

An op that lays out blocks itself (the matmul's AMP and partials-reduction vertices) knows each
vertex's field start addresses as arrays. :func:`add_vertex_runs` turns them into as few
``graph.add_vertices`` calls as it can, each over fields that are evenly spaced rows of memory, so
the compiler sees strided fields and the fast engine runs a call as one batched product over
zero-copy views; :func:`map_runs` maps address runs of a variable to tiles in one call.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from softipu.dtypes import DType
from softipu.graph.graph import ComputeSet, Graph
from softipu.graph.tensor import Slabs, Tensor

__all__ = ["add_vertex_runs", "evenly_spaced", "map_runs", "row_tensor"]


def map_runs(graph: Graph, var: Tensor, starts: np.ndarray, lengths: np.ndarray,
             tiles: np.ndarray) -> None:
    """Map address runs ``[start, start + length)`` of the contiguous ``var`` to tiles, in one call."""
    keep = lengths > 0
    begins = starts[keep] - var.offset
    graph.map_intervals(var, begins, begins + lengths[keep], tiles[keep])


def evenly_spaced(x: np.ndarray) -> bool:
    """Whether every row of ``x`` (the last axis) steps by one constant of its own."""
    d = np.diff(x, axis=-1)
    return bool(np.all(d == d[..., :1]))


def add_vertex_runs(graph: Graph, cs: ComputeSet, codelet, keys: list[np.ndarray], order: np.ndarray,
                    tiles: np.ndarray, starts: dict[str, np.ndarray],
                    tensors: dict[str, tuple[DType, np.ndarray]], params: dict[str, np.ndarray],
                    fine_key: np.ndarray | None = None) -> None:
    """Add vertices in bulk calls whose fields are evenly spaced rows (zero-copy for the engine).

    Vertices are grouped by ``keys`` (equal keys, equal field lengths) and ordered by ``order``
    inside a group. A group whose field starts are not evenly spaced is split by ``fine_key``
    and, if still irregular, gets indexed fields (the engine then gathers them).
    ``starts[name]`` is ``(V,)``, or ``(entries, V)`` for a vector-list field.

    Every group's spacing is found from one pass over all the starts (each field row's steps and
    where they change, in the sorted order), not a pass per group.
    """
    cols = [np.asarray(k, np.int64) for k in keys]
    idx = np.lexsort([order] + cols[::-1])
    if idx.size == 0:
        return
    key_mat = np.stack([c[idx] for c in cols]) if cols else np.zeros((0, idx.size), np.int64)
    change = np.flatnonzero(np.any(key_mat[:, 1:] != key_mat[:, :-1], axis=0)) + 1
    del key_mat, cols
    bounds = np.concatenate(([0], change, [idx.size]))
    lo_hi = list(zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True))
    params = {name: _as_field_dtype(codelet, name, values) for name, values in params.items()}
    rows = {name: np.asarray(s, np.int64).reshape(-1, np.shape(s)[-1]) for name, s in starts.items()}
    # per field, per row: (evenly spaced?, step, first start) of every group, as Python ints
    spacing = {name: [_group_spacing(row, idx, bounds) for row in r] for name, r in rows.items()}
    lengths = {name: _group_lengths(length, idx, bounds) for name, (_, length) in tensors.items()}
    ends = _grid_ends(bounds, spacing, lengths)
    g, count = 0, len(lo_hi)
    while g < count:
        lo, hi = lo_hi[g]
        sel = idx[lo:hi]
        if fine_key is not None and not all(sp[0][g] for rows_sp in spacing.values() for sp in rows_sp):
            fk = fine_key[sel]
            for piece in np.split(sel, np.flatnonzero(fk[1:] != fk[:-1]) + 1):
                _bulk(graph, cs, codelet, tiles, starts, tensors, params, piece)
            g += 1
            continue
        last = ends[g]
        hi = lo_hi[last - 1][1]
        sel = idx[lo:hi]
        fields: dict[str, Any] = {}
        for name, r in rows.items():
            dtype, n = tensors[name][0], lengths[name][g]
            made = [_rows_tensor(graph, dtype, last - g, lo_hi[g], n, *sp, g) if sp[0][g]
                    else _indexed(graph, dtype, row[sel], n)
                    for row, sp in zip(r, spacing[name], strict=True)]
            fields[name] = made if np.ndim(starts[name]) == 2 else made[0]
        for name, values in params.items():
            fields[name] = values[sel] if values.ndim else values
        graph.add_vertices(cs, codelet, fields, tiles[sel])
        g = last


def _grid_ends(bounds: np.ndarray, spacing: dict, lengths: dict) -> list[int]:
    """For each group ``g``, the end of the run of groups from ``g`` that form one grid: groups of
    the same size whose every field row is evenly spaced with the same step and length, and whose
    first starts step evenly from group to group (each field row its own step). One bulk call then
    holds them all, each field a :func:`_rows_tensor` (the compiler cuts it back into the groups).
    Found for every group at once from where neighbouring groups differ, not group by group."""
    count = bounds.size - 1
    size = np.diff(bounds)
    rows = [sp for sps in spacing.values() for sp in sps]
    ok = np.ones(count, bool)  # a group that can begin or join a grid
    for regular, _, _ in rows:
        ok &= np.asarray(regular, bool)
    for n in lengths.values():
        ok &= np.asarray(n, np.int64) != 0
    alike = ok[:-1] & ok[1:] & (size[:-1] == size[1:])  # alike[x]: group x + 1 may follow group x
    for _, step, _ in rows:
        st = np.asarray(step, np.int64)
        alike &= st[:-1] == st[1:]
    for n in lengths.values():
        ln = np.asarray(n, np.int64)
        alike &= ln[:-1] == ln[1:]
    same = np.ones(max(count - 2, 0), bool)  # same[x]: first starts step alike x -> x+1 -> x+2
    for _, _, first in rows:
        d = np.diff(np.asarray(first, np.int64))
        same &= d[:-1] == d[1:]
    goes_on = np.zeros(count, bool)  # goes_on[x]: a grid begun before x that reached x takes x + 1
    goes_on[1:count - 1] = alike[1:] & same
    if count == 0:
        return []
    stops = np.flatnonzero(~goes_on)  # holds count - 1
    after = np.arange(1, count + 1)
    ends = stops[np.searchsorted(stops, np.minimum(after, count - 1))] + 1  # the first stop from g + 1
    begins = np.zeros(count, bool)
    begins[: count - 1] = alike
    return np.where(begins, ends, after).tolist()


def _rows_tensor(graph: Graph, dtype: DType, count: int, lo_hi: tuple[int, int], n: int,
                 ok: list, step: list, first: list, g: int) -> Tensor:
    """Groups ``g .. g + count`` of one field row as one ``(vertices, n)`` tensor: a strided view
    for one group; for several, a :class:`Slabs` layout of one piece, the grid ``(count, size, n)``
    with strides ``(first step, step, 1)`` (a few ints, whatever the vertex count)."""
    size = lo_hi[1] - lo_hi[0]
    if count == 1:
        return Tensor(graph, dtype, (size, n), first[g], (step[g], 1))
    piece = (first[g], (count, size, n), (first[g + 1] - first[g], step[g], 1), (count * size, n))
    return Tensor(graph, dtype, (count * size, n), 0, (), None, Slabs((piece,), 0, (0, 1)))


def _group_spacing(row: np.ndarray, idx: np.ndarray, bounds: np.ndarray) -> tuple[list, list, list]:
    """For one row of starts (``(V,)``, taken in the order ``idx``) and each group
    ``[bounds[g], bounds[g + 1])`` of that order: whether its starts are evenly spaced, the step
    and the first start (lists of Python ints). From one pass: the steps and a running count of
    where the step changes (one row at a time: a few arrays of V live at once)."""
    lo, hi = bounds[:-1], bounds[1:]
    size = hi - lo
    ordered = row[idx]
    firsts = ordered[lo].tolist()
    v = ordered.size
    if v < 2:
        return [True] * lo.size, [0] * lo.size, firsts
    steps = np.diff(ordered)
    del ordered
    changes = np.zeros(v - 1, np.int32 if v < 1 << 31 else np.int64)
    np.cumsum(steps[1:] != steps[:-1], out=changes[1:])
    step = np.where(size > 1, steps[np.minimum(lo, v - 2)], 0)
    del steps
    regular = (size <= 2) | (changes[np.clip(hi - 2, 0, v - 2)] == changes[np.minimum(lo, v - 2)])
    return regular.tolist(), step.tolist(), firsts


def _group_lengths(length: Any, idx: np.ndarray, bounds: np.ndarray) -> list[int]:
    """Each group's field length: one for all, or the first vertex's of each group."""
    if not np.ndim(length):
        return [int(length)] * (bounds.size - 1)
    return np.asarray(length).reshape(-1)[idx[bounds[:-1]]].astype(np.int64).tolist()


def _indexed(graph: Graph, dtype: DType, starts: np.ndarray, length: int) -> Tensor:
    addresses = starts[:, None] + np.arange(length, dtype=np.int64)
    return Tensor(graph, dtype, (starts.size, length), 0, (), addresses)


def _as_field_dtype(codelet, name: str, values: Any) -> np.ndarray:
    """A param's values in its field's dtype, once for every bulk call (whole values in range:
    anything else is left for ``add_vertices`` to name)."""
    arr = np.asarray(values)
    f = getattr(codelet, "fields", {}).get(name)
    want = f.dtype.numpy if f is not None else None
    ints = want is not None and want.kind in "iu" and arr.dtype.kind in "iu"
    if not ints or arr.dtype == want or not arr.size:
        return arr
    info = np.iinfo(want)
    if info.min <= int(arr.min()) and int(arr.max()) <= info.max:
        return arr.astype(want)
    return arr


def _bulk(graph: Graph, cs: ComputeSet, codelet, tiles, starts, tensors, params, sel) -> None:
    fields: dict[str, Any] = {}
    for name, s in starts.items():
        dtype, length = tensors[name]
        n = int(np.asarray(length).reshape(-1)[sel[0]]) if np.ndim(length) else int(length)
        if s.ndim == 2:
            fields[name] = [row_tensor(graph, dtype, row[sel], n) for row in s]
        else:
            fields[name] = row_tensor(graph, dtype, s[sel], n)
    for name, values in params.items():
        fields[name] = values[sel] if values.ndim else values
    graph.add_vertices(cs, codelet, fields, tiles[sel])


def row_tensor(graph: Graph, dtype: DType, starts: np.ndarray, length: int) -> Tensor:
    """A ``(V, length)`` tensor whose row v starts at address ``starts[v]``."""
    v = starts.size
    step = int(starts[1] - starts[0]) if v > 1 else 0
    if v <= 2 or evenly_spaced(starts):
        return Tensor(graph, dtype, (v, length), int(starts[0]), (step, 1))
    return Tensor(graph, dtype, (v, length), 0, (), starts[:, None] + np.arange(length, dtype=np.int64))
