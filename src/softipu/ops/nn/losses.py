"""nll, cross-entropy and mse losses, and their gradients."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from softipu.codelets import nn as C
from softipu.dtypes import DType, float32, int32
from softipu.graph.graph import Graph
from softipu.graph.tensor import Tensor
from softipu.ops.common import OpContext
from softipu.ops.nn._common import (
    _add_regions,
    _add_rows,
    _cast,
    _check_float,
    _check_same,
    _constant,
    _output_like,
    _plan_rows,
    _reduction,
    _regions,
    _row_output,
    _start,
    _sum_rows,
    _tiles_at,
    _variable,
    _vertex_output,
)

__all__ = ['nll_loss', 'nll_loss_grad', 'cross_entropy', 'cross_entropy_grad', 'mse_loss', 'mse_loss_grad']

# -- losses ----------------------------------------------------------------------------------------
def _class_inputs(ctx: OpContext, x: Tensor, labels: Tensor) -> tuple[int, int]:
    _check_float(ctx, x)
    if x.ndim != 2:
        raise ctx.error(f"needs (N, classes) input, got {x.name} {x.shape}")
    if labels.dtype is not int32 or labels.shape != x.shape[:1]:
        raise ctx.error(f"labels {labels.name} {labels.shape} ({labels.dtype}) must be int32 class "
                        f"indices of shape {x.shape[:1]} for {x.name} {x.shape}")
    if x.shape[1] == 0:
        raise ctx.error(f"{x.name} {x.shape} has no classes")
    return x.shape


def _scalar_output(ctx: OpContext, dtype: DType, near: Tensor, suffix: str = "loss") -> Tensor:
    """A 0-d variable on the tile of ``near``'s first element."""
    t = _variable(ctx, dtype, (), suffix)
    ctx.graph.set_tile_mapping(t, int(_tiles_at(ctx, near.flatten(), (np.zeros(1, np.int64),))[0]))
    return t


def _finish_loss(ctx: OpContext, sums: Tensor, dtype: DType, mean: bool) -> Tensor:
    """The 0-d loss from the reduced ``[sum(loss), count]``."""
    out = _scalar_output(ctx, dtype, sums)
    cs = ctx.compute_set("finish")
    tile = ctx.graph.tile_of(out).reshape(-1)
    ctx.graph.add_vertices(cs, C.loss_finish_codelet(dtype, mean),
                           {"sums": sums.reshape(1, 2), "out": out.reshape(1, 1)}, tile)
    ctx.execute(cs)
    return out


def _empty_loss(ctx: OpContext, dtype: DType, reduction: str, rows: int) -> Tensor:
    if reduction == "none":
        return _variable(ctx, dtype, (rows,), "loss")
    return _constant(ctx, dtype, (), np.nan if reduction == "mean" else 0.0, "loss")


def _class_loss(graph, x, labels, prog, reduction, ignore_index, log_input, op, name, options):
    ctx, _ = _start(graph, prog, op, name, options, x, labels)
    rows, _ = _class_inputs(ctx, x, labels)
    reduction = _reduction(ctx, reduction)
    if rows == 0:
        return _empty_loss(ctx, x.dtype, reduction, rows)
    plan = _plan_rows(ctx, x)
    reduce = reduction != "none"
    codelet = C.class_loss_rows_codelet(x.dtype, log_input, reduce)
    fields = {"x": x, "labels": labels.reshape(rows, 1)}
    cs = ctx.compute_set()
    if not reduce:
        out = _row_output(ctx, plan, x.dtype, 1, "loss")
        _add_rows(ctx, cs, codelet, plan, fields | {"out": out}, params={"ignore_index": ignore_index})
        ctx.execute(cs)
        return out.reshape(rows)
    partial = _vertex_output(ctx, plan, 2, "partials")
    _add_rows(ctx, cs, codelet, plan, fields, per_vertex={"out": partial},
              params={"ignore_index": ignore_index})
    ctx.execute(cs)
    return _finish_loss(ctx, _sum_rows(ctx, partial, plan.tiles, grain=2), x.dtype, reduction == "mean")


