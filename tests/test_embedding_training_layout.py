"""An embedding table's gradient in training is made in the table's own layout (popops
``multiUpdateAdd`` into a table mapped like ``createSliceableTensor``'s), so its scatter moves whole
rows of the output gradient and the optimizer's update of the table stays on its tiles.

Oracles: eager PyTorch from the same weights and data (weights after a few AdamW steps, 1e-4
relative, on both engines); the exchange bound is worked out by hand from the layout (below).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

import softipu as sp
import softipu.torch as st
from softipu import program as P
from softipu.compiler.exchange import compute_set_transfers, traffic
from softipu.graph.tensor import Tensor
from softipu.ops import elementwise as ew
from softipu.ops.indexing import create_slicable_like, create_slicable_table

VOCAB, HIDDEN, BATCH, SEQ, TILES = 40, 64, 2, 8, 8


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.words = nn.Embedding(VOCAB, HIDDEN)
        self.head = nn.Linear(HIDDEN, VOCAB)

    def forward(self, ids, labels):
        return F.cross_entropy(self.head(torch.tanh(self.words(ids))).reshape(-1, VOCAB), labels.reshape(-1))


def data(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=g)
    ids[0, :3] = 5  # a repeated row: its gradient rows all add
    return ids, torch.randint(0, VOCAB, (BATCH, SEQ), generator=g)


def train(engine_options: dict, steps: int = 3):
    torch.manual_seed(0)
    module = Tiny()
    eager = copy.deepcopy(module)
    target = sp.targets.ipu_model(tiles=TILES, bytes_per_tile=256 * 1024)
    model = st.training_model(module, torch.optim.AdamW(module.parameters(), lr=1e-2),
                              st.Options(target=target, engine_options=engine_options))
    opt = torch.optim.AdamW(eager.parameters(), lr=1e-2)
    for i in range(steps):
        ids, labels = data(i)
        ipu = float(model(ids, labels).detach())
        opt.zero_grad()
        ref = eager(ids, labels)
        ref.backward()
        opt.step()
        assert ipu == pytest.approx(float(ref), rel=1e-4), f"step {i}"
    return module, eager, model


@pytest.fixture(scope="module")
def trained():
    return train({})


@pytest.mark.parametrize("engine", ["fast", "reference"])
def test_embedding_weights_after_adamw_steps_match_eager(engine, trained):
    module, eager, _ = trained if engine == "fast" else train({"engine.reference": True})
    got = dict(module.named_parameters())
    for name, ref in eager.named_parameters():
        err = float((got[name].detach() - ref.detach()).abs().max() / ref.detach().abs().max())
        assert err <= 1e-4, f"{name}: {err}"


def _grad_compute_sets(model):
    ex = model.engine.executable
    return ex, [c for c in ex.compute_sets.values() if c.compute_set.name == "bwd/index_put"]


def _whole(graph, var) -> Tensor:
    return Tensor(graph, var.dtype, var.shape, var.start, (var.shape[1], 1))


def test_embedding_gradient_is_laid_out_like_the_table(trained):
    _, _, model = trained
    graph = model.lowered.graph
    weight = graph.variable_of(model.lowered.params["words.weight"])
    grads = [v for v in graph.variables if "index_put" in v.name and v.name.endswith("/grad")]
    assert len(grads) == 1, [v.name for v in graph.variables if "index_put" in v.name]
    # Both stored transposed ([columns, rows]), each tile holding whole columns, the same ones.
    assert weight.shape == grads[0].shape == (HIDDEN, VOCAB)
    w_tiles = np.asarray(graph.tile_of(_whole(graph, weight)))
    g_tiles = np.asarray(graph.tile_of(_whole(graph, grads[0])))
    assert (w_tiles == w_tiles[:, :1]).all() and sorted(set(w_tiles[:, 0].tolist())) == list(range(TILES))
    np.testing.assert_array_equal(g_tiles, w_tiles)


def test_embedding_gradient_moves_rows_not_elements(trained):
    _, _, model = trained
    ex, found = _grad_compute_sets(model)
    moved = traffic(compute_set_transfers(found[0], ex.mappings), ex.target)
    # Hand-worked: each of the 8 tiles holds a block of 64 / 8 = 8 columns of the gradient and
    # receives, per looked-up row (2 x 8 = 16), that row's 8 columns: one region a row, 16 in all,
    # plus the 16 indices (at most one region each): <= 32. Element by element it would be
    # 16 x 8 = 128 update regions a tile.
    n = BATCH * SEQ
    assert int(moved.recv_regions.max()) <= 2 * n, moved.recv_regions.tolist()


def test_embedding_optimizer_state_is_laid_out_like_the_table(trained):
    _, _, model = trained
    graph, low = model.lowered.graph, model.lowered
    weight = low.params["words.weight"]
    slots = [t for (p, _), t in low.state.items() if p == "words.weight"]
    assert len(slots) == 2  # AdamW's two moments
    for t in slots:  # the update then reads and writes them on the table's tiles
        assert t.shape == weight.shape
        np.testing.assert_array_equal(np.asarray(graph.tile_of(t)), np.asarray(graph.tile_of(weight)))


@pytest.mark.parametrize("reference", [False, True])
def test_elementwise_over_transposed_tables_keeps_their_layout(reference):
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    prog = P.Sequence()
    a = create_slicable_table(g, (6, 8), sp.float32, name="a")
    b = create_slicable_like(g, a, sp.float32, "b")
    lr = g.add_variable(sp.float32, (), name="lr")
    g.set_tile_mapping(lr, 0)
    e = ew.E
    out = ew.map(g, e.sub(e.input(0), e.mul(e.input(2), e.input(1))), [a, b, lr], prog, name="upd")
    ew.add_(g, a, b, prog, name="inplace")
    assert out.strides == (1, 6)  # stored transposed, as the tables
    np.testing.assert_array_equal(np.asarray(g.tile_of(out)), np.asarray(g.tile_of(a)))
    eng = sp.Engine(g, [prog], options={"engine.reference": reference})
    av, bv = np.arange(48.0).reshape(6, 8), np.arange(48.0).reshape(6, 8)[::-1] * 0.5
    eng.write_tensor(a, av)
    eng.write_tensor(b, bv)
    eng.write_tensor(lr, 0.25)
    eng.run(0)
    np.testing.assert_allclose(eng.read_tensor(out), av - 0.25 * bv)
    np.testing.assert_allclose(eng.read_tensor(a), av + bv)


def test_slicable_like_refuses_tables_split_inside_columns():
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    rhs = g.add_variable(sp.float32, (8, 6), name="rhs")  # stored transposed, but row blocks a tile
    for k in range(4):
        g.set_tile_mapping(rhs[:, 0:3][2 * k:2 * k + 2], k)
        g.set_tile_mapping(rhs[:, 3:6][2 * k:2 * k + 2], (k + 1) % 4)
    assert create_slicable_like(g, rhs.T, sp.float32, "m") is None
    assert create_slicable_like(g, g.add_variable(sp.float32, (6, 8)), sp.float32, "m") is None


def test_embedding_with_gradient_accumulation_matches_eager_on_the_whole_batch():
    torch.manual_seed(0)
    module = Tiny()
    eager = copy.deepcopy(module)
    target = sp.targets.ipu_model(tiles=TILES, bytes_per_tile=256 * 1024)
    model = st.training_model(module, torch.optim.AdamW(module.parameters(), lr=1e-2),
                              st.Options(target=target, gradient_accumulation=2))
    opt = torch.optim.AdamW(eager.parameters(), lr=1e-2)
    for i in range(2):
        a, b = data(i), data(10 + i)
        ids, labels = torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]])
        model(ids, labels)
        opt.zero_grad()
        eager(ids, labels).backward()
        opt.step()
    got = dict(module.named_parameters())
    for name, ref in eager.named_parameters():
        err = float((got[name].detach() - ref.detach()).abs().max() / ref.detach().abs().max())
        assert err <= 1e-4, f"{name}: {err}"
    graph = model.lowered.graph
    accum = [v for v in graph.variables if v.name == "accum/words.weight"]
    weight = graph.variable_of(model.lowered.params["words.weight"])
    assert len(accum) == 1 and accum[0].shape == weight.shape == (HIDDEN, VOCAB)
    np.testing.assert_array_equal(np.asarray(graph.tile_of(_whole(graph, accum[0]))),
                                  np.asarray(graph.tile_of(_whole(graph, weight))))
