"""Matmul beyond the record table: errors, options, the planner, layouts, cost sanity, gradients."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

import softipu as sp
from softipu import program as P
from softipu.codelets._common import contraction_bound
from softipu.compiler.costs import StepKind
from softipu.ops.common import OpError
from softipu.ops.matmul import (
    create_matmul_input_lhs,
    create_matmul_input_rhs,
    matmul,
    matmul_plan_report,
    plan_matmul,
)
from softipu.ops.planner import MatMulProblem, _plan_cached, plan

SMALL = sp.targets.ipu_model(tiles=8, bytes_per_tile=256 * 1024)


def _graph(target=SMALL):
    return sp.Graph(target)


def _var(g, dtype, shape, name):
    t = g.add_variable(dtype, shape, name=name)
    sp.ops.map_linearly(g, t)
    return t


def _run(g, prog, inputs, outputs, reference=False):
    eng = sp.Engine(g, [prog], options={"engine.reference": reference})
    for t, v in inputs.items():
        eng.write_tensor(t, v)
    eng.run(0)
    return [eng.read_tensor(o) for o in outputs], eng


def _line_of(marker: str) -> int:
    with open(__file__) as f:
        return next(i for i, line in enumerate(f, 1) if marker in line and "_line_of" not in line)


# -- errors ------------------------------------------------------------------------------------------
def test_dtype_mismatch_names_op_dtypes_and_line():
    g = _graph()
    a, b = _var(g, sp.float32, (3, 4), "a"), _var(g, sp.float16, (4, 2), "b")
    with pytest.raises(OpError) as err:
        matmul(g, a, b, P.Sequence(), name="mm")  # MARK-dtype
    msg = str(err.value)
    assert "matmul 'mm'" in msg and "float32" in msg and "float16" in msg
    assert f"test_ops_matmul.py:{_line_of('MARK-dtype')}" in msg


def test_integer_inputs_are_refused():
    g = _graph()
    a, b = _var(g, sp.int32, (3, 4), "a"), _var(g, sp.int32, (4, 2), "b")
    with pytest.raises(OpError, match=r"int32 is not supported; matmul takes float16 or float32"):
        matmul(g, a, b, P.Sequence())


def test_shape_mismatch_names_both_shapes_and_line():
    g = _graph()
    a, b = _var(g, sp.float32, (3, 4), "a"), _var(g, sp.float32, (5, 2), "b")
    with pytest.raises(OpError) as err:
        matmul(g, a, b, P.Sequence())  # MARK-shape
    msg = str(err.value)
    assert "(3, 4)" in msg and "(5, 2)" in msg and "4 columns" in msg and "5 rows" in msg
    assert f"test_ops_matmul.py:{_line_of('MARK-shape')}" in msg


def test_batch_dims_that_do_not_broadcast():
    g = _graph()
    a, b = _var(g, sp.float32, (2, 3, 4), "a"), _var(g, sp.float32, (3, 4, 5), "b")
    with pytest.raises(OpError, match=r"\(2,\), \(3,\) do not broadcast"):
        matmul(g, a, b, P.Sequence())


def test_zero_dimensional_operand():
    g = _graph()
    a, b = _var(g, sp.float32, (), "a"), _var(g, sp.float32, (4, 2), "b")
    with pytest.raises(OpError, match=r"at least 1-D operands, got shapes \(\) and \(4, 2\)"):
        matmul(g, a, b, P.Sequence())


@pytest.mark.parametrize(("options", "pattern"), [
    ({"availableMemoryProportions": 0.5}, r"unknown option 'availableMemoryProportions'; did you mean "
                                          r"'availableMemoryProportion'"),
    ({"availableMemoryProportion": 1.5}, r"must lie in \(0, 1\], got 1.5"),
    ({"availableMemoryProportion": "lots"}, r"takes a float, got 'lots'"),
    ({"partialsType": "double"}, r"'partialsType' must be 'float' or 'half', got 'double'"),
    ({"partialsType": "half"}, r"partialsType 'half' needs float16 inputs, not sp.float32"),
])
def test_option_errors(options, pattern):
    g = _graph()
    a, b = _var(g, sp.float32, (3, 4), "a"), _var(g, sp.float32, (4, 2), "b")
    with pytest.raises(OpError, match=pattern):
        matmul(g, a, b, P.Sequence(), options=options)


def test_a_plan_that_cannot_fit_names_the_memory_and_the_option():
    g = _graph(sp.targets.ipu_model(tiles=2, bytes_per_tile=16 * 1024))
    # fp16 with fp32 partials: every plan holds a partials block, which cannot fit in 163 B.
    a, b = _var(g, sp.float16, (64, 64), "a"), _var(g, sp.float16, (64, 64), "b")
    with pytest.raises(OpError) as err:
        matmul(g, a, b, P.Sequence(), options={"availableMemoryProportion": 0.01})  # MARK-fit
    msg = str(err.value)
    assert "matmul" in msg and "B of temporaries per tile" in msg
    assert "availableMemoryProportion" in msg and f"test_ops_matmul.py:{_line_of('MARK-fit')}" in msg


# -- the planner ---------------------------------------------------------------------------------------
def test_plans_are_cached_frozen_and_cover_the_problem():
    p1 = plan_matmul(SMALL, sp.float32, (70, 130), (130, 45))
    p2 = plan_matmul(SMALL, sp.float32, (70, 130), (130, 45))
    assert p1 is p2
    with pytest.raises(AttributeError):
        p1.k_serial = 3  # type: ignore[misc]
    q = p1.problem
    assert p1.tiles_used <= SMALL.num_tiles
    _, bm, bn, bk = p1.blocks
    assert p1.m_split * bm >= q.m and p1.n_split * bn >= q.n
    assert p1.k_split * p1.k_serial * bk >= q.k
    assert p1.temp_bytes_per_tile <= p1.budget_bytes_per_tile == int(0.6 * SMALL.bytes_per_tile)
    assert p1.cycles == p1.amp_cycles + p1.exchange_cycles + p1.reduce_cycles + p1.sync_cycles


def test_less_memory_means_serial_k_chunks_within_the_budget():
    problem = MatMulProblem(1, 64, 1024, 64, sp.float32, sp.float32, sp.float32)
    roomy, tight = plan(problem, SMALL, 0.6), plan(problem, SMALL, 0.05)
    assert tight.fits and tight.temp_bytes_per_tile <= tight.budget_bytes_per_tile
    assert tight.temp_bytes_per_tile < roomy.temp_bytes_per_tile
    assert tight.k_serial > roomy.k_serial


def test_plan_report_reads_well():
    text = matmul_plan_report(sp.targets.GC200, sp.float16, (2048, 2048), (2048, 2048))
    for words in ("matmul plan on GC200", "partition:", "AMP", "exchange", "efficiency:",
                  "memory per tile:", "candidates priced"):
        assert words in text


# Issue 10 (codelets/matmul.py): poplibs' latest AMP estimator with worker state retention, and an
# accumulating K chunk priced as poplin does it (fresh partials + an in-place add): the model now
# gives 50.0% (fp16) and 65.0% (fp32) here; the floors guard against planner regressions.
# fp32 then 60.6%: its serial split (2 steps of 208 on K 5 ranges, the last 2 x 192) runs as
# poplin's loop (ops/_matmul_loop.py), which pays each turn's slices, the counter and the zeroing
# before it (Plan.loop_cycles) and accumulates at every step.
@pytest.mark.parametrize(("dtype", "floor"), [(sp.float16, 0.49), (sp.float32, 0.60)])
def test_gc200_2048_planner_quality(dtype, floor):
    """The modeled AMP efficiency of a 2048^3 matmul (bench/bench_ops_matmul.py reports it, and
    the planning time as ``planning_ms``).

    The old 70% target is withdrawn (issue 10: fidelity, not efficiency); the floors sit just
    under what the model gives now (50.0% fp16, 65.0% fp32), so a planner regression fails here.
    """
    _plan_cached.cache_clear()
    p = plan_matmul(sp.targets.GC200, dtype, (2048, 2048), (2048, 2048))
    assert p.fits and p.efficiency >= floor


def test_supertile_partners_share_a_block_and_the_compiled_exchange_matches_the_plan():
    """2048^3 fp16: the two tiles of each supertile hold neighbouring N blocks of the same A block
    (poplin's use of the shared exchange bus), and the compiler charges what the planner says."""
    target = sp.targets.GC200
    p = plan_matmul(target, sp.float16, (2048, 2048), (2048, 2048))
    assert p.pair == "n" and p.n_split % 2 == 0
    j = np.arange(p.n_split)
    tiles = p.tile_of(0, 1, j, 2)
    assert np.array_equal(tiles[0::2] // 2, tiles[1::2] // 2)  # partners on one supertile
    g = sp.Graph(target)
    a = create_matmul_input_lhs(g, sp.float16, (2048, 2048), (2048, 2048), name="a")
    b = create_matmul_input_rhs(g, sp.float16, (2048, 2048), (2048, 2048), name="b")
    prog = P.Sequence()
    matmul(g, a, b, prog)
    eng = sp.Engine(g, [prog], estimate_only=True)
    eng.run(0)
    amp_step = next(s for s in eng.executable.steps if s.name.endswith("/amp"))
    exchange_per_step = (p.exchange_cycles - _reduce_exchange(eng)) // p.k_serial
    assert abs(amp_step.exchange_cycles - exchange_per_step) <= 0.01 * exchange_per_step
    assert abs(eng.report.cycles - p.cycles) <= 0.005 * p.cycles


def _reduce_exchange(eng) -> int:
    return sum(s.exchange_cycles for s in eng.executable.steps if s.name.endswith("/reduce"))


def test_a_skewed_product_is_planned_transposed():
    """16 x 4096 . 4096 x 4096: the AMP's field (rows per worker) is N, not the 16 rows of A."""
    p = plan_matmul(sp.targets.GC200, sp.float16, (16, 4096), (4096, 4096))
    assert p.problem.m == 4096 and p.problem.n == 16


# -- layouts and the program -------------------------------------------------------------------------
def _values(shape_a, shape_b, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    av = rng.standard_normal(shape_a).astype(dtype)
    bv = rng.standard_normal(shape_b).astype(dtype)
    return av, bv


def test_inputs_made_for_the_plan_need_no_copies_and_cost_what_the_plan_says():
    g = _graph(sp.targets.GC200)
    shape_a, shape_b = (384, 512), (512, 256)
    a = create_matmul_input_lhs(g, sp.float16, shape_a, shape_b, name="a")
    b = create_matmul_input_rhs(g, sp.float16, shape_a, shape_b, name="b")
    assert a.shape == shape_a and b.shape == shape_b
    prog = P.Sequence()
    c = matmul(g, a, b, prog)
    av, bv = _values(shape_a, shape_b, np.float16)
    (got,), eng = _run(g, prog, {a: av, b: bv}, [c])
    np.testing.assert_allclose(got, av.astype(np.float32) @ bv.astype(np.float32), rtol=2e-3, atol=2e-2)
    kinds = {s.kind for s in eng.executable.steps}
    assert StepKind.COPY not in kinds  # no rearrangement
    p = plan_matmul(g, sp.float16, shape_a, shape_b)
    assert abs(eng.report.cycles - p.cycles) <= 0.05 * p.cycles
    # AMP flops plus the adds that combine the K split's partials
    assert eng.report.flops == 2 * 384 * 512 * 256 + (p.k_split - 1) * 384 * 256
    assert eng.report.fits


@pytest.mark.parametrize(("shape_a", "shape_b"), [((384, 512), (512, 256)), ((256, 768), (768, 3072)),
                                              ((2, 40, 96), (96, 200))])
def test_made_operands_are_taken_in_place_by_what_they_were_made_for(shape_a, shape_b, monkeypatch):
    """create_matmul_input_* remembers its operands' blocks; the matmul they were made for takes
    them as the full address check would, through transposed round trips (a linear layer's
    ``W.T`` then ``permute``), and another plan still checks every address."""
    mm = sys.modules["softipu.ops._matmul_blocks"]  # the operand-layout section of ops.matmul
    checked = []
    real = mm._indexed_blocks_ok
    monkeypatch.setattr(mm, "_indexed_blocks_ok", lambda *a: checked.append(1) or real(*a))
    g = _graph(sp.targets.GC200)
    a = create_matmul_input_lhs(g, sp.float32, shape_a, shape_b, name="a")
    b = create_matmul_input_rhs(g, sp.float32, shape_a, shape_b, name="b").T.T
    prog = P.Sequence()
    c = matmul(g, a, b, prog)
    assert not checked and not any(s.kind is StepKind.COPY for s in sp.Engine(
        g, [prog], estimate_only=True).executable.steps)
    known = []
    real_known = mm._known_blocks
    monkeypatch.setattr(mm, "_known_blocks", lambda *a: known.append(real_known(*a)) or None)
    g2 = _graph(sp.targets.GC200)  # the same operands again, every address checked this time
    a2 = create_matmul_input_lhs(g2, sp.float32, shape_a, shape_b, name="a")
    b2 = create_matmul_input_rhs(g2, sp.float32, shape_a, shape_b, name="b").T.T
    prog2 = P.Sequence()
    c2 = matmul(g2, a2, b2, prog2)
    assert checked or all(x.is_strided for x in (a2, b2))
    assert any(k is not None for k in known) or all(x.is_strided for x in (a2, b2))
    av, bv = _values(shape_a, shape_b)
    (got,), _ = _run(g, prog, {a: av, b: bv}, [c])
    (want,), _ = _run(g2, prog2, {a2: av, b2: bv}, [c2])
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(got, av @ bv, rtol=1e-4, atol=1e-4)
    # block starts read from a slab layout's structure are its real addresses, for any grid
    # they answer; a grid across the slabs gets none
    made = [x.reshape((1,) + x.shape) for x in (a, b) if not x.is_strided]
    for x in made:
        for rows, cols in [(mm._Grid.of(x.shape[1], 1), mm._Grid.of(x.shape[2], 1)),
                           (mm._Grid.of(x.shape[1], 5), mm._Grid.of(x.shape[2], 7))]:
            starts = real_known(x, rows, cols)
            if starts is not None:
                np.testing.assert_array_equal(starts, x.addresses()[:, rows.starts][:, :, cols.starts])


def test_slab_views_address_every_element_of_their_variable_once():
    from softipu.ops.matmul import _Grid, _slab_view
    g = _graph()
    for groups, r, c, w in [(1, 5, 7, 3), (2, 4, 9, 3), (3, 6, 8, 8), (1, 3, 10, 4)]:
        var = g.add_variable(sp.float32, (groups * r * c,))
        rows, cols = _Grid.of(r, 2), _Grid.of(c, w)
        view = _slab_view(var, groups, rows, cols)
        want = np.empty((groups, r, c), np.int64)  # slab j holds columns j*w.. row by row
        for gi in range(groups):
            at = var.offset + gi * r * c
            for c0, cw in zip(cols.starts, cols.sizes, strict=True):
                want[gi, :, c0:c0 + cw] = at + np.arange(r * cw).reshape(r, cw)
                at += r * cw
        np.testing.assert_array_equal(view.addresses(), want)


def test_linearly_mapped_inputs_are_copied_into_the_plan_layout_and_cost_more():
    g = _graph(sp.targets.GC200)
    shape_a, shape_b = (384, 512), (512, 256)
    a, b = _var(g, sp.float16, shape_a, "a"), _var(g, sp.float16, shape_b, "b")
    prog = P.Sequence()
    c = matmul(g, a, b, prog)
    av, bv = _values(shape_a, shape_b, np.float16)
    (got,), eng = _run(g, prog, {a: av, b: bv}, [c])
    np.testing.assert_allclose(got, av.astype(np.float32) @ bv.astype(np.float32), rtol=2e-3, atol=2e-2)
    assert any(s.kind is StepKind.COPY for s in eng.executable.steps)
    assert eng.report.cycles > plan_matmul(g, sp.float16, shape_a, shape_b).cycles


def test_row_major_output_and_fp16_is_cheaper_than_fp32():
    cycles = {}
    for dtype in (sp.float16, sp.float32):
        g = _graph(sp.targets.GC200)
        a = create_matmul_input_lhs(g, dtype, (256, 1024), (1024, 512), name="a")
        b = create_matmul_input_rhs(g, dtype, (256, 1024), (1024, 512), name="b")
        prog = P.Sequence()
        c = matmul(g, a, b, prog)
        assert c.shape == (256, 512) and c.is_contiguous()
        eng = sp.Engine(g, [prog], estimate_only=True)
        eng.run(0)
        cycles[dtype] = eng.report.cycles
    assert cycles[sp.float16] < cycles[sp.float32]


def _abs_product(av, bv):
    return np.matmul(np.abs(av).astype(np.float64), np.abs(bv).astype(np.float64))


def test_fast_and_reference_engines_agree_within_the_rounding_bound_on_split_k_and_broadcast_batches():
    g = _graph()
    a, b = _var(g, sp.float32, (3, 1, 19, 70), "a"), _var(g, sp.float32, (2, 70, 23), "b")
    prog = P.Sequence()
    c = matmul(g, a, b, prog)
    av, bv = _values(a.shape, b.shape)
    (fast,), _ = _run(g, prog, {a: av, b: bv}, [c])
    (again,), _ = _run(g, prog, {a: av, b: bv}, [c])
    (ref,), _ = _run(g, prog, {a: av, b: bv}, [c], reference=True)
    assert fast.tobytes() == again.tobytes()
    bound = contraction_bound(_abs_product(av, bv), 70)
    assert np.all(np.abs(fast.astype(np.float64) - ref) <= bound)
    np.testing.assert_allclose(fast, np.matmul(av, bv), rtol=1e-5, atol=1e-5)


def _amp_inputs(rng, v, m, k, n, dtype, shared):
    a = rng.standard_normal((1 if shared == "a" else v, m * k)).astype(dtype)
    b = rng.standard_normal((1 if shared == "b" else v, k * n)).astype(dtype)
    return np.broadcast_to(a, (v, m * k)), np.broadcast_to(b, (v, k * n))


def _blocks(a, b, m, k, n, layout):
    """The logical (v, m, k) and (v, k, n) blocks of AmpMatMul fields, as float64."""
    a3 = a.reshape(-1, k, m).swapaxes(1, 2) if layout & 1 else a.reshape(-1, m, k)
    b3 = b.reshape(-1, n, k).swapaxes(1, 2) if layout & 2 else b.reshape(-1, k, n)
    return a3.astype(np.float64), b3.astype(np.float64)


@pytest.mark.parametrize(("m", "k", "n", "layout"), [
    (64, 64, 24, 0), (29, 70, 16, 0), (134, 96, 32, 0), (40, 48, 40, 1), (33, 17, 9, 2), (300, 128, 80, 0),
])
@pytest.mark.parametrize("shared", ["a", "b", None])
def test_amp_bulk_call_agrees_with_each_vertex_alone_within_the_rounding_bound(m, k, n, layout, shared):
    """A bulk AmpMatMul call may merge the vertices' products into one GEMM (design principle 6):
    each vertex's result is within the written rounding bound of the vertex run alone, as the
    reference engine runs it, and the same bulk call always gives the same bytes."""
    from softipu.codelets.matmul import amp_codelet
    rng = np.random.default_rng(m * k + n)
    v = 24  # enough that the blocks together pass OpenBLAS's small-matrix size
    for in_dtype, partials, accumulate in [(sp.float32, sp.float32, False), (sp.float32, sp.float32, True),
                                           (sp.float16, sp.float32, False), (sp.float16, sp.float16, True)]:
        codelet = amp_codelet(in_dtype, partials, accumulate)
        a, b = _amp_inputs(rng, v, m, k, n, in_dtype.numpy, shared)
        start = rng.standard_normal((v, m * n)).astype(partials.numpy)
        params = {name: np.full((v, 1), x, np.int32) for name, x in (("m", m), ("k", k), ("n", n),
                                                                      ("layout", layout))}
        bulk, again = start.copy(), start.copy()
        codelet.compute(a, b, bulk, **params)
        codelet.compute(a, b, again, **params)
        assert bulk.tobytes() == again.tobytes()
        a3, b3 = _blocks(a, b, m, k, n, layout)
        terms = np.matmul(np.abs(a3), np.abs(b3)).reshape(v, m * n)
        if accumulate:  # the start value is one more term
            terms = terms + np.abs(start.astype(np.float64))
        bound = contraction_bound(terms, k + accumulate, np.float32, partials.numpy)
        for i in range(v):
            alone = start[i:i + 1].copy()
            codelet.compute(a[i:i + 1].copy(), b[i:i + 1].copy(), alone,
                            **{name: x[:1] for name, x in params.items()})
            diff = np.abs(bulk[i:i + 1].astype(np.float64) - alone)
            assert np.all(diff <= bound[i:i + 1]), (in_dtype.name, partials.name, accumulate, i)


def test_reductions_are_one_bulk_call_per_n_block():
    """Partials live in column slabs, so every row of an N block is reduced by one bulk call
    (a BERT attention product: 24 heads of 128 x 128 . 128 x 64, probabilities times values)."""
    g = _graph(sp.targets.GC200)
    a, b = _var(g, sp.float32, (24, 128, 128), "a"), _var(g, sp.float32, (24, 128, 64), "b")
    prog = P.Sequence()
    c = matmul(g, a, b, prog)
    p = plan_matmul(g, sp.float32, a.shape, b.shape)
    assert p.k_split > 1
    eng = sp.Engine(g, [prog], estimate_only=True)
    groups = {cs.compute_set.name: len(cs.groups) for cs in eng.executable.compute_sets.values()}
    widths = len(set(np.minimum(p.blocks[2], p.problem.n - np.arange(0, p.problem.n, p.blocks[2]))))
    assert groups["matmul/reduce"] <= p.n_split * widths
    # AMP calls: one per vertex coordinate outside the dimension with most blocks (x block sizes).
    assert groups["matmul/amp"] <= 2 * p.tiles_used // max(p.splits)
    assert c.shape == (24, 128, 64)


def test_serial_k_chunks_accumulate_correctly():
    g = _graph()
    options = {"availableMemoryProportion": 0.05}
    shape_a, shape_b = (48, 1024), (1024, 40)
    assert plan_matmul(g, sp.float32, shape_a, shape_b, options).k_serial > 1
    a, b = _var(g, sp.float32, shape_a, "a"), _var(g, sp.float32, shape_b, "b")
    prog = P.Sequence()
    c = matmul(g, a, b, prog, options=options)
    av, bv = _values(shape_a, shape_b)
    (got,), _ = _run(g, prog, {a: av, b: bv}, [c])
    np.testing.assert_allclose(got, av @ bv, rtol=1e-5, atol=1e-4)


def test_transposed_operands_work_without_copies_when_blocks_are_columns():
    g = _graph()
    w = _var(g, sp.float32, (40, 24), "w")  # (N, K): B = w.T, one K block
    x = _var(g, sp.float32, (30, 24), "x")
    prog = P.Sequence()
    y = matmul(g, x, w.T, prog)
    assert plan_matmul(g, sp.float32, (30, 24), (24, 40)).k_blocks == 1
    assert not any(isinstance(p, P.Copy) for p in prog.programs)  # both used in place
    xv, wv = _values(x.shape, w.shape)
    (got,), eng = _run(g, prog, {x: xv, w: wv}, [y])
    np.testing.assert_allclose(got, xv @ wv.T, rtol=1e-5, atol=1e-5)


def test_gradients_of_a_batched_matmul_match_torch():
    """dA = dC . B^T and dB = A^T . dC, through transposed and broadcast operands."""
    g = _graph()
    a, b = _var(g, sp.float32, (2, 9, 13), "a"), _var(g, sp.float32, (13, 7), "b")
    dc = _var(g, sp.float32, (2, 9, 7), "dc")
    prog = P.Sequence()
    da = matmul(g, dc, b.T, prog, name="da")
    db = matmul(g, a.transpose(2, 0, 1).reshape(13, 18), dc.reshape(18, 7), prog, name="db")
    rng = np.random.default_rng(3)
    av, bv, dcv = (rng.standard_normal(t.shape).astype(np.float32) for t in (a, b, dc))
    (got_da, got_db), _ = _run(g, prog, {a: av, b: bv, dc: dcv}, [da, db])
    ta, tb = torch.tensor(av, requires_grad=True), torch.tensor(bv, requires_grad=True)
    (ta @ tb).backward(torch.tensor(dcv))
    np.testing.assert_allclose(got_da, ta.grad.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_db, tb.grad.numpy(), rtol=1e-5, atol=1e-5)


def test_swapped_plans_compute_the_same_product():
    g = _graph()
    shape_a, shape_b = (2, 64), (64, 300)
    p = plan_matmul(g, sp.float32, shape_a, shape_b)
    a, b = _var(g, sp.float32, shape_a, "a"), _var(g, sp.float32, shape_b, "b")
    prog = P.Sequence()
    c = matmul(g, a, b, prog)
    av, bv = _values(shape_a, shape_b)
    (got,), _ = _run(g, prog, {a: av, b: bv}, [c])
    np.testing.assert_allclose(got, av @ bv, rtol=1e-5, atol=1e-5)
    assert p.problem.m == 300  # the 2-row product runs with N as the AMP's field


def test_replicas_multiply_their_own_values():
    g = sp.Graph(SMALL, replication_factor=2)
    a, b = _var(g, sp.float32, (37, 130), "a"), _var(g, sp.float32, (130, 29), "b")
    prog = P.Sequence()
    c = matmul(g, a, b, prog)
    rng = np.random.default_rng(5)
    av = rng.standard_normal((2, 37, 130)).astype(np.float32)
    bv = rng.standard_normal((2, 130, 29)).astype(np.float32)
    (got,), _ = _run(g, prog, {a: av, b: bv}, [c])
    assert got.shape == (2, 37, 29)
    np.testing.assert_allclose(got, av @ bv, rtol=1e-5, atol=1e-4)
