"""The op vocabularies: :class:`BinaryOp`, :class:`UnaryOp`, :class:`TernaryOp` (popops::
Operation), each member bound to its numpy implementation, cost and accepted kinds.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

import numpy as np

from softipu.codelets.elementwise._numerics import (
    Kinds,
    Result,
    _clamp,
    _count_leading_zeros,
    _divide,
    _erf,
    _float_only,
    _gelu,
    _gelu_erf,
    _OpCost,
    _OpSpec,
    _popcount,
    _power,
    _relu,
    _rsqrt,
    _select,
    _shift_right_logical,
    _sigmoid,
    _ufunc,
)
from softipu.codelets.elementwise.special import BINARY_SPECIAL, UNARY_SPECIAL, _signbit, special_cost

# -- the op vocabularies ---------------------------------------------------------------------------
_F, _N, _A, _I, _IB = Kinds.FLOAT, Kinds.NUMERIC, Kinds.ANY, Kinds.INT, Kinds.INTEGRAL


def _special(name: str, kinds: Kinds = _F) -> _OpSpec:
    """The spec of one op of ``special.py`` (its function and ``SPECIAL_CYCLES`` cost)."""
    return _OpSpec(UNARY_SPECIAL.get(name) or BINARY_SPECIAL[name], special_cost(name), kinds)


class _Op(enum.Enum):
    """An op vocabulary: each member's value is an ``_OpSpec`` (function and cost)."""

    @property
    def fn(self) -> Callable[..., object]:
        return self.value.fn

    @property
    def cost(self) -> _OpCost:
        return self.value.cost


class BinaryOp(_Op):
    """popops BinaryOpType. Costs: [V] from poplibs (ipu-facts §5), [U] softipu estimates."""

    ADD = _OpSpec(_ufunc(np.add), _OpCost(1, 0, 1, 0), _A)  # [V] ADD/MUL {1, natural}
    SUBTRACT = _OpSpec(_ufunc(np.subtract), _OpCost(1, 0, 1, 0), _N)  # as ADD [U]
    MULTIPLY = _OpSpec(_ufunc(np.multiply), _OpCost(1, 0, 1, 0), _A)  # [V]
    DIVIDE = _OpSpec(_divide, _OpCost(10, 2, 21, 4, int_cycles=277), _N)  # [V] f{10,2} h{21,4}
    MAXIMUM = _OpSpec(_ufunc(np.maximum), _OpCost(3, 2, 4, 4), _A)  # [V] f{3,2} h{4,4}
    MINIMUM = _OpSpec(_ufunc(np.minimum), _OpCost(3, 2, 4, 4), _A)  # [V]
    POWER = _OpSpec(_power, _OpCost(40, 1, 40, 1, int_cycles=40), _N)  # exp(b log a) [U]
    REMAINDER = _OpSpec(_ufunc(np.fmod), _OpCost(12, 2, 24, 4, int_cycles=277), _N)  # fmod [U]
    MODULO = _OpSpec(_ufunc(np.remainder), _OpCost(14, 2, 26, 4, int_cycles=280), _N)  # python % [U]
    ATAN2 = _OpSpec(_ufunc(np.arctan2), _OpCost(30, 1, 30, 1), _F)  # [U]
    EQUAL = _OpSpec(_ufunc(np.equal), _OpCost(2, 0, 2, 0, 2), _A, Result.BOOL)  # [U] compare + pack
    NOT_EQUAL = _OpSpec(_ufunc(np.not_equal), _OpCost(2, 0, 2, 0, 2), _A, Result.BOOL)
    LESS_THAN = _OpSpec(_ufunc(np.less), _OpCost(2, 0, 2, 0, 2), _A, Result.BOOL)
    LESS_THAN_EQUAL = _OpSpec(_ufunc(np.less_equal), _OpCost(2, 0, 2, 0, 2), _A, Result.BOOL)
    GREATER_THAN = _OpSpec(_ufunc(np.greater), _OpCost(2, 0, 2, 0, 2), _A, Result.BOOL)
    GREATER_THAN_EQUAL = _OpSpec(_ufunc(np.greater_equal), _OpCost(2, 0, 2, 0, 2), _A, Result.BOOL)
    LOGICAL_AND = _OpSpec(_ufunc(np.logical_and), _OpCost(2, 0, 2, 0, 2), _A, Result.BOOL, False)
    LOGICAL_OR = _OpSpec(_ufunc(np.logical_or), _OpCost(2, 0, 2, 0, 2), _A, Result.BOOL, False)
    LOGICAL_XOR = _OpSpec(_ufunc(np.logical_xor), _OpCost(2, 0, 2, 0, 2), _A, Result.BOOL, False)
    BITWISE_AND = _OpSpec(_ufunc(np.bitwise_and), _OpCost(1, 0, 1, 0, 1), _IB)  # [U]
    BITWISE_OR = _OpSpec(_ufunc(np.bitwise_or), _OpCost(1, 0, 1, 0, 1), _IB)
    BITWISE_XOR = _OpSpec(_ufunc(np.bitwise_xor), _OpCost(1, 0, 1, 0, 1), _IB)
    SHIFT_LEFT = _OpSpec(_ufunc(np.left_shift), _OpCost(1, 0, 1, 0, 2), _I)  # [U]
    SHIFT_RIGHT = _OpSpec(_shift_right_logical, _OpCost(1, 0, 1, 0, 2), _I)  # popops: logical
    SHIFT_RIGHT_SIGN_EXTEND = _OpSpec(_ufunc(np.right_shift), _OpCost(1, 0, 1, 0, 2), _I)
    # special functions and IEEE manipulations: costs are special.SPECIAL_CYCLES' [U] figures
    FMAX = _special("fmax", _N)
    FMIN = _special("fmin", _N)
    COPYSIGN = _special("copysign")
    NEXTAFTER = _special("nextafter")
    HYPOT = _special("hypot")
    LDEXP = _special("ldexp")
    GCD = _special("gcd", _I)
    LCM = _special("lcm", _I)
    POLYGAMMA = _special("polygamma")
    ZETA = _special("zeta")
    CHEBYSHEV_POLYNOMIAL_T = _special("chebyshev_polynomial_t")
    CHEBYSHEV_POLYNOMIAL_U = _special("chebyshev_polynomial_u")
    CHEBYSHEV_POLYNOMIAL_V = _special("chebyshev_polynomial_v")
    CHEBYSHEV_POLYNOMIAL_W = _special("chebyshev_polynomial_w")
    SHIFTED_CHEBYSHEV_POLYNOMIAL_T = _special("shifted_chebyshev_polynomial_t")
    SHIFTED_CHEBYSHEV_POLYNOMIAL_U = _special("shifted_chebyshev_polynomial_u")
    SHIFTED_CHEBYSHEV_POLYNOMIAL_V = _special("shifted_chebyshev_polynomial_v")
    SHIFTED_CHEBYSHEV_POLYNOMIAL_W = _special("shifted_chebyshev_polynomial_w")
    HERMITE_POLYNOMIAL_H = _special("hermite_polynomial_h")
    HERMITE_POLYNOMIAL_HE = _special("hermite_polynomial_he")
    LAGUERRE_POLYNOMIAL_L = _special("laguerre_polynomial_l")
    LEGENDRE_POLYNOMIAL_P = _special("legendre_polynomial_p")
    IGAMMA = _special("igamma")
    IGAMMAC = _special("igammac")


