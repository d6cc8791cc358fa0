"""The memory plan: bytes per tile by category, liveness, and out-of-memory diagnosis.

Expected figures are derived by hand from the target's [U] memory figures (``targets.py``) and the
categories documented in ``softipu.compiler.memory`` (PopVision's memory report, ipu-facts §3).
"""

from __future__ import annotations

import os
import sys
import tracemalloc

import numpy as np
import pytest

import softipu as sp
from codelets_for_tests import Move
from softipu import program as P
from softipu.codelets import BinaryOp, UnaryOp, binary_op_codelet, unary_op_codelet

HERE = os.path.basename(__file__)


def line() -> int:
    """The line number of the caller's current line."""
    return sys._getframe(1).f_lineno


class Fill(sp.Vertex):
    """Writes its whole Output: a definition."""

    y = sp.Output(sp.float32)

    @staticmethod
    def compute(y):
        y[...] = 1


class Drain(sp.Vertex):
    """Reads its Input and writes nothing: a use."""

    x = sp.Input(sp.float32)

    @staticmethod
    def compute(x):
        pass


class AddInPlace(sp.Vertex):
    acc = sp.InOut(sp.float32)

    @staticmethod
    def compute(acc):
        acc += 1


class BigCode(sp.Vertex):
    """A codelet that declares its own code size."""

    x = sp.Input(sp.float32)
    code_bytes = 1000

    @staticmethod
    def compute(x):
        pass


class Mixed(sp.Vertex):
    """Two vector fields (8 B each), a scalar field (4 B) and an int32 param (4 B)."""

    x = sp.Input(sp.float32)
    y = sp.Output(sp.float32)
    s = sp.Input(sp.float32, sp.SCALAR)
    p = sp.Param(sp.int32)

    @staticmethod
    def compute(x, y, s, p):
        y[...] = x


class Lists(sp.Vertex):
    xs = sp.Input(sp.float32, sp.VECTOR_LIST)

    @staticmethod
    def compute(xs):
        pass


def variable(g: sp.Graph, n: int, tile: int, name: str, dtype=sp.float32) -> sp.Tensor:
    t = g.add_variable(dtype, (n,), name=name)
    g.set_tile_mapping(t, tile)
    return t


def execute(g: sp.Graph, codelet, fields: dict, tile: int = 0, name: str = "") -> P.Execute:
    cs = g.add_compute_set(name)
    g.add_vertex(cs, codelet, fields, tile=tile)
    return P.Execute(cs)


def fill(g, t, tile=0):
    return execute(g, Fill, {"y": t}, tile, f"fill {t.name}")


def drain(g, t, tile=0):
    return execute(g, Drain, {"x": t}, tile, f"drain {t.name}")


def memory(g: sp.Graph, *programs: P.Program, **options) -> dict[str, np.ndarray]:
    eng = sp.Engine(g, list(programs), options, estimate_only=True)
    return eng.report.memory_by_category_per_tile()


def liveness(g: sp.Graph, program: P.Program) -> list[int]:
    eng = sp.Engine(g, [program], estimate_only=True)
    return eng.report.data["memory"]["liveness"]["bytes"]


T4 = sp.targets.ipu_model(tiles=4)
STACKS = T4.workers_per_tile * T4.worker_stack_bytes + T4.supervisor_stack_bytes  # 6 x 72 + 76 = 508


# --- every category of a small graph, by hand -----------------------------------------------------


