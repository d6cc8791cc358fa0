"""PopTorch's anchored tensors (``Options.anchorTensor`` / ``getAnchoredTensor``) in every output
mode, for inference and training, as PopTorch documents them: All / EveryN / Final / Sum, with
PopART's anchor-buffer shapes (``[batchesPerStep, accumulationFactor, replicationFactor, *shape]``
for All, ``batchesPerStep / N`` for EveryN, ``[replicationFactor, *shape]`` for Final and Sum, each
size-1 leading dim dropped), and a training model's ``Gradient___model.<param>`` /
``UpdatedVar___model.<param>`` names. Values come from eager torch and torch autograd."""

from __future__ import annotations

import pytest
import torch

import softipu.poptorch as poptorch
from softipu.frontends.errors import FrontendError
from test_frontend_poptorch_state import Hidden as Net  # the same one-layer model and set-up
from test_frontend_poptorch_state import opts, quiet  # noqa: F401  (quiet: an autouse fixture)

Mode = poptorch.OutputMode


def _hidden(module: Net, x: torch.Tensor) -> torch.Tensor:
    return torch.relu(module.fc(x)).detach()


@pytest.mark.parametrize("mode, period", [(Mode.All, 1), (Mode.EveryN, 2), (Mode.Final, 1), (Mode.Sum, 1)])
def test_inference_anchor_modes_give_poptorchs_values_and_shapes(mode, period):
    x = torch.randn(4 * 2, 4)  # deviceIterations 4, micro-batch 2
    module = Net()
    model = poptorch.inferenceModel(module, opts().deviceIterations(4).anchorTensor(
        "hidden", "relu", mode, period).anchorTensor("w", "p_fc_weight", mode, period))
    out = model(x)
    per_iteration = _hidden(module, x).reshape(4, 2, 3)
    want = {Mode.All: per_iteration, Mode.EveryN: per_iteration[1::2], Mode.Final: per_iteration[-1],
            Mode.Sum: per_iteration.sum(0)}[mode]
    torch.testing.assert_close(model.getAnchoredTensor("hidden"), want)
    w = module.fc.weight.detach()
    want_w = {Mode.All: w.expand(4, 3, 4), Mode.EveryN: w.expand(2, 3, 4), Mode.Final: w, Mode.Sum: 4 * w}[mode]
    torch.testing.assert_close(model.getAnchoredTensor("w"), want_w)
    torch.testing.assert_close(out, per_iteration.reshape(8, 3) * 2)  # outputs keep the model's mode (All)


def test_anchor_default_mode_is_the_models_output_mode_and_replicas_lead():
    x = torch.randn(3 * 2 * 2, 4)  # deviceIterations 3, replicationFactor 2, micro-batch 2
    module = Net()
    o = opts().deviceIterations(3).replicationFactor(2).outputMode(Mode.Sum).anchorTensor("hidden", "relu")
    model = poptorch.inferenceModel(module, o)
    out = model(x)
    per = _hidden(module, x).reshape(3, 2, 2, 3)  # (iterations, replicas, micro-batch, 3)
    torch.testing.assert_close(model.getAnchoredTensor("hidden"), per.sum(0))  # [replicas, *shape]
    torch.testing.assert_close(out, (per * 2).sum(0).reshape(4, 3))
    every = poptorch.inferenceModel(module, opts().deviceIterations(3).replicationFactor(2).anchorTensor(
        "hidden", "relu", Mode.All))
    every(x)
    torch.testing.assert_close(every.getAnchoredTensor("hidden"), per)  # [steps, replicas, *shape]


def test_every_n_period_must_divide_device_iterations():
    with pytest.raises(poptorch.Error, match=r"EveryN\(2\).*divide deviceIterations \(3\)"):
        poptorch.inferenceModel(Net(), opts().deviceIterations(3).anchorTensor("h", "relu", Mode.EveryN, 2))
    with pytest.raises(FrontendError, match="output_return_period >= 1"):
        opts().anchorTensor("h", "relu", Mode.EveryN, 0)


