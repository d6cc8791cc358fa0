"""``softipu run``: a PopRun-shaped launcher over torchrun.

``softipu run --num-instances N --num-replicas R [--ipus-per-replica K] script.py [args]`` starts
N processes of ``script.py`` on this host through ``torch.distributed.run`` (torchrun, a local
rendezvous), each with PopRun's environment (``POPDIST_NUM_TOTAL_REPLICAS=R``,
``POPDIST_NUM_LOCAL_REPLICAS=R/N``, ``POPDIST_NUM_IPUS_PER_REPLICA=K``; torchrun adds ``RANK``,
``WORLD_SIZE`` and the rendezvous address). Instance i holds replicas ``i*R/N .. (i+1)*R/N - 1``
(:mod:`softipu.popdist` tells the script). Several hosts: give torchrun's rendezvous arguments
as one string, ``--torchrun="--nnodes 2 --node-rank 0 --rdzv-backend c10d --rdzv-endpoint
host:29400"``, in place of the one-host ``--standalone`` rendezvous (untested beyond loopback).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import Any

from softipu.cli import register
from softipu.engine.distributed import ENV
from softipu.errors import OptionError

__all__ = ["launch", "torchrun_arguments"]


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num-instances", type=int, default=1, help="processes to start (PopRun's instances)")
    p.add_argument("--num-replicas", type=int, required=True, help="replicas of the program in all")
    p.add_argument("--ipus-per-replica", type=int, default=1, help="IPUs of each replica")
    p.add_argument("--torchrun", default=None, metavar="ARGS",
                   help="torchrun's rendezvous arguments as one string, instead of --standalone (one host)")
    p.add_argument("script", help="the Python script each instance runs")
    p.add_argument("args", nargs=argparse.REMAINDER, help="the script's arguments")


def torchrun_arguments(num_instances: int, num_replicas: int, ipus_per_replica: int, script: str,
                       args: list[str], extra: list[str] | None = None) -> tuple[list[str], dict[str, str]]:
    """torchrun's argument list and the environment the instances need (checked)."""
    if num_instances < 1 or num_replicas < 1 or ipus_per_replica < 1:
        raise OptionError("softipu run: --num-instances, --num-replicas and --ipus-per-replica must be >= 1")
    if num_replicas % num_instances:
        raise OptionError(f"softipu run: {num_replicas} replicas do not split evenly over {num_instances} "
                          "instances; give a --num-replicas divisible by --num-instances")
    env = {ENV["total"]: str(num_replicas), ENV["local"]: str(num_replicas // num_instances),
           ENV["ipus"]: str(ipus_per_replica)}
    where = list(extra) if extra is not None else ["--standalone"]
    return [*where, "--nproc-per-node", str(num_instances), "--max-restarts", "0", script, *args], env


def launch(num_instances: int, num_replicas: int, script: str, args: list[str] | None = None, *,
           ipus_per_replica: int = 1, extra: list[str] | None = None) -> int:
    """Run ``script`` as ``num_instances`` processes; the exit status (non-zero if any failed)."""
    argv, env = torchrun_arguments(num_instances, num_replicas, ipus_per_replica, script, list(args or []),
                                   extra)
    os.environ.pop(ENV["offset"], None)  # each instance's offset follows from its rank
    os.environ.update(env)
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    try:
        torchrun.main(argv)
    except ChildFailedError as exc:
        failed = ", ".join(f"instance {rank} (exit code {f.exitcode})"
                           for rank, f in sorted(exc.failures.items()))
        print(f"softipu run: {failed} failed; see its output above", file=sys.stderr)
        return 1
    return 0


def _run(ns: argparse.Namespace, out: Any) -> int:
    extra = shlex.split(ns.torchrun) if ns.torchrun is not None else None
    return launch(ns.num_instances, ns.num_replicas, ns.script, ns.args, ipus_per_replica=ns.ipus_per_replica,
                  extra=extra)


register("run", "run a script as several processes, each holding some of the replicas (PopRun)",
         _arguments, _run)
