"""Issue 19: layer norm of rows cut across tiles, normalised where the pieces live (popnn's layout:
popops reductions over the activations' own mapping, channel ops in place)."""

from __future__ import annotations

import numpy as np
import torch

import softipu as sp
from softipu import program as P
from softipu.codelets import nn as C
from softipu.ops import nn


def test_apply_and_finish_cycles_by_hand() -> None:
    # LayerNormApply: poplin normWhiten (addToChannel, channelMul) + normalise (channelMul,
    # addToChannel): 4 passes of 3 cycles per 64-bit vector in the activations' type. 1,024 halves
    # = 256 vectors: 30 (vertex) + 20 (row) + 256 x 4 x 3 = 3,122.
    apply = C.layer_norm_apply_codelet(sp.float16, sp.float16)
    one, n = np.array([1]), np.array([1024])
    assert int(apply.cycles(n, one, one, n, n, n, sp.targets.GC200)[0]) == 3122
    # RowMomentsFinish of a row in 4 pieces (8 partials): 30 + 20 + 4 accumulates + 10 (divide)
    # + 8 (rsqrt) = 72.
    finish = C.RowMomentsFinish.cycles(np.array([8]), one, one, one, np.array([64.0]), np.array([1e-5]),
                                       sp.targets.GC200)
    assert int(np.asarray(finish).reshape(-1)[0]) == 72


def _vit_like(affine: bool):
    # x (B, S, n) = (4, 2, 128) halves laid out as ViT-B/16's residual stream is: each tile holds
    # one token's slab of 16 columns across the batch, stored together (a (S, n / 16, B, 16)
    # variable, 64 halves a tile): tile t holds x[b, t // 8, 16 (t % 8) : 16 (t % 8) + 16] for
    # every b, 4 pieces of 16 columns, so each row has 8 runs.
    g = sp.Graph(sp.targets.ipu_model(tiles=16, bytes_per_tile=64 * 1024))
    b_, s_, n = 4, 2, 128
    stored = g.add_variable(sp.float16, (s_, n // 16, b_, 16), name="stored")
    sp.ops.map_linearly(g, stored, grain_size=64)
    x = stored.transpose(2, 0, 1, 3).reshape(b_, s_, n)
    rng = np.random.default_rng(0)
    values = {x: (rng.standard_normal((b_, s_, n)) * 3 + 5).astype(np.float16)}
    w = bias = None
    if affine:  # weight and bias 8 halves a tile
        w, bias = (g.add_variable(sp.float16, (n,), name=k) for k in ("w", "b"))
        for t in (w, bias):
            sp.ops.map_linearly(g, t, grain_size=4)
            values[t] = rng.standard_normal(n).astype(np.float16)
    prog = P.Sequence()
    y, mean, inv_std = nn.layer_norm(g, x, w, bias, prog, name="ln")
    eng = sp.Engine(g, [prog])
    for t, v in values.items():
        eng.write_tensor(t, v)
    eng.run(0)
    f32 = {t: torch.tensor(v, dtype=torch.float32) for t, v in values.items()}
    want = torch.nn.functional.layer_norm(f32[x], (n,), f32.get(w), f32.get(bias), eps=1e-5).numpy()
    np.testing.assert_allclose(eng.read_tensor(y).astype(np.float32), want, atol=1e-2, rtol=1e-2)
    np.testing.assert_allclose(eng.read_tensor(mean), f32[x].mean(-1).numpy(), rtol=1e-5)
    np.testing.assert_allclose(eng.read_tensor(inv_std), (1 / f32[x].std(-1, correction=0)).numpy(),
                               rtol=1e-4)
    return eng


def _recv_max(eng, name: str) -> int:
    steps = [s for s in eng.executable.steps if s.name == name]
    assert steps, name
    return max(int(s.recv_tile_bytes.max(initial=0)) for s in steps)


def test_pieces_are_normalised_where_they_live() -> None:
    # Each of the 8 rows is cut in 8 pieces of 16 columns on 8 tiles (more than 4 runs a row:
    # _rows_scattered). Moments: x is read where it lives; a tile receives at most its 4 rows'
    # shift (the first pass reads a zero vector spread over the tiles, the second the rows'
    # means on their home tiles): 4 x 4 B = 16 B.
    # Apply: row r's statistics live on its home tile (the tile of its middle piece, 8 s + 4);
    # a tile receives its 4 rows' mean and 1/std, 4 x 8 = 32 B, and the weight and bias of its
    # 16 columns, one region of each, 16 x 2 x 2 = 64 B, from the 2 tiles holding them: 96 B on
    # a tile that is no row's home and holds none of its columns' weights (tile 1, for one).
    # Whole-row vertices gathered 112 of each row's 128 halves onto one tile (224 B a row).
    eng = _vit_like(affine=True)
    assert _recv_max(eng, "ln/moments") <= 16
    assert _recv_max(eng, "ln/centred_moments") <= 16
    assert _recv_max(eng, "ln/apply") == 96
    # The affine is applied in the same vertices: no separate weight and bias compute sets.
    names = [s.name for s in eng.executable.steps]
    assert not any(k.startswith(("ln/weight", "ln/bias")) for k in names), names


def test_pieces_without_affine_match_torch() -> None:
    eng = _vit_like(affine=False)
    assert _recv_max(eng, "ln/apply") <= 96
