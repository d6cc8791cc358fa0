"""One accounting rule for collectives: ``links.collective_cost`` prices what softipu.collectives
builds — MEAN's division, the copies into and out of the rings' layout, each ring phase's set-up
— and the values stay numpy's.

Oracles: numpy over the replica axis (sums of small integers, exact in any order; MEAN = the sum
divided by the group size in float32, as ``np.float32(s) / np.float32(n)``), and cycle figures
worked out by hand from the chip's published numbers (``sp.targets.ipu_model``: 6 workers,
8-byte vectors, 150-cycle on-chip sync, 4 bytes a cycle on the exchange, 4 cycles a region,
30 cycles exchange latency).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import softipu as sp
from softipu import collectives as C
from softipu import program as P
from softipu.collectives import CollectiveOperator as Op
from softipu.collectives import CommGroup, CommGroupType
from softipu.engine.replicas import LinkFailure
from softipu.target import links, systems

TARGET = sp.targets.ipu_model(tiles=16)


def built_cycles(eng: sp.Engine) -> int:
    steps = eng.executable.steps
    return sum(count * steps[i].cycles for i, count in enumerate(eng.log.step_counts))


def values(replicas: int, numel: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-8, 9, (replicas, numel)).astype(np.float32)


@pytest.mark.parametrize("replicas,numel,op,ring_layout", [
    (2, 32, Op.MEAN, False), (2, 4000, Op.MEAN, True), (4, 1024, Op.ADD, False),
    (4, 4096, Op.MEAN, False), (8, 2048, Op.MEAN, True), (3, 999, Op.MEAN, False)])
def test_all_reduce_built_as_priced_with_mean_and_layout_copies(replicas, numel, op, ring_layout):
    g = sp.Graph(TARGET, replication_factor=replicas)
    x = g.add_variable(sp.float32, (numel,), "x")
    if ring_layout:  # as the rings want it: no copies in or out
        C.map_by_columns(g, x.reshape(replicas, numel // replicas))
    else:  # linearly: GCL's rearrangePre / Post copies
        sp.ops.map_linearly(g, x)
    prog = P.Sequence()
    y = C.all_reduce(g, x, prog, op=op)
    eng = sp.Engine(g, [prog])
    v = values(replicas, numel, replicas)
    eng.write_tensor(x, v)
    eng.run(0)
    want = v.sum(0) / np.float32(replicas) if op is Op.MEAN else v.sum(0)
    np.testing.assert_array_equal(eng.read_tensor(y), np.broadcast_to(want, (replicas, numel)))
    system = systems.smallest_fabric(replicas, TARGET)
    model = links.collective_cost(system, "all_reduce", numel * 4, replicas, op=op.name.lower(),
                                  rearranged=not ring_layout)
    # Within 5%: the model spreads each copy's bytes evenly over the tiles and prices each step's
    # read of its row index as one exchange start; the compiler sees the actual placement.
    assert built_cycles(eng) == pytest.approx(model.cycles, rel=0.05)
    assert (model.layout_cycles > 0) == (not ring_layout)


@pytest.mark.parametrize("replicas,numel", [(2, 64), (4, 4096), (8, 1000)])
def test_reduce_scatter_mean_and_all_gather_built_as_priced(replicas, numel):
    g = sp.Graph(TARGET, replication_factor=replicas)
    x = g.add_variable(sp.float32, (numel,), "x")
    sp.ops.map_linearly(g, x)
    prog = P.Sequence()
    frag = C.reduce_scatter(g, x, prog, op=Op.MEAN)
    eng = sp.Engine(g, [prog])
    v = values(replicas, numel, 1)
    eng.write_tensor(x, v)
    eng.run(0)
    m = -(-numel // replicas)
    sums = np.concatenate([v.sum(0), np.zeros(m * replicas - numel, np.float32)]).reshape(replicas, m)
    np.testing.assert_array_equal(eng.read_tensor(frag), sums / np.float32(replicas))
    system = systems.smallest_fabric(replicas, TARGET)
    model = links.collective_cost(system, "reduce_scatter", numel * 4, replicas, op="mean", rearranged=True)
    if numel % replicas == 0:  # (a padded input is zeroed first: a compute set the model leaves out)
        assert built_cycles(eng) == pytest.approx(model.cycles, rel=0.05)

    g = sp.Graph(TARGET, replication_factor=replicas)
    x = g.add_variable(sp.float32, (numel,), "x")
    sp.ops.map_linearly(g, x)
    prog = P.Sequence()
    z = C.all_gather(g, x, prog)  # its output is laid out as the input, copy by copy: the rings' layout
    eng = sp.Engine(g, [prog])
    eng.write_tensor(x, v)
    eng.run(0)
    np.testing.assert_array_equal(eng.read_tensor(z)[replicas - 1], v)
    model = links.collective_cost(system, "all_gather", replicas * numel * 4, replicas)
    assert built_cycles(eng) == pytest.approx(model.cycles, rel=0.05)


def test_mean_division_and_layout_copy_figures_by_hand():
    # RingDivide over 100 float32 a tile: 6 workers, ceil(100 / 6) = 17 elements = 68 bytes =
    # 9 vectors of 8 bytes; each vector 2 slots + popops' float divide (10): 6 x (39 + 9 x 12).
    assert links.ring_vertex_cycles(TARGET, 100, 4, True, True) == 6 * (39 + 9 * 12) == 882
    # A copy of 4000 bytes into the rings' layout over 16 tiles, 2 regions a tile: sync 150, then
    # 250 bytes at 4 a cycle (63) + 2 regions x 4 + latency 30, and the half already on the tile
    # (125 bytes) copied at 8 bytes a cycle (16).
    assert links.layout_copy_cycles(TARGET, 4000, 2) == 150 + 63 + 8 + 30 + 16
    # MEAN adds the division to an all-reduce's first all-gather store (one fragment: 8 x 4 bytes
    # on 16 tiles -> 2 elements on the busiest tile, 1 vector): 6 x 10 divide cycles more than ADD.
    system = systems.smallest_fabric(2, TARGET)
    add, mean = (links.collective_cost(system, "all_reduce", 64, 2, op=op) for op in ("add", "mean"))
    assert mean.cycles - add.cycles == 6 * (12 - 1) == 66  # a vector: 12 slots instead of 1
    assert add.layout_cycles == mean.layout_cycles == 0


def test_all_to_all_is_one_exchange_whatever_the_group_size_and_priced_as_such():
    def build(replicas: int):
        g = sp.Graph(TARGET, replication_factor=replicas)
        x = g.add_variable(sp.int32, (replicas, 5), "x")
        sp.ops.map_linearly(g, x)
        prog = P.Sequence()
        return g, x, prog, C.all_to_all(g, x, prog)
    assert len(list(P.walk(build(4)[2]))) == len(list(P.walk(build(8)[2]))) == len(list(P.walk(build(16)[2])))
    g, x, prog, y = build(8)
    v = np.arange(8 * 8 * 5, dtype=np.int32).reshape(8, 8, 5)
    eng = sp.Engine(g, [prog])
    eng.write_tensor(x, v)
    eng.run(0)
    np.testing.assert_array_equal(eng.read_tensor(y), v.transpose(1, 0, 2))  # replica q's row r = r's row q
    (step,) = [s for s in eng.executable.steps if s.op == "CrossReplicaCopy"]
    model = links.collective_cost(systems.smallest_fabric(8, TARGET), "all_to_all", 8 * 5 * 4, 8, compute=False)
    (_, count, priced), = model.steps
    assert count == 1 and step.exchange_cycles + step.sync_cycles == priced.cycles
    # by hand: 8 replicas send 5 int32 (20 B) to each of the 7 others at once; one sync over 8 IPUs
    assert step.sync_cycles == TARGET.global_sync_cycles(8) and step.inter_ipu_bytes == 7 * 20


# A 16-IPU fabric of four 4-IPU domains joined by GW-Links (one M2000 each): the smallest system
# on which an all-reduce of every replica takes GCL's two-level form.
DOMAINS = sp.systems.ipu_fabric(16, chip=sp.targets.ipu_model(tiles=4), name="4 x M2000", ipus_per_ild=4)


@pytest.mark.parametrize("op,dtype,method", [(Op.ADD, sp.int32, None), (Op.MEAN, sp.float32, None),
                                              (Op.MAX, sp.float32, "bidirectional_ring_pair"),
                                              (Op.SQUARE_ADD, sp.int32, "clockwise_ring")])
def test_two_level_all_reduce_over_gw_links_matches_numpy_and_its_price(op, dtype, method):
    g = sp.Graph(DOMAINS.chip, 16, system=DOMAINS)
    x = g.add_variable(dtype, (64,), "x")
    sp.ops.map_linearly(g, x)
    prog = P.Sequence()
    y = C.all_reduce(g, x, prog, op=op, options={"method": method} if method else None)
    eng = sp.Engine(g, [prog])
    v = np.random.default_rng(3).integers(-8, 9, (16, 64)).astype(dtype.numpy)
    eng.write_tensor(x, v)
    eng.run(0)
    want = {Op.ADD: v.sum(0), Op.MEAN: v.sum(0) / np.float32(16), Op.MAX: v.max(0),
            Op.SQUARE_ADD: (v * v).sum(0)}[op]
    np.testing.assert_array_equal(eng.read_tensor(y), np.broadcast_to(want, (16, 64)))
    steps = eng.executable.steps
    crossings = sorted(steps[i].cycles for i, c in enumerate(eng.log.step_counts)
                       for _ in range(c) if steps[i].op == "CrossReplicaCopy")
    model = links.collective_cost(DOMAINS, "all_reduce", 64 * 4, 16, method=method or "auto", compute=False)
    assert model.method.startswith("two_level(")
    assert crossings == sorted(s.cycles for _, count, s in model.steps for _ in range(count))
    # by hand: across the 4 domains, a clockwise ring of 3 reduce-scatter and 3 all-gather steps
    # per ring part (the bidirectional pair's two halves cross apart), each over the GW-Links
    # (2 us latency) and synced across domains (the GW sync, 4 us).
    parts = 2 if method == "bidirectional_ring_pair" else 1
    gw = [s for what, _, s in model.steps if what.startswith("GW")]
    assert sum(c for what, c, _ in model.steps if what.startswith("GW")) == 2 * 3 * parts
    clock = DOMAINS.chip.clock_hz
    assert gw[0].latency_cycles >= 2e-6 * clock and gw[0].sync_cycles == DOMAINS.sync_cycles(16)
    assert DOMAINS.sync_cycles(16) == DOMAINS.sync_cycles(4) + math.ceil(4e-6 * clock)
    if op is not Op.SQUARE_ADD:  # (its squares are a popops compute set the model leaves out)
        whole = links.collective_cost(DOMAINS, "all_reduce", 64 * 4, 16, method=method or "auto",
                                      op=op.name.lower(), rearranged=True)
        assert built_cycles(eng) == pytest.approx(whole.cycles, rel=0.05)


@pytest.mark.parametrize("replicas", [4, 5, 8])
def test_quad_directional_runs_on_the_ring_and_its_mirror_and_is_priced_so(replicas):
    g = sp.Graph(sp.targets.ipu_model(tiles=4), replicas)
    x = g.add_variable(sp.float32, (replicas * 1024,), "x")
    sp.ops.map_linearly(g, x)
    prog = P.Sequence()
    y = C.all_reduce(g, x, prog, options={"method": "quad_directional_ring"})
    eng = sp.Engine(g, [prog])
    v = values(replicas, replicas * 1024, 5)
    eng.write_tensor(x, v)
    eng.run(0)
    np.testing.assert_array_equal(eng.read_tensor(y), np.broadcast_to(v.sum(0), v.shape))
    steps = eng.executable.steps
    crossings = [steps[i] for i, c in enumerate(eng.log.step_counts) for _ in range(c)
                 if steps[i].op == "CrossReplicaCopy"]
    model = links.collective_cost(systems.smallest_fabric(replicas, g.target), "all_reduce", v[0].nbytes,
                                  replicas, method="quad_directional_ring", compute=False)
    assert sorted(s.cycles for s in crossings) == sorted(s.cycles for _, c, s in model.steps for _ in range(c))
    # by hand: each of the 2 (n - 1) steps moves a quarter of a fragment four ways at once:
    # 4 x 1024 / 4 = 1024 floats sent by every replica a step, 1 KiB a ring.
    assert len(crossings) == 2 * (replicas - 1) and all(s.inter_ipu_bytes == 4 * 1024 for s in crossings)
    if replicas == 4:  # poplibs' interleaved ring 0, 2, 3, 1 and its mirror 1, 3, 2, 0, each both ways
        node = next(n for n in P.walk(prog) if isinstance(n, P.CrossReplicaCopy))
        ring, mirror = {0: 2, 2: 3, 3: 1, 1: 0}, {1: 3, 3: 2, 2: 0, 0: 1}
        back = [{b: a for a, b in m.items()} for m in (ring, mirror)]
        assert [m for _, _, m in node.transfers] == [ring, back[0], mirror, back[1]]


@pytest.mark.parametrize("replicas", [2, 3])
def test_mean_vertices_give_the_reference_interpreters_bits(replicas):
    """RingStore's divided form and RingDivide, run by the fast engine and by the reference
    interpreter: the same bits (elementwise work, design principle 6), and numpy's sum / n."""
    def run_mean(reference: bool) -> tuple[np.ndarray, np.ndarray]:
        g = sp.Graph(TARGET, replication_factor=replicas)
        x = g.add_variable(sp.float32, (40,), "x")
        sp.ops.map_linearly(g, x)
        prog = P.Sequence()
        y = C.all_reduce(g, x, prog, op=Op.MEAN, options={"method": "clockwise_ring"})
        z = C.reduce_scatter(g, x, prog, op=Op.MEAN)
        eng = sp.Engine(g, [prog], options={"engine.reference": reference})
        eng.write_tensor(x, np.arange(replicas * 40, dtype=np.float32).reshape(replicas, 40) / 7)
        eng.run(0)
        return eng.read_tensor(y), eng.read_tensor(z)
    (fast_y, fast_z), (ref_y, ref_z) = run_mean(False), run_mean(True)
    np.testing.assert_array_equal(fast_y.view(np.uint32), ref_y.view(np.uint32))
    np.testing.assert_array_equal(fast_z.view(np.uint32), ref_z.view(np.uint32))
    v = np.arange(replicas * 40, dtype=np.float32).reshape(replicas, 40) / 7
    np.testing.assert_allclose(fast_y[0], v.astype(np.float64).sum(0) / replicas, rtol=1e-6)


