"""Static block-sparse products (ops.sparse) against a dense numpy oracle, their partition, a
hand-worked cycle figure from poplibs' formula, and the errors for bad patterns and operands."""

from __future__ import annotations

import numpy as np
import pytest

import softipu as sp
from softipu import program as P
from softipu.codelets._common import contraction_bound
from softipu.codelets.sparse import block_multiply_cycles
from softipu.ops import OpError, sparse


def _mask(kind: str, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    mask = rng.random((rows, cols)) < 0.4
    if kind == "empty_rows":
        mask[::2] = False
    elif kind == "full_rows":
        mask[1] = True
        mask[0] = True
    elif kind == "one_block":
        mask[:] = False
        mask[rows - 1, cols // 2] = True
    elif kind == "empty":
        mask[:] = False
    return mask


def _run(mask: np.ndarray, block: int, free: int, dtype, mode: str, tiles: int = 4, seed: int = 0,
         reference: bool = False):
    """(result, oracle, |terms| for the bound, k) for one product."""
    eng, y, want, terms, k = build_product(mask, block, free, dtype, mode, tiles, np.random.default_rng(seed),
                                           reference)
    eng.run(0)
    return eng.read_tensor(y).astype(np.float64), want, terms, k


def build_product(mask: np.ndarray, block: int, free: int, dtype, mode: str, tiles: int,
                  rng: np.random.Generator, reference: bool = False, options: dict | None = None):
    """(engine with random operands written, result tensor, float64 oracle, |terms| for the bound, k)
    of one sparse x dense ("sd") or dense x sparse ("ds") product over ``mask``'s blocks
    (``options``: the product's, e.g. ``numBands``)."""
    pat = sparse.CSRMatrix.from_mask(mask, block, name="w")
    g = sp.Graph(sp.targets.ipu_model(tiles=tiles))
    prog = P.Sequence()
    if mode == "sd":
        nz = sparse.create_sparse_dense_matmul_lhs(g, pat, free, dtype)
        d = sparse.create_sparse_dense_matmul_rhs(g, pat, free, dtype)
        y = sparse.sparse_dense_matmul(g, nz, d, prog, pattern=pat, options=options)
    else:
        d = sparse.create_dense_sparse_matmul_lhs(g, pat, free, dtype)
        nz = sparse.create_dense_sparse_matmul_rhs(g, pat, free, dtype)
        y = sparse.dense_sparse_matmul(g, d, nz, prog, pattern=pat, options=options)
    np_dtype = dtype.numpy
    vals = rng.standard_normal((pat.nnz_blocks, block, block)).astype(np_dtype)
    dense = rng.standard_normal(d.shape).astype(np_dtype)
    eng = sp.Engine(g, [prog], {"engine.reference": reference})
    eng.write_tensor(nz, vals)
    eng.write_tensor(d, dense)
    s = pat.to_dense(vals.astype(np.float64))
    dd = dense.astype(np.float64)
    if mode == "sd":
        want, terms = s @ dd, np.abs(s) @ np.abs(dd)
    else:
        want, terms = dd @ s, np.abs(dd) @ np.abs(s)
    return eng, y, want, terms, pat.shape[1] if mode == "sd" else pat.shape[0]


@pytest.mark.parametrize("mode", ["sd", "ds"])
@pytest.mark.parametrize("kind", ["random", "empty_rows", "full_rows", "one_block", "empty"])
@pytest.mark.parametrize("block", [1, 4, 8, 16])
def test_fp32_matches_dense_oracle(mode, kind, block):
    rng = np.random.default_rng(block)
    blocks = 3 if block == 16 else 4
    mask = _mask(kind, blocks, blocks + 1, rng)
    got, want, terms, k = _run(mask, block, 7, sp.float32, mode)
    assert got.shape == want.shape
    assert np.all(np.abs(got - want) <= contraction_bound(terms, k) + 1e-30)


@pytest.mark.parametrize("mode", ["sd", "ds"])
@pytest.mark.parametrize("block", [4, 16])
def test_fp16_within_bound(mode, block):
    rng = np.random.default_rng(1)
    mask = _mask("random", 3, 4, rng)
    got, want, terms, k = _run(mask, block, 20, sp.float16, mode)
    assert np.all(np.abs(got - want) <= contraction_bound(terms, k, out=np.float16))


@pytest.mark.parametrize("mode", ["sd", "ds"])
def test_reference_interpreter_agrees(mode):
    mask = _mask("random", 4, 3, np.random.default_rng(5))
    fast, want, terms, k = _run(mask, 4, 9, sp.float32, mode)
    ref, *_ = _run(mask, 4, 9, sp.float32, mode, reference=True)
    assert np.all(np.abs(fast - ref) <= contraction_bound(terms, k) + 1e-30)
    assert np.all(np.abs(ref - want) <= contraction_bound(terms, k) + 1e-30)


def test_partition_spreads_blocks_over_tiles():
    # 8 block-rows, one with 8 blocks, seven with 1: with 8 tiles and a narrow free dim the full
    # row gets a tile of its own and the others share the rest.
    mask = np.zeros((8, 8), bool)
    mask[0] = True
    mask[1:, 0] = True
    pat = sparse.CSRMatrix.from_mask(mask, 4)
    g = sp.Graph(sp.targets.ipu_model(tiles=8))
    plan = sparse.sparse_partition(g, pat, 6, sp.float32, "sd")
    heavy = plan.tiles[plan.bands.index(0)]
    assert sum(1 for t in plan.tiles if t == heavy) == 1
    assert len(set(plan.tiles.tolist())) == 8


def test_cycle_figure_worked_by_hand():
    # poplibs sparseDenseBlockMultiply, fp16 16x16, one block, z = 16 over 6 workers (numZ 3),
    # 16 conv units, retainX: workers 6 x (22 + (22 + 3*4 - 3)) = 318; supervisor
    # 40 + 46 + 56 = 142; block load (256/4 + 3 + 12 + 1) + 2 = 82.
    assert int(block_multiply_cycles(1, 3, 16, False, 16, 6, True)) == 318 + 142 + 82
    g = sp.Graph(sp.targets.ipu_model(tiles=1))
    pat = sparse.CSRMatrix.from_mask([[True]], 16)
    prog = P.Sequence()
    nz = sparse.create_sparse_dense_matmul_lhs(g, pat, 16, sp.float16)
    d = sparse.create_sparse_dense_matmul_rhs(g, pat, 16, sp.float16)
    sparse.sparse_dense_matmul(g, nz, d, prog, pattern=pat, name="spmm")
    report = sp.Engine(g, [prog]).report
    step = next(s for s in report.steps if s["name"] == "spmm")
    assert step["compute_cycles"] == 542


def test_bad_block_size_names_pattern_and_line():
    with pytest.raises(OpError, match=r"block size 3 .*test_ops_sparse.py|test_ops_sparse.py.*block size 3"):
        sparse.CSRMatrix((6, 6), 3, [0, 0, 0], [], name="w")


def test_block_out_of_range():
    with pytest.raises(OpError, match=r"'w'.*test_ops_sparse.py.*block-column 5, out of range 0..1"):
        sparse.CSRMatrix((8, 8), 4, [0, 1, 1], [5], name="w")


def test_values_of_wrong_shape_name_tensor_and_op():
    g = sp.Graph(sp.targets.ipu_model(tiles=2))
    pat = sparse.CSRMatrix.from_mask([[1, 1], [0, 1]], 4, name="w")
    d = sparse.create_sparse_dense_matmul_rhs(g, pat, 5, sp.float32)
    bad = g.add_variable(sp.float32, (2, 4, 4), name="vals")
    with pytest.raises(OpError, match=r"sparse_dense_matmul.*test_ops_sparse.py.*vals.*\(3, 4, 4\)"):
        sparse.sparse_dense_matmul(g, bad, d, P.Sequence(), pattern=pat)


def test_dense_operand_of_wrong_shape_or_dtype():
    g = sp.Graph(sp.targets.ipu_model(tiles=2))
    pat = sparse.CSRMatrix.from_mask([[1, 0], [1, 1]], 4, name="w")
    nz = sparse.create_dense_sparse_matmul_rhs(g, pat, 3, sp.float32)
    wrong = g.add_variable(sp.float32, (3, 7), name="x")
    with pytest.raises(OpError, match=r"dense_sparse_matmul.*x has shape \(3, 7\).*needs 8 along axis 1"):
        sparse.dense_sparse_matmul(g, wrong, nz, P.Sequence(), pattern=pat)
    half = g.add_variable(sp.float16, (3, 8), name="h")
    with pytest.raises(OpError, match=r"both must be float16 or both float32"):
        sparse.dense_sparse_matmul(g, half, nz, P.Sequence(), pattern=pat)


def _grad_case(mask: np.ndarray, block: int, free: int, mode: str, dtype=sp.float32, seed: int = 1):
    """(dense grad, its oracle, values grad, its oracle) for one product's backward pass."""
    rng = np.random.default_rng(seed)
    pat = sparse.CSRMatrix.from_mask(mask, block, name="w")
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    prog = P.Sequence()
    m, k = pat.shape
    if mode == "sd":
        nz = sparse.create_sparse_dense_matmul_lhs(g, pat, free, dtype)
        d = sparse.create_sparse_dense_matmul_rhs(g, pat, free, dtype)
        gy = g.add_variable(dtype, (m, free), name="gy")
        dd = sparse.sparse_dense_matmul_grad_rhs(g, nz, gy, prog, pattern=pat)
    else:
        d = sparse.create_dense_sparse_matmul_lhs(g, pat, free, dtype)
        nz = sparse.create_dense_sparse_matmul_rhs(g, pat, free, dtype)
        gy = g.add_variable(dtype, (free, k), name="gy")
        dd = sparse.dense_sparse_matmul_grad_lhs(g, gy, nz, prog, pattern=pat)
    sp.ops.map_linearly(g, gy)
    dv = sparse.sparse_values_grad(g, gy, d, prog, pattern=pat, mode=mode)
    vals = rng.standard_normal((pat.nnz_blocks, block, block)).astype(dtype.numpy)
    dense = rng.standard_normal(d.shape).astype(dtype.numpy)
    grad = rng.standard_normal(gy.shape).astype(dtype.numpy)
    eng = sp.Engine(g, [prog])
    for t, v in ((nz, vals), (d, dense), (gy, grad)):
        eng.write_tensor(t, v)
    eng.run(0)
    # Oracle: torch autograd of the dense product, the weight's gradient read at the pattern's blocks.
    import torch

    s = torch.tensor(pat.to_dense(vals.astype(np.float64)), requires_grad=True)
    x = torch.tensor(dense.astype(np.float64), requires_grad=True)
    y = s @ x if mode == "sd" else x @ s
    y.backward(torch.tensor(grad.astype(np.float64)))
    return (eng.read_tensor(dd).astype(np.float64), x.grad.numpy(), eng.read_tensor(dv).astype(np.float64),
            pat.blocks_of(s.grad.numpy()))


@pytest.mark.parametrize("mode", ["sd", "ds"])
@pytest.mark.parametrize("kind,block", [("random", 4), ("empty_rows", 8), ("full_rows", 1), ("one_block", 16),
                                        ("empty", 4)])
def test_gradients_match_torch_autograd(mode, kind, block):
    mask = _mask(kind, 3, 4, np.random.default_rng(7))
    got_d, want_d, got_v, want_v = _grad_case(mask, block, 5, mode)
    np.testing.assert_allclose(got_d, want_d, rtol=1e-5, atol=1e-5)
    assert got_v.shape == want_v.shape
    np.testing.assert_allclose(got_v, want_v, rtol=1e-5, atol=1e-5)


def test_gradients_fp16_within_bound():
    mask = _mask("random", 4, 4, np.random.default_rng(3))
    got_d, want_d, got_v, want_v = _grad_case(mask, 8, 24, "sd", dtype=sp.float16)
    # fp32 accumulation, one fp16 rounding of each output (plus fp16 inputs already exact).
    np.testing.assert_allclose(got_d, want_d, rtol=2 ** -10, atol=2 ** -10 * np.abs(want_d).max())
    np.testing.assert_allclose(got_v, want_v, rtol=2 ** -10, atol=2 ** -10 * np.abs(want_v).max())


def test_values_grad_rejects_mismatched_shapes():
    pat = sparse.CSRMatrix.from_mask([[1, 0], [0, 1]], 4, name="w")
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    gy = g.add_variable(sp.float32, (8, 3), name="gy")
    d = g.add_variable(sp.float32, (5, 3), name="d")
    with pytest.raises(OpError, match=r"sparse_values_grad.*gy.*d.*need grad_out \(8, 3\) and dense \(8, 3\)"):
        sparse.sparse_values_grad(g, gy, d, P.Sequence(), pattern=pat, mode="sd")
