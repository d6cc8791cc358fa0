"""Layer, group and batch norm, and their gradients."""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from softipu.codelets import nn as C
from softipu.dtypes import DType, as_dtype, float16, float32
from softipu.graph.graph import ComputeSet, Graph
from softipu.graph.tensor import Tensor
from softipu.ops.common import OpContext, rows_of
from softipu.ops.mapping import map_linearly
from softipu.ops.nn._common import (
    PLANE_VERTEX_MIN_ELEMENTS,
    ROW_VERTEX_ELEMENTS,
    _add_blocks,
    _add_rows,
    _block_output,
    _blocks_of,
    _by_value,
    _cast,
    _check_float,
    _check_same,
    _check_vector,
    _constant,
    _map_pieces,
    _output_like,
    _plan_rows,
    _row_output,
    _start,
    _sum_rows,
    _tiles_at,
    _variable,
    _vertex_output,
)
from softipu.ops.nn.norm_pieces import layer_norm_pieces
from softipu.ops.nn.norm_pixels import Pixels, plan_pixels

__all__ = ["layer_norm", "layer_norm_grad", "group_norm", "group_norm_grad", "batch_norm",
           "batch_norm_training", "batch_norm_grad"]

# -- layer norm and group norm -----------------------------------------------------------------
def layer_norm(graph: Graph, x: Tensor, weight: Tensor | None, bias: Tensor | None, prog: Any, *,
               normalized_shape: Sequence[int] | None = None, eps: float = 1e-5, name: str = "",
               options: Mapping[str, Any] | None = None,
               stats_dtype: Any = None) -> tuple[Tensor, Tensor, Tensor]:
    """Layer norm over the last dims (``normalized_shape``; default: ``weight``'s shape, else the
    last dim): ``(x - mean) / sqrt(var + eps) * weight + bias``. ``weight``/``bias`` may be None.
    Returns ``(out, mean, inv_std)``; the statistics, computed in fp32, have shape
    ``x.shape[:-d]`` and the dtype ``stats_dtype`` (default fp32, what :func:`layer_norm_grad`
    takes; float16 rounds them to nearest where they are written, as popnn's layer norm returns
    the statistics in the activations' type: poplin ``normStatistics``, lib/poplin/Norms.cpp,
    reduces the mean into ``acts.elementType()`` and ``computeInvStdDev`` writes that type).
    Each vertex owns whole rows. No options.

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops import nn
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=4))
    >>> x = g.add_variable(sp.float32, (1, 2), name="x"); sp.ops.map_linearly(g, x)
    >>> prog = P.Sequence(); y, mean, inv_std = nn.layer_norm(g, x, None, None, prog, eps=0.0)
    >>> eng = sp.Engine(g, [prog]); eng.write_tensor(x, [[1, 3]]); eng.run(0)
    >>> eng.read_tensor(y).tolist(), eng.read_tensor(mean).tolist()
    ([[-1.0, 1.0]], [2.0])
    """
    ctx, _ = _start(graph, prog, "layer_norm", name, options, x, weight, bias)
    shape = _normalized_shape(ctx, x, weight, normalized_shape)
    _check_float(ctx, x)
    _check_vector(ctx, weight, shape, "weight")
    _check_vector(ctx, bias, shape, "bias")
    stats = _stats_dtype(ctx, stats_dtype)
    n = math.prod(shape)
    rows = x.numel // n
    x2 = x.reshape(rows, n)
    lead = x.shape[: x.ndim - len(shape)]
    if rows == 0:
        return (_variable(ctx, x.dtype, x.shape, "out"), _variable(ctx, stats, lead, "mean"),
                _variable(ctx, stats, lead, "inv_std"))
    if n <= ROW_VERTEX_ELEMENTS and _rows_scattered(x2):  # rows stored innermost: whole rows first
        x2 = _rows_regrouped(ctx, x2, "x/rows")
    if n > ROW_VERTEX_ELEMENTS or _rows_scattered(x2):  # statistics where the elements live
        split = _layer_norm_split if _rows_scattered(x2) else layer_norm_pieces
        out, mean, inv_std = split(ctx, x, x2, weight, bias, float(eps))
        mean, inv_std = (_as_stats(ctx, t, stats, s) for t, s in ((mean, "mean"), (inv_std, "inv_std")))
        return out, mean.reshape(lead), inv_std.reshape(lead)
    wdtype = (weight if weight is not None else bias if bias is not None else x).dtype
    weight = weight if weight is not None else _constant(ctx, wdtype, shape, 1.0, "ones")
    bias = bias if bias is not None else _constant(ctx, wdtype, shape, 0.0, "zeros")
    plan = _plan_rows(ctx, x2)
    out2 = _row_output(ctx, plan, x.dtype, n, "out")
    mean, inv_std = (_row_output(ctx, plan, stats, 1, s) for s in ("mean", "inv_std"))
    cs = ctx.compute_set()
    _add_rows(ctx, cs, C.norm_rows_codelet(x.dtype, wdtype, False, stats), plan,
              {"x": x2, "out": out2, "mean": mean, "inv_std": inv_std},
              shared={"weight": weight, "bias": bias}, params={"eps": float(eps)})
    ctx.execute(cs)
    return out2.reshape(x.shape), mean.reshape(lead), inv_std.reshape(lead)


