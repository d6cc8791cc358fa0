"""A compute set's exchange counted per address (softipu.compiler.dense) against the definition,
worked out element by element here: a tile receives the remote addresses its vertices read and
its own addresses remote vertices write; it sends its addresses remote vertices read and the
remote addresses its vertices write; a region is a run of consecutive addresses in such a set;
a supertile's bus carries the union of its tiles' received sets."""

from __future__ import annotations

import numpy as np
import pytest

import softipu as sp
import softipu.compiler.dense as dense
from codelets_for_tests import Move
from softipu import program as P
from softipu.compiler.exchange import compute_set_traffic, compute_set_transfers, traffic
from softipu.graph.vertex import Direction


class Accumulate(sp.Vertex):
    """y += x: its output is read and written (an InOut)."""

    x = sp.Input(sp.float32)
    y = sp.InOut(sp.float32)

    @staticmethod
    def compute(x, y):
        y[...] += x

    @staticmethod
    def cycles(x, y):
        return 7


def by_definition(exe, cs_id: int, target: sp.Target):
    """(send, recv, send regions, recv regions, supertile recv) bytes and regions, element by element."""
    mapping = exe.mappings[sp.float32]
    tiles = target.num_tiles
    sets = {"send": [set() for _ in range(tiles)], "recv": [set() for _ in range(tiles)]}
    for group in exe.compute_sets[cs_id].groups:
        for name, f in group.field_items(Direction.INPUT, Direction.OUTPUT, Direction.INOUT):
            addresses = group.fields[name].addresses()
            for v, tile in enumerate(group.tiles.tolist()):
                for a in addresses[v].tolist():
                    home = int(mapping.tiles_of(np.array([a]))[0])
                    if home == tile:
                        continue
                    if f.direction.reads:
                        sets["send"][home].add(a)
                        sets["recv"][tile].add(a)
                    if f.direction.writes:
                        sets["send"][tile].add(a)
                        sets["recv"][home].add(a)

    def regions(s: set) -> int:
        return sum(1 for a in s if a - 1 not in s)

    per = target.tiles_per_supertile
    supertile = [set().union(*sets["recv"][k:k + per]) for k in range(0, tiles, per)]
    return ([4 * len(s) for s in sets["send"]], [4 * len(s) for s in sets["recv"]],
            [regions(s) for s in sets["send"]], [regions(s) for s in sets["recv"]],
            [4 * len(s) for s in supertile])


