"""The PopTorch wrapper's per-call path: what it reads afresh on every call stays right when the
user changes the module after compiling (``.half()``, a new submodule), and the Transpose2d
codelet's one-shape shortcut and mixed-shape path both give numpy's transpose."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import softipu as sp
import softipu.poptorch as poptorch
from softipu.codelets.transpose import transpose_codelet
from softipu.frontends.poptorch_executor import _float_dtypes

SMALL = sp.targets.ipu_model(tiles=4)


def _torch_float_dtypes(model: torch.nn.Module) -> set[torch.dtype]:
    """The oracle: torch's own parameters()/buffers() walk."""
    return {t.dtype for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()}


def test_float_dtypes_match_torchs_walk_for_shared_half_and_mixed_modules():
    shared = torch.nn.Linear(3, 3)
    net = torch.nn.Sequential(shared, torch.nn.BatchNorm1d(3), torch.nn.Sequential(shared, torch.nn.ReLU()))
    net.register_buffer("steps", torch.zeros(2, dtype=torch.int64))
    net.register_buffer("absent", None)
    assert _float_dtypes(net) == _torch_float_dtypes(net) == {torch.float32}
    net.half()
    assert _float_dtypes(net) == _torch_float_dtypes(net) == {torch.float16}
    net.add_module("late", torch.nn.Linear(2, 2))  # a float32 submodule added afterwards
    assert _float_dtypes(net) == _torch_float_dtypes(net) == {torch.float16, torch.float32}


def test_half_after_the_first_call_is_seen_on_the_next_call():
    """The module's dtypes are read on every call, never from a stale copy: after ``.half()`` the
    float32 input goes as float16 (so it no longer matches the float32 executable: a clear error,
    as before), and after ``.float()`` again the call runs as at first."""
    torch.manual_seed(5)
    net = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU())
    model = poptorch.inferenceModel(net, poptorch.Options().setTarget(SMALL))
    x = torch.randn(5, 8)
    want = net(x)
    assert torch.allclose(model(x), want, atol=1e-5)
    net.half()
    with pytest.raises(poptorch.Error, match="float16 but Sequential was compiled for torch.float32"):
        model(x)
    net.float()
    assert torch.allclose(model(x), want, atol=1e-5)


def test_transpose2d_one_shape_and_mixed_shapes_give_numpys_transpose():
    compute = transpose_codelet(sp.float32).compute
    rng = np.random.default_rng(0)
    src = rng.standard_normal((3, 12)).astype(np.float32)
    for rows in ([[3], [3], [3]], [[2], [3], [4]], [[4], [6], [4]]):
        dst = np.empty_like(src)
        r = np.array(rows, np.int32)
        compute(src, dst, r, 12 // r)
        want = np.stack([s.reshape(k[0], 12 // k[0]).T.ravel() for s, k in zip(src, rows, strict=True)])
        np.testing.assert_array_equal(dst, want)
    empty = np.empty((0, 12), np.float32)
    compute(empty, empty.copy(), np.zeros((0, 1), np.int32), np.zeros((0, 1), np.int32))


def _layer_norm_oracle(x, w, b, k, eps):
    """The textbook numpy layer norm in float32 (np.mean's two passes), rows of ``x`` split in ``k``."""
    xs = x.astype(np.float32).reshape(*x.shape[:-1], k, -1)
    mean = xs.mean(axis=-1, keepdims=True, dtype=np.float32)
    centred = xs - mean
    var = (centred * centred).mean(axis=-1, keepdims=True, dtype=np.float32)
    rstd = np.float32(1) / np.sqrt(var + np.float32(eps))
    res = centred * rstd * w.astype(np.float32)[..., None, :] + b.astype(np.float32)[..., None, :]
    return res.reshape(x.shape).astype(x.dtype), mean[..., 0], rstd[..., 0]


@pytest.mark.parametrize(("dtype", "lead", "k", "n"), [(sp.float32, 128, 1, 128), (sp.float32, 3, 4, 768),
                                                       (sp.float16, 5, 2, 100), (sp.float32, 2, 3, 7)])
def test_layer_norm_rows_are_bitwise_numpys_mean_formula(dtype, lead, k, n):
    from softipu.codelets.nn.norms import norm_rows_codelet
    rng = np.random.default_rng(n)
    x = (rng.standard_normal((lead, k * n)) * 3 + 1).astype(dtype.numpy)
    w, b = (rng.standard_normal((lead, n)).astype(dtype.numpy) for _ in range(2))
    eps = np.full((lead, 1), 1e-5, np.float32)
    out, mean, inv_std = np.empty_like(x), np.empty((lead, k), np.float32), np.empty((lead, k), np.float32)
    norm_rows_codelet(dtype, dtype, False).compute(x, w, b, out, mean, inv_std, eps)
    for got, want in zip((out, mean, inv_std), _layer_norm_oracle(x, w, b, k, 1e-5), strict=True):
        assert got.tobytes() == want.tobytes()


def _gelu_erf_oracle(x: np.ndarray) -> np.ndarray:
    """popnn's GELU_ERF in float32 as written: 0.5 x (1 + erf(x / sqrt 2)), erf = t p(t^2) / q(t^2)
    on t clamped to [-4, 4], both polynomials by Horner's rule from 0."""
    from softipu.codelets.elementwise._numerics import _ERF_P, _ERF_Q
    y = x.astype(np.float32)
    t = np.clip(y * np.float32(np.sqrt(0.5)), np.float32(-4), np.float32(4))
    t2 = t * t
    p, q = np.zeros_like(t2), np.zeros_like(t2)
    for c in _ERF_P:
        p = p * t2 + np.float32(c)
    for c in _ERF_Q:
        q = q * t2 + np.float32(c)
    return (np.float32(0.5) * y * (np.float32(1) + p * t / q)).astype(x.dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_gelu_erf_is_bitwise_the_written_formula_also_in_place(dtype):
    from softipu.codelets.elementwise._numerics import _gelu_erf
    rng = np.random.default_rng(4)
    x = np.concatenate([rng.standard_normal(5000) * 3, [0.0, -0.0, 4.0, -4.0, 7.5, -9.0, 1e-30]]).astype(dtype)
    want = _gelu_erf_oracle(x)
    assert _gelu_erf(x).tobytes() == want.tobytes()
    out = np.empty_like(x)
    _gelu_erf(x, out=out)
    assert out.tobytes() == want.tobytes()
    _gelu_erf(x, out=x)  # out aliasing the input
    assert x.tobytes() == want.tobytes()


def test_forwards_signature_is_read_again_when_forward_is_replaced():
    class Add(torch.nn.Module):
        def forward(self, x, y=None):
            return x if y is None else x + y

    net = Add()
    model = poptorch.inferenceModel(net, poptorch.Options().setTarget(SMALL))
    x = torch.randn(3)
    assert torch.equal(model(x, y=x), x + x)  # keyword input bound to forward's y
    assert list(model._impl._signature().parameters) == ["x", "y"]
    net.forward = lambda a, b, c=1: a  # the user replaces forward: its own signature counts
    assert list(model._impl._signature().parameters) == ["a", "b", "c"]
