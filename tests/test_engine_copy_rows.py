"""Copies bound once by the fast engine move rows, not elements (engine/storage.py ``as_rows``,
``copy_rows``): the same bytes as numpy's element copy, for the strided windows a convolution's
im2col copies (16-float runs, row strides of a wider tensor), transposing layouts and broadcasts."""

from __future__ import annotations

import numpy as np
import pytest

from softipu.engine.storage import as_rows, copy_rows


def _window(buf: np.ndarray) -> np.ndarray:
    """A (3, 3, 5, 16) window of a (7, 7, 64) channels-innermost image: 16-channel runs."""
    image = buf[: 7 * 7 * 64].reshape(7, 7, 64)
    return np.lib.stride_tricks.sliding_window_view(image, (3, 3), axis=(0, 1))[:, :5, 8:24].transpose(3, 4, 1, 0, 2)


def test_a_window_copies_as_rows_with_numpys_bytes():
    rng = np.random.default_rng(0)
    buf = rng.standard_normal(7 * 7 * 64, np.float32)
    buf[5] = np.nan  # NaN payloads and signed zeros move as bytes
    buf[70] = -0.0
    src = _window(buf)
    dst = np.zeros(src.shape, np.float32)
    rows_dst, rows_src = as_rows(dst, src)
    assert rows_dst.dtype.itemsize == 16 * 4 and rows_dst.shape == src.shape[:-1]
    copy_rows(dst, src)()
    want = np.empty_like(dst)
    want[...] = src
    assert dst.tobytes() == want.tobytes()


@pytest.mark.parametrize("case", ["strided_inner", "transposed", "broadcast", "one_long"])
def test_layouts_rows_cannot_serve_copy_as_numpy(case):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((300, 200), np.float32)
    if case == "strided_inner":
        src, dst = a[:, ::2], np.zeros((300, 100), np.float32)
    elif case == "transposed":  # layouts cross: blocked copy
        src, dst = a.T, np.zeros((200, 300), np.float32)
    elif case == "broadcast":
        src, dst = np.broadcast_to(a[:1], (300, 200)), np.zeros((300, 200), np.float32)
    else:  # rows longer than ROW_ITEM_MAX bytes stay elements
        src, dst = a.reshape(30, 2000), np.zeros((30, 2000), np.float32)
    got_dst, _ = as_rows(dst, src)
    if case in ("strided_inner", "one_long"):
        assert got_dst is dst
    copy_rows(dst, src)()
    np.testing.assert_array_equal(dst, src)
