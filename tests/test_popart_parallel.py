"""PopART's VirtualGraphMode.Auto (the AutoVirtualGraph transform) and pipelined inference sessions.

Oracles: placements worked out by hand from PopART's algorithm (auto_virtual_graph.cpp: op cost =
weight bytes, plus in training the forward tensors the gradient reads; splits where all data passes
through one op; IPU i takes the cumulative cost up to (i+1)/n of the total, cut at the nearest split),
numpy for the values, and the training oracle of test_onnx_training (eager torch).
"""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")

import softipu.popart as popart  # noqa: E402
from softipu.frontends.onnx.auto_virtual import auto_virtual_graphs  # noqa: E402
from softipu.frontends.onnx.errors import PopartError  # noqa: E402
from test_onnx_training import _eager_steps, _placed_mlp  # noqa: E402


def _chain(rng: np.random.Generator, batch: int = 2) -> tuple:
    """x -> (MatMul W_k -> Relu) x 3 -> MatMul W_4: seven ops, four 4x4 fp32 weights of 64 bytes."""
    ws = [(rng.standard_normal((4, 4)) * 0.5).astype(np.float32) for _ in range(4)]
    b = popart.Builder()
    x = b.addInputTensor(popart.TensorInfo("FLOAT", [batch, 4]))
    h = x
    for k, w in enumerate(ws):
        h = b.aiOnnx.matmul([h, b.addInitializedInputTensor(w)])
        if k < 3:
            h = b.aiOnnx.relu([h])
    b.addOutputTensor(h)
    return b, x, h, ws


def _numpy_chain(x: np.ndarray, ws: list) -> np.ndarray:
    for k, w in enumerate(ws):
        x = x @ w
        if k < 3:
            x = np.maximum(x, 0)
    return x


def test_auto_placement_inference_by_hand():
    b, _, _, _ = _chain(np.random.default_rng(0))
    model = onnx.load_from_string(b.getModelProto())
    # costs 64, 0, 64, 0, 64, 0, 64; splits after every op at 64, 64, 128, 128, 192, 192, 256.
    # 2 IPUs: budget 128 -> the split at 128 nearest below-or-at: the second MatMul stays on IPU 0.
    assert auto_virtual_graphs(model, 2) == [0, 0, 0, 1, 1, 1, 1]
    # 4 IPUs: budgets 64, 128, 192 -> cuts after MatMul 1, 2, 3.
    assert auto_virtual_graphs(model, 4) == [0, 1, 1, 2, 2, 3, 3]
    assert auto_virtual_graphs(model, 1) == [0] * 7


def test_auto_placement_training_counts_what_the_gradients_read():
    b, _, _, _ = _chain(np.random.default_rng(0))
    model = onnx.load_from_string(b.getModelProto())
    # MatMul: weight 64 + its [2, 4] fp32 input 32 = 96; Relu's gradient reads its output: 32.
    # Cumulative 96, 128, 224, 256, 352, 384, 480; budget 240 -> 256 (a tie with 224 keeps the later one)
    assert auto_virtual_graphs(model, 2, training=True) == [0, 0, 0, 0, 1, 1, 1]


def test_auto_placement_with_too_few_splits_is_popart_s_error():
    b, _, _, _ = _chain(np.random.default_rng(0))
    model = onnx.load_from_string(b.getModelProto())
    with pytest.raises(PopartError, match="Couldn't find enough splits for 16 IPUs. Only found 7"):
        auto_virtual_graphs(model, 16)


def test_two_input_branches_start_their_own_subgraphs():
    rng = np.random.default_rng(1)
    b = popart.Builder()
    x = b.addInputTensor(popart.TensorInfo("FLOAT", [2, 4]))
    y = b.addInputTensor(popart.TensorInfo("FLOAT", [2, 4]))
    w1, w2 = (b.addInitializedInputTensor(rng.standard_normal((4, 4)).astype(np.float32)) for _ in range(2))
    out = b.aiOnnx.add([b.aiOnnx.matmul([x, w1]), b.aiOnnx.matmul([y, w2])])
    b.addOutputTensor(out)
    model = onnx.load_from_string(b.getModelProto())
    # subgraphs {mm_x} 64, {mm_y} 64, {add} 0 (fed from two); 2 IPUs: budget 64 ends the first exactly
    assert auto_virtual_graphs(model, 2) == [0, 1, 1]


