"""PopTorch's optimizers as pure update rules (softipu.frontends.torch.optim).

Oracles: ``torch.optim``'s own ``step`` on the same tensors (SGD, Adam, AdamW, RMSprop) and a numpy
LAMB written here from its published definition (You et al. 2019, Algorithm 2, with PopTorch's bias
correction switch and trust-ratio clip phi(z) = min(z, max_weight_norm)).
"""

from __future__ import annotations

import pytest
import torch

import softipu.poptorch as poptorch
from softipu.frontends.torch.optim import Kind, optimizer_spec

SHAPES = {"fc.weight": (5, 4), "fc.bias": (5,), "emb": (3, 2, 2)}
STEPS = 5


def _params(seed: int = 0) -> dict[str, torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.nn.Parameter(torch.randn(s, generator=gen)) for n, s in SHAPES.items()}


def _grads(steps: int = STEPS, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [{n: torch.randn(s, generator=gen) for n, s in SHAPES.items()} for _ in range(steps)]


def _run_spec(spec, named, grads, loss_scaling=1.0, optimizer=None):
    """Apply ``spec.update`` ``len(grads)`` times on eager tensors; returns the final parameters."""
    params = {n: p.detach().clone() for n, p in named.items()}
    state = {(s.param_name, s.name): torch.full(s.shape, s.initial, dtype=s.torch_dtype) for s in spec.state}
    values = spec.hyper_values(optimizer) if optimizer is not None else {}
    hyper = {h.name: torch.tensor(values[h.name], dtype=h.torch_dtype) for h in spec.hyper}
    for i, g in enumerate(grads):
        scaled = {n: t * loss_scaling for n, t in g.items()}
        new_p, new_s = spec.update(params, scaled, state, hyper, torch.tensor(float(i + 1)))
        params.update(new_p)
        state.update(new_s)
    return params, state


def _run_torch(make, grads, seed=0, clip=None):
    named = _params(seed)
    opt = make(list(named.values()))
    for g in grads:
        for n, p in named.items():
            p.grad = g[n].clone()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(list(named.values()), clip)
        opt.step()
    return {n: p.detach() for n, p in named.items()}


def _compare(make, *, loss_scaling=1.0, clip=None, rtol=1e-6, atol=1e-7, make_ref=None):
    grads = _grads()
    named = _params()
    opt = make(list(named.values()))
    spec = optimizer_spec(opt, named)
    got, _ = _run_spec(spec, named, grads, loss_scaling, opt)
    want = _run_torch(make_ref or make, grads, clip=clip)
    for n in SHAPES:
        torch.testing.assert_close(got[n], want[n], rtol=rtol, atol=atol, msg=lambda m, n=n: f"{n}: {m}")
    return spec


# ---------------------------------------------------------------------- SGD
SGD_CASES = {
    "plain": dict(lr=0.1),
    "momentum": dict(lr=0.1, momentum=0.9),
    "dampening": dict(lr=0.05, momentum=0.8, dampening=0.3),
    "nesterov_wd": dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
    "wd_only": dict(lr=0.1, weight_decay=0.1),
}


@pytest.mark.parametrize("case", sorted(SGD_CASES))
def test_torch_sgd_matches_torch_step(case):
    _compare(lambda ps: torch.optim.SGD(ps, **SGD_CASES[case]))


@pytest.mark.parametrize("case", sorted(SGD_CASES))
def test_poptorch_sgd_matches_torch_step(case):
    kw = SGD_CASES[case]
    _compare(lambda ps: poptorch.optim.SGD(ps, **kw), make_ref=lambda ps: torch.optim.SGD(ps, **kw))


def test_sgd_loss_scaling_and_clip():
    kw = dict(lr=0.1, momentum=0.9, weight_decay=0.01)
    _compare(lambda ps: poptorch.optim.SGD(ps, loss_scaling=128.0, max_grad_norm=0.5, **kw), loss_scaling=128.0,
             clip=0.5, make_ref=lambda ps: torch.optim.SGD(ps, **kw))


def test_sgd_combined_velocity_scaling_is_the_same_update():
    kw = dict(lr=0.1, momentum=0.9, dampening=0.2, weight_decay=0.01)
    spec = _compare(lambda ps: poptorch.optim.SGD(ps, use_combined_accum=True, velocity_scaling=4.0, **kw),
                    make_ref=lambda ps: torch.optim.SGD(ps, **kw))
    assert spec.option("use_combined_accum") and "group0.velocity_scaling" in {h.name for h in spec.hyper}


def test_sgd_state_slots_follow_momentum_and_accum_type():
    named = _params()
    plain = optimizer_spec(torch.optim.SGD(named.values(), lr=0.1), named)
    assert plain.state == () and [h.name for h in plain.hyper] == ["group0.lr"]
    opt = poptorch.optim.SGD(named.values(), lr=0.1, momentum=0.9, velocity_accum_type=torch.float16)
    spec = optimizer_spec(opt, named)
    assert {(s.param_name, s.name, s.torch_dtype) for s in spec.state} == {
        (n, "momentum_buffer", torch.float16) for n in SHAPES}
    assert all(s.shape == SHAPES[s.param_name] and s.initial == 0.0 for s in spec.state)
    assert spec.kind is Kind.SGD and spec.loss_scaling == 1.0 and not spec.loss_scaling_variable


# ---------------------------------------------------------------------- tracing
class _Update(torch.nn.Module):
    def __init__(self, spec):
        super().__init__()
        self.spec = spec

    def forward(self, params, grads, state, hyper, step):
        new_p, new_s = self.spec.update(params, grads, {tuple(k.split("|")): v for k, v in state.items()},
                                        hyper, step)
        return new_p, {"|".join(k): v for k, v in new_s.items()}


def _export_checked(opt, named):
    """Export ``spec.update`` to Core ATen and check softipu lowers every op in it."""
    from softipu.frontends.torch.export import check_supported

    spec = optimizer_spec(opt, named)
    params = {n: p.detach().clone() for n, p in named.items()}
    grads = _grads(1)[0]
    state = {f"{s.param_name}|{s.name}": torch.zeros(s.shape, dtype=s.torch_dtype) for s in spec.state}
    hyper = {h.name: torch.tensor(v) for h, v in zip(spec.hyper, spec.hyper_values(opt).values(), strict=True)}
    ep = torch.export.export(_Update(spec), (params, grads, state, hyper, torch.tensor(1.0))).run_decompositions()
    check_supported(ep.graph)
    # the traced program computes what the eager rule computes
    args = (params, grads, state, hyper, torch.tensor(1.0))
    got, want = ep.module()(*args), _Update(spec)(*args)
    torch.testing.assert_close(got, want)
    return ep


EXPORT_CASES = {
    "torch_sgd": lambda ps: torch.optim.SGD(ps, lr=0.1),
    "sgd_all_variable": lambda ps: poptorch.optim.SGD(ps, lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01,
                                                      loss_scaling=64.0, max_grad_norm=1.0),
    "sgd_nesterov_combined": lambda ps: poptorch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True,
                                                           use_combined_accum=True, velocity_scaling=2.0),
}


@pytest.mark.parametrize("case", sorted(EXPORT_CASES))
def test_update_exports_to_lowered_core_aten(case):
    named = _params()
    _export_checked(EXPORT_CASES[case](list(named.values())), named)
