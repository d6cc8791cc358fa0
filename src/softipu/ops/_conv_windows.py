"""Convolutions whose vertices read their windows in place (``ConvWindow``, codelets/nn/conv.py):
which convolutions may, and the vertices of a plan's blocks, as poplin's conv vertices walk a
tile's field with worklists instead of an im2col matrix. Used by :mod:`softipu.ops.conv`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from softipu.codelets.matmul import B_TRANSPOSED
from softipu.codelets.nn.conv import conv_window_codelet
from softipu.graph.tensor import Tensor
from softipu.ops.bulk import add_vertex_runs
from softipu.ops.common import OpContext
from softipu.ops.matmul import _Blocks, _Grid, _Operand, _output, _partials, _reduce_stage, k_grid
from softipu.ops.planner import Plan

if TYPE_CHECKING:
    from softipu.ops.conv import _Inner

__all__: list[str] = []


def _windows_readable(xp: Tensor, inner: _Inner) -> bool:
    """Whether the convolution's vertices can read their windows straight from the padded input:
    one group, stored channels innermost and contiguous (NHWC, as :func:`_padded` and every
    convolution's output leave it), so a block of output pixels reads one address range; and a
    window at least as wide and tall as the stride, so that range holds little the block does not
    read (a 1x1 stride-2 convolution would receive four times the input it uses: it keeps the
    strided copy of :class:`_Im2Col`, which replicates nothing)."""
    if inner.groups != 1 or not xp.is_strided or xp.numel == 0:
        return False
    if (inner.kh - 1) * inner.dh + 1 < inner.sh or (inner.kw - 1) * inner.dw + 1 < inner.sw:
        return False
    n, c, hp, wp = xp.shape
    want = (hp * wp * c, 1, wp * c, c)
    return all(size == 1 or stride == w for size, stride, w in zip(xp.shape, xp.strides, want, strict=True))


def _windows_no_larger(pl: Plan, xp: Tensor, inner: _Inner) -> bool:
    """Whether no vertex's input range holds more than ``_WINDOW_RANGE_LIMIT`` times the elements
    of a full block of the im2col matrix (the plan's M block x K block), which the plan's exchange
    and memory were priced with. A K range holding part of a kernel position's channels reads them from pixels
    stored channels innermost, so its range holds every channel of the pixels it spans (ResNet-50
    b64's 3x3 convolutions over 512 channels split 18 ways: 1.7 MB received on one tile for a
    160 KB block); those keep the im2col copy. Below the limit a range holds the padding columns
    and the rows between its pixels, which poplin's worklists skip."""
    q = pl.problem
    grids = _Grid.of(q.m, pl.blocks[1]), _Grid.of(q.n, pl.blocks[2]), k_grid(pl)
    v = _window_vertices(grids, _window_geometry(xp, inner))
    return int(np.max(v["x1"] - v["x0"])) <= _WINDOW_RANGE_LIMIT * pl.blocks[1] * pl.blocks[3]


# [U] How much larger than its im2col block a window vertex's input range may be: the range's
# extra elements (padding columns, the rows between a block's pixels) are received but not read.
_WINDOW_RANGE_LIMIT = 1


def _run_windows(ctx: OpContext, pl: Plan, xp: Tensor, rhs: _Operand, inner: _Inner) -> Tensor:
    """The convolution of plan ``pl`` (one K range a tile, no serial split) without an im2col
    copy: each block of output pixels and K range is one
    :func:`~softipu.codelets.nn.conv.conv_window_codelet` vertex reading the input range its
    windows cover, as poplin's convolution vertices read the tile's input field through worklists
    (no input element copied per kernel position; lib/poplin/ConvVertices.cpp). Each element of the
    im2col matrix was a copy: ResNet-50's 7x7 stem at batch 64 put 160 KB of it on a tile, and 5.6 M
    copy pieces in the compiler. A plan that splits K (poplin's ``inChanSplit.parallel``, the
    input channels and kernel positions over ``k_split`` tiles) writes each tile's partial sums
    and reduces them as :func:`softipu.ops.matmul.matmul` does: each K range's vertices read
    only the kernel positions of their range, in place (the 3x3 convolutions of ResNet-50 at
    batch 64 had each replicated their input 9 times through im2col copies)."""
    q = pl.problem
    grids = _Grid.of(q.m, pl.blocks[1]), _Grid.of(q.n, pl.blocks[2]), k_grid(pl)
    b = rhs.place(ctx, pl, grids[2], grids[1], "b")
    out, direct = _output(ctx, pl, grids)
    partials = None if direct is not None else _partials(ctx, pl, grids)
    cs = ctx.compute_set("conv")
    _add_window_vertices(ctx, cs, pl, grids, xp, inner, b, direct if direct is not None else partials)
    ctx.execute(cs)
    _reduce_stage(ctx, pl, grids, partials, out)
    return out


def _add_window_vertices(ctx: OpContext, cs: Any, pl: Plan, grids, xp: Tensor, inner: _Inner,
                         b: _Blocks, out: _Blocks) -> None:
    """One ConvWindow vertex per (M block, N block, K range), reading :func:`_window_vertices`'s
    input range."""
    q, gn = pl.problem, grids[1]
    geo = _window_geometry(xp, inner)
    v = _window_vertices(grids, geo)
    i, j, kr, first, k0 = (v[k] for k in ("i", "j", "kr", "p0", "k0"))
    x0, x1, msz, ksz = (v[k] for k in ("x0", "x1", "msz", "ksz"))
    nsz = gn.sizes[j]
    g = np.zeros_like(i)
    starts = {"x": xp.offset + x0, "w": b.starts[b.group_of[g], kr, j],
              "out": out.starts[g, i, j] if out.starts.ndim == 3 else out.starts[g, i, j, kr]}
    tensors = {"x": (xp.dtype, x1 - x0), "w": (b.tensor.dtype, ksz * nsz),
               "out": (out.tensor.dtype, msz * nsz)}
    params = {"p0": first, "x0": x0, "k0": k0, "kk": ksz, "m": msz, "n": nsz,
              "layout": np.full(i.shape, B_TRANSPOSED if b.transposed else 0)}
    params |= {k: np.full(i.shape, v) for k, v in geo.items()}
    codelet = conv_window_codelet(q.in_dtype, out.tensor.dtype)
    tiles = pl.tile_of(g, i, j, kr)
    col = kr * len(gn) + j  # the (K range, N block) a vertex's weights block is
    keys, order = [x1 - x0, msz, nsz, ksz], col * len(grids[0]) + i
    add_vertex_runs(ctx.graph, cs, codelet, keys, order, tiles, starts, tensors, params,
                    fine_key=_evenly_spaced_runs(keys, order, x0, col))


def _window_vertices(grids, geo: dict[str, int]) -> dict[str, np.ndarray]:
    """Each window vertex's (M block, N block, K range) ``i, j, kr``, first pixel ``p0``, K range
    ``[k0, k0 + ksz)``, M block size ``msz`` and input range ``[x0, x1)`` (from the padded
    input's first element): from the first element its first pixel reads in the range's first
    kernel position to the last its last pixel reads in the range's last one."""
    gm, gn, gk = grids
    i, j, kr = (a.ravel() for a in np.meshgrid(np.arange(len(gm)), np.arange(len(gn)),
                                               np.arange(len(gk)), indexing="ij"))
    first, last = gm.starts[i], gm.starts[i] + gm.sizes[i] - 1
    k0, ksz = gk.starts[kr], gk.sizes[kr]
    x0 = _pixel_address(first, geo) + _kernel_offset(k0, geo)
    x1 = _pixel_address(last, geo) + _kernel_offset(k0 + ksz - 1, geo) + 1
    return {"i": i, "j": j, "kr": kr, "p0": first, "k0": k0, "ksz": ksz, "msz": gm.sizes[i],
            "x0": x0, "x1": x1}


def _kernel_offset(k: np.ndarray, geo: dict[str, int]) -> np.ndarray:
    """Offset in the padded NHWC input, from a window's first element, of K index ``k`` (K in
    ``(kh, kw, c)`` order); increasing with ``k``, so a K range's first and last bound its reads."""
    pos, ch = np.divmod(k, geo["c"])
    ki, kj = np.divmod(pos, geo["kw"])
    return (ki * geo["dh"] * geo["wp"] + kj * geo["dw"]) * geo["c"] + ch


def _evenly_spaced_runs(keys: list[np.ndarray], order: np.ndarray, x0: np.ndarray,
                        j: np.ndarray) -> np.ndarray:
    """A key that cuts the vertices, taken as :func:`add_vertex_runs` orders them, into runs of
    one N block whose input ranges start at evenly spaced addresses. A block of output pixels
    that wraps an output row or a sample moves its range's start irregularly; cut there, each run
    is a strided field (none is listed address by address: ResNet-50 b64's 7x7 stem had 33 M)."""
    idx = np.lexsort([order] + keys[::-1])
    if idx.size < 3:
        return np.zeros(idx.size, np.int64)
    first = np.concatenate(([True], np.any([k[idx][1:] != k[idx][:-1] for k in (*keys, j)], axis=0)))
    step = np.diff(x0[idx])
    run = np.zeros(idx.size, np.int64)
    cut, current = 0, None
    for v in range(1, idx.size):  # greedy: a run keeps the step between its first two vertices
        if first[v] or (current is not None and step[v - 1] != current):
            cut, current = cut + 1, None
        elif current is None:
            current = step[v - 1]
        run[v] = cut
    out = np.empty(idx.size, np.int64)
    out[idx] = run
    return out


def _window_geometry(xp: Tensor, inner: _Inner) -> dict[str, int]:
    _, c, hp, wp = xp.shape
    return {"ho": inner.ho, "wo": inner.wo, "hp": hp, "wp": wp, "c": c, "kh": inner.kh, "kw": inner.kw,
            "sh": inner.sh, "sw": inner.sw, "dh": inner.dh, "dw": inner.dw}


def _pixel_address(p: np.ndarray, geo: dict[str, int]) -> np.ndarray:
    """Offset in the padded NHWC input of the first element output pixel ``p``'s window reads."""
    n, rest = np.divmod(p, geo["ho"] * geo["wo"])
    oh, ow = np.divmod(rest, geo["wo"])
    return ((n * geo["hp"] + oh * geo["sh"]) * geo["wp"] + ow * geo["sw"]) * geo["c"]
