"""Collectives across replicas (softipu.collectives) against numpy over the replica axis.

Oracles: numpy reductions over each replica group's rows, written here from GCL's definitions
(CommGroup ALL / CONSECUTIVE / ORTHOGONAL, ipu-facts-scale §2); float sums in the ring's order
(the module docstring of softipu.collectives.ring), so they are compared bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest

import softipu as sp
from softipu import collectives as C
from softipu import program as P
from softipu.collectives import CollectiveOperator as Op
from softipu.collectives import CommGroup, CommGroupType, Method
from softipu.engine.replicas import LinkFailure
from softipu.target import links, systems

TARGET = sp.targets.ipu_model(tiles=4)


def members(kind: CommGroupType, size: int, replicas: int) -> list[list[int]]:
    """GCL's groups, written out: the oracle's, independent of collectives.groups."""
    if kind is CommGroupType.ALL:
        return [list(range(replicas))]
    if kind is CommGroupType.CONSECUTIVE:
        return [list(range(g * size, (g + 1) * size)) for g in range(replicas // size)]
    m = replicas // size
    return [[g + i * m for i in range(size)] for g in range(m)]


NUMPY = {Op.ADD: np.add, Op.MUL: np.multiply, Op.MIN: np.minimum, Op.MAX: np.maximum,
         Op.LOGICAL_AND: np.logical_and, Op.LOGICAL_OR: np.logical_or}


def reduce_rows(rows: np.ndarray, op: Op) -> np.ndarray:
    if op is Op.SQUARE_ADD:
        return (rows * rows).sum(0).astype(rows.dtype)
    return NUMPY[op].reduce(rows, axis=0).astype(rows.dtype)


def run(graph: sp.Graph, prog: P.Sequence, x: sp.Tensor, values: np.ndarray, reference: bool = False):
    eng = sp.Engine(graph, [prog], options={"engine.reference": reference})
    eng.write_tensor(x, values)
    eng.run(0)
    return eng


def data(dtype, shape, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype is sp.bool_:
        return rng.random(shape) < 0.7
    if dtype is sp.int32:
        return rng.integers(-3, 4, shape).astype(np.int32)
    if dtype is sp.float16:  # small integers: sums exact in any order
        return rng.integers(-8, 9, shape).astype(np.float16)
    return rng.standard_normal(shape).astype(np.float32)


# (op, dtype, group kind, group size, replicas, method, elements)
RECORDS = [
    (Op.ADD, sp.int32, CommGroupType.ALL, 0, 4, Method.CLOCKWISE_RING, 10),
    (Op.MUL, sp.int32, CommGroupType.CONSECUTIVE, 2, 4, Method.ANTICLOCKWISE_RING, 7),
    (Op.MIN, sp.float32, CommGroupType.ORTHOGONAL, 2, 4, Method.BIDIRECTIONAL_RING_PAIR, 9),
    (Op.MAX, sp.int32, CommGroupType.ORTHOGONAL, 4, 8, Method.AUTO, 12),
    (Op.LOGICAL_AND, sp.bool_, CommGroupType.ALL, 0, 4, Method.CLOCKWISE_RING, 6),
    (Op.LOGICAL_OR, sp.bool_, CommGroupType.CONSECUTIVE, 4, 8, Method.QUAD_DIRECTIONAL_RING, 16),
    (Op.SQUARE_ADD, sp.int32, CommGroupType.ALL, 0, 2, Method.MEET_IN_MIDDLE_RING, 5),
    (Op.ADD, sp.float16, CommGroupType.ALL, 0, 4, Method.CLOCKWISE_RING, 6),  # popops' ops, not fused
]


@pytest.mark.parametrize("op,dtype,kind,size,replicas,method,numel", RECORDS,
                         ids=[f"{r[0].name}-{r[2].name}{r[3]}-R{r[4]}-{r[5].name}" for r in RECORDS])
def test_all_reduce_reduce_scatter_and_all_gather_match_numpy(op, dtype, kind, size, replicas, method, numel):
    g = sp.Graph(TARGET, replication_factor=replicas)
    x = g.add_variable(dtype, (numel,), "x")
    sp.ops.map_linearly(g, x)
    prog, group, options = P.Sequence(), CommGroup(kind, size), {"method": method}
    ar = C.all_reduce(g, x, prog, op=op, group=group, options=options)
    rs = C.reduce_scatter(g, x, prog, op=op, group=group, options=options)
    ag = C.all_gather(g, x, prog, group=group, options=options)
    values = data(dtype, (replicas, numel))
    eng = run(g, prog, x, values)
    groups = members(kind, size, replicas)
    n = len(groups[0])
    frag = -(-numel // n)
    for grp in groups:
        total = reduce_rows(values[grp], op)
        padded = np.zeros(n * frag, values.dtype)
        padded[:numel] = total
        for rank, r in enumerate(grp):
            np.testing.assert_array_equal(eng.read_tensor(ar)[r], total)
            np.testing.assert_array_equal(eng.read_tensor(rs)[r], padded[rank * frag:(rank + 1) * frag])
            np.testing.assert_array_equal(eng.read_tensor(ag)[r], values[grp])


# poplibs' interleaved ring of 4 ranks (one IPU per replica): evens up, odds back down.
RING4 = (0, 2, 3, 1)


def ring_sum(rows: np.ndarray, q: int, step: int) -> np.ndarray:
    """Rank q's fragment as the ring adds it: from the rank after q around to q, left to right."""
    n, p = rows.shape[0], RING4.index(q)
    ranks = [RING4[(p + step * (i + 1)) % n] for i in range(n)]
    acc = rows[ranks[0]].copy()
    for r in ranks[1:]:
        acc = acc + rows[r]
    return acc


