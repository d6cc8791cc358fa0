"""Device memory as the engine holds it: one ``(replicas, elements)`` array per dtype.

Each variable is stored once per replica, never per tile. Tensors become numpy views of these
arrays (strided tensors) or gathers/scatters through their address arrays (indexed tensors).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import numpy as np

from softipu.compiler.executable import Executable
from softipu.debug import at, caller_location
from softipu.dtypes import DType, narrow, value_range
from softipu.errors import EngineError, HostMemoryError
from softipu.graph.accounting import host_available_bytes
from softipu.graph.tensor import Tensor

__all__ = ["SharedArrays", "SlabWriter", "Storage", "assign", "strided_form"]

# A copy between two layouts that cross (the destination's fastest axis is not the source's: a
# transposed weight written, read or copied) goes in square blocks of this many elements a side,
# so both sides stay in cache: numpy walks one of them with a large stride otherwise (BERT-base's
# word embedding table, laid out column-wise, took 0.70 s to write against 0.14 s in blocks).
BLOCK = 128
BLOCKED_MIN = 1 << 16  # elements; smaller copies go in one call
# A source whose lines (along the destination's fastest axis) lie a multiple of this many bytes
# apart maps them all to one cache set: its blocks then read ALIASED_LINES lines, ALIASED_RUN
# elements each (a float32 8192 x 128 weight read transposed, 32 KiB between lines: 39 -> 2.5 ns
# an element; 128 x 128 blocks ran 23).
ALIASED_STRIDE = 4096
ALIASED_LINES, ALIASED_RUN = 8, 512


def _cast_for_write(arr: np.ndarray, t: Tensor) -> np.ndarray:
    """Values cast to the tensor's dtype when nothing is lost in kind or range.

    An integer beyond an integer dtype's range is refused (``astype`` would wrap it); floats round
    and, like numpy's cast, overflow to inf.
    """
    want = t.dtype.numpy
    if arr.size == 0 or np.can_cast(arr.dtype, want, casting="safe"):  # [] reads as float64
        return arr.astype(want, copy=False)
    if arr.dtype.kind in "iub" and want.kind in "iub":  # e.g. Python ints into uint32 or bool
        cast, bad = narrow(arr, t.dtype)
        if bad is None:
            return cast
        raise EngineError(f"values do not fit tensor {t.name} of {t.dtype} ({value_range(t.dtype)})"
                          f"{at(caller_location())}: {arr[bad].item()!r} at index {bad}; keep them "
                          "within that range")
    if np.can_cast(arr.dtype, want, casting="same_kind"):  # e.g. float64 data into float16
        return arr.astype(want, copy=False)
    raise EngineError(f"cannot write {arr.dtype} values into tensor {t.name} of {t.dtype}"
                      f"{at(caller_location())} without losing their kind; cast them first")


def assign(dst: np.ndarray, src: np.ndarray) -> None:
    """``dst[...] = src`` (``src`` broadcast to ``dst``), in blocks where the layouts cross."""
    axes = _crossing(dst, src) if dst.size >= BLOCKED_MIN else None
    if axes is None or np.may_share_memory(dst, src):  # numpy buffers an overlapping copy whole
        dst[...] = src
        return
    i, j = axes
    src = np.broadcast_to(src, dst.shape)
    across, along = BLOCK, BLOCK
    if src.strides[i] and src.strides[i] % ALIASED_STRIDE == 0:  # src's lines share a cache set
        across, along = ALIASED_LINES, ALIASED_RUN
    every = [slice(None)] * dst.ndim
    for a in range(0, dst.shape[i], across):
        every[i] = slice(a, a + across)
        for b in range(0, dst.shape[j], along):
            every[j] = slice(b, b + along)
            at = tuple(every)
            dst[at] = src[at]


# Rows of at most this many bytes are copied as one opaque item each (:func:`as_rows`).
ROW_ITEM_MAX = 4096


def as_rows(dst: np.ndarray, src: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``dst`` and ``src`` (same shape and dtype) with their innermost axis, contiguous in both,
    viewed as one opaque item a row, so that ``np.copyto`` moves a row per step of its loop
    instead of an element: the same bytes copied (an im2col window's 16-channel runs: 1.6x
    faster). Anything else as it is."""
    if dst.ndim < 1 or dst.shape != src.shape or dst.dtype != src.dtype or dst.dtype.hasobject:
        return dst, src
    n, item = dst.shape[-1], dst.itemsize
    if n < 2 or n * item > ROW_ITEM_MAX or dst.strides[-1] != item or src.strides[-1] != item:
        return dst, src
    row = np.dtype((np.void, n * item))
    return dst.view(row)[..., 0], src.view(row)[..., 0]


