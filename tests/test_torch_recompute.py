"""Recomputation (PopART's ``autoRecomputation``, ``poptorch.recomputationCheckpoint``): fewer forward
values kept for the backward, the recomputed ops run again in the backward, the same results.

Oracles: eager PyTorch's SGD step for the values; for memory, the activations kept for the
backward by the plain joint graph versus the recomputing one; for cycles, the backward's
compute sets named ``bwd/recompute/``.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

import softipu as sp
import softipu.popart as popart
import softipu.poptorch as poptorch
import softipu.torch as st
from softipu.frontends.errors import FrontendError
from softipu.frontends.torch.training.recompute import recomputation_mode


class Net(torch.nn.Module):
    """Two blocks (matmul, layer norm, gelu), a checkpoint between them, and a loss."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.ln1 = torch.nn.Linear(8, 32), torch.nn.LayerNorm(32)
        self.fc2, self.ln2 = torch.nn.Linear(32, 32), torch.nn.LayerNorm(32)
        self.head = torch.nn.Linear(32, 3)

    def forward(self, x, y):
        h = F.gelu(self.ln1(self.fc1(x)))
        h = poptorch.recomputationCheckpoint(h)
        h = torch.tanh(self.ln2(self.fc2(h))) * 2.0
        out = self.head(h)
        return out, F.cross_entropy(out, y)


def _data(seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(16, 8, generator=g), torch.randint(0, 3, (16,), generator=g)


def _train(mode: str, steps: int = 2, poptorch_options: bool = False):
    torch.manual_seed(0)
    module = Net()
    eager = copy.deepcopy(module)
    chip = sp.targets.ipu_model(tiles=8, bytes_per_tile=256 * 1024)
    if poptorch_options:
        opts = poptorch.Options().setTarget(chip)
        opts._Popart.set("autoRecomputation", int(popart.RecomputationType.RecomputeAll))
        model = poptorch.trainingModel(module, opts, poptorch.optim.SGD(module.parameters(), lr=0.1))
    else:
        model = st.training_model(module, torch.optim.SGD(module.parameters(), lr=0.1),
                                  st.Options(target=chip, recomputation=mode))
    eager_opt = torch.optim.SGD(eager.parameters(), lr=0.1)
    losses, ref = [], []
    for i in range(steps):
        x, y = _data(i)
        losses.append(model(x, y)[1])
        eager_opt.zero_grad()
        loss = eager(x, y)[1]
        loss.backward()
        eager_opt.step()
        ref.append(loss.detach())
    return module, eager, model, losses, ref


def _recompute_cycles(model) -> int:
    return sum(int(s["cycles"]) * int(s["count"]) for s in model.report.steps
               if "bwd/recompute/" in str(s["name"]))


@pytest.fixture(scope="module")
def runs():
    return {mode: _train(mode) for mode in ("none", "standard", "norm_only", "recompute_all")}


def test_every_mode_gives_the_weights_and_losses_of_eager_torch(runs):
    base = dict(runs["none"][0].named_parameters())
    for mode, (module, eager, _, losses, ref) in runs.items():
        got = dict(module.named_parameters())
        for name, p in eager.named_parameters():
            torch.testing.assert_close(got[name].detach(), p.detach(), rtol=1e-5, atol=1e-6, msg=mode)
            # The same ops on the same values as without recomputation.
            torch.testing.assert_close(got[name].detach(), base[name].detach(), rtol=0, atol=1e-6, msg=mode)
        for a, b in zip(losses, ref, strict=True):
            torch.testing.assert_close(torch.as_tensor(a), b, rtol=1e-5, atol=1e-6)


def test_recompute_all_keeps_only_checkpoints_and_runs_the_forward_again(runs):
    none, every = runs["none"][2], runs["recompute_all"][2]
    s_none, s_all = none.summary(), every.summary()
    # Kept for the backward without recomputation, by hand: fc1 out, ln1 out + mean + rstd, gelu
    # out, the checkpoint's, fc2 out, ln2 out + stats, tanh out, the head's input... at least the
    # seven [16, 32] values (7 x 2 KiB); with RecomputeAll only the checkpoint ([16, 32] fp32,
    # 2 KiB), at most a view of the [16, 3] log-probabilities (torch's partitioner keeps views it
    # may recompute when that is cheaper) and scalars (the loss) remain.
    assert none.lowered.saved_bytes >= 7 * 16 * 32 * 4
    assert every.lowered.saved_bytes <= 16 * 32 * 4 + 16 * 3 * 4 + 64
    assert s_all["memory"]["activations"] < s_none["memory"]["activations"]
    assert _recompute_cycles(none) == 0 < _recompute_cycles(every)
    assert s_all["cycles"]["backward"] > s_none["cycles"]["backward"]


def test_standard_and_norm_only_keep_less_than_none(runs):
    none = runs["none"][2].lowered.saved_bytes
    for mode in ("standard", "norm_only"):
        model = runs[mode][2]
        assert model.lowered.saved_bytes < none, mode
    # NormOnly recomputes the layer norms (and the gelu / tanh reading them): their outputs and
    # statistics are not kept, matmul outputs are.
    assert _recompute_cycles(runs["norm_only"][2]) > 0


def test_poptorch_auto_recomputation_option_and_checkpoint_in_eager():
    module, eager, model, losses, ref = _train("", steps=1, poptorch_options=True)
    assert _recompute_cycles(model) > 0
    for (n, p), q in zip(module.named_parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-6, msg=n)
    # Outside a model the checkpoint is an identity whose gradient passes through.
    x = torch.randn(3, requires_grad=True)
    (poptorch.recomputationCheckpoint(x) * 3).sum().backward()
    torch.testing.assert_close(x.grad, torch.full((3,), 3.0))
    a, b = poptorch.recomputationCheckpoint(x, x * 2)
    torch.testing.assert_close(b, x * 2)


def test_bad_recomputation_values_are_named():
    assert recomputation_mode(4) == "recompute_all" and recomputation_mode("standard") == "standard"
    with pytest.raises(FrontendError, match="autoRecomputation must be a RecomputationType"):
        poptorch.Options()._Popart.set("autoRecomputation", 7)
    with pytest.raises(sp.errors.OptionError, match="recomputation must be"):
        st.Options(recomputation="all")


def test_inference_models_say_recomputation_is_for_training():
    module = torch.nn.Linear(4, 2)
    opts = st.Options(target=sp.targets.ipu_model(tiles=4), recomputation="recompute_all")
    with pytest.warns(st.UnusedOptionWarning, match="recomputation .for training"):
        model = st.inference_model(module, opts)
    x = torch.randn(3, 4)
    torch.testing.assert_close(model(x), module(x))


class TwoBlocks(torch.nn.Module):
    def __init__(self, checkpoint: bool = True) -> None:
        super().__init__()
        self.fc1, self.ln, self.fc2 = torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 3)
        self.checkpoint = checkpoint

    def forward(self, x, y):
        h = torch.tanh(self.ln(self.fc1(x)))
        with poptorch.Block(ipu_id=1):
            out = self.fc2(poptorch.recomputationCheckpoint(h) if self.checkpoint else h)
        return out, F.cross_entropy(out, y)


