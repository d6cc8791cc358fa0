"""popops' intermediate reduction stages (lib/popops/reduction/ReductionPlan.cpp calculateNextStep,
ReductionStages.cpp intermediateToIntermediate): when many rows of partials feed each output, they
are first reduced in pieces spread over the tiles, then at the outputs.

Oracles: numpy (float sums within ``contraction_bound``, integer sums bitwise) and cycle figures
worked out by hand from poplibs' getCyclesEstimateForStridedReduce (codelets/reduce.py).
"""

from __future__ import annotations

import numpy as np
import pytest

import softipu as sp
from softipu import program as P
from softipu.codelets._common import contraction_bound
from softipu.ops.reduce import reduce_sum
from softipu.ops.reduce_stages import PartialRows, needs_intermediate

TILES = 64


def _sum_over_rows(dtype, reference: bool = False):
    """(256, 16) on 64 tiles, 4 rows a tile, summed over rows."""
    g = sp.Graph(sp.targets.ipu_model(tiles=TILES, bytes_per_tile=64 * 1024))
    x = g.add_variable(dtype, (256, 16), name="x")
    sp.ops.map_linearly(g, x)
    prog = P.Sequence()
    y = reduce_sum(g, x, prog, dims=0)
    return g, x, y, sp.Engine(g, [prog], options={"engine.reference": reference})


def test_intermediate_stage_cycles_hand_worked():
    # Stage 1 leaves 64 rows of 16 partials (one a tile). 64 rows feed each output: not below
    # 2 * sqrt(64) = 16, and 64 * 16 = 1024 partials > 32 * 16 outputs: an intermediate stage.
    # Split: grain 2 floats x 2 (ADD) = 4 columns, 4 regions; ideal piece 1024 / 64 = 16
    # partials; a region has 64 rows x 4 = 256: N = 16, but 256 / 16 < 64 partials, so
    # N = 256 / 64 = 4 pieces of 16 rows: 16 vertices on 16 tiles, each 16 rows x 4 columns of
    # evenly spaced rows (STRIDED_REDUCE): elemsPerLoop gcd(min(4, 2), 16) = 2, busiest worker
    # 2 columns = 1 loop of 3 + (3 + 2) + 3 + 15 = 26; 4 + 11 + 26 = 41 a worker, 6 x 41 + 11.
    # Then 4 rows feed each output (< 16, but on 16 tiles only: 4 x 16 = 64 partials, not
    # > 32 x 16): the output stage, 8 tiles of 2 columns, 4 evenly spaced rows:
    # 3 + 5 + 3 + 3 = 14, 4 + 11 + 14 = 29, 6 x 29 + 11. Without the intermediate stage it
    # reduced all 64 rows there: 3 + 5 + 3 + 63 = 74, 6 x 89 + 11 = 545.
    _, _, _, eng = _sum_over_rows(sp.float32)
    eng.run(0)
    sup = sp.targets.ipu_model(tiles=TILES).supervisor_overhead_cycles
    steps = {s["name"]: s["compute_cycles"] for s in eng.report.steps}
    assert steps["reduce_sum/stage0"] == 6 * 41 + sup
    assert steps["reduce_sum/reduce"] == 6 * 29 + sup


@pytest.mark.parametrize("reference", [False, True])
def test_staged_float_sum_matches_numpy(reference):
    _, x, y, eng = _sum_over_rows(sp.float32, reference)
    v = np.random.default_rng(1).standard_normal((256, 16)).astype(np.float32)
    eng.write_tensor(x, v)
    eng.run(0)
    want = v.astype(np.float64).sum(0)
    bound = contraction_bound(np.abs(v).astype(np.float64).sum(0), 256)
    assert np.all(np.abs(eng.read_tensor(y) - want) <= bound)


def test_staged_integer_sum_is_exact():
    _, x, y, eng = _sum_over_rows(sp.int32)
    v = np.random.default_rng(2).integers(-(2**20), 2**20, (256, 16)).astype(np.int32)
    eng.write_tensor(x, v)
    eng.run(0)
    np.testing.assert_array_equal(eng.read_tensor(y), v.sum(0, dtype=np.int32))


def _rows(fan_in: int, tiles_used: int) -> tuple[PartialRows, int]:
    """Blocks of 4 outputs, each covered by ``fan_in`` rows; the rows on ``tiles_used`` tiles."""
    blocks = -(-tiles_used // fan_in)
    n = blocks * fan_in
    lo = np.repeat(np.arange(blocks) * 4, fan_in)
    return PartialRows(lo, np.full(n, 4), np.arange(n) * 4, np.arange(n) % tiles_used), 4 * blocks


@pytest.mark.parametrize(("fan_in", "tiles_used", "staged"), [
    (40, 1200, False),  # fan-in < 2 sqrt(1472) = 76.7 on > 1104 tiles: straight to the output
    (40, 1000, True),   # on fewer tiles: 40 partials an output > 32, another stage
    (80, 1200, True),   # fan-in too high for the shortcut
    (20, 1000, False),  # 20 partials an output <= 32: the output stage
])
def test_next_step_follows_popops_rule(fan_in, tiles_used, staged):
    rows, outputs = _rows(fan_in, tiles_used)
    assert needs_intermediate(rows, outputs, 1472) is staged


def test_full_reduction_on_gc200_hand_worked():
    """A sum of everything, 8 floats a tile on a GC200: 1,472 partials for one output. Stage 0
    (one column region): ideal piece 1472 / 1472 = 1 partial, N = 1472, but pieces keep 64
    partials: N = 1472 / 64 = 23 pieces of 64 rows, 1 column, evenly spaced (step 1):
    elemsPerLoop gcd(2, 1) = 1, 3 + 5 + 3 + 63 = 74, worker 4 + 11 + 74 = 89. Then 23 partials
    (on 23 tiles, and 23 <= 32): the output stage, 3 + 5 + 3 + 22 = 33, 4 + 11 + 33 = 48. Before,
    one tile received all 1,472 partials and reduced them in one vertex."""
    target = sp.targets.GC200
    g = sp.Graph(target)
    x = g.add_variable(sp.float32, (target.num_tiles * 8,), name="x")
    sp.ops.map_linearly(g, x)
    prog = P.Sequence()
    reduce_sum(g, x, prog)
    eng = sp.Engine(g, [prog], estimate_only=True)
    eng.run(0)
    steps = {s["name"]: s["compute_cycles"] for s in eng.report.steps}
    sup = target.supervisor_overhead_cycles
    assert steps["reduce_sum/stage0"] == 6 * 89 + sup
    assert steps["reduce_sum/reduce"] == 6 * 48 + sup
    stage0 = [c for c in eng.executable.compute_sets.values() if c.compute_set.name == "reduce_sum/stage0"]
    assert stage0 and stage0[0].num_vertices == 23
