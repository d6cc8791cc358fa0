"""Estimate-only pricing grows with a program's structure, not its element count (issue 10).

Memory is asserted with tracemalloc (numpy's arrays are traced), in-process and deterministic;
times are for bench/bench_estimate.py, never asserted here.
"""

from __future__ import annotations

import itertools
import tracemalloc

import numpy as np
import pytest

import softipu as sp
from softipu import program as P
from softipu.graph.tensor import _INDEX_SLOT, Slabs, Tensor
from softipu.ops.matmul import create_matmul_input_lhs, create_matmul_input_rhs, matmul

MIB = 1 << 20


def _peak(fn):
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_pricing_a_large_matmul_holds_no_array_per_element():
    """2048^2 fp16 operands from create_matmul_input_*: one int64 per element would be 32 MiB
    per operand; pricing the whole matmul must stay well under one such array."""
    n = 2048

    def price():
        g = sp.Graph(sp.targets.ipu_model(tiles=64, bytes_per_tile=MIB))
        a = create_matmul_input_lhs(g, sp.float16, (n, n), (n, n), name="a")
        b = create_matmul_input_rhs(g, sp.float16, (n, n), (n, n), name="b")
        prog = P.Sequence()
        matmul(g, a, b, prog)
        eng = sp.Engine(g, [prog], estimate_only=True, options={"debug.allowOutOfMemory": True})
        eng.run(0)
        return a, b, eng

    (a, b, eng), peak = _peak(price)
    assert peak < 16 * MIB, f"pricing peaked at {peak / MIB:.1f} MiB"
    assert eng.log.cycles > 0
    # the operands are slab layouts, and nothing asked for their per-element index
    for x in (a, b):
        assert x.slabs is not None and _INDEX_SLOT.__get__(x, Tensor) is None


def test_a_broadcast_constant_is_kept_as_value_and_shape():
    def build():
        g = sp.Graph(sp.targets.ipu_model(tiles=16, bytes_per_tile=8 * MIB))
        c = g.add_constant(sp.float32, (2048, 2048), 0.5, name="c")
        sp.ops.map_linearly(g, c)
        sp.Engine(g, [P.Sequence()], estimate_only=True).run(0)
        return g, c

    (g, c), peak = _peak(build)
    assert peak < 2 * MIB  # the elements would be 16 MiB
    var = g.variable_of(c)
    assert var.initial_value.shape == (2048, 2048) and var.initial_value.strides == (0, 0)
    # and the engine still loads every element
    small = sp.Graph(sp.targets.ipu_model(tiles=2))
    k = small.add_constant(sp.int32, (3, 4), np.arange(4), name="k")
    sp.ops.map_linearly(small, k)
    eng = sp.Engine(small, [P.Sequence()])
    eng.run(0)
    np.testing.assert_array_equal(eng.read_tensor(k), np.broadcast_to(np.arange(4), (3, 4)))


class _CountingSet(set):
    lookups = 0

    def __contains__(self, item):  # noqa: D105
        type(self).lookups += 1
        return super().__contains__(item)


def test_default_names_take_a_bounded_number_of_lookups_each():
    """n variables of one default name: O(n) name lookups in all (it was O(n^2))."""
    g = sp.Graph(sp.targets.ipu_model(tiles=2))
    g._names = _CountingSet()
    n = 2000
    for _ in range(n):
        g.add_variable(sp.float32, (1,))
    assert _CountingSet.lookups <= 3 * n
    assert len({v.name for v in g.variables}) == n
    assert [v.name for v in g.variables[:3]] == ["var", "var.1", "var.2"]
    g.add_variable(sp.float32, (1,), name="var.2000")  # a taken suffix is skipped, not reused
    assert g.variables[-1].name == "var.2000" and g.add_variable(sp.float32, (1,)).name == "var.2001"


