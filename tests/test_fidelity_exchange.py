"""Issue 19: exchange regions of whole-model copies, counted by hand."""

from __future__ import annotations

import numpy as np
import pytest

import softipu as sp
from softipu.compiler.exchange import copy_transfers
from softipu.graph.tensor import Tensor


def _im2col(g: sp.Graph):
    """A 3x3 stride-1 im2col of an NHWC input ``[1, 6, 6, 2]`` into a ``[16 pixels, 18]`` matrix,
    listed kernel position first (``(kh, kw, n, ho, wo, c)``), as conv's slab copy lists it."""
    x = g.add_variable(sp.float32, (1, 6, 6, 2), name="x")
    g.set_tile_mapping(x, 0)
    y = g.add_variable(sp.float32, (16, 18), name="y")
    g.set_tile_mapping(y, 1)
    src = Tensor(g, sp.float32, (3, 3, 1, 4, 4, 2), x.offset, (12, 2, 72, 12, 2, 1))
    dst = Tensor(g, sp.float32, src.shape, y.offset, (6, 2, 288, 72, 18, 1))
    return src, dst


def test_an_im2col_copy_moves_one_region_per_pixel_and_kernel_row():
    """A kernel row (kw * C = 3 * 2 = 6 elements) is contiguous in the NHWC input and in the
    matrix row: 16 pixels x 3 kernel rows = 48 regions each way, not 16 x 9 = 144 single pixels'
    channel pairs (the order the view lists its axes in does not change the copy)."""
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    src, dst = _im2col(g)
    transfers, local = copy_transfers(src, dst, {sp.float32: g.resolved_mapping(sp.float32)}, 4)
    send, recv = transfers.pieces_per_tile(4)
    assert send.tolist() == [48, 0, 0, 0] and recv.tolist() == [0, 48, 0, 0]
    moved = sum(int((e - s).sum()) for s, e, *_ in transfers.per_dtype())
    assert moved == 16 * 18 and not local.any()


def test_the_reordered_im2col_copy_still_pairs_element_for_element():
    """Every element of the source lands where the destination's same element is (an oracle
    walking both views element by element)."""
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    src, dst = _im2col(g)
    transfers, _ = copy_transfers(src, dst, {sp.float32: g.resolved_mapping(sp.float32)}, 4)
    starts, ends = transfers.starts[0], transfers.ends[0]
    got = np.concatenate([np.arange(s, e) for s, e in zip(starts, ends, strict=True)])
    assert sorted(got.tolist()) == sorted(src.addresses().ravel().tolist())


def test_a_window_field_is_one_interval_per_pixel_row():
    """A vertex reading a 3x3-pixel window of 3 channels from an NHWC ``[2, 5, 6, 3]`` input: each
    window row (3 pixels x 3 channels = 9 addresses) is contiguous, so 3 intervals per vertex,
    6 in all (not 2 x 27 single elements)."""
    from softipu.compiler.conflicts import field_intervals

    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    x = g.add_variable(sp.float32, (2, 5, 6, 3), name="x")
    window = x[:, 1:4, 2:5, :].reshape(2, -1)
    starts, ends, row = field_intervals(window)
    assert row.tolist() == [0, 0, 0, 1, 1, 1]
    first = x.offset + (1 * 6 + 2) * 3
    assert starts.tolist() == [first + r * 18 + s * 90 for s in range(2) for r in range(3)]
    assert (ends - starts).tolist() == [9] * 6


@pytest.mark.parametrize("padding", [1, 0])  # unpadded too: ViT's patch convolution reads its image directly
def test_an_nchw_input_is_regrouped_into_a_convolution_with_a_region_per_channel_run(padding):
    """A ``[2, 3, 8, 8]`` NCHW input on tile 0 into a 3x3 convolution on 8 tiles: each sample's 64
    pixels go in 4 blocks of 16 pixels (8 tiles / 2 samples), one block a tile; a block arrives as
    3 regions (one run of 16 pixels per channel, contiguous in the source) and is transposed on its
    tile: tiles 1-7 receive 3 regions each and tile 0 sends 7 x 3 = 21, not one region per element
    (16 pixels x 3 channels = 48 a tile). Values against torch."""
    import torch

    from softipu import program as P
    from softipu.ops.conv import conv

    g = sp.Graph(sp.targets.ipu_model(tiles=8))
    x = g.add_variable(sp.float32, (2, 3, 8, 8), name="x")
    g.set_tile_mapping(x, 0)
    w = g.add_variable(sp.float32, (4, 3, 3, 3), name="w")
    sp.ops.map_linearly(g, w)
    prog = P.Sequence()
    y = conv(g, x, w, prog, padding=padding)
    mappings = {sp.float32: g.resolved_mapping(sp.float32)}
    send, recv = np.zeros(8, np.int64), np.zeros(8, np.int64)
    for node in prog.programs:
        if isinstance(node, P.Copy) and "nhwc/rearranged" in node.dst.name:
            transfers, _ = copy_transfers(node.src, node.dst, mappings, 8)
            s, r = transfers.pieces_per_tile(8)
            send, recv = send + s, recv + r
    assert send.tolist() == [21, 0, 0, 0, 0, 0, 0, 0]
    assert recv.tolist() == [0, 3, 3, 3, 3, 3, 3, 3]
    eng = sp.Engine(g, [prog])
    rng = np.random.default_rng(0)
    xv, wv = rng.standard_normal((2, 3, 8, 8), np.float32), rng.standard_normal((4, 3, 3, 3), np.float32)
    eng.write_tensor(x, xv)
    eng.write_tensor(w, wv)
    eng.run(0)
    want = torch.nn.functional.conv2d(torch.tensor(xv), torch.tensor(wv), padding=padding).numpy()
    np.testing.assert_allclose(eng.read_tensor(y), want, rtol=1e-5, atol=1e-5)


