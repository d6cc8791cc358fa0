"""Golden cycle counts of whole runs, derived by hand from the documented formulas: control flow
priced per turn, cycle counters, and estimate-only engines. Per-step figures are in test_costs.py
and test_costs_exchange.py.

Every expected figure below is arithmetic on the target's fields and the formulas of
ipu-facts.md §2 and §5 (and the cost model's documented rules in ``softipu.compiler.costs`` and
``softipu.compiler.exchange``); none is copied from a run. Small ``ipu_model`` chips keep the
numbers readable; keywords override a figure where that makes the arithmetic clearer.
"""

from __future__ import annotations

import numpy as np
import pytest

import softipu as sp
from _costs_helpers import MultiWork, only_step, variable, work_set
from codelets_for_tests import Increment, Less
from softipu import program as P
from softipu.codelets import BinaryOp, binary_op_codelet

# --- helpers ----------------------------------------------------------------------------------


def steps_by_name(eng: sp.Engine) -> dict[str, object]:
    return {s.name: s for s in eng.executable.steps}


# --- run accounting -----------------------------------------------------------------------------


def single_work(g: sp.Graph, cycles: int, tile: int = 0, name: str = "work") -> sp.ComputeSet:
    return work_set(g, {tile: [cycles]}, MultiWork, name)


def step_cost(target: sp.Target, compute: int) -> int:
    """An Execute of purely local work: sync, no exchange, compute."""
    return target.on_chip_sync_cycles + compute


def test_repeat_pays_its_body_and_a_control_step_each_turn():
    target = sp.targets.ipu_model(tiles=4)
    g = sp.Graph(target)
    cs = single_work(g, 1000)
    eng = sp.Engine(g, [P.Repeat(5, P.Execute(cs))])
    eng.run(0)
    turn = target.control_cycles_per_step  # Repeat turn: control work, no sync
    assert eng.report.cycles == 5 * (step_cost(target, 1000) + turn) == 5 * (1150 + 10)
    counts = {s["name"]: s["count"] for s in eng.report.steps}
    assert counts == {"work": 5, "Repeat x5 (per turn)": 5}
    assert eng.report.runs == [{"program": 0, "cycles": eng.report.cycles}]
    eng.run(0)
    assert eng.report.cycles == 2 * 5 * 1160


def test_if_pays_only_the_branch_taken():
    target = sp.targets.ipu_model(tiles=4)
    g = sp.Graph(target)
    cheap, dear = single_work(g, 100, name="cheap"), single_work(g, 5000, name="dear")
    flag = variable(g, 1, 1, "flag", sp.int32)
    eng = sp.Engine(g, [P.If(flag, P.Execute(dear), P.Execute(cheap))])
    test = target.control_cycles_per_step + target.on_chip_sync_cycles  # every tile sees the flag
    eng.write_tensor(flag, [0])
    eng.run(0)
    assert eng.report.cycles == test + step_cost(target, 100)
    eng.write_tensor(flag, [1])
    eng.run(0)
    assert eng.report.runs[1]["cycles"] == test + step_cost(target, 5000)
    counts = {s["name"]: s["count"] for s in eng.report.steps}
    assert counts == {"If test": 2, "cheap": 1, "dear": 1}


def counting_loop(g: sp.Graph, body: sp.ComputeSet, limit: int):
    """RepeatWhileTrue(count < limit) { body; count += 1 }, returning (program, count tensor)."""
    count = variable(g, 1, 0, "count", sp.int32)
    flag = variable(g, 1, 0, "flag", sp.int32)
    test = g.add_compute_set("test")
    g.add_vertex(test, Less, {"count": count, "limit": limit, "flag": flag}, tile=0)
    step = g.add_compute_set("step")
    g.add_vertex(step, Increment, {"count": count, "step": 1}, tile=0)
    loop = P.RepeatWhileTrue(P.Execute(test), flag, P.Sequence(P.Execute(body), P.Execute(step)))
    return loop, count


def loop_prices(eng: sp.Engine) -> tuple[int, int, int]:
    s = steps_by_name(eng)
    return s["test"].cycles + s["RepeatWhileTrue test"].cycles, s["work"].cycles, s["step"].cycles


def test_repeat_while_counts_every_test():
    target = sp.targets.ipu_model(tiles=4)
    g = sp.Graph(target)
    loop, count = counting_loop(g, single_work(g, 700), limit=4)
    eng = sp.Engine(g, [loop])
    eng.write_tensor(count, [0])
    eng.run(0)
    assert eng.read_tensor(count).tolist() == [4]
    test, body, step = loop_prices(eng)
    # 4 turns, 5 tests (the last one fails); each test is a compute set plus a sync'd control step.
    assert steps_by_name(eng)["RepeatWhileTrue test"].cycles == (
        target.control_cycles_per_step + target.on_chip_sync_cycles)
    assert eng.report.cycles == 5 * test + 4 * (body + step)
    counts = {s["name"]: s["count"] for s in eng.report.steps}
    assert counts == {"test": 5, "RepeatWhileTrue test": 5, "work": 4, "step": 4}


