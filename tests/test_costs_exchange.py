"""Golden cycle counts of the BSP cost model, derived by hand from the documented formulas: the
exchange (supertiles, multicast, inter-IPU links), copies and host streams, and the transfers of
copies between arbitrary views. Compute and sync are in test_costs.py.

Every expected figure below is arithmetic on the target's fields and the formulas of
ipu-facts.md §2 and §5 (and the cost model's documented rules in ``softipu.compiler.costs`` and
``softipu.compiler.exchange``); none is copied from a run. Small ``ipu_model`` chips keep the
numbers readable; keywords override a figure where that makes the arithmetic clearer.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import softipu as sp
from _costs_helpers import W, only_step, variable
from codelets_for_tests import Move
from softipu import program as P

# --- codelets whose estimates are whatever the test says -----------------------------------------


# Exchange code set-up per contiguous region a tile sends or receives (Target, [U]).
REGION = sp.targets.GC200.exchange_cycles_per_region
assert REGION == 4


# --- exchange ---------------------------------------------------------------------------------


def exchange_step(target: sp.Target, reads: list[tuple[int, int]], n: int, *, shared=False):
    """One Move vertex per (source tile, reader tile): the reader takes n floats from the source.

    ``shared``: every reader reads the same source vector (one per source tile).
    """
    g = sp.Graph(target)
    cs = g.add_compute_set("exchange")
    sources: dict[int, sp.Tensor] = {}
    for k, (src, dst) in enumerate(reads):
        if shared:
            if src not in sources:
                sources[src] = variable(g, n, src, f"x{src}")
            x = sources[src]
        else:
            x = variable(g, n, src, f"x{k}")
        y = variable(g, n, dst, f"y{k}")
        g.add_vertex(cs, Move, {"x": x, "y": y}, tile=dst)
    eng = sp.Engine(g, [P.Execute(cs)], estimate_only=True)
    return only_step(eng)


def test_remote_read_within_a_supertile():
    target = sp.targets.ipu_model(tiles=4)  # tiles_per_supertile = 2: tiles 0 and 1 share a bus
    n = 100
    step = exchange_step(target, [(0, 1)], n)
    assert step.bytes_exchanged == 4 * n
    # Tile 0 sends 400 B and tile 1 receives 400 B; each direction's pair total is 400 B, moved at
    # twice the per-tile rate: exchange_cycles(ceil(400 / 2)) = ceil(200 x 16 / 64) = 50; each tile
    # moves one contiguous region (+ exchange_cycles_per_region = 4); + latency 30.
    pair_bytes = 4 * n
    expected = (target.exchange_cycles(math.ceil(pair_bytes / 2)) + REGION
                + target.exchange_latency_cycles)
    assert expected == 50 + 4 + 30
    assert step.exchange_cycles == expected
    assert step.sync_cycles == target.on_chip_sync_cycles
    assert step.compute_cycles == W * 7
    assert step.cycles == step.sync_cycles + step.exchange_cycles + step.compute_cycles
    assert step.recv_tiles.tolist() == [1] and step.recv_tile_bytes.tolist() == [4 * n]


def test_without_supertiles_a_tile_moves_at_its_own_rate():
    target = sp.targets.ipu_model(tiles=4, tiles_per_supertile=1)
    # No partner: 400 B at 4 B/cycle = 100 cycles, one region (4), plus the exchange latency (30).
    step = exchange_step(target, [(0, 1)], 100)
    assert step.exchange_cycles == target.exchange_cycles(400) + REGION + target.exchange_latency_cycles == 134


def test_two_receivers_sharing_a_supertile_share_its_bus():
    target = sp.targets.ipu_model(tiles=8)
    latency = target.exchange_latency_cycles
    n = 100
    # Tiles 0 and 1 (one supertile) each receive 400 B: the pair moves 800 B, ceil(800 / 2) = 400
    # B per tile's share: exchange_cycles(400) = 100. Senders 4 and 6 sit on different supertiles.
    shared = exchange_step(target, [(4, 0), (6, 1)], n)
    # Each receiver has one region: + 4.
    assert shared.exchange_cycles - latency - REGION == target.exchange_cycles(math.ceil(8 * n / 2)) == 100
    # Tiles 1 and 2 are on different supertiles: each pair moves 400 B, exchange_cycles(200) = 50.
    apart = exchange_step(target, [(4, 1), (6, 2)], n)
    assert apart.exchange_cycles - latency - REGION == target.exchange_cycles(math.ceil(4 * n / 2)) == 50
    assert shared.bytes_exchanged == apart.bytes_exchanged == 8 * n


def test_supertile_partners_receiving_the_same_data_share_it():
    # ipu-facts §1: "a tile may use the whole supertile bandwidth when its partner is idle or
    # receives the same data". Tiles 0 and 1 (one supertile) both read tile 2's 100 floats: the
    # pair's bus carries those 400 B once, so each tile receives at the pair's rate:
    # exchange_cycles(ceil(400 / 2)) = 50, as for one receiver alone.
    target = sp.targets.ipu_model(tiles=4)
    n = 100
    alone = exchange_step(target, [(2, 0)], n)
    both = exchange_step(target, [(2, 0), (2, 1)], n, shared=True)
    assert both.bytes_exchanged == 8 * n  # two tiles each hold a copy
    assert both.exchange_cycles == alone.exchange_cycles == (
        target.exchange_cycles(math.ceil(4 * n / 2)) + REGION + target.exchange_latency_cycles)


def test_one_tile_receives_an_element_once():
    target = sp.targets.ipu_model(tiles=4)
    latency = target.exchange_latency_cycles
    n = 100
    # Two vertices on tile 1 read the same 100 floats of tile 0: they arrive once (400 B).
    step = exchange_step(target, [(0, 1), (0, 1)], n, shared=True)
    assert step.bytes_exchanged == 4 * n
    # 400 B over the pair's bus, in one region (the union of the two identical reads): + 4.
    assert step.exchange_cycles - latency == target.exchange_cycles(2 * n) + REGION


def test_one_send_reaches_every_listener():
    target = sp.targets.ipu_model(tiles=4)
    latency = target.exchange_latency_cycles
    n = 100
    # Tiles 1 and 2 both read tile 0's 100 floats: 800 B received in all, but tile 0 sends its
    # 400 B once (multicast). Tile 1 shares the bus with the sender (pair 0: 400 B each way) and
    # tile 2 is alone on pair 1: every bus moves 400 B, exchange_cycles(200) = 50.
    step = exchange_step(target, [(0, 1), (0, 2)], n, shared=True)
    assert step.bytes_exchanged == 8 * n
    # One region per sending and receiving tile: + 4.
    assert step.exchange_cycles - latency - REGION == target.exchange_cycles(math.ceil(4 * n / 2)) == 50
    assert sorted(step.recv_tiles.tolist()) == [1, 2]


def test_an_output_on_another_tile_is_sent_after_compute():
    target = sp.targets.ipu_model(tiles=4)
    g = sp.Graph(target)
    n = 64
    x, y = variable(g, n, 0, "x"), variable(g, n, 1, "y")
    cs = g.add_compute_set("write_remote")
    g.add_vertex(cs, Move, {"x": x, "y": y}, tile=0)
    eng = sp.Engine(g, [P.Execute(cs)])
    eng.write_tensor(x, np.arange(n))
    eng.run(0)
    np.testing.assert_array_equal(eng.read_tensor(y), np.arange(n))
    step = only_step(eng)
    assert step.bytes_exchanged == 4 * n
    assert step.recv_tiles.tolist() == [1]  # tile 1 (the Output's home) receives
    # 256 B over the pair's bus: exchange_cycles(128) = 32, one region (4), latency 30.
    assert step.exchange_cycles == target.exchange_cycles(2 * n) + REGION + target.exchange_latency_cycles
    assert step.compute_cycles == W * 7  # compute happens on tile 0


def test_local_vertices_exchange_nothing():
    target = sp.targets.ipu_model(tiles=4)
    step = exchange_step(target, [(2, 2)], 100)
    assert (step.bytes_exchanged, step.exchange_cycles) == (0, 0)
    assert step.cycles == target.on_chip_sync_cycles + W * 7


# --- inter-IPU ----------------------------------------------------------------------------------


def test_reading_across_ipus_uses_the_links_and_the_global_sync():
    target = sp.targets.ipu_model(tiles=4, num_ipus=2)  # tiles 0-3 on IPU 0, 4-7 on IPU 1
    n = 1000
    step = exchange_step(target, [(0, 5)], n)
    assert step.inter_ipu_bytes == 4 * n
    assert step.bytes_exchanged == 4 * n
    link_rate = target.ipu_links_per_ipu * target.ipu_link_bytes_per_cycle
    assert step.exchange_cycles >= math.ceil(4 * n / link_rate)
    assert step.exchange_cycles >= target.exchange_cycles(2 * n) + REGION + target.exchange_latency_cycles
    # The on-chip sync (150) plus the fabric's 40 (see the sync tests).
    assert step.sync_cycles == target.global_sync_cycles() == 150 + 40
    # The same read inside IPU 1 stays on the chip.
    local = exchange_step(target, [(4, 5)], n)
    assert local.inter_ipu_bytes == 0
    assert local.sync_cycles == target.on_chip_sync_cycles


def test_gc200_pair_read_across_the_ipu_link():
    target = sp.targets.GC200.with_num_ipus(2)  # tiles 0..1471 on IPU 0, 1472..2943 on IPU 1
    n = 4096
    step = exchange_step(target, [(0, 1472)], n)
    # IPUs 0 and 1 are rung partners: their 4 card links (poplibs ladder, target/links.py) carry it,
    # 4 x 128 Gibit/s / 8 x 0.85 / 1.33 GHz = 43.9 B/cycle: 16,384 B in 374 cycles.
    link_rate = 4 * 128 * 2**30 / 8 * 0.85 / 1.33e9
    assert math.ceil(4 * n / link_rate) == 374
    # On chip the 16,384 B move over lone supertile buses in one region: exchange_cycles(8192) +
    # 4 = 2052 cycles, the slower of the two.
    assert step.exchange_cycles == max(2048 + REGION, 374) + target.exchange_latency_cycles
    assert step.inter_ipu_bytes == 4 * n
    assert step.sync_cycles == 150 + 40


def test_slow_links_bound_the_exchange():
    # One link of 1 B/cycle payload (1 GB/s at 1 GHz, no efficiency loss): 4000 B take 4000 cycles,
    # far more than the on-chip 4000 B / 8 B per cycle = 500.
    target = sp.targets.ipu_model(tiles=4, num_ipus=2, clock_hz=1e9, ipu_link_bytes_per_second=1e9,
                                  ipu_links_per_ipu=1, ipu_link_efficiency=1.0)
    assert target.ipu_link_bytes_per_cycle == 1.0
    step = exchange_step(target, [(1, 6)], 1000)
    assert step.exchange_cycles == 4000 + target.exchange_latency_cycles
    # ceil(15e-9 x 1e9 x 1 x 2) = 30 cycles over the fabric at 1 GHz, after the 150 on chip.
    assert step.sync_cycles == 150 + 30


# --- copies -----------------------------------------------------------------------------------


def copy_step(target: sp.Target, src_tile: int, dst_tile: int, n: int):
    g = sp.Graph(target)
    x, y = variable(g, n, src_tile, "x"), variable(g, n, dst_tile, "y")
    return only_step(sp.Engine(g, [P.Copy(x, y)], estimate_only=True))


def test_copy_between_tiles_is_an_exchange():
    target = sp.targets.ipu_model(tiles=4)
    n = 256
    step = copy_step(target, 0, 3, n)
    assert step.bytes_exchanged == 4 * n
    # 1024 B out of pair 0 and into pair 1, each alone on its bus: exchange_cycles(512) = 128,
    # one region each side (+ 4).
    assert step.exchange_cycles == target.exchange_cycles(2 * n) + REGION + target.exchange_latency_cycles
    assert step.compute_cycles == 0
    assert step.sync_cycles == target.on_chip_sync_cycles


def test_copy_on_one_tile_is_compute():
    target = sp.targets.ipu_model(tiles=4)
    n = 257
    step = copy_step(target, 2, 2, n)
    # 1028 B at on_tile_copy_bytes_per_cycle = 8: ceil(128.5) = 129 cycles.
    assert step.compute_cycles == math.ceil(4 * n / target.on_tile_copy_bytes_per_cycle) == 129
    assert (step.bytes_exchanged, step.exchange_cycles) == (0, 0)
    fast = copy_step(sp.targets.ipu_model(tiles=4, on_tile_copy_bytes_per_cycle=16.0), 2, 2, n)
    assert fast.compute_cycles == math.ceil(4 * n / 16) == 65


def test_copy_of_a_strided_view_moves_only_its_elements():
    target = sp.targets.ipu_model(tiles=4)
    g = sp.Graph(target)
    x = g.add_variable(sp.float32, (8,), name="x")
    g.set_tile_mapping(x[:4], 0)
    g.set_tile_mapping(x[4:], 1)
    y = variable(g, 4, 2, "y")
    step = only_step(sp.Engine(g, [P.Copy(x.subsample(2), y)], estimate_only=True))
    # x[0], x[2] from tile 0 and x[4], x[6] from tile 1: 16 B into tile 2. Pair 0 sends 16 B and
    # pair 1 receives 16 B: exchange_cycles(ceil(16 / 2)) = ceil(8 x 16 / 64) = 2, + latency.
    # Tile 2 receives four one-element regions (x[0], x[2], x[4], x[6] are not contiguous):
    # 4 x 4 = 16 cycles of region set-up; tiles 0 and 1 each send 2 regions (8), fewer.
    assert step.bytes_exchanged == 16
    assert step.exchange_cycles == target.exchange_cycles(8) + 4 * REGION + target.exchange_latency_cycles
    assert step.compute_cycles == 0


def test_on_tile_copies_run_in_parallel_across_tiles():
    target = sp.targets.ipu_model(tiles=4)
    g = sp.Graph(target)
    x, y = g.add_variable(sp.float32, (300,), name="x"), g.add_variable(sp.float32, (300,), name="y")
    for t in (x, y):  # 100 elements on tile 0, 200 on tile 1: every element stays on its tile
        g.set_tile_mapping(t[:100], 0)
        g.set_tile_mapping(t[100:], 1)
    step = only_step(sp.Engine(g, [P.Copy(x, y)], estimate_only=True))
    # The slower tile copies 800 B at 8 B/cycle: 100 cycles.
    assert step.compute_cycles == math.ceil(200 * 4 / target.on_tile_copy_bytes_per_cycle) == 100
    assert step.busiest_tile == 1
    assert (step.bytes_exchanged, step.exchange_cycles) == (0, 0)


def test_host_stream_copy_is_bound_by_the_host_link():
    target = sp.targets.ipu_model(tiles=4)
    n = 4096
    g = sp.Graph(target)
    x = g.add_variable(sp.float32, (n,), name="x")
    sp.ops.map_linearly(g, x)
    up = g.add_host_to_device_fifo("up", sp.float32, n)
    down = g.add_device_to_host_fifo("down", sp.float32, n)
    eng = sp.Engine(g, [P.Sequence(P.Copy(up, x), P.Copy(x, down))], estimate_only=True)
    host = math.ceil(4 * n / target.host_link_bytes_per_cycle)
    for step in eng.executable.steps:
        assert step.host_bytes == 4 * n
        assert step.exchange_cycles >= host
        assert step.bytes_exchanged == 4 * n  # tiles receive (up) or send (down) every byte


def test_a_slow_host_link_sets_the_transfer_time():
    # 1 B/cycle host link: 4000 B take 4000 cycles; on chip they take at most a few hundred.
    target = sp.targets.ipu_model(tiles=4, clock_hz=1e9, host_link_bytes_per_second=1e9)
    g = sp.Graph(target)
    x = variable(g, 1000, 0, "x")
    up = g.add_host_to_device_fifo("up", sp.float32, 1000)
    step = only_step(sp.Engine(g, [P.Copy(up, x)], estimate_only=True))
    assert step.host_bytes == 4000
    assert 4000 <= step.exchange_cycles <= 4000 + target.exchange_latency_cycles


# -- copies between arbitrary views ----------------------------------------------------------------------
def _copy_oracle(src: sp.Tensor, dst: sp.Tensor, g: sp.Graph, tiles: int):
    """Bytes per (source tile, destination tile) and on-tile bytes, element by element."""
    s_tile = g.tile_of(src).reshape(-1)
    d_tile = g.tile_of(dst).reshape(-1)
    moved = np.zeros((tiles, tiles), np.int64)
    np.add.at(moved, (s_tile, d_tile), 4)
    local = np.diag(moved).copy()
    np.fill_diagonal(moved, 0)
    return moved, local


@pytest.mark.parametrize("case", range(40))
def test_copy_transfers_of_views_match_an_element_by_element_oracle(case):
    from softipu.compiler.exchange import copy_transfers

    rng = np.random.default_rng(case)
    tiles = 6
    g = sp.Graph(sp.targets.ipu_model(tiles=tiles))
    a = g.add_variable(sp.float32, (6, 8, 5), name="a")
    b = g.add_variable(sp.float32, (6, 8, 5), name="b")
    for v in (a, b):  # a random interval mapping of the flat variables
        cuts = np.unique(np.concatenate(([0, 240], rng.integers(1, 240, rng.integers(1, 30)))))
        g.map_intervals(v.reshape(-1), cuts[:-1], cuts[1:], rng.integers(0, tiles, cuts.size - 1))
    views = [lambda t: t, lambda t: t.transpose((2, 0, 1)), lambda t: t[::-1, 1:7:2],
             lambda t: t[:, :, ::2].transpose((1, 0, 2)), lambda t: t.reshape(-1)[rng.permutation(240)[:90]]]
    make = views[case % len(views)]
    src = make(a)
    dst_flat = b.reshape(-1)[: src.numel]
    dst = views[(case // len(views)) % 4](b) if case % 3 == 0 and src.shape == a.shape else \
        dst_flat.reshape(src.shape)
    if dst.shape != src.shape:
        dst = dst_flat.reshape(src.shape)
    mappings = {sp.float32: g.resolved_mapping(sp.float32)}
    transfers, local = copy_transfers(src, dst, mappings, tiles)
    got = np.zeros((tiles, tiles), np.int64)
    for s, e, st, dt, item in transfers.per_dtype():
        np.add.at(got, (st, dt), (e - s) * item)
    want, want_local = _copy_oracle(src, dst, g, tiles)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(local, want_local)


@pytest.mark.parametrize("dense", [True, False])
def test_intervals_holding_agrees_with_a_binary_search(dense):
    """The table lookup split_by_mapping uses for dense addresses (and the binary search for
    sparse ones) finds the interval a bisection would, gaps and addresses before the first
    interval included."""
    from softipu.compiler.exchange import _intervals_holding
    rng = np.random.default_rng(int(dense))
    for _ in range(100):
        starts = np.unique(rng.integers(5, 2000, rng.integers(1, 60)))
        n = int(rng.integers(300, 600)) if dense else int(rng.integers(1, 20))
        first = rng.integers(0, 2100, n)
        last = first + rng.integers(-1, 40, n)  # -1: an empty interval
        got = _intervals_holding(starts, first, last)
        for mine, addresses in zip(got, (first, last), strict=True):
            np.testing.assert_array_equal(mine, np.searchsorted(starts, addresses, side="right") - 1)


def test_union_per_key_is_the_same_with_the_callers_start_order():
    """traffic() sorts a step's intervals by start once and keys them three ways (sender,
    receiver, supertile); each union equals a brute-force one over the covered addresses."""
    from softipu.compiler.exchange import union_per_key
    rng = np.random.default_rng(3)
    for n in (1, 7, 400):
        starts = rng.integers(0, 300, n)
        ends = starts + rng.integers(1, 12, n)  # transfers are never empty
        keys = rng.integers(0, 9, n)
        by_start = np.argsort(starts, kind="stable")
        for order in (None, by_start):
            length, regions = union_per_key(keys, starts, ends, 9, order)
            for k in range(9):
                covered = np.zeros(320, bool)
                for s, e in zip(starts[keys == k], ends[keys == k], strict=True):
                    covered[s:e] = True
                assert length[k] == covered.sum()
                assert regions[k] == np.count_nonzero(np.diff(np.concatenate(([0], covered.astype(int)))) == 1)


# --- exchange granularity ---------------------------------------------------------------------


def test_a_transposing_copy_pays_per_piece_not_per_block():
    # 1,024 floats from tile 0 to tile 2 (different supertiles, each tile alone on its bus).
    # As one 4 KiB block: ceil(4096 / 2) = 2048 B on the bus at 4 B/cycle = 512 cycles, one region
    # each side (+ 4), latency 30: 546. As a 32 x 32 transpose every element is its own piece
    # (contiguous on neither side): the same 512 cycles of data + 1,024 regions x 4 = 4,096 + 30.
    target = sp.targets.ipu_model(tiles=4)

    def copy_cycles(transpose: bool) -> int:
        g = sp.Graph(target)
        x, y = variable(g, 1024, 0, "x"), variable(g, 1024, 2, "y")
        src = x.reshape(32, 32).transpose(1, 0).reshape(1024) if transpose else x
        return only_step(sp.Engine(g, [P.Copy(src, y)], estimate_only=True)).exchange_cycles

    assert copy_cycles(False) == 512 + REGION + 30 == 546
    assert copy_cycles(True) == 512 + 1024 * REGION + 30 == 4638
