"""Hardware cycle counters: programs that read the modeled cycle count into a tensor."""

from __future__ import annotations

from softipu.dtypes import uint32
from softipu.graph import program as P
from softipu.graph.graph import Graph
from softipu.graph.tensor import Tensor

__all__ = ["cycle_count", "cycle_stamp"]


def cycle_count(graph: Graph, seq: P.Sequence, tile: int = 0, name: str = "cycles") -> Tensor:
    """Measure ``seq``: its programs are wrapped so that, when it runs, the returned uint32[2]
    tensor (low word, high word) receives the modeled cycles they took (Poplar's ``cycleCount``).

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=2))
    >>> seq = P.Sequence(P.Sync())
    >>> counter = sp.cycle_count(g, seq)
    >>> eng = sp.Engine(g, [seq]); eng.run(0)
    >>> int(eng.read_tensor(counter)[0]) == g.target.on_chip_sync_cycles
    True
    """
    counter = _counter(graph, tile, name)
    body = P.Sequence(*seq.programs)
    seq.programs[:] = [P.CycleCount(counter, body)]
    return counter


def cycle_stamp(graph: Graph, seq: P.Sequence, tile: int = 0, name: str = "cycle_stamp") -> Tensor:
    """Append to ``seq`` a program writing the cycles modeled since the engine loaded."""
    counter = _counter(graph, tile, name)
    seq.add(P.CycleCount(counter))
    return counter


def _counter(graph: Graph, tile: int, name: str) -> Tensor:
    counter = graph.add_variable(uint32, (2,), name=name)
    graph.set_tile_mapping(counter, tile)
    return counter
