"""ONNX RNN, GRU and LSTM, unrolled over the (static) sequence: the input projection of every
step is one matmul, each step adds its recurrent matmul and one fused ``map`` per gate formula."""

from __future__ import annotations

from typing import Any

import numpy as np

from softipu.frontends.onnx.registry import register_onnx_lowering
from softipu.graph.tensor import Tensor, concat
from softipu.ops import elementwise as ew
from softipu.ops.elementwise import E
from softipu.ops.matmul import matmul

_ACT = {"Sigmoid": E.sigmoid, "Tanh": E.tanh, "Relu": E.relu}
_DEFAULTS = {"RNN": ["Tanh"], "GRU": ["Sigmoid", "Tanh"], "LSTM": ["Sigmoid", "Tanh", "Tanh"]}


def _check(ctx: Any) -> str | None:
    acts = ctx.attr("activations")
    if acts is not None and any(a not in _ACT for a in acts):
        return f"activations {acts} (lowered: {', '.join(_ACT)})"
    if ctx.attr("clip") is not None:
        return "clip is not supported"
    if ctx.has(4):
        lens, layout = ctx.host(4), int(ctx.attr("layout", 0))
        seq = ctx.shape(0)[1 if layout else 0]
        if lens is None or (np.asarray(lens) != seq).any():
            return "sequence_lens shorter than the sequence is not supported"
    if not ctx.input(0).dtype.is_float:
        return "float data only"
    return None


def _map(ctx: Any, expr: Any, inputs: list[Tensor], suffix: str) -> Tensor:
    return ew.map(ctx.graph, expr, inputs, ctx.prog, name=f"{ctx.name}/{suffix}")


def _acts(ctx: Any, d: int) -> list[Any]:
    names = ctx.attr("activations") or []
    per = len(_DEFAULTS[ctx.node.op_type])
    names = names[d * per:(d + 1) * per] if names else _DEFAULTS[ctx.node.op_type]
    return [_ACT[n] for n in names]


def _state(ctx: Any, index: int, d: int, batch: int, hidden: int, dtype: Any) -> Tensor:
    if ctx.has(index):
        return ctx.input(index)[d]
    return ctx.constant(np.zeros((batch, hidden), dtype.numpy), dtype, f"zero_state{index}")


def _direction(ctx: Any, x: Tensor, d: int, reverse: bool, hidden: int, gates: int) -> tuple:
    """Run one direction; returns (per-step outputs, final h, final c or None)."""
    seq, batch, _ = x.shape
    w, r = ctx.input(1)[d], ctx.input(2)[d]
    acts = _acts(ctx, d)
    proj = matmul(ctx.graph, x.reshape((seq * batch, x.shape[2])), w.transpose(1, 0), ctx.prog,
                  name=f"{ctx.name}/d{d}/input_proj").reshape((seq, batch, gates * hidden))
    bias = ctx.input(3)[d] if ctx.has(3) else None
    h = _state(ctx, 5, d, batch, hidden, x.dtype)
    c = _state(ctx, 6, d, batch, hidden, x.dtype) if ctx.node.op_type == "LSTM" else None
    outs: list[Tensor] = []
    steps = range(seq - 1, -1, -1) if reverse else range(seq)
    for t in steps:
        rec = matmul(ctx.graph, h, r.transpose(1, 0), ctx.prog, name=f"{ctx.name}/d{d}/t{t}/recurrent")
        h, c = _STEP[ctx.node.op_type](ctx, proj[t], rec, bias, h, c, hidden, acts, f"d{d}/t{t}")
        outs.append(h)
    if reverse:
        outs = outs[::-1]
    return outs, h, c


def _rnn_step(ctx, xw, hr, bias, h, c, hidden, acts, tag):  # noqa: ANN001, ANN202
    expr = E.add(E.input(0), E.input(1))
    inputs = [xw, hr]
    if bias is not None:
        inputs += [bias[:hidden], bias[hidden:]]
        expr = E.add(E.add(expr, E.input(2)), E.input(3))
    return _map(ctx, acts[0](expr), inputs, f"{tag}/h"), None


def _lstm_step(ctx, xw, hr, bias, h, c, hidden, acts, tag):  # noqa: ANN001, ANN202
    f_act, g_act, h_act = acts
    gates = []
    for k in range(4):  # i, o, f, c
        parts = [xw[:, k * hidden:(k + 1) * hidden], hr[:, k * hidden:(k + 1) * hidden]]
        if bias is not None:
            parts += [bias[k * hidden:(k + 1) * hidden], bias[(4 + k) * hidden:(5 + k) * hidden]]
        gates.append(parts)
    peep = ctx.input(7) if ctx.has(7) else None
    d = int(tag[1:tag.index("/")])

    def pre(k: int, base: int) -> tuple[Any, list[Tensor]]:
        expr = E.input(base)
        for j in range(1, len(gates[k])):
            expr = E.add(expr, E.input(base + j))
        return expr, gates[k]

    i_e, i_in = pre(0, 0)
    f_e, f_in = pre(2, len(i_in))
    g_e, g_in = pre(3, len(i_in) + len(f_in))
    base = len(i_in) + len(f_in) + len(g_in)
    inputs = [*i_in, *f_in, *g_in, c]
    cin = E.input(base)
    if peep is not None:
        inputs += [peep[d][:hidden], peep[d][2 * hidden:]]
        i_e = E.add(i_e, E.mul(E.input(base + 1), cin))
        f_e = E.add(f_e, E.mul(E.input(base + 2), cin))
    c_new = _map(ctx, E.add(E.mul(f_act(f_e), cin), E.mul(f_act(i_e), g_act(g_e))), inputs, f"{tag}/c")
    o_e, o_in = pre(1, 0)
    o_inputs = [*o_in, c_new]
    if peep is not None:
        o_inputs.append(peep[d][hidden:2 * hidden])
        o_e = E.add(o_e, E.mul(E.input(len(o_in) + 1), E.input(len(o_in))))
    h_new = _map(ctx, E.mul(f_act(o_e), h_act(E.input(len(o_in)))), o_inputs, f"{tag}/h")
    return h_new, c_new