def nll_loss(graph: Graph, log_probs: Tensor, labels: Tensor, prog: Any, *, reduction: str = "mean",
             ignore_index: int = -100, name: str = "", options: Mapping[str, Any] | None = None) -> Tensor:
    """Negative log-likelihood of ``(N, classes)`` log-probabilities at int32 ``labels`` (torch's
    ``nll_loss``): ``reduction`` ``"mean"`` (over rows whose label is not ``ignore_index``; 0-d),
    ``"sum"`` (0-d) or ``"none"`` (``(N,)``). Labels out of range are clipped (the device cannot
    raise). No options.

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops import nn
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=4))
    >>> lp = g.add_variable(sp.float32, (2, 2), name="lp"); t = g.add_variable(sp.int32, (2,), name="t")
    >>> sp.ops.map_linearly(g, lp); sp.ops.map_linearly(g, t)
    >>> prog = P.Sequence(); loss = nn.nll_loss(g, lp, t, prog)
    >>> eng = sp.Engine(g, [prog]); eng.write_tensor(lp, [[-1, -2], [-3, -4]]); eng.write_tensor(t, [0, 1])
    >>> eng.run(0); float(eng.read_tensor(loss))
    2.5
    """
    return _class_loss(graph, log_probs, labels, prog, reduction, ignore_index, True, "nll_loss",
                       name, options)


def cross_entropy(graph: Graph, logits: Tensor, labels: Tensor, prog: Any, *, reduction: str = "mean",
                  ignore_index: int = -100, name: str = "",
                  options: Mapping[str, Any] | None = None) -> Tensor:
    """Cross-entropy of ``(N, classes)`` logits against int32 class indices, fused with a stable
    log-softmax (torch's ``cross_entropy``); reductions as :func:`nll_loss`. No options.

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops import nn
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=4))
    >>> z = g.add_variable(sp.float32, (1, 2), name="z"); t = g.add_variable(sp.int32, (1,), name="t")
    >>> sp.ops.map_linearly(g, z); sp.ops.map_linearly(g, t)
    >>> prog = P.Sequence(); loss = nn.cross_entropy(g, z, t, prog, reduction="sum")
    >>> eng = sp.Engine(g, [prog]); eng.write_tensor(z, [[0, 0]]); eng.write_tensor(t, [1])
    >>> eng.run(0); round(float(eng.read_tensor(loss)), 4)
    0.6931
    """
    return _class_loss(graph, logits, labels, prog, reduction, ignore_index, False, "cross_entropy",
                       name, options)


def _loss_coef(ctx: OpContext, grad_loss: Tensor, count: Tensor | None, scale: float) -> Tensor:
    """The fp32 ``(1,)`` factor every element's gradient carries: ``grad * scale`` or
    ``grad / count``."""
    if count is None:
        return _cast(ctx, grad_loss.reshape(1), float32, scale, "coef")
    coef = _variable(ctx, float32, (1,), "coef")
    tile = _tiles_at(ctx, count, (np.zeros(1, np.int64),))
    ctx.graph.set_tile_mapping(coef, int(tile[0]))
    g32 = _cast(ctx, grad_loss.reshape(1), float32, 1.0, "grad32")
    cs = ctx.compute_set("coef")
    ctx.graph.add_vertices(cs, C.LossGradCoef, {"grad": g32.reshape(1, 1), "count": count.reshape(1, 1),
                                                "coef": coef.reshape(1, 1)}, tile)
    ctx.execute(cs)
    return coef


def _valid_count(ctx: OpContext, labels: Tensor, ignore_index: int) -> Tensor:
    """``(1,)`` fp32 number of labels that are not ``ignore_index`` (two-stage reduction)."""
    starts, lengths, tiles = _regions(ctx.graph, labels)
    partial = _variable(ctx, float32, (starts.size, 1), "count_partials")
    ctx.graph.set_tile_mappings(partial, tiles)
    cs = ctx.compute_set("count")
    _add_regions(ctx, cs, C.ValidCount, labels, {"labels": labels}, per_region={"count": partial},
                 params={"ignore_index": ignore_index})
    ctx.execute(cs)
    return _sum_rows(ctx, partial, tiles)


