"""popops' regrouping of an elementwise operand stored across the output's grouping
(lib/popops/ElementWise.cpp binaryOpGeneral -> rearrange::regroupIfBeneficial): results bitwise,
exchange regions counted by hand (softipu/ops/regroup.py)."""

from __future__ import annotations

import numpy as np
import pytest

import softipu as sp
from softipu import program as P
from softipu.ops import elementwise as ew
from softipu.ops.regroup import GROUP

T4 = sp.targets.ipu_model(tiles=4)


def _case(dtype=sp.float32):
    """in0 (32, 32) row-major, 8 rows a tile; in1 = v.T with v (32, 32) row-major, 8 rows of v
    (8 columns of in1) a tile: in1 runs down its columns, across the output's grouping."""
    g = sp.Graph(T4)
    a = g.add_variable(dtype, (32, 32), name="a")
    v = g.add_variable(dtype, (32, 32), name="v")
    sp.ops.map_linearly(g, a)
    sp.ops.map_linearly(g, v)
    prog = P.Sequence()
    y = ew.add(g, a, v.T, prog)
    return g, a, v, y, prog


@pytest.mark.parametrize("reference", [False, True])
def test_a_column_major_operand_is_regrouped_and_the_sum_is_bitwise(reference):
    assert GROUP == 16
    g, a, v, y, prog = _case()
    eng = sp.Engine(g, [prog], options={"engine.reference": reference})
    rng = np.random.default_rng(0)
    xa, xv = (rng.standard_normal((32, 32)).astype(np.float32) for _ in range(2))
    eng.write_tensor(a, xa)
    eng.write_tensor(v, xv)
    eng.run(0)
    np.testing.assert_array_equal(eng.read_tensor(y), xa + xv.T)
    assert any("regrouped" in var.name for var in g.variables)


def test_regrouped_exchange_regions_by_hand():
    """Blocks of 16 x 16, in order (row block, column block), one a tile (popops spreads the
    transpositions evenly over the tiles): (0, 0) on tile 0, (0, 1) on 1, (1, 0) on 2, (1, 1) on 3.
    Gather into the blocks: each column's 16 rows are one run of v (8 columns a tile): (0, 0) takes
    columns 8-15 from tile 1; (0, 1) columns 16-23 from tile 2 and 24-31 from tile 3; (1, 0)
    columns 0-7 from tile 0 and 8-15 from tile 1; (1, 1) columns 16-23 from tile 2: regions sent +
    received 16, 32, 32, 16. Transposes: on tile. Copy into the output's layout (8 rows a tile), a
    region per row of a block (16 elements): (0, 0) rows 8-15 to tile 1, (0, 1) rows 0-7 to tile 0,
    (1, 0) rows 24-31 to tile 3, (1, 1) rows 16-23 to tile 2: 16 on every tile. The add: on tile.
    Regions per tile 32, 48, 48, 32, at 16 B each. Read in place, the add would take every element
    of in1 from another tile as its own region (stride 32)."""
    g, *_, prog = _case()
    eng = sp.Engine(g, [prog], estimate_only=True)
    code = eng.report.memory_by_category_per_tile()["exchange_code"]
    assert code.tolist() == [32 * 16, 48 * 16, 48 * 16, 32 * 16]


def test_no_regroup_when_the_operand_is_laid_out_like_the_output():
    g = sp.Graph(T4)
    a, b = (g.add_variable(sp.float32, (32, 32), name=n) for n in "ab")
    sp.ops.map_linearly(g, a)
    sp.ops.map_linearly(g, b)
    prog = P.Sequence()
    ew.add(g, a, b, prog)
    assert not any("regrouped" in var.name for var in g.variables)


def test_an_embedding_layer_norm_model_matches_torch_through_the_regroup():
    """A BERT-like embedding sum, layer norm and residual linear: the lookup's output is stored
    column-major, so its layer norm regroups it into whole rows (``x/rows``); outputs as eager."""
    import torch  # noqa: PLC0415

    import softipu.torch as st  # noqa: PLC0415

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(64, 32)
            self.pos = torch.nn.Embedding(16, 32)
            self.norm = torch.nn.LayerNorm(32)
            self.lin = torch.nn.Linear(32, 32)
            self.norm2 = torch.nn.LayerNorm(32)

        def forward(self, ids):
            h = self.norm(self.emb(ids) + self.pos.weight)
            return self.norm2(h + self.lin(h))

    torch.manual_seed(0)
    module = Tiny().eval()
    ids = torch.randint(0, 64, (2, 16))
    model = st.inference_model(module, st.Options(target=sp.targets.ipu_model(tiles=8, bytes_per_tile=1 << 20)))
    got = model(ids)
    with torch.no_grad():
        np.testing.assert_allclose(got.numpy(), module(ids).numpy(), rtol=1e-5, atol=1e-5)
    names = {v.name for c in model._compiled.values() for v in c.engine.executable.variables}
    assert "native_layer_norm/x/rows" in names