def test_a_layer_norm_of_scattered_rows_is_normalised_where_its_elements_live():
    """Rows of 64 read whole by one vertex arrive one exchange region per run. A ``(24, 64)`` view
    of a ``(64, 24)`` variable (stride 24: 64 runs a row) and one of 16 runs a row (slabs of 4
    columns) are cut into more than 4 runs a row and take the path that computes the statistics
    where the elements live (no whole-row vertex); contiguous rows (1 run) and rows of 4 runs of 16
    keep whole-row vertices. Values vs torch."""
    import torch

    from softipu import program as P
    from softipu.ops import nn
    from softipu.ops.nn.norms import _rows_scattered

    g = sp.Graph(sp.targets.ipu_model(tiles=8))
    v = g.add_variable(sp.float32, (64, 24), name="v")
    sp.ops.map_linearly(g, v)
    slabs = g.add_variable(sp.float32, (16, 24, 4), name="slabs")  # 16 column slabs of width 4
    quads = g.add_variable(sp.float32, (4, 24, 16), name="quads")  # 4 column slabs of width 16
    assert _rows_scattered(v.transpose(1, 0))
    assert _rows_scattered(slabs.transpose(1, 0, 2).reshape(24, 64))
    assert not _rows_scattered(quads.transpose(1, 0, 2).reshape(24, 64))
    assert not _rows_scattered(v.reshape(24, 64))
    w = g.add_variable(sp.float32, (64,), name="w")
    b = g.add_variable(sp.float32, (64,), name="b")
    for t in (w, b, slabs, quads):
        sp.ops.map_linearly(g, t)
    prog = P.Sequence()
    y, _, _ = nn.layer_norm(g, v.transpose(1, 0), w, b, prog, eps=1e-5)
    eng = sp.Engine(g, [prog])
    assert not any("Rows" in grp.codelet.__name__ for c in eng.executable.compute_sets.values()
                   for grp in c.groups)
    rng = np.random.default_rng(0)
    vv, wv, bv = (rng.standard_normal(s, np.float32) for s in ((64, 24), 64, 64))
    for t, val in ((v, vv), (w, wv), (b, bv)):
        eng.write_tensor(t, val)
    eng.run(0)
    want = torch.nn.functional.layer_norm(torch.tensor(vv.T), (64,), torch.tensor(wv), torch.tensor(bv), 1e-5)
    np.testing.assert_allclose(eng.read_tensor(y), want.numpy(), rtol=1e-5, atol=1e-5)


def test_a_one_by_one_convolution_reads_its_unpadded_nchw_input_where_it_is():
    """A 1x1 kernel reads each pixel's channels once, so its unpadded NCHW input is not regrouped
    (regrouping a many-channel input costs a region per channel on every tile: ONNX ResNet-50's 1x1
    convolutions no longer fit a GC200 when they were); a 2x2 kernel's input still is. Values
    against torch."""
    import torch

    from softipu import program as P
    from softipu.ops.conv import conv

    rng = np.random.default_rng(1)
    xv = rng.standard_normal((2, 3, 8, 8), np.float32)
    for k, regrouped in ((1, False), (2, True)):
        g = sp.Graph(sp.targets.ipu_model(tiles=8))
        x = g.add_variable(sp.float32, (2, 3, 8, 8), name="x")
        g.set_tile_mapping(x, 0)
        w = g.add_variable(sp.float32, (4, 3, k, k), name="w")
        sp.ops.map_linearly(g, w)
        prog = P.Sequence()
        y = conv(g, x, w, prog)
        names = [v.name for v in g.variables]
        assert any("nhwc" in name for name in names) is regrouped, (k, names)
        eng = sp.Engine(g, [prog])
        wv = rng.standard_normal((4, 3, k, k), np.float32)
        eng.write_tensor(x, xv)
        eng.write_tensor(w, wv)
        eng.run(0)
        want = torch.nn.functional.conv2d(torch.from_numpy(xv), torch.from_numpy(wv)).numpy()
        np.testing.assert_allclose(eng.read_tensor(y), want, rtol=1e-5, atol=1e-5)
