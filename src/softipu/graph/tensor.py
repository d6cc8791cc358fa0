"""Tensors: views, never copies, over a graph's variables.

Every dtype has one flat address space in which each variable occupies a contiguous range of
element addresses. A tensor is either

* **strided**: ``address(i) = offset + sum(i[k] * strides[k])`` — what slicing, reshaping,
  transposing, broadcasting, reversing and subsampling produce, and what the engine turns into
  zero-copy numpy views; or
* **indexed**: an explicit int64 array of addresses with the tensor's shape — the general form
  that concatenation of unrelated pieces and fancy indexing produce; the engine gathers and
  scatters through it. An indexed tensor may be described by structure instead (:class:`Slabs`:
  strided pieces joined along an axis, e.g. a matmul operand in column slabs); its ``index`` array
  is then built only when something asks for it, so pricing a program never holds one int64
  per element of such a layout. A reshape of a strided view that is not one strided view is
  such a layout too (one piece: :mod:`softipu.graph.grouped` cuts its axes into strided factors),
  and so are the slices, broadcasts and reshapes of it that its factors allow (a reshape whose
  factors interleave stays one piece, read row-major; only its other view ops build an index).

Both forms describe the same thing, so every operation works on both.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from softipu.debug import at, caller_location
from softipu.dtypes import DType
from softipu.errors import HostMemoryError, TensorError
from softipu.graph.grouped import Grouped, refine

if TYPE_CHECKING:
    from softipu.graph.graph import Graph

__all__ = ["Tensor", "Slabs", "concat", "strides_never_meet"]

Shape = tuple[int, ...]


@dataclass(frozen=True, slots=True, eq=False)
class Tensor:
    """A view of some elements of one graph's variables (all of one dtype).

    >>> import softipu as sp
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=4))
    >>> x = g.add_variable(sp.float32, (4, 6), name="x")
    >>> x[1:, ::2].T.shape
    (3, 3)
    """

    graph: Graph
    dtype: DType
    shape: Shape
    offset: int = 0
    strides: Shape = ()
    index: np.ndarray | None = None  # int64 addresses with `shape`; None for strided views
    slabs: Slabs | None = None  # the structure an indexed tensor's addresses are built from, lazily

    def __post_init__(self) -> None:
        root = getattr(self.graph, "root", self.graph)  # a virtual graph's tensors are its root's
        if root is not self.graph:
            object.__setattr__(self, "graph", root)
        if self.slabs is not None:
            if self.slabs.shape != self.shape:
                raise TensorError(f"slab layout {self.slabs.shape} does not match shape {self.shape}")
        elif self.index is None and len(self.strides) != len(self.shape):
            raise TensorError(f"strides {self.strides} do not match shape {self.shape}")
        if len(self.shape) > MAX_DIMS:
            raise TensorError(f"a view of {len(self.shape)} dimensions; tensors have at most {MAX_DIMS} "
                              "(numpy's 64 less the engine's replica axis)")

    # -- basic facts -------------------------------------------------------------------------
    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    size = numel

    def __len__(self) -> int:
        if not self.shape:
            raise TensorError(f"len() of 0-d tensor {self.name}")
        return self.shape[0]

    @property
    def is_strided(self) -> bool:
        return self.slabs is None and _INDEX_SLOT.__get__(self, Tensor) is None

    def first_address(self) -> int:
        """The address of element 0 (the tensor must not be empty), without building an index."""
        if self.slabs is not None:
            return self.slabs.first_address()
        return self.offset if self.index is None else int(self.index.flat[0])

    @property
    def name(self) -> str:
        """The variable's name, or a description of the view."""
        return self.graph.describe(self)

    def __repr__(self) -> str:
        return f"Tensor({self.name}, {self.dtype}, shape={self.shape})"

    def __bool__(self) -> bool:
        raise TensorError(
            f"the truth value of tensor {self.name} is not known when the graph is built; "
            "use program.If(tensor, ...) to branch on device data"
        )

    # -- addresses ---------------------------------------------------------------------------
    def addresses(self) -> np.ndarray:
        """int64 element addresses with this tensor's shape.

        A slab layout's are built afresh for the caller, not kept with the tensor (pricing asks for
        them once and lets go); ``index`` builds them once and keeps them, for the engine."""
        index = _INDEX_SLOT.__get__(self, Tensor)
        if index is not None:
            return index
        _check_addresses_fit(self)
        if self.slabs is not None:
            return self.slabs.addresses()
        out = np.full(self.shape, self.offset, dtype=np.int64)
        for axis, (size, stride) in enumerate(zip(self.shape, self.strides, strict=True)):
            if size > 1 and stride != 0:
                ramp = np.arange(size, dtype=np.int64) * stride
                out += ramp.reshape((size,) + (1,) * (self.ndim - axis - 1))
        return out

    def runs(self) -> tuple[np.ndarray, np.ndarray]:
        """(starts, lengths) of the contiguous address runs covering this tensor's elements.

        A multiset: an element a broadcast view repeats appears in several runs.
        """
        if self.numel == 0:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty
        if self.slabs is not None and _INDEX_SLOT.__get__(self, Tensor) is None:
            parts = [Tensor(self.graph, self.dtype, sh, o, st).runs() for o, sh, st, _ in self.slabs.pieces]
            return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
        if self.index is not None:
            return _runs_of_addresses(self.index.ravel())
        if len(self.shape) == 2 and self.strides[1] == 1 and self.strides[0] >= self.shape[1]:
            rows, n = self.shape  # the common (vertices, n) field: one run a row, or one in all
            if self.strides[0] == n or rows == 1:
                return np.array([self.offset], np.int64), np.array([rows * n], np.int64)
            return self.offset + np.arange(rows, dtype=np.int64) * self.strides[0], np.full(rows, n, np.int64)
        offset, dims, repeats = self.offset, [], 1
        for size, stride in zip(self.shape, self.strides, strict=True):
            if size == 1:
                continue
            if stride == 0:  # a broadcast axis repeats the runs; it must not split them
                repeats *= size
                continue
            if stride < 0:  # walk reversed axes forwards
                offset += (size - 1) * stride
                stride = -stride
            dims.append((stride, size))
        dims.sort()
        run = 1
        while dims and dims[0][0] == run:
            run *= dims.pop(0)[1]
        starts = np.array([offset], dtype=np.int64)
        for stride, size in dims:
            starts = (starts[:, None] + np.arange(size, dtype=np.int64) * stride).ravel()
        starts = np.tile(starts, repeats)
        return starts, np.full(starts.shape, run, dtype=np.int64)

    def element_runs(self) -> tuple[np.ndarray, np.ndarray]:
        """(starts, lengths) of the runs of consecutive addresses in element (row-major) order."""
        if self.numel == 0:
            z = np.zeros(0, np.int64)
            return z, z
        grouped = self._grouped() if self.slabs is not None else None
        if grouped is not None:  # the fine axes, read row-major, are the elements in order
            fine = Tensor(self.graph, self.dtype, grouped.shape, grouped.offset, grouped.strides)
            return fine.element_runs()
        slabs = self.slabs if _INDEX_SLOT.__get__(self, Tensor) is None else None
        if slabs is not None and slabs.axis == 0 and slabs.perm == tuple(range(self.ndim)):
            # pieces stacked along the first axis, read in order: each piece's runs in turn
            parts = [Tensor(self.graph, self.dtype, sh, o, st).element_runs()
                     for o, sh, st, _ in slabs.pieces]
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        if not self.is_strided:
            flat = self.addresses().reshape(-1)
            first = np.concatenate(([0], np.flatnonzero(np.diff(flat) != 1) + 1))
            return flat[first], np.diff(np.concatenate((first, [flat.size])))
        run, axis = 1, self.ndim
        while axis > 0 and (self.shape[axis - 1] == 1 or self.strides[axis - 1] == run):
            axis -= 1
            run *= self.shape[axis]
        outer = Tensor(self.graph, self.dtype, self.shape[:axis], self.offset, self.strides[:axis])
        starts = outer.addresses().reshape(-1)
        return starts, np.full(starts.shape, run, np.int64)

    def repeats_elements(self) -> bool:
        """True when some element appears twice (a broadcast view, or repeated indices)."""
        if self.is_strided and strides_never_meet(self.shape, self.strides):
            return False
        grouped = self._grouped() if self.slabs is not None else None
        if grouped is not None and strides_never_meet(grouped.shape, grouped.strides):
            return False
        if self.slabs is None and self.index is not None and self.index.size > 1:
            flat = self.index.ravel(order="K")  # any order will do: no copy of a transposed view
            lo, hi = int(flat.min()), int(flat.max())
            if hi - lo < 4 * flat.size:  # dense enough to mark, no sort
                seen = np.zeros(hi - lo + 1, bool)
                seen[flat - lo] = True
                return int(np.count_nonzero(seen)) < flat.size
        starts, lengths = self.runs()
        if starts.size < 2:
            return False
        order = np.argsort(starts, kind="stable")
        s, e = starts[order], (starts + lengths)[order]
        return bool(np.any(s[1:] < np.maximum.accumulate(e)[:-1]))

    def is_contiguous(self) -> bool:
        """True when the elements are one ascending run of addresses in row-major order."""
        if not self.is_strided:
            return False
        expected = 1
        for size, stride in zip(reversed(self.shape), reversed(self.strides), strict=True):
            if size != 1 and stride != expected:
                return False
            expected *= size
        return True

    def _indexed(self, index: np.ndarray) -> Tensor:
        return Tensor(self.graph, self.dtype, tuple(index.shape), 0, (), index)

    def _strided(self, shape: Shape, offset: int, strides: Shape) -> Tensor:
        return Tensor(self.graph, self.dtype, shape, offset, strides)

    def _grouped(self) -> Grouped | None:
        """This view as a grouped strided view (a strided view, or a one-piece slab layout whose
        factors allow); None for an empty view or any other layout."""
        if self.numel == 0:
            return None
        if self.is_strided:
            return Grouped(self.offset, self.shape, self.strides, (1,) * self.ndim)
        slabs = self.slabs
        if slabs is None or len(slabs.pieces) != 1:
            return None
        offset, shape, strides, mid = slabs.pieces[0]
        grouped = refine(offset, shape, strides, mid)
        return None if grouped is None else grouped.transpose(slabs.perm)

    def _from_grouped(self, g: Grouped) -> Tensor:
        strided = g.strided()
        if strided is not None:
            return self._strided(strided[1], strided[0], strided[2])
        shape = g.view_shape
        slabs = Slabs(((g.offset, g.shape, g.strides, shape),), 0, tuple(range(len(shape))))
        return Tensor(self.graph, self.dtype, shape, 0, (), None, slabs)

    # -- indexing ----------------------------------------------------------------------------
    def __getitem__(self, key: Any) -> Tensor:
        if self.is_strided and type(key) is slice and len(self.shape) == 1 and key.step != 0:
            start, stop, step = _slice_indices(key, self.shape[0], self, 0)  # the common 1-D slice, kept fast
            n = len(range(start, stop, step))
            stride = self.strides[0]
            return Tensor(self.graph, self.dtype, (n,), self.offset + start * stride,
                          (stride * step if n > 1 else stride,))
        key = key if isinstance(key, tuple) else (key,)
        if any(_is_fancy(k) for k in key):
            try:
                return self._indexed(self.addresses()[_to_numpy_key(key)])
            except (IndexError, ValueError, TypeError, OverflowError) as exc:
                raise TensorError(f"cannot index {self.name} {self.shape}{at(caller_location())} with "
                                  f"{key!r}: {exc}") from None
        if not self.is_strided:
            grouped = self._grouped() if self.slabs is not None else None
            if grouped is not None:
                cut = grouped.index(self._normalized_key(key))
                if cut is not None:
                    return self._from_grouped(cut)
            _check_slices(key, self)
            try:
                index = self.addresses()[key]
            except (IndexError, TypeError) as exc:
                raise TensorError(f"cannot index {self.name} {self.shape}{at(caller_location())} with "
                                  f"{key!r}: {exc}") from None
            # A cut of one strided piece (inside one variable) whose addresses are affine in the
            # index again (two elements always are) is a strided view, as numpy's would be.
            affine = _affine(index) if self.slabs is not None and len(self.slabs.pieces) == 1 else None
            if affine is not None:
                return self._strided(tuple(index.shape), *affine)
            return self._indexed(index)
        return self._basic_index(key)

    def _basic_index(self, key: tuple) -> Tensor:
        offset, shape, strides, axis = self.offset, [], [], 0
        for k in self._normalized_key(key):
            if k is None:
                shape.append(1)
                strides.append(0)
                continue
            stride = self.strides[axis]
            if isinstance(k, int):
                offset += k * stride
            else:
                start, n, step = k
                shape.append(n)
                strides.append(stride * step if n > 1 else stride)  # one element: any step (2**63 overflowed)
                offset += start * stride if n else 0
            axis += 1
        return self._strided(tuple(shape), offset, tuple(strides))

    def _normalized_key(self, key: tuple) -> list[int | tuple[int, int, int] | None]:
        """A basic key with one entry per axis (plus Nones): ints in ``0..size-1``, slices as
        ``(start, count, step)``; out-of-range ints and slices are errors naming the user's line."""
        n_real = sum(1 for k in key if k is not None and k is not Ellipsis)
        if n_real > self.ndim:
            raise TensorError(f"too many indices for {self.name} of shape {self.shape}"
                              f"{at(caller_location())}: {key!r}")
        if sum(1 for k in key if k is Ellipsis) > 1:
            raise TensorError(f"an index of {self.name}{at(caller_location())} can only have one "
                              f"Ellipsis: {key!r}")
        if Ellipsis in key:
            i = key.index(Ellipsis)
            key = key[:i] + (slice(None),) * (self.ndim - n_real) + key[i + 1 :]
        else:
            key = key + (slice(None),) * (self.ndim - n_real)
        out: list[int | tuple[int, int, int] | None] = []
        axis = 0
        for k in key:
            if k is None:
                out.append(None)
                continue
            size = self.shape[axis]
            if isinstance(k, slice):
                start, stop, step = _slice_indices(k, size, self, axis)
                out.append((start, len(range(start, stop, step)), step))
            else:
                i = _as_int(k, self)
                if not -size <= i < size:
                    raise TensorError(
                        f"index {i} is out of range for axis {axis} of {self.name} of shape {self.shape}"
                        f"{at(caller_location())}: use 0..{size - 1} (or -{size}..-1 from the end)"
                    )
                out.append(i % size)
            axis += 1
        return out

    # -- shape operations --------------------------------------------------------------------
    def reshape(self, *shape: int | Sequence[int]) -> Tensor:
        new_shape = _resolve_shape(_flat_args(shape), self.numel, self)
        if new_shape == self.shape:
            return self
        if self.slabs is not None:
            slabs = self.slabs.reshape(new_shape)
            if slabs is not None:
                return Tensor(self.graph, self.dtype, new_shape, 0, (), None, slabs)
        elif self.is_strided:
            strides = _nocopy_reshape_strides(self.shape, self.strides, new_shape)
            if strides is not None:
                return self._strided(new_shape, self.offset, strides)
        grouped = self._grouped()
        if grouped is not None:
            reshaped = grouped.reshape(new_shape)
            if reshaped is not None:  # no int64 per element: a grouped view (or strided again)
                return self._from_grouped(reshaped)
            # Interleaved factors: still one strided piece read row-major, addresses on demand.
            piece = (grouped.offset, grouped.shape, grouped.strides, new_shape)
            return Tensor(self.graph, self.dtype, new_shape, 0, (), None,
                          Slabs((piece,), 0, tuple(range(len(new_shape)))))
        return self._indexed(self.addresses().reshape(new_shape))

    def flatten(self) -> Tensor:
        return self.reshape(self.numel)

    def transpose(self, *axes: int | Sequence[int]) -> Tensor:
        perm = _flat_args(axes) or tuple(reversed(range(self.ndim)))
        perm = tuple(_normalize_axis(a, self.ndim, self) for a in perm)
        if sorted(perm) != list(range(self.ndim)):
            raise TensorError(f"{perm} is not a permutation of the axes of {self.name} {self.shape}")
        if self.slabs is not None:
            slabs = self.slabs.transpose(perm)
            return Tensor(self.graph, self.dtype, slabs.shape, 0, (), None, slabs)
        if self.index is not None:
            return self._indexed(self.index.transpose(perm))
        return self._strided(
            tuple(self.shape[a] for a in perm), self.offset, tuple(self.strides[a] for a in perm)
        )

    permute = dimshuffle = transpose

    @property
    def T(self) -> Tensor:  # noqa: N802 - numpy's name
        return self.transpose()

    def broadcast(self, shape: Sequence[int]) -> Tensor:
        """This tensor repeated to ``shape`` by numpy's broadcasting rules (stride 0, no copy)."""
        shape = _flat_args((shape,))
        if math.prod(shape) > MAX_ELEMENTS:
            raise TensorError(f"cannot broadcast {self.name} to {shape}: more than {MAX_ELEMENTS:,} (2**53) "
                              "elements")
        lead = len(shape) - self.ndim
        if lead < 0 or any(d < 0 for d in shape) or any(
            d not in (1, s) for d, s in zip(self.shape, shape[lead:], strict=True)
        ):
            raise TensorError(f"cannot broadcast {self.name} of shape {self.shape} to {shape}")
        grouped = self._grouped() if self.slabs is not None else None
        if grouped is not None:
            return self._from_grouped(grouped.broadcast(shape))
        if not self.is_strided:
            return self._indexed(np.broadcast_to(self.addresses(), shape))
        strides = (0,) * lead + tuple(
            0 if d == 1 and s != 1 else st
            for d, s, st in zip(self.shape, shape[lead:], self.strides, strict=True)
        )
        return self._strided(shape, self.offset, strides)

    expand = broadcast

    def reverse(self, axis: int = 0) -> Tensor:
        axis = _normalize_axis(axis, self.ndim, self)
        grouped = self._grouped() if self.slabs is not None else None
        if grouped is not None:
            return self._from_grouped(grouped.reverse(axis))
        if not self.is_strided:
            return self._indexed(np.flip(self.addresses(), axis))
        size, stride = self.shape[axis], self.strides[axis]
        strides = list(self.strides)
        strides[axis] = -stride
        return self._strided(self.shape, self.offset + max(size - 1, 0) * stride, tuple(strides))

    flip = reverse

    def subsample(self, stride: int, axis: int = 0) -> Tensor:
        """Every ``stride``-th element along ``axis``, starting with the first."""
        axis = _normalize_axis(axis, self.ndim, self)
        if not isinstance(stride, (int, np.integer)) or stride < 1:
            raise TensorError(f"subsample stride must be an int >= 1, got {stride!r:.40} for {self.name}")
        key = [slice(None)] * self.ndim
        key[axis] = slice(None, None, stride)
        return self[tuple(key)]

    def squeeze(self, axis: int | None = None) -> Tensor:
        if axis is None:
            return self.reshape(tuple(d for d in self.shape if d != 1))
        axis = _normalize_axis(axis, self.ndim, self)
        if self.shape[axis] != 1:
            raise TensorError(f"cannot squeeze axis {axis} of size {self.shape[axis]} of {self.name}")
        return self.reshape(self.shape[:axis] + self.shape[axis + 1 :])

    def expand_dims(self, axis: int) -> Tensor:
        axis = _normalize_axis(axis, self.ndim + 1, self)
        return self.reshape(self.shape[:axis] + (1,) + self.shape[axis:])

    unsqueeze = expand_dims


