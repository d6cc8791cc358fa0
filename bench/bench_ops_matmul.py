"""Issue 4's matmul numbers: planner quality, planning time, and simulation speed against numpy.

Prints one JSON line per figure. Run: ``.venv/bin/python bench/bench_ops_matmul.py`` (add
``--quick`` to skip the 8192 estimates).

* ``planner_efficiency``: a GC200 matmul with inputs laid out by ``create_matmul_input_lhs/rhs``,
  compiled and priced (estimate-only engine): modeled flops / (cycles x the AMP peak of the whole
  chip). Where the data does not fit beside the default 0.6 of temporaries, the
  ``availableMemoryProportion`` is lowered, then (fp16) half partials are tried, until it does
  (both reported); where nothing fits, the planner's own estimate is reported.
* ``planning_ms``: one plan (both orientations considered) from a cold cache.
* ``matmul_wall``: engine.run of a float32 2048^3 matmul on a GC200 against numpy's float32
  matmul of the same shapes, best of several interleaved runs.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

import softipu as sp
from softipu import program as P
from softipu.ops.common import OpError
from softipu.ops.matmul import create_matmul_input_lhs, create_matmul_input_rhs, matmul, plan_matmul
from softipu.ops.planner import _plan_cached

GC200 = sp.targets.GC200
SQUARES = (256, 512, 1024, 2048, 4096, 8192)
SKEWED = ((16, 4096, 4096), (4096, 16, 4096), (4096, 4096, 16))


def emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


def build(dtype, m, k, n, options=None):
    g = sp.Graph(GC200)
    a = create_matmul_input_lhs(g, dtype, (m, k), (k, n), name="a", options=options)
    b = create_matmul_input_rhs(g, dtype, (m, k), (k, n), name="b", options=options)
    prog = P.Sequence()
    c = matmul(g, a, b, prog, options=options)
    return g, a, b, c, prog


def planner_efficiency(dtype, m, k, n) -> None:
    best = None
    partials = ("float", "half") if dtype is sp.float16 else ("float",)
    tries = [{"availableMemoryProportion": p, "partialsType": t} for t in partials
             for p in (0.6, 0.5, 0.4, 0.3, 0.2)]
    for options in tries:
        t0 = time.perf_counter()
        try:
            g, *_, prog = build(dtype, m, k, n, options)
        except OpError:  # no plan fits with these options
            continue
        eng = sp.Engine(g, [prog], {"debug.allowOutOfMemory": True}, estimate_only=True)
        eng.run(0)
        if best is None or eng.report.fits:
            best = (options["availableMemoryProportion"], options, eng.report, time.perf_counter() - t0)
        if eng.report.fits:
            break
    flops = 2 * m * k * n
    if best is None:  # no plan fits at all: say so, with the planner's least-memory estimate
        p = plan_matmul(GC200, dtype, (m, k), (k, n))
        emit(figure="planner_efficiency", dtype=dtype.name, m=m, k=k, n=n,
             efficiency_pct=round(100 * p.efficiency, 1), cycles=p.cycles, source="plan only",
             fits=False, temp_bytes_per_tile=p.temp_bytes_per_tile,
             note="A, B and C alone leave no room for the temporaries on a GC200")
        return
    proportion, options, report, seconds = best
    p = plan_matmul(GC200, dtype, (m, k), (k, n), options)
    emit(figure="planner_efficiency", dtype=dtype.name, m=m, k=k, n=n,
         efficiency_pct=round(100 * flops / (report.cycles * p.peak_flops_per_cycle), 1),
         cycles=report.cycles, peak_flops_per_cycle=p.peak_flops_per_cycle,
         plan_cycles=p.cycles, tiles_used=p.tiles_used, splits=list(p.splits), k_serial=p.k_serial,
         available_memory_proportion=proportion, partials=options["partialsType"],
         fits=bool(report.fits),
         build_and_compile_s=round(seconds, 2))


def planning_ms(dtype, m, k, n) -> None:
    best = float("inf")
    for _ in range(5):
        _plan_cached.cache_clear()
        t0 = time.perf_counter()
        plan_matmul(GC200, dtype, (m, k), (k, n))
        best = min(best, time.perf_counter() - t0)
    emit(figure="planning_ms", dtype=dtype.name, m=m, k=k, n=n, ms=round(1000 * best, 2), limit_ms=50)


def matmul_wall(size: int = 2048, repeats: int = 7) -> None:
    g, a, b, c, prog = build(sp.float32, size, size, size)
    eng = sp.Engine(g, [prog])
    rng = np.random.default_rng(0)
    av = rng.standard_normal((size, size), np.float32)
    bv = rng.standard_normal((size, size), np.float32)
    eng.write_tensor(a, av)
    eng.write_tensor(b, bv)
    eng.run(0)  # first touch of device memory
    # Blocks of runs, not alternating ones: after a multi-threaded call OpenBLAS's threads spin
    # for a while, which would slow whichever of the two runs right after numpy.
    ours, theirs = [], []
    for _ in range(2):
        for _ in range(repeats):
            t0 = time.perf_counter()
            want = av @ bv
            theirs.append(time.perf_counter() - t0)
        time.sleep(0.5)
        for _ in range(repeats):
            t0 = time.perf_counter()
            eng.run(0)
            ours.append(time.perf_counter() - t0)
    got = eng.read_tensor(c)
    assert np.allclose(got, want, rtol=1e-3, atol=1e-2)
    emit(figure="matmul_wall", dtype="float32", m=size, k=size, n=size,
         softipu_s=round(min(ours), 4), numpy_s=round(min(theirs), 4),
         ratio=round(min(ours) / min(theirs), 2), softipu_median_s=round(float(np.median(ours)), 4),
         numpy_median_s=round(float(np.median(theirs)), 4), limit_ratio=1.5)


def main() -> None:
    quick = "--quick" in sys.argv
    matmul_wall()
    if "--wall" in sys.argv:
        return
    for dtype in (sp.float16, sp.float32):
        planning_ms(dtype, 2048, 2048, 2048)
    for dtype in (sp.float16, sp.float32):
        for size in SQUARES:
            if quick and size > 4096:
                continue
            planner_efficiency(dtype, size, size, size)
        for m, k, n in SKEWED:
            planner_efficiency(dtype, m, k, n)


if __name__ == "__main__":
    main()
