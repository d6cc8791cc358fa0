"""Host wall-clock times of building, compiling, planning and pricing: the figures unit tests used
to assert (tests assert results; the time a step takes is measured here, beside its target).

One JSON line per figure with ``seconds`` (or ``ms``), the target, and ``met``; best of
``REPEATS`` runs, since a busy host only ever slows a run down.
Run: ``.venv/bin/python bench/bench_host_times.py``.

* ``compile_bulk_group``: 100,000 vertices of one ``add_vertices`` call on 16 tiles compile in
  < 5 s (columnar: a few sorts, no Python per vertex), conflicts checked.
* ``estimate_billion_turns``: an estimate-only ``Repeat(10**9, ...)`` prices in < 1 s (a loop's
  price is multiplied, never walked).
* ``estimate_time_vs_elements``: pricing 256 vertices of 65,536 floats each takes < 3x (+ 50 ms)
  the time of 256 vertices of 16 floats (pricing grows with structure, not elements).
* ``compile_repeated_layers``: 12 identical layers (a 512^2 matmul and a bias add each, GC200):
  the conflict check and pricing (``verify_compute_sets`` + ``price_steps``) with structure keys
  (each distinct layout checked and priced once) beside the same compile with the keys off, in
  this run; ``identical`` says both priced every step the same. Target: < 0.5x the keys-off time.
* ``conv_plan_ms``: planning a ResNet-50 conv3 3x3 (batch 8, fp16) as a matmul on a GC200 takes
  < 50 ms from a cold plan cache. (The matmul 2048^3 plan time is ``planning_ms`` in
  ``bench_ops_matmul.py``.)
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import numpy as np

import softipu as sp
from softipu import program as P
from softipu.codelets import BinaryOp, binary_op_codelet
from softipu.compiler import compile_graph

REPEATS = 3


class Move(sp.Vertex):
    src = sp.Input(sp.float32)
    dst = sp.Output(sp.float32)

    @staticmethod
    def compute(src, dst):
        dst[...] = src

    @staticmethod
    def cycles(src, dst):
        return 10 + src


def emit(figure: str, seconds: float, target_s: float, **fields) -> None:
    print(json.dumps({"figure": figure, "seconds": round(seconds, 4), "target_s": target_s,
                      "met": seconds < target_s, **fields}), flush=True)


def best(fn: Callable[[], float]) -> float:
    return min(fn() for _ in range(REPEATS))


def compile_bulk_group(vertices: int = 100_000) -> None:
    def once() -> float:
        g = sp.Graph(sp.targets.ipu_model(tiles=16, bytes_per_tile=1 << 20))
        x, y = (g.add_variable(sp.float32, (vertices, 2), name=n) for n in "xy")
        for t in (x, y):
            sp.ops.map_linearly(g, t)
        cs = g.add_compute_set("bulk")
        g.add_vertices(cs, Move, {"src": x, "dst": y}, tiles=np.arange(vertices) % 16)
        start = time.perf_counter()
        compile_graph(g, P.Sequence(P.Execute(cs)))
        return time.perf_counter() - start
    emit("compile_bulk_group", best(once), 5.0, vertices=vertices, tiles=16)


def _adds(g: sp.Graph, vertices: int, elements: int) -> sp.ComputeSet:
    ts = {}
    for name in ("a", "b", "out"):
        ts[name] = g.add_variable(sp.float32, (vertices, elements), name=name)
        sp.ops.map_linearly(g, ts[name], grain_size=elements)
    cs = g.add_compute_set("add")
    tiles = np.repeat(np.arange(16), vertices // 16)
    g.add_vertices(cs, binary_op_codelet(BinaryOp.ADD, sp.float32), ts, tiles=tiles)
    return cs


def estimate_billion_turns() -> None:
    def once() -> float:
        g = sp.Graph(sp.targets.ipu_model(tiles=16))
        eng = sp.Engine(g, [P.Repeat(10**9, P.Execute(_adds(g, 16, 1000)))], estimate_only=True)
        start = time.perf_counter()
        eng.run(0)
        return time.perf_counter() - start
    emit("estimate_billion_turns", best(once), 1.0, turns=10**9)


def estimate_time_vs_elements(vertices: int = 256) -> None:
    target = sp.targets.ipu_model(tiles=16, bytes_per_tile=16 * 2**20)

    def once(elements: int) -> float:
        start = time.perf_counter()
        g = sp.Graph(target)
        eng = sp.Engine(g, [P.Execute(_adds(g, vertices, elements))], estimate_only=True)
        eng.run(0)
        return time.perf_counter() - start
    small = best(lambda: once(16))
    big = best(lambda: once(65536))
    emit("estimate_time_vs_elements", big, round(3 * small + 0.05, 4), baseline_seconds=round(small, 4),
         ratio=round(big / small, 2), vertices=vertices, elements=[16, 65536])


def _stacked_layers(layers: int):
    from softipu.ops.matmul import create_matmul_input_lhs, create_matmul_input_rhs, matmul

    g = sp.Graph(sp.targets.GC200)
    x = create_matmul_input_lhs(g, sp.float32, (512, 512), (512, 512), name="x")
    prog = P.Sequence()
    for k in range(layers):
        w = create_matmul_input_rhs(g, sp.float32, (512, 512), (512, 512), name=f"w{k}")
        y = matmul(g, x, w, prog)
        x = sp.ops.add(g, y, y, prog)
    return g, prog


def compile_repeated_layers(layers: int = 12) -> None:
    import dataclasses

    from softipu.compiler.structure import StructureKeys

    g, prog = _stacked_layers(layers)
    timed = ("verify_compute_sets", "price_steps")

    def once(keys: bool) -> tuple[float, list]:
        saved = {n: StructureKeys.__dict__[n] for n in ("layout", "work", "copy")}
        if not keys:
            StructureKeys.layout = lambda self, c: None  # type: ignore[method-assign]
            StructureKeys.work = lambda self, c: None  # type: ignore[method-assign,assignment]
            StructureKeys.copy = lambda self, a, b: None  # type: ignore[method-assign]
        try:
            ex = compile_graph(g, prog, allow_out_of_memory=True)
        finally:
            for n, f in saved.items():
                setattr(StructureKeys, n, f)
        costs = [{f.name: (v.tolist() if isinstance(v := getattr(s, f.name), np.ndarray) else v)
                  for f in dataclasses.fields(s)} for s in ex.steps]
        return sum(t for name, t in ex.pass_seconds if name in timed), costs

    off = min(once(False)[0] for _ in range(REPEATS))
    on = min(once(True)[0] for _ in range(REPEATS))
    identical = once(True)[1] == once(False)[1]
    emit("compile_repeated_layers", on, round(0.5 * off, 4), baseline_seconds=round(off, 4),
         ratio=round(on / off, 3), identical=identical, layers=layers)


def conv_plan_ms() -> None:
    from softipu.ops.matmul import _options, _plan, _PlanContext, _Spec
    from softipu.ops.planner import _plan_cached

    m, k, n = 8 * 28 * 28, 128 * 9, 128  # ResNet-50 conv3 3x3, batch 8
    spec = _Spec((1,), m, k, n, sp.float16, (1,), (1,), (1, m, n), False, False)

    def once() -> float:
        _plan_cached.cache_clear()
        opts = _options(_PlanContext("bench"), None, sp.float16)
        start = time.perf_counter()
        _plan(spec, opts, sp.targets.GC200, grains=(1, 9, 1), allow_swap=False)
        return time.perf_counter() - start
    seconds = best(once)
    emit("conv_plan_ms", seconds, 0.05, ms=round(1000 * seconds, 2), m=m, k=k, n=n, dtype="float16")


def main() -> None:
    compile_bulk_group()
    estimate_billion_turns()
    estimate_time_vs_elements()
    compile_repeated_layers()
    conv_plan_ms()


if __name__ == "__main__":
    main()
