"""softipu.poptorch behaves as PopTorch documents, compared with eager torch (issue 12's behaviours).

Each test states the PopTorch behaviour it checks; the expected values come from eager torch on
the same module and inputs, or from the documented structure.
"""

from __future__ import annotations

import collections
import io
import warnings
import zipfile

import pytest
import torch

import softipu as sp
import softipu.poptorch as poptorch
import softipu.torch as st
from softipu.frontends.torch import options as options_module

SMALL = sp.targets.ipu_model(tiles=8, bytes_per_tile=512 * 1024)


@pytest.fixture(autouse=True)
def fresh_warnings():
    options_module._WARNED.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", st.UnusedOptionWarning)
        yield


def opts() -> poptorch.Options:
    return poptorch.Options().setTarget(SMALL)


# -- in-place changes of inputs and buffers -------------------------------------------------------
class Counter(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("count", torch.zeros(3))
        self.register_buffer("fixed", torch.ones(3))

    def forward(self, x):
        x += 1  # PopTorch writes this back to the caller's tensor
        self.count += x  # and keeps the buffer's new value on the device
        return x * self.fixed + self.count


def test_in_place_changes_of_inputs_and_buffers_behave_as_in_eager_torch():
    eager, ipu_net = Counter(), Counter()
    model = poptorch.inferenceModel(ipu_net, opts())
    x_eager, x_ipu = torch.arange(3.0), torch.arange(3.0)
    for _ in range(3):
        want = eager(x_eager)
        got = model(x_ipu)
        assert torch.equal(got, want)
        assert torch.equal(x_ipu, x_eager)  # the caller's input changed as in eager torch
    assert torch.equal(ipu_net.count, torch.zeros(3))  # the host copy: until copyWeightsToHost
    model.copyWeightsToHost()
    assert torch.equal(ipu_net.count, eager.count)
    assert torch.equal(ipu_net.fixed, torch.ones(3))
    ipu_net.count.zero_()
    eager.count.zero_()
    model.copyNamedBuffersToDevice()  # the host's buffers on the device again
    assert torch.equal(model(x_ipu), eager(x_eager))


class Running(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("total", torch.zeros(3))

    def forward(self, x):
        self.total += x.sum(0)
        return x + self.total


def test_buffers_change_per_device_iteration():
    """With deviceIterations(2) the buffer is updated by each iteration in turn, as two eager calls."""
    eager, ipu_net = Running(), Running()
    model = poptorch.inferenceModel(ipu_net, opts().deviceIterations(2))
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    got = model(x)
    want = torch.cat([eager(x[0:1]), eager(x[1:2])])
    assert torch.equal(got, want)
    model.copyWeightsToHost()
    assert torch.equal(ipu_net.total, eager.total)


# -- 64-bit types ----------------------------------------------------------------------------------
class Wide(torch.nn.Module):
    def forward(self, ids, scale):
        return ids * 3 + 1, scale * 2.5


def test_64_bit_types_run_as_32_bit_and_come_back_32_bit():
    ids = torch.tensor([1, -7, 2**30], dtype=torch.int64)
    scale = torch.tensor([0.5, 1e30], dtype=torch.float64)
    out_ids, out_scale = poptorch.inferenceModel(Wide(), opts())(ids, scale)
    assert out_ids.dtype == torch.int32 and out_scale.dtype == torch.float32
    want_ids, want_scale = Wide()(ids, scale)
    assert out_ids.tolist() == [4, -20, (3 * 2**30 + 1) - 2**32]  # int32 arithmetic, as on the IPU
    assert torch.equal(out_scale, want_scale.float())
    # softipu.torch keeps torch's dtypes (documented difference)
    st_ids, st_scale = st.inference_model(Wide(), st.Options(target=SMALL))(ids[:2], scale)
    assert st_ids.dtype == torch.int64 and st_scale.dtype == torch.float64
    assert torch.equal(st_ids, want_ids[:2])


def test_a_64_bit_input_beyond_32_bits_is_an_error_not_a_wrap():
    model = poptorch.inferenceModel(Wide(), opts())
    with pytest.raises(poptorch.Error, match=r"input 'ids' holds 4294967296.*beyond sp.int32") as caught:
        model(torch.tensor([1, 2**32, 3]), torch.tensor([1.0], dtype=torch.float64))
    assert isinstance(caught.value, sp.SoftIPUError)
    with pytest.raises(poptorch.Error, match="beyond sp.float32"):
        model(torch.tensor([1, 2, 3]), torch.tensor([1e300], dtype=torch.float64))


# -- matching inputs ----------------------------------------------------------------------------------
class Optional(torch.nn.Module):
    def forward(self, x, bias=None, scale=2.0):
        out = x * scale
        return out if bias is None else out + bias


def test_inputs_match_by_position_with_keywords_and_defaults():
    model = poptorch.inferenceModel(Optional(), opts())
    x, b = torch.randn(4), torch.randn(4)
    want = Optional()(x, b)
    assert torch.allclose(model(x, b), want)
    compiled = len(model._impl._compiled)
    for call in (lambda: model(x, bias=b), lambda: model(x=x, bias=b), lambda: model(x, b, 2.0),
                 lambda: model(bias=b, x=x, scale=2.0)):
        assert torch.allclose(call(), want)
    assert len(model._impl._compiled) == compiled  # the same compiled model every time
    with pytest.raises(poptorch.Error, match="'bias' was a tensor when Optional was compiled"):
        model(x)  # an optional tensor left out no longer matches: PopTorch refuses it too
    assert torch.allclose(poptorch.inferenceModel(Optional(), opts())(x), Optional()(x))
    with pytest.raises(poptorch.Error, match=r"Optional.forward cannot take .*nonsense"):
        model(x, nonsense=b)


class Pairs(torch.nn.Module):
    def forward(self, batch):
        return batch["a"] * 2 - batch["b"], batch["c"][0] + batch["c"][1]


class MyDict(collections.OrderedDict):
    pass


def test_dict_inputs_in_any_key_order_and_mapping_subclasses():
    a, b, c = torch.randn(3), torch.randn(3), (torch.randn(2), torch.randn(2))
    want = Pairs()({"a": a, "b": b, "c": c})
    model = poptorch.inferenceModel(Pairs(), opts())
    first = model({"a": a, "b": b, "c": c})
    again = model({"c": c, "b": b, "a": a})  # another key order: matched by key, as PopTorch
    subclass = model(MyDict(b=b, a=a, c=c))  # an OrderedDict subclass (not a pytree node)
    for got in (first, again, subclass):
        assert all(torch.allclose(g, w) for g, w in zip(got, want, strict=True))
    assert len(model._impl._compiled) == 1


# -- half precision -----------------------------------------------------------------------------------------
def test_a_half_model_takes_float_inputs_as_half():
    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU()).half()
    x = torch.randn(5, 8)
    out = poptorch.inferenceModel(net, opts())(x)
    assert out.dtype == torch.float16
    assert torch.allclose(out.float(), net(x.half()).float(), atol=2e-3, rtol=1e-2)
    mixed = poptorch.inferenceModel(Optional(), opts())(x.half(), torch.randn(5, 8))  # float model
    assert mixed.dtype == torch.float32  # torch's promotion, as in eager


# -- floating-point exceptions -------------------------------------------------------------------------------
class Activations(torch.nn.Module):
    def forward(self, x):
        f = torch.nn.functional
        return (torch.sigmoid(x), f.silu(x), torch.softmax(x, 0), torch.log_softmax(x, 0), f.softplus(x),
                f.elu(-x), f.mish(x), f.celu(x, 0.5), f.softplus(x, beta=2.0, threshold=5.0))


def test_floating_point_exceptions_trap_overflow_not_underflow():
    o = opts()
    o.Precision.enableFloatingPointExceptions(True)
    model = poptorch.inferenceModel(Activations(), o)
    for x in (torch.tensor([10.0, 100.0, 1000.0]), torch.tensor([-10.0, -100.0, -1000.0])):
        for got, want in zip(model(x), Activations()(x), strict=True):
            assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)

    class Overflow(torch.nn.Module):
        def forward(self, x):
            return torch.exp(x) * 2  # exp(100) overflows float32

    trapping = poptorch.inferenceModel(Overflow(), o)
    with pytest.raises(poptorch.RecoverableError, match=r"floating-point exception \(overflow\).*exp"
                       r".*test_frontend_poptorch_behaviour.py:\d+") as caught:
        trapping(torch.tensor([1.0, 100.0]))
    assert caught.value.recovery_action == "IPU_RESET" and isinstance(caught.value, sp.SoftIPUError)