def test_functions_cost_their_body_per_call():
    target = sp.targets.ipu_model(tiles=4)
    g = sp.Graph(target)
    fn = g.add_function(P.Execute(single_work(g, 300)), name="f")
    eng = sp.Engine(g, [P.Sequence(P.Call(fn), P.Call(fn), P.Call(fn))])
    eng.run(0)
    call = target.control_cycles_per_step
    assert eng.report.cycles == 3 * (call + step_cost(target, 300))
    (body,) = [s for s in eng.report.steps if s["name"] == "work"]
    assert body["count"] == 3  # one step for the function body, run three times
    calls = [s["count"] for s in eng.report.steps if s["name"] == "Call f"]
    assert calls == [1, 1, 1]


def test_report_cycles_are_the_sum_of_steps_times_counts():
    target = sp.targets.ipu_model(tiles=4)
    g = sp.Graph(target)
    a, b = single_work(g, 100, name="a"), single_work(g, 900, tile=3, name="b")
    x, y = variable(g, 50, 0, "x"), variable(g, 50, 2, "y")
    prog = P.Sequence(P.Repeat(3, P.Sequence(P.Execute(a), P.Copy(x, y))), P.Execute(b), P.Sync())
    eng = sp.Engine(g, [prog])
    eng.run(0)
    report = eng.report
    assert report.cycles == sum(s["cycles"] * s["count"] for s in report.steps)
    assert {s["name"]: s["count"] for s in report.steps} == {
        "Repeat x3 (per turn)": 3, "a": 3, "Copy x -> y": 3, "b": 1, "Sync internal": 1}


# --- cycle counters ---------------------------------------------------------------------------


def counter_value(eng: sp.Engine, counter: sp.Tensor) -> int:
    low, high = (int(w) for w in eng.read_tensor(counter))
    return low | high << 32


def test_cycle_count_measures_its_sequence():
    target = sp.targets.ipu_model(tiles=4)
    g = sp.Graph(target)
    cs = single_work(g, 400)
    seq = P.Sequence(P.Repeat(2, P.Execute(cs)), P.Sync())
    counter = sp.cycle_count(g, seq)
    before = single_work(g, 999, name="before")
    eng = sp.Engine(g, [P.Sequence(P.Execute(before), seq)])
    eng.run(0)
    measured = 2 * (target.control_cycles_per_step + step_cost(target, 400)) + target.on_chip_sync_cycles
    assert counter_value(eng, counter) == measured
    s = steps_by_name(eng)
    assert measured == sum(s[k].cycles * c for k, c in
                           [("work", 2), ("Repeat x2 (per turn)", 2), ("Sync internal", 1)])
    assert eng.report.cycles == measured + s["before"].cycles


def test_cycle_count_fills_the_high_word():
    target = sp.targets.ipu_model(tiles=4)
    g = sp.Graph(target)
    big = 2**31 - 1
    seq = P.Sequence(P.Repeat(3, P.Execute(single_work(g, big))))
    counter = sp.cycle_count(g, seq)
    eng = sp.Engine(g, [seq])
    eng.run(0)
    measured = 3 * (target.control_cycles_per_step + step_cost(target, big))
    assert measured > 2**32
    low, high = (int(w) for w in eng.read_tensor(counter))
    assert (low, high) == (measured & 0xFFFFFFFF, measured >> 32)


def test_cycle_stamp_reads_the_cycles_since_load():
    target = sp.targets.ipu_model(tiles=4)
    g = sp.Graph(target)
    seq = P.Sequence(P.Execute(single_work(g, 250)))
    stamp = sp.cycle_stamp(g, seq)
    eng = sp.Engine(g, [seq])
    eng.run(0)
    first = counter_value(eng, stamp)
    assert first == step_cost(target, 250)
    eng.run(0)
    assert counter_value(eng, stamp) == 2 * first == eng.report.cycles


# --- estimate-only engines ----------------------------------------------------------------------


def mixed_program(g: sp.Graph) -> P.Program:
    a, b = single_work(g, 100, name="a"), work_set(g, {1: [30, 40, 50], 2: [500]}, name="b")
    x, y = variable(g, 300, 0, "x"), variable(g, 300, 3, "y")
    up = g.add_host_to_device_fifo("up", sp.float32, 300)
    return P.Sequence(P.Copy(up, x), P.Repeat(4, P.Sequence(P.Execute(a), P.Copy(x, y))),
                      P.Execute(b), P.Sync())


def test_estimate_equals_running_for_a_branch_free_program():
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    prog = mixed_program(g)
    real = sp.Engine(g, [prog])
    real.connect_stream("up", np.zeros(300, np.float32))
    real.run(0)
    est = sp.Engine(g, [prog], estimate_only=True)
    est.run(0)  # no data, no streams needed
    assert est.report.cycles == real.report.cycles > 0
    assert [s["count"] for s in est.report.steps] == [s["count"] for s in real.report.steps]


