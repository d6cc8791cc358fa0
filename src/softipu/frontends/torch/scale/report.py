"""A Pod-scale estimate as the report at scale (``profile.scale``): JSON, summary, page, trace.

The document is :meth:`PodEstimate.as_dict` with ``schema`` ``softipu.scale_report``, version 1
(``docs/report_schema.md``, "The report at scale").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from softipu.frontends.torch.scale.pod import PodEstimate
from softipu.profile.scale import SCHEMA, VERSION, scale_html, scale_summary, scale_trace_events

__all__ = ["scale_document", "summary", "save_json", "save_html", "save_trace"]


def scale_document(est: PodEstimate) -> dict[str, Any]:
    return {"schema": SCHEMA, "version": VERSION, **est.as_dict()}


def summary(est: PodEstimate) -> str:
    return scale_summary(scale_document(est))


def _write(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def save_json(est: PodEstimate, path: str | Path) -> None:
    _write(path, json.dumps(scale_document(est)))


def save_html(est: PodEstimate, path: str | Path) -> None:
    _write(path, scale_html(scale_document(est)))


def save_trace(est: PodEstimate, path: str | Path) -> None:
    _write(path, json.dumps({"traceEvents": scale_trace_events(scale_document(est)),
                             "displayTimeUnit": "ms"}))
