"""Random ops: reproducibility across tiles, mappings and engines; distributions; seeds; errors."""

from __future__ import annotations

import numpy as np
import pytest

import softipu as sp
from softipu import program as P
from softipu.codelets.random import philox4x32
from softipu.ops.common import OpError
from softipu.ops.random import bernoulli, dropout, normal, seed_tensor, truncated_normal, uniform

MAKERS = {"uniform": uniform, "normal": normal, "truncated_normal": truncated_normal,
          "bernoulli": lambda g, prog, **kw: bernoulli(g, prog, p=0.3, **kw)}


def graph(tiles: int = 4) -> sp.Graph:
    return sp.Graph(sp.targets.ipu_model(tiles=tiles, bytes_per_tile=1 << 20))


def draw(make, tiles: int = 4, shape=(50, 37), options=None, reference_grain=None, **kw):
    g = graph(tiles)
    prog = P.Sequence()
    ref = None
    if reference_grain is not None:
        ref = g.add_variable(sp.float32, shape, name="ref")
        sp.ops.map_linearly(g, ref, grain_size=reference_grain)
        kw["reference"] = ref
    else:
        kw["shape"] = shape
    t = make(g, prog, **kw)
    eng = sp.Engine(g, [prog], options=options or {})
    eng.run(0)
    return eng.read_tensor(t), g, t


