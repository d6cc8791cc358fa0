"""Block-sparse softmax (ops.sparse.block_sparse_softmax, popsparse's bsSoftmax) and its gradient
against torch's dense softmax with the positions outside the pattern (and the sub-block mask)
excluded: random patterns, empty block-rows, a full row, one block, causal masks, fp16 and fp32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import softipu as sp
from softipu import program as P
from softipu.ops import OpError, sparse


def _mask(kind: str, n: int, rng) -> np.ndarray:
    mask = rng.random((n, n)) < 0.4
    if kind == "empty_rows":
        mask[1] = False
        mask[3] = False
    elif kind == "full_row":
        mask[0] = True
    elif kind == "one_block":
        mask[:] = False
        mask[n - 1, 1] = True
    elif kind == "diagonal":
        mask |= np.eye(n, dtype=bool)
    return mask


def _torch_oracle(pat, x_blocks, dy_blocks, sub):
    """(y, dx) at the pattern's blocks from torch autograd of the dense masked softmax."""
    m = pat.shape[0]
    keep = pat.to_dense(np.ones((pat.nnz_blocks, pat.block_size, pat.block_size))) > 0
    r, c = np.indices(keep.shape)
    if sub == "zero_upper_triangle":
        keep &= c <= r
    elif sub == "zero_lower_triangle":
        keep &= c >= r
    keep_t = torch.tensor(keep)
    x = torch.tensor(pat.to_dense(x_blocks.astype(np.float64)), requires_grad=True)
    rows = keep_t.any(dim=1, keepdim=True)
    logits = x.masked_fill(~keep_t, float("-inf")).masked_fill(~rows.expand(m, m), 0.0)
    y = torch.softmax(logits, dim=1) * keep_t
    y.backward(torch.tensor(pat.to_dense(dy_blocks.astype(np.float64))))
    return pat.blocks_of(y.detach().numpy()), pat.blocks_of(x.grad.numpy())


def _run(mask, block, dtype, sub="none", seed=0, tiles=4):
    rng = np.random.default_rng(seed)
    pat = sparse.CSRMatrix.from_mask(mask, block, name="scores")
    g = sp.Graph(sp.targets.ipu_model(tiles=tiles))
    prog = P.Sequence()
    x = g.add_variable(dtype, (pat.nnz_blocks, block, block), name="x")
    dy = g.add_variable(dtype, x.shape, name="dy")
    sp.ops.map_linearly(g, x)
    sp.ops.map_linearly(g, dy)
    y = sparse.block_sparse_softmax(g, x, prog, pattern=pat, sub_block_mask=sub)
    dx = sparse.block_sparse_softmax_grad(g, y, dy, prog, pattern=pat)
    xv = (3 * rng.standard_normal(x.shape)).astype(dtype.numpy)
    dyv = rng.standard_normal(x.shape).astype(dtype.numpy)
    eng = sp.Engine(g, [prog])
    eng.write_tensor(x, xv)
    eng.write_tensor(dy, dyv)
    eng.run(0)
    want_y, want_dx = _torch_oracle(pat, xv, dyv, sub)
    return eng.read_tensor(y).astype(np.float64), want_y, eng.read_tensor(dx).astype(np.float64), want_dx


@pytest.mark.parametrize("kind", ["random", "empty_rows", "full_row", "one_block", "diagonal"])
@pytest.mark.parametrize("block", [1, 4, 8])
def test_fp32_forward_and_backward_match_torch(kind, block):
    mask = _mask(kind, 5, np.random.default_rng(block))
    got_y, want_y, got_dx, want_dx = _run(mask, block, sp.float32)
    np.testing.assert_allclose(got_y, want_y, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_dx, want_dx, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("sub", ["zero_upper_triangle", "zero_lower_triangle"])
@pytest.mark.parametrize("block", [4, 16])
def test_causal_sub_block_masks(sub, block):
    mask = _mask("diagonal", 4, np.random.default_rng(2))
    if block == 4:
        mask[0] = False  # rows 0-3 keep only what the diagonal allows: some empty
        mask[0, 3] = True  # upper: every element above the diagonal, so those rows are all zeros
    got_y, want_y, got_dx, want_dx = _run(mask, block, sp.float32, sub)
    np.testing.assert_allclose(got_y, want_y, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_dx, want_dx, rtol=1e-4, atol=1e-5)
    # Each row with anything kept sums to 1.
    pat = sparse.CSRMatrix.from_mask(mask, block)
    sums = pat.to_dense(got_y).sum(axis=1)
    assert np.all((np.abs(sums - 1) < 1e-5) | (sums == 0))


def test_fp16_within_rounding():
    mask = _mask("random", 4, np.random.default_rng(9))
    got_y, want_y, got_dx, want_dx = _run(mask, 8, sp.float16)
    # fp16 inputs are exact for the oracle; fp32 inside, one fp16 rounding of y (and of dx).
    np.testing.assert_allclose(got_y, want_y, rtol=2 ** -10, atol=2 ** -12)
    np.testing.assert_allclose(got_dx, want_dx, rtol=2 ** -8, atol=2 ** -10 * np.abs(want_dx).max())


def test_bad_inputs_name_op_and_tensor():
    pat = sparse.CSRMatrix.from_mask([[1, 0], [1, 1]], 4, name="scores")
    g = sp.Graph(sp.targets.ipu_model(tiles=2))
    bad = g.add_variable(sp.float32, (2, 4, 4), name="logits")
    with pytest.raises(OpError, match=r"block_sparse_softmax.*test_ops_sparse_softmax.py.*logits.*\(3, 4, 4\)"):
        sparse.block_sparse_softmax(g, bad, P.Sequence(), pattern=pat)
    ok = g.add_variable(sp.float32, (3, 4, 4), name="x")
    with pytest.raises(OpError, match=r"sub_block_mask 'causal' is not one of"):
        sparse.block_sparse_softmax(g, ok, P.Sequence(), pattern=pat, sub_block_mask="causal")
