"""Issue 19 / issue 12: norms as popnn runs them — batch norm's cost in the activations' type, and
layer-norm rows too long for one vertex split across tiles."""

from __future__ import annotations

import numpy as np
import torch

import softipu as sp
from softipu import program as P
from softipu.codelets import nn as C
from softipu.ops import nn


def _apply_cycles(dtype) -> int:
    codelet = C.batch_norm_apply_codelet(dtype, sp.float32, dtype)
    n, cb = np.array([1024]), np.array([4])
    return int(codelet.cycles(n, cb, cb, cb, cb, n, np.array([1e-5]), sp.targets.GC200)[0])


def test_batch_norm_apply_costs_two_passes_in_the_activation_type() -> None:
    # popnn batchNormalise -> poplin::normalise: popops mul, then addInPlace, per channel, in the
    # activations' type (4 halves or 2 floats per 64-bit vector). 1,024 elements in 4 channels:
    # 30 (vertex) + 4 x (20 row + 8 rsqrt + 2 x 3) + vectors x 2 x 3:
    # half 1024 / 4 = 256 vectors -> 30 + 136 + 1,536 = 1,702; float 512 -> 30 + 136 + 3,072 = 3,238.
    assert _apply_cycles(sp.float16) == 1702
    assert _apply_cycles(sp.float32) == 3238
    assert _apply_cycles(sp.float16) < _apply_cycles(sp.float32)


def _layer_norm(shape, affine: bool):
    g = sp.Graph(sp.targets.ipu_model(tiles=16, bytes_per_tile=256 * 1024))
    x = g.add_variable(sp.float16, shape, name="x")
    sp.ops.map_linearly(g, x)
    w = b = None
    rng = np.random.default_rng(0)
    values = {x: (rng.standard_normal(shape) * 3 + 5).astype(np.float16)}
    if affine:
        w, b = (g.add_variable(sp.float16, shape[1:], name=n) for n in ("w", "b"))
        for t in (w, b):
            sp.ops.map_linearly(g, t)
            values[t] = rng.standard_normal(shape[1:]).astype(np.float16)
    prog = P.Sequence()
    y, mean, inv_std = nn.layer_norm(g, x, w, b, prog, normalized_shape=shape[1:])
    eng = sp.Engine(g, [prog])
    for t, v in values.items():
        eng.write_tensor(t, v)
    eng.run(0)
    f32 = {t: torch.tensor(v, dtype=torch.float32) for t, v in values.items()}
    want = torch.nn.functional.layer_norm(f32[x], shape[1:], f32.get(w), f32.get(b))
    xs = f32[x].reshape(shape[0], -1)
    return eng, (y, mean, inv_std), (want.numpy(), xs.mean(1).numpy(), (1 / xs.std(1, correction=0)).numpy())


def test_layer_norm_rows_longer_than_a_vertex_split_across_tiles() -> None:
    # A row of 20 x 30 x 40 = 24,000 halves (48,000 B) is longer than a row vertex takes
    # (ROW_VERTEX_ELEMENTS = 16,384): whole rows put the row, its output and a gathered unit weight
    # and zero bias (4 x 48,000 B) on one tile. Split, no tile holds a whole row.
    for affine in (False, True):
        eng, (y, mean, inv_std), (want, want_mean, want_inv) = _layer_norm((2, 20, 30, 40), affine)
        np.testing.assert_allclose(eng.read_tensor(y).astype(np.float32), want, atol=1e-2, rtol=1e-2)
        np.testing.assert_allclose(eng.read_tensor(mean), want_mean, rtol=1e-5)
        np.testing.assert_allclose(eng.read_tensor(inv_std), want_inv, rtol=1e-4)
        assert eng.report.fit()["worst_tile_bytes"] < 24_000 * 2


def test_layer_norm_of_rows_stored_column_major_is_regrouped_into_whole_rows() -> None:
    # A (rows, n) = (96, 64) input stored transposed (an embedding lookup keeps its table's column
    # blocks): each of 16 tiles holds 4 whole columns, every row has one element per column, so 64
    # runs a row. Read in place, every row's statistics gather a partial from every column's tile.
    # popnn regroups the activations before the statistics (GroupNorm.cpp groupNormStatistics:
    # poplin::regroupIfBeneficial): here into whole rows (ops/regroup.py), 24 blocks of 16 x 16,
    # 2 a tile (1,024 B of halves at most received), then 6 whole rows a tile (768 B); the row
    # vertices then receive only the shared unit weight and zero bias (2 x 64 halves, 256 B).
    rows, n = 96, 64
    g = sp.Graph(sp.targets.ipu_model(tiles=16, bytes_per_tile=256 * 1024))
    stored = g.add_variable(sp.float16, (n, rows), name="stored")
    sp.ops.map_linearly(g, stored, grain_size=rows)
    x = stored.transpose(1, 0)
    prog = P.Sequence()
    y, mean, inv_std = nn.layer_norm(g, x, None, None, prog, name="ln")
    eng = sp.Engine(g, [prog])
    rng = np.random.default_rng(1)
    v = (rng.standard_normal((rows, n)) * 2 + 3).astype(np.float16)
    eng.write_tensor(x, v)
    eng.run(0)
    f32 = torch.tensor(v, dtype=torch.float32)
    want = torch.nn.functional.layer_norm(f32, (n,)).numpy()
    np.testing.assert_allclose(eng.read_tensor(y).astype(np.float32), want, atol=1e-2, rtol=1e-2)
    np.testing.assert_allclose(eng.read_tensor(mean), f32.mean(1).numpy(), rtol=1e-5)
    np.testing.assert_allclose(eng.read_tensor(inv_std), (1 / f32.std(1, correction=0)).numpy(), rtol=1e-4)
    recv = {s.name: int(s.recv_tile_bytes.max(initial=0)) for s in eng.executable.steps}
    assert not any("apply" in k or "cross_tile" in k for k in recv), recv
    assert recv["ln"] == 2 * n * 2, recv
    gather = [v for k, v in recv.items() if k.startswith("Copy stored")]
    rows_copy = [v for k, v in recv.items() if k.startswith("Copy ln/x/rows/regrouped")]
    assert gather == [2 * 16 * 16 * 2] and rows_copy == [6 * n * 2], recv
