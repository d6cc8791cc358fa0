"""Matrix products (poplin's MatMul): planned, tile-mapped AMP partial products and a reduction.

``matmul(graph, a, b, prog)`` multiplies ``a[..., M, K]`` by ``b[..., K, N]`` with numpy's rules
(1-D operands, broadcast batch dimensions). The work is planned by :mod:`softipu.ops.planner`:
the groups, M, N and K are cut into blocks, tile ``(g, i, j, l)`` multiplies its blocks with an
``AmpMatMul`` vertex (fp32 partials by default), and when K is split over tiles a second compute
set of ``ReducePartials`` vertices adds the partials into the output (and casts them).

Block layout, and why it matters for speed: a vertex's field is one contiguous run of memory per
block, and a bulk call's vertices sit at evenly spaced addresses, so the engine runs each call as
one batched GEMM over zero-copy views. An operand whose blocks are contiguous already (a row-major
matrix whose blocks span whole rows, a transposed one spanning whole columns, or a tensor made
with :func:`create_matmul_input_lhs` / :func:`create_matmul_input_rhs`) is used in place; any
other operand is first copied into the planned layout ("column slabs": the matrix cut into its
column blocks, each stored row-major), and the cost model prices that copy's exchange.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from softipu.codelets.matmul import (
    A_TRANSPOSED,
    B_TRANSPOSED,
    amp_codelet,
    amp_in_chans,
    amp_out_chans,
    reduce_codelet,
)
from softipu.debug import at, caller_location
from softipu.dtypes import DType, as_dtype, float16, float32
from softipu.graph import program as P
from softipu.graph.graph import ComputeSet, Graph
from softipu.graph.tensor import Slabs, Tensor
from softipu.ops.bulk import add_vertex_runs, evenly_spaced, map_runs
from softipu.ops.common import OpContext, OpError, broadcast_shapes, parse_options
from softipu.ops.mapping import map_linearly
from softipu.ops.planner import MatMulProblem, Plan, plan, plan_report
from softipu.ops.rearrange import is_column_major, pieces_per_block, transpose_into_slabs

__all__ = ["matmul", "plan_matmul", "matmul_plan_report", "create_matmul_input_lhs",
           "create_matmul_input_rhs", "MATMUL_OPTIONS"]

MATMUL_OPTIONS: dict[str, Any] = {"availableMemoryProportion": 0.6, "partialsType": "float"}
_PARTIALS_NAMES = {"float": float32, "float32": float32, "half": float16, "float16": float16}


# -- public API --------------------------------------------------------------------------------
def matmul(graph: Graph, a: Tensor, b: Tensor, prog: P.Sequence, *, name: str = "",
           options: Mapping[str, Any] | None = None) -> Tensor:
    """``a @ b`` with numpy's rules, planned over the tiles (poplin's matMul / matMulGrouped).

    ``a`` is ``[..., M, K]`` (or ``[K]``), ``b`` is ``[..., K, N]`` (or ``[K]``); leading
    dimensions broadcast. float16 or float32, both the same; the result has their dtype.

    Options:

    * ``availableMemoryProportion`` (float, default 0.6): the share of each tile's memory the
      plan may use for temporaries (received blocks, partials).
    * ``partialsType`` (``"float"`` or ``"half"``; default float): the type the AMP accumulates
      in. ``"half"`` is allowed for float16 inputs only.

    >>> import numpy as np, softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops.matmul import matmul
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=4))
    >>> a = g.add_variable(sp.float32, (3, 5), name="a"); sp.ops.map_linearly(g, a)
    >>> b = g.add_variable(sp.float32, (5, 2), name="b"); sp.ops.map_linearly(g, b)
    >>> prog = P.Sequence()
    >>> c = matmul(g, a, b, prog)
    >>> eng = sp.Engine(g, [prog])
    >>> eng.write_tensor(a, np.ones((3, 5))); eng.write_tensor(b, np.ones((5, 2))); eng.run(0)
    >>> eng.read_tensor(c)
    array([[5., 5.],
           [5., 5.],
           [5., 5.]], dtype=float32)
    """
    ctx = OpContext.start(graph, prog, "matmul", name, a, b)
    opts = _options(ctx, options, a.dtype)
    spec = _Spec.of(ctx, a.shape, b.shape, a.dtype, b.dtype)
    out = _grouped(ctx, spec.lhs(a), spec.rhs(b), spec, opts)
    return out.reshape(spec.out_shape)


def plan_matmul(graph_or_target: Any, dtype: Any, shape_a: Sequence[int], shape_b: Sequence[int],
                options: Mapping[str, Any] | None = None) -> Plan:
    """The frozen :class:`~softipu.ops.planner.Plan` ``matmul`` would use for these shapes.

    >>> import softipu as sp
    >>> from softipu.ops.matmul import plan_matmul
    >>> p = plan_matmul(sp.targets.GC200, sp.float16, (2048, 2048), (2048, 2048))
    >>> p.tiles_used <= 1472 and p.fits
    True
    """
    target = graph_or_target.target if isinstance(graph_or_target, Graph) else graph_or_target
    ctx = _PlanContext("plan_matmul")
    dtype = _as_float_dtype(ctx, dtype)
    opts = _options(ctx, options, dtype)
    spec = _Spec.of(ctx, tuple(shape_a), tuple(shape_b), dtype, dtype)
    return _plan(spec, opts, target)[0]


def matmul_plan_report(graph_or_target: Any, dtype: Any, shape_a: Sequence[int],
                       shape_b: Sequence[int], options: Mapping[str, Any] | None = None) -> str:
    """A readable account of the plan for ``a @ b`` (partition, cycles, memory)."""
    return plan_report(plan_matmul(graph_or_target, dtype, shape_a, shape_b, options))


def create_matmul_input_lhs(graph: Graph, dtype: Any, shape_a: Sequence[int],
                            shape_b: Sequence[int], name: str = "",
                            options: Mapping[str, Any] | None = None) -> Tensor:
    """A new variable of ``shape_a`` laid out and mapped as ``matmul(a, b)``'s plan wants it.

    Each of its blocks is contiguous and spread over the tiles that use it, so ``matmul``
    neither copies it nor moves more than the plan's own exchange (poplin's createMatMulInputLHS).
    """
    return _create_input(graph, dtype, shape_a, shape_b, name, options, lhs=True)


def create_matmul_input_rhs(graph: Graph, dtype: Any, shape_a: Sequence[int],
                            shape_b: Sequence[int], name: str = "",
                            options: Mapping[str, Any] | None = None) -> Tensor:
    """A new variable of ``shape_b`` laid out and mapped as ``matmul(a, b)``'s plan wants it."""
    return _create_input(graph, dtype, shape_a, shape_b, name, options, lhs=False)


