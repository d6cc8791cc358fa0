"""Tensor views against a numpy oracle of element addresses.

A variable ``x`` occupies the addresses ``[x.offset, x.offset + x.numel)`` of its dtype's address
space, in row-major order. So ``A = np.arange(x.numel).reshape(x.shape) + x.offset`` holds the address
of each element, and any view of ``x`` must have ``view.addresses() == op(A)`` for the same numpy
``op``. Every variable here sits behind a padding variable so that offsets are not zero.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

import softipu as sp

PAD = 5  # elements of the padding variable in front of every test variable


def variable(shape, dtype=sp.float32, name="x"):
    """A variable placed behind a padding variable, and its address oracle."""
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    g.add_variable(dtype, (PAD,), name="pad")
    x = g.add_variable(dtype, shape, name=name)
    assert x.offset == PAD  # laid end to end after the padding variable
    # Reshape last: numpy arithmetic on a 0-d array would give a scalar, not an array.
    return x, (np.arange(x.numel, dtype=np.int64) + PAD).reshape(shape)


def expand_runs(t: sp.Tensor) -> np.ndarray:
    """Every address the tensor's runs cover, with multiplicity."""
    starts, lengths = t.runs()
    assert starts.shape == lengths.shape
    assert np.all(lengths > 0), "runs() must not contain empty runs"
    first = np.repeat(starts, lengths)
    within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return first + within


def assert_view(t: sp.Tensor, expected: np.ndarray) -> None:
    """``t`` is exactly the elements whose addresses are ``expected``, and its facts agree."""
    expected = np.asarray(expected)
    assert t.shape == expected.shape
    assert t.ndim == expected.ndim
    assert t.numel == t.size == expected.size
    if expected.ndim:
        assert len(t) == expected.shape[0]
    got = np.asarray(t.addresses())
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(np.sort(expand_runs(t)), np.sort(expected.ravel()))
    assert t.repeats_elements() == (np.unique(expected).size < expected.size)
    flat = expected.ravel()
    ascending_run = flat.size > 0 and np.array_equal(flat, flat[0] + np.arange(flat.size))
    if t.is_contiguous() and flat.size:
        assert ascending_run
    if t.is_strided and flat.size:
        # For strided views is_contiguous is exact; indexed views may conservatively say False.
        assert t.is_contiguous() == ascending_run


# --- Variables ----------------------------------------------------------------------------------


def test_variables_are_laid_end_to_end_per_dtype():
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    a = g.add_variable(sp.float32, (2, 3), name="a")
    b = g.add_variable(sp.int32, (4,), name="b")
    c = g.add_variable(sp.float32, (5,), name="c")
    d = g.add_variable(sp.int32, (), name="d")
    assert (a.offset, c.offset) == (0, 6)  # float32 space: a then c
    assert (b.offset, d.offset) == (0, 4)  # int32 space is separate
    assert_view(c, np.arange(6, 11))
    assert_view(d, np.array(4))
    assert a.is_strided and a.is_contiguous() and not a.repeats_elements()


def test_facts_of_a_plain_variable():
    x, a = variable((4, 6))
    assert_view(x, a)
    assert (x.ndim, x.numel, len(x), x.dtype) == (2, 24, 4, sp.float32)
    starts, lengths = x.runs()
    assert starts.tolist() == [PAD] and lengths.tolist() == [24]  # one run for a whole variable


# --- Basic indexing -----------------------------------------------------------------------------

BASIC = [
    ((4, 6), np.s_[2]),
    ((4, 6), np.s_[-1]),
    ((4, 6), np.s_[-4, -6]),
    ((4, 6), np.s_[1:3]),
    ((4, 6), np.s_[:, ::2]),
    ((4, 6), np.s_[::-1]),
    ((4, 6), np.s_[3:0:-2, ::-3]),
    ((4, 6), np.s_[-3:, 5::-1]),
    ((4, 6), np.s_[4:4]),  # an empty view at the end (x[10:20] is an error: Poplar slices do not clamp)
    ((4, 6), np.s_[2:2, 1]),
    ((2, 3, 4), np.s_[..., 1]),
    ((2, 3, 4), np.s_[1, ...]),
    ((2, 3, 4), np.s_[:, ..., ::-1]),
    ((2, 3, 4), np.s_[None, 1, None, :, 2]),
    ((2, 3, 4), np.s_[...]),
    ((2, 3, 4), np.s_[()]),
    ((2, 3, 4), np.s_[..., None]),
    ((2, 3, 4), np.s_[-1, ::-2, 1:]),
    ((6,), np.s_[1:5:2]),  # the 1-D slice fast path
    ((6,), np.s_[::-1]),
    ((6,), np.s_[4:1:-1]),
    ((6,), np.s_[-2]),
    ((6,), np.s_[np.int64(3)]),  # numpy integer scalars index like ints
    ((), np.s_[()]),
    ((), np.s_[None]),
    ((), np.s_[...]),
]


