"""The Report: cycles, seconds, flops, steps, summary, the versioned JSON document, traces, HTML."""

from __future__ import annotations

import copy
import json
import os
import re
import sys

import numpy as np
import pytest

import softipu as sp
from softipu import program as P
from softipu.codelets import BinaryOp, binary_op_codelet
from softipu.profile import SCHEMA, VERSION

HERE = os.path.basename(__file__)
N = 100  # elements per vertex


def line() -> int:
    """The line number of the caller's current line."""
    return sys._getframe(1).f_lineno


def variable(g: sp.Graph, n: int, tile: int, name: str, dtype=sp.float32) -> sp.Tensor:
    t = g.add_variable(dtype, (n,), name=name)
    g.set_tile_mapping(t, tile)
    return t


class Built:
    """A small program on ``target``: a remote copy, a repeated elementwise add, a sync."""

    def __init__(self, target: sp.Target, estimate_only: bool = False) -> None:
        g = self.graph = sp.Graph(target)
        add = binary_op_codelet(BinaryOp.ADD, sp.float32)
        self.add_cs = g.add_compute_set("add<f32>", op="popops::add")
        for tile in range(3):  # three local vertices of N floats on tiles 0..2
            a, b, out = (variable(g, N, tile, f"{k}{tile}") for k in "abo")
            g.add_vertex(self.add_cs, add, {"a": a, "b": b, "out": out}, tile=tile)
        self.x, self.y = variable(g, 64, 0, "x"), variable(g, 64, target.num_tiles - 1, "y")
        self.execute_line = line() + 1
        execute = P.Execute(self.add_cs)
        self.copy_line = line() + 1
        copy_ = P.Copy(self.x, self.y)
        self.program = P.Sequence(copy_, P.Repeat(2, execute), P.Sync())
        self.engine = sp.Engine(g, [self.program], estimate_only=estimate_only)


@pytest.fixture
def built() -> Built:
    return Built(sp.targets.ipu_model(tiles=4, clock_hz=1e9))


@pytest.fixture
def ran(built: Built) -> Built:
    built.engine.run(0)
    built.engine.run(0)
    return built


def step_named(report: sp.Report, name: str) -> dict:
    (step,) = [s for s in report.steps if s["name"] == name]
    return step


# --- before anything runs ------------------------------------------------------------------------


def test_report_before_any_run(built):
    report = built.engine.report
    assert not report.has_run
    for what in ("cycles", "seconds", "flops"):
        with pytest.raises(sp.ReportError, match="no program has run yet"):
            getattr(report, what)
    assert "nothing has run yet" in report.summary()
    assert "not run" in repr(report)
    # Memory is known at compile time.
    assert report.tile_memory.shape == (4,)
    assert report.tile_memory.min() > 0
    assert sum(report.memory_by_category.values()) == int(report.tile_memory.sum())
    assert report.fits
    assert all(s["count"] == 0 for s in report.steps)


# --- after runs ------------------------------------------------------------------------------------


def test_cycles_seconds_and_flops(ran):
    report = ran.engine.report
    target = ran.graph.target
    per_run = sum(s["cycles"] * s["count"] for s in report.steps) // 2
    assert report.cycles == 2 * per_run
    assert report.runs == [{"program": 0, "cycles": per_run}] * 2
    assert report.seconds == pytest.approx(report.cycles / target.clock_hz)
    assert report.seconds == pytest.approx(report.cycles * 1e-9)  # 1 GHz
    # BinaryOp1D<ADD,float>: N flops per vertex; 3 vertices; 2 turns of the Repeat; 2 runs.
    assert report.flops == N * 3 * 2 * 2


def test_steps_name_op_source_and_split(ran):
    report = ran.engine.report
    add = step_named(report, "add<f32>")
    assert add["op"] == "popops::add"
    assert add["kind"] == "compute"
    assert add["source"].endswith(f"{HERE}:{ran.execute_line}")
    assert add["count"] == 4
    # BinaryOp1D<ADD,float>, 100 elements: 6 x (29 + ceil(ceil(100 / 6) / 2) x 3) + 11 = 353.
    assert add["compute_cycles"] == 6 * (29 + 9 * 3) + 11
    assert add["exchange_cycles"] == 0
    assert add["sync_cycles"] == ran.graph.target.on_chip_sync_cycles
    assert add["flops"] == 3 * N
    copy_step = step_named(report, "Copy x -> y")
    assert copy_step["source"].endswith(f"{HERE}:{ran.copy_line}")
    assert copy_step["bytes_exchanged"] == 64 * 4
    for s in report.steps:
        assert s["cycles"] == s["compute_cycles"] + s["exchange_cycles"] + s["sync_cycles"]
        assert set(s) >= {"name", "op", "source", "count", "kind"}


