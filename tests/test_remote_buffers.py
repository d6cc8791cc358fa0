"""Remote buffers in Streaming Memory: Graph.add_remote_buffer and program.RemoteCopy.

Oracles: numpy row assignments per replica; the price from the Streaming Memory rate of
softipu.target.systems (20 GB/s per IPU [U]) worked out by hand.
"""

from __future__ import annotations

import numpy as np
import pytest

import softipu as sp
from softipu import program as P

TARGET = sp.targets.ipu_model(tiles=4)


def graph(replicas: int = 1) -> sp.Graph:
    return sp.Graph(TARGET, replication_factor=replicas)


def mapped(g: sp.Graph, dtype, shape, name: str) -> sp.Tensor:
    t = g.add_variable(dtype, shape, name)
    sp.ops.map_linearly(g, t)
    return t


@pytest.mark.parametrize("reference", [False, True])
def test_rows_go_out_and_come_back_at_run_time_offsets_per_replica(reference):
    g = graph(replicas=2)
    buf = g.add_remote_buffer("store", sp.float32, (3,), repeats=4)
    x = mapped(g, sp.float32, (3,), "x")
    y = mapped(g, sp.float32, (2, 3), "y")
    off = mapped(g, sp.int32, (1,), "off")
    rows = mapped(g, sp.int32, (2,), "rows")
    prog = P.Sequence([P.RemoteCopy(x, buf, off), P.RemoteCopy(buf, y, rows)])
    eng = sp.Engine(g, [prog], options={"engine.reference": reference})
    start = np.arange(24, dtype=np.float32).reshape(2, 4, 3)
    eng.write_remote_buffer(buf, start)
    eng.write_tensor(x, [[-1, -2, -3], [-4, -5, -6]])
    eng.write_tensor(off, [[2], [0]])
    eng.write_tensor(rows, [[2, 1], [3, 0]])
    eng.run(0)
    want = start.copy()
    want[0, 2], want[1, 0] = [-1, -2, -3], [-4, -5, -6]
    np.testing.assert_array_equal(eng.read_remote_buffer(buf), want)
    np.testing.assert_array_equal(eng.read_tensor(y), [want[0, [2, 1]], want[1, [3, 0]]])


def test_static_offset_inside_a_repeat_and_host_row_access():
    g = graph()
    buf = g.add_remote_buffer("w", sp.int32, (2, 2), repeats=3)
    t = mapped(g, sp.int32, (2, 2), "t")
    prog = P.Sequence([P.RemoteCopy(buf, t, 1), P.Repeat(2, P.Sequence([P.RemoteCopy(t, buf, 2)]))])
    eng = sp.Engine(g, [prog])
    eng.write_remote_buffer(buf, [[5, 6], [7, 8]], repeat=1)
    eng.run(0)
    got = eng.read_remote_buffer(buf)
    np.testing.assert_array_equal(got, [[[0, 0], [0, 0]], [[5, 6], [7, 8]], [[5, 6], [7, 8]]])
    np.testing.assert_array_equal(eng.read_tensor(t), [[5, 6], [7, 8]])


def test_priced_on_the_streaming_memory_path_by_hand():
    g = graph(replicas=2)
    buf = g.add_remote_buffer("b", sp.float32, (1000,))
    x = mapped(g, sp.float32, (1000,), "x")
    eng = sp.Engine(g, [P.Sequence([P.RemoteCopy(x, buf)])])
    (step,) = eng.executable.steps
    # 4000 B at 20 GB/s = 200 ns = 266 cycles at 1.33 GHz, + 30 cycles exchange latency.
    assert step.exchange_cycles == 30 + 266
    assert step.host_bytes == 4000 and step.sync_cycles == TARGET.on_chip_sync_cycles


def test_too_large_for_streaming_memory_and_misfits_are_clear_errors():
    g = graph(replicas=4)
    # 256 GB per machine of 4 IPUs: 64 GB per one-IPU replica.
    g.add_remote_buffer("fits", sp.float32, (1000,), repeats=15_999_000)
    with pytest.raises(sp.StreamError, match=r"remote buffer 'big' \(at .*test_remote_buffers.py:\d+\): "
                                             r"4,000,000,000 bytes per replica \(with 63,996,000,000 in other"):
        g.add_remote_buffer("big", sp.float32, (1000,), repeats=1_000_000)
    with pytest.raises(sp.StreamError, match="names must be unique"):
        g.add_remote_buffer("fits", sp.float32, (2,))
    buf = g.add_remote_buffer("small", sp.float32, (4,), repeats=2)
    wrong = mapped(g, sp.float32, (5,), "wrong")
    ints = mapped(g, sp.int32, (4,), "ints")
    with pytest.raises(sp.CompileError, match=r"tensor wrong \(5,\) is neither a row \(4,\)"):
        sp.Engine(g, [P.RemoteCopy(wrong, buf)])
    with pytest.raises(sp.CompileError, match=r"tensor ints is sp.int32 but RemoteBuffer\('small'"):
        sp.Engine(g, [P.RemoteCopy(buf, ints)])
    with pytest.raises(sp.CompileError, match="offset 2 with 1 row"):
        sp.Engine(g, [P.RemoteCopy(buf, mapped(g, sp.float32, (4,), "ok"), 2)])
    with pytest.raises(sp.ProgramError, match="needs a tensor and a remote buffer"):
        P.RemoteCopy(ints, ints)


def test_run_time_offset_out_of_range_names_buffer_and_replica():
    g = graph(replicas=2)
    buf = g.add_remote_buffer("b", sp.int32, (2,), repeats=2)
    x = mapped(g, sp.int32, (2,), "x")
    off = mapped(g, sp.int32, (1,), "off")
    eng = sp.Engine(g, [P.Sequence([P.RemoteCopy(x, buf, off)])])
    eng.write_tensor(off, [[1], [5]])
    with pytest.raises(sp.EngineError, match=r"offset 5 on replica 1 is outside RemoteBuffer\('b'"):
        eng.run(0)
    np.testing.assert_array_equal(eng.read_remote_buffer(buf), np.zeros((2, 2, 2)))  # nothing written
