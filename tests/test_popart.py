"""softipu.popart: PopART's Builder -> InferenceSession -> run workflow, against numpy oracles."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")

import softipu.popart as popart  # noqa: E402


def _device() -> popart.DeviceInfo:
    return popart.DeviceManager().createIpuModelDevice({"numIPUs": 1, "tilesPerIPU": 8})


def _mlp() -> tuple[popart.Builder, str, str, str, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((4, 6)).astype(np.float32)
    w2 = rng.standard_normal((6, 3)).astype(np.float32)
    b = popart.Builder()
    x = b.addInputTensor(popart.TensorInfo("FLOAT", [2, 4]), "x")
    with b.virtualGraph(0):
        h = b.aiOnnx.relu([b.aiOnnx.matmul([x, b.addInitializedInputTensor(w1, "w1")])])
    y = b.aiOnnx.softmax([b.aiOnnx.matmul([h, b.addInitializedInputTensor(w2, "w2")])], axis=1)
    b.addOutputTensor(y)
    return b, x, h, y, w1, w2


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("kind,period", [("ALL", 1), ("FINAL", 1), ("SUM", 1), ("EVERYN", 2)])
def test_builder_inference_session_anchors(kind: str, period: int) -> None:
    b, x, h, y, w1, w2 = _mlp()
    bps = 4
    flow = popart.DataFlow(bps, {y: popart.AnchorReturnType(kind, period), h: popart.AnchorReturnType("ALL")})
    session = popart.InferenceSession(b.getModelProto(), flow, _device())
    session.prepareDevice()
    session.weightsFromHost()
    anchors = session.initAnchorArrays()
    data = np.random.default_rng(1).standard_normal((bps, 2, 4)).astype(np.float32)
    session.run(popart.PyStepIO({x: data}, anchors))
    hidden = np.maximum(data @ w1, 0)
    want = _softmax(hidden @ w2)
    expected = {"ALL": want, "FINAL": want[-1], "SUM": want.sum(0), "EVERYN": want[1::2]}[kind]
    np.testing.assert_allclose(anchors[y], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(anchors[h], hidden, rtol=1e-5, atol=1e-6)  # an intermediate tensor anchored
    assert session.getCycleCount() > 0 and session.report.cycles > 0


def test_nll_and_identity_losses_match_numpy() -> None:
    b = popart.Builder()
    probs = b.addInputTensor(popart.TensorInfo("FLOAT", [4, 5]))
    labels = b.addInputTensor(popart.TensorInfo("INT32", [4]))
    nll = b.aiGraphcore.nllloss([probs, labels], reduction=popart.ReductionType.Mean)
    ident = b.aiGraphcore.identityloss([probs], reduction=popart.ReductionType.Sum)
    for t in (nll, ident):
        b.addOutputTensor(t)
    flow = popart.DataFlow(1, [nll, ident])
    session = popart.InferenceSession(b.getModelProto(), flow, popart.DeviceManager().createCpuDevice())
    session.prepareDevice()
    session.weightsFromHost()
    anchors = session.initAnchorArrays()
    p = _softmax(np.random.default_rng(2).standard_normal((4, 5))).astype(np.float32)
    lab = np.array([0, 3, 4, 1], np.int32)
    session.run(popart.PyStepIO({probs: p, labels: lab}, anchors))
    np.testing.assert_allclose(anchors[nll], -np.log(p[np.arange(4), lab]).mean(), rtol=1e-5)
    np.testing.assert_allclose(anchors[ident], p.sum(), rtol=1e-5)


def test_builder_names_shapes_and_model_proto() -> None:
    import onnx

    b, x, h, y, _, _ = _mlp()
    assert b.getTensorShape(h) == [2, 6]
    assert b.getInputTensorIds() == [x] and b.getOutputTensorIds() == [y]
    model = onnx.load_from_string(b.getModelProto())
    assert [n.op_type for n in model.graph.node] == ["MatMul", "Relu", "MatMul", "Softmax"]
    assert any(a.name == "__ipu_number" for a in model.graph.node[0].attribute)  # virtualGraph(0)
    assert model.opset_import[0].version == 11  # PopART's highest opset


def test_wrong_order_and_bad_anchors_are_clear_errors() -> None:
    b, x, h, y, _, _ = _mlp()
    session = popart.InferenceSession(b.getModelProto(), popart.DataFlow(1, [y]), _device())
    with pytest.raises(popart.popart_exception, match="prepareDevice"):
        session.initAnchorArrays()
    session.prepareDevice()
    anchors = session.initAnchorArrays()
    with pytest.raises(popart.popart_exception, match="weightsFromHost"):
        session.run(popart.PyStepIO({x: np.zeros((2, 4), np.float32)}, anchors))
    with pytest.raises(popart.popart_exception, match="no op of the model makes"):
        popart.InferenceSession(b.getModelProto(), popart.DataFlow(1, ["nope"]), _device())
    with pytest.raises(popart.popart_exception, match="EVERYN"):
        popart.AnchorReturnType("EVERYN", 0)
    with pytest.raises(popart.popart_exception, match="loss tensor 'nope'"):
        popart.TrainingSession(b.getModelProto(), popart.DataFlow(1, []), "nope", popart.ConstSGD(0.1), _device())
