"""A mid-sized vertex group (at least ``HALVES_BYTES`` a field) is cut into two chunks or more, so
that a second core may take one (engine/fast.py ``_chunks``); values as numpy either way."""

from __future__ import annotations

import numpy as np

import softipu as sp
from softipu import program as P
from softipu.engine import fast
from softipu.ops.elementwise import E, map


def test_a_mid_sized_group_runs_in_two_chunks_with_numpys_values():
    g = sp.Graph(sp.targets.ipu_model(tiles=4, bytes_per_tile=1 << 20))
    x = g.add_variable(sp.float32, (4, 1 << 15), name="x")  # 512 KiB: under 2 x CHUNK_BYTES
    sp.ops.map_linearly(g, x)
    prog = P.Sequence()
    y = map(g, E.neg(E.input(0)), [x], prog)
    eng = sp.Engine(g, [prog])
    xv = np.random.default_rng(0).standard_normal(x.shape, np.float32)
    eng.write_tensor(x, xv)
    for _ in range(4):  # timed alone, then one thread, then side by side
        eng.run(0)
        np.testing.assert_array_equal(eng.read_tensor(y), -xv)
    jobs = [len(r.jobs) for r in eng._interpreter._runners.values()]
    assert x.numel * 4 < 2 * fast.CHUNK_BYTES and max(jobs) >= 2
