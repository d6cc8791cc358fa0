"""Golden figures of the estimators the matmul is priced with, each worked out BY HAND below from
poplibs' own formulas (graphcore/poplibs lib/poplin/PerformanceEstimation.hpp, the latest published
version: getConvPartial1x1SupervisorInnerLoopCycleEstimate / ...OuterLoopCycleEstimate with the
worker state retention, estimateCastCycles, getReduceCycleEstimate; lib/poplin/ConvModel.cpp:
addInPlaceEstimate, addTransformCycleEstimate), never read back from the code under test.

GC200 figures used: 6 workers; AMP fp16 16 conv units x 16 input channels, fp32 8 x 16;
weights loaded 64 bits at a time by default (poplin use128BitConvUnitLoad = false), 8 B/cycle;
exchange 4 B/cycle/tile, 4 cycles per region [U], 30 cycles latency [U]; on-tile copies 8 B/cycle.
"""

from __future__ import annotations

import numpy as np
import pytest

import softipu as sp
from softipu import program as P
from softipu.codelets.matmul import accumulate_cycles, amp_cycles, reduce_cycles
from softipu.errors import CodeletError
from softipu.ops.planner import MatMulProblem, price, rearrange_cycles

GC200 = sp.targets.GC200
F16, F32 = sp.float16, sp.float32


# --- AMP (ConvPartial1x1Out) -----------------------------------------------------------------------
def test_amp_fp16_in_fp32_partials_two_by_two_groups():
    # m = 36 rows, k = 32, n = 32, fp16 in, fp32 partials.
    # Groups: n_in = 32 / 16 = 2 input groups, n_out = 32 / 16 = 2 output groups (1 pass each).
    # Weight loads per (in, out) group: 16 units x 16 weights x 2 B / 8 B per cycle = 64.
    # Workers: 36 / 6 = 6 rows each (busiest = least busy = 6); retention saves 10 per worker.
    #   zeroing pass (first input group):  38 + 4 x (6 - 3) - 10 = 40 per worker
    #   accumulating passes:               40 + 4 x (6 - 3) - 10 = 42 per worker
    #   inner (zeroing) = max(6 x 40, 6 x 40 + 14) = 254; inner = max(6 x 42, 6 x 42 + 14) = 266.
    # Outer: 50 (non-loop) + 6 x (10 + 2 x (2 - 1)) (retention paid back) = 122, + 12 (conv group)
    #   + first input group: (10 + 1) + 2 x (19 + 7 + 64 + 254) = 11 + 2 x 344 = 699
    #   + one more input group: (15 + 1) + 2 x (19 + 6 + 64 + 266) = 16 + 2 x 355 = 726
    #   = 122 + 12 + 699 + 726 = 1559.
    assert int(amp_cycles(36, 32, 32, F16, F32, GC200)) == 1559


def test_amp_accumulating_vertex_is_a_zeroing_product_plus_an_in_place_add():
    # ConvPartial1x1Out overwrites its partials on the first input group (out is an Output), so a
    # later serial K chunk is computed into fresh partials and added in place (poplin
    # addInPlaceEstimate): 1559 (above) + BinaryOp1DInPlace<ADD, float> over 36 x 32 = 1152:
    #   per worker ceil(1152 / 6) = 192 elements = 96 float pairs x (1 + 2) = 288;
    #   6 x (58 + 288) + 11 = 2087.  1559 + 2087 = 3646.
    assert int(accumulate_cycles(36 * 32, F32, GC200)) == 2087
    assert int(amp_cycles(36, 32, 32, F16, F32, GC200, zeroing=False)) == 3646


def test_amp_fp32_uneven_workers():
    # m = 20, k = 16, n = 8, fp32: n_in = 1, n_out = 1; loads = 8 units x 16 x 4 B / 8 = 64.
    # Workers: ceil(20 / 6) = 4 rows (busiest), 20 // 6 = 3 rows (least busy); no retention.
    #   r = 4, zeroing: 46 + (2 + 4 x 4) + 8 x (4 - 3) = 46 + 18 + 8 = 72
    #   r = 3, zeroing: 46 + (2 + 4 x 3) + 0 = 60
    #   inner = max(6 x 72, 6 x 60 + 14) = max(432, 374) = 432.
    # Outer: 50 + 12 + 11 + 1 x (19 + 7 + 64 + 432) = 73 + 522 = 595.
    assert int(amp_cycles(20, 16, 8, F32, F32, GC200)) == 595