def test_summary_names_the_target_and_the_top_steps(ran):
    text = ran.engine.report.summary()
    assert ran.graph.target.name in text
    assert f"{ran.engine.report.cycles:,} cycles" in text
    assert "add<f32>" in text and "Copy x -> y" in text
    assert "fits" in text
    for category in sp.compiler.memory.CATEGORIES:
        assert category in text
    top_one = ran.engine.report.summary(top=1)
    # The dearest step by total cycles is the add (4 runs x (353 + 150)).
    steps_part = top_one.split("steps (top")[1]
    assert "add<f32>" in steps_part and "Copy x -> y" not in steps_part


def test_report_is_a_snapshot_of_what_ran(built):
    before = built.engine.report
    built.engine.run(0)
    after = built.engine.report
    assert not before.has_run and after.has_run


# --- JSON ---------------------------------------------------------------------------------------


def test_json_round_trip(ran):
    report = ran.engine.report
    text = report.to_json()
    data = json.loads(text)
    assert (data["schema"], data["version"]) == (SCHEMA, VERSION) == ("softipu.report", 2)
    again = sp.Report.from_json(text)
    assert again.data == report.data
    assert again.cycles == report.cycles and again.flops == report.flops
    assert again.summary() == report.summary()
    np.testing.assert_array_equal(again.tile_memory, report.tile_memory)
    assert sp.Report.from_json(text.encode()).data == report.data


def test_save_json_writes_the_document(ran, tmp_path):
    path = tmp_path / "report.json"
    ran.engine.report.save_json(path)
    assert sp.Report.from_json(path.read_text()).data == ran.engine.report.data
    assert os.listdir(tmp_path) == ["report.json"]


def document(ran: Built) -> dict:
    return json.loads(ran.engine.report.to_json())


def rejected(data: object) -> str:
    with pytest.raises(sp.ReportError) as info:
        sp.Report.from_json(json.dumps(data))
    return str(info.value)


def test_from_json_rejects_invalid_json():
    with pytest.raises(sp.ReportError, match="invalid JSON"):
        sp.Report.from_json("{not json")
    with pytest.raises(sp.ReportError, match="not a softipu report"):
        sp.Report.from_json(b"\xff\xfe\x00")
    with pytest.raises(sp.ReportError, match="schema"):
        sp.Report.from_json("[1, 2, 3]")


def test_from_json_rejects_another_schema_or_version(ran):
    data = document(ran)
    assert "softipu.report" in rejected(dict(data, schema="perfetto"))
    message = rejected(dict(data, version=3))
    assert "version 3" in message and "regenerate" in message
    assert "version" in rejected({k: v for k, v in data.items() if k != "version"})


def _delete(data: dict, path: tuple) -> None:
    for key in path[:-1]:
        data = data[key]
    del data[path[-1]]


def _set(data: dict, path: tuple, value: object) -> None:
    for key in path[:-1]:
        data = data[key]
    data[path[-1]] = value


