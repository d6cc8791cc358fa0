"""codelets/halves.py: float32 <-> float16 conversions whose cost does not depend on the values give
numpy's own cast, bit for bit (numpy's cast is the oracle: the reference interpreter uses it)."""

from __future__ import annotations

import numpy as np
import pytest

from softipu.codelets.elementwise import cast_values
from softipu.codelets.halves import from_half, to_half


def _numpy_half(x: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        return x.astype(np.float16).view(np.uint16)


def _edge_floats(rng: np.random.Generator) -> np.ndarray:
    """Every sign and float32 exponent with random mantissas and the ones rounding turns on: the
    13 bits a half drops at, just under and just over one half of its last place, with its last
    kept bit even and odd; NaN payloads (signalling ones too), infinities, float32 subnormals."""
    low = np.array([0, 1, 0xFFF, 0x1000, 0x1001, 0x1FFF, 0x2000, 0x2FFF, 0x3000, 0x3001, 0x7FFFFF,
                    0x7FF000, 0x7FEFFF, 0x7FE000, 0x7FF001, 0x400000, 0x000001, 0x002000], np.uint32)
    mantissas = np.concatenate([rng.integers(0, 1 << 23, 200, dtype=np.uint32), low,
                                (rng.integers(0, 1 << 10, 64, dtype=np.uint32) << 13) | 0x1000])
    exps = np.arange(256, dtype=np.uint32) << 23
    bits = (exps[:, None] | mantissas[None, :]).reshape(-1)
    bits = np.concatenate([bits, bits | np.uint32(1 << 31)])
    rng.shuffle(bits)
    return bits.view(np.float32)


def test_to_half_is_numpys_cast_on_every_exponent_and_rounding_edge():
    x = _edge_floats(np.random.default_rng(0))
    out = np.empty(x.shape, np.float16)
    with np.errstate(all="ignore"):
        to_half(x, out)
    assert np.array_equal(out.view(np.uint16), _numpy_half(x))


@pytest.mark.parametrize("exponent", [101, 102, 103, 112, 113])
def test_to_half_is_numpys_cast_on_runs_of_mantissas_at_the_subnormal_edges(exponent):
    """Every 97th float32 where halves turn subnormal and to zero (exponents 102-113), ties to
    even and the carry into the exponent included."""
    start = np.uint32(exponent << 23)
    bits = start + np.arange(0, 1 << 23, 97, dtype=np.uint32)
    for sign in (0, 1 << 31):
        x = (bits | np.uint32(sign)).view(np.float32)
        out = np.empty(x.shape, np.float16)
        to_half(x, out)
        assert np.array_equal(out.view(np.uint16), _numpy_half(x))


def test_to_half_into_strided_and_from_broadcast_views():
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((300, 70)) * 1e-5).astype(np.float32)
    out = np.empty((70, 300), np.float16).T  # column-major destination
    to_half(x, out)
    assert np.array_equal(out.view(np.uint16), _numpy_half(x))
    row = (rng.standard_normal(90) * 1e-6).astype(np.float32)
    wide = np.broadcast_to(row, (40, 90))
    out = np.empty((40, 90), np.float16)
    to_half(wide, out)
    assert np.array_equal(out.view(np.uint16), _numpy_half(np.ascontiguousarray(wide)))


def test_to_half_keeps_the_overflow_trap():
    x = np.full(5000, 1e-6, np.float32)
    x[4321] = 70000.0
    with np.errstate(over="raise", under="ignore"), pytest.raises(FloatingPointError):
        to_half(x, np.empty(x.shape, np.float16))


def test_from_half_is_numpys_cast_on_every_half():
    h = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    out = np.empty(h.shape, np.float32)
    from_half(h, out)
    assert np.array_equal(out.view(np.uint32), h.astype(np.float32).view(np.uint32))
    grid = h[:65534].reshape(-1, 7)[::2, ::3]  # strided source
    out = np.empty(grid.shape, np.float32)
    from_half(grid, out)
    assert np.array_equal(out.view(np.uint32), grid.astype(np.float32).view(np.uint32))


def test_cast_codelets_values_take_the_same_bits():
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((64, 100)) * np.logspace(-9, 5, 100)).astype(np.float32)
    with np.errstate(all="ignore"):
        assert np.array_equal(cast_values(x, np.float16).view(np.uint16), _numpy_half(x))
        out = np.empty(x.shape, np.float16)
        cast_values(x, np.float16, out)
        assert np.array_equal(out.view(np.uint16), _numpy_half(x))
        h = x.astype(np.float16)
        assert np.array_equal(cast_values(h, np.float32).view(np.uint32), h.astype(np.float32).view(np.uint32))


def test_to_half_of_mostly_normal_values_with_a_few_tiny_ones():
    """Chunks with few values below 2**-14 are cast as they are, the others rounded first: both
    give numpy's bits."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal(70000).astype(np.float32)
    x[rng.integers(0, x.size, 40)] = (rng.standard_normal(40) * 1e-7).astype(np.float32)
    x[20000:40000] *= np.float32(1e-6)  # a stretch of tiny ones
    out = np.empty(x.shape, np.float16)
    to_half(x, out)
    assert np.array_equal(out.view(np.uint16), _numpy_half(x))


def test_to_half_of_finite_chunks_makes_numpys_bits_without_its_cast(monkeypatch):
    """Chunks whose magnitudes all round to a finite half take the vector passes (numpy's cast, the
    fallback, made to fail here): every exponent up to the half's largest, the rounding edges, the
    largest magnitudes that still round to 65504, both zeros, float32 subnormals."""
    from softipu.codelets import halves

    def fail(*args):
        raise AssertionError("numpy's cast taken")

    monkeypatch.setattr(halves, "_cast", fail)
    x = _edge_floats(np.random.default_rng(4))
    x = x[np.abs(x) < np.float32(65520)]
    top = np.nextafter(np.float32(65520), np.float32(0))
    x = np.tile(np.concatenate([x, np.array([top, -top, 65504, -65504, 0.0, -0.0], np.float32)]), 2)
    assert x.size % halves._CHUNK >= halves._SMALL
    out = np.empty(x.shape, np.float16)
    to_half(x, out)
    assert np.array_equal(out.view(np.uint16), _numpy_half(x))


def test_to_half_of_a_short_chunk_with_few_tiny_values_is_numpys_cast():
    """An array's last chunk, short, with 1 tiny value in 100, goes to numpy's cast; with many
    it takes the passes: numpy's bits either way."""
    from softipu.codelets import halves

    rng = np.random.default_rng(5)
    for tiny in (0.01, 0.5):
        x = rng.standard_normal(halves._CHUNK + 5000).astype(np.float32)
        picked = rng.random(x.size) < tiny
        x[picked] *= np.float32(1e-7)
        out = np.empty(x.shape, np.float16)
        to_half(x, out)
        assert np.array_equal(out.view(np.uint16), _numpy_half(x))


def test_from_half_into_a_strided_destination_is_numpys_cast():
    h = (np.random.default_rng(6).standard_normal((300, 70)) * 1e-6).astype(np.float16)  # subnormals
    out = np.empty((70, 300), np.float32).T
    from_half(h, out)
    assert np.array_equal(out.view(np.uint32), h.astype(np.float32).view(np.uint32))
