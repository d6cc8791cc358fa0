"""Two pipeline stages on one IPU (issue 14, P2 item 1).

PopTorch lets ``Stage``s share an ``ipu_id`` (Graphcore's BERT: the embedding and the MLM head, tied
to it, on IPU 0 with the encoder on the other IPUs; ``AutoStage.AutoIncrement``). PopART runs them
in stage order, an IPU's active stages one after the other in a pipeline cycle. Oracles: the same
model on one IPU with the same gradient accumulation and eager PyTorch with the effective batch
(values); the schedule's per-IPU sums and stash depths worked out by hand (cost).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import softipu as sp
import softipu.poptorch as poptorch
from softipu.errors import SoftIPUError

CHIP = sp.targets.ipu_model(tiles=4, bytes_per_tile=256 * 1024)
W = 8


class Tied(torch.nn.Module):
    """emb (IPU 0) -> enc (IPU 1) -> head tied to emb's weight (IPU 0 again)."""

    def __init__(self, blocks: bool) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.emb = torch.nn.Linear(W, W)
        self.enc = torch.nn.Linear(W, W)
        self.bias = torch.nn.Parameter(torch.zeros(W))
        self.blocks = blocks

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(torch.tanh(h), self.emb.weight, self.bias)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.blocks:
            o = self._head(torch.relu(self.enc(torch.relu(self.emb(x)))))
            return o, torch.nn.functional.mse_loss(o, y)
        with poptorch.Block("emb", ipu_id=0):
            h = torch.relu(self.emb(x))
        with poptorch.Block("enc", ipu_id=1):
            h = torch.relu(self.enc(h))
        with poptorch.Block("head", ipu_id=0):
            o = self._head(h)
            loss = torch.nn.functional.mse_loss(o, y)
        return o, loss


