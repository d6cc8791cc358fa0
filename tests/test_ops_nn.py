"""popnn ops beyond the record table: values and gradients against torch autograd, error
messages, options, the layout planners, batching independence and cost sanity."""

from __future__ import annotations

import doctest
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import softipu as sp
from softipu import program as P
from softipu.codelets import nn as codelets
from softipu.ops import nn
from softipu.ops.common import OpError
from softipu.ops.nn import NonLinearity

SMALL = sp.targets.ipu_model(tiles=8, bytes_per_tile=256 * 1024)


# -- helpers -------------------------------------------------------------------------------------------
def rand(*shape, seed=0, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


class Run:
    """A graph on a small chip, its program, and host arrays for its inputs."""

    def __init__(self, target=SMALL, replication_factor=1):
        self.g = sp.Graph(target, replication_factor)
        self.prog = P.Sequence()
        self.feeds: dict[sp.Tensor, np.ndarray] = {}

    def input(self, a, dtype=None, grain=None, name="in"):
        a = np.asarray(a)
        shape = a.shape[1:] if self.g.replication_factor > 1 else a.shape
        dtype = dtype or (sp.int32 if a.dtype.kind == "i" else sp.float16 if a.dtype == np.float16
                          else sp.float32)
        t = self.g.add_variable(dtype, shape, name=name)
        sp.ops.map_linearly(self.g, t, **({"grain_size": grain} if grain else {}))
        self.feeds[t] = a
        return t

    def engine(self, options=None):
        eng = sp.Engine(self.g, [self.prog], options)
        for t, a in self.feeds.items():
            eng.write_tensor(t, a)
        eng.run(0)
        return eng

    def __call__(self, *outs, options=None):
        eng = self.engine(options)
        return [eng.read_tensor(o) for o in outs]


def tt(a, grad=True):
    return torch.tensor(np.asarray(a, dtype=np.float32), requires_grad=grad)


def close(got, want, rtol=1e-5, atol=1e-6):
    np.testing.assert_allclose(np.asarray(got, np.float64), want.detach().numpy().astype(np.float64)
                               if isinstance(want, torch.Tensor) else want, rtol=rtol, atol=atol)


def raises_here(fn, *needles):
    """``fn`` (a lambda on the caller's line) raises an OpError naming ``needles`` and that line."""
    line = sys._getframe(1).f_lineno
    with pytest.raises(OpError) as info:
        fn()
    message = str(info.value)
    assert f"test_ops_nn.py:{line}" in message, message
    for needle in needles:
        assert str(needle) in message, (needle, message)
    return message


# -- gradients against torch ---------------------------------------------------------------------------
@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("dim", [-1, 0, 1])
def test_softmax_and_its_gradient_match_torch(log, dim):
    x, dy = rand(3, 5, 7, scale=3), rand(3, 5, 7, seed=1)
    r = Run()
    xi, dyi = r.input(x), r.input(dy)
    y = (nn.log_softmax if log else nn.softmax)(r.g, xi, r.prog, dim=dim)
    dx = (nn.log_softmax_grad if log else nn.softmax_grad)(r.g, y, dyi, r.prog, dim=dim)
    got_y, got_dx = r(y, dx)
    xt = tt(x)
    yt = (torch.log_softmax if log else torch.softmax)(xt, dim)
    yt.backward(torch.tensor(dy))
    close(got_y, yt)
    close(got_dx, xt.grad, atol=1e-6)


@pytest.mark.parametrize("dtype", [sp.float32, sp.float16])
def test_layer_norm_and_its_gradients_match_torch(dtype):
    x, w, b, dy = rand(4, 3, 6, scale=2), rand(3, 6, seed=1), rand(3, 6, seed=2), rand(4, 3, 6, seed=3)
    npd = dtype.numpy
    r = Run()
    xi, wi, bi, dyi = (r.input(a.astype(npd)) for a in (x, w, b, dy))
    out, mean, inv_std = nn.layer_norm(r.g, xi, wi, bi, r.prog, eps=1e-4)
    dx, dw, db = nn.layer_norm_grad(r.g, dyi, xi, mean, inv_std, wi, r.prog)
    got = r(out, dx, dw, db)
    xt, wt, bt = (tt(a.astype(npd)) for a in (x, w, b))
    ot = F.layer_norm(xt, (3, 6), wt, bt, eps=1e-4)
    ot.backward(torch.tensor(dy.astype(npd).astype(np.float32)))
    tol = dict(rtol=1e-4, atol=1e-5) if dtype is sp.float32 else dict(rtol=2e-2, atol=2e-2)
    for g_arr, want in zip(got, (ot, xt.grad, wt.grad, bt.grad), strict=True):
        close(g_arr, want, **tol)
    assert got[0].dtype == npd and r(mean)[0].dtype == np.float32  # fp32 statistics for fp16


def test_group_norm_and_its_gradients_match_torch():
    x, w, b, dy = rand(3, 6, 4, 5, scale=2), rand(6, seed=1), rand(6, seed=2), rand(3, 6, 4, 5, seed=3)
    r = Run()
    xi, wi, bi, dyi = (r.input(a) for a in (x, w, b, dy))
    out, mean, inv_std = nn.group_norm(r.g, xi, wi, bi, r.prog, num_groups=3)
    dx, dw, db = nn.group_norm_grad(r.g, dyi, xi, mean, inv_std, wi, r.prog, num_groups=3)
    got = r(out, dx, dw, db)
    xt, wt, bt = tt(x), tt(w), tt(b)
    ot = F.group_norm(xt, 3, wt, bt)
    ot.backward(torch.tensor(dy))
    for g_arr, want in zip(got, (ot, xt.grad, wt.grad, bt.grad), strict=True):
        close(g_arr, want, rtol=1e-4, atol=1e-5)


def test_batch_norm_training_and_its_gradients_match_torch():
    x, w, b, dy = rand(5, 4, 3, 3, scale=2), rand(4, seed=1), rand(4, seed=2), rand(5, 4, 3, 3, seed=3)
    r = Run()
    xi, wi, bi, dyi = (r.input(a) for a in (x, w, b, dy))
    out, mean, var = nn.batch_norm_training(r.g, xi, wi, bi, r.prog, eps=1e-3)
    _, _, unbiased = nn.batch_norm_training(r.g, xi, wi, bi, r.prog, options={"unbiased_var": True})
    dx, dw, db = nn.batch_norm_grad(r.g, dyi, xi, mean, var, wi, r.prog, eps=1e-3)
    got = r(out, dx, dw, db, mean, unbiased)
    xt, wt, bt = tt(x), tt(w), tt(b)
    run_mean, run_var = torch.zeros(4), torch.ones(4)
    ot = F.batch_norm(xt, run_mean, run_var, wt, bt, training=True, momentum=1.0, eps=1e-3)
    ot.backward(torch.tensor(dy))
    for g_arr, want in zip(got, (ot, xt.grad, wt.grad, bt.grad, run_mean, run_var), strict=True):
        close(g_arr, want, rtol=1e-4, atol=1e-5)


def test_batch_norm_inference_matches_torch():
    x, w, b = rand(3, 4, 5), rand(4, seed=1), rand(4, seed=2)
    m, v = rand(4, seed=3), np.abs(rand(4, seed=4)) + 0.1
    r = Run()
    y = nn.batch_norm(r.g, *(r.input(a) for a in (x, w, b, m, v)), r.prog, eps=1e-3)
    want = F.batch_norm(tt(x), tt(m, False), tt(v, False), tt(w), tt(b), training=False, eps=1e-3)
    close(r(y)[0], want, rtol=1e-5, atol=1e-5)


TORCH_ACT = {
    NonLinearity.RELU: torch.relu, NonLinearity.SIGMOID: torch.sigmoid, NonLinearity.TANH: torch.tanh,
    NonLinearity.GELU: lambda t: F.gelu(t, approximate="tanh"), NonLinearity.GELU_ERF: F.gelu,
    NonLinearity.SILU: F.silu,
}


@pytest.mark.parametrize("kind", list(NonLinearity))
def test_non_linearities_and_their_gradients_match_torch(kind):
    x, dy = rand(6, 7, scale=3), rand(6, 7, seed=1)
    x[0, :3] = (0.0, -0.0, 40.0)  # relu's kink, saturation
    r = Run()
    xi, dyi = r.input(x), r.input(dy)
    y = nn.non_linearity(r.g, xi, r.prog, kind=kind)
    dx = nn.non_linearity_grad(r.g, y if kind.grad_uses_output else xi, dyi, r.prog, kind=kind)
    got_y, got_dx = r(y, dx)
    xt = tt(x)
    yt = TORCH_ACT[kind](xt)
    yt.backward(torch.tensor(dy))
    close(got_y, yt, rtol=1e-5, atol=1e-6)
    close(got_dx, xt.grad, rtol=1e-4, atol=1e-5)


POOLS = [  # (input shape, kernel, stride, padding)
    ((2, 3, 9, 8), 3, 2, 1), ((1, 2, 7, 7), 2, 1, 1), ((2, 2, 6, 9), (3, 2), (2, 3), (1, 0)),
    ((2, 3, 13), 3, 2, 1), ((1, 1, 8), 4, None, 2),
]


@pytest.mark.parametrize(("shape", "kernel", "stride", "padding"), POOLS)
def test_max_pool_and_its_gradient_match_torch_including_ties(shape, kernel, stride, padding):
    x = np.round(rand(*shape, scale=1.5)).astype(np.float32)  # many ties inside windows
    fn = F.max_pool1d if len(shape) == 3 else F.max_pool2d
    xt = tt(x)
    yt = fn(xt, kernel, stride, padding)
    dy = rand(*yt.shape, seed=1)
    yt.backward(torch.tensor(dy))
    r = Run()
    xi, dyi = r.input(x), r.input(dy)
    y = nn.max_pool(r.g, xi, r.prog, kernel=kernel, stride=stride, padding=padding)
    dx = nn.max_pool_grad(r.g, xi, dyi, r.prog, kernel=kernel, stride=stride, padding=padding)
    got_y, got_dx = r(y, dx)
    close(got_y, yt)
    close(got_dx, xt.grad)


@pytest.mark.parametrize("include_pad", [True, False])
@pytest.mark.parametrize(("shape", "kernel", "stride", "padding"), POOLS)
def test_avg_pool_and_its_gradient_match_torch(shape, kernel, stride, padding, include_pad):
    x = rand(*shape)
    fn = F.avg_pool1d if len(shape) == 3 else F.avg_pool2d
    xt = tt(x)
    yt = fn(xt, kernel, stride, padding, count_include_pad=include_pad)
    dy = rand(*yt.shape, seed=1)
    yt.backward(torch.tensor(dy))
    r = Run()
    xi, dyi = r.input(x), r.input(dy)
    geo = dict(kernel=kernel, stride=stride, padding=padding, count_include_pad=include_pad)
    y = nn.avg_pool(r.g, xi, r.prog, **geo)
    dx = nn.avg_pool_grad(r.g, dyi, r.prog, input_shape=shape, **geo)
    got_y, got_dx = r(y, dx)
    close(got_y, yt)
    close(got_dx, xt.grad)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("log_input", [False, True])
def test_class_losses_and_their_gradients_match_torch(reduction, log_input):
    logits = rand(9, 5, scale=2)
    labels = np.random.default_rng(1).integers(0, 5, 9).astype(np.int32)
    labels[[2, 6]] = -100
    x = torch.log_softmax(torch.tensor(logits), 1).numpy() if log_input else logits
    xt = tt(x)
    fn = F.nll_loss if log_input else F.cross_entropy
    lt = fn(xt, torch.tensor(labels, dtype=torch.long), reduction=reduction, ignore_index=-100)
    g = rand(*lt.shape, seed=2)
    lt.backward(torch.tensor(g))
    r = Run()
    xi, li, gi = r.input(x), r.input(labels), r.input(g)
    ours, ours_grad = ((nn.nll_loss, nn.nll_loss_grad) if log_input
                       else (nn.cross_entropy, nn.cross_entropy_grad))
    loss = ours(r.g, xi, li, r.prog, reduction=reduction)
    dx = ours_grad(r.g, xi, li, gi, r.prog, reduction=reduction)
    got_loss, got_dx = r(loss, dx)
    assert got_loss.shape == tuple(lt.shape)
    close(got_loss, lt, rtol=1e-5, atol=1e-6)
    close(got_dx, xt.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse_loss_and_its_gradient_match_torch(reduction):
    x, t = rand(5, 6, 7), rand(5, 6, 7, seed=1)
    xt = tt(x)
    lt = F.mse_loss(xt, torch.tensor(t), reduction=reduction)
    g = rand(*lt.shape, seed=2)
    lt.backward(torch.tensor(g))
    r = Run()
    xi, ti, gi = r.input(x), r.input(t), r.input(g)
    loss = nn.mse_loss(r.g, xi, ti, r.prog, reduction=reduction)
    dx = nn.mse_loss_grad(r.g, xi, ti, gi, r.prog, reduction=reduction)
    got_loss, got_dx = r(loss, dx)
    close(got_loss, lt, rtol=1e-5, atol=1e-6)
    close(got_dx, xt.grad, rtol=1e-5, atol=1e-7)


def test_a_training_step_chain_matches_torch():
    """layer norm -> gelu -> max pool -> cross-entropy, forward and backward, against autograd."""
    x, w, b = rand(2, 4, 6, scale=2), rand(6, seed=1), rand(6, seed=2)
    labels = np.array([1, 0, 2, 1, 0, 2, 2, 1], np.int32)
    xt, wt, bt = tt(x), tt(w), tt(b)
    h = F.gelu(F.layer_norm(xt, (6,), wt, bt))
    p = F.max_pool1d(h, 2)  # (2, 4, 3)
    lt = F.cross_entropy(p.reshape(8, 3), torch.tensor(labels, dtype=torch.long))
    lt.backward()
    r = Run()
    xi, wi, bi, li = r.input(x), r.input(w), r.input(b), r.input(labels)
    one = r.input(np.float32(1.0))
    ln, mean, inv_std = nn.layer_norm(r.g, xi, wi, bi, r.prog)
    hi = nn.non_linearity(r.g, ln, r.prog, kind=NonLinearity.GELU_ERF)
    pi = nn.max_pool(r.g, hi, r.prog, kernel=2)
    loss = nn.cross_entropy(r.g, pi.reshape(8, 3), li, r.prog)
    dp = nn.cross_entropy_grad(r.g, pi.reshape(8, 3), li, one, r.prog)
    dh = nn.max_pool_grad(r.g, hi, dp.reshape(2, 4, 3), r.prog, kernel=2)
    dln = nn.non_linearity_grad(r.g, ln, dh, r.prog, kind=NonLinearity.GELU_ERF)
    dx, dw, db = nn.layer_norm_grad(r.g, dln, xi, mean, inv_std, wi, r.prog)
    got = r(loss, dx, dw, db)
    for g_arr, want in zip(got, (lt, xt.grad, wt.grad, bt.grad), strict=True):
        close(g_arr, want, rtol=1e-4, atol=1e-5)


# -- errors ----------------------------------------------------------------------------------------------
def test_errors_name_the_op_the_shapes_and_the_line():
    r = Run()
    xi = r.input(np.zeros((4, 6), np.int32), name="ints")
    xf = r.input(rand(4, 6), name="xf")
    w5 = r.input(rand(5), name="w5")
    raises_here(lambda: nn.softmax(r.g, xi, r.prog), "softmax", "ints", "(4, 6)", "int32")
    raises_here(lambda: nn.log_softmax(r.g, xf, r.prog, dim=2), "log_softmax", "dim 2", "(4, 6)")
    raises_here(lambda: nn.layer_norm(r.g, xf, w5, None, r.prog, normalized_shape=(6,)),
                "layer_norm", "weight", "(5,)", "(6,)")
    raises_here(lambda: nn.layer_norm(r.g, xf, None, None, r.prog, normalized_shape=(4,)),
                "layer_norm", "normalized_shape (4,)", "(4, 6)")
    raises_here(lambda: nn.group_norm(r.g, xf, None, None, r.prog, num_groups=4), "group_norm",
                "num_groups=4", "6 channels")
    raises_here(lambda: nn.softmax_grad(r.g, xf, w5, r.prog), "softmax_grad", "(4, 6)", "(5,)")
    raises_here(lambda: nn.batch_norm(r.g, xf, None, None, w5, w5, r.prog), "batch_norm",
                "running_mean", "(5,)", "(6,)")


def test_pooling_errors():
    r = Run()
    x = r.input(rand(1, 2, 5, 5), name="img")
    raises_here(lambda: nn.max_pool(r.g, x, r.prog, kernel=6), "max_pool", "(1, 2, 5, 5)", "too small")
    raises_here(lambda: nn.avg_pool(r.g, x, r.prog, kernel=2, padding=2), "avg_pool", "padding (2, 2)",
                "half the kernel")
    raises_here(lambda: nn.max_pool(r.g, x.reshape(10, 5), r.prog, kernel=2), "max_pool", "(10, 5)")
    raises_here(lambda: nn.max_pool(r.g, x, r.prog, kernel=(2, 0)), "kernel", "(2, 0)")
    dy = r.input(rand(1, 2, 3, 3), name="dy")
    raises_here(lambda: nn.max_pool_grad(r.g, x, dy, r.prog, kernel=2), "max_pool_grad", "(1, 2, 3, 3)",
                "(1, 2, 2, 2)")


def test_loss_errors():
    r = Run()
    z = r.input(rand(4, 3), name="logits")
    flt = r.input(rand(4), name="flabels")
    lab = r.input(np.zeros(4, np.int32), name="labels")
    raises_here(lambda: nn.cross_entropy(r.g, z, flt, r.prog), "cross_entropy", "flabels", "float32",
                "int32", "(4,)")
    raises_here(lambda: nn.nll_loss(r.g, z, lab, r.prog, reduction="avg"), "nll_loss", "'avg'")
    raises_here(lambda: nn.cross_entropy_grad(r.g, z, lab, flt, r.prog), "cross_entropy_grad",
                "grad_loss", "(4,)", "()")
    raises_here(lambda: nn.mse_loss(r.g, z, flt, r.prog), "mse_loss", "(4, 3)", "(4,)")
    raises_here(lambda: nn.cross_entropy(r.g, z.reshape(12), lab, r.prog), "cross_entropy", "(12,)")


def test_option_and_kind_errors():
    r = Run()
    x = r.input(rand(3, 4), name="x")
    msg = raises_here(lambda: nn.batch_norm_training(r.g, x, None, None, r.prog,
                                                     options={"stable_algo": True}),
                      "batch_norm_training", "unknown option 'stable_algo'")
    assert "stable_algorithm" in msg  # did-you-mean
    raises_here(lambda: nn.batch_norm_training(r.g, x, None, None, r.prog,
                                               options={"unbiased_var": "yes"}), "unbiased_var", "bool")
    raises_here(lambda: nn.softmax(r.g, x, r.prog, options={"anything": 1}), "softmax", "unknown option")
    raises_here(lambda: nn.non_linearity(r.g, x, r.prog, kind="relu"), "non_linearity", "'relu'", "GELU_ERF")


# -- options and edge cases ------------------------------------------------------------------------------
def test_stable_batch_statistics_survive_a_large_mean():
    """E[x^2] - E[x]^2 in fp32 loses a spread of 1 under a mean of 3000; two passes do not."""
    x = rand(8, 2, 64) + 3000
    r = Run()
    xi = r.input(x)
    _, _, var_fast = nn.batch_norm_training(r.g, xi, None, None, r.prog)
    _, _, var_stable = nn.batch_norm_training(r.g, xi, None, None, r.prog,
                                              options={"stable_algorithm": True})
    fast, stable = r(var_fast, var_stable)
    want = x.astype(np.float64).var(axis=(0, 2))
    np.testing.assert_allclose(stable, want, rtol=1e-4)
    assert np.max(np.abs(fast - want) / want) > 1e-3


def test_empty_losses_are_nan_for_mean_and_zero_for_sum():
    r = Run()
    z, lab = r.input(np.zeros((0, 3), np.float32)), r.input(np.zeros(0, np.int32))
    x = r.input(np.zeros((0, 4), np.float32))
    outs = [nn.cross_entropy(r.g, z, lab, r.prog), nn.nll_loss(r.g, z, lab, r.prog, reduction="sum"),
            nn.mse_loss(r.g, x, x, r.prog), nn.mse_loss(r.g, x, x, r.prog, reduction="sum")]
    ce, nll, mse_mean, mse_sum = r(*outs)
    assert np.isnan(ce) and nll == 0 and np.isnan(mse_mean) and mse_sum == 0


def test_all_ignored_rows_give_nan_mean_and_zero_gradient():
    r = Run()
    z = r.input(rand(3, 4))
    lab = r.input(np.full(3, 7, np.int32))
    one = r.input(np.float32(1))
    loss = nn.cross_entropy(r.g, z, lab, r.prog, ignore_index=7)
    dz = nn.cross_entropy_grad(r.g, z, lab, one, r.prog, ignore_index=7)
    got_loss, got_dz = r(loss, dz)
    assert np.isnan(got_loss) and not np.any(got_dz)


def test_empty_batches_give_empty_results_and_nan_statistics():
    r = Run()
    x4 = r.input(np.zeros((0, 3, 4, 4), np.float32))
    w = r.input(rand(3))
    _, m, v = nn.batch_norm_training(r.g, x4, w, w, r.prog)
    bdx, bdw, _ = nn.batch_norm_grad(r.g, x4, x4, m, v, w, r.prog)
    gn, gm, _ = nn.group_norm(r.g, x4, w, w, r.prog, num_groups=3)
    gdx, gdw, _ = nn.group_norm_grad(r.g, x4, x4, gm, gm, w, r.prog, num_groups=3)
    pg = nn.max_pool_grad(r.g, x4, r.input(np.zeros((0, 3, 2, 2), np.float32)), r.prog, kernel=2)
    x2 = r.input(np.zeros((0, 5), np.float32))
    w5 = r.input(rand(5))
    _, lm, ls = nn.layer_norm(r.g, x2, w5, None, r.prog)
    ldx, ldw, _ = nn.layer_norm_grad(r.g, x2, x2, lm, ls, w5, r.prog)
    got = r(m, v, bdx, bdw, gn, gm, gdx, gdw, pg, ldx, ldw)
    assert np.all(np.isnan(got[0])) and np.all(np.isnan(got[1]))
    assert [a.shape for a in got[2:]] == [(0, 3, 4, 4), (3,), (0, 3, 4, 4), (0, 3), (0, 3, 4, 4), (3,),
                                          (0, 3, 4, 4), (0, 5), (5,)]
    assert not got[3].any() and not got[7].any() and not got[10].any()  # no rows: zero gradients


def test_unmapped_input_is_named():
    r = Run()
    x = r.g.add_variable(sp.float32, (4, 4), name="floating")
    raises_here(lambda: nn.softmax(r.g, x, r.prog), "softmax", "floating", "not mapped")


def test_layer_norm_without_weight_returns_no_parameter_gradients():
    r = Run()
    x, dy = r.input(rand(5, 8)), r.input(rand(5, 8, seed=1))
    _, mean, inv_std = nn.layer_norm(r.g, x, None, None, r.prog)
    dx, dw, db = nn.layer_norm_grad(r.g, dy, x, mean, inv_std, None, r.prog)
    assert dw is None and db is None
    xt = tt(rand(5, 8))
    F.layer_norm(xt, (8,)).backward(torch.tensor(rand(5, 8, seed=1)))
    close(r(dx)[0], xt.grad, rtol=1e-4, atol=1e-5)


# -- planners and layout ---------------------------------------------------------------------------------
def _bulk_groups(g, name):
    """The bulk vertex groups of the compute sets whose name ends with ``name``."""
    return [grp for cs, table in zip(g.compute_sets, g.vertex_tables, strict=True)
            if cs.name.endswith(name) for grp in table.bulk]


def test_rows_stay_whole_on_the_tile_of_their_vertex_even_when_the_input_splits_them():
    x = rand(37, 50, scale=2)
    r = Run()
    xi = r.input(x, grain=1)  # 1850 elements over 8 tiles: most tiles' boundaries cut a row
    y = nn.softmax(r.g, xi, r.prog)
    tiles = r.g.tile_of(y)
    assert np.all(tiles == tiles[:, :1])  # every output row on one tile
    assert np.unique(tiles).size == 8
    for grp in _bulk_groups(r.g, "softmax"):
        out_tiles = r.g.tile_of(grp.fields["out"])
        assert np.all(out_tiles == grp.tiles[:, None])  # each vertex writes its rows locally
    eng = r.engine()
    step = next(s for s in eng.report.steps if s["op"] == "softmax")
    assert step["bytes_exchanged"] > 0  # the cut rows' remote parts come over the exchange
    close(eng.read_tensor(y), torch.softmax(torch.tensor(x), -1))


def test_row_plan_fills_every_worker_with_zero_copy_batches():
    g = sp.Graph(sp.targets.GC200)
    x = g.add_variable(sp.float32, (8192, 1024), name="x")
    sp.ops.map_linearly(g, x, grain_size=1024)
    nn.softmax(g, x, P.Sequence())
    (grp,) = _bulk_groups(g, "softmax")
    assert grp.num_vertices == 8192 and grp.fields["x"].shape == (8192, 1024)
    assert grp.fields["x"].is_strided and grp.fields["out"].is_strided
    per_tile = np.bincount(grp.tiles, minlength=1472)
    assert per_tile.max() <= 6 and np.count_nonzero(per_tile) >= 1365

    r = Run()
    r.input(rand(6000, 10))
    nn.layer_norm(r.g, next(iter(r.feeds)), None, None, r.prog)
    groups = _bulk_groups(r.g, "layer_norm")
    assert sum(grp.num_vertices for grp in groups) == 48  # 8 tiles x 6 workers, 125 rows each
    assert groups[0].fields["x"].shape == (48, 1250) and groups[0].fields["x"].is_strided


def test_two_stage_reduction_runs_on_tile_then_across_tiles():
    r = Run()
    x, dy, w = r.input(rand(96, 16)), r.input(rand(96, 16, seed=1)), r.input(rand(16, seed=2))
    _, mean, inv_std = nn.layer_norm(r.g, x, w, None, r.prog)
    _, dw, db = nn.layer_norm_grad(r.g, dy, x, mean, inv_std, w, r.prog)
    names = [cs.name for cs in r.g.compute_sets]
    assert any("reduce/on_tile" in n for n in names) and any("reduce/cross_tile" in n for n in names)
    (stage_a,) = _bulk_groups(r.g, "reduce/on_tile")
    assert np.unique(stage_a.tiles).size == stage_a.num_vertices == 8  # one per tile
    got_dw, got_db = r(dw, db)
    xs = rand(96, 16).astype(np.float64)
    xhat = (xs - xs.mean(1, keepdims=True)) / np.sqrt(xs.var(1, keepdims=True) + 1e-5)
    close(got_dw, (rand(96, 16, seed=1) * xhat).sum(0), rtol=1e-4, atol=1e-5)
    close(got_db, rand(96, 16, seed=1).astype(np.float64).sum(0), rtol=1e-5, atol=1e-5)

    r2 = Run()  # one row per tile: nothing to add on a tile, straight to the cross-tile stage
    x2, dy2, w2 = r2.input(rand(8, 16)), r2.input(rand(8, 16, seed=1)), r2.input(rand(16, seed=2))
    _, m2, s2 = nn.layer_norm(r2.g, x2, w2, None, r2.prog)
    nn.layer_norm_grad(r2.g, dy2, x2, m2, s2, w2, r2.prog)
    assert not any("reduce/on_tile" in cs.name for cs in r2.g.compute_sets)


def test_pooling_bands_spread_few_planes_over_the_workers():
    r = Run()
    x = r.input(rand(1, 2, 32, 8))
    y = nn.max_pool(r.g, x, r.prog, kernel=2)  # 16 output rows per plane, 48 workers, 2 planes
    groups = _bulk_groups(r.g, "max_pool")
    assert sum(grp.num_vertices for grp in groups) == 32  # 16 bands x 2 planes
    tiles = r.g.tile_of(y)
    assert np.unique(tiles).size == 8
    close(r(y)[0], F.max_pool2d(torch.tensor(rand(1, 2, 32, 8)), 2))


def test_batch_norm_plans_channel_blocks_for_small_planes_and_pieces_for_large_ones():
    r = Run()
    nn.batch_norm_training(r.g, r.input(rand(16, 64)), None, None, r.prog)
    moments = _bulk_groups(r.g, "moments")
    assert sum(grp.num_vertices for grp in moments) == 16  # 64 channels per vertex (P = 1)
    r = Run()
    x = rand(1, 2, 4096)
    _, mean, var = nn.batch_norm_training(r.g, r.input(x), None, None, r.prog)
    moments = _bulk_groups(r.g, "moments")
    assert sum(grp.num_vertices for grp in moments) == 48  # 24 pieces per plane
    got_mean, got_var = r(mean, var)
    close(got_mean, x.astype(np.float64).mean(axis=(0, 2)), rtol=1e-5, atol=1e-6)
    close(got_var, x.astype(np.float64).var(axis=(0, 2)), rtol=1e-4)


def _all_ops_graph(r: Run):
    x = r.input(rand(12, 20, scale=2), name="x")
    img = r.input(rand(2, 3, 9, 9), name="img")
    dimg = r.input(rand(2, 3, 4, 4, seed=5), name="dimg")
    lab = r.input(np.arange(12, dtype=np.int32) % 20, name="lab")
    w = r.input(rand(20, seed=3), name="w")
    one = r.input(np.float32(1), name="one")
    y = nn.softmax(r.g, x, r.prog)
    ln, m, s = nn.layer_norm(r.g, x, w, w, r.prog)
    dx, dw, db = nn.layer_norm_grad(r.g, y, x, m, s, w, r.prog)
    bn, bm, bv = nn.batch_norm_training(r.g, img, None, None, r.prog)
    pg = nn.max_pool_grad(r.g, img, dimg, r.prog, kernel=3, stride=2)
    ce = nn.cross_entropy_grad(r.g, x, lab, one, r.prog)
    return [y, ln, dx, dw, db, bn, bm, bv, pg, ce]


def test_fast_engine_matches_the_reference_interpreter_bitwise():
    r = Run()
    outs = _all_ops_graph(r)
    fast = r(*outs)
    ref = r(*outs, options={"engine.reference": True})
    for a, b in zip(fast, ref, strict=True):
        assert a.tobytes() == b.tobytes()


def test_replicated_graphs_run_each_replica_on_its_own_data():
    x = np.stack([rand(6, 10, seed=1), rand(6, 10, seed=2) * 3])
    img = np.stack([rand(2, 2, 6, 6, seed=3), rand(2, 2, 6, 6, seed=4)])
    r = Run(replication_factor=2)
    xi, ii = r.input(x), r.input(img)
    y = nn.log_softmax(r.g, xi, r.prog)
    ln, _, _ = nn.layer_norm(r.g, xi, None, None, r.prog)
    p = nn.max_pool(r.g, ii, r.prog, kernel=3, stride=2, padding=1)
    got_y, got_ln, got_p = r(y, ln, p)
    for k in range(2):
        close(got_y[k], torch.log_softmax(torch.tensor(x[k]), -1))
        close(got_ln[k], F.layer_norm(torch.tensor(x[k]), (10,)), rtol=1e-5, atol=1e-5)
        close(got_p[k], F.max_pool2d(torch.tensor(img[k]), 3, 2, 1))


# -- cost sanity -------------------------------------------------------------------------------------------
def _compute_cycles(build):
    r = Run()
    build(r)
    eng = r.engine()
    return {s["op"]: s["compute_cycles"] for s in eng.report.steps if s["kind"] == "compute"}, eng


def test_softmax_cycles_grow_with_the_row_length():
    short, _ = _compute_cycles(lambda r: nn.softmax(r.g, r.input(rand(48, 256)), r.prog))
    long, _ = _compute_cycles(lambda r: nn.softmax(r.g, r.input(rand(48, 512)), r.prog))
    assert 1.8 < long["softmax"] / short["softmax"] < 2.1


def test_every_nn_codelet_has_an_estimate_and_counts_flops():
    r = Run()
    _all_ops_graph(r)
    eng = r.engine()
    steps = [s for s in eng.executable.steps if s.kind.value == "compute"]
    assert steps and not any(s.estimated_by_default for s in steps)
    softmax_step = next(s for s in steps if s.op == "softmax")
    assert softmax_step.flops == 5 * 12 * 20 and softmax_step.compute_cycles > 0
    assert eng.report.fits


def test_bench_sized_softmax_fits_a_gc200_and_needs_no_exchange_when_rows_are_local():
    g = sp.Graph(sp.targets.GC200)
    x = g.add_variable(sp.float32, (8192, 1024), name="x")
    sp.ops.map_linearly(g, x, grain_size=1024)
    prog = P.Sequence()
    nn.softmax(g, x, prog)
    eng = sp.Engine(g, [prog], estimate_only=True)
    eng.run(0)
    (step,) = [s for s in eng.report.steps if s["op"] == "softmax"]
    assert step["bytes_exchanged"] == 0 and eng.report.fits
    # 6 rows per tile at most, one per worker: the busiest tile runs one row of 512 fp32 vectors
    per_row = codelets.softmax_rows_codelet(sp.float32, False).cycles(1024, 1024, np.array([1024]),
                                                                     sp.targets.GC200)
    assert step["compute_cycles"] == 6 * int(per_row[0])


def test_docstring_examples_run():
    assert doctest.testmod(nn).failed == 0


def test_norm_and_activation_outputs_keep_a_channels_last_input_s_layout():
    """A convolution's output is an NCHW view of channels-innermost storage; batch norm's and
    ReLU's outputs are laid out the same way (Poplar's clone), each element on its input's tile,
    so the ops read and write whole runs: oracle numpy/torch for values, the strides by hand."""
    r = Run()
    x = rand(2, 3, 4, 5, seed=7)
    base = r.g.add_variable(sp.float32, (2, 4, 5, 3), name="nhwc")
    sp.ops.map_linearly(r.g, base, grain_size=6)
    view = base.transpose(0, 3, 1, 2)  # NCHW view, channels innermost in memory
    r.feeds[base] = x.transpose(0, 2, 3, 1)
    w, b, m, v = (np.abs(rand(3, seed=s)) + 0.5 for s in range(4))
    y = nn.batch_norm(r.g, view, *(r.input(a) for a in (w, b, m, v)), r.prog, eps=1e-3)
    z = nn.non_linearity(r.g, y, r.prog)
    assert y.strides == (60, 1, 15, 3) and z.strides == (60, 1, 15, 3)  # (N, C, H, W) over NHWC storage
    np.testing.assert_array_equal(r.g.tile_of(y), r.g.tile_of(view))
    got_y, got_z = r(y, z)
    want = F.batch_norm(tt(x, False), tt(m, False), tt(v, False), tt(w, False), tt(b, False),
                        training=False, eps=1e-3).numpy()
    close(got_y, want)
    close(got_z, np.maximum(want, 0))