@pytest.mark.parametrize(("shape", "key"), BASIC, ids=[f"{s}-{k!r}" for s, k in BASIC])
def test_basic_indexing_matches_numpy_and_stays_strided(shape, key):
    x, a = variable(shape)
    view = x[key]
    assert_view(view, a[key])
    assert view.is_strided


def test_chained_slices_of_slices():
    x, a = variable((6, 8))
    view = x[1:, ::-1][::2, 1:7][:, ::3]
    assert_view(view, a[1:, ::-1][::2, 1:7][:, ::3])
    assert view.is_strided


# --- Fancy indexing -----------------------------------------------------------------------------

FANCY = [
    ((5,), [4, 0, 0, -1]),
    ((4, 6), np.s_[[0, 2], 1:5]),
    ((4, 6), np.s_[:, [5, 1]]),
    ((4, 6), np.s_[[1, 3], [0, 5]]),
    ((4, 6), (np.array([[0, 1], [3, 2]]),)),
    ((4, 6), np.array([True, False, True, False])),
    ((2, 3, 4), np.s_[..., [3, 0]]),
    ((2, 3, 4), np.s_[1, [0, 2], ::-1]),
    ((2, 3, 4), np.s_[None, [1, 0]]),
]


@pytest.mark.parametrize(("shape", "key"), FANCY, ids=[f"{s}-{k!r}" for s, k in FANCY])
def test_fancy_indexing_goes_to_the_indexed_form(shape, key):
    x, a = variable(shape)
    view = x[key]
    assert_view(view, a[key])
    assert not view.is_strided


def test_empty_index_list_selects_nothing_like_numpy():
    # np.asarray([]) is float64, which numpy refuses as an index; an empty list must still work.
    x, a = variable((3, 4))
    assert_view(x[[]], a[[]])


# --- Reshape, flatten, transpose ----------------------------------------------------------------

# (variable shape, a view built with syntax numpy shares, new shape). Whether the reshape can stay
# strided is decided by numpy itself: it returns a view exactly when no copy is needed.
RESHAPES = [
    ((4, 6), lambda v: v, (24,)),
    ((4, 6), lambda v: v, (2, 12)),
    ((4, 6), lambda v: v, (3, -1)),
    ((4, 6), lambda v: v, (-1,)),
    ((4, 6), lambda v: v, (1, 24, 1)),
    ((4, 6), lambda v: v, (2, 2, 1, 6)),
    ((4, 6), lambda v: v[:, 1:5], (2, 2, 4)),
    ((4, 6), lambda v: v[:, 1:5], (16,)),
    ((4, 6), lambda v: v[::2], (12,)),
    ((4, 6), lambda v: v[::2, ::2], (6,)),
    ((4, 6), lambda v: v.T, (24,)),
    ((4, 6), lambda v: v.T, (3, 2, 4)),
    ((4, 6), lambda v: v.T, (2, 12)),
    ((4, 6), lambda v: v[::-1], (2, 2, 6)),
    ((4, 6), lambda v: v[::-1], (24,)),
    ((2, 3, 4), lambda v: v.transpose(1, 0, 2), (3, 8)),
    ((2, 3, 4), lambda v: v.transpose(1, 0, 2), (6, 4)),
    ((2, 3, 4), lambda v: v[:, 1], (8,)),
    ((2, 3, 4), lambda v: v[:, 1:2], (2, 4)),
    ((2, 1, 3), lambda v: v, (3, 2)),
    ((5,), lambda v: v[2, ...], ()),  # `...` keeps numpy's result a 0-d view, not a scalar
    ((1,), lambda v: v, ()),
]


@pytest.mark.parametrize(("shape", "make", "new_shape"), RESHAPES)
def test_reshape_matches_numpy_and_is_strided_exactly_when_numpy_needs_no_copy(shape, make, new_shape):
    x, a = variable(shape)
    expected = make(a).reshape(new_shape)
    view = make(x).reshape(new_shape)
    assert_view(view, expected)
    assert view.is_strided == np.shares_memory(expected, a)
    assert_view(make(x).reshape(*new_shape), expected)  # varargs form


