"""The report page in a real browser: headless Chromium (Debian's package) driven by Playwright.

Reports come from the demo models, shrunk: the heat stencil (examples/demo.py) on a two-IPU
target and the BERT-style encoder (examples/demo_torch.py). Each view is opened, checked for
console errors and content, and its interactions (sort, filter, hover, zoom, colour by step,
compare) are exercised against figures worked out here from the JSON report. Screenshots of every
view are written to ``$SOFTIPU_ARTIFACTS/browser`` (default ``build/test-artifacts/browser``).

Skipped, with the reason, where no Chromium or no Playwright is installed; ``.ci/run`` installs both.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest

import softipu as sp

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = next((p for p in (os.environ.get("SOFTIPU_CHROMIUM"), shutil.which("chromium"),
                             shutil.which("chromium-browser"), "/usr/bin/chromium") if p and Path(p).exists()),
                None)
if CHROMIUM is None:
    pytest.skip("no Chromium installed (Debian: apt-get install chromium; .ci/run does it)",
                allow_module_level=True)
playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed "
                                     "(pip install -e '.[dev]')")

# Chromium as the machines here need it: no sandbox as root, no GPU, and no background fetches
# (the network is closed); Playwright gives each launch a fresh profile of its own.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWS = ("summary", "chip", "memory", "execution")
ARTIFACTS = Path(os.environ.get("SOFTIPU_ARTIFACTS", ROOT / "build" / "test-artifacts")) / "browser"


def _example(name: str):
    spec = importlib.util.spec_from_file_location(f"_browser_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Reports(dict):
    """Reports of the demo models, each built on first use (the BERT one takes seconds)."""

    def __init__(self, tmp: Path) -> None:
        super().__init__()
        self.tmp = tmp

    def __missing__(self, which: str) -> sp.Report:
        if which == "bert":
            self[which] = _example("demo_torch").demo_bert(
                sp.targets.ipu_model(tiles=32), str(self.tmp), layers=1, hidden=32, heads=2, seq=8,
                batch=1)["report"]
        else:  # "heat" (4 sweeps) or "heat8" (8 sweeps)
            sweeps = 8 if which == "heat8" else 4
            self[which] = _example("demo").heat(sp.targets.ipu_model(tiles=64, num_ipus=2), rows_per_tile=2,
                                                width=32, iterations=sweeps)["report"]
        return self[which]


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> Reports:
    return Reports(tmp_path_factory.mktemp("reports"))


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


class Page:
    """A report page open in the browser, with every console error and page error it raised."""

    def __init__(self, browser, path: Path) -> None:
        self.page = browser.new_page(viewport={"width": 1300, "height": 900})
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: None if r.url.startswith(("file:", "data:", "about:"))
                     else self.errors.append(f"network request: {r.url}"))
        self.page.goto(path.as_uri())
        self.page.wait_for_selector("body[data-ready='1']")

    def show(self, view: str):
        self.page.click(f"nav button[data-view={view}]")
        return self.page.locator(f"#view-{view}")

    def table_column(self, name: str, column: int) -> list[str]:
        return self.page.eval_on_selector_all(
            f"table[data-name='{name}'] tbody tr", f"rows => rows.map(r => r.cells[{column}].textContent)")

    def close(self) -> None:
        self.page.close()


@pytest.fixture
def open_page(browser, tmp_path):
    pages = []

    def opener(report: sp.Report, compare: sp.Report | None = None, name: str = "report") -> Page:
        path = tmp_path / f"{name}.html"
        report.save_html(path, compare)
        pages.append(Page(browser, path))
        return pages[-1]

    yield opener
    for p in pages:
        p.close()


def number(text: str) -> int:
    return int(text.replace(",", ""))


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


@pytest.mark.parametrize("which", ["heat", "bert"])
def test_every_view_renders_without_console_errors(reports, open_page, which):
    page = open_page(reports[which], name=which)
    for view in VIEWS:
        section = page.show(view)
        assert section.is_visible()
        assert len(section.inner_text().strip()) > 100, f"{view} view is (nearly) empty"
        shot(page, f"{which}-{view}")
    assert page.page.locator("#view-chip canvas.tiles").count() == reports[which].data["target"]["num_ipus"]
    assert page.page.locator("#view-memory table[data-name=variables] tbody tr").count() > 0
    assert page.page.locator("#view-execution table[data-name=operations] tbody tr").count() == len(
        reports[which].steps)
    assert page.errors == []


def test_chip_hover_names_the_tile_its_memory_and_variables(reports, open_page):
    report = reports["heat"]
    page = open_page(report)
    page.show("chip")
    canvas = page.page.locator("canvas.tiles[data-ipu='1']")
    box = canvas.bounding_box()
    tiles_per_ipu = report.data["target"]["tiles_per_ipu"]
    cols = min(tiles_per_ipu, 64)
    cell = box["width"] / cols
    row, col = 0, 5  # tile 5 of IPU 1
    tile = tiles_per_ipu + row * cols + col
    page.page.mouse.move(box["x"] + (col + 0.5) * cell, box["y"] + (row + 0.5) * cell)
    tip = page.page.locator("#tooltip")
    assert tip.is_visible()
    text = tip.inner_text()
    assert text.startswith(f"tile {tile} (IPU 1)")
    assert f"memory {int(report.tile_memory[tile]):,} B" in text
    cats = {k: v[tile] for k, v in report.data["memory"]["categories"].items() if v[tile]}
    for name, nbytes in cats.items():
        assert f"{name}: {nbytes:,} B" in text
    named = report.data["memory"]["named"]
    biggest = named["list"][named["tile_top"][tile][0][0]]["name"]
    assert biggest in ("a", "b") and biggest in text  # the heat grids' bands live on every tile
    page.page.mouse.move(box["x"] - 40, box["y"] - 40)
    assert page.errors == []


def test_chip_colours_by_a_chosen_steps_cycles(reports, open_page):
    report = reports["heat"]
    page = open_page(report)
    page.show("chip")
    legend = page.page.locator("#chip-legend")
    mem = report.tile_memory
    assert legend.inner_text() == f"from {int(mem.min()):,} to {int(mem.max()):,} B"
    page.page.select_option("#chip-colour", "step:0")
    per_tile = report.data["tile_cycles"]["cycles"][0]
    assert legend.inner_text() == f"from {min(per_tile):,} to {max(per_tile):,} cycles"
    step = report.steps[report.data["tile_cycles"]["steps"][0]]
    assert max(per_tile) == step["compute_cycles"]  # the step's cycles are its busiest tile's


def test_operations_table_sorts_and_filters(reports, open_page):
    report = reports["bert"]
    page = open_page(report)
    page.show("execution")
    # Default order: total cycles (cycles x runs), largest first.
    totals = [number(t) for t in page.table_column("operations", 6)]
    assert totals == sorted((s["cycles"] * s["count"] for s in report.steps), reverse=True)
    page.page.click("table[data-name=operations] th[data-key=flops]")
    flops = [number(t) for t in page.table_column("operations", 10)]
    assert flops == sorted((s["flops"] for s in report.steps), reverse=True)
    page.page.click("table[data-name=operations] th[data-key=flops]")  # again: ascending
    assert [number(t) for t in page.table_column("operations", 10)] == sorted(s["flops"] for s in report.steps)
    page.page.fill("input[data-filter=operations]", "matmul")
    wanted = [s for s in report.steps if "matmul" in (s["name"] + s["op"] + s["kind"] + s["source"]).lower()]
    assert 0 < len(wanted) < len(report.steps)
    assert len(page.table_column("operations", 0)) == len(wanted)
    assert f"{len(wanted)} of {len(report.steps)} rows" in page.page.locator("#view-execution").inner_text()
    # Efficiency against the chip's fp32 peak, worked out here: FLOPs / (cycles x FLOPs a cycle).
    peak = report.data["target"]["peak_flops_per_cycle"]["fp32"]
    assert peak == 2 * 32 * sp.targets.ipu_model(tiles=32).amp_macs_per_cycle_fp32
    dearest = max(wanted, key=lambda s: s["flops"])
    page.page.click("table[data-name=operations] th[data-key=flops]")
    first = page.page.eval_on_selector("table[data-name=operations] tbody tr",
                                       "r => [r.cells[1].textContent, r.cells[12].textContent]")
    assert first == [dearest["name"], f"{100 * dearest['flops'] / (dearest['cycles'] * peak):.1f}%"]
    assert page.errors == []


def test_variables_search_and_the_liveness_peak(reports, open_page):
    report = reports["bert"]
    page = open_page(report)
    page.show("memory")
    names = page.table_column("variables", 0)
    listed = report.data["memory"]["named"]["list"]
    assert [number(b) for b in page.table_column("variables", 3)] == sorted(
        (v["bytes"] for v in listed), reverse=True)
    page.page.fill("input[data-filter=variables]", "weight")
    filtered = page.table_column("variables", 0)
    assert filtered and all("weight" in n.lower() for n in filtered) and len(filtered) < len(names)
    peak = report.data["memory"]["named"]["peak"]
    assert peak["bytes"] == max(report.data["memory"]["liveness"]["bytes"])
    rows = page.table_column("peak", 2)
    assert [number(b) for b in rows] == sorted((b for _, b in peak["contributors"]), reverse=True) + (
        [peak["receive_bytes"]] if peak["receive_bytes"] else []) or rows == []
    assert page.errors == []


def test_timeline_zooms_pans_and_hovers(reports, open_page):
    report = reports["heat"]
    page = open_page(report)
    page.show("execution")
    canvas = page.page.locator("#timeline")

    def span() -> tuple[float, float]:
        return float(canvas.get_attribute("data-lo")), float(canvas.get_attribute("data-hi"))

    lo, hi = span()
    assert (lo, hi) == (0, report.cycles)  # the trace covers the whole run
    page.page.click("#zoom-in")
    lo2, hi2 = span()
    assert hi2 - lo2 == pytest.approx((hi - lo) / 2)
    box = canvas.bounding_box()
    page.page.mouse.move(box["x"] + box["width"] * 0.8, box["y"] + 30)
    page.page.mouse.wheel(0, -300)
    lo3, hi3 = span()
    assert hi3 - lo3 < hi2 - lo2
    tip = page.page.locator("#tooltip")
    page.page.mouse.move(box["x"] + box["width"] * 0.8 + 1, box["y"] + 32)
    names = {s["name"] for s in report.steps}
    text = tip.inner_text()
    assert tip.is_visible() and text.split("\n")[0].split(": ", 1)[1] in names
    page.page.click("#zoom-reset")
    assert span() == (0, report.cycles)
    tree = page.page.locator("#program-tree").inner_text()
    assert "repeat x2" in tree  # demo.heat: Repeat(iterations // 2, two sweeps)
    assert page.errors == []


def test_compare_highlights_the_differences(reports, open_page):
    a, b = reports["heat"], reports["heat8"]
    page = open_page(a, b, name="compare")
    section = page.show("compare")
    assert section.is_visible()
    row = page.page.locator("#compare-summary tr", has_text="cycles").first
    cells = row.locator("td").all_inner_texts()
    assert cells[:3] == ["cycles", f"{a.cycles:,}", f"{b.cycles:,}"]
    assert cells[3].startswith(f"+{b.cycles - a.cycles:,}")
    assert "worse" in row.locator("td").nth(3).get_attribute("class")  # more cycles is worse
    same = page.page.locator("#compare-summary tr", has_text="peak tile memory").first
    assert same.locator("td").nth(3).inner_text() == "="  # same program, same memory
    highlighted = page.page.locator("table[data-name=compare-steps] tbody tr.hl").count()

    def by_name(r: sp.Report) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in r.steps:
            out[s["name"]] = out.get(s["name"], 0) + s["cycles"] * s["count"]
        return out

    ta, tb = by_name(a), by_name(b)
    differ = [n for n in set(ta) | set(tb) if ta.get(n, 0) != tb.get(n, 0)]
    assert highlighted == len(differ) == 4  # both sweeps (twice the turns); "Repeat x2" and "Repeat x4"
    shot(page, "heat-compare")
    assert page.errors == []


def test_page_opens_offline_from_a_v1_document(reports, open_page, tmp_path):
    """A saved version-1 report (older softipu) still renders: its version-2 parts are empty."""
    data = json.loads(reports["heat"].to_json())
    data["version"] = 1
    for key in ("softipu_version", "program", "tile_cycles", "step_memory"):
        del data[key]
    del data["memory"]["named"], data["target"]["peak_flops_per_cycle"]
    page = open_page(sp.Report.from_json(json.dumps(data)), name="v1")
    for view in VIEWS:
        assert page.show(view).is_visible()
    assert page.errors == []


def test_a_report_of_nothing_run_renders(open_page):
    """Memory is known at compile time; the execution views are empty but must not fail."""
    from softipu import program as P

    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    x = g.add_variable(sp.float32, (8,), name="x")
    g.set_tile_mapping(x, 0)
    page = open_page(sp.Engine(g, [P.Sequence(P.Copy(x, x), P.Sync())]).report, name="unrun")
    for view in VIEWS:
        assert page.show(view).is_visible()
    assert "not run" in page.page.locator("#view-summary").inner_text()
    assert page.errors == []
