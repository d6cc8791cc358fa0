"""PyTorch on a simulated GC200 through the PopTorch API: a BERT-style encoder and a small CNN.

Each model is built in code (seeded random weights, nothing downloaded) and run the way a
PopTorch script runs it: ``poptorch.Options()`` with its chaining setters,
``poptorch.inferenceModel(model, opts)``, then ``model.cycleCount()``. The only line that differs
from a script for a real IPU is the import::

    import softipu.poptorch as poptorch     # instead of: import poptorch

For each model the demo prints how far the IPU's outputs are from eager PyTorch's, what a real
GC200 would spend on one call (modeled cycles, latency and throughput at its clock), how long
the simulator took (compile and a later call, wall clock), and memory per tile; then it writes
the model's report as JSON, a Perfetto trace and an HTML page.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - PyTorch's own spelling

import softipu as sp
import softipu.poptorch as poptorch  # the only change a PopTorch script needs

RTOL = 1e-4  # fp32 outputs must be within this of eager PyTorch, relative to the largest output
VOCAB = 1000
LATER_CALLS = 20  # wall times of later calls are the best of this many (a few ms each)


# -- a BERT-style encoder -----------------------------------------------------------------------------
class EncoderLayer(torch.nn.Module):
    """Post-LN transformer layer: self-attention with an additive mask, then an erf-GELU FFN."""

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
        context = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, s, h)
        x = self.norm1(x + self.out(context))
        return self.norm2(x + self.down(F.gelu(self.up(x))))


class Bert(torch.nn.Module):
    """Word, position and token-type embeddings, LayerNorm, encoder layers, a tanh pooler."""

    def __init__(self, layers: int = 2, hidden: int = 128, heads: int = 4, positions: int = 512) -> None:
        super().__init__()
        self.words = torch.nn.Embedding(VOCAB, hidden)
        self.positions = torch.nn.Embedding(positions, hidden)
        self.types = torch.nn.Embedding(2, hidden)
        self.norm = torch.nn.LayerNorm(hidden, eps=1e-12)
        self.layers = torch.nn.ModuleList(EncoderLayer(hidden, heads) for _ in range(layers))
        self.pooler = torch.nn.Linear(hidden, hidden)

    def forward(self, ids: torch.Tensor, types: torch.Tensor, attention: torch.Tensor) -> dict:
        pos = torch.arange(ids.shape[1])
        x = self.norm(self.words(ids) + self.positions(pos) + self.types(types))
        mask = (1.0 - attention[:, None, None, :].to(x.dtype)) * -10000.0  # 0 keeps, -1e4 drops
        for layer in self.layers:
            x = layer(x, mask)
        return {"last_hidden_state": x, "pooled": torch.tanh(self.pooler(x[:, 0]))}


def bert_inputs(batch: int, seq: int) -> tuple[torch.Tensor, ...]:
    """Token ids, two segments, and a padded tail on the last sequence (the mask matters)."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (batch, seq), generator=g)
    types = torch.zeros(batch, seq, dtype=torch.long)
    types[:, seq // 2:] = 1
    attention = torch.ones(batch, seq, dtype=torch.long)
    attention[-1, seq - seq // 4:] = 0
    return ids, types, attention


# -- a small CNN --------------------------------------------------------------------------------------
def conv_bn(cin: int, cout: int, stride: int = 1) -> torch.nn.Sequential:
    conv = torch.nn.Conv2d(cin, cout, 3, stride, padding=1, bias=False)
    return torch.nn.Sequential(conv, torch.nn.BatchNorm2d(cout))


class ResidualBlock(torch.nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.a, self.b = conv_bn(channels, channels), conv_bn(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.b(F.relu(self.a(x))))


class Cnn(torch.nn.Module):
    """conv-BN-ReLU stem, max-pool, a residual block, a strided conv, global average pool, linear."""

    def __init__(self, channels: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.stem = conv_bn(3, channels)
        self.pool = torch.nn.MaxPool2d(2)
        self.block = ResidualBlock(channels)
        self.down = conv_bn(channels, 2 * channels, stride=2)
        self.head = torch.nn.Linear(2 * channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(self.pool(F.relu(self.stem(x))))
        x = F.adaptive_avg_pool2d(F.relu(self.down(x)), 1)
        return self.head(x.flatten(1))


def randomize_batch_norms(model: torch.nn.Module, g: torch.Generator) -> None:
    """Give every BatchNorm non-trivial running statistics and affine weights, as a trained net has."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
            m.weight.data.copy_(1 + 0.1 * torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(m.num_features, generator=g))


# -- the PopTorch part ----------------------------------------------------------------------------------
def poptorch_options(device_iterations: int, target: sp.Target | None) -> poptorch.Options:
    opts = poptorch.Options()
    opts.deviceIterations(device_iterations)
    opts.logCycleCount(True)  # PopTorch needs this before cycleCount()
    if target is not None:
        opts.setTarget(target)  # softipu's extension; without it the chip is a GC200, like a Mk2 IPU
    return opts


def run_on_ipu(model: torch.nn.Module, inputs: tuple, device_iterations: int,
               target: sp.Target | None) -> dict[str, Any]:
    """Compile and run ``model`` with PopTorch's API; time the first call and the best later one."""
    ipu_model = poptorch.inferenceModel(model, poptorch_options(device_iterations, target))
    t = time.perf_counter()
    ipu_model(*inputs)  # the first call exports, lowers, compiles, loads the weights and runs
    first_s = time.perf_counter() - t
    out, later_s = best_of(LATER_CALLS, ipu_model, inputs)  # later calls only stream inputs and outputs
    with torch.no_grad():
        want, eager_s = best_of(LATER_CALLS, model, inputs)
    return {"ipu_model": ipu_model, "inputs": inputs, "out": out, "want": want, "first_call_s": first_s,
            "later_call_s": later_s, "eager_call_s": eager_s, "cycles": ipu_model.cycleCount(),
            "report": ipu_model.report}


def best_of(calls: int, fn: Callable[..., Any], inputs: tuple) -> tuple[Any, float]:
    """The last result of ``calls`` calls and the fastest call's wall time (the 2 cores are shared)."""
    best = math.inf
    for _ in range(calls):
        t = time.perf_counter()
        out = fn(*inputs)
        best = min(best, time.perf_counter() - t)
    return out, best


def differences(got: Any, want: Any) -> tuple[float, float]:
    """Max |got - want| and that over max |want|, over every output tensor."""
    pairs = [(got[k], want[k]) for k in want] if isinstance(want, dict) else [(got, want)]
    abs_diff = max(float((a - b).abs().max()) for a, b in pairs)
    rel_diff = max(float((a - b).abs().max() / b.abs().max()) for a, b in pairs)
    return abs_diff, rel_diff


def figures(r: dict[str, Any], samples: int) -> dict[str, Any]:
    """One model's figures: accuracy against eager PyTorch, modeled time, wall time, memory."""
    report: sp.Report = r["report"]
    abs_diff, rel_diff = differences(r["out"], r["want"])
    latency_s = r["cycles"] / report.data["target"]["clock_hz"]
    mem = report.tile_memory
    return {"abs_diff": abs_diff, "rel_diff": rel_diff, "passed": rel_diff <= RTOL, "cycles": r["cycles"],
            "latency_s": latency_s, "samples": samples, "samples_per_s": samples / latency_s,
            "first_call_s": r["first_call_s"], "later_call_s": r["later_call_s"],
            "eager_call_s": r["eager_call_s"], "tiles": int(mem.size), "max_tile_bytes": int(mem.max()),
            "mean_tile_bytes": float(mem.mean()), "bytes_per_tile": report.data["memory"]["bytes_per_tile"],
            "fits": report.fits}


def print_figures(r: dict[str, Any], f: dict[str, Any]) -> None:
    report: sp.Report = r["report"]
    target = report.data["target"]
    print(f"  {first_values(r['out'])} (IPU)\n  {first_values(r['want'])} (eager PyTorch)")
    print(f"  vs eager PyTorch: max |diff| {f['abs_diff']:.3g}, relative {f['rel_diff']:.3g} "
          f"({'PASS' if f['passed'] else 'FAIL'}, tolerance {RTOL:g})")
    print(f"  on a {target['name']} at {target['clock_hz'] / 1e9:.3g} GHz: {f['cycles']:,} cycles per call = "
          f"{f['latency_s'] * 1e6:,.1f} us for {f['samples']} samples = {f['samples_per_s']:,.0f} samples/s")
    print(f"  simulator wall time: first call (export, lower, compile, load, run) {f['first_call_s']:.2f} s; "
          f"a later call {f['later_call_s'] * 1e3:.2f} ms (eager PyTorch: {f['eager_call_s'] * 1e3:.2f} ms; "
          f"best of {LATER_CALLS})")
    top = sorted(report.memory_by_category.items(), key=lambda kv: -kv[1])[:3]
    fits = "fits" if f["fits"] else "DOES NOT FIT"
    print(f"  memory per tile over {f['tiles']:,} tiles: max {f['max_tile_bytes']:,} B, mean "
          f"{f['mean_tile_bytes']:,.0f} B of {f['bytes_per_tile']:,} B ({fits}); largest: "
          + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in top))
    print("  costliest steps (cycles x runs, weight load and all calls): " + "; ".join(
        f"{s['name']} {s['cycles']:,} x {s['count']} ({Path(s['source']).name})"
        for s in sorted(report.steps, key=lambda s: -s["cycles"] * s["count"])[:3]))


def summarize(name: str, r: dict[str, Any], samples: int, report_dir: str | None) -> dict[str, Any]:
    """Print one model's figures and write its report files; return the figures."""
    f = figures(r, samples)
    print_figures(r, f)
    if report_dir is not None:
        f["files"] = write_reports(r["report"], Path(report_dir), name)
        print(f"  wrote {report_dir}/{name}.report.json, {name}.perfetto.json (open in ui.perfetto.dev), "
              f"{name}.report.html")
    return f


def first_values(out: Any) -> str:
    """The first few numbers of the model's last output (``pooled`` of the encoder, CNN logits)."""
    name, tensor = next(reversed(out.items())) if isinstance(out, dict) else ("logits", out)
    values = ", ".join(f"{v:+.5f}" for v in tensor.flatten()[:4].tolist())
    return f"{name}[0, :4] = [{values}]"


def write_reports(report: sp.Report, out: Path, name: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = [out / f"{name}.report.json", out / f"{name}.perfetto.json", out / f"{name}.report.html"]
    report.save_json(files[0])
    report.save_trace(files[1])
    report.save_html(files[2])
    return files


def demo_bert(target: sp.Target | None, report_dir: str | None, layers: int = 2, hidden: int = 128,
              heads: int = 4, seq: int = 64, batch: int = 2) -> dict[str, Any]:
    torch.manual_seed(0)
    model = Bert(layers, hidden, heads).eval()
    print(f"\n=== BERT-style encoder: {layers} layers, hidden {hidden}, {heads} heads, sequence {seq}, "
          f"batch {batch}, attention mask, fp32")
    r = run_on_ipu(model, bert_inputs(batch, seq), 1, target)
    return {**r, **summarize("bert", r, batch, report_dir)}


def demo_cnn(target: sp.Target | None, report_dir: str | None, batch: int = 4, size: int = 32,
             device_iterations: int = 4) -> dict[str, Any]:
    torch.manual_seed(0)
    model = Cnn().eval()
    randomize_batch_norms(model, torch.Generator().manual_seed(2))
    # One call feeds device_iterations micro-batches: dim 0 is device_iterations x batch.
    images = torch.randn(device_iterations * batch, 3, size, size, generator=torch.Generator().manual_seed(3))
    print(f"\n=== small CNN: conv-BN-ReLU, max-pool, residual block, adaptive avg pool, linear; "
          f"{device_iterations} device iterations x batch {batch} x 3 x {size} x {size}, fp32")
    r = run_on_ipu(model, (images,), device_iterations, target)
    return {**r, **summarize("cnn", r, device_iterations * batch, report_dir)}


def main(report_dir: str | None = "reports", target: sp.Target | None = None,
         bert: dict[str, int] | None = None, cnn: dict[str, int] | None = None) -> dict[str, Any]:
    """Run both models; ``target`` None means PopTorch's default chip, a GC200.

    ``bert`` and ``cnn`` override the models' sizes (keyword arguments of ``demo_bert`` and
    ``demo_cnn``). Reports go to ``report_dir`` (None: write nothing).
    """
    chip = "a simulated GC200 (PopTorch's default)" if target is None else f"a simulated {target.name}"
    print(f"\n=== PyTorch through the PopTorch API (import softipu.poptorch as poptorch) on {chip}")
    steps: dict[str, Callable[..., dict[str, Any]]] = {"bert": demo_bert, "cnn": demo_cnn}
    sizes = {"bert": bert or {}, "cnn": cnn or {}}
    return {name: step(target, report_dir, **sizes[name]) for name, step in steps.items()}


if __name__ == "__main__":
    main()
