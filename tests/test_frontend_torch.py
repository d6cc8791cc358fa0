"""softipu.torch against eager PyTorch: models, output structures, options and the errors.

Every model runs on a small ipu_model (fast to compile) and is compared with the module's own
eager output: fp32 within 1e-4 relative, fp16 within 1e-2.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import torch
from torch.utils import _pytree as pytree

import softipu as sp
import softipu.torch as st
from softipu.errors import OptionError, SoftIPUError
from softipu.frontends.torch import options as options_module
from softipu.ops import elementwise as ew

SMALL = sp.targets.ipu_model(tiles=8, bytes_per_tile=1024 * 1024)
OPTS = st.Options(target=SMALL)


@pytest.fixture(autouse=True)
def fresh_warnings():
    """Each test sees its own one-time warnings (they are once per process otherwise)."""
    options_module._WARNED.clear()
    yield


def close(got, want, rtol=1e-4):
    """Every tensor leaf of ``got`` within ``rtol`` of ``want`` (relative to its largest value)."""
    got_leaves, got_spec = pytree.tree_flatten(got)
    want_leaves, want_spec = pytree.tree_flatten(want)
    assert got_spec == want_spec, f"structure {got_spec} != {want_spec}"
    for g, w in zip(got_leaves, want_leaves, strict=True):
        if not isinstance(w, torch.Tensor):
            assert g == w
            continue
        assert g.shape == w.shape and g.dtype == w.dtype, (g.shape, g.dtype, w.shape, w.dtype)
        g, w = g.double(), w.detach().double()
        scale = max(float(w.abs().max()), 1e-6) if w.numel() else 1.0
        err = float((g - w).abs().max()) / scale if w.numel() else 0.0
        assert err <= rtol, f"relative error {err:.3g} > {rtol}"


def run(module, *args, options=OPTS, rtol=1e-4, **kwargs):
    torch.manual_seed(0)
    module.eval()
    model = st.inference_model(module, options)
    out = model(*args, **kwargs)
    with torch.no_grad():
        close(out, module(*args, **kwargs), rtol)
    return model, out


# -- models --------------------------------------------------------------------------------------------
class MLP(torch.nn.Module):
    def __init__(self, sizes=(16, 32, 32, 4)):
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(a, b) for a, b in zip(sizes, sizes[1:], strict=False))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x


def test_mlp_matches_eager_and_later_calls_only_stream():
    torch.manual_seed(1)
    net = MLP()
    model, _ = run(net, torch.randn(8, 16))
    assert model.cycle_count > 0 and set(model.compile_seconds) == {"export", "lower", "compile", "load"}
    engine = model.engine
    for seed in (2, 3):
        x = torch.randn(8, 16, generator=torch.Generator().manual_seed(seed))
        close(model(x), net(x))
    assert model.engine is engine  # no recompile
    runs = [index for index, _ in engine.log.runs]
    assert runs == [0, 1, 1, 1]  # weights loaded once, then three steps
    assert model.report.cycles > 0 and "step" in model.report.summary()


def test_weights_are_laid_out_for_their_consumers_not_copied_each_call():
    """Linear weights are created in their matmul's block layout and embedding tables in whole
    column blocks: no step of a call copies a parameter."""

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.words = torch.nn.Embedding(50, 24)
            self.up = torch.nn.Linear(24, 40)
            self.down = torch.nn.Linear(40, 24, bias=False)

        def forward(self, ids):
            return self.down(torch.relu(self.up(self.words(ids))))

    torch.manual_seed(2)
    model, _ = run(Net(), torch.randint(0, 50, (3, 5)))
    steps = model.engine.executable.steps
    copies = [s.name for s in steps if s.kind.name == "COPY"]
    assert not [c for c in copies if c.startswith(("Copy up.", "Copy down.", "Copy words."))], copies
    table = model.graph.variables[[v.name for v in model.graph.variables].index("words.weight")]
    assert table.shape == (24, 50)  # stored transposed: each tile's columns are one region


def test_fp16_precision_within_1e_2():
    torch.manual_seed(4)
    net = MLP()
    model, out = run(net, torch.randn(8, 16), options=OPTS.replace(precision="fp16"), rtol=1e-2)
    assert out.dtype == torch.float32  # outputs come back in the module's dtypes
    assert all(v.dtype is sp.float16 for v in model.graph.variables if v.name.startswith("layers"))


class CNN(torch.nn.Module):
    """Conv + batch norm stem, a residual block, max and adaptive average pooling, a classifier."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.c1 = torch.nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.b1 = torch.nn.BatchNorm2d(8)
        self.pool = torch.nn.MaxPool2d(2)
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, x):
        y = torch.relu(self.bn(self.stem(x)))
        y = torch.relu(y + self.b1(self.c1(y)))
        y = torch.nn.functional.adaptive_avg_pool2d(self.pool(y), 1)
        return self.fc(torch.flatten(y, 1))


