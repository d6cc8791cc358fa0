"""Structure keys of grid bulk calls (ops.bulk.add_vertex_runs joins evenly spaced key groups into
one call; build_vertex_groups cuts it back into one group per row): StructureKeys reads the rows'
key parts from the call's slab pieces, and they must be the keys each row's own tensors give —
the same as for the same vertices added one group per call."""

from __future__ import annotations

import numpy as np

import softipu as sp
from codelets_for_tests import Gather
from softipu import program as P
from softipu.compiler import passes
from softipu.compiler.structure import StructureKeys
from softipu.ops.bulk import add_vertex_runs

KEY = np.array([0, 0, 1, 1, 2, 2])
OUT = np.array([0, 10, 100, 110, 200, 210])  # a vertex steps 10, a row 100
PARTS = np.stack([1000 + np.array([0, 7, 50, 57, 100, 107]), 1500 + np.array([0, 7, 50, 57, 100, 107])])


def _graph():
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    xs = []
    for i in range(3):
        x = g.add_variable(sp.float32, (2048,), name=f"x{i}")
        sp.ops.map_linearly(g, x)
        xs.append(x)
    return g, xs


def _grid(g, x, k):
    cs = g.add_compute_set(f"grid{len(g.compute_sets)}")
    add_vertex_runs(g, cs, Gather, [KEY], np.arange(6), np.arange(6) % 4,
                    {"out": x.offset + OUT, "parts": x.offset + PARTS},
                    {"out": (sp.float32, 4), "parts": (sp.float32, 4)}, {"k": k})
    assert len(g.vertex_tables[cs.id].bulk) == 1  # one grid call
    return cs


def _by_rows(g, x, k):
    """The same vertices, each row of the grid its own group of add_vertex calls."""
    cs = g.add_compute_set(f"rows{len(g.compute_sets)}")
    for v in range(6):
        g.add_vertex(cs, Gather, {"parts": [x[p:p + 4] for p in PARTS[:, v]], "out": x[OUT[v]:OUT[v] + 4],
                                  "k": int(k[v])}, tile=v % 4)
    return cs


def _state(g, css):
    state = passes.CompileState(g, (P.Sequence([P.Execute(cs) for cs in css]),))
    for _, run in passes.PASSES[:3]:  # through build_vertex_groups
        run(state)
    return state


def test_grid_rows_keyed_as_their_own_tensors_key_them():
    g, xs = _graph()
    k = np.arange(6) + 1
    a, b, c = _grid(g, xs[0], k), _grid(g, xs[1], k), _grid(g, xs[2], k[::-1].copy())
    state = _state(g, [a, b, c])
    rows_only = StructureKeys(g, state.mappings)  # no grid notes: every row's tensors read one by one
    assert state.keys._grids  # the grid path is taken
    for cs in (a, b, c):
        compiled = state.compute_sets[cs.id]
        assert len(compiled.groups) == 3  # cut into its rows
        assert state.keys.layout(compiled) == rows_only.layout(compiled)
        assert state.keys.work(compiled) == rows_only.work(compiled)
        assert state.keys.layout_variables(compiled) == rows_only.layout_variables(compiled)
    ca, cb, cc = (state.compute_sets[cs.id] for cs in (a, b, c))
    assert state.keys.layout(ca) == state.keys.layout(cb)  # the same layout on another variable
    assert state.keys.work(ca) == state.keys.work(cb) != state.keys.work(cc)  # params differ


def test_grid_call_and_row_by_row_vertices_price_alike():
    g, xs = _graph()
    k = np.arange(6) + 1
    grid, rows = _grid(g, xs[0], k), _by_rows(g, xs[1], k)
    eng = sp.Engine(g, [P.Sequence([P.Execute(grid), P.Execute(rows)])])
    first, second = (s for s in eng.executable.steps if s.kind.name == "COMPUTE")
    assert (first.compute_cycles, first.exchange_cycles, first.bytes_exchanged) == \
        (second.compute_cycles, second.exchange_cycles, second.bytes_exchanged)
    np.testing.assert_array_equal(first.recv_tile_bytes, second.recv_tile_bytes)
    host = np.arange(2048, dtype=np.float32)
    eng.write_tensor(xs[0], host)
    eng.run(0)
    got = eng.read_tensor(xs[0])
    for v in range(6):
        want = (host[PARTS[0, v]:PARTS[0, v] + 4] + host[PARTS[1, v]:PARTS[1, v] + 4]) * (v + 1)
        np.testing.assert_array_equal(got[OUT[v]:OUT[v] + 4], want)


def test_peak_per_tile_dense_and_sorted_agree_with_a_replay(monkeypatch):
    """Not-always-live peaks: the dense (point, tile) table and the sorted events both equal a
    replay of each tile's events in program order, frees before allocations at a point."""
    from softipu.compiler import memory

    rng = np.random.default_rng(0)
    tiles, points = 5, 40
    events = []
    for _ in range(6):
        n = int(rng.integers(1, 30))
        first = rng.integers(0, points, n)
        last = np.minimum(first + rng.integers(0, 10, n), points - 1)
        t = rng.integers(0, tiles, n)
        b = rng.integers(1, 1000, n)
        events += [(first, t, b), (last + 1, t, -b)]
    want = np.zeros(tiles, np.int64)
    want_time = np.zeros(points, np.int64)
    for tile in range(tiles):
        live = 0
        for p in range(points + 1):
            at = [(int(w), q) for ps, ts, ws in events for q, u, w in zip(ps, ts, ws, strict=True)
                  if q == p and u == tile]
            for w, _ in sorted(at):  # frees (negative) first
                live += w
                want[tile] = max(want[tile], live)
    for ps, _, ws in events:
        for q, w in zip(ps, ws, strict=True):
            want_time[q:] += w if q < points else 0
    dense = memory._peak_dense
    used = []
    monkeypatch.setattr(memory, "_peak_dense", lambda *a: used.append(1) or dense(*a))
    for cells in (0, 1 << 22):  # the sorted events, then the dense table
        monkeypatch.setattr(memory, "_DENSE_CELLS", cells)
        peak, over_time = memory._peak_per_tile(list(events), tiles, points)
        np.testing.assert_array_equal(peak, want)
        np.testing.assert_array_equal(over_time, want_time)
    assert used == [1]  # the table was used once
