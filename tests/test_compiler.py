"""The compiler's passes, run with ``compile_graph`` and never executed.

Checked: every verifier lists what is wrong and names it; write/read conflicts inside a compute
set; how vertices added one at a time are batched into groups over strided or indexed views; that
a failed compile leaves the graph usable and that programs are frozen at compile time.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

import softipu as sp
from softipu import program as P
from softipu.compiler import compile_graph

HERE = os.path.basename(__file__)


def line() -> int:
    """The line number of the caller's current line."""
    return sys._getframe(1).f_lineno


class Move(sp.Vertex):
    src = sp.Input(sp.float32)
    dst = sp.Output(sp.float32)

    @staticmethod
    def compute(src, dst):
        dst[...] = src


class MoveInt(sp.Vertex):
    src = sp.Input(sp.int32)
    dst = sp.Output(sp.int32)

    @staticmethod
    def compute(src, dst):
        dst[...] = src


class Accumulate(sp.Vertex):
    acc = sp.InOut(sp.float32)
    inc = sp.Input(sp.float32)

    @staticmethod
    def compute(acc, inc):
        acc += inc


class Scale(sp.Vertex):
    src = sp.Input(sp.float32)
    dst = sp.Output(sp.float32)
    factor = sp.Param(sp.float32)

    @staticmethod
    def compute(src, dst, factor):
        dst[...] = src * factor


def mapped(g: sp.Graph, dtype, shape, name: str) -> sp.Tensor:
    t = g.add_variable(dtype, shape, name=name)
    sp.ops.map_linearly(g, t)
    return t


def setup(tiles: int = 4, n: int = 16):
    """A graph with a padding variable (so offsets are not 0), inputs x and outputs y, z."""
    g = sp.Graph(sp.targets.ipu_model(tiles=tiles))
    mapped(g, sp.float32, (3,), "pad")
    return g, mapped(g, sp.float32, (n,), "x"), mapped(g, sp.float32, (n,), "y"), \
        mapped(g, sp.float32, (n,), "z")


def run_cs(g: sp.Graph, cs: sp.ComputeSet):
    return compile_graph(g, P.Sequence(P.Execute(cs)))


# --- verify_mapping -----------------------------------------------------------------------------


def test_every_unmapped_variable_is_listed():
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    alpha = g.add_variable(sp.float32, (2, 3), name="alpha")
    alpha_line = line() - 1
    beta = g.add_variable(sp.int32, (4,), name="beta")
    gamma = g.add_variable(sp.float32, (5,), name="gamma")
    g.set_tile_mapping(alpha[0, 1:], 1)
    g.set_tile_mapping(gamma, 2)
    with pytest.raises(sp.CompileError) as info:
        compile_graph(g, P.Sequence())
    message = str(info.value)
    assert "2 problem(s)" in message
    assert "'alpha' (2, 3)" in message and "4 of 6 elements" in message
    assert "first: flat element 0" in message
    assert "'beta' (4,)" in message and "4 of 4 elements" in message
    assert "gamma" not in message
    assert f"{HERE}:{alpha_line}" in message
    assert beta.numel == 4


def test_long_problem_lists_are_cut_with_a_count():
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    for k in range(25):
        g.add_variable(sp.float32, (2,), name=f"v{k}")
    with pytest.raises(sp.CompileError) as info:
        compile_graph(g, P.Sequence())
    message = str(info.value)
    assert "25 problem(s)" in message and "... and 5 more" in message
    assert "'v19'" in message and "'v20'" not in message


def test_double_mapping_is_a_compile_error_too():
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    x = g.add_variable(sp.float32, (4,), name="x")
    g.set_tile_mapping(x, 0)
    g.set_tile_mapping(x[1], 3)
    with pytest.raises(sp.CompileError, match="element 1 of variable 'x' is mapped to two tiles"):
        compile_graph(g, P.Sequence())


# --- verify_programs ----------------------------------------------------------------------------


