"""One program of 8 replicas, run whole in one process or split over the processes of a launcher.

``python -m softipu run --num-instances 2 --num-replicas 8 tests/distributed_script.py --out DIR``
runs it as two instances (each saves its replicas' results as ``DIR/rank{i}.npz``);
:func:`run_program` with ``distributed=False`` runs all 8 replicas here. Used by
tests/test_distributed.py and bench/bench_distributed.py. ``--die`` makes instance 1 exit just
before the collectives (a process failure mid-run).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

import softipu as sp
from softipu import collectives as C
from softipu import popdist
from softipu import program as P
from softipu.collectives import CollectiveOperator, Method

REPLICAS = 8


def values(numel: int) -> tuple[np.ndarray, np.ndarray]:
    """Every replica's inputs: floats with a wide spread (a sum's order shows in its bits), ints."""
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((REPLICAS, numel)).astype(np.float32) * np.float32(1e3)) ** 3
    k = rng.integers(-1000, 1000, (REPLICAS, REPLICAS, 3)).astype(np.int32)
    return x, k


def build(numel: int) -> tuple[sp.Graph, P.Sequence, dict[str, sp.Tensor]]:
    g = sp.Graph(sp.targets.ipu_model(tiles=4), replication_factor=REPLICAS)
    x = g.add_variable(sp.float32, (numel,), "x")
    k = g.add_variable(sp.int32, (REPLICAS, 3), "k")
    index = g.add_variable(sp.uint32, (1,), "index")
    fed = g.add_variable(sp.float32, (4,), "fed")
    for t in (x, k, index, fed):
        sp.ops.map_linearly(g, t)
    const = g.add_replication_index_constant()
    g.set_tile_mapping(const, 0)
    prog = P.Sequence()
    prog.add(P.Copy(const, index))
    prog.add(P.Copy(g.add_host_to_device_fifo("feed", sp.float32, 4), fed))
    out = {"x": x, "index": index, "fed": fed,
           "sum": C.all_reduce(g, x, prog, options={"method": Method.BIDIRECTIONAL_RING_PAIR}, name="sum"),
           "max": C.all_reduce(g, x, prog, op=CollectiveOperator.MAX, name="max",
                               options={"method": Method.CLOCKWISE_RING}),
           "gathered": C.all_gather(g, x, prog, name="gathered"),
           "exchanged": C.all_to_all(g, k, prog, name="exchanged")}
    out["k"] = k
    return g, prog, out


def run_program(numel: int, distributed: bool, die: int | None = None, timeout: int = 20,
                repeats: int = 1, reference: bool = False) -> tuple[dict, dict]:
    """(results of this process's replicas by name, timings in seconds: each run's). With ``die``
    instance 1 exits with that code once the engines are made, before the collectives run."""
    t0 = time.perf_counter()
    g, prog, out = build(numel)
    options = {"debug.allowOutOfMemory": True,  # the bench's sizes exceed 4 tiles; host timing only
               "engine.reference": reference}
    if distributed:
        options |= {"distributed.enabled": True, "distributed.timeoutSeconds": timeout}
    eng = sp.Engine(g, [prog], options=options)
    t1 = time.perf_counter()
    first, local = 0, REPLICAS
    if distributed and popdist.isPopdistEnvSet():  # softipu run (PopRun's variables)
        first, local = popdist.getReplicaIndexOffset(), popdist.getNumLocalReplicas()
    elif distributed:  # plain torchrun: an even split by rank
        local = REPLICAS // popdist.getNumInstances()
        first = popdist.getInstanceIndex() * local
    x, k = values(numel)
    eng.write_tensor(out["x"], x[first : first + local])
    eng.write_tensor(out["k"], k[first : first + local])
    for r in range(first, first + local):  # per-replica connections by global replica number
        eng.connect_stream("feed", np.full((1, 4), r * 10 + 0.5, np.float32), replica=r)
    if die is not None and popdist.getInstanceIndex() == 1:
        os._exit(die)  # a process lost before the collectives
    runs = []
    for _ in range(repeats):
        t2 = time.perf_counter()
        eng.run(0)
        runs.append(time.perf_counter() - t2)
    results = {name: np.asarray(eng.read_tensor(t)).reshape((local, *t.shape)) for name, t in out.items()}
    return results, {"compile_s": t1 - t0, "runs_s": runs, "first": first, "local": local}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--numel", type=int, default=64)
    ap.add_argument("--die", action="store_true", help="instance 1 exits (code 3) before the collectives")
    ap.add_argument("--lose", action="store_true",
                    help="after the runs, once more with instance 1 leaving (code 0, so torchrun waits)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--reference", action="store_true", help="also run the reference interpreter")
    ns = ap.parse_args()
    rank = popdist.getInstanceIndex()
    try:
        results, times = run_program(ns.numel, distributed=True, die=3 if ns.die else None,
                                     timeout=5 if ns.die else 60,
                                     repeats=ns.repeats)
    except sp.errors.SoftIPUError as exc:
        with open(os.path.join(ns.out, f"error{rank}.txt"), "w") as f:
            f.write(f"{type(exc).__name__}: {exc}")
        raise SystemExit(2) from None
    np.savez(os.path.join(ns.out, f"rank{rank}.npz"), **results)
    if ns.reference:
        np.savez(os.path.join(ns.out, f"rank{rank}_ref.npz"), **run_program(ns.numel, True, reference=True)[0])
    with open(os.path.join(ns.out, f"times{rank}.json"), "w") as f:
        json.dump({**times, "instances": popdist.getNumInstances(), "popdist": popdist.isPopdistEnvSet(),
                   "host": popdist.getHostIndex(), "hosts": popdist.getNumHosts(),
                   "host_name": popdist.getHostName()}, f)
    if ns.lose:
        try:
            run_program(ns.numel, True, die=0, timeout=5)
        except sp.errors.SoftIPUError as exc:
            with open(os.path.join(ns.out, f"lost{rank}.txt"), "w") as f:
                f.write(f"{type(exc).__name__}: {exc}")


if __name__ == "__main__":
    main()
