"""Reductions over a transposed view, estimate-only on a GC200: a GPT-2 head's logits.

The LM head's matmul leaves the logits stored ``(vocab, tokens)`` (poplin's output layout for
``W @ x.T``: blocks of vocab rows x token columns on each tile) and the loss reads them
``(tokens, vocab)``: the softmax's max over the vocabulary, and (as a decoder bias gradient) the
sum over the tokens. Each case runs in a child process of its own and prints one JSON line: the
reduce's plan (lowering) seconds, compile + price seconds, the process's host peak, modeled cycles
and the fullest tile. Compare a change with the previous code by running the bench on both (the
host peak is the figure issue 14 sets: a GPT-2 XL head once grew past 14 GB on its amax).

    python bench/bench_reduce_transposed.py                    # (2048, 50257) fp16, both cases
    python bench/bench_reduce_transposed.py --tokens 512 --vocab 8192
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

CASES = ("amax_over_vocab", "sum_over_tokens")


def child(case: str, tokens: int, vocab: int, hidden: int) -> None:
    import softipu as sp
    from softipu import program as P
    from softipu.ops.matmul import create_matmul_input_lhs, create_matmul_input_rhs, matmul
    from softipu.ops.reduce import ReduceOp, reduce

    g = sp.Graph(sp.targets.GC200)
    w = create_matmul_input_lhs(g, sp.float16, (vocab, hidden), (hidden, tokens), name="w")
    xt = create_matmul_input_rhs(g, sp.float16, (vocab, hidden), (hidden, tokens), name="x_t")
    prog = P.Sequence()
    logits = matmul(g, w, xt, prog).T  # (tokens, vocab), stored (vocab, tokens)
    t0 = time.perf_counter()
    if case == "amax_over_vocab":
        reduce(g, logits, prog, dims=1, op=ReduceOp.MAX)
    else:
        reduce(g, logits, prog, dims=0)
    plan = time.perf_counter() - t0
    eng = sp.Engine(g, [prog], estimate_only=True, options={"debug.allowOutOfMemory": True})
    eng.run(0)
    price = time.perf_counter() - t0 - plan
    steps = [s for s in eng.report.steps if str(s["name"]).startswith("reduce")]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"figure": f"reduce_transposed_{case}", "target": "GC200", "dtype": "float16",
                      "logits": [tokens, vocab], "stored": [vocab, tokens], "reduce_plan_s": round(plan, 2),
                      "compile_price_s": round(price, 2), "host_peak_mb": round(peak),
                      "reduce_cycles": int(sum(int(s["cycles"]) for s in steps)),
                      "reduce_steps": {str(s["name"]): int(s["cycles"]) for s in steps},
                      "max_tile_kib": round(max(eng.report.tile_memory) / 1024, 1)}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--hidden", type=int, default=1600)
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        child(args.case, args.tokens, args.vocab, args.hidden)
        return
    for case in CASES:
        subprocess.run([sys.executable, __file__, "--case", case, "--tokens", str(args.tokens),
                        "--vocab", str(args.vocab), "--hidden", str(args.hidden)], check=True)


if __name__ == "__main__":
    main()
