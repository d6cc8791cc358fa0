"""Codelets and builders shared by the cost-model tests (test_costs.py, test_costs_exchange.py,
test_costs_runs.py): a vertex whose estimate is whatever the test says, one-step graphs and their
steps."""

from __future__ import annotations

import softipu as sp

# --- codelets whose estimates are whatever the test says -----------------------------------------


class Work(sp.Vertex):
    """One worker's job of ``work`` cycles (a per-vertex Param); touches only its own element."""

    x = sp.InOut(sp.float32)
    work = sp.Param(sp.int32)

    @staticmethod
    def compute(x, work):
        pass

    @staticmethod
    def cycles(x, work):
        return work


class MultiWork(sp.MultiVertex):
    """A whole-tile job of ``work`` cycles: MultiVertex estimates already include the workers."""

    x = sp.InOut(sp.float32)
    work = sp.Param(sp.int32)

    @staticmethod
    def compute(x, work):
        pass

    @staticmethod
    def cycles(x, work):
        return work


# --- helpers ----------------------------------------------------------------------------------


def variable(g: sp.Graph, n: int, tile: int, name: str, dtype=sp.float32) -> sp.Tensor:
    t = g.add_variable(dtype, (n,), name=name)
    g.set_tile_mapping(t, tile)
    return t


def work_set(g: sp.Graph, jobs: dict[int, list[int]], codelet=Work, name="work") -> sp.ComputeSet:
    """A compute set with one ``codelet`` vertex per job, on the given tiles."""
    cs = g.add_compute_set(name)
    for tile, works in jobs.items():
        x = variable(g, len(works), tile, f"{name}_x{tile}")
        for i, w in enumerate(works):
            g.add_vertex(cs, codelet, {"x": x[i : i + 1], "work": w}, tile=tile)
    return cs


def only_step(eng: sp.Engine):
    (step,) = eng.executable.steps
    return step


W = sp.targets.ipu_model(tiles=4).workers_per_tile  # 6 barrel-scheduled workers (ipu-facts §1)
