"""Issue 5's BERT numbers: first-call time, later-call time against eager PyTorch, and fit.

Prints one JSON line per figure. Run: ``.venv/bin/python bench/bench_torch_bert.py`` for both
sizes, ``--base`` or ``--large`` for one, ``--layers N`` / ``--hidden H`` for a smaller model.
``--baseline DIR`` measures each figure in fresh processes, alternately on this tree and on the
softipu source tree in DIR (a checkout of an earlier commit), ``--repeat`` times each, and prints
each figure beside its baseline with the spread (``first_call_s`` / ``compile_s`` and the stages
in wall seconds, and ``*_cpu_s`` in CPU seconds, steadier on a busy machine).

* ``bert_base``: BERT-base shape (12 layers, hidden 768, 12 heads, seq 128, batch 2), fp32, on one
  GC200: the first call (export + lower + compile + load + run) and the best of later calls, each
  beside PyTorch eager on the same module and inputs in this process; the largest relative error.
* ``bert_large``: BERT-Large shape (24 layers, hidden 1024, 16 heads) in fp16: compile time
  (``.compile`` without running) and what the report says about fitting one GC200
  (:meth:`softipu.Report.fit`, and the memory lines of its summary).

The model is built in code with random weights (no downloads): word/position/type embeddings,
post-LN encoder layers with an additive attention mask and erf GELU, a tanh pooler.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

import torch

import softipu as sp
import softipu.torch as st


def emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


class Layer(torch.nn.Module):
    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = torch.nn.Linear(hidden, 3 * hidden)
        self.out = torch.nn.Linear(hidden, hidden)
        self.norm1 = torch.nn.LayerNorm(hidden, eps=1e-12)
        self.up = torch.nn.Linear(hidden, 4 * hidden)
        self.down = torch.nn.Linear(4 * hidden, hidden)
        self.norm2 = torch.nn.LayerNorm(hidden, eps=1e-12)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, s, h = x.shape
        d = h // self.heads
        q, k, v = self.qkv(x).view(b, s, 3, self.heads, d).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(d) + mask
        ctx = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, s, h)
        x = self.norm1(x + self.out(ctx))
        return self.norm2(x + self.down(torch.nn.functional.gelu(self.up(x))))


class Bert(torch.nn.Module):
    def __init__(self, layers: int, hidden: int, heads: int, vocab: int = 30522, positions: int = 512):
        super().__init__()
        self.words = torch.nn.Embedding(vocab, hidden)
        self.positions = torch.nn.Embedding(positions, hidden)
        self.types = torch.nn.Embedding(2, hidden)
        self.norm = torch.nn.LayerNorm(hidden, eps=1e-12)
        self.layers = torch.nn.ModuleList(Layer(hidden, heads) for _ in range(layers))
        self.pooler = torch.nn.Linear(hidden, hidden)

    def forward(self, ids: torch.Tensor, types: torch.Tensor, attention: torch.Tensor):
        pos = torch.arange(ids.shape[1])
        x = self.norm(self.words(ids) + self.positions(pos) + self.types(types))
        mask = (1.0 - attention[:, None, None, :].to(x.dtype)) * -10000.0
        for layer in self.layers:
            x = layer(x, mask)
        return {"last_hidden_state": x, "pooled": torch.tanh(self.pooler(x[:, 0]))}


def inputs(batch: int, seq: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 30522, (batch, seq), generator=g)
    types = torch.zeros(batch, seq, dtype=torch.long)
    types[:, seq // 2:] = 1
    attention = torch.ones(batch, seq, dtype=torch.long)
    attention[1, seq - seq // 4:] = 0
    return ids, types, attention


def rel_error(got: dict, want: dict) -> float:
    return max(float((got[k].float() - want[k]).abs().max() / want[k].abs().max()) for k in want)


def best_of(fn, runs: int) -> float:
    best = math.inf
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def bench_base(layers: int, hidden: int, heads: int, runs: int) -> None:
    torch.manual_seed(0)
    net = Bert(layers, hidden, heads).eval()
    args = inputs(2, 128)
    with torch.no_grad():
        want = net(*args)
        t = time.perf_counter()
        net(*args)
        eager_first = time.perf_counter() - t
    model = st.inference_model(net, st.Options(target=sp.targets.GC200,
                                               engine_options={"debug.allowOutOfMemory": True}))
    t, cpu = time.perf_counter(), time.process_time()
    got = model(*args)
    first, first_cpu = time.perf_counter() - t, time.process_time() - cpu
    with torch.no_grad():
        eager = best_of(lambda: net(*args), runs)
    later = best_of(lambda: model(*args), runs)
    with torch.no_grad():
        eager2 = best_of(lambda: net(*args), runs)
    eager = min(eager, eager2)
    report = model.report
    emit(bench="bert_base", layers=layers, hidden=hidden, first_call_s=round(first, 2),
         first_call_cpu_s=round(first_cpu, 2), first_call_target_s=10,
         stages_s={k: round(v, 2) for k, v in model.compile_seconds.items()},
         eager_first_call_s=round(eager_first, 3), later_call_s=round(later, 3), eager_s=round(eager, 3),
         later_over_eager=round(later / eager, 2), later_target=1.5, max_rel_error=rel_error(got, want),
         modeled_ms=round(1e3 * model.cycle_count / sp.targets.GC200.clock_hz, 3), fit=report.fit())


def bench_large(layers: int, hidden: int, heads: int) -> None:
    torch.manual_seed(0)
    net = Bert(layers, hidden, heads).eval()
    opts = st.Options(target=sp.targets.GC200, precision="fp16",
                      engine_options={"debug.allowOutOfMemory": True})
    model = st.inference_model(net, opts)
    t, cpu = time.perf_counter(), time.process_time()
    model.compile(*inputs(2, 128))
    seconds, seconds_cpu = time.perf_counter() - t, time.process_time() - cpu
    report = model.report
    emit(bench="bert_large_fp16", layers=layers, hidden=hidden, compile_s=round(seconds, 2),
         compile_cpu_s=round(seconds_cpu, 2), compile_target_s=15,
         stages_s={k: round(v, 2) for k, v in model.compile_seconds.items()},
         fit=report.fit())
    lines = report.summary(top=0).splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("memory:"))
    last = next(i for i, line in enumerate(lines) if line.startswith("steps"))
    print("\n".join(lines[first:last]), flush=True)


FIGURES = ("first_call_s", "first_call_cpu_s", "compile_s", "compile_cpu_s", "later_call_s", "modeled_ms")


def _child(argv: list[str], src: str | None) -> dict:
    """The JSON line of one figure measured in a fresh process (on ``src``'s softipu if given)."""
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = os.path.join(src, "src") + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), *argv], capture_output=True,
                          text=True, env=env, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(lines[0])


