"""Convolutions (poplin's Convolution): forward, input gradient and weight update, 1-D and 2-D.

A convolution is planned and run as a grouped matmul (ipu-facts.md §4): for conv group ``g``,
the output ``[N*Ho*Wo, Og]`` is the product of the im2col matrix ``[N*Ho*Wo, Cg*kh*kw]`` (batch
and output field are the matmul's M, input channels and kernel its K) and the weights
``[Cg*kh*kw, Og]`` (out channels its N). The im2col matrix is materialised: ``Copy`` programs
gather each kernel position's input window into the column slabs the plan wants (K blocks hold
whole kernels, so every slab is one strided view of the padded input). The copies are real
exchange and on-tile work, so the cost model and the memory plan see what this lowering costs
(more than poplin's in-place AMP over the input field: the input is replicated ``kh * kw``
times).

The result of ``conv`` is a view ``[N, O, Ho, Wo]`` of the matmul's output, stored with channels
innermost (NHWC); with ``groups > 1`` the view is indexed.

The training passes are convolutions too, as in torch's autograd:

* ``conv_input_grad``: the output gradient, dilated by the stride and padded, convolved with the
  flipped, transposed weights;
* ``conv_weight_grad``: ``dW[g] = dY[g] . im2col(x)[g]`` over batch and output field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from softipu.dtypes import DType, float32
from softipu.graph import program as P
from softipu.graph.graph import Graph
from softipu.graph.tensor import Tensor
from softipu.ops._conv_windows import (
    _run_windows,
    _windows_no_larger,
    _windows_readable,
)
from softipu.ops._matmul_blocks import _transposed_into_slabs, _width_runs, k_grid
from softipu.ops.common import OpContext, tile_regions
from softipu.ops.indexing.fills import zero as zero_fill
from softipu.ops.mapping import map_linearly
from softipu.ops.matmul import (
    _Blocks,
    _Grid,
    _grouped,
    _Operand,
    _options,
    _plan,
    _PlanContext,
    _slab_variable,
    _slab_view,
    _Spec,
)
from softipu.ops.planner import Plan
from softipu.ops.rearrange import is_column_major, pieces_per_block, transpose_into_slabs

__all__ = ["conv", "conv_input_grad", "conv_weight_grad", "conv_output_shape", "create_conv_weights"]

IntOrPair = int | Sequence[int]


# -- public API --------------------------------------------------------------------------------
def conv(graph: Graph, x: Tensor, w: Tensor, prog: P.Sequence, *, stride: IntOrPair = 1,
         padding: IntOrPair = 0, dilation: IntOrPair = 1, groups: int = 1, name: str = "",
         options: Mapping[str, Any] | None = None) -> Tensor:
    """``torch.nn.functional.conv2d`` (or ``conv1d``): ``x [N, C, H, W]`` with ``w [O, C/groups,
    kh, kw]`` (``[N, C, L]`` and ``[O, C/groups, k]`` in 1-D). Returns ``[N, O, Ho, Wo]``.

    ``stride``, ``padding`` (zeros) and ``dilation`` are an int or one per spatial dimension.
    Options as :func:`softipu.ops.matmul.matmul` (``availableMemoryProportion``,
    ``partialsType``).

    >>> import numpy as np, softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops.conv import conv
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=4))
    >>> x = g.add_variable(sp.float32, (1, 1, 3, 3), name="x"); sp.ops.map_linearly(g, x)
    >>> w = g.add_variable(sp.float32, (1, 1, 2, 2), name="w"); sp.ops.map_linearly(g, w)
    >>> prog = P.Sequence()
    >>> y = conv(g, x, w, prog)
    >>> eng = sp.Engine(g, [prog])
    >>> eng.write_tensor(x, np.arange(9).reshape(1, 1, 3, 3)); eng.write_tensor(w, np.ones((1, 1, 2, 2)))
    >>> eng.run(0); eng.read_tensor(y)
    array([[[[ 8., 12.],
             [20., 24.]]]], dtype=float32)
    """
    ctx = OpContext.start(graph, prog, "conv", name, x, w)
    geo = _Geometry.of(ctx, x.shape, w.shape, x.dtype, w.dtype, stride, padding, dilation, groups)
    opts = _options(ctx, options, x.dtype)
    xp = _padded(ctx, geo.as_2d(x), geo.ph, geo.pw, geo.ph, geo.pw, windows=geo.kh * geo.kw > 1)
    out = _conv_matmul(ctx, xp, _weight_matrix(geo.as_2d_weight(w), geo.groups), geo.inner(), opts)
    return geo.unflatten(out)


def conv_input_grad(graph: Graph, dy: Tensor, w: Tensor, prog: P.Sequence, *,
                    input_shape: Sequence[int], stride: IntOrPair = 1, padding: IntOrPair = 0,
                    dilation: IntOrPair = 1, groups: int = 1, name: str = "",
                    options: Mapping[str, Any] | None = None) -> Tensor:
    """The gradient of ``conv``'s input, ``dx [N, C, H, W]`` of ``input_shape``, from the
    output gradient ``dy`` and the weights (torch's conv backward for the input)."""
    ctx = OpContext.start(graph, prog, "conv_input_grad", name, dy, w)
    geo = _Geometry.of(ctx, tuple(input_shape), w.shape, dy.dtype, w.dtype, stride, padding,
                       dilation, groups)
    geo.check_output(ctx, dy.shape, "dy")
    opts = _options(ctx, options, dy.dtype)
    # dx = conv(dilate(dy, stride) padded by d(k-1)-p (more at the high end for the rows the
    # forward stride skipped), flip(w)^T, dilation d).
    lo_h, lo_w = geo.dh * (geo.kh - 1) - geo.ph, geo.dw * (geo.kw - 1) - geo.pw
    hi_h = lo_h + (geo.h + 2 * geo.ph - geo.dh * (geo.kh - 1) - 1) % geo.sh
    hi_w = lo_w + (geo.w + 2 * geo.pw - geo.dw * (geo.kw - 1) - 1) % geo.sw
    dyp = _dilated_padded(ctx, geo.as_2d_output(dy), (geo.sh, geo.sw), (lo_h, lo_w), (hi_h, hi_w))
    w5 = geo.as_2d_weight(w).reshape(geo.groups, geo.og, geo.cg, geo.kh, geo.kw)
    flipped = w5.reverse(3).reverse(4).transpose(0, 3, 4, 1, 2)  # (G, kh, kw, Og, Cg)
    wmat = flipped.reshape(geo.groups, geo.kh * geo.kw * geo.og, geo.cg)
    inner = _Inner(geo.n, geo.groups, geo.og, geo.cg, geo.kh, geo.kw, 1, 1, geo.dh, geo.dw,
                   geo.h, geo.w)
    out = _conv_matmul(ctx, dyp, wmat, inner, opts)
    return geo.unflatten_input(out)


def conv_weight_grad(graph: Graph, dy: Tensor, x: Tensor, prog: P.Sequence, *,
                     weight_shape: Sequence[int], stride: IntOrPair = 1, padding: IntOrPair = 0,
                     dilation: IntOrPair = 1, groups: int = 1, name: str = "",
                     options: Mapping[str, Any] | None = None) -> Tensor:
    """The gradient of ``conv``'s weights, ``dw`` of ``weight_shape``, from the output gradient
    ``dy`` and the input ``x`` (torch's conv backward for the weight)."""
    ctx = OpContext.start(graph, prog, "conv_weight_grad", name, dy, x)
    geo = _Geometry.of(ctx, x.shape, tuple(weight_shape), x.dtype, dy.dtype, stride, padding,
                       dilation, groups)
    geo.check_output(ctx, dy.shape, "dy")
    opts = _options(ctx, options, x.dtype)
    xp = _padded(ctx, geo.as_2d(x), geo.ph, geo.pw, geo.ph, geo.pw, windows=geo.kh * geo.kw > 1)
    inner = geo.inner()
    hw = geo.ho * geo.wo
    dy4 = geo.as_2d_output(dy).reshape(geo.n, geo.groups, geo.og, hw)
    dy_mat = dy4.transpose(1, 2, 0, 3).reshape(geo.groups, geo.og, geo.n * hw)
    k = geo.cg * geo.kh * geo.kw
    spec = _Spec((geo.groups,), geo.og, inner.m, k, x.dtype, (geo.groups,), (geo.groups,),
                 (geo.groups, geo.og, k), False, False)
    im2col = _Im2Col(xp, inner)
    out = _grouped(ctx, _Operand(dy_mat, np.arange(geo.groups)), im2col, spec, opts,
                   grains=(1, 1, _conv_grains(inner)[1]), allow_swap=False)
    out = _like_weights(ctx, geo, opts, out.transpose(0, 2, 1))  # [G, kh*kw*Cg, Og]
    out = out.transpose(0, 2, 1).reshape(geo.o, geo.kh, geo.kw, geo.cg).transpose(0, 3, 1, 2)
    return out.reshape(tuple(weight_shape))


def _like_weights(ctx: OpContext, geo: _Geometry, opts: dict[str, Any], dw: Tensor) -> Tensor:
    """The weight deltas ``[G, kh*kw*Cg, Og]`` (stored ``[G, Og, K]``, the weight-update matmul's
    row-major output) re-laid out as :func:`create_conv_weights` lays out the weights: the column
    slabs of the forward plan's B operand, each piece on the tile that holds the weights' piece.
    popops' scaledAdd regroups its second operand like the first before the update
    (lib/popops/ScaledAdd.cpp: ``regroupIfBeneficial(graph, B, A, ...)``, as poplin's weight
    update ``scaledAddTo(weights, deltas, -lr)`` runs it): whole runs of the deltas exchanged, then
    transposed on the tile (``Transpose2d``), so the update reads both where they lie. (Left
    transposed, the optimizer's update gathered the deltas an element at a time: 1.08 M exchange
    regions, 23% of a ResNet-50 1024-channel bottleneck's at batch 18.)"""
    inner = geo.inner()
    spec = _conv_spec(inner, dw.dtype)
    pl, _ = _plan(spec, opts, ctx.graph.target, _forward_grains(inner, spec, opts, ctx.graph.target),
                  allow_swap=False)
    q = pl.problem
    rows, cols = k_grid(pl), _Grid.of(q.n, pl.blocks[2])
    spread, tallest = pl.m_split, int(rows.sizes.max())
    if not pl.fits or not is_column_major(dw) or tallest // pieces_per_block(tallest, spread) < 2:
        return dw
    groups = np.arange(geo.groups)
    slab = _transposed_into_slabs(ctx, pl, _Operand(dw, groups), rows, cols, "b", spread).tensor
    var, _ = _slab_variable(ctx, pl, dw.dtype, geo.groups, rows, cols, "b", groups, name=f"{ctx.name}/dw")
    if not _same_regions(ctx.graph, slab, var):  # its pieces cut at other rows: moved in runs
        ctx.prog.add(P.Copy(slab, var))
        slab = var
    return _slab_view(slab, geo.groups, rows, cols)


def _same_regions(graph: Graph, a: Tensor, b: Tensor) -> bool:
    """Whether two flat tensors of one size are cut over the tiles alike."""
    ra, rb = tile_regions(graph, a), tile_regions(graph, b)
    return all(np.array_equal(x, y) for x, y in zip(ra, rb, strict=True))


def create_conv_weights(graph: Graph, dtype: DType, input_shape: Sequence[int], weight_shape: Sequence[int],
                        *, stride: IntOrPair = 1, padding: IntOrPair = 0, dilation: IntOrPair = 1,
                        groups: int = 1, name: str = "",
                        options: Mapping[str, Any] | None = None) -> Tensor:
    """A new weights variable ``[O, C/groups, kh, kw]`` laid out and mapped as ``conv``'s plan for
    these arguments wants it (poplin's ``createWeights``: the convolution then uses the weights in
    place instead of re-laying them out on every call, poplibs include/poplin/Convolution.hpp)."""
    ctx = _PlanContext("create_conv_weights")
    geo = _Geometry.of(ctx, tuple(input_shape), tuple(weight_shape), dtype, dtype, stride, padding,
                       dilation, groups)
    opts = _options(ctx, options, dtype)
    inner = geo.inner()
    spec = _conv_spec(inner, dtype)
    grains = _forward_grains(inner, spec, opts, graph.target)
    pl, _ = _plan(spec, opts, graph.target, grains, allow_swap=False)
    q = pl.problem
    rows, cols = k_grid(pl), _Grid.of(q.n, pl.blocks[2])
    fake = OpContext(graph, P.Sequence(), "create_conv_weights", name or "create_conv_weights")
    var, _ = _slab_variable(fake, pl, dtype, geo.groups, rows, cols, "b", np.arange(geo.groups),
                            name=name or "create_conv_weights")
    wmat = _slab_view(var, geo.groups, rows, cols)  # [G, kh*kw*Cg, Og]
    w4 = wmat.transpose(0, 2, 1).reshape(geo.o, geo.kh, geo.kw, geo.cg).transpose(0, 3, 1, 2)
    return w4.reshape(tuple(weight_shape))


def _conv_spec(inner: _Inner, dtype: DType) -> _Spec:
    return _Spec((inner.groups,), inner.m, inner.k, inner.og, dtype, (inner.groups,),
                 (inner.groups,), (inner.groups, inner.m, inner.og), False, False)


def _conv_grains(inner: _Inner) -> tuple[int, int, int]:
    """The plan's grains: K blocks of channel blocks dividing ``Cg``; any K block for a 1x1."""
    return (1, 1, 1) if (inner.kh, inner.kw) == (1, 1) else (1, math.gcd(inner.cg, _K_GRAIN), 1)


def _row_grains(inner: _Inner, spec: _Spec, opts: dict[str, Any], target: Any) -> tuple[int, int, int]:
    """:func:`_conv_grains`, with M blocks of whole output rows for a convolution with a window
    where that plan is no slower (poplin splits the output field by its dimensions,
    ``Partition::batchSplit`` and a ``fieldSplit`` per spatial dimension in
    lib/poplin/ConvPlan.hpp, so a tile's field is a box of rows, not a flat run of pixels). The
    block starts then step evenly within a sample and the window vertices' input ranges are of
    one length, so they join in a few strided bulk calls (fewer vertex groups to compile); taken
    only where free, since rows are a coarser grain (ResNet-50 fp16 b90 forced to rows: 12,065 ->
    10,904 img/s)."""
    grains = _conv_grains(inner)
    if (inner.kh, inner.kw) == (1, 1) or inner.m <= inner.wo:
        return grains
    rows = (inner.wo, grains[1], grains[2])
    free, _ = _plan(spec, opts, target, grains, allow_swap=False)
    by_rows, _ = _plan(spec, opts, target, rows, allow_swap=False)
    return rows if by_rows.fits and by_rows.cycles <= free.cycles else grains


def _forward_grains(inner: _Inner, spec: _Spec, opts: dict[str, Any], target: Any) -> tuple[int, int, int]:
    """:func:`_row_grains`, with N blocks of whole output rows (every output channel of a pixel on
    one tile) where that plan fits and costs no more than the best plan with its output re-laid.

    A plan that splits N leaves each pixel's channels on several tiles of a row-major output
    (``[G, M, O]``, read as NHWC): its AMP cannot write whole rows (a second compute set moves
    each row's pieces, one vertex per row and N block), and the ops that follow, which map whole
    pixels (bias, batch norm, relu, add, pooling), receive their rows from every tile holding a
    piece. poplin's channel-grouped layout has neither cost; here the planner weighs it, priced as
    poplin prices rearranging a tensor between layouts (lib/poplin/ConvModel.cpp,
    addTransformCycleEstimate: the bytes over the tiles used, exchanged at
    ``target.exchange_bytes_per_cycle``)."""
    if spec.m * spec.n * spec.k == 0:
        return _conv_grains(inner)
    grains = _row_grains(inner, spec, opts, target)
    free, _ = _plan(spec, opts, target, grains, allow_swap=False)
    if free.n_split == 1:
        return grains
    whole = (grains[0], grains[1], inner.og)
    rows, _ = _plan(spec, opts, target, whole, allow_swap=False)
    q = free.problem
    relayout = int(np.ceil(q.groups * q.m * q.n * q.out_dtype.itemsize / max(free.tiles_used, 1)
                           / target.exchange_bytes_per_cycle))
    return whole if rows.fits and rows.cycles <= free.cycles + relayout else grains


# The K grain of a convolution with a window: channel blocks that divide Cg (so a slab cut inside
# a kernel position is one copy, _Im2Col._split) as fine as poplin's AMP needs [D]: 64 channels.
_K_GRAIN = 64


def conv_output_shape(input_shape: Sequence[int], weight_shape: Sequence[int], *,
                      stride: IntOrPair = 1, padding: IntOrPair = 0, dilation: IntOrPair = 1,
                      groups: int = 1) -> tuple[int, ...]:
    """The shape ``conv`` returns for these arguments."""
    ctx = _PlanContext("conv_output_shape")
    geo = _Geometry.of(ctx, tuple(input_shape), tuple(weight_shape), float32, float32, stride,
                       padding, dilation, groups)
    return geo.output_shape


# -- geometry ----------------------------------------------------------------------------------
def _pair(ctx: Any, value: IntOrPair, what: str, dims: int, minimum: int) -> tuple[int, int]:
    try:
        vals = (value,) if isinstance(value, (int, np.integer)) else tuple(value)
    except TypeError:
        vals = ()
    if len(vals) == 1:
        vals = vals * dims
    if len(vals) != dims or any(not isinstance(v, (int, np.integer)) or v < minimum for v in vals):
        raise ctx.error(f"{what} must be an int >= {minimum} or {dims} of them, got {value!r}")
    vals = tuple(int(v) for v in vals)
    return (minimum, vals[0]) if dims == 1 else (vals[0], vals[1])


@dataclass(frozen=True, slots=True)
class _Geometry:
    """A convolution's sizes, as 2-D (a 1-D convolution has H = kh = 1)."""

    one_d: bool
    n: int
    c: int
    h: int
    w: int
    o: int
    kh: int
    kw: int
    sh: int
    sw: int
    ph: int
    pw: int
    dh: int
    dw: int
    groups: int

    @classmethod
    def of(cls, ctx: Any, x_shape: tuple[int, ...], w_shape: tuple[int, ...], x_dtype: DType,
           w_dtype: DType, stride: IntOrPair, padding: IntOrPair, dilation: IntOrPair,
           groups: int) -> _Geometry:
        if x_dtype != w_dtype:
            raise ctx.error(f"the tensors are {x_dtype} and {w_dtype}; cast one so both match")
        if x_dtype.name not in ("float16", "float32"):
            raise ctx.error(f"dtype {x_dtype} is not supported; convolutions take float16 or float32")
        if len(x_shape) not in (3, 4) or len(w_shape) != len(x_shape):
            raise ctx.error(f"input {x_shape} and weights {w_shape}: need [N, C, L] with [O, C/groups, k] "
                            "or [N, C, H, W] with [O, C/groups, kh, kw]")
        one_d = len(x_shape) == 3
        dims = 1 if one_d else 2
        if not isinstance(groups, (int, np.integer)) or groups < 1:
            raise ctx.error(f"groups must be an int >= 1, got {groups!r}")
        sh, sw = _pair(ctx, stride, "stride", dims, 1)
        ph, pw = _pair(ctx, padding, "padding", dims, 0)
        dh, dw = _pair(ctx, dilation, "dilation", dims, 1)
        if one_d:
            sh, ph, dh = 1, 0, 1
        xs = (x_shape[0], x_shape[1], 1, x_shape[2]) if one_d else x_shape
        ws = (w_shape[0], w_shape[1], 1, w_shape[2]) if one_d else w_shape
        geo = cls(one_d, xs[0], xs[1], xs[2], xs[3], ws[0], ws[2], ws[3], sh, sw, ph, pw, dh, dw,
                  int(groups))
        geo._check(ctx, x_shape, w_shape)
        return geo

    def _check(self, ctx: Any, x_shape: tuple[int, ...], w_shape: tuple[int, ...]) -> None:
        if self.c % self.groups or self.o % self.groups:
            raise ctx.error(f"input {x_shape} has {self.c} channels and weights {w_shape} {self.o} "
                            f"output channels; both must be divisible by groups={self.groups}")
        if w_shape[1] != self.c // self.groups:
            raise ctx.error(f"weights {w_shape} have {w_shape[1]} input channels per group but input "
                            f"{x_shape} with groups={self.groups} has {self.c // self.groups}")
        if self.ho < 1 or self.wo < 1:
            raise ctx.error(f"the kernel {w_shape[2:]} (dilated) is larger than the padded input "
                            f"{x_shape[2:]}: no output positions")

    @property
    def cg(self) -> int:
        return self.c // self.groups

    @property
    def og(self) -> int:
        return self.o // self.groups

    @property
    def ho(self) -> int:
        return (self.h + 2 * self.ph - self.dh * (self.kh - 1) - 1) // self.sh + 1

    @property
    def wo(self) -> int:
        return (self.w + 2 * self.pw - self.dw * (self.kw - 1) - 1) // self.sw + 1

    @property
    def output_shape(self) -> tuple[int, ...]:
        if self.one_d:
            return (self.n, self.o, self.wo)
        return (self.n, self.o, self.ho, self.wo)

    def check_output(self, ctx: Any, shape: tuple[int, ...], what: str) -> None:
        if tuple(shape) != self.output_shape:
            raise ctx.error(f"{what} has shape {tuple(shape)} but the convolution's output is "
                            f"{self.output_shape}")

    def as_2d(self, x: Tensor) -> Tensor:
        return x.reshape(self.n, self.c, 1, self.w) if self.one_d else x

    def as_2d_weight(self, w: Tensor) -> Tensor:
        return w.reshape(self.o, self.cg, 1, self.kw) if self.one_d else w

    def as_2d_output(self, y: Tensor) -> Tensor:
        return y.reshape(self.n, self.o, 1, self.wo) if self.one_d else y

    def inner(self) -> _Inner:
        return _Inner(self.n, self.groups, self.cg, self.og, self.kh, self.kw, self.sh, self.sw,
                      self.dh, self.dw, self.ho, self.wo)

    def unflatten(self, out: Tensor) -> Tensor:
        """``[G, N*Ho*Wo, Og]`` as ``[N, O, Ho, Wo]`` (``[N, O, Wo]`` in 1-D)."""
        y = _nchw(out, self.n, self.ho, self.wo)
        return y.reshape(self.output_shape)

    def unflatten_input(self, out: Tensor) -> Tensor:
        y = _nchw(out, self.n, self.h, self.w)
        return y.reshape((self.n, self.c, self.w) if self.one_d else (self.n, self.c, self.h, self.w))


def _nchw(out: Tensor, n: int, h: int, w: int) -> Tensor:
    g_, _, og = out.shape
    return out.reshape(g_, n, h, w, og).transpose(1, 0, 4, 2, 3).reshape(n, g_ * og, h, w)


@dataclass(frozen=True, slots=True)
class _Inner:
    """The unpadded convolution the matmul computes: input channels per group ``cg`` from an
    already padded input, ``og`` outputs per group, output field ``ho x wo``."""

    n: int
    groups: int
    cg: int
    og: int
    kh: int
    kw: int
    sh: int
    sw: int
    dh: int
    dw: int
    ho: int
    wo: int

    @property
    def m(self) -> int:
        return self.n * self.ho * self.wo

    @property
    def k(self) -> int:
        return self.cg * self.kh * self.kw


# -- building blocks -----------------------------------------------------------------------------
def _weight_matrix(w: Tensor, groups: int) -> Tensor:
    """``[O, Cg, kh, kw]`` weights as ``[G, kh*kw*Cg, Og]`` (K in im2col's order)."""
    o, cg, kh, kw = w.shape
    return w.transpose(0, 2, 3, 1).reshape(groups, o // groups, kh * kw * cg).transpose(0, 2, 1)


def _conv_matmul(ctx: OpContext, xp: Tensor, wmat: Tensor, inner: _Inner,
                 opts: dict[str, Any]) -> Tensor:
    """``[G, N*Ho*Wo, Og]`` = im2col(xp) . wmat, planned so K blocks hold whole kernels."""
    spec = _conv_spec(inner, xp.dtype)
    rhs = _Operand(wmat, np.arange(inner.groups))
    grains = _forward_grains(inner, spec, opts, ctx.graph.target)
    direct = _pointwise_matrix(xp, inner)
    if direct is None and spec.m * spec.n and _windows_readable(xp, inner):
        pl, swapped = _plan(spec, opts, ctx.graph.target, grains, allow_swap=False)
        k_ok = pl.k_split == 1 or WINDOWS_FOR_K_SPLIT
        if pl.fits and not swapped and pl.k_serial == 1 and k_ok and _windows_no_larger(pl, xp, inner):
            return _run_windows(ctx, pl, xp, rhs, inner)
    lhs = _Im2Col(xp, inner) if direct is None else _Operand(direct, np.arange(inner.groups))
    return _grouped(ctx, lhs, rhs, spec, opts, grains=grains, allow_swap=False)


# Whether plans that split K (poplin's inChanSplit.parallel) read their windows in place, one
# ConvWindow vertex per K range, as poplin does (it never builds an im2col matrix). On: ResNet-50
# fp16 priced 5-6% faster with up to 73 KiB less on the fullest tile; the fast engine runs a K
# range's windows as one GEMM (codelets/nn/conv_groups.py: as many small GEMMs, ONNX ResNet-50's
# later call had doubled).
WINDOWS_FOR_K_SPLIT = True


def _pointwise_matrix(xp: Tensor, inner: _Inner) -> Tensor | None:
    """A 1x1, stride-1 convolution's im2col matrix ``[G, N*H*W, Cg]`` as a view of its input,
    or None. Its im2col is the input itself: poplin runs a 1x1 convolution's AMP straight over
    the input field (no window to gather), so no copy is made here either; the matmul uses the
    view in place where its blocks are contiguous (an input stored channels innermost, as every
    convolution's output is) or re-lays it out as any operand. (Materialised, each 1x1 layer
    copied its whole input once more per step; host work grew with the batch.)"""
    if (inner.kh, inner.kw, inner.sh, inner.sw) != (1, 1, 1, 1) or not xp.is_strided:
        return None
    n, c, h, w = xp.shape
    view = xp.transpose(0, 2, 3, 1).reshape(n * h * w, inner.groups, inner.cg).transpose(1, 0, 2)
    return view if view.is_strided else None


@dataclass(frozen=True, slots=True)
class _Im2Col:
    """The im2col matrix ``[G, N*Ho*Wo, kh*kw*Cg]`` of a padded input, built in column slabs.

    K runs kernel position by kernel position, channels innermost (``(kh, kw, Cg)``, the order of
    poplin's channel-grouped layouts), and each slab holds whole kernel positions, so every piece
    copied is a run of ``Cg`` channels contiguous on both sides when the input is stored channels
    innermost (as :func:`_padded` and every convolution's output are): a region per pixel and
    kernel position, not per element, for the exchange, its code and the compiler."""

    xp: Tensor  # [N, C, Hp, Wp], strided
    inner: _Inner

    def place(self, ctx: OpContext, pl: Plan, rows: _Grid, cols: _Grid, role: str) -> _Blocks:
        q = self.inner
        groups = np.arange(q.groups)
        var, starts = _slab_variable(ctx, pl, self.xp.dtype, q.groups, rows, cols, role, groups)
        kk = q.kh * q.kw
        if kk == 1:  # a strided 1x1: slabs of channels, a copy for the full ones and the tail
            self._channels(ctx, var, cols)
            return _Blocks(var, starts, False, groups)
        width = int(cols.sizes[0])
        alike = bool(np.all(cols.sizes == width))  # not a serial loop's K grid (last range narrower)
        if len(cols) == 1 or (alike and width == q.cg):  # one copy: one slab, or one a position
            self._copy(ctx, var, 0, kk, width // q.cg)
        elif alike and q.cg % width == 0:  # one copy: each kernel position over cg / width slabs
            self._split(ctx, var, width)
        else:
            ctx.prog.add(P.WriteUndef(var))  # written in pieces: dead until the first
            k0 = 0
            for w in cols.sizes.tolist():
                self._slab(ctx, var, k0, k0 + w)
                k0 += w
        return _Blocks(var, starts, False, groups)

    def _slab(self, ctx: OpContext, var: Tensor, k0: int, k1: int) -> None:
        """Copy the slab of K range ``[k0, k1)``: runs of whole kernel positions within a kernel
        row, and part of a position's channels at either end."""
        cg, kw = self.inner.cg, self.inner.kw
        k = k0
        while k < k1:
            p, c = divmod(k, cg)
            if c == 0 and k + cg <= k1:
                p_end = min((p // kw + 1) * kw, k1 // cg)
                self._piece(ctx, var, k0, k1 - k0, k - k0, p, p_end - p, 0, cg)
                k = p_end * cg
            else:
                c_end = min(cg, c + k1 - k)
                self._piece(ctx, var, k0, k1 - k0, k - k0, p, 1, c, c_end - c)
                k += c_end - c

    def _piece(self, ctx: OpContext, var: Tensor, k0: int, width: int, col: int, p: int, npos: int,
               c0: int, clen: int) -> None:
        """Positions ``[p, p + npos)`` (one kernel row), channels ``[c0, c0 + clen)``, into the slab
        that starts at K ``k0`` (``width`` wide), from its column ``col``."""
        q, x = self.inner, self.xp
        s_n, s_c, s_h, s_w = x.strides
        i, j = divmod(p, q.kw)
        src = Tensor(x.graph, x.dtype, (q.groups, npos, q.n, q.ho, q.wo, clen),
                     x.offset + i * q.dh * s_h + j * q.dw * s_w + c0 * s_c,
                     (q.cg * s_c, q.dw * s_w, s_n, q.sh * s_h, q.sw * s_w, s_c))
        dst = Tensor(var.graph, var.dtype, src.shape, var.offset + k0 * q.m + col,
                     (q.m * q.k, q.cg, q.ho * q.wo * width, q.wo * width, width, 1))
        ctx.prog.add(P.Copy(src, dst))

    def _split(self, ctx: OpContext, var: Tensor, width: int) -> None:
        """One copy when each kernel position fills ``cg / width`` slabs of ``width`` channels."""
        q, x = self.inner, self.xp
        s_n, s_c, s_h, s_w = x.strides
        m, parts = q.m, q.cg // width
        src = Tensor(x.graph, x.dtype, (q.groups, q.kh, q.kw, parts, q.n, q.ho, q.wo, width), x.offset,
                     (q.cg * s_c, q.dh * s_h, q.dw * s_w, width * s_c, s_n, q.sh * s_h, q.sw * s_w, s_c))
        dst = Tensor(var.graph, var.dtype, src.shape, var.offset,
                     (m * q.k, q.kw * parts * m * width, parts * m * width, m * width,
                      q.ho * q.wo * width, q.wo * width, width, 1))
        ctx.prog.add(P.Copy(src, dst))

    def _channels(self, ctx: OpContext, var: Tensor, cols: _Grid) -> None:
        q, x = self.inner, self.xp
        s_n, s_c, s_h, s_w = x.strides
        m, k = q.m, q.k
        runs = _width_runs(cols)  # slabs of one width: all but the last, and the last (or a loop's)
        pixel = (s_n, q.sh * s_h, q.sw * s_w)
        if len(runs) > 1:
            ctx.prog.add(P.WriteUndef(var))  # written in parts: dead until the first
        for c0, count, w in runs:
            src = Tensor(x.graph, x.dtype, (q.groups, count, q.n, q.ho, q.wo, w),
                         x.offset + c0 * s_c, (q.cg * s_c, w * s_c, *pixel, s_c))
            dst = Tensor(var.graph, var.dtype, src.shape, var.offset + c0 * m,
                         (m * k, m * w, q.ho * q.wo * w, q.wo * w, w, 1))
            ctx.prog.add(P.Copy(src, dst))

    def _copy(self, ctx: OpContext, var: Tensor, p0: int, p1: int, per: int) -> None:
        """Copy every kernel position in one go: slabs of ``per`` positions, ``per`` 1 or all."""
        q, x = self.inner, self.xp
        s_n, s_c, s_h, s_w = x.strides
        m, k, cg = q.m, q.k, q.cg
        width = per * cg
        # position p = (i, j): slab p // per, column (p % per) * cg
        pos = (m * cg * q.kw, m * cg) if per == 1 else (q.kw * cg, cg)
        src = Tensor(x.graph, x.dtype, (q.groups, q.kh, q.kw, q.n, q.ho, q.wo, cg), x.offset,
                     (q.cg * s_c, q.dh * s_h, q.dw * s_w, s_n, q.sh * s_h, q.sw * s_w, s_c))
        dst = Tensor(var.graph, var.dtype, src.shape, var.offset,
                     (m * k, *pos, q.ho * q.wo * width, q.wo * width, width, 1))
        ctx.prog.add(P.Copy(src, dst))


def _zero_fill(ctx: OpContext, var: Tensor) -> None:
    """Zero a padded buffer where it lives (popops ``zero``: a Fill vertex per contiguous region of
    each tile, nothing exchanged). The whole buffer, not its borders: a border column is one
    region per row (a vertex each), the whole buffer one region a tile; the interior is written
    over by the copy that follows. (poplin pads inside its worklists at no cost; copying borders
    from one constant on tile 0 cost an exchange region per element there: ResNet-50 fp16 b1 put
    4.9 MB of exchange code on tile 0 and 60% of its cycles in those copies.)"""
    zero_fill(ctx.graph, var, ctx.prog, name=f"{ctx.name}/pad")


def _nhwc_variable(ctx: OpContext, dtype: DType, shape: tuple[int, ...], suffix: str) -> Tensor:
    """A new ``[N, C, H, W]`` zeroed variable stored channels innermost (NHWC), mapped linearly."""
    n, c, h, w = shape
    var = ctx.graph.add_variable(dtype, (n, h, w, c), name=f"{ctx.name}/{suffix}")
    map_linearly(ctx.graph, var, grain_size=ctx.graph.target.vector_width(dtype.itemsize))
    _zero_fill(ctx, var)  # in storage order: one region a tile
    return var.transpose(0, 3, 1, 2)


def _padded(ctx: OpContext, x: Tensor, top: int, left: int, bottom: int, right: int,
            windows: bool = True) -> Tensor:
    """``x [N, C, H, W]`` with zero borders, as a strided tensor (``x`` itself when possible).
    ``windows``: the convolution reads windows larger than one pixel, so an NCHW input is read
    pixel by pixel and is regrouped channels innermost even when it needs no border. A 1x1
    kernel's unpadded input is left where it is: regrouping a small-spatial, many-channel input
    costs a region per channel on every tile (ResNet-50's 1x1 convolutions from ONNX: 627 KB of
    exchange code on one tile)."""
    padded = bool(top or left or bottom or right)
    if x.numel and (padded or windows) and _planes_innermost(x):
        x = _regrouped(ctx, x)
    if top == left == bottom == right == 0 and x.is_strided:
        return x
    n, c, h, w = x.shape
    var = _nhwc_variable(ctx, x.dtype, (n, c, h + top + bottom, w + left + right), "padded")
    if x.numel:
        # in storage order (channels innermost on both sides): a run per row, not per element
        inside = var[:, :, top:top + h, left:left + w]
        ctx.prog.add(P.Copy(x.transpose(0, 2, 3, 1), inside.transpose(0, 2, 3, 1)))
    return var


def _planes_innermost(x: Tensor) -> bool:
    """True for an ``[N, C, H, W]`` input stored plane by plane (NCHW, a host input's layout) with
    more than one channel: copied straight into channels-innermost storage, every element would be
    its own exchange region."""
    return (x.is_strided and x.shape[1] > 1 and x.shape[2] * x.shape[3] > 1
            and x.strides[3] == 1 and x.strides[2] == x.shape[3] and x.strides[1] == x.shape[2] * x.shape[3])


def _regrouped(ctx: OpContext, x: Tensor) -> Tensor:
    """``x [N, C, H, W]`` (NCHW) re-laid out channels innermost, as popops' ``regroupTensor`` and
    poplin's input rearrangement do it (lib/popops/Rearrange.cpp, lib/poplin/ConvUtil.cpp in
    graphcore/poplibs): each tile receives, per channel, one run of its pixels contiguous in the
    source, and ``Transpose2d`` vertices write them pixel by pixel on the tile
    (:func:`softipu.ops.rearrange.transpose_into_slabs`). A few regions a tile instead of one per
    element (ResNet-50's NCHW image into its first convolution at batch 16: 3,324 exchange regions
    on the fullest tile, growing with the batch)."""
    n, c, h, w = x.shape
    pixels, tiles = h * w, ctx.graph.num_tiles
    # Each sample's pixels in equal row blocks (the last shorter) spread over the chip: equal
    # blocks are one copy and one bulk vertex call each, whatever their number.
    height = -(-pixels // max(1, min(pixels, -(-tiles // n))))
    row_starts = np.arange(0, pixels, height)
    row_sizes = np.minimum(height, pixels - row_starts)
    blocks = row_starts.size

    def tile_of(g, rb, p, cb):
        return ((g * blocks + rb) * tiles) // (n * blocks) + 0 * (p + cb)

    planes = x.reshape(n, c, pixels).transpose(0, 2, 1)  # (N, pixels, C): column-major
    flat = transpose_into_slabs(ctx, planes, row_starts, row_sizes, np.array([0]), np.array([c]), 1,
                                tile_of, name=f"{ctx.name}/nhwc")
    return flat.reshape(n, h, w, c).transpose(0, 3, 1, 2)


def _dilated_padded(ctx: OpContext, dy: Tensor, stride: tuple[int, int], lo: tuple[int, int],
                    hi: tuple[int, int]) -> Tensor:
    """``dy`` with ``stride - 1`` zeros between elements and ``lo``/``hi`` zeros around (negative:
    cropped), as a strided tensor."""
    if stride == (1, 1) and min(lo + hi) >= 0:
        return _padded(ctx, dy, lo[0], lo[1], hi[0], hi[1])
    n, o, ho, wo = dy.shape
    size = [(d - 1) * s + 1 + a + b for d, s, a, b in zip((ho, wo), stride, lo, hi, strict=True)]
    var = _nhwc_variable(ctx, dy.dtype, (n, o, size[0], size[1]), "dilated")
    src_key, dst_key = [slice(None)] * 2, [slice(None)] * 2
    for d, s, a, length in zip((ho, wo), stride, lo, size, strict=True):
        u0 = -(a // s) if a < 0 else 0  # first dy row that lands inside
        u1 = min(d, (length - 1 - a) // s + 1)
        src_key.append(slice(u0, max(u0, u1)))
        dst_key.append(slice(a + u0 * s, a + u0 * s + (u1 - u0 - 1) * s + 1, s) if u1 > u0
                       else slice(0, 0))  # stop just past the last row: slices do not clamp
    src, dst = dy[tuple(src_key)], var[tuple(dst_key)]
    if src.numel:
        ctx.prog.add(P.Copy(src.transpose(0, 2, 3, 1), dst.transpose(0, 2, 3, 1)))
    return var
