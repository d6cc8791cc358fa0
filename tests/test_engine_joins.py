"""Vertex groups joined by the fast engine (engine/joins.py): an embedding lookup spread over
tiles runs as one group per table block, with the values numpy's indexing gives, on both engines."""

from __future__ import annotations

import numpy as np
import pytest

import softipu as sp
from softipu import program as P
from softipu.engine.joins import join_groups
from softipu.ops.indexing import create_slicable_table, multi_slice

ENGINES = pytest.mark.parametrize("reference", [False, True], ids=["fast", "reference"])
# 23 lookups over 16 tiles: the compiler makes four groups (their index slices differ in length)
SPLIT = {"tiles": 16, "rows": 40, "width": 4, "n": 23}


def _lookup(tiles: int, rows: int, width: int, n: int):
    g = sp.Graph(sp.targets.ipu_model(tiles=tiles))
    prog = P.Sequence()
    table = create_slicable_table(g, (rows, width), sp.float32)
    index = g.add_variable(sp.int32, (n,), name="index")
    sp.ops.map_linearly(g, index)
    out = multi_slice(g, table, index, prog)
    return g, prog, table, index, out


@ENGINES
def test_a_lookup_over_tiles_gives_numpy_rows(reference):
    g, prog, table, index, out = _lookup(**SPLIT)
    eng = sp.Engine(g, [prog], {"engine.reference": reference, "debug.poisonUnwritten": True})
    values = np.random.default_rng(0).standard_normal((40, 4)).astype(np.float32)
    eng.write_tensor(table, values)
    for seed in range(2):  # the second run uses the views bound on the first
        idx = np.random.default_rng(seed + 1).integers(-3, 43, 23)  # a few out of range: zero rows
        eng.write_tensor(index, idx)
        eng.run(0)
        want = np.where(((idx >= 0) & (idx < 40))[:, None], values[np.clip(idx, 0, 39)], 0)
        np.testing.assert_array_equal(eng.read_tensor(out), want)


def test_the_lookup_pieces_are_joined():
    """Each group's slice of the indices and of the output abut the next one's: one group, whose
    rows are the pieces' rows side by side."""
    g, prog, *_ = _lookup(**SPLIT)
    eng = sp.Engine(g, [prog])
    (groups,) = [c.groups for c in eng.executable.compute_sets.values()
                 if c.groups and c.groups[0].codelet.__name__.startswith("MultiSlice")]
    assert len(groups) > 1
    (joined,) = join_groups(groups)
    for name in ("index", "out"):
        pieces = sorted((grp.fields[name] for grp in groups), key=lambda t: t.offset)
        want = np.concatenate([t.addresses() for t in pieces], axis=1)
        np.testing.assert_array_equal(joined.fields[name].addresses(), want)
    assert joined.fields["table"] is groups[0].fields["table"]


def test_pieces_that_do_not_abut_stay_apart():
    """A gap between two pieces' index slices (or another table) keeps them separate groups."""
    import dataclasses

    g, prog, *_ = _lookup(**SPLIT)
    eng = sp.Engine(g, [prog])
    (groups,) = [c.groups for c in eng.executable.compute_sets.values()
                 if c.groups and c.groups[0].codelet.__name__.startswith("MultiSlice")]
    last = max(groups, key=lambda grp: grp.fields["index"].offset)
    t = last.fields["index"]
    gap = dataclasses.replace(last, fields={**last.fields, "index": dataclasses.replace(t, offset=t.offset + 1)})
    shifted = tuple(gap if grp is last else grp for grp in groups)
    assert len(join_groups(shifted)) == 2
    other = dataclasses.replace(last, fields={**last.fields, "table": groups[0].fields["out"]})
    assert len(join_groups(tuple(other if grp is last else grp for grp in groups))) == 2