def test_copy_problems_are_all_listed():
    g, x, y, _ = setup()
    ints = mapped(g, sp.int32, (16,), "ints")
    short = mapped(g, sp.float32, (5,), "short")
    h2d = g.add_host_to_device_fifo("h2d", sp.float32, 16)
    d2h = g.add_device_to_host_fifo("d2h", sp.float32, 16)
    program = P.Sequence(
        P.Copy(x, short),  # shape
        P.Copy(x, ints),  # dtype
        P.Copy(x[:1], y[:1].broadcast((1,))),  # fine: a 1-element broadcast repeats nothing
        P.Copy(x[:4], y[:1].broadcast((4,))),  # destination repeats elements
        P.Copy(d2h, x),  # a device-to-host stream as a source
        P.Copy(x, h2d),  # a host-to-device stream as a destination
        P.Copy(h2d, ints),  # dtype of a stream
    )
    with pytest.raises(sp.CompileError) as info:
        compile_graph(g, program)
    message = str(info.value)
    assert "6 problem(s)" in message
    assert "tensor x has shape (16,) but tensor short has (5,)" in message
    assert "tensor x is sp.float32 but tensor ints is sp.int32" in message
    assert "repeats elements" in message
    assert "stream 'd2h' is device-to-host" in message
    assert "stream 'h2d' is host-to-device" in message
    assert "stream 'h2d' is sp.float32 but tensor ints is sp.int32" in message


def test_copy_ends_from_another_graph():
    g, x, _, _ = setup()
    other = sp.Graph(sp.targets.ipu_model(tiles=4))
    foreign = mapped(other, sp.float32, (16,), "foreign")
    stream = other.add_host_to_device_fifo("elsewhere", sp.float32, 16)
    with pytest.raises(sp.CompileError) as info:
        compile_graph(g, P.Sequence(P.Copy(foreign, x), P.Copy(stream, x)))
    message = str(info.value)
    assert "tensor foreign belongs to another graph" in message
    assert "stream 'elsewhere' is not a stream of this graph" in message


def test_copy_from_a_stream_into_a_tensor_of_as_many_elements_compiles():
    # A stream is a flat FIFO of num_elements: like Poplar, only the element counts must match.
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    images = mapped(g, sp.float32, (2, 3, 4), "images")
    h2d = g.add_host_to_device_fifo("images_in", sp.float32, 24)
    d2h = g.add_device_to_host_fifo("images_out", sp.float32, 24)
    compile_graph(g, P.Sequence(P.Copy(h2d, images), P.Copy(images, d2h)))
    with pytest.raises(sp.CompileError, match="images"):
        compile_graph(g, P.Copy(g.add_host_to_device_fifo("short", sp.float32, 23), images))


def test_program_errors_point_at_the_users_line():
    # Program nodes are dataclasses: their location must skip the generated __init__ ("<string>").
    g, x, _, _ = setup()
    short = mapped(g, sp.float32, (5,), "short")
    copy = P.Copy(x, short)
    copy_line = line() - 1
    assert str(copy.location) == f"{copy.location.filename}:{copy_line}"
    assert copy.location.filename.endswith(HERE)
    with pytest.raises(sp.CompileError, match=f"{HERE}:{copy_line}"):
        compile_graph(g, P.Sequence(copy))


def test_execute_of_a_compute_set_of_another_graph():
    g, _, _, _ = setup()
    foreign = sp.Graph(sp.targets.ipu_model(tiles=4)).add_compute_set("foreign_step")
    with pytest.raises(sp.CompileError, match="foreign_step.*not a compute set of this graph"):
        compile_graph(g, P.Sequence(P.Execute(foreign)))


def test_control_flow_checks():
    g, x, _, _ = setup()
    other = mapped(sp.Graph(sp.targets.ipu_model(tiles=4)), sp.int32, (1,), "remote")
    flag = mapped(g, sp.int32, (1,), "flag")
    body = P.Sequence()
    with pytest.raises(sp.CompileError) as info:
        compile_graph(g, P.Sequence(
            P.If(other, body),
            P.RepeatWhileTrue(body, other, body),
            P.Switch(x[0], {0: body}),  # a float control
            P.Switch(flag, {1: body}),  # fine
            P.WriteUndef(other),
            P.PrintTensor(other),
        ))
    message = str(info.value)
    assert "5 problem(s)" in message
    assert message.count("remote belongs to another graph") == 4
    assert "control x[view ()] must be an integer tensor" in message


def test_empty_program_list_is_refused():
    g, _, _, _ = setup()
    with pytest.raises(sp.ProgramError):
        compile_graph(g, [])


