"""A later call's fixed costs cut without changing a bit: the narrow column reduction summed over
a transposed copy, the torch frontend's cycle count and half-input check."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

import softipu as sp
import softipu.poptorch as poptorch
from softipu import program as P
from softipu.codelets.nn._common import ReduceAddColumns
from softipu.frontends.poptorch_executor import _half_inputs


def _sequential(rows: np.ndarray) -> np.ndarray:
    """``sum_s rows[..., s, :]`` in float32, s = 0, 1, ... in order (one add per term)."""
    total = rows[..., 0, :].copy()
    for s in range(1, rows.shape[-2]):
        total += rows[..., s, :]
    return total


@pytest.mark.parametrize(("lead", "terms", "width"), list(itertools.product(
    [(2,), (128,), (3, 5)], [1, 2, 9, 130], [2, 3, 16, 63, 64])))
def test_reduce_add_columns_sums_each_column_in_order(lead, terms, width):
    rng = np.random.default_rng(terms * width)
    # magnitudes over 16 binary orders: a reordered sum differs in its last bits
    partial = (rng.standard_normal(lead + (terms * width,))
               * np.exp2(rng.integers(-8, 8, lead + (terms * width,)))).astype(np.float32)
    out = np.full(lead + (width,), np.nan, np.float32)
    ReduceAddColumns.compute(partial, out)
    want = _sequential(partial.reshape(lead + (terms, width)))
    assert np.array_equal(out, want)


def test_reduce_add_columns_one_wide_sums_as_numpy_sums_a_row():
    rng = np.random.default_rng(0)
    partial = (rng.standard_normal((4, 300)) * np.exp2(rng.integers(-8, 8, (4, 300)))).astype(np.float32)
    out = np.empty((4, 1), np.float32)
    ReduceAddColumns.compute(partial, out)
    assert np.array_equal(out[:, 0], np.array([np.add.reduce(row) for row in partial], np.float32))


def test_reduce_add_columns_writes_a_strided_output():
    rng = np.random.default_rng(1)
    partial = rng.standard_normal((16, 40 * 4)).astype(np.float32)
    whole = np.zeros((16, 8), np.float32)
    ReduceAddColumns.compute(partial, whole[:, ::2])
    assert np.array_equal(whole[:, ::2], _sequential(partial.reshape(16, 40, 4)))
    assert not whole[:, 1::2].any()


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(10, 4)
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.linear(self.embed(ids))


def _opts() -> poptorch.Options:
    return poptorch.Options().setTarget(sp.targets.ipu_model(tiles=4)).logCycleCount(True)


def test_cycle_count_is_the_last_call_after_a_weights_load():
    net = _Net().eval()
    model = poptorch.inferenceModel(net, _opts())
    ids = torch.tensor([[1, 2, 3]])
    model(ids)
    first = model.cycleCount()
    model(ids)
    assert model.cycleCount() == first > 0  # the same program, the same modeled cycles
    runs = model._impl.engine.log.runs
    before = len(runs)
    model.copyWeightsToDevice()  # runs the load program (0) again: not a call
    assert len(runs) == before + 1 and runs[-1][0] == 0
    assert model.cycleCount() == first


def test_half_model_casts_only_float32_inputs():
    net = _Net().half().eval()
    opts = poptorch.Options()
    ids = torch.tensor([[1, 2]])
    args, kwargs = _half_inputs(net, opts, (ids,), {})
    assert args[0] is ids and kwargs == {}  # nothing to cast: the inputs as given
    x = torch.ones(2, 4)
    args, kwargs = _half_inputs(net, opts, (ids,), {"x": x})
    assert args[0] is ids and kwargs["x"].dtype == torch.float16
    args, _ = _half_inputs(_Net().eval(), opts, (x,), {})  # a float32 model keeps float32 inputs
    assert args[0].dtype == torch.float32


class _Twice(sp.Vertex):
    """``acc = 2 acc + 1`` in place and ``out = acc + x`` (a gathered InOut, a scattered Output)."""

    acc = sp.InOut(sp.float32)
    x = sp.Input(sp.float32)
    out = sp.Output(sp.float32)

    @staticmethod
    def compute(acc, x, out):
        acc[...] = acc * 2 + 1
        out[...] = acc + x

    @staticmethod
    def cycles(acc, x, out):
        return 10


@pytest.mark.parametrize("reference", [False, True], ids=["fast", "reference"])
def test_fields_of_short_runs_far_apart_gathered_and_scattered(reference):
    """Vertex i's fields are ``v[:, i, :]`` of (8, 16, 2) variables: pairs of elements 32 apart,
    copied through views bound once into contiguous rows and back (a LayerNorm's cross-tile
    partials are laid out so)."""
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    acc, x, out = (g.add_variable(sp.float32, (8, 16, 2), name=n) for n in ("acc", "x", "out"))
    for v in (acc, x, out):
        sp.ops.map_linearly(g, v)
    cs = g.add_compute_set("twice")
    rows = {name: v.transpose(1, 0, 2).reshape(16, 16) for name, v in (("acc", acc), ("x", x), ("out", out))}
    g.add_vertices(cs, _Twice, rows, np.arange(16) % 4)
    eng = sp.Engine(g, [P.Execute(cs)], {"engine.reference": reference})
    rng = np.random.default_rng(3)
    a0, xs = (rng.standard_normal((8, 16, 2)).astype(np.float32) for _ in range(2))
    eng.write_tensor(acc, a0)
    eng.write_tensor(x, xs)
    want = a0
    for _ in range(2):  # the second run copies through the views bound on the first
        eng.run(0)
        want = want * np.float32(2) + np.float32(1)
        np.testing.assert_array_equal(eng.read_tensor(acc), want)
        np.testing.assert_array_equal(eng.read_tensor(out), want + xs)
    if not reference:
        runners = [job.func for r in eng._interpreter._runners.values() for job in r.jobs]
        assert sum(bound is not None for r in runners for *_, bound in getattr(r, "gathers", ())) == 3


def test_collector_held_off_over_a_torch_compile_and_back_on_after(monkeypatch):
    import gc

    import softipu.torch as st
    from softipu.frontends.torch import runtime

    seen = []
    lower = runtime.lower_program

    def lowering(*args, **kwargs):
        seen.append(gc.isenabled())
        return lower(*args, **kwargs)

    monkeypatch.setattr(runtime, "lower_program", lowering)
    assert gc.isenabled()
    model = st.inference_model(_Net().eval(), st.Options(target=sp.targets.ipu_model(tiles=4)))
    ids = torch.tensor([[1, 2, 3]])
    model(ids)
    assert seen == [False] and gc.isenabled()

    def failing(*args, **kwargs):
        raise RuntimeError("lowering failed")

    monkeypatch.setattr(runtime, "lower_program", failing)
    with pytest.raises(RuntimeError, match="lowering failed"):
        st.inference_model(_Net().eval(), st.Options(target=sp.targets.ipu_model(tiles=4)))(ids)
    assert gc.isenabled()  # on again after a failed compile


@pytest.mark.parametrize(("a", "b", "want"), [
    ((8, 32, 8, 8), (2, 128, 64), (2, 4, 32, 8, 8)),  # an attention head's block, worked by hand
    ((2, 3), (2, 3), (2, 3)),
    ((3, 1, 2), (6,), (3, 2)),
    ((6, 4), (4, 6), None),  # cuts at 4 and 6 elements do not nest
    ((2, 0), (0,), None),
])
def test_common_refinement_splits_both_shapes(a, b, want):
    from softipu.engine.storage import common_refinement

    got = common_refinement(a, b)
    assert got == want
    if got is not None:  # both reshape into it as views, elements in the same order
        for shape in (a, b):
            base = np.arange(math.prod(shape)).reshape(shape)
            assert np.array_equal(base.reshape(got, copy=False).reshape(-1), base.reshape(-1))


@pytest.mark.parametrize("reference", [False, True], ids=["fast", "reference"])
@pytest.mark.parametrize("transposed_dst", [False, True])
def test_copy_from_an_indexed_view_with_a_strided_form(reference, transposed_dst):
    """``dst[...] = x.transpose(1, 0, 2).reshape(16, 16)``: the source's addresses form a strided
    view (pairs 32 apart), copied view to view by the fast engine, into a plain or transposed
    destination."""
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    x = g.add_variable(sp.float32, (8, 16, 2), name="x")
    y = g.add_variable(sp.float32, (16, 16), name="y")
    for v in (x, y):
        sp.ops.map_linearly(g, v)
    src = x.transpose(1, 0, 2).reshape(16, 16)
    dst = y.transpose(1, 0) if transposed_dst else y
    eng = sp.Engine(g, [P.Copy(src, dst)], {"engine.reference": reference})
    for seed in range(2):  # the second run copies through the views bound on the first
        xs = np.random.default_rng(seed).standard_normal((8, 16, 2)).astype(np.float32)
        eng.write_tensor(x, xs)
        eng.run(0)
        want = xs.transpose(1, 0, 2).reshape(16, 16)
        np.testing.assert_array_equal(eng.read_tensor(y), want.T if transposed_dst else want)
    if not reference:
        assert src.index is not None  # an indexed source, as the test means
        assert all(getattr(c, "func", None) is not np.take for c in eng._interpreter._copies.values())
