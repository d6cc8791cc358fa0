"""A fused map's expression runs as steps, each subexpression once (codelets/elementwise/expr.py
``steps_of`` / ``run_steps``): AdamW's second moment squares ``cast<float32>(g)``, widened once.
Values against numpy written by hand, bit for bit, in place too."""

from __future__ import annotations

import numpy as np

import softipu as sp
from softipu.codelets.elementwise.expr import run_steps, steps_of, typecheck
from softipu.ops.elementwise._expr import E


def _second_moment():
    g = E.cast(E.input(1), sp.float32)
    return typecheck(E.add(E.mul(E.input(0), 0.999), E.mul(E.mul(g, g), 0.001)), (sp.float32, sp.float16))


def test_a_repeated_subexpression_is_one_step_and_the_values_are_numpys():
    steps = steps_of(_second_moment())
    casts = [n for n in steps.nodes if str(n) == "cast<float32>(in1)"]
    assert len(casts) == 1 and len(steps.nodes) == 9  # 11 nodes in the tree, the cast's pair shared
    rng = np.random.default_rng(0)
    v = rng.random(5000).astype(np.float32)
    g = (rng.standard_normal(5000) * 1e-4).astype(np.float16)
    g32 = g.astype(np.float32)
    want = v * np.float32(0.999) + (g32 * g32) * np.float32(0.001)
    out = np.empty_like(v)
    run_steps(steps, [v, g], out)
    assert np.array_equal(out, want)
    run_steps(steps, [v, g], v)  # in place: the root writes the operand it reads, last
    assert np.array_equal(v, want)


def test_steps_drop_values_after_their_last_use():
    steps = steps_of(_second_moment())
    used_later = [{p for pos in steps.args[i + 1:] for p in pos} for i in range(len(steps.nodes))]
    for i, dropped in enumerate(steps.drop):
        assert all(p in steps.args[i] and p not in used_later[i] for p in dropped)
    assert sorted(p for d in steps.drop for p in d) == list(range(len(steps.nodes) - 1))
