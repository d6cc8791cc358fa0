"""PopTorch's executor state beyond weights, as PopTorch documents it: ``getTensorNames``,
``Options.anchorTensor`` / ``getAnchoredTensor``, ``rng_state`` and ``Options.broadcastBuffers``.
Values are compared with eager torch on the same module and inputs."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch

import softipu as sp
import softipu.poptorch as poptorch
import softipu.torch as st

SMALL = sp.targets.ipu_model(tiles=8, bytes_per_tile=512 * 1024)


@pytest.fixture(autouse=True)
def quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", st.UnusedOptionWarning)
        yield


def opts() -> poptorch.Options:
    return poptorch.Options().setTarget(SMALL)


class Hidden(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        return torch.relu(self.fc(x)) * 2


def _relu_name(x: torch.Tensor) -> str:
    probe = poptorch.inferenceModel(Hidden(), opts())
    probe.compile(x)
    names = probe.getTensorNames()
    assert all(isinstance(n, str) for n in names) and {"x", "p_fc_weight", "p_fc_bias"} <= set(names)
    return next(n for n in names if n.startswith("relu"))


def test_get_tensor_names_needs_a_compiled_model():
    model = poptorch.inferenceModel(Hidden(), opts())
    with pytest.raises(poptorch.Error, match="not been compiled"):
        model.getTensorNames()


def test_anchored_tensors_hold_the_values_eager_torch_computes():
    x = torch.randn(2, 4)
    o = opts().anchorTensor("hidden", _relu_name(x)).anchorTensor("w", "p_fc_weight")
    assert o.anchored_tensors["w"] == "p_fc_weight"
    module = Hidden()
    model = poptorch.inferenceModel(module, o)
    with pytest.raises(poptorch.Error, match="no tensor with name 'hidden'"):
        model.getAnchoredTensor("hidden")
    out = model(x)
    torch.testing.assert_close(model.getAnchoredTensor("hidden"), torch.relu(module.fc(x)).detach())
    torch.testing.assert_close(model.getAnchoredTensor("w"), module.fc.weight.detach())
    torch.testing.assert_close(out, model.getAnchoredTensor("hidden") * 2)


def test_anchors_over_device_iterations_keep_the_last_iteration_with_output_mode_final():
    x = torch.randn(3 * 2, 4)
    name = _relu_name(x[:2])
    module = Hidden()
    model = poptorch.inferenceModel(module, opts().deviceIterations(3).anchorTensor(
        "hidden", name, poptorch.OutputMode.Final))
    model(x)
    torch.testing.assert_close(model.getAnchoredTensor("hidden"), torch.relu(module.fc(x[4:])).detach())
    every = poptorch.inferenceModel(module, opts().deviceIterations(3).anchorTensor("hidden", name))
    every(x)  # inference's default mode is All: PopART's [batchesPerStep, *shape]
    torch.testing.assert_close(every.getAnchoredTensor("hidden"),
                               torch.relu(module.fc(x)).detach().reshape(3, 2, 3))
    with pytest.raises(poptorch.Error, match="no tensor 'reluu'; did you mean 'relu'"):
        poptorch.inferenceModel(Hidden(), opts().anchorTensor("h", "reluu"))(x[:2])


class Noisy(torch.nn.Module):
    def forward(self, x):
        return x + torch.rand(x.shape)


def test_rng_state_read_back_and_set_repeats_the_draws():
    x = torch.zeros(2, 5)
    model = poptorch.inferenceModel(Noisy(), opts().randomSeed(42))
    with pytest.raises(poptorch.Error, match="not been compiled"):
        model.rng_state  # noqa: B018
    first = model(x)
    state = model.rng_state
    assert state[0] == 42 and len(state) == 3 and all(isinstance(v, int) for v in state)
    second, third = model(x), model(x)
    assert not torch.equal(first, second) and not torch.equal(second, third)  # each run draws anew
    assert model.rng_state != state
    model.rng_state = state
    torch.testing.assert_close(model(x), second, rtol=0, atol=0)
    torch.testing.assert_close(model(x), third, rtol=0, atol=0)
    with pytest.raises(poptorch.Error, match="rng_state"):
        model.rng_state = [1, 2]
    # randomSeed: the same seed draws the same numbers in another executor, another seed others.
    same = poptorch.inferenceModel(Noisy(), opts().randomSeed(42))(x)
    other = poptorch.inferenceModel(Noisy(), opts().randomSeed(7))(x)
    torch.testing.assert_close(same, first, rtol=0, atol=0)
    assert not torch.equal(other, first)


class Counter(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("count", torch.zeros(3))

    def forward(self, x):
        self.count += x.sum(0)
        return x + self.count


def test_replicated_buffer_changes_need_broadcast_buffers_false():
    x = torch.arange(12.0).reshape(4, 3)
    model = poptorch.inferenceModel(Counter(), opts().replicationFactor(2))
    with pytest.raises(poptorch.Error, match=r"does not support broadcasting buffers.*broadcastBuffers\(False\)"):
        model(x)
    # broadcastBuffers(False): each replica keeps its own buffer, as two eager copies would.
    module = Counter()
    model = poptorch.inferenceModel(module, opts().replicationFactor(2).broadcastBuffers(False))
    eager = [copy.deepcopy(Counter()) for _ in range(2)]
    for _ in range(2):
        want = torch.cat([eager[r](x[2 * r:2 * r + 2]) for r in range(2)])
        torch.testing.assert_close(model(x), want)
    model.copyWeightsToHost()
    torch.testing.assert_close(module.count, eager[0].count)  # replica 0's


def test_replicated_model_with_constant_buffers_runs_with_broadcast_on():
    class Scaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("scale", torch.full((3,), 2.0))

        def forward(self, x):
            return x * self.scale

    x = torch.randn(4, 3)
    torch.testing.assert_close(poptorch.inferenceModel(Scaled(), opts().replicationFactor(2))(x), x * 2)


def test_num_io_tiles_takes_compute_tiles_away():
    """numIOTiles: an even number from 32 to 192; the IO tiles reduce the tiles available for
    computation (PopTorch's reference). Values stay those of eager torch."""
    chip = sp.targets.ipu_model(tiles=64, bytes_per_tile=512 * 1024)
    for bad in (31, 30, 194, 33):
        with pytest.raises(sp.SoftIPUError, match="even number between 32 and 192"):
            poptorch.Options().TensorLocations.numIOTiles(bad)
    o = poptorch.Options().setTarget(chip)
    o.TensorLocations.numIOTiles(48)
    target = o.toSoftipu().target
    assert (target.tiles_per_ipu, target.num_io_tiles, target.compute_tiles_per_ipu) == (64, 48, 16)
    module = torch.nn.Linear(64, 64)
    x = torch.randn(16, 64)
    model = poptorch.inferenceModel(module, o)
    torch.testing.assert_close(model(x), module(x).detach(), rtol=1e-5, atol=1e-5)
    ex = model._impl.engine.executable
    vertex_tiles = np.concatenate([g.tiles for c in ex.compute_sets.values() for g in c.groups])
    assert vertex_tiles.max() < 16  # the work runs on the 16 compute tiles only ...
    graph = model._impl.graph
    var = next(v for v in graph.variables if v.name.startswith("inputs/"))
    tiles = graph.resolved_mapping(var.dtype).tiles_of(np.arange(var.start, var.start + var.numel))
    assert np.unique(tiles).min() >= 16  # ... and the input lives on the I/O tiles inside the chip
    small = poptorch.Options().setTarget(SMALL)
    small.TensorLocations.numIOTiles(32)
    with pytest.raises(sp.SoftIPUError, match="leaves no compute tiles"):
        small.toSoftipu()
