"""The built-in ATen lowerings against eager PyTorch, a group of ops per compiled model.

Each group is one module returning many results, so one export and compile checks many
lowerings; results are compared leaf by leaf (fp32 within 1e-4 relative to the largest value,
integers and booleans exactly).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch.utils import _pytree as pytree

import softipu as sp
import softipu.torch as st

OPTS = st.Options(target=sp.targets.ipu_model(tiles=8, bytes_per_tile=512 * 1024))


class Group(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


def check(fn, *args, rtol=1e-4):
    module = Group(fn).eval()
    got = st.inference_model(module, OPTS)(*args)
    with torch.no_grad():
        want = module(*args)
    got_leaves, want_leaves = pytree.tree_leaves(got), pytree.tree_leaves(want)
    assert len(got_leaves) == len(want_leaves)
    for i, (g, w) in enumerate(zip(got_leaves, want_leaves, strict=True)):
        assert g.shape == w.shape and g.dtype == w.dtype, f"result {i}: {g.shape} {g.dtype} vs {w.shape} {w.dtype}"
        if w.dtype.is_floating_point:
            both_nan = torch.isnan(g) & torch.isnan(w)
            g, w = torch.where(both_nan, 0, g).double(), torch.where(both_nan, 0, w).double()
            scale = max(float(w[torch.isfinite(w)].abs().max()) if torch.isfinite(w).any() else 1.0, 1e-6)
            finite = torch.isfinite(w)
            assert torch.equal(torch.isfinite(g), finite), f"result {i}: inf/nan differ"
            err = float((g - w)[finite].abs().max()) / scale if finite.any() else 0.0
            assert err <= rtol, f"result {i}: relative error {err:.3g}"
        else:
            assert torch.equal(g, w), f"result {i}: {g} != {w}"


def rand(*shape, seed=0, low=-2.0, high=2.0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g) * (high - low) + low


X = rand(3, 5, seed=1)
Y = rand(3, 5, seed=2)
POS = rand(3, 5, seed=3, low=0.1, high=3.0)
UNIT = rand(3, 5, seed=4, low=-0.9, high=0.9)
INTS = torch.tensor([[7, -3, 0, 4, 9], [-8, 2, 5, -1, 6], [3, 3, -7, 8, -2]])


def unary_group(x, pos, unit):
    return (x.abs(), -x, x.sign(), x.exp(), x.expm1(), pos.log(), pos.log1p(), pos.sqrt(), pos.rsqrt(),
            x.sin(), x.cos(), unit.tan(), x.tanh(), x.sigmoid(), torch.erf(x), x.relu(), pos.reciprocal(),
            x.floor(), x.ceil(), (x * 3).round(), x.trunc(), pos.log2(), pos.log10(), unit.asin(),
            unit.acos(), x.atan(), x.sinh(), x.cosh(), unit.atanh(), x.asinh(), (pos + 1).acosh(),
            F.silu(x), F.hardsigmoid(x), F.hardswish(x), F.mish(x), F.gelu(x),
            F.gelu(x, approximate="tanh"), F.leaky_relu(x, 0.2), F.elu(x), F.hardtanh(x), F.softplus(x),
            torch.round(x, decimals=1), torch.exp2(x), F.relu6(x * 4))


def binary_group(x, y, pos, i):
    return (x + y, x - 2 * y, x * y, x / pos, x ** 2, pos ** y, 2.0 ** x, torch.maximum(x, y),
            torch.minimum(x, y), torch.atan2(x, y), torch.remainder(x, pos), torch.fmod(x, pos),
            x == y, x != y, x < y, x <= 0, x > y, x >= 0.5, (x > 0) & (y > 0), (x > 0) | (y > 0),
            (x > 0) ^ (y > 0), torch.logical_not(x > 0), torch.where(x > y, x, y),
            torch.where(x > 0, x, 0.0), x.clamp(-1, 1), x.clamp(min=0), x.clamp(max=0.5),
            torch.clamp(x, y - 1, y + 1), i + 1, i * 2, i - y.int(), i // 3, i % 4, torch.div(i, 3, rounding_mode="trunc"),
            torch.div(x, 0.3, rounding_mode="floor"), torch.div(x, 0.3, rounding_mode="trunc"),
            i & 6, i | 1, i ^ 5, ~i, i / 2, x + i, torch.rsub(x, 1.0), torch.isnan(x / 0 * 0),
            torch.isinf(x / 0), x.masked_fill(x < 0, -1.0))


def reduce_group(x, i):
    return (x.sum(), x.sum(0), x.sum(-1, keepdim=True), x.mean(), x.mean(1), x.amax(0), x.amin(-1),
            x.max(), x.min(), x.max(1), x.min(0, keepdim=True), x.argmax(), x.argmax(0), x.argmin(1),
            x.prod(1), (x > 0).any(), (x > 0).any(1), (x > 0).all(0), x.var(), x.var(1), x.std(0),
            torch.var_mean(x, 1), torch.linalg.vector_norm(x), torch.linalg.vector_norm(x, 1, dim=1),
            torch.linalg.vector_norm(x, math.inf, dim=0), F.normalize(x, dim=-1), x.cumsum(1),
            i.sum(), i.sum(1), i.cumsum(0), torch.logsumexp(x, 1), x.softmax(-1), x.log_softmax(0),
            i.max(1))


def shape_group(x, y):
    return (x.view(5, 3), x.reshape(-1), x.t(), x.permute(1, 0), x.transpose(0, 1).contiguous(),
            x.unsqueeze(1), x[None, :, None].squeeze(), x[:, 1:4:2], x[1], x[:, -1], x.expand(2, 3, 5),
            torch.cat([x, y], 0), torch.cat([x, y], 1), torch.stack([x, y], 1), x.split(2, 1),
            x.unbind(0), x.flip(0), x.flip(0, 1), x.repeat(2, 1), x.repeat(2, 2, 1), x.diagonal(),
            x.diagonal(1), torch.diag_embed(x[0]).diagonal(), F.pad(x, (1, 2)), F.pad(x, (1, 1, 2, 0), value=3.0),
            F.pad(x, (-1, 1)), x.clone(), x.double().float(), x.to(torch.int32), x.bool(), x.half().float(),
            torch.zeros(2, 3), torch.ones_like(x), torch.full_like(x, 4.0), torch.arange(6),
            torch.arange(1, 7, 2), torch.arange(0.0, 1.0, 0.25), x.new_zeros(2), torch.empty(3).fill_(2.0),
            x.narrow(1, 1, 2), x.chunk(2, 0), x.flatten(), x.T @ y, x.unflatten(1, (5, 1)),
            x.movedim(0, 1), x.tril(), x.triu(1))


CONV_W = (torch.ones(2, 3, 3, 3) * 0.1, rand(3, 1, 2, 2, seed=9), rand(4, 3, 2, seed=10))


def nn_group(x, y, w, b, images):
    return (F.linear(x, w, b), x @ w.t(), torch.addmm(b, x, w.t(), beta=0.5, alpha=2.0),
            torch.bmm(x[None].expand(2, 3, 5), w.t()[None].expand(2, 5, 4)),
            torch.matmul(x[None], w.t()), torch.baddbmm(b[None, None], x[None], w.t()[None]),
            F.layer_norm(x, (5,)), F.layer_norm(x, (5,), y[0], y[1]), F.group_norm(images, 1),
            F.max_pool2d(images, 2), F.max_pool2d(images, 3, 1, 1), F.avg_pool2d(images, 2),
            F.avg_pool2d(images, 3, 1, 1, count_include_pad=False), F.adaptive_avg_pool2d(images, 2),
            F.interpolate(images, scale_factor=2), F.interpolate(images, size=(6, 2)),
            F.conv2d(images, CONV_W[0], torch.ones(2), padding=1),
            F.conv2d(images, CONV_W[1], stride=2, groups=3),
            F.conv1d(images[:, :, 0], CONV_W[2], dilation=2),
            F.batch_norm(images, torch.ones(3) * 0.1, torch.ones(3) * 2, training=False))


def index_group(x, idx, table, ids):
    return (F.embedding(ids, table), x.index_select(1, idx.abs()), x[:, idx], x[idx[1:]], x[[0, 2], [1, -1]],
            torch.gather(x, 1, torch.tensor([[0, 4], [1, 1], [3, 0]])),
            torch.scatter(x, 1, torch.tensor([[0], [2], [4]]), 9.0),
            torch.scatter(x, 0, torch.tensor([[2, 0, 1, 0, 2]]), torch.ones(1, 5)),
            torch.scatter_add(x, 1, torch.tensor([[0, 0], [1, 1], [4, 4]]), torch.ones(3, 2)),
            x.index_put((torch.tensor([0, 2]),), torch.tensor(7.0)),
            x.index_put((torch.tensor([1, 1]),), torch.ones(5), accumulate=True),
            torch.where(x > 0, x, torch.zeros_like(x)), x.sort(1), x.sort(0, descending=True),
            x.topk(2), x.topk(2, 0, largest=False), x.select_scatter(torch.zeros(5), 0, 1),
            x.slice_scatter(torch.ones(3, 2), 1, 1, 3))


def masked_group(x):
    y = x.clone()
    y[y < 0] = 0.0
    return y


def extra_group(x, y, images, mask):
    return (F.avg_pool1d(images[:, :, 0], 2), F.adaptive_avg_pool1d(images[:, :, 0], 2),
            F.interpolate(images, scale_factor=2, mode="bilinear"),
            F.interpolate(images, size=(7, 5), mode="bilinear", align_corners=True),
            torch.scatter_reduce(x, 1, torch.tensor([[0, 0], [1, 3], [4, 4]]), y[:, :2], "sum"),
            x.masked_scatter(mask, y * 10), torch.cdist(x, y), torch.cdist(x[None], y[None], p=1),
            F.pdist(x))


GROUPS = {
    "unary": (unary_group, (X, POS, UNIT)),
    "binary": (binary_group, (X, Y, POS, INTS)),
    "reduce": (reduce_group, (X, INTS)),
    "shape": (shape_group, (X, Y)),
    "nn": (nn_group, (X, Y, rand(4, 5, seed=5), rand(4, seed=6), rand(2, 3, 4, 4, seed=7))),
    "index": (index_group, (X, torch.tensor([4, 0, -2]), rand(10, 3, seed=8), torch.tensor([[1, 9], [0, 3]]))),
    "masked": (masked_group, (X,)),
    "extra": (extra_group, (X, Y, rand(2, 3, 4, 4, seed=7), X > 0)),
}


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_group_matches_eager(group):
    fn, args = GROUPS[group]
    check(fn, *args)


def test_random_ops_draw_new_numbers_each_call():
    class Noise(torch.nn.Module):
        def forward(self, x):
            return x + torch.rand_like(x), torch.randn(1000)

    model = st.inference_model(Noise(), OPTS.replace(seed=5))
    x = torch.zeros(1000)
    first, normal = model(x)
    second, _ = model(x)
    assert 0.0 <= float(first.min()) and float(first.max()) < 1.0
    assert abs(float(normal.mean())) < 0.15 and abs(float(normal.std()) - 1.0) < 0.15
    assert not torch.equal(first, second)  # the device seed advances after every step


def test_randperm_is_a_permutation():
    class Perm(torch.nn.Module):
        def forward(self, x):
            return x[torch.randperm(8)]

    model = st.inference_model(Perm(), OPTS)
    x = torch.arange(8.0)
    first, second = model(x), model(x)
    assert sorted(first.tolist()) == x.tolist() and not torch.equal(first, second)


def test_elementwise_work_follows_the_memory_order_of_its_operand():
    import numpy as np

    from softipu import program as P
    from softipu.frontends.torch.lowerings.pointwise import ordered
    from softipu.ops import elementwise as ew

    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    prog = P.Sequence()
    x = g.add_variable(sp.float32, (4, 3), name="x")
    b = g.add_variable(sp.float32, (4,), name="b")
    sp.ops.map_linearly(g, x)
    sp.ops.map_linearly(g, b)
    y = ordered(lambda a, c: ew.add(g, a, c, prog), x.T, b)  # x.T is (3, 4), column-major
    assert y.shape == (3, 4) and y.strides == (1, 3)  # computed as (4, 3), returned as a view
    eng = sp.Engine(g, [prog])
    xs, bs = np.arange(12.0).reshape(4, 3), np.array([10.0, 20.0, 30.0, 40.0])
    eng.write_tensor(x, xs)
    eng.write_tensor(b, bs)
    eng.run(0)
    assert np.array_equal(eng.read_tensor(y), xs.T + bs)
