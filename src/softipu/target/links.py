"""Link-level costs: routes over the IPU-Link ladder and GW-Links, and one step of a collective.

The one source of truth for what moving bytes between IPUs costs. The compiler prices a step's
inter-IPU exchange with :func:`exchange_link_cycles`; the collectives (``softipu.collectives``) and
the estimates at scale price each step of their algorithms with :func:`ring_step` /
:func:`flows_cost` and whole collectives with :func:`collective_cost`, on a
:class:`~softipu.target.systems.System`.

The model (each figure from ``systems.py`` / ``targets.py``, with its source there):

* **Routes** [V] (poplibs' multi-IPU test model): within an IPU-Link domain, a route crosses the
  rung first, then goes up or down the ladder one rung per hop (the shorter way round where the
  ladder wraps into a torus). Between domains a route leaves its machine on the GW-Links and
  enters the destination machine on its GW-Links.
* **Contention**: every flow loads each link group on its route; a step takes as long as its
  busiest group: ``max(bytes on group / group rate)``. Groups: an IPU's 4 card, 2 cross, 2 up and
  2 down links; a machine's GW-Links out and in.
* **Latency**: the longest route's hops x the per-hop latency, plus the GW-Link latency where a
  route crosses domains; each step of a collective also syncs its IPUs
  (:meth:`System.sync_cycles`) and starts an exchange (``Target.exchange_latency_cycles``).

Ring orders and the AUTO choice follow poplibs' replicated collectives (``ReplicatedCollectives.cpp``
[V], ipu-facts-scale §3): ring patterns Interleaved (``0,2,4,6,7,5,3,1``), Flat (``0..n-1``) and
Serpent (``0,1,3,2,4,5,7,6``); methods clockwise / anticlockwise ring, bidirectional ring pair,
meet-in-middle ring, quad-directional ring; an all-reduce is a reduce-scatter then an all-gather
within each IPU-Link domain, with (two-level form) an all-reduce of the shards across domains over
GW-Links between them. No published cost model exists for the two-level form [U].
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from softipu.errors import TargetError
from softipu.target.systems import LinkLadder, System, ladder_of
from softipu.target.targets import Target

__all__ = ["Link", "StepCost", "CollectiveCost", "route", "ring_order", "ring_pattern", "ring_step",
           "flows_cost", "choose_method", "collective_cost", "group_rings", "data_parallel_step",
           "exchange_link_cycles", "ring_vertex_cycles", "ring_compute_set_cycles",
           "ring_phase_compute_cycles", "RING_WORKER_SETUP_CYCLES", "RING_NEXT_INSTRUCTIONS", "METHODS",
           "OPERATIONS", "RING_PATTERNS"]

Link = tuple[str, int]  # ("card" | "cross" | "up" | "down", ipu) or ("gw_out" | "gw_in", machine)

RING_PATTERNS = ("interleaved", "flat", "serpent")
METHODS = ("clockwise_ring", "anticlockwise_ring", "bidirectional_ring_pair", "meet_in_middle_ring",
           "quad_directional_ring")
OPERATIONS = ("all_reduce", "reduce_scatter", "all_gather", "all_to_all")


# --- Routes --------------------------------------------------------------------------------------


def _ladder_route(ladder: LinkLadder, rungs: int, src: int, dst: int, base: int = 0) -> list[Link]:
    """Links from local IPU ``src`` to ``dst`` of one ladder of ``rungs`` rungs (IPU ``base`` first)."""
    if src == dst:
        return []
    if src // 2 == dst // 2:
        return [("card", base + src)]
    path: list[Link] = []
    cur = src
    if cur % 2 != dst % 2:  # across the rung first
        path.append(("cross", base + cur))
        cur ^= 1
    up = (dst // 2 - cur // 2) % rungs if ladder.wraps else None
    going_up = (up <= rungs - up) if up is not None else cur < dst
    while cur != dst:
        if going_up:
            path.append(("up", base + cur))
            cur = (cur + 2) % (2 * rungs)
        else:
            path.append(("down", base + cur))
            cur = (cur - 2) % (2 * rungs)
    return path


def route(system: System, src_ipu: int, dst_ipu: int) -> tuple[Link, ...]:
    """The link groups a byte from global IPU ``src_ipu`` to ``dst_ipu`` crosses, in order."""
    src_ild, dst_ild = system.ild_of(src_ipu), system.ild_of(dst_ipu)
    if src_ild != dst_ild:
        return (("gw_out", system.machine_of(src_ipu)), ("gw_in", system.machine_of(dst_ipu)))
    d = system.ipus_per_ild
    base = src_ild * d
    return tuple(_ladder_route(system.ladder, system.rungs_per_ild, src_ipu - base, dst_ipu - base, base))


# --- Ring orders ---------------------------------------------------------------------------------


def ring_pattern(system: System, ipus_per_replica: int = 1) -> str:
    """poplibs' choice [V]: Interleaved on a plain ladder or with 1 IPU per replica; Flat on a
    torus with more than one IPU per replica."""
    return "flat" if system.ladder.wraps and ipus_per_replica > 1 else "interleaved"


def ring_order(n: int, pattern: str = "interleaved") -> tuple[int, ...]:
    """Ring index -> rank for a ring of ``n`` ranks, clockwise from rank 0.

    >>> ring_order(8), ring_order(8, "serpent"), ring_order(5)
    ((0, 2, 4, 6, 7, 5, 3, 1), (0, 1, 3, 2, 4, 5, 7, 6), (0, 2, 4, 3, 1))
    """
    if not isinstance(n, int) or n < 1:
        raise TargetError(f"ring_order needs a positive number of ranks, got {n!r}")
    if pattern == "interleaved":  # evens up one side of the ladder, odds back down the other
        return tuple(range(0, n, 2)) + tuple(range(n - 1 if n % 2 == 0 else n - 2, 0, -2))
    if pattern == "flat":
        return tuple(range(n))
    if pattern == "serpent":  # rung by rung, alternating sides
        return tuple(r ^ 1 if (r // 2) % 2 and (r ^ 1) < n else r for r in range(n))
    raise TargetError(f"unknown ring pattern {pattern!r}; choose one of {', '.join(RING_PATTERNS)}")


def group_rings(num_replicas: int, group_size: int | None = None, kind: str = "all",
                pattern: str = "interleaved") -> tuple[tuple[int, ...], ...]:
    """The rings (replica numbers, clockwise) of every replica group, GCL's CommGroup [V]:
    ``all`` one group; ``consecutive`` ``{0..k-1}, {k..2k-1}, ...``; ``orthogonal`` with
    ``m = N / k`` groups ``{0, m, 2m, ...}, {1, m+1, ...}``. Each group is ordered by ``pattern``
    over its members' positions."""
    n = num_replicas
    k = n if group_size is None or kind == "all" else group_size
    if not isinstance(k, int) or k < 1 or n % k:
        raise TargetError(f"replica group size {k!r} does not divide the {n} replicas")
    if kind in ("all", "consecutive"):
        groups = [list(range(g * k, (g + 1) * k)) for g in range(n // k)]
    elif kind == "orthogonal":
        m = n // k
        groups = [list(range(g, n, m)) for g in range(m)]
    else:
        raise TargetError(f"unknown replica group kind {kind!r}; choose all, consecutive or orthogonal")
    order = ring_order(k, pattern)
    return tuple(tuple(members[i] for i in order) for members in groups)


# --- One step ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StepCost:
    """Cycles (of the chip's clock) of one step in which flows move at once over the fabric."""

    link_cycles: int  # the busiest link group's bytes at its rate
    latency_cycles: int  # the longest route's hop and GW latency, plus the exchange's start-up
    sync_cycles: int  # the sync that starts the step
    busiest_link: Link | None
    busiest_link_bytes: float
    max_hops: int

    @property
    def cycles(self) -> int:
        return self.link_cycles + self.latency_cycles + self.sync_cycles


@functools.lru_cache(maxsize=4096)
def _pattern_load(system: System, pairs: tuple[tuple[int, int], ...]) -> tuple[float, Link | None, float,
                                                                                  int, bool]:
    """For flows of ONE byte each over ``pairs``: (seconds of the busiest group, that group, its
    flows, longest route's hops, whether a route crosses GW-Links)."""
    load: dict[Link, float] = {}
    hops, gw = 0, False
    for src, dst in pairs:
        path = route(system, src, dst)
        hops = max(hops, len(path))
        for link in path:
            load[link] = load.get(link, 0.0) + 1.0
            gw = gw or link[0] == "gw_out"
    if not load:
        return 0.0, None, 0.0, 0, False
    worst = max(load, key=lambda lk: load[lk] / system.link_group_bytes_per_second(lk[0]))
    return load[worst] / system.link_group_bytes_per_second(worst[0]), worst, load[worst], hops, gw


def flows_cost(system: System, pairs: Iterable[tuple[int, int]], nbytes: float,
               sync_ipus: int = 0) -> StepCost:
    """One step in which every ``(src_ipu, dst_ipu)`` pair moves ``nbytes`` at the same time.

    ``sync_ipus``: IPUs the step's sync spans (0: none priced). The pattern of routes is cached
    per system and pairs, so pricing the same step at many sizes is cheap.
    """
    per_byte_s, worst, flows, hops, gw = _pattern_load(system, tuple(pairs))
    clock = system.chip.clock_hz
    link = math.ceil(per_byte_s * nbytes * clock) if nbytes > 0 else 0
    latency = hops * system.chip.sync_seconds_per_hop + (system.gw_link_latency_seconds if gw else 0.0)
    latency_cycles = math.ceil(latency * clock) + system.chip.exchange_latency_cycles if hops else 0
    sync = system.sync_cycles(sync_ipus) if sync_ipus else 0
    return StepCost(link, latency_cycles, sync, worst, flows * nbytes, hops)


def _ring_pairs(rings: Sequence[Sequence[int]], direction: int, ipus_per_replica: int,
                mirrored: bool = False) -> list[tuple[int, int]]:
    k = ipus_per_replica
    pairs = []
    for ring in rings:
        n = len(ring)
        if n < 2:
            continue
        members = [r ^ 1 if mirrored and (r ^ 1) in ring else r for r in ring] if mirrored else ring
        for i, r in enumerate(members):
            to = members[(i + direction) % n]
            pairs.extend((r * k + j, to * k + j) for j in range(k))
    return pairs


def ring_step(system: System, rings: Sequence[Sequence[int]], nbytes: float, directions: Sequence[int] = (1,),
              ipus_per_replica: int = 1, mirrored: bool = False, sync: bool = True,
              sync_ipus: int | None = None) -> StepCost:
    """One step of a ring collective: in every ring (replica numbers, clockwise) every replica sends
    ``nbytes`` to its neighbour in each of ``directions`` (+1 clockwise, -1 anticlockwise), all rings
    and directions at once. A replica of ``k`` IPUs sends ``nbytes / k`` from each IPU to the same
    IPU of its neighbour. ``mirrored``: the rings with each replica swapped for its rung partner
    (the quad-directional ring's second pair). ``sync``: include the sync across the rings' IPUs
    (``sync_ipus``: across that many instead, e.g. every domain's where one domain's rings stand
    for all of them).
    """
    k = ipus_per_replica
    pairs = [p for d in directions for p in _ring_pairs(rings, d, k, mirrored)]
    used = (sync_ipus or len({r for ring in rings for r in ring}) * k) if sync and pairs else 0
    return flows_cost(system, pairs, nbytes / k, sync_ipus=used)


# --- Whole collectives ---------------------------------------------------------------------------


def choose_method(system: System, operation: str, nbytes: int, num_ranks: int,
                  ipus_per_replica: int = 1) -> str:
    """poplibs' AUTO choice [V] (ReplicatedCollectives.cpp, ipu-facts-scale §3).

    Torus with more than one IPU per replica: meet-in-middle. More than one IPU per replica or at
    most 2 ranks: clockwise ring. Otherwise meet-in-middle below size thresholds on the bytes per
    IPU (reduce-scatter: 1,245,184; 4,980,736 above 4 ranks; 39,845,888 above 8; always above 16;
    all-gather: the same halved), the bidirectional ring pair above them. An all-reduce (and an
    all-to-all) uses the reduce-scatter rule on its whole size.
    """
    k = ipus_per_replica
    if system.ladder.wraps and k > 1:
        return "meet_in_middle_ring"
    if k > 1 or num_ranks <= 2:
        return "clockwise_ring"
    per_ipu = nbytes // k
    t = (1245184, 4980736, 39845888)
    if operation == "all_gather":
        t = tuple(x // 2 for x in t)
    if per_ipu < t[0] or (num_ranks > 4 and per_ipu < t[1]) or (num_ranks > 8 and per_ipu < t[2]) \
            or num_ranks > 16:
        return "meet_in_middle_ring"
    return "bidirectional_ring_pair"


@dataclass(frozen=True, slots=True)
class CollectiveCost:
    """A collective's price: its steps (count x one step's cost) and their sum."""

    operation: str
    method: str
    nbytes: int  # per replica, the input's bytes
    num_ranks: int
    steps: tuple[tuple[str, int, StepCost], ...]  # (what, how many, one step)
    compute_cycles: int = 0  # the ring phases' compute sets (ring_phase_compute_cycles), where priced
    clock_hz: float = field(default=1.0, repr=False)
    layout_cycles: int = 0  # copies into and out of the ring's layout, MEAN's own division (_extras)

    @property
    def cycles(self) -> int:
        return sum(count * s.cycles for _, count, s in self.steps) + self.compute_cycles + self.layout_cycles

    @property
    def seconds(self) -> float:
        return self.cycles / self.clock_hz

    @property
    def num_steps(self) -> int:
        return sum(count for _, count, _ in self.steps)

    @property
    def algorithm_bandwidth(self) -> float:
        """Input bytes per second (NCCL's "algbw")."""
        return self.nbytes / self.seconds if self.cycles else math.inf

    @property
    def bus_bandwidth(self) -> float:
        """algbw x the bytes each rank must move per input byte ("busbw"): 2(n-1)/n for all-reduce,
        (n-1)/n for reduce-scatter / all-gather / all-to-all; comparable with a link's rate."""
        n = self.num_ranks
        factor = 2 * (n - 1) / n if self.operation == "all_reduce" else (n - 1) / n
        return self.algorithm_bandwidth * factor


def _ring_steps(system: System, rings, nbytes: float, method: str, k: int, what: str,
                sync_ipus: int | None = None) -> list:
    """(what, count, StepCost) of one reduce-scatter or all-gather over ``rings`` by ``method``
    (``sync_ipus``: each step's sync spans that many IPUs, :func:`ring_step`)."""
    n = len(rings[0])
    if n < 2:
        return []
    frag = nbytes / n

    def step(nb: float, directions: tuple[int, ...]) -> StepCost:
        return ring_step(system, rings, nb, directions, k, sync_ipus=sync_ipus)
    if method == "clockwise_ring":
        return [(what, n - 1, step(frag, (1,)))]
    if method == "anticlockwise_ring":
        return [(what, n - 1, step(frag, (-1,)))]
    if method == "bidirectional_ring_pair":
        return [(what, n - 1, step(frag / 2, (1, -1)))]
    if method == "meet_in_middle_ring":
        both = (n - 1) // 2
        out = [(what, both, step(frag, (1, -1)))] if both else []
        if (n - 1) - 2 * both:
            out.append((what + " (last, one way)", 1, step(frag, (1,))))
        return out
    if method == "quad_directional_ring":
        # A quarter each way on the ring and on its mirror (each replica swapped with its rung
        # partner), all four at once: they contend on shared link groups like any flows.
        pairs = [p for m in (False, True) for d in (1, -1) for p in _ring_pairs(rings, d, k, m)]
        used = sync_ipus or len({r for ring in rings for r in ring}) * k
        return [(what, n - 1, flows_cost(system, pairs, frag / 4 / k, sync_ipus=used))]
    raise TargetError(f"unknown collective method {method!r}; choose auto or one of {', '.join(METHODS)}")


# --- A ring step's compute set (the one model the functional collectives' vertices use) ----------
#
# GCL runs each ring step as one Repeat body: the cross-replica copy, then the reduction of what
# arrived with the replica's own fragment (or, all-gather, its store), every direction in one
# compute set (CollectivesProgram.hpp, ``ReduceProg`` concatenated), the fragment picked by an
# index that the loop increments. softipu.collectives builds exactly that: one compute set a step
# holding, on every tile, one ``RingReduce`` / ``RingStore`` multi-vertex per direction over the
# tile's columns of the fragment, plus the index increment (``RingNext``) on one tile.

RING_WORKER_SETUP_CYCLES = 20 + 19  # [U] a worker's set-up + [V] a dynamic row's (codelets.indexing)
RING_NEXT_INSTRUCTIONS = 4  # [U] the increment: load, add, store, exit (one worker)
# MEAN's division by the group size, a vector at a time by itemsize: popops' float divide loop,
# 10 cycles a float32 pair, 21 a float16 quad [V] (the same figures as codelets/elementwise DIVIDE).
RING_DIVIDE_CYCLES_PER_VECTOR = {4: 10, 2: 21}


def ring_vertex_cycles(chip: Target, width: int, itemsize: int, reduce: bool, divide: bool = False) -> int:
    """Whole-tile cycles of one ``RingReduce`` (``reduce``) or ``RingStore`` multi-vertex over
    ``width`` elements: each worker sets up its row and streams its share a vector at a time, one
    pass (load, [op], store); a reduction reads two operands, so two vector slots per vector [U].
    ``divide``: MEAN's division on the way (``RingStore``'s divided form, ``RingDivide``), a
    divide loop a vector (:data:`RING_DIVIDE_CYCLES_PER_VECTOR`)."""
    workers = chip.workers_per_tile
    vectors = -(-(-(-width // workers) * itemsize) // chip.vector_width_bytes)
    per_vector = (2 if reduce else 1) + (RING_DIVIDE_CYCLES_PER_VECTOR.get(itemsize, 10) if divide else 0)
    return workers * (RING_WORKER_SETUP_CYCLES + vectors * per_vector)


def layout_copy_cycles(chip: Target, nbytes: float, regions: int, ipus_per_replica: int = 1) -> int:
    """One copy that lays ``nbytes`` per replica out again over the replica's tiles (GCL's
    ``rearrangePre`` / ``rearrangePost``: a tensor not laid out as the ring wants, copied into the
    ring's layout or back): a sync, then each tile receives its share in ``regions`` pieces (one
    a fragment row), priced by the rule the compiler's exchange plan uses
    (``Target.exchange_phase_cycles``), and copies the part already on it (one piece in
    ``regions``, as a linear layout against a by-columns one has) at the on-tile copy rate."""
    tiles = ipus_per_replica * chip.compute_tiles_per_ipu
    per_tile = max(1, math.ceil(nbytes / tiles))
    local = math.ceil(per_tile / max(1, regions) / chip.on_tile_copy_bytes_per_cycle)
    return chip.on_chip_sync_cycles + int(chip.exchange_phase_cycles(per_tile, regions)) + local


def _busiest_pieces(chip: Target, columns: int, directions: int, tiles: int,
                    itemsize: int) -> tuple[int, int]:
    """(pieces, widest piece) on the busiest tile: the fragment's ``columns`` (every direction's,
    side by side) mapped by columns over ``tiles`` in whole vectors (``ring.map_by_columns``);
    a direction's columns are a block, so a tile holds one piece unless it straddles blocks."""
    per_dir = max(1, math.ceil(columns / directions))
    vw = chip.vector_width(itemsize)
    per_tile = min(columns, vw * math.ceil(columns / tiles / vw))
    if per_tile >= per_dir:
        return min(directions, math.ceil(per_tile / per_dir)), per_dir
    return (1, per_tile) if directions == 1 or per_dir % per_tile == 0 else (2, per_tile)


def ring_compute_set_cycles(chip: Target, direction_bytes: float, directions: int, ipus_per_replica: int,
                            itemsize: int, reduce: bool, shared: bool = False, divide: bool = False) -> int:
    """One ring step's compute set: sync, the exchange that reads the step index, and its busiest
    tile's vertices (one a piece, :func:`_busiest_pieces`) plus the index increment;
    ``direction_bytes`` per replica in each of ``directions`` rings, side by side, or (``shared``,
    meet-in-middle) over the same columns: then every tile works on its columns once a direction.
    ``divide``: the all-gather's own store divides by the group size first (MEAN)."""
    tiles = ipus_per_replica * chip.compute_tiles_per_ipu
    if shared:
        columns = max(1, math.ceil(direction_bytes / itemsize))
        vw = chip.vector_width(itemsize)
        pieces, width = directions, min(columns, vw * math.ceil(columns / tiles / vw))
    else:
        columns = max(1, math.ceil(direction_bytes * directions / itemsize))
        pieces, width = _busiest_pieces(chip, columns, directions, tiles, itemsize)
    return (chip.on_chip_sync_cycles + chip.exchange_latency_cycles
            + pieces * ring_vertex_cycles(chip, width, itemsize, reduce or divide, divide)
            + RING_NEXT_INSTRUCTIONS * chip.workers_per_tile)


def _ring_shape(method: str, n: int, frag: float, reduce: bool) -> list[tuple[int, int, float, bool]]:
    """(compute sets, directions, bytes a direction, reduce?) of a ring phase by ``method``, after
    its first compute set, as softipu.collectives builds it (rings: ring.py; meet-in-middle:
    meet.py, ``c = n // 2`` clockwise and ``a = (n - 1) // 2`` anticlockwise steps over the whole
    fragment; its reduce-scatter's last anticlockwise arrival is not reduced and the two partials
    are combined in one more compute set)."""
    if method in ("clockwise_ring", "anticlockwise_ring"):
        return [(n - 1, 1, frag, reduce)]
    if method == "bidirectional_ring_pair":
        return [(n - 1, 2, frag / 2, reduce)]
    if method == "quad_directional_ring":
        return [(n - 1, 4, frag / 4, reduce)]
    c, a = n // 2, (n - 1) // 2  # meet-in-middle
    if reduce:
        return [(a - 1, 2, frag, True), (1 + (c - a) + 1, 1, frag, True)]
    return [(a, 2, frag, False), (c - a, 1, frag, False)]


def ring_phase_compute_cycles(chip: Target, method: str, nbytes: float, n: int, ipus_per_replica: int = 1,
                              itemsize: int = 4, reduce: bool = True, lookup: bool = True,
                              divide: bool = False) -> int:
    """The compute of one ring phase (reduce-scatter: ``reduce``; all-gather) of ``nbytes`` per
    replica over ``n`` ranks, as softipu.collectives builds it (GCL's program): before the loop
    the replica's row table looked up (a compute set of one row), the counter set (a copy) and
    the first sends' slices or the own row's store (a ring compute set); then one ring compute
    set per step (:func:`_ring_shape`), two steps a ``Repeat`` turn. Syncs of the link steps are
    priced with the links (:func:`ring_step`). Meet-in-middle from 3 ranks; at 2 it is a ring.
    ``lookup`` False: the row table was looked up by an earlier phase of the same collective (an
    all-reduce's rings read one table in both phases: ``collectives.ring.ring_rows``). ``divide``
    (an all-reduce's all-gather, MEAN): its own store divides by the group size first."""
    if n < 2:
        return 0
    meet = method == "meet_in_middle_ring"
    if meet and n < 3:
        method, meet = "clockwise_ring", False
    frag, k = nbytes / n, ipus_per_replica
    shape = _ring_shape(method, n, frag, reduce)
    first = (2, frag) if meet and reduce else (1, frag) if meet else shape[0][1:3]
    table = chip.on_chip_sync_cycles + chip.exchange_latency_cycles + ring_vertex_cycles(chip, 1, 4, False)
    prologue = (chip.on_chip_sync_cycles + (table if lookup else 0)
                + ring_compute_set_cycles(chip, first[1], first[0], k, itemsize, False, meet,
                                          divide and not reduce))
    turns = ((n - 1) // 2 - 1) // 2 if meet else (n - 1) // 2
    steps = sum(sets * ring_compute_set_cycles(chip, b, d, k, itemsize, r, meet)
                for sets, d, b, r in shape if sets > 0)
    return prologue + turns * chip.control_cycles_per_step + steps


def collective_cost(system: System, operation: str, nbytes: int, num_replicas: int | None = None, *,
                    ipus_per_replica: int = 1, method: str = "auto", group_size: int | None = None,
                    group_kind: str = "all", itemsize: int = 4, compute: bool = True, op: str = "add",
                    rearranged: bool = False) -> CollectiveCost:
    """Price one collective of ``nbytes`` per replica over the replica groups of a program of
    ``num_replicas`` (default: all the system holds) replicas of ``ipus_per_replica`` IPUs.

    ``operation``: all_reduce, reduce_scatter, all_gather (``nbytes``: the gathered output), or
    all_to_all. Groups within one IPU-Link domain run rings over IPU-Links. A group spanning several
    domains (only ``all`` / ``consecutive`` groups of whole domains) runs the two-level form: the
    reduce-scatter within each domain, an all-reduce of each shard across domains over GW-Links
    (clockwise ring, [U]), then the all-gather within each domain. Analytic in the steps: never
    builds a flow per IPU beyond one domain, so 64,000 IPUs price in milliseconds.
    ``compute``: add the reductions' adds (estimate-only use; the functional collectives price
    their compute sets through the compiler and pass False).
    ``op``: the operator's name (``"mean"`` adds its division by the group size: fused into an
    all-reduce's first all-gather store, a compute set of its own after a reduce-scatter).
    ``rearranged``: the tensor is not laid out as the rings want (every tile holding the same
    columns of every fragment, ``collectives.map_by_columns``), so it is copied into that layout
    first and the result back (GCL's ``rearrangePre`` / ``Post``; :func:`layout_copy_cycles`).
    With ``compute``, these are priced as ``softipu.collectives`` builds them (``layout_cycles``).
    """
    k = ipus_per_replica
    n_all = system.num_ipus // k if num_replicas is None else num_replicas
    system.check_fits(k, n_all, what=f"{operation} collective")
    if operation not in OPERATIONS:
        raise TargetError(f"unknown collective {operation!r}; choose one of {', '.join(OPERATIONS)}")
    size = n_all if group_size is None or group_kind == "all" else group_size
    per_ild = max(1, system.ipus_per_ild // k)
    mean = op.lower() == "mean"
    if size > per_ild and group_kind != "orthogonal" and size % per_ild == 0:
        cost = _two_level(system, operation, nbytes, size, k, method, itemsize, compute, mean)
    else:
        pattern = ring_pattern(system, k)
        rings = group_rings(n_all, group_size, group_kind, pattern)
        # Other groups spanning domains (orthogonal ones, say) run one level: their routes cross
        # GW-Links where they must, priced flow by flow like any step.
        chosen = choose_method(system, operation, nbytes, size, k) if method == "auto" else method
        cost = _one_level(system, operation, nbytes, rings, chosen, k, itemsize, compute, mean)
    if not compute:
        return cost
    return replace(cost, layout_cycles=_extras(system.chip, operation, nbytes, size, k, itemsize, mean,
                                               rearranged))


def _extras(chip: Target, operation: str, nbytes: float, n: int, k: int, itemsize: int, mean: bool,
            rearranged: bool) -> int:
    """What ``softipu.collectives`` builds around the rings: the copies into and out of the
    rings' layout (``rearranged``; a reduce-scatter always copies its fragment to its output, an
    all-gather its input to its first send buffer, on each tile), and a reduce-scatter's MEAN
    division (a compute set of ``RingDivide`` vertices; an all-reduce's is in its all-gather's
    first store, priced with the ring's compute). An all-to-all is its one exchange alone."""
    if n < 2:
        return 0
    cycles = 0
    tiles = k * chip.compute_tiles_per_ipu
    if operation == "all_gather":  # the input to the send buffer, tile by tile
        cycles += chip.on_chip_sync_cycles + math.ceil(nbytes / n / tiles / chip.on_tile_copy_bytes_per_cycle)
    if operation == "reduce_scatter":
        frag = nbytes / n
        cycles += layout_copy_cycles(chip, frag, 1, k)
        if mean:
            vw = chip.vector_width(itemsize)
            width = vw * math.ceil(frag / itemsize / tiles / vw)
            cycles += chip.on_chip_sync_cycles + ring_vertex_cycles(chip, width, itemsize, True, True)
    copies = {"all_reduce": 2, "reduce_scatter": 1, "all_gather": 1, "all_to_all": 0}[operation]
    return cycles + (copies * layout_copy_cycles(chip, nbytes, n, k) if rearranged else 0)


def _one_level(system, operation, nbytes, rings, method, k, itemsize, compute, mean=False,
               sync_ipus=None) -> CollectiveCost:
    n = len(rings[0])
    steps: list = []
    adds = 0
    if operation == "all_to_all":
        pairs = [(a * k + j, b * k + j) for ring in rings for a in ring for b in ring if a != b
                 for j in range(k)]
        used = sum(len(r) for r in rings) * k
        steps = [("all-to-all exchange", 1, flows_cost(system, pairs, nbytes / n / k, sync_ipus=used))]
        method = "direct"
    else:
        if operation in ("all_reduce", "reduce_scatter"):
            steps += _ring_steps(system, rings, nbytes, method, k, "reduce-scatter step", sync_ipus)
            adds += ring_phase_compute_cycles(system.chip, method, nbytes, n, k, itemsize, True)
        if operation in ("all_reduce", "all_gather"):
            steps += _ring_steps(system, rings, nbytes, method, k, "all-gather step", sync_ipus)
            # an all-reduce's rings look their row table up once (meet-in-middle: once a phase)
            again = operation == "all_gather" or (method == "meet_in_middle_ring" and n >= 3)
            adds += ring_phase_compute_cycles(system.chip, method, nbytes, n, k, itemsize, False, again,
                                              mean and operation == "all_reduce")
    return CollectiveCost(operation, method, int(nbytes), n, tuple(steps), adds if compute else 0,
                          system.chip.clock_hz)


def _two_level(system, operation, nbytes, size, k, method, itemsize, compute, mean=False) -> CollectiveCost:
    """The hierarchical form (``softipu.collectives`` builds it for an all-reduce): inside each
    domain by ``method``, every domain's rings at once (each step syncs all ``size`` replicas'
    IPUs); across domains a clockwise ring over GW-Links for each ring part of the fragment (the
    bidirectional pair's two halves cross separately, as built; each part copied into the GW
    ring's layout and back, as built from a domain-laid-out input)."""
    per_ild = system.ipus_per_ild // k
    ilds = size // per_ild
    sync_ipus = size * k
    rings = group_rings(per_ild, None, "all", ring_pattern(system, k))
    inner_method = choose_method(system, operation, nbytes, per_ild, k) if method == "auto" else method
    inner = _one_level(system, "reduce_scatter" if operation != "all_gather" else "all_gather",
                       nbytes, rings, inner_method, k, itemsize, compute, sync_ipus=sync_ipus)
    steps = list(inner.steps)
    adds = inner.compute_cycles
    shard = nbytes / per_ild
    parts = {"bidirectional_ring_pair": 2, "quad_directional_ring": 4}.get(inner_method, 1)
    # Across domains: each IPU of domain 0 talks to the same IPU of domain 1 (every domain pair of
    # the ring does the same at once, on its own machines' GW-Links: symmetric, so one pair prices it).
    d = system.ipus_per_ild
    pairs = [(i, d + i) for i in range(d)]
    if operation in ("all_reduce", "reduce_scatter", "all_gather"):
        across = flows_cost(system, pairs, shard / parts / ilds / k, sync_ipus=sync_ipus)
        for phase, reduce in (("reduce-scatter", True), ("all-gather", False)):
            if operation != ("all_gather" if reduce else "reduce_scatter"):
                steps.append((f"GW {phase} step", parts * (ilds - 1), across))
                again = operation != "all_reduce" or reduce  # an all-reduce looks its rows up once
                phase_cycles = ring_phase_compute_cycles(system.chip, "clockwise_ring", shard / parts, ilds,
                                                         k, itemsize, reduce, again)
                adds += parts * phase_cycles if compute else 0
        if operation == "all_reduce" and compute:  # each part into and out of the GW ring's layout
            adds += parts * 2 * layout_copy_cycles(system.chip, shard / parts, ilds, k)
    else:  # all-to-all: each IPU sends (ilds-1)/ilds of its data off its domain through its machine
        steps.append(("GW all-to-all", 1, flows_cost(system, pairs, nbytes * (ilds - 1) / ilds / k,
                                                     sync_ipus=sync_ipus)))
    if operation == "all_reduce":
        steps += _ring_steps(system, rings, nbytes, inner_method, k, "all-gather step", sync_ipus)
        again = inner.method == "meet_in_middle_ring" and per_ild >= 3
        adds += ring_phase_compute_cycles(system.chip, inner.method, nbytes, per_ild, k, itemsize,
                                          False, again, mean) if compute else 0
    return CollectiveCost(operation, f"two_level({inner.method})", int(nbytes), size, tuple(steps),
                          adds, system.chip.clock_hz)


def data_parallel_step(system: System, replica_step_cycles: int, gradient_bytes: int, *,
                       ipus_per_replica: int = 1, num_replicas: int | None = None,
                       method: str = "auto", itemsize: int = 4) -> dict:
    """A data-parallel training step at scale: one replica's step (priced once, e.g. by
    ``Engine(..., estimate_only=True)``: the graph is per replica) plus the all-reduce of its
    gradients across the replicas (the system multiplies). Returns cycles, seconds and the parts."""
    k = ipus_per_replica
    n = system.num_ipus // k if num_replicas is None else num_replicas
    reduce = collective_cost(system, "all_reduce", gradient_bytes, n, ipus_per_replica=k, method=method,
                             itemsize=itemsize) if n > 1 else None
    comm = reduce.cycles if reduce is not None else 0
    total = int(replica_step_cycles) + comm
    return {"system": system.name, "replicas": n, "ipus": n * k, "compute_cycles": int(replica_step_cycles),
            "all_reduce_cycles": comm, "cycles": total, "seconds": total / system.chip.clock_hz,
            "method": reduce.method if reduce else None,
            "efficiency": replica_step_cycles / total if total else 1.0}


# --- The compiler's inter-IPU exchange -----------------------------------------------------------


def exchange_link_cycles(target: Target, pair_bytes: np.ndarray) -> int:
    """Cycles the IPU-Links need for one exchange step of a replica: ``pair_bytes[a, b]`` bytes
    from IPU ``a`` to IPU ``b`` of ``target``, routed over the ladder (the replica's IPUs are
    consecutive rungs, not wrapped), each link group's bytes at its rate; the busiest group
    bounds the step. Chips without a published ladder split (:func:`ladder_of`), or an odd number
    of IPUs, share all of an IPU's links among every pair [U]."""
    ipus = target.num_ipus
    pair_bytes = np.asarray(pair_bytes)
    per_link = target.ipu_link_bytes_per_cycle
    ladder = ladder_of(target)
    if ladder is None or ipus % 2:
        rate = target.ipu_links_per_ipu * per_link
        worst = max(pair_bytes.sum(axis=1).max(initial=0), pair_bytes.sum(axis=0).max(initial=0))
        return math.ceil(worst / rate)
    load: dict[Link, float] = {}
    for src, dst in zip(*np.nonzero(pair_bytes), strict=True):
        b = float(pair_bytes[src, dst])
        for link in _ladder_route(ladder, ipus // 2, int(src), int(dst)):
            load[link] = load.get(link, 0.0) + b
    if not load:
        return 0
    return math.ceil(max(v / (ladder.links(lk[0]) * per_link) for lk, v in load.items()))
