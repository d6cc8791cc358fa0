"""Shared argument checks and layout helpers of the indexing ops (no ops here).

Checks turn a bad argument into an :class:`~softipu.ops.common.OpError` naming the op and the
user's line; the layout helpers view an axis as the rows of a 2-D tensor (:func:`_rows_view`),
find runs of equal keys (:func:`_runs`) and write constants where a tensor lives
(:func:`fill_tensor`).
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

from softipu.codelets.indexing import fill_codelet
from softipu.dtypes import DType, as_dtype
from softipu.errors import DTypeError
from softipu.graph.tensor import Tensor
from softipu.ops.common import OpContext, rows_of, tile_regions
from softipu.ops.mapping import map_linearly

__all__: list[str] = []


# -- helpers ---------------------------------------------------------------------------------------
def _dtype(ctx: OpContext, dtype: Any) -> DType:
    try:
        return as_dtype(dtype)
    except DTypeError as exc:
        raise ctx.error(str(exc)) from None


def _int(ctx: OpContext, value: Any, what: str) -> int:
    try:
        return operator.index(value)
    except TypeError:
        raise ctx.error(f"{what} must be an int, got {value!r}") from None


def _axis(ctx: OpContext, x: Tensor, axis: Any) -> int:
    a = _int(ctx, axis, "axis")
    if not -x.ndim <= a < x.ndim:
        raise ctx.error(f"axis {a} is out of range for {x.name} of shape {x.shape}")
    return a % x.ndim


def _index_tensor(ctx: OpContext, t: Tensor, what: str = "indices") -> None:
    if t.dtype.is_float or t.dtype.numpy.kind == "b":
        raise ctx.error(f"{what} must be an integer tensor, {t.name} is {t.dtype}")


def _moveaxis(t: Tensor, src: int, dst: int) -> Tensor:
    src, dst = src % t.ndim, dst % t.ndim
    perm = [d for d in range(t.ndim) if d != src]
    perm.insert(dst, src)
    return t.transpose(perm)


def _prod(shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


def fill_tensor(ctx: OpContext, t: Tensor, value: Any) -> None:
    """Append a compute set that writes ``value`` into every element of ``t`` where it lives."""
    if t.numel == 0:
        return
    cs = ctx.compute_set("fill")
    flat = t.reshape(-1)
    starts, lengths, tiles = tile_regions(ctx.graph, t)
    for n in np.unique(lengths).tolist():
        pick = lengths == n
        ctx.graph.add_vertices(cs, fill_codelet(t.dtype), {"out": rows_of(flat, starts[pick], n),
                                                           "value": value}, tiles[pick])
    ctx.execute(cs)


def _fill_value(ctx: OpContext, dtype: DType, value: Any) -> Any:
    try:
        v = np.asarray(value)
        if v.ndim != 0:
            raise TypeError
        if not dtype.is_float and v.dtype.kind == "f" and not float(v).is_integer():
            raise ctx.error(f"value {value!r} is not a whole number; {dtype} cannot hold it")
        return dtype.numpy.type(v.item())
    except (TypeError, ValueError, OverflowError):
        raise ctx.error(f"value {value!r} is not a {dtype} number") from None


def _runs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, lengths) of runs of equal consecutive keys."""
    if keys.size == 0:
        z = np.zeros(0, np.int64)
        return z, z
    starts = np.concatenate(([0], np.flatnonzero(np.diff(keys)) + 1))
    return starts, np.diff(np.append(starts, keys.size))


def _rows_view(t: Tensor, axis: int, count: int) -> Tensor:
    """``t`` with dims ``axis .. axis + count`` moved to the front and the rest flattened: 2-D."""
    lead = list(range(axis, axis + count))
    perm = lead + [d for d in range(t.ndim) if d not in lead]
    moved = t.transpose(perm)
    rows = _prod(moved.shape[:count])
    return moved.reshape(rows, _prod(moved.shape[count:]))


def _map_rest(ctx: OpContext, out: Tensor) -> None:
    """Map what the plan left unmapped (nothing, unless a dim is empty)."""
    if out.numel and np.any(ctx.graph.tile_of(out) < 0):
        map_linearly(ctx.graph, out)