def _gru_step(ctx, xw, hr, bias, h, c, hidden, acts, tag):  # noqa: ANN001, ANN202
    f_act, g_act = acts
    sl = [slice(k * hidden, (k + 1) * hidden) for k in range(3)]  # z, r, h

    def gate(k: int) -> tuple[Any, list[Tensor]]:
        parts = [xw[:, sl[k]], hr[:, sl[k]]]
        if bias is not None:
            parts += [bias[sl[k]], bias[3 * hidden + k * hidden:3 * hidden + (k + 1) * hidden]]
        expr = E.input(0)
        for j in range(1, len(parts)):
            expr = E.add(expr, E.input(j))
        return f_act(expr), parts

    z_e, z_in = gate(0)
    z = _map(ctx, z_e, z_in, f"{tag}/z")
    r_e, r_in = gate(1)
    r = _map(ctx, r_e, r_in, f"{tag}/r")
    lbr = int(ctx.attr("linear_before_reset", 0))
    rb = bias[5 * hidden:6 * hidden] if bias is not None else None
    wb = bias[2 * hidden:3 * hidden] if bias is not None else None
    if lbr:  # r * (h @ Rh + Rbh)
        inputs = [xw[:, sl[2]], r, hr[:, sl[2]]]
        rec = E.input(2) if rb is None else E.add(E.input(2), E.input(len(inputs)))
        if rb is not None:
            inputs.append(rb)
    else:  # (r * h) @ Rh + Rbh
        rh = _map(ctx, E.mul(E.input(0), E.input(1)), [r, h], f"{tag}/rh")
        r_h = ctx.input(2)[int(tag[1:tag.index("/")])][sl[2]]
        rh_r = matmul(ctx.graph, rh, r_h.transpose(1, 0), ctx.prog,
                      name=f"{ctx.name}/{tag}/reset_recurrent")
        inputs = [xw[:, sl[2]], r, rh_r]
        rec = E.input(2) if rb is None else E.add(E.input(2), E.input(len(inputs)))
        if rb is not None:
            inputs.append(rb)
    pre = E.add(E.input(0), E.mul(E.input(1), rec) if lbr else rec)
    if wb is not None:
        inputs.append(wb)
        pre = E.add(pre, E.input(len(inputs) - 1))
    hh = _map(ctx, g_act(pre), inputs, f"{tag}/candidate")
    h_new = _map(ctx, E.add(E.mul(E.sub(1.0, E.input(0)), E.input(1)), E.mul(E.input(0), E.input(2))),
                 [z, hh, h], f"{tag}/h")
    return h_new, None


_STEP = {"RNN": _rnn_step, "LSTM": _lstm_step, "GRU": _gru_step}
_GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}


def _recurrent(ctx: Any, node: Any) -> tuple:
    x = ctx.input(0)
    layout = int(ctx.attr("layout", 0))
    if layout:
        x = x.transpose(1, 0, 2)
    hidden = int(ctx.attr("hidden_size"))
    direction = ctx.attr("direction", "forward")
    dirs = [False, True] if direction == "bidirectional" else [direction == "reverse"]
    ys, hs, cs = [], [], []
    for d, reverse in enumerate(dirs):
        outs, h, c = _direction(ctx, x, d, reverse, hidden, _GATES[node.op_type])
        ys.append(concat([o.expand_dims(0) for o in outs], axis=0))  # (seq, batch, hidden)
        hs.append(h.expand_dims(0))
        cs.append(c.expand_dims(0) if c is not None else None)
    y = concat([t.expand_dims(1) for t in ys], axis=1)  # (seq, dirs, batch, hidden)
    y_h = concat(hs, axis=0) if len(hs) > 1 else hs[0]
    y_c = (concat(cs, axis=0) if len(cs) > 1 else cs[0]) if node.op_type == "LSTM" else None
    if layout:
        y = y.transpose(2, 0, 1, 3)
        y_h = y_h.transpose(1, 0, 2)
        y_c = y_c.transpose(1, 0, 2) if y_c is not None else None
    return (y, y_h, y_c) if node.op_type == "LSTM" else (y, y_h)


for _op in ("RNN", "GRU", "LSTM"):
    register_onnx_lowering(_op, _recurrent, check=_check, static=(4,))