def test_philox_known_answers() -> None:
    """Random123's kat_vectors for philox4x32-10."""
    z, f = np.uint32(0), np.uint32(0xFFFFFFFF)
    assert [int(w) for w in philox4x32((z, z, z, z), (z, z))] == [
        0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    assert [int(w) for w in philox4x32((f, f, f, f), (f, f))] == [
        0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]
    ctr = tuple(np.uint32(v) for v in (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344))
    key = (np.uint32(0xA4093822), np.uint32(0x299F31D0))
    assert [int(w) for w in philox4x32(ctr, key)] == [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]


@pytest.mark.parametrize("name", list(MAKERS))
def test_same_seed_same_bits_whatever_the_tiles_mapping_or_engine(name) -> None:
    make = MAKERS[name]
    base, _, _ = draw(make, tiles=4, seed=99)
    for tiles, grain, options in ((16, None, None), (16, 37, None), (7, 5, None),
                                  (4, None, {"engine.reference": True})):
        other, _, _ = draw(make, tiles=tiles, reference_grain=grain, options=options, seed=99)
        np.testing.assert_array_equal(base, other)
    assert not np.array_equal(base, draw(make, seed=100)[0])
    assert not np.array_equal(base, draw(make, seed=99, seed_modifier=1)[0])


def test_tiles_never_share_a_stream() -> None:
    """Unlike Poplar's IPU Model, where every tile repeats the same sequence."""
    values, g, t = draw(uniform, tiles=16, shape=(16 * 64,), seed=5)
    tiles = g.tile_of(t)
    chunks = [values[tiles == k] for k in range(16)]
    firsts = {tuple(c[:8].tolist()) for c in chunks}
    assert len(firsts) == 16
    for a in range(16):
        for b in range(a + 1, 16):
            n = min(chunks[a].size, chunks[b].size)
            assert abs(np.corrcoef(chunks[a][:n], chunks[b][:n])[0, 1]) < 0.5
    assert np.unique(values).size == values.size  # no repeats at all


def _within(value: float, expected: float, sigma: float, k: float = 5.0) -> bool:
    return abs(value - expected) <= k * sigma


def test_uniform_distribution() -> None:
    n = 40_000
    v, _, _ = draw(uniform, shape=(n,), low=-2.0, high=6.0, seed=1)
    assert v.min() >= -2.0 and v.max() < 6.0
    std = 8 / np.sqrt(12)
    assert _within(v.mean(), 2.0, std / np.sqrt(n)) and abs(v.std() - std) < 0.03 * std
    counts = np.histogram(v, bins=8, range=(-2, 6))[0]
    assert np.all(np.abs(counts - n / 8) < 5 * np.sqrt(n / 8))


def test_uniform_ints_and_fp16_stay_in_range() -> None:
    v, _, _ = draw(uniform, shape=(5000,), low=-3, high=4, dtype=sp.int32, seed=2)
    assert v.dtype == np.int32 and set(np.unique(v).tolist()) == set(range(-3, 4))
    h, _, _ = draw(uniform, shape=(5000,), dtype=sp.float16, seed=2)
    assert h.dtype == np.float16 and h.min() >= 0 and h.max() < 1


def test_normal_distribution() -> None:
    n = 40_000
    v, _, _ = draw(normal, shape=(n,), mean=1.5, std=2.0, seed=3)
    assert _within(v.mean(), 1.5, 2.0 / np.sqrt(n)) and abs(v.std() - 2.0) < 0.05
    assert abs(np.mean(np.abs(v - 1.5) < 2.0) - 0.6827) < 0.02  # one sigma


def test_truncated_normal_within_two_std() -> None:
    n = 40_000
    v, _, _ = draw(truncated_normal, shape=(n,), mean=-1.0, std=0.5, seed=4)
    assert np.all(np.abs(v + 1.0) <= 1.0 + 1e-6)
    assert _within(v.mean(), -1.0, 0.5 / np.sqrt(n))
    assert abs(v.std() - 0.5 * 0.87962566) < 0.01  # std of a standard normal cut at +-2
    w, _, _ = draw(truncated_normal, shape=(n,), alpha=1.0, seed=4, dtype=sp.float16)
    assert np.all(np.abs(w.astype(np.float64)) <= 1.0)


def test_bernoulli_rate() -> None:
    n = 40_000
    for p in (0.0, 0.1, 0.5, 1.0):
        v, _, _ = draw(bernoulli, shape=(n,), p=p, seed=6)
        assert set(np.unique(v).tolist()) <= {0.0, 1.0}
        assert _within(v.mean(), p, np.sqrt(p * (1 - p) / n) + 1e-9)


def test_dropout_masks_and_scales() -> None:
    g = graph()
    x = g.add_variable(sp.float16, (200, 100), name="x")
    sp.ops.map_linearly(g, x, grain_size=7)
    prog = P.Sequence()
    y = dropout(g, x, prog, p=0.25, seed=8)
    again = dropout(g, x, prog, p=0.25, seed=8)
    other = dropout(g, x, prog, p=0.25, seed=9)
    assert np.array_equal(g.tile_of(y), g.tile_of(x))  # mapped like x: no exchange
    a = np.random.default_rng(0).uniform(1, 2, (200, 100)).astype(np.float16)
    eng = sp.Engine(g, [prog])
    eng.write_tensor(x, a)
    eng.run(0)
    vy, va, vo = (eng.read_tensor(t) for t in (y, again, other))
    kept = vy != 0
    assert abs(kept.mean() - 0.75) < 0.02
    np.testing.assert_allclose(vy[kept], (a[kept].astype(np.float32) / 0.75).astype(np.float16))
    np.testing.assert_array_equal(vy, va)
    assert not np.array_equal(kept, vo != 0)
    step = next(s for s in eng.executable.steps if s.name == "dropout")
    assert step.bytes_exchanged == 3 * 8  # only the seed (on tile 0) reaches the 3 other tiles


def test_dropout_backward_reuses_the_mask_like_torch() -> None:
    """The gradient of dropout is dropout of the gradient with the same seed."""
    import torch  # noqa: PLC0415 - a dev dependency, imported only where it is needed
    g = graph()
    x = g.add_variable(sp.float32, (64, 30), name="x")
    dy = g.add_variable(sp.float32, (64, 30), name="dy")
    sp.ops.map_linearly(g, x)
    sp.ops.map_linearly(g, dy)
    prog = P.Sequence()
    y = dropout(g, x, prog, p=0.4, seed=21)
    dx = dropout(g, dy, prog, p=0.4, seed=21)
    rng = np.random.default_rng(1)
    a, da = rng.standard_normal((2, 64, 30)).astype(np.float32)
    eng = sp.Engine(g, [prog])
    eng.write_tensor(x, a)
    eng.write_tensor(dy, da)
    eng.run(0)
    vy, vdx = eng.read_tensor(y), eng.read_tensor(dx)
    mask = torch.tensor(vy != 0, dtype=torch.float32)
    tx = torch.tensor(a, requires_grad=True)
    (tx * mask / 0.6).backward(torch.tensor(da))
    np.testing.assert_allclose(vdx, tx.grad.numpy(), rtol=1e-6)


def test_seed_tensor_is_read_at_run_time() -> None:
    g = graph()
    seed = seed_tensor(g)
    prog = P.Sequence()
    t = uniform(g, prog, shape=(300,), seed=seed)
    eng = sp.Engine(g, [prog])
    values = []
    for s in (7, 8, 7):
        eng.write_tensor(seed, [s & 0xFFFFFFFF, s >> 32])
        eng.run(0)
        values.append(eng.read_tensor(t))
    assert not np.array_equal(values[0], values[1])
    np.testing.assert_array_equal(values[0], values[2])
    np.testing.assert_array_equal(values[0], draw(uniform, shape=(300,), seed=7)[0])
    big = (1 << 40) + 3  # a 64-bit seed uses both words
    assert not np.array_equal(draw(uniform, shape=(300,), seed=big)[0],
                              draw(uniform, shape=(300,), seed=3)[0])


def test_replicas_draw_the_same_numbers_from_the_same_seed() -> None:
    g = sp.Graph(sp.targets.ipu_model(tiles=4, bytes_per_tile=1 << 20), replication_factor=2)
    seed = seed_tensor(g)
    prog = P.Sequence()
    t = normal(g, prog, shape=(40,), seed=seed)
    eng = sp.Engine(g, [prog])
    eng.write_tensor(seed, [[1, 0], [2, 0]])  # one seed per replica
    eng.run(0)
    v = eng.read_tensor(t)
    np.testing.assert_array_equal(v[0], draw(normal, shape=(40,), seed=1)[0])
    np.testing.assert_array_equal(v[1], draw(normal, shape=(40,), seed=2)[0])


@pytest.mark.parametrize(("call", "words"), [
    (lambda g, p: uniform(g, p, shape=(4,), low=1.0, high=0.0), ["uniform", "high"]),
    (lambda g, p: normal(g, p, shape=(4,), dtype=sp.int32), ["normal", "floats", "int32"]),
    (lambda g, p: normal(g, p), ["normal", "shape"]),
    (lambda g, p: bernoulli(g, p, p=1.5, shape=(3,)), ["bernoulli", "[0, 1]"]),
    (lambda g, p: uniform(g, p, shape=(4,), seed=g.add_variable(sp.int32, (2,))), ["uint32"]),
    (lambda g, p: uniform(g, p, shape=(4,), seed=1.5), ["seed"]),
    (lambda g, p: uniform(g, p, shape=(4,), seed_modifier=-1), ["uint32"]),
    (lambda g, p: uniform(g, p, shape=(4,), options={"x": 1}), ["unknown option"]),
    (lambda g, p: uniform(g, p, shape=(2, -1)), ["negative"]),
])
def test_errors(call, words) -> None:
    g = graph()
    with pytest.raises(OpError) as info:
        call(g, P.Sequence())
    message = str(info.value)
    assert "test_ops_random.py" in message
    for w in words:
        assert w in message


def test_dropout_errors() -> None:
    g = graph()
    x = g.add_variable(sp.int32, (4,))
    sp.ops.map_linearly(g, x)
    with pytest.raises(OpError, match="dropout .*int32"):
        dropout(g, x, P.Sequence(), p=0.5)
    f = g.add_variable(sp.float32, (4,))
    sp.ops.map_linearly(g, f)
    with pytest.raises(OpError, match=r"p must be a number in \[0, 1\]"):
        dropout(g, f, P.Sequence(), p=-0.1)


def test_costs_scale_with_size() -> None:
    cycles = []
    for n in (4_000, 16_000):
        g = graph()
        prog = P.Sequence()
        normal(g, prog, shape=(n,))
        eng = sp.Engine(g, [prog], estimate_only=True)
        eng.run(0)
        cycles.append(eng.report.cycles)
    assert 2 * cycles[0] < cycles[1] < 6 * cycles[0]


def test_docstring_examples_run() -> None:
    import doctest  # noqa: PLC0415

    import softipu.ops.random as module  # noqa: PLC0415

    result = doctest.testmod(module)
    assert result.attempted >= 10 and result.failed == 0
