"""A copy between a strided tensor and one in column slabs (an indexed layout) is cut into runs
contiguous on both sides, whatever order the views list their axes in (issue 19: a weight update
written into ``createWeights`` slabs was one exchange region per element)."""

from __future__ import annotations

import numpy as np

import softipu as sp
from softipu.compiler.exchange import copy_transfers
from softipu.graph.tensor import concat


def _layout():
    """``src`` (4, 8) row-major on tile 0; ``dst`` its (4, 8) image as two column slabs of 4 x 4,
    each slab row-major: the left slab on tile 1, the right one on tile 2."""
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    src = g.add_variable(sp.float32, (4, 8), name="src")
    left = g.add_variable(sp.float32, (4, 4), name="left")
    right = g.add_variable(sp.float32, (4, 4), name="right")
    for t, tile in ((src, 0), (left, 1), (right, 2)):
        g.set_tile_mapping(t, tile)
    dst = concat([left, right], axis=1)
    assert not dst.is_strided
    return g, src, dst


def test_a_transposed_listing_of_a_slab_copy_is_cut_into_slab_rows():
    """Listed column first (``src.T`` -> ``dst.T``), no two neighbouring elements are contiguous
    on either side. Walked row first, each source row is two runs of 4 contiguous in a slab row:
    by hand, 4 rows x 2 slabs = 8 pieces, tile 0 sends 8, tiles 1 and 2 receive 4 each (it was
    32 sent and 16 received by each, one per element)."""
    g, src, dst = _layout()
    mappings = {sp.float32: g.resolved_mapping(sp.float32)}
    for s, d in ((src, dst), (src.T, dst.T)):
        transfers, local = copy_transfers(s, d, mappings, 4)
        send, recv = transfers.pieces_per_tile(4)
        assert send.tolist() == [8, 0, 0, 0] and recv.tolist() == [0, 4, 4, 0]
        assert not local.any()
    # the pieces carry every element to the right place (an element-by-element oracle)
    transfers, _ = copy_transfers(src.T, dst.T, mappings, 4)
    starts, ends = np.concatenate(transfers.starts), np.concatenate(transfers.ends)
    moved = np.concatenate([np.arange(a, b) for a, b in zip(starts, ends, strict=True)])
    assert np.array_equal(np.sort(moved), np.sort(src.addresses().ravel()))


def test_the_priced_copy_uses_the_same_regions_for_its_exchange_code():
    """One source of truth: the program's exchange code counts those pieces, each a region on its
    sending and its receiving tile (Target.exchange_code_bytes_per_region each)."""
    g, src, dst = _layout()
    eng = sp.Engine(g, [sp.program.Sequence(sp.program.Copy(src.T, dst.T))])
    code = eng.report.memory_by_category_per_tile()["exchange_code"]
    per_region = g.target.exchange_code_bytes_per_region
    assert code.tolist() == [8 * per_region, 4 * per_region, 4 * per_region, 0]
    values = np.arange(32, dtype=np.float32).reshape(4, 8)
    eng.write_tensor(src, values)
    eng.run(0)
    np.testing.assert_array_equal(eng.read_tensor(dst), values)
