"""Lowerings for PopTorch's own ops and for ops kept whole so they compute only what they need.

* ``aten::softplus`` and ``aten::celu`` (kept out of the decompositions, ``export.KEPT_WHOLE``): torch's
  decomposition evaluates ``exp(beta * x)`` everywhere and selects ``x`` above the threshold, so a
  legal input such as 1000 overflows and traps under ``Precision.enableFloatingPointExceptions``.
  The IPU's softplus never evaluates exp there; this lowering clamps exp's argument at the
  threshold (those lanes are not selected) so it computes exactly what the op defines; celu's
  expm1 reads min(x, 0) likewise.
* ``softipu::nop``: PopTorch's ``poptorch.nop``, an identity the graph keeps.
* ``softipu::host_call``: a host callback inside the model (``poptorch.CPU``,
  ``ctc_beam_search_decoder``): its inputs leave through device-to-host streams, the host runs the
  Python function, its outputs come back through host-to-device streams; the engine prices both
  transfers as host I/O. The runtime connects the streams (``custom_ops.connect_host_calls``).
"""

from __future__ import annotations

from typing import Any

from softipu.frontends.torch.custom_ops import HOST_CALL_PREFIX
from softipu.frontends.torch.lowerings.pointwise import _map
from softipu.frontends.torch.registry import register_lowering
from softipu.graph import program as P
from softipu.graph.tensor import Tensor
from softipu.ops.elementwise import E

__all__: list[str] = []

X = E.input(0)


@register_lowering("aten::softplus")
def _softplus(ctx: Any, node: Any, x: Tensor, beta: float = 1.0, threshold: float = 20.0) -> Tensor:
    beta, threshold = float(beta), float(threshold)
    scaled = E.mul(X, beta)
    # exp's argument clamped at the threshold: above it the op is x, and exp is never needed there.
    soft = E.div(E.log1p(E.exp(E.minimum(scaled, threshold))), beta)
    return _map(ctx, E.select(E.gt(scaled, threshold), X, soft), [ctx.cast(x, ctx.out_dtype())])


@register_lowering("aten::celu")
def _celu(ctx: Any, node: Any, x: Tensor, alpha: float = 1.0) -> Tensor:
    alpha = float(alpha)
    # expm1 of min(x, 0): the positive lanes are x, and exp of them could overflow (and trap)
    neg = E.mul(E.expm1(E.div(E.minimum(X, 0.0), alpha)), alpha)
    return _map(ctx, E.select(E.gt(X, 0.0), X, neg), [ctx.cast(x, ctx.out_dtype())])


@register_lowering("softipu::nop")
def _nop(ctx: Any, node: Any, x: Tensor) -> Tensor:
    return x


@register_lowering("softipu::host_call")
def _host_call(ctx: Any, node: Any, inputs: list[Tensor], key: str) -> list[Tensor]:
    """Stream ``inputs`` to the host, run the callback ``key`` there, stream its outputs back."""
    outs = [ctx.variable(ctx.out_dtype(k), ctx.out_shape(k), suffix=f"host_out{k}")
            for k in range(len(ctx.meta()))]
    _stream_host_call(ctx, key, inputs, outs)
    return outs


@register_lowering("softipu::ipu_print_tensor")
def _lower_print(ctx: Any, node: Any, x: Tensor, title: str, fmt: str = "") -> Tensor:
    if fmt:  # PopTorch's format options: printed by a host call that formats as asked
        _stream_host_call(ctx, fmt, [x], [])
    else:
        ctx.prog.add(P.PrintTensor(x, title or node.args[0].name))
    return x


def _stream_host_call(ctx: Any, key: str, inputs: list[Tensor], outs: list[Tensor]) -> None:
    graph = ctx.graph
    base = f"{HOST_CALL_PREFIX}{key}/{sum(1 for s in graph.streams if s.startswith(HOST_CALL_PREFIX))}"
    for k, t in enumerate(inputs):
        name = f"{base}/in/{k}/{'x'.join(map(str, t.shape))}"
        graph.add_device_to_host_fifo(name, t.dtype, t.numel)
        if t.numel:
            ctx.prog.add(P.Copy(t, graph.streams[name]))
    for k, out in enumerate(outs):
        name = f"{base}/out/{k}/{'x'.join(map(str, out.shape))}"
        graph.add_host_to_device_fifo(name, out.dtype, out.numel)
        if out.numel:
            ctx.prog.add(P.Copy(graph.streams[name], out))
