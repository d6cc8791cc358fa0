"""The ATen lowerings added for issue 12 (special functions, scans and order statistics, linalg,
random samplers, scatter-reduce, window pooling and convolution, composites), each group one
compiled model, against independent oracles: closed forms and the math module for the special
functions (whose vertices evaluate with torch.special, so eager torch would be no oracle),
numpy for scans and linear algebra, torch's own kernels for the compositions softipu builds
from other ops (pooling, convolution, scatter, addmv...), and distribution checks for samplers.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

import softipu as sp
import softipu.torch as st
from softipu import program as P
from softipu.codelets.linalg import LINALG_CYCLES, linalg_codelet
from softipu.codelets.scans import Scan, scan_codelet
from softipu.ops import linalg

OPTS = st.Options(target=sp.targets.ipu_model(tiles=8, bytes_per_tile=512 * 1024))


class Fn(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


def run(fn, *args):
    return st.inference_model(Fn(fn).eval(), OPTS)(*args)


def close(got, want, rtol=1e-4, atol=1e-5):
    np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(want, np.float64), rtol=rtol, atol=atol)


# -- special functions: closed forms ----------------------------------------------------------------
def test_special_functions_match_closed_forms():
    x = torch.tensor([0.25, 0.5, 1.0, 2.0, 3.5])
    n3 = torch.full((5,), 3.0)
    out = run(lambda x, n: (torch.erfc(x), torch.lgamma(x), torch.special.erfcx(x), torch.i0(x),
                            torch.special.i0e(x), torch.special.spherical_bessel_j0(x),
                            torch.special.chebyshev_polynomial_t(x / 4, n), torch.special.hermite_polynomial_h(x, n),
                            torch.special.legendre_polynomial_p(x / 4, n), torch.igamma(torch.ones_like(x), x),
                            torch.special.zeta(n - 1, torch.ones_like(x)), torch.polygamma(1, torch.ones_like(x)),
                            torch.digamma(torch.ones_like(x))), x, n3)
    xs = x.numpy().astype(np.float64)
    c = xs / 4
    want = ([math.erfc(v) for v in xs], [math.lgamma(v) for v in xs],
            [math.exp(v * v) * math.erfc(v) for v in xs], np.i0(xs), np.i0(xs) * np.exp(-xs),
            np.sin(xs) / xs, np.cos(3 * np.arccos(c)), 8 * xs ** 3 - 12 * xs, (5 * c ** 3 - 3 * c) / 2,
            1 - np.exp(-xs), np.full(5, math.pi ** 2 / 6), np.full(5, math.pi ** 2 / 6),
            np.full(5, -0.5772156649015329))
    for g, w in zip(out, want, strict=True):
        close(g, w, rtol=2e-4, atol=2e-5)


def test_ieee_manipulations_match_numpy():
    a = torch.tensor([1.5, -2.0, float("nan"), 0.0, -0.0, 3.0])
    b = torch.tensor([float("nan"), 1.0, 2.0, -1.0, 1.0, -4.0])
    e = torch.tensor([1, -2, 3, 0, 4, 2], dtype=torch.int32)
    out = run(lambda a, b, e: (torch.fmax(a, b), torch.fmin(a, b), torch.copysign(a, b), torch.hypot(a, b),
                               torch.nextafter(a, b), torch.ldexp(a, e), torch.signbit(a), *torch.frexp(b)),
              a, b, e)
    an, bn = a.numpy(), b.numpy()
    m, ex = np.frexp(bn)
    want = (np.fmax(an, bn), np.fmin(an, bn), np.copysign(an, bn), np.hypot(an, bn), np.nextafter(an, bn),
            np.ldexp(an, e.numpy()), np.signbit(an), m, ex)
    for g, w in zip(out, want, strict=True):
        np.testing.assert_array_equal(g.numpy(), w)


def test_special_vertex_cost_is_the_table_figure():
    from softipu.codelets.elementwise import UnaryOp
    from softipu.codelets.elementwise.special import SPECIAL_CYCLES
    assert UnaryOp.LGAMMA.cost.float_cycles == SPECIAL_CYCLES["lgamma"][0] == 60
    assert UnaryOp.LGAMMA.cost.float_width == 1


# -- scans and order statistics: numpy ----------------------------------------------------------
def test_scans_and_order_statistics_match_numpy():
    x = torch.tensor([[3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0], [2.0, 7.0, 1.0, 8.0, 2.0, 8.0, 1.0]])
    nan = torch.tensor([[1.0, float("nan"), 3.0, 0.5], [float("nan"), float("nan"), 2.0, 4.0]])
    out = run(lambda x, y: (torch.cumprod(x, 1), *torch.cummax(x, 1), *torch.cummin(x, 1),
                            torch.logcumsumexp(x, 1), *torch.median(x, 1), *torch.kthvalue(x, 3, 1),
                            *torch.mode(x, 1), torch.nanmedian(y, 1).values, torch.median(y, 1).values), x, nan)
    xn = x.numpy().astype(np.float64)
    close(out[0], np.cumprod(xn, 1))
    close(out[1], np.maximum.accumulate(xn, 1))
    assert out[2].tolist() == [[0, 0, 2, 2, 4, 5, 5], [0, 1, 1, 3, 3, 5, 5]]  # ties take the later index
    close(out[3], np.minimum.accumulate(xn, 1))
    assert out[4].tolist() == [[0, 1, 1, 3, 3, 3, 3], [0, 0, 2, 2, 2, 2, 6]]
    close(out[5], np.log(np.cumsum(np.exp(xn), 1)))
    srt = np.sort(xn, 1)
    close(out[6], srt[:, 3])  # lower median of 7
    assert [xn[r, out[7][r]] for r in range(2)] == list(srt[:, 3])
    close(out[8], srt[:, 2])
    assert out[10].tolist() == [1.0, 1.0] and out[11].tolist() == [3, 6]  # mode: smallest, last index
    close(out[12], [1.0, 2.0])  # nan-median: lower median of the non-NaN values
    assert torch.isnan(out[13]).all()


def test_scan_cycle_estimate():
    codelet = scan_codelet(Scan.LOGSUMEXP, sp.float32)
    assert codelet.cycles(x=10, out=10, target=None) == 20 + 24 * 10


# -- linalg: numpy -------------------------------------------------------------------------------
def _spd(n, seed):
    a = np.random.default_rng(seed).standard_normal((n, n)).astype(np.float32)
    return a @ a.T + n * np.eye(n, dtype=np.float32)


def test_linalg_ops_on_the_engine_match_numpy():
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    prog = P.Sequence()
    a = g.add_variable(sp.float32, (2, 4, 4))
    b = g.add_variable(sp.float32, (2, 4, 3))
    for t in (a, b):
        sp.ops.map_linearly(g, t)
    outs = [linalg.cholesky(g, a, prog), linalg.inverse(g, a, prog), linalg.det(g, a, prog),
            linalg.solve(g, a, b, prog), *linalg.eigh(g, a, prog), *linalg.svd(g, a, prog), *linalg.qr(g, a, prog),
            *linalg.slogdet(g, a, prog)]
    eng = sp.Engine(g, [prog])
    an = np.stack([_spd(4, 1), _spd(4, 2)])
    bn = np.random.default_rng(3).standard_normal((2, 4, 3)).astype(np.float32)
    eng.write_tensor(a, an)
    eng.write_tensor(b, bn)
    eng.run(0)
    chol, inv, det, x, w, v, u, s, vh, q, r, sign, logdet = (eng.read_tensor(t) for t in outs)
    a64 = an.astype(np.float64)
    close(chol, np.linalg.cholesky(a64), rtol=1e-4, atol=1e-4)
    close(inv @ a64, np.broadcast_to(np.eye(4), (2, 4, 4)), atol=1e-4)
    close(det, np.linalg.det(a64), rtol=1e-4)
    close(x, np.linalg.solve(a64, bn), rtol=1e-3, atol=1e-4)
    close(w, np.linalg.eigvalsh(a64), rtol=1e-4)
    close(v @ (w[..., None] * np.swapaxes(v, -1, -2)), a64, rtol=1e-4, atol=1e-3)
    close(s, np.linalg.svd(a64, compute_uv=False), rtol=1e-4)
    close(u @ (s[..., None] * vh), a64, atol=1e-3)
    close(q @ r, a64, atol=1e-3)
    assert np.allclose(np.tril(r, -1), 0)
    close(sign * np.exp(logdet), np.linalg.det(a64), rtol=1e-4)


def test_linalg_cycle_estimate_is_the_documented_formula():
    spec = ((sp.float32, (4, 4)),)
    codelet = linalg_codelet("cholesky", (), "cholesky", spec, spec)
    assert LINALG_CYCLES["cholesky"] == 1 / 3
    assert codelet.cycles(in0=16, out0=16) == 20 + math.ceil(64 / 3)


def test_torch_linalg_lowerings_give_numpy_answers():
    a = torch.from_numpy(_spd(3, 5))
    b = torch.arange(6, dtype=torch.float32).reshape(3, 2)
    out = run(lambda a, b: (torch.linalg.cholesky(a), torch.linalg.inv(a), torch.linalg.det(a),
                            torch.linalg.solve(a, b), torch.linalg.svdvals(a), torch.linalg.matrix_rank(a),
                            torch.linalg.solve_triangular(torch.linalg.cholesky(a), b, upper=False)), a, b)
    a64 = a.double().numpy()
    close(out[0], np.linalg.cholesky(a64), atol=1e-4)
    close(out[1], np.linalg.inv(a64), atol=1e-4)
    close(out[2], np.linalg.det(a64), rtol=1e-4)
    close(out[3], np.linalg.solve(a64, b.double().numpy()), atol=1e-4)
    close(out[4], np.linalg.svd(a64, compute_uv=False), rtol=1e-4)
    assert int(out[5]) == 3
    close(out[6], np.linalg.solve(np.linalg.cholesky(a64), b.double().numpy()), atol=1e-4)


# -- random samplers: distributions --------------------------------------------------------------
def test_random_samplers_have_their_distributions():
    x = torch.zeros(4000)
    p = torch.tensor([[0.0, 0.5, 0.5, 0.0], [0.25, 0.25, 0.25, 0.25]])
    out = run(lambda x, p: (x.uniform_(-1.0, 3.0), torch.empty_like(x).exponential_(2.0),
                            torch.bernoulli(x, 0.25), torch.randint(2, 7, (4000,)),
                            torch.normal(torch.full_like(x, 5.0), 2.0), torch.multinomial(p, 2),
                            torch.empty_like(x).geometric_(0.5)), x, p)
    u, e, bern, ri, nrm, mult, geo = (t.numpy() for t in out)
    assert u.min() >= -1 and u.max() < 3 and abs(u.mean() - 1.0) < 0.1
    assert e.min() >= 0 and abs(e.mean() - 0.5) < 0.05
    assert set(np.unique(bern)) <= {0.0, 1.0} and abs(bern.mean() - 0.25) < 0.04
    assert ri.min() == 2 and ri.max() == 6
    assert abs(nrm.mean() - 5.0) < 0.15 and abs(nrm.std() - 2.0) < 0.15
    assert sorted(mult[0].tolist()) == [1, 2] and len(set(mult[1].tolist())) == 2  # no zero-p, no repeats
    assert geo.min() >= 1 and abs(geo.mean() - 2.0) < 0.15


# -- compositions: torch's own kernels -----------------------------------------------------------
def _compare(fn, *args, rtol=1e-4, atol=1e-5):
    got = run(fn, *args)
    with torch.no_grad():
        want = fn(*args)
    for g, w in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,),
                    strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype
        if w.dtype.is_floating_point:
            close(g, w, rtol=rtol, atol=atol)
        else:
            assert torch.equal(g, w)


def test_scatter_reduce_index_reduce_and_put_match_torch():
    x = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    idx = torch.tensor([[0, 2, 0, 1], [2, 2, 1, 0]])
    src = torch.tensor([[5.0, -1.0, 7.0, 2.0], [3.0, 9.0, -4.0, 0.5]])
    i1 = torch.tensor([0, 2, 0])
    _compare(lambda x, i, s, j: (x.scatter_reduce(0, i, s, "amax", include_self=False),
                                 x.scatter_reduce(0, i, s, "mean"), x.scatter_reduce(1, i, s, "prod"),
                                 x.index_reduce(0, j, s[:, :4].repeat(2, 1)[:3], "amin"),
                                 x.put(j, s[0, :3], accumulate=True)), x, idx, src, i1)


@pytest.mark.parametrize("case", ["pool", "conv"])
def test_window_pooling_and_convolution_match_torch(case):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 2, 5, 6, generator=g)
    if case == "pool":
        _compare(lambda x: (F.max_pool2d(x, 3, 2, 1, dilation=1, ceil_mode=True),
                            F.avg_pool2d(x, 2, 2, 1, ceil_mode=True, count_include_pad=False),
                            F.avg_pool2d(x, 3, 1, 1, divisor_override=4),
                            F.adaptive_avg_pool2d(x, (3, 4)), *F.adaptive_max_pool2d(x, (2, 4), return_indices=True),
                            F.max_pool3d(x, (1, 2, 2)), F.avg_pool3d(x, (2, 2, 3))), x)
    else:
        w = torch.rand(2, 3, 3, 2, generator=g)
        w3 = torch.rand(3, 2, 2, 2, 2, generator=g)
        _compare(lambda x, w, w3: (F.conv_transpose2d(x, w, stride=2, padding=1, output_padding=1),
                                   F.conv_transpose2d(x, w.reshape(2, 3, 3, 2), groups=1, dilation=2),
                                   F.conv3d(x.reshape(2, 1, 5, 6), w3, padding=1)), x, w, w3)


def test_composites_match_torch():
    g = torch.Generator().manual_seed(1)
    m, v, b3, c3 = torch.rand(4, 3, generator=g), torch.rand(3, generator=g), torch.rand(2, 4, 3, generator=g), \
        torch.rand(2, 3, 5, generator=g)
    seq = torch.tensor([0.0, 1.0, 2.5, 4.0])
    vals = torch.tensor([[-1.0, 1.0, 3.0], [2.5, 5.0, 0.5]])
    _compare(lambda m, v, b3, c3, seq, vals: (
        torch.addmv(torch.ones(4), m, v, beta=0.5, alpha=2.0), torch.addbmm(torch.ones(4, 5), b3, c3),
        torch.dist(m, m.flip(0), 3), torch.bucketize(vals, seq), torch.searchsorted(seq, vals, right=True),
        torch.diagonal_scatter(torch.zeros(4, 4), v, 1), torch.angle(vals - 1.0),
        F.bilinear(b3[0], b3[1], torch.ones(2, 3, 3))), m, v, b3, c3, seq, vals)


def test_fractional_max_pool_with_given_samples_matches_torch():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(1, 2, 9, 8, generator=g)
    u = torch.rand(1, 2, 2, generator=g)
    _compare(lambda x, u: F.fractional_max_pool2d(x, 3, output_size=(4, 3), return_indices=True,
                                                  _random_samples=u), x, u)


def test_grid_sample_matches_torch():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 5, 6, generator=g)
    grid = torch.rand(2, 4, 3, 2, generator=g) * 2.6 - 1.3  # some points outside
    _compare(lambda x, grid: (F.grid_sample(x, grid, "bilinear", "zeros", align_corners=False),
                              F.grid_sample(x, grid, "bilinear", "reflection", align_corners=True),
                              F.grid_sample(x, grid, "nearest", "border", align_corners=False)), x, grid)


def test_grid_sample_3d_matches_torch_in_every_mode():
    g = torch.Generator().manual_seed(5)
    x = torch.rand(2, 2, 3, 4, 5, generator=g)
    grid = torch.rand(2, 2, 3, 2, 3, generator=g) * 2.6 - 1.3  # (x, y, z) points, some outside
    _compare(lambda x, grid: tuple(F.grid_sample(x, grid, mode, padding, align_corners=align)
                                   for mode in ("bilinear", "nearest")
                                   for padding in ("zeros", "border", "reflection")
                                   for align in (False, True)), x, grid)


def test_unfold_histc_and_triangle_indices_match_torch():
    x = torch.tensor([[0.5, -1.0, 2.0, 3.0, 0.0], [1.0, 1.5, -2.0, 2.0, 4.0]])
    _compare(lambda x: (x.unfold(1, 2, 2), torch.histc(x, 4), torch.histc(x, 3, min=-1.0, max=2.0),
                        torch.triu_indices(3, 4, 1), torch.tril_indices(4, 3, -1)), x)


def test_histogram_matches_torch_on_edges_weights_and_density():
    # 0.7 sits on torch's float32 edge 0.70000005 (linspace's second half counts down from the end):
    # it belongs in bin 1, so the edges must be computed as torch computes them.
    x = torch.tensor([0.1, 0.2, 0.3, 0.7, 1.0, 0.4, 0.55])
    w = torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0, 1.5, 2.5])
    same = torch.full((3,), 2.0)  # one value: the range is widened by 0.5 each way
    edges = torch.tensor([0.0, 0.25, 0.5, 1.0])
    _compare(lambda x, w, same, edges: (
        *torch.histogram(x, 3), *torch.histogram(same, 4), *torch.histogram(x, 4, range=(0.2, 0.7)),
        *torch.histogram(x, edges, weight=w, density=True), *torch.histogram(x, 5, weight=w),
        *torch.histogram(x, 2, density=True)), x, w, same, edges)
    # by hand: edges 0.1, 0.39999998, 0.70000005, 1.0 -> 0.1 0.2 0.3 | 0.4 0.55 0.7 | 1.0
    assert run(lambda x: torch.histogram(x, 3), x)[0].tolist() == [3.0, 3.0, 1.0]


def test_fold_segment_reduce_and_masked_index_put_match_torch():
    g = torch.Generator().manual_seed(4)
    cols = torch.rand(1, 2 * 4, 12, generator=g)
    data = torch.rand(6, 2, generator=g)
    x = torch.zeros(4, 3)
    mask = torch.tensor([True, False, True, True])
    rows = torch.arange(9, dtype=torch.float32).reshape(3, 3)
    _compare(lambda cols, data, x, mask, rows: (
        F.fold(cols, (4, 5), 2, stride=1), torch.segment_reduce(data, "max", lengths=torch.tensor([2, 0, 3, 1])),
        torch.segment_reduce(data, "mean", offsets=torch.tensor([0, 2, 2, 6]), initial=1.0),
        x.index_put((mask,), rows, accumulate=True)), cols, data, x, mask, rows)


def test_chunked_linear_cross_entropy_is_its_reference_composition():
    from torch.nn.modules.linear_cross_entropy_options import LinearCrossEntropyOptions

    g = torch.Generator().manual_seed(6)
    x, w, b = torch.randn(6, 5, generator=g), torch.randn(7, 5, generator=g), torch.randn(7, generator=g)
    target = torch.tensor([0, 3, 6, -100, 2, 2])
    cw = torch.rand(7, generator=g) + 0.5
    opts = LinearCrossEntropyOptions(batch_chunk_size=2, allow_retain_graph=True)  # the chunked custom ops, not the reference

    def losses(x, w, b, target, cw):
        return (F.linear_cross_entropy(x, w, target, linear_bias=b, weight=cw, options=opts),
                F.linear_cross_entropy(x, w, target, reduction="sum", options=opts),
                F.linear_cross_entropy(x, w, target, linear_bias=b, reduction="none", options=opts))

    got = run(losses, x, w, b, target, cw)
    with torch.no_grad():  # the oracle: the reference composition its documentation gives
        logits = F.linear(x, w, b)
        want = (F.cross_entropy(logits, target, cw),
                F.cross_entropy(F.linear(x, w), target, reduction="sum"),
                F.cross_entropy(logits, target, reduction="none"))
    for g_, w_ in zip(got, want, strict=True):
        close(g_, w_, rtol=1e-4, atol=1e-5)
