"""Structurally identical work is checked and priced once, and priced exactly as on its own.

The oracle is the same compile with the structure keys switched off (every compute set and copy
priced by itself), plus hand counts of regions for the cases a key must tell apart. Also: a slab
layout written through strided pieces lands where numpy's own reshape puts it.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import softipu as sp
from softipu import program as P
from softipu.compiler import passes
from softipu.compiler.structure import StructureKeys
from softipu.graph.tensor import Slabs


class Add(sp.Vertex):
    a = sp.Input(sp.float32)
    b = sp.Input(sp.float32)
    out = sp.Output(sp.float32)

    @staticmethod
    def compute(a, b, out):
        out[...] = a + b

    @staticmethod
    def cycles(a, b, out):
        return 10 + 2 * a


def _layer(g: sp.Graph, name: str, x: sp.Tensor, prog: P.Sequence) -> sp.Tensor:
    """A 'layer': y = x + w, with w a new weight; vertices read across tiles (w on the other half)."""
    w = g.add_variable(sp.float32, (16,), name=f"{name}_w")
    y = g.add_variable(sp.float32, (16,), name=f"{name}_y")
    for t, tile in ((w, 2), (y, 0)):
        g.set_tile_mapping(t[:8], tile)
        g.set_tile_mapping(t[8:], tile + 1)
    cs = g.add_compute_set(name)
    for i in range(4):
        rows = slice(4 * i, 4 * i + 4)
        g.add_vertex(cs, Add, {"a": x[rows], "b": w[rows], "out": y[rows]}, tile=i % 4)
    prog.add(P.Execute(cs))
    z = g.add_variable(sp.float32, (16,), name=f"{name}_z")
    sp.ops.map_linearly(g, z)
    prog.add(P.Copy(y, z))
    return z


def _model(layers: int):
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    x = g.add_variable(sp.float32, (16,), name="x")
    sp.ops.map_linearly(g, x)
    prog = P.Sequence()
    for k in range(layers):
        x = _layer(g, f"layer{k}", x, prog)
    return g, prog


def _without_keys(monkeypatch):
    monkeypatch.setattr(StructureKeys, "layout", lambda self, compiled: None)
    monkeypatch.setattr(StructureKeys, "work", lambda self, compiled: None)
    monkeypatch.setattr(StructureKeys, "copy", lambda self, src, dst: None)


def _costs(executable):
    out = []
    for s in executable.steps:
        row = {}
        for f in dataclasses.fields(s):
            if f.name not in ("index", "name", "location"):
                v = getattr(s, f.name)
                row[f.name] = v.tolist() if isinstance(v, np.ndarray) else v
        out.append(row)
    return out


def test_repeated_layers_are_priced_once_and_exactly(monkeypatch):
    g, prog = _model(3)
    compiled = passes.compile_graph(g, [prog])
    keys = StructureKeys(g, compiled.mappings)
    layouts = [keys.layout(c) for c in compiled.compute_sets.values()]
    assert None not in layouts
    # layer 0 reads x (mapped linearly), later layers read the previous z (also linear): the
    # three layers' compute sets have one layout, their copies one copy key
    assert len(set(layouts)) == 1
    copies = {keys.copy(n.src, n.dst) for n in P.walk(prog) if isinstance(n, P.Copy)}
    assert len(copies) == 1 and None not in copies
    with monkeypatch.context() as m:
        _without_keys(m)
        alone = passes.compile_graph(g, [prog])
    assert _costs(compiled) == _costs(alone)
    # each compute set keeps its own exchange code: memory counts it per compute set, as alone
    for name, per_tile in alone.memory.categories.items():
        np.testing.assert_array_equal(compiled.memory.categories[name], per_tile)


def test_repeated_layers_share_liveness_exactly(monkeypatch):
    """Each layer writes only 12 of y's 16 elements (a partial write also reads y's old value)
    and reads x and w in full: the memory plan's liveness of every variable, reused from the
    first layer's by the layout key, equals what each compute set gives on its own."""
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    x = g.add_variable(sp.float32, (16,), name="x")
    pad = g.add_variable(sp.float32, (4,), name="pad")  # x touches no layer's w
    for t in (x, pad):
        sp.ops.map_linearly(g, t)
    prog = P.Sequence()
    for k in range(3):
        w = g.add_variable(sp.float32, (16,), name=f"w{k}")
        y = g.add_variable(sp.float32, (16,), name=f"y{k}")
        for t in (w, y):
            sp.ops.map_linearly(g, t)
        cs = g.add_compute_set(f"layer{k}")
        for i in range(3):
            rows = slice(4 * i, 4 * i + 4)
            g.add_vertex(cs, Add, {"a": x[rows], "b": w[rows], "out": y[rows]}, tile=i)
        prog.add(P.Execute(cs))
        prog.add(P.Copy(y, x))
    compiled = passes.compile_graph(g, [prog])
    keys = StructureKeys(g, compiled.mappings)
    assert len({keys.layout(c) for c in compiled.compute_sets.values()}) == 1
    with monkeypatch.context() as m:
        _without_keys(m)
        alone = passes.compile_graph(g, [prog])
    mine, want = compiled.memory, alone.memory
    for name in ("always_live", "var_first", "var_last", "liveness_bytes"):
        np.testing.assert_array_equal(getattr(mine, name), getattr(want, name), err_msg=name)
    ys = [v.id for v in g.variables if v.name.startswith("y")]
    # y_k is written in part (so read first: always live), as the keyless plan says
    assert want.always_live[ys].all()


