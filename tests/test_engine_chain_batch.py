"""Alike bands of a matmul chain (engine/chain_run.py ``_batch_plan``): a grouped product — an
attention layer's heads, each a small ``(m, k) . (k, n)`` — runs as one batched GEMM over every
band's gathered blocks instead of a GEMM per band, within the contraction bound of the per-vertex
reference, the same bits on every run and with one or two host threads."""

from __future__ import annotations

import numpy as np
import pytest

import softipu as sp
from softipu import program as P
from softipu.codelets import host
from softipu.codelets._common import contraction_bound
from softipu.engine import chain_run

TARGET = sp.targets.ipu_model(tiles=8, bytes_per_tile=128 * 1024)
HEADS, M, K, N = 6, 16, 24, 20


def _grouped(dtype=sp.float32):
    """``c = q @ kt`` per head, ``q`` and ``kt`` written by the program (copies of the host's
    ``q0``/``kt0``), as attention's operands are: not weights a chain keeps gathered."""
    g = sp.Graph(TARGET)
    prog = P.Sequence()
    host_side, device_side = [], []
    for name, shape in (("q", (HEADS, M, K)), ("kt", (HEADS, K, N))):
        h, t = g.add_variable(dtype, shape, name=name + "0"), g.add_variable(dtype, shape, name=name)
        for x in (h, t):
            sp.ops.map_linearly(g, x)
        prog.add(P.Copy(h, t))
        host_side.append(h)
        device_side.append(t)
    return g, prog, *host_side, sp.ops.matmul(g, *device_side, prog)


def _values(dtype=np.float32):
    rng = np.random.default_rng(3)
    return (rng.standard_normal((HEADS, M, K), np.float32).astype(dtype),
            rng.standard_normal((HEADS, K, N), np.float32).astype(dtype))


def _run(reference: bool, runs: int = 2, dtype=sp.float32):
    g, prog, a, b, c = _grouped(dtype)
    av, bv = _values(dtype.numpy)
    eng = sp.Engine(g, [prog], {"engine.reference": reference})
    outs = []
    for _ in range(runs):
        eng.write_tensor(a, av)
        eng.write_tensor(b, bv)
        eng.run(0)
        outs.append(eng.read_tensor(c))
    return eng, outs


def test_the_heads_run_as_one_batched_product_within_the_bound_of_the_reference():
    eng, (first, second) = _run(False)
    (runner,) = eng._interpreter._chains.fused()
    assert len(runner.bands) >= HEADS and len(runner.plans) < len(runner.bands)
    _, (ref,) = _run(True, runs=1)
    av, bv = _values()
    terms = np.matmul(np.abs(av.astype(np.float64)), np.abs(bv.astype(np.float64)))
    diff = np.abs(first.astype(np.float64) - ref.astype(np.float64))
    assert np.all(diff <= contraction_bound(terms, K))
    np.testing.assert_allclose(first, np.matmul(av.astype(np.float64), bv), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(first, second)


def test_float16_heads_run_as_one_batched_product_within_a_half_step_of_the_reference():
    """float16 operands gathered as halves and widened whole, the float32 products narrowed whole
    into the float16 outputs: one plan for the heads, each output within the contraction bound
    and one float16 rounding of the reference's (which rounds its float32 partials once)."""
    eng, (first, second) = _run(False, dtype=sp.float16)
    (runner,) = eng._interpreter._chains.fused()
    assert first.dtype == np.float16 and len(runner.plans) < len(runner.bands)
    _, (ref,) = _run(True, runs=1, dtype=sp.float16)
    av, bv = (x.astype(np.float64) for x in _values(np.float16))
    exact = np.matmul(av, bv)
    bound = contraction_bound(np.matmul(np.abs(av), np.abs(bv)), K)
    step = np.spacing(np.abs(exact).astype(np.float16)).astype(np.float64)  # one fp16 step at |exact|
    assert np.all(np.abs(first - exact) <= step / 2 + bound)  # rounded once, to nearest
    assert np.all(np.abs(first.astype(np.float64) - ref) <= step + 2 * bound)
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("dtype", [sp.float32, sp.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("piece_macs", [1, 1 << 30])
def test_same_bits_with_one_or_two_threads_and_any_cut(monkeypatch, piece_macs, dtype):
    """Cut into one piece per band or not at all, on one thread or two: the same bits (each band's
    product is one GEMM whatever the cut)."""
    _, (want, _) = _run(False, dtype=dtype)
    monkeypatch.setattr(chain_run, "CHAIN_PIECE_MACS", piece_macs)
    for cores in (1, 2):
        monkeypatch.setattr(host, "idle_cores", lambda cores=cores: cores - 1)
        _, (got, _) = _run(False, dtype=dtype)
        np.testing.assert_array_equal(got, want)


def test_overlapping_outputs_are_not_batched():
    """Bands whose output matrices share elements (not produced by the library, built here) keep
    one plan each: a batched product would write them in another order."""
    buf = np.zeros(64, np.float32)
    grid = np.array([[[0, 4, 1]]])
    r_at, c_at = np.array([0, 2]), np.array([0, 4])
    assert chain_run._batched_view(buf, [grid, grid + [2, 0, 0]], r_at, c_at) is None
    batched = chain_run._batched_view(buf, [grid, grid + [8, 0, 0]], r_at, c_at)
    assert batched is not None and batched.shape == (2, 2, 4)


def test_nested_strides_imply_distinct_addresses():
    """graph.tensor.strides_never_meet (the batched outputs' overlap test in chain_run) never passes a view whose
    addresses repeat, against listing them; and it passes heads' score blocks side by side."""
    from softipu.graph.tensor import strides_never_meet

    rng = np.random.default_rng(0)
    passed = 0
    for _ in range(2000):
        shape = tuple(int(x) for x in rng.integers(1, 5, size=3))
        strides = tuple(int(x) for x in rng.integers(-12, 13, size=3))
        at = sum(np.arange(n).reshape([-1 if a == i else 1 for a in range(3)]) * st
                 for i, (n, st) in enumerate(zip(shape, strides, strict=True)))
        distinct = np.unique(at).size == at.size
        if strides_never_meet(shape, strides):
            passed += 1
            assert distinct, (shape, strides)
    assert passed > 200
    assert strides_never_meet((12, 128, 128), (128 * 128, 128, 1))
    assert not strides_never_meet((12, 128, 128), (128, 128, 1))
