"""Non-linearities (popnn NonLinearity) and their gradients."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from softipu.codelets import nn as C
from softipu.codelets.nn import NonLinearity
from softipu.graph.graph import Graph
from softipu.graph.tensor import Tensor
from softipu.ops.common import OpContext
from softipu.ops.nn._common import _add_regions, _check_float, _check_same, _output_like, _start

__all__ = ['non_linearity', 'non_linearity_grad']

# -- non-linearities -----------------------------------------------------------------------------
def non_linearity(graph: Graph, x: Tensor, prog: Any, *, kind: NonLinearity = NonLinearity.RELU,
                  name: str = "", options: Mapping[str, Any] | None = None) -> Tensor:
    """popnn's ``nonLinearity``: ``kind`` (RELU, SIGMOID, TANH, GELU (tanh approximation),
    GELU_ERF (exact), SILU) elementwise, out of place; the output is mapped like ``x``. No options.

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops.nn import NonLinearity, non_linearity
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=4))
    >>> x = g.add_variable(sp.float32, (3,), name="x"); sp.ops.map_linearly(g, x)
    >>> prog = P.Sequence()
    >>> y = non_linearity(g, x, prog, kind=NonLinearity.RELU)
    >>> eng = sp.Engine(g, [prog]); eng.write_tensor(x, [-1, 0, 2]); eng.run(0)
    >>> eng.read_tensor(y).tolist()
    [0.0, 0.0, 2.0]
    """
    ctx, _ = _start(graph, prog, "non_linearity", name, options, x)
    _check_float(ctx, x)
    kind = _kind(ctx, kind)
    out = _output_like(ctx, x, x.dtype)
    if x.numel:
        cs = ctx.compute_set(kind.name.lower())
        _add_regions(ctx, cs, C.non_linearity_codelet(kind, x.dtype), out, {"x": x, "out": out})
        ctx.execute(cs)
    return out


def non_linearity_grad(graph: Graph, act: Tensor, grad_out: Tensor, prog: Any, *,
                       kind: NonLinearity = NonLinearity.RELU, name: str = "",
                       options: Mapping[str, Any] | None = None) -> Tensor:
    """popnn's ``nonLinearityInputGradient``: ``grad_out * f'``. As in popnn, ``act`` is the
    forward **output** for RELU, SIGMOID and TANH and the forward **input** for GELU, GELU_ERF
    and SILU (``kind.grad_uses_output`` says which). No options.

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops.nn import NonLinearity, non_linearity_grad
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=4))
    >>> y = g.add_variable(sp.float32, (2,), name="y"); sp.ops.map_linearly(g, y)
    >>> dy = g.add_variable(sp.float32, (2,), name="dy"); sp.ops.map_linearly(g, dy)
    >>> prog = P.Sequence()
    >>> dx = non_linearity_grad(g, y, dy, prog, kind=NonLinearity.TANH)
    >>> eng = sp.Engine(g, [prog]); eng.write_tensor(y, [0, 0.5]); eng.write_tensor(dy, [1, 2])
    >>> eng.run(0); eng.read_tensor(dx).tolist()
    [1.0, 1.5]
    """
    ctx, _ = _start(graph, prog, "non_linearity_grad", name, options, act, grad_out)
    _check_float(ctx, act)
    _check_same(ctx, act, grad_out)
    kind = _kind(ctx, kind)
    out = _output_like(ctx, grad_out, grad_out.dtype)
    if out.numel:
        cs = ctx.compute_set(f"{kind.name.lower()}_grad")
        _add_regions(ctx, cs, C.non_linearity_grad_codelet(kind, act.dtype), out,
                     {"act": act, "grad": grad_out, "out": out})
        ctx.execute(cs)
    return out


def _kind(ctx: OpContext, kind: Any) -> NonLinearity:
    if not isinstance(kind, NonLinearity):
        raise ctx.error(f"kind must be a NonLinearity ({', '.join(k.name for k in NonLinearity)}), "
                        f"got {kind!r}")
    return kind
