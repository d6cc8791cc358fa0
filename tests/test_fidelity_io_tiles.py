"""I/O tiles (``Target.num_io_tiles``, PopART/PopTorch ``numIOTiles``): a lowered model's work on the
compute tiles only, its inputs on the I/O tiles, as PopART splits each IPU into two virtual graphs."""

from __future__ import annotations

import numpy as np
import pytest

import softipu as sp
from softipu.frontends.placement import compute_graph, io_graph


def test_the_target_names_its_compute_and_io_tiles():
    t = sp.targets.ipu_model(tiles=16, num_ipus=2, num_io_tiles=4)
    assert list(t.compute_tiles_of_ipu(1)) == list(range(16, 28))
    assert list(t.io_tiles_of_ipu(1)) == [28, 29, 30, 31]
    assert t.compute_tiles_per_ipu == 12


def test_ops_on_the_compute_graph_see_only_the_compute_tiles():
    g = sp.Graph(sp.targets.ipu_model(tiles=16, num_io_tiles=4))
    compute, io = compute_graph(g), io_graph(g)
    assert (compute.num_tiles, io.num_tiles) == (12, 4)
    x = compute.add_variable(sp.float32, (48,), name="x")
    sp.ops.map_linearly(compute, x)  # 4 elements a tile over the 12 compute tiles
    assert np.unique(g.tile_of(x)).tolist() == list(range(12))
    no_io = sp.Graph(sp.targets.ipu_model(tiles=16))
    assert compute_graph(no_io) is no_io and io_graph(no_io) is no_io


def test_a_lowered_model_computes_on_compute_tiles_and_reads_its_input_from_io_tiles():
    torch = pytest.importorskip("torch")
    import softipu.torch as st

    net = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8)).eval()
    x = torch.randn(4, 32, generator=torch.Generator().manual_seed(0))
    m = st.inference_model(net, st.Options(target=sp.targets.ipu_model(tiles=16, num_io_tiles=4)))
    np.testing.assert_allclose(m(x).numpy(), net(x).detach().numpy(), rtol=1e-5, atol=1e-5)
    ex = m.engine.executable
    vertex_tiles = np.concatenate([g.tiles for c in ex.compute_sets.values() for g in c.groups])
    assert vertex_tiles.max() < 12
    var = next(v for v in m.graph.variables if v.name.startswith("inputs/"))
    mapping = m.graph.resolved_mapping(var.dtype)
    tiles = mapping.tiles_of(np.arange(var.start, var.start + var.numel))
    assert set(np.unique(tiles).tolist()) <= {12, 13, 14, 15}
