"""Issue 13's functional all-reduce: R replicas x N float32 through softipu.collectives, beside
numpy's sum over the replica axis plus the broadcast back, in the same run.

Prints one JSON line per figure. Run: ``.venv/bin/python bench/bench_collectives.py`` (16 x 1 M);
``--full`` for the issue's 16 x 16 M (about 9 GiB of host memory: storage holds the input, the
ring's working copies and the output, one row per replica).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

import softipu as sp
from softipu import collectives as C
from softipu import program as P


def emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


def numpy_all_reduce(values: np.ndarray, out: np.ndarray) -> None:
    """The baseline: the sum over the replica axis, broadcast back to every replica."""
    total = values.sum(axis=0)
    out[...] = total


def build(replicas: int, n: int, method: C.Method):
    g = sp.Graph(sp.targets.GC200, replication_factor=replicas)
    x = g.add_variable(sp.float32, (n,), "x")
    # Laid out as GCL wants a collective's input: every tile holds the same columns of each of the
    # replicas' fragments (a linear map puts each fragment on 1/R of the tiles).
    C.map_by_columns(g, x.reshape(replicas, n // replicas))
    prog = P.Sequence()
    y = C.all_reduce(g, x, prog, options={"method": method})
    return g, prog, x, y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--replicas", type=int, default=16)
    parser.add_argument("--elements", type=int, default=1 << 20)
    parser.add_argument("--full", action="store_true", help="16 replicas x 16 M float32 (the issue's size)")
    parser.add_argument("--method", default="clockwise_ring")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    replicas, n = (16, 16 << 20) if args.full else (args.replicas, args.elements)
    method = C.Method[args.method.upper()]

    start = time.perf_counter()
    g, prog, x, y = build(replicas, n, method)
    eng = sp.Engine(g, [prog])
    build_s = time.perf_counter() - start
    values = np.random.default_rng(0).standard_normal((replicas, n), dtype=np.float32)
    eng.write_tensor(x, values)
    out = np.empty_like(values)
    soft, base = [], []
    for _ in range(args.runs):  # alternate, so both see the same machine load
        t0 = time.perf_counter()
        eng.run(0)
        soft.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        numpy_all_reduce(values, out)
        base.append(time.perf_counter() - t0)
    got = eng.read_tensor(y)
    # The ring adds in another order than numpy's pairwise sum: within a float32 bound.
    bound = float(np.abs(values).sum(0).max()) * replicas * float(np.finfo(np.float32).eps)
    err = float(np.abs(got - out).max())
    emit(bench="all_reduce", replicas=replicas, elements=n, method=method.name,
         softipu_s=min(soft), numpy_s=min(base), ratio=min(soft) / min(base),
         softipu_runs_s=soft, numpy_runs_s=base, build_and_compile_s=build_s,
         max_abs_error=err, error_bound=bound, ok=err <= bound,
         modeled_cycles_per_run=eng.report.cycles // args.runs,
         modeled_seconds_per_run=eng.report.seconds / args.runs)


if __name__ == "__main__":
    main()
