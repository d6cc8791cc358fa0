"""Issue 2's numbers: engine overhead against numpy, and graph build + compile speed.

Prints one JSON line per figure. Run: ``.venv/bin/python bench/bench_engine.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from functools import partial

import numpy as np

import softipu as sp
from softipu import program as P

TILES = 1472  # GC200
VERTICES_PER_TILE = 6  # one per worker context
ELEMENTS_PER_VERTEX = 2000  # 8,832 vertices x 2,000 = 17.66 M float32
RUNS = 10


class AddOne(sp.Vertex):
    """The issue's contract example, verbatim."""

    x = sp.Input(sp.float32)
    y = sp.Output(sp.float32)

    @staticmethod
    def compute(x, y):
        y[...] = x + 1

    @staticmethod
    def cycles(x, y):
        return 20 + x


class AddOneInPlace(sp.Vertex):
    """The same codelet written without a temporary (``out=``)."""

    x = sp.Input(sp.float32)
    y = sp.Output(sp.float32)

    @staticmethod
    def compute(x, y):
        np.add(x, 1, out=y)


def emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


def build_one_at_a_time(codelet: type[sp.Vertex]):
    """8,832 add_vertex calls, as a tutorial user would write them."""
    g = sp.Graph(sp.targets.GC200)
    n = TILES * VERTICES_PER_TILE * ELEMENTS_PER_VERTEX
    x = g.add_variable(sp.float32, (n,), name="x")
    y = g.add_variable(sp.float32, (n,), name="y")
    per_tile = VERTICES_PER_TILE * ELEMENTS_PER_VERTEX
    cs = g.add_compute_set("add_one")
    for tile in range(TILES):
        g.set_tile_mapping(x[tile * per_tile : (tile + 1) * per_tile], tile)
        g.set_tile_mapping(y[tile * per_tile : (tile + 1) * per_tile], tile)
        for w in range(VERTICES_PER_TILE):
            lo = tile * per_tile + w * ELEMENTS_PER_VERTEX
            part = slice(lo, lo + ELEMENTS_PER_VERTEX)
            g.add_vertex(cs, codelet, {"x": x[part], "y": y[part]}, tile=tile)
    return g, x, y, cs


def _numpy_runs(fn) -> None:
    for _ in range(RUNS):
        fn()


def bench_overhead() -> None:
    """The engine's run against numpy doing the same work in place (``np.add(x, 1, out=y)``, as
    the engine writes device memory in place: the target), and against the allocating ``x + 1``
    (which pays fresh pages every call, so flatters the engine)."""
    for codelet in (AddOne, AddOneInPlace):
        g, x, y, cs = build_one_at_a_time(codelet)
        eng = sp.Engine(g, [P.Repeat(RUNS, P.Execute(cs))])
        host_x = np.random.default_rng(0).random(x.numel, dtype=np.float32)
        host_y = np.empty_like(host_x)
        eng.write_tensor(x, host_x)
        eng.run(0)  # warm-up: touches the output pages once
        np.add(host_x, 1, out=host_y)
        best = {"engine": float("inf"), "in_place": float("inf"), "allocating": float("inf")}
        runs = {"engine": partial(eng.run, 0),
                "in_place": partial(_numpy_runs, lambda x=host_x, y=host_y: np.add(x, 1, out=y)),
                "allocating": partial(_numpy_runs, lambda x=host_x: x + 1)}
        for _ in range(5):
            for name, fn in runs.items():
                t0 = time.perf_counter()
                fn()
                best[name] = min(best[name], time.perf_counter() - t0)
        assert np.array_equal(eng.read_tensor(y), host_x + 1)
        emit(bench="engine_overhead", codelet=codelet.__name__, vertices=TILES * VERTICES_PER_TILE,
             elements=x.numel, runs=RUNS, engine_s=round(best["engine"], 4),
             numpy_in_place_s=round(best["in_place"], 4), ratio=round(best["engine"] / best["in_place"], 3),
             target_ratio=1.1, numpy_allocating_s=round(best["allocating"], 4),
             ratio_to_allocating=round(best["engine"] / best["allocating"], 3))


def bench_build() -> None:
    t0 = time.perf_counter()
    g, x, y, cs = build_one_at_a_time(AddOne)
    t1 = time.perf_counter()
    sp.compiler.compile_graph(g, [P.Execute(cs)])
    t2 = time.perf_counter()
    emit(bench="build_one_at_a_time", vertices=TILES * VERTICES_PER_TILE,
         build_s=round(t1 - t0, 3), compile_s=round(t2 - t1, 3), total_s=round(t2 - t0, 3),
         target_s=1.0)


