"""The fast engine runs a compute set's convolution window vertices as one GEMM per K range and
chunk (codelets/nn/conv_groups.py): values against torch on both engines, the fast engine within
the contraction bound of the reference, the same bits on one or two host threads and every run,
and the chunks' window views worked out by hand."""

import importlib

import numpy as np
import pytest
import torch

import softipu as sp
from softipu import program as P
from softipu.codelets import host
from softipu.codelets._common import contraction_bound
from softipu.codelets.nn import conv_groups
from softipu.engine import fast
from softipu.ops.conv import conv


@pytest.fixture(autouse=True)
def _windows_for_k_split(monkeypatch):
    """K ranges read in place too (ops/conv.py WINDOWS_FOR_K_SPLIT), whatever its default."""
    monkeypatch.setattr(importlib.import_module("softipu.ops.conv"), "WINDOWS_FOR_K_SPLIT", True)


@pytest.fixture
def runners(monkeypatch):
    """The runners the fast engine builds (None where it runs the groups one by one)."""
    built = []
    real = conv_groups.ConvWindowsRunner.build.__func__

    def build(cls, groups, storage, where):
        built.append(real(cls, groups, storage, where))
        return built[-1]

    monkeypatch.setattr(conv_groups.ConvWindowsRunner, "build", classmethod(build))
    return built


def _graph(n, c, h, o, k, stride, padding, dtype=sp.float32, tiles=8, options=None):
    g = sp.Graph(sp.targets.ipu_model(tiles=tiles, bytes_per_tile=256 * 1024))
    x = g.add_variable(dtype, (n, c, h, h), name="x")
    sp.ops.map_linearly(g, x)
    w = g.add_variable(dtype, (o, c, k, k), name="w")
    sp.ops.map_linearly(g, w)
    prog = P.Sequence()
    y = conv(g, x, w, prog, stride=stride, padding=padding, options=options)
    return g, x, w, y, prog


def _values(x, w, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(x.shape).astype(dtype.numpy), rng.standard_normal(w.shape).astype(dtype.numpy))


def _run(eng, x, w, y, xv, wv):
    eng.write_tensor(x, xv)
    eng.write_tensor(w, wv)
    eng.run(0)
    return eng.read_tensor(y)


def _k_ranges(eng):
    return {int(k) for cs in eng.executable.compute_sets.values() for grp in cs.groups
            if grp.codelet.__name__.startswith("ConvWindow") for k in np.ravel(grp.fields["k0"])}


