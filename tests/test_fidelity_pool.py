"""Pooling over channel groups (issue 19): input stored channels innermost (a convolution's NHWC
output) is pooled as popnn pools channel groups — a vertex per band of output rows of one sample,
reading whole pixels as one run — with the output stored channels innermost too. Values against
torch; structure (vertices, field regions) independent of the batch; popnn's cycle figure by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import softipu as sp
from softipu import program as P
from softipu.codelets import nn as codelets
from softipu.codelets.nn import PoolMode
from softipu.ops import nn

SMALL = sp.targets.ipu_model(tiles=8, bytes_per_tile=256 * 1024)


def _nhwc_input(g, a: np.ndarray, dtype=sp.float32):
    """An ``(N, C, H, W)`` tensor stored channels innermost, as a convolution's output is."""
    n, c, h, w = a.shape
    var = g.add_variable(dtype, (n, h, w, c), name="x")
    sp.ops.map_linearly(g, var, grain_size=4)
    return var.transpose(0, 3, 1, 2)


def _run(a, fn, dtype=sp.float32, target=SMALL):  # SMALL: small shapes split output columns too
    g = sp.Graph(target)
    prog = P.Sequence()
    x = _nhwc_input(g, a, dtype)
    y = fn(g, x, prog)
    eng = sp.Engine(g, [prog])
    eng.write_tensor(x, a)
    eng.run(0)
    return g, y, eng.read_tensor(y)


def _groups(g, name):
    return [grp for cs, table in zip(g.compute_sets, g.vertex_tables, strict=True)
            if cs.name.endswith(name) for grp in table.bulk]


GEOMETRIES = [  # (shape, kernel, stride, padding)
    ((2, 5, 9, 7), 3, 2, 1),  # ResNet's stem pool, small
    ((1, 3, 6, 6), 2, None, 0),
    ((3, 4, 7, 5), (3, 2), (1, 2), (1, 0)),
    ((2, 6, 5, 5), 3, 1, 1),
    ((2, 40, 4, 4), 4, None, 0),  # a global pool: channels split in 2 groups of 20 over vertices
    ((1, 36, 5, 6), 3, 2, 1),  # columns split (9 bands >= 8 tiles: channels not split)
]


@pytest.mark.parametrize(("shape", "kernel", "stride", "padding"), GEOMETRIES)
def test_channels_innermost_pools_match_torch_and_stay_channels_innermost(shape, kernel, stride, padding):
    a = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    a[0, 0, 0, :2] = 7.0  # ties: max pooling picks a value, any copy is torch's value
    t = torch.tensor(a)
    s = stride if stride is not None else kernel
    g, y, got = _run(a, lambda g, x, p: nn.max_pool(g, x, p, kernel=kernel, stride=stride, padding=padding))
    np.testing.assert_array_equal(got, F.max_pool2d(t, kernel, s, padding).numpy())  # exact
    assert y.transpose(0, 2, 3, 1).flatten().is_strided  # output channels innermost: conv reads in place
    for include in (True, False):
        _, _, got = _run(a, lambda g, x, p, inc=include: nn.avg_pool(
            g, x, p, kernel=kernel, stride=stride, padding=padding, count_include_pad=inc))
        want = F.avg_pool2d(t, kernel, s, padding, count_include_pad=include).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    one_tile = sp.targets.ipu_model(tiles=1)  # 6 workers: whole bands of rows, no column split
    _, _, got = _run(a, lambda g, x, p: nn.max_pool(g, x, p, kernel=kernel, stride=stride, padding=padding),
                     target=one_tile)
    np.testing.assert_array_equal(got, F.max_pool2d(t, kernel, s, padding).numpy())


def test_channels_innermost_fp16_and_nchw_input_still_match_torch():
    a = np.random.default_rng(2).standard_normal((2, 8, 6, 6)).astype(np.float16)
    _, _, got = _run(a, lambda g, x, p: nn.max_pool(g, x, p, kernel=3, stride=2, padding=1), sp.float16)
    np.testing.assert_array_equal(got, F.max_pool2d(torch.tensor(a).float(), 3, 2, 1).half().numpy())
    g = sp.Graph(SMALL)
    prog = P.Sequence()
    x = g.add_variable(sp.float32, (2, 8, 6, 6), name="x")  # NCHW: planes, the plane codelet
    sp.ops.map_linearly(g, x)
    y = nn.max_pool(g, x, prog, kernel=3, stride=2, padding=1)
    assert not _groups(g, "max_pool") or all("Groups" not in grp.codelet.__name__
                                             for grp in _groups(g, "max_pool"))
    eng = sp.Engine(g, [prog])
    b = a.astype(np.float32)
    eng.write_tensor(x, b)
    eng.run(0)
    np.testing.assert_array_equal(eng.read_tensor(y), F.max_pool2d(torch.tensor(b), 3, 2, 1).numpy())