# -- shapes and options --------------------------------------------------------------------------
class _PlanContext:
    """Error formatting for the planning helpers, which have no program to append to."""

    def __init__(self, op: str) -> None:
        self.op, self.name = op, op

    def error(self, message: str) -> OpError:
        return OpError(f"{self.op}{at(caller_location())}: {message}")


def _as_float_dtype(ctx: Any, dtype: Any) -> DType:
    d = as_dtype(dtype)
    if d not in (float16, float32):
        raise ctx.error(f"dtype {d} is not supported; matmul takes float16 or float32")
    return d


def _options(ctx: Any, options: Mapping[str, Any] | None, dtype: DType) -> dict[str, Any]:
    opts = parse_options(ctx, options, MATMUL_OPTIONS)
    amp = opts["availableMemoryProportion"]
    if not 0 < amp <= 1:
        raise ctx.error(f"option 'availableMemoryProportion' must lie in (0, 1], got {amp!r}")
    partials = _PARTIALS_NAMES.get(opts["partialsType"].lower())
    if partials is None:
        raise ctx.error(f"option 'partialsType' must be 'float' or 'half', got {opts['partialsType']!r}")
    if partials.itemsize < dtype.itemsize:
        raise ctx.error(f"partialsType 'half' needs float16 inputs, not {dtype}")
    opts["partials"] = partials
    return opts


@dataclass(frozen=True, slots=True)
class _Spec:
    """A matmul's shapes after numpy's rules: ``G`` groups of ``(M x K) . (K x N)``."""

    batch: tuple[int, ...]
    m: int
    k: int
    n: int
    dtype: DType
    a_batch: tuple[int, ...]
    b_batch: tuple[int, ...]
    out_shape: tuple[int, ...]
    a_vector: bool
    b_vector: bool

    @classmethod
    def of(cls, ctx: Any, shape_a: tuple[int, ...], shape_b: tuple[int, ...], dtype_a: DType,
           dtype_b: DType) -> _Spec:
        if dtype_a != dtype_b:
            raise ctx.error(f"a is {dtype_a} but b is {dtype_b}; cast one so both match")
        _as_float_dtype(ctx, dtype_a)
        if len(shape_a) == 0 or len(shape_b) == 0:
            raise ctx.error(f"matmul needs at least 1-D operands, got shapes {shape_a} and {shape_b}")
        a_vec, b_vec = len(shape_a) == 1, len(shape_b) == 1
        sa = (1,) + shape_a if a_vec else shape_a
        sb = shape_b + (1,) if b_vec else shape_b
        if sa[-1] != sb[-2]:
            raise ctx.error(f"shapes {shape_a} and {shape_b} do not match: a has {sa[-1]} columns "
                            f"but b has {sb[-2]} rows")
        batch = broadcast_shapes(ctx, sa[:-2], sb[:-2])
        out = batch + ((sa[-2],) if not a_vec else ()) + ((sb[-1],) if not b_vec else ())
        return cls(batch, sa[-2], sa[-1], sb[-1], dtype_a, sa[:-2], sb[:-2], out, a_vec, b_vec)

    @property
    def groups(self) -> int:
        return math.prod(self.batch)

    def lhs(self, a: Tensor) -> _Operand:
        x = a.reshape(1, -1) if self.a_vector else a
        return _Operand(x.reshape(math.prod(self.a_batch), self.m, self.k),
                        _group_map(self.a_batch, self.batch))

    def rhs(self, b: Tensor) -> _Operand:
        x = b.reshape(-1, 1) if self.b_vector else b
        return _Operand(x.reshape(math.prod(self.b_batch), self.k, self.n),
                        _group_map(self.b_batch, self.batch))


def _group_map(own: tuple[int, ...], batch: tuple[int, ...]) -> np.ndarray:
    """For each group of the broadcast batch, the operand's own group."""
    ids = np.arange(math.prod(own), dtype=np.int64).reshape(own)
    return np.broadcast_to(ids.reshape((1,) * (len(batch) - len(own)) + own), batch).reshape(-1)


