"""Elementwise ops (popops): unary, binary and ternary maps, fused expressions, casts, in place.

Every op is one compute set of tile-local vertices over the output:

* **Broadcasting** follows numpy. **Dtypes** follow numpy's promotion restricted to softipu's
  dtypes: ``float16 + float32 -> float32``, ``int8 + float16 -> float16``, ``int32 + int64 ->
  int64``; a mix numpy would take to float64 (``int32 + float32``, ``int64 + uint64``) is an
  OpError: cast one side first. Python numbers are weakly typed (NEP 50): ``x_f16 * 2.0`` stays
  float16, ``x_i32 + 1`` stays int32, while ``x_i32 * 0.5`` is float32. Comparisons and predicates
  give ``bool_``. Ops refuse dtypes they are not defined for (``exp`` of an int tensor, bitwise
  ops on floats).
* **Semantics** where libraries differ: ``div`` of integers truncates toward zero (C, popops);
  ``rem`` is C's ``fmod`` (sign of the dividend, popops' REMAINDER) and ``remainder`` is Python's
  ``%`` (sign of the divisor, ``torch.remainder``); integer division or remainder by zero gives 0;
  ``round`` rounds half to even; ``maximum``/``minimum``/``clamp`` propagate NaN;
  ``shift_right_logical`` fills with zeros and ``shift_right_arithmetic`` with the sign; shift
  amounts outside ``[0, bits)`` give 0 (or -1 for an arithmetic shift of a negative value);
  float -> int casts truncate toward zero, saturate and send NaN to 0.
* **Planning**: the output is mapped like the first full-shape input (popops'
  ``createOutputForElementWiseOp``), or linearly when there is none. When every operand is the
  output's shape or a scalar, each contiguous tile region of the output is one vertex and
  regions of equal length and spacing go in one bulk call, so the engine runs a few batched calls
  over zero-copy strided views. A broadcast operand (a bias row, a per-row scale) splits the
  output into blocks of whole rows, each block one vertex on the tile holding most of it; the
  operand's row is then a plain view shared by the block (popops' BroadcastVectorInner), never a
  per-element gather.
* ``map`` fuses an expression tree (built with :class:`E`) into one codelet: one compute set, one
  pass, cycles the sum of its nodes' inner loops. ``*_`` variants work in place.

>>> import numpy as np, softipu as sp
>>> from softipu import program as P
>>> from softipu.ops import elementwise as ew
>>> g = sp.Graph(sp.targets.ipu_model(tiles=4)); prog = P.Sequence()
>>> x = g.add_variable(sp.float32, (2, 3), name="x"); b = g.add_variable(sp.float32, (3,), name="b")
>>> sp.ops.map_linearly(g, x); sp.ops.map_linearly(g, b)
>>> y = ew.map(g, ew.E.relu(ew.E.add(ew.E.input(0), ew.E.input(1))), [x, b], prog)
>>> eng = sp.Engine(g, [prog])
>>> eng.write_tensor(x, [[1, -2, 3], [-4, 5, -6]]); eng.write_tensor(b, [1, 1, 1]); eng.run(0)
>>> eng.read_tensor(y)
array([[2., 0., 4.],
       [0., 6., 0.]], dtype=float32)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from softipu.codelets.elementwise import (
    BinaryOp,
    Expr,
    ExprKind,
    Kinds,
    Operand,
    Result,
    TernaryOp,
    UnaryOp,
    binary_op_codelet,
    binary_op_inplace_codelet,
    cast_codelet,
    map_codelet,
    typecheck,
    unary_op_codelet,
    unary_op_inplace_codelet,
)
from softipu.dtypes import as_dtype, float16, float32
from softipu.errors import DTypeError
from softipu.graph import program as P
from softipu.graph.graph import Graph
from softipu.graph.tensor import Tensor
from softipu.graph.vertex import Vertex
from softipu.ops.common import OpContext, broadcast_shapes, parse_options, rows_of, tile_regions
from softipu.ops.mapping import map_linearly

__all__ = [
    "E", "map", "map_", "cast", "where", "select", "clamp", "clamp_",
    # unary
    "abs", "neg", "sign", "exp", "expm1", "log", "log1p", "sqrt", "rsqrt", "cbrt", "sin", "cos", "tan",
    "tanh", "sigmoid", "erf", "gelu", "gelu_erf", "relu", "square", "reciprocal", "floor", "ceil",
    "round", "trunc", "is_finite", "is_nan", "is_inf", "logical_not", "bitwise_not", "popcount",
    "count_leading_zeros",
    # binary
    "add", "sub", "mul", "div", "pow", "rem", "remainder", "maximum", "minimum", "atan2", "eq", "ne",
    "lt", "le", "gt", "ge", "logical_and", "logical_or", "logical_xor", "bitwise_and", "bitwise_or",
    "bitwise_xor", "shift_left", "shift_right_logical", "shift_right_arithmetic",
    # in place
    "abs_", "neg_", "sign_", "exp_", "expm1_", "log_", "log1p_", "sqrt_", "rsqrt_", "cbrt_", "sin_",
    "cos_", "tan_", "tanh_", "sigmoid_", "erf_", "gelu_", "gelu_erf_", "relu_", "square_",
    "reciprocal_", "floor_", "ceil_", "round_", "trunc_", "bitwise_not_", "add_", "sub_", "mul_",
    "div_", "pow_", "rem_", "remainder_", "maximum_", "minimum_", "atan2_", "bitwise_and_",
    "bitwise_or_", "bitwise_xor_", "shift_left_", "shift_right_logical_", "shift_right_arithmetic_",
]

Number = bool | int | float

UNARY_OPS: dict[str, UnaryOp] = {
    "abs": UnaryOp.ABSOLUTE, "neg": UnaryOp.NEGATE, "sign": UnaryOp.SIGNUM, "exp": UnaryOp.EXPONENT,
    "expm1": UnaryOp.EXPONENT_MINUS_ONE, "log": UnaryOp.LOGARITHM, "log1p": UnaryOp.LOGARITHM_ONE_PLUS,
    "sqrt": UnaryOp.SQRT, "rsqrt": UnaryOp.RSQRT, "cbrt": UnaryOp.CBRT, "sin": UnaryOp.SIN,
    "cos": UnaryOp.COS, "tan": UnaryOp.TAN, "tanh": UnaryOp.TANH, "sigmoid": UnaryOp.SIGMOID,
    "erf": UnaryOp.ERF, "gelu": UnaryOp.GELU, "gelu_erf": UnaryOp.GELU_ERF, "relu": UnaryOp.RELU,
    "square": UnaryOp.SQUARE, "reciprocal": UnaryOp.INVERSE, "floor": UnaryOp.FLOOR,
    "ceil": UnaryOp.CEIL, "round": UnaryOp.ROUND, "trunc": UnaryOp.TRUNC,
    "is_finite": UnaryOp.IS_FINITE, "is_nan": UnaryOp.IS_NAN, "is_inf": UnaryOp.IS_INF,
    "logical_not": UnaryOp.LOGICAL_NOT, "bitwise_not": UnaryOp.BITWISE_NOT,
    "popcount": UnaryOp.POPCOUNT, "count_leading_zeros": UnaryOp.COUNT_LEADING_ZEROS,
}
BINARY_OPS: dict[str, BinaryOp] = {
    "add": BinaryOp.ADD, "sub": BinaryOp.SUBTRACT, "mul": BinaryOp.MULTIPLY, "div": BinaryOp.DIVIDE,
    "pow": BinaryOp.POWER, "rem": BinaryOp.REMAINDER, "remainder": BinaryOp.MODULO,
    "maximum": BinaryOp.MAXIMUM, "minimum": BinaryOp.MINIMUM, "atan2": BinaryOp.ATAN2,
    "eq": BinaryOp.EQUAL, "ne": BinaryOp.NOT_EQUAL, "lt": BinaryOp.LESS_THAN,
    "le": BinaryOp.LESS_THAN_EQUAL, "gt": BinaryOp.GREATER_THAN, "ge": BinaryOp.GREATER_THAN_EQUAL,
    "logical_and": BinaryOp.LOGICAL_AND, "logical_or": BinaryOp.LOGICAL_OR,
    "logical_xor": BinaryOp.LOGICAL_XOR, "bitwise_and": BinaryOp.BITWISE_AND,
    "bitwise_or": BinaryOp.BITWISE_OR, "bitwise_xor": BinaryOp.BITWISE_XOR,
    "shift_left": BinaryOp.SHIFT_LEFT, "shift_right_logical": BinaryOp.SHIFT_RIGHT,
    "shift_right_arithmetic": BinaryOp.SHIFT_RIGHT_SIGN_EXTEND,
}

# Planning constants [U]: a block vertex holds about a worker's share of a tile's output (so
# blocks straddling tile boundaries move little data) and never below 64 elements; more than
# MAX_RUNS irregular region runs switch to the regular block plan (few engine calls).
MIN_BLOCK_ELEMENTS = 64
MAX_RUNS = 64


# -- the expression builder ------------------------------------------------------------------------
def _expr(v: Any) -> Expr:
    if isinstance(v, Expr):
        return v
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, (bool, int, float)):
        return Expr(ExprKind.CONST, value=v)
    raise DTypeError(f"expected an expression or a number, got {type(v).__name__}")


class E:
    """Builds ``map`` expressions: ``E.input(i)``, ``E.const(v)``, ``E.cast(e, dtype)``, one
    method per unary/binary op name of this module (``E.exp(e)``, ``E.add(a, b)``...) and
    ``E.select(cond, a, b)`` / ``E.where``, ``E.clamp(x, lo, hi)``. Numbers are constants.

    >>> from softipu.ops.elementwise import E
    >>> str(E.add(E.input(0), E.mul(E.input(1), 2.0)))
    'add(in0,multiply(in1,2.0))'
    """

    @staticmethod
    def input(index: int) -> Expr:
        return Expr(ExprKind.INPUT, index=index)

    @staticmethod
    def const(value: Number) -> Expr:
        return _expr(value)

    @staticmethod
    def cast(x: Any, dtype: Any) -> Expr:
        return Expr(ExprKind.CAST, args=(_expr(x),), dtype=as_dtype(dtype))

    @staticmethod
    def select(cond: Any, a: Any, b: Any) -> Expr:
        return Expr(ExprKind.TERNARY, TernaryOp.SELECT, (_expr(cond), _expr(a), _expr(b)))

    where = select

    @staticmethod
    def clamp(x: Any, lo: Any, hi: Any) -> Expr:
        return Expr(ExprKind.TERNARY, TernaryOp.CLAMP, (_expr(x), _expr(lo), _expr(hi)))


for _name, _op in UNARY_OPS.items():
    setattr(E, _name, staticmethod(lambda x, _op=_op: Expr(ExprKind.UNARY, _op, (_expr(x),))))
for _name, _op in BINARY_OPS.items():
    setattr(E, _name, staticmethod(lambda a, b, _op=_op: Expr(ExprKind.BINARY, _op, (_expr(a), _expr(b)))))


# -- the shared driver -------------------------------------------------------------------------------
def _bind(ctx: OpContext, args: Sequence[Any]) -> tuple[list[Expr], list[Tensor]]:
    """Tensors become inputs (in order), numbers constants."""
    exprs, tensors = [], []
    for a in args:
        if isinstance(a, Tensor):
            exprs.append(Expr(ExprKind.INPUT, index=len(tensors)))
            tensors.append(a)
        elif isinstance(a, (bool, int, float, np.generic)) and np.ndim(a) == 0:
            exprs.append(_expr(a))
        else:
            raise ctx.error(f"operands must be tensors or numbers, got {type(a).__name__}")
    return exprs, tensors


def _start(graph: Graph, prog: Any, op: str, name: str, args: Sequence[Any]) -> OpContext:
    return OpContext.start(graph, prog, op, name, *[a for a in args if isinstance(a, Tensor)])


def _describe(tensors: Sequence[Tensor]) -> str:
    return ", ".join(f"{t.name} {t.dtype} {t.shape}" for t in tensors) or "no tensors"


def _typed(ctx: OpContext, expr: Expr, tensors: Sequence[Tensor]) -> Expr:
    try:
        return typecheck(expr, tuple(t.dtype for t in tensors))
    except DTypeError as exc:
        raise ctx.error(f"{exc} (inputs: {_describe(tensors)})") from None


def _run(ctx: OpContext, expr: Expr, tensors: list[Tensor], *, inplace: bool = False,
         seed: int | None = None) -> Tensor:
    """Type ``expr``, plan the output's blocks, add the vertices, execute: the one path of every op."""
    typed = _typed(ctx, expr, tensors)
    shape = broadcast_shapes(ctx, *(t.shape for t in tensors))
    target = tensors[0] if inplace else None
    if target is not None:
        typed, tensors = _prepare_inplace(ctx, typed, tensors, shape)
    out = target if target is not None else ctx.graph.add_variable(
        typed.dtype, shape, name=f"{ctx.name}/out")
    if out.numel == 0:
        return out
    problem = _Problem.of(shape, [t.broadcast(shape) for t in tensors])
    calls, worker = _plan(ctx, problem, out, fresh=target is None, ref=_reference(problem, inplace))
    codelet, names, out_name = _choose(typed, tensors, problem.kinds, inplace, seed, worker)
    cs = ctx.compute_set()
    for call in calls:
        fields: dict[str, Any] = {n: f for n, f in zip(names, call.operands, strict=True) if n}
        fields[out_name] = call.out
        if seed is not None:
            fields["base"] = call.starts
        ctx.graph.add_vertices(cs, codelet, fields, call.tiles)
    ctx.execute(cs)
    return out


