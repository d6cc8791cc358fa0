"""poprand-style random codelets: a counter-based generator keyed by (seed, element index).

Every element draws its bits from Philox4x32-10 (Salmon et al., "Parallel random numbers: as
easy as 1, 2, 3", SC 2011) with

* **key** = the 64-bit seed (two uint32 words, read at run time from a seed tensor),
* **counter** = (element index low word, element index high word, seed modifier, draw).

The element index is the element's position in the op's output, so a tensor's values depend
only on the seed, the modifier and its shape — never on the tile count, the tile mapping or how
the engine batches vertices — and no two elements (on the same tile or not) share a stream.
A draw yields four uint32 words; rejection sampling (truncated normal) takes further draws.

Cycle estimates are documented assumptions **[U]**: the IPU's hardware PRNG gives 64 bits per
worker per cycle (ipu-facts.md §1 names a per-tile PRNG; poprand's estimators are not in §5), so a
vertex costs a fixed overhead plus, per worker, one cycle per 64 random bits and the transform's
cycles per vector.
"""

from __future__ import annotations

import enum
from functools import cache

import numpy as np

from softipu.dtypes import DType, float32, int64, uint32
from softipu.graph.vertex import Input, MultiVertex, Output, Param, Vertex
from softipu.target import Target

__all__ = ["Distribution", "philox4x32", "random_codelet", "dropout_codelet"]

_M0, _M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
_W0, _W1 = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)
_LO = np.uint64(0xFFFFFFFF)
_SHIFT = np.uint64(32)
# Draws a truncated normal may take before it falls back to a uniform in range (each keeps a
# sample with probability 0.954 at alpha 2: 4 x 8 candidates all fail with probability ~1e-43).
TRUNCATED_DRAWS = 8

RANDOM_FIXED_CYCLES = 40  # [U] vertex set-up: seed load, counter set-up
TRANSFORM_CYCLES = {"uniform": 1, "normal": 6, "truncated_normal": 9, "bernoulli": 1, "dropout": 3}


def philox4x32(counter: tuple[np.ndarray, ...], key: tuple[np.ndarray, np.ndarray],
               rounds: int = 10) -> tuple[np.ndarray, ...]:
    """Philox4x32 on uint32 arrays (broadcast together): four uint32 words per counter."""
    c0, c1, c2, c3 = (np.asarray(c, np.uint32) for c in counter)
    k0 = np.asarray(key[0], np.uint32).astype(np.uint64)
    k1 = np.asarray(key[1], np.uint32).astype(np.uint64)
    for r in range(rounds):  # the key schedule: k + r * W, modulo 2**32
        r64 = np.uint64(r)
        kr0 = ((k0 + r64 * _W0) & _LO).astype(np.uint32)
        kr1 = ((k1 + r64 * _W1) & _LO).astype(np.uint32)
        p0 = _M0 * c0.astype(np.uint64)
        p1 = _M1 * c2.astype(np.uint64)
        hi0, lo0 = (p0 >> _SHIFT).astype(np.uint32), (p0 & _LO).astype(np.uint32)
        hi1, lo1 = (p1 >> _SHIFT).astype(np.uint32), (p1 & _LO).astype(np.uint32)
        c0, c1, c2, c3 = hi1 ^ c1 ^ kr0, lo1, hi0 ^ c3 ^ kr1, lo0
    return c0, c1, c2, c3


def _words(seed: np.ndarray, modifier: np.ndarray, index: np.ndarray, draw: int):
    """Philox words for elements ``index`` (int64, any shape) of one draw."""
    lo = (index & 0xFFFFFFFF).astype(np.uint32)
    hi = (index >> 32).astype(np.uint32)
    return philox4x32((lo, hi, modifier, np.uint32(draw)), (seed[..., 0:1], seed[..., 1:2]))


def uniform01(word: np.ndarray) -> np.ndarray:
    """float64 in [0, 1) with 32 random bits."""
    return word.astype(np.float64) * (1.0 / 4294967296.0)


def _open01(word: np.ndarray) -> np.ndarray:
    """float64 in (0, 1]: safe for log."""
    return (word.astype(np.float64) + 1.0) * (1.0 / 4294967296.0)


