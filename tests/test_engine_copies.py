"""Copies the fast engine binds on their first run (engine/fast.py): an indexed source into a
strided destination as one ``take`` into the destination's view, against numpy on both engines,
overlapping source and destination included."""

from __future__ import annotations

import numpy as np
import pytest

import softipu as sp
from softipu import program as P

ENGINES = pytest.mark.parametrize("reference", [False, True], ids=["fast", "reference"])


def _graph():
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    x = g.add_variable(sp.float32, (4, 6), name="x")
    y = g.add_variable(sp.float32, (6, 3), name="y")
    sp.ops.map_linearly(g, x)
    sp.ops.map_linearly(g, y)
    return g, x, y


@ENGINES
def test_rows_picked_into_a_transposed_view(reference):
    g, x, y = _graph()
    rows = [2, 0, 3]
    eng = sp.Engine(g, [P.Copy(x[rows], y.T)], {"engine.reference": reference})
    xs = np.arange(24, dtype=np.float32).reshape(4, 6) * 1.5
    eng.write_tensor(x, xs)
    for _ in range(2):  # the second run uses the copy bound on the first
        eng.run(0)
        np.testing.assert_array_equal(eng.read_tensor(y), xs[rows].T)


@ENGINES
def test_a_reversed_pick_onto_itself(reference):
    """The source's elements are the destination's, in another order: every element is read
    before any is written, as numpy's ``x[a:b] = x[idx]`` does."""
    g, x, _ = _graph()
    flat = x.flatten()
    idx = list(range(13, 3, -1))
    eng = sp.Engine(g, [P.Copy(flat[idx], flat[2:12])], {"engine.reference": reference})
    xs = np.arange(24, dtype=np.float32)
    want = xs.copy()
    want[2:12] = xs[idx]
    eng.write_tensor(x, xs.reshape(4, 6))
    eng.run(0)
    np.testing.assert_array_equal(eng.read_tensor(x).reshape(-1), want)


def test_the_fast_engine_binds_the_take():
    g, x, y = _graph()
    eng = sp.Engine(g, [P.Copy(x[[1, 3, 0]], y.T)])
    eng.write_tensor(x, np.ones((4, 6), np.float32))
    eng.run(0)
    bound = [c for c in eng._interpreter._copies.values() if c is not None]
    assert bound and all(getattr(c, "func", None) is np.take for c in bound)


@ENGINES
def test_a_large_copy_cut_into_pieces_moves_every_element(reference):
    """A copy of 2 x 384 x 512 elements (the fast engine cuts it into pieces along its longest
    axis for idle cores), straight and transposing, equals numpy's."""
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    x = g.add_variable(sp.float32, (2, 384, 512), name="x")
    y = g.add_variable(sp.float32, (2, 384, 512), name="y")
    z = g.add_variable(sp.float32, (2, 512, 384), name="z")
    for v in (x, y, z):
        sp.ops.map_linearly(g, v)
    eng = sp.Engine(g, [P.Sequence([P.Copy(x, y), P.Copy(x.transpose(0, 2, 1), z)])],
                    {"engine.reference": reference, "debug.allowOutOfMemory": True})  # values only
    for seed in range(2):  # the second run uses the pieces bound on the first
        xs = np.random.default_rng(seed).standard_normal((2, 384, 512)).astype(np.float32)
        eng.write_tensor(x, xs)
        eng.run(0)
        np.testing.assert_array_equal(eng.read_tensor(y), xs)
        np.testing.assert_array_equal(eng.read_tensor(z), xs.transpose(0, 2, 1))