def _reads_two(g: sp.Graph, a: sp.Tensor, b: sp.Tensor, name: str) -> sp.ComputeSet:
    out = g.add_variable(sp.float32, (4,), name=f"{name}_out")
    g.set_tile_mapping(out, 0)
    cs = g.add_compute_set(name)
    g.add_vertex(cs, Add, {"a": a, "b": b, "out": out}, tile=0)
    return cs


def test_touching_variables_are_not_confused_with_apart_ones(monkeypatch):
    """Tile 0 reads a and b from tile 1. Where b starts at a's end the union of what tile 0
    receives is one region; with a gap between them, two (more exchange set-up): equal relative
    layouts of each variable, but the keys must differ and each compute set be priced as alone."""
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    names = ("a", "b", "gap", "c", "gap2", "d")
    v = {n: g.add_variable(sp.float32, (4,), name=n) for n in names}
    for t in v.values():
        g.set_tile_mapping(t, 1)
    prog = P.Sequence([P.Execute(_reads_two(g, v["a"], v["b"], "touching")),
                       P.Execute(_reads_two(g, v["c"], v["d"], "apart"))])
    compiled = passes.compile_graph(g, [prog])
    keys = StructureKeys(g, compiled.mappings)
    touching, apart = (keys.layout(c) for c in compiled.compute_sets.values())
    assert touching != apart
    with monkeypatch.context() as m:
        _without_keys(m)
        alone = passes.compile_graph(g, [prog])
    assert _costs(compiled) == _costs(alone)
    one, two = compiled.steps
    assert one.exchange_cycles < two.exchange_cycles  # one region received against two
    assert one.bytes_exchanged == two.bytes_exchanged == 32


def test_a_tensor_spanning_two_variables_gets_no_key():
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    a = g.add_variable(sp.float32, (4,), name="a")
    b = g.add_variable(sp.float32, (4,), name="b")
    for t in (a, b):
        g.set_tile_mapping(t, 1)
    both = sp.Tensor(g, sp.float32, (8,), a.offset, (1,))  # a and b, adjacent
    out = g.add_variable(sp.float32, (8,), name="out")
    g.set_tile_mapping(out, 0)
    cs = g.add_compute_set("span")
    g.add_vertex(cs, Add, {"a": both, "b": both, "out": out}, tile=0)
    compiled = passes.compile_graph(g, [P.Execute(cs)])
    keys = StructureKeys(g, compiled.mappings)
    assert keys.layout(next(iter(compiled.compute_sets.values()))) is None
    assert keys.copy(both, out) is None
    assert compiled.steps[0].bytes_exchanged == 32


def test_a_variable_mapped_to_other_tiles_is_priced_apart():
    """Two layers alike but for the tile one weight lives on: different layout keys, and the
    second layer's step says where its data went."""
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    steps = []
    for k, tile in enumerate((1, 2)):
        a = g.add_variable(sp.float32, (4,), name=f"a{k}")
        g.set_tile_mapping(a, tile)
        b = g.add_variable(sp.float32, (4,), name=f"b{k}")
        g.set_tile_mapping(b, 0)
        steps.append(P.Execute(_reads_two(g, a, b, f"layer{k}")))
    compiled = passes.compile_graph(g, [P.Sequence(steps)])
    keys = StructureKeys(g, compiled.mappings)
    first, second = (keys.layout(c) for c in compiled.compute_sets.values())
    assert first != second
    assert [s.recv_tiles.tolist() for s in compiled.steps] == [[0], [0]]
    assert keys.work(compiled.compute_sets[0]) == keys.work(compiled.compute_sets[1])


