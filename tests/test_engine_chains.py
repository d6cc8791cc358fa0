"""The fast engine runs a library matmul's AMP steps and partials reduction as whole GEMMs
(engine/chains.py): within the contraction bound of the reference, the same bits on every run and
thread count, and only where nothing else reads the partials it leaves unwritten."""

from __future__ import annotations

import numpy as np
import pytest

import softipu as sp
from softipu import program as P
from softipu.codelets import host
from softipu.codelets._common import contraction_bound
from softipu.codelets.matmul import A_TRANSPOSED, B_TRANSPOSED, amp_codelet
from softipu.engine import chain_run, chains
from softipu.graph.tensor import Tensor
from softipu.ops.matmul import plan_matmul

TARGET = sp.targets.ipu_model(tiles=8, bytes_per_tile=128 * 1024)
F32 = sp.float32


def _matmul(m, k, n, batch=()):
    g = sp.Graph(TARGET)
    a = g.add_variable(F32, batch + (m, k), name="a")
    b = g.add_variable(F32, (k, n), name="b")
    for t in (a, b):
        sp.ops.map_linearly(g, t)
    prog = P.Sequence()
    c = sp.ops.matmul(g, a, b, prog)
    return g, prog, a, b, c


def _run(g, programs, values, outs, reference=False, runs=1):
    """The results of the ``runs``-th run (a chain is built on its first)."""
    eng = sp.Engine(g, programs, {"engine.reference": reference, "debug.allowOutOfMemory": True})
    for _ in range(runs):
        for t, v in values.items():
            eng.write_tensor(t, v)
        eng.run(0)
    return eng, [eng.read_tensor(o) for o in outs]


def _fused(eng):
    return eng._interpreter._chains.fused()


def _check(got, ref, av, bv, k):
    terms = np.matmul(np.abs(av.astype(np.float64)), np.abs(bv.astype(np.float64)))
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    assert np.all(diff <= contraction_bound(terms, k)), float((diff - contraction_bound(terms, k)).max())
    np.testing.assert_allclose(got, np.matmul(av.astype(np.float64), bv), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("m", "k", "n", "batch"), [(128, 512, 128, ()), (30, 700, 50, ()), (20, 96, 24, (3,))])
def test_split_k_matmul_runs_fused_within_the_bound_of_the_reference(m, k, n, batch):
    """K split over tiles and (first shape) serial K chunks, edge blocks (700 = 7 x 96 + 28), a
    swapped plan and a batch: one fused chain, within the bound of the per-vertex reference."""
    g, prog, a, b, c = _matmul(m, k, n, batch)
    rng = np.random.default_rng(1)
    av, bv = rng.standard_normal(a.shape, np.float32), rng.standard_normal(b.shape, np.float32)
    eng, (got,) = _run(g, [prog], {a: av, b: bv}, [c])
    assert _fused(eng), "the matmul was not fused"
    _, (ref,) = _run(g, [prog], {a: av, b: bv}, [c], reference=True)
    _check(got, ref, av, bv, k)


@pytest.mark.parametrize(("m", "k", "n"), [(128, 512, 128), (30, 700, 50)])
def test_half_matmul_reduced_to_half_runs_fused_within_the_bound_with_one_rounding(m, k, n):
    """fp16 operands and output, fp32 partials: the fused product is rounded to fp16 once, as the
    reduction rounds its sum, so it stays within the bound that counts the output's rounding."""
    g = sp.Graph(TARGET)
    a, b = g.add_variable(sp.float16, (m, k), name="a"), g.add_variable(sp.float16, (k, n), name="b")
    for t in (a, b):
        sp.ops.map_linearly(g, t)
    prog = P.Sequence()
    c = sp.ops.matmul(g, a, b, prog)
    assert c.dtype is sp.float16
    rng = np.random.default_rng(6)
    av, bv = rng.standard_normal(a.shape).astype(np.float16), rng.standard_normal(b.shape).astype(np.float16)
    eng, (got,) = _run(g, [prog], {a: av, b: bv}, [c], runs=2)
    assert _fused(eng), "the matmul was not fused"
    assert any(cs.groups[0].codelet.__name__.startswith("ReducePartials<float32,float16>")
               for cs in eng.executable.compute_sets.values())  # a reduction wrote fp16
    _, (ref,) = _run(g, [prog], {a: av, b: bv}, [c], reference=True)
    terms = np.abs(av.astype(np.float64)) @ np.abs(bv.astype(np.float64))
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    assert np.all(diff <= contraction_bound(terms, k, out=np.float16))
    np.testing.assert_allclose(got, av.astype(np.float64) @ bv, rtol=1e-2, atol=0.05)


