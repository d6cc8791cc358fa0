"""The demo encoder's row codelets on their faster host paths give numpy's bits: softmax's row
maximum over a transposed copy, plane moments of one element a channel, params read once."""

from __future__ import annotations

import numpy as np
import pytest

from softipu.codelets.host import frozen
from softipu.codelets.nn._common import _param
from softipu.codelets.nn.norms import plane_moments_codelet
from softipu.codelets.nn.softmax import _row_max, softmax_rows_codelet
from softipu.dtypes import float32
from softipu.errors import CodeletError

SPECIALS = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-40, -1e-42, 3e38, -3e38, 1e-45], np.float32)


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.uint32)


def _rows(rows: int, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, n)) * 4).astype(np.float32)
    x.flat[rng.choice(x.size, 3 * SPECIALS.size, replace=False)] = np.tile(SPECIALS, 3)
    x[0] = -0.0  # a row of zeros: -0 and +0 mixed, the maximum's sign left to the reduction
    x[1, ::2] = 0.0
    x[2] = -np.inf
    x[3, -1] = np.nan
    return x


@pytest.mark.parametrize("rows,n", [(512, 64), (37, 5), (8, 256), (4, 300)])
def test_softmax_rows_are_numpys_formula_bit_for_bit(rows, n):
    x = _rows(rows, n, rows + n)
    codelet = softmax_rows_codelet(float32, False)
    out = np.empty_like(x)
    with np.errstate(all="ignore"):
        codelet.compute(x=x, out=out, n=np.full((rows, 1), n, np.int32))
        e = np.exp(x - x.max(axis=-1, keepdims=True))  # the oracle: numpy's row max, as before
        want = e * (np.float32(1) / e.sum(axis=-1, keepdims=True))
    assert np.array_equal(_bits(out), _bits(want))


def test_row_max_equals_numpys_row_max():
    x = _rows(512, 64, 1).reshape(256, 2, 64)  # two rows a vertex
    got, want = _row_max(x), x.max(axis=-1, keepdims=True)
    assert got.shape == want.shape == (256, 2, 1)
    assert np.array_equal(got, want, equal_nan=True)
    assert got[0, 0, 0] == 0 and got[1, 0, 0] == -np.inf and np.isnan(got[1, 1, 0])


def test_plane_moments_of_one_element_a_channel_are_numpys_sums():
    rng = np.random.default_rng(5)
    cb = 64
    x = (rng.standard_normal((16, cb)) * 3).astype(np.float32)
    x[0, :SPECIALS.size] = SPECIALS
    x[1, :4] = [-0.0, -0.0, 1e-45, -1e-45]
    x.view(np.uint32)[2, 0] = 0x7FC12345  # a NaN with a payload
    shift = np.zeros((16, cb), np.float32)
    shift[3:] = rng.standard_normal((13, cb)).astype(np.float32)
    partial = np.full((16, 2 * cb), 7, np.float32)
    with np.errstate(all="ignore"):
        plane_moments_codelet(float32).compute(x=x, shift=shift, partial=partial)
        d = (x - shift)[..., None]  # the oracle: numpy's sums over the one-element axis
        want = np.stack([d.sum(axis=-1, dtype=np.float32), (d * d).sum(axis=-1, dtype=np.float32)], -1)
    assert np.array_equal(_bits(partial), _bits(want.reshape(16, 2 * cb)))
    # by hand: a sum of one -0 is +0 (numpy adds it to 0); the NaN's payload survives
    assert _bits(partial)[1, 0] == 0 and _bits(partial)[2, 0] == 0x7FC12345


def test_a_frozen_param_is_read_once_and_a_plain_one_every_time():
    p = frozen(np.full((4, 1), 1e-5, np.float32))
    assert _param(p) == np.float32(1e-5).item() and p.memo["param"] == np.float32(1e-5).item()
    plain = np.full((4, 1), 3, np.int32)
    assert _param(plain) == 3
    plain[2] = 4  # a plain array is checked on every call
    with pytest.raises(CodeletError, match="one param value per vertex group"):
        _param(plain)
    with pytest.raises(CodeletError, match="one param value per vertex group"):
        _param(frozen(np.array([[1.0], [2.0]], np.float32)))


@pytest.mark.parametrize("n", [6, 8, 12])
def test_row_max_of_rows_in_a_wider_array_and_of_odd_lane_counts(n):
    wide = _rows(64, 16, 9)[:, 1:1 + n]  # rows 64 bytes apart, 4-byte aligned only
    got = _row_max(wide.reshape(32, 2, n))
    assert np.array_equal(got, wide.max(axis=-1).reshape(32, 2, 1), equal_nan=True)


@pytest.mark.parametrize("pixels", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_batch_norm_apply_is_numpys_formula_bit_for_bit(pixels, dtype):
    from softipu.codelets.nn.norms import batch_norm_apply_codelet
    from softipu.dtypes import float16

    dt = float32 if dtype == "float32" else float16
    rng = np.random.default_rng(11)
    cb, length = 8, 6
    x = (rng.standard_normal((3, cb * length)) * 3).astype(dt.numpy)
    with np.errstate(over="ignore"):
        x[0, :SPECIALS.size] = SPECIALS.astype(dt.numpy)
    mean, weight, bias = (rng.standard_normal((3, cb)).astype(np.float32) for _ in range(3))
    var = np.abs(rng.standard_normal((3, cb))).astype(np.float32)
    var[1, 0], weight[2, 1] = 0.0, -0.0
    eps = np.full((3, 1), 1e-5, np.float32)
    out = np.empty_like(x)
    with np.errstate(all="ignore"):
        batch_norm_apply_codelet(dt, float32, float32, pixels).compute(
            x=x, mean=mean, var=var, weight=weight, bias=bias, out=out, eps=eps)
        # the oracle: the formula as numpy evaluates it, temporaries and all
        scale = weight / np.sqrt(var + np.float32(1e-5))
        shift = bias - mean * scale
        xs = x.astype(np.float32)
        xs = xs.reshape(3, length, cb).swapaxes(-1, -2) if pixels else xs.reshape(3, cb, length)
        res = (xs * scale[..., None] + shift[..., None]).astype(dt.numpy)
        want = res.swapaxes(-1, -2).reshape(3, -1) if pixels else res.reshape(3, -1)
    assert np.array_equal(out.view(np.uint8), np.ascontiguousarray(want).view(np.uint8))