# The slot holding a tensor's index array; ``Tensor.index`` reads it through a property that builds
# the array from ``slabs`` on first use (and keeps it: the tensor owns it).
_INDEX_SLOT = Tensor.index


def _get_index(self: Tensor) -> np.ndarray | None:
    index = _INDEX_SLOT.__get__(self, Tensor)
    if index is None and self.slabs is not None:
        index = self.slabs.addresses()
        index.flags.writeable = False
        _INDEX_SLOT.__set__(self, index)
    return index


Tensor.index = property(_get_index, _INDEX_SLOT.__set__,  # type: ignore[assignment,misc]
                        doc="int64 addresses with the tensor's shape; None for strided views")


@dataclass(frozen=True, slots=True)
class Slabs:
    """Addresses described by structure: strided pieces joined along one axis, then permuted.

    Piece ``(offset, shape, strides, mid)`` is the strided block ``shape``/``strides`` from
    ``offset``, read in row-major order and reshaped to ``mid``; the pieces' ``mid`` blocks are
    concatenated along ``axis`` and the result's axes permuted by ``perm``. A matrix stored in
    column slabs is one piece of shape ``(G, R, slabs, w)`` (reshaped to ``(G, R, slabs * w)``)
    and perhaps a narrower last slab. Cost: a few ints per piece, whatever the element count.

    >>> s = Slabs(((0, (2, 2, 2), (2, 4, 1), (2, 4)),), axis=1, perm=(0, 1))
    >>> s.addresses().tolist()
    [[0, 1, 4, 5], [2, 3, 6, 7]]
    >>> s.transpose((1, 0)).reshape((1, 4, 2)).addresses()[0, :, 0].tolist()
    [0, 1, 4, 5]
    """

    pieces: tuple[tuple[int, Shape, Shape, Shape], ...]
    axis: int
    perm: Shape

    @property
    def mid(self) -> Shape:
        first = self.pieces[0][3]
        size = sum(p[3][self.axis] for p in self.pieces)
        return first[: self.axis] + (size,) + first[self.axis + 1 :]

    @property
    def shape(self) -> Shape:
        mid = self.mid
        return tuple(mid[a] for a in self.perm)

    def addresses(self) -> np.ndarray:
        parts = [_strided_addresses(o, sh, st).reshape(mid) for o, sh, st, mid in self.pieces]
        whole = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=self.axis)
        return whole.transpose(self.perm)

    def first_address(self) -> int:
        return next(p[0] for p in self.pieces if math.prod(p[1]))

    def transpose(self, perm: Shape) -> Slabs:
        return Slabs(self.pieces, self.axis, tuple(self.perm[a] for a in perm))

    def reshape(self, new_shape: Shape) -> Slabs | None:
        """The same addresses with size-1 axes added or removed; None for any other reshape."""
        shape, mid = self.shape, self.mid
        if [d for d in shape if d != 1] != [d for d in new_shape if d != 1] or mid[self.axis] == 1:
            return None
        keep = [a for a in range(len(mid)) if mid[a] != 1]
        pos = {a: i for i, a in enumerate(keep)}
        ones = sum(1 for d in new_shape if d == 1)
        pieces = tuple((o, sh, st, tuple(m[a] for a in keep) + (1,) * ones) for o, sh, st, m in self.pieces)
        taken = iter([pos[self.perm[i]] for i, d in enumerate(shape) if d != 1])
        added = iter(range(len(keep), len(keep) + ones))
        perm = tuple(next(added) if d == 1 else next(taken) for d in new_shape)
        return Slabs(pieces, pos[self.axis], perm)


