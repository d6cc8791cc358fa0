"""PyTorch's OpInfo samples through softipu: a fixed subset of op_db rerun against the stored sweep
(docs/opinfo_results.json, the source of the OpInfo table in docs/torch_coverage.md), and the
sweep's own comparison and classification rules."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("expecttest", reason="op_db imports expecttest (a dev dependency)")

import softipu.torch as st  # noqa: E402
from softipu.frontends.torch import opinfo as oi  # noqa: E402
from softipu.frontends.torch.coverage import OPINFO_RESULTS, markdown, opinfo_results  # noqa: E402
from softipu.frontends.torch.opinfo import OpResult, Status  # noqa: E402
from softipu.ops import elementwise as ew  # noqa: E402

# At least one op of each lowering family (pointwise, reduce, shape, indexing, nn, random,
# type conversion, special functions, linalg, windows), plus ops the table says fail or lack a
# lowering, so a change of either shows.
# The full sweep takes many minutes; this subset takes well under one.
SUBSET = (
    "add", "div.floor_rounding", "exp", "sigmoid", "where", "clamp", "pow", "bitwise_and",
    "sum", "mean", "amax", "argmax", "var", "softmax", "cumsum",
    "cat", "permute", "flip", "expand", "narrow", "roll",
    "index_select", "gather", "scatter_add", "take_along_dim", "nn.functional.embedding",
    "nn.functional.conv2d", "nn.functional.linear", "nn.functional.max_pool2d", "nn.functional.layer_norm",
    "nn.functional.avg_pool1d", "nn.functional.dropout", "bernoulli", "to",
    "fmax", "cummax", "special.bessel_j0", "linalg.cholesky", "scatter_reduce.amax",
    "nn.functional.conv_transpose2d", "nn.functional.max_pool3d", "uniform",
    "nn.functional.linear_cross_entropy.chunked", "fft.irfft",
)


@pytest.fixture(scope="module")
def stored():
    header, rows = opinfo_results()
    return header, {r.name: r for r in rows}


def test_the_stored_sweep_covers_every_opinfo_of_this_torch(stored):
    header, rows = stored
    assert header["torch"] == torch.__version__.split("+")[0], (
        "docs/opinfo_results.json was made with another torch: run "
        "`python -m softipu.frontends.torch.opinfo > docs/opinfo_results.json`")
    assert header["dtypes"] == [str(d).removeprefix("torch.") for d in oi.DTYPES]
    assert header["samples_per_op"] == oi.SAMPLES_PER_OP and header["target"] == oi.TARGET.name
    assert list(rows) == [oi.full_name(o) for o in oi.opinfos()]
    assert set(SUBSET) <= set(rows)


@pytest.mark.parametrize("name", SUBSET)
def test_subset_matches_the_stored_row(name, stored):
    """Every op of the subset gives the stored result: an op the table says passes must pass."""
    want = stored[1][name]
    got = oi.run_op(oi.opinfos([name])[0])
    if want.status is Status.PASSED:
        assert got.status is Status.PASSED, f"{name} passes in docs/torch_coverage.md but now: {got.reason}"
    assert got == want, (
        f"{name} differs from docs/opinfo_results.json:\n  now    {got}\n  stored {want}\nrun `python -m "
        "softipu.frontends.torch.opinfo > docs/opinfo_results.json` and regenerate docs/torch_coverage.md")


def test_the_docs_show_the_stored_figures(stored):
    rows = list(stored[1].values())
    passed = sum(r.status is Status.PASSED for r in rows)
    partial = sum(r.status is Status.PARTIAL for r in rows)
    doc = (OPINFO_RESULTS.parent / "torch_coverage.md").read_text()
    assert f"**{passed} of {len(rows)} OpInfo ops pass every sample, {partial} partly**" in doc
    assert doc == markdown(), "regenerate: python -m softipu.frontends.torch.coverage > docs/torch_coverage.md"


def test_a_wrong_lowering_fails_its_op():
    """A lowering that gives the wrong answer turns a passing op into a failed one."""
    original = st.LOWERINGS["aten::neg"]
    st.register_lowering("aten::neg", lambda ctx, node, x: ew.abs(ctx.graph, x, ctx.prog, name=ctx.name),
                         override=True)
    try:
        result = oi.run_op(oi.opinfos(["neg"])[0], samples_per_op=1)
    finally:
        st.LOWERINGS.register("aten::neg", original, override=True)
    assert result.status is Status.FAILED and result.total == 1
    assert result.reason.startswith("wrong result: max error at flat index")


@pytest.mark.parametrize("name, dtype", [
    ("isnan", torch.bool), ("sign", torch.bool), ("max.reduction_with_dim", torch.bool), ("msort", torch.bool),
])
def test_bool_samples_the_sweep_found_broken(name, dtype):
    """Lowerings that took bool inputs to library ops that take numbers only (found by
    ``--dtypes bool``)."""
    result = oi.run_op(oi.opinfos([name])[0], dtypes=(dtype,))
    assert result.status is Status.PASSED, result.reason


def test_integer_average_pooling_is_refused_before_compiling():
    result = oi.run_op(oi.opinfos(["nn.functional.avg_pool1d"])[0], samples_per_op=1, dtypes=(torch.int64,))
    assert result.status is Status.UNSUPPORTED
    assert result.missing == ("aten::avg_pool2d (int64 input: average pooling is lowered for floats only)",)


def test_comparison_rules():
    nan = float("nan")
    a = torch.tensor([1.0, nan, 3.0])
    assert oi._mismatch(a + 1e-6, a, values=True) == ""
    assert "NaN differs at flat index 2" in oi._mismatch(torch.tensor([1.0, nan, nan]), a, values=True)
    assert "max error at flat index 0" in oi._mismatch(a + torch.tensor([1e-2, 0, 0]), a, values=True)
    assert oi._mismatch(torch.tensor([1, 2]), torch.tensor([1, 3]), values=True)  # integers: exact
    assert oi._mismatch(torch.tensor([1, 2]), torch.tensor([1, 3]), values=False) == ""  # random ops
    assert "got int32[2], eager int64[2]" in oi._mismatch(torch.tensor([1, 2], dtype=torch.int32),
                                                          torch.tensor([1, 2]), values=False)
    assert "1 outputs, eager has 2" in oi._mismatch((a,), (a, a), values=True)
    inf = torch.tensor([float("inf"), -1.0])
    assert oi._mismatch(inf.clone(), inf, values=True) == ""


def test_classification():
    P, W, U, X, S = (oi._Outcome.PASS, oi._Outcome.WRONG, oi._Outcome.UNSUPPORTED,
                     oi._Outcome.EXPORT_FAILED, oi._Outcome.SKIP)

    def classify(*outcomes):
        return oi._classify("op", "float32", [(o, o.value, ("aten::x",) if o is U else ())
                                             for o in outcomes])

    assert classify(P, P, X) == OpResult("op", Status.PASSED, "float32", 2, 2)
    r = classify(P, U, W)
    assert (r.status, r.passed, r.total, r.reason, r.missing) == (
        Status.PARTIAL, 1, 3, "unsupported: unsupported", ("aten::x",))
    assert classify(U, W).status is Status.FAILED and classify(U, W).reason == "wrong result: wrong result"
    assert classify(U, X).status is Status.UNSUPPORTED
    r = classify(S, X)
    assert (r.status, r.total, r.reason) == (Status.EXPORT_FAILED, 0, "export failed: export failed")
    assert classify(S).status is Status.SKIPPED
    with pytest.raises(ValueError, match="status passed but 1 of 2"):
        OpResult("op", Status.PASSED, passed=1, total=2)


def test_docstring_example():
    import doctest

    assert doctest.testmod(oi).failed == 0


def test_results_round_trip_through_json():
    rows = [OpResult("a", Status.PASSED, "float32", 3, 3),
            OpResult("b", Status.UNSUPPORTED, "int64", 0, 2, "unsupported: x", ("aten::x",))]
    header, back = oi.from_json(oi.to_json(rows, seconds=12.3))
    assert back == rows and header["seconds"] == 12 and header["samples_per_op"] == oi.SAMPLES_PER_OP
