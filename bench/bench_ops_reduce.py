"""Reduction simulation speed on a GC200: softipu's two-stage reduce beside numpy's, same run.

Each figure reduces a 16M-element float32 tensor, (4096, 4096) and (16384, 1024): sum over all,
sum over the last dim, max over the first dim. It prints one JSON line: the best wall time of
``engine.run`` (both compute sets, every tile) and of the same numpy reduction, measured
alternately in the same process, their ratio, and the modeled IPU cycles of one run. Inputs are
mapped with ``map_linearly``: ``grain`` 1 (tile boundaries fall anywhere in a row) and
``grain`` = a row (whole rows per tile). ``cpu_ratio`` is the same ratio on the thread's CPU time,
which a machine shared with other work disturbs less than wall time (both sides are one thread).

    python bench/bench_ops_reduce.py            # the figures of issue 4
    python bench/bench_ops_reduce.py --quick    # a 1M-element smoke run
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

import softipu as sp
from softipu import program as P
from softipu.ops.reduce import ReduceOp, reduce

CASES = (  # name, dims, op, numpy
    ("sum_all", None, ReduceOp.ADD, lambda a: np.sum(a)),
    ("sum_last_dim", 1, ReduceOp.ADD, lambda a: np.sum(a, axis=1)),
    ("max_first_dim", 0, ReduceOp.MAX, lambda a: np.max(a, axis=0)),
)


def best_of(fn, repeats: int) -> tuple[float, float]:
    """The best (wall, thread CPU) seconds of ``repeats`` calls."""
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.thread_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
    return min(wall), min(cpu)


def figure(name, dims, op, oracle, a: np.ndarray, grain: int, rounds: int) -> dict:
    g = sp.Graph(sp.targets.GC200)
    x = g.add_variable(sp.float32, a.shape, name="x")
    sp.ops.map_linearly(g, x, grain_size=grain)
    prog = P.Sequence()
    t0 = time.perf_counter()
    y = reduce(g, x, prog, dims=dims, op=op)
    eng = sp.Engine(g, [prog])
    build = time.perf_counter() - t0
    eng.write_tensor(x, a)
    eng.run(0)
    expected = oracle(a)
    np.testing.assert_allclose(eng.read_tensor(y), expected, rtol=1e-4, atol=1e-2)
    cycles = eng.report.cycles
    soft, ref = [], []
    for _ in range(rounds):  # alternate, so both see the same machine load
        soft.append(best_of(lambda: eng.run(0), 3))
        ref.append(best_of(lambda: oracle(a), 3))
    (s, s_cpu), (r, r_cpu) = np.min(soft, axis=0), np.min(ref, axis=0)
    return {"figure": f"reduce_{name}", "target": "GC200", "shape": list(a.shape), "dtype": "float32",
            "grain": grain, "softipu_ms": round(s * 1e3, 3), "numpy_ms": round(r * 1e3, 3),
            "ratio": round(s / r, 3), "cpu_ratio": round(s_cpu / r_cpu, 3), "goal_ratio": 1.3,
            "modeled_cycles_per_run": cycles, "build_and_compile_s": round(build, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 1M-element smoke run")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    # (4096, 4096): 1472 tiles hold < 3 rows each, so an outer reduction's partials are 37% of
    # the input; (16384, 1024): 11 rows per tile, partials 9%.
    shapes = [(1024, 1024)] if args.quick else [(4096, 4096), (16384, 1024)]
    rng = np.random.default_rng(0)
    for shape in shapes:
        a = rng.standard_normal(shape).astype(np.float32)
        for grain in (1, shape[1]):
            for name, dims, op, oracle in CASES:
                print(json.dumps(figure(name, dims, op, oracle, a, grain, args.rounds)), flush=True)


if __name__ == "__main__":
    main()
