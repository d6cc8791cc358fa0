"""The ONNX frontend under mutated models (issue 18): a short run of the campaign in
bench/bench_onnx_fuzz.py, a check that its escape detector sees a read outside the model's folder,
and one regression test for each kind of failure the campaign found."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_onnx_fuzz.py"


@pytest.fixture(scope="module")
def fuzz():
    spec = importlib.util.spec_from_file_location("bench_onnx_fuzz", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_short_campaign_finds_no_internal_error_hang_or_escape(fuzz):
    result = fuzz.campaign(count=60, seconds=60, seed=3)
    bad = {k: result[k] for k in ("other_exceptions", "hangs", "escaped")}
    assert bad == {"other_exceptions": 0, "hangs": 0, "escaped": 0}, result["examples"]
    assert result["tried"] == 60
    assert result["ran"] > 0 and result["refused"] > 0  # the mutations bite, and some pass
    assert len(result["by_seed"]) == 8


def test_the_seed_models_agree_with_onnxruntime(fuzz, tmp_path):
    """The seeds are valid models that softipu runs: mutants start from working programs."""
    rng = np.random.default_rng(1)
    for name, (model, files) in fuzz.seeds().items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / "model.onnx").write_bytes(model.SerializeToString())
        for fname, raw in files.items():
            (folder / fname).write_bytes(raw)
        (x,) = model.graph.input
        shape = [d.dim_value for d in x.type.tensor_type.shape.dim]
        feed = {"x": rng.standard_normal(shape).astype(np.float32)}
        got = fuzz.so.InferenceSession(folder / "model.onnx", fuzz.OPTS).run(None, feed)[0]
        want = ort.InferenceSession(str(folder / "model.onnx")).run(None, feed)[0]
        np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3, err_msg=name)


def test_the_escape_detector_sees_an_open_outside_the_case_folder(fuzz, tmp_path):
    if not fuzz._HOOKED:
        sys.addaudithook(fuzz._Opens.hook)
        fuzz._HOOKED.append(True)
    case, bait = tmp_path / "case", tmp_path / "outside.bin"
    case.mkdir()
    bait.write_bytes(b"x")
    (case / "inside.bin").write_bytes(b"y")
    fuzz._Opens.armed = []
    try:
        (case / "inside.bin").read_bytes()
        bait.read_bytes()
    finally:
        opened, fuzz._Opens.armed = fuzz._Opens.armed, None
    assert fuzz._escapes(opened, case) == [str(bait)]


def test_external_data_of_a_subgraph_initializer_is_read_only_from_the_models_folder(fuzz, tmp_path,
                                                                                     monkeypatch):
    """Found by the campaign: an initializer inside an If branch naming external data 'w.bin' was not
    checked (only the main graph's tensors were), and onnx then read 'w.bin' from the CURRENT folder
    — a file outside the model's folder, whose values the model returned."""
    import onnx
    from onnx import TensorProto as T
    from onnx import helper, numpy_helper

    from softipu.frontends.onnx.errors import OnnxModelError

    def vi(name):
        return helper.make_tensor_value_info(name, T.FLOAT, [2])

    w = numpy_helper.from_array(np.zeros(2, np.float32), "w")
    onnx.external_data_helper.set_external_data(w, "w.bin", offset=0, length=8)
    w.ClearField("raw_data")
    then_g = helper.make_graph([helper.make_node("Mul", ["x", "w"], ["t"])], "then", [], [vi("t")],
                               initializer=[w])
    else_g = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [], [vi("e")])
    cond = numpy_helper.from_array(np.array(True))
    graph = helper.make_graph([helper.make_node("Constant", [], ["c"], value=cond),
                               helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)],
                              "m", [vi("x")], [vi("y")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "m.onnx").write_bytes(model.SerializeToString())
    np.full(2, 7.0, np.float32).tofile(tmp_path / "w.bin")  # the secret, in the current folder
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OnnxModelError, match="'w.bin' not found in .*model"):
        fuzz.so.InferenceSession(tmp_path / "model" / "m.onnx", fuzz.OPTS)
    np.full(2, 3.0, np.float32).tofile(tmp_path / "model" / "w.bin")  # next to the model: read
    sess = fuzz.so.InferenceSession(tmp_path / "model" / "m.onnx", fuzz.OPTS)
    got = sess.run(None, {"x": np.ones(2, np.float32)})
    np.testing.assert_array_equal(got[0], [3.0, 3.0])


def _loop_model(fuzz, trips: int, cond: bool | None):
    """The campaign's If/Loop seed with the Loop's trip count set and, unless ``cond`` is None, a
    constant condition input (its body passes the condition through unchanged)."""
    from onnx import numpy_helper

    model, _ = fuzz.seeds()["control"]
    (t,) = [t for t in model.graph.initializer if t.name == "trips"]
    t.CopyFrom(numpy_helper.from_array(np.array([trips], np.int64), "trips"))
    if cond is not None:
        model.graph.initializer.append(numpy_helper.from_array(np.array(cond), "cond0"))
        (loop,) = [n for n in model.graph.node if n.op_type == "Loop"]
        loop.input[1] = "cond0"
    return model.SerializeToString()


@pytest.mark.parametrize(("trips", "cond", "said"), [(10**12, None, "condition input is absent"),
                                                     (10**6, True, "condition never changes")])