def test_categories_of_a_small_graph():
    g = sp.Graph(T4)
    x = variable(g, 8, 0, "x")  # written by the host, read on the device: always live
    c = g.add_constant(sp.float32, (8,), 1.0, name="c")
    g.set_tile_mapping(c, 0)
    t = variable(g, 8, 0, "t")  # written by cs1, read by cs2: a temporary
    y = variable(g, 8, 1, "y")  # written by cs2, never read on the device: a result, always live
    cs1 = execute(g, binary_op_codelet(BinaryOp.ADD, sp.float32), {"a": x, "b": c, "out": t}, 0, "add")
    cs2 = execute(g, unary_op_codelet(UnaryOp.EXPONENT, sp.float32), {"x": t, "out": y}, 1, "exp")
    eng = sp.Engine(g, [P.Sequence(cs1, cs2)])
    cats = eng.report.memory_by_category_per_tile()
    expected = {
        # 8 floats = 32 B, a multiple of the 8-byte alignment.
        "always_live_variables": [32, 32, 0, 0],  # x on tile 0, y on tile 1
        "constants": [32, 0, 0, 0],
        # Tile 0: t (32 B) at both steps. Tile 1: t's 32 B receive buffer at cs2.
        "not_always_live": [32, 32, 0, 0],
        # BinaryOp1D: 3 vector fields x 8 B; UnaryOp1D: 2 x 8 B.
        "vertex_state": [3 * 8, 2 * 8, 0, 0],
        "codelet_code": [256, 256, 0, 0],  # one codelet type on each of tiles 0 and 1
        # cs2 sends t as one region from tile 0 and receives it as one region on tile 1: 16 B each.
        "exchange_code": [16, 16, 0, 0],
        "control_code": [2 * 24] * 4,  # two steps, 24 B each, on every tile
        "stacks": [STACKS] * 4,
    }
    assert {k: v.tolist() for k, v in cats.items()} == expected
    per_tile = np.sum([expected[k] for k in expected], axis=0)
    np.testing.assert_array_equal(eng.report.tile_memory, per_tile)
    assert eng.report.memory_by_category == {k: sum(v) for k, v in expected.items()}
    assert eng.report.data["memory"]["variables"] == {"always_live": 3, "not_always_live": 1}
    assert eng.report.fits


def test_memory_figures_come_from_the_target():
    target = sp.targets.ipu_model(tiles=4, workers_per_tile=4, worker_stack_bytes=100,
                                  supervisor_stack_bytes=50, control_code_bytes_per_step=40,
                                  codelet_code_bytes=512, vertex_state_bytes_per_field=12,
                                  exchange_code_bytes_per_region=20)
    g = sp.Graph(target)
    x, y = variable(g, 4, 0, "x"), variable(g, 4, 1, "y")
    cats = memory(g, P.Sequence(execute(g, Move, {"x": x, "y": y}, 1), P.Sync()))
    assert cats["stacks"].tolist() == [4 * 100 + 50] * 4
    assert cats["control_code"].tolist() == [2 * 40] * 4
    assert cats["codelet_code"].tolist() == [0, 512, 0, 0]
    assert cats["vertex_state"].tolist() == [0, 2 * 12, 0, 0]
    assert cats["exchange_code"].tolist() == [20, 20, 0, 0]


def test_codelet_code_once_per_type_per_tile():
    g = sp.Graph(T4)
    xs = [variable(g, 4, 0, f"x{k}") for k in range(3)]
    cs = g.add_compute_set("a")
    for x in xs[:2]:  # two Drains on tile 0: one copy of the code
        g.add_vertex(cs, Drain, {"x": x}, tile=0)
    g.add_vertex(cs, BigCode, {"x": xs[2]}, tile=0)  # declares 1000 B of code
    g.add_vertex(cs, Drain, {"x": xs[0]}, tile=3)  # a Drain on tile 3 too
    other = g.add_compute_set("b")  # the same codelet in another compute set shares the code
    g.add_vertex(other, Drain, {"x": xs[1]}, tile=0)
    cats = memory(g, P.Sequence(P.Execute(cs), P.Execute(other)))
    assert cats["codelet_code"].tolist() == [T4.codelet_code_bytes + 1000, 0, 0, T4.codelet_code_bytes]