def _check_addresses_fit(t: Tensor) -> None:
    """Refuse, before allocating, a list of addresses larger than the host's available memory
    (fancy indexing of a 2**31-element variable asked numpy for 16 GiB and was OOM-killed)."""
    if t.numel < _ADDRESSES_CHECKED_FROM:
        return
    from softipu.graph.accounting import host_available_bytes  # (accounting imports this module)

    need, available = t.numel * 16, host_available_bytes()  # the list and a temporary as large
    if available is not None and need > available:
        raise HostMemoryError(
            f"listing the {t.numel:,} element addresses of {t.name} {t.shape}{at(caller_location())} needs "
            f"{need:,} bytes, more than the {available:,} bytes this host has available (MemAvailable); "
            "index it with ints and slices (views list no addresses) or work on a smaller view")


_ADDRESSES_CHECKED_FROM = 1 << 27  # elements (1 GiB of addresses): smaller lists are never refused

MAX_DIMS = 63  # numpy allows 64, and the engine's views add the replica axis in front

# Elements of one dtype a graph may hold, and of any view: addresses stay exact in int64 and
# float64 arithmetic (2**53 float32 elements are 32 PiB, far beyond any Pod's memory).
MAX_ELEMENTS = 2**53


def _strided_addresses(offset: int, shape: Shape, strides: Shape) -> np.ndarray:
    out = np.full(shape, offset, dtype=np.int64)
    for axis, (size, stride) in enumerate(zip(shape, strides, strict=True)):
        if size > 1 and stride != 0:
            ramp = np.arange(size, dtype=np.int64) * stride
            out += ramp.reshape((size,) + (1,) * (len(shape) - axis - 1))
    return out


