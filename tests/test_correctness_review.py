"""The review's correctness findings (issue 10), one test each, every one failing before its fix.

* Values that do not fit the device dtype (int64 -> int32, float64 -> float32) are an error
  naming the input, weight or constant and the value, never a silent wrap.
* ``debug.poisonUnwritten`` makes memory nothing wrote read as NaN / a pattern, not zeros.
* Errors name the user's line: a missing tile in ``set_tile_mappings``, an index or a slice out of
  range (slices no longer clamp), a ``write_tensor`` of the wrong shape, a raising ``cycles()``.
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


def test_without_poison_unwritten_memory_reads_zero(monkeypatch):
    monkeypatch.delenv("SOFTIPU_ENGINE_OPTIONS", raising=False)  # conftest poisons this file's engines
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
    monkeypatch.setenv("SOFTIPU_ENGINE_OPTIONS", '{"debug.poisonUnwritten": "true"}')  # Poplar's style
    with pytest.raises(sp.OptionError, match=r"'debug.poisonUnwritten' \(in \$SOFTIPU_ENGINE_OPTIONS\) "
                                             "takes a bool"):
        _copy_of_unwritten(sp.float32, None)
    with pytest.raises(sp.OptionError, match=r"'debug.poisonUnwritten' takes a bool"):  # given in code
        _copy_of_unwritten(sp.float32, {"debug.poisonUnwritten": 1})
    monkeypatch.setenv("SOFTIPU_ENGINE_OPTIONS", "{not json")
    with pytest.raises(sp.OptionError, match="SOFTIPU_ENGINE_OPTIONS.*JSON"):
        _copy_of_unwritten(sp.float32, None)


# -- errors name the object, the user's line and what to do ----------------------------------------------
def _line_of(marker: str) -> int:
    """The line of this file holding ``marker`` (the statement whose error must point at it)."""
    with open(__file__) as f:
        return next(i for i, line in enumerate(f, 1) if marker in line and "_line_of" not in line)


def _at_line(err: pytest.ExceptionInfo, marker: str) -> None:
    assert f"test_correctness_review.py:{_line_of(marker)}" in str(err.value), str(err.value)


def test_set_tile_mappings_with_a_missing_tile_names_the_users_line():
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    x = g.add_variable(sp.float32, (3, 2), name="x")
    with pytest.raises(sp.MappingError, match=r"set_tile_mappings of x.*tile 9.*row 1.*tiles 0\.\.3") as err:
        g.set_tile_mappings(x, [0, 9, 1])  # MARK-set-tile-mappings
    _at_line(err, "MARK-set-tile-mappings")
    with pytest.raises(sp.MappingError, match="map_intervals of x.*tile -1") as err:
        g.map_intervals(x, [0], [6], [-1])  # MARK-map-intervals
    _at_line(err, "MARK-map-intervals")


def test_an_index_out_of_range_names_the_users_line():
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    x = g.add_variable(sp.float32, (8,), name="x")
    m = g.add_variable(sp.float32, (8, 3), name="m")
    with pytest.raises(sp.TensorError, match=r"index 12 is out of range for axis 0 of x.*0\.\.7") as err:
        x[12]  # MARK-index
    _at_line(err, "MARK-index")
    with pytest.raises(sp.TensorError, match=r"index -4 .*axis 1 of m") as err:
        m[2, -4]  # MARK-index-2d
    _at_line(err, "MARK-index-2d")


@pytest.mark.parametrize("key", [slice(5, 20), slice(-20, None), slice(9, None), slice(0, 8, 2)])
def test_a_slice_beyond_the_tensor_is_an_error_not_clamped(key):
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    x = g.add_variable(sp.float32, (8,), name="x")
    m = g.add_variable(sp.float32, (2, 8), name="m")
    if key == slice(0, 8, 2):  # in range: as numpy
        assert x[key].shape == (4,) and m[:, key].shape == (2, 4)
        return
    with pytest.raises(sp.TensorError, match=r"slice .* of x.*axis 0 of 8 elements.*-8\.\.8") as err:
        x[key]  # MARK-slice-1d
    _at_line(err, "MARK-slice-1d")
    with pytest.raises(sp.TensorError, match=r"slice .* of m.*axis 1") as err:
        m[0:1, key]  # MARK-slice-2d
    _at_line(err, "MARK-slice-2d")
    assert x[-8:8].shape == (8,) and x[5:3].shape == (0,)  # the whole range is fine, and empty slices


def test_write_tensor_of_the_wrong_shape_names_the_users_line():
    eng, x = _engine_with(sp.float32)
    with pytest.raises(EngineError, match=r"shape \(3,\) to tensor x.*it has shape \(2,\)") as err:
        eng.write_tensor(x, [1.0, 2.0, 3.0])  # MARK-write-shape
    _at_line(err, "MARK-write-shape")


class FailingEstimate(sp.Vertex):
    x = sp.Input(sp.float32)
    y = sp.Output(sp.float32)

    @staticmethod
    def compute(x, y):
        y[...] = x

    @staticmethod
    def cycles(x, y):
        raise ZeroDivisionError("division by zero")


def test_a_cycles_estimate_that_raises_names_the_codelet_and_the_users_line():
    g = sp.Graph(sp.targets.ipu_model(tiles=2))
    x = g.add_variable(sp.float32, (4,), name="x")
    y = g.add_variable(sp.float32, (4,), name="y")
    g.set_tile_mapping(x, 0)
    g.set_tile_mapping(y, 0)
    cs = g.add_compute_set("cs")
    g.add_vertex(cs, FailingEstimate, {"x": x, "y": y}, tile=0)  # MARK-vertex
    with pytest.raises(sp.CodeletError, match=r"cycles\(\) of codelet FailingEstimate.*ZeroDivisionError") as err:
        sp.Engine(g, [sp.program.Execute(cs)])
    _at_line(err, "MARK-vertex")


def test_write_tensor_of_another_graphs_tensor_names_the_users_line():
    eng, _ = _engine_with(sp.float32)
    _, elsewhere = _engine_with(sp.float32)
    with pytest.raises(EngineError, match="tensor x.*another graph") as err:
        eng.write_tensor(elsewhere, [1.0, 2.0])  # MARK-other-graph
    _at_line(err, "MARK-other-graph")
