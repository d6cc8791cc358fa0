"""The report page: one self-contained HTML file that draws every view from the JSON report.

The page holds the report's JSON document (and, to compare two runs, a second one) in
``<script type="application/json">`` blocks, plus the hand-written script and style sheet in
``assets/`` inlined. Nothing is fetched: it opens from the file system with no network. The views
(summary, chip floor plan, memory, execution, compare) are described in docs/report_schema.md.
"""

from __future__ import annotations

import html
import json
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from softipu.profile.report import Report

__all__ = ["render_html"]

# JSON inside <script> must not close the element or open a comment: escape <, > and &.
_SCRIPT_SAFE = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
                              "\u2028": "\\u2028", "\u2029": "\\u2029"})


@cache
def _asset(name: str) -> str:
    return resources.files("softipu.profile").joinpath("assets", name).read_text(encoding="utf-8")


def _data_block(element_id: str, report: Report) -> str:
    text = json.dumps(report.data, separators=(",", ":")).translate(_SCRIPT_SAFE)
    return f'<script type="application/json" id="{element_id}">{text}</script>'


def render_html(report: Report, compare: Report | None = None) -> str:
    """The page for ``report``; with ``compare``, a Compare view of ``compare`` (B) against it (A)."""
    name = html.escape(report.data["target"]["name"])
    title = f"softipu report: {name}"
    if compare is not None:
        title += f" vs {html.escape(compare.data['target']['name'])}"
    blocks = _data_block("softipu-report", report)
    if compare is not None:
        blocks += _data_block("softipu-compare", compare)
    version = html.escape(str(report.data.get("softipu_version", "")))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{_asset("report.css")}</style></head>
<body>
<header><h1>{title}</h1><span class="sub">softipu {version}; report schema {report.data["schema"]}
version {report.data["version"]}</span></header>
<nav id="tabs"></nav>
<main id="views">
<section id="view-summary" class="view active"><pre id="summary-text">{html.escape(report.summary())}</pre>
<noscript><p>The chip, memory and execution views need JavaScript; the summary above needs none.</p>
</noscript>
</section>
</main>
{blocks}
<script>{_asset("report.js")}</script>
</body></html>
"""
