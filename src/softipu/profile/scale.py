"""The report at scale: a priced training step on a system as text, a Perfetto trace and a page.

Reads the plain JSON document of a Pod-scale estimate (schema ``softipu.scale_report``, version 1,
``docs/report_schema.md`` "The report at scale"; made by
``softipu.frontends.torch.scale.report``), so ``profile`` stays below the frontends:

* :func:`scale_summary` — the text summary: step time, samples/s, where the time goes, the
  pipeline (fill / steady / flush, bubble), collectives, memory per IPU by class.
* :func:`scale_trace_events` — Chrome/Perfetto events, one track per IPU of a replica: in every
  pipeline cycle each IPU's active stages (forward ``F`` / backward ``B`` of a micro-batch), then
  the inter-IPU copies; after the flush the gradient collectives, the optimizer and Streaming
  Memory. Times in microseconds at the chip's clock.
* :func:`scale_html` — a self-contained page (no scripts fetched) of the same.
"""

from __future__ import annotations

import html as _html
import json
from typing import Any

__all__ = ["SCHEMA", "VERSION", "scale_summary", "scale_trace_events", "scale_html", "check_scale_report"]

SCHEMA = "softipu.scale_report"
VERSION = 1
_KEYS = ("system", "clock_hz", "step_cycles", "samples_per_second", "split_cycles", "pipeline",
         "collectives", "memory_per_ipu")


def check_scale_report(data: dict[str, Any]) -> dict[str, Any]:
    from softipu.errors import ReportError  # noqa: PLC0415 - base layer

    if data.get("schema") != SCHEMA or data.get("version") != VERSION:
        raise ReportError(f"not a {SCHEMA} v{VERSION} document (schema {data.get('schema')!r}, "
                          f"version {data.get('version')!r})")
    missing = [k for k in _KEYS if k not in data]
    if missing:
        raise ReportError(f"{SCHEMA}: missing {', '.join(missing)}")
    return data


def _ms(cycles: float, clock: float) -> str:
    return f"{1e3 * cycles / clock:,.3f} ms"


def scale_summary(data: dict[str, Any]) -> str:
    d = check_scale_report(data)
    clock, p = d["clock_hz"], d["pipeline"]
    lines = [f"{d.get('label') or 'training step'} on {d['system']}: {d['replicas']} replicas x "
             f"{d['ipus_per_replica']} IPUs, micro-batch {d['micro_batch']}, GA {d['accumulation']}",
             f"  step {_ms(d['step_cycles'], clock)} ({d['step_cycles']:,} cycles), "
             f"{d['samples_per_second']:,.1f} samples/s modeled ({d['samples_per_step']:,} samples a step)",
             "  where the time goes:"]
    total = max(1, d["step_cycles"])
    for k, v in d["split_cycles"].items():
        lines.append(f"    {k:<20} {_ms(v, clock):>14} {100 * v / total:6.2f}%")
    lines.append(f"  pipeline: {p['stages']} stages, fill {_ms(p['fill_cycles'], clock)}, steady "
                 f"{_ms(p['main_cycles'], clock)}, flush {_ms(p['flush_cycles'], clock)}, bubble "
                 f"{100 * p['bubble_fraction']:.2f}% of pipeline cycles")
    for op, c in d["collectives"].items():
        lines.append(f"  {op}: {c['bytes_per_ipu']:,} B an IPU, {c['method']}, {_ms(c['cycles'], clock)}")
    lines.append("  memory per IPU (MB): " + ", ".join(
        f"IPU{m['ipu']} {m['total'] / 1e6:,.0f}{'' if m['fits'] else ' OVER'}" for m in d["memory_per_ipu"]))
    for m in d["memory_per_ipu"]:
        parts = ", ".join(f"{k} {v / 1e6:,.1f}" for k, v in m["bytes"].items())
        lines.append(f"    IPU{m['ipu']}: {parts} (of {m['capacity'] / 1e6:,.0f})")
    lines += [f"  note: {n}" for n in d.get("notes", [])]
    return "\n".join(lines)


