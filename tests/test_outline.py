"""Outlining (engine option ``opt.enableOutlining``, ``softipu.compiler.outline``): the code of a
repeated layer is held once, and each call holds a copy of the weights it reads.

Figures are worked by hand from the target's [U] memory figures: 16 B of exchange code per region
(``exchange_code_bytes_per_region``), 8 B of vertex state per vector field
(``vertex_state_bytes_per_field``), variables on 8-byte boundaries.
"""

from __future__ import annotations

import numpy as np
import pytest

import softipu as sp
from softipu import program as P
from softipu.ops.matmul import create_matmul_input_rhs


class Mul(sp.Vertex):
    x = sp.Input(sp.float32)
    w = sp.Input(sp.float32)
    y = sp.Output(sp.float32)

    @staticmethod
    def compute(x, w, y):
        y[...] = x * w


def _layers(count: int, bias_tiles: list[int] | None = None):
    """``count`` identical layers ``y_l = x * w_l`` on 4 tiles: x lives on tile 0 (each other
    tile receives its two elements: one region), w_l and y_l two elements a tile. With
    ``bias_tiles``, layer l's weight sits whole on tile ``bias_tiles[l]`` instead (mapped
    differently per layer, as small parameters are)."""
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    x = g.add_variable(sp.float32, (8,), name="x")
    g.set_tile_mapping(x, 0)
    prog = P.Sequence()
    ws = []
    for layer in range(count):
        w = g.add_variable(sp.float32, (8,), name=f"w{layer}")
        y = g.add_variable(sp.float32, (8,), name=f"y{layer}")
        if bias_tiles is None:
            sp.ops.map_linearly(g, w)
        else:
            g.set_tile_mapping(w, bias_tiles[layer])
        sp.ops.map_linearly(g, y)
        cs = g.add_compute_set(f"layer{layer}")
        for t in range(4):
            g.add_vertex(cs, Mul, {"x": x[2 * t:2 * t + 2], "w": w[2 * t:2 * t + 2], "y": y[2 * t:2 * t + 2]},
                         tile=t)
        prog.add(P.Execute(cs))
        ws.append(w)
    return g, prog, x, ws


def _memory(graph, prog, outline: bool):
    eng = sp.Engine(graph, [prog], estimate_only=True, options={"opt.enableOutlining": outline})
    return eng.executable.memory.categories


def test_two_identical_layers_hold_their_code_once():
    g, prog, *_ = _layers(2)
    off, on = _memory(g, prog, False), _memory(g, prog, True)
    # Each layer: tile 0 sends x[2:8] (one region), tiles 1-3 receive one region each.
    np.testing.assert_array_equal(off["exchange_code"], [32, 32, 32, 32])
    np.testing.assert_array_equal(on["exchange_code"], [16, 16, 16, 16])
    # One Mul vertex a tile a layer: three vector fields, 8 B each.
    np.testing.assert_array_equal(off["vertex_state"], [48, 48, 48, 48])
    np.testing.assert_array_equal(on["vertex_state"], [24, 24, 24, 24])
    # Not always live: tiles 1-3 hold x's two received elements (8 B) during each layer; with
    # outlining each call also holds the copy of its always-live inputs (w_l: 8 B a tile; x: 32 B
    # on tile 0), one layer at a time.
    np.testing.assert_array_equal(off["not_always_live"], [0, 8, 8, 8])
    np.testing.assert_array_equal(on["not_always_live"], [40, 16, 16, 16])
    # Control code, 24 B a step on every tile: two Executes; outlined, the second is the
    # subgraph's own (held once) and each call adds a step copying its weight in: 2 - 1 + 2.
    np.testing.assert_array_equal(off["control_code"], [48] * 4)
    np.testing.assert_array_equal(on["control_code"], [72] * 4)
    # What is always live does not change.
    np.testing.assert_array_equal(off["always_live_variables"], on["always_live_variables"])


def test_layers_whose_weights_sit_on_different_tiles_are_one_subgraph():
    # The call copies each layer's weight into the subgraph's input: the subgraph's compute set
    # is the same whatever tile the caller's weight sits on.
    g, prog, *_ = _layers(3, bias_tiles=[1, 2, 3])
    off, on = _memory(g, prog, False), _memory(g, prog, True)
    assert int(on["vertex_state"].sum()) * 3 == int(off["vertex_state"].sum())
    assert int(on["exchange_code"].sum()) < int(off["exchange_code"].sum())


def test_a_single_layer_is_not_outlined():
    g, prog, *_ = _layers(1)
    off, on = _memory(g, prog, False), _memory(g, prog, True)
    for name in off:
        np.testing.assert_array_equal(off[name], on[name], err_msg=name)


def test_outlining_does_not_change_values_or_cycles():
    g, prog, x, ws = _layers(2)
    runs = []
    for outline in (False, True):
        eng = sp.Engine(g, [prog], options={"opt.enableOutlining": outline})
        eng.write_tensor(x, np.arange(8, dtype=np.float32))
        for k, w in enumerate(ws):
            eng.write_tensor(w, np.full(8, k + 2, np.float32))
        eng.run(0)
        runs.append(eng.log.cycles)
    assert runs[0] == runs[1]


def test_the_option_takes_a_bool():
    g, prog, *_ = _layers(1)
    with pytest.raises(sp.errors.OptionError, match="opt.enableOutlining"):
        sp.Engine(g, [prog], options={"opt.enableOutlining": 1})


def _linear_layers(count: int):
    """``count`` Linear+ReLU layers as the torch frontend lowers them: each weight made by
    create_matmul_input_rhs, each bias its own vector sitting on a different tile."""
    g = sp.Graph(sp.targets.ipu_model(tiles=8, bytes_per_tile=1024 * 1024))
    x = g.add_variable(sp.float32, (16, 32), name="x")
    sp.ops.map_linearly(g, x)
    prog = P.Sequence()
    for layer in range(count):
        w = create_matmul_input_rhs(g, sp.float32, (16, 32), (32, 32), name=f"w{layer}")
        b = g.add_variable(sp.float32, (32,), name=f"b{layer}")
        g.set_tile_mapping(b, layer % 8)
        x = sp.ops.relu(g, sp.ops.add(g, sp.ops.matmul(g, x, w, prog), b, prog), prog)
    return g, prog


def test_repeated_linear_layers_share_their_code():
    # The later layers' compute sets are the first's subgraph, whatever tile each bias sits on:
    # three layers, outlined, hold exactly one layer's vertex state and exchange code.
    totals = {}
    for layers in (1, 3):
        g, prog = _linear_layers(layers)
        for outline in (False, True):
            eng = sp.Engine(g, [prog], estimate_only=True, options={"opt.enableOutlining": outline})
            cats = eng.executable.memory.categories
            totals[layers, outline] = (int(cats["vertex_state"].sum()), int(cats["exchange_code"].sum()))
    for k in range(2):
        assert totals[3, False][k] > totals[1, False][k]
        assert totals[3, True][k] == totals[1, False][k] == totals[1, True][k]
