"""The training decomposition's one-hot label mask is made in the log-probabilities' layout
(``softipu::label_mask``, as PopART's ``NllOpx`` clones the probabilities for its one-hot:
popart ``willow/src/popx/op/nllx.cpp``), so the loss's select, its gradient and the softmax's
backward read each tile's logits on that tile: exchange regions per tile bounded by a few per
tile, not one per logit.

Oracles: eager PyTorch from the same weights and data (loss and weights after SGD steps, with an
ignored label); the mask's values against the plain formula; the region bound worked by hand.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

import softipu as sp
import softipu.torch as st
from softipu.compiler.exchange import compute_set_transfers, traffic
from softipu.frontends.torch.training.nll_mask import label_mask

HIDDEN, VOCAB, ROWS, TILES, IGNORE = 32, 384, 24, 16, 3


class Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.decoder = nn.Linear(HIDDEN, VOCAB)

    def forward(self, x, labels):
        return F.cross_entropy(self.decoder(x), labels, ignore_index=IGNORE)


def data(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    labels = torch.randint(0, VOCAB, (ROWS,), generator=g)
    labels[1] = IGNORE  # an ignored row: no loss, no gradient
    return torch.randn(ROWS, HIDDEN, generator=g), labels


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    module = Head()
    eager = copy.deepcopy(module)
    target = sp.targets.ipu_model(tiles=TILES, bytes_per_tile=256 * 1024)
    model = st.training_model(module, torch.optim.SGD(module.parameters(), lr=0.5), st.Options(target=target))
    opt = torch.optim.SGD(eager.parameters(), lr=0.5)
    losses = []
    for i in range(2):
        x, labels = data(i)
        ipu = float(model(x, labels).detach())
        opt.zero_grad()
        ref = eager(x, labels)
        ref.backward()
        opt.step()
        losses.append((ipu, float(ref.detach())))
    return module, eager, model, losses


def test_label_mask_eager_values():
    logp = torch.zeros(4, 5)
    target = torch.tensor([0, 3, 4, 3])
    want = F.one_hot(target, 5).bool() & (target != 3)[:, None]
    assert torch.equal(label_mask(logp, target, 3), want)
    assert torch.equal(label_mask(logp, target, -100), F.one_hot(target, 5).bool())


def test_cross_entropy_loss_and_weights_match_eager(trained):
    module, eager, _, losses = trained
    for i, (ipu, ref) in enumerate(losses):
        assert ipu == pytest.approx(ref, rel=1e-5), f"step {i}"
    got = dict(module.named_parameters())
    for name, ref in eager.named_parameters():
        err = float((got[name].detach() - ref.detach()).abs().max() / ref.detach().abs().max())
        assert err <= 1e-5, f"{name}: {err}"


def test_mask_ops_move_regions_per_tile_not_per_logit(trained):
    _, _, model, _ = trained
    ex = model.engine.executable
    worst = {}
    for c in ex.compute_sets.values():
        name = c.compute_set.name
        if name.startswith(("fwd/", "bwd/")) and not name.endswith(("/reduce", "/amp", "/matmul")):
            moved = traffic(compute_set_transfers(c, ex.mappings), ex.target)
            worst[name] = int(moved.recv_regions.max())
    # Hand-worked: the logits (24 x 384) are spread over 16 tiles, 576 a tile. An elementwise op
    # over tensors mapped alike receives only its broadcast operands (the labels, the class
    # numbers, per-row scalars), each a run or two: at most a handful of regions a tile. Read
    # element by element from a tile holding them in another order, a tile receives up to its
    # 576 logits one region each (361 with the mask row-major, before softipu::label_mask).
    assert worst and max(worst.values()) <= 8, sorted(worst.items(), key=lambda kv: -kv[1])[:5]
