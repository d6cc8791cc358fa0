"""A matmul chain's left operand gathered straight from the source of the copies that fill it.

A convolution's im2col matrix is written by ``Copy`` programs just before its matmul (ops/conv.py)
and then gathered again by the chain (engine/chain_run.py) into the GEMM's left matrix: each
window element copied twice a call. Where it is safe, the chain's gather reads the copies' source
instead (one strided copy per rectangle of blocks, its axes split where the window's addresses
jump) and the copies themselves are no longer run: the same values reach the same GEMM, bitwise.

Taken only when every check holds, else everything runs as before:

* the copies are ``Copy`` programs between strided float32 tensors (no index, no slabs), each run
  once, in the chain's ``Sequence`` among the ``Copy``/``WriteUndef`` nodes just before it;
* nothing else reads their destinations: no compute set but the chain's, no other program node
  (the copies' destinations are the chain's own operand, rewritten before each use;
  ``Engine.read_tensor`` of it reads what was there before, as for a chain's partials);
* no copy writes another's source, the nodes in between do not write a source or read a
  destination, the chain's right-hand blocks do not read a destination and its outputs do not
  write a source;
* every element the chain reads of the destinations was written by a copy, and each gathered
  rectangle's source addresses form one strided view.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from softipu.compiler.executable import Executable
from softipu.dtypes import float32
from softipu.engine.chain_run import ChainRunner
from softipu.engine.chains import Chains, _Candidate, _extent, _read_table
from softipu.graph import program as P
from softipu.graph.tensor import Tensor, strides_never_meet

__all__ = ["CopyFusion", "FUSE_COPIES", "FusedChains", "Redirect"]

# Off: every chain gathers from the copies' destinations, the copies run (first call ~1.6 s of CPU
# less on ResNet-50 b1, later call ~20-30 ms more on one thread).
FUSE_COPIES = True
# The destinations' address table spans at most this many times the elements the copies write.
SPAN_SLACK = 4


_NOT_READERS = (P.ProgramKind.EXECUTE, P.ProgramKind.SEQUENCE, P.ProgramKind.WRITE_UNDEF)


def _meets(spans: list[tuple[int, int]], lo: int, hi: int) -> bool:
    return any(a < hi and lo < b for a, b in spans)


class CopyFusion:
    """Finds, per chain (by its first step), the copies just before it that may be fused, and
    holds the copy steps no longer run (:attr:`skipped`)."""

    def __init__(self, executable: Executable, chains: Chains) -> None:
        self.executable, self.chains = executable, chains
        self.skipped: set[int] = set()
        self._before: dict[int, list[P.Program]] = {}  # first node id -> Copy/WriteUndef run before it
        self._counts: dict[int, int] = {}
        self._nodes: tuple[list[int], np.ndarray] | None = None  # _node_spans, made on first use
        roots = list(executable.programs) + list(executable.functions.values())
        for root in roots:
            for node in P.walk(root):
                self._counts[id(node)] = self._counts.get(id(node), 0) + 1
                if node.kind is P.ProgramKind.SEQUENCE:
                    run: list[P.Program] = []
                    for child in node.programs:
                        if child.kind in (P.ProgramKind.COPY, P.ProgramKind.WRITE_UNDEF):
                            run.append(child)
                        else:
                            if run and child.kind is P.ProgramKind.EXECUTE:
                                self._before[id(child)] = run
                            run = []

    def redirect(self, first: P.Program, cs_ids: list[int], bands: list[Any],
                 buf: np.ndarray) -> Redirect | None:
        """A :class:`Redirect` for the chain whose first node is ``first``, or None."""
        run = self._before.get(id(first))
        if not run or buf.dtype != np.float32:
            return None
        a_spans = [_grid_span(b.a, b.m, b.k) for b in bands]
        copies, others = [], []  # others: the nodes after the first copy taken
        for node in run:
            if node.kind is P.ProgramKind.COPY and isinstance(node.dst, Tensor) and node.dst.dtype == float32:
                span = _extent(node.dst)
                if span is not None and _meets(a_spans, *span):
                    copies.append(node)
                    continue
            if copies:
                others.append(node)
        if not copies or not self._safe(copies, others, cs_ids, bands):
            return None
        return Redirect(self, copies, buf)

    def _safe(self, copies: list[P.Copy], others: list[P.Program], cs_ids: list[int],
              bands: list[Any]) -> bool:
        step_of = self.executable.step_of
        for c in copies:
            src, dst = c.src, c.dst
            if not (isinstance(src, Tensor) and src.dtype == float32 and src.is_strided and dst.is_strided) \
                    or src.index is not None or dst.index is not None or src.slabs is not None \
                    or dst.slabs is not None or self._counts.get(id(c)) != 1 or step_of.get(id(c)) is None:
                return False
        dsts = [_extent(c.dst) for c in copies]
        srcs = [_extent(c.src) for c in copies]
        if any(s is None for s in dsts + srcs) or any(_meets(dsts, *s) for s in srcs):
            return False
        for node in others:  # the nodes between: write no source, read no destination
            for slot in ("src", "dst", "tensor"):
                t = getattr(node, slot, None)
                if isinstance(t, Tensor) and t.dtype == float32 and (s := _extent(t)) is not None \
                        and (_meets(srcs, *s) or (node.kind is P.ProgramKind.COPY and _meets(dsts, *s))):
                    return False
        for b in bands:
            if _meets(dsts, *_grid_span(b.b, b.k, b.n)) or _meets(srcs, *_grid_span(b.out, b.m, b.n)):
                return False
        return not self._read_elsewhere(dsts, set(map(id, copies)), cs_ids)

    def _read_elsewhere(self, dsts: list[tuple[int, int]], mine: set[int], cs_ids: list[int]) -> bool:
        if self.chains._reads is None:  # the chains' table of who reads float32 (one for both)
            self.chains._reads = _read_table(self.executable, float32)
        table = self.chains._reads
        rows = table[(table[:, 0] >= 0) & ~np.isin(table[:, 0], cs_ids)]
        for lo, hi in dsts:
            if ((rows[:, 1] < hi) & (lo < rows[:, 2])).any():
                return True
        nodes, spans = self._node_spans()
        hit = np.zeros(len(nodes), bool)
        for lo, hi in dsts:
            hit |= (spans[:, 0] < hi) & (lo < spans[:, 1])
        return any(nodes[i] not in mine for i in np.flatnonzero(hit).tolist())

    def _node_spans(self) -> tuple[list[int], np.ndarray]:
        """``id`` of each program node (but Executes, Sequences and undefs) naming a float32 tensor,
        beside ``[lo, hi)`` of that tensor: one walk of the programs for every chain's question."""
        if self._nodes is None:
            nodes, spans = [], []
            for root in list(self.executable.programs) + list(self.executable.functions.values()):
                for node in P.walk(root):
                    if node.kind in _NOT_READERS:
                        continue
                    for slot in ("src", "dst", "tensor", "condition", "predicate"):
                        t = getattr(node, slot, None)
                        if isinstance(t, Tensor) and t.dtype == float32 and (s := _extent(t)) is not None:
                            nodes.append(id(node))
                            spans.append(s)
            self._nodes = nodes, np.array(spans, np.int64).reshape(-1, 2)
        return self._nodes


