"""ONNX Resize (and the older Upsample): interpolation is separable, so each resized axis is one
(out, in) matrix worked out while compiling from onnx's reference coefficients; on the IPU a
nearest-neighbour axis is an indexed view (no data moves) and any other a planned matmul."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from softipu.frontends.onnx.registry import register_onnx_lowering
from softipu.graph.tensor import Tensor
from softipu.ops import elementwise as ew
from softipu.ops.elementwise import E
from softipu.ops.matmul import matmul


def _coeff_fn(mode: str, nearest_mode: str, cubic_a: float, antialias: bool) -> Any:
    from onnx.reference.ops import op_resize as R  # noqa: PLC0415, N812

    if mode == "nearest":
        return lambda x, scale: R._nearest_coeffs(x, mode=nearest_mode)  # noqa: SLF001
    if mode == "cubic":
        fn = R._cubic_coeffs_antialias if antialias else R._cubic_coeffs  # noqa: SLF001
        return lambda x, scale: fn(x, scale, A=cubic_a)
    return R._linear_coeffs_antialias if antialias else R._linear_coeffs  # noqa: SLF001


def _plan(ctx: Any, shape: tuple[int, ...]) -> tuple[list[float], list[int], list[float] | None]:
    """Per-axis scales, output sizes and roi, as onnx's reference works them out."""
    r = len(shape)
    old = ctx.opset.get("", 13) < 11 or ctx.node.op_type == "Upsample"
    scales = ctx.host(1) if old else (ctx.host(2) if ctx.has(2) else None)
    if old and scales is None:
        scales = np.asarray(ctx.attr("scales"))
    sizes = None if old or not ctx.has(3) else ctx.host(3)
    scales = None if scales is None or np.asarray(scales).size == 0 else [float(s) for s in np.ravel(scales)]
    sizes = None if sizes is None or np.asarray(sizes).size == 0 else [int(s) for s in np.ravel(sizes)]
    roi = ctx.host(1) if not old and ctx.has(1) else None
    roi = None if roi is None or np.asarray(roi).size == 0 else [float(v) for v in np.ravel(roi)]
    axes = ctx.attr("axes")
    axes = list(range(r)) if axes is None else [int(a) % r for a in axes]
    if len(axes) != r:
        full_scales = [1.0] * r
        full_sizes = list(shape)
        full_roi = [0.0] * r + [1.0] * r
        for i, a in enumerate(axes):
            if scales is not None:
                full_scales[a] = scales[i]
            if sizes is not None:
                full_sizes[a] = sizes[i]
            if roi is not None:
                full_roi[a], full_roi[r + a] = roi[i], roi[len(axes) + i]
        scales = full_scales if scales is not None else None
        sizes = full_sizes if sizes is not None else None
        roi = full_roi if roi is not None else None
    if sizes is not None:
        scales = [sizes[i] / shape[i] for i in range(r)]
        policy = ctx.attr("keep_aspect_ratio_policy", "stretch")
        if policy != "stretch":
            pick = min if policy == "not_larger" else max
            s = pick(scales[a] for a in axes)
            scales = [s if i in axes else 1.0 for i in range(r)]
            sizes = [int(s * shape[i] + 0.5) if i in axes else shape[i] for i in range(r)]
    else:
        sizes = [int(s * n) for s, n in zip(scales, shape, strict=True)]
    return scales, sizes, roi


def _axis_matrix(ctx: Any, n: int, scale: float, out: int, roi: list[float] | None, fn: Any,
                 transform: str) -> tuple[np.ndarray, np.ndarray]:
    """(M, b): the axis' output is ``M @ input + b`` (b: extrapolated positions' value)."""
    from onnx.reference.ops import op_resize as R  # noqa: PLC0415, N812

    kwargs = {"extrapolation_value": float(ctx.attr("extrapolation_value", 0.0)),
              "coordinate_transformation_mode": transform,
              "exclude_outside": bool(int(ctx.attr("exclude_outside", 0)))}
    eye = R._interpolate_1d_along_axis(np.eye(n), 0, scale, out, fn, roi=roi, **kwargs)  # noqa: SLF001
    zero = R._interpolate_1d_along_axis(np.zeros((n, 1)), 0, scale, out, fn, roi=roi, **kwargs)  # noqa: SLF001
    b = zero[:, 0]
    return eye - b[:, None], b