def _prepare_inplace(ctx: OpContext, typed: Expr, tensors: list[Tensor], shape: tuple[int, ...]):
    target = tensors[0]
    if shape != target.shape:
        raise ctx.error(f"in place, the result must keep {target.name}'s shape {target.shape}; the "
                        f"operands broadcast to {shape} ({_describe(tensors)})")
    if target.repeats_elements():
        raise ctx.error(f"cannot update {target.name} {target.shape} in place: it repeats elements "
                        "(a broadcast view?)")
    if typed.dtype is not target.dtype:
        if not np.can_cast(typed.dtype.numpy, target.dtype.numpy, casting="same_kind"):
            raise ctx.error(f"the result is {typed.dtype}, which cannot be stored in {target.name} "
                            f"({target.dtype}) in place")
        typed = Expr(ExprKind.CAST, args=(typed,), dtype=target.dtype)
    # An operand sharing elements with the target is read before it is overwritten: copy it.
    tensors = [tensors[0]] + [_copy_if_aliased(ctx, t, target, i) for i, t in enumerate(tensors) if i]
    return typed, tensors


def _copy_if_aliased(ctx: OpContext, t: Tensor, target: Tensor, i: int) -> Tensor:
    if not _overlaps(t, target):
        return t
    copy = ctx.graph.add_variable(t.dtype, t.shape, name=f"{ctx.name}/operand{i}")
    map_linearly(ctx.graph, copy, grain_size=ctx.graph.target.vector_width(t.dtype.itemsize))
    ctx.prog.add(P.Copy(t, copy))
    return copy


