"""Later-call speed items that must not change values: elementwise ops on a convolution's output
(stored channels innermost) keep its layout, and the column-major multi-slice's flat take equals
a per-vertex lookup. Oracles: numpy written out directly."""

from __future__ import annotations

import numpy as np
import pytest

import softipu as sp
from softipu import program as P
from softipu.codelets.indexing import _column_take
from softipu.ops.elementwise import E, map


def _nhwc(g, shape):
    n, c, h, w = shape
    var = g.add_variable(sp.float32, (n, h, w, c), name="x")
    sp.ops.map_linearly(g, var)
    return var.transpose(0, 3, 1, 2)


@pytest.mark.parametrize("reference", [False, True])
def test_bias_add_and_relu_on_channels_innermost_input_keep_the_layout_and_equal_numpy(reference):
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    x = _nhwc(g, (2, 8, 5, 3))
    bias = g.add_variable(sp.float32, (8, 1, 1), name="bias")
    sp.ops.map_linearly(g, bias)
    prog = P.Sequence()
    y = map(g, E.add(E.input(0), E.input(1)), [x, bias], prog)
    z = map(g, E.relu(E.input(0)), [y], prog)
    for t in (y, z):  # channels innermost, as the input: the next convolution reads it in place
        assert t.transpose(0, 2, 3, 1).flatten().is_strided
    rng = np.random.default_rng(0)
    xv, bv = rng.standard_normal(x.shape, np.float32), rng.standard_normal(bias.shape, np.float32)
    eng = sp.Engine(g, [prog], options={"engine.reference": reference})
    eng.write_tensor(x, xv)
    eng.write_tensor(bias, bv)
    eng.run(0)
    np.testing.assert_array_equal(eng.read_tensor(y), xv + bv)
    np.testing.assert_array_equal(eng.read_tensor(z), np.maximum(xv + bv, 0))


def test_row_major_input_keeps_a_row_major_result():
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    x = g.add_variable(sp.float32, (2, 8, 5, 3), name="x")
    sp.ops.map_linearly(g, x)
    y = map(g, E.neg(E.input(0)), [x], P.Sequence())
    assert y.is_strided and y.strides == (120, 15, 3, 1)


@pytest.mark.parametrize("lead", [(6,), (2, 3)])
def test_column_take_equals_a_lookup_per_vertex(lead):
    rng = np.random.default_rng(1)
    width, rows, n = 3, 7, 5
    table = rng.standard_normal(lead + (width * rows,)).astype(np.float32)
    safe = rng.integers(0, rows, lead + (n,))
    want = np.empty(lead + (width, n), np.float32)
    for v in np.ndindex(*lead):
        block = table[v].reshape(width, rows)
        want[v] = block[:, safe[v]]
    np.testing.assert_array_equal(_column_take(table, safe, width, rows), want)
    strided = np.repeat(table, 2, axis=-1)[..., ::2]  # not contiguous: the take_along_axis path
    np.testing.assert_array_equal(_column_take(strided, safe, width, rows), want)


def _kept_runners(eng):
    return [r for r in eng._interpreter._chains.fused() if r.kept]


def test_weights_only_the_host_writes_stay_gathered_and_are_gathered_again_after_a_write():
    """A matmul's right-hand blocks (laid out for the matmul, so gathered for the GEMM) that no
    program writes are kept gathered between calls; a host write makes the next call gather them
    again. Oracle: numpy's product."""
    g = sp.Graph(sp.targets.ipu_model(tiles=16, bytes_per_tile=256 * 1024))
    prog = P.Sequence()
    a = sp.ops.create_matmul_input_lhs(g, sp.float32, (64, 96), (96, 80), name="a")
    b = sp.ops.create_matmul_input_rhs(g, sp.float32, (64, 96), (96, 80), name="b")
    c = sp.ops.matmul(g, a, b, prog)
    rng = np.random.default_rng(4)
    av, bv = rng.standard_normal(a.shape, np.float32), rng.standard_normal(b.shape, np.float32)
    eng = sp.Engine(g, [prog])
    eng.write_tensor(a, av)
    eng.write_tensor(b, bv)
    eng.run(0)
    assert _kept_runners(eng), "the weights were not kept"
    np.testing.assert_allclose(eng.read_tensor(c), av @ bv, rtol=1e-5, atol=1e-4)
    eng.write_tensor(a, 2 * av)
    eng.run(0)
    np.testing.assert_allclose(eng.read_tensor(c), 2 * av @ bv, rtol=1e-5, atol=1e-4)
    eng.write_tensor(b, -bv)
    eng.run(0)
    np.testing.assert_allclose(eng.read_tensor(c), -2 * av @ bv, rtol=1e-5, atol=1e-4)


def test_weights_a_program_updates_are_gathered_every_call():
    """The same matmul with both operands updated in place after it (an optimizer step; the
    chain may take either as its right-hand side): nothing is kept, and every call's product uses
    the operands as they are then."""
    g = sp.Graph(sp.targets.ipu_model(tiles=16, bytes_per_tile=256 * 1024))
    prog = P.Sequence()
    a = sp.ops.create_matmul_input_lhs(g, sp.float32, (64, 96), (96, 80), name="a")
    b = sp.ops.create_matmul_input_rhs(g, sp.float32, (64, 96), (96, 80), name="b")
    c = sp.ops.matmul(g, a, b, prog)
    map_ = sp.ops.elementwise.map_
    map_(g, E.add(E.input(0), 1.0), [b], prog)
    map_(g, E.mul(E.input(0), 2.0), [a], prog)
    rng = np.random.default_rng(5)
    av, bv = rng.standard_normal(a.shape, np.float32), rng.standard_normal(b.shape, np.float32)
    eng = sp.Engine(g, [prog])
    eng.write_tensor(a, av)
    eng.write_tensor(b, bv)
    for step in range(3):
        eng.run(0)
        np.testing.assert_allclose(eng.read_tensor(c), (av * 2**step) @ (bv + step), rtol=1e-5, atol=1e-3)
    assert not _kept_runners(eng)


def test_kept_weights_are_gathered_again_after_a_stream_loads_new_ones():
    """Weights loaded by a host-to-device stream program (a session's weightsFromHost), then used
    by a matmul program: the product follows every load. Oracle: numpy's product."""
    g = sp.Graph(sp.targets.ipu_model(tiles=16, bytes_per_tile=256 * 1024))
    a = sp.ops.create_matmul_input_lhs(g, sp.float32, (64, 96), (96, 80), name="a")
    b = sp.ops.create_matmul_input_rhs(g, sp.float32, (64, 96), (96, 80), name="b")
    feeds = [g.add_host_to_device_fifo(n, sp.float32, t.numel) for n, t in (("fa", a), ("fb", b))]
    load = P.Sequence([P.Copy(feeds[0], a), P.Copy(feeds[1], b)])
    prog = P.Sequence()
    c = sp.ops.matmul(g, a, b, prog)
    eng = sp.Engine(g, [prog, load])
    rng = np.random.default_rng(6)
    for _ in range(2):
        av, bv = rng.standard_normal(a.shape, np.float32), rng.standard_normal(b.shape, np.float32)
        eng.connect_stream("fa", av.reshape(-1))
        eng.connect_stream("fb", bv.reshape(-1))
        eng.run(1)
        for _ in range(2):
            eng.run(0)
            np.testing.assert_allclose(eng.read_tensor(c), av @ bv, rtol=1e-5, atol=1e-4)
    assert _kept_runners(eng)
