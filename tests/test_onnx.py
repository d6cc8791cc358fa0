"""The ONNX frontend: models exported by ``torch.onnx.export`` against onnxruntime (the oracle),
onnxruntime's session API, a fixed subset of ONNX's own backend node tests, and bad input."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

from onnx import TensorProto as T  # noqa: E402
from onnx import helper  # noqa: E402

import softipu as sp  # noqa: E402
import softipu.onnx as so  # noqa: E402
from softipu.frontends.errors import LoweringError  # noqa: E402

OPTS = so.Options(target=sp.targets.ipu_model(tiles=16, bytes_per_tile=1 << 20))


def export(module: torch.nn.Module, *args: torch.Tensor, **kwargs) -> bytes:
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), args, f, dynamo=False, opset_version=17, **kwargs)
    return f.getvalue()


def against_ort(data: bytes, feeds: dict[str, np.ndarray]) -> None:
    sess = so.InferenceSession(data, OPTS)
    got = sess.run(None, feeds)
    want = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
    assert sess.report.cycles > 0 and sess.cycle_count > 0


class CNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        return self.fc(torch.flatten(y, 1))


class Encoder(torch.nn.Module):
    """A pre-written transformer encoder layer (legacy export of nn.TransformerEncoderLayer fails)."""

    def __init__(self, d: int = 16, heads: int = 2, causal: bool = False) -> None:
        super().__init__()
        self.heads, self.causal = heads, causal
        self.qkv, self.o = torch.nn.Linear(d, 3 * d), torch.nn.Linear(d, d)
        self.n1, self.n2 = torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)
        self.f1, self.f2 = torch.nn.Linear(d, 2 * d), torch.nn.Linear(2 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5
        if self.causal:
            scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
        a = torch.softmax(scores, dim=-1) @ v
        x = self.n1(x + self.o(a.transpose(1, 2).reshape(b, t, d)))
        return self.n2(x + self.f2(torch.nn.functional.gelu(self.f1(x))))


def test_mlp_matches_onnxruntime() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x = torch.randn(2, 4)
    against_ort(export(net, x, input_names=["x"]), {"x": x.numpy()})


def test_cnn_with_batch_norm_matches_onnxruntime() -> None:
    torch.manual_seed(1)
    net = CNN()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 8, 8)
    # Without constant folding the BatchNormalization node stays in the graph.
    data = export(net, x, input_names=["x"], do_constant_folding=False,
                  training=torch.onnx.TrainingMode.PRESERVE)
    assert "BatchNormalization" in [n.op_type for n in onnx.load_from_string(data).graph.node]
    against_ort(data, {"x": x.numpy()})


@pytest.mark.parametrize("causal", [False, True], ids=["encoder", "decoder"])
def test_transformer_layer_matches_onnxruntime(causal: bool) -> None:
    torch.manual_seed(2)
    x = torch.randn(2, 5, 16)
    against_ort(export(Encoder(causal=causal), x, input_names=["x"]), {"x": x.numpy()})


def test_dynamic_batch_compiles_per_shape() -> None:
    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh())
    data = export(net, torch.randn(2, 4), input_names=["x"], output_names=["y"],
                  dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    sess = so.InferenceSession(data, OPTS)
    assert sess.get_inputs()[0].shape == ["batch", 4]
    for n in (1, 3):
        x = np.random.default_rng(n).standard_normal((n, 4)).astype(np.float32)
        np.testing.assert_allclose(sess.run(["y"], {"x": x})[0], net(torch.from_numpy(x)).detach().numpy(),
                                   rtol=1e-5, atol=1e-6)


def _model(nodes, inputs, outputs, opset: int = 17, inits=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_session_api_like_onnxruntime() -> None:
    w = np.arange(6, dtype=np.float32).reshape(3, 2)
    m = _model([helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Shape", ["y"], ["s"])],
               [helper.make_tensor_value_info("x", T.FLOAT, [4, 3])],
               [helper.make_tensor_value_info("y", T.FLOAT, [4, 2]),
                helper.make_tensor_value_info("s", T.INT64, [2])],
               inits=[onnx.numpy_helper.from_array(w, "w")])
    sess = so.InferenceSession(m.SerializeToString(), OPTS)
    assert [(i.name, i.shape, i.type) for i in sess.get_inputs()] == [("x", [4, 3], "tensor(float)")]
    assert [(o.name, o.type) for o in sess.get_outputs()] == [("y", "tensor(float)"), ("s", "tensor(int64)")]
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    s, y = sess.run(["s", "y"], {"x": x})
    np.testing.assert_array_equal(y, x @ w)  # small integers: exact in fp32
    assert s.dtype == np.int64 and s.tolist() == [4, 2]
    assert sess.lowered.weight_names == ("w",)


def test_int64_data_runs_as_int32_and_comes_back_int64() -> None:
    m = _model([helper.make_node("Add", ["a", "b"], ["c"])],
               [helper.make_tensor_value_info("a", T.INT64, [3]), helper.make_tensor_value_info("b", T.INT64, [3])],
               [helper.make_tensor_value_info("c", T.INT64, [3])])
    sess = so.InferenceSession(m, OPTS)
    c = sess.run(None, {"a": np.array([1, -2, 3]), "b": np.array([10, 20, 30])})[0]
    assert c.dtype == np.int64 and c.tolist() == [11, 18, 33]
    with pytest.raises(so.InputError, match="beyond"):
        sess.run(None, {"a": np.array([2**40, 0, 0]), "b": np.zeros(3, np.int64)})


# -- ONNX's own node tests: a fixed subset (the full run is python -m softipu.frontends.onnx.conformance)
SUBSET_MODULES = ["relu", "add", "gemm", "reshape", "slice", "transpose", "softmax", "where", "gather"]


def test_backend_node_test_subset() -> None:
    from softipu.frontends.onnx import conformance

    cases = [c for c in conformance.collect(SUBSET_MODULES)
             if c.model.graph.node[0].op_type in {"Relu", "Add", "Gemm", "Reshape", "Slice", "Transpose",
                                                   "Softmax", "Where", "Gather"}]
    outcomes = [conformance.run_case(c) for c in cases]
    counted = [o for o in outcomes if o.status != "excluded"]
    failed = [f"{o.name}: {o.reason}" for o in counted if o.status == "fail"]
    assert len(counted) >= 55
    assert not failed, "\n".join(failed)


# -- bad input ------------------------------------------------------------------------------------------
def _relu_model() -> onnx.ModelProto:
    return _model([helper.make_node("Relu", ["x"], ["y"])], [helper.make_tensor_value_info("x", T.FLOAT, [2, 3])],
                  [helper.make_tensor_value_info("y", T.FLOAT, [2, 3])])


def test_truncated_and_corrupt_files(tmp_path) -> None:
    data = _relu_model().SerializeToString()
    with pytest.raises(so.OnnxModelError, match="not an ONNX model|not valid|no ONNX graph"):
        so.InferenceSession(data[: len(data) // 2], OPTS)
    with pytest.raises(so.OnnxModelError):
        so.InferenceSession(b"\xff\xfe garbage \x00\x01", OPTS)
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[:7])
    with pytest.raises(so.OnnxModelError, match="cut.onnx"):
        so.InferenceSession(str(path), OPTS)
    with pytest.raises(so.OnnxModelError, match="cannot read"):
        so.InferenceSession(str(tmp_path / "missing.onnx"), OPTS)


def test_unknown_ops_listed_at_once_with_node_names() -> None:
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="ok"),
             helper.make_node("Frobnicate", ["a"], ["b"], name="frob1", domain="my.ops"),
             helper.make_node("Frobnicate", ["b"], ["c"], name="frob2", domain="my.ops"),
             helper.make_node("Twiddle", ["c"], ["y"], name="twid", domain="my.ops")]
    m = _model(nodes, [helper.make_tensor_value_info("x", T.FLOAT, [2])],
               [helper.make_tensor_value_info("y", T.FLOAT, [2])])
    m.opset_import.append(helper.make_opsetid("my.ops", 1))
    with pytest.raises(so.UnsupportedOpsError) as info:
        so.InferenceSession(m, OPTS)
    text = str(info.value)
    assert "frob1" in text and "frob2" in text and "twid" in text
    assert set(info.value.ops) == {"my.ops::Frobnicate", "my.ops::Twiddle"}


def test_unknown_opset_is_refused() -> None:
    m = _relu_model()
    m.opset_import[0].version = onnx.defs.onnx_opset_version() + 5
    with pytest.raises(so.OnnxModelError, match="opset"):
        so.InferenceSession(m.SerializeToString(), OPTS)


def test_external_data_outside_the_folder_is_never_read(tmp_path) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.ones(6, np.float32).tobytes())
    folder = tmp_path / "model"
    folder.mkdir()
    w = onnx.numpy_helper.from_array(np.zeros((2, 3), np.float32), "w")
    m = _model([helper.make_node("Add", ["x", "w"], ["y"])], [helper.make_tensor_value_info("x", T.FLOAT, [2, 3])],
               [helper.make_tensor_value_info("y", T.FLOAT, [2, 3])], inits=[w])
    init = m.graph.initializer[0]
    init.ClearField("raw_data")
    init.data_location = T.EXTERNAL
    for key, value in (("location", "../secret.bin"), ("length", "24")):
        entry = init.external_data.add()
        entry.key, entry.value = key, value
    path = folder / "m.onnx"
    path.write_bytes(m.SerializeToString())
    with pytest.raises(so.OnnxModelError, match="outside the model's folder"):
        so.InferenceSession(str(path), OPTS)
    init.external_data[0].value = "w.bin"  # inside the folder: read
    (folder / "w.bin").write_bytes(np.arange(6, dtype=np.float32).tobytes())
    path.write_bytes(m.SerializeToString())
    y = so.InferenceSession(str(path), OPTS).run(None, {"x": np.ones((2, 3), np.float32)})[0]
    np.testing.assert_array_equal(y, np.arange(6, dtype=np.float32).reshape(2, 3) + 1)


def test_feeds_of_wrong_name_shape_or_dtype() -> None:
    sess = so.InferenceSession(_relu_model(), OPTS)
    with pytest.raises(so.InputError, match="unknown name.*'X'.*'x'"):
        sess.run(None, {"X": np.zeros((2, 3), np.float32)})
    with pytest.raises(so.InputError, match=r"shape \[2, 3\].*\[3, 2\]"):
        sess.run(None, {"x": np.zeros((3, 2), np.float32)})
    with pytest.raises(so.InputError, match=r"tensor\(float\).*tensor\(double\).*float32"):
        sess.run(None, {"x": np.zeros((2, 3))})
    with pytest.raises(so.InputError, match="no output named 'z'"):
        sess.run(["z"], {"x": np.zeros((2, 3), np.float32)})


def test_huge_initializer_refused_before_reading() -> None:
    t = T(name="w", data_type=T.FLOAT, dims=[1 << 20, 1 << 20])
    m = _model([helper.make_node("Add", ["x", "w"], ["y"])], [helper.make_tensor_value_info("x", T.FLOAT, [1])],
               [helper.make_tensor_value_info("y", T.FLOAT, [1])], inits=[t])
    with pytest.raises(so.OnnxModelError, match="GiB"):
        so.InferenceSession(m.SerializeToString(), OPTS)


class Recurrent(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = torch.nn.LSTM(6, 8, batch_first=True)
        self.gru = torch.nn.GRU(8, 5, bidirectional=True)
        self.head = torch.nn.Linear(10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.lstm(x)
        z, _ = self.gru(y.transpose(0, 1))
        return self.head(z[-1])


def test_lstm_and_gru_match_onnxruntime() -> None:
    torch.manual_seed(4)
    x = torch.randn(2, 5, 6)
    data = export(Recurrent(), x, input_names=["x"])
    assert {"LSTM", "GRU"} <= {n.op_type for n in onnx.load_from_string(data).graph.node}
    against_ort(data, {"x": x.numpy()})


def test_fp16_precision_holds_floats_as_half() -> None:
    torch.manual_seed(5)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))
    x = torch.randn(3, 8)
    data = export(net, x, input_names=["x"])
    sess = so.InferenceSession(data, so.Options(target=OPTS.target, precision="fp16"))
    got = sess.run(None, {"x": x.numpy()})[0]
    assert got.dtype == np.float32  # the model's type on the host
    assert all(dtype.name == "float16" for _, dtype in [(w, v.dtype) for w, v in sess.lowered.weights])
    want = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    np.testing.assert_allclose(got, want, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("attrs", [{}, {"strides": [2, 1, 2], "pads": [1, 0, 1, 1, 0, 1], "group": 2},
                                   {"dilations": [2, 1, 1], "pads": [0, 1, 1, 1, 1, 0]}])
def test_conv_3d_matches_onnxruntime(attrs: dict) -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, 6, 5, 7)).astype(np.float32)
    w = rng.standard_normal((6, 4 // attrs.get("group", 1), 3, 2, 3)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], **attrs)
    graph = helper.make_graph([node], "conv3d", [helper.make_tensor_value_info("x", T.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y", T.FLOAT, list("nodhw"))],
                              initializer=[onnx.numpy_helper.from_array(w, "w"),
                                           onnx.numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    against_ort(model.SerializeToString(), {"x": x})


def test_det_matches_numpy_and_refuses_large_matrices() -> None:
    rng = np.random.default_rng(4)
    for n in (1, 3, 4):
        x = rng.standard_normal((2, 3, n, n)).astype(np.float32)
        graph = helper.make_graph([helper.make_node("Det", ["x"], ["y"])], "det",
                                  [helper.make_tensor_value_info("x", T.FLOAT, x.shape)],
                                  [helper.make_tensor_value_info("y", T.FLOAT, [2, 3])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        got = so.InferenceSession(model.SerializeToString(), OPTS).run(None, {"x": x})[0]
        np.testing.assert_allclose(got, np.linalg.det(x.astype(np.float64)), rtol=1e-5, atol=1e-5)
    graph = helper.make_graph([helper.make_node("Det", ["x"], ["y"], name="big")], "det",
                              [helper.make_tensor_value_info("x", T.FLOAT, [5, 5])],
                              [helper.make_tensor_value_info("y", T.FLOAT, [])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(LoweringError, match=r"big.*5x5.*numpy.linalg.det"):
        so.InferenceSession(model.SerializeToString(), OPTS)


def test_new_ops_pass_onnx_node_tests() -> None:
    """ONNX's own expected outputs for Det, MaxUnpool and RoiAlign (the oracle is onnx's data)."""
    from softipu.frontends.onnx import conformance

    cases = [c for c in conformance.collect(["det", "maxunpool", "roialign"])
             if c.model.graph.node[0].op_type in {"Det", "MaxUnpool", "RoiAlign"}]
    outcomes = [conformance.run_case(c) for c in cases]
    assert len(outcomes) == 7
    failed = [f"{o.name}: {o.reason}" for o in outcomes if o.status != "pass"]
    assert not failed, "\n".join(failed)


def test_conv_transpose_3d_matches_torch() -> None:
    """A 3-d ConvTranspose (strides, pads, output_padding, groups, bias): one 2-d convolution per
    depth tap of the flipped kernel over the zero-dilated input, vs torch's conv_transpose3d."""
    import torch  # noqa: PLC0415

    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, 4, 3, 4, 3)).astype(np.float32)
    w = rng.standard_normal((4, 1, 2, 3, 2)).astype(np.float32)  # [C_in, C_out/groups, kd, kh, kw]
    b = rng.standard_normal(2).astype(np.float32)
    attrs = {"strides": [2, 1, 2], "pads": [0, 1, 1, 1, 0, 0], "output_padding": [1, 0, 0], "group": 2}
    # ONNX's pads are begin/end per axis: (0, 1, 1) begin and (1, 0, 0) end trim the full output as below.
    full = torch.nn.functional.conv_transpose3d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b),
                                                stride=(2, 1, 2), output_padding=(1, 0, 0), groups=2)
    want = full[:, :, 0:full.shape[2] - 1, 1:, 1:].numpy()
    m = _model([helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], **attrs)],
               [helper.make_tensor_value_info("x", T.FLOAT, list(x.shape))],
               [helper.make_tensor_value_info("y", T.FLOAT, [1, 2, 6, 5, 5])],
               inits=[onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(b, "b")])
    (got,) = so.InferenceSession(m.SerializeToString(), OPTS).run(None, {"x": x})
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_lp_normalization_of_a_zero_slice_is_zero() -> None:
    """A slice whose norm is 0 normalises to zeros (ONNX: ``where(norm == 0, 0, x / norm)``), not NaN."""
    x = np.array([[[1, 2, 2], [3, 4, 0]], [[0, 5, 5], [6, 8, 0]]], np.float32)
    m = _model([helper.make_node("LpNormalization", ["x"], ["y"], axis=0, p=2)],
               [helper.make_tensor_value_info("x", T.FLOAT, list(x.shape))],
               [helper.make_tensor_value_info("y", T.FLOAT, list(x.shape))])
    (got,) = so.InferenceSession(m.SerializeToString(), OPTS).run(None, {"x": x})
    norm = np.sqrt((x.astype(np.float64) ** 2).sum(axis=0, keepdims=True))
    want = np.divide(x, norm, out=np.zeros_like(x, np.float64), where=norm != 0)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert got[0, 1, 2] == 0 and got[1, 1, 2] == 0


