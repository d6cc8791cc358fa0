"""PopTorch's public names in softipu.poptorch: each behaves as PopTorch documents (issue 12's names).

Expected values come from eager torch or from the documented definition, never from softipu.
"""

from __future__ import annotations

import itertools
import logging
import math
import warnings

import numpy as np
import pytest
import torch

import softipu as sp
import softipu.poptorch as poptorch
import softipu.torch as st
from softipu.frontends.torch import options as options_module
from softipu.frontends.torch import runtime

SMALL = sp.targets.ipu_model(tiles=8, bytes_per_tile=512 * 1024)


@pytest.fixture(autouse=True)
def fresh_warnings():
    options_module._WARNED.clear()
    yield


def opts() -> poptorch.Options:
    return poptorch.Options().setTarget(SMALL)


class Fn(torch.nn.Module):
    """A module running ``fn`` (so each test states its forward in one line)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


def run(fn, *args, options=None):
    """``fn(*args)`` on the simulated IPU and in eager torch."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", st.UnusedOptionWarning)
        return poptorch.inferenceModel(Fn(fn), options or opts())(*args), Fn(fn)(*args)


def close(a, b, **kw):
    return all(torch.allclose(x, y, **kw) for x, y in zip(a, b, strict=True)) if isinstance(a, (list, tuple)) \
        else torch.allclose(a, b, **kw)


def test_errors_are_poptorch_and_softipu_errors():
    assert issubclass(poptorch.RecoverableError, poptorch.Error)
    assert issubclass(poptorch.UnrecoverableError, poptorch.Error)
    model = poptorch.inferenceModel(torch.nn.Linear(4, 2), opts())
    model(torch.randn(3, 4))
    with pytest.raises(poptorch.Error) as caught:
        model(torch.randn(3, 4, dtype=torch.float16))  # compiled for float32
    error = caught.value
    assert isinstance(error, sp.SoftIPUError) and isinstance(error, ValueError)  # still softipu's InputError
    assert "compiled for" in error.message and error.type == "softipu" and isinstance(error.location, str)
    with pytest.raises(poptorch.Error, match="never pickles"):
        poptorch.load("model.poptorch")


def test_for_loop_cond_and_dynamic_slices():
    def body(x, acc):
        return x * 0.5, acc + x

    x = torch.randn(4)
    got, want = run(lambda x: poptorch.for_loop(3, body, [x, torch.zeros(4)]), x)
    assert close(got, want) and close(want, [x / 8, x * 1.75])
    with pytest.raises(sp.SoftIPUError, match="must return as many"):
        poptorch.for_loop(2, lambda a: (a, a), [x])

    def choose(flag, a, b):
        return poptorch.cond(flag, lambda a: a * 2, [a], lambda b: b - 1, [b])[0]

    model = poptorch.inferenceModel(Fn(choose), opts())
    for flag in (True, False):  # one compiled model, both branches
        a, b = torch.randn(3), torch.randn(3)
        assert torch.allclose(model(torch.tensor([flag]), a, b), choose(torch.tensor([flag]), a, b))

    table = torch.arange(20.0).reshape(10, 2)
    start = torch.tensor([3])
    rows = torch.full((2, 2), -1.0)
    got, want = run(lambda t, r, s: (poptorch.dynamic_slice(t, 0, s, 4, 2),
                                     poptorch.dynamic_update(t, r, 0, s, 2)), table, rows, start)
    expected = table.clone()
    expected[3:5] = -1.0
    assert close(got, want) and torch.equal(want[0], table[3:11:2]) and torch.equal(want[1], expected)


def test_is_running_on_ipu_nop_and_name_scopes():
    got, want = run(lambda x: x + (1.0 if poptorch.isRunningOnIpu() else 0.0), torch.zeros(2))
    assert torch.equal(got, torch.ones(2)) and torch.equal(want, torch.zeros(2))
    assert not poptorch.isRunningOnIpu()
    got, want = run(lambda x: poptorch.nop(x * 3), torch.arange(3.0))
    assert torch.equal(got, want)

    class Scoped(torch.nn.Module):
        def forward(self, x):
            with poptorch.NameScope("encoder"):
                y = torch.relu(x)
                with poptorch.NameScope("inner"):
                    y = y * 3
            return y + 1

    model = poptorch.inferenceModel(Scoped(), opts())
    assert torch.equal(model(torch.tensor([-1.0, 2.0])), torch.tensor([1.0, 7.0]))
    names = [step["name"] for step in model.report.steps]
    assert any(n.startswith("encoder/relu") for n in names)
    assert any(n.startswith("encoder/inner/mul") for n in names), names