def _active(stage_ipu: list[int], p: int, accumulation: int) -> list[tuple[int, int]]:
    """(stage, micro-batch) pairs running in pipeline cycle ``p`` (stage s runs cycles s..s+A-1)."""
    return [(s, p - s) for s in range(len(stage_ipu)) if 0 <= p - s < accumulation]


def scale_trace_events(data: dict[str, Any]) -> list[dict[str, Any]]:
    d = check_scale_report(data)
    us = 1e6 / d["clock_hz"]
    p = d["pipeline"]
    n, stages, a = p["num_ipus"], p["stages"], p["accumulation"]
    stage_ipu = list(p.get("stage_ipus") or [min(s, stages - 1 - s) for s in range(stages)])
    merged = stages // 2  # the last IPU's forward + backward stage
    events: list[dict[str, Any]] = [{"name": "process_name", "ph": "M", "pid": 0, "tid": 0,
                                     "args": {"name": f"softipu {d['system']} (one replica)"}}]
    events += [{"name": "thread_name", "ph": "M", "pid": 0, "tid": i, "args": {"name": f"IPU {i}"}}
               for i in range(n)]
    at = 0
    for cycle, length in enumerate(p["cycle_lengths"]):
        starts = [at] * n
        for s, mb in _active(stage_ipu, cycle, a):
            ipu, c = stage_ipu[s], p["stage_cycles"][s]
            kind = "F" if s < merged else ("FB" if s == merged else "B")
            events.append({"name": f"{kind}{mb}", "cat": "stage", "ph": "X", "ts": starts[ipu] * us,
                           "dur": c * us, "pid": 0, "tid": ipu, "args": {"stage": s, "micro_batch": mb,
                                                                         "cycles": c}})
            starts[ipu] += c
        at += length
    for k in ("gradient_reduction", "optimizer", "streaming_memory", "weight_all_gather", "host_io"):
        c = d["split_cycles"].get(k, 0)
        if c > 0:
            events += [{"name": k, "cat": "step", "ph": "X", "ts": at * us, "dur": c * us, "pid": 0, "tid": i,
                        "args": {"cycles": c}} for i in range(n)]
            at += c
    return events


_COLORS = {"weights": "#4c78a8", "gradients": "#f58518", "optimizer_state": "#54a24b", "stash": "#e45756",
           "activations": "#72b7b2", "code": "#b279a2"}


def scale_html(data: dict[str, Any]) -> str:
    d = check_scale_report(data)
    esc = _html.escape
    cap = max(m["capacity"] for m in d["memory_per_ipu"])
    rows = []
    for m in d["memory_per_ipu"]:
        bars = "".join(f'<span title="{esc(k)} {v / 1e6:,.1f} MB" style="display:inline-block;height:14px;'
                       f'width:{600 * v / cap:.1f}px;background:{_COLORS.get(k, "#999")}"></span>'
                       for k, v in m["bytes"].items())
        rows.append(f"<tr><td>IPU {m['ipu']}</td><td>{bars}</td><td>{m['total'] / 1e6:,.0f} MB"
                    f"{'' if m['fits'] else ' <b>over</b>'}</td></tr>")
    total = max(1, d["step_cycles"])
    split = "".join(f"<tr><td>{esc(k)}</td><td>{1e3 * v / d['clock_hz']:,.3f} ms</td>"
                    f"<td>{100 * v / total:.2f}%</td></tr>" for k, v in d["split_cycles"].items())
    embedded = json.dumps(d).replace("</", "<\\/")
    legend = " ".join(f'<span style="color:{c}">&#9632; {k}</span>' for k, c in _COLORS.items())
    title = esc(d.get("label") or "training step")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head>"
            f"<body style='font-family:sans-serif'><h1>{title} on {esc(d['system'])}</h1>"
            f"<pre>{esc(scale_summary(d))}</pre><h2>Time</h2><table>{split}</table>"
            f"<h2>Memory per IPU</h2><p>{legend} (bar width: the IPU's capacity = 600 px)</p>"
            f"<table>{''.join(rows)}</table><script type='application/json' id='softipu-scale'>"
            f"{embedded}</script></body></html>")