def _overlaps(a: Tensor, b: Tensor) -> bool:
    if a.dtype is not b.dtype or a.numel == 0 or b.numel == 0:
        return False
    a_starts, a_lengths = a.runs()
    b_starts, b_lengths = b.runs()
    order = np.argsort(a_starts, kind="stable")
    a_starts, a_reach = a_starts[order], np.maximum.accumulate((a_starts + a_lengths)[order])
    k = np.searchsorted(a_starts, b_starts + b_lengths, side="left") - 1
    return bool(np.any((k >= 0) & (a_reach[np.maximum(k, 0)] > b_starts)))


def _choose(typed: Expr, tensors: list[Tensor], kinds: tuple[Operand, ...], inplace: bool,
            seed: int | None, worker: bool) -> tuple[type[Vertex], list[str], str]:
    """The codelet and the field name of each operand ('' for the in-place target) and of out.

    On tile regions, a single popops op over inputs of its own dtype runs as UnaryOp1D /
    BinaryOp1D (and their in-place forms), a cast as Cast1D, anything else as one fused map
    MultiVertex; on blocks (``worker``), as one-worker Cast2D / Map2D vertices.
    """
    dtypes = tuple(t.dtype for t in tensors)
    plain = all(k in (Operand.FULL, Operand.SCALAR) for k in kinds)
    args = typed.args
    direct = all(a.kind is ExprKind.INPUT and a.index == i and a.dtype is dtypes[i]
                 for i, a in enumerate(args)) and len(args) == len(tensors)
    if typed.kind is ExprKind.CAST and direct and not inplace:
        return cast_codelet(dtypes[0], typed.dtype, seed, kinds[0], worker), ["x"], "out"
    names = ["" if inplace and i == 0 else f"in{i}" for i in range(len(tensors))]
    if worker:
        return map_codelet(typed, dtypes, kinds, inplace, worker=True), names, "out"
    if typed.kind is ExprKind.UNARY and direct and kinds == (Operand.FULL,):
        if inplace:
            return unary_op_inplace_codelet(typed.op, dtypes[0]), [""], "x"
        return unary_op_codelet(typed.op, dtypes[0]), ["x"], "out"
    if typed.kind is ExprKind.BINARY and direct and plain and dtypes[0] is dtypes[1] \
            and typed.op.value.promote:
        if inplace:
            return binary_op_inplace_codelet(typed.op, dtypes[0]), ["", "b"], "a"
        return binary_op_codelet(typed.op, dtypes[0]), ["a", "b"], "out"
    return map_codelet(typed, dtypes, kinds, inplace), names, "out"


