"""Screenshots of the report page's views for the README (``make screenshots``).

    python docs/screenshots.py REPORT_DIR OUT_DIR [COMPARE_JSON]

Reads ``bert.report.json`` from REPORT_DIR (what ``make demo`` writes to ``reports/``) and, for the
compare view, COMPARE_JSON (the README's: the same BERT on a C600, ``demo_bert(sp.targets.C600,
...)``; default REPORT_DIR/cnn.report.json), opens each view in headless Chromium (Debian's
package, driven by Playwright) and writes ``report-<view>.png`` to OUT_DIR.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

from softipu.profile import Report

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def main(report_dir: str, out_dir: str, compare: str | None = None) -> None:
    src, out = Path(report_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bert = Report.load(src / "bert.report.json")
    cnn = Path(compare) if compare else src / "cnn.report.json"
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        page_path = Path(tmp) / "bert.html"
        bert.save_html(page_path, Report.load(cnn) if cnn.exists() else None)
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        page.goto(page_path.as_uri())
        page.wait_for_selector("body[data-ready='1']")
        views = ["summary", "chip", "memory", "execution"] + (["compare"] if cnn.exists() else [])
        for view in views:
            page.click(f"nav button[data-view={view}]")
            if view == "chip":  # hover a tile to show its tooltip
                box = page.locator("canvas.tiles").first.bounding_box()
                page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.4)
            page.screenshot(path=str(out / f"report-{view}.png"))
            page.mouse.move(0, 0)
            print(f"wrote {out / f'report-{view}.png'}")
        browser.close()


if __name__ == "__main__":
    main(*sys.argv[1:4])
