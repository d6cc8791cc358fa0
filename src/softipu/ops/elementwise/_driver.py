"""The shared driver of every elementwise op: bind operands, type the expression, plan, pick the
codelet, add the vertices (in place: check the target and copy aliased operands first)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from softipu.codelets.elementwise import (
    Expr,
    ExprKind,
    Operand,
    binary_op_codelet,
    binary_op_inplace_codelet,
    cast_codelet,
    map_codelet,
    typecheck,
    unary_op_codelet,
    unary_op_inplace_codelet,
)
from softipu.errors import DTypeError
from softipu.graph import program as P
from softipu.graph.graph import Graph
from softipu.graph.tensor import Tensor
from softipu.graph.vertex import Vertex
from softipu.ops.common import OpContext, broadcast_shapes, storage_order, tile_regions
from softipu.ops.elementwise._expr import _expr
from softipu.ops.elementwise._planning import _plan, _Problem, _reference
from softipu.ops.mapping import map_linearly
from softipu.ops.regroup import regroup_operands


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
    if seed is None and _all_transposed(ctx.graph, tensors, shape):  # an embedding table and its gradient
        return _run(ctx, expr, [t.T if t.ndim else t for t in tensors], inplace=inplace).T
    if seed is None and not inplace and _channels_last(tensors, shape):  # a convolution's output
        perm = (0, *range(2, len(shape)), 1)
        inv = (0, len(shape) - 1, *range(1, len(shape) - 1))
        return _run(ctx, expr, [t.broadcast(shape).transpose(perm) for t in tensors]).transpose(inv)
    target = tensors[0] if inplace else None
    if target is not None:
        typed, tensors = _prepare_inplace(ctx, typed, tensors, shape)
    if seed is None:  # an operand stored across the output's grouping: regrouped first (popops)
        ref = 0 if inplace else next((i for i, t in enumerate(tensors) if t.shape == shape), None)
        tensors = regroup_operands(ctx, tensors, shape, ref)
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


def _all_transposed(graph: Graph, tensors: list[Tensor], shape: tuple[int, ...]) -> bool:
    """Whether every operand is a scalar or a 2-D table stored as ``create_slicable_table`` stores
    them (transposed, whole columns a tile): the op then runs on the ``.T`` views, whose blocks
    are contiguous, and its result is the ``.T`` of theirs (the table's layout kept). Other
    transposed views (a matmul's output) keep a row-major result, which row-wise consumers want."""
    rows = shape[0] if len(shape) == 2 else 0
    full = [t for t in tensors if t.ndim]
    if rows < 2 or not full or not all(t.shape == shape and t.is_strided and t.strides == (1, rows)
                                       for t in full):
        return False
    starts, lengths, _ = tile_regions(graph, full[0].T)
    return bool(starts.size) and not np.any(starts % rows) and not np.any(lengths % rows)


def _channels_last(tensors: list[Tensor], shape: tuple[int, ...]) -> bool:
    """Whether the first full-size operand of a 3- to 5-d result is stored channels innermost
    (``[N, C, *spatial]`` with C fastest, the rest row-major: every convolution's output). The
    op then runs in that order and its result keeps the layout, as popops' map clones its
    input's: the next convolution reads it without a transposing copy, and each vertex reads
    contiguous runs, not elements a channel count apart."""
    if not 3 <= len(shape) <= 5 or shape[1] < 2 or math.prod(shape[2:]) < 2:
        return False
    full = next((t for t in tensors if t.shape == shape), None)
    if full is None:
        return False
    want = (0, *range(2, len(shape)), 1)
    return [a for a in storage_order(full) if shape[a] > 1] == [a for a in want if shape[a] > 1]


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
