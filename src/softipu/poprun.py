"""``softipu run``: a PopRun-shaped launcher over torchrun.

``softipu run --num-instances N --num-replicas R [--ipus-per-replica K] script.py [args]`` starts
N processes of ``script.py`` on this host through ``torch.distributed.run`` (torchrun, a local
rendezvous), each with PopRun's environment (``POPDIST_NUM_TOTAL_REPLICAS=R``,
``POPDIST_NUM_LOCAL_REPLICAS=R/N``, ``POPDIST_NUM_IPUS_PER_REPLICA=K``; torchrun adds ``RANK``,
``WORLD_SIZE`` and the rendezvous address). Instance i holds replicas ``i*R/N .. (i+1)*R/N - 1``
(:mod:`softipu.popdist` tells the script). Several hosts: give torchrun's rendezvous arguments
as one string, ``--torchrun="--nnodes 2 --node-rank 0 --rdzv-backend c10d --rdzv-endpoint
host:29400"``, in place of the one-host ``--standalone`` rendezvous (untested beyond loopback).

``--hosts a,b`` (PopRun's ``--host``) deals the instances out over hosts, ``N / H`` a host, one
torchrun agent a host (its node rank, ``GROUP_RANK``, is the host index
``softipu.popdist.getHostIndex()``; ``SOFTIPU_HOST`` its name), joined by a static rendezvous
whose store the first host keeps. Loopback names (``localhost``, ``127.0.0.1``) start every
agent here as a separate host: separate agents, rendezvous over TCP, gloo between them, which is
how CI tests a multi-host run on one machine. A remote host needs its agent started there:
``softipu run`` says how.
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import subprocess
import sys
import time
from typing import Any

from softipu.cli import register
from softipu.engine.distributed import ENV
from softipu.errors import OptionError

__all__ = ["launch", "launch_hosts", "torchrun_arguments"]
LOOPBACK = ("localhost", "127.0.0.1", "::1")


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num-instances", type=int, default=1, help="processes to start (PopRun's instances)")
    p.add_argument("--num-replicas", type=int, required=True, help="replicas of the program in all")
    p.add_argument("--ipus-per-replica", type=int, default=1, help="IPUs of each replica")
    p.add_argument("--torchrun", default=None, metavar="ARGS",
                   help="torchrun's rendezvous arguments as one string, instead of --standalone (one host)")
    p.add_argument("--hosts", default=None, metavar="H1,H2,...",
                   help="hosts to deal the instances out over (PopRun's --host); loopback names run "
                        "each host's agent here")
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


def launch_hosts(hosts: list[str], num_instances: int, num_replicas: int, script: str,
                 args: list[str] | None = None, *, ipus_per_replica: int = 1, timeout_s: float = 600) -> int:
    """Run ``script`` as ``num_instances`` processes dealt out over ``hosts`` (one torchrun agent
    a host, a static rendezvous kept by the first); every host must be a loopback name (each
    agent starts here). The exit status: non-zero if any host's agent failed (the others are
    then stopped)."""
    hosts = [h.strip() for h in hosts if h.strip()]
    if not hosts or num_instances % len(hosts):
        raise OptionError(f"softipu run: {num_instances} instances do not split evenly over the "
                          f"{len(hosts)} hosts {hosts}; give --num-instances a multiple of the hosts")
    remote = [h for h in hosts if h not in LOOPBACK]
    if remote:
        per = num_instances // len(hosts)
        raise OptionError(f"softipu run: cannot start agents on {remote} from here (no remote shell); "
                          f"on each host h run torchrun --nnodes {len(hosts)} --node-rank h "
                          f"--nproc-per-node {per} --master-addr {hosts[0]} --master-port PORT {script} with "
                          f"{ENV['total']}={num_replicas} {ENV['local']}={num_replicas // num_instances} set")
    per_host = num_instances // len(hosts)
    argv, env = torchrun_arguments(num_instances, num_replicas, ipus_per_replica, script, list(args or []),
                                   ["--nnodes", str(len(hosts)), "--master-addr", "127.0.0.1",
                                    "--master-port", str(_free_port())])
    argv[argv.index("--nproc-per-node") + 1] = str(per_host)
    base = {k: v for k, v in os.environ.items() if k != ENV["offset"]} | env
    agents = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--node-rank", str(i), *argv],
                               env=base | {"SOFTIPU_HOST": host}) for i, host in enumerate(hosts)]
    return _wait(agents, hosts, timeout_s)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(agents: list[subprocess.Popen], hosts: list[str], timeout_s: float) -> int:
    """Every agent's end; the first to fail (or the timeout) stops the others."""
    deadline = time.monotonic() + timeout_s
    while any(a.poll() is None for a in agents):
        failed = [i for i, a in enumerate(agents) if a.returncode not in (None, 0)]
        if failed or time.monotonic() > deadline:
            for a in agents:
                if a.poll() is None:
                    a.terminate()
            for a in agents:
                a.wait()
            break
        time.sleep(0.05)
    bad = [f"host {i} ({hosts[i]}, exit code {a.returncode})" for i, a in enumerate(agents) if a.returncode]
    if bad:
        print(f"softipu run: {', '.join(bad)} failed; see its output above", file=sys.stderr)
    return 1 if bad else 0


def _run(ns: argparse.Namespace, out: Any) -> int:
    if ns.hosts is not None:
        if ns.torchrun is not None:
            raise OptionError("softipu run: give --hosts or --torchrun, not both")
        return launch_hosts(ns.hosts.split(","), ns.num_instances, ns.num_replicas, ns.script, ns.args,
                            ipus_per_replica=ns.ipus_per_replica)
    extra = shlex.split(ns.torchrun) if ns.torchrun is not None else None
    return launch(ns.num_instances, ns.num_replicas, ns.script, ns.args, ipus_per_replica=ns.ipus_per_replica,
                  extra=extra)


register("run", "run a script as several processes, each holding some of the replicas (PopRun)",
         _arguments, _run)
