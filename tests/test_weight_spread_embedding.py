"""An embedding table spread as popops spreads it (graphcore/poplibs lib/popops/DynamicSlice.cpp:
``embedding::plan`` splits the rows, ``slicedDimSplit``, into ``ceildiv`` partitions and charges a
table spread less evenly than the chip allows; ``createSliceableTensor`` spreads a partition over
the tiles of its lookup split and broadcasts it to them for each lookup): the bytes on the fullest
tile and those a lookup receives worked out by hand, and a row-split lookup's indices held once a
tile and only while the lookup runs (popops passes a block's first row as ``baseOffset``)."""

from __future__ import annotations

import numpy as np

import softipu as sp
from softipu import program as P
from softipu.ops.indexing import create_slicable_table, multi_slice


def test_bert_large_word_table_on_gc200_fullest_tile() -> None:
    g = sp.Graph(sp.targets.GC200)
    train = create_slicable_table(g, (30522, 1024), sp.float16, name="train")
    held = np.bincount(g.tile_of(train).reshape(-1), minlength=g.num_tiles) * 2
    # By hand, training's row split: 5 columns a tile group (205 groups) x 7 row blocks of
    # ceil(30522 / 7) = 4,361 rows on 1,435 tiles: 5 * 4,361 * 2 B = 43,610 B on the fullest tile
    # (was 5 x 6 blocks of 5,087 rows: 50,870 B).
    assert held.max() == 43_610 and np.count_nonzero(held) == 1_435
    assert held.sum() == 30522 * 1024 * 2
    infer = create_slicable_table(g, (30522, 1024), sp.float16, name="infer", split_rows=False)
    held = np.bincount(g.tile_of(infer).reshape(-1), minlength=g.num_tiles) * 2
    # Inference: 31,254,528 elements in grains of 4 (8 B) over 1,472 tiles: 7,813,632 grains =
    # 1,472 x 5,308 + 256, so 256 tiles hold 5,309 grains (42,472 B) and the rest 42,464 B; whole
    # columns held 61,044 B on each of 1,024 tiles.
    assert held.max() == 42_472 and np.count_nonzero(held == 42_472) == 256
    assert held.min() == 42_464


def test_lookup_of_an_evenly_spread_table_receives_the_rest_of_each_column() -> None:
    g = sp.Graph(sp.targets.ipu_model(tiles=16, bytes_per_tile=256 * 1024))
    table = create_slicable_table(g, (300, 5), sp.float32, name="table", split_rows=False)
    idx = g.add_variable(sp.int32, (37,), name="idx")
    g.set_tile_mapping(idx, 0)
    prog = P.Sequence()
    y = multi_slice(g, table, idx, prog, name="emb")
    # By hand: 1,500 elements in grains of 2 on 16 tiles: 750 grains = 16 x 46 + 14, so tiles
    # 0-13 hold 94 elements ([94 t, 94 t + 94)), 14 and 15 hold 92. Column c ([300 c, 300 c + 300))
    # starts on tile 0, 3, 6, 9, 12, whose vertex receives the rest: 300 - 94, 300 - 76, - 58,
    # - 40, - 22 elements (x 4 B), and the 37 indices (148 B) from tile 0 but on tile 0.
    eng = sp.Engine(g, [prog], estimate_only=True)
    step = eng.executable.steps[0]
    assert dict(zip(step.recv_tiles.tolist(), step.recv_tile_bytes.tolist(), strict=True)) == {
        0: 206 * 4, 3: 224 * 4 + 148, 6: 242 * 4 + 148, 9: 260 * 4 + 148, 12: 278 * 4 + 148}
    eng = sp.Engine(g, [prog])
    values = np.random.default_rng(0).standard_normal((300, 5)).astype(np.float32)
    picks = np.random.default_rng(1).integers(-2, 302, 37).astype(np.int32)
    eng.write_tensor(table, values)
    eng.write_tensor(idx, picks)
    eng.run(0)
    valid = (picks >= 0) & (picks < 300)
    np.testing.assert_array_equal(eng.read_tensor(y), np.where(valid[:, None], values[np.clip(picks, 0, 299)], 0))


def test_split_lookup_holds_one_index_copy_a_tile_only_while_it_runs() -> None:
    g = sp.Graph(sp.targets.ipu_model(tiles=16, bytes_per_tile=256 * 1024))
    table = create_slicable_table(g, (512, 6), sp.float16, name="table")  # (3, 8): 3 columns a tile
    idx = g.add_variable(sp.int32, (37,), name="idx")
    sp.ops.map_linearly(g, idx)
    prog = P.Sequence()
    y = multi_slice(g, table, idx, prog, name="emb")
    z = g.add_variable(sp.float16, y.shape, name="z")
    sp.ops.map_linearly(g, z)
    prog.add(P.Copy(y, z))  # read after the lookup: a temporary, unless its first access reads it
    eng = sp.Engine(g, [prog])
    mem = eng.executable.memory
    rows = next(v for v in eng.executable.variables if v.name == "emb/rows")
    # By hand: 2 column groups x 8 row blocks = 16 tiles, each one copy of the 37 indices
    # (148 B, 152 at the 8-byte alignment), read by the vertices of its 3 columns; before, a copy
    # a column: 3 x 148 = 444 B (448) a tile.
    sel = mem.var_ids == rows.id
    np.testing.assert_array_equal(np.sort(mem.var_tiles[sel]), np.arange(16))
    assert set(mem.var_bytes[sel].tolist()) == {152}
    assert not mem.always_live[rows.id]  # declared dead before written: a temporary
    out = next(v for v in eng.executable.variables if v.name == "emb/out")
    # The result's column c (37 values, stored whole) sits on the tile of its group's row block
    # c mod 3, where its sum runs: 6 columns on 6 tiles, not the 2 tiles of the first row blocks.
    sel = mem.var_ids == out.id
    assert np.unique(mem.var_tiles[sel]).size == 6 and set(mem.var_bytes[sel].tolist()) == {80}
    assert not mem.always_live[out.id]  # written whole by the partials' sum: dead until then
    values = np.random.default_rng(0).standard_normal((512, 6)).astype(np.float16)
    picks = np.random.default_rng(1).integers(-2, 514, 37).astype(np.int32)
    eng.write_tensor(table, values)
    eng.write_tensor(idx, picks)
    eng.run(0)
    valid = (picks >= 0) & (picks < 512)
    np.testing.assert_array_equal(eng.read_tensor(z), np.where(valid[:, None], values[np.clip(picks, 0, 511)], 0))