def test_cpu_runs_a_layer_on_the_host_between_device_ops():
    calls = []

    def host_layer(x, y):
        calls.append(x.shape)
        return torch.from_numpy(np.sort(x.numpy(), axis=-1)) + y  # numpy: only the host can run it

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.cpu = poptorch.CPU(host_layer, "sorter")

        def forward(self, x, y):
            return self.cpu(x * 2, y) - 1

    x, y = torch.randn(2, 5), torch.randn(2, 5)
    model = poptorch.inferenceModel(Model(), opts().deviceIterations(2))
    model.compile(x, y)
    calls.clear()  # the capture may run the layer to learn its outputs' shapes
    got = model(x, y)
    want = torch.from_numpy(np.sort((x * 2).numpy(), axis=-1)) + y - 1
    assert torch.allclose(got, want)
    assert calls.count(torch.Size([1, 5])) == 2  # once per device iteration, on micro-batches
    host = [s for s in model.report.steps if s["name"].startswith("Copy 'host_call/cpu:sorter")]
    assert len(host) == 3 and all(s["host_bytes"] == 20 for s in host)  # x and y out, result in
    assert torch.allclose(Model()(x, y), want)  # eager: the layer simply runs


def test_serialized_matmul_and_multiconv():
    a, b = torch.randn(8, 12), torch.randn(12, 6)
    modes = list(poptorch.MatMulSerializationMode)
    got, _ = run(lambda a, b: [poptorch.serializedMatMul(a, b, mode, 2) for mode in modes], a, b)
    for mode, product in zip(modes, got, strict=True):
        assert torch.allclose(product, a @ b, atol=1e-5), mode
    with pytest.raises(sp.SoftIPUError, match="not a multiple of the factor 5"):
        poptorch.serializedMatMul(a, b, poptorch.MatMulSerializationMode.ReducingDim, 5)

    conv1, conv2 = torch.nn.Conv2d(2, 3, 3), torch.nn.Conv2d(2, 3, 1)
    with pytest.warns(st.UnusedOptionWarning, match="MultiConv.partialsTypes"):
        multi = poptorch.MultiConv().partialsTypes([torch.float, torch.float])
    with pytest.warns(st.UnusedOptionWarning, match="MultiConv.planType"):
        assert multi.planType(poptorch.MultiConvPlanType.Parallel) is multi

    def both(x):
        with poptorch.MultiConv().cycleBackOff(0.1):
            return conv1(x), conv2(x)

    got, want = run(both, torch.randn(1, 2, 5, 5))
    assert close(got, want, atol=1e-5)


def _ctc_exact(log_probs, top):
    """Every label sequence's probability by brute force: the sum over all alignments (CTC's
    definition), best first."""
    steps, classes = log_probs.shape
    totals = {}
    for path in itertools.product(range(classes), repeat=steps):
        labels = tuple(c for i, c in enumerate(path) if c != 0 and (i == 0 or path[i - 1] != c))
        totals[labels] = totals.get(labels, 0.0) + math.exp(sum(log_probs[t, c] for t, c in enumerate(path)))
    return sorted(totals.items(), key=lambda kv: -kv[1])[:top]


def test_ctc_beam_search_decoder_finds_the_most_probable_sequences():
    torch.manual_seed(5)
    probs = torch.log_softmax(torch.randn(4, 2, 3), dim=-1)  # (T, batch, classes), blank 0
    lengths = torch.tensor([4, 4])
    got, _ = run(lambda p, n: poptorch.ctc_beam_search_decoder(p, n, blank=0, beam_width=50, top_paths=2),
                 probs, lengths)
    path_probs, paths, path_lengths = got
    assert path_probs.shape == (2, 2) and paths.shape == (2, 2, 4) and path_lengths.shape == (2, 2)
    for b in range(2):
        for k, (labels, p) in enumerate(_ctc_exact(probs[:, b].double().numpy(), 2)):
            assert path_lengths[b, k] == len(labels)
            assert tuple(paths[b, k, : len(labels)].tolist()) == labels
            assert math.isclose(path_probs[b, k].item(), math.log(p), rel_tol=1e-4)


