"""The Graph: variables, tile mappings, compute sets, vertices, streams and functions.

Poplar's ``Graph`` with snake_case names. One graph describes one replica; ``replication_factor``
copies it. Tiles are numbered globally across the IPUs of a replica.

>>> import numpy as np, softipu as sp
>>> g = sp.Graph(sp.targets.ipu_model(tiles=4))
>>> x = g.add_variable(sp.float32, (8,), name="x")
>>> g.set_tile_mapping(x[:4], 0); g.set_tile_mapping(x[4:], 1)
>>> [len(iv) for iv in g.get_tile_mapping(x)]
[1, 1, 0, 0]
"""

from __future__ import annotations

import bisect
import difflib
import functools
import math
import operator
from collections.abc import Callable, Mapping
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from softipu.debug import SourceLocation, at, caller_location
from softipu.dtypes import DType, as_dtype, narrow, uint32, value_range
from softipu.errors import FieldError, MappingError, StreamError, TargetError, TensorError
from softipu.graph.mapping import MappingTable, resolve_mapping
from softipu.graph.program import Program
from softipu.graph.remote import RemoteBuffer, make_remote_buffer
from softipu.graph.streams import MAX_STREAM_BYTES, DataStream, StreamDirection
from softipu.graph.tensor import MAX_ELEMENTS, Tensor
from softipu.graph.vertex import Direction, Field, FieldShape, Vertex
from softipu.graph.vertices import BulkGroup, VertexTable
from softipu.target import Target
from softipu.target.systems import check_graph

__all__ = ["Graph", "Variable", "ComputeSet", "Function", "VertexRef"]


@dataclass(frozen=True, slots=True, eq=False)
class Variable:
    """A contiguous range ``[start, start + numel)`` of its dtype's address space."""

    id: int
    name: str
    dtype: DType
    shape: tuple[int, ...]
    start: int
    location: SourceLocation
    initial_value: np.ndarray | None = None  # constants only

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def end(self) -> int:
        return self.start + self.numel

    @property
    def is_constant(self) -> bool:
        return self.initial_value is not None


@dataclass(frozen=True, slots=True)
class ComputeSet:
    """A set of vertices that run in one BSP compute phase."""

    id: int
    name: str
    location: SourceLocation = field(compare=False)
    op: str = ""  # the library op (or user label) that made it, for reports

    def __repr__(self) -> str:
        return f"ComputeSet({self.name!r})"


@dataclass(frozen=True, slots=True)
class Function:
    """A program whose code exists once however often it is ``Call``-ed."""

    id: int
    name: str
    program: Program = field(compare=False)
    location: SourceLocation = field(compare=False)


@dataclass(frozen=True, slots=True)
class VertexRef:
    """A vertex added one at a time: its compute set and its index there."""

    compute_set: ComputeSet
    index: int


class AddressSpace:
    """The variables of one dtype, laid end to end, and their tile mapping."""

    __slots__ = ("dtype", "size", "starts", "variables", "mapping")

    def __init__(self, dtype: DType) -> None:
        self.dtype = dtype
        self.size = 0
        self.starts: list[int] = []
        self.variables: list[Variable] = []
        self.mapping = MappingTable()

    def variable_at(self, address: int) -> Variable | None:
        i = bisect.bisect_right(self.starts, address) - 1
        if i < 0 or address >= self.variables[i].end:
            return None
        return self.variables[i]


