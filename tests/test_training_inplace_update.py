"""The optimizer update written in place (PopART's in-place optimizer codelets): each new weight
and state tensor is one fused map into its variable, no copy back; an fp16 weight's casts are
nodes of that map unless the device rounds stochastically. Oracle: eager torch's AdamW."""

from __future__ import annotations

import copy

import pytest
import torch

import softipu as sp
import softipu.torch as st
from softipu import program as P

TARGET = sp.targets.ipu_model(tiles=4, bytes_per_tile=1 << 20)


def _model(half: bool, **engine):
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    eager = copy.deepcopy(module)
    wrapped = copy.deepcopy(module).half() if half else module
    loss_fn = torch.nn.MSELoss()

    class WithLoss(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x, y):
            return loss_fn(self.m(x).float(), y)

    model = WithLoss(wrapped)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    options = st.Options(target=TARGET, engine_options=engine)
    return st.training_model(model, opt, options), WithLoss(eager), model


def _data(half: bool, i: int):
    g = torch.Generator().manual_seed(i)
    x = torch.randn(4, 6, generator=g)
    return (x.half() if half else x), torch.randn(4, 3, generator=g)


def _update_steps(trained):
    low = trained._lowered
    copies, casts = [], []
    for node in P.walk(low.programs[1]):
        if node.kind.name == "COPY" and isinstance(node.dst, sp.Tensor):
            home = low.graph.variable_of(node.dst)
            if home is not None and home.name.startswith(("weights/", "optimizer/")):
                copies.append(node.dst.name)
        elif node.kind.name == "EXECUTE" and node.compute_set.name.startswith("upd/") \
                and node.compute_set.name.endswith("/cast"):
            casts.append(node.compute_set.name)
    return copies, casts


def test_fp32_update_in_place_matches_eager_adamw():
    trained, eager, module = _model(half=False)
    opt = torch.optim.AdamW(eager.parameters(), lr=1e-2, weight_decay=0.1)
    for i in range(4):
        x, y = _data(False, i)
        loss = trained(x, y)
        opt.zero_grad()
        want = eager(x, y)
        want.backward()
        opt.step()
        assert float(loss) == pytest.approx(float(want.detach()), rel=1e-5)
    for (name, got), (_, ref) in zip(module.named_parameters(), eager.named_parameters(), strict=True):
        torch.testing.assert_close(got.detach(), ref.detach(), rtol=1e-5, atol=1e-6, msg=name)
    copies, _ = _update_steps(trained)
    assert copies == []  # every weight and moment is written where it lives


@pytest.mark.parametrize("stochastic", [False, True], ids=["nearest", "stochastic"])
def test_fp16_update_casts_fused_unless_stochastic(stochastic):
    engine = {"prng.enableStochasticRounding": True} if stochastic else {}
    trained, eager, module = _model(half=True, **engine)
    opt = torch.optim.AdamW(eager.parameters(), lr=1e-2, weight_decay=0.1)
    losses, want = [], []
    x, y = _data(True, 0)
    for _ in range(6):
        losses.append(float(trained(x, y)))
        opt.zero_grad()
        ref = eager(x.float(), y)
        ref.backward()
        opt.step()
        want.append(float(ref.detach()))
    assert losses[-1] < losses[0]
    assert losses == pytest.approx(want, abs=1e-2)
    for (name, got), (_, ref) in zip(module.named_parameters(), eager.named_parameters(), strict=True):
        torch.testing.assert_close(got.detach().float(), ref.detach(), rtol=0, atol=1e-2, msg=name)
    _, casts = _update_steps(trained)
    # Four fp16 parameters: their fp32 -> fp16 casts stay Cast vertices (which the device's
    # stochastic rounding rounds) only when it is on; the upcasts are always fused.
    assert len(casts) == (4 if stochastic else 0)
