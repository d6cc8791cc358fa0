"""Issue 14 item 1: data-parallel training with replicationFactor, what the gradient all-reduces cost.

One training step of a small transformer encoder (2 layers, d=32, micro-batch 2, SGD) with
replicationFactor R = 1, 2, 4 on an ipu_model(16 tiles) chip (R = 8 runs out of tile 0's memory:
the small gradients all live there, and so do their 26 collectives' exchange code). One JSON line per R:

* ``cycles`` of the step beside ``baseline_cycles`` (R = 1, same model and micro-batch: every
  replica runs the same step in lock step, so the difference is the all-reduces);
* ``all_reduce_cycles``: the collectives' steps (``upd/all_reduce/...``: compute sets, copies and
  ``CrossReplicaCopy`` steps), ``link_cycles`` (the ``CrossReplicaCopy`` steps alone) and
  ``estimate_cycles``: ``links.collective_cost(..., compute=True)`` summed over the gradients
  (the estimate-only model of the same all-reduces: ring steps + adds);
  With MEAN and each gradient's layout copies (GCL's rearrangePre/Post) priced, the two agree
  within a few % per gradient; the merged all-reduce's copies gather a concatenation of unevenly
  placed gradients, which the model spreads evenly over the tiles (its estimate is lower there);
* ``lower_s`` / ``compile_s`` of this R beside R = 1's;
* ``merged_*``: the same with PopART's ``mergeAllReduceCollectives`` (one all-reduce of all the
  gradients, concatenated).

Run: ``.venv/bin/python bench/bench_replication.py [--replicas 2 4]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402, N812
from torch import nn  # noqa: E402

import softipu as sp  # noqa: E402
import softipu.poptorch as poptorch  # noqa: E402
from softipu.collectives import auto_method  # noqa: E402
from softipu.target import links, systems  # noqa: E402

CHIP = sp.targets.ipu_model(tiles=16, bytes_per_tile=256 * 1024)


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(*[nn.TransformerEncoderLayer(32, 2, 64, dropout=0.0, batch_first=True)
                                      for _ in range(2)])
        self.head = nn.Linear(32, 4)

    def forward(self, x, y):
        out = self.head(self.layers(x).mean(1))
        return out, F.cross_entropy(out, y)


def step(replicas: int, merge: bool = False) -> dict:
    torch.manual_seed(0)
    net = Encoder()
    o = poptorch.Options().replicationFactor(replicas).setTarget(CHIP).logCycleCount(True)
    o._Popart.set("replicatedCollectivesSettings.mergeAllReduceCollectives", merge)
    model = poptorch.trainingModel(net, o, torch.optim.SGD(net.parameters(), lr=0.01))
    x, y = torch.randn(replicas * 2, 8, 32), torch.randint(0, 4, (replicas * 2,))
    model(x, y)
    eng = model._impl.engine
    steps = eng.executable.steps
    counted = [(steps[i], c) for i, c in enumerate(eng.log.step_counts) if c]
    collective = sum(s.cycles * c for s, c in counted if "upd/all_reduce/" in s.name)
    link = sum(s.cycles * c for s, c in counted if s.op == "CrossReplicaCopy")
    estimate = 0
    if replicas > 1:
        system = systems.smallest_fabric(replicas, CHIP)
        names = [s.name for s in steps]
        for pname, p in net.named_parameters():
            nbytes = p.numel() * 4
            method = auto_method(system, "all_reduce", nbytes, replicas).name.lower()
            # Gradients laid out otherwise than the rings want are copied in and out (GCL's
            # rearrangePre/Post): read from the built program which ones were, as a user reads
            # the layout of their tensors; the model then prices those copies.
            rearranged = any(f"upd/all_reduce/{pname}/rearranged" in n for n in names)
            estimate += links.collective_cost(system, "all_reduce", nbytes, replicas, method=method,
                                              op="mean", rearranged=rearranged).cycles
        if merge:
            total = sum(p.numel() * 4 for p in net.parameters())
            method = auto_method(system, "all_reduce", total, replicas).name.lower()
            moved = any("merged_float32/rearranged" in n for n in names)
            estimate = links.collective_cost(system, "all_reduce", total, replicas, method=method, op="mean",
                                             rearranged=moved).cycles
    seconds = model._impl.compile_seconds
    return {"cycles": model.cycleCount(), "all_reduce_cycles": collective, "link_cycles": link,
            "estimate_cycles": estimate, "gradients": len(list(net.parameters())),
            "lower_s": round(seconds["lower"], 2), "compile_s": round(seconds["compile"], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, nargs="+", default=[2, 4])
    args = parser.parse_args()
    base = step(1)
    for r in args.replicas:
        got = step(r)
        merged = step(r, merge=True)
        print(json.dumps({"bench": "replication_training_step", "replicas": r, **got,
                          "baseline_cycles": base["cycles"], "baseline_lower_s": base["lower_s"],
                          "baseline_compile_s": base["compile_s"],
                          "all_reduce_share": round(got["all_reduce_cycles"] / got["cycles"], 3),
                          "merged_cycles": merged["cycles"],
                          "merged_all_reduce_cycles": merged["all_reduce_cycles"],
                          "merged_estimate_cycles": merged["estimate_cycles"],
                          "merged_link_cycles": merged["link_cycles"],
                          "merged_lower_s": merged["lower_s"], "merged_compile_s": merged["compile_s"]}),
              flush=True)


if __name__ == "__main__":
    main()
