"""Sorting rows cut into pieces over tiles (``ops.indexing.row_pieces``): each piece sorted where
it lives, then rounds of merge-split between neighbouring pieces.

popops' sort (poplibs ``lib/popops/Sort.cpp``) heap-sorts each tile's interval, then repeats
"compare-and-swap the edge elements of neighbouring intervals, sort each interval again" while
any edge is out of order: a data-dependent loop that moves one element across each edge per
step. softipu runs the block form of the same odd-even transposition: in round ``t`` the pieces
``(j, j + 1)`` with ``j = t mod 2`` exchange whole pieces and each keeps its half of the merged
pair (the lower piece the smallest), so ``pieces`` rounds sort any row (Baudet and Stevenson's
merge-split). Each side of a pair runs its own vertex on its own tile, reading the neighbour's
piece (exchanged) and writing its own piece of the next buffer. Stable: a merge keeps the left
piece's equal keys first. Estimates [U]: a piece's sort as the whole-row codelet (``n log2 n``
compares), a merge one compare, select and store per element of the pair.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from softipu.codelets.indexing import FIXED_CYCLES, SORT_CYCLES_PER_COMPARE, SortOrder, _named, sort_order
from softipu.dtypes import DType, int32
from softipu.graph.vertex import Input, Output, Vertex

__all__ = ["sort_piece_codelet", "merge_split_codelet"]


def _sort_cost(x: int) -> int:
    return FIXED_CYCLES + SORT_CYCLES_PER_COMPARE * x * max(1, int(np.ceil(np.log2(max(x, 2)))))


@cache
def sort_piece_codelet(dtype: DType, order: SortOrder, with_index: bool) -> type[Vertex]:
    """One piece sorted (stable); with indices, each value's position in the row (``start``: the
    piece's first position)."""
    if with_index:
        class SortPieceKV(Vertex):
            x = Input(dtype)
            start = Input(int32)
            out = Output(dtype)
            index = Output(int32)

            @staticmethod
            def compute(x, start, out, index):
                perm = sort_order(x, order)
                out[...] = np.take_along_axis(x, perm, axis=-1)
                index[...] = perm + start

            @staticmethod
            def cycles(x, start, out, index, target):
                return _sort_cost(x)

        return _named(SortPieceKV, f"SortPieceKV<{dtype.name},{order.name}>")

    class SortPiece(Vertex):
        x = Input(dtype)
        out = Output(dtype)

        @staticmethod
        def compute(x, out):
            out[...] = np.take_along_axis(x, sort_order(x, order), axis=-1)

        @staticmethod
        def cycles(x, out, target):
            return _sort_cost(x)

    return _named(SortPiece, f"SortPiece<{dtype.name},{order.name}>")


@cache
def merge_split_codelet(dtype: DType, order: SortOrder, with_index: bool, lower: bool) -> type[Vertex]:
    """One side of a merge-split: ``a`` (the left piece) and ``b`` (the right), both sorted, merged
    stably; ``out`` gets the first ``len(out)`` (``lower``, the left piece's vertex) or the last
    ``len(out)`` of the merged pair."""
    cut = (lambda merged, m: merged[..., :m]) if lower else (lambda merged, m: merged[..., -m:])
    side = "lower" if lower else "upper"

    if with_index:
        class MergeSplitKV(Vertex):
            a = Input(dtype)
            ai = Input(int32)
            b = Input(dtype)
            bi = Input(int32)
            out = Output(dtype)
            index = Output(int32)

            @staticmethod
            def compute(a, ai, b, bi, out, index):
                values, at = np.concatenate([a, b], axis=-1), np.concatenate([ai, bi], axis=-1)
                perm = cut(sort_order(values, order), out.shape[-1])
                out[...] = np.take_along_axis(values, perm, axis=-1)
                index[...] = np.take_along_axis(at, perm, axis=-1)

            @staticmethod
            def cycles(a, ai, b, bi, out, index, target):
                return FIXED_CYCLES + SORT_CYCLES_PER_COMPARE * (a + b)

        return _named(MergeSplitKV, f"MergeSplitKV<{dtype.name},{order.name},{side}>")

    class MergeSplit(Vertex):
        a = Input(dtype)
        b = Input(dtype)
        out = Output(dtype)

        @staticmethod
        def compute(a, b, out):
            values = np.concatenate([a, b], axis=-1)
            out[...] = np.take_along_axis(values, cut(sort_order(values, order), out.shape[-1]), axis=-1)

        @staticmethod
        def cycles(a, b, out, target):
            return FIXED_CYCLES + SORT_CYCLES_PER_COMPARE * (a + b)

    return _named(MergeSplit, f"MergeSplit<{dtype.name},{order.name},{side}>")
