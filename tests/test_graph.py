"""The graph API: variables, constants, tile mappings, vertices, codelets, streams.

Errors must name the object and point at the user's line, which for these tests is a line of this
file: ``HERE`` is its basename as it appears in ``file:line`` locations.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

import softipu as sp
from softipu import program as P
from softipu.graph.vertex import Direction, Field

HERE = os.path.basename(__file__)


def line() -> int:
    """The line number of the caller's current line."""
    return sys._getframe(1).f_lineno


class Scale(sp.Vertex):
    input = sp.Input(sp.float32)
    output = sp.Output(sp.float32)
    factor = sp.Param(sp.float32)

    @staticmethod
    def compute(input, output, factor):
        output[...] = input * factor


class Gather(sp.Vertex):
    parts = sp.Input(sp.float32, sp.VECTOR_LIST)
    total = sp.Output(sp.float32, sp.SCALAR)

    @staticmethod
    def compute(parts, total):
        total[...] = sum(p.sum(axis=-1, keepdims=True) for p in parts)


def compiles(g: sp.Graph, cs: sp.ComputeSet) -> bool:
    sp.compiler.compile_graph(g, P.Sequence(P.Execute(cs)))
    return True


# --- Graph ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["GC200", None, 16])
def test_graph_needs_a_target(target):
    with pytest.raises(sp.SoftIPUError, match="Target"):
        sp.Graph(target)


@pytest.mark.parametrize("factor", [0, -1, 1.5, "2"])
def test_graph_replication_factor_must_be_positive_int(factor):
    with pytest.raises(sp.SoftIPUError, match="replication_factor"):
        sp.Graph(sp.targets.ipu_model(tiles=4), replication_factor=factor)


def test_graph_facts():
    g = sp.Graph(sp.targets.ipu_model(tiles=8), replication_factor=2)
    assert (g.num_tiles, g.replication_factor) == (8, 2)


# --- Variables and constants --------------------------------------------------------------------


def test_add_variable_shapes_and_dtypes(graph):
    a = graph.add_variable(sp.float32, 5, name="a")
    b = graph.add_variable("float16", [2, 3], name="b")
    c = graph.add_variable(np.int32, (), name="c")
    assert (a.shape, a.dtype) == ((5,), sp.float32)
    assert (b.shape, b.dtype) == ((2, 3), sp.float16)
    assert (c.shape, c.dtype, c.numel) == ((), sp.int32, 1)
    assert [a.name, b.name, c.name] == ["a", "b", "c"]
    assert a[1:].name.startswith("a[")  # a view still names its variable
    var = graph.variables[1]
    assert (var.name, var.shape, var.dtype, var.is_constant) == ("b", (2, 3), sp.float16, False)
    assert var.location.filename.endswith(HERE)


def test_repeated_names_get_a_suffix(graph):
    names = [graph.add_variable(sp.float32, (2,), name="w").name for _ in range(3)]
    assert names == ["w", "w.1", "w.2"]
    assert len(set(v.name for v in graph.variables)) == 3
    defaults = [graph.add_variable(sp.float32, (1,)).name for _ in range(2)]
    assert len(set(defaults)) == 2 and not set(defaults) & set(names)
    const = graph.add_constant(sp.float32, (1,), 0.0, name="w")
    assert const.name not in names


@pytest.mark.parametrize("shape", [(2, -1), -3, 2.5, (2, "3"), "ab", (None,)])
def test_bad_variable_shapes_raise_tensor_error(graph, shape):
    with pytest.raises(sp.TensorError, match="shape"):
        graph.add_variable(sp.float32, shape, name="bad")
    with pytest.raises(sp.TensorError, match="shape"):
        graph.add_constant(sp.float32, shape, 1.0, name="bad")


def test_unknown_dtype_raises_dtype_error(graph):
    with pytest.raises(sp.DTypeError, match="complex"):
        graph.add_variable("complex128", (2,))


