"""Issue 3's numbers: compile-and-price time and host memory, and how they scale.

Estimate-only pricing must grow with the number of vertices, not the number of elements: each
row below keeps the vertices fixed and multiplies the elements per vertex by 256. One JSON line
per figure. Run: ``.venv/bin/python bench/bench_costs.py``.
"""

from __future__ import annotations

import json
import time
import tracemalloc

import numpy as np

import softipu as sp
from softipu import program as P
from softipu.codelets import BinaryOp, binary_op_codelet

GC200 = sp.targets.GC200


def price(vertices: int, n: int) -> dict:
    tracemalloc.start()
    t0 = time.perf_counter()
    g = sp.Graph(GC200)
    tiles = (np.arange(vertices) * GC200.num_tiles) // vertices
    a, b, out = (g.add_variable(sp.float16, (vertices, n), name=v) for v in "abc")
    for t in (a, b, out):
        g.set_tile_mappings(t, tiles)
    cs = g.add_compute_set("add")
    g.add_vertices(cs, binary_op_codelet(BinaryOp.ADD, sp.float16), {"a": a, "b": b, "out": out}, tiles)
    eng = sp.Engine(g, [P.Repeat(1000, P.Execute(cs))], {"debug.allowOutOfMemory": True},
                    estimate_only=True)
    eng.run(0)
    seconds = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    report = eng.report
    return {"vertices": vertices, "elements_per_vertex": n, "device_bytes": 3 * vertices * n * 2,
            "seconds": round(seconds, 3), "host_peak_mb": round(peak / 2**20, 1),
            "modeled_cycles": report.cycles, "fits": report.fits}


def main() -> None:
    for vertices in (1 << 16, 1 << 18, 1 << 20):
        for n in (16, 4096):
            print(json.dumps({"bench": "estimate_only_scaling", **price(vertices, n)}), flush=True)
    # A program filling ~85% of a GC200's 900 MB, priced with well under 100 MB of host memory.
    per_tile = int(0.85 * GC200.bytes_per_tile) // (3 * 2) // 8 * 8
    row = price(GC200.num_tiles * 6, per_tile // 6)
    print(json.dumps({"bench": "estimate_only_full_chip", **row, "target_host_mb": 100}), flush=True)


if __name__ == "__main__":
    main()
