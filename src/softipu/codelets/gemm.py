"""Host execution of a vertex group's AMP partial products: ``out (+)= a . b`` per vertex.

A group's fields arrive as ``(..., V, m, k)``, ``(..., V, k, n)`` and ``(..., V, m, n)`` views of
device memory (a leading replica axis where replicated). Tile blocks are small (a BERT-base layer's
are 128 x 144 . 144 x 24), and one BLAS product per block runs far below the host's GEMM speed.
Design principle 6 lets a contraction be evaluated in any accumulation order, provided the bits do
not depend on the run, the process or the number of host threads, and agree with the reference
interpreter (one vertex at a time) within :func:`softipu.codelets._common.contraction_bound`. So:

* vertices sharing their left block (its vertex stride is 0: the library's matmul broadcasts
  one row block of ``a`` over the column blocks of ``b``) run as one GEMM
  ``a . [b_0 b_1 ...]`` (``m x k . k x (V n)``), the ``b`` blocks copied side by side first;
* vertices sharing their right block run as one GEMM ``[a_0; a_1; ...] . b``
  (``(V m) x k . k x n``), a view where the ``a`` blocks follow each other in memory;
* otherwise every block is its own product (numpy's matmul loops over them in C).

A large group is cut into :func:`pieces` by its size alone (never by the host's core count or
load), and the pieces run side by side on idle cores (:func:`softipu.codelets.host.run_pieces`);
OpenBLAS picks its kernel and blocking by a product's shape, so the same executable always makes
the same products and gets the same bits. ``accumulate``: ``out += a . b``, the product rounded
first (the AMP adds a finished partial product to the partials it reads).
"""

from __future__ import annotations

from functools import partial

import numpy as np

from softipu.codelets.host import BLAS, on_idle_cores, run_pieces, scratch

__all__ = ["gemm", "pieces", "as_float32", "PIECE_MACS", "MAX_PIECES"]

# A merged product of at least this many multiply-accumulates is cut into pieces this size (at
# most MAX_PIECES): large enough to run near BLAS's full speed, small enough that two or more
# keep a second core busy. Constants, so the cut never depends on the host.
PIECE_MACS = 1 << 24
MAX_PIECES = 8
# Below this much work a batch of separate products is not worth handing to another thread.
_SPLIT_MACS = 1 << 23