def test_amp_fp16_half_partials_tag_on_the_least_busy_worker():
    # m = 7, k = 16, n = 16, fp16 in and partials: busiest worker 2 rows, least busy 1 row.
    #   r = 2, zeroing: 40 + (2 + 2 x 2) = 46;  r = 1, zeroing: 39 + (2 + 2 x 1) = 43
    #   inner = max(6 x 46, 6 x 43 + 14) = max(276, 272) = 276.
    # Outer: 50 + 12 + 11 + (19 + 7 + 64 + 276) = 73 + 366 = 439.
    assert int(amp_cycles(7, 16, 16, F16, F16, GC200)) == 439


def test_amp_worker_without_rows_costs_nothing():
    # m = 5 fp32 rows over 6 workers: busiest 1 row, one worker has none (no worklist entry, 0).
    #   r = 1, zeroing: 47 + (2 + 4) = 53;  inner = max(6 x 53, 6 x 0 + 14) = 318.
    # Outer: 50 + 12 + 11 + (19 + 7 + 64 + 318) = 481.
    assert int(amp_cycles(5, 16, 8, F32, F32, GC200)) == 481


def test_amp_throughput_tends_to_the_peak_from_below():
    # A long fp16 pass: per extra row 4 worker cycles x 6 workers / 6 rows = 4 tile cycles per row
    # for 16 x 16 MACs: 64 MACs/cycle, the GC200 peak. Overheads keep it below.
    m, k, n = 6 * 4000, 16, 16
    cycles = int(amp_cycles(m, k, n, F16, F32, GC200))
    ideal = m * k * n / GC200.amp_macs_per_cycle_fp16
    assert ideal < cycles < 1.01 * ideal
    # Twice the rows cost 4 x 6 x 4000 / 6 ... = 96,000 more cycles: 4 per row, exactly.
    assert int(amp_cycles(2 * m, k, n, F16, F32, GC200)) - cycles == 4 * m