def test_reshape_of_transposed_tensor_needs_the_indexed_fallback():
    x, a = variable((3, 4))
    flat = x.T.reshape(12)
    assert not flat.is_strided
    assert_view(flat, a.T.reshape(12))
    assert_view(x.T.flatten(), a.T.ravel())


def test_flatten_of_contiguous_tensor_is_one_run():
    x, a = variable((2, 3, 4))
    flat = x.flatten()
    assert flat.is_strided and flat.is_contiguous()
    assert_view(flat, a.ravel())


@pytest.mark.parametrize("perm", [(0, 1, 2), (2, 0, 1), (1, 2, 0), (2, 1, 0), (-1, 0, 1)])
def test_transpose_and_permute(perm):
    x, a = variable((2, 3, 4))
    assert_view(x.transpose(perm), a.transpose(perm))
    assert_view(x.transpose(*perm), a.transpose(perm))
    assert_view(x.permute(perm), a.transpose(perm))
    assert x.transpose(perm).is_strided


def test_dot_t_reverses_the_axes():
    x, a = variable((2, 3, 4))
    assert_view(x.T, a.T)
    assert_view(x.transpose(), a.T)
    assert_view(x.T.T, a)


# --- Broadcast, reverse, subsample, squeeze, expand_dims ----------------------------------------


@pytest.mark.parametrize(
    ("shape", "target"),
    [((1, 6), (4, 6)), ((6,), (2, 3, 6)), ((4, 1), (4, 5)), ((), (2, 2)), ((2, 3), (2, 3)),
     ((3, 1), (2, 3, 1)), ((1,), (0,))],
)
def test_broadcast_repeats_elements_with_stride_zero(shape, target):
    x, a = variable(shape)
    view = x.broadcast(target)
    expected = np.broadcast_to(a, target)
    assert_view(view, expected)
    assert view.is_strided
    assert_view(x.expand(target), expected)
    assert view.repeats_elements() == (expected.size > a.size)


@pytest.mark.parametrize("axis", [0, 1, 2, -1, -3])
def test_reverse_and_flip(axis):
    x, a = variable((2, 3, 4))
    assert_view(x.reverse(axis), np.flip(a, axis))
    assert_view(x.flip(axis), np.flip(a, axis))
    assert x.reverse(axis).is_strided
    assert_view(x.reverse(axis).reverse(axis), a)


@pytest.mark.parametrize(("stride", "axis"), [(1, 0), (2, 0), (2, 1), (3, -1), (5, 2), (9, 1)])
def test_subsample_takes_every_kth_from_the_first(stride, axis):
    x, a = variable((3, 5, 6))
    key = [slice(None)] * 3
    key[axis] = slice(None, None, stride)
    assert_view(x.subsample(stride, axis), a[tuple(key)])


@pytest.mark.parametrize("axis", [None, 0, 2, -1])
def test_squeeze(axis):
    x, a = variable((1, 3, 1, 1))
    assert_view(x.squeeze(axis), np.squeeze(a, axis))


@pytest.mark.parametrize("axis", [0, 1, 2, -1, -3])
def test_expand_dims(axis):
    x, a = variable((2, 3))
    assert_view(x.expand_dims(axis), np.expand_dims(a, axis))
    assert_view(x.unsqueeze(axis), np.expand_dims(a, axis))
    assert x.expand_dims(axis).is_strided


# --- Concat -------------------------------------------------------------------------------------


def test_concat_of_adjacent_pieces_stays_strided():
    x, a = variable((4, 6))
    rows = sp.concat([x[0:1], x[1:3], x[3:4]])
    assert rows.is_strided and rows.is_contiguous()
    assert_view(rows, a)
    cols = sp.concat([x[:, 0:2], x[:, 2:6]], axis=1)
    assert cols.is_strided
    assert_view(cols, a)
    back = sp.concat([x[:, 1:3], x[:, 3:5]], axis=-1)
    assert back.is_strided
    assert_view(back, a[:, 1:5])


def test_concat_of_adjacent_reversed_pieces_stays_strided():
    x, a = variable((4, 6))
    r = x[::-1]
    view = sp.concat([r[0:2], r[2:4]])
    assert view.is_strided
    assert_view(view, a[::-1])


