"""Content keys that let the compiler price and check structurally identical work once.

A model's repeated layers build compute sets and copies that differ only in where their
variables sit in the address space: the same codelets on the same tiles, fields of the same
shapes and strides, each variable mapped to tiles the same way relative to its own start. The
conflict check and the exchange plan depend on nothing else (intervals are compared, split at
the mapping and unioned per tile; only whole variables move), so two compute sets with equal
:meth:`StructureKeys.layout` keys have equal conflicts and traffic, and two with equal
:meth:`StructureKeys.work` keys have equal compute cycles and flops (estimators see field
lengths and params only).

A layout key names each field tensor by the variable holding it (numbered in order of first
use within the key), its offset from that variable's start, and its shape and strides (or slab
pieces, or a digest of its addresses relative to the variable); an indexed tensor gathering from
several variables by a digest of each element's variable number and offset in it (its variables
numbered in address order); each variable by its size and its mapping intervals relative to its
start; and which of the variables touch end to start in the address space (intervals of touching
variables can join into one region). A strided tensor that spans two variables, or an indexed one
with an address outside every variable, gets no key (None): its compute set is priced on its own.

The keys are built from the compile's own graph and mappings and held by one
:class:`StructureKeys` per compile (its per-variable mapping keys are reused across compute
sets); nothing is keyed by object identity.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from softipu.compiler.executable import CompiledComputeSet, VertexGroup
from softipu.dtypes import DType
from softipu.graph.graph import Graph, Variable
from softipu.graph.mapping import ResolvedMapping
from softipu.graph.tensor import Tensor
from softipu.graph.vertex import Direction

__all__ = ["Key", "StructureKeys", "grid_piece"]



def grid_piece(t: Tensor) -> tuple[int, int, int, int, int]:
    """(offset, row step, size, n, size stride) of a grid field: its one slab piece ``(rows, size,
    n)`` (``ops.bulk.add_vertex_runs``) holds row ``r`` as the strided ``(size, n)`` view at
    ``offset + r * row step``, its ``size`` axis ``size stride`` elements apart."""
    offset, (_, size, n), (outer, step, _), _ = t.slabs.pieces[0]
    return offset, outer, size, n, step


def _digest(*arrays: np.ndarray) -> bytes:
    """A 256-bit digest of int64 arrays: an indexed field's key holds this, not its addresses (a
    copy of 8 bytes an element held for the whole compile)."""
    h = hashlib.blake2b(digest_size=32)
    for a in arrays:
        h.update(np.ascontiguousarray(a, np.int64).data)
    return h.digest()


class Key(tuple):
    """A key tuple that hashes once: keys are looked up in several tables (conflicts, pricing,
    outlining, memory), and a tuple hashes its whole nested content on every lookup."""

    def __new__(cls, items: Any) -> Key:
        self = super().__new__(cls, items)
        self._hash = tuple.__hash__(self)
        return self

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Key) and other._hash != self._hash:
            return False
        return tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other


_SLOW = object()  # a compute set _layout_of_rows leaves to the general path


class _Unkeyable(Exception):
    """A tensor the layout key cannot describe relative to one variable."""


class StructureKeys:
    """Layout and work keys of one compile's compute sets and copies (see the module docs)."""

    def __init__(self, graph: Graph, mappings: dict[DType, ResolvedMapping],
                 grids: dict[int, tuple] | None = None) -> None:
        self.graph = graph
        self.mappings = mappings
        # compute set id -> (first group, rows, vertices a row, bulk call) of each grid call that
        # build_vertex_groups cut into one group per row: their rows' key parts come from the
        # call's few slab pieces by array arithmetic, not from each row's tensors
        self._grids = grids or {}
        self._variable_keys: dict[tuple[DType, int], tuple] = {}  # (dtype, variable id) -> key
        self._layouts: dict[int, tuple | None] = {}  # compute set id -> its layout key
        self._works: dict[int, tuple] = {}  # compute set id -> its work key
        # compute set id -> the variables its layout key numbers, in number order
        self._layout_variables: dict[int, tuple[tuple[DType, Variable], ...]] = {}
        self._codelet_fields: dict[type, tuple[tuple[str, bool], ...]] = {}  # (name, is a param)
        self._bounds: dict[DType, tuple[np.ndarray, np.ndarray]] = {}  # variable starts and ends

    # -- compute sets ------------------------------------------------------------------------------
    def layout(self, compiled: CompiledComputeSet) -> tuple | None:
        """What a compute set's conflicts and exchange depend on; None when not describable."""
        cs_id = compiled.compute_set.id
        if cs_id not in self._layouts:
            self._layouts[cs_id] = self._layout(compiled)
        return self._layouts[cs_id]

    def layout_variables(self, compiled: CompiledComputeSet) -> tuple[tuple[DType, Variable], ...]:
        """The (dtype, variable) pairs a compute set's layout key numbers, in number order: two
        compute sets with equal keys touch their n-th variables alike (same fields, offsets and
        extents). Empty when the compute set has no key."""
        self.layout(compiled)
        return self._layout_variables.get(compiled.compute_set.id, ())

    def _layout(self, compiled: CompiledComputeSet) -> tuple | None:
        self._layout_variables[compiled.compute_set.id] = ()
        fast = self._layout_of_rows(compiled)
        if fast is not _SLOW:
            return fast
        used = _Used()
        parts: list[Any] = []
        try:
            for group in compiled.groups:
                fields = []
                for name, f in group.field_items(Direction.INPUT, Direction.OUTPUT, Direction.INOUT):
                    tensors = tuple(self._tensor(t, used) for t in group.tensors(name))
                    fields.append((name, f.direction, tensors))
                parts.append((group.codelet, group.tiles.dtype.str, group.tiles.tobytes(), tuple(fields)))
        except _Unkeyable:
            return None
        self._layout_variables[compiled.compute_set.id] = tuple(used.variables)
        return Key((Key(parts), self._variables(used)))

    def _layout_of_rows(self, compiled: CompiledComputeSet) -> Any:
        """:meth:`_layout` where every field is a non-empty strided ``(vertices, n)`` view (nearly
        every compute set): the same information from array operations over all its tensors at
        once, as bytes of (variable number, offset in it, shape, strides) rows — the variables
        numbered in order of first use, as there. ``_SLOW`` for any other compute set."""
        table = self._row_table(compiled)
        if table is _SLOW:
            return _SLOW
        parts, rows, dtypes = table
        if rows.ndim != 2 or rows.shape[1] != 5 or not (rows[:, 1:3] > 0).all():
            return _SLOW
        reach = (rows[:, 1:3] - 1) * rows[:, 3:5]
        lo = rows[:, 0] + np.minimum(reach, 0).sum(1)
        hi = rows[:, 0] + np.maximum(reach, 0).sum(1)
        field_of = np.repeat(np.arange(len(dtypes)), [n for _, n in dtypes])
        kinds = list(dict.fromkeys(d for d, _ in dtypes))
        code = {d: i for i, d in enumerate(kinds)}
        kind = np.array([code[d] for d, _ in dtypes], np.int64)[field_of]
        var = np.empty(rows.shape[0], np.int64)
        start = np.empty(rows.shape[0], np.int64)
        spaces = []
        for i, dtype in enumerate(kinds):
            space = self.graph.spaces.get(dtype)
            if space is None or not space.variables:
                return None
            starts, ends = self._space_bounds(space)
            mine = kind == i
            at = np.searchsorted(starts, lo[mine], side="right") - 1
            if (at < 0).any() or (hi[mine] >= ends[np.maximum(at, 0)]).any():
                return None  # outside every variable, or across two
            var[mine], start[mine] = at, starts[at]
            spaces.append(space)
        pair = kind * (int(var.max()) + 1) + var
        held, first, inverse = np.unique(pair, return_index=True, return_inverse=True)
        rank = np.empty(held.size, np.int64)
        order = np.argsort(first, kind="stable")
        rank[order] = np.arange(held.size)
        number = rank[inverse.reshape(-1)]
        used = _Used()
        for t in first[order].tolist():
            dtype = kinds[int(kind[t])]
            used.number(dtype, spaces[int(kind[t])].variables[int(var[t])])
        self._layout_variables[compiled.compute_set.id] = tuple(used.variables)
        cells = np.stack([number, rows[:, 0] - start], 1).tobytes()
        return Key((Key((tuple(parts), "rows", cells, rows[:, 1:].tobytes())), self._variables(used)))

    def _walk(self, compiled: CompiledComputeSet) -> Iterator[tuple[tuple | None, VertexGroup | None]]:
        """A compute set's groups in order as (None, group), except that each grid call's row
        groups (``self._grids``) come as one (grid, None)."""
        groups, g = compiled.groups, 0
        for grid in self._grids.get(compiled.compute_set.id, ()):
            first, count = grid[0], grid[1]
            yield from ((None, group) for group in groups[g:first])
            yield grid, None
            g = first + count
        yield from ((None, group) for group in groups[g:])

    def _row_table(self, compiled: CompiledComputeSet) -> Any:
        """(parts, one (offset, shape, strides) row per tensor, per-field dtypes) of
        :meth:`_layout_of_rows`, or ``_SLOW`` where a tensor is not strided."""
        parts: list[Any] = []
        blocks: list[Any] = []  # row tables: lists of tensors, or a grid call's array
        dtypes: list[tuple[DType, int]] = []  # per field: its dtype and how many tensors
        groups = compiled.groups
        for grid, group in self._walk(compiled):
            if grid is not None:
                self._grid_parts(grid, groups, parts, blocks, dtypes)
                continue
            fields, tensors = [], []
            for name, f in group.field_items(Direction.INPUT, Direction.OUTPUT, Direction.INOUT):
                ts = group.tensors(name)
                tensors += ts
                dtypes.append((f.dtype, len(ts)))
                fields.append((name, f.direction, len(ts)))
            parts.append((group.codelet, group.tiles.dtype.str, group.tiles.tobytes(), tuple(fields)))
            if not all([t.is_strided for t in tensors]):
                return _SLOW
            if tensors:
                blocks.append(tensors)
        try:
            rows = np.concatenate([np.array([(t.offset, *t.shape, *t.strides) for t in b], np.int64)
                                   .reshape(len(b), -1) if isinstance(b, list) else b for b in blocks])
        except ValueError:  # not all (vertices, n), or no tensors
            return _SLOW
        if not rows.size:
            return _SLOW
        return parts, rows, dtypes

    def _grid_parts(self, grid: tuple, groups: tuple, parts: list, blocks: list, dtypes: list) -> None:
        """:meth:`_layout_of_rows`' parts, row table and dtypes of a grid call's row groups, as
        each row's own tensors would give them."""
        first, count, size, call = grid
        fields, pieces, row = [], [], groups[first]
        for name, f in row.field_items(Direction.INPUT, Direction.OUTPUT, Direction.INOUT):
            value = call.fields[name]
            ts = value if isinstance(value, tuple) else (value,)
            fields.append((name, f.direction, len(ts)))
            for t in ts:
                offset, outer, _, n, step = grid_piece(t)
                pieces.append((offset, outer, size, n, step))
        fields = tuple(fields)
        per_row = [(f.dtype, len(row.tensors(name)))
                   for name, f in row.field_items(Direction.INPUT, Direction.OUTPUT, Direction.INOUT)]
        for r in range(count):
            tiles = groups[first + r].tiles
            parts.append((call.codelet, tiles.dtype.str, tiles.tobytes(), fields))
            dtypes += per_row
        if pieces:
            p = np.array(pieces, np.int64)
            table = np.empty((count, len(pieces), 5), np.int64)
            table[:, :, 0] = p[:, 0] + np.arange(count, dtype=np.int64)[:, None] * p[:, 1]
            table[:, :, 1:4] = p[:, 2:5]
            table[:, :, 4] = 1
            blocks.append(table.reshape(-1, 5))

    def work(self, compiled: CompiledComputeSet) -> tuple:
        """What a compute set's compute cycles and flops depend on: per group its codelet, tiles,
        field lengths and params (fields in the codelet's order: names are implied by it)."""
        cs_id = compiled.compute_set.id
        found = self._works.get(cs_id)
        if found is None:
            found = self._works[cs_id] = self._work(compiled)
        return found

    def _work(self, compiled: CompiledComputeSet) -> tuple:
        parts: list[Any] = []
        for grid, group in self._walk(compiled):
            if grid is not None:  # a grid call's rows: field shapes alike, params sliced
                self._grid_work(grid, compiled.groups, parts)
                continue
            fields = []
            values = group.fields
            for name, is_param in self._fields_of(group.codelet):
                value = values[name]
                if is_param:
                    value = np.asarray(value)
                    fields.append((value.dtype.str, value.shape, value.tobytes()))
                elif isinstance(value, tuple):
                    fields.append(tuple(t.shape for t in value))
                else:
                    fields.append(value.shape)
            parts.append((group.codelet, group.tiles.dtype.str, group.tiles.tobytes(), tuple(fields)))
        return Key(parts)

    def _grid_work(self, grid: tuple, groups: tuple, parts: list) -> None:
        """:meth:`_work`'s parts of a grid call's row groups, as each row group would give them."""
        first, count, size, call = grid
        row = groups[first]
        shapes: list[Any] = []  # per field: its shapes, or None for a params field
        params = []
        for name, is_param in self._fields_of(call.codelet):
            value = row.fields[name]
            if is_param:
                shapes.append(None)
                params.append(np.asarray(call.fields[name]).reshape(-1))
            else:
                shapes.append(tuple(t.shape for t in value) if isinstance(value, tuple) else value.shape)
        for r in range(count):
            tiles = groups[first + r].tiles
            lo, hi, k, fields = r * size, (r + 1) * size, 0, []
            for shape in shapes:
                if shape is None:
                    value = params[k][lo:hi]
                    fields.append((value.dtype.str, value.shape, value.tobytes()))
                    k += 1
                else:
                    fields.append(shape)
            parts.append((call.codelet, tiles.dtype.str, tiles.tobytes(), tuple(fields)))

    def _fields_of(self, codelet: type) -> tuple[tuple[str, bool], ...]:
        found = self._codelet_fields.get(codelet)
        if found is None:
            found = self._codelet_fields[codelet] = tuple(
                (name, f.direction is Direction.PARAM) for name, f in codelet.fields.items())
        return found

    # -- copies ------------------------------------------------------------------------------------
    def copy(self, src: Tensor, dst: Tensor) -> tuple | None:
        """What a tensor-to-tensor copy's traffic depends on; None when not describable."""
        used = _Used()
        try:
            ends = (self._tensor(src, used), self._tensor(dst, used))
        except _Unkeyable:
            return None
        return Key((ends, self._variables(used)))

    # -- pieces ------------------------------------------------------------------------------------
    def _tensor(self, t: Tensor, used: _Used) -> tuple:
        if t.is_strided:  # the usual (vertices, n) field: (variable, offset in it, shape, strides)
            return self._strided(t.dtype, t.offset, t.shape, t.strides, used)
        if t.numel == 0:
            return ("empty", t.shape)
        if t.slabs is not None:
            s = t.slabs
            pieces = tuple((self._strided(t.dtype, o, sh, st, used), mid) for o, sh, st, mid in s.pieces)
            return ("slabs", t.dtype, pieces, s.axis, s.perm)
        index = t.index
        lo, hi = int(index.min()), int(index.max())
        space = self.graph.spaces.get(t.dtype)
        var = space.variable_at(lo) if space is not None else None
        if var is not None and hi < var.end:
            rel = index.astype(np.int64, copy=False) - var.start
            return ("indexed", t.dtype, used.number(t.dtype, var), t.shape, _digest(rel))
        return self._indexed_across(t, space, used)

    def _indexed_across(self, t: Tensor, space: Any, used: _Used) -> tuple:
        """An indexed tensor gathering from several variables (a reduction's partials, say): per
        element the variable's number and the offset in it; the variables numbered in address
        order. Unkeyable where an address lies outside every variable."""
        if space is None or not space.variables:
            raise _Unkeyable
        starts, ends = self._space_bounds(space)
        flat = t.index.reshape(-1).astype(np.int64, copy=False)
        # The elements as runs of consecutive offsets in one variable (where each run begins, its
        # variable's number and its first offset: the runs are cut wherever the element sequence
        # steps otherwise, so equal runs are equal sequences). Each run of consecutive addresses
        # is looked up once; only where one leaves its variable is every element looked up.
        step = flat[1:] != flat[:-1] + 1
        first = np.flatnonzero(np.concatenate(([True], step)))
        k = np.searchsorted(starts, flat[first], side="right") - 1
        last = np.concatenate((first[1:], [flat.size])) - 1
        if k.min() < 0 or np.any(flat[last] >= ends[k]):
            each = np.searchsorted(starts, flat, side="right") - 1
            if each.min() < 0 or np.any(flat >= ends[each]):
                raise _Unkeyable
            first = np.flatnonzero(np.concatenate(([True], step | (each[1:] != each[:-1]))))
            k = each[first]
        held = np.unique(k)
        numbers = np.array([used.number(t.dtype, space.variables[i]) for i in held.tolist()], np.int64)
        number = numbers[np.searchsorted(held, k)]
        return ("indexed across", t.dtype, t.shape, _digest(first, number, flat[first] - starts[k]))

    def _space_bounds(self, space: Any) -> tuple[np.ndarray, np.ndarray]:
        """Each variable's (start, end) in a dtype's space, as arrays (the graph is only read)."""
        found = self._bounds.get(space.dtype)
        if found is None or found[0].size != len(space.variables):
            found = self._bounds[space.dtype] = (np.asarray(space.starts, np.int64),
                                                 np.array([v.end for v in space.variables], np.int64))
        return found

    def _strided(self, dtype: DType, offset: int, shape: tuple, strides: tuple, used: _Used) -> tuple:
        lo = hi = offset
        for n, s in zip(shape, strides, strict=True):
            if n == 0:
                return ("empty", shape)
            if s > 0:
                hi += (n - 1) * s
            else:
                lo += (n - 1) * s
        ranges = used.ranges  # usually one of the few numbered last (variables never overlap)
        for n in range(len(ranges) - 1, max(len(ranges) - 9, -1), -1):
            d, start, end = ranges[n]
            if start <= lo and hi < end and d is dtype:
                return (n, offset - start, shape, strides)
        var = self._holder(dtype, lo, hi)
        return (used.number(dtype, var), offset - var.start, shape, strides)

    def _holder(self, dtype: DType, lo: int, hi: int) -> Variable:
        space = self.graph.spaces.get(dtype)
        var = space.variable_at(lo) if space is not None else None
        if var is None or hi >= var.end:
            raise _Unkeyable
        return var

    def _variables(self, used: _Used) -> tuple:
        """Each used variable's mapping key, and which of them touch in the address space."""
        keys = tuple(self._variable_key(dtype, var) for dtype, var in used.variables)
        touching = []
        for dtype in dict.fromkeys(d for d, _ in used.variables):
            mine = sorted((var.start, var.end, n) for n, (d, var) in enumerate(used.variables) if d is dtype)
            touching += [(a[2], b[2]) for a, b in zip(mine, mine[1:], strict=False) if a[1] == b[0]]
        return keys, tuple(touching)

    def _variable_key(self, dtype: DType, var: Variable) -> tuple:
        key = self._variable_keys.get((dtype, var.id))
        if key is None:
            m = self.mappings[dtype]
            a = max(int(np.searchsorted(m.starts, var.start, side="right")) - 1, 0)
            b = int(np.searchsorted(m.starts, var.end, side="left"))
            starts = np.maximum(m.starts[a:b], var.start) - var.start
            ends = np.minimum(m.ends[a:b], var.end) - var.start
            keep = ends > starts
            # a digest of the intervals, not their bytes: a model's keys would copy its whole mapping
            digest = hashlib.blake2b(starts[keep].tobytes(), digest_size=32)
            digest.update(ends[keep].tobytes())
            digest.update(m.tiles[a:b][keep].astype(np.int32).tobytes())
            key = (dtype, var.numel, int(keep.sum()), digest.digest())
            self._variable_keys[(dtype, var.id)] = key
        return key


class _Used:
    """The variables one key refers to, numbered in order of first use."""

    __slots__ = ("variables", "ranges", "_numbers")

    def __init__(self) -> None:
        self.variables: list[tuple[DType, Variable]] = []
        self.ranges: list[tuple[DType, int, int]] = []  # (dtype, start, end) of each, by number
        self._numbers: dict[tuple[DType, int], int] = {}

    def number(self, dtype: DType, var: Variable) -> int:
        n = self._numbers.get((dtype, var.id))
        if n is None:
            n = self._numbers[(dtype, var.id)] = len(self.variables)
            self.variables.append((dtype, var))
            self.ranges.append((dtype, var.start, var.end))
        return n
