"""A matmul chain keeps gathered the weight it reads on the left of its GEMM (a plan computing
``out^T = W^T x^T``, as the demo encoder's QKV and FFN-up products do), not only on the right:
a later call then gathers only the activations. Oracle: numpy's product on every call."""

from __future__ import annotations

import numpy as np

import softipu as sp
from softipu import program as P
from softipu.ops.elementwise import E, map_


def test_a_weight_on_the_left_of_the_gemm_is_kept_and_gathered_again_after_a_host_write():
    g = sp.Graph(sp.targets.ipu_model(tiles=16, bytes_per_tile=256 * 1024))
    prog = P.Sequence()
    x = sp.ops.create_matmul_input_lhs(g, sp.float32, (64, 96), (96, 80), name="x")
    w = sp.ops.create_matmul_input_rhs(g, sp.float32, (64, 96), (96, 80), name="w")
    map_(g, E.mul(E.input(0), 2.0), [x], prog)  # the program writes x: only w is a constant
    c = sp.ops.matmul(g, x, w, prog)
    eng = sp.Engine(g, [prog])
    rng = np.random.default_rng(7)
    xv, wv = rng.standard_normal(x.shape, np.float32), rng.standard_normal(w.shape, np.float32)
    eng.write_tensor(x, xv)
    eng.write_tensor(w, wv)
    eng.run(0)
    (runner,) = eng._interpreter._chains.fused()
    assert runner.bands[0].sizes == (80, 96, 64)  # the plan's product is w^T x^T: w on the left
    assert runner.kept, "the weight on the left was not kept"
    np.testing.assert_allclose(eng.read_tensor(c), (2 * xv) @ wv, rtol=1e-5, atol=1e-4)
    eng.run(0)
    np.testing.assert_allclose(eng.read_tensor(c), (4 * xv) @ wv, rtol=1e-5, atol=1e-4)
    eng.write_tensor(w, -wv)
    eng.run(0)
    np.testing.assert_allclose(eng.read_tensor(c), (8 * xv) @ -wv, rtol=1e-5, atol=1e-4)
