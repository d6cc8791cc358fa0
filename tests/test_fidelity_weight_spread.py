"""Issue 19: a matmul operand block is spread over the tiles that read it in pieces of at least
poplin's minimum per tile (lib/poplin/Convolution.cpp, mapActivationsOrWeights: 128 B of
activations, 256 B of weights, "to reduce the amount of exchange code")."""

from __future__ import annotations

import numpy as np

import softipu as sp
from softipu import program as P
from softipu.ops.matmul import plan_matmul

T = sp.targets.ipu_model(tiles=16, bytes_per_tile=256 * 1024)


def test_small_weight_block_sits_on_fewer_users_by_hand():
    """(1024 x 32) . (32 x 8) fp16 on 16 tiles: M split 16 ways, so the one B block (32 x 8 = 256
    elements, 512 B) is read by all 16 tiles. Cut evenly it was 16 pieces of 16 elements (32 B);
    with pieces of at least 256 B = 128 elements it is 2 pieces, on the first two users (tiles 0
    and 1: the M block varies fastest), and each other tile receives 2 regions of it, not 15."""
    pl = plan_matmul(T, sp.float16, (1024, 32), (32, 8))
    assert pl.splits == (1, 16, 1, 1) and pl.pair == "m"
    g = sp.Graph(T)
    a = g.add_variable(sp.float16, (1024, 32), name="a")
    sp.ops.map_linearly(g, a)
    b = sp.ops.create_matmul_input_rhs(g, sp.float16, (1024, 32), (32, 8), name="b")
    mapping = g.get_tile_mapping(b)
    held = {t: sum(e - s for s, e in iv) for t, iv in enumerate(mapping) if iv}
    assert held == {0: 128, 1: 128}
    prog = P.Sequence()
    c = sp.ops.matmul(g, a, b, prog)
    eng = sp.Engine(g, [prog])
    rng = np.random.default_rng(2)
    av = rng.standard_normal((1024, 32)).astype(np.float16)
    bv = rng.standard_normal((32, 8)).astype(np.float16)
    eng.write_tensor(a, av)
    eng.write_tensor(b, bv)
    eng.run(0)
    np.testing.assert_allclose(eng.read_tensor(c).astype(np.float64), av.astype(np.float64) @ bv,
                               rtol=2e-2, atol=5e-2)
