"""popsparse::dynamic-style codelets: the sparsity pattern is device data (meta-information).

One vertex per partition (tile) reads one *bucket*: a meta-information row and the bucket's
non-zero blocks. Meta-information layout (int32, softipu's own encoding, the role of popsparse's
``unsigned short`` sub-groups in lib/popsparse/SparseMetaInfo.hpp): ``[steps, count,
(pid, row, col) x capacity]`` where ``steps`` is the number of propagation steps the pattern needs
(the same in every bucket), ``count`` the bucket's used entries, and each entry the partition
``pid`` it belongs to and its block-row / block-column inside that partition. A vertex works on
the entries whose ``pid`` is its own partition (Param ``pid``) and skips the rest, so a bucket that
holds entries spilled from a neighbour (popsparse's bucket overflow) is worked on when the
propagation phase brings it to the neighbour's tile.

Passes (``dynamic_fc_codelet``), all with fp32 partials (popsparse's default ``partialsType``),
``Z`` the batch (Param ``batch``), ``xw``/``yw`` the partition's output/input blocks:

* ``"fwd"``: ``out (Z, xw*b) += act (Z, yw*b)[:, col] . W_e^T`` into the entry's row;
* ``"grada"``: ``out (Z, yw*b) += grad (Z, xw*b)[:, row] . W_e`` into the entry's column;
* ``"gradw"``: ``out[e] (b, b) = grad[:, row]^T . act[:, col]`` (the sampled product at the
  pattern's blocks, written in the bucket's own layout, so it travels with the bucket).

``dynamic_slice_codelet``: embedding slice and update-add over the same buckets.

Cycle estimates. poplibs' vertex estimators for these codelets return 0
(``MAKE_CYCLE_ESTIMATOR_NAME(SparseDenseMatMulElementWise)`` ... ``SparseDenseMatMulBlockGradA`` in
lib/popsparse/popsparseCycleEstimators.cpp) [V]; the planner's model in
lib/popsparse/PerformanceEstimation.hpp is the only published figure and we use it [V formulas]:
``sparseDenseElementwiseMultiply`` / ``sparseDenseBlockMultiply`` (forward),
``sparseDenseGradAElementwiseMultiply`` (grad-A, element) and ``sparseDenseBlockMultiply`` without
X retention (grad-A, blocks) [U: that GradA blocks cost the forward kernel], and
``sparseDenseGradWElementwiseMultiply`` / ``sparseDenseBlockMultiplyGradW`` (grad-W), called as
FullyConnectedPlan.cpp calls them: one bucket with one sub-group, ``numX`` = the partition's
block-rows (grad-W: each worker's share of them), ``numY`` = ``[ceil(capacity / numX)]`` (the
bucket's planned capacity: the pattern is not known when the program is priced, so every vertex
is priced full [U: popsparse prices the planned average]), ``numZ`` = each worker's share of the
batch (grad-W: the whole batch). Figures shared with the static kernels come from
:data:`softipu.codelets.sparse.BLOCK` / ``ELEMENT``. The bucket-propagation helpers cost
popsparse's ``BufferIndexUpdate`` (``6 x workers``) and ``BitIsSet`` (``8 x workers``) [V
popsparseCycleEstimators.cpp]. Slice/update vertices cost popops' MultiSlice formula
``W x (29 + rows x (19 + ceil(b / vw) x 1))`` (ipu-facts section 5) over the bucket's capacity
[U: popsparse's SparseDenseMultiSlice estimator is not published].
"""

from __future__ import annotations

from functools import cache

import numpy as np

from softipu.codelets._common import ceil_div
from softipu.codelets.sparse import BLOCK, BLOCK_SIZES, ELEMENT, _float_inner, _half_inner
from softipu.dtypes import DType, float32, int32
from softipu.graph.vertex import InOut, Input, Output, Param, SupervisorVertex, Vertex
from softipu.target import Target

__all__ = ["META_HEADER", "PASSES", "fill_buckets", "dynamic_fc_codelet", "dynamic_slice_codelet",
           "count_down_codelet", "moe_meta_codelet", "moe_gate_codelet", "moe_gate_grad_codelet",
           "fwd_cycles", "grada_cycles", "gradw_cycles", "meta_entries"]

META_HEADER = 2  # steps, count
PASSES = ("fwd", "grada", "gradw", "gradw_rows")