def concat(tensors: Sequence[Tensor], axis: int = 0) -> Tensor:
    """Join tensors along ``axis``; a view when the pieces are adjacent, else indexed."""
    if not tensors:
        raise TensorError("concat needs at least one tensor")
    odd = [t for t in tensors if not isinstance(t, Tensor)]
    if odd:
        raise TensorError(f"concat joins tensors, got a {type(odd[0]).__name__}")
    first = tensors[0]
    for t in tensors[1:]:
        if t.graph is not first.graph:
            raise TensorError(f"cannot concat {first.name} and {t.name}: they belong to different graphs")
        if t.dtype != first.dtype:
            raise TensorError(f"cannot concat {first.name} ({first.dtype}) with {t.name} ({t.dtype})")
    axis = _normalize_axis(axis, first.ndim, first)
    for t in tensors[1:]:
        if t.ndim != first.ndim or any(
            a != b for k, (a, b) in enumerate(zip(t.shape, first.shape, strict=True)) if k != axis
        ):
            raise TensorError(
                f"cannot concat {first.name} {first.shape} and {t.name} {t.shape} along axis {axis}"
            )
    merged = _merge_adjacent(tensors, axis)
    if merged is not None:
        return merged
    return first._indexed(np.concatenate([t.addresses() for t in tensors], axis=axis))


