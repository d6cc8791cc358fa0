"""Tile placement shared by the frontends: where a frontend puts the tensors it makes itself
(inputs, weights, constants, lowering results), so small tensors spread over the chip."""

from __future__ import annotations

import weakref

from softipu.graph.graph import Graph
from softipu.graph.tensor import Tensor
from softipu.ops.mapping import map_linearly

__all__ = ["map_tensor", "compute_graph", "io_graph"]

# The next free tile for small tensors, per graph (weak: it lives exactly as long as the graph).
_NEXT_TILE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def map_tensor(graph: Graph, t: Tensor) -> None:
    """Map ``t`` linearly in vector-sized grains. A tensor too small for every tile starts where
    the previous small one ended, so biases, norms' weights and constants do not all pile up on
    tile 0 (map_linearly alone starts every tensor there)."""
    if not t.numel:
        return
    grain = max(1, graph.target.vector_width(t.dtype.itemsize))
    least = grain * 8
    tiles = graph.num_tiles
    used = max(1, min(tiles, -(-t.numel // grain) // max(-(-least // grain), 1)))
    if used >= tiles:
        map_linearly(graph, t, grain_size=grain, min_elements_per_tile=least)
        return
    start = _NEXT_TILE.get(graph, 0)
    if start + used > tiles:
        start = 0
    _NEXT_TILE[graph] = start + used
    map_linearly(graph, t, grain_size=grain, min_elements_per_tile=least, tiles=range(start, start + used))


def compute_graph(graph: Graph) -> Graph:
    """The graph a frontend lowers a model's work on: with I/O tiles reserved
    (``Target.num_io_tiles``, PopART/PopTorch ``numIOTiles``), the virtual graph of the compute
    tiles, as PopART builds one (and one of the I/O tiles) per IPU, so every op's planner spreads
    over those tiles only and sees their count as ``num_tiles``. One IPU here; a model over
    several IPUs keeps the whole graph (its stages are placed per IPU by model parallelism)."""
    target = graph.target
    if not target.num_io_tiles or target.num_ipus != 1:
        return graph
    tiles = target.compute_tiles_of_ipu(0)
    return graph.create_virtual_graph(tiles.start, tiles.stop)


def io_graph(graph: Graph) -> Graph:
    """The virtual graph of the I/O tiles, where a frontend places the tensors host streams
    write (PopART's I/O tile set); ``graph`` itself when none are reserved (see
    :func:`compute_graph`)."""
    target = graph.target
    if not target.num_io_tiles or target.num_ipus != 1:
        return graph
    tiles = target.io_tiles_of_ipu(0)
    return graph.create_virtual_graph(tiles.start, tiles.stop)
