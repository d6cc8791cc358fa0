"""Issue 4's convolution numbers: every distinct convolution of ResNet-50 (batch 8, 224 x 224,
torchvision's v1.5 layout with the stride on the 3x3) planned, compiled, fitted and run on a GC200.

Prints one JSON line per layer shape (how often ResNet-50 uses it, modeled cycles and wall time
of one run, planning time, whether it fits) and a total line weighting each layer by its count.
Run: ``.venv/bin/python bench/bench_ops_conv.py [--dtype float32] [--estimate]``; the wall time
on a 2-core host is honest and large (fp16 products run in fp32 on the host).
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

import softipu as sp
from softipu import program as P
from softipu.ops.conv import conv
from softipu.ops.planner import _plan_cached

BATCH = 8

# (name, in channels, out channels, kernel, stride, padding, input size, uses in ResNet-50)
RESNET50_CONVS = (
    ("conv1 7x7/2", 3, 64, 7, 2, 3, 224, 1),
    ("layer1 1x1 64->64", 64, 64, 1, 1, 0, 56, 1),
    ("layer1 3x3 64->64", 64, 64, 3, 1, 1, 56, 3),
    ("layer1 1x1 64->256", 64, 256, 1, 1, 0, 56, 4),  # 3 blocks and the downsample (stride 1)
    ("layer1 1x1 256->64", 256, 64, 1, 1, 0, 56, 2),
    ("layer2 1x1 256->128", 256, 128, 1, 1, 0, 56, 1),
    ("layer2 3x3/2 128->128", 128, 128, 3, 2, 1, 56, 1),
    ("layer2 1x1 128->512", 128, 512, 1, 1, 0, 28, 4),
    ("layer2 downsample 1x1/2 256->512", 256, 512, 1, 2, 0, 56, 1),
    ("layer2 1x1 512->128", 512, 128, 1, 1, 0, 28, 3),
    ("layer2 3x3 128->128", 128, 128, 3, 1, 1, 28, 3),
    ("layer3 1x1 512->256", 512, 256, 1, 1, 0, 28, 1),
    ("layer3 3x3/2 256->256", 256, 256, 3, 2, 1, 28, 1),
    ("layer3 1x1 256->1024", 256, 1024, 1, 1, 0, 14, 6),
    ("layer3 downsample 1x1/2 512->1024", 512, 1024, 1, 2, 0, 28, 1),
    ("layer3 1x1 1024->256", 1024, 256, 1, 1, 0, 14, 5),
    ("layer3 3x3 256->256", 256, 256, 3, 1, 1, 14, 5),
    ("layer4 1x1 1024->512", 1024, 512, 1, 1, 0, 14, 1),
    ("layer4 3x3/2 512->512", 512, 512, 3, 2, 1, 14, 1),
    ("layer4 1x1 512->2048", 512, 2048, 1, 1, 0, 7, 3),
    ("layer4 downsample 1x1/2 1024->2048", 1024, 2048, 1, 2, 0, 14, 1),
    ("layer4 1x1 2048->512", 2048, 512, 1, 1, 0, 7, 2),
    ("layer4 3x3 512->512", 512, 512, 3, 1, 1, 7, 2),
)


def emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


def run_layer(name, cin, cout, k, stride, pad, size, uses, dtype, estimate: bool) -> dict:
    g = sp.Graph(sp.targets.GC200)
    x = g.add_variable(dtype, (BATCH, cin, size, size), name="x")
    w = g.add_variable(dtype, (cout, cin, k, k), name="w")
    sp.ops.map_linearly(g, x)
    sp.ops.map_linearly(g, w)
    prog = P.Sequence()
    _plan_cached.cache_clear()
    t0 = time.perf_counter()
    y = conv(g, x, w, prog, stride=stride, padding=pad, name=name)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    eng = sp.Engine(g, [prog], {"debug.allowOutOfMemory": True}, estimate_only=estimate)
    compile_s = time.perf_counter() - t0
    wall = None
    if not estimate:
        rng = np.random.default_rng(0)
        eng.write_tensor(x, rng.standard_normal(x.shape).astype(dtype.numpy))
        eng.write_tensor(w, (0.1 * rng.standard_normal(w.shape)).astype(dtype.numpy))
        eng.run(0)  # first touch of device memory
        t0 = time.perf_counter()
        eng.run(0)
        wall = time.perf_counter() - t0
    else:
        eng.run(0)
    report = eng.report
    cycles = report.cycles // (1 if estimate else 2)
    macs = BATCH * y.shape[2] * y.shape[3] * cout * cin * k * k
    peak = g.target.amp_macs_per_cycle_fp16 if dtype is sp.float16 else g.target.amp_macs_per_cycle_fp32
    fields = dict(figure="resnet50_conv", layer=name, uses=uses, dtype=dtype.name,
                  input=list(x.shape), weights=list(w.shape), output=list(y.shape), cycles=cycles,
                  modeled_us=round(1e6 * g.target.seconds(cycles), 1),
                  amp_efficiency_pct=round(100 * macs / (cycles * peak * g.target.num_tiles), 1),
                  fits=bool(report.fits), peak_tile_bytes=int(report.tile_memory.max()),
                  plan_and_build_s=round(build_s, 3), compile_s=round(compile_s, 2),
                  wall_s=None if wall is None else round(wall, 3))
    emit(**fields)
    return fields


def main() -> None:
    dtype = sp.float32 if "float32" in sys.argv else sp.float16
    estimate = "--estimate" in sys.argv
    rows = [run_layer(*layer, dtype=dtype, estimate=estimate) for layer in RESNET50_CONVS]
    total_cycles = sum(r["cycles"] * r["uses"] for r in rows)
    emit(figure="resnet50_conv_total", dtype=dtype.name, batch=BATCH, layers=sum(r["uses"] for r in rows),
         distinct_shapes=len(rows), all_fit=all(r["fits"] for r in rows), cycles=total_cycles,
         modeled_ms=round(1e3 * sp.targets.GC200.seconds(total_cycles), 3),
         wall_s=None if estimate else round(sum(r["wall_s"] * r["uses"] for r in rows), 2),
         max_plan_and_build_s=max(r["plan_and_build_s"] for r in rows))


if __name__ == "__main__":
    main()
