"""The softipu demo (``make demo``): the six tutorials, then a 2-D heat stencil on a full GC200.

The showcase solves the steady-state heat equation by Jacobi iteration on a grid of about three
million points spread over all 1,472 tiles of a GC200. Each tile owns a band of rows of two
buffers, ``a`` and ``b``. One Jacobi sweep is one BSP superstep: the exchange brings each tile the
row just above and just below its band (its *halo*) from its neighbour tiles, then every tile
updates its band from ``a`` into ``b``. The next sweep goes from ``b`` back into ``a`` (ping-pong),
so no compute set ever reads what it writes. A ``Repeat`` runs the sweeps on the device.

The vertices are added in bulk with ``g.add_vertices``: one call per compute set, each field a
``(vertices, n)`` tensor whose row ``i`` belongs to vertex ``i``. That is how library code builds
graphs with millions of vertices, and it lets the engine run all 1,472 vertices of a compute set
as a few array operations over strided views of device memory.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from types import ModuleType

import numpy as np

import softipu as sp
from softipu import program as P

TUTORIALS = [
    "tut1_variables_and_mapping",
    "tut2_custom_vertex",
    "tut3_compute_sets",
    "tut4_loops_and_branches",
    "tut5_host_streams",
    "tut6_replication",
]


class JacobiBand(sp.Vertex):
    """One tile's band of rows: out = mean of the four neighbours; the edge columns stay fixed."""

    north = sp.Input(sp.float32)  # the halo row above the band (from the tile above)
    band = sp.Input(sp.float32)  # the band's rows, flattened
    south = sp.Input(sp.float32)  # the halo row below the band
    out = sp.Output(sp.float32)

    @staticmethod
    def compute(north, band, south, out):
        width = north.shape[-1]
        rows = band.reshape(band.shape[:-1] + (-1, width))  # (..., vertices, rows, width)
        padded = np.concatenate([north[..., None, :], rows, south[..., None, :]], axis=-2)
        new = out.reshape(rows.shape)  # splitting the last axis is a view: writes land in out
        new[..., [0, -1]] = rows[..., [0, -1]]  # the edge columns stay fixed
        new[..., 1:-1] = jacobi_update(padded)

    @staticmethod
    def cycles(north, band, south, out):
        return 30 + 2 * band  # 3 adds and a multiply per point, 2 fp32 lanes

    @staticmethod
    def flops(north, band, south, out):
        return 4 * band


def jacobi_update(padded: np.ndarray) -> np.ndarray:
    """The interior of ``padded`` (..., rows+2, width) after one sweep.

    The numpy check below uses this same formula on the whole grid, so what it checks is the
    tiling: bands, halos and ping-pong buffers must reproduce the single-array result bit for bit.
    """
    up, down = padded[..., :-2, 1:-1], padded[..., 2:, 1:-1]
    left, right = padded[..., 1:-1, :-2], padded[..., 1:-1, 2:]
    return np.float32(0.25) * ((up + down) + (left + right))


def add_grid(g: sp.Graph, name: str, rows_per_tile: int, width: int) -> sp.Tensor:
    tiles = g.num_tiles
    grid = g.add_variable(sp.float32, (tiles * rows_per_tile + 2, width), name=name)
    g.set_tile_mappings(grid[1:-1].reshape(tiles, rows_per_tile * width), np.arange(tiles))
    g.set_tile_mapping(grid[0], 0)  # the fixed top and bottom rows live with their neighbours
    g.set_tile_mapping(grid[-1], tiles - 1)
    return grid


def sweep(g: sp.Graph, src: sp.Tensor, dst: sp.Tensor, rows_per_tile: int) -> sp.ComputeSet:
    tiles, r = g.num_tiles, rows_per_tile
    cs = g.add_compute_set(f"jacobi_{g.describe(src)}_to_{g.describe(dst)}")
    g.add_vertices(cs, JacobiBand, {
        "north": src[0 : tiles * r : r],  # row t*r is the row above tile t's band
        "band": src[1:-1].reshape(tiles, r * src.shape[1]),
        "south": src[r + 1 :: r],  # row (t+1)*r + 1 is the row below it
        "out": dst[1:-1].reshape(tiles, r * dst.shape[1]),
    }, tiles=np.arange(tiles))
    return cs


