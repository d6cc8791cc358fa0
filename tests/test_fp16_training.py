"""fp16 training numerics: floating-point exceptions (``debug.floatingPointExceptions``), stochastic
rounding as a device mode (``prng.enableStochasticRounding``/``prng.seed``) and PopART's automatic
loss scaling rule (frontends/torch/optim/als.py). Oracles: IEEE facts worked by hand, numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import softipu as sp
import softipu.poptorch as poptorch
from softipu import program as P
from softipu.frontends.torch.optim import LossScalingSettings, OptimizerError, update_loss_scale
from softipu.frontends.torch.optim.als import scale_from_counts, upper_bin_count, upper_bin_edge
from softipu.ops import elementwise as ew

ENGINES = pytest.mark.parametrize("reference", [False, True], ids=["fast", "reference"])
TRAPS = {"debug.floatingPointExceptions": True}


def _var(g: sp.Graph, dtype: sp.DType, shape, name: str) -> sp.Tensor:
    t = g.add_variable(dtype, shape, name=name)
    sp.ops.map_linearly(g, t)
    return t


def _engine(g, prog, reference, **options):
    return sp.Engine(g, [prog], {"engine.reference": reference, **options})


# -- floating-point exceptions -------------------------------------------------------------------------
@ENGINES
def test_overflow_traps_naming_the_op_and_the_line(reference):
    g, prog = sp.Graph(sp.targets.ipu_model(tiles=4)), P.Sequence()
    x = _var(g, sp.float32, (8,), "x")
    y = ew.mul(g, x, 1e30, prog, name="scale_up")  # the line the error must name
    line = f"test_fp16_training.py:{test_overflow_traps_naming_the_op_and_the_line.__code__.co_firstlineno + 4}"
    values = np.array([1, 2, 3, 4e8, 5, 6, 7, 8], np.float32)  # 4e38 > FLT_MAX
    loose = _engine(g, prog, reference)
    loose.write_tensor(x, values)
    loose.run(0)
    assert np.isinf(loose.read_tensor(y)[3])  # the hardware's default: inf flows on
    strict = _engine(g, prog, reference, **TRAPS)
    strict.write_tensor(x, values)
    with pytest.raises(sp.CodeletError, match=r"floating-point exception \(overflow\)") as info:
        strict.run(0)
    message = str(info.value)
    assert "scale_up" in message and line in message and "debug.floatingPointExceptions" in message
    assert isinstance(info.value.__cause__, FloatingPointError)
    strict.write_tensor(x, values / 1e9)
    strict.run(0)  # finite results run on


@ENGINES
@pytest.mark.parametrize(("num", "den", "kind"), [(0.0, 0.0, "invalid operation"), (1.0, 0.0, "divide by zero")])
def test_invalid_and_divide_by_zero_trap(reference, num, den, kind):
    g, prog = sp.Graph(sp.targets.ipu_model(tiles=2)), P.Sequence()
    a, b = _var(g, sp.float32, (4,), "a"), _var(g, sp.float32, (4,), "b")
    ew.div(g, a, b, prog, name="ratio")
    eng = _engine(g, prog, reference, **TRAPS)
    eng.write_tensor(a, [num, 1, 2, 3])
    eng.write_tensor(b, [den, 1, 1, 1])
    with pytest.raises(sp.CodeletError, match=rf"\({kind}\).*ratio"):
        eng.run(0)


@ENGINES
def test_fp16_cast_overflow_traps_but_underflow_does_not(reference):
    """An fp16 cast past 65504 overflows; fp16 products below the smallest subnormal underflow to 0,
    which the IPU never traps (fp16 gradients underflow routinely)."""
    g, prog = sp.Graph(sp.targets.ipu_model(tiles=2)), P.Sequence()
    x = _var(g, sp.float32, (4,), "x")
    h = _var(g, sp.float16, (4,), "h")
    small = ew.mul(g, h, h, prog, name="tiny_product")
    half = ew.cast(g, x, sp.float16, prog, name="to_half")
    eng = _engine(g, prog, reference, **TRAPS)
    eng.write_tensor(h, np.full(4, 1e-4, np.float16))  # 1e-8: below 2**-24
    eng.write_tensor(x, [1, 2, 3, 4])
    eng.run(0)
    np.testing.assert_array_equal(eng.read_tensor(small), np.zeros(4, np.float16))
    np.testing.assert_array_equal(eng.read_tensor(half), [1, 2, 3, 4])
    eng.write_tensor(x, [1, 2, 70000, 4])
    with pytest.raises(sp.CodeletError, match=r"\(overflow\).*to_half"):
        eng.run(0)


@ENGINES
def test_selecting_a_masked_minus_inf_does_not_trap(reference):
    """A causal mask's -inf only passes through a select: nothing signals, as on the IPU."""
    g, prog = sp.Graph(sp.targets.ipu_model(tiles=2)), P.Sequence()
    x, m = _var(g, sp.float32, (4,), "x"), _var(g, sp.bool_, (4,), "m")
    y = ew.where(g, m, x, float("-inf"), prog)
    eng = _engine(g, prog, reference, **TRAPS)
    eng.write_tensor(x, [1, 2, 3, 4])
    eng.write_tensor(m, [True, False, True, False])
    eng.run(0)
    np.testing.assert_array_equal(eng.read_tensor(y), [1, -np.inf, 3, -np.inf])


