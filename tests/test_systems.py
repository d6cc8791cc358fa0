"""Systems (sp.systems) and link-level costs (target/links.py) against figures worked out by hand
from the published numbers: the poplibs link model (128 Gibit/s per IPU-Link, 0.85 efficiency,
4 card + 2 cross + 2 up + 2 down links), GW-Links of 100 Gbit/s, 15 ns per hop."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

import softipu as sp
from softipu import program as P
from softipu.errors import TargetError
from softipu.target import links as L
from softipu.target.systems import (
    BOW_2000,
    BOW_POD64,
    M2000,
    POD4,
    POD16,
    POD64,
    POD128,
    POD256,
    LinkLadder,
    System,
    ipu_fabric,
)

sys.path.insert(0, str(Path(__file__).parent))
from _costs_helpers import only_step, variable  # noqa: E402
from codelets_for_tests import Move  # noqa: E402

CLOCK = 1.33e9
LINK = 128 * 2**30 / 8 * 0.85  # one IPU-Link's payload bytes per second, one direction
GW = 2 * 100e9 / 8 * 0.85  # one machine's 2 GW-Links, payload, one direction


# --- Shapes and figures -------------------------------------------------------------------------


@pytest.mark.parametrize(("system", "ipus", "machines", "ilds"), [
    (M2000, 4, 1, 1), (POD4, 4, 1, 1), (POD16, 16, 4, 1), (POD64, 64, 16, 1), (POD128, 128, 32, 2),
    (POD256, 256, 64, 4), (BOW_2000, 4, 1, 1), (BOW_POD64, 64, 16, 1)])
def test_system_shapes(system, ipus, machines, ilds):
    assert (system.num_ipus, system.num_machines, system.num_ilds) == (ipus, machines, ilds)
    assert system.chip.num_ipus == 1 and system.ladder.links_per_ipu == 10


def test_published_system_figures():
    # M2000: "1 PFLOPS FP16.16" = 4 x 249.7 TFLOPS; POD64 "15.978 PFLOPS" = 64 x 249.7 (1.33 GHz: +0.4%)
    assert M2000.peak_fp16_flops == pytest.approx(1e15, rel=0.01)
    assert POD64.peak_fp16_flops == pytest.approx(15.978e15, rel=0.01)
    assert BOW_2000.peak_fp16_flops == pytest.approx(1.4e15, rel=0.01)  # "1.4 PFLOPS"
    # Streaming memory: 256 GB a machine (default); POD64 "up to 4.2 TB" ~ 16 x 256 GB = 4.1 TB
    assert POD64.streaming_memory_bytes == 16 * 256 * 10**9
    assert POD64.streaming_memory_bytes == pytest.approx(4.2e12, rel=0.03)
    assert ipu_fabric(16, streaming_memory_bytes_per_machine=448 * 10**9).streaming_memory_bytes == 4 * 448e9
    # Tori from 16 IPUs (loopback cables), a plain 2-rung ladder for one machine
    assert POD16.ladder.wraps and POD64.ladder.wraps and not M2000.ladder.wraps
    assert POD16.link_group_bytes_per_second("card") == 4 * LINK
    assert POD16.link_group_bytes_per_second("up") == 2 * LINK
    assert POD16.link_group_bytes_per_second("gw_out") == GW


def test_system_validation():
    with pytest.raises(TargetError, match="chip must be a Target of one IPU"):
        System(name="x", chip=sp.targets.GC200.with_num_ipus(2), num_ipus=4, ipus_per_ild=4,
               ladder=LinkLadder())
    with pytest.raises(TargetError, match="ladder uses 12 IPU-Links"):
        ipu_fabric(4, ladder=LinkLadder(card_links=6))
    with pytest.raises(TargetError, match="whole rungs, machines"):
        ipu_fabric(12, ipus_per_ild=8)
    with pytest.raises(TargetError, match="multiple of 4"):
        ipu_fabric(6)
    with pytest.raises(TargetError, match="gw_link_bytes_per_second must be a positive"):
        ipu_fabric(4, gw_link_bytes_per_second=0)
    with pytest.raises(TargetError, match="whole POD64s"):
        ipu_fabric(96)


def test_program_too_big_for_its_system_names_it_and_the_line():
    with pytest.raises(TargetError, match=r"program \(at .*test_systems.py:\d+\) needs 32 IPUs .* IPU-POD16 has 16"):
        POD16.check_fits(8, 4)
    with pytest.raises(TargetError, match="needs 32 IPUs"):
        POD16.target(ipus_per_replica=32)
    assert POD16.target(ipus_per_replica=4).num_ipus == 4
    with pytest.raises(TargetError, match="all_reduce collective .* needs 32 IPUs"):
        L.collective_cost(POD16, "all_reduce", 1024, 32)


# --- Sync by scope --------------------------------------------------------------------------------


def test_sync_by_scope_by_hand():
    assert POD16.sync_cycles(1) == 150  # on chip only
    # 2 IPUs: 1 hop, paid twice: ceil(15e-9 x 1.33e9 x 2) = 40 over the fabric
    assert POD16.sync_cycles(2) == 150 + 40
    # 16 IPUs: 1 + (16/2)/2 = 5 hops: ceil(15e-9 x 1.33e9 x 5 x 2) = ceil(199.5) = 200
    assert POD16.sync_cycles(16) == 150 + 200
    # 128 IPUs = 2 POD64 domains: the domain's 17 hops, ceil(15e-9 x 1.33e9 x 34) = 679, plus the
    # GW term 4 us x 1.33 GHz = 5320
    assert POD128.sync_cycles(128) == 150 + 679 + 5320
    with pytest.raises(TargetError, match="needs 32 IPUs"):
        POD16.sync_cycles(32)


# --- Routes and ring orders -----------------------------------------------------------------------


def test_routes_over_the_ladder_by_hand():
    assert L.route(POD16, 0, 1) == (("card", 0),)  # rung partners
    assert L.route(POD16, 0, 2) == (("up", 0),)
    # across the rung first, then up: 0 -> 1 -> 3 -> 5 -> 7
    assert L.route(POD16, 0, 7) == (("cross", 0), ("up", 1), ("up", 3), ("up", 5))
    assert L.route(POD16, 0, 14) == (("down", 0),)  # the torus wraps: rung 0 -> rung 7
    assert L.route(M2000, 2, 0) == (("down", 2),)
    assert L.route(M2000, 3, 0) == (("cross", 3), ("down", 2))
    # POD128: IPU 3 (machine 0, domain 0) to IPU 70 (machine 17, domain 1) over GW-Links
    assert L.route(POD128, 3, 70) == (("gw_out", 0), ("gw_in", 17))


def test_ring_orders_follow_poplibs():
    assert L.ring_order(8) == (0, 2, 4, 6, 7, 5, 3, 1)
    assert L.ring_order(8, "flat") == tuple(range(8))
    assert L.ring_order(8, "serpent") == (0, 1, 3, 2, 4, 5, 7, 6)
    assert L.ring_order(5) == (0, 2, 4, 3, 1)
    assert L.ring_pattern(POD16, 1) == "interleaved" and L.ring_pattern(POD16, 2) == "flat"
    assert L.ring_pattern(M2000, 2) == "interleaved"
    # CommGroups: consecutive {0,1,2,3},{4..7}; orthogonal with m = 8/4 = 2: {0,2,4,6},{1,3,5,7}
    assert L.group_rings(8, 4, "consecutive", "flat") == ((0, 1, 2, 3), (4, 5, 6, 7))
    assert L.group_rings(8, 4, "orthogonal", "flat") == ((0, 2, 4, 6), (1, 3, 5, 7))
    assert L.group_rings(8, 4, "consecutive") == ((0, 2, 3, 1), (4, 6, 7, 5))
    with pytest.raises(TargetError, match="group size 3 does not divide the 8 replicas"):
        L.group_rings(8, 3, "consecutive")


def test_auto_choice_follows_poplibs_thresholds():
    ch = L.choose_method
    assert ch(POD16, "all_reduce", 10**9, 16, 2) == "meet_in_middle_ring"  # torus, 2 IPUs a replica
    assert ch(M2000, "all_reduce", 10**9, 2, 2) == "clockwise_ring"
    assert ch(POD16, "reduce_scatter", 10**9, 2) == "clockwise_ring"  # 2 ranks
    assert ch(POD16, "reduce_scatter", 1245183, 4) == "meet_in_middle_ring"
    assert ch(POD16, "reduce_scatter", 1245184, 4) == "bidirectional_ring_pair"
    assert ch(POD16, "reduce_scatter", 4980735, 8) == "meet_in_middle_ring"
    assert ch(POD16, "reduce_scatter", 39845888, 16) == "bidirectional_ring_pair"
    assert ch(POD16, "all_gather", 622592, 4) == "bidirectional_ring_pair"  # halved thresholds
    assert ch(POD64, "reduce_scatter", 10**9, 32) == "meet_in_middle_ring"  # > 16 ranks


# --- One step: contention per link group ------------------------------------------------------------


def test_ring_step_by_hand():
    # POD16, interleaved ring of 16 one-IPU replicas, 64 KiB clockwise: each "up"/"down"/"card"
    # group carries one flow. 65536 B / (2 x LINK) x 1.33 GHz = 2984.1 -> 2985 cycles.
    ring = L.group_rings(16)
    step = L.ring_step(POD16, ring, 65536)
    assert step.link_cycles == math.ceil(65536 / (2 * LINK) * CLOCK) == 2985
    assert step.max_hops == 1
    # latency: 1 hop x 15 ns x 1.33 GHz = 19.95 -> 20, plus the exchange's 30; sync of 16 IPUs 350
    assert (step.latency_cycles, step.sync_cycles) == (20 + 30, 350)
    assert step.cycles == 2985 + 50 + 350


def test_all_to_all_contention_on_one_machine_by_hand():
    # M2000, 4 IPUs, every IPU sends 1 MiB to every other. Routes: 0->2 up(0), 1->2 cross(1)+up(0):
    # up(0) carries 2 MiB over 2 links; the card links carry 1 MiB over 4.
    cost = L.collective_cost(M2000, "all_to_all", 4 * 2**20, compute=False)
    (what, count, step), = cost.steps
    assert count == 1 and step.busiest_link_bytes == 2 * 2**20
    assert step.busiest_link[0] in ("up", "down")
    assert step.link_cycles == math.ceil(2 * 2**20 / (2 * LINK) * CLOCK)
    assert step.max_hops == 2  # 0 -> 3: cross, up


# --- Whole collectives ------------------------------------------------------------------------------


def test_pod16_all_reduce_meet_in_middle_by_hand():
    # 1 MiB per replica, 16 ranks: 1 MiB per IPU < 1,245,184 B -> meet-in-middle. Fragment 64 KiB;
    # reduce-scatter: 7 steps both ways + 1 one way; all-gather the same: 16 steps of 2985 + 50 + 350.
    cost = L.collective_cost(POD16, "all_reduce", 2**20)
    assert cost.method == "meet_in_middle_ring" and cost.num_steps == 16
    link_only = 16 * (2985 + 50 + 350)
    # Compute, as softipu.collectives builds it (GCL's loop: one compute set a step; GC200: sync
    # 150, exchange start 30, 6 workers, 8-byte vectors, a loop turn 10, increment 4 x 6 = 24).
    # Meet-in-middle, 16 ranks: c = 8 clockwise steps, a = 7 anticlockwise, both rings over the
    # whole 16,384-float fragment: a tile holds 2*ceil(16384/1472/2) = 12 columns, 2 a worker (one
    # vector). A vertex: 6 x (39 set-up + 2 slots a vector to reduce, 1 to store or copy).
    red, store = 6 * (39 + 2), 6 * (39 + 1)  # 246, 240
    cs = 150 + 30 + 24  # sync, exchange start, increment
    setup = 2 * 150 + 30 + 6 * (39 + 1)  # row table look-up (a compute set) + the counter's copy
    turns = (7 - 1) // 2 * 10
    # reduce-scatter: first sends both ways (copies); 6 both-way steps; step 7 (the anticlockwise
    # arrival not reduced), step 8 (clockwise only) and the combine: one reduction each.
    rs = setup + (cs + 2 * store) + turns + 6 * (cs + 2 * red) + 3 * (cs + red)
    # all-gather: the own row stored; 7 both-way steps, 1 clockwise.
    ag = setup + (cs + store) + turns + 7 * (cs + 2 * store) + (cs + store)
    assert (rs, ag) == (6810, 6276)
    assert cost.compute_cycles == rs + ag == 13086
    assert cost.cycles == link_only + 13086
    assert L.collective_cost(POD16, "all_reduce", 2**20, compute=False).cycles == link_only
    # busbw = algbw x 2 x 15/16
    assert cost.bus_bandwidth == pytest.approx(2**20 / (cost.cycles / CLOCK) * 30 / 16)


def test_pod16_bidirectional_ring_pair_by_hand():
    # 64 MiB per IPU > 39,845,888 -> bidirectional ring pair: 15 steps each way, B/(2n) = 2 MiB
    b = 64 * 2**20
    cost = L.collective_cost(POD16, "reduce_scatter", b, compute=False)
    assert cost.method == "bidirectional_ring_pair"
    (_, count, step), = cost.steps
    assert count == 15
    assert step.link_cycles == math.ceil(2 * 2**20 / (2 * LINK) * CLOCK)
    assert cost.cycles == 15 * (step.link_cycles + 50 + 350)


def test_pod128_two_level_all_reduce_by_hand():
    # 128 replicas = 2 POD64 domains. Within: meet-in-middle over 64 ranks (31 both ways + 1), then
    # across domains one reduce-scatter and one all-gather step over GW-Links, then the all-gather.
    b = 2**30
    cost = L.collective_cost(POD128, "all_reduce", b, compute=False)
    assert cost.method == "two_level(meet_in_middle_ring)"
    assert cost.num_steps == 32 + 1 + 1 + 32
    gw = [s for what, _, s in cost.steps if what.startswith("GW")]
    # Shard 1 GiB / 64 per IPU, half of it to the other domain per step; 4 IPUs share a machine's
    # GW-Links: 4 x 2^30/128 B / GW.
    assert gw[0].link_cycles == math.ceil(4 * (2**30 / 128) / GW * CLOCK)
    assert gw[0].busiest_link[0] in ("gw_out", "gw_in")
    # sync across all 128 IPUs; GW latency 2 us + 2 GW "hops" of 15 ns + 30 exchange
    assert gw[0].sync_cycles == POD128.sync_cycles(128)
    assert gw[0].latency_cycles == math.ceil((2 * 15e-9 + 2e-6) * CLOCK) + 30


def test_64000_ipus_price_without_a_replica_each():
    big = ipu_fabric(64000)
    assert big.num_ilds == 1000
    cost = L.collective_cost(big, "all_reduce", 10**9)
    # 32 + 32 ring steps within a POD64 and 999 + 999 steps across the 1000 domains
    assert cost.num_steps == 64 + 2 * 999
    # modeled time, not wall time: the priced cycles at the chip's clock, under 10 s of IPU time
    assert 0 < cost.cycles < 10 * big.chip.clock_hz
    assert cost.seconds == cost.cycles / big.chip.clock_hz
    step = L.data_parallel_step(big, 10**6, 10**9)
    assert step["all_reduce_cycles"] == cost.cycles and step["replicas"] == 64000


# --- The compiler's inter-IPU exchange over routes ------------------------------------------------


def _reads(target, reads, n):
    g = sp.Graph(target)
    cs = g.add_compute_set("exchange")
    for k, (src, dst) in enumerate(reads):
        x, y = variable(g, n, src, f"x{k}"), variable(g, n, dst, f"y{k}")
        g.add_vertex(cs, Move, {"x": x, "y": y}, tile=dst)
    return only_step(sp.Engine(g, [P.Execute(cs)], estimate_only=True))


# 4 IPUs of 16 tiles; one IPU-Link = 1 B/cycle of payload, so links dominate the exchange.
SLOW = sp.targets.ipu_model(tiles=16, num_ipus=4, clock_hz=1e9, ipu_link_bytes_per_second=1e9,
                            ipu_link_efficiency=1.0)


@pytest.mark.parametrize(("reads", "link_cycles"), [
    ([(0, 16)], 4000 / 4),  # IPU 0 -> 1, rung partners: 4 card links
    ([(0, 48)], 4000 / 2),  # IPU 0 -> 3: cross (2 links) then up (2 links)
    ([(0, 32), (16, 33)], 8000 / 2),  # 0 -> 2 and 1 -> 2 (cross, then up(0)) share up(0)
    ([(0, 16), (1, 32)], 4000 / 2),  # different groups: no contention, the up group bounds
])
def test_compiler_routes_inter_ipu_exchange(reads, link_cycles):
    step = _reads(SLOW, reads, 1000)  # 1000 floats = 4000 B each
    assert step.exchange_cycles == link_cycles + SLOW.exchange_latency_cycles


def test_compiler_link_cycles_function_by_hand():
    t = sp.targets.GC200.with_num_ipus(4)
    pairs = np.zeros((4, 4), np.int64)
    pairs[0, 3] = 2**20
    per_link = 128 * 2**30 / 8 * 0.85 / 1.33e9
    assert L.exchange_link_cycles(t, pairs) == math.ceil(2**20 / (2 * per_link))
    # chips with no published ladder (C600's 4 links) share all links: 1 MiB over 4 links
    c = sp.targets.C600.with_num_ipus(2)
    pairs = np.array([[0, 2**20], [0, 0]])
    assert L.exchange_link_cycles(c, pairs) == math.ceil(2**20 / (4 * c.ipu_link_bytes_per_cycle))


def test_orthogonal_groups_across_domains_use_gw_links_by_hand():
    # POD128, orthogonal groups of 2: {i, i + 64}, one IPU in each POD64. 2 ranks -> clockwise ring:
    # one reduce-scatter and one all-gather step of B/2; every machine's GW-Links carry its 4 IPUs'.
    b = 2**24
    cost = L.collective_cost(POD128, "all_reduce", b, group_size=2, group_kind="orthogonal", compute=False)
    assert cost.method == "clockwise_ring" and cost.num_steps == 2
    step = cost.steps[0][2]
    assert step.busiest_link[0] in ("gw_out", "gw_in")
    assert step.link_cycles == math.ceil(4 * (b / 2) / GW * CLOCK)


def test_two_level_reduce_scatter_and_all_gather_steps():
    rs = L.collective_cost(POD256, "reduce_scatter", 2**30, compute=False)
    ag = L.collective_cost(POD256, "all_gather", 2**30, compute=False)
    # within a POD64: meet-in-middle 32 steps; across 4 domains: 3 GW steps
    assert rs.num_steps == ag.num_steps == 32 + 3
    assert L.collective_cost(POD256, "all_reduce", 2**30, compute=False).num_steps == 2 * (32 + 3)