def test_concat_skips_empty_pieces_when_merging():
    x, a = variable((4, 6))
    view = sp.concat([x[0:2], x[2:2], x[2:4]])
    assert view.is_strided
    assert_view(view, a)


def test_concat_of_non_adjacent_pieces_is_indexed():
    x, a = variable((4, 6))
    swapped = sp.concat([x[2:4], x[0:2]])
    assert not swapped.is_strided
    assert_view(swapped, np.concatenate([a[2:4], a[0:2]]))
    gap = sp.concat([x[:, 0:2], x[:, 3:5]], axis=1)
    assert not gap.is_strided
    assert_view(gap, np.concatenate([a[:, 0:2], a[:, 3:5]], axis=1))


def test_concat_of_different_variables_and_indexed_pieces():
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    p = g.add_variable(sp.float32, (3, 2), name="p")
    q = g.add_variable(sp.float32, (5, 2), name="q")
    pa = np.arange(6).reshape(3, 2)
    qa = np.arange(6, 16).reshape(5, 2)
    assert_view(sp.concat([q, p]), np.concatenate([qa, pa]))
    assert_view(sp.concat([p[[2, 0]], q[::2]]), np.concatenate([pa[[2, 0]], qa[::2]]))
    assert_view(sp.concat([p.T, q.T], axis=1), np.concatenate([pa.T, qa.T], axis=1))
    assert_view(sp.concat([p]), pa)


def test_concat_of_all_empty_pieces_adds_their_lengths():
    # With nothing to merge, the result still has the summed length along the axis.
    x, a = variable((3, 4))
    view = sp.concat([x[:, 0:0], x[:2, 0:0]])
    assert_view(view, np.concatenate([a[:, 0:0], a[:2, 0:0]]))


# --- Ops on indexed tensors ---------------------------------------------------------------------

INDEXED_OPS = [
    ("slice", lambda t: t[1:, ::-2], lambda a: a[1:, ::-2]),
    ("int", lambda t: t[-1], lambda a: a[-1]),
    ("none-ellipsis", lambda t: t[None, ..., 1], lambda a: a[None, ..., 1]),
    ("fancy", lambda t: t[[2, 2, 0]], lambda a: a[[2, 2, 0]]),
    ("reshape", lambda t: t.reshape(2, -1), lambda a: a.reshape(2, -1)),
    ("flatten", lambda t: t.flatten(), lambda a: a.ravel()),
    ("transpose", lambda t: t.T, lambda a: a.T),
    ("broadcast", lambda t: t.broadcast((2, 3, 6)), lambda a: np.broadcast_to(a, (2, 3, 6))),
    ("reverse", lambda t: t.reverse(1), lambda a: a[:, ::-1]),
    ("subsample", lambda t: t.subsample(4, 1), lambda a: a[:, ::4]),
    ("expand-squeeze", lambda t: t.expand_dims(1).squeeze(1), lambda a: a),
    ("expand_dims", lambda t: t.expand_dims(-1), lambda a: a[..., None]),
    ("concat", lambda t: sp.concat([t, t[:1]]), lambda a: np.concatenate([a, a[:1]])),
]


@pytest.mark.parametrize(("op", "on_tensor", "on_array"), INDEXED_OPS, ids=[o[0] for o in INDEXED_OPS])
def test_ops_on_indexed_tensors(op, on_tensor, on_array):
    x, a = variable((4, 6))
    gathered = x[[3, 0, 2]]
    view = on_tensor(gathered)
    assert_view(view, on_array(a[[3, 0, 2]]))
    assert not view.is_strided


# --- runs, is_contiguous, repeats_elements ------------------------------------------------------


def test_runs_of_a_column_are_single_elements_and_of_rows_whole_rows():
    x, _ = variable((4, 6))
    starts, lengths = x[:, 2].runs()
    assert sorted(starts.tolist()) == [PAD + 2, PAD + 8, PAD + 14, PAD + 20]
    assert lengths.tolist() == [1, 1, 1, 1]
    starts, lengths = x[1:3, 1:5].runs()
    assert sorted(zip(starts.tolist(), lengths.tolist(), strict=True)) == [(PAD + 7, 4), (PAD + 13, 4)]
    starts, lengths = x[::-1].runs()  # a reversed contiguous view is still one run
    assert (starts.tolist(), lengths.tolist()) == ([PAD], [24])


