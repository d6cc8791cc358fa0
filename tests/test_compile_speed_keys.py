"""Structure keys built with less work, telling apart exactly what they told apart (issue 11's
training compile).

* An indexed tensor gathering from several variables is keyed by its runs (where each begins,
  its variable's number, its first offset), not element by element. Oracle: the per-element
  sequence of (variable number, offset in it) written out with numpy: equal sequences give
  equal keys, different ones different keys, wherever a run of addresses crosses from one
  variable into the next.
* A priced copy's key is computed once, for its traffic and for its outlined code alike.
"""

from __future__ import annotations

import numpy as np
import pytest

import softipu as sp
from softipu import program as P
from softipu.compiler import passes
from softipu.compiler.structure import StructureKeys, _Unkeyable, _Used


def _graph():
    """Variables p0..p3 of 8 elements, p0/p1 adjacent, a gap variable, then p2/p3 adjacent."""
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    p0, p1 = (g.add_variable(sp.float32, (8,), name=f"p{i}") for i in (0, 1))
    g.add_variable(sp.float32, (5,), name="gap")
    p2, p3 = (g.add_variable(sp.float32, (8,), name=f"p{i}") for i in (2, 3))
    return g, [p0, p1, p2, p3]


def _gather(g, pairs):
    """An indexed (len(pairs),) tensor of (variable, element) pairs."""
    index = np.array([v.offset + e for v, e in pairs], np.int64)
    return sp.Tensor(g, sp.float32, (index.size,), 0, (), index)


def _sequence(t, variables):
    """(number, offset) per element, variables numbered in address order among those used."""
    used = sorted({v.name: v for v in variables if any(v.offset <= a < v.offset + v.numel
                                                        for a in t.index.tolist())}.values(),
                  key=lambda v: v.offset)
    out = []
    for a in t.index.tolist():
        n = next(i for i, v in enumerate(used) if v.offset <= a < v.offset + v.numel)
        out.append((n, a - used[n].offset))
    return out


def _key(g, t):
    return StructureKeys(g, {})._tensor(t, _Used())


CASES = {
    # the last three of p0, the first three of p1: one run of addresses over two variables
    "across the join": lambda p: [(p[0], 5), (p[0], 6), (p[0], 7), (p[1], 0), (p[1], 1), (p[1], 2)],
    "apart": lambda p: [(p[2], 5), (p[2], 6), (p[2], 7), (p[3], 0), (p[3], 1), (p[3], 2)],
    "shifted": lambda p: [(p[2], 4), (p[2], 5), (p[2], 6), (p[3], 0), (p[3], 1), (p[3], 2)],
    "interleaved": lambda p: [(p[0], 0), (p[1], 0), (p[0], 1), (p[1], 1), (p[0], 2), (p[1], 2)],
    "interleaved apart": lambda p: [(p[2], 0), (p[3], 0), (p[2], 1), (p[3], 1), (p[2], 2), (p[3], 2)],
    "runs of two": lambda p: [(p[0], 0), (p[0], 1), (p[1], 4), (p[1], 5), (p[0], 6), (p[0], 7)],
    "runs of two apart": lambda p: [(p[2], 0), (p[2], 1), (p[3], 4), (p[3], 5), (p[2], 6), (p[2], 7)],
    "reversed": lambda p: [(p[1], 2), (p[1], 1), (p[1], 0), (p[0], 7), (p[0], 6), (p[0], 5)],
}


def test_keys_of_gathers_across_variables_follow_their_element_sequences():
    g, p = _graph()
    tensors = {name: _gather(g, make(p)) for name, make in CASES.items()}
    for name, t in tensors.items():
        assert _key(g, t)[0] == "indexed across", name
    for a, ta in tensors.items():
        for b, tb in tensors.items():
            same = _sequence(ta, p) == _sequence(tb, p)
            assert (_key(g, ta) == _key(g, tb)) == same, (a, b)
    # the oracle's own verdicts, worked by hand: a run over the join is the same sequence apart
    assert _sequence(tensors["across the join"], p) == _sequence(tensors["apart"], p)
    assert _sequence(tensors["shifted"], p) != _sequence(tensors["apart"], p)


def test_an_address_outside_every_variable_gets_no_key():
    g, p = _graph()
    t = sp.Tensor(g, sp.float32, (2,), 0, (), np.array([p[0].offset, p[3].offset + 8], np.int64))
    with pytest.raises(_Unkeyable):
        StructureKeys(g, {})._tensor(t, _Used())


def test_a_priced_copy_is_keyed_once(monkeypatch):
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    prog = P.Sequence()
    for k in range(3):
        a = g.add_variable(sp.float32, (16,), name=f"a{k}")
        b = g.add_variable(sp.float32, (16,), name=f"b{k}")
        g.set_tile_mapping(a, 0)
        g.set_tile_mapping(b, 1)
        prog.add(P.Copy(a, b))
    calls = []
    copy = StructureKeys.copy
    monkeypatch.setattr(StructureKeys, "copy", lambda self, s, d: calls.append(s.name) or copy(self, s, d))
    exe = passes.compile_graph(g, [prog], outline=True)
    assert len(calls) == 3  # one per copy: its traffic and its outlined code share the key
    assert [s.bytes_exchanged for s in exe.steps] == [64, 64, 64]