def test_the_first_shape_has_serial_and_split_k():
    p = plan_matmul(TARGET, F32, (128, 512), (512, 128))
    assert p.k_serial > 1 and p.k_split > 1


def test_same_bits_on_every_run_and_with_one_or_two_threads(monkeypatch):
    """The GEMM cut into pieces by its size alone: one thread or two, the same bits."""
    monkeypatch.setattr(chain_run, "CHAIN_PIECE_MACS", 1 << 12)  # many pieces
    monkeypatch.setattr(chain_run, "PIECE_LINES", 4)
    g, prog, a, b, c = _matmul(128, 512, 128)
    rng = np.random.default_rng(2)
    av, bv = rng.standard_normal(a.shape, np.float32), rng.standard_normal(b.shape, np.float32)
    results = []
    shared = []
    real = host._share

    def share(jobs, helpers):
        shared.append(len(jobs))
        real(jobs, helpers)

    monkeypatch.setattr(host, "_share", share)
    for idle in (0, 1, 0, 1):
        monkeypatch.setattr(host, "idle_cores", lambda idle=idle: idle)
        eng, (got,) = _run(g, [prog], {a: av, b: bv}, [c])
        assert _fused(eng)
        eng.run(0)
        results += [got, eng.read_tensor(c)]
    assert shared, "no GEMM was shared out"
    assert all(r.tobytes() == results[0].tobytes() for r in results)


def test_partials_read_elsewhere_keep_the_per_group_path():
    """A copy of the partials after the matmul: the chain is not fused, and the copy reads the
    partials the reference computes."""
    g, prog, a, b, c = _matmul(128, 512, 128)
    var = next(v for v in g.variables if v.name.endswith("/partials"))
    partials = Tensor(g, F32, var.shape, var.start, (1,))
    seen = g.add_variable(F32, partials.shape, name="seen")
    sp.ops.map_linearly(g, seen)
    prog.add(P.Copy(partials, seen))
    rng = np.random.default_rng(3)
    av, bv = rng.standard_normal(a.shape, np.float32), rng.standard_normal(b.shape, np.float32)
    eng, (got, copy) = _run(g, [prog], {a: av, b: bv}, [c, seen])
    assert not _fused(eng)
    _, (ref, ref_copy) = _run(g, [prog], {a: av, b: bv}, [c, seen], reference=True)
    _check(got, ref, av, bv, 512)
    np.testing.assert_allclose(copy, ref_copy, rtol=1e-5, atol=1e-4)


def _amp_chain(layout_a, layout_b, between=None):
    """Two AMP steps by hand, the second accumulating onto the blocks the first wrote:
    ``out[j] = a0 . b0[j] + a1 . b1[j]`` for two column blocks j, blocks stored transposed where
    the layout bits say so. ``between``: a program node put between the two steps."""
    m, k, n = 6, 16, 8
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    a = g.add_variable(F32, (2, m * k), name="a")
    b = g.add_variable(F32, (2, 2, k * n), name="b")
    out = g.add_variable(F32, (2, m * n), name="out")
    for t in (a, b, out):
        g.set_tile_mapping(t, 0)
    layout = (A_TRANSPOSED if layout_a else 0) | (B_TRANSPOSED if layout_b else 0)
    steps = []
    for step in range(2):
        cs = g.add_compute_set(f"amp{step}")
        for j in range(2):
            g.add_vertex(cs, amp_codelet(F32, F32, step > 0), {"a": a[step], "b": b[step, j], "out": out[j],
                                                              "m": m, "k": k, "n": n, "layout": layout}, tile=j)
        steps.append(P.Execute(cs))
    if between is not None:
        steps.insert(1, between(g, out))
    return g, P.Sequence(steps), a, b, out, (m, k, n)