def pieces(vertices: int, macs: int) -> list[tuple[int, int]]:
    """Vertex ranges ``[lo, hi)`` a merged product of ``macs`` over ``vertices`` is cut into."""
    parts = max(1, min(vertices, MAX_PIECES, macs // PIECE_MACS))
    cuts = [vertices * p // parts for p in range(parts + 1)]
    return [(lo, hi) for lo, hi in zip(cuts[:-1], cuts[1:], strict=True) if hi > lo]


def gemm(a: np.ndarray, b: np.ndarray, out: np.ndarray, accumulate: bool = False) -> None:
    """``out (+)= a @ b`` over float32 blocks ``(..., V, m, k) x (..., V, k, n)`` (module doc).

    Leading axes (replicas, or the vertex groups the fast engine runs as one job) batch the
    products: the merged product of each leading index is one matrix of one batched matmul.
    """
    with BLAS.single_threaded():
        if out.ndim == 5 and out.shape[1] > 1 and out.shape[2] > 1:
            if a.strides[2] == 0 and b.strides[1] == 0:
                _outer(a, b, out, accumulate)
                return
            if a.strides[1] == 0 and b.strides[2] == 0:
                _outer(a.swapaxes(1, 2), b.swapaxes(1, 2), out.swapaxes(1, 2), accumulate)
                return
        if out.ndim > 4:
            for i in range(out.shape[0]):
                gemm(a[i], b[i], out[i], accumulate)
            return
        if out.ndim == 3:
            a, b, out = a[None], b[None], out[None]
        vertices = out.shape[1]
        macs = out.size * a.shape[-1]
        if vertices > 1 and a.strides[1] == 0:
            run = _shared_left
        elif vertices > 1 and b.strides[1] == 0:
            run = _shared_right
        else:
            _separate(a, b, out, accumulate, macs)
            return
        run_pieces([partial(run, a[:, lo:hi], b[:, lo:hi], out[:, lo:hi], accumulate)
                    for lo, hi in pieces(vertices, macs)])


def _shared_left(a: np.ndarray, b: np.ndarray, out: np.ndarray, accumulate: bool) -> None:
    """Per leading index one ``m x k . k x (V n)`` product: the vertices' ``b`` blocks side by side."""
    lead, v, k, n = b.shape
    m = a.shape[-2]
    wide = scratch((lead, k, v, n), "gemm:b")
    np.copyto(wide, b.transpose(0, 2, 1, 3))
    product = scratch((lead, m, v, n), "gemm:product")
    np.matmul(a[:, 0], wide.reshape(lead, k, v * n), out=product.reshape(lead, m, v * n))
    _store(out, product.transpose(0, 2, 1, 3), accumulate)


def _shared_right(a: np.ndarray, b: np.ndarray, out: np.ndarray, accumulate: bool) -> None:
    """Per leading index one ``(V m) x k . k x n`` product: the vertices' ``a`` blocks stacked."""
    lead, v, m, k = a.shape
    n = b.shape[-1]
    tall = _flat(a)
    if tall is None:
        tall = scratch(a.shape, "gemm:a")
        np.copyto(tall, a)
        tall = tall.reshape(lead, v * m, k)
    target = None if accumulate else _flat(out)
    if target is not None:
        np.matmul(tall, b[:, 0], out=target)
        return
    product = scratch((lead, v * m, n), "gemm:product")
    np.matmul(tall, b[:, 0], out=product)
    _store(out, product.reshape(out.shape), accumulate)


def _outer(a: np.ndarray, b: np.ndarray, out: np.ndarray, accumulate: bool) -> None:
    """``out[l, p, q] = a[l, p] . b[l, q]`` (a grid of merged groups whose left blocks vary along
    ``p`` only and right blocks along ``q`` only): per ``l`` one ``(P m) x k . k x (Q n)``
    product, the ``a`` blocks stacked and the ``b`` blocks side by side. Each ``l``'s product is
    made whole, so cutting the ``l`` axis over threads changes no bits."""
    lead, p, q, m, n = out.shape
    k = a.shape[-1]

    def job(lo: int, hi: int) -> None:
        rows = hi - lo
        tall = scratch((rows, p, m, k), "gemm:a")
        np.copyto(tall, a[lo:hi, :, 0])
        wide = scratch((rows, k, q, n), "gemm:b")
        np.copyto(wide, b[lo:hi, 0].transpose(0, 2, 1, 3))
        product = scratch((rows, p, m, q, n), "gemm:product")
        np.matmul(tall.reshape(rows, p * m, k), wide.reshape(rows, k, q * n),
                  out=product.reshape(rows, p * m, q * n))
        _store(out[lo:hi], product.transpose(0, 1, 3, 2, 4), accumulate)

    on_idle_cores(job, lead, out.size * k)


def _separate(a: np.ndarray, b: np.ndarray, out: np.ndarray, accumulate: bool, macs: int) -> None:
    """One BLAS product per vertex (each vertex whole in one call, whatever the split)."""
    if macs < _SPLIT_MACS:
        _products(a, b, out, accumulate)
        return

    def job(lo: int, hi: int) -> None:
        _products(a[:, lo:hi], b[:, lo:hi], out[:, lo:hi], accumulate)

    on_idle_cores(job, out.shape[1], macs)


def _products(a: np.ndarray, b: np.ndarray, out: np.ndarray, accumulate: bool) -> None:
    if accumulate:
        product = scratch(out.shape, "gemm:product")
        np.matmul(a, b, out=product)
        out += product
    else:
        np.matmul(a, b, out=out)


def _store(out: np.ndarray, product: np.ndarray, accumulate: bool) -> None:
    if accumulate:
        out += product
    else:
        out[...] = product


def _flat(x: np.ndarray) -> np.ndarray | None:
    """``(L, V, m, c)`` blocks seen as ``(L, V m, c)`` without copying, or None where the blocks
    do not follow each other in memory."""
    lead, v, m, c = x.shape
    if v > 1 and m > 1 and x.strides[1] != m * x.strides[2]:
        return None
    return x.reshape(lead, v * m, c)


def as_float32(x: np.ndarray) -> np.ndarray:
    """fp32 values of ``x``; a broadcast batch (stride 0) is converted once, not per vertex."""
    if x.dtype == np.float32:
        return x
    if x.ndim >= 3 and x.shape[-3] > 1 and x.strides[-3] == 0:
        one = x[..., :1, :, :].astype(np.float32)
        return np.broadcast_to(one, x.shape)
    return x.astype(np.float32)