@ENGINES
def test_sigmoid_of_a_large_negative_does_not_trap(reference):
    """sigmoid(-100) is 0 exactly (1 / (1 + e^100)): no IPU trap, though e^100 overflows float32."""
    g, prog = sp.Graph(sp.targets.ipu_model(tiles=2)), P.Sequence()
    x = _var(g, sp.float32, (3,), "x")
    y = ew.sigmoid(g, x, prog)
    eng = _engine(g, prog, reference, **TRAPS)
    eng.write_tensor(x, [-100, 0, 100])
    eng.run(0)
    np.testing.assert_array_equal(eng.read_tensor(y), [0, 0.5, 1])


class _Exploding(torch.nn.Module):
    def forward(self, x):
        y = x * 2
        return torch.exp(y)  # overflows float32 for x > 44.4


def test_poptorch_precision_option_raises_at_the_model_line():
    opts = poptorch.Options()
    opts.Precision.enableFloatingPointExceptions(True)
    model = poptorch.inferenceModel(_Exploding(), opts)
    np.testing.assert_allclose(model(torch.ones(4)).numpy(), np.exp(2.0) * np.ones(4), rtol=1e-6)
    with pytest.raises(sp.CodeletError, match=r"\(overflow\)") as info:
        model(torch.full((4,), 60.0))
    line = _Exploding.forward.__code__.co_firstlineno + 2
    assert f"test_fp16_training.py:{line}" in str(info.value)


# -- stochastic rounding -------------------------------------------------------------------------------
def _cast_graph(n: int, tiles: int = 4, replicas: int = 1):
    g, prog = sp.Graph(sp.targets.ipu_model(tiles=tiles), replication_factor=replicas), P.Sequence()
    x = _var(g, sp.float32, (n,), "x")
    return g, prog, x, ew.cast(g, x, sp.float16, prog)


def _sr_runs(values, runs=1, reference=False, seed=3, sr=True, tiles=4):
    g, prog, x, y = _cast_graph(values.size, tiles)
    options = {"prng.enableStochasticRounding": True, "prng.seed": seed} if sr else {}
    eng = _engine(g, prog, reference, **options)
    eng.write_tensor(x, values)
    out = []
    for _ in range(runs):
        eng.run(0)
        out.append(eng.read_tensor(y))
    return out


def test_stochastic_rounding_is_unbiased_and_round_to_nearest_when_off():
    x = np.float32(1 + 2**-12)  # a quarter of the way from 1 to its upper fp16 neighbour 1 + 2**-10
    values = np.full(10_000, x, np.float32)
    (got,) = _sr_runs(values)
    assert set(np.unique(got).tolist()) == {1.0, 1 + 2**-10}
    sigma = 2**-10 * np.sqrt(0.25 * 0.75 / values.size)
    assert abs(got.astype(np.float64).mean() - float(x)) < 4 * sigma
    (nearest,) = _sr_runs(values, sr=False)
    np.testing.assert_array_equal(nearest, np.ones(10_000, np.float16))
    exact = np.array([0.5, -2.0, 65504.0, np.inf, np.nan, 0.0], np.float32)  # representable: unchanged
    np.testing.assert_array_equal(_sr_runs(exact)[0], exact.astype(np.float16))


def test_stochastic_rounding_draws_afresh_each_step_and_repeats_by_seed():
    values = np.random.default_rng(0).standard_normal(3_000).astype(np.float32)
    first = _sr_runs(values, runs=2, seed=11)
    again = _sr_runs(values, runs=2, seed=11)
    other = _sr_runs(values, runs=1, seed=12)
    assert first[0].tobytes() == again[0].tobytes() and first[1].tobytes() == again[1].tobytes()
    assert first[0].tobytes() != first[1].tobytes()  # a new step rounds with new bits
    assert first[0].tobytes() != other[0].tobytes()
    # each element is one of its two fp16 neighbours
    lo = values.astype(np.float16)
    step = np.abs(np.nextafter(lo, np.float16(np.inf)).astype(np.float32) - lo.astype(np.float32))
    assert np.all(np.abs(first[0].astype(np.float32) - values) <= step)


