"""Issue 4's matmul numbers: planner quality, planning time, and simulation speed against numpy.

Prints one JSON line per figure. Run: ``.venv/bin/python bench/bench_ops_matmul.py`` (add
``--quick`` to skip the 8192 estimates).

* ``planner_efficiency``: a GC200 matmul with inputs laid out by ``create_matmul_input_lhs/rhs``,
  compiled and priced (estimate-only engine): modeled flops / (cycles x the AMP peak of the whole
  chip). Where the data does not fit beside the default 0.6 of temporaries, the
  ``availableMemoryProportion`` is lowered, then (fp16) half partials are tried, until it does
  (both reported); where nothing fits, the planner's own estimate is reported.
* ``modeled_efficiency`` (``--efficiency`` prints only these): the plan's modeled % of the AMP peak
  per shape, squares and skinny ones (N <= 64 with large M x K), plan only, so it is quick. The
  figures are the model's, not hardware's: issue 10 asks for fidelity (within 10% of hardware),
  not efficiency.
* ``planning_ms``: one plan (both orientations considered) from a cold cache.
* ``matmul_wall``: engine.run of a float32 2048^3 matmul on a GC200 against numpy's float32
  matmul of the same shapes, best of several interleaved runs; beside it the same executable run
  compute set by compute set (``per_group_s``: the fast engine's matmul chains switched off).
* ``bert_matmul``: (``--bert``) the float32 matmuls of one BERT-base layer (hidden 768, 12 heads,
  batch 2 x seq 128) on a GC200, built as the PyTorch frontend builds them (weights from
  ``create_matmul_input_rhs``, activations mapped linearly, attention operands as views of the
  QKV product): vertex groups per compute set (each a Python-level bulk call), and engine.run
  against numpy and torch of the same shapes, best of interleaved blocks.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

import softipu as sp
from softipu import program as P
from softipu.engine import chains
from softipu.ops.common import OpError
from softipu.ops.mapping import map_linearly
from softipu.ops.matmul import create_matmul_input_lhs, create_matmul_input_rhs, matmul, plan_matmul
from softipu.ops.planner import _plan_cached

GC200 = sp.targets.GC200
SQUARES = (256, 512, 1024, 2048, 4096, 8192)
SKEWED = ((16, 4096, 4096), (4096, 16, 4096), (4096, 4096, 16))
# Skinny products (N <= 64, large M x K), where hardware is furthest from the model (issue 10).
SKINNY = ((4096, 4096, 16), (4096, 4096, 64), (8192, 4096, 32), (16384, 1024, 64), (2048, 2048, 8))


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


def modeled_efficiency() -> None:
    """The plan's modeled efficiency per shape (what the cost model predicts for a GC200)."""
    shapes = list(dict.fromkeys([(s, s, s) for s in SQUARES if s <= 4096] + list(SKEWED) + list(SKINNY)))
    for dtype in (sp.float16, sp.float32):
        for m, k, n in shapes:
            p = plan_matmul(GC200, dtype, (m, k), (k, n))
            emit(figure="modeled_efficiency", dtype=dtype.name, m=m, k=k, n=n,
                 efficiency_pct=round(100 * p.efficiency, 1), cycles=p.cycles, amp=p.amp_cycles,
                 exchange=p.exchange_cycles, reduce=p.reduce_cycles, sync=p.sync_cycles,
                 splits=list(p.splits), k_serial=p.k_serial, fits=p.fits)


def planning_ms(dtype, m, k, n) -> None:
    best = float("inf")
    for _ in range(5):
        _plan_cached.cache_clear()
        t0 = time.perf_counter()
        plan_matmul(GC200, dtype, (m, k), (k, n))
        best = min(best, time.perf_counter() - t0)
    emit(figure="planning_ms", dtype=dtype.name, m=m, k=k, n=n, ms=round(1000 * best, 2), limit_ms=50)


def matmul_wall(size: int = 2048, repeats: int = 7) -> None:
    """``softipu_s``: the fast engine as it runs (the matmul's AMP steps and partials reduction as
    whole GEMMs, engine/chains.py); ``per_group_s``: the same executable run compute set by
    compute set (chains off), beside numpy's matmul, all best of interleaved blocks."""
    g, a, b, c, prog = build(sp.float32, size, size, size)
    rng = np.random.default_rng(0)
    av = rng.standard_normal((size, size), np.float32)
    bv = rng.standard_normal((size, size), np.float32)
    engines = []
    for fuse in (True, False):
        chains.FUSE_MATMULS = fuse
        eng = sp.Engine(g, [prog])
        eng.write_tensor(a, av)
        eng.write_tensor(b, bv)
        eng.run(0)  # first touch of device memory
        engines.append(eng)
    chains.FUSE_MATMULS = True
    # Blocks of runs, not alternating ones: after a multi-threaded call OpenBLAS's threads spin
    # for a while, which would slow whichever of the two runs right after numpy.
    times: list[list[float]] = [[], [], []]
    runs = (lambda: av @ bv, lambda: engines[0].run(0), lambda: engines[1].run(0))
    for _ in range(2):
        for which, fn in enumerate(runs):
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                times[which].append(time.perf_counter() - t0)
            time.sleep(0.5)
    want = av @ bv
    for eng in engines:
        assert np.allclose(eng.read_tensor(c), want, rtol=1e-3, atol=1e-2)
    theirs, ours, per_group = (min(t) for t in times)
    emit(figure="matmul_wall", dtype="float32", m=size, k=size, n=size,
         softipu_s=round(ours, 4), numpy_s=round(theirs, 4), ratio=round(ours / theirs, 2),
         per_group_s=round(per_group, 4), per_group_ratio=round(per_group / theirs, 2),
         softipu_median_s=round(float(np.median(times[1])), 4),
         numpy_median_s=round(float(np.median(times[0])), 4), limit_ratio=1.2)


