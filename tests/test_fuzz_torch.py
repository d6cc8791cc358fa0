"""The torch frontend under random small modules (issue 18): a short run of bench/fuzz_torch.py,
the grammar's models are valid PyTorch, and a mismatch is caught, saved and replayed."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[1] / "bench" / "fuzz_torch.py"


def fuzz_module():
    spec = importlib.util.spec_from_file_location("fuzz_torch", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_grammar_makes_models_eager_pytorch_runs():
    fz = fuzz_module()
    kinds = set()
    for i in range(60):
        spec = fz.random_spec(random.Random(f"grammar-{i}"))
        model, x, y = fz.build(spec, i)
        out, loss = model(x, y)
        assert out.shape == (spec["input"][0], 3) and loss.ndim == 0 and torch.isfinite(loss)
        kinds.add(len(spec["input"]))
        assert json.loads(json.dumps(spec)) == spec  # a reproducer holds it whole
    assert kinds == {2, 3, 4}  # vectors, sequences and images


def test_a_short_campaign_matches_eager(tmp_path):
    result = fuzz_module().campaign(count=2, seconds=300, seed=0, out=tmp_path)
    assert result["tried"] == 2
    bad = {k: result[k] for k in ("mismatch_inference", "mismatch_training", "other_exceptions", "hangs")}
    assert not any(bad.values()), result["examples"]
    assert result["ok"] == 2


def test_a_mismatch_is_saved_and_replayed(tmp_path, monkeypatch):
    fz = fuzz_module()
    monkeypatch.setattr(fz, "ATOL", -1.0)  # every comparison fails: the check can fail
    result = fz.campaign(count=1, seconds=300, seed=0, out=tmp_path)
    assert result["mismatch_inference"] == 1
    (saved,) = tmp_path.glob("*.json")
    case = json.loads(saved.read_text())
    assert case["outcome"] == "mismatch_inference" and case["detail"].startswith("inference logits")
    assert fz.replay(saved, 300)["outcome"] == "mismatch_inference"
    monkeypatch.setattr(fz, "ATOL", 1e-4)
    assert fz.replay(saved, 300)["outcome"] == "ok"


def test_the_shared_composite_op_listing_is_torchs_and_follows_new_registrations():
    """The campaign memoises torch.export's listing of composite ops (a quarter of its CPU): it must
    equal torch's own, list an op registered later, and leave torch's function in place after."""
    import torch._export.utils as utils
    import torch.export.exported_program as exported_program

    fz = fuzz_module()
    plain = utils._collect_all_valid_cia_ops
    lib = torch.library.Library("softipu_fuzz_test", "DEF")
    try:
        with fz.shared_cia_listing():
            listing = exported_program._collect_all_valid_cia_ops
            assert listing is not plain and listing() == plain()
            assert listing() is listing()  # made once
            lib.define("twice(Tensor x) -> Tensor")
            lib.impl("twice", lambda x: x * 2, "CompositeImplicitAutograd")
            op = torch.ops.softipu_fuzz_test.twice.default
            assert op in listing()  # made again: an op was registered
        assert exported_program._collect_all_valid_cia_ops is plain
    finally:
        lib._destroy()
