"""The convolution vertex that reads its input field in place: no im2col copy.

poplin's convolution vertices (``ConvPartialnx1``, ``ConvPartial1x1Out``; graphcore/poplibs
lib/poplin/codelets) take the input field and the weights of a tile's slice of the convolution and
walk the kernel positions with *worklists*: per worker, (output offset, number of field elements,
input offset) triples into the tile's input and output (lib/poplin/ConvVertices.cpp builds them,
``createConvPartialAmpVertex``). The input window is never copied out per kernel position: each
input element is stored once on the tile, however many output positions read it.

**ConvWindow** (``MultiVertex``) is that vertex for one block of ``m`` consecutive output pixels
(in ``(n, ho, wo)`` order) and one block of ``n`` output channels, with a range of ``kk`` of the
``kh * kw * c`` reduction (all of it unless the plan splits K). Fields:

* ``x``: one contiguous range of the padded input stored channels innermost (NHWC), from the
  first input element any of the block's windows reads to the last one; ``x0`` (param) is the
  address of the range's first element relative to the padded input's first element;
* ``w``: the weights block ``kk x n`` (its K range), row-major or, with
  the ``layout`` bit :data:`~softipu.codelets.matmul.B_TRANSPOSED`, stored as its transpose;
* ``out``: the ``m x n`` result block (fp32 partials or the output dtype);

params: ``p0`` (the block's first output pixel), ``k0`` and ``kk`` (the vertex's range
``[k0, k0 + kk)`` of the reduction, K in ``(kh, kw, c)`` order: all of it, or one K range of a plan
that splits the input channels and kernel positions over tiles, each writing its partials as
poplin's partial-sum vertices do) and the geometry ``(ho, wo, hp, wp, c, kh, kw, sh, sw, dh, dw)``.

Cycles: the AMP estimate of the equivalent ``(m x kk) . (kk x n)`` product
(:func:`~softipu.codelets.matmul.amp_cycles`, poplibs' ConvPartial1x1Out estimator) — the same
MACs through the same AMP passes. [U]: poplin's nx1 vertex prices each kernel row as its own
pass over the field (``getConvPartialnx1SupervisorCycleEstimate``); its worklist overheads are
not modelled.

Numerics: the products accumulate in fp32 (design.md principle 6), rounded once to ``out``. The
fast engine runs a compute set's ConvWindow vertices as one GEMM per K range and chunk of pixel
blocks (:mod:`softipu.codelets.nn.conv_groups`, the ``group_runner`` hook), within the
contraction bound of this per-vertex ``compute`` (which the reference interpreter runs).
"""

from __future__ import annotations

from functools import cache, lru_cache

import numpy as np

from softipu.codelets.gemm import as_float32 as _as_float32
from softipu.codelets.gemm import gemm
from softipu.codelets.matmul import B_TRANSPOSED, amp_cycles
from softipu.dtypes import DType, int32
from softipu.graph.vertex import Input, MultiVertex, Output, Param, Vertex

__all__ = ["GEOMETRY", "conv_window_codelet", "window_indices"]

# The geometry params of a ConvWindow vertex, in order.
GEOMETRY = ("ho", "wo", "hp", "wp", "c", "kh", "kw", "sh", "sw", "dh", "dw")

# Elements of gathered windows the host builds at a time (bounds its scratch memory).
_GATHER_ELEMENTS = 1 << 22


def window_indices(p0: np.ndarray, x0: np.ndarray, m: int, geo: dict[str, int], k0: int = 0,
                   kk: int | None = None) -> np.ndarray:
    """``(V, m, kk)`` offsets into each vertex's ``x`` range of the input elements its ``m``
    output pixels read for K indices ``[k0, k0 + kk)`` (default all ``kh * kw * c``), K in
    ``(kh, kw, c)`` order: pixel ``p = (n, ho, wo)`` and kernel position ``(i, j)`` read padded
    row ``n * hp + ho * sh + i * dh``, column ``wo * sw + j * dw``."""
    ho, wo, hp, wp, c = (geo[k] for k in ("ho", "wo", "hp", "wp", "c"))
    p = p0.reshape(-1, 1) + np.arange(m)
    n, rest = np.divmod(p, ho * wo)
    oh, ow = np.divmod(rest, wo)
    base = ((n * hp + oh * geo["sh"]) * wp + ow * geo["sw"]) * c - x0.reshape(-1, 1)  # (V, m)
    i = np.arange(geo["kh"])[:, None, None] * geo["dh"] * wp * c
    j = np.arange(geo["kw"])[None, :, None] * geo["dw"] * c
    k = (i + j + np.arange(c)).reshape(-1)  # (kh * kw * c,)
    return base[:, :, None] + k[k0:None if kk is None else k0 + kk]


