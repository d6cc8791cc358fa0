"""conv_weight_use in a training graph: the weights' convolution and its convolution_backward (which
reads the same weights, as PopART's ConvFlipWeights reads what createWeights laid out) still get
the convolution's layout; any other use keeps the linear one."""

from __future__ import annotations

import torch

from softipu.frontends.torch.passes import conv_weight_use

aten = torch.ops.aten


def _graph(bwd_stride=(1, 1), extra_use=False):
    g = torch.fx.Graph()
    x, w, gy = g.placeholder("x"), g.placeholder("w"), g.placeholder("gy")
    x.meta["val"] = torch.empty(2, 3, 8, 8)
    conv = g.call_function(aten.convolution.default, (x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1))
    bwd = g.call_function(aten.convolution_backward.default,
                          (gy, x, w, [0], list(bwd_stride), [1, 1], [1, 1], False, [0, 0], 1, [True, True, False]))
    outs = [conv, bwd]
    if extra_use:
        outs.append(g.call_function(aten.mul.Tensor, (w, 2.0)))
    g.output(tuple(outs))
    return w


def test_training_weights_take_the_convolution_layout():
    assert conv_weight_use(_graph()) == {"input_shape": (2, 3, 8, 8), "stride": (1, 1), "padding": (1, 1),
                                         "dilation": (1, 1), "groups": 1}


def test_a_backward_of_another_geometry_or_another_use_keeps_the_linear_layout():
    assert conv_weight_use(_graph(bwd_stride=(2, 2))) is None
    assert conv_weight_use(_graph(extra_use=True)) is None
