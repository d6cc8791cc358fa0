"""Elementwise vertex groups joined by the fast engine (engine/joins.py, ``join_same_length``): a
bias add over a channels-innermost tensor whose channels the tiles split into groups (ResNet-50's
convolution outputs: 256 channels as 86 + 85 + 85, every group a ``(pixels, width)`` view with the
row stride of all channels) runs as one group over whole rows, with numpy's values; pieces whose
joined fields differ in length (a vertex covering two pixels of a bias row) stay apart."""

from __future__ import annotations

import dataclasses

import numpy as np

import softipu as sp
from softipu import program as P
from softipu.codelets.elementwise import Operand, map_codelet
from softipu.codelets.elementwise.expr import typecheck
from softipu.engine.fast import _runners
from softipu.engine.joins import join_groups
from softipu.graph.tensor import Tensor
from softipu.ops.elementwise import E

PIXELS, WIDTHS = 6, (5, 4, 4)  # channel groups of a 13-channel row
C = sum(WIDTHS)


def _engine_and_group():
    """An engine holding ``x``, ``bias`` and ``y`` (row-major ``(PIXELS, C)``) and one real vertex
    group of the bias-add codelet, to take pieces of."""
    g = sp.Graph(sp.targets.ipu_model(tiles=1))
    x = g.add_variable(sp.float32, (PIXELS, C), name="x")
    y = g.add_variable(sp.float32, (PIXELS, C), name="y")
    bias = g.add_variable(sp.float32, (C,), name="bias")
    for t in (x, y, bias):
        g.set_tile_mapping(t, 0)
    codelet = map_codelet(typecheck(E.add(E.input(0), E.input(1)), (sp.float32, sp.float32)),
                          (sp.float32, sp.float32), (Operand.FULL, Operand.ROW), worker=True)
    cs = g.add_compute_set("bias_add")
    for p in range(PIXELS):
        g.add_vertex(cs, codelet, {"in0": x[p], "in1": bias, "out": y[p]})
    eng = sp.Engine(g, [P.Execute(cs)])
    (group,) = [grp for c in eng.executable.compute_sets.values() for grp in c.groups]
    return eng, group, x, y, bias


def _pieces(group, x: Tensor, y: Tensor, bias: Tensor, rows: int = 1) -> tuple:
    """The group cut into channel groups: piece ``k`` is ``(PIXELS / rows, rows * WIDTHS[k])`` views, its
    bias row stride 0 (``rows`` > 1: only the fields' lengths matter, for the join's refusal)."""
    out, lo = [], 0
    for w in WIDTHS:
        def view(t: Tensor, n: int, stride: int, lo: int = lo) -> Tensor:
            return Tensor(t.graph, t.dtype, (PIXELS // rows, n), t.offset + lo, (stride, 1))

        fields = {"in0": view(x, rows * w, rows * C), "in1": view(bias, w, 0), "out": view(y, rows * w, rows * C)}
        n = PIXELS // rows
        out.append(dataclasses.replace(group, fields=fields, tiles=group.tiles[:n],
                                       vertex_indices=group.vertex_indices[:n], locations=group.locations[:1]))
        lo += w
    return tuple(out)


def test_channel_pieces_join_into_whole_rows_and_equal_numpy():
    eng, group, x, y, bias = _engine_and_group()
    pieces = _pieces(group, x, y, bias)
    (joined,) = join_groups(pieces)
    assert joined.fields["in0"].shape == (PIXELS, C) and joined.fields["in1"].strides == (0, 1)
    for name in ("in0", "in1", "out"):
        want = np.concatenate([p.fields[name].addresses() for p in pieces], axis=1)
        np.testing.assert_array_equal(joined.fields[name].addresses(), want)
    rng = np.random.default_rng(0)
    xv, bv = rng.standard_normal((PIXELS, C), np.float32), rng.standard_normal(C, np.float32)
    eng.write_tensor(x, xv)
    eng.write_tensor(bias, bv)
    (runner,) = _runners(pieces, eng.storage, "bias_add")  # one runner: the joined group
    for job in runner.jobs(eng.storage):
        job()
    np.testing.assert_array_equal(eng.read_tensor(y), xv + bv)


def test_pieces_whose_fields_differ_in_length_stay_apart():
    """Two pixels a vertex: ``in0`` and ``out`` rows are twice the bias row, so a joined row would
    no longer be ``pixels x channels``; every piece stays its own group."""
    _, group, x, y, bias = _engine_and_group()
    assert len(join_groups(_pieces(group, x, y, bias, rows=2))) == len(WIDTHS)


def test_a_bias_add_on_a_channels_innermost_conv_output_equals_numpy_on_both_engines():
    """End to end through ``ops``: values as numpy on the fast engine (joined where the compiler
    split the channels) and the reference."""
    from softipu.ops.elementwise import map

    for reference in (False, True):
        g = sp.Graph(sp.targets.ipu_model(tiles=4))
        var = g.add_variable(sp.float32, (2, 5, 3, 12), name="x")
        sp.ops.map_linearly(g, var)
        xt = var.transpose(0, 3, 1, 2)
        b = g.add_variable(sp.float32, (12, 1, 1), name="bias")
        sp.ops.map_linearly(g, b)
        prog = P.Sequence()
        out = map(g, E.add(E.input(0), E.input(1)), [xt, b], prog)
        eng = sp.Engine(g, [prog], {"engine.reference": reference, "debug.poisonUnwritten": True})
        rng = np.random.default_rng(1)
        xv, bv = rng.standard_normal(xt.shape, np.float32), rng.standard_normal(b.shape, np.float32)
        eng.write_tensor(xt, xv)
        eng.write_tensor(b, bv)
        for _ in range(2):
            eng.run(0)
            np.testing.assert_array_equal(eng.read_tensor(out), xv + bv)
