"""Batch norm over an activation stored channels innermost (ops/nn/norm_pixels.py): computed where a
convolution's output lies, as popnn's statistics (popops reductions over the activations' own
mapping) and channel ops (addToChannel / channelMul in place) do, nothing re-laid out.

The exchange figures are worked out by hand from the layouts; values against torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import softipu as sp
from softipu import program as P
from softipu.ops import elementwise as ew
from softipu.ops import nn
from softipu.ops.common import tile_regions
from softipu.ops.conv import conv, create_conv_weights

FOUR = sp.targets.ipu_model(tiles=4)


def _steps(eng) -> dict:
    return {s["name"]: s for s in eng.report.steps}


def test_conv_bn_relu_moves_only_the_channel_vectors() -> None:
    # A 1x1 convolution 16 -> 16 over (1, 16, 4, 4) on 4 tiles leaves its output stored channels
    # innermost, 4 whole pixels (64 contiguous elements) a tile. Batch norm then runs one vertex a
    # tile over that run: the moments move only the shift (16 fp32, on tile 0) to the 3 other
    # tiles, 3 x 64 = 192 B; the apply moves the 16 channels' mean and var (fp32, 4 channels a
    # tile where the sums were reduced) to each tile that lacks them, 4 x 12 x 8 = 384 B, and
    # the unit weight and zero bias (fp16, on tile 0) to 3 tiles, 3 x 16 x 2 x 2 = 192 B: 576 B.
    # No activation element moves, and the output (and the relu after it) keeps the input's
    # four runs. (One channel block of every pixel a vertex, as before, read 48 of each vertex's
    # 64 elements from the other tiles.)
    g = sp.Graph(FOUR)
    var = g.add_variable(sp.float16, (1, 4, 4, 16), name="x")
    sp.ops.map_linearly(g, var)
    x = var.transpose(0, 3, 1, 2)
    w = create_conv_weights(g, sp.float16, x.shape, (16, 16, 1, 1))
    prog = P.Sequence()
    y = conv(g, x, w, prog, name="conv")
    z, mean, v = nn.batch_norm_training(g, y, None, None, prog, name="bn")
    r = ew.relu(g, z, prog, name="relu")
    eng = sp.Engine(g, [prog])
    rng = np.random.default_rng(0)
    xv = rng.standard_normal((1, 16, 4, 4)).astype(np.float16)
    wv = (rng.standard_normal((16, 16, 1, 1)) / 4).astype(np.float16)
    eng.write_tensor(x, xv)
    eng.write_tensor(w, wv)
    eng.run(0)
    steps = _steps(eng)
    assert steps["bn/moments"]["bytes_exchanged"] == 3 * 16 * 4
    assert steps["bn/apply"]["bytes_exchanged"] == 4 * 12 * 8 + 3 * 16 * 2 * 2
    assert steps["relu"]["bytes_exchanged"] == 0
    runs = [tile_regions(g, t.transpose(0, 2, 3, 1).reshape(-1)) for t in (y, z, r)]
    for starts, lengths, tiles in runs:
        assert starts.tolist() == [0, 64, 128, 192] and lengths.tolist() == [64] * 4
        assert tiles.tolist() == [0, 1, 2, 3]
    yt = torch.nn.functional.conv2d(torch.tensor(xv, dtype=torch.float32), torch.tensor(wv, dtype=torch.float32))
    want = torch.relu(torch.nn.functional.batch_norm(yt, None, None, training=True)).numpy()
    assert np.abs(eng.read_tensor(r).astype(np.float32) - want).max() < 4e-3
    np.testing.assert_allclose(eng.read_tensor(mean), yt.mean(dim=(0, 2, 3)).numpy(), rtol=2e-3, atol=2e-3)


def _nhwc(g: sp.Graph, shape: tuple[int, ...], dtype=sp.float32) -> tuple[sp.Tensor, sp.Tensor]:
    n, c, h, w = shape
    var = g.add_variable(dtype, (n, h, w, c), name="x")
    return var, var.transpose(0, 3, 1, 2)


def _check_against_torch(g: sp.Graph, x: sp.Tensor, shape: tuple[int, ...]) -> dict:
    """batch_norm_training and batch_norm_grad of ``x`` against torch's autograd (fp32); the
    steps by name."""
    c = shape[1]
    wt = g.add_variable(sp.float32, (c,), name="w")
    sp.ops.map_linearly(g, wt)
    dyv = g.add_variable(sp.float32, shape[:1] + shape[2:] + shape[1:2], name="dy")
    g.set_tile_mapping(dyv, g.get_tile_mapping(x.transpose(0, 2, 3, 1)))
    dy = dyv.transpose(0, 3, 1, 2)
    prog = P.Sequence()
    out, mean, var = nn.batch_norm_training(g, x, wt, None, prog, name="bn")
    dx, dw, db = nn.batch_norm_grad(g, dy, x, mean, var, wt, prog, name="bn_grad")
    eng = sp.Engine(g, [prog])
    rng = np.random.default_rng(1)
    xv, dyn = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
    wv = rng.standard_normal(c).astype(np.float32)
    for t, val in ((x, xv), (dy, dyn), (wt, wv)):
        eng.write_tensor(t, val)
    eng.run(0)
    xt = torch.tensor(xv, requires_grad=True)
    wtt = torch.tensor(wv, requires_grad=True)
    ref = torch.nn.functional.batch_norm(xt, None, None, wtt, None, training=True)
    ref.backward(torch.tensor(dyn))
    np.testing.assert_allclose(eng.read_tensor(out), ref.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(eng.read_tensor(dx), xt.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(eng.read_tensor(dw), wtt.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(eng.read_tensor(db), dyn.sum(axis=(0, 2, 3)), rtol=1e-4, atol=1e-4)
    return _steps(eng)


def test_channel_blocks_on_different_tiles() -> None:
    # A plan that splits the output channels: each pixel's 8 channels in two blocks of 4 on two
    # tiles (pixels 0-24 on tiles 0 / 1, pixels 25-49 on tiles 2 / 3). Each tile's block is 25
    # rows x 4 channels, rows 8 apart, read where it lies: the moments move only the shift (8
    # fp32 zeros on tile 0) to the tiles lacking their 4 channels of it, 3 x 4 x 4 = 48 B. (A
    # vertex per channel of the sample's 50 pixels, as before, read half of them from another
    # tile: 612 B.)
    g = sp.Graph(FOUR)
    shape = (1, 8, 5, 10)
    var, x = _nhwc(g, shape)
    rows = var.reshape(50, 8)
    for tile, (r0, c0) in enumerate(((0, 0), (0, 4), (25, 0), (25, 4))):
        g.set_tile_mapping(rows[r0:r0 + 25, c0:c0 + 4], tile)
    steps = _check_against_torch(g, x, shape)
    assert steps["bn/moments"]["bytes_exchanged"] == 3 * 4 * 4


@pytest.mark.parametrize("shape", [(2, 6, 5, 5), (3, 5, 2, 7)])
def test_tile_pieces_cut_inside_pixels(shape) -> None:
    # Mapped linearly, the tiles' runs start and end inside pixels: pieces of one row and part of
    # the channels beside runs of whole rows, whose channel ranges overlap (slots of their own).
    g = sp.Graph(FOUR)
    var, x = _nhwc(g, shape)
    sp.ops.map_linearly(g, var)
    steps = _check_against_torch(g, x, shape)
    # every tile holds some of every channel: the shift (C fp32, on tile 0) to 3 tiles, and no
    # activation element moves (a vertex per channel plane read them across the tiles)
    assert steps["bn/moments"]["bytes_exchanged"] == 3 * shape[1] * 4


def test_many_slots_are_added_in_runs_first() -> None:
    # (4, 16, 12, 12) fp32 on 64 tiles, 9 whole pixels (144 elements) a tile: two vertices a tile
    # (channels 0-7 and 8-15), one slot a tile: 64 slots, more than 2 sqrt(64) = 16, so popops'
    # intermediate stage: runs of ceil(sqrt(64)) = 8 slots, each channel range added on the tile
    # of the run's first slot, receiving the 7 other rows' 8 channels x [s1, s2]: 8 runs x 2
    # ranges x 7 x 16 x 4 B = 7,168 B. The cross-tile stage then reads 8 rows, not 64: at most
    # 16 column blocks x 8 rows x 2 x 4 B. Values against numpy.
    g = sp.Graph(sp.targets.ipu_model(tiles=64))
    var, x = _nhwc(g, (4, 16, 12, 12))
    sp.ops.map_linearly(g, var, grain_size=16)
    prog = P.Sequence()
    _, mean, var_ = nn.batch_norm_training(g, x, None, None, prog, name="bn")
    eng = sp.Engine(g, [prog])
    xv = np.random.default_rng(2).standard_normal((4, 16, 12, 12)).astype(np.float32) + 3
    eng.write_tensor(x, xv)
    eng.run(0)
    steps = _steps(eng)
    assert steps["bn/reduce/intermediate"]["bytes_exchanged"] == 8 * 2 * 7 * 16 * 4
    assert steps["bn/reduce/cross_tile"]["bytes_exchanged"] <= 16 * 8 * 2 * 4
    np.testing.assert_allclose(eng.read_tensor(mean), xv.mean(axis=(0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(eng.read_tensor(var_), xv.var(axis=(0, 2, 3)), rtol=1e-4)
