"""The fast engine shares a compute set's groups over host threads: same bytes, errors, fp flags."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import softipu as sp
from softipu import program as P
from softipu.codelets import host
from softipu.codelets._common import contraction_bound
from softipu.engine import chains, fast, reductions
from softipu.errors import CodeletError
from softipu.graph.vertex import Input, Output, Vertex

TARGET = sp.targets.ipu_model(tiles=16, bytes_per_tile=512 * 1024)


@pytest.fixture
def always_share(monkeypatch):
    """Every library compute set shared from its second run, with one helper thread."""
    monkeypatch.setattr(fast, "SIDE_BY_SIDE_SECONDS", 0.0)
    monkeypatch.setattr(chains, "FUSE_MATMULS", False)  # group by group (test_engine_chains.py fuses)
    monkeypatch.setattr(reductions, "FUSE_REDUCTIONS", False)  # stage by stage (test_engine_reductions.py)
    monkeypatch.setattr(host, "idle_cores", lambda: 1)
    calls = []
    real = host._share

    def share(jobs, helpers):
        calls.append(len(jobs))
        real(jobs, helpers)

    monkeypatch.setattr(host, "_share", share)
    return calls


def _var(g, shape, name, dtype=sp.float32):
    t = g.add_variable(dtype, shape, name=name)
    sp.ops.map_linearly(g, t)
    return t


def _matmul_graph():
    g = sp.Graph(TARGET)
    a, b = _var(g, (3, 40, 96), "a"), _var(g, (96, 72), "b")
    prog = P.Sequence()
    c = sp.ops.matmul(g, a, b, prog)
    d = sp.ops.gelu(g, sp.ops.add(g, c, c, prog), prog)
    return g, prog, (a, b), (c, d)


def test_shared_runs_keep_their_bytes_and_agree_with_the_reference_within_the_bound(always_share):
    g, prog, (a, b), outs = _matmul_graph()
    rng = np.random.default_rng(0)
    av, bv = rng.standard_normal(a.shape, np.float32), rng.standard_normal(b.shape, np.float32)
    results = {}
    for reference in (True, False):
        eng = sp.Engine(g, [prog], options={"engine.reference": reference})
        eng.write_tensor(a, av)
        eng.write_tensor(b, bv)
        for _ in range(4):  # timed by job, timed alone, tried side by side, then kept
            eng.run(0)
            results.setdefault(reference, []).append([eng.read_tensor(o) for o in outs])
    assert always_share, "no compute set was shared out"
    first = results[False][0]
    for run in results[False][1:]:  # deterministic: every run, shared out or not, the same bytes
        for got, want in zip(run, first, strict=True):
            assert got.tobytes() == want.tobytes()
    terms = np.abs(av).astype(np.float64) @ np.abs(bv).astype(np.float64)
    assert np.all(np.abs(first[0].astype(np.float64) - results[True][0][0]) <= contraction_bound(terms, 96))
    np.testing.assert_allclose(first[1], results[True][0][1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(first[0], av @ bv, rtol=1e-5, atol=1e-4)


def _contractions_graph():
    """Matmuls whose groups share a left block, a right block or neither, a serial-K chunked
    one, and float sums: every kind of contraction the fast engine may reorder."""
    g = sp.Graph(TARGET)
    a, b = _var(g, (3, 40, 96), "a"), _var(g, (96, 72), "b")
    x, w = _var(g, (24, 300), "x"), _var(g, (300, 40), "w")
    prog = P.Sequence()
    outs = [sp.ops.matmul(g, a, b, prog), sp.ops.matmul(g, x, w, prog),
            sp.ops.matmul(g, x, w, prog, options={"availableMemoryProportion": 0.01}),
            sp.ops.matmul(g, a, a.transpose(0, 2, 1), prog),
            sp.ops.reduce(g, x, prog, dims=0), sp.ops.reduce(g, x, prog, dims=1)]
    return g, prog, (a, b, x, w), outs


def _bytes_of_runs(eng, inputs, values, outs, runs=3):
    for t, v in zip(inputs, values, strict=True):
        eng.write_tensor(t, v)
    got = []
    for _ in range(runs):
        eng.run(0)
        got.append(b"".join(eng.read_tensor(o).tobytes() for o in outs))
    return got


def test_contractions_give_the_same_bits_on_one_or_two_threads_and_every_run(monkeypatch):
    """Design principle 6: the same executable gives the same bits on every run, however many
    host threads share the work (merged products are cut by their size, never by the cores)."""
    from softipu.codelets import gemm
    monkeypatch.setattr(gemm, "PIECE_MACS", 1 << 12)  # many pieces even for these small products
    monkeypatch.setattr(fast, "SIDE_BY_SIDE_SECONDS", 0.0)
    g, prog, inputs, outs = _contractions_graph()
    rng = np.random.default_rng(7)
    values = [rng.standard_normal(t.shape).astype(np.float32) for t in inputs]
    executable = sp.Engine(g, [prog]).executable
    bits = []
    for idle in (0, 1):
        monkeypatch.setattr(host, "idle_cores", lambda idle=idle: idle)
        bits += _bytes_of_runs(sp.Engine.from_executable(executable, g), inputs, values, outs, runs=4)
    assert len(set(bits)) == 1


def test_contractions_give_the_same_bits_in_another_process():
    """The bits do not depend on the process either (no address- or timing-keyed choice)."""
    import hashlib
    import subprocess
    import sys

    script = (
        "import hashlib, numpy as np, softipu as sp\n"
        "import test_engine_threads as t\n"
        "g, prog, inputs, outs = t._contractions_graph()\n"
        "rng = np.random.default_rng(7)\n"
        "values = [rng.standard_normal(x.shape).astype(np.float32) for x in inputs]\n"
        "print(hashlib.sha256(t._bytes_of_runs(sp.Engine(g, [prog]), inputs, values, outs, 1)[0]).hexdigest())\n"
    )
    here = str(__import__("pathlib").Path(__file__).parent)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=here,
                          env={**__import__("os").environ, "PYTHONPATH": here}, timeout=120)
    assert done.returncode == 0, done.stderr
    g, prog, inputs, outs = _contractions_graph()
    rng = np.random.default_rng(7)
    values = [rng.standard_normal(x.shape).astype(np.float32) for x in inputs]
    mine = hashlib.sha256(_bytes_of_runs(sp.Engine(g, [prog]), inputs, values, outs, 1)[0]).hexdigest()
    assert done.stdout.strip() == mine


class _Fails(Vertex):
    x = Input(sp.float32)
    y = Output(sp.float32)

    @staticmethod
    def compute(x, y):
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("ran on a helper thread")
        time.sleep(0.002)  # leaves the helper time to take a job
        y[...] = x


_Fails.__module__ = "softipu.codelets.for_this_test"  # treated as a library codelet


def test_a_failing_job_on_a_helper_thread_raises_a_codelet_error_naming_the_group(always_share):
    g = sp.Graph(TARGET)
    x, y = _var(g, (16, 64), "x"), _var(g, (16, 64), "y")
    cs = g.add_compute_set("copy_rows")
    for tile in range(16):  # rows of different lengths: one group a tile
        g.add_vertex(cs, _Fails, {"x": x[tile, :tile + 1], "y": y[tile, :tile + 1]}, tile=tile)
    eng = sp.Engine(g, [P.Execute(cs)])
    eng.run(0)  # first run: every job on this thread
    with pytest.raises(CodeletError, match=r"_Fails.*'copy_rows'.*ran on a helper thread"):
        for _ in range(20):  # a helper takes some job within a few runs (on a busy host, more)
            eng.run(0)


class _UserCodelet(Vertex):
    x = Input(sp.float32)
    y = Output(sp.float32)
    threads: set[int] = set()

    @staticmethod
    def compute(x, y):
        _UserCodelet.threads.add(threading.get_ident())
        y[...] = x * 2


def test_user_codelets_stay_on_the_calling_thread(always_share):
    g = sp.Graph(TARGET)
    x, y = _var(g, (16, 32), "x"), _var(g, (16, 32), "y")
    cs = g.add_compute_set("double")
    for tile in range(16):  # one group a tile
        g.add_vertex(cs, _UserCodelet, {"x": x[tile, :tile + 1], "y": y[tile, :tile + 1]}, tile=tile)
        g.add_vertex(cs, _UserCodelet, {"x": x[tile, tile + 1:], "y": y[tile, tile + 1:]}, tile=tile)
    eng = sp.Engine(g, [P.Execute(cs)])
    eng.write_tensor(x, np.arange(512, dtype=np.float32).reshape(16, 32))
    for _ in range(4):
        eng.run(0)
    assert _UserCodelet.threads == {threading.get_ident()}
    assert not always_share
    np.testing.assert_array_equal(eng.read_tensor(y), 2 * np.arange(512, dtype=np.float32).reshape(16, 32))


def test_floating_point_exceptions_raise_on_helper_threads_too():
    def overflow():
        np.float32(3e38) * np.float32(10)

    with np.errstate(all="raise"), pytest.raises(FloatingPointError):
        host._share([overflow] * 8, helpers=1)
    with np.errstate(all="ignore"):
        host._share([overflow] * 8, helpers=1)  # ignored here as on this thread


def test_blas_single_threaded_is_counted_across_threads():
    blas = host.BLAS
    assert blas.set is not None, "numpy's bundled OpenBLAS was not found"
    before = blas.get()
    blas.set(2)
    try:
        with blas.single_threaded():
            assert blas.get() == 1
            with blas.single_threaded():
                assert blas.get() == 1
            assert blas.get() == 1  # the outer user still holds it
        assert blas.get() == 2
    finally:
        blas.set(before)


def test_shared_reductions_with_rotated_pieces_keep_their_bytes(always_share, monkeypatch):
    """Pieces cut mid-row (an outer reduction of a linearly mapped input) fold through a
    rotation scratch; chunks of one shape run side by side must not share it."""
    monkeypatch.setattr(fast, "CHUNK_BYTES", 4096)  # many equal chunks
    g = sp.Graph(sp.targets.ipu_model(tiles=20, bytes_per_tile=512 * 1024))
    x = g.add_variable(sp.float32, (48, 4096), name="x")  # 2.4 rows a tile
    sp.ops.map_linearly(g, x, grain_size=1)
    prog = P.Sequence()
    y = sp.ops.reduce(g, x, prog, dims=0, op=sp.ops.ReduceOp.MAX)
    rng = np.random.default_rng(5)
    for reference in (True, False):
        eng = sp.Engine(g, [prog], options={"engine.reference": reference})
        for _ in range(20):
            values = rng.standard_normal(x.shape).astype(np.float32)
            eng.write_tensor(x, values)
            eng.run(0)
            np.testing.assert_array_equal(eng.read_tensor(y), values.max(axis=0))
    assert always_share
    rows = [grp for cs in eng.executable.compute_sets.values() for grp in cs.groups
            if grp.codelet.__name__.startswith("ReduceRows")]
    assert rows and any(np.any(np.asarray(grp.fields["phase"])) for grp in rows)  # rotated pieces


def test_rotation_plans_live_in_the_loaded_groups_frozen_params(monkeypatch):
    """A reduction's per-group plans (rotation windows) are state of the loaded engine's frozen
    params, built on the first run and reused, not a module cache keyed by object identity."""
    monkeypatch.setattr(reductions, "FUSE_REDUCTIONS", False)  # stage by stage
    from softipu.codelets import reduce as reduce_codelets
    from softipu.codelets.host import Frozen
    g = sp.Graph(sp.targets.ipu_model(tiles=20, bytes_per_tile=512 * 1024))
    x = g.add_variable(sp.float32, (48, 256), name="x")
    sp.ops.map_linearly(g, x, grain_size=1)
    prog = P.Sequence()
    y = sp.ops.reduce(g, x, prog, dims=0, op=sp.ops.ReduceOp.MAX)
    eng = sp.Engine(g, [prog])
    values = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    eng.write_tensor(x, values)
    phases = [args["phase"] for runner in eng._interpreter._runners.values() for job in runner.jobs
              for args in job.args if isinstance(args, dict) and "phase" in args]
    assert phases and all(isinstance(p, Frozen) and not p.flags.writeable for p in phases)
    for _ in range(2):
        eng.run(0)
        np.testing.assert_array_equal(eng.read_tensor(y), values.max(axis=0))
    plans = [p.memo for p in phases if p.any()]
    assert plans and all(any(k[0] == "rotation" for k in m) for m in plans)
    assert not [n for n, v in vars(reduce_codelets).items() if n.endswith("_CACHE") and isinstance(v, dict)]
