"""Indexed inputs whose addresses form a strided view (engine/storage.strided_form): read by the
fast engine through that view, with the values numpy gives, on both engines."""

from __future__ import annotations

import numpy as np
import pytest

import softipu as sp
from softipu import program as P
from softipu.engine.storage import strided_form

ENGINES = pytest.mark.parametrize("reference", [False, True], ids=["fast", "reference"])


@pytest.mark.parametrize(("offset", "shape", "strides"), [
    (100, (2, 3, 4), (64, 0, 1)),  # a broadcast mask's rows
    (7, (5, 6), (1, 5)),  # a column-major block
    (50, (4, 3), (-10, 2)),  # rows backwards
    (9, (6,), (3,)),
    (3, (3, 1, 2), (10, 4, 1)),
])
def test_strided_form_finds_the_view_numpy_would_address(offset, shape, strides):
    base = np.arange(1000, dtype=np.int64)
    want = np.lib.stride_tricks.as_strided(base[offset:], shape, tuple(8 * s for s in strides))
    form = strided_form(want.reshape(-1, want.shape[-1]) if want.ndim > 1 else want)
    assert form is not None
    o, sh, st = form
    got = np.lib.stride_tricks.as_strided(base[o:], sh, tuple(8 * s for s in st))
    np.testing.assert_array_equal(got.reshape(-1), want.reshape(-1))


@pytest.mark.parametrize("index", [[0, 1, 3], [4, 4, 5, 6], [[0, 1], [5, 7]], [[0, 1, 2], [3, 4, 6]]])
def test_irregular_addresses_have_no_strided_form(index):
    assert strided_form(np.array(index)) is None


@ENGINES
def test_a_broadcast_operand_read_through_its_strided_form(reference):
    """``x + m`` with ``m`` (2, 1, 16) broadcast over x's (2, 8, 16): the add's group reads m
    through an index the fast engine turns into one strided view (a zero stride)."""
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    x = g.add_variable(sp.float32, (2, 8, 16), name="x")
    m = g.add_variable(sp.float32, (2, 1, 16), name="m")
    for v in (x, m):
        sp.ops.map_linearly(g, v)
    prog = P.Sequence()
    y = sp.ops.add(g, x, m, prog)
    eng = sp.Engine(g, [prog], {"engine.reference": reference})
    for seed in range(2):  # the second run reads through the views bound on the first
        rng = np.random.default_rng(seed)
        xs, ms = rng.standard_normal((2, 8, 16)).astype(np.float32), rng.standard_normal((2, 1, 16)).astype(np.float32)
        eng.write_tensor(x, xs)
        eng.write_tensor(m, ms)
        eng.run(0)
        np.testing.assert_array_equal(eng.read_tensor(y), xs + ms)
    if not reference:
        runners = [job.func for r in eng._interpreter._runners.values() for job in r.jobs]  # GroupRunners
        assert any(bound is not None and t.index is not None
                   for r in runners for _, _, t, _, bound in getattr(r, "gathers", ()))
