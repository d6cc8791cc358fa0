"""popnn: pooling, non-linearities, softmax, norms and losses, each with the backward op a
training step needs.

Layouts (how work lands on tiles):

* **Row ops** (softmax, log-softmax, layer norm, group norm, cross-entropy, NLL) reduce along
  rows. A vertex owns ``k`` *whole* rows and runs on the tile holding the middle of them; the
  outputs are mapped row by row to that tile. A row is never split across tiles, so no row needs
  a cross-tile reduction: where the input's mapping cuts a row, the exchange brings the remote
  part to the row's tile (priced like any exchange). The limit: a row's input and output must
  fit one tile (a 50k-class float32 row pair takes ~400 KB of a GC200 tile's 624 KiB); longer
  rows are not split across tiles, and compiling them fails with the out-of-memory report.
* **Plane ops** (batch norm) give each vertex ``cb`` channels of one sample, or a piece of one
  channel's plane when planes are large; per-channel statistics then need a reduction across
  samples and pieces on many tiles.
* **Pooling** gives each vertex a band of output rows of one ``(n, c)`` plane (its input rows,
  with the window halo, read through the exchange); gradients own bands of input rows.
* **Parameter gradients, batch statistics and reduced losses** use one two-stage reduction
  (:func:`_sum_rows`): per-vertex partial rows are first added on the tile that holds them
  (stage A, only when some tile holds several), then column blocks spread over the tiles add
  the per-tile partials (stage B) — popops' reduce shape, in fp32.

Numerics: float16 inputs are computed with float32 statistics and accumulation.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from softipu.codelets import nn as C
from softipu.codelets.nn import NonLinearity, PoolMode
from softipu.dtypes import DType, float16, float32, int32
from softipu.graph import program as P
from softipu.graph.graph import ComputeSet, Graph
from softipu.graph.tensor import Tensor
from softipu.ops.common import OpContext, parse_options, rows_of, tile_regions

__all__ = [
    "NonLinearity", "non_linearity", "non_linearity_grad",
    "softmax", "log_softmax", "softmax_grad", "log_softmax_grad",
    "layer_norm", "layer_norm_grad", "group_norm", "group_norm_grad",
    "batch_norm", "batch_norm_training", "batch_norm_grad",
    "max_pool", "avg_pool", "max_pool_grad", "avg_pool_grad",
    "nll_loss", "nll_loss_grad", "cross_entropy", "cross_entropy_grad", "mse_loss", "mse_loss_grad",
]

_FLOATS = (float16, float32)
# A row vertex holds at most this many elements (more rows per vertex only when rows are short):
# one worker's share stays well inside a tile, and the engine's batches stay cache-sized.
ROW_VERTEX_ELEMENTS = 16 * 1024
# Plane (batch norm) vertices get at least this many elements when the tensor is small.
PLANE_VERTEX_MIN_ELEMENTS = 64
_REDUCTIONS = ("mean", "sum", "none")


# -- shared checks and mapping helpers ------------------------------------------------------------
def _start(graph: Graph, prog: Any, op: str, name: str, options: Mapping[str, Any] | None,
           *inputs: Tensor | None, defaults: Mapping[str, Any] | None = None):
    ctx = OpContext.start(graph, prog, op, name, *(t for t in inputs if t is not None))
    return ctx, parse_options(ctx, options, defaults or {})


def _check_float(ctx: OpContext, *tensors: Tensor | None) -> None:
    for t in tensors:
        if t is not None and t.dtype not in _FLOATS:
            raise ctx.error(f"needs float16 or float32 tensors, got {t.name} {t.shape} of {t.dtype}")


def _check_same(ctx: OpContext, a: Tensor, b: Tensor, what: str = "") -> None:
    if a.shape != b.shape:
        raise ctx.error(f"{a.name} {a.shape} and {b.name} {b.shape} must have the same shape{what}")
    if a.dtype != b.dtype:
        raise ctx.error(f"{a.name} ({a.dtype}) and {b.name} ({b.dtype}) must have the same dtype")


def _check_vector(ctx: OpContext, t: Tensor | None, shape: tuple[int, ...], what: str) -> None:
    if t is None:
        return
    if t.shape != shape:
        raise ctx.error(f"{what} {t.name} has shape {t.shape}; expected {shape}")
    _check_float(ctx, t)


def _tiles_at(ctx: OpContext, t: Tensor, index: tuple[np.ndarray, ...]) -> np.ndarray:
    """The tiles of ``t[index]`` (integer arrays per axis), without listing all of t's addresses."""
    if t.is_strided:
        addresses = np.full(np.broadcast(*index).shape, t.offset, np.int64)
        for i, stride in zip(index, t.strides, strict=True):
            addresses = addresses + np.asarray(i, np.int64) * stride
    else:
        addresses = t.index[index]
    tiles = ctx.graph.resolved_mapping(t.dtype).tiles_of(addresses).astype(np.int64)
    if tiles.size and tiles.min() < 0:
        raise ctx.error(f"input {t.name} {t.shape} has elements that are not mapped to a tile; map it "
                        "first (sp.ops.map_linearly)")
    return tiles


