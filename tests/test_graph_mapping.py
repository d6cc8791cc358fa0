"""Tile mapping tables: incremental resolution keeps one entry per interval, not per run added.

Oracle: the tile of every element worked out by hand from the mapping calls.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

import softipu as sp
from softipu.errors import MappingError


def test_mapping_below_the_top_re_resolves_with_the_same_tiles():
    g = sp.Graph(sp.targets.ipu_model(tiles=8))
    a = g.add_variable(sp.float32, (100,), name="a")
    b = g.add_variable(sp.float32, (100,), name="b")
    g.map_intervals(b, [0, 50], [50, 100], [3, 4])
    g.resolved_mapping(sp.float32)
    g.map_intervals(a, np.arange(0, 100, 10), np.arange(10, 110, 10), np.arange(10) % 8)  # below b
    want = np.concatenate((np.repeat(np.arange(10) % 8, 10), np.repeat([3, 4], 50)))
    np.testing.assert_array_equal(g.tile_of(sp.concat([a, b])), want)
    resolved = g.resolved_mapping(sp.float32)
    # touching intervals on one tile are merged: a's last ten (tile 1) and b's first fifty (tile 3)
    assert resolved.starts.size == 12
    assert not g.spaces[sp.float32].mapping._chunks  # resolved runs are not kept


def test_a_conflict_below_the_top_names_both_calls():
    g = sp.Graph(sp.targets.ipu_model(tiles=8))
    a = g.add_variable(sp.float32, (100,), name="a")
    b = g.add_variable(sp.float32, (100,), name="b")
    first = sys._getframe().f_lineno + 1
    g.map_intervals(a, [0], [100], [1])
    g.map_intervals(b, [0], [100], [2])
    g.resolved_mapping(sp.float32)
    second = sys._getframe().f_lineno + 1
    g.map_intervals(a, [40], [41], [5])
    with pytest.raises(MappingError) as err:
        g.resolved_mapping(sp.float32)
    text = str(err.value)
    assert "element 40 of variable 'a'" in text
    assert f":{first}" in text and f":{second}" in text


@pytest.mark.parametrize("span", [6000, 60000])  # dense addresses (one table), sparse (searched)
def test_tiles_of_many_addresses_matches_each_interval(span):
    """Intervals with gaps between them; every address looked up, in random order and with
    repeats, against the tile written out interval by interval (-1 in a gap or outside)."""
    from softipu.graph.mapping import ResolvedMapping

    rng = np.random.default_rng(0)
    cuts = np.sort(rng.choice(np.arange(100, 5000), 400, replace=False))
    starts, ends = cuts[0::2].astype(np.int64), cuts[1::2].astype(np.int64)
    tiles = rng.integers(0, 8, starts.size).astype(np.int32)
    resolved = ResolvedMapping(starts, ends, tiles)
    want_at = np.full(span + 50, -1, np.int32)
    for s, e, t in zip(starts.tolist(), ends.tolist(), tiles.tolist(), strict=True):
        want_at[s:e] = t
    addresses = rng.integers(50, span + 50, 5000)
    np.testing.assert_array_equal(resolved.tiles_of(addresses), want_at[addresses])
    grid = addresses.reshape(50, 100)  # any shape, kept
    assert resolved.tiles_of(grid).shape == (50, 100)


@pytest.mark.parametrize("view", ["columns", "transpose", "reversed", "slabs"])
@pytest.mark.parametrize("call", ["map_intervals", "set_tile_mappings"])
def test_mapping_calls_on_a_non_contiguous_view(view, call):
    """Flat ranges or rows of a view map the elements numpy's same view holds (oracle: per-element tiles)."""
    g = sp.Graph(sp.targets.ipu_model(tiles=8))
    x = g.add_variable(sp.float32, (6, 10), name="x")
    ids = np.arange(60).reshape(6, 10)  # the oracle: which element of x each view element is
    views = {"columns": (x[:, 2:7], ids[:, 2:7]), "transpose": (x.transpose(), ids.T),
             "reversed": (x[::-1, ::2], ids[::-1, ::2]),
             "slabs": (sp.concat([x[:2, :5], x[3:5, :5]]), np.concatenate([ids[:2, :5], ids[3:5, :5]]))}
    v, oracle = views[view]
    want = np.full(60, -1)  # unmapped
    if call == "map_intervals":
        flat = oracle.reshape(-1)
        cuts = np.array([0, 3, 4, 11, flat.size])
        g.map_intervals(v, cuts[:-1], cuts[1:], [1, 2, 3, 4])
        for b, e, t in zip(cuts[:-1], cuts[1:], [1, 2, 3, 4], strict=True):
            want[flat[b:e]] = t
    else:
        rows = np.arange(v.shape[0]) % 5 + 1
        g.set_tile_mappings(v, rows)
        want[oracle] = rows[:, None]
    np.testing.assert_array_equal(g.tile_of(x).reshape(-1), want)


def test_mapping_a_huge_broadcast_or_strided_view_is_refused_at_once_or_mapped_once():
    """The fuzz campaign's hang: 2**31 flat elements of a one-element broadcast were listed one by one."""
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    v = g.add_variable(sp.float32, (1,), name="v")
    huge = v.broadcast((2**31,))
    with pytest.raises(MappingError, match=r"map_intervals of v.*test_graph_mapping.py.*broadcast.*2,147,483,648"):
        g.map_intervals(huge, [0, 5], [5, 2**31], [1, 2])
    with pytest.raises(MappingError, match=r"set_tile_mappings of v.*broadcast.*map the variable it views"):
        g.set_tile_mappings(huge.reshape(2, -1), [1, 2])
    g.set_tile_mapping(huge, 3)  # one tile for all: the one element it repeats
    assert g.tile_of(v).tolist() == [3]
    w = g.add_variable(sp.float32, (2**14, 2**13), name="w")  # 2**27 runs of one element in element order
    with pytest.raises(MappingError, match=r"map_intervals of w.*strided.*134,217,728"):
        g.map_intervals(w.transpose(), [0], [2**27], [1])
    g.set_tile_mapping(w.transpose(), 2)  # in address order it is one run
    assert g.resolved_mapping(sp.float32).starts.size <= 3