@pytest.mark.parametrize("method,step", [(Method.CLOCKWISE_RING, 1), (Method.ANTICLOCKWISE_RING, -1)])
def test_float_sums_follow_the_ring_order_bitwise_and_reference_agrees(method, step):
    replicas, numel = 4, 12
    g = sp.Graph(TARGET, replication_factor=replicas)
    x = g.add_variable(sp.float32, (numel,), "x")
    sp.ops.map_linearly(g, x)
    prog = P.Sequence()
    y = C.all_reduce(g, x, prog, options={"method": method})
    mean = C.reduce_scatter(g, x, prog, op=Op.MEAN, options={"method": method})
    values = (data(sp.float32, (replicas, numel)) * np.float32(1e4)) ** 3  # big spread: order shows
    fast, ref = run(g, prog, x, values), run(g, prog, x, values, reference=True)
    rows = values.reshape(replicas, replicas, numel // replicas)  # (replica, fragment, m)
    want = np.concatenate([ring_sum(rows[:, f], f, step) for f in range(replicas)])
    for r in range(replicas):
        np.testing.assert_array_equal(fast.read_tensor(y)[r], want)
        np.testing.assert_array_equal(fast.read_tensor(mean)[r], ring_sum(rows[:, r], r, step) / np.float32(4))
    np.testing.assert_array_equal(ref.read_tensor(y), fast.read_tensor(y))


def meet_sum(rows: np.ndarray, q: int) -> np.ndarray:
    """Rank q's fragment as meet-in-middle adds it (poplibs' meetInMiddle sequences): the clockwise
    partial from c = n // 2 places back up to q (own row last), plus the anticlockwise one from
    a = (n - 1) // 2 places on down to q + 1."""
    n, p = rows.shape[0], RING4.index(q)
    c, a = n // 2, (n - 1) // 2
    cw = rows[RING4[(p - c) % n]].copy()
    for i in range(c - 1, -1, -1):
        cw = cw + rows[RING4[(p - i) % n]]
    acw = rows[RING4[(p + a) % n]].copy()
    for i in range(a - 1, 0, -1):
        acw = acw + rows[RING4[(p + i) % n]]
    return cw + acw


def test_meet_in_middle_runs_half_way_round_both_ways_bitwise():
    replicas, numel = 4, 12
    g = sp.Graph(TARGET, replication_factor=replicas)
    x = g.add_variable(sp.float32, (numel,), "x")
    sp.ops.map_linearly(g, x)
    prog = P.Sequence()
    y = C.all_reduce(g, x, prog, options={"method": Method.MEET_IN_MIDDLE_RING})
    gathered = C.all_gather(g, x, prog, options={"method": Method.MEET_IN_MIDDLE_RING})
    values = (data(sp.float32, (replicas, numel), seed=5) * np.float32(1e4)) ** 3  # order shows
    eng = run(g, prog, x, values)
    rows = values.reshape(replicas, replicas, numel // replicas)
    want = np.concatenate([meet_sum(rows[:, f], f) for f in range(replicas)])
    np.testing.assert_array_equal(eng.read_tensor(y), np.broadcast_to(want, (replicas, numel)))
    np.testing.assert_array_equal(eng.read_tensor(gathered), np.broadcast_to(values, (replicas,) * 2 + (numel,)))
    # A phase (three here: the all-reduce's two, the all-gather) is n - 1 = 3 exchanges: (n - 1) // 2
    # = 1 both ways and one clockwise (n even), as GCL's and as links.collective_cost prices it.
    copies = [node for node in P.walk(prog) if isinstance(node, P.CrossReplicaCopy)]
    assert sorted(len(node.transfers) for node in copies) == [1, 1, 1, 2, 2, 2]


@pytest.mark.parametrize("replicas", [3, 5, 6, 8])
def test_meet_in_middle_matches_numpy_for_odd_and_even_groups(replicas):
    g = sp.Graph(TARGET, replication_factor=replicas)
    x = g.add_variable(sp.int32, (2 * replicas + 1,), "x")
    sp.ops.map_linearly(g, x)
    prog, o = P.Sequence(), {"method": Method.MEET_IN_MIDDLE_RING}
    total = C.all_reduce(g, x, prog, options=o)
    low = C.reduce_scatter(g, x, prog, op=Op.MIN, options=o)
    values = data(sp.int32, (replicas, x.numel), seed=replicas)
    eng = run(g, prog, x, values)
    np.testing.assert_array_equal(eng.read_tensor(total), np.broadcast_to(values.sum(0), values.shape))
    padded = np.zeros((replicas, 3), np.int32)
    padded.flat[: x.numel] = values.min(0)
    np.testing.assert_array_equal(eng.read_tensor(low), padded)


def test_all_to_all_transposes_rows_across_replicas():
    replicas = 4
    g = sp.Graph(TARGET, replication_factor=replicas)
    x = g.add_variable(sp.int32, (replicas, 3), "x")
    sp.ops.map_linearly(g, x)
    prog = P.Sequence()
    y = C.all_to_all(g, x, prog)
    pairs = g.add_variable(sp.int32, (2, 3), "pairs")
    sp.ops.map_linearly(g, pairs)
    z = C.all_to_all(g, pairs, prog, group=CommGroup(CommGroupType.ORTHOGONAL, 2))
    values = np.arange(replicas * replicas * 3, dtype=np.int32).reshape(replicas, replicas, 3)
    eng = sp.Engine(g, [prog])
    eng.write_tensor(x, values)
    eng.write_tensor(pairs, values[:, :2])
    eng.run(0)
    np.testing.assert_array_equal(eng.read_tensor(y), values.transpose(1, 0, 2))  # [A,B],[C,D] -> [A,C],[B,D]
    got = eng.read_tensor(z)
    for grp in members(CommGroupType.ORTHOGONAL, 2, replicas):
        for rank, r in enumerate(grp):
            np.testing.assert_array_equal(got[r], np.stack([values[s, rank] for s in grp]))


def test_in_place_and_destination_variants_and_local():
    g = sp.Graph(TARGET, replication_factor=2)
    x = g.add_variable(sp.float32, (4,), "x")
    dst = g.add_variable(sp.float32, (4,), "dst")
    local = g.add_variable(sp.float32, (2,), "local")
    for t in (x, dst, local):
        sp.ops.map_linearly(g, t)
    prog = P.Sequence()
    C.all_reduce_to_destination(g, x, dst, prog, op=Op.MAX)
    C.reduce_scatter_to_destination(g, x, local, prog, op=Op.LOCAL)
    C.all_reduce_in_place(g, x, prog, op=Op.MEAN)
    values = data(sp.float32, (2, 4))
    eng = run(g, prog, x, values)
    np.testing.assert_array_equal(eng.read_tensor(dst), np.broadcast_to(values.max(0), (2, 4)))
    np.testing.assert_array_equal(eng.read_tensor(local), [values[0, :2], values[1, 2:]])
    np.testing.assert_array_equal(eng.read_tensor(x)[1], (values[1] + values[0]) / np.float32(2))


def test_ring_structure_does_not_grow_with_the_replicas():
    def nodes(replicas: int) -> int:
        g = sp.Graph(TARGET, replication_factor=replicas)
        x = g.add_variable(sp.float32, (64,), "x")
        sp.ops.map_linearly(g, x)
        prog = P.Sequence()
        C.all_reduce(g, x, prog, options={"method": Method.CLOCKWISE_RING})
        return sum(1 for _ in P.walk(prog))
    assert nodes(4) == nodes(8) == nodes(16)  # interleaved rings (flat ones skip the order look-up)


def test_cross_replica_step_priced_by_the_link_model_over_the_ring_routes():
    g = sp.Graph(TARGET, replication_factor=4)
    x = g.add_variable(sp.float32, (1000,), "x")
    y = g.add_variable(sp.float32, (1000,), "y")
    sp.ops.map_linearly(g, x)
    sp.ops.map_linearly(g, y)
    eng = sp.Engine(g, [P.Sequence([P.CrossReplicaCopy(x, y, {0: 1, 1: 2, 2: 3, 3: 0})])])
    (step,) = eng.executable.steps
    # Four replicas of one IPU: IPUs 0..3 of one machine, each sending 4000 B to the next at
    # once, a sync over the 4 IPUs (softipu.target.links, tested by hand in test_systems.py).
    cost = links.flows_cost(systems.ipu_fabric(4, chip=TARGET), [(0, 1), (1, 2), (2, 3), (3, 0)], 4000,
                            sync_ipus=4)
    assert (step.exchange_cycles, step.sync_cycles) == (cost.link_cycles + cost.latency_cycles,
                                                        cost.sync_cycles)
    assert step.sync_cycles == TARGET.global_sync_cycles(4) and step.inter_ipu_bytes == 4000
    assert step.exchange_cycles >= 4000 / TARGET.ipu_link_bytes_per_cycle / TARGET.ipu_links_per_ipu


@pytest.mark.parametrize("replicas,method", [(4, "clockwise_ring"), (8, "anticlockwise_ring"),
                                             (16, "clockwise_ring"), (8, "bidirectional_ring_pair")])
def test_functional_ring_costs_what_the_link_model_prices_for_the_whole_collective(replicas, method):
    g = sp.Graph(TARGET, replication_factor=replicas)
    x = g.add_variable(sp.float32, (replicas * 64,), "x")
    sp.ops.map_linearly(g, x)
    prog = P.Sequence()
    C.all_reduce(g, x, prog, options={"method": method})
    eng = sp.Engine(g, [prog], estimate_only=True)
    eng.run(0)
    steps = eng.executable.steps
    ring = sum(count * steps[i].cycles for i, count in enumerate(eng.log.step_counts)
               if steps[i].op == "CrossReplicaCopy")
    whole = links.collective_cost(systems.smallest_fabric(replicas, TARGET), "all_reduce", replicas * 64 * 4,
                                  replicas, method=method, compute=False)
    assert ring == whole.cycles and whole.num_steps == 2 * (replicas - 1)


@pytest.mark.parametrize("replicas", [2, 4, 8])
@pytest.mark.parametrize("numel", [16, 1024])
def test_built_all_reduce_costs_what_collective_cost_prices_and_adds_exactly(replicas, numel):
    # The input laid out as GCL wants it (every tile holds the same columns of every fragment).
    g = sp.Graph(TARGET, replication_factor=replicas)
    x = g.add_variable(sp.float32, (numel,), "x")
    C.map_by_columns(g, x.reshape(replicas, numel // replicas))
    prog = P.Sequence()
    y = C.all_reduce(g, x, prog)
    values = data(sp.float32, (replicas, numel), seed=replicas).round()  # small integers: exact sums
    eng = run(g, prog, x, values)
    np.testing.assert_array_equal(eng.read_tensor(y), np.broadcast_to(values.sum(0), (replicas, numel)))
    steps = eng.executable.steps
    built = sum(count * steps[i].cycles for i, count in enumerate(eng.log.step_counts))
    # The analytic price (AUTO: clockwise at 2 ranks, meet-in-middle above at these sizes): links
    # + one compute set a ring step + each phase's set-up (links.ring_phase_compute_cycles).
    # Margin 3%: the compiler prices each compute set's read of the step index as the exchange it
    # is (38 to 115 cycles here, by tile placement), the model as one exchange start (30).
    system = systems.smallest_fabric(replicas, TARGET)
    model = links.collective_cost(system, "all_reduce", numel * 4, replicas)
    assert model.method == ("clockwise_ring" if replicas == 2 else "meet_in_middle_ring")
    assert built == pytest.approx(model.cycles, rel=0.03)
    assert model.compute_cycles > 0


def test_auto_method_follows_poplibs_thresholds():
    def auto(nbytes, ranks, operation="reduce_scatter", k=1, system=systems.POD16):
        return C.auto_method(system, operation, nbytes, ranks, ipus_per_replica=k)
    assert auto(1 << 30, 2) is Method.CLOCKWISE_RING  # 2 ranks
    assert auto(1 << 30, 8, k=2, system=systems.M2000) is Method.CLOCKWISE_RING
    assert auto(1 << 30, 8, k=2) is Method.MEET_IN_MIDDLE_RING  # a POD16 is a torus
    assert auto(1_245_183, 4) is Method.MEET_IN_MIDDLE_RING
    assert auto(1_245_184, 4) is Method.BIDIRECTIONAL_RING_PAIR
    assert auto(4_980_735, 8) is Method.MEET_IN_MIDDLE_RING  # > 4 ranks
    assert auto(4_980_735, 8, "all_gather") is Method.BIDIRECTIONAL_RING_PAIR  # halved
    assert auto(1 << 30, 32) is Method.MEET_IN_MIDDLE_RING  # > 16 ranks


def test_bad_groups_shapes_and_operators_are_clear_errors():
    g = sp.Graph(TARGET, replication_factor=6)
    x = g.add_variable(sp.float32, (4,), "x")
    i = g.add_variable(sp.int32, (4,), "i")
    prog = P.Sequence()
    with pytest.raises(C.CollectiveError, match=r"group size 4 \(CONSECUTIVE\) does not divide .* 6; use one of"):
        C.all_reduce(g, x, prog, group=CommGroup(CommGroupType.CONSECUTIVE, 4))
    with pytest.raises(C.CollectiveError, match="test_collectives.py"):  # the user's line
        C.all_gather(g, x, prog, group=CommGroup(CommGroupType.ORTHOGONAL, 5))
    with pytest.raises(C.CollectiveError, match=r"destination dst is sp.float32 \(3,\); this collective gives sp.float32 \(4,\)"):
        C.all_reduce_to_destination(g, x, g.add_variable(sp.float32, (3,), "dst"), prog)
    with pytest.raises(C.CollectiveError, match="LOGICAL_AND does not apply to x of sp.float32"):
        C.all_reduce(g, x, prog, op=Op.LOGICAL_AND)
    with pytest.raises(C.CollectiveError, match="MEAN needs a float tensor"):
        C.all_reduce(g, i, prog, op=Op.MEAN)
    with pytest.raises(C.CollectiveError, match="unknown method 'spiral'"):
        C.all_reduce(g, x, prog, options={"method": "spiral"})
    with pytest.raises(C.CollectiveError, match="needs a leading dim of the group size 6"):
        C.all_to_all(g, x, prog)


@pytest.mark.parametrize("fault,match", [(("link", 2, 3), "link from replica 2 to replica 3 failed"),
                                         (("replica", 1), "process of replica 1 of 4 failed")])
def test_injected_fault_raises_naming_it_and_destinations_keep_their_values(fault, match):
    g = sp.Graph(TARGET, replication_factor=4)
    x = g.add_variable(sp.int32, (8,), "x")
    dst = g.add_variable(sp.int32, (8,), "dst")
    sp.ops.map_linearly(g, x)
    sp.ops.map_linearly(g, dst)
    prog = P.Sequence()
    C.all_reduce_to_destination(g, x, dst, prog, options={"injectFault": fault,
                                                          "method": Method.CLOCKWISE_RING})
    C.all_reduce_in_place(g, x, prog, options={"injectFault": fault})
    eng = sp.Engine(g, [prog])
    before = np.arange(32, dtype=np.int32).reshape(4, 8)
    eng.write_tensor(x, before)
    eng.write_tensor(dst, -before)
    with pytest.raises(LinkFailure, match=match + r".*nothing was written"):
        eng.run(0)
    np.testing.assert_array_equal(eng.read_tensor(dst), -before)
    np.testing.assert_array_equal(eng.read_tensor(x), before)


def test_executable_with_cross_replica_copies_saves_and_loads(tmp_path):
    from softipu.compiler.serialize import load_executable, save_executable
    g = sp.Graph(TARGET, replication_factor=4)
    x = g.add_variable(sp.int32, (6,), "x")
    sp.ops.map_linearly(g, x)
    prog = P.Sequence()
    y = C.all_reduce(g, x, prog, options={"method": Method.BIDIRECTIONAL_RING_PAIR})  # transfers side by side
    eng = sp.Engine(g, [prog])
    save_executable(eng.executable, tmp_path / "exe")
    exe, skeleton, _ = load_executable(tmp_path / "exe")
    loaded = sp.Engine.from_executable(exe, skeleton)
    values = np.arange(24, dtype=np.int32).reshape(4, 6)
    loaded.write_tensor(skeleton_tensor(skeleton, x), values)
    loaded.run(0)
    np.testing.assert_array_equal(loaded.read_tensor(skeleton_tensor(skeleton, y)), np.tile(values.sum(0), (4, 1)))


def skeleton_tensor(graph: sp.Graph, t: sp.Tensor) -> sp.Tensor:
    return sp.Tensor(graph, t.dtype, t.shape, t.offset, t.strides)
