"""Issue 19 / F3: exchange code and compile CPU of one training convolution layer (price_layer).

Prices ``Conv2d(C, C, 3, padding=1)`` on a ``(N, C, H, H)`` fp16 activation for one training
step on the GC200 (``softipu.frontends.torch.scale.price_layer``, estimate-only) and prints one JSON
line per run: the layer's exchange code (all tiles, MB),
forward/backward cycles and the CPU seconds of the pricing. ``--baseline DIR`` runs the same in a
subprocess with the softipu source tree in DIR (an earlier checkout: ``git archive <commit> src |
tar -x -C DIR``) and prints it beside, same run. Run:
``.venv/bin/python bench/bench_conv_layer_exchange.py --channels 512 --batch 4 --size 7 --repeat 3``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def child(channels: int, batch: int, size: int) -> dict:
    import torch  # noqa: PLC0415

    import softipu as sp  # noqa: PLC0415
    from softipu.frontends.torch.scale import price_layer  # noqa: PLC0415

    start = time.process_time()
    cost = price_layer("conv", lambda: torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                       (batch, channels, size, size), precision="fp16", target=sp.targets.GC200)
    cpu = time.process_time() - start
    mem = cost.extra["compile_memory"]
    return {"exchange_code_mb": round(mem["exchange_code"] / 1e6, 2), "cpu_s": round(cpu, 2),
            "forward": cost.forward, "backward": cost.backward}


def run(args: argparse.Namespace, src: str | None) -> dict:
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = os.path.join(src, "src") + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, __file__, "--child", "--channels", str(args.channels), "--batch", str(args.batch),
           "--size", str(args.size)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--channels", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--baseline", help="a directory holding an earlier checkout's src/")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.channels, args.batch, args.size)))
        return
    for rep in range(args.repeat):
        row = {"bench": "conv_layer_exchange", "channels": args.channels, "batch": args.batch,
               "size": args.size, "rep": rep, **run(args, None)}
        if args.baseline:
            row["baseline"] = run(args, args.baseline)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
