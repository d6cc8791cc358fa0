"""Lowerings of ATen's random-number ops beyond ``rand``/``randn``: the in-place-style samplers
(``uniform``, ``normal_functional``, ``exponential``, ``cauchy``, ``geometric``, ``log_normal``,
``bernoulli.p``), ``normal`` with tensor mean/std, ``randint``, ``multinomial`` and
``rrelu_with_noise_functional``. Each draws poprand's uniform or normal samples
(``softipu.ops.random``, seeded from the device seed with a distinct modifier per op) and
transforms them elementwise by the distribution's inverse CDF in one fused ``map``.
"""

from __future__ import annotations

import math
from typing import Any

from softipu.dtypes import float32
from softipu.frontends.torch.lowerings.pointwise import _map
from softipu.frontends.torch.registry import register_lowering
from softipu.graph.tensor import Tensor
from softipu.ops import random as rnd
from softipu.ops.elementwise import E
from softipu.ops.indexing import top_k

__all__: list[str] = []

U = E.input(0)


def _draw(ctx: Any, kind: str, shape: Any, suffix: str = "/u", **kw: Any) -> Tensor:
    fn = rnd.uniform if kind == "uniform" else rnd.normal
    return fn(ctx.graph, ctx.prog, shape=tuple(shape), dtype=float32, seed=ctx.seed(),
              seed_modifier=ctx.seed_modifier(), name=f"{ctx.name}{suffix}", **kw)


def _sampler(kind: str, transform: Any) -> Any:
    """Lowering of ``op(self, *params)``: samples of self's shape, ``transform(E, *params)``."""
    def lower(ctx: Any, node: Any, x: Tensor, *params: Any, **kwargs: Any) -> Tensor:
        sample = _draw(ctx, kind, ctx.out_shape())
        return _map(ctx, E.cast(transform(*params), ctx.out_dtype()), [sample])
    return lower


register_lowering("aten::uniform", _sampler(
    "uniform", lambda lo=0.0, hi=1.0: E.add(E.mul(U, float(hi) - float(lo)), float(lo))))
register_lowering("aten::normal_functional", _sampler(
    "normal", lambda mean=0.0, std=1.0: E.add(E.mul(U, float(std)), float(mean))))
register_lowering("aten::log_normal", _sampler(
    "normal", lambda mean=1.0, std=2.0: E.exp(E.add(E.mul(U, float(std)), float(mean)))))
register_lowering("aten::exponential", _sampler(
    "uniform", lambda lambd=1.0: E.div(E.neg(E.log1p(E.neg(U))), float(lambd))))
register_lowering("aten::cauchy", _sampler(
    "uniform", lambda median=0.0, sigma=1.0: E.add(E.mul(E.tan(E.mul(E.sub(U, 0.5), math.pi)),
                                                         float(sigma)), float(median))))
register_lowering("aten::geometric", _sampler(
    "uniform", lambda p: E.ceil(E.div(E.log1p(E.neg(U)), math.log1p(-float(p)) if p < 1 else -math.inf))))
register_lowering("aten::bernoulli.p", _sampler("uniform", lambda p=0.5: E.lt(U, float(p))))


@register_lowering("aten::bernoulli")
def _bernoulli(ctx: Any, node: Any, p: Tensor, **kwargs: Any) -> Tensor:
    u = _draw(ctx, "uniform", ctx.out_shape())
    return _map(ctx, E.cast(E.lt(U, E.input(1)), ctx.out_dtype()), [u, ctx.cast(p, float32)])


def _normal(ctx: Any, mean: Any, std: Any) -> Tensor:
    z = _draw(ctx, "normal", ctx.out_shape())
    tensors = [z] + [ctx.cast(v, float32).broadcast(ctx.out_shape()) for v in (mean, std)
                     if isinstance(v, Tensor)]
    args, i = [], 1
    for v in (mean, std):
        if isinstance(v, Tensor):
            args.append(E.input(i))
            i += 1
        else:
            args.append(E.const(float(v)))
    return _map(ctx, E.cast(E.add(E.mul(U, args[1]), args[0]), ctx.out_dtype()), tensors)


@register_lowering("aten::normal.Tensor_Tensor")
def _normal_tt(ctx: Any, node: Any, mean: Tensor, std: Tensor, **kwargs: Any) -> Tensor:
    return _normal(ctx, mean, std)


@register_lowering("aten::normal.Tensor_float")
def _normal_tf(ctx: Any, node: Any, mean: Tensor, std: float = 1.0, **kwargs: Any) -> Tensor:
    return _normal(ctx, mean, std)


