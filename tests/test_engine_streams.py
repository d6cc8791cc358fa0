"""The Engine: host streams and replication, against numpy.

Tests that only need a value run on both interpreters (``reference`` parametrizes the fast,
batched engine and the per-vertex reference engine); every expected value is computed here with
numpy, never read back from softipu.
"""

from __future__ import annotations

import numpy as np
import pytest

import softipu as sp
from _engine_helpers import ENGINES, counter_step, engine, next_line, variable
from codelets_for_tests import AddOne, RowSum, sequential_sum
from softipu import program as P


# -- host streams --------------------------------------------------------------------------------
def _stream_graph(replicas: int = 1):
    g = sp.Graph(sp.targets.ipu_model(tiles=4), replication_factor=replicas)
    x = variable(g, sp.float32, (4,), "x")
    feed = g.add_host_to_device_fifo("feed", sp.float32, 4)
    drain = g.add_device_to_host_fifo("drain", sp.float32, 4)
    return g, x, feed, drain


def test_host_to_device_array_is_a_ring_read_at_run_time():
    g, x, feed, _ = _stream_graph()
    eng = engine(g, [P.Copy(feed, x)])
    host = np.arange(12, dtype=np.float32).reshape(3, 4)
    eng.connect_stream("feed", host)
    for row in (0, 1, 2, 0):
        eng.run(0)
        np.testing.assert_array_equal(eng.read_tensor(x), host[row])
    host[1] = -1  # the engine reads the host buffer when the transfer happens, like Poplar
    eng.run(0)
    np.testing.assert_array_equal(eng.read_tensor(x), [-1, -1, -1, -1])
    eng.connect_stream("feed", np.arange(8, dtype=np.float32))  # 1-D: rows of 4, from the start
    for want in ([0, 1, 2, 3], [4, 5, 6, 7], [0, 1, 2, 3]):
        eng.run(0)
        np.testing.assert_array_equal(eng.read_tensor(x), want)


def test_host_to_device_callback_fills_the_buffer():
    g, x, feed, _ = _stream_graph()
    y = variable(g, sp.float32, (4,), "y")
    eng = engine(g, [P.Copy(feed, x), P.Sequence([P.Copy(feed, x), P.Copy(feed, y)])])
    seen = []

    def fill(buffer):
        seen.append((buffer.shape, buffer.dtype))
        buffer[:] = len(seen)

    eng.connect_stream("feed", fill)
    eng.run(0)
    np.testing.assert_array_equal(eng.read_tensor(x), [1, 1, 1, 1])
    eng.run(1)
    np.testing.assert_array_equal(eng.read_tensor(x), [2, 2, 2, 2])
    np.testing.assert_array_equal(eng.read_tensor(y), [3, 3, 3, 3])
    assert seen == [((4,), np.dtype(np.float32))] * 3
    eng.connect_stream("feed", lambda buffer: np.array([9, 8, 7, 6]))  # returning the data works too
    eng.run(0)
    np.testing.assert_array_equal(eng.read_tensor(x), [9, 8, 7, 6])
    eng.connect_stream("feed", lambda buffer: np.zeros(5))
    with pytest.raises(sp.StreamError, match="feed"):
        eng.run(0)


def test_device_to_host_into_an_array_and_a_callback():
    g, x, _, drain = _stream_graph()
    eng = engine(g, [P.Copy(x, drain)])
    host = np.zeros((2, 4), np.float32)
    eng.connect_stream("drain", host)
    for k in range(3):
        eng.write_tensor(x, np.arange(4) + 10 * k)
        eng.run(0)
    np.testing.assert_array_equal(host, [[20, 21, 22, 23], [10, 11, 12, 13]])  # a ring: row 0 again
    received = []
    eng.connect_stream("drain", received.append)
    eng.write_tensor(x, [5, 6, 7, 8])
    eng.run(0)
    eng.write_tensor(x, [0, 0, 0, 0])
    eng.run(0)
    assert len(received) == 2
    np.testing.assert_array_equal(received[0], [5, 6, 7, 8])  # a copy, not a view of the device
    assert received[0].dtype == np.float32


@pytest.mark.parametrize(
    ("name", "data", "match"),
    [
        ("feed", np.zeros(5, np.float32), "multiple of 4"),
        ("feed", np.zeros(4, np.float64), "float32"),
        ("feed", np.zeros((4, 8), np.float32)[:, ::2], "C-contiguous"),
        ("feed", np.zeros(0, np.float32), "multiple of 4"),
        ("feed", [1.0, 2.0, 3.0, 4.0], "numpy array"),
        ("drain", np.zeros(4, np.float32).view(), "read-only"),
    ],
    ids=["wrong-size", "wrong-dtype", "non-contiguous", "empty", "list", "read-only"],
)
def test_bad_stream_connections_raise(name, data, match):
    g, x, feed, drain = _stream_graph()
    eng = engine(g, [P.Copy(feed, x), P.Copy(x, drain)])
    if match == "read-only":
        data.flags.writeable = False
    with pytest.raises(sp.StreamError, match=match):
        eng.connect_stream(name, data)


