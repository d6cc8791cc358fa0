"""A ring's Repeat run whole by the fast engine (collectives/whole.py): every buffer it touches ends
bitwise as the steps leave them (the reference interpreter walks the steps), the cycles and step
counts are the steps', and the values are the ring's order of additions (worked by hand below)."""

from __future__ import annotations

import numpy as np
import pytest

import softipu as sp
import softipu.collectives.whole as whole
from softipu import collectives as C
from softipu import program as P
from softipu.collectives import CollectiveOperator as Op
from softipu.collectives import Method

TARGET = sp.targets.ipu_model(tiles=8)


def build(replicas: int, numel: int, method: Method, op: Op, dtype=sp.float32):
    g = sp.Graph(TARGET, replication_factor=replicas)
    x = g.add_variable(dtype, (numel,), "x")
    C.map_by_columns(g, x.reshape(replicas, numel // replicas))
    prog = P.Sequence()
    y = C.all_reduce(g, x, prog, op=op, options={"method": method})
    return g, prog, x, y


def run(g, prog, x, values, reference: bool):
    eng = sp.Engine(g, [prog], options={"engine.reference": reference})
    eng.write_tensor(x, values)
    eng.run(0)
    eng.run(0)  # a second call starts from the first's buffers and counters
    return eng


@pytest.fixture
def taken(monkeypatch):
    """How many times the whole form ran (so a test knows it was not silently skipped)."""
    count = [0]
    call = whole.WholeRing.__call__

    def counted(self, storage):
        done = call(self, storage)
        count[0] += done
        return done
    monkeypatch.setattr(whole.WholeRing, "__call__", counted)
    return count


@pytest.mark.parametrize("replicas", [3, 4, 5])
@pytest.mark.parametrize("method", [Method.CLOCKWISE_RING, Method.ANTICLOCKWISE_RING,
                                    Method.BIDIRECTIONAL_RING_PAIR])
@pytest.mark.parametrize("op,dtype", [(Op.ADD, sp.float32), (Op.MAX, sp.float32), (Op.ADD, sp.int32),
                                      (Op.ADD, sp.float16)])
def test_whole_ring_leaves_every_buffer_as_the_steps(taken, replicas, method, op, dtype):
    g, prog, x, y = build(replicas, replicas * 24, method, op, dtype)
    rng = np.random.default_rng(replicas)
    values = (rng.standard_normal((replicas, replicas * 24)) * 1e3).astype(dtype.numpy)
    if dtype is sp.float16:
        values = np.round(values / 100).astype(np.float16)
    fast, ref = run(g, prog, x, values, False), run(g, prog, x, values, True)
    assert taken[0] == (4 if dtype is not sp.float16 else 2)  # two calls; float16 reduces by steps
    for dt, buf in fast.storage.buffers.items():  # every variable: input, ring buffers, counters, output
        np.testing.assert_array_equal(buf, ref.storage.buffers[dt], err_msg=f"{dt} storage differs")
    assert fast.report.cycles == ref.report.cycles


def test_whole_ring_adds_in_the_ring_order():
    """16 replicas, one clockwise ring in poplibs' interleaved order 0, 2, ..., 14, 15, 13, ..., 1:
    fragment f is added from the rank after f around to f, left to right (big spread: any other
    order shows in the bits)."""
    replicas, m = 16, 5
    g, prog, x, y = build(replicas, replicas * m, Method.CLOCKWISE_RING, Op.ADD)
    values = (np.random.default_rng(1).standard_normal((replicas, replicas * m)) * 1e4) ** 3
    values = values.astype(np.float32)
    got = run(g, prog, x, values, False).read_tensor(y)
    order = list(range(0, 16, 2)) + list(range(15, 0, -2))
    rows = values.reshape(replicas, replicas, m)
    for f in range(replicas):
        p = order.index(f)
        ranks = [order[(p + 1 + i) % replicas] for i in range(replicas)]
        acc = rows[ranks[0], f].copy()
        for r in ranks[1:]:
            acc = acc + rows[r, f]
        for r in range(replicas):
            np.testing.assert_array_equal(got[r, f * m:(f + 1) * m], acc)


def test_faulty_ring_runs_step_by_step_and_raises(taken):
    g = sp.Graph(TARGET, replication_factor=4)
    x = g.add_variable(sp.float32, (16,), "x")
    C.map_by_columns(g, x.reshape(4, 4))
    prog = P.Sequence()
    C.all_reduce(g, x, prog, options={"method": Method.CLOCKWISE_RING, "injectFault": ("replica", 1)})
    eng = sp.Engine(g, [prog])
    with pytest.raises(sp.errors.EngineError, match="replica 1"):
        eng.run(0)
    assert taken[0] == 0


@pytest.mark.parametrize("method", [Method.CLOCKWISE_RING, Method.BIDIRECTIONAL_RING_PAIR, Method.MEET_IN_MIDDLE_RING])
def test_all_reduce_mean_divides_the_fragments_with_the_sums_bits(method):
    """MEAN divides each reduced fragment before the all-gather: the bits of the ADD result
    divided by the group size afterwards (numpy's float32 division)."""
    replicas, numel = 4, 4 * 12
    values = ((np.random.default_rng(3).standard_normal((replicas, numel)) * 1e4) ** 3).astype(np.float32)
    got = {}
    for op in (Op.ADD, Op.MEAN):
        g, prog, x, y = build(replicas, numel, method, op)
        got[op] = run(g, prog, x, values, False).read_tensor(y)
    np.testing.assert_array_equal(got[Op.MEAN], got[Op.ADD] / np.float32(replicas))


def test_executable_with_remote_copies_saves_and_loads(tmp_path):
    """RemoteCopy to and from a remote buffer survives save/load: the loaded engine moves the same
    rows (checked against numpy's row copy) and its buffer is reachable by name."""
    from softipu.compiler.serialize import load_executable, save_executable
    g = sp.Graph(TARGET, replication_factor=2)
    buf = g.add_remote_buffer("buf", sp.float32, (6,), repeats=3)
    x = g.add_variable(sp.float32, (6,), "x")
    y = g.add_variable(sp.float32, (6,), "y")
    sp.ops.map_linearly(g, x)
    sp.ops.map_linearly(g, y)
    eng = sp.Engine(g, [P.Sequence([P.RemoteCopy(x, buf, 2), P.RemoteCopy(buf, y, 1)])])
    save_executable(eng.executable, tmp_path / "exe")
    exe, skeleton, _ = load_executable(tmp_path / "exe")
    loaded = sp.Engine.from_executable(exe, skeleton)
    rows = np.arange(2 * 3 * 6, dtype=np.float32).reshape(2, 3, 6)
    values = -np.arange(12, dtype=np.float32).reshape(2, 6)
    loaded.write_remote_buffer(skeleton.remote_buffers["buf"], rows)
    loaded.write_tensor(sp.Tensor(skeleton, x.dtype, x.shape, x.offset, x.strides), values)
    loaded.run(0)
    got = loaded.read_tensor(sp.Tensor(skeleton, y.dtype, y.shape, y.offset, y.strides))
    np.testing.assert_array_equal(got, rows[:, 1])
    want = rows.copy()
    want[:, 2] = values
    np.testing.assert_array_equal(loaded.read_remote_buffer(skeleton.remote_buffers["buf"]), want)