def _regions(graph: Graph, t: Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return tile_regions(graph, t)


def _variable(ctx: OpContext, dtype: DType, shape: Sequence[int], suffix: str) -> Tensor:
    return ctx.graph.add_variable(dtype, tuple(shape), name=f"{ctx.name}/{suffix}")


def _map_pieces(graph: Graph, flat: Tensor, starts: np.ndarray, lengths: np.ndarray,
                tiles: np.ndarray) -> None:
    """Map ``flat[starts[i] : starts[i] + lengths[i]]`` to ``tiles[i]``, one call per length."""
    for length in np.unique(lengths).tolist():
        if length:
            pick = lengths == length
            graph.set_tile_mappings(rows_of(flat, starts[pick], length), tiles[pick])


def _output_like(ctx: OpContext, ref: Tensor, dtype: DType, suffix: str = "out") -> Tensor:
    """A new variable of ``ref``'s shape mapped element for element like ``ref``."""
    out = _variable(ctx, dtype, ref.shape, suffix)
    if ref.numel:
        starts, lengths, tiles = _regions(ctx.graph, ref)
        if tiles.min() < 0:
            raise ctx.error(f"input {ref.name} {ref.shape} is not mapped to tiles; map it first")
        _map_pieces(ctx.graph, out.flatten(), starts, lengths, tiles)
    return out


def _on_one_tile(ctx: OpContext, t: Tensor, suffix: str) -> Tensor:
    """``t`` itself if it lives on one tile, else a copy gathered onto the tile holding most of it.

    Every vertex reads a shared operand (layer-norm weights) whole: gathered first, each tile
    receives it in one piece from one sender (a multicast), instead of from every tile it was
    spread over — fewer exchange regions on the IPU, and far fewer intervals to price here.
    """
    _, lengths, tiles = _regions(ctx.graph, t)
    if np.unique(tiles).size <= 1:
        return t
    home = int(np.bincount(tiles, weights=lengths).argmax())
    local = _variable(ctx, t.dtype, t.shape, suffix)
    ctx.graph.set_tile_mapping(local, home)
    ctx.prog.add(P.Copy(t, local))
    return local


def _constant(ctx: OpContext, dtype: DType, shape: tuple[int, ...], value: float, suffix: str) -> Tensor:
    """A small constant (default weights, empty results) on tile 0, whole: readers get it by
    multicast, and no gathering copy runs each time."""
    t = ctx.graph.add_constant(dtype, shape, value, name=f"{ctx.name}/{suffix}")
    if t.numel:
        ctx.graph.set_tile_mapping(t, 0)
    return t


def _axis(ctx: OpContext, dim: int, ndim: int, t: Tensor) -> int:
    if not isinstance(dim, (int, np.integer)) or not -max(ndim, 1) <= dim < max(ndim, 1):
        raise ctx.error(f"dim {dim!r} is out of range for {t.name} {t.shape}")
    return int(dim) % max(ndim, 1)


def _reduction(ctx: OpContext, reduction: str) -> str:
    if reduction not in _REDUCTIONS:
        raise ctx.error(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    return reduction


def _by_value(values: np.ndarray) -> Iterator[tuple[Any, np.ndarray]]:
    for v in np.unique(values).tolist():
        yield v, values == v


# -- whole rows per vertex ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Rows:
    """Vertex ``v`` owns rows ``[v k, min((v + 1) k, rows))`` and runs on ``tiles[v]``."""

    rows: int
    k: int
    tiles: np.ndarray  # int64, one per vertex

    def row_tiles(self) -> np.ndarray:
        return np.repeat(self.tiles, self.k)[: self.rows]

    def groups(self) -> Iterator[tuple[int, int, int]]:
        """(first vertex, vertices, rows each): the full vertices, then the short last one."""
        full = self.rows // self.k
        if full:
            yield 0, full, self.k
        if self.rows > full * self.k:
            yield full, 1, self.rows - full * self.k


def _plan_rows(ctx: OpContext, x2: Tensor) -> _Rows:
    """Rows per vertex so that every tile holding rows gets about one vertex per worker."""
    rows, n = x2.shape
    r = np.arange(rows)
    row_tiles = _tiles_at(ctx, x2, (r, np.full(rows, n // 2)))
    used = np.unique(row_tiles).size
    k = max(1, -(-rows // (used * ctx.graph.target.workers_per_tile)))
    k = min(k, max(1, ROW_VERTEX_ELEMENTS // max(n, 1)))
    centres = np.minimum(np.arange(-(-rows // k)) * k + k // 2, rows - 1)
    return _Rows(rows, k, row_tiles[centres])


def _row_output(ctx: OpContext, plan: _Rows, dtype: DType, width: int, suffix: str) -> Tensor:
    """A ``(rows, width)`` variable whose rows live on their vertices' tiles."""
    t = _variable(ctx, dtype, (plan.rows, width), suffix)
    if t.numel:
        ctx.graph.set_tile_mappings(t, plan.row_tiles())
    return t


def _vertex_output(ctx: OpContext, plan: _Rows, width: int, suffix: str) -> Tensor:
    """A ``(vertices, width)`` fp32 variable of per-vertex partials, row ``v`` on vertex v's tile."""
    t = _variable(ctx, float32, (plan.tiles.size, width), suffix)
    ctx.graph.set_tile_mappings(t, plan.tiles)
    return t


def _add_rows(ctx: OpContext, cs: ComputeSet, codelet: type, plan: _Rows,
              per_row: Mapping[str, Tensor], per_vertex: Mapping[str, Tensor] | None = None,
              shared: Mapping[str, Tensor] | None = None, params: Mapping[str, Any] | None = None) -> None:
    """Add the row vertices in one bulk call per row count. ``per_row``: ``(rows, m)`` tensors
    (each vertex gets its rows); ``per_vertex``: ``(vertices, m)``; ``shared``: every vertex
    reads the whole tensor (gathered onto one tile first)."""
    shared = {name: _on_one_tile(ctx, t, f"{name}_gathered") for name, t in (shared or {}).items()}
    for first, count, k in plan.groups():
        fields: dict[str, Any] = dict(params or {})
        starts = first + np.arange(count)
        for name, t in per_row.items():
            m = t.shape[1]
            fields[name] = rows_of(t.flatten(), starts * plan.k * m, k * m)
        for name, t in (per_vertex or {}).items():
            m = t.shape[1]
            fields[name] = rows_of(t.flatten(), starts * m, m)
        for name, t in shared.items():
            fields[name] = t.flatten().reshape(1, t.numel).broadcast((count, t.numel))
        ctx.graph.add_vertices(cs, codelet, fields, plan.tiles[first:first + count])


def _rows_along(ctx: OpContext, x: Tensor, dim: int):
    """``x`` as ``(rows, n)`` with ``dim`` last, and the function mapping a ``(rows, n)`` result
    back to ``x``'s shape."""
    if x.ndim == 0:
        _axis(ctx, dim, 0, x)
        return x.reshape(1, 1), lambda t: t.reshape(())
    d = _axis(ctx, dim, x.ndim, x)
    perm = [i for i in range(x.ndim) if i != d] + [d]
    xt = x.transpose(perm)
    n = x.shape[d]
    rows = math.prod(xt.shape[:-1])
    inverse = tuple(np.argsort(perm).tolist())
    return xt.reshape(rows, n), lambda t: t.reshape(xt.shape).transpose(inverse)


# -- the two-stage column reduction ----------------------------------------------------------------
def _sum_rows(ctx: OpContext, partial: Tensor, row_tiles: np.ndarray | None = None,
              grain: int = 1) -> Tensor:
    """``partial.sum(axis=0)`` in fp32 for a ``(S, C)`` fp32 tensor whose rows lie on tiles.

    Stage A (when ``row_tiles`` says some tile holds several adjacent rows): each tile adds its
    rows. Stage B: blocks of ``grain``-aligned columns, spread over the tiles, add the rows left.
    Returns a ``(C,)`` fp32 tensor mapped in those blocks.
    """
    if row_tiles is not None and partial.shape[0] > 1:
        partial = _reduce_on_tiles(ctx, partial, row_tiles)
    if partial.shape[0] == 1:
        return partial.reshape(partial.shape[1])
    return _reduce_across_tiles(ctx, partial, grain)


def _reduce_on_tiles(ctx: OpContext, partial: Tensor, row_tiles: np.ndarray) -> Tensor:
    rows, cols = partial.shape
    starts = np.flatnonzero(np.diff(row_tiles, prepend=-1))
    counts = np.diff(np.append(starts, rows))
    if counts.max() == 1:
        return partial
    tiles = row_tiles[starts]
    out = _variable(ctx, float32, (starts.size, cols), "reduce/tile_partials")
    ctx.graph.set_tile_mappings(out, tiles)
    cs = ctx.compute_set("reduce/on_tile")
    flat, out_flat = partial.flatten(), out.flatten()
    block = np.arange(starts.size)
    for count, pick in _by_value(counts):
        ctx.graph.add_vertices(cs, C.ReduceAddColumns, {
            "partial": rows_of(flat, starts[pick] * cols, count * cols),
            "out": rows_of(out_flat, block[pick] * cols, cols)}, tiles[pick])
    ctx.execute(cs)
    return out


def _reduce_across_tiles(ctx: OpContext, partial: Tensor, grain: int) -> Tensor:
    rows, cols = partial.shape
    num_tiles = ctx.graph.num_tiles
    units = -(-cols // grain)
    width = grain * -(-units // min(num_tiles, units))
    blocks = -(-cols // width)
    tiles = (np.arange(blocks) * num_tiles) // blocks
    out = _variable(ctx, float32, (cols,), "reduce/sums")
    cs = ctx.compute_set("reduce/cross_tile")
    full = cols // width
    pieces = [(0, full, width)] if full else []
    if cols > full * width:
        pieces.append((full, 1, cols - full * width))
    for first, count, w in pieces:
        lo = first * width
        block_in = partial[:, lo:lo + count * w].reshape(rows, count, w).transpose(1, 0, 2)
        block_out = out[lo:lo + count * w].reshape(count, w)
        ctx.graph.set_tile_mappings(block_out, tiles[first:first + count])
        ctx.graph.add_vertices(cs, C.ReduceAddColumns, {
            "partial": block_in.reshape(count, rows * w), "out": block_out}, tiles[first:first + count])
    ctx.execute(cs)
    return out


def _blocks_of(ctx: OpContext, t: Tensor, grain: int):
    """(first unit, units, tile) of ``t``'s tile regions, in units of ``grain`` elements."""
    starts, lengths, tiles = _regions(ctx.graph, t)
    return starts // grain, lengths // grain, tiles


def _add_blocks(ctx: OpContext, cs: ComputeSet, codelet: type, blocks, fields: Mapping[str, Tensor],
                params: Mapping[str, Any] | None = None) -> None:
    """Vertices over unit blocks (from :func:`_blocks_of`); each field is ``(units, m)``."""
    first, count, tiles = blocks
    for n, pick in _by_value(count):
        batch = dict(params or {})
        for name, t in fields.items():
            m = t.shape[1]
            batch[name] = rows_of(t.flatten(), first[pick] * m, n * m)
        ctx.graph.add_vertices(cs, codelet, batch, tiles[pick])


def _block_output(ctx: OpContext, blocks, dtype: DType, units: int, m: int, suffix: str) -> Tensor:
    """A ``(units, m)`` variable mapped like the blocks."""
    t = _variable(ctx, dtype, (units, m), suffix)
    first, count, tiles = blocks
    _map_pieces(ctx.graph, t.flatten(), first * m, count * m, tiles)
    return t


def _cast(ctx: OpContext, x: Tensor, dtype: DType, scale: float = 1.0, suffix: str = "out") -> Tensor:
    """``x * scale`` as ``dtype`` (a view of ``x`` when nothing changes), mapped like ``x``."""
    if x.dtype is dtype and scale == 1.0:
        return x
    out = _output_like(ctx, x, dtype, suffix)
    if x.numel:
        cs = ctx.compute_set(f"cast/{suffix}")
        _add_regions(ctx, cs, C.cast_scale_codelet(x.dtype, dtype), out, {"x": x, "out": out},
                     params={"scale": scale})
        ctx.execute(cs)
    return out


def _add_regions(ctx: OpContext, cs: ComputeSet, codelet: type, ref: Tensor,
                 elementwise: Mapping[str, Tensor], per_region: Mapping[str, Tensor] | None = None,
                 shared: Mapping[str, Tensor] | None = None,
                 params: Mapping[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One vertex per contiguous tile region of ``ref``: ``elementwise`` fields are tensors of
    ``ref``'s shape, ``per_region`` ``(regions, m)`` tensors (row i for region i), ``shared``
    tensors every vertex reads whole. Returns the regions' (lengths, tiles)."""
    starts, lengths, tiles = _regions(ctx.graph, ref)
    flats = {name: t.flatten() for name, t in elementwise.items()}
    region = np.arange(starts.size)
    for length, pick in _by_value(lengths):
        fields: dict[str, Any] = dict(params or {})
        fields |= {name: rows_of(f, starts[pick], length) for name, f in flats.items()}
        for name, t in (per_region or {}).items():
            fields[name] = rows_of(t.flatten(), region[pick] * t.shape[1], t.shape[1])
        for name, t in (shared or {}).items():
            fields[name] = t.flatten().reshape(1, t.numel).broadcast((int(pick.sum()), t.numel))
        ctx.graph.add_vertices(cs, codelet, fields, tiles[pick])
    return lengths, tiles


# -- non-linearities -----------------------------------------------------------------------------
def non_linearity(graph: Graph, x: Tensor, prog: Any, *, kind: NonLinearity = NonLinearity.RELU,
                  name: str = "", options: Mapping[str, Any] | None = None) -> Tensor:
    """popnn's ``nonLinearity``: ``kind`` (RELU, SIGMOID, TANH, GELU (tanh approximation),
    GELU_ERF (exact), SILU) elementwise, out of place; the output is mapped like ``x``. No options.

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops.nn import NonLinearity, non_linearity
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=4))
    >>> x = g.add_variable(sp.float32, (3,), name="x"); sp.ops.map_linearly(g, x)
    >>> prog = P.Sequence()
    >>> y = non_linearity(g, x, prog, kind=NonLinearity.RELU)
    >>> eng = sp.Engine(g, [prog]); eng.write_tensor(x, [-1, 0, 2]); eng.run(0)
    >>> eng.read_tensor(y).tolist()
    [0.0, 0.0, 2.0]
    """
    ctx, _ = _start(graph, prog, "non_linearity", name, options, x)
    _check_float(ctx, x)
    kind = _kind(ctx, kind)
    out = _output_like(ctx, x, x.dtype)
    if x.numel:
        cs = ctx.compute_set(kind.name.lower())
        _add_regions(ctx, cs, C.non_linearity_codelet(kind, x.dtype), out, {"x": x, "out": out})
        ctx.execute(cs)
    return out


def non_linearity_grad(graph: Graph, act: Tensor, grad_out: Tensor, prog: Any, *,
                       kind: NonLinearity = NonLinearity.RELU, name: str = "",
                       options: Mapping[str, Any] | None = None) -> Tensor:
    """popnn's ``nonLinearityInputGradient``: ``grad_out * f'``. As in popnn, ``act`` is the
    forward **output** for RELU, SIGMOID and TANH and the forward **input** for GELU, GELU_ERF
    and SILU (``kind.grad_uses_output`` says which). No options.

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops.nn import NonLinearity, non_linearity_grad
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=4))
    >>> y = g.add_variable(sp.float32, (2,), name="y"); sp.ops.map_linearly(g, y)
    >>> dy = g.add_variable(sp.float32, (2,), name="dy"); sp.ops.map_linearly(g, dy)
    >>> prog = P.Sequence()
    >>> dx = non_linearity_grad(g, y, dy, prog, kind=NonLinearity.TANH)
    >>> eng = sp.Engine(g, [prog]); eng.write_tensor(y, [0, 0.5]); eng.write_tensor(dy, [1, 2])
    >>> eng.run(0); eng.read_tensor(dx).tolist()
    [1.0, 1.5]
    """
    ctx, _ = _start(graph, prog, "non_linearity_grad", name, options, act, grad_out)
    _check_float(ctx, act)
    _check_same(ctx, act, grad_out)
    kind = _kind(ctx, kind)
    out = _output_like(ctx, grad_out, grad_out.dtype)
    if out.numel:
        cs = ctx.compute_set(f"{kind.name.lower()}_grad")
        _add_regions(ctx, cs, C.non_linearity_grad_codelet(kind, act.dtype), out,
                     {"act": act, "grad": grad_out, "out": out})
        ctx.execute(cs)
    return out


def _kind(ctx: OpContext, kind: Any) -> NonLinearity:
    if not isinstance(kind, NonLinearity):
        raise ctx.error(f"kind must be a NonLinearity ({', '.join(k.name for k in NonLinearity)}), "
                        f"got {kind!r}")
    return kind


# -- softmax ---------------------------------------------------------------------------------------
def softmax(graph: Graph, x: Tensor, prog: Any, *, dim: int = -1, name: str = "",
            options: Mapping[str, Any] | None = None) -> Tensor:
    """Numerically stable softmax along ``dim`` (the row max is subtracted first), fp32 inside.
    Each vertex owns whole rows; the output's rows live where the vertices run. No options.

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops import nn
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=4))
    >>> x = g.add_variable(sp.float32, (2, 2), name="x"); sp.ops.map_linearly(g, x)
    >>> prog = P.Sequence(); y = nn.softmax(g, x, prog)
    >>> eng = sp.Engine(g, [prog]); eng.write_tensor(x, [[0, 0], [1000, 1000]]); eng.run(0)
    >>> eng.read_tensor(y).tolist()
    [[0.5, 0.5], [0.5, 0.5]]
    """
    return _softmax(graph, x, prog, dim, False, "softmax", name, options)


def log_softmax(graph: Graph, x: Tensor, prog: Any, *, dim: int = -1, name: str = "",
                options: Mapping[str, Any] | None = None) -> Tensor:
    """Numerically stable ``log(softmax(x))`` along ``dim``: ``x - max - log(sum(exp(x - max)))``.
    Layout as :func:`softmax`. No options.

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops import nn
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=4))
    >>> x = g.add_variable(sp.float32, (2,), name="x"); sp.ops.map_linearly(g, x)
    >>> prog = P.Sequence(); y = nn.log_softmax(g, x, prog)
    >>> eng = sp.Engine(g, [prog]); eng.write_tensor(x, [0, 0]); eng.run(0)
    >>> [round(v, 4) for v in eng.read_tensor(y).tolist()]
    [-0.6931, -0.6931]
    """
    return _softmax(graph, x, prog, dim, True, "log_softmax", name, options)


def _softmax(graph, x, prog, dim, log, op, name, options) -> Tensor:
    ctx, _ = _start(graph, prog, op, name, options, x)
    _check_float(ctx, x)
    x2, restore = _rows_along(ctx, x, dim)
    if x2.numel == 0:
        return restore(_variable(ctx, x.dtype, x2.shape, "out"))
    plan = _plan_rows(ctx, x2)
    out2 = _row_output(ctx, plan, x.dtype, x2.shape[1], "out")
    cs = ctx.compute_set()
    _add_rows(ctx, cs, C.softmax_rows_codelet(x.dtype, log), plan, {"x": x2, "out": out2},
              params={"n": x2.shape[1]})
    ctx.execute(cs)
    return restore(out2)


def softmax_grad(graph: Graph, y: Tensor, grad_out: Tensor, prog: Any, *, dim: int = -1,
                 name: str = "", options: Mapping[str, Any] | None = None) -> Tensor:
    """Input gradient of :func:`softmax` from its output ``y``: ``y * (dy - sum(dy * y))``.

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops import nn
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=4))
    >>> y = g.add_variable(sp.float32, (2,), name="y"); dy = g.add_variable(sp.float32, (2,), name="dy")
    >>> sp.ops.map_linearly(g, y); sp.ops.map_linearly(g, dy)
    >>> prog = P.Sequence(); dx = nn.softmax_grad(g, y, dy, prog)
    >>> eng = sp.Engine(g, [prog]); eng.write_tensor(y, [0.5, 0.5]); eng.write_tensor(dy, [1, 0])
    >>> eng.run(0); eng.read_tensor(dx).tolist()
    [0.25, -0.25]
    """
    return _softmax_grad(graph, y, grad_out, prog, dim, False, "softmax_grad", name, options)


def log_softmax_grad(graph: Graph, y: Tensor, grad_out: Tensor, prog: Any, *, dim: int = -1,
                     name: str = "", options: Mapping[str, Any] | None = None) -> Tensor:
    """Input gradient of :func:`log_softmax` from its output ``y``: ``dy - exp(y) * sum(dy)``.

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops import nn
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=4))
    >>> y = g.add_variable(sp.float32, (2,), name="y"); dy = g.add_variable(sp.float32, (2,), name="dy")
    >>> sp.ops.map_linearly(g, y); sp.ops.map_linearly(g, dy)
    >>> prog = P.Sequence(); dx = nn.log_softmax_grad(g, y, dy, prog)
    >>> eng = sp.Engine(g, [prog]); eng.write_tensor(y, [-0.6931472, -0.6931472])
    >>> eng.write_tensor(dy, [1, 0]); eng.run(0); [round(v, 4) for v in eng.read_tensor(dx).tolist()]
    [0.5, -0.5]
    """
    return _softmax_grad(graph, y, grad_out, prog, dim, True, "log_softmax_grad", name, options)


def _softmax_grad(graph, y, grad_out, prog, dim, log, op, name, options) -> Tensor:
    ctx, _ = _start(graph, prog, op, name, options, y, grad_out)
    _check_float(ctx, y)
    _check_same(ctx, y, grad_out)
    y2, restore = _rows_along(ctx, y, dim)
    dy2, _ = _rows_along(ctx, grad_out, dim)
    if y2.numel == 0:
        return restore(_variable(ctx, y.dtype, y2.shape, "dx"))
    plan = _plan_rows(ctx, dy2)
    dx2 = _row_output(ctx, plan, y.dtype, y2.shape[1], "dx")
    cs = ctx.compute_set()
    _add_rows(ctx, cs, C.softmax_grad_rows_codelet(y.dtype, log), plan,
              {"y": y2, "dy": dy2, "dx": dx2}, params={"n": y2.shape[1]})
    ctx.execute(cs)
    return restore(dx2)


# -- layer norm and group norm -----------------------------------------------------------------
def layer_norm(graph: Graph, x: Tensor, weight: Tensor | None, bias: Tensor | None, prog: Any, *,
               normalized_shape: Sequence[int] | None = None, eps: float = 1e-5, name: str = "",
               options: Mapping[str, Any] | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Layer norm over the last dims (``normalized_shape``; default: ``weight``'s shape, else the
    last dim): ``(x - mean) / sqrt(var + eps) * weight + bias``. ``weight``/``bias`` may be None.
    Returns ``(out, mean, inv_std)``; the statistics are fp32 of shape ``x.shape[:-d]`` (what
    :func:`layer_norm_grad` takes). Each vertex owns whole rows. No options.

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
    n = math.prod(shape)
    rows = x.numel // n
    x2 = x.reshape(rows, n)
    lead = x.shape[: x.ndim - len(shape)]
    if rows == 0:
        return (_variable(ctx, x.dtype, x.shape, "out"), _variable(ctx, float32, lead, "mean"),
                _variable(ctx, float32, lead, "inv_std"))
    wdtype = (weight if weight is not None else bias if bias is not None else x).dtype
    weight = weight if weight is not None else _constant(ctx, wdtype, shape, 1.0, "ones")
    bias = bias if bias is not None else _constant(ctx, wdtype, shape, 0.0, "zeros")
    plan = _plan_rows(ctx, x2)
    out2 = _row_output(ctx, plan, x.dtype, n, "out")
    mean, inv_std = (_row_output(ctx, plan, float32, 1, s) for s in ("mean", "inv_std"))
    cs = ctx.compute_set()
    _add_rows(ctx, cs, C.norm_rows_codelet(x.dtype, wdtype, False), plan,
              {"x": x2, "out": out2, "mean": mean, "inv_std": inv_std},
              shared={"weight": weight, "bias": bias}, params={"eps": float(eps)})
    ctx.execute(cs)
    return out2.reshape(x.shape), mean.reshape(lead), inv_std.reshape(lead)


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
    for sel in plan.groups():
        fields: dict[str, Any] = dict(params or {})
        length = int(plan.count[sel[0]] * plan.length[sel[0]])
        starts = (plan.n[sel] * c_ + plan.c0[sel]) * p_ + plan.p0[sel]
        for name, t in planes.items():
            fields[name] = rows_of(t.flatten(), starts, length)
        cnt = int(plan.count[sel[0]])
        for name, t in channels.items():
            q = t.shape[1]
            fields[name] = rows_of(t.flatten(), plan.c0[sel] * q, cnt * q)
        if partial is not None:
            at = ((plan.piece[sel] * n_ + plan.n[sel]) * c_ + plan.c0[sel]) * 2
            fields["partial"] = rows_of(partial.flatten(), at, cnt * 2)
        ctx.graph.add_vertices(cs, codelet, fields, plan.tiles[sel])


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
              bias: Tensor, eps: float, plan: _Planes | None = None) -> None:
    n, c = x.shape[:2]
    x3 = x.reshape(n, c, -1)
    plan = plan or _plan_planes(ctx, x3)
    cs = ctx.compute_set("apply")
    codelet = C.batch_norm_apply_codelet(x.dtype, mean.dtype, weight.dtype)
    _add_planes(ctx, cs, codelet, plan, {"x": x3, "out": out.reshape(x3.shape)},
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
    plan = _plan_planes(ctx, x3)
    mean, var = _bn_statistics(ctx, plan, x3, _constant(ctx, float32, (c,), 0.0, "zeros"), "moments")
    if opts["stable_algorithm"]:
        mean, var = _bn_statistics(ctx, plan, x3, mean, "centred_moments")
    _bn_apply(ctx, x, out, mean, var, *_affine(ctx, weight, bias, c, x.dtype), eps, plan)
    if opts["unbiased_var"]:
        var = _cast(ctx, var, float32, count / (count - 1) if count > 1 else math.nan, "unbiased_var")
    return out, mean, var


def _bn_statistics(ctx: OpContext, plan: _Planes, x3: Tensor, shift: Tensor, stage: str):
    """(mean, biased var) per channel from the moments of ``x - shift``."""
    n, c, p = plan.shape
    partial = _plane_partials(ctx, plan, f"{stage}/partials")
    cs = ctx.compute_set(stage)
    _add_planes(ctx, cs, C.plane_moments_codelet(x3.dtype), plan, {"x": x3},
                {"shift": shift.reshape(c, 1)}, partial)
    ctx.execute(cs)
    sums = _channel_sums(ctx, plan, partial)
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
    plan = _plan_planes(ctx, x3)
    stats = {"mean": mean.reshape(c, 1), "var": var.reshape(c, 1)}
    partial = _plane_partials(ctx, plan, "partials")
    cs = ctx.compute_set("sums")
    _add_planes(ctx, cs, C.batch_norm_grad_sums_codelet(x.dtype, mean.dtype), plan,
                {"dy": dy3, "x": x3}, stats, partial, params={"eps": float(eps)})
    ctx.execute(cs)
    sums = _channel_sums(ctx, plan, partial)
    blocks = _blocks_of(ctx, sums, 2)
    coef = _block_output(ctx, blocks, float32, c, 2, "coef")
    dweight, dbias = (_block_output(ctx, blocks, wdtype, c, 1, s) for s in ("dweight", "dbias"))
    cs = ctx.compute_set("finish")
    _add_blocks(ctx, cs, C.batch_norm_grad_finish_codelet(wdtype), blocks,
                {"sums": sums.reshape(c, 2), "coef": coef, "dweight": dweight, "dbias": dbias},
                params={"count": float(n * p)})
    ctx.execute(cs)
    cs = ctx.compute_set("dx")
    _add_planes(ctx, cs, C.batch_norm_grad_apply_codelet(x.dtype, mean.dtype, wdtype), plan,
                {"dy": dy3, "x": x3, "dx": dx.reshape(x3.shape)},
                stats | {"weight": w.reshape(c, 1), "coef": coef}, params={"eps": float(eps)})
    ctx.execute(cs)
    if weight is None:
        return dx, None, None
    return dx, dweight.reshape(c), dbias.reshape(c)


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
    """Tile of each plane's element ``(row, W // 2)`` of a ``(planes, rows, W)`` tensor."""
    planes = np.arange(t3.shape[0])
    return _tiles_at(ctx, t3, (planes, np.full(t3.shape[0], row), np.full(t3.shape[0], t3.shape[2] // 2)))


def _map_band(ctx: OpContext, t3: Tensor, r0: int, r1: int, tiles: np.ndarray) -> None:
    ctx.graph.set_tile_mappings(t3[:, r0:r1, :], tiles)


def _plane_rows(t: Tensor, planes: int, rows: int, width: int, r0: int, r1: int) -> Tensor:
    """Rows ``[r0, r1)`` of every plane of ``t`` (``planes x rows x width``) as vertex rows."""
    return rows_of(t.flatten(), np.arange(planes) * rows * width + r0 * width, (r1 - r0) * width)


def _pool(graph, x, prog, kernel, stride, padding, mode: PoolMode, op, name, options) -> Tensor:
    ctx, _ = _start(graph, prog, op, name, options, x)
    _check_float(ctx, x)
    g = _pool_geometry(ctx, x.shape, kernel, stride, padding)
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


# -- losses ----------------------------------------------------------------------------------------
def _class_inputs(ctx: OpContext, x: Tensor, labels: Tensor) -> tuple[int, int]:
    _check_float(ctx, x)
    if x.ndim != 2:
        raise ctx.error(f"needs (N, classes) input, got {x.name} {x.shape}")
    if labels.dtype is not int32 or labels.shape != x.shape[:1]:
        raise ctx.error(f"labels {labels.name} {labels.shape} ({labels.dtype}) must be int32 class "
                        f"indices of shape {x.shape[:1]} for {x.name} {x.shape}")
    if x.shape[1] == 0:
        raise ctx.error(f"{x.name} {x.shape} has no classes")
    return x.shape


def _scalar_output(ctx: OpContext, dtype: DType, near: Tensor, suffix: str = "loss") -> Tensor:
    """A 0-d variable on the tile of ``near``'s first element."""
    t = _variable(ctx, dtype, (), suffix)
    ctx.graph.set_tile_mapping(t, int(_tiles_at(ctx, near.flatten(), (np.zeros(1, np.int64),))[0]))
    return t


def _finish_loss(ctx: OpContext, sums: Tensor, dtype: DType, mean: bool) -> Tensor:
    """The 0-d loss from the reduced ``[sum(loss), count]``."""
    out = _scalar_output(ctx, dtype, sums)
    cs = ctx.compute_set("finish")
    tile = ctx.graph.tile_of(out).reshape(-1)
    ctx.graph.add_vertices(cs, C.loss_finish_codelet(dtype, mean),
                           {"sums": sums.reshape(1, 2), "out": out.reshape(1, 1)}, tile)
    ctx.execute(cs)
    return out


def _empty_loss(ctx: OpContext, dtype: DType, reduction: str, rows: int) -> Tensor:
    if reduction == "none":
        return _variable(ctx, dtype, (rows,), "loss")
    return _constant(ctx, dtype, (), np.nan if reduction == "mean" else 0.0, "loss")


def _class_loss(graph, x, labels, prog, reduction, ignore_index, log_input, op, name, options):
    ctx, _ = _start(graph, prog, op, name, options, x, labels)
    rows, _ = _class_inputs(ctx, x, labels)
    reduction = _reduction(ctx, reduction)
    if rows == 0:
        return _empty_loss(ctx, x.dtype, reduction, rows)
    plan = _plan_rows(ctx, x)
    reduce = reduction != "none"
    codelet = C.class_loss_rows_codelet(x.dtype, log_input, reduce)
    fields = {"x": x, "labels": labels.reshape(rows, 1)}
    cs = ctx.compute_set()
    if not reduce:
        out = _row_output(ctx, plan, x.dtype, 1, "loss")
        _add_rows(ctx, cs, codelet, plan, fields | {"out": out}, params={"ignore_index": ignore_index})
        ctx.execute(cs)
        return out.reshape(rows)
    partial = _vertex_output(ctx, plan, 2, "partials")
    _add_rows(ctx, cs, codelet, plan, fields, per_vertex={"out": partial},
              params={"ignore_index": ignore_index})
    ctx.execute(cs)
    return _finish_loss(ctx, _sum_rows(ctx, partial, plan.tiles, grain=2), x.dtype, reduction == "mean")


def nll_loss(graph: Graph, log_probs: Tensor, labels: Tensor, prog: Any, *, reduction: str = "mean",
             ignore_index: int = -100, name: str = "", options: Mapping[str, Any] | None = None) -> Tensor:
    """Negative log-likelihood of ``(N, classes)`` log-probabilities at int32 ``labels`` (torch's
    ``nll_loss``): ``reduction`` ``"mean"`` (over rows whose label is not ``ignore_index``; 0-d),
    ``"sum"`` (0-d) or ``"none"`` (``(N,)``). Labels out of range are clipped (the device cannot
    raise). No options.

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops import nn
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=4))
    >>> lp = g.add_variable(sp.float32, (2, 2), name="lp"); t = g.add_variable(sp.int32, (2,), name="t")
    >>> sp.ops.map_linearly(g, lp); sp.ops.map_linearly(g, t)
    >>> prog = P.Sequence(); loss = nn.nll_loss(g, lp, t, prog)
    >>> eng = sp.Engine(g, [prog]); eng.write_tensor(lp, [[-1, -2], [-3, -4]]); eng.write_tensor(t, [0, 1])
    >>> eng.run(0); float(eng.read_tensor(loss))
    2.5
    """
    return _class_loss(graph, log_probs, labels, prog, reduction, ignore_index, True, "nll_loss",
                       name, options)


def cross_entropy(graph: Graph, logits: Tensor, labels: Tensor, prog: Any, *, reduction: str = "mean",
                  ignore_index: int = -100, name: str = "",
                  options: Mapping[str, Any] | None = None) -> Tensor:
    """Cross-entropy of ``(N, classes)`` logits against int32 class indices, fused with a stable
    log-softmax (torch's ``cross_entropy``); reductions as :func:`nll_loss`. No options.

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops import nn
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=4))
    >>> z = g.add_variable(sp.float32, (1, 2), name="z"); t = g.add_variable(sp.int32, (1,), name="t")
    >>> sp.ops.map_linearly(g, z); sp.ops.map_linearly(g, t)
    >>> prog = P.Sequence(); loss = nn.cross_entropy(g, z, t, prog, reduction="sum")
    >>> eng = sp.Engine(g, [prog]); eng.write_tensor(z, [[0, 0]]); eng.write_tensor(t, [1])
    >>> eng.run(0); round(float(eng.read_tensor(loss)), 4)
    0.6931
    """
    return _class_loss(graph, logits, labels, prog, reduction, ignore_index, False, "cross_entropy",
                       name, options)


def _loss_coef(ctx: OpContext, grad_loss: Tensor, count: Tensor | None, scale: float) -> Tensor:
    """The fp32 ``(1,)`` factor every element's gradient carries: ``grad * scale`` or
    ``grad / count``."""
    if count is None:
        return _cast(ctx, grad_loss.reshape(1), float32, scale, "coef")
    coef = _variable(ctx, float32, (1,), "coef")
    tile = _tiles_at(ctx, count, (np.zeros(1, np.int64),))
    ctx.graph.set_tile_mapping(coef, int(tile[0]))
    g32 = _cast(ctx, grad_loss.reshape(1), float32, 1.0, "grad32")
    cs = ctx.compute_set("coef")
    ctx.graph.add_vertices(cs, C.LossGradCoef, {"grad": g32.reshape(1, 1), "count": count.reshape(1, 1),
                                                "coef": coef.reshape(1, 1)}, tile)
    ctx.execute(cs)
    return coef


def _valid_count(ctx: OpContext, labels: Tensor, ignore_index: int) -> Tensor:
    """``(1,)`` fp32 number of labels that are not ``ignore_index`` (two-stage reduction)."""
    starts, lengths, tiles = _regions(ctx.graph, labels)
    partial = _variable(ctx, float32, (starts.size, 1), "count_partials")
    ctx.graph.set_tile_mappings(partial, tiles)
    cs = ctx.compute_set("count")
    _add_regions(ctx, cs, C.ValidCount, labels, {"labels": labels}, per_region={"count": partial},
                 params={"ignore_index": ignore_index})
    ctx.execute(cs)
    return _sum_rows(ctx, partial, tiles)


def _class_loss_grad(graph, x, labels, grad_loss, prog, reduction, ignore_index, log_input, op, name,
                     options) -> Tensor:
    ctx, _ = _start(graph, prog, op, name, options, x, labels, grad_loss)
    rows, _ = _class_inputs(ctx, x, labels)
    reduction = _reduction(ctx, reduction)
    want = (rows,) if reduction == "none" else ()
    if grad_loss.shape != want or grad_loss.dtype != x.dtype:
        raise ctx.error(f"grad_loss {grad_loss.name} {grad_loss.shape} ({grad_loss.dtype}) must have "
                        f"shape {want} and dtype {x.dtype} for reduction {reduction!r}")
    if rows == 0:
        return _variable(ctx, x.dtype, x.shape, "dx")
    plan = _plan_rows(ctx, x)
    dx = _row_output(ctx, plan, x.dtype, x.shape[1], "dx")
    fields = {"x": x, "labels": labels.reshape(rows, 1), "dx": dx}
    shared = {}
    if reduction == "none":
        fields["g"] = grad_loss.reshape(rows, 1)
    else:
        count = _valid_count(ctx, labels, ignore_index) if reduction == "mean" else None
        shared["g"] = _loss_coef(ctx, grad_loss, count, 1.0)
    cs = ctx.compute_set()
    _add_rows(ctx, cs, C.class_loss_grad_rows_codelet(x.dtype, log_input, reduction == "none"), plan,
              fields, shared=shared, params={"ignore_index": ignore_index})
    ctx.execute(cs)
    return dx


def nll_loss_grad(graph: Graph, log_probs: Tensor, labels: Tensor, grad_loss: Tensor, prog: Any, *,
                  reduction: str = "mean", ignore_index: int = -100, name: str = "",
                  options: Mapping[str, Any] | None = None) -> Tensor:
    """Gradient of :func:`nll_loss` w.r.t. ``log_probs`` given the loss's upstream gradient
    ``grad_loss`` (0-d for mean/sum, ``(N,)`` for none): ``-grad`` (``/ count`` for mean) at each
    row's label, 0 elsewhere and on ignored rows. No options.

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops import nn
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=4))
    >>> lp = g.add_variable(sp.float32, (2, 2), name="lp"); t = g.add_variable(sp.int32, (2,), name="t")
    >>> one = g.add_variable(sp.float32, (), name="one")
    >>> for v in (lp, t, one): sp.ops.map_linearly(g, v)
    >>> prog = P.Sequence(); d = nn.nll_loss_grad(g, lp, t, one, prog)
    >>> eng = sp.Engine(g, [prog]); eng.write_tensor(t, [0, 1]); eng.write_tensor(one, 1.0)
    >>> eng.run(0); eng.read_tensor(d).tolist()
    [[-0.5, 0.0], [0.0, -0.5]]
    """
    return _class_loss_grad(graph, log_probs, labels, grad_loss, prog, reduction, ignore_index, True,
                            "nll_loss_grad", name, options)


def cross_entropy_grad(graph: Graph, logits: Tensor, labels: Tensor, grad_loss: Tensor, prog: Any, *,
                       reduction: str = "mean", ignore_index: int = -100, name: str = "",
                       options: Mapping[str, Any] | None = None) -> Tensor:
    """Gradient of :func:`cross_entropy` w.r.t. the logits: ``(softmax - onehot) * grad``
    (``/ count`` for mean), 0 on ignored rows. No options.

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops import nn
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=4))
    >>> z = g.add_variable(sp.float32, (1, 2), name="z"); t = g.add_variable(sp.int32, (1,), name="t")
    >>> one = g.add_variable(sp.float32, (), name="one")
    >>> for v in (z, t, one): sp.ops.map_linearly(g, v)
    >>> prog = P.Sequence(); d = nn.cross_entropy_grad(g, z, t, one, prog)
    >>> eng = sp.Engine(g, [prog]); eng.write_tensor(t, [1]); eng.write_tensor(one, 1.0)
    >>> eng.run(0); eng.read_tensor(d).tolist()
    [[0.5, -0.5]]
    """
    return _class_loss_grad(graph, logits, labels, grad_loss, prog, reduction, ignore_index, False,
                            "cross_entropy_grad", name, options)


def mse_loss(graph: Graph, x: Tensor, target: Tensor, prog: Any, *, reduction: str = "mean",
             name: str = "", options: Mapping[str, Any] | None = None) -> Tensor:
    """Mean squared error ``(x - target)^2``, ``reduction`` ``"mean"``/``"sum"`` (0-d, fp32
    accumulation over the tiles' regions, then across tiles) or ``"none"``. No options.

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops import nn
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=4))
    >>> x, t = (g.add_variable(sp.float32, (2,), name=n) for n in ("x", "t"))
    >>> sp.ops.map_linearly(g, x); sp.ops.map_linearly(g, t)
    >>> prog = P.Sequence(); loss = nn.mse_loss(g, x, t, prog)
    >>> eng = sp.Engine(g, [prog]); eng.write_tensor(x, [1, 2]); eng.write_tensor(t, [0, 0])
    >>> eng.run(0); float(eng.read_tensor(loss))
    2.5
    """
    ctx, _ = _start(graph, prog, "mse_loss", name, options, x, target)
    _check_float(ctx, x)
    _check_same(ctx, x, target)
    reduction = _reduction(ctx, reduction)
    if reduction == "none":
        out = _output_like(ctx, x, x.dtype, "loss")
        if x.numel:
            cs = ctx.compute_set()
            _add_regions(ctx, cs, C.mse_codelet(x.dtype, False), out, {"x": x, "t": target, "out": out})
            ctx.execute(cs)
        return out
    if x.numel == 0:
        return _empty_loss(ctx, x.dtype, reduction, 0)
    starts, _, tiles = _regions(ctx.graph, x)
    partial = _variable(ctx, float32, (starts.size, 1), "partials")
    ctx.graph.set_tile_mappings(partial, tiles)
    cs = ctx.compute_set()
    _add_regions(ctx, cs, C.mse_codelet(x.dtype, True), x, {"x": x, "t": target},
                 per_region={"out": partial})
    ctx.execute(cs)
    total = _sum_rows(ctx, partial, tiles)
    scale = 1.0 / x.numel if reduction == "mean" else 1.0
    return _cast(ctx, total, x.dtype, scale, "loss").reshape(())


def mse_loss_grad(graph: Graph, x: Tensor, target: Tensor, grad_loss: Tensor, prog: Any, *,
                  reduction: str = "mean", name: str = "",
                  options: Mapping[str, Any] | None = None) -> Tensor:
    """Gradient of :func:`mse_loss` w.r.t. ``x``: ``2 (x - target) * grad`` (``/ numel`` for
    mean); ``grad_loss`` is 0-d for mean/sum and ``x``-shaped for none. No options.

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops import nn
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=4))
    >>> x, t = (g.add_variable(sp.float32, (2,), name=n) for n in ("x", "t"))
    >>> one = g.add_variable(sp.float32, (), name="one")
    >>> for v in (x, t, one): sp.ops.map_linearly(g, v)
    >>> prog = P.Sequence(); d = nn.mse_loss_grad(g, x, t, one, prog)
    >>> eng = sp.Engine(g, [prog]); eng.write_tensor(x, [1, 2]); eng.write_tensor(one, 1.0)
    >>> eng.run(0); eng.read_tensor(d).tolist()
    [1.0, 2.0]
    """
    ctx, _ = _start(graph, prog, "mse_loss_grad", name, options, x, target, grad_loss)
    _check_float(ctx, x)
    _check_same(ctx, x, target)
    reduction = _reduction(ctx, reduction)
    want = x.shape if reduction == "none" else ()
    if grad_loss.shape != want or grad_loss.dtype != x.dtype:
        raise ctx.error(f"grad_loss {grad_loss.name} {grad_loss.shape} ({grad_loss.dtype}) must have "
                        f"shape {want} and dtype {x.dtype} for reduction {reduction!r}")
    dx = _output_like(ctx, x, x.dtype, "dx")
    if x.numel == 0:
        return dx
    cs_fields: dict[str, Tensor] = {"x": x, "t": target, "dx": dx}
    shared = {}
    if reduction == "none":
        cs_fields["g"] = grad_loss
    else:
        shared["g"] = _loss_coef(ctx, grad_loss, None, 1.0 / x.numel if reduction == "mean" else 1.0)
    cs = ctx.compute_set()
    _add_regions(ctx, cs, C.mse_grad_codelet(x.dtype, reduction == "none"), dx, cs_fields,
                 shared=shared, params={"scale": 1.0})
    ctx.execute(cs)
    return dx