class UnaryOp(_Op):
    """popops UnaryOpType (plus popnn's GELU forms). ROUND rounds half to even."""

    EXPONENT = _OpSpec(_ufunc(np.exp), _OpCost(6, 2, 4, 4), _F)  # [V] EXP f{6,2} h{4,4}
    LOGARITHM = _OpSpec(_ufunc(np.log), _OpCost(12, 2, 4, 4), _F)  # [V]
    TANH = _OpSpec(_ufunc(np.tanh), _OpCost(12, 2, 4, 4), _F)  # [V]
    SIGMOID = _OpSpec(_sigmoid, _OpCost(10, 2, 4, 4), _F)  # [V]
    SQRT = _OpSpec(_ufunc(np.sqrt), _OpCost(10, 2, 23, 4), _F)  # [V]
    RSQRT = _OpSpec(_rsqrt, _OpCost(8, 2, 19, 4), _F)  # [V]
    RELU = _OpSpec(_relu, _OpCost(2, 0, 2, 0, 2), _N)  # [V] {2, vw}
    NEGATE = _OpSpec(_ufunc(np.negative), _OpCost(1, 0, 1, 0, 1), _N)  # [U]
    ABSOLUTE = _OpSpec(_ufunc(np.absolute), _OpCost(1, 0, 1, 0, 1), _N)  # [U]
    EXPONENT_MINUS_ONE = _OpSpec(_ufunc(np.expm1), _OpCost(8, 2, 6, 4), _F)  # as EXP + 2 [U]
    LOGARITHM_ONE_PLUS = _OpSpec(_ufunc(np.log1p), _OpCost(14, 2, 6, 4), _F)  # as LOG + 2 [U]
    CBRT = _OpSpec(_ufunc(np.cbrt), _OpCost(20, 2, 20, 4), _F)  # [U]
    SIN = _OpSpec(_ufunc(np.sin), _OpCost(12, 2, 12, 4), _F)  # [U]
    COS = _OpSpec(_ufunc(np.cos), _OpCost(12, 2, 12, 4), _F)  # [U]
    TAN = _OpSpec(_ufunc(np.tan), _OpCost(24, 2, 24, 4), _F)  # sin / cos [U]
    ERF = _OpSpec(_erf, _OpCost(16, 2, 16, 4), _F)  # rational approximation [U]
    GELU = _OpSpec(_gelu, _OpCost(20, 2, 12, 4), _F)  # tanh + 6 mul/add [U]
    GELU_ERF = _OpSpec(_gelu_erf, _OpCost(22, 2, 22, 4), _F)  # erf + 4 [U]
    SIGNUM = _OpSpec(_ufunc(np.sign), _OpCost(2, 0, 2, 0, 2), _N)  # [U]
    SQUARE = _OpSpec(_ufunc(np.square), _OpCost(1, 0, 1, 0), _N)  # as MUL [U]
    INVERSE = _OpSpec(_ufunc(np.reciprocal), _OpCost(10, 2, 21, 4), _F)  # as DIVIDE [U]
    FLOOR = _OpSpec(_float_only(np.floor), _OpCost(2, 0, 2, 0, 1), _N)  # [U]
    CEIL = _OpSpec(_float_only(np.ceil), _OpCost(2, 0, 2, 0, 1), _N)  # [U]
    ROUND = _OpSpec(_float_only(np.rint), _OpCost(2, 0, 2, 0, 1), _N)  # half to even [U]
    TRUNC = _OpSpec(_float_only(np.trunc), _OpCost(2, 0, 2, 0, 1), _N)  # [U]
    IS_FINITE = _OpSpec(_ufunc(np.isfinite), _OpCost(2, 0, 2, 0, 1), _N, Result.BOOL)  # [U]
    IS_NAN = _OpSpec(_ufunc(np.isnan), _OpCost(2, 0, 2, 0, 1), _N, Result.BOOL)  # [U]
    IS_INF = _OpSpec(_ufunc(np.isinf), _OpCost(2, 0, 2, 0, 1), _N, Result.BOOL)  # [U]
    LOGICAL_NOT = _OpSpec(_ufunc(np.logical_not), _OpCost(1, 0, 1, 0, 1), _A, Result.BOOL)  # [U]
    BITWISE_NOT = _OpSpec(_ufunc(np.invert), _OpCost(1, 0, 1, 0, 1), _IB)  # [U]
    POPCOUNT = _OpSpec(_popcount, _OpCost(1, 0, 1, 0, 2), _I)  # popc instruction [U]
    COUNT_LEADING_ZEROS = _OpSpec(_count_leading_zeros, _OpCost(1, 0, 1, 0, 2), _I)  # clz [U]
    # special functions and IEEE manipulations: costs are special.SPECIAL_CYCLES' [U] figures
    FREXP_MANTISSA = _special("frexp_mantissa")
    FREXP_EXPONENT = _special("frexp_exponent")
    I0 = _special("i0")
    ERFC = _special("erfc")
    ERFINV = _special("erfinv")
    ERFCX = _special("erfcx")
    NDTRI = _special("ndtri")
    LOG_NDTR = _special("log_ndtr")
    I0E = _special("i0e")
    I1 = _special("i1")
    I1E = _special("i1e")
    BESSEL_J0 = _special("bessel_j0")
    BESSEL_J1 = _special("bessel_j1")
    BESSEL_Y0 = _special("bessel_y0")
    BESSEL_Y1 = _special("bessel_y1")
    MODIFIED_BESSEL_I0 = _special("modified_bessel_i0")
    MODIFIED_BESSEL_I1 = _special("modified_bessel_i1")
    MODIFIED_BESSEL_K0 = _special("modified_bessel_k0")
    MODIFIED_BESSEL_K1 = _special("modified_bessel_k1")
    SCALED_MODIFIED_BESSEL_K0 = _special("scaled_modified_bessel_k0")
    SCALED_MODIFIED_BESSEL_K1 = _special("scaled_modified_bessel_k1")
    SPHERICAL_BESSEL_J0 = _special("spherical_bessel_j0")
    AIRY_AI = _special("airy_ai")
    LGAMMA = _special("lgamma")
    DIGAMMA = _special("digamma")
    SIGNBIT = _OpSpec(_signbit, special_cost("signbit"), _N, Result.BOOL)


class TernaryOp(_Op):
    """popops TernaryOpType: SELECT(cond, a, b) = cond ? a : b; CLAMP(x, lo, hi)."""

    SELECT = _OpSpec(_select, _OpCost(2, 0, 2, 0, 2), _A)  # [U]
    CLAMP = _OpSpec(_clamp, _OpCost(4, 2, 6, 4, 4), _N)  # max then min [U]


_CAST_COST = _OpCost(2, 0, 2, 0, 2)  # f32v2tof16-style conversions, one vector per 2 cycles [U]
