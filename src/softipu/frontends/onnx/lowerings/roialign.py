"""ONNX RoiAlign with a fixed sampling grid: every region's sample points and bilinear corner
weights are fused ``map``s over (regions, bins, samples), the four corners gathered from the
flattened input (one gather each over regions x channels x bins x samples), then averaged or
maxed over each bin's samples (ONNX's reference arithmetic)."""

from __future__ import annotations

from typing import Any

import numpy as np

from softipu.dtypes import float32, int32
from softipu.frontends.onnx.registry import register_onnx_lowering
from softipu.graph.tensor import Tensor
from softipu.ops import elementwise as ew
from softipu.ops import indexing as ix
from softipu.ops.elementwise import E
from softipu.ops.reduce import ReduceOp, reduce


def _check(ctx: Any) -> str | None:
    if int(ctx.attr("sampling_ratio", 0)) <= 0:
        return ("sampling_ratio=0 (a grid sized by each region at run time) is not supported: the IPU's "
                "shapes are static; give sampling_ratio > 0 (2 is common)")
    if ctx.attr("mode", "avg") not in ("avg", "max"):
        return f"mode={ctx.attr('mode')!r} is not supported (avg and max are)"
    return None if ctx.input(0).dtype.is_float else "float data only"


def _axis_samples(ctx: Any, rois: Tensor, k: int, extent: int, bins: int, grid: int,
                  shape: tuple[int, ...], axis: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Along one axis (k: the roi column of its start): low and high positions, the high
    weight and the in-range flag of every sample, shaped ``shape`` (regions, PH, PW, G, G)."""
    scale = float(ctx.attr("spatial_scale", 1.0))
    half = ctx.attr("coordinate_transformation_mode", "half_pixel") == "half_pixel"
    off = 0.5 if half else 0.0
    r = rois.shape[0]
    start = ew.map(ctx.graph, E.sub(E.mul(E.input(0), scale), off), [rois[:, k]], ctx.prog,
                   name=f"{ctx.name}/start{axis}")
    length = ew.map(ctx.graph, E.sub(E.input(1), E.input(0)), [rois[:, k], rois[:, k + 2]], ctx.prog,
                    name=f"{ctx.name}/len{axis}")
    length = ew.map(ctx.graph, E.mul(E.input(0), scale) if half else E.maximum(E.mul(E.input(0), scale), 1.0),
                    [length], ctx.prog, name=f"{ctx.name}/extent{axis}")
    frac = np.zeros(shape[1:], np.float32)  # bin + (sample + 0.5) / grid, in bins
    idx = np.indices(shape[1:])
    frac[...] = idx[axis] + (idx[2 + axis] + 0.5) / grid
    where = ctx.constant(frac[None], float32, f"frac{axis}")
    lead = (r,) + (1,) * (len(shape) - 1)
    pos = E.add(E.input(0), E.mul(E.input(2), E.div(E.input(1), float(bins))))
    raw = ew.map(ctx.graph, pos, [start.reshape(lead), length.reshape(lead), where], ctx.prog,
                 name=f"{ctx.name}/pos{axis}")
    inside = ew.map(ctx.graph, E.logical_and(E.ge(E.input(0), -1.0), E.le(E.input(0), float(extent))),
                    [raw], ctx.prog, name=f"{ctx.name}/inside{axis}")
    y = E.maximum(E.input(0), 0.0)
    top = E.ge(E.floor(y), float(extent - 1))
    low = ew.map(ctx.graph, E.select(top, float(extent - 1), E.floor(y)), [raw], ctx.prog,
                 name=f"{ctx.name}/low{axis}")
    high = ew.map(ctx.graph, E.select(top, float(extent - 1), E.add(E.floor(y), 1.0)), [raw], ctx.prog,
                  name=f"{ctx.name}/high{axis}")
    weight = ew.map(ctx.graph, E.select(top, 0.0, E.sub(y, E.floor(y))), [raw], ctx.prog,
                    name=f"{ctx.name}/w{axis}")
    return low, high, weight, inside


@register_onnx_lowering("RoiAlign", check=_check)
def _roi_align(ctx: Any, node: Any) -> Tensor:
    x, rois, batch = ctx.input(0), ctx.cast(ctx.input(1), float32), ctx.cast(ctx.input(2), int32)
    _, c, h, w = x.shape
    ph, pw, g = int(ctx.attr("output_height", 1)), int(ctx.attr("output_width", 1)), \
        int(ctx.attr("sampling_ratio"))
    r = rois.shape[0]
    shape = (r, ph, pw, g, g)
    ylo, yhi, ly, yin = _axis_samples(ctx, rois, 1, h, ph, g, shape, 0)
    xlo, xhi, lx, xin = _axis_samples(ctx, rois, 0, w, pw, g, shape, 1)
    chan = ctx.constant(np.arange(c, dtype=np.int32).reshape(1, c, 1, 1, 1, 1) * (h * w), int32, "chan")
    base = batch.reshape(r, 1, 1, 1, 1, 1)
    flat = x.reshape(-1)
    corners = []
    for k, (ys, xs, wy, wx) in enumerate([(ylo, xlo, E.sub(1.0, E.input(2)), E.sub(1.0, E.input(3))),
                                           (ylo, xhi, E.sub(1.0, E.input(2)), E.input(3)),
                                           (yhi, xlo, E.input(2), E.sub(1.0, E.input(3))),
                                           (yhi, xhi, E.input(2), E.input(3))]):
        at = E.add(E.mul(E.input(0), c * h * w), E.add(E.input(1), E.cast(E.add(E.mul(E.input(2), float(w)),
                                                                                E.input(3)), int32)))
        index = ew.map(ctx.graph, at, [base, chan, ys.expand_dims(1), xs.expand_dims(1)], ctx.prog,
                       name=f"{ctx.name}/index{k}")
        value = ix.gather(ctx.graph, flat, index, ctx.prog, name=f"{ctx.name}/corner{k}")
        weight = E.select(E.logical_and(E.input(4), E.input(5)), E.mul(wy, wx), 0.0)
        corners.append(ew.map(ctx.graph, E.mul(E.cast(weight, x.dtype), E.input(6)),
                              [ly.expand_dims(1), lx.expand_dims(1), ly.expand_dims(1), lx.expand_dims(1),
                               yin.expand_dims(1), xin.expand_dims(1), value], ctx.prog,
                              name=f"{ctx.name}/weighted{k}"))
    if ctx.attr("mode", "avg") == "max":
        most = E.maximum(E.maximum(E.input(0), E.input(1)), E.maximum(E.input(2), E.input(3)))
        best = ew.map(ctx.graph, most, corners, ctx.prog, name=f"{ctx.name}/best")
        return reduce(ctx.graph, best, ctx.prog, dims=[4, 5], op=ReduceOp.MAX, name=ctx.name)
    total = ew.map(ctx.graph, E.add(E.add(E.input(0), E.input(1)), E.add(E.input(2), E.input(3))), corners,
                   ctx.prog, name=f"{ctx.name}/sum")
    summed = reduce(ctx.graph, total, ctx.prog, dims=[4, 5], name=f"{ctx.name}/bins")
    return ew.map(ctx.graph, E.div(E.input(0), float(g * g)), [summed], ctx.prog, name=ctx.name)
