"""Lowerings of ATen's special functions and IEEE manipulations (``erfc``, ``lgamma``,
``special_bessel_j0``, ``special_chebyshev_polynomial_t``, ``fmax``, ``copysign``, ``frexp``...)
onto the special-function vertices of ``softipu.codelets.elementwise.special``: one fused
``map`` compute set each, in the node's result dtype (integers promote to float as in torch).
"""

from __future__ import annotations

from typing import Any

from softipu.dtypes import int32
from softipu.frontends.torch.lowerings.pointwise import _cast_all, _map
from softipu.frontends.torch.registry import register_lowering
from softipu.graph.tensor import Tensor
from softipu.ops.elementwise import E

__all__: list[str] = []

X = E.input(0)

# ATen name -> the op name of ``softipu.ops.elementwise`` (``E.<name>``).
_UNARY = {
    "erfc": "erfc", "erfinv": "erfinv", "lgamma": "lgamma", "digamma": "digamma", "i0": "i0",
    "special_i0e": "i0e", "special_i1": "i1", "special_i1e": "i1e", "special_ndtri": "ndtri",
    "special_erfcx": "erfcx", "special_log_ndtr": "log_ndtr", "special_airy_ai": "airy_ai",
    **{f"special_{n}": n for n in (
        "bessel_j0", "bessel_j1", "bessel_y0", "bessel_y1", "modified_bessel_i0", "modified_bessel_i1",
        "modified_bessel_k0", "modified_bessel_k1", "scaled_modified_bessel_k0",
        "scaled_modified_bessel_k1", "spherical_bessel_j0")},
}
_BINARY = {
    "fmax": "fmax", "fmin": "fmin", "copysign": "copysign", "nextafter": "nextafter", "hypot": "hypot",
    "ldexp": "ldexp", "igamma": "igamma", "igammac": "igammac", "special_zeta": "zeta", "gcd": "gcd",
    "lcm": "lcm",
    **{f"special_{n}": n for n in (
        "chebyshev_polynomial_t", "chebyshev_polynomial_u", "chebyshev_polynomial_v",
        "chebyshev_polynomial_w", "shifted_chebyshev_polynomial_t", "shifted_chebyshev_polynomial_u",
        "shifted_chebyshev_polynomial_v", "shifted_chebyshev_polynomial_w", "hermite_polynomial_h",
        "hermite_polynomial_he", "laguerre_polynomial_l", "legendre_polynomial_p")},
}


def _unary(op: str) -> Any:
    def lower(ctx: Any, node: Any, x: Tensor) -> Tensor:
        return _map(ctx, getattr(E, op)(X), [ctx.cast(x, ctx.out_dtype())])
    return lower


def binary_map(ctx: Any, make: Any, a: Any, b: Any) -> Tensor:
    """``make(ea, eb)`` over operands that may be tensors or numbers, in the result dtype."""
    a, b = _cast_all(ctx, ctx.out_dtype(), a, b)
    tensors = [v for v in (a, b) if isinstance(v, Tensor)]
    ea = E.input(0) if isinstance(a, Tensor) else E.const(a)
    eb = E.input(len(tensors) - 1) if isinstance(b, Tensor) else E.const(b)
    if not tensors:
        a = ctx.constant(a, ctx.out_dtype(), (), "a")
        tensors, ea = [a], E.input(0)
    return _map(ctx, make(ea, eb), tensors)


def _binary(op: str) -> Any:
    def lower(ctx: Any, node: Any, a: Any, b: Any) -> Tensor:
        return binary_map(ctx, getattr(E, op), a, b)
    return lower


for _aten, _op in _UNARY.items():
    register_lowering(f"aten::{_aten}", _unary(_op))
for _aten, _op in _BINARY.items():
    register_lowering(f"aten::{_aten}", _binary(_op))


@register_lowering("aten::polygamma")
def _polygamma(ctx: Any, node: Any, n: int, x: Tensor) -> Tensor:
    return _map(ctx, E.polygamma(float(n), X), [ctx.cast(x, ctx.out_dtype())])


@register_lowering("aten::signbit")
def _signbit(ctx: Any, node: Any, x: Tensor) -> Tensor:
    return _map(ctx, E.signbit(X), [x])


@register_lowering("aten::frexp.Tensor")
def _frexp(ctx: Any, node: Any, x: Tensor) -> tuple[Tensor, Tensor]:
    mantissa = _map(ctx, E.frexp_mantissa(X), [x], "_mantissa")
    exponent = _map(ctx, E.cast(E.frexp_exponent(X), int32), [x], "_exponent")
    return mantissa, ctx.cast(exponent, ctx.out_dtype(1))


@register_lowering("aten::bitwise_left_shift")
def _shift_left(ctx: Any, node: Any, a: Any, b: Any) -> Tensor:
    return binary_map(ctx, E.shift_left, a, b)


@register_lowering("aten::bitwise_right_shift")
def _shift_right(ctx: Any, node: Any, a: Any, b: Any) -> Tensor:
    return binary_map(ctx, E.shift_right_arithmetic, a, b)
