"""float32 <-> float16 conversions at a cost that does not depend on the values.

numpy converts float32 to float16 in a scalar loop (~5 ns an element here) that raises the
floating-point status flag for every result that underflows (a subnormal or zero half made from a
number that is not exactly one): ~100 ns an element. fp16 training's gradients underflow all the
time (the logits' gradient of a large vocabulary is mostly below 2**-14), so a step spent most of
its cast time in that flag. :func:`to_half` first rounds every magnitude below 2**-14 onto the
half's subnormal grid in float32 (``(|x| + 0.75) - 0.75``: 0.75's last bit is 2**-24, the grid's
step, and float32 addition rounds to nearest even, as the cast does), with its sign; numpy's cast of
those exact values raises nothing. The halves are numpy's own bits: only the float32 operand
changes, to the value the cast rounds to; overflow, inf and NaN reach numpy's cast untouched (NaN
payloads and the overflow trap of ``debug.floatingPointExceptions`` included).

The other way, numpy widens a subnormal half in a loop of shifts (~14 ns an element, ~2.5 for a
normal one); :func:`from_half` looks every half up in a table of all 65,536 of them, made by
numpy's own cast (~2.2 ns an element, whatever the values).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["to_half", "to_half_contiguous", "from_half", "HALF_TINY", "HALVES_MIN"]

# Below this magnitude a float32 rounds onto float16's subnormal grid (steps of 2**-24).
HALF_TINY = np.float32(2.0**-14)
# A chunk of this many elements keeps the pre-rounding's temporaries in cache.
_CHUNK = 1 << 14
# A chunk with fewer tiny values than this is cast as it is: their flags (~100 ns each) cost less
# than rounding the whole chunk first (~3.5 ns an element).
_FEW = _CHUNK // 32
# Below this many elements numpy's cast is called as it is: a few flags cost less than the checks.
HALVES_MIN = 1 << 10


def to_half(x: np.ndarray, out: np.ndarray) -> None:
    """``out[...] = x`` for float32 ``x`` and float16 ``out`` of one shape, bitwise numpy's cast
    (module doc). ``out`` may be strided; it must not share memory with ``x``."""
    if x.size < HALVES_MIN:
        np.copyto(out, x, casting="unsafe")
        return
    if x.flags.c_contiguous and out.flags.c_contiguous:
        to_half_contiguous(x.reshape(-1), out.reshape(-1))
    else:
        _strided(x, out)


def _strided(x: np.ndarray, out: np.ndarray) -> None:
    """Either side strided: converted along the outermost axis in pieces of about a chunk, each
    through a contiguous float32 copy."""
    step = max(1, _CHUNK // max(math.prod(x.shape[1:]), 1))
    for lo in range(0, x.shape[0], step):
        buf = np.ascontiguousarray(x[lo:lo + step]).reshape(-1)
        flat = np.empty(buf.size, np.float16)
        to_half_contiguous(buf, flat)
        dst = out[lo:lo + step]
        np.copyto(dst, flat.reshape(dst.shape))


def to_half_contiguous(x: np.ndarray, out: np.ndarray) -> None:
    """:func:`to_half` of one-dimensional contiguous arrays."""
    m = np.empty(min(_CHUNK, x.size), np.float32)
    r = np.empty_like(m)
    small = np.empty(m.size, bool)
    for lo in range(0, x.size, _CHUNK):
        hi = min(lo + _CHUNK, x.size)
        _chunk(x[lo:hi], out[lo:hi], m[:hi - lo], r[:hi - lo], small[:hi - lo])


def _chunk(x: np.ndarray, out: np.ndarray, m: np.ndarray, r: np.ndarray, small: np.ndarray) -> None:
    np.abs(x, out=m)
    np.less(m, HALF_TINY, out=small)  # (NaN is not: it keeps its bits)
    if np.count_nonzero(small) < _FEW:  # a few flags cost less than rounding the chunk first
        np.copyto(out, x, casting="unsafe")
        return
    np.add(m, np.float32(0.75), out=r)
    r -= np.float32(0.75)  # |x| on the subnormal grid, rounded to nearest even
    np.copysign(r, x, out=r)
    np.copyto(m, x)
    np.copyto(m, r, where=small)
    np.copyto(out, m, casting="unsafe")


# Every float16's float32 value, by numpy's cast (NaN payloads included): indexed by its bits.
_WIDE = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)
_WIDE.flags.writeable = False


def from_half(h: np.ndarray, out: np.ndarray) -> None:
    """``out[...] = h`` for float16 ``h`` and float32 ``out`` of one shape, bitwise numpy's cast
    (module doc). ``out`` must not share memory with ``h``."""
    if not out.flags.c_contiguous or h.size < HALVES_MIN or h.shape != out.shape:
        np.copyto(out, h)
        return
    bits, flat = np.ascontiguousarray(h).view(np.uint16).reshape(-1), out.reshape(-1)
    for lo in range(0, bits.size, _CHUNK):
        np.take(_WIDE, bits[lo:lo + _CHUNK], out=flat[lo:lo + _CHUNK], mode="clip")
