"""Issue 19: popops' stage-2 reduce vertex priced with poplibs' own estimators.

Figures worked by hand from getCyclesEstimateForStridedReduce, getCyclesEstimateForReduce and
getCycleEstimateReduceAllRegionsContinuous
(lib/popops/reduction/CycleEstimationFunctions.cpp in graphcore/poplibs) on a GC200 tile: six
workers, a 64-bit data path (2 floats or 4 halves a load), 128-bit accumulator ops for ADD.
"""

from __future__ import annotations

import numpy as np

import softipu as sp
from softipu.codelets.reduce import (
    ReduceOp,
    columns_codelet,
    columns_cycles,
    default_reduce_cycles,
    segments_codelet,
    strided_reduce_cycles,
)

T = sp.targets.GC200
SUP = T.supervisor_overhead_cycles


def test_strided_reduce_hand_worked():
    # 3 float rows of 48 columns at an even stride, into half. elemsPerLoop = gcd(min(4, 2), 96)
    # = 2; busiest worker: ceil(ceil(48 / 2) / 6) = 4 loops. Outer loop 3 + post (3 + 2)
    # + 3 + (3 - 1) = 13; worker 4 + 11 + 13 * 4 = 67.
    assert int(strided_reduce_cycles(ReduceOp.ADD, sp.float32, sp.float16, 3, 48, 96, T)) == 67
    assert columns_cycles(ReduceOp.ADD, sp.float32, sp.float16, 3, 48, 96, T) == 6 * 67 + SUP


def test_default_reduce_hand_worked():
    # Rows not evenly spaced: the DEFAULT vertex. opVectorWidth 4 (128-bit accumulators),
    # busiest worker 8 columns = 2 vectors. 7 + 26 + 16 + 6 + 2*2 + 2 = 61; per vector
    # (3 + 2) + store (2 * 4 + 1) + 1 + 3 rows * 10 = 45; per vector and row 2 + 2 + 4/2 + 3 = 9:
    # 61 + 2 * 45 + 2 * 3 * 9 = 205.
    assert int(default_reduce_cycles(ReduceOp.ADD, sp.float32, sp.float16, 3, 48, T)) == 205
    assert columns_cycles(ReduceOp.ADD, sp.float32, sp.float16, 3, 48, 0, T) == 6 * 205 + SUP


def test_default_reduce_remainder_hand_worked():
    # 3 columns, 2 rows: no whole vector; remainder bits 1 and 2. Bit 1: 4 + store (2*1 + 1)
    # + 2 * 10 + 2 * (2 + 1 + 3) = 39; bit 2: 4 + (2*2 + 1) + 20 + 2 * (2 + 1 + 3) = 41.
    assert int(default_reduce_cycles(ReduceOp.ADD, sp.float32, sp.float32, 2, 3, T)) == 61 + 39 + 41


def test_max_uses_the_plain_vector_width():
    # MAX has no accumulators: opVectorWidth = vectorWidth(float) = 2, store 2 * 2 + 0.
    # 12 columns: busiest worker 2 = 1 vector; checks = ceilLog2(2) = 1.
    # 7 + 26 + 16 + 6 + 2 + 2 = 59; vector 3 + 4 + 1 + 2 * 10 = 28; load (0 + 2 + 1 + 3) * 2 = 12.
    assert int(default_reduce_cycles(ReduceOp.MAX, sp.float32, sp.float32, 2, 12, T)) == 59 + 28 + 12


def test_codelet_prices_each_vertex_by_its_layout():
    codelet = columns_codelet(ReduceOp.ADD, sp.float32, sp.float16)
    n = np.array([48, 48])
    step = np.array([[96], [0]])  # one strided vertex, one not
    cycles = codelet.cycles(parts=(48, 48, 48), out=n, scale=np.ones((2, 1)), part_step=step, target=T)
    assert cycles.tolist() == [6 * 67 + SUP, 6 * 205 + SUP]


def test_continuous_reduce_hand_worked():
    # ReduceSegments of 96 halves into 4 outputs of 24: each worker ceil(96 / 6) = 16 elements
    # at 4 a cycle (64-bit data path) = 4, ceil(4 / 6) = 1 output x 12, 10 + 7 call and return:
    # 33 worker cycles. Runs of 25 (100 elements): ceil(17 / 4) = 5 + 12 + 2 (odd) + 17 = 36.
    codelet = segments_codelet(ReduceOp.ADD, sp.float16)
    one = np.ones((1, 1), np.int64)
    assert codelet.cycles(x=96, out=4, first=24 * one, period=24 * one, target=T) == 6 * 33 + SUP
    assert codelet.cycles(x=100, out=4, first=25 * one, period=25 * one, target=T) == 6 * 36 + SUP
