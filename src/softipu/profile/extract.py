"""The parts of a version-2 report that the page's views need beyond the step and category tables.

Each function reads a compiled executable and returns plain JSON (lists, dicts, ints, strings):

* ``variables``: the largest variables and, for the floor plan's hover, the largest ones on each
  tile, with the not-always-live peak's contributors; all index one list of variables;
* ``program_tree``: the programs and functions as nested nodes with their step and repeat count;
* ``tile_cycles``: compute cycles on every tile of the dearest compute steps (the floor plan's
  "cycles of a chosen step" colouring).

Sizes are bounded (top-N lists, a node cap) so a BERT-sized report stays a few hundred kB.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from softipu.compiler.costs import tile_compute_cycles
from softipu.compiler.executable import Executable
from softipu.graph import program as P

__all__ = ["variables", "program_tree", "tile_cycles", "step_memory", "TOP_VARIABLES", "TILE_TOP", "PEAK_TOP",
           "MAX_NODES", "TILE_CYCLE_STEPS"]

TOP_VARIABLES = 200  # the largest variables, over all tiles
TILE_TOP = 3  # the largest variables on each tile (floor-plan hover)
PEAK_TOP = 20  # the largest variables live at the not-always-live peak
MAX_NODES = 20_000  # program-tree nodes kept (the rest: "truncated")
TILE_CYCLE_STEPS = 8  # compute steps with per-tile cycles, dearest first (each is priced again)


def variables(exe: Executable) -> dict[str, Any]:
    """The variables the memory views name, and per-tile and peak references into that list."""
    mem = exe.memory
    assert mem is not None
    num_tiles = exe.target.num_tiles
    num_vars = len(exe.variables)
    ids, tiles, nbytes = (np.asarray(a, np.int64) for a in (mem.var_ids, mem.var_tiles, mem.var_bytes))
    per_var = np.bincount(ids, weights=nbytes, minlength=num_vars).astype(np.int64)
    tiles_of = np.bincount(ids, minlength=num_vars)
    chosen: dict[int, int] = {}  # variable id -> index in the list

    def ref(v: int) -> int:
        return chosen.setdefault(int(v), len(chosen))

    for v in np.argsort(-per_var, kind="stable")[:TOP_VARIABLES].tolist():
        if per_var[v] > 0:
            ref(v)
    tile_top: list[list[list[int]]] = [[] for _ in range(num_tiles)]
    if ids.size:
        order = np.lexsort((-nbytes, tiles))  # by tile, largest first
        t_sorted = tiles[order]
        head = np.flatnonzero(np.concatenate(([True], t_sorted[1:] != t_sorted[:-1])))
        rank = np.arange(order.size) - np.repeat(head, np.diff(np.concatenate((head, [order.size]))))
        for i in order[rank < TILE_TOP].tolist():
            tile_top[int(tiles[i])].append([ref(ids[i]), int(nbytes[i])])
    peak = _peak(exe, per_var, ref)
    listed = sorted(chosen, key=chosen.__getitem__)
    first = mem.var_first if mem.var_first.size == num_vars else np.full(num_vars, -1)
    last = mem.var_last if mem.var_last.size == num_vars else np.full(num_vars, -1)
    rows = []
    for v in listed:
        var = exe.variables[v]
        rows.append({"name": var.name, "shape": [int(n) for n in var.shape], "dtype": str(var.dtype),
                     "bytes": int(per_var[v]), "tiles": int(tiles_of[v]),
                     "always_live": bool(mem.always_live[v]), "constant": bool(var.is_constant),
                     "source": str(var.location), "first": int(first[v]), "last": int(last[v])})
    return {"list": rows, "tile_top": tile_top, "peak": peak, "count": num_vars}


def _peak(exe: Executable, per_var: np.ndarray, ref: Any) -> dict[str, Any]:
    """The program point where the most not-always-live bytes are live, its step, the bytes of
    that step's receive buffers, and the largest variables live there."""
    mem = exe.memory
    assert mem is not None
    live = np.asarray(mem.liveness_bytes, np.int64)
    if not live.size or mem.var_first.size != per_var.size:
        return {"point": -1, "bytes": int(live.max(initial=0)), "step": -1, "receive_bytes": 0,
                "contributors": []}
    point = int(np.argmax(live))
    step = int(mem.point_steps[point])
    recv = int(exe.steps[step].recv_tile_bytes.sum()) if 0 <= step < len(exe.steps) else 0
    at_peak = (~np.asarray(mem.always_live, bool)) & (mem.var_first <= point) & (mem.var_last >= point)
    at_peak &= per_var > 0
    cand = np.flatnonzero(at_peak)
    cand = cand[np.argsort(-per_var[cand], kind="stable")][:PEAK_TOP]
    return {"point": point, "bytes": int(live[point]), "step": step, "receive_bytes": recv,
            "contributors": [[ref(v), int(per_var[v])] for v in cand.tolist()]}