def _regions(field) -> int:
    """Contiguous runs in a vertex field (rows of a strided field are runs when contiguous)."""
    if field.is_strided:
        assert field.strides[-1] == 1
        return field.shape[0]
    index = np.asarray(field.index).reshape(field.shape[0], -1)
    return int(field.shape[0] + np.count_nonzero(np.diff(index, axis=1) != 1))


def test_vertex_field_regions_do_not_grow_with_the_batch():
    """Vertices read whole pixels: runs per vertex are the input rows of its band, never one per
    element or channel; vertices stay about one per worker of the chip (8 tiles x 6) as the batch
    grows. At b1 the 24 output rows are split in 2 column bands (48 vertices of 3 or 2 input rows);
    from b2 a vertex is a whole band of one sample (one run each side)."""
    regions, vertices = [], []
    for n in (1, 2, 4, 8):
        g = sp.Graph(SMALL)
        x = _nhwc_input(g, np.zeros((n, 16, 48, 48), np.float32))
        nn.max_pool(g, x, P.Sequence(), kernel=3, stride=2, padding=1)
        groups = _groups(g, "max_pool")
        vertices.append(sum(grp.num_vertices for grp in groups))
        regions.append(sum(_regions(grp.fields["x"]) + _regions(grp.fields["out"]) for grp in groups))
    assert vertices == [48, 48, 48, 48]
    assert regions[0] == 2 * (3 * 23 + 2) + 48 and regions[1:] == [96, 96, 96]


def test_a_global_pool_splits_channel_groups_over_vertices():
    """ResNet's final 7x7 average pool at b1 has one output pixel: popnn spreads its channel
    groups over tiles. 64 channels in 4 groups of 16: 4 vertices, each reading 49 pixel runs."""
    a = np.random.default_rng(4).standard_normal((1, 64, 7, 7)).astype(np.float32)
    g, _, got = _run(a, lambda g, x, p: nn.avg_pool(g, x, p, kernel=7))
    (grp,) = _groups(g, "avg_pool")
    assert grp.num_vertices == 4 and _regions(grp.fields["x"]) == 4 * 49 and _regions(grp.fields["out"]) == 4
    np.testing.assert_allclose(got, F.avg_pool2d(torch.tensor(a), 7).numpy(), rtol=1e-6, atol=1e-6)


def test_group_pool_cycles_hand_worked_from_popnn_estimator():
    """popnn's getPoolingCycles worker figure (PerformanceEstimation.hpp) by hand: max pool, fp32,
    C = 4 (chansPerGroupD = 4 / 2 = 2), one output row of OW = 2 from a 2x2 window, stride 2, no
    padding, W = 4: work items per row = 2 x 2 kernel positions, each a run of 2 outputs (n = 1).
      fixed 4+2+2+7+2+2 = 19; init: 4 + ceil(2 x 2 / 6) = 5; startPos 8; pointers 2+1+3+2+4+1 = 13
      row: 13 + 2 = 15; item: 20 + 1 + 2 x (2 + 4 + 3 + 1) + 1 + 3 = 45, four of them = 180; exit 1
      = 19 + 5 + 8 + 13 + 15 + 180 + 1 = 241."""
    g = dict(H=2, W=4, OW=2, kh=2, kw=2, sh=2, sw=2, pw=0, row0=0, C=4)
    assert codelets.group_pool_cycles(sp.float32, PoolMode.MAX, g, 1, SMALL) == 241
    # avg (SumPooling): the rpt loop is one cycle dearer per item, the pointer set-up one more
    assert codelets.group_pool_cycles(sp.float32, PoolMode.AVG, g, 1, SMALL) == 241 + 1 + 4 * 2


def test_channels_innermost_1d_pools_match_torch():
    a = np.random.default_rng(3).standard_normal((2, 5, 9)).astype(np.float32)
    g = sp.Graph(SMALL)
    prog = P.Sequence()
    var = g.add_variable(sp.float32, (2, 9, 5), name="x")  # (N, L, C): channels innermost
    sp.ops.map_linearly(g, var)
    x = var.transpose(0, 2, 1)
    y = nn.max_pool(g, x, prog, kernel=3, stride=2, padding=1)
    z = nn.avg_pool(g, x, prog, kernel=2, count_include_pad=False)
    assert any("Groups" in grp.codelet.__name__ for grp in _groups(g, "max_pool"))
    eng = sp.Engine(g, [prog])
    eng.write_tensor(x, a)
    eng.run(0)
    np.testing.assert_array_equal(eng.read_tensor(y), F.max_pool1d(torch.tensor(a), 3, 2, 1).numpy())
    np.testing.assert_allclose(eng.read_tensor(z), F.avg_pool1d(torch.tensor(a), 2).numpy(), rtol=1e-6)