def test_runs_count_broadcast_repeats():
    x, a = variable((3,))
    view = x.broadcast((4, 3))
    covered = expand_runs(view)
    assert covered.size == 12
    assert np.bincount(covered - PAD).tolist() == [4, 4, 4]
    assert view.repeats_elements()
    assert not x[::2].repeats_elements()
    assert x[[0, 1, 0]].repeats_elements()
    assert not x[[2, 0, 1]].repeats_elements()
    y, _ = variable((400,))  # sparse indices (sorted, not marked), and a transposed index
    assert y[[399, 0, 399]].repeats_elements() and not y[[399, 0, 7]].repeats_elements()
    grid = y[np.arange(400).reshape(20, 20)]
    assert not grid.T.repeats_elements() and grid.T[[0, 1, 0]].repeats_elements()


def test_is_contiguous():
    x, _ = variable((4, 6))
    assert x.is_contiguous()
    assert x[1:3].is_contiguous()
    assert x[2].is_contiguous()
    assert x[1:2, :].reshape(6).is_contiguous()
    assert not x[:, 1:3].is_contiguous()
    assert not x[::-1].is_contiguous()  # one run, but descending
    assert not x.T.is_contiguous()
    assert not x[:1].broadcast((2, 6)).is_contiguous()
    assert not x[[0, 2]].is_contiguous()


def test_empty_views():
    x, a = variable((4, 6))
    empty = x[3:1]
    assert_view(empty, a[3:1])
    assert empty.runs()[0].size == 0
    assert not empty.repeats_elements()


# --- Errors -------------------------------------------------------------------------------------


def _tensors():
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    w = g.add_variable(sp.float32, (4, 6), name="weights")
    return g, w


BAD = [
    ("int out of range", lambda g, w: w[4]),
    ("negative out of range", lambda g, w: w[-5]),
    ("second axis out of range", lambda g, w: w[0, 6]),
    ("too many indices", lambda g, w: w[1, 2, 3]),
    ("two ellipses", lambda g, w: w[..., ...]),
    ("float index", lambda g, w: w[1.5]),
    ("fancy out of range", lambda g, w: w[[0, 9]]),
    ("indexed view out of range", lambda g, w: w[[0, 1]][5]),
    ("reshape wrong size", lambda g, w: w.reshape(5, 5)),
    ("reshape two -1", lambda g, w: w.reshape(-1, -1)),
    ("reshape -1 does not divide", lambda g, w: w.reshape(7, -1)),
    ("reshape negative", lambda g, w: w.reshape(-2, -12)),
    ("reshape of view", lambda g, w: w[1:].reshape(4, 5)),
    ("broadcast mismatch", lambda g, w: w.broadcast((4, 7))),
    ("broadcast to fewer dims", lambda g, w: w.broadcast((6,))),
    ("transpose repeated axis", lambda g, w: w.transpose(0, 0)),
    ("transpose axis out of range", lambda g, w: w.transpose(0, 2)),
    ("transpose too few axes", lambda g, w: w.transpose(1)),
    ("reverse axis out of range", lambda g, w: w.reverse(2)),
    ("subsample stride 0", lambda g, w: w.subsample(0)),
    ("squeeze non-1 axis", lambda g, w: w.squeeze(0)),
    ("expand_dims out of range", lambda g, w: w.expand_dims(3)),
    ("concat shapes", lambda g, w: sp.concat([w, g.add_variable(sp.float32, (4, 5))])),
    ("concat ranks", lambda g, w: sp.concat([w, w[0]])),
    ("concat dtypes", lambda g, w: sp.concat([w, g.add_variable(sp.int32, (4, 6))])),
    ("concat axis out of range", lambda g, w: sp.concat([w, w], axis=2)),
    ("concat graphs", lambda g, w: sp.concat([w, _tensors()[1]])),
    ("bool", lambda g, w: bool(w)),
    ("if", lambda g, w: 1 if w[0, 0] else 0),
    ("len of 0-d", lambda g, w: len(w[0, 0])),
]


@pytest.mark.parametrize(("what", "bad"), BAD, ids=[b[0] for b in BAD])
def test_bad_view_operations_raise_tensor_error_naming_the_tensor(what, bad):
    g, w = _tensors()
    with pytest.raises(sp.TensorError) as info:
        bad(g, w)
    assert isinstance(info.value, sp.SoftIPUError)
    assert isinstance(info.value, ValueError)  # generic `except ValueError` keeps working
    assert "weights" in str(info.value)