def test_stochastic_rounding_fast_and_reference_agree_bitwise():
    values = np.random.default_rng(1).standard_normal(600).astype(np.float32)
    fast = _sr_runs(values, runs=2, reference=False, tiles=3)
    ref = _sr_runs(values, runs=2, reference=True, tiles=3)
    assert [a.tobytes() for a in fast] == [b.tobytes() for b in ref]


def test_stochastic_rounding_with_replicas_rounds_each_replica_on_its_own():
    g, prog, x, y = _cast_graph(2_000, tiles=2, replicas=2)
    results = []
    for reference in (False, True):
        eng = _engine(g, prog, reference, **{"prng.enableStochasticRounding": True, "prng.seed": 5})
        eng.write_tensor(x, np.full(2_000, 1 + 2**-12, np.float32))
        eng.run(0)
        results.append(eng.read_tensor(y))
    assert results[0].shape == (2, 2_000) and results[0].tobytes() == results[1].tobytes()
    assert results[0][0].tobytes() != results[0][1].tobytes()


@pytest.mark.parametrize(("m", "k", "n", "tiles", "runs"), [(50, 2, 200, 4, 1), (16, 1024, 16, 16, 8)],
                         ids=["one_partial", "16_partials"])
def test_stochastic_rounding_of_fp16_matmul_outputs(m, k, n, tiles, runs):
    """An fp16 matmul accumulates in float32 partials; each float16 output rounds stochastically
    from the float32 sum: ones @ [1, 2**-12, 0, ...] is 1 + 2**-12 exactly, a quarter of an fp16
    ulp (with K split over tiles the partials are added by ReducePartials first)."""
    g, prog = sp.Graph(sp.targets.ipu_model(tiles=tiles, bytes_per_tile=1 << 20)), P.Sequence()
    a, b = _var(g, sp.float16, (m, k), "a"), _var(g, sp.float16, (k, n), "b")
    y = sp.ops.matmul(g, a, b, prog)
    col = np.zeros(k, np.float16)
    col[[0, k - 1]] = [1, 2**-12]  # the two terms land in different partials when K is split
    got = []
    for reference, sr in ((False, False), (False, True), (True, True)):
        eng = _engine(g, prog, reference, **({"prng.enableStochasticRounding": True} if sr else {}))
        eng.write_tensor(a, np.ones((m, k), np.float16))
        eng.write_tensor(b, np.repeat(col[:, None], n, axis=1))
        runs_out = []
        for _ in range(runs if sr else 1):
            eng.run(0)
            runs_out.append(eng.read_tensor(y))
        got.append(np.stack(runs_out))
    np.testing.assert_array_equal(got[0], np.ones((1, m, n), np.float16))  # round to nearest: 1
    assert got[1].tobytes() == got[2].tobytes()  # fast == reference
    assert set(np.unique(got[1]).tolist()) == {1.0, 1 + 2**-10}
    sigma = 2**-10 * np.sqrt(0.25 * 0.75 / got[1].size)
    assert abs(got[1].astype(np.float64).mean() - (1 + 2**-12)) < 4 * sigma


def test_stochastic_rounding_options_are_checked():
    g, prog, _, _ = _cast_graph(4)
    with pytest.raises(sp.OptionError, match="prng.seed"):
        sp.Engine(g, [prog], {"prng.seed": -1})
    with pytest.raises(sp.OptionError, match="bool"):
        sp.Engine(g, [prog], {"prng.enableStochasticRounding": 1})


# -- automatic loss scaling (PopART's rule) ------------------------------------------------------------
def _numpy_als(scale, grads, step, period=1, loc=0.125, t=1e-7):
    """PopART's LossScaleUpdate worked in numpy: counts of |g| >= 65535 * loc (fp16), float32 compare."""
    if step % period:
        return scale
    upper = sum(int(np.count_nonzero(np.abs(g.astype(np.float32)) >= 65535 * loc)) for g in grads)
    lower = sum(g.size for g in grads) - upper
    down = np.float32(upper) > np.float32(lower) * np.float32(t / (1 - t))
    return scale / 2 if down else scale * 2


def _grad_sequence():
    rng = np.random.default_rng(2)
    steps = []
    for big in (0, 1, 0, 0, 3, 0):
        g = [rng.standard_normal((64, 32)).astype(np.float16), rng.standard_normal(32).astype(np.float16)]
        g[0].flat[:big] = np.float16(9000.0)  # 9000 >= 8191.875: upper bin
        steps.append(g)
    return steps


