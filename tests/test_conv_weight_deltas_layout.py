"""conv_weight_grad lays the weight deltas out as create_conv_weights lays out the weights (popops'
scaledAdd regroups its second operand like the first: lib/popops/ScaledAdd.cpp
``regroupIfBeneficial``), so the optimizer's update reads both where they lie."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import softipu as sp
from softipu import program as P
from softipu.ops.conv import conv_weight_grad, create_conv_weights


def _nhwc(g: sp.Graph, shape: tuple[int, ...], name: str) -> sp.Tensor:
    n, c, h, w = shape
    var = g.add_variable(sp.float16, (n, h, w, c), name=name)
    sp.ops.map_linearly(g, var)
    return var.transpose(0, 3, 1, 2)


@pytest.mark.parametrize(("c", "o", "k"), [(16, 32, 3), (32, 64, 1)])
def test_weight_deltas_are_laid_out_like_the_created_weights(c, o, k) -> None:
    # Every delta sits at the same offset from its variable's start as its weight does from the
    # weights', on the same tile. (The update-matmul's row-major [O, kh*kw*Cg] output is the
    # transpose of the weights' [kh*kw*Cg, O] column slabs: for the 3x3 case only 42% of the
    # elements were on their weight's tile, and every one a region of its own to the update.)
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    x, dy = _nhwc(g, (2, c, 6, 6), "x"), _nhwc(g, (2, o, 6, 6), "dy")
    w = create_conv_weights(g, sp.float16, x.shape, (o, c, k, k), padding=k // 2)
    prog = P.Sequence()
    dw = conv_weight_grad(g, dy, x, prog, weight_shape=w.shape, padding=k // 2, name="wu")
    aw, ad = w.addresses().ravel(), dw.addresses().ravel()
    assert np.array_equal(aw - aw.min(), ad - ad.min())
    mapping = g.resolved_mapping(sp.float16)
    assert np.array_equal(mapping.tiles_of(aw), mapping.tiles_of(ad))
    eng = sp.Engine(g, [prog])
    rng = np.random.default_rng(0)
    xv = rng.standard_normal(x.shape).astype(np.float16)
    dyv = rng.standard_normal(dy.shape).astype(np.float16)
    eng.write_tensor(x, xv)
    eng.write_tensor(dy, dyv)
    eng.run(0)
    ref = torch.nn.grad.conv2d_weight(torch.tensor(xv, dtype=torch.float32), w.shape,
                                      torch.tensor(dyv, dtype=torch.float32), padding=k // 2).numpy()
    assert np.abs(eng.read_tensor(dw).astype(np.float32) - ref).max() <= 2e-3 * np.abs(ref).max()