def test_concat_of_nothing_raises():
    with pytest.raises(sp.TensorError, match="at least one"):
        sp.concat([])


def test_zero_slice_step_raises_tensor_error():
    # slice.indices() raises a bare ValueError for step 0; both the 1-D fast path and the general
    # path must turn it into a TensorError naming the tensor.
    _, w = _tensors()
    for bad in (lambda: w[::0], lambda: w[:, ::0], lambda: w[0][::0]):
        with pytest.raises(sp.TensorError, match="weights"):
            bad()


def test_axis_operations_on_a_0d_tensor_raise_tensor_error():
    # A 0-d tensor has no axis 0; these must not reach self.shape[0] and fail with an IndexError.
    _, w = _tensors()
    scalar = w[1, 2]
    for bad in (lambda: scalar.reverse(0), lambda: scalar.squeeze(0), lambda: scalar.subsample(2),
                lambda: sp.concat([scalar, scalar])):
        with pytest.raises(sp.TensorError, match="weights"):
            bad()


def test_broadcast_to_a_negative_dimension_raises():
    # Each old dim being 1 or equal is not enough: a negative target dim must be refused too.
    _, w = _tensors()
    for target in ((-1, 6), (-2, 4, 6)):
        with pytest.raises(sp.TensorError, match="weights"):
            w[0:1].broadcast(target)


# --- Random chains of view operations against numpy ----------------------------------------------


def _axis(data, ndim, extra=0):
    return data.draw(st.integers(-(ndim + extra), ndim + extra - 1), label="axis")


def _index_items(data, dims):
    """Index items (int, slice or None) for consecutive axes of sizes ``dims``."""
    key = []
    for d in dims:
        while data.draw(st.integers(0, 3), label="insert None") == 0:
            key.append(None)
        kind = data.draw(st.sampled_from(["int", "slice"] if d else ["slice"]))
        if kind == "int":
            key.append(data.draw(st.integers(-d, d - 1)))
        else:
            bound = st.none() | st.integers(-d, d)  # beyond is an error (test_correctness_review)
            step = st.none() | st.integers(-3, 3).filter(bool)
            key.append(slice(data.draw(bound), data.draw(bound), data.draw(step)))
    return key


def _op_index(data, shape):
    n_head = data.draw(st.integers(0, len(shape)), label="leading axes")
    key = _index_items(data, shape[:n_head])
    if data.draw(st.booleans(), label="ellipsis"):
        n_tail = data.draw(st.integers(0, len(shape) - n_head), label="trailing axes")
        key += [Ellipsis] + _index_items(data, shape[len(shape) - n_tail:])
    key = tuple(key)
    # A trailing `...` changes nothing but keeps numpy from turning a 0-d result into a scalar.
    np_key = key if Ellipsis in key else key + (Ellipsis,)
    return f"[{key!r}]", lambda t: t[key], lambda a: a[np_key]


def _op_fancy(data, shape):
    axes = [k for k, d in enumerate(shape) if d]
    if not axes:
        return _op_index(data, shape)
    axis = data.draw(st.sampled_from(axes))
    d = shape[axis]
    picks = data.draw(st.lists(st.integers(-d, d - 1), min_size=1, max_size=4), label="picks")
    key = (slice(None),) * axis + (picks,)
    return f"[{key!r}]", lambda t: t[key], lambda a: a[key]


def _factor(data, n):
    dims, rest = [], n
    for _ in range(data.draw(st.integers(0, 2))):
        divisors = [k for k in range(1, rest + 1) if rest % k == 0]
        dims.append(data.draw(st.sampled_from(divisors)))
        rest //= dims[-1]
    dims.append(rest)
    dims = data.draw(st.permutations(dims))
    if data.draw(st.booleans(), label="-1") and all(dims):
        dims[data.draw(st.integers(0, len(dims) - 1))] = -1
    return tuple(dims)


def _op_reshape(data, shape):
    n = int(np.prod(shape, dtype=np.int64))
    new = _factor(data, n) if n else data.draw(st.sampled_from([(0,), (0, 3), (2, 0)]))
    if data.draw(st.booleans(), label="insert 1"):
        k = data.draw(st.integers(0, len(new)))
        new = new[:k] + (1,) + new[k:]
    return f".reshape({new})", lambda t: t.reshape(new), lambda a: a.reshape(new)


