"""The one Registry type (style rule 4), the ATen lowering registry on it, and the coverage doc."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import softipu.torch as st
from softipu.errors import SoftIPUError
from softipu.frontends import Registry, RegistryError
from softipu.frontends.torch.coverage import core_aten_ops, coverage, markdown
from softipu.frontends.torch.registry import find_lowering, op_name

DOC = Path(__file__).resolve().parents[1] / "docs" / "torch_coverage.md"


def test_register_lookup_and_iterate_in_name_order():
    r = Registry("colour")
    r.register("red", 1)
    r.register("blue", 2)
    assert r.lookup("red") == 1 and r["blue"] == 2
    assert list(r) == ["blue", "red"] and len(r) == 2 and "red" in r and "green" not in r
    assert r.items() == [("blue", 2), ("red", 1)]
    assert r.get("green") is None and r.get("green", 3) == 3


def test_duplicates_are_refused_unless_overridden():
    r = Registry("colour")
    r.register("red", 1)
    with pytest.raises(RegistryError, match="colour 'red' is already registered.*override=True"):
        r.register("red", 2)
    assert r["red"] == 1
    r.register("red", 2, override=True)
    assert r["red"] == 2


def test_a_miss_lists_near_names_and_the_hint():
    r = Registry("ATen lowering", hint="register one")
    for name in ("aten::add.Tensor", "aten::addmm", "aten::relu"):
        r.register(name, object())
    with pytest.raises(RegistryError) as info:
        r.lookup("aten::add.Tensr")
    message = str(info.value)
    assert "no ATen lowering named 'aten::add.Tensr'" in message
    assert "did you mean 'aten::add.Tensor'" in message and message.split(" (at ")[0].endswith("(register one)")
    assert isinstance(info.value, SoftIPUError) and isinstance(info.value, KeyError)
    assert "the registry is empty" in Registry("thing").miss_message("x")


def test_decorator_form_unregister_and_bad_names():
    r = Registry("codelet")

    @r.register("AddOne")
    def add_one(x):
        return x + 1

    assert r["AddOne"] is add_one
    assert r.unregister("AddOne") is add_one and "AddOne" not in r
    with pytest.raises(RegistryError):
        r.unregister("AddOne")
    with pytest.raises(RegistryError, match="non-empty string"):
        r.register("", 1)


def test_register_lowering_checks_the_name_and_refuses_duplicates():
    with pytest.raises(RegistryError, match="did you mean 'aten::relu'"):
        st.register_lowering("relu", lambda ctx, node, x: x)
    with pytest.raises(RegistryError, match="'aten::relu' is already registered"):
        st.register_lowering("aten::relu", lambda ctx, node, x: x)
    with pytest.raises(RegistryError, match="register 'aten::max', not 'aten::max.default'"):
        st.register_lowering("aten::max.default", lambda ctx, node, x: x)
    with pytest.raises(RegistryError, match="must be callable"):
        st.register_lowering("aten::my_test_op", 3)
    fn = st.register_lowering("aten::my_test_op", lambda ctx, node, x: x)
    try:
        assert st.LOWERINGS["aten::my_test_op"].fn is fn
    finally:
        st.LOWERINGS.unregister("aten::my_test_op")


def test_op_names_and_overload_fallback():
    assert op_name(torch.ops.aten.add.Tensor) == "aten::add.Tensor"
    assert op_name(torch.ops.aten.relu.default) == "aten::relu"
    assert op_name(torch.ops.higher_order.cond) == "higher_order::cond"
    name, lowering = find_lowering(torch.ops.aten.add.Scalar)  # covered by "aten::add"
    assert name == "aten::add.Scalar" and lowering is st.LOWERINGS["aten::add"]
    assert find_lowering(torch.ops.aten._fft_c2r.default) == ("aten::_fft_c2r", None)  # complex: never


def test_coverage_counts_and_the_doc_is_current():
    names = core_aten_ops()
    assert "aten::add.Tensor" in names and "aten::convolution" in names and len(names) > 150
    rows = {r.name: r.status for r in coverage()}
    assert rows["aten::addmm"] == "lowered" and rows["aten::sym_size.int"] == "n/a"
    assert rows["aten::convolution_backward"] == "lowered"  # the training lowerings
    assert rows["aten::native_layer_norm_backward"] == "training"  # left to the decompositions
    assert DOC.read_text() == markdown(), (
        "docs/torch_coverage.md is out of date: run "
        "`python -m softipu.frontends.torch.coverage > docs/torch_coverage.md`")


def test_docstring_examples():
    import doctest

    import softipu.frontends.registry
    import softipu.frontends.torch.options
    import softipu.frontends.torch.registry
    import softipu.frontends.torch.runtime

    for module in (softipu.frontends.registry, softipu.frontends.torch.options,
                   softipu.frontends.torch.registry, softipu.frontends.torch.runtime, st):
        result = doctest.testmod(module)
        assert result.failed == 0, module.__name__
