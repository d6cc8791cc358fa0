"""Matmul chains planned once per structure: a model's repeated layers hold chains that differ only
in where their variables sit, and each is planned (:func:`softipu.engine.chains._build`) from its
own vertex fields in a few dozen array operations. :class:`ChainPlans` keys a chain by what its
plan depends on, with every field address written relative to its variable (the variables
numbered per dtype in order of first use), and gives a chain whose key it has seen the earlier
plan with each address moved into the same place of the corresponding variable.

A key holds, per compute set of the chain and per vertex group: the codelet, the vertex count,
every param's values and every field tensor's shape, strides, variable number and offset in
that variable. Two chains with equal keys have the same plan up to those variables: the plan
reads nothing else (a band groups blocks by equal addresses, which stay equal or unequal under
the move; a block never spans two variables, as no key is made for a field that does). A chain
with a field that is neither one strided view nor a one-piece grid layout (a matmul reduce's
shares, :func:`_grid_fields`) gets no key (planned on its own). Held by the
engine's :class:`~softipu.engine.chains.Chains` (one per loaded executable); nothing is keyed by
object identity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from softipu.compiler.executable import Executable
from softipu.engine.chain_run import Band
from softipu.graph.vertex import Direction

__all__ = ["ChainPlans"]


@dataclass(frozen=True, slots=True)
class _Plan:
    bands: list[Band] | None  # None: the chain's own checks refused it
    in_dtype: Any
    out_dtype: Any
    partials: list[tuple[int, int]]
    starts: dict[Any, np.ndarray]  # dtype -> its variables' starts, by number


class ChainPlans:
    """Plans of the chains built so far, by their relative keys (module doc)."""

    def __init__(self, executable: Executable) -> None:
        self.executable = executable
        self._plans: dict[tuple, _Plan] = {}
        self._codelets: dict[type, tuple] = {}
        self._spaces: dict[Any, tuple[np.ndarray, np.ndarray]] | None = None  # dtype -> (starts, ends)

    def key(self, cs_ids: list[int]) -> tuple[tuple, dict[Any, np.ndarray]] | None:
        """The chain's relative key and its variables' starts per dtype (by number); None when a
        field is not one strided ``(vertices, n)`` view inside one variable."""
        parts: list[tuple] = []
        tensors: list[Any] = []
        dtypes: list[Any] = []  # per field: its dtype and how many tensors it has
        for cs_id in cs_ids:
            for g in self.executable.compute_sets[cs_id].groups:
                params, data = self._fields(g.codelet)
                meta: list[Any] = [g.codelet, g.num_vertices]
                for name in params:
                    v = np.asarray(g.fields[name])
                    meta.append((v.dtype.str, v.shape, v.tobytes()))
                for name, dtype in data:
                    ts = g.tensors(name)
                    tensors += ts
                    dtypes.append((dtype, len(ts)))
                    meta.append(len(ts))
                parts.append(tuple(meta))
        if not all([t.is_strided for t in tensors]):
            found = _grid_fields(tensors)
            if found is None:
                return None
            structure, extent = found
        else:
            try:
                rows = np.array([(t.offset, *t.shape, *t.strides) for t in tensors], np.int64)
            except ValueError:  # a field that is not (vertices, n)
                return None
            if rows.ndim != 2 or rows.shape[1] != 5 or not (rows[:, 1:3] > 0).all():
                return None
            reach = (rows[:, 1:3] - 1) * rows[:, 3:5]
            extent = np.stack([rows[:, 0], rows[:, 0] + np.minimum(reach, 0).sum(1),
                               rows[:, 0] + np.maximum(reach, 0).sum(1)], 1)
            structure = rows[:, 1:].tobytes()
        of = np.repeat(np.arange(len(dtypes)), [n for _, n in dtypes])
        relative: list[Any] = [structure]
        starts: dict[Any, np.ndarray] = {}
        for dtype in dict.fromkeys(d for d, _ in dtypes):
            mine = np.isin(of, [i for i, (d, _) in enumerate(dtypes) if d is dtype])
            placed = self._place(dtype, extent[mine])
            if placed is None:
                return None
            number, offset, starts[dtype] = placed
            relative.append((dtype, number.tobytes(), offset.tobytes()))
        return (tuple(parts), tuple(relative)), starts

    def _fields(self, codelet: type) -> tuple[tuple[str, ...], tuple[tuple[str, Any], ...]]:
        """A codelet's param names, and its other fields' names and dtypes."""
        found = self._codelets.get(codelet)
        if found is None:
            items = codelet.fields.items()
            found = self._codelets[codelet] = (
                tuple(n for n, f in items if f.direction is Direction.PARAM),
                tuple((n, f.dtype) for n, f in items if f.direction is not Direction.PARAM))
        return found

    def _place(self, dtype: Any, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Each tensor's variable number (in order of first use) and offset in it, and the used
        variables' starts by number; None if a tensor is outside every variable or spans two."""
        if self._spaces is None:
            self._spaces = {}
            for d in {v.dtype for v in self.executable.variables}:
                held = sorted((v.start, v.end) for v in self.executable.variables if v.dtype == d and v.numel)
                self._spaces[d] = (np.array([s for s, _ in held], np.int64).reshape(-1),
                                   np.array([e for _, e in held], np.int64).reshape(-1))
        space = self._spaces.get(dtype)
        if space is None or space[0].size == 0:
            return None
        var_starts, var_ends = space
        var = np.searchsorted(var_starts, rows[:, 1], side="right") - 1
        if (var < 0).any() or (rows[:, 2] >= var_ends[np.maximum(var, 0)]).any():
            return None
        used, first, inverse = np.unique(var, return_index=True, return_inverse=True)
        rank = np.empty(used.size, np.int64)
        rank[np.argsort(first, kind="stable")] = np.arange(used.size)
        number = rank[inverse.reshape(-1)]
        starts = np.empty(used.size, np.int64)
        starts[number] = var_starts[var]
        return number, rows[:, 0] - var_starts[var], starts

    def get(self, key: tuple, starts: dict[Any, np.ndarray]) -> tuple | None:
        """(bands or None, in dtype, out dtype, partials) of an earlier chain with this key,
        moved to this chain's variables; None if none had it."""
        plan = self._plans.get(key)
        if plan is None:
            return None
        if plan.bands is None:
            return None, plan.in_dtype, plan.out_dtype, []
        move_in = _Move(plan.starts[plan.in_dtype], starts[plan.in_dtype])
        move_out = _Move(plan.starts[plan.out_dtype], starts[plan.out_dtype])
        bands = [Band(_moved(b.a, move_in), _moved(b.b, move_in), _moved(b.out, move_out), b.m, b.k, b.n)
                 for b in plan.bands]
        partials = []
        if plan.partials:
            from softipu.dtypes import float32

            move_p = _Move(plan.starts[float32], starts[float32])
            edges = np.array(plan.partials, np.int64)
            lo, hi = move_p(edges[:, 0]), move_p(edges[:, 1] - 1) + 1
            partials = list(zip(lo.tolist(), hi.tolist(), strict=True))
        return bands, plan.in_dtype, plan.out_dtype, partials

    def put(self, key: tuple, starts: dict[Any, np.ndarray], bands: list[Band] | None, in_dtype: Any,
            out_dtype: Any, partials: list[tuple[int, int]]) -> None:
        self._plans[key] = _Plan(bands, in_dtype, out_dtype, partials, starts)


