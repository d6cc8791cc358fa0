"""Max and average pooling, 1-D and 2-D, and their gradients."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from softipu.codelets import nn as C
from softipu.codelets.nn import PoolMode
from softipu.graph.graph import Graph
from softipu.graph.tensor import Slabs, Tensor
from softipu.ops.common import OpContext, rows_of
from softipu.ops.nn._common import _check_float, _start, _tiles_at, _variable

__all__ = ['max_pool', 'avg_pool', 'max_pool_grad', 'avg_pool_grad']

# -- pooling ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Pool:
    """Pooling geometry as 2-D NCHW (1-D input is ``(N, C, L, 1)`` with a ``(k, 1)`` kernel)."""

    planes: int
    H: int
    W: int
    kh: int
    kw: int
    sh: int
    sw: int
    ph: int
    pw: int
    OH: int
    OW: int
    out_shape: tuple[int, ...]

    def params(self, row0: int) -> dict[str, int]:
        return dict(H=self.H, W=self.W, OW=self.OW, kh=self.kh, kw=self.kw, sh=self.sh, sw=self.sw,
                    pw=self.pw, row0=row0)

    def input_rows(self, o0: int, o1: int) -> tuple[int, int]:
        """Input rows the windows of output rows ``[o0, o1)`` read."""
        return max(0, o0 * self.sh - self.ph), min(self.H, (o1 - 1) * self.sh - self.ph + self.kh)


def _ints(ctx: OpContext, value: Any, d: int, what: str, low: int) -> tuple[int, ...]:
    vals = (value,) * d if isinstance(value, (int, np.integer)) else tuple(value)
    if len(vals) != d or not all(isinstance(v, (int, np.integer)) and v >= low for v in vals):
        raise ctx.error(f"{what} must be {d} int(s) >= {low}, got {value!r}")
    return tuple(int(v) for v in vals)


def _pool_geometry(ctx: OpContext, shape: tuple[int, ...], kernel: Any, stride: Any,
                   padding: Any) -> _Pool:
    if len(shape) not in (3, 4):
        raise ctx.error(f"pooling takes (N, C, L) or (N, C, H, W) input, got shape {shape}")
    d = len(shape) - 2
    k = _ints(ctx, kernel, d, "kernel", 1)
    s = _ints(ctx, stride if stride is not None else k, d, "stride", 1)
    p = _ints(ctx, padding, d, "padding", 0)
    if any(pi > ki // 2 for pi, ki in zip(p, k, strict=True)):
        raise ctx.error(f"padding {p} must be at most half the kernel {k}")
    spatial = shape[2:]
    out = tuple((n + 2 * pi - ki) // si + 1 for n, pi, ki, si in zip(spatial, p, k, s, strict=True))
    if any(o <= 0 for o in out):
        raise ctx.error(f"kernel {k} with padding {p} does not fit input of shape {shape}: output "
                        f"size {out} is too small")
    if d == 1:
        return _Pool(shape[0] * shape[1], spatial[0], 1, k[0], 1, s[0], 1, p[0], 0, out[0], 1,
                     (*shape[:2], out[0]))
    return _Pool(shape[0] * shape[1], *spatial, *k, *s, *p, *out, (*shape[:2], *out))


def _bands(g: _Pool, target) -> np.ndarray:
    """Output-row band bounds: enough bands that the planes' vertices fill every worker."""
    want = -(-target.num_tiles * target.workers_per_tile // max(g.planes, 1))
    bands = max(1, min(g.OH, want))
    return (np.arange(bands + 1) * g.OH) // bands


def _band_tiles(ctx: OpContext, t3: Tensor, row: int) -> np.ndarray:
    """Tile of each plane's element in ``row`` of a ``(planes, rows, W)`` tensor, at a column that
    moves across the row with the plane: a plane's row on one tile (NCHW) gives that tile, and
    channels stored innermost (a convolution's NHWC output, where every plane's element of one
    pixel shares a tile) spread over the tiles holding the row instead of piling on one."""
    planes = np.arange(t3.shape[0])
    cols = (planes * t3.shape[2]) // max(t3.shape[0], 1)
    return _tiles_at(ctx, t3, (planes, np.full(t3.shape[0], row), cols))


def _map_band(ctx: OpContext, t3: Tensor, r0: int, r1: int, tiles: np.ndarray) -> None:
    ctx.graph.set_tile_mappings(t3[:, r0:r1, :], tiles)


def _plane_rows(t: Tensor, planes: int, rows: int, width: int, r0: int, r1: int) -> Tensor:
    """Rows ``[r0, r1)`` of every plane of ``t`` (``planes x rows x width``) as vertex rows."""
    return rows_of(t.flatten(), np.arange(planes) * rows * width + r0 * width, (r1 - r0) * width)


def _channels_innermost(x: Tensor) -> Tensor | None:
    """``x`` (``(N, C, L)`` or ``(N, C, H, W)``) as one contiguous ``N x spatial x C`` run, or None
    when its channels are not stored innermost (a convolution's output is: its NHWC layout)."""
    if x.ndim not in (3, 4) or x.shape[1] <= 1 or not x.is_strided:
        return None
    flat = x.transpose(0, *range(2, x.ndim), 1).flatten()
    return flat if flat.is_strided and flat.strides == (1,) else None


# A channel group holds at least this many channels when channels are split over vertices: the
# fp16 AMP's output grouping poplin gives a convolution's output (popnn pools in the input's
# groups) [U: the grouping varies with the plan; 16 is the common fp16 one].
_MIN_GROUP_CHANNELS = 16


def _group_bands(g: _Pool, n: int, c: int, target) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Output-row, output-column and channel bounds for channel-group vertices: about a vertex
    per worker of the chip over the ``n`` samples, whatever the batch. Columns, then channels, are
    split only when rows run out (small batches, small images), channels only when some tile would
    get no band: popnn's planner splits the field and the channel groups as well as the batch."""
    want = -(-target.num_tiles * target.workers_per_tile // max(n, 1))
    rows = max(1, min(g.OH, want))
    cols = max(1, min(g.OW, -(-want // rows)))
    groups = 1  # channels are split only when not every tile has a band (pixel runs cost regions)
    if n * rows * cols < target.num_tiles:
        groups = max(1, min(c // _MIN_GROUP_CHANNELS, -(-want // (rows * cols))))
    chans = np.unique(np.minimum(c, (np.arange(groups + 1) * c // groups + 3) // 4 * 4))
    return (np.arange(rows + 1) * g.OH) // rows, (np.arange(cols + 1) * g.OW) // cols, chans


def _runs(bands: list[int], samples: int, sample_step: int, block: tuple[tuple[int, int], ...],
          t: Tensor) -> Tensor:
    """A ``(len(bands) * samples, L)`` field of the contiguous 1-D tensor ``t``: vertex ``(b, s)``
    reads the block ``block`` (``(size, stride)`` per axis, read row-major: rows of pixels' channels)
    from ``bands[b] + s * sample_step``. A slab layout, one strided piece per band: a few ints per
    band whatever the batch (an index of every element read grew with the batch: ResNet-50's max
    pool at batch 16 built 20 M addresses)."""
    sizes, strides = zip(*block, strict=True)
    length = math.prod(sizes)
    pieces = tuple((t.offset + start, (samples, *sizes), (sample_step, *strides), (samples, length))
                   for start in bands)
    if len(pieces) == 1 and _is_one_run(sizes, strides):
        return Tensor(t.graph, t.dtype, (samples, length), t.offset + bands[0], (sample_step, 1))
    return Tensor(t.graph, t.dtype, (len(bands) * samples, length), 0, (), None, Slabs(pieces, 0, (0, 1)))


def _is_one_run(sizes: tuple[int, ...], strides: tuple[int, ...]) -> bool:
    """True when the block is one contiguous run (every axis continues the one inside it)."""
    run = 1
    for size, stride in zip(reversed(sizes), reversed(strides), strict=True):
        if size != 1 and stride != run:
            return False
        run *= size
    return True


def _pixel_block(rows: int, row_step: int, cols: int, c: int, cg: int) -> tuple[tuple[int, int], ...]:
    """``(size, stride)`` axes of ``rows x cols`` pixels' ``cg`` of ``c`` channels: a run per row
    when every channel is taken (whole pixels side by side), else a run per pixel."""
    if cg == c:
        return ((rows, row_step), (cols * c, 1))
    return ((rows, row_step), (cols, c), (cg, 1))


def _pool_groups(ctx: OpContext, x: Tensor, flat: Tensor, g: _Pool, mode: PoolMode) -> Tensor:
    """Pooling of input stored channels innermost, as popnn pools channel groups: a vertex per
    band of output rows (and, at small batch, columns and channel groups) of one sample reads its
    input as runs of pixels' channels, and writes an output stored channels innermost too, so the
    next convolution reads it in place. One ``add_vertices`` per band geometry, not per element."""
    n, c = x.shape[:2]
    out_nhwc = ctx.graph.add_variable(x.dtype, (n, g.OH, g.OW, c), name=f"{ctx.name}/out")
    out = out_nhwc.transpose(0, 3, 1, 2)
    if x.ndim == 3:
        out = out.reshape(g.out_shape)
    if not out.numel:
        return out
    samples = np.arange(n)
    cs = ctx.compute_set()
    codelet = C.group_pool_codelet(x.dtype, mode)
    x4 = x if x.ndim == 4 else x.expand_dims(-1)
    out_flat = out_nhwc.flatten()
    row_bounds, col_bounds, chans = _group_bands(g, n, c, ctx.graph.target)
    bands = [(o0, o1, *g.input_rows(o0, o1), q0, q1, c0, c1)
             for o0, o1 in zip(row_bounds[:-1].tolist(), row_bounds[1:].tolist(), strict=True)
             for q0, q1 in zip(col_bounds[:-1].tolist(), col_bounds[1:].tolist(), strict=True)
             for c0, c1 in zip(chans[:-1].tolist(), chans[1:].tolist(), strict=True)]
    # every band's tiles in one look-up (a look-up between mapping calls re-resolves the mapping)
    spot = np.array([(c0, (r0 + r1 - 1) // 2, max(0, q0 * g.sw - g.pw) + (q1 - q0) * g.sw // 2)
                     for _, _, r0, r1, q0, q1, c0, _ in bands])
    where = (np.tile(samples, len(bands)), *(np.repeat(np.minimum(spot[:, i], lim - 1), n)
                                            for i, lim in enumerate((c, g.H, g.W))))
    all_tiles = _tiles_at(ctx, x4, where).reshape(len(bands), n)
    by_geometry: dict[tuple[int, ...], list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
    for (o0, o1, r0, r1, q0, q1, c0, c1), tiles in zip(bands, all_tiles, strict=True):
        ctx.graph.set_tile_mappings(out_nhwc[:, o0:o1, q0:q1, c0:c1], tiles)
        left = q0 * g.sw - g.pw  # input column of the band's first window origin
        a, b = max(0, left), min(g.W, (q1 - 1) * g.sw - g.pw + g.kw)
        x_start = (r0 * g.W + a) * c + c0  # of sample 0; samples follow every H * W * c
        o_start = (o0 * g.OW + q0) * c + c0
        by_geometry.setdefault((o0, o1, r0, r1, b - a, a - left, q1 - q0, c1 - c0), []).append(
            (x_start, o_start, tiles))
    for (o0, o1, r0, r1, w_in, pw, ow, cg), parts in by_geometry.items():
        x_block = _pixel_block(r1 - r0, g.W * c, w_in, c, cg)
        o_block = _pixel_block(o1 - o0, g.OW * c, ow, c, cg)
        ctx.graph.add_vertices(cs, codelet, {
            "x": _runs([v[0] for v in parts], n, g.H * g.W * c, x_block, flat),
            "out": _runs([v[1] for v in parts], n, g.OH * g.OW * c, o_block, out_flat),
            "H": g.H, "W": w_in, "OW": ow, "kh": g.kh, "kw": g.kw, "sh": g.sh, "sw": g.sw, "pw": pw,
            "row0": o0 * g.sh - g.ph, "C": cg}, np.concatenate([v[2] for v in parts]))
    ctx.execute(cs)
    return out


def _pool(graph, x, prog, kernel, stride, padding, mode: PoolMode, op, name, options) -> Tensor:
    ctx, _ = _start(graph, prog, op, name, options, x)
    _check_float(ctx, x)
    g = _pool_geometry(ctx, x.shape, kernel, stride, padding)
    flat = _channels_innermost(x)
    if flat is not None:
        return _pool_groups(ctx, x, flat, g, mode)
    out = _variable(ctx, x.dtype, g.out_shape, "out")
    if g.planes == 0:
        return out
    x3, out3 = x.reshape(g.planes, g.H, g.W), out.reshape(g.planes, g.OH, g.OW)
    cs = ctx.compute_set()
    bounds = _bands(g, ctx.graph.target)
    for o0, o1 in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        r0, r1 = g.input_rows(o0, o1)
        tiles = _band_tiles(ctx, x3, (r0 + r1 - 1) // 2)
        _map_band(ctx, out3, o0, o1, tiles)
        ctx.graph.add_vertices(cs, C.pool_codelet(x.dtype, mode), {
            "x": _plane_rows(x, g.planes, g.H, g.W, r0, r1),
            "out": _plane_rows(out, g.planes, g.OH, g.OW, o0, o1),
            **g.params(o0 * g.sh - g.ph)}, tiles)
    ctx.execute(cs)
    return out


def max_pool(graph: Graph, x: Tensor, prog: Any, *, kernel: Any, stride: Any = None, padding: Any = 0,
             name: str = "", options: Mapping[str, Any] | None = None) -> Tensor:
    """Max pooling of ``(N, C, L)`` (1-D) or ``(N, C, H, W)`` (2-D) input like torch's
    ``max_pool1d/2d`` (``stride`` defaults to ``kernel``; implicit ``-inf`` padding of at most half
    the kernel; floor mode; NaN propagates). Each vertex computes a band of output rows of one
    plane. No options.

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops import nn
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=4))
    >>> x = g.add_variable(sp.float32, (1, 1, 4), name="x"); sp.ops.map_linearly(g, x)
    >>> prog = P.Sequence(); y = nn.max_pool(g, x, prog, kernel=2)
    >>> eng = sp.Engine(g, [prog]); eng.write_tensor(x, [[[1, 5, 2, 0]]]); eng.run(0)
    >>> eng.read_tensor(y).tolist()
    [[[5.0, 2.0]]]
    """
    return _pool(graph, x, prog, kernel, stride, padding, PoolMode.MAX, "max_pool", name, options)


def avg_pool(graph: Graph, x: Tensor, prog: Any, *, kernel: Any, stride: Any = None, padding: Any = 0,
             count_include_pad: bool = True, name: str = "",
             options: Mapping[str, Any] | None = None) -> Tensor:
    """Average pooling like torch's ``avg_pool1d/2d``: zero padding; the divisor is the whole
    window (``count_include_pad``, torch's default) or its real elements; fp32 accumulation.
    Layout as :func:`max_pool`. No options.

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops import nn
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=4))
    >>> x = g.add_variable(sp.float32, (1, 1, 4), name="x"); sp.ops.map_linearly(g, x)
    >>> prog = P.Sequence(); y = nn.avg_pool(g, x, prog, kernel=2)
    >>> eng = sp.Engine(g, [prog]); eng.write_tensor(x, [[[1, 5, 2, 0]]]); eng.run(0)
    >>> eng.read_tensor(y).tolist()
    [[[3.0, 1.0]]]
    """
    mode = PoolMode.AVG if count_include_pad else PoolMode.AVG_EXCLUDE_PAD
    return _pool(graph, x, prog, kernel, stride, padding, mode, "avg_pool", name, options)


def _grad_bands(g: _Pool, target) -> list[tuple[int, int, int, int]]:
    """(input rows a, b, contributing output rows oa, ob) per gradient band: each band owns the
    input rows of its output rows' window starts, so every band has outputs touching it."""
    bounds = _bands(g, target)
    starts = [0] + [min(g.H, max(0, o * g.sh - g.ph)) for o in bounds[1:-1].tolist()] + [g.H]
    out = []
    for a, b in zip(starts[:-1], starts[1:], strict=True):
        if b > a:
            oa = max(0, (a + g.ph - g.kh) // g.sh + 1)
            ob = min(g.OH, (b - 1 + g.ph) // g.sh + 1)
            out.append((a, b, oa, ob))  # ob > oa: the band holds output oa's window start
    return out


def _pool_grad(ctx: OpContext, g: _Pool, x: Tensor | None, grad_out: Tensor, mode: PoolMode,
               in_shape: tuple[int, ...]) -> Tensor:
    dy_flat = _pixel_major(grad_out) if len(in_shape) == 4 else None
    x_flat = _channels_innermost(x) if x is not None and dy_flat is not None else None
    if dy_flat is not None and g.planes and (x is None or x_flat is not None) and \
            (x is not None or _channels_innermost(grad_out) is not None) and _bands_fit(ctx, g, in_shape):
        return _pool_grad_groups(ctx, g, x_flat, dy_flat, mode, in_shape, grad_out.dtype)
    dx = _variable(ctx, grad_out.dtype, in_shape, "dx")
    if g.planes == 0:
        return dx
    dy3, dx3 = grad_out.reshape(g.planes, g.OH, g.OW), dx.reshape(g.planes, g.H, g.W)
    cs = ctx.compute_set()
    codelet = C.pool_grad_codelet(grad_out.dtype, mode)
    for a, b, oa, ob in _grad_bands(g, ctx.graph.target):
        if x is not None:
            tiles = _band_tiles(ctx, x.reshape(g.planes, g.H, g.W), (a + b - 1) // 2)
        else:
            tiles = _band_tiles(ctx, dy3, (oa + ob - 1) // 2)
        _map_band(ctx, dx3, a, b, tiles)
        fields = {"dy": _plane_rows(grad_out, g.planes, g.OH, g.OW, oa, ob),
                  "dx": _plane_rows(dx, g.planes, g.H, g.W, a, b),
                  "dx_row0": a, **g.params(oa * g.sh - g.ph)}
        if x is not None:
            fields["x"] = _plane_rows(x, g.planes, g.H, g.W, *g.input_rows(oa, ob))
        ctx.graph.add_vertices(cs, codelet, fields, tiles)
    ctx.execute(cs)
    return dx


def _bands_fit(ctx: OpContext, g: _Pool, in_shape: tuple[int, ...]) -> bool:
    """Whether a band of input rows of one sample (the rows of one output row's windows) holds
    no more than ``_BAND_TILES`` tiles' share of the pixels, so a vertex per band reads mostly
    pixels of a few tiles. Bands are whole rows (the gradient's frame spans the width): much
    wider, one tile per band reads its neighbours' and leaves most tiles idle, and the plane
    vertices, which spread over the band's tiles, are faster (measured on ResNet-50's stem max
    pool, GC200, training: at batch 18, 448 pixels a band, 2.9 tiles' share, channel groups took
    the backward from 1.47 M to 0.69 M cycles; at batch 2, 448 pixels, 26 tiles' share, from
    0.17 M to 0.37 M)."""
    n, _, h, w = in_shape
    band = min(g.H, g.sh + g.kh - 1) * w
    return band <= _BAND_TILES * max(1, n * h * w // ctx.graph.num_tiles)


_BAND_TILES = 4  # [U] between the measured 2.9 (faster) and 26 (slower) tiles' share


def _pixel_major(t: Tensor) -> Tensor | None:
    """An ``(N, C, H, W)`` tensor's elements in NHWC order as one strided 1-D view (stored channels
    innermost, or a broadcast), else None."""
    if t.ndim != 4 or not t.is_strided:
        return None
    flat = t.transpose(0, 2, 3, 1).flatten()
    return flat if flat.is_strided else None


def _pool_grad_groups(ctx: OpContext, g: _Pool, x_flat: Tensor | None, dy_flat: Tensor, mode: PoolMode,
                      in_shape: tuple[int, ...], dtype: Any) -> Tensor:
    """The gradient of pooling whose input (or, for average pooling, output gradient) is stored
    channels innermost (a convolution's NHWC output; the output gradient read in NHWC order, as
    stored or broadcast), as popnn's pooling gradient
    works in channel groups: a vertex per band of input rows of one sample reads its output
    gradient rows and input rows as runs of whole pixels and writes ``dx`` stored channels
    innermost (the ReLU gradient after it reads it in place). A vertex per channel plane read
    those rows an element per channel-count apart and left ``dx`` plane by plane (NCHW)."""
    n, c, h, w = in_shape
    dx_nhwc = ctx.graph.add_variable(dtype, (n, h, w, c), name=f"{ctx.name}/dx")
    dx, dx_flat = dx_nhwc.transpose(0, 3, 1, 2), dx_nhwc.flatten()
    target = ctx.graph.target
    want = -(-target.num_tiles * target.workers_per_tile // n)
    rows = max(1, min(g.OH, want))
    bounds = (np.arange(rows + 1) * g.OH) // rows
    starts = [0] + [min(g.H, max(0, o * g.sh - g.ph)) for o in bounds[1:-1].tolist()] + [g.H]
    # channel groups (whole vectors) where the row bands leave workers idle
    groups = max(1, min(c // 4, -(-want // rows)))
    chans = np.unique(np.minimum(c, (np.arange(groups + 1) * c // groups + 3) // 4 * 4)).tolist()
    samples = np.arange(n)
    ref, ref_rows = (x_flat, g.H) if x_flat is not None else (dy_flat, g.OH)
    cs = ctx.compute_set()
    codelet = C.group_pool_grad_codelet(dtype, mode)
    for a, b in zip(starts[:-1], starts[1:], strict=True):
        if b <= a:
            continue
        oa = max(0, (a + g.ph - g.kh) // g.sh + 1)
        ob = min(g.OH, (b - 1 + g.ph) // g.sh + 1)
        mid = (a + b - 1) // 2 if x_flat is not None else (oa + ob - 1) // 2
        width = g.W if x_flat is not None else g.OW
        at = ((samples * ref_rows + mid) * width + width // 2) * c + c // 2
        tiles = ctx.graph.resolved_mapping(dtype).tiles_of(ref.offset + at * ref.strides[0]).astype(np.int64)
        ctx.graph.set_tile_mappings(dx_nhwc[:, a:b], tiles)
        for c0, c1 in zip(chans[:-1], chans[1:], strict=True):
            fields = {"dy": _pixels(dy_flat, c, g.OH * g.OW, oa * g.OW, (ob - oa) * g.OW, c0, c1, n),
                      "dx": _pixels(dx_flat, c, g.H * g.W, a * g.W, (b - a) * g.W, c0, c1, n),
                      "dx_row0": a, "C": c1 - c0, **g.params(oa * g.sh - g.ph)}
            if x_flat is not None:
                r0, r1 = g.input_rows(oa, ob)
                fields["x"] = _pixels(x_flat, c, g.H * g.W, r0 * g.W, (r1 - r0) * g.W, c0, c1, n)
            ctx.graph.add_vertices(cs, codelet, fields, tiles)
    ctx.execute(cs)
    return dx


def _pixels(flat: Tensor, c: int, per_sample: int, p0: int, count: int, c0: int, c1: int, n: int) -> Tensor:
    """Each sample's pixels ``[p0, p0 + count)``, channels ``[c0, c1)``, of a pixel-major 1-D view
    (``c`` channels a pixel), as ``(n, count * (c1 - c0))`` vertex rows: one strided view."""
    st = flat.strides[0]
    block = Tensor(flat.graph, flat.dtype, (n, count, c1 - c0), flat.offset + (p0 * c + c0) * st,
                   (per_sample * c * st, c * st, st))
    return block.reshape(n, count * (c1 - c0))


def max_pool_grad(graph: Graph, x: Tensor, grad_out: Tensor, prog: Any, *, kernel: Any,
                  stride: Any = None, padding: Any = 0, name: str = "",
                  options: Mapping[str, Any] | None = None) -> Tensor:
    """Input gradient of :func:`max_pool`: each output's gradient goes to its window's maximum,
    the first one in row-major order on ties (a NaN wins over numbers), as torch does; gradients
    of overlapping windows add up (fp32). Each vertex owns a band of input rows. No options.

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops import nn
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=4))
    >>> x = g.add_variable(sp.float32, (1, 1, 4), name="x")
    >>> dy = g.add_variable(sp.float32, (1, 1, 2), name="dy")
    >>> sp.ops.map_linearly(g, x); sp.ops.map_linearly(g, dy)
    >>> prog = P.Sequence(); dx = nn.max_pool_grad(g, x, dy, prog, kernel=2)
    >>> eng = sp.Engine(g, [prog]); eng.write_tensor(x, [[[1, 5, 2, 2]]]); eng.write_tensor(dy, [[[1, 2]]])
    >>> eng.run(0); eng.read_tensor(dx).tolist()
    [[[0.0, 1.0, 2.0, 0.0]]]
    """
    ctx, _ = _start(graph, prog, "max_pool_grad", name, options, x, grad_out)
    _check_float(ctx, x)
    g = _pool_geometry(ctx, x.shape, kernel, stride, padding)
    if grad_out.shape != g.out_shape or grad_out.dtype != x.dtype:
        raise ctx.error(f"grad_out {grad_out.name} {grad_out.shape} ({grad_out.dtype}) must have the "
                        f"pooled shape {g.out_shape} and {x.name}'s dtype {x.dtype}")
    return _pool_grad(ctx, g, x, grad_out, PoolMode.MAX, x.shape)


def avg_pool_grad(graph: Graph, grad_out: Tensor, prog: Any, *, input_shape: Sequence[int],
                  kernel: Any, stride: Any = None, padding: Any = 0, count_include_pad: bool = True,
                  name: str = "", options: Mapping[str, Any] | None = None) -> Tensor:
    """Input gradient of :func:`avg_pool` for input of ``input_shape``: each output's gradient
    spread evenly over its window. No options.

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops import nn
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=4))
    >>> dy = g.add_variable(sp.float32, (1, 1, 2), name="dy"); sp.ops.map_linearly(g, dy)
    >>> prog = P.Sequence(); dx = nn.avg_pool_grad(g, dy, prog, input_shape=(1, 1, 4), kernel=2)
    >>> eng = sp.Engine(g, [prog]); eng.write_tensor(dy, [[[2, 4]]]); eng.run(0)
    >>> eng.read_tensor(dx).tolist()
    [[[1.0, 1.0, 2.0, 2.0]]]
    """
    ctx, _ = _start(graph, prog, "avg_pool_grad", name, options, grad_out)
    _check_float(ctx, grad_out)
    shape = tuple(int(d) for d in input_shape)
    g = _pool_geometry(ctx, shape, kernel, stride, padding)
    if grad_out.shape != g.out_shape:
        raise ctx.error(f"grad_out {grad_out.name} {grad_out.shape} must have the pooled shape "
                        f"{g.out_shape} of input {shape}")
    mode = PoolMode.AVG if count_include_pad else PoolMode.AVG_EXCLUDE_PAD
    return _pool_grad(ctx, g, None, grad_out, mode, shape)
