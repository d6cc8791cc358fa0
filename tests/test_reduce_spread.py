"""Where a reduction's work lands: outer reductions' outputs spread over the chip, and the
channels-last check that counts a transposed view's pieces without a tile lookup per element."""

from __future__ import annotations

import numpy as np
import pytest

import softipu as sp
from softipu import program as P
from softipu.ops.common import tile_regions
from softipu.ops.reduce import reduce_sum
from softipu.ops.reduce_layout import fewer_pieces as _fewer_pieces


def test_successive_outer_reductions_receive_on_different_tiles_and_match_numpy() -> None:
    """Two bias-gradient-like sums over rows of (64, 8) fp32 on 16 tiles: each output tile receives
    a partials row from every input tile, so the two outputs must not both start at tile 0."""
    g = sp.Graph(sp.targets.ipu_model(tiles=16, bytes_per_tile=64 * 1024))
    xs = [g.add_variable(sp.float32, (64, 8), name=f"x{i}") for i in range(2)]
    for x in xs:
        sp.ops.map_linearly(g, x)
    prog = P.Sequence()
    ys = [reduce_sum(g, x, prog, dims=0) for x in xs]
    tiles = [set(g.tile_of(y).tolist()) for y in ys]
    assert tiles[0] != tiles[1]
    rng = np.random.default_rng(0)
    values = [rng.standard_normal((64, 8)).astype(np.float32) for _ in xs]
    eng = sp.Engine(g, [prog])
    for x, v in zip(xs, values, strict=True):
        eng.write_tensor(x, v)
    eng.run(0)
    for y, v in zip(ys, values, strict=True):
        np.testing.assert_allclose(eng.read_tensor(y), v.sum(0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("grain", [1, 3, 8, 40])
def test_fewer_pieces_agrees_with_tile_regions(grain: int) -> None:
    """The early-stopping count decides as the full count of ``tile_regions`` would, at every
    limit around the true count (the (R, A) view of a row-major (A, R) tensor)."""
    g = sp.Graph(sp.targets.ipu_model(tiles=8, bytes_per_tile=64 * 1024))
    x = g.add_variable(sp.float32, (12, 20), name="x")
    sp.ops.map_linearly(g, x, grain_size=grain)
    view = x.transpose(1, 0)
    count = tile_regions(g, view)[0].size
    for limit in (1, 2, count - 1, count, count + 1, 10 * count):
        assert _fewer_pieces(g, view, max(limit, 1)) == (count < max(limit, 1))