@pytest.mark.parametrize("replicas", [1, 2])
@pytest.mark.parametrize("then", [(0, 1, 2), (2, 0, 1)])
def test_a_slab_layout_is_written_where_numpy_puts_it(replicas, then):
    """(2, 4, 3, 5) permuted (0, 2, 1, 3), reshaped to (2, 3, 20) and permuted by ``then`` is a
    slab layout (no address array); values written to it must land in x where numpy's own
    transpose/reshape of an address array says."""
    g = sp.Graph(sp.targets.ipu_model(tiles=4), replication_factor=replicas)
    pad = g.add_variable(sp.float32, (3,), name="pad")
    x = g.add_variable(sp.float32, (2, 4, 3, 5), name="x")
    g.set_tile_mapping(pad, 3)
    sp.ops.map_linearly(g, x)
    view = x.transpose(0, 2, 1, 3).reshape(2, 3, 20).transpose(*then)
    assert view.slabs is not None
    addr = np.arange(120).reshape(2, 4, 3, 5).transpose(0, 2, 1, 3).reshape(2, 3, 20).transpose(*then)
    eng = sp.Engine(g, [P.Sequence()])
    values = np.random.default_rng(0).standard_normal((replicas, *view.shape)).astype(np.float32)
    eng.write_tensor(view, values if replicas > 1 else values[0])
    got = eng.read_tensor(x).reshape(replicas, 120)
    want = np.zeros((replicas, 120), np.float32)
    want[:, addr] = values
    np.testing.assert_array_equal(got, want)
    assert eng.read_tensor(view).reshape(values.shape).tolist() == values.tolist()


@pytest.mark.parametrize("replicas", [1, 2])
def test_two_permuted_slab_pieces_are_written_to_their_addresses(replicas):
    """Pieces [[0, 1, 4, 5], [2, 3, 6, 7]] (strided block) and [[8, 10], [9, 11]] joined along
    axis 1, then transposed: element (i, j) goes to address ADDR[j][i], worked out by hand."""
    addr = np.array([[0, 1, 4, 5, 8, 10], [2, 3, 6, 7, 9, 11]]).T
    g = sp.Graph(sp.targets.ipu_model(tiles=4), replication_factor=replicas)
    x = g.add_variable(sp.float32, (12,), name="x")
    sp.ops.map_linearly(g, x)
    slabs = Slabs(((0, (2, 2, 2), (2, 4, 1), (2, 4)), (8, (2, 2), (1, 2), (2, 2))), axis=1, perm=(1, 0))
    view = sp.Tensor(g, sp.float32, (6, 2), 0, (), None, slabs)
    eng = sp.Engine(g, [P.Sequence()])
    values = np.arange(replicas * 12, dtype=np.float32).reshape(replicas, 6, 2) + 100
    eng.write_tensor(view, values if replicas > 1 else values[0])
    got = eng.read_tensor(x).reshape(replicas, 12)
    want = np.zeros((replicas, 12), np.float32)
    want[:, addr] = values
    np.testing.assert_array_equal(got, want)


def test_gathers_across_variables_are_keyed_and_priced_exactly(monkeypatch):
    """Each layer's vertex j reads element j of each of four partials variables (an indexed
    field across them, as a reduction's second stage does): the layers share one layout key and
    cost what each costs alone; a layer gathering in another order gets another key."""
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    prog = P.Sequence()
    for k, order in enumerate(((0, 1, 2, 3), (0, 1, 2, 3), (1, 0, 2, 3))):
        parts = [g.add_variable(sp.float32, (4,), name=f"p{k}_{i}") for i in range(4)]
        for i, p in enumerate(parts):
            g.set_tile_mapping(p, i)
        other = g.add_variable(sp.float32, (4, 4), name=f"other{k}")
        out = g.add_variable(sp.float32, (4, 4), name=f"out{k}")
        for t in (other, out):
            g.set_tile_mapping(t, 0)
        index = np.array([[parts[i].offset + j for i in order] for j in range(4)], np.int64)
        gathered = sp.Tensor(g, sp.float32, (4, 4), 0, (), index)
        cs = g.add_compute_set(f"layer{k}")
        for j in range(4):
            g.add_vertex(cs, Add, {"a": gathered[j], "b": other[j], "out": out[j]}, tile=0)
        prog.add(P.Execute(cs))
    compiled = passes.compile_graph(g, [prog])
    keys = StructureKeys(g, compiled.mappings)
    layouts = [keys.layout(c) for c in compiled.compute_sets.values()]
    assert None not in layouts
    assert layouts[0] == layouts[1] != layouts[2]
    with monkeypatch.context() as m:
        _without_keys(m)
        alone = passes.compile_graph(g, [prog])
    assert _costs(compiled) == _costs(alone)
    # tile 0 receives partials 1..3 (tiles 1..3) in full: 3 x 4 elements of 4 bytes
    assert compiled.steps[0].bytes_exchanged == 3 * 4 * 4