def test_custom_op_runs_its_registered_python_implementation():
    def my_gelu(x, *, approximate):
        return torch.nn.functional.gelu(x, approximate=approximate), x.abs().sum()

    poptorch.register_custom_op("FastGelu", "com.example", my_gelu)
    x = torch.randn(6)

    def call(x):
        return poptorch.custom_op([x], "FastGelu", "com.example", 1, example_outputs=[x, x.sum()],
                                  attributes={"approximate": "tanh"})

    got, want = run(call, x)
    assert close(got, want, atol=1e-5)
    with pytest.raises(sp.SoftIPUError, match="register_custom_op"):
        poptorch.custom_op([x], "Missing", "com.example", 1, example_outputs=[x])
    with pytest.raises(sp.SoftIPUError, match="example_outputs"):
        poptorch.custom_op([x], "FastGelu", "com.example", 1, example_outputs=[x], attributes={"approximate": "tanh"})


class Pair:
    """A user's input type: two tensors and a flag."""

    def __init__(self, a, b, flag=True):
        self.a, self.b, self.flag = a, b, flag


class PairParser(poptorch.ICustomArgParser):
    def yieldTensors(self, struct):  # noqa: N802 - PopTorch's name
        yield struct.a
        yield struct.b

    def reconstruct(self, original_structure, tensor_iterator):
        return Pair(next(tensor_iterator), next(tensor_iterator), original_structure.flag)


def test_custom_arg_parsers_and_post_compile_hooks():
    poptorch.registerCustomArgParser(Pair, PairParser())
    compiled = []
    handle = poptorch.registerPostCompileHook(lambda: compiled.append(True))
    try:
        model = poptorch.inferenceModel(Fn(lambda p: p.a * p.b), opts())
        a, b = torch.randn(3), torch.randn(3)
        assert torch.allclose(model(Pair(a, b)), a * b)
        assert torch.allclose(model(Pair(b, b)), b * b)
        assert compiled == [True]  # once: the second call ran the compiled model
    finally:
        handle.remove()
    poptorch.inferenceModel(torch.nn.Linear(2, 2), opts())(torch.randn(1, 2))
    assert compiled == [True]


def test_enums_options_and_log_levels():
    from softipu.poptorch.enums import MatMulSerializationMode, OutputMode, OverlapMode  # noqa: PLC0415

    assert OutputMode is poptorch.OutputMode and poptorch.enums.OverlapMode is OverlapMode
    assert {m.name for m in MatMulSerializationMode} == {"InputChannels", "ReducingDim", "OutputChannels",
                                                         "Disabled"}
    assert {m.name for m in OverlapMode} == {"NoOverlap", "OverlapAccumulationLoop",
                                             "OverlapDeviceIterationLoop"}
    o = opts()
    assert o.broadcastBuffers(False) is o  # implemented: tests/test_frontend_poptorch_state.py
    assert o.TensorLocations.numIOTiles(32) is o.TensorLocations  # tests/test_frontend_poptorch_state.py
    settings = poptorch.TensorLocationSettings().useIOTilesToLoad(True).useOnChipStorage(True)
    assert settings.stored == {"useIOTilesToLoad": True, "useOnChipStorage": True}
    x = torch.randn(2, 3)
    with pytest.warns(st.UnusedOptionWarning, match="set_overlap_for_input"):
        assert poptorch.set_overlap_for_input(x, poptorch.OverlapMode.OverlapDeviceIterationLoop) is x
    for name, level in (("TRACE", 5), ("DEBUG", logging.DEBUG), ("INFO", logging.INFO), ("WARN", logging.WARNING),
                        ("ERR", logging.ERROR), ("OFF", logging.CRITICAL + 10)):
        poptorch.setLogLevel(name)
        assert runtime.logger.level == level
    poptorch.setLogLevel(3)
    assert runtime.logger.level == logging.WARNING
    with pytest.raises(sp.SoftIPUError, match="unknown level"):
        poptorch.setLogLevel("LOUD")
    poptorch.setLogLevel("WARN")


def test_every_name_in_the_coverage_doc_exists():
    """docs/poptorch_coverage.md's implemented and accepted names are all in softipu.poptorch."""
    from pathlib import Path  # noqa: PLC0415

    doc = (Path(__file__).resolve().parents[1] / "docs" / "poptorch_coverage.md").read_text()
    rows = [line.split("|") for line in doc.splitlines() if line.startswith("| `poptorch.")]
    assert len(rows) > 60
    for row in rows:
        name, status = row[1].strip().strip("`"), row[2].strip()
        if status.startswith(("implemented", "accepted")):
            obj = poptorch
            for part in name.split(".")[1:]:
                obj = poptorch.Options() if obj is poptorch.Options else obj  # setters of an instance
                obj = getattr(obj, part)  # raises when the doc names something missing