def _logical(av, bv, m, k, n, layout_a, layout_b):
    a3 = av.reshape(2, k, m).swapaxes(1, 2) if layout_a else av.reshape(2, m, k)
    b3 = bv.reshape(2, 2, n, k).swapaxes(2, 3) if layout_b else bv.reshape(2, 2, k, n)
    return a3, b3


@pytest.mark.parametrize(("layout_a", "layout_b"), [(False, False), (True, False), (False, True), (True, True)])
def test_serial_k_steps_without_a_reduction_fuse(layout_a, layout_b):
    """Serial K chunks accumulating into the output itself (no partials): one GEMM over the
    concatenated K, transposed block layouts read as the codelet reads them."""
    g, prog, a, b, out, (m, k, n) = _amp_chain(layout_a, layout_b)
    rng = np.random.default_rng(4)
    av, bv = rng.standard_normal(a.shape, np.float32), rng.standard_normal(b.shape, np.float32)
    eng, (got,) = _run(g, [prog], {a: av, b: bv}, [out])
    assert _fused(eng)
    _, (ref,) = _run(g, [prog], {a: av, b: bv}, [out], reference=True)
    a3, b3 = _logical(av, bv, m, k, n, layout_a, layout_b)
    for j in range(2):
        cat_a = np.concatenate([a3[0], a3[1]], axis=1)
        cat_b = np.concatenate([b3[0, j], b3[1, j]], axis=0)
        _check(got[j].reshape(m, n), ref[j].reshape(m, n), cat_a, cat_b, 2 * k)


def test_steps_apart_run_one_by_one():
    """A copy between the two AMP steps breaks the chain: the first step runs alone (a chain of
    one step), the second as written, and the copy reads the first step's products."""
    seen = {}

    def copy(g, out):
        seen["t"] = g.add_variable(F32, out.shape, name="mid")
        g.set_tile_mapping(seen["t"], 1)
        return P.Copy(out, seen["t"])

    g, prog, a, b, out, (m, k, n) = _amp_chain(False, False, between=copy)
    rng = np.random.default_rng(5)
    av, bv = rng.standard_normal(a.shape, np.float32), rng.standard_normal(b.shape, np.float32)
    eng, (got, mid) = _run(g, [prog], {a: av, b: bv}, [out, seen["t"]])
    assert len(_fused(eng)) == 1
    a3, b3 = _logical(av, bv, m, k, n, False, False)
    np.testing.assert_allclose(mid.reshape(2, m, n), [a3[0] @ b3[0, j] for j in range(2)], rtol=1e-5, atol=1e-5)
    want = [a3[0] @ b3[0, j] + a3[1] @ b3[1, j] for j in range(2)]
    np.testing.assert_allclose(got.reshape(2, m, n), want, rtol=1e-5, atol=1e-5)


def test_switched_off_gives_the_per_group_path(monkeypatch):
    monkeypatch.setattr(chains, "FUSE_MATMULS", False)
    g, prog, a, b, c = _matmul(30, 700, 50)
    eng, _ = _run(g, [prog], {a: np.ones(a.shape, np.float32), b: np.ones(b.shape, np.float32)}, [c])
    assert not _fused(eng)


def test_a_fused_chains_compute_sets_get_no_per_group_runners():
    """The per-group runners of a chain's compute sets are made only if the chain is not taken:
    a fused matmul never builds them (a model's matmuls are most of its vertex groups); one whose
    partials are read elsewhere builds them on its first run and runs as the reference."""
    g, prog, a, b, c = _matmul(128, 512, 128)
    chain_sets = {cs.id for cs in g.compute_sets}
    rng = np.random.default_rng(5)
    av, bv = rng.standard_normal(a.shape, np.float32), rng.standard_normal(b.shape, np.float32)
    eng = sp.Engine(g, [prog], {"debug.allowOutOfMemory": True})
    assert eng._interpreter._chains.compute_sets() == chain_sets
    assert not chain_sets & set(eng._interpreter._runners)
    _, (got,) = _run(g, [prog], {a: av, b: bv}, [c])
    eng.write_tensor(a, av)
    eng.write_tensor(b, bv)
    eng.run(0)
    assert _fused(eng) and not chain_sets & set(eng._interpreter._runners)
    np.testing.assert_array_equal(eng.read_tensor(c), got)
    _check(got, np.matmul(av, bv), av, bv, 512)