def _stats_dtype(ctx: OpContext, stats_dtype: Any) -> DType:
    if stats_dtype is None:
        return float32
    d = as_dtype(stats_dtype)
    if d not in (float16, float32):
        raise ctx.error(f"stats_dtype must be float16 or float32, got {d}")
    return d


def _as_stats(ctx: OpContext, t: Tensor, stats: DType, suffix: str) -> Tensor:
    """A statistic computed in float32 (the pieces' and split paths), cast to ``stats``."""
    if t.dtype is stats:
        return t
    from softipu.ops import elementwise as ew  # noqa: PLC0415 - a sibling family, used here only

    return ew.cast(ctx.graph, t, stats, ctx.prog, name=f"{ctx.name}/{suffix}")


# A row read whole by one vertex arrives as one exchange region per run of it held on another
# tile. Rows cut into more runs than this (on average) are normalised where they live instead.
_MAX_RUNS_PER_ROW = 4


def _rows_scattered(x2: Tensor) -> bool:
    """Whether the ``(rows, n)`` view's rows are each cut into many runs of addresses (a layout with
    the normalised axis outermost, e.g. a matmul output in column slabs), so that whole-row vertices
    would gather every row piece by piece: ViT-B/16's residual stream put 6,145 exchange regions on
    one tile per layer norm (2.5 MB of exchange code). Judged on the view's structure (its runs),
    never on one address per element of a strided view."""
    rows, n = x2.shape
    if rows == 0 or n < 2 * _MAX_RUNS_PER_ROW:
        return False
    if x2.is_strided:
        return abs(x2.strides[1]) != 1
    starts, _ = x2.element_runs()
    return starts.size > _MAX_RUNS_PER_ROW * rows


