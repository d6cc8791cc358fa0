"""Tutorial 4: loops, branches and functions run on the device.

Control flow is part of the compiled program, not of the host script: ``Repeat`` runs a body a
fixed number of times, ``RepeatWhileTrue`` until a one-element *device* tensor becomes false,
``If`` and ``Switch`` pick a branch from a device tensor. The host starts a program once and the
IPU decides the rest, so a loop costs no host round trip per iteration. A predicate written by a
vertex on one tile is broadcast to every tile's control code through the exchange.

``g.add_function(program)`` makes a function: its code exists once in tile memory however often
``Call`` runs it, whereas the same program placed twice in a ``Sequence`` is laid down twice.

An engine holds several programs; ``eng.run(i)`` runs the i-th. Here:

0. ``Repeat``: 3 Heron steps towards sqrt(x);
1. ``RepeatWhileTrue``: Heron steps until no tile's estimate moved more than ``TOL``;
2. ``If`` on a host-written flag: double v or negate it;
3. ``Switch`` on a host-written code: add one, double, negate, or (default) zero v;
4. a function "add one, then double" called twice: v -> 2 * (2 * (v + 1) + 1) = 4 v + 6.
"""

from __future__ import annotations

import numpy as np

import softipu as sp
from softipu import program as P

TILES, N, TOL = 4, 16, 1e-4


class HeronStep(sp.Vertex):
    """r <- (r + x / r) / 2, Heron's step towards sqrt(x); change = how far r moved."""

    x = sp.Input(sp.float32)
    r = sp.InOut(sp.float32)
    change = sp.Output(sp.float32, sp.SCALAR)

    @staticmethod
    def compute(x, r, change):
        new = np.float32(0.5) * (r + x / r)
        change[...] = np.abs(new - r).max(axis=-1, keepdims=True)
        r[...] = new

    @staticmethod
    def cycles(x, r, change):
        return 20 + 10 * r  # a rough guess: the divide dominates, with no vector form


class StillMoving(sp.Vertex):
    """moving <- max(changes) > tol: the loop predicate, computed on one tile."""

    tol = sp.Param(sp.float32)
    changes = sp.Input(sp.float32)
    moving = sp.Output(sp.bool_, sp.SCALAR)

    @staticmethod
    def compute(tol, changes, moving):
        moving[...] = changes.max(axis=-1, keepdims=True) > tol

    @staticmethod
    def cycles(tol, changes, moving):
        return 15 + changes


class Increment(sp.Vertex):
    count = sp.InOut(sp.int32, sp.SCALAR)

    @staticmethod
    def compute(count):
        count[...] += 1

    @staticmethod
    def cycles(count):
        return 10