def _recursive_graph():
    g, _, _, _ = setup()
    body = P.Sequence()
    fn = g.add_function(body, name="loop_body")
    body.add(P.Repeat(2, P.Call(fn)))
    return g, fn


def test_a_function_calling_itself_is_refused():
    g, fn = _recursive_graph()
    with pytest.raises(sp.CompileError, match="recurse"):
        compile_graph(g, P.Call(fn))


def test_mutual_recursion_is_refused():
    g, _, _, _ = setup()
    f_body, h_body = P.Sequence(), P.Sequence()
    f = g.add_function(f_body, name="f")
    h = g.add_function(h_body, name="h")
    f_body.add(P.Call(h))
    flag = g.add_constant(sp.int32, (1,), 1, name="flag")
    g.set_tile_mapping(flag, 0)
    h_body.add(P.If(flag, P.Call(f)))
    with pytest.raises(sp.CompileError, match="recurse"):
        compile_graph(g, P.Sequence(P.Call(f)))


def test_recursion_error_names_the_function():
    # By the name the user gave it, not its id.
    g, fn = _recursive_graph()
    with pytest.raises(sp.CompileError, match="loop_body"):
        compile_graph(g, P.Call(fn))


def test_a_function_called_from_two_places_is_not_recursion():
    g, x, y, _ = setup()
    leaf = g.add_function(P.Sequence(P.Copy(x, y)), name="leaf")
    left = g.add_function(P.Sequence(P.Call(leaf)), name="left")
    right = g.add_function(P.Sequence(P.Call(leaf), P.Call(leaf)), name="right")
    exe = compile_graph(g, P.Sequence(P.Call(left), P.Call(right), P.Call(leaf)))
    assert set(exe.functions) == {leaf.id, left.id, right.id}


def test_call_of_a_function_of_another_graph():
    g, _, _, _ = setup()
    foreign = sp.Graph(sp.targets.ipu_model(tiles=4)).add_function(P.Sequence(), name="foreign_fn")
    with pytest.raises(sp.CompileError, match="foreign_fn"):
        compile_graph(g, P.Call(foreign))


# --- build_vertex_groups: unconnected fields ----------------------------------------------------


def test_vertices_with_unconnected_fields_are_listed():
    g, x, y, _ = setup()
    cs = g.add_compute_set("half_built")
    g.add_vertex(cs, Move, {"src": x[:4], "dst": y[:4]})
    g.add_vertex(cs, Scale, {"src": x[4:8]}, tile=2)
    scale_line = line() - 1
    g.add_vertex(cs, Move, {"dst": y[8:12]})
    with pytest.raises(sp.CompileError) as info:
        run_cs(g, cs)
    message = str(info.value)
    assert "2 problem(s)" in message
    assert "vertex 1 (Scale) in compute set 'half_built'" in message
    assert "['dst', 'factor'] are not connected" in message
    assert "vertex 2 (Move)" in message and "['src'] are not connected" in message
    assert f"{HERE}:{scale_line}" in message


# --- verify_compute_sets: write and read conflicts ----------------------------------------------


def test_two_vertices_writing_one_element():
    g, x, y, _ = setup()
    cs = g.add_compute_set("clash")
    g.add_vertex(cs, Move, {"src": x[0:4], "dst": y[0:4]}, tile=1)
    first = line() - 1
    g.add_vertex(cs, Move, {"src": x[4:8], "dst": y[3:7]}, tile=2)
    second = line() - 1
    with pytest.raises(sp.WriteConflictError) as info:
        run_cs(g, cs)
    message = str(info.value)
    assert "compute set 'clash'" in message
    assert "vertex 0 (Move, field 'dst', tile 1 (at " in message
    assert "vertex 1 (Move, field 'dst', tile 2 (at " in message
    assert f"{HERE}:{first}" in message and f"{HERE}:{second}" in message
    assert "both write element 3 of 'y'" in message
    assert isinstance(info.value, sp.SoftIPUError)


def test_a_vertex_reading_what_another_writes():
    g, x, y, z = setup()
    cs = g.add_compute_set("race")
    g.add_vertex(cs, Move, {"src": x[0:4], "dst": y[0:4]}, tile=0)
    g.add_vertex(cs, Move, {"src": y[2:6], "dst": z[0:4]}, tile=3)
    with pytest.raises(sp.WriteConflictError) as info:
        run_cs(g, cs)
    message = str(info.value)
    assert "vertex 1 (Move, field 'src', tile 3" in message
    assert "reads element 2 of 'y', which vertex 0 (Move, field 'dst', tile 0" in message


