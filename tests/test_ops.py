"""Every op record (tests/records/) against its numpy oracle, on small targets and a GC200."""

from __future__ import annotations

import numpy as np
import pytest
from tests.records import OpRecord, all_records

import softipu as sp
from softipu import program as P

RECORDS = all_records()
CASES = [pytest.param(r, shapes, dtype, id=f"{r.name}-{dtype.name}-{'x'.join(map(str, shapes))}")
         for r in RECORDS for shapes in r.shapes for dtype in r.dtypes]


def run_record(record: OpRecord, shapes, dtype: sp.DType, target: sp.Target, seed: int = 0):
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
    eng = sp.Engine(g, [prog])
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