def _op_transpose(data, shape):
    perm = tuple(data.draw(st.permutations(range(len(shape)))))
    return f".transpose({perm})", lambda t: t.transpose(perm), lambda a: a.transpose(perm)


def _op_broadcast(data, shape):
    lead = tuple(data.draw(st.lists(st.integers(1, 3), max_size=1 if len(shape) >= 3 else 2)))
    target = lead + tuple(data.draw(st.integers(1, 3)) if d == 1 else d for d in shape)
    return (f".broadcast({target})", lambda t: t.broadcast(target),
            lambda a: np.broadcast_to(a, target))


def _op_reverse(data, shape):
    if not shape:
        return _op_reshape(data, shape)
    axis = _axis(data, len(shape))
    return f".reverse({axis})", lambda t: t.reverse(axis), lambda a: np.flip(a, axis)


def _op_subsample(data, shape):
    if not shape:
        return _op_reshape(data, shape)
    axis, stride = _axis(data, len(shape)), data.draw(st.integers(1, 3))
    key = (slice(None),) * (axis % len(shape)) + (slice(None, None, stride),)
    return f".subsample({stride}, {axis})", lambda t: t.subsample(stride, axis), lambda a: a[key]


def _op_squeeze(data, shape):
    ones = [k for k, d in enumerate(shape) if d == 1]
    axis = data.draw(st.sampled_from([None] + ones))
    return f".squeeze({axis})", lambda t: t.squeeze(axis), lambda a: np.squeeze(a, axis)


def _op_expand_dims(data, shape):
    axis = _axis(data, len(shape), extra=1)
    return f".expand_dims({axis})", lambda t: t.expand_dims(axis), lambda a: np.expand_dims(a, axis)


def _op_concat(data, shape):
    if not shape:
        return _op_reshape(data, shape)
    axis = data.draw(st.integers(0, len(shape) - 1))
    cuts = sorted(data.draw(st.lists(st.integers(0, shape[axis]), min_size=3, max_size=3)))
    pieces = [(slice(None),) * axis + (slice(lo, hi),) for lo, hi in zip(cuts, cuts[1:], strict=False)]
    if data.draw(st.booleans(), label="swap pieces"):
        pieces.reverse()
    return (f"concat({pieces!r}, axis={axis})",
            lambda t: sp.concat([t[k] for k in pieces], axis=axis),
            lambda a: np.concatenate([a[k] for k in pieces], axis=axis))


OPS = [_op_index, _op_fancy, _op_reshape, _op_transpose, _op_broadcast, _op_reverse,
       _op_subsample, _op_squeeze, _op_expand_dims, _op_concat]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=st.lists(st.integers(1, 4), max_size=3).map(tuple), data=st.data())
def test_random_view_chains_match_numpy(shape, data):
    x, a = variable(shape)
    t, expected = x, a
    for _ in range(data.draw(st.integers(1, 5), label="chain length")):
        if expected.size > 200:  # keep broadcasts from growing without bound
            break
        op = data.draw(st.sampled_from(OPS), label="op")
        label, on_tensor, on_array = op(data, expected.shape)
        note(label)
        t, expected = on_tensor(t), on_array(expected)
        assert_view(t, expected)


BASIC_OPS = [_op_index, _op_reshape, _op_transpose, _op_broadcast, _op_reverse, _op_subsample,
             _op_squeeze, _op_expand_dims]


@settings(max_examples=200, deadline=None)
@given(shape=st.lists(st.integers(1, 4), max_size=3).map(tuple), data=st.data())
def test_random_basic_chains_are_strided_exactly_when_numpy_returns_a_view(shape, data):
    # numpy mirrors softipu's strided form here (same strides, same no-copy reshape rule), so a
    # numpy view must be strided, and a copy indexed unless its addresses are affine again.
    x, a = variable(shape)
    t, expected = x, a
    for _ in range(data.draw(st.integers(1, 4), label="chain length")):
        op = data.draw(st.sampled_from(BASIC_OPS), label="op")
        label, on_tensor, on_array = op(data, expected.shape)
        note(label)
        t, expected = on_tensor(t), on_array(expected)
        assert_view(t, expected)
        if expected.size:  # numpy never shares memory through an empty array
            # A numpy view is strided; so is a copy whose addresses happen to be affine in the
            # index again (transpose, flatten, reshape back; one element), which softipu finds.
            assert t.is_strided == (np.shares_memory(expected, a) or _affine(expected))


