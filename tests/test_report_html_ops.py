"""The report page's memory-by-op view in headless Chromium (see test_browser.py for the set-up).

The view groups ``step_memory`` (vertex-state bytes per compute step) by each step's op. Its figures
are checked against the JSON report and against the memory categories worked out independently at
compile time: the ops' bytes add up to the ``vertex_state`` category over all tiles.
"""

from __future__ import annotations

from collections import defaultdict

import pytest

pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")

from test_browser import browser, number, open_page, reports, shot  # noqa: E402,F401  (fixtures)


def _by_op(report) -> dict[str, list[tuple[int, str, int]]]:
    out: dict[str, list[tuple[int, str, int]]] = defaultdict(list)
    for step, nbytes in report.data["step_memory"]:
        s = report.steps[step]
        out[s["op"] or s["kind"]].append((step, s["name"], nbytes))
    return out


def test_memory_by_op_sorts_filters_hovers_and_adds_up(reports, open_page):  # noqa: F811
    report = reports["bert"]
    by_op = _by_op(report)
    vertex_state = sum(report.data["memory"]["categories"]["vertex_state"])
    assert sum(b for rows in by_op.values() for _, _, b in rows) == vertex_state > 0
    page = open_page(report, name="op-memory")
    page.show("memory")
    # Default order: bytes, largest first; the rows are the JSON's ops and their sums.
    ops = page.table_column("op-memory", 0)
    nbytes = [number(b) for b in page.table_column("op-memory", 2)]
    assert dict(zip(ops, nbytes, strict=True)) == {k: sum(b for _, _, b in v) for k, v in by_op.items()}
    assert nbytes == sorted(nbytes, reverse=True)
    assert [number(n) for n in page.table_column("op-memory", 1)] == [len(by_op[k]) for k in ops]
    shares = page.table_column("op-memory", 3)
    assert shares[0] == f"{100 * nbytes[0] / vertex_state:.1f}%"
    # Sort by steps, then by op name (text columns sort ascending first).
    page.page.click("table[data-name=op-memory] th[data-key=steps]")
    assert [number(n) for n in page.table_column("op-memory", 1)] == sorted(
        (len(v) for v in by_op.values()), reverse=True)
    page.page.click("table[data-name=op-memory] th[data-key=op]")
    assert page.table_column("op-memory", 0) == sorted(by_op)
    # Filter by op.
    page.page.fill("input[data-filter=op-memory]", "matmul")
    assert page.table_column("op-memory", 0) == ["matmul"]
    # Hover the row: the op's steps, largest first, with their bytes.
    page.page.hover("table[data-name=op-memory] tbody tr")
    tip = page.page.locator("#tooltip")
    assert tip.is_visible()
    lines = tip.inner_text().split("\n")
    mm = sorted(by_op["matmul"], key=lambda x: -x[2])
    assert lines[0] == f"matmul: {sum(b for _, _, b in mm):,} B of vertex state in {len(mm)} step(s)"
    assert lines[1].strip() == f"step {mm[0][0]}: {mm[0][1]}, {mm[0][2]:,} B"
    assert len(lines) == 1 + min(len(mm), 12) + (len(mm) > 12)
    shot(page, "bert-memory-by-op")
    assert page.errors == []
