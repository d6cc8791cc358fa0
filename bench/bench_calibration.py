"""Calibration: measure the cost model the way Jia et al. measured the Mk1 chip.

Each microbenchmark builds a small program, prices it with softipu's model of a GC200 (or GC2),
and prints the model's figure beside the published one (ipu-facts.md §1, §2, §5, §6) and their
ratio, one JSON line each. Run: ``.venv/bin/python bench/bench_calibration.py``.

Figures that the model is built from (local memory bandwidth comes from the 47.5 TB/s datasheet
figure, the exchange from 4 B/cycle/tile) are consistency checks: they show that the whole path
(program -> exchange plan -> step cost -> report) reproduces the figure, overheads included.
"""

from __future__ import annotations

import json

import numpy as np

import softipu as sp
from softipu import program as P
from softipu.codelets import BinaryOp, binary_op_codelet

GC200 = sp.targets.GC200


def emit(figure: str, model: float, published: float | None, unit: str, source: str, **extra) -> None:
    ratio = round(model / published, 4) if published else None
    print(json.dumps({"bench": "calibration", "figure": figure, "model": round(model, 4),
                      "published": published, "ratio": ratio, "unit": unit, "source": source,
                      **extra}), flush=True)


def price(graph: sp.Graph, program: P.Program) -> sp.Report:
    eng = sp.Engine(graph, [program], estimate_only=True)
    eng.run(0)
    return eng.report


def step_cycles(report: sp.Report, kind: str) -> dict[str, int]:
    return next(s for s in report.steps if s["kind"] == kind)


class MemoryRead(sp.MultiVertex):
    """Read every byte of a vector once (a sum): the local-memory probe.

    Cycles: the bytes at the tile's peak load rate, plus the poplibs supervisor overhead.
    """

    x = sp.Input(sp.float32)
    total = sp.Output(sp.float32, sp.SCALAR)

    @staticmethod
    def compute(x, total):
        total[...] = x.sum(axis=-1, keepdims=True)

    @staticmethod
    def cycles(x, total, target):
        return int(np.ceil(x * 4 / target.local_load_bytes_per_cycle)) + target.supervisor_overhead_cycles


def bench_elementwise() -> None:
    """poplibs' worked example: BinaryOp1D<ADD, half>, 1200 elements, one tile = 1067 cycles."""
    g = sp.Graph(GC200)
    a, b, out = (g.add_variable(sp.float16, (1200,), name=n) for n in "abc")
    for t in (a, b, out):
        g.set_tile_mapping(t, 0)
    cs = g.add_compute_set("add")
    g.add_vertex(cs, binary_op_codelet(BinaryOp.ADD, sp.float16), {"a": a, "b": b, "out": out}, tile=0)
    step = step_cycles(price(g, P.Execute(cs)), "compute")
    emit("BinaryOp1D<ADD,half> n=1200, one tile", step["compute_cycles"], 1067, "cycles",
         "poplibs estimator, ipu-facts §5 [V]")
    # The same on every tile with 6 x 1200 elements: aggregate elementwise throughput.
    g = sp.Graph(GC200)
    n = 6 * 1200
    a, b, out = (g.add_variable(sp.float16, (GC200.num_tiles, n), name=v) for v in "abc")
    tiles = np.arange(GC200.num_tiles)
    for t in (a, b, out):
        g.set_tile_mappings(t, tiles)
    cs = g.add_compute_set("add_all")
    g.add_vertices(cs, binary_op_codelet(BinaryOp.ADD, sp.float16), {"a": a, "b": b, "out": out}, tiles)
    report = price(g, P.Execute(cs))
    step = step_cycles(report, "compute")
    flops_per_s = report.flops / (step["compute_cycles"] / GC200.clock_hz)
    peak_vector = GC200.num_tiles * GC200.vector_width(2) * GC200.clock_hz  # one half add / lane / cycle
    emit("elementwise half ADD, all tiles (compute phase)", flops_per_s / 1e12, peak_vector / 1e12,
         "TFLOP/s", "vector peak: 1472 tiles x 4 halves x 1.33 GHz [D]; poplibs loop issues every "
         "3rd cycle per worker, 6 workers barrel-scheduled")


def bench_local_memory() -> None:
    """Every tile reads 512 KiB... of its own memory: aggregate local read bandwidth."""
    g = sp.Graph(GC200)
    n = 96 * 1024  # 384 KiB of float32 per tile
    x = g.add_variable(sp.float32, (GC200.num_tiles, n), name="x")
    s = g.add_variable(sp.float32, (GC200.num_tiles, 1), name="s")
    tiles = np.arange(GC200.num_tiles)
    g.set_tile_mappings(x, tiles)
    g.set_tile_mappings(s, tiles)
    cs = g.add_compute_set("read")
    g.add_vertices(cs, MemoryRead, {"x": x, "total": s}, tiles)
    step = step_cycles(price(g, P.Execute(cs)), "compute")
    bandwidth = x.numel * 4 / (step["compute_cycles"] / GC200.clock_hz)
    emit("aggregate local memory bandwidth, GC200", bandwidth / 1e12, 47.5, "TB/s",
         "GC200 datasheet [V], ipu-facts §1")


