"""float16 add, subtract, multiply, divide, square and sqrt of large operands run in float32 and round
once (codelets/elementwise/_numerics.py ``_halves_in_float32``): numpy's own float16 loops are the
oracle, bit for bit, over random bits (every NaN payload, infinities, subnormals) and values of
several scales, in place, into strided outputs and broadcast."""

from __future__ import annotations

import numpy as np
import pytest

from softipu.codelets.elementwise import _numerics
from softipu.codelets.elementwise.ops import BinaryOp, UnaryOp

BINARY = [(BinaryOp.ADD, np.add), (BinaryOp.SUBTRACT, np.subtract), (BinaryOp.MULTIPLY, np.multiply),
          (BinaryOp.DIVIDE, np.divide)]


def _halves(rng: np.random.Generator, n: int) -> np.ndarray:
    """Random bits (a 16th of them NaN or infinite) mixed with normal, subnormal-result and large
    values, zeros of both signs and infinities."""
    with np.errstate(over="ignore"):
        scaled = np.concatenate([rng.standard_normal(n) * s for s in (1.0, 1e-5, 3e4)]).astype(np.float16)
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 65504, -65504, 2**-24], np.float16).repeat(n // 40)
    bits = rng.integers(0, 1 << 16, n, dtype=np.uint16).view(np.float16)
    x = np.concatenate([scaled, special, bits])
    rng.shuffle(x)
    return x


def _same(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == np.float16 and got.shape == want.shape
    assert np.array_equal(got.view(np.uint16), want.view(np.uint16))


@pytest.mark.parametrize(("op", "oracle"), BINARY, ids=lambda v: getattr(v, "name", ""))
def test_binary_halves_are_numpys_float16_bits(op, oracle):
    rng = np.random.default_rng(0)
    a, b = _halves(rng, 4000), _halves(rng, 4000)
    with np.errstate(all="ignore"):
        for x, y in ((a, b), (b, a), (a, a)):
            want = oracle(x, y)
            _same(op.value.fn(x, y), want)
            out = np.empty((2, x.size), np.float16)[0]  # into part of a larger buffer
            op.value.fn(x, y, out=out)
            _same(out, want)
            grid, row = x.reshape(-1, 20), y[:20]  # a broadcast row, into a transposed output
            out = np.empty(grid.shape[::-1], np.float16).T
            op.value.fn(grid, row, out=out)
            _same(out, oracle(grid, row))
        inplace = a.copy()  # out is the first operand
        op.value.fn(inplace, b, out=inplace)
        _same(inplace, oracle(a, b))


@pytest.mark.parametrize(("op", "oracle"), [(UnaryOp.SQUARE, np.square), (UnaryOp.SQRT, np.sqrt)],
                         ids=["square", "sqrt"])
def test_square_and_sqrt_are_numpys_float16_bits(op, oracle):
    x = _halves(np.random.default_rng(1), 4000)
    with np.errstate(all="ignore"):
        _same(op.value.fn(x), oracle(x))


def test_the_float32_path_is_taken_for_large_halves_only(monkeypatch):
    """Large float16 operands go through float32 (numpy's float16 loop is made to fail for them);
    small ones, mixed dtypes and float32 ones stay numpy's loops."""
    calls = []
    real = _numerics._halves_in_float32

    def spy(f, xs, out):
        done = real(f, xs, out)
        calls.append(done is not None)
        return done

    monkeypatch.setattr(_numerics, "_halves_in_float32", spy)
    rng = np.random.default_rng(2)
    big = (rng.standard_normal(5000) * 1e-5 + 1e-4).astype(np.float16)
    BinaryOp.MULTIPLY.value.fn(big, big)
    BinaryOp.DIVIDE.value.fn(big, big)
    BinaryOp.ADD.value.fn(big[:10], big[:10])
    BinaryOp.ADD.value.fn(big, big.astype(np.float32))
    assert calls == [True, True, False, False]


def test_traps_as_numpys_float16_loops():
    """Overflow (a product past 65504, raised by the narrowing cast), invalid (inf - inf) and division
    by zero raise under the engine's traps (engine/fpchecks.py), as numpy's float16 loops do."""
    from softipu.engine.fpchecks import TRAPS

    x = np.full(3000, 300.0, np.float16)
    inf, zero = np.full(3000, np.inf, np.float16), np.zeros(3000, np.float16)
    for fn, args in ((BinaryOp.MULTIPLY.value.fn, (x, x)), (BinaryOp.SUBTRACT.value.fn, (inf, inf)),
                     (BinaryOp.DIVIDE.value.fn, (x, zero))):
        with np.errstate(**TRAPS), pytest.raises(FloatingPointError):
            fn(*args)
    with np.errstate(**TRAPS):
        BinaryOp.MULTIPLY.value.fn(x * np.float16(1e-6), x * np.float16(1e-6))  # underflow: no trap


def test_large_results_made_in_pieces_are_numpys_bits():
    """Past 64 K elements the result is made in pieces along its first axis: full operands cut,
    broadcast ones (a row, a column, a scalar) whole; in place (out is the first operand) too."""
    rng = np.random.default_rng(7)
    grid = _halves(rng, 40000)[:150000].reshape(1500, 100)
    row, col = _halves(rng, 100)[:100], _halves(rng, 1500)[:1500, None]
    scalar = np.array(3.0, np.float16)
    with np.errstate(all="ignore"):
        for op, oracle in BINARY:
            for y in (grid[::-1].copy(), row, col, scalar):
                _same(op.value.fn(grid, y), oracle(grid, y))
                inplace = grid.copy()
                op.value.fn(inplace, y, out=inplace)
                _same(inplace, oracle(grid, y))
        shifted = np.concatenate([grid.reshape(-1), grid.reshape(-1)[:100]])
        out = shifted[100:].reshape(grid.shape)  # overlaps the operand one row on: made whole
        want = np.multiply(shifted[:-100].reshape(grid.shape), row)
        BinaryOp.MULTIPLY.value.fn(shifted[:-100].reshape(grid.shape), row, out=out)
        _same(out, want)
