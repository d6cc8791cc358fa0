"""training/traces.py: a pointwise optimizer update traced once at a canonical shape serves every
shape of its rank; one that is not pointwise (a norm) is refused. The reshaped graph, run by torch
on real tensors, gives the update traced at the real shape (the oracle: torch's own eager ops)."""

from __future__ import annotations

import torch
from torch.fx.experimental.proxy_tensor import make_fx

from softipu.frontends.torch.training.traces import canonical_shape, is_pointwise, with_shape


def adamw(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, lr: torch.Tensor) -> list[torch.Tensor]:
    m = m + (g - m) * 0.1
    return [p * (1 - lr * 0.01) - lr * m / (torch.sqrt(m * m) + 1e-8), m]


def lamb_like(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, lr: torch.Tensor) -> list[torch.Tensor]:
    return [p - lr * g * torch.linalg.vector_norm(p), m]


def trace(fn, shape):
    args = [torch.empty(shape), torch.empty(shape), torch.empty(shape), torch.zeros(())]
    decompositions = torch.export.default_decompositions().materialize()
    return make_fx(fn, decomposition_table=decompositions, tracing_mode="fake")(*args)


def test_pointwise_update_serves_every_shape_of_its_rank() -> None:
    canonical = canonical_shape(2)
    gm = trace(adamw, canonical)
    assert is_pointwise(gm, canonical)
    shaped = with_shape(gm, canonical, (4, 6))
    vals = [n.meta["val"] for n in shaped.graph.nodes if n.op != "output"]
    assert {tuple(v.shape) for v in vals} <= {(), (4, 6)}
    gen = torch.Generator().manual_seed(0)
    p, g, m = (torch.randn(4, 6, generator=gen) for _ in range(3))
    lr = torch.tensor(0.5)
    for got, want in zip(shaped(p, g, m, lr), adamw(p, g, m, lr), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_an_update_with_a_norm_is_not_shared() -> None:
    canonical = canonical_shape(1)
    assert not is_pointwise(trace(lamb_like, canonical), canonical)
    assert canonical_shape(0) is None