def test_host_folding_follows_the_models_opset() -> None:
    """An opset-11 Unsqueeze (``axes`` an attribute) of a constant folds on the host at opset 11 (onnx's
    reference evaluator given a bare node would run it at its latest opset and refuse the attribute)."""
    m = _model([helper.make_node("Constant", [], ["c"], value=helper.make_tensor("v", T.INT64, [], [3])),
                helper.make_node("Unsqueeze", ["c"], ["u"], axes=[0]),
                helper.make_node("Expand", ["x", "u"], ["y"])],
               [helper.make_tensor_value_info("x", T.FLOAT, [1])],
               [helper.make_tensor_value_info("y", T.FLOAT, [3])], opset=11)
    sess = so.InferenceSession(m.SerializeToString(), OPTS)
    (got,) = sess.run(None, {"x": np.array([2.5], np.float32)})
    np.testing.assert_array_equal(got, np.full(3, 2.5, np.float32))


def test_batch_norm_training_mode_matches_numpy() -> None:
    """BatchNormalization ``training_mode=1``: the batch's own mean and population variance over every axis
    but the channels, and running statistics ``momentum * running + (1 - momentum) * batch`` (numpy)."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((3, 2, 4, 5)).astype(np.float32)
    s, b = np.array([1.5, 0.5], np.float32), np.array([0.1, -0.2], np.float32)
    rm, rv = np.array([0.3, -0.1], np.float32), np.array([1.2, 0.8], np.float32)
    vi = helper.make_tensor_value_info
    m = _model([helper.make_node("BatchNormalization", ["x", "s", "b", "rm", "rv"], ["y", "m", "v"],
                                 training_mode=1, momentum=0.8, epsilon=1e-3)],
               [vi("x", T.FLOAT, list(x.shape))],
               [vi("y", T.FLOAT, list(x.shape)), vi("m", T.FLOAT, [2]), vi("v", T.FLOAT, [2])], opset=15,
               inits=[onnx.numpy_helper.from_array(a, n) for a, n in ((s, "s"), (b, "b"), (rm, "rm"), (rv, "rv"))])
    y, mean, var = so.InferenceSession(m.SerializeToString(), OPTS).run(None, {"x": x})
    xd = x.astype(np.float64)
    bm, bv = xd.mean(axis=(0, 2, 3)), xd.var(axis=(0, 2, 3))
    want = (xd - bm[:, None, None]) / np.sqrt(bv[:, None, None] + 1e-3) * s[:, None, None] + b[:, None, None]
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(mean, 0.8 * rm + 0.2 * bm, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(var, 0.8 * rv + 0.2 * bv, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reduction", ["max", "min", "mul"])
def test_scatter_reductions_with_repeated_indices_match_numpy(reduction: str) -> None:
    """ScatterElements / ScatterND with reduction max/min/mul: repeated indices all combine (numpy's
    ufunc.at is the oracle), elements no update reaches keep their data."""
    rng = np.random.default_rng(9)
    ufunc = {"max": np.maximum, "min": np.minimum, "mul": np.multiply}[reduction]
    x = rng.standard_normal((3, 4)).astype(np.float32)
    idx = np.array([[0, 2, 0], [3, 3, 1], [0, 0, 0]], np.int64)  # repeats along axis 1, negative none
    upd = rng.standard_normal((3, 3)).astype(np.float32)
    want = x.copy()
    ufunc.at(want, (np.repeat(np.arange(3), 3).reshape(3, 3), idx), upd)
    vi = helper.make_tensor_value_info
    m = _model([helper.make_node("ScatterElements", ["x", "i", "u"], ["y"], axis=1, reduction=reduction)],
               [vi("x", T.FLOAT, [3, 4]), vi("i", T.INT64, [3, 3]), vi("u", T.FLOAT, [3, 3])],
               [vi("y", T.FLOAT, [3, 4])], opset=18)
    (got,) = so.InferenceSession(m.SerializeToString(), OPTS).run(None, {"x": x, "i": idx, "u": upd})
    np.testing.assert_allclose(got, want, rtol=1e-6)
    xi = rng.integers(-5, 5, (4, 2)).astype(np.int32)
    rows = np.array([[1], [3], [1], [-1]], np.int64)  # row 1 twice, -1 is row 3
    ui = rng.integers(-3, 4, (4, 2)).astype(np.int32)
    want_i = xi.copy()
    ufunc.at(want_i, rows[:, 0] % 4, ui)
    m = _model([helper.make_node("ScatterND", ["x", "i", "u"], ["y"], reduction=reduction)],
               [vi("x", T.INT32, [4, 2]), vi("i", T.INT64, [4, 1]), vi("u", T.INT32, [4, 2])],
               [vi("y", T.INT32, [4, 2])], opset=18)
    (got,) = so.InferenceSession(m.SerializeToString(), OPTS).run(None, {"x": xi, "i": rows, "u": ui})
    np.testing.assert_array_equal(got, want_i)