def copy_rows(dst: np.ndarray, src: np.ndarray) -> Any:
    """A call copying ``src`` into ``dst`` (same shapes, not overlapping), bound once: blocked
    where the layouts cross (:func:`assign`), else one ``np.copyto`` over rows (:func:`as_rows`)."""
    if dst.size >= BLOCKED_MIN and _crossing(dst, src) is not None:
        return partial(assign, dst, src)
    return partial(np.copyto, *as_rows(dst, src))


def _crossing(dst: np.ndarray, src: np.ndarray) -> tuple[int, int] | None:
    """(the destination's fastest axis, the source's) where they differ and both are long."""
    if src.ndim > dst.ndim or dst.ndim < 2:
        return None
    src = np.broadcast_to(src, dst.shape)
    i, j = _fastest(dst), _fastest(src)
    if i is None or j is None or i == j or min(dst.shape[i], dst.shape[j]) < BLOCK // 4:
        return None
    return i, j


def _fastest(a: np.ndarray) -> int | None:
    """The axis of ``a`` with the smallest non-zero stride (of more than one element)."""
    best = None
    for k, (n, stride) in enumerate(zip(a.shape, a.strides, strict=True)):
        if n > 1 and stride and (best is None or abs(stride) < abs(a.strides[best])):
            best = k
    return best


