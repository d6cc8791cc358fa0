"""The fast engine's whole-compute-set runner of static block-sparse products
(codelets.sparse.SparseProductRunner): taken, right against a dense numpy oracle where one band is
cut into free-dimension slices of unequal widths (merged back into one GEMM), deterministic over
runs, and within the bound of the reference interpreter's per-vertex sums."""

from __future__ import annotations

import numpy as np
import pytest

import softipu as sp
from softipu import program as P
from softipu.codelets import sparse as sparse_codelets
from softipu.codelets._common import contraction_bound
from softipu.ops import sparse
from test_ops_sparse import build_product


def _product(mode: str, block: int, dtype, free: int, tiles: int, reference: bool = False):
    rng = np.random.default_rng(block + free)
    mask = rng.random((3, 4)) < 0.5
    mask[0] = True  # a full band
    mask[1] = False  # an empty band (zeroed, no vertex)
    mask[2, :] = [False, True, False, False]  # one block
    if mode == "ds":
        mask = mask.T
    eng, y, want, terms, k = build_product(mask, block, free, dtype, mode, tiles, rng, reference)
    runs = []
    for _ in range(2):
        eng.run(0)
        runs.append(eng.read_tensor(y).copy())
    return runs, want, terms, k


@pytest.mark.parametrize("mode", ["sd", "ds"])
@pytest.mark.parametrize("block", [1, 4, 16])
@pytest.mark.parametrize("dtype", [sp.float32, sp.float16])
def test_runner_taken_and_matches_oracle(mode, block, dtype, monkeypatch):
    calls = []
    real = sparse_codelets.SparseProductRunner._run
    monkeypatch.setattr(sparse_codelets.SparseProductRunner, "_run",
                        lambda self, classes: calls.append(1) or real(self, classes))
    # 16 tiles and a free length of 13: each busy band cut into slices of 5, 4 and 4 (two groups).
    (first, second), want, terms, k = _product(mode, block, dtype, 13, 16)
    assert calls, "the sparse product did not run through SparseProductRunner"
    out = np.float16 if dtype is sp.float16 else np.float32
    assert np.array_equal(first, second)  # deterministic
    got = first.astype(np.float64)
    assert np.all(np.abs(got - want) <= contraction_bound(terms, k, out=out) + 1e-30)
    assert np.all(got[want == 0] == 0)  # the empty band is zeros


@pytest.mark.parametrize("mode", ["sd", "ds"])
def test_runner_within_bound_of_reference_interpreter(mode):
    (fast, _), want, terms, k = _product(mode, 8, sp.float32, 13, 16)
    (ref, _), *_ = _product(mode, 8, sp.float32, 13, 16, reference=True)
    assert np.all(np.abs(fast.astype(np.float64) - ref) <= 2 * contraction_bound(terms, k) + 1e-30)


def test_replicated_graph_runs_per_group_and_matches_oracle(monkeypatch):
    """Two replicas: the whole-set runner is for one replica; groups run as usual, each replica
    its own values."""
    calls = []
    real = sparse_codelets.SparseProductRunner._run
    monkeypatch.setattr(sparse_codelets.SparseProductRunner, "_run",
                        lambda self, classes: calls.append(1) or real(self, classes))
    pat = sparse.CSRMatrix.from_mask([[1, 0, 1], [0, 0, 1]], 4, name="w")
    g = sp.Graph(sp.targets.ipu_model(tiles=8), replication_factor=2)
    prog = P.Sequence()
    nz = sparse.create_sparse_dense_matmul_lhs(g, pat, 5, sp.float32)
    d = sparse.create_sparse_dense_matmul_rhs(g, pat, 5, sp.float32)
    y = sparse.sparse_dense_matmul(g, nz, d, prog, pattern=pat)
    rng = np.random.default_rng(3)
    vals = rng.standard_normal((2, pat.nnz_blocks, 4, 4)).astype(np.float32)
    dense = rng.standard_normal((2, 12, 5)).astype(np.float32)
    eng = sp.Engine(g, [prog])
    eng.write_tensor(nz, vals)
    eng.write_tensor(d, dense)
    eng.run(0)
    got = eng.read_tensor(y).astype(np.float64)
    assert not calls
    for r in range(2):
        s, dd = pat.to_dense(vals[r].astype(np.float64)), dense[r].astype(np.float64)
        assert np.all(np.abs(got[r] - s @ dd) <= contraction_bound(np.abs(s) @ np.abs(dd), 12) + 1e-30)


def test_runner_shares_are_the_same_bits(monkeypatch):
    """The runner's products cut into row shares the engine may run side by side (codelets.sparse
    SparseProductRunner.jobs) give the same bits as one job."""
    monkeypatch.setattr(sparse_codelets, "CORES", 2)
    monkeypatch.setattr(sparse_codelets, "SHARE_WORK", 1)
    shared, *_ = _product("sd", 1, sp.float32, 13, 16)
    seen = []
    real = sparse_codelets.SparseProductRunner.jobs
    monkeypatch.setattr(sparse_codelets.SparseProductRunner, "jobs",
                        lambda self, storage: seen.append(len(real(self, storage))) or [self.run])
    single, *_ = _product("sd", 1, sp.float32, 13, 16)
    assert seen and seen[0] > 1  # the same product does cut into shares
    assert np.array_equal(shared[0], single[0]) and np.array_equal(shared[1], single[1])


