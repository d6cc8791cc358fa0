"""PopART's TrainingSession: a model built with ``popart.Builder`` trains on a simulated IPU and
matches the same model trained in eager torch (the oracle: torch.optim on plain tensors)."""

from __future__ import annotations

import contextlib

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


def _placed_mlp(rng: np.random.Generator, batch: int, placed: bool) -> tuple:
    """An MLP whose first layer is on IPU 0 (pipeline stage 0) and second layer and loss on IPU 1."""
    init = ((rng.standard_normal((4, 8)) * 0.5).astype(np.float32), (rng.standard_normal(8) * 0.1).astype(np.float32),
            (rng.standard_normal((8, 3)) * 0.5).astype(np.float32))
    b = popart.Builder()
    x = b.addInputTensor(popart.TensorInfo("FLOAT", [batch, 4]))
    lab = b.addInputTensor(popart.TensorInfo("INT32", [batch]))
    tw1, tb1, tw2 = (b.addInitializedInputTensor(a) for a in init)
    first = (b.virtualGraph(0), b.pipelineStage(0)) if placed else ()
    second = (b.virtualGraph(1), b.pipelineStage(1)) if placed else ()
    with contextlib.ExitStack() as stack:
        for cm in first:
            stack.enter_context(cm)
        h = b.aiOnnx.relu([b.aiOnnx.add([b.aiOnnx.matmul([x, tw1]), tb1])])
    with contextlib.ExitStack() as stack:
        for cm in second:
            stack.enter_context(cm)
        probs = b.aiOnnx.softmax([b.aiOnnx.matmul([h, tw2])], axis=1)
        loss = b.aiGraphcore.nllloss([probs, lab], reduction=popart.ReductionType.Mean)
    return b, x, lab, loss, (tw1, tb1, tw2), init


def _eager_steps(init: tuple, xs: np.ndarray, labs: np.ndarray, lr: float, mean: bool) -> tuple[list, list]:
    """Eager torch: each step's micro-batches (xs[s] is [micro, batch, 4]) with the weights before the
    step; their gradients summed (PopART's ReductionType.Sum) or averaged, then one SGD update."""
    ws = [torch.tensor(a, requires_grad=True) for a in init]
    opt = torch.optim.SGD(ws, lr=lr)
    losses = []
    for s in range(xs.shape[0]):
        opt.zero_grad()
        parts = [_eager_loss(ws, xs[s, m], labs[s, m], "nll") for m in range(xs.shape[1])]
        total = sum(parts) / (len(parts) if mean else 1)
        total.backward()
        opt.step()
        losses.append([p.item() for p in parts])
    return losses, [w.detach().numpy() for w in ws]


@pytest.mark.parametrize("reduction", ["Sum", "Mean"])
def test_replication_and_accumulation_match_eager(reduction: str) -> None:
    rng = np.random.default_rng(3)
    af, rf, steps = 2, 2, 2
    b, x, lab, loss, names, init = _placed_mlp(rng, 5, placed=False)
    opts = popart.SessionOptions()
    opts.enableReplicatedGraphs, opts.replicatedGraphCount = True, rf
    opts.enableGradientAccumulation, opts.accumulationFactor = True, af
    opts.accumulationAndReplicationReductionType = getattr(popart.ReductionType, reduction)
    device = popart.DeviceManager().createIpuModelDevice({"numIPUs": 2, "tilesPerIPU": 4})
    flow = popart.DataFlow(1, {loss: popart.AnchorReturnType("ALL")})
    sess = popart.TrainingSession(b.getModelProto(), flow, loss, popart.ConstSGD(0.05), device, userOptions=opts)
    sess.prepareDevice()
    sess.weightsFromHost()
    anchors = sess.initAnchorArrays()
    assert anchors[loss].shape == (af, rf)
    xs = rng.standard_normal((steps, af, rf, 5, 4)).astype(np.float32)
    labs = rng.integers(0, 3, (steps, af, rf, 5)).astype(np.int32)
    got = []
    for s in range(steps):
        sess.run(popart.PyStepIO({x: xs[s], lab: labs[s]}, anchors))
        got.append(anchors[loss].ravel().copy())
    want, trained = _eager_steps(init, xs.reshape(steps, af * rf, 5, 4), labs.reshape(steps, af * rf, 5),
                                 0.05, mean=reduction == "Mean")
    np.testing.assert_allclose(np.array(got), np.array(want), rtol=0, atol=1e-5)
    weights = {n: np.zeros_like(a) for n, a in zip(names, init, strict=True)}
    sess.readWeights(popart.PyWeightsIO(weights))
    for n, w in zip(names, trained, strict=True):
        np.testing.assert_allclose(weights[n], w, rtol=0, atol=1e-5, err_msg=n)