def common_refinement(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...] | None:
    """The shape both ``a`` and ``b`` (of one size) reach by splitting axes alone, so that both
    reshape into it as views with their elements in the same C order: cut wherever either has
    an axis boundary (its products of trailing axes). None where the cuts do not nest (an axis
    of 6 beside one of 4) or there are no elements."""
    def cuts(shape: tuple[int, ...]) -> set[int]:
        out, p = set(), 1
        for n in reversed(shape):
            p *= n
            out.add(p)
        return out

    if not a or not b or math.prod(a) != math.prod(b) or math.prod(a) == 0:
        return None
    bounds = sorted(cuts(a) | cuts(b) | {1})
    if any(hi % lo for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)):
        return None
    return tuple(hi // lo for lo, hi in zip(bounds[:-1], bounds[1:], strict=True))[::-1]


def strided_form(index: np.ndarray) -> tuple[int, tuple[int, ...], tuple[int, ...]] | None:
    """(offset, shape, strides) of a strided view whose elements, in C order, are the addresses
    ``index`` (any shape) lists, or None: runs of evenly spaced addresses, themselves evenly
    spaced (a broadcast mask's rows: a zero stride), nested. Several passes over ``index``."""
    flat = np.asarray(index, np.int64).reshape(-1)
    if flat.size == 0:
        return None
    shape: list[int] = []
    strides: list[int] = []
    while flat.size > 1:
        step = flat[1] - flat[0]
        off = np.flatnonzero(np.diff(flat) != step)
        n = int(off[0]) + 1 if off.size else flat.size
        if n == 1 or flat.size % n:
            return None
        rows = flat.reshape(-1, n)
        if not np.array_equal(rows, rows[:, :1] + step * np.arange(n, dtype=np.int64)):
            return None
        shape.append(n)
        strides.append(int(step))
        flat = rows[:, 0]
    return int(flat[0]), tuple(reversed(shape)), tuple(reversed(strides))


def poison_value(dtype: DType) -> np.generic:
    """What unwritten memory of ``dtype`` holds under ``debug.poisonUnwritten``: NaN for floats,
    True for bools, the low bytes of 0xDEADBEEF(DEADBEEF) for integers (0xBEEF in 16 bits)."""
    if dtype.is_float:
        return dtype.numpy.type(np.nan)
    if dtype.numpy.kind == "b":
        return np.True_
    return np.frombuffer((0xDEADBEEFDEADBEEF).to_bytes(8, "little")[: dtype.itemsize], dtype.numpy)[0]


def check_host_memory(executable: Executable, replicas: int) -> None:
    """Refuse, before allocating, storage that would not fit in the host's available memory: a
    program too big to hold in values gets an error that says so, not a MemoryError from numpy or
    the kernel's OOM killer halfway through. Pricing it needs no values (estimate-only mode)."""
    needed = sum(replicas * n * d.numpy.itemsize for d, n in executable.space_sizes.items())
    if needed < _CHECKED_FROM:
        return
    available = host_available_bytes()
    if available is not None and needed > available:
        raise HostMemoryError(
            f"the values of this program need {needed:,} bytes of host memory ({replicas} replica(s) of "
            f"{executable.target.name}), more than the {available:,} bytes this host has available "
            "(MemAvailable); price it without values in estimate-only mode: "
            "sp.Engine(graph, programs, estimate_only=True)")


_CHECKED_FROM = 64 << 20  # smaller storage is never refused (reading /proc/meminfo costs ~20 us)


class SlabWriter:
    """Values of a slab-laid tensor's shape written into its pieces' strided views (made once)."""

    __slots__ = ("shape", "order", "parts")

    def __init__(self, shape: tuple[int, ...], order: tuple[int, ...], parts: list[tuple]) -> None:
        self.shape, self.order, self.parts = shape, order, parts

    def __call__(self, values: np.ndarray) -> None:
        mid = np.broadcast_to(values, self.shape).transpose(self.order)
        for view, part, shape in self.parts:
            assign(view, mid[part].reshape(shape))


class SharedArrays:
    """Arrays lent to the fast engine's gathered fields, kept between runs: the k-th array of a
    shape and dtype that one compute set asks for is the k-th that every other compute set gets
    too. Compute sets run one after another, so one set of arrays serves them all; within a
    compute set (whose groups may run side by side) each ask gets its own array. A training
    step's logits-row fields (three compute sets of 913 x 21234 floats each at 1 layer) then
    share their arrays instead of each faulting in its own pages on the first step."""

    __slots__ = ("arrays", "asked")

    def __init__(self) -> None:
        self.arrays: dict[tuple, list[np.ndarray]] = {}
        self.asked: dict[tuple, int] = {}

    def compute_set(self) -> None:
        """The asks from here on come from another compute set."""
        self.asked = {}

    def get(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        key = (shape, np.dtype(dtype).str)
        k = self.asked.get(key, 0)
        self.asked[key] = k + 1
        held = self.arrays.setdefault(key, [])
        if k == len(held):
            held.append(np.empty(shape, dtype))
        return held[k]


class Storage:
    """The values of every variable of every replica.

    Memory nothing wrote reads as zeros, or with ``poison=True`` as :func:`poison_value`, so a
    program that reads what it never wrote shows it.
    """

    __slots__ = ("buffers", "replicas", "poison", "group", "host_writes", "shared")

    def __init__(self, executable: Executable, *, poison: bool = False, group: Any = None) -> None:
        # With ``group`` (engine/distributed.py) this process holds only its block of replicas.
        first, r = (group.first, group.local) if group else (0, executable.replication_factor)
        self.replicas = r
        self.poison = poison
        self.host_writes = 0  # writes from the host (``write``): kept copies of constants compare it
        self.shared = SharedArrays()  # the fast engine's arrays of gathered fields
        self.group = group
        check_host_memory(executable, r)
        # np.zeros is lazily committed by the OS: untouched memory costs nothing (poison costs it all).
        self.buffers: dict[DType, np.ndarray] = {
            d: np.full((r, n), poison_value(d)) if poison else np.zeros((r, n), dtype=d.numpy)
            for d, n in executable.space_sizes.items()
        }
        for var in executable.variables:
            if var.initial_value is not None:
                value = var.initial_value  # one row per replica: a replication index constant
                self.buffers[var.dtype][:, var.start : var.end] = value.reshape(-1) \
                    if value.size == var.numel else value.reshape(-1, var.numel)[first : first + r]

    def view(self, t: Tensor, *, writeable: bool, replica_axis: bool) -> np.ndarray:
        """A zero-copy numpy view of a strided tensor: ``(replicas, *shape)`` or ``shape``."""
        buf = self.buffers[t.dtype]
        lead = (buf.shape[0],) if replica_axis else ()
        if t.numel == 0:
            return np.zeros(lead + t.shape, buf.dtype)
        item = buf.itemsize
        strides = tuple(s * item for s in t.strides)
        # The ndarray constructor (which also checks the view stays inside the buffer) costs a
        # fraction of as_strided: a later call of a small model makes ~100 views a run.
        try:
            view = np.ndarray(lead + t.shape, buf.dtype, buf, t.offset * item,
                              ((buf.strides[0],) if replica_axis else ()) + strides)
        except ValueError:  # a stride numpy cannot hold on a one-element axis, where any stride is
            # the same view (the graph API keeps such strides small; a view an op builds may not)
            strides = tuple(s if n > 1 else 0 for n, s in zip(t.shape, strides, strict=True))
            view = np.ndarray(lead + t.shape, buf.dtype, buf, t.offset * item,
                              ((buf.strides[0],) if replica_axis else ()) + strides)
        if not writeable:
            view.flags.writeable = False
        return view

    def gather(self, t: Tensor, *, replica_axis: bool) -> np.ndarray:
        """A copy of the tensor's values: ``(replicas, *shape)`` or ``shape``."""
        buf = self.buffers[t.dtype]
        if t.is_strided:
            view = self.view(t, writeable=False, replica_axis=replica_axis)
            if view.size < BLOCKED_MIN:
                return view.copy()
            out = np.empty(view.shape, view.dtype)
            assign(out, view)
            return out
        if t.slabs is not None and t.numel:  # piece by piece through strided views: no index built
            out = np.empty(((buf.shape[0],) if replica_axis else ()) + t.shape, buf.dtype)
            pairs = self.slab_pairs(t, out)
            if pairs is not None:
                for view, part in pairs:
                    assign(part, view)
                return out
        # NOTE: buf[:, index] would lay the result out replica-innermost; take() keeps C order, so
        # numpy reduces gathered rows in the same order as contiguous ones (and takes 2/3 of the
        # time of buf[0, index]).
        return np.take(buf, t.index, axis=1) if replica_axis else np.take(buf[0], t.index)

    def scatter(self, t: Tensor, values: np.ndarray, *, replica_axis: bool) -> None:
        """Write values (``(replicas, *shape)`` or ``shape``) into the tensor's elements."""
        buf = self.buffers[t.dtype]
        if t.slabs is not None and t.numel:
            self._scatter_slabs(t, values, replica_axis)
        elif t.index is None:
            assign(self.view(t, writeable=True, replica_axis=replica_axis), values)
        elif replica_axis:
            buf[:, t.index] = values
        else:
            buf[0, t.index] = values

    def _scatter_slabs(self, t: Tensor, values: np.ndarray, replica_axis: bool) -> None:
        """A slab layout written piece by piece through strided views: no address array is built
        (loading a model's matmul weights would otherwise make one int64 per element)."""
        self.slab_writer(t, replica_axis)(values)

    def slab_writer(self, t: Tensor, replica_axis: bool) -> SlabWriter:
        """What writes values into a slab-laid tensor, its views made now: a fast engine keeps one
        per stream copy into such a tensor (an input of a model's matmul) for every later call."""
        lead, order, parts = self._slab_parts(t, replica_axis)
        return SlabWriter(lead + t.shape, order, parts)

    def slab_pairs(self, t: Tensor, out: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]] | None:
        """(a piece's strided view of storage, the part of ``out`` holding its elements) for each
        piece of a slab-laid tensor, ``out`` an array of the tensor's shape (after a replica axis,
        where it has one): copying each view into its part gathers the tensor, each part into its
        view scatters it, and no address array is built (an index of a training step's
        logits-sized fields is an int64 an element). None where a part is not a view of ``out``."""
        lead, order, parts = self._slab_parts(t, out.ndim > t.ndim)
        mid = out.transpose(order)  # the joined pieces' axis order
        pairs = []
        for view, part, shape in parts:
            try:
                pairs.append((view, np.reshape(mid[part], shape, copy=False)))
            except ValueError:  # the part of the joined pieces does not split into the piece's axes
                return None
        return pairs

    def _slab_parts(self, t: Tensor, replica_axis: bool) -> tuple[tuple[int, ...], tuple[int, ...],
                                                                  list[tuple]]:
        """(the replica axis, the order back to the joined pieces' axes, and per non-empty piece
        its strided view of storage, its slice of the joined pieces and its shape)."""
        slabs, buf = t.slabs, self.buffers[t.dtype]
        lead = (buf.shape[0],) if replica_axis else ()
        # Back to the joined pieces' axis order: the tensor's axis i is the pieces' perm[i].
        back = [0] * len(slabs.perm)
        for i, a in enumerate(slabs.perm):
            back[a] = i
        order = tuple(range(len(lead))) + tuple(len(lead) + i for i in back)
        parts = []
        at_ = 0
        axis = len(lead) + slabs.axis
        for offset, shape, strides, piece_mid in slabs.pieces:
            size = piece_mid[slabs.axis]
            if size and 0 not in shape:
                view = np.ndarray(lead + shape, buf.dtype, buf, offset * buf.itemsize,
                                  ((buf.strides[0],) if replica_axis else ())
                                  + tuple(s * buf.itemsize for s in strides))
                parts.append((view, (slice(None),) * axis + (slice(at_, at_ + size),), lead + shape))
            at_ += size
        return lead, order, parts

    def undefine(self, t: Tensor) -> None:
        """A ``WriteUndef``: with poison, the tensor's elements read as poison again."""
        if self.poison and t.numel:
            self.scatter(t, poison_value(t.dtype), replica_axis=True)  # type: ignore[arg-type]

    # -- host access ---------------------------------------------------------------------------
    def read(self, t: Tensor) -> np.ndarray:
        values = self.gather(t, replica_axis=True)
        return values[0, ...] if self.replicas == 1 else values

    def write(self, t: Tensor, values: object) -> None:
        self.host_writes += 1
        if t.repeats_elements():
            raise EngineError(f"cannot write tensor {t.name}{at(caller_location())}: it repeats elements "
                              "(a broadcast view?); write the underlying variable")
        arr = _cast_for_write(np.asarray(values), t)
        r = self.replicas
        if arr.shape == t.shape:
            arr = np.broadcast_to(arr, (r,) + t.shape)
        elif arr.shape != (r,) + t.shape:
            per = f" or {(r,) + t.shape} (one per replica)" if r > 1 else ""
            raise EngineError(f"cannot write values of shape {arr.shape} to tensor {t.name}"
                              f"{at(caller_location())}: it has shape {t.shape}; give values of shape "
                              f"{t.shape}{per}")
        self.scatter(t, arr, replica_axis=True)