@dataclass(frozen=True, slots=True)
class _Operand:
    """A ``(own groups, rows, cols)`` tensor and the own group of each product group."""

    x: Tensor
    group_of: np.ndarray

    def transposed(self) -> _Operand:
        return _Operand(self.x.transpose(0, 2, 1), self.group_of)

    def place(self, ctx: OpContext, pl: Plan, rows: _Grid, cols: _Grid, role: str) -> _Blocks:
        return _place_operand(ctx, pl, self, rows, cols, role)


def _plan(spec: _Spec, opts: dict[str, Any], target: Any,
          grains: tuple[int, int, int] = (1, 1, 1), allow_swap: bool = True) -> tuple[Plan, bool]:
    """The plan of ``spec``, and whether it is swapped.

    Swapped: the plan computes ``C^T = B^T . A^T`` (the AMP's field is N, not M) and C is stored
    column-major. It is taken only when it is clearly faster (by ``_SWAP_GAIN``), since a
    row-major C suits the ops that read it next.
    """
    partials = opts["partials"]
    mg, kg, ng = grains
    g_, m, k, n = (max(x, 1) for x in (spec.groups, spec.m, spec.k, spec.n))
    amp = opts["availableMemoryProportion"]
    # Blocks hold whole AMP channel groups (poplin's grain sizes): the K grain is the input
    # channels of one pass, the N grain the conv units.
    k_amp, n_amp = amp_in_chans(spec.dtype, target), amp_out_chans(spec.dtype, target)
    kg = math.lcm(kg, k_amp) if k >= k_amp else kg
    straight = plan(MatMulProblem(g_, m, k, n, spec.dtype, partials, spec.dtype, mg, kg,
                                  math.lcm(ng, n_amp) if n >= n_amp else ng), target, amp)
    if not allow_swap:
        return straight, False
    swapped = plan(MatMulProblem(g_, n, k, m, spec.dtype, partials, spec.dtype, ng, kg,
                                 math.lcm(mg, n_amp) if m >= n_amp else mg), target, amp)
    if (swapped.fits, straight.fits) == (True, False) or (
            swapped.fits == straight.fits and swapped.cycles * _SWAP_GAIN < straight.cycles):
        return swapped, True
    return straight, False


_SWAP_GAIN = 1.05


# -- the op body -----------------------------------------------------------------------------------
def _grouped(ctx: OpContext, lhs: Any, rhs: Any, spec: _Spec, opts: dict[str, Any],
             grains: tuple[int, int, int] = (1, 1, 1), allow_swap: bool = True) -> Tensor:
    """``C[g] = A[g] . B[g]`` for every group; returns C as ``(G, M, N)``.

    ``lhs`` and ``rhs`` place their blocks as the plan wants (``place(ctx, plan, rows, cols,
    role)``): an :class:`_Operand` tensor, or a convolution's im2col that builds them.
    """
    graph = ctx.graph
    g_, m, k, n = spec.groups, spec.m, spec.k, spec.n
    if g_ * m * n == 0 or k == 0:
        return _trivial(ctx, spec)
    pl, swapped = _plan(spec, opts, graph.target, grains, allow_swap)
    if not pl.fits:
        raise ctx.error(
            f"no plan for {g_} x ({m} x {k}) . ({k} x {n}) {spec.dtype} fits: the best needs "
            f"{pl.temp_bytes_per_tile:,} B of temporaries per tile (availableMemoryProportion "
            f"{opts['availableMemoryProportion']} allows {pl.budget_bytes_per_tile:,} B) beside "
            f"{pl.resident_bytes_per_tile:,} B of its share of the operands, code and state, and a "
            f"tile has {graph.target.bytes_per_tile:,} B; change options['availableMemoryProportion']"
            " or split the matmul")
    if swapped:  # C^T = B^T . A^T
        return _run_plan(ctx, pl, rhs.transposed(), lhs.transposed()).transpose(0, 2, 1)
    return _run_plan(ctx, pl, lhs, rhs)


def _trivial(ctx: OpContext, spec: _Spec) -> Tensor:
    """Empty results, or zeros when K is 0."""
    shape = (spec.groups, spec.m, spec.n)
    out = ctx.output(spec.dtype, shape)
    if out.numel and spec.k == 0:
        zero = ctx.graph.add_constant(spec.dtype, (1,), 0, name=f"{ctx.name}/zero")
        ctx.graph.set_tile_mapping(zero, 0)
        ctx.prog.add(P.Copy(zero.broadcast(shape), out))
    return out


@dataclass(frozen=True, slots=True)
class _Grid:
    """Block boundaries of the plan along one dimension."""

    starts: np.ndarray
    sizes: np.ndarray

    @classmethod
    def of(cls, size: int, block: int) -> _Grid:
        starts = np.arange(0, size, block, dtype=np.int64)
        return cls(starts, np.minimum(block, size - starts))

    def __len__(self) -> int:
        return int(self.starts.size)


