"""Op records for popnn (softipu.ops.nn): pooling, non-linearities, softmax, norms and losses.

Oracles are written here from the definitions, in float64 numpy (pooling and losses with plain
loops over windows and rows), independent of the codelets. fp16 inputs are compared with the
float16 tolerance; statistics come back as float32.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from tests.records import OpRecord, default_input

import softipu as sp
from softipu.ops import nn
from softipu.ops.nn import NonLinearity

F32, F16 = sp.float32, sp.float16
BOTH = (F32, F16)
IGNORE = -100
_erf = np.vectorize(math.erf, otypes=[np.float64])


def f64(a):
    return np.asarray(a, dtype=np.float64)


def quiet(fn):
    """An oracle that computes NaN/Inf like IEEE without numpy's warnings."""
    def run(*args):
        with np.errstate(all="ignore"):
            return fn(*args)
    return run


# -- inputs ------------------------------------------------------------------------------------------
def with_edges(rng, shape, dtype, i):
    """Normals x 3 with +inf, -inf, NaN and a large value planted at the start."""
    a = default_input(rng, shape, dtype, i) * 3
    flat = a.reshape(-1)
    for k, v in enumerate((np.inf, -np.inf, np.nan, 1000.0)[: flat.size]):
        flat[k] = v
    return a


def softmax_edges(rng, shape, dtype, i):
    """Rows with huge values (overflow without the max), -inf entries, a NaN row, an inf row."""
    a = default_input(rng, shape, dtype, i)
    rows = a.reshape(-1, shape[-1])
    rows[0] += 3000 if dtype is F32 else 30000
    rows[1, ::2] = -np.inf
    if rows.shape[0] > 3:
        rows[2, 1] = np.nan
        rows[3, 0] = np.inf
    return a


def positive_at(*indices):
    def make(rng, shape, dtype, i):
        a = default_input(rng, shape, dtype, i)
        return (np.abs(a) + 0.5).astype(a.dtype) if i in indices else a
    return make


def labels_input(classes, ignore_fraction=0.0):
    def make(rng, shape, dtype, i):
        if dtype is not sp.int32:
            return default_input(rng, shape, dtype, i)
        labels = rng.integers(0, classes, size=shape).astype(np.int32)
        labels[rng.random(shape) < ignore_fraction] = IGNORE
        return labels
    return make


def with_offset(rng, shape, dtype, i):
    """Data whose mean dwarfs its spread: E[x^2] - E[x]^2 loses it in fp32, two passes do not."""
    return (default_input(rng, shape, dtype, i) + (300.0 if i == 0 else 0.0)).astype(dtype.numpy)


# -- softmax -----------------------------------------------------------------------------------------
def np_softmax(x, dim=-1, log=False):
    x = f64(x)
    if x.ndim == 0:
        return np_softmax(x.reshape(1), 0, log).reshape(())
    if x.size == 0:
        return x
    shifted = x - x.max(axis=dim, keepdims=True)
    total = np.exp(shifted).sum(axis=dim, keepdims=True)
    return shifted - np.log(total) if log else np.exp(shifted) / total


def np_softmax_grad(y, dy, dim=-1, log=False):
    y, dy = f64(y), f64(dy)
    if log:
        return dy - np.exp(y) * dy.sum(axis=dim, keepdims=True)
    return y * (dy - (dy * y).sum(axis=dim, keepdims=True))


