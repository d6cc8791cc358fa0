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
