"""Golden cycle counts of the BSP cost model, derived by hand from the documented formulas.

Every expected figure below is arithmetic on the target's fields and the formulas of
ipu-facts.md §2 and §5 (and the cost model's documented rules in ``softipu.compiler.costs`` and
``softipu.compiler.exchange``); none is copied from a run. Small ``ipu_model`` chips keep the
numbers readable; keywords override a figure where that makes the arithmetic clearer.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import softipu as sp
from codelets_for_tests import Increment, Less
from softipu import program as P
from softipu.codelets import BinaryOp, UnaryOp, binary_op_codelet, unary_op_codelet
from softipu.compiler.costs import DEFAULT_VERTEX_OVERHEAD_CYCLES

# --- codelets whose estimates are whatever the test says -----------------------------------------


class Work(sp.Vertex):
    """One worker's job of ``work`` cycles (a per-vertex Param); touches only its own element."""

    x = sp.InOut(sp.float32)
    work = sp.Param(sp.int32)

    @staticmethod
    def compute(x, work):
        pass

    @staticmethod
    def cycles(x, work):
        return work


class MultiWork(sp.MultiVertex):
    """A whole-tile job of ``work`` cycles: MultiVertex estimates already include the workers."""

    x = sp.InOut(sp.float32)
    work = sp.Param(sp.int32)

    @staticmethod
    def compute(x, work):
        pass

    @staticmethod
    def cycles(x, work):
        return work


class Move(sp.Vertex):
    """y = x, costing a flat 7 cycles, so the exchange is the interesting part."""

    x = sp.Input(sp.float32)
    y = sp.Output(sp.float32)

    @staticmethod
    def compute(x, y):
        y[...] = x

    @staticmethod
    def cycles(x, y):
        return 7


class NoEstimate(sp.Vertex):
    """A codelet without ``cycles``: the cost model falls back to its default estimate."""

    x = sp.Input(sp.float32)
    y = sp.Output(sp.float32)

    @staticmethod
    def compute(x, y):
        y[...] = x


# --- helpers ----------------------------------------------------------------------------------


def variable(g: sp.Graph, n: int, tile: int, name: str, dtype=sp.float32) -> sp.Tensor:
    t = g.add_variable(dtype, (n,), name=name)
    g.set_tile_mapping(t, tile)
    return t


def work_set(g: sp.Graph, jobs: dict[int, list[int]], codelet=Work, name="work") -> sp.ComputeSet:
    """A compute set with one ``codelet`` vertex per job, on the given tiles."""
    cs = g.add_compute_set(name)
    for tile, works in jobs.items():
        x = variable(g, len(works), tile, f"{name}_x{tile}")
        for i, w in enumerate(works):
            g.add_vertex(cs, codelet, {"x": x[i : i + 1], "work": w}, tile=tile)
    return cs


def steps_by_name(eng: sp.Engine) -> dict[str, object]:
    return {s.name: s for s in eng.executable.steps}


def only_step(eng: sp.Engine):
    (step,) = eng.executable.steps
    return step


def compute_cycles_of(target: sp.Target, jobs: dict[int, list[int]], codelet=Work) -> int:
    g = sp.Graph(target)
    eng = sp.Engine(g, [P.Execute(work_set(g, jobs, codelet))], estimate_only=True)
    return only_step(eng).compute_cycles


# --- compute: plain vertices share the tile's workers ---------------------------------------------

W = sp.targets.ipu_model(tiles=4).workers_per_tile  # 6 barrel-scheduled workers (ipu-facts §1)
# Exchange code set-up per contiguous region a tile sends or receives (Target, [U]).
REGION = sp.targets.GC200.exchange_cycles_per_region
assert REGION == 4


@pytest.mark.parametrize("k", [1, 6, 13])
def test_plain_vertices_spread_over_workers(k):
    c = 100
    # costs.py: workers x max(longest vertex, ceil(total / workers)).
    # k=1: 6 x max(100, 17) = 600; k=6: 6 x max(100, 100) = 600; k=13: 6 x max(100, 217) = 1302.
    expected = W * max(c, math.ceil(k * c / W))
    assert expected == {1: 600, 6: 600, 13: 1302}[k]
    assert compute_cycles_of(sp.targets.ipu_model(tiles=4), {0: [c] * k}) == expected


def test_worker_count_comes_from_the_target():
    # 4 workers, 13 jobs of 100: 4 x max(100, ceil(1300 / 4) = 325) = 1300.
    target = sp.targets.ipu_model(tiles=4, workers_per_tile=4)
    assert compute_cycles_of(target, {0: [100] * 13}) == 4 * 325


def test_step_compute_is_the_slowest_tile():
    target = sp.targets.ipu_model(tiles=4)
    jobs = {0: [50, 50, 200], 1: [100] * 13}
    # tile 0: 6 x max(200, ceil(300 / 6) = 50) = 1200; tile 1: 6 x max(100, ceil(1300 / 6) = 217) = 1302.
    tile0, tile1 = W * max(200, math.ceil(300 / W)), W * max(100, math.ceil(1300 / W))
    assert (tile0, tile1) == (1200, 1302)
    g = sp.Graph(target)
    eng = sp.Engine(g, [P.Execute(work_set(g, jobs))], estimate_only=True)
    step = only_step(eng)
    assert step.compute_cycles == max(tile0, tile1) == 1302
    assert step.busiest_tile == 1
    assert step.mean_tile_compute_cycles == pytest.approx((tile0 + tile1) / target.num_tiles)
    assert not step.estimated_by_default


def test_one_long_vertex_bounds_the_tile():
    # A 600-cycle job and five 10-cycle jobs: the long one occupies one worker for 600 of its
    # slots, so the tile takes 6 x max(600, ceil(650 / 6) = 109) = 3600.
    assert compute_cycles_of(sp.targets.ipu_model(tiles=4), {0: [600] + [10] * 5}) == 3600


def test_multivertex_cycles_add_up_per_tile():
    # MultiVertex estimates are whole-tile cycles: 3 vertices of 100, 250, 400 on tile 2 = 750;
    # one of 900 on tile 3 = 900 is the slowest tile.
    target = sp.targets.ipu_model(tiles=4)
    assert compute_cycles_of(target, {2: [100, 250, 400]}, MultiWork) == 750
    assert compute_cycles_of(target, {2: [100, 250, 400], 3: [900]}, MultiWork) == 900


