"""A training graph's linear weights laid out for their forward matmul, their optimizer state
laid out as the weight, and an fp16 layer norm's statistics written in fp16.

* A linear weight whose input gradient the backward computes (``permute(permute(W))``) is laid
  out as ``create_matmul_input_rhs`` lays out its forward matmul's RHS when
  ``lowering.LINEAR_WEIGHTS_READ_BACK_AS_RHS`` is on (poplin's ``createMatMulInputRHS``, PopART's
  creator for a weight feeding a matmul); the forward matmul then copies nothing of it. Oracle:
  each element's tile from ``create_matmul_input_rhs`` on a fresh graph, and the step's copies.
* A weight laid out for its matmul gets its optimizer state laid out as itself (Poplar's
  ``Graph::clone``), and its pointwise update runs over the variables in memory order after one
  rearranging copy of the gradient. Oracles: the tile of every state element equals the weight's;
  eager torch (1e-4); the logical-view update (the same bits: elementwise arithmetic).
* ``nn.layer_norm(..., stats_dtype=float16)`` returns the fp32 statistics rounded once to
  fp16 (numpy's round to nearest of the fp32 ones), on the row and on the split path, and an fp16
  model's forward then has no cast compute set after its layer norms.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

import softipu as sp
import softipu.torch as st
from _torch_models import assert_matches_eager_adamw
from softipu import program as P
from softipu.frontends.torch.training import lowering
from softipu.ops import nn
from softipu.ops.matmul import create_matmul_input_rhs

TARGET = sp.targets.ipu_model(tiles=16)
BATCH, IN, HID, OUT = 32, 64, 128, 32


class Mlp(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up, self.down = torch.nn.Linear(IN, HID), torch.nn.Linear(HID, OUT)

    def forward(self, x, y):
        return F.mse_loss(self.down(F.relu(self.up(x))), y)


def _data(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    return torch.randn(BATCH, IN, generator=g), torch.randn(BATCH, OUT, generator=g)


def _train(steps: int = 1):
    torch.manual_seed(0)
    module = Mlp()
    eager = copy.deepcopy(module)
    model = st.training_model(module, torch.optim.AdamW(module.parameters(), lr=1e-2), st.Options(target=TARGET))
    losses = [float(model(*_data(i)).detach()) for i in range(steps)]
    weights = [p.detach().numpy().copy() for p in module.parameters()]
    return model, eager, losses, weights


def _rhs_tiles(rows: int, k: int, n: int) -> np.ndarray:
    """The tile of each element of W (n, k) when laid out as ``x[rows, k] @ W.T``'s RHS."""
    g = sp.Graph(TARGET)
    rhs = create_matmul_input_rhs(g, sp.float32, (rows, k), (k, n), name="rhs",
                                  options=st.Options(target=TARGET).matmul_options(half=False))
    return g.tile_of(rhs).T


def _weight_copies(model, weight: str) -> list[dict]:
    """The forward's copies of the weight (its matmul's rearrangement into the plan's layout)."""
    return [s for s in model.report.steps if s["name"].startswith(f"Copy weights/{weight}")
            and " -> fwd/" in s["name"]]


@pytest.fixture
def read_back_as_rhs(monkeypatch):
    monkeypatch.setattr(lowering, "LINEAR_WEIGHTS_READ_BACK_AS_RHS", True)


def test_a_weight_the_backward_reads_is_laid_out_as_its_forward_matmuls_rhs(read_back_as_rhs):
    model, *_ = _train()
    low = model.lowered
    w = low.params["down.weight"]  # read again by the backward (the input gradient of relu(up(x)))
    np.testing.assert_array_equal(low.graph.tile_of(w), _rhs_tiles(BATCH, HID, OUT))
    assert _weight_copies(model, "down.weight") == []  # the forward matmul uses it in place
    backward = [s for s in model.report.steps if s["name"].startswith("Copy weights/down.weight -> bwd/")
                or s["name"].startswith("Copy weights/down.weight[") and " -> bwd/" in s["name"]]
    assert backward  # the input gradient's matmul rearranges it instead (as on the hardware)


def test_by_default_only_a_weight_read_by_the_forward_alone_is_laid_out_for_its_matmul():
    model, *_ = _train()
    low = model.lowered
    np.testing.assert_array_equal(low.graph.tile_of(low.params["up.weight"]), _rhs_tiles(BATCH, IN, HID))
    assert not np.array_equal(low.graph.tile_of(low.params["down.weight"]), _rhs_tiles(BATCH, HID, OUT))
    copies = _weight_copies(model, "down.weight")  # rearranged into the forward plan's layout
    assert copies and all(s["bytes_exchanged"] > 0 for s in copies)


