"""The matmul planner's temporary memory per tile, as poplin's planner counts it (issue 19),
checked against figures worked out by hand from poplibs' formulas (lib/poplin/ConvModel.cpp,
addEstimates: addConvTempMemoryEstimate, addReduceCycleEstimate, addInPlaceEstimate; the
tile-level sizes of constructModel), not from the code under test."""

from __future__ import annotations

import softipu as sp
from softipu.ops.matmul import plan_matmul
from softipu.ops.planner import MatMulProblem, temp_bytes

F16, F32 = sp.float16, sp.float32
FFN_UP = ((2304, 1024), (1024, 4096))  # BERT-Large s128 b18: (tokens x hidden) . (hidden x 4 hidden)


def test_a_step_holds_its_whole_blocks_and_its_partials():
    # poplin counts the tile's whole input and weights blocks (inputsPerLevel / weightsPerLevel
    # are taken before the exchange estimate subtracts the share already on the tile) and its
    # partials, whether or not a second compute set follows. fp32, (64 x 128) . (128 x 32):
    # (64 x 128 + 128 x 32) x 4 + 64 x 32 x 4 = 49,152 + 8,192 = 57,344.
    p = MatMulProblem(1, 64, 128, 32, F32, F32, F32)
    assert int(temp_bytes(p, 1, 64, 32, 128, 1, 1)) == 57_344
    # Split over 2 K ranges: the reduction's first stage holds ceil(2,048 / 2) x 2 partials x 4 B
    # = 8,192 B, less than the step's 57,344 (max of the two). In 3 serial steps of the same
    # chunk, the running sum of the tile's outputs, ceil(2,048 / 2) x 4 = 4,096 B, lives across
    # the loop (addInPlaceTempBytes) and is added: 61,440.
    assert int(temp_bytes(p, 1, 64, 32, 128, 2, 1)) == 57_344
    assert int(temp_bytes(p, 1, 64, 32, 128, 2, 3)) == 61_440
    # Two groups, fp16 in, fp32 partials: 2 x (8 x 16 + 16 x 16) x 2 + 2 x 8 x 16 x 4 = 1,536 +
    # 1,024; the reduction over 4 ranges holds ceil(256 / 4) x 4 x 4 = 1,024 < 2,560.
    q = MatMulProblem(2, 8, 16, 16, F16, F32, F16)
    assert int(temp_bytes(q, 2, 8, 16, 16, 4, 1)) == 2_560


def test_bert_large_ffn_plan_counts_what_poplin_counts():
    # C600, fp16 in, half partials, availableMemoryProportion 0.6 (budget 0.6 x 638,976 =
    # 383,385 B). The plan: M 7 x N 52 x K 4 tiles, blocks (330 x 256) . (256 x 80), one step.
    # poplin's count: A 330 x 256 x 2 = 168,960 + B 256 x 80 x 2 = 40,960 + partials 330 x 80 x 2
    # = 52,800 -> 262,720 B (the reduction's ceil(26,400 / 4) x 4 x 2 = 52,800 is less). The
    # received bytes alone (the count before, 252,992 B) leave out the tile's own share. Still
    # well under the budget: counted as poplin counts, 0.6 lets the planner take ~257 KiB here.
    opts = {"partialsType": "half", "serialLoops": True}  # as the torch frontend plans inference
    p = plan_matmul(sp.targets.C600, F16, *FFN_UP, opts)
    assert p.splits == (1, 7, 52, 4) and p.blocks == (1, 330, 80, 256) and p.k_serial == 1
    assert p.temp_bytes_per_tile == 262_720
    assert p.budget_bytes_per_tile == 383_385
    # At 0.3 (191,692 B) the whole K range no longer fits; the plan taken runs 2 serial steps of
    # 256 as one loop (K = 2 tiles x 2 steps x 256): M 11 x N 64 x K 2 tiles, 210 x 256 x 2 =
    # 107,520 + 256 x 64 x 2 = 32,768 + 26,880 partials (210 x 64 x 2) + the running sum of the
    # outputs ceil(13,440 / 2) x 2 = 13,440 -> 180,608 B.
    q = plan_matmul(sp.targets.C600, F16, *FFN_UP, {**opts, "availableMemoryProportion": 0.3})
    assert q.splits == (1, 11, 64, 2) and q.blocks == (1, 210, 64, 256) and q.k_serial == 2
    assert q.temp_bytes_per_tile == 180_608


def test_the_tiles_own_share_is_not_counted_twice_in_the_fit():
    # 8 tiles of 128 KiB, (128 x 512) . (512 x 128) fp32: budget 0.6 x 131,072 = 78,643 B.
    # M 2 x N 4 x K 1 tiles in 4 serial steps (a loop) of (64 x 128) . (128 x 32): (8,192 +
    # 4,096) x 4 + 8,192 partials + ceil(2,048 / 1) x 4 running sum = 65,536 B. Of that, the
    # tile's own share of the step's blocks (A over 4 tiles: 8,192 x 4 / 4; B over 2: 4,096 x 4
    # / 2) is read in place from the operands it already holds, so it is not counted again.
    target = sp.targets.ipu_model(tiles=8, bytes_per_tile=128 * 1024)
    p = plan_matmul(target, F32, (128, 512), (512, 128), {"serialLoops": True})  # poplin's loop
    assert p.fits and p.splits == (1, 2, 4, 1) and p.blocks == (1, 64, 32, 128) and p.k_serial == 4
    assert p.temp_bytes_per_tile == 65_536
    own = 8_192 + 8_192
    assert p.temp_bytes_per_tile - own + p.resident_bytes_per_tile <= target.bytes_per_tile
    assert p.temp_bytes_per_tile + p.resident_bytes_per_tile > target.bytes_per_tile