@pytest.mark.parametrize(
    ("dtype", "shape", "values"),
    [(sp.int32, (2, 3), [1, 2, 3]), (sp.float32, (2, 2), 7.5), (sp.int32, (3,), [2.7, -1.5, 9.0]),
     (sp.float16, (3, 2, 4), [[1], [2]]), (sp.bool_, (2,), [0, 3])],
)
def test_constants_broadcast_and_cast_their_values(graph, dtype, shape, values):
    t = graph.add_constant(dtype, shape, values, name="k")
    var = graph.variables[-1]
    expected = np.broadcast_to(np.asarray(values).astype(dtype.numpy), shape)
    assert var.is_constant and t.shape == shape and t.dtype == dtype
    assert var.initial_value.dtype == dtype.numpy
    np.testing.assert_array_equal(var.initial_value, expected)


def test_constant_values_that_do_not_broadcast_raise(graph):
    with pytest.raises(sp.TensorError, match="'k'.*broadcast"):
        graph.add_constant(sp.float32, (2, 3), [1.0, 2.0], name="k")


# --- Tile mapping -------------------------------------------------------------------------------


def test_map_slices_to_tiles(graph):
    x = graph.add_variable(sp.float32, (4, 6), name="x")
    graph.set_tile_mapping(x[0:2], 0)
    graph.set_tile_mapping(x[2:4], 3)
    np.testing.assert_array_equal(graph.tile_of(x), np.repeat([0, 3], 12).reshape(4, 6))
    assert graph.get_tile_mapping(x) == [[(0, 12)], [], [], [(12, 24)]]
    # Intervals are in the view's own flattened order.
    assert graph.get_tile_mapping(x[1:3, 2:4]) == [[(0, 2)], [], [], [(2, 4)]]


def test_map_strided_views(graph):
    x = graph.add_variable(sp.float32, (2, 4), name="x")
    graph.set_tile_mapping(x[:, ::2], 1)  # even columns
    graph.set_tile_mapping(x[:, 1::2], 2)  # odd columns
    tiles = np.where(np.arange(8).reshape(2, 4) % 2 == 0, 1, 2)
    np.testing.assert_array_equal(graph.tile_of(x), tiles)
    assert graph.get_tile_mapping(x) == [[], [(0, 1), (2, 3), (4, 5), (6, 7)],
                                         [(1, 2), (3, 4), (5, 6), (7, 8)], []]
    # x.T flattened is x[0,0], x[1,0], x[0,1], x[1,1], ...: tiles 1, 1, 2, 2, 1, 1, 2, 2.
    assert graph.get_tile_mapping(x.T) == [[], [(0, 2), (4, 6)], [(2, 4), (6, 8)], []]
    np.testing.assert_array_equal(graph.tile_of(x.T), tiles.T)


def test_map_reversed_and_indexed_views(graph):
    x = graph.add_variable(sp.int32, (6,), name="x")
    graph.set_tile_mapping(x[::-1][0:2], 3)  # elements 5 and 4
    graph.set_tile_mapping(x[[0, 2, 3]], 1)
    graph.set_tile_mapping(x[1], 2)
    np.testing.assert_array_equal(graph.tile_of(x), [1, 2, 1, 1, 3, 3])
    np.testing.assert_array_equal(graph.tile_of(x[::-2]), [3, 1, 2])


def test_get_tile_mapping_partitions_the_flattened_tensor():
    g = sp.Graph(sp.targets.ipu_model(tiles=16))
    x = g.add_variable(sp.float16, (6, 10), name="x")
    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 16, size=(6, 10))
    for (i, j), t in np.ndenumerate(tiles):
        g.set_tile_mapping(x[i, j], int(t))
    for view in (x, x.T, x[::-1, 3:7], x[[4, 1]]):
        expected = tiles[np.unravel_index(view.addresses() - x.offset, x.shape)].ravel()
        covered = np.full(view.numel, -1)
        for tile, intervals in enumerate(g.get_tile_mapping(view)):
            for begin, end in intervals:
                assert (covered[begin:end] == -1).all()  # intervals do not overlap
                covered[begin:end] = tile
        np.testing.assert_array_equal(covered, expected)


