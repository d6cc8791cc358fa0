"""Grouped views (a reshape of a strided view that is not one strided view) against numpy.

The oracle is numpy on an explicit address array: ``A = np.arange(x.numel).reshape(x.shape) + PAD``
holds every element's address, and any chain of views of ``x`` must address ``op(A)`` for the same
numpy ``op`` chain. The views must also stay structured (no per-element index built) until
something asks for their addresses, and both engines must read and write them as numpy does.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

import softipu as sp
from softipu import program as P
from softipu.graph.grouped import refine
from softipu.graph.tensor import _INDEX_SLOT, Tensor

PAD = 3


def variable(shape, g=None):
    g = g or sp.Graph(sp.targets.ipu_model(tiles=4))
    sp.ops.map_linearly(g, g.add_variable(sp.float32, (PAD,), name="pad"))
    x = g.add_variable(sp.float32, shape, name="x")
    return x, (np.arange(x.numel, dtype=np.int64) + PAD).reshape(shape)


def built(t: Tensor) -> bool:
    return _INDEX_SLOT.__get__(t, Tensor) is not None


def check(t: Tensor, expected: np.ndarray) -> None:
    assert t.shape == expected.shape
    runs = t.element_runs()  # in element order, from the structure alone
    flat = np.concatenate([np.arange(s, s + n) for s, n in zip(*runs, strict=True)]) if runs[0].size \
        else np.zeros(0, np.int64)
    np.testing.assert_array_equal(flat, expected.ravel())
    starts, lengths = t.runs()
    covered = np.concatenate([np.arange(s, s + n) for s, n in zip(starts, lengths, strict=True)]) \
        if starts.size else np.zeros(0, np.int64)
    np.testing.assert_array_equal(np.sort(covered), np.sort(expected.ravel()))
    assert t.repeats_elements() == (np.unique(expected).size < expected.size)
    assert t.slabs is None or not built(t), "a structural fact built the per-element index"
    np.testing.assert_array_equal(t.addresses(), expected)


def test_attention_context_reshape_is_grouped_not_indexed():
    """(2, 16, 128, 64) -> permute(0, 2, 1, 3) -> reshape (2, 128, 1024): no int64 per element."""
    x, a = variable((2, 16, 8, 64))
    v = x.transpose(0, 2, 1, 3).reshape(2, 8, 1024)
    assert v.slabs is not None and not built(v)
    check(v, a.transpose(0, 2, 1, 3).reshape(2, 8, 1024))
    # its rows, a column block, a 2-D reshape and a transpose stay structured too
    w = v.reshape(16, 1024)
    check(w[3], a.transpose(0, 2, 1, 3).reshape(16, 1024)[3])
    check(w[:, 64:192], a.transpose(0, 2, 1, 3).reshape(16, 1024)[:, 64:192])
    check(w.T, a.transpose(0, 2, 1, 3).reshape(16, 1024).T)
    # and reshaping back is the strided view again
    back = v.reshape(2, 8, 16, 64)
    assert back.is_strided
    check(back, a.transpose(0, 2, 1, 3))


def test_interleaved_factors_fall_back_to_an_index():
    x, a = variable((2, 3))
    v = x.T.reshape(2, 3)  # (3, 2) with strides (1, 3) read as (2, 3): no grouping
    assert refine(0, (3, 2), (1, 3), (2, 3)) is None
    np.testing.assert_array_equal(v.addresses(), a.T.reshape(2, 3))


@st.composite
def chains(draw):
    ndim = draw(st.integers(1, 4))
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=ndim, max_size=ndim)))
    perm = tuple(draw(st.permutations(range(ndim))))
    key = tuple(slice(draw(st.integers(0, shape[a] - 1)), None, draw(st.integers(1, 2))) for a in perm)
    ops = draw(st.lists(st.tuples(st.sampled_from(["reshape", "transpose", "index", "broadcast", "reverse"]),
                                  st.randoms(use_true_random=False)), max_size=5))
    return shape, perm, key, ops


def _factor(n: int, rng) -> tuple[int, ...]:
    if n == 0:
        return (2, 0)
    out = []
    while n > 1 and len(out) < 4:
        divisors = [d for d in range(2, n + 1) if n % d == 0]
        d = rng.choice(divisors)
        out.append(d)
        n //= d
    out.append(n) if n > 1 else None
    if rng.random() < 0.3:
        out.insert(rng.randrange(len(out) + 1), 1)
    return tuple(out) or (1,)


def _apply(op: str, rng, t: Tensor, a: np.ndarray) -> tuple[Tensor, np.ndarray]:
    if op == "reshape":
        shape = _factor(a.size, rng)
        return t.reshape(shape), a.reshape(shape)
    if op == "transpose":
        perm = list(range(a.ndim))
        rng.shuffle(perm)
        return t.transpose(perm), a.transpose(perm)
    if op == "broadcast":
        shape = tuple(rng.choice([d, 3]) if d == 1 else d for d in a.shape)
        shape = (2,) * rng.randrange(2) + shape
        return t.broadcast(shape), np.broadcast_to(a, shape)
    if op == "reverse" and a.ndim:
        axis = rng.randrange(a.ndim)
        return t.reverse(axis), np.flip(a, axis)
    key = []
    for d in a.shape:
        pick = rng.randrange(4) if d else 3
        if pick == 0:
            key.append(rng.randrange(d))
        elif pick == 1:
            start = rng.randrange(d)
            key.append(slice(start, rng.randrange(start, d + 1), rng.choice([1, 1, 2, 3])))
        else:
            key.append(slice(None))
    if rng.random() < 0.2:
        key.insert(rng.randrange(len(key) + 1), None)
    return t[tuple(key)], a[tuple(key)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chains())
def test_chains_of_views_of_a_reshape_match_numpy(chain):
    shape, perm, key, ops = chain
    x, a = variable(shape)
    t, e = x.transpose(perm)[key], a.transpose(perm)[key]
    shape = _factor(e.size, ops[0][1]) if ops else e.shape[::-1]
    t, e = t.reshape(shape), e.reshape(shape)
    for name, rng in ops:
        t, e = _apply(name, rng, t, e)
        note(f"{name} -> {t.shape} slabs={t.slabs}")
        assert t.shape == e.shape
    if t.numel:
        check(t, e)
    else:
        np.testing.assert_array_equal(t.addresses().reshape(-1), e.reshape(-1))


@pytest.mark.parametrize("reference", [False, True], ids=["fast", "reference"])
def test_both_engines_read_and_write_through_a_grouped_view(reference):
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    x, _ = variable((2, 4, 3, 8), g)
    y = g.add_variable(sp.float32, (2, 3, 32), name="y")
    sp.ops.map_linearly(g, x)
    sp.ops.map_linearly(g, y)
    src = x.transpose(0, 2, 1, 3).reshape(2, 3, 32)  # grouped: no one strided view
    dst = y.reshape(6, 4, 8).transpose(1, 0, 2).reshape(4, 48)[:, 8:40]  # a grouped destination
    assert src.slabs is not None and dst.slabs is not None
    prog = P.Sequence([P.Copy(src, y), P.Copy(src.reshape(4, 48)[:, :32], dst)])
    eng = sp.Engine(g, [prog], {"engine.reference": reference})
    host = np.arange(x.numel, dtype=np.float32).reshape(x.shape)
    eng.write_tensor(x, host)
    eng.run(0)
    out = host.transpose(0, 2, 1, 3).reshape(2, 3, 32).copy()
    where = np.arange(out.size).reshape(6, 4, 8).transpose(1, 0, 2).reshape(4, 48)[:, 8:40]
    out.reshape(-1)[where] = host.transpose(0, 2, 1, 3).reshape(4, 48)[:, :32]
    np.testing.assert_array_equal(eng.read_tensor(y), out)
    np.testing.assert_array_equal(eng.read_tensor(src), host.transpose(0, 2, 1, 3).reshape(2, 3, 32))


def test_reshaping_permuted_views_holds_no_index():
    """A 1,024-head attention block's permute-reshape chains: one int64 per element would be
    32 MiB; grouped views hold a few ints each."""
    def build():
        g = sp.Graph(sp.targets.ipu_model(tiles=4))
        q = g.add_variable(sp.float16, (8, 256, 16, 128), name="q")  # 4 Mi elements
        views = []
        for _ in range(4):
            heads = q.transpose(0, 2, 1, 3).reshape(128, 256, 128)  # (b * h, s, d)
            views += [heads, heads.reshape(8, 16, 256, 128).transpose(0, 2, 1, 3).reshape(2048, 2048)]
            views.append(q.transpose(0, 2, 3, 1).reshape(128, 128, 256)[:, :, ::2])
        return views
    tracemalloc.start()
    try:
        views = build()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"reshaping views peaked at {peak / 2**20:.1f} MiB"
    assert all(not built(v) for v in views)


@pytest.mark.parametrize("reference", [False, True], ids=["fast", "reference"])
def test_elementwise_ops_over_grouped_views_match_numpy(reference):
    """add over (b*h, s, d) heads and mul over the merged (b, s, h*d): numpy on the same views."""
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    x = g.add_variable(sp.float32, (2, 8, 4, 6), name="x")
    sp.ops.map_linearly(g, x)
    prog = P.Sequence()
    heads = x.transpose(0, 2, 1, 3).reshape(8, 8, 6)
    y = sp.ops.add(g, heads, heads[::-1], prog, name="y")
    merged = y.reshape(2, 4, 8, 6).transpose(0, 2, 1, 3).reshape(2, 8, 24)
    z = sp.ops.mul(g, merged, merged, prog, name="z")
    assert heads.slabs is not None and merged.slabs is not None
    eng = sp.Engine(g, [prog], {"engine.reference": reference})
    host = np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)
    eng.write_tensor(x, host)
    eng.run(0)
    h = host.transpose(0, 2, 1, 3).reshape(8, 8, 6)
    want_y = h + h[::-1]
    m = want_y.reshape(2, 4, 8, 6).transpose(0, 2, 1, 3).reshape(2, 8, 24)
    np.testing.assert_array_equal(eng.read_tensor(y), want_y)
    np.testing.assert_array_equal(eng.read_tensor(z), m * m)
