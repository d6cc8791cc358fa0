"""ONNX shape and data-movement ops: views where the IPU moves no data (Reshape, Transpose, Slice,
Expand, a Gather by constant indices...), ``softipu.ops.indexing`` where indices arrive at run time."""

from __future__ import annotations

from typing import Any

import numpy as np

from softipu.dtypes import int32
from softipu.frontends.onnx.registry import register_onnx_lowering
from softipu.graph.tensor import Tensor, concat
from softipu.ops import elementwise as ew
from softipu.ops import indexing as ix
from softipu.ops.elementwise import E
from softipu.ops.reduce import ReduceOp, reduce


def _axis(a: int, ndim: int) -> int:
    a = int(a)
    if not -max(ndim, 1) <= a < max(ndim, 1):
        raise ValueError(f"axis {a} is out of range for a {ndim}-d tensor")
    return a % max(ndim, 1)


def _fancy(x: Tensor, index: Any) -> Tensor:
    """An indexed view: ``x.addresses()[index]`` (moves no data)."""
    addr = x.addresses()[index]
    return Tensor(x.graph, x.dtype, tuple(addr.shape), 0, (), addr)


def _ints(value: Any) -> list[int]:
    return [int(v) for v in np.asarray(value).reshape(-1)]


def _axes(ctx: Any, index: int, attr: str = "axes") -> list[int] | None:
    """Axes from an attribute (older opsets) or an optional input (newer)."""
    if ctx.has(index):
        return _ints(ctx.static(index, attr))
    value = ctx.attr(attr)
    return None if value is None else _ints(value)


@register_onnx_lowering("Reshape", static=(1,))
def _reshape(ctx: Any, node: Any) -> Tensor:
    x = ctx.input(0)
    shape = _ints(ctx.static(1, "shape")) if ctx.has(1) else _ints(ctx.attr("shape"))
    if not int(ctx.attr("allowzero", 0)):
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return x.reshape(tuple(shape))


@register_onnx_lowering("Flatten")
def _flatten(ctx: Any, node: Any) -> Tensor:
    x = ctx.input(0)
    a = int(ctx.attr("axis", 1))
    a = a + x.ndim if a < 0 else a
    lead = int(np.prod(x.shape[:a], dtype=np.int64))
    return x.reshape((lead, int(np.prod(x.shape[a:], dtype=np.int64))))


@register_onnx_lowering("Squeeze", static=(1,))
def _squeeze(ctx: Any, node: Any) -> Tensor:
    x = ctx.input(0)
    axes = _axes(ctx, 1)
    axes = [i for i, d in enumerate(x.shape) if d == 1] if axes is None else [_axis(a, x.ndim) for a in axes]
    return x.reshape(tuple(d for i, d in enumerate(x.shape) if i not in axes))


@register_onnx_lowering("Unsqueeze", static=(1,))
def _unsqueeze(ctx: Any, node: Any) -> Tensor:
    x = ctx.input(0)
    axes = _axes(ctx, 1)
    nd = x.ndim + len(axes)
    axes = sorted(_axis(a, nd) for a in axes)
    shape = list(x.shape)
    for a in axes:
        shape.insert(a, 1)
    return x.reshape(tuple(shape))


@register_onnx_lowering("Transpose")
def _transpose(ctx: Any, node: Any) -> Tensor:
    x = ctx.input(0)
    perm = ctx.attr("perm")
    return x.transpose(list(perm) if perm is not None else list(range(x.ndim))[::-1])


@register_onnx_lowering("Concat")
def _concat(ctx: Any, node: Any) -> Tensor:
    xs = [t for t in ctx.inputs() if t is not None]
    a = _axis(ctx.attr("axis"), xs[0].ndim)
    parts = [t for t in xs if t.shape[a]]
    if not parts:
        shape = list(xs[0].shape)
        shape[a] = 0
        return ctx.variable(xs[0].dtype, shape)
    return parts[0] if len(parts) == 1 else concat(parts, axis=a)


