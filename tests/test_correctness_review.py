"""The review's correctness findings (issue 10), one test each, every one failing before its fix.

* Values that do not fit the device dtype (int64 -> int32, float64 -> float32) are an error
  naming the input, weight or constant and the value, never a silent wrap.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import softipu as sp
import softipu.torch as st
from softipu.errors import EngineError, TensorError
from softipu.frontends.errors import InputError, LoweringError

SMALL = st.Options(target=sp.targets.ipu_model(tiles=4, bytes_per_tile=256 * 1024))
BIG = 2**40


# -- narrowing to the device dtype ---------------------------------------------------------------------
class AddOne(torch.nn.Module):
    def forward(self, x):
        return x + 1


def test_int64_input_out_of_int32_range_is_an_error_naming_input_and_value():
    model = st.inference_model(AddOne(), SMALL)
    assert model(torch.tensor([5, -7])).tolist() == [6, -6]  # in range: exact
    with pytest.raises(InputError, match=rf"input 'x'.*{BIG}.*int32") as info:
        model(torch.tensor([3, BIG]))
    assert "index (1,)" in str(info.value)


def test_float64_input_overflowing_float32_is_an_error_but_rounding_is_not():
    model = st.inference_model(AddOne(), SMALL)
    x = torch.tensor([0.1, -2.5e-3], dtype=torch.float64)
    out = model(x)
    assert out.dtype == torch.float64
    np.testing.assert_array_equal(out.numpy(), (x.numpy().astype(np.float32) + np.float32(1)).astype(np.float64))
    assert torch.isinf(model(torch.tensor([np.inf, 1.0], dtype=torch.float64)))[0]  # inf stays inf
    with pytest.raises(InputError, match=r"input 'x'.*1e\+300.*float32"):
        model(torch.tensor([1.0, 1e300], dtype=torch.float64))


class WithBuffer(torch.nn.Module):
    def __init__(self, values: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("offset", values)

    def forward(self, x):
        return x + self.offset


def test_int64_buffer_out_of_range_is_an_error_naming_the_buffer():
    model = st.inference_model(WithBuffer(torch.tensor([BIG, 1])), SMALL)
    with pytest.raises(LoweringError, match=rf"'offset'.*{BIG}"):
        model(torch.tensor([1, 2]))


def test_float64_parameter_overflowing_float32_is_an_error():
    module = WithBuffer(torch.tensor([1e300, 1.0], dtype=torch.float64))
    with pytest.raises(LoweringError, match=r"'offset'.*1e\+300"):
        st.inference_model(module, SMALL)(torch.tensor([1.0, 2.0], dtype=torch.float64))


def test_copy_weights_to_device_checks_the_new_values():
    module = WithBuffer(torch.tensor([1, 2]))
    model = st.inference_model(module, SMALL)
    assert model(torch.tensor([1, 1])).tolist() == [2, 3]
    module.offset[0] = BIG
    with pytest.raises(InputError, match=rf"'offset'.*{BIG}"):
        model.copy_weights_to_device()


class Full(torch.nn.Module):
    def forward(self, x):
        return x + torch.full((2,), BIG, dtype=torch.int64)


def test_constant_out_of_range_in_a_lowering_is_an_error():
    with pytest.raises(LoweringError, match=rf"aten::full.*{BIG}.*int32"):
        st.inference_model(Full(), SMALL)(torch.tensor([1, 2]))


def test_add_constant_refuses_values_its_dtype_cannot_hold():
    g = sp.Graph(sp.targets.ipu_model(tiles=1))
    with pytest.raises(TensorError, match=rf"constant 'big' \(at .*test_correctness_review.py:\d+\).*{BIG}.*int32"):
        g.add_constant(sp.int32, (2,), [1, BIG], name="big")
    with pytest.raises(TensorError, match=r"constant 'neg'.*-1.*uint32"):
        g.add_constant(sp.uint32, (), -1, name="neg")
    g.add_constant(sp.float16, (), -np.inf, name="fine")  # inf is a value float16 holds


def _engine_with(dtype):
    g = sp.Graph(sp.targets.ipu_model(tiles=1))
    x = g.add_variable(dtype, (2,), name="x")
    g.set_tile_mapping(x, 0)
    return sp.Engine(g, [sp.program.Sequence([])]), x


def test_write_tensor_refuses_int64_values_beyond_int32():
    eng, x = _engine_with(sp.int32)
    with pytest.raises(EngineError, match=rf"tensor x of sp.int32.*{BIG}"):
        eng.write_tensor(x, np.array([1, BIG], np.int64))


# -- poisoning memory nothing wrote ----------------------------------------------------------------------
def _copy_of_unwritten(dtype, options):
    g = sp.Graph(sp.targets.ipu_model(tiles=2))
    x = g.add_variable(dtype, (4,), name="x")
    y = g.add_variable(dtype, (4,), name="y")
    k = g.add_constant(dtype, (2,), 1, name="k")
    for t in (x, y, k):
        sp.ops.map_linearly(g, t)
    prog = sp.program.Sequence([sp.program.Copy(x, y)])
    undef = sp.program.Sequence([sp.program.WriteUndef(y)])
    eng = sp.Engine(g, [prog, undef], options=options)
    return eng, x, y, k


POISON = {"debug.poisonUnwritten": True}


def test_poison_fills_unwritten_floats_with_nan_and_ints_with_a_pattern():
    eng, _, y, k = _copy_of_unwritten(sp.float32, POISON)
    eng.run(0)
    assert np.isnan(eng.read_tensor(y)).all()
    assert eng.read_tensor(k).tolist() == [1.0, 1.0]  # constants hold their values
    eng, x, y, _ = _copy_of_unwritten(sp.int32, POISON)
    eng.run(0)
    assert eng.read_tensor(y).tolist() == [np.int32(np.uint32(0xDEADBEEF).view(np.int32))] * 4
    eng, x, _, _ = _copy_of_unwritten(sp.uint16, POISON)
    assert (eng.read_tensor(x) == 0xBEEF).all()
    eng, x, _, _ = _copy_of_unwritten(sp.bool_, POISON)
    assert eng.read_tensor(x).all()
    eng, x, y, _ = _copy_of_unwritten(sp.float16, POISON)
    eng.write_tensor(x, [1, 2, 3, 4])
    eng.run(0)
    assert eng.read_tensor(y).tolist() == [1, 2, 3, 4]  # written values are values
    eng.run(1)  # WriteUndef: the values are undefined again
    assert np.isnan(eng.read_tensor(y)).all()


def test_without_poison_unwritten_memory_reads_zero():
    eng, _, y, _ = _copy_of_unwritten(sp.float32, None)
    eng.run(0)
    assert eng.read_tensor(y).tolist() == [0.0] * 4


def test_poison_option_can_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("SOFTIPU_ENGINE_OPTIONS", '{"debug.poisonUnwritten": true}')
    eng, _, y, _ = _copy_of_unwritten(sp.float32, None)
    assert eng.options.poison_unwritten
    assert not _copy_of_unwritten(sp.float32, {"debug.poisonUnwritten": False})[0].options.poison_unwritten
    monkeypatch.setenv("SOFTIPU_ENGINE_OPTIONS", '{"debug.poisonUnwriten": true}')
    with pytest.raises(sp.OptionError, match="SOFTIPU_ENGINE_OPTIONS.*did you mean 'debug.poisonUnwritten'"):
        _copy_of_unwritten(sp.float32, None)
    monkeypatch.setenv("SOFTIPU_ENGINE_OPTIONS", "{not json")
    with pytest.raises(sp.OptionError, match="SOFTIPU_ENGINE_OPTIONS.*JSON"):
        _copy_of_unwritten(sp.float32, None)
