"""A copy's regions (exchange code and per-region exchange cycles) against an element-by-element count."""

from __future__ import annotations

import numpy as np

import softipu as sp
from softipu.compiler.exchange import copy_transfers
from softipu.graph.tensor import Tensor


def test_an_overlapping_window_copy_counts_the_rows_contiguous_on_both_sides():
    """An im2col-style window view (a convolution's input patches): the source has two unit-stride
    axes, and only the kernel row is contiguous in the destination too. Its pieces are those rows,
    not single elements (walking the other unit-stride axis made 3x the regions: a small CNN's
    exchange code no longer fitted a tile)."""
    g = sp.Graph(sp.targets.ipu_model(tiles=16))
    x = g.add_variable(sp.float32, (2, 6, 6), name="x")
    sp.ops.map_linearly(g, x, grain_size=5)
    src = Tensor(g, sp.float32, (2, 4, 4, 3, 3), x.offset, (36, 6, 1, 6, 1))  # 3x3 windows
    y = g.add_variable(sp.float32, src.shape, name="y")
    sp.ops.map_linearly(g, y, grain_size=7)
    transfers, _ = copy_transfers(src, y, {sp.float32: g.resolved_mapping(sp.float32)}, 16)
    s_addr, d_addr = src.addresses().ravel(), y.addresses().ravel()
    s_tile, d_tile = g.tile_of(src).ravel(), g.tile_of(y).ravel()
    new_piece = np.concatenate(([True], (np.diff(s_addr) != 1) | (np.diff(d_addr) != 1)
                                | (np.diff(s_tile) != 0) | (np.diff(d_tile) != 0)))
    first = new_piece & (s_tile != d_tile)
    send, recv = transfers.pieces_per_tile(16)
    # A piece may also be cut where the mapping starts a new interval on the same tile (both
    # sides): at most one extra piece per mapping interval.
    intervals = g.resolved_mapping(sp.float32).starts.size
    for got, tiles in ((send, s_tile), (recv, d_tile)):
        want = np.bincount(tiles[first], minlength=16)
        assert (got >= want).all() and got.sum() <= want.sum() + intervals
    assert recv.sum() < (s_tile != d_tile).sum() / 2  # rows of 3, not single elements
