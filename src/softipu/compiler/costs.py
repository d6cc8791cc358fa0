"""The BSP cost model: what each program step costs, computed once at compile time.

A step is a program node that does work: an ``Execute`` (one superstep: sync, exchange, compute),
a ``Copy`` between tensors (sync, exchange, on-tile copies) or with the host (sync, PCIe), a
``Sync``, and the control work of loops, branches and calls. A run only adds up the steps it
executes, so loops and branches cost what they do at run time.

Per tile, a compute set costs its vertices' cycle estimates spread over the worker contexts:
plain ``Vertex`` estimates are one worker's cycles and a tile's workers share them
(``workers x max(longest vertex, total / workers)``, a makespan bound for barrel scheduling);
``MultiVertex`` and ``SupervisorVertex`` estimates are whole-tile cycles and add up. The step's
compute time is its slowest tile's.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace

import numpy as np

from softipu.compiler.conflicts import address_runs
from softipu.compiler.exchange import (
    Traffic,
    compute_set_traffic,
    copy_traffic,
    copy_transfers,
    exchange_cycles,
    split_by_mapping,
    traffic,
)
from softipu.compiler.executable import CompiledComputeSet, VertexGroup
from softipu.compiler.outline import Outline
from softipu.compiler.structure import StructureKeys
from softipu.debug import SourceLocation, at
from softipu.dtypes import DType
from softipu.errors import CodeletError
from softipu.graph import program as P
from softipu.graph.mapping import ResolvedMapping
from softipu.graph.streams import DataStream
from softipu.graph.tensor import Tensor
from softipu.graph.vertex import Direction, FieldShape, VertexKind, takes_target
from softipu.target import Target

__all__ = ["StepKind", "Step", "StepPricer", "vertex_cycles", "tile_compute_cycles"]

# Worker cycles of a vertex whose codelet has no ``cycles`` estimator: a loop over every field
# element plus call overhead. An ASSUMPTION [U]; the report marks such steps.
DEFAULT_VERTEX_OVERHEAD_CYCLES = 10


class StepKind(enum.Enum):
    COMPUTE = "compute"  # Execute
    COPY = "copy"  # tensor to tensor
    HOST = "host"  # stream copy or print over PCIe
    SYNC = "sync"
    CONTROL = "control"  # loop turn, branch, call


@dataclass(frozen=True, slots=True, eq=False)
class Step:
    """The static cost of one program step."""

    index: int
    kind: StepKind
    name: str
    location: SourceLocation
    op: str = ""
    compute_cycles: int = 0
    exchange_cycles: int = 0
    sync_cycles: int = 0
    bytes_exchanged: int = 0  # bytes received by tiles, on chip
    inter_ipu_bytes: int = 0
    host_bytes: int = 0  # per replica
    flops: int = 0
    busiest_tile: int = 0
    mean_tile_compute_cycles: float = 0.0
    estimated_by_default: bool = False  # some codelet had no cycles() estimator
    recv_tiles: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    recv_tile_bytes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def cycles(self) -> int:
        return self.compute_cycles + self.exchange_cycles + self.sync_cycles


def _field_lengths(group: VertexGroup) -> dict[str, object]:
    lengths: dict[str, object] = {}
    for name, f in group.codelet.fields.items():
        if f.direction is Direction.PARAM:
            lengths[name] = group.fields[name]
        elif f.shape is FieldShape.VECTOR_LIST:
            lengths[name] = tuple(t.shape[1] for t in group.tensors(name))
        else:
            lengths[name] = group.tensors(name)[0].shape[1]
    return lengths


def _estimate(group: VertexGroup, method: str, target: Target) -> np.ndarray | None:
    fn = getattr(group.codelet, method)
    if fn is None:
        return None
    kwargs = _field_lengths(group)
    if takes_target(fn):
        kwargs["target"] = target
    try:
        value = np.broadcast_to(np.asarray(fn(**kwargs)), (group.num_vertices,))
    except Exception as exc:
        raise CodeletError(f"{method}() of codelet {group.codelet.__name__} (defined at "
                           f"{group.codelet.defined_at}) failed: {type(exc).__name__}: {exc}"
                           f"{at(group.location(0))}") from exc
    if method != "cycles":
        return value.astype(np.int64)
    return _checked_counts(group, method, value)


def _checked_counts(group: VertexGroup, method: str, value: np.ndarray) -> np.ndarray:
    """``value`` as int64 counts, or a CodeletError naming the codelet, the first bad vertex's
    value and the user's line that added it: a cycle or flop count is a non-negative integer
    (a negative estimate would cancel other vertices' work on the tile)."""
    kind = value.dtype.kind
    if kind in "iu" and (kind == "u" or value.size == 0 or value.min() >= 0):
        return value.astype(np.int64)
    if kind in "iuf":
        as_float = value.astype(np.float64)
        bad = ~np.isfinite(as_float) | (as_float < 0) | (as_float != np.floor(as_float))
    else:  # bool, object, complex, strings: never a count
        bad = np.ones(value.shape, bool)
    if not bad.any():
        return value.astype(np.int64)
    i = int(np.flatnonzero(bad)[0])
    raise CodeletError(
        f"{method}() of codelet {group.codelet.__name__} (defined at {group.codelet.defined_at}) "
        f"returned {value[i]!r} for vertex {int(group.vertex_indices[i])} on tile "
        f"{int(group.tiles[i])}{at(group.location(i))}: estimates must be non-negative integers "
        f"(whole cycles); round up with int(np.ceil(...)) or fix the formula")


def vertex_cycles(group: VertexGroup, target: Target) -> tuple[np.ndarray, bool]:
    """(cycles per vertex, whether the default estimate was used)."""
    cycles = _estimate(group, "cycles", target)
    if cycles is not None:
        return cycles, False
    elements = sum(t.shape[1] for name, f in group.codelet.fields.items()
                   if f.direction is not Direction.PARAM for t in group.tensors(name))
    return np.full(group.num_vertices, DEFAULT_VERTEX_OVERHEAD_CYCLES + elements, np.int64), True


def _estimate_key(group: VertexGroup) -> tuple:
    """What a group's estimates depend on (:func:`_field_lengths`: its codelet, field lengths and
    params, and how many vertices): a matmul's groups differ mostly in their tiles alone."""
    parts: list[object] = [group.codelet, group.num_vertices]
    for name, f in group.codelet.fields.items():
        if f.direction is Direction.PARAM:
            value = np.asarray(group.fields[name])
            parts.append((value.dtype.str, value.shape, value.tobytes()))
        else:
            parts.append(tuple(t.shape[1] for t in group.tensors(name)))
    return tuple(parts)


def tile_compute_cycles(compiled: CompiledComputeSet, target: Target) -> tuple[np.ndarray, int, bool]:
    """(compute cycles per tile, flops, any default estimates) of one compute set."""
    tiles, workers = target.num_tiles, target.workers_per_tile
    worker_total = np.zeros(tiles, np.int64)
    worker_longest = np.zeros(tiles, np.int64)
    supervisor = np.zeros(tiles, np.int64)
    flops, defaulted = 0, False
    estimated: dict[tuple, tuple[np.ndarray, bool, int]] = {}  # groups alike but for their tiles
    for group in compiled.groups:
        key = _estimate_key(group)
        found = estimated.get(key)
        if found is None:
            cycles, used_default = vertex_cycles(group, target)
            f = _estimate(group, "flops", target)
            found = estimated[key] = (cycles, used_default, int(f.sum()) if f is not None else 0)
        cycles, used_default, group_flops = found
        defaulted |= used_default
        flops += group_flops
        if group.codelet.kind is VertexKind.VERTEX:
            worker_total += np.bincount(group.tiles, weights=cycles, minlength=tiles).astype(np.int64)
            if cycles.size and cycles.min() == cycles.max():
                present = np.unique(group.tiles)
                worker_longest[present] = np.maximum(worker_longest[present], cycles[0])
            else:
                np.maximum.at(worker_longest, group.tiles, cycles)
        else:
            supervisor += np.bincount(group.tiles, weights=cycles, minlength=tiles).astype(np.int64)
    per_tile = workers * np.maximum(worker_longest, -(-worker_total // workers)) + supervisor
    return per_tile, flops, defaulted


def _piece_regions(t: Traffic, transfers, num_tiles: int) -> Traffic:
    """A copy's traffic with one region per piece: a copy's pieces are runs contiguous on BOTH
    sides (``copy_transfers``), so pieces that touch in the source but land apart (a transpose,
    a gather) are separate regions to send and receive, though their bytes are one union."""
    send, recv = transfers.pieces_per_tile(num_tiles)
    return replace(t, send_regions=send, recv_regions=recv)


class StepPricer:
    """Prices program nodes; compute sets are priced once however often they run."""

    def __init__(self, target: Target, mappings: dict[DType, ResolvedMapping],
                 compute_sets: dict[int, CompiledComputeSet], replication_factor: int = 1, *,
                 keys: StructureKeys | None = None, outline: bool = False) -> None:
        self.target = target
        self.replication_factor = replication_factor
        self.mappings = mappings
        self.compute_sets = compute_sets
        self.steps: list[Step] = []
        self.step_of: dict[int, int] = {}
        self.exchange_code_regions = np.zeros(target.num_tiles, np.int64)
        # Outlining (compiler/outline.py): code of work repeating an earlier one's exactly is shared.
        self.outline = Outline() if outline else None
        self.shared_steps = 0  # steps whose code (control code included) an outlined subgraph holds
        self._cs_cache: dict[int, dict] = {}
        # Structurally identical work (a repeated layer's) is priced once: compute by work key,
        # exchange by layout key, copies by copy key (softipu.compiler.structure).
        self.keys = keys
        self._work: dict[tuple, dict] = {}
        self._layouts: dict[tuple, tuple[Traffic, dict]] = {}
        self._copies: dict[tuple, tuple[Traffic, np.ndarray, dict]] = {}

    def price(self, node: P.Program) -> None:
        method = getattr(self, f"price_{node.kind.name.lower()}", None)
        if method is not None and id(node) not in self.step_of:
            self.step_of[id(node)] = len(self.steps)
            self.steps.append(method(node, len(self.steps)))

    def _sync(self, traffic_: Traffic | None) -> int:
        crosses = traffic_ is not None and traffic_.inter_ipu_bytes > 0
        if self.target.num_ipus > 1 and crosses:
            return self.target.global_sync_cycles()
        return self.target.on_chip_sync_cycles

    def _moved(self, t: Traffic, code: bool = True, summary: dict | None = None) -> dict:
        """A step's exchange fields; ``summary``: :meth:`_summary` of ``t`` when kept with it."""
        if code:  # not when its code is an outlined subgraph's, counted once (compiler/outline.py)
            self.exchange_code_regions += t.send_regions + t.recv_regions
        else:
            self.shared_steps += 1
        return dict(self._summary(t) if summary is None else summary)

    def _summary(self, t: Traffic) -> dict:
        """What a step's traffic costs: kept with traffic shared by key, computed once."""
        cycles, _ = exchange_cycles(t, self.target)
        recv_tiles = np.flatnonzero(t.recv_bytes)
        return dict(exchange_cycles=cycles, bytes_exchanged=t.total_bytes,
                    inter_ipu_bytes=t.inter_ipu_bytes, recv_tiles=recv_tiles,
                    recv_tile_bytes=t.recv_bytes[recv_tiles], sync_cycles=self._sync(t))

    def price_execute(self, node: P.Execute, index: int) -> Step:
        cs = node.compute_set
        parts = self._cs_cache.get(cs.id)
        if parts is None:
            compiled = self.compute_sets[cs.id]
            code = self.outline is None or self.outline.first(self.keys, compiled)
            moved, summary = self._exchange(compiled)
            parts = self._compute_parts(compiled) | self._moved(moved, code, summary)
            self._cs_cache[cs.id] = parts
        else:  # the same compute set again: its exchange code is reused, not repeated
            parts = dict(parts)
        return Step(index, StepKind.COMPUTE, cs.name, node.location, cs.op, **parts)

    def price_copy(self, node: P.Copy, index: int) -> Step:
        src, dst = node.src, node.dst
        if isinstance(src, DataStream) or isinstance(dst, DataStream):
            tensor = dst if isinstance(src, DataStream) else src
            stream = src if isinstance(src, DataStream) else dst
            return self._host_step(index, f"Copy {stream.name!r}", node.location, tensor,
                                   to_device=isinstance(src, DataStream))
        key = self.keys.copy(src, dst) if self.keys is not None else None  # once: a digest pass
        moved, local, summary = self._copy_traffic(src, dst, key)
        code = self.outline is None or self.outline.first_copy(key)
        compute = int(np.ceil(local.max(initial=0) / self.target.on_tile_copy_bytes_per_cycle))
        return Step(index, StepKind.COPY, f"Copy {src.name} -> {dst.name}", node.location, "Copy",
                    compute_cycles=compute, busiest_tile=int(np.argmax(local)) if local.size else 0,
                    **self._moved(moved, code, summary))

    def _compute_parts(self, compiled: CompiledComputeSet) -> dict:
        key = self.keys.work(compiled) if self.keys is not None else None
        parts = self._work.get(key) if key is not None else None
        if parts is None:
            per_tile, flops, defaulted = tile_compute_cycles(compiled, self.target)
            busy = int(np.argmax(per_tile))
            parts = dict(compute_cycles=int(per_tile[busy]), flops=flops, busiest_tile=busy,
                         mean_tile_compute_cycles=float(per_tile.mean()),
                         estimated_by_default=defaulted)
            if key is not None:
                self._work[key] = parts
        return dict(parts)

    def _exchange(self, compiled: CompiledComputeSet) -> tuple[Traffic, dict]:
        """A compute set's traffic and its :meth:`_summary`, once per layout key."""
        key = self.keys.layout(compiled) if self.keys is not None else None
        found = self._layouts.get(key) if key is not None else None
        if found is None:
            moved = compute_set_traffic(compiled, self.mappings, self.target)
            found = moved, self._summary(moved)
            if key is not None:
                self._layouts[key] = found
        return found

    def _copy_traffic(self, src: Tensor, dst: Tensor, key: tuple | None) -> tuple[Traffic, np.ndarray, dict]:
        """A copy's traffic, on-tile bytes per tile and :meth:`_summary`, once per copy key
        (``key``: :meth:`StructureKeys.copy`, None for none)."""
        found = self._copies.get(key) if key is not None else None
        if found is None:
            counted = copy_traffic(src, dst, self.mappings, self.target)  # a transpose, per tile
            if counted is None:
                tiles = self.target.num_tiles
                transfers, local = copy_transfers(src, dst, self.mappings, tiles)
                counted = _piece_regions(traffic(transfers, self.target), transfers, tiles), local
            found = (*counted, self._summary(counted[0]))
            if key is not None:
                self._copies[key] = found
        return found

    def price_print_tensor(self, node: P.PrintTensor, index: int) -> Step:
        return self._host_step(index, f"PrintTensor {node.tensor.name}", node.location, node.tensor,
                               to_device=False)

    def _host_step(self, index: int, name: str, location: SourceLocation, tensor: Tensor,
                   to_device: bool) -> Step:
        nbytes = tensor.numel * tensor.dtype.itemsize
        tile_bytes = self._bytes_per_tile(tensor)
        empty = np.zeros(self.target.num_tiles, np.int64)
        t = Traffic(empty if to_device else tile_bytes, tile_bytes if to_device else empty,
                    empty, empty, np.zeros(self.target.num_ipus, np.int64),
                    np.zeros(self.target.num_ipus, np.int64))
        on_chip, _ = exchange_cycles(t, self.target)
        host = int(np.ceil(nbytes / self.target.host_link_bytes_per_cycle))
        parts = self._moved(t)
        parts["exchange_cycles"] = max(host, on_chip)
        parts["bytes_exchanged"] = int(tile_bytes.sum())  # on chip, either direction
        return Step(index, StepKind.HOST, name, location, "HostTransfer", host_bytes=nbytes, **parts)

    def _bytes_per_tile(self, tensor: Tensor) -> np.ndarray:
        starts, lengths = address_runs(tensor)
        p_starts, p_ends, tiles, _ = split_by_mapping(starts, starts + lengths, self.mappings[tensor.dtype])
        return np.bincount(tiles, weights=(p_ends - p_starts) * tensor.dtype.itemsize,
                           minlength=self.target.num_tiles).astype(np.int64)

    def price_sync(self, node: P.Sync, index: int) -> Step:
        # INTERNAL: this IPU's tiles; EXTERNAL: every IPU of the replica; GLOBAL: every IPU of
        # every replica (an inter-IPU sync includes each IPU's on-chip sync, Target docs).
        ipus = {P.SyncType.INTERNAL: 1, P.SyncType.EXTERNAL: self.target.num_ipus,
                P.SyncType.GLOBAL: self.target.num_ipus * self.replication_factor}[node.sync_type]
        cycles = self.target.global_sync_cycles(ipus)
        return Step(index, StepKind.SYNC, f"Sync {node.sync_type.value}", node.location, "Sync",
                    sync_cycles=cycles)

    def _control(self, node: P.Program, index: int, name: str, sync: bool) -> Step:
        return Step(index, StepKind.CONTROL, name, node.location, node.kind.value,
                    compute_cycles=self.target.control_cycles_per_step,
                    sync_cycles=self.target.on_chip_sync_cycles if sync else 0)

    def price_repeat(self, node: P.Repeat, index: int) -> Step:
        return self._control(node, index, f"Repeat x{node.count} (per turn)", sync=False)

    def price_repeat_while(self, node: P.RepeatWhileTrue, index: int) -> Step:
        # Every tile must see the predicate: a sync and a broadcast per test.
        return self._control(node, index, f"{type(node).__name__} test", sync=True)

    def price_if(self, node: P.If, index: int) -> Step:
        return self._control(node, index, "If test", sync=True)

    def price_switch(self, node: P.Switch, index: int) -> Step:
        return self._control(node, index, "Switch test", sync=True)

    def price_call(self, node: P.Call, index: int) -> Step:
        return self._control(node, index, f"Call {node.function.name}", sync=False)