def test_vertex_state_per_field_and_vertex():
    g = sp.Graph(T4)
    x, y, s = variable(g, 4, 0, "x"), variable(g, 4, 0, "y"), variable(g, 1, 0, "s")
    a, b = variable(g, 4, 2, "a"), variable(g, 4, 2, "b")
    cs = g.add_compute_set("state")
    g.add_vertex(cs, Mixed, {"x": x, "y": y, "s": s, "p": 3}, tile=0)
    for part in (x[:2], x[2:]):
        g.add_vertex(cs, Drain, {"x": part}, tile=1)
    three = g.add_compute_set("three")
    g.add_vertex(three, Lists, {"xs": [a, b, a]}, tile=2)
    one = g.add_compute_set("one")
    g.add_vertex(one, Lists, {"xs": [b]}, tile=3)
    cats = memory(g, P.Sequence(P.Execute(cs), P.Execute(three), P.Execute(one)))
    per_field = T4.vertex_state_bytes_per_field
    state = cats["vertex_state"].tolist()
    # Mixed: 2 vectors x 8 + scalar pointer 4 + int32 param 4 = 24; two 1-field Drains = 16.
    assert state[:2] == [2 * per_field + 4 + 4, 2 * per_field]
    # A vector list costs 8 B per entry: three entries cost two more than one.
    assert state[2] - state[3] == 2 * per_field


# --- variables: alignment and placement ------------------------------------------------------------


def test_a_three_element_half_variable_takes_eight_bytes():
    g = sp.Graph(T4)
    variable(g, 3, 2, "h", sp.float16)  # 6 B, rounded up to the 8-byte alignment
    cats = memory(g, P.Sync())
    assert cats["always_live_variables"].tolist() == [0, 0, 8, 0]


def test_alignment_is_per_tile_piece():
    g = sp.Graph(T4)
    h = g.add_variable(sp.float16, (8,), name="h")
    g.set_tile_mapping(h[:5], 0)  # 10 B -> 16
    g.set_tile_mapping(h[5:], 1)  # 6 B -> 8
    assert memory(g, P.Sync())["always_live_variables"].tolist() == [16, 8, 0, 0]
    g = sp.Graph(sp.targets.ipu_model(tiles=4, variable_alignment_bytes=32))
    h = g.add_variable(sp.float16, (8,), name="h")
    g.set_tile_mapping(h[:5], 0)
    g.set_tile_mapping(h[5:], 1)
    assert memory(g, P.Sync())["always_live_variables"].tolist() == [32, 32, 0, 0]


# --- liveness ---------------------------------------------------------------------------------------


def test_temporaries_never_live_together_share_bytes():
    g = sp.Graph(T4)
    t1, t2 = variable(g, 16, 0, "t1"), variable(g, 8, 0, "t2")  # 64 B and 32 B
    prog = P.Sequence(fill(g, t1), drain(g, t1), fill(g, t2), drain(g, t2))
    cats = memory(g, prog)
    assert cats["not_always_live"].tolist() == [max(64, 32), 0, 0, 0]
    assert cats["always_live_variables"].tolist() == [0, 0, 0, 0]
    assert liveness(g, prog) == [64, 64, 32, 32]


def test_overlapping_temporaries_add_up():
    g = sp.Graph(T4)
    t1, t2 = variable(g, 16, 0, "t1"), variable(g, 8, 0, "t2")
    prog = P.Sequence(fill(g, t1), fill(g, t2), drain(g, t1), drain(g, t2))
    assert memory(g, prog)["not_always_live"].tolist() == [64 + 32, 0, 0, 0]
    assert liveness(g, prog) == [64, 96, 96, 32]


def test_temporaries_on_different_tiles_peak_separately():
    g = sp.Graph(T4)
    t1, t2 = variable(g, 16, 0, "t1"), variable(g, 8, 3, "t2")
    prog = P.Sequence(fill(g, t1), fill(g, t2, 3), drain(g, t1), drain(g, t2, 3))
    assert memory(g, prog)["not_always_live"].tolist() == [64, 0, 0, 32]


def test_a_value_read_in_every_turn_lives_through_the_loop():
    g = sp.Graph(T4)
    c, u, v = variable(g, 16, 0, "c"), variable(g, 8, 0, "u"), variable(g, 8, 0, "v")
    body = P.Sequence(execute(g, Move, {"x": c, "y": u}), execute(g, Move, {"x": u, "y": v}),
                      drain(g, v))
    prog = P.Sequence(fill(g, c), P.Repeat(3, body))
    # c (64 B) is read at the top of every turn, so it is live while u and v (32 B each) are both
    # live at the second step of the body: 64 + 32 + 32. Dropping c after its last read in program
    # order would give max(c + u, u + v) = 96.
    assert memory(g, prog)["not_always_live"].tolist() == [128, 0, 0, 0]