def test_in_place_work_goes_through_inout():
    g, x, y, z = setup()
    cs = g.add_compute_set("in_place")
    g.add_vertex(cs, Accumulate, {"acc": y[0:4], "inc": x[0:4]})
    g.add_vertex(cs, Accumulate, {"acc": y[4:8][::-1], "inc": x[0:4]})  # shared inputs are fine
    g.add_vertices(cs, Accumulate, {"acc": z.reshape(4, 4), "inc": x.reshape(4, 4)}, tiles=[0, 1, 2, 3])
    exe = run_cs(g, cs)
    assert exe.compute_sets[cs.id].num_vertices == 6


@pytest.mark.parametrize(
    ("src", "dst", "element"),
    [(slice(8, 12), slice(8, 12), 8), (slice(0, 8), slice(0, 4), 0), (slice(4, 8), slice(8, 3, -1), 4)],
    ids=["same", "reads-past-its-output", "reversed"],
)
def test_an_input_aliasing_its_own_output_is_refused(src, dst, element):
    # An Input is never written during its compute set, not even by its own vertex: the vertex
    # would see half-written data. In-place work uses one InOut field.
    g, _, y, _ = setup()
    cs = g.add_compute_set("alias")
    g.add_vertex(cs, Move, {"src": y[src], "dst": y[dst]}, tile=3)
    with pytest.raises(sp.WriteConflictError) as info:
        run_cs(g, cs)
    message = str(info.value)
    assert "vertex 0 (Move, field 'src', tile 3 (at " in message and HERE in message
    assert f"reads element {element} of 'y' through an Input that the same vertex writes" in message
    assert "field 'dst'" in message and "InOut" in message


def test_an_inout_overlapping_anothers_input_is_caught():
    g, x, y, _ = setup()
    cs = g.add_compute_set("cs")
    g.add_vertex(cs, Accumulate, {"acc": y[0:4], "inc": x[0:4]})
    g.add_vertex(cs, Move, {"src": y[3:7], "dst": x[8:12]})
    with pytest.raises(sp.WriteConflictError, match="vertex 1 .*reads element 3 of 'y'.*vertex 0 "):
        run_cs(g, cs)


def test_reversed_rows_are_checked_as_intervals():
    g, x, y, _ = setup()
    cs = g.add_compute_set("reversed")
    g.add_vertex(cs, Move, {"src": x[0:4], "dst": y[3::-1]})  # y[3], y[2], y[1], y[0]
    g.add_vertex(cs, Move, {"src": x[4:8], "dst": y[7:3:-1]})  # y[7] .. y[4]
    exe = run_cs(g, cs)
    dst = exe.compute_sets[cs.id].groups[0].fields["dst"]
    assert dst.is_strided and dst.strides[1] == -1
    g.add_vertex(cs, Move, {"src": x[8:12], "dst": y[10:6:-1]})  # y[10] .. y[7]
    with pytest.raises(sp.WriteConflictError, match="vertex 1 .*vertex 2 .*both write element 7 of 'y'"):
        run_cs(g, cs)


def test_strided_rows():
    g, x, y, _ = setup()
    cs = g.add_compute_set("strided")
    g.add_vertex(cs, Move, {"src": x[0:4], "dst": y[0:8:2]})  # even elements
    g.add_vertex(cs, Move, {"src": x[4:8], "dst": y[1:8:2]})  # odd elements: no overlap
    run_cs(g, cs)
    g.add_vertex(cs, Move, {"src": x[8:12], "dst": y[4:8]})
    with pytest.raises(sp.WriteConflictError, match="both write element 4 of 'y'"):
        run_cs(g, cs)


