"""multiUpdateAdd into a row-split table (create_slicable_table's row blocks) from updates stored by
rows, as a layer's output gradient arrives: the updates are regrouped first (popops' planned
multiUpdateOp -> regroupSliceTensor), so each block's vertex reads its column as one run, not one
exchange region per update; values equal numpy's ``np.add.at`` on both engines, bitwise between
them (copies, transposes and the same vertices).

The region figures are worked out by hand from the layout (see each test).
"""

from __future__ import annotations

import numpy as np
import pytest

import softipu as sp
from softipu import program as P
from softipu.compiler.exchange import compute_set_transfers, traffic
from softipu.ops.indexing import create_slicable_table, multi_update_add, plan_table_split

TILES, ROWS, COLS, N = 16, 512, 4, 32


def _update_regions(eng, name: str) -> np.ndarray:
    ex = eng.executable
    found = [c for c in ex.compute_sets.values() if c.compute_set.name == name]
    assert len(found) == 1, [c.compute_set.name for c in ex.compute_sets.values()]
    return traffic(compute_set_transfers(found[0], ex.mappings), ex.target).recv_regions


def _build(updates_tile: int | None, cols: int = COLS, n: int = N, dtype=sp.float32, tiles: int = TILES):
    g = sp.Graph(sp.targets.ipu_model(tiles=tiles, bytes_per_tile=256 * 1024))
    table = create_slicable_table(g, (ROWS, cols), dtype, name="table")
    idx = g.add_variable(sp.int32, (n,), name="idx")
    upd = g.add_variable(dtype, (n, cols), name="upd")  # by rows: update i's columns contiguous
    if updates_tile is None:  # spread by rows, as a layer's output
        sp.ops.map_linearly(g, idx)
        sp.ops.map_linearly(g, upd)
    else:
        g.set_tile_mapping(idx, updates_tile)
        g.set_tile_mapping(upd, updates_tile)
    prog = P.Sequence()
    multi_update_add(g, table, idx, upd, 0.5, prog, name="update")
    return g, table, idx, upd, prog


def test_each_block_reads_its_column_of_the_updates_as_one_region() -> None:
    # 4 columns on 16 tiles: one column and one of 4 row blocks (128 rows) a tile.
    assert plan_table_split(ROWS, COLS, TILES) == (1, 4)
    g, table, idx, upd, prog = _build(updates_tile=0)
    eng = sp.Engine(g, [prog])
    # By hand: the 4 columns are one block of UPDATE_COLUMN_BLOCK (8) columns, transposed on tile
    # 0 (where the updates are: the copy moves nothing); each of the 16 vertices (column c, row
    # block r) reads column c's 32 updates, one run on tile 0, and its shifted indices on its own
    # tile: one region received a tile but tile 0's, which holds the run. Read in place (the
    # updates' column c, every 4th element), each tile received 32 regions, one an update.
    regions = _update_regions(eng, "update")
    assert regions[0] == 0
    np.testing.assert_array_equal(regions[1:], np.ones(TILES - 1, np.int64))
    transposes = [grp for c in eng.executable.compute_sets.values() if c.compute_set.name == "update/transpose"
                  for grp in c.groups]
    assert sum(grp.num_vertices for grp in transposes) == 1
    assert {int(t) for grp in transposes for t in grp.tiles} == {0}


@pytest.mark.parametrize(("updates_tile", "cols", "n", "dtype"), [
    (5, COLS, N, sp.float32),
    (None, 19, 37, sp.float32),  # blocks of 8, 8 and 3 columns; 37 updates (Transpose2d's slow path)
    (None, 24, 40, sp.float16),
])
def test_regrouped_updates_add_like_numpy_on_both_engines(updates_tile, cols, n, dtype) -> None:
    g, table, idx, upd, prog = _build(updates_tile, cols, n, dtype, tiles=64)
    assert any(c.compute_set.name == "update/transpose" for c in sp.Engine(g, [prog]).executable.compute_sets.values())
    rng = np.random.default_rng(cols)
    values = rng.standard_normal((ROWS, cols)).astype(dtype.numpy)
    picks = rng.integers(-3, ROWS + 3, n).astype(np.int32)
    picks[:4] = picks[4]  # a repeated row adds every update
    updates = rng.standard_normal((n, cols)).astype(dtype.numpy)
    valid = (picks >= 0) & (picks < ROWS)
    want = values.astype(np.float64)
    np.add.at(want, picks[valid], 0.5 * updates[valid].astype(np.float64))
    tol = 1e-6 if dtype is sp.float32 else 2e-3
    got = []
    for options in ({}, {"engine.reference": True}):
        eng = sp.Engine(g, [prog], options=options)
        eng.write_tensor(table, values)
        eng.write_tensor(idx, picks)
        eng.write_tensor(upd, updates)
        eng.run(0)
        got.append(eng.read_tensor(table))
        np.testing.assert_allclose(got[-1].astype(np.float64), want, rtol=tol, atol=tol)
    np.testing.assert_array_equal(got[0], got[1])
