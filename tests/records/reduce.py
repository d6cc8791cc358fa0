"""Reductions and argmax/argmin against numpy (float64 oracles, cast by the runner)."""

from __future__ import annotations

import numpy as np
from tests.records import OpRecord, default_input

import softipu as sp
from softipu.ops.reduce import (
    ReduceOp,
    argmax,
    argmin,
    reduce,
    reduce_max,
    reduce_mean,
    reduce_min,
    reduce_prod,
    reduce_sum,
)

F32, F16, I32, BOOL = sp.float32, sp.float16, sp.int32, sp.bool_

# Input shapes per case: odd sizes, sizes that do not divide by 8 tiles, 0-d and empty; the
# last stays small for the GC200 run.
ALL_SHAPES = (((37,),), ((5, 7),), ((3, 4, 5),), ((),), ((0, 3),), ((129, 3),), ((6, 5),))
MATRIX = (((5, 7),), ((40, 33),), ((1, 9),), ((64, 3),), ((6, 5),))
CUBE = (((3, 4, 5),), ((7, 2, 9),), ((2, 33, 17),), ((3, 4, 5),))


def _with_edges(rng: np.random.Generator, shape, dtype: sp.DType, i: int) -> np.ndarray:
    """Normals with a NaN, +Inf and -Inf sprinkled in (for floats)."""
    a = default_input(rng, shape, dtype, i)
    if dtype.is_float and a.size >= 3:
        flat = a.reshape(-1)
        picks = rng.choice(flat.size, size=3, replace=False)
        flat[picks] = [np.nan, np.inf, -np.inf]
    return a


def _small_ints(rng: np.random.Generator, shape, dtype: sp.DType, i: int) -> np.ndarray:
    """Values near 1 so products of many elements stay finite."""
    if dtype.is_float:
        return rng.uniform(0.9, 1.1, size=shape).astype(dtype.numpy)
    return rng.integers(-2, 3, size=shape).astype(dtype.numpy)


def _f64(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float64) if a.dtype.kind == "f" else a


def _np_reduce(op: ReduceOp, a: np.ndarray, axis) -> np.ndarray:
    if op is ReduceOp.ADD:
        return np.sum(_f64(a), axis=axis)
    if op is ReduceOp.SQUARE_ADD:
        return np.sum(_f64(a) ** 2, axis=axis)
    if op is ReduceOp.MUL:
        return np.prod(_f64(a), axis=axis)
    if op in (ReduceOp.MAX, ReduceOp.MIN):
        if a.size:
            return (np.max if op is ReduceOp.MAX else np.min)(a, axis=axis)
        low = -np.inf if a.dtype.kind == "f" else np.iinfo(a.dtype).min
        high = np.inf if a.dtype.kind == "f" else np.iinfo(a.dtype).max
        return np.full(_kept(a.shape, axis), low if op is ReduceOp.MAX else high, a.dtype)
    if op is ReduceOp.LOGICAL_AND:
        return np.all(a, axis=axis)
    return np.any(a, axis=axis)


def _kept(shape, axis):
    axes = range(len(shape)) if axis is None else np.atleast_1d(axis) % max(len(shape), 1)
    return tuple(d for i, d in enumerate(shape) if i not in set(int(k) for k in axes))


def _record(name, op, dims, shapes, dtypes, make_input=default_input) -> OpRecord:
    axis = None if dims is None else dims
    return OpRecord(
        name=name,
        op=lambda g, x, prog: reduce(g, x, prog, dims=dims, op=op),
        oracle=lambda a: _np_reduce(op, a, axis),
        shapes=shapes, dtypes=dtypes, make_input=make_input)


