"""Convolution records: forward, input gradient and weight gradient against direct numpy loops
over the kernel positions (float64, torch's conventions: NCHW, [O, C/groups, kh, kw])."""

from __future__ import annotations

import numpy as np
from tests.records import OpRecord

import softipu as sp
from softipu.ops.conv import conv, conv_input_grad, conv_weight_grad


def _as_2d(x, w, stride, padding, dilation):
    one = x.ndim == 3
    pair = (lambda v: (1, v) if one else ((v, v) if np.isscalar(v) else tuple(v)))
    pads = (0, padding) if one else ((padding, padding) if np.isscalar(padding) else tuple(padding))
    if one:
        x, w = x[:, :, None], w[:, :, None]
    return x.astype(np.float64), w.astype(np.float64), pair(stride), pads, pair(dilation), one


def _windows(xp, kh, kw, s, d, ho, wo):
    """For each kernel position, the input samples it meets: (kh, kw, N, C, Ho, Wo)."""
    return np.stack([np.stack([xp[:, :, i * d[0]: i * d[0] + s[0] * (ho - 1) + 1: s[0],
                                   j * d[1]: j * d[1] + s[1] * (wo - 1) + 1: s[1]]
                               for j in range(kw)]) for i in range(kh)])


def conv_np(x, w, stride=1, padding=0, dilation=1, groups=1):
    x, w, s, p, d, one = _as_2d(x, w, stride, padding, dilation)
    xp = np.pad(x, ((0, 0), (0, 0), (p[0], p[0]), (p[1], p[1])))
    n, c, h, wd = xp.shape
    o, cg, kh, kw = w.shape
    ho, wo = (h - d[0] * (kh - 1) - 1) // s[0] + 1, (wd - d[1] * (kw - 1) - 1) // s[1] + 1
    win = _windows(xp, kh, kw, s, d, ho, wo)
    og = o // groups
    out = np.zeros((n, o, ho, wo))
    for g in range(groups):
        out[:, g * og:(g + 1) * og] = np.einsum("ijnchw,ocij->nohw", win[:, :, :, g * cg:(g + 1) * cg],
                                                w[g * og:(g + 1) * og])
    return out[:, :, 0] if one else out


def conv_input_grad_np(dy, w, x_shape, stride=1, padding=0, dilation=1, groups=1):
    """Scatter each output gradient back through every kernel position."""
    x0 = np.zeros(x_shape)
    _, w2, s, p, d, one = _as_2d(x0, w, stride, padding, dilation)
    dy = dy.astype(np.float64)[:, :, None] if one else dy.astype(np.float64)
    n, c, h, wd = (x_shape[0], x_shape[1], 1, x_shape[2]) if one else x_shape
    o, cg, kh, kw = w2.shape
    og, ho, wo = o // groups, dy.shape[2], dy.shape[3]
    dxp = np.zeros((n, c, h + 2 * p[0] + s[0], wd + 2 * p[1] + s[1]))
    for g in range(groups):
        for i in range(kh):
            for j in range(kw):
                contrib = np.einsum("nohw,oc->nchw", dy[:, g * og:(g + 1) * og], w2[g * og:(g + 1) * og, :, i, j])
                dxp[:, g * cg:(g + 1) * cg, i * d[0]: i * d[0] + s[0] * ho: s[0],
                    j * d[1]: j * d[1] + s[1] * wo: s[1]] += contrib
    dx = dxp[:, :, p[0]:p[0] + h, p[1]:p[1] + wd]
    return dx[:, :, 0] if one else dx


def conv_weight_grad_np(dy, x, w_shape, stride=1, padding=0, dilation=1, groups=1):
    w0 = np.zeros(w_shape)
    x2, w2, s, p, d, one = _as_2d(x, w0, stride, padding, dilation)
    dy = dy.astype(np.float64)[:, :, None] if one else dy.astype(np.float64)
    xp = np.pad(x2, ((0, 0), (0, 0), (p[0], p[0]), (p[1], p[1])))
    o, cg, kh, kw = w2.shape
    og = o // groups
    win = _windows(xp, kh, kw, s, d, dy.shape[2], dy.shape[3])
    dw = np.zeros(w2.shape)
    for g in range(groups):
        dw[g * og:(g + 1) * og] = np.einsum("ijnchw,nohw->ocij", win[:, :, :, g * cg:(g + 1) * cg],
                                            dy[:, g * og:(g + 1) * og])
    return dw[:, :, 0] if one else dw


def _out_shape(x_shape, w_shape, stride, padding, dilation):
    return conv_np(np.zeros(x_shape), np.zeros(w_shape), stride, padding, dilation).shape