class Graph:
    """A Poplar-style graph for one replica of a (multi-)IPU target."""

    def __init__(self, target: Target, replication_factor: int = 1, *, system: Any = None) -> None:
        if not isinstance(target, Target):
            raise TargetError(f"Graph needs a softipu Target (sp.targets.GC200, ...), got {target!r}")
        if not isinstance(replication_factor, int) or replication_factor < 1:
            raise TargetError(f"replication_factor must be an int >= 1, got {replication_factor!r}")
        self.target = target
        self.replication_factor = replication_factor
        # The multi-IPU system the replicas run on (None: the smallest that holds them; target/systems.py)
        self.system = None if system is None else check_graph(system, target, replication_factor)
        self.spaces: dict[DType, AddressSpace] = {}
        self.variables: list[Variable] = []
        self.compute_sets: list[ComputeSet] = []
        self.vertex_tables: list[VertexTable] = []
        self.streams: dict[str, DataStream] = {}
        self.functions: list[Function] = []
        self.remote_buffers: dict[str, RemoteBuffer] = {}  # Streaming Memory (graph/remote.py)
        self._names: set[str] = set()
        self._next_suffix: dict[str, int] = {}  # per base name, the first ".k" not yet tried

    @property
    def num_tiles(self) -> int:
        return self.target.num_tiles

    @property
    def root(self) -> Graph:
        """The top-level graph (this one; a virtual graph's parent's root): tensors belong to it."""
        return self

    @property
    def tile_offset(self) -> int:
        """The global number of this graph's tile 0 (0; nonzero for a virtual graph)."""
        return 0

    def create_virtual_graph(self, lo: int, hi: int) -> Graph:
        """Poplar's ``createVirtualGraph``: tiles ``[lo, hi)`` as a graph of local tile ids
        sharing this graph's tensors and programs (graph/virtual.py)."""
        from softipu.graph.virtual import VirtualGraph  # noqa: PLC0415 - virtual.py subclasses Graph
        return VirtualGraph(self, lo, hi)

    def __repr__(self) -> str:
        return (
            f"Graph({self.target.name}, {len(self.variables)} variables, "
            f"{len(self.compute_sets)} compute sets, replication_factor={self.replication_factor})"
        )

    # -- variables ---------------------------------------------------------------------------
    def add_variable(self, dtype: Any, shape: int | Seq[int], name: str = "") -> Tensor:
        """A new variable; map it to tiles before compiling."""
        return self._add(as_dtype(dtype), shape, name, None, caller_location())

    def add_constant(self, dtype: Any, shape: int | Seq[int], values: Any, name: str = "") -> Tensor:
        """A variable whose contents are ``values`` (broadcast to ``shape``) when the engine loads."""
        dtype = as_dtype(dtype)
        location = caller_location()
        shape_t = _shape(shape, name)
        try:
            given = np.asarray(values)
            cast, bad = (narrow(given, dtype) if given.dtype.kind in "biuf"
                         else (given.astype(dtype.numpy), None))
        except (ValueError, TypeError, OverflowError) as exc:  # ragged lists, strings, objects
            raise TensorError(f"constant {name!r}{at(location)}: values {values!r:.80} are not an array of "
                              f"{dtype} ({exc})") from None
        # NOTE: only integers are refused: a float constant may overflow to inf on purpose (a mask's
        # -1e9 in float16), and a bool constant is True where the value is nonzero.
        if bad is not None and dtype.numpy.kind in "iu":
            raise TensorError(f"constant {name!r}{at(location)}: {given[bad].item()!r} does not fit "
                              f"{dtype} ({value_range(dtype)}); give values within that range")
        try:
            data = np.broadcast_to(cast, shape_t)
        except ValueError:
            raise TensorError(
                f"constant {name!r}{at(location)}: values of shape {np.shape(values)} do not "
                f"broadcast to {shape_t}"
            ) from None
        # Kept as value + shape (a read-only broadcast view): the element array is built only
        # when an engine loads it, never by building or pricing the graph.
        return self._add(dtype, shape_t, name, data, location)

    def add_replication_index_constant(self, name: str = "") -> Tensor:
        """Poplar's ``addReplicationIndexConstant``: a uint32 of shape (1,) holding each replica's
        index (its initial value has one row per replica). Map it to a tile like any variable."""
        values = np.arange(self.replication_factor, dtype=np.uint32).reshape(-1, 1)
        return self._add(uint32, (1,), name or "replication_index", values, caller_location())

    def _add(self, dtype: DType, shape: Any, name: str, value: np.ndarray | None,
             location: SourceLocation) -> Tensor:
        shape_t = _shape(shape, name)
        _check_name(name, "variable", location)
        space = self.spaces.get(dtype)
        if space is None:
            space = self.spaces[dtype] = AddressSpace(dtype)
        if space.size + math.prod(shape_t) > MAX_ELEMENTS:
            raise TensorError(f"variable {name!r}{at(location)} of shape {shape_t} would take the graph's "
                              f"{dtype} elements past {MAX_ELEMENTS:,} (2**53), more than any system holds")
        name = self._unique_name(name or ("const" if value is not None else "var"))
        var = Variable(len(self.variables), name, dtype, shape_t, space.size, location, value)
        self.variables.append(var)
        space.starts.append(var.start)
        space.variables.append(var)
        space.size += var.numel
        return Tensor(self, dtype, shape_t, var.start, _row_major_strides(shape_t))

    def _unique_name(self, name: str) -> str:
        """``name``, or ``name.k`` with the first free k: remembered per base name, so n
        variables of one default name cost O(n) in all, not O(n^2)."""
        unique = name
        if unique in self._names:
            k = self._next_suffix.get(name, 1)
            while f"{name}.{k}" in self._names:
                k += 1
            unique, self._next_suffix[name] = f"{name}.{k}", k + 1
        self._names.add(unique)
        return unique

    def variable_of(self, tensor: Tensor) -> Variable | None:
        """The variable holding the tensor's first element (None for empty tensors)."""
        if tensor.numel == 0:
            return None
        return self.spaces[tensor.dtype].variable_at(tensor.first_address())

    def describe(self, tensor: Tensor) -> str:
        """A name for messages: the variable's name, or 'name[view shape]'."""
        var = self.variable_of(tensor)
        if var is None:
            return "<empty tensor>"
        if tensor.is_strided and tensor.offset == var.start and tensor.shape == var.shape \
                and tensor.is_contiguous():
            return var.name
        return f"{var.name}[view {tensor.shape}]"

    # -- tile mapping ------------------------------------------------------------------------
    def set_tile_mapping(self, tensor: Tensor, tile: int | Seq[Seq[tuple[int, int]]]) -> None:
        """Map every element of ``tensor`` to ``tile`` (a global tile number).

        ``tile`` may also be a whole mapping as :meth:`get_tile_mapping` returns it: per tile, a
        list of ``(begin, end)`` intervals of the tensor's flattened elements (Poplar's
        ``setTileMapping(tensor, TileToTensorMapping)``).
        """
        self._check_tensor(tensor, "set_tile_mapping")
        if isinstance(tile, (list, tuple)):
            try:
                pieces = [(b, e, t) for t, intervals in enumerate(tile) for b, e in intervals]
            except (TypeError, ValueError):
                raise MappingError(f"set_tile_mapping of {tensor.name}: a mapping is a list with, per tile, "
                                   f"a list of (begin, end) intervals; got {tile!r:.80}") from None
            b, e, t = (np.array(col, np.int64) for col in zip(*pieces, strict=True)) if pieces else \
                (np.zeros(0, np.int64),) * 3
            self.map_intervals(tensor, b, e, t)
            return
        if type(tile) is not int or not 0 <= tile < self.target.num_tiles:  # named only when wrong
            tile = self._check_tile(tile, f"set_tile_mapping of {tensor.name}")
        distinct = _without_broadcast(tensor)  # one tile for all: a repeated element maps once
        if not distinct.is_contiguous():
            _check_view_runs(distinct, f"set_tile_mapping of {tensor.name}{at(caller_location())}",
                             in_order=False)
        starts, lengths = distinct.runs()
        space = self.spaces[tensor.dtype]
        space.mapping.add(starts, lengths, np.full(starts.shape, tile, np.int32), caller_location())

    def map_intervals(self, tensor: Tensor, begins: Any, ends: Any, tiles: Any) -> None:
        """Map ``tensor.flatten()[begins[i]:ends[i]]`` to ``tiles[i]`` for every i, in one call."""
        self._check_tensor(tensor, "map_intervals")
        what = f"map_intervals of {tensor.name}{at(caller_location())}"
        begins, ends, tiles = (_int_array(a, what, k) for a, k in ((begins, "begins"), (ends, "ends"),
                                                                   (tiles, "tiles")))
        if not begins.shape == ends.shape == tiles.shape:
            raise MappingError(f"{what}: begins, ends and tiles differ in length")
        if begins.size and (begins.min() < 0 or ends.max() > tensor.numel or np.any(ends < begins)):
            raise MappingError(f"{what}: intervals must lie in 0..{tensor.numel} with begin <= end")
        self._check_tiles(tiles, what, "interval")
        if tensor.is_contiguous():
            starts, lengths, tile_col = tensor.offset + begins, ends - begins, tiles
        else:
            starts, lengths, tile_col = _view_pieces(tensor, begins, ends, tiles, what)
        space = self.spaces[tensor.dtype]
        space.mapping.add(starts, lengths, tile_col.astype(np.int32), caller_location())

    def set_tile_mappings(self, tensor: Tensor, tiles: Any) -> None:
        """Map row ``i`` of ``tensor`` (its first axis) to ``tiles[i]``, in one call."""
        self._check_tensor(tensor, "set_tile_mappings")
        tiles = _int_array(tiles, f"set_tile_mappings of {tensor.name}{at(caller_location())}", "tiles")
        if tensor.ndim == 0 or tiles.shape[0] != tensor.shape[0]:
            raise MappingError(
                f"set_tile_mappings of {tensor.name}{at(caller_location())}: need one tile per row "
                f"({tensor.shape[0] if tensor.ndim else 0}), got {tiles.shape[0]}"
            )
        self._check_tiles(tiles, f"set_tile_mappings of {tensor.name}{at(caller_location())}", "row")
        if tiles.shape[0] == 0:
            return
        row = tensor[0]
        if tensor.index is None and row.is_contiguous():
            row_len = row.numel
            starts = tensor.offset + np.arange(tiles.shape[0], dtype=np.int64) * tensor.strides[0]
            lengths = np.full(starts.shape, row_len, np.int64)
            keep = lengths > 0
            starts, lengths, tile_col = starts[keep], lengths[keep], tiles[keep]
        else:
            row_len = tensor.numel // tiles.shape[0]
            begins = np.arange(tiles.shape[0], dtype=np.int64) * row_len
            starts, lengths, tile_col = _view_pieces(
                tensor, begins, begins + row_len, tiles,
                f"set_tile_mappings of {tensor.name}{at(caller_location())}")
        space = self.spaces[tensor.dtype]
        space.mapping.add(starts, lengths, tile_col.astype(np.int32), caller_location())

    def tile_of(self, tensor: Tensor) -> np.ndarray:
        """The tile of each element (shape of ``tensor``); -1 where unmapped."""
        self._check_tensor(tensor, "tile_of")
        resolved = self.resolved_mapping(tensor.dtype)
        return resolved.tiles_of(tensor.addresses())

    def get_tile_mapping(self, tensor: Tensor, strict: bool = True) -> list[list[tuple[int, int]]]:
        """Per tile, the ``[begin, end)`` intervals of the tensor's flattened elements on it.

        Like Poplar, raises when some element is unmapped unless ``strict=False``.
        """
        tiles = self.tile_of(tensor).ravel()
        if strict and tiles.size and tiles.min() < 0:
            first = int(np.flatnonzero(tiles < 0)[0])
            raise MappingError(
                f"element {first} of {tensor.name} is not mapped to a tile; call "
                "graph.set_tile_mapping first (or pass strict=False)"
            )
        result: list[list[tuple[int, int]]] = [[] for _ in range(self.num_tiles)]
        if tiles.size == 0:
            return result
        breaks = np.flatnonzero(np.diff(tiles)) + 1
        begins = np.concatenate(([0], breaks))
        ends = np.concatenate((breaks, [tiles.size]))
        for b, e in zip(begins.tolist(), ends.tolist(), strict=True):
            if tiles[b] >= 0:
                result[int(tiles[b])].append((b, e))
        return result

    def resolved_mapping(self, dtype: DType):  # -> ResolvedMapping
        space = self.spaces.get(dtype)
        if space is None:
            return resolve_mapping(MappingTable(), self._variable_at_fn(dtype))
        return space.mapping.resolved(self._variable_at_fn(dtype))

    def _variable_at_fn(self, dtype: DType) -> Callable[[int], Variable | None]:
        space = self.spaces.get(dtype)
        return space.variable_at if space is not None else (lambda a: None)

    # -- compute sets and vertices -----------------------------------------------------------
    def add_compute_set(self, name: str = "", op: str = "") -> ComputeSet:
        """A new compute set; ``op`` labels it in reports (default: its name)."""
        _check_name(name, "compute set", caller_location())
        name = name or f"cs{len(self.compute_sets)}"
        cs = ComputeSet(len(self.compute_sets), name, caller_location(), op or name)
        self.compute_sets.append(cs)
        self.vertex_tables.append(VertexTable(cs))
        return cs

    def add_vertex(self, compute_set: ComputeSet, codelet: type[Vertex],
                   fields: Mapping[str, Any] | None = None, tile: int = 0) -> VertexRef:
        """Add one vertex of ``codelet`` on ``tile`` with its fields connected to tensors.

        Fields left out can be connected later with :meth:`connect`.
        """
        table = self._table(compute_set)
        spec = _codelet_fields(codelet)
        tile = self._check_tile(tile, f"vertex {codelet.__name__} in compute set {compute_set.name!r}")
        location = caller_location()
        values: dict[str, Any] = {}
        if fields:
            for name, value in fields.items():
                values[name] = self._field_value(codelet, spec, name, value, location)
        return VertexRef(compute_set, table.add(codelet, tile, values, location))

    def connect(self, vertex: VertexRef, field_name: str, value: Any) -> None:
        """Connect one field of a vertex added with :meth:`add_vertex` (Poplar's ``connect``)."""
        table = self._table(vertex.compute_set)
        codelet = table.codelet_of(vertex.index)
        location = caller_location()
        value = self._field_value(codelet, _codelet_fields(codelet), field_name, value, location)
        table.connect(vertex.index, field_name, value, location)

    set_initial_value = connect

    def add_vertices(self, compute_set: ComputeSet, codelet: type[Vertex],
                     fields: Mapping[str, Any], tiles: Any) -> range:
        """Add many vertices at once: the bulk path for library code.

        Each vector field is a tensor of shape ``(vertices, n)`` (row ``i`` is vertex ``i``'s
        vector); a scalar field ``(vertices,)``; a vector-list field a list of ``(vertices, n_k)``
        tensors; a param an array of ``vertices`` values (or one value for all). ``tiles`` holds one
        tile per vertex. Returns the new vertices' indices in the compute set.
        """
        table = self._table(compute_set)
        spec = _codelet_fields(codelet)
        location = caller_location()
        tiles = np.asarray(tiles, dtype=np.int64).reshape(-1)
        what = f"add_vertices({codelet.__name__}) in compute set {compute_set.name!r}{at(location)}"
        self._check_tiles(tiles, what, "vertex")
        num = tiles.shape[0]
        missing = [n for n in spec if n not in fields]
        if missing:
            raise FieldError(f"{what}: fields {missing} are not connected; the bulk form needs all of them")
        batched = {n: self._bulk_field(codelet, spec, n, v, num, what, location) for n, v in fields.items()}
        return table.add_bulk(BulkGroup(codelet, tiles.astype(np.int32), batched, location))

    def _table(self, compute_set: ComputeSet) -> VertexTable:
        if not isinstance(compute_set, ComputeSet) or compute_set.id >= len(self.compute_sets) \
                or self.compute_sets[compute_set.id] is not compute_set:
            raise FieldError(
                f"{compute_set!r} is not a compute set of this graph; make one with "
                "graph.add_compute_set(name)"
            )
        return self.vertex_tables[compute_set.id]

    def _field_value(self, codelet: type[Vertex], spec: dict[str, Field], name: str, value: Any,
                     location: SourceLocation) -> Any:
        f = spec.get(name)
        if f is None:
            raise FieldError(_unknown_field(codelet, spec, name, location))
        if f.direction is Direction.PARAM:
            return _param_value(codelet, name, f, value, location)
        if f.shape is FieldShape.VECTOR_LIST:
            if isinstance(value, Tensor) or not isinstance(value, (list, tuple)):
                raise FieldError(
                    f"field {name!r} of {codelet.__name__}{at(location)} is a vector list: "
                    "connect a list of tensors"
                )
            return tuple(self._field_tensor(codelet, name, f, t, location).flatten() for t in value)
        t = self._field_tensor(codelet, name, f, value, location)
        if f.shape is FieldShape.SCALAR and t.numel != 1:
            raise FieldError(
                f"field {name!r} of {codelet.__name__}{at(location)} is a scalar but tensor "
                f"{t.name} has shape {t.shape}; connect a 1-element tensor"
            )
        return t if t.ndim == 1 else t.flatten()

    def _field_tensor(self, codelet: type[Vertex], name: str, f: Field, value: Any,
                      location: SourceLocation) -> Tensor:
        if type(value) is not Tensor:
            raise FieldError(
                f"field {name!r} of {codelet.__name__}{at(location)} needs a tensor of "
                f"{f.dtype}, got {type(value).__name__}"
            )
        if value.dtype is not f.dtype:
            raise FieldError(
                f"field {name!r} of {codelet.__name__}{at(location)} expects {f.dtype} but "
                f"tensor {value.name} is {value.dtype}; cast it or use a codelet for {value.dtype}"
            )
        if value.graph is not self.root:
            raise FieldError(f"tensor {value.name} for field {name!r}{at(location)} belongs to another graph")
        return value

    def _bulk_field(self, codelet: type[Vertex], spec: dict[str, Field], name: str, value: Any,
                    num: int, what: str, location: SourceLocation) -> Any:
        f = spec.get(name)
        if f is None:
            raise FieldError(_unknown_field(codelet, spec, name, None) + f" in {what}")
        if f.direction is Direction.PARAM:
            arr = np.asarray(value)
            if arr.ndim > 1 or (arr.ndim == 1 and arr.shape[0] != num) or isinstance(value, Tensor):
                raise FieldError(f"param {name!r} in {what}: need one {f.dtype} value or {num} "
                                 f"values, got shape {arr.shape}")
            arr = _param_values(codelet, name, f, arr, None)
            return np.full(num, arr) if arr.ndim == 0 else np.ascontiguousarray(arr)
        parts = value if f.shape is FieldShape.VECTOR_LIST else [value]
        if f.shape is FieldShape.VECTOR_LIST and not isinstance(value, (list, tuple)):
            raise FieldError(f"field {name!r} in {what} is a vector list: pass a list of tensors")
        out = []
        for part in parts:
            t = self._field_tensor(codelet, name, f, part, location)  # add_vertices' caller's line
            if t.ndim == 0 or t.shape[0] != num:
                raise FieldError(
                    f"field {name!r} in {what}: tensor {t.name} has shape {t.shape}; its first "
                    f"axis must be the {num} vertices"
                )
            t = t.reshape(num, -1) if t.ndim != 2 else t
            if f.shape is FieldShape.SCALAR and t.shape[1] != 1:
                raise FieldError(f"scalar field {name!r} in {what}: tensor {t.name} has {t.shape[1]} "
                                 "elements per vertex, not 1")
            out.append(t)
        return tuple(out) if f.shape is FieldShape.VECTOR_LIST else out[0]

    # -- streams and functions ---------------------------------------------------------------
    def add_host_to_device_fifo(self, name: str, dtype: Any, num_elements: int) -> DataStream:
        """A stream the host fills; ``Copy(stream, tensor)`` moves one transfer to the device."""
        return self._add_stream(name, dtype, num_elements, StreamDirection.HOST_TO_DEVICE)

    def add_device_to_host_fifo(self, name: str, dtype: Any, num_elements: int) -> DataStream:
        """A stream the host drains; ``Copy(tensor, stream)`` moves one transfer to the host."""
        return self._add_stream(name, dtype, num_elements, StreamDirection.DEVICE_TO_HOST)

    def _add_stream(self, name: str, dtype: Any, num_elements: int,
                    direction: StreamDirection) -> DataStream:
        location = caller_location()
        _check_name(name, "stream", location)
        if not name or name in self.streams:
            raise StreamError(f"stream name {name!r}{at(location)} is empty or already used")
        try:
            num_elements = operator.index(num_elements)
        except TypeError:
            raise StreamError(f"stream {name!r}{at(location)}: the number of elements must be an "
                              f"int, got {num_elements!r}") from None
        stream = DataStream(name, as_dtype(dtype), num_elements, direction, location)
        if num_elements < 0 or stream.nbytes > MAX_STREAM_BYTES:
            raise StreamError(
                f"stream {name!r}{at(location)}: {num_elements} elements ({stream.nbytes} bytes); "
                f"a stream moves between 0 and {MAX_STREAM_BYTES} bytes per transfer"
            )
        self.streams[name] = stream
        return stream

    def add_remote_buffer(self, name: str, dtype: Any, shape: int | Seq[int],
                          repeats: int = 1) -> RemoteBuffer:
        """Poplar's ``addRemoteBuffer``: ``repeats`` rows of ``shape`` in Streaming Memory per replica,
        moved with ``program.RemoteCopy``; too large for Streaming Memory is a ``StreamError``."""
        buffer = make_remote_buffer(self, name, dtype, shape, repeats, caller_location())
        self.remote_buffers[name] = buffer
        return buffer

    def add_function(self, program: Program, name: str = "") -> Function:
        """A reusable function; run it with ``program.Call(function)``."""
        if not isinstance(program, Program):
            raise TensorError(f"add_function needs a program, got {type(program).__name__}")
        fn = Function(len(self.functions), name or f"fn{len(self.functions)}", program,
                      caller_location())
        self.functions.append(fn)
        return fn

    # -- checks --------------------------------------------------------------------------------
    def _check_tensor(self, tensor: Any, what: str) -> None:
        if not isinstance(tensor, Tensor):
            raise TensorError(f"{what} needs a tensor, got {type(tensor).__name__}")
        if tensor.graph is not self.root:
            raise TensorError(f"{what}: tensor {tensor.name} belongs to another graph")

    def _check_tile(self, tile: Any, what: str) -> int:
        try:
            tile = operator.index(tile)
        except TypeError:
            raise MappingError(f"{what}{at(caller_location())}: tile must be an int, got {tile!r}") from None
        if not 0 <= tile < self.target.num_tiles:
            raise MappingError(
                f"{what}{at(caller_location())}: tile {tile} does not exist; {self.target.name} "
                f"has tiles 0..{self.target.num_tiles - 1}"
            )
        return tile

    def _check_tiles(self, tiles: np.ndarray, what: str, item: str) -> None:
        """``what`` names the call and the user's line; ``item`` what each tile is for."""
        if tiles.size and (tiles.min() < 0 or tiles.max() >= self.target.num_tiles):
            i = int(np.flatnonzero((tiles < 0) | (tiles >= self.target.num_tiles))[0])
            raise MappingError(
                f"{what}: tile {int(tiles[i])} does not exist ({item} {i} asks for it); "
                f"{self.target.name} has tiles 0..{self.target.num_tiles - 1}: map to one of those, or "
                "use a target with more tiles"
            )


