"""Tensors written from constants and positions: fill, zero, full, zeros, iota, one-hot.

popops ``fill`` / ``zero`` / ``iota`` / ``encodeOneHot``: each tile writes the elements it holds,
one vertex per region; nothing is exchanged except one-hot's indices.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from softipu.codelets.indexing import iota_codelet, one_hot_codelet
from softipu.dtypes import float32, int32
from softipu.graph.graph import Graph
from softipu.graph.tensor import Tensor
from softipu.ops.common import OpContext, parse_options, rows_of, tile_regions
from softipu.ops.indexing._common import _dtype, _fill_value, _index_tensor, _int, fill_tensor
from softipu.ops.reduce import tensor_at

__all__ = ["fill", "zero", "full", "zeros", "iota", "one_hot"]


# -- fill, iota --------------------------------------------------------------------------------------
def fill(graph: Graph, x: Tensor, prog: Any, *, value: Any, name: str = "",
         options: dict | None = None) -> Tensor:
    """Write ``value`` into every element of ``x`` in place (popops ``fill``); returns ``x``.

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops.indexing import fill
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=2)); prog = P.Sequence()
    >>> x = g.add_variable(sp.int32, (5,)); sp.ops.map_linearly(g, x)
    >>> _ = fill(g, x, prog, value=7); eng = sp.Engine(g, [prog]); eng.run(0)
    >>> eng.read_tensor(x).tolist()
    [7, 7, 7, 7, 7]
    """
    ctx = OpContext.start(graph, prog, "fill", name, x)
    parse_options(ctx, options, {})
    if x.repeats_elements():
        raise ctx.error(f"cannot fill {x.name}: the view repeats elements (a broadcast?)")
    fill_tensor(ctx, x, _fill_value(ctx, x.dtype, value))
    return x


def zero(graph: Graph, x: Tensor, prog: Any, *, name: str = "", options: dict | None = None) -> Tensor:
    """Set ``x`` to zero in place (popops ``zero``); returns ``x``.

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops.indexing import zero
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=2)); x = g.add_variable(sp.float32, (3,))
    >>> sp.ops.map_linearly(g, x); zero(g, x, P.Sequence()) is x
    True
    """
    ctx = OpContext.start(graph, prog, "zero", name, x)
    parse_options(ctx, options, {})
    fill_tensor(ctx, x, x.dtype.numpy.type(0))
    return x


def full(graph: Graph, prog: Any, *, shape: Any, value: Any, dtype: Any = float32, name: str = "",
         options: dict | None = None) -> Tensor:
    """A new tensor of ``shape`` filled with ``value`` (mapped linearly).

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops.indexing import full
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=2)); prog = P.Sequence()
    >>> t = full(g, prog, shape=(2, 2), value=1.5); eng = sp.Engine(g, [prog]); eng.run(0)
    >>> eng.read_tensor(t).tolist()
    [[1.5, 1.5], [1.5, 1.5]]
    """
    ctx = OpContext.start(graph, prog, "full", name)
    parse_options(ctx, options, {})
    dt = _dtype(ctx, dtype)
    out = ctx.output(dt, _shape(ctx, shape))
    fill_tensor(ctx, out, _fill_value(ctx, dt, value))
    return out


def zeros(graph: Graph, prog: Any, *, shape: Any, dtype: Any = float32, name: str = "",
          options: dict | None = None) -> Tensor:
    """A new tensor of zeros (see :func:`full`).

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops.indexing import zeros
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=2)); zeros(g, P.Sequence(), shape=(3,)).shape
    (3,)
    """
    ctx = OpContext.start(graph, prog, "zeros", name)
    parse_options(ctx, options, {})
    dt = _dtype(ctx, dtype)
    out = ctx.output(dt, _shape(ctx, shape))
    fill_tensor(ctx, out, dt.numpy.type(0))
    return out


def _shape(ctx: OpContext, shape: Any) -> tuple[int, ...]:
    dims = shape if isinstance(shape, (tuple, list)) else (shape,)
    out = tuple(_int(ctx, d, "a shape dimension") for d in dims)
    if any(d < 0 for d in out):
        raise ctx.error(f"shape {out} has a negative dimension")
    return out


def iota(graph: Graph, prog: Any, *, n: int, dtype: Any = int32, start: int = 0, name: str = "",
         options: dict | None = None) -> Tensor:
    """``[start, start + 1, ..., start + n - 1]`` (popops ``iota``).

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops.indexing import iota
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=2)); prog = P.Sequence()
    >>> t = iota(g, prog, n=5, start=3); eng = sp.Engine(g, [prog]); eng.run(0)
    >>> eng.read_tensor(t).tolist()
    [3, 4, 5, 6, 7]
    """
    ctx = OpContext.start(graph, prog, "iota", name)
    parse_options(ctx, options, {})
    n, start = _int(ctx, n, "n"), _int(ctx, start, "start")
    if n < 0:
        raise ctx.error(f"n must be >= 0, got {n}")
    dt = _dtype(ctx, dtype)
    if dt.numpy.kind == "b":
        raise ctx.error("iota makes numbers; bool was asked for")
    out = ctx.output(dt, (n,))
    if n:
        cs = ctx.compute_set()
        starts, lengths, tiles = tile_regions(graph, out)
        for m in np.unique(lengths).tolist():
            pick = lengths == m
            graph.add_vertices(cs, iota_codelet(dt), {"out": rows_of(out, starts[pick], m),
                                                      "first": start + starts[pick]}, tiles[pick])
        ctx.execute(cs)
    return out


def one_hot(graph: Graph, indices: Tensor, prog: Any, *, depth: int, dtype: Any = float32,
            name: str = "", options: dict | None = None) -> Tensor:
    """``out[..., d] = (indices[...] == d)`` with ``depth`` classes (popops ``encodeOneHot``).

    Out-of-range indices (negative or ``>= depth``) give rows of zeros.

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops.indexing import one_hot
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=2)); prog = P.Sequence()
    >>> i = g.add_variable(sp.int32, (2,)); sp.ops.map_linearly(g, i)
    >>> h = one_hot(g, i, prog, depth=3); eng = sp.Engine(g, [prog])
    >>> eng.write_tensor(i, [2, 0]); eng.run(0); eng.read_tensor(h).tolist()
    [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]
    """
    ctx = OpContext.start(graph, prog, "one_hot", name, indices)
    parse_options(ctx, options, {})
    _index_tensor(ctx, indices)
    depth = _int(ctx, depth, "depth")
    if depth < 0:
        raise ctx.error(f"depth must be >= 0, got {depth}")
    dt = _dtype(ctx, dtype)
    out = ctx.output(dt, indices.shape + (depth,), grain_size=max(depth, 1))
    if out.numel == 0:
        return out
    flat = out.reshape(-1)
    idx_addr = indices.addresses().reshape(-1)
    starts, lengths, tiles = tile_regions(graph, out)
    cs = ctx.compute_set()
    codelet = one_hot_codelet(indices.dtype, dt)
    for n in np.unique(lengths).tolist():
        pick = lengths == n
        pos = starts[pick][:, None] + np.arange(n)
        graph.add_vertices(cs, codelet, {"index": tensor_at(graph, indices.dtype,
                                                            idx_addr[pos // depth]),
                                         "out": rows_of(flat, starts[pick], n),
                                         "first": starts[pick], "depth": depth}, tiles[pick])
    ctx.execute(cs)
    return out
