"""Issue 19's fidelity table: whole models priced estimate-only as one real IPU runs them.

For each configuration (model, precision, batch, sequence) a fresh subprocess exports the model
(``fidelity_models.build``: ResNet-50, ViT-B/16, BERT-base, BERT-Large, random weights), lowers it,
compiles an estimate-only engine and prices one inference step (``eng.run`` of the load and step
programs). Each line prints:

* ``items_per_s``: batch / (modeled cycles of the step / the target's clock) — the modeled
  throughput of one IPU (the step's host streams included, as the engine prices them);
* ``fits``, ``max_tile_kib``, ``mean_tile_kib``, ``worst_tile`` and its categories
  (``worst_kib``: KiB by memory category on the fullest tile);
* ``compile_s`` (export + lower + compile + price, wall, with Python's cyclic collector held off
  as softipu.torch holds it off over a first call) with its ``stages_s``; ``cpu_s`` and
  ``stages_cpu_s`` the same in this process's CPU seconds (steadier on a loaded host); ``rss_mb``:
  the growth of the process's peak resident size over the case (ru_maxrss);
* ``partials``: the type fp16 matmuls and convolutions accumulate in, as the published run set it
  (``PARTIALS``; ``--partials`` overrides);
* ``rewrites``: what the frontend graph passes rewrote (batch norms folded, ...), where any;
* ``peak`` (``--explain``): what the fullest tile's ``not_always_live`` is at its peak point —
  the step, its receive buffers and the largest intermediates live there;
* ``outlining``: whether repeated layers were priced as PopART outlines them (engine option
  ``opt.enableOutlining``, on unless ``--no-outlining``: their code held once, each call holding
  a copy of its weights).

* ``available_memory_proportion``: the proportion its matmuls and convolutions planned with.
  Without ``--amp`` each configuration is priced first at its published run's setting (``AMP``)
  or else PopTorch's default 0.6; where that does not fit, at the next lower proportion of
  ``AMP_STEPS`` until one fits: what IPU users do when a model runs out of tile memory
  (shared/ipu-facts.md, pain point 5, "hand-tuning availableMemoryProportion"; Graphcore's own
  configurations do it too, e.g. the BERT-base micro-batch 80 run in ``AMP``): less temporary
  memory per matmul, at some cost in cycles. ``amp_tried`` lists the proportions that did not fit.

Then a table. Run: ``.venv/bin/python bench/bench_fidelity.py`` (all configurations, some minutes)
or ``--only resnet50`` / ``--configs resnet50:fp16:1,resnet50:fp16:32`` / ``--quick`` (a small
subset). ``--baseline DIR`` prices each configuration also with the softipu source tree in DIR
(an earlier checkout), measured in the same run, and prints it beside.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

# (model, precision, batch, seq): the configurations of issue 19 (GC200/C600 inference figures).
CONFIGS = [
    ("resnet50", "fp16", b, 0) for b in (1, 4, 16, 32, 64, 90)
] + [
    ("resnet50", "fp32", b, 0) for b in (1, 8, 16)
] + [
    ("bert_base", "fp16", 16, 128), ("bert_base", "fp16", 8, 256),
    ("bert_large", "fp16", 18, 128), ("bert_large", "fp16", 4, 256),
    # Graphcore's own one-IPU SQuAD inference runs (README_Benchmarks.md, see AMP)
    ("bert_large", "fp16", 3, 128), ("bert_base", "fp16", 80, 128),
    ("vit_b16", "fp16", 8, 0),
]
QUICK = [("resnet50", "fp16", 1, 0), ("resnet50", "fp16", 16, 0), ("bert_base", "fp16", 16, 128)]

# The partials type each model's published run used. Graphcore's ResNet-50 inference benchmark on
# one IPU (graphcore/examples applications/pytorch/cnns/inference/configs.yml, ``resnet50-mk2``:
# precision "16.16", ``half_partial: true``, batch 90; README_Benchmarks.md runs it at batch 1 to
# 90) accumulates its fp16 convolutions and matmuls in half; so do Graphcore's one-IPU BERT SQuAD
# inference runs at sequence 128 (applications/popart/bert/configs/mk2/squad_large_128_inf.json and
# squad_base_128_inf.json: ``enable_half_partials: true``, all layers on one IPU, outlining on).
# Others (ViT-B/16: no published setting found here): PopTorch's default, float.
PARTIALS = {("resnet50", "fp16"): "half", ("bert_base", "fp16"): "half", ("bert_large", "fp16"): "half"}

# availableMemoryProportion of the published runs that set one: Graphcore's one-IPU BERT-base SQuAD
# inference at micro-batch 80 (applications/popart/bert/README_Benchmarks.md: "for
# micro-batch-size = 80, also set --available-memory-proportion 0.55"). Its BERT-Large runs at
# micro-batch 1 to 3 keep the default (squad_large_128_inf.json:
# "use_default_available_memory_proportion": true).
AMP = {("bert_base", "fp16", 80, 128): 0.55}
DEFAULT_AMP = 0.6  # PopTorch's and poplin's default availableMemoryProportion
# The lower proportions tried, in turn, where a configuration does not fit (see the docstring).
AMP_STEPS = (0.45, 0.3, 0.2, 0.15, 0.1)


def target():
    import softipu as sp  # noqa: PLC0415

    return getattr(sp.targets, "C600", sp.targets.GC200)


def child(model: str, precision: str, batch: int, seq: int, outline: bool = True,
          amp: float | None = None, partials: str | None = None, explain: bool = False) -> dict:
    """Price one configuration in this (fresh) process."""
    import numpy as np  # noqa: PLC0415
    import torch  # noqa: PLC0415

    import softipu as sp  # noqa: PLC0415
    import softipu.torch as st  # noqa: PLC0415
    from softipu.frontends.torch.export import export_program  # noqa: PLC0415
    from softipu.frontends.torch.lower import lower_program  # noqa: PLC0415

    sys.path.insert(0, HERE)
    import fidelity_models  # noqa: PLC0415

    tgt = target()
    net, args, names = fidelity_models.build(model, batch, seq or 128)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    stages, cpu = {}, {}
    # The stages run as softipu.torch runs a model's first call (frontends/torch/runtime.py, with
    # engine.collector_paused): Python's cyclic collector held off over them, its collection of the
    # millions of objects they make and keep owed until after (BERT-Large fp16 b18 amp 0.1: 3.4 of
    # 19 CPU s went to 13 full collections walking them).
    with _collector_paused():
        t0 = t = time.perf_counter()
        c0 = c = time.process_time()
        with torch.no_grad():
            ep = export_program(net, args, {})
        stages["export"], cpu["export"] = time.perf_counter() - t, time.process_time() - c
        t, c = time.perf_counter(), time.process_time()
        partials = partials or PARTIALS.get((model, precision), "float")
        opts = st.Options(target=tgt, precision=precision, partials_type=partials,
                          **({} if amp is None else {"available_memory_proportion": amp}))
        lowered = lower_program(ep, opts, names)
        stages["lower"], cpu["lower"] = time.perf_counter() - t, time.process_time() - c
        t, c = time.perf_counter(), time.process_time()
        # PopTorch compiles through PopART, whose outlining is on by default (compiler/outline.py);
        # a --baseline checkout older than the option prices without it.
        outline = outline and "opt.enableOutlining" in sp.EngineOptions.KEYS
        options = {"debug.allowOutOfMemory": True} | ({"opt.enableOutlining": True} if outline else {})
        eng = sp.Engine(lowered.graph, list(lowered.programs), estimate_only=True, options=options)
        stages["compile"], cpu["compile"] = time.perf_counter() - t, time.process_time() - c
        t, c = time.perf_counter(), time.process_time()
        eng.run(0)
        before = eng.log.cycles
        eng.run(1)
        cycles = eng.log.cycles - before
        stages["price"], cpu["price"] = time.perf_counter() - t, time.process_time() - c
        seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    rss = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    report = eng.report
    fit = report.fit()
    mem = report.tile_memory
    rewrites = getattr(lowered, "rewrites", None)
    return {
        "model": model, "precision": precision, "batch": batch, "seq": seq or None,
        "target": tgt.name, "outlining": outline, "partials": partials, "cycles": int(cycles),
        **({} if amp is None else {"available_memory_proportion": amp}),
        "items_per_s": round(batch * tgt.clock_hz / max(cycles, 1), 1),
        "fits": bool(fit["fits"]), "max_tile_kib": round(int(mem.max()) / 1024, 1),
        "mean_tile_kib": round(float(np.mean(mem)) / 1024, 1),
        "worst_tile": fit["worst_tile"],
        "worst_kib": {k: round(v / 1024, 1) for k, v in sorted(fit["worst_tile_categories"].items(),
                                                                 key=lambda kv: -kv[1])},
        "compile_s": round(seconds, 2), "stages_s": {k: round(v, 2) for k, v in stages.items()},
        "cpu_s": round(cpu_seconds, 2), "stages_cpu_s": {k: round(v, 2) for k, v in cpu.items()},
        "rss_mb": round(rss, 1),
        **({"rewrites": len(rewrites), "rewrite_example": rewrites[0]} if rewrites else {}),
        **({"peak": peak_on_tile(eng.executable, fit["worst_tile"])} if explain else {}),
    }


@contextlib.contextmanager
def _collector_paused():
    """Python's cyclic collector off meanwhile (as softipu.engine.collector_paused; here so that
    a --baseline checkout is timed the same way)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def peak_on_tile(exe, tile: int, top: int = 8) -> dict:
    """What the ``not_always_live`` category of one tile is: the program point where its live
    intermediates and that step's receive buffers (the memory plan's two kinds of events,
    compiler/memory.py) add up most, the step there, and the largest variables live then. The
    plan's third kind, each outlined call's copy of its weights, is left out: with outlining the
    category can exceed ``kib`` by that copy (BERT-Large b18: 291.5 against 285.8 KiB)."""
    import numpy as np  # noqa: PLC0415

    mem = exe.memory
    on = (mem.var_tiles == tile) & ~mem.always_live[mem.var_ids]
    on &= mem.var_first[mem.var_ids] >= 0
    v, b = mem.var_ids[on], mem.var_bytes[on]
    points = mem.point_steps.size
    live = np.zeros(points + 1, np.int64)
    np.add.at(live, mem.var_first[v], b)
    np.add.at(live, mem.var_last[v] + 1, -b)
    live = np.cumsum(live)[:points]
    recv = np.zeros(points, np.int64)
    for p in np.flatnonzero(mem.point_steps >= 0).tolist():
        step = exe.steps[mem.point_steps[p]]
        hit = np.flatnonzero(step.recv_tiles == tile)
        recv[p] = int(step.recv_tile_bytes[hit[0]]) if hit.size else 0
    point = int(np.argmax(live + recv))
    at = (mem.var_first[v] <= point) & (mem.var_last[v] >= point)
    order = np.argsort(-b[at], kind="stable")[:top]
    step = int(mem.point_steps[point])
    return {"kib": round(int(live[point] + recv[point]) / 1024, 1),
            "step": exe.steps[step].name if step >= 0 else None,
            "receive_kib": round(int(recv[point]) / 1024, 1),
            "variables_kib": {exe.variables[int(i)].name: round(int(n) / 1024, 1)
                              for i, n in zip(v[at][order], b[at][order], strict=True)}}