def test_indexed_rows():
    g, x, y, _ = setup()
    cs = g.add_compute_set("gathered")
    g.add_vertex(cs, Move, {"src": x[[0, 9, 2]], "dst": y[[0, 5, 3]]})
    g.add_vertex(cs, Move, {"src": x[[9, 9, 9]], "dst": y[[1, 2, 4]]})  # reads may repeat
    run_cs(g, cs)
    g.add_vertex(cs, Move, {"src": x[[1, 2, 3]], "dst": y[[7, 3, 6]]})
    with pytest.raises(sp.WriteConflictError, match="vertex 0 .*vertex 2 .*both write element 3 of 'y'"):
        run_cs(g, cs)
    cs2 = g.add_compute_set("gathered_read")
    g.add_vertex(cs2, Move, {"src": x[0:3], "dst": y[[0, 5, 3]]})
    g.add_vertex(cs2, Move, {"src": y[[8, 5, 9]], "dst": x[8:11]})
    with pytest.raises(sp.WriteConflictError, match="reads element 5 of 'y'"):
        run_cs(g, cs2)


def test_dtypes_have_separate_address_spaces():
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    f = mapped(g, sp.float32, (8,), "f")
    i = mapped(g, sp.int32, (8,), "i")
    assert f.offset == i.offset == 0  # the same address numbers, in different spaces
    cs = g.add_compute_set("cs")
    g.add_vertex(cs, Move, {"src": f[4:8], "dst": f[0:4]})
    g.add_vertex(cs, MoveInt, {"src": i[0:4], "dst": i[4:8]})
    run_cs(g, cs)


def test_vertices_in_different_compute_sets_do_not_conflict():
    g, x, y, _ = setup()
    first, second = g.add_compute_set("first"), g.add_compute_set("second")
    g.add_vertex(first, Move, {"src": x[0:4], "dst": y[0:4]})
    g.add_vertex(second, Move, {"src": y[0:4], "dst": x[0:4]})
    compile_graph(g, P.Sequence(P.Execute(first), P.Execute(second)))


def test_a_large_bulk_group_compiles_and_its_conflicts_are_found():
    # Its compile time (columnar: a few sorts, no per-vertex Python) is compile_bulk_group in
    # bench/bench_host_times.py.
    vertices = 100_000
    g = sp.Graph(sp.targets.ipu_model(tiles=16, bytes_per_tile=1 << 20))  # room for 6,250 per tile
    x = mapped(g, sp.float32, (vertices, 2), "x")
    y = mapped(g, sp.float32, (vertices, 2), "y")
    tiles = np.arange(vertices) % 16
    cs = g.add_compute_set("bulk")
    g.add_vertices(cs, Move, {"src": x, "dst": y}, tiles=tiles)
    exe = run_cs(g, cs)
    assert exe.compute_sets[cs.id].num_vertices == vertices
    # The last vertex's second output element is element 5 of y, which vertex 2 ([4, 5]) writes.
    rows = np.arange(2 * vertices).reshape(vertices, 2)
    rows[-1, 1] = 5
    clash = g.add_compute_set("bulk_clash")
    g.add_vertices(clash, Move, {"src": x, "dst": y.flatten()[rows]}, tiles=tiles)
    with pytest.raises(sp.WriteConflictError) as info:
        run_cs(g, clash)
    message = str(info.value)
    assert "vertex 2 (Move, field 'dst', tile 2" in message
    assert f"vertex {vertices - 1} (Move, field 'dst', tile {(vertices - 1) % 16}" in message
    assert "both write element 5 of 'y'" in message


def test_bulk_vertex_indices_match_what_add_vertices_returned():
    # Bulk vertices keep the indices add_vertices returned even when single vertices come after
    # them; otherwise vertex 4 would exist twice and conflict messages would name the wrong one.
    g, x, y, _ = setup()
    cs = g.add_compute_set("mixed")
    g.add_vertex(cs, Move, {"src": x[0:2], "dst": y[0:2]})
    bulk = g.add_vertices(cs, Move, {"src": x[2:8].reshape(3, 2), "dst": y[2:8].reshape(3, 2)},
                          tiles=[1, 2, 3])
    last = g.add_vertex(cs, Move, {"src": x[8:12], "dst": y[8:12]})
    assert list(bulk) == [1, 2, 3] and last.index == 4
    exe = run_cs(g, cs)
    indices = np.concatenate([grp.vertex_indices for grp in exe.compute_sets[cs.id].groups])
    assert sorted(indices.tolist()) == [0, 1, 2, 3, 4]
    bulk_group = next(grp for grp in exe.compute_sets[cs.id].groups if grp.tiles.tolist() == [1, 2, 3])
    assert bulk_group.vertex_indices.tolist() == [1, 2, 3]


