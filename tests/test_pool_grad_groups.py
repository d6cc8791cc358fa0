"""Pooling gradients over activations stored channels innermost (ops/nn/pooling.py
_pool_grad_groups): a vertex per band of input rows of one sample, popnn's channel groups, with
``dx`` stored channels innermost; values the plane vertices' bits, and torch's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import softipu as sp
from softipu import program as P
from softipu.ops import nn


def _nhwc(g: sp.Graph, shape: tuple[int, ...], name: str) -> sp.Tensor:
    n, c, h, w = shape
    var = g.add_variable(sp.float32, (n, h, w, c), name=name)
    sp.ops.map_linearly(g, var)
    return var.transpose(0, 3, 1, 2)


def _nchw(g: sp.Graph, shape: tuple[int, ...], name: str) -> sp.Tensor:
    var = g.add_variable(sp.float32, shape, name=name)
    sp.ops.map_linearly(g, var)
    return var


def _run(layout, mode: str, shape, kernel, stride, padding, xv, dyv):
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    pooled = (shape[0], shape[1], *dyv.shape[2:])
    x, dy = layout(g, shape, "x"), layout(g, pooled, "dy")
    prog = P.Sequence()
    if mode == "max":
        dx = nn.max_pool_grad(g, x, dy, prog, kernel=kernel, stride=stride, padding=padding)
    else:
        dx = nn.avg_pool_grad(g, dy, prog, input_shape=shape, kernel=kernel, stride=stride, padding=padding)
    eng = sp.Engine(g, [prog])
    eng.write_tensor(x, xv)
    eng.write_tensor(dy, dyv)
    eng.run(0)
    groups = sum(grp.num_vertices for cs in eng.executable.compute_sets.values() for grp in cs.groups
                 if "PoolGroupsGrad" in grp.codelet.__name__)
    return eng.read_tensor(dx), dx, groups


@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize(("shape", "kernel", "stride", "padding"),
                         [((2, 8, 9, 9), 3, 2, 1), ((3, 5, 6, 7), 2, 2, 0)])
def test_pool_grad_over_channel_groups(mode, shape, kernel, stride, padding) -> None:
    rng = np.random.default_rng(0)
    xv = rng.standard_normal(shape).astype(np.float32)
    xv[0, 0, :3, :3] = 1.0  # ties: torch's first maximum
    xt = torch.tensor(xv, requires_grad=True)
    fn = torch.nn.functional.max_pool2d if mode == "max" else torch.nn.functional.avg_pool2d
    yt = fn(xt, kernel, stride, padding)
    dyv = rng.standard_normal(tuple(yt.shape)).astype(np.float32)
    yt.backward(torch.tensor(dyv))
    got, dx, groups = _run(_nhwc, mode, shape, kernel, stride, padding, xv, dyv)
    planes, _, none = _run(_nchw, mode, shape, kernel, stride, padding, xv, dyv)
    np.testing.assert_allclose(got, xt.grad.numpy(), rtol=1e-6, atol=1e-6)
    assert np.array_equal(got.view(np.uint32), planes.view(np.uint32))  # the plane vertices' bits
    # One vertex per sample, band of input rows and channel group: 4 tiles x 6 workers / N
    # samples = 12 (N = 2) or 8 (N = 3) output-row bands wanted, capped at the OH output rows (5
    # or 3), and the workers left split the channels in whole vectors of 4: 8 channels in 2
    # groups (N = 2: 2 x 5 x 2 = 20 vertices), 5 channels in 1 (N = 3: 3 x 3 = 9). NCHW: planes.
    assert groups == {8: 20, 5: 9}[shape[1]] and none == 0
    n, c, h, w = shape
    assert dx.is_strided and dx.strides == (h * w * c, 1, w * c, c)  # stored channels innermost
