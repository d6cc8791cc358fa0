"""``reduce(..., out_dtype=)`` (popops ``reduce(graph, in, outType, dims, params)``): the last
stage writes the fp32 accumulator in the output type, rounded once, with no cast compute set.

Oracles: numpy's round-to-nearest-even ``float32 -> float16`` of the fp32 result the same reduce
gives without ``out_dtype`` (one rounding of the same accumulator), the float64 sum within
:func:`contraction_bound`, and hand-picked fp16 values whose fp32 sum fp16 cannot hold.
"""

from __future__ import annotations

import numpy as np
import pytest

import softipu as sp
from softipu import program as P
from softipu.codelets._common import contraction_bound
from softipu.ops.common import OpError
from softipu.ops.reduce import ReduceOp, reduce, reduce_max, reduce_mean, reduce_sum

CASES = [  # (tiles, shape, dims): inner, outer, both sides, a full reduction with an intermediate stage
    (8, (48, 40), 1),
    (8, (48, 40), 0),
    (8, (6, 10, 12), (0, 2)),
    (64, (256, 64), None),
]


def _one(tiles, shape, dtype, fn, dims, out_dtype, reference):
    """``fn`` of a fresh linearly mapped ``x`` (same graph up to the reduce whatever ``out_dtype``)."""
    g = sp.Graph(sp.targets.ipu_model(tiles=tiles, bytes_per_tile=256 * 1024))
    x = g.add_variable(dtype, shape, name="x")
    sp.ops.map_linearly(g, x, grain_size=2)
    prog = P.Sequence()
    kwargs = {} if out_dtype is None else {"out_dtype": out_dtype}
    y = fn(g, x, prog, dims=dims, **kwargs)
    return g, x, prog, y


def _run(g, x, prog, y, a, reference):
    eng = sp.Engine(g, [prog], options={"engine.reference": reference})
    eng.write_tensor(x, a)
    eng.run(0)
    return eng.read_tensor(y)


@pytest.mark.parametrize("reference", [False, True])
@pytest.mark.parametrize("fn", [reduce_sum, reduce_mean, reduce_max])
@pytest.mark.parametrize(("tiles", "shape", "dims"), CASES)
def test_fp32_to_fp16_rounds_the_fp32_result_once(tiles, shape, dims, fn, reference) -> None:
    a = (np.random.default_rng(7).standard_normal(shape) * 3).astype(np.float32)
    wide = _run(*_one(tiles, shape, sp.float32, fn, dims, None, reference), a, reference)
    g, x, prog, y = _one(tiles, shape, sp.float32, fn, dims, sp.float16, reference)
    assert y.dtype is sp.float16
    narrow = _run(g, x, prog, y, a, reference)
    assert narrow.dtype == np.float16
    np.testing.assert_array_equal(narrow, wide.astype(np.float16))  # numpy's one RNE rounding
    if fn is reduce_sum:  # and the sum itself, against float64
        exact = a.astype(np.float64).sum(axis=dims)
        bound = contraction_bound(np.abs(a.astype(np.float64)).sum(axis=dims), a.size // np.size(exact))
        half_ulp = np.spacing(np.abs(exact).astype(np.float16)).astype(np.float64) / 2
        assert np.all(np.abs(narrow.astype(np.float64) - exact) <= bound + half_ulp + 1e-30)


@pytest.mark.parametrize("reference", [False, True])
@pytest.mark.parametrize(("tiles", "shape", "dims"), CASES)
def test_fp16_to_fp32_keeps_the_fp32_accumulator(tiles, shape, dims, reference) -> None:
    """fp16 values summed in fp32 and written fp32: no rounding to fp16 anywhere. Each output's
    first element is 2048 and another is 1 (the rest 0): the sum 2049 is exact in fp32 but
    rounds to 2048 in fp16 (its spacing there is 2), which reduce-then-cast gives."""
    axes = tuple(range(len(shape))) if dims is None else tuple(np.atleast_1d(dims))
    at = np.indices(shape)  # each element's place among its output's elements
    place = np.ravel_multi_index(tuple(at[d] for d in axes), tuple(shape[d] for d in axes))
    a = np.zeros(shape, np.float16)
    a[place == 0] = 2048
    a[place == place.max()] = 1
    g, x, prog, y = _one(tiles, shape, sp.float16, reduce_sum, dims, sp.float32, reference)
    got = _run(g, x, prog, y, a, reference)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.full(got.shape, 2049, np.float32))
    old = _run(*_one(tiles, shape, sp.float16, reduce_sum, dims, None, reference), a, reference)
    np.testing.assert_array_equal(old, np.full(old.shape, 2048, np.float16))  # rounded once, to fp16


def test_random_fp16_sums_in_fp32_within_the_bound() -> None:
    a = np.random.default_rng(3).standard_normal((40, 96)).astype(np.float16)
    g, x, prog, y = _one(8, a.shape, sp.float16, reduce_sum, 1, "float32", False)
    got = _run(g, x, prog, y, a, False).astype(np.float64)
    exact = a.astype(np.float64).sum(axis=1)
    assert np.all(np.abs(got - exact) <= contraction_bound(np.abs(a.astype(np.float64)).sum(axis=1), 96))


def test_no_cast_compute_set() -> None:
    """The output type costs no compute set of its own: as many as the reduce in its input type."""
    def count(out_dtype):
        g, _, prog, _ = _one(8, (48, 40), sp.float32, reduce_sum, 0, out_dtype, False)
        return len(g.compute_sets)

    assert count(sp.float16) == count(None)


def test_empty_reduction_gives_the_identity_in_out_dtype() -> None:
    g, x, prog, y = _one(4, (0, 5), sp.float32, reduce_sum, 0, sp.float16, False)
    got = _run(g, x, prog, y, np.zeros((0, 5), np.float32), False)
    assert got.dtype == np.float16 and np.all(got == 0)


@pytest.mark.parametrize(("dtype", "out_dtype", "words"), [
    (sp.int32, sp.float32, ["int32", "float32", "its own dtype"]),
    (sp.float32, sp.int32, ["float16 or float32"]),
    (sp.float32, "complex", ["out_dtype", "'complex'"]),
])
def test_bad_out_dtype_is_a_clear_error(dtype, out_dtype, words) -> None:
    g = sp.Graph(sp.targets.ipu_model(tiles=2))
    x = g.add_variable(dtype, (3, 4), name="x")
    sp.ops.map_linearly(g, x)
    with pytest.raises(OpError) as info:
        reduce(g, x, P.Sequence(), dims=1, op=ReduceOp.MAX, out_dtype=out_dtype)
    for w in words:
        assert w in str(info.value)