# --- build_vertex_groups: batching --------------------------------------------------------------


def _rows_of(group, name):
    """Each vertex's field addresses, keyed by the vertex's index in its compute set."""
    addresses = group.fields[name].addresses()
    return {int(v): addresses[r].tolist() for r, v in enumerate(group.vertex_indices)}


@pytest.mark.parametrize("order", [list(range(8)), [5, 2, 7, 0, 3, 6, 1, 4]], ids=["in-order", "shuffled"])
def test_regular_vertices_become_one_strided_group(order):
    g, x, y, _ = setup()
    cs = g.add_compute_set("regular")
    expected_src, expected_dst, expected_tiles = {}, {}, {}
    for k in order:  # vertex k reads x[2k:2k+2] and writes y reversed: y[14-2k:16-2k]
        src, dst = x[2 * k:2 * k + 2], y[14 - 2 * k:16 - 2 * k]
        v = g.add_vertex(cs, Scale, {"src": src, "dst": dst, "factor": float(k)}, tile=k % 4)
        expected_src[v.index] = src.addresses().tolist()
        expected_dst[v.index] = dst.addresses().tolist()
        expected_tiles[v.index] = k % 4
    exe = run_cs(g, cs)
    (group,) = exe.compute_sets[cs.id].groups
    assert group.codelet is Scale and group.num_vertices == 8
    assert group.fields["src"].is_strided and group.fields["dst"].is_strided
    assert group.fields["src"].shape == (8, 2)
    assert _rows_of(group, "src") == expected_src
    assert _rows_of(group, "dst") == expected_dst
    tiles = {int(v): int(t) for v, t in zip(group.vertex_indices, group.tiles, strict=True)}
    assert tiles == expected_tiles
    factors = {int(v): float(f) for v, f in zip(group.vertex_indices, group.fields["factor"], strict=True)}
    assert factors == {index: float(order[index]) for index in range(8)}


def test_irregular_spacing_falls_back_to_indexed():
    g, x, y, _ = setup()
    cs = g.add_compute_set("irregular")
    starts = [0, 2, 6, 8]
    expected = {}
    for s in starts:
        v = g.add_vertex(cs, Move, {"src": x[s:s + 2], "dst": y[s:s + 2]})
        expected[v.index] = y[s:s + 2].addresses().tolist()
    (group,) = run_cs(g, cs).compute_sets[cs.id].groups
    assert not group.fields["dst"].is_strided
    assert _rows_of(group, "dst") == expected


def test_rows_with_a_common_inner_stride_stay_strided():
    g, x, y, _ = setup()
    cs = g.add_compute_set("columns")
    grid = y.reshape(4, 4)
    expected = {}
    for c in range(4):  # vertex c writes column c of the 4x4 grid
        v = g.add_vertex(cs, Move, {"src": x[4 * c:4 * c + 4], "dst": grid[:, c]})
        expected[v.index] = grid[:, c].addresses().tolist()
    (group,) = run_cs(g, cs).compute_sets[cs.id].groups
    assert group.fields["dst"].is_strided and group.fields["dst"].strides == (1, 4)
    assert _rows_of(group, "dst") == expected


def test_different_field_lengths_and_codelets_make_different_groups():
    g, x, y, _ = setup()
    cs = g.add_compute_set("mixed")
    g.add_vertex(cs, Move, {"src": x[0:2], "dst": y[0:2]})
    g.add_vertex(cs, Move, {"src": x[2:5], "dst": y[2:5]})
    g.add_vertex(cs, Move, {"src": x[5:7], "dst": y[5:7]})
    g.add_vertex(cs, Scale, {"src": x[7:9], "dst": y[7:9], "factor": 1.0})
    groups = run_cs(g, cs).compute_sets[cs.id].groups
    shapes = sorted((grp.codelet.__name__, grp.fields["dst"].shape) for grp in groups)
    assert shapes == [("Move", (1, 3)), ("Move", (2, 2)), ("Scale", (1, 2))]


# --- Random vertex sets against set-based oracles -------------------------------------------