@pytest.mark.parametrize("flag", [False, True])
def test_the_optimizer_state_of_a_matmul_laid_weight_is_laid_out_as_the_weight(monkeypatch, flag):
    monkeypatch.setattr(lowering, "LINEAR_WEIGHTS_READ_BACK_AS_RHS", flag)
    model, eager, losses, weights = _train(steps=4)
    low = model.lowered
    laid = ["up.weight", "down.weight"] if flag else ["up.weight"]
    for name in laid:
        tiles = low.graph.tile_of(low.params[name])
        for slot in ("exp_avg", "exp_avg_sq"):
            np.testing.assert_array_equal(low.graph.tile_of(low.state[(name, slot)]), tiles)
    assert_matches_eager_adamw(eager, _data, losses, weights)


@pytest.mark.parametrize("flag", [False, True])
def test_the_update_in_memory_order_gives_the_bits_of_the_update_on_the_logical_views(monkeypatch, flag):
    monkeypatch.setattr(lowering, "LINEAR_WEIGHTS_READ_BACK_AS_RHS", flag)
    _, _, losses, weights = _train(steps=4)
    monkeypatch.setattr(lowering._TrainLowerer, "_in_storage_order", lambda self, *a: None)
    _, _, ref_losses, ref_weights = _train(steps=4)
    assert np.array(losses, np.float32).tobytes() == np.array(ref_losses, np.float32).tobytes()
    for w, r in zip(weights, ref_weights, strict=True):
        assert w.tobytes() == r.tobytes()


# -- layer norm statistics in fp16 -------------------------------------------------------------------
def _layer_norm(x: np.ndarray, transposed: bool, stats_dtype):
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    rows, n = x.shape
    var = g.add_variable(sp.float16, (n, rows) if transposed else (rows, n), name="x")
    sp.ops.map_linearly(g, var)
    t = var.T if transposed else var
    prog = P.Sequence()
    out, mean, inv_std = nn.layer_norm(g, t, None, None, prog, eps=1e-5, stats_dtype=stats_dtype)
    eng = sp.Engine(g, [prog])
    eng.write_tensor(var, x.T if transposed else x)
    eng.run(0)
    return eng.read_tensor(out), eng.read_tensor(mean), eng.read_tensor(inv_std), mean.dtype


@pytest.mark.parametrize("transposed", [False, True])  # the row vertices; the split path (rows scattered)
def test_fp16_statistics_are_the_fp32_ones_rounded_once(transposed):
    x = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float16) * 3 + 1
    out32, mean32, inv32, d32 = _layer_norm(x, transposed, None)
    out16, mean16, inv16, d16 = _layer_norm(x, transposed, sp.float16)
    assert (d32, d16) == (sp.float32, sp.float16)
    assert out16.tobytes() == out32.tobytes()  # normalised with the fp32 statistics either way
    assert mean16.tobytes() == mean32.astype(np.float16).tobytes()
    assert inv16.tobytes() == inv32.astype(np.float16).tobytes()
    xf = x.astype(np.float64)
    np.testing.assert_allclose(mean16, xf.mean(-1), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(inv16, 1 / np.sqrt(xf.var(-1) + 1e-5), rtol=1e-3)


class Normed(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.words, self.up = torch.nn.Embedding(OUT, IN), torch.nn.Linear(IN, HID)
        self.norm, self.head = torch.nn.LayerNorm(HID), torch.nn.Linear(HID, OUT)

    def forward(self, ids, labels):
        return F.cross_entropy(self.head(self.norm(self.up(self.words(ids)))), labels)


def test_an_fp16_models_layer_norm_statistics_need_no_cast():
    torch.manual_seed(0)
    module = Normed().half()
    model = st.training_model(module, torch.optim.AdamW(module.parameters(), lr=1e-2), st.Options(target=TARGET))
    g = torch.Generator().manual_seed(0)
    model(torch.randint(0, OUT, (BATCH,), generator=g), torch.randint(0, OUT, (BATCH,), generator=g))
    names = [s["name"] for s in model.report.steps]
    assert "fwd/native_layer_norm" in names  # the row vertices, writing the fp16 statistics
    assert not [n for n in names if n.startswith("fwd/native_layer_norm/")]
