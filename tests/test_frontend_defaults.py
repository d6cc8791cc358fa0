"""The frontends compile with PopART's default engine options (frontends/defaults.py): PopTorch
and PopART outline repeated layers, so a model's repeated layers hold their code once unless the
user turns it off through ``engine_options``."""

from __future__ import annotations

import torch

import softipu as sp
import softipu.torch as st

TARGET = sp.targets.ipu_model(tiles=8, bytes_per_tile=1024 * 1024)


def _code(engine_options):
    torch.manual_seed(0)
    layers = [m for _ in range(3) for m in (torch.nn.Linear(32, 32), torch.nn.ReLU())]
    model = st.inference_model(torch.nn.Sequential(*layers).eval(),
                               st.Options(target=TARGET, engine_options=engine_options))
    x = torch.randn(16, 32)
    out = model(x)
    cats = model.engine.executable.memory.categories
    return out, int(cats["vertex_state"].sum()), int(cats["exchange_code"].sum()), model.engine.options.outline


def test_outlining_is_on_by_default_and_the_user_can_turn_it_off():
    out_on, state_on, exchange_on, outline_on = _code({})
    out_off, state_off, exchange_off, outline_off = _code({"opt.enableOutlining": False})
    assert outline_on and not outline_off
    assert state_on < state_off and exchange_on < exchange_off  # three layers' code held once
    assert torch.equal(out_on, out_off)  # outlining changes where code lives, never values
