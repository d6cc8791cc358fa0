"""The first-call shortcuts give what the long way gives: vertex groups alike but for their tiles
are estimated once (``costs.tile_compute_cycles``) yet priced on their own tiles, and the export's
decomposition tables made once a process equal torch's split of the whole table."""

from __future__ import annotations

import math

import numpy as np
import pytest

import softipu as sp
from _costs_helpers import Work, only_step
from softipu import program as P


def _bulk_work(g: sp.Graph, cs: sp.ComputeSet, tile: int, works: list[int], name: str) -> None:
    x = g.add_variable(sp.float32, (len(works), 1), name=name)
    g.set_tile_mapping(x, tile)
    g.add_vertices(cs, Work, {"x": x, "work": np.array(works, np.int32)}, [tile] * len(works))


def test_groups_alike_but_for_their_tiles_are_each_priced_on_their_tile():
    target = sp.targets.ipu_model(tiles=4)
    w = target.workers_per_tile
    g = sp.Graph(target)
    cs = g.add_compute_set("work")
    _bulk_work(g, cs, 0, [100, 100], "a")  # the groups of tiles 0 and 1 differ in their tiles only
    _bulk_work(g, cs, 1, [100, 100], "b")
    _bulk_work(g, cs, 2, [100, 300], "c")  # same field lengths, other params: its own estimate
    _bulk_work(g, cs, 3, [100] * 7, "d")  # same params' values, more vertices
    _bulk_work(g, cs, 0, [100] * 7, "e")  # alike tile 3's: adds onto tile 0's workers
    step = only_step(sp.Engine(g, [P.Execute(cs)], estimate_only=True))
    # workers x max(longest vertex, ceil(total / workers)) per tile (ipu-facts §2):
    tiles = [w * max(100, math.ceil(900 / w)),  # tile 0: 2 + 7 jobs of 100 -> 6 x 150 = 900
             w * max(100, math.ceil(200 / w)),  # tile 1: 6 x 100 = 600
             w * max(300, math.ceil(400 / w)),  # tile 2: 6 x 300 = 1800
             w * max(100, math.ceil(700 / w))]  # tile 3: 6 x 117 = 702
    assert tiles == [900, 600, 1800, 702]
    assert step.compute_cycles == 1800 and step.busiest_tile == 2
    assert step.mean_tile_compute_cycles == pytest.approx(sum(tiles) / 4)


def test_export_tables_made_once_equal_torchs_split_of_the_whole_table():
    pytest.importorskip("torch")
    from torch.export.exported_program import _split_decomp_table_to_cia_and_python_decomp

    from softipu.frontends.torch import export

    want_cia, want_python = _split_decomp_table_to_cia_and_python_decomp(export._table())
    cia, python = export._split_tables()
    assert set(cia) == set(want_cia) and set(python) == set(want_python)
    assert all(python[op] is fn for op, fn in want_python.items())
    for op, fn in want_cia.items():  # torch makes a fresh partial of one function per op each split
        got = cia[op]
        same = got is fn or (getattr(got, "func", None) is not None
                             and got.func.__qualname__ == fn.func.__qualname__ and got.keywords == fn.keywords)
        assert same, op
    assert not set(export.KEPT_WHOLE) & set(python)  # lowered whole: never decomposed
    cia.clear()
    python.clear()  # each export gets its own copies
    assert export._split_tables()[0] and export._split_tables()[1]


def test_export_tables_follow_ops_registered_after_the_first_split():
    import torch
    from torch.export.exported_program import _split_decomp_table_to_cia_and_python_decomp

    from softipu.frontends.torch import export

    export._split_tables()
    lib = torch.library.Library("softipu_test_split", "DEF")  # a new CompositeImplicit op
    lib.define("twice(Tensor x) -> Tensor")
    lib.impl("twice", lambda x: x + x, "CompositeImplicitAutograd")
    want_cia, want_python = _split_decomp_table_to_cia_and_python_decomp(export._table())
    cia, python = export._split_tables()
    assert set(cia) == set(want_cia) and set(python) == set(want_python)