@pytest.mark.parametrize("pipelined", [False, True])
def test_virtual_graphs_and_pipelining_train_as_eager(pipelined: bool) -> None:
    rng = np.random.default_rng(4)
    af, steps = (3, 2) if pipelined else (1, 3)  # 2 IPUs pipelined: 2 x 2 - 1 = 3 stages at least
    b, x, lab, loss, names, init = _placed_mlp(rng, 5, placed=True)
    opts = popart.SessionOptions()
    opts.virtualGraphMode = popart.VirtualGraphMode.Manual
    opts.enablePipelining = pipelined
    opts.enableGradientAccumulation, opts.accumulationFactor = af > 1, af
    device = popart.DeviceManager().createIpuModelDevice({"numIPUs": 2, "tilesPerIPU": 4})
    flow = popart.DataFlow(1, {loss: popart.AnchorReturnType("ALL")})
    sess = popart.TrainingSession(b.getModelProto(), flow, loss, popart.ConstSGD(0.05), device, userOptions=opts)
    sess.prepareDevice()
    sess.weightsFromHost()
    anchors = sess.initAnchorArrays()
    xs = rng.standard_normal((steps, af, 5, 4)).astype(np.float32)
    labs = rng.integers(0, 3, (steps, af, 5)).astype(np.int32)
    got = []
    for s in range(steps):
        feeds = {x: xs[s], lab: labs[s]} if af > 1 else {x: xs[s, 0], lab: labs[s, 0]}
        sess.run(popart.PyStepIO(feeds, anchors))
        got.append(anchors[loss].ravel().copy())
    want, trained = _eager_steps(init, xs, labs, 0.05, mean=False)
    np.testing.assert_allclose(np.array(got), np.array(want), rtol=0, atol=1e-5)
    weights = {n: np.zeros_like(a) for n, a in zip(names, init, strict=True)}
    sess.readWeights(popart.PyWeightsIO(weights))
    for n, w in zip(names, trained, strict=True):
        np.testing.assert_allclose(weights[n], w, rtol=0, atol=1e-5, err_msg=n)
    impl = sess._trainer  # noqa: SLF001 - the torch training model: its placement and schedule
    pipe = impl.summary()["pipeline"]
    assert pipe["strategy"] == ("pipelined" if pipelined else "sharded")
    assert [st["ipu"] for st in pipe["stages"]] == [0, 1]
    if pipelined:  # PopART's schedule: 2 x 2 - 1 stages, the first IPU's stash 2 x 1 + 1 deep
        assert pipe["schedule"]["stages"] == 3 and pipe["schedule"]["stash_depth"] == [3, 0]
        assert 0 < pipe["cycles"] < pipe["sequential_cycles"]
    chip = device.target.with_num_ipus(2)
    low = impl.lowered
    for name, ipu in ((names[0], 0), (names[2], 1)):  # each layer's weight lives on its virtual graph
        tiles = np.unique(low.graph.tile_of(low.params[sess._module.param_names[name]]))  # noqa: SLF001
        assert set(chip.ipu_of_tile(tiles).tolist()) == {ipu}, name