def test_a_loop_that_would_run_past_the_unroll_limit_is_refused_at_once(fuzz, trips, cond, said):
    """Found by the campaign (a hang): a Loop whose trip count was mutated to 10**12 lowered 4,096
    copies of its body (35 s) before refusing."""
    from softipu.frontends.errors import LoweringError

    start = time.monotonic()
    with pytest.raises(LoweringError, match=f"{trips} iterations whose {said} is not unrolled"):
        sess = fuzz.so.InferenceSession(_loop_model(fuzz, trips, cond), fuzz.OPTS)
        sess.run(None, {"x": np.ones((2, 3), np.float32)})  # compiles here: x decides the If
    assert time.monotonic() - start < 30  # generous: a loaded machine; the bug took minutes there


def test_a_loop_whose_condition_starts_false_runs_no_iteration(fuzz):
    data = _loop_model(fuzz, 10**6, False)
    x = np.arange(6, dtype=np.float32).reshape(2, 3) - 2
    got = fuzz.so.InferenceSession(data, fuzz.OPTS).run(None, {"x": x})[0]
    want = ort.InferenceSession(data).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def _one_node(op: str, inits: dict[str, np.ndarray], inputs: list[str], rank: int) -> bytes:
    from onnx import TensorProto as T
    from onnx import helper, numpy_helper

    graph = helper.make_graph([helper.make_node(op, inputs, ["y"])], op, [],
                              [helper.make_tensor_value_info("y", T.FLOAT, [f"d{i}" for i in range(rank)])],
                              initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


@pytest.mark.parametrize(("op", "inits", "inputs", "rank"), [
    ("ConstantOfShape", {"s": np.array([2**40], np.int64)}, ["s"], 1),
    ("Range", {"a": np.array(0.0, np.float32), "b": np.array(1e12, np.float32), "c": np.array(1.0, np.float32)},
     ["a", "b", "c"], 1),
    ("Resize", {"x": np.ones((1, 1, 2, 2), np.float32), "sc": np.array([1, 1, 1e6, 1e6], np.float32)},
     ["x", "", "sc"], 4),
])
def test_an_output_whose_size_a_value_sets_too_big_is_refused_before_it_is_made(fuzz, op, inits, inputs, rank):
    """A shape value of 2**40 (a damaged or hostile model) was allocated on the host (MemoryError, or
    gigabytes of swapping for 2**31), and a Resize by 10**6 was folded by onnx's reference evaluator
    element by element (a hang): the output's size is now bounded before the node is lowered."""
    from softipu.frontends.errors import LoweringError

    start = time.monotonic()
    with pytest.raises(LoweringError, match=f"{op} node .* its output would hold .* more than the 4194304 bytes"):
        fuzz.so.InferenceSession(_one_node(op, inits, inputs, rank), fuzz.OPTS)
    assert time.monotonic() - start < 30  # generous: a loaded machine; the Resize took hours


@pytest.mark.parametrize("op", ["Conv", "MaxPool"])
def test_a_stride_past_the_input_gives_one_output_as_the_input_long_stride_does(fuzz, op):
    """Found by the campaign (seed 0, input 2322): a Conv stride of 2**62 made a view whose byte
    strides overflowed numpy's 64-bit integers (ValueError from the engine). Any stride past the
    padded input gives one output per window start 0: the same as a stride of the input's length,
    which onnxruntime runs."""
    from onnx import TensorProto as T
    from onnx import helper, numpy_helper

    def model(stride: int) -> bytes:
        attrs = {"strides": [stride, 1], "pads": [1, 1, 1, 1]}
        if op == "MaxPool":
            node = helper.make_node(op, ["x"], ["y"], kernel_shape=[3, 3], **attrs)
            inits = []
        else:
            node = helper.make_node(op, ["x", "k"], ["y"], **attrs)
            inits = [numpy_helper.from_array(np.arange(18, dtype=np.float32).reshape(2, 1, 3, 3) / 9, "k")]
        graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", T.FLOAT, [1, 1, 4, 4])],
                                  [helper.make_tensor_value_info("y", T.FLOAT, list("nchw"))], initializer=inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()

    x = np.random.default_rng(2).standard_normal((1, 1, 4, 4)).astype(np.float32)
    got = fuzz.so.InferenceSession(model(2**62), fuzz.OPTS).run(None, {"x": x})[0]
    want = ort.InferenceSession(model(6)).run(None, {"x": x})[0]  # 6: the padded height
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_pool_kernel_below_one_is_refused_at_once(fuzz):
    """Found by the campaign (seed 0, inputs 6401, 7903, ...: 9 hangs in 31,661 inputs): a MaxPool
    kernel_shape mutated to -2**31 made 2**30 windows a row (minutes of lowering)."""
    from softipu.frontends.errors import LoweringError

    model, _ = fuzz.seeds()["cnn"]
    (pool,) = [n for n in model.graph.node if n.op_type == "MaxPool"]
    (kernel,) = [a for a in pool.attribute if a.name == "kernel_shape"]
    kernel.ints[0] = -(2**31)
    start = time.monotonic()
    with pytest.raises(LoweringError, match=r"kernel_shape \[-2147483648, 2\] must be positive"):
        fuzz.so.InferenceSession(model.SerializeToString(), fuzz.OPTS)
    assert time.monotonic() - start < 30