@register_onnx_lowering("Split", static=(1,))
def _split(ctx: Any, node: Any) -> list[Tensor]:
    x = ctx.input(0)
    a = _axis(ctx.attr("axis", 0), x.ndim)
    sizes = _ints(ctx.static(1, "split")) if ctx.has(1) else ctx.attr("split")
    n = len(node.output)
    if sizes is None:
        num = int(ctx.attr("num_outputs", n))
        chunk = -(-x.shape[a] // num)
        sizes = [min(chunk, x.shape[a] - chunk * i) for i in range(num)]
    bounds = np.cumsum([0, *sizes])
    key = [slice(None)] * x.ndim
    out = []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        key[a] = slice(int(lo), int(hi))
        out.append(x[tuple(key)])
    return out


@register_onnx_lowering("Slice", static=(1, 2, 3, 4))
def _slice(ctx: Any, node: Any) -> Tensor:
    x = ctx.input(0)
    if ctx.has(1):
        starts, ends = _ints(ctx.static(1, "starts")), _ints(ctx.static(2, "ends"))
        axes = _ints(ctx.static(3, "axes")) if ctx.has(3) else list(range(len(starts)))
        steps = _ints(ctx.static(4, "steps")) if ctx.has(4) else [1] * len(starts)
    else:
        starts, ends = _ints(ctx.attr("starts")), _ints(ctx.attr("ends"))
        axes = _ints(ctx.attr("axes", list(range(len(starts)))))
        steps = [1] * len(starts)
    key: list[Any] = [slice(None)] * x.ndim
    for s, e, a, st in zip(starts, ends, axes, steps, strict=True):
        a = _axis(a, x.ndim)
        n = x.shape[a]
        s, e = max(min(s, 2**31), -(2**31)), max(min(e, 2**31), -(2**31))
        idx = range(n)[slice(s, e, st)]
        key[a] = slice(idx.start, idx.stop if idx.stop >= 0 else None, idx.step) if len(idx) else slice(0, 0)
    return x[tuple(key)]


def _wrap(ctx: Any, indices: Tensor, n: int) -> Tensor:
    """Negative indices counted from the end (``i + n`` where ``i < 0``), as int32."""
    return ew.map(ctx.graph, E.cast(E.select(E.lt(E.input(0), 0), E.add(E.input(0), n), E.input(0)), int32),
                  [indices], ctx.prog, name=f"{ctx.name}/wrap")


@register_onnx_lowering("Gather")
def _gather(ctx: Any, node: Any) -> Tensor:
    x = ctx.input(0)
    a = _axis(ctx.attr("axis", 0), x.ndim)
    host = ctx.host(1)
    if host is not None:  # constant indices: a view, no data moves
        idx = np.asarray(host).astype(np.int64)
        idx = np.where(idx < 0, idx + x.shape[a], idx)
        return _fancy(x, (slice(None),) * a + (idx,))
    return ix.gather(ctx.graph, x, _wrap(ctx, ctx.input(1), x.shape[a]), ctx.prog, axis=a, name=ctx.name)


def _flat_positions(shape: tuple[int, ...], axis: int) -> tuple[np.ndarray, int]:
    """Row-major flat offsets of every position with coordinate ``axis`` zeroed, and that axis' stride."""
    strides = np.cumprod((1, *shape[::-1]))[:-1][::-1].astype(np.int64)
    grids = np.indices(shape, dtype=np.int64) if shape else np.zeros((0,), np.int64)
    base = sum(g * s for k, (g, s) in enumerate(zip(grids, strides, strict=True)) if k != axis)
    return np.asarray(base, np.int64).reshape(shape), int(strides[axis])


def _element_index(ctx: Any, x: Tensor, indices: Tensor, axis: int) -> Tensor:
    """Flat indices into ``x`` of ``x[..., indices[pos], ...]`` at every position of ``indices``."""
    base, stride = _flat_positions(indices.shape, axis)
    x_strides = np.cumprod((1, *x.shape[::-1]))[:-1][::-1]
    base_x = np.zeros(indices.shape, np.int64)
    grids = np.indices(indices.shape, dtype=np.int64)
    for k, s in enumerate(x_strides):
        if k != axis:
            base_x += grids[k] * int(s)
    n, step = x.shape[axis], int(x_strides[axis])
    const = ctx.constant(base_x.astype(np.int32), int32, "positions")
    expr = E.add(E.input(1), E.mul(E.select(E.lt(E.input(0), 0), E.add(E.input(0), n), E.input(0)), step))
    return ew.map(ctx.graph, E.cast(expr, int32), [ctx.cast(indices, int32), const], ctx.prog,
                  name=f"{ctx.name}/index")


@register_onnx_lowering(("GatherElements",))
def _gather_elements(ctx: Any, node: Any) -> Tensor:
    x, indices = ctx.input(0), ctx.input(1)
    a = _axis(ctx.attr("axis", 0), x.ndim)
    flat = _element_index(ctx, x, indices, a)
    out = ix.gather(ctx.graph, x.reshape(-1), flat.reshape(-1), ctx.prog, name=ctx.name)
    return out.reshape(indices.shape)


_DENSE_LIMIT = 1 << 22  # updates x destination elements of the compare-all form of max/min/mul


def _scatter_check(ctx: Any) -> str | None:
    red = ctx.attr("reduction", "none")
    if red in ("none", "add"):
        return None
    if red not in _REDUCED:
        return f"reduction={red!r} is not supported (none, add, mul, max and min are)"
    dense = int(np.prod(ctx.shape(2), dtype=np.int64)) * int(np.prod(ctx.shape(0), dtype=np.int64))
    if dense > _DENSE_LIMIT:
        return (f"reduction={red!r} compares each of the updates with each element of the data "
                f"({dense} pairs, over {_DENSE_LIMIT}); only none and add scatter that many")
    return None


_REDUCED = {"max": (ReduceOp.MAX, E.maximum), "min": (ReduceOp.MIN, E.minimum),
            "mul": (ReduceOp.MUL, E.mul)}


def _scatter_reduced(ctx: Any, x: Tensor, flat: Tensor, updates: Tensor, width: int) -> Tensor:
    """``x`` (rows of ``width``) with updates ``u`` (one row each, at row ``flat[u]``) combined by
    max/min/mul, duplicates included: each update is compared with every row (a [U, rows, width]
    selection, the reduction's identity where it does not land), reduced over the updates, then
    combined with ``x`` (ONNX's ``reduction`` semantics, in update order for an associative op)."""
    op, combine = _REDUCED[ctx.attr("reduction")]
    rows = int(np.prod(x.shape, dtype=np.int64)) // width
    dt = x.dtype.numpy
    if op is ReduceOp.MUL:
        identity = 1
    elif np.issubdtype(dt, np.floating):
        identity = float("-inf") if op is ReduceOp.MAX else float("inf")
    else:
        info = np.iinfo(dt)
        identity = int(info.min if op is ReduceOp.MAX else info.max)
    iota = ctx.constant(np.arange(rows, dtype=np.int32).reshape(1, rows, 1), int32, "rows")
    n = flat.shape[0]
    hit = E.eq(E.input(0), E.input(1))
    picked = ew.map(ctx.graph, E.select(hit, E.input(2), E.cast(identity, x.dtype)),
                    [flat.reshape((n, 1, 1)), iota, updates.reshape((n, 1, width))], ctx.prog,
                    name=f"{ctx.name}/picked")
    merged = reduce(ctx.graph, picked, ctx.prog, dims=[0], op=op, name=f"{ctx.name}/merged")
    return ew.map(ctx.graph, combine(E.input(0), E.input(1)), [x.reshape((rows, width)), merged], ctx.prog,
                  name=ctx.name)


@register_onnx_lowering(("ScatterElements", "Scatter"), check=_scatter_check)
def _scatter_elements(ctx: Any, node: Any) -> Tensor:
    x, indices, updates = ctx.input(0), ctx.input(1), ctx.input(2)
    a = _axis(ctx.attr("axis", 0), x.ndim)
    flat = _element_index(ctx, x, indices, a).reshape(-1)
    if ctx.attr("reduction", "none") in _REDUCED:
        return _scatter_reduced(ctx, x, flat, updates.reshape(-1), 1).reshape(x.shape)
    op = ix.scatter_add if ctx.attr("reduction", "none") == "add" else ix.scatter
    return op(ctx.graph, x.reshape(-1), flat, updates.reshape(-1), ctx.prog, name=ctx.name).reshape(x.shape)


def _nd_index(ctx: Any, x: Tensor, indices: Tensor, batch: int) -> tuple[Tensor, tuple[int, ...]]:
    """Flat row indices into ``x`` viewed as (rows, slice) for GatherND/ScatterND."""
    k = indices.shape[-1]
    lead = indices.shape[:-1]
    x_strides = np.cumprod((1, *x.shape[batch:batch + k][::-1]))[:-1][::-1]
    rows_per_batch = int(np.prod(x.shape[batch:batch + k], dtype=np.int64))
    b_off = (np.indices(lead, dtype=np.int64)[:batch] if batch else None)
    base = np.zeros(lead, np.int64)
    if batch:
        bstr = np.cumprod((1, *x.shape[:batch][::-1]))[:-1][::-1]
        for j in range(batch):
            base += b_off[j] * int(bstr[j]) * rows_per_batch
    expr, inputs = E.input(0), [ctx.constant(base.astype(np.int32), int32, "rows")]
    ind = ctx.cast(indices, int32)
    for j in range(k):
        n = x.shape[batch + j]
        inputs.append(ind[..., j])
        v = E.input(len(inputs) - 1)
        expr = E.add(expr, E.mul(E.select(E.lt(v, 0), E.add(v, n), v), int(x_strides[j])))
    flat = ew.map(ctx.graph, E.cast(expr, int32), inputs, ctx.prog, name=f"{ctx.name}/index")
    return flat, x.shape[batch + k:]


@register_onnx_lowering("GatherND")
def _gather_nd(ctx: Any, node: Any) -> Tensor:
    x, indices = ctx.input(0), ctx.input(1)
    batch = int(ctx.attr("batch_dims", 0))
    flat, rest = _nd_index(ctx, x, indices, batch)
    rows = x.reshape((-1, int(np.prod(rest, dtype=np.int64))))
    out = ix.gather(ctx.graph, rows, flat.reshape(-1), ctx.prog, axis=0, name=ctx.name)
    return out.reshape(indices.shape[:-1] + tuple(rest))


@register_onnx_lowering("ScatterND", check=_scatter_check)
def _scatter_nd(ctx: Any, node: Any) -> Tensor:
    x, indices, updates = ctx.input(0), ctx.input(1), ctx.input(2)
    flat, rest = _nd_index(ctx, x, indices, 0)
    width = int(np.prod(rest, dtype=np.int64))
    if ctx.attr("reduction", "none") in _REDUCED:
        out = _scatter_reduced(ctx, x, flat.reshape(-1), updates.reshape((-1, width)), width)
        return out.reshape(x.shape)
    op = ix.scatter_add if ctx.attr("reduction", "none") == "add" else ix.scatter
    out = op(ctx.graph, x.reshape((-1, width)), flat.reshape(-1), updates.reshape((-1, width)), ctx.prog,
             axis=0, name=ctx.name)
    return out.reshape(x.shape)


@register_onnx_lowering("Expand", static=(1,))
def _expand(ctx: Any, node: Any) -> Tensor:
    x = ctx.input(0)
    shape = tuple(np.broadcast_shapes(x.shape, tuple(_ints(ctx.static(1, "shape")))))
    return x.reshape((1,) * (len(shape) - x.ndim) + x.shape).broadcast(shape)


@register_onnx_lowering("Tile", static=(1,))
def _tile(ctx: Any, node: Any) -> Tensor:
    x = ctx.input(0)
    repeats = _ints(ctx.static(1, "repeats"))
    idx = [np.tile(np.arange(d), r) for d, r in zip(x.shape, repeats, strict=True)]
    return _fancy(x, np.ix_(*idx)) if idx else x


@register_onnx_lowering("Shape")
def _shape(ctx: Any, node: Any) -> np.ndarray:
    shape = np.array(ctx.shape(0), np.int64)
    start, end = ctx.attr("start", 0), ctx.attr("end")
    return shape[slice(int(start), None if end is None else int(end))]


@register_onnx_lowering("Size")
def _size(ctx: Any, node: Any) -> np.ndarray:
    return np.array(int(np.prod(ctx.shape(0), dtype=np.int64)), np.int64)


@register_onnx_lowering("ConstantOfShape", static=(0,))
def _constant_of_shape(ctx: Any, node: Any) -> np.ndarray:
    value = ctx.attr("value")
    value = np.zeros(1, np.float32) if value is None else np.asarray(value).reshape(-1)
    return np.full(tuple(_ints(ctx.static(0, "shape"))), value[0], value.dtype)


@register_onnx_lowering("Pad", static=(1, 2, 3))
def _pad(ctx: Any, node: Any) -> Tensor:
    x = ctx.input(0)
    pads = _ints(ctx.static(1, "pads")) if ctx.has(1) else _ints(ctx.attr("pads"))
    value = ctx.static(2, "constant_value").reshape(-1)[0].item() if ctx.has(2) else ctx.attr("value", 0.0)
    axes = [_axis(a, x.ndim) for a in _ints(ctx.static(3, "axes"))] if ctx.has(3) else list(range(x.ndim))
    widths = [[0, 0] for _ in range(x.ndim)]
    for k, a in enumerate(axes):
        widths[a] = [pads[k], pads[k + len(axes)]]
    key = tuple(slice(max(-lo, 0), x.shape[d] - max(-hi, 0)) for d, (lo, hi) in enumerate(widths))
    x = x[key]
    widths = [(max(lo, 0), max(hi, 0)) for lo, hi in widths]
    mode = ctx.attr("mode", "constant")
    if not any(lo or hi for lo, hi in widths):
        return x
    if mode != "constant":  # edge, reflect, wrap: every element is one of x's, an indexed view
        index = np.ix_(*(np.pad(np.arange(n), w, mode=mode) for n, w in zip(x.shape, widths, strict=True)))
        return _fancy(x, index)
    return ix.pad(ctx.graph, x, ctx.prog, pad_width=widths, mode=mode, value=value, name=ctx.name)


@register_onnx_lowering("DepthToSpace")
def _depth_to_space(ctx: Any, node: Any) -> Tensor:
    x = ctx.input(0)
    b = int(ctx.attr("blocksize"))
    n, c, h, w = x.shape
    if ctx.attr("mode", "DCR") == "DCR":
        t = x.reshape((n, b, b, c // b // b, h, w)).transpose(0, 3, 4, 1, 5, 2)
    else:
        t = x.reshape((n, c // b // b, b, b, h, w)).transpose(0, 1, 4, 2, 5, 3)
    return t.reshape((n, c // b // b, h * b, w * b))


@register_onnx_lowering("SpaceToDepth")
def _space_to_depth(ctx: Any, node: Any) -> Tensor:
    x = ctx.input(0)
    b = int(ctx.attr("blocksize"))
    n, c, h, w = x.shape
    perm = (0, 3, 5, 1, 2, 4) if ctx.attr("mode", "DCR") == "DCR" else (0, 1, 3, 5, 2, 4)
    t = x.reshape((n, c, h // b, b, w // b, b)).transpose(*perm)
    return t.reshape((n, c * b * b, h // b, w // b))


@register_onnx_lowering("Trilu", static=(1,))
def _trilu(ctx: Any, node: Any) -> Tensor:
    x = ctx.input(0)
    k = int(ctx.static(1, "k").reshape(-1)[0]) if ctx.has(1) else 0
    rows, cols = x.shape[-2:]
    mask = np.tril(np.ones((rows, cols), bool), k) if not int(ctx.attr("upper", 1)) else \
        np.triu(np.ones((rows, cols), bool), k)
    from softipu.dtypes import bool_  # noqa: PLC0415
    m = ctx.constant(mask, bool_, "mask")
    expr = E.select(E.input(0), E.input(1), E.cast(0, x.dtype))
    return ew.map(ctx.graph, expr, [m, x], ctx.prog, name=ctx.name)


@register_onnx_lowering("EyeLike")
def _eye_like(ctx: Any, node: Any) -> np.ndarray:
    import onnx  # noqa: PLC0415
    rows, cols = ctx.shape(0)
    dtype = ctx.attr("dtype")
    np_dtype = onnx.helper.tensor_dtype_to_np_dtype(int(dtype) if dtype is not None else ctx.elem_type(0))
    return np.eye(rows, cols, int(ctx.attr("k", 0)), dtype=np_dtype)


@register_onnx_lowering("Range", static=(0, 1, 2))
def _range(ctx: Any, node: Any) -> np.ndarray:
    start, limit, delta = (ctx.static(i).reshape(()) for i in range(3))
    return np.arange(start, limit, delta, dtype=np.asarray(start).dtype)


@register_onnx_lowering("Compress", static=(1,))
def _compress(ctx: Any, node: Any) -> Tensor:
    x = ctx.input(0)
    cond = np.asarray(ctx.static(1, "condition")).astype(bool)
    axis = ctx.attr("axis")
    if axis is None:
        return _fancy(x.reshape(-1), (np.nonzero(cond)[0],))
    a = _axis(axis, x.ndim)
    return _fancy(x, (slice(None),) * a + (np.nonzero(cond[: x.shape[a]])[0],))


@register_onnx_lowering("OneHot", static=(1, 2))
def _one_hot(ctx: Any, node: Any) -> Tensor:
    indices = ctx.input(0)
    depth = int(np.asarray(ctx.static(1, "depth")).reshape(-1)[0])
    values = ctx.input(2)
    a = int(ctx.attr("axis", -1))
    nd = indices.ndim + 1
    a = a % nd
    iota = np.arange(depth).reshape((depth,) + (1,) * (nd - 1 - a))
    ids = ctx.constant(iota.astype(np.int32), int32, "iota")
    idx = indices.reshape(indices.shape[:a] + (1,) + indices.shape[a:])
    expr = E.select(E.eq(E.select(E.lt(E.input(0), 0), E.add(E.input(0), depth), E.input(0)), E.input(1)),
                    E.input(3), E.input(2))
    off, on = values[0:1].reshape(()), values[1:2].reshape(())
    return ew.map(ctx.graph, expr, [ctx.cast(idx, int32), ids, off, on],
                  ctx.prog, name=ctx.name)


@register_onnx_lowering("Dropout")
def _dropout(ctx: Any, node: Any) -> tuple:
    x = ctx.input(0)
    from softipu.dtypes import bool_  # noqa: PLC0415
    mask = ctx.constant(np.ones(x.shape, bool), bool_, "mask") if len(node.output) > 1 else None
    return x, mask


@register_onnx_lowering("ReverseSequence", static=(1,))
def _reverse_sequence(ctx: Any, node: Any) -> Tensor:
    x = ctx.input(0)
    lens = _ints(ctx.static(1, "sequence_lens"))
    b, t = int(ctx.attr("batch_axis", 1)), int(ctx.attr("time_axis", 0))
    grid = list(np.indices(x.shape))
    n = np.asarray(lens)[grid[b]]
    grid[t] = np.where(grid[t] < n, n - 1 - grid[t], grid[t])
    return _fancy(x, tuple(grid))


@register_onnx_lowering("CenterCropPad", static=(1,))
def _center_crop_pad(ctx: Any, node: Any) -> Tensor:
    x = ctx.input(0)
    want = _ints(ctx.static(1, "shape"))
    axes = [_axis(a, x.ndim) for a in ctx.attr("axes", list(range(x.ndim)))]
    key: list[Any] = [slice(None)] * x.ndim
    widths = [(0, 0)] * x.ndim
    for a, n in zip(axes, want, strict=True):
        have = x.shape[a]
        if n < have:
            lo = (have - n) // 2
            key[a] = slice(lo, lo + n)
        elif n > have:
            lo = (n - have) // 2
            widths[a] = (lo, n - have - lo)
    x = x[tuple(key)]
    if not any(lo or hi for lo, hi in widths):
        return x
    return ix.pad(ctx.graph, x, ctx.prog, pad_width=widths, mode="constant", value=0, name=ctx.name)


def _host_only(ctx: Any, node: Any) -> list[np.ndarray]:
    """An op whose output depends only on compile-time values (a window of a given size): its
    value is computed while compiling (onnx's reference implementation), a constant on the IPU."""
    from onnx.reference import ReferenceEvaluator  # noqa: PLC0415

    feeds = {n: ctx.static(i) for i, n in enumerate(node.input) if n}
    return list(ReferenceEvaluator(node, opsets=ctx.opset).run(None, feeds))


for _name in ("HannWindow", "HammingWindow", "BlackmanWindow", "MelWeightMatrix"):
    register_onnx_lowering(_name, _host_only, static=(0, 1, 2, 3, 4))


@register_onnx_lowering("Col2Im", static=(1, 2))
def _col2im(ctx: Any, node: Any) -> Tensor:
    """Columns back to an image: every column element added into its (padded) image position by
    one popops scatter-add with indices worked out while compiling, then the padding cut off."""
    x = ctx.input(0)
    image, block = _ints(ctx.static(1, "image_shape")), _ints(ctx.static(2, "block_shape"))
    nd = len(image)
    dil = _ints(ctx.attr("dilations", [1] * nd))
    pads = _ints(ctx.attr("pads", [0] * (2 * nd)))
    strides = _ints(ctx.attr("strides", [1] * nd))
    padded = [image[i] + pads[i] + pads[i + nd] for i in range(nd)]
    counts = [(padded[i] - (dil[i] * (block[i] - 1) + 1)) // strides[i] + 1 for i in range(nd)]
    n, ck, length = x.shape
    c = ck // int(np.prod(block))
    kpos = np.indices(block).reshape(nd, -1)  # (nd, K)
    lpos = np.indices(counts).reshape(nd, -1)  # (nd, L)
    coords = [kpos[i][:, None] * dil[i] + lpos[i][None, :] * strides[i] for i in range(nd)]  # (K, L) each
    flat = np.ravel_multi_index(tuple(coords), padded)  # (K, L)
    area = int(np.prod(padded))
    index = (np.arange(c)[:, None, None] * area + flat[None]).reshape(-1).astype(np.int32)
    out = ix.zeros(ctx.graph, ctx.prog, shape=(n, c * area), dtype=x.dtype, name=f"{ctx.name}/zeros")
    idx = ctx.constant(index, int32, "positions")
    summed = ix.scatter_add(ctx.graph, out, idx, x.reshape((n, c * length * int(np.prod(block)))), ctx.prog,
                            axis=1, name=ctx.name)
    img = summed.reshape((n, c, *padded))
    key = (slice(None), slice(None)) + tuple(slice(pads[i], pads[i] + image[i]) for i in range(nd))
    return img[key]
