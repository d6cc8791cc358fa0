"""Options.serial_loops: None (default) plans a matmul's serial split as one loop body for an
inference model and unrolled for a training model, whose steps all run on the host (the fast
engine runs an unrolled split as fused GEMM chains); True / False decide for either; anything
else is an error naming the option."""

import pytest
import torch

import softipu as sp
import softipu.torch as st
from _torch_models import LinearMSE
from softipu.errors import OptionError


def _train(**opts):
    module = LinearMSE()
    return st.training_model(module, torch.optim.SGD(module.parameters(), lr=0.1),
                             st.Options(target=sp.targets.ipu_model(tiles=4), **opts))


@pytest.mark.parametrize(("given", "loops"), [({}, False), ({"serial_loops": True}, True),
                                              ({"serial_loops": False}, False)])
def test_training_models_unroll_unless_told(given, loops):
    model = _train(**given)
    assert model.options.matmul_options()["serialLoops"] is loops


@pytest.mark.parametrize(("value", "loops"), [(None, True), (True, True), (False, False)])
def test_inference_options_loop_unless_told(value, loops):
    assert st.Options(serial_loops=value).matmul_options(half=True)["serialLoops"] is loops


def test_a_bad_value_names_the_option():
    with pytest.raises(OptionError, match="serial_loops"):
        st.Options(serial_loops="yes")
