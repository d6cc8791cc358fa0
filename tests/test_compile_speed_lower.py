"""Lowering shortcuts that must give what the long way gives (issue 19's compile time).

* A matmul operand's blocks are found in place only where every block is one run of addresses
  (row by row, or column by column for a transposed block). A layout whose first block is no run
  is refused from that block alone, never listing the whole operand's addresses (BERT-Large's
  attention heads at batch 18). Oracle: each block's addresses checked with numpy, block by block.
* An elementwise op's tile regions of a strided 1-D view, cut at the mapping's interval bounds
  without a sort. Oracle: the tile of every element looked up one by one, split where it changes.
"""

from __future__ import annotations

import numpy as np
import pytest

import softipu as sp
from softipu.graph.tensor import Tensor
from softipu.ops import _matmul_blocks as mb
from softipu.ops._matmul_blocks import _contiguous_blocks, _Grid
from softipu.ops.elementwise._planning import _regions


def _blocks_by_hand(addr: np.ndarray, rows: _Grid, cols: _Grid):
    """(starts, transposed) when every block is one run read row-major (or column-major)."""
    for transposed in (False, True):
        ok = True
        for g in range(addr.shape[0]):
            for r0, rn in zip(rows.starts.tolist(), rows.sizes.tolist(), strict=True):
                for c0, cn in zip(cols.starts.tolist(), cols.sizes.tolist(), strict=True):
                    block = addr[g, r0:r0 + rn, c0:c0 + cn]
                    flat = (block.T if transposed else block).reshape(-1)
                    ok &= bool(np.all(np.diff(flat) == 1))
        if ok:
            return addr[:, rows.starts][:, :, cols.starts], transposed
    return None


def _layouts():
    """name -> (operand (groups, rows, cols), row block, column block)."""
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    x = g.add_variable(sp.float32, (2 * 4 * 6 * 8,), name="x")
    heads = x.reshape(2, 6, 4, 8).transpose(0, 2, 1, 3).reshape(8, 6, 8)  # (b h) s d: a slab layout
    swapped = sp.concat([x[96:192].reshape(2, 6, 8), x[:96].reshape(2, 6, 8)], axis=0)  # indexed
    columns = sp.concat([x[96:192].reshape(2, 8, 6).transpose(0, 2, 1), x[:96].reshape(2, 8, 6).transpose(0, 2, 1)])
    perm = np.random.default_rng(0).permutation(8 * 6 * 8)
    return {
        "heads": (heads, 3, 8),  # no block of more than one row is a run
        "heads, one-row blocks": (heads, 1, 8),  # every block is a run
        "blocks in place": (swapped, 3, 8),
        "blocks in place, narrow": (swapped, 2, 3),  # the first block is a run in neither order
        "transposed blocks": (columns, 6, 4),  # each block one run column by column
        "scattered": (x[perm[:192]].reshape(4, 6, 8), 3, 8),
        "first block only": (sp.concat([x[:48].reshape(1, 6, 8), x[96:144].reshape(1, 6, 8)[:, ::-1]]), 3, 8),
    }


@pytest.mark.parametrize("name", list(_layouts()))
def test_contiguous_blocks_match_a_block_by_block_check(name):
    x, rb, cb = _layouts()[name]
    assert not x.is_strided
    rows, cols = _Grid.of(x.shape[1], rb), _Grid.of(x.shape[2], cb)
    want = _blocks_by_hand(x.addresses(), rows, cols)
    got = _contiguous_blocks(x, rows, cols)
    assert (got is None) == (want is None)
    if want is not None:
        assert got[1] == want[1]
        np.testing.assert_array_equal(got[0], want[0])
    if name in ("blocks in place", "transposed blocks"):
        assert want is not None and want[1] == (name == "transposed blocks")


def test_a_layout_whose_first_block_is_no_run_lists_no_addresses(monkeypatch):
    """BERT's attention heads (b, s, h, d) read as (b h, s, d), blocks of several rows: refused
    from block (0, 0) alone, no whole-operand comparison, no address list of the operand."""
    x = _layouts()["heads"][0]
    assert x.slabs is not None
    called = []
    addresses = Tensor.addresses
    monkeypatch.setattr(Tensor, "addresses", lambda t: called.append(t.shape) or addresses(t))
    monkeypatch.setattr(mb, "_indexed_blocks_ok", lambda *a: called.append("whole") or False)
    assert _contiguous_blocks(x, _Grid.of(6, 3), _Grid.of(8, 8)) is None
    assert called == [(3, 8)]  # the first block's 24 addresses, nothing else


def _mapped(tile_bounds: list[tuple[int, int, int]], n: int):
    g = sp.Graph(sp.targets.ipu_model(tiles=8))
    x = g.add_variable(sp.float32, (n,), name="x")
    starts, ends, tiles = zip(*tile_bounds, strict=True)
    g.map_intervals(x, list(starts), list(ends), list(tiles))
    return g, x


def _regions_by_hand(g, t):
    tiles = g.tile_of(t).reshape(-1)
    if tiles.size and tiles.min() < 0:
        return None
    change = np.flatnonzero(np.diff(tiles)) + 1
    starts = np.concatenate(([0], change)).astype(np.int64)
    return starts, np.diff(np.concatenate((starts, [tiles.size]))), tiles[starts]


@pytest.mark.parametrize("view", ["all", "every 3rd", "every 7th from 5", "reversed by 2", "one element"])
def test_strided_regions_match_the_tile_of_every_element(view):
    # intervals of 5, 11, 1, 32 ... elements, tiles repeating so that cut pieces must be joined
    bounds, a, k = [], 0, 0
    for length in [5, 11, 1, 32, 3, 3, 9, 1, 1, 40, 14]:
        bounds.append((a, a + length, [0, 0, 1, 2, 2, 5, 1, 1, 3, 7, 7][k]))
        a, k = a + length, k + 1
    g, x = _mapped(bounds, a)
    t = {"all": x, "every 3rd": x[::3], "every 7th from 5": x[5::7], "reversed by 2": x[::-2],
         "one element": x[17:18]}[view]
    want = _regions_by_hand(g, t)
    with pytest.MonkeyPatch.context() as mp:  # the cuts are in order: no hash or sort of them
        mp.setattr(np, "unique", lambda *a, **k: pytest.fail("np.unique called"))
        got = _regions(g, t)
    assert want is not None and got is not None
    for w, v in zip(want, got, strict=True):
        np.testing.assert_array_equal(np.asarray(v, np.int64), w)


def test_strided_regions_over_a_gap_are_none():
    g, x = _mapped([(0, 10, 1), (12, 30, 2)], 30)  # elements 10 and 11 unmapped
    assert _regions(g, x[::2]) is None  # reads element 10
    got = _regions(g, x[1::2][6:])  # 13, 15, ...: all on tile 2
    assert got is not None and got[2].tolist() == [2] and got[1].tolist() == [9]
