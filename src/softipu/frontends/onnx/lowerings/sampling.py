"""ONNX GridSample (nearest and linear, 2-D and 3-D, zeros/border/reflection padding): source
coordinates and corner weights are fused ``map``s over the grid, the corners one row gather each
from the input laid out as (positions, channels), summed by one more ``map``."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from softipu.dtypes import float32, int32
from softipu.frontends.onnx.registry import register_onnx_lowering
from softipu.graph.tensor import Tensor
from softipu.ops import elementwise as ew
from softipu.ops import indexing as ix
from softipu.ops.elementwise import E

G = E.input(0)


def _check(ctx: Any) -> str | None:
    mode = ctx.attr("mode", "linear")
    if mode not in ("linear", "bilinear", "nearest", "cubic", "bicubic"):
        return f"mode={mode!r} is not supported (nearest, linear and cubic are)"
    return None if ctx.input(0).dtype.is_float else "float data only"


def _reflect(x: Any, lo: float, hi: float) -> Any:
    span = hi - lo
    if span <= 0:
        return E.mul(x, 0.0)
    d = E.abs(E.sub(x, lo))
    flips = E.floor(E.div(d, span))
    extra = E.sub(d, E.mul(flips, span))
    even = E.eq(E.sub(flips, E.mul(2.0, E.floor(E.mul(flips, 0.5)))), 0.0)
    return E.select(even, E.add(lo, extra), E.sub(hi, extra))


def _source(g: Any, size: int, align: bool, padding: str) -> Any:
    """The source coordinate of a normalised grid value along a dim of ``size``."""
    if align:
        x = E.mul(E.add(g, 1.0), 0.5 * (size - 1))
    else:
        x = E.div(E.sub(E.mul(E.add(g, 1.0), float(size)), 1.0), 2.0)
    if padding == "border":
        return E.clamp(x, 0.0, float(size - 1))
    if padding == "reflection":
        x = _reflect(x, 0.0, float(size - 1)) if align else _reflect(x, -0.5, size - 0.5)
        return E.clamp(x, 0.0, float(size - 1))
    return x


def _cubic_weight(t: Any, k: int, a: float = -0.75) -> Any:
    """The cubic convolution weight of tap ``k`` (0..3, at offsets -1..2) for fraction ``t``."""
    if k == 0:
        s = E.add(t, 1.0)
        return E.sub(E.mul(E.add(E.mul(E.sub(E.mul(a, s), 5 * a), s), 8 * a), s), 4 * a)
    if k == 1:
        return E.add(E.mul(E.mul(E.sub(E.mul(a + 2, t), a + 3), t), t), 1.0)
    if k == 2:
        s = E.sub(1.0, t)
        return E.add(E.mul(E.mul(E.sub(E.mul(a + 2, s), a + 3), s), s), 1.0)
    s = E.sub(2.0, t)
    return E.sub(E.mul(E.add(E.mul(E.sub(E.mul(a, s), 5 * a), s), 8 * a), s), 4 * a)


def _round_even(v: Any) -> Any:
    return E.select(E.eq(E.abs(E.sub(v, E.trunc(v))), 0.5), E.mul(2.0, E.round(E.mul(v, 0.5))), E.round(v))


@register_onnx_lowering("GridSample", check=_check)
def _grid_sample(ctx: Any, node: Any) -> Tensor:
    x, grid = ctx.input(0), ctx.cast(ctx.input(1), float32)
    n, c, *sizes = x.shape
    nd = len(sizes)
    out_sp = grid.shape[1:-1]
    align = bool(int(ctx.attr("align_corners", 0)))
    padding = ctx.attr("padding_mode", "zeros")
    mode = ctx.attr("mode", "linear")
    nearest, cubic = mode == "nearest", mode in ("cubic", "bicubic")
    coords = []  # per spatial dim (in x's order: depth, height, width), the source coordinate
    for d in range(nd):
        g = grid[..., nd - 1 - d]  # the grid's last dim lists (x, y, z): width first
        expr = _source(G, sizes[d], align, "zeros" if cubic else padding)
        coords.append(ew.map(ctx.graph, expr, [g], ctx.prog, name=f"{ctx.name}/coord{d}"))
    strides = [int(np.prod(sizes[d + 1:])) for d in range(nd)]
    area = int(np.prod(sizes))
    base = ctx.constant((np.arange(n) * area).reshape((n,) + (1,) * nd).astype(np.int32), int32, "batch")
    rows = x.reshape((n, c, area)).transpose(0, 2, 1).reshape((n * area, c))
    taps = (0, 1, 2, 3) if cubic else (0, 1)
    corners = [()] if nearest else list(itertools.product(taps, repeat=nd))
    picked, weights = [], []
    for corner in corners:
        idx_expr, w_expr, valid = E.input(0), E.const(1.0), E.const(True)
        for d in range(nd):
            v = E.input(1 + d)
            if nearest:
                i = _round_even(v)
            elif cubic:
                lo = E.floor(v)
                i = E.add(lo, float(corner[d] - 1))
                w_expr = E.mul(w_expr, _cubic_weight(E.sub(v, lo), corner[d]))
            else:
                lo = E.floor(v)
                i = E.add(lo, float(corner[d]))
                frac = E.sub(v, lo)
                w_expr = E.mul(w_expr, frac if corner[d] else E.sub(1.0, frac))
            if cubic and padding == "reflection":
                i = _reflect(i, 0.0, float(sizes[d] - 1)) if align else \
                    E.clamp(E.round(_reflect(i, -0.5, sizes[d] - 0.5)), 0.0, float(sizes[d] - 1))
            if padding == "zeros":
                valid = E.logical_and(valid, E.logical_and(E.ge(i, 0.0), E.le(i, float(sizes[d] - 1))))
            idx_expr = E.add(idx_expr, E.mul(E.cast(E.clamp(i, 0.0, float(sizes[d] - 1)), int32), strides[d]))
        flat = ew.map(ctx.graph, E.cast(idx_expr, int32), [base, *coords], ctx.prog,
                      name=f"{ctx.name}/index")
        w = ew.map(ctx.graph, E.select(valid, w_expr, 0.0), [base, *coords], ctx.prog,
                   name=f"{ctx.name}/weight")
        picked.append(ix.gather(ctx.graph, rows, flat.reshape(-1), ctx.prog, axis=0,
                                name=f"{ctx.name}/gather"))
        weights.append(w.reshape((-1, 1)))
    k = len(picked)
    expr = E.mul(E.input(0), E.cast(E.input(k), x.dtype))
    for j in range(1, k):
        expr = E.add(expr, E.mul(E.input(j), E.cast(E.input(k + j), x.dtype)))
    out = ew.map(ctx.graph, expr, [*picked, *weights], ctx.prog, name=ctx.name)  # (n * out positions, c)
    out = out.reshape((n, *out_sp, c))
    return out.transpose([0, nd + 1, *range(1, nd + 1)])