def _layer_norm_split(ctx: OpContext, x: Tensor, x2: Tensor, weight: Tensor | None, bias: Tensor | None,
                      eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """Layer norm of rows longer than a vertex takes (``ROW_VERTEX_ELEMENTS``) or scattered over
    many runs (:func:`_rows_scattered`), each row cut into pieces over the tiles that hold it, as
    popnn's group/layer norm computes its statistics:
    per-piece moments (fp32), summed per row across tiles, then the two-pass (stable) variance,
    then each piece normalised where it lives; an affine ``weight``/``bias`` is applied after,
    elementwise, where the output lives. Nothing is gathered onto one tile: a half-precision
    (4, 56, 56, 56) layer norm over its last three dims put 1.4 MB on one tile with whole rows
    (the row, its output, and the gathered unit weight and zero bias)."""
    from softipu.ops import elementwise as ew  # noqa: PLC0415 - a sibling family, used here only

    rows, n = x2.shape
    out = _output_like(ctx, x, x.dtype)
    x3, out3 = _row_planes(x2), _row_planes(out.reshape(rows, n))
    plan = _plan_planes(ctx, x3)
    mean, var = _bn_statistics(ctx, plan, x3, _spread_constant(ctx, float32, rows, 0.0, "zeros"), "moments")
    mean, var = _bn_statistics(ctx, plan, x3, mean, "centred_moments")
    unit = (_spread_constant(ctx, x.dtype, rows, 1.0, "ones"),
            _spread_constant(ctx, x.dtype, rows, 0.0, "zeros"))
    _bn_apply(ctx, x3, out3, mean, var, *unit, eps, plan)
    inv_std = ew.rsqrt(ctx.graph, ew.add(ctx.graph, var, eps, ctx.prog, name=f"{ctx.name}/var_eps"),
                       ctx.prog, name=f"{ctx.name}/inv_std")
    if (weight is not None or bias is not None) and x3.shape[0] == n > 1:
        out = _rows_regrouped(ctx, out.reshape(rows, n), "out/rows").reshape(x.shape)
    if weight is not None:
        out = ew.mul(ctx.graph, out, weight, ctx.prog, name=f"{ctx.name}/weight")
    if bias is not None:
        out = ew.add(ctx.graph, out, bias, ctx.prog, name=f"{ctx.name}/bias")
    return out, mean, inv_std


def _rows_regrouped(ctx: OpContext, t2: Tensor, suffix: str) -> Tensor:
    """``(rows, n)`` stored rows innermost (an embedding lookup's output: each column on its own
    tile) regrouped into whole rows a tile (ops/regroup.py: 16 x 16 blocks transposed on tile),
    or ``t2`` itself where it cannot be. popnn's group/layer norm regroups its activations before
    the statistics (lib/popnn/GroupNorm.cpp groupNormStatistics: "reductions deal terribly with
    reducing along the innermost dimension in memory. Ensure grouping is suitable for group norm",
    poplin::regroupIfBeneficial to the channels grouped innermost) and its row-major consumers
    regroup its output (popops' binary ops, poplin's matmul input); here the rows are regrouped
    once, whole: the statistics are then a row vertex's (no cross-tile reduction of every row's
    partials from every column's tile: 16 KiB of exchange code on each tile of BERT-Large b18's
    embedding norm) and the result row-major. Rows of at most ``ROW_VERTEX_ELEMENTS``, before the
    statistics (``x/rows``); longer rows after the normalisation, before the affine
    (``out/rows``), which broadcasts the weight and bias along the rows."""
    from softipu.ops.regroup import can_regroup, regroup_into  # noqa: PLC0415 - regroup imports elementwise

    if not can_regroup(t2):
        return t2
    rows, n = t2.shape
    dst = _variable(ctx, t2.dtype, (rows, n), suffix)
    map_linearly(ctx.graph, dst, grain_size=n)
    return regroup_into(ctx, t2, dst, f"{ctx.name}/{suffix}/regrouped")


def _row_planes(x2: Tensor) -> Tensor:
    """The ``(rows, n)`` rows as batch-norm planes ``(N, C, P)`` with the rows as channels: ``(1,
    rows, n)``, or ``(n, rows, 1)`` when the rows run innermost in storage (the normalised axis
    outermost: an embedding lookup keeps its table's column blocks, each tile holding a few whole
    columns). Then each vertex reads a run of rows of the columns its tile holds and the per-row
    sums are reduced across the tiles, as popops' reduce takes each tile's partials where the
    elements live; cut along the row instead, every vertex of a row piece sat on the tile of the
    piece's middle column and gathered the piece from all the others (BERT-Large b18's first layer
    norm: 1,174 KiB received on one tile)."""
    rows, n = x2.shape
    if x2.is_strided and x2.strides[0] == 1 and rows > 1:
        return x2.transpose(1, 0).reshape(n, rows, 1)
    return x2.reshape(1, rows, n)


def _spread_constant(ctx: OpContext, dtype: DType, rows: int, value: float, suffix: str) -> Tensor:
    """A per-row constant spread over the tiles (a vector as long as the rows: whole on tile 0, a
    ViT-B/16's 25 layer norms piled 308 KiB of them there)."""
    t = ctx.graph.add_constant(dtype, (rows,), value, name=f"{ctx.name}/{suffix}")
    map_linearly(ctx.graph, t, grain_size=ctx.graph.target.vector_width(dtype.itemsize))
    return t


def _normalized_shape(ctx: OpContext, x: Tensor, weight: Tensor | None,
                      normalized_shape: Sequence[int] | None) -> tuple[int, ...]:
    if normalized_shape is not None:
        shape = tuple(int(d) for d in ([normalized_shape] if isinstance(normalized_shape, int)
                                       else normalized_shape))
    else:
        shape = weight.shape if weight is not None else x.shape[-1:]
    if not shape or x.shape[x.ndim - len(shape):] != shape or len(shape) > x.ndim:
        raise ctx.error(f"normalized_shape {shape} must be the last dims of {x.name} {x.shape}")
    if math.prod(shape) == 0:
        raise ctx.error(f"normalized_shape {shape} of {x.name} {x.shape} has no elements")
    return shape


def layer_norm_grad(graph: Graph, grad_out: Tensor, x: Tensor, mean: Tensor, inv_std: Tensor,
                    weight: Tensor | None, prog: Any, *, normalized_shape: Sequence[int] | None = None,
                    name: str = "", options: Mapping[str, Any] | None = None):
    """Gradients of :func:`layer_norm` from its saved ``mean`` and ``inv_std``: returns
    ``(dx, dweight, dbias)`` (the last two None when ``weight`` is None). ``dweight``/``dbias``
    sum over all rows with the two-stage reduction. No options.

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops import nn
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=4))
    >>> x, dy = (g.add_variable(sp.float32, (2, 2), name=n) for n in ("x", "dy"))
    >>> w = g.add_variable(sp.float32, (2,), name="w")
    >>> for t in (x, dy, w): sp.ops.map_linearly(g, t)
    >>> prog = P.Sequence(); y, mean, inv_std = nn.layer_norm(g, x, w, None, prog)
    >>> dx, dw, db = nn.layer_norm_grad(g, dy, x, mean, inv_std, w, prog)
    >>> eng = sp.Engine(g, [prog]); eng.write_tensor(x, [[1, 3], [0, 2]])
    >>> eng.write_tensor(w, [1, 1]); eng.write_tensor(dy, [[1, 1], [2, 3]]); eng.run(0)
    >>> eng.read_tensor(db).tolist()
    [3.0, 4.0]
    """
    ctx, _ = _start(graph, prog, "layer_norm_grad", name, options, grad_out, x, mean, inv_std, weight)
    shape = _normalized_shape(ctx, x, weight, normalized_shape)
    _check_float(ctx, x)
    _check_same(ctx, grad_out, x)
    _check_vector(ctx, weight, shape, "weight")
    n = math.prod(shape)
    rows = x.numel // n
    for stat in (mean, inv_std):
        if stat.numel != rows or stat.dtype is not float32:
            raise ctx.error(f"{stat.name} {stat.shape} ({stat.dtype}) must hold one float32 per row "
                            f"({rows} rows of {x.name} {x.shape})")
    wdtype = weight.dtype if weight is not None else x.dtype
    if rows == 0:
        dx = _variable(ctx, x.dtype, x.shape, "dx")
        zeros = _constant(ctx, wdtype, shape, 0.0, "zero_grads") if weight is not None else None
        return dx, zeros, zeros
    w = weight if weight is not None else _constant(ctx, wdtype, shape, 1.0, "ones")
    x2, dy2 = x.reshape(rows, n), grad_out.reshape(rows, n)
    plan = _plan_rows(ctx, x2)
    dx2 = _row_output(ctx, plan, x.dtype, n, "dx")
    partial = _vertex_output(ctx, plan, 2 * n, "param_partials")
    cs = ctx.compute_set()
    _add_rows(ctx, cs, C.norm_grad_rows_codelet(x.dtype, wdtype, False), plan,
              {"dy": dy2, "x": x2, "mean": mean.reshape(rows, 1), "inv_std": inv_std.reshape(rows, 1),
               "dx": dx2}, per_vertex={"partial": partial}, shared={"weight": w})
    ctx.execute(cs)
    if weight is None:
        return dx2.reshape(x.shape), None, None
    sums = _sum_rows(ctx, partial, plan.tiles)
    dweight = _cast(ctx, sums[:n], wdtype, suffix="dweight").reshape(shape)
    dbias = _cast(ctx, sums[n:], wdtype, suffix="dbias").reshape(shape)
    return dx2.reshape(x.shape), dweight, dbias


def _group_rows(ctx: OpContext, x: Tensor, num_groups: int):
    if x.ndim < 2:
        raise ctx.error(f"needs (N, C, ...) input, got {x.name} {x.shape}")
    n, c = x.shape[:2]
    if not isinstance(num_groups, (int, np.integer)) or num_groups < 1 or c % num_groups:
        raise ctx.error(f"num_groups={num_groups!r} must be a positive divisor of the {c} channels "
                        f"of {x.name} {x.shape}")
    return n, c, c // num_groups, math.prod(x.shape[2:])


def group_norm(graph: Graph, x: Tensor, weight: Tensor | None, bias: Tensor | None, prog: Any, *,
               num_groups: int, eps: float = 1e-5, name: str = "",
               options: Mapping[str, Any] | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Group norm of ``(N, C, *spatial)`` input: statistics over each sample's ``C / num_groups``
    channels and all positions (a contiguous row), per-channel ``weight``/``bias`` (``(C,)`` or
    None). Returns ``(out, mean, inv_std)``, statistics fp32 ``(N, num_groups)``. Instance norm is
    ``num_groups = C``. No options.

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops import nn
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=4))
    >>> x = g.add_variable(sp.float32, (1, 2, 2), name="x"); sp.ops.map_linearly(g, x)
    >>> prog = P.Sequence(); y, mean, _ = nn.group_norm(g, x, None, None, prog, num_groups=2)
    >>> eng = sp.Engine(g, [prog]); eng.write_tensor(x, [[[1, 3], [5, 5]]]); eng.run(0)
    >>> eng.read_tensor(mean).tolist()
    [[2.0, 5.0]]
    """
    ctx, _ = _start(graph, prog, "group_norm", name, options, x, weight, bias)
    _check_float(ctx, x)
    n, c, cg, spatial = _group_rows(ctx, x, num_groups)
    _check_vector(ctx, weight, (c,), "weight")
    _check_vector(ctx, bias, (c,), "bias")
    rows, width = n * num_groups, cg * spatial
    if x.numel == 0:
        return (_variable(ctx, x.dtype, x.shape, "out"),
                *(_variable(ctx, float32, (n, num_groups), s) for s in ("mean", "inv_std")))
    wdtype = (weight if weight is not None else bias if bias is not None else x).dtype
    weight = weight if weight is not None else _constant(ctx, wdtype, (c,), 1.0, "ones")
    bias = bias if bias is not None else _constant(ctx, wdtype, (c,), 0.0, "zeros")
    x2 = x.reshape(rows, width)
    plan = _plan_rows(ctx, x2)
    out2 = _row_output(ctx, plan, x.dtype, width, "out")
    mean, inv_std = (_row_output(ctx, plan, float32, 1, s) for s in ("mean", "inv_std"))
    cs = ctx.compute_set()
    _add_rows(ctx, cs, C.norm_rows_codelet(x.dtype, wdtype, True), plan,
              {"x": x2, "out": out2, "mean": mean, "inv_std": inv_std,
               "weight": _per_row_channels(weight, n, rows, cg),
               "bias": _per_row_channels(bias, n, rows, cg)}, params={"eps": float(eps)})
    ctx.execute(cs)
    return out2.reshape(x.shape), mean.reshape(n, num_groups), inv_std.reshape(n, num_groups)


def _per_row_channels(w: Tensor, n: int, rows: int, cg: int) -> Tensor:
    """``(rows, cg)``: row ``(sample, group)`` holds that group's channel weights (a view)."""
    return w.reshape(1, w.numel).broadcast((n, w.numel)).reshape(rows, cg)


