"""A fused backward map is laid out like the forward activation it reads (training/fuse.py
``lead_operand``), as popnn's ``nonLinearityInputGradient`` makes a GELU's input gradient with
``createOutputForElementWiseOp(graph, {out})``, not like the incoming gradient (a matmul's output).
Oracles: the tile of every element worked out from the forward value's mapping, and eager torch
(1e-4 relative)."""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

import softipu as sp
import softipu.torch as st
from _torch_models import assert_matches_eager_adamw
from softipu.frontends.torch.training import fuse
from softipu.graph.tensor import Tensor


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up, self.down = torch.nn.Linear(16, 64), torch.nn.Linear(64, 8)

    def forward(self, x, y):
        return F.cross_entropy(self.down(F.gelu(self.up(x))), y)


def _data(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    return torch.randn(32, 16, generator=g), torch.randint(0, 8, (32,), generator=g)


def _gelu_grad(graph) -> Tensor:
    """The result of the backward map computing GELU's derivative (the one reading erf), whole."""
    for cs, table in zip(graph.compute_sets, graph.vertex_tables, strict=True):
        if cs.name.startswith("bwd/") and any("erf" in g.codelet.__name__ for g in table.bulk):
            var = graph.variable_of(table.bulk[0].fields["out"])
            return Tensor(graph, var.dtype, var.shape, var.start, (var.shape[1], 1))
    raise AssertionError("no GELU gradient map")


def test_lead_operand_puts_the_forward_value_first():
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    act = g.add_variable(sp.float32, (8, 8), name="fwd/act")
    grad = g.add_variable(sp.float32, (8, 8), name="bwd/grad")
    bias = g.add_variable(sp.float32, (8,), name="bwd/bias")
    for t in (act, grad, bias):
        sp.ops.map_linearly(g, t)
    assert fuse.lead_operand(g, [grad, act], (8, 8)) == [act, grad]
    assert fuse.lead_operand(g, [act, grad], (8, 8)) == [act, grad]
    assert fuse.lead_operand(g, [grad, bias], (8, 8)) == [grad, bias]  # nothing from the forward
    assert fuse.lead_operand(g, [bias, act], (8, 8)) == [bias, act]  # the driver's own choice kept
    assert fuse.lead_operand(g, [grad, act.T.broadcast((2, 8, 8))[0]], (8, 8))[0] is not grad


def test_gelu_gradient_follows_the_forward_activation():
    torch.manual_seed(0)
    net = Net()
    eager = copy.deepcopy(net)
    model = st.training_model(net, torch.optim.AdamW(net.parameters(), lr=1e-2),
                              st.Options(target=sp.targets.ipu_model(tiles=16)))
    losses = [float(model(*_data(step))) for step in range(3)]
    model.copy_weights_to_host()
    assert_matches_eager_adamw(eager, _data, losses, [p.detach().numpy().copy() for p in net.parameters()])
    graph = model.lowered.graph
    act = model.lowered.views["addmm"]  # GELU's input, kept by the forward for the backward
    grad = model.lowered.views["mm"]  # the gradient reaching it (dY @ W_down)
    assert not np.array_equal(graph.tile_of(act), graph.tile_of(grad))  # two layouts to choose from
    assert np.array_equal(graph.tile_of(_gelu_grad(graph)), graph.tile_of(act))