def _grid_span(grid: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> tuple[int, int]:
    """[lo, hi) of a band's grid of blocks ``(start, row stride, column stride)``."""
    start, rs, cs = grid[..., 0], grid[..., 1], grid[..., 2]
    r = np.broadcast_to((rows.reshape(-1, 1) - 1), start.shape)
    c = np.broadcast_to((cols.reshape(1, -1) - 1), start.shape)
    lo = start + np.minimum(r * rs, 0) + np.minimum(c * cs, 0)
    hi = start + np.maximum(r * rs, 0) + np.maximum(c * cs, 0) + 1
    return int(lo.min()), int(hi.max())


class Redirect:
    """One chain's fusable copies: :meth:`compose` turns the chain's gather pairs (scratch part,
    view of the destinations) into pairs reading the copies' source; :meth:`commit` stops the
    copies running."""

    def __init__(self, owner: CopyFusion, copies: list[P.Copy], buf: np.ndarray) -> None:
        self.owner, self.copies, self.buf = owner, copies, buf
        self.spans = [_extent(c.dst) for c in copies]
        self._inv: np.ndarray | None = None
        self._lo = 0

    def _table(self) -> np.ndarray | None:
        if self._inv is None:
            lo, hi = min(s[0] for s in self.spans), max(s[1] for s in self.spans)
            if hi - lo > SPAN_SLACK * sum(c.dst.numel for c in self.copies):
                return None
            # int32 where every address fits: half the memory a first call touches (the training
            # step's logits copy lists 31 M sources).
            inv = np.full(hi - lo, -1, np.int32 if self.buf.size < 2**31 else np.int64)
            for c in self.copies:  # in program order: a later copy's element wins
                _write_sources(inv, lo, c)
            self._inv, self._lo = inv, lo
        return self._inv

    def compose(self, pairs: list[tuple[np.ndarray, np.ndarray]]
                ) -> list[tuple[np.ndarray, np.ndarray]] | None:
        """The gather pairs reading the copies' source where a view reads their destinations:
        the view's sources are read as the same strided view of the table (no address list of
        the view, no gather of the table), then checked to be strided views themselves."""
        out = []
        item = self.buf.itemsize
        for part, view in pairs:
            off = (view.__array_interface__["data"][0] - self.buf.__array_interface__["data"][0]) // item
            strides = tuple(s // item for s in view.strides)
            span = _view_span(off, view.shape, strides)
            if span is None or not _meets(self.spans, *span):
                out.append((part, view))
                continue
            inv = self._table()
            if inv is None:
                return None
            if span[0] < self._lo or span[1] > self._lo + inv.size:
                return None
            src = np.ndarray(view.shape, inv.dtype, inv, (off - self._lo) * inv.itemsize,
                             tuple(s * inv.itemsize for s in strides))
            pieces = _pieces(src)  # None also where an element no copy writes (-1) is read
            if pieces is None:
                return None
            for at_, (shape, src_strides, splits) in pieces:
                fused = np.ndarray(shape, self.buf.dtype, self.buf, int(src[at_].flat[0]) * item,
                                   tuple(s * item for s in src_strides))
                fused.flags.writeable = False
                out.append((_split(part[at_], splits), fused))
        return out

    def commit(self) -> None:
        step_of = self.owner.executable.step_of
        self.owner.skipped.update(step_of[id(c)] for c in self.copies)


def _write_sources(inv: np.ndarray, lo: int, copy: P.Copy) -> None:
    """``inv[dst - lo] = src`` element by element for one copy. A strided destination that
    addresses no element twice is written through a strided view of ``inv``, and a strided source
    of the same shape straight into that view (:func:`_addresses`): no address list of either (a
    training step's logits copy is 31 M elements)."""
    dst, src = copy.dst, copy.src
    if not (dst.is_strided and strides_never_meet(dst.shape, dst.strides)):
        inv[dst.addresses().reshape(-1) - lo] = src.addresses().reshape(-1)
        return
    item = inv.itemsize
    view = np.ndarray(dst.shape, inv.dtype, inv, (dst.offset - lo) * item,
                      tuple(s * item for s in dst.strides))
    if src.is_strided and src.shape == dst.shape:
        _addresses(src.offset, src.shape, src.strides, out=view)
    else:
        view[...] = src.addresses().reshape(dst.shape)


def _addresses(off: int, shape: tuple[int, ...], strides: tuple[int, ...],
               out: np.ndarray | None = None) -> np.ndarray:
    """The int64 addresses of a strided view, written into ``out`` when given."""
    if out is None:
        out = np.empty(shape, np.int64)
    out[...] = off
    for ax, (n, s) in enumerate(zip(shape, strides, strict=True)):
        if n > 1 and s != 0:
            out += (np.arange(n, dtype=np.int64) * s).reshape((n,) + (1,) * (len(shape) - ax - 1))
    return out


def _factor(line: np.ndarray) -> list[tuple[int, int]] | None:
    """(length, stride) factors, outer first, of a line of addresses, or None."""
    dims, cur = [], line
    while cur.size > 1:
        d = np.diff(cur)
        bad = np.flatnonzero(d != d[0])
        r = cur.size if bad.size == 0 else int(bad[0]) + 1
        if cur.size % r:
            return None
        dims.append((r, int(d[0])))
        cur = cur[::r]
    return dims[::-1] or [(1, 0)]


def _view_span(off: int, shape: tuple[int, ...], strides: tuple[int, ...]) -> tuple[int, int] | None:
    """[lo, hi) of the addresses of a strided view (None where it has no elements)."""
    if 0 in shape:
        return None
    lo = off + sum(min(0, (n - 1) * s) for n, s in zip(shape, strides, strict=True))
    hi = off + sum(max(0, (n - 1) * s) for n, s in zip(shape, strides, strict=True)) + 1
    return lo, hi


def _strided_form(src: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...], list[list[int]]] | None:
    """(shape, strides, each axis's factor lengths) of an address array as one strided view whose
    axes split the array's own, checked exactly; None where no such view holds it, or where it
    holds a negative address (an element no copy writes). Each axis's line of addresses through
    the first element is factored (:func:`_factor`, checked against the line), then every element
    is checked to be the first plus its index's step along each line (:func:`_separable`)."""
    origin = int(src.flat[0])
    shape, strides, splits, lines = [], [], [], []
    for ax in range(src.ndim):
        line = src[(0,) * ax + (slice(None),) + (0,) * (src.ndim - ax - 1)].astype(np.int64) - origin
        dims = _factor(line)
        if dims is None:
            return None
        lengths, steps = tuple(n for n, _ in dims), tuple(st for _, st in dims)
        if len(dims) > 1 and not np.array_equal(_addresses(0, lengths, steps).reshape(-1), line):
            return None  # (one factor: _factor saw every step of the line)
        shape += lengths
        strides += steps
        splits.append(list(lengths))
        lines.append(line)
    if origin + sum(int(line.min()) for line in lines) < 0 or not _separable(src, origin, lines):
        return None
    return tuple(shape), tuple(strides), splits


# Elements compared at a time by _separable: the expected addresses stay in cache.
SEPARABLE_CHUNK = 1 << 16


def _separable(src: np.ndarray, origin: int, lines: list[np.ndarray]) -> bool:
    """Whether ``src[i0, i1, ...] == origin + lines[0][i0] + lines[1][i1] + ...`` everywhere,
    compared a chunk of trailing axes at a time (a whole expected array of a training step's
    31 M-element left operand would be 250 MB of fresh memory)."""
    ndim = src.ndim
    if ndim == 0:
        return True
    k, inner = ndim, 1  # the axes from k on fit in a chunk
    while k > 0 and inner * src.shape[k - 1] <= SEPARABLE_CHUNK:
        k -= 1
        inner *= src.shape[k]
    rest = np.zeros((), np.int64)  # the trailing axes' steps, broadcast over them
    for ax in range(k, ndim):
        rest = rest + lines[ax].reshape((-1,) + (1,) * (ndim - ax - 1))
    if k == 0:
        return bool(np.array_equal(src, origin + rest))
    cut = k - 1  # taken in slices of `step` along this axis, the axes before it one index at a time
    step = max(1, SEPARABLE_CHUNK // inner)
    for idx in np.ndindex(*src.shape[:cut]):
        base = origin + sum(int(lines[ax][i]) for ax, i in enumerate(idx))
        for lo in range(0, src.shape[cut], step):
            hi = min(lo + step, src.shape[cut])
            want = (base + lines[cut][lo:hi]).reshape((-1,) + (1,) * (ndim - cut - 1)) + rest
            if not np.array_equal(src[idx + (slice(lo, hi),)], want):
                return False
    return True


def _pieces(src: np.ndarray) -> list[tuple[tuple[slice, ...], tuple]] | None:
    """(index, :func:`_strided_form`) pieces covering a gathered rectangle's ``(I, rows, J, cols)``
    source addresses: the whole, else each block row, each cut along its rows where a window's
    pixels wrap to the next image row (a partial row, whole rows, a partial row: ResNet-50's
    3x3 blocks of output pixels start mid-row); None where that does not hold them."""
    form = _strided_form(src)
    if form is not None:
        return [((slice(None),) * src.ndim, form)]
    if src.ndim != 4:
        return None
    out = []
    for i in range(src.shape[0]):
        line, p = src[i, :, 0, 0], 0
        while p < line.size:
            q = _segment(line, p)
            at_ = (slice(i, i + 1), slice(p, q), slice(None), slice(None))
            form = _strided_form(src[at_])
            if form is None:
                return None
            out.append((at_, form))
            p = q
    return out


def _segment(line: np.ndarray, p: int) -> int:
    """The end of the piece of rows starting at ``p``: up to the first jump where that is not
    after whole runs of the line's run length, else as many whole runs as factor evenly."""
    rest = line[p:]
    if rest.size < 3:
        return line.size
    d = np.diff(rest)
    bad = np.flatnonzero(d != d[0])
    if bad.size == 0:
        return line.size
    r = int(bad[0]) + 1
    whole = rest.size // r * r
    runs = rest[:whole] - rest[0]
    dims = _factor(runs)  # checked whole: _factor reads only each level's first run
    if dims is not None and np.array_equal(
            _addresses(0, tuple(n for n, _ in dims), tuple(st for _, st in dims)).reshape(-1), runs):
        return p + whole
    return p + r


def _split(part: np.ndarray, splits: list[list[int]]) -> np.ndarray:
    """``part`` with each axis split into ``splits[axis]`` (outer first): a view, never a copy."""
    shape, strides = [], []
    for lengths, stride in zip(splits, part.strides, strict=True):
        inner = 1
        mine = []
        for n in reversed(lengths):
            mine.append(stride * inner)
            inner *= n
        shape += lengths
        strides += mine[::-1]
    return np.lib.stride_tricks.as_strided(part, tuple(shape), tuple(strides))


class FusedChains(Chains):
    """The fast engine's :class:`Chains`, each runner given the :class:`Redirect` of the copies
    just before it (if any) when it is built."""

    def __init__(self, executable: Executable, storage: Any) -> None:
        super().__init__(executable, storage)
        self.copies = CopyFusion(executable, self) if self.first and FUSE_COPIES else None

    def _build(self, cand: _Candidate) -> ChainRunner | None:
        runner = super()._build(cand)
        if runner is not None and self.copies is not None:
            cs_ids = [n.compute_set.id for n in cand.nodes]
            runner.redirect = self.copies.redirect(cand.nodes[0], cs_ids, runner.bands, runner.in_buf)
        return runner

    def skipped(self) -> set[int]:
        """The copy steps whose work a chain does (none before its first run)."""
        return self.copies.skipped if self.copies is not None else set()