def program_tree(exe: Executable) -> dict[str, Any]:
    """Programs and functions as nodes ``{"k": kind, "s": step, "n": repeat count, "f": function,
    "c": children, "src": source}``; ``s`` is -1 for nodes that are no step, and only those carry
    ``src`` (a step's source is in ``steps``)."""
    budget = [MAX_NODES]

    def node(p: P.Program) -> dict[str, Any]:
        budget[0] -= 1
        out: dict[str, Any] = {"k": p.kind.name.lower(), "s": exe.step_of.get(id(p), -1)}
        if isinstance(p, P.Repeat):
            out["n"] = p.count
        if isinstance(p, P.Call):
            out["f"] = p.function.id
        if isinstance(p, P.Execute):
            out["name"] = p.compute_set.name
        if out["s"] < 0:  # a step's source is in its step entry
            out["src"] = str(p.location)
        kids = []
        for child in p.children():
            if budget[0] <= 0:
                out["truncated"] = True
                break
            kids.append(node(child))
        if kids:
            out["c"] = kids
        return out

    programs = [node(p) for p in exe.programs]
    functions = [[int(f), node(body)] for f, body in sorted(exe.functions.items())]
    return {"programs": programs, "functions": functions, "truncated": budget[0] <= 0}


def _execute_nodes(exe: Executable) -> dict[int, int]:
    """step index -> compute set id, over every Execute in the programs and functions."""
    out: dict[int, int] = {}
    stack = list(exe.programs) + list(exe.functions.values())
    while stack:
        p = stack.pop()
        if isinstance(p, P.Execute) and id(p) in exe.step_of:
            out[exe.step_of[id(p)]] = p.compute_set.id
        stack.extend(p.children())
    return out


def step_memory(exe: Executable) -> list[list[int]]:
    """[step, vertex-state bytes over all tiles] of each compute step with vertices."""
    mem = exe.memory
    assert mem is not None
    out = []
    for step, cs in sorted(_execute_nodes(exe).items()):
        state = mem.cs_state_bytes.get(cs)
        if state is not None and int(state.sum()):
            out.append([int(step), int(state.sum())])
    return out


def tile_cycles(exe: Executable, counts: np.ndarray) -> dict[str, Any]:
    """Compute cycles per tile of the dearest compute steps (by cycles x times run, or by cycles
    alone before anything ran)."""
    cs_of = _execute_nodes(exe)
    steps = [s for s in exe.steps if s.index in cs_of and s.compute_cycles > 0]
    steps.sort(key=lambda s: (-s.compute_cycles * max(int(counts[s.index]), 1), s.index))
    chosen, cycles = [], []
    for s in steps[:TILE_CYCLE_STEPS]:
        compiled = exe.compute_sets.get(cs_of[s.index])
        if compiled is None:
            continue
        per_tile, _, _ = tile_compute_cycles(compiled, exe.target)
        chosen.append(s.index)
        cycles.append(np.asarray(per_tile, np.int64).tolist())
    return {"steps": chosen, "cycles": cycles}