def _all_to_all(target: sp.Target, k: int) -> sp.Report:
    """Every tile holds one k-element chunk for every tile and each tile gathers its chunks."""
    tiles = target.num_tiles
    g = sp.Graph(target)
    data = g.add_variable(sp.float32, (tiles, tiles, k), name="data")  # [home tile, reader, k]
    own = g.add_variable(sp.float32, (tiles, tiles * k), name="own")
    got = g.add_variable(sp.float32, (tiles, tiles * k), name="gathered")
    for t in (data, own, got):
        g.set_tile_mappings(t, np.arange(tiles))
    cs = g.add_compute_set("all_to_all")
    fields = {"a": data.transpose(1, 0, 2).reshape(tiles, tiles * k), "b": own, "out": got}
    g.add_vertices(cs, binary_op_codelet(BinaryOp.ADD, sp.float32), fields, np.arange(tiles))
    return price(g, P.Execute(cs))


def bench_all_to_all() -> None:
    k = 8
    report = _all_to_all(GC200, k)
    step = step_cycles(report, "compute")
    moved = GC200.num_tiles * (GC200.num_tiles - 1) * k * 4
    seconds = step["exchange_cycles"] / GC200.clock_hz
    emit("all-to-all exchange, GC200 (32 B per tile pair)", moved / seconds / 1e12, 8.0, "TB/s",
         "'8 TB/s any pattern' [S], ipu-facts §1", bytes=moved, exchange_cycles=step["exchange_cycles"])


def bench_tile_to_tile() -> None:
    """One tile reads n bytes from a tile outside its supertile: fit latency and bandwidth."""
    sizes = [1 << s for s in range(6, 17)]
    cycles = []
    for nbytes in sizes:
        g = sp.Graph(GC200)
        src = g.add_variable(sp.float32, (nbytes // 4,), name="src")
        dst = g.add_variable(sp.float32, (nbytes // 4,), name="dst")
        g.set_tile_mapping(src, 2)
        g.set_tile_mapping(dst, 5)
        cycles.append(step_cycles(price(g, P.Copy(src, dst)), "copy")["exchange_cycles"])
    slope, intercept = np.polyfit(sizes, cycles, 1)
    emit("tile-to-tile bandwidth, partner idle", 1 / slope, 2 * GC200.exchange_bytes_per_cycle,
         "B/cycle", "2 x 4 B/cycle: a supertile's bus for one tile [U], ipu-facts §1")
    emit("tile-to-tile latency (fit intercept)", intercept, None, "cycles",
         "no published Mk2 figure; target.exchange_latency_cycles [U]")


def bench_sync() -> None:
    g = sp.Graph(GC200)
    emit("on-chip sync, GC200", step_cycles(price(g, P.Sync()), "sync")["sync_cycles"], None,
         "cycles", "no published figure; target.on_chip_sync_cycles [U]")
    for ipus in (2, 4, 16):
        target = GC200.with_num_ipus(ipus)
        g = sp.Graph(target)
        cycles = step_cycles(price(g, P.Sync(P.SyncType.EXTERNAL)), "sync")["sync_cycles"]
        hops = 1 + (ipus // 2) // 2
        published = int(np.ceil(15e-9 * GC200.clock_hz * hops * 2))
        emit(f"inter-IPU sync, {ipus} IPUs", cycles, published, "cycles",
             "poplibs test model 15 ns x hops x 2 [V], ipu-facts §2")


def bench_host() -> None:
    g = sp.Graph(GC200)
    n = 16 * 1024 * 1024  # 64 MiB of float32
    x = g.add_variable(sp.float32, (n,), name="x")
    sp.ops.map_linearly(g, x)
    stream = g.add_host_to_device_fifo("in", sp.float32, n)
    step = step_cycles(price(g, P.Copy(stream, x)), "host")
    bandwidth = n * 4 / (step["exchange_cycles"] / GC200.clock_hz)
    emit("host to device bandwidth, PCIe Gen4 x16", bandwidth / 1e9, 31.5, "GB/s",
         "PCIe Gen4 x16 one direction [D] ('64 GB/s' both ways [S]), ipu-facts §1")


if __name__ == "__main__":
    bench_elementwise()
    bench_local_memory()
    bench_all_to_all()
    bench_tile_to_tile()
    bench_sync()
    bench_host()
