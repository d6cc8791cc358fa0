"""Vertex groups that are pieces of one: joined into one group before the fast engine binds them.

A lookup spread over tiles (an embedding's ``MultiSlice``) compiles to a group per tile, each the
same vertices over the same table, each looking up its own slice of the indices into its own
slice of the output. A call per group cost more than the lookups (the demo encoder's two
embeddings: 22 groups of a few dozen rows, ~0.6 ms a later call). Where those slices abut (group
``g + 1``'s starts where group ``g``'s ends, along the rows of every joined field), the groups
are one group whose rows are the slices side by side: the same vertices, each doing the work of
all its pieces in one call.

A codelet allows it by naming ``join_fields``: the fields whose rows it may be handed joined,
entry for entry (its vertices treat each entry of those rows independently of the others: a
lookup's index ``i`` fills only its own output row). Every other field must be the same tensor
(or param) in each group. Values are those of the pieces (each entry computed alone), so results
stay bitwise the reference's. A joined group is bound like any other (replicas' leading axis
included); its errors name the first piece's tiles.

An elementwise codelet (``join_same_length``: a map, a unary or binary op) joins only pieces whose
joined fields all have one row length: entry ``i`` of every such field belongs to one element
(a bias row of a channels-innermost convolution output as long as the output row). A
convolution's bias add or activation over a layer whose channels the tiles split into groups
(ResNet-50: 256 channels as 86 + 85 + 85) then runs as one call over whole rows instead of a
call per group over rows of 86 (numpy's inner loop per short row: 2 ms a layer instead of 0.5).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from softipu.compiler.executable import VertexGroup
from softipu.graph.tensor import Tensor
from softipu.graph.vertex import Direction

__all__ = ["join_groups"]


def join_groups(groups: tuple[VertexGroup, ...]) -> tuple[VertexGroup, ...]:
    """``groups`` with every run of joinable pieces (module doc) replaced by one group, in the
    place of the run's first piece; groups of other codelets as they are."""
    if len(groups) < 2 or not any(getattr(g.codelet, "join_fields", None) for g in groups):
        return groups
    alike: dict[tuple, list[int]] = {}
    for i, g in enumerate(groups):
        key = _join_key(g)
        if key is not None:
            alike.setdefault(key, []).append(i)
    replaced: dict[int, VertexGroup | None] = {}
    for members in alike.values():
        for run in _abutting([groups[i] for i in members], members):
            if len(run) < 2:
                continue
            replaced[run[0]] = _joined([groups[i] for i in run])
            replaced.update(dict.fromkeys(run[1:]))
    if not replaced:
        return groups
    out = [replaced.get(i, g) for i, g in enumerate(groups)]
    return tuple(g for g in out if g is not None)


def _join_key(g: VertexGroup) -> tuple | None:
    """What pieces of one group share: codelet, vertex count, every other field (as tensor
    layout or param values), and the joined fields' row strides. None if ``g`` cannot join."""
    codelet = g.codelet
    joins = getattr(codelet, "join_fields", None)
    if not joins:
        return None
    key: list[Any] = [codelet, g.num_vertices]
    for name, f in codelet.fields.items():
        value = g.fields[name]
        if f.direction is Direction.PARAM:
            key.append(np.asarray(value).tobytes())
            continue
        if isinstance(value, tuple):
            return None  # a vector list: never joined
        t: Tensor = value
        if not t.is_strided or t.ndim != 2:
            return None
        if name in joins:
            if t.shape[1] == 0:
                return None
            key.append((t.dtype, t.strides))
        else:
            key.append((t.dtype, t.shape, t.offset, t.strides))
    if getattr(codelet, "join_same_length", False) and len({g.fields[n].shape[1] for n in joins}) > 1:
        return None
    return tuple(key)


def _abutting(pieces: list[VertexGroup], indices: list[int]) -> list[list[int]]:
    """Runs (as indices) of pieces, in order of their first joined field's offset, each piece
    starting where the one before ends in every joined field, with the joined fields' lengths
    in one proportion throughout the run."""
    names = pieces[0].codelet.join_fields
    order = sorted(range(len(pieces)), key=lambda p: pieces[p].fields[names[0]].offset)
    runs: list[list[int]] = []
    for p in order:
        g = pieces[p]
        if runs:
            prev = pieces[runs[-1][-1]]
            first = pieces[runs[-1][0]]
            if all(_follows(prev.fields[n], g.fields[n]) for n in names) and \
                    _proportional(first, g, names):
                runs[-1].append(p)
                continue
        runs.append([p])
    return [[indices[p] for p in run] for run in runs]


def _follows(a: Tensor, b: Tensor) -> bool:
    return b.offset == a.offset + a.shape[1] * a.strides[1]


def _proportional(a: VertexGroup, b: VertexGroup, names: tuple[str, ...]) -> bool:
    base_a, base_b = a.fields[names[0]].shape[1], b.fields[names[0]].shape[1]
    return all(a.fields[n].shape[1] * base_b == b.fields[n].shape[1] * base_a for n in names)


def _joined(run: list[VertexGroup]) -> VertexGroup:
    first = run[0]
    fields = dict(first.fields)
    for name in first.codelet.join_fields:
        t: Tensor = first.fields[name]
        length = sum(g.fields[name].shape[1] for g in run)
        fields[name] = Tensor(t.graph, t.dtype, (t.shape[0], length), t.offset, t.strides)
    return dataclasses.replace(first, fields=fields)
