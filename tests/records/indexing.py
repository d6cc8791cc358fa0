"""Indexing ops against numpy: gather/scatter, multi-slice/update, dynamic slices, sort, top-k,
cumsum, pad, one-hot, iota, fill."""

from __future__ import annotations

import numpy as np
from tests.records import OpRecord, default_input

import softipu as sp
from softipu.ops.indexing import (
    PadMode,
    cumsum,
    dynamic_slice,
    dynamic_update,
    full,
    gather,
    iota,
    multi_slice,
    multi_update_add,
    one_hot,
    pad,
    scatter,
    scatter_add,
    sort,
    sort_with_indices,
    top_k,
    zeros,
)

F32, F16, I32 = sp.float32, sp.float16, sp.int32

# Index inputs run from -2 to 11: a few out of range for every table in these records.
INDEX_LOW, INDEX_HIGH = -2, 12


def _indices_second(rng, shape, dtype, i):
    """Input 1 is an index tensor (some out of range); others are data."""
    if i == 1:
        return rng.integers(INDEX_LOW, INDEX_HIGH, size=shape).astype(np.int32)
    return default_input(rng, shape, dtype, i)


def _in_range_second(rng, shape, dtype, i):
    """Input 1 is an index tensor within 0..4 (with repeats)."""
    if i == 1:
        return rng.integers(0, 5, size=shape).astype(np.int32)
    return default_input(rng, shape, dtype, i)


def _offset_last(rng, shape, dtype, i):
    """The last input (an offset) runs past the end now and then."""
    if dtype is I32 and shape == (1,):
        return rng.integers(0, 9, size=shape).astype(np.int32)
    return default_input(rng, shape, dtype, i)


def _with_nan(rng, shape, dtype, i):
    a = default_input(rng, shape, dtype, i)
    if dtype.is_float and a.size >= 2:
        a.reshape(-1)[rng.choice(a.size, 2, replace=False)] = [np.nan, np.inf]
    if not dtype.is_float and a.size:
        a.reshape(-1)[::3] = 7  # ties
    return a


def _take(x: np.ndarray, idx: np.ndarray, axis: int) -> np.ndarray:
    """numpy.take with zeros for out-of-range indices."""
    n = x.shape[axis]
    valid = (idx >= 0) & (idx < n)
    out = np.take(x, np.where(valid, idx, 0), axis=axis) if n else np.zeros(
        x.shape[:axis] + idx.shape + x.shape[axis + 1 :], x.dtype)
    mask = valid.reshape((1,) * axis + idx.shape + (1,) * (x.ndim - axis - 1))
    return np.where(mask, out, 0).astype(x.dtype)


def _scatter(x, idx, upd, axis, add):
    out = np.moveaxis(x.copy(), axis, 0)
    u = np.moveaxis(upd, axis, 0).reshape((idx.size,) + out.shape[1:])
    flat = idx.reshape(-1)
    valid = (flat >= 0) & (flat < out.shape[0])
    if add:
        np.add.at(out, flat[valid], u[valid])
    else:
        for k in np.flatnonzero(valid):
            out[flat[k]] = u[k]
    return np.moveaxis(out, 0, axis)


def _dynamic_rows(size_axis: int, offset: int, count: int) -> np.ndarray:
    start = offset if 0 <= offset < size_axis else 0
    return (start + np.arange(count)) % size_axis


def _dyn_slice(x, off, axis, size):
    return np.take(x, _dynamic_rows(x.shape[axis], int(off[0]), size), axis=axis)


def _dyn_update(x, upd, off, axis):
    out = np.moveaxis(x.copy(), axis, 0)
    rows = _dynamic_rows(out.shape[0], int(off[0]), upd.shape[axis])
    u = np.moveaxis(upd, axis, 0)
    for j, r in enumerate(rows):
        out[r] = u[j]
    return np.moveaxis(out, 0, axis)