def test_unconnected_stream_raises_at_run_naming_it():
    g, x, feed, _ = _stream_graph()
    eng = engine(g, [P.Sequence([P.Copy(feed, x)])])  # compiles without a connection
    with pytest.raises(sp.StreamError, match="'feed' is not connected"):
        eng.run(0)


def test_unconnected_stream_error_names_the_copy_line():
    g, x, feed, _ = _stream_graph()
    line = next_line()
    copy = P.Copy(feed, x)
    eng = engine(g, [copy])
    with pytest.raises(sp.StreamError) as info:
        eng.run(0)
    assert f"{__file__}:{line}" in str(info.value)


def test_stream_name_typo_suggests_the_near_name():
    g, x, feed, _ = _stream_graph()
    eng = engine(g, [P.Copy(feed, x)])
    with pytest.raises(sp.StreamError, match="did you mean 'feed'"):
        eng.connect_stream("fede", np.zeros(4, np.float32))


def test_stream_copy_direction_is_checked_at_compile():
    g, x, feed, drain = _stream_graph()
    with pytest.raises(sp.CompileError, match="'drain' is device-to-host"):
        engine(g, [P.Copy(drain, x)])
    with pytest.raises(sp.CompileError, match="'feed' is host-to-device"):
        engine(g, [P.Copy(x, feed)])


def test_stream_copy_into_a_2d_tensor_of_the_same_size():
    # Poplar's Copy(stream, tensor) needs only equal element counts; the engine already reshapes
    # each transfer to the destination's shape.
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    m = variable(g, sp.float32, (2, 3), "m")
    feed = g.add_host_to_device_fifo("feed", sp.float32, 6)
    eng = engine(g, [P.Copy(feed, m)])
    eng.connect_stream("feed", np.arange(6, dtype=np.float32))
    eng.run(0)
    np.testing.assert_array_equal(eng.read_tensor(m), [[0, 1, 2], [3, 4, 5]])


# -- replication ---------------------------------------------------------------------------------
@ENGINES
def test_replicas_hold_different_data_and_compute_independently(reference):
    g = sp.Graph(sp.targets.ipu_model(tiles=4), replication_factor=2)
    x, y = variable(g, sp.float32, (2, 4), "x"), variable(g, sp.float32, (2, 4), "y")
    cs = g.add_compute_set("sum_rows")
    g.add_vertices(cs, RowSum, {"x": x, "total": y[:, 0]}, tiles=[0, 1])
    g.add_vertex(cs, AddOne, {"x": x[:, 1:4].flatten(), "y": y[:, 1:4].flatten()}, tile=2)
    eng = engine(g, [P.Execute(cs)], reference)
    xs = np.arange(16, dtype=np.float32).reshape(2, 2, 4) * np.array([1, -1], np.float32)[:, None, None]
    eng.write_tensor(x, xs)
    eng.run(0)
    got = eng.read_tensor(y)
    assert got.shape == (2, 2, 4)
    np.testing.assert_array_equal(got[..., 0], sequential_sum(xs)[..., 0])
    np.testing.assert_array_equal(got[..., 1:], xs[..., 1:] + 1)
    eng.write_tensor(x, xs[1])  # one replica's shape: both replicas get it
    np.testing.assert_array_equal(eng.read_tensor(x), np.stack([xs[1], xs[1]]))
    with pytest.raises(sp.EngineError, match=r"\(2, 2, 4\)"):
        eng.write_tensor(x, np.zeros((3, 2, 4), np.float32))


def test_replicated_streams_take_one_row_per_replica_per_copy():
    g, x, feed, drain = _stream_graph(replicas=2)
    eng = engine(g, [P.Copy(feed, x), P.Copy(x, drain)])
    host_in = np.arange(16, dtype=np.float32).reshape(4, 4)
    host_out = np.zeros((2, 4), np.float32)
    eng.connect_stream("feed", host_in)
    eng.connect_stream("drain", host_out)
    eng.run(0)
    np.testing.assert_array_equal(eng.read_tensor(x), host_in[0:2])
    eng.run(0)
    np.testing.assert_array_equal(eng.read_tensor(x), host_in[2:4])
    eng.run(1)
    np.testing.assert_array_equal(host_out, host_in[2:4])  # replica 0 into row 0, replica 1 row 1
    received = []
    eng.connect_stream("drain", received.append)  # a callback shared by the replicas: called by each
    eng.run(1)
    np.testing.assert_array_equal(received, host_in[2:4])


