"""A lookup keeps the table's layout (popops createSliceTensor / createSliceableTensor): the table
is split by columns across tiles and each slice is produced where its columns live, so a lookup is
one exchange region per (tile, block) — its indices — however many rows it looks up; the
gradient's multiUpdateAdd reads updates laid out the same way.

Oracles: torch.nn.functional.embedding and aten.embedding_dense_backward; the region bound is
worked out by hand from the layout (below).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

import softipu as sp
from softipu import program as P
from softipu.compiler.exchange import compute_set_transfers, traffic
from softipu.ops.indexing import create_slicable_table, gather, multi_update_add

TILES, ROWS, COLS = 16, 50, 32


def _regions(eng, name: str) -> np.ndarray:
    ex = eng.executable
    found = [c for c in ex.compute_sets.values() if c.compute_set.name == name]
    assert len(found) == 1, [c.compute_set.name for c in ex.compute_sets.values()]
    moved = traffic(compute_set_transfers(found[0], ex.mappings), ex.target)
    return moved.send_regions + moved.recv_regions


def _lookup(n: int):
    g = sp.Graph(sp.targets.ipu_model(tiles=TILES, bytes_per_tile=128 * 1024))
    table = create_slicable_table(g, (ROWS, COLS), sp.float32, name="table")
    ids = g.add_variable(sp.int32, (2, n // 2), name="ids")
    g.set_tile_mapping(ids, 0)
    prog = P.Sequence()
    out = gather(g, table, ids, prog, axis=0, name="lookup")
    return g, table, ids, out, sp.Engine(g, [prog])


@pytest.mark.parametrize("n", [16, 256])
def test_lookup_regions_do_not_grow_with_the_rows_looked_up(n):
    # 32 columns on 16 tiles: 2 columns a tile. Each tile receives the indices (one region, from
    # tile 0) and writes its two columns of every looked-up row where they already are (the
    # result is stored transposed like the table: one region a tile). Tile 0 sends the indices
    # to the 15 others: 15 regions. Row by row it was one region per row a tile.
    g, table, _, out, eng = _lookup(n)
    regions = _regions(eng, "lookup")
    assert int(regions.max()) <= TILES - 1 and int(regions.sum()) <= 2 * (TILES - 1)
    np.testing.assert_array_equal(g.tile_of(out).reshape(n, COLS), np.broadcast_to(g.tile_of(table)[:1],
                                                                                    (n, COLS)))


def test_lookup_matches_torch_embedding():
    _, table, ids, out, eng = _lookup(16)
    w = torch.randn(ROWS, COLS)
    i = torch.randint(0, ROWS, (2, 8))
    eng.write_tensor(table, w.numpy())
    eng.write_tensor(ids, i.numpy().astype(np.int32))
    eng.run(0)
    np.testing.assert_array_equal(eng.read_tensor(out), F.embedding(i, w).numpy())


def test_gradient_update_from_a_lookup_layout_matches_torch():
    """multiUpdateAdd of updates laid out as a lookup's result (as the gradient of a lookup's
    output arrives when its consumers keep the layout): regions O(tiles) again, values equal to
    aten.embedding_dense_backward (repeated indices all add)."""
    g = sp.Graph(sp.targets.ipu_model(tiles=TILES, bytes_per_tile=128 * 1024))
    source = create_slicable_table(g, (ROWS, COLS), sp.float32, name="source")
    grad = create_slicable_table(g, (ROWS, COLS), sp.float32, name="grad")
    ids = g.add_variable(sp.int32, (64,), name="ids")
    g.set_tile_mapping(ids, 0)
    prog = P.Sequence()
    updates = gather(g, source, ids, prog, axis=0, name="updates")
    multi_update_add(g, grad, ids, updates, 1.0, prog, name="update")
    eng = sp.Engine(g, [prog])
    regions = _regions(eng, "update")
    assert int(regions.max()) <= TILES - 1  # the indices again; the updates are already there
    src = torch.randn(ROWS, COLS)
    i = torch.randint(0, ROWS, (64,))
    i[:5] = 3  # repeated rows add
    eng.write_tensor(source, src.numpy())
    eng.write_tensor(grad, np.zeros((ROWS, COLS), np.float32))
    eng.write_tensor(ids, i.numpy().astype(np.int32))
    eng.run(0)
    want = torch.ops.aten.embedding_dense_backward(src[i], i, ROWS, -1, False)
    np.testing.assert_allclose(eng.read_tensor(grad), want.numpy(), rtol=1e-6, atol=1e-6)
