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
    """
    cols = [np.asarray(k, np.int64) for k in keys]
    idx = np.lexsort([order] + cols[::-1])
    key_mat = np.stack([c[idx] for c in cols]) if cols else np.zeros((0, idx.size), np.int64)
    change = np.flatnonzero(np.any(key_mat[:, 1:] != key_mat[:, :-1], axis=0)) + 1
    bounds = np.concatenate(([0], change, [idx.size]))
    for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        sel = idx[lo:hi]
        pieces = [sel]
        if fine_key is not None and not _regular(starts, sel):
            fk = fine_key[sel]
            cut = np.flatnonzero(fk[1:] != fk[:-1]) + 1
            pieces = np.split(sel, cut)
        for piece in pieces:
            _bulk(graph, cs, codelet, tiles, starts, tensors, params, piece)


def _regular(starts: dict[str, np.ndarray], sel: np.ndarray) -> bool:
    return sel.size <= 2 or all(evenly_spaced(s[..., sel]) for s in starts.values())


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
        fields[name] = np.asarray(values)[sel]
    graph.add_vertices(cs, codelet, fields, tiles[sel])


def row_tensor(graph: Graph, dtype: DType, starts: np.ndarray, length: int) -> Tensor:
    """A ``(V, length)`` tensor whose row v starts at address ``starts[v]``."""
    v = starts.size
    step = int(starts[1] - starts[0]) if v > 1 else 0
    if v <= 2 or evenly_spaced(starts):
        return Tensor(graph, dtype, (v, length), int(starts[0]), (step, 1))
    return Tensor(graph, dtype, (v, length), 0, (), starts[:, None] + np.arange(length, dtype=np.int64))
