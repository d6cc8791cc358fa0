"""A convolution's plan keeps each pixel's output channels on one tile where that costs no more
than the plan that splits them plus the re-layout its output would need (ops/conv.py
_forward_grains): figures worked out by hand; values against torch."""

import importlib

import numpy as np
import torch

import softipu as sp
from softipu import program as P
from softipu.ops.conv import conv

conv_mod = importlib.import_module("softipu.ops.conv")


def _target():
    return sp.targets.ipu_model(tiles=8, bytes_per_tile=256 * 1024)


def _plans(c, h, o):
    """The best plan of a 1x1 convolution of [1, c, h, h] fp16 into o channels, and the best one
    with whole output rows (N blocks of all o channels)."""
    ctx = conv_mod._PlanContext("test")
    geo = conv_mod._Geometry.of(ctx, (1, c, h, h), (o, c, 1, 1), sp.float16, sp.float16, 1, 0, 1, 1)
    inner, opts = geo.inner(), conv_mod._options(ctx, None, sp.float16)
    spec = conv_mod._conv_spec(inner, sp.float16)
    free, _ = conv_mod._plan(spec, opts, _target(), (1, 1, 1), allow_swap=False)
    rows, _ = conv_mod._plan(spec, opts, _target(), (1, 1, o), allow_swap=False)
    return free, rows


def _pixel_tiles(c, h, o):
    g = sp.Graph(_target())
    x = g.add_variable(sp.float16, (1, c, h, h), name="x")
    sp.ops.map_linearly(g, x)
    w = g.add_variable(sp.float16, (o, c, 1, 1), name="w")
    sp.ops.map_linearly(g, w)
    prog = P.Sequence()
    y = conv(g, x, w, prog)
    tiles = g.resolved_mapping(sp.float16).tiles_of(y.transpose(0, 2, 3, 1).reshape(h * h, o).addresses())
    return g, x, w, y, prog, tiles


def test_whole_rows_taken_when_cheaper_than_the_relayout():
    # [1, 16, 8, 8] -> 32 channels: M = 64, K = 16, N = 32. The best plan splits N in two over 8
    # tiles; the whole-row plan costs more, but less than that plus re-laying the output: 64 x 32
    # fp16 = 4096 B over the 8 tiles used, 512 B a tile at 4 B a cycle = 128 cycles.
    free, rows = _plans(16, 8, 32)
    assert free.n_split == 2 and free.tiles_used == 8 and rows.n_split == 1
    assert free.cycles < rows.cycles <= free.cycles + 128
    g, x, w, y, prog, tiles = _pixel_tiles(16, 8, 32)
    assert np.all(tiles == tiles[:, :1]), "every pixel's 32 channels on one tile"
    # Whole rows: 6 M blocks of 11 rows (6 tiles, the last 9 rows). The second compute set (fp32
    # partials cast to fp16) has a vertex per worker's share of a block's rows, ceil(11 / 6) = 2
    # rows, cut inside each block (ops._matmul_vertices): 2, 2, 2, 2, 2, 1 in each of the 5 blocks
    # of 11 and 2, 2, 2, 2, 1 in the last: 35 vertices, not one per row and N block (64 x 2 = 128).
    eng = sp.Engine(g, [prog])
    reduce = sum(grp.num_vertices for cs in eng.executable.compute_sets.values() for grp in cs.groups
                 if grp.codelet.__name__.startswith("ReducePartials"))
    assert rows.blocks[1] == 11 and reduce == 35
    rng = np.random.default_rng(0)
    xv = rng.standard_normal(x.shape).astype(np.float16)
    wv = rng.standard_normal(w.shape).astype(np.float16)
    eng.write_tensor(x, xv)
    eng.write_tensor(w, wv)
    eng.run(0)
    ref = torch.nn.functional.conv2d(torch.tensor(xv.astype(np.float32)), torch.tensor(wv.astype(np.float32)))
    np.testing.assert_allclose(eng.read_tensor(y).astype(np.float32), ref.numpy(), atol=2e-2 * float(ref.abs().max()))


def test_split_kept_when_whole_rows_cost_more_than_the_relayout():
    # [1, 16, 4, 4] -> 32 channels: M = 16. Re-laying 16 x 32 fp16 = 1024 B over the 8 tiles used
    # is 32 cycles a tile; the whole-row plan costs more than that over the split one.
    free, rows = _plans(16, 4, 32)
    assert free.n_split == 2 and free.tiles_used == 8
    assert rows.cycles > free.cycles + 32
    *_, tiles = _pixel_tiles(16, 4, 32)
    assert np.all(tiles[:, :16] != tiles[:, 16:]), "each pixel's channels on two tiles"


def _window_block_sizes(n, h, tiles):
    g = sp.Graph(sp.targets.ipu_model(tiles=tiles, bytes_per_tile=256 * 1024))
    x = g.add_variable(sp.float32, (n, 16, h, h), name="x")
    sp.ops.map_linearly(g, x)
    w = g.add_variable(sp.float32, (16, 16, 3, 3), name="w")
    sp.ops.map_linearly(g, w)
    prog = P.Sequence()
    conv(g, x, w, prog, padding=1)
    eng = sp.Engine(g, [prog])
    return sorted({int(m) for cs in eng.executable.compute_sets.values() for grp in cs.groups
                   if grp.codelet.__name__.startswith("ConvWindow") for m in np.ravel(grp.fields["m"])})


def test_window_blocks_of_whole_output_rows_where_no_slower(monkeypatch):
    # These plans split K: their windows are read in place only with WINDOWS_FOR_K_SPLIT on.
    monkeypatch.setattr(conv_mod, "WINDOWS_FOR_K_SPLIT", True)
    # [2, 16, 7, 7] 3x3 padding 1 on 4 tiles: M = 2 x 7 x 7 = 98. The best plan's M blocks of 25
    # pixels cost the same as blocks of whole 7-pixel rows (28 = 4 rows), so rows are taken:
    # blocks 28, 28, 28 and 98 - 84 = 14.
    assert _window_block_sizes(2, 7, 4) == [14, 28]
    # [1, 16, 7, 7] on 16 tiles: M = 49; blocks of rows (28) are slower than blocks of 17, which
    # stay: 17, 17 and 49 - 34 = 15.
    assert _window_block_sizes(1, 7, 16) == [15, 17]
