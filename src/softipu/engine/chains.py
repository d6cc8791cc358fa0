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
* one GEMM per band, cut into row or column pieces by its shape alone (:func:`_gemm_pieces`,
  never by the host's cores), the pieces side by side on idle cores (``engine/chain_run.py``);
* a *scatter* of the product into the output blocks (the reduce's rows, or the AMP's own blocks
  where nothing reduces them) — or none, where the output blocks tile one row-major matrix and
  the GEMM writes straight into it (likewise an operand read in place where its blocks tile one).

Inputs float32 or float16, partials float32; the result float32, or float16 where a reduction
writes it: the fused product is rounded to it once, from fp32, as the reduction rounds its sum
(the written bound has the output's rounding: ``contraction_bound(..., out=float16)``). Not under
stochastic rounding, which rounds from the partials this does not write.

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

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from softipu.codelets.matmul import A_TRANSPOSED, B_TRANSPOSED, amp_codelet, reduce_codelet
from softipu.compiler.executable import Executable, VertexGroup
from softipu.dtypes import float16, float32
from softipu.engine.chain_keys import ChainPlans
from softipu.engine.chain_run import Band, ChainRunner, Scratch
from softipu.engine.constants import WrittenSpans
from softipu.engine.epilogues import BiasAdd, bias_add, bound_add
from softipu.graph import program as P
from softipu.graph.tensor import Tensor
from softipu.graph.vertex import Direction

__all__ = ["Chains", "FUSE_MATMULS"]

# Off: every compute set runs group by group (tests of the per-group runners switch it off).
FUSE_MATMULS = True
# Every chain is fused whatever its size. (A size band once ran per vertex group: BERT-base's
# products, 256 x 768 x 288 pieces among them, ran at a third of OpenBLAS's speed fused. The cause
# was OpenBLAS's untouched work buffer, not the fusion: engine/blas_warmup.py. Fused, BERT-base
# 4 layers takes 0.62 s of CPU a later call against 0.81 per group, same load.) fp16 operands are
# converted to fp32 once, into the GEMM's scratch; per group they would be converted block by
# block on every call (the small fp16 training step spent 14.4 s of 32.6 profiled in its matmuls
# per group against 8.9 of 20.0 fused, same load).

# -- finding chains -------------------------------------------------------------------------------
@dataclass(slots=True)
class _Chain:
    cs_ids: list[int]
    bands: list[Band]
    in_dtype: Any
    out_dtype: Any
    partials: list[tuple[int, int]]  # [start, end) of every partial block the chain leaves unwritten
    group: VertexGroup
    name: str


@dataclass(slots=True)
class _Candidate:
    """Consecutive Execute nodes that look like a matmul chain; built (checked and planned) on
    its first run, so chains a program never runs cost nothing. Every run of a built chain is
    fused, the first included: the same executable gives the same bits on every run."""

    nodes: list[P.Program]
    steps: list[int]
    in_dtype: Any
    runner: ChainRunner | None = None
    failed: bool = False
    active: bool = False  # the runner did this pass's work at the first step
    bias: BiasAdd | None = None  # the bias add right after it, maybe run by it (engine/epilogues.py)


class Chains:
    """The fast engine's matmul chains: ``handle(step)`` says whether a step's work is done here
    (the chain's GEMMs at its first step, nothing at its later ones) or runs as usual."""

    def __init__(self, executable: Executable, storage: Any) -> None:
        self.executable, self.storage = executable, storage
        self.first: dict[int, _Candidate] = {}
        self.later: dict[int, _Candidate] = {}
        self.biases: dict[int, _Candidate] = {}  # a chain's bias add step -> the chain
        self.scratch = Scratch(WrittenSpans(executable), storage)  # weights kept gathered (constants.py)
        self.plans = ChainPlans(executable)
        self._reads: np.ndarray | None = None
        if executable.replication_factor != 1 or not FUSE_MATMULS:
            return
        sequences, executions = sequences_and_executions(executable)
        for children in sequences:
            for cand, after in _candidates(executable, children, executions):
                self.first[cand.steps[0]] = cand
                self.later.update(dict.fromkeys(cand.steps[1:], cand))
                cand.bias = bias_add(executable, after, executions)
                if cand.bias is not None:
                    self.biases[cand.bias.step] = cand

    def __bool__(self) -> bool:
        return bool(self.first)

    def _chain(self, cand: _Candidate) -> _Chain | None:
        """:func:`_build`, or an earlier chain's plan where the structure is the same (a repeated
        layer's matmul: engine/chain_keys.py)."""
        cs_ids = [n.compute_set.id for n in cand.nodes]
        keyed = self.plans.key(cs_ids)
        found = self.plans.get(*keyed) if keyed is not None else None
        if found is None:
            ch = _build(self.executable, cand.nodes, cand.in_dtype)
            if keyed is not None:
                self.plans.put(*keyed, *((ch.bands, ch.in_dtype, ch.out_dtype, ch.partials) if ch is not None
                                         else (None, None, None, [])))
            return ch
        bands, in_dtype, out_dtype, partials = found
        if bands is None:
            return None
        first_group = self.executable.compute_sets[cs_ids[0]].groups[0]
        name = "', '".join(self.executable.compute_sets[i].compute_set.name for i in cs_ids)
        return _Chain(cs_ids, bands, in_dtype, out_dtype, partials, first_group, name)

    def steps(self) -> list[int]:
        """The steps ``handle`` may take over."""
        return list(self.first) + list(self.later) + list(self.biases)

    def compute_sets(self) -> set[int]:
        """The compute sets of every chain found: run as usual only where a chain is not taken."""
        return {node.compute_set.id for c in self.first.values() for node in c.nodes}

    def fused(self) -> list[ChainRunner]:
        return [c.runner for c in self.first.values() if c.runner is not None]

    def handle(self, step: int) -> bool:
        cand = self.first.get(step)
        if cand is not None:
            if cand.runner is None and not cand.failed:
                cand.runner = self._build(cand)
                cand.failed = cand.runner is None
            cand.active = cand.runner is not None
            if cand.active:
                cand.runner()
            return cand.active
        cand = self.later.get(step)
        if cand is not None:
            return cand.active
        cand = self.biases.get(step)  # done by the chain where it took the add (epilogues.py)
        return cand is not None and cand.active and cand.runner.bias is not None

    def _build(self, cand: _Candidate) -> ChainRunner | None:
        ch = self._chain(cand)
        if ch is None:
            return None
        if ch.partials:
            if self._reads is None:
                self._reads = _read_table(self.executable, float32)
            table = self._reads
            blocks = np.array(sorted(ch.partials), np.int64)
            if _overlaps(table[~np.isin(table[:, 0], ch.cs_ids), 1:], blocks[:, 0], blocks[:, 1]):
                return None
        buffers = self.storage.buffers
        runner = ChainRunner(ch.bands, buffers[ch.in_dtype][0], buffers[ch.out_dtype][0], ch.group,
                             f"compute sets {ch.name!r}", self.scratch)
        runner.bias = bound_add(cand.bias, self.storage) if cand.bias is not None else None
        return runner


def _kind(executable: Executable, cs_id: int) -> tuple[str, Any] | None:
    """('amp' | 'acc' | 'reduce', dtypes) when every group of the compute set is of one such codelet."""
    groups = executable.compute_sets[cs_id].groups
    if not groups:
        return None
    kinds = {_codelet_kind(c) for c in {g.codelet for g in groups}}
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
        if part == float32 and out in (float16, float32) and codelet is reduce_codelet(part, out):
            return "reduce", out
    return None


def sequences_and_executions(executable: Executable) -> tuple[list[list[P.Program]], dict[int, int]]:
    """What a fusion pass scans: the children of every Sequence in the executable's programs and
    functions (in walk order), and how many Execute nodes run each compute set."""
    sequences: list[list[P.Program]] = []
    executions: dict[int, int] = {}
    for root in list(executable.programs) + list(executable.functions.values()):
        for node in P.walk(root):
            if node.kind is P.ProgramKind.EXECUTE:
                executions[node.compute_set.id] = executions.get(node.compute_set.id, 0) + 1
            elif node.kind is P.ProgramKind.SEQUENCE:
                sequences.append(node.programs)
    return sequences, executions


def _candidates(executable: Executable, children: list[P.Program],
                executions: dict[int, int]) -> list[tuple[_Candidate, P.Program | None]]:
    """Runs of children that look like a matmul chain: an AMP step, accumulating steps, and
    optionally a partials reduction, each compute set run nowhere else; each with the child
    after it (None at the end)."""
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
        found.append((_Candidate(nodes, [step_of[id(n)] for n in nodes], in_dtype),
                      children[j] if j < len(children) else None))
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


def _rows_of(tensors: list[Tensor], sizes: np.ndarray) -> np.ndarray | None:
    """:func:`_row_starts` of many ``(V, L)`` tensors, concatenated (``sizes``: each one's V): for
    strided tensors (the usual bulk fields) from their offsets and row strides in a few array
    operations, not a few per tensor (a first run builds thousands of groups' tables)."""
    if all(t.is_strided and (t.shape[1] <= 1 or t.strides[1] == 1) for t in tensors):
        offsets = np.array([t.offset for t in tensors], np.int64)
        strides = np.array([t.strides[0] for t in tensors], np.int64)
        local = np.arange(int(sizes.sum()), dtype=np.int64) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        return np.repeat(offsets, sizes) + local * np.repeat(strides, sizes)
    starts = [_row_starts(t) for t in tensors]
    return None if any(s is None for s in starts) else np.concatenate(starts).astype(np.int64, copy=False)


def _widths(tensors: list[Tensor], sizes: np.ndarray) -> np.ndarray:
    """Each vertex's field length (the tensors' second axis), per vertex."""
    return np.repeat(np.array([t.shape[1] for t in tensors], np.int64), sizes)


def _params(groups: list[VertexGroup], name: str, sizes: np.ndarray) -> np.ndarray:
    """A param's values of every vertex of ``groups``, concatenated."""
    values = [np.asarray(g.fields[name], np.int64).reshape(-1) for g in groups]
    if all(v.size == n for v, n in zip(values, sizes.tolist(), strict=True)):
        return np.concatenate(values)
    return np.concatenate([np.broadcast_to(v, (n,)) for v, n in zip(values, sizes.tolist(), strict=True)])


def _amp_table(executable: Executable, cs_ids: list[int]) -> np.ndarray | None:
    """One row per AMP vertex of the chain: step, a start, a bits, b start, b bits, out start, m, k, n."""
    groups = [g for cs_id in cs_ids for g in executable.compute_sets[cs_id].groups]
    if not groups:
        return None
    sizes = np.array([g.num_vertices for g in groups], np.int64)
    steps = [step for step, cs_id in enumerate(cs_ids) for _ in executable.compute_sets[cs_id].groups]
    fields = {f: [g.fields[f] for g in groups] for f in ("a", "b", "out")}
    starts = [_rows_of(fields[f], sizes) for f in ("a", "b", "out")]
    if any(s is None for s in starts):
        return None
    m, k, n, bits = (_params(groups, f, sizes) for f in ("m", "k", "n", "layout"))
    if (_widths(fields["a"], sizes) != m * k).any() or (_widths(fields["b"], sizes) != k * n).any() \
            or (_widths(fields["out"], sizes) != m * n).any():
        return None
    return np.stack([np.repeat(np.array(steps, np.int64), sizes), starts[0], bits & A_TRANSPOSED, starts[1],
                     bits & B_TRANSPOSED, starts[2], m, k, n], axis=1)


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
    f_out = np.array(f_out, np.int64).reshape(-1, 2)
    m_f = np.zeros(len(f_out), np.int64)
    m_f[f_of_p] = p_m
    bands = _bands(table, f_of_p[p_of], f_out, m_f)
    if bands is None:
        return None
    first_group = executable.compute_sets[amp_ids[0]].groups[0]
    name = "', '".join(executable.compute_sets[n.compute_set.id].compute_set.name for n in nodes)
    out_dtype = _kind(executable, nodes[-1].compute_set.id)[1] if has_reduce else float32
    if _writes_operands(bands, in_dtype, out_dtype):
        return None
    partials = [(int(s), int(s + mm * nn)) for s, mm, nn in zip(p_start, p_m, p_n, strict=True)] \
        if has_reduce else []
    return _Chain([nd.compute_set.id for nd in nodes], bands, in_dtype, out_dtype, partials, first_group,
                  name)


def _writes_operands(bands: list[Band], in_dtype: Any, out_dtype: Any) -> bool:
    """Whether an output block meets an operand block (the fused chain reads every operand of a
    band before it writes, but writes one band before the next reads)."""
    if in_dtype != out_dtype:
        return False
    spans, blocks = [], []
    for band in bands:
        start, stride = band.out[..., 0], band.out[..., 1]
        end = start + (band.m[:, None] - 1) * stride + band.n[None, :]
        spans.append(np.stack([start, end], -1).reshape(-1, 2))
        m, k, n = band.m, band.k, band.n
        for grid, rows, cols in ((band.a, m[:, None], k[None, :]), (band.b, k[:, None], n[None, :])):
            blocks.append(np.stack([grid[..., 0], grid[..., 0] + rows * cols], -1).reshape(-1, 2))
    starts, ends = _union(np.concatenate(spans))
    return _overlaps(np.concatenate(blocks), starts, ends)


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
    that reads the same row of every partial block of its final block.

    Final blocks are numbered in order of their first reduce vertex; the vertices are taken all
    at once per number of partials they add (one set of array operations, not one per group)."""
    row_base = np.concatenate(([0], np.cumsum(p_m)[:-1]))
    groups = executable.compute_sets[cs_id].groups
    sizes = np.array([g.num_vertices for g in groups], np.int64)
    seq_start = np.cumsum(sizes) - sizes
    by_width: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        by_width.setdefault(len(g.tensors("partials")), []).append(i)
    flats, keys, key_seq, parts = [], [], [], []  # partial rows read; distinct final blocks; vertices
    for members in by_width.values():
        rows = _reduce_rows([groups[i] for i in members], sizes[members], p_start, p_m, p_n)
        if rows is None:
            return None
        p_idx, r, outs, count = rows
        n = sizes[members]
        seq = np.repeat(seq_start[members] - (np.cumsum(n) - n), n) + np.arange(int(n.sum()), dtype=np.int64)
        seq = np.repeat(seq, count)  # a vertex of several rows: each row in its place
        flats.append((row_base[p_idx] + r[:, None]).reshape(-1))
        sorted_idx = np.sort(p_idx, axis=1)
        distinct, first, inverse = _unique_rows(sorted_idx)
        if distinct is None:
            return None
        keys.append(sorted_idx[first])
        key_seq.append(seq[first])
        parts.append((inverse, r, outs, seq))
    if (np.bincount(np.concatenate(flats), minlength=int(p_m.sum())) != 1).any():
        return None  # a partial row read twice, or never
    num_f = sum(len(k) for k in keys)
    number = np.empty(num_f, np.int64)
    number[np.argsort(np.concatenate(key_seq), kind="stable")] = np.arange(num_f)
    found, key_f, key_p, base = [], [], [], 0
    first_p = np.empty(num_f, np.int64)
    for mine, (inverse, r, outs, seq) in zip(keys, parts, strict=True):
        numbers = number[base:base + len(mine)]
        found.append(np.stack([numbers[inverse], r, outs, seq], 1))
        key_f.append(np.repeat(numbers, mine.shape[1]))
        key_p.append(mine.reshape(-1))
        first_p[numbers] = mine[:, 0]
        base += len(mine)
    key_f, key_p = np.concatenate(key_f), np.concatenate(key_p)
    if (np.bincount(key_p, minlength=p_start.size) > 1).any():
        return None  # a partial block in two final blocks
    f_of_p = np.full(p_start.size, -1, np.int64)
    f_of_p[key_p] = key_f
    m_f, n_f = p_m[first_p], p_n[first_p]
    table = np.concatenate(found)
    table = table[np.lexsort((table[:, 3], table[:, 1], table[:, 0]))]
    bounds = np.searchsorted(table[:, 0], np.arange(num_f + 1))
    f, pos = table[:, 0], np.arange(len(table)) - bounds[table[:, 0]]
    if (p_m[key_p] != m_f[key_f]).any() or (np.diff(bounds) != m_f).any() or (table[:, 1] != pos).any():
        return None  # one final block's partial blocks differ in rows, or it misses a row
    start = table[bounds[:-1], 2]
    second = table[np.minimum(bounds[:-1] + 1, len(table) - 1), 2]
    stride = np.where(m_f > 1, second - start, n_f)
    if (table[:, 2] != start[f] + pos * stride[f]).any() or (stride < n_f).any():
        return None  # output rows not evenly spaced
    return f_of_p, [(int(a), int(b)) for a, b in zip(start, stride, strict=True)]


_HASH = np.random.default_rng(0x5EED).integers(1, 2**62, size=64, dtype=np.int64) | 1


def _unique_rows(keys: np.ndarray) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """(keys, index of each distinct row's first occurrence, each row's distinct index) of an
    int matrix, by a hash of each row checked exactly; None if it has more than 64 columns."""
    if keys.shape[1] > _HASH.size:
        return None, keys, keys
    with np.errstate(over="ignore"):
        h = (keys * _HASH[:keys.shape[1]]).sum(axis=1)
    _, first, inverse = np.unique(h, return_index=True, return_inverse=True)
    if (keys != keys[first[inverse]]).any():
        return None, first, inverse  # two rows of one hash differ (never seen; fall back)
    return keys, first, inverse.reshape(-1)


def _reduce_rows(groups: list[VertexGroup], sizes: np.ndarray, p_start: np.ndarray, p_m: np.ndarray,
                 p_n: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Per row reduced by ``groups``' vertices (each adding as many partials): the partial block of
    each partial it reads, the row it reads of them (one row of every block), its output row's
    start, and how many rows each vertex reduces (a vertex of whole consecutive rows counts as its
    rows: ops.matmul's worker shares, whose partials are contiguous and whose output rows are
    contiguous or, with several N blocks, runs of the block's width N apart); None if one reads
    elsewhere."""
    outs_t = [g.fields["out"] for g in groups]
    width = _widths(outs_t, sizes)
    found = _fields_runs(outs_t, sizes)
    parts = [_fields_runs([g.tensors("partials")[c] for g in groups], sizes)
             for c in range(len(groups[0].tensors("partials")))]
    if found is None or any(x is None or (x[1] != width).any() for x in parts):
        return None
    outs, o_run, o_stride = found
    starts = np.stack([x[0] for x in parts], 1)
    p_idx = np.searchsorted(p_start, starts, side="right") - 1
    if (p_idx < 0).any():
        return None
    p_w = p_n[p_idx[:, 0]]
    count, rem = np.divmod(width, np.maximum(p_w, 1))
    if (rem != 0).any() or (count < 1).any() or ((o_run != width) & (o_run != p_w)).any():
        return None
    if (count > 1).any():  # one row per entry: partial rows follow each other, output rows step
        v = np.repeat(np.arange(count.size), count)
        r = np.arange(v.size) - np.repeat(np.cumsum(count) - count, count)
        o_step = np.where(o_run == width, p_w, o_stride)
        starts, outs, width = starts[v] + (r * p_w[v])[:, None], outs[v] + r * o_step[v], p_w[v]
        p_idx = np.searchsorted(p_start, starts, side="right") - 1
        if (p_idx < 0).any():
            return None
    rows, rem = np.divmod(starts - p_start[p_idx], p_n[p_idx])
    if (rem != 0).any() or (rows >= p_m[p_idx]).any() or (p_n[p_idx] != width[:, None]).any() \
            or (rows != rows[:, :1]).any() or (np.diff(np.sort(p_idx, axis=1), axis=1) == 0).any():
        return None
    return p_idx, rows[:, 0], outs, count


def _fields_runs(tensors: list[Tensor],
                 sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """:func:`_field_runs` of many ``(V, L)`` tensors, per vertex, concatenated (``sizes``: each
    one's V); strided tensors (the usual bulk fields) in a few array operations for them all."""
    if all(t.is_strided and (t.shape[1] <= 1 or t.strides[1] == 1) for t in tensors):
        starts = _rows_of(tensors, sizes)
        width = _widths(tensors, sizes)
        return starts, width, width
    found = [_field_runs(t) for t in tensors]
    if any(f is None for f in found):
        return None
    starts = np.concatenate([f[0] for f in found]).astype(np.int64, copy=False)
    run = np.repeat(np.array([f[1] for f in found], np.int64), sizes)
    stride = np.repeat(np.array([f[2] for f in found], np.int64), sizes)
    return starts, run, stride


def _field_runs(t: Tensor) -> tuple[np.ndarray, int, int] | None:
    """(each row's first address, run, stride) of a ``(V, L)`` tensor whose every row is runs of
    ``run`` consecutive elements, ``stride`` apart (a contiguous row: one run, ``run = stride =
    L``); read from a strided view's or a one-piece grid layout's structure (ops.matmul's reduce
    shares: ``rows x width`` of the output at a row stride of N, on a grid of vertices), not its
    addresses; any other layout from its addresses, contiguous rows only. None where not such."""
    v, length = t.shape
    grouped = t._grouped() if t.slabs is not None else None
    if grouped is not None and len(grouped.counts) == 2:
        (outer, o_st), (inner, i_st) = grouped.compact().groups()
        if inner == (length,) and i_st == (1,):
            run, stride = length, length
        elif len(inner) == 2 and i_st[1] == 1:
            run, stride = inner[1], i_st[0]
        else:
            return None
        first = np.array([grouped.offset], np.int64)
        for d, st in zip(outer, o_st, strict=True):
            first = (first[:, None] + np.arange(d, dtype=np.int64) * st).reshape(-1)
        return first, run, stride
    starts = _row_starts(t)
    return None if starts is None else (starts, length, length)


def _grid_of(start: np.ndarray, transposed: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(start, row stride, column stride) of blocks stored row-major, or as their transpose."""
    start, transposed, rows, cols = np.broadcast_arrays(start, transposed, rows, cols)
    return np.stack([start, np.where(transposed, 1, cols), np.where(transposed, rows, 1)], -1)


def _mix(*columns: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each row of int columns (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        h = np.zeros(len(columns[0]), np.int64)
        for c, x in zip(_HASH, columns, strict=False):
            h = h * np.int64(31) + x.astype(np.int64) * c
        return h ^ (h >> np.int64(29))


def _bands(table: np.ndarray, f_v: np.ndarray, f_out: np.ndarray, m_f: np.ndarray) -> list[Band] | None:
    """Final blocks grouped into rows (the same left blocks) and bands (rows with the same
    right-hand columns), by hashes of their term sequences, every grouping then checked exactly.

    ``table``: the AMP vertices (see :func:`_amp_table`); ``f_v``: each one's final block;
    ``f_out``: each final block's (start, row stride); ``m_f``: its rows."""
    _, a0, abit, b0, bbit, _, _, k, n = table.T
    order = np.lexsort((bbit, b0, k, abit, a0, f_v))
    a0, abit, b0, bbit, k, n, fs = (x[order] for x in (a0, abit, b0, bbit, k, n, f_v))
    num_f = len(f_out)
    seg = np.searchsorted(fs, np.arange(num_f + 1))
    terms = np.diff(seg)
    if (terms == 0).any():
        return None
    pos = np.arange(len(fs)) - seg[fs]
    h_a = np.add.reduceat(_mix(a0, abit, k, pos), seg[:-1]) + _mix(terms, m_f)
    h_b = np.add.reduceat(_mix(b0, bbit, n, pos), seg[:-1])
    _, row_rep, row_of = np.unique(h_a, return_index=True, return_inverse=True)
    members: list[list[int]] = [[] for _ in row_rep]
    for f in np.lexsort((h_b, b0[seg[:-1]], row_of)):  # each row's blocks by their first b block
        members[row_of[f]].append(int(f))
    bands: dict[tuple, list[int]] = {}
    for r, rep in enumerate(row_rep):
        key = (tuple(k[seg[rep]:seg[rep + 1]].tolist()), tuple(h_b[members[r]].tolist()))
        bands.setdefault(key, []).append(r)
    cols = dict(a=np.stack([a0, abit, k], 1), b=np.stack([b0, bbit, n], 1))
    out = []
    for rows in sorted(bands.values(), key=lambda rs: a0[seg[row_rep[rs[0]]]]):
        rows.sort(key=lambda r: a0[seg[row_rep[r]]])
        grid = np.array([members[r] for r in rows], np.int64)  # (R, J) final blocks
        band = _band(grid, seg, cols, m_f, f_out, int(terms[grid[0, 0]]))
        if band is None:
            return None
        out.append(band)
    return out


def _band(grid: np.ndarray, seg: np.ndarray, cols: dict[str, np.ndarray], m_f: np.ndarray,
          f_out: np.ndarray, num_terms: int) -> Band | None:
    """One band from its (R, J) grid of final blocks, after checking that every block of a row
    has the row's left blocks and every block of a column the column's right blocks."""
    slots = np.arange(num_terms)
    if (np.diff(seg)[grid] != num_terms).any():
        return None
    at = seg[grid][..., None] + slots  # (R, J, T) term index
    a, b = cols["a"], cols["b"]
    if (a[at] != a[at[:, :1]]).any() or (b[at] != b[at[:1]]).any() or (m_f[grid] != m_f[grid[:, :1]]).any():
        return None
    a_terms, b_terms = a[at[:, 0]], b[at[0]]  # (R, T, 3) and (J, T, 3): start, transposed, size
    m, k, n = m_f[grid[:, 0]], a_terms[0, :, 2], b_terms[:, 0, 2]
    if (b_terms[..., 2] != n[:, None]).any():
        return None
    a_grid = _grid_of(a_terms[..., 0], a_terms[..., 1] != 0, m[:, None], k[None, :])
    b_t = b_terms.transpose(1, 0, 2)  # (T, J, 3)
    b_grid = _grid_of(b_t[..., 0], b_t[..., 1] != 0, k[:, None], n[None, :])
    out_grid = np.stack([f_out[grid, 0], f_out[grid, 1], np.ones_like(grid)], -1)
    return Band(a_grid, b_grid, out_grid, m, k, n)


# -- who else reads the partials ------------------------------------------------------------------
def _extent(t: Tensor) -> tuple[int, int] | None:
    """[lo, hi) of the addresses a tensor touches (a strided or slab tensor without its index)."""
    if t.numel == 0:
        return None
    if t.slabs is not None:
        spans = [_strided_extent(offset, shape, strides) for offset, shape, strides, _ in t.slabs.pieces
                 if math.prod(shape)]
        return min(lo for lo, _ in spans), max(hi for _, hi in spans)
    if t.is_strided:
        return _strided_extent(t.offset, t.shape, t.strides)
    addr = t.addresses()
    return int(addr.min()), int(addr.max()) + 1


def _strided_extent(offset: int, shape: tuple[int, ...], strides: tuple[int, ...]) -> tuple[int, int]:
    lo = hi = offset
    for size, stride in zip(shape, strides, strict=True):
        reach = (size - 1) * stride
        lo, hi = lo + min(reach, 0), hi + max(reach, 0)
    return lo, hi + 1


def _reads(executable: Executable, roots: list[P.Program], skip: set[int],
           dtype: Any = None) -> Iterable[tuple[int, Any, int, int]]:
    """(compute set id or -1 for a program node, dtype, lo, hi) of everything the executable
    touches outside vertex params (writes too: conservative), but the compute sets in ``skip``
    (the chains', whose reads the chains list themselves); only of ``dtype`` where given."""
    for cs_id, compiled in executable.compute_sets.items():
        if cs_id in skip:
            continue
        for g in compiled.groups:
            for name, f in g.codelet.fields.items():
                if f.direction is not Direction.PARAM:
                    yield from _spans(cs_id, g.tensors(name), dtype)
    for root in roots:
        for node in P.walk(root):
            if node.kind is not P.ProgramKind.EXECUTE:
                tensors = [getattr(node, slot, None) for slot in _slots(node)]
                yield from _spans(-1, [t for t in tensors if isinstance(t, Tensor)], dtype)


def _read_table(executable: Executable, dtype: Any) -> np.ndarray:
    """``(compute set id or -1, lo, hi)`` rows of what :func:`_reads` lists of ``dtype``: the
    compute sets' fields (:func:`_field_extents`) and the program nodes' tensors."""
    rows: list[tuple[int, int, int]] = []
    roots = list(executable.programs) + list(executable.functions.values())
    for root in roots:
        for node in P.walk(root):
            if node.kind is not P.ProgramKind.EXECUTE:
                tensors = [getattr(node, slot, None) for slot in _slots(node)]
                tensors = [t for t in tensors if isinstance(t, Tensor)]
                rows += [(o, lo, hi) for o, _, lo, hi in _spans(-1, tensors, dtype)]
    return np.concatenate([_field_extents(executable, dtype), np.array(rows, np.int64).reshape(-1, 3)])


def _field_extents(executable: Executable, dtype: Any, writes_only: bool = False) -> np.ndarray:
    """``(compute set id, lo, hi)`` of every non-param field tensor of ``dtype`` in the
    executable's compute sets (only the fields that write, if ``writes_only``), ``[lo, hi)`` the
    addresses it touches: strided tensors (nearly all) from arrays of their offsets, shapes and
    strides at once, grouped by rank; the rest (slabs, indexed) one by one (:func:`_extent`).
    One pass over the groups, a few list appends per field (BERT-base: ~16 k tensors)."""
    rows: list[tuple[int, int, int]] = []
    strided: dict[int, list[tuple]] = {}  # ndim -> (compute set, offset, *shape, *strides)
    names: dict[type, list[str]] = {}  # codelet -> its fields of ``dtype`` (a field's tensors have its dtype)
    for cs_id, compiled in executable.compute_sets.items():
        for g in compiled.groups:
            mine = names.get(g.codelet)
            if mine is None:
                mine = names[g.codelet] = [
                    n for n, f in g.codelet.fields.items() if f.direction is not Direction.PARAM
                    and f.dtype == dtype and (f.direction.writes or not writes_only)]
            for name in mine:
                value = g.fields[name]
                for t in value if isinstance(value, tuple) else (value,):
                    if t.is_strided:
                        strided.setdefault(len(t.shape), []).append((cs_id, t.offset, *t.shape, *t.strides))
                    else:
                        span = _extent(t)
                        if span is not None:
                            rows.append((cs_id, *span))
    tables = [np.array(rows, np.int64).reshape(-1, 3)]
    for ndim, entries in strided.items():
        a = np.array(entries, np.int64).reshape(-1, 2 + 2 * ndim)
        shape, strides = a[:, 2:2 + ndim], a[:, 2 + ndim:]
        reach = (shape - 1) * strides
        keep = (shape > 0).all(axis=1)
        lo = a[:, 1] + np.minimum(reach, 0).sum(axis=1)
        hi = a[:, 1] + np.maximum(reach, 0).sum(axis=1) + 1
        tables.append(np.stack([a[:, 0], lo, hi], 1)[keep])
    return np.concatenate(tables)


def _spans(owner: int, tensors: Iterable[Tensor], dtype: Any = None) -> Iterable[tuple[int, Any, int, int]]:
    for t in tensors:
        if dtype is not None and t.dtype != dtype:
            continue
        span = _extent(t)
        if span is not None:
            yield owner, t.dtype, span[0], span[1]


def _slots(node: P.Program) -> Iterable[str]:
    for cls in type(node).__mro__:
        yield from getattr(cls, "__slots__", ())
        yield from getattr(cls, "__dataclass_fields__", {})