def _shares(eng) -> list:
    """The row shares of the engine's sparse product runners (codelets.sparse._Share)."""
    found = []
    for runner in eng._interpreter._runners.values():
        for job in runner.jobs:
            owner = getattr(job, "__self__", None) or getattr(getattr(job, "func", None), "__self__", None)
            if isinstance(owner, sparse_codelets.SparseProductRunner):
                found.extend(s for s in owner.shares if s not in found)
    return found


@pytest.mark.parametrize("mode", ["sd", "ds"])
@pytest.mark.parametrize("block,dtype", [(1, sp.float32), (4, sp.float16), (8, sp.float32), (16, sp.float16)])
def test_k_split_through_runner_matches_oracle_and_reference(mode, block, dtype, monkeypatch):
    """A forced K split: the runner writes every unit's partials, the reduction's compute set sums
    them; the result against float64 numpy and the reference interpreter's per-vertex sums."""
    calls = []
    real = sparse_codelets.SparseProductRunner._run
    monkeypatch.setattr(sparse_codelets.SparseProductRunner, "_run",
                        lambda self, shares: calls.append(1) or real(self, shares))
    rng = np.random.default_rng(block)
    mask = rng.random((3, 6)) < 0.6
    mask[0], mask[1], mask[2] = True, False, False
    mask[2, 4] = True  # a full row (split over every band), an empty one, one block
    mask = mask if mode == "sd" else mask.T
    outs = []
    for reference in (False, True):
        eng, y, want, terms, k = build_product(mask, block, 9, dtype, mode, 8, np.random.default_rng(5),
                                               reference, options={"numBands": 3})
        eng.run(0)
        assert any(s["name"].endswith("/reduce") for s in eng.report.steps)
        outs.append(eng.read_tensor(y).astype(np.float64))
    assert calls  # the fast engine's run went through the runner
    bound = contraction_bound(terms, k, out=dtype.numpy)
    assert np.all(np.abs(outs[0] - want) <= bound + 1e-30)
    assert np.all(np.abs(outs[0] - outs[1]) <= 2 * bound + 1e-30)


@pytest.mark.parametrize("dtype", [sp.float32, sp.float16])
def test_dense_operand_not_row_major_is_taken(dtype):
    """``S . D`` with ``D`` a transposed view of a ``(n, K)`` variable: its rows are not runs of
    addresses, so the runner takes them each run (no view); right against float64 numpy."""
    rng = np.random.default_rng(2)
    pat = sparse.CSRMatrix.from_mask(rng.random((3, 5)) < 0.5, 4, name="w")
    g = sp.Graph(sp.targets.ipu_model(tiles=6))
    prog = P.Sequence()
    nz = sparse.create_sparse_dense_matmul_lhs(g, pat, 7, dtype)
    dt = g.add_variable(dtype, (7, pat.shape[1]), name="dt")
    g.set_tile_mapping(dt, 0)
    y = sparse.sparse_dense_matmul(g, nz, dt.transpose(), prog, pattern=pat)
    eng = sp.Engine(g, [prog])
    vals = rng.standard_normal((pat.nnz_blocks, 4, 4)).astype(dtype.numpy)
    dense = rng.standard_normal((7, pat.shape[1])).astype(dtype.numpy)
    eng.write_tensor(nz, vals)
    eng.write_tensor(dt, dense)
    eng.run(0)
    assert _shares(eng) and not any(s.x_view for s in _shares(eng))
    s, d = pat.to_dense(vals.astype(np.float64)), dense.astype(np.float64).T
    bound = contraction_bound(np.abs(s) @ np.abs(d), pat.shape[1], out=dtype.numpy)
    assert np.all(np.abs(eng.read_tensor(y).astype(np.float64) - s @ d) <= bound + 1e-30)


def test_distinct_rows_tell_apart_rows_that_start_alike():
    """Rows are keyed by their first address and checked whole; rows that start alike but differ
    (not made by the ops, which read one tensor's rows) are told apart whole."""
    same = [np.array([[0, 1, 2], [6, 7, 8]]), np.array([[6, 7, 8], [3, 4, 5]])]
    x, cols = sparse_codelets._distinct_rows(same)
    assert x.tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert [c.tolist() for c in cols] == [[0, 2], [2, 1]]
    odd = [np.array([[0, 1, 2]]), np.array([[0, 5, 9], [0, 1, 2]])]
    x, cols = sparse_codelets._distinct_rows(odd)
    for rows, c in zip(odd, cols, strict=True):
        assert np.array_equal(x[c], rows)
    assert len(x) == 2


@pytest.mark.parametrize("block", [1, 4])
def test_outputs_in_row_order_written_directly(block, monkeypatch):
    """On one tile the output is one block of rows in row order: scipy's kernel accumulates
    straight into the buffer (_Share.direct). Right against float64 numpy, and the same bits as
    the product through ``csr @ dense`` and a copy (the same kernel)."""
    rng = np.random.default_rng(block)
    mask = rng.random((6, 5)) < 0.4
    mask[:, 2] = True  # no empty band (its rows would break the block: written the usual way)
    got = []
    for matvecs in (sparse_codelets._matvecs(), None):
        monkeypatch.setattr(sparse_codelets, "_matvecs", lambda matvecs=matvecs: matvecs)
        eng, y, want, terms, k = build_product(mask, block, 9, sp.float32, "sd", 1, np.random.default_rng(0))
        eng.run(0)
        assert [s.direct is not None for s in _shares(eng)] == [matvecs is not None]
        got.append(eng.read_tensor(y))
    assert np.array_equal(got[0], got[1])
    assert np.all(np.abs(got[0].astype(np.float64) - want) <= contraction_bound(terms, k) + 1e-30)