def _affine(addresses: np.ndarray) -> bool:
    """Whether ``addresses`` is ``first + sum(index[i] * step[i])`` for some steps: a strided view."""
    first = addresses.reshape(-1)[0]
    want = np.full(addresses.shape, first, dtype=np.int64)
    for axis, n in enumerate(addresses.shape):
        if n > 1:
            step = np.take(addresses, 1, axis=axis).reshape(-1)[0] - first
            shape = [1] * addresses.ndim
            shape[axis] = n
            want = want + np.arange(n, dtype=np.int64).reshape(shape) * step
    return bool(np.array_equal(addresses, want))


@pytest.mark.parametrize("make", [
    lambda t: t, lambda t: t.T, lambda t: t[::-1, 1::2], lambda t: t[:, 2:5], lambda t: t[[3, 1, 2]],
    lambda t: t.reshape(-1)[[5, 6, 7, 0, 1, 9]], lambda t: t[1:2].broadcast((3, 8)), lambda t: t[:0],
])
def test_element_runs_expand_to_the_addresses_in_element_order(make):
    g = sp.Graph(sp.targets.ipu_model(tiles=2))
    t = make(g.add_variable(sp.float32, (4, 8)))
    starts, lengths = t.element_runs()
    expanded = np.concatenate([np.arange(s, s + n) for s, n in zip(starts, lengths, strict=True)] or [[]])
    np.testing.assert_array_equal(expanded, t.addresses().reshape(-1))


@pytest.mark.parametrize(("make", "one_run"), [
    (lambda t: t, True), (lambda t: t.T, True), (lambda t: t[:, 2:5], False),
    (lambda t: t.reshape(-1)[np.random.default_rng(0).permutation(32)].reshape(8, 4), True),
    (lambda t: t.reshape(-1)[np.random.default_rng(1).permutation(32)].reshape(4, 8).T, True),
    (lambda t: t.reshape(-1)[[5, 6, 7, 4]], True), (lambda t: t.reshape(-1)[[5, 5, 7]], False),
    (lambda t: t.reshape(-1)[[3, 1, 9]], False), (lambda t: t[1:2].broadcast((3, 8)), False),
])
def test_address_runs_cover_the_elements_as_a_multiset(make, one_run):
    """The compiler's cover of a tensor (for memory and host-transfer bytes): order may differ,
    the multiset of addresses may not; a view reordering one whole range is that one run."""
    from softipu.compiler.conflicts import address_runs
    g = sp.Graph(sp.targets.ipu_model(tiles=2))
    t = make(g.add_variable(sp.float32, (4, 8)))
    starts, lengths = address_runs(t)
    expanded = np.concatenate([np.arange(s, s + n) for s, n in zip(starts, lengths, strict=True)])
    np.testing.assert_array_equal(np.sort(expanded), np.sort(t.addresses().reshape(-1)))
    assert (starts.size == 1) == one_run


@pytest.mark.parametrize("chain", [
    lambda t: t.transpose((1, 0)).reshape((4,)).reshape((2, 2)),  # the transpose again
    lambda t: t.transpose((1, 0)).reshape((4,))[0],  # one element
    lambda t: t.transpose((1, 0)).reshape((4,)),  # a true gather: stays indexed
])
def test_a_copy_in_numpy_is_strided_exactly_when_its_addresses_are_affine(chain):
    x, a = variable((2, 2))
    t, expected = chain(x), chain(a)
    assert_view(t, expected)
    assert not np.shares_memory(expected, a)  # numpy copied in every case
    assert t.is_strided == _affine(expected)


def test_a_cut_of_an_interleaved_reshape_is_strided_where_its_addresses_are_affine():
    # Found by the random chains above: a transposed view flattened (one strided piece read
    # row-major, listed), then every third element: two elements, always affine.
    g = sp.Graph(sp.targets.ipu_model(tiles=2))
    x = g.add_variable(sp.float32, (1, 2, 2))
    flat = x.transpose((0, 2, 1)).reshape(4)  # addresses 0, 2, 1, 3
    cut = flat[::3]
    assert cut.is_strided and cut.offset == 0 and cut.strides == (3,)
    np.testing.assert_array_equal(cut.addresses(), [0, 3])
    kept = flat[1:]  # 2, 1, 3: not affine, stays listed
    assert not kept.is_strided
    np.testing.assert_array_equal(kept.addresses(), [2, 1, 3])