def test_plain_and_multi_vertices_on_one_tile_add():
    # 6 x max(100, ceil(700 / 6) = 117) = 702 for seven plain jobs, plus a 500-cycle MultiVertex.
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    cs = work_set(g, {0: [100] * 7})
    x = variable(g, 1, 0, "multi_x")
    g.add_vertex(cs, MultiWork, {"x": x, "work": 500}, tile=0)
    eng = sp.Engine(g, [P.Execute(cs)], estimate_only=True)
    assert only_step(eng).compute_cycles == W * math.ceil(700 / W) + 500 == 1202


# --- compute: poplibs elementwise estimators (ipu-facts §5) -------------------------------------


def elementwise_step(target: sp.Target, codelet, inputs: tuple[str, ...], n: int, dtype):
    g = sp.Graph(target)
    fields = {name: variable(g, n, 0, name, dtype) for name in inputs + ("out",)}
    cs = g.add_compute_set("elementwise")
    g.add_vertex(cs, codelet, fields, tile=0)
    return only_step(sp.Engine(g, [P.Execute(cs)], estimate_only=True))


def binary_cycles(op: BinaryOp, dtype, n: int, target: sp.Target | None = None) -> int:
    target = target or sp.targets.ipu_model(tiles=4)
    return elementwise_step(target, binary_op_codelet(op, dtype), ("a", "b"), n, dtype).compute_cycles


def unary_cycles(op: UnaryOp, dtype, n: int) -> int:
    target = sp.targets.ipu_model(tiles=4)
    return elementwise_step(target, unary_op_codelet(op, dtype), ("x",), n, dtype).compute_cycles


def test_binary_add_half_1200_is_the_worked_example():
    # ipu-facts §5: W x (26 + ceil(ceil(1200 / 6) / 4) x (1 + 2)) + 11 = 6 x (26 + 150) + 11 = 1067.
    assert 6 * (26 + math.ceil(math.ceil(1200 / 6) / 4) * (1 + 2)) + 11 == 1067
    assert binary_cycles(BinaryOp.ADD, sp.float16, 1200) == 1067


@pytest.mark.parametrize(
    ("op", "n", "expected"),
    [
        # float: fixed 29, vw 2. ADD {1, 2}: 6 x (29 + ceil(200 / 2) x (1 + 2)) + 11 = 1985.
        (BinaryOp.ADD, 1200, 6 * (29 + 100 * (1 + 2)) + 11),
        # MUL as ADD; n = 1000: ceil(1000 / 6) = 167 per worker, ceil(167 / 2) = 84 loops.
        (BinaryOp.MULTIPLY, 1000, 6 * (29 + 84 * (1 + 2)) + 11),
        # DIVIDE float {10, 2}: 6 x (29 + 100 x (10 + 2)) + 11 = 7385.
        (BinaryOp.DIVIDE, 1200, 6 * (29 + 100 * (10 + 2)) + 11),
        # MAX float {3, 2}: 6 x (29 + 100 x (3 + 2)) + 11 = 3185.
        (BinaryOp.MAXIMUM, 1200, 6 * (29 + 100 * (3 + 2)) + 11),
    ],
)
def test_binary_float32_from_the_formula(op, n, expected):
    assert binary_cycles(op, sp.float32, n) == expected


def test_binary_half_ops_use_their_own_loop_figures():
    # DIVIDE half {21, 4}: 6 x (26 + ceil(200 / 4) x (21 + 2)) + 11 = 6 x 1176 + 11 = 7067.
    assert binary_cycles(BinaryOp.DIVIDE, sp.float16, 1200) == 6 * (26 + 50 * 23) + 11 == 7067
    # MIN half {4, 4}: 6 x (26 + 50 x 6) + 11 = 1967.
    assert binary_cycles(BinaryOp.MINIMUM, sp.float16, 1200) == 6 * (26 + 50 * 6) + 11


def test_binary_supervisor_overhead_comes_from_the_target():
    target = sp.targets.ipu_model(tiles=4, supervisor_overhead_cycles=0)
    assert binary_cycles(BinaryOp.ADD, sp.float16, 1200, target) == 1067 - 11


@pytest.mark.parametrize(
    ("dtype", "n", "expected"),
    [
        # UnaryOp1D: W x ((EXP ? 33 : 17) + ceil(ceil(n / W) / vw) x (c + 4)) + 20.
        # EXP float {6, 2}: 6 x (33 + ceil(200 / 2) x 10) + 20 = 6218.
        (sp.float32, 1200, 6 * (33 + 100 * (6 + 4)) + 20),
        # EXP half {4, 4}: 6 x (33 + ceil(200 / 4) x 8) + 20 = 2618.
        (sp.float16, 1200, 6 * (33 + 50 * (4 + 4)) + 20),
        # n = 1000 half: ceil(1000 / 6) = 167, ceil(167 / 4) = 42 loops.
        (sp.float16, 1000, 6 * (33 + 42 * (4 + 4)) + 20),
    ],
)
def test_unary_exponent(dtype, n, expected):
    assert unary_cycles(UnaryOp.EXPONENT, dtype, n) == expected


def test_unary_non_exponent_has_the_smaller_prologue():
    # TANH float {12, 2}: 6 x (17 + 100 x (12 + 4)) + 20 = 9722.
    assert unary_cycles(UnaryOp.TANH, sp.float32, 1200) == 6 * (17 + 100 * 16) + 20 == 9722


def test_elementwise_estimates_count_flops():
    target = sp.targets.ipu_model(tiles=4)
    step = elementwise_step(target, binary_op_codelet(BinaryOp.ADD, sp.float32), ("a", "b"), 1200,
                            sp.float32)
    assert step.flops == 1200  # one float op per output element
    step = elementwise_step(target, binary_op_codelet(BinaryOp.ADD, sp.int32), ("a", "b"), 1200,
                            sp.int32)
    assert step.flops == 0


def test_codelet_without_cycles_is_estimated_by_default():
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    x, y = variable(g, 30, 0, "x"), variable(g, 30, 0, "y")
    cs = g.add_compute_set("guessed")
    g.add_vertex(cs, NoEstimate, {"x": x, "y": y}, tile=0)
    eng = sp.Engine(g, [P.Execute(cs)])
    eng.run(0)
    step = only_step(eng)
    assert step.estimated_by_default
    assert eng.report.steps[0]["estimated_by_default"] is True
    # The default: overhead + one cycle per field element (30 + 30), on one worker of six.
    assert step.compute_cycles == W * (DEFAULT_VERTEX_OVERHEAD_CYCLES + 60)
    assert step.compute_cycles > 0


# --- sync -----------------------------------------------------------------------------------------