# -- performance counters ------------------------------------------------------------------------------------
def test_perf_counters_have_poptorch_structure():
    class TwoIn(torch.nn.Module):
        def forward(self, x, y):
            return x @ y, x.sum()

    model = poptorch.inferenceModel(TwoIn(), opts().deviceIterations(3))
    model(torch.randn(6, 4), torch.randn(12, 3))
    counters = model.getPerfCounters()
    assert set(counters) == {"input", "input_complete", "output", "output_complete"}
    assert len(counters["input"]) == 2 and len(counters["output"]) == 2  # per tensor
    for key in counters:
        assert all(len(per_iteration) == 3 for per_iteration in counters[key])  # per iteration
    for i in range(3):
        assert counters["input"][0][i] < counters["input_complete"][0][i] <= counters["output"][0][i]
        assert counters["output"][1][i] < counters["output_complete"][1][i]
    assert counters["input"][0][0] >= 0.0 and counters["input"][0][1] > counters["input_complete"][1][0]
    low, high, mean = model.getLatency()
    assert 0 < low <= mean <= high


# -- ipu_print_tensor ---------------------------------------------------------------------------------------
def test_ipu_print_tensor_takes_poptorch_full_signature(capsys):
    class Printing(torch.nn.Module):
        def forward(self, x):
            y = poptorch.ipu_print_tensor(x * 2, "doubled", print_gradient=False, summarise_threshold=4,
                                          edge_items=1, max_line_width=200, digits=2, float_format="fixed",
                                          separator="; ", open_bracket="<", close_bracket=">")
            return y + 1

    x = torch.arange(6.0)
    out = poptorch.inferenceModel(Printing(), opts())(x)
    assert torch.equal(out, x * 2 + 1)
    printed = capsys.readouterr().out
    assert "doubled: <0.00; ...; 10.00>" in printed


# -- compileAndExport to one file ----------------------------------------------------------------------------
def test_compile_and_export_writes_one_file(tmp_path):
    net, x = torch.nn.Linear(4, 3), torch.randn(2, 4)
    path = tmp_path / "model.poptorch"
    poptorch.inferenceModel(net, opts()).compileAndExport(str(path), x, export_model=False)
    assert path.is_file() and [p.name for p in tmp_path.iterdir()] == ["model.poptorch"]
    with zipfile.ZipFile(io.BytesIO(path.read_bytes())) as archive:
        assert archive.namelist()  # an archive of softipu's export
    copied = tmp_path / "copy.poptorch"
    copied.write_bytes(path.read_bytes())  # scripts copy the exported file
    loaded = poptorch.inferenceModel(net, opts())
    loaded.loadExecutable(copied)
    assert sorted(loaded._impl.compile_seconds) == ["executable_load", "load"]
    with torch.no_grad():
        assert torch.allclose(loaded(x), net(x), atol=1e-6)
