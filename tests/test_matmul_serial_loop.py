"""A matmul's serial K split runs as one loop body, as poplin runs it (lib/poplin/ConvProgramTree.hpp
``lower``: ``Repeat(loopCount, {slice, body, update, loopPost})``): its exchange code, vertex state and
control code are held once, its cycles paid at every turn, and its results equal numpy's within
the matmul rounding bound on the fast engine and the reference interpreter."""

from __future__ import annotations

import numpy as np
import pytest

import softipu as sp
from softipu import program as P
from softipu.codelets._common import contraction_bound
from softipu.ops.matmul import (
    MATMUL_OPTIONS,
    create_matmul_input_lhs,
    create_matmul_input_rhs,
    matmul,
    plan_matmul,
)
from softipu.ops.planner import MatMulProblem, _loop_steps

TARGET = sp.targets.ipu_model(tiles=8, bytes_per_tile=128 * 1024)


@pytest.fixture(autouse=True)
def _loops(monkeypatch):
    """The loop is opt-in at the op level (matmul option serialLoops, default False)."""
    monkeypatch.setitem(MATMUL_OPTIONS, "serialLoops", True)
SA, SB = (128, 512), (512, 128)


def _looped_matmul():
    g = sp.Graph(TARGET)
    a = create_matmul_input_lhs(g, sp.float32, SA, SB, name="a")
    b = create_matmul_input_rhs(g, sp.float32, SA, SB, name="b")
    prog = P.Sequence()
    c = matmul(g, a, b, prog)
    return g, prog, a, b, c


def test_the_serial_steps_are_one_repeated_body():
    g, prog, *_ = _looped_matmul()
    p = plan_matmul(g, sp.float32, SA, SB)
    assert p.looped and p.k_serial == 4 and p.splits == (1, 2, 4, 1) and p.blocks == (1, 64, 32, 128)
    loops = [n for n in P.walk(prog) if isinstance(n, P.Repeat)]
    assert len(loops) == 1 and loops[0].count == 4
    body = [n.compute_set.name for n in P.walk(loops[0].body) if isinstance(n, P.Execute)]
    assert body == ["matmul/serialSlice", "matmul/amp", "matmul/loopIncrement"]


def test_a_looped_matmul_holds_one_steps_exchange_and_control_code():
    """Hand count, 8 tiles, (128 x 512) . (512 x 128) fp32 planned as M 2 x N 4 tiles (tile
    ``4 i + j``), 4 serial steps of (64 x 128) . (128 x 32), operands made by create_matmul_input_*.

    The body's AMP step: each 64 x 128 block of A's step buffer lies in 4 pieces of 2,048 on the
    tiles of its row (i, 0..3), each 128 x 32 block of B's in 2 pieces on the tiles of its column.
    A tile sends 2 regions (its A piece, its B piece) and receives A's other 3 pieces (one run
    for j = 0 or 3, two for j = 1, 2) and B's other piece (one run; tile 4's A run ends where B's
    buffer begins, so its two runs are one). The slice: the loop counter (tile 0) sent once and
    received by every other tile, 1 region each. The reduce (K not split) moves nothing.
    Exchange code 16 B a region: 5, 6, 6, 5, 4, 6, 6, 5 regions. Unrolled, the 4 steps would
    each hold theirs.

    Control code, 24 B a step, on every tile: zero the partials, reset the counter, the Repeat,
    the slice, the AMP, the counter's increment, the reduce: 7 steps = 168 B, not one a turn.
    """
    g, prog, *_ = _looped_matmul()
    eng = sp.Engine(g, [prog], {"debug.allowOutOfMemory": True})
    cats = eng.executable.memory.categories
    assert TARGET.exchange_code_bytes_per_region == 16 and TARGET.control_code_bytes_per_step == 24
    assert cats["exchange_code"].tolist() == [16 * r for r in (5, 6, 6, 5, 4, 6, 6, 5)]
    assert cats["control_code"].tolist() == [7 * 24] * 8


def _check(got, av, bv):
    exact = np.matmul(av.astype(np.float64), bv.astype(np.float64))
    terms = np.matmul(np.abs(av.astype(np.float64)), np.abs(bv.astype(np.float64)))
    k = av.shape[-1]
    out = sp.float16 if got.dtype == np.float16 else None
    bound = contraction_bound(terms, k, **({"out": out} if out else {}))
    assert np.all(np.abs(got.astype(np.float64) - exact) <= bound)


