"""A self-contained HTML page for a report: inline SVG charts and tables, no scripts, no fetches."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from softipu.profile.report import Report

__all__ = ["render_html"]

_W, _H = 900, 220


def _polyline(values: np.ndarray, top: float, color: str) -> str:
    if values.size == 0 or top <= 0:
        return ""
    x = np.linspace(0, _W, num=values.size) if values.size > 1 else np.array([0.0])
    y = _H - values / top * (_H - 10)
    points = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(x, y, strict=True))
    return f'<polyline fill="none" stroke="{color}" stroke-width="1" points="{points}"/>'


def _chart(title: str, series: str, top: float, note: str) -> str:
    return (f"<h2>{html.escape(title)}</h2><svg width='{_W}' height='{_H}' "
            f"style='background:#fafafa;border:1px solid #ddd'>{series}</svg>"
            f"<p class='note'>{html.escape(note)}</p>")


def render_html(report: Report) -> str:
    d = report.data
    mem = report.tile_memory
    limit = d["memory"]["bytes_per_tile"]
    top = float(max(int(mem.max(initial=0)), limit))
    limit_line = _polyline(np.full(2, limit, float), top, "#c00")
    memory_chart = _chart("Memory per tile (peak bytes)", _polyline(mem.astype(float), top, "#236")
                          + limit_line, top,
                          f"blue: bytes used per tile (tiles 0..{mem.size - 1}); red: {limit:,} B per tile")
    live = np.asarray(d["memory"]["liveness"]["bytes"], float)
    liveness_chart = _chart("Not-always-live bytes over program points",
                            _polyline(live, float(live.max(initial=0)), "#262"),
                            float(live.max(initial=0)),
                            f"{live.size} program points; peak {int(live.max(initial=0)):,} B over all tiles")
    cats = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:,}</td></tr>"
                   for k, v in sorted(report.memory_by_category.items(), key=lambda kv: -kv[1]))
    rows = "".join(
        f"<tr><td>{html.escape(s['name'])}</td><td>{s['kind']}</td><td>{s['count']}</td>"
        f"<td>{s['cycles']:,}</td><td>{s['compute_cycles']:,}</td><td>{s['exchange_cycles']:,}</td>"
        f"<td>{s['sync_cycles']:,}</td><td>{s['bytes_exchanged']:,}</td>"
        f"<td>{html.escape(s['source'])}</td></tr>"
        for s in sorted(d["steps"], key=lambda s: -s["cycles"] * max(s["count"], 1))[:500])
    summary = html.escape(report.summary())
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>softipu report: {html.escape(d['target']['name'])}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}}td:first-child{{text-align:left}}
.note{{color:#555;font-size:90%}}pre{{background:#f4f4f4;padding:1em}}</style></head>
<body><h1>softipu report</h1><pre>{summary}</pre>
{memory_chart}
<h2>Memory by category (all tiles)</h2><table><tr><th>category</th><th>bytes</th></tr>{cats}</table>
{liveness_chart}
<h2>Steps</h2><table><tr><th>step</th><th>kind</th><th>runs</th><th>cycles</th><th>compute</th>
<th>exchange</th><th>sync</th><th>bytes</th><th>source</th></tr>{rows}</table>
</body></html>
"""
