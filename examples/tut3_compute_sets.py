"""Tutorial 3: compute sets and BSP supersteps, on a 1-D heat-diffusion stencil.

The IPU runs in bulk-synchronous supersteps: all tiles *sync*, *exchange* data between tiles, then
*compute* on their own memory only. ``Execute(cs)`` is one superstep: the exchange delivers every
vertex's inputs that live on other tiles, then every vertex of ``cs`` runs in parallel.

So within one compute set no vertex may read an element another vertex writes: there is no order
between them and a tile cannot see another's memory mid-compute. A stencil, where each point reads
its neighbours, therefore takes two compute sets per step:

- ``diffuse``: read ``u`` (own slice plus one halo point from each neighbour tile), write ``u_next``;
- ``copy_back``: write ``u_next`` back into ``u``, ready for the next step.

The last part wires ``diffuse`` to update ``u`` in place and shows the compiler's refusal.
"""

from __future__ import annotations

import numpy as np

import softipu as sp
from softipu import program as P

TILES, N, STEPS, ALPHA = 4, 64, 50, 0.25


class Diffuse(sp.Vertex):
    """u_next[i] = u[i] + alpha * (u[i-1] - 2 u[i] + u[i+1]) for the vertex's slice."""

    alpha = sp.Param(sp.float32)
    u = sp.Input(sp.float32)  # the slice with one halo point each side: 2 longer than u_next
    u_next = sp.Output(sp.float32)

    @staticmethod
    def compute(alpha, u, u_next):
        centre = u[..., 1:-1]
        u_next[...] = centre + alpha * (u[..., :-2] - 2 * centre + u[..., 2:])

    @staticmethod
    def cycles(alpha, u, u_next):
        return 15 + 3 * u_next


class CopyBack(sp.Vertex):
    src = sp.Input(sp.float32)
    dst = sp.Output(sp.float32)

    @staticmethod
    def compute(src, dst):
        dst[...] = src

    @staticmethod
    def cycles(src, dst):
        return 10 + -(-src // 2)


def owned(tile: int) -> slice:
    """The interior points tile ``tile`` updates; points 0 and N-1 are fixed boundaries."""
    per = N // TILES
    return slice(max(1, tile * per), min(N - 1, (tile + 1) * per))


def diffuse(g: sp.Graph, u: sp.Tensor, u_next: sp.Tensor, name: str = "diffuse") -> sp.ComputeSet:
    cs = g.add_compute_set(name)
    for tile in range(TILES):
        s = owned(tile)
        g.add_vertex(cs, Diffuse, {"alpha": ALPHA, "u": u[s.start - 1 : s.stop + 1],
                                   "u_next": u_next[s]}, tile=tile)
    return cs


def copy_back(g: sp.Graph, src: sp.Tensor, dst: sp.Tensor) -> sp.ComputeSet:
    cs = g.add_compute_set("copy_back")
    for tile in range(TILES):
        g.add_vertex(cs, CopyBack, {"src": src[owned(tile)], "dst": dst[owned(tile)]}, tile=tile)
    return cs


def initial() -> np.ndarray:
    u0 = np.zeros(N, np.float32)
    u0[0], u0[N // 2] = 1.0, 4.0  # a hot left wall and a hot spot in the middle
    return u0


def in_place_error() -> str:
    """Compile ``diffuse`` with ``u_next`` aliased to ``u``: neighbours read each other's writes."""
    g = sp.Graph(sp.targets.ipu_model(tiles=TILES))
    u = g.add_variable(sp.float32, (N,), name="u")
    sp.ops.map_linearly(g, u)
    try:
        sp.Engine(g, [P.Execute(diffuse(g, u, u, name="diffuse_in_place"))])
    except sp.WriteConflictError as exc:
        return str(exc)
    raise AssertionError("an in-place stencil compiled")


def main() -> dict[str, object]:
    g = sp.Graph(sp.targets.ipu_model(tiles=TILES))
    u = g.add_variable(sp.float32, (N,), name="u")
    u_next = g.add_variable(sp.float32, (N,), name="u_next")
    sp.ops.map_linearly(g, u)
    sp.ops.map_linearly(g, u_next)  # same layout as u: copy_back needs no exchange
    step = P.Sequence(P.Execute(diffuse(g, u, u_next)), P.Execute(copy_back(g, u_next, u)))

    eng = sp.Engine(g, [P.Repeat(STEPS, step)])  # 2 supersteps per step
    eng.write_tensor(u, initial())
    eng.run(0)
    return {"u": eng.read_tensor(u), "in_place_error": in_place_error()}


if __name__ == "__main__":
    np.set_printoptions(precision=3, linewidth=100)
    for key, value in main().items():
        print(f"{key}: {value}")
