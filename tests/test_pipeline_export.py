"""An exported or cached executable keeps its model-parallel plan (blocks, stages, each stage's
steps): ``compileAndExport`` -> ``loadExecutable`` of a pipelined model gives the same results and
the same priced strategy (cycles, schedule) as the model that compiled it.

Oracles: the exporting model itself (values, cycles, summary) and eager torch for the values.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

import softipu as sp
import softipu.poptorch as poptorch

CHIP = sp.targets.ipu_model(tiles=4, bytes_per_tile=256 * 1024)


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = torch.nn.Linear(8, 30)
        self.fc2 = poptorch.BeginBlock(torch.nn.Linear(30, 3), "b", ipu_id=1)

    def forward(self, x, y=None):
        out = self.fc2(torch.tanh(self.fc1(x)))
        return out if y is None else (out, F.cross_entropy(out, y))


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(6, 8, generator=g), torch.randint(0, 3, (6,), generator=g)


def _training():
    module = Net()
    opts = poptorch.Options().setTarget(CHIP)
    opts.Training.gradientAccumulation(3)  # 2 IPUs pipelined: 3 stages
    return module, poptorch.trainingModel(module, opts, torch.optim.SGD(module.parameters(), lr=0.1))


def test_exported_pipelined_training_step_loads_with_its_plan(tmp_path):
    x, y = _data()
    module, first = _training()
    first.compileAndExport(str(tmp_path / "step"), x, y, export_model=False)
    other_module, loaded = _training()
    loaded.loadExecutable(str(tmp_path / "step"))
    for _ in range(2):  # the same losses and weights, step after step
        a, b = first(x, y)[1], loaded(x, y)[1]
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for (name, p), q in zip(module.named_parameters(), other_module.parameters(), strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=0, msg=name)
    # the strategy is priced from the loaded plan: the same schedule and cycles as the exporter's
    s, t = first._impl.summary()["pipeline"], loaded._impl.summary()["pipeline"]
    assert s["strategy"] == t["strategy"] == "pipelined"
    assert s["schedule"] == t["schedule"] and s["stages"] == t["stages"] and s["stash_bytes"] == t["stash_bytes"]
    assert first._impl.cycle_count == loaded._impl.cycle_count < s["sequential_cycles"]


def _inference(**opts):
    net = Net().eval()
    options = poptorch.Options().setTarget(CHIP).deviceIterations(3).logCycleCount(True)
    for name, value in opts.items():
        getattr(options, name)(value)
    return net, poptorch.inferenceModel(net, options)


def test_exported_and_cached_pipelined_inference_keep_the_plan(tmp_path):
    x, _ = _data()
    net, first = _inference()
    first.compileAndExport(str(tmp_path / "inf"), x, export_model=False)
    with torch.no_grad():
        want = net(x).numpy()
    np.testing.assert_allclose(first(x).numpy(), want, rtol=1e-5, atol=1e-6)
    _, loaded = _inference()
    loaded.loadExecutable(str(tmp_path / "inf"))
    np.testing.assert_allclose(loaded(x).numpy(), want, rtol=1e-5, atol=1e-6)
    assert loaded.cycleCount() == first.cycleCount()
    # the executable cache: the second model compiles nothing and prices the same pipeline
    cache = str(tmp_path / "cache")
    _, a = _inference(enableExecutableCaching=cache)
    a(x)
    _, b = _inference(enableExecutableCaching=cache)
    np.testing.assert_allclose(b(x).numpy(), want, rtol=1e-5, atol=1e-6)
    assert b._impl._current.lowered.extra["pipeline"].placement.stage_ipus == [0, 1]
    assert a.cycleCount() == b.cycleCount() == first.cycleCount()
