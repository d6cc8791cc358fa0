"""Dynamic sparse ops (sp.ops.sparse_dynamic) against dense numpy oracles, on random patterns that
change between runs of one compiled engine: empty, full rows, one block, random density, and a
pattern crowded into one partition (bucket spills, propagation)."""

from __future__ import annotations

import numpy as np
import pytest

import softipu as sp
from softipu import program as P
from softipu.ops import OpError
from softipu.ops import sparse_dynamic as sd

O_, I_, Z, K = 32, 48, 6, 4  # output, input, batch, embedding indices


def _patterns(rng, nrb, ncb, max_nz):
    """Block masks: random, empty, full rows, one block, crowded into the first block-rows."""
    out = []
    m = rng.random((nrb, ncb)) < 0.3
    out.append(m)
    out.append(np.zeros((nrb, ncb), bool))
    full = np.zeros((nrb, ncb), bool)
    full[[0, nrb - 1]] = True
    out.append(full)
    one = np.zeros((nrb, ncb), bool)
    one[nrb // 2, ncb - 1] = True
    out.append(one)
    crowded = np.zeros((nrb, ncb), bool)
    crowded.reshape(-1)[:max_nz] = True  # row-major: the first partitions' rows, many spills
    out.append(crowded)
    fixed = []
    for m in out:
        r, c = np.nonzero(m)
        if r.size > max_nz:
            keep = rng.permutation(r.size)[:max_nz]
            m = np.zeros_like(m)
            m[r[keep], c[keep]] = True
        fixed.append(m)
    return fixed


def _tol(dtype):
    return (2e-2, 2e-2) if dtype is sp.float16 else (1e-5, 1e-5)


@pytest.mark.parametrize("block,dtype,cut", [(1, sp.float32, {}), (4, sp.float32, {}), (8, sp.float16, {}),
                                             (16, sp.float32, {}), (4, sp.float16, {}),
                                             (4, sp.float32, {"qz": 2, "qx": 2, "qy": 2})])
def test_fully_connected_passes_and_embedding_vs_dense(block, dtype, cut):
    rng = np.random.default_rng(block)
    g = sp.Graph(sp.targets.ipu_model(tiles=8))
    prog = P.Sequence()
    fc = sd.FullyConnectedParams.with_nz_ratio(block, 0.4, Z, I_, O_, name="w")
    w = sd.create_fully_connected_weights(g, dtype, fc, options={"planConstraints": cut})
    assert all(getattr(w.plan, k) == v for k, v in cut.items())
    x = sd.create_fully_connected_input(g, dtype, fc)
    gy = g.add_variable(dtype, (Z, O_), name="gy")
    idx = g.add_variable(sp.int32, (K,), name="idx")
    sl = g.add_variable(dtype, (K, I_), name="slices")
    scale = g.add_variable(sp.float32, (1,), name="scale")
    for t in (gy, idx, sl, scale):
        sp.ops.map_linearly(g, t)
    y = sd.fully_connected_fwd(g, w, x, prog, params=fc)
    ga = sd.fully_connected_grad_a(g, w, gy, prog, params=fc)
    gw = sd.fully_connected_sparse_grad_w(g, w.meta_info, gy, x, prog, plan=w.plan)
    gw_t = sd.fully_connected_sparse_grad_w_t(g, w.meta_info, gy.transpose(), x.transpose(), prog, plan=w.plan)
    rows = sd.embedding_slice(g, w, idx, prog, params=fc)
    sd.embedding_update_add(g, w, sl, idx, scale, prog, params=fc)
    eng = sp.Engine(g, [prog])
    nrb, ncb = O_ // block, I_ // block
    rtol, atol = _tol(dtype)
    npt = dtype.numpy
    spilled = 0
    for mask in _patterns(rng, nrb, ncb, fc.max_nz_blocks):  # one engine, patterns as data
        dense = (rng.standard_normal((nrb, block, ncb, block)) * mask[:, None, :, None]).reshape(O_, I_)
        dense = dense.astype(npt)
        meta, nz = w.plan.encode_dense(dense)
        spilled += int(meta[0, 0] > 0)
        xv, gv = rng.standard_normal((Z, I_)).astype(npt), rng.standard_normal((Z, O_)).astype(npt)
        iv = rng.integers(0, O_, K).astype(np.int32)
        iv[0] = iv[1]  # a repeated index accumulates twice
        sv = rng.standard_normal((K, I_)).astype(npt)
        for t, v in ((w.meta_info, meta), (w.nz_values, nz), (x, xv), (gy, gv), (idx, iv), (sl, sv),
                     (scale, np.float32([0.5]))):
            eng.write_tensor(t, v)
        eng.run(0)
        d32, x32, g32 = dense.astype(np.float32), xv.astype(np.float32), gv.astype(np.float32)
        np.testing.assert_allclose(eng.read_tensor(y), x32 @ d32.T, rtol=rtol, atol=atol * 10)
        np.testing.assert_allclose(eng.read_tensor(ga), g32 @ d32, rtol=rtol, atol=atol * 10)
        keep = np.kron(mask, np.ones((block, block)))
        for out in (gw, gw_t):
            np.testing.assert_allclose(w.plan.decode(meta, eng.read_tensor(out)), (g32.T @ x32) * keep,
                                       rtol=rtol, atol=atol * 10)
        np.testing.assert_allclose(eng.read_tensor(rows), d32[iv], rtol=rtol, atol=atol)
        want = d32.copy()
        np.add.at(want, iv, 0.5 * sv.astype(np.float32) * keep[iv])
        got = w.plan.decode(meta, eng.read_tensor(w.nz_values))
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * 10)
    if block < 16:  # 16 x 16 blocks: 2 x 3 blocks, too few to crowd a bucket
        assert spilled >= 1, "the crowded pattern should spill into neighbouring buckets"


