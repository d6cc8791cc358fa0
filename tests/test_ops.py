"""Every op record (tests/records/) against its numpy oracle, on small targets and a GC200."""

from __future__ import annotations

import numpy as np
import pytest
from tests.records import OpRecord, all_records

import softipu as sp
from softipu import program as P
from softipu.codelets._common import contraction_bound

RECORDS = all_records()
CASES = [pytest.param(r, shapes, dtype, id=f"{r.name}-{dtype.name}-{'x'.join(map(str, shapes))}")
         for r in RECORDS for shapes in r.shapes for dtype in r.dtypes]


def run_record(record: OpRecord, shapes, dtype: sp.DType, target: sp.Target, seed: int = 0,
               reference: bool = False):
    g = sp.Graph(target)
    rng = np.random.default_rng(seed)
    arrays, tensors = [], []
    for i, shape in enumerate(shapes):
        in_dtype = record.dtype_of_input(i, dtype)
        arrays.append(record.make_input(rng, shape, in_dtype, i))
        t = g.add_variable(in_dtype, shape, name=f"in{i}")
        sp.ops.map_linearly(g, t)
        tensors.append(t)
    prog = P.Sequence()
    out = record.op(g, *tensors, prog)
    outs = out if isinstance(out, tuple) else (out,)
    eng = sp.Engine(g, [prog], {"engine.reference": reference})
    for t, a in zip(tensors, arrays, strict=True):
        eng.write_tensor(t, a)
    eng.run(0)
    got = [eng.read_tensor(o) for o in outs]
    expected = record.oracle(*arrays)
    expected = expected if isinstance(expected, tuple) else (expected,)
    return got, expected, eng


def check(record: OpRecord, dtype: sp.DType, got, expected) -> None:
    assert len(got) == len(expected), f"{record.name}: {len(got)} outputs, oracle has {len(expected)}"
    for g_arr, e_arr in zip(got, expected, strict=True):
        e_arr = np.asarray(e_arr)
        assert g_arr.shape == e_arr.shape, f"{record.name}: shape {g_arr.shape} != {e_arr.shape}"
        if record.exact or not np.issubdtype(g_arr.dtype, np.floating):
            np.testing.assert_array_equal(g_arr, e_arr.astype(g_arr.dtype), err_msg=record.name)
        else:
            rtol, atol = record.tol(dtype)
            np.testing.assert_allclose(g_arr.astype(np.float64), e_arr.astype(np.float64), rtol=rtol,
                                       atol=atol, equal_nan=True, err_msg=record.name)


@pytest.mark.parametrize(("record", "shapes", "dtype"), CASES)
def test_op_matches_oracle(record: OpRecord, shapes, dtype: sp.DType) -> None:
    got, expected, _ = run_record(record, shapes, dtype, sp.targets.ipu_model(tiles=8, bytes_per_tile=256 * 1024))
    check(record, dtype, got, expected)


@pytest.mark.parametrize("record", [pytest.param(r, id=r.name) for r in RECORDS])
def test_op_on_a_full_gc200(record: OpRecord) -> None:
    shapes, dtype = record.shapes[-1], record.dtypes[0]
    got, expected, eng = run_record(record, shapes, dtype, sp.targets.GC200, seed=1)
    check(record, dtype, got, expected)
    assert eng.report.fits


def _engines_agree(record: OpRecord, fast, ref, inputs) -> None:
    """Contractions (matmul, conv) within the written rounding bound of design.md principle 6,
    the terms' magnitudes from the oracle on the inputs' magnitudes (it is linear in each
    operand), the reduction length bounded by the largest input's size; everything else bitwise."""
    if not record.name.startswith(("matmul", "conv")):
        for f, r in zip(fast, ref, strict=True):
            assert f.tobytes() == r.tobytes(), f"{record.name}: fast and reference engines differ"
        return
    terms = record.oracle(*[np.abs(x).astype(np.float64) for x in inputs])
    terms = terms if isinstance(terms, tuple) else (terms,)
    k = max(x.size for x in inputs)
    for f, r, t in zip(fast, ref, terms, strict=True):
        f64, r64 = f.astype(np.float64), r.astype(np.float64)
        finite = np.isfinite(f64) & np.isfinite(r64)  # inf and NaN results do not depend on the order
        np.testing.assert_array_equal(f64[~finite], r64[~finite], err_msg=record.name)
        bound = contraction_bound(np.abs(np.asarray(t, np.float64)), k, np.float32, f.dtype)
        assert np.all(np.abs(f64[finite] - r64[finite]) <= np.broadcast_to(bound, f.shape)[finite]), \
            f"{record.name}: fast and reference engines differ beyond the bound"


@pytest.mark.parametrize("record", [pytest.param(r, id=r.name) for r in RECORDS])
def test_fast_engine_agrees_with_the_reference(record: OpRecord) -> None:
    target = sp.targets.ipu_model(tiles=8, bytes_per_tile=256 * 1024)
    shapes, dtype = record.shapes[0], record.dtypes[0]
    fast, _, _ = run_record(record, shapes, dtype, target)
    ref, _, _ = run_record(record, shapes, dtype, target, reference=True)
    rng = np.random.default_rng(0)
    inputs = [record.make_input(rng, s, record.dtype_of_input(i, dtype), i) for i, s in enumerate(shapes)]
    _engines_agree(record, fast, ref, inputs)
