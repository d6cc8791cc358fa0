"""The ONNX frontend under mutated models (issue 18): a short run of the campaign in
bench/bench_onnx_fuzz.py, a check that its escape detector sees a read outside the model's folder,
and one regression test for each kind of failure the campaign found."""

from __future__ import annotations

import importlib.util
import sys
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
