"""rows_of's irregular rows of a strided 1-D tensor as a slab layout (no int64 per element)."""

import numpy as np
import pytest

import softipu as sp
from softipu.compiler.conflicts import field_intervals
from softipu.ops.common import rows_of


def _oracle(offset: int, stride: int, starts: np.ndarray, length: int) -> np.ndarray:
    return offset + (starts[:, None] + np.arange(length)) * stride


@pytest.mark.parametrize("stride", [1, 2])
def test_irregular_rows_are_slabs_with_the_same_addresses(stride: int) -> None:
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    x = g.add_variable(sp.float16, (4000,), name="x")
    flat = x[3::stride]
    # steps 80, 80, 96, 80, 80, 96 ... (a vocabulary-wide logits tensor's tile pieces), then a lone row
    starts = np.concatenate((np.cumsum([0] + [80, 80, 96] * 5), [1500]))
    t = rows_of(flat, starts, 70)
    assert t.slabs is not None and len(t.slabs.pieces) < starts.size
    want = _oracle(flat.offset, stride, starts, 70)
    np.testing.assert_array_equal(t.addresses(), want)
    s, e, row = field_intervals(t)  # runs of consecutive addresses, in element order
    for r in range(starts.size):
        mine = row == r
        runs = [np.arange(a, b) for a, b in zip(s[mine], e[mine], strict=True)]
        np.testing.assert_array_equal(np.concatenate(runs), want[r])
    assert s.size == starts.size * (1 if stride == 1 else 70)


def test_short_rows_keep_an_index() -> None:
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    x = g.add_variable(sp.float32, (400,), name="x")
    starts = np.array([0, 5, 7, 20, 21, 40])
    t = rows_of(x, starts, 3)
    assert t.slabs is None and not t.is_strided
    np.testing.assert_array_equal(t.addresses(), _oracle(0, 1, starts, 3))