# Every key of the version-2 schema (report.py's docstring, docs/report_schema.md).
SCHEMA_KEYS = [
    ("target",), ("target", "name"), ("target", "num_ipus"), ("target", "tiles_per_ipu"),
    ("target", "num_tiles"), ("target", "bytes_per_tile"), ("target", "clock_hz"),
    ("replication_factor",), ("estimate_only",),
    ("execution",), ("execution", "cycles"), ("execution", "runs"), ("execution", "runs", 0, "program"),
    ("execution", "runs", 0, "cycles"), ("execution", "trace"), ("execution", "trace_dropped"),
    ("steps",), ("steps", 0, "name"), ("steps", 0, "cycles"), ("steps", 0, "source"),
    ("steps", 0, "count"), ("memory",), ("memory", "bytes_per_tile"), ("memory", "categories"),
    ("memory", "liveness"), ("memory", "liveness", "bytes"), ("memory", "liveness", "steps"),
    ("memory", "variables"), ("compile",), ("compile", "passes"),
    ("softipu_version",), ("target", "peak_flops_per_cycle"), ("target", "peak_flops_per_cycle", "fp16"),
    ("memory", "named"), ("memory", "named", "list"), ("memory", "named", "list", 0, "name"),
    ("memory", "named", "list", 0, "bytes"), ("memory", "named", "list", 0, "first"),
    ("memory", "named", "tile_top"), ("memory", "named", "peak"),
    ("memory", "named", "peak", "contributors"), ("program",), ("program", "programs"),
    ("program", "functions"), ("tile_cycles",), ("tile_cycles", "steps"), ("tile_cycles", "cycles"),
]


@pytest.mark.parametrize("path", [("target",), ("execution", "cycles"), ("steps", 0, "cycles"),
                                  ("memory", "categories"), ("execution", "trace")])
def test_from_json_rejects_missing_keys(ran, path):
    data = document(ran)
    _delete(data, path)
    message = rejected(data)
    assert "corrupt softipu report" in message and repr(path[-1]) in message


def test_from_json_rejects_every_missing_schema_key(ran):
    """A document missing any documented key is refused up front, not by a KeyError later."""
    accepted = []
    for path in SCHEMA_KEYS:
        data = document(ran)
        _delete(data, path)
        try:
            sp.Report.from_json(json.dumps(data))
        except sp.ReportError:
            continue
        accepted.append(".".join(map(str, path)))
    assert accepted == [], f"from_json accepted reports missing {accepted}"


@pytest.mark.parametrize(
    ("path", "value", "words"),
    [
        (("execution", "cycles"), "5", "execution.cycles"),
        (("execution", "cycles"), True, "execution.cycles"),
        (("target", "num_tiles"), 4.0, "target.num_tiles"),
        (("target", "clock_hz"), "fast", "target.clock_hz"),
        (("steps", 0, "count"), 1.5, "steps[0].count"),
        (("steps", 0, "name"), 7, "steps[0].name"),
        (("steps", 0, "estimated_by_default"), "no", "steps[0].estimated_by_default"),
        (("memory", "bytes_per_tile"), None, "memory.bytes_per_tile"),
        (("memory", "categories", "stacks"), [1, 2], "memory.categories.stacks"),
        (("execution", "runs", 0, "cycles"), "9", "execution.runs"),
    ],
)
def test_from_json_rejects_wrong_types(ran, path, value, words):
    data = document(ran)
    _set(data, path, value)
    message = rejected(data)
    assert "corrupt softipu report" in message and words in message


def test_from_json_rejects_non_integer_memory(ran):
    data = document(ran)
    data["memory"]["categories"]["stacks"] = ["lots"] * 4
    assert "memory.categories.stacks" in rejected(data)


@pytest.mark.parametrize("entry", ["past_end", [-1, 0, 1], [0, -5, 1], [0, 0, 0], [0, 0]])
def test_from_json_rejects_bad_trace_entries(ran, entry):
    data = document(ran)
    if entry == "past_end":
        entry = [len(data["steps"]), 0, 1]
    data["execution"]["trace"].append(entry)
    message = rejected(data)
    assert "corrupt softipu report" in message and "trace" in message


# --- Perfetto / Chrome trace ------------------------------------------------------------------------


def load_trace(report: sp.Report, path) -> list[dict]:
    report.save_trace(path)
    doc = json.loads(path.read_text())
    assert set(doc) >= {"traceEvents"}
    return doc["traceEvents"]


def test_trace_events_are_well_formed(ran, tmp_path):
    events = load_trace(ran.engine.report, tmp_path / "trace.json")
    assert events
    for e in events:
        assert {"name", "ph", "pid", "tid"} <= set(e)
    slices = [e for e in events if e["ph"] == "X"]
    assert slices
    for e in slices:
        assert isinstance(e["ts"], (int, float)) and e["ts"] >= 0
        assert isinstance(e["dur"], (int, float)) and e["dur"] > 0
    tracks = [e for e in events if e["ph"] == "M" and e["name"] == "thread_name"]
    assert [e["tid"] for e in tracks] == [0]  # one IPU, one track
    assert os.listdir(tmp_path) == ["trace.json"]