@pytest.mark.parametrize("groups,rows,cols,width", [(1, 5, 7, 3), (2, 4, 9, 3), (3, 6, 8, 8), (1, 3, 10, 4)])
def test_slab_layout_views_match_numpy_on_their_addresses(groups, rows, cols, width):
    """Transposes and size-1 reshapes of a Slabs tensor keep the structure and address exactly
    what numpy's same views of the built index address."""
    g = sp.Graph(sp.targets.ipu_model(tiles=2))
    var = g.add_variable(sp.float32, (groups * rows * cols,))
    full, last = cols // width, cols % width
    pieces = [(var.offset, (groups, rows, full, width), (rows * cols, width, rows * width, 1),
               (groups, rows, full * width))]
    if last:
        pieces.append((var.offset + full * rows * width, (groups, rows, last), (rows * cols, last, 1),
                       (groups, rows, last)))
    t = Tensor(g, sp.float32, (groups, rows, cols), 0, (), None, Slabs(tuple(pieces), 2, (0, 1, 2)))
    want = np.empty((groups, rows, cols), np.int64)  # worked out slab by slab
    for gi in range(groups):
        at = var.offset + gi * rows * cols
        for c0 in range(0, cols, width):
            cw = min(width, cols - c0)
            want[gi, :, c0:c0 + cw] = at + np.arange(rows * cw).reshape(rows, cw)
            at += rows * cw
    assert sorted(want.ravel().tolist()) == list(range(var.offset, var.offset + want.size))
    for perm in itertools.permutations(range(3)):
        view = t.transpose(perm).reshape((1,) + tuple(want.transpose(perm).shape))
        assert view.slabs is not None and not view.is_strided
        np.testing.assert_array_equal(view.addresses(), want.transpose(perm)[None])
        assert view.first_address() == int(want.transpose(perm).flat[0])
    starts, lengths = t.runs()
    covered = np.concatenate([np.arange(s, s + n) for s, n in zip(starts, lengths, strict=True)])
    assert sorted(covered.tolist()) == sorted(want.ravel().tolist())
    assert not t.repeats_elements()


def test_strided_views_repeat_elements_exactly_when_their_addresses_do():
    rng = np.random.default_rng(0)
    g = sp.Graph(sp.targets.ipu_model(tiles=2))
    x = g.add_variable(sp.float32, (6, 5, 4), name="x")
    for _ in range(200):
        shape = tuple(int(d) for d in rng.integers(1, 4, size=rng.integers(1, 4)))
        strides = tuple(int(s) for s in rng.integers(-7, 8, size=len(shape)))
        reach = sum((d - 1) * abs(s) for d, s in zip(shape, strides, strict=True))
        offset = sum((d - 1) * -s for d, s in zip(shape, strides, strict=True) if s < 0)
        if offset + reach >= x.numel:
            continue
        view = Tensor(g, sp.float32, shape, offset, strides)
        addresses = view.addresses().ravel()
        assert view.repeats_elements() == (np.unique(addresses).size < addresses.size), (shape, strides)


@pytest.mark.parametrize("perm,flip", [((1, 0, 2), None), ((2, 1, 0), None), ((0, 2, 1), 1), ((2, 0, 1), 2),
                                       ((2, 1, 0), "dst"), ((2, 1, 0), "index"), ((1, 2, 0), "index")])
def test_a_transposing_copy_moves_what_each_element_moves(perm, flip):
    """Copy pieces cut only where a side's tile changes: per tile, the bytes and regions sent
    and received, and the bytes copied on tile, as worked out element by element."""
    from softipu.compiler.exchange import copy_traffic, copy_transfers, traffic

    g = sp.Graph(sp.targets.ipu_model(tiles=16))
    x = g.add_variable(sp.float32, (6, 10, 12), name="x")
    rng = np.random.default_rng(sum(perm))
    cuts = np.sort(rng.choice(np.arange(1, x.numel), 15, replace=False))
    bounds = np.concatenate(([0], cuts, [x.numel]))
    g.map_intervals(x, bounds[:-1], bounds[1:], rng.integers(0, 16, bounds.size - 1))
    src = x.transpose(perm)
    if isinstance(flip, int):
        src = src.reverse(flip)
    if flip == "index":  # a gathering copy: the source is an address array
        src = src[np.arange(src.shape[0])]  # fancy indexing: an explicit index
        assert src.index is not None
    var_y = g.add_variable(sp.float32, src.shape, name="y")
    sp.ops.map_linearly(g, var_y, grain_size=7)
    y = var_y.reverse(0) if flip == "dst" else var_y
    transfers, local = copy_transfers(src, y, {sp.float32: g.resolved_mapping(sp.float32)}, 16)
    got = traffic(transfers, g.target)
    s_addr, s_tile, d_tile = src.addresses().ravel(), g.tile_of(src).ravel(), g.tile_of(y).ravel()
    moving = s_tile != d_tile
    want_local = np.bincount(s_tile[~moving], minlength=16) * 4

    def regions(addresses):
        a = np.unique(addresses)
        return 0 if a.size == 0 else 1 + int(np.count_nonzero(np.diff(a) != 1))

    for t in range(16):
        sent, received = s_addr[moving & (s_tile == t)], s_addr[moving & (d_tile == t)]
        assert got.send_bytes[t] == 4 * np.unique(sent).size and got.recv_bytes[t] == 4 * received.size
        assert got.send_regions[t] == regions(sent) and got.recv_regions[t] == regions(received)
    np.testing.assert_array_equal(local, want_local)
    # pieces contiguous on both sides (what regions of a copy are priced by), element order
    d_addr = y.addresses().ravel()
    new_piece = np.concatenate(([True], (np.diff(s_addr) != 1) | (np.diff(d_addr) != 1)
                                | (np.diff(s_tile) != 0) | (np.diff(d_tile) != 0)))
    first = new_piece & moving
    send, recv = transfers.pieces_per_tile(16)
    np.testing.assert_array_equal(send, np.bincount(s_tile[first], minlength=16))
    np.testing.assert_array_equal(recv, np.bincount(d_tile[first], minlength=16))
    # the same figures counted per tile, without listing pieces (a one-to-one transposing copy)
    counted = copy_traffic(src, y, {sp.float32: g.resolved_mapping(sp.float32)}, g.target)
    if perm[0] == 2 or flip == "index":  # the counted paths apply
        assert counted is not None
    if counted is not None:
        t, on_tile = counted
        np.testing.assert_array_equal(on_tile, want_local)
        np.testing.assert_array_equal(t.send_bytes, got.send_bytes)
        np.testing.assert_array_equal(t.recv_bytes, got.recv_bytes)
        np.testing.assert_array_equal(t.supertile_recv_bytes, got.supertile_recv_bytes)
        np.testing.assert_array_equal(t.send_regions, send)
        np.testing.assert_array_equal(t.recv_regions, recv)


