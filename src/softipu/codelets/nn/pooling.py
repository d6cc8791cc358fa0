"""Max and average pooling of a band of output rows of one plane, and their gradients."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from functools import cache

import numpy as np

from softipu.codelets.nn._common import (
    C_ADD,
    C_MAX,
    VERTEX_CYCLES,
    _f32,
    _int_params,
    _io,
    _named,
    _param,
    _vectors,
)
from softipu.dtypes import DType, int32
from softipu.graph.vertex import Input, Output, Param, Vertex
from softipu.target import Target

__all__ = ["PoolMode", "pool_codelet", "pool_grad_codelet", "group_pool_codelet", "group_pool_cycles",
           "group_pool_grad_codelet"]


# -- pooling: a band of output rows of one plane ----------------------------------------------
class PoolMode(enum.Enum):
    MAX = "max"
    AVG = "avg"  # divisor: the whole window, padding included (torch's default)
    AVG_EXCLUDE_PAD = "avg_exclude_pad"  # divisor: the window's real elements


_GEOMETRY = ("H", "W", "OW", "kh", "kw", "sh", "sw", "pw", "row0")


def _geometry(params: dict) -> dict:
    return _int_params(params, _GEOMETRY)


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


def _pool_planes(x: np.ndarray, g: dict, oh: int, mode: PoolMode) -> np.ndarray:
    """Pool ``x`` (``(..., rows * W)``: input rows ``max(0, row0) ..`` of planes) into
    ``(..., oh, OW)``: max in the input dtype, averages in fp32."""
    span, wp = (oh - 1) * g["sh"] + g["kh"], (g["OW"] - 1) * g["sw"] + g["kw"]
    is_max = mode is PoolMode.MAX
    frame = _padded(x, x.shape[-1] // g["W"], g, span, wp, -np.inf if is_max else 0.0,
                    x.dtype if is_max else np.float32)
    acc = _fold((win for _, win in _windows(frame, oh, g)), is_max)
    if not is_max:
        acc /= _divisor(oh, g, mode)
    return acc


def _fold(windows: Iterable[np.ndarray], is_max: bool) -> np.ndarray:
    """The windows' elementwise max (or sum), in the order given."""
    acc = None
    for win in windows:
        if acc is None:
            acc = win.copy()
        elif is_max:
            np.maximum(acc, win, out=acc)
        else:
            acc += win
    return acc


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
            out[...] = _pool_planes(x, g, oh, mode).reshape(out.shape)

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