def test_bad_option_combinations_are_popart_errors() -> None:
    rng = np.random.default_rng(5)
    two = popart.DeviceManager().createIpuModelDevice({"numIPUs": 2, "tilesPerIPU": 4})

    def session(placed: bool, device=two, **options):
        b, _, _, loss, _, _ = _placed_mlp(rng, 5, placed=placed)
        opts = popart.SessionOptions()
        for k, v in options.items():
            setattr(opts, k, v)
        return popart.TrainingSession(b.getModelProto(), popart.DataFlow(1, [loss]), loss, popart.ConstSGD(0.1),
                                      device, userOptions=opts)

    cases = [
        (dict(accumulationFactor=4), "enableGradientAccumulation is False"),
        (dict(replicatedGraphCount=2), "enableReplicatedGraphs is False"),
        (dict(enableReplicatedGraphs=True, replicatedGraphCount=3), "does not divide the device's 2 IPUs"),
        (dict(enablePipelining=True), "Pipelining requires more than 1 IPU .*VirtualGraphMode::Off"),
        (dict(enablePipelining=True, virtualGraphMode=popart.VirtualGraphMode.Manual, enableReplicatedGraphs=True,
              replicatedGraphCount=2), r"Pipelining requires more than 1 IPU \(currently 1 a replica"),
        (dict(virtualGraphMode=popart.VirtualGraphMode.Manual, enablePipelining=True), "depth"),  # accumulation 1
    ]
    for options, message in cases:
        with pytest.raises(FrontendError, match=message):
            session(True, **options).prepareDevice()
    one = popart.DeviceManager().createIpuModelDevice({"numIPUs": 1, "tilesPerIPU": 4})
    with pytest.raises(popart.PopartError, match="virtual graph 1, but a replica has 1 IPU"):
        session(True, one, virtualGraphMode=popart.VirtualGraphMode.Manual).prepareDevice()
    b, _, _, loss, _, _ = _placed_mlp(rng, 5, placed=True)
    with b.virtualGraph(0):
        pass
    extra = b.aiOnnx.neg([loss])  # an op without a virtual graph among placed ones
    opts = popart.SessionOptions()
    opts.virtualGraphMode = popart.VirtualGraphMode.Manual
    sess = popart.TrainingSession(b.getModelProto(), popart.DataFlow(1, [loss]), loss, popart.ConstSGD(0.1), two,
                                  userOptions=opts)
    with pytest.raises(popart.PopartError, match=f"Either all Ops .* none must: 1 op.*{extra.split('/')[0]}"):
        sess.prepareDevice()


def test_scaled_torch_loss_differentiates_the_returned_value() -> None:
    """``0.5 * F.l1_loss(...)`` returned from forward: the returned, scaled loss is differentiated (as eager
    ``.backward()`` on it), not the unscaled loss function's value (regression: it was)."""
    import softipu.poptorch as poptorch  # noqa: PLC0415

    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    ref = torch.nn.Linear(4, 3)
    ref.load_state_dict(net.state_dict())

    class Scaled(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            out = self.inner(x)
            return out, 0.5 * torch.nn.functional.l1_loss(out, y)

    x, y = torch.randn(5, 4), torch.randn(5, 3)
    opts = poptorch.Options().setTarget(DEVICE.target)
    model = poptorch.trainingModel(Scaled(net), opts, poptorch.optim.SGD(net.parameters(), lr=0.1))
    got = [float(model(x, y)[1]) for _ in range(2)]
    eager = Scaled(ref)
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    want = []
    for _ in range(2):
        opt.zero_grad()
        _, value = eager(x, y)
        value.backward()
        opt.step()
        want.append(value.item())
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)  # the second loss follows the first update
    model.copyWeightsToHost()
    np.testing.assert_allclose(net.weight.detach().numpy(), ref.weight.detach().numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(net.bias.detach().numpy(), ref.bias.detach().numpy(), rtol=0, atol=1e-6)