def test_a_value_written_in_a_loop_and_read_after_it_lives_through_the_loop():
    g = sp.Graph(T4)
    t, u = variable(g, 16, 0, "t"), variable(g, 8, 0, "u")
    body = P.Sequence(fill(g, u), drain(g, u), fill(g, t))
    prog = P.Sequence(P.Repeat(2, body), drain(g, t))
    # The documented rule: used inside the loop and after it, t (64 B) is live for the whole loop,
    # so it overlaps u (32 B).
    assert memory(g, prog)["not_always_live"].tolist() == [64 + 32, 0, 0, 0]


def test_a_loop_carried_value_is_live_at_every_point_of_the_loop():
    g = sp.Graph(T4)
    acc, u, v = variable(g, 16, 0, "acc"), variable(g, 8, 0, "u"), variable(g, 4, 0, "v")
    body = P.Sequence(execute(g, Move, {"x": acc, "y": u}), fill(g, v), drain(g, v),
                      execute(g, Move, {"x": u, "y": acc}))
    prog = P.Sequence(fill(g, acc), P.Repeat(4, body), drain(g, acc))
    eng = sp.Engine(g, [prog], estimate_only=True)
    assert eng.executable.memory.always_live.tolist() == [False, False, False]
    live = eng.report.data["memory"]["liveness"]["bytes"]
    # Points: fill acc, Repeat, Move acc->u, fill v, drain v, Move u->acc, drain acc.
    assert live == [64, 64, 64 + 32, 64 + 32 + 16, 64 + 32 + 16, 64 + 32, 64]
    assert eng.report.memory_by_category_per_tile()["not_always_live"][0] == 64 + 32 + 16


def test_a_value_read_before_it_is_written_is_always_live():
    g = sp.Graph(T4)
    acc = variable(g, 8, 0, "acc")
    prog = P.Sequence(execute(g, AddInPlace, {"acc": acc}), drain(g, acc))
    cats = memory(g, prog)
    assert cats["always_live_variables"].tolist() == [32, 0, 0, 0]
    assert cats["not_always_live"].tolist() == [0, 0, 0, 0]


def test_write_undef_first_makes_an_accumulator_a_temporary():
    g = sp.Graph(T4)
    acc = variable(g, 8, 0, "acc")
    prog = P.Sequence(P.WriteUndef(acc), execute(g, AddInPlace, {"acc": acc}), drain(g, acc))
    cats = memory(g, prog)
    assert cats["always_live_variables"].tolist() == [0, 0, 0, 0]
    assert cats["not_always_live"].tolist() == [32, 0, 0, 0]


def test_write_undef_after_the_last_read_keeps_a_temporary_temporary():
    # WriteUndef "marks a tensor's contents as dead from here on (frees it for liveness)":
    # after t's last read it must not turn t into an always-live variable.
    g = sp.Graph(T4)
    x, t = variable(g, 8, 0, "x"), variable(g, 8, 0, "t")
    prog = P.Sequence(execute(g, Move, {"x": x, "y": t}), drain(g, t), P.WriteUndef(t))
    cats = memory(g, prog)
    assert cats["always_live_variables"].tolist() == [32, 0, 0, 0]  # x only
    assert cats["not_always_live"].tolist() == [32, 0, 0, 0]  # t


