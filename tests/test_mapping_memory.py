"""Resolving a large tile mapping holds about two run tables at a time (issue 10: estimate-only
pricing of a 4096^3 fp16 matmul under 50 MB, whose output alone maps 262,144 runs)."""

from __future__ import annotations

import tracemalloc

import numpy as np

import softipu as sp


def test_resolving_262144_runs_out_of_address_order_stays_small_and_right() -> None:
    g = sp.Graph(sp.targets.ipu_model(tiles=64))
    x = g.add_variable(sp.float16, (512, 32768), name="x")
    # Column block j of row v (64 elements) on tile j % 64, given block-major: not address order.
    j, v = np.meshgrid(np.arange(512), np.arange(512), indexing="ij")
    starts = (v * 32768 + j * 64).ravel()
    g.map_intervals(x, starts, starts + 64, (j % 64).ravel())
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        resolved = g.resolved_mapping(sp.float16)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    # 262,144 intervals of 20 bytes (two int64 bounds, an int32 tile) are 5.2 MB; the run
    # columns being sorted are about as much again. Keeping every intermediate took 43 MB.
    assert peak < 16e6, peak
    assert resolved.starts.size == 262144  # neighbours are on different tiles: nothing merges
    rng = np.random.default_rng(0)
    rows, cols = rng.integers(0, 512, 1000), rng.integers(0, 32768, 1000)
    np.testing.assert_array_equal(resolved.tiles_of(x.offset + rows * 32768 + cols), (cols // 64) % 64)
