"""Every parameter's Adam update reads the same bias corrections (``1 - beta**step``...), 0-d
expressions of the step and the hyper-parameters: they are computed once per step for all
parameters (training/fuse.py ``materialize(scalars=...)``), not once per parameter, with the same
values bit for bit. Oracles: the unshared lowering (bitwise) and eager torch (1e-4 relative)."""

from __future__ import annotations

import copy

import numpy as np
import torch

import softipu as sp
import softipu.torch as st
from _torch_models import assert_matches_eager_adamw
from softipu.frontends.torch.training import lowering


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 16),
                                          torch.nn.Tanh(), torch.nn.Linear(16, 4))

    def forward(self, x, y):
        return torch.nn.functional.cross_entropy(self.layers(x), y)


def _data(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    return torch.randn(8, 8, generator=g), torch.randint(0, 4, (8,), generator=g)


def _train(net: torch.nn.Module, opt: torch.optim.Optimizer, steps: int):
    model = st.training_model(net, opt, st.Options(target=sp.targets.ipu_model(tiles=16)))
    losses = [float(model(*_data(step))) for step in range(steps)]
    model.copy_weights_to_host()
    graph = model.lowered.graph
    scalar_maps = sum(1 for t in graph.vertex_tables
                      if t.compute_set.name.startswith("upd/") and t.compute_set.op == "map" and t.count == 1)
    return losses, [p.detach().numpy().copy() for p in net.parameters()], scalar_maps


def test_bias_corrections_are_computed_once_for_every_parameter(monkeypatch):
    torch.manual_seed(0)
    net = Net()
    eager = copy.deepcopy(net)
    params = len(list(net.parameters()))
    shared = copy.deepcopy(net)
    losses, weights, maps = _train(shared, torch.optim.AdamW(shared.parameters(), lr=1e-2), 3)
    monkeypatch.setattr(lowering, "SHARE_UPDATE_SCALARS", False)
    alone = copy.deepcopy(net)
    losses0, weights0, maps0 = _train(alone, torch.optim.AdamW(alone.parameters(), lr=1e-2), 3)
    assert maps > 0 and maps0 == params * maps, (maps, maps0, params)
    assert losses == losses0
    assert all(np.array_equal(a, b) for a, b in zip(weights, weights0, strict=True))
    assert_matches_eager_adamw(eager, _data, losses, weights)
