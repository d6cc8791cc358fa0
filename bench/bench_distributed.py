"""Issue 13's "8 replicas in 2 processes (gloo on loopback) vs 1 process": the same program
(tests/distributed_script.py: two all-reduces, an all-gather and an all-to-all over 8 replicas of
N float32) run whole in this process, then as 2 instances through ``softipu run`` (torchrun,
gloo). Prints one JSON line per size: each side's run time (best and median of ``--repeats``
runs; the 2-process figure is the slower instance's), compile time, and whether the bits agree.

Run: ``.venv/bin/python bench/bench_distributed.py`` (N = 4 Ki and 256 Ki); ``--numel N ...``;
``--hosts`` also runs it as 2 hosts on loopback (``softipu run --hosts localhost,127.0.0.1``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "distributed_script.py"
sys.path.insert(0, str(SCRIPT.parent))
import distributed_script as D  # noqa: E402


def two_processes(numel: int, repeats: int, hosts: bool = False) -> tuple[dict, list[dict]]:
    """The program as 2 instances: on one host, or (``hosts``) on two loopback hosts, one
    torchrun agent each (``softipu run --hosts``)."""
    with tempfile.TemporaryDirectory() as out:
        where = ["--hosts", "localhost,127.0.0.1"] if hosts else []
        cmd = [sys.executable, "-m", "softipu", "run", *where, "--num-instances", "2", "--num-replicas", "8",
               str(SCRIPT), "--out", out, "--numel", str(numel), "--repeats", str(repeats)]
        subprocess.run(cmd, check=True, capture_output=True, timeout=600)
        parts = [dict(np.load(Path(out) / f"rank{r}.npz")) for r in range(2)]
        times = [json.loads((Path(out) / f"times{r}.json").read_text()) for r in range(2)]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}, times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--numel", type=int, nargs="*", default=[4096, 262144])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--hosts", action="store_true", help="also as 2 hosts on loopback (softipu run --hosts)")
    ns = ap.parse_args()
    for numel in ns.numel:
        whole, one = D.run_program(numel, distributed=False, repeats=ns.repeats)
        for hosts in (False, True) if ns.hosts else (False,):
            report(numel, ns.repeats, whole, one, *two_processes(numel, ns.repeats, hosts), hosts)


def report(numel: int, repeats: int, whole: dict, one: dict, split: dict, two: list[dict],
           hosts: bool) -> None:
    """One JSON line: the 2-instance run beside the 1-process run of the same program."""
    same = all(np.array_equal(whole[k].view(np.uint8), split[k].view(np.uint8)) for k in whole)
    slowest = [max(a, b) for a, b in zip(two[0]["runs_s"], two[1]["runs_s"], strict=True)]
    print(json.dumps({
        "bench": "distributed_8_replicas_2_hosts" if hosts else "distributed_8_replicas",
        "numel_per_replica": numel, "repeats": repeats,
        "two_processes_run_s": round(min(slowest), 5),
        "one_process_run_s": round(min(one["runs_s"]), 5),
        "two_processes_median_s": round(statistics.median(slowest), 5),
        "one_process_median_s": round(statistics.median(one["runs_s"]), 5),
        "two_processes_compile_s": round(max(t["compile_s"] for t in two), 3),
        "one_process_compile_s": round(one["compile_s"], 3),
        "hosts": sorted({t.get("host_name", "?") for t in two}), "identical_bits": same}), flush=True)


if __name__ == "__main__":
    main()