# -- planning ------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Problem:
    """The op as a 2-D problem: ``rows x cols`` output elements (row-major) and each operand as a
    ``(rows, cols)`` view with its :class:`Operand` kind."""

    rows: int
    cols: int
    views: tuple[Tensor, ...]
    kinds: tuple[Operand, ...]

    @classmethod
    def of(cls, shape: tuple[int, ...], views: list[Tensor]) -> _Problem:
        """Merge the output's axes wherever every strided operand's strides allow; the innermost
        merged axis is the row."""
        strided = [v for v in views if v.is_strided]
        dims: list[list[Any]] = []  # [size, strides of the strided operands], outer to inner
        for d, size in enumerate(shape):
            if size == 1:
                continue
            st = [v.strides[d] for v in strided]
            if dims and all(p == s * size for p, s in zip(dims[-1][1], st, strict=True)):
                dims[-1][0] *= size
                dims[-1][1] = st
            else:
                dims.append([size, st])
        numel = int(np.prod(shape, dtype=np.int64))
        cols = dims[-1][0] if len(dims) > 1 else max(numel, 1)
        rows = numel // cols if numel else 0
        kinds, j = [], 0
        for v in views:
            if not v.is_strided:
                kinds.append(Operand.FULL)
                continue
            inner_zero = bool(dims) and dims[-1][1][j] == 0
            rows_same = rows == 1 or all(dim[1][j] == 0 for dim in dims[:-1])
            j += 1
            kinds.append(_KIND[inner_zero, rows_same and rows > 1] if rows > 1 else
                         (Operand.SCALAR if inner_zero else Operand.FULL))
        return cls(rows, cols, tuple(v.reshape(rows, cols) for v in views), tuple(kinds))


_KIND = {(False, False): Operand.FULL, (False, True): Operand.ROW, (True, False): Operand.COL,
         (True, True): Operand.SCALAR}


@dataclass(frozen=True, slots=True)
class _Call:
    """One add_vertices call: ``V`` vertices, their tiles, their first output element (flat)."""

    tiles: np.ndarray
    starts: np.ndarray
    out: Tensor  # (V, n)
    operands: tuple[Tensor, ...]  # (V, n_i)


def _reference(problem: _Problem, inplace: bool) -> int | None:
    """The operand whose mapping the output follows: the in-place target, or the first full one."""
    if inplace:
        return 0
    return next((i for i, k in enumerate(problem.kinds) if k is Operand.FULL), None)


def _plan(ctx: OpContext, problem: _Problem, out: Tensor, fresh: bool,
          ref: int | None) -> tuple[list[_Call], bool]:
    """(the bulk calls, whether their vertices are one-worker block vertices); maps a fresh out."""
    out2d = out.reshape(problem.rows, problem.cols)
    if problem.rows == 1:
        calls = _plan_regions(ctx, problem, out2d, fresh, ref)
        if calls is not None:
            return calls, False
    calls = _plan_blocks(ctx.graph, problem, out2d)
    _place(ctx.graph, problem, calls, ref)
    if fresh:
        for call in calls:
            ctx.graph.set_tile_mappings(call.out, call.tiles)
    return calls, True


def _plan_regions(ctx: OpContext, problem: _Problem, out2d: Tensor, fresh: bool,
                  ref: int | None) -> list[_Call] | None:
    """One vertex per contiguous tile region of the reference (1-D problems)."""
    graph, out1d = ctx.graph, out2d[0]
    views = [v[0] for v in problem.views]
    regions = None
    if not fresh:
        regions = _regions(graph, out1d)  # in place: the target's own regions
    elif ref is not None:
        regions = _regions(graph, views[ref])
    mapped_by_ref = regions is not None
    if regions is None:
        if not fresh:
            return None
        grain = graph.target.vector_width(out1d.dtype.itemsize)
        map_linearly(graph, out1d, grain_size=grain, min_elements_per_tile=grain * 8)
        regions = _regions(graph, out1d)
    starts, lengths, tiles = regions
    runs = _runs(starts, lengths)
    if len(runs) > MAX_RUNS:
        return None
    calls = []
    for lo, hi in runs:
        s, n = starts[lo:hi], int(lengths[lo])
        operands = tuple(rows_of(v, s, n) if k is Operand.FULL else v[0:1].broadcast((hi - lo, 1))
                         for v, k in zip(views, problem.kinds, strict=True))
        call = _Call(tiles[lo:hi], s, rows_of(out1d, s, n), operands)
        if fresh and mapped_by_ref:
            graph.set_tile_mappings(call.out, call.tiles)
        calls.append(call)
    return calls