def test_all_to_all_in_place_and_under_a_fault():
    g = sp.Graph(TARGET, replication_factor=4)
    x = g.add_variable(sp.int32, (4, 2), "x")
    sp.ops.map_linearly(g, x)
    prog = P.Sequence()
    y = g.add_variable(sp.int32, (2, 2), "y")
    sp.ops.map_linearly(g, y)
    C.all_to_all_to_destination(g, y, y, prog, group=CommGroup(CommGroupType.CONSECUTIVE, 2))
    eng = sp.Engine(g, [prog])
    v = np.arange(4 * 2 * 2, dtype=np.int32).reshape(4, 2, 2)
    eng.write_tensor(y, v)
    eng.run(0)
    got = eng.read_tensor(y)
    for grp in ([0, 1], [2, 3]):  # in each pair, replica q's row r is replica r's row q
        for q, rq in enumerate(grp):
            np.testing.assert_array_equal(got[rq], np.stack([v[rr, q] for rr in grp]))
    prog = P.Sequence()
    out = g.add_variable(sp.int32, (4, 2), "out")
    sp.ops.map_linearly(g, out)
    C.all_to_all_to_destination(g, x, out, prog, options={"injectFault": ("link", 1, 2)})
    eng = sp.Engine(g, [prog])
    eng.write_tensor(out, np.full((4, 4, 2), 7, np.int32))
    with pytest.raises(LinkFailure, match="link from replica 1 to replica 2 failed"):
        eng.run(0)
    np.testing.assert_array_equal(eng.read_tensor(out), np.full((4, 4, 2), 7, np.int32))
