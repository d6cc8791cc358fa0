"""Tile-mapping helpers: spread tensors over tiles the way PopLibs does."""

from __future__ import annotations

import numpy as np

from softipu.errors import MappingError
from softipu.graph.graph import Graph
from softipu.graph.tensor import Tensor

__all__ = ["map_linearly"]


def map_linearly(graph: Graph, tensor: Tensor, grain_size: int = 1, min_elements_per_tile: int = 1,
                 tiles: range | None = None) -> None:
    """Map ``tensor``'s flattened elements in equal contiguous chunks over ``tiles``.

    Chunks are multiples of ``grain_size`` elements and hold at least ``min_elements_per_tile``,
    so small tensors use fewer tiles (poputil's ``mapTensorLinearly``); grains are spread evenly,
    so no tile holds more than one grain above any other.

    >>> import softipu as sp
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=4))
    >>> x = g.add_variable(sp.float32, (10,), name="x")
    >>> sp.ops.map_linearly(g, x, grain_size=2)
    >>> g.tile_of(x).tolist()
    [0, 0, 0, 0, 1, 1, 2, 2, 3, 3]
    """
    tiles = range(graph.num_tiles) if tiles is None else tiles
    if not isinstance(tensor, Tensor):
        raise MappingError(f"map_linearly needs a tensor, got {type(tensor).__name__}")
    sizes = (grain_size, min_elements_per_tile)
    if not all(isinstance(v, (int, np.integer)) and 1 <= v < 2**62 for v in sizes) or len(tiles) == 0:
        raise MappingError(f"map_linearly of {tensor.name}: grain_size and min_elements_per_tile "
                           f"must be ints >= 1 (got {grain_size!r:.40}, {min_elements_per_tile!r:.40}) and "
                           "tiles non-empty")
    n = tensor.numel
    if n == 0:
        return
    grains = -(-n // grain_size)
    min_grains = -(-min_elements_per_tile // grain_size)
    used = max(1, min(len(tiles), grains // max(min_grains, 1)))
    # Spread grains evenly: the first (grains % used) tiles take one grain more.
    per_tile = np.full(used, grains // used, np.int64)
    per_tile[: grains % used] += 1
    bounds = np.minimum(np.concatenate(([0], np.cumsum(per_tile))) * grain_size, n)
    graph.map_intervals(tensor, bounds[:-1], bounds[1:], np.asarray(tiles)[:used])
