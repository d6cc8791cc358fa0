"""Row-wise scans and order statistics along one axis: running product / max / min /
log-sum-exp and the median, nan-median, k-th smallest value and mode (each with its index).

Like ``rowwise``'s sort and cumsum, each row goes to one vertex (``codelets.scans``) on the tile
that holds the output row; results come back in the input's layout. The order statistics keep
the axis with length 1.
"""

from __future__ import annotations

from typing import Any

from softipu.codelets.scans import Scan, Select, scan_codelet, select_codelet
from softipu.graph.graph import Graph
from softipu.graph.tensor import Tensor
from softipu.ops.common import OpContext, parse_options
from softipu.ops.indexing.row_pieces import needs_pieces
from softipu.ops.indexing.rowwise import _row_op, _scan_pieces, _sort_args

__all__ = ["cumprod", "cummax", "cummin", "logcumsumexp", "median", "nanmedian", "kthvalue", "mode"]


def _scan(op: Scan, label: str, graph: Graph, x: Tensor, prog: Any, axis: int, name: str,
          options: dict | None) -> tuple[Tensor, Tensor | None]:
    ctx = OpContext.start(graph, prog, label, name, x)
    parse_options(ctx, options, {})
    axis = _sort_args(ctx, x, axis)
    if op is Scan.LOGSUMEXP and not x.dtype.is_float:
        raise ctx.error(f"{label} of {x.dtype} tensor {x.name}: cast to a float dtype first")
    if needs_pieces(x.shape[axis]):  # a row too long for one vertex: split it across tiles
        return _scan_pieces(ctx, x, axis, op)
    return _row_op(ctx, x, axis, scan_codelet(op, x.dtype), x.shape[axis], op in (Scan.MAX, Scan.MIN))


def cumprod(graph: Graph, x: Tensor, prog: Any, *, axis: int = -1, name: str = "",
            options: dict | None = None) -> Tensor:
    """Inclusive running products along ``axis`` (fp16 accumulates in fp32).

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops.indexing.scans import cumprod
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=2)); prog = P.Sequence()
    >>> x = g.add_variable(sp.int32, (4,)); sp.ops.map_linearly(g, x)
    >>> y = cumprod(g, x, prog); eng = sp.Engine(g, [prog])
    >>> eng.write_tensor(x, [1, 2, 3, 4]); eng.run(0); eng.read_tensor(y).tolist()
    [1, 2, 6, 24]
    """
    return _scan(Scan.PROD, "cumprod", graph, x, prog, axis, name, options)[0]


def cummax(graph: Graph, x: Tensor, prog: Any, *, axis: int = -1, name: str = "",
           options: dict | None = None) -> tuple[Tensor, Tensor]:
    """(running maximum, int32 index of each) along ``axis``, as torch.cummax: NaN propagates,
    ties take the later index."""
    values, index = _scan(Scan.MAX, "cummax", graph, x, prog, axis, name, options)
    assert index is not None
    return values, index


def cummin(graph: Graph, x: Tensor, prog: Any, *, axis: int = -1, name: str = "",
           options: dict | None = None) -> tuple[Tensor, Tensor]:
    """(running minimum, int32 index of each) along ``axis``, as torch.cummin."""
    values, index = _scan(Scan.MIN, "cummin", graph, x, prog, axis, name, options)
    assert index is not None
    return values, index


def logcumsumexp(graph: Graph, x: Tensor, prog: Any, *, axis: int = -1, name: str = "",
                 options: dict | None = None) -> Tensor:
    """``log(cumsum(exp(x)))`` along ``axis``, each step ``logaddexp`` (no overflow)."""
    return _scan(Scan.LOGSUMEXP, "logcumsumexp", graph, x, prog, axis, name, options)[0]


def _select(op: Select, label: str, graph: Graph, x: Tensor, prog: Any, axis: int, k: int,
            name: str, options: dict | None) -> tuple[Tensor, Tensor]:
    ctx = OpContext.start(graph, prog, label, name, x)
    parse_options(ctx, options, {})
    axis = _sort_args(ctx, x, axis)
    if op is Select.KTH and not 1 <= k <= x.shape[axis]:
        raise ctx.error(f"k = {k} is out of range for axis {axis} of {x.name} (size {x.shape[axis]})")
    values, index = _row_op(ctx, x, axis, select_codelet(op, x.dtype, k), 1, True)
    assert index is not None
    return values, index


def median(graph: Graph, x: Tensor, prog: Any, *, axis: int = -1, name: str = "",
           options: dict | None = None) -> tuple[Tensor, Tensor]:
    """(lower median, its int32 index) along ``axis``, kept with length 1; NaN if a row has one.

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops.indexing.scans import median
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=2)); prog = P.Sequence()
    >>> x = g.add_variable(sp.float32, (4,)); sp.ops.map_linearly(g, x)
    >>> m, i = median(g, x, prog); eng = sp.Engine(g, [prog])
    >>> eng.write_tensor(x, [4.0, 1.0, 3.0, 2.0]); eng.run(0)
    >>> eng.read_tensor(m).tolist(), eng.read_tensor(i).tolist()
    ([2.0], [3])
    """
    return _select(Select.MEDIAN, "median", graph, x, prog, axis, 0, name, options)


def nanmedian(graph: Graph, x: Tensor, prog: Any, *, axis: int = -1, name: str = "",
              options: dict | None = None) -> tuple[Tensor, Tensor]:
    """(lower median of the non-NaN values, its index) along ``axis``, kept with length 1."""
    return _select(Select.NANMEDIAN, "nanmedian", graph, x, prog, axis, 0, name, options)


def kthvalue(graph: Graph, x: Tensor, prog: Any, *, k: int, axis: int = -1, name: str = "",
             options: dict | None = None) -> tuple[Tensor, Tensor]:
    """(k-th smallest value, 1-based ``k``, and its index) along ``axis``, kept with length 1."""
    return _select(Select.KTH, "kthvalue", graph, x, prog, axis, int(k), name, options)


def mode(graph: Graph, x: Tensor, prog: Any, *, axis: int = -1, name: str = "",
         options: dict | None = None) -> tuple[Tensor, Tensor]:
    """(most frequent value, smallest of equally frequent ones; its last index) along ``axis``."""
    return _select(Select.MODE, "mode", graph, x, prog, axis, 0, name, options)
