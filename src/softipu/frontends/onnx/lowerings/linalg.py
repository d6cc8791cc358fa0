"""Linear-algebra ONNX ops: ``Det``."""

from __future__ import annotations

import itertools
from typing import Any

from softipu.frontends.onnx.registry import register_onnx_lowering
from softipu.graph.tensor import Tensor
from softipu.ops import elementwise as ew
from softipu.ops.elementwise import E

DET_MAX = 4  # Leibniz's formula: n! products of n elements (24 terms at n = 4)


def _det_check(ctx: Any) -> str | None:
    shape = ctx.shape(0)
    if len(shape) < 2 or shape[-1] != shape[-2]:
        return f"Det needs square matrices in its last two dimensions, got shape {list(shape)}"
    if shape[-1] > DET_MAX:
        return (f"Det of {shape[-1]}x{shape[-1]} matrices is not supported (up to {DET_MAX}x{DET_MAX}, by "
                "Leibniz's formula); compute it on the host (numpy.linalg.det) or factorise the matrix "
                "in the model")
    return None if ctx.elem_type(0) in (1, 10, 11) else "Det needs float data"


def _sign(perm: tuple[int, ...]) -> int:
    inversions = sum(1 for a, b in itertools.combinations(perm, 2) if a > b)
    return -1 if inversions % 2 else 1


@register_onnx_lowering("Det", check=_det_check)
def _det(ctx: Any, node: Any) -> Tensor:
    """The determinant by Leibniz's formula: the signed sum over permutations p of the products
    ``x[0, p(0)] * ... * x[n-1, p(n-1)]``, in one elementwise map over the n*n entries."""
    x = ctx.input(0)
    n = x.shape[-1]
    batch = tuple(x.shape[:-2])
    rows = x.reshape(-1, n, n)
    entries = [rows[:, i, j] for i in range(n) for j in range(n)]
    total = None
    for perm in itertools.permutations(range(n)):
        term = E.input(perm[0])
        for i in range(1, n):
            term = E.mul(term, E.input(i * n + perm[i]))
        if total is None:
            total = term if _sign(perm) > 0 else E.neg(term)
        else:
            total = E.add(total, term) if _sign(perm) > 0 else E.sub(total, term)
    out = ew.map(ctx.graph, total, entries, ctx.prog, name=ctx.name)
    return out.reshape(batch)
