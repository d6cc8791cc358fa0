"""``scatter_reduce``: a copy of a tensor with values reduced into flat positions (torch's
``scatter_reduce`` / ``index_reduce`` / ``put`` rules), one ``ScatterReduce`` vertex."""

from __future__ import annotations

from typing import Any

import numpy as np

from softipu.codelets.scatter_reduce import REDUCTIONS, scatter_reduce_codelet
from softipu.dtypes import int32
from softipu.graph import program as P
from softipu.graph.graph import Graph
from softipu.graph.tensor import Tensor
from softipu.ops.common import OpContext, parse_options

__all__ = ["scatter_reduce"]


def scatter_reduce(graph: Graph, x: Tensor, positions: Tensor, src: Tensor, prog: Any, *, reduce: str,
                   include_self: bool = True, name: str = "", options: dict | None = None) -> Tensor:
    """A copy of ``x`` with each ``src[i]`` reduced into flat element ``positions[i]`` of it.

    ``reduce`` is one of ``sum``, ``prod``, ``mean``, ``amax``, ``amin`` or ``assign`` (the last
    write wins); without ``include_self`` the reduced elements start from the sources alone.
    Out-of-range positions are skipped.

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops.indexing.scatter_reduce import scatter_reduce
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=2)); prog = P.Sequence()
    >>> x = g.add_variable(sp.float32, (3,)); p = g.add_variable(sp.int32, (3,))
    >>> s = g.add_variable(sp.float32, (3,))
    >>> for t in (x, p, s): sp.ops.map_linearly(g, t)
    >>> y = scatter_reduce(g, x, p, s, prog, reduce="amax"); eng = sp.Engine(g, [prog])
    >>> eng.write_tensor(x, [1, 1, 1]); eng.write_tensor(p, [0, 0, 2]); eng.write_tensor(s, [5, 7, 0])
    >>> eng.run(0); eng.read_tensor(y).tolist()
    [7.0, 1.0, 1.0]
    """
    ctx = OpContext.start(graph, prog, "scatter_reduce", name, x, positions, src)
    parse_options(ctx, options, {})
    if reduce not in REDUCTIONS:
        raise ctx.error(f"reduce must be one of {', '.join(REDUCTIONS)}; got {reduce!r}")
    if positions.dtype is not int32 or positions.numel != src.numel:
        raise ctx.error(f"positions {positions.name} must be int32 with one element per source "
                        f"({src.numel}); got {positions.dtype} with {positions.numel}")
    if src.dtype is not x.dtype:
        raise ctx.error(f"src {src.name} is {src.dtype} but {x.name} is {x.dtype}")
    out = graph.add_variable(x.dtype, x.shape, name=f"{ctx.name}/out")
    if not x.numel:
        return out
    graph.set_tile_mapping(out, int(graph.tile_of(x.reshape(-1)[:1])[0]) if x.numel else 0)
    if not src.numel:
        ctx.prog.add(P.Copy(x, out))
        return out
    cs = ctx.compute_set()
    tile = np.asarray([int(graph.tile_of(out.reshape(-1)[:1])[0])])
    graph.add_vertices(cs, scatter_reduce_codelet(x.dtype, reduce, bool(include_self)),
                       {"x": x.reshape(1, -1), "pos": positions.reshape(1, -1), "src": src.reshape(1, -1),
                        "out": out.reshape(1, -1)}, tile)
    ctx.execute(cs)
    return out
