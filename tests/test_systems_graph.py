"""A graph built for a system (``sp.Graph(target, replication_factor, system=...)``): what does not
fit is an error naming the graph and the user's line; Streaming Memory sizes, remote copies and
cross-replica copies are checked and priced on that system's figures (worked by hand here)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import softipu as sp
from softipu import program as P
from softipu.errors import StreamError, TargetError
from softipu.target import links, systems


def test_replicas_the_system_cannot_hold_name_the_graph_and_line():
    with pytest.raises(TargetError, match=r"Graph \(at .*test_systems_graph.py:\d+\) needs 32 IPUs "
                                          r"\(32 replica\(s\) x 1 IPU\(s\)\) but IPU-POD16 has 16"):
        sp.Graph(sp.targets.GC200, 32, system=sp.systems.POD16)


def test_a_program_needing_more_ipus_than_the_system_has():
    with pytest.raises(TargetError, match=r"needs 8 IPUs \(1 replica\(s\) x 8 IPU\(s\)\) but IPU-M2000 has 4"):
        sp.Graph(sp.targets.GC200.with_num_ipus(8), system=sp.systems.M2000)
    with pytest.raises(TargetError, match=r"needs 32 IPUs \(8 replica\(s\) x 4 IPU\(s\)\)"):
        sp.Graph(sp.targets.GC200.with_num_ipus(4), 8, system=sp.systems.POD16)
    g = sp.Graph(sp.targets.GC200.with_num_ipus(4), 4, system=sp.systems.POD16)  # exactly full
    assert g.system is sp.systems.POD16 and systems.system_of(g) is sp.systems.POD16


def test_other_chip_or_not_a_system():
    with pytest.raises(TargetError, match=r"target BOW.*IPU-POD16 is made of .*GC200"):
        sp.Graph(sp.targets.BOW, 4, system=sp.systems.POD16)
    with pytest.raises(TargetError, match="system must be a softipu System"):
        sp.Graph(sp.targets.GC200, 4, system="POD16")


def test_default_system_is_the_smallest_fabric():
    g = sp.Graph(sp.targets.GC200, 8)
    assert g.system is None and systems.system_of(g).num_ipus == 8


def small_memory(bytes_per_machine: int, rate: float = 20e9):
    return sp.systems.ipu_fabric(16, name="tiny", streaming_memory_bytes_per_machine=bytes_per_machine,
                                 streaming_memory_bytes_per_second_per_ipu=rate)


def test_remote_buffer_sized_against_the_graphs_system():
    system = small_memory(4 << 20)  # 4 MiB a machine of 4 IPUs: 1 MiB a one-IPU replica
    g = sp.Graph(sp.targets.GC200, 4, system=system)
    g.add_remote_buffer("fits", sp.float32, (1024,), repeats=256)  # exactly 1 MiB
    with pytest.raises(StreamError, match="too_big"):
        g.add_remote_buffer("too_big", sp.float32, (1024,), repeats=257)
    sp.Graph(sp.targets.GC200, 4).add_remote_buffer("big", sp.float32, (1024,), repeats=257)  # default


def remote_copy_run_cycles(rate: float, numel: int) -> int:
    g = sp.Graph(sp.targets.GC200, 2, system=small_memory(1 << 30, rate))
    buf = g.add_remote_buffer("buf", sp.float32, (numel,))
    t = g.add_variable(sp.float32, (numel,), "t")
    sp.ops.map_linearly(g, t)
    eng = sp.Engine(g, [P.Sequence([P.RemoteCopy(t, buf)])], estimate_only=True)
    eng.run(0)
    return eng.report.cycles


def test_remote_copy_priced_at_the_systems_streaming_memory_rate():
    """Same program on two systems differing only in Streaming Memory rate: the difference is the
    transfer time, bytes / (rate / clock) cycles, rounded up."""
    numel, clock = 1 << 16, sp.targets.GC200.clock_hz
    slow, fast = remote_copy_run_cycles(1e9, numel), remote_copy_run_cycles(4e9, numel)
    want = math.ceil(4 * numel / (1e9 / clock)) - math.ceil(4 * numel / (4e9 / clock))
    assert slow - fast == want


def test_cross_replica_copy_priced_on_the_graphs_system():
    """Replica 0 to 64 of 128 crosses the GW-Links between two POD64s: a slower GW-Link there makes
    the step dearer, by the bytes over the slower rate (one flow on its machine's GW-Links)."""
    def cycles(system) -> int:
        g = sp.Graph(sp.targets.GC200, 128, system=system)
        x = g.add_variable(sp.float32, (1 << 16,), "x")
        y = g.add_variable(sp.float32, (1 << 16,), "y")
        sp.ops.map_linearly(g, x)
        sp.ops.map_linearly(g, y)
        eng = sp.Engine(g, [P.Sequence([P.CrossReplicaCopy(x, y, {0: 64})])], estimate_only=True)
        eng.run(0)
        return eng.report.cycles
    base = sp.systems.POD128
    slow = sp.systems.ipu_fabric(128, name="slow GW", gw_link_bytes_per_second=base.gw_link_bytes_per_second / 2)
    step = links.flows_cost(slow, [(0, 64)], 4 << 16, sync_ipus=2)
    assert cycles(slow) - cycles(base) == step.link_cycles - links.flows_cost(
        base, [(0, 64)], 4 << 16, sync_ipus=2).link_cycles > 0
    clock = sp.targets.GC200.clock_hz  # by hand: 256 KiB over 2 GW-Links x 12.5 GB/s x 0.85, then half that
    rate = 2 * base.gw_link_bytes_per_second * base.gw_link_efficiency
    assert abs((cycles(slow) - cycles(base)) - (4 << 16) / rate * clock) <= 2
    np.testing.assert_equal(systems.system_of(sp.Graph(sp.targets.GC200, 128)).num_ilds, 2)


def test_sync_priced_by_its_scope_on_the_graphs_system():
    """A GLOBAL sync of 128 replicas on a POD128 spans two POD64 domains: the Sync-Link term over
    64 IPUs plus the GW-Link sync; on a POD64-sized fabric it is the Sync-Link term alone."""
    chip = sp.targets.GC200
    clock = chip.clock_hz

    def sync_cycles(replicas: int, system, kind) -> int:
        g = sp.Graph(chip, replicas, system=system)
        eng = sp.Engine(g, [P.Sequence([P.Sync(kind)])], estimate_only=True)
        (step,) = eng.executable.steps
        return step.sync_cycles
    # By hand (ipu-facts §2, poplibs' model): 64 IPUs -> 1 + (64 // 2) // 2 = 17 hops, each way.
    fabric_64 = math.ceil(chip.sync_seconds_per_hop * clock * 17 * 2)
    gw = math.ceil(sp.systems.POD128.gw_sync_seconds * clock)
    assert sync_cycles(128, sp.systems.POD128, P.SyncType.GLOBAL) == chip.on_chip_sync_cycles + fabric_64 + gw
    assert sync_cycles(64, sp.systems.POD64, P.SyncType.GLOBAL) == chip.on_chip_sync_cycles + fabric_64
    assert sync_cycles(128, sp.systems.POD128, P.SyncType.INTERNAL) == chip.on_chip_sync_cycles
    slower = sp.systems.ipu_fabric(128, name="slow GW sync", gw_sync_seconds=2 * sp.systems.POD128.gw_sync_seconds)
    assert sync_cycles(128, slower, P.SyncType.GLOBAL) - sync_cycles(128, sp.systems.POD128, P.SyncType.GLOBAL) \
        == math.ceil(2 * sp.systems.POD128.gw_sync_seconds * clock) - gw
