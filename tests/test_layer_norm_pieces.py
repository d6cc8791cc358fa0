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


def _long_rows(affine: bool):
    # x (2, 24,576) halves mapped linearly over 16 tiles, 3,072 a tile: each row lies on 8 tiles,
    # longer than a row vertex takes (ROW_VERTEX_ELEMENTS = 16,384).
    g = sp.Graph(sp.targets.ipu_model(tiles=16, bytes_per_tile=128 * 1024))
    rows, n = 2, 24_576
    x = g.add_variable(sp.float16, (rows, n), name="x")
    sp.ops.map_linearly(g, x)
    rng = np.random.default_rng(0)
    values = {x: (rng.standard_normal((rows, n)) * 3 + 5).astype(np.float16)}
    w = bias = None
    if affine:  # weight and bias mapped linearly: 1,536 halves a tile
        w, bias = (g.add_variable(sp.float16, (n,), name=k) for k in ("w", "b"))
        for t in (w, bias):
            sp.ops.map_linearly(g, t)
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
    # Pieces: each tile's 3,072 halves of a row, cut in 6 of 512 (a worker's share: 49,152 /
    # (16 x 6)). Moments read x where it lives; a tile receives at most its row's shift (4 B,
    # fp32). Each row's 48 pieces' moments (8 B each) finish on its home tile, the tile of its
    # middle piece (piece 24: tile 4 for row 0, 12 for row 1), which holds 6 of them: 42 x 8 =
    # 336 B, and in the first pass the row's zero shift from the tile it was spread to, 4 B.
    # Apply, in chunks of 512 columns (one tile's worth each, so x is read where it lives): a
    # tile receives its row's mean and 1/std, 8 B, and the weight and bias of its 3,072
    # columns, one region of each (held on two other tiles), 3,072 x 2 x 2 = 12,288 B: 12,296 B
    # on tile 1 (it holds none of its columns' weights and is no row's home).
    eng = _long_rows(affine=True)
    assert _recv_max(eng, "ln/moments") <= 4
    assert _recv_max(eng, "ln/moments/finish") == 340
    assert _recv_max(eng, "ln/centred_moments/finish") == 336
    assert _recv_max(eng, "ln/apply") == 12_296
    # The affine is applied in the same vertices: no separate weight and bias compute sets.
    names = [s.name for s in eng.executable.steps]
    assert not any(k.startswith(("ln/weight", "ln/bias")) for k in names), names


def test_pieces_without_affine_match_torch() -> None:
    eng = _long_rows(affine=False)
    assert _recv_max(eng, "ln/apply") <= 12_296


def test_rows_stored_batch_innermost_are_read_as_strided_views() -> None:
    # x (B, S, n) = (4, 3, 128) stored (S, n, B), the batch innermost (ViT-B/16's residual
    # stream): its rows (b, s) are no single strided view, but each row is one run of step B = 4.
    # Cut in 2 pieces of 64 (24 plane vertices of 64: 1,536 / 64), each piece's 12 vertices fall
    # in runs of one address step (s for a fixed b: 512 = n x B): 4 runs of 3, each a strided
    # view, so no field gathers through a per-element index.
    g = sp.Graph(sp.targets.ipu_model(tiles=16, bytes_per_tile=64 * 1024))
    b_, s_, n = 4, 3, 128
    stored = g.add_variable(sp.float16, (s_, n, b_), name="stored")
    sp.ops.map_linearly(g, stored, grain_size=24)
    x = stored.transpose(2, 0, 1)
    rng = np.random.default_rng(0)
    v = (rng.standard_normal((b_, s_, n)) * 3 + 5).astype(np.float16)
    prog = P.Sequence()
    y, mean, _ = nn.layer_norm(g, x, None, None, prog, name="ln")
    eng = sp.Engine(g, [prog])
    eng.write_tensor(x, v)
    eng.run(0)
    f = torch.tensor(v, dtype=torch.float32)
    want = torch.nn.functional.layer_norm(f, (n,)).numpy()
    np.testing.assert_allclose(eng.read_tensor(y).astype(np.float32), want, atol=1e-2, rtol=1e-2)
    np.testing.assert_allclose(eng.read_tensor(mean), f.mean(-1).numpy(), rtol=1e-5)
    for name in ("ln/moments", "ln/centred_moments", "ln/apply"):
        groups = [grp for c in eng.executable.compute_sets.values() if c.compute_set.name == name
                  for grp in c.groups]
        assert groups and all(grp.fields["x"].is_strided for grp in groups), name
        assert sum(grp.num_vertices for grp in groups) == 24
        if name == "ln/apply":
            strides = {grp.fields["x"].strides for grp in groups}
            assert strides == {(512, 4)}, strides