def test_unmapped_elements(graph):
    x = graph.add_variable(sp.float32, (6,), name="partial")
    graph.set_tile_mapping(x[2:4], 1)
    np.testing.assert_array_equal(graph.tile_of(x), [-1, -1, 1, 1, -1, -1])
    with pytest.raises(sp.MappingError, match="element 0 of partial"):
        graph.get_tile_mapping(x)
    assert graph.get_tile_mapping(x, strict=False) == [[], [(2, 4)], [], []]
    with pytest.raises(sp.MappingError, match=r"element 2 of partial\[view"):
        graph.get_tile_mapping(x[2:])


@pytest.mark.parametrize("tile", [4, 99, -1])
def test_mapping_to_a_tile_the_target_lacks(graph, tile):
    x = graph.add_variable(sp.float32, (6,), name="x")
    with pytest.raises(sp.MappingError) as info:
        graph.set_tile_mapping(x, tile)
    message = str(info.value)
    assert f"tile {tile}" in message and "0..3" in message and "4 tiles" in message
    assert "set_tile_mapping of x " in message and HERE in message


def test_mapping_to_a_non_int_tile(graph):
    x = graph.add_variable(sp.float32, (6,), name="x")
    with pytest.raises(sp.MappingError, match="tile must be an int"):
        graph.set_tile_mapping(x, 1.5)


def test_double_mapping_names_variable_tiles_and_both_lines(graph):
    graph.add_variable(sp.float32, (3,), name="other")
    x = graph.add_variable(sp.float32, (8,), name="acts")
    first = graph.set_tile_mapping(x[0:5], 0) or line()  # set_tile_mapping returns None
    second = graph.set_tile_mapping(x[3:8], 2) or line()
    with pytest.raises(sp.MappingError) as info:
        graph.tile_of(x)
    message = str(info.value)
    assert "'acts'" in message and "tile 0" in message and "tile 2" in message
    assert "element 3 " in message  # the first element on both tiles, counted within acts
    assert f"{HERE}:{first}" in message and f"{HERE}:{second}" in message


def test_mapping_an_element_twice_to_the_same_tile_is_fine(graph):
    x = graph.add_variable(sp.float32, (4, 4), name="x")
    graph.set_tile_mapping(x, 2)
    graph.set_tile_mapping(x[1:3, 1:3], 2)
    graph.set_tile_mapping(x[0:1].broadcast((3, 4)), 2)  # repeats elements, one tile
    np.testing.assert_array_equal(graph.tile_of(x), np.full((4, 4), 2))
    assert graph.get_tile_mapping(x) == [[], [], [(0, 16)], []]


def test_set_tile_mappings_maps_rows(graph):
    x = graph.add_variable(sp.float32, (4, 3), name="x")
    graph.set_tile_mappings(x, [3, 1, 1, 0])
    np.testing.assert_array_equal(graph.tile_of(x), np.repeat([[3], [1], [1], [0]], 3, axis=1))
    y = graph.add_variable(sp.float32, (2, 3), name="y")
    graph.set_tile_mappings(y.T, [0, 1, 2])  # rows of y.T are the columns of y
    np.testing.assert_array_equal(graph.tile_of(y), [[0, 1, 2], [0, 1, 2]])
    z = graph.add_variable(sp.float32, (6,), name="z")
    graph.set_tile_mappings(z[::-1], np.arange(6) % 4)  # 1-D: one element per "row"
    np.testing.assert_array_equal(graph.tile_of(z), (np.arange(6) % 4)[::-1])


def test_set_tile_mappings_errors(graph):
    x = graph.add_variable(sp.float32, (4, 3), name="x")
    with pytest.raises(sp.MappingError, match="one tile per row"):
        graph.set_tile_mappings(x, [0, 1, 2])
    with pytest.raises(sp.MappingError, match="tile 7 does not exist"):
        graph.set_tile_mappings(x, [0, 1, 7, 2])
    with pytest.raises(sp.MappingError, match="x"):
        graph.set_tile_mappings(x[0, 0], [0])