def group_norm_grad(graph: Graph, grad_out: Tensor, x: Tensor, mean: Tensor, inv_std: Tensor,
                    weight: Tensor | None, prog: Any, *, num_groups: int, name: str = "",
                    options: Mapping[str, Any] | None = None):
    """Gradients of :func:`group_norm` from its saved statistics: ``(dx, dweight, dbias)`` (the
    last two None when ``weight`` is None). No options.

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops import nn
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=4))
    >>> x, dy = (g.add_variable(sp.float32, (1, 2, 2), name=n) for n in ("x", "dy"))
    >>> w = g.add_variable(sp.float32, (2,), name="w")
    >>> for t in (x, dy, w): sp.ops.map_linearly(g, t)
    >>> prog = P.Sequence(); y, mean, inv_std = nn.group_norm(g, x, w, None, prog, num_groups=1)
    >>> dx, dw, db = nn.group_norm_grad(g, dy, x, mean, inv_std, w, prog, num_groups=1)
    >>> eng = sp.Engine(g, [prog]); eng.write_tensor(x, [[[1, 3], [5, 7]]]); eng.write_tensor(w, [1, 1])
    >>> eng.write_tensor(dy, [[[1, 2], [3, 4]]]); eng.run(0); eng.read_tensor(db).tolist()
    [3.0, 7.0]
    """
    ctx, _ = _start(graph, prog, "group_norm_grad", name, options, grad_out, x, mean, inv_std, weight)
    _check_float(ctx, x)
    _check_same(ctx, grad_out, x)
    n, c, cg, spatial = _group_rows(ctx, x, num_groups)
    _check_vector(ctx, weight, (c,), "weight")
    rows, width = n * num_groups, cg * spatial
    for stat in (mean, inv_std):
        if stat.numel != rows or stat.dtype is not float32:
            raise ctx.error(f"{stat.name} {stat.shape} ({stat.dtype}) must hold one float32 per "
                            f"sample and group ({n} x {num_groups})")
    wdtype = weight.dtype if weight is not None else x.dtype
    if x.numel == 0:
        zeros = _constant(ctx, wdtype, (c,), 0.0, "zero_grads") if weight is not None else None
        return _variable(ctx, x.dtype, x.shape, "dx"), zeros, zeros
    w = weight if weight is not None else _constant(ctx, wdtype, (c,), 1.0, "ones")
    x2, dy2 = x.reshape(rows, width), grad_out.reshape(rows, width)
    plan = _plan_rows(ctx, x2)
    dx2 = _row_output(ctx, plan, x.dtype, width, "dx")
    partial = _row_output(ctx, plan, float32, cg * 2, "param_partials")
    cs = ctx.compute_set()
    _add_rows(ctx, cs, C.norm_grad_rows_codelet(x.dtype, wdtype, True), plan,
              {"dy": dy2, "x": x2, "mean": mean.reshape(rows, 1), "inv_std": inv_std.reshape(rows, 1),
               "weight": _per_row_channels(w, n, rows, cg), "dx": dx2, "partial": partial})
    ctx.execute(cs)
    if weight is None:
        return dx2.reshape(x.shape), None, None
    sums = _sum_rows(ctx, partial.reshape(n, 2 * c), grain=2)  # (C, 2): [dweight, dbias]
    return (dx2.reshape(x.shape), _cast(ctx, sums[0::2], wdtype, suffix="dweight"),
            _cast(ctx, sums[1::2], wdtype, suffix="dbias"))


