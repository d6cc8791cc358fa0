"""Models trained on a simulated IPU against eager PyTorch from the same weights and data.

Each case runs 20 steps on the IPU (``softipu.torch.training_model``, compiled once per model and
optimizer) and in eager torch (the same optimizer's own ``step``) from the same weights and data,
and compares the per-step losses and the final weights (1e-4 relative, fp32). The matrix: the MLP
with every optimizer, every other model with one or two, so each optimizer trains at least two
models (LAMB three: it is the one checked against its published definition).
No parameter has a gradient that is zero in exact arithmetic (a conv bias before batch norm, an
attention key bias): adaptive optimizers would scale its float rounding noise into full steps.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

import softipu as sp
import softipu.torch as st
from softipu.frontends.torch import optim as ipu_optim


# -- the models ------------------------------------------------------------------------------------------
class MLP(nn.Module):
    def __init__(self, d: int = 16, h: int = 32, c: int = 5) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d, h), nn.GELU(), nn.Linear(h, h), nn.Tanh(), nn.Linear(h, c))

    def forward(self, x, y):
        out = self.net(x)
        return out, F.cross_entropy(out, y)


class Residual(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.c2, self.b2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        return F.relu(x + self.b2(self.c2(F.relu(self.b1(self.c1(x))))))


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.pool, self.res, self.avg = nn.MaxPool2d(2), Residual(4), nn.AvgPool2d(2)
        self.fc = nn.Linear(16, 3)

    def forward(self, x, y):
        h = self.avg(self.res(self.pool(F.relu(self.bn(self.stem(x))))))
        out = self.fc(h.flatten(1))
        return out, F.cross_entropy(out, y)


class Encoder(nn.Module):
    """A transformer encoder with an MLM-style head (labels -100 where nothing is predicted)."""

    def __init__(self, vocab: int = 50, d: int = 16, heads: int = 2, seq: int = 8) -> None:
        super().__init__()
        self.emb, self.pos = nn.Embedding(vocab, d), nn.Parameter(torch.randn(seq, d) * 0.1)
        layer = nn.TransformerEncoderLayer(d, heads, 2 * d, dropout=0.0, batch_first=True, bias=False)
        self.enc = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.ln, self.head = nn.LayerNorm(d), nn.Linear(d, vocab)

    def forward(self, ids, labels):
        logits = self.head(self.ln(self.enc(self.emb(ids) + self.pos)))
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))


class GPT(nn.Module):
    """A GPT-style decoder block with a causal mask and tied output embedding."""

    def __init__(self, vocab: int = 40, d: int = 16, heads: int = 2, seq: int = 8) -> None:
        super().__init__()
        self.emb, self.pos = nn.Embedding(vocab, d), nn.Embedding(seq, d)
        self.ln1, self.qkv, self.proj = nn.LayerNorm(d), nn.Linear(d, 3 * d, bias=False), nn.Linear(d, d)
        self.ln2, self.lnf, self.heads = nn.LayerNorm(d), nn.LayerNorm(d), heads
        self.ff = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(approximate="tanh"), nn.Linear(4 * d, d))
        self.register_buffer("mask", torch.tril(torch.ones(seq, seq, dtype=torch.bool)))

    def forward(self, ids, targets):
        b, t = ids.shape
        d, h = self.emb.embedding_dim, self.heads
        x = self.emb(ids) + self.pos(torch.arange(t))
        q, k, v = (z.view(b, t, h, d // h).transpose(1, 2) for z in self.qkv(self.ln1(x)).split(d, dim=-1))
        att = ((q @ k.transpose(-2, -1)) / (d // h) ** 0.5).masked_fill(~self.mask[:t, :t], float("-inf"))
        x = x + self.proj((att.softmax(-1) @ v).transpose(1, 2).reshape(b, t, d))
        x = x + self.ff(self.ln2(x))
        logits = self.lnf(x) @ self.emb.weight.t()
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


class LSTMNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm, self.fc = nn.LSTM(6, 8, batch_first=True), nn.Linear(8, 3)

    def forward(self, x, y):
        out, _ = self.lstm(x)
        out = self.fc(out[:, -1])
        return out, F.mse_loss(out, y)


def batch(name: str, b: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if name == "mlp":
        return torch.randn(b, 16, generator=g), torch.randint(0, 5, (b,), generator=g)
    if name == "cnn":
        return torch.randn(b, 1, 8, 8, generator=g), torch.randint(0, 3, (b,), generator=g)
    if name == "encoder":
        ids, labels = torch.randint(0, 50, (b, 8), generator=g), torch.randint(0, 50, (b, 8), generator=g)
        labels[:, ::2] = -100
        return ids, labels
    if name == "gpt":
        return torch.randint(0, 40, (b, 8), generator=g), torch.randint(0, 40, (b, 8), generator=g)
    return torch.randn(b, 5, 6, generator=g), torch.randn(b, 3, generator=g)


MODELS = {"mlp": (MLP, 16), "cnn": (CNN, 16), "encoder": (Encoder, 32), "gpt": (GPT, 32), "lstm": (LSTMNet, 16)}

OPTIMIZERS = {
    "sgd_momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    "rmsprop": lambda p: torch.optim.RMSprop(p, lr=1e-3),
    "lamb": lambda p: ipu_optim.LAMB(p, lr=1e-2),
    "poptorch_sgd": lambda p: ipu_optim.SGD(p, lr=0.05, momentum=0.9),
}


def chip(tiles: int):
    # NOTE: these tiny models put their small ops' code and exchange on few tiles (tile 0 most),
    # beyond a 64 KiB test tile; the numbers are what these tests check, so tiles are larger.
    return sp.targets.ipu_model(tiles=tiles, bytes_per_tile=256 * 1024)


def loss_of(out):
    return out[-1] if isinstance(out, tuple) else out


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach() - b.detach()).abs().max() / b.detach().abs().max().clamp_min(1e-12))


STEPS = 20


def train_both(model_name: str, opt_name: str, steps: int = STEPS, b: int = 4, options: dict | None = None):
    """Per-step (ipu, eager) losses and (ipu, eager) modules after ``steps`` steps."""
    ctor, tiles = MODELS[model_name]
    torch.manual_seed(0)
    module = ctor()
    eager = copy.deepcopy(module)
    make = OPTIMIZERS[opt_name]
    opts = st.Options(target=chip(tiles), **(options or {}))
    model = st.training_model(module, make(module.parameters()), opts)
    eager_opt = make(eager.parameters())
    losses = []
    for i in range(steps):
        data = batch(model_name, b, seed=i)
        ipu = float(loss_of(model(*data)))
        eager_opt.zero_grad()
        ref = loss_of(eager(*data))
        ref.backward()
        eager_opt.step()
        losses.append((ipu, float(ref.detach())))
    return losses, module, eager, model


def check(losses, module, eager, tol: float = 1e-4) -> None:
    for step, (ipu, ref) in enumerate(losses):
        assert abs(ipu - ref) <= tol * max(abs(ref), 1e-6), f"step {step}: ipu loss {ipu} vs eager {ref}"
    ipu_params = dict(module.named_parameters())  # reading them copies the trained weights back
    for name, ref in eager.named_parameters():
        assert relative(ipu_params[name], ref) <= tol, f"{name}: {relative(ipu_params[name], ref)}"


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_mlp_with_every_optimizer_matches_eager(opt_name):
    check(*train_both("mlp", opt_name)[:3])


@pytest.mark.parametrize(("model_name", "opt_name"), [
    ("cnn", "sgd_momentum"), ("cnn", "lamb"), ("encoder", "adamw"), ("gpt", "adam"), ("gpt", "lamb"),
    ("lstm", "rmsprop")])
def test_each_model_matches_eager(model_name, opt_name):
    losses, module, eager, _ = train_both(model_name, opt_name)
    check(losses, module, eager)
    for name, ref in eager.named_buffers():  # batch norm's running statistics follow torch's
        got = dict(module.named_buffers())[name]
        assert torch.allclose(got.float(), ref.float(), rtol=1e-4, atol=1e-6), name


def test_gradient_accumulation_equals_eager_with_the_whole_batch():
    # 4 micro-batches of 4 per step, the mean of their gradients == eager on 16 at once.
    losses, module, eager, model = train_both("mlp", "adam", b=16,
                                              options={"gradient_accumulation": 4})
    ipu_params = dict(module.named_parameters())
    for name, ref in eager.named_parameters():
        assert relative(ipu_params[name], ref) <= 1e-4, name
    assert model.summary()["memory"]["gradients"] > 0


def test_sum_reduction_scales_the_gradients_by_the_accumulation_factor():
    torch.manual_seed(0)
    module = MLP()
    eager = copy.deepcopy(module)
    opts = st.Options(target=chip(16), gradient_accumulation=2,
                      accumulation_reduction="sum")
    model = st.training_model(module, torch.optim.SGD(module.parameters(), lr=0.1), opts)
    x, y = batch("mlp", 8)
    model(x, y)
    # Sum over two micro-batches of the mean loss of 4 == twice the mean over 8.
    eager_opt = torch.optim.SGD(eager.parameters(), lr=0.2)
    eager(x, y)[1].backward()
    eager_opt.step()
    for (name, got), ref in zip(module.named_parameters(), eager.parameters(), strict=True):
        assert relative(got, ref) <= 1e-4, name


@pytest.mark.parametrize("loss_scaling", [None, 128.0])
def test_loss_scaling_gives_the_same_training(loss_scaling):
    # The backward starts from loss x scaling; the update divides the gradients by it again.
    torch.manual_seed(0)
    module = MLP()
    eager = copy.deepcopy(module)
    kwargs = {} if loss_scaling is None else {"loss_scaling": loss_scaling}
    model = st.training_model(module, ipu_optim.SGD(module.parameters(), lr=0.1, **kwargs),
                              st.Options(target=chip(16)))
    eager_opt = torch.optim.SGD(eager.parameters(), lr=0.1)
    for i in range(3):
        x, y = batch("mlp", 4, seed=i)
        loss = model(x, y)[1]
        eager_opt.zero_grad()
        ref = eager(x, y)[1]
        ref.backward()
        eager_opt.step()
        assert abs(float(loss) - float(ref)) <= 1e-5 * float(ref)  # the loss comes back unscaled
    check([], module, eager)


def test_fp16_training_with_loss_scaling_follows_fp32():
    torch.manual_seed(0)
    module = MLP()
    eager = copy.deepcopy(module)
    half = module.half()
    model = st.training_model(half, ipu_optim.SGD(half.parameters(), lr=0.1, loss_scaling=256.0,
                                                  accum_type=torch.float32), st.Options(target=chip(16)))
    eager_opt = torch.optim.SGD(eager.parameters(), lr=0.1)
    losses = []
    for i in range(STEPS):
        x, y = batch("mlp", 8, seed=i % 2)
        loss = float(model(x.half(), y)[1])
        eager_opt.zero_grad()
        ref = eager(x, y)[1]
        ref.backward()
        eager_opt.step()
        losses.append(loss)
        assert abs(loss - float(ref)) <= 1e-2 * float(ref), (i, loss, float(ref))
    assert losses[-1] < losses[0] and losses[-2] < losses[1]  # it trains


def test_automatic_loss_scaling_doubles_or_halves_the_scale_each_step():
    # PopART's rule: the scale doubles unless more than 1e-7 of the gradients' elements reach the
    # upper bin (|g| >= 0.125 x 65535 in fp16), then it halves; fp16 scales clip at 2**15.
    torch.manual_seed(0)
    module = MLP()
    eager = copy.deepcopy(module)
    half = module.half()
    opts = st.Options(target=chip(16), auto_loss_scaling=True)
    model = st.training_model(half, ipu_optim.SGD(half.parameters(), lr=0.1, loss_scaling=2.0**13), opts)
    eager_opt = torch.optim.SGD(eager.parameters(), lr=0.1)
    scales = []
    for i in range(4):
        x, y = batch("mlp", 8, seed=i)
        loss = float(model(x.half(), y)[1])
        scales.append(float(model.engine.read_tensor(model.lowered.hyper["loss_scaling"])))
        eager_opt.zero_grad()
        ref = eager(x, y)[1]
        ref.backward()
        eager_opt.step()
        assert abs(loss - float(ref)) <= 1e-2 * float(ref), (i, loss, float(ref))
    # The gradients of this small model times 2**13.. stay far below the edge: doubling to the clip.
    assert scales == [2.0**14, 2.0**15, 2.0**15, 2.0**15]