def test_cnn_with_batch_norm_residual_and_pooling():
    torch.manual_seed(5)
    net = CNN()
    for bn in (net.bn, net.b1):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    run(net, torch.randn(2, 3, 12, 12))


def test_transformer_encoder_with_padding_mask():
    torch.manual_seed(6)
    layer = torch.nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    enc = torch.nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = enc

        def forward(self, x, pad):
            return self.enc(x, src_key_padding_mask=pad)

    pad = torch.zeros(2, 5, dtype=torch.bool)
    pad[1, 3:] = True
    run(Encoder(), torch.randn(2, 5, 16), pad)


def test_gpt_style_causal_attention():
    class Decoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = torch.nn.Linear(16, 48)
            self.norm = torch.nn.LayerNorm(16)

        def forward(self, x):
            q, k, v = self.qkv(self.norm(x)).view(2, 6, 3, 2, 8).permute(2, 0, 3, 1, 4)
            y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            return x + y.transpose(1, 2).reshape(2, 6, 16)

    torch.manual_seed(7)
    run(Decoder(), torch.randn(2, 6, 16))


@pytest.mark.parametrize("cell", [torch.nn.LSTM, torch.nn.GRU])
def test_recurrent_layers(cell):
    torch.manual_seed(8)
    run(cell(4, 8, batch_first=True), torch.randn(2, 3, 4))