def test_trace_has_one_track_per_ipu_and_bsp_phases_in_order(tmp_path):
    b = Built(sp.targets.ipu_model(tiles=4, num_ipus=2))
    b.engine.run(0)
    report = b.engine.report
    clock = b.graph.target.clock_hz
    events = load_trace(report, tmp_path / "trace.json")
    tracks = [e for e in events if e["ph"] == "M" and e["name"] == "thread_name"]
    assert sorted(e["tid"] for e in tracks) == [0, 1]
    trace = report.data["execution"]["trace"]
    for tid in (0, 1):
        slices = sorted((e for e in events if e["ph"] == "X" and e["tid"] == tid),
                        key=lambda e: e["ts"])
        expected = []
        for step_index, start, times in trace:
            step = report.steps[step_index]
            at = start
            for phase in ("sync", "exchange", "compute"):
                cycles = step[f"{phase}_cycles"] * times
                if cycles:
                    expected.append((f"{phase}: {step['name']}", at * 1e6 / clock, cycles * 1e6 / clock))
                    at += cycles
        got = [(e["name"], e["ts"], e["dur"]) for e in slices]
        assert [g[0] for g in got] == [x[0] for x in expected]
        np.testing.assert_allclose([g[1:] for g in got], [x[1:] for x in expected], rtol=1e-12)
    # The whole timeline covers the run: the last slice ends at report.cycles.
    last = max(e["ts"] + e["dur"] for e in events if e["ph"] == "X")
    assert last == pytest.approx(report.cycles * 1e6 / clock)


def test_trace_of_the_copy_across_ipus_shows_the_global_sync(tmp_path):
    b = Built(sp.targets.ipu_model(tiles=4, num_ipus=2))
    b.engine.run(0)
    report = b.engine.report
    copy_step = step_named(report, "Copy x -> y")  # tile 0 to tile 7: IPU 0 to IPU 1
    assert copy_step["inter_ipu_bytes"] == 64 * 4
    # An inter-IPU sync: the on-chip 150 plus the poplibs fabric term 40 (issue 10).
    assert copy_step["sync_cycles"] == b.graph.target.global_sync_cycles() == 150 + 40
    events = load_trace(report, tmp_path / "t.json")
    syncs = [e for e in events if e.get("name") == "sync: Copy x -> y"]
    assert len(syncs) == 2  # one per IPU track
    assert all(e["dur"] == pytest.approx(190 * 1e6 / b.graph.target.clock_hz) for e in syncs)


def test_trace_of_an_estimate(tmp_path):
    b = Built(sp.targets.ipu_model(tiles=4), estimate_only=True)
    b.engine.run(0)
    events = load_trace(b.engine.report, tmp_path / "trace.json")
    last = max(e["ts"] + e["dur"] for e in events if e["ph"] == "X")
    assert last == pytest.approx(b.engine.report.seconds * 1e6)


# --- HTML --------------------------------------------------------------------------------------------


def test_html_is_one_self_contained_file(ran, tmp_path):
    path = tmp_path / "report.html"
    ran.engine.report.save_html(path)
    text = path.read_text()
    assert text.lstrip().lower().startswith("<!doctype html>")
    assert "http://" not in text and "https://" not in text
    assert "<script src" not in text.lower()
    assert "<link" not in text.lower()
    assert "add&lt;f32&gt;" in text and "Copy x -&gt; y" in text  # step names, escaped
    assert "add<f32>" not in text
    # The page carries the JSON report itself, intact, as the source of every view.
    block = re.search(r'<script type="application/json" id="softipu-report">(.*?)</script>', text, re.S)
    assert json.loads(block.group(1)) == ran.engine.report.data
    assert text.count("</script>") == 2  # the data block and the page's script, nothing more
    for category in sp.compiler.memory.CATEGORIES:
        assert category in text
    assert os.listdir(tmp_path) == ["report.html"]


def test_html_before_any_run(built, tmp_path):
    path = tmp_path / "report.html"
    built.engine.report.save_html(path)
    assert "nothing has run yet" in path.read_text()