def _data(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randn(batch, W, generator=g), torch.randn(batch, W, generator=g)


def _train(blocks: bool, strategy, ga: int = 5, steps: int = 3):
    model = Tied(blocks)
    opts = poptorch.Options().setTarget(CHIP)
    opts.Training.gradientAccumulation(ga)
    if strategy is not None:
        opts.setExecutionStrategy(strategy)
    ipu = poptorch.trainingModel(model, opts, torch.optim.SGD(model.parameters(), lr=0.1))
    x, y = _data(ga)
    losses = [float(ipu(x, y)[1].mean()) for _ in range(steps)]
    return ipu, losses, model


def _eager(ga: int = 5, steps: int = 3) -> torch.nn.Module:
    model = Tied(False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = _data(ga)
    for _ in range(steps):
        opt.zero_grad()
        model(x, y)[1].backward()
        opt.step()
    return model


@pytest.mark.parametrize("strategy", [
    lambda: poptorch.PipelinedExecution(poptorch.AutoStage.AutoIncrement),
    lambda: poptorch.PipelinedExecution(poptorch.Stage("emb").ipu(0), poptorch.Stage("enc").ipu(1),
                                        poptorch.Stage("head").ipu(0)),
], ids=["auto_increment", "explicit_stages"])
def test_head_back_on_ipu0_trains_as_one_ipu_and_eager(strategy):
    piped, piped_losses, a = _train(True, strategy())
    _, single_losses, b = _train(False, None)
    np.testing.assert_allclose(piped_losses, single_losses, rtol=1e-5, atol=1e-6)
    for (n, p), (_, q), (_, e) in zip(a.named_parameters(), b.named_parameters(), _eager().named_parameters(),
                                      strict=True):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=1e-5, atol=1e-6, err_msg=n)
        np.testing.assert_allclose(p.detach().numpy(), e.detach().numpy(), rtol=1e-4, atol=1e-5, err_msg=n)
    low = piped._impl.lowered
    assert low.graph.target.num_ipus == 2  # three stages, two IPUs
    ipus = CHIP.with_num_ipus(2).ipu_of_tile
    assert set(ipus(np.unique(low.graph.tile_of(low.params["emb.weight"]))).tolist()) == {0}
    assert set(ipus(np.unique(low.graph.tile_of(low.params["enc.weight"]))).tolist()) == {1}
    s = piped._impl.summary()["pipeline"]
    assert [st["ipu"] for st in s["stages"]] == [0, 1, 0]
    sched = s["schedule"]
    # F = 3 forward stages: S = 2F - 1 = 5 schedule stages [f0 | f1 | f2+b2 | b1 | b0] on IPUs
    # 0, 1, 0, 1, 0; stash depth 2(F-1-f)+1 per forward stage, the last none
    assert sched["stages"] == 5 and sched["num_ipus"] == 2
    assert sched["stage_ipus"] == [0, 1, 0, 1, 0] and sched["stash_depth"] == [5, 3, 0]
    f = [st["forward_cycles"] for st in s["stages"]]
    b = [st["backward_cycles"] for st in s["stages"]]
    # IPU 0 runs stages 0 and 2 one after the other: its work is their sum, A = 5 micro-batches
    assert sched["ipu_busy_cycles"] == [5 * (f[0] + b[0] + f[2] + b[2]), 5 * (f[1] + b[1])]
    work = max(f[0] + b[0] + f[2] + b[2], f[1] + b[1])
    copies = [st["copy_in_cycles"] for st in s["stages"]]
    assert copies[2] > 0 and copies[0] > 0  # IPU 1 -> IPU 0 into the head, the gradient back into emb
    assert work < sched["steady_cycle"] <= work + max(copies)
    staged = sum(f) + sum(b) + sum(copies)
    assert s["cycles"] == s["sequential_cycles"] - 5 * staged + sched["fill_cycles"] + sched["main_cycles"] \
        + sched["flush_cycles"]
    assert 0 < s["cycles"] < s["sequential_cycles"]
    assert s["stash_bytes"][0] > 0 and s["stash_bytes"][1] > 0


def test_shared_ipu_needs_ascending_stages_and_enough_accumulation():
    with pytest.raises(SoftIPUError, match="3 forward stages give 5 pipeline stages.*at least 5"):
        _train(True, poptorch.PipelinedExecution(poptorch.AutoStage.AutoIncrement), ga=4, steps=1)
    # SameAsIpu: the head is stage 0 again after stage 1 -- stages must ascend (PopTorch refuses too)
    with pytest.raises(SoftIPUError, match="stages must ascend"):
        _train(True, None, ga=5, steps=1)


class ThreeBlocks(torch.nn.Module):
    """a (IPU 0, stage 0) -> b (IPU 1, stage 1) -> c (IPU 0, stage 2); with ``skip`` a's output is
    also added after c: a value that skips stage 1 and comes back to IPU 0 two pipeline cycles later."""

    def __init__(self, skip: bool) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.skip = skip
        self.a = torch.nn.Linear(W, W)
        self.b = poptorch.BeginBlock(torch.nn.Linear(W, W), "b", ipu_id=1)
        self.c = poptorch.BeginBlock(torch.nn.Linear(W, W), "c", ipu_id=0)

    def forward(self, x):
        h = torch.relu(self.a(x))
        out = self.c(torch.relu(self.b(h)))
        return out + h if self.skip else out


def _pipelined_inference(skip: bool):
    """The model run pipelined (AutoIncrement, 3 device iterations), checked against eager; the
    model and its pipeline plan."""
    net = ThreeBlocks(skip).eval()
    opts = poptorch.Options().setTarget(CHIP).deviceIterations(3)
    opts.setExecutionStrategy(poptorch.PipelinedExecution(poptorch.AutoStage.AutoIncrement))
    model = poptorch.inferenceModel(net, opts)
    x = torch.randn(6, W)
    with torch.no_grad():
        np.testing.assert_allclose(model(x).numpy(), net(x).numpy(), rtol=1e-5, atol=1e-6)
    return model, model._impl._current.lowered.extra["pipeline"]


def test_shared_ipu_pipelined_inference_values():
    model, plan = _pipelined_inference(skip=False)
    # layer a before any block: stage 0 on IPU 0; AutoIncrement: b stage 1 on IPU 1, c stage 2 on IPU 0
    assert [st for _, st, _ in plan.placement.stages] == [0, 1, 2] and plan.placement.stage_ipus == [0, 1, 0]
    sched = plan.summary(model._impl.engine.executable, model._impl.cycle_count)["schedule"]
    assert sched["num_ipus"] == 2 and sched["stage_ipus"] == plan.placement.stage_ipus


def test_same_ipu_skip_in_pipelined_inference_is_stashed():
    model, plan = _pipelined_inference(skip=True)
    assert plan.placement.stage_ipus == [0, 1, 0]
    # h (2 rows x 8 fp32 per micro-batch) is read 2 pipeline cycles after it is made: 2 + 1 rows
    # (within a cycle the next micro-batch's stash comes before the restore); IPU 1 stashes nothing
    # (its input arrives by an inter-IPU copy)
    assert plan.stash_bytes == [3 * 2 * W * 4, 0]
    summary = plan.summary(model._impl.engine.executable, model._impl.cycle_count)
    assert summary["stash_bytes"] == plan.stash_bytes