@cache
def group_pool_grad_codelet(dtype: DType, mode: PoolMode) -> type[Vertex]:
    """:func:`pool_grad_codelet` for a band of input rows of one sample stored channels innermost
    (popnn's pooling gradient walks the same channel-group worklists as its forward,
    lib/popnn/Pooling.cpp): ``dy`` ``(oh, OW, C)``, ``x`` ``(rows, W, C)`` (max), ``dx`` ``(rows_dx,
    W, C)``. Each channel's values are its plane's, computed the same way (the same bits); cycles
    as the ``C`` plane vertices' work, one vertex's overhead."""
    plane = pool_grad_codelet(dtype, mode)
    names = ("x", "dy") if mode is PoolMode.MAX else ("dy",)

    def planes(a: np.ndarray, c: int) -> np.ndarray:  # (..., n * C) pixel-major -> (..., C, n)
        return np.ascontiguousarray(a.reshape(*a.shape[:-1], -1, c).swapaxes(-1, -2))

    def compute(**args):
        c = int(_param(args.pop("C")))
        dx = args["dx"]
        args |= {k: planes(args[k], c) for k in names}
        args["dx"] = np.empty((*dx.shape[:-1], c, dx.shape[-1] // c), dx.dtype)
        plane.compute(**args)
        dx[...] = args["dx"].swapaxes(-1, -2).reshape(dx.shape)

    def cycles(target, **args):
        args.pop("C")
        return plane.cycles(target, **args)

    fields = dict(dy=Input(dtype), dx=Output(dtype)) | ({"x": Input(dtype)} if mode is PoolMode.MAX else {})
    body = dict(fields, compute=staticmethod(compute), cycles=staticmethod(cycles))
    body |= {k: Param(int32) for k in (*_GEOMETRY, "dx_row0", "C")}
    return type(f"{mode.name.title().replace('_', '')}PoolGroupsGrad<{dtype.name}>", (Vertex,), body)


# -- pooling over channel groups: a band of output rows of one sample, channels innermost ---------
# popnn pools activations laid out in channel groups (lib/popnn/Pooling.cpp, PoolVertices.cpp in
# graphcore/poplibs): a MaxPooling / SumPooling vertex walks a worklist of (output offset, input
# offset, run length) items per output row and kernel position, and for each item runs its inner
# loop over whole runs of ``chansPerGroup`` contiguous channels; the output keeps the input's
# grouped layout. Here the group is every channel (the input stores channels innermost), so a
# vertex's input and output are each one contiguous run, whatever the batch.
_GROUP_GEOMETRY = (*_GEOMETRY, "C")


def _worker_cycles(rows: list[list[int]], init: int, chans_d: int, is_max: bool, workers: int) -> int:
    """popnn's ``getPoolingCycles`` workerCycles (lib/popnn/PerformanceEstimation.hpp, planning
    unpack costs 2) for one worker: ``rows`` holds, per output row, each work item's
    ``numElementsM1``; ``init`` output positions are initialised by all workers; one channel
    group of ``chans_d`` 64-bit channel vectors."""
    cycles = 4 + 2 + 2 + 7 + 2 + 2  # vertex state, init work split, unpack out [V]
    cycles += 4 + -(-init * chans_d // workers)  # init loop (one channel group) [V]
    cycles += 5 + 1 + 2  # startPos, numRows, unpack [V]
    if not rows:
        return cycles + 1
    cycles += 2 + (1 if is_max else 2) + 3 + 2 + 2 * 2 + 1  # pointers, worklist unpack [V]
    rpt0 = 4 if is_max else 5  # rpt loop: 4 + 3n (max), 5 + 3n (sum) [V]
    for items in rows:
        cycles += 13 + 2  # row loop [V]
        for n in items:
            cycles += 20 + 1 + chans_d * (2 + rpt0 + 3 * n + 1) + 1 + 3  # work item [V]
    return cycles + 1


def _row_items(g: dict, oh: int) -> list[list[int]]:
    """Per output row of a band, each non-empty (kernel row, kernel column) run's length - 1."""
    cols = []
    for j in range(g["kw"]):
        ox = np.arange(g["OW"]) * g["sw"] - g["pw"] + j
        count = int(np.count_nonzero((ox >= 0) & (ox < g["W"])))
        if count:
            cols.append(count - 1)
    rows = []
    for r in range(oh):
        iy = g["row0"] + r * g["sh"] + np.arange(g["kh"])
        rows.append(cols * int(np.count_nonzero((iy >= 0) & (iy < g["H"]))))
    return rows


def group_pool_cycles(dtype: DType, mode: PoolMode, g: dict, oh: int, target: Target) -> int:
    """One vertex's cycles: a worker running popnn's pooling inner loops over ``oh`` output rows
    of ``g["C"]`` channels (``chansPerGroupD`` = channel vectors of 64 bits: 4 halves or 2 floats);
    init split over the tile's workers as popnn splits it [V]; the supervisor's 7 + 6 cycles
    [V] are spread over the workers' vertices and not counted [U]."""
    chans_d = -(-g["C"] // target.vector_width(dtype.itemsize))
    return _worker_cycles(_row_items(g, oh), oh * g["OW"], chans_d, mode is PoolMode.MAX,
                          target.workers_per_tile)


def _pool_pixels(x: np.ndarray, g: dict, oh: int, mode: PoolMode) -> np.ndarray:
    """:func:`_pool_planes` of input stored channels innermost (``(..., rows * W * C)``), into
    ``(..., oh, OW, C)``: the same frame, windows and pass order with the channels kept innermost
    (contiguous vectors, no transposing copies), so the same values."""
    c, w = g["C"], g["W"]
    rows = x.shape[-1] // (w * c)
    span, wp = (oh - 1) * g["sh"] + g["kh"], (g["OW"] - 1) * g["sw"] + g["kw"]
    is_max = mode is PoolMode.MAX
    lead = x.shape[:-1]
    frame = np.full((*lead, span, wp, c), -np.inf if is_max else 0.0, x.dtype if is_max else np.float32)
    top, pw = max(0, g["row0"]) - g["row0"], g["pw"]
    r, cols = min(rows, span - top), min(w, wp - pw)
    if r > 0 and cols > 0:
        frame[..., top:top + r, pw:pw + cols, :] = x.reshape(*lead, rows, w, c)[..., :r, :cols, :]
    sh, sw = g["sh"], g["sw"]
    acc = _fold((frame[..., i:i + (oh - 1) * sh + 1:sh, j:j + (g["OW"] - 1) * sw + 1:sw, :]
                 for i in range(g["kh"]) for j in range(g["kw"])), is_max)
    if not is_max:
        divisor = _divisor(oh, g, mode)
        acc /= divisor[..., None] if isinstance(divisor, np.ndarray) else divisor
    return acc


@cache
def group_pool_codelet(dtype: DType, mode: PoolMode) -> type[Vertex]:
    """Max or average pooling of a band of output rows of one sample stored channels innermost:
    ``x`` holds input rows ``max(0, row0) ..`` as ``(rows, W, C)``, ``out`` the band's outputs as
    ``(oh, OW, C)``. Values as :func:`pool_codelet`; cycles: :func:`group_pool_cycles`."""

    def compute(x, out, **params):
        g = _int_params(params, _GROUP_GEOMETRY)
        oh = out.shape[-1] // (g["OW"] * g["C"])
        out[...] = _pool_pixels(x, g, oh, mode).reshape(out.shape)

    def cycles(x, out, target, **params):
        g = {k: int(np.asarray(params[k]).flat[0]) for k in _GROUP_GEOMETRY}
        oh = int(np.asarray(out).flat[0]) // max(g["OW"] * g["C"], 1)
        return np.asarray(out) * 0 + group_pool_cycles(dtype, mode, g, oh, target)

    def flops(x, out, target, **params):
        return np.asarray(out) * int(np.asarray(params["kh"]).flat[0]) * int(np.asarray(params["kw"]).flat[0])

    def group_runner(groups, storage, where):  # the fast engine's hook: alike bands batched
        from softipu.codelets.nn.pool_groups import PoolGroupsRunner

        return PoolGroupsRunner.build(groups, storage, where, mode)

    body = dict(x=Input(dtype), out=Output(dtype), compute=staticmethod(compute), cycles=staticmethod(cycles),
                flops=staticmethod(flops), group_runner=staticmethod(group_runner))
    body |= {k: Param(int32) for k in _GROUP_GEOMETRY}
    return type(f"{mode.name.title().replace('_', '')}PoolGroups<{dtype.name}>", (Vertex,), body)