def test_saving_replaces_a_file_atomically(ran, tmp_path):
    path = tmp_path / "out.json"
    path.write_text("old contents")
    ran.engine.report.save_json(path)
    assert sp.Report.from_json(path.read_text()).data == ran.engine.report.data
    ran.engine.report.save_trace(tmp_path / "out.trace.json")
    ran.engine.report.save_html(tmp_path / "out.html")
    assert sorted(os.listdir(tmp_path)) == ["out.html", "out.json", "out.trace.json"]


def test_report_round_trips_and_renders_after_an_estimate(tmp_path):
    b = Built(sp.targets.ipu_model(tiles=4), estimate_only=True)
    b.engine.run(0)
    report = sp.Report.from_json(b.engine.report.to_json())
    assert report.data["estimate_only"] is True
    assert "estimate only" in report.summary()
    report.save_html(tmp_path / "r.html")
    report.save_trace(tmp_path / "r.json")
    assert copy.deepcopy(report.data) == b.engine.report.data


# --- whether and how it fits -----------------------------------------------------------------------


def _filled(per_tile: list[int], bytes_per_tile: int = 4096) -> sp.Report:
    """A report of variables of ``per_tile`` floats on tiles 0..n-1 of a tile-limited target."""
    target = sp.targets.ipu_model(tiles=len(per_tile), bytes_per_tile=bytes_per_tile)
    g = sp.Graph(target)
    for tile, n in enumerate(per_tile):
        if n:
            variable(g, n, tile, f"v{tile}")
    return sp.Engine(g, [P.Sequence()], options={"debug.allowOutOfMemory": True},
                     estimate_only=True).report


def test_fit_says_how_much_room_is_left():
    report = _filled([100, 300, 0, 0])
    f = report.fit()
    mem = report.tile_memory
    assert f["fits"] and f["tiles_over"] == 0 and f["worst_tile"] == 1
    assert f["headroom"] == 4096 - int(mem[1]) and f["ipus_needed"] == 1
    assert f["worst_tile_categories"] and sum(f["worst_tile_categories"].values()) == int(mem[1])
    assert f"fits: {f['headroom']:,} B left on the fullest tile (tile 1)" in report.summary()