def _grid_fields(tensors: list[Any]) -> tuple[tuple, np.ndarray] | None:
    """(structure, ``(offset, lo, hi)`` rows) of fields that are strided views or one-piece grid
    layouts (ops.matmul's reduce shares with several N blocks: each vertex ``rows x width`` of the
    output, N apart): a grid keyed by its piece's shape, strides and reading order, its offset
    placed like a strided view's; None for any other layout."""
    structure, rows = [], []
    for t in tensors:
        if t.is_strided:
            shape, strides, extra = t.shape, t.strides, ()
            offset = t.offset
        elif t.slabs is not None and len(t.slabs.pieces) == 1:
            offset, shape, strides, mid = t.slabs.pieces[0]
            extra = (mid, t.slabs.axis, t.slabs.perm, t.shape)
        else:
            return None
        if not shape or min(shape) <= 0:
            return None
        reach = [(d - 1) * st for d, st in zip(shape, strides, strict=True)]
        structure.append((tuple(shape), tuple(strides)) + extra)
        rows.append((offset, offset + sum(min(r, 0) for r in reach), offset + sum(max(r, 0) for r in reach)))
    return tuple(structure), np.array(rows, np.int64).reshape(-1, 3)


class _Move:
    """Addresses in the earlier chain's variables to the same places in this chain's."""

    __slots__ = ("order", "sorted_starts", "shift")

    def __init__(self, old: np.ndarray, new: np.ndarray) -> None:
        self.order = np.argsort(old, kind="stable")
        self.sorted_starts = old[self.order]
        self.shift = (new - old)[self.order]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        i = np.searchsorted(self.sorted_starts, x, side="right") - 1
        return x + self.shift[i]


def _moved(grid: np.ndarray, move: _Move) -> np.ndarray:
    """A band's (start, row stride, column stride) grid with its starts moved."""
    out = grid.copy()
    out[..., 0] = move(grid[..., 0])
    return out
