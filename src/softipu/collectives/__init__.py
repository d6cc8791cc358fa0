"""Collectives across replicas, shaped like Graphcore's GCL (``gcl::allReduceCrossReplica`` ...).

A graph describes one replica; these functions append to a program the compute sets and
``CrossReplicaCopy`` steps that combine a tensor over replica groups (``CommGroup``): ring
algorithms (:mod:`softipu.collectives.ring`) whose steps the compiler prices on IPU-Links
(``compiler/replicas.py``) and the engine runs along the replica axis of its storage
(``engine/replicas.py``).

>>> import softipu as sp
>>> from softipu import collectives as C
>>> C.auto_method(sp.systems.POD16, "all_reduce", 64 << 20, 16).name
'BIDIRECTIONAL_RING_PAIR'
"""

from softipu.collectives.api import (
    all_gather,
    all_gather_to_destination,
    all_reduce,
    all_reduce_in_place,
    all_reduce_to_destination,
    all_to_all,
    all_to_all_to_destination,
    reduce_scatter,
    reduce_scatter_to_destination,
)
from softipu.collectives.groups import (
    CollectiveError,
    CollectiveOperator,
    CommGroup,
    CommGroupType,
    Method,
    auto_method,
)
from softipu.collectives.ring import map_by_columns

__all__ = [
    "CollectiveError", "CollectiveOperator", "CommGroup", "CommGroupType", "Method", "all_gather",
    "all_gather_to_destination", "all_reduce", "all_reduce_in_place", "all_reduce_to_destination",
    "all_to_all", "all_to_all_to_destination", "auto_method", "map_by_columns", "reduce_scatter",
    "reduce_scatter_to_destination",
]
