"""poptorch.trainingModel / softipu.torch.training_model: the executor's API, weights in both places,
setOptimizer, output modes, the cost split and the bad-input errors."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

import softipu as sp
import softipu.poptorch as poptorch
import softipu.torch as st
from softipu.errors import SoftIPUError

CHIP = sp.targets.ipu_model(tiles=16, bytes_per_tile=256 * 1024)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 12), nn.Linear(12, 3)

    def forward(self, x, y):
        out = self.fc2(torch.relu(self.fc1(x)))
        return out, F.cross_entropy(out, y)


def data(b: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 6, generator=g), torch.randint(0, 3, (b,), generator=g)


def opts() -> poptorch.Options:
    return poptorch.Options().setTarget(CHIP)


def eager_sgd(module: nn.Module, batches, lr: float) -> None:
    opt = torch.optim.SGD(module.parameters(), lr=lr)
    for x, y in batches:
        opt.zero_grad()
        module(x, y)[1].backward()
        opt.step()


def close(a: nn.Module, b: nn.Module, tol: float = 1e-5) -> bool:
    return all(torch.allclose(p, q, rtol=tol, atol=tol) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_training_model_default_optimizer_and_lazy_copy_back():
    torch.manual_seed(0)
    net = Net()
    ref = copy.deepcopy(net)
    model = poptorch.trainingModel(net, opts())  # PopTorch's default: SGD(lr=0.01)
    batches = [data(seed=i) for i in range(3)]
    outs = [model(*b) for b in batches]
    eager_sgd(ref, batches, 0.01)
    assert outs[0][0].shape == (4, 3) and outs[0][1].shape == ()
    assert close(net, ref)  # reading the module's parameters copied the trained weights back
    assert close(model, ref)  # the executor's parameters() are the module's
    sd = model.state_dict()
    assert torch.allclose(sd["fc1.weight"], ref.fc1.weight.detach(), atol=1e-5)


def test_compile_then_call_trains_as_calling_alone():
    torch.manual_seed(0)
    net = Net()
    ref = copy.deepcopy(net)
    model = poptorch.trainingModel(net, opts())
    batch = data()
    model.compile(*batch)  # compiles without running: the weights are untouched
    assert model.isCompiled() and close(net, ref, tol=0)
    model(*batch)
    eager_sgd(ref, [batch], 0.01)
    assert close(net, ref)


def test_inference_model_on_the_same_module_sees_the_trained_weights():
    torch.manual_seed(0)
    net = Net()
    train = poptorch.trainingModel(net, opts(), torch.optim.SGD(net.parameters(), lr=0.5))
    infer = poptorch.inferenceModel(net, opts())
    x, y = data(seed=7)
    before = infer(x, y)[0]
    train(*data())
    after = infer(x, y)[0]  # compiled before training: its weights are refreshed on the next call
    with torch.no_grad():
        expect = net(x, y)[0]
    assert not torch.allclose(before, after)
    assert torch.allclose(after, expect, atol=1e-5)


def test_set_optimizer_changes_the_learning_rate_without_compiling():
    torch.manual_seed(0)
    net = Net()
    model = poptorch.trainingModel(net, opts(), torch.optim.SGD(net.parameters(), lr=0.1))
    model(*data())
    lowered = model._impl.lowered
    model.setOptimizer(torch.optim.SGD(net.parameters(), lr=0.0))
    frozen = [p.detach().clone() for p in net.parameters()]
    model(*data(seed=1))
    assert model._impl.lowered is lowered  # no recompile
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), frozen, strict=True))
    with pytest.raises(SoftIPUError, match="momentum"):
        model.setOptimizer(torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.5))


def test_copy_weights_to_device_after_host_edits():
    torch.manual_seed(0)
    net = Net()
    model = poptorch.trainingModel(net, opts(), torch.optim.SGD(net.parameters(), lr=0.0))
    x, y = data()
    model(x, y)
    with torch.no_grad():
        net.fc2.bias.add_(3.0)
    model.copyWeightsToDevice()
    out = model(x, y)[0]
    with torch.no_grad():
        assert torch.allclose(out, net(x, y)[0], atol=1e-5)


def test_device_iterations_and_output_modes():
    torch.manual_seed(0)
    net = Net()
    ref = copy.deepcopy(net)
    o = opts().deviceIterations(2).outputMode(poptorch.OutputMode.All)
    model = poptorch.trainingModel(net, o, torch.optim.SGD(net.parameters(), lr=0.1))
    x, y = data(8)
    out, loss = model(x, y)
    assert out.shape == (8, 3) and loss.shape == (2,)  # every iteration's outputs
    eager_sgd(ref, [(x[:4], y[:4]), (x[4:], y[4:])], 0.1)
    assert close(net, ref)
    final = poptorch.trainingModel(Net(), opts().deviceIterations(2), None)
    out, loss = final(x, y)  # Final by default for training: the last micro-batch's
    assert out.shape == (4, 3) and loss.shape == ()


def test_summary_splits_memory_and_cycles():
    torch.manual_seed(0)
    net = Net()
    o = opts().logCycleCount(True)
    o.Training.gradientAccumulation(2)
    model = poptorch.trainingModel(net, o, poptorch.optim.Adam(net.parameters(), lr=1e-3))
    model(*data(8))
    s = model.summary()
    weights = sum(p.numel() for p in net.parameters()) * 4
    # Bytes as placed on tiles: each (variable, tile) piece rounds up to the 8-byte alignment.
    slack = 8 * CHIP.num_tiles * len(list(net.parameters()))
    assert weights <= s["memory"]["weights"] <= weights + slack
    assert weights <= s["memory"]["gradients"] <= weights + slack  # one fp32 accumulator per parameter
    assert s["memory"]["optimizer_state"] >= 2 * weights  # Adam's two moments
    assert s["memory"]["activations"] > 0
    per_tile = s["memory_per_tile"]
    assert all(v.shape == (CHIP.num_tiles,) and int(v.sum()) == s["memory"][k] for k, v in per_tile.items())
    # Weights, accumulators and state are always live, the saved activations all live at once
    # when the backward starts: together no more than any tile's peak.
    assert (sum(per_tile.values()) <= model.report.tile_memory).all()
    assert all(s["cycles"][k] > 0 for k in ("forward", "backward", "weight_update"))
    assert model.cycleCount() > 0


def test_a_step_that_does_not_fit_names_what_dominates_its_fullest_tile():
    # Adam's two fp32 moments of a 256x256 layer (512 KiB) on a 4-tile chip of 128 KiB tiles.
    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(256, 256, bias=False)

        def forward(self, x):
            return F.mse_loss(self.fc(x), x)

    torch.manual_seed(0)
    net = Layer()
    chip = sp.targets.ipu_model(tiles=4, bytes_per_tile=128 * 1024)
    o = st.Options(target=chip, engine_options={"debug.allowOutOfMemory": True})
    model = st.training_model(net, torch.optim.Adam(net.parameters(), lr=1e-3), o)
    model(torch.randn(2, 256))
    s = model.summary()
    assert not s["fit"]["fits"] and s["dominant"] == "optimizer_state"
    worst = s["worst_tile"]
    assert worst["by_role"]["optimizer_state"] >= 2 * worst["by_role"]["weights"] > 0  # two moments
    assert worst["bytes"] == worst["other"] + sum(worst["by_role"].values())
    assert "the optimizer state dominates" in s["advice"] and f"fullest tile ({worst['tile']}" in s["advice"]


def test_a_failing_step_leaves_weights_and_state_unchanged(step_fails_after_running):
    torch.manual_seed(0)
    net = Net()
    model = st.training_model(net, torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9),
                              st.Options(target=CHIP))
    model(*data())
    model.copy_weights_to_host()
    before = [p.detach().clone() for p in net.parameters()]
    engine = model.engine
    state = {k: engine.read_tensor(v) for k, v in model.lowered.state.items()}
    with step_fails_after_running(engine):
        model(*data(seed=1))
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), before, strict=True))
    for k, v in model.lowered.state.items():
        assert np.array_equal(engine.read_tensor(v), state[k])


# -- losses as PopTorch finds them -----------------------------------------------------------------------
class TwoLosses(Net):
    def forward(self, x, y):
        out = self.fc2(torch.relu(self.fc1(x)))
        return out, F.cross_entropy(out, y) + F.mse_loss(out, torch.zeros_like(out))


class Folded(Net):
    def forward(self, x, y):
        out = self.fc2(torch.relu(self.fc1(x)))
        return out, poptorch.identity_loss(F.cross_entropy(out, y) + 0.5 * F.mse_loss(out, torch.zeros_like(out)),
                                           reduction="none")


class NoLoss(Net):
    def forward(self, x, y):
        return self.fc2(self.fc1(x))


class CallsBackward(Net):
    def forward(self, x, y):
        loss = F.cross_entropy(self.fc2(self.fc1(x)), y)
        loss.backward()
        return loss


class ReadsItem(Net):
    def forward(self, x, y):
        loss = F.cross_entropy(self.fc2(self.fc1(x)), y)
        return loss * 2 if loss.item() > 1 else loss


def test_identity_loss_folds_the_losses_that_feed_it():
    torch.manual_seed(0)
    net = Folded()
    ref = copy.deepcopy(net)
    model = poptorch.trainingModel(net, opts(), torch.optim.SGD(net.parameters(), lr=0.1))
    x, y = data()
    loss = model(x, y)[1]
    expect = ref(x, y)[1]
    eager_sgd(ref, [(x, y)], 0.1)
    assert torch.allclose(loss, expect.detach(), rtol=1e-5)
    assert close(net, ref)


@pytest.mark.parametrize(("cls", "message"), [
    (NoLoss, "Couldn't find a loss in graph!"),
    (TwoLosses, "Multiple independent losses found .*Wrap final graph loss in poptorch.identity_loss"),
    (CallsBackward, r"calls \.backward\(\).*test_training.py:\d+.*loss.backward\(\)"),
    (ReadsItem, r"test_training.py:\d+.*\.item\(\)"),
])
def test_bad_models_are_explained(cls, message):
    model = poptorch.trainingModel(cls(), opts(), None)
    with pytest.raises(SoftIPUError, match=message):
        model(*data())


def test_bad_optimizers_and_batches_are_explained():
    net = Net()
    with pytest.raises(SoftIPUError, match="not Net's"):
        poptorch.trainingModel(net, opts(), torch.optim.SGD(Net().parameters(), lr=0.1))
    frozen = Net().requires_grad_(False)
    with pytest.raises(SoftIPUError, match="no parameter that requires grad"):
        poptorch.trainingModel(frozen, opts(), torch.optim.SGD(frozen.parameters(), lr=0.1))(*data())
    o = opts()
    o.Training.gradientAccumulation(3)
    with pytest.raises(SoftIPUError, match=r"'x' has batch size 4.*gradientAccumulation \(3\)"):
        poptorch.trainingModel(Net(), o, None)(*data())
    with pytest.raises(SoftIPUError, match="must be 1 for inference"):
        poptorch.inferenceModel(Net(), o)


def test_data_loader_combines_the_batch_for_training():
    o = opts().deviceIterations(2)
    o.Training.gradientAccumulation(3)
    dataset = torch.utils.data.TensorDataset(torch.randn(24, 6), torch.randint(0, 3, (24,)))
    loader = poptorch.DataLoader(o, dataset, batch_size=2)
    x, y = next(iter(loader))
    assert x.shape == (12, 6)
    model = poptorch.trainingModel(Net(), o, None)
    out, loss = model(x, y)
    assert out.shape == (2, 3) and loss.shape == ()


def test_checkpoints_of_model_and_optimizer_state_round_trip():
    torch.manual_seed(0)
    net = Net()
    opt = poptorch.optim.Adam(net.parameters(), lr=1e-2)
    model = poptorch.trainingModel(net, opts(), opt)
    for i in range(2):
        model(*data(seed=i))
    weights, state = copy.deepcopy(net.state_dict()), opt.state_dict()
    assert state["ipu_state"]["step"] == 2 and any(k.startswith("exp_avg") for k in state["ipu_state"])
    expect = model(*data(seed=5))[1]  # the step a restored model must repeat
    fresh = Net()
    fresh.load_state_dict(weights)
    fresh_opt = poptorch.optim.Adam(fresh.parameters(), lr=1e-2)
    fresh_opt.load_state_dict(state)
    restored = poptorch.trainingModel(fresh, opts(), fresh_opt)
    assert torch.equal(restored(*data(seed=5))[1], expect)
    assert close(fresh, net, tol=1e-6)  # the same update: Adam's moments and step came back


def test_the_trained_module_pickles_and_copies_as_its_own_class(tmp_path):
    torch.manual_seed(0)
    net = Net()
    model = poptorch.trainingModel(net, opts(), torch.optim.SGD(net.parameters(), lr=0.5))
    model(*data())
    snapshot = copy.deepcopy(net)  # a plain Net with the trained weights
    torch.save(net, tmp_path / "net.pt")
    loaded = torch.load(tmp_path / "net.pt", weights_only=False)
    assert type(snapshot) is Net and type(loaded) is Net
    assert close(snapshot, net, tol=0) and close(loaded, net, tol=0)


# -- floating-point exceptions name the line of forward ------------------------------------------------------
class Overflows(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(4))

    def forward(self, x, t):
        y = torch.exp(x * self.w * 1000)  # overflows float32 for x > 0.089
        r = torch.sqrt(y - 1)  # d/dy at y = 1 divides by zero in the backward
        return F.mse_loss(r, t)


@pytest.mark.parametrize(("x", "line", "phase"), [(1.0, 1, "fwd/"), (0.0, 2, "bwd/")])
def test_a_floating_point_trap_names_the_line_of_forward(x, line, phase):
    o = opts()
    o.Precision.enableFloatingPointExceptions(True)
    model = poptorch.trainingModel(Overflows(), o)
    model(torch.full((4,), 0.001), torch.zeros(4))  # finite: runs on
    with pytest.raises(sp.CodeletError, match=r"floating-point exception") as info:
        model(torch.full((4,), x), torch.zeros(4))
    message = str(info.value)
    assert f"test_training.py:{Overflows.forward.__code__.co_firstlineno + line}" in message, message
    assert f"compute set '{phase}" in message, message


def test_the_update_fuses_elementwise_chains_with_the_same_values(monkeypatch):
    # Adam's update lowered op by op and as fused maps (training/fuse.py): the same weights bit for
    # bit (each expression node rounds as its op would), in far fewer weight-update compute sets.
    from softipu.frontends.torch.training import lowering

    runs = []
    for fuse in (True, False):
        if not fuse:
            monkeypatch.setattr(lowering, "fusible", lambda *a: False)
        torch.manual_seed(0)
        net = Net()
        model = st.training_model(net, torch.optim.AdamW(net.parameters(), lr=1e-2), st.Options(target=CHIP))
        for i in range(3):
            model(*data(seed=i))
        updates = sum(1 for s in model.report.steps if str(s["name"]).startswith("upd/"))
        runs.append(([p.detach().clone() for p in net.parameters()], updates))
    (fused, n_fused), (plain, n_plain) = runs
    assert all(torch.equal(a, b) for a, b in zip(fused, plain, strict=True))
    assert n_fused * 2 < n_plain


def test_advice_names_a_category_outside_the_roles_when_it_dominates_the_tile():
    from softipu.frontends.torch.training.summary import _advice, _others

    fit = {"fits": False, "tiles_over": 3, "worst_tile": 7, "worst_tile_bytes": 900,
           "worst_tile_categories": {"always_live_variables": 300, "not_always_live": 500, "exchange_code": 100}}
    on_worst = {"weights": 100, "gradients": 100, "optimizer_state": 100, "activations": 50}
    others = _others((300, 50), fit)  # the roles' always-live and transient bytes on the tile
    assert others == {"not_always_live": 450, "exchange_code": 100}
    advice = _advice({k: 10 * v for k, v in on_worst.items()}, on_worst, others, fit)
    assert "temporary values" in advice and "not_always_live 450 B" in advice and "(7, 900 B)" in advice
    fit["worst_tile_categories"]["not_always_live"] = 60
    advice = _advice(on_worst, on_worst, _others((300, 50), fit), fit)
    assert "the weights dominate" in advice
