"""Issue 19: a one-N-block matmul reduce cut into worker shares of whole rows of each tile's chunk
(ops._matmul_vertices._add_reduce_vertices, as poplin's ReduceAdd divides a tile's region), the
shares of a kind on a regular grid, so its fields are strided or one grid piece, not an address
per element, whatever the batch."""

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


def _no_index(grp) -> bool:
    """Every field strided or one grid piece: no address per element."""
    return all(t.is_strided or (t.slabs is not None and len(t.slabs.pieces) == 1)
               for name in ("out", "partials") for t in grp.tensors(name))


def test_shares_of_each_tiles_chunk_stay_strided_by_hand():
    """100 x 2048 @ 2048 x 16 fp32 on 8 tiles: K split 8 ways, one M block of 100 rows, so each
    tile's chunk is ceil(100 / 8) = 13 rows (the last 100 - 7 x 13 = 9) and a share ceil(13 / 6) =
    3 rows (48 elements). Shares are cut inside each chunk, so every output row stays on the tile
    of its chunk (the tile holding one of its partials): 13 rows -> 3, 3, 3, 3, 1 (5 vertices) on
    tiles 0-6, 9 rows -> 3, 3, 3 on tile 7. A worker's ReduceAdd over 48 elements of 8 partials
    (codelets.matmul.REDUCE, poplin's estimator): set-up 32 + 48 / 4 loops x (3 x 8 + 7) = 404
    cycles; the 1-row share 32 + 4 x 31 = 156; a tile 6 x max(404, ceil((4 x 404 + 156) / 6)) =
    2,424."""
    pl = plan_matmul(T, sp.float32, (100, 2048), (2048, 16))
    assert (pl.k_split, pl.n_split, pl.m_split) == (8, 1, 1)
    eng, _, reduce_cs = _run((100, 2048), (2048, 16), 5)
    tiles = np.concatenate([grp.tiles for grp in reduce_cs.groups])
    assert np.bincount(tiles, minlength=8).tolist() == [5, 5, 5, 5, 5, 5, 5, 3]
    assert all(_no_index(grp) for grp in reduce_cs.groups)
    step = next(s for s in eng.executable.steps if s.name.endswith("/reduce"))
    assert step.compute_cycles == 6 * 404


def test_shares_of_batched_groups_values():
    """A batched product (3 groups of 50 rows): each group's chunks cut alike, one grid across
    the groups; the values still match."""
    _, _, reduce_cs = _run((3, 50, 2048), (3, 2048, 16), 6)
    assert all(_no_index(grp) for grp in reduce_cs.groups)
