"""ONNX Einsum on one or two operands: diagonals as indexed views, indices only one operand has
summed by ``reduce``, the rest one batched matmul (batch, free, contracted), then a transpose."""

from __future__ import annotations

import string
from typing import Any

import numpy as np

from softipu.frontends.onnx.registry import register_onnx_lowering
from softipu.graph.tensor import Tensor
from softipu.ops.matmul import matmul
from softipu.ops.reduce import reduce


def _ellipsis(ell: str, n: int) -> str:
    """The last ``n`` letters standing for an operand's ``...`` dims."""
    return ell[len(ell) - n:] if n else ""


def _parse(eq: str, ranks: list[int]) -> tuple[list[str], str]:
    eq = eq.replace(" ", "")
    lhs, _, rhs = eq.partition("->")
    terms = lhs.split(",")
    spare = [c for c in string.ascii_uppercase if c not in eq]
    dots = max((r - len(t.replace("...", "")) for t, r in zip(terms, ranks, strict=True) if "..." in t),
               default=0)
    ell = "".join(spare[:dots])
    terms = [t.replace("...", _ellipsis(ell, r - len(t.replace("...", ""))))
             for t, r in zip(terms, ranks, strict=True)]
    if not _:
        counts = {c: sum(t.count(c) for t in terms) for t in terms for c in t}
        rhs = ell + "".join(sorted(c for c, n in counts.items() if n == 1 and c not in ell))
    else:
        rhs = rhs.replace("...", ell)
    return terms, rhs


def _diagonal(x: Tensor, term: str) -> tuple[Tensor, str]:
    """Repeated letters in one term: the diagonal, as an indexed view."""
    while len(set(term)) < len(term):
        c = next(c for c in term if term.count(c) > 1)
        i, j = term.index(c), term.index(c, term.index(c) + 1)
        rest = [k for k in range(x.ndim) if k not in (i, j)]
        moved = x.transpose(rest + [i, j])
        n = x.shape[i]
        addr = moved.addresses()[(..., np.arange(n), np.arange(n))]
        x = Tensor(x.graph, x.dtype, tuple(addr.shape), 0, (), addr)
        term = "".join(term[k] for k in rest) + c
    return x, term


def _sum_out(ctx: Any, x: Tensor, term: str, keep: set[str]) -> tuple[Tensor, str]:
    dims = [k for k, c in enumerate(term) if c not in keep]
    if not dims:
        return x, term
    out = reduce(ctx.graph, x, ctx.prog, dims=dims, name=f"{ctx.name}/sum_{term}")
    return out, "".join(c for c in term if c in keep)


@register_onnx_lowering("Einsum")
def _einsum(ctx: Any, node: Any) -> Tensor:
    xs = [t for t in ctx.inputs() if t is not None]
    if len(xs) > 2:
        raise ValueError("Einsum of more than two operands is not lowered")
    terms, out = _parse(ctx.attr("equation"), [t.ndim for t in xs])
    xs, terms = map(list, zip(*(_diagonal(x, t) for x, t in zip(xs, terms, strict=True)), strict=True))
    if len(xs) == 1:
        x, term = _sum_out(ctx, xs[0], terms[0], set(out))
        return x.transpose([term.index(c) for c in out]) if out else x
    (a, b), (ta, tb) = xs, terms
    a, ta = _sum_out(ctx, a, ta, set(out) | set(tb))
    b, tb = _sum_out(ctx, b, tb, set(out) | set(ta))
    batch = [c for c in ta if c in tb and c in out]
    contract = [c for c in ta if c in tb and c not in out]
    fa = [c for c in ta if c not in tb]
    fb = [c for c in tb if c not in ta]
    size = {c: n for t, x in ((ta, a), (tb, b)) for c, n in zip(t, x.shape, strict=True)}
    prod = lambda cs: int(np.prod([size[c] for c in cs], dtype=np.int64))  # noqa: E731
    a3 = a.transpose([ta.index(c) for c in batch + fa + contract])
    a3 = a3.reshape((prod(batch), prod(fa), prod(contract)))
    b3 = b.transpose([tb.index(c) for c in batch + contract + fb])
    b3 = b3.reshape((prod(batch), prod(contract), prod(fb)))
    y = matmul(ctx.graph, a3, b3, ctx.prog, name=ctx.name)
    letters = batch + fa + fb
    y = y.reshape(tuple(size[c] for c in letters))
    return y.transpose([letters.index(c) for c in out]) if out else y.reshape(())