# -- batch norm ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Planes:
    """Batch-norm vertices: sample ``n``, channels ``[c0, c0 + count)``, plane positions
    ``[p0, p0 + length)`` (several channels only with whole planes), on ``tile``; ``piece``
    numbers the plane pieces (``pieces`` per plane)."""

    shape: tuple[int, int, int]  # (N, C, P)
    pieces: int
    n: np.ndarray
    c0: np.ndarray
    count: np.ndarray
    p0: np.ndarray
    length: np.ndarray
    piece: np.ndarray
    tiles: np.ndarray

    def groups(self) -> Iterator[np.ndarray]:
        """Vertex selections of equal field sizes, ordered so their fields are evenly spaced."""
        key = (self.piece * (self.count.max() + 1) + self.count) * (self.length.max() + 1) + self.length
        for _, pick in _by_value(key):
            yield np.flatnonzero(pick)


def _plan_planes(ctx: OpContext, x3: Tensor) -> _Planes:
    n, c, p = x3.shape
    target = ctx.graph.target
    total = n * c * p
    want = min(target.num_tiles * target.workers_per_tile,
               max(1, total // PLANE_VERTEX_MIN_ELEMENTS))
    per_vertex = -(-total // want)
    if p >= per_vertex:
        cb, pieces = 1, -(-p // per_vertex)
    else:
        cb, pieces = _divisor_near(c, max(1, per_vertex // p)), 1
    length = -(-p // pieces)
    pieces = -(-p // length)
    blocks = -(-c // cb)
    piece, s, b = (a.ravel() for a in np.meshgrid(np.arange(pieces), np.arange(n), np.arange(blocks),
                                                  indexing="ij"))
    c0 = b * cb
    count = np.minimum(cb, c - c0)
    p0 = piece * length
    plen = np.minimum(length, p - p0)
    tiles = _tiles_at(ctx, x3, (s, c0 + count // 2, p0 + plen // 2))
    return _Planes((n, c, p), pieces, s, c0, count, p0, plen, piece, tiles)


def _divisor_near(c: int, want: int) -> int:
    """The largest divisor of ``c`` <= ``want`` if it is at least half of ``want`` (even blocks
    keep the engine's fields strided), else ``want``."""
    want = min(c, want)
    best = max(d for d in range(1, want + 1) if c % d == 0)
    return best if 2 * best >= want else want


def _add_planes(ctx: OpContext, cs: ComputeSet, codelet: type, plan: _Planes,
                planes: Mapping[str, Tensor], channels: Mapping[str, Tensor],
                partial: Tensor | None = None, params: Mapping[str, Any] | None = None) -> None:
    """``planes``: tensors shaped like x as ``(N, C, P)``; ``channels``: ``(C, q)`` per-channel
    tensors; ``partial``: the ``(pieces, N, C, 2)`` fp32 partial sums the vertices write."""
    n_, c_, p_ = plan.shape
    rowed = {name: r for name, t in planes.items() if (r := _row_strides(t)) is not None}
    for group in plan.groups():
        starts = (plan.n[group] * c_ + plan.c0[group]) * p_ + plan.p0[group]
        for sel, first in _strided_runs(plan, group, rowed):
            fields: dict[str, Any] = dict(params or {})
            length = int(plan.count[sel[0]] * plan.length[sel[0]])
            for name, t in planes.items():
                if name in rowed and plan.count[sel[0]] == 1:
                    base, step = rowed[name]
                    a = base[plan.c0[sel]] + plan.p0[sel] * step
                    fields[name] = Tensor(t.graph, t.dtype, (sel.size, length), int(a[0]),
                                          (int(a[1] - a[0]) if sel.size > 1 else 0, step))
                else:
                    fields[name] = rows_of(t.flatten(), starts[first:first + sel.size], length)
            cnt = int(plan.count[sel[0]])
            for name, t in channels.items():
                q = t.shape[1]
                fields[name] = rows_of(t.flatten(), plan.c0[sel] * q, cnt * q)
            if partial is not None:
                at = ((plan.piece[sel] * n_ + plan.n[sel]) * c_ + plan.c0[sel]) * 2
                fields["partial"] = rows_of(partial.flatten(), at, cnt * 2)
            ctx.graph.add_vertices(cs, codelet, fields, plan.tiles[sel])


def _row_strides(t: Tensor) -> tuple[np.ndarray, int] | None:
    """``(address of each row's first element, element step along the row)`` of a ``(1, C, P)``
    indexed plane view whose rows are each one strided run (a ViT residual stream stored with
    the batch innermost, seen as rows: its rows are not one strided view, but each row is): its
    fields are then strided views of the address space, not gathers through the index."""
    if t.is_strided or t.shape[0] != 1 or t.shape[2] < 2:
        return None
    index = t.addresses()[0]
    step = index[0, 1] - index[0, 0]
    if step < 1 or np.any(np.diff(index, axis=1) != step):
        return None
    return index[:, 0].astype(np.int64), int(step)


def _strided_runs(plan: _Planes, group: np.ndarray, rowed: Mapping[str, Any]):
    """The group's vertices as runs of one address step in every row-strided plane tensor
    (``(selection, offset in the group)``); the whole group where there is none."""
    if not rowed or plan.count[group[0]] != 1 or group.size < 3:
        yield group, 0
        return
    change = np.zeros(group.size - 1, bool)  # change[k]: gap k (vertex k to k + 1) differs from gap k - 1
    for base, _ in rowed.values():
        gaps = np.diff(base[plan.c0[group]])
        change[1:] |= gaps[1:] != gaps[:-1]
    points = np.flatnonzero(change).tolist()
    lo, cuts = 0, [0]
    while lo < group.size:  # a run takes vertex lo and every next one while the gap stays lo's
        at = bisect.bisect_right(points, lo)
        hi = points[at] + 1 if at < len(points) else group.size
        cuts.append(hi)
        lo = hi
    for lo, hi in zip(cuts[:-1], cuts[1:], strict=True):
        yield group[lo:hi], lo


def _plane_partials(ctx: OpContext, plan: _Planes, suffix: str) -> Tensor:
    """The ``(pieces, N, C, 2)`` partials, each vertex's on its tile."""
    n, c, _ = plan.shape
    t = _variable(ctx, float32, (plan.pieces, n, c, 2), suffix)
    flat = t.flatten()
    at = ((plan.piece * n + plan.n) * c + plan.c0) * 2
    _map_pieces(ctx.graph, flat, at, plan.count * 2, plan.tiles)
    return t


def _channel_sums(ctx: OpContext, plan: _Planes, partial: Tensor) -> Tensor:
    """Reduce the plane partials over samples and pieces: ``(C * 2,)`` fp32 ``[s1, s2]`` pairs."""
    n, c, _ = plan.shape
    return _sum_rows(ctx, partial.reshape(plan.pieces * n, c * 2), grain=2)


def _plan_of(ctx: OpContext, x3: Tensor, *others: Tensor) -> _Planes | Pixels:
    """Blocks of pixels where ``x3`` and ``others`` are stored channels innermost (a convolution's
    output: ops/nn/norm_pixels.py, popnn's statistics and channel ops over the activations' own
    mapping), else planes of one channel of a sample."""
    return plan_pixels(ctx, x3, *others) or _plan_planes(ctx, x3)


def _add_any(ctx: OpContext, cs: ComputeSet, codelet: type, plan: _Planes | Pixels,
             planes: Mapping[str, Tensor], channels: Mapping[str, Tensor],
             partial: Tensor | None = None, params: Mapping[str, Any] | None = None) -> None:
    if isinstance(plan, Pixels):
        plan.add(ctx, cs, codelet, planes, channels, partial, params)
    else:
        _add_planes(ctx, cs, codelet, plan, planes, channels, partial, params)


def _partials_of(ctx: OpContext, plan: _Planes | Pixels, suffix: str) -> Tensor:
    return plan.partials(ctx, suffix) if isinstance(plan, Pixels) else _plane_partials(ctx, plan, suffix)


def _sums_of(ctx: OpContext, plan: _Planes | Pixels, partial: Tensor) -> Tensor:
    return plan.sums(ctx, partial) if isinstance(plan, Pixels) else _channel_sums(ctx, plan, partial)


def _bn_input(ctx: OpContext, x: Tensor, *vectors: tuple[Tensor | None, str]):
    _check_float(ctx, x)
    if x.ndim < 2:
        raise ctx.error(f"needs (N, C, ...) input, got {x.name} {x.shape}")
    n, c = x.shape[:2]
    for t, what in vectors:
        _check_vector(ctx, t, (c,), what)
    return n, c, math.prod(x.shape[2:])


def _affine(ctx: OpContext, weight: Tensor | None, bias: Tensor | None, c: int, dtype: DType):
    wdtype = (weight if weight is not None else bias if bias is not None else None)
    wdtype = wdtype.dtype if wdtype is not None else dtype
    weight = weight if weight is not None else _constant(ctx, wdtype, (c,), 1.0, "ones")
    bias = bias if bias is not None else _constant(ctx, wdtype, (c,), 0.0, "zeros")
    return weight, bias


def batch_norm(graph: Graph, x: Tensor, weight: Tensor | None, bias: Tensor | None,
               running_mean: Tensor, running_var: Tensor, prog: Any, *, eps: float = 1e-5,
               name: str = "", options: Mapping[str, Any] | None = None) -> Tensor:
    """Batch norm for inference: normalise ``(N, C, *spatial)`` input with the running statistics,
    ``(x - mean) / sqrt(var + eps) * weight + bias`` per channel. The output is mapped like ``x``.
    No options.

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops import nn
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=4))
    >>> x = g.add_variable(sp.float32, (2, 1), name="x")
    >>> m, v = (g.add_variable(sp.float32, (1,), name=n) for n in ("m", "v"))
    >>> for t in (x, m, v): sp.ops.map_linearly(g, t)
    >>> prog = P.Sequence(); y = nn.batch_norm(g, x, None, None, m, v, prog, eps=0.0)
    >>> eng = sp.Engine(g, [prog]); eng.write_tensor(x, [[1], [3]]); eng.write_tensor(m, [1])
    >>> eng.write_tensor(v, [4]); eng.run(0); eng.read_tensor(y).tolist()
    [[0.0], [1.0]]
    """
    ctx, _ = _start(graph, prog, "batch_norm", name, options, x, weight, bias, running_mean, running_var)
    n, c, p = _bn_input(ctx, x, (weight, "weight"), (bias, "bias"), (running_mean, "running_mean"),
                        (running_var, "running_var"))
    if running_mean.dtype is not running_var.dtype:
        raise ctx.error(f"running_mean ({running_mean.dtype}) and running_var ({running_var.dtype}) "
                        "must have one dtype")
    out = _output_like(ctx, x, x.dtype)
    if x.numel:
        _bn_apply(ctx, x, out, running_mean, running_var, *_affine(ctx, weight, bias, c, x.dtype), eps)
    return out


def _bn_apply(ctx: OpContext, x: Tensor, out: Tensor, mean: Tensor, var: Tensor, weight: Tensor,
              bias: Tensor, eps: float, plan: _Planes | Pixels | None = None) -> None:
    n, c = x.shape[:2]
    x3 = x.reshape(n, c, -1)
    plan = plan or _plan_of(ctx, x3, out.reshape(x3.shape))
    cs = ctx.compute_set("apply")
    codelet = C.batch_norm_apply_codelet(x.dtype, mean.dtype, weight.dtype, isinstance(plan, Pixels))
    _add_any(ctx, cs, codelet, plan, {"x": x3, "out": out.reshape(x3.shape)},
                {k: t.reshape(c, 1) for k, t in (("mean", mean), ("var", var), ("weight", weight),
                                                 ("bias", bias))}, params={"eps": float(eps)})
    ctx.execute(cs)


def batch_norm_training(graph: Graph, x: Tensor, weight: Tensor | None, bias: Tensor | None,
                        prog: Any, *, eps: float = 1e-5, name: str = "",
                        options: Mapping[str, Any] | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Batch norm in training: per-channel statistics of the batch (over N and all positions,
    fp32), then the normalised output. Returns ``(out, mean, var)``; ``var`` is the biased
    variance the output was normalised with (``unbiased_var`` returns the unbiased estimate,
    for running statistics).

    Options:

    * ``stable_algorithm`` (bool, default False): two passes — the mean first, then the
      moments around it — instead of ``E[x^2] - E[x]^2`` (PopLibs' ``stableAlgo``).
    * ``unbiased_var`` (bool, default False): return ``var * M / (M - 1)``.

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops import nn
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=4))
    >>> x = g.add_variable(sp.float32, (2, 1, 2), name="x"); sp.ops.map_linearly(g, x)
    >>> prog = P.Sequence(); y, mean, var = nn.batch_norm_training(g, x, None, None, prog)
    >>> eng = sp.Engine(g, [prog]); eng.write_tensor(x, [[[1, 2]], [[3, 6]]]); eng.run(0)
    >>> eng.read_tensor(mean).tolist(), eng.read_tensor(var).tolist()
    ([3.0], [3.5])
    """
    ctx, opts = _start(graph, prog, "batch_norm_training", name, options, x, weight, bias,
                       defaults={"stable_algorithm": False, "unbiased_var": False})
    n, c, p = _bn_input(ctx, x, (weight, "weight"), (bias, "bias"))
    out = _output_like(ctx, x, x.dtype)
    count = n * p
    if x.numel == 0:
        return out, *(_constant(ctx, float32, (c,), np.nan, s) for s in ("mean", "var"))
    x3 = x.reshape(n, c, p)
    plan = _plan_of(ctx, x3, out.reshape(n, c, p))
    mean, var = _bn_statistics(ctx, plan, x3, _constant(ctx, float32, (c,), 0.0, "zeros"), "moments")
    if opts["stable_algorithm"]:
        mean, var = _bn_statistics(ctx, plan, x3, mean, "centred_moments")
    _bn_apply(ctx, x, out, mean, var, *_affine(ctx, weight, bias, c, x.dtype), eps, plan)
    if opts["unbiased_var"]:
        var = _cast(ctx, var, float32, count / (count - 1) if count > 1 else math.nan, "unbiased_var")
    return out, mean, var


def _bn_statistics(ctx: OpContext, plan: _Planes | Pixels, x3: Tensor, shift: Tensor, stage: str):
    """(mean, biased var) per channel from the moments of ``x - shift``."""
    n, c, p = x3.shape
    partial = _partials_of(ctx, plan, f"{stage}/partials")
    cs = ctx.compute_set(stage)
    _add_any(ctx, cs, C.plane_moments_codelet(x3.dtype, isinstance(plan, Pixels)), plan, {"x": x3},
             {"shift": shift.reshape(c, 1)}, partial)
    ctx.execute(cs)
    sums = _sums_of(ctx, plan, partial)
    blocks = _blocks_of(ctx, sums, 2)
    mean, var = (_block_output(ctx, blocks, float32, c, 1, f"{stage}/{s}") for s in ("mean", "var"))
    cs = ctx.compute_set(f"{stage}/finish")
    _add_blocks(ctx, cs, C.BatchNormStatsFinish, blocks,
                {"sums": sums.reshape(c, 2), "shift": shift.reshape(c, 1), "mean": mean, "var": var},
                params={"count": float(n * p)})
    ctx.execute(cs)
    return mean.reshape(c), var.reshape(c)


def batch_norm_grad(graph: Graph, grad_out: Tensor, x: Tensor, mean: Tensor, var: Tensor,
                    weight: Tensor | None, prog: Any, *, eps: float = 1e-5, name: str = "",
                    options: Mapping[str, Any] | None = None):
    """Gradients of :func:`batch_norm_training` from its batch ``mean`` and biased ``var``:
    ``(dx, dweight, dbias)`` (the last two None when ``weight`` is None). No options.

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops import nn
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=4))
    >>> x, dy = (g.add_variable(sp.float32, (2, 1), name=n) for n in ("x", "dy"))
    >>> w = g.add_variable(sp.float32, (1,), name="w")
    >>> for t in (x, dy, w): sp.ops.map_linearly(g, t)
    >>> prog = P.Sequence(); y, mean, var = nn.batch_norm_training(g, x, w, None, prog)
    >>> dx, dw, db = nn.batch_norm_grad(g, dy, x, mean, var, w, prog)
    >>> eng = sp.Engine(g, [prog]); eng.write_tensor(x, [[1], [3]]); eng.write_tensor(w, [1])
    >>> eng.write_tensor(dy, [[1], [2]]); eng.run(0); eng.read_tensor(db).tolist()
    [3.0]
    """
    ctx, _ = _start(graph, prog, "batch_norm_grad", name, options, grad_out, x, mean, var, weight)
    n, c, p = _bn_input(ctx, x, (weight, "weight"), (mean, "mean"), (var, "var"))
    _check_same(ctx, grad_out, x)
    if mean.dtype is not var.dtype:
        raise ctx.error(f"mean ({mean.dtype}) and var ({var.dtype}) must have one dtype")
    wdtype = weight.dtype if weight is not None else x.dtype
    dx = _output_like(ctx, x, x.dtype, "dx")
    if x.numel == 0:
        zeros = _constant(ctx, wdtype, (c,), 0.0, "zero_grads") if weight is not None else None
        return dx, zeros, zeros
    w = weight if weight is not None else _constant(ctx, wdtype, (c,), 1.0, "ones")
    x3, dy3 = x.reshape(n, c, p), grad_out.reshape(n, c, p)
    plan = _plan_of(ctx, x3, dy3, dx.reshape(n, c, p))
    pixels = isinstance(plan, Pixels)
    stats = {"mean": mean.reshape(c, 1), "var": var.reshape(c, 1)}
    partial = _partials_of(ctx, plan, "partials")
    cs = ctx.compute_set("sums")
    _add_any(ctx, cs, C.batch_norm_grad_sums_codelet(x.dtype, mean.dtype, pixels), plan,
             {"dy": dy3, "x": x3}, stats, partial, params={"eps": float(eps)})
    ctx.execute(cs)
    sums = _sums_of(ctx, plan, partial)
    blocks = _blocks_of(ctx, sums, 2)
    coef = _block_output(ctx, blocks, float32, c, 2, "coef")
    dweight, dbias = (_block_output(ctx, blocks, wdtype, c, 1, s) for s in ("dweight", "dbias"))
    cs = ctx.compute_set("finish")
    _add_blocks(ctx, cs, C.batch_norm_grad_finish_codelet(wdtype), blocks,
                {"sums": sums.reshape(c, 2), "coef": coef, "dweight": dweight, "dbias": dbias},
                params={"count": float(n * p)})
    ctx.execute(cs)
    cs = ctx.compute_set("dx")
    _add_any(ctx, cs, C.batch_norm_grad_apply_codelet(x.dtype, mean.dtype, wdtype, pixels), plan,
             {"dy": dy3, "x": x3, "dx": dx.reshape(x3.shape)},
             stats | {"weight": w.reshape(c, 1), "coef": coef}, params={"eps": float(eps)})
    ctx.execute(cs)
    if weight is None:
        return dx, None, None
    return dx, dweight.reshape(c), dbias.reshape(c)
