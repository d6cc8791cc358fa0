"""Dynamic sparse products (popsparse::dynamic-shaped): the pattern is device data.

A layer is planned for a maximum number of non-zero blocks (:class:`FullyConnectedParams`,
``with_nz_ratio`` / ``with_num_nonzero_values``); any pattern up to that many non-zeros runs with
the same compiled program: write new meta-information and values with ``Engine.write_tensor``
and run again. The weights ``W`` are ``(output_size, input_size)`` in square blocks of 1, 4, 8 or
16; the dense activations are ``(batch, input_size)``.

Plan (:func:`plan_fully_connected`): ``W``'s block grid is cut into ``qx x qy`` partitions (output
blocks x input blocks) and the batch into ``qz`` groups, one (partition, group) per tile; each group
works on its own copy of the buckets (broadcast at the start of an op: cheap while the weights are
sparse, and it divides the activations' exchange by ``qz``). Each partition has a *bucket*: a
meta-information row (layout in :mod:`softipu.codelets.sparse_dynamic`) and room for ``capacity``
non-zero blocks, ``capacity = ceil(max_nz_blocks / partitions x (1 +
metaInfoBucketOversizeProportion))`` as popsparse sizes its buckets. The host encoder
(:meth:`FCPlan.encode`) puts each non-zero block in its partition's bucket; a partition with more
blocks than its bucket holds spills them into the nearest buckets with room (popsparse's overflow
allocation "for speed": shortest distance), and a pattern with more non-zeros than planned is an
:class:`OpError` naming the tensor and the line.

Program of every op: the partition's vertex works on its own bucket; then, while the pattern's
``steps`` (the longest spill distance, in the meta-information) is not reached, every bucket moves
one partition along (an exchange) and each vertex works on the entries that belong to it
(popsparse's propagation phase, a run-time loop, so a pattern without spills pays none). Passes
that write bucket-shaped results (grad-W, embedding update) move those back the same number of
steps. Partial sums are fp32 (popsparse's default ``partialsType``) and reduced over the
partitions that share an output (``popops`` reduce), then cast to the data type.

Ops: :func:`fully_connected_fwd` ``(batch, out) = act . W^T``; :func:`fully_connected_grad_a`
``(batch, in) = grad . W``; :func:`fully_connected_sparse_grad_w` (``grad^T . act`` at the
pattern's blocks, in the values' layout); :func:`sparse_dense_matmul` ``(M, N) = S (M, K) . D``;
:func:`embedding_slice` (rows of ``W``) and :func:`embedding_update_add`.

Options (popsparse's names): ``metaInfoBucketOversizeProportion`` (0.3); ``partialsType`` ("float"
only); ``planConstraints`` (a dict fixing any of the partition counts ``qx``, ``qy``, ``qz``);
``availableMemoryProportion``, ``doGradAPass``, ``doGradWPass``, ``sharedBuckets`` are accepted and
do not change the plan (buckets are always shared by the three passes). Not done: grouped layers
(``numGroups`` > 1), non-square blocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from softipu.codelets.sparse import BLOCK_SIZES
from softipu.codelets.sparse_dynamic import (
    META_HEADER,
    count_down_codelet,
    dynamic_fc_codelet,
    dynamic_slice_codelet,
    fill_buckets,
    fwd_cycles,
)
from softipu.debug import at, caller_location
from softipu.dtypes import DType, as_dtype, float32, int32
from softipu.graph import program as P
from softipu.graph.graph import Graph
from softipu.graph.tensor import Tensor, concat
from softipu.ops.common import OpContext, OpError, parse_options
from softipu.ops.mapping import map_linearly

__all__ = ["FullyConnectedParams", "FCPlan", "SparseTensor", "plan_fully_connected",
           "create_fully_connected_weights", "create_fully_connected_input", "fully_connected_fwd",
           "fully_connected_grad_a", "fully_connected_sparse_grad_w", "fully_connected_sparse_grad_w_t",
           "sparse_dense_matmul",
           "embedding_slice", "embedding_update_add", "DEFAULT_OPTIONS"]

DEFAULT_OPTIONS = {"metaInfoBucketOversizeProportion": 0.3, "availableMemoryProportion": 0.6,
                   "partialsType": "float", "doGradAPass": False, "doGradWPass": False, "sharedBuckets": True,
                   "planConstraints": {}}


@dataclass(frozen=True)
class FullyConnectedParams:
    """A dynamic sparse layer: ``W`` ``(output_size, input_size)`` in ``block_size`` blocks, at most
    ``max_nz_blocks`` of them non-zero, applied to ``batch_size`` rows."""

    block_size: int
    input_size: int
    output_size: int
    batch_size: int
    max_nz_blocks: int
    name: str = "weights"

    def __post_init__(self) -> None:
        b = self.block_size
        where = f"dynamic sparse params {self.name!r}{at(caller_location())}"
        if b not in BLOCK_SIZES:
            raise OpError(f"{where}: block size {b} is not supported; popsparse takes "
                          f"{', '.join(map(str, BLOCK_SIZES))}")
        if min(self.input_size, self.output_size, self.batch_size) <= 0 or self.input_size % b or \
                self.output_size % b:
            raise OpError(f"{where}: input {self.input_size} and output {self.output_size} must be positive "
                          f"multiples of the block size {b}, batch {self.batch_size} positive")
        if not 0 < self.max_nz_blocks <= self.total_blocks:
            raise OpError(f"{where}: {self.max_nz_blocks} non-zero blocks planned; must be 1.."
                          f"{self.total_blocks}")

    @property
    def total_blocks(self) -> int:
        return (self.input_size // self.block_size) * (self.output_size // self.block_size)

    @classmethod
    def with_nz_ratio(cls, block_size: int, nz_ratio: float, batch_size: int, input_size: int,
                      output_size: int, name: str = "weights") -> FullyConnectedParams:
        """popsparse's ``createWithNzRatio``: room for ``nz_ratio`` of the blocks (rounded up)."""
        total = (input_size // block_size) * (output_size // block_size)
        if not 0 < nz_ratio <= 1:
            raise OpError(f"dynamic sparse params {name!r}{at(caller_location())}: nz_ratio {nz_ratio} must "
                          "be in (0, 1]")
        return cls(block_size, input_size, output_size, batch_size, max(1, math.ceil(nz_ratio * total)), name)

    @classmethod
    def with_num_nonzero_values(cls, block_size: int, num_values: int, batch_size: int, input_size: int,
                                output_size: int, name: str = "weights") -> FullyConnectedParams:
        """popsparse's ``createWithNumNonZeroValues``: room for ``num_values`` elements."""
        return cls(block_size, input_size, output_size, batch_size,
                   max(1, -(-num_values // (block_size * block_size))), name)


@dataclass(frozen=True, eq=False)
class FCPlan:
    """How a layer's buckets lie over the tiles (see the module docstring)."""

    params: FullyConnectedParams
    dtype: DType
    qx: int
    qy: int
    capacity: int
    tile_grid: np.ndarray  # the tile of vertex (z, p): tile_grid[z * partitions + p]
    oversize: float
    qz: int = 1

    @property
    def partitions(self) -> int:
        """The buckets: ``qx x qy`` partitions of ``W``'s blocks."""
        return self.qx * self.qy

    @property
    def tiles(self) -> np.ndarray:
        """Bucket ``p``'s tile (the first batch group's)."""
        return self.tile_grid[:self.partitions]

    @property
    def xw(self) -> int:  # output blocks per partition
        return self.params.output_size // self.params.block_size // self.qx

    @property
    def yw(self) -> int:  # input blocks per partition
        return self.params.input_size // self.params.block_size // self.qy

    @property
    def meta_length(self) -> int:
        return META_HEADER + 3 * self.capacity

    def _where(self, name: str) -> str:
        return f"FCPlan.encode of dynamic sparse weights {name or self.params.name!r}{at(caller_location())}"

    def encode(self, rows: Any, cols: Any, values: Any, *, name: str = "") -> tuple[np.ndarray, np.ndarray]:
        """``(meta_info, nz_values)`` host arrays of the pattern with non-zero blocks at block-rows
        ``rows``, block-columns ``cols`` and values ``values`` ``(n, b, b)`` (COO by blocks)."""
        p, b = self.params, self.params.block_size
        rows = np.asarray(rows, np.int64).reshape(-1)
        cols = np.asarray(cols, np.int64).reshape(-1)
        values = np.asarray(values).reshape(rows.size, b, b)
        where = self._where(name)
        if cols.size != rows.size:
            raise OpError(f"{where}: {rows.size} block-rows but {cols.size} block-columns")
        nrb, ncb = p.output_size // b, p.input_size // b
        bad = np.flatnonzero((rows < 0) | (rows >= nrb) | (cols < 0) | (cols >= ncb))
        if bad.size:
            i = int(bad[0])
            raise OpError(f"{where}: block {i} at ({int(rows[i])}, {int(cols[i])}) is out of range for "
                          f"{nrb} x {ncb} blocks of {b}")
        if np.unique(rows * ncb + cols).size != rows.size:
            raise OpError(f"{where}: the pattern names a block twice")
        if rows.size > p.max_nz_blocks:
            raise OpError(f"{where}: the pattern has {rows.size} non-zero blocks but the plan holds at most "
                          f"{p.max_nz_blocks} ({self.partitions} buckets of {self.capacity}): plan the layer "
                          "with a larger nz_ratio / number of non-zero values")
        meta, slot_of = self.meta_of(rows, cols)
        nz = np.zeros((self.partitions, self.capacity, b, b), self.dtype.numpy)
        nz.reshape(-1, b, b)[slot_of] = values
        return meta, nz

    def meta_of(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The meta-information of a pattern and each block's flat slot (bucket x capacity + slot)."""
        return fill_buckets(rows, cols, self.xw, self.yw, self.qy, self.partitions, self.capacity)

    def encode_dense(self, dense: Any, *, name: str = "") -> tuple[np.ndarray, np.ndarray]:
        """:meth:`encode` of the blocks of ``dense`` ``(output_size, input_size)`` with any non-zero."""
        b = self.params.block_size
        d = np.asarray(dense).reshape(self.params.output_size // b, b, self.params.input_size // b, b)
        r, c = np.nonzero(np.any(d != 0, axis=(1, 3)))
        return self.encode(r, c, d[r, :, c, :], name=name)

    def decode(self, meta: Any, nz: Any) -> np.ndarray:
        """The dense ``W`` of ``meta`` and values ``nz`` (bucket-shaped, e.g. a grad-W result)."""
        p, b = self.params, self.params.block_size
        meta = np.asarray(meta).reshape(self.partitions, self.meta_length)
        nz = np.asarray(nz).reshape(self.partitions, self.capacity, b, b)
        ent = meta[:, META_HEADER:].reshape(self.partitions, self.capacity, 3)
        v, e = np.nonzero(np.arange(self.capacity)[None, :] < meta[:, 1:2])
        pid = ent[v, e, 0]
        rows = pid // self.qy * self.xw + ent[v, e, 1]
        cols = pid % self.qy * self.yw + ent[v, e, 2]
        out = np.zeros((p.output_size // b, b, p.input_size // b, b), nz.dtype)
        out[rows, :, cols, :] = nz[v, e]
        return out.reshape(p.output_size, p.input_size)


@dataclass(frozen=True, eq=False)
class SparseTensor:
    """popsparse's ``SparseTensor{metaInfo, nzValues}``, with the plan they were made for."""

    meta_info: Tensor
    nz_values: Tensor
    plan: FCPlan = field(repr=False)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _plan_cycles(graph: Graph, params: FullyConnectedParams, dtype: DType, qx: int, qy: int, qz: int,
                 oversize: float) -> int:
    """The planner's estimate of a forward pass cut ``qx x qy`` (and the batch in ``qz``): the
    busiest vertex (the codelet's own estimate at the bucket's capacity), the exchange bringing in
    its activations and its bucket's copy and taking out its partials, and the reduction of the
    ``qy`` partials spread over every tile (the compiler's exchange rule,
    ``Target.exchange_phase_cycles``)."""
    target, b = graph.target, params.block_size
    z = params.batch_size // qz
    xw, yw = params.output_size // b // qx, params.input_size // b // qy
    cap = max(1, math.ceil(params.max_nz_blocks / (qx * qy) * (1 + oversize)))
    compute = fwd_cycles(cap * b * b, z * xw * b, np.asarray([z]), b, dtype, target)
    bucket = (cap * b * b * dtype.itemsize + (META_HEADER + 3 * cap) * 4) if qz > 1 else 0
    move = target.exchange_phase_cycles(z * (yw * b * dtype.itemsize + xw * b * 4) + bucket, 2 * z + 2)
    reduce = 0
    if qy > 1:
        per_tile = qy * params.batch_size * params.output_size * 4 // graph.num_tiles + 1
        reduce = target.exchange_phase_cycles(per_tile, 1) + per_tile // 4
    return int(compute + move + reduce)


def plan_fully_connected(graph: Graph, params: FullyConnectedParams, dtype: Any,
                         options: dict | None = None) -> FCPlan:
    """The partitions, bucket capacity and tiles of a layer (see the module docstring): of the cuts
    ``qx x qy`` of the blocks and ``qz`` of the batch that divide them and fit the tiles, the one
    :func:`_plan_cycles` prices lowest."""
    ctx = OpContext.start(graph, P.Sequence(), "plan_fully_connected", params.name)
    opts = parse_options(ctx, options, DEFAULT_OPTIONS)
    if str(opts["partialsType"]).lower() != "float":
        raise ctx.error(f"partialsType {opts['partialsType']!r}: only 'float' partials are modelled")
    oversize = float(opts["metaInfoBucketOversizeProportion"])
    if not 0 <= oversize:
        raise ctx.error(f"metaInfoBucketOversizeProportion {oversize} must be >= 0")
    b, dtype = params.block_size, as_dtype(dtype)
    nx, ny = params.output_size // b, params.input_size // b
    tiles = graph.num_tiles
    fixed = dict(opts["planConstraints"])
    if set(fixed) - {"qx", "qy", "qz"}:
        raise ctx.error(f"planConstraints {fixed} may fix only 'qx', 'qy' and 'qz'")
    cuts = [(qx, qy, qz) for qx in _divisors(nx) for qy in _divisors(ny) if qx * qy <= tiles
            for qz in _divisors(params.batch_size) if qx * qy * qz <= tiles
            if all(fixed.get(k, v) == v for k, v in (("qx", qx), ("qy", qy), ("qz", qz)))]
    if not cuts:
        raise ctx.error(f"planConstraints {fixed} leave no cut of {nx} x {ny} blocks and batch "
                        f"{params.batch_size} over {tiles} tiles")
    qx, qy, qz = min(cuts, key=lambda c: (_plan_cycles(graph, params, dtype, *c, oversize), -c[0] * c[1],
                                          c[2]))
    cap = max(1, math.ceil(params.max_nz_blocks / (qx * qy) * (1 + oversize)))
    count = qx * qy * qz
    return FCPlan(params, dtype, qx, qy, cap, np.arange(count, dtype=np.int64) * tiles // count, oversize, qz)


def create_fully_connected_weights(graph: Graph, dtype: Any, params: FullyConnectedParams, *, name: str = "",
                                   options: dict | None = None) -> SparseTensor:
    """The bucket tensors of a layer: ``meta_info`` ``(partitions, 2 + 3 capacity)`` int32 and
    ``nz_values`` ``(partitions, capacity, b, b)``, bucket ``p`` on partition ``p``'s tile.

    >>> import numpy as np, softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops import sparse_dynamic as sd
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=4)); prog = P.Sequence()
    >>> fc = sd.FullyConnectedParams.with_nz_ratio(4, 0.5, 2, 8, 8)
    >>> w = sd.create_fully_connected_weights(g, sp.float32, fc)
    >>> x = sd.create_fully_connected_input(g, sp.float32, fc)
    >>> y = sd.fully_connected_fwd(g, w, x, prog, params=fc)
    >>> eng = sp.Engine(g, [prog]); meta, nz = w.plan.encode([0, 1], [0, 1], np.stack([np.eye(4)] * 2))
    >>> eng.write_tensor(w.meta_info, meta); eng.write_tensor(w.nz_values, nz)
    >>> eng.write_tensor(x, np.ones((2, 8))); eng.run(0); float(eng.read_tensor(y).sum())
    16.0
    """
    plan = plan_fully_connected(graph, params, dtype, options)
    name = name or params.name
    b = params.block_size
    meta = graph.add_variable(int32, (plan.partitions, plan.meta_length), name=f"{name}/metaInfo")
    nz = graph.add_variable(plan.dtype, (plan.partitions, plan.capacity, b, b), name=f"{name}/nzValues")
    graph.set_tile_mappings(meta, plan.tiles)
    graph.set_tile_mappings(nz, plan.tiles)
    return SparseTensor(meta, nz, plan)


def create_fully_connected_input(graph: Graph, dtype: Any, params: FullyConnectedParams, *,
                                 name: str = "") -> Tensor:
    """The dense activations ``(batch_size, input_size)``, spread linearly over the tiles."""
    t = graph.add_variable(as_dtype(dtype), (params.batch_size, params.input_size),
                           name=name or f"{params.name}/input")
    map_linearly(graph, t)
    return t


# -- the bucket machinery --------------------------------------------------------------------------
# An op runs ``groups`` copies of the buckets (the plan's batch groups ``qz`` for the products, 1
# for the embedding ops): vertex ``z * partitions + p`` works on bucket ``p`` for batch group ``z``
# on ``plan.tile_grid[z * partitions + p]``.

def _like(graph: Graph, t: Tensor, plan: FCPlan, name: str, groups: int = 1) -> Tensor:
    out = graph.add_variable(t.dtype, (groups * t.shape[0],) + t.shape[1:], name=name)
    graph.set_tile_mappings(out, plan.tile_grid[:out.shape[0]])
    return out


def _rotate(ctx: OpContext, plan: FCPlan, tensors: list[Tensor], back: bool, groups: int) -> P.Sequence:
    """Move every bucket one partition along within its group (``back``: the other way)."""
    body = P.Sequence()
    n = plan.partitions
    for t in tensors:
        g3 = t.reshape((groups, n, -1))
        moved = concat([g3[:, 1:n], g3[:, 0:1]], axis=1) if back else concat([g3[:, n - 1:n], g3[:, 0:n - 1]],
                                                                             axis=1)
        tmp = _like(ctx.graph, t, plan, f"{ctx.name}/{t.name.rsplit('/', 1)[-1]}_moved")
        body.add(P.Copy(moved, tmp.reshape((groups, n, -1))))
        body.add(P.Copy(tmp, t))
    return body


def _counter(ctx: OpContext, plan: FCPlan, meta: Tensor) -> tuple[P.Sequence, P.Sequence, Tensor]:
    """The propagation loop's init and turn programs and its predicate."""
    graph = ctx.graph
    tile = int(plan.tiles[0])
    counter = graph.add_variable(int32, (1,), name=f"{ctx.name}/steps_left")
    go = graph.add_variable(int32, (1,), name=f"{ctx.name}/propagate")
    graph.set_tile_mapping(counter, tile)
    graph.set_tile_mapping(go, tile)
    progs = []
    for init in (1, 0):
        cs = ctx.compute_set("propagation_init" if init else "propagation_count")
        graph.add_vertex(cs, count_down_codelet(), {"counter": counter, "go": go, "steps": meta[0, 0:1],
                                                    "init": init}, tile=tile)
        progs.append(P.Sequence([P.Execute(cs)]))
    return progs[0], progs[1], go


def _run_buckets(ctx: OpContext, plan: FCPlan, meta: Tensor, moving: list[Tensor], written: list[Tensor],
                 step: P.Program, groups: int) -> None:
    """``step`` on the buckets as they lie, then once per propagation step after moving
    ``moving``; then ``written`` moved back home."""
    ctx.prog.add(step)
    if plan.partitions == 1:
        return
    init, turn, go = _counter(ctx, plan, meta)
    ctx.prog.add(init)
    body = _rotate(ctx, plan, moving, False, groups)
    body.add(step)
    ctx.prog.add(P.RepeatWhileTrue(turn, go, body))
    if written:
        ctx.prog.add(init)
        ctx.prog.add(P.RepeatWhileTrue(turn, go, _rotate(ctx, plan, written, True, groups)))


def _working(ctx: OpContext, plan: FCPlan, t: Tensor, suffix: str, groups: int = 1) -> Tensor:
    """A copy of bucket tensor ``t`` for each group (on-tile for the first) to move around."""
    w = _like(ctx.graph, t, plan, f"{ctx.name}/{suffix}", groups)
    ctx.prog.add(P.Copy(concat([t] * groups) if groups > 1 else t, w))
    return w


def _ranges(plan: FCPlan, along_x: bool, groups: int) -> tuple[np.ndarray, int]:
    """Each vertex's first column (in elements) of its X or Y range, and the range's width."""
    b = plan.params.block_size
    w = (plan.xw if along_x else plan.yw) * b
    part = np.tile(np.arange(plan.partitions), groups)
    return (part // plan.qy if along_x else part % plan.qy) * w, w


def _dense_index(plan: FCPlan, rows: int, width: int, along_x: bool, groups: int = 1) -> np.ndarray:
    """Per vertex, the flat indices of its batch group's rows of a dense ``(rows, width)`` operand
    at the columns of its X (``along_x``) or Y range: ``(groups * partitions, rows / groups * w)``."""
    start, w = _ranges(plan, along_x, groups)
    zg = rows // groups
    z0 = np.repeat(np.arange(groups) * zg, plan.partitions)
    r = z0[:, None] + np.arange(zg)[None, :]
    cols = start[:, None] + np.arange(w)[None, :]
    return (r[:, :, None] * width + cols[:, None, :]).reshape(len(start), -1)


def _row_index(plan: FCPlan, length: int, along_x: bool, groups: int = 1) -> np.ndarray:
    """Per vertex, the flat indices of the rows of a dense ``(n, length)`` operand its X
    (``along_x``) or Y range covers, at its batch group's columns: ``(groups * partitions, w *
    length / groups)``."""
    start, w = _ranges(plan, along_x, groups)
    zg = length // groups
    z0 = np.repeat(np.arange(groups) * zg, plan.partitions)
    rows = start[:, None] + np.arange(w)[None, :]
    cols = z0[:, None] + np.arange(zg)[None, :]
    return (rows[:, :, None] * length + cols[:, None, :]).reshape(len(start), -1)


def _partials(ctx: OpContext, plan: FCPlan, rows: int, along_x: bool,
              groups: int = 1) -> tuple[Tensor, Tensor]:
    """Zeroed fp32 partials ``(layers, pieces, rows, w * b)``: vertex ``(z, p)`` writes batch
    group ``z``'s rows of the piece ``[its other index, its own index]``, contiguous, on its tile,
    where its own index is along X (``along_x``: the output's columns, one layer per Y partition)
    or Y. Returns them and the vertices' ``(groups * partitions, rows / groups * w * b)`` view."""
    graph, b = ctx.graph, plan.params.block_size
    width = (plan.xw if along_x else plan.yw) * b
    layers, pieces = (plan.qy, plan.qx) if along_x else (plan.qx, plan.qy)
    parts = graph.add_variable(float32, (layers, pieces, rows, width), name=f"{ctx.name}/partials")
    part = np.arange(plan.partitions)
    px, py = part // plan.qy, part % plan.qy
    piece = py * pieces + px if along_x else px * pieces + py  # bucket p's piece
    slot = (piece[None, :] * groups + np.arange(groups)[:, None]).reshape(-1)  # vertex (z, p)
    flat = parts.reshape((layers * pieces * groups, rows // groups * width))
    tiles = np.empty(layers * pieces * groups, np.int64)
    tiles[slot] = plan.tile_grid[:groups * plan.partitions]
    graph.set_tile_mappings(flat, tiles)
    from softipu.ops.indexing import zero  # same layer

    zero(graph, parts, ctx.prog, name=f"{ctx.name}/zero")
    return parts, flat[slot]


def _finish(ctx: OpContext, parts: Tensor, dtype: DType) -> Tensor:
    """The sum of the partials over their layers, ``(rows, pieces * w * b)``, in ``dtype``."""
    from softipu.ops.elementwise import cast
    from softipu.ops.reduce import reduce

    layers, pieces, rows, width = parts.shape
    out = parts[0] if layers == 1 else reduce(ctx.graph, parts, ctx.prog, dims=0, name=f"{ctx.name}/reduce")
    if dtype is not float32:
        out = cast(ctx.graph, out, dtype, ctx.prog, name=f"{ctx.name}/cast")
    return out.transpose(1, 0, 2).reshape((rows, pieces * width))


def _check_weights(ctx: OpContext, weights: Any, params: FullyConnectedParams) -> FCPlan:
    if not isinstance(weights, SparseTensor):
        raise ctx.error(f"weights must be an ops.sparse_dynamic.SparseTensor, got {type(weights).__name__}")
    plan = weights.plan
    if plan.params != params:
        raise ctx.error(f"weights {weights.nz_values.name} were planned for {plan.params}, not {params}")
    return plan


def _check_dense(ctx: OpContext, t: Tensor, shape: tuple[int, int], what: str, dtype: DType) -> None:
    if t.shape != shape:
        raise ctx.error(f"{what} {t.name} has shape {t.shape}; the layer's params need {shape}")
    if t.dtype is not dtype:
        raise ctx.error(f"{what} {t.name} is {t.dtype}; the weights are {dtype}")


def _fc_vertices(ctx: OpContext, plan: FCPlan, pass_: str, fields: dict) -> P.Program:
    cs = ctx.compute_set(pass_)
    count = plan.qz * plan.partitions
    fields = dict(fields, pid=np.tile(np.arange(plan.partitions), plan.qz),
                  batch=np.full(count, plan.params.batch_size // plan.qz))
    codelet = dynamic_fc_codelet(plan.dtype, plan.params.block_size, pass_)
    ctx.graph.add_vertices(cs, codelet, fields, plan.tile_grid[:count])
    return P.Execute(cs)


def _product(ctx: OpContext, plan: FCPlan, weights: SparseTensor, dense: Tensor, pass_: str) -> Tensor:
    """The forward (``dense`` the activations) or grad-A pass (``dense`` the gradients)."""
    p, g = plan.params, plan.qz
    fwd = pass_ == "fwd"
    parts, out_f = _partials(ctx, plan, p.batch_size, fwd, g)
    meta = _working(ctx, plan, weights.meta_info, "metaInfo", g)
    nz = _working(ctx, plan, weights.nz_values, "nzValues", g)
    width = p.input_size if fwd else p.output_size
    index = _dense_index(plan, p.batch_size, width, not fwd, g)  # fwd: Y range of act; grad-A: X of grad
    fields = {"meta": meta, "nz": nz.reshape((g * plan.partitions, -1)), "out": out_f,
              ("act" if fwd else "grad"): dense.flatten()[index]}
    _run_buckets(ctx, plan, weights.meta_info, [meta, nz], [], _fc_vertices(ctx, plan, pass_, fields), g)
    return _finish(ctx, parts, plan.dtype)


def fully_connected_fwd(graph: Graph, weights: SparseTensor, activations: Tensor, prog: Any, *,
                        params: FullyConnectedParams, name: str = "", options: dict | None = None) -> Tensor:
    """``activations (batch, in) . W^T`` -> ``(batch, out)`` (popsparse's ``fullyConnectedFwd``)."""
    ctx = OpContext.start(graph, prog, "fully_connected_fwd", name, activations)
    parse_options(ctx, options, DEFAULT_OPTIONS)
    plan = _check_weights(ctx, weights, params)
    _check_dense(ctx, activations, (params.batch_size, params.input_size), "activations", plan.dtype)
    return _product(ctx, plan, weights, activations, "fwd")


def fully_connected_grad_a(graph: Graph, weights: SparseTensor, gradients: Tensor, prog: Any, *,
                           params: FullyConnectedParams, name: str = "",
                           options: dict | None = None) -> Tensor:
    """``gradients (batch, out) . W`` -> ``(batch, in)`` (popsparse's ``fullyConnectedGradA``)."""
    ctx = OpContext.start(graph, prog, "fully_connected_grad_a", name, gradients)
    parse_options(ctx, options, DEFAULT_OPTIONS)
    plan = _check_weights(ctx, weights, params)
    _check_dense(ctx, gradients, (params.batch_size, params.output_size), "gradients", plan.dtype)
    return _product(ctx, plan, weights, gradients, "grada")


def fully_connected_sparse_grad_w(graph: Graph, meta_info: Tensor, gradients: Tensor, activations: Tensor,
                                  prog: Any, *, plan: FCPlan, name: str = "",
                                  options: dict | None = None) -> Tensor:
    """``gradients^T (out, batch) . activations (batch, in)`` at the pattern's blocks only, shaped
    and mapped like the values (popsparse's ``fullyConnectedSparseGradW``)."""
    ctx = OpContext.start(graph, prog, "fully_connected_sparse_grad_w", name, meta_info, gradients,
                          activations)
    parse_options(ctx, options, DEFAULT_OPTIONS)
    p = plan.params
    _check_dense(ctx, gradients, (p.batch_size, p.output_size), "gradients", plan.dtype)
    _check_dense(ctx, activations, (p.batch_size, p.input_size), "activations", plan.dtype)
    return _grad_w(ctx, plan, meta_info, gradients, activations, False)


def fully_connected_sparse_grad_w_t(graph: Graph, meta_info: Tensor, gradients_t: Tensor,
                                    activations_t: Tensor, prog: Any, *, plan: FCPlan, name: str = "",
                                    options: dict | None = None) -> Tensor:
    """:func:`fully_connected_sparse_grad_w` of operands given transposed, ``gradients_t``
    ``(out, batch)`` and ``activations_t`` ``(in, batch)``: each vertex reads whole rows of them
    (a sampled product ``gradients_t . activations_t^T``, e.g. the hidden layer of
    :mod:`softipu.ops.sparse_moe`)."""
    ctx = OpContext.start(graph, prog, "fully_connected_sparse_grad_w", name, meta_info, gradients_t,
                          activations_t)
    parse_options(ctx, options, DEFAULT_OPTIONS)
    p = plan.params
    _check_dense(ctx, gradients_t, (p.output_size, p.batch_size), "gradients_t", plan.dtype)
    _check_dense(ctx, activations_t, (p.input_size, p.batch_size), "activations_t", plan.dtype)
    return _grad_w(ctx, plan, meta_info, gradients_t, activations_t, True)


def _grad_w(ctx: OpContext, plan: FCPlan, meta_info: Tensor, grad: Tensor, act: Tensor,
            by_rows: bool) -> Tensor:
    """Each batch group's sampled product in its copy of the buckets' layout, moved with the
    buckets and back, then summed over the groups."""
    graph, p, b, g = ctx.graph, plan.params, plan.params.block_size, plan.qz
    if meta_info.shape != (plan.partitions, plan.meta_length):
        raise ctx.error(f"meta-information {meta_info.name} has shape {meta_info.shape}; the plan's is "
                        f"{(plan.partitions, plan.meta_length)}")
    z = p.batch_size
    out = graph.add_variable(float32, (g * plan.partitions, plan.capacity, b, b), name=f"{ctx.name}/partials")
    graph.set_tile_mappings(out, plan.tile_grid[:g * plan.partitions])
    from softipu.ops.indexing import zero  # same layer

    zero(graph, out, ctx.prog, name=f"{ctx.name}/zero")
    meta = _working(ctx, plan, meta_info, "metaInfo", g)
    if by_rows:
        act_f = act.flatten()[_row_index(plan, z, False, g)]
        grad_f = grad.flatten()[_row_index(plan, z, True, g)]
    else:
        act_f = act.flatten()[_dense_index(plan, z, p.input_size, False, g)]
        grad_f = grad.flatten()[_dense_index(plan, z, p.output_size, True, g)]
    fields = {"meta": meta, "act": act_f, "grad": grad_f, "out": out.reshape((g * plan.partitions, -1))}
    step = _fc_vertices(ctx, plan, "gradw_rows" if by_rows else "gradw", fields)
    _run_buckets(ctx, plan, meta_info, [meta, out], [out], step, g)
    if g > 1:
        from softipu.ops.reduce import reduce

        out = reduce(graph, out.reshape((g, plan.partitions, plan.capacity, b, b)), ctx.prog, dims=0,
                     name=f"{ctx.name}/reduce")
    if plan.dtype is float32:
        return out
    from softipu.ops.elementwise import cast

    return cast(graph, out, plan.dtype, ctx.prog, name=f"{ctx.name}/cast")


def sparse_dense_matmul(graph: Graph, lhs: SparseTensor, rhs: Tensor, prog: Any, *,
                        params: FullyConnectedParams, name: str = "", options: dict | None = None) -> Tensor:
    """``S (M, K) . rhs (K, N)`` -> ``(M, N)`` for the dynamic sparse ``S`` of ``lhs``, planned as a
    layer with ``output_size = M``, ``input_size = K``, ``batch_size = N`` (popsparse's
    ``dynamic::sparseDenseMatMul`` through ``getFullyConnectedParams``)."""
    out = fully_connected_fwd(graph, lhs, rhs.transpose(), prog, params=params,
                              name=name or "sparse_dense_matmul", options=options)
    return out.transpose()


def _slice_fields(ctx: OpContext, plan: FCPlan, indices: Tensor) -> dict:
    k = indices.shape[0]
    part = np.arange(plan.partitions)
    return {"indices": indices.flatten()[np.tile(np.arange(k), (plan.partitions, 1))], "pid": part,
            "xoff": part // plan.qy * plan.xw}


def _check_indices(ctx: OpContext, indices: Tensor) -> None:
    if indices.ndim != 1 or indices.dtype is not int32:
        raise ctx.error(f"indices {indices.name} must be a 1-D int32 tensor, got {indices.dtype} "
                        f"{indices.shape}")


def embedding_slice(graph: Graph, t: SparseTensor, indices: Tensor, prog: Any, *,
                    params: FullyConnectedParams, name: str = "", options: dict | None = None) -> Tensor:
    """Rows ``indices`` of ``W`` -> ``(len(indices), input_size)`` (popsparse's ``embeddingSlice``);
    an index outside ``0..output_size-1`` gives a zero row."""
    ctx = OpContext.start(graph, prog, "embedding_slice", name, indices)
    parse_options(ctx, options, DEFAULT_OPTIONS)
    plan = _check_weights(ctx, t, params)
    _check_indices(ctx, indices)
    k = indices.shape[0]
    parts, out_f = _partials(ctx, plan, k, False)
    meta = _working(ctx, plan, t.meta_info, "metaInfo")
    nz = _working(ctx, plan, t.nz_values, "nzValues")
    cs = ctx.compute_set("slice")
    fields = dict(_slice_fields(ctx, plan, indices), meta=meta, nz=nz.reshape((plan.partitions, -1)),
                  out=out_f)
    graph.add_vertices(cs, dynamic_slice_codelet(plan.dtype, params.block_size, False), fields, plan.tiles)
    _run_buckets(ctx, plan, t.meta_info, [meta, nz], [], P.Execute(cs), 1)
    return _finish(ctx, parts, plan.dtype)


def embedding_update_add(graph: Graph, t: SparseTensor, slices: Tensor, indices: Tensor, scale: Tensor,
                         prog: Any, *, params: FullyConnectedParams, name: str = "",
                         options: dict | None = None) -> None:
    """``W[indices[k], :] += scale x slices[k]`` at the pattern's non-zeros only, in place on
    ``t.nz_values`` (popsparse's ``embeddingUpdateAdd``); ``scale`` is a 1-element float32 tensor."""
    ctx = OpContext.start(graph, prog, "embedding_update_add", name, slices, indices, scale)
    parse_options(ctx, options, DEFAULT_OPTIONS)
    plan = _check_weights(ctx, t, params)
    _check_indices(ctx, indices)
    k = indices.shape[0]
    _check_dense(ctx, slices, (k, params.input_size), "slices", plan.dtype)
    if scale.numel != 1 or scale.dtype is not float32:
        raise ctx.error(f"scale {scale.name} must be a 1-element float32 tensor, got {scale.dtype} "
                        f"{scale.shape}")
    meta = _working(ctx, plan, t.meta_info, "metaInfo")
    nz = _working(ctx, plan, t.nz_values, "nzValues")
    cs = ctx.compute_set("update_add")
    fields = dict(_slice_fields(ctx, plan, indices), meta=meta, nz=nz.reshape((plan.partitions, -1)),
                  slices=slices.flatten()[_dense_index(plan, k, params.input_size, False)],
                  scale=scale.flatten()[np.zeros((plan.partitions, 1), np.int64)])
    graph.add_vertices(cs, dynamic_slice_codelet(plan.dtype, params.block_size, True), fields, plan.tiles)
    _run_buckets(ctx, plan, t.meta_info, [meta, nz], [nz], P.Execute(cs), 1)
    ctx.prog.add(P.Copy(nz, t.nz_values))