def _embedding_like(regroup: bool):
    """x (32, 64) stored column-major, each of its 64 columns (8 a tile) contiguous, as an
    embedding lookup's output is (its table's column blocks); a layer norm with weight and bias."""
    import softipu.ops.regroup as R  # noqa: PLC0415

    g = sp.Graph(sp.targets.ipu_model(tiles=8, bytes_per_tile=128 * 1024))
    rows, n = 32, 64
    stored = g.add_variable(sp.float16, (n, rows), name="stored")
    sp.ops.map_linearly(g, stored, grain_size=rows)
    x = stored.T
    w, b = (g.add_variable(sp.float16, (n,), name=k) for k in ("w", "b"))
    for t in (w, b):
        sp.ops.map_linearly(g, t)
    rng = np.random.default_rng(1)
    vals = {x: (rng.standard_normal((rows, n)) * 3 + 5).astype(np.float16),
            w: rng.standard_normal(n).astype(np.float16), b: rng.standard_normal(n).astype(np.float16)}
    prog = P.Sequence()
    keep = R.can_regroup
    R.can_regroup = keep if regroup else (lambda t2: False)
    try:
        y, _, _ = nn.layer_norm(g, x, w, b, prog, name="ln")
    finally:
        R.can_regroup = keep
    eng = sp.Engine(g, [prog])
    for t, v in vals.items():
        eng.write_tensor(t, v)
    eng.run(0)
    return eng, eng.read_tensor(y), vals[x], vals[w], vals[b]


def test_rows_stored_innermost_are_regrouped_into_whole_rows() -> None:
    # Each column of x on its own tile (an embedding lookup's output): regrouped first into whole
    # rows (16 x 16 blocks transposed on tile, ops/regroup.py), the norm is a row vertex's, with
    # no cross-tile reduction of every row's partials from every column's tile.
    eng, y, x, w, b = _embedding_like(True)
    plain, y0, *_ = _embedding_like(False)
    names = {c.compute_set.name for c in eng.executable.compute_sets.values()}
    assert any(v.name == "ln/x/rows" for v in eng.executable.variables)
    assert not any("cross_tile" in n for n in names), names
    assert any("cross_tile" in c.compute_set.name for c in plain.executable.compute_sets.values())
    f = torch.tensor(x, dtype=torch.float32)
    wf, bf = (torch.tensor(t, dtype=torch.float32) for t in (w, b))
    want = torch.nn.functional.layer_norm(f, (64,), wf, bf).numpy()
    np.testing.assert_allclose(y.astype(np.float32), want, atol=3e-2, rtol=1e-2)
    # The row vertex rounds (x - mean) * inv_std * w + b once into fp16; the pieces' path rounds
    # the normalised value, its product with w and the sum (popnn's whiten, channelMul and
    # addToChannel): the two differ by those roundings at most (the fp32 statistics' summation
    # order differs too, far below them): |y - y0| <= |w| u(xhat) / 2 + u(xhat w) / 2 + u(y0) / 2
    # + u(y) / 2, u the fp16 spacing.
    xhat = ((f - f.mean(-1, keepdim=True)) / torch.sqrt(f.var(-1, unbiased=False, keepdim=True)
                                                       + 1e-5)).numpy().astype(np.float16)
    u = lambda v: np.spacing(np.abs(v.astype(np.float16))).astype(np.float64)  # noqa: E731
    prod = (xhat.astype(np.float32) * w.astype(np.float32)).astype(np.float16)
    bound = np.abs(w) * u(xhat) / 2 + u(prod) / 2 + u(y0) / 2 + u(y) / 2
    diff = np.abs(y.astype(np.float64) - y0.astype(np.float64))
    assert np.all(diff <= bound * 1.01 + 1e-7), float((diff - bound).max())
    # Less exchange code: on the fullest tile and in all.
    code, code0 = (e.report.memory_by_category_per_tile()["exchange_code"] for e in (eng, plain))
    assert code.max() < code0.max() and code.sum() < code0.sum(), (code, code0)
