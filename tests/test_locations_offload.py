"""Weights and activations in Streaming Memory (PopTorch's ``setWeightLocation`` /
``setActivationLocation(TensorLocationSettings().useOnChipStorage(False))``).

Oracles: eager PyTorch trained on the same batches (weights), the on-chip run of the same model
(memory and cycles move, values do not), and bytes and copy counts worked out by hand from the
layer sizes and PopART's rule (one load per weight and context that reads it, one store after its
update; an activation stored once after the forward and loaded once before its backward reader).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

import softipu as sp
import softipu.poptorch as poptorch
from softipu.frontends.errors import FrontendError

STEPS = 2


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(8, 30), torch.nn.Linear(30, 3)

    def forward(self, x, y):
        out = self.fc2(torch.tanh(self.fc1(x)))
        return out, F.cross_entropy(out, y)


class Deep(torch.nn.Module):
    """Four ReLU layers of width 16: the activations the backward reads dominate."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = torch.nn.Linear(8, 16)
        self.layers = torch.nn.ModuleList(torch.nn.Linear(16, 16) for _ in range(3))
        self.out = torch.nn.Linear(16, 3)

    def forward(self, x, y):
        h = torch.relu(self.inp(x))
        for layer in self.layers:
            h = torch.relu(layer(h))
        o = self.out(h)
        return o, F.cross_entropy(o, y)


def _off() -> poptorch.TensorLocationSettings:
    return poptorch.TensorLocationSettings().useOnChipStorage(False)


def _train(cls, weights: bool = False, activations: bool = False, batch: int = 4, ga: int = 1):
    """Trained STEPS steps with Adam through PopTorch's API, beside eager torch on the same batches."""
    torch.manual_seed(0)
    module = cls()
    eager = copy.deepcopy(module)
    opts = poptorch.Options().setTarget(sp.targets.ipu_model(tiles=4, bytes_per_tile=256 * 1024))
    opts.Training.gradientAccumulation(ga)
    if weights:
        opts.TensorLocations.setWeightLocation(_off())
    if activations:
        opts.TensorLocations.setActivationLocation(_off())
    executor = poptorch.trainingModel(module, opts, torch.optim.Adam(module.parameters(), lr=0.01))
    eager_opt = torch.optim.Adam(eager.parameters(), lr=0.01)
    for i in range(STEPS):
        g = torch.Generator().manual_seed(i)
        x, y = torch.randn(batch * ga, 8, generator=g), torch.randint(0, 3, (batch * ga,), generator=g)
        executor(x, y)
        eager_opt.zero_grad()
        eager(x, y)[1].backward()
        eager_opt.step()
    for (name, p), q in zip(module.named_parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-6, msg=name)
    return executor._impl


def _remote_copies(model) -> int:
    return sum(int(s["count"]) for s in model.report.steps if "RemoteCopy" in str(s["name"]))


@pytest.fixture(scope="module")
def net_on_chip():
    return _train(Net)


def test_weights_off_chip_train_as_eager_and_leave_tile_memory(net_on_chip):
    model, base = _train(Net, weights=True), net_on_chip
    s, s0 = model.summary(), base.summary()
    weights = (8 * 30 + 30 + 30 * 3 + 3) * 4  # 363 fp32 parameters
    loc = s["locations"]["weights"]
    assert loc["where"] == "streaming_memory" and loc["streaming_bytes_per_replica"] == weights
    assert s["memory"]["weights"] == 0 and s0["memory"]["weights"] >= weights
    # No longer always live: on chip a weight lives only from its load to its last reader.
    cats, cats0 = model.report.memory_by_category, base.report.memory_by_category
    assert cats0["always_live_variables"] - cats["always_live_variables"] >= weights
    # Per step: a forward load of each of the 4 parameters, a backward load of fc2.weight only
    # (fc1's input needs no gradient; biases are not read by the backward), a load and a store
    # around each update: 4 + 1 + 8 = 13.
    assert _remote_copies(model) == STEPS * 13 and _remote_copies(base) == 0
    assert model.cycle_count > base.cycle_count


def test_weights_off_chip_with_gradient_accumulation():
    model = _train(Net, weights=True, ga=2)
    # The forward and backward loads repeat per micro-batch: 2 x (4 + 1) + 8 per step.
    assert _remote_copies(model) == STEPS * (2 * 5 + 8)


def test_activations_off_chip_train_as_eager_and_lower_the_peak():
    batch = 64
    model, base = _train(Deep, activations=True, batch=batch), _train(Deep, batch=batch)
    s, s0 = model.summary(), base.summary()
    # Stored: the four ReLU outputs (64 x 16 fp32) and the log-softmax the loss's backward reads
    # (64 x 3); each once per step, loaded once before its backward reader.
    stored = 4 * batch * 16 * 4 + batch * 3 * 4
    assert s["locations"]["activations"]["streaming_bytes_per_replica"] == stored
    assert s0["memory"]["activations"] - s["memory"]["activations"] >= stored
    assert _remote_copies(model) == STEPS * 2 * 5
    # The backward no longer holds every layer's activation at once: the transient peak falls.
    peak, peak0 = (m.report.memory_by_category["not_always_live"] for m in (model, base))
    assert peak0 - peak >= batch * 16 * 4  # at least one layer's ReLU output
    assert model.cycle_count > base.cycle_count


def test_weights_and_activations_off_chip_together():
    model = _train(Deep, weights=True, activations=True, batch=8)
    loc = model.summary()["locations"]
    assert loc["weights"]["where"] == "streaming_memory"
    assert loc["activations"]["streaming_bytes_per_replica"] == 4 * 8 * 16 * 4 + 8 * 3 * 4


def test_sharded_weights_are_refused_and_off_chip_weights_not_exported(tmp_path):
    module = Net()
    x, y = torch.randn(4, 8), torch.randint(0, 3, (4,))
    opts = poptorch.Options().setTarget(sp.targets.ipu_model(tiles=4)).replicationFactor(2)
    opts.TensorLocations.setActivationLocation(poptorch.TensorLocationSettings().useReplicatedTensorSharding(True))
    with pytest.raises(FrontendError, match="setActivationLocation.*not supported"):
        poptorch.trainingModel(module, opts, torch.optim.SGD(module.parameters(), lr=0.1)).compile(
            torch.randn(8, 8), torch.randint(0, 3, (8,)))
    opts = poptorch.Options().setTarget(sp.targets.ipu_model(tiles=4, bytes_per_tile=256 * 1024))
    opts.TensorLocations.setWeightLocation(_off())
    model = poptorch.trainingModel(module, opts, torch.optim.SGD(module.parameters(), lr=0.1))
    with pytest.raises(FrontendError, match="weights live off chip"):
        model.compileAndExport(str(tmp_path / "m"), x, y, export_model=False)