def _class_loss_grad(graph, x, labels, grad_loss, prog, reduction, ignore_index, log_input, op, name,
                     options) -> Tensor:
    ctx, _ = _start(graph, prog, op, name, options, x, labels, grad_loss)
    rows, _ = _class_inputs(ctx, x, labels)
    reduction = _reduction(ctx, reduction)
    want = (rows,) if reduction == "none" else ()
    if grad_loss.shape != want or grad_loss.dtype != x.dtype:
        raise ctx.error(f"grad_loss {grad_loss.name} {grad_loss.shape} ({grad_loss.dtype}) must have "
                        f"shape {want} and dtype {x.dtype} for reduction {reduction!r}")
    if rows == 0:
        return _variable(ctx, x.dtype, x.shape, "dx")
    plan = _plan_rows(ctx, x)
    dx = _row_output(ctx, plan, x.dtype, x.shape[1], "dx")
    fields = {"x": x, "labels": labels.reshape(rows, 1), "dx": dx}
    shared = {}
    if reduction == "none":
        fields["g"] = grad_loss.reshape(rows, 1)
    else:
        count = _valid_count(ctx, labels, ignore_index) if reduction == "mean" else None
        shared["g"] = _loss_coef(ctx, grad_loss, count, 1.0)
    cs = ctx.compute_set()
    _add_rows(ctx, cs, C.class_loss_grad_rows_codelet(x.dtype, log_input, reduction == "none"), plan,
              fields, shared=shared, params={"ignore_index": ignore_index})
    ctx.execute(cs)
    return dx


def nll_loss_grad(graph: Graph, log_probs: Tensor, labels: Tensor, grad_loss: Tensor, prog: Any, *,
                  reduction: str = "mean", ignore_index: int = -100, name: str = "",
                  options: Mapping[str, Any] | None = None) -> Tensor:
    """Gradient of :func:`nll_loss` w.r.t. ``log_probs`` given the loss's upstream gradient
    ``grad_loss`` (0-d for mean/sum, ``(N,)`` for none): ``-grad`` (``/ count`` for mean) at each
    row's label, 0 elsewhere and on ignored rows. No options.

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops import nn
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=4))
    >>> lp = g.add_variable(sp.float32, (2, 2), name="lp"); t = g.add_variable(sp.int32, (2,), name="t")
    >>> one = g.add_variable(sp.float32, (), name="one")
    >>> for v in (lp, t, one): sp.ops.map_linearly(g, v)
    >>> prog = P.Sequence(); d = nn.nll_loss_grad(g, lp, t, one, prog)
    >>> eng = sp.Engine(g, [prog]); eng.write_tensor(t, [0, 1]); eng.write_tensor(one, 1.0)
    >>> eng.run(0); eng.read_tensor(d).tolist()
    [[-0.5, 0.0], [0.0, -0.5]]
    """
    return _class_loss_grad(graph, log_probs, labels, grad_loss, prog, reduction, ignore_index, True,
                            "nll_loss_grad", name, options)


def cross_entropy_grad(graph: Graph, logits: Tensor, labels: Tensor, grad_loss: Tensor, prog: Any, *,
                       reduction: str = "mean", ignore_index: int = -100, name: str = "",
                       options: Mapping[str, Any] | None = None) -> Tensor:
    """Gradient of :func:`cross_entropy` w.r.t. the logits: ``(softmax - onehot) * grad``
    (``/ count`` for mean), 0 on ignored rows. No options.

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops import nn
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=4))
    >>> z = g.add_variable(sp.float32, (1, 2), name="z"); t = g.add_variable(sp.int32, (1,), name="t")
    >>> one = g.add_variable(sp.float32, (), name="one")
    >>> for v in (z, t, one): sp.ops.map_linearly(g, v)
    >>> prog = P.Sequence(); d = nn.cross_entropy_grad(g, z, t, one, prog)
    >>> eng = sp.Engine(g, [prog]); eng.write_tensor(t, [1]); eng.write_tensor(one, 1.0)
    >>> eng.run(0); eng.read_tensor(d).tolist()
    [[0.5, -0.5]]
    """
    return _class_loss_grad(graph, logits, labels, grad_loss, prog, reduction, ignore_index, False,
                            "cross_entropy_grad", name, options)