def _top_k(x: np.ndarray, k: int):
    """Largest first, NaN largest, ties in input order: python's sort on (key, position)."""
    rows = x.reshape(-1, x.shape[-1])
    vals, idxs = [], []
    for row in rows:
        key = [(0, 0.0, j) if np.isnan(v) else (1, -float(v), j) for j, v in enumerate(row.tolist())]
        order = [j for *_, j in sorted(key)][:k]
        idxs.append(order)
        vals.append(row[order])
    shape = x.shape[:-1] + (k,)
    return (np.array(vals, x.dtype).reshape(shape), np.array(idxs, np.int64).reshape(shape))


GATHER_SHAPES = (((10, 3), (4,)), ((7, 5), (2, 3)), ((12,), (9,)), ((10, 3), (0,)), ((5, 4), (3,)))
TABLE_SHAPES = (((10, 6), (5,)), ((12, 33), (17,)), ((10, 1), (3,)), ((0, 4), (2,)), ((6, 4), (3,)))

RECORDS: list[OpRecord] = [
    OpRecord("gather_axis0", lambda g, x, i, prog: gather(g, x, i, prog, axis=0),
             lambda x, i: _take(x, i, 0), GATHER_SHAPES, (F32, F16, I32), _indices_second,
             (None, I32), exact=True),
    OpRecord("gather_axis1", lambda g, x, i, prog: gather(g, x, i, prog, axis=1),
             lambda x, i: _take(x, i, 1), (((3, 10, 2), (4,)), ((2, 12), (5, 2)), ((3, 7, 2), (3,))),
             (F32,), _indices_second, (None, I32), exact=True),
    OpRecord("multi_slice", lambda g, t, i, prog: multi_slice(g, t, i, prog),
             lambda t, i: _take(t, i, 0), TABLE_SHAPES, (F32, F16, I32), _indices_second,
             (None, I32), exact=True),
    OpRecord("multi_update_add",
             lambda g, t, i, u, prog: multi_update_add(g, t, i, u, 0.5, prog),
             lambda t, i, u: _scatter(t.astype(np.float64), i, 0.5 * u.astype(np.float64), 0, True),
             (((10, 6), (5,), (5, 6)), ((12, 33), (40,), (40, 33)), ((6, 4), (3,), (3, 4))),
             (F32, F16), _in_range_second, (None, I32, None)),
    OpRecord("multi_update_add_out_of_range",
             lambda g, t, i, u, prog: multi_update_add(g, t, i, u, 1.0, prog),
             lambda t, i, u: _scatter(t, i, u, 0, True), (((10, 3), (6,), (6, 3)),), (I32,),
             _indices_second, (None, I32, None)),
    OpRecord("scatter", lambda g, x, i, u, prog: scatter(g, x, i, u, prog, axis=1),
             lambda x, i, u: _scatter(x, i, u, 1, False),
             (((3, 10), (4,), (3, 4)), ((2, 12, 2), (6,), (2, 6, 2)), ((3, 10), (2,), (3, 2))),
             (F32, I32), _indices_second, (None, I32, None), exact=True),
    OpRecord("scatter_add", lambda g, x, i, u, prog: scatter_add(g, x, i, u, prog),
             lambda x, i, u: _scatter(x.astype(np.float64), i, u.astype(np.float64), 0, True),
             (((10, 3), (7,), (7, 3)), ((5,), (9,), (9,)), ((6, 2), (3,), (3, 2))),
             (F32,), _in_range_second, (None, I32, None)),
    OpRecord("dynamic_slice", lambda g, x, o, prog: dynamic_slice(g, x, o, prog, axis=0, size=3),
             lambda x, o: _dyn_slice(x, o, 0, 3), (((7, 5), (1,)), ((4,), (1,)), ((6, 9, 2), (1,)),
                                                   ((5, 3), (1,))),
             (F32, I32), _offset_last, (None, I32), exact=True),
    OpRecord("dynamic_slice_axis1",
             lambda g, x, o, prog: dynamic_slice(g, x, o, prog, axis=1, size=2),
             lambda x, o: _dyn_slice(x, o, 1, 2), (((3, 6), (1,)), ((2, 5, 3), (1,)), ((3, 4), (1,))),
             (F16,), _offset_last, (None, I32), exact=True),
    OpRecord("dynamic_update", lambda g, x, u, o, prog: dynamic_update(g, x, u, o, prog, axis=0),
             lambda x, u, o: _dyn_update(x, u, o, 0),
             (((7, 5), (2, 5), (1,)), ((6,), (3,), (1,)), ((5, 3), (2, 3), (1,))),
             (F32, I32), _offset_last, (None, None, I32), exact=True),
    OpRecord("sort", lambda g, x, prog: sort(g, x, prog), lambda x: np.sort(x, axis=-1),
             (((9,),), ((5, 17),), ((3, 4, 6),), ((0, 4),), ((4, 5),)), (F32, F16, I32), _with_nan,
             exact=True),
    OpRecord("sort_descending_axis0", lambda g, x, prog: sort(g, x, prog, axis=0, descending=True),
             lambda x: np.flip(np.sort(x, axis=0), axis=0), (((9, 3),), ((6, 5),)), (F32, I32),
             _with_nan, exact=True),
    OpRecord("sort_with_indices",
             lambda g, x, prog: sort_with_indices(g, x, prog),
             lambda x: (np.sort(x, axis=-1), np.argsort(x, axis=-1, kind="stable")),
             (((11,),), ((4, 13),), ((3, 5),)), (F32, I32), _with_nan, exact=True),
    OpRecord("top_k", lambda g, x, prog: top_k(g, x, prog, k=3), lambda x: _top_k(x, 3),
             (((11,),), ((4, 13),), ((2, 3, 5),), ((3, 4),)), (F32, F16, I32), _with_nan, exact=True),
    OpRecord("cumsum", lambda g, x, prog: cumsum(g, x, prog),
             lambda x: np.cumsum(x.astype(np.float64) if x.dtype.kind == "f" else x, axis=-1),
             (((17,),), ((5, 33),), ((0, 3),), ((3, 7),)), (F32, F16, I32)),
    OpRecord("cumsum_axis0", lambda g, x, prog: cumsum(g, x, prog, axis=0),
             lambda x: np.cumsum(x.astype(np.float64), axis=0), (((9, 4),), ((3, 2, 5),)), (F32,)),
    OpRecord("pad_constant",
             lambda g, x, prog: pad(g, x, prog, pad_width=((1, 2), (0, 3)), value=-1.5),
             lambda x: np.pad(x, ((1, 2), (0, 3)), constant_values=-1.5),
             (((4, 5),), ((1, 1),), ((0, 3),), ((3, 2),)), (F32, F16), exact=True),
    OpRecord("pad_edge", lambda g, x, prog: pad(g, x, prog, pad_width=2, mode=PadMode.EDGE),
             lambda x: np.pad(x, 2, mode="edge"), (((4, 5),), ((7,),), ((2, 3, 2),), ((3, 2),)),
             (F32, I32), exact=True),
    OpRecord("pad_reflect", lambda g, x, prog: pad(g, x, prog, pad_width=(2, 3), mode="reflect"),
             lambda x: np.pad(x, (2, 3), mode="reflect"), (((6, 5),), ((4,),), ((3, 3),)),
             (F32, I32), exact=True),
    OpRecord("one_hot", lambda g, i, prog: one_hot(g, i, prog, depth=7),
             lambda i: (i[..., None] == np.arange(7)).astype(np.float32),
             (((10,),), ((3, 4),), ((0,),), ((5,),)), (I32,),
             lambda rng, shape, dtype, i: rng.integers(-1, 9, size=shape).astype(np.int32), exact=True),
    OpRecord("iota", lambda g, prog: iota(g, prog, n=37, start=-5),
             lambda: np.arange(-5, 32), ((),), (I32,), exact=True),
    OpRecord("full", lambda g, prog: full(g, prog, shape=(5, 7), value=2.5, dtype=sp.float16),
             lambda: np.full((5, 7), 2.5, np.float16), ((),), (F16,), exact=True),
    OpRecord("zeros", lambda g, prog: zeros(g, prog, shape=(3, 0, 2), dtype=sp.int32),
             lambda: np.zeros((3, 0, 2), np.int32), ((),), (I32,), exact=True),
]
