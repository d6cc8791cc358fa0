"""The static block-sparse products' K split (ops.sparse, popsparse's column bands): values against a
dense numpy oracle with the split forced (fast engine and reference interpreter), the column bands'
balance, the planner choosing a split only where it pays, and hand-worked cycles of both steps."""

from __future__ import annotations

import numpy as np
import pytest

import softipu as sp
from softipu import program as P
from softipu.codelets._common import contraction_bound
from softipu.ops import sparse


def _case(mask, block, free, dtype, mode, bands, tiles=8, reference=False, seed=0):
    rng = np.random.default_rng(seed)
    pat = sparse.CSRMatrix.from_mask(mask, block, name="w")
    g = sp.Graph(sp.targets.ipu_model(tiles=tiles))
    prog = P.Sequence()
    opts = {"numBands": bands}
    if mode == "sd":
        nz = sparse.create_sparse_dense_matmul_lhs(g, pat, free, dtype)
        d = sparse.create_sparse_dense_matmul_rhs(g, pat, free, dtype)
        y = sparse.sparse_dense_matmul(g, nz, d, prog, pattern=pat, options=opts)
    else:
        d = sparse.create_dense_sparse_matmul_lhs(g, pat, free, dtype)
        nz = sparse.create_dense_sparse_matmul_rhs(g, pat, free, dtype)
        y = sparse.dense_sparse_matmul(g, d, nz, prog, pattern=pat, options=opts)
    vals = rng.standard_normal((pat.nnz_blocks, block, block)).astype(dtype.numpy)
    dense = rng.standard_normal(d.shape).astype(dtype.numpy)
    eng = sp.Engine(g, [prog], {"engine.reference": reference})
    eng.write_tensor(nz, vals)
    eng.write_tensor(d, dense)
    eng.run(0)
    s, dd = pat.to_dense(vals.astype(np.float64)), dense.astype(np.float64)
    want, terms = (s @ dd, np.abs(s) @ np.abs(dd)) if mode == "sd" else (dd @ s, np.abs(dd) @ np.abs(s))
    k = pat.shape[1] if mode == "sd" else pat.shape[0]
    return eng.read_tensor(y).astype(np.float64), want, contraction_bound(terms, k, out=dtype.numpy), eng


def _mask(mode, seed=0):
    rng = np.random.default_rng(seed)
    mask = rng.random((3, 8)) < 0.6
    mask[0] = True  # a full row: split over every band
    mask[1] = False  # an empty row
    mask[2] = False
    mask[2, 3] = True  # one block: one band, no partials
    return mask if mode == "sd" else mask.T


@pytest.mark.parametrize("mode", ["sd", "ds"])
@pytest.mark.parametrize("block,dtype", [(1, sp.float32), (4, sp.float32), (8, sp.float16), (16, sp.float16)])
def test_forced_split_matches_oracle(mode, block, dtype):
    got, want, bound, eng = _case(_mask(mode), block, 5, dtype, mode, bands=4)
    assert any(s["name"].endswith("/reduce") for s in eng.report.steps)
    assert np.all(np.abs(got - want) <= bound + 1e-30)


@pytest.mark.parametrize("mode", ["sd", "ds"])
def test_split_reference_interpreter_agrees(mode):
    fast, want, bound, _ = _case(_mask(mode, 3), 4, 7, sp.float32, mode, bands=3)
    ref, *_ = _case(_mask(mode, 3), 4, 7, sp.float32, mode, bands=3, reference=True)
    assert np.all(np.abs(fast - ref) <= 2 * bound + 1e-30)
    assert np.all(np.abs(ref - want) <= bound + 1e-30)


def test_column_bands_hold_equal_blocks():
    # popsparse's buildColumnBandInfo: columns in order until a band holds ceil(nnz / k) blocks.
    counts = np.array([3, 0, 1, 4, 0, 0, 2, 2])  # 12 blocks, k = 3: 4 per band
    assert sparse.column_bands(counts, 3).tolist() == [0, 3, 4, 8]  # 4, 4, 4 blocks
    assert sparse.column_bands(counts, 1).tolist() == [0, 8]
    assert sparse.column_bands(np.zeros(5, np.int64), 4).tolist() == [0, 5]


