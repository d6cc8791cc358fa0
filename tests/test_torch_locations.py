"""Tensor locations (PopTorch's ``TensorLocations``): the optimizer state off chip (Streaming Memory)
and sharded over replicas (replicated tensor sharding), alone and together.

Oracles: eager PyTorch's Adam on the effective batch (weights and the optimizer's own state
tensors), the unplaced run's weights, and bytes per replica worked out by hand from the
parameter sizes (PopART's rule: ceil(n / R) elements per replica, zero-padded).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

import softipu as sp
import softipu.poptorch as poptorch
import softipu.torch as st
from _torch_models import TanhMLP
from softipu.frontends.errors import FrontendError
from softipu.frontends.torch.training.locations import read_state

STEPS = 2
# fc1: 8x30 weight (240) + 30 bias; fc2: 30x3 weight (90) + 3 bias. 30 over 4 replicas: ceil(30 / 4)
# = 8 elements each, zero-padded.
SIZES = {"fc1.weight": 240, "fc1.bias": 30, "fc2.weight": 90, "fc2.bias": 3}


Net = TanhMLP


def _chip():
    return sp.targets.ipu_model(tiles=8, bytes_per_tile=256 * 1024)


def _train(replicas: int, optimizer_location=None):
    """A model (PopTorch's API) with Adam, its optimizer location set with TensorLocationSettings,
    trained STEPS steps; and eager torch trained on the same (effective) batches."""
    torch.manual_seed(0)
    module = Net()
    eager = copy.deepcopy(module)
    opts = poptorch.Options().setTarget(_chip()).replicationFactor(replicas)
    if optimizer_location is not None:
        opts.TensorLocations.setOptimizerLocation(optimizer_location)
    executor = poptorch.trainingModel(module, opts, torch.optim.Adam(module.parameters(), lr=0.01))
    eager_opt = torch.optim.Adam(eager.parameters(), lr=0.01)
    model = executor._impl  # softipu's TrainingModel under PopTorch's executor: engine, lowered...
    for i in range(STEPS):
        g = torch.Generator().manual_seed(i)
        x, y = torch.randn(4 * replicas, 8, generator=g), torch.randint(0, 3, (4 * replicas,), generator=g)
        executor(x, y)
        eager_opt.zero_grad()
        eager(x, y)[1].backward()
        eager_opt.step()
    return module, eager, eager_opt, model


def _check_against_eager(module, eager, eager_opt, model):
    got = dict(module.named_parameters())
    for name, p in eager.named_parameters():
        torch.testing.assert_close(got[name].detach(), p.detach(), rtol=1e-5, atol=1e-6, msg=name)
        for slot in ("exp_avg", "exp_avg_sq"):  # the state, read back from where it lives
            value = read_state(model.engine, model.lowered, (name, slot))
            torch.testing.assert_close(torch.from_numpy(value), eager_opt.state[p][slot], rtol=1e-5, atol=1e-7)


def _state_bytes(model) -> int:
    """Bytes per replica of the Adam moments' on-chip variables."""
    return sum(int(v.numel) * v.dtype.itemsize for v in model.lowered.state.values())


def _cycles_named(model, fragment: str) -> int:
    return sum(int(s["cycles"]) * int(s["count"]) for s in model.report.steps if fragment in str(s["name"]))


def _sharded(min_elements: int = 8):
    return poptorch.TensorLocationSettings().useReplicatedTensorSharding(True) \
        .minElementsForReplicatedTensorSharding(min_elements)


@pytest.fixture(scope="module")
def on_chip():
    return _train(1)


def test_optimizer_state_off_chip_same_values_less_on_chip_more_cycles(on_chip):
    run = _train(1, poptorch.TensorLocationSettings().useOnChipStorage(False))
    _check_against_eager(*run)
    model, base = run[3], on_chip[3]
    s, s0 = model.summary(), base.summary()
    # Two fp32 moments of every parameter: 2 x 363 x 4 B in Streaming Memory, none on chip but the
    # scalars (lr, betas... and the step), the same as on the unplaced model.
    moments = 2 * sum(SIZES.values()) * 4
    assert s["locations"]["optimizer_state"]["streaming_bytes_per_replica"] == moments
    assert s["locations"]["optimizer_state"]["where"] == "streaming_memory"
    assert s0["memory"]["optimizer_state"] - s["memory"]["optimizer_state"] >= moments
    assert s0["locations"]["optimizer_state"]["streaming_bytes_per_replica"] == 0
    # Loading and storing them: RemoteCopy steps, priced on the Streaming Memory path.
    assert _cycles_named(model, "RemoteCopy") > 0 == _cycles_named(base, "RemoteCopy")
    assert model.cycle_count > base.cycle_count


@pytest.mark.parametrize("replicas", [2, 4])
def test_sharded_optimizer_state_equals_eager_and_unsharded(replicas):
    run = _train(replicas, _sharded())
    _check_against_eager(*run)
    model = run[3]
    if replicas == 2:  # and the weights of the same replicated model with its state unsharded
        plain = _train(replicas)[0]
        for (name, p), q in zip(run[0].named_parameters(), plain.parameters(), strict=True):
            torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=1e-6, msg=name)
    # ceil(n / R) elements per replica for every parameter of >= 8 elements; fc2.bias (3) whole.
    for (name, slot), var in model.lowered.state.items():
        n = SIZES[name]
        assert var.shape == ((math.ceil(n / replicas),) if n >= 8 else (n,)), (name, slot)
    per_replica = 2 * 4 * sum(math.ceil(n / replicas) if n >= 8 else n for n in SIZES.values())
    assert _state_bytes(model) == per_replica
    loc = model.summary()["locations"]["optimizer_state"]
    assert loc["sharded_over"] == replicas and loc["where"] == "on_chip"
    # The gradient's all-reduce became a reduce-scatter; an all-gather rebuilds each weight.
    assert _cycles_named(model, "upd/reduce_scatter/fc1.weight") > 0
    assert _cycles_named(model, "upd/all_gather/fc1.weight") > 0
    assert _cycles_named(model, "upd/all_reduce/fc1.weight") == 0
    if replicas == 4:  # fc1.bias's 30 moments in 4 x 8: fragments of the flattened tensor, padded at
        # its end (GCL's reduce-scatter layout: 8, 8, 8, 6 values; PopART's balanced reorder spreads
        # the padding, 8, 8, 7, 7: the same bytes per replica)
        raw = np.asarray(model.engine.read_tensor(model.lowered.state[("fc1.bias", "exp_avg")]))
        assert raw.shape == (4, 8) and np.all(raw.reshape(-1)[30:] == 0) and np.all(raw.reshape(-1)[:30] != 0)


