"""Numerics of the special-function and IEEE-manipulation ops (erfc, lgamma, Bessel functions,
orthogonal polynomials, fmax, copysign, nextafter...).

Each is the host implementation of one popops-style unary or binary vertex; their costs are the
``[U]`` figures of :data:`SPECIAL_CYCLES`. numpy has the IEEE manipulations (``fmax``,
``nextafter``...). It has no Bessel, gamma-family or orthogonal-polynomial functions, and those
are evaluated with ``torch.special`` (the frontend that emits these ops needs torch anyway),
imported when first used; float16 computes in float32 and rounds once, as the IPU's f16
transcendental functions do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from softipu.codelets.elementwise._numerics import _f32, _OpCost, _store
from softipu.errors import DTypeError

# [U] cycles per element (float32, float16) of each special-function vertex: softipu estimates
# from the length of the series/rational approximations Cephes (which PyTorch's kernels follow)
# evaluates, at about 2 cycles per multiply-add and 10 per divide, exp or log.
SPECIAL_CYCLES: dict[str, tuple[int, int]] = {
    "fmax": (3, 4), "fmin": (3, 4), "copysign": (2, 2), "signbit": (2, 2), "nextafter": (6, 6),
    "hypot": (14, 14), "ldexp": (8, 8), "frexp_mantissa": (6, 6), "frexp_exponent": (6, 6),
    "erfc": (30, 30), "erfinv": (40, 40), "erfcx": (40, 40), "ndtri": (50, 50), "log_ndtr": (50, 50),
    "lgamma": (60, 60), "digamma": (60, 60), "i0": (70, 70), "i0e": (70, 70), "i1": (70, 70),
    "i1e": (70, 70), "bessel_j0": (80, 80), "bessel_j1": (80, 80), "bessel_y0": (90, 90),
    "bessel_y1": (90, 90), "modified_bessel_i0": (70, 70), "modified_bessel_i1": (70, 70),
    "modified_bessel_k0": (90, 90), "modified_bessel_k1": (90, 90),
    "scaled_modified_bessel_k0": (90, 90), "scaled_modified_bessel_k1": (90, 90),
    "spherical_bessel_j0": (40, 40), "airy_ai": (120, 120), "zeta": (150, 150),
    "polygamma": (180, 180), "igamma": (200, 200), "igammac": (200, 200),
    # orthogonal polynomials: the three-term recurrence, ~4 cycles per degree; figure for n ~ 16
    "chebyshev_polynomial_t": (64, 64), "chebyshev_polynomial_u": (64, 64),
    "chebyshev_polynomial_v": (64, 64), "chebyshev_polynomial_w": (64, 64),
    "shifted_chebyshev_polynomial_t": (64, 64), "shifted_chebyshev_polynomial_u": (64, 64),
    "shifted_chebyshev_polynomial_v": (64, 64), "shifted_chebyshev_polynomial_w": (64, 64),
    "hermite_polynomial_h": (64, 64), "hermite_polynomial_he": (64, 64),
    "laguerre_polynomial_l": (64, 64), "legendre_polynomial_p": (64, 64),
    "gcd": (40, 40), "lcm": (50, 50),
}


def special_cost(name: str) -> _OpCost:
    """The ``_OpCost`` of one special op: one element per loop, integers at the float figure."""
    f, h = SPECIAL_CYCLES[name]
    return _OpCost(f, 1, h, 1, int_cycles=f)


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is installed with softipu[torch]
        raise DTypeError("this special function is evaluated with torch.special on the host; "
                         "install softipu[torch]") from exc
    return torch


def _via_torch(fn_name: str) -> Callable[..., Any]:
    """A unary or binary numpy function computed by ``torch.special.<fn_name>`` (or ``torch.<>``)."""
    def apply(*xs: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        torch = _torch()
        fn = getattr(torch.special, fn_name, None) or getattr(torch, fn_name)
        dtype = np.result_type(*xs)
        args = [torch.from_numpy(np.array(_f32(np.asarray(x)))) for x in xs]
        return _store(fn(*args).numpy(), out, dtype)
    apply.__name__ = fn_name
    return apply


def _polygamma(n: np.ndarray, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """polygamma(n, x) with ``n`` broadcast against ``x`` (one torch call per distinct order)."""
    torch = _torch()
    n, x = np.broadcast_arrays(np.asarray(n), np.asarray(x))
    xs = torch.from_numpy(np.ascontiguousarray(_f32(x)))
    result = np.empty(x.shape, np.float32)
    for order in np.unique(n):
        mask = n == order
        result[mask] = torch.polygamma(int(order), xs).numpy()[mask]
    return _store(result, out, x.dtype)


def _unary_np(f: Callable[..., Any], result_dtype: Any = None) -> Callable[..., Any]:
    def apply(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        return _store(f(_f32(x)), out, result_dtype or x.dtype)
    apply.__name__ = getattr(f, "__name__", "special")
    return apply


def _binary_np(f: Callable[..., Any]) -> Callable[..., Any]:
    def apply(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        dtype = np.result_type(a, b)
        return _store(f(a, b), out, dtype)
    apply.__name__ = getattr(f, "__name__", "special")
    return apply


def _frexp_mantissa(x: np.ndarray) -> np.ndarray:
    return np.frexp(x)[0]


def _frexp_exponent(x: np.ndarray) -> np.ndarray:
    return np.frexp(x)[1].astype(x.dtype)


def _ldexp(x: np.ndarray, e: np.ndarray) -> np.ndarray:
    return np.asarray(x) * np.exp2(np.asarray(e, dtype=np.result_type(x, e)))


def _signbit(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    return _store(np.signbit(x), out, np.bool_)


UNARY_SPECIAL: dict[str, Callable[..., Any]] = {
    "frexp_mantissa": _unary_np(_frexp_mantissa), "frexp_exponent": _unary_np(_frexp_exponent),
    "i0": _unary_np(np.i0),
    **{name: _via_torch(name) for name in (
        "erfc", "erfinv", "erfcx", "ndtri", "log_ndtr", "i0e", "i1", "i1e", "bessel_j0",
        "bessel_j1", "bessel_y0", "bessel_y1", "modified_bessel_i0", "modified_bessel_i1",
        "modified_bessel_k0", "modified_bessel_k1", "scaled_modified_bessel_k0",
        "scaled_modified_bessel_k1", "spherical_bessel_j0", "airy_ai")},
    "lgamma": _via_torch("lgamma"), "digamma": _via_torch("digamma"),
}
BINARY_SPECIAL: dict[str, Callable[..., Any]] = {
    "fmax": _binary_np(np.fmax), "fmin": _binary_np(np.fmin), "copysign": _binary_np(np.copysign),
    "nextafter": _binary_np(np.nextafter), "hypot": _binary_np(np.hypot), "ldexp": _binary_np(_ldexp),
    "gcd": _binary_np(np.gcd), "lcm": _binary_np(np.lcm), "polygamma": _polygamma,
    **{name: _via_torch(name) for name in (
        "zeta", "chebyshev_polynomial_t", "chebyshev_polynomial_u", "chebyshev_polynomial_v",
        "chebyshev_polynomial_w", "shifted_chebyshev_polynomial_t", "shifted_chebyshev_polynomial_u",
        "shifted_chebyshev_polynomial_v", "shifted_chebyshev_polynomial_w", "hermite_polynomial_h",
        "hermite_polynomial_he", "laguerre_polynomial_l", "legendre_polynomial_p")},
    "igamma": _via_torch("gammainc"), "igammac": _via_torch("gammaincc"),
}