def test_planner_splits_a_long_row_only_where_it_pays():
    # One row of 16 blocks and a free dimension of 4 on 16 tiles: unsplit, one tile does all 16
    # products; split, each tile does one and the partials are reduced: fewer modeled cycles.
    mask = np.ones((1, 16), bool)
    g = sp.Graph(sp.targets.ipu_model(tiles=16))
    pat = sparse.CSRMatrix.from_mask(mask, 4)
    assert sparse.sparse_partition(g, pat, 4, sp.float32, "sd").k_split > 1
    auto = _case(mask, 4, 4, sp.float32, "sd", bands=0, tiles=16)[3].report.cycles
    whole = _case(mask, 4, 4, sp.float32, "sd", bands=1, tiles=16)[3].report.cycles
    assert auto < whole
    # A block-diagonal pattern has one block per row: nothing to split.
    diag = sparse.CSRMatrix.from_mask(np.eye(8, dtype=bool), 4)
    assert sparse.sparse_partition(g, diag, 4, sp.float32, "sd").k_split == 1


def test_split_cycles_worked_by_hand():
    # fp16 16x16 blocks, one row of two blocks, free 16, two bands on two tiles: each tile runs one
    # block (542 cycles, worked in test_ops_sparse: poplibs' sparseDenseBlockMultiply), then the
    # reduce step adds the two 256-element fp16 partials on the output's tile. Those sit 256
    # elements apart: popops' STRIDED_REDUCE, per worker (getCyclesEstimateForStridedReduce)
    # 4 + 11 + (3 + (1 + 7) + 3 + (2 - 1)) x ceil(44 / 4) = 180 for the busiest worker's 44
    # columns (256 in grains of 4 over 6 workers); 6 x 180 + 11 supervisor = 1091.
    g = sp.Graph(sp.targets.ipu_model(tiles=2))
    pat = sparse.CSRMatrix.from_mask([[True, True]], 16)
    prog = P.Sequence()
    nz = sparse.create_sparse_dense_matmul_lhs(g, pat, 16, sp.float16)
    d = sparse.create_sparse_dense_matmul_rhs(g, pat, 16, sp.float16)
    sparse.sparse_dense_matmul(g, nz, d, prog, pattern=pat, name="spmm", options={"numBands": 2})
    steps = {s["name"]: s["compute_cycles"] for s in sp.Engine(g, [prog]).report.steps}
    assert steps == {"spmm": 542, "spmm/reduce": 1091}


@pytest.mark.parametrize("block,density", [(4, 0.3), (16, 0.6), (1, 0.2)])
def test_planned_cycles_track_the_priced_product(block, density):
    # The partitioner's model (used by the split choice and bench_sparse's curves) against the
    # compiled product's priced cycles for the same plan: not exact (the exchange is estimated from
    # bytes), within a quarter.
    rng = np.random.default_rng(4)
    mask = rng.random((64 // block, 64 // block)) < density
    pat = sparse.CSRMatrix.from_mask(mask, block)
    chip = sp.targets.ipu_model(tiles=16, bytes_per_tile=256 * 1024)
    g = sp.Graph(chip)
    prog = P.Sequence()
    nz = sparse.create_sparse_dense_matmul_lhs(g, pat, 24, sp.float16)
    d = sparse.create_sparse_dense_matmul_rhs(g, pat, 24, sp.float16)
    sparse.sparse_dense_matmul(g, nz, d, prog, pattern=pat)
    eng = sp.Engine(g, [prog], estimate_only=True)
    eng.run(0)
    priced = eng.report.cycles
    planned = sparse.planned_cycles(sp.Graph(chip), pat, 24, sp.float16)["cycles"]
    assert 0.75 * priced <= planned <= 1.25 * priced, (planned, priced)
