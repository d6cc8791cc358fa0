"""Block-sparse Linear weights from PyTorch (frontends/torch/lowerings/block_sparse.py): made from a
Linear and a block mask or from a torch.sparse_bsr weight, run on softipu's static sparse ops in
inference and training, values against eager PyTorch (whose product is the dense weight rebuilt
from its blocks, so independent of softipu's ops); the graph holds only the non-zero values."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

import softipu as sp
import softipu.poptorch as poptorch
import softipu.torch as st
from softipu.frontends.errors import FrontendError
from softipu.frontends.torch.lowerings.block_sparse import BlockSparseLinear, block_sparse_linear

CHIP = sp.targets.ipu_model(tiles=16, bytes_per_tile=256 * 1024)


def _mask(rows, cols, seed):
    mask = np.random.default_rng(seed).random((rows, cols)) < 0.5
    mask[0] = True  # a full block-row
    mask[-1] = False  # an empty one: its outputs are the bias alone
    return mask


@pytest.mark.parametrize("block", [1, 8])
def test_inference_matches_eager_and_masked_dense(block):
    torch.manual_seed(block)
    dense = nn.Linear(32, 24)
    layer = block_sparse_linear(dense, block, mask=_mask(24 // block, 32 // block, block)).eval()
    x = torch.randn(2, 3, 32)
    want = layer(x)
    # Eager: the dense Linear with the weight zeroed outside the mask.
    keep = torch.as_tensor(np.kron(_mask(24 // block, 32 // block, block), np.ones((block, block))), dtype=torch.bool)
    masked = F.linear(x, dense.weight * keep, dense.bias)
    torch.testing.assert_close(want, masked, rtol=1e-5, atol=1e-5)
    m = st.inference_model(layer, st.Options(target=CHIP))
    torch.testing.assert_close(m(x), want, rtol=1e-5, atol=1e-5)


def test_from_bsr_weight():
    torch.manual_seed(1)
    w = torch.randn(16, 8) * torch.as_tensor(np.kron([[1, 0], [0, 0], [1, 1], [0, 1]], np.ones((4, 4))),
                                             dtype=torch.float32)
    layer = BlockSparseLinear.from_bsr(w.to_sparse_bsr(4), bias=torch.randn(16))
    assert layer.values.shape == (4, 4, 4)
    x = torch.randn(5, 8)
    torch.testing.assert_close(layer(x), x @ w.t() + layer.bias, rtol=1e-5, atol=1e-5)
    m = st.inference_model(layer, st.Options(target=CHIP))
    torch.testing.assert_close(m(x), layer(x), rtol=1e-5, atol=1e-5)


class Net(nn.Module):
    def __init__(self, block: int) -> None:
        super().__init__()
        self.fc0 = nn.Linear(16, 16)  # before the sparse layer: its input gradient is needed
        self.fc1 = block_sparse_linear(nn.Linear(16, 16), block, mask=_mask(16 // block, 16 // block, 3))
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x, y):
        out = self.fc2(torch.relu(self.fc1(torch.tanh(self.fc0(x)))))
        return out, F.cross_entropy(out, y)


@pytest.mark.parametrize("block", [4])
def test_training_matches_eager_sgd(block):
    torch.manual_seed(0)
    net = Net(block)
    ref = copy.deepcopy(net)
    model = poptorch.trainingModel(net, poptorch.Options().setTarget(CHIP),
                                   optimizer=poptorch.optim.SGD(net.parameters(), lr=0.1))
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        x, y = torch.randn(4, 16, generator=g), torch.randint(0, 3, (4,), generator=g)
        out, loss = model(x, y)
        opt.zero_grad()
        ref_out, ref_loss = ref(x, y)
        ref_loss.backward()
        opt.step()
        torch.testing.assert_close(loss, ref_loss.detach(), rtol=1e-4, atol=1e-5)
    model.copyWeightsToHost()
    for (name, p), q in zip(net.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)
    # The sparse layer ran on the static sparse ops, forward and backward; its only weight is its
    # non-zero blocks.
    ops = {s.get("op") for s in model.report.steps}
    assert {"sparse_dense_matmul", "dense_sparse_matmul", "sparse_values_grad"} <= ops
    assert [n for n, _ in net.fc1.named_parameters()] == ["values", "bias"]


def test_bad_mask_and_layout():
    with pytest.raises(FrontendError, match=r"mask has shape \(2, 2\).*needs \(4, 2\)"):
        block_sparse_linear(nn.Linear(8, 16), 4, mask=[[1, 0], [0, 1]])
    with pytest.raises(FrontendError, match=r"not a whole number of 3 x 3 blocks"):
        block_sparse_linear(nn.Linear(8, 16), 3)
    with pytest.raises(FrontendError, match=r"layout is torch.strided.*to_sparse_bsr"):
        BlockSparseLinear.from_bsr(torch.zeros(4, 4))
