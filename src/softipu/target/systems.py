"""Frozen descriptions of multi-IPU systems: the IPU-M2000 / Bow-2000 and the IPU-PODs (``sp.systems``).

A :class:`System` is the hardware a program's replicas run on: ``num_ipus`` identical chips (a
:class:`~softipu.target.Target` of one IPU) in machines of four, joined within an *IPU-Link domain*
(ILD) by IPU-Links laid out as a ladder, and between domains by GW-Links. Link-level prices (routes,
rings, collective steps) live in :mod:`softipu.target.links` and read every figure from here.

Sources use the tags of ``ipu-facts.md`` (see :mod:`softipu.target.targets`): **[V]** primary,
**[S]** secondary, **[D]** derived (arithmetic in the comment), **[U]** uncertain or conflicting,
kept as a named field. Where sources conflict the field's comment says which default was chosen.

The IPU-Link ladder [V] (poplibs' multi-IPU test model, ipu-facts §2): IPUs ``2r`` and ``2r + 1``
form rung ``r`` (one card, or one pair of an M2000); each IPU has 4 links to its rung partner,
2 "cross" links that carry traffic routed across the rung, 2 links up to IPU ``i + 2`` and 2 down
to ``i - 2``. A route crosses the rung first, then goes up or down. Pods of 16 IPUs and more close
the ladder into a ring of rungs with loopback cables (a torus, Poplar's ``IpuLinkTopology::Torus``
[V], the POD64's "2-D torus" [V]); :attr:`LinkLadder.wraps` says so.

>>> from softipu.target.systems import POD16, POD256
>>> POD16.num_ipus, POD16.num_machines, POD16.ipus_per_ild, POD16.num_ilds
(16, 4, 16, 1)
>>> POD256.num_ilds  # four POD64s over GW-Links
4
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields, replace

from softipu.debug import at, caller_location
from softipu.errors import TargetError
from softipu.target.targets import BOW, GC200, Target, checked_number

__all__ = ["LinkLadder", "System", "ladder_of", "ipu_fabric", "smallest_fabric", "system_of", "check_graph",
           "M2000", "BOW_2000", "POD4",
           "POD16", "POD64", "POD128", "POD256", "BOW_POD16", "BOW_POD64", "BOW_POD128", "BOW_POD256"]


@dataclass(frozen=True, slots=True)
class LinkLadder:
    """How an IPU's IPU-Links are split in the ladder [V] (poplibs test model, ipu-facts §2)."""

    card_links: int = 4  # to the rung partner, for its own traffic
    cross_links: int = 2  # to the rung partner, for traffic routed across the rung
    up_links: int = 2  # to IPU i + 2
    down_links: int = 2  # to IPU i - 2
    wraps: bool = False  # the top rung links to the bottom one (torus)

    def __post_init__(self) -> None:
        for name in ("card_links", "cross_links", "up_links", "down_links"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value <= 0:
                raise TargetError(f"LinkLadder.{name} must be a positive int, got {value!r}")

    @property
    def links_per_ipu(self) -> int:
        return self.card_links + self.cross_links + self.up_links + self.down_links

    def links(self, kind: str) -> int:
        """Links of one group: ``"card"``, ``"cross"``, ``"up"`` or ``"down"``."""
        return {"card": self.card_links, "cross": self.cross_links, "up": self.up_links,
                "down": self.down_links}[kind]


_POPLIBS_LADDER = LinkLadder()


def ladder_of(target: Target, wraps: bool = False) -> LinkLadder | None:
    """The ladder of ``target``'s IPU-Links, or None where its links are not broken down.

    Chips with 10 links per IPU (GC200, BOW) use poplibs' 4 + 2 + 2 + 2 split [V]. For others
    (GC2's 3 links, the C600 card's 4) no split is published [U]: the compiler then shares all of
    an IPU's links among every pair it talks to, the model softipu used before routes.
    """
    if target.ipu_links_per_ipu == _POPLIBS_LADDER.links_per_ipu:
        return replace(_POPLIBS_LADDER, wraps=wraps)
    return None


# Per-field rules: positive unless listed here.
_MAY_BE_ZERO = frozenset({"gw_link_latency_seconds", "gw_sync_seconds"})


@dataclass(frozen=True, slots=True, kw_only=True)
class System:
    """A multi-IPU system: machines of ``ipus_per_machine`` IPUs, IPU-Link domains, GW-Links.

    IPUs are numbered globally ``0 .. num_ipus - 1``; IPU ``i`` is in machine ``i // 4`` and in
    IPU-Link domain ``i // ipus_per_ild``. Replica ``r`` of a program of ``k`` IPUs per replica
    runs on IPUs ``r*k .. r*k + k - 1`` (consecutive, as Poplar numbers them).
    """

    name: str
    chip: Target  # one IPU (num_ipus == 1)
    num_ipus: int
    ipus_per_machine: int = 4  # M2000 / Bow-2000: 4 IPUs [V]
    # IPUs joined by IPU-Links: the whole system up to a POD64; POD128 and up are POD64s joined by
    # GW-Links [V] (ipu-facts §2, ipu-facts-scale §4).
    ipus_per_ild: int
    ladder: LinkLadder

    # IPU-Links: rates, efficiency and the per-hop latency come from ``chip`` (one source each):
    # ``ipu_link_bytes_per_second``, ``ipu_link_efficiency`` and ``sync_seconds_per_hop``, the
    # poplibs model's 15 ns a hop [V], which links.py also charges a data route per hop [U].

    # --- GW-Links between IPU-Link domains -----------------------------------------------------
    # "2 x 100 Gbps per machine" [S] (ipu-facts §2); the M2000 front panel has 2 GW-Link ports [V]
    # (ipu-facts-scale §4). One direction each: 100e9 / 8 = 12.5 GB/s [D].
    gw_links_per_machine: int = 2
    gw_link_bytes_per_second: float = 100e9 / 8
    # Payload fraction: no published figure [U]; assumed equal to the IPU-Link model's 0.85 [V].
    gw_link_efficiency: float = 0.85
    # Latency of a GW-Link transfer (gateway to gateway). No published figure [U]: 2 us, of the
    # order of a 100 GbE RoCE round trip.
    gw_link_latency_seconds: float = 2e-6

    # --- Host ------------------------------------------------------------------------------------
    # Host to machine: 2 RNIC ports, 100 GbE RoCEv2 [V] (ipu-facts-scale §4): 2 x 12.5 GB/s [D],
    # shared by the machine's IPUs.
    host_bytes_per_second_per_machine: float = 2 * 100e9 / 8

    # --- Streaming memory (DDR on the machine, behind the gateway) -------------------------------
    # Size per machine. CONFLICT [U] (ipu-facts-scale §4): 448 GB (2020 launch figure) against
    # 256 GB streaming + 3.6 GB SRAM, "~260 GB" (newer official pages, Bow-2000 datasheet [V]; a
    # POD64's "up to 4.2 TB" is ~262 GB a machine [D]). Default 256 GB: the newer primary source.
    streaming_memory_bytes_per_machine: int = 256 * 10**9
    # Bandwidth one IPU sees to streaming memory: no official figure; "20 GB/s per IPU" [U].
    streaming_memory_bytes_per_second_per_ipu: float = 20e9

    # --- Sync --------------------------------------------------------------------------------------
    # Sync within a domain: the chip's on-chip sync plus poplibs' fabric term (Target docs; Sync-
    # Links carry it [V]). Across domains, one more exchange of sync over the GW fabric: no
    # published figure [U], assumed one GW-Link latency each way.
    gw_sync_seconds: float = 4e-6

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise TargetError(f"System name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.chip, Target) or self.chip.num_ipus != 1:
            raise TargetError(f"System {self.name!r}: chip must be a Target of one IPU, got {self.chip!r}")
        if not isinstance(self.ladder, LinkLadder):
            raise TargetError(f"System {self.name!r}: ladder must be a LinkLadder, got {self.ladder!r}")
        for f in fields(self):
            if f.name not in ("name", "chip", "ladder"):
                self._check_number(f.name, str(f.type))
        self._check_shape()

    def _check_number(self, name: str, annotation: str) -> None:
        value = checked_number(f"System {self.name!r}", name, getattr(self, name), annotation,
                               name in _MAY_BE_ZERO)
        object.__setattr__(self, name, value)

    def _check_shape(self) -> None:
        n, m, d = self.num_ipus, self.ipus_per_machine, self.ipus_per_ild
        if not 0 < self.gw_link_efficiency <= 1:
            raise TargetError(f"System {self.name!r}: gw_link_efficiency must lie in (0, 1], "
                              f"got {self.gw_link_efficiency}")
        if self.ladder.links_per_ipu != self.chip.ipu_links_per_ipu:
            raise TargetError(
                f"System {self.name!r}: its ladder uses {self.ladder.links_per_ipu} IPU-Links per IPU "
                f"but the {self.chip.name} chip has {self.chip.ipu_links_per_ipu}")
        if m % 2 or d % m or n % d:
            raise TargetError(
                f"System {self.name!r}: IPUs must fill whole rungs, machines and IPU-Link domains "
                f"(num_ipus {n} a multiple of ipus_per_ild {d}, itself a multiple of "
                f"ipus_per_machine {m}, an even number)")

    # --- Shape ---------------------------------------------------------------------------------------

    @property
    def num_machines(self) -> int:
        return self.num_ipus // self.ipus_per_machine

    @property
    def num_ilds(self) -> int:
        """IPU-Link domains, joined to each other by GW-Links."""
        return self.num_ipus // self.ipus_per_ild

    @property
    def rungs_per_ild(self) -> int:
        return self.ipus_per_ild // 2

    @property
    def streaming_memory_bytes(self) -> int:
        return self.num_machines * self.streaming_memory_bytes_per_machine

    @property
    def peak_fp16_flops(self) -> float:
        return self.num_ipus * self.chip.peak_fp16_flops

    def machine_of(self, ipu: int) -> int:
        return self._checked_ipu(ipu) // self.ipus_per_machine

    def ild_of(self, ipu: int) -> int:
        return self._checked_ipu(ipu) // self.ipus_per_ild

    def _checked_ipu(self, ipu: int) -> int:
        if not isinstance(ipu, numbers.Integral) or not 0 <= ipu < self.num_ipus:
            raise TargetError(f"IPU {ipu!r} does not exist on {self.name!r} ({self.num_ipus} IPUs)")
        return int(ipu)

    # --- Link rates (bytes per second of payload, one direction) --------------------------------

    def link_group_bytes_per_second(self, kind: str) -> float:
        """Payload rate of one group of links of one IPU (``card``/``cross``/``up``/``down``) or of
        one machine's GW-Links (``gw_out``/``gw_in``)."""
        if kind in ("gw_out", "gw_in"):
            return self.gw_links_per_machine * self.gw_link_bytes_per_second * self.gw_link_efficiency
        per_link = self.chip.ipu_link_bytes_per_second * self.chip.ipu_link_efficiency
        return self.ladder.links(kind) * per_link

    @property
    def host_bytes_per_second_per_ipu(self) -> float:
        return self.host_bytes_per_second_per_machine / self.ipus_per_machine

    # --- Programs on the system ----------------------------------------------------------------------

    def target(self, ipus_per_replica: int = 1) -> Target:
        """The chip as one replica of ``ipus_per_replica`` IPUs: the Target a Graph is built for."""
        self.check_fits(ipus_per_replica, 1)
        return self.chip.with_num_ipus(ipus_per_replica)

    def check_fits(self, ipus_per_replica: int, replication_factor: int = 1, what: str = "program",
                   location=None) -> None:
        """Raise a clear :class:`TargetError` if ``replication_factor`` replicas of
        ``ipus_per_replica`` IPUs do not fit this system; names ``what`` and the user's line."""
        for name, value in (("ipus_per_replica", ipus_per_replica),
                            ("replication_factor", replication_factor)):
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
                raise TargetError(f"{what} on {self.name!r}: {name} must be an int >= 1, got {value!r}")
        need = ipus_per_replica * replication_factor
        if need > self.num_ipus:
            where = at(location if location is not None else caller_location())
            raise TargetError(
                f"{what}{where} needs {need} IPUs ({replication_factor} replica(s) x "
                f"{ipus_per_replica} IPU(s)) but {self.name} has {self.num_ipus}: use a larger system "
                f"(e.g. sp.systems.ipu_fabric({_next_size(need)})) or fewer replicas")

    def sync_cycles(self, num_ipus: int) -> int:
        """Cycles (of the chip's clock) of one sync across ``num_ipus`` IPUs of this system.

        Scope: 1 IPU: the on-chip sync; within one IPU-Link domain: on chip plus poplibs' fabric
        term over Sync-Links (``Target.global_sync_cycles``) [V model]; across domains: the domain's
        sync plus :attr:`gw_sync_seconds` [U]. A GLOBAL sync of R replicas of k IPUs passes k x R.
        """
        self.check_fits(num_ipus, 1, what="sync")
        within = self.chip.global_sync_cycles(min(num_ipus, self.ipus_per_ild))
        if num_ipus <= self.ipus_per_ild:
            return within
        return within + math.ceil(self.gw_sync_seconds * self.chip.clock_hz)


def _next_size(ipus: int) -> int:
    return max(16, 1 << (ipus - 1).bit_length()) if ipus <= 64 else -(-ipus // 64) * 64


def ipu_fabric(num_ipus: int, chip: Target = GC200, name: str | None = None, **overrides: object) -> System:
    """A system of ``num_ipus`` IPUs (a multiple of 4): one IPU-Link domain up to 64 IPUs, else
    POD64 domains joined by GW-Links, as IPU-Fabric scales "to 64,000 IPUs" [S] (ipu-facts §2; the
    POD64 is "scalable to 1,024 POD64 racks" [V]). Pods proper are powers of two >= 16 [V]; this
    factory also takes e.g. 64,000 = 1,000 POD64s, for pricing at scale."""
    if not isinstance(num_ipus, numbers.Integral) or num_ipus < 4 or num_ipus % 4:
        raise TargetError(f"ipu_fabric needs a multiple of 4 IPUs (whole machines), got {num_ipus!r}")
    if num_ipus > 64 and num_ipus % 64:
        raise TargetError(f"ipu_fabric: beyond 64 IPUs systems are whole POD64s, got {num_ipus}")
    ild = min(int(num_ipus), 64)
    base = {
        "name": name or f"IPU-Fabric({num_ipus} x {chip.name})",
        "chip": chip,
        "num_ipus": int(num_ipus),
        "ipus_per_ild": ild,
        # Pods of 16 and more close the ladder with loopback cables (torus) [V]; one machine alone
        # is a 2-rung ladder [U].
        "ladder": ladder_of(chip, wraps=ild >= 16) or LinkLadder(),
    }
    return System(**(base | overrides))  # type: ignore[arg-type]


def smallest_fabric(num_ipus: int, chip: Target = GC200) -> System:
    """The smallest :func:`ipu_fabric` of ``chip`` with at least ``num_ipus`` IPUs: whole machines
    up to a POD64, whole POD64s beyond (what a graph of replicas runs on when no system is named)."""
    need = max(4, int(num_ipus))
    return ipu_fabric(-(-need // 4) * 4 if need <= 64 else -(-need // 64) * 64, chip=chip.with_num_ipus(1))


def system_of(graph) -> System:
    """The system a graph's replicas run on: the one it was built for (``sp.Graph(target,
    replication_factor, system=sp.systems.POD16)``), else the smallest :func:`ipu_fabric` of its
    chip that holds every replica. Cross-replica copies, collectives' ring orders and AUTO choice
    and Streaming Memory sizes are priced and checked on it."""
    system = getattr(graph, "system", None)
    if system is not None:
        return system
    return smallest_fabric(graph.replication_factor * graph.target.num_ipus, graph.target)


def check_graph(system: object, target: Target, replication_factor: int, location=None) -> System:
    """``system`` checked for a graph of ``replication_factor`` replicas of ``target`` (made of the
    system's chip, every replica's IPUs on it): a clear :class:`TargetError` naming the graph and
    the user's line otherwise."""
    where = at(location if location is not None else caller_location())
    if not isinstance(system, System):
        raise TargetError(f"Graph{where}: system must be a softipu System (sp.systems.POD16, "
                          f"sp.systems.ipu_fabric(n), ...), got {system!r}")
    if target.with_num_ipus(1) != system.chip:
        raise TargetError(f"Graph{where}: its target {target.name} is not the chip {system.name} is made of "
                          f"({system.chip.name}); build the graph for {system.name}.target(ipus_per_replica) "
                          f"or the system for the chip (sp.systems.ipu_fabric(n, chip=target))")
    system.check_fits(target.num_ipus, replication_factor, what="Graph", location=location)
    return system


# --- Presets ---------------------------------------------------------------------------------------
# IPU-M2000 (GC200 x 4, 1 PFLOPS [V]); IPU-POD4/16/64/128/256 = 1/4/16/32/64 machines [V]; POD128
# and POD256 are 2 and 4 POD64s over GW-Links [V] (ipu-facts §2, ipu-facts-scale §4).
M2000 = ipu_fabric(4, name="IPU-M2000")
POD4 = ipu_fabric(4, name="IPU-POD4")
POD16 = ipu_fabric(16, name="IPU-POD16")
POD64 = ipu_fabric(64, name="IPU-POD64")
POD128 = ipu_fabric(128, name="IPU-POD128")
POD256 = ipu_fabric(256, name="IPU-POD256")
# Bow-2000: 4 Bow IPUs, 1.4 PFLOPS [V], Sync-Links [V], 256 GB streaming memory [V] (the default).
# Its "IPU-Link 512Gbps" is not broken down per link [U]: GC200's link model is kept.
BOW_2000 = ipu_fabric(4, chip=BOW, name="Bow-2000")
BOW_POD16 = ipu_fabric(16, chip=BOW, name="Bow Pod16")
BOW_POD64 = ipu_fabric(64, chip=BOW, name="Bow Pod64")
BOW_POD128 = ipu_fabric(128, chip=BOW, name="Bow Pod128")
BOW_POD256 = ipu_fabric(256, chip=BOW, name="Bow Pod256")
