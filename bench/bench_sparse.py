"""Issue 17's static block-sparse numbers: modeled sparse vs dense time over density, and host speed.

Prints one JSON line per figure. Run: ``.venv/bin/python bench/bench_sparse.py`` (``--quick``: fewer
densities, no host timing).

* ``modeled``: a GC200, weight ``S`` (``size x size``, blocks of ``block``) times a dense
  ``(size, n)``, fp16 and fp32, compiled and priced estimate-only: cycles of
  ``ops.sparse.sparse_dense_matmul`` beside those of the dense ``ops.matmul`` of the same shapes
  (operands from ``create_matmul_input_lhs/rhs``), and the speed-up. Figures are the cost model's
  (poplibs' own estimator formulas), not hardware measurements, and are not tuned to any.
* ``host``: the simulation-speed figure. ``engine.run`` of one fp32 ``1024 x 1024`` sparse weight
  times a dense ``(1024, 256)`` (each block size, densities 0.01 and 0.1), beside scipy.sparse's BSR
  product of the same matrices (``bsr @ dense``) and numpy's dense matmul, timed interleaved in the
  same run (best of ``REPEATS`` after a warm-up; ``spread`` is (worst - best) / best of the engine's
  runs). The engine's fast path runs the product as batched GEMMs (codelets.sparse.
  SparseProductRunner). Target (issue 17): ``ratio_vs_scipy <= 2`` (``meets_target``). scipy is a
  dev dependency (pyproject's ``dev`` extra); without it the line says so.
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


REPEATS = 5
TARGET_VS_SCIPY = 2.0


def _interleaved(fns: dict, repeats: int = REPEATS) -> dict[str, list[float]]:
    """Seconds of each callable, ``repeats`` rounds, the callables alternating within a round."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return times


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
    fns = {"engine_run_s": lambda: eng.run(0), "numpy_dense_s": lambda: s @ dense}
    try:
        import scipy.sparse as ssp
    except ImportError:
        bsr = None
    else:
        bsr = ssp.bsr_matrix((vals, pat.column_indices, pat.row_indices), shape=pat.shape)
        fns["scipy_bsr_s"] = lambda: bsr @ dense
        bsr @ dense  # warm-up
    times = _interleaved(fns)
    fields = dict(figure="host", size=size, n=n, block=block, density=density, nnz_blocks=pat.nnz_blocks,
                  **{k: round(min(v), 6) for k, v in times.items()},
                  spread=round((max(times["engine_run_s"]) - min(times["engine_run_s"]))
                               / min(times["engine_run_s"]), 2), repeats=REPEATS)
    if bsr is None:
        fields.update(scipy_bsr_s=None, note="scipy not installed (pip install -e '.[dev]')")
    else:
        ratio = fields["engine_run_s"] / fields["scipy_bsr_s"]
        fields.update(ratio_vs_scipy=round(ratio, 2), target=TARGET_VS_SCIPY,
                      meets_target=bool(ratio <= TARGET_VS_SCIPY))
    emit(**fields)


def main(argv: list[str]) -> None:
    quick = "--quick" in argv
    densities = [0.01, 0.1, 0.5, 1.0] if quick else [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0]
    modeled(1024, 1024, 16, densities)
    if not quick:
        for block in sparse_blocks():
            for density in (0.01, 0.1):
                host(1024, 256, block, density)


def sparse_blocks() -> tuple[int, ...]:
    from softipu.codelets.sparse import BLOCK_SIZES
    return BLOCK_SIZES


if __name__ == "__main__":
    main(sys.argv[1:])