def test_a_value_discarded_unread_lives_only_where_it_is_written():
    # A value written and never read is a result the host may read (always live), unless a
    # WriteUndef discards it: Poplar's liveness then frees it after its last write. s: written, then
    # discarded (a layer norm's statistics in inference); acc: written, updated in place, discarded;
    # r: written, never read, kept (a result).
    g = sp.Graph(T4)
    s, t = variable(g, 8, 0, "s"), variable(g, 16, 0, "t")
    acc, r = variable(g, 4, 0, "acc"), variable(g, 2, 0, "r")
    prog = P.Sequence(fill(g, s), P.WriteUndef(s), fill(g, t), drain(g, t), fill(g, acc),
                      execute(g, AddInPlace, {"acc": acc}), P.WriteUndef(acc), fill(g, r))
    eng = sp.Engine(g, [prog], estimate_only=True)
    assert eng.executable.memory.always_live.tolist() == [False, False, False, True]
    # Points: fill s (32 B), undef s, fill t (64), drain t (64), fill acc (16), add acc (16),
    # undef acc, fill r (always live).
    assert eng.report.data["memory"]["liveness"]["bytes"] == [32, 0, 64, 64, 16, 16, 0, 0]
    cats = eng.report.memory_by_category_per_tile()
    assert cats["always_live_variables"].tolist() == [8, 0, 0, 0]  # r: 8 B, the alignment
    assert cats["not_always_live"].tolist() == [64, 0, 0, 0]


def test_receive_buffers_are_counted_at_their_step():
    g = sp.Graph(T4)
    x = variable(g, 100, 0, "x")  # host input on tile 0, always live
    a, b = x[:100], x[:50]
    prog = P.Sequence(drain(g, a, tile=1), drain(g, b, tile=1))
    cats = memory(g, prog)
    # Tile 1 receives 400 B at the first step and 200 B at the second: its peak is 400, not 600.
    assert cats["not_always_live"].tolist() == [0, 400, 0, 0]
    assert liveness(g, prog) == [400, 200]
    both = g.add_compute_set("both")
    y = variable(g, 50, 0, "y")
    g.add_vertex(both, Drain, {"x": a}, tile=1)
    g.add_vertex(both, Drain, {"x": y}, tile=1)
    assert memory(g, P.Execute(both))["not_always_live"].tolist() == [0, 400 + 200, 0, 0]


# --- exchange and control code ----------------------------------------------------------------------


def test_exchange_code_counts_regions():
    g = sp.Graph(T4)
    x = variable(g, 40, 0, "x")
    two_pieces = sp.concat([x[0:10], x[20:30]])  # two separate regions of tile 0's memory
    one = drain(g, x[30:40], tile=1)
    cats = memory(g, P.Sequence(drain(g, two_pieces, tile=1), one, P.Execute(one.compute_set)))
    region = T4.exchange_code_bytes_per_region
    # 2 regions in the first step, 1 in the second; executing that compute set again reuses its
    # exchange code.
    assert cats["exchange_code"].tolist() == [3 * region, 3 * region, 0, 0]


def test_control_code_per_step_on_every_tile():
    g = sp.Graph(T4)
    x, y = variable(g, 4, 0, "x"), variable(g, 4, 2, "y")
    work = drain(g, x)
    fn = g.add_function(P.Execute(work.compute_set), name="f")
    prog = P.Sequence(P.Repeat(2, work), P.Sync(), P.Copy(x, y), P.Call(fn), P.Call(fn))
    eng = sp.Engine(g, [prog], estimate_only=True)
    steps = len(eng.executable.steps)
    # Repeat turn, Execute, Sync, Copy, two Calls and the function's Execute: 7 steps.
    assert steps == 7
    per_tile = eng.report.memory_by_category_per_tile()["control_code"]
    assert per_tile.tolist() == [steps * T4.control_code_bytes_per_step] * 4


# --- out of memory -------------------------------------------------------------------------------


def overflowing_graph() -> tuple[sp.Graph, int, P.Program]:
    g = sp.Graph(sp.targets.ipu_model(tiles=4, bytes_per_tile=4096))
    big_line = line() + 1
    big = g.add_variable(sp.float32, (2000,), name="big_weights")  # 8000 B on tile 2
    g.set_tile_mapping(big, 2)
    variable(g, 100, 2, "small_bias")  # 400 B on tile 2
    variable(g, 1000, 3, "other")  # 4000 B on tile 3: over too, by less
    return g, big_line, P.Sync()


