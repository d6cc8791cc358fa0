"""Issue 14's Numbers: training configurations priced on IPU-PODs, estimate-only.

Run: ``.venv/bin/python bench/bench_pod_training.py`` (every model, each in a fresh subprocess so
its host peak is its own), or ``--model bert_large|bert_base|resnet50|gpt2_xl`` for one. Each
distinct layer is priced in a child process forked once the imports are done (``price_apart``),
``--jobs`` (default 2, this machine's cores) at a time while their expected peaks stay within
``--host-budget-mb`` (default 4096). ``compile_price_seconds`` is the wall time of pricing the
model's layers and composing every configuration of it (they share the layers),
``compile_price_cpu_seconds`` the CPU time of the process and its children (the figure to read on a
loaded machine); ``host_peak_mb`` the largest host memory of the process and its children sampled
while they ran (proportional set sizes: the pages children share with the parent counted once).
``--html DIR`` / ``--trace DIR`` also write each configuration's report page and Perfetto trace
(one track per IPU). Prints one JSON line per configuration and a table at the end.

How: each DISTINCT layer of a model (embedding, one transformer layer, the head; ResNet-50's stem,
each bottleneck kind and the head) is built in plain torch.nn at its real size under fake
tensors, lowered through softipu's training path for one micro-batch on one GC200 and priced by an
estimate-only engine (``softipu.frontends.torch.scale.price_layer``); the configuration is composed
from those (``price_training``: PopART's pipeline schedule, IPU-Link transfers, the gradient
collectives of ``target.links``, the optimizer update, Streaming Memory, host I/O). Nothing is
tuned to a published throughput: every figure is the cost model's.

Inputs assumed, and where each comes from (also printed in every JSON line's ``inputs``):

* BERT-Large phase 1 (SL128): ``graphcore/examples nlp/bert/pytorch/configs_pretraining.yml``
  ``pretrain_large_128`` [V]: micro-batch 8, 4 IPUs a replica, layers_per_ipu [3, 7, 7, 7]
  (embedding with the first 3 layers), POD16: 4 replicas x GA 2048; ``pretrain_large_128_POD64``:
  16 replicas x GA 512; fp16 (half partials), LAMB, optimizer state off chip, RTS, a recomputation
  checkpoint every layer, 20 masked tokens per sequence. POD128 / POD256 are not in that file
  [U]: 32 x GA 256 and 64 x GA 128 (the same global batch 65,536).
* BERT-Base phase 1: ``pretrain_base_128`` [V]: micro-batch 32, 4 replicas x GA 512, layers_per_ipu
  [0, 4, 4, 4] (the embedding alone on IPU 0), the rest as BERT-Large.
* LAMB state: two fp32 moments (``enable_half_first_order_momentum: False``) = 8 B a parameter
  [V config]; gradient accumulators in the gradients' dtype (fp16) [U].
* The MLM + NSP head (pooler included) runs on IPU 0 again, its decoder weight tied to the word
  embedding [V ``nlp/bert/pytorch/modeling.py``: ``BeginBlock(self.cls, "Classifier", ipu_id=0)``,
  ``tie_weights()``]: a fifth pipeline stage on IPU 0 (``stage_ipus`` (0, 1, 2, 3, 0), S = 9
  stages), the head priced with its own decoder whose weight is then taken off the head's
  parameters (the embedding's weight, its gradient and state are the embedding's). The head reads
  the whole sequence output (sent from IPU 3); Graphcore's decoder serialisation
  (``embedding_serialization_factor``) is not modelled [U].
* ResNet-50: ``vision/cnns/pytorch/train/configs.yml`` ``resnet50`` [V]: batch 18 a replica of 1 IPU,
  POD16: 16 replicas x GA 57; ``resnet50-pod64``: 64 x GA 14; precision 16.16, SGD with momentum
  (combined: one fp32 velocity, 4 B a parameter [U: PopTorch's default accum type]), optimizer on
  chip, no RTS; recomputation: a checkpoint at each bottleneck's input [U: the config lists
  manual checkpoints]. A block's input arrives channels innermost (``price_layer(...,
  channels_last=True)``), as the previous block's residual sum over convolution outputs leaves it.
* GPT-2 XL (1.5 B: 48 layers, hidden 1600, 25 heads, vocab 50257, context 1024) [V: the GPT-2
  paper's sizes]; micro-batch 1, sequence 1024, fp16, one replica pipelined over all 16 IPUs of a
  POD16, GA 1024, Adam (two fp32 moments) off chip, a checkpoint every layer [U: no public IPU
  configuration was used]; the split is the automatic placement's.
* The optimizer's arithmetic is priced per parameter element from each layer's compiled update with
  plain SGD [U: LAMB / momentum make a few more elementwise passes]: it is under 0.01% of every
  step here (the state's Streaming Memory traffic, priced from the real state sizes, is not).
* Host input bytes per sample [D from the inputs' shapes]: BERT 3 x 128 int32 + 2 x 20 int32 + 1 =
  1,700 B; ResNet-50 224 x 224 x 3 uint8 + a label (``eight_bit_io``) = 150,532 B; GPT-2 2 x 1024
  int32 = 8,192 B.
* System figures: ``softipu.target.systems`` (IPU-Links, GW-Links, Streaming Memory at 20 GB/s per
  IPU [U], 256 GB a machine), one GC200 per IPU (1,472 tiles x 624 KiB).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import replace

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = ("bert_large", "bert_base", "resnet50", "gpt2_xl")
BERT_INPUT_BYTES = 3 * 128 * 4 + 2 * 20 * 4 + 4 * 1  # ids, types, mask; MLM labels + positions; NSP
RESNET_INPUT_BYTES = 224 * 224 * 3 + 4
RESNET_BATCH = 18  # a replica's micro-batch (configs.yml resnet50)
GPT2_INPUT_BYTES = 2 * 1024 * 4
GPT2_VOCAB = 50257  # --gpt2-vocab changes it (a quicker check of the rest of the configuration)
BERT_VOCAB = 30522


def emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


# --- the models' distinct layers, in plain torch.nn ------------------------------------------------


def bert_layers(hidden: int, heads: int, micro: int, seq: int = 128, vocab: int = BERT_VOCAB,
                masked: int = 20):
    """(path, kind, LayerCost) for BERT's embedding, one encoder layer, the MLM + NSP head."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    sys.path.insert(0, HERE)
    import bench_torch_bert as bert

    from softipu.frontends.torch.scale import price_layer
    from softipu.frontends.torch.scale.layers import mm_flops

    class Embedding(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.words, self.positions = torch.nn.Embedding(vocab, hidden), torch.nn.Embedding(512, hidden)
            self.types, self.norm = torch.nn.Embedding(2, hidden), torch.nn.LayerNorm(hidden, eps=1e-3)

        def forward(self, ids, types):
            return self.norm(self.words(ids) + self.positions(torch.arange(ids.shape[1])) + self.types(types))

    class Head(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transform, self.norm = torch.nn.Linear(hidden, hidden), torch.nn.LayerNorm(hidden, eps=1e-3)
            self.decoder = torch.nn.Linear(hidden, vocab)
            self.pooler, self.nsp = torch.nn.Linear(hidden, hidden), torch.nn.Linear(hidden, 2)

        def forward(self, x, labels, nsp_labels):
            m = x[:, :masked]  # Graphcore's packing puts the masked tokens first
            logits = self.decoder(self.norm(F.gelu(self.transform(m)))).float()
            mlm = F.cross_entropy(logits.reshape(-1, vocab), labels.reshape(-1))
            nsp = F.cross_entropy(self.nsp(torch.tanh(self.pooler(x[:, 0]))).float(), nsp_labels)
            return mlm + nsp

    ids = torch.zeros(micro, seq, dtype=torch.long)
    mask = torch.zeros(micro, 1, 1, seq, dtype=torch.float16)
    tokens = micro * seq
    emb = price_layer("embedding", Embedding, None, (ids, ids.clone()))
    layer = price_layer("encoder", lambda: bert.Layer(hidden, heads), (micro, seq, hidden), (mask,),
                        flops=mm_flops((tokens, hidden, 3 * hidden), (tokens, hidden, hidden),
                                       (tokens, hidden, 8 * hidden), (micro * heads * seq, hidden // heads,
                                                                      2 * seq)))
    head = price_layer("head", Head, (micro, seq, hidden),
                       (torch.zeros(micro, masked, dtype=torch.long), torch.zeros(micro, dtype=torch.long)))
    return emb, layer, head


def resnet50_layers(batch: int):
    """ResNet-50's stem, each distinct bottleneck (input channels, width, stride) and the head."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    sys.path.insert(0, HERE)
    import fidelity_models as fm

    from softipu.frontends.torch.scale import price_layer

    class Stem(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.bn1 = torch.nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False), \
                torch.nn.BatchNorm2d(64)
            self.pool = torch.nn.MaxPool2d(3, stride=2, padding=1)

        def forward(self, x):
            return self.pool(F.relu(self.bn1(self.conv1(x))))

    class Head(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(2048, 1000)

        def forward(self, x, labels):
            return F.cross_entropy(self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)).float(), labels)

    images = torch.zeros(batch, 3, 224, 224, dtype=torch.float16)
    out = [("stem", price_layer("stem", Stem, None, (images,)), 1)]
    size, inplanes = 56, 64
    for i, (planes, count) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3), strict=True)):
        stride = 1 if i == 0 else 2
        first = price_layer(f"block{i}_0", lambda p=planes, s=stride, c=inplanes: fm.Bottleneck(c, p, s),
                            (batch, inplanes, size, size), channels_last=True)
        size //= stride
        rest = price_layer(f"block{i}_n", lambda p=planes: fm.Bottleneck(4 * p, p, 1),
                           (batch, 4 * planes, size, size), channels_last=True)
        out += [(f"block{i}_0", first, 1), (f"block{i}_n", rest, count - 1)]
        inplanes = 4 * planes
    labels = torch.zeros(batch, dtype=torch.long)
    out.append(("head", price_layer("head", Head, (batch, 2048, 7, 7), (labels,), channels_last=True), 1))
    return out


def gpt2_layers(micro: int, seq: int = 1024, hidden: int = 1600, heads: int = 25, vocab: int | None = None):
    import torch
    import torch.nn.functional as F  # noqa: N812

    from softipu.frontends.torch.scale import price_layer

    vocab = vocab or GPT2_VOCAB

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln1, self.ln2 = torch.nn.LayerNorm(hidden), torch.nn.LayerNorm(hidden)
            self.qkv, self.proj = torch.nn.Linear(hidden, 3 * hidden), torch.nn.Linear(hidden, hidden)
            self.up, self.down = torch.nn.Linear(hidden, 4 * hidden), torch.nn.Linear(4 * hidden, hidden)

        def forward(self, x, causal):
            b, s, h = x.shape
            d = h // heads
            q, k, v = self.qkv(self.ln1(x)).view(b, s, 3, heads, d).permute(2, 0, 3, 1, 4)
            att = (q @ k.transpose(-1, -2) / d**0.5 + causal).softmax(-1) @ v
            x = x + self.proj(att.transpose(1, 2).reshape(b, s, h))
            return x + self.down(F.gelu(self.up(self.ln2(x))))

    class Embedding(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.wte, self.wpe = torch.nn.Embedding(vocab, hidden), torch.nn.Embedding(seq, hidden)

        def forward(self, ids):
            return self.wte(ids) + self.wpe(torch.arange(ids.shape[1]))

    class Head(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln, self.lm = torch.nn.LayerNorm(hidden), torch.nn.Linear(hidden, vocab, bias=False)

        def forward(self, x, labels):
            return F.cross_entropy(self.lm(self.ln(x)).float().reshape(-1, vocab), labels.reshape(-1))

    ids = torch.zeros(micro, seq, dtype=torch.long)
    causal = torch.triu(torch.full((seq, seq), -10000.0, dtype=torch.float16), 1)
    return (price_layer("embedding", Embedding, None, (ids,)),
            price_layer("block", Block, (micro, seq, hidden), (causal,)),
            price_layer("head", Head, (micro, seq, hidden), (ids.clone(),)))


# --- configurations ------------------------------------------------------------------------------


def bert_configs(name: str):
    from softipu.target import systems

    if name == "bert_large":
        hidden, heads, layers, micro, split = 1024, 16, 24, 8, (4, 7, 7, 7, 1)
        runs = [(systems.POD16, 4, 2048), (systems.POD64, 16, 512), (systems.POD128, 32, 256),
                (systems.POD256, 64, 128)]
    else:
        hidden, heads, layers, micro, split = 768, 12, 12, 32, (1, 4, 4, 4, 1)
        runs = [(systems.POD16, 4, 512)]
    return hidden, heads, layers, micro, split, runs


def run_bert(name: str, out: dict, jobs: int = 2, budget_mb: float = 4096) -> list:
    from softipu.frontends.torch.scale.pod import TrainingConfig, price_training

    hidden, heads, n_layers, micro, split, runs = bert_configs(name)
    start = time.perf_counter()
    pieces = price_apart(name, out, jobs, budget_mb)
    emb, layer, head = (pieces[n] for n in PIECES[name])
    price_s = time.perf_counter() - start
    tied = BERT_VOCAB * hidden  # the decoder's weight is the word embedding's (on the same IPU)
    head = replace(head, params=head.params - tied, param_bytes=head.param_bytes - 2 * tied)
    layers = [emb] + [layer.scaled(f"encoder[{i}]", 1) for i in range(n_layers)] + [head]
    results = []
    for system, replicas, ga in runs:
        cfg = TrainingConfig(micro_batch=micro, accumulation=ga, replicas=replicas, layers_per_ipu=split,
                             stage_ipus=(0, 1, 2, 3, 0), recompute=True, optimizer_off_chip=True, rts=True,
                             input_bytes_per_sample=BERT_INPUT_BYTES, label=f"{name}_{system.name}")
        results.append(price_training(layers, cfg, system))
    out.update(price_seconds=price_s, layers=[_layer_figures(x) for x in (emb, layer, head)])
    return results


def run_resnet(out: dict, jobs: int = 2, budget_mb: float = 4096) -> list:
    from softipu.frontends.torch.scale.pod import TrainingConfig, price_training
    from softipu.target import systems

    start = time.perf_counter()
    kinds = price_apart("resnet50", out, jobs, budget_mb)
    price_s = time.perf_counter() - start
    counts = {"stem": 1, "head": 1, **{f"block{i}_0": 1 for i in range(4)},
              **{f"block{i}_n": n - 1 for i, n in enumerate(RESNET_BLOCKS)}}
    layers = [kinds[name].scaled(f"{name}[{i}]", 1) for name in PIECES["resnet50"]
              for i in range(counts[name])]
    results = []
    for system, replicas, ga in ((systems.POD16, 16, 57), (systems.POD64, 64, 14)):
        cfg = TrainingConfig(micro_batch=RESNET_BATCH, accumulation=ga, replicas=replicas,
                             layers_per_ipu=(len(layers),),
                             recompute=True, optimizer_state_bytes_per_param=4, optimizer_off_chip=False,
                             rts=False, input_bytes_per_sample=RESNET_INPUT_BYTES,
                             label=f"resnet50_{system.name}")
        results.append(price_training(layers, cfg, system))
    out.update(price_seconds=price_s, layers=[_layer_figures(kinds[n]) for n in PIECES["resnet50"]])
    return results


def _layer_figures(cost) -> dict:
    """A priced layer's figures with its compiled memory by category (MB) and its process's CPU and peak."""
    mem = cost.extra.get("compile_memory", {})
    return {**cost.as_dict(), "compiled_mb": {k: round(v / 1e6, 1) for k, v in mem.items()},
            **{k: round(cost.extra[k], 1) for k in ("cpu_s", "peak_mb", "harness_loss_cycles")
               if k in cost.extra}}


RESNET_BLOCKS = (3, 4, 6, 3)  # bottlenecks per stage (ResNet-50)
PIECES = {
    "bert_large": ("embedding", "encoder", "head"),
    "bert_base": ("embedding", "encoder", "head"),
    "gpt2_xl": ("embedding", "block", "head"),
    "resnet50": ("stem", *(f"block{i}_{k}" for i in range(4) for k in "0n"), "head"),
}
LAYER_KEYS = ("name", "forward", "backward", "update_per_param", "params", "param_bytes", "saved_bytes",
              "input_bytes", "output_bytes", "code_bytes", "temporary_bytes", "other_cycles", "price_seconds",
              "flops", "codelet_bytes", "stack_bytes")


def price_piece(spec: str) -> None:
    """Child: price only the layer ``model:name`` and print its LayerCost as JSON (with its compiled
    memory by category, this process's peak and CPU seconds)."""
    import softipu.frontends.torch.scale as scale

    model, name = spec.split(":", 1)
    real = scale.price_layer
    scale.price_layer = lambda n, *a, **k: real(n, *a, **k) if n == name else None
    if model.startswith("bert"):
        hidden, heads, _, micro, _, _ = bert_configs(model)
        found = bert_layers(hidden, heads, micro)
    elif model == "gpt2_xl":
        found = gpt2_layers(1)
    else:
        found = [c for _, c, _ in resnet50_layers(RESNET_BATCH)]
    (cost,) = [c for c in found if c is not None]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({**{k: getattr(cost, k) for k in LAYER_KEYS},
                      "compile_memory": cost.extra.get("compile_memory", {}),
                      "harness_loss_cycles": cost.extra.get("harness_loss_cycles", 0),
                      "peak_mb": usage.ru_maxrss / 1024, "cpu_s": usage.ru_utime + usage.ru_stime}),
          flush=True)


# The order children start in: the dearest first (measured: a vocabulary-wide head, then a
# transformer layer; ResNet-50's 56 x 56 bottlenecks), so the cheap ones fill in beside them.
START_ORDER = {"bert_large": ("head", "encoder", "embedding"), "bert_base": ("head", "encoder", "embedding"),
               "gpt2_xl": ("head", "block", "embedding"),
               "resnet50": ("block0_0", "block0_n", "block1_0", "stem", "block1_n", "block2_0", "block2_n",
                            "block3_0", "block3_n", "head")}
# What a child adds to the host at its peak beyond what it shares with the parent (proportional set
# size, MB), measured 2026-12-07 (bench output ``piece_peaks_mb``). Only the schedule reads it: a
# child starts beside the running ones when the parent's and their hints and its own stay within
# ``--host-budget-mb``; a stale hint changes the schedule, never the reported peak (sampled). A
# layer without one is priced alone.
PEAK_HINT_MB = {
    ("bert_large", "head"): 600, ("bert_large", "encoder"): 1100, ("bert_large", "embedding"): 1300,
    ("bert_base", "head"): 900, ("bert_base", "encoder"): 1300, ("bert_base", "embedding"): 1700,
    # ResNet-50 at batch 18, measured after batch norm on the conv's layout (piece_peaks_mb, 2026-12-07:
    # stem 1,432, block0_0 732, block0_n 652, block1_0 913, block1_n 784, block2_0 1,051, block2_n 896,
    # block3_0 907, block3_n 888, head 503 MB), about a quarter above each
    ("resnet50", "stem"): 1800, ("resnet50", "block0_0"): 950, ("resnet50", "block0_n"): 850,
    ("resnet50", "block1_0"): 1150, ("resnet50", "block1_n"): 1000, ("resnet50", "block2_0"): 1300,
    ("resnet50", "block2_n"): 1100, ("resnet50", "block3_0"): 1150, ("resnet50", "block3_n"): 1100,
    ("resnet50", "head"): 650,
    # GPT-2 XL (vocab 50257, s1024), each alone (piece_peaks_mb): head 479, block 701, embedding 430
    ("gpt2_xl", "head"): 700, ("gpt2_xl", "block"): 1000, ("gpt2_xl", "embedding"): 650,
}


def _warm(model: str) -> None:
    """Import in the parent what every child's pricing imports (torch, torch's FakeTensorMode and
    dynamo, softipu's frontends, the model's bench module): forked children share those pages and
    do not pay the imports again (about 6 CPU s and 300 MB each)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    import softipu.frontends.poptorch  # noqa: F401 - identity_loss, imported by every priced layer
    import softipu.frontends.torch.optim  # noqa: F401
    import softipu.frontends.torch.scale  # noqa: F401

    FakeTensorMode()  # its first construction imports torch._dynamo
    sys.path.insert(0, HERE)
    __import__("fidelity_models" if model == "resnet50" else "bench_torch_bert")


def _pss_mb(pid: int) -> float:
    """A process's proportional set size (its private pages and its share of shared ones), MB; 0
    where /proc does not say. Dear (the kernel walks the page tables: ~10 ms for 1.5 GB)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _rss_mb(pid: int) -> float:
    """A process's resident set size, MB (cheap: /proc/PID/statm); 0 where /proc does not say."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


class HostMemory:
    """The host memory of this process and its running children, sampled. Each sample reads the
    cheap resident sizes; the proportional set sizes (shared pages, the imports forked children
    share with the parent, counted once) are read again only when a process has grown by
    ``step_mb`` since they were (a sample adds each process's growth since to them)."""

    def __init__(self, step_mb: float = 128.0) -> None:
        self.step, self.peak, self.pieces = step_mb, 0.0, {}
        self._pss: dict[int, float] = {}
        self._rss: dict[int, float] = {}

    def sample(self, children: dict[str, int]) -> None:
        pids = {"": os.getpid(), **children}
        rss = {pid: _rss_mb(pid) for pid in pids.values()}
        if set(rss) != set(self._rss) or any(r > self._rss[p] + self.step for p, r in rss.items()):
            self._pss = {pid: _pss_mb(pid) for pid in rss}
            self._rss = rss
        now = {name: self._pss[pid] + max(0.0, rss[pid] - self._rss[pid]) for name, pid in pids.items()}
        self.peak = max(self.peak, sum(now.values()))
        for name in children:
            self.pieces[name] = max(self.pieces.get(name, 0.0), now[name])


def _fork_piece(model: str, piece: str):
    """Price ``model:piece`` in a forked child (stdout and stderr to files); (piece, pid, out, err)."""
    out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: price, print the JSON line, leave without the parent's cleanup
        code = 1
        try:
            os.dup2(out.fileno(), 1)
            os.dup2(err.fileno(), 2)
            price_piece(f"{model}:{piece}")
            sys.stdout.flush()
            code = 0
        except BaseException:  # noqa: BLE001 - reported to the parent through the child's stderr
            import traceback

            traceback.print_exc()
            sys.stderr.flush()
        finally:
            os._exit(code)
    return piece, pid, out, err


def _finished(model: str, piece: str, status: int, usage, out, err):
    from softipu.frontends.torch.scale import LayerCost

    out.seek(0)
    err.seek(0)
    stdout, stderr = out.read(), err.read()
    out.close()
    err.close()
    code = os.waitstatus_to_exitcode(status)
    if code:
        raise RuntimeError(f"pricing {model}:{piece} failed ({code}): {stderr[-3000:]}")
    d = json.loads(stdout.strip().splitlines()[-1])
    extra = {"compile_memory": d["compile_memory"], "cpu_s": usage.ru_utime + usage.ru_stime,
             "peak_mb": d["peak_mb"], "harness_loss_cycles": d.get("harness_loss_cycles", 0)}
    return LayerCost(**{k: d[k] for k in LAYER_KEYS}, extra=extra)


def price_apart(model: str, out: dict, jobs: int = 2, budget_mb: float = 4096) -> dict:
    """Each distinct layer of ``model`` priced once, each in a child forked from this process once
    it has imported what pricing needs (:func:`_warm`), so a child's peak is one layer's, not what
    every pricing before it left behind (GPT-2 XL's three layers in one process reached 6.8 GB),
    and the imports are paid once. Up to ``jobs`` run at a time, a further one only while the
    parent's and the running children's expected peaks (:data:`PEAK_HINT_MB`) and its own stay
    within ``budget_mb``. The host's memory is sampled as it goes (this process's and its
    children's, every 0.1 s: :class:`HostMemory`): ``out["host_peak_mb"]`` is the largest sum
    seen, ``out["piece_peaks_mb"]`` each child's largest. Returns {name: LayerCost}."""
    _warm(model)
    host = HostMemory()
    host.sample({})
    base = host.peak
    todo, running, done = list(START_ORDER[model]), [], {}

    def hint(piece: str) -> float:
        return PEAK_HINT_MB.get((model, piece), budget_mb)

    try:
        while todo or running:
            while todo and len(running) < max(1, jobs) and (
                    not running or base + sum(hint(r[0]) for r in running) + hint(todo[0]) <= budget_mb):
                running.append(_fork_piece(model, todo.pop(0)))
            host.sample({r[0]: r[1] for r in running})
            for r in list(running):
                pid, status, usage = os.wait4(r[1], os.WNOHANG)
                if pid:
                    running.remove(r)
                    done[r[0]] = _finished(model, r[0], status, usage, *r[2:])
            if running:
                time.sleep(0.1)
    finally:  # a failed layer (or an interrupt) leaves no child pricing on
        for r in running:
            os.kill(r[1], signal.SIGKILL)
            os.waitpid(r[1], 0)
    out.update(piece_peaks_mb={p: round(v) for p, v in host.pieces.items()}, host_peak_mb=round(host.peak))
    return done


def run_gpt2(out: dict, jobs: int = 2, budget_mb: float = 4096) -> list:
    from softipu.frontends.torch.scale.placement import begin_block_lines, propose_split
    from softipu.frontends.torch.scale.pod import TrainingConfig, price_training
    from softipu.target import systems

    start = time.perf_counter()
    pieces = price_apart("gpt2_xl", out, jobs, budget_mb)
    emb, block, head = (pieces[n] for n in PIECES["gpt2_xl"])
    price_s = time.perf_counter() - start
    layers = [emb] + [block.scaled(f"block[{i}]", 1) for i in range(48)] + [head]
    base = TrainingConfig(micro_batch=1, accumulation=1024, replicas=1, layers_per_ipu=(len(layers),),
                          recompute=True, optimizer_off_chip=True, rts=False,
                          input_bytes_per_sample=GPT2_INPUT_BYTES,
                          label="gpt2_xl_POD16" + ("" if GPT2_VOCAB == 50257 else f"_vocab{GPT2_VOCAB}"))
    capacity = systems.POD16.chip.num_tiles * systems.POD16.chip.bytes_per_tile
    try:
        placement = propose_split(layers, 16, base, capacity)
        fits = True
    except Exception as exc:  # noqa: BLE001 - reported, then priced on the time-balanced split
        out["placement_error"] = str(exc)
        placement = propose_split(layers, 16, base, 10**30)
        fits = False
    paths = ["embedding"] + [f"blocks[{i}]" for i in range(48)] + ["head"]
    out.update(price_seconds=price_s, layers=[_layer_figures(x) for x in (emb, block, head)],
               placement=placement.as_dict(), placement_fits=fits,
               begin_blocks=begin_block_lines(paths, placement.layers_per_ipu))
    return [price_training(layers, replace(base, layers_per_ipu=placement.layers_per_ipu), systems.POD16)]


PIPELINE_KEYS = ("stages", "accumulation", "bubble_fraction", "fill_cycles", "main_cycles", "flush_cycles")
INPUT_KEYS = ("micro_batch", "accumulation", "replicas", "ipus_per_replica", "layers_per_ipu", "stage_ipus",
              "recompute", "optimizer_off_chip", "rts")


def _memory_mb(m: dict) -> dict:
    return {"ipu": m["ipu"], **{k: round(v / 1e6, 1) for k, v in m["bytes"].items()},
            "total": round(m["total"] / 1e6, 1), "fits": m["fits"], "dominant": m["dominant"]}


def run_model(name: str, html: str | None, trace: str | None, jobs: int = 2, budget_mb: float = 4096) -> None:
    start, cpu = time.perf_counter(), time.process_time()
    out: dict = {}
    if name.startswith("bert"):
        results = run_bert(name, out, jobs, budget_mb)
    elif name == "resnet50":
        results = run_resnet(out, jobs, budget_mb)
    else:
        results = run_gpt2(out, jobs, budget_mb)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = time.perf_counter() - start
    cpu = time.process_time() - cpu + children.ru_utime + children.ru_stime
    # sampled while the children ran (price_apart); the parent alone afterwards, composing
    peak_mb = max(out.pop("host_peak_mb"), _rss_mb(os.getpid()))
    for est in results:
        d = est.as_dict()
        emit(bench="pod_training", model=name, config=d["label"], system=d["system"],
             step_ms=round(1e3 * est.seconds, 3), samples_per_s=round(est.samples_per_second, 1),
             split_ms={k: round(1e3 * v / est.clock_hz, 3) for k, v in est.split.items()},
             pipeline={k: d["pipeline"][k] for k in PIPELINE_KEYS},
             memory_per_ipu_mb=[_memory_mb(m) for m in d["memory_per_ipu"]],
             off_chip_mb_per_replica=round(d["off_chip_bytes_per_replica"] / 1e6, 1), fits=d["fits"],
             collectives=d["collectives"], inputs={k: d[k] for k in INPUT_KEYS},
             compile_price_seconds=round(total, 1), compile_price_cpu_seconds=round(cpu, 1),
             compile_price_target_s=60.0,
             host_peak_mb=round(peak_mb), host_peak_target_mb=4096, notes=d["notes"],
             **{k: v for k, v in out.items() if k != "layers"})
        if html or trace:
            from softipu.frontends.torch.scale.report import save_html, save_trace

            if html:
                save_html(est, os.path.join(html, f"{d['label']}.html"))
            if trace:
                save_trace(est, os.path.join(trace, f"{d['label']}.trace.json"))
    emit(bench="pod_training", model=name, figure="layers", layers=out.get("layers"))


def table(lines: list[dict]) -> None:
    rows = [r for r in lines if "config" in r]
    print(f"{'config':<24}{'step ms':>10}{'samples/s':>12}{'bubble':>8}{'coll ms':>9}{'opt+SM ms':>10}"
          f"{'max IPU MB':>11}{'dominant':>17}{'fits':>6}{'price s':>9}{'cpu s':>8}{'peak MB':>9}")
    for r in rows:
        s = r["split_ms"]
        coll = s["gradient_reduction"] + s["weight_all_gather"]
        full = max(r["memory_per_ipu_mb"], key=lambda m: m["total"])  # the fullest IPU and its largest class
        print(f"{r['config']:<24}{r['step_ms']:>10.1f}{r['samples_per_s']:>12.1f}"
              f"{r['pipeline']['bubble_fraction']:>8.3f}{coll:>9.2f}"
              f"{s['optimizer'] + s['streaming_memory']:>10.2f}"
              f"{full['total']:>11.0f}{full['dominant']:>17}{str(r['fits']):>6}"
              f"{r['compile_price_seconds']:>9.1f}{r['compile_price_cpu_seconds']:>8.1f}{r['host_peak_mb']:>9}")


def main() -> None:
    global GPT2_VOCAB  # noqa: PLW0603 - --gpt2-vocab, read by gpt2_layers in the forked children
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=MODELS)
    parser.add_argument("--html")
    parser.add_argument("--trace")
    parser.add_argument("--jobs", type=int, default=2, help="distinct layers priced at a time, each in its "
                        "own process (default 2: this machine's cores); host peak is then the sum of the "
                        "largest this many layers' peaks")
    parser.add_argument("--host-budget-mb", type=float, default=4096, help="a further layer starts beside "
                        "the running ones only while their expected peaks and its own stay within this")
    parser.add_argument("--gpt2-vocab", type=int, default=GPT2_VOCAB, help="GPT-2's vocabulary (a smaller "
                        "one checks the rest of the configuration; the figures are then not GPT-2 XL's)")
    parser.add_argument("--piece", help=argparse.SUPPRESS)
    args = parser.parse_args()
    GPT2_VOCAB = args.gpt2_vocab  # forked children inherit it
    if args.piece:
        price_piece(args.piece)
        return
    if args.model:
        run_model(args.model, args.html, args.trace, args.jobs, args.host_budget_mb)
        return
    lines = []
    for name in MODELS:
        cmd = [sys.executable, __file__, "--model", name]
        cmd += ["--html", args.html] if args.html else []
        cmd += ["--trace", args.trace] if args.trace else []
        cmd += ["--jobs", str(args.jobs), "--host-budget-mb", str(args.host_budget_mb),
                "--gpt2-vocab", str(args.gpt2_vocab)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        for line in proc.stdout.splitlines():
            print(line, flush=True)
            if line.startswith("{"):
                lines.append(json.loads(line))
        if proc.returncode:
            emit(bench="pod_training", model=name, error=proc.stderr[-2000:])
    table(lines)


if __name__ == "__main__":
    main()
