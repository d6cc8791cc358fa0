"""float32 <-> float16 conversions at a cost that does not depend on the values.

numpy converts float32 to float16 in a scalar loop (~4 ns an element here) that raises the
floating-point status flag for every result that underflows (a subnormal or zero half made from a
number that is not exactly one): ~100 ns an element. fp16 training's gradients underflow all the
time (the logits' gradient of a large vocabulary is mostly below 2**-14), so a step spent most of
its cast time in that flag. :func:`to_half` makes the half's bits with a dozen vector passes over
a chunk instead (~3 ns an element, whatever the values), for chunks whose magnitudes all round to
a finite half: ``c``, a power of two 2**13 times |x|'s leading bit and at least 0.5, puts the
half's last place (2**-24 on the subnormal grid) at float32's last place of ``|x| + c``, so that
float32 addition rounds ``|x|`` to the half's grid, to nearest even, as the cast does; the sum's
low bits are then the half's mantissa, and ``c``'s exponent gives the half's (module's
``_chunk``). A chunk holding an infinity, a NaN or a value that overflows goes through numpy's own
cast (NaN payloads and the overflow trap of ``debug.floatingPointExceptions`` included), its
values below 2**-14 first rounded onto the half's subnormal grid in float32 (``(|x| + 0.75) -
0.75``: 0.75's last bit is 2**-24), so that no underflow flag is raised. Either way the bits are
numpy's.

The other way, numpy widens a subnormal half in a loop of shifts (~14 ns an element, ~2.5 for a
normal one); :func:`from_half` looks every half up in a table of all 65,536 of them, made by
numpy's own cast (~2.2 ns an element, whatever the values).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["to_half", "to_half_contiguous", "from_half", "widened", "HALF_TINY", "HALVES_MIN"]

# Below this magnitude a float32 rounds onto float16's subnormal grid (steps of 2**-24).
HALF_TINY = np.float32(2.0**-14)
# A chunk of this many elements keeps the passes' arrays (1.3 MiB together) in a core's cache; a
# dozen numpy calls a chunk cost ~1 us each, so smaller chunks paid for them (16 K: 4.5 ns an
# element, 64 K: 3.1, 128 K: 2.9).
_CHUNK = 1 << 16
# A chunk smaller than this (an array's last) with fewer tiny values than 1 in 32 is cast as it
# is: the passes' calls cost more than numpy's loop and those values' flags (~100 ns each).
_SMALL = 1 << 14
# Below this many elements numpy's cast is called as it is: a few flags cost less than the checks.
HALVES_MIN = 1 << 10
# |x| from here on (its bits as an unsigned integer: 65520, inf, NaN) rounds to inf or is NaN.
_BIG = np.uint32(0x477FF000)
_MAGNITUDE, _EXPONENT = np.uint32(0x7FFFFFFF), np.uint32(0x7F800000)
_HALVES = np.full(_CHUNK, 0.5, np.float32)  # the least ``c``: 0.5's last place is 2**-24
_HALVES.flags.writeable = False
_U13, _SHIFT13, _SIGN, _BIAS = np.uint32(13 << 23), np.uint32(13), np.uint32(0x8000), np.uint16(0x0800)
_SHIFT16 = np.uint32(16)


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
    a = np.empty(min(_CHUNK, x.size), np.uint32)
    c = np.empty_like(a)
    for lo in range(0, x.size, _CHUNK):
        hi = min(lo + _CHUNK, x.size)
        _chunk(x[lo:hi], out[lo:hi], a[:hi - lo], c[:hi - lo])


def _chunk(x: np.ndarray, out: np.ndarray, a: np.ndarray, c: np.ndarray) -> None:
    bits = x.view(np.uint32)
    np.bitwise_and(bits, _MAGNITUDE, out=a)
    if a.max() >= _BIG or (x.size < _SMALL and _few_tiny(a)):
        _cast(x, out, a.view(np.float32), c.view(np.float32))
        return
    np.bitwise_and(a, _EXPONENT, out=c)
    c += _U13  # 2**13 times |x|'s leading bit: its last place is the half's
    fc = c.view(np.float32)
    np.maximum(fc, _HALVES[:x.size], out=fc)  # (an array: numpy's max with a scalar is slower)
    fa = a.view(np.float32)
    np.add(fa, fc, out=fa)  # c + |x| rounded to the half's grid: the half's mantissa in the low bits
    np.right_shift(c, _SHIFT13, out=c)
    a += c  # + c's exponent at the half's: the half's magnitude + 0xF800, modulo 2**16
    np.right_shift(bits, _SHIFT16, out=c)
    c &= _SIGN
    a += c
    half = out.view(np.uint16)
    np.copyto(half, a, casting="unsafe")  # the low 16 bits
    half += _BIAS  # (0xF800 + 0x0800 = 2**16)


def _few_tiny(a: np.ndarray) -> bool:
    """Whether fewer than 1 in 32 of the magnitudes' bits ``a`` are below 2**-14."""
    return np.count_nonzero(a.view(np.float32) < HALF_TINY) < a.size // 32


def _cast(x: np.ndarray, out: np.ndarray, m: np.ndarray, r: np.ndarray) -> None:
    """numpy's cast of a chunk (``m`` holds |x|), its values below 2**-14 first rounded onto the
    subnormal grid in float32 (module doc): no underflow flags."""
    small = m < HALF_TINY  # (NaN is not: it keeps its bits)
    if np.count_nonzero(small) < small.size // 32:  # a few flags cost less than rounding first
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
    if h.size < HALVES_MIN or h.shape != out.shape:
        np.copyto(out, h)
        return
    if not out.flags.c_contiguous:  # widened into a contiguous array, then copied (float32 bits)
        np.copyto(out, widened(h))
        return
    bits, flat = np.ascontiguousarray(h).view(np.uint16).reshape(-1), out.reshape(-1)
    for lo in range(0, bits.size, _CHUNK):
        np.take(_WIDE, bits[lo:lo + _CHUNK], out=flat[lo:lo + _CHUNK], mode="clip")


def widened(h: np.ndarray) -> np.ndarray:
    """float16 ``h`` as a new float32 array of its shape (:func:`from_half`)."""
    out = np.empty(h.shape, np.float32)
    from_half(h, out)
    return out