def _regions(graph: Graph, t: Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(starts, lengths, tiles) of the runs of a 1-D tensor's elements on one tile; None where
    some element is unmapped. Strided tensors are cut at the mapping's interval bounds."""
    n = t.numel
    if t.is_strided and t.strides[0] < 0:
        rev = _regions(graph, t.reverse())
        if rev is None:
            return None
        s, length, tiles = (a[::-1] for a in rev)
        return n - (s + length), length, tiles
    if t.is_strided and t.strides[0] > 0:
        mapping = graph.resolved_mapping(t.dtype)
        step, first = t.strides[0], t.offset
        # Only the mapping's intervals that meet [first, last] can cut the tensor.
        a = max(int(np.searchsorted(mapping.starts, first, side="right")) - 1, 0)
        b = int(np.searchsorted(mapping.starts, first + max(n - 1, 0) * step, side="right"))
        bounds = np.concatenate((mapping.starts[a:b], mapping.ends[a:b]))
        cuts = -(-(bounds - first) // step)
        cuts = np.unique(np.concatenate(([0, n], cuts[(cuts > 0) & (cuts < n)])))
        starts = cuts[:-1]
        tiles = mapping.tiles_of(first + starts * step).astype(np.int64)
    else:
        starts, _, tiles = tile_regions(graph, t)
    if tiles.size and tiles.min() < 0:
        return None
    keep = np.concatenate(([True], tiles[1:] != tiles[:-1]))
    starts, tiles = starts[keep], tiles[keep]
    return starts, np.diff(np.concatenate((starts, [n]))), tiles


def _runs(starts: np.ndarray, lengths: np.ndarray) -> list[tuple[int, int]]:
    """Index ranges of consecutive regions with one length and one spacing (one bulk call each)."""
    s, n = starts.tolist(), lengths.tolist()
    runs, i = [], 0
    while i < len(s):
        j = i + 1
        if j < len(s) and n[j] == n[i]:
            step = s[j] - s[i]
            while j < len(s) and n[j] == n[i] and s[j] - s[j - 1] == step:
                j += 1
        runs.append((i, j))
        i = j
    return runs


def _plan_blocks(graph: Graph, problem: _Problem, out2d: Tensor) -> list[_Call]:
    """Vertices over blocks of whole rows (short rows) or column chunks of rows (long rows),
    about one per worker context of every tile."""
    rows, cols = problem.rows, problem.cols
    share = -(-rows * cols // graph.num_tiles)
    block = max(MIN_BLOCK_ELEMENTS, -(-share // graph.target.workers_per_tile))
    views = (out2d,) + problem.views
    kinds = (Operand.FULL,) + problem.kinds
    if cols <= block:
        k = min(rows, max(1, (2 * block + cols) // (2 * cols)))  # the nearest whole number of rows
        whole, tail = divmod(rows, k)
        parts = [(0, whole, k)] * bool(whole) + [(whole * k, 1, tail)] * bool(tail)
        return [_call([_row_block(v, kind, r0, nv, kk) for v, kind in zip(views, kinds, strict=True)],
                      r0 * cols + np.arange(nv, dtype=np.int64) * kk * cols) for r0, nv, kk in parts]
    chunks = -(-cols // block)
    width = -(-cols // chunks)
    full, rest = divmod(cols, width)
    calls = []
    if full <= rows:  # one call per column chunk, a vertex per row
        spans = [(j * width, (j + 1) * width) for j in range(full)]
    else:  # one call per row, a vertex per chunk
        spans = []
        for r in range(rows):
            calls.append(_call([_row_chunks(v, kind, r, full, width)
                                for v, kind in zip(views, kinds, strict=True)],
                               r * cols + np.arange(full, dtype=np.int64) * width))
    if rest:
        spans.append((full * width, cols))
    for c0, c1 in spans:
        calls.append(_call([_col_chunk(v, kind, c0, c1) for v, kind in zip(views, kinds, strict=True)],
                           np.arange(rows, dtype=np.int64) * cols + c0))
    return calls


def _call(fields: list[Tensor], starts: np.ndarray) -> _Call:
    return _Call(np.zeros(starts.size, np.int64), starts, fields[0], tuple(fields[1:]))


def _row_block(v: Tensor, kind: Operand, r0: int, nv: int, kk: int) -> Tensor:
    """``nv`` vertices of ``kk`` whole rows from row ``r0``."""
    if kind is Operand.FULL:
        return v[r0 : r0 + nv * kk].reshape(nv, kk * v.shape[1])
    if kind is Operand.ROW:
        return v[0].broadcast((nv, v.shape[1]))
    if kind is Operand.COL:
        return v[r0 : r0 + nv * kk, 0].reshape(nv, kk)
    return v[0, 0:1].broadcast((nv, 1))


def _col_chunk(v: Tensor, kind: Operand, c0: int, c1: int) -> Tensor:
    """One vertex per row over columns ``c0:c1``."""
    rows = v.shape[0]
    if kind is Operand.FULL:
        return v[:, c0:c1]
    if kind is Operand.ROW:
        return v[0, c0:c1].broadcast((rows, c1 - c0))
    if kind is Operand.COL:
        return v[:, 0:1]
    return v[0, 0:1].broadcast((rows, 1))


def _row_chunks(v: Tensor, kind: Operand, r: int, full: int, width: int) -> Tensor:
    """``full`` vertices of ``width`` columns along row ``r``."""
    if kind in (Operand.FULL, Operand.ROW):
        return v[r if kind is Operand.FULL else 0, : full * width].reshape(full, width)
    return v[r if kind is Operand.COL else 0, 0:1].broadcast((full, 1))


def _place(graph: Graph, problem: _Problem, calls: list[_Call], ref: int | None) -> None:
    """Each block's tile: where the reference holds the block's middle element, unless that
    leaves some tile with much more than its share (a transposed input, say); else linear."""
    total = problem.rows * problem.cols
    placed = [None if ref is None else _middle_tiles(graph, c.operands[ref]) for c in calls]
    if all(t is not None and (t.size == 0 or t.min() >= 0) for t in placed):
        load = np.zeros(graph.num_tiles, np.int64)
        for c, t in zip(calls, placed, strict=True):
            load += np.bincount(t, minlength=graph.num_tiles) * c.out.shape[1]
        biggest = max(c.out.shape[1] for c in calls)
        if load.max() <= 1.25 * total / graph.num_tiles + biggest:
            calls[:] = [_Call(t, c.starts, c.out, c.operands) for c, t in zip(calls, placed, strict=True)]
            return
    calls[:] = [_Call((c.starts + c.out.shape[1] // 2) * graph.num_tiles // max(total, 1), c.starts,
                      c.out, c.operands) for c in calls]


def _middle_tiles(graph: Graph, field: Tensor) -> np.ndarray | None:
    v, n = field.shape
    if field.is_strided:
        address = field.offset + np.arange(v, dtype=np.int64) * field.strides[0] + (n // 2) * field.strides[1]
    else:
        address = field.index[:, n // 2]
    return graph.resolved_mapping(field.dtype).tiles_of(address).astype(np.int64)


# -- public ops ------------------------------------------------------------------------------------------
def map(graph: Graph, expr: Expr, inputs: Sequence[Tensor], prog: P.Sequence, *, name: str = "",
        options: dict | None = None) -> Tensor:
    """Evaluate an expression tree elementwise in ONE compute set (popops::map).

    ``expr`` is built with :class:`E`; ``E.input(i)`` is ``inputs[i]``. Inputs broadcast
    together; dtypes follow the module's rules (casts are inserted where dtypes promote). The
    fused codelet's cycles are the sum of the nodes' inner loops per element. No options.

    >>> import numpy as np, softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops.elementwise import E, map
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=2)); prog = P.Sequence()
    >>> a = g.add_variable(sp.float32, (4,)); sp.ops.map_linearly(g, a)
    >>> y = map(g, E.add(E.input(0), E.mul(E.input(0), 2.0)), [a], prog)
    >>> eng = sp.Engine(g, [prog]); eng.write_tensor(a, [1, 2, 3, 4]); eng.run(0)
    >>> eng.read_tensor(y)
    array([ 3.,  6.,  9., 12.], dtype=float32)
    """
    ctx = _start_map(graph, prog, "map", name, expr, inputs)
    parse_options(ctx, options, {})
    return _run(ctx, expr, list(inputs))


def map_(graph: Graph, expr: Expr, inputs: Sequence[Tensor], prog: P.Sequence, *, name: str = "",
         options: dict | None = None) -> Tensor:
    """:func:`map` writing its result into ``inputs[0]`` (popops::mapInPlace); returns it.

    The result must have ``inputs[0]``'s shape and cast to its dtype (same kind). Other inputs
    that share elements with ``inputs[0]`` are copied first, so they are read as they were.
    """
    ctx = _start_map(graph, prog, "map_", name, expr, inputs)
    parse_options(ctx, options, {})
    if not inputs:
        raise ctx.error("map_ needs at least one input: the tensor to update")
    return _run(ctx, expr, list(inputs), inplace=True)


def _start_map(graph: Graph, prog: Any, op: str, name: str, expr: Any, inputs: Any) -> OpContext:
    if isinstance(inputs, Tensor) or not isinstance(inputs, Sequence):
        raise OpContext.start(graph, prog, op, name).error(
            f"inputs must be a list of tensors, got {type(inputs).__name__}")
    ctx = OpContext.start(graph, prog, op, name, *inputs)
    if not isinstance(expr, Expr):
        raise ctx.error(f"expr must be an expression built with E (E.add(E.input(0), ...)), got "
                        f"{type(expr).__name__}")
    return ctx


def cast(graph: Graph, x: Tensor, dtype: Any, prog: P.Sequence, *, name: str = "",
         options: dict | None = None) -> Tensor:
    """``x`` converted to ``dtype`` (popops::cast).

    Floats round to nearest even; float -> int truncates toward zero and saturates (NaN -> 0);
    to bool is ``x != 0``; int -> int wraps. Options:

    * ``stochasticRounding`` (bool, default False): float32 -> float16 rounds up or down with
      probability proportional to the distance (the IPU's hardware SR);
    * ``seed`` (int, default 0): the SR key. Element ``i`` of the output uses a counter-based hash
      of ``(seed, i)``, so results are bitwise reproducible whatever the tile count or batching.

    >>> import numpy as np, softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops.elementwise import cast
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=2)); prog = P.Sequence()
    >>> x = g.add_variable(sp.float32, (3,)); sp.ops.map_linearly(g, x)
    >>> y = cast(g, x, sp.int32, prog)
    >>> eng = sp.Engine(g, [prog]); eng.write_tensor(x, [2.7, -2.7, np.nan]); eng.run(0)
    >>> eng.read_tensor(y)
    array([ 2, -2,  0], dtype=int32)
    """
    ctx = OpContext.start(graph, prog, "cast", name, x)
    opts = parse_options(ctx, options, {"stochasticRounding": False, "seed": 0})
    try:
        dtype = as_dtype(dtype)
    except DTypeError as exc:
        raise ctx.error(str(exc)) from None
    seed = None
    if opts["stochasticRounding"]:
        if (x.dtype, dtype) != (float32, float16):
            raise ctx.error(f"stochasticRounding applies to float32 -> float16 casts, not {x.dtype} "
                            f"-> {dtype} ({x.name})")
        seed = int(opts["seed"])
    return _run(ctx, Expr(ExprKind.CAST, args=(Expr(ExprKind.INPUT),), dtype=dtype), [x], seed=seed)


def _ternary(graph: Graph, prog: Any, op_label: str, name: str, options: Any, op: TernaryOp,
             args: Sequence[Any], inplace: bool = False) -> Tensor:
    ctx = _start(graph, prog, op_label, name, args)
    parse_options(ctx, options, {})
    exprs, tensors = _bind(ctx, args)
    if inplace and not isinstance(args[0], Tensor):
        raise ctx.error("the first operand of an in-place op must be a tensor")
    return _run(ctx, Expr(ExprKind.TERNARY, op, tuple(exprs)), tensors, inplace=inplace)


def where(graph: Graph, cond: Tensor, a: Tensor | Number, b: Tensor | Number, prog: P.Sequence, *,
          name: str = "", options: dict | None = None) -> Tensor:
    """``cond ? a : b`` elementwise (numpy.where; popops SELECT). ``cond`` must be bool_.

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops.elementwise import where
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=2)); prog = P.Sequence()
    >>> c = g.add_variable(sp.bool_, (2, 3)); x = g.add_variable(sp.float16, (3,))
    >>> sp.ops.map_linearly(g, c); sp.ops.map_linearly(g, x)
    >>> y = where(g, c, x, 0.0, prog); y.shape, y.dtype
    ((2, 3), sp.float16)
    """
    return _ternary(graph, prog, "where", name, options, TernaryOp.SELECT, (cond, a, b))


def select(graph: Graph, cond: Tensor, a: Tensor | Number, b: Tensor | Number, prog: P.Sequence, *,
           name: str = "", options: dict | None = None) -> Tensor:
    """popops' name for :func:`where`, with numpy's argument order ``(cond, a, b)``."""
    return _ternary(graph, prog, "select", name, options, TernaryOp.SELECT, (cond, a, b))


def clamp(graph: Graph, x: Tensor, lo: Tensor | Number, hi: Tensor | Number, prog: P.Sequence, *,
          name: str = "", options: dict | None = None) -> Tensor:
    """``minimum(maximum(x, lo), hi)`` (torch.clamp: NaN stays NaN; ``lo > hi`` gives ``hi``).

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops.elementwise import clamp
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=2)); prog = P.Sequence()
    >>> x = g.add_variable(sp.float32, (5,)); sp.ops.map_linearly(g, x)
    >>> clamp(g, x, -1.0, 1.0, prog).shape
    (5,)
    """
    return _ternary(graph, prog, "clamp", name, options, TernaryOp.CLAMP, (x, lo, hi))


def clamp_(graph: Graph, x: Tensor, lo: Tensor | Number, hi: Tensor | Number, prog: P.Sequence, *,
           name: str = "", options: dict | None = None) -> Tensor:
    """:func:`clamp` written into ``x``; returns ``x``."""
    return _ternary(graph, prog, "clamp_", name, options, TernaryOp.CLAMP, (x, lo, hi), inplace=True)


_EXAMPLE = """
    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops import elementwise as ew
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=2)); prog = P.Sequence()
    >>> x = g.add_variable(sp.{dtype}, (2, 5)); sp.ops.map_linearly(g, x)
    >>> {call}
    {result}
"""


def _example(op: Any, label: str, inplace: bool, binary: bool) -> str:
    dtype = "float32" if op.value.domain & Kinds.FLOAT else "int32"
    args = "x, x[0]" if binary else "x"
    if inplace:
        return _EXAMPLE.format(dtype=dtype, call=f"ew.{label}(g, {args}, prog) is x", result="True")
    out = "bool_" if op.value.result is Result.BOOL else dtype
    return _EXAMPLE.format(dtype=dtype, call=f"y = ew.{label}(g, {args}, prog); y.shape, y.dtype",
                           result=f"((2, 5), sp.{out})")


def _unary(op_name: str, inplace: bool = False) -> Callable[..., Tensor]:
    op = UNARY_OPS[op_name]
    label = op_name + "_" * inplace

    def fn(graph: Graph, x: Tensor, prog: P.Sequence, *, name: str = "",
           options: dict | None = None) -> Tensor:
        ctx = OpContext.start(graph, prog, label, name, x)
        parse_options(ctx, options, {})
        return _run(ctx, Expr(ExprKind.UNARY, op, (Expr(ExprKind.INPUT),)), [x], inplace=inplace)

    fn.__name__ = fn.__qualname__ = label
    what = f"``x = {op_name}(x)`` in place; returns ``x``" if inplace else f"``{op_name}(x)``"
    fn.__doc__ = (f"Elementwise {what} (popops UnaryOpType.{op.name}); takes "
                  f"{_accepts(op)} tensors.\n" + _example(op, label, inplace, binary=False))
    return fn


def _binary(op_name: str, inplace: bool = False) -> Callable[..., Tensor]:
    op = BINARY_OPS[op_name]
    label = op_name + "_" * inplace

    def fn(graph: Graph, a: Tensor | Number, b: Tensor | Number, prog: P.Sequence, *, name: str = "",
           options: dict | None = None) -> Tensor:
        ctx = _start(graph, prog, label, name, (a, b))
        parse_options(ctx, options, {})
        exprs, tensors = _bind(ctx, (a, b))
        if inplace and not isinstance(a, Tensor):
            raise ctx.error(f"the first operand of {label} must be the tensor to update, got "
                            f"{type(a).__name__}")
        return _run(ctx, Expr(ExprKind.BINARY, op, tuple(exprs)), tensors, inplace=inplace)

    fn.__name__ = fn.__qualname__ = label
    what = (f"``a = {op_name}(a, b)`` in place; returns ``a``" if inplace else
            f"``{op_name}(a, b)`` with numpy broadcasting")
    fn.__doc__ = (f"Elementwise {what} (popops BinaryOpType.{op.name}); takes {_accepts(op)} "
                  "tensors; either operand may be a Python number.\n"
                  + _example(op, label, inplace, binary=True))
    return fn


def _accepts(op: Any) -> str:
    return " or ".join(k.name.lower() for k in (Kinds.FLOAT, Kinds.INT, Kinds.BOOL) if k & op.value.domain)


abs = _unary("abs")
neg = _unary("neg")
sign = _unary("sign")
exp = _unary("exp")
expm1 = _unary("expm1")
log = _unary("log")
log1p = _unary("log1p")
sqrt = _unary("sqrt")
rsqrt = _unary("rsqrt")
cbrt = _unary("cbrt")
sin = _unary("sin")
cos = _unary("cos")
tan = _unary("tan")
tanh = _unary("tanh")
sigmoid = _unary("sigmoid")
erf = _unary("erf")
gelu = _unary("gelu")
gelu_erf = _unary("gelu_erf")
relu = _unary("relu")
square = _unary("square")
reciprocal = _unary("reciprocal")
floor = _unary("floor")
ceil = _unary("ceil")
round = _unary("round")
trunc = _unary("trunc")
is_finite = _unary("is_finite")
is_nan = _unary("is_nan")
is_inf = _unary("is_inf")
logical_not = _unary("logical_not")
bitwise_not = _unary("bitwise_not")
popcount = _unary("popcount")
count_leading_zeros = _unary("count_leading_zeros")

add = _binary("add")
sub = _binary("sub")
mul = _binary("mul")
div = _binary("div")
pow = _binary("pow")
rem = _binary("rem")
remainder = _binary("remainder")
maximum = _binary("maximum")
minimum = _binary("minimum")
atan2 = _binary("atan2")
eq = _binary("eq")
ne = _binary("ne")
lt = _binary("lt")
le = _binary("le")
gt = _binary("gt")
ge = _binary("ge")
logical_and = _binary("logical_and")
logical_or = _binary("logical_or")
logical_xor = _binary("logical_xor")
bitwise_and = _binary("bitwise_and")
bitwise_or = _binary("bitwise_or")
bitwise_xor = _binary("bitwise_xor")
shift_left = _binary("shift_left")
shift_right_logical = _binary("shift_right_logical")
shift_right_arithmetic = _binary("shift_right_arithmetic")

abs_ = _unary("abs", inplace=True)
neg_ = _unary("neg", inplace=True)
sign_ = _unary("sign", inplace=True)
exp_ = _unary("exp", inplace=True)
expm1_ = _unary("expm1", inplace=True)
log_ = _unary("log", inplace=True)
log1p_ = _unary("log1p", inplace=True)
sqrt_ = _unary("sqrt", inplace=True)
rsqrt_ = _unary("rsqrt", inplace=True)
cbrt_ = _unary("cbrt", inplace=True)
sin_ = _unary("sin", inplace=True)
cos_ = _unary("cos", inplace=True)
tan_ = _unary("tan", inplace=True)
tanh_ = _unary("tanh", inplace=True)
sigmoid_ = _unary("sigmoid", inplace=True)
erf_ = _unary("erf", inplace=True)
gelu_ = _unary("gelu", inplace=True)
gelu_erf_ = _unary("gelu_erf", inplace=True)
relu_ = _unary("relu", inplace=True)
square_ = _unary("square", inplace=True)
reciprocal_ = _unary("reciprocal", inplace=True)
floor_ = _unary("floor", inplace=True)
ceil_ = _unary("ceil", inplace=True)
round_ = _unary("round", inplace=True)
trunc_ = _unary("trunc", inplace=True)
bitwise_not_ = _unary("bitwise_not", inplace=True)
add_ = _binary("add", inplace=True)
sub_ = _binary("sub", inplace=True)
mul_ = _binary("mul", inplace=True)
div_ = _binary("div", inplace=True)
pow_ = _binary("pow", inplace=True)
rem_ = _binary("rem", inplace=True)
remainder_ = _binary("remainder", inplace=True)
maximum_ = _binary("maximum", inplace=True)
minimum_ = _binary("minimum", inplace=True)
atan2_ = _binary("atan2", inplace=True)
bitwise_and_ = _binary("bitwise_and", inplace=True)
bitwise_or_ = _binary("bitwise_or", inplace=True)
bitwise_xor_ = _binary("bitwise_xor", inplace=True)
shift_left_ = _binary("shift_left", inplace=True)
shift_right_logical_ = _binary("shift_right_logical", inplace=True)
shift_right_arithmetic_ = _binary("shift_right_arithmetic", inplace=True)
