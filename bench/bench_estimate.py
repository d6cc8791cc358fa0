"""Issue 10's estimate-only figures: host memory and time of pricing a program without its data.

Prints one JSON line per case, each measured in a fresh subprocess (so one case's memory never
shows in another's): ``peak_mb`` is tracemalloc's peak of the case (every numpy array softipu
allocates is traced), ``rss_mb`` the growth of the process's peak resident size (ru_maxrss, which
also counts what tracemalloc cannot see) in a second run without tracemalloc, ``seconds`` the
wall time of that second run. Each line carries its target and the issue's figure for the code
before this work (``before``); ``--baseline DIR`` also runs every case on the softipu source tree
in DIR (a checkout of an earlier commit) and prints it beside, measured in the same run.

Run: ``.venv/bin/python bench/bench_estimate.py`` (add ``--bert`` for BERT-Large fp16, about a
minute or two: export, lower and price).

* ``matmul_4096_fp16``: operands from create_matmul_input_lhs/rhs, ``matmul``, an estimate-only
  engine and one priced run on a GC200.
* ``transpose_copy_2048_fp32``: ``Copy(x.T, y)`` of two linearly mapped 2048 x 2048 float32
  variables, priced.
* ``broadcast_constant_4096sq``: a 4096 x 4096 float32 constant of one value, mapped and priced.
* ``default_names_8000`` / ``default_names_16000``: variables with the default name; linear
  means twice the names take about twice the time.
* ``transposed_cast_8192x1024_fp16``: ``ops.cast`` of a transposed 8192 x 1024 fp16 variable to
  fp32 (an fp16 training step's logits cast): every vertex reads a column, one exchange piece an
  element, which the compiler counts per address (``compiler/dense.py``) rather than sorting.
* ``bert_large_fp16`` (``--bert``): the BERT-Large model of bench_torch_bert.py, exported,
  lowered and priced estimate-only (tracemalloc starts after torch.export, so the figure is
  softipu's; ``rss_mb`` includes torch's model and export).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import tracemalloc

HERE = os.path.dirname(os.path.abspath(__file__))
TARGETS = {  # case: (peak MB target, seconds target, the "now" figure)
    "matmul_4096_fp16": (50, None, "~386 MiB"),
    "transpose_copy_2048_fp32": (20, 0.2, "~494 MiB, 2.5 s"),
    "broadcast_constant_4096sq": (20, None, "the broadcast array (64 MiB)"),
    "default_names_8000": (None, None, "quadratic, 6.4 s"),
    "default_names_16000": (None, None, "quadratic"),
    "bert_large_fp16": (500, None, "1,218 MB (tracemalloc, d016d14)"),
    "transposed_cast_8192x1024_fp16": (None, None, "25.2 s, 1,216 MB (56b4ed3, loaded machine)"),
}


def case_matmul() -> int:
    import softipu as sp
    from softipu import program as P
    from softipu.ops.matmul import create_matmul_input_lhs, create_matmul_input_rhs, matmul

    g = sp.Graph(sp.targets.GC200)
    a = create_matmul_input_lhs(g, sp.float16, (4096, 4096), (4096, 4096), name="a")
    b = create_matmul_input_rhs(g, sp.float16, (4096, 4096), (4096, 4096), name="b")
    prog = P.Sequence()
    matmul(g, a, b, prog)
    eng = sp.Engine(g, [prog], estimate_only=True)
    eng.run(0)
    return eng.log.cycles


def case_transpose() -> int:
    import softipu as sp
    from softipu import program as P

    g = sp.Graph(sp.targets.GC200)
    x = g.add_variable(sp.float32, (2048, 2048), name="x")
    y = g.add_variable(sp.float32, (2048, 2048), name="y")
    sp.ops.map_linearly(g, x)
    sp.ops.map_linearly(g, y)
    eng = sp.Engine(g, [P.Sequence([P.Copy(x.T, y)])], estimate_only=True)
    eng.run(0)
    return eng.log.cycles


def case_constant() -> int:
    import softipu as sp
    from softipu import program as P

    g = sp.Graph(sp.targets.GC200)
    c = g.add_constant(sp.float32, (4096, 4096), 1.5, name="c")
    y = g.add_variable(sp.float32, (4096, 4096), name="y")
    sp.ops.map_linearly(g, c)
    sp.ops.map_linearly(g, y)
    eng = sp.Engine(g, [P.Sequence([P.Copy(c, y)])], estimate_only=True,
                    options={"debug.allowOutOfMemory": True})
    eng.run(0)
    return eng.log.cycles


def case_transposed_cast() -> int:
    import softipu as sp
    from softipu import program as P

    g = sp.Graph(sp.targets.GC200)
    x = g.add_variable(sp.float16, (8192, 1024), name="x")
    sp.ops.map_linearly(g, x)
    prog = P.Sequence()
    sp.ops.cast(g, x.T, sp.float32, prog)  # each vertex reads a column: one piece an element
    eng = sp.Engine(g, [prog], estimate_only=True)
    eng.run(0)
    return eng.log.cycles


def case_names(n: int) -> int:
    import softipu as sp

    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    for _ in range(n):
        g.add_variable(sp.float32, (4,))
    return len(g.variables)


def case_bert(trace: bool) -> int:
    import torch

    import softipu as sp
    import softipu.torch as st
    from softipu.frontends.torch.export import export_program
    from softipu.frontends.torch.lower import lower_program

    sys.path.insert(0, HERE)
    import bench_torch_bert as bert

    torch.manual_seed(0)
    net = bert.Bert(24, 1024, 16).eval()
    opts = st.Options(target=sp.targets.GC200, precision="fp16")
    args = bert.inputs(2, 128)
    ep = export_program(net, args, {})
    if trace:
        tracemalloc.start()
    lowered = lower_program(ep, opts, ["ids", "types", "attention"])
    eng = sp.Engine(lowered.graph, list(lowered.programs), estimate_only=True,
                    options={"debug.allowOutOfMemory": True})
    for i in range(eng.num_programs):
        eng.run(i)
    return eng.log.cycles


CASES = {
    "matmul_4096_fp16": case_matmul,
    "transpose_copy_2048_fp32": case_transpose,
    "broadcast_constant_4096sq": case_constant,
    "default_names_8000": lambda: case_names(8000),
    "default_names_16000": lambda: case_names(16000),
    "transposed_cast_8192x1024_fp16": case_transposed_cast,
}


def child(name: str, trace: bool) -> None:
    """Run one case in this (fresh) process and print its figures as JSON."""
    import softipu  # noqa: F401 - imported before measuring: the import is not the case's cost

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if trace and name != "bert_large_fp16":
        tracemalloc.start()
    t = time.perf_counter()
    result = case_bert(trace) if name == "bert_large_fp16" else CASES[name]()
    seconds = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1] if trace else None
    rss = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024  # KiB on Linux
    print(json.dumps({"seconds": seconds, "rss_mb": rss, "peak_mb": None if peak is None else peak / 1e6,
                      "result": result}))


def measure(name: str, src: str | None) -> dict:
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    out = {}
    for trace in (True, False):
        proc = subprocess.run([sys.executable, __file__, "--child", name] + (["--trace"] if trace else []),
                              capture_output=True, text=True, env=env, check=False)
        if proc.returncode:
            return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        if trace:
            out["peak_mb"] = round(got["peak_mb"], 1)
            out["result"] = got["result"]
        else:
            out["seconds"] = round(got["seconds"], 3)
            out["rss_mb"] = round(got["rss_mb"], 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child")
    parser.add_argument("--trace", action="store_true")
    parser.add_argument("--bert", action="store_true")
    parser.add_argument("--baseline", help="a softipu checkout whose src/ is measured beside")
    parser.add_argument("--only", help="comma-separated case names")
    a = parser.parse_args()
    if a.child:
        child(a.child, a.trace)
        return
    names = list(CASES) + (["bert_large_fp16"] if a.bert else [])
    if a.only:
        names = [n for n in names if n in a.only.split(",")]
    for name in names:
        peak_target, seconds_target, before = TARGETS[name]
        line = {"bench": "estimate_only", "case": name, **measure(name, None),
                "peak_mb_target": peak_target, "seconds_target": seconds_target, "before": before}
        if a.baseline:
            line["baseline"] = measure(name, os.path.join(a.baseline, "src"))
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
