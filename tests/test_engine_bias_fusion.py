"""A matmul chain runs the bias add right after it (engine/epilogues.py): the same bits as the add
run as its own compute set, equal to numpy's float32 add of the product and the bias, and only
for a bias add that comes right after the chain."""

from __future__ import annotations

import numpy as np
import pytest

import softipu as sp
from softipu import program as P
from softipu.codelets._common import contraction_bound
from softipu.engine import epilogues

TARGET = sp.targets.ipu_model(tiles=16, bytes_per_tile=256 * 1024)
F32 = sp.float32


def _linear(m, k, n, bias_shape, between=False, target=TARGET):
    """``c = a @ w`` and ``y = c + bias`` (``between``: another op runs between the two)."""
    g = sp.Graph(target)
    a = g.add_variable(F32, (m, k), name="a")
    w = g.add_variable(F32, (k, n), name="w")
    bias = g.add_variable(F32, bias_shape, name="bias")
    for t in (a, w, bias):
        sp.ops.map_linearly(g, t)
    prog = P.Sequence()
    c = sp.ops.matmul(g, a, w, prog)
    other = sp.ops.mul(g, a, 2.0, prog) if between else None
    y = sp.ops.add(g, c, bias, prog)
    return g, prog, (a, w, bias), c, y, other


def _run(g, prog, tensors, values, outs, reference=False):
    eng = sp.Engine(g, [prog], {"engine.reference": reference, "debug.allowOutOfMemory": True})
    for _ in range(2):  # the chain is built on the first run; the second runs it as built
        for t, v in zip(tensors, values, strict=True):
            eng.write_tensor(t, v)
        eng.run(0)
    return eng, [eng.read_tensor(o) for o in outs]


def _values(m, k, n, bias_shape):
    rng = np.random.default_rng(3)
    return [rng.standard_normal(s).astype(np.float32) for s in ((m, k), (k, n), bias_shape)]


def _taken(eng):
    return [r.bias is not None for r in eng._interpreter._chains.fused()]


@pytest.mark.parametrize(("m", "k", "n", "bias_shape"), [(128, 128, 384, (384,)), (96, 64, 80, (96, 1)),
                                                         (128, 512, 128, (128,)), (384, 128, 128, (128,))])
def test_a_bias_add_run_by_the_chain_gives_the_same_bits_as_its_own_compute_set(monkeypatch, m, k, n,
                                                                                 bias_shape):
    """A bias along the rows (a Linear's) or down the columns, a vertex's block one row of the
    product or (last shape) four: the chain takes the add, whose step
    then does nothing; the result is numpy's float32 ``c + bias`` of the product the chain wrote,
    bit for bit, and the same bits as with the fusion off (the add its own compute set). The
    product itself is within the contraction bound of the reference."""
    g, prog, tensors, c, y, _ = _linear(m, k, n, bias_shape)
    values = _values(m, k, n, bias_shape)
    eng, (cv, yv) = _run(g, prog, tensors, values, [c, y])
    assert _taken(eng) == [True]
    np.testing.assert_array_equal(yv.view(np.uint32), (cv + values[2]).view(np.uint32))
    monkeypatch.setattr(epilogues, "FUSE_BIAS", False)
    eng_off, (cv_off, yv_off) = _run(g, prog, tensors, values, [c, y])
    assert _taken(eng_off) == [False]
    np.testing.assert_array_equal(cv_off.view(np.uint32), cv.view(np.uint32))
    np.testing.assert_array_equal(yv_off.view(np.uint32), yv.view(np.uint32))
    _, (cref, yref) = _run(g, prog, tensors, values, [c, y], reference=True)
    terms = np.abs(values[0].astype(np.float64)) @ np.abs(values[1].astype(np.float64))
    assert np.all(np.abs(cv.astype(np.float64) - cref) <= contraction_bound(terms, k))
    np.testing.assert_array_equal(yref.view(np.uint32), (cref + values[2]).view(np.uint32))


def test_an_add_not_right_after_the_chain_runs_as_its_own_compute_set():
    """An op between the matmul and its bias add: the add is not the chain's (nothing may run
    between them), so it runs as usual; the results are still numpy's."""
    m, k, n = 96, 64, 80
    g, prog, tensors, c, y, other = _linear(m, k, n, (n,), between=True)
    values = _values(m, k, n, (n,))
    eng, (cv, yv, ov) = _run(g, prog, tensors, values, [c, y, other])
    assert _taken(eng) == [False]
    assert eng._interpreter._chains.biases == {}
    np.testing.assert_array_equal(yv.view(np.uint32), (cv + values[2]).view(np.uint32))
    np.testing.assert_array_equal(ov, values[0] * np.float32(2.0))


def test_a_product_scaled_not_added_is_no_bias_add():
    """``c * bias`` right after the chain is another codelet: not taken."""
    m, k, n = 96, 64, 80
    g = sp.Graph(TARGET)
    a, w, bias = (g.add_variable(F32, s) for s in ((m, k), (k, n), (n,)))
    for t in (a, w, bias):
        sp.ops.map_linearly(g, t)
    prog = P.Sequence()
    c = sp.ops.matmul(g, a, w, prog)
    y = sp.ops.mul(g, c, bias, prog)
    values = _values(m, k, n, (n,))
    eng, (cv, yv) = _run(g, prog, (a, w, bias), values, [c, y])
    assert _taken(eng) == [False]
    np.testing.assert_array_equal(yv.view(np.uint32), (cv * values[2]).view(np.uint32))


def test_an_add_of_a_product_laid_out_in_slabs_runs_as_its_own_compute_set():
    """On 8 tiles the product's vertex fields are slab pieces, not one strided view each: the add
    is not taken (its compute set gathers them); the results are still numpy's."""
    m, k, n = 96, 64, 80
    g, prog, tensors, c, y, _ = _linear(m, k, n, (n,), target=sp.targets.ipu_model(tiles=8, bytes_per_tile=128 * 1024))
    values = _values(m, k, n, (n,))
    eng, (cv, yv) = _run(g, prog, tensors, values, [c, y])
    assert _taken(eng) == [False]
    np.testing.assert_array_equal(yv.view(np.uint32), (cv + values[2]).view(np.uint32))
