"""Outer reductions as one numpy reduction: a library reduce's two stages, run by the fast engine
as ``ufunc.reduce`` over a view of the input, where the operator is exact.

``ops.reduce`` runs an outer reduction (kept dims after the reduced ones, the input viewed as
``(A, R, B)``) as ``Execute(partials)``, ``Execute(reduce)``: stage 1's ``ReduceRows`` vertices
fold each tile's piece of the input into a row of partials, stage 2's ``ReduceColumns`` vertices
combine, for each run of outputs, the rows of partials that cover it. On a GC200 a (4096, 4096)
input gives 1,472 rows of partials (37% of the input) that stage 1 writes and stage 2 reads back.

For max, min, logical and, logical or the result does not depend on how the elements are
grouped (each is exact, and every order keeps the first of equal values, e.g. of ``-0.0`` and
``0.0``, as the stages do), so the fast engine evaluates both stages as one
``ufunc.reduce(x.reshape(A, R, B), axis=1)`` into the output, bitwise equal to the reference
(design.md principle 6), reading the input once and not writing the partials. It does so only
when the vertices prove that this is what the two stages compute:

* stage 1's pieces are contiguous runs that tile one contiguous range ``X`` of the input dtype,
  each within one ``a`` block; a full piece (its partials row ``B`` wide) has the phase of its
  start column; a short one (narrower) starts its row of partials at its own column, phase 0;
* stage 2's output runs tile one contiguous range ``O`` (``A * B`` elements, ``B`` the widest
  partials row), each within one ``a`` block, with scale 1; each row of partials it reads lies
  inside one piece's row, at the columns of its outputs, in the same ``a`` block;
* every column of every piece's row of partials is read by stage 2 (every input element reaches
  its output); the partials overlap neither ``X`` nor ``O``, and nothing else in the executable
  reads or writes them (they are the op's own temporaries: ``Engine.read_tensor`` of such a
  partials variable shows older values).

Sums and products stay two stages: their float results depend on the order. Not under
stochastic rounding (as matmul chains, :mod:`softipu.engine.chains`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from softipu.codelets.reduce import ReduceOp, columns_codelet, partials_dtype, rows_codelet
from softipu.compiler.executable import Executable, VertexGroup
from softipu.engine.chains import _overlaps, _param, _reads, _row_starts, sequences_and_executions
from softipu.graph import program as P

__all__ = ["Reductions", "FUSE_REDUCTIONS", "EXACT_OPS"]

# Off: reductions run stage by stage (tests of the stages themselves switch it off).
FUSE_REDUCTIONS = True
EXACT_OPS = (ReduceOp.MAX, ReduceOp.MIN, ReduceOp.LOGICAL_AND, ReduceOp.LOGICAL_OR)


@dataclass(slots=True, eq=False)
class _Candidate:
    steps: tuple[int, int]
    cs_ids: tuple[int, int]
    op: ReduceOp
    runner: Any = None
    failed: bool = False


@dataclass(frozen=True, slots=True)
class _Plan:
    """``out[:, O : O + A * B] = ufunc.reduce(x[:, X : X + A * R * B] as (A, R, B), axis=1)``."""

    dtype: Any
    x0: int
    out0: int
    a: int
    r: int
    b: int


class _Runner:
    __slots__ = ("ufunc", "x", "out")

    def __init__(self, ufunc: np.ufunc, x: np.ndarray, out: np.ndarray) -> None:
        self.ufunc, self.x, self.out = ufunc, x, out

    def __call__(self) -> None:
        self.ufunc.reduce(self.x, axis=2, out=self.out)


class Reductions:
    """The fast engine's fused reductions: ``handle(step)`` says whether a step's work is done
    here (the whole reduction at stage 1, nothing at stage 2) or runs as usual."""

    def __init__(self, executable: Executable, storage: Any) -> None:
        self.executable, self.storage = executable, storage
        self.first: dict[int, _Candidate] = {}
        self.second: dict[int, _Candidate] = {}
        self._reads: list[tuple[int, Any, int, int]] | None = None
        if not FUSE_REDUCTIONS:
            return
        sequences, executions = sequences_and_executions(executable)
        for children in sequences:
            for cand in _candidates(executable, children, executions):
                self.first[cand.steps[0]] = cand
                self.second[cand.steps[1]] = cand

    def __bool__(self) -> bool:
        return bool(self.first)

    def steps(self) -> list[int]:
        """The steps ``handle`` may take over."""
        return list(self.first) + list(self.second)

    def handle(self, step: int) -> bool:
        cand = self.first.get(step)
        if cand is not None:
            if cand.runner is None and not cand.failed:
                cand.runner = self._build(cand)
                cand.failed = cand.runner is None
            if cand.runner is not None:
                cand.runner()
                return True
            return False
        cand = self.second.get(step)
        return cand is not None and cand.runner is not None

    def _build(self, cand: _Candidate) -> _Runner | None:
        plan, partials = _plan(self.executable, cand.cs_ids, cand.op)
        if plan is None:
            return None
        if self._reads is None:  # what every compute set and program node touches, found once
            roots = list(self.executable.programs) + list(self.executable.functions.values())
            self._reads = list(_reads(self.executable, roots, set()))
        dtype = partials_dtype(plan.dtype)
        others = np.array([(lo, hi) for cs, d, lo, hi in self._reads if d == dtype and cs not in cand.cs_ids],
                          np.int64).reshape(-1, 2)
        if _overlaps(others, *partials):
            return None
        buf = self.storage.buffers[plan.dtype]
        n_in, n_out = plan.a * plan.r * plan.b, plan.a * plan.b
        x = buf[:, plan.x0 : plan.x0 + n_in].reshape(-1, plan.a, plan.r, plan.b)
        out = buf[:, plan.out0 : plan.out0 + n_out].reshape(-1, plan.a, plan.b)
        x.flags.writeable = False
        return _Runner(cand.op.ufunc, x, out)


def _stage_op(executable: Executable, cs_id: int) -> tuple[str, ReduceOp] | None:
    """('rows' | 'columns', op) when every group of the compute set is one such exact codelet."""
    kinds = set()
    for g in executable.compute_sets[cs_id].groups:
        fields = g.codelet.fields
        kind = None
        for op in EXACT_OPS:
            if set(fields) == {"x", "out", "phase"} and g.codelet is rows_codelet(op, fields["x"].dtype):
                kind = ("rows", op)
            elif set(fields) == {"parts", "out", "scale", "part_step"} and g.codelet is columns_codelet(
                    op, fields["parts"].dtype, fields["out"].dtype):
                kind = ("columns", op)
        if kind is None:
            return None
        kinds.add(kind)
    return kinds.pop() if len(kinds) == 1 else None


def _candidates(executable: Executable, children: list[P.Program],
                executions: dict[int, int]) -> list[_Candidate]:
    """Consecutive ``Execute(rows)``, ``Execute(columns)`` of one exact op, each compute set run
    nowhere else."""
    step_of, found = executable.step_of, []
    kinds = []
    for node in children:
        kind = None
        if node.kind is P.ProgramKind.EXECUTE and executions[node.compute_set.id] == 1 \
                and step_of.get(id(node)) is not None:
            kind = _stage_op(executable, node.compute_set.id)
        kinds.append(kind)
    for i in range(len(children) - 1):
        a, b = kinds[i], kinds[i + 1]
        if a is not None and b is not None and a == ("rows", a[1]) and b == ("columns", a[1]):
            nodes = children[i], children[i + 1]
            found.append(_Candidate((step_of[id(nodes[0])], step_of[id(nodes[1])]),
                                    (nodes[0].compute_set.id, nodes[1].compute_set.id), a[1]))
    return found


def _stage1(groups: tuple[VertexGroup, ...]) -> np.ndarray | None:
    """One row per piece: input start, length, partials start, width, phase."""
    rows = []
    for g in groups:
        x, out = g.fields["x"], g.fields["out"]
        xs, ps = _row_starts(x), _row_starts(out)
        if xs is None or ps is None:
            return None
        v = g.num_vertices
        rows.append(np.stack([xs, np.full(v, x.shape[1]), ps, np.full(v, out.shape[1]),
                              _param(g, "phase")], axis=1))
    return np.concatenate(rows) if rows else None


def _stage2(groups: tuple[VertexGroup, ...]) -> tuple[np.ndarray, np.ndarray] | None:
    """(one row per output run: start, width; one row per partials row read: start, width,
    output start)."""
    outs, refs = [], []
    for g in groups:
        out, parts = g.fields["out"], g.tensors("parts")
        if not parts or not np.all(np.asarray(g.fields["scale"], np.float64) == 1.0):
            return None
        o = _row_starts(out)
        if o is None:
            return None
        n = np.full(g.num_vertices, out.shape[1])
        outs.append(np.stack([o, n], axis=1))
        for t in parts:
            q = _row_starts(t)
            if q is None:
                return None
            refs.append(np.stack([q, n, o], axis=1))
    if not outs:
        return None
    return np.concatenate(outs), np.concatenate(refs)


def _tiles(starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, int, int] | None:
    """The order that sorts runs, and [lo, hi) when they tile one range exactly, else None."""
    order = np.argsort(starts, kind="stable")
    s, n = starts[order], lengths[order]
    if (n <= 0).any() or (s[1:] != s[:-1] + n[:-1]).any():
        return None
    return order, int(s[0]), int(s[-1] + n[-1])


def _plan(executable: Executable, cs_ids: tuple[int, int],
          op: ReduceOp) -> tuple[_Plan | None, tuple[np.ndarray, np.ndarray]]:
    """The fused reduction the two stages compute (module doc), and the partials' spans."""
    none = (None, (np.zeros(0, np.int64), np.zeros(0, np.int64)))
    g1, g2 = (executable.compute_sets[c].groups for c in cs_ids)
    s1, s2 = _stage1(g1), _stage2(g2)
    dtypes = {g.codelet.fields["x"].dtype for g in g1} | {g.codelet.fields["out"].dtype for g in g2}
    if s1 is None or s2 is None or len(dtypes) != 1:
        return none
    dtype = next(iter(dtypes))
    partial = partials_dtype(dtype)
    if any(g.codelet.fields["out"].dtype != partial for g in g1) or \
            any(g.codelet.fields["parts"].dtype != partial for g in g2):
        return none
    xs, length, ps, width, phase = s1.T
    (os_, on), (q, qn, qo) = s2[0].T, s2[1].T
    x_tiles, o_tiles = _tiles(xs, length), _tiles(os_, on)
    if x_tiles is None or o_tiles is None:
        return none
    (_, x0, x1), (_, o0, o1) = x_tiles, o_tiles
    b = int(width.max())
    if (o1 - o0) % b or (x1 - x0) % (o1 - o0):
        return none
    a, r = (o1 - o0) // b, (x1 - x0) // (o1 - o0)
    # Stage 1: each piece inside one `a` block, its partials row's first column.
    rel = xs - x0
    block = rel // (r * b)
    full = width == b
    col0 = np.where(full, 0, rel % b)
    ok = ((rel + length - 1) // (r * b) == block) & np.where(
        full, (phase == rel % b) & (length >= b), (phase == 0) & (length == width) & (rel % b + length <= b))
    # Stage 2: each output run inside one block; each partials row read lies in one piece's row.
    t0 = os_ - o0
    order = np.argsort(ps, kind="stable")
    p_s, p_w = ps[order], width[order]
    if not ok.all() or ((t0 + on - 1) // b != t0 // b).any() or (p_s[1:] < p_s[:-1] + p_w[:-1]).any():
        return none
    i = np.searchsorted(p_s, q, side="right") - 1
    inside = (i >= 0) & (q + qn <= p_s[np.maximum(i, 0)] + p_w[np.maximum(i, 0)])
    piece = order[np.maximum(i, 0)]
    t = qo - o0
    if not (inside & (block[piece] == t // b) & (col0[piece] + q - ps[piece] == t % b)).all():
        return none
    # Every column of every piece's partials row is read.
    read_lo, read_hi = _merged(q, q + qn)
    j = np.searchsorted(read_lo, p_s, side="right") - 1
    if (j < 0).any() or (read_hi[np.maximum(j, 0)] < p_s + p_w).any():
        return none
    spans = (p_s, p_s + p_w)
    if (x0 < o1 and o0 < x1) or partial == dtype and _overlaps(np.array([[x0, x1], [o0, o1]]), *spans):
        return none
    return _Plan(dtype, x0, o0, a, r, b), spans


def _merged(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted, disjoint ``[starts, ends)`` covering the ``[lo, hi)``, touching ones joined."""
    order = np.argsort(lo, kind="stable")
    lo, hi = lo[order], hi[order]
    reach = np.maximum.accumulate(hi)
    new = np.ones(lo.size, bool)
    new[1:] = lo[1:] > reach[:-1]
    return lo[new], np.maximum.reduceat(hi, np.flatnonzero(new))
