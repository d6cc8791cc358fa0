"""Tile placement shared by the frontends: where a frontend puts the tensors it makes itself
(inputs, weights, constants, lowering results), so small tensors spread over the chip."""

from __future__ import annotations

import weakref

from softipu.graph.graph import Graph
from softipu.graph.tensor import Tensor
from softipu.ops.mapping import map_linearly

__all__ = ["map_tensor"]

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
