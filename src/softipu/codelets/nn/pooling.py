"""Max and average pooling of a band of output rows of one plane, and their gradients."""

from __future__ import annotations

import enum
from functools import cache

import numpy as np

from softipu.codelets.nn._common import (
    C_ADD,
    C_MAX,
    VERTEX_CYCLES,
    _f32,
    _io,
    _named,
    _param,
    _vectors,
)
from softipu.dtypes import DType, int32
from softipu.graph.vertex import Input, Output, Param, Vertex
from softipu.target import Target

__all__ = ["PoolMode", "pool_codelet", "pool_grad_codelet"]


# -- pooling: a band of output rows of one plane ----------------------------------------------
class PoolMode(enum.Enum):
    MAX = "max"
    AVG = "avg"  # divisor: the whole window, padding included (torch's default)
    AVG_EXCLUDE_PAD = "avg_exclude_pad"  # divisor: the window's real elements


_GEOMETRY = ("H", "W", "OW", "kh", "kw", "sh", "sw", "pw", "row0")


def _geometry(params: dict) -> dict:
    return {k: int(_param(params[k])) for k in _GEOMETRY if k in params}


def _padded(x: np.ndarray, rows: int, g: dict, span: int, wp: int, fill: float, dtype) -> np.ndarray:
    """The band's input rows placed in a ``(..., span, wp)`` window-origin frame, ``fill`` around.

    Frame row 0 is input row ``row0`` (may be negative: top padding); column ``pw`` is input
    column 0. Input rows outside the frame and columns past it are unused by every window.
    """
    top = max(0, g["row0"]) - g["row0"]
    frame = np.full((*x.shape[:-1], span, wp), fill, dtype=dtype)
    xs = x.reshape(*x.shape[:-1], rows, g["W"])
    r, c = min(rows, span - top), min(g["W"], wp - g["pw"])
    if r > 0 and c > 0:
        frame[..., top:top + r, g["pw"]:g["pw"] + c] = xs[..., :r, :c]
    return frame


def _windows(frame: np.ndarray, oh: int, g: dict):
    """Yield (offset index, window view ``(..., oh, OW)``) for each kernel offset, row major."""
    for i in range(g["kh"]):
        for j in range(g["kw"]):
            yield i * g["kw"] + j, frame[..., i:i + (oh - 1) * g["sh"] + 1:g["sh"],
                                         j:j + (g["OW"] - 1) * g["sw"] + 1:g["sw"]]


def _divisor(oh: int, g: dict, mode: PoolMode) -> np.ndarray | float:
    if mode is not PoolMode.AVG_EXCLUDE_PAD:
        return float(g["kh"] * g["kw"])
    r0 = g["row0"] + np.arange(oh) * g["sh"]
    rows = np.minimum(r0 + g["kh"], g["H"]) - np.maximum(r0, 0)
    c0 = np.arange(g["OW"]) * g["sw"] - g["pw"]
    cols = np.minimum(c0 + g["kw"], g["W"]) - np.maximum(c0, 0)
    return (rows[:, None] * cols[None, :]).astype(np.float32)


def _pool_cycles(dtype: DType, out_elems, kernel, target: Target, per: int):
    return VERTEX_CYCLES + _vectors(out_elems, target) * kernel * per + 2 * _io(out_elems, dtype, target)


@cache
def pool_codelet(dtype: DType, mode: PoolMode) -> type[Vertex]:
    """Max or average pooling of one plane's band of output rows (``out``: ``oh x OW``) from its
    input rows (``x``: rows ``max(0, row0) ..`` of width ``W``). Cost [U]: per output vector
    ``kh x kw`` max (or accumulate) passes."""
    per = C_MAX if mode is PoolMode.MAX else C_ADD

    class Pool(Vertex):
        x = Input(dtype)
        out = Output(dtype)
        H, W, OW = Param(int32), Param(int32), Param(int32)
        kh, kw, sh, sw, pw, row0 = (Param(int32) for _ in range(6))

        @staticmethod
        def compute(x, out, **params):
            g = _geometry(params)
            oh = out.shape[-1] // g["OW"]
            span, wp = (oh - 1) * g["sh"] + g["kh"], (g["OW"] - 1) * g["sw"] + g["kw"]
            is_max = mode is PoolMode.MAX
            frame = _padded(x, x.shape[-1] // g["W"], g, span, wp, -np.inf if is_max else 0.0,
                            x.dtype if is_max else np.float32)
            acc = None
            for _, win in _windows(frame, oh, g):
                if acc is None:
                    acc = win.copy()
                elif is_max:
                    np.maximum(acc, win, out=acc)
                else:
                    acc += win
            if not is_max:
                acc /= _divisor(oh, g, mode)
            out[...] = acc.reshape(out.shape)

        @staticmethod
        def cycles(x, out, H, W, OW, kh, kw, sh, sw, pw, row0, target):
            return _pool_cycles(dtype, out, kh * kw, target, per)

        @staticmethod
        def flops(x, out, H, W, OW, kh, kw, sh, sw, pw, row0, target):
            return out * kh * kw

    return _named(Pool, f"{mode.name.title().replace('_', '')}Pool<{dtype.name}>")