def test_sparse_dense_matmul_vs_dense():
    rng = np.random.default_rng(7)
    m, k, n, b = 16, 24, 6, 4
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    prog = P.Sequence()
    fc = sd.FullyConnectedParams.with_nz_ratio(b, 0.5, n, k, m, name="s")
    s = sd.create_fully_connected_weights(g, sp.float32, fc)
    d = g.add_variable(sp.float32, (k, n), name="d")
    sp.ops.map_linearly(g, d)
    out = sd.sparse_dense_matmul(g, s, d, prog, params=fc)
    eng = sp.Engine(g, [prog])
    for mask in _patterns(rng, m // b, k // b, fc.max_nz_blocks):
        dense = (rng.standard_normal((m // b, b, k // b, b)) * mask[:, None, :, None]).reshape(m, k)
        meta, nz = s.plan.encode_dense(dense)
        dv = rng.standard_normal((k, n)).astype(np.float32)
        eng.write_tensor(s.meta_info, meta)
        eng.write_tensor(s.nz_values, nz.astype(np.float32))
        eng.write_tensor(d, dv)
        eng.run(0)
        np.testing.assert_allclose(eng.read_tensor(out), dense @ dv, rtol=1e-5, atol=1e-5)


def test_spills_cost_propagation_steps_at_run_time():
    """A crowded pattern needs propagation steps; the same engine prices them only when run."""
    b = 4
    g = sp.Graph(sp.targets.ipu_model(tiles=8))
    prog = P.Sequence()
    fc = sd.FullyConnectedParams.with_nz_ratio(b, 0.25, 4, 32, 32)
    w = sd.create_fully_connected_weights(g, sp.float32, fc)
    x = sd.create_fully_connected_input(g, sp.float32, fc)
    sd.fully_connected_fwd(g, w, x, prog, params=fc)
    eng = sp.Engine(g, [prog])
    plan = w.plan
    n = fc.max_nz_blocks
    per = n // plan.partitions
    part, i = np.arange(n) // per, np.arange(n) % per
    even = (part // plan.qy * plan.xw + i % plan.xw, part % plan.qy * plan.yw + i // plan.xw)
    crowded = (np.arange(n) // 8, np.arange(n) % 8)  # the first block-rows
    cycles = []
    for rows, cols in (even, crowded):
        meta, nz = plan.encode(rows, cols, np.ones((n, b, b)))
        eng.write_tensor(w.meta_info, meta)
        eng.write_tensor(w.nz_values, nz)
        eng.write_tensor(x, np.ones((4, 32)))
        eng.run(0)
        cycles.append((int(meta[0, 0]), eng.report.cycles))
    assert cycles[0][0] == 0 < cycles[1][0]
    assert cycles[1][1] > cycles[0][1]


def test_fill_buckets_places_overflow_in_nearest_buckets_behind():
    from softipu.codelets.sparse_dynamic import fill_buckets

    # 2 x 2 partitions of 1 x 1 blocks, capacity 2: partition 3 gets 4 blocks... impossible with
    # 1 x 1 partitions, so use partitions of 2 x 2 blocks (qy = 2) and 6 blocks in partition 3.
    rows = np.array([2, 2, 3, 3, 2, 0])
    cols = np.array([2, 3, 2, 3, 2, 0])
    rows, cols = rows[:4], cols[:4]
    meta, slot = fill_buckets(rows, cols, 2, 2, 2, 4, 2)
    assert meta[:, 1].tolist() == [0, 0, 2, 2]  # 2 stay in bucket 3, 2 go to bucket 2 (one step)
    assert meta[0, 0] == 1
    assert sorted(slot // 2) == [2, 2, 3, 3]


def _layer(tiles=4, block=4, nz_ratio=0.25):
    g = sp.Graph(sp.targets.ipu_model(tiles=tiles))
    fc = sd.FullyConnectedParams.with_nz_ratio(block, nz_ratio, 2, 16, 16, name="wq")
    return g, fc, sd.create_fully_connected_weights(g, sp.float32, fc)


def test_pattern_beyond_the_plan_is_a_clear_error():
    _, fc, w = _layer()
    n = fc.max_nz_blocks + 1
    with pytest.raises(OpError, match=r"'wq'.*test_ops_sparse_dynamic.py.*has 5 non-zero blocks but the plan "
                                      r"holds at most 4"):
        w.plan.encode(np.arange(n) // 4, np.arange(n) % 4, np.zeros((n, 4, 4)))


def test_bad_patterns_and_shapes_are_clear_errors():
    g, fc, w = _layer()
    with pytest.raises(OpError, match=r"block 0 at \(4, 0\) is out of range for 4 x 4 blocks of 4"):
        w.plan.encode([4], [0], np.zeros((1, 4, 4)))
    with pytest.raises(OpError, match="names a block twice"):
        w.plan.encode([1, 1], [2, 2], np.zeros((2, 4, 4)))
    with pytest.raises(OpError, match="block size 3 is not supported"):
        sd.FullyConnectedParams.with_nz_ratio(3, 0.5, 2, 12, 12)
    x = g.add_variable(sp.float32, (2, 12), name="x_bad")
    sp.ops.map_linearly(g, x)
    with pytest.raises(OpError, match=r"fully_connected_fwd.*activations x_bad has shape \(2, 12\).*\(2, 16\)"):
        sd.fully_connected_fwd(g, w, x, P.Sequence(), params=fc)
    other = sd.FullyConnectedParams.with_nz_ratio(4, 0.5, 2, 16, 16)
    x16 = sd.create_fully_connected_input(g, sp.float32, other)
    with pytest.raises(OpError, match="were planned for"):
        sd.fully_connected_fwd(g, w, x16, P.Sequence(), params=other)


def test_plan_sizes_buckets_with_the_oversize_proportion():
    g = sp.Graph(sp.targets.ipu_model(tiles=16))
    fc = sd.FullyConnectedParams.with_nz_ratio(1, 0.1, 4, 64, 64)  # 410 non-zeros
    plan = sd.plan_fully_connected(g, fc, sp.float16)
    assert plan.partitions == 16
    assert plan.capacity == int(np.ceil(410 / 16 * 1.3))
    tight = sd.plan_fully_connected(g, fc, sp.float16, {"metaInfoBucketOversizeProportion": 0.0})
    assert tight.capacity == int(np.ceil(410 / 16))


def test_reference_interpreter_agrees_with_spills():
    """The per-vertex reference interpreter gives the fast engine's values (one crowded pattern:
    propagation steps run in both)."""
    rng = np.random.default_rng(11)
    b = 4
    results = []
    for reference in (False, True):
        g = sp.Graph(sp.targets.ipu_model(tiles=4))
        prog = P.Sequence()
        fc = sd.FullyConnectedParams.with_nz_ratio(b, 0.5, 3, 16, 16)
        w = sd.create_fully_connected_weights(g, sp.float32, fc)
        x = sd.create_fully_connected_input(g, sp.float32, fc)
        y = sd.fully_connected_fwd(g, w, x, prog, params=fc)
        gw = sd.fully_connected_sparse_grad_w(g, w.meta_info, y, x, prog, plan=w.plan)
        eng = sp.Engine(g, [prog], {"engine.reference": reference})
        n = fc.max_nz_blocks
        meta, nz = w.plan.encode(np.arange(n) // 4, np.arange(n) % 4, rng.standard_normal((n, b, b)))
        assert meta[0, 0] > 0
        xv = rng.standard_normal((3, 16))
        for t, v in ((w.meta_info, meta), (w.nz_values, nz), (x, xv)):
            eng.write_tensor(t, v)
        eng.run(0)
        results.append((eng.read_tensor(y), eng.read_tensor(gw), eng.report.cycles))
        rng = np.random.default_rng(11)
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-6, atol=1e-6)
    assert results[0][2] == results[1][2]


def test_replicated_graph():
    rng = np.random.default_rng(2)
    g = sp.Graph(sp.targets.ipu_model(tiles=4), replication_factor=2)
    prog = P.Sequence()
    fc = sd.FullyConnectedParams.with_nz_ratio(4, 0.5, 3, 16, 16)
    w = sd.create_fully_connected_weights(g, sp.float32, fc)
    x = sd.create_fully_connected_input(g, sp.float32, fc)
    y = sd.fully_connected_fwd(g, w, x, prog, params=fc)
    eng = sp.Engine(g, [prog])
    n = fc.max_nz_blocks
    meta, nz = w.plan.encode(np.arange(n) // 4, np.arange(n) % 4, rng.standard_normal((n, 4, 4)))
    xv = rng.standard_normal((3, 16))
    for t, v in ((w.meta_info, meta), (w.nz_values, nz), (x, xv)):
        eng.write_tensor(t, v)
    eng.run(0)
    out = eng.read_tensor(y)
    want = xv @ w.plan.decode(meta, nz).T
    np.testing.assert_allclose(out, np.stack([want, want]), rtol=1e-5, atol=1e-5)