def test_lowering_a_torch_model_estimate_only_converts_no_weight():
    """The torch frontend keeps each weight as its torch tensor until the weights are loaded:
    lowering and pricing a 2048 x 2048 Linear in fp16 estimate-only (its weight converted would be
    an 8 MiB float16 array) stays well under one such array; the load converts it, value for value."""
    import torch

    import softipu.torch as st
    from softipu.frontends.torch.export import export_program
    from softipu.frontends.torch.lower import host_values, lower_program

    torch.manual_seed(0)
    net = torch.nn.Linear(2048, 2048, bias=False).eval()
    ep = export_program(net, (torch.randn(1, 2048),), {})
    opts = st.Options(target=sp.targets.ipu_model(tiles=64, bytes_per_tile=MIB), precision="fp16")

    def price():
        lowered = lower_program(ep, opts, ["x"])
        eng = sp.Engine(lowered.graph, list(lowered.programs), estimate_only=True)
        for i in range(eng.num_programs):
            eng.run(i)
        return lowered, eng.log.cycles

    (lowered, cycles), peak = _peak(price)
    assert cycles > 0
    assert peak < 2 * MIB, peak
    ((stream, values),) = lowered.weights
    assert stream == "weights/weight"
    np.testing.assert_array_equal(host_values(values).reshape(2048, 2048),
                                  net.weight.detach().numpy().astype(np.float16))


def test_pricing_ops_on_permuted_reshapes_holds_no_index_per_element():
    """Attention's head split and merge: (b, s, h, d) -> (b*h, s, d) and back to (b, s, h*d) are
    not strided views. Before grouped views each reshape, and each op's rows of it, held an int64
    per element (about 40 MiB at this size); what remains is the compile's own transient work."""
    def price():
        g = sp.Graph(sp.targets.ipu_model(tiles=16, bytes_per_tile=1 << 24))
        x = g.add_variable(sp.float16, (2, 256, 16, 64), name="x")  # 512 Ki elements
        sp.ops.map_linearly(g, x)
        prog = P.Sequence()
        heads = x.transpose(0, 2, 1, 3).reshape(32, 256, 64)
        y = sp.ops.add(g, heads, heads, prog, name="y")
        merged = y.reshape(2, 16, 256, 64).transpose(0, 2, 1, 3).reshape(2, 256, 1024)
        sp.ops.mul(g, merged, merged, prog, name="z")
        eng = sp.Engine(g, [prog], estimate_only=True, options={"debug.allowOutOfMemory": True})
        eng.run(0)
        return heads, merged, eng

    (heads, merged, eng), peak = _peak(price)
    assert peak < 28 * MIB, f"pricing peaked at {peak / MIB:.1f} MiB"
    assert eng.log.cycles > 0
    for v in (heads, merged):
        assert v.slabs is not None and _INDEX_SLOT.__get__(v, Tensor) is None