def _label(kw, x_shape=None) -> str:
    dims = f"{len(x_shape) - 2}d_" if x_shape else ""
    return dims + ("_".join(f"{k}{v}" for k, v in kw.items()).replace(" ", "") or "plain")


def _forward(kw, shapes):
    return OpRecord(
        f"conv_{_label(kw)}",
        lambda g, x, w, prog: conv(g, x, w, prog, **kw),
        lambda x, w: conv_np(x, w, **kw),
        shapes=shapes,
        dtypes=(sp.float32, sp.float16),
        tolerance={sp.float32: (1e-5, 1e-5), sp.float16: (3e-3, 3e-3)},
    )


def _input_grad(kw, x_shape, w_shape):
    dy_shape = _out_shape(x_shape, w_shape, kw.get("stride", 1), kw.get("padding", 0),
                          kw.get("dilation", 1)) if kw.get("groups", 1) == 1 else None
    dy_shape = dy_shape or (x_shape[0], w_shape[0]) + _out_shape(
        (x_shape[0], w_shape[1]) + x_shape[2:], (1,) + w_shape[1:], kw.get("stride", 1),
        kw.get("padding", 0), kw.get("dilation", 1))[2:]
    return OpRecord(
        f"conv_input_grad_{_label(kw, x_shape)}",
        lambda g, dy, w, prog: conv_input_grad(g, dy, w, prog, input_shape=x_shape, **kw),
        lambda dy, w: conv_input_grad_np(dy, w, x_shape, **kw),
        shapes=((dy_shape, w_shape),),
        tolerance={sp.float32: (1e-5, 1e-5)},
    )


def _weight_grad(kw, x_shape, w_shape):
    dy_shape = (x_shape[0], w_shape[0]) + _out_shape(
        (x_shape[0], w_shape[1]) + x_shape[2:], (1,) + w_shape[1:], kw.get("stride", 1),
        kw.get("padding", 0), kw.get("dilation", 1))[2:]
    return OpRecord(
        f"conv_weight_grad_{_label(kw, x_shape)}",
        lambda g, dy, x, prog: conv_weight_grad(g, dy, x, prog, weight_shape=w_shape, **kw),
        lambda dy, x: conv_weight_grad_np(dy, x, w_shape, **kw),
        shapes=((dy_shape, x_shape),),
        tolerance={sp.float32: (1e-5, 1e-5)},
    )


RECORDS = [
    _forward({}, (((2, 3, 7, 7), (4, 3, 3, 3)), ((1, 5, 4, 6), (3, 5, 1, 1)), ((1, 2, 5, 5), (3, 2, 3, 3)))),
    _forward({"stride": 2, "padding": 1},
             (((2, 3, 9, 8), (5, 3, 3, 3)), ((1, 16, 6, 6), (8, 16, 3, 3)), ((1, 3, 5, 4), (2, 3, 3, 2)))),
    _forward({"padding": (2, 1), "dilation": 2, "groups": 2},
             (((2, 4, 9, 9), (6, 2, 3, 3)), ((1, 2, 6, 7), (2, 1, 2, 2)))),
    _forward({"stride": 2, "padding": 3}, (((1, 3, 17, 17), (4, 3, 7, 7)), ((1, 1, 8, 8), (2, 1, 7, 7)))),
    _forward({"groups": 3, "padding": 1}, (((2, 6, 5, 5), (6, 2, 3, 3)), ((1, 3, 4, 4), (3, 1, 3, 3)))),
    _forward({"stride": 2, "padding": 2}, (((2, 3, 20), (4, 3, 5)), ((1, 2, 9), (3, 2, 3)))),  # 1-D
    _input_grad({"stride": 2, "padding": 1}, (2, 3, 9, 8), (5, 3, 3, 3)),
    _input_grad({"padding": (2, 1), "dilation": 2, "groups": 2}, (1, 4, 9, 9), (6, 2, 3, 3)),
    _input_grad({"stride": 3, "padding": 0}, (1, 2, 10, 11), (3, 2, 2, 2)),  # rows the stride skips
    _input_grad({"stride": 2, "padding": 1}, (2, 3, 11), (4, 3, 3)),  # 1-D
    _weight_grad({"stride": 2, "padding": 1}, (2, 3, 9, 8), (5, 3, 3, 3)),
    _weight_grad({"padding": (2, 1), "dilation": 2, "groups": 2}, (1, 4, 9, 9), (6, 2, 3, 3)),
    _weight_grad({"stride": 2, "padding": 2}, (2, 3, 12), (4, 3, 5)),  # 1-D
]