def _merge_adjacent(tensors: Sequence[Tensor], axis: int) -> Tensor | None:
    parts = [t for t in tensors if t.numel > 0]
    if not parts:  # nothing to address: any offset will do
        first = tensors[0]
        length = sum(t.shape[axis] for t in tensors)
        return first._strided(first.shape[:axis] + (length,) + first.shape[axis + 1 :], 0, first.strides
                              if first.is_strided else (0,) * first.ndim)
    first = parts[0]
    if any(not t.is_strided for t in parts):
        return None
    length = first.shape[axis]
    for t in parts[1:]:
        if t.strides != first.strides and any(
            s != fs for k, (s, fs) in enumerate(zip(t.strides, first.strides, strict=True))
            if t.shape[k] != 1 or k == axis
        ):
            return None
        if t.offset != first.offset + length * first.strides[axis]:
            return None
        length += t.shape[axis]
    shape = first.shape[:axis] + (length,) + first.shape[axis + 1 :]
    return first._strided(shape, first.offset, first.strides)


# -- helpers -----------------------------------------------------------------------------------
def strides_never_meet(shape: Shape, strides: Shape) -> bool:
    """A sufficient test that a strided view addresses no element twice: with its axes sorted by
    |stride|, each stride steps past everything the smaller axes reach (numpy's own test)."""
    reach = 0
    for size, stride in sorted(((d, abs(st)) for d, st in zip(shape, strides, strict=True) if d > 1),
                               key=lambda a: a[1]):
        if stride <= reach:
            return False
        reach += (size - 1) * stride
    return True


