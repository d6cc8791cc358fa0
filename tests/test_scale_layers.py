"""price_layer (frontends/torch/scale/layers.py): one small layer priced estimate-only on fake weights."""

from __future__ import annotations

import pytest
import torch

import softipu as sp
from softipu.frontends.errors import FrontendError
from softipu.frontends.torch.scale import price_layer


def test_linear_layer_sizes_and_phases():
    target = sp.targets.ipu_model(tiles=4)
    cost = price_layer("fc", lambda: torch.nn.Linear(8, 12), (4, 8), precision="fp32", target=target)
    assert cost.params == 8 * 12 + 12 and cost.param_bytes == 4 * cost.params  # torch's count, fp32
    assert cost.input_bytes == 4 * 8 * 4 and cost.output_bytes == 4 * 12 * 4
    # the backward computes dX and dW (two products) where the forward computes one
    assert cost.forward > 0 and cost.backward > cost.forward
    assert cost.update_per_param > 0 and cost.code_bytes > 0
    assert cost.recompute() == cost.forward
    twice = cost.scaled("fc2", 2)
    assert (twice.forward, twice.params, twice.code_bytes) == (2 * cost.forward, 2 * cost.params, cost.code_bytes)


def test_bad_precision():
    with pytest.raises(FrontendError, match="precision must be fp16 or fp32"):
        price_layer("fc", lambda: torch.nn.Linear(2, 2), (1, 2), precision="bf16")
