"""Static gathers, whose sources are known when the graph is built: ``pad``.

:func:`static_gather` copies (or fills) each output element on the tile that holds it, one
vertex per run of copied or filled elements, in one compute set.
"""

from __future__ import annotations

import enum
from typing import Any

import numpy as np

from softipu.codelets.indexing import copy_codelet, fill_codelet
from softipu.graph.graph import Graph
from softipu.graph.tensor import Tensor
from softipu.ops.common import OpContext, parse_options
from softipu.ops.indexing._common import _fill_value, _runs
from softipu.ops.reduce import tensor_at

__all__ = ["pad", "PadMode"]


# -- static gathers: pad ------------------------------------------------------------------------------
class PadMode(enum.Enum):
    CONSTANT = "constant"  # the padding holds `value`
    EDGE = "edge"  # repeats the edge element
    REFLECT = "reflect"  # mirrors about the edge element (numpy's "reflect")


def static_gather(ctx: OpContext, out: Tensor, source: np.ndarray, src: Tensor, value: Any) -> None:
    """``out.flat[i] = src.flat[source[i]]``, or ``value`` where ``source[i] < 0``; one compute set.

    Each tile copies into the elements of ``out`` it holds, one vertex per run of copied (or
    filled) elements.
    """
    if out.numel == 0:
        return
    graph = ctx.graph
    flat = out.reshape(-1)
    tiles = graph.tile_of(flat).astype(np.int64)
    copied = source >= 0
    starts, lengths = _runs(tiles * 2 + copied)
    src_addr = src.addresses().reshape(-1)
    out_addr = flat.addresses()
    cs = ctx.compute_set()
    for is_copy in (True, False):
        pick_run = copied[starts] == is_copy
        for n in np.unique(lengths[pick_run]).tolist():
            pick = pick_run & (lengths == n)
            pos = starts[pick][:, None] + np.arange(n)
            fields: dict[str, Any] = {"out": tensor_at(graph, out.dtype, out_addr[pos])}
            if is_copy:
                fields["src"] = tensor_at(graph, src.dtype, src_addr[source[pos]])
                codelet = copy_codelet(out.dtype)
            else:
                fields["value"] = value
                codelet = fill_codelet(out.dtype)
            graph.add_vertices(cs, codelet, fields, tiles[starts[pick]])
    ctx.execute(cs)


def pad(graph: Graph, x: Tensor, prog: Any, *, pad_width: Any, mode: PadMode | str = PadMode.CONSTANT,
        value: Any = 0, name: str = "", options: dict | None = None) -> Tensor:
    """``x`` padded like ``numpy.pad(x, pad_width, mode)``; modes constant, edge and reflect.

    ``pad_width`` is numpy's: an int, a ``(before, after)`` pair, or one pair per dim.

    >>> import numpy as np, softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops.indexing import pad
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=2)); prog = P.Sequence()
    >>> x = g.add_variable(sp.int32, (3,)); sp.ops.map_linearly(g, x)
    >>> y = pad(g, x, prog, pad_width=(1, 2), mode="reflect")
    >>> eng = sp.Engine(g, [prog]); eng.write_tensor(x, [1, 2, 3]); eng.run(0)
    >>> eng.read_tensor(y).tolist()
    [2, 1, 2, 3, 2, 1]
    """
    ctx = OpContext.start(graph, prog, "pad", name, x)
    parse_options(ctx, options, {})
    try:
        mode = PadMode(mode.value if isinstance(mode, PadMode) else mode)
    except ValueError:
        raise ctx.error(f"mode {mode!r} is not one of {[m.value for m in PadMode]}") from None
    index = np.arange(x.numel, dtype=np.int64).reshape(x.shape)
    try:
        widths = np.broadcast_to(np.asarray(pad_width, dtype=np.int64), (x.ndim, 2))
        if np.any(widths < 0):
            raise ValueError("negative pad width")
        kwargs = {"constant_values": -1} if mode is PadMode.CONSTANT else {}
        source = np.pad(index, widths, mode=mode.value, **kwargs)
    except (ValueError, TypeError) as exc:
        raise ctx.error(f"cannot pad {x.name} of shape {x.shape} with pad_width={pad_width!r} in "
                        f"mode {mode.value!r}: {exc}") from None
    out = ctx.output(x.dtype, source.shape)
    static_gather(ctx, out, source.reshape(-1), x, _fill_value(ctx, x.dtype, value))
    return out
