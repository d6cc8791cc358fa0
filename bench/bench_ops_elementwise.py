"""Issue 4's elementwise numbers: softipu's simulation time against numpy's for the same op.

Every figure builds one op over ~16M float32 elements mapped across a GC200 (inputs mapped
linearly, as a user would), compiles it, and times ``engine.run`` against numpy computing the
same thing on the same arrays (best of a few repeats each, numpy allocating its result as
``a + b`` does). One JSON line per figure; the target is a ratio within 1.3.
Run: ``.venv/bin/python bench/bench_ops_elementwise.py``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import numpy as np

import softipu as sp
from softipu import program as P
from softipu.ops import elementwise as ew

N = 16 * 1024 * 1024
REPEATS = 5
TARGET_RATIO = 1.3


def best_of(fn: Callable[[], object], repeats: int = REPEATS) -> float:
    fn()  # warm-up: page in outputs, fill caches
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def figure(label: str, shapes: list[tuple[int, ...]], build: Callable, reference: Callable,
           dtypes: list[sp.DType] | None = None) -> None:
    rng = np.random.default_rng(0)
    dtypes = dtypes or [sp.float32] * len(shapes)
    g = sp.Graph(sp.targets.GC200)
    tensors, arrays = [], []
    for i, (shape, dtype) in enumerate(zip(shapes, dtypes, strict=True)):
        t = g.add_variable(dtype, shape, name=f"in{i}")
        sp.ops.map_linearly(g, t)
        tensors.append(t)
        arrays.append((rng.random(shape, dtype=np.float32) + 0.5).astype(dtype.numpy))
    prog = P.Sequence()
    t0 = time.perf_counter()
    out = build(g, *tensors, prog)
    t1 = time.perf_counter()
    eng = sp.Engine(g, [prog])
    t2 = time.perf_counter()
    for t, a in zip(tensors, arrays, strict=True):
        eng.write_tensor(t, a)
    engine_s = best_of(lambda: eng.run(0))
    numpy_s = best_of(lambda: reference(*arrays))
    expected = reference(*arrays)
    got = eng.read_tensor(out)
    assert np.allclose(got.astype(np.float64), expected.astype(np.float64), rtol=1e-5, atol=1e-6), label
    step = next(s for s in eng.report.steps if s["kind"] == "compute")
    print(json.dumps({
        "bench": "ops_elementwise", "op": label, "elements": int(np.prod(out.shape)),
        "softipu_s": round(engine_s, 5), "numpy_s": round(numpy_s, 5),
        "ratio": round(engine_s / numpy_s, 3), "target_ratio": TARGET_RATIO,
        "build_s": round(t1 - t0, 3), "compile_s": round(t2 - t1, 3),
        "modeled_cycles": step["cycles"], "vertex_groups": sum(
            len(c.groups) for c in eng.executable.compute_sets.values()),
    }), flush=True)


def main() -> None:
    figure("add", [(N,), (N,)], ew.add, lambda a, b: a + b)
    figure("mul", [(N,), (N,)], ew.mul, lambda a, b: a * b)
    figure("exp", [(N,)], ew.exp, np.exp)
    figure("bias add (16384, 1024) + (1024,)", [(16384, 1024), (1024,)], ew.add, lambda a, b: a + b)
    figure("scale by row (16384, 1024) * (16384, 1)", [(16384, 1024), (16384, 1)], ew.mul,
           lambda a, b: a * b)
    fused = ew.E.add(ew.E.mul(ew.E.input(0), ew.E.input(1)), 1.0)
    figure("map a * b + 1 (fused)", [(N,), (N,)], lambda g, a, b, p: ew.map(g, fused, [a, b], p),
           lambda a, b: a * b + 1)
    figure("cast float32 -> float16", [(N,)], lambda g, a, p: ew.cast(g, a, sp.float16, p),
           lambda a: a.astype(np.float16))


if __name__ == "__main__":
    main()