def test_set_tile_mappings_of_a_tensor_without_rows_maps_nothing(graph):
    # Zero rows and zero tiles agree; the fast path must not index row 0 of an empty tensor.
    x = graph.add_variable(sp.float32, (0, 3), name="x")
    graph.set_tile_mappings(x, [])
    assert graph.get_tile_mapping(x) == [[], [], [], []]


def test_mapping_a_tensor_of_another_graph(graph):
    other = sp.Graph(sp.targets.ipu_model(tiles=4))
    y = other.add_variable(sp.float32, (4,), name="y")
    with pytest.raises(sp.TensorError, match="another graph"):
        graph.set_tile_mapping(y, 0)
    with pytest.raises(sp.TensorError, match="another graph"):
        graph.tile_of(y)


# --- map_linearly -------------------------------------------------------------------------------


def test_map_linearly_docstring_example(graph):
    x = graph.add_variable(sp.float32, (10,), name="x")
    sp.ops.map_linearly(graph, x, grain_size=2)
    assert graph.tile_of(x).tolist() == [0, 0, 0, 0, 1, 1, 2, 2, 3, 3]  # 5 grains: one extra on tile 0


@pytest.mark.parametrize(
    ("numel", "grain", "min_elements", "tiles"),
    [(1000, 1, 1, None), (1000, 8, 1, None), (3, 1, 1, None), (3, 1, 2, None), (40, 4, 16, None),
     (17, 4, 1, range(2, 6)), (16 * 5, 5, 5, None), (7, 10, 1, None)],
)
def test_map_linearly_properties(numel, grain, min_elements, tiles):
    g = sp.Graph(sp.targets.ipu_model(tiles=16))
    x = g.add_variable(sp.float32, (numel,), name="x")
    sp.ops.map_linearly(g, x, grain_size=grain, min_elements_per_tile=min_elements, tiles=tiles)
    allowed = list(range(16) if tiles is None else tiles)
    got = g.tile_of(x)
    assert (got >= 0).all()  # every element mapped (and, since tile_of resolved, exactly once)
    used = sorted(set(got.tolist()))
    assert used == allowed[: len(used)]  # the first tiles of the range, in order
    assert np.all(np.diff([allowed.index(t) for t in got.tolist()]) >= 0)  # contiguous chunks
    boundaries = np.flatnonzero(np.diff(got)) + 1
    assert np.all(boundaries % grain == 0)  # chunks are whole grains
    counts = np.bincount(got, minlength=16)[used]
    if numel >= min_elements:
        assert counts.min() >= min_elements
    # Small tensors use fewer tiles: no tile gets less than a grain when there are few grains.
    assert len(used) <= max(1, -(-numel // grain))


def test_map_linearly_maps_a_view_in_its_flattened_order(graph):
    x = graph.add_variable(sp.float32, (2, 4), name="x")
    sp.ops.map_linearly(graph, x.T)
    # x.T flattened: x[0,0], x[1,0], x[0,1], ...; 8 elements over 4 tiles, 2 each.
    np.testing.assert_array_equal(graph.tile_of(x.T).ravel(), [0, 0, 1, 1, 2, 2, 3, 3])
    np.testing.assert_array_equal(graph.tile_of(x), [[0, 1, 2, 3], [0, 1, 2, 3]])


@pytest.mark.parametrize("kwargs", [{"grain_size": 0}, {"min_elements_per_tile": 0}, {"tiles": range(0)}])
def test_map_linearly_bad_arguments(graph, kwargs):
    x = graph.add_variable(sp.float32, (8,), name="x")
    with pytest.raises(sp.MappingError, match="map_linearly of x"):
        sp.ops.map_linearly(graph, x, **kwargs)


# --- Vertices -----------------------------------------------------------------------------------


def _vertex_graph():
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    a = g.add_variable(sp.float32, (8,), name="a")
    b = g.add_variable(sp.float32, (8,), name="b")
    g.set_tile_mapping(a, 0)
    g.set_tile_mapping(b, 1)
    return g, a, b, g.add_compute_set("step")


def test_add_vertex_returns_refs_in_order():
    g, a, b, cs = _vertex_graph()
    v0 = g.add_vertex(cs, Scale, {"input": a[:4], "output": b[:4], "factor": 2.0}, tile=0)
    v1 = g.add_vertex(cs, Scale, {"input": a[4:], "output": b[4:], "factor": 3}, tile=1)
    assert (v0.index, v1.index) == (0, 1)
    assert v0.compute_set is cs
    assert compiles(g, cs)


def test_unknown_field_suggests_the_near_name():
    g, a, b, cs = _vertex_graph()
    with pytest.raises(sp.FieldError) as info:
        g.add_vertex(cs, Scale, {"inptu": a[:4], "output": b[:4], "factor": 1.0})
    message = str(info.value)
    assert "Scale" in message and "'inptu'" in message and "did you mean 'input'" in message


def test_wrong_dtype_names_field_codelet_tensor_dtypes_and_line():
    g, a, b, cs = _vertex_graph()
    ints = g.add_variable(sp.int32, (4,), name="ints")
    with pytest.raises(sp.FieldError) as info:
        where = line()
        g.add_vertex(cs, Scale, {"input": ints, "output": b[:4], "factor": 1.0})
    message = str(info.value)
    for part in ("'input'", "Scale", "ints", "sp.float32", "sp.int32", f"{HERE}:{where + 1}"):
        assert part in message


def test_field_needs_a_tensor():
    g, a, b, cs = _vertex_graph()
    with pytest.raises(sp.FieldError, match="needs a tensor"):
        g.add_vertex(cs, Scale, {"input": np.zeros(4, np.float32), "output": b[:4], "factor": 1.0})


def test_scalar_field_takes_one_element():
    g, a, b, cs = _vertex_graph()
    with pytest.raises(sp.FieldError, match="'total'.*scalar.*a\\[view"):
        g.add_vertex(cs, Gather, {"parts": [a[:2]], "total": a[2:5]})
    g.add_vertex(cs, Gather, {"parts": [a[:2], a[2:3]], "total": b[0:1].reshape(1, 1)})
    g.add_vertex(cs, Gather, {"parts": [a[4:6]], "total": b[1]})  # 0-d is one element too
    assert compiles(g, cs)


def test_vector_list_field_takes_a_list():
    g, a, b, cs = _vertex_graph()
    with pytest.raises(sp.FieldError, match="'parts'.*vector list"):
        g.add_vertex(cs, Gather, {"parts": a[:2], "total": b[0]})
    with pytest.raises(sp.FieldError, match="'parts'"):
        g.add_vertex(cs, Gather, {"parts": [a[:2], "oops"], "total": b[0]})


@pytest.mark.parametrize("value", ["abc", [1.0, 2.0], np.ones(2)])
def test_param_takes_one_number(value):
    g, a, b, cs = _vertex_graph()
    with pytest.raises(sp.FieldError, match="'factor'"):
        g.add_vertex(cs, Scale, {"input": a[:4], "output": b[:4], "factor": value})


def test_param_given_a_tensor_is_refused():
    g, a, b, cs = _vertex_graph()
    with pytest.raises(sp.FieldError, match="'factor'"):
        g.add_vertex(cs, Scale, {"input": a[:4], "output": b[:4], "factor": a[0]})


class Counted(sp.Vertex):
    out = sp.Output(sp.float32)
    count = sp.Param(sp.int32)

    @staticmethod
    def compute(out, count):
        out[...] = count


@pytest.mark.parametrize("value", [2.7, 2**40, -(2**31) - 1], ids=["fraction", "too-big", "too-small"])
def test_int_param_refuses_values_int32_cannot_hold(value):
    # The same value must be refused by add_vertex and add_vertices alike, never silently
    # truncated (2.7 -> 2) or wrapped (2**40 -> 0).
    g, a, b, cs = _vertex_graph()
    with pytest.raises(sp.FieldError, match="'count'"):
        g.add_vertex(cs, Counted, {"out": b[0:1], "count": value})
    with pytest.raises(sp.FieldError, match="'count'"):
        g.add_vertices(cs, Counted, {"out": b[0:2].reshape(2, 1), "count": value}, tiles=[0, 1])
    with pytest.raises(sp.FieldError, match="'count'"):
        g.add_vertices(cs, Counted, {"out": b[0:2].reshape(2, 1), "count": [1, value]}, tiles=[0, 1])


def test_int_param_keeps_values_int32_can_hold():
    g, a, b, cs = _vertex_graph()
    g.add_vertex(cs, Counted, {"out": b[0:1], "count": 2**31 - 1})
    g.add_vertices(cs, Counted, {"out": b[1:3].reshape(2, 1), "count": [-(2**31), 7]}, tiles=[0, 1])
    exe = sp.compiler.compile_graph(g, P.Execute(cs))
    counts = sorted(int(c) for grp in exe.compute_sets[cs.id].groups for c in grp.fields["count"])
    assert counts == [-(2**31), 7, 2**31 - 1]


@pytest.mark.parametrize("tile", [4, -1])
def test_vertex_tile_out_of_range(tile):
    g, a, b, cs = _vertex_graph()
    with pytest.raises(sp.MappingError, match=f"tile {tile} does not exist.*0..3"):
        g.add_vertex(cs, Scale, {"input": a[:4], "output": b[:4], "factor": 1.0}, tile=tile)


def test_vertex_field_from_another_graph():
    g, a, b, cs = _vertex_graph()
    other = sp.Graph(sp.targets.ipu_model(tiles=4))
    foreign = other.add_variable(sp.float32, (4,), name="foreign")
    with pytest.raises(sp.FieldError, match="foreign.*another graph"):
        g.add_vertex(cs, Scale, {"input": foreign, "output": b[:4], "factor": 1.0})


def test_vertex_in_a_compute_set_of_another_graph():
    g, a, b, _ = _vertex_graph()
    other_cs = sp.Graph(sp.targets.ipu_model(tiles=4)).add_compute_set("elsewhere")
    with pytest.raises(sp.FieldError, match="elsewhere"):
        g.add_vertex(other_cs, Scale, {"input": a[:4], "output": b[:4], "factor": 1.0})


def test_codelet_must_be_a_vertex_class():
    g, a, b, cs = _vertex_graph()
    with pytest.raises(sp.FieldError, match="not a codelet"):
        g.add_vertex(cs, object, {})
    with pytest.raises(sp.CodeletError, match="vertex type"):
        Scale()


def test_connect_fields_left_out_at_add_vertex():
    g, a, b, cs = _vertex_graph()
    v = g.add_vertex(cs, Scale, {"input": a[:4]}, tile=2)
    g.connect(v, "output", b[:4])
    g.set_initial_value(v, "factor", 0.5)
    assert compiles(g, cs)


def test_connect_errors():
    g, a, b, cs = _vertex_graph()
    v = g.add_vertex(cs, Scale, {"input": a[:4]})
    with pytest.raises(sp.FieldError, match="'input'.*already connected"):
        g.connect(v, "input", a[4:])
    g.connect(v, "output", b[:4])
    with pytest.raises(sp.FieldError, match="'output'.*already connected"):
        g.connect(v, "output", b[4:])
    with pytest.raises(sp.FieldError, match="did you mean 'factor'"):
        g.connect(v, "facter", 1.0)
    with pytest.raises(sp.FieldError, match="'factor'.*one number"):
        g.connect(v, "factor", g.add_variable(sp.float32, (1,), name="f"))  # a Param is a number
    done = g.add_vertex(cs, Scale, {"input": a[4:], "output": b[4:], "factor": 1.0})
    with pytest.raises(sp.FieldError, match="already connected"):
        g.connect(done, "factor", 2.0)
    bulk = g.add_vertices(cs, Scale, {"input": a.reshape(2, 4), "output": b.reshape(2, 4),
                                      "factor": 1.0}, tiles=[0, 1])
    with pytest.raises(sp.FieldError, match="add_vertices"):
        g.connect(sp.VertexRef(cs, bulk[0]), "factor", 2.0)


# --- Codelet classes ----------------------------------------------------------------------------


def test_codelet_without_compute():
    with pytest.raises(sp.CodeletError, match="NoCompute.*compute"):
        class NoCompute(sp.Vertex):
            x = sp.Input(sp.float32)


def test_codelet_compute_must_be_a_staticmethod():
    with pytest.raises(sp.CodeletError, match="Bound.compute.*staticmethod"):
        class Bound(sp.Vertex):
            x = sp.Input(sp.float32)

            def compute(self, x):
                pass


@pytest.mark.parametrize(
    ("compute", "complaint"),
    [(lambda x: None, r"missing \['y'\]"), (lambda x, y, z: None, r"unknown \['z'\]"),
     (lambda a, b: None, r"missing \['x', 'y'\], unknown \['a', 'b'\]")],
)
def test_codelet_compute_must_take_exactly_the_fields(compute, complaint):
    with pytest.raises(sp.CodeletError, match=f"Mismatch.compute.*{complaint}"):
        type("Mismatch", (sp.Vertex,), {"x": sp.Input(sp.float32), "y": sp.Output(sp.float32),
                                        "compute": staticmethod(compute)})


def test_codelet_errors_point_at_the_class_definition():
    with pytest.raises(sp.CodeletError) as info:
        where = line()
        class Broken(sp.Vertex):
            x = sp.Input(sp.float32)

            def compute(x):
                pass
    assert f"{HERE}:{where + 1}" in str(info.value)


def test_codelet_without_fields_and_param_with_shape():
    with pytest.raises(sp.CodeletError, match="Empty.*no fields"):
        class Empty(sp.Vertex):
            @staticmethod
            def compute():
                pass
    with pytest.raises(sp.CodeletError, match="Param"):
        Field(Direction.PARAM, sp.int32, sp.VECTOR)


def test_codelet_fields_are_inherited_and_kwargs_compute_is_accepted():
    class Base(sp.MultiVertex):
        abstract = True
        x = sp.Input(sp.float32)

    class Child(Base):
        y = sp.Output(sp.float32)

        @staticmethod
        def compute(**fields):
            pass

    assert list(Child.fields) == ["x", "y"]
    assert Child.kind is sp.MultiVertex.kind


# --- Bulk vertices ------------------------------------------------------------------------------


def test_add_vertices_in_bulk():
    g, a, b, cs = _vertex_graph()
    totals = g.add_variable(sp.float32, (2,), name="totals")
    g.set_tile_mapping(totals, 3)
    scaled = g.add_vertices(cs, Scale, {"input": a.reshape(4, 2), "output": b.reshape(4, 2),
                                        "factor": [1.0, 2.0, 3.0, 4.0]}, tiles=[0, 1, 2, 3])
    gathered = g.add_vertices(cs, Gather, {"parts": [a.reshape(2, 4), a[::2].reshape(2, 2)],
                                           "total": totals}, tiles=np.array([0, 0]))
    assert (list(scaled), list(gathered)) == ([0, 1, 2, 3], [4, 5])
    exe = sp.compiler.compile_graph(g, P.Execute(cs))
    groups = {grp.codelet: grp for grp in exe.compute_sets[cs.id].groups}
    np.testing.assert_array_equal(groups[Scale].fields["factor"], [1.0, 2.0, 3.0, 4.0])
    np.testing.assert_array_equal(groups[Scale].tiles, [0, 1, 2, 3])
    np.testing.assert_array_equal(groups[Scale].fields["input"].addresses(), a.addresses().reshape(4, 2))
    assert groups[Gather].fields["total"].shape == (2, 1)  # a scalar field: one element per vertex
    second = groups[Gather].fields["parts"][1].addresses()
    np.testing.assert_array_equal(second, a.addresses()[::2].reshape(2, 2))


def test_add_vertices_param_scalar_is_shared():
    g, a, b, cs = _vertex_graph()
    g.add_vertices(cs, Scale, {"input": a.reshape(2, 4), "output": b.reshape(2, 4), "factor": 0.5},
                   tiles=[2, 3])
    exe = sp.compiler.compile_graph(g, P.Execute(cs))
    np.testing.assert_array_equal(exe.compute_sets[cs.id].groups[0].fields["factor"], [0.5, 0.5])


def test_add_vertices_errors():
    g, a, b, cs = _vertex_graph()
    fields = {"input": a.reshape(4, 2), "output": b.reshape(4, 2), "factor": 1.0}
    with pytest.raises(sp.FieldError, match="'input'.*first axis must be the 3 vertices"):
        g.add_vertices(cs, Scale, fields, tiles=[0, 1, 2])
    with pytest.raises(sp.MappingError, match="tile 4 does not exist"):
        g.add_vertices(cs, Scale, fields, tiles=[0, 1, 2, 4])
    with pytest.raises(sp.FieldError, match="'factor'.*4 values"):
        g.add_vertices(cs, Scale, {**fields, "factor": [1.0, 2.0]}, tiles=[0, 1, 2, 3])
    with pytest.raises(sp.FieldError, match=r"\['factor'\] are not connected"):
        g.add_vertices(cs, Scale, {"input": fields["input"], "output": fields["output"]},
                       tiles=[0, 1, 2, 3])
    with pytest.raises(sp.FieldError, match="did you mean 'output'"):
        g.add_vertices(cs, Scale, {**fields, "outptu": fields["output"]}, tiles=[0, 1, 2, 3])
    with pytest.raises(sp.FieldError, match="'parts'.*list"):
        g.add_vertices(cs, Gather, {"parts": a.reshape(4, 2), "total": b[:4]}, tiles=[0, 1, 2, 3])
    with pytest.raises(sp.FieldError, match="scalar field 'total'"):
        g.add_vertices(cs, Gather, {"parts": [a.reshape(4, 2)], "total": b.reshape(4, 2)},
                       tiles=[0, 1, 2, 3])


# --- Streams and functions ----------------------------------------------------------------------


def test_streams(graph):
    s = graph.add_host_to_device_fifo("in", sp.float32, 16)
    d = graph.add_device_to_host_fifo("out", "int32", 4)
    assert (s.name, s.dtype, s.num_elements, s.nbytes) == ("in", sp.float32, 16, 64)
    assert (d.dtype, d.nbytes) == (sp.int32, 16)
    assert graph.streams == {"in": s, "out": d}


def test_stream_names_are_unique_and_non_empty(graph):
    graph.add_host_to_device_fifo("data", sp.float32, 4)
    with pytest.raises(sp.StreamError, match="'data'"):
        graph.add_host_to_device_fifo("data", sp.float32, 4)
    with pytest.raises(sp.StreamError, match="'data'"):
        graph.add_device_to_host_fifo("data", sp.float32, 4)
    with pytest.raises(sp.StreamError):
        graph.add_device_to_host_fifo("", sp.float32, 4)


def test_streams_move_at_most_128_mib(graph):
    limit = 128 * 1024 * 1024  # Poplar's DataStream buffer limit
    graph.add_host_to_device_fifo("max", sp.float32, limit // 4)
    with pytest.raises(sp.StreamError, match=str(limit + 4)):
        graph.add_host_to_device_fifo("big", sp.float32, limit // 4 + 1)
    with pytest.raises(sp.StreamError, match="-1"):
        graph.add_device_to_host_fifo("negative", sp.float16, -1)


def test_stream_size_must_be_an_int(graph):
    with pytest.raises(sp.StreamError, match="'half'"):
        graph.add_host_to_device_fifo("half", sp.float32, 2.5)


def test_add_function_needs_a_program(graph):
    fn = graph.add_function(P.Sequence(), name="body")
    assert fn.name == "body"
    with pytest.raises(sp.SoftIPUError, match="program"):
        graph.add_function(graph.add_compute_set("cs"))
