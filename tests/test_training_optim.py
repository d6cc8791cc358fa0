"""PopTorch's optimizers as pure update rules (softipu.frontends.torch.optim).

Oracles: ``torch.optim``'s own ``step`` on the same tensors (SGD, Adam, AdamW, RMSprop) and a numpy
LAMB written here from its published definition (You et al. 2019, Algorithm 2, with PopTorch's bias
correction switch and trust-ratio clip phi(z) = min(z, max_weight_norm)).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import softipu.poptorch as poptorch
from softipu.frontends.torch.optim import Kind, OptimizerError, optimizer_spec

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



# ---------------------------------------------------------------------- Adam, AdamW, RMSprop
ADAM_CASES = {
    "default": dict(),
    "lr_betas": dict(lr=0.01, betas=(0.8, 0.99)),
    "wd_eps": dict(lr=0.01, weight_decay=0.1, eps=1e-3),
}


@pytest.mark.parametrize("case", sorted(ADAM_CASES))
@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_adam_matches_torch_step(name, case):
    kw = ADAM_CASES[case]
    torch_cls = getattr(torch.optim, name)
    _compare(lambda ps: torch_cls(ps, **kw))
    _compare(lambda ps: getattr(poptorch.optim, name)(ps, **kw), make_ref=lambda ps: torch_cls(ps, **kw))


def test_adamw_loss_scaling_clip_and_no_bias_correction():
    kw = dict(lr=0.01, weight_decay=0.05)
    _compare(lambda ps: poptorch.optim.AdamW(ps, loss_scaling=128.0, max_grad_norm=0.7, **kw), loss_scaling=128.0,
             clip=0.7, make_ref=lambda ps: torch.optim.AdamW(ps, **kw))
    # Without bias correction, m and v enter the update as they are: Adam with lr * sqrt(bc2)/bc1 undone.
    named = _params()
    opt = poptorch.optim.AdamW(list(named.values()), lr=0.01, weight_decay=0.05, bias_correction=False)
    got, _ = _run_spec(optimizer_spec(opt, named), named, _grads(1), optimizer=opt)
    g, w = _grads(1)[0], {n: p.detach() for n, p in _params().items()}
    for n in SHAPES:  # step 1: m = 0.1 g, v = 0.001 g^2
        m, v = 0.1 * g[n].double(), 0.001 * g[n].double() ** 2
        want = w[n].double() * (1 - 0.01 * 0.05) - 0.01 * m / (v.sqrt() + 1e-8)
        torch.testing.assert_close(got[n].double(), want, rtol=1e-6, atol=1e-7)


def test_adam_state_dtypes_follow_accum_types():
    named = _params()
    opt = poptorch.optim.Adam(list(named.values()), first_order_momentum_accum_type=torch.float16)
    spec = optimizer_spec(opt, named)
    assert {(s.name, s.torch_dtype) for s in spec.state} == {("exp_avg", torch.float16),
                                                             ("exp_avg_sq", torch.float32)}
    got, state = _run_spec(spec, named, _grads(), optimizer=opt)
    want = _run_torch(lambda ps: torch.optim.Adam(ps), _grads())
    assert state[("fc.bias", "exp_avg")].dtype == torch.float16
    for n in SHAPES:  # fp16 first moments: close to fp32 torch, not equal
        torch.testing.assert_close(got[n], want[n], rtol=1e-2, atol=1e-3)


RMSPROP_CASES = {
    "default": dict(),
    "momentum": dict(lr=0.01, momentum=0.9),
    "centered": dict(lr=0.01, centered=True, alpha=0.9),
    "centered_momentum_wd": dict(lr=0.01, centered=True, momentum=0.5, weight_decay=0.1, eps=1e-4),
}


@pytest.mark.parametrize("case", sorted(RMSPROP_CASES))
def test_rmsprop_matches_torch_step(case):
    kw = RMSPROP_CASES[case]
    _compare(lambda ps: torch.optim.RMSprop(ps, **kw))
    _compare(lambda ps: poptorch.optim.RMSprop(ps, loss_scaling=128.0, **kw), loss_scaling=128.0,
             make_ref=lambda ps: torch.optim.RMSprop(ps, **kw))


def _tf_rmsprop_reference(w, grads, lr, alpha, eps, momentum):
    """TensorFlow's RMSprop (tf.keras.optimizers.RMSprop v1 semantics PopTorch names): ms starts at
    one, eps inside the root, lr inside the momentum."""
    w, ms, mom = w.astype(np.float64), np.ones_like(w, np.float64), np.zeros_like(w, np.float64)
    for g in grads:
        ms = alpha * ms + (1 - alpha) * g * g
        mom = momentum * mom + lr * g / np.sqrt(ms + eps)
        w = w - mom
    return w


def test_rmsprop_tf_variant_against_its_definition():
    named = _params()
    opt = poptorch.optim.RMSprop(list(named.values()), lr=0.01, alpha=0.9, eps=1e-3, momentum=0.5,
                                 use_tf_variant=True)
    spec = optimizer_spec(opt, named)
    assert {(s.name, s.initial) for s in spec.state} == {("square_avg", 1.0), ("momentum_buffer", 0.0)}
    grads = _grads()
    got, _ = _run_spec(spec, named, grads, optimizer=opt)
    for n in SHAPES:
        want = _tf_rmsprop_reference(named[n].detach().numpy(), [g[n].numpy() for g in grads], 0.01, 0.9, 1e-3, 0.5)
        np.testing.assert_allclose(got[n].numpy(), want, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------- LAMB
def _lamb_reference(w, grads, *, lr, beta1, beta2, eps, wd, bias_correction, max_weight_norm):
    """LAMB, You et al. 2019 Algorithm 2, per layer (here: per parameter tensor), in float64:
    m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; m^ = m/(1-b1^t), v^ = v/(1-b2^t) (PopTorch's
    bias_correction; without it m^ = m, v^ = v); r = m^/(sqrt(v^)+eps) + wd w;
    w -= lr * phi(|w|)/|r| * r with phi(z) = min(z, max_weight_norm), ratio 1 if a norm is 0."""
    w = w.astype(np.float64)
    m, v = np.zeros_like(w), np.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        g = g.astype(np.float64)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        m_hat, v_hat = (m / (1 - beta1 ** t), v / (1 - beta2 ** t)) if bias_correction else (m, v)
        r = m_hat / (np.sqrt(v_hat) + eps) + wd * w
        phi = min(np.linalg.norm(w), max_weight_norm)
        r_norm = np.linalg.norm(r)
        trust = phi / r_norm if phi > 0 and r_norm > 0 else 1.0
        w = w - lr * trust * r
    return w


LAMB_CASES = {
    "default": dict(),
    "no_bias": dict(lr=0.01, bias_correction=False),
    "clipped": dict(lr=0.01, weight_decay=0.1, max_weight_norm=0.5, betas=(0.8, 0.99)),
}


@pytest.mark.parametrize("case", sorted(LAMB_CASES))
def test_lamb_matches_its_published_definition(case):
    kw = LAMB_CASES[case]
    named = _params()
    opt = poptorch.optim.LAMB(list(named.values()), loss_scaling=16.0, **kw)
    spec = optimizer_spec(opt, named)
    assert spec.kind is Kind.LAMB and spec.max_grad_norm == math.inf
    grads = _grads()
    got, _ = _run_spec(spec, named, grads, loss_scaling=16.0, optimizer=opt)
    ref = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, wd=1e-2, bias_correction=True, max_weight_norm=65500.0)
    ref.update({k: v for k, v in kw.items() if k in ("lr", "bias_correction", "max_weight_norm")})
    ref.update(wd=kw.get("weight_decay", 1e-2), beta1=kw.get("betas", (0.9, 0.999))[0],
               beta2=kw.get("betas", (0.9, 0.999))[1])
    for n in SHAPES:
        want = _lamb_reference(named[n].detach().numpy(), [g[n].numpy() for g in grads], **ref)
        np.testing.assert_allclose(got[n].numpy(), want, rtol=2e-6, atol=1e-7)


def test_lamb_host_step_is_the_same_rule():
    named = _params()
    grads = _grads()
    opt = poptorch.optim.LAMB(list(named.values()), lr=0.01, max_weight_norm=1.0)
    for g in grads:
        for n, p in named.items():
            p.grad = g[n].clone()
        opt.step()
    for n in SHAPES:
        want = _lamb_reference(_params()[n].detach().numpy(), [g[n].numpy() for g in grads], lr=0.01, beta1=0.9,
                               beta2=0.999, eps=1e-8, wd=1e-2, bias_correction=True, max_weight_norm=1.0)
        np.testing.assert_allclose(named[n].detach().numpy(), want, rtol=2e-6, atol=1e-7)



# ---------------------------------------------------------------------- constants and variables
def _variables(spec) -> list[set[str]]:
    return [set(g.variables) for g in spec.groups]


def test_poptorch_attributes_passed_explicitly_are_variables():
    named = _params()
    spec = optimizer_spec(poptorch.optim.SGD(named.values(), lr=0.1, momentum=0.9, loss_scaling=4.0), named)
    assert _variables(spec) == [{"lr", "momentum"}] and spec.loss_scaling_variable
    assert sorted(h.name for h in spec.hyper) == ["group0.lr", "group0.momentum", "loss_scaling"]
    spec = optimizer_spec(poptorch.optim.Adam(named.values()), named)  # nothing passed: only lr varies
    assert _variables(spec) == [{"lr"}] and not spec.loss_scaling_variable
    spec = optimizer_spec(poptorch.optim.AdamW(named.values(), betas=(0.8, 0.9), weight_decay=0.0), named)
    assert _variables(spec) == [{"lr", "betas", "weight_decay"}]
    assert {"group0.beta1", "group0.one_minus_beta2", "group0.log_beta1"} <= {h.name for h in spec.hyper}
    spec = optimizer_spec(poptorch.optim.LAMB(named.values(), max_weight_norm=3.0, eps=1e-6), named)
    assert _variables(spec) == [{"lr", "max_weight_norm", "eps"}]


def test_mark_as_constant_and_variable():
    named = _params()
    opt = poptorch.optim.RMSprop(named.values(), lr=0.01, alpha=0.9, loss_scaling=8.0)
    opt.variable_attrs.markAsConstant("alpha")
    opt.variable_attrs.markAsConstant("loss_scaling")
    opt.variable_attrs.markAsVariable("eps")
    spec = optimizer_spec(opt, named)
    assert _variables(spec) == [{"lr", "eps"}] and not spec.loss_scaling_variable and spec.loss_scaling == 8.0
    with pytest.raises(OptimizerError, match="Unknown attribute 'velocity_scaling'"):
        opt.variable_attrs.markAsVariable("velocity_scaling")


def test_torch_optim_attributes_at_their_defaults_are_constants():
    named = _params()
    spec = optimizer_spec(torch.optim.SGD(named.values(), lr=0.1, momentum=0.0, weight_decay=0.01), named)
    assert _variables(spec) == [{"lr", "weight_decay"}]
    spec = optimizer_spec(torch.optim.AdamW(named.values(), weight_decay=0.01, eps=1e-6, betas=(0.5, 0.6)), named)
    assert _variables(spec) == [{"lr", "eps"}]  # AdamW's default decay is 1e-2; betas are always constant
    spec = optimizer_spec(torch.optim.RMSprop(named.values(), alpha=0.5, momentum=0.9), named)
    assert _variables(spec) == [{"lr", "momentum"}]


def test_param_groups_are_read_per_group():
    named = _params()
    opt = torch.optim.SGD([{"params": [named["fc.weight"]], "lr": 0.1, "momentum": 0.9},
                           {"params": [named["fc.bias"], named["emb"]], "lr": 0.01}], lr=0.5)
    spec = optimizer_spec(opt, named)
    assert [g.params for g in spec.groups] == [("fc.weight",), ("fc.bias", "emb")]
    assert {s.param_name for s in spec.state} == {"fc.weight"}  # only group 0 has momentum
    assert spec.hyper_values(opt) == {"group0.lr": 0.1, "group0.momentum": 0.9, "group1.lr": 0.01}
    grads = _grads()
    got, _ = _run_spec(spec, named, grads, optimizer=opt)
    want = _run_torch(lambda ps: torch.optim.SGD([{"params": [ps[0]], "lr": 0.1, "momentum": 0.9},
                                                  {"params": ps[1:], "lr": 0.01}], lr=0.5), grads)
    for n in SHAPES:
        torch.testing.assert_close(got[n], want[n], rtol=1e-6, atol=1e-7)


def test_variables_follow_set_values_without_a_new_spec():
    """A variable lr changed between steps (setOptimizer) gives torch's result with the same change."""
    named = _params()
    opt = poptorch.optim.SGD(list(named.values()), lr=0.1, momentum=0.9)
    spec = optimizer_spec(opt, named)
    params = {n: p.detach().clone() for n, p in named.items()}
    state = {(s.param_name, s.name): torch.zeros(s.shape) for s in spec.state}
    ref = _params()
    ref_opt = torch.optim.SGD(list(ref.values()), lr=0.1, momentum=0.9)
    for i, g in enumerate(_grads()):
        for group in (opt.param_groups[0], ref_opt.param_groups[0]):
            group["lr"], group["momentum"] = 0.1 / (i + 1), 0.9 - 0.1 * i
        spec.check_compatible(opt)
        hyper = {k: torch.tensor(v) for k, v in spec.hyper_values(opt).items()}
        new_p, new_s = spec.update(params, g, state, hyper, torch.tensor(float(i + 1)))
        params.update(new_p)
        state.update(new_s)
        for n, p in ref.items():
            p.grad = g[n].clone()
        ref_opt.step()
    for n in SHAPES:
        torch.testing.assert_close(params[n], ref[n].detach(), rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------- errors
def test_changing_a_constant_after_compile_is_refused():
    named = _params()
    opt = poptorch.optim.SGD(named.values(), lr=0.1, momentum=0.9)
    spec = optimizer_spec(opt, named)
    opt.param_groups[0]["lr"] = 0.2
    opt.param_groups[0]["momentum"] = 0.5
    spec.check_compatible(opt)  # both variables
    opt.param_groups[0]["weight_decay"] = 0.1
    with pytest.raises(OptimizerError, match=r"'weight_decay' of param group 0 is a constant.*0\.0.*0\.1.*"
                                             r"markAsVariable\('weight_decay'\)"):
        spec.check_compatible(opt)
    opt.param_groups[0]["weight_decay"] = 0.0
    opt.loss_scaling = 2.0
    with pytest.raises(OptimizerError, match="'loss_scaling' is a constant"):
        spec.check_compatible(opt)


def test_other_optimizer_or_groups_are_refused_by_check_compatible():
    named = _params()
    spec = optimizer_spec(poptorch.optim.SGD(named.values(), lr=0.1), named)
    with pytest.raises(OptimizerError, match="compiled with a SGD optimizer and the new one is Adam"):
        spec.check_compatible(poptorch.optim.Adam(named.values()))
    with pytest.raises(OptimizerError, match="param groups hold other parameters"):
        spec.check_compatible(poptorch.optim.SGD([named["fc.weight"]], lr=0.1))
    with pytest.raises(OptimizerError, match="max_grad_norm was inf when the model was compiled"):
        spec.check_compatible(poptorch.optim.SGD(named.values(), lr=0.1, max_grad_norm=1.0))


def test_foreign_parameters_are_named():
    named = _params()
    stranger = torch.nn.Parameter(torch.zeros(7, 2))
    opt = torch.optim.SGD([*named.values(), stranger], lr=0.1)
    with pytest.raises(OptimizerError, match=r"1 parameter\(s\) that are not the model's: param group 0, "
                                             r"parameter 3 \(shape \[7, 2\]"):
        optimizer_spec(opt, named)


def test_frozen_parameters_outside_the_model_are_skipped():
    named = _params()
    frozen = torch.nn.Parameter(torch.zeros(2), requires_grad=False)
    spec = optimizer_spec(torch.optim.SGD([*named.values(), frozen], lr=0.1, momentum=0.9), named)
    assert spec.param_names == tuple(SHAPES) and len(spec.state) == len(SHAPES)


@pytest.mark.parametrize("make, message", [
    (lambda ps: torch.optim.Adagrad(ps), "Unsupported optimizer type torch.optim.adagrad.Adagrad"),
    (lambda ps: torch.optim.Adam(ps, amsgrad=True), "Only non-amsgrad Adam/AdamW optimizers are supported"),
    (lambda ps: poptorch.optim.AdamW(ps, amsgrad=True), "Only non-amsgrad"),
    (lambda ps: torch.optim.SGD(ps, lr=0.1, maximize=True), "maximize=True is not supported"),
    (lambda ps: poptorch.optim.SGD(ps, lr=0.1, max_grad_norm=float("nan")), "cannot be NaN"),
    (lambda ps: torch.optim.RMSprop([{"params": ps[:1], "centered": True}, {"params": ps[1:]}]),
     "same value for the 'centered' attribute"),
])
def test_unsupported_optimizers_are_refused(make, message):
    named = _params()
    with pytest.raises(OptimizerError, match=message):
        optimizer_spec(make(list(named.values())), named)


def test_accumulator_types_must_be_float16_or_float32():
    with pytest.raises(OptimizerError, match="Accumulation types must be either torch.float32 or torch.float16"):
        poptorch.optim.Adam(_params().values(), accum_type=torch.bfloat16)


def test_velocity_scaling_is_ignored_by_the_separate_variant():
    with pytest.warns(UserWarning, match="velocity_scaling value ignored"):
        poptorch.optim.SGD(_params().values(), lr=0.1, velocity_scaling=2.0)


# ---------------------------------------------------------------------- checkpoints
def test_state_dict_round_trip():
    named = _params()
    opt = poptorch.optim.Adam(list(named.values()), lr=0.01)
    spec = optimizer_spec(opt, named)
    _, state = _run_spec(spec, named, _grads(), optimizer=opt)
    saved = spec.state_dict(state, opt, step=STEPS)
    assert saved["ipu_param"]["group0.lr"] == 0.01 and saved["ipu_state"]["step"] == STEPS
    loaded, step = spec.load_state_dict(saved)
    assert step == STEPS and loaded.keys() == state.keys()
    for key, t in state.items():
        torch.testing.assert_close(loaded[key], t, rtol=0, atol=0)
    del saved["ipu_state"]["exp_avg/emb"]
    with pytest.raises(OptimizerError, match="no 'exp_avg/emb'"):
        spec.load_state_dict(saved)
    with pytest.raises(OptimizerError, match="Only IPU optimizer states can be loaded"):
        spec.load_state_dict(opt.state_dict())


def test_optimizer_state_dict_keeps_torch_part_and_ipu_part():
    named = _params()
    opt = poptorch.optim.SGD(list(named.values()), lr=0.1, momentum=0.9)
    opt.ipu_state_source = lambda: {"ipu_state": {"momentum_buffer/emb": torch.ones(3, 2, 2)}, "ipu_param": {}}
    opt.host_state_is_dirty = True
    sd = opt.state_dict()
    assert sd["param_groups"][0]["lr"] == 0.1 and sd["ipu_state"]["momentum_buffer/emb"].shape == (3, 2, 2)
    fresh = poptorch.optim.SGD(list(_params().values()), lr=0.5, momentum=0.9)
    fresh.load_state_dict(sd)
    assert fresh.param_groups[0]["lr"] == 0.1 and fresh.ipu_state_is_dirty and fresh.has_ipu_state()
    upload = fresh.take_ipu_state_to_upload()
    assert upload["ipu_state"]["momentum_buffer/emb"].shape == (3, 2, 2)
    assert fresh.take_ipu_state_to_upload() is None  # once


# ---------------------------------------------------------------------- tracing
class _Update(torch.nn.Module):
    def __init__(self, spec):
        super().__init__()
        self.spec = spec

    def forward(self, params, grads, state, hyper, step):
        new_p, new_s = self.spec.update(params, grads, {tuple(k.split("|")): v for k, v in state.items()},
                                        hyper, step)
        return new_p, {"|".join(k): v for k, v in new_s.items()}


def _trace_checked(opt, named, tracer):
    """Trace ``spec.update`` to Core ATen (``torch.export`` + decompositions, or make_fx with the same
    decompositions as the training executor does) and check softipu lowers every op in it."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from softipu.frontends.torch.export import check_supported

    spec = optimizer_spec(opt, named)
    params = {n: p.detach().clone() for n, p in named.items()}
    grads = {n: g for n, g in _grads(1)[0].items() if n in named}
    state = {f"{s.param_name}|{s.name}": torch.zeros(s.shape, dtype=s.torch_dtype) for s in spec.state}
    values = spec.hyper_values(opt)
    assert sorted(values) == sorted(h.name for h in spec.hyper)
    hyper = {h.name: torch.tensor(values[h.name], dtype=h.torch_dtype) for h in spec.hyper}
    args = (params, grads, state, hyper, torch.tensor(1.0))
    if tracer == "export":
        ep = torch.export.export(_Update(spec), args).run_decompositions()
        graph, traced = ep.graph, ep.module()
    else:
        traced = make_fx(_Update(spec), decomposition_table=torch.export.default_decompositions())(*args)
        graph = traced.graph
    check_supported(graph)
    torch.testing.assert_close(traced(*args), _Update(spec)(*args))  # the trace computes the eager rule


EXPORT_CASES = {
    "torch_sgd": lambda ps: torch.optim.SGD(ps, lr=0.1),
    "sgd_all_variable": lambda ps: poptorch.optim.SGD(ps, lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01,
                                                      loss_scaling=64.0, max_grad_norm=1.0),
    "adam_default": lambda ps: torch.optim.Adam(ps),
    "adamw_all_variable": lambda ps: poptorch.optim.AdamW(ps, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1,
                                                          loss_scaling=8.0, max_grad_norm=1.0),
    "rmsprop_centered_momentum": lambda ps: torch.optim.RMSprop(ps, momentum=0.9, centered=True, weight_decay=0.1),
    "rmsprop_tf_variable": lambda ps: poptorch.optim.RMSprop(ps, lr=0.01, alpha=0.9, eps=1e-6, momentum=0.5,
                                                             use_tf_variant=True),
    "lamb_all_variable": lambda ps: poptorch.optim.LAMB(ps, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1,
                                                        max_weight_norm=2.0, loss_scaling=4.0),
    "sgd_nesterov_combined": lambda ps: poptorch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True,
                                                           use_combined_accum=True, velocity_scaling=2.0),
}


@pytest.mark.parametrize("case", sorted(EXPORT_CASES))
def test_update_traces_to_lowered_core_aten(case):
    named = {n: p for n, p in _params().items() if n != "emb"}  # two parameters keep the trace short
    _trace_checked(EXPORT_CASES[case](list(named.values())), named, "make_fx")


@pytest.mark.parametrize("case", ["adamw_all_variable", "lamb_all_variable"])
def test_update_exports_with_torch_export(case):
    named = {n: p for n, p in _params().items() if n != "emb"}
    _trace_checked(EXPORT_CASES[case](list(named.values())), named, "export")


@pytest.mark.parametrize("case", ["adam_fp16_state", "sgd_combined_fp16"])
def test_fp16_update_traces_with_make_fx_to_lowered_ops(case):
    """The training executor traces ``update`` with make_fx and the export decompositions; fp16 weights
    and fp16 state add the casts around the float32 arithmetic."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from softipu.frontends.torch.export import check_supported

    named = {n: torch.nn.Parameter(p.detach().half()) for n, p in _params().items() if n != "emb"}
    make = {"adam_fp16_state": lambda ps: poptorch.optim.Adam(ps, lr=0.01, loss_scaling=128.0,
                                                              first_order_momentum_accum_type=torch.float16),
            "sgd_combined_fp16": lambda ps: poptorch.optim.SGD(ps, lr=0.1, momentum=0.9, use_combined_accum=True,
                                                               velocity_scaling=8.0)}[case]
    opt = make(list(named.values()))
    spec = optimizer_spec(opt, named)
    keys = [(s.param_name, s.name) for s in spec.state]
    names = list(named)
    values = spec.hyper_values(opt)

    def flat(*xs):
        it = iter(xs)
        p, g = {n: next(it) for n in names}, {n: next(it) for n in names}
        s, h = {k: next(it) for k in keys}, {h.name: next(it) for h in spec.hyper}
        new_p, new_s = spec.update(p, g, s, h, next(it))
        return [new_p[n] for n in names] + [new_s[k] for k in keys]

    grads = _grads(1)[0]
    args = ([named[n].detach() for n in names] + [(grads[n] * 128).half() for n in names]
            + [torch.zeros(s.shape, dtype=s.torch_dtype) for s in spec.state]
            + [torch.tensor(values[h.name]) for h in spec.hyper] + [torch.tensor(1.0)])
    gm = make_fx(flat, decomposition_table=torch.export.default_decompositions())(*args)
    check_supported(gm.graph)
    got = gm(*args)
    assert [t.dtype for t in got] == [torch.float16] * len(names) + [s.torch_dtype for s in spec.state]
    torch.testing.assert_close(got, flat(*args))


def test_fp16_weights_with_loss_scaling_follow_fp32_torch():
    """fp16 weights and gradients scaled by 1024 (fp32 state): within fp16 rounding of torch in fp32."""
    kw = dict(lr=0.05, momentum=0.9, weight_decay=0.01)
    named = {n: torch.nn.Parameter(p.detach().half()) for n, p in _params().items()}
    opt = poptorch.optim.SGD(list(named.values()), loss_scaling=1024.0, **kw)
    spec = optimizer_spec(opt, named)
    grads = [{n: g.half().float() for n, g in step.items()} for step in _grads()]
    got, _ = _run_spec(spec, named, [{n: g.half() for n, g in step.items()} for step in grads], 1024.0, opt)
    want = _run_torch(lambda ps: torch.optim.SGD(ps, **kw), grads)
    for n in SHAPES:
        assert got[n].dtype == torch.float16
        torch.testing.assert_close(got[n].float(), want[n], rtol=1e-2, atol=1e-2)


def test_optimizers_pickle_with_their_poptorch_attributes():
    import copy
    import pickle

    named = _params()
    opt = poptorch.optim.AdamW(list(named.values()), lr=0.01, loss_scaling=32.0, bias_correction=False,
                               max_grad_norm=2.0)
    opt.variable_attrs.markAsConstant("loss_scaling")
    for clone in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        assert (clone.loss_scaling, clone.bias_correction, clone.max_grad_norm) == (32.0, False, 2.0)
        assert clone.variable_attrs.isConstant("loss_scaling") and not clone.variable_attrs.isConstant("lr")
        spec = optimizer_spec(clone, dict(zip(SHAPES, clone.param_groups[0]["params"], strict=True)))
        assert not spec.option("bias_correction") and spec.max_grad_norm == 2.0


@pytest.mark.parametrize("case", sorted(EXPORT_CASES))
def test_update_leaves_its_inputs_untouched(case):
    named = _params()
    opt = EXPORT_CASES[case](list(named.values()))
    spec = optimizer_spec(opt, named)
    params = {n: p.detach().clone() for n, p in named.items()}
    grads = _grads(1)[0]
    state = {(s.param_name, s.name): torch.rand(s.shape).to(s.torch_dtype) for s in spec.state}
    hyper = {k: torch.tensor(v) for k, v in spec.hyper_values(opt).items()}
    before = [{k: v.clone() for k, v in d.items()} for d in (params, grads, state, hyper)]
    new_p, new_s = spec.update(params, grads, state, hyper, torch.tensor(2.0))
    for old, now in zip(before, (params, grads, state, hyper), strict=True):
        for k in old:
            assert torch.equal(old[k], now[k]), k
    assert new_p.keys() == params.keys() and new_s.keys() == state.keys()


def test_rmsprop_state_dtypes_follow_popart_adaptive():
    named = _params()
    opt = poptorch.optim.RMSprop(list(named.values()), momentum=0.9, centered=True,
                                 first_order_momentum_accum_type=torch.float16)
    dtypes = {s.name: s.torch_dtype for s in optimizer_spec(opt, named).state}
    assert dtypes == {"square_avg": torch.float16, "grad_avg": torch.float32, "momentum_buffer": torch.float32}
