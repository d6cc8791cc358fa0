"""What every codelet family shares: integer ceiling division, and the written rounding bound
within which a contraction's fast-engine result may differ from the reference interpreter's.

Contractions (AMP/matmul/conv partial products, float reductions) may be evaluated by the fast
engine in another accumulation order than the reference's one vertex at a time (design.md
principle 6): a merged GEMM over a vertex group, BLAS with any blocking. Each order's result is
within ``gamma_k = k u / (1 - k u)`` times the sum of the terms' magnitudes of the exact value
(Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., §3.1 and §3.5, for any order
of summation of ``k`` products), so two orders are within twice that of each other:

    |fast - reference| <= CONTRACTION_C * gamma_k(u) * (|A| . |B|)    element-wise,

``u`` the unit roundoff of the accumulation type (2^-24 for fp32 partials), ``k`` the reduction
length, ``|A| . |B|`` the product of the magnitudes (for a sum of ``x``: ``sum |x|``). Where the
result is then rounded to a narrower type (fp16 outputs or partials), each side's rounding adds
``u_out`` of its magnitude: :func:`contraction_bound` adds ``2 u_out (|A| . |B|)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["CONTRACTION_C", "ceil_div", "contraction_bound", "unit_roundoff"]

# Two accumulation orders, each within gamma_k of the exact sum (see the module docstring).
CONTRACTION_C = 2.0


def ceil_div(a: Any, b: Any) -> Any:
    """``ceil(a / b)`` for ints and int arrays (exact, no float)."""
    return -(-a // b)


def unit_roundoff(dtype: Any) -> float:
    """Half the spacing of floating-point numbers of ``dtype`` at 1: 2^-24 for fp32, 2^-11 fp16."""
    return float(np.finfo(np.dtype(getattr(dtype, "numpy", dtype))).eps) / 2


def contraction_bound(abs_terms: Any, k: int, accumulate: Any = np.float32,
                      out: Any = None) -> np.ndarray:
    """The largest ``|fast - reference|`` allowed, element-wise, for a contraction of length ``k``.

    ``abs_terms``: the sum of the magnitudes of each result's terms, ``|A| . |B|`` for a matmul
    (computed in float64 by the caller), ``sum |x|`` for a reduction. ``accumulate``: the type
    the partial sums are kept in (fp32 by default: the AMP's and the reductions' partials).
    ``out``: the type the result is finally rounded to, where narrower than ``accumulate``.

    >>> import numpy as np
    >>> float(contraction_bound(np.float64(10.0), 100)) == 2 * 100 * 2.0**-24 / (1 - 100 * 2.0**-24) * 10
    True
    """
    u = unit_roundoff(accumulate)
    gamma = k * u / (1 - k * u)
    bound = CONTRACTION_C * gamma * np.asarray(abs_terms, np.float64)
    if out is not None and unit_roundoff(out) > u:
        bound = bound + 2 * unit_roundoff(out) * np.asarray(abs_terms, np.float64)
    return bound
