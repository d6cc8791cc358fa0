"""Small torch modules several test files train: one definition each."""

from __future__ import annotations

import torch
import torch.nn.functional as F


class TanhMLP(torch.nn.Module):
    """8 -> 30 (tanh) -> 3 with a cross-entropy loss: fc1 8x30 weight (240) + 30 bias, fc2 30x3
    weight (90) + 3 bias; the locations, sharding and rollback tests train it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(8, 30), torch.nn.Linear(30, 3)

    def forward(self, x, y):
        out = self.fc2(torch.tanh(self.fc1(x)))
        return out, F.cross_entropy(out, y)


def assert_matches_eager_adamw(eager: torch.nn.Module, data, losses: list[float], weights: list,
                               lr: float = 1e-2) -> None:
    """Train ``eager`` with torch's AdamW on ``data(step)`` for ``len(losses)`` steps: each step's loss
    within 1e-4 relative of ``losses`` and the final parameters within 1e-4 of ``weights``."""
    import numpy as np

    opt = torch.optim.AdamW(eager.parameters(), lr=lr)
    for step, loss in enumerate(losses):
        opt.zero_grad()
        ref = eager(*data(step))
        ref.backward()
        opt.step()
        assert abs(loss - ref.item()) <= 1e-4 * max(1.0, abs(ref.item()))
    for p, w in zip(eager.parameters(), weights, strict=True):
        np.testing.assert_allclose(w, p.detach().numpy(), rtol=1e-4, atol=1e-5)


class LinearMSE(torch.nn.Module):
    """One 4 -> 2 Linear with an MSE loss: the smallest training model (option tests train it)."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 2)

    def forward(self, x, y):
        return F.mse_loss(self.linear(x), y)