def initial_grid(height: int, width: int) -> np.ndarray:
    grid = np.zeros((height, width), np.float32)
    grid[0] = 100.0  # a hot top edge
    grid[height // 2 - 2 : height // 2 + 2, width // 2 - 2 : width // 2 + 2] = 50.0  # a warm spot
    return grid


def numpy_jacobi(grid: np.ndarray, iterations: int) -> np.ndarray:
    a, b = grid.copy(), grid.copy()
    for _ in range(iterations):
        b[1:-1, 1:-1] = jacobi_update(a)
        a, b = b, a
    return a


def heat(target: sp.Target = sp.targets.GC200, rows_per_tile: int = 2, width: int = 1024,
         iterations: int = 100) -> dict[str, object]:
    if iterations % 2:
        raise ValueError("iterations must be even: each step of the loop is two ping-pong sweeps")
    g = sp.Graph(target)
    a, b = add_grid(g, "a", rows_per_tile, width), add_grid(g, "b", rows_per_tile, width)
    step = P.Sequence(P.Execute(sweep(g, a, b, rows_per_tile)), P.Execute(sweep(g, b, a, rows_per_tile)))
    t0 = time.perf_counter()
    eng = sp.Engine(g, [P.Repeat(iterations // 2, step)])
    compile_s = time.perf_counter() - t0

    grid = initial_grid(*a.shape)
    eng.write_tensor(a, grid)
    eng.write_tensor(b, grid)  # b's fixed edges must match a's
    t0 = time.perf_counter()
    eng.run(0)
    run_s = time.perf_counter() - t0
    result = eng.read_tensor(a)

    t0 = time.perf_counter()
    expected = numpy_jacobi(grid, iterations)
    numpy_s = time.perf_counter() - t0
    return {"target": target.name, "tiles": g.num_tiles, "shape": a.shape, "iterations": iterations,
            "compile_s": compile_s, "run_s": run_s, "numpy_s": numpy_s,
            "points_per_s": a.numel * iterations / run_s, "result": result,
            "max_abs_diff": float(np.abs(result - expected).max()), "report": eng.report}


def load_tutorial(name: str) -> ModuleType:
    """Import a sibling example by path, so the demo runs from any working directory."""
    path = Path(__file__).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def brief(value: object) -> str:
    """One line per array (the first and last few values), so the demo stays short."""
    if isinstance(value, np.ndarray):
        shape = f"{value.shape} " if value.ndim > 1 else ""
        return shape + np.array2string(value.ravel(), threshold=8, edgeitems=3, precision=4,
                                       max_line_width=10_000)
    return str(value).replace("\n", "\n      ")


def main(report_dir: str | None = "reports", **heat_size: object) -> dict[str, object]:
    """Run every tutorial, then the heat showcase (``heat_size`` overrides its size).

    The showcase's report (how a real IPU would spend memory and cycles) is written to
    ``report_dir`` as JSON, a Perfetto trace and an HTML page.
    """
    results: dict[str, object] = {}
    for name in TUTORIALS:
        module = load_tutorial(name)
        print(f"\n=== {name}: {module.__doc__.splitlines()[0]}")
        results[name] = module.main()
        for key, value in results[name].items():
            print(f"  {key}: {brief(value)}")
    results["heat"] = report_heat(heat(**heat_size), report_dir)
    return results


def report_heat(r: dict[str, object], report_dir: str | None) -> dict[str, object]:
    height, width = r["shape"]
    print(f"\n=== showcase: 2-D Jacobi heat stencil, {height} x {width} = {height * width:,} points "
          f"on {r['target']} ({r['tiles']} tiles, {(height - 2) // r['tiles']} rows per tile)")
    print(f"  compile {r['compile_s'] * 1e3:.0f} ms; {r['iterations']} sweeps in {r['run_s']:.2f} s = "
          f"{r['points_per_s'] / 1e6:.0f} M points/s (plain numpy on one array: {r['numpy_s']:.2f} s)")
    verdict = "identical" if r["max_abs_diff"] == 0 else f"max |difference| {r['max_abs_diff']:.3g}"
    print(f"  check against numpy: {verdict}; mean temperature {r['result'].mean():.4f}")
    report: sp.Report = r["report"]
    sweep_cycles = report.cycles / r["iterations"]
    print(f"  on a real {r['target']}: {report.cycles:,} cycles = {report.seconds * 1e3:.3f} ms "
          f"({sweep_cycles:,.0f} cycles per sweep); busiest tile holds "
          f"{int(report.tile_memory.max()):,} of {report.data['memory']['bytes_per_tile']:,} bytes")
    print("  " + report.summary(top=4).replace("\n", "\n  "))
    if report_dir is not None:
        out = Path(report_dir)
        out.mkdir(parents=True, exist_ok=True)
        report.save_json(out / "heat.report.json")
        report.save_trace(out / "heat.perfetto.json")
        report.save_html(out / "heat.report.html")
        print(f"  wrote {out}/heat.report.json, heat.perfetto.json (open in ui.perfetto.dev), "
              "heat.report.html")
    return r


if __name__ == "__main__":
    main()
