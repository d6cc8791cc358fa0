"""popops' Transpose2d: one worker transposes a small row-major matrix from ``src`` into ``dst``.

A re-layout that transposes (a column-major activation feeding a matmul operand laid out by rows)
is done as popops' rearrangement does it: the exchange moves whole runs that are contiguous in
the source to the tile that needs them, and this vertex then transposes them on the tile, so the
exchange code holds a region per run, not per element (:mod:`softipu.ops.rearrange`).

**Transpose2d** (``Vertex``, one worker): ``src`` holds a ``rows x cols`` matrix row-major;
``dst`` receives its ``cols x rows`` transpose, row-major. It is a copy: the fast engine and the
reference interpreter give the same bits. Its estimate is poplibs' ``Transpose2d`` estimator for
one matrix (lib/popops/popopsCycleEstimators.cpp, sdk-release-2.x/3.x, ``matrices`` = 1) [V];
every figure is in :data:`TRANSPOSE` with its tag:

* 4-byte types, fast path (``rows`` and ``cols`` even, ``cols / 2`` within the hardware repeat
  count, the largest stride ``rows (cols - 2) / 2`` under 512, ``rows`` under 512):
  ``27 + 11 + (rows / 2) (6 + 3 (cols / 2 - 1))``; else ``13 + 8 + cols (5 + 2 rows)``;
* 2-byte types, fast path (``rows`` and ``cols`` multiples of 4, ``cols >= 8``, ``1 + 3 cols / 4``
  under 512): ``37 + 12 + (rows / 4) (15 + 4 (cols / 4 - 2))``; ``cols == 4``: ``32 + 15`` for a
  4x4 matrix, ``28 + 17 + 20 + 4 (rows / 4 - 2)`` for taller ones; else
  ``15 + 8 + cols (5 + 5 rows / 2)``.

Check: a 16x16 fp16 block on the fast path is ``49 + 4 x (15 + 4 x 2) = 141`` cycles, 0.55 per
element; fp32 ``38 + 8 x (6 + 3 x 7) = 254``, about one per element (the worker moves 64 bits
per cycle at best).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, partial
from typing import Any

import numpy as np

from softipu.dtypes import DType, int32
from softipu.graph.vertex import Input, Output, Param, Vertex

__all__ = ["TRANSPOSE", "TransposeEstimates", "bound_transpose", "transpose_codelet", "transpose_cycles"]


@dataclass(frozen=True, slots=True)
class TransposeEstimates:
    """poplibs' Transpose2d estimator figures for one matrix [V] (see the module docstring)."""

    repeat_count_limit: int = 4096  # CSR_W_REPEAT_COUNT mask + 1 [V]
    stride_limit: int = 512  # largest stride the fast paths use [V]
    # 4-byte fast path: fixed + per matrix + per row pair x (per row pair + per column pair) [V]
    word_fast_fixed: int = 27
    word_fast_per_matrix: int = 11
    word_fast_per_row_pair: int = 6
    word_fast_per_col_pair: int = 3
    # 4-byte slow path: fixed + per matrix + per column x (per column + per row) [V]
    word_slow_fixed: int = 13
    word_slow_per_matrix: int = 8
    word_slow_per_col: int = 5
    word_slow_per_row: int = 2
    # 2-byte fast path (>= 8 columns): fixed + per matrix + per 4 rows x (15 + 4 per 4 cols) [V]
    half_fast_fixed: int = 37
    half_fast_per_matrix: int = 12
    half_fast_per_quad_rows: int = 15
    half_fast_per_quad_cols: int = 4
    # 2-byte, 4 columns: a 4x4 matrix; taller ones [V]
    half_4x4: tuple[int, int] = (32, 15)
    half_nx4: tuple[int, int, int, int] = (28, 17, 20, 4)
    # 2-byte slow path: fixed + per matrix + per column x (per column + 5/2 per row) [V]
    half_slow_fixed: int = 15
    half_slow_per_matrix: int = 8
    half_slow_per_col: int = 5


TRANSPOSE = TransposeEstimates()