def test_a_repeated_matmul_takes_the_first_ones_plan_moved_to_its_own_variables():
    """Two matmuls of the same shapes on other variables (a repeated layer's): the second chain's
    plan is the first's with every address moved (engine/chain_keys.py), equal to the plan built
    from its own fields, and both products are within the bound of numpy's."""
    g = sp.Graph(TARGET)
    prog = P.Sequence()
    pairs = []
    for name in ("x", "y"):
        pad = g.add_variable(F32, (7 if name == "y" else 1,), name=f"{name}_pad")  # other offsets
        a = g.add_variable(F32, (128, 512), name=f"{name}_a")
        b = g.add_variable(F32, (512, 128), name=f"{name}_b")
        for t in (pad, a, b):
            sp.ops.map_linearly(g, t)
        pairs.append((a, b, sp.ops.matmul(g, a, b, prog)))
    rng = np.random.default_rng(7)
    values = {t: rng.standard_normal(t.shape, np.float32) for a, b, _ in pairs for t in (a, b)}
    eng, got = _run(g, [prog], values, [c for _, _, c in pairs])
    chains_ = eng._interpreter._chains
    built = _fused(eng)
    assert len(built) == 2 and len(chains_.plans._plans) == 1  # one plan, used twice
    second = next(c for c in chains_.first.values() if c.runner is built[1])
    own = chains._build(eng._interpreter.executable, second.nodes, second.in_dtype)
    for mine, theirs in zip(built[1].bands, own.bands, strict=True):
        for field in ("a", "b", "out", "m", "k", "n"):
            np.testing.assert_array_equal(getattr(mine, field), getattr(theirs, field))
    for (a, b, _), out in zip(pairs, got, strict=True):
        _check(out, np.matmul(values[a], values[b]), values[a], values[b], 512)


def test_chain_keys_tell_apart_what_a_plan_depends_on():
    """Equal for the same matmul on other variables; different for another K; none for a chain
    whose field spans two variables (its plan cannot be moved variable by variable)."""
    from softipu.engine.chain_keys import ChainPlans

    def chain_keys(g, prog):
        eng = sp.Engine(g, [prog], {"debug.allowOutOfMemory": True})
        chains_ = eng._interpreter._chains
        plans = ChainPlans(eng._interpreter.executable)
        cands = sorted(chains_.first.values(), key=lambda c: c.steps[0])
        return [plans.key([n.compute_set.id for n in c.nodes]) for c in cands]

    g = sp.Graph(TARGET)
    prog = P.Sequence()
    for k in (512, 512, 256):
        a = g.add_variable(F32, (64, k))
        b = g.add_variable(F32, (k, 64))
        for t in (a, b):
            sp.ops.map_linearly(g, t)
        sp.ops.matmul(g, a, b, prog)
    first, second, third = chain_keys(g, prog)
    assert first[0] == second[0] and first[0] != third[0]
    assert not np.array_equal(first[1][F32], second[1][F32])  # other variables

    g2, (a, b, out, _) = _spanning_chain()
    assert chain_keys(g2, P.Sequence([P.Execute(cs) for cs in g2.compute_sets])) == [None]


def _spanning_chain():
    """One AMP vertex whose ``a`` field spans two variables that touch in the address space."""
    m, k, n = 2, 4, 2
    g = sp.Graph(sp.targets.ipu_model(tiles=2))
    a0 = g.add_variable(F32, (m * k // 2,), name="a0")
    a1 = g.add_variable(F32, (m * k // 2,), name="a1")
    b = g.add_variable(F32, (k * n,), name="b")
    out = g.add_variable(F32, (m * n,), name="out")
    for t in (a0, a1, b, out):
        g.set_tile_mapping(t, 0)
    a = Tensor(g, F32, (m * k,), a0.offset, (1,))  # both variables: they are adjacent
    assert a1.offset == a0.offset + m * k // 2
    for step in range(2):
        cs = g.add_compute_set(f"amp{step}")
        g.add_vertex(cs, amp_codelet(F32, F32, step > 0), {"a": a, "b": b, "out": out, "m": m, "k": k, "n": n,
                                                          "layout": 0}, tile=0)
    return g, (a, b, out, (m, k, n))
