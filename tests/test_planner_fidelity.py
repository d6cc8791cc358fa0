"""The matmul cost terms issue 10 added, checked against figures worked out by hand from poplibs'
formulas (see tests/test_costs_golden.py for the estimators themselves): what the compiled program
charges for an accumulating K chunk, and the rearrangement a plan reports for operands that arrive
in another layout."""

from __future__ import annotations

import softipu as sp
from softipu import program as P
from softipu.codelets.matmul import amp_codelet
from softipu.ops.matmul import matmul_plan_report, plan_matmul

F32 = sp.float32


def _amp_step_cycles(accumulate: bool) -> int:
    g = sp.Graph(sp.targets.ipu_model(tiles=2))
    a, b, c = (g.add_variable(F32, (n,), name=name) for name, n in (("a", 12 * 16), ("b", 16 * 8),
                                                                    ("c", 12 * 8)))
    for t in (a, b, c):
        g.set_tile_mapping(t, 0)
    cs = g.add_compute_set("amp")
    g.add_vertex(cs, amp_codelet(F32, F32, accumulate), {"a": a, "b": b, "out": c, "m": 12, "k": 16,
                                                         "n": 8, "layout": 0}, tile=0)
    eng = sp.Engine(g, [P.Execute(cs)], estimate_only=True)
    eng.run(0)
    return next(s for s in eng.report.steps if s["kind"] == "compute")["compute_cycles"]


def test_the_compiled_accumulating_chunk_pays_the_in_place_add():
    # (12 x 16) . (16 x 8) fp32, one vertex on one tile. The zeroing product: n_in = n_out = 1,
    # loads 64, 2 rows per worker: 46 + (2 + 4 x 2) = 56 -> inner max(336, 336 + 14) = 350;
    # 50 + 12 + 11 + (19 + 7 + 64 + 350) = 513. The accumulating vertex adds its 96 partials in
    # place (BinaryOp1DInPlace<ADD, float>): 16 per worker = 8 pairs x 3 = 24; 6 x (58 + 24) + 11
    # = 503 more. The step around the vertex costs the same either way.
    zeroing, accumulating = _amp_step_cycles(False), _amp_step_cycles(True)
    assert accumulating - zeroing == 503
    assert zeroing >= 513


def test_a_skinny_plan_reports_the_rearrangement_of_its_operands():
    # 4096 x 4096 . 4096 x 16 fp32 on a GC200: moving A (64 MiB) into the plan's layout costs about
    # as much as the product (2 x 16 flops per element of A): the efficiency from another layout
    # is well under half the made-for-the-plan one. Per tile over 1472 tiles: A 45,591 B ->
    # 45,591 x 5 / 16 + 45,591 / 4 = 14,248 + 11,398 cycles (tests/test_costs_golden.py).
    p = plan_matmul(sp.targets.GC200, F32, (4096, 4096), (4096, 16))
    assert p.rearrange_cycles > p.cycles  # 25,747 > 22,051 with today's plan (1472 tiles)
    assert p.efficiency_rearranged < 0.6 * p.efficiency
    flops = 2 * 4096 * 4096 * 16
    assert abs(p.efficiency_rearranged - flops / ((p.cycles + p.rearrange_cycles) * 47_104)) < 1e-12
    text = matmul_plan_report(sp.targets.GC200, F32, (4096, 4096), (4096, 16))
    assert "operands from another layout" in text