def _run_plan(ctx: OpContext, pl: Plan, lhs: Any, rhs: Any) -> Tensor:
    """Build the program of plan ``pl`` for ``C = A . B`` (A, B in the plan's orientation)."""
    q = pl.problem
    bg, bm, bn, bk = pl.blocks
    grids = _Grid.of(q.m, bm), _Grid.of(q.n, bn), _Grid.of(q.k, bk)
    a_blocks = lhs.place(ctx, pl, grids[0], grids[2], "a")
    b_blocks = rhs.place(ctx, pl, grids[2], grids[1], "b")
    out, direct = _output(ctx, pl, grids)
    partials = None if direct else _partials(ctx, pl, grids)
    target_blocks = direct if direct is not None else partials
    for step in range(pl.k_serial):
        cs = ctx.compute_set(f"amp{step}" if pl.k_serial > 1 else "amp")
        _add_amp_vertices(ctx, cs, pl, grids, a_blocks, b_blocks, target_blocks, step)
        ctx.execute(cs)
    if partials is not None:
        cs = ctx.compute_set("reduce")
        _add_reduce_vertices(ctx, cs, pl, grids, partials, out)
        ctx.execute(cs)
    return out


# -- operand layouts -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Blocks:
    """Where each block of a ``(groups, rows, cols)`` matrix starts, all blocks contiguous.

    ``starts[g, r, c]`` is the address of block ``(r, c)`` of the operand's own group ``g``;
    ``transposed``: blocks are stored column by column (as the block's transpose).
    """

    tensor: Tensor
    starts: np.ndarray
    transposed: bool
    group_of: np.ndarray


def _place_operand(ctx: OpContext, pl: Plan, op: _Operand, rows: _Grid, cols: _Grid,
                   role: str) -> _Blocks:
    """The operand's blocks in place when contiguous, else copied into column slabs."""
    found = _contiguous_blocks(op.x, rows, cols)
    if found is not None:
        starts, transposed = found
        return _Blocks(op.x, starts, transposed, op.group_of)
    spread = pl.n_split if role == "a" else pl.m_split
    tallest = int(rows.sizes.max())
    if is_column_major(op.x) and tallest // pieces_per_block(tallest, spread) >= 2:
        return _transposed_into_slabs(ctx, pl, op, rows, cols, role, spread)
    slab, starts = _slab_variable(ctx, pl, op.x.dtype, op.x.shape[0], rows, cols, role, op.group_of)
    _copy_into_slabs(ctx, op.x, slab, rows, cols)
    return _Blocks(slab, starts, False, op.group_of)


