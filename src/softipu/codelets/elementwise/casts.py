"""Cast semantics: float -> int truncation and saturation, stochastic rounding to half."""

from __future__ import annotations

import numpy as np

from softipu.codelets.elementwise._numerics import _store
from softipu.codelets.halves import HALVES_MIN, from_half, to_half


# -- cast semantics --------------------------------------------------------------------------------
def cast_values(x: np.ndarray, to: np.dtype, out: np.ndarray | None = None) -> np.ndarray:
    """``x`` converted to ``to``: floats round to nearest even; float -> int truncates toward
    zero and saturates (NaN -> 0); -> bool is ``x != 0``; int -> int wraps (two's complement)."""
    x = np.asarray(x)
    to = np.dtype(to)
    if x.dtype == to:
        return _store(x, out)
    if to.kind == "b":
        return _store(x != 0, out)
    if x.dtype.kind == "f" and to.kind in "iu":
        return _store(_float_to_int(x, to), out)
    if x.dtype.kind == "f" and to.kind == "f" and x.size >= HALVES_MIN and x.itemsize + to.itemsize == 6:
        # float32 <-> float16 at a cost independent of the values (codelets/halves.py): same bits
        if out is None or (out.shape == x.shape and not np.may_share_memory(x, out)):
            out = np.empty(x.shape, to) if out is None else out
            (to_half if to == np.float16 else from_half)(x, out)
            return out
    if out is None:
        return x.astype(to)
    np.copyto(out, x, casting="unsafe")
    return out


def _float_to_int(x: np.ndarray, to: np.dtype) -> np.ndarray:
    info = np.iinfo(to)
    y = np.trunc(x.astype(np.float64))  # exact for float16 and float32
    top = float(info.max)  # 2**63 for 64-bit types: not representable as the int
    below_top = np.nextafter(top, 0.0) if to.itemsize == 8 else top
    clipped = np.clip(np.where(np.isnan(y), 0.0, y), float(info.min), below_top)
    r = clipped.astype(to)
    if to.itemsize == 8:
        r = np.where(y >= top, to.type(info.max), r)
    return r


_GOLDEN = 0x9E3779B97F4A7C15
_MASK64 = (1 << 64) - 1


def _uniform24(seed: int, index: np.ndarray) -> np.ndarray:
    """A counter-based uniform in [0, 1) with 24 bits per element: splitmix64 of (seed, index)."""
    key = np.uint64(((seed & _MASK64) * _GOLDEN + 0x632BE59BD9B4E019) & _MASK64)
    z = index.astype(np.uint64)
    z *= np.uint64(_GOLDEN)
    z += key
    t = np.empty_like(z)  # the shifted copy, reused: no temporaries per step
    for shift, mul in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB), (31, None)):
        np.right_shift(z, np.uint64(shift), out=t)
        z ^= t
        if mul is not None:
            z *= np.uint64(mul)
    z >>= np.uint64(40)
    u = z.astype(np.float32)
    u *= np.float32(2.0**-24)
    return u


def stochastic_round_to_half(x: np.ndarray, seed: int, index: np.ndarray) -> np.ndarray:
    """float32 -> float16 rounding up or down with probability proportional to the distance.

    Element ``i`` rounds away from zero iff ``u(seed, index[i]) < (|x| - |lo|) / (|hi| - |lo|)``
    where ``lo``/``hi`` are the float16 neighbours toward/away from zero, so results depend only
    on the seed and each element's index. Values that round to infinity under round-to-nearest
    still do; between the largest half (65504) and that threshold the gap is taken as 32.

    Worked in float32 bits: ``lo`` is ``|x|`` with the 13 mantissa bits fp16 lacks cleared (on
    fp16's subnormal grid of 2**-24 below 2**-14) and ``hi - lo`` one step of that grid; both are
    exact, so the fraction is the exact float32 quotient.
    """
    x = np.asarray(x, np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        a = np.abs(x)
        top = a.view(np.uint32) & np.uint32(0xFFFFE000)
        low = top.view(np.float32)
        gap = (top + np.uint32(0x2000)).view(np.float32) - low  # 65504's step is 32 (its hi is 65536)
        sub = a < np.float32(2.0**-14)
        if sub.any():
            low = np.where(sub, np.floor(a * np.float32(2.0**24)) * np.float32(2.0**-24), low)
            gap = np.where(sub, np.float32(2.0**-24), gap)
        up = _uniform24(seed, np.asarray(index)) < (a - low) / gap
        out = np.copysign(np.where(up, low + gap, low), x).astype(np.float16)
        keep = ~(a < np.float32(65520))  # inf, NaN and what round-to-nearest sends to inf
        if keep.any():
            out = np.where(keep, x.astype(np.float16), out)
    return out
