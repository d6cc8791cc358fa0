"""The ``softipu`` command line: info, report (summary, --html, --compare), cache ls|clear, the
subcommand registry, rich output on a terminal and plain text in a pipe."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import softipu as sp
from softipu import cli
from softipu import program as P
from softipu.codelets import BinaryOp, binary_op_codelet


def small_report(repeats: int = 2) -> sp.Report:
    """Three adds of 64 floats on three tiles, repeated; a copy; run once."""
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    add = binary_op_codelet(BinaryOp.ADD, sp.float32)
    cs = g.add_compute_set("add<f32>", op="popops::add")
    for tile in range(3):
        ts = []
        for k in "abo":
            t = g.add_variable(sp.float32, (64,), name=f"{k}{tile}")
            g.set_tile_mapping(t, tile)
            ts.append(t)
        g.add_vertex(cs, add, dict(zip(("a", "b", "out"), ts, strict=True)), tile=tile)
    eng = sp.Engine(g, [P.Repeat(repeats, P.Execute(cs))])
    eng.run(0)
    return eng.report


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    status = cli.main(list(argv), stream=out)
    return status, out.getvalue()


@pytest.fixture
def saved(tmp_path) -> tuple[Path, sp.Report]:
    report = small_report()
    path = tmp_path / "small.report.json"
    report.save_json(path)
    return path, report


def test_info_names_the_version_targets_and_systems():
    status, text = run("info")
    assert status == 0
    assert f"softipu {sp.__version__}" in text
    for name in ("GC200", "GC2", "BOW", "IPU-POD16", "IPU-POD64"):
        assert re.search(rf"^{re.escape(name)}\s", text, re.M), name
    gc200 = next(line for line in text.splitlines() if line.startswith("GC200 "))
    assert "1,472" in gc200 and "638,976" in gc200  # tiles per IPU, bytes per tile (ipu-facts)
    assert "SOFTIPU_CACHE_DIR" in text and "SOFTIPU_LOG_LEVEL" in text


def test_report_prints_the_summary_in_a_pipe(saved):
    path, report = saved
    status, text = run("report", str(path), "--top", "3")
    assert status == 0
    assert text.strip() == report.summary(3).strip()  # plain text: not a terminal
    assert "\x1b[" not in text


def test_report_html_writes_the_page(saved, tmp_path):
    path, report = saved
    status, text = run("report", str(path), "--html")
    page = path.with_suffix(".html")
    assert status == 0 and f"wrote {page}" in text
    html = page.read_text()
    block = re.search(r'id="softipu-report">(.*?)</script>', html, re.S).group(1)
    assert json.loads(block) == report.data
    out = tmp_path / "elsewhere.html"
    assert run("report", str(path), "--html", str(out))[0] == 0 and out.is_file()


def test_report_compare_shows_the_differences(tmp_path):
    a, b = small_report(2), small_report(4)
    pa, pb = tmp_path / "a.json", tmp_path / "b.json"
    a.save_json(pa)
    b.save_json(pb)
    status, text = run("report", "--compare", str(pa), str(pb), "--html")
    assert status == 0
    row = next(line for line in text.splitlines() if line.startswith("cycles"))
    # The add ran twice as often in B; every other figure of the program is the same.
    steps_a = sum(s["cycles"] * s["count"] for s in a.steps)
    assert a.cycles == steps_a
    delta = b.cycles - a.cycles
    assert row.split()[1:4] == [f"{a.cycles:,}", f"{b.cycles:,}", f"+{delta:,}"]
    peak = next(line for line in text.splitlines() if line.startswith("peak tile bytes"))
    assert peak.rstrip().endswith("=")
    page = (tmp_path / "a.compare.html").read_text()
    assert 'id="softipu-compare"' in page


def test_report_errors_say_what_is_wrong(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path / "missing.json")]) == 1
    assert "cannot read report" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "other"}')
    assert cli.main(["report", str(bad)]) == 1
    assert "not a softipu report" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["report"])


def _entry(directory: Path, key: str, nbytes: int, age_s: float) -> Path:
    path = directory / key
    path.mkdir(parents=True)
    (path / "manifest.json").write_text("{}")
    (path / "data.bin").write_bytes(b"\0" * nbytes)
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def test_cache_ls_and_clear(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    old = _entry(tmp_path, "a" * 64, 3000, 7200)
    new = _entry(tmp_path, "b" * 64, 1000, 10)
    other = tmp_path / "not-an-entry"
    other.mkdir()
    monkeypatch.setenv(cli.CACHE_ENV, str(tmp_path))
    status, text = run("cache", "ls")
    assert status == 0
    assert "2 entries" in text
    lines = [line for line in text.splitlines() if line.startswith(("aaaa", "bbbb"))]
    assert [line[:4] for line in lines] == ["bbbb", "aaaa"]  # most recently used first
    assert "2 h ago" in lines[1]
    status, text = run("cache", "clear", "--dir", str(tmp_path))
    assert status == 0 and "removed 2 entries" in text
    assert not old.exists() and not new.exists() and other.is_dir()  # only cache entries go


def test_cache_without_a_directory_says_how_to_name_one(monkeypatch):
    monkeypatch.delenv(cli.CACHE_ENV, raising=False)
    with pytest.raises(SystemExit, match="--dir DIR or set SOFTIPU_CACHE_DIR"):
        cli.main(["cache", "ls"])


def test_a_registered_subcommand_runs(monkeypatch):
    seen = []

    def arguments(parser):
        parser.add_argument("--ipus", type=int, default=1)

    def go(args, out):
        seen.append(args.ipus)
        out.line(f"would launch on {args.ipus} IPUs")
        return 3

    monkeypatch.setattr(cli, "_COMMANDS", dict(cli._COMMANDS))
    cli.register("run", "launch a program on a system", arguments, go)
    assert run("run", "--ipus", "16") == (3, "would launch on 16 IPUs\n")
    assert seen == [16]


def test_rich_tables_on_a_terminal_plain_text_in_a_pipe():
    pytest.importorskip("rich")
    fancy = io.StringIO()
    out = cli.Output(fancy, rich=True)
    out.console.width = 100
    out.table("t", ["<name", "bytes"], [["x", 1234567]])
    assert "1,234,567" in fancy.getvalue() and "┃" in fancy.getvalue()  # a rich table's border
    plain = io.StringIO()
    cli.Output(plain).table("t", ["<name", "bytes"], [["x", 1234567]])
    assert plain.getvalue() == "t\nname      bytes\nx     1,234,567\n"


def test_python_dash_m_softipu_and_the_console_script():
    done = subprocess.run([sys.executable, "-m", "softipu", "--version"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == f"softipu {sp.__version__}"
    from importlib.metadata import entry_points

    (script,) = entry_points(group="console_scripts", name="softipu")
    assert script.value == "softipu.cli:main"


def test_plugins_register_subcommands_and_a_broken_one_is_skipped(monkeypatch, tmp_path, capsys):
    (tmp_path / "h8_cli_plugin.py").write_text(
        "from softipu import cli\n"
        "cli.register('hello', 'say hello', lambda p: None, lambda a, out: out.line('hello') or 0)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli, "_COMMANDS", dict(cli._COMMANDS))
    monkeypatch.setattr(cli, "PLUGINS", ["h8_cli_plugin", "h8_no_such_module"])
    assert run("hello") == (0, "hello\n")
    assert "subcommands of h8_no_such_module unavailable" in capsys.readouterr().err
    assert run("info")[0] == 0  # the built-in commands still work


def test_a_closed_pipe_ends_the_command_quietly():
    """`softipu info | head -0`: the reader has gone before the first line; no traceback, status 141
    (128 + SIGPIPE) as from a Unix tool."""
    proc = subprocess.Popen([sys.executable, "-m", "softipu", "info"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # before the interpreter has even started: every write meets a closed pipe
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err
