"""Virtual graphs: Poplar's ``Graph::createVirtualGraph(lowerTile, upperTile)``.

A virtual graph is a view of a graph restricted to the tiles ``[lo, hi)`` of its parent. Its tile
ids are local (``0 .. hi - lo - 1``), its ``num_tiles`` and ``target`` describe those tiles only, so
every library op planned on it (matmul, elementwise, reductions...) spreads over those tiles and no
others. It shares the parent's variables, compute sets, programs and streams: a tensor made
through a virtual graph is a tensor of the parent (its ``graph`` is the top-level graph) and any
virtual graph of the same parent may read it. This is how model parallelism places a layer on one
IPU: ``graph.create_virtual_graph(*target.tiles_of_ipu(1)[::len(...) - 1])``, or simply
:meth:`VirtualGraph.of_ipu`.

Mapping queries answer in local ids: an element mapped outside the view reads as -1 (as if
unmapped), so an op cannot place work on tiles it does not own.

>>> import numpy as np, softipu as sp
>>> g = sp.Graph(sp.targets.ipu_model(tiles=4).with_num_ipus(2))
>>> ipu1 = g.create_virtual_graph(4, 8)
>>> x = ipu1.add_variable(sp.float32, (8,), name="x")
>>> sp.ops.map_linearly(ipu1, x)
>>> ipu1.tile_of(x).tolist(), g.tile_of(x).tolist()
([0, 0, 1, 1, 2, 2, 3, 3], [4, 4, 5, 5, 6, 6, 7, 7])
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from softipu.debug import at, caller_location
from softipu.errors import MappingError, TargetError
from softipu.graph.graph import Graph
from softipu.graph.mapping import ResolvedMapping
from softipu.graph.tensor import Tensor
from softipu.target import Target

__all__ = ["LocalMapping", "VirtualGraph", "virtual_target"]


def virtual_target(target: Target, lo: int, hi: int) -> Target:
    """The target a view of tiles ``[lo, hi)`` plans on: whole IPUs keep their description
    (``num_ipus`` of them); a part of one IPU is a one-IPU chip of ``hi - lo`` tiles."""
    per = target.tiles_per_ipu
    if not (isinstance(lo, int) and isinstance(hi, int) and 0 <= lo < hi <= target.num_tiles):
        raise TargetError(f"create_virtual_graph({lo}, {hi}): need 0 <= lo < hi <= {target.num_tiles} "
                          f"(the tiles of {target.name})")
    if lo % per == 0 and hi % per == 0:
        return replace(target, num_ipus=(hi - lo) // per)
    if lo // per != (hi - 1) // per:
        raise TargetError(f"create_virtual_graph({lo}, {hi}): a view across IPUs must cover whole IPUs "
                          f"({per} tiles each); give tiles within one IPU or whole IPUs")
    return replace(target, tiles_per_ipu=hi - lo, num_ipus=1, num_io_tiles=0)


def _local(tiles: np.ndarray, lo: int, n: int) -> np.ndarray:
    local = np.asarray(tiles, np.int64) - lo
    return np.where((local >= 0) & (local < n), local, -1).astype(np.int32)


class _LocalTiles:
    """A resolved mapping's tile column in a view's local ids, translated per slice."""

    __slots__ = ("_tiles", "_lo", "_n")

    def __init__(self, tiles: np.ndarray, lo: int, n: int) -> None:
        self._tiles, self._lo, self._n = tiles, lo, n

    def __getitem__(self, key: Any) -> np.ndarray:
        return _local(self._tiles[key], self._lo, self._n)

    def __len__(self) -> int:
        return len(self._tiles)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = _local(self._tiles, self._lo, self._n)
        return out if dtype is None else out.astype(dtype)


class LocalMapping:
    """A :class:`~softipu.graph.mapping.ResolvedMapping` seen from a virtual graph: the same
    intervals, tiles in local ids (-1 outside the view)."""

    __slots__ = ("_whole", "_lo", "_n")

    def __init__(self, whole: ResolvedMapping, lo: int, n: int) -> None:
        self._whole, self._lo, self._n = whole, lo, n

    @property
    def starts(self) -> np.ndarray:
        return self._whole.starts

    @property
    def ends(self) -> np.ndarray:
        return self._whole.ends

    @property
    def tiles(self) -> _LocalTiles:
        return _LocalTiles(self._whole.tiles, self._lo, self._n)

    def tiles_of(self, addresses: np.ndarray) -> np.ndarray:
        return _local(self._whole.tiles_of(addresses), self._lo, self._n)

    def mapped_between(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        return self._whole.mapped_between(lo, hi)


class VirtualGraph(Graph):
    """The tiles ``[lo, hi)`` of ``parent`` as a graph of their own (local tile ids).

    Everything but tile numbers is the parent's: attributes not set here are read from it.
    """

    def __init__(self, parent: Graph, lo: int, hi: int) -> None:  # noqa: D107 - no Graph.__init__
        # NOTE: Graph.__init__ is not called: the state (variables, spaces, compute sets...) is the
        # parent's, reached through __getattr__, so whatever a later Graph gains is shared too.
        self._parent = parent
        self._lo = parent.tile_offset + lo
        self._hi = parent.tile_offset + hi
        self.target = virtual_target(parent.target, lo, hi)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_parent", "_lo", "_hi"):
            raise AttributeError(name)
        return getattr(self._parent, name)

    @classmethod
    def of_ipu(cls, graph: Graph, ipu: int) -> VirtualGraph:
        """The virtual graph of IPU ``ipu`` of ``graph``'s target."""
        tiles = graph.target.tiles_of_ipu(ipu)
        return cls(graph, tiles.start, tiles.stop)

    @property
    def root(self) -> Graph:
        return self._parent.root

    @property
    def tile_offset(self) -> int:
        return self._lo

    @property
    def num_tiles(self) -> int:
        return self._hi - self._lo

    @property
    def replication_factor(self) -> int:  # type: ignore[override]
        return self._parent.replication_factor

    def __repr__(self) -> str:
        return f"VirtualGraph(tiles {self._lo}..{self._hi - 1} of {self.root!r})"

    # -- tiles: local in, global out ------------------------------------------------------------
    def _global(self, tiles: Any) -> Any:
        return np.asarray(tiles, np.int64) + self._lo

    def _add(self, dtype: Any, shape: Any, name: str, value: np.ndarray | None, location: Any) -> Tensor:
        return self.root._add(dtype, shape, name, value, location)

    def set_tile_mapping(self, tensor: Tensor, tile: Any) -> None:
        if isinstance(tile, (list, tuple)):
            pieces = [(b, e, t) for t, intervals in enumerate(tile) for b, e in intervals]
            cols = [np.array(c, np.int64) for c in zip(*pieces, strict=True)] if pieces else \
                [np.zeros(0, np.int64)] * 3
            self.map_intervals(tensor, *cols)
            return
        tile = self._check_tile(tile, f"set_tile_mapping of {tensor.name}")
        self.root.set_tile_mapping(tensor, tile + self._lo)

    def map_intervals(self, tensor: Tensor, begins: Any, ends: Any, tiles: Any) -> None:
        tiles = np.asarray(tiles, np.int64).reshape(-1)
        self._check_tiles(tiles, f"map_intervals of {tensor.name}", "interval")
        self.root.map_intervals(tensor, begins, ends, self._global(tiles))

    def set_tile_mappings(self, tensor: Tensor, tiles: Any) -> None:
        tiles = np.asarray(tiles, np.int64).reshape(-1)
        self._check_tiles(tiles, f"set_tile_mappings of {tensor.name}", "row")
        self.root.set_tile_mappings(tensor, self._global(tiles))

    def add_vertex(self, compute_set: Any, codelet: Any, fields: Any = None, tile: int = 0) -> Any:
        tile = self._check_tile(tile, f"vertex {getattr(codelet, '__name__', codelet)}")
        return self.root.add_vertex(compute_set, codelet, fields, tile + self._lo)

    def add_vertices(self, compute_set: Any, codelet: Any, fields: Any, tiles: Any) -> range:
        tiles = np.asarray(tiles, np.int64).reshape(-1)
        self._check_tiles(tiles, f"add_vertices({getattr(codelet, '__name__', codelet)})", "vertex")
        return self.root.add_vertices(compute_set, codelet, fields, self._global(tiles))

    def resolved_mapping(self, dtype: Any) -> LocalMapping:
        """The parent's mapping in local tile ids (elements on tiles outside the view read -1),
        translated lazily: only what a caller slices or looks up is translated, so a view costs
        nothing per call however large the graph grows."""
        return LocalMapping(self.root.resolved_mapping(dtype), self._lo, self.num_tiles)

    def tile_of(self, tensor: Tensor) -> np.ndarray:
        self._check_tensor(tensor, "tile_of")
        return self.resolved_mapping(tensor.dtype).tiles_of(tensor.addresses())

    # get_tile_mapping is Graph's: it reads tile_of and num_tiles, both local here.

    def _check_tile(self, tile: Any, what: str) -> int:
        try:
            t = int(tile)
        except TypeError:
            raise MappingError(f"{what}: tile must be an int, got {tile!r}") from None
        if not 0 <= t < self.num_tiles:
            raise MappingError(f"{what}: tile {t} is not in this virtual graph (local tiles "
                               f"0..{self.num_tiles - 1} = tiles {self._lo}..{self._hi - 1}); map to one "
                               "of those, or use the parent graph" + _at())
        return t

    def _check_tiles(self, tiles: np.ndarray, what: str, item: str) -> None:
        bad = (tiles < 0) | (tiles >= self.num_tiles)
        if tiles.size and bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise MappingError(f"{what}: tile {int(tiles[i])} ({item} {i}) is not in this virtual graph "
                               f"(local tiles 0..{self.num_tiles - 1} = tiles {self._lo}..{self._hi - 1})"
                               + _at())


def _at() -> str:
    return at(caller_location())


def create_virtual_graph(graph: Graph, lo: int, hi: int) -> VirtualGraph:
    """Poplar's ``createVirtualGraph(lowerTile, upperTile)``: tiles ``[lo, hi)`` of ``graph``
    (local ids of ``graph`` when it is itself virtual)."""
    return VirtualGraph(graph, lo, hi)
