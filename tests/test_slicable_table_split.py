"""create_slicable_table's row split (popops' slice plan splitting the sliced dimension): a table
narrower than the chip is cut into row blocks too, lookups sum the blocks' partial rows and
updates land in the block holding the row; oracles are numpy's indexing and ``np.add.at``."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import softipu as sp
from softipu import program as P
from softipu.graph.tensor import Tensor
from softipu.ops.indexing import (
    create_slicable_like,
    create_slicable_table,
    multi_slice,
    multi_update_add,
    plan_table_split,
)


def graph(tiles: int) -> sp.Graph:
    return sp.Graph(sp.targets.ipu_model(tiles=tiles, bytes_per_tile=256 * 1024))


def test_plan_cuts_rows_when_columns_leave_tiles_idle() -> None:
    # 256 columns on 1472 tiles: 5 tiles a column (1472 // 256), 5 row blocks of ceil(8192 / 5) =
    # 1,639 rows (the last 1,636), not 4 of 2,048 (a divisor of 8192).
    assert plan_table_split(8192, 256, 1472) == (1, 5)
    # BERT-base's 768 columns: 4 a tile (192 blocks, 7 tiles each) hold 4 * ceil(30522 / 7) =
    # 17,444 elements, fewer than 2 a tile in 3 row blocks (2 * 10,174 = 20,348) or whole columns.
    assert plan_table_split(30522, 768, 1472) == (4, 7)
    # BERT-Large's 1024 columns: 5 a tile (205 blocks on 7 tiles each, 1,435 tiles) hold
    # 5 * ceil(30522 / 7) = 21,805 elements (43,610 B in fp16), against a whole column on each of
    # 1,024 tiles (30,522: 61,044 B) and ceil(30522 * 1024 / 1472) = 21,233 spread perfectly.
    assert plan_table_split(30522, 1024, 1472) == (5, 7)
    assert plan_table_split(100, 8, 4) == (2, 1)  # more columns than tiles: whole columns
    assert plan_table_split(127, 2, 64) == (1, 1)  # too few rows for two 64-row blocks


@pytest.mark.parametrize(("rows", "cols", "tiles"), [(256, 2, 4), (512, 6, 16), (640, 7, 16), (331, 3, 16)])
def test_split_table_lookups_and_updates_match_numpy(rows: int, cols: int, tiles: int) -> None:
    g = graph(tiles)
    width, blocks = plan_table_split(rows, cols, tiles)
    assert blocks > 1
    table = create_slicable_table(g, (rows, cols))
    held = np.bincount(g.tile_of(table).reshape(-1), minlength=tiles)
    height = -(-rows // blocks)  # (331, 3, 16): 5 blocks of 67 rows, the last of 63
    assert held.max() == width * height  # each tile: `width` columns of one row block
    assert held.sum() == rows * cols
    n = 37
    idx = g.add_variable(sp.int32, (n,), name="idx")
    upd = g.add_variable(sp.float32, (n, cols), name="upd")
    sp.ops.map_linearly(g, idx)
    sp.ops.map_linearly(g, upd)
    prog = P.Sequence()
    out = multi_slice(g, table, idx, prog)
    multi_update_add(g, table, idx, upd, 0.5, prog)
    rng = np.random.default_rng(cols)
    values = rng.standard_normal((rows, cols)).astype(np.float32)
    picks = rng.integers(-3, rows + 3, n).astype(np.int32)
    picks[:4] = picks[4]  # a repeated row adds every update
    updates = rng.standard_normal((n, cols)).astype(np.float32)
    valid = (picks >= 0) & (picks < rows)
    want_out = np.where(valid[:, None], values[np.clip(picks, 0, rows - 1)], 0)
    want_table = values.astype(np.float64)
    np.add.at(want_table, picks[valid], 0.5 * updates[valid].astype(np.float64))
    results = []
    for options in ({}, {"engine.reference": True}):
        eng = sp.Engine(g, [prog], options=options)
        eng.write_tensor(table, values)
        eng.write_tensor(idx, picks)
        eng.write_tensor(upd, updates)
        eng.run(0)
        results.append((eng.read_tensor(out), eng.read_tensor(table)))
        np.testing.assert_array_equal(results[-1][0], want_out)  # one block holds the row: x + 0 + ...
        np.testing.assert_allclose(results[-1][1], want_table, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(results[0][1], results[1][1])
    groups = [grp for cs in eng.executable.compute_sets.values() for grp in cs.groups
              if grp.codelet.__name__.startswith("MultiSlice")]
    assert groups and all(grp.tensors("table")[0].is_strided and grp.tensors("index")[0].is_strided
                          for grp in groups)  # the engine reads the blocks in place, no gather


def test_slicable_like_keeps_the_row_blocks() -> None:
    g = graph(16)
    table = create_slicable_table(g, (512, 6))
    state = create_slicable_like(g, table, sp.float16, "state")
    assert state is not None and state.dtype is sp.float16
    np.testing.assert_array_equal(g.tile_of(state), g.tile_of(table))


def test_an_inference_table_is_spread_evenly_and_a_training_table_splits_rows():
    """A table only looked up (inference) is spread evenly over every tile (each lookup receives
    the rest of its column), while in training its gradient and optimizer state share the row
    blocks; values vs eager."""
    from torch import nn  # noqa: PLC0415

    import softipu.torch as st  # noqa: PLC0415

    torch.manual_seed(0)
    emb = nn.Embedding(512, 4)  # 4 columns on 64 tiles: columns alone leave tiles idle
    target = sp.targets.ipu_model(tiles=64, bytes_per_tile=256 * 1024)
    ids = torch.randint(0, 512, (3, 5))
    model = st.inference_model(emb, st.Options(target=target))
    np.testing.assert_array_equal(model(ids).numpy(), emb(ids).detach().numpy())
    graph = model._current.lowered.graph  # noqa: SLF001
    var = next(v for v in graph.variables if v.shape == (4, 512))  # the table, stored [columns, rows]
    tiles = graph.tile_of(Tensor(graph, var.dtype, var.shape, var.start, (512, 1)))
    # By hand: 2,048 elements in grains of 2 (8 B of fp32) over 64 tiles: 32 on every tile, where
    # whole columns held 512 on each of 4 tiles.
    np.testing.assert_array_equal(np.bincount(tiles.reshape(-1), minlength=64), np.full(64, 32))

    class Loss(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = copy.deepcopy(emb)

        def forward(self, x):
            return torch.nn.functional.mse_loss(self.emb(x), torch.zeros(()).expand(*x.shape, 4))

    loss = Loss()
    trainer = st.training_model(loss, torch.optim.SGD(loss.parameters(), lr=0.1), st.Options(target=target))
    trainer(ids)
    low = trainer.lowered
    tiles = low.graph.tile_of(low.params["emb.weight"])
    assert np.unique(tiles[:, 0]).size == plan_table_split(512, 4, 64)[1] > 1
