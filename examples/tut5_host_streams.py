"""Tutorial 5: host streams, feeding batches in and results out during one run.

``write_tensor``/``read_tensor`` are for setup and inspection. A running program talks to the host
through *data streams*: first-in first-out queues between host memory and the device.
``Copy(stream, tensor)`` takes the next transfer of a host-to-device FIFO into a tensor;
``Copy(tensor, stream)`` hands a tensor's values to a device-to-host FIFO. On the IPU a stream
copy is an exchange with the host over PCIe, inside a BSP superstep like any other copy.

The host end of a stream is connected before the run, by name, to either

- a numpy array: a ring of transfers, one row each (so B rows serve B copies), or
- a callback: called once per transfer; it fills the buffer (host to device) or receives the data
  (device to host), so the host can produce or consume data on demand.

Here one ``run`` loops over ``BATCHES`` batches: stream a batch in from an array and a scale in
from a callback, compute ``y = scale * x**2`` on every tile, stream ``y`` out to an array and its
per-tile sums to a callback.
"""

from __future__ import annotations

import numpy as np

import softipu as sp
from softipu import program as P

TILES, N, BATCHES = 4, 8, 5


class ScaledSquare(sp.Vertex):
    scale = sp.Input(sp.float32, sp.SCALAR)  # one element on tile 0, read by every tile
    x = sp.Input(sp.float32)
    y = sp.Output(sp.float32)
    y_sum = sp.Output(sp.float32, sp.SCALAR)

    @staticmethod
    def compute(scale, x, y, y_sum):
        y[...] = scale * x * x
        y_sum[...] = y.sum(axis=-1, keepdims=True)

    @staticmethod
    def cycles(scale, x, y, y_sum):
        return 20 + 2 * x


def build(g: sp.Graph) -> P.Program:
    x = g.add_variable(sp.float32, (N,), name="x")
    y = g.add_variable(sp.float32, (N,), name="y")
    sums = g.add_variable(sp.float32, (TILES,), name="sums")
    scale = g.add_variable(sp.float32, (1,), name="scale")
    for t in (x, y, sums):
        sp.ops.map_linearly(g, t)
    g.set_tile_mapping(scale, 0)

    cs = g.add_compute_set("scaled_square")
    per = N // TILES
    for tile in range(TILES):
        part = slice(tile * per, (tile + 1) * per)
        g.add_vertex(cs, ScaledSquare, {"scale": scale, "x": x[part], "y": y[part],
                                        "y_sum": sums[tile]}, tile=tile)

    x_in = g.add_host_to_device_fifo("x_in", sp.float32, N)
    scale_in = g.add_host_to_device_fifo("scale_in", sp.float32, 1)
    y_out = g.add_device_to_host_fifo("y_out", sp.float32, N)
    sums_out = g.add_device_to_host_fifo("sums_out", sp.float32, TILES)
    batch = P.Sequence(P.Copy(x_in, x), P.Copy(scale_in, scale), P.Execute(cs),
                       P.Copy(y, y_out), P.Copy(sums, sums_out))
    return P.Repeat(BATCHES, batch)


def main() -> dict[str, object]:
    g = sp.Graph(sp.targets.ipu_model(tiles=TILES))
    eng = sp.Engine(g, [build(g)])

    xs = np.arange(BATCHES * N, dtype=np.float32).reshape(BATCHES, N) / 10
    ys = np.zeros_like(xs)  # the device writes here, one row per batch
    scales_sent: list[float] = []
    sums_received: list[np.ndarray] = []

    def next_scale(buffer: np.ndarray) -> None:  # the host makes each scale when it is asked for
        buffer[0] = 1.0 + len(scales_sent)
        scales_sent.append(float(buffer[0]))

    eng.connect_stream("x_in", xs)
    eng.connect_stream("y_out", ys)
    eng.connect_stream("scale_in", next_scale)
    eng.connect_stream("sums_out", sums_received.append)
    eng.run(0)  # all BATCHES batches in one run
    return {"xs": xs, "scales": scales_sent, "ys": ys, "sums": np.array(sums_received)}


if __name__ == "__main__":
    np.set_printoptions(precision=3, linewidth=100)
    for key, value in main().items():
        print(f"{key}:\n{value}")
