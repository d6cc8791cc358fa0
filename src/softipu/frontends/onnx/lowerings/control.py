"""ONNX control flow with static structure: ``If`` on a condition known while compiling picks its
branch (on the device, both branches run and a select keeps one), ``Loop`` with a known trip count
and ``Scan`` over a static sequence are unrolled, their bodies lowered once per iteration."""

from __future__ import annotations

from typing import Any

import numpy as np

from softipu.dtypes import bool_
from softipu.frontends.onnx.registry import register_onnx_lowering
from softipu.graph.tensor import Tensor, concat
from softipu.ops import elementwise as ew
from softipu.ops.elementwise import E

MAX_UNROLL = 4096


def _tensor(ctx: Any, value: Any, like: Any = None) -> Tensor:
    if isinstance(value, Tensor):
        return value
    import onnx  # noqa: PLC0415

    from softipu.frontends.onnx.lower import DEVICE_DTYPES  # noqa: PLC0415

    arr = np.asarray(value)
    elem = onnx.helper.np_dtype_to_tensor_dtype(arr.dtype)
    return ctx.constant(arr, DEVICE_DTYPES[elem], "value")


def _stack(ctx: Any, values: list[Any], axis: int) -> Any:
    if all(not isinstance(v, Tensor) for v in values):
        return np.stack([np.asarray(v) for v in values], axis=axis)
    parts = [_tensor(ctx, v).expand_dims(axis) for v in values]
    return concat(parts, axis=axis) if len(parts) > 1 else parts[0]


@register_onnx_lowering("If", static=(0,))
def _if(ctx: Any, node: Any) -> list[Any]:
    then_g, else_g = ctx.attr("then_branch"), ctx.attr("else_branch")
    cond = ctx.host(0)
    if cond is not None:
        return ctx.lower_graph(then_g if bool(np.asarray(cond).reshape(-1)[0]) else else_g, [])
    a, b = ctx.lower_graph(then_g, []), ctx.lower_graph(else_g, [])
    c = ctx.cast(ctx.input(0), bool_).reshape(())
    out = []
    for x, y in zip(a, b, strict=True):
        x, y = _tensor(ctx, x), _tensor(ctx, y)
        if x.shape != y.shape:
            raise ValueError(f"If branches give shapes {x.shape} and {y.shape}: with a condition known only "
                             "at run time both branches must give the same shape")
        out.append(ew.map(ctx.graph, E.select(E.input(0), E.input(1), E.input(2)), [c, x, y], ctx.prog,
                          name=f"{ctx.name}/select"))
    return out


@register_onnx_lowering("Loop", static=(0, 1))
def _loop(ctx: Any, node: Any) -> list[Any]:
    body = ctx.attr("body")
    trips = int(np.asarray(ctx.static(0, "M")).reshape(-1)[0]) if ctx.has(0) else None
    cond = ctx.host(1) if ctx.has(1) else np.array(True)
    if ctx.has(1) and cond is None:
        raise ValueError("a Loop whose condition is known only at run time cannot be unrolled")
    runs = bool(np.asarray(cond).reshape(-1)[0])
    if runs and (trips is None or trips > MAX_UNROLL) and (not ctx.has(1) or _condition_is_fixed(body)):
        # it would run more than MAX_UNROLL times (with no condition input ONNX ignores the body's
        # condition): refused before lowering thousands of copies of the body to find out
        raise ValueError(f"a Loop of {'unbounded' if trips is None else trips} iterations whose condition "
                         f"{'input is absent' if not ctx.has(1) else 'never changes'} is not unrolled "
                         f"(softipu unrolls at most {MAX_UNROLL})")
    carried = [ctx.host(i) if ctx.host(i) is not None else ctx.input(i) for i in range(2, ctx.n_inputs)]
    n_carried = len(carried)
    scans: list[list[Any]] = []
    i = 0
    while (trips is None or i < trips) and bool(np.asarray(cond).reshape(-1)[0]):
        if i >= MAX_UNROLL:
            raise ValueError(f"a Loop of more than {MAX_UNROLL} iterations is not unrolled")
        outs = ctx.lower_graph(body, [np.array(i, np.int64), np.asarray(cond), *carried])
        cond = outs[0]
        if isinstance(cond, Tensor):
            raise ValueError("the Loop body's condition is known only at run time: it cannot be unrolled")
        carried = outs[1:1 + n_carried]
        scans.append(outs[1 + n_carried:])
        i += 1
    n_scan = len(body.output) - 1 - n_carried
    results = list(carried)
    for k in range(n_scan):
        results.append(_stack(ctx, [s[k] for s in scans], 0) if scans else np.zeros((0,), np.float32))
    return results


def _condition_is_fixed(body: Any) -> bool:
    """Whether a Loop body's condition output is its condition input passed through (Identity), so
    the loop runs until its trip count."""
    if len(body.input) < 2 or not body.output:
        return False
    name = body.output[0].name
    producers = {out: node for node in body.node for out in node.output}
    for _ in range(len(body.node) + 1):
        node = producers.get(name)
        if node is None or node.op_type != "Identity" or not node.input:
            break
        name = node.input[0]
    return name == body.input[1].name


@register_onnx_lowering("Scan")
def _scan(ctx: Any, node: Any) -> list[Any]:
    body = ctx.attr("body")
    m = int(ctx.attr("num_scan_inputs"))
    opset8 = ctx.opset.get("", 11) < 9
    if opset8:
        raise ValueError("Scan-8 (with sequence_lens) is not lowered")
    values = [ctx.host(i) if ctx.host(i) is not None else ctx.input(i) for i in range(ctx.n_inputs)]
    n_state = len(values) - m
    states, xs = values[:n_state], values[n_state:]
    in_axes = list(ctx.attr("scan_input_axes", [0] * m))
    in_dirs = list(ctx.attr("scan_input_directions", [0] * m))
    n_out = len(body.output) - n_state
    out_axes = list(ctx.attr("scan_output_axes", [0] * n_out))
    out_dirs = list(ctx.attr("scan_output_directions", [0] * n_out))
    xs_t = [x if not isinstance(x, np.ndarray) else x for x in xs]
    axes = [a % (x.ndim if isinstance(x, Tensor) else np.ndim(x)) for a, x in zip(in_axes, xs_t, strict=True)]
    length = (xs[0].shape if isinstance(xs[0], Tensor) else np.shape(xs[0]))[axes[0]]
    outs: list[list[Any]] = []
    for t in range(length):
        slices = []
        for x, a, d in zip(xs, axes, in_dirs, strict=True):
            idx = length - 1 - t if d else t
            key = (slice(None),) * a + (idx,)
            slices.append(x[key])
        res = ctx.lower_graph(body, [*states, *slices])
        states = res[:n_state]
        outs.append(res[n_state:])
    results = list(states)
    for k in range(n_out):
        seq = [o[k] for o in outs]
        if out_dirs[k]:
            seq = seq[::-1]
        nd = (seq[0].ndim if isinstance(seq[0], Tensor) else np.ndim(seq[0])) + 1
        results.append(_stack(ctx, seq, out_axes[k] % nd))
    return results