def normals(words: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Two standard normals per draw (Box-Muller on words 0-1 and 2-3)."""
    out = []
    for a, b in ((words[0], words[1]), (words[2], words[3])):
        radius = np.sqrt(-2.0 * np.log(_open01(a)))
        out.append(radius * np.cos(2.0 * np.pi * uniform01(b)))
    return out[0], out[1]


def truncated_normals(seed, modifier, index, alpha: float) -> np.ndarray:
    """Standard normals conditioned on ``|z| <= alpha``: the first in range of successive draws."""
    result = np.full(index.shape, np.nan)
    todo = np.ones(index.shape, bool)
    for draw in range(TRUNCATED_DRAWS):
        for z in normals(_words(seed, modifier, index, draw)):
            take = todo & (np.abs(z) <= alpha)
            result[take] = z[take]
            todo &= ~take
        if not todo.any():
            return result
    fallback = uniform01(_words(seed, modifier, index, TRUNCATED_DRAWS)[0])
    return np.where(todo, alpha * (2.0 * fallback - 1.0), result)


class Distribution(enum.Enum):
    """poprand's distributions; ``a``/``b`` are (low, high), (mean, std), (mean, std) or (p, -)."""

    UNIFORM = "uniform"
    NORMAL = "normal"
    TRUNCATED_NORMAL = "truncated_normal"
    BERNOULLI = "bernoulli"


def _sample(dist: Distribution, seed, modifier, index, a: float, b: float, alpha: float):
    """float64 samples (bools for BERNOULLI) for the elements ``index``."""
    if dist is Distribution.UNIFORM:
        return a + (b - a) * uniform01(_words(seed, modifier, index, 0)[0])
    if dist is Distribution.NORMAL:
        return a + b * normals(_words(seed, modifier, index, 0))[0]
    if dist is Distribution.TRUNCATED_NORMAL:
        return a + b * truncated_normals(seed, modifier, index, alpha)
    return uniform01(_words(seed, modifier, index, 0)[0]) < a


def _store(dist: Distribution, values: np.ndarray, out: np.ndarray, a: float, b: float) -> None:
    """Cast to the output type; uniforms stay in [a, b) after rounding."""
    if dist is not Distribution.UNIFORM:
        out[...] = values
    elif out.dtype.kind == "f":
        out[...] = values
        if b > a:
            np.minimum(out, np.nextafter(out.dtype.type(b), out.dtype.type(a)), out=out)
    else:
        out[...] = np.minimum(np.floor(values), np.ceil(b) - 1)


def _indices(offset: np.ndarray, n: int) -> np.ndarray:
    return offset.astype(np.int64) + np.arange(n, dtype=np.int64)


def _random_cycles(kind: str, n, dtype: DType, target: Target):
    workers = target.workers_per_tile
    width = target.vector_width(dtype.itemsize)
    per_worker = -(-n // workers)
    bits = -(-per_worker * 32 // 64)
    return workers * (RANDOM_FIXED_CYCLES + bits + -(-per_worker // width) * TRANSFORM_CYCLES[kind]) \
        + target.supervisor_overhead_cycles


@cache
def random_codelet(dist: Distribution, dtype: DType, a: float, b: float, alpha: float) -> type[Vertex]:
    """``poprand::<dist><dtype>``: fill ``out`` with samples for elements ``offset ...``."""

    class Random(MultiVertex):
        seed = Input(uint32)
        out = Output(dtype)
        offset = Param(int64)
        modifier = Param(uint32)

        @staticmethod
        def compute(seed, out, offset, modifier):
            index = _indices(offset, out.shape[-1])
            _store(dist, _sample(dist, seed, modifier, index, a, b, alpha), out, a, b)

        @staticmethod
        def cycles(seed, out, offset, modifier, target):
            return _random_cycles(dist.value, out, dtype, target)

        @staticmethod
        def flops(seed, out, offset, modifier):
            return out * TRANSFORM_CYCLES[dist.value] if dtype.is_float else 0

    Random.__name__ = Random.__qualname__ = f"{dist.name.title().replace('_', '')}<{dtype.name}>"
    return Random


@cache
def dropout_codelet(dtype: DType, p: float) -> type[Vertex]:
    """``out = x * keep / (1 - p)`` with ``keep`` a Bernoulli(1 - p) draw per element."""
    scale = 1.0 / (1.0 - p) if p < 1.0 else 0.0

    class Dropout(MultiVertex):
        seed = Input(uint32)
        x = Input(dtype)
        out = Output(dtype)
        offset = Param(int64)
        modifier = Param(uint32)

        @staticmethod
        def compute(seed, x, out, offset, modifier):
            index = _indices(offset, out.shape[-1])
            keep = uniform01(_words(seed, modifier, index, 0)[0]) >= p
            work = float32.numpy if dtype.itemsize < 4 else dtype.numpy
            out[...] = np.where(keep, x.astype(work) * work.type(scale), work.type(0))

        @staticmethod
        def cycles(seed, x, out, offset, modifier, target):
            return _random_cycles("dropout", out, dtype, target)

        @staticmethod
        def flops(seed, x, out, offset, modifier):
            return out

    Dropout.__name__ = Dropout.__qualname__ = f"Dropout<{dtype.name}>"
    return Dropout
