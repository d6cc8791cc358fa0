"""The chains' table of field extents (engine/chains.py ``_field_extents``, read by the chains'
read table and by engine/constants.py's written spans) against each field tensor's own addresses."""

from __future__ import annotations

import numpy as np

import softipu as sp
from softipu import program as P
from softipu.engine.chains import _field_extents
from softipu.graph.vertex import Direction

TARGET = sp.targets.ipu_model(tiles=8, bytes_per_tile=128 * 1024)


def _executable():
    """A split-K matmul and a batched one (strided fields), an add reading rows picked by an index
    (indexed fields) and one on a transposed view, in float32, and a float16 cast."""
    g = sp.Graph(TARGET)
    a = g.add_variable(sp.float32, (30, 700), name="a")
    b = g.add_variable(sp.float32, (700, 50), name="b")
    a3 = g.add_variable(sp.float32, (3, 20, 96), name="a3")
    b3 = g.add_variable(sp.float32, (96, 24), name="b3")
    x = g.add_variable(sp.float32, (64, 8), name="x")
    for t in (a, b, a3, b3, x):
        sp.ops.map_linearly(g, t)
    prog = P.Sequence()
    c = sp.ops.matmul(g, a, b, prog)
    sp.ops.matmul(g, a3, b3, prog)
    sp.ops.add(g, x[np.array([5, 1, 9, 30, 2, 7, 60, 11])], x[0:8], prog)
    d = sp.ops.add(g, c.T, c.T, prog)
    sp.ops.cast(g, d, sp.float16, prog)
    return sp.Engine(g, [prog], estimate_only=True).executable


def _oracle(executable, dtype, writes_only):
    rows = []
    for cs_id, compiled in executable.compute_sets.items():
        for grp in compiled.groups:
            for name, f in grp.codelet.fields.items():
                if f.direction is Direction.PARAM or f.dtype != dtype or (writes_only and not f.direction.writes):
                    continue
                for t in grp.tensors(name):
                    if t.numel:
                        addr = t.addresses()
                        rows.append((cs_id, int(addr.min()), int(addr.max()) + 1))
    return sorted(rows)


def test_field_extents_are_each_field_tensors_lowest_and_highest_address():
    ex = _executable()
    for dtype in (sp.float32, sp.float16):
        for writes_only in (False, True):
            got = sorted(map(tuple, _field_extents(ex, dtype, writes_only).tolist()))
            assert got == _oracle(ex, dtype, writes_only), (dtype, writes_only)
    assert len(_oracle(ex, sp.float32, False)) > len(_oracle(ex, sp.float32, True)) > 0
    assert _oracle(ex, sp.float16, True)
    tensors = [t for cs in ex.compute_sets.values() for grp in cs.groups
               for name, f in grp.codelet.fields.items() if f.direction is not Direction.PARAM
               for t in grp.tensors(name)]
    assert any(t.is_strided for t in tensors) and any(not t.is_strided for t in tensors)  # both paths
