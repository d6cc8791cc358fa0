"""Which slice of a host batch each replica is fed (inference and training).

A call's host batch is laid out as PopART's ``[device_iterations, (gradient_accumulation,)
replicas / input_group_size, micro_batch, ...]``; PopTorch's ``inputReplicaGrouping`` makes the
replicas of a group share one replica slice.
"""

from __future__ import annotations

from typing import Any

__all__ = ["input_slices"]


def input_slices(options: Any) -> tuple[int, ...]:
    """For each replica, which of the ``replication_factor / input_group_size`` replica slices of
    the host batch it is fed: consecutive groups {0..k-1}, {k..2k-1}... take slices 0, 1...;
    orthogonal groups {j, j+m, j+2m...} (m = replicas / k) take slice j; without grouping,
    replica r takes slice r.

    >>> from types import SimpleNamespace as NS
    >>> input_slices(NS(replication_factor=4, input_group_size=2, input_group_type="consecutive"))
    (0, 0, 1, 1)
    >>> input_slices(NS(replication_factor=4, input_group_size=2, input_group_type="orthogonal"))
    (0, 1, 0, 1)
    """
    r, k = options.replication_factor, options.input_group_size
    if options.input_group_type == "orthogonal":
        return tuple(i % (r // k) for i in range(r))
    return tuple(i // k for i in range(r))