@pytest.mark.parametrize("period", [1, 3])
def test_loss_scale_follows_popart_sequence(period):
    scale, expected = torch.tensor(1024.0), 1024.0
    got, want = [], []
    settings = LossScalingSettings(update_period=period)
    for step, grads in enumerate(_grad_sequence()):
        scale = update_loss_scale(scale, [torch.from_numpy(g) for g in grads], torch.tensor(float(step)), settings)
        expected = _numpy_als(expected, grads, step, period)
        got.append(float(scale))
        want.append(expected)
    assert got == want
    if period == 1:  # worked by hand: 2**-1 ... one upper element in 2,080 is above 1e-7
        assert got == [2048, 1024, 2048, 4096, 2048, 4096]
    else:  # updates on steps 0 and 3 only
        assert got == [2048, 2048, 2048, 4096, 4096, 4096]


def test_loss_scale_from_counts_accumulated_over_micro_batches():
    """With gradient accumulation PopART sums the micro-batches' histograms before deciding: one
    upper element in each of two micro-batches of 5,000 is 2e-4 of all of them (threshold 1e-4)."""
    settings = LossScalingSettings(threshold_upper_count_proportion=1e-4)
    micro = [torch.zeros(5_000, dtype=torch.float16) for _ in range(2)]
    for m in micro:
        m[7] = 20_000.0
    upper = upper_bin_count([micro[0]]) + upper_bin_count([micro[1]])
    total = sum(m.numel() for m in micro)
    assert float(scale_from_counts(torch.tensor(64.0), upper, total, torch.tensor(0.0), settings)) == 32.0
    one = upper_bin_count([micro[0]])  # 1 in 100,000: below the threshold
    assert float(scale_from_counts(torch.tensor(64.0), one, 10 * total, torch.tensor(0.0), settings)) == 128.0


def test_loss_scale_threshold_and_bin_edge():
    assert upper_bin_edge(torch.float16) == 8191.875  # PopART's 65535 * 0.125, not 65504 * 0.125
    assert upper_bin_edge(torch.float32) == float(torch.finfo(torch.float32).max) * 0.125
    g = torch.tensor([8188.0, 8192.0, -8192.0, 1.0], dtype=torch.float16)  # 8188: the fp16 below 8192
    assert float(upper_bin_count([g])) == 2.0  # |g| >= edge, both signs
    many = torch.zeros(2_000_000, dtype=torch.float16)
    many[0] = 10_000.0  # 1 of 2e6 = 5e-7 > 1e-7: halve; with threshold 1e-6: double
    assert float(update_loss_scale(torch.tensor(8.0), [many], torch.tensor(0.0))) == 4.0
    loose = LossScalingSettings(threshold_upper_count_proportion=1e-6)
    assert float(update_loss_scale(torch.tensor(8.0), [many], torch.tensor(0.0), loose)) == 16.0
    zero = [torch.zeros(4, dtype=torch.float16)]  # nothing in the upper bin: double, clipped at 2**15
    clipped = LossScalingSettings(clip_output=True)
    assert float(update_loss_scale(torch.tensor(16384.0), zero, torch.tensor(0.0), clipped)) == 32768.0
    assert float(update_loss_scale(torch.tensor(32768.0), zero, torch.tensor(1.0), clipped)) == 32768.0
    assert float(update_loss_scale(torch.tensor(32768.0), zero, torch.tensor(1.0))) == 65536.0  # fp32: none
    half = update_loss_scale(torch.tensor(32768.0, dtype=torch.float16), zero, torch.tensor(1.0))
    assert half.dtype == torch.float16 and float(half) == 32768.0  # an fp16 scale is always clipped
    capped = LossScalingSettings(max_scale=8.0)
    assert float(update_loss_scale(torch.tensor(8.0), [torch.zeros(4)], torch.tensor(0.0), capped)) == 8.0
    with pytest.raises(OptimizerError, match="binEdgeLocation"):
        LossScalingSettings(bin_edge_location=2.0)
    with pytest.raises(OptimizerError, match="updatePeriod"):
        LossScalingSettings(update_period=0)


def test_loss_scale_rule_traces_to_lowered_ops():
    from torch.fx.experimental.proxy_tensor import make_fx

    from softipu.frontends.torch.export import check_supported

    settings = LossScalingSettings(update_period=2, clip_output=True)

    def rule(scale, g1, g2, step):
        return update_loss_scale(scale, [g1, g2], step, settings)

    args = (torch.tensor(64.0), torch.randn(8, 4).half(), torch.randn(4).half(), torch.tensor(3.0))
    traced = make_fx(rule, decomposition_table=torch.export.default_decompositions())(*args)
    check_supported(traced.graph)
    for step in (3.0, 4.0):
        a = args[:3] + (torch.tensor(step),)
        assert float(traced(*a)) == float(rule(*a))
