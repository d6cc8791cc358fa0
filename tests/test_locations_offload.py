"""Weights and activations in Streaming Memory (PopTorch's ``setWeightLocation`` /
``setActivationLocation(TensorLocationSettings().useOnChipStorage(False))``).

Oracles: eager PyTorch trained on the same batches (weights), the on-chip run of the same model
(memory and cycles move, values do not), and bytes and copy counts worked out by hand from the
layer sizes and PopART's rule (one load per weight and context that reads it, one store after its
update; an activation stored once after the forward and loaded once before its backward reader).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

import softipu as sp
import softipu.poptorch as poptorch
from _torch_models import TanhMLP
from softipu.frontends.errors import FrontendError

STEPS = 2


Net = TanhMLP


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


def _sharded() -> poptorch.TensorLocationSettings:
    return poptorch.TensorLocationSettings().useReplicatedTensorSharding(True) \
        .minElementsForReplicatedTensorSharding(8)


def _train(cls, weights: Any = False, activations: bool = False, batch: int = 4, ga: int = 1,
           replicas: int = 1):
    """Trained STEPS steps with Adam through PopTorch's API, beside eager torch on the same
    (effective) batches; ``weights``: True (off chip) or the weights' TensorLocationSettings."""
    torch.manual_seed(0)
    module = cls()
    eager = copy.deepcopy(module)
    opts = poptorch.Options().setTarget(sp.targets.ipu_model(tiles=4, bytes_per_tile=256 * 1024))
    opts.Training.gradientAccumulation(ga)
    opts.replicationFactor(replicas)
    if weights:
        opts.TensorLocations.setWeightLocation(_off() if weights is True else weights)
    if activations:
        opts.TensorLocations.setActivationLocation(_off())
    executor = poptorch.trainingModel(module, opts, torch.optim.Adam(module.parameters(), lr=0.01))
    eager_opt = torch.optim.Adam(eager.parameters(), lr=0.01)
    for i in range(STEPS):
        g = torch.Generator().manual_seed(i)
        n = batch * ga * replicas
        x, y = torch.randn(n, 8, generator=g), torch.randint(0, 3, (n,), generator=g)
        executor(x, y)
        eager_opt.zero_grad()
        eager(x, y)[1].backward()
        eager_opt.step()
    for (name, p), q in zip(module.named_parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-6, msg=name)
    return executor._impl


def _remote_copies(model) -> int:
    return _count(model, "RemoteCopy")


def _count(model, fragment: str) -> int:
    return sum(int(s["count"]) for s in model.report.steps if fragment in str(s["name"]))


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
    # sharded activations (kept whole, with a warning): tests/test_sharding_coupled.py
    opts = poptorch.Options().setTarget(sp.targets.ipu_model(tiles=4))
    opts.TensorLocations.setWeightLocation(_sharded())
    with pytest.raises(FrontendError, match="sharding of the weights needs replicas"):
        poptorch.trainingModel(module, opts, torch.optim.SGD(module.parameters(), lr=0.1)).compile(x, y)
    opts = poptorch.Options().setTarget(sp.targets.ipu_model(tiles=4, bytes_per_tile=256 * 1024))
    opts.TensorLocations.setWeightLocation(_off())
    model = poptorch.trainingModel(module, opts, torch.optim.SGD(module.parameters(), lr=0.1))
    with pytest.raises(FrontendError, match="weights live off chip"):
        model.compileAndExport(str(tmp_path / "m"), x, y, export_model=False)


SIZES = {"fc1.weight": 240, "fc1.bias": 30, "fc2.weight": 90, "fc2.bias": 3}


@pytest.mark.parametrize("replicas", [2, 4])
def test_sharded_weights_train_as_eager_and_keep_a_fragment_per_replica(replicas):
    model = _train(Net, weights=_sharded(), replicas=replicas)  # values vs eager on the effective batch
    offload = model.lowered.offload
    # Each weight of >= 8 elements: ceil(n / R) elements per replica, the weight's only home; the
    # optimizer state of a sharded weight is sharded alike (its update runs on the fragment).
    for name, n in SIZES.items():
        fragment = offload.fragments.get(name)
        assert (fragment.shape if fragment is not None else None) == \
            ((math.ceil(n / replicas),) if n >= 8 else None), name
        for (param, _), var in model.lowered.state.items():
            if param == name and n >= 8:
                assert var.shape == (math.ceil(n / replicas),)
    # The whole weights are transient now (gathered per use), not a role's always-live bytes.
    on_chip = sum(math.ceil(n / replicas) if n >= 8 else n for n in SIZES.values()) * 4
    assert on_chip <= model.summary()["memory"]["weights"] < on_chip + 64  # tile alignment
    assert model.summary()["locations"]["weights"]["sharded_over"] == replicas
    # All-gathers in the forward (every sharded weight) and backward (fc2.weight only), the
    # gradients reduce-scattered, and no all-gather after the update (the fragment is the home).
    assert _count(model, "fwd/all_gather/fc1.weight") > 0 and _count(model, "bwd/all_gather/fc2.weight") > 0
    assert _count(model, "bwd/all_gather/fc1.weight") == 0
    assert _count(model, "upd/reduce_scatter/fc1.weight") > 0 and _count(model, "upd/all_gather") == 0


def test_sharded_weights_equal_unsharded_replicated_and_can_live_off_chip():
    plain = _train(Net, replicas=2)
    both = _train(Net, weights=_sharded().useOnChipStorage(False), replicas=2)  # fragments in Streaming Memory
    for name in SIZES:  # the host reads the fragments put together
        torch.testing.assert_close(torch.from_numpy(np.asarray(_weight(both, name))),
                                   torch.from_numpy(np.asarray(_weight(plain, name))), rtol=0, atol=1e-6)
    loc = both.summary()["locations"]["weights"]
    assert loc["where"] == "streaming_memory"
    # fragments of the weights of >= 8 elements; fc2.bias (3) whole, off chip too (>= 2 elements)
    assert loc["streaming_bytes_per_replica"] == sum(math.ceil(n / 2) if n >= 8 else n for n in SIZES.values()) * 4
    assert _remote_copies(both) > 0


def _weight(model, name):
    from softipu.frontends.torch.training.offload import read_weight

    return read_weight(model.engine, model.lowered, name)[0]
