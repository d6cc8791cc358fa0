"""The tile pieces of a row-major ``(M, C)`` matrix as blocks of rows x a column range.

A convolution's output ``[N*H*W, O]`` is stored row-major (channels innermost); a plan that splits
the output channels leaves each tile a block of pixel rows x one channel range (runs of the range's
width, rows ``C`` apart), where poplin's channel-grouped layout ``[C1][N][H][W][C2]`` would hold the
same elements as one run. The ops that read it where it lies (batch norm: ops/nn/norm_pixels.py;
elementwise maps: ops/elementwise/_planning.py) take those blocks as their vertices' fields, one
strided view each, instead of rows cut at every tile boundary."""

from __future__ import annotations

import bisect

import numpy as np

__all__ = ["even_runs", "matrix_blocks"]


def matrix_blocks(starts: np.ndarray, lengths: np.ndarray, tiles: np.ndarray, c: int):
    """The tile pieces of a ``(M, C)`` row-major matrix (flat ``starts``/``lengths``) as blocks
    ``(m0, rows, c0, cb, tile)``: runs of whole rows, and runs of one channel range over
    consecutive rows of one tile (a piece cut inside a row is one row of a range)."""
    a, e = starts, starts + lengths
    ra, re = a // c, (e - 1) // c
    one = ra == re
    parts = [(ra[one], np.ones(int(one.sum()), np.int64), a[one] % c, lengths[one], tiles[one])]
    many = ~one
    a, e, ra, re, t = a[many], e[many], ra[many], re[many], tiles[many]
    head = a % c != 0
    parts.append((ra[head], np.ones(int(head.sum()), np.int64), a[head] % c, c - a[head] % c, t[head]))
    tail = e % c != 0
    parts.append((re[tail], np.ones(int(tail.sum()), np.int64), np.zeros(int(tail.sum()), np.int64),
                  e[tail] % c, t[tail]))
    lo, hi = -(-a // c), e // c
    body = hi > lo
    parts.append((lo[body], (hi - lo)[body], np.zeros(int(body.sum()), np.int64),
                  np.full(int(body.sum()), c, np.int64), t[body]))
    m0, rows, c0, cb, tile = (np.concatenate(col).astype(np.int64) for col in zip(*parts, strict=True))
    # join one-row pieces of one channel range on one tile over consecutive rows
    single = (rows == 1) & (cb < c)
    if np.any(single):
        s = np.flatnonzero(single)
        order = s[np.lexsort((m0[s], cb[s], c0[s], tile[s]))]
        brk = np.ones(order.size, bool)
        brk[1:] = ((tile[order][1:] != tile[order][:-1]) | (c0[order][1:] != c0[order][:-1])
                   | (cb[order][1:] != cb[order][:-1]) | (m0[order][1:] != m0[order][:-1] + 1))
        heads = order[brk]
        run = np.diff(np.append(np.flatnonzero(brk), order.size))
        keep = ~single
        m0 = np.concatenate((m0[keep], m0[heads]))
        rows = np.concatenate((rows[keep], run))
        c0, cb, tile = (np.concatenate((col[keep], col[heads])) for col in (c0, cb, tile))
    return m0, rows, c0, cb, tile


def even_runs(starts: np.ndarray, members: np.ndarray):
    """``members`` (ordered) in runs whose ``starts`` step evenly: one strided field each."""
    n = members.size
    gaps = np.diff(starts)
    points = (np.flatnonzero(gaps[1:] != gaps[:-1]) + 1).tolist()
    lo = 0
    while lo < n:  # a run takes vertex lo and every next one while the gap stays lo's
        at = bisect.bisect_right(points, lo)
        hi = points[at] + 1 if at < len(points) else n
        yield members[lo:hi]
        lo = hi
