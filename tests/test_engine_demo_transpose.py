"""The fast engine runs a Transpose2d batch of one shape as one ``np.copyto`` between views bound
at load (``bound_transpose``, the codelet's ``bound_run`` hook), not through ``compute`` each run:
the values against numpy's transpose, bitwise, on both engines."""

from __future__ import annotations

import numpy as np
import pytest

import softipu as sp
from softipu import program as P
from softipu.codelets.transpose import bound_transpose, transpose_codelet

ROWS = 4  # 4 x 6 matrices in x's 24-element rows
MIXED = (2, 3, 4, 6)  # the mixed group's row counts, cycled over its vertices


def _case(reference: bool):
    """x (16 x 4 x 24): four groups of 16 vertices (x[:, g], rows 4) 24 elements apart, merged
    into one call; z (16 x 24): one group of mixed shapes; w (128 x 1024): one group of 512 KiB a
    field, cut into chunks. Each vertex transposes its row (a matrix) into y / u / v."""
    g = sp.Graph(sp.targets.ipu_model(tiles=4, bytes_per_tile=4 * 1024 * 1024))
    x, y = g.add_variable(sp.float32, (16, 4, 24), name="x"), g.add_variable(sp.float32, (16, 4, 24), name="y")
    z, u = g.add_variable(sp.float32, (16, 24), name="z"), g.add_variable(sp.float32, (16, 24), name="u")
    w, v = g.add_variable(sp.float32, (128, 1024), name="w"), g.add_variable(sp.float32, (128, 1024), name="v")
    for t in (x, y):
        g.set_tile_mappings(t, np.repeat(np.arange(4), 4))
    for t in (z, u, w, v):
        g.set_tile_mapping(t, 3)
    cs = g.add_compute_set("t")
    codelet = transpose_codelet(sp.float32)
    for k in range(4):
        g.add_vertices(cs, codelet, {"src": x[:, k], "dst": y[:, k], "rows": ROWS, "cols": 24 // ROWS},
                       np.repeat(np.arange(4), 4))
    mixed = np.array([MIXED[i % 4] for i in range(16)], np.int32)
    g.add_vertices(cs, codelet, {"src": z, "dst": u, "rows": mixed, "cols": 24 // mixed}, np.full(16, 3))
    g.add_vertices(cs, codelet, {"src": w, "dst": v, "rows": 32, "cols": 32}, np.full(128, 3))
    eng = sp.Engine(g, [P.Execute(cs)], options={"engine.reference": reference})
    return eng, (x, y), (z, u, mixed), (w, v)


def _oracle(host: np.ndarray, rows) -> np.ndarray:
    return np.stack([m.reshape(k, m.size // k).T.ravel() for m, k in zip(host, rows, strict=True)])


@pytest.mark.parametrize("reference", [False, True])
def test_transposes_match_numpy_bitwise_on_every_run(reference):
    eng, (x, y), (z, u, mixed), (w, v) = _case(reference)
    rng = np.random.default_rng(0)
    for _ in range(3):  # later runs: the bound views see the new values
        hx = rng.standard_normal((16, 4, 24)).astype(np.float32)
        hz = rng.standard_normal((16, 24)).astype(np.float32)
        hw = rng.standard_normal((128, 1024)).astype(np.float32)
        for t, h in ((x, hx), (z, hz), (w, hw)):
            eng.write_tensor(t, h)
        eng.run(0)
        want = _oracle(hx.reshape(64, 24), [ROWS] * 64).reshape(16, 4, 24)
        assert eng.read_tensor(y).tobytes() == want.tobytes()
        assert eng.read_tensor(u).tobytes() == _oracle(hz, mixed).tobytes()
        assert eng.read_tensor(v).tobytes() == _oracle(hw, [32] * 128).tobytes()


def test_one_shape_batches_skip_compute(monkeypatch):
    """Only the mixed-shape group still runs ``compute``: every call it gets holds several row
    counts (fails where the fast engine calls ``compute`` for the one-shape groups too)."""
    codelet = transpose_codelet(sp.float32)
    seen: list[set[int]] = []
    compute = codelet.compute

    def counted(src, dst, rows, cols):
        seen.append(set(np.asarray(rows).ravel().tolist()))
        compute(src, dst, rows, cols)

    monkeypatch.setattr(codelet, "compute", staticmethod(counted))
    eng, (x, y), (z, u, mixed), _ = _case(False)
    hx = np.arange(16 * 4 * 24, dtype=np.float32).reshape(16, 4, 24)
    eng.write_tensor(x, hx)
    eng.write_tensor(z, hx[:, 0])
    for _ in range(3):
        eng.run(0)
    assert eng.read_tensor(y).tobytes() == _oracle(hx.reshape(64, 24), [ROWS] * 64).reshape(16, 4, 24).tobytes()
    assert eng.read_tensor(u).tobytes() == _oracle(hx[:, 0], mixed).tobytes()
    assert len(seen) == 3 and all(s == set(MIXED) for s in seen)


def test_bound_transpose_mixed_shapes_and_strided_rows():
    """Mixed shapes are refused (``compute`` runs them); rows strided in memory are bound as views
    and written through them."""
    src = np.arange(24, dtype=np.float32).reshape(2, 12)
    assert bound_transpose(src, np.zeros_like(src), np.array([[2], [3]])) is None
    base = np.zeros((2, 24), np.float32)
    wide = base[:, ::2]  # 12 elements a row, every other one
    bound_transpose(src, wide, np.array([[3], [3]]))()
    assert np.array_equal(base[:, ::2], np.stack([r.reshape(3, 4).T.ravel() for r in src]))
    assert not base[:, 1::2].any()