@lru_cache(maxsize=4096)
def _block_cycles(m: int, kk: int, n: int, in_dtype: DType, out_dtype: DType, target) -> int:
    """:func:`~softipu.codelets.matmul.amp_cycles` of one block size: the groups of a convolution's
    window vertices share a few sizes, and numpy's cost per call on such small arrays was most of
    their pricing (ResNet-50 fp16 b64: 3,964 groups, 0.5 s of compile CPU)."""
    return int(amp_cycles(m, kk, n, in_dtype, out_dtype, target))


@cache
def conv_window_codelet(in_dtype: DType, out_dtype: DType) -> type[Vertex]:
    """``ConvWindow<in, out>``: ``out = windows(x) . w`` for one block (see the module doc)."""

    class ConvWindow(MultiVertex):
        chunk_fields = ()
        x = Input(in_dtype)
        w = Input(in_dtype)
        out = Output(out_dtype)
        p0 = Param(int32)
        x0 = Param(int32)
        k0 = Param(int32)
        kk = Param(int32)
        m = Param(int32)
        n = Param(int32)
        layout = Param(int32)
        ho, wo, hp, wp, c, kh, kw, sh, sw, dh, dw = (Param(int32) for _ in GEOMETRY)

        @staticmethod
        def compute(x, w, out, p0, x0, k0, kk, m, n, layout, ho, wo, hp, wp, c, kh, kw, sh, sw, dh, dw):
            if out.size == 0:
                return
            geo = dict(zip(GEOMETRY, (int(np.ravel(v)[0]) for v in (ho, wo, hp, wp, c, kh, kw, sh, sw,
                                                                     dh, dw)), strict=True))
            mm, nn, bits = int(np.ravel(m)[0]), int(np.ravel(n)[0]), int(np.ravel(layout)[0])
            width = int(np.ravel(kk)[0])  # one K range length a call (its w field's rows)
            xs = x.reshape(-1, x.shape[-1])
            ws = w.reshape(-1, w.shape[-1])
            res = np.empty((xs.shape[0], out.shape[-1]), np.float32)  # out may be a strided view
            lead = out.shape[:-1] + (1,)  # params may lack a replica axis the fields have
            starts, offs, firsts = (np.broadcast_to(v, lead).reshape(-1).astype(np.int64)
                                    for v in (p0, x0, k0))
            step = max(1, _GATHER_ELEMENTS // max(1, mm * width))
            for first in np.unique(firsts).tolist():  # each K range's window offsets
                rows = np.flatnonzero(firsts == first)
                for lo in range(0, rows.size, step):
                    sel = rows[lo:lo + step]
                    idx = window_indices(starts[sel], offs[sel], mm, geo, first, width).reshape(sel.size, -1)
                    a3 = np.take_along_axis(xs[sel], idx, axis=1).reshape(sel.size, mm, width)
                    b3 = ws[sel].reshape(sel.size, nn, width).swapaxes(-1, -2) if bits & B_TRANSPOSED \
                        else ws[sel].reshape(sel.size, width, nn)
                    acc = np.zeros((sel.size, mm, nn), np.float32)
                    gemm(_as_float32(a3), _as_float32(b3), acc, False)
                    res[sel] = acc.reshape(sel.size, -1)
            out[...] = res.reshape(out.shape)

        @staticmethod
        def cycles(x, w, out, p0, x0, k0, kk, m, n, layout, ho, wo, hp, wp, c, kh, kw, sh, sw, dh, dw,
                   target):
            sizes = [np.asarray(v) for v in (m, kk, n)]
            if all(v.size and (v == v.flat[0]).all() for v in sizes):  # a group's blocks are alike
                return _block_cycles(*(int(v.flat[0]) for v in sizes), in_dtype, out_dtype, target)
            return amp_cycles(m, kk, n, in_dtype, out_dtype, target)

        @staticmethod
        def group_runner(groups, storage, where):  # the fast engine's hook: a K range one GEMM
            from softipu.codelets.nn.conv_groups import ConvWindowsRunner

            return ConvWindowsRunner.build(groups, storage, where)

        @staticmethod
        def flops(x, w, out, p0, x0, k0, kk, m, n, layout, ho, wo, hp, wp, c, kh, kw, sh, sw, dh, dw):
            return 2 * np.asarray(m, np.int64) * np.asarray(kk, np.int64) * np.asarray(n, np.int64)

    ConvWindow.__name__ = ConvWindow.__qualname__ = f"ConvWindow<{in_dtype.name},{out_dtype.name}>"
    return ConvWindow
