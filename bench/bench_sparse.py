"""Issue 17's static block-sparse numbers: modeled sparse vs dense time over density, and host speed.

Prints one JSON line per figure. Run: ``.venv/bin/python bench/bench_sparse.py`` (``--quick``: fewer
densities, no host timing).

* ``modeled``: a GC200, weight ``S`` (``size x size``, blocks of ``block``) times a dense
  ``(size, n)``, fp16 and fp32, compiled and priced estimate-only: cycles of
  ``ops.sparse.sparse_dense_matmul`` beside those of the dense ``ops.matmul`` of the same shapes
  (operands from ``create_matmul_input_lhs/rhs``), and the speed-up. Figures are the cost model's
  (poplibs' own estimator formulas), not hardware measurements, and are not tuned to any.
* ``host``: ``engine.run`` of one fp32 sparse product (best of 3, after a warm-up) beside
  scipy.sparse's BSR product of the same matrices when scipy is installed, and numpy's dense matmul
  always (the same run, interleaved).
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

import softipu as sp
from softipu import program as P
from softipu.ops import sparse
from softipu.ops.matmul import create_matmul_input_lhs, create_matmul_input_rhs, matmul

GC200 = sp.targets.GC200
OPTS = {"debug.allowOutOfMemory": True}


def emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


def pattern(size: int, block: int, density: float, seed: int = 0) -> sparse.CSRMatrix:
    rng = np.random.default_rng(seed)
    nb = size // block
    mask = rng.random((nb, nb)) < density
    if not mask.any():
        mask[0, 0] = True
    return sparse.CSRMatrix.from_mask(mask, block, name="w")


def _priced(g: sp.Graph, prog: P.Sequence) -> int:
    eng = sp.Engine(g, [prog], OPTS, estimate_only=True)
    eng.run(0)
    return eng.report.cycles


def sparse_cycles(pat: sparse.CSRMatrix, n: int, dtype) -> int:
    g = sp.Graph(GC200)
    prog = P.Sequence()
    nz = sparse.create_sparse_dense_matmul_lhs(g, pat, n, dtype)
    d = sparse.create_sparse_dense_matmul_rhs(g, pat, n, dtype)
    sparse.sparse_dense_matmul(g, nz, d, prog, pattern=pat)
    return _priced(g, prog)


def dense_cycles(size: int, n: int, dtype) -> int:
    g = sp.Graph(GC200)
    prog = P.Sequence()
    a = create_matmul_input_lhs(g, dtype, (size, size), (size, n), name="a")
    b = create_matmul_input_rhs(g, dtype, (size, size), (size, n), name="b")
    matmul(g, a, b, prog)
    return _priced(g, prog)


def modeled(size: int, n: int, block: int, densities: list[float]) -> None:
    for dtype in (sp.float16, sp.float32):
        dense = dense_cycles(size, n, dtype)
        for density in densities:
            pat = pattern(size, block, density)
            cyc = sparse_cycles(pat, n, dtype)
            emit(figure="modeled", size=size, n=n, block=block, dtype=dtype.name, density=density,
                 nnz_blocks=pat.nnz_blocks, sparse_cycles=int(cyc), dense_cycles=int(dense),
                 speedup=round(dense / cyc, 3))


def _best(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def host(size: int, n: int, block: int, density: float) -> None:
    pat = pattern(size, block, density)
    g = sp.Graph(GC200)
    prog = P.Sequence()
    nz = sparse.create_sparse_dense_matmul_lhs(g, pat, n, sp.float32)
    d = sparse.create_sparse_dense_matmul_rhs(g, pat, n, sp.float32)
    sparse.sparse_dense_matmul(g, nz, d, prog, pattern=pat)
    eng = sp.Engine(g, [prog])
    rng = np.random.default_rng(0)
    vals = rng.standard_normal((pat.nnz_blocks, block, block)).astype(np.float32)
    dense = rng.standard_normal((size, n)).astype(np.float32)
    eng.write_tensor(nz, vals)
    eng.write_tensor(d, dense)
    eng.run(0)
    s = pat.to_dense(vals)
    fields = dict(figure="host", size=size, n=n, block=block, density=density,
                  engine_run_s=_best(lambda: eng.run(0)), numpy_dense_s=_best(lambda: s @ dense))
    try:
        import scipy.sparse as ssp
    except ImportError:
        fields["scipy_bsr_s"] = None
        fields["note"] = "scipy not installed"
    else:
        bsr = ssp.bsr_matrix((vals, pat.column_indices, pat.row_indices), shape=pat.shape)
        fields["scipy_bsr_s"] = _best(lambda: bsr @ dense)
        fields["ratio_vs_scipy"] = round(fields["engine_run_s"] / fields["scipy_bsr_s"], 2)
    emit(**fields)


def main(argv: list[str]) -> None:
    quick = "--quick" in argv
    densities = [0.01, 0.1, 0.5, 1.0] if quick else [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0]
    modeled(1024, 1024, 16, densities)
    if not quick:
        host(1024, 256, 16, 0.1)


if __name__ == "__main__":
    main(sys.argv[1:])
