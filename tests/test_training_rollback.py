"""Nothing half-updated (training/rollback.py): a step that fails after updating everything leaves
the weights, the optimizer state and the step count as they were, wherever they live (on chip,
or in Streaming Memory). Oracle: the values read before the failing step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import softipu as sp
import softipu.poptorch as poptorch
from _torch_models import TanhMLP

Net = TanhMLP


def _data(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 8, generator=g), torch.randint(0, 3, (4,), generator=g)


def _model(off_chip: bool):
    torch.manual_seed(0)
    net = Net()
    opts = poptorch.Options().setTarget(sp.targets.ipu_model(tiles=4, bytes_per_tile=256 * 1024))
    if off_chip:
        off = poptorch.TensorLocationSettings().useOnChipStorage(False)
        opts.TensorLocations.setWeightLocation(off)
        opts.TensorLocations.setOptimizerLocation(off)
    optimizer = poptorch.optim.Adam(net.parameters(), lr=0.01)
    return net, optimizer, poptorch.trainingModel(net, opts, optimizer)


@pytest.mark.parametrize("off_chip", [False, True], ids=["on_chip", "streaming_memory"])
def test_a_failing_step_puts_weights_state_and_step_back(step_fails_after_running, off_chip):
    net, optimizer, model = _model(off_chip)
    model(*_data(0))
    before = [p.detach().clone() for p in net.parameters()]
    state = optimizer.state_dict()["state"]
    engine = model._impl.engine
    with step_fails_after_running(engine):
        model(*_data(1))
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), before, strict=True))
    after = optimizer.state_dict()["state"]
    for k, v in state.items():
        for name, value in v.items():
            assert np.array_equal(np.asarray(after[k][name]), np.asarray(value)), (k, name)
    model(*_data(1))  # trains on from the restored state, as a model that never failed
    ref_net, _, ref = _model(off_chip)
    ref(*_data(0))
    ref(*_data(1))
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), ref_net.parameters(), strict=True))
