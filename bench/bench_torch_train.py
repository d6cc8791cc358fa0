"""Issue 11's training numbers: a BERT-width encoder with an MLM head trained with AdamW on a GC200.

Prints one JSON line per figure. Run: ``.venv/bin/python bench/bench_torch_train.py`` (4 layers,
hidden 768, 12 heads, ffn 3072, vocab 30522, batch 8, seq 128, fp32; fp16 too when fp32 does not
fit), ``--small`` for a 2-layer hidden-256 model (vocab 8192, batch 4) that runs in seconds,
``--steps N`` for the number of timed steps, ``--precision fp32|fp16`` for one precision only,
``--layers N`` for another depth (2 at hidden 768 profiles the first call in half the time).

* ``first_call``: seconds of the first call split into export (fake-tensor forward to find the
  loss + AOTAutograd joint graph), lower, compile, load and the step itself; ``cpu_seconds`` is the
  process's CPU time over the same call (the figure to compare on a loaded machine).
* ``step``: the median of later calls beside eager PyTorch's step (forward + backward + AdamW on
  the same module and inputs, ``torch.set_num_threads(2)``), with their ratio, and the spread.
* ``model``: the modeled step time on the chip (cycles / clock), the split of the step's cycles
  into forward, backward and weight update, the memory split (weights, gradients, optimizer state,
  activations kept for the backward; in all and on the fullest tile, with the role dominating
  it) and whether it fits (``Report.fit()``).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
import torch.nn.functional as F  # noqa: N812

import softipu as sp
import softipu.torch as st


def emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


class Layer(torch.nn.Module):
    def __init__(self, hidden: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv, self.out = torch.nn.Linear(hidden, 3 * hidden), torch.nn.Linear(hidden, hidden)
        self.norm1, self.norm2 = torch.nn.LayerNorm(hidden, eps=1e-12), torch.nn.LayerNorm(hidden, eps=1e-12)
        self.up, self.down = torch.nn.Linear(hidden, ffn), torch.nn.Linear(ffn, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, h = x.shape
        d = h // self.heads
        q, k, v = self.qkv(x).view(b, s, 3, self.heads, d).permute(2, 0, 3, 1, 4)
        ctx = ((q @ k.transpose(-1, -2) / d**0.5).softmax(-1) @ v).transpose(1, 2).reshape(b, s, h)
        x = self.norm1(x + self.out(ctx))
        return self.norm2(x + self.down(F.gelu(self.up(x))))


class MLMEncoder(torch.nn.Module):
    def __init__(self, layers: int, hidden: int, heads: int, ffn: int, vocab: int, seq: int) -> None:
        super().__init__()
        self.words, self.positions = torch.nn.Embedding(vocab, hidden), torch.nn.Embedding(seq, hidden)
        self.norm = torch.nn.LayerNorm(hidden, eps=1e-12)
        self.layers = torch.nn.ModuleList(Layer(hidden, heads, ffn) for _ in range(layers))
        self.transform = torch.nn.Linear(hidden, hidden)
        self.head_norm = torch.nn.LayerNorm(hidden, eps=1e-12)
        self.decoder = torch.nn.Linear(hidden, vocab)

    def forward(self, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.words(ids) + self.positions(torch.arange(ids.shape[1])))
        for layer in self.layers:
            x = layer(x)
        logits = self.decoder(self.head_norm(F.gelu(self.transform(x))))
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))


def batch(b: int, s: int, vocab: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (b, s), generator=g)
    labels = torch.full((b, s), -100)
    picked = torch.rand(b, s, generator=g) < 0.15
    labels[picked] = ids[picked]
    return ids, labels


def eager_steps(module: torch.nn.Module, batches: list, steps: int) -> list[float]:
    opt = torch.optim.AdamW(module.parameters(), lr=1e-4)
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        opt.zero_grad()
        module(*batches[i % len(batches)]).backward()
        opt.step()
        if i:  # the first one warms up
            times.append(time.perf_counter() - start)
    return times


def run(label: str, cfg: dict, precision: str, steps: int) -> bool:
    torch.manual_seed(0)
    module = MLMEncoder(cfg["layers"], cfg["hidden"], cfg["heads"], cfg["ffn"], cfg["vocab"], cfg["seq"])
    eager = copy.deepcopy(module)
    if precision == "fp16":
        module = module.half()
    batches = [batch(cfg["batch"], cfg["seq"], cfg["vocab"], i) for i in range(3)]
    options = st.Options(target=sp.targets.GC200, precision="fp32",
                         engine_options={"debug.allowOutOfMemory": True})
    model = st.training_model(module, torch.optim.AdamW(module.parameters(), lr=1e-4), options)
    start, cpu = time.perf_counter(), time.process_time()
    loss = model(*batches[0])
    first, first_cpu = time.perf_counter() - start, time.process_time() - cpu
    split = dict(model.compile_seconds)
    split["step"] = first - sum(split.values())
    emit(bench="torch_train", case=label, figure="first_call", seconds=round(first, 2),
         cpu_seconds=round(first_cpu, 2), split={k: round(v, 2) for k, v in split.items()},
         target_seconds=30.0, loss=float(loss))
    times = []
    for i in range(steps):
        t = time.perf_counter()
        model(*batches[(i + 1) % len(batches)])
        times.append(time.perf_counter() - t)
    ref = eager_steps(eager, batches, steps)
    ipu, base = statistics.median(times), statistics.median(ref)
    emit(bench="torch_train", case=label, figure="step", seconds=round(ipu, 3), eager_seconds=round(base, 3),
         ratio=round(ipu / base, 2), target_ratio=2.0, spread=[round(min(times), 3), round(max(times), 3)],
         eager_spread=[round(min(ref), 3), round(max(ref), 3)], steps=steps)
    summary = model.summary()
    fit = summary["fit"]
    emit(bench="torch_train", case=label, figure="model", modeled_step_ms=round(
        1e3 * model.cycle_count / sp.targets.GC200.clock_hz, 3), cycles=model.cycle_count,
         cycles_split=summary["cycles"],
         memory_split_mb={k: round(v / 1e6, 2) for k, v in summary["memory"].items()},
         memory_total_mb=round(summary["memory_total"] / 1e6, 1), fits=fit["fits"],
         tiles_over=fit["tiles_over"], worst_tile_bytes=fit["worst_tile_bytes"],
         ipus_needed=fit["ipus_needed"], worst_tile=summary["worst_tile"]["tile"],
         worst_tile_by_role=summary["worst_tile"]["by_role"], dominant=summary["dominant"],
         advice=summary["advice"])
    return bool(fit["fits"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--layers", type=int, default=None, help="encoder layers (default: 4, --small 2)")
    parser.add_argument("--precision", choices=("fp32", "fp16"), default=None,
                        help="run only this precision (default: fp32, then fp16 when fp32 does not fit)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.small:
        cfg = {"layers": 2, "hidden": 256, "heads": 4, "ffn": 1024, "vocab": 8192, "batch": 4, "seq": 128}
    else:
        cfg = {"layers": 4, "hidden": 768, "heads": 12, "ffn": 3072, "vocab": 30522, "batch": 8, "seq": 128}
    if args.layers is not None:
        cfg["layers"] = args.layers
    label = f"L{cfg['layers']}_H{cfg['hidden']}_V{cfg['vocab']}_b{cfg['batch']}_s{cfg['seq']}_adamw"
    if args.precision is not None:
        run(f"{label}_{args.precision}", cfg, args.precision, args.steps)
    elif not run(f"{label}_fp32", cfg, "fp32", args.steps):
        run(f"{label}_fp16", cfg, "fp16", args.steps)


if __name__ == "__main__":
    main()
