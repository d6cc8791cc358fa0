"""A batched chain's operand gathers (engine/chain_run.py ``_stacked``): the k-th gather of every
alike band as one copy with the bands leading, where the bands' blocks step evenly (attention's
heads: the demo encoder's 24 copies a chain as 3). Copies: the products' bits do not change."""

from __future__ import annotations

import numpy as np

import softipu as sp
from softipu import program as P
from softipu.engine import chain_run

HEADS, M, K, N = 6, 16, 24, 20


def _heads(runs: int = 2):
    """``c = q @ kt`` per head, ``q`` and ``kt`` copied in by the program (attention's operands:
    gathered every run, not kept), on the fast engine; the outputs of each run."""
    g = sp.Graph(sp.targets.ipu_model(tiles=8, bytes_per_tile=128 * 1024))
    prog = P.Sequence()
    ends = []
    for name, shape in (("q", (HEADS, M, K)), ("kt", (HEADS, K, N))):
        h, t = g.add_variable(sp.float32, shape, name=name + "0"), g.add_variable(sp.float32, shape, name=name)
        for x in (h, t):
            sp.ops.map_linearly(g, x)
        prog.add(P.Copy(h, t))
        ends.append((h, t))
    c = sp.ops.matmul(g, ends[0][1], ends[1][1], prog)
    eng = sp.Engine(g, [prog], {"engine.reference": False})
    rng = np.random.default_rng(3)
    av = rng.standard_normal((HEADS, M, K), np.float32)
    bv = rng.standard_normal((HEADS, K, N), np.float32)
    outs = []
    for _ in range(runs):
        eng.write_tensor(ends[0][0], av)
        eng.write_tensor(ends[1][0], bv)
        eng.run(0)
        outs.append(eng.read_tensor(c))
    return eng, outs, av, bv


def _rounds(monkeypatch) -> list[int]:
    """The number of gather pairs each copy round is built from."""
    sizes: list[int] = []
    real = chain_run._copy_round
    monkeypatch.setattr(chain_run, "_copy_round", lambda copies: (sizes.append(len(copies)), real(copies))[1])
    return sizes


def test_heads_gathered_in_one_copy_per_block_shape_same_bits(monkeypatch):
    sizes = _rounds(monkeypatch)
    eng, (first, second), av, bv = _heads()
    (runner,) = eng._interpreter._chains.fused()
    batched = [p for p in runner.plans if p[0] is not None]
    assert len(runner.bands) >= HEADS and len(runner.plans) < len(runner.bands)
    assert len(sizes) == len(batched) and max(sizes) <= 4  # per band: a few pairs, not HEADS times that
    np.testing.assert_allclose(first, np.matmul(av.astype(np.float64), bv), rtol=1e-4, atol=1e-4)
    assert first.tobytes() == second.tobytes()
    # one copy per band, as before: the same bits
    monkeypatch.setattr(chain_run, "_stacked", lambda per_band: [p for pairs in per_band for p in pairs])
    _, (alone, _), _, _ = _heads()
    assert alone.tobytes() == first.tobytes()
    assert max(sizes[len(batched):]) >= HEADS


def test_stacked_only_where_the_bands_step_evenly():
    src = np.arange(400, dtype=np.float32)
    dst = np.zeros((3, 4, 5), np.float32)

    def band(i: int, start: int):
        return [(dst[i, :, :2], np.lib.stride_tricks.as_strided(src[start:], (4, 2), (20, 4)))]

    (pair,) = chain_run._stacked([band(i, 7 + 50 * i) for i in range(3)])  # starts 7, 57, 107
    assert pair[0].shape == (3, 4, 2) and pair[1].shape == (3, 4, 2) and not pair[1].flags.writeable
    np.copyto(*pair)
    want = np.stack([src[7 + 50 * i:][:20].reshape(4, 5)[:, :2] for i in range(3)])
    assert np.array_equal(dst[:, :, :2], want) and not dst[:, :, 2:].any()
    uneven = chain_run._stacked([band(0, 7), band(1, 57), band(2, 108)])  # 50 then 51 apart
    assert len(uneven) == 3 and all(d.shape == (4, 2) for d, _ in uneven)
