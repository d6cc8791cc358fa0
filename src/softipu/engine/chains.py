"""Matmul chains as whole GEMMs: a library matmul's AMP compute sets and partials reduction, run
by the fast engine as a few large products.

``ops.matmul`` runs a plan as ``Execute(amp0)``, ``Execute(amp1)`` ... (serial K chunks, the later
ones ``out += a . b``) and, where K is split over tiles, ``Execute(reduce)`` summing each output
block's partial blocks. Every output element is then one contraction, ``sum_l A[i, l] B[l, j]``
over the whole K, evaluated in the reference's order as 16 tile-sized products and a sum: small
BLAS calls, each reading and writing its partials again. Design principle 6 lets the fast engine
evaluate a contraction in any order, deterministically and within
:func:`softipu.codelets._common.contraction_bound` of the reference, so a chain found here runs as

* a *gather*: each output block's terms ``(a block, b block)`` from every AMP step and every
  partial block it is reduced from; output blocks with the same left blocks form a *row* whose
  left blocks are copied side by side (``m x K``), and rows whose right-hand columns are the same
  form a *band* whose right blocks are copied once (``K x N``);
* one GEMM per band, cut into row pieces by its size alone (:func:`softipu.codelets.gemm.pieces`,
  never by the host's cores), the pieces side by side on idle cores;
* a *scatter* of the product into the output blocks (the reduce's rows, or the AMP's own blocks
  where nothing reduces them), rounded once to the output type.

A chain is only taken when every check holds; else its compute sets run as usual. Checked: the
compute sets are consecutive ``Execute`` nodes of one ``Sequence``, each run nowhere else; every
vertex is an ``AmpMatMul`` (fp32 partials; the later steps accumulating onto blocks the first
wrote) or a ``ReducePartials`` whose rows read each partial row once; each output block's terms
have matching shapes; and nothing else in the executable (another compute set, a copy, a stream,
a print, a predicate) reads the partials, which the fused chain does not write: they are the
matmul's own temporaries, dead once reduced. (``Engine.read_tensor`` of such a partials variable
reads what was there before.) One replica; a matmul on replicated graphs runs as before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from softipu.codelets.gemm import pieces
from softipu.codelets.host import BLAS, run_pieces
from softipu.codelets.matmul import A_TRANSPOSED, B_TRANSPOSED, amp_codelet, reduce_codelet
from softipu.compiler.executable import Executable, VertexGroup
from softipu.dtypes import float16, float32
from softipu.graph import program as P
from softipu.graph.tensor import Tensor
from softipu.graph.vertex import Direction

__all__ = ["ChainRunner", "FUSE_MATMULS", "find_chains"]

# Off: every compute set runs group by group (tests of the per-group runners switch it off).
FUSE_MATMULS = True

_BLOCK = tuple[int, int, int, int]  # (start, bits, rows, cols) of a block as the codelet sees it


@dataclass(frozen=True, slots=True)
class _Band:
    """One GEMM: left blocks ``a[i][l]`` (row i, K slot l), right blocks ``b[l][j]``, outputs
    ``out[i][j]`` as (start, row stride) of an ``m_i x n_j`` block of the output space."""

    a: tuple[tuple[_BLOCK, ...], ...]
    b: tuple[tuple[_BLOCK, ...], ...]
    out: tuple[tuple[tuple[int, int], ...], ...]
    m: tuple[int, ...]
    k: tuple[int, ...]
    n: tuple[int, ...]


class ChainRunner:
    """Runs one matmul chain (module doc) against the engine's storage: per band, strided copies
    of its operand blocks into the interpreter's scratch matrices (one ``copyto`` per rectangle
    of equal, evenly spaced blocks), the GEMM, and the product copied out (or the GEMM writes
    straight into storage where the band's output blocks tile one row-major matrix)."""

    __slots__ = ("bands", "in_buf", "out_buf", "where", "group", "scratch", "plans")

    def __init__(self, bands: list[_Band], in_buf: np.ndarray, out_buf: np.ndarray,
                 group: VertexGroup, where: str, scratch: _Scratch) -> None:
        self.bands, self.in_buf, self.out_buf = bands, in_buf, out_buf
        self.group, self.where, self.scratch = group, where, scratch
        self.plans: list[tuple] | None = None

    def __call__(self) -> None:
        from softipu.engine.fast import _codelet_failure  # the fast engine's error wording

        try:
            if self.plans is None:
                self.plans = [self._plan(band) for band in self.bands]
            with BLAS.single_threaded():
                for copies_in, a, b, c, copies_out in self.plans:
                    for dst, src in copies_in:
                        np.copyto(dst, src)
                    run_pieces(_gemm_pieces(a, b, c))
                    for dst, src in copies_out:
                        np.copyto(dst, src)
        except Exception as exc:
            raise _codelet_failure(self.group, self.where, exc) from exc

    def _plan(self, band: _Band) -> tuple:
        """(copies in, A, B, C, copies out) of one band: views built once, reused every run."""
        m_at, k_at, n_at = (np.cumsum((0,) + sizes) for sizes in (band.m, band.k, band.n))
        rows, ks, cols = int(m_at[-1]), int(k_at[-1]), int(n_at[-1])
        src, dst = self.in_buf, self.out_buf
        copies_in: list[tuple[np.ndarray, np.ndarray]] = []
        a_grid = _grid([[_inner(blk, A_TRANSPOSED) for blk in row] for row in band.a])
        a = _direct(src, a_grid, m_at, k_at) if src.dtype == np.float32 else None
        if a is None:
            a = self.scratch.get("a", (rows, ks))
            copies_in += _copies(a, src, a_grid, m_at, k_at)
        b_grid = _grid([[_inner(blk, B_TRANSPOSED) for blk in row] for row in band.b])
        b = _direct(src, b_grid, k_at, n_at) if src.dtype == np.float32 else None
        if b is None:
            b = self.scratch.get("b", (ks, cols))
            copies_in += _copies(b, src, b_grid, k_at, n_at)
        out_grid = _grid([[(start, stride, 1) for start, stride in row] for row in band.out])
        c = _direct(dst, out_grid, m_at, n_at, writeable=True)
        copies_out: list[tuple[np.ndarray, np.ndarray]] = []
        if c is None:
            c = self.scratch.get("c", (rows, cols))
            copies_out = [(d, s) for s, d in _copies(c, dst, out_grid, m_at, n_at, writeable=True)]
        return copies_in, a, b, c, copies_out


def _gemm_pieces(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> list[Callable[[], Any]]:
    """``c = a @ b`` cut into pieces by its shape alone (never by the host's cores): along the
    rows, or along the columns where there are more of them (each piece then packs only its
    part of ``b``). Each element is one piece's dot product, the same on every run."""
    macs = c.size * a.shape[1]
    if c.shape[1] > c.shape[0]:
        return [partial(np.matmul, a, b[:, lo:hi], out=c[:, lo:hi]) for lo, hi in pieces(c.shape[1], macs)]
    return [partial(np.matmul, a[lo:hi], b, out=c[lo:hi]) for lo, hi in pieces(c.shape[0], macs)]


class _Scratch:
    """The interpreter's matrices for gathered operands and products, shared by its chains (they
    run one at a time), each as large as the largest band needs."""

    def __init__(self) -> None:
        self.buffers: dict[str, np.ndarray] = {}
        self.sizes: dict[str, int] = {}

    def need(self, name: str, size: int) -> None:
        self.sizes[name] = max(self.sizes.get(name, 0), size)

    def get(self, name: str, shape: tuple[int, int]) -> np.ndarray:
        buf = self.buffers.get(name)
        if buf is None:
            buf = self.buffers[name] = np.empty(self.sizes[name], np.float32)
        return buf[:shape[0] * shape[1]].reshape(shape)


def _inner(block: _BLOCK, transposed_bit: int) -> tuple[int, int, int]:
    """(start, row stride, column stride) of a block as the codelet reads it."""
    start, bits, rows, cols = block
    return (start, 1, rows) if bits & transposed_bit else (start, cols, 1)


def _grid(blocks: list[list[tuple[int, int, int]]]) -> np.ndarray:
    return np.array(blocks, np.int64).reshape(len(blocks), -1, 3)


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


# -- finding chains -------------------------------------------------------------------------------
@dataclass(slots=True)
class _Chain:
    steps: list[int]  # step indices of the chain's Execute nodes, in order
    cs_ids: list[int]
    bands: list[_Band]
    in_dtype: Any
    out_dtype: Any
    partials: list[tuple[int, int]]  # [start, end) of every partial block the chain leaves unwritten
    group: VertexGroup
    name: str


def find_chains(executable: Executable, storage: Any) -> dict[int, Callable[[], None] | None]:
    """For each step of a fused chain: its runner at the first step, None at the others."""
    if executable.replication_factor != 1 or not FUSE_MATMULS:
        return {}
    roots = list(executable.programs) + list(executable.functions.values())
    executions: dict[int, int] = {}
    for root in roots:
        for node in P.walk(root):
            if node.kind is P.ProgramKind.EXECUTE:
                executions[node.compute_set.id] = executions.get(node.compute_set.id, 0) + 1
    chains = [chain for root in roots for node in P.walk(root) if node.kind is P.ProgramKind.SEQUENCE
              for chain in _chains_in(executable, node.programs, executions)]
    if not chains:
        return {}
    found: dict[int, Callable[[], None] | None] = {}
    scratch = _Scratch()
    for ch in _without_read_partials(executable, chains, roots):
        for band in ch.bands:
            rows, ks, cols = sum(band.m), sum(band.k), sum(band.n)
            for name, size in (("a", rows * ks), ("b", ks * cols), ("c", rows * cols)):
                scratch.need(name, size)
        runner = ChainRunner(ch.bands, storage.buffers[ch.in_dtype][0], storage.buffers[ch.out_dtype][0],
                             ch.group, f"compute sets {ch.name!r}", scratch)
        found.update(dict.fromkeys(ch.steps[1:]))
        found[ch.steps[0]] = runner
    return found


def _kind(executable: Executable, cs_id: int) -> tuple[str, Any] | None:
    """('amp' | 'acc' | 'reduce', dtypes) when every group of the compute set is of one such codelet."""
    groups = executable.compute_sets[cs_id].groups
    if not groups:
        return None
    kinds = {_codelet_kind(g.codelet) for g in groups}
    return kinds.pop() if len(kinds) == 1 else None


def _codelet_kind(codelet: type) -> tuple[str, Any] | None:
    fields = codelet.fields
    if set(fields) == {"a", "b", "out", "m", "k", "n", "layout"}:
        in_dtype, part = fields["a"].dtype, fields["out"].dtype
        if part != float32 or in_dtype not in (float16, float32):
            return None
        for kind, accumulate in (("amp", False), ("acc", True)):
            if codelet is amp_codelet(in_dtype, part, accumulate):
                return kind, in_dtype
        return None
    if set(fields) == {"partials", "out"}:
        part, out = fields["partials"].dtype, fields["out"].dtype
        if part == float32 and out == float32 and codelet is reduce_codelet(part, out):
            return "reduce", out
    return None


def _chains_in(executable: Executable, children: list[P.Program], executions: dict[int, int]) -> list[_Chain]:
    step_of = executable.step_of
    kinds = []
    for node in children:
        kind = None
        if node.kind is P.ProgramKind.EXECUTE and executions[node.compute_set.id] == 1 \
                and step_of.get(id(node)) is not None:
            kind = _kind(executable, node.compute_set.id)
        kinds.append(kind)
    found, i = [], 0
    while i < len(children):
        if kinds[i] is None or kinds[i][0] != "amp":
            i += 1
            continue
        in_dtype = kinds[i][1]
        j = i + 1
        while j < len(children) and kinds[j] == ("acc", in_dtype):
            j += 1
        if j < len(children) and kinds[j] is not None and kinds[j][0] == "reduce":
            j += 1
        nodes = children[i:j]
        chain = _build(executable, nodes, in_dtype)
        if chain is not None:
            found.append(chain)
        i = j
    return found


def _row_starts(t: Tensor) -> np.ndarray | None:
    """Start address of each row of a ``(V, L)`` tensor whose rows are contiguous, else None."""
    v, length = t.shape
    if t.is_strided:
        if length > 1 and t.strides[1] != 1:
            return None
        return t.offset + np.arange(v, dtype=np.int64) * t.strides[0]
    addr = t.addresses()
    if length > 1 and not np.array_equal(addr, addr[:, :1] + np.arange(length, dtype=np.int64)):
        return None
    return addr[:, 0].astype(np.int64)


def _param(group: VertexGroup, name: str) -> np.ndarray:
    return np.broadcast_to(np.asarray(group.fields[name], np.int64).reshape(-1), (group.num_vertices,))


def _amp_table(executable: Executable, cs_ids: list[int]) -> np.ndarray | None:
    """One row per AMP vertex of the chain: step, a start, a bits, b start, b bits, out start, m, k, n."""
    rows = []
    for step, cs_id in enumerate(cs_ids):
        for g in executable.compute_sets[cs_id].groups:
            starts = [_row_starts(g.fields[f]) for f in ("a", "b", "out")]
            if any(s is None for s in starts):
                return None
            m, k, n, bits = (_param(g, f) for f in ("m", "k", "n", "layout"))
            if (g.fields["a"].shape[1] != m * k).any() or (g.fields["b"].shape[1] != k * n).any() \
                    or (g.fields["out"].shape[1] != m * n).any():
                return None
            v = g.num_vertices
            rows.append(np.stack([np.full(v, step), starts[0], bits & A_TRANSPOSED, starts[1],
                                  bits & B_TRANSPOSED, starts[2], m, k, n], axis=1))
    return np.concatenate(rows) if rows else None


def _build(executable: Executable, nodes: list[P.Program], in_dtype: Any) -> _Chain | None:
    """The chain of these Execute nodes as bands, or None where a check fails (module doc)."""
    has_reduce = _kind(executable, nodes[-1].compute_set.id)[0] == "reduce"
    amp_ids = [n.compute_set.id for n in (nodes[:-1] if has_reduce else nodes)]
    if len(nodes) < 2 and not has_reduce and len(amp_ids) == 1 \
            and sum(g.num_vertices for g in executable.compute_sets[amp_ids[0]].groups) < 2:
        return None
    table = _amp_table(executable, amp_ids)
    if table is None:
        return None
    step, a0, abit, b0, bbit, o0, m, k, n = table.T
    if (m <= 0).any() or (k <= 0).any() or (n <= 0).any():
        return None
    first = step == 0
    p_start = o0[first]
    order = np.argsort(p_start, kind="stable")
    p_start, p_m, p_n = p_start[order], m[first][order], n[first][order]
    if np.any(p_start[1:] < p_start[:-1] + p_m[:-1] * p_n[:-1]):
        return None  # the first step's blocks overlap
    p_of = np.searchsorted(p_start, o0)
    p_of_ok = p_of < p_start.size
    if not p_of_ok.all() or (p_start[p_of] != o0).any() or (p_m[p_of] != m).any() or (p_n[p_of] != n).any():
        return None  # a later step accumulates onto a block the first did not write
    if in_dtype == float32 and _overlaps(np.stack([a0, a0 + m * k], 1), p_start, p_start + p_m * p_n) or \
            in_dtype == float32 and _overlaps(np.stack([b0, b0 + k * n], 1), p_start, p_start + p_m * p_n):
        return None  # an operand is (part of) the partials
    if has_reduce:
        finals = _reduced(executable, nodes[-1].compute_set.id, p_start, p_m, p_n)
        if finals is None:
            return None
        f_of_p, f_out = finals
    else:
        f_of_p = np.arange(p_start.size)
        f_out = [(int(s), int(w)) for s, w in zip(p_start, p_n, strict=True)]
    terms: dict[int, list[tuple[_BLOCK, _BLOCK]]] = {}
    for s_a, ab, s_b, bb, p, mm, kk, nn in zip(a0, abit, b0, bbit, p_of, m, k, n, strict=True):
        terms.setdefault(int(f_of_p[p]), []).append(((int(s_a), int(ab), int(mm), int(kk)),
                                                    (int(s_b), int(bb), int(kk), int(nn))))
    bands = _bands(terms, f_out)
    if bands is None or _writes_operands(bands, in_dtype):
        return None
    first_group = executable.compute_sets[amp_ids[0]].groups[0]
    name = "', '".join(executable.compute_sets[n.compute_set.id].compute_set.name for n in nodes)
    out_dtype = float32
    partials = [(int(s), int(s + mm * nn)) for s, mm, nn in zip(p_start, p_m, p_n, strict=True)] \
        if has_reduce else []
    return _Chain([executable.step_of[id(nd)] for nd in nodes], [nd.compute_set.id for nd in nodes], bands,
                  in_dtype, out_dtype, partials, first_group, name)


def _writes_operands(bands: list[_Band], in_dtype: Any) -> bool:
    """Whether an output block meets an operand block (the fused chain reads every operand of a
    band before it writes, but writes one band before the next reads)."""
    if in_dtype != float32:
        return False
    spans = [(s, s + (m - 1) * stride + n) for band in bands for m, row in zip(band.m, band.out, strict=True)
             for n, (s, stride) in zip(band.n, row, strict=True)]
    starts, ends = _union(np.array(spans, np.int64).reshape(-1, 2))
    blocks = [(blk[0], blk[0] + blk[2] * blk[3]) for band in bands for row in band.a + band.b for blk in row]
    return _overlaps(np.array(blocks, np.int64).reshape(-1, 2), starts, ends)


def _union(spans: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted, disjoint ``[starts, ends)`` covering the same addresses as ``spans``."""
    spans = spans[np.argsort(spans[:, 0], kind="stable")]
    reach = np.maximum.accumulate(spans[:, 1])
    new = np.ones(len(spans), bool)
    new[1:] = spans[1:, 0] >= reach[:-1]
    starts = spans[new, 0]
    ends = np.maximum.reduceat(spans[:, 1], np.flatnonzero(new)) if len(spans) else spans[:, 1]
    return starts, ends


def _overlaps(ranges: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> bool:
    """Whether any ``[lo, hi)`` of ``ranges`` meets one of the sorted, disjoint ``[starts, ends)``."""
    if ranges.size == 0 or starts.size == 0:
        return False
    i = np.searchsorted(starts, ranges[:, 1], side="left") - 1  # last block starting before hi
    valid = i >= 0
    return bool(np.any(valid & (ends[np.maximum(i, 0)] > ranges[:, 0])))


def _reduced(executable: Executable, cs_id: int, p_start: np.ndarray, p_m: np.ndarray,
             p_n: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int]]] | None:
    """Which final block each partial block is reduced into, and each final block's (start, row
    stride) in the output space; None unless every partial row is read once, by one reduce row
    that reads the same row of every partial block of its final block."""
    seen = np.zeros(int(p_m.sum()), bool)
    row_base = np.concatenate(([0], np.cumsum(p_m)[:-1]))
    f_key: dict[tuple[int, ...], int] = {}
    found = []  # (final block, row, output row start) per reduce vertex
    for g in executable.compute_sets[cs_id].groups:
        rows = _reduce_rows(g, p_start, p_m, p_n)
        if rows is None:
            return None
        p_idx, r, outs = rows
        flat = row_base[p_idx] + r[:, None]
        if seen[flat].any() or len(np.unique(flat)) != flat.size:
            return None
        seen[flat] = True
        keys, inverse = np.unique(np.sort(p_idx, axis=1), axis=0, return_inverse=True)
        f_of_key = np.array([f_key.setdefault(tuple(int(p) for p in key), len(f_key)) for key in keys])
        found.append(np.stack([f_of_key[inverse.reshape(-1)], r, outs], 1))
    if not seen.all():
        return None
    f_of_p = np.full(p_start.size, -1, np.int64)
    for key, f in f_key.items():
        if (f_of_p[list(key)] != -1).any():
            return None  # a partial block in two final blocks
        f_of_p[list(key)] = f
    table = np.concatenate(found)
    table = table[np.lexsort((table[:, 1], table[:, 0]))]
    bounds = np.searchsorted(table[:, 0], np.arange(len(f_key) + 1))
    f_out = []
    for key, f in f_key.items():
        m, n = int(p_m[key[0]]), int(p_n[key[0]])
        rows = table[bounds[f]:bounds[f + 1]]
        if (p_m[list(key)] != m).any() or len(rows) != m or (rows[:, 1] != np.arange(m)).any():
            return None
        stride = int(rows[1, 2] - rows[0, 2]) if m > 1 else n
        if (np.diff(rows[:, 2]) != stride).any() or stride < n:
            return None
        f_out.append((int(rows[0, 2]), stride))
    return f_of_p, f_out


def _reduce_rows(g: VertexGroup, p_start: np.ndarray, p_m: np.ndarray,
                 p_n: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Per reduce vertex of ``g``: the partial block of each partial it reads, the row it reads
    of them (one row of every block), and its output row's start; None if it reads elsewhere."""
    width = g.fields["out"].shape[1]
    outs = _row_starts(g.fields["out"])
    parts = [_row_starts(t) for t in g.tensors("partials")]
    if outs is None or any(x is None for x in parts):
        return None
    starts = np.stack(parts, 1)
    p_idx = np.searchsorted(p_start, starts, side="right") - 1
    if (p_idx < 0).any():
        return None
    rows, rem = np.divmod(starts - p_start[p_idx], p_n[p_idx])
    if (rem != 0).any() or (rows >= p_m[p_idx]).any() or (p_n[p_idx] != width).any() \
            or (rows != rows[:, :1]).any() or (np.diff(np.sort(p_idx, axis=1), axis=1) == 0).any():
        return None
    return p_idx, rows[:, 0], outs


def _bands(terms: dict[int, list[tuple[_BLOCK, _BLOCK]]], f_out: list[tuple[int, int]]) -> list[_Band] | None:
    """Final blocks grouped into rows (same left blocks) and bands (same right-hand columns)."""
    rows: dict[tuple[_BLOCK, ...], list[tuple[tuple[_BLOCK, ...], int]]] = {}
    for f, ts in terms.items():
        ts = sorted(ts)
        a_seq = tuple(t[0] for t in ts)
        b_seq = tuple(t[1] for t in ts)
        if len({blk[2] for blk in a_seq}) != 1 or len({blk[3] for blk in b_seq}) != 1:
            return None  # one output block has one m and one n
        rows.setdefault(a_seq, []).append((b_seq, f))
    bands: dict[tuple, list[tuple[tuple[_BLOCK, ...], list[tuple[tuple[_BLOCK, ...], int]]]]] = {}
    for a_seq, cols in sorted(rows.items()):
        cols.sort()
        k_shape = tuple(blk[3] for blk in a_seq)
        key = (k_shape, tuple(c[0] for c in cols))
        bands.setdefault(key, []).append((a_seq, cols))
    out = []
    for (k_shape, b_cols), members in bands.items():
        num_l = len(k_shape)
        out.append(_Band(
            a=tuple(a_seq for a_seq, _ in members),
            b=tuple(tuple(col[slot] for col in b_cols) for slot in range(num_l)),
            out=tuple(tuple(f_out[f] for _, f in cols) for _, cols in members),
            m=tuple(a_seq[0][2] for a_seq, _ in members),
            k=k_shape,
            n=tuple(b_seq[0][3] for b_seq in b_cols)))
    return out


# -- who else reads the partials ------------------------------------------------------------------
def _without_read_partials(executable: Executable, chains: list[_Chain],
                           roots: list[P.Program]) -> list[_Chain]:
    """The chains whose partials nothing outside them reads (module doc)."""
    need = [c for c in chains if c.partials]
    if not need:
        return chains
    reads = list(_reads(executable, roots))  # (compute set id or -1, dtype, lo, hi)
    keep = []
    for ch in chains:
        if ch.partials:
            starts = np.array([p[0] for p in ch.partials], np.int64)
            ends = np.array([p[1] for p in ch.partials], np.int64)
            order = np.argsort(starts)
            starts, ends = starts[order], ends[order]
            own = set(ch.cs_ids)
            spans = np.array([(lo, hi) for cs, d, lo, hi in reads if d == float32 and cs not in own],
                             np.int64).reshape(-1, 2)
            if _overlaps(spans, starts, ends):
                continue
        keep.append(ch)
    return keep


def _extent(t: Tensor) -> tuple[int, int] | None:
    if t.numel == 0:
        return None
    if t.is_strided:
        lo = hi = t.offset
        for size, stride in zip(t.shape, t.strides, strict=True):
            reach = (size - 1) * stride
            lo, hi = lo + min(reach, 0), hi + max(reach, 0)
        return lo, hi + 1
    addr = t.addresses()
    return int(addr.min()), int(addr.max()) + 1


def _reads(executable: Executable, roots: list[P.Program]) -> Iterable[tuple[int, Any, int, int]]:
    """(compute set id or -1 for a program node, dtype, lo, hi) of everything the executable
    touches outside vertex params (writes too: conservative)."""
    for cs_id, compiled in executable.compute_sets.items():
        for g in compiled.groups:
            for name, f in g.codelet.fields.items():
                if f.direction is not Direction.PARAM:
                    yield from _spans(cs_id, g.tensors(name))
    for root in roots:
        for node in P.walk(root):
            if node.kind is not P.ProgramKind.EXECUTE:
                tensors = [getattr(node, slot, None) for slot in _slots(node)]
                yield from _spans(-1, [t for t in tensors if isinstance(t, Tensor)])


def _spans(owner: int, tensors: Iterable[Tensor]) -> Iterable[tuple[int, Any, int, int]]:
    for t in tensors:
        span = _extent(t)
        if span is not None:
            yield owner, t.dtype, span[0], span[1]


def _slots(node: P.Program) -> Iterable[str]:
    for cls in type(node).__mro__:
        yield from getattr(cls, "__slots__", ())
        yield from getattr(cls, "__dataclass_fields__", {})
