"""Gradient accumulation's mean reduction strategies (PopART's ``MeanReductionStrategy``).

``post`` adds the micro-batches' gradients into the accumulators and divides by the accumulation
factor once before the update; ``running`` keeps each accumulator the mean so far,
``a = (f / (f + 1)) a + g / (f + 1)``. Both equal eager PyTorch on the whole batch; they differ in
where the division runs (once per step vs. every micro-batch) and, with float16 accumulators, in
whether the sum can overflow.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F  # noqa: N812

import softipu as sp
import softipu.poptorch as poptorch
import softipu.torch as st
from softipu.frontends.torch import optim as ipu_optim

GA = 4


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(8, 16), torch.nn.Linear(16, 3)

    def forward(self, x, y):
        out = self.fc2(torch.tanh(self.fc1(x)))
        return out, F.cross_entropy(out, y)


def _data(b: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 8, generator=g), torch.randint(0, 3, (b,), generator=g)


def _chip():
    return sp.targets.ipu_model(tiles=8, bytes_per_tile=256 * 1024)


def _relative(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _train(strategy: str, optimizer, steps: int = 3, same_micro_batches: bool = False):
    torch.manual_seed(0)
    module = Net()
    eager = copy.deepcopy(module)
    opts = st.Options(target=_chip(), gradient_accumulation=GA, mean_reduction_strategy=strategy)
    model = st.training_model(module, optimizer(module.parameters()), opts)
    eager_opt = torch.optim.SGD(eager.parameters(), lr=0.1)
    for i in range(steps):
        x, y = _data(4 if same_micro_batches else 4 * GA, seed=i)
        if same_micro_batches:
            x, y = x.repeat(GA, 1), y.repeat(GA)
        model(x, y)
        eager_opt.zero_grad()
        eager(x, y)[1].backward()  # the mean over all GA x 4 samples
        eager_opt.step()
    return module, eager, model


def _counts(model, fragment: str) -> int:
    """Runs of the compute sets whose name holds ``fragment`` over all calls."""
    return sum(int(s["count"]) for s in model.report.steps if fragment in str(s["name"]))


def test_both_strategies_equal_eager_and_divide_where_they_should():
    # Post divides once per step (in the update), Running every micro-batch (in the loop).
    steps, params = 3, 4  # two weights, two biases: one accumulator each
    models = {}
    for strategy in ("post", "running"):
        module, eager, models[strategy] = _train(strategy, lambda p: torch.optim.SGD(p, lr=0.1), steps=steps)
        got = dict(module.named_parameters())
        for name, ref in eager.named_parameters():
            assert _relative(got[name].detach(), ref.detach()) <= 1e-5, (strategy, name)
    post, running = models["post"], models["running"]
    assert _counts(post, "/mean") == steps * params and _counts(post, "running_mean") == 0
    assert _counts(running, "running_mean") == steps * GA * params and _counts(running, "upd/accum") == 0
    # One more compute set per micro-batch (the micro-batch counter) for the running mean.
    assert _counts(running, "accum/micro_batches") == steps * GA + steps  # + its zeroing per step


def test_float16_accumulators_overflow_with_post_and_not_with_running():
    # The same micro-batch four times: each gradient x the loss scale fits float16 (< 65504), their
    # sum (4x) does not. Post's sum overflows to inf; the running mean never exceeds one gradient.
    torch.manual_seed(0)
    probe = Net()
    x, y = _data(4)
    probe(x, y)[1].backward()
    biggest = max(float(p.grad.abs().max()) for p in probe.parameters())
    scale = 40000.0 / biggest  # the largest element x scale = 40000; x 4 = 160000 > 65504

    def make(p):
        return ipu_optim.SGD(p, lr=0.1, loss_scaling=scale, accum_type=torch.float16)
    post, _, _ = _train("post", make, steps=1, same_micro_batches=True)
    running, eager, model = _train("running", make, steps=1, same_micro_batches=True)
    assert not all(bool(torch.isfinite(p).all()) for p in post.parameters())
    got = dict(running.named_parameters())
    for name, ref in eager.named_parameters():
        assert _relative(got[name].detach(), ref.detach()) <= 2e-3, name  # float16 rounding
    assert model.lowered.graph is not None and _counts(model, "running_mean") == GA * 4


def test_poptorch_defaults_to_running_for_float16_accumulators():
    torch.manual_seed(0)
    opts = poptorch.Options()
    opts.Training.gradientAccumulation(GA)
    assert opts.Training.meanAccumulationAndReplicationReductionStrategy is None
    opts.setTarget(_chip())
    module = Net()
    model = poptorch.trainingModel(module, opts, ipu_optim.SGD(module.parameters(), lr=0.1,
                                                               accum_type=torch.float16))
    model(*_data(4 * GA))
    assert _counts(model._impl, "running_mean") == GA * 4
    opts = poptorch.Options()
    opts.Training.gradientAccumulation(GA).setMeanAccumulationAndReplicationReductionStrategy(
        poptorch.MeanReductionStrategy.Post)
    assert opts.Training.meanAccumulationAndReplicationReductionStrategy is poptorch.MeanReductionStrategy.Post
    assert opts.toSoftipu().mean_reduction_strategy == "post"
