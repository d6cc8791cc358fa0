"""Issue 4's nn figures: softmax and layer norm of a (8192, 1024) float32 tensor on a GC200.

Prints one JSON line per figure: the engine's wall time per run beside numpy's for the same
computation (best of a few repeats, same process), the modeled cycles and what they mean at
the GC200 clock, and the build + compile time. Run: ``.venv/bin/python bench/bench_ops_nn.py``.
"""

from __future__ import annotations

import json
import time

import numpy as np

import softipu as sp
from softipu import program as P
from softipu.ops import nn

ROWS, COLS = 8192, 1024
REPEATS = 5


def emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


def best_seconds(fn, repeats: int = REPEATS) -> float:
    fn()  # warm-up: first touch of output pages
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def numpy_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def numpy_layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = x.var(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def build(op: str):
    t0 = time.perf_counter()
    g = sp.Graph(sp.targets.GC200)
    x = g.add_variable(sp.float32, (ROWS, COLS), name="x")
    sp.ops.map_linearly(g, x, grain_size=COLS)  # whole rows per tile, as a previous row op leaves them
    prog = P.Sequence()
    inputs = {x: np.random.default_rng(0).standard_normal((ROWS, COLS), dtype=np.float32)}
    if op == "softmax":
        out = nn.softmax(g, x, prog)
    else:
        w = g.add_variable(sp.float32, (COLS,), name="w")
        b = g.add_variable(sp.float32, (COLS,), name="b")
        sp.ops.map_linearly(g, w)
        sp.ops.map_linearly(g, b)
        inputs[w] = np.random.default_rng(1).standard_normal(COLS, dtype=np.float32)
        inputs[b] = np.random.default_rng(2).standard_normal(COLS, dtype=np.float32)
        out = nn.layer_norm(g, x, w, b, prog)[0]
    eng = sp.Engine(g, [prog])
    build_s = time.perf_counter() - t0
    for t, a in inputs.items():
        eng.write_tensor(t, a)
    return eng, out, inputs, build_s


def bench(op: str) -> None:
    eng, out, inputs, build_s = build(op)
    arrays = list(inputs.values())
    reference = numpy_softmax if op == "softmax" else numpy_layer_norm
    engine_s = best_seconds(lambda: eng.run(0))
    numpy_s = best_seconds(lambda: reference(*arrays))
    err = float(np.max(np.abs(eng.read_tensor(out) - reference(*arrays))))
    cycles = eng.report.runs[-1]["cycles"]
    target = sp.targets.GC200
    emit(figure=f"{op} ({ROWS}, {COLS}) float32 on GC200", engine_seconds=round(engine_s, 4),
         numpy_seconds=round(numpy_s, 4), engine_over_numpy=round(engine_s / numpy_s, 2),
         modeled_cycles=int(cycles), modeled_microseconds=round(target.seconds(cycles) * 1e6, 1),
         build_and_compile_seconds=round(build_s, 2), max_abs_error_vs_numpy=err)


if __name__ == "__main__":
    bench("softmax")
    bench("layer_norm")
