"""An fp16 model's joint graph converts around nearly every op of its layer norms' backward: those
casts join the elementwise op beside them as one map (training/lowering.py ``_joint_node``) with the
same values bit for bit as one compute set per cast. Oracles: the unfused lowering and eager torch."""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

import softipu as sp
import softipu.torch as st
from softipu.frontends.torch.training import lowering


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up, self.norm, self.down = torch.nn.Linear(16, 32), torch.nn.LayerNorm(32), torch.nn.Linear(32, 8)

    def forward(self, x, y):
        return F.cross_entropy(self.down(F.gelu(self.norm(self.up(x)))).float(), y)


def _data(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    return torch.randn(8, 16, generator=g), torch.randint(0, 8, (8,), generator=g)


def _train(net: torch.nn.Module, steps: int) -> tuple[list[float], list[np.ndarray], list[str]]:
    model = st.training_model(net, torch.optim.AdamW(net.parameters(), lr=1e-2),
                              st.Options(target=sp.targets.ipu_model(tiles=16)))
    losses = [float(model(x.half(), y)) for x, y in map(_data, range(steps))]
    model.copy_weights_to_host()
    names = [cs.name for cs in model.lowered.graph.compute_sets]
    return losses, [p.detach().numpy().copy() for p in net.parameters()], names


def test_fp16_casts_fuse_with_the_same_bits_as_separate_casts(monkeypatch):
    torch.manual_seed(0)
    net = Net()
    eager = copy.deepcopy(net)
    losses, weights, names = _train(copy.deepcopy(net).half(), 3)
    monkeypatch.setattr(lowering, "FUSE_JOINT_CASTS", False)
    losses0, weights0, names0 = _train(copy.deepcopy(net).half(), 3)
    casts = sum(n.endswith("/cast") for n in names)
    assert casts < sum(n.endswith("/cast") for n in names0) - 3 and len(names) < len(names0)
    assert losses == losses0
    assert all(np.array_equal(a, b) for a, b in zip(weights, weights0, strict=True))
    opt = torch.optim.AdamW(eager.parameters(), lr=1e-2)  # fp32 eager: fp16 stays within 1e-2
    for step, loss in enumerate(losses):
        opt.zero_grad()
        ref = eager(*_data(step))
        ref.backward()
        opt.step()
        assert abs(loss - ref.item()) < 1e-2 * max(1.0, abs(ref.item()))
