"""PopDist-shaped queries for a program whose replicas are split over several processes.

A script launched by ``softipu run --num-instances N --num-replicas R`` (or by ``torchrun`` with
the ``POPDIST_*`` variables set) asks which replicas it holds, as Graphcore's ``popdist`` module
answers, then makes its engine with ``{"distributed.enabled": True}``
(:mod:`softipu.engine.distributed`):

>>> from softipu import popdist
>>> popdist.isPopdistEnvSet(), popdist.getNumInstances(), popdist.getInstanceIndex()
(False, 1, 0)
"""

from __future__ import annotations

import os

from softipu.engine.distributed import ENV, layout_from_environment

__all__ = ["getHostIndex", "getHostName", "getInstanceIndex", "getNumHosts", "getNumInstances",
           "getNumIpusPerReplica", "getNumLocalReplicas", "getNumTotalReplicas", "getReplicaIndexOffset",
           "isPopdistEnvSet"]


def isPopdistEnvSet() -> bool:  # noqa: N802 - popdist's names
    """Whether a launcher set the replica layout (``POPDIST_NUM_TOTAL_REPLICAS``)."""
    return bool(os.environ.get(ENV["total"], "").strip())


def getNumInstances() -> int:  # noqa: N802
    """How many processes run the program (1 outside a launcher)."""
    return layout_from_environment().instances


def getInstanceIndex() -> int:  # noqa: N802
    """This process's index among them, 0 .. instances - 1."""
    return layout_from_environment().instance


def getNumTotalReplicas() -> int:  # noqa: N802
    """The replicas of all instances together (1 when no launcher set them)."""
    return layout_from_environment().total_replicas or 1


def getNumLocalReplicas() -> int:  # noqa: N802
    """The replicas this process holds."""
    layout = layout_from_environment()
    return layout.resolve(getNumTotalReplicas())[1]


def getReplicaIndexOffset() -> int:  # noqa: N802
    """The global number of this process's first replica."""
    return layout_from_environment().resolve(getNumTotalReplicas())[0]


def getNumIpusPerReplica() -> int:  # noqa: N802
    """IPUs per replica, as the launcher was told."""
    return layout_from_environment().ipus_per_replica


def getHostIndex() -> int:  # noqa: N802
    """The host this process runs on, 0 .. hosts - 1 (torchrun's node rank, ``GROUP_RANK``; 0
    outside a launcher). ``softipu run --hosts`` runs one torchrun agent a host; its instances
    are consecutive, so host h holds replicas ``h * R / H .. (h + 1) * R / H - 1``."""
    return _env_int(ENV["host"], 0)


def getNumHosts() -> int:  # noqa: N802
    """How many hosts the instances run on (instances / instances a host; 1 outside a launcher)."""
    return max(1, getNumInstances() // _env_int(ENV["local_instances"], getNumInstances()))


def getHostName() -> str:  # noqa: N802
    """The name of this process's host as the launcher gave it (``softipu run --hosts``;
    ``SOFTIPU_HOST``), else this machine's."""
    import socket
    return os.environ.get("SOFTIPU_HOST", "").strip() or socket.gethostname()


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    return int(text) if text.lstrip("-").isdigit() else default
