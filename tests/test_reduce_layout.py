"""An inner reduction of a channels-last input (a convolution's output: global average pooling)
is planned over popops' ``(R, outputs)`` view: one vertex per output run, not one per element.

popops ``reduce`` always shuffles the reduced dims outermost and reduces a ``(R, outputs)`` 2-D
view, so a tile holding a run of channels at one spatial position holds one contiguous region of
that view. softipu's ``(outputs, R)`` view cuts the same tile into one-element pieces, each a
vertex paying a whole vertex's fixed cost (ResNet-50's pool at batch 4: 273 of them per tile).
"""

from __future__ import annotations

import numpy as np
import pytest

import softipu as sp
from softipu import program as P
from softipu.codelets._common import contraction_bound
from softipu.ops.reduce import ReduceOp, reduce, reduce_mean


def _nhwc(tiles: int, shape, dtype, grain: int):
    g = sp.Graph(sp.targets.ipu_model(tiles=tiles, bytes_per_tile=256 * 1024))
    x = g.add_variable(dtype, shape, name="x")
    sp.ops.map_linearly(g, x.transpose(0, *range(2, len(shape)), 1), grain_size=grain)
    return g, x


def test_pool_of_channels_last_input_costs_one_vertex_per_tile_by_hand() -> None:
    """(1, 8, 2, 2) fp32 over 4 tiles, tile t holding the 8 channels of position t. In the
    (4 rows, 8 outputs) view each tile holds one row, no tile two rows of an output: the only
    stage reduces at the outputs (mapped 2 per tile, fp32's vector width). Per tile one
    ReduceColumnsRaw of 4 rows x 2 columns, rows evenly spaced: poplibs' strided reduce,
    4 + 11 + one loop of 2 outputs (3 + 5 after the loop + 3 + 3 rows) = 29 worker cycles,
    6 workers x 29 + the supervisor's overhead = 174 + 11 cycles. The
    (8 outputs, 4) view would have made 8 one-element ReduceSegments per tile: 8 x (6 x (30 + 1
    + 8) + 11) = 1,960 cycles, then a gather stage."""
    g, x = _nhwc(4, (1, 8, 2, 2), sp.float32, 8)
    assert g.tile_of(x)[0, :, 1, 0].tolist() == [2] * 8
    prog = P.Sequence()
    y = reduce_mean(g, x, prog, dims=(2, 3))
    eng = sp.Engine(g, [prog], estimate_only=True)
    eng.run(0)
    steps = [s for s in eng.executable.steps if s.compute_cycles]
    assert [s.name for s in steps] == ["reduce_mean/reduce"]
    assert steps[0].compute_cycles == 6 * (4 + 11 + (3 + 5 + 3 + 3)) + g.target.supervisor_overhead_cycles
    assert np.bincount(g.tile_of(y).reshape(-1)).tolist() == [2] * 4


def test_channels_first_input_keeps_the_segment_plan() -> None:
    """A row-major (NCHW) mapping holds whole segments on a tile: the (outputs, R) plan stays."""
    g = sp.Graph(sp.targets.ipu_model(tiles=4, bytes_per_tile=256 * 1024))
    x = g.add_variable(sp.float32, (2, 8, 2, 2), name="x")
    sp.ops.map_linearly(g, x, grain_size=4)
    prog = P.Sequence()
    reduce_mean(g, x, prog, dims=(2, 3))
    eng = sp.Engine(g, [prog], estimate_only=True)
    eng.run(0)
    assert [s.name for s in eng.executable.steps if s.compute_cycles] == ["reduce_mean/partials",
                                                                         "reduce_mean/reduce"]


@pytest.mark.parametrize("reference", [False, True])
@pytest.mark.parametrize(("shape", "dims", "dtype"), [
    ((2, 64, 7, 7), (2, 3), sp.float16),  # a global average pool: one stage at the outputs
    ((3, 40, 5), (2,), sp.float32),
    ((4, 48, 3, 5), (2, 3), sp.float32),
    ((1, 16, 6, 6), (2, 3), sp.float32),  # tiles hold two rows of some outputs: two stages
])
def test_channels_last_reductions_match_numpy(shape, dims, dtype, reference) -> None:
    g, x = _nhwc(16, shape, dtype, 16 if dtype is sp.float16 else 8)
    prog = P.Sequence()
    mean = reduce_mean(g, x, prog, dims=dims)
    top = reduce(g, x, prog, dims=dims, op=ReduceOp.MAX)
    eng = sp.Engine(g, [prog], options={"engine.reference": reference})
    a = np.random.default_rng(3).standard_normal(shape).astype(dtype.numpy)
    eng.write_tensor(x, a)
    eng.run(0)
    k = int(np.prod([shape[d] for d in dims]))
    exact = a.astype(np.float64).mean(axis=dims)
    bound = contraction_bound(np.abs(a.astype(np.float64)).sum(axis=dims), k) / k
    bound = bound + (np.abs(exact) * 2.0**-10 if dtype is sp.float16 else 0)  # the fp16 result
    assert np.all(np.abs(eng.read_tensor(mean) - exact) <= bound)
    np.testing.assert_array_equal(eng.read_tensor(top), a.max(axis=dims))