def test_recomputation_and_off_chip_state_under_sharded_execution_over_two_ipus():
    torch.manual_seed(0)
    module = TwoBlocks()
    eager = copy.deepcopy(module)
    opts = poptorch.Options().setTarget(sp.targets.ipu_model(tiles=8, bytes_per_tile=256 * 1024))
    opts.setExecutionStrategy(poptorch.ShardedExecution())
    opts._Popart.set("autoRecomputation", int(popart.RecomputationType.RecomputeAll))
    opts.TensorLocations.setOptimizerLocation(poptorch.TensorLocationSettings().useOnChipStorage(False))
    model = poptorch.trainingModel(module, opts, torch.optim.Adam(module.parameters(), lr=0.01))
    eager_opt = torch.optim.Adam(eager.parameters(), lr=0.01)
    for i in range(2):
        x, y = _data(i)
        model(x, y)
        eager_opt.zero_grad()
        eager(x, y)[1].backward()
        eager_opt.step()
    for (name, p), q in zip(module.named_parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-6, msg=name)
    # Kept for the backward: the checkpoint ([16, 16] fp32) and at most the loss's scalars and a view
    # of the [16, 3] log-probabilities.
    assert 16 * 16 * 4 <= model._impl.lowered.saved_bytes <= 16 * 16 * 4 + 16 * 3 * 4 + 64
    assert model.summary()["locations"]["optimizer_state"]["where"] == "streaming_memory"


def test_pipeline_mode_keeps_each_stage_input():
    # No checkpoint: RecomputeAll keeps nothing of the [16, 16] stage input h, Pipeline keeps it
    # (each stage recomputes from its inputs) and still recomputes the layer norm before it.
    from softipu.frontends.torch.training.joint import joint_graph  # noqa: PLC0415
    from softipu.frontends.torch.training.recompute import recompute, recomputed_nodes  # noqa: PLC0415

    x, y = _data(0)
    joint = joint_graph(TwoBlocks(checkpoint=False), (x, y), {})

    def kept(j):
        return {n.name for n in j.forward_nodes if n.op == "call_function"
                and any(u not in j.forward_nodes for u in n.users) and tuple(n.meta["val"].shape) == (16, 16)}

    every, staged = recompute(joint, "recompute_all"), recompute(joint, "pipeline")
    assert kept(every) == set() and len(kept(staged)) == 1
    assert any(n.target is torch.ops.aten.native_layer_norm.default for n in recomputed_nodes(staged))
