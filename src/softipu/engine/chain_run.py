"""Running matmul chains (:mod:`softipu.engine.chains` finds them): a chain's bands, each one GEMM
over gathered left and right blocks, cut into pieces by shape and run side by side on idle cores,
then scattered into the output blocks (or written in place where the blocks tile one matrix).
Consecutive bands of one shape whose outputs each tile one matrix, evenly spaced (attention's
heads), run as one batched GEMM over their gathered blocks: the demo encoder's 32 head products a
later call were a GEMM and a round of copies each. See :mod:`softipu.engine.chains` for the rules
and the rounding bound.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from softipu.codelets.halves import from_half, to_half_contiguous
from softipu.codelets.host import BLAS, run_in_turn, run_pieces
from softipu.compiler.executable import VertexGroup
from softipu.engine.constants import WrittenSpans
from softipu.engine.storage import as_rows
from softipu.errors import CodeletError
from softipu.graph.tensor import strides_never_meet

__all__ = ["ChainRunner", "Band", "Scratch"]

@dataclass(frozen=True, slots=True, eq=False)
class Band:
    """One GEMM: left blocks ``a[i, l]`` (row i, K slot l), right blocks ``b[l, j]`` and output
    blocks ``out[i, j]``, each grid of (start, row stride, column stride) in its dtype's space;
    row i is ``m[i]`` high, K slot l ``k[l]`` deep, column j ``n[j]`` wide."""

    a: np.ndarray  # (R, T, 3)
    b: np.ndarray  # (T, J, 3)
    out: np.ndarray  # (R, J, 3)
    m: np.ndarray
    k: np.ndarray
    n: np.ndarray

    @property
    def sizes(self) -> tuple[int, int, int]:
        return int(self.m.sum()), int(self.k.sum()), int(self.n.sum())


class ChainRunner:
    """Runs one matmul chain (module doc) against the engine's storage: per band, strided copies
    of its operand blocks into the interpreter's scratch matrices (one ``copyto`` per rectangle
    of equal, evenly spaced blocks), the GEMM, and the product copied out (or the GEMM writes
    straight into storage where the band's output blocks tile one row-major matrix)."""

    __slots__ = ("bands", "in_buf", "out_buf", "where", "group", "scratch", "plans", "kept", "kept_at",
                 "redirect", "bias")

    def __init__(self, bands: list[Band], in_buf: np.ndarray, out_buf: np.ndarray,
                 group: VertexGroup, where: str, scratch: Scratch) -> None:
        self.bands, self.in_buf, self.out_buf = bands, in_buf, out_buf
        self.group, self.where, self.scratch = group, where, scratch
        self.plans: list[tuple] | None = None
        # Copies of operand blocks only the host writes (engine/constants.py: a model's weights, on
        # the right, or on the left where the plan computes out^T = W x^T) into matrices this
        # runner keeps: made again when the host wrote since (``kept_at``: its write count then).
        self.kept: list[Callable[[], Any]] = []
        self.kept_at = -1
        # The copies filling the left operand, where the gather may read their source instead
        # (engine/copy_fusion.py); decided at the first run, their steps then skipped.
        self.redirect: Any = None
        # The bias add right after the chain, bound once (engine/epilogues.py), or None.
        self.bias: Callable[[], None] | None = None

    def __call__(self) -> None:
        from softipu.engine.fast import _codelet_failure  # the fast engine's error wording

        try:
            if self.plans is None:
                self.plans = self._plans()
            with BLAS.single_threaded():
                writes = self.scratch.host_writes()
                if self.kept and self.kept_at != writes:
                    run_pieces(self.kept)
                    self.kept_at = writes
                for copies_in, products, copies_out in self.plans:
                    if copies_in is not None:
                        copies_in()
                    if len(products) == 1:
                        products[0]()
                    else:
                        run_pieces(products)
                    for job in copies_out:
                        job()
                if self.bias is not None:
                    self.bias()
        except CodeletError:  # the fused bias add's own failure (epilogues.py), worded for it
            raise
        except Exception as exc:
            raise _codelet_failure(self.group, self.where, exc) from exc

    def _plans(self) -> list[tuple]:
        """A plan per band, except that runs of alike bands (:func:`_alike`: attention's heads,
        each a small product) share one: one batched GEMM over their blocks."""
        if self.redirect is not None:  # undone where a band's gather does not compose
            spans = {k: list(v) for k, v in self.scratch.kept_spans.items()}
            saved = list(self.kept), self.scratch.kept_bytes, spans
            try:
                plans = self._band_plans()
                self.redirect.commit()
                return plans
            except _NotFused:
                self.kept, self.scratch.kept_bytes, self.scratch.kept_spans = saved
                self.redirect = None
        return self._band_plans()

    def _band_plans(self) -> list[tuple]:
        plans, i = [], 0
        while i < len(self.bands):
            j = i + 1
            while j < len(self.bands) and _alike(self.bands[i], self.bands[j]):
                j += 1
            run = self.bands[i:j]
            batch = self._batch_plan(run) if len(run) > 1 else None
            plans.extend([batch] if batch is not None else [self._plan(band) for band in run])
            i = j
        return plans

    def _batch_plan(self, run: list[Band]) -> tuple | None:
        """(copies in, GEMM pieces, copies out) of bands of one shape whose output blocks each
        tile one matrix, the matrices evenly spaced: every band's operands gathered into one
        ``(bands, rows, depth)`` and ``(bands, depth, cols)`` scratch pair, one batched product
        (numpy calls the same GEMM per band) written into the outputs, cut along the bands by
        their work alone. float16 operands are gathered as halves and widened whole, a float16
        product narrowed whole (as :meth:`_plan` does a band's). None where that does not hold,
        or a band's right-hand blocks may be kept between calls (:meth:`Scratch.keeps` decides
        those band by band)."""
        src, dst = self.in_buf, self.out_buf
        if src.dtype not in _FLOATS or dst.dtype not in _FLOATS or \
                any(self.scratch.may_keep(band, src) for band in run):
            return None
        band = run[0]
        m_at, k_at, n_at = (np.concatenate(([0], np.cumsum(x))) for x in (band.m, band.k, band.n))
        rows, ks, cols = band.sizes
        c = _batched_view(dst, [b.out for b in run], m_at, n_at)
        if c is None:
            return None
        count = len(run)
        a = self.scratch.get("a", (count * rows, ks)).reshape(count, rows, ks)
        b = self.scratch.get("b", (count * ks, cols)).reshape(count, ks, cols)
        half = src.dtype == np.float16  # operands gathered as halves, then widened whole
        a_in = self.scratch.get("a16", (count * rows, ks), np.float16).reshape(a.shape) if half else a
        b_in = self.scratch.get("b16", (count * ks, cols), np.float16).reshape(b.shape) if half else b
        copies = _stacked([self._left(_copies(a_in[i], src, each.a, m_at, k_at))
                           + _copies(b_in[i], src, each.b, k_at, n_at) for i, each in enumerate(run)])
        copies_out: list[Callable[[], Any]] = []
        if dst.dtype == np.float16:  # the product in float32 scratch, narrowed whole
            into = self.scratch.get("c", (count * rows, cols)).reshape(count, rows, cols)
            copies_out = self._narrowed(into, c)
            c = into
        parts = max(1, min(CHAIN_MAX_PIECES, count, count * rows * ks * cols // CHAIN_PIECE_MACS))
        cuts = [count * p // parts for p in range(parts + 1)]
        products = [partial(np.matmul, a[lo:hi], b[lo:hi], out=c[lo:hi])
                    for lo, hi in zip(cuts[:-1], cuts[1:], strict=True)]
        widen = [(a_in, a), (b_in, b)] if half else []
        return _then(_copy_round(copies), _converted(from_half, widen)), products, copies_out

    def _narrowed(self, c: np.ndarray, whole: np.ndarray) -> list[Callable[[], Any]]:
        """The calls writing a float32 product ``c`` into ``whole``, a float16 view of the output
        of its shape: narrowed whole (:func:`softipu.codelets.halves.to_half`) straight into it
        where it is contiguous, else into scratch halves copied into it."""
        if whole.flags.c_contiguous:
            return [_converted(to_half_contiguous, [(c, whole)])]
        c16 = self.scratch.get("c16", (c.size // c.shape[-1], c.shape[-1]), np.float16).reshape(c.shape)
        return [_converted(to_half_contiguous, [(c, c16)])] + _copy_jobs([(whole, c16)])

    def _left(self, pairs: list[tuple[np.ndarray, np.ndarray]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """A left operand's gather pairs, from the copies' source where :attr:`redirect` holds."""
        if self.redirect is None:
            return pairs
        fused = self.redirect.compose(pairs) if self.in_buf.dtype == np.float32 else None
        if fused is None:
            raise _NotFused
        return fused

    def _plan(self, band: Band) -> tuple:
        """(copies in, GEMM pieces, copies out) of one band: views built once, reused every run."""
        m_at, k_at, n_at = (np.concatenate(([0], np.cumsum(x))) for x in (band.m, band.k, band.n))
        rows, ks, cols = band.sizes
        src, dst = self.in_buf, self.out_buf
        copies_in: list[tuple[np.ndarray, np.ndarray]] = []
        a_grid, b_grid, out_grid = band.a, band.b, band.out
        a = _direct(src, a_grid, m_at, k_at) if src.dtype == np.float32 and self.redirect is None else None
        half = src.dtype == np.float16  # operands gathered as halves, then widened whole
        widen: list[tuple[np.ndarray, np.ndarray]] = []
        if a is None and self.redirect is None and self.scratch.keeps(band, rows * ks, src, left=True):
            a = np.empty((rows, ks), np.float32)  # a weight on the left (out^T = W x^T): kept too
            self.kept += _copy_jobs(_copies(a, src, a_grid, m_at, k_at))
        elif a is None:
            a = self.scratch.get("a", (rows, ks))
            into = self.scratch.get("a16", (rows, ks), np.float16) if half else a
            copies_in += self._left(_copies(into, src, a_grid, m_at, k_at))
            widen += [(into, a)] if half else []
        b = _direct(src, b_grid, k_at, n_at) if src.dtype == np.float32 else None
        if b is None and self.scratch.keeps(band, ks * cols, src):
            b = np.empty((ks, cols), np.float32)
            self.kept += _copy_jobs(_copies(b, src, b_grid, k_at, n_at))
        elif b is None:
            b = self.scratch.get("b", (ks, cols))
            into = self.scratch.get("b16", (ks, cols), np.float16) if half else b
            copies_in += _copies(into, src, b_grid, k_at, n_at)
            widen += [(into, b)] if half else []
        c = _direct(dst, out_grid, m_at, n_at, writeable=True) if dst.dtype == np.float32 else None
        copies_out: list[Callable[[], Any]] = []
        if c is None:
            c = self.scratch.get("c", (rows, cols))
            copies_out = self._out(c, dst, out_grid, m_at, n_at)
        return _then(_copy_round(copies_in), _converted(from_half, widen)), _gemm_pieces(a, b, c), copies_out

    def _out(self, c: np.ndarray, dst: np.ndarray, grid: np.ndarray, m_at: np.ndarray,
             n_at: np.ndarray) -> list[Callable[[], Any]]:
        """The calls writing a band's product ``c`` into its output blocks: copies, or for float16
        blocks the product narrowed whole (:func:`softipu.codelets.halves.to_half`) and then
        copied as halves (into the blocks' matrix itself where they tile a contiguous one)."""
        if dst.dtype != np.float16:
            return _copy_jobs([(d, s) for s, d in _copies(c, dst, grid, m_at, n_at, writeable=True)])
        whole = _direct(dst, grid, m_at, n_at, writeable=True)
        if whole is not None:
            return self._narrowed(c, whole)
        c16 = self.scratch.get("c16", c.shape, np.float16)
        pairs = [(d, s) for s, d in _copies(c16, dst, grid, m_at, n_at, writeable=True)]
        return [_converted(to_half_contiguous, [(c, c16)])] + _copy_jobs(pairs)


_FLOATS = (np.float16, np.float32)


class _NotFused(Exception):
    """A band's left operand does not compose with the copies that fill it: plan them as before."""


# A band's GEMM is cut into pieces of at least this many multiply-accumulates (at most
# CHAIN_MAX_PIECES, and at least PIECE_LINES rows or columns each): a product of a small model's
# layer (128 x 512 x 128) still keeps a second core busy; pieces of a few hundred microseconds pay
# for handing one to another thread. Four pieces, not eight: each piece packs its share of the
# operands again and runs thinner blocks (ResNet-50's 196 x 2304 x 256: 17.0 GMAC/s a core in
# four column pieces, 15.5 in eight; 784 x 1152 x 128 in rows: 15.6-17.4 against 16.7), while
# four still share out evenly over two cores.
CHAIN_PIECE_MACS = 1 << 21
CHAIN_MAX_PIECES = 4
PIECE_LINES = 32


def _gemm_pieces(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> list[Callable[[], Any]]:
    """``c = a @ b`` cut into pieces by its shape alone (never by the host's cores): along the
    rows, or along the columns where there are more of them (each piece then packs only its
    part of ``b``). Each element is one piece's dot product, the same on every run."""
    macs = c.size * a.shape[1]
    wide = c.shape[1] > c.shape[0]
    lines = c.shape[1] if wide else c.shape[0]
    parts = max(1, min(CHAIN_MAX_PIECES, macs // CHAIN_PIECE_MACS, lines // PIECE_LINES))
    cuts = [lines * p // parts for p in range(parts + 1)]
    spans = list(zip(cuts[:-1], cuts[1:], strict=True))
    if wide:
        return [partial(np.matmul, a, b[:, lo:hi], out=c[:, lo:hi]) for lo, hi in spans]
    return [partial(np.matmul, a[lo:hi], b, out=c[lo:hi]) for lo, hi in spans]


# A gathered operand's copies are cut into pieces of about this many elements along their outermost
# axis (by their shapes alone), run side by side on idle cores: a copy's values do not depend on
# the cut (a convolution's im2col and weight blocks were a tenth of ResNet-50's later call).
COPY_PIECE = 1 << 17


def _copy_jobs(copies: list[tuple[np.ndarray, np.ndarray]]) -> list[Callable[[], Any]]:
    """``np.copyto(dst, src)`` of every pair, large ones cut into pieces along the destination's
    outermost axis in memory (each piece whole blocks of it, walked as the whole copy walks them)."""
    jobs: list[Callable[[], Any]] = []
    for dst, src in copies:
        axis = max(range(dst.ndim), key=lambda a: abs(dst.strides[a]) if dst.shape[a] > 1 else -1)
        parts = max(1, min(dst.shape[axis], dst.size // COPY_PIECE))
        cuts = [dst.shape[axis] * p // parts for p in range(parts + 1)]
        for lo, hi in zip(cuts[:-1], cuts[1:], strict=True):
            at_ = (slice(None),) * axis + (slice(lo, hi),)
            jobs.append(partial(np.copyto, *as_rows(dst[at_], src[at_])))
    return jobs


# A band's operand copies of fewer elements than this, all together, run on the calling thread:
# handing a round of small copies to another thread cost more than the copies (the demo encoder's
# bands, up to 128 x 512 each: 3.5 ms a later call shared out, against well under 1 ms in turn).
SHARED_COPY_MIN = 1 << 17


def _copy_round(copies: list[tuple[np.ndarray, np.ndarray]]) -> Callable[[], Any] | None:
    """One call making a band's operand copies: in pieces side by side on idle cores where they
    are large together (:data:`SHARED_COPY_MIN`), else one after another; None for no copies."""
    jobs = _copy_jobs(copies)
    if not jobs:
        return None
    if len(jobs) > 1 and sum(dst.size for dst, _ in copies) >= SHARED_COPY_MIN:
        return partial(run_pieces, jobs)
    return partial(run_in_turn, jobs)


def _then(*calls: Callable[[], Any] | None) -> Callable[[], Any] | None:
    """One call making the given calls in turn (None where there are none)."""
    jobs = [c for c in calls if c is not None]
    return None if not jobs else jobs[0] if len(jobs) == 1 else partial(run_in_turn, jobs)


# A float16 <-> float32 conversion of a band's operand or product is cut into pieces of at least
# this many elements (at most CHAIN_MAX_PIECES), side by side on idle cores: element by element,
# so the cut changes no bit.
CONVERT_PIECE = 1 << 16


def _converted(convert: Callable[[np.ndarray, np.ndarray], None],
               pairs: list[tuple[np.ndarray, np.ndarray]]) -> Callable[[], Any] | None:
    """One call converting each (contiguous source, contiguous destination) pair with
    ``convert``, in pieces by size alone; None for no pairs."""
    jobs: list[Callable[[], Any]] = []
    for src, dst in pairs:
        flat_src, flat_dst = src.reshape(-1), dst.reshape(-1)
        parts = max(1, min(CHAIN_MAX_PIECES, flat_src.size // CONVERT_PIECE))
        cuts = [flat_src.size * p // parts for p in range(parts + 1)]
        jobs += [partial(convert, flat_src[lo:hi], flat_dst[lo:hi])
                 for lo, hi in zip(cuts[:-1], cuts[1:], strict=True)]
    if not jobs:
        return None
    return jobs[0] if len(jobs) == 1 else partial(run_pieces, jobs)


# At most this many bytes of operands only the host writes (weights) are kept gathered between calls.
KEPT_BYTES = 512 << 20


class Scratch:
    """The interpreter's matrices for gathered operands and products, shared by its chains (they
    run one at a time). A band that needs more than the current buffer gets a larger one; plans
    made earlier keep the views of the old one (alive through them).

    With the executable's :class:`WrittenSpans` and the storage, it also says which bands'
    right-hand (or left-hand) blocks only the host writes (:meth:`keeps`), up to
    :data:`KEPT_BYTES` in all."""

    def __init__(self, written: WrittenSpans | None = None, storage: Any = None) -> None:
        self.buffers: dict[str, np.ndarray] = {}
        self.written, self.storage = written, storage
        self.kept_bytes = 0
        self.kept_spans: dict[Any, list[tuple[int, int]]] = {}  # dtype -> [lo, hi) of kept blocks

    def streamed(self, t: Any) -> None:
        """A host-to-device stream copy into ``t`` ran: where it meets a kept block, count it as
        a host write (every kept copy is then made again on its next run)."""
        spans = self.kept_spans.get(t.dtype)
        if not spans:
            return
        from softipu.engine.chains import _extent

        span = _extent(t)
        if span is not None and any(lo < span[1] and span[0] < hi for lo, hi in spans):
            self.storage.host_writes += 1

    def host_writes(self) -> int:
        return self.storage.host_writes if self.storage is not None else 0

    def may_keep(self, band: Band, src: np.ndarray) -> bool:
        """Whether only the host writes a band's right-hand blocks (budget aside): no change."""
        return self._host_only(band, src) is not None

    def _host_only(self, band: Band, src: np.ndarray, left: bool = False) -> tuple | None:
        """(dtype, start, hi) of a band's right-hand blocks (left-hand with ``left``) where only
        the host writes them."""
        if self.written is None or self.storage.replicas != 1:
            return None
        grid, heights, widths = (band.a, band.m, band.k) if left else (band.b, band.k, band.n)
        start, rs, cs = grid[..., 0], grid[..., 1], grid[..., 2]
        if (rs <= 0).any() or (cs <= 0).any():
            return None
        hi = start + (heights[:, None] - 1) * rs + (widths[None, :] - 1) * cs + 1
        dtype = next((d for d, buf in self.storage.buffers.items() if np.shares_memory(buf, src)), None)
        if dtype is None or not self.written.untouched(dtype, start.reshape(-1), hi.reshape(-1)):
            return None
        return dtype, start, hi

    def keeps(self, band: Band, elements: int, src: np.ndarray, left: bool = False) -> bool:
        """Whether a band's gathered right-hand matrix (left-hand with ``left``: ``elements`` of
        float32, from ``src``, a storage buffer's row) is kept between calls; counted against the
        budget if so."""
        if self.kept_bytes + 4 * elements > KEPT_BYTES:
            return False
        found = self._host_only(band, src, left)
        if found is None:
            return False
        dtype, start, hi = found
        self.kept_bytes += 4 * elements
        self.kept_spans.setdefault(dtype, []).append((int(start.min()), int(hi.max())))
        return True

    def get(self, name: str, shape: tuple[int, int], dtype: Any = np.float32) -> np.ndarray:
        size = shape[0] * shape[1]
        buf = self.buffers.get(name)
        if buf is None or buf.size < size:
            buf = self.buffers[name] = np.empty(size, dtype)
        return buf[:size].reshape(shape)


def _alike(x: Band, y: Band) -> bool:
    """Two bands of one shape: blocks of the same heights, depths and widths."""
    return all(np.array_equal(p, q) for p, q in ((x.m, y.m), (x.k, y.k), (x.n, y.n)))


def _batched_view(buf: np.ndarray, grids: list[np.ndarray], r_at: np.ndarray,
                  c_at: np.ndarray) -> np.ndarray | None:
    """The bands' output grids as one writeable ``(bands, rows, cols)`` view of ``buf`` where each
    tiles one matrix (:func:`_direct`) of the same strides, the matrices evenly spaced; else None."""
    views = [_direct(buf, grid, r_at, c_at, writeable=True) for grid in grids]
    if any(v is None for v in views) or len({v.strides for v in views}) > 1:
        return None
    starts = [int(grid[0, 0, 0]) for grid in grids]
    step = starts[1] - starts[0]
    if any(b - a != step for a, b in zip(starts[:-1], starts[1:], strict=True)):
        return None
    rows, cols = views[0].shape
    rs, cs = (s // buf.itemsize for s in views[0].strides)
    if not strides_never_meet((len(grids), rows, cols), (step, rs, cs)):
        if len(grids) * rows * cols > BATCH_CHECK_MAX:
            return None
        at = (np.arange(len(grids)) * step)[:, None, None] + (np.arange(rows) * rs)[:, None] \
            + np.arange(cols) * cs
        if np.unique(at).size != at.size:  # outputs that overlap: one band at a time, in order
            return None
    return _view(buf, starts[0], (len(grids), rows, cols), (step, rs, cs), writeable=True)


# Bands whose outputs the strides alone do not show apart (``graph.tensor.strides_never_meet``) are
# batched only where they hold at most this many elements (their addresses are checked for overlap
# once, at the chain's first run).
BATCH_CHECK_MAX = 1 << 22


def _direct(buf: np.ndarray, grid: np.ndarray, r_at: np.ndarray, c_at: np.ndarray,
            writeable: bool = False) -> np.ndarray | None:
    """The whole grid as one strided matrix of ``buf`` where its blocks tile one, else None."""
    start, rs, cs = grid[0, 0]
    if (grid[..., 1] != rs).any() or (grid[..., 2] != cs).any():
        return None
    want = start + r_at[:-1, None] * rs + c_at[None, :-1] * cs
    if (grid[..., 0] != want).any():
        return None
    return _view(buf, int(start), (int(r_at[-1]), int(c_at[-1])), (int(rs), int(cs)), writeable)


def _view(buf: np.ndarray, start: int, shape: tuple[int, ...], strides: tuple[int, ...],
          writeable: bool) -> np.ndarray:
    item = buf.itemsize
    view = np.ndarray(shape, buf.dtype, buf, start * item, tuple(s * item for s in strides))
    view.flags.writeable = writeable
    return view


def _copies(mat: np.ndarray, buf: np.ndarray, grid: np.ndarray, r_at: np.ndarray, c_at: np.ndarray,
            writeable: bool = False) -> list[tuple[np.ndarray, np.ndarray]]:
    """(part of ``mat``, view of ``buf``) pairs covering the grid of blocks: one per rectangle of
    equal blocks at evenly spaced starts, as ``(I, rows, J, cols)`` views."""
    r_size, c_size = np.diff(r_at), np.diff(c_at)
    out = []
    for i0, i1 in _runs(r_size):
        for j0, j1 in _runs(c_size):
            for ri0, ri1, rj0, rj1 in _rectangles(grid, i0, i1, j0, j1):
                m, n = int(r_size[ri0]), int(c_size[rj0])
                start, rs, cs = (int(x) for x in grid[ri0, rj0])
                si = int(grid[ri0 + 1, rj0, 0]) - start if ri1 - ri0 > 1 else 0
                sj = int(grid[ri0, rj0 + 1, 0]) - start if rj1 - rj0 > 1 else 0
                part = mat[r_at[ri0]:r_at[ri1], c_at[rj0]:c_at[rj1]].reshape(ri1 - ri0, m, rj1 - rj0, n)
                shape = (ri1 - ri0, m, rj1 - rj0, n)
                out.append((part, _view(buf, start, shape, (si, rs, sj, cs), writeable)))
    return out


def _stacked(per_band: list[list[tuple[np.ndarray, np.ndarray]]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """The bands' gather pairs, the k-th pair of every band as one pair with the bands leading
    where they have one shape and strides and both ends step evenly from band to band (attention's
    heads: 8 bands of 3 pairs, 24 copies a chain, as 3); the rest as they are. A copy: the same
    elements land in the same places."""
    if len(per_band) < 2 or any(len(p) != len(per_band[0]) for p in per_band):
        return [pair for pairs in per_band for pair in pairs]
    out = []
    for k in range(len(per_band[0])):
        pairs = [p[k] for p in per_band]
        step = _even_step([d for d, _ in pairs]), _even_step([v for _, v in pairs])
        if None in step:
            out += pairs
            continue
        (d0, v0), n = pairs[0], len(pairs)
        out.append((np.lib.stride_tricks.as_strided(d0, (n,) + d0.shape, (step[0],) + d0.strides),
                    np.lib.stride_tricks.as_strided(v0, (n,) + v0.shape, (step[1],) + v0.strides,
                                                    writeable=False)))
    return out


def _even_step(arrays: list[np.ndarray]) -> int | None:
    """The byte step between the starts of consecutive arrays of one shape, strides and dtype,
    where it is even (and not zero), else None."""
    first = arrays[0]
    if any(a.shape != first.shape or a.strides != first.strides or a.dtype != first.dtype for a in arrays):
        return None
    starts = [a.__array_interface__["data"][0] for a in arrays]
    step = starts[1] - starts[0]
    if step == 0 or any(b - a != step for a, b in zip(starts, starts[1:], strict=False)):
        return None
    return step


def _runs(sizes: np.ndarray) -> list[tuple[int, int]]:
    """[lo, hi) runs of equal sizes."""
    cuts = [0] + [i for i in range(1, len(sizes)) if sizes[i] != sizes[i - 1]] + [len(sizes)]
    return list(zip(cuts[:-1], cuts[1:], strict=True))


def _rectangles(grid: np.ndarray, i0: int, i1: int, j0: int, j1: int) -> list[tuple[int, int, int, int]]:
    """The sub-grid as rectangles whose blocks share inner strides and start evenly spaced:
    itself, else its rows, else (per row) runs of evenly spaced blocks."""
    if _even(grid[i0:i1, j0:j1]):
        return [(i0, i1, j0, j1)]
    out = []
    for i in range(i0, i1):
        j = j0
        while j < j1:
            hi = j + 1
            while hi < j1 and _even(grid[i:i + 1, j:hi + 1]):
                hi += 1
            out.append((i, i + 1, j, hi))
            j = hi
    return out


def _even(sub: np.ndarray) -> bool:
    if (sub[..., 1:] != sub[0, 0, 1:]).any():
        return False
    starts = sub[..., 0]
    si = starts[1, 0] - starts[0, 0] if starts.shape[0] > 1 else 0
    sj = starts[0, 1] - starts[0, 0] if starts.shape[1] > 1 else 0
    want = starts[0, 0] + np.arange(starts.shape[0])[:, None] * si + np.arange(starts.shape[1])[None, :] * sj
    return bool((starts == want).all())