@pytest.mark.parametrize("reference", [False, True])
@pytest.mark.parametrize(("dtype", "shape_a", "shape_b", "transpose_a", "amp"), [
    (sp.float32, (48, 1024), (1024, 40), False, 0.05),
    (sp.float32, (2, 40, 512), (512, 24), True, 0.05),  # broadcast B, column-major A
    (sp.float16, (3, 40, 512), (3, 512, 24), False, 0.05),
    # the last K range's chunks shorter: 14 steps of 3 x 16 + 2 (700 = 3 x 14 x 16 + 14 x 2)
    (sp.float32, (48, 700), (700, 40), False, 0.1),
    (sp.float32, (48, 700), (700, 40), True, 0.1),
    (sp.float16, (48, 600), (600, 40), False, 0.1),  # 2 ranges of 5 steps: 600 = 5 x 64 + 5 x 56
])
def test_looped_matmuls_equal_numpy_within_the_rounding_bound(reference, dtype, shape_a, shape_b,
                                                              transpose_a, amp):
    g = sp.Graph(sp.targets.ipu_model(tiles=16))
    if transpose_a:  # A stored column-major: a transposed view of a (.., K, M) variable
        at = g.add_variable(dtype, shape_a[:-2] + shape_a[-2:][::-1], name="at")
        sp.ops.map_linearly(g, at)
        a = at.transpose(*range(len(shape_a) - 2), len(shape_a) - 1, len(shape_a) - 2)
    else:
        a = at = g.add_variable(dtype, shape_a, name="a")
        sp.ops.map_linearly(g, a)
    b = g.add_variable(dtype, shape_b, name="b")
    sp.ops.map_linearly(g, b)
    opts = {"availableMemoryProportion": amp}
    assert plan_matmul(g, dtype, shape_a, shape_b, opts).looped
    prog = P.Sequence()
    c = matmul(g, a, b, prog, options=opts)
    eng = sp.Engine(g, [prog], {"engine.reference": reference, "debug.allowOutOfMemory": True})
    rng = np.random.default_rng(3)
    for _ in range(2):  # the counter and the partials start again at every run
        av = rng.standard_normal(shape_a).astype(dtype.numpy)
        bv = rng.standard_normal(shape_b).astype(dtype.numpy)
        eng.write_tensor(at, np.swapaxes(av, -1, -2) if transpose_a else av)
        eng.write_tensor(b, bv)
        eng.run(0)
        _check(eng.read_tensor(c), av, bv)


def test_serial_steps_are_raised_to_the_next_count_that_makes_them_alike():
    # fp16 K = 1,024 (AMP grain 16: 64 units). 2 K ranges in 3 steps of 176 leave a short last
    # chunk; 4 steps of 128 make K = 2 x 4 x 128. 9 K ranges of a 4,096 K (256 units): no step
    # count makes 9 x steps divide 256, so it stays unrolled.
    p = MatMulProblem(1, 64, 1024, 64, sp.float16, sp.float16, sp.float16, k_grain=16)
    serial, chunk, looped = _loop_steps(p, np.array([2, 1]), np.array([3, 1]), np.array([176, 1024]))
    assert serial.tolist() == [4, 1] and chunk.tolist() == [128, 1024] and looped.tolist() == [True, False]
    q = MatMulProblem(1, 64, 4096, 64, sp.float16, sp.float16, sp.float16, k_grain=16)
    serial, chunk, looped = _loop_steps(q, np.array([9]), np.array([3]), np.array([160]))
    assert serial.tolist() == [3] and chunk.tolist() == [160] and looped.tolist() == [False]


def test_switched_off_the_serial_steps_stay_unrolled():
    p = plan_matmul(TARGET, sp.float32, SA, SB, {"serialLoops": False})
    assert p.k_serial > 1 and not p.looped and p.loop_cycles == 0


def test_the_loops_own_cycles_as_worked_by_hand():
    """The 8-tile plan above (fp32, blocks (64 x 128) . (128 x 32), 4 steps, A over 4 tiles, B
    over 2): each turn's slice copies the tile's 2,048-element share of A's and of B's step
    block in 6 vertices each (a worker's share, 342 = ceil(2,048 / 6) rounded to 2-element
    vectors): DynamicSlice2d cycles 20 + 1 x (19 + ceil(342 x 4 / 8) = 171) = 210 a vertex, 12
    vertices on 6 workers: 6 x max(210, 12 x 210 / 6) = 2,520; the counter's 4 B in 1 region,
    30 latency + 1 + 4 = 35; the counter's + 1 (BinaryOp1D, one uint32: 209); 2 syncs of 150;
    the Repeat's 10: 3,074 a turn. Before the loop, the partials (64 x 32 fp32) zeroed: 6 x (20
    + ceil(1,024 / 6) = 171) + 11 = 1,157, and a sync: 1,307; the counter's reset, an on-tile
    copy of 4 B (1 cycle) and a sync: 151. 4 turns: 4 x 3,074 + 1,307 + 151 = 13,754; the
    compiled program's steps charge the same (zeroing 1,157, reset 1, slice 2,520 + 35,
    increment 209, Repeat 10 a turn, a sync each)."""
    p = plan_matmul(TARGET, sp.float32, SA, SB)
    assert p.loop_cycles == 13_754
    assert p.cycles == p.amp_cycles + p.exchange_cycles + p.reduce_cycles + p.sync_cycles + 13_754