RECORDS: list[OpRecord] = [
    _record("reduce_add_all", ReduceOp.ADD, None, ALL_SHAPES, (F32, F16, I32)),
    _record("reduce_add_inner", ReduceOp.ADD, 1, MATRIX, (F32, F16, I32)),
    _record("reduce_add_outer", ReduceOp.ADD, 0, MATRIX, (F32, F16, I32)),
    _record("reduce_add_middle", ReduceOp.ADD, (1,), CUBE, (F32, F16)),
    _record("reduce_add_split_dims", ReduceOp.ADD, (0, 2), CUBE, (F32, I32)),
    _record("reduce_add_lead_dims", ReduceOp.ADD, (0, 1), CUBE, (F32,)),
    _record("reduce_add_batch_norm_dims", ReduceOp.ADD, (0, 2, 3),
            (((2, 3, 4, 5),), ((8, 16, 3, 3),), ((3, 1, 7, 1),), ((2, 3, 2, 2),)), (F32, F16)),
    _record("reduce_max_interleaved_dims", ReduceOp.MAX, (1, 3),
            (((2, 3, 4, 5),), ((5, 9, 6, 3),), ((2, 3, 2, 2),)), (F32, I32), _with_edges),
    _record("reduce_add_no_dims", ReduceOp.ADD, (), MATRIX, (F32,)),
    _record("reduce_max_all", ReduceOp.MAX, None, ALL_SHAPES, (F32, F16, I32), _with_edges),
    _record("reduce_max_inner", ReduceOp.MAX, -1, MATRIX, (F32, F16), _with_edges),
    _record("reduce_max_outer", ReduceOp.MAX, 0, MATRIX, (F32, F16, I32), _with_edges),
    _record("reduce_min_outer", ReduceOp.MIN, 0, MATRIX, (F32, I32), _with_edges),
    _record("reduce_min_split", ReduceOp.MIN, (0, 2), CUBE, (F32, F16), _with_edges),
    _record("reduce_mul_inner", ReduceOp.MUL, 1, MATRIX, (F32, I32), _small_ints),
    _record("reduce_mul_outer", ReduceOp.MUL, 0, MATRIX, (F32, F16), _small_ints),
    _record("reduce_square_add_inner", ReduceOp.SQUARE_ADD, 1, MATRIX, (F32, F16)),
    _record("reduce_square_add_outer", ReduceOp.SQUARE_ADD, 0, MATRIX, (F32, F16)),
    _record("reduce_and_inner", ReduceOp.LOGICAL_AND, 1, MATRIX, (BOOL,)),
    _record("reduce_or_outer", ReduceOp.LOGICAL_OR, 0, MATRIX, (BOOL,)),
    _record("reduce_or_all", ReduceOp.LOGICAL_OR, None, ALL_SHAPES, (BOOL,)),
    OpRecord(
        "reduce_max_keepdims",
        lambda g, x, prog: reduce(g, x, prog, dims=(0, 2), op=ReduceOp.MAX,
                                  options={"keepdims": True}),
        lambda a: np.max(a, axis=(0, 2), keepdims=True), CUBE, (F32,)),
    OpRecord("reduce_sum", lambda g, x, prog: reduce_sum(g, x, prog, dims=0),
             lambda a: np.sum(_f64(a), axis=0), MATRIX, (F32, F16)),
    OpRecord("reduce_mean", lambda g, x, prog: reduce_mean(g, x, prog, dims=(1, 2)),
             lambda a: np.mean(_f64(a), axis=(1, 2)), CUBE, (F32, F16)),
    OpRecord("reduce_mean_all", lambda g, x, prog: reduce_mean(g, x, prog),
             lambda a: np.mean(_f64(a)), ALL_SHAPES[:4] + ALL_SHAPES[5:], (F32,)),
    OpRecord("reduce_max", lambda g, x, prog: reduce_max(g, x, prog, dims=1),
             lambda a: np.max(a, axis=1), MATRIX, (F32, I32)),
    OpRecord("reduce_min", lambda g, x, prog: reduce_min(g, x, prog),
             lambda a: np.min(a), ALL_SHAPES[:4] + ALL_SHAPES[5:], (F32, F16)),
    OpRecord("reduce_prod", lambda g, x, prog: reduce_prod(g, x, prog, dims=1),
             lambda a: np.prod(_f64(a), axis=1), MATRIX, (F32,), _small_ints),
    OpRecord("argmax_last", lambda g, x, prog: argmax(g, x, prog, dim=-1),
             lambda a: np.argmax(a, axis=-1), MATRIX + CUBE, (F32, F16, I32), _with_edges),
    OpRecord("argmax_first", lambda g, x, prog: argmax(g, x, prog, dim=0),
             lambda a: np.argmax(a, axis=0), MATRIX + CUBE, (F32, I32), _with_edges),
    OpRecord("argmin_middle", lambda g, x, prog: argmin(g, x, prog, dim=1),
             lambda a: np.argmin(a, axis=1), CUBE, (F32, F16), _with_edges),
    OpRecord("argmin_ties", lambda g, x, prog: argmin(g, x, prog, dim=1, options={"keepdims": True}),
             lambda a: np.argmin(a, axis=1, keepdims=True), MATRIX, (I32,), _small_ints),
]
