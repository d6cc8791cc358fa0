"""GCL's vocabulary: reduction operators, replica groups, ring methods and poplibs' AUTO choice.

Replica groups follow GCL's ``CommGroup{type, replicaGroupSize}`` (ipu-facts-scale §2-3):

* ``ALL`` — every replica in one group (size 0 or R);
* ``CONSECUTIVE`` — size k: ``{0..k-1}, {k..2k-1}, ...``;
* ``ORTHOGONAL`` — size k, with m = R / k: ``{0, m, 2m, ...}, {1, m+1, ...}, ...``.

The group size must divide the replication factor.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from softipu.ops.common import OpError
from softipu.target import links
from softipu.target.systems import System

__all__ = ["CollectiveError", "CollectiveOperator", "CommGroupType", "CommGroup", "Method", "Groups",
           "auto_method"]


class CollectiveError(OpError):
    """A collective got a group, shape, dtype, operator or option it cannot work with."""


class CollectiveOperator(enum.Enum):
    """GCL's ``CollectiveOperator``."""

    ADD = "add"
    MEAN = "mean"  # the sum divided by the group size
    MUL = "mul"
    MIN = "min"
    MAX = "max"
    LOGICAL_AND = "logical_and"  # bool tensors
    LOGICAL_OR = "logical_or"
    SQUARE_ADD = "square_add"  # each replica's values squared, then added
    LOCAL = "local"  # no reduction: each replica keeps its own values


class CommGroupType(enum.Enum):
    ALL = "all"
    CONSECUTIVE = "consecutive"
    ORTHOGONAL = "orthogonal"


@dataclass(frozen=True, slots=True)
class CommGroup:
    """GCL's ``CommGroup``: which replicas take part together. ``replica_group_size`` 0 means all."""

    type: CommGroupType = CommGroupType.ALL
    replica_group_size: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.type, CommGroupType):
            raise CollectiveError(f"CommGroup type must be a CommGroupType, got {self.type!r}")
        if not isinstance(self.replica_group_size, int) or self.replica_group_size < 0:
            raise CollectiveError(f"CommGroup replica_group_size must be an int >= 0, got "
                                  f"{self.replica_group_size!r}")


class Method(enum.Enum):
    """poplibs' replicated collective methods (``sdk-release-1.4 ReplicatedCollectives.cpp``)."""

    AUTO = "auto"
    CLOCKWISE_RING = "clockwise_ring"
    ANTICLOCKWISE_RING = "anticlockwise_ring"
    BIDIRECTIONAL_RING_PAIR = "bidirectional_ring_pair"
    MEET_IN_MIDDLE_RING = "meet_in_middle_ring"
    QUAD_DIRECTIONAL_RING = "quad_directional_ring"


@dataclass(frozen=True, slots=True)
class Groups:
    """The replica groups of one collective: ``n`` replicas each, ``replicas`` in all."""

    replicas: int
    n: int
    orthogonal: bool

    @classmethod
    def of(cls, group: CommGroup, replicas: int, where: str) -> Groups:
        k = group.replica_group_size
        if group.type is CommGroupType.ALL:
            if k not in (0, replicas):
                raise CollectiveError(f"{where}: CommGroup ALL of size {k} with {replicas} replicas; "
                                      f"give size 0 (all) or {replicas}")
            return cls(replicas, replicas, False)
        if k <= 0 or replicas % k:
            divisors = [d for d in range(1, replicas + 1) if replicas % d == 0]
            raise CollectiveError(f"{where}: replica group size {k} ({group.type.name}) does not divide "
                                  f"the replication factor {replicas}; use one of {divisors}")
        return cls(replicas, k, group.type is CommGroupType.ORTHOGONAL)

    def rank(self, replica: int) -> int:
        """The replica's place in its group."""
        return replica // (self.replicas // self.n) if self.orthogonal else replica % self.n

    def member(self, replica: int, rank: int) -> int:
        """The replica of rank ``rank`` in ``replica``'s group."""
        m = self.replicas // self.n
        if self.orthogonal:
            return replica % m + (rank % self.n) * m
        return replica - replica % self.n + rank % self.n

    def shifted(self, distance: int) -> dict[int, int]:
        """Each replica to the one ``distance`` ranks on in its group (a ring step's map)."""
        return {r: self.member(r, self.rank(r) + distance) for r in range(self.replicas)}


def auto_method(system: System, operation: str, num_bytes: int, ranks: int, *,
                ipus_per_replica: int = 1) -> Method:
    """The method poplibs' AUTO picks (ipu-facts-scale §3), as ``softipu.target.links`` decides it
    (one rule for functional and estimate-only collectives): a torus with several IPUs per
    replica takes meet-in-middle; several IPUs per replica or at most 2 ranks, the clockwise ring;
    otherwise meet-in-middle below size thresholds (halved for all-gather) or above 16 ranks,
    else the bidirectional ring pair.

    >>> from softipu.target import systems
    >>> auto_method(systems.POD16, "all_reduce", 1 << 20, 8).name
    'MEET_IN_MIDDLE_RING'
    >>> auto_method(systems.POD16, "all_reduce", 1 << 30, 8).name
    'BIDIRECTIONAL_RING_PAIR'
    """
    return Method[links.choose_method(system, operation, num_bytes, ranks, ipus_per_replica).upper()]