def bench_bulk(vertices: int = 1 << 20, n: int = 16) -> None:
    t0 = time.perf_counter()
    g = sp.Graph(sp.targets.GC200)
    x = g.add_variable(sp.float32, (vertices, n), name="x")
    y = g.add_variable(sp.float32, (vertices, n), name="y")
    tiles = (np.arange(vertices) * TILES) // vertices
    g.set_tile_mappings(x, tiles)
    g.set_tile_mappings(y, tiles)
    cs = g.add_compute_set("add_one")
    g.add_vertices(cs, AddOne, {"x": x, "y": y}, tiles=tiles)
    t1 = time.perf_counter()
    sp.compiler.compile_graph(g, [P.Execute(cs)])
    t2 = time.perf_counter()
    emit(bench="build_bulk", vertices=vertices, build_s=round(t1 - t0, 3),
         compile_s=round(t2 - t1, 3), total_s=round(t2 - t0, 3), target_s=2.0)


_NARROW_PRODUCT = """
import time
import numpy as np
from softipu.codelets.host import BLAS
from softipu.engine.blas_warmup import warm_blas_buffers
rng = np.random.default_rng(0)
a, b = rng.standard_normal((256, 768), np.float32), rng.standard_normal((768, 288), np.float32)
c = np.empty((256, 288), np.float32)
def rate():
    np.matmul(a, b, out=c)
    t = time.thread_time()
    for _ in range(20):
        np.matmul(a, b, out=c)
    return 2 * 256 * 768 * 288 * 20 / (time.thread_time() - t) / 1e9
with BLAS.single_threaded():
    cold = rate()
    before = c.copy()
    warm_blas_buffers()
    warmed = rate()
print(cold, warmed, int(before.tobytes() == c.tobytes()))
"""


def bench_blas_warmup() -> None:
    """numpy's OpenBLAS on one thread, a 256 x 768 x 288 product (a BERT-base GEMM piece) in a
    fresh process: before and after engine/blas_warmup.py's warm-up, GFLOP/s of thread CPU time
    (wall clock varies with other load; CPU time does not), and whether the bits are the same."""
    out = subprocess.run([sys.executable, "-c", _NARROW_PRODUCT], capture_output=True, text=True, check=True)
    cold, warmed, same = out.stdout.split()
    emit(bench="openblas_narrow_product", shape=[256, 768, 288], cold_gflops_cpu=round(float(cold), 1),
         warmed_gflops_cpu=round(float(warmed), 1), speedup=round(float(warmed) / float(cold), 2),
         same_bits=bool(int(same)))


def bench_half_casts(n: int = 1 << 22) -> None:
    """float32 -> float16 and back, ns an element of CPU time: codelets/halves.py beside numpy's
    cast on the same data, for values of one scale (normal halves) and of a gradient's (1e-6:
    subnormal halves, each of which makes numpy raise its underflow flag), with the bits compared."""
    from softipu.codelets.halves import from_half, to_half

    rng = np.random.default_rng(0)
    for scale in (1.0, 1e-6):
        x = (rng.standard_normal(n) * scale).astype(np.float32)
        h, mine, wide = np.empty(n, np.float16), np.empty(n, np.float16), np.empty(n, np.float32)
        figures = {}
        for name, fn in (("numpy_to_half", partial(np.copyto, h, x, casting="unsafe")),
                         ("to_half", partial(to_half, x, mine)),
                         ("numpy_from_half", partial(np.copyto, wide, h)),
                         ("from_half", partial(from_half, h, wide))):
            fn()
            t = time.process_time()
            for _ in range(3):
                fn()
            figures[name] = round((time.process_time() - t) / 3 / n * 1e9, 2)
        emit(bench="half_casts", scale=scale, elements=n, ns_per_element_cpu=figures,
             same_bits=bool(np.array_equal(h.view(np.uint16), mine.view(np.uint16))
                            and np.array_equal(wide, h.astype(np.float32))))


def bench_half_ops(n: int = 1 << 22) -> None:
    """float16 multiply and add as the elementwise codelets run them (float32 and one rounding,
    codelets/elementwise/_numerics.py) beside numpy's float16 loops on the same data, ns an element
    of CPU time, for normal results and for a gradient's scale (subnormal results), bits compared."""
    from softipu.codelets.elementwise.ops import BinaryOp

    rng = np.random.default_rng(0)
    for scale in (1.0, 1e-3):
        a, b = ((rng.standard_normal(n) * scale).astype(np.float16) for _ in range(2))
        for op, ufunc in ((BinaryOp.MULTIPLY, np.multiply), (BinaryOp.ADD, np.add)):
            mine, theirs = np.empty(n, np.float16), np.empty(n, np.float16)
            figures = {}
            for name, fn in (("numpy", partial(ufunc, a, b, out=theirs)),
                             ("softipu", partial(op.value.fn, a, b, out=mine))):
                fn()
                t = time.process_time()
                for _ in range(3):
                    fn()
                figures[name] = round((time.process_time() - t) / 3 / n * 1e9, 2)
            emit(bench="half_ops", op=op.name.lower(), scale=scale, elements=n, ns_per_element_cpu=figures,
                 same_bits=bool(np.array_equal(mine.view(np.uint16), theirs.view(np.uint16))))


if __name__ == "__main__":
    bench_half_casts()
    bench_half_ops()
    bench_blas_warmup()
    bench_build()
    bench_bulk()
    bench_overhead()