def test_embedding_model_with_int64_ids():
    class Bag(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(20, 8)
            self.out = torch.nn.Linear(8, 3)

        def forward(self, ids):
            return self.out(torch.nn.functional.silu(self.emb(ids)).mean(1)).argmax(-1), self.emb(ids)

    torch.manual_seed(9)
    model, (labels, _) = run(Bag(), torch.randint(0, 20, (4, 5)))
    assert labels.dtype == torch.int64  # int32 on the device, int64 to the user


def test_torch_cond_lowers_to_if_and_runs_one_branch():
    class Gate(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)

        def forward(self, x):
            return torch.cond(x.sum() > 0, lambda x: self.lin(x) * 2, lambda x: x - 1, (x,))

    torch.manual_seed(10)
    gate = Gate()
    model, _ = run(gate, torch.ones(2, 4))
    cycles_true = model.cycle_count
    close(model(-torch.ones(2, 4)), gate(-torch.ones(2, 4)))
    assert model.cycle_count != cycles_true


# -- output structures -----------------------------------------------------------------------------------
@dataclasses.dataclass
class Pair:
    first: torch.Tensor
    second: torch.Tensor


pytree.register_dataclass(Pair)


def test_outputs_keep_the_module_structure():
    class Many(torch.nn.Module):
        def forward(self, x, scale: float = 2.0):
            y = x * scale
            return {"pair": Pair(y, x), "list": [y.sum(), None, 3], "t": (x.int(), x > 0)}

    run(Many(), torch.randn(3, 2), scale=3.0)


def test_hugging_face_style_model_output():
    from collections import OrderedDict

    class ModelOutput(OrderedDict):  # the shape of transformers.utils.ModelOutput
        pass

    pytree.register_pytree_node(
        ModelOutput, lambda o: (list(o.values()), list(o.keys())),
        lambda values, keys: ModelOutput(zip(keys, values, strict=True)),
        serialized_type_name="tests.ModelOutput")

    class Head(torch.nn.Module):
        def forward(self, x):
            return ModelOutput(logits=x * 2, hidden=x + 1)

    _, out = run(Head(), torch.randn(2, 3))
    assert isinstance(out, ModelOutput) and list(out) == ["logits", "hidden"]


# -- options ---------------------------------------------------------------------------------------------
def test_device_iterations_and_replication_and_output_modes():
    torch.manual_seed(11)
    net = torch.nn.Linear(4, 3).eval()
    x = torch.randn(12, 4)  # 3 iterations x 2 replicas x micro-batch 2
    base = OPTS.replace(device_iterations=3, replication_factor=2)
    model = st.inference_model(net, base)
    close(model(x), net(x))
    assert model.graph.replication_factor == 2
    final = st.inference_model(net, base.replace(output_mode=st.OutputMode.FINAL))
    close(final(x), net(x[8:]))
    summed = st.inference_model(net, base.replace(output_mode=st.OutputMode.SUM))
    close(summed(x), net(x).view(3, 4, 3).sum(0), rtol=1e-5)
    every = st.inference_model(net, base.replace(output_mode=st.OutputMode.EVERY_N, output_return_period=3))
    close(every(x), net(x[8:]))


def test_options_validate_themselves():
    with pytest.raises(OptionError, match="device_iterations must be an int >= 1"):
        st.Options(device_iterations=0)
    with pytest.raises(OptionError, match="available_memory_proportion"):
        st.Options(available_memory_proportion=1.5)
    with pytest.raises(OptionError, match="did you mean 'precision'"):
        st.Options().replace(precison="fp16")
    with pytest.warns(st.UnusedOptionWarning, match="syncPattern"):
        st.inference_model(torch.nn.ReLU(), st.Options(stored={"syncPattern": "full"}))


@pytest.fixture
def without_i0():
    """i0 and i0e as ops without a lowering: softipu lowers them, so the tests of unsupported ops
    set the built-in lowerings aside and put them back."""
    saved = {n: st.LOWERINGS[n] for n in ("aten::i0", "aten::special_i0e")}
    for n in saved:
        st.LOWERINGS.unregister(n)
    yield
    for n, lowering in saved.items():
        st.LOWERINGS.register(n, lowering, override=True)


@pytest.mark.usefixtures("without_i0")
def test_a_user_can_register_a_lowering():
    class Special(torch.nn.Module):
        def forward(self, x):
            return torch.special.i0(x)

    with pytest.raises(st.UnsupportedOpsError, match="aten::i0"):
        st.inference_model(Special(), OPTS)(torch.randn(3))

    def i0(ctx, node, x):  # a crude series, enough to show the mechanism
        e = ew.E
        y = e.square(e.mul(e.input(0), 0.5))
        expr = e.add(1.0, e.add(y, e.mul(e.square(y), 0.25)))
        return ew.map(ctx.graph, expr, [x], ctx.prog, name=ctx.name)

    st.register_lowering("aten::i0", i0)
    try:
        model = st.inference_model(Special(), OPTS)
        x = torch.tensor([0.0, 0.1, -0.2])
        close(model(x), torch.special.i0(x), rtol=1e-4)
    finally:
        st.LOWERINGS.unregister("aten::i0")


# -- errors ----------------------------------------------------------------------------------------------
class Unsupported(torch.nn.Module):
    def forward(self, x):
        y = torch.special.i0(x)  # first unsupported op
        z = torch.special.i0e(x) + torch.special.i0(y)  # two more uses, one new op
        return z.nan_to_num()


@pytest.mark.usefixtures("without_i0")
def test_unsupported_ops_are_all_listed_at_once_with_lines_before_compiling():
    model = st.inference_model(Unsupported(), OPTS)
    with pytest.raises(st.UnsupportedOpsError) as info:
        model(torch.randn(3))
    err = info.value
    assert set(err.ops) == {"aten::i0", "aten::special_i0e"}
    assert len(err.ops["aten::i0"]) == 2  # both lines
    message = str(err)
    assert "test_frontend_torch.py" in message and "y = torch.special.i0(x)" in message
    assert 'softipu.torch.register_lowering("aten::i0", fn)' in message
    assert isinstance(err, SoftIPUError)
    with pytest.raises(SoftIPUError, match="not been compiled"):
        model.report  # noqa: B018 - nothing was built


def test_data_dependent_control_flow_names_the_line_and_the_alternative():
    class Branchy(torch.nn.Module):
        def forward(self, x):
            if x.sum() > 0:  # the line the error must name
                return x
            return -x

    with pytest.raises(st.ExportError) as info:
        st.inference_model(Branchy(), OPTS)(torch.randn(4))
    message = str(info.value)
    assert "if x.sum() > 0:" in message and "test_frontend_torch.py" in message
    assert "torch.cond" in message and "torch.where" in message


def test_item_is_refused_with_advice():
    class Item(torch.nn.Module):
        def forward(self, x):
            return x * x.sum().item()

    with pytest.raises(st.UnsupportedOpsError, match=r"Tensor.item\(\).*keep it a tensor"):
        st.inference_model(Item(), OPTS)(torch.randn(4))


@pytest.mark.usefixtures("without_i0")
def test_unheld_dtypes_are_listed_up_front_with_the_line_and_the_alternative():
    class Brain(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 3).to(torch.bfloat16)  # bfloat16 weights

        def forward(self, x):
            y = x.bfloat16() * 2  # the line the error must name
            return torch.special.i0(self.lin(y).float())

    model = st.inference_model(Brain(), OPTS)
    with pytest.raises(st.UnsupportedOpsError) as info:
        model(torch.randn(2, 3))
    err, message = info.value, str(info.value)
    (bf16,) = [key for key in err.ops if key.startswith("torch.bfloat16")]
    assert "use torch.float16" in bf16 and "aten::i0" in err.ops  # every problem in one error
    assert "y = x.bfloat16() * 2" in message and "test_frontend_torch.py" in message
    assert "input or weight p_lin_weight" in message
    assert "1 dtype and 1 op" in message
    with pytest.raises(SoftIPUError, match="not been compiled"):
        model.report  # noqa: B018 - nothing was lowered


@pytest.mark.parametrize(("fn", "op", "advice"), [
    (torch.unique, "aten::_unique2", "number of distinct values"),
    (lambda x: torch.bincount(x.long()), "aten::bincount", "one_hot"),
], ids=["unique", "bincount"])
def test_data_dependent_shapes_are_refused_with_advice(fn, op, advice):
    class Counts(torch.nn.Module):
        def forward(self, x):
            return fn(x)

    with pytest.raises(st.UnsupportedOpsError) as info:
        st.inference_model(Counts(), OPTS)(torch.tensor([1.0, 2.0, 2.0, 0.0]))
    (key,) = info.value.ops  # the symbolic-size arithmetic after it is not listed
    assert key.startswith(op) and advice in key and "register_lowering" not in str(info.value)


def test_wrong_inputs_name_the_input(caplog):
    model = st.inference_model(torch.nn.Linear(4, 2), OPTS)
    model(torch.randn(3, 4))
    with pytest.raises(st.InputError, match=r"input 'input' is torch.float64 .*compiled for torch.float32"):
        model(torch.randn(3, 4, dtype=torch.float64))
    with pytest.raises(st.InputError, match=r"compiled for inputs \(input: float32\[3, 4\]\)"):
        model(torch.randn(3, 4), torch.randn(3, 4))
    with caplog.at_level(logging.WARNING, logger="softipu.torch"):
        assert model(torch.randn(5, 4)).shape == (5, 2)
    assert "inputs changed (input: float32[3, 4] -> [5, 4]); compiling again" in caplog.text
    strict = st.inference_model(torch.nn.Linear(4, 2), OPTS.replace(recompile_on_shape_change=False))
    strict(torch.randn(3, 4))
    with pytest.raises(st.InputError, match="compiled for other inputs"):
        strict(torch.randn(5, 4))
    iterating = st.inference_model(torch.nn.Linear(4, 2), OPTS.replace(device_iterations=2))
    with pytest.raises(st.InputError, match="multiple of 2"):
        iterating(torch.randn(3, 4))


@pytest.mark.usefixtures("without_i0")
def test_lowering_failures_name_the_op_and_line():
    def broken(ctx, node, x):
        raise ValueError("boom")

    st.register_lowering("aten::i0", broken)
    try:
        class Special(torch.nn.Module):
            def forward(self, x):
                return torch.special.i0(x)

        with pytest.raises(st.LoweringError, match=r"lowering aten::i0 \(node i0 from .*torch.special.i0.*boom"):
            st.inference_model(Special(), OPTS)(torch.randn(3))
    finally:
        st.LOWERINGS.unregister("aten::i0")


def test_compile_without_running_and_weight_updates():
    net = torch.nn.Linear(3, 2).eval()
    model = st.inference_model(net, OPTS)
    model.compile(torch.randn(2, 3))
    assert [index for index, _ in model.engine.log.runs] == [0]
    with torch.no_grad():
        net.weight.mul_(-1.0)
    x = torch.randn(2, 3)
    assert not torch.allclose(model(x), net(x))  # the device still has the old weights
    model.copy_weights_to_device()
    close(model(x), net(x))
    model.detach()
    assert not model.is_attached
    close(model(x), net(x))  # attaches again
    model.destroy()
    with pytest.raises(SoftIPUError, match="not been compiled"):
        model.cycle_count  # noqa: B018


def test_training_flag_is_restored_and_eval_semantics_are_used():
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.5))
    net.train()
    model = st.inference_model(net, OPTS)
    x = torch.randn(2, 4)
    out = model(x)
    assert net.training
    close(out, net.eval()(x))


def test_source_lines_reach_the_report():
    class Tiny(torch.nn.Module):
        def forward(self, x):
            return torch.exp(x)  # this line

    model = st.inference_model(Tiny(), OPTS)
    model(torch.randn(3))
    (cs,) = [c for c in model.graph.compute_sets if c.name == "exp"]
    assert cs.location.filename.endswith("test_frontend_torch.py")
    assert "return torch.exp(x)" in open(cs.location.filename).read().splitlines()[cs.location.lineno - 1]


def test_int_inputs_and_constants_round_trip():
    class Arith(torch.nn.Module):
        def forward(self, i, x):
            return i * 3 + 1, (i // 2), x / 2, torch.arange(4) + i[0], torch.full((2,), 7.5)

    run(Arith(), torch.tensor([5, -3, 8, 1]), torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert np.dtype(np.int32) == sp.int32.numpy  # int64 is held as int32 on the IPU
