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


def test_a_loaded_training_executable_trains_on_with_the_same_losses(tmp_path):
    net, _, model = _model(0)
    for i in range(3):
        model(*_data(i))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.compileAndExport(tmp_path / "step")
    expected = [_loss(model(*_data(i))) for i in range(3, 6)]
    trained = {n: p.detach().clone() for n, p in net.named_parameters()}
    state = net.state_dict()

    other, _, loaded = _model(1)  # other initial weights: the file's replace them
    loaded.loadExecutable(tmp_path / "step")
    assert sorted(loaded._impl.compile_seconds) == ["executable_load", "load"]  # nothing compiled
    got = [_loss(loaded(*_data(i))) for i in range(3, 6)]
    assert got == expected
    for name, p in other.named_parameters():  # the module reads the device's trained weights
        assert torch.equal(p.detach(), trained[name]), name
    for name, b in other.named_buffers():  # batch norm's running statistics came along
        assert torch.equal(b, state[name]), name


def test_the_optimizer_state_and_step_come_along(tmp_path):
    _, opt, model = _model(0)
    model(*_data(0))
    model(*_data(1))
    model.compileAndExport(tmp_path / "step", export_model=False)
    _, other_opt, loaded = _model(1)
    loaded.loadExecutable(tmp_path / "step")
    saved, now = opt.state_dict(), other_opt.state_dict()
    assert now["ipu_state"]["step"] == saved["ipu_state"]["step"] == 2
    for key, value in saved["ipu_state"].items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(now["ipu_state"][key], value), key


def test_the_loading_optimizer_gives_the_variable_attributes(tmp_path):
    _, _, model = _model(0)
    model(*_data(0))
    model.compileAndExport(tmp_path / "step", export_model=False)
    reference = _loss(model(*_data(1))), _loss(model(*_data(2)))
    _, _, loaded = _model(0, lr=0.5)  # lr is a variable: taken from this optimizer
    loaded.loadExecutable(tmp_path / "step")
    first, second = _loss(loaded(*_data(1))), _loss(loaded(*_data(2)))
    assert first == reference[0] and second != reference[1]  # the first step ran with lr 0.5


def test_loading_into_another_model_options_or_optimizer_names_what_differs(tmp_path):
    _, _, model = _model(0)
    model.compile(*_data(0))
    model.compileAndExport(tmp_path / "step", export_model=False)
    torch.manual_seed(0)
    wide = Net(hidden=16)
    with pytest.raises(FrontendError, match="fc1.weight is float32\\[16, 6\\] here"):
        poptorch.trainingModel(wide, _options(), torch.optim.SGD(wide.parameters(), lr=0.1)).loadExecutable(
            tmp_path / "step")
    net = Net()
    with pytest.raises(FrontendError, match="option gradient_accumulation is 4 here, 2 in the file"):
        poptorch.trainingModel(net, _options(ga=4), poptorch.optim.AdamW(net.parameters(), lr=0.05,
                                                                         weight_decay=0.01)
                               ).loadExecutable(tmp_path / "step")
    with pytest.raises(FrontendError, match="the optimizer differs"):
        poptorch.trainingModel(net, _options(), torch.optim.SGD(net.parameters(), lr=0.1)).loadExecutable(
            tmp_path / "step")


def test_training_and_inference_exports_refuse_each_other(tmp_path):
    _, _, model = _model(0)
    model.compileAndExport(tmp_path / "train", *_data(0), export_model=False)
    net = Net()
    with pytest.raises(FrontendError, match="holds a training executable: load it with"):
        poptorch.inferenceModel(net, poptorch.Options().setTarget(sp.targets.ipu_model(tiles=8))
                                ).loadExecutable(tmp_path / "train")
    with pytest.raises(FrontendError, match="is not a model exported by softipu"):
        _model(0)[2].loadExecutable(tmp_path / "missing")
