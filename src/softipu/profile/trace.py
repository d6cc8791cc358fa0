"""Chrome / Perfetto trace events from a report: one track per IPU, BSP phases as slices.

Steps run in lockstep on every IPU of a replica (BSP), so each IPU's track shows the same
phases: sync, then exchange, then compute. Times are microseconds at the target's clock.
"""

from __future__ import annotations

from typing import Any

__all__ = ["trace_events"]

_PHASES = (("sync", "sync_cycles"), ("exchange", "exchange_cycles"), ("compute", "compute_cycles"))


def trace_events(data: dict[str, Any]) -> list[dict[str, Any]]:
    target = data["target"]
    us_per_cycle = 1e6 / target["clock_hz"]
    steps = data["steps"]
    events: list[dict[str, Any]] = [{"name": "process_name", "ph": "M", "pid": 0, "tid": 0,
                                     "args": {"name": f"softipu {target['name']}"}}]
    for ipu in range(target["num_ipus"]):
        events.append({"name": "thread_name", "ph": "M", "pid": 0, "tid": ipu,
                       "args": {"name": f"IPU {ipu}"}})
    for step_index, start, times in data["execution"]["trace"]:
        step = steps[step_index]
        at = start
        for phase, key in _PHASES:
            cycles = step[key] * times
            if cycles <= 0:
                continue
            for ipu in range(target["num_ipus"]):
                events.append({"name": f"{phase}: {step['name']}", "cat": phase, "ph": "X",
                               "ts": at * us_per_cycle, "dur": cycles * us_per_cycle,
                               "pid": 0, "tid": ipu,
                               "args": {"step": step_index, "cycles": cycles, "times": times,
                                        "source": step["source"]}})
            at += cycles
    return events
