"""Golden cycle counts of the BSP cost model, derived by hand from the documented formulas: compute
(workers, PopLibs elementwise estimators) and sync. Exchange and copies are in test_costs_exchange.py,
run accounting, cycle counters and estimate-only engines in test_costs_runs.py.

Every expected figure below is arithmetic on the target's fields and the formulas of
ipu-facts.md §2 and §5 (and the cost model's documented rules in ``softipu.compiler.costs`` and
``softipu.compiler.exchange``); none is copied from a run. Small ``ipu_model`` chips keep the
numbers readable; keywords override a figure where that makes the arithmetic clearer.
"""

from __future__ import annotations

import math

import pytest

import softipu as sp
from _costs_helpers import MultiWork, W, Work, only_step, variable, work_set
from softipu import program as P
from softipu.codelets import BinaryOp, UnaryOp, binary_op_codelet, unary_op_codelet
from softipu.compiler.costs import DEFAULT_VERTEX_OVERHEAD_CYCLES

# --- codelets whose estimates are whatever the test says -----------------------------------------


class NoEstimate(sp.Vertex):
    """A codelet without ``cycles``: the cost model falls back to its default estimate."""

    x = sp.Input(sp.float32)
    y = sp.Output(sp.float32)

    @staticmethod
    def compute(x, y):
        y[...] = x


# --- helpers ----------------------------------------------------------------------------------


def compute_cycles_of(target: sp.Target, jobs: dict[int, list[int]], codelet=Work) -> int:
    g = sp.Graph(target)
    eng = sp.Engine(g, [P.Execute(work_set(g, jobs, codelet))], estimate_only=True)
    return only_step(eng).compute_cycles


# --- compute: plain vertices share the tile's workers ---------------------------------------------


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