# -- norms -------------------------------------------------------------------------------------------
def np_layer_norm(x, w, b, nd=1, eps=1e-5):
    x = f64(x)
    axes = tuple(range(x.ndim - nd, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    rstd = 1 / np.sqrt(var + eps)
    out = (x - mean) * rstd * (1 if w is None else f64(w)) + (0 if b is None else f64(b))
    lead = x.shape[: x.ndim - nd]
    return out, mean.reshape(lead), rstd.reshape(lead)


def np_layer_norm_grad(dy, x, w, nd=1, eps=1e-5):
    x, dy = f64(x), f64(dy)
    axes = tuple(range(x.ndim - nd, x.ndim))
    lead = tuple(range(x.ndim - nd))
    mean = x.mean(axis=axes, keepdims=True)
    rstd = 1 / np.sqrt(((x - mean) ** 2).mean(axis=axes, keepdims=True) + eps)
    xhat = (x - mean) * rstd
    g = dy * f64(w)
    dx = rstd * (g - g.mean(axis=axes, keepdims=True) - xhat * (g * xhat).mean(axis=axes, keepdims=True))
    return dx, (dy * xhat).sum(axis=lead), dy.sum(axis=lead)


def np_group_norm(x, w, b, groups, eps=1e-5):
    x = f64(x)
    n, c = x.shape[:2]
    xg = x.reshape(n, groups, -1)
    mean = xg.mean(axis=2, keepdims=True)
    rstd = 1 / np.sqrt(((xg - mean) ** 2).mean(axis=2, keepdims=True) + eps)
    out = ((xg - mean) * rstd).reshape(x.shape)
    ch = (c,) + (1,) * (x.ndim - 2)
    out = out * f64(w).reshape(ch) + f64(b).reshape(ch)
    return out, mean.reshape(n, groups), rstd.reshape(n, groups)


def np_group_norm_grad(dy, x, w, groups, eps=1e-5):
    x, dy = f64(x), f64(dy)
    n, c = x.shape[:2]
    xg = x.reshape(n, groups, -1)
    mean = xg.mean(axis=2, keepdims=True)
    rstd = 1 / np.sqrt(((xg - mean) ** 2).mean(axis=2, keepdims=True) + eps)
    xhat = ((xg - mean) * rstd).reshape(x.shape)
    ch = (c,) + (1,) * (x.ndim - 2)
    g = (dy * f64(w).reshape(ch)).reshape(n, groups, -1)
    xh = xhat.reshape(n, groups, -1)
    dx = rstd * (g - g.mean(axis=2, keepdims=True) - xh * (g * xh).mean(axis=2, keepdims=True))
    other = (0,) + tuple(range(2, x.ndim))
    return dx.reshape(x.shape), (dy * xhat).sum(axis=other), dy.sum(axis=other)


def _bn_axes(x):
    return (0,) + tuple(range(2, x.ndim)), (1, x.shape[1]) + (1,) * (x.ndim - 2)


def np_batch_norm(x, w, b, mean, var, eps=1e-5):
    _, ch = _bn_axes(x)
    w = 1 if w is None else f64(w).reshape(ch)
    b = 0 if b is None else f64(b).reshape(ch)
    return (f64(x) - f64(mean).reshape(ch)) / np.sqrt(f64(var).reshape(ch) + eps) * w + b


def np_batch_norm_training(x, w, b, eps=1e-5, unbiased=False):
    axes, _ = _bn_axes(x)
    x64 = f64(x)
    mean = x64.mean(axis=axes)
    var = x64.var(axis=axes)
    m = x64.size // x.shape[1]
    return np_batch_norm(x, w, b, mean, var, eps), mean, var * m / (m - 1) if unbiased else var


def np_batch_norm_grad(dy, x, w, eps=1e-5):
    axes, ch = _bn_axes(x)
    x, dy = f64(x), f64(dy)
    mean = x.mean(axis=axes, keepdims=True)
    rstd = 1 / np.sqrt(x.var(axis=axes, keepdims=True) + eps)
    xhat = (x - mean) * rstd
    dx = f64(w).reshape(ch) * rstd * (dy - dy.mean(axis=axes, keepdims=True)
                                      - xhat * (dy * xhat).mean(axis=axes, keepdims=True))
    return dx, (dy * xhat).sum(axis=axes), dy.sum(axis=axes)


# -- non-linearities ---------------------------------------------------------------------------------
def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


NP_ACT = {
    NonLinearity.RELU: lambda x: np.maximum(x, 0),
    NonLinearity.SIGMOID: _sigmoid,
    NonLinearity.TANH: np.tanh,
    NonLinearity.GELU: _gelu_tanh,
    NonLinearity.GELU_ERF: lambda x: 0.5 * x * (1 + _erf(x / math.sqrt(2))),
    NonLinearity.SILU: lambda x: x * _sigmoid(x),
}


def np_act_grad(kind, act, g):
    """Derivative by a central difference of the float64 forward (independent of the codelets'
    closed forms), except ReLU whose derivative is a step; ``act`` as popnn takes it."""
    a, g = f64(act), f64(g)
    if kind is NonLinearity.RELU:
        return np.where(a > 0, g, 0.0)
    if kind.grad_uses_output:  # sigmoid, tanh: the input is f^-1(y)
        x = np.log(a / (1 - a)) if kind is NonLinearity.SIGMOID else np.arctanh(a)
    else:
        x = a
    h = 1e-5
    return g * (NP_ACT[kind](x + h) - NP_ACT[kind](x - h)) / (2 * h)


def act_grad_input(kind):
    def make(rng, shape, dtype, i):
        a = default_input(rng, shape, dtype, i)
        if i == 0 and kind is NonLinearity.SIGMOID:
            a = (1 / (1 + np.exp(-f64(a)))).astype(dtype.numpy)
        elif i == 0 and kind is NonLinearity.TANH:
            a = np.tanh(f64(a)).astype(dtype.numpy)
        return a
    return make


# -- pooling -----------------------------------------------------------------------------------------
def _as_2d(x, k, s, p):
    if x.ndim == 3:
        return x[..., None], (k, 1), (s, 1), (p, 0)
    pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)
    return x, pair(k), pair(s), pair(p)


def _windows(shape, k, s, p):
    """(oh, ow, row slice, col slice) of every window of a 2-D pooling."""
    h, w = shape
    oh = (h + 2 * p[0] - k[0]) // s[0] + 1
    ow = (w + 2 * p[1] - k[1]) // s[1] + 1
    for i in range(oh):
        for j in range(ow):
            r0, c0 = i * s[0] - p[0], j * s[1] - p[1]
            yield i, j, slice(max(r0, 0), min(r0 + k[0], h)), slice(max(c0, 0), min(c0 + k[1], w)), (oh, ow)


def np_pool(x, k, s=None, p=0, mode="max", include_pad=True):
    s = k if s is None else s
    squeeze = x.ndim == 3
    x4, k, s, p = _as_2d(f64(x), k, s, p)
    out = None
    for i, j, rs, cs, (oh, ow) in _windows(x4.shape[2:], k, s, p):
        out = np.empty(x4.shape[:2] + (oh, ow)) if out is None else out
        win = x4[:, :, rs, cs].reshape(*x4.shape[:2], (rs.stop - rs.start) * (cs.stop - cs.start))
        if mode == "max":
            out[:, :, i, j] = win.max(axis=-1)
        else:
            div = k[0] * k[1] if include_pad else win.shape[-1]
            out[:, :, i, j] = win.sum(axis=-1) / div
    return out[..., 0] if squeeze else out


def np_max_pool_grad(x, dy, k, s=None, p=0):
    """torch's rule: first maximum in row-major order, a NaN replaces any number (the last NaN)."""
    s = k if s is None else s
    squeeze = x.ndim == 3
    x4, k, s, p = _as_2d(f64(x), k, s, p)
    dy4 = f64(dy)[..., None] if squeeze else f64(dy)
    dx = np.zeros(x4.shape)
    for n in range(x4.shape[0]):
        for c in range(x4.shape[1]):
            for i, j, rs, cs, _ in _windows(x4.shape[2:], k, s, p):
                best, at = -np.inf, None
                for r in range(rs.start, rs.stop):
                    for q in range(cs.start, cs.stop):
                        v = x4[n, c, r, q]
                        if at is None or v > best or np.isnan(v):
                            best, at = v, (r, q)
                dx[n, c, at[0], at[1]] += dy4[n, c, i, j]
    return dx[..., 0] if squeeze else dx


def np_avg_pool_grad(dy, in_shape, k, s=None, p=0, include_pad=True):
    s = k if s is None else s
    squeeze = len(in_shape) == 3
    shape4 = tuple(in_shape) + ((1,) if squeeze else ())
    _, k, s, p = _as_2d(np.zeros(in_shape), k, s, p)
    dy4 = f64(dy)[..., None] if squeeze else f64(dy)
    dx = np.zeros(shape4)
    for i, j, rs, cs, _ in _windows(shape4[2:], k, s, p):
        count = (rs.stop - rs.start) * (cs.stop - cs.start)
        dx[:, :, rs, cs] += (dy4[:, :, i, j] / (k[0] * k[1] if include_pad else count))[..., None, None]
    return dx[..., 0] if squeeze else dx


def pool_grad_input(k, s=None, p=0):
    """x with ties (values rounded to halves) and, for dy (input 1), the pooled shape."""
    def make(rng, shape, dtype, i):
        a = default_input(rng, shape, dtype, i)
        return (np.round(a * 2) / 2).astype(a.dtype) if i == 0 else a
    return make


# -- losses --------------------------------------------------------------------------------------------
def np_class_loss(x, labels, reduction="mean", log_input=False):
    x = f64(x)
    loss = np.zeros(x.shape[0])
    for r in range(x.shape[0]):
        if labels[r] == IGNORE:
            continue
        row = x[r]
        logp = row if log_input else row - row.max() - np.log(np.exp(row - row.max()).sum())
        loss[r] = -logp[labels[r]]
    valid = (labels != IGNORE).sum()
    if reduction == "none":
        return loss
    return np.float64(loss.sum() / valid if reduction == "mean" else loss.sum())


def np_class_loss_grad(x, labels, g, reduction="mean", log_input=False):
    x = f64(x)
    dx = np.zeros(x.shape)
    valid = (labels != IGNORE).sum()
    for r in range(x.shape[0]):
        if labels[r] == IGNORE:
            continue
        scale = f64(g)[r] if reduction == "none" else f64(g) / (valid if reduction == "mean" else 1)
        dx[r] = 0 if log_input else np.exp(x[r] - x[r].max()) / np.exp(x[r] - x[r].max()).sum()
        dx[r, labels[r]] -= 1
        dx[r] *= scale
    return dx


def np_mse(x, t, reduction="mean"):
    d = (f64(x) - f64(t)) ** 2
    return d if reduction == "none" else np.float64(d.mean() if reduction == "mean" else d.sum())


def np_mse_grad(x, t, g, reduction="mean"):
    scale = f64(g) / (x.size if reduction == "mean" else 1)
    return 2 * (f64(x) - f64(t)) * scale


def _loss_records() -> list[OpRecord]:
    out = []
    for log_input, name, fwd, bwd in ((False, "cross_entropy", nn.cross_entropy, nn.cross_entropy_grad),
                                      (True, "nll_loss", nn.nll_loss, nn.nll_loss_grad)):
        for reduction in ("mean", "sum", "none"):
            shapes = (((7, 5), (7,)), ((1, 3), (1,)), ((0, 4), (0,)), ((9, 11), (9,)))
            if reduction == "mean":
                shapes = shapes[:2] + shapes[3:]  # an empty mean is NaN: tested in test_ops_nn
            out.append(OpRecord(
                f"{name}_{reduction}",
                lambda g, x, t, p, f=fwd, r=reduction: f(g, x, t, p, reduction=r),
                lambda x, t, li=log_input, r=reduction: np_class_loss(x, t, r, li),
                shapes, BOTH, labels_input(3, 0.25), (None, sp.int32)))
            gshape = lambda s, r=reduction: s[:1] if r == "none" else ()
            out.append(OpRecord(
                f"{name}_grad_{reduction}",
                lambda g, x, t, dl, p, f=bwd, r=reduction: f(g, x, t, dl, p, reduction=r),
                lambda x, t, dl, li=log_input, r=reduction: np_class_loss_grad(x, t, dl, r, li),
                tuple((sx, st, gshape(sx)) for sx, st in shapes), BOTH, labels_input(3, 0.25),
                (None, sp.int32)))
    for reduction in ("mean", "sum", "none"):
        shapes = (((5, 7), (5, 7)), ((3,), (3,)), ((2, 3, 4), (2, 3, 4)))
        out.append(OpRecord(f"mse_loss_{reduction}",
                            lambda g, x, t, p, r=reduction: nn.mse_loss(g, x, t, p, reduction=r),
                            lambda x, t, r=reduction: np_mse(x, t, r), shapes, BOTH))
        out.append(OpRecord(f"mse_loss_grad_{reduction}",
                            lambda g, x, t, dl, p, r=reduction: nn.mse_loss_grad(g, x, t, dl, p, reduction=r),
                            lambda x, t, dl, r=reduction: np_mse_grad(x, t, dl, r),
                            tuple((a, b, a if reduction == "none" else ()) for a, b in shapes), BOTH))
    out.append(OpRecord("mse_loss_edges", lambda g, x, t, p: nn.mse_loss(g, x, t, p, reduction="none"),
                        lambda x, t: np_mse(x, t, "none"), (((4, 6), (4, 6)),), (F32,), with_edges))
    return out


def _pool_records() -> list[OpRecord]:
    cases = [  # (input shape, kernel, stride, padding)
        ((2, 3, 9, 7), 3, 2, 1), ((1, 2, 8, 8), 2, None, 0), ((2, 1, 5, 6), (2, 3), (1, 2), (1, 1)),
        ((1, 1, 7, 5), 3, 1, 1), ((2, 3, 11), 3, 2, 1), ((1, 2, 6), 2, None, 0), ((0, 2, 4, 4), 2, 2, 0),
    ]
    out = []
    for k, (shape, kern, stride, pad) in enumerate(cases):
        geo = dict(kernel=kern, stride=stride, padding=pad)
        tag = f"{len(shape) - 2}d_{k}"
        pooled = np_pool(np.zeros(shape), kern, stride, pad).shape
        out.append(OpRecord(f"max_pool_{tag}", lambda g, x, p, kw=geo: nn.max_pool(g, x, p, **kw),
                            lambda x, kw=geo: np_pool(x, kw["kernel"], kw["stride"], kw["padding"]),
                            ((shape,),), BOTH))
        for inc in (True, False):
            out.append(OpRecord(
                f"avg_pool_{tag}_{'incl' if inc else 'excl'}",
                lambda g, x, p, kw=geo, i=inc: nn.avg_pool(g, x, p, count_include_pad=i, **kw),
                lambda x, kw=geo, i=inc: np_pool(x, kw["kernel"], kw["stride"], kw["padding"], "avg", i),
                ((shape,),), BOTH))
            out.append(OpRecord(
                f"avg_pool_grad_{tag}_{'incl' if inc else 'excl'}",
                lambda g, dy, p, kw=geo, i=inc, s=shape: nn.avg_pool_grad(
                    g, dy, p, input_shape=s, count_include_pad=i, **kw),
                lambda dy, kw=geo, i=inc, s=shape: np_avg_pool_grad(
                    dy, s, kw["kernel"], kw["stride"], kw["padding"], i),
                ((pooled,),), BOTH))
        out.append(OpRecord(f"max_pool_grad_{tag}", lambda g, x, dy, p, kw=geo: nn.max_pool_grad(g, x, dy, p, **kw),
                            lambda x, dy, kw=geo: np_max_pool_grad(x, dy, kw["kernel"], kw["stride"], kw["padding"]),
                            ((shape, pooled),), BOTH, pool_grad_input(kern)))
    out.append(OpRecord("max_pool_nan_inf", lambda g, x, p: nn.max_pool(g, x, p, kernel=2, padding=1),
                        lambda x: np_pool(x, 2, 2, 1), (((1, 2, 5, 5),),), (F32,), with_edges))
    out.append(OpRecord("max_pool_grad_nan", lambda g, x, dy, p: nn.max_pool_grad(g, x, dy, p, kernel=3, stride=1),
                        lambda x, dy: np_max_pool_grad(x, dy, 3, 1), (((1, 1, 5, 5), (1, 1, 3, 3)),), (F32,),
                        lambda rng, s, d, i: with_edges(rng, s, d, i) if i == 0 else default_input(rng, s, d, i)))
    return out


def _norm_records() -> list[OpRecord]:
    ln = lambda g, x, w, b, p: nn.layer_norm(g, x, w, b, p)
    return [
        OpRecord("layer_norm", ln, lambda x, w, b: np_layer_norm(x, w, b, 1),
                 (((6, 10), (10,), (10,)), ((1, 1), (1,), (1,)), ((0, 5), (5,), (5,)), ((3, 33), (33,), (33,))),
                 BOTH, tolerance={F32: (1e-5, 1e-5)}),
        OpRecord("layer_norm_2d", ln, lambda x, w, b: np_layer_norm(x, w, b, 2),
                 (((2, 3, 4, 5), (4, 5), (4, 5)), ((2, 3, 7), (3, 7), (3, 7))), BOTH),
        OpRecord("layer_norm_no_affine", lambda g, x, p: nn.layer_norm(g, x, None, None, p, eps=1e-3),
                 lambda x: np_layer_norm(x, None, None, 1, 1e-3), (((4, 9),), ((5, 16),)), BOTH),
        OpRecord("layer_norm_grad", lambda g, dy, x, w, p: _ln_grad(g, dy, x, w, p, 1),
                 lambda dy, x, w: np_layer_norm_grad(dy, x, w, w.ndim),
                 (((6, 10), (6, 10), (10,)), ((1, 3), (1, 3), (3,)), ((2, 3, 5), (2, 3, 5), (3, 5)),
                  ((5, 17), (5, 17), (17,))), BOTH, tolerance={F32: (1e-4, 1e-5), F16: (2e-2, 2e-2)}),
        OpRecord("group_norm", lambda g, x, w, b, p: nn.group_norm(g, x, w, b, p, num_groups=2),
                 lambda x, w, b: np_group_norm(x, w, b, 2),
                 (((2, 4, 3, 3), (4,), (4,)), ((3, 6, 5), (6,), (6,)), ((1, 2), (2,), (2,)),
                  ((2, 4, 7), (4,), (4,))), BOTH),
        OpRecord("group_norm_grad", lambda g, dy, x, w, p: _gn_grad(g, dy, x, w, p, 3),
                 lambda dy, x, w: np_group_norm_grad(dy, x, w, 3),
                 (((2, 6, 4), (2, 6, 4), (6,)), ((3, 3, 2, 2), (3, 3, 2, 2), (3,)), ((2, 6, 5), (2, 6, 5), (6,))),
                 BOTH, tolerance={F32: (1e-4, 1e-5), F16: (2e-2, 2e-2)}),
        OpRecord("batch_norm", lambda g, x, w, b, m, v, p: nn.batch_norm(g, x, w, b, m, v, p),
                 np_batch_norm, (((4, 3, 5, 5), (3,), (3,), (3,), (3,)), ((7, 5), (5,), (5,), (5,), (5,)),
                                 ((3, 2, 6), (2,), (2,), (2,), (2,))), BOTH, positive_at(4)),
        OpRecord("batch_norm_training", lambda g, x, w, b, p: nn.batch_norm_training(g, x, w, b, p),
                 np_batch_norm_training,
                 (((4, 3, 5, 5), (3,), (3,)), ((9, 4), (4,), (4,)), ((1, 2, 130), (2,), (2,)),
                  ((3, 5, 7), (5,), (5,))), BOTH, tolerance={F32: (1e-5, 1e-5)}),
        OpRecord("batch_norm_training_stable",
                 lambda g, x, p: nn.batch_norm_training(g, x, None, None, p, options={"stable_algorithm": True}),
                 lambda x: np_batch_norm_training(x, None, None), (((6, 3, 10),), ((4, 2, 3),)), (F32,),
                 with_offset, tolerance={F32: (1e-4, 1e-4)}),
        OpRecord("batch_norm_training_unbiased",
                 lambda g, x, p: nn.batch_norm_training(g, x, None, None, p, options={"unbiased_var": True})[2],
                 lambda x: np_batch_norm_training(x, None, None, unbiased=True)[2], (((5, 3, 4),), ((2, 2),)), BOTH),
        OpRecord("batch_norm_grad", lambda g, dy, x, w, p: _bn_grad(g, dy, x, w, p),
                 np_batch_norm_grad, (((4, 3, 5, 5), (4, 3, 5, 5), (3,)), ((8, 4), (8, 4), (4,)),
                                      ((3, 2, 5), (3, 2, 5), (2,))), BOTH,
                 tolerance={F32: (1e-4, 1e-5), F16: (2e-2, 2e-2)}),
    ]


def _ln_grad(g, dy, x, w, p, nd):
    _, mean, inv_std = nn.layer_norm(g, x, w, None, p)
    return nn.layer_norm_grad(g, dy, x, mean, inv_std, w, p)


def _gn_grad(g, dy, x, w, p, groups):
    _, mean, inv_std = nn.group_norm(g, x, w, None, p, num_groups=groups)
    return nn.group_norm_grad(g, dy, x, mean, inv_std, w, p, num_groups=groups)


def _bn_grad(g, dy, x, w, p):
    _, mean, var = nn.batch_norm_training(g, x, w, None, p)
    return nn.batch_norm_grad(g, dy, x, mean, var, w, p)


def _softmax_records() -> list[OpRecord]:
    out = []
    for log in (False, True):
        fwd = nn.log_softmax if log else nn.softmax
        bwd = nn.log_softmax_grad if log else nn.softmax_grad
        tag = "log_softmax" if log else "softmax"
        out += [
            OpRecord(tag, lambda g, x, p, f=fwd: f(g, x, p), lambda x, lg=log: np_softmax(x, -1, lg),
                     (((5, 7),), ((3, 1, 40),), ((0, 4),), ((4, 0),), ((),), ((1,),), ((4, 33),)), BOTH),
            OpRecord(f"{tag}_dim0", lambda g, x, p, f=fwd: f(g, x, p, dim=0),
                     lambda x, lg=log: np_softmax(x, 0, lg), (((6, 5),), ((3, 4, 2),)), BOTH),
            OpRecord(f"{tag}_dim1", lambda g, x, p, f=fwd: f(g, x, p, dim=1),
                     lambda x, lg=log: np_softmax(x, 1, lg), (((2, 5, 3),),), BOTH),
            OpRecord(f"{tag}_edges", lambda g, x, p, f=fwd: f(g, x, p), lambda x, lg=log: np_softmax(x, -1, lg),
                     (((5, 6),), ((4, 9),)), BOTH, softmax_edges),
            OpRecord(f"{tag}_grad", lambda g, y, dy, p, f=bwd: f(g, y, dy, p),
                     lambda y, dy, lg=log: np_softmax_grad(y, dy, -1, lg),
                     (((5, 7), (5, 7)), ((2, 3, 4), (2, 3, 4)), ((0, 3), (0, 3)), ((3, 12), (3, 12))), BOTH),
            OpRecord(f"{tag}_grad_dim0", lambda g, y, dy, p, f=bwd: f(g, y, dy, p, dim=0),
                     lambda y, dy, lg=log: np_softmax_grad(y, dy, 0, lg), (((4, 3), (4, 3)),), BOTH),
        ]
    return out


def _activation_records() -> list[OpRecord]:
    out = []
    for kind in NonLinearity:
        fwd = NP_ACT[kind]
        out.append(OpRecord(f"non_linearity_{kind.name.lower()}",
                            lambda g, x, p, k=kind: nn.non_linearity(g, x, p, kind=k),
                            lambda x, f=fwd: f(f64(x)),
                            (((7, 9),), ((),), ((0,),), ((3, 5, 2),)), BOTH, tolerance={F32: (1e-5, 1e-6)}))
        out.append(OpRecord(f"non_linearity_{kind.name.lower()}_edges",
                            lambda g, x, p, k=kind: nn.non_linearity(g, x, p, kind=k),
                            lambda x, f=fwd: f(f64(x)), (((6, 6),),), BOTH, with_edges))
        out.append(OpRecord(f"non_linearity_grad_{kind.name.lower()}",
                            lambda g, a, dy, p, k=kind: nn.non_linearity_grad(g, a, dy, p, kind=k),
                            lambda a, dy, k=kind: np_act_grad(k, a, dy),
                            (((7, 9), (7, 9)), ((), ()), ((4, 5), (4, 5))), BOTH, act_grad_input(kind),
                            tolerance={F32: (1e-4, 1e-5), F16: (2e-2, 2e-2)}))
    return out


RECORDS: list[OpRecord] = [
    dataclasses.replace(r, name=f"nn.{r.name}", oracle=quiet(r.oracle))
    for r in _softmax_records() + _activation_records() + _norm_records() + _pool_records() + _loss_records()
]
