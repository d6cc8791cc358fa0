"""Training executables exported and loaded (PopTorch's ``compileAndExport`` / ``loadExecutable``).

A loaded export holds the compiled step and the device state of the moment it was exported, so a
model of the same module code, options and optimizer trains on from there with the losses the
exporting model has on the same batches (the same executable: equal bit for bit).
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

import softipu as sp
import softipu.poptorch as poptorch
from softipu.frontends.errors import FrontendError


class Net(torch.nn.Module):
    def __init__(self, hidden: int = 12) -> None:
        super().__init__()
        self.fc1, self.bn, self.fc2 = torch.nn.Linear(6, hidden), torch.nn.BatchNorm1d(hidden), \
            torch.nn.Linear(hidden, 3)

    def forward(self, x, y):
        out = self.fc2(torch.relu(self.bn(self.fc1(x))))
        return out, F.cross_entropy(out, y)


def _data(seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)


def _options(ga: int = 2):
    opts = poptorch.Options().setTarget(sp.targets.ipu_model(tiles=8, bytes_per_tile=256 * 1024))
    opts.Training.gradientAccumulation(ga)
    return opts


def _model(seed: int, opts=None, lr: float = 0.05):
    torch.manual_seed(seed)
    net = Net()
    opt = poptorch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.01)
    return net, opt, poptorch.trainingModel(net, opts or _options(), opt)


def _loss(out) -> float:
    return float(out[1])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One model trained 3 steps and exported, then trained 3 more: the file, the losses of those 3
    steps, the weights and buffers at the export and the optimizer's state_dict there."""
    path = tmp_path_factory.mktemp("export") / "step"
    net, opt, model = _model(0)
    for i in range(3):
        model(*_data(i))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.compileAndExport(path)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    saved_opt = opt.state_dict()
    losses = [_loss(model(*_data(i))) for i in range(3, 6)]
    return path, losses, state, saved_opt


def test_a_loaded_training_executable_trains_on_with_the_same_losses(exported):
    path, expected, state, _ = exported
    other, _, loaded = _model(1)  # other initial weights: the file's replace them
    assert not loaded.isCompiled()
    loaded.loadExecutable(path)
    assert loaded.isCompiled()
    assert sorted(loaded._impl.compile_seconds) == ["executable_load", "load"]  # nothing compiled
    for name, t in other.state_dict().items():  # the module reads the device's weights and buffers
        assert torch.equal(t, state[name]), name
    assert [_loss(loaded(*_data(i))) for i in range(3, 6)] == expected


def test_the_optimizer_state_and_step_come_along(exported):
    path, _, _, saved = exported
    _, other_opt, loaded = _model(1)
    loaded.loadExecutable(path)
    now = other_opt.state_dict()
    assert now["ipu_state"]["step"] == saved["ipu_state"]["step"] == 3
    for key, value in saved["ipu_state"].items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(now["ipu_state"][key], value), key


def test_the_loading_optimizer_gives_the_variable_attributes(exported):
    path, expected, _, _ = exported
    _, _, loaded = _model(0, lr=0.5)  # lr is a variable: taken from this optimizer
    loaded.loadExecutable(path)
    first, second = _loss(loaded(*_data(3))), _loss(loaded(*_data(4)))
    assert first == expected[0] and second != expected[1]  # the first step ran with lr 0.5


def test_loading_into_another_model_options_or_optimizer_names_what_differs(exported):
    path = exported[0]
    torch.manual_seed(0)
    wide = Net(hidden=16)
    with pytest.raises(FrontendError, match="fc1.weight is float32\\[16, 6\\] here"):
        poptorch.trainingModel(wide, _options(), torch.optim.SGD(wide.parameters(), lr=0.1)).loadExecutable(path)
    net = Net()
    with pytest.raises(FrontendError, match="option gradient_accumulation is 4 here, 2 in the file"):
        poptorch.trainingModel(net, _options(ga=4), poptorch.optim.AdamW(net.parameters(), lr=0.05,
                                                                         weight_decay=0.01)
                               ).loadExecutable(path)
    with pytest.raises(FrontendError, match="the optimizer differs"):
        poptorch.trainingModel(net, _options(), torch.optim.SGD(net.parameters(), lr=0.1)).loadExecutable(path)


def test_training_and_inference_exports_refuse_each_other(exported, tmp_path):
    net = Net()
    with pytest.raises(FrontendError, match="holds a training executable: load it with"):
        poptorch.inferenceModel(net, poptorch.Options().setTarget(sp.targets.ipu_model(tiles=8))
                                ).loadExecutable(exported[0])
    with pytest.raises(FrontendError, match="is not a model exported by softipu"):
        _model(0)[2].loadExecutable(tmp_path / "missing")