def _runs_of_addresses(addresses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.sort(addresses.astype(np.int64, copy=False))
    breaks = np.flatnonzero(np.diff(a) != 1) + 1
    starts_at = np.concatenate(([0], breaks))
    ends_at = np.concatenate((breaks, [a.size]))
    return a[starts_at], ends_at - starts_at


def _is_fancy(k: Any) -> bool:
    return isinstance(k, (list, np.ndarray)) and not isinstance(k, np.generic)


def _to_numpy_key(key: tuple) -> tuple:
    return tuple(_as_index_array(k) if isinstance(k, list) else k for k in key)


def _as_index_array(k: list) -> np.ndarray:
    arr = np.asarray(k)
    return arr.astype(np.intp) if arr.size == 0 else arr  # [] is float64 to numpy


def _as_int(k: Any, t: Tensor) -> int:
    try:
        return operator.index(k)
    except TypeError:
        raise TensorError(
            f"cannot index {t.name}{at(caller_location())} with {k!r} ({type(k).__name__}); use ints, "
            "slices, None, Ellipsis or integer arrays"
        ) from None


def _slice_indices(k: slice, size: int, t: Tensor, axis: int) -> tuple[int, int, int]:
    """``k.indices(size)``, refusing a zero step and bounds beyond the axis: numpy and Python clamp
    ``x[5:20]`` of 8 elements to ``x[5:8]``; Poplar's ``slice`` does not, and a silently shorter
    view hides the bug that asked for it."""
    start, stop, step = k.start, k.stop, k.step
    if ((start is None or type(start) is int and -size <= start <= size)
            and (stop is None or type(stop) is int and -size <= stop <= size)
            and (step is None or type(step) is int and step != 0)):
        return k.indices(size)  # the common case, kept fast
    if step is not None and _as_int(step, t) == 0:
        raise TensorError(f"slice step cannot be zero (indexing {t.name}{at(caller_location())} with {k!r})")
    for bound in (start, stop):
        if bound is not None and not -size <= _as_int(bound, t) <= size:
            parts = (start, stop) if step is None else (start, stop, step)
            text = ":".join("" if b is None else str(b) for b in parts)
            raise TensorError(
                f"slice [{text}] of {t.name}{at(caller_location())} is out of range for axis {axis} of "
                f"{size} elements: slices do not clamp (Poplar's do not); give bounds in -{size}..{size}"
            )
    return k.indices(size)



def _affine(index: np.ndarray) -> tuple[int, tuple[int, ...]] | None:
    """``(offset, strides)`` when ``index[i] == offset + sum(i[k] * strides[k])`` over ``index``'s
    own shape (an axis of one element takes stride 1), else None; None for no elements."""
    if index.size == 0:
        return None
    first = int(index.reshape(-1)[0])
    strides = tuple(int(np.take(index, 1, axis=a).reshape(-1)[0]) - first if n > 1 else 1
                    for a, n in enumerate(index.shape))
    want = np.full(index.shape, first, np.int64)
    for a, (n, step) in enumerate(zip(index.shape, strides, strict=True)):
        if n > 1:
            axis_shape = (1,) * a + (n,) + (1,) * (index.ndim - a - 1)
            want += (np.arange(n, dtype=np.int64) * step).reshape(axis_shape)
    return (first, strides) if np.array_equal(index, want) else None

def _check_slices(key: tuple, t: Tensor) -> None:
    """The bounds of every slice in ``key`` (an indexed view's numpy indexing clamps them too)."""
    axis = 0
    for k in key:
        if k is Ellipsis:
            axis = t.ndim - sum(1 for j in key[key.index(k) + 1 :] if j is not None)
        elif isinstance(k, slice):
            if axis < t.ndim:
                _slice_indices(k, t.shape[axis], t, axis)
            axis += 1
        elif k is not None:
            axis += 1


def _flat_args(args: tuple) -> tuple[int, ...]:
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        args = tuple(args[0])
    try:
        return tuple(operator.index(a) for a in args)
    except TypeError:
        raise TensorError(f"a shape or axis list{at(caller_location())} must hold ints, "
                          f"got {args!r:.80}") from None


def _normalize_axis(axis: int, ndim: int, t: Tensor) -> int:
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise TensorError(f"axis of {t.name}{at(caller_location())} must be an int, got {axis!r:.80}")
    if not -ndim <= axis < ndim:
        raise TensorError(f"axis {axis} is out of range for {t.name} with {ndim} dimensions")
    return axis % ndim


def _resolve_shape(shape: tuple[int, ...], numel: int, t: Tensor) -> Shape:
    if shape.count(-1) > 1:
        raise TensorError(f"reshape of {t.name}: only one dimension can be -1, got {shape}")
    if -1 in shape:
        known = 1
        for d in shape:
            known *= d if d != -1 else 1
        if known == 0 or numel % known:
            raise TensorError(f"cannot reshape {t.name} of shape {t.shape} ({numel} elements) to {shape}")
        shape = tuple(numel // known if d == -1 else d for d in shape)
    n = 1
    for d in shape:
        if d < 0:
            raise TensorError(f"reshape of {t.name}: negative dimension in {shape}")
        n *= d
    if n != numel:
        raise TensorError(f"cannot reshape {t.name} of shape {t.shape} ({numel} elements) to {shape}")
    return shape


def _nocopy_reshape_strides(old_shape: Shape, old_strides: Shape, new_shape: Shape) -> Shape | None:
    """Strides that view ``old`` as ``new_shape`` without moving data, or None (numpy's rule)."""
    if 0 in old_shape:
        return (0,) * len(new_shape)
    old = [(d, s) for d, s in zip(old_shape, old_strides, strict=True) if d != 1]
    new_strides = [0] * len(new_shape)
    oi, oj, ni, nj = 0, 1, 0, 1
    while ni < len(new_shape) and oi < len(old):
        np_, op = new_shape[ni], old[oi][0]
        while np_ != op:
            if np_ < op:
                np_ *= new_shape[nj]
                nj += 1
            else:
                op *= old[oj][0]
                oj += 1
        for k in range(oi, oj - 1):
            if old[k][1] != old[k + 1][0] * old[k + 1][1]:
                return None
        new_strides[nj - 1] = old[oj - 1][1]
        for k in range(nj - 1, ni, -1):
            new_strides[k - 1] = new_strides[k] * new_shape[k]
        ni, nj, oi, oj = nj, nj + 1, oj, oj + 1
    return tuple(new_strides)