def mse_loss(graph: Graph, x: Tensor, target: Tensor, prog: Any, *, reduction: str = "mean",
             name: str = "", options: Mapping[str, Any] | None = None) -> Tensor:
    """Mean squared error ``(x - target)^2``, ``reduction`` ``"mean"``/``"sum"`` (0-d, fp32
    accumulation over the tiles' regions, then across tiles) or ``"none"``. No options.

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops import nn
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=4))
    >>> x, t = (g.add_variable(sp.float32, (2,), name=n) for n in ("x", "t"))
    >>> sp.ops.map_linearly(g, x); sp.ops.map_linearly(g, t)
    >>> prog = P.Sequence(); loss = nn.mse_loss(g, x, t, prog)
    >>> eng = sp.Engine(g, [prog]); eng.write_tensor(x, [1, 2]); eng.write_tensor(t, [0, 0])
    >>> eng.run(0); float(eng.read_tensor(loss))
    2.5
    """
    ctx, _ = _start(graph, prog, "mse_loss", name, options, x, target)
    _check_float(ctx, x)
    _check_same(ctx, x, target)
    reduction = _reduction(ctx, reduction)
    if reduction == "none":
        out = _output_like(ctx, x, x.dtype, "loss")
        if x.numel:
            cs = ctx.compute_set()
            _add_regions(ctx, cs, C.mse_codelet(x.dtype, False), out, {"x": x, "t": target, "out": out})
            ctx.execute(cs)
        return out
    if x.numel == 0:
        return _empty_loss(ctx, x.dtype, reduction, 0)
    starts, _, tiles = _regions(ctx.graph, x)
    partial = _variable(ctx, float32, (starts.size, 1), "partials")
    ctx.graph.set_tile_mappings(partial, tiles)
    cs = ctx.compute_set()
    _add_regions(ctx, cs, C.mse_codelet(x.dtype, True), x, {"x": x, "t": target},
                 per_region={"out": partial})
    ctx.execute(cs)
    total = _sum_rows(ctx, partial, tiles)
    scale = 1.0 / x.numel if reduction == "mean" else 1.0
    return _cast(ctx, total, x.dtype, scale, "loss").reshape(())


def mse_loss_grad(graph: Graph, x: Tensor, target: Tensor, grad_loss: Tensor, prog: Any, *,
                  reduction: str = "mean", name: str = "",
                  options: Mapping[str, Any] | None = None) -> Tensor:
    """Gradient of :func:`mse_loss` w.r.t. ``x``: ``2 (x - target) * grad`` (``/ numel`` for
    mean); ``grad_loss`` is 0-d for mean/sum and ``x``-shaped for none. No options.

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops import nn
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=4))
    >>> x, t = (g.add_variable(sp.float32, (2,), name=n) for n in ("x", "t"))
    >>> one = g.add_variable(sp.float32, (), name="one")
    >>> for v in (x, t, one): sp.ops.map_linearly(g, v)
    >>> prog = P.Sequence(); d = nn.mse_loss_grad(g, x, t, one, prog)
    >>> eng = sp.Engine(g, [prog]); eng.write_tensor(x, [1, 2]); eng.write_tensor(one, 1.0)
    >>> eng.run(0); eng.read_tensor(d).tolist()
    [1.0, 2.0]
    """
    ctx, _ = _start(graph, prog, "mse_loss_grad", name, options, x, target, grad_loss)
    _check_float(ctx, x)
    _check_same(ctx, x, target)
    reduction = _reduction(ctx, reduction)
    want = x.shape if reduction == "none" else ()
    if grad_loss.shape != want or grad_loss.dtype != x.dtype:
        raise ctx.error(f"grad_loss {grad_loss.name} {grad_loss.shape} ({grad_loss.dtype}) must have "
                        f"shape {want} and dtype {x.dtype} for reduction {reduction!r}")
    dx = _output_like(ctx, x, x.dtype, "dx")
    if x.numel == 0:
        return dx
    cs_fields: dict[str, Tensor] = {"x": x, "t": target, "dx": dx}
    shared = {}
    if reduction == "none":
        cs_fields["g"] = grad_loss
    else:
        shared["g"] = _loss_coef(ctx, grad_loss, None, 1.0 / x.numel if reduction == "mean" else 1.0)
    cs = ctx.compute_set()
    _add_regions(ctx, cs, C.mse_grad_codelet(x.dtype, reduction == "none"), dx, cs_fields,
                 shared=shared, params={"scale": 1.0})
    ctx.execute(cs)
    return dx
