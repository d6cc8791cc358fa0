"""The mixture-of-experts layer: softipu.torch.SparseMoE against a per-token loop in torch, and the
graph-level op (ops.sparse_moe) against numpy, on routings that change between runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import softipu as sp
import softipu.torch as st
from softipu import program as P
from softipu.ops import OpError
from softipu.ops import sparse_moe as sm


def _loop_reference(layer: st.SparseMoE, x: torch.Tensor) -> torch.Tensor:
    """Each token through its top-k experts one at a time (independent of the custom op)."""
    flat = x.reshape(-1, x.shape[-1])
    out = torch.zeros_like(flat)
    logits = layer.router(flat)
    act = {"relu": torch.relu, "gelu": torch.nn.functional.gelu, "none": lambda v: v}[layer.activation]
    for t in range(flat.shape[0]):
        vals, idx = torch.topk(logits[t], layer.k)
        gates = torch.softmax(vals, dim=0)
        for g, e in zip(gates, idx, strict=True):
            out[t] += g * (layer.w2[e] @ act(layer.w1[e] @ flat[t]))
    return out.reshape(x.shape)


def test_sparse_moe_matches_torch_across_routings_on_dynamic_sparse_ops():
    torch.manual_seed(0)
    layer = st.SparseMoE(8, 12, experts=4, k=2, activation="gelu").eval()
    model = st.inference_model(layer, st.Options(target=sp.targets.ipu_model(tiles=8)))
    with torch.no_grad():
        for _ in range(3):  # new tokens, new routing, same compiled program
            x = torch.randn(2, 5, 8)
            want = _loop_reference(layer, x)
            torch.testing.assert_close(layer(x), want, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(model(x), want, atol=1e-4, rtol=1e-4)
        x = torch.randn(2, 5, 8)
        x[0, 0] = 100.0  # one token far from the rest
        torch.testing.assert_close(model(x), _loop_reference(layer, x), atol=1e-2, rtol=1e-4)
    ops = {s["op"] for s in model.report.steps}
    assert {"moe_experts", "fully_connected_sparse_grad_w", "fully_connected_fwd"} <= ops
    matmuls = [s for s in model.report.steps if s["op"] == "matmul"]
    assert len(matmuls) == 1, matmuls  # the router's logits; no dense product of any expert


def _moe_graph(t, d, e, h, k, dtype, tiles=8):
    g = sp.Graph(sp.targets.ipu_model(tiles=tiles))
    prog = P.Sequence()

    def var(shape, dt, name):
        v = g.add_variable(dt, shape, name=name)
        sp.ops.map_linearly(g, v)
        return v

    ins = [var((t, d), dtype, "x"), var((t, k), sp.int32, "idx"), var((t, k), dtype, "gates"),
           var((e, h, d), dtype, "w1"), var((e, d, h), dtype, "w2")]
    return g, prog, ins


@pytest.mark.parametrize("dtype", [sp.float32, sp.float16])
def test_moe_experts_op_vs_numpy_with_crowded_routing(dtype):
    rng = np.random.default_rng(3)
    t, d, e, h, k = 16, 8, 4, 4, 2
    g, prog, ins = _moe_graph(t, d, e, h, k, dtype)
    y = sm.moe_experts(g, *ins, prog, activation="relu")
    eng = sp.Engine(g, [prog])
    npt = dtype.numpy
    for crowded in (False, True):
        xv = rng.standard_normal((t, d)).astype(npt)
        w1 = rng.standard_normal((e, h, d)).astype(npt)
        w2 = rng.standard_normal((e, d, h)).astype(npt)
        idx = np.stack([rng.permutation(e)[:k] for _ in range(t)]).astype(np.int32)
        if crowded:
            idx[:] = [2, 3]  # every token on the last two experts: their buckets spill
        gates = rng.random((t, k)).astype(npt)
        for v, a in zip(ins, (xv, idx, gates, w1, w2), strict=True):
            eng.write_tensor(v, a)
        eng.run(0)
        f = [a.astype(np.float32) for a in (xv, gates, w1, w2)]
        want = np.zeros((t, d), np.float32)
        for i in range(t):
            for j in range(k):
                ex = idx[i, j]
                want[i] += f[1][i, j] * (f[3][ex] @ np.maximum(f[2][ex] @ f[0][i], 0))
        tol = 5e-2 if dtype is sp.float16 else 1e-4
        np.testing.assert_allclose(eng.read_tensor(y).astype(np.float32), want, rtol=tol, atol=tol)


def test_moe_experts_bad_shapes_are_clear_errors():
    g, prog, (x, idx, gates, w1, w2) = _moe_graph(4, 8, 3, 4, 2, sp.float32)
    with pytest.raises(OpError, match=r"moe_experts.*test_torch_moe.py.*w1 \(3, 4, 8\) and w2 \(3, 8, 4\) do not"
                                      r" fit x \(4, 6\)"):
        sm.moe_experts(g, x[:, :6], idx, gates, w1, w2, prog)
    with pytest.raises(OpError, match="activation 'tanh' is not one of"):
        sm.moe_experts(g, x, idx, gates, w1, w2, prog, activation="tanh")
    with pytest.raises(ValueError, match="k=5 must be in 1..experts=4"):
        st.SparseMoE(8, 8, experts=4, k=5)


def _loop_experts(x, idx, gates, w1, w2):
    """Per token and choice, ReLU experts in plain torch (autograd gives the oracle gradients)."""
    rows = []
    for t in range(x.shape[0]):
        acc = 0
        for j in range(idx.shape[1]):
            e = int(idx[t, j])
            acc = acc + gates[t, j] * (w2[e] @ torch.relu(w1[e] @ x[t]))
        rows.append(acc)
    return torch.stack(rows)


def test_moe_experts_grad_vs_torch_autograd():
    rng = np.random.default_rng(5)
    t, d, e, h, k = 12, 8, 4, 4, 2
    g, prog, ins = _moe_graph(t, d, e, h, k, sp.float32)
    dy = g.add_variable(sp.float32, (t, d), name="dy")
    sp.ops.map_linearly(g, dy)
    outs = sm.moe_experts_grad(g, dy, *ins, prog, activation="relu")
    eng = sp.Engine(g, [prog])
    for crowded in (False, True):  # the same engine, a new routing
        vals = [rng.standard_normal(s).astype(np.float32) for s in ((t, d), (t, k), (e, h, d), (e, d, h), (t, d))]
        idx = np.stack([rng.permutation(e)[:k] for _ in range(t)]).astype(np.int32)
        if crowded:
            idx[:] = [0, 1]
        for v, a in zip((ins[0], ins[2], ins[3], ins[4], dy), vals, strict=True):
            eng.write_tensor(v, a)
        eng.write_tensor(ins[1], idx)
        eng.run(0)
        tx, tg, t1, t2 = (torch.tensor(a, requires_grad=True) for a in vals[:4])
        _loop_experts(tx, idx, tg, t1, t2).backward(torch.tensor(vals[4]))
        for out, want in zip(outs, (tx.grad, tg.grad, t1.grad, t2.grad), strict=True):
            np.testing.assert_allclose(eng.read_tensor(out), want.numpy(), rtol=1e-4, atol=1e-4)


class _Classifier(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.moe = st.SparseMoE(8, 12, experts=4, k=2, activation="gelu")
        self.head = torch.nn.Linear(8, 3)

    def forward(self, x, y):
        out = self.head(self.moe(x))
        return out, torch.nn.functional.cross_entropy(out, y)


def test_sparse_moe_trains_like_torch():
    import copy

    torch.manual_seed(0)
    net = _Classifier()
    ref = copy.deepcopy(net)
    chip = sp.targets.ipu_model(tiles=8, bytes_per_tile=256 * 1024)
    model = st.training_model(net, torch.optim.SGD(net.parameters(), lr=0.1), st.Options(target=chip))
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    for i in range(2):
        gen = torch.Generator().manual_seed(i)
        x, y = torch.randn(6, 8, generator=gen), torch.randint(0, 3, (6,), generator=gen)
        _, loss = model(x, y)
        opt.zero_grad()
        _, want = ref(x, y)
        want.backward()
        opt.step()
        assert abs(float(loss) - float(want.detach())) < 1e-5
    for (name, p), q in zip(net.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), atol=1e-5, rtol=1e-5, msg=name)
    ops = {s["op"] for s in model.report.steps}
    assert "moe_experts_grad" in ops
