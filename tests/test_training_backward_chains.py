"""Core ATen spells a GELU's, a layer norm's and a softmax's gradient as chains of elementwise ops;
in the backward those chains are one map each (training/lowering.py ``_joins_users``), as PopART's
one-op gradients, with the same values bit for bit as one compute set per op. Oracles: the unfused
lowering (bitwise) and eager torch (1e-4 relative)."""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

import softipu as sp
import softipu.torch as st
from _torch_models import assert_matches_eager_adamw
from softipu.frontends.torch.training import fuse, lowering


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up, self.norm, self.down = torch.nn.Linear(16, 32), torch.nn.LayerNorm(32), torch.nn.Linear(32, 8)

    def forward(self, x, y):
        h = F.gelu(self.norm(self.up(x)))
        h = h * torch.tanh(h).sigmoid() + h.softmax(-1)
        return F.cross_entropy(self.down(h), y)


def _data(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    return torch.randn(8, 16, generator=g), torch.randint(0, 8, (8,), generator=g)


def _train(net: torch.nn.Module, steps: int) -> tuple[list[float], list[np.ndarray], list[str]]:
    model = st.training_model(net, torch.optim.AdamW(net.parameters(), lr=1e-2),
                              st.Options(target=sp.targets.ipu_model(tiles=16)))
    losses = [float(model(*_data(step))) for step in range(steps)]
    model.copy_weights_to_host()
    names = [cs.name for cs in model.lowered.graph.compute_sets]
    return losses, [p.detach().numpy().copy() for p in net.parameters()], names


def test_backward_chains_fuse_with_the_same_bits_as_separate_ops(monkeypatch):
    torch.manual_seed(0)
    net = Net()
    eager = copy.deepcopy(net)
    # A fused map laid out like its forward operand (test_training_map_layout.py) moves the matmuls
    # after it onto other tiles, whose sums may round otherwise: fusion alone is compared here.
    monkeypatch.setattr(fuse, "LEAD_BY_LAYOUT", False)
    losses, weights, names = _train(copy.deepcopy(net), 3)
    monkeypatch.setattr(lowering, "FUSE_BACKWARD_CHAINS", False)
    losses0, weights0, names0 = _train(copy.deepcopy(net), 3)
    backward = [n for n in names if n.startswith("bwd/")]
    backward0 = [n for n in names0 if n.startswith("bwd/")]
    assert len(backward) < len(backward0) - 10, (len(backward), len(backward0))
    assert [n for n in names if n.startswith("fwd/")] == [n for n in names0 if n.startswith("fwd/")]
    assert losses == losses0
    assert all(np.array_equal(a, b) for a, b in zip(weights, weights0, strict=True))
    assert_matches_eager_adamw(eager, _data, losses, weights)