def _beside(argv: list[str], baseline: str, repeat: int) -> None:
    """One figure, alternately on this tree and the baseline's, with the best and the spread."""
    runs: dict[str, list[dict]] = {"now": [], "baseline": []}
    for _ in range(repeat):
        runs["now"].append(_child(argv, None))
        runs["baseline"].append(_child(argv, baseline))
    line = dict(runs["now"][-1])
    for tree, got in runs.items():
        for key in FIGURES:
            values = [r[key] for r in got if key in r]
            if values:
                entry = {"best": min(values), "spread": round(max(values) - min(values), 2)}
                if tree == "now":
                    line[key] = entry
                else:
                    line.setdefault("baseline", {})[key] = entry
        stages = [r["stages_s"] for r in got if "stages_s" in r]
        if stages and tree == "baseline":
            line["baseline"]["stages_s"] = {k: min(s[k] for s in stages) for k in stages[0]}
        elif stages:
            line["stages_s"] = {k: min(s[k] for s in stages) for k in stages[0]}
    line["baseline"] = {"src": baseline, **line.get("baseline", {})}
    line["repeat"] = repeat
    print(json.dumps(line), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", action="store_true")
    parser.add_argument("--large", action="store_true")
    parser.add_argument("--layers", type=int)
    parser.add_argument("--hidden", type=int)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--baseline", help="a softipu checkout whose src/ is measured beside")
    parser.add_argument("--repeat", type=int, default=3, help="processes per tree with --baseline")
    a = parser.parse_args()
    both = not (a.base or a.large)
    if a.baseline:
        size = [x for n, v in (("--layers", a.layers), ("--hidden", a.hidden)) if v for x in (n, str(v))]
        sizes = (["--base"] if a.base or both else []) + (["--large"] if a.large or both else [])
        for which in sizes:
            _beside([which, "--runs", str(a.runs), *size], a.baseline, a.repeat)
        return
    if a.base or both:
        hidden = a.hidden or 768
        bench_base(a.layers or 12, hidden, hidden // 64, a.runs)
    if a.large or both:
        hidden = a.hidden or 1024
        bench_large(a.layers or 24, hidden, hidden // 64)


if __name__ == "__main__":
    main()
