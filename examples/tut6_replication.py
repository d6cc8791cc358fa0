"""Tutorial 6: replication, one graph run as several identical copies.

``sp.Graph(target, replication_factor=R)`` describes *one* replica; the compiled program runs on R
IPUs (or groups of IPUs) at once, each with its own copy of every variable. Tile numbers are the
same in every replica. This is data parallelism: the same program on different data.

- ``write_tensor(t, values)`` with ``values.shape == t.shape`` writes every replica the same;
  with shape ``(R, *t.shape)`` row r goes to replica r. ``read_tensor`` returns ``(R, *t.shape)``.
- ``connect_stream(name, data, replica=r)`` gives replica r its own host end, so each replica
  streams its own batches in and its results out.
- Control flow must agree across replicas (they run in lockstep between syncs): a loop or branch
  whose predicate differs between replicas is an error.

Here 4 replicas share weights ``w`` but each has its own ``offset`` and its own input stream, and
computes ``y = w * x + offset`` for ``BATCHES`` batches.
"""

from __future__ import annotations

import numpy as np

import softipu as sp
from softipu import program as P

REPLICAS, TILES, N, BATCHES = 4, 4, 8, 3


class WeightedShift(sp.Vertex):
    w = sp.Input(sp.float32)
    x = sp.Input(sp.float32)
    offset = sp.Input(sp.float32, sp.SCALAR)
    y = sp.Output(sp.float32)

    @staticmethod
    def compute(w, x, offset, y):
        y[...] = w * x + offset  # arrays arrive as (replicas, vertices, n): all replicas in one call

    @staticmethod
    def cycles(w, x, offset, y):
        return 15 + x  # per replica: every replica runs the same vertices


def build(g: sp.Graph) -> tuple[dict[str, sp.Tensor], P.Program]:
    t = {name: g.add_variable(sp.float32, (N,), name=name) for name in ("w", "x", "y")}
    t["offset"] = g.add_variable(sp.float32, (1,), name="offset")
    for name in ("w", "x", "y"):
        sp.ops.map_linearly(g, t[name])
    g.set_tile_mapping(t["offset"], 0)

    cs = g.add_compute_set("weighted_shift")
    per = N // TILES
    for tile in range(TILES):
        part = slice(tile * per, (tile + 1) * per)
        g.add_vertex(cs, WeightedShift, {"w": t["w"][part], "x": t["x"][part], "offset": t["offset"],
                                         "y": t["y"][part]}, tile=tile)

    x_in = g.add_host_to_device_fifo("x_in", sp.float32, N)
    y_out = g.add_device_to_host_fifo("y_out", sp.float32, N)
    return t, P.Repeat(BATCHES, P.Sequence(P.Copy(x_in, t["x"]), P.Execute(cs), P.Copy(t["y"], y_out)))


def main() -> dict[str, object]:
    g = sp.Graph(sp.targets.ipu_model(tiles=TILES), replication_factor=REPLICAS)
    t, program = build(g)
    eng = sp.Engine(g, [program])

    w = np.linspace(0.5, 4.0, N, dtype=np.float32)
    offsets = 100.0 * np.arange(REPLICAS, dtype=np.float32).reshape(REPLICAS, 1)
    eng.write_tensor(t["w"], w)  # shape (N,): the same weights in every replica
    eng.write_tensor(t["offset"], offsets)  # shape (REPLICAS, 1): one offset per replica

    rng = np.random.default_rng(0)
    xs = rng.integers(0, 10, (REPLICAS, BATCHES, N)).astype(np.float32)
    ys = np.zeros_like(xs)
    for r in range(REPLICAS):
        eng.connect_stream("x_in", xs[r], replica=r)  # each replica reads its own batches...
        eng.connect_stream("y_out", ys[r], replica=r)  # ...and writes its own results
    eng.run(0)
    return {"w": w, "offsets": offsets.ravel(), "xs": xs, "ys": ys,
            "y_last": eng.read_tensor(t["y"])}  # (REPLICAS, N): the last batch of each replica


if __name__ == "__main__":
    np.set_printoptions(precision=3, linewidth=100)
    for key, value in main().items():
        print(f"{key}:\n{value}")