def test_out_of_memory_names_the_tile_bytes_variables_and_remedy():
    g, big_line, prog = overflowing_graph()
    with pytest.raises(sp.OutOfMemoryError) as info:
        sp.Engine(g, [prog])
    assert isinstance(info.value, sp.CompileError)
    message = str(info.value)
    # Tile 2: 8000 + 400 variables + 1 step x 24 control code + 508 stacks.
    used = 8000 + 400 + 24 + STACKS
    assert f"tile 2 needs {used:,} bytes but tiles only have 4,096 bytes" in message
    assert "2 of 4 tiles" in message  # tiles 2 and 3 overflow
    assert "big_weights" in message and "small_bias" in message
    assert f"{HERE}:{big_line}" in message
    assert message.index("big_weights") < message.index("small_bias")  # largest first
    assert "always_live_variables 8,400 B" in message
    assert f"stacks {STACKS:,} B" in message
    assert "debug.allowOutOfMemory" in message


def test_allow_out_of_memory_compiles_and_reports():
    g, _, prog = overflowing_graph()
    eng = sp.Engine(g, [prog], options={"debug.allowOutOfMemory": True})
    report = eng.report
    assert not report.fits
    used = 8000 + 400 + 24 + STACKS
    assert report.tile_memory[2] == used > 4096
    assert int(np.argmax(report.tile_memory)) == 2
    assert "DOES NOT FIT" in report.summary()
    eng.run(0)
    assert report.tile_memory.tolist() == eng.report.tile_memory.tolist()


# --- a full-size chip, priced without data ----------------------------------------------------------


def test_gc200_estimate_of_a_nearly_full_chip_uses_little_host_memory():
    target = sp.targets.GC200
    tiles = target.num_tiles  # 1472
    per_tile = 45_000  # float32 elements of each of a, b, out on every tile: 180,000 B each
    tracemalloc.start()
    try:
        g = sp.Graph(target)
        ts = {}
        for name in ("a", "b", "out"):
            ts[name] = g.add_variable(sp.float32, (tiles, per_tile), name=name)
            sp.ops.map_linearly(g, ts[name])
        cs = g.add_compute_set("add")
        g.add_vertices(cs, binary_op_codelet(BinaryOp.ADD, sp.float32), ts, tiles=np.arange(tiles))
        eng = sp.Engine(g, [P.Execute(cs)], estimate_only=True)
        eng.run(0)
        report = eng.report
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The variables alone: 3 x 1472 x 180,000 B = 795 MB, 84.5% of the chip's 940.6 MB.
    assert 3 * tiles * per_tile * 4 / target.total_bytes == pytest.approx(0.845, abs=0.001)
    assert peak < 100 * 2**20
    # Per tile: three always-live variables + 3 vector fields of state + one codelet + one step of
    # control code + stacks; no exchange (every vertex is local).
    used = 3 * per_tile * 4 + 3 * 8 + 256 + 24 + STACKS
    assert used == 540_812 <= target.bytes_per_tile
    assert report.tile_memory.tolist() == [used] * tiles
    assert report.fits
    # BinaryOp1D<ADD,float> of 45,000: 6 x (29 + ceil(7500 / 2) x 3) + 11, plus the sync.
    assert report.cycles == 6 * (29 + 3750 * 3) + 11 + target.on_chip_sync_cycles


def test_an_empty_variable_beside_a_used_one_does_not_confuse_liveness():
    """An empty variable shares its start address with the next one; the liveness walk used to
    attribute the next variable's reads to it and fail with a KeyError (ONNX's ReduceLogSumExp of
    an empty set: its exp output was empty)."""
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    prog = P.Sequence([])
    before = g.add_variable(sp.float32, (8,), name="before")
    empty = g.add_variable(sp.float32, (0,), name="empty")
    after = g.add_variable(sp.float32, (8,), name="after")
    for v in (before, empty, after):
        sp.ops.map_linearly(g, v)
    out = sp.ops.add(g, before, after, prog, name="sum")
    eng = sp.Engine(g, [prog])
    eng.write_tensor(before, np.arange(8, dtype=np.float32))
    eng.write_tensor(after, np.full(8, 2.0, np.float32))
    eng.run(0)
    np.testing.assert_array_equal(eng.read_tensor(out), np.arange(8, dtype=np.float32) + 2)