def test_estimate_prices_a_billion_turns():
    # How fast (a loop's price is multiplied, never walked): estimate_billion_turns in
    # bench/bench_host_times.py.
    target = sp.targets.ipu_model(tiles=4)
    g = sp.Graph(target)
    eng = sp.Engine(g, [P.Repeat(10**9, P.Execute(single_work(g, 1000)))], estimate_only=True)
    eng.run(0)
    assert eng.report.cycles == 10**9 * (step_cost(target, 1000) + target.control_cycles_per_step)
    assert steps_by_name(eng)["work"] is not None
    assert {s["name"]: s["count"] for s in eng.report.steps}["work"] == 10**9


def test_estimate_of_a_loop_that_never_turns():
    target = sp.targets.ipu_model(tiles=4)
    g = sp.Graph(target)
    eng = sp.Engine(g, [P.Sequence(P.Repeat(0, P.Execute(single_work(g, 1000))), P.Sync())],
                    estimate_only=True)
    eng.run(0)
    assert eng.report.cycles == target.on_chip_sync_cycles  # only the Sync
    assert {s["name"]: s["count"] for s in eng.report.steps}["work"] == 0


def test_estimate_takes_the_dearer_branch():
    target = sp.targets.ipu_model(tiles=4)
    g = sp.Graph(target)
    cheap, dear = single_work(g, 100, name="cheap"), single_work(g, 5000, name="dear")
    flag = variable(g, 1, 1, "flag", sp.int32)
    test = target.control_cycles_per_step + target.on_chip_sync_cycles
    for prog in (P.If(flag, P.Execute(cheap), P.Execute(dear)),
                 P.If(flag, P.Execute(dear), P.Execute(cheap)),
                 P.Switch(flag, {0: P.Execute(cheap), 1: P.Execute(dear)})):
        eng = sp.Engine(g, [prog], estimate_only=True)
        eng.run(0)
        assert eng.report.cycles == test + step_cost(target, 5000)


@pytest.mark.parametrize("turns", [1, 3, 0])
def test_estimate_while_iterations_option(turns):
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    loop, count = counting_loop(g, single_work(g, 700), limit=turns)
    options = {} if turns == 1 else {"estimate.whileIterations": turns}
    est = sp.Engine(g, [loop], options, estimate_only=True)
    est.run(0)
    test, body, step = loop_prices(est)
    assert est.report.cycles == (turns + 1) * test + turns * (body + step)
    real = sp.Engine(g, [loop])  # a run that really takes `turns` turns costs the same
    real.write_tensor(count, [0])
    real.run(0)
    assert real.report.cycles == est.report.cycles


def test_estimate_only_engine_holds_no_data():
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    x = variable(g, 4, 0, "x")
    eng = sp.Engine(g, [P.Execute(single_work(g, 10))], estimate_only=True)
    with pytest.raises(sp.EngineError, match="estimate-only"):
        eng.write_tensor(x, np.zeros(4))
    with pytest.raises(sp.EngineError, match="estimate-only"):
        eng.read_tensor(x)
    with pytest.raises(sp.EngineError, match="estimate-only"):
        eng.connect_stream("up", np.zeros(4))
    assert eng.report.data["estimate_only"] is True


def test_estimate_sees_the_elements_through_the_same_structure():
    # That the time to price grows with vertices, not elements, is estimate_time_vs_elements in
    # bench/bench_host_times.py; here, what the price is.
    target = sp.targets.ipu_model(tiles=16, bytes_per_tile=16 * 2**20)
    codelet = binary_op_codelet(BinaryOp.ADD, sp.float32)

    def build_and_price(elements: int) -> sp.Engine:
        g = sp.Graph(target)
        vertices = 256
        ts = {}
        for name in ("a", "b", "out"):
            ts[name] = g.add_variable(sp.float32, (vertices, elements), name=name)
            sp.ops.map_linearly(g, ts[name], grain_size=elements)
        cs = g.add_compute_set("add")
        g.add_vertices(cs, codelet, ts, tiles=np.repeat(np.arange(16), vertices // 16))
        eng = sp.Engine(g, [P.Execute(cs)], estimate_only=True)
        eng.run(0)
        return eng

    big, small_eng = build_and_price(65536), build_and_price(16)
    # The structure is the same: one vertex group of 256 vertices, one step, 4096x the data.
    for eng in (small_eng, big):
        (compiled,) = eng.executable.compute_sets.values()
        assert [grp.num_vertices for grp in compiled.groups] == [256]
    assert big.report.cycles > small_eng.report.cycles  # the price does see the elements...
    # 16 vertices per tile of 65536 floats: ceil(65536 / 6) = 10923 per worker, ceil(10923 / 2)
    # = 5462 loops: 16 x (6 x (29 + 5462 x 3) + 11).
    assert only_step(big).compute_cycles == 16 * (6 * (29 + 5462 * 3) + 11)
