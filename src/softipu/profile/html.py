"""A self-contained HTML page for a report: inline SVG charts and tables, no scripts, no fetches."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from softipu.profile.report import Report

__all__ = ["render_html"]

_W, _H, _PAD = 900, 240, 40  # chart size and the left margin for axis labels
_MAX_BARS = 300  # more tiles than this are shown in bins (each bin: its busiest tile)
_COLORS = ("#1f4e79", "#2e86c1", "#85c1e9", "#117a65", "#52be80", "#d4ac0d", "#ca6f1e", "#922b21")


def _memory_chart(report: Report) -> str:
    per_cat = report.memory_by_category_per_tile()
    names = list(per_cat)
    stack = np.stack([per_cat[n] for n in names])  # (categories, tiles)
    total = stack.sum(axis=0)
    tiles = total.size
    bins = min(tiles, _MAX_BARS)
    edges = np.linspace(0, tiles, bins + 1).astype(int)
    pick = np.array([lo + int(np.argmax(total[lo:hi]))
                     for lo, hi in zip(edges[:-1], edges[1:], strict=True)])
    limit = report.data["memory"]["bytes_per_tile"]
    top = float(max(total.max(initial=1), 1))
    shows_limit = limit <= 1.5 * top
    top = max(top, limit) if shows_limit else top
    width = (_W - _PAD) / bins
    parts = []
    for i, tile in enumerate(pick.tolist()):
        y = _H
        for c, name in enumerate(names):
            h = stack[c, tile] / top * (_H - 10)
            if h > 0:
                y -= h
                parts.append(f'<rect x="{_PAD + i * width:.2f}" y="{y:.2f}" '
                             f'width="{max(width - 0.5, 0.5):.2f}" height="{h:.2f}" '
                             f'fill="{_COLORS[c % len(_COLORS)]}"><title>tile {tile} '
                             f'{html.escape(name)}: {int(stack[c, tile]):,} B</title></rect>')
    if shows_limit:
        y = _H - limit / top * (_H - 10)
        parts.append(f'<line x1="{_PAD}" x2="{_W}" y1="{y:.1f}" y2="{y:.1f}" stroke="#c00" '
                     'stroke-dasharray="4"/>')
    parts.append(_axis(top, "B"))
    legend = " ".join(f'<span style="color:{_COLORS[c % len(_COLORS)]}">&#9632;</span> '
                      f'{html.escape(n)}' for c, n in enumerate(names))
    binned = f"{tiles} tiles in {bins} bins, each showing its busiest tile; " if bins < tiles else ""
    limit_note = ("red dashes: " if shows_limit else "off the scale: ") + f"{limit:,} B per tile"
    return (f"<h2>Memory per tile (peak bytes, by category)</h2>{_svg(''.join(parts))}"
            f"<p class='note'>{legend}<br>{binned}{limit_note}</p>")


def _liveness_chart(report: Report) -> str:
    live = np.asarray(report.data["memory"]["liveness"]["bytes"], float)
    top = float(max(live.max(initial=0), 1))
    if live.size:
        xs = np.linspace(_PAD, _W, live.size + 1)
        ys = _H - live / top * (_H - 10)
        points = [f"{xs[0]:.1f},{_H}"]
        for i, y in enumerate(ys):  # a step: flat across each program point
            points += [f"{xs[i]:.1f},{y:.1f}", f"{xs[i + 1]:.1f},{y:.1f}"]
        series = f'<polyline fill="none" stroke="#262" stroke-width="1.5" points="{" ".join(points)}"/>'
    else:
        series = ""
    return (f"<h2>Not-always-live bytes over program points</h2>{_svg(series + _axis(top, 'B'))}"
            f"<p class='note'>{live.size} program points (left to right, in program order); peak "
            f"{int(live.max(initial=0)):,} B over all tiles, receive buffers included</p>")


def _axis(top: float, unit: str) -> str:
    ticks = []
    for frac in (0.0, 0.5, 1.0):
        y = _H - frac * (_H - 10)
        ticks.append(f'<text x="2" y="{max(y, 10):.0f}" font-size="10">{int(frac * top):,}</text>'
                     f'<line x1="{_PAD - 4}" x2="{_PAD}" y1="{y:.0f}" y2="{y:.0f}" stroke="#888"/>')
    return "".join(ticks) + f'<line x1="{_PAD}" x2="{_PAD}" y1="0" y2="{_H}" stroke="#888"/>'


def _svg(body: str) -> str:
    return (f"<svg width='{_W}' height='{_H}' style='background:#fafafa;border:1px solid #ddd'>"
            f"{body}</svg>")


def render_html(report: Report) -> str:
    d = report.data
    cats = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:,}</td></tr>"
                   for k, v in sorted(report.memory_by_category.items(), key=lambda kv: -kv[1]))
    rows = "".join(
        f"<tr><td>{html.escape(s['name'])}</td><td>{html.escape(s['op'])}</td><td>{s['kind']}</td>"
        f"<td>{s['count']}</td><td>{s['cycles']:,}</td><td>{s['compute_cycles']:,}</td>"
        f"<td>{s['exchange_cycles']:,}</td><td>{s['sync_cycles']:,}</td>"
        f"<td>{s['bytes_exchanged']:,}</td>"
        f"<td>{html.escape(s['source'])}</td></tr>"
        for s in sorted(d["steps"], key=lambda s: -s["cycles"] * max(s["count"], 1))[:500])
    summary = html.escape(report.summary())
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>softipu report: {html.escape(d['target']['name'])}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}}td:first-child{{text-align:left}}
.note{{color:#555;font-size:90%}}pre{{background:#f4f4f4;padding:1em;overflow-x:auto}}</style></head>
<body><h1>softipu report</h1><pre>{summary}</pre>
{_memory_chart(report)}
<h2>Memory by category (all tiles)</h2><table><tr><th>category</th><th>bytes</th></tr>{cats}</table>
{_liveness_chart(report)}
<h2>Steps (by total cycles)</h2><table><tr><th>step</th><th>op</th><th>kind</th><th>runs</th>
<th>cycles</th><th>compute</th><th>exchange</th><th>sync</th><th>bytes</th><th>source</th></tr>{rows}</table>
</body></html>
"""