def sync_cycles(target: sp.Target, sync_type: P.SyncType) -> int:
    g = sp.Graph(target)
    eng = sp.Engine(g, [P.Sync(sync_type)], estimate_only=True)
    eng.run(0)
    step = only_step(eng)
    assert eng.report.cycles == step.cycles == step.sync_cycles
    return step.sync_cycles


def test_single_ipu_sync_is_the_on_chip_figure():
    target = sp.targets.ipu_model(tiles=4)
    for kind in P.SyncType:  # one IPU: every sync stays on the chip
        assert sync_cycles(target, kind) == target.on_chip_sync_cycles
    assert sync_cycles(sp.targets.ipu_model(tiles=4, on_chip_sync_cycles=77), P.SyncType.INTERNAL) == 77


def test_external_sync_on_two_ipus_is_the_on_chip_sync_plus_the_poplibs_fabric_term():
    target = sp.targets.ipu_model(tiles=4, num_ipus=2)
    # ipu-facts §2: hops = 1 + (2 / 2) / 2 = 1 (integer); ceil(15e-9 s x 1.33e9 Hz x 1 x 2) = ceil(39.9)
    # = 40 cycles over the fabric. Each IPU first syncs its own tiles (150, on_chip_sync_cycles),
    # so a sync across IPUs can never be cheaper than one on a chip: 150 + 40 = 190.
    hops = 1 + (2 // 2) // 2
    fabric = math.ceil(15e-9 * 1.33e9 * hops * 2)
    assert fabric == 40
    assert sync_cycles(target, P.SyncType.EXTERNAL) == 150 + 40
    assert sync_cycles(target, P.SyncType.GLOBAL) == 150 + 40
    assert sync_cycles(target, P.SyncType.INTERNAL) == target.on_chip_sync_cycles == 150
    assert sync_cycles(target, P.SyncType.EXTERNAL) > sync_cycles(target, P.SyncType.INTERNAL)


def test_global_sync_grows_with_ipus_and_honours_the_override():
    # 4 IPUs: hops = 1 + (4 // 2) // 2 = 2: ceil(15e-9 x 1.33e9 x 2 x 2) = ceil(79.8) = 80; + 150.
    assert sync_cycles(sp.targets.ipu_model(tiles=4, num_ipus=4), P.SyncType.EXTERNAL) == 150 + 80
    target = sp.targets.ipu_model(tiles=4, num_ipus=2, global_sync_cycles_override=500)
    assert sync_cycles(target, P.SyncType.EXTERNAL) == 500  # Poplar's globalSyncCycles: the whole sync
    # GC200 pair: 150 on chip + the poplibs figure 40.
    assert sync_cycles(sp.targets.GC200.with_num_ipus(2), P.SyncType.EXTERNAL) == 190


def test_global_sync_counts_every_ipu_of_every_replica():
    def replicated(ipus: int, replicas: int, kind: P.SyncType) -> int:
        g = sp.Graph(sp.targets.ipu_model(tiles=4, num_ipus=ipus), replication_factor=replicas)
        eng = sp.Engine(g, [P.Sync(kind)], estimate_only=True)
        eng.run(0)
        return only_step(eng).sync_cycles

    # 1 IPU x 4 replicas: GLOBAL spans 4 IPUs: hops = 1 + (4 // 2) // 2 = 2, ceil(79.8) = 80; + 150.
    assert replicated(1, 4, P.SyncType.GLOBAL) == 150 + 80
    # ... while EXTERNAL stays within the replica's one IPU: the on-chip sync.
    assert replicated(1, 4, P.SyncType.EXTERNAL) == 150
    # 2 IPUs x 8 replicas = 16 IPUs: hops = 1 + 8 // 2 = 5, ceil(15e-9 x 1.33e9 x 5 x 2) = ceil(199.5) = 200.
    assert replicated(2, 8, P.SyncType.GLOBAL) == 150 + 200
    assert replicated(2, 8, P.SyncType.EXTERNAL) == 150 + 40


def test_a_copy_across_ipus_pays_more_sync_than_one_on_the_chip():
    # The review's case: 2 x GC200, copy 16 floats tile 0 -> tile 1 (same IPU) and tile 0 ->
    # tile 1472 (the second IPU). The inter-IPU copy's sync is 150 + 40 = 190, the on-chip one 150.
    target = sp.targets.GC200.with_num_ipus(2)

    def copy_step(dst_tile: int):
        g = sp.Graph(target)
        a = g.add_variable(sp.float32, (16,), name="a")
        b = g.add_variable(sp.float32, (16,), name="b")
        g.set_tile_mapping(a, 0)
        g.set_tile_mapping(b, dst_tile)
        eng = sp.Engine(g, [P.Copy(a, b)], estimate_only=True)
        eng.run(0)
        return only_step(eng)

    near, far = copy_step(1), copy_step(1472)
    assert near.sync_cycles == 150
    assert far.sync_cycles == 190
    assert far.cycles > near.cycles


# --- exchange ---------------------------------------------------------------------------------


def exchange_step(target: sp.Target, reads: list[tuple[int, int]], n: int, *, shared=False):
    """One Move vertex per (source tile, reader tile): the reader takes n floats from the source.

    ``shared``: every reader reads the same source vector (one per source tile).
    """
    g = sp.Graph(target)
    cs = g.add_compute_set("exchange")
    sources: dict[int, sp.Tensor] = {}
    for k, (src, dst) in enumerate(reads):
        if shared:
            if src not in sources:
                sources[src] = variable(g, n, src, f"x{src}")
            x = sources[src]
        else:
            x = variable(g, n, src, f"x{k}")
        y = variable(g, n, dst, f"y{k}")
        g.add_vertex(cs, Move, {"x": x, "y": y}, tile=dst)
    eng = sp.Engine(g, [P.Execute(cs)], estimate_only=True)
    return only_step(eng)


def test_remote_read_within_a_supertile():
    target = sp.targets.ipu_model(tiles=4)  # tiles_per_supertile = 2: tiles 0 and 1 share a bus
    n = 100
    step = exchange_step(target, [(0, 1)], n)
    assert step.bytes_exchanged == 4 * n
    # Tile 0 sends 400 B and tile 1 receives 400 B; each direction's pair total is 400 B, moved at
    # twice the per-tile rate: exchange_cycles(ceil(400 / 2)) = ceil(200 x 16 / 64) = 50; each tile
    # moves one contiguous region (+ exchange_cycles_per_region = 4); + latency 30.
    pair_bytes = 4 * n
    expected = (target.exchange_cycles(math.ceil(pair_bytes / 2)) + REGION
                + target.exchange_latency_cycles)
    assert expected == 50 + 4 + 30
    assert step.exchange_cycles == expected
    assert step.sync_cycles == target.on_chip_sync_cycles
    assert step.compute_cycles == W * 7
    assert step.cycles == step.sync_cycles + step.exchange_cycles + step.compute_cycles
    assert step.recv_tiles.tolist() == [1] and step.recv_tile_bytes.tolist() == [4 * n]


def test_without_supertiles_a_tile_moves_at_its_own_rate():
    target = sp.targets.ipu_model(tiles=4, tiles_per_supertile=1)
    # No partner: 400 B at 4 B/cycle = 100 cycles, one region (4), plus the exchange latency (30).
    step = exchange_step(target, [(0, 1)], 100)
    assert step.exchange_cycles == target.exchange_cycles(400) + REGION + target.exchange_latency_cycles == 134


def test_two_receivers_sharing_a_supertile_share_its_bus():
    target = sp.targets.ipu_model(tiles=8)
    latency = target.exchange_latency_cycles
    n = 100
    # Tiles 0 and 1 (one supertile) each receive 400 B: the pair moves 800 B, ceil(800 / 2) = 400
    # B per tile's share: exchange_cycles(400) = 100. Senders 4 and 6 sit on different supertiles.
    shared = exchange_step(target, [(4, 0), (6, 1)], n)
    # Each receiver has one region: + 4.
    assert shared.exchange_cycles - latency - REGION == target.exchange_cycles(math.ceil(8 * n / 2)) == 100
    # Tiles 1 and 2 are on different supertiles: each pair moves 400 B, exchange_cycles(200) = 50.
    apart = exchange_step(target, [(4, 1), (6, 2)], n)
    assert apart.exchange_cycles - latency - REGION == target.exchange_cycles(math.ceil(4 * n / 2)) == 50
    assert shared.bytes_exchanged == apart.bytes_exchanged == 8 * n


def test_supertile_partners_receiving_the_same_data_share_it():
    # ipu-facts §1: "a tile may use the whole supertile bandwidth when its partner is idle or
    # receives the same data". Tiles 0 and 1 (one supertile) both read tile 2's 100 floats: the
    # pair's bus carries those 400 B once, so each tile receives at the pair's rate:
    # exchange_cycles(ceil(400 / 2)) = 50, as for one receiver alone.
    target = sp.targets.ipu_model(tiles=4)
    n = 100
    alone = exchange_step(target, [(2, 0)], n)
    both = exchange_step(target, [(2, 0), (2, 1)], n, shared=True)
    assert both.bytes_exchanged == 8 * n  # two tiles each hold a copy
    assert both.exchange_cycles == alone.exchange_cycles == (
        target.exchange_cycles(math.ceil(4 * n / 2)) + REGION + target.exchange_latency_cycles)


def test_one_tile_receives_an_element_once():
    target = sp.targets.ipu_model(tiles=4)
    latency = target.exchange_latency_cycles
    n = 100
    # Two vertices on tile 1 read the same 100 floats of tile 0: they arrive once (400 B).
    step = exchange_step(target, [(0, 1), (0, 1)], n, shared=True)
    assert step.bytes_exchanged == 4 * n
    # 400 B over the pair's bus, in one region (the union of the two identical reads): + 4.
    assert step.exchange_cycles - latency == target.exchange_cycles(2 * n) + REGION


def test_one_send_reaches_every_listener():
    target = sp.targets.ipu_model(tiles=4)
    latency = target.exchange_latency_cycles
    n = 100
    # Tiles 1 and 2 both read tile 0's 100 floats: 800 B received in all, but tile 0 sends its
    # 400 B once (multicast). Tile 1 shares the bus with the sender (pair 0: 400 B each way) and
    # tile 2 is alone on pair 1: every bus moves 400 B, exchange_cycles(200) = 50.
    step = exchange_step(target, [(0, 1), (0, 2)], n, shared=True)
    assert step.bytes_exchanged == 8 * n
    # One region per sending and receiving tile: + 4.
    assert step.exchange_cycles - latency - REGION == target.exchange_cycles(math.ceil(4 * n / 2)) == 50
    assert sorted(step.recv_tiles.tolist()) == [1, 2]


def test_an_output_on_another_tile_is_sent_after_compute():
    target = sp.targets.ipu_model(tiles=4)
    g = sp.Graph(target)
    n = 64
    x, y = variable(g, n, 0, "x"), variable(g, n, 1, "y")
    cs = g.add_compute_set("write_remote")
    g.add_vertex(cs, Move, {"x": x, "y": y}, tile=0)
    eng = sp.Engine(g, [P.Execute(cs)])
    eng.write_tensor(x, np.arange(n))
    eng.run(0)
    np.testing.assert_array_equal(eng.read_tensor(y), np.arange(n))
    step = only_step(eng)
    assert step.bytes_exchanged == 4 * n
    assert step.recv_tiles.tolist() == [1]  # tile 1 (the Output's home) receives
    # 256 B over the pair's bus: exchange_cycles(128) = 32, one region (4), latency 30.
    assert step.exchange_cycles == target.exchange_cycles(2 * n) + REGION + target.exchange_latency_cycles
    assert step.compute_cycles == W * 7  # compute happens on tile 0


def test_local_vertices_exchange_nothing():
    target = sp.targets.ipu_model(tiles=4)
    step = exchange_step(target, [(2, 2)], 100)
    assert (step.bytes_exchanged, step.exchange_cycles) == (0, 0)
    assert step.cycles == target.on_chip_sync_cycles + W * 7


# --- inter-IPU ----------------------------------------------------------------------------------


def test_reading_across_ipus_uses_the_links_and_the_global_sync():
    target = sp.targets.ipu_model(tiles=4, num_ipus=2)  # tiles 0-3 on IPU 0, 4-7 on IPU 1
    n = 1000
    step = exchange_step(target, [(0, 5)], n)
    assert step.inter_ipu_bytes == 4 * n
    assert step.bytes_exchanged == 4 * n
    link_rate = target.ipu_links_per_ipu * target.ipu_link_bytes_per_cycle
    assert step.exchange_cycles >= math.ceil(4 * n / link_rate)
    assert step.exchange_cycles >= target.exchange_cycles(2 * n) + REGION + target.exchange_latency_cycles
    # The on-chip sync (150) plus the fabric's 40 (see the sync tests).
    assert step.sync_cycles == target.global_sync_cycles() == 150 + 40
    # The same read inside IPU 1 stays on the chip.
    local = exchange_step(target, [(4, 5)], n)
    assert local.inter_ipu_bytes == 0
    assert local.sync_cycles == target.on_chip_sync_cycles


def test_gc200_pair_read_across_the_ipu_link():
    target = sp.targets.GC200.with_num_ipus(2)  # tiles 0..1471 on IPU 0, 1472..2943 on IPU 1
    n = 4096
    step = exchange_step(target, [(0, 1472)], n)
    # Links: 10 x 128 Gibit/s / 8 x 0.85 / 1.33 GHz = 109.8 B/cycle: 16,384 B in 150 cycles.
    link_rate = 10 * 128 * 2**30 / 8 * 0.85 / 1.33e9
    assert math.ceil(4 * n / link_rate) == 150
    # On chip the 16,384 B move over lone supertile buses in one region: exchange_cycles(8192) +
    # 4 = 2052 cycles, the slower of the two.
    assert step.exchange_cycles == max(2048 + REGION, 150) + target.exchange_latency_cycles
    assert step.inter_ipu_bytes == 4 * n
    assert step.sync_cycles == 150 + 40


def test_slow_links_bound_the_exchange():
    # One link of 1 B/cycle payload (1 GB/s at 1 GHz, no efficiency loss): 4000 B take 4000 cycles,
    # far more than the on-chip 4000 B / 8 B per cycle = 500.
    target = sp.targets.ipu_model(tiles=4, num_ipus=2, clock_hz=1e9, ipu_link_bytes_per_second=1e9,
                                  ipu_links_per_ipu=1, ipu_link_efficiency=1.0)
    assert target.ipu_link_bytes_per_cycle == 1.0
    step = exchange_step(target, [(1, 6)], 1000)
    assert step.exchange_cycles == 4000 + target.exchange_latency_cycles
    # ceil(15e-9 x 1e9 x 1 x 2) = 30 cycles over the fabric at 1 GHz, after the 150 on chip.
    assert step.sync_cycles == 150 + 30


# --- copies -----------------------------------------------------------------------------------


def copy_step(target: sp.Target, src_tile: int, dst_tile: int, n: int):
    g = sp.Graph(target)
    x, y = variable(g, n, src_tile, "x"), variable(g, n, dst_tile, "y")
    return only_step(sp.Engine(g, [P.Copy(x, y)], estimate_only=True))


def test_copy_between_tiles_is_an_exchange():
    target = sp.targets.ipu_model(tiles=4)
    n = 256
    step = copy_step(target, 0, 3, n)
    assert step.bytes_exchanged == 4 * n
    # 1024 B out of pair 0 and into pair 1, each alone on its bus: exchange_cycles(512) = 128,
    # one region each side (+ 4).
    assert step.exchange_cycles == target.exchange_cycles(2 * n) + REGION + target.exchange_latency_cycles
    assert step.compute_cycles == 0
    assert step.sync_cycles == target.on_chip_sync_cycles


def test_copy_on_one_tile_is_compute():
    target = sp.targets.ipu_model(tiles=4)
    n = 257
    step = copy_step(target, 2, 2, n)
    # 1028 B at on_tile_copy_bytes_per_cycle = 8: ceil(128.5) = 129 cycles.
    assert step.compute_cycles == math.ceil(4 * n / target.on_tile_copy_bytes_per_cycle) == 129
    assert (step.bytes_exchanged, step.exchange_cycles) == (0, 0)
    fast = copy_step(sp.targets.ipu_model(tiles=4, on_tile_copy_bytes_per_cycle=16.0), 2, 2, n)
    assert fast.compute_cycles == math.ceil(4 * n / 16) == 65


def test_copy_of_a_strided_view_moves_only_its_elements():
    target = sp.targets.ipu_model(tiles=4)
    g = sp.Graph(target)
    x = g.add_variable(sp.float32, (8,), name="x")
    g.set_tile_mapping(x[:4], 0)
    g.set_tile_mapping(x[4:], 1)
    y = variable(g, 4, 2, "y")
    step = only_step(sp.Engine(g, [P.Copy(x.subsample(2), y)], estimate_only=True))
    # x[0], x[2] from tile 0 and x[4], x[6] from tile 1: 16 B into tile 2. Pair 0 sends 16 B and
    # pair 1 receives 16 B: exchange_cycles(ceil(16 / 2)) = ceil(8 x 16 / 64) = 2, + latency.
    # Tile 2 receives four one-element regions (x[0], x[2], x[4], x[6] are not contiguous):
    # 4 x 4 = 16 cycles of region set-up; tiles 0 and 1 each send 2 regions (8), fewer.
    assert step.bytes_exchanged == 16
    assert step.exchange_cycles == target.exchange_cycles(8) + 4 * REGION + target.exchange_latency_cycles
    assert step.compute_cycles == 0


def test_on_tile_copies_run_in_parallel_across_tiles():
    target = sp.targets.ipu_model(tiles=4)
    g = sp.Graph(target)
    x, y = g.add_variable(sp.float32, (300,), name="x"), g.add_variable(sp.float32, (300,), name="y")
    for t in (x, y):  # 100 elements on tile 0, 200 on tile 1: every element stays on its tile
        g.set_tile_mapping(t[:100], 0)
        g.set_tile_mapping(t[100:], 1)
    step = only_step(sp.Engine(g, [P.Copy(x, y)], estimate_only=True))
    # The slower tile copies 800 B at 8 B/cycle: 100 cycles.
    assert step.compute_cycles == math.ceil(200 * 4 / target.on_tile_copy_bytes_per_cycle) == 100
    assert step.busiest_tile == 1
    assert (step.bytes_exchanged, step.exchange_cycles) == (0, 0)


def test_host_stream_copy_is_bound_by_the_host_link():
    target = sp.targets.ipu_model(tiles=4)
    n = 4096
    g = sp.Graph(target)
    x = g.add_variable(sp.float32, (n,), name="x")
    sp.ops.map_linearly(g, x)
    up = g.add_host_to_device_fifo("up", sp.float32, n)
    down = g.add_device_to_host_fifo("down", sp.float32, n)
    eng = sp.Engine(g, [P.Sequence(P.Copy(up, x), P.Copy(x, down))], estimate_only=True)
    host = math.ceil(4 * n / target.host_link_bytes_per_cycle)
    for step in eng.executable.steps:
        assert step.host_bytes == 4 * n
        assert step.exchange_cycles >= host
        assert step.bytes_exchanged == 4 * n  # tiles receive (up) or send (down) every byte


def test_a_slow_host_link_sets_the_transfer_time():
    # 1 B/cycle host link: 4000 B take 4000 cycles; on chip they take at most a few hundred.
    target = sp.targets.ipu_model(tiles=4, clock_hz=1e9, host_link_bytes_per_second=1e9)
    g = sp.Graph(target)
    x = variable(g, 1000, 0, "x")
    up = g.add_host_to_device_fifo("up", sp.float32, 1000)
    step = only_step(sp.Engine(g, [P.Copy(up, x)], estimate_only=True))
    assert step.host_bytes == 4000
    assert 4000 <= step.exchange_cycles <= 4000 + target.exchange_latency_cycles


# --- run accounting -----------------------------------------------------------------------------


def single_work(g: sp.Graph, cycles: int, tile: int = 0, name: str = "work") -> sp.ComputeSet:
    return work_set(g, {tile: [cycles]}, MultiWork, name)


def step_cost(target: sp.Target, compute: int) -> int:
    """An Execute of purely local work: sync, no exchange, compute."""
    return target.on_chip_sync_cycles + compute


def test_repeat_pays_its_body_and_a_control_step_each_turn():
    target = sp.targets.ipu_model(tiles=4)
    g = sp.Graph(target)
    cs = single_work(g, 1000)
    eng = sp.Engine(g, [P.Repeat(5, P.Execute(cs))])
    eng.run(0)
    turn = target.control_cycles_per_step  # Repeat turn: control work, no sync
    assert eng.report.cycles == 5 * (step_cost(target, 1000) + turn) == 5 * (1150 + 10)
    counts = {s["name"]: s["count"] for s in eng.report.steps}
    assert counts == {"work": 5, "Repeat x5 (per turn)": 5}
    assert eng.report.runs == [{"program": 0, "cycles": eng.report.cycles}]
    eng.run(0)
    assert eng.report.cycles == 2 * 5 * 1160


def test_if_pays_only_the_branch_taken():
    target = sp.targets.ipu_model(tiles=4)
    g = sp.Graph(target)
    cheap, dear = single_work(g, 100, name="cheap"), single_work(g, 5000, name="dear")
    flag = variable(g, 1, 1, "flag", sp.int32)
    eng = sp.Engine(g, [P.If(flag, P.Execute(dear), P.Execute(cheap))])
    test = target.control_cycles_per_step + target.on_chip_sync_cycles  # every tile sees the flag
    eng.write_tensor(flag, [0])
    eng.run(0)
    assert eng.report.cycles == test + step_cost(target, 100)
    eng.write_tensor(flag, [1])
    eng.run(0)
    assert eng.report.runs[1]["cycles"] == test + step_cost(target, 5000)
    counts = {s["name"]: s["count"] for s in eng.report.steps}
    assert counts == {"If test": 2, "cheap": 1, "dear": 1}


def counting_loop(g: sp.Graph, body: sp.ComputeSet, limit: int):
    """RepeatWhileTrue(count < limit) { body; count += 1 }, returning (program, count tensor)."""
    count = variable(g, 1, 0, "count", sp.int32)
    flag = variable(g, 1, 0, "flag", sp.int32)
    test = g.add_compute_set("test")
    g.add_vertex(test, Less, {"count": count, "limit": limit, "flag": flag}, tile=0)
    step = g.add_compute_set("step")
    g.add_vertex(step, Increment, {"count": count, "step": 1}, tile=0)
    loop = P.RepeatWhileTrue(P.Execute(test), flag, P.Sequence(P.Execute(body), P.Execute(step)))
    return loop, count


def loop_prices(eng: sp.Engine) -> tuple[int, int, int]:
    s = steps_by_name(eng)
    return s["test"].cycles + s["RepeatWhileTrue test"].cycles, s["work"].cycles, s["step"].cycles


def test_repeat_while_counts_every_test():
    target = sp.targets.ipu_model(tiles=4)
    g = sp.Graph(target)
    loop, count = counting_loop(g, single_work(g, 700), limit=4)
    eng = sp.Engine(g, [loop])
    eng.write_tensor(count, [0])
    eng.run(0)
    assert eng.read_tensor(count).tolist() == [4]
    test, body, step = loop_prices(eng)
    # 4 turns, 5 tests (the last one fails); each test is a compute set plus a sync'd control step.
    assert steps_by_name(eng)["RepeatWhileTrue test"].cycles == (
        target.control_cycles_per_step + target.on_chip_sync_cycles)
    assert eng.report.cycles == 5 * test + 4 * (body + step)
    counts = {s["name"]: s["count"] for s in eng.report.steps}
    assert counts == {"test": 5, "RepeatWhileTrue test": 5, "work": 4, "step": 4}


def test_functions_cost_their_body_per_call():
    target = sp.targets.ipu_model(tiles=4)
    g = sp.Graph(target)
    fn = g.add_function(P.Execute(single_work(g, 300)), name="f")
    eng = sp.Engine(g, [P.Sequence(P.Call(fn), P.Call(fn), P.Call(fn))])
    eng.run(0)
    call = target.control_cycles_per_step
    assert eng.report.cycles == 3 * (call + step_cost(target, 300))
    (body,) = [s for s in eng.report.steps if s["name"] == "work"]
    assert body["count"] == 3  # one step for the function body, run three times
    calls = [s["count"] for s in eng.report.steps if s["name"] == "Call f"]
    assert calls == [1, 1, 1]


def test_report_cycles_are_the_sum_of_steps_times_counts():
    target = sp.targets.ipu_model(tiles=4)
    g = sp.Graph(target)
    a, b = single_work(g, 100, name="a"), single_work(g, 900, tile=3, name="b")
    x, y = variable(g, 50, 0, "x"), variable(g, 50, 2, "y")
    prog = P.Sequence(P.Repeat(3, P.Sequence(P.Execute(a), P.Copy(x, y))), P.Execute(b), P.Sync())
    eng = sp.Engine(g, [prog])
    eng.run(0)
    report = eng.report
    assert report.cycles == sum(s["cycles"] * s["count"] for s in report.steps)
    assert {s["name"]: s["count"] for s in report.steps} == {
        "Repeat x3 (per turn)": 3, "a": 3, "Copy x -> y": 3, "b": 1, "Sync internal": 1}


# --- cycle counters ---------------------------------------------------------------------------


def counter_value(eng: sp.Engine, counter: sp.Tensor) -> int:
    low, high = (int(w) for w in eng.read_tensor(counter))
    return low | high << 32


def test_cycle_count_measures_its_sequence():
    target = sp.targets.ipu_model(tiles=4)
    g = sp.Graph(target)
    cs = single_work(g, 400)
    seq = P.Sequence(P.Repeat(2, P.Execute(cs)), P.Sync())
    counter = sp.cycle_count(g, seq)
    before = single_work(g, 999, name="before")
    eng = sp.Engine(g, [P.Sequence(P.Execute(before), seq)])
    eng.run(0)
    measured = 2 * (target.control_cycles_per_step + step_cost(target, 400)) + target.on_chip_sync_cycles
    assert counter_value(eng, counter) == measured
    s = steps_by_name(eng)
    assert measured == sum(s[k].cycles * c for k, c in
                           [("work", 2), ("Repeat x2 (per turn)", 2), ("Sync internal", 1)])
    assert eng.report.cycles == measured + s["before"].cycles


def test_cycle_count_fills_the_high_word():
    target = sp.targets.ipu_model(tiles=4)
    g = sp.Graph(target)
    big = 2**31 - 1
    seq = P.Sequence(P.Repeat(3, P.Execute(single_work(g, big))))
    counter = sp.cycle_count(g, seq)
    eng = sp.Engine(g, [seq])
    eng.run(0)
    measured = 3 * (target.control_cycles_per_step + step_cost(target, big))
    assert measured > 2**32
    low, high = (int(w) for w in eng.read_tensor(counter))
    assert (low, high) == (measured & 0xFFFFFFFF, measured >> 32)


def test_cycle_stamp_reads_the_cycles_since_load():
    target = sp.targets.ipu_model(tiles=4)
    g = sp.Graph(target)
    seq = P.Sequence(P.Execute(single_work(g, 250)))
    stamp = sp.cycle_stamp(g, seq)
    eng = sp.Engine(g, [seq])
    eng.run(0)
    first = counter_value(eng, stamp)
    assert first == step_cost(target, 250)
    eng.run(0)
    assert counter_value(eng, stamp) == 2 * first == eng.report.cycles


# --- estimate-only engines ----------------------------------------------------------------------


def mixed_program(g: sp.Graph) -> P.Program:
    a, b = single_work(g, 100, name="a"), work_set(g, {1: [30, 40, 50], 2: [500]}, name="b")
    x, y = variable(g, 300, 0, "x"), variable(g, 300, 3, "y")
    up = g.add_host_to_device_fifo("up", sp.float32, 300)
    return P.Sequence(P.Copy(up, x), P.Repeat(4, P.Sequence(P.Execute(a), P.Copy(x, y))),
                      P.Execute(b), P.Sync())


def test_estimate_equals_running_for_a_branch_free_program():
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    prog = mixed_program(g)
    real = sp.Engine(g, [prog])
    real.connect_stream("up", np.zeros(300, np.float32))
    real.run(0)
    est = sp.Engine(g, [prog], estimate_only=True)
    est.run(0)  # no data, no streams needed
    assert est.report.cycles == real.report.cycles > 0
    assert [s["count"] for s in est.report.steps] == [s["count"] for s in real.report.steps]


def test_estimate_prices_a_billion_turns():
    # How fast (a loop's price is multiplied, never walked): estimate_billion_turns in
    # bench/bench_host_times.py.
    target = sp.targets.ipu_model(tiles=4)
    g = sp.Graph(target)
    eng = sp.Engine(g, [P.Repeat(10**9, P.Execute(single_work(g, 1000)))], estimate_only=True)
    eng.run(0)
    assert eng.report.cycles == 10**9 * (step_cost(target, 1000) + target.control_cycles_per_step)
    assert steps_by_name(eng)["work"] is not None
    assert {s["name"]: s["count"] for s in eng.report.steps}["work"] == 10**9


def test_estimate_of_a_loop_that_never_turns():
    target = sp.targets.ipu_model(tiles=4)
    g = sp.Graph(target)
    eng = sp.Engine(g, [P.Sequence(P.Repeat(0, P.Execute(single_work(g, 1000))), P.Sync())],
                    estimate_only=True)
    eng.run(0)
    assert eng.report.cycles == target.on_chip_sync_cycles  # only the Sync
    assert {s["name"]: s["count"] for s in eng.report.steps}["work"] == 0


def test_estimate_takes_the_dearer_branch():
    target = sp.targets.ipu_model(tiles=4)
    g = sp.Graph(target)
    cheap, dear = single_work(g, 100, name="cheap"), single_work(g, 5000, name="dear")
    flag = variable(g, 1, 1, "flag", sp.int32)
    test = target.control_cycles_per_step + target.on_chip_sync_cycles
    for prog in (P.If(flag, P.Execute(cheap), P.Execute(dear)),
                 P.If(flag, P.Execute(dear), P.Execute(cheap)),
                 P.Switch(flag, {0: P.Execute(cheap), 1: P.Execute(dear)})):
        eng = sp.Engine(g, [prog], estimate_only=True)
        eng.run(0)
        assert eng.report.cycles == test + step_cost(target, 5000)


@pytest.mark.parametrize("turns", [1, 3, 0])
def test_estimate_while_iterations_option(turns):
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    loop, count = counting_loop(g, single_work(g, 700), limit=turns)
    options = {} if turns == 1 else {"estimate.whileIterations": turns}
    est = sp.Engine(g, [loop], options, estimate_only=True)
    est.run(0)
    test, body, step = loop_prices(est)
    assert est.report.cycles == (turns + 1) * test + turns * (body + step)
    real = sp.Engine(g, [loop])  # a run that really takes `turns` turns costs the same
    real.write_tensor(count, [0])
    real.run(0)
    assert real.report.cycles == est.report.cycles


def test_estimate_only_engine_holds_no_data():
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    x = variable(g, 4, 0, "x")
    eng = sp.Engine(g, [P.Execute(single_work(g, 10))], estimate_only=True)
    with pytest.raises(sp.EngineError, match="estimate-only"):
        eng.write_tensor(x, np.zeros(4))
    with pytest.raises(sp.EngineError, match="estimate-only"):
        eng.read_tensor(x)
    with pytest.raises(sp.EngineError, match="estimate-only"):
        eng.connect_stream("up", np.zeros(4))
    assert eng.report.data["estimate_only"] is True


def test_estimate_sees_the_elements_through_the_same_structure():
    # That the time to price grows with vertices, not elements, is estimate_time_vs_elements in
    # bench/bench_host_times.py; here, what the price is.
    target = sp.targets.ipu_model(tiles=16, bytes_per_tile=16 * 2**20)
    codelet = binary_op_codelet(BinaryOp.ADD, sp.float32)

    def build_and_price(elements: int) -> sp.Engine:
        g = sp.Graph(target)
        vertices = 256
        ts = {}
        for name in ("a", "b", "out"):
            ts[name] = g.add_variable(sp.float32, (vertices, elements), name=name)
            sp.ops.map_linearly(g, ts[name], grain_size=elements)
        cs = g.add_compute_set("add")
        g.add_vertices(cs, codelet, ts, tiles=np.repeat(np.arange(16), vertices // 16))
        eng = sp.Engine(g, [P.Execute(cs)], estimate_only=True)
        eng.run(0)
        return eng

    big, small_eng = build_and_price(65536), build_and_price(16)
    # The structure is the same: one vertex group of 256 vertices, one step, 4096x the data.
    for eng in (small_eng, big):
        (compiled,) = eng.executable.compute_sets.values()
        assert [grp.num_vertices for grp in compiled.groups] == [256]
    assert big.report.cycles > small_eng.report.cycles  # the price does see the elements...
    # 16 vertices per tile of 65536 floats: ceil(65536 / 6) = 10923 per worker, ceil(10923 / 2)
    # = 5462 loops: 16 x (6 x (29 + 5462 x 3) + 11).
    assert only_step(big).compute_cycles == 16 * (6 * (29 + 5462 * 3) + 11)


# -- copies between arbitrary views ----------------------------------------------------------------------
def _copy_oracle(src: sp.Tensor, dst: sp.Tensor, g: sp.Graph, tiles: int):
    """Bytes per (source tile, destination tile) and on-tile bytes, element by element."""
    s_tile = g.tile_of(src).reshape(-1)
    d_tile = g.tile_of(dst).reshape(-1)
    moved = np.zeros((tiles, tiles), np.int64)
    np.add.at(moved, (s_tile, d_tile), 4)
    local = np.diag(moved).copy()
    np.fill_diagonal(moved, 0)
    return moved, local


@pytest.mark.parametrize("case", range(40))
def test_copy_transfers_of_views_match_an_element_by_element_oracle(case):
    from softipu.compiler.exchange import copy_transfers

    rng = np.random.default_rng(case)
    tiles = 6
    g = sp.Graph(sp.targets.ipu_model(tiles=tiles))
    a = g.add_variable(sp.float32, (6, 8, 5), name="a")
    b = g.add_variable(sp.float32, (6, 8, 5), name="b")
    for v in (a, b):  # a random interval mapping of the flat variables
        cuts = np.unique(np.concatenate(([0, 240], rng.integers(1, 240, rng.integers(1, 30)))))
        g.map_intervals(v.reshape(-1), cuts[:-1], cuts[1:], rng.integers(0, tiles, cuts.size - 1))
    views = [lambda t: t, lambda t: t.transpose((2, 0, 1)), lambda t: t[::-1, 1:7:2],
             lambda t: t[:, :, ::2].transpose((1, 0, 2)), lambda t: t.reshape(-1)[rng.permutation(240)[:90]]]
    make = views[case % len(views)]
    src = make(a)
    dst_flat = b.reshape(-1)[: src.numel]
    dst = views[(case // len(views)) % 4](b) if case % 3 == 0 and src.shape == a.shape else \
        dst_flat.reshape(src.shape)
    if dst.shape != src.shape:
        dst = dst_flat.reshape(src.shape)
    mappings = {sp.float32: g.resolved_mapping(sp.float32)}
    transfers, local = copy_transfers(src, dst, mappings, tiles)
    got = np.zeros((tiles, tiles), np.int64)
    for s, e, st, dt, item in transfers.per_dtype():
        np.add.at(got, (st, dt), (e - s) * item)
    want, want_local = _copy_oracle(src, dst, g, tiles)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(local, want_local)


@pytest.mark.parametrize("dense", [True, False])
def test_intervals_holding_agrees_with_a_binary_search(dense):
    """The table lookup split_by_mapping uses for dense addresses (and the binary search for
    sparse ones) finds the interval a bisection would, gaps and addresses before the first
    interval included."""
    from softipu.compiler.exchange import _intervals_holding
    rng = np.random.default_rng(int(dense))
    for _ in range(100):
        starts = np.unique(rng.integers(5, 2000, rng.integers(1, 60)))
        n = int(rng.integers(300, 600)) if dense else int(rng.integers(1, 20))
        first = rng.integers(0, 2100, n)
        last = first + rng.integers(-1, 40, n)  # -1: an empty interval
        got = _intervals_holding(starts, first, last)
        for mine, addresses in zip(got, (first, last), strict=True):
            np.testing.assert_array_equal(mine, np.searchsorted(starts, addresses, side="right") - 1)


def test_union_per_key_is_the_same_with_the_callers_start_order():
    """traffic() sorts a step's intervals by start once and keys them three ways (sender,
    receiver, supertile); each union equals a brute-force one over the covered addresses."""
    from softipu.compiler.exchange import union_per_key
    rng = np.random.default_rng(3)
    for n in (1, 7, 400):
        starts = rng.integers(0, 300, n)
        ends = starts + rng.integers(1, 12, n)  # transfers are never empty
        keys = rng.integers(0, 9, n)
        by_start = np.argsort(starts, kind="stable")
        for order in (None, by_start):
            length, regions = union_per_key(keys, starts, ends, 9, order)
            for k in range(9):
                covered = np.zeros(320, bool)
                for s, e in zip(starts[keys == k], ends[keys == k], strict=True):
                    covered[s:e] = True
                assert length[k] == covered.sum()
                assert regions[k] == np.count_nonzero(np.diff(np.concatenate(([0], covered.astype(int)))) == 1)


# --- exchange granularity ---------------------------------------------------------------------


def test_a_transposing_copy_pays_per_piece_not_per_block():
    # 1,024 floats from tile 0 to tile 2 (different supertiles, each tile alone on its bus).
    # As one 4 KiB block: ceil(4096 / 2) = 2048 B on the bus at 4 B/cycle = 512 cycles, one region
    # each side (+ 4), latency 30: 546. As a 32 x 32 transpose every element is its own piece
    # (contiguous on neither side): the same 512 cycles of data + 1,024 regions x 4 = 4,096 + 30.
    target = sp.targets.ipu_model(tiles=4)

    def copy_cycles(transpose: bool) -> int:
        g = sp.Graph(target)
        x, y = variable(g, 1024, 0, "x"), variable(g, 1024, 2, "y")
        src = x.reshape(32, 32).transpose(1, 0).reshape(1024) if transpose else x
        return only_step(sp.Engine(g, [P.Copy(src, y)], estimate_only=True)).exchange_cycles

    assert copy_cycles(False) == 512 + REGION + 30 == 546
    assert copy_cycles(True) == 512 + 1024 * REGION + 30 == 4638
