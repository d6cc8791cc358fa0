"""Issue 14 item 3: what recomputation and tensor locations change on a small BERT-style encoder.

Run: ``.venv/bin/python bench/bench_memory_savers.py``. Prints one JSON line per configuration with
its figures beside the baseline's of the same run (recomputation: ``none``; locations: the
optimizer state on chip with the same replicas): bytes kept for the backward (``saved_bytes``), the
summary's activations and optimizer-state bytes on chip per replica, Streaming Memory bytes per
replica, the whole chip's memory, modeled cycles per step and the largest weight difference from
the baseline after the same steps (0 or rounding: the savers change memory and cycles, never
results). Sharding under LAMB (its norms' partial sums all-reduced) against LAMB with the state
whole, and sharded gradient accumulators (gradient accumulation 2) against whole ones with the same
sharded optimizer state, at R = 4.
"""

from __future__ import annotations

import copy
import json
import time

import torch
import torch.nn.functional as F  # noqa: N812

import softipu as sp
import softipu.poptorch as poptorch
import softipu.torch as st


class Encoder(torch.nn.Module):
    """Two post-norm transformer layers (d 64, 4 heads, FFN 256) and a token-classification head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Linear(32, 64)
        self.layers = torch.nn.ModuleList(torch.nn.TransformerEncoderLayer(64, 4, 256, dropout=0.0,
                                                                          batch_first=True) for _ in range(2))
        self.head = torch.nn.Linear(64, 8)

    def forward(self, x, y):
        h = self.embed(x)
        for layer in self.layers:
            h = layer(h)
        out = self.head(h)
        return F.cross_entropy(out.flatten(0, 1), y.flatten())


def _run(module: torch.nn.Module, options: st.Options, replicas: int, steps: int = 2,
         lamb: bool = False) -> dict:
    optimizer = poptorch.optim.LAMB(module.parameters(), lr=1e-3) if lamb else \
        torch.optim.Adam(module.parameters(), lr=1e-3)
    model = st.training_model(module, optimizer, options)
    start = time.perf_counter()
    batch = 4 * replicas * options.gradient_accumulation
    for i in range(steps):
        g = torch.Generator().manual_seed(i)
        x = torch.randn(batch, 16, 32, generator=g)
        model(x, torch.randint(0, 8, (batch, 16), generator=g))
    s = model.summary()
    loc = s["locations"]["optimizer_state"]
    return {"saved_bytes": model.lowered.saved_bytes, "activations": s["memory"]["activations"],
            "optimizer_state_on_chip": s["memory"]["optimizer_state"],
            "gradients_on_chip": s["memory"]["gradients"],
            "streaming_bytes": loc["streaming_bytes_per_replica"], "sharded_over": loc["sharded_over"],
            "memory_total": s["memory_total"], "cycles": s["cycles_per_call"],
            "backward_cycles": s["cycles"]["backward"], "seconds": round(time.perf_counter() - start, 2),
            "weights": [p.detach().clone() for p in module.parameters()]}


def _line(kind: str, config: str, got: dict, base: dict) -> None:
    diff = max(float((a - b).abs().max()) for a, b in zip(got.pop("weights"), base["weights"], strict=True))
    keys = [k for k in got if k != "seconds"]
    print(json.dumps({"bench": "memory_savers", "kind": kind, "config": config,
                      **{k: got[k] for k in keys}, **{f"baseline_{k}": base[k] for k in keys},
                      "max_weight_diff": diff, "seconds": got["seconds"]}))


def main() -> None:
    chip = sp.targets.ipu_model(tiles=16, bytes_per_tile=2 * 1024 * 1024)
    torch.manual_seed(0)
    proto = Encoder()
    base = _run(copy.deepcopy(proto), st.Options(target=chip), 1)
    for mode in ("standard", "norm_only", "recompute_all"):
        got = _run(copy.deepcopy(proto), st.Options(target=chip, recomputation=mode), 1)
        _line("recomputation", mode, got, base)
    placed = {"off_chip": {"on_chip": False}, "sharded": {"sharded": True, "min_elements_sharded": 1024},
              "sharded_off_chip": {"on_chip": False, "sharded": True, "min_elements_sharded": 1024}}
    for replicas, configs in ((1, ("off_chip",)), (4, ("sharded", "sharded_off_chip"))):
        plain = _run(copy.deepcopy(proto), st.Options(target=chip, replication_factor=replicas), replicas)
        for config in configs:
            opts = st.Options(target=chip, replication_factor=replicas,
                              tensor_locations={"optimizer": placed[config]})
            _line("optimizer_location", f"{config} R={replicas}",
                  _run(copy.deepcopy(proto), opts, replicas), plain)
    sharded = placed["sharded"]
    plain = _run(copy.deepcopy(proto), st.Options(target=chip, replication_factor=4), 4, lamb=True)
    opts = st.Options(target=chip, replication_factor=4, tensor_locations={"optimizer": sharded})
    _line("optimizer_location", "sharded LAMB R=4", _run(copy.deepcopy(proto), opts, 4, lamb=True), plain)
    opts = st.Options(target=chip, replication_factor=4, gradient_accumulation=2,
                      tensor_locations={"optimizer": sharded})
    plain = _run(copy.deepcopy(proto), opts, 4)
    opts = opts.replace(tensor_locations={"optimizer": sharded, "accumulator": sharded})
    _line("accumulator_location", "sharded GA=2 R=4", _run(copy.deepcopy(proto), opts, 4), plain)


if __name__ == "__main__":
    main()