def transposed_step(columns_on: list[int], *, mode="read", extra_reader: int | None = None):
    """Vertex ``j`` on tile ``columns_on[j]`` reads column ``j`` of a 24 x 16 matrix ``a`` (mapped
    in rows of 40 elements over 8 tiles: each column element on its own piece) and writes row
    ``j`` of ``b`` (``mode`` "read"), or the other way round ("write"), or adds row ``j`` of ``b``
    into the column ("inout"); ``extra_reader``: a second vertex there reads column 0."""
    target = sp.targets.ipu_model(tiles=8)
    g = sp.Graph(target)
    a = g.add_variable(sp.float32, (24, 16), name="a")
    b = g.add_variable(sp.float32, (16, 24), name="b")
    flat = a.reshape(-1)
    for k in range(0, 24 * 16, 40):
        g.set_tile_mapping(flat[k:min(k + 40, 24 * 16)], (k // 40) % 8)
    sp.ops.map_linearly(g, b)
    cs = g.add_compute_set("columns")
    for j, tile in enumerate(columns_on):
        if mode == "read":
            g.add_vertex(cs, Move, {"x": a[:, j], "y": b[j]}, tile=tile)
        else:
            g.add_vertex(cs, Move if mode == "write" else Accumulate, {"x": b[j], "y": a[:, j]}, tile=tile)
    if extra_reader is not None:
        c = g.add_variable(sp.float32, (24,), name="c")
        g.set_tile_mapping(c, extra_reader)
        g.add_vertex(cs, Move, {"x": a[:, 0], "y": c}, tile=extra_reader)
    exe = sp.Engine(g, [P.Execute(cs)], estimate_only=True).executable
    return exe, cs.id, target


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 64 addresses (rows cross their bounds) and no minimum size for the dense count;
    records each dense count's answer."""
    monkeypatch.setattr(dense, "CHUNK", 64)
    monkeypatch.setattr(dense, "_MIN_INTERVALS", 1)
    answers = []
    counts = dense.dense_counts

    def spy(*args):
        answers.append(counts(*args))
        return answers[-1]

    monkeypatch.setattr(dense, "dense_counts", spy)
    return answers


def figures(t) -> tuple:
    return tuple(x.tolist() for x in (t.send_bytes, t.recv_bytes, t.send_regions, t.recv_regions,
                                      t.supertile_recv_bytes))


@pytest.mark.parametrize("mode", ["read", "write", "inout"])
def test_a_transposed_field_counted_per_address_matches_the_definition(small_chunks, mode):
    # Columns on tiles that repeat, so a tile's neighbouring columns join into runs of its set.
    exe, cs_id, target = transposed_step([0, 0, 1, 3, 3, 3, 2, 5, 6, 7, 7, 4, 0, 1, 1, 2], mode=mode)
    got = compute_set_traffic(exe.compute_sets[cs_id], exe.mappings, target)
    want = by_definition(exe, cs_id, target)
    assert figures(got)[:4] == want[:4]
    assert got.supertile_recv_bytes.tolist() == want[4]
    assert any(a is not None for a in small_chunks)  # the per-address count was taken
    # the sorted unions give the same figures
    assert figures(got) == figures(traffic(compute_set_transfers(exe.compute_sets[cs_id], exe.mappings),
                                           target))


def test_an_address_read_by_two_tiles_is_left_to_the_sort(small_chunks):
    exe, cs_id, target = transposed_step([1] * 8 + [2] * 8, extra_reader=6)
    got = compute_set_traffic(exe.compute_sets[cs_id], exe.mappings, target)
    assert figures(got) == by_definition(exe, cs_id, target)
    assert all(a is None for a in small_chunks)  # two readers of column 0: sorted instead


def test_two_tiles_under_one_address_are_told_apart():
    # The one-tile test: counts, sums and sums of squares of covering tiles (3 + 3 = 2 + 4, but
    # 9 + 9 != 4 + 16).
    starts = np.array([0, 0, 5], np.int64)
    ends = np.array([4, 4, 6], np.int64)
    assert dense._one_tile(starts, ends, np.array([3, 3, 1]), 0, 8, np.int16).tolist() == \
        [3, 3, 3, 3, -1, 1, -1, -1]
    assert dense._one_tile(starts, ends, np.array([2, 4, 1]), 0, 8, np.int16) is dense._TWO
    single = np.array([1, 2, 2], np.int64)
    assert dense._one_tile(single, single + 1, np.array([5, 6, 7]), 0, 4, np.int16) is dense._TWO
    assert dense._one_tile(single, single + 1, np.array([5, 6, 6]), 0, 4, np.int16).tolist() == [-1, 5, 6, -1]


def test_a_slab_layout_of_contiguous_pieces_is_one_run_a_piece():
    from softipu.compiler.conflicts import address_runs
    from softipu.graph.tensor import Slabs, Tensor

    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    g.add_variable(sp.float32, (64,), name="v")
    # Two contiguous 2 x 4 blocks (at 40 and 8) and an empty one, stacked along the rows; then
    # a block whose rows lie apart (at 20, rows of 2 every 4), which is not one run.
    contiguous = ((40, (2, 4), (4, 1), (2, 4)), (8, (2, 4), (4, 1), (2, 4)), (0, (0, 4), (4, 1), (0, 4)))
    t = Tensor(g, sp.float32, (4, 4), 0, (), None, Slabs(contiguous, 0, (0, 1)))
    starts, lengths = address_runs(t)
    assert starts.tolist() == [40, 8] and lengths.tolist() == [8, 8]
    gapped = Tensor(g, sp.float32, (4, 2), 0, (), None, Slabs(((20, (4, 2), (4, 1), (4, 2)),), 0, (0, 1)))
    starts, lengths = address_runs(gapped)
    covered = sorted(a for s, n in zip(starts.tolist(), lengths.tolist(), strict=True) for a in range(s, s + n))
    assert covered == sorted(gapped.addresses().reshape(-1).tolist()) == [20, 21, 24, 25, 28, 29, 32, 33]


class MoveShifted(sp.Vertex):
    """y = x + w[0]: every vertex reads all of ``w`` (a multicast)."""

    x = sp.Input(sp.float32)
    w = sp.Input(sp.float32)
    y = sp.Output(sp.float32)

    @staticmethod
    def compute(x, w, y):
        y[...] = x + w[0]

    @staticmethod
    def cycles(x, w, y):
        return 7


@pytest.mark.parametrize("w_home", [1, 5])
def test_a_dense_field_touching_a_multicast_is_counted_per_address(small_chunks, w_home):
    # ``w`` lies right after ``a`` (addresses 384..387) and every vertex reads it: a multicast,
    # left to the sort. ``a``'s transposed columns are still counted per address; vertex 15
    # (tile 2) reads a[23, 15] (address 383, home tile 1) and w[0] (address 384) from afar, so its
    # received region runs over the touching address; with ``w`` on tile 1 too, tile 1's sent
    # region does as well.
    target = sp.targets.ipu_model(tiles=8)
    g = sp.Graph(target)
    a = g.add_variable(sp.float32, (24, 16), name="a")
    w = g.add_variable(sp.float32, (4,), name="w")
    b = g.add_variable(sp.float32, (16, 24), name="b")
    flat = a.reshape(-1)
    for k in range(0, 24 * 16, 40):
        g.set_tile_mapping(flat[k:min(k + 40, 24 * 16)], (k // 40) % 8)
    g.set_tile_mapping(w, w_home)
    sp.ops.map_linearly(g, b)
    assert (w.addresses()[0], b.addresses()[0, 0]) == (384, 388)
    cs = g.add_compute_set("columns")
    for j, tile in enumerate([0, 0, 1, 3, 3, 3, 2, 5, 6, 7, 7, 4, 0, 1, 1, 2]):
        g.add_vertex(cs, MoveShifted, {"x": a[:, j], "w": w, "y": b[j]}, tile=tile)
    exe = sp.Engine(g, [P.Execute(cs)], estimate_only=True).executable
    got = compute_set_traffic(exe.compute_sets[cs.id], exe.mappings, target)
    want = by_definition(exe, cs.id, target)
    assert figures(got) == want
    assert any(a is not None for a in small_chunks)  # ``a`` was counted per address
    assert figures(got) == figures(traffic(compute_set_transfers(exe.compute_sets[cs.id], exe.mappings),
                                           target))