def _activation(g, shape, name):
    t = g.add_variable(sp.float32, shape, name=name)
    map_linearly(g, t, grain_size=2, min_elements_per_tile=16)
    return t


def bert_cases(g):
    """(label, program, inputs, output, numpy operands from input values) per BERT-layer matmul."""
    cases = []
    x, h = _activation(g, (256, 768), "x"), _activation(g, (256, 3072), "h")
    for n, k, src in ((2304, 768, x), (768, 768, x), (3072, 768, x), (768, 3072, h)):
        w = create_matmul_input_rhs(g, sp.float32, (256, k), (k, n), name=f"w{n}x{k}")
        prog = P.Sequence()
        c = matmul(g, src, w, prog, name=f"linear{k}x{n}")
        cases.append((f"linear 256x{k} . {k}x{n}", prog, (src, w), c,
                      lambda v, s=src, w=w: (v[id(s)], v[id(w)])))
    qkv = _activation(g, (256, 2304), "qkv")
    heads = qkv.reshape(2, 128, 3, 12, 64).transpose(2, 0, 3, 1, 4)  # (3, batch, head, seq, 64)

    def head(v, which):
        return np.ascontiguousarray(v[id(qkv)].reshape(2, 128, 3, 12, 64).transpose(2, 0, 3, 1, 4)[which]
                                    .reshape(24, 128, 64))

    prog = P.Sequence()
    s = matmul(g, heads[0].reshape(24, 128, 64), heads[1].reshape(24, 128, 64).transpose(0, 2, 1), prog,
               name="scores")
    cases.append(("bmm 24x128x64 . 24x64x128", prog, (qkv,), s,
                  lambda v: (head(v, 0), np.ascontiguousarray(head(v, 1).transpose(0, 2, 1)))))
    probs = _activation(g, (24, 128, 128), "probs")
    prog = P.Sequence()
    o = matmul(g, probs, heads[2].reshape(24, 128, 64), prog, name="context")
    cases.append(("bmm 24x128x128 . 24x128x64", prog, (probs, qkv), o, lambda v: (v[id(probs)], head(v, 2))))
    return cases


def bert_matmul(repeats: int = 15) -> None:
    import torch

    g = sp.Graph(GC200)
    cases = bert_cases(g)
    eng = sp.Engine(g, [c[1] for c in cases])
    rng = np.random.default_rng(0)
    values = {}
    for _, _, inputs, _, _ in cases:
        for t in inputs:
            if id(t) not in values:
                values[id(t)] = rng.standard_normal(t.shape).astype(np.float32)
                eng.write_tensor(t, values[id(t)])
    groups = {cs.compute_set.name: len(cs.groups) for cs in eng.executable.compute_sets.values()}
    for index, (label, _, _, out, operands) in enumerate(cases):
        a, b = operands(values)
        eng.run(index)
        assert np.allclose(eng.read_tensor(out), a @ b, rtol=1e-4, atol=1e-3), label
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        best = [float("inf")] * 3
        for _ in range(3):  # blocks: OpenBLAS's threads spin for a while after numpy's call
            runs = (lambda i=index: eng.run(i), lambda a=a, b=b: a @ b, lambda a=ta, b=tb: a @ b)
            for which, fn in enumerate(runs):
                for _ in range(repeats // 3):
                    t0 = time.perf_counter()
                    fn()
                    best[which] = min(best[which], time.perf_counter() - t0)
                time.sleep(0.2)
        name = out.name.split("/")[0]
        emit(figure="bert_matmul", case=label, softipu_ms=round(1e3 * best[0], 2),
             numpy_ms=round(1e3 * best[1], 2), torch_ms=round(1e3 * best[2], 2),
             vertex_groups={k.split("/")[-1]: v for k, v in groups.items() if k.startswith(name + "/")})


def main() -> None:
    quick = "--quick" in sys.argv
    if "--bert" in sys.argv:
        bert_matmul()
        return
    modeled_efficiency()
    if "--efficiency" in sys.argv:
        return
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