@register_lowering("aten::normal.float_Tensor")
def _normal_ft(ctx: Any, node: Any, mean: float, std: Tensor, **kwargs: Any) -> Tensor:
    return _normal(ctx, mean, std)


@register_lowering("aten::normal.float_float")
def _normal_ff(ctx: Any, node: Any, mean: float, std: float, size: Any, **kwargs: Any) -> Tensor:
    return _normal(ctx, mean, std)


def _randint(ctx: Any, low: int, high: int) -> Tensor:
    """``floor(low + u (high - low))``: integers uniform in ``[low, high)``."""
    u = _draw(ctx, "uniform", ctx.out_shape())
    value = E.floor(E.add(E.mul(U, float(high - low)), float(low)))
    value = E.clamp(value, float(low), float(max(low, high - 1)))  # u's rounding up to 1.0
    return _map(ctx, E.cast(value, ctx.out_dtype()), [u])


@register_lowering("aten::randint")
def _randint_high(ctx: Any, node: Any, high: int, size: Any, **kwargs: Any) -> Tensor:
    return _randint(ctx, 0, int(high))


@register_lowering("aten::randint.low")
def _randint_low(ctx: Any, node: Any, low: int, high: int, size: Any, **kwargs: Any) -> Tensor:
    return _randint(ctx, int(low), int(high))


@register_lowering("aten::randint_like")
def _randint_like(ctx: Any, node: Any, x: Tensor, high: int, **kwargs: Any) -> Tensor:
    return _randint(ctx, 0, int(high))


@register_lowering("aten::randint_like.low_dtype")
def _randint_like_low(ctx: Any, node: Any, x: Tensor, low: int, high: int, **kwargs: Any) -> Tensor:
    return _randint(ctx, int(low), int(high))


@register_lowering("aten::multinomial")
def _multinomial(ctx: Any, node: Any, p: Tensor, num_samples: int, replacement: bool = False,
                 **kwargs: Any) -> Tensor:
    """The Gumbel-max trick: the indices of the largest ``log p - log(-log u)``; without
    replacement the top ``num_samples`` of one draw, with replacement the top one of each of
    ``num_samples`` independent draws."""
    p = ctx.cast(p, float32)
    n = p.shape[-1]
    k = int(num_samples)
    if replacement:
        p = p.reshape(p.shape[:-1] + (1, n)).broadcast(p.shape[:-1] + (k, n))
    u = _draw(ctx, "uniform", p.shape)
    keys = _map(ctx, E.sub(E.log(E.input(1)), E.log(E.neg(E.log(E.add(U, 1e-20))))), [u, p], "/keys")
    _, index = top_k(ctx.graph, keys, ctx.prog, k=1 if replacement else k, name=ctx.name)
    if replacement:
        index = index.reshape(index.shape[:-1])
    return ctx.cast(index, ctx.out_dtype())


@register_lowering("aten::rrelu_with_noise_functional")
def _rrelu(ctx: Any, node: Any, x: Tensor, noise: Tensor, lower: float = 0.125, upper: float = 1 / 3,
           training: bool = False, generator: Any = None) -> tuple[Tensor, Tensor]:
    """Negative inputs scaled by a slope uniform in ``[lower, upper]`` (training) or by their
    mean (inference); ``noise_out`` holds each element's slope (1 where ``x >= 0``)."""
    dtype = ctx.out_dtype(0)
    x = ctx.cast(x, dtype)
    lo, hi = float(lower), float(upper)
    if training:
        u = _draw(ctx, "uniform", x.shape)
        slope, inputs = E.add(E.mul(E.input(1), hi - lo), lo), [x, u]
    else:
        slope, inputs = E.const((lo + hi) / 2), [x]
    X = E.input(0)
    out = _map(ctx, E.select(E.ge(X, 0.0), X, E.mul(X, slope)), inputs, "/out")
    if not training:
        return out, ctx.cast(noise, ctx.out_dtype(1))
    noise_out = _map(ctx, E.cast(E.select(E.ge(X, 0.0), 1.0, slope), ctx.out_dtype(1)), inputs, "/noise")
    return out, noise_out


@register_lowering("aten::empty_permuted")
def _empty_permuted(ctx: Any, node: Any, size: Any, physical_layout: Any, **kwargs: Any) -> Tensor:
    """Uninitialised memory in torch: zeros here, like ``empty``."""
    return ctx.constant(0, ctx.out_dtype(), ctx.out_shape())

