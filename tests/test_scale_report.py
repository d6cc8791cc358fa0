"""The report at scale (profile/scale.py via frontends/torch/scale/report.py) on a hand-made estimate."""

from __future__ import annotations

import json

import pytest

from softipu.errors import ReportError
from softipu.frontends.torch.scale import LayerCost
from softipu.frontends.torch.scale.pod import TrainingConfig, price_training
from softipu.frontends.torch.scale.report import save_html, save_trace, scale_document, summary
from softipu.profile.scale import check_scale_report, scale_trace_events
from softipu.target.systems import POD16


def layer(name, fwd, bwd):
    return LayerCost(name=name, forward=fwd, backward=bwd, update_per_param=1.0, params=10, param_bytes=20,
                     saved_bytes=100, input_bytes=10, output_bytes=64, code_bytes=5, temporary_bytes=7)


@pytest.fixture
def estimate():
    cfg = TrainingConfig(micro_batch=2, accumulation=4, replicas=2, layers_per_ipu=(1, 1), label="tiny")
    return price_training([layer("a", 100, 200), layer("b", 300, 400)], cfg, POD16)


def test_trace_one_track_per_ipu_and_every_stage_run(estimate):
    events = scale_trace_events(scale_document(estimate))
    names = {e["args"]["name"] for e in events if e["name"] == "thread_name"}
    assert names == {"IPU 0", "IPU 1"}
    stages = [e for e in events if e.get("cat") == "stage"]
    # 3 stages (F on IPU0, FB on IPU1, B on IPU0) x 4 micro-batches
    assert len(stages) == 3 * 4
    assert sorted(e["name"] for e in stages if e["tid"] == 1) == [f"FB{m}" for m in range(4)]
    assert sorted(e["name"] for e in stages if e["tid"] == 0) == sorted(
        [f"F{m}" for m in range(4)] + [f"B{m}" for m in range(4)])
    # B of micro-batch m starts after FB of m ended (it runs one pipeline cycle later)
    fb = {e["name"][2:]: e for e in stages if e["name"].startswith("FB")}
    for e in stages:
        if e["name"].startswith("B"):
            f = fb[e["name"][1:]]
            assert e["ts"] >= f["ts"] + f["dur"]
    us = 1e6 / POD16.chip.clock_hz
    last = max(e["ts"] + e["dur"] for e in events if e.get("ph") == "X")
    assert last == pytest.approx(estimate.cycles * us)  # the trace ends with the step


def test_trace_head_back_on_ipu0():
    # stages (a | b | head) on IPUs (0, 1, 0): the head's merged stage FB runs on IPU 0's track
    cfg = TrainingConfig(micro_batch=1, accumulation=5, replicas=1, layers_per_ipu=(1, 1, 1), stage_ipus=(0, 1, 0))
    est = price_training([layer("a", 100, 200), layer("b", 300, 400), layer("head", 50, 60)], cfg, POD16)
    stages = [e for e in scale_trace_events(scale_document(est)) if e.get("cat") == "stage"]
    assert sorted(e["name"] for e in stages if e["tid"] == 0 and e["name"].startswith("FB")) == \
        [f"FB{m}" for m in range(5)]
    assert {e["tid"] for e in stages} == {0, 1} and len(stages) == 5 * 5


def test_summary_html_and_files(estimate, tmp_path):
    text = summary(estimate)
    assert "tiny on IPU-POD16: 2 replicas x 2 IPUs" in text and "samples/s" in text
    assert "bubble" in text and "all_reduce" in text and "IPU1" in text
    save_html(estimate, tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    assert "Memory per IPU" in page and "softipu-scale" in page
    save_trace(estimate, tmp_path / "t.json")
    assert json.loads((tmp_path / "t.json").read_text())["traceEvents"]


def test_bad_document():
    with pytest.raises(ReportError, match="not a softipu.scale_report"):
        check_scale_report({"schema": "softipu.report", "version": 2})
    with pytest.raises(ReportError, match="missing"):
        check_scale_report({"schema": "softipu.scale_report", "version": 1})