@pytest.mark.parametrize("reference", [False, True])
def test_a_looped_matmul_of_created_operands_with_a_narrower_last_k_range(reference):
    """create_matmul_input_lhs/rhs lay A out in column slabs of two widths (the loop's K grid:
    3 ranges of 14 x 16, the last 14 x 2), read in place by the slices."""
    g = sp.Graph(sp.targets.ipu_model(tiles=16))
    sa, sb, opts = (48, 700), (700, 40), {"availableMemoryProportion": 0.1}
    a = create_matmul_input_lhs(g, sp.float32, sa, sb, name="a", options=opts)
    b = create_matmul_input_rhs(g, sp.float32, sa, sb, name="b", options=opts)
    p = plan_matmul(g, sp.float32, sa, sb, opts)
    assert p.looped and (p.k_split, p.k_serial, p.blocks[3]) == (4, 14, 16)
    prog = P.Sequence()
    c = matmul(g, a, b, prog, options=opts)
    assert not any(isinstance(n, P.Copy) and n.dst.numel > 1 for n in P.walk(prog))  # used in place
    eng = sp.Engine(g, [prog], {"engine.reference": reference, "debug.allowOutOfMemory": True})
    rng = np.random.default_rng(5)
    av, bv = rng.standard_normal(sa).astype(np.float32), rng.standard_normal(sb).astype(np.float32)
    eng.write_tensor(a, av)
    eng.write_tensor(b, bv)
    eng.run(0)
    _check(eng.read_tensor(c), av, bv)


@pytest.mark.parametrize("reference", [False, True])
def test_a_looped_convolution_matches_torch(reference):
    """A 3 x 3 convolution whose K (9 positions x 32 channels) runs as a loop with a narrower last
    range: its im2col slabs are copied slab by slab (not as one copy of equal slabs)."""
    torch = pytest.importorskip("torch")
    from softipu.ops.conv import conv

    g = sp.Graph(sp.targets.ipu_model(tiles=16))
    xs, ws = (2, 32, 8, 8), (16, 32, 3, 3)
    x = g.add_variable(sp.float32, xs, name="x")
    w = g.add_variable(sp.float32, ws, name="w")
    for t in (x, w):
        sp.ops.map_linearly(g, t)
    prog = P.Sequence()
    y = conv(g, x, w, prog, padding=1, options={"availableMemoryProportion": 0.1})
    assert any(isinstance(n, P.Repeat) for n in P.walk(prog))
    eng = sp.Engine(g, [prog], {"engine.reference": reference, "debug.allowOutOfMemory": True})
    rng = np.random.default_rng(7)
    xv, wv = rng.standard_normal(xs).astype(np.float32), rng.standard_normal(ws).astype(np.float32)
    eng.write_tensor(x, xv)
    eng.write_tensor(w, wv)
    eng.run(0)
    want = torch.nn.functional.conv2d(torch.tensor(xv), torch.tensor(wv), padding=1).numpy()
    np.testing.assert_allclose(eng.read_tensor(y), want, rtol=1e-4, atol=1e-4)


def test_option_serial_loops_false_unrolls_the_same_split():
    # The matmul option serialLoops (default True): False keeps the serial steps unrolled, each its
    # own compute sets (what the torch training frontend asks for), with the same answer.
    rng = np.random.default_rng(5)
    av, bv = rng.standard_normal(SA).astype(np.float32), rng.standard_normal(SB).astype(np.float32)
    outs = {}
    for loops in (True, False):
        g = sp.Graph(TARGET)
        a = create_matmul_input_lhs(g, sp.float32, SA, SB, name="a")
        b = create_matmul_input_rhs(g, sp.float32, SA, SB, name="b")
        prog = P.Sequence()
        c = matmul(g, a, b, prog, options={"serialLoops": loops})
        repeats = [n for n in P.walk(prog) if isinstance(n, P.Repeat)]
        amps = [n for n in P.walk(prog) if isinstance(n, P.Execute) and "amp" in n.compute_set.name]
        assert (len(repeats), len(amps)) == ((1, 1) if loops else (0, 4))
        eng = sp.Engine(g, [prog], {"debug.allowOutOfMemory": True})
        eng.write_tensor(a, av)
        eng.write_tensor(b, bv)
        eng.run(0)
        outs[loops] = eng.read_tensor(c)
    ref = av.astype(np.float64) @ bv.astype(np.float64)
    bound = contraction_bound(np.abs(av) @ np.abs(bv), SA[1])
    for got in outs.values():
        assert np.all(np.abs(got - ref) <= bound)
    g, prog, a, b, _ = _looped_matmul()
    with pytest.raises(sp.SoftIPUError, match="serialLoops"):
        matmul(g, a, b, prog, options={"serialLoops": "no"})