class Affine(sp.Vertex):
    """v <- scale * v + shift, in place."""

    scale = sp.Param(sp.float32)
    shift = sp.Param(sp.float32)
    v = sp.InOut(sp.float32)

    @staticmethod
    def compute(scale, shift, v):
        v[...] = scale * v + shift

    @staticmethod
    def cycles(scale, shift, v, target):
        return 15 + -(-v // target.vector_width(sp.float32))


def per_tile(g: sp.Graph, name: str, codelet: type[sp.Vertex], fields: dict, **slices: sp.Tensor):
    """A compute set with one ``codelet`` vertex per tile on that tile's quarter of ``slices``."""
    cs = g.add_compute_set(name)
    for tile in range(TILES):
        mine = {k: t[tile * t.numel // TILES : (tile + 1) * t.numel // TILES] for k, t in slices.items()}
        g.add_vertex(cs, codelet, fields | mine, tile=tile)
    return cs


def heron_programs(g: sp.Graph, x: sp.Tensor, r: sp.Tensor, steps: sp.Tensor) -> list[P.Program]:
    changes = g.add_variable(sp.float32, (TILES,), name="changes")
    moving = g.add_variable(sp.bool_, (1,), name="moving")
    sp.ops.map_linearly(g, changes)  # one per tile, written where it is computed
    g.set_tile_mapping(moving, 0)

    heron = per_tile(g, "heron", HeronStep, {}, x=x, r=r, change=changes)
    g.add_vertex(heron, Increment, {"count": steps}, tile=0)  # counts steps as they run
    check = g.add_compute_set("check")
    g.add_vertex(check, StillMoving, {"tol": TOL, "changes": changes, "moving": moving}, tile=0)

    step = P.Execute(heron)
    fixed = P.Repeat(3, step)
    # do { step } while (moving): the condition program runs before each test of the predicate.
    until_converged = P.Sequence(step, P.RepeatWhileTrue(P.Execute(check), moving, step))
    return [fixed, until_converged]


def branch_programs(g: sp.Graph, v: sp.Tensor, flag: sp.Tensor, code: sp.Tensor) -> list[P.Program]:
    def affine(name: str, scale: float, shift: float) -> P.Program:
        return P.Execute(per_tile(g, name, Affine, {"scale": scale, "shift": shift}, v=v))

    add_one, double, negate = affine("add_one", 1, 1), affine("double", 2, 0), affine("negate", -1, 0)
    branch = P.If(flag, double, negate)
    switch = P.Switch(code, {0: add_one, 1: double, 2: negate}, default=affine("zero", 0, 0))
    fn = g.add_function(P.Sequence(add_one, double), name="add_one_then_double")
    return [branch, switch, P.Sequence(P.Call(fn), P.Call(fn))]


def main() -> dict[str, object]:
    g = sp.Graph(sp.targets.ipu_model(tiles=TILES))
    x, r, v = (g.add_variable(sp.float32, (N,), name=n) for n in ("x", "r", "v"))
    steps = g.add_variable(sp.int32, (1,), name="steps")
    flag = g.add_variable(sp.bool_, (1,), name="flag")
    code = g.add_variable(sp.int32, (1,), name="code")
    for t in (x, r, v):
        sp.ops.map_linearly(g, t)
    for t in (steps, flag, code):
        g.set_tile_mapping(t, 0)
    eng = sp.Engine(g, heron_programs(g, x, r, steps) + branch_programs(g, v, flag, code))
    return run_heron(eng, x, r, steps) | run_branches(eng, v, flag, code)


def run_heron(eng: sp.Engine, x: sp.Tensor, r: sp.Tensor, steps: sp.Tensor) -> dict[str, object]:
    results: dict[str, object] = {}
    x0 = np.linspace(1.0, 1000.0, N, dtype=np.float32)
    for name, index in (("fixed", 0), ("until_converged", 1)):
        eng.write_tensor(x, x0)
        eng.write_tensor(r, x0)  # start each run from r = x
        eng.write_tensor(steps, [0])
        eng.run(index)
        results[f"{name}_r"], results[f"{name}_steps"] = eng.read_tensor(r), int(eng.read_tensor(steps)[0])
    return results


def run_branches(eng: sp.Engine, v: sp.Tensor, flag: sp.Tensor, code: sp.Tensor) -> dict[str, object]:
    results: dict[str, object] = {}
    v0 = np.arange(-2.0, 6.0, 0.5, dtype=np.float32)
    for flag_value in (True, False):  # one compiled program, two branches
        eng.write_tensor(flag, [flag_value])
        results[f"if_{flag_value}"] = run_on(eng, 2, v, v0)
    for code_value in range(4):
        eng.write_tensor(code, [code_value])
        results[f"switch_{code_value}"] = run_on(eng, 3, v, v0)
    results["call_twice"] = run_on(eng, 4, v, v0)
    return results


def run_on(eng: sp.Engine, index: int, v: sp.Tensor, v0: np.ndarray) -> np.ndarray:
    eng.write_tensor(v, v0)
    eng.run(index)
    return eng.read_tensor(v)


if __name__ == "__main__":
    np.set_printoptions(precision=4, linewidth=100)
    for key, value in main().items():
        print(f"{key}: {value}")