def _per_row(param: np.ndarray, rows: int) -> np.ndarray:
    """A per-vertex param for each of ``rows`` (replicas x vertices) rows: params are not
    replicated, fields are."""
    flat = np.asarray(param).reshape(-1)
    return np.tile(flat, rows // flat.size)


def meta_entries(meta: np.ndarray, pid: np.ndarray, cap: int):
    """``(vertex, slot, row, col)`` of every entry of the buckets ``meta`` ``(V, 2 + 3 cap)`` that
    belongs to the vertex's own partition ``pid`` ``(V,)``."""
    ent = meta[:, META_HEADER:META_HEADER + 3 * cap].reshape(meta.shape[0], cap, 3)
    used = np.arange(cap)[None, :] < meta[:, 1:2]
    v, e = np.nonzero(used & (ent[:, :, 0] == pid[:, None]))
    return v, e, ent[v, e, 1], ent[v, e, 2]


def fill_buckets(rows: np.ndarray, cols: np.ndarray, xw: int, yw: int, qy: int, parts: int,
                 cap: int) -> tuple[np.ndarray, np.ndarray]:
    """The meta-information ``(parts, 2 + 3 cap)`` of non-zero blocks at block ``rows``/``cols``
    of a grid cut in partitions of ``xw x yw`` blocks (``qy`` across), and each block's flat slot.

    A block goes to its partition's bucket; the blocks past a full bucket go to the nearest
    buckets behind it with room (bucket ``p - d`` reaches partition ``p`` after ``d``
    propagation steps), and ``steps`` is the largest ``d`` used (0 without spills)."""
    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    pid = rows // xw * qy + cols // yw
    if pid.size > parts * cap:
        raise ValueError(f"{pid.size} blocks do not fit {parts} buckets of {cap}")
    order = np.argsort(pid, kind="stable")
    counts = np.bincount(pid, minlength=parts)
    starts = np.concatenate([[0], np.cumsum(counts)])
    rank = np.empty(pid.size, np.int64)
    rank[order] = np.arange(pid.size) - np.repeat(starts[:-1], counts)
    bucket, slot = pid.copy(), rank.copy()
    fill = np.minimum(counts, cap)
    steps = 0
    for p in np.flatnonzero(counts > cap):
        spill = order[starts[p] + cap:starts[p + 1]]
        done = 0
        for d in range(1, parts):
            q = (p - d) % parts
            take = min(cap - int(fill[q]), spill.size - done)
            if take <= 0:
                continue
            moved = spill[done:done + take]
            bucket[moved], slot[moved] = q, fill[q] + np.arange(take)
            fill[q] += take
            done += take
            steps = max(steps, d)
            if done == spill.size:
                break
    meta = np.zeros((parts, META_HEADER + 3 * cap), np.int32)
    meta[:, 0], meta[:, 1] = steps, fill
    ent = meta[:, META_HEADER:].reshape(parts, cap, 3)
    ent[:, :, 0] = -1
    ent[bucket, slot] = np.stack([pid, rows % xw, cols % yw], axis=1)
    return meta, bucket * cap + slot


def _block_multiply(num_x: int, num_z: int, block: int, num_y: int, float_in: bool, workers: int,
                    conv_units: int, retain_x: bool) -> int:
    """``sparseDenseBlockMultiply`` with one bucket of one sub-group, fp32 partials [V]."""
    e = BLOCK
    supervisor = e.supervisor_overhead + e.per_subgroup_searched + e.per_bucket_for_pn
    loads = 2 if (block == 16 and conv_units == 8) else 1
    coeff = block * block // e.coeff_load_divisor[int(float_in)]
    block_loads = (num_y * (coeff + e.per_block_load + e.per_weight_load * loads) + int(retain_x)) * num_x + 2
    inner = int(e.inner_overhead(block, float_in, True, conv_units, np.asarray(num_z))) + num_z * dict(
        e.cycles_per_z)[block][int(float_in)]
    worker = e.worker_overhead(block, float_in, True, conv_units) + num_x * num_y * loads * (
        inner - e.retain_x_saving * int(retain_x))
    return int(worker * workers + supervisor + block_loads)


def _element_multiply(num_x: int, num_z: int, num_y: int, float_in: bool, workers: int) -> int:
    """``sparseDenseElementwiseMultiply`` with one bucket of one sub-group [V]."""
    e = ELEMENT
    supervisor = e.supervisor_overhead + e.per_subgroup_searched + e.per_bucket_for_pn
    y, z = np.asarray(num_y), np.asarray(num_z)
    if float_in:
        overhead = 22 if num_z == 4 else 24 if num_z == 2 else 27
        x_overhead = 13 if num_z == 4 else 11 if num_z == 2 else 12
        inner = int(_float_inner(y, z))
    else:
        overhead = 25 if num_z == 8 else 27 if num_z == 4 else 30
        x_overhead = 15 if num_z == 8 else 11
        inner = int(_half_inner(y, z))
    return int((overhead + (x_overhead + inner) * num_x) * workers + supervisor)


def _grada_element(num_x: int, num_z: int, num_y: int, float_in: bool, workers: int) -> int:
    """``sparseDenseGradAElementwiseMultiply``, one bucket of one sub-group [V]."""
    supervisor = 30 + (0 + 1) * 44 + 46
    y, z = num_y, num_z
    if float_in:
        overhead, x_overhead = (20, 13) if z == 4 else (22, 11) if z == 2 else (30, 12)
        if z in (2, 4):
            inner = (3 if z == 4 else 2) * y
        else:
            inner = ((10 + z // 4 * 3 * y) if z // 4 else 0) + ((8 + z // 2 * 2 * y) if z & 2 else 0) + (
                (8 + 2 * y) if z & 1 else 0) + (3 if z & 3 else 1)
    else:
        overhead, x_overhead = (23, 15) if z == 8 else (25, 11) if z == 4 else (29, 10)
        if z in (4, 8):
            inner = (3 if z == 8 else 2) * y
        else:
            inner = ((14 + z // 8 * 3 * y) if z // 8 else 0) + ((13 + 2 * y) if z & 4 else 0) + (
                (10 + 2 * y * (z & 3)) if z & 3 else 0)
    return int((overhead + (x_overhead + inner) * num_x) * workers + supervisor)


def _gradw_element(num_x: int, num_z: int, num_y: int, float_in: bool, workers: int) -> int:
    """``sparseDenseGradWElementwiseMultiply``, one bucket of one sub-group [V]."""
    supervisor = 37 + 38 + 26
    z = num_z
    if float_in:
        overhead, x_overhead = (28, 8) if z == 4 else (30, 6) if z == 2 else (32, 7)
        per_y = 5 if z == 4 else 4 if z == 2 else 9 + z // 2 + (z & 1)
    else:
        overhead, x_overhead = (28, 10) if z == 8 else (30, 9) if z == 4 else (33, 6)
        per_y = 5 if z == 8 else 4 if z == 4 else 11 + z // 4 + (3 if z & 2 else 0) + (4 if z & 1 else 0)
    return int((overhead + (per_y * num_y + x_overhead) * num_x) * workers + supervisor)


def _gradw_block(num_x: int, num_z: int, block: int, num_y: int, float_in: bool, workers: int) -> int:
    """``sparseDenseBlockMultiplyGradW`` with fp32 partials, one bucket of one sub-group [V]."""
    supervisor = 37 + 38 + 26
    if block == 4:
        overhead, x_overhead, y_overhead, per_z = (27, 9, 45, 12) if float_in else (26, 9, 33, 6)
    elif block == 8:
        overhead, x_overhead, y_overhead, per_z = ((24, 7, 8 + 8 * (5 + 2 * 10), 8 * 2 * 3) if float_in
                                                  else (26, 9, 9 + 8 * 13, 8 * 3))
    else:
        overhead, x_overhead, y_overhead, per_z = 27, 9, 505, 96
    worker = overhead + num_x * (x_overhead + num_y * (y_overhead + num_z * per_z))
    return int(worker * workers + supervisor)


def _shape(nz: int, out_or_act: int, batch: np.ndarray, block: int) -> tuple[int, int, int]:
    z = max(1, int(np.max(batch)))
    return nz // (block * block), z, max(1, out_or_act // (z * block))


def fwd_cycles(nz: int, out: int, batch, block: int, dtype: DType, target: Target) -> int:
    cap, z, xw = _shape(nz, out, batch, block)
    workers, float_in = target.workers_per_tile, dtype.itemsize == 4
    num_y, num_z = ceil_div(cap, xw), ceil_div(z, workers)
    if block == 1:
        return _element_multiply(xw, num_z, num_y, float_in, workers)
    units = target.conv_units_fp32 if float_in else target.conv_units_fp16
    return _block_multiply(xw, num_z, block, num_y, float_in, workers, units, True)


def grada_cycles(nz: int, grad: int, batch, block: int, dtype: DType, target: Target) -> int:
    cap, z, xw = _shape(nz, grad, batch, block)
    workers, float_in = target.workers_per_tile, dtype.itemsize == 4
    num_y, num_z = ceil_div(cap, xw), ceil_div(z, workers)
    if block == 1:
        return _grada_element(xw, num_z, num_y, float_in, workers)
    units = target.conv_units_fp32 if float_in else target.conv_units_fp16
    return _block_multiply(xw, num_z, block, num_y, float_in, workers, units, False)


def gradw_cycles(out: int, grad: int, batch, block: int, dtype: DType, target: Target) -> int:
    cap, z, xw = _shape(out, grad, batch, block)
    workers, float_in = target.workers_per_tile, dtype.itemsize == 4
    num_y, num_x = ceil_div(cap, xw), ceil_div(xw, workers)
    if block == 1:
        return _gradw_element(num_x, z, num_y, float_in, workers)
    return _gradw_block(num_x, z, block, num_y, float_in, workers)


def _fwd(meta, nz, act, out, pid, batch, b, grada):
    lead = out.shape[:-1]
    mm = meta.reshape(-1, meta.shape[-1])
    nv, z = mm.shape[0], int(batch.reshape(-1)[0])
    cap = nz.shape[-1] // (b * b)
    v, e, r, c = meta_entries(mm, _per_row(pid, mm.shape[0]), cap)
    w = nz.reshape(nv, cap, b, b)[v, e].astype(np.float32, copy=False)
    a = act.reshape(nv, z, -1, b)
    width = out.shape[-1] // (z * b)
    buf = np.zeros((nv, width, z, b), np.float32)
    if grada:  # act is grad (Z, xw*b): rows of W; results into columns
        np.add.at(buf, (v, c), np.matmul(a[v, :, r, :].astype(np.float32, copy=False), w))
    else:
        np.add.at(buf, (v, r), np.matmul(a[v, :, c, :].astype(np.float32, copy=False), w.transpose(0, 2, 1)))
    out[...] += buf.transpose(0, 2, 1, 3).reshape(lead + (-1,))


def _fwd_class(dtype: DType, b: int, grada: bool) -> type[Vertex]:
    if not grada:
        class DynamicFC(SupervisorVertex):
            meta = Input(int32)
            nz = Input(dtype)
            act = Input(dtype)
            out = InOut(float32)
            pid = Param(int32)
            batch = Param(int32)

            @staticmethod
            def compute(meta, nz, act, out, pid, batch):
                _fwd(meta, nz, act, out, pid, batch, b, False)

            @staticmethod
            def cycles(meta, nz, act, out, pid, batch, target: Target):
                return fwd_cycles(nz, out, batch, b, dtype, target)

            @staticmethod
            def flops(meta, nz, act, out, pid, batch):
                return 2 * nz * int(np.max(batch))

        return DynamicFC

    class DynamicFCGradA(SupervisorVertex):
        meta = Input(int32)
        nz = Input(dtype)
        grad = Input(dtype)
        out = InOut(float32)
        pid = Param(int32)
        batch = Param(int32)

        @staticmethod
        def compute(meta, nz, grad, out, pid, batch):
            _fwd(meta, nz, grad, out, pid, batch, b, True)

        @staticmethod
        def cycles(meta, nz, grad, out, pid, batch, target: Target):
            return grada_cycles(nz, grad, batch, b, dtype, target)

        @staticmethod
        def flops(meta, nz, grad, out, pid, batch):
            return 2 * nz * int(np.max(batch))

    return DynamicFCGradA


def _gradw_class(dtype: DType, b: int, by_rows: bool) -> type[Vertex]:
    class DynamicFCGradW(SupervisorVertex):
        meta = Input(int32)
        act = Input(dtype)
        grad = Input(dtype)
        out = InOut(float32)
        pid = Param(int32)
        batch = Param(int32)

        @staticmethod
        def compute(meta, act, grad, out, pid, batch):
            mm = meta.reshape(-1, meta.shape[-1])
            nv, z = mm.shape[0], int(batch.reshape(-1)[0])
            cap = out.shape[-1] // (b * b)
            v, e, r, c = meta_entries(mm, _per_row(pid, mm.shape[0]), cap)
            if by_rows:  # (w * b, Z): whole rows
                g = grad.reshape(nv, -1, b, z)[v, r].astype(np.float32, copy=False)
                a = act.reshape(nv, -1, b, z)[v, c].astype(np.float32, copy=False)
            else:  # (Z, w * b)
                g = grad.reshape(nv, z, -1, b)[v, :, r, :].astype(np.float32, copy=False).transpose(0, 2, 1)
                a = act.reshape(nv, z, -1, b)[v, :, c, :].astype(np.float32, copy=False).transpose(0, 2, 1)
            res = out.reshape(nv, cap, b, b).copy()
            res[v, e] = np.matmul(g, a.transpose(0, 2, 1))
            out[...] = res.reshape(out.shape)

        @staticmethod
        def cycles(meta, act, grad, out, pid, batch, target: Target):
            return gradw_cycles(out, grad, batch, b, dtype, target)

        @staticmethod
        def flops(meta, act, grad, out, pid, batch):
            return 2 * out * int(np.max(batch))

    return DynamicFCGradW


@cache
def dynamic_fc_codelet(dtype: DType, block: int, pass_: str) -> type[Vertex]:
    """The dynamic sparse fully-connected vertex for ``pass_`` in :data:`PASSES` (module docstring)."""
    if block not in BLOCK_SIZES or pass_ not in PASSES:
        raise ValueError(f"dynamic_fc_codelet: block {block} pass {pass_!r}")
    if pass_.startswith("gradw"):
        cls = _gradw_class(dtype, block, pass_ == "gradw_rows")
    else:
        cls = _fwd_class(dtype, block, pass_ == "grada")
    name = {"fwd": "SparseDenseMatMul", "grada": "SparseDenseMatMulGradA", "gradw": "SparseDenseMatMulGradW",
            "gradw_rows": "SparseDenseMatMulGradWRows"}
    kind = "ElementWise" if block == 1 else f"Block<{block},{block}>"
    cls.__name__ = cls.__qualname__ = f"Dynamic{name[pass_]}{kind}<{dtype.name}>"
    return cls


def _slice_cycles(nz: int, block: int, dtype: DType, target: Target) -> int:
    rows = nz // block  # every row of every block in the bucket, priced full
    vw = target.vector_width(dtype.itemsize)
    workers = target.workers_per_tile
    return int(workers * (29 + ceil_div(rows, workers) * (19 + ceil_div(block, vw))))


def _slice_matches(meta, indices, pid, xoff, b, cap):
    mm = meta.reshape(-1, meta.shape[-1])
    v, e, r, c = meta_entries(mm, _per_row(pid, mm.shape[0]), cap)
    idx = indices.reshape(mm.shape[0], -1)
    rows = idx // b - _per_row(xoff, mm.shape[0])[:, None]  # (V, K) block-row inside the partition
    m_ent, m_k = np.nonzero(rows[v] == r[:, None])
    return mm.shape[0], idx, v[m_ent], e[m_ent], c[m_ent], m_k


@cache
def dynamic_slice_codelet(dtype: DType, block: int, update: bool) -> type[Vertex]:
    """Embedding slice (``update=False``: ``out (K, yw*b)`` = the rows ``indices`` of the
    partition's part of ``W``) or update-add (``nz`` += ``scale x slices`` at those rows)."""
    b = block

    if not update:
        class DynamicSlice(SupervisorVertex):
            meta = Input(int32)
            nz = Input(dtype)
            indices = Input(int32)
            out = InOut(float32)
            pid = Param(int32)
            xoff = Param(int32)

            @staticmethod
            def compute(meta, nz, indices, out, pid, xoff):
                cap = nz.shape[-1] // (b * b)
                nv, idx, v, e, c, k = _slice_matches(meta, indices, pid, xoff, b, cap)
                ii = idx[v, k] % b
                res = out.reshape(nv, idx.shape[1], -1, b).copy()
                res[v, k, c] = nz.reshape(nv, cap, b, b)[v, e, ii]
                out[...] = res.reshape(out.shape)

            @staticmethod
            def cycles(meta, nz, indices, out, pid, xoff, target: Target):
                return _slice_cycles(nz, b, dtype, target)
    else:
        class DynamicSlice(SupervisorVertex):
            meta = Input(int32)
            nz = InOut(dtype)
            indices = Input(int32)
            slices = Input(dtype)
            scale = Input(float32)
            pid = Param(int32)
            xoff = Param(int32)

            @staticmethod
            def compute(meta, nz, indices, slices, scale, pid, xoff):
                cap = nz.shape[-1] // (b * b)
                nv, idx, v, e, c, k = _slice_matches(meta, indices, pid, xoff, b, cap)
                ii = idx[v, k] % b
                s = slices.reshape(nv, idx.shape[1], -1, b)[v, k, c].astype(np.float32)
                res = nz.reshape(nv, cap, b, b).astype(np.float32)
                np.add.at(res, (v, e, ii), s * scale.reshape(-1)[0])
                nz[...] = res.reshape(nz.shape).astype(nz.dtype)

            @staticmethod
            def cycles(meta, nz, indices, slices, scale, pid, xoff, target: Target):
                return _slice_cycles(nz, b, dtype, target)

    kind = "ElementWise" if b == 1 else f"Block<{b},{b}>"
    base = "SparseDenseMultiUpdateAdd" if update else "SparseDenseMultiSlice"
    DynamicSlice.__name__ = DynamicSlice.__qualname__ = f"Dynamic{base}{kind}<{dtype.name}>"
    return DynamicSlice


@cache
def count_down_codelet() -> type[Vertex]:
    """The propagation loop's counter: ``init`` set from the meta-information's ``steps``
    (``BitIsSet``-priced), then each turn ``go = counter > 0; counter -= 1``
    (``BufferIndexUpdate``-priced)."""

    class SparsePropagationCount(SupervisorVertex):
        counter = InOut(int32)
        go = Output(int32)
        steps = Input(int32)
        init = Param(int32)

        @staticmethod
        def compute(counter, go, steps, init):
            start = init.reshape(-1)[0] != 0
            now = steps.astype(np.int32) if start else counter.astype(np.int32)
            if start:
                counter[...] = now
                go[...] = 0
            else:
                go[...] = (now > 0).astype(np.int32)
                counter[...] = now - 1

        @staticmethod
        def cycles(counter, go, steps, init, target: Target):
            return (8 if np.max(init) else 6) * target.workers_per_tile

    return SparsePropagationCount


# -- mixture of experts: the routing's pattern made on the device --------------------------------

@cache
def moe_meta_codelet(tokens: int, k: int, hidden: int, xw: int, yw: int, qy: int, parts: int,
                     cap: int) -> type[Vertex]:
    """The meta-information of a top-``k`` routing on the device: token ``t`` and expert ``e`` of
    ``idx`` ``(tokens * k)`` make the non-zeros ``(t, e * hidden + i)``, ``i < hidden``, placed by
    :func:`fill_buckets` (the same host rule); each vertex writes its own bucket's row.

    Cycles [U: popsparse builds meta-information on the host; no device figure exists]: a worker
    pass over the routing (``8`` cycles per choice: read, count per partition) and one over the
    bucket (``3`` cycles per entry: three 32-bit stores), split over the workers."""

    class MoEMetaInfo(SupervisorVertex):
        idx = Input(int32)
        meta = Output(int32)
        pid = Param(int32)

        @staticmethod
        def compute(idx, meta, pid):
            flat_idx = idx.reshape(-1, idx.shape[-2], idx.shape[-1])
            out = meta.reshape(-1, meta.shape[-2], meta.shape[-1])
            rows = np.repeat(np.arange(tokens), k * hidden)
            for r in range(flat_idx.shape[0]):  # replicas; every vertex holds the same routing
                choice = flat_idx[r, 0].reshape(tokens, k).astype(np.int64)
                cols = (choice[:, :, None] * hidden + np.arange(hidden)).reshape(-1)
                full, _ = fill_buckets(rows, cols, xw, yw, qy, parts, cap)
                out[r] = full[pid.reshape(-1)]

        @staticmethod
        def cycles(idx, meta, pid, target: Target):
            w = target.workers_per_tile
            return w * (20 + ceil_div(idx, w) * 8 + ceil_div(cap, w) * 3)

    MoEMetaInfo.__name__ = MoEMetaInfo.__qualname__ = f"MoEMetaInfo<{tokens}x{k},{hidden}>"
    return MoEMetaInfo


@cache
def moe_gate_codelet(dtype: DType, k: int, hidden: int, xw: int, yw: int, qy: int) -> type[Vertex]:
    """Scale every used entry of a bucket by its token's gate for the entry's expert, in place
    (any partition's entries: the gates of every token are on every tile, so no propagation).

    Cycles [U]: per entry, a meta-information read, ``k`` compares and a multiply-store:
    ``6 + k`` cycles, split over the workers."""

    class MoEGateScale(SupervisorVertex):
        meta = Input(int32)
        nz = InOut(dtype)
        idx = Input(int32)
        gates = Input(dtype)

        @staticmethod
        def compute(meta, nz, idx, gates):
            mm = meta.reshape(-1, meta.shape[-1])
            nv, cap = mm.shape[0], nz.shape[-1]
            ent = mm[:, META_HEADER:].reshape(nv, cap, 3)
            v, e = np.nonzero(np.arange(cap)[None, :] < mm[:, 1:2])
            pid, row, col = ent[v, e, 0], ent[v, e, 1], ent[v, e, 2]
            token = pid // qy * xw + row
            expert = (pid % qy * yw + col) // hidden
            choice = idx.reshape(nv, -1, k)[v, token]  # (n, k)
            g = gates.reshape(nv, -1, k)[v, token].astype(np.float32)
            gate = np.sum(np.where(choice == expert[:, None], g, 0), axis=1)
            res = nz.reshape(nv, cap).astype(np.float32)
            res[v, e] *= gate
            nz[...] = res.reshape(nz.shape).astype(nz.dtype)

        @staticmethod
        def cycles(meta, nz, idx, gates, target: Target):
            w = target.workers_per_tile
            return w * (20 + ceil_div(nz, w) * (6 + k))

    MoEGateScale.__name__ = MoEGateScale.__qualname__ = f"MoEGateScale<{dtype.name},{k}>"
    return MoEGateScale


@cache
def moe_gate_grad_codelet(dtype: DType, tokens: int, k: int, hidden: int, xw: int, yw: int,
                          qy: int) -> type[Vertex]:
    """A bucket's share of the gates' gradient: ``out (tokens * k)`` fp32 gets, for each used
    entry, ``dg x a`` (the gated value's gradient times the ungated activation) at its token's
    choice of the entry's expert; the buckets' shares are summed by a reduction.

    Cycles [U]: per entry a meta-information read, ``k`` compares and a multiply-add (``6 + k``),
    plus zeroing the share (one 64-bit store per two floats), split over the workers."""

    class MoEGateGrad(SupervisorVertex):
        meta = Input(int32)
        dg = Input(dtype)
        act = Input(dtype)
        idx = Input(int32)
        out = Output(float32)

        @staticmethod
        def compute(meta, dg, act, idx, out):
            mm = meta.reshape(-1, meta.shape[-1])
            nv, cap = mm.shape[0], dg.shape[-1]
            ent = mm[:, META_HEADER:].reshape(nv, cap, 3)
            v, e = np.nonzero(np.arange(cap)[None, :] < mm[:, 1:2])
            pid, row, col = ent[v, e, 0], ent[v, e, 1], ent[v, e, 2]
            token = pid // qy * xw + row
            expert = (pid % qy * yw + col) // hidden
            choice = idx.reshape(nv, tokens, k)[v, token]
            prod = dg.reshape(nv, cap)[v, e].astype(np.float32) * act.reshape(nv, cap)[v, e]
            res = np.zeros((nv, tokens, k), np.float32)
            n, j = np.nonzero(choice == expert[:, None])  # entry n is token's choice j
            np.add.at(res, (v[n], token[n], j), prod[n])
            out[...] = res.reshape(out.shape)

        @staticmethod
        def cycles(meta, dg, act, idx, out, target: Target):
            w = target.workers_per_tile
            return w * (20 + ceil_div(dg, w) * (6 + k) + ceil_div(out, 2 * w))

    MoEGateGrad.__name__ = MoEGateGrad.__qualname__ = f"MoEGateGrad<{dtype.name},{k}>"
    return MoEGateGrad