def _apply(ctx: Any, x: Tensor, axis: int, m: np.ndarray, b: np.ndarray) -> Tensor:
    rows_one_hot = np.all((m == 0) | (m == 1), axis=1) & (m.sum(axis=1) == 1)
    if rows_one_hot.all() and not b.any():  # nearest: an indexed view of the input
        index = m.argmax(axis=1)
        addr = x.addresses()[(slice(None),) * axis + (index,)]
        return Tensor(x.graph, x.dtype, tuple(addr.shape), 0, (), addr)
    if not x.dtype.is_float:
        raise ValueError(f"{x.dtype} data: only nearest-neighbour resizing is lowered for integers")
    perm = [d for d in range(x.ndim) if d != axis] + [axis]
    moved = x.transpose(perm)
    lead = moved.shape[:-1]
    w = ctx.constant(np.ascontiguousarray(m.T).astype(x.dtype.numpy), x.dtype, f"interp{axis}")
    y = matmul(ctx.graph, moved.reshape((-1, m.shape[1])), w, ctx.prog, name=f"{ctx.name}/axis{axis}")
    if b.any():
        bias = ctx.constant(b.astype(x.dtype.numpy), x.dtype, f"extrapolation{axis}")
        y = ew.map(ctx.graph, E.add(E.input(0), E.input(1)), [y, bias], ctx.prog,
                   name=f"{ctx.name}/extra{axis}")
    y = y.reshape(lead + (m.shape[0],))
    back = list(np.argsort(perm))
    return y.transpose(back)


def _resize(ctx: Any, node: Any) -> Tensor:
    x = ctx.input(0)
    old = ctx.opset.get("", 13) < 11 or node.op_type == "Upsample"
    mode = ctx.attr("mode", "nearest")
    transform = "asymmetric" if old else ctx.attr("coordinate_transformation_mode", "half_pixel")
    nearest = "floor" if old else ctx.attr("nearest_mode", "round_prefer_floor")
    cubic_a, antialias = float(ctx.attr("cubic_coeff_a", -0.75)), bool(int(ctx.attr("antialias", 0)))
    fn = _coeff_fn(mode, nearest, cubic_a, antialias)
    scales, sizes, roi = _plan(ctx, x.shape)
    r = x.ndim
    for axis in range(r):
        identity = math.isclose(scales[axis], 1.0) and sizes[axis] == x.shape[axis] and (
            roi is None or (math.isclose(roi[axis], 0.0) and math.isclose(roi[axis + r], 1.0)))
        if identity:
            continue
        axis_roi = None if roi is None else [roi[axis], roi[axis + r]]
        m, b = _axis_matrix(ctx, x.shape[axis], scales[axis], sizes[axis], axis_roi, fn, transform)
        x = _apply(ctx, x, axis, m, b)
    return x


register_onnx_lowering("Resize", _resize, static=(1, 2, 3))
register_onnx_lowering("Upsample", _resize, static=(1,))


# -- DFT ---------------------------------------------------------------------------------------------
def _dft_matrix(ctx: Any, node: Any, n: int, c: int, axis_input: bool) -> tuple[np.ndarray, int]:
    """The DFT as a real matrix from the (n, c) signal to the (m, 2) spectrum, probed with onnx's
    reference DFT on the n*c basis signals (exact: the transform is linear)."""
    import onnx  # noqa: PLC0415
    from onnx import helper  # noqa: PLC0415
    from onnx.reference import ReferenceEvaluator  # noqa: PLC0415

    basis = np.eye(n * c, dtype=np.float32).reshape(n * c, n, c)
    inputs, feeds = ["x"], {"x": basis}
    if ctx.has(1):
        inputs.append("len")
        feeds["len"] = np.asarray(ctx.static(1, "dft_length"))
    else:
        inputs.append("")
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name != "axis"}
    if axis_input:
        inputs.append("axis")
        feeds["axis"] = np.array(1, np.int64)
    else:
        attrs["axis"] = 1
    while inputs and inputs[-1] == "":
        inputs.pop()
    probe = helper.make_node("DFT", inputs, ["y"], **attrs)
    out = ReferenceEvaluator(probe, opsets=ctx.opset).run(None, feeds)[0]
    _ = onnx
    return out.reshape(n * c, -1).T, out.shape[-1]  # (m*oc, n*c), oc


def _dft(ctx: Any, node: Any) -> Tensor:
    x = ctx.input(0)
    axis_input = ctx.opset.get("", 20) >= 20
    if axis_input:
        axis = int(np.asarray(ctx.static(2, "axis")).reshape(-1)[0]) if ctx.has(2) else -2
    else:
        axis = int(ctx.attr("axis", 1))
    axis %= x.ndim
    n, c = x.shape[axis], x.shape[-1]
    m, oc = _dft_matrix(ctx, node, n, c, axis_input)
    rest = [d for d in range(x.ndim - 1) if d != axis]
    moved = x.transpose(rest + [axis, x.ndim - 1])
    lead = moved.shape[:-2]
    w = ctx.constant(np.ascontiguousarray(m.T).astype(x.dtype.numpy), x.dtype, "dft")
    y = matmul(ctx.graph, moved.reshape((-1, n * c)), w, ctx.prog, name=ctx.name)
    y = y.reshape(lead + (m.shape[0] // oc, oc))
    order = rest + [axis, x.ndim - 1]
    return y.transpose(list(np.argsort(order)))


register_onnx_lowering("DFT", _dft, static=(1, 2))
