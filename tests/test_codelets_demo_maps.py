"""Fused map operands shaped once a codelet (``_shaper``): the views a run gets, by hand."""

from __future__ import annotations

import numpy as np

from softipu.codelets.elementwise import Operand, _shaper

F, R, C, S = Operand.FULL, Operand.ROW, Operand.COL, Operand.SCALAR


def test_row_col_scalar_and_full_operands_become_k_by_c_blocks():
    out = np.zeros((4, 6), np.float32)  # 4 vertices of 2 rows x 3: the row operand's length
    full, row = np.arange(24, dtype=np.float32).reshape(4, 6), np.arange(12, dtype=np.float32).reshape(4, 3)
    col, scalar = np.arange(8, dtype=np.float32).reshape(4, 2), np.arange(4, dtype=np.float32).reshape(4, 1)
    view, (f, r, c, s) = _shaper((F, R, C, S))(out, [full, row, col, scalar])
    assert view.shape == (4, 2, 3) and np.shares_memory(view, out)
    assert (f.shape, r.shape, c.shape, s.shape) == ((4, 2, 3), (4, 1, 3), (4, 2, 1), (4, 1, 1))
    np.add(np.add(f, r), np.add(c, s), out=view)  # element [v, i, j] = full + row[j] + col[i] + scalar
    want = [[full[v, 3 * i + j] + row[v, j] + col[v, i] + scalar[v, 0] for i in range(2) for j in range(3)]
            for v in range(4)]
    assert np.array_equal(out, np.array(want, np.float32))


def test_without_a_row_operand_the_first_per_row_operand_cuts_the_block():
    out = np.zeros((2, 6), np.float32)
    view, (c,) = _shaper((C,))(out, [np.ones((2, 3), np.float32)])  # 3 rows of 6 // 3 = 2
    assert view.shape == (2, 3, 2) and c.shape == (2, 3, 1)


def test_add_asks_the_float16_path_only_for_a_float16_result(monkeypatch):
    from softipu.codelets.elementwise import _numerics

    asked = []
    real = _numerics._halves_in_float32
    monkeypatch.setattr(_numerics, "_halves_in_float32", lambda f, xs, out: asked.append(out) or real(f, xs, out))
    add = _numerics._ufunc(np.add)
    a32, b32 = np.float32([1.5, -0.0, 3e38]), np.float32([2.25, 0.0, 3e38])
    out32 = np.empty(3, np.float32)
    with np.errstate(over="ignore"):
        add(a32, b32, out=out32)
    assert asked == [] and np.array_equal(out32, np.float32([3.75, 0.0, np.inf]))
    a16, b16 = np.arange(4096, dtype=np.float16), np.full(4096, 0.1, np.float16)
    out16 = np.empty(4096, np.float16)
    add(a16, b16, out=out16)
    assert len(asked) == 1 and np.array_equal(out16.view(np.uint16), np.add(a16, b16).view(np.uint16))
    with np.errstate(over="ignore"):
        add(a32, b32)  # no out: the operands decide
    assert len(asked) == 2
