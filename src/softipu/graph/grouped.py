"""Grouped strided views: what a reshape of a strided view becomes when it is not one strided view.

A strided view read in row-major order can always be reshaped; the result is one strided view
only when numpy's no-copy rule allows. Otherwise, cutting the view's axes into factors usually
makes every axis of the new shape a run of consecutive *fine* axes, each with its own stride:
attention's context ``(2, 16, 128, 64)`` permuted to ``(2, 128, 16, 64)`` (strides
``(131072, 64, 8192, 1)``) and reshaped to ``(2, 128, 1024)`` is that fine view grouped
``(1, 1, 2)``. A
:class:`Grouped` holds that: an offset, the fine shape and strides (row-major order is element
order), and how many fine axes make each axis. It costs a few ints whatever the element count;
its addresses are the fine view's, reshaped, built only when something asks for them.

Reshaping, transposing, basic indexing, broadcasting and reversing a grouped view stay grouped
(or become strided again) wherever the fine axes allow; the functions here return None where
they do not, and the caller falls back to an explicit index. No reshape has a grouping when the
two shapes' factors interleave (``(2, 3)`` with odd strides read as ``(3, 2)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Grouped", "refine"]

Shape = tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Grouped:
    """``offset`` + fine strided axes ``shape``/``strides``; axis ``k`` of the view is the next
    ``counts[k]`` fine axes, flattened row-major."""

    offset: int
    shape: Shape
    strides: Shape
    counts: Shape

    @property
    def view_shape(self) -> Shape:
        return tuple(math.prod(g) for g, _ in self.groups())

    def groups(self) -> list[tuple[Shape, Shape]]:
        out, i = [], 0
        for c in self.counts:
            out.append((self.shape[i : i + c], self.strides[i : i + c]))
            i += c
        return out

    def strided(self) -> tuple[int, Shape, Shape] | None:
        """(offset, shape, strides) when every group is one strided axis, else None."""
        shape, strides = [], []
        for sizes, sts in self.groups():
            merged = _merge(sizes, sts)
            if len(merged) > 1:
                return None
            shape.append(merged[0][0])
            strides.append(merged[0][1])
        return self.offset, tuple(shape), tuple(strides)

    def compact(self) -> Grouped:
        """The same view with the fine axes of each group merged where their strides allow."""
        shape, strides, counts = [], [], []
        for sizes, sts in self.groups():
            merged = _merge(sizes, sts)
            shape += [d for d, _ in merged]
            strides += [s for _, s in merged]
            counts.append(len(merged))
        return Grouped(self.offset, tuple(shape), tuple(strides), tuple(counts))

    # -- operations (None where the result has no grouping) ---------------------------------------
    def reshape(self, new_shape: Shape) -> Grouped | None:
        return refine(self.offset, self.shape, self.strides, new_shape)

    def transpose(self, perm: Shape) -> Grouped:
        groups = self.groups()
        shape = tuple(d for a in perm for d in groups[a][0])
        strides = tuple(s for a in perm for s in groups[a][1])
        return Grouped(self.offset, shape, strides, tuple(self.counts[a] for a in perm))

    def broadcast(self, shape: Shape) -> Grouped:
        """Repeated to ``shape`` (already checked against numpy's rules) with stride-0 axes."""
        lead = len(shape) - len(self.counts)
        fs, fst, counts = [d for d in shape[:lead]], [0] * lead, [1] * lead
        for (sizes, sts), want in zip(self.groups(), shape[lead:], strict=True):
            if math.prod(sizes) == 1 and want != 1:
                sizes, sts = (want,), (0,)
            fs += sizes
            fst += sts
            counts.append(len(sizes))
        return Grouped(self.offset, tuple(fs), tuple(fst), tuple(counts))

    def reverse(self, axis: int) -> Grouped:
        """Reversing a row-major flattening reverses each of its factors."""
        start = sum(self.counts[:axis])
        stop = start + self.counts[axis]
        offset, strides = self.offset, list(self.strides)
        for k in range(start, stop):
            offset += max(self.shape[k] - 1, 0) * strides[k]
            strides[k] = -strides[k]
        return Grouped(offset, self.shape, tuple(strides), self.counts)

    def index(self, key: tuple) -> Grouped | None:
        """Basic indexing by a key already expanded to one entry per axis plus Nones: ints are
        in range, slices are ``(start, n, step)`` triples (``_slice_indices`` checked them)."""
        offset, shape, strides, counts = self.offset, [], [], []
        groups, axis = self.groups(), 0
        for k in key:
            if k is None:
                shape.append(1)
                strides.append(0)
                counts.append(1)
                continue
            sizes, sts = groups[axis]
            axis += 1
            if isinstance(k, int):
                offset += _at(sizes, sts, k)
                continue
            cut = _slice_group(sizes, sts, *k)
            if cut is None:
                return None
            extra, fs, fst = cut
            offset += extra
            shape += fs
            strides += fst
            counts.append(len(fs))
        return Grouped(offset, tuple(shape), tuple(strides), tuple(counts))


def refine(offset: int, shape: Shape, strides: Shape, new_shape: Shape) -> Grouped | None:
    """The strided view ``offset``/``shape``/``strides`` read row-major and reshaped to
    ``new_shape``, as a grouped view; None when the shapes' factors interleave. Both shapes must
    hold the same number of elements (> 0)."""
    old = [(d, s) for d, s in zip(shape, strides, strict=True) if d != 1]
    fine: list[tuple[int, int]] = []  # innermost first
    counts: list[int] = []
    i = len(old) - 1
    for n in reversed(new_shape):
        count, rem = 0, n
        while rem > 1:
            if i < 0:
                return None
            d, s = old[i]
            if d <= rem:
                if rem % d:
                    return None
                fine.append((d, s))
                rem //= d
                i -= 1
            else:  # cut the old axis: its inner factor ends this axis
                if d % rem:
                    return None
                fine.append((rem, s))
                old[i] = (d // rem, s * rem)
                rem = 1
            count += 1
        if count == 0:
            fine.append((1, 0))
            count = 1
        counts.append(count)
    if i >= 0:
        return None
    fine.reverse()
    counts.reverse()
    return Grouped(offset, tuple(d for d, _ in fine), tuple(s for _, s in fine), tuple(counts)).compact()


def _merge(sizes: Shape, strides: Shape) -> list[tuple[int, int]]:
    """Adjacent fine axes of one group merged where the outer steps over the inner exactly."""
    out: list[tuple[int, int]] = []
    for d, s in zip(sizes, strides, strict=True):
        if d == 1:
            continue
        if out and out[-1][1] == d * s:
            out[-1] = (out[-1][0] * d, s)
        else:
            out.append((d, s))
    return out or [(1, 0)]


def _at(sizes: Shape, strides: Shape, i: int) -> int:
    """The address step of element ``i`` of a group (row-major over its fine axes)."""
    step = 0
    for d, s in zip(reversed(sizes), reversed(strides), strict=True):
        i, r = divmod(i, d)
        step += r * s
    return step


def _slice_group(sizes: Shape, strides: Shape, start: int, n: int,
                 step: int) -> tuple[int, list[int], list[int]] | None:
    """(offset step, fine sizes, fine strides) of elements ``start + k * step``, k < n, of a group;
    None when they are not a grouped view of its fine axes."""
    if n <= 1:
        return (_at(sizes, strides, start) if n else 0), [n], [0]
    if len(sizes) == 1:
        return start * strides[0], [n], [strides[0] * step]
    inner = math.prod(sizes[1:])
    if step == 1 and start % inner == 0 and n % inner == 0:  # whole rows of the inner axes
        return (start // inner) * strides[0], [n // inner, *sizes[1:]], [strides[0], *strides[1:]]
    if step % inner == 0:  # the same inner element of rows step // inner apart
        return _at(sizes, strides, start), [n], [strides[0] * (step // inner)]
    if start // inner == (start + (n - 1) * step) // inner:  # all within one outer row
        cut = _slice_group(sizes[1:], strides[1:], start % inner, n, step)
        if cut is None:
            return None
        return (start // inner) * strides[0] + cut[0], cut[1], cut[2]
    return None