def _view(data, t: sp.Tensor, lo: int, hi: int, n: int, distinct: bool) -> sp.Tensor:
    """A random 1-D view of ``n`` elements of ``t[lo:hi]``: a slice, stepped, reversed or gathered."""
    kind = data.draw(st.sampled_from(["slice", "step2", "reversed", "gather"]), label="view")
    span = {"slice": n, "step2": 2 * n - 1, "reversed": n, "gather": n}[kind]
    start = data.draw(st.integers(lo, hi - span), label="start")
    if kind == "slice":
        return t[start:start + n]
    if kind == "step2":
        return t[start:start + 2 * n - 1:2]
    if kind == "reversed":
        return t[start:start + n][::-1]
    picks = st.integers(lo, hi - 1)
    chosen = data.draw(st.lists(picks, min_size=n, max_size=n, unique=distinct), label="gather")
    return t[chosen]


def _is_affine(rows: np.ndarray) -> bool:
    """Whether ``rows[r, c] == o + r * s0 + c * s1`` for some o, s0, s1: a strided 2-D view."""
    num, n = rows.shape
    s0 = rows[1, 0] - rows[0, 0] if num > 1 else 0
    s1 = rows[0, 1] - rows[0, 0] if n > 1 else 0
    r, c = np.indices(rows.shape)
    return bool(np.array_equal(rows, rows[0, 0] + r * s0 + c * s1))


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_random_vertex_sets_batch_into_groups_with_the_right_rows(data):
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    x, y = mapped(g, sp.float32, (64,), "x"), mapped(g, sp.float32, (64,), "y")
    cs = g.add_compute_set("random")
    count = data.draw(st.integers(1, 7), label="vertices")
    lengths = [data.draw(st.integers(1, 3), label="n") for _ in range(count)]
    # Vertex k writes only inside y[8k:8k+8], so no two vertices conflict.
    plans = [(_view(data, x, 0, 64, n, False), _view(data, y, 8 * k, 8 * k + 8, n, True))
             for k, n in enumerate(lengths)]
    expected = {}
    for k in data.draw(st.permutations(range(count)), label="order"):
        src, dst = plans[k]
        v = g.add_vertex(cs, Move, {"src": src, "dst": dst}, tile=k % 4)
        expected[v.index] = (src, dst, k % 4)
        note(f"vertex {v.index}: src {src.addresses().tolist()} dst {dst.addresses().tolist()}")
    groups = run_cs(g, cs).compute_sets[cs.id].groups
    assert len(groups) == len(set(lengths))  # one group per field length
    seen = []
    for group in groups:
        for name, which in (("src", 0), ("dst", 1)):
            field = group.fields[name]
            rows = field.addresses()
            for r, v in enumerate(group.vertex_indices.tolist()):
                np.testing.assert_array_equal(rows[r], expected[v][which].addresses())
            views = [expected[v][which] for v in group.vertex_indices.tolist()]
            regular = all(t.is_strided for t in views) and _is_affine(rows)
            assert field.is_strided == regular, f"{name}: strided exactly when regularly spaced"
        assert group.tiles.tolist() == [expected[v][2] for v in group.vertex_indices.tolist()]
        seen += group.vertex_indices.tolist()
    assert sorted(seen) == sorted(expected)


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_random_vertex_sets_conflict_exactly_when_sets_say_so(data):
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    spaces = {"x": mapped(g, sp.float32, (12,), "x"), "y": mapped(g, sp.float32, (12,), "y")}
    cs = g.add_compute_set("random")
    writes, reads = [], []  # per vertex: sets of (variable, element)
    for k in range(data.draw(st.integers(2, 4), label="vertices")):
        n = data.draw(st.integers(1, 3), label="n")
        name_w, name_r = (data.draw(st.sampled_from("xy")) for _ in range(2))
        out = _view(data, spaces[name_w], 0, 12, n, True)
        inp = _view(data, spaces[name_r], 0, 12, n, False)
        if data.draw(st.booleans(), label="InOut"):
            g.add_vertex(cs, Accumulate, {"acc": out, "inc": inp}, tile=k % 4)
        else:
            g.add_vertex(cs, Move, {"src": inp, "dst": out}, tile=k % 4)
        base_w, base_r = spaces[name_w].offset, spaces[name_r].offset
        writes.append({(name_w, int(a) - base_w) for a in out.addresses()})
        reads.append({(name_r, int(a) - base_r) for a in inp.addresses()})
        note(f"vertex {k}: writes {sorted(writes[-1])}, reads {sorted(reads[-1])}")
    written = set().union(*writes)
    shared = {e for i, w in enumerate(writes) for v in writes[i + 1:] for e in w & v}
    read_written = set().union(*reads) & written  # an Input may not see any write, even its own
    if not shared and not read_written:
        run_cs(g, cs)
        return
    with pytest.raises(sp.WriteConflictError) as info:
        run_cs(g, cs)
    message = str(info.value)
    named = {(var, k) for var in "xy" for k in range(12) if f"element {k} of '{var}'" in message}
    assert named & (shared | read_written), "the message names an element that really conflicts"