def test_sharded_and_off_chip_together_like_bert():
    # Graphcore's BERT configurations: the optimizer state off chip and sharded over the replicas.
    # Loading through I/O tiles is accepted and named as not modeled (no overlap of I/O and compute).
    with pytest.warns(st.UnusedOptionWarning, match="useIOTilesToLoad"):
        run = _train(4, _sharded().useOnChipStorage(False).useIOTilesToLoad(True))
    _check_against_eager(*run)
    loc = run[3].summary()["locations"]["optimizer_state"]
    assert loc["where"] == "streaming_memory" and loc["sharded_over"] == 4
    assert loc["streaming_bytes_per_replica"] == 2 * 4 * (60 + 8 + 23 + 3)
    assert loc["slots"]["fc1.weight/exp_avg"] == {"where": "streaming_memory", "sharded": True,
                                                 "bytes_per_replica": 60 * 4}


def test_accumulators_off_chip_with_gradient_accumulation():
    torch.manual_seed(0)
    module = Net()
    eager = copy.deepcopy(module)
    opts = poptorch.Options().setTarget(_chip())
    opts.Training.gradientAccumulation(2)
    opts.TensorLocations.setAccumulatorLocation(poptorch.TensorLocationSettings().useOnChipStorage(False))
    executor = poptorch.trainingModel(module, opts, torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9))
    eager_opt = torch.optim.SGD(eager.parameters(), lr=0.1, momentum=0.9)
    for i in range(STEPS):
        g = torch.Generator().manual_seed(i)
        x, y = torch.randn(8, 8, generator=g), torch.randint(0, 3, (8,), generator=g)
        executor(x, y)
        eager_opt.zero_grad()
        eager(x, y)[1].backward()  # the mean over both micro-batches
        eager_opt.step()
    for (name, p), q in zip(module.named_parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-6, msg=name)
    model = executor._impl
    loc = model.summary()["locations"]["gradients"]
    # One fp32 accumulator per parameter in Streaming Memory: 363 x 4 B.
    assert loc["where"] == "streaming_memory" and loc["streaming_bytes_per_replica"] == sum(SIZES.values()) * 4
    # Per step and accumulator: a load and a store per micro-batch, a store after zeroing, a load
    # before the update: 2 x 2 + 2 = 6 copies.
    copies = sum(int(s["count"]) for s in model.report.steps if "RemoteCopy" in str(s["name"]))
    assert copies == STEPS * len(SIZES) * 6


def test_bad_locations_are_named():
    module = Net()
    x, y = torch.randn(4, 8), torch.randint(0, 3, (4,))

    def compile_with(opts, optimizer=None):
        opt = optimizer or torch.optim.Adam(module.parameters(), lr=0.01)
        poptorch.trainingModel(module, opts.setTarget(_chip()), opt).compile(x, y)

    opts = poptorch.Options()
    opts.TensorLocations.setOptimizerLocation(_sharded())
    with pytest.raises(FrontendError, match="needs replicas.*replicationFactor"):
        compile_with(opts)
    # sharded activations, accumulators, LAMB, clipping, loss scaling: tests/test_sharding_coupled.py
    with pytest.raises(FrontendError, match="TensorLocationSettings"):
        poptorch.Options().TensorLocations.setOptimizerLocation({"useOnChipStorage": False})
    with pytest.raises(FrontendError, match="must be a bool"):
        compile_with_options = st.Options(target=_chip(), tensor_locations={"optimizer": {"on_chip": "no"}})
        st.training_model(module, torch.optim.Adam(module.parameters()), compile_with_options).compile(x, y)
    with pytest.raises(sp.errors.OptionError, match="tensor_locations must map"):
        st.Options(tensor_locations={"weights": {}})


def test_export_of_an_off_chip_state_is_refused(tmp_path):
    module = Net()
    opts = poptorch.Options().setTarget(_chip())
    opts.TensorLocations.setOptimizerLocation(poptorch.TensorLocationSettings().useOnChipStorage(False))
    model = poptorch.trainingModel(module, opts, torch.optim.Adam(module.parameters(), lr=0.01))
    with pytest.raises(FrontendError, match="off chip or sharded"):
        model.compileAndExport(str(tmp_path / "m"), torch.randn(4, 8), torch.randint(0, 3, (4,)),
                               export_model=False)
