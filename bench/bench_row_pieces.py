"""Rows longer than a vertex takes, in pieces over tiles (``softipu.ops.indexing.row_pieces``) beside
the whole-row baseline (one vertex a row, the row on one tile), measured in the same run on GC200.

Each line: the op, shape and dtype, the modeled cycles of the op and the fullest tile's bytes
(``worst_tile_bytes`` of the report; the whole-row graph is compiled with
``debug.allowOutOfMemory`` so its figure exists even where it does not fit), and the host
seconds of ``engine.run``. Run: ``.venv/bin/python bench/bench_row_pieces.py [--quick]``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import time
from contextlib import contextmanager

import numpy as np

import softipu as sp
from softipu import program as P
from softipu.ops import nn
from softipu.ops.indexing import cumsum, sort
from softipu.ops.indexing.scans import cummax

_softmax = importlib.import_module("softipu.ops.nn.softmax")
_pieces = importlib.import_module("softipu.ops.indexing.row_pieces")
_scans = importlib.import_module("softipu.ops.indexing.scans")

CASES = [
    ("softmax", lambda g, x, p: nn.softmax(g, x, p, dim=-1), (4, 200704), sp.float16),
    ("cumsum", lambda g, x, p: cumsum(g, x, p, axis=-1), (4, 200704), sp.float32),
    ("cummax", lambda g, x, p: cummax(g, x, p, axis=-1)[0], (4, 65536), sp.float32),
    ("sort", lambda g, x, p: sort(g, x, p, axis=-1), (4, 65536), sp.float32),
]


@contextmanager
def _whole_rows():
    """The baseline: every row op keeps whole rows on one vertex."""
    saved = _softmax.ROW_VERTEX_ELEMENTS, _pieces.needs_pieces, _scans.needs_pieces
    _softmax.ROW_VERTEX_ELEMENTS, _pieces.needs_pieces, _scans.needs_pieces = 1 << 40, *[lambda n: False] * 2
    try:
        yield
    finally:
        _softmax.ROW_VERTEX_ELEMENTS, _pieces.needs_pieces, _scans.needs_pieces = saved


def _measure(op, shape, dtype, whole: bool) -> dict:
    g = sp.Graph(sp.targets.GC200)
    x = g.add_variable(dtype, shape, name="x")
    sp.ops.map_linearly(g, x)
    prog = P.Sequence()
    if whole:
        with _whole_rows():
            op(g, x, prog)
    else:
        op(g, x, prog)
    eng = sp.Engine(g, [prog], options={"debug.allowOutOfMemory": True})
    eng.write_tensor(x, np.random.default_rng(0).standard_normal(shape).astype(dtype.numpy))
    start = time.perf_counter()
    eng.run(0)
    host = time.perf_counter() - start
    return {"cycles": int(eng.log.runs[-1][1]), "worst_tile_bytes": int(eng.report.fit()["worst_tile_bytes"]),
            "host_s": round(host, 3)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="softmax only")
    args = parser.parse_args()
    for name, op, shape, dtype in CASES[:1] if args.quick else CASES:
        split, whole = _measure(op, shape, dtype, False), _measure(op, shape, dtype, True)
        print(json.dumps({"op": name, "shape": list(shape), "dtype": dtype.name, "target": "GC200",
                          "cycles": split["cycles"], "baseline_cycles": whole["cycles"],
                          "worst_tile_bytes": split["worst_tile_bytes"],
                          "baseline_worst_tile_bytes": whole["worst_tile_bytes"],
                          "host_s": split["host_s"], "baseline_host_s": whole["host_s"],
                          "baseline": "whole rows, one vertex a row"}), flush=True)


if __name__ == "__main__":
    main()
