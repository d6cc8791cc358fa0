"""PopART's TrainingSession: a model built with ``popart.Builder`` trains on a simulated IPU and
matches the same model trained in eager torch (the oracle: torch.optim on plain tensors)."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")

import softipu.popart as popart  # noqa: E402
from softipu.frontends.errors import FrontendError  # noqa: E402
from softipu.graph.graph import _row_major_strides  # noqa: E402
from softipu.graph.tensor import Tensor  # noqa: E402

DEVICE = popart.DeviceManager().createIpuModelDevice({"numIPUs": 1, "tilesPerIPU": 4})


def _mlp(rng: np.random.Generator, loss_kind: str) -> tuple:
    w1 = (rng.standard_normal((4, 8)) * 0.5).astype(np.float32)
    b1 = (rng.standard_normal(8) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((8, 3)) * 0.5).astype(np.float32)
    b = popart.Builder()
    x = b.addInputTensor(popart.TensorInfo("FLOAT", [5, 4]))
    lab = b.addInputTensor(popart.TensorInfo("INT32", [5]))
    tw1, tb1, tw2 = (b.addInitializedInputTensor(a) for a in (w1, b1, w2))
    h = b.aiOnnx.relu([b.aiOnnx.add([b.aiOnnx.matmul([x, tw1]), tb1])])
    logits = b.aiOnnx.matmul([h, tw2])
    if loss_kind == "nll":
        out = b.aiOnnx.softmax([logits], axis=1)
        loss = b.aiGraphcore.nllloss([out, lab], reduction=popart.ReductionType.Mean)
    else:
        out = b.aiOnnx.tanh([logits])
        loss = b.aiGraphcore.l1loss([out], 0.5, reduction=popart.ReductionType.Sum)
    return b, x, lab, out, loss, (tw1, tb1, tw2), (w1, b1, w2)


def _eager_loss(ws: list, x: np.ndarray, lab: np.ndarray, loss_kind: str) -> torch.Tensor:
    logits = torch.relu(torch.from_numpy(x) @ ws[0] + ws[1]) @ ws[2]
    if loss_kind == "nll":
        return torch.nn.functional.nll_loss(torch.log_softmax(logits, 1), torch.from_numpy(lab).long())
    return 0.5 * torch.tanh(logits).abs().sum()


def test_sgd_mlp_trains_as_eager_torch() -> None:
    rng = np.random.default_rng(0)
    b, x, lab, probs, loss, names, init = _mlp(rng, "nll")
    bps, steps = 2, 3
    flow = popart.DataFlow(bps, {loss: popart.AnchorReturnType("ALL"), probs: popart.AnchorReturnType("FINAL")})
    sess = popart.TrainingSession(b.getModelProto(), flow, loss, popart.ConstSGD(0.1), DEVICE)
    sess.prepareDevice()
    sess.weightsFromHost()
    anchors = sess.initAnchorArrays()
    assert anchors[loss].shape == (bps,) and anchors[probs].shape == (5, 3)
    xs = rng.standard_normal((steps, bps, 5, 4)).astype(np.float32)
    labs = rng.integers(0, 3, (steps, bps, 5)).astype(np.int32)
    got = []
    for s in range(steps):
        sess.run(popart.PyStepIO({x: xs[s], lab: labs[s]}, anchors))
        got.append(anchors[loss].copy())
    ws = [torch.tensor(a, requires_grad=True) for a in init]
    opt = torch.optim.SGD(ws, lr=0.1)
    want = []
    for s in range(steps):
        for k in range(bps):
            opt.zero_grad()
            value = _eager_loss(ws, xs[s, k], labs[s, k], "nll")
            value.backward()
            opt.step()
            want.append(value.item())
    np.testing.assert_allclose(np.ravel(got), want, rtol=0, atol=1e-5)
    last = torch.softmax(torch.relu(torch.from_numpy(xs[-1, -1]) @ ws[0] + ws[1]) @ ws[2], 1)
    # The FINAL anchor is the last batch's forward, before that batch's update.
    assert anchors[probs].shape == last.shape
    sess.weightsToHost()
    trained = {n: np.zeros_like(a) for n, a in zip(names, init, strict=True)}
    sess.readWeights(popart.PyWeightsIO(trained))
    for n, w in zip(names, ws, strict=True):
        np.testing.assert_allclose(trained[n], w.detach().numpy(), rtol=0, atol=1e-5)


def test_adam_and_momentum_sgd_with_update_from_host() -> None:
    rng = np.random.default_rng(1)
    xs = rng.standard_normal((4, 5, 4)).astype(np.float32)
    labs = np.zeros((4, 5), np.int32)
    for kind, make, eager in [
        ("adam", lambda lr: popart.Adam({"defaultLearningRate": (lr, False), "defaultWeightDecay": 0.01,
                                         "defaultEps": 1e-6}),
         lambda ws: torch.optim.AdamW(ws, lr=0.01, eps=1e-6, weight_decay=0.01)),
        ("sgd", lambda lr: popart.SGD({"defaultLearningRate": (lr, False), "defaultMomentum": (0.9, True)}),
         lambda ws: torch.optim.SGD(ws, lr=0.01, momentum=0.9)),
    ]:
        b, x, lab, _, loss, names, init = _mlp(rng, "l1")
        flow = popart.DataFlow(1, {loss: popart.AnchorReturnType("ALL")})
        sess = popart.TrainingSession(b.getModelProto(), flow, loss, make(0.01), DEVICE)
        sess.prepareDevice()
        sess.weightsFromHost()
        anchors = sess.initAnchorArrays()
        ws = [torch.tensor(a, requires_grad=True) for a in init]
        opt = eager(ws)
        for s in range(4):
            if s == 2:  # a new learning rate from the host, as PopART's updateOptimizerFromHost
                sess.updateOptimizerFromHost(make(0.003))
                for g in opt.param_groups:
                    g["lr"] = 0.003
            sess.run(popart.PyStepIO({x: xs[s], lab: labs[s]}, anchors))
            opt.zero_grad()
            value = _eager_loss(ws, xs[s], labs[s], "l1")
            value.backward()
            opt.step()
            np.testing.assert_allclose(anchors[loss], value.item(), rtol=1e-6, atol=1e-5, err_msg=f"{kind} step {s}")
        trained = {n: np.zeros_like(a) for n, a in zip(names, init, strict=True)}
        sess.readWeights(popart.PyWeightsIO(trained))
        for n, w in zip(names, ws, strict=True):
            np.testing.assert_allclose(trained[n], w.detach().numpy(), rtol=0, atol=1e-5, err_msg=f"{kind} step {s}")
        with pytest.raises(popart.PopartError, match="constant"):
            bad = popart.SGD({"defaultMomentum": (0.5, True)}) if kind == "sgd" else popart.Adam(
                {"defaultWeightDecay": 0.5})
            sess.updateOptimizerFromHost(bad)


def test_training_errors_are_clear() -> None:
    b = popart.Builder()
    x = b.addInputTensor(popart.TensorInfo("FLOAT", [2, 3]))
    y = b.aiOnnx.hardmax([x])
    z = b.aiOnnx.det([b.aiOnnx.reshape([x, b.aiOnnx.constant(np.array([1, 1, 6], np.int64))])])
    loss = b.aiGraphcore.identityloss([y], reduction=popart.ReductionType.Mean)
    b.addOutputTensor(loss)
    flow = popart.DataFlow(1, {loss: popart.AnchorReturnType("ALL")})
    with pytest.raises(popart.PopartError, match="no op of the model makes the loss"):
        popart.TrainingSession(b.getModelProto(), flow, "nope", popart.ConstSGD(0.1), DEVICE)
    with pytest.raises(popart.PopartError, match="ConstSGD, SGD or Adam"):
        popart.TrainingSession(b.getModelProto(), flow, loss, torch.optim.SGD, DEVICE)
    sess = popart.TrainingSession(b.getModelProto(), flow, loss, popart.ConstSGD(0.1), DEVICE)
    with pytest.raises(FrontendError, match=r"Hardmax \(.*Det \("):  # every missing op at once, with nodes
        sess.prepareDevice()
    assert z
    with pytest.raises(popart.PopartError, match="unknown hyper-parameter"):
        popart.SGD({"defaultLearningRat": 0.1})


def test_virtual_graphs_place_ops_on_their_ipu() -> None:
    rng = np.random.default_rng(2)
    xv = rng.standard_normal((6, 8)).astype(np.float32)
    wv = rng.standard_normal((8, 16)).astype(np.float32)
    b = popart.Builder()
    x = b.addInputTensor(popart.TensorInfo("FLOAT", [6, 8]))
    w = b.addInitializedInputTensor(wv)
    with b.virtualGraph(0):
        h = b.aiOnnx.matmul([x, w], debugContext="mm")
    with b.virtualGraph(1), b.pipelineStage(1):
        y = b.aiOnnx.relu([h], debugContext="act")
    b.addOutputTensor(y)
    device = popart.DeviceManager().createIpuModelDevice({"numIPUs": 2, "tilesPerIPU": 4})
    assert device.numIpus == 2 and device.tilesPerIPU == 4
    sess = popart.InferenceSession(b.getModelProto(), popart.DataFlow(1, [y]), device)
    sess.prepareDevice()
    sess.weightsFromHost()
    anchors = sess.initAnchorArrays()
    sess.run(popart.PyStepIO({x: xv}, anchors))
    np.testing.assert_allclose(anchors[y], np.maximum(xv @ wv, 0), rtol=1e-5, atol=1e-5)
    graph = sess._session.lowered.graph  # noqa: SLF001 - where the ops' outputs live
    tiles = {}
    for var in graph.variables:
        for node in ("mm", "act"):
            if var.name.startswith(node) and var.numel:
                whole = Tensor(graph, var.dtype, var.shape, var.start, _row_major_strides(var.shape))
                tiles.setdefault(node, set()).update(np.unique(graph.tile_of(whole)).tolist())
    assert tiles["mm"] and tiles["mm"] <= {0, 1, 2, 3}, tiles
    assert tiles["act"] and tiles["act"] <= {4, 5, 6, 7}, tiles
    with b.virtualGraph(2):
        b.aiOnnx.relu([y])
    bad = popart.InferenceSession(b.getModelProto(), popart.DataFlow(1, [y]), device)
    with pytest.raises(FrontendError, match="virtual graph 2.*2 IPUs"):
        bad.prepareDevice()