CASES = [
    dict(n=1, c=16, h=4, o=8, k=3, stride=1, padding=1),                # K split in 5 ranges
    dict(n=3, c=16, h=5, o=16, k=3, stride=1, padding=1),               # blocks of 38 pixels: rows cut
    dict(n=1, c=16, h=6, o=16, k=3, stride=1, padding=1, tiles=16),     # two N blocks side by side
    dict(n=2, c=8, h=7, o=16, k=3, stride=1, padding=1),                # whole K, 6 blocks of 17
    dict(n=2, c=3, h=13, o=16, k=7, stride=2, padding=3, tiles=16),     # a ResNet stem, small
    dict(n=1, c=32, h=8, o=8, k=3, stride=1, padding=1, dtype=sp.float16),
    dict(n=1, c=32, h=8, o=8, k=3, stride=1, padding=1, dtype=sp.float16, options={"partialsType": "half"}),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("chunk", [conv_groups.CHUNK_ELEMENTS, 200])  # 200: a chunk a block or two
def test_merged_windows_match_torch_on_both_engines(case, chunk, runners, monkeypatch):
    monkeypatch.setattr(conv_groups, "CHUNK_ELEMENTS", chunk)
    dtype = case.get("dtype", sp.float32)
    g, x, w, y, prog = _graph(**case)
    xv, wv = _values(x, w, dtype)
    ref = torch.nn.functional.conv2d(torch.tensor(xv.astype(np.float64)), torch.tensor(wv.astype(np.float64)),
                                     stride=case["stride"], padding=case["padding"]).numpy()
    # fp32: each output a sum of K products (a few ulps each); fp16: the output's rounding dominates.
    tol = 2e-2 * np.abs(ref).max() if dtype == sp.float16 else 1e-5 * np.abs(ref).max()
    for reference in (True, False):
        eng = sp.Engine(g, [prog], {"engine.reference": reference})
        np.testing.assert_allclose(_run(eng, x, w, y, xv, wv).astype(np.float64), ref, atol=tol, rtol=0)
    assert runners and all(r is not None for r in runners), "the fast engine was to merge the windows"
    blocks = {int(p) for cs in eng.executable.compute_sets.values() for grp in cs.groups
              if grp.codelet.__name__.startswith("ConvWindow") for p in np.ravel(grp.fields["p0"])}
    # A chunk holds whole pixel blocks: one for all of them, or one each where a block's windows
    # (at least 16 pixels x 72) exceed 200 elements.
    assert sum(len(r.chunks) for r in runners) == (len(blocks) if chunk == 200 else 1)


def test_fast_engine_within_the_contraction_bound_of_the_reference(runners):
    # The merged GEMM's order differs from the vertex's; each output's K = 16 * 9 = 144 products
    # accumulate in fp32 either way: |fast - ref| <= 2 gamma_144 (|x| * |w|) (design.md principle 6).
    case = CASES[1]
    g, x, w, y, prog = _graph(**case)
    xv, wv = _values(x, w, sp.float32, seed=4)
    assert len(_k_ranges(sp.Engine(g, [prog]))) > 1, "the plan was expected to split K"
    ref = _run(sp.Engine(g, [prog], {"engine.reference": True}), x, w, y, xv, wv)
    got = _run(sp.Engine(g, [prog]), x, w, y, xv, wv)
    assert runners and runners[-1] is not None
    terms = torch.nn.functional.conv2d(torch.tensor(np.abs(xv), dtype=torch.float64),
                                       torch.tensor(np.abs(wv), dtype=torch.float64), padding=1).numpy()
    bound = contraction_bound(terms, 16 * 9)
    assert np.all(np.abs(got.astype(np.float64) - ref) <= bound)


def test_same_bits_on_one_or_two_threads_and_every_run(runners, monkeypatch):
    monkeypatch.setattr(conv_groups, "CHUNK_ELEMENTS", 300)  # several chunks: jobs to share
    monkeypatch.setattr(fast, "SIDE_BY_SIDE_SECONDS", 0.0)
    shared = []
    real = host._share
    monkeypatch.setattr(host, "_share", lambda jobs, helpers: (shared.append(len(jobs)), real(jobs, helpers)))
    g, x, w, y, prog = _graph(**CASES[4])
    xv, wv = _values(x, w, sp.float32, seed=5)
    executable = sp.Engine(g, [prog]).executable
    bits = set()
    for idle in (0, 1):
        monkeypatch.setattr(host, "idle_cores", lambda idle=idle: idle)
        eng = sp.Engine.from_executable(executable, g)
        for _ in range(4):  # the engine shares a compute set's jobs from its third run
            bits.add(_run(eng, x, w, y, xv, wv).tobytes())
    assert len(bits) == 1
    assert shared and max(shared) > 1, "the chunks were to run side by side"
    assert sum(len(r.chunks) for r in runners if r is not None) > 2


def test_window_views_by_hand():
    # Output 3x3 per sample (two samples), a 2x2 kernel over a padded 4x4 input of 2 channels,
    # stride 1: pixel p = (n, oh, ow) reads from ((n*4 + oh)*4 + ow)*2. Rows [2, 11): pixel 2 ends
    # a row (one pixel), pixels 3..8 are rows 1-2 of sample 0 (2 x 3), pixels 9..10 start sample
    # 1's first row (two pixels, not a whole row).
    geo = dict(ho=3, wo=3, hp=4, wp=4, c=2, kh=2, kw=2, sh=1, sw=1, dh=1, dw=1)
    buf = np.arange(2 * 4 * 4 * 2, dtype=np.float32)
    views = conv_groups._window_views(buf, 0, geo, 2, 11)
    assert [v.shape for v in views] == [(1, 2, 2, 2), (2, 3, 2, 2, 2), (2, 2, 2, 2)]
    # Starts: pixel 2 (0, 0, 2) at 4; pixel 3 (0, 1, 0) at 8; pixel 9 (1, 0, 0) at 32.
    assert [int(v.reshape(-1)[0]) for v in views] == [4, 8, 32]
    # Pixel 2's window: rows 0-1, columns 2-3, both channels: 4 5 6 7 | 12 13 14 15.
    assert views[0].reshape(-1).tolist() == [4, 5, 6, 7, 12, 13, 14, 15]
    # A window whose last element lies past the buffer is refused (the groups then run one by one).
    with pytest.raises(ValueError):
        conv_groups._window_views(buf[:40], 0, geo, 0, 18)


def test_window_cycles_of_alike_and_mixed_blocks():
    # A group whose blocks share one size is priced once per size (a memo of amp_cycles); a group
    # of mixed sizes vertex by vertex: both as amp_cycles prices each block.
    from softipu.codelets.matmul import amp_cycles
    from softipu.codelets.nn.conv import GEOMETRY, conv_window_codelet

    target = sp.targets.GC200
    codelet = conv_window_codelet(sp.float16, sp.float32)
    rest = {k: np.zeros(3, np.int32) for k in ("x", "w", "out", "p0", "x0", "k0", "layout", *GEOMETRY)}
    for m, kk, n in (([64] * 3, [72] * 3, [16] * 3), ([64, 30, 64], [72, 72, 16], [16, 8, 16])):
        got = codelet.cycles(m=np.array(m), kk=np.array(kk), n=np.array(n), target=target, **rest)
        want = amp_cycles(np.array(m), np.array(kk), np.array(n), sp.float16, sp.float32, target)
        assert np.array_equal(np.broadcast_to(got, (3,)), want)
