"""A layer norm's statistics that nothing reads (inference) are discarded where written: the torch
lowering ends them with a WriteUndef, so the memory plan holds them only while they are written
(compiler/memory.py), as Poplar's liveness frees the unread outputs of popnn's layer norm."""

from __future__ import annotations

import numpy as np
import torch

import softipu as sp
import softipu.torch as st
from softipu.frontends.torch.export import export_program
from softipu.frontends.torch.lower import lower_program

SMALL = sp.targets.ipu_model(tiles=8, bytes_per_tile=1024 * 1024)


class Norm(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = torch.nn.LayerNorm(16)

    def forward(self, x):
        return self.norm(x) * 2


def _plan(module, x):
    with torch.no_grad():
        ep = export_program(module.eval(), (x,), {})
    lowered = lower_program(ep, st.Options(target=SMALL), ["x"])
    eng = sp.Engine(lowered.graph, list(lowered.programs), estimate_only=True)
    return eng.executable


def test_unread_layer_norm_statistics_are_not_always_live():
    exe = _plan(Norm(), torch.randn(4, 6, 16))
    mem = exe.memory
    stats = [v for v in exe.variables if v.name.rsplit("/", 1)[-1] in ("mean", "inv_std")]
    assert stats, [v.name for v in exe.variables]
    for v in stats:
        assert not mem.always_live[v.id], v.name
        # 24 rows of fp32 statistics, live at their write only: first == last point
        assert mem.var_first[v.id] == mem.var_last[v.id] >= 0, v.name
    # Always live: the weight and bias only (the input and output pass through stream copies).
    live = {exe.variables[i].name for i in np.flatnonzero(mem.always_live) if exe.variables[i].numel}
    assert live == {"norm.weight", "norm.bias"}, live


def test_outputs_unchanged():
    torch.manual_seed(0)
    module = Norm().eval()
    x = torch.randn(4, 6, 16)
    got = st.inference_model(module, st.Options(target=SMALL))(x)
    with torch.no_grad():
        np.testing.assert_allclose(got.numpy(), module(x).numpy(), rtol=1e-5, atol=1e-5)
