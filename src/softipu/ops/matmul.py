"""Matrix products (poplin's MatMul): planned, tile-mapped AMP partial products and a reduction.

``matmul(graph, a, b, prog)`` multiplies ``a[..., M, K]`` by ``b[..., K, N]`` with numpy's rules
(1-D operands, broadcast batch dimensions). The work is planned by :mod:`softipu.ops.planner`:
the groups, M, N and K are cut into blocks, tile ``(g, i, j, l)`` multiplies its blocks with an
``AmpMatMul`` vertex (fp32 partials by default), and when K is split over tiles a second compute
set of ``ReducePartials`` vertices adds the partials into the output (and casts them). A serial K
split (less memory a tile) runs as one loop body over its steps.

Block layout, and why it matters for speed: a vertex's field is one contiguous run of memory per
block, and a bulk call's vertices sit at evenly spaced addresses, so the engine runs each call as
one batched GEMM over zero-copy views. An operand whose blocks are contiguous already (a row-major
matrix whose blocks span whole rows, a transposed one spanning whole columns, or a tensor made
with :func:`create_matmul_input_lhs` / :func:`create_matmul_input_rhs`) is used in place; any
other operand is first copied into the planned layout ("column slabs": the matrix cut into its
column blocks, each stored row-major), and the cost model prices that copy's exchange.

Sections: this module (API, shapes and options, the op body, ``create_matmul_input_*``);
:mod:`softipu.ops._matmul_blocks` (the block grid, operand blocks and column slabs);
:mod:`softipu.ops._matmul_vertices` (result and partials variables, AMP and reduce vertices);
:mod:`softipu.ops._matmul_loop` (serial K steps as one loop body, as poplin runs them).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from softipu.codelets.matmul import amp_in_chans, amp_out_chans
from softipu.debug import at, caller_location
from softipu.dtypes import DType, as_dtype, float16, float32
from softipu.graph import program as P
from softipu.graph.graph import Graph
from softipu.graph.tensor import Tensor
from softipu.ops._matmul_blocks import (  # noqa: F401 - re-exported for ops.conv and the tests
    _Blocks,
    _Grid,
    _place_operand,
    _slab_variable,
    _slab_view,
    k_grid,
)
from softipu.ops._matmul_loop import run_serial_loop
from softipu.ops._matmul_vertices import (  # noqa: F401 - re-exported for ops.conv and the tests
    _add_amp_vertices,
    _add_reduce_vertices,
    _output,
    _partials,
    _reduce_stage,
)
from softipu.ops.common import OpContext, OpError, broadcast_shapes, parse_options
from softipu.ops.mapping import map_linearly
from softipu.ops.planner import MatMulProblem, Plan, plan, plan_report

__all__ = ["matmul", "plan_matmul", "matmul_plan_report", "create_matmul_input_lhs",
           "create_matmul_input_rhs", "MATMUL_OPTIONS"]

MATMUL_OPTIONS: dict[str, Any] = {"availableMemoryProportion": 0.6, "partialsType": "float",
                                  "serialLoops": False}
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
    * ``serialLoops`` (bool, default False): True runs a plan's serial K split as one loop body,
      as poplin runs it (``ops/_matmul_loop.py``: one step's exchange, vertex state and control
      code held once: the memory a real IPU would spend); False, the default, unrolls it step by
      step, which the fast engine runs as fused GEMM chains (2-4x faster to simulate: a 2048^3
      fp32 product 0.16 s looped against 0.07 s for numpy) at the price of each step's code in the
      memory plan. The torch frontend's inference models ask for True (``Options.serial_loops``).

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
    loops = bool(opts["serialLoops"])
    straight = plan(MatMulProblem(g_, m, k, n, spec.dtype, partials, spec.dtype, mg, kg,
                                  math.lcm(ng, n_amp) if n >= n_amp else ng), target, amp, loops)
    if not allow_swap:
        return straight, False
    swapped = plan(MatMulProblem(g_, n, k, m, spec.dtype, partials, spec.dtype, ng, kg,
                                 math.lcm(mg, n_amp) if m >= n_amp else mg), target, amp, loops)
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


def _run_plan(ctx: OpContext, pl: Plan, lhs: Any, rhs: Any) -> Tensor:
    """Build the program of plan ``pl`` for ``C = A . B`` (A, B in the plan's orientation)."""
    q = pl.problem
    bg, bm, bn, bk = pl.blocks
    grids = _Grid.of(q.m, bm), _Grid.of(q.n, bn), k_grid(pl)
    a_blocks = lhs.place(ctx, pl, grids[0], grids[2], "a")
    b_blocks = rhs.place(ctx, pl, grids[2], grids[1], "b")
    out, direct = _output(ctx, pl, grids)
    partials = None if direct else _partials(ctx, pl, grids)
    target_blocks = direct if direct is not None else partials
    if pl.looped:  # the serial steps as one loop body (ops._matmul_loop)
        # The reduce built first, run after the loop: it maps the output, which lies below the
        # partials, before the loop's zeroing resolves the tile mapping (a mapping reaching below
        # a resolved one re-resolves the whole address space).
        reduce = None if partials is None else ctx.compute_set("reduce")
        if reduce is not None:
            _add_reduce_vertices(ctx, reduce, pl, grids, partials, out)
        run_serial_loop(ctx, pl, grids, a_blocks, b_blocks, target_blocks)
        if reduce is not None:
            ctx.execute(reduce)
        return out
    for step in range(pl.k_serial):
        cs = ctx.compute_set(f"amp{step}" if pl.k_serial > 1 else "amp")
        _add_amp_vertices(ctx, cs, pl, grids, a_blocks, b_blocks, target_blocks, step)
        ctx.execute(cs)
    _reduce_stage(ctx, pl, grids, partials, out)
    return out



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
    grid_m, grid_n, grid_k = _Grid.of(q.m, pl.blocks[1]), _Grid.of(q.n, pl.blocks[2]), k_grid(pl)
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
