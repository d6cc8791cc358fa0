"""Issue 17's dynamic sparse numbers: modeled time and memory of popsparse-style dynamic sparse
layers and of the mixture-of-experts layer, each beside its dense equivalent in the same run.

Prints one JSON line per figure. Run: ``.venv/bin/python bench/bench_sparse_dynamic.py``
(``--quick``: fewer points). Also run by ``bench/bench_sparse.py``.

* ``dynamic_fc``: a GC200, fully-connected forward ``(batch, size) . W^T`` with ``W`` ``size x size``
  (2048 and batch 256; ``--quick`` 1024 and 64)
  planned for ``nz_ratio`` of its ``block`` blocks (``ops.sparse_dynamic.fully_connected_fwd``),
  priced estimate-only for a pattern without bucket spills (``estimate.whileIterations`` 0) and with
  one propagation step (1), beside the dense ``ops.matmul`` of the same shapes.
* ``moe``: ``ops.sparse_moe.moe_experts`` (``tokens`` tokens, ``experts`` two-layer ReLU MLPs
  ``d -> hidden -> d``, top-``k``) beside its dense equivalent: every expert for every token
  (``x . W1s^T`` over all ``experts * hidden`` columns, ReLU, the gates as a dense ``(tokens,
  experts * hidden)`` mask, ``. W2s``), fp16. Memory: the peak bytes of the busiest tile and of all
  tiles together (``Report.tile_memory``).

Figures are the cost model's (poplibs' estimator formulas, see codelets/sparse_dynamic.py), not
hardware measurements, and are not tuned to any.
"""

from __future__ import annotations

import json
import sys

import numpy as np

import softipu as sp
from softipu import program as P
from softipu.ops import sparse_dynamic as sd
from softipu.ops import sparse_moe as sm
from softipu.ops.matmul import create_matmul_input_lhs, create_matmul_input_rhs, matmul

GC200 = sp.targets.GC200


def emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


def _priced(g: sp.Graph, prog: P.Sequence, loops: int = 0) -> tuple[int, int, int]:
    """Cycles, busiest tile bytes and all tiles' bytes of ``prog``, estimate-only."""
    opts = {"debug.allowOutOfMemory": True, "estimate.whileIterations": loops}
    eng = sp.Engine(g, [prog], opts, estimate_only=True)
    eng.run(0)
    mem = np.asarray(eng.report.tile_memory)
    return int(eng.report.cycles), int(mem.max()), int(mem.sum())


def _var(g: sp.Graph, dtype, shape, name: str):
    v = g.add_variable(dtype, shape, name=name)
    sp.ops.map_linearly(g, v)
    return v


def dynamic_fc(size: int, batch: int, block: int, ratios: list[float], dtype) -> None:
    g = sp.Graph(GC200)
    prog = P.Sequence()
    a = create_matmul_input_lhs(g, dtype, (batch, size), (size, size), name="a")
    b = create_matmul_input_rhs(g, dtype, (batch, size), (size, size), name="b")
    matmul(g, a, b, prog)
    dense = _priced(g, prog)
    for ratio in ratios:
        fc = sd.FullyConnectedParams.with_nz_ratio(block, ratio, batch, size, size)
        figures = []
        for loops in (0, 1):
            g = sp.Graph(GC200)
            prog = P.Sequence()
            w = sd.create_fully_connected_weights(g, dtype, fc)
            x = sd.create_fully_connected_input(g, dtype, fc)
            sd.fully_connected_fwd(g, w, x, prog, params=fc)
            figures.append(_priced(g, prog, loops))
        emit(figure="dynamic_fc", size=size, batch=batch, block=block, dtype=dtype.name, nz_ratio=ratio,
             cut=[w.plan.qx, w.plan.qy, w.plan.qz], bucket_capacity=w.plan.capacity,
             sparse_cycles=figures[0][0],
             sparse_cycles_one_spill_step=figures[1][0], dense_cycles=dense[0],
             speedup=round(dense[0] / figures[0][0], 3), sparse_max_tile_bytes=figures[0][1],
             dense_max_tile_bytes=dense[1])


def moe_dense(tokens: int, d: int, hidden: int, experts: int, dtype) -> tuple[int, int, int]:
    g = sp.Graph(GC200)
    prog = P.Sequence()
    cols = experts * hidden
    x = create_matmul_input_lhs(g, dtype, (tokens, d), (d, cols), name="x")
    w1 = create_matmul_input_rhs(g, dtype, (tokens, d), (d, cols), name="w1s_t")
    hid = matmul(g, x, w1, prog, name="experts_in")
    sp.ops.relu_(g, hid, prog)
    mask = _var(g, dtype, (tokens, cols), "gates_dense")
    gated = sp.ops.mul(g, hid, mask, prog)
    w2 = create_matmul_input_rhs(g, dtype, (tokens, cols), (cols, d), name="w2s")
    matmul(g, gated, w2, prog, name="experts_out")
    return _priced(g, prog)


def moe_sparse(tokens: int, d: int, hidden: int, experts: int, k: int, dtype, loops: int):
    g = sp.Graph(GC200)
    prog = P.Sequence()
    ins = [_var(g, dtype, (tokens, d), "x"), _var(g, sp.int32, (tokens, k), "idx"),
           _var(g, dtype, (tokens, k), "gates"), _var(g, dtype, (experts, hidden, d), "w1"),
           _var(g, dtype, (experts, d, hidden), "w2")]
    sm.moe_experts(g, *ins, prog, activation="relu")
    plan = sm.plan_moe(g, tokens, d, hidden, experts, k, dtype)
    return _priced(g, prog, loops), plan


def moe(tokens: int, d: int, hidden: int, experts: int, k: int, dtype=sp.float16) -> None:
    dense = moe_dense(tokens, d, hidden, experts, dtype)
    (sparse, plan), (spill, _) = (moe_sparse(tokens, d, hidden, experts, k, dtype, n) for n in (0, 1))
    emit(figure="moe", tokens=tokens, d_model=d, hidden=hidden, experts=experts, k=k, dtype=dtype.name,
         cut=[plan.qx, plan.qy, plan.qz], bucket_capacity=plan.capacity, sparse_cycles=sparse[0],
         sparse_cycles_one_spill_step=spill[0], dense_cycles=dense[0], speedup=round(dense[0] / sparse[0], 3),
         sparse_max_tile_bytes=sparse[1], dense_max_tile_bytes=dense[1], sparse_total_bytes=sparse[2],
         dense_total_bytes=dense[2], memory_ratio=round(dense[2] / sparse[2], 3))


def main(argv: list[str]) -> None:
    quick = "--quick" in argv
    ratios = [0.01, 0.1, 0.5] if quick else [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]
    dynamic_fc(1024, 64, 16, ratios, sp.float16) if quick else dynamic_fc(2048, 256, 16, ratios, sp.float16)
    for experts, k in ((8, 2),) if quick else ((8, 2), (32, 2), (64, 1)):
        moe(128, 128, 256, experts, k)


if __name__ == "__main__":
    main(sys.argv[1:])
