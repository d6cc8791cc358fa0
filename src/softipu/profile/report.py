"""The Report: how a real IPU would spend memory and cycles on what the engine ran.

A report is a plain, versioned JSON document (schema ``softipu.report``, version 2) with a typed
view on top. ``engine.report`` builds one from the compiled executable's static costs and memory
plan and the engine's run log; ``Report.from_json`` reads a saved one back (a version-1 document
is upgraded with empty version-2 parts) and refuses documents of another schema or version, or
with missing or mistyped parts. docs/report_schema.md documents every field.

Schema, version 2 (all sizes in bytes, times in tile clock cycles)::

    {"schema": "softipu.report", "version": 2, "softipu_version": str,
     "target": {"name", "num_ipus", "tiles_per_ipu", "num_tiles", "bytes_per_tile", "clock_hz",
                "peak_flops_per_cycle": {"fp16", "fp32"}},
     "replication_factor": int, "estimate_only": bool,
     "execution": {"cycles": int, "runs": [{"program": int, "cycles": int}],
                   "trace": [[step, start_cycle, times], ...], "trace_dropped": int},
     "steps": [{"index", "kind", "name", "op", "source", "compute_cycles", "exchange_cycles",
                "sync_cycles", "cycles", "bytes_exchanged", "inter_ipu_bytes", "host_bytes",
                "flops", "count", "busiest_tile", "mean_tile_compute_cycles",
                "estimated_by_default"}],
     "memory": {"bytes_per_tile": int, "categories": {name: [bytes per tile]},
                "liveness": {"bytes": [not-always-live bytes per program point],
                             "steps": [step index per program point]},
                "variables": {"always_live": int, "not_always_live": int},
                "named": {"list": [{"name", "shape", "dtype", "bytes", "tiles", "always_live",
                                    "constant", "source", "first", "last"}],
                          "tile_top": [[[variable, bytes], ...] per tile],
                          "peak": {"point", "bytes", "step", "receive_bytes",
                                   "contributors": [[variable, bytes]]},
                          "count": int}},
     "program": {"programs": [node], "functions": [[id, node]], "truncated": bool},
     "tile_cycles": {"steps": [step], "cycles": [[cycles per tile] per step]},
     "step_memory": [[step, vertex-state bytes], ...],
     "compile": {"passes": [[name, seconds], ...]}}
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from softipu.compiler.executable import Executable
from softipu.errors import ReportError
from softipu.profile import extract
from softipu.profile.html import render_html
from softipu.profile.trace import trace_events

__all__ = ["Report", "SCHEMA", "VERSION"]

SCHEMA = "softipu.report"
VERSION = 2
READS = (1, 2)  # versions from_json accepts (1 is upgraded)

_STEP_KEYS = {"index": int, "kind": str, "name": str, "op": str, "source": str, "compute_cycles": int,
              "exchange_cycles": int, "sync_cycles": int, "cycles": int, "bytes_exchanged": int,
              "inter_ipu_bytes": int, "host_bytes": int, "flops": int, "count": int,
              "busiest_tile": int, "mean_tile_compute_cycles": (int, float),
              "estimated_by_default": bool}


class Report:
    """Memory per tile, cycles per step, and what ran. Build with ``engine.report``.

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=2))
    >>> eng = sp.Engine(g, [P.Sync()]); eng.run(0)
    >>> eng.report.cycles == g.target.on_chip_sync_cycles
    True
    """

    def __init__(self, data: dict[str, Any]) -> None:
        _validate(data)
        self.data = data

    @classmethod
    def build(cls, executable: Executable, log: Any, *, estimate_only: bool) -> Report:
        """A report from an executable's static costs and an engine's run log."""
        return cls(_build(executable, log, estimate_only))

    # -- execution -------------------------------------------------------------------------------
    @property
    def has_run(self) -> bool:
        return bool(self.data["execution"]["runs"])

    def _execution(self, what: str) -> dict[str, Any]:
        if not self.has_run:
            raise ReportError(f"report.{what}: no program has run yet; call engine.run(i) first "
                              "(memory figures are ready now: tile_memory, memory_by_category)")
        return self.data["execution"]

    @property
    def cycles(self) -> int:
        """Modeled tile clock cycles of every run so far."""
        return int(self._execution("cycles")["cycles"])

    @property
    def seconds(self) -> float:
        return self.cycles / self.data["target"]["clock_hz"]

    @property
    def flops(self) -> int:
        self._execution("flops")
        return int(sum(s["flops"] * s["count"] for s in self.data["steps"]))

    @property
    def runs(self) -> list[dict[str, int]]:
        return list(self.data["execution"]["runs"])

    @property
    def steps(self) -> list[dict[str, Any]]:
        """Per program step: name, kind, source line, cycles split, bytes, times it ran."""
        return list(self.data["steps"])

    # -- memory ----------------------------------------------------------------------------------
    @property
    def tile_memory(self) -> np.ndarray:
        """Peak bytes on each tile."""
        cats = self.data["memory"]["categories"]
        return np.sum([np.asarray(v, np.int64) for v in cats.values()], axis=0)

    @property
    def memory_by_category(self) -> dict[str, int]:
        """Bytes over all tiles, by category (each tile's peak for not-always-live bytes)."""
        return {k: int(sum(v)) for k, v in self.data["memory"]["categories"].items()}

    def memory_by_category_per_tile(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(v, np.int64) for k, v in self.data["memory"]["categories"].items()}

    @property
    def fits(self) -> bool:
        return int(self.tile_memory.max(initial=0)) <= self.data["memory"]["bytes_per_tile"]

    def fit(self) -> dict[str, Any]:
        """Whether and how the program fits the target's memory.

        ``tiles_over`` (tiles above ``bytes_per_tile``), the fullest tile, its bytes and what
        they are (``worst_tile_categories``), ``headroom`` (bytes left on the fullest tile,
        negative when over), ``total_bytes`` against the ``chip_bytes`` of all tiles, and
        ``ipus_needed``: the fewest IPUs whose memory could hold the total, perfectly spread
        (1 means a better spread alone could make it fit).
        """
        mem = self.tile_memory
        limit = int(self.data["memory"]["bytes_per_tile"])
        t = self.data["target"]
        worst = int(np.argmax(mem)) if mem.size else 0
        total = int(mem.sum())
        per_ipu = limit * int(t["tiles_per_ipu"])
        cats = self.memory_by_category_per_tile()
        return {
            "fits": self.fits, "bytes_per_tile": limit, "tiles_over": int(np.count_nonzero(mem > limit)),
            "tiles": int(mem.size), "worst_tile": worst, "worst_tile_bytes": int(mem.max(initial=0)),
            "headroom": limit - int(mem.max(initial=0)),
            "worst_tile_categories": {k: int(v[worst]) for k, v in cats.items() if v.size and v[worst]},
            "total_bytes": total, "chip_bytes": limit * int(mem.size),
            "ipus_needed": max(1, -(-total // per_ipu)) if per_ipu else 1,
        }

    # -- output ------------------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(self.data, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Report:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ReportError(f"not a softipu report: invalid JSON ({exc})") from None
        return cls(data)

    def save_json(self, path: str | Path) -> None:
        _write(path, self.to_json())

    def save_trace(self, path: str | Path) -> None:
        """A Chrome/Perfetto trace (JSON): one track per IPU, sync/exchange/compute slices."""
        _write(path, json.dumps({"traceEvents": trace_events(self.data), "displayTimeUnit": "ns"}))

    def save_html(self, path: str | Path, compare: Report | None = None) -> None:
        """One self-contained HTML file (no network): floor plan, memory, execution, and with
        ``compare`` a side-by-side comparison against that other report."""
        _write(path, render_html(self, compare))

    def html(self, compare: Report | None = None) -> str:
        return render_html(self, compare)

    @classmethod
    def load(cls, path: str | Path) -> Report:
        """A report saved with ``save_json``."""
        try:
            text = Path(path).read_bytes()
        except OSError as exc:
            raise ReportError(f"cannot read report {str(path)!r}: {exc.strerror or exc}") from None
        return cls.from_json(text)

    def summary(self, top: int = 10) -> str:
        return _summary(self, top)

    def __repr__(self) -> str:
        t = self.data["target"]
        ran = f"{self.data['execution']['cycles']:,} cycles" if self.has_run else "not run"
        return f"Report({t['name']}, {ran}, peak tile {int(self.tile_memory.max(initial=0)):,} B)"


def _write(path: str | Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)  # nothing half-written is ever left at ``path``


def _build(executable: Executable, log: Any, estimate_only: bool) -> dict[str, Any]:
    target = executable.target
    counts = log.step_counts
    steps = [{"index": s.index, "kind": s.kind.value, "name": s.name, "op": s.op,
              "source": str(s.location),
              "compute_cycles": s.compute_cycles, "exchange_cycles": s.exchange_cycles,
              "sync_cycles": s.sync_cycles, "cycles": s.cycles, "bytes_exchanged": s.bytes_exchanged,
              "inter_ipu_bytes": s.inter_ipu_bytes, "host_bytes": s.host_bytes, "flops": s.flops,
              "count": int(counts[s.index]), "busiest_tile": s.busiest_tile,
              "mean_tile_compute_cycles": round(s.mean_tile_compute_cycles, 3),
              "estimated_by_default": s.estimated_by_default} for s in executable.steps]
    mem = executable.memory
    assert mem is not None
    return {
        "schema": SCHEMA, "version": VERSION, "softipu_version": _package_version(),
        "target": {"name": target.name, "num_ipus": target.num_ipus,
                   "tiles_per_ipu": target.tiles_per_ipu, "num_tiles": target.num_tiles,
                   "bytes_per_tile": target.bytes_per_tile, "clock_hz": target.clock_hz,
                   "peak_flops_per_cycle": {
                       "fp16": 2 * target.amp_macs_per_cycle_fp16 * target.num_tiles,
                       "fp32": 2 * target.amp_macs_per_cycle_fp32 * target.num_tiles}},
        "replication_factor": executable.replication_factor,
        "estimate_only": estimate_only,
        "execution": {"cycles": int(log.cycles),
                      "runs": [{"program": p, "cycles": int(c)} for p, c in log.runs],
                      "trace": [list(e) for e in log.trace], "trace_dropped": log.trace_dropped},
        "steps": steps,
        "memory": {"bytes_per_tile": mem.bytes_per_tile,
                   "categories": {k: v.tolist() for k, v in mem.categories.items()},
                   "liveness": {"bytes": mem.liveness_bytes.tolist(),
                                "steps": mem.point_steps.tolist()},
                   "variables": {"always_live": int(mem.always_live.sum()),
                                 "not_always_live": int((~mem.always_live).sum())},
                   "named": extract.variables(executable)},
        "program": extract.program_tree(executable),
        "tile_cycles": extract.tile_cycles(executable, counts),
        "step_memory": extract.step_memory(executable),
        "compile": {"passes": [[n, round(t, 6)] for n, t in executable.pass_seconds]},
    }


def _package_version() -> str:
    try:
        return metadata.version("softipu")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _validate(data: Any) -> None:
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ReportError(f"not a softipu report: expected schema {SCHEMA!r}")
    if data.get("version") not in READS:
        raise ReportError(f"softipu report version {data.get('version')!r} is not supported; this "
                          f"softipu reads versions {', '.join(map(str, READS))}: regenerate the report")
    try:
        if data["version"] == 1:
            _upgrade_v1(data)
        _check_shape(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise ReportError(f"corrupt softipu report: {exc}") from None


def _need(value: Any, kind: Any, where: str) -> None:
    numeric = kind in (int, float, (int, float))
    if not isinstance(value, kind) or (numeric and isinstance(value, bool)):
        name = getattr(kind, "__name__", "number")
        raise ValueError(f"{where} should be {name}, got {value!r}")


def _ints(values: Any, where: str) -> None:
    _need(values, list, where)
    if not all(type(v) is int for v in values):  # one pass (bool is not int here); then the culprit
        for v in values:
            _need(v, int, f"{where}[]")


def _upgrade_v1(data: dict[str, Any]) -> None:
    """A version-1 document in place as version 2: the parts version 1 lacked, empty."""
    data["version"] = VERSION
    data.setdefault("softipu_version", "unknown")
    data["target"].setdefault("peak_flops_per_cycle", {"fp16": 0, "fp32": 0})
    tiles = data["target"]["num_tiles"]
    data["memory"].setdefault("named", {"list": [], "tile_top": [[] for _ in range(tiles)],
                                        "peak": {"point": -1, "bytes": 0, "step": -1, "receive_bytes": 0,
                                                 "contributors": []}, "count": 0})
    data.setdefault("program", {"programs": [], "functions": [], "truncated": False})
    data.setdefault("tile_cycles", {"steps": [], "cycles": []})
    data.setdefault("step_memory", [])


_NUMBER = (int, float)
_SCHEMA: dict[str, Any] = {  # the documented version-2 document, minus lists checked by hand
    "softipu_version": str,
    "target": {"name": str, "num_ipus": int, "tiles_per_ipu": int, "num_tiles": int,
               "bytes_per_tile": int, "clock_hz": _NUMBER,
               "peak_flops_per_cycle": {"fp16": _NUMBER, "fp32": _NUMBER}},
    "replication_factor": int,
    "estimate_only": bool,
    "execution": {"cycles": int, "runs": list, "trace": list, "trace_dropped": int},
    "steps": list,
    "memory": {"bytes_per_tile": int, "categories": dict,
               "liveness": {"bytes": list, "steps": list},
               "variables": {"always_live": int, "not_always_live": int},
               "named": {"list": list, "tile_top": list, "count": int,
                         "peak": {"point": int, "bytes": int, "step": int, "receive_bytes": int,
                                  "contributors": list}}},
    "program": {"programs": list, "functions": list, "truncated": bool},
    "tile_cycles": {"steps": list, "cycles": list},
    "step_memory": list,
    "compile": {"passes": list},
}


def _check_keys(data: Any, spec: dict[str, Any], where: str) -> None:
    _need(data, dict, where or "report")
    for key, kind in spec.items():
        path = f"{where}.{key}" if where else key
        if key not in data:
            raise ValueError(f"missing key {key!r} at {path}")
        if isinstance(kind, dict):
            _check_keys(data[key], kind, path)
        else:
            _need(data[key], kind, path)


def _check_shape(data: dict[str, Any]) -> None:
    _check_keys(data, _SCHEMA, "")
    num_tiles = data["target"]["num_tiles"]
    execution = data["execution"]
    for run in execution["runs"]:
        _check_keys(run, {"program": int, "cycles": int}, "execution.runs[]")
    for i, step in enumerate(data["steps"]):
        _check_keys(step, _STEP_KEYS, f"steps[{i}]")
    memory = data["memory"]
    for name, per_tile in memory["categories"].items():
        _ints(per_tile, f"memory.categories.{name}")
        if len(per_tile) != num_tiles:
            raise ValueError(f"memory.categories.{name} has {len(per_tile)} tiles, not {num_tiles}")
    _ints(memory["liveness"]["bytes"], "memory.liveness.bytes")
    _ints(memory["liveness"]["steps"], "memory.liveness.steps")
    _check_v2(data)
    for entry in execution["trace"]:
        ok = isinstance(entry, list) and len(entry) == 3 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in entry)
        if not ok or not 0 <= entry[0] < len(data["steps"]) or entry[1] < 0 or entry[2] < 1:
            raise ValueError(f"execution.trace entry {entry!r} should be [step, start_cycle, times] "
                             f"with 0 <= step < {len(data['steps'])}, start_cycle >= 0, times >= 1")


def _fit_line(f: dict[str, Any], ipus: int) -> str:
    share = f"{f['total_bytes'] / max(f['chip_bytes'], 1):.0%} of the {f['chip_bytes']:,} B all tiles hold"
    if f["fits"]:
        return f"  fits: {f['headroom']:,} B left on the fullest tile (tile {f['worst_tile']}); {share}"
    worst = sorted(f["worst_tile_categories"].items(), key=lambda kv: -kv[1])
    what = ", ".join(f"{k} {v:,}" for k, v in worst)
    how = (f"even spread perfectly it needs the memory of {f['ipus_needed']} IPUs: split it over IPUs "
           "(pipelining) or make it smaller"
           if f["ipus_needed"] > ipus else "the tiles hold the total: only its spread is too uneven")
    return (f"  does not fit: {f['tiles_over']:,} of {f['tiles']:,} tiles over {f['bytes_per_tile']:,} B; "
            f"tile {f['worst_tile']} is {-f['headroom']:,} B over ({what}); needs {share}: {how}")


def _summary(report: Report, top: int) -> str:
    d = report.data
    t = d["target"]
    lines = [f"softipu report: {t['name']} ({t['num_ipus']} IPU x {t['tiles_per_ipu']} tiles), "
             f"replication {d['replication_factor']}{', estimate only' if d['estimate_only'] else ''}"]
    if report.has_run:
        seconds = report.seconds
        lines.append(f"execution: {report.cycles:,} cycles = {seconds * 1e6:,.2f} us at "
                     f"{t['clock_hz'] / 1e9:.3g} GHz over {len(report.runs)} run(s); "
                     f"{report.flops / 1e9:,.3f} GFLOP")
    else:
        lines.append("execution: nothing has run yet")
    mem = report.tile_memory
    worst = int(np.argmax(mem)) if mem.size else 0
    limit = d["memory"]["bytes_per_tile"]
    lines.append(f"memory: peak tile {worst} uses {int(mem.max(initial=0)):,} of {limit:,} B "
                 f"({'fits' if report.fits else 'DOES NOT FIT'}); all tiles {int(mem.sum()):,} B")
    for name, nbytes in sorted(report.memory_by_category.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {name:<22} {nbytes:>16,} B")
    lines.append(_fit_line(report.fit(), t["num_ipus"]))
    ran = [s for s in d["steps"] if s["count"]] or d["steps"]
    ran.sort(key=lambda s: -s["cycles"] * max(s["count"], 1))
    lines.append(f"steps (top {min(top, len(ran))} of {len(d['steps'])} by total cycles):")
    lines.append(f"  {'step':<32} {'runs':>6} {'cycles':>10} {'compute':>9} {'exchange':>9} "
                 f"{'sync':>6} {'bytes':>10}  source")
    for s in ran[:top]:
        lines.append(f"  {s['name'][:32]:<32} {s['count']:>6} {s['cycles']:>10,} {s['compute_cycles']:>9,} "
                     f"{s['exchange_cycles']:>9,} {s['sync_cycles']:>6,} {s['bytes_exchanged']:>10,}  "
                     f"{s['source']}")
    return "\n".join(lines)


_VAR_KEYS = {"name": str, "shape": list, "dtype": str, "bytes": int, "tiles": int, "always_live": bool,
             "constant": bool, "source": str, "first": int, "last": int}


def _check_refs(pairs: Any, count: int, where: str) -> None:
    _need(pairs, list, where)
    for pair in pairs:
        ok = isinstance(pair, list) and len(pair) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in pair)
        if not ok or not 0 <= pair[0] < count:
            raise ValueError(f"{where} entry {pair!r} should be [variable < {count}, bytes]")


def _check_v2(data: dict[str, Any]) -> None:
    """The parts version 2 added: references stay inside their lists."""
    named = data["memory"]["named"]
    for i, var in enumerate(named["list"]):
        _check_keys(var, _VAR_KEYS, f"memory.named.list[{i}]")
    count = len(named["list"])
    if len(named["tile_top"]) != data["target"]["num_tiles"]:
        raise ValueError(f"memory.named.tile_top has {len(named['tile_top'])} tiles, "
                         f"not {data['target']['num_tiles']}")
    for t, pairs in enumerate(named["tile_top"]):
        _check_refs(pairs, count, f"memory.named.tile_top[{t}]")
    _check_refs(named["peak"]["contributors"], count, "memory.named.peak.contributors")
    _check_refs(data["step_memory"], len(data["steps"]), "step_memory")
    cycles = data["tile_cycles"]
    _ints(cycles["steps"], "tile_cycles.steps")
    if len(cycles["cycles"]) != len(cycles["steps"]):
        raise ValueError("tile_cycles.cycles should hold one list per step of tile_cycles.steps")
    for step, per_tile in zip(cycles["steps"], cycles["cycles"], strict=True):
        if not 0 <= step < len(data["steps"]):
            raise ValueError(f"tile_cycles.steps entry {step} is not a step")
        _ints(per_tile, f"tile_cycles.cycles[{step}]")
        if len(per_tile) != data["target"]["num_tiles"]:
            raise ValueError(f"tile_cycles.cycles[{step}] should have one entry per tile")