def measure(config: tuple, src: str | None, timeout: float, outline: bool = True,
            amp: float | None = None, partials: str | None = None, explain: bool = False) -> dict:
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, __file__, "--child", ":".join(map(str, config))]
    cmd += ([] if outline else ["--no-outlining"]) + ([] if amp is None else ["--amp", str(amp)])
    cmd += [] if partials is None else ["--partials", partials]
    cmd += ["--explain"] if explain else []
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if proc.returncode:
        lines = proc.stderr.strip().splitlines()
        return {"error": lines[-1] if lines else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def fitting(config: tuple, src: str | None, timeout: float, outline: bool = True,
            amp: float | None = None, partials: str | None = None, explain: bool = False) -> dict:
    """:func:`measure` at ``amp``; without one, at the published or default proportion and then
    at each lower step of ``AMP_STEPS`` until the configuration fits (see the module docstring)."""
    if amp is not None:
        return measure(config, src, timeout, outline, amp, partials, explain)
    first = AMP.get(config, DEFAULT_AMP)
    tried: list[float] = []
    for step in (first, *(x for x in AMP_STEPS if x < first)):
        row = measure(config, src, timeout, outline, step, partials, explain)
        if "error" in row or row["fits"]:
            break
        tried.append(step)
    return row | ({"amp_tried": tried[:-1] if not row.get("fits", True) else tried} if tried else {})


def parse(text: str) -> tuple:
    model, precision, batch, *rest = text.split(":")
    return model, precision, int(batch), int(rest[0]) if rest else (128 if model.startswith("bert") else 0)


def table(rows: list[dict]) -> str:
    head = (f"{'model':<11}{'prec':<5}{'b':>4}{'seq':>5}{'items/s':>10}{'fits':>6}{'max KiB':>9}"
            f"{'mean KiB':>9}{'amp':>6}{'compile s':>10}{'rss MB':>8}  fullest tile (KiB)")
    out = [head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            out.append(f"{r.get('model', '?'):<11}{r.get('precision', ''):<5}{r.get('batch', 0):>4}  "
                       f"error: {r['error']}")
            continue
        cats = ", ".join(f"{k} {v:.0f}" for k, v in list(r["worst_kib"].items())[:4])
        out.append(f"{r['model']:<11}{r['precision']:<5}{r['batch']:>4}{r['seq'] or '':>5}"
                   f"{r['items_per_s']:>10.1f}{'yes' if r['fits'] else 'NO':>6}{r['max_tile_kib']:>9.0f}"
                   f"{r['mean_tile_kib']:>9.0f}{r.get('available_memory_proportion', DEFAULT_AMP):>6.2f}"
                   f"{r['compile_s']:>10.1f}{r['rss_mb']:>8.0f}  {cats}")
        if "peak" in r:  # --explain: what the fullest tile's not_always_live peak holds
            p = r["peak"]
            held = ", ".join(f"{k} {v:.0f}" for k, v in list(p["variables_kib"].items())[:4])
            out.append(f"{'':>9}tile {r['worst_tile']}: not_always_live peak {p['kib']:.0f} KiB at "
                       f"{p['step']}: receive {p['receive_kib']:.0f}, {held}")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child")
    parser.add_argument("--only", help="model names, comma-separated")
    parser.add_argument("--configs", help="model:precision:batch[:seq], comma-separated")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--baseline", help="a softipu checkout whose src/ is measured beside")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--no-outlining", action="store_true",
                        help="price without PopART's outlining of repeated layers (opt.enableOutlining)")
    parser.add_argument("--amp", type=float, help="availableMemoryProportion for every matmul (default: "
                        "the published run's or PopTorch's 0.6, then lower steps until it fits)")
    parser.add_argument("--partials", choices=("float", "half"),
                        help="partials type of every configuration (default: each model's published "
                        "run, PARTIALS)")
    parser.add_argument("--explain", action="store_true",
                        help="also print what the fullest tile's not_always_live peak holds (peak_on_tile)")
    a = parser.parse_args()
    if a.child:
        print(json.dumps(child(*parse(a.child), outline=not a.no_outlining, amp=a.amp,
                               partials=a.partials, explain=a.explain)))
        return
    configs = [parse(c) for c in a.configs.split(",")] if a.configs else (QUICK if a.quick else CONFIGS)
    if a.only:
        configs = [c for c in configs if c[0] in a.only.split(",")]
    rows = []
    for config in configs:
        row = {"bench": "fidelity", **fitting(config, None, a.timeout, not a.no_outlining, a.amp,
                                              a.partials, a.explain)}
        row.setdefault("model", config[0])
        row.setdefault("precision", config[1])
        row.setdefault("batch", config[2])
        if a.baseline:
            row["baseline"] = fitting(config, os.path.join(a.baseline, "src"), a.timeout, True, a.amp,
                                      a.partials)
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(table(rows), flush=True)


if __name__ == "__main__":
    main()
