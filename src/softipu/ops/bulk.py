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
from softipu.graph.tensor import Tensor

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
    bounds = np.concatenate(([0], change, [idx.size]))
    rows = {name: np.asarray(s, np.int64)[..., idx] for name, s in starts.items()}
    spacing = {name: _Spacing(r) for name, r in rows.items()}
    params = {name: _as_field_dtype(codelet, name, values) for name, values in params.items()}
    for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        if fine_key is not None and not all(sp.regular(lo, hi).all() for sp in spacing.values()):
            sel = idx[lo:hi]
            fk = fine_key[sel]
            for piece in np.split(sel, np.flatnonzero(fk[1:] != fk[:-1]) + 1):
                _bulk(graph, cs, codelet, tiles, starts, tensors, params, piece)
            continue
        fields: dict[str, Any] = {}
        sel = idx[lo:hi]
        for name, r in rows.items():
            dtype, length = tensors[name]
            n = int(np.asarray(length).reshape(-1)[sel[0]]) if np.ndim(length) else int(length)
            regular, steps = spacing[name].regular(lo, hi), spacing[name].step(lo, hi)
            made = [_rows(graph, dtype, row[lo:hi], n, bool(ok), int(st))
                    for row, ok, st in zip(r.reshape(-1, r.shape[-1]), regular.reshape(-1),
                                           steps.reshape(-1), strict=True)]
            fields[name] = made if r.ndim == 2 else made[0]
        for name, values in params.items():
            fields[name] = values[sel] if values.ndim else values
        graph.add_vertices(cs, codelet, fields, tiles[sel])


class _Spacing:
    """Each row's steps between neighbours of ``starts`` (``(V,)`` or ``(entries, V)``) and a
    running count of where the step changes: whether ``starts[..., lo:hi]`` is evenly spaced is
    then two look-ups."""

    __slots__ = ("steps", "changes")

    def __init__(self, starts: np.ndarray) -> None:
        self.steps = np.diff(starts, axis=-1)
        changed = self.steps[..., 1:] != self.steps[..., :-1]
        self.changes = np.zeros(starts.shape[:-1] + (max(starts.shape[-1] - 1, 0),), np.int64)
        np.cumsum(changed, axis=-1, out=self.changes[..., 1:])

    def regular(self, lo: int, hi: int) -> np.ndarray:
        if hi - lo <= 2:
            return np.ones(self.steps.shape[:-1], bool)
        return self.changes[..., hi - 2] == self.changes[..., lo]

    def step(self, lo: int, hi: int) -> np.ndarray:
        return self.steps[..., lo] if hi - lo > 1 else np.zeros(self.steps.shape[:-1], np.int64)


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


def _rows(graph: Graph, dtype: DType, starts: np.ndarray, length: int, regular: bool, step: int) -> Tensor:
    if regular:
        return Tensor(graph, dtype, (starts.size, length), int(starts[0]), (step, 1))
    return Tensor(graph, dtype, (starts.size, length), 0, (),
                  starts[:, None] + np.arange(length, dtype=np.int64))


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