class Regression(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x, y):
        out = self.fc(x)
        return out, torch.nn.functional.mse_loss(out, y)


def _grads(module: Regression, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    module.zero_grad()
    module(x, y)[1].backward()
    return {n: p.grad.detach().clone() for n, p in module.named_parameters()}


def test_training_anchors_gradient_updated_weight_and_weight_by_poptorchs_names():
    x, y = torch.randn(5, 4), torch.randn(5, 3)
    reference = Regression()
    w0 = reference.fc.weight.detach().clone()
    g = _grads(reference, x, y)
    o = (opts().anchorTensor("grad_bias", "Gradient___model.fc.bias")
         .anchorTensor("update_weight", "UpdatedVar___model.fc.weight")
         .anchorTensor("weight", "model.fc.weight"))
    module = Regression()
    model = poptorch.trainingModel(module, o, poptorch.optim.SGD(module.parameters(), lr=0.1))
    model(x, y)
    names = model.getTensorNames()
    assert {"Gradient___model.fc.bias", "UpdatedVar___model.fc.weight", "model.fc.weight"} <= set(names)
    grad = model.getAnchoredTensor("grad_bias")
    assert grad.shape == (3,)
    torch.testing.assert_close(grad, g["fc.bias"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.getAnchoredTensor("weight"), w0)  # what the forward used
    torch.testing.assert_close(model.getAnchoredTensor("update_weight"), w0 - 0.1 * g["fc.weight"],
                               rtol=1e-5, atol=1e-6)


def test_training_anchor_all_mode_over_steps_and_micro_batches():
    # deviceIterations 2 x gradientAccumulation 2, micro-batch 3: PopART's [batchesPerStep, accum, *shape].
    x, y = torch.randn(2 * 2 * 3, 4), torch.randn(2 * 2 * 3, 3)
    reference = Regression()
    expected_grads, expected_updates = [], []
    for step in range(2):
        micro = [_grads(reference, x[6 * step + 3 * m:6 * step + 3 * m + 3], y[6 * step + 3 * m:6 * step + 3 * m + 3])
                 for m in range(2)]
        expected_grads.append(torch.stack([g["fc.bias"] for g in micro]))
        with torch.no_grad():  # SGD on the mean of the micro-batches' gradients (PopTorch's Mean)
            for n, p in reference.named_parameters():
                p -= 0.1 * (micro[0][n] + micro[1][n]) / 2
        expected_updates.append(reference.fc.weight.detach().clone())
    o = (opts().deviceIterations(2).anchorTensor("grad_bias", "Gradient___model.fc.bias", Mode.All)
         .anchorTensor("updated", "UpdatedVar___model.fc.weight", Mode.All)
         .anchorTensor("updated_sum", "UpdatedVar___model.fc.weight", Mode.Sum))
    o.Training.gradientAccumulation(2)
    module = Regression()
    model = poptorch.trainingModel(module, o, poptorch.optim.SGD(module.parameters(), lr=0.1))
    model(x, y)
    torch.testing.assert_close(model.getAnchoredTensor("grad_bias"), torch.stack(expected_grads),
                               rtol=1e-5, atol=1e-6)  # [2 steps, 2 micro-batches, 3]
    torch.testing.assert_close(model.getAnchoredTensor("updated"), torch.stack(expected_updates),
                               rtol=1e-5, atol=1e-6)  # once per step: [2 steps, 3, 4]
    torch.testing.assert_close(model.getAnchoredTensor("updated_sum"), sum(expected_updates),
                               rtol=1e-5, atol=1e-6)


def test_training_anchor_with_an_unknown_name_says_what_exists():
    module = Regression()
    model = poptorch.trainingModel(module, opts().anchorTensor("g", "Gradient___model.fc.bais"))
    with pytest.raises(poptorch.Error, match="did you mean 'Gradient___model.fc.bias'"):
        model(torch.randn(2, 4), torch.randn(2, 3))
