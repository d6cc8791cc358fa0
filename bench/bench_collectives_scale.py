"""Issue 13 item 5: collectives and a data-parallel step priced at scale, from 1 to 64,000 IPUs.

Prints JSON lines:

* ``link_figures``: the figures every price below rests on (POD16): one IPU-Link's payload rate,
  each link group's, the GW-Links', the per-hop latency, the exchange start-up and sync cycles.
* ``pod16_table``: per collective, method and size on a POD16: steps, one step's link cycles,
  its latency + sync cycles, total microseconds, algorithm and bus bandwidth. By hand:
  ``total = sum(steps x (link + latency + sync)) + adds``; a step's link cycles are the busiest
  link group's bytes / its rate x 1.33 GHz (``busiest`` names the group and its bytes).
* ``all_reduce_64000``: pricing a 1 GB all-reduce on 64,000 IPUs (1,000 POD64s over GW-Links),
  best of 3 with the route cache cleared each time (issue: <= 1 s, goal 0.1 s); beside it, the
  baseline of routing one ring step flow by flow over all 64,000 IPUs (what pricing "a replica
  per IPU" costs for ONE of its ~2,000 steps).
* ``curves``: all-reduce / reduce-scatter / all-gather / all-to-all from 1 KB to 1 GB on POD16,
  POD64, POD128 and POD256 (issue: < 10 s in all), written to an SVG plot.
* ``data_parallel``: a data-parallel step at 1 ... 64,000 IPUs: one replica's compute (an input,
  ``--replica-step-s``) plus the all-reduce of ``--gradient-bytes`` (default BERT-Large's 340 M
  fp16 gradients, 680 MB), and its scaling efficiency.

Run: ``.venv/bin/python bench/bench_collectives_scale.py [--svg PATH]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))

from softipu.target import links as L  # noqa: E402
from softipu.target import systems as S  # noqa: E402

SIZES = [2**p for p in range(10, 31, 2)]  # 1 KiB .. 1 GiB
OPS = ("all_reduce", "reduce_scatter", "all_gather", "all_to_all")


def link_figures(system: S.System) -> dict:
    chip = system.chip
    return {"case": "link_figures", "system": system.name, "clock_hz": chip.clock_hz,
            "ipu_link_bytes_per_s_raw": chip.ipu_link_bytes_per_second,
            "ipu_link_efficiency": chip.ipu_link_efficiency,
            "group_bytes_per_s": {k: system.link_group_bytes_per_second(k)
                                  for k in ("card", "cross", "up", "down", "gw_out")},
            "links": {"card": system.ladder.card_links, "cross": system.ladder.cross_links,
                      "up": system.ladder.up_links, "down": system.ladder.down_links,
                      "wraps": system.ladder.wraps},
            "hop_latency_s": chip.sync_seconds_per_hop,
            "exchange_latency_cycles": chip.exchange_latency_cycles,
            "sync_cycles": {str(n): system.sync_cycles(n) for n in (1, 2, 16)},
            "gw_link_latency_s": system.gw_link_latency_seconds}


def table_row(system, op, size, method) -> dict:
    c = L.collective_cost(system, op, size, method=method)
    steps = [{"what": w, "count": n, "link": s.link_cycles, "latency": s.latency_cycles,
              "sync": s.sync_cycles,
              "busiest": list(s.busiest_link) if s.busiest_link else None,
              "busiest_bytes": s.busiest_link_bytes} for w, n, s in c.steps]
    return {"case": "pod16_table", "op": op, "bytes": size, "method": c.method, "steps": steps,
            "adds_cycles": c.compute_cycles, "cycles": c.cycles, "us": c.seconds * 1e6,
            "algbw_GBps": c.algorithm_bandwidth / 1e9, "busbw_GBps": c.bus_bandwidth / 1e9}


def price_64000(repeats: int = 3) -> dict:
    big = S.ipu_fabric(64000)
    times = []
    for _ in range(repeats):
        L._pattern_load.cache_clear()
        t = time.perf_counter()
        cost = L.collective_cost(big, "all_reduce", 10**9)
        times.append(time.perf_counter() - t)
    # Baseline: one clockwise step of a flat ring over all 64,000 IPUs, routed flow by flow.
    t = time.perf_counter()
    pairs = [(i, (i + 1) % big.num_ipus) for i in range(big.num_ipus)]
    L._pattern_load.cache_clear()
    L.flows_cost(big, pairs, 10**9 / big.num_ipus)
    naive = time.perf_counter() - t
    return {"case": "all_reduce_64000", "bytes": 10**9, "ipus": 64000, "method": cost.method,
            "steps": cost.num_steps, "priced_seconds": cost.seconds, "pricing_s_best": min(times),
            "pricing_s_all": times, "target_s": 1.0, "goal_s": 0.1,
            "baseline_one_step_routed_per_ipu_s": naive}


def curves() -> tuple[dict, float]:
    systems = (S.POD16, S.POD64, S.POD128, S.POD256)
    out: dict = {}
    t = time.perf_counter()
    for system in systems:
        for op in OPS:
            out[f"{system.name}/{op}"] = [L.collective_cost(system, op, b).seconds for b in SIZES]
    return out, time.perf_counter() - t


def data_parallel(replica_step_s: float, gradient_bytes: int) -> list[dict]:
    rows = []
    for ipus in (1, 4, 16, 64, 128, 256, 1024, 4096, 16384, 64000):
        system = S.ipu_fabric(max(ipus, 4))
        cycles = round(replica_step_s * system.chip.clock_hz)
        row = L.data_parallel_step(system, cycles, gradient_bytes, num_replicas=ipus)
        rows.append({"case": "data_parallel", **row, "samples_per_s_rel": ipus * row["efficiency"]})
    return rows


def svg(curves_: dict, path: str) -> None:
    """A log-log plot of seconds against bytes, one polyline per system and operation, by hand."""
    import math

    w, h, pad = 760, 480, 60
    xs = [math.log10(b) for b in SIZES]
    ys = [math.log10(s) for v in curves_.values() for s in v]
    y0, y1 = math.floor(min(ys)), math.ceil(max(ys))

    def px(x, y):
        return (pad + (x - xs[0]) / (xs[-1] - xs[0]) * (w - 2 * pad),
                h - pad - (y - y0) / (y1 - y0) * (h - 2 * pad))

    colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"]
    dashes = {"all_reduce": "", "reduce_scatter": "6,3", "all_gather": "2,2", "all_to_all": "8,2,2,2"}
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-size="11">',
             f'<rect width="{w}" height="{h}" fill="white"/>',
             f'<text x="{w / 2}" y="20" text-anchor="middle">softipu: collective time vs bytes per replica '
             f'(log-log)</text>']
    for y in range(y0, y1 + 1):
        _, py = px(xs[0], y)
        parts.append(f'<line x1="{pad}" x2="{w - pad}" y1="{py:.1f}" y2="{py:.1f}" stroke="#ddd"/>'
                     f'<text x="{pad - 5}" y="{py + 4:.1f}" text-anchor="end">1e{y} s</text>')
    for x, b in zip(xs, SIZES, strict=True):
        qx, _ = px(x, y0)
        parts.append(f'<text x="{qx:.1f}" y="{h - pad + 15}" text-anchor="middle">'
                     f'2^{b.bit_length() - 1} B</text>')
    systems = sorted({k.split("/")[0] for k in curves_}, key=lambda s: int(s.split("POD")[1]))
    for key, seconds in curves_.items():
        name, op = key.split("/")
        pts = " ".join("{:.1f},{:.1f}".format(*px(x, math.log10(s)))
                       for x, s in zip(xs, seconds, strict=True))
        parts.append(f'<polyline fill="none" stroke="{colours[systems.index(name) % 4]}" '
                     f'stroke-dasharray="{dashes[op]}" points="{pts}"><title>{key}</title></polyline>')
    for i, name in enumerate(systems):
        parts.append(f'<text x="{pad + 10}" y="{pad + 14 * i}" fill="{colours[i % 4]}">{name}</text>')
    for i, (op, d) in enumerate(dashes.items()):
        y = pad + 14 * (len(systems) + i)
        parts.append(f'<line x1="{pad + 10}" x2="{pad + 40}" y1="{y - 4}" y2="{y - 4}" stroke="black" '
                     f'stroke-dasharray="{d}"/><text x="{pad + 45}" y="{y}">{op}</text>')
    parts.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(parts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--svg", default=os.path.join(tempfile.gettempdir(), "softipu_collectives_scale.svg"))
    ap.add_argument("--replica-step-s", type=float, default=0.5)
    ap.add_argument("--gradient-bytes", type=int, default=340 * 10**6 * 2)
    args = ap.parse_args()
    print(json.dumps(link_figures(S.POD16)), flush=True)
    for op in OPS:
        for size in (2**10, 2**20, 2**26, 2**30):
            methods = ("auto",) if op == "all_to_all" else ("auto",) + L.METHODS
            for method in methods:
                print(json.dumps(table_row(S.POD16, op, size, method)), flush=True)
    print(json.dumps(price_64000()), flush=True)
    curves_, seconds = curves()
    svg(curves_, args.svg)
    print(json.dumps({"case": "curves", "sizes": SIZES, "pricing_s": seconds, "target_s": 10.0,
                      "svg": args.svg, "seconds": curves_}), flush=True)
    for row in data_parallel(args.replica_step_s, args.gradient_bytes):
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