# --- ReduceAdd -------------------------------------------------------------------------------------
def test_reduce_matches_poplibs_supervisor_figure_on_a_full_tile():
    # poplibs getReduceCycleEstimate(outSize = 24, partials = 4, float out, float partials, 6 workers):
    #   loops = 24 / 4 = 6 (no remainder); per worker 6 / 6 = 1 loop; no partial loop.
    #   cycles = 32 + (3 x 4 + 7) x 1 = 51 per worker; x 6 workers = 306 tile cycles.
    # softipu: six one-worker ReducePartials of 4 outputs each: 51 worker cycles each, and a tile
    # charges 6 x max(longest, total / 6) = 6 x 51 = 306.
    each = int(reduce_cycles(4, 4, F32, F32, GC200))
    assert each == 51
    assert 6 * max(each, 6 * each // 6) == 306


def test_reduce_half_output_and_remainder():
    # Half output: 3 P + 6 per loop: 32 + (12 + 6) = 50 for 4 outputs of 4 partials.
    assert int(reduce_cycles(4, 4, F32, F16, GC200)) == 50
    # 6 outputs: one full loop of 4 (3 x 4 + 7 = 19) and the shorter remainder loop for the
    # other 2 (2 x 4 + 13 = 21): 32 + 19 + 21 = 72.
    assert int(reduce_cycles(4, 6, F32, F32, GC200)) == 72
    # fp16 partials, fp16 out: 8 per loop at 3 P + 8: 16 outputs of 2 partials: 32 + 2 x 14 = 60.
    assert int(reduce_cycles(2, 16, F16, F16, GC200)) == 60


def test_one_partial_row_is_a_cast_priced_as_poplin_prices_it():
    # No K split: poplin casts (estimateCastCycles), per worker max(ceil(n / vw_partials),
    # ceil(n / vw_out)) + 26: 32 fp32 -> fp16: max(16, 8) + 26 = 42 (ReduceAdd would say
    # 32 + 8 x (3 + 6) = 104). 7 fp32 -> fp32: max(4, 4) + 26 = 30.
    assert int(reduce_cycles(1, 32, F32, F16, GC200)) == 42
    assert int(reduce_cycles(1, 7, F32, F32, GC200)) == 30


def test_rearranging_operands_from_another_layout():
    # poplin addTransformCycleEstimate for 4096 x 4096 . 4096 x 16 fp32 over 1472 tiles:
    #   A: 4096 x 4096 x 4 B / 1472 = 45590.3 -> 45591 B per tile; k x n = 65536 is even: x 5 / 4;
    #      copy ceil(45591 x 5 / (min(8, 4) x 4)) = ceil(14247.2) = 14248; exchange
    #      ceil(45591 / 4) = 11398.
    #   B: 4096 x 16 x 4 B / 1472 = 178.1 -> 179 B: copy ceil(179 x 5 / 16) = 56, exchange 45.
    #   14248 + 11398 + 56 + 45 = 25747.
    p = MatMulProblem(1, 4096, 4096, 16, F32, F32, F32)
    assert rearrange_cycles(p, GC200, 1472) == 25747
    # fp16: 2 B per element: copy at min(8, 2) = 2 B per cycle, A 22796 B per tile:
    #   ceil(22796 x 5 / 8) = 14248, ceil(22796 / 4) = 5699; B 90 B: ceil(450 / 8) = 57, 23.
    p = MatMulProblem(1, 4096, 4096, 16, F16, F32, F16)
    assert rearrange_cycles(p, GC200, 1472) == 14248 + 5699 + 57 + 23


# --- the planner's exchange (the same rule as the compiler's) ---------------------------------------
def test_planner_prices_one_candidate_by_hand():
    # 64 x 64 x 64, fp16 in, fp32 partials, fp16 out; the candidate: M split 2, N split 2, no K split,
    # blocks 32 x 64 (A) and 64 x 32 (B), unpaired (one tile per supertile: 4 of 1472 tiles used).
    p = MatMulProblem(1, 64, 64, 64, F16, F32, F16)
    one = {"sg": 1, "sm": 2, "sn": 2, "sk": 1, "bg": 1, "bm": 32, "bn": 32, "bk": 64, "pair": 0}
    c = {key: np.array([v]) for key, v in one.items()}
    got = {k: int(v[0]) for k, v in price(p, GC200, c, budget=10**6).items()}
    # Inputs: each A block is spread over the sn = 2 tiles using it, so a tile receives half of its
    # 32 x 64 block: 32 x 64 / 2 x 2 B = 2048 B, likewise half its B block: 2048 B; 4096 B in all,
    # the tile alone on its supertile's bus (twice the rate): ceil(4096 / 2) = 2048 B at 4 B/cycle
    # = 512 cycles; one region from each other tile sharing a block: (2 - 1) + (2 - 1) = 2 x 4 = 8;
    # + 30 latency = 550. No K split: no partials to exchange.
    assert got["exchange"] == 512 + 8 + 30
    # AMP (32 x 64) . (64 x 32): n_in = 4, n_out = 2, loads 64; workers 6 rows (busiest), 5 (least).
    #   zeroing: r=6 38 + 12 - 10 = 40, r=5 38 + 8 - 10 = 36: inner0 = max(240, 216 + 14) = 240
    #   accumulating: r=6 40 + 12 - 10 = 42, r=5 38: inner = max(252, 228 + 14) = 252
    #   50 + 6 x (10 + 2 x 3) + 12 + (11 + 2 x (19 + 7 + 64 + 240))
    #      + 3 x (16 + 2 x (19 + 6 + 64 + 252)) = 146 + 12 + 671 + 2094 = 2923.
    assert got["amp"] == 2923
    # fp32 partials to fp16 out: a second stage (one partial per row): each tile casts its 32 rows
    # of 32: a cast of max(32 / 2, 32 / 4) + 26 = 42 worker cycles; 32 of them over 6 workers:
    # 6 x max(42, ceil(32 x 42 / 6) = 224) = 1344.
    assert got["reduce"] == 1344
    # One sync per step: the AMP step and the reduction: 2 x 150.
    assert got["sync"] == 300


# --- codelet estimates are validated -------------------------------------------------------------------
class BadCycles(sp.Vertex):
    x = sp.Input(sp.float32)
    sign = sp.Param(sp.int32)

    @staticmethod
    def compute(x, sign):
        pass

    @staticmethod
    def cycles(x, sign):
        return sign * 4000 + (sign > 0) * 1000  # -4000 for sign -1, 5000 for sign +1


class HalfCycles(sp.Vertex):
    x = sp.Input(sp.float32)

    @staticmethod
    def compute(x):
        pass

    @staticmethod
    def cycles(x):
        return x / 4 + 0.5  # 10.5 for 40 elements: not a whole number of cycles


def _graph_with(codelet, fields_of):
    g = sp.Graph(sp.targets.ipu_model(tiles=2))
    x = g.add_variable(sp.float32, (40,), name="x")
    g.set_tile_mapping(x, 0)
    cs = g.add_compute_set("bad")
    for fields in fields_of(x):
        g.add_vertex(cs, codelet, fields, tile=0)
    return g, cs


def test_a_negative_cycle_estimate_is_an_error_naming_the_codelet_and_the_line():
    # Today's bug: -4000 and 5000 on one tile would make a 1,000-cycle step.
    g, cs = _graph_with(BadCycles, lambda x: [{"x": x, "sign": 1}, {"x": x, "sign": -1}])
    with pytest.raises(CodeletError) as info:
        sp.Engine(g, [P.Execute(cs)], estimate_only=True)
    text = str(info.value)
    assert "BadCycles" in text and "-4000" in text and "test_costs_golden.py" in text
    assert "non-negative integer" in text


def test_a_fractional_cycle_estimate_is_an_error():
    g, cs = _graph_with(HalfCycles, lambda x: [{"x": x}])
    with pytest.raises(CodeletError, match=r"HalfCycles.*10\.5.*test_costs_golden\.py"):
        sp.Engine(g, [P.Execute(cs)], estimate_only=True)


# --- one source of truth for vertex state --------------------------------------------------------------
def test_planner_and_memory_plan_charge_an_amp_vertex_the_same_state():
    # AmpMatMul's fields: a, b, out (vectors, 8 B each: pointer + size) and m, k, n, layout (int32
    # params, 4 B each): 3 x 8 + 4 x 4 = 40 B. ReducePartials with 5 partial rows: out (8) + the list's
    # count (4) + 5 entries x 8 = 52 B. The compiler's memory plan and the planner both ask
    # graph.accounting.vertex_state_bytes, so one figure serves both.
    from softipu.codelets.matmul import amp_codelet, reduce_codelet
    from softipu.graph.accounting import vertex_state_bytes

    target = sp.targets.ipu_model(tiles=2)
    amp = amp_codelet(F32, F32)
    assert vertex_state_bytes(amp, target) == 3 * 8 + 4 * 4 == 40
    assert vertex_state_bytes(reduce_codelet(F32, F32), target, {"partials": 5}) == 8 + 4 + 5 * 8
    g = sp.Graph(target)
    a, b, c = (g.add_variable(F32, (16,), name=n) for n in "abc")
    for t in (a, b, c):
        g.set_tile_mapping(t, 0)
    cs = g.add_compute_set("amp")
    g.add_vertex(cs, amp, {"a": a, "b": b, "out": c, "m": 4, "k": 4, "n": 4, "layout": 0}, tile=0)
    eng = sp.Engine(g, [P.Execute(cs)], estimate_only=True)
    assert int(eng.executable.memory.cs_state_bytes[cs.id][0]) == 40