def test_replicated_streams_into_and_out_of_a_transposed_view():
    g = sp.Graph(sp.targets.ipu_model(tiles=4), replication_factor=2)
    m = variable(g, sp.float32, (2, 3), "m")
    feed = g.add_host_to_device_fifo("feed", sp.float32, 6)
    drain = g.add_device_to_host_fifo("drain", sp.float32, 6)
    eng = engine(g, [P.Copy(feed, m.T), P.Copy(m.T, drain)])
    host_in = np.arange(12, dtype=np.float32)
    host_out = np.zeros((2, 6), np.float32)
    eng.connect_stream("feed", host_in)
    eng.connect_stream("drain", host_out)
    eng.run(0)
    want = host_in.reshape(2, 3, 2).transpose(0, 2, 1)  # each replica's transfer fills m.T row-major
    np.testing.assert_array_equal(eng.read_tensor(m), want)
    eng.run(1)
    np.testing.assert_array_equal(host_out, host_in.reshape(2, 6))


def test_per_replica_stream_connections():
    g, x, feed, drain = _stream_graph(replicas=2)
    eng = engine(g, [P.Copy(feed, x), P.Copy(x, drain)])
    shared = np.full((1, 4), 7, np.float32)
    mine = np.full((1, 4), -1, np.float32)
    eng.connect_stream("feed", shared)
    eng.connect_stream("feed", mine, replica=1)  # replica 1's own connection wins
    eng.run(0)
    np.testing.assert_array_equal(eng.read_tensor(x), [[7] * 4, [-1] * 4])
    outs = [[], []]
    eng.connect_stream("drain", outs[0].append, replica=0)
    eng.connect_stream("drain", outs[1].append, replica=1)
    eng.run(1)
    np.testing.assert_array_equal(outs[0], [[7] * 4])
    np.testing.assert_array_equal(outs[1], [[-1] * 4])
    with pytest.raises(sp.StreamError, match="replica 2"):
        eng.connect_stream("feed", shared, replica=2)
    fresh = engine(g, [P.Copy(feed, x)])
    fresh.connect_stream("feed", shared, replica=0)  # replica 1 has no connection
    with pytest.raises(sp.StreamError, match="'feed' is not connected"):
        fresh.run(0)


@ENGINES
def test_control_flow_must_agree_across_replicas(reference):
    g = sp.Graph(sp.targets.ipu_model(tiles=4), replication_factor=2)
    out = variable(g, sp.int32, (1,), "out", tile=0)
    pred = variable(g, sp.int32, (1,), "pred", tile=1)
    eng = engine(g, [P.If(pred, counter_step(g, out, 1, "then")), P.Switch(pred, {0: P.Sequence()})],
                 reference)
    eng.write_tensor(pred, [[3], [3]])
    eng.run(0)
    np.testing.assert_array_equal(eng.read_tensor(out), [[1], [1]])
    eng.write_tensor(pred, [[1], [0]])
    for program in (0, 1):
        with pytest.raises(sp.EngineError, match="replicas disagree"):
            eng.run(program)


@pytest.mark.parametrize("replicas", [1, 2])
@ENGINES
def test_a_stream_into_a_slab_layout_fills_its_pieces_on_every_run(reference, replicas):
    """A matmul input laid out in column slabs (pieces of the variable, in another order) is
    written through views the fast engine makes on the first run and keeps."""
    from softipu.ops.matmul import _Grid, _slab_view

    g = sp.Graph(sp.targets.ipu_model(tiles=4), replication_factor=replicas)
    var = variable(g, sp.float32, (2 * 5 * 7,), "var")
    slab = _slab_view(var, 2, _Grid.of(5, 2), _Grid.of(7, 3))  # (2, 5, 7): columns in slabs of 3
    assert slab.slabs is not None
    y = variable(g, sp.float32, (2, 5, 7), "y")
    feed = g.add_host_to_device_fifo("feed", sp.float32, 70)
    eng = sp.Engine(g, [P.Sequence([P.Copy(feed, slab), P.Copy(slab, y)])], {"engine.reference": reference})
    runs = np.random.default_rng(4).standard_normal((3, replicas, 2, 5, 7)).astype(np.float32)
    for values in runs:
        for r in range(replicas):
            eng.connect_stream("feed", values[r].reshape(-1), replica=r if replicas > 1 else None)
        eng.run(0)
        got = eng.read_tensor(y)
        np.testing.assert_array_equal(got if replicas > 1 else got[None], values)
