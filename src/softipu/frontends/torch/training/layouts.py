"""Variables laid out as another: a linear weight's optimizer state and gradient copy in the
weight's own layout (its forward matmul's RHS), so the weight's pointwise update reads each
operand as one run per tile (training/lowering.py, ``_TrainLowerer._in_storage_order``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from softipu.graph.tensor import Slabs, Tensor
from softipu.ops.common import tile_regions

__all__ = ["clone_layout", "same_view", "storage_view"]


def clone_layout(graph: Any, like: Tensor, dtype: Any, name: str) -> Tensor | None:
    """A fresh variable laid out as ``like``: the same tile for each element and the same memory
    order, ``like``'s view of its variable repeated on the new one (a weight made by
    ``create_matmul_input_rhs`` is a view of column slabs: so is the clone). Poplar's
    ``Graph::clone`` (``TensorCloneMethod::PRESERVE_ORDER_UNLESS_ALIASES``), as PopART lays out
    an optimizer's state by cloning a tensor of its update (``AccumulateBaseOpx::
    createInputTensor``, willow/src/popx/op/accumulatex.cpp); here the weight, which the update
    writes. None when ``like`` is not the whole of one variable."""
    var = graph.variable_of(like)
    if var is None or var.numel != like.numel or like.repeats_elements():
        return None
    whole = graph.add_variable(dtype, var.shape, name=name).flatten()
    source = Tensor(graph, like.dtype, (var.numel,), var.start, (1,))
    starts, lengths, tiles = tile_regions(graph, source)
    graph.map_intervals(whole, starts, starts + lengths, tiles)
    shift = whole.offset - var.start
    if like.slabs is not None:
        slabs = like.slabs
        pieces = tuple((o + shift, sh, st, mid) for o, sh, st, mid in slabs.pieces)
        return Tensor(graph, whole.dtype, like.shape, slabs=Slabs(pieces, slabs.axis, slabs.perm))
    if like.index is not None:
        return Tensor(graph, whole.dtype, like.shape, index=like.index + shift)
    return Tensor(graph, whole.dtype, like.shape, like.offset + shift, like.strides)


def storage_view(graph: Any, t: Tensor) -> Tensor | None:
    """The whole variable of ``t`` as a 1-D tensor in memory order, when ``t`` is all of it."""
    var = graph.variable_of(t)
    if var is None or var.numel != t.numel:
        return None
    return Tensor(graph, t.dtype, (var.numel,), var.start, (1,))


def same_view(graph: Any, a: Tensor, b: Tensor) -> bool:
    """Whether ``a`` and ``b`` view their variables alike (element ``i`` of each at the same
    position in its variable's memory): ``b`` made by :func:`clone_layout` from ``a``."""
    va, vb = graph.variable_of(a), graph.variable_of(b)
    if va is None or vb is None or va.shape != vb.shape or a.shape != b.shape:
        return False
    shift = vb.start - va.start
    if a.slabs is not None or b.slabs is not None:
        return a.slabs is not None and b.slabs is not None and (a.slabs.axis, a.slabs.perm) == (
            b.slabs.axis, b.slabs.perm) and b.slabs.pieces == tuple(
            (o + shift, sh, st, mid) for o, sh, st, mid in a.slabs.pieces)
    if a.index is not None or b.index is not None:
        return a.index is not None and b.index is not None and np.array_equal(a.index + shift, b.index)
    return b.offset == a.offset + shift and a.strides == b.strides