def transpose_cycles(rows, cols, itemsize: int):
    """One worker's cycles to transpose a ``rows x cols`` matrix (ints or int arrays) [V]."""
    t = TRANSPOSE
    r, c = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    if itemsize >= 4:
        fast = ((r % 2 == 0) & (c % 2 == 0) & (c // 2 < t.repeat_count_limit)
                & (r * (c - 2) // 2 < t.stride_limit) & (r < t.stride_limit))
        quick = t.word_fast_fixed + t.word_fast_per_matrix + (r // 2) * (
            t.word_fast_per_row_pair + t.word_fast_per_col_pair * (c // 2 - 1))
        slow = t.word_slow_fixed + t.word_slow_per_matrix + c * (
            t.word_slow_per_col + t.word_slow_per_row * r)
        return np.where(fast, quick, slow)
    wide = ((r % 4 == 0) & (c % 4 == 0) & (c >= 8) & (c // 4 < t.repeat_count_limit)
            & (1 + 3 * (c // 4) < t.stride_limit))
    narrow = ((r % 4 == 0) & (c == 4) & (r // 4 < t.repeat_count_limit)
              & (1 + 3 * (r // 4) < t.stride_limit))
    quick = t.half_fast_fixed + t.half_fast_per_matrix + (r // 4) * (
        t.half_fast_per_quad_rows + t.half_fast_per_quad_cols * (c // 4 - 2))
    a, b, d, e = t.half_nx4
    tall = np.where(r == 4, sum(t.half_4x4), a + b + d + e * (r // 4 - 2))
    slow = t.half_slow_fixed + t.half_slow_per_matrix + c * (t.half_slow_per_col + 5 * r // 2)
    return np.where(wide, quick, np.where(narrow, tall, slow))


def bound_transpose(src: np.ndarray, dst: np.ndarray, rows: np.ndarray) -> Callable[[], Any] | None:
    """A batch of one shape (every ``rows`` equal) as one ``np.copyto`` between views made once:
    ``dst``'s rows viewed as ``(cols, rows)``, ``src``'s as the transpose of ``(rows, cols)``. The
    fast engine binds the same arrays for every run of a group, so this is the codelet's
    ``compute`` less its per-run checks and reshapes (the demo encoder's 21 transposes a call).
    None (run ``compute``) for mixed shapes, an empty batch, or fields not viewable so."""
    r = np.asarray(rows)[..., 0]
    if dst.size == 0 or r.size == 0 or src.shape != dst.shape:
        return None
    k, n = int(r.flat[0]), dst.shape[-1]
    if k <= 0 or n % k or not (r == k).all():
        return None
    lead = dst.shape[:-1]
    try:  # views only: a reshape that copied would write a temporary
        to = dst.reshape(lead + (n // k, k), copy=False)
        of = src.reshape(lead + (k, n // k), copy=False).swapaxes(-1, -2)
    except ValueError:
        return None
    return partial(np.copyto, to, of)


@cache
def transpose_codelet(dtype: DType) -> type[Vertex]:
    """``popops::Transpose2d<dtype>`` for one matrix: ``dst = src.reshape(rows, cols).T``.

    Fields: ``src`` and ``dst`` (``rows * cols`` elements each, row-major); params ``rows`` and
    ``cols`` (the source's). Vertices of one batch have equal field lengths but may differ in
    ``rows``; each distinct ``rows`` is one strided numpy copy.
    """

    class Transpose2d(Vertex):
        merge_groups = True  # small groups of a compute set may run as one call (groups lead)
        src = Input(dtype)
        dst = Output(dtype)
        rows = Param(int32)
        cols = Param(int32)

        @staticmethod
        def compute(src, dst, rows, cols):
            n = dst.shape[-1]
            r = np.asarray(rows)[..., 0]
            if dst.size == 0 or r.size == 0:
                return
            lead = dst.shape[:-1]
            k = int(r.flat[0])
            if r.size == 1 or (r == k).all():  # one shape (the usual case): no sort, one copy
                # one pass into dst's rows viewed as (cols, rows): no transposed temporary
                dst.reshape(lead + (n // k, k))[...] = src.reshape(lead + (k, n // k)).swapaxes(-1, -2)
                return
            r = np.broadcast_to(r, lead)
            for k in np.unique(r).tolist():
                pick = r == k
                dst[pick] = src[pick].reshape(-1, k, n // k).swapaxes(-1, -2).reshape(-1, n)

        @staticmethod
        def cycles(src, dst, rows, cols):
            return transpose_cycles(rows, cols, dtype.itemsize)

        @staticmethod
        def bound_run(src, dst, rows, cols):  # the fast engine's hook: views bound at load
            return bound_transpose(src, dst, rows)

    Transpose2d.__name__ = Transpose2d.__qualname__ = f"Transpose2d<{dtype.name}>"
    return Transpose2d
