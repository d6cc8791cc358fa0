"""PopART's pipeline schedule (target/pipeline.py) against figures worked out by hand.

Every expected value below is worked in the comment beside it from the rule quoted in the module
docstring (stage s runs in pipeline cycles s .. s+A-1; a cycle lasts as long as its busiest IPU plus
its dearest copy), never read back from the code.
"""

from __future__ import annotations

from fractions import Fraction

import pytest

from softipu.errors import TargetError
from softipu.target.pipeline import num_stages, pipeline_schedule, stage_ipu, stash_depths, training_stages


def test_bert_base_pod16_bubble():
    # 4 IPUs training: S = 2*4-1 = 7; A = 512: A+S-1 = 518 cycles, (S-1)/(A+S-1) = 6/518.
    t = pipeline_schedule([100] * 7, accumulation=512, training=True)
    assert t.stages == 7 and t.num_ipus == 4 and t.pipeline_cycles == 518
    assert t.bubble_fraction == Fraction(6, 518)
    # Equal stages: a steady cycle is the busiest IPU's two stages (fwd + bwd) = 200, except the
    # last IPU whose one merged stage is 100. Fill cycle p runs stages 0..p: IPU i has its forward
    # (100) from p >= i, its backward from p >= 6-i: p=0..3 -> 100, p=4 (IPU2 bwd) -> 200, p=5 -> 200.
    assert t.fill == 100 * 4 + 200 * 2
    assert t.main == 200 * (512 - 6)
    assert t.flush == t.fill  # symmetric
    assert t.bubble_cycles == t.fill + t.main + t.flush - 512 * 200
    assert t.stash_depth == (7, 5, 3, 0)


def test_inference_uneven_stages():
    # S = 3 stages of 3, 5, 2 cycles, A = 4 -> 6 pipeline cycles:
    # p0 {0}: 3 | p1 {0,1}: 5 | p2, p3 steady: 5 | p4 {1,2}: 5 | p5 {2}: 2
    t = pipeline_schedule([3, 5, 2], accumulation=4, training=False)
    assert t.cycle_lengths == (3, 5, 5, 5, 5, 2)
    assert (t.fill, t.main, t.flush, t.total) == (8, 10, 7, 25)
    assert t.steady_cycle == 5 and t.bubble_cycles == 25 - 4 * 5
    assert t.stash_depth == (0, 0, 0)
    assert t.ipu_busy == (12, 20, 8)  # each stage x A
    assert t.ipu_idle(2) == 25 - 8


def test_training_two_ipus_with_copies_and_optimizer():
    # fwd (2, 3), bwd (4, 6): stages (2, 3+6, 4) on IPUs (0, 1, 0). Copies after stage 0: 1, after 1: 2.
    stages = training_stages([2, 3], [4, 6])
    assert stages == (2, 9, 4)
    # A = 3: p0 {0}: 2 + copy 1 = 3 | p1 {0,1}: max(2, 9) + 2 = 11 | p2 steady: max(2+4, 9) + 2 = 11
    #        p3 {1,2}: max(4, 9) + 2 = 11 | p4 {2}: 4 (no copy after the last stage)
    t = pipeline_schedule(stages, accumulation=3, training=True, transfer_cycles=[1, 2], optimizer_cycles=7)
    assert t.cycle_lengths == (3, 11, 11, 11, 4)
    assert (t.fill, t.main, t.flush, t.optimizer, t.total) == (14, 11, 15, 7, 47)
    assert t.stash_depth == (3, 0)  # 2 x (2-1-0) + 1: fwd at p=m, its bwd at p=m+2
    assert t.ipu_busy == ((2 + 4) * 3, 9 * 3)


def test_cycle_overhead_paid_every_cycle():
    base = pipeline_schedule([5, 5], accumulation=4, training=False)
    more = pipeline_schedule([5, 5], accumulation=4, training=False, cycle_overhead=3)
    assert more.total - base.total == 3 * (4 + 2 - 1)


def test_stage_counts_and_ipus():
    assert num_stages(4, True) == 7 and num_stages(4, False) == 4
    assert [stage_ipu(s, 7, True) for s in range(7)] == [0, 1, 2, 3, 2, 1, 0]
    assert [stage_ipu(s, 4, False) for s in range(4)] == [0, 1, 2, 3]
    assert stash_depths(1, True) == (0,)
    assert stash_depths(8, True) == (15, 13, 11, 9, 7, 5, 3, 0)


def test_bad_input():
    with pytest.raises(TargetError, match="must equal at least the number of pipeline stages"):
        pipeline_schedule([1] * 7, accumulation=6, training=True)
    with pytest.raises(TargetError, match="odd count"):
        pipeline_schedule([1] * 4, accumulation=8, training=True)
    with pytest.raises(TargetError, match="transfer_cycles"):
        pipeline_schedule([1] * 3, accumulation=8, training=False, transfer_cycles=[1])
    with pytest.raises(TargetError, match="one forward and one backward"):
        training_stages([1, 2], [1])
    with pytest.raises(TargetError, match="accumulation"):
        pipeline_schedule([1], accumulation=0, training=False)


def test_two_stages_on_one_ipu():
    # Forward stages on IPUs (0, 1, 0) (a head back on IPU 0, as Graphcore's BERT): F = 3, S = 5,
    # schedule stages (fwd0, fwd1, fwd2+bwd2, bwd1, bwd0) on IPUs (0, 1, 0, 1, 0), cycles 1..5; A = 5,
    # 9 pipeline cycles; stage s active in p = s..s+4; a cycle is its busiest IPU's active stages:
    # p0 {0}: 1 | p1 {0,1}: max(1, 2) | p2 {0,1,2}: max(1+3, 2) | p3 {0..3}: max(4, 2+4)
    # p4 {0..4}: max(1+3+5, 6) = 9 | p5 {1..4}: max(3+5, 6) | p6 {2,3,4}: max(8, 4) | p7 {3,4}: max(5, 4) | p8 {4}: 5
    t = pipeline_schedule([1, 2, 3, 4, 5], accumulation=5, training=True, stage_ipus=[0, 1, 0])
    assert t.cycle_lengths == (1, 2, 4, 6, 9, 8, 8, 5, 5)
    assert (t.fill, t.main, t.flush) == (13, 9, 26)
    assert t.num_ipus == 2 and t.stage_ipus == (0, 1, 0, 1, 0)
    assert t.ipu_busy == ((1 + 3 + 5) * 5, (2 + 4) * 5)
    assert t.stash_depth == (5, 3, 0)  # per forward stage: 2(F-1-f)+1, the last none
    with pytest.raises(TargetError, match="leaves IPU 1 without a stage"):
        pipeline_schedule([1] * 5, accumulation=5, training=True, stage_ipus=[0, 2, 0])
    with pytest.raises(TargetError, match="each of the 3 forward stages"):
        pipeline_schedule([1] * 5, accumulation=5, training=True, stage_ipus=[0, 1])