def test_an_uneven_spread_is_told_apart_from_too_much_data():
    uneven = _filled([1500, 10, 10, 10])  # 6,000 B on tile 0; the chip holds 16,384 B
    f = uneven.fit()
    assert not f["fits"] and f["tiles_over"] == 1 and f["worst_tile"] == 0 and f["headroom"] < 0
    assert f["ipus_needed"] == 1
    assert "only its spread is too uneven" in uneven.summary()
    assert f"tile 0 is {-f['headroom']:,} B over" in uneven.summary()
    full = _filled([1500, 1500, 1500, 1500])  # 24,000 B > 16,384 B: two IPUs' memory at least
    f = full.fit()
    assert f["tiles_over"] == 4 and f["ipus_needed"] == -(-f["total_bytes"] // 16384) == 2
    assert "needs the memory of 2 IPUs" in full.summary()


# --- version 2: what the page's views read --------------------------------------------------------------


def test_named_variables_and_each_tiles_largest(ran):
    named = ran.engine.report.data["memory"]["named"]
    by_name = {v["name"]: v for v in named["list"]}
    # Nine vectors of N floats (a, b, o on tiles 0..2) and two of 64 (x on tile 0, y on tile 3).
    assert named["count"] == 11 and set(by_name) == {f"{k}{t}" for k in "abo" for t in range(3)} | {"x", "y"}
    for t in range(3):
        for k in "abo":
            v = by_name[f"{k}{t}"]
            assert (v["bytes"], v["tiles"], v["shape"], v["dtype"]) == (N * 4, 1, [N], str(sp.float32))
    assert by_name["x"]["bytes"] == by_name["y"]["bytes"] == 64 * 4
    top = named["tile_top"]
    # Tile 0 holds a0, b0, o0 (400 B each) and x (256 B): its three largest are the 400s.
    assert sorted(named["list"][i]["name"] for i, _ in top[0]) == ["a0", "b0", "o0"]
    assert [b for _, b in top[0]] == [N * 4] * 3
    assert [(named["list"][i]["name"], b) for i, b in top[3]] == [("y", 256)]
    # x and a0..b2 are read before anything writes them: always live; the outputs are results.
    assert by_name["x"]["always_live"] and by_name["a0"]["always_live"]


def test_tile_cycles_of_the_add_are_its_vertex_on_each_tile(ran):
    report = ran.engine.report
    add = step_named(report, "add<f32>")
    cycles = report.data["tile_cycles"]
    assert add["index"] in cycles["steps"]
    per_tile = cycles["cycles"][cycles["steps"].index(add["index"])]
    # One BinaryOp1D<ADD,float> of 100 elements on each of tiles 0..2 (353 cycles, see above), none on 3.
    assert per_tile == [6 * (29 + 9 * 3) + 11] * 3 + [0]
    assert max(per_tile) == add["compute_cycles"]
    state = dict(map(tuple, report.data["step_memory"]))
    assert state[add["index"]] == int(report.memory_by_category_per_tile()["vertex_state"].sum())


def test_program_tree_mirrors_the_program(ran):
    tree = ran.engine.report.data["program"]
    assert not tree["truncated"] and tree["functions"] == []
    (root,) = tree["programs"]
    assert root["k"] == "sequence" and root["s"] == -1
    copy_node, repeat, sync = root["c"]
    steps = ran.engine.report.steps
    assert copy_node["k"] == "copy" and steps[copy_node["s"]]["name"] == "Copy x -> y"
    assert repeat["k"] == "repeat" and repeat["n"] == 2
    (execute,) = repeat["c"]
    assert execute["k"] == "execute" and execute["name"] == "add<f32>"
    assert steps[execute["s"]]["name"] == "add<f32>"
    assert steps[execute["s"]]["source"].endswith(f"{HERE}:{ran.execute_line}")
    assert "src" not in execute and HERE in root["src"]  # the Sequence was built in this file
    assert sync["k"] == "sync"


def test_peak_contributors_are_live_at_the_peak():
    """Two intermediates written then read, one after the other: the peak is where both live."""
    g = sp.Graph(sp.targets.ipu_model(tiles=2))
    add = binary_op_codelet(BinaryOp.ADD, sp.float32)
    a, b = variable(g, N, 0, "a"), variable(g, N, 0, "b")
    t1, t2, out = variable(g, N, 0, "t1"), variable(g, N, 0, "t2"), variable(g, N, 0, "out")
    cs = []
    for i, (x, y, z) in enumerate([(a, b, t1), (t1, b, t2), (t1, t2, out)]):
        c = g.add_compute_set(f"step{i}")
        g.add_vertex(c, add, {"a": x, "b": y, "out": z}, tile=0)
        cs.append(c)
    eng = sp.Engine(g, [P.Sequence(*(P.Execute(c) for c in cs))])
    eng.run(0)
    named = eng.report.data["memory"]["named"]
    peak = named["peak"]
    names = {named["list"][i]["name"]: nbytes for i, nbytes in peak["contributors"]}
    # t1 (written at step0, read at step2) and t2 (written at step1, read at step2) overlap.
    assert names == {"t1": N * 4, "t2": N * 4}
    assert peak["bytes"] == max(eng.report.data["memory"]["liveness"]["bytes"])
    assert peak["bytes"] == 2 * N * 4 + peak["receive_bytes"]  # no exchange here: receive_bytes 0
    assert eng.report.steps[peak["step"]]["name"] in ("step1", "step2")


def test_a_version_1_document_is_upgraded_on_read(ran):
    data = json.loads(ran.engine.report.to_json())
    data["version"] = 1
    for key in ("softipu_version", "program", "tile_cycles", "step_memory"):
        del data[key]
    del data["memory"]["named"], data["target"]["peak_flops_per_cycle"]
    old = sp.Report.from_json(json.dumps(data))
    assert old.data["version"] == 2 and old.data["memory"]["named"]["list"] == []
    assert old.summary() == ran.engine.report.summary()
    assert old.cycles == ran.engine.report.cycles


def test_references_outside_their_lists_are_refused(ran):
    data = document(ran)
    data["memory"]["named"]["tile_top"][0] = [[999, 4]]
    assert "memory.named.tile_top[0]" in rejected(data)
    data = document(ran)
    data["tile_cycles"]["cycles"][0] = [1, 2]
    assert "tile_cycles.cycles" in rejected(data)