def _transposed_into_slabs(ctx: OpContext, pl: Plan, op: _Operand, rows: _Grid, cols: _Grid, role: str,
                           spread: int) -> _Blocks:
    """A column-major operand re-laid out into column slabs as popops rearranges: whole source
    runs exchanged to the tiles that hold each piece of a block, then transposed there
    (:func:`~softipu.ops.rearrange.transpose_into_slabs`); pieces sit where :func:`_map_blocks`
    spreads a block, over the tiles that read it."""
    gi = _first_user(op.group_of, op.x.shape[0]) // pl.blocks[0]
    ks = pl.k_serial

    def tile_of(g: np.ndarray, rb: np.ndarray, p: np.ndarray, cb: np.ndarray) -> np.ndarray:
        # A block cut over fewer tiles than read it: the k_serial blocks sharing those tiles
        # take turns, so each tile holds its share.
        if role == "a":  # block (g, i, lt): users (g, i, j, lt // serial)
            used = pieces_per_block(int(rows.sizes[0]), spread)
            return pl.tile_of(gi[g], rb, (p + (cb % ks) * used) % spread, cb // ks)
        used = pieces_per_block(int(rows.sizes[0]), spread)  # block (g, lt, j): users (g, i, j, ..)
        return pl.tile_of(gi[g], (p + (rb % ks) * used) % spread, cb, rb // ks)

    slab = transpose_into_slabs(ctx, op.x, rows.starts, rows.sizes, cols.starts, cols.sizes, spread,
                                tile_of, name=f"{ctx.name}/{role}")
    r_total = int(rows.sizes.sum())
    starts = (slab.offset + np.arange(op.x.shape[0])[:, None, None] * r_total * int(cols.sizes.sum())
              + cols.starts[None, None, :] * r_total + rows.starts[None, :, None] * cols.sizes[None, None, :])
    return _Blocks(slab, starts, False, op.group_of)


def _first_user(group_of: np.ndarray, groups: int) -> np.ndarray:
    """For each own group of an operand, the first product group that uses it."""
    first_user = np.full(groups, group_of.size, np.int64)
    np.minimum.at(first_user, group_of, np.arange(group_of.size))
    return np.minimum(first_user, max(group_of.size - 1, 0))


def _contiguous_blocks(x: Tensor, rows: _Grid, cols: _Grid):
    """(starts, transposed) when every block of ``x`` is one contiguous run; else None."""
    if x.numel == 0:
        return None
    known = _known_blocks(x, rows, cols)
    if known is not None:
        return known, _known_transposed(x)
    if x.is_strided:
        sg, sr, sc = x.strides
        for transposed in (False, True):
            if _strided_blocks_ok(x.strides, rows, cols, transposed):
                starts = (x.offset + np.arange(x.shape[0])[:, None, None] * sg
                          + rows.starts[None, :, None] * sr + cols.starts[None, None, :] * sc)
                return starts, transposed
        return None
    addr = x.addresses()
    for transposed in (False, True):
        if _indexed_blocks_ok(addr, rows, cols, transposed):
            return addr[:, rows.starts][:, :, cols.starts], transposed
    return None


def _strided_blocks_ok(strides: tuple[int, ...], rows: _Grid, cols: _Grid, transposed: bool) -> bool:
    _, sr, sc = strides
    if transposed:
        sr, sc, rows, cols = sc, sr, cols, rows
    if sc != 1 and int(cols.sizes.max()) > 1:
        return False
    if int(rows.sizes.max()) == 1:
        return True
    # Rows of a block are adjacent when the row stride is the block width: one block column.
    return len(cols) == 1 and sr == int(cols.sizes[0])


def _known_blocks(x: Tensor, rows: _Grid, cols: _Grid) -> np.ndarray | None:
    """Block starts of a matrix stored in column slabs (create_matmul_input_*, see
    :func:`_slab_view`), read from its structure alone when its slabs are ``cols`` (or, for a
    transposed view, ``rows``); None when ``x`` is not such a matrix or its slabs differ."""
    slabs = x.slabs
    if slabs is None or x.ndim != 3:
        return None
    mid = slabs.mid
    transposed = slabs.perm[1] == slabs.axis
    if slabs.perm[2 if not transposed else 1] != slabs.axis:
        return None
    s_rows, s_cols = (cols, rows) if transposed else (rows, cols)
    offsets, widths, group_strides = [], [], set()
    for offset, shape, strides, _ in slabs.pieces:
        if len(shape) == 4 and strides[1:] == (shape[3], shape[1] * shape[3], 1):
            n, w = shape[2], shape[3]
        elif len(shape) == 3 and strides[1:] == (shape[2], 1):
            n, w = 1, shape[2]
        else:
            return None
        if shape[0] != x.shape[0] or shape[1] != int(s_rows.sizes.sum()):
            return None
        group_strides.add(strides[0] if shape[0] > 1 else 0)
        offsets.extend(offset + k * shape[1] * w for k in range(n))
        widths.extend([w] * n)
    if len(group_strides) != 1 or mid[slabs.axis] != sum(widths) or not np.array_equal(widths, s_cols.sizes):
        return None
    sg = group_strides.pop()
    starts = (np.asarray(offsets, np.int64)[None, None, :] + np.arange(x.shape[0])[:, None, None] * sg
              + s_rows.starts[None, :, None] * np.asarray(widths, np.int64)[None, None, :])
    return starts.transpose(0, 2, 1) if transposed else starts


def _known_transposed(x: Tensor) -> bool:
    return x.slabs is not None and x.slabs.perm[1] == x.slabs.axis


def _indexed_blocks_ok(addr: np.ndarray, rows: _Grid, cols: _Grid, transposed: bool) -> bool:
    r = np.arange(addr.shape[1], dtype=np.int64)
    c = np.arange(addr.shape[2], dtype=np.int64)
    r_block = np.searchsorted(rows.starts, r, side="right") - 1
    c_block = np.searchsorted(cols.starts, c, side="right") - 1
    r_in, c_in = r - rows.starts[r_block], c - cols.starts[c_block]
    if transposed:
        local = c_in[None, :] * rows.sizes[r_block][:, None] + r_in[:, None]
    else:
        local = r_in[:, None] * cols.sizes[c_block][None, :] + c_in[None, :]
    first = addr[:, rows.starts[r_block]][:, :, cols.starts[c_block]]
    return bool(np.array_equal(first + local[None], addr))


def _slab_variable(ctx: OpContext, pl: Plan, dtype: DType, groups: int, rows: _Grid, cols: _Grid,
                   role: str, group_of: np.ndarray, name: str = "") -> tuple[Tensor, np.ndarray]:
    """A new ``(groups, R, C)`` matrix in column slabs, mapped as the plan wants.

    Returns its variable (flat) and the start address of each block.
    """
    r_total, c_total = int(rows.sizes.sum()), int(cols.sizes.sum())
    var = ctx.graph.add_variable(dtype, (groups * r_total * c_total,),
                                 name=name or f"{ctx.name}/{role}")
    slab_start = np.concatenate(([0], np.cumsum(cols.sizes[:-1] * r_total)))
    starts = (var.offset + np.arange(groups)[:, None, None] * r_total * c_total
              + slab_start[None, None, :] + rows.starts[None, :, None] * cols.sizes[None, None, :])
    _map_blocks(ctx.graph, pl, var, starts, rows, cols, role, group_of)
    return var, starts


def _copy_into_slabs(ctx: OpContext, x: Tensor, slab: Tensor, rows: _Grid, cols: _Grid) -> None:
    """Copy ``x`` (groups, R, C) into the column-slab variable ``slab``."""
    g_, r_total, c_total = x.shape
    width = int(cols.sizes[0])
    full = int(np.sum(cols.sizes == width))
    if full < len(cols):  # two partial writes: declared dead first, or liveness keeps it always
        ctx.prog.add(P.WriteUndef(slab))
    dst = Tensor(slab.graph, slab.dtype, (g_, r_total, full, width), slab.offset,
                 (r_total * c_total, width, r_total * width, 1))
    ctx.prog.add(P.Copy(x[:, :, : full * width].reshape(g_, r_total, full, width), dst))
    if full < len(cols):
        tail = int(cols.sizes[-1])
        dst = Tensor(slab.graph, slab.dtype, (g_, r_total, tail), slab.offset + full * width * r_total,
                     (r_total * c_total, tail, 1))
        ctx.prog.add(P.Copy(x[:, :, full * width:], dst))


_MIN_BYTES_PER_TILE = {"a": 128, "b": 256}  # the plan's A is poplin's input, B its weights


def _map_blocks(graph: Graph, pl: Plan, var: Tensor, starts: np.ndarray, rows: _Grid, cols: _Grid,
                role: str, group_of: np.ndarray) -> None:
    """Spread each block over the tiles that read it (A: its N blocks; B: its M blocks)."""
    first_user = _first_user(group_of, starts.shape[0])
    bg = pl.blocks[0]
    gi = (first_user // bg)[:, None, None]
    if role == "a":  # block (g, i, lt): users (g, i, j, lt // serial) for every j
        i = np.arange(len(rows))[None, :, None]
        lt = np.arange(len(cols))[None, None, :]
        spread = pl.n_split

        def tile(p: int) -> np.ndarray:
            return pl.tile_of(gi, i, p, lt // pl.k_serial)
    else:  # block (g, lt, j): users (g, i, j, lt // serial) for every i
        lt = np.arange(len(rows))[None, :, None]
        j = np.arange(len(cols))[None, None, :]
        spread = pl.m_split

        def tile(p: int) -> np.ndarray:
            return pl.tile_of(gi, p, j, lt // pl.k_serial)
    size = rows.sizes[None, :, None] * cols.sizes[None, None, :]
    # No piece under poplin's minimum per tile (lib/poplin/Convolution.cpp, mapActivationsOrWeights:
    # "Limit the minimum number of bytes per tile to reduce the amount of exchange code", 128 B of
    # activations, 256 B of weights): a small block sits on fewer of its users, each of whom then
    # receives fewer regions (ResNet-50's 7x7 stem: 9,408 weights had been cut over 1,344 tiles,
    # 7 elements each, and every tile received all 1,344 pieces).
    least = -(-_MIN_BYTES_PER_TILE[role] // var.dtype.itemsize)
    piece = np.maximum(-(-size // spread), least)
    # Only the users a piece lands on: past the largest block's piece count every piece is empty
    # (a convolution's weights at batch 64 looped over 1,472 users for ~32 pieces a block).
    used = max(1, min(spread, int((-(-size // piece)).max(initial=0))))
    runs_s, runs_l, runs_t = [], [], []
    for p in range(used):
        t = tile(p)
        lo = np.minimum(p * piece, size)
        hi = np.minimum(lo + piece, size)
        shape = np.broadcast_shapes(starts.shape, t.shape)
        runs_s.append(np.broadcast_to(starts + lo, shape).ravel())
        runs_l.append(np.broadcast_to(hi - lo, shape).ravel())
        runs_t.append(np.broadcast_to(t, shape).ravel())
    map_runs(graph, var, np.concatenate(runs_s), np.concatenate(runs_l), np.concatenate(runs_t))


# -- output and partials ---------------------------------------------------------------------------
def _output(ctx: OpContext, pl: Plan, grids: tuple[_Grid, _Grid, _Grid]):
    """The result variable and, when the AMP writes it directly, its blocks."""
    q = pl.problem
    gm, gn, _ = grids
    out = ctx.graph.add_variable(q.out_dtype, (q.groups, q.m, q.n), name=f"{ctx.name}/out")
    if pl.two_stage:
        return out, None
    # One block per (g, i): whole rows, so each is contiguous.
    starts = (out.offset + np.arange(q.groups)[:, None, None] * q.m * q.n
              + gm.starts[None, :, None] * q.n + gn.starts[None, None, :])
    sizes = gm.sizes[None, :, None] * gn.sizes[None, None, :]
    g = np.arange(q.groups)[:, None, None]
    tiles = pl.tile_of(g // pl.blocks[0], np.arange(len(gm))[None, :, None],
                       np.arange(len(gn))[None, None, :], 0)
    map_runs(ctx.graph, out, starts.ravel(), np.broadcast_to(sizes, starts.shape).ravel(),
             np.broadcast_to(tiles, starts.shape).ravel())
    return out, _Blocks(out, starts, False, np.arange(q.groups))


def _partials(ctx: OpContext, pl: Plan, grids: tuple[_Grid, _Grid, _Grid]) -> _Blocks:
    """Partials: K range ``kr``'s partial product is a ``(G*M, N)`` matrix in column slabs.

    Slab ``j`` holds the ``G*M`` rows of N block ``j``, so block ``(g, i, j, kr)`` is contiguous,
    the blocks of any one dimension sit at evenly spaced addresses (an AMP bulk call binds them
    as one strided view), and so do the rows a ReducePartials vertex reads: one bulk call per N
    block reduces every row of it.
    """
    q = pl.problem
    gm, gn, _ = grids
    g_, mS, nS, kS = q.groups, len(gm), len(gn), pl.k_split
    rows = g_ * q.m
    var = ctx.graph.add_variable(q.partials_dtype, (kS * rows * q.n,), name=f"{ctx.name}/partials")
    g = np.arange(g_)[:, None, None, None]
    i = np.arange(mS)[None, :, None, None]
    j = np.arange(nS)[None, None, :, None]
    kr = np.arange(kS)[None, None, None, :]
    starts = (var.offset + kr * rows * q.n + rows * gn.starts[j]
              + (g * q.m + gm.starts[i]) * gn.sizes[j])
    sizes = np.broadcast_to(gm.sizes[i] * gn.sizes[j], starts.shape)
    tiles = pl.tile_of(g // pl.blocks[0], i, j, kr)
    map_runs(ctx.graph, var, starts.ravel(), sizes.ravel(), np.broadcast_to(tiles, sizes.shape).ravel())
    return _Blocks(var, starts, False, np.arange(g_))


# -- vertices ---------------------------------------------------------------------------------------
def _add_amp_vertices(ctx: OpContext, cs: ComputeSet, pl: Plan, grids, a: _Blocks, b: _Blocks,
                      out: _Blocks, step: int) -> None:
    """One AmpMatMul vertex per (g, i, j, l) whose K range has a chunk at serial ``step``."""
    q = pl.problem
    gm, gn, gk = grids
    g_, mS, nS, kS = q.groups, len(gm), len(gn), pl.k_split
    g, i, j, kr = np.meshgrid(np.arange(g_), np.arange(mS), np.arange(nS), np.arange(kS),
                             indexing="ij")
    lt = kr * pl.k_serial + step
    valid = lt < len(gk)
    g, i, j, kr, lt = (x[valid] for x in (g, i, j, kr, lt))
    msz, nsz, ksz = gm.sizes[i], gn.sizes[j], gk.sizes[lt]
    starts = {
        "a": a.starts[a.group_of[g], i, lt],
        "b": b.starts[b.group_of[g], lt, j],
        "out": out.starts[g, i, j] if out.starts.ndim == 3 else out.starts[g, i, j, kr],
    }
    layout = (A_TRANSPOSED if a.transposed else 0) | (B_TRANSPOSED if b.transposed else 0)
    accumulate = step > 0
    codelet = amp_codelet(q.in_dtype, q.partials_dtype if pl.two_stage else q.out_dtype, accumulate)
    tiles = pl.tile_of(g // pl.blocks[0], i, j, kr)
    coords = {"g": g, "m": i, "n": j, "k": kr}
    vary = _vary(coords, {"g": np.zeros_like(g), "m": msz, "n": nsz, "k": ksz}, a, b)
    # Sizes first: a grid's rows (equal sizes) follow each other and join in one call (ops.bulk).
    keys = [msz, nsz, ksz] + [coords[d] for d in "gmnk" if d != vary]
    tensors = {"a": (a.tensor.dtype, msz * ksz), "b": (b.tensor.dtype, ksz * nsz),
               "out": (out.tensor.dtype, msz * nsz)}
    params = {"m": msz, "k": ksz, "n": nsz, "layout": np.full(g.shape, layout)}
    add_vertex_runs(ctx.graph, cs, codelet, keys, coords[vary], tiles, starts, tensors, params)


def _vary(coords: dict[str, np.ndarray], sizes: dict[str, np.ndarray], a: _Blocks, b: _Blocks) -> str:
    """The dimension whose vertices each bulk call spans: the one that leaves the fewest calls.

    A call holds the vertices that differ only in that dimension and have equal blocks; along
    any of them every field's blocks are evenly spaced (the group dimension only when neither
    operand repeats a group: a broadcast batch).
    """
    best, fewest = "g", None
    for d in "mnkg":
        if d == "g" and not all(evenly_spaced(x.group_of) for x in (a, b)):
            continue
        key = np.zeros_like(coords[d])
        for e in "gmnk":
            value = sizes[d] if e == d else coords[e]
            key = key * (int(value.max(initial=0)) + 1) + value
        calls = np.unique(key).size
        if fewest is None or calls < fewest:
            best, fewest = d, calls
    return best


def _add_reduce_vertices(ctx: OpContext, cs: ComputeSet, pl: Plan, grids, partials: _Blocks,
                         out: Tensor) -> None:
    """ReducePartials vertices: one per output row of a block, adding its ``k_split`` partials.

    The rows of block (g, i, j) are shared out over its ``k_split`` tiles, which hold its partials;
    the output rows are mapped to the tile that writes them. Each N block's vertices are one bulk
    call: over the rows ``g*M + row`` both the output rows and (column slabs) the partial rows are
    evenly spaced.
    """
    q = pl.problem
    gm, gn, _ = grids
    if len(gn) == 1:
        _add_reduce_worker_vertices(ctx, cs, pl, gm, partials, out)
        return
    kS, rows = pl.k_split, q.groups * q.m
    j, v = (x.ravel() for x in np.meshgrid(np.arange(len(gn)), np.arange(rows), indexing="ij"))
    g, row = v // q.m, v % q.m
    i = np.searchsorted(gm.starts, row, side="right") - 1
    r = row - gm.starts[i]
    length = gn.sizes[j]
    home = r // -(-gm.sizes[i] // kS)
    tiles = pl.tile_of(g // pl.blocks[0], i, j, home)
    out_start = out.offset + v * q.n + gn.starts[j]
    part_starts = partials.starts[g, i, j, :].T + r * length
    map_runs(ctx.graph, out, out_start, length, tiles)
    codelet = reduce_codelet(q.partials_dtype, q.out_dtype)
    add_vertex_runs(ctx.graph, cs, codelet, [j], v, tiles,
                    {"out": out_start, "partials": part_starts},
                    {"out": (q.out_dtype, length), "partials": (q.partials_dtype, length)}, {})


def _add_reduce_worker_vertices(ctx: OpContext, cs: ComputeSet, pl: Plan, gm: _Grid, partials: _Blocks,
                                out: Tensor) -> None:
    """The reduce of a plan with one N block, as poplin builds it (lib/poplin/ConvReduce.cpp,
    ``reduce``): each tile's rows of a block are one contiguous region of the output and of every
    partial, and poplin connects that region to one ``ReduceAdd`` vertex that divides it between
    the workers. Here: one vertex per worker's share of whole rows (the fast engine's matmul
    chains read a reduce by rows), so a tile's reduce holds at most six vertices whatever the
    batch, not one per output row (ResNet-50 fp16 b32: 137 rows, 2,740 B of vertex state per tile
    and reduce; it grew with the batch). A tile with fewer than six rows uses fewer workers.

    The shares are cut at multiples of one ``piece`` of rows over the whole ``G*M`` matrix (one N
    block: the output and every K range's partials are row-major over all of it, ``_partials``),
    so all full shares are one evenly spaced run: one strided bulk call, not an address per
    element (a share cut at each tile's own rows is spaced irregularly from tile to tile: ResNet-50
    fp16 b16 listed ~2.7 M addresses per reduce). A share starts on the tile whose ``chunk`` of
    its block holds its first row; at most ``ceil(chunk / piece) <= workers`` start in a chunk."""
    q, graph = pl.problem, ctx.graph
    kS, n, workers = pl.k_split, q.n, graph.target.workers_per_tile
    total = q.groups * q.m
    chunk = -(-int(gm.sizes.max()) // kS)  # the rows of a block each of its kS tiles reduces
    piece = -(-chunk // workers)
    r0 = np.arange(0, total, piece, dtype=np.int64)
    length = np.minimum(piece, total - r0) * n
    g, row = r0 // q.m, r0 % q.m
    i = np.searchsorted(gm.starts, row, side="right") - 1
    h = np.minimum((row - gm.starts[i]) // chunk, kS - 1)
    out_start = out.offset + r0 * n
    part_starts = partials.starts[g, i, 0, :].T + (row - gm.starts[i]) * n
    tiles = pl.tile_of(g // pl.blocks[0], i, 0, h)
    map_runs(graph, out, out_start, length, tiles)
    codelet = reduce_codelet(q.partials_dtype, q.out_dtype)
    add_vertex_runs(graph, cs, codelet, [length], out_start, tiles,
                    {"out": out_start, "partials": part_starts},
                    {"out": (q.out_dtype, length), "partials": (q.partials_dtype, length)}, {})


# -- create_matmul_input_* -----------------------------------------------------------------------
def _create_input(graph: Graph, dtype: Any, shape_a: Sequence[int], shape_b: Sequence[int], name: str,
                  options: Mapping[str, Any] | None, lhs: bool) -> Tensor:
    op = "create_matmul_input_lhs" if lhs else "create_matmul_input_rhs"
    ctx = _PlanContext(op)
    if not isinstance(graph, Graph):
        raise ctx.error(f"the first argument must be the graph, got {type(graph).__name__}")
    dtype = _as_float_dtype(ctx, dtype)
    opts = _options(ctx, options, dtype)
    spec = _Spec.of(ctx, tuple(shape_a), tuple(shape_b), dtype, dtype)
    shape = tuple(shape_a) if lhs else tuple(shape_b)
    own = spec.a_batch if lhs else spec.b_batch
    rows_cols = (spec.m, spec.k) if lhs else (spec.k, spec.n)
    groups = math.prod(own)
    if spec.groups * spec.m * spec.n * spec.k == 0:
        t = graph.add_variable(dtype, shape, name=name or op)
        map_linearly(graph, t)
        return t
    pl, swapped = _plan(spec, opts, graph.target)
    q = pl.problem
    grid_m, grid_n, grid_k = _Grid.of(q.m, pl.blocks[1]), _Grid.of(q.n, pl.blocks[2]), _Grid.of(
        q.k, pl.blocks[3])
    # In a swapped plan, A^T is the plan's right operand and B^T its left one.
    role = ("a" if lhs else "b") if not swapped else ("b" if lhs else "a")
    rows, cols = (grid_m, grid_k) if role == "a" else (grid_k, grid_n)
    fake = OpContext(graph, P.Sequence(), op, name or op)
    group_of = _group_map(own, spec.batch)
    var, starts = _slab_variable(fake, pl, dtype, groups, rows, cols, role, group_of, name=name or op)
    view = _slab_view(var, groups, rows, cols)
    if swapped:
        view = view.transpose(0, 2, 1)
    assert view.shape[1:] == rows_cols, (view.shape, rows_cols)
    return view.reshape(shape)


def _slab_view(var: Tensor, groups: int, rows: _Grid, cols: _Grid) -> Tensor:
    """The ``(groups, R, C)`` matrix a column-slab variable holds (strided when one slab).

    Every slab but the last is ``w`` columns wide (:meth:`_Grid.of`), so the full ones are one
    ``(groups, R, slabs, w)`` strided block read as ``(groups, R, slabs * w)``, and the last one
    another: a :class:`~softipu.graph.tensor.Slabs` layout, a few ints however large the matrix.
    """
    r_total, c_total = int(rows.sizes.sum()), int(cols.sizes.sum())
    if len(cols) == 1:
        return var.reshape(groups, r_total, c_total)
    w = int(cols.sizes[0])
    full = int(np.count_nonzero(cols.sizes == w))
    pieces = [(var.offset, (groups, r_total, full, w), (r_total * c_total, w, r_total * w, 1),
               (groups, r_total, full * w))]
    if full < len(cols):
        last = c_total - full * w
        pieces.append((var.offset + full * r_total * w, (groups, r_total, last), (r_total * c_total, last, 1),
                       (groups, r_total, last)))
    slabs = Slabs(tuple(pieces), axis=2, perm=(0, 1, 2))
    return Tensor(var.graph, var.dtype, (groups, r_total, c_total), 0, (), None, slabs)