def _check_name(name: Any, what: str, location: SourceLocation) -> None:
    if not isinstance(name, str):
        raise TensorError(f"the name of a {what}{at(location)} must be a str, got {type(name).__name__}")


# The most address runs one mapping call may list for a view that is not contiguous (each run is three
# int64s in the mapping table): past it, mapping the view element by element costs gigabytes and minutes.
MAX_VIEW_RUNS = 1 << 26


def _view_pieces(tensor: Tensor, begins: np.ndarray, ends: np.ndarray, tiles: np.ndarray,
                 what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(starts, lengths, tiles) mapping flat ranges ``begins..ends`` of a non-contiguous view: each
    range cut at the view's runs of consecutive addresses (in element order), without a loop."""
    _check_view_runs(tensor, what)
    run_starts, run_lengths = tensor.element_runs()
    first = np.cumsum(run_lengths) - run_lengths  # each run's first flat position
    lo = np.searchsorted(first, begins, side="right") - 1
    hi = np.searchsorted(first, ends, side="left")
    counts = np.where(ends > begins, hi - lo, 0)
    which = np.repeat(np.arange(begins.size), counts)
    run = lo[which] + np.arange(which.size) - np.repeat(np.cumsum(counts) - counts, counts)
    piece_begin = np.maximum(begins[which], first[run])
    piece_end = np.minimum(ends[which], first[run] + run_lengths[run])
    return run_starts[run] + (piece_begin - first[run]), piece_end - piece_begin, tiles[which]


def _check_view_runs(tensor: Tensor, what: str, in_order: bool = True) -> None:
    """A MappingError naming ``what`` when mapping ``tensor`` would list more than MAX_VIEW_RUNS runs
    (runs in element order, or in address order where the order does not matter)."""
    if tensor.index is not None or tensor.numel <= MAX_VIEW_RUNS:
        return  # an indexed view's addresses are already held
    runs = tensor.numel // _inner_run(tensor, in_order) if tensor.is_strided else tensor.numel
    if runs > MAX_VIEW_RUNS:
        kind = "repeats elements (a broadcast)" if _without_broadcast(tensor) is not tensor else "is strided"
        raise MappingError(
            f"{what}: this {tensor.shape} view {kind} and splits into {runs:,} separate address runs, "
            f"more than one mapping call lists ({MAX_VIEW_RUNS:,}); map the variable it views, or a "
            "contiguous view of it, instead"
        )


def _without_broadcast(tensor: Tensor) -> Tensor:
    """``tensor`` with its broadcast (stride 0) axes cut to one element: each element once."""
    if not tensor.is_strided or all(n <= 1 or st for n, st in zip(tensor.shape, tensor.strides, strict=True)):
        return tensor
    shape = tuple(1 if st == 0 else n for n, st in zip(tensor.shape, tensor.strides, strict=True))
    return tensor._strided(shape, tensor.offset, tensor.strides)


def _inner_run(tensor: Tensor, in_order: bool = True) -> int:
    """Elements in each run of consecutive addresses of a strided view: its trailing packed axes, or
    with ``in_order`` False its packed axes in any order (as ``Tensor.runs`` walks them)."""
    axes = [(st, n) for n, st in zip(tensor.shape, tensor.strides, strict=True) if n != 1]
    axes = axes[::-1] if in_order else sorted((abs(st), n) for st, n in axes)
    run = 1
    for stride, size in axes:
        if stride != run:
            break
        run *= size
    return run


def _int_array(values: Any, what: str, which: str) -> np.ndarray:
    """``values`` as a flat int64 array, or a MappingError naming ``what`` (the call and line)."""
    try:
        found = np.asarray(values)
        if found.dtype.kind == "f" and not np.all(np.isfinite(found) & (found == np.round(found))):
            raise TypeError("values that are not whole numbers")
        if found.dtype.kind in "USVc":
            raise TypeError(f"{found.dtype} values")
        return found.astype(np.int64).reshape(-1)
    except (ValueError, TypeError, OverflowError) as exc:
        raise MappingError(f"{what}: {which} must be integers, got {values!r:.80} ({exc})") from None


def _shape(shape: Any, name: str) -> tuple[int, ...]:
    name = name if isinstance(name, str) else ""  # a name of another type is refused after the shape
    try:
        shape_t = (operator.index(shape),) if not isinstance(shape, (tuple, list)) else tuple(
            operator.index(d) for d in shape)
    except TypeError:
        raise TensorError(f"shape of {name or 'variable'} must be ints, got {shape!r}") from None
    if any(d < 0 for d in shape_t):
        raise TensorError(f"shape of {name or 'variable'} has a negative dimension: {shape_t}")
    return shape_t


def _row_major_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, acc = [], 1
    for d in reversed(shape):
        strides.append(acc)
        acc *= d
    return tuple(reversed(strides))


def _codelet_fields(codelet: Any) -> dict[str, Field]:
    if not (isinstance(codelet, type) and issubclass(codelet, Vertex)) or not codelet.fields:
        raise FieldError(f"{codelet!r} is not a codelet: subclass sp.Vertex and declare fields")
    return codelet.fields


def _unknown_field(codelet: type[Vertex], spec: dict[str, Field], name: str,
                   location: SourceLocation | None) -> str:
    near = difflib.get_close_matches(str(name), list(spec), n=2)
    hint = f"; did you mean {' or '.join(map(repr, near))}?" if near else ""
    return (f"codelet {codelet.__name__} has no field {name!r}{at(location)}; its fields are "
            f"{list(spec)}{hint}")


def _param_value(codelet: type[Vertex], name: str, f: Field, value: Any,
                 location: SourceLocation) -> Any:
    if isinstance(value, (Tensor, list, tuple, dict, set)) or np.ndim(value) != 0:
        raise FieldError(
            f"param {name!r} of {codelet.__name__}{at(location)} takes one number, got "
            f"{type(value).__name__}"
        )
    return _param_values(codelet, name, f, np.asarray(value), location)[()]


@functools.cache
def _int_range(want: np.dtype) -> tuple[int, int]:
    """The values an integer (or bool) param dtype holds."""
    return (0, 1) if want.kind == "b" else (int(np.iinfo(want).min), int(np.iinfo(want).max))


def _param_values(codelet: type[Vertex], name: str, f: Field, arr: np.ndarray,
                  location: SourceLocation | None) -> np.ndarray:
    """Param values in the field's dtype; integers must be whole and in range (no wrap-around)."""
    want = f.dtype.numpy
    bad = ""
    if arr.dtype.kind not in "biuf":
        bad = f"{arr.dtype} is not a number"
    elif want.kind in "iub" and arr.size:
        whole = arr.dtype.kind in "biu" or bool(np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)))
        lo, hi = _int_range(want)
        if not whole:
            bad = "values must be whole numbers"
        elif arr.dtype.kind == "b" or (arr.dtype == want and want.kind != "b"):
            pass  # every value of the field's own dtype (or a bool) is in range
        elif float(arr.min()) < lo or float(arr.max()) > hi:
            bad = f"values must lie in {lo}..{hi}"
    if bad:
        raise FieldError(f"param {name!r} of {codelet.__name__}{at(location)}: {bad} for {f.dtype}, "
                         f"got {arr.tolist() if arr.size < 8 else arr.dtype}")
    return arr.astype(want)