def _max_index(frame: np.ndarray, valid: np.ndarray, oh: int, g: dict) -> np.ndarray:
    """Per window the kernel offset torch's max pool picks: the first maximum in row-major order,
    any NaN over a number (the last NaN), never a padded position."""
    best = idx = None
    offsets = [win for _, win in _windows(valid, oh, g)]
    for t, win in _windows(frame, oh, g):
        if best is None:
            best = np.full(win.shape, -np.inf, np.float32)
            idx = np.full(win.shape, -1, np.int32)
        take = offsets[t] & ((win > best) | np.isnan(win) | (idx < 0))
        best = np.where(take, win, best)
        idx = np.where(take, t, idx)
    return idx


@cache
def pool_grad_codelet(dtype: DType, mode: PoolMode) -> type[Vertex]:
    """Input gradient of pooling for input rows ``dx_row0 ..`` of one plane, from the gradients
    of every output row whose window touches them (``dy``: ``oh x OW``, window origin at input
    row ``row0``). Max pooling also reads those windows' inputs (``x``, rows ``max(0, row0) ..``)
    and routes each gradient to the window's torch argmax; average pooling spreads it evenly.
    Cost [U]: per ``dy`` vector ``kh x kw`` (compare +) accumulate passes."""
    per = C_MAX + 2 * C_ADD if mode is PoolMode.MAX else 2 * C_ADD
    fields = dict(dy=Input(dtype), dx=Output(dtype))
    if mode is PoolMode.MAX:
        fields = dict(x=Input(dtype), **fields)

    def compute(**args):
        g = _geometry(args)
        dy, dx = args["dy"], args["dx"]
        oh = dy.shape[-1] // g["OW"]
        rows_dx = dx.shape[-1] // g["W"]
        span, wp = (oh - 1) * g["sh"] + g["kh"], (g["OW"] - 1) * g["sw"] + g["kw"]
        dx_off = int(_param(args["dx_row0"])) - g["row0"]
        grads = _f32(dy).reshape(*dy.shape[:-1], oh, g["OW"])
        frame = np.zeros((*dy.shape[:-1], max(span, dx_off + rows_dx), max(wp, g["pw"] + g["W"])),
                         np.float32)
        if mode is PoolMode.MAX:
            x = args["x"]
            xf = _padded(x, x.shape[-1] // g["W"], g, span, wp, -np.inf, x.dtype)
            valid = _padded(np.ones((1, x.shape[-1]), bool), x.shape[-1] // g["W"], g, span, wp,
                            False, bool)[0]
            idx = _max_index(xf, valid, oh, g)
            for t, win in _windows(frame, oh, g):
                win += np.where(idx == t, grads, 0)
        else:
            share = grads / _divisor(oh, g, mode)
            for _, win in _windows(frame, oh, g):
                win += share
        part = frame[..., dx_off:dx_off + rows_dx, g["pw"]:g["pw"] + g["W"]]
        dx[...] = part.reshape(dx.shape)

    def cycles(target, **args):
        return _pool_cycles(dtype, args["dy"], args["kh"] * args["kw"], target, per)

    body = dict(fields, compute=staticmethod(compute), cycles=staticmethod(cycles))
    body |= {k: Param(int32) for k in (*_GEOMETRY, "dx_row0")}
    name = f"{mode.name.title().replace('_', '')}PoolGrad<{dtype.name}>"
    return type(name, (Vertex,), body)
