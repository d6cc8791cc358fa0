"""Issue 19: a one-N-block matmul reduce cut into worker shares at multiples of one piece of rows
over the whole output (ops.matmul._add_reduce_worker_vertices), so its vertices are evenly spaced
and bind strided fields, not an address per element, whatever the batch."""

from __future__ import annotations

import numpy as np

import softipu as sp
from softipu import program as P
from softipu.ops.matmul import plan_matmul

T = sp.targets.ipu_model(tiles=8, bytes_per_tile=512 * 1024)


def _run(shape_a, shape_b, seed):
    g = sp.Graph(T)
    a = g.add_variable(sp.float32, shape_a, name="a")
    b = g.add_variable(sp.float32, shape_b, name="b")
    for t in (a, b):
        sp.ops.map_linearly(g, t)
    prog = P.Sequence()
    c = sp.ops.matmul(g, a, b, prog)
    eng = sp.Engine(g, [prog])
    rng = np.random.default_rng(seed)
    av, bv = rng.standard_normal(shape_a, np.float32), rng.standard_normal(shape_b, np.float32)
    eng.write_tensor(a, av)
    eng.write_tensor(b, bv)
    eng.run(0)
    np.testing.assert_allclose(eng.read_tensor(c), av.astype(np.float64) @ bv, rtol=1e-4, atol=1e-3)
    [(cs_id, reduce_cs)] = [(i, cs) for i, cs in eng.executable.compute_sets.items()
                            if cs.groups and cs.groups[0].codelet.__name__.startswith("ReducePartials")]
    return eng, cs_id, reduce_cs


def test_shares_straddle_tiles_yet_stay_strided_by_hand():
    """100 x 2048 @ 2048 x 16 fp32 on 8 tiles: K split 8 ways, one M block of 100 rows, so each
    tile's chunk is ceil(100 / 8) = 13 rows and a share ceil(13 / 6) = 3 rows (48 elements). Shares
    start at rows 0, 3, ..., 99: 33 of 3 rows and one of 1, on the tile whose chunk holds their
    first row: starts in [0, 13) -> 0, 3, 6, 9, 12 (5); [13, 26) -> 4; [26, 39) -> 4; [39, 52) -> 5;
    [52, 65) -> 4; [65, 78) -> 4; [78, 91) -> 5; [91, 100) -> 3. Cut at each tile's own 13 rows
    (3, 3, 3, 3, 1) the equal shares were irregularly spaced and listed every address. A worker's
    ReduceAdd over 48 elements of 8 partials (codelets.matmul.REDUCE, poplin's estimator): set-up
    32 + 48 / 4 loops x (3 x 8 + 7) = 404 cycles; six worker slots: 2,424 a tile."""
    pl = plan_matmul(T, sp.float32, (100, 2048), (2048, 16))
    assert (pl.k_split, pl.n_split, pl.m_split) == (8, 1, 1)
    eng, _, reduce_cs = _run((100, 2048), (2048, 16), 5)
    tiles = np.concatenate([grp.tiles for grp in reduce_cs.groups])
    assert np.bincount(tiles, minlength=8).tolist() == [5, 4, 4, 5, 4, 4, 5, 3]
    assert len(reduce_cs.groups) == 2  # the 3-row shares and the 1-row tail: one bulk call each
    for grp in reduce_cs.groups:
        for name in ("out", "partials"):
            assert all(t.is_strided for t in grp.tensors(name)), name
    step = next(s for s in eng.executable.steps if s.name.endswith("/reduce"))
    assert step.compute_cycles == 6 * 404


def test_shares_cross_groups_values():
    """A batched product (3 groups of 50 rows): shares run on across group boundaries (the output
    and each partial are row-major over all 150 rows) and the values still match."""
    _, _, reduce_cs = _run((3, 50, 2048), (3, 2048, 16), 6)
    for grp in reduce_cs.groups:
        assert all(t.is_strided for name in ("out", "partials") for t in grp.tensors(name))