# --- The compile as a whole ---------------------------------------------------------------------


def test_executable_holds_what_the_programs_use():
    g, x, y, _ = setup()
    used, unused = g.add_compute_set("used"), g.add_compute_set("unused")
    g.add_vertex(used, Move, {"src": x[0:4], "dst": y[0:4]})
    g.add_vertex(unused, Move, {"src": x[0:4]})  # never run, so never checked
    exe = compile_graph(g, [P.Sequence(P.Execute(used)), P.Sequence()])
    assert set(exe.compute_sets) == {used.id}
    assert len(exe.programs) == 2
    assert [name for name, _ in exe.pass_seconds] == [name for name, _ in sp.compiler.PASSES]
    assert exe.space_sizes == {sp.float32: 3 + 16 * 3}
    assert exe.num_vertices == 1


def test_a_failed_compile_leaves_the_graph_usable():
    g, x, y, _ = setup()
    late = g.add_variable(sp.float32, (4,), name="late")
    cs = g.add_compute_set("cs")
    v = g.add_vertex(cs, Move, {"src": late})
    program = P.Sequence(P.Execute(cs))
    with pytest.raises(sp.CompileError, match="late"):
        compile_graph(g, program)
    g.set_tile_mapping(late, 1)
    with pytest.raises(sp.CompileError, match=r"\['dst'\] are not connected"):
        compile_graph(g, program)
    g.connect(v, "dst", y[0:4])
    exe = compile_graph(g, program)
    (group,) = exe.compute_sets[cs.id].groups
    assert group.fields["src"].addresses().tolist() == [late.addresses().tolist()]


def test_programs_are_frozen_at_compile():
    g, x, y, _ = setup()
    first, second = g.add_compute_set("first"), g.add_compute_set("second")
    g.add_vertex(first, Move, {"src": x[0:4], "dst": y[0:4]})
    g.add_vertex(second, Move, {"src": x[4:8], "dst": y[4:8]})
    body = P.Sequence(P.Execute(first))
    fn = g.add_function(P.Sequence(P.Copy(x, y)), name="fn")
    main = P.Sequence(body, P.Call(fn))
    exe = compile_graph(g, main)
    body.add(P.Execute(second))
    main.add(P.Execute(second))
    fn.program.add(P.Copy(y, x))
    (frozen,) = exe.programs
    assert frozen is not main and len(frozen.programs) == 2
    assert len(frozen.programs[0].programs) == 1
    assert len(exe.functions[fn.id].programs) == 1
    assert set(exe.compute_sets) == {first.id}


def test_a_space_wholly_mapped_is_found_from_two_sums() -> None:
    """verify_mapping's shortcut (passes._covers): sorted disjoint intervals inside [0, size) whose
    lengths add up to size map every address; a gap, or an interval past the end, is not."""
    from softipu.compiler.passes import _covers
    from softipu.graph.mapping import ResolvedMapping

    def m(*runs):
        s, e = (np.array(x, np.int64) for x in zip(*runs, strict=True)) if runs else (np.zeros(0, np.int64),) * 2
        return ResolvedMapping(s, e, np.zeros(s.size, np.int32))

    assert _covers(m((0, 4), (4, 10), (10, 12)), 12)
    assert not _covers(m((0, 4), (5, 12)), 12)  # address 4 unmapped
    assert not _covers(m((0, 4), (4, 10)), 12)  # 10, 11 unmapped
    assert not _covers(m((2, 8), (8, 14)), 12)  # 0, 1 unmapped (12 elements, past the end)
    assert _covers(m(), 0) and not _covers(m(), 3)
