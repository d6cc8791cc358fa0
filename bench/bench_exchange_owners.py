"""Which steps own the exchange code of a whole model, on its fullest tile and on the mean tile.

Exchange code is counted per program step as the compiler's pricer adds it
(``compiler/costs.StepPricer``: the send and receive regions of each compute set's and copy's
exchange, once per compute set, once per outlined subgraph; ``Target.exchange_code_bytes_per_region``
a region): this wraps the pricer's ``price_execute`` / ``price_copy`` and records each step's
regions per tile. Steps of repeated layers are grouped by name with numbers replaced by ``N``
(``--raw``: each step by its own name).

Run: ``.venv/bin/python bench/bench_exchange_owners.py bert_large:fp16:18:128 --amp 0.15``
(a configuration as ``bench_fidelity.py --configs`` takes it; estimate-only, as that bench prices it).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def owners(config: str, amp: float | None, outline: bool = True) -> dict:
    """{"fullest": tile, "tile_kib", "mean_kib", "steps": [(name, regions per tile)]}."""
    import numpy as np  # noqa: PLC0415
    import torch  # noqa: PLC0415

    import softipu as sp  # noqa: PLC0415
    import softipu.torch as st  # noqa: PLC0415
    from softipu.compiler import costs  # noqa: PLC0415
    from softipu.frontends.torch.export import export_program  # noqa: PLC0415
    from softipu.frontends.torch.lower import lower_program  # noqa: PLC0415

    sys.path.insert(0, HERE)
    import bench_fidelity  # noqa: PLC0415
    import fidelity_models  # noqa: PLC0415

    model, precision, batch, seq = config.split(":")
    steps: list[tuple[str, np.ndarray]] = []

    def recording(method):
        def wrapped(self, node, index):
            before = self.exchange_code_regions.copy()
            step = method(self, node, index)
            added = self.exchange_code_regions - before
            if added.any():
                steps.append((step.name, added))
            return step
        return wrapped

    saved = costs.StepPricer.price_execute, costs.StepPricer.price_copy
    costs.StepPricer.price_execute, costs.StepPricer.price_copy = (recording(m) for m in saved)
    try:
        tgt = bench_fidelity.target()
        net, args, names = fidelity_models.build(model, int(batch), int(seq) or 128)
        with torch.no_grad():
            ep = export_program(net, args, {})
        partials = bench_fidelity.PARTIALS.get((model, precision), "float")
        opts = st.Options(target=tgt, precision=precision, partials_type=partials,
                          **({} if amp is None else {"available_memory_proportion": amp}))
        lowered = lower_program(ep, opts, names)
        options = {"debug.allowOutOfMemory": True} | ({"opt.enableOutlining": True} if outline else {})
        eng = sp.Engine(lowered.graph, list(lowered.programs), estimate_only=True, options=options)
    finally:
        costs.StepPricer.price_execute, costs.StepPricer.price_copy = saved
    mem = eng.report.tile_memory
    code = eng.report.memory_by_category_per_tile()["exchange_code"]
    return {"fullest": int(np.argmax(mem)), "tile_kib": float(mem.max()) / 1024,
            "mean_kib": float(mem.mean()) / 1024, "code": code,
            "per_region": tgt.exchange_code_bytes_per_region, "steps": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="model:precision:batch:seq, e.g. bert_large:fp16:18:128")
    parser.add_argument("--amp", type=float, help="availableMemoryProportion (default PopTorch's)")
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--raw", action="store_true", help="each step by its own name")
    parser.add_argument("--no-outlining", action="store_true")
    a = parser.parse_args()
    found = owners(a.config, a.amp, not a.no_outlining)
    tile, per = found["fullest"], found["per_region"]
    print(f"{a.config} amp {a.amp}: fullest tile {tile} {found['tile_kib']:.1f} KiB, "
          f"mean tile {found['mean_kib']:.1f} KiB")
    for label, pick in (("fullest tile", lambda r: float(r[tile])), ("mean tile", lambda r: float(r.mean()))):
        total: collections.Counter = collections.Counter()
        for name, regions in found["steps"]:
            total[name if a.raw else re.sub(r"_\d+", "_N", name)] += pick(regions) * per
        code = pick(found["code"])
        print(f"== {label}: exchange code {code / 1024:.1f} KiB; top owners")
        for name, nbytes in total.most_common(a.top):
            print(f"  {nbytes / 1024:8.2f} KiB  {name}")


if __name__ == "__main__":
    main()