@pytest.mark.parametrize("mode", ["Auto", "Manual"])
def test_pipelined_inference_session_gives_numpy_s_values_in_fewer_cycles(mode):
    rng = np.random.default_rng(2)
    b, x, out, ws = _chain(rng)
    if mode == "Manual":  # the same placement as Auto's, by hand
        model = onnx.load_from_string(b.getModelProto())
        for node, ipu in zip(model.graph.node, [0, 0, 0, 1, 1, 1, 1], strict=True):
            node.attribute.append(onnx.helper.make_attribute("__ipu_number", ipu))
        proto = model.SerializeToString()
    else:
        proto = b.getModelProto()
    device = popart.DeviceManager().createIpuModelDevice({"numIPUs": 2, "tilesPerIPU": 4})
    bps = 4
    xs = rng.standard_normal((bps, 2, 4)).astype(np.float32)
    cycles = {}
    for pipelined in (False, True):
        opts = popart.SessionOptions()
        opts.virtualGraphMode = getattr(popart.VirtualGraphMode, mode)
        opts.enablePipelining = pipelined
        flow = popart.DataFlow(bps, {out: popart.AnchorReturnType("ALL")})
        sess = popart.InferenceSession(proto, flow, device, userOptions=opts)
        sess.prepareDevice()
        sess.weightsFromHost()
        anchors = sess.initAnchorArrays()
        sess.run(popart.PyStepIO({x: xs}, anchors))
        np.testing.assert_allclose(anchors[out], np.stack([_numpy_chain(v, ws) for v in xs]),
                                   rtol=1e-5, atol=1e-6)
        cycles[pipelined] = sess.getCycleCount()
    # 4 batches over 2 stages: fill + main + flush (5 stage-steps of about half the model) against
    # the sharded run's one batch
    assert cycles[True] > 0 and cycles[False] > 0
    assert cycles[False] < cycles[True] < bps * cycles[False]


def test_pipelining_without_virtual_graphs_is_popart_s_error():
    b, x, out, _ = _chain(np.random.default_rng(3))
    device = popart.DeviceManager().createIpuModelDevice({"numIPUs": 2, "tilesPerIPU": 4})
    opts = popart.SessionOptions()
    opts.enablePipelining = True
    sess = popart.InferenceSession(b.getModelProto(), popart.DataFlow(2, {out: popart.AnchorReturnType("ALL")}),
                                   device, userOptions=opts)
    with pytest.raises(PopartError, match="Pipelining requires more than 1 IPU.*VirtualGraphMode::Off"):
        sess.prepareDevice()


def test_auto_training_session_trains_as_eager_and_places_both_ipus():
    rng = np.random.default_rng(4)
    b, x, lab, loss, names, init = _placed_mlp(rng, 5, placed=False)
    opts = popart.SessionOptions()
    opts.virtualGraphMode = popart.VirtualGraphMode.Auto
    device = popart.DeviceManager().createIpuModelDevice({"numIPUs": 2, "tilesPerIPU": 4})
    flow = popart.DataFlow(1, {loss: popart.AnchorReturnType("ALL")})
    sess = popart.TrainingSession(b.getModelProto(), flow, loss, popart.ConstSGD(0.05), device, userOptions=opts)
    sess.prepareDevice()
    sess.weightsFromHost()
    anchors = sess.initAnchorArrays()
    steps = 2
    xs = rng.standard_normal((steps, 1, 5, 4)).astype(np.float32)
    labs = rng.integers(0, 3, (steps, 1, 5)).astype(np.int32)
    got = []
    for s in range(steps):
        sess.run(popart.PyStepIO({x: xs[s, 0], lab: labs[s, 0]}, anchors))
        got.append(anchors[loss].ravel().copy())
    want, trained = _eager_steps(init, xs, labs, 0.05, mean=False)
    np.testing.assert_allclose(np.array(got), np.array(want), rtol=0, atol=1e-5)
    pipe = sess._trainer.summary()["pipeline"]  # noqa: SLF001
    assert pipe["strategy"] == "sharded" and sorted({st["ipu"] for st in pipe["stages"]}) == [0, 1]
