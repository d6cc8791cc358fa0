"""The optimizers' update rules as pure torch functions of one parameter.

Each rule takes the parameter and its (unscaled, clipped) gradient in float32, its state tensors, the
group's scalars and the step number, and returns the new parameter and state without touching its
inputs. A scalar is a Python float when the attribute is a constant (baked into the traced graph) or a
0-d float32 tensor when it is a device variable, so the same body serves both. Only ops with softipu
lowerings appear (mul, add, sub, div, sqrt, expm1, where, clamp, minimum, sum, comparisons), and no
Python branch reads a tensor's value: the rules trace with ``torch.export`` into the weight-update
compute sets.

The op order follows ``torch.optim``'s single-tensor step, so with float32 and no loss scaling the
results agree with ``torch.optim`` to a few ulp. Host-side derived scalars (``1 - beta``, ``log(beta)``)
are computed in double on the host, as torch computes them in Python, and arrive as their own scalars.

Where PopART's documented update differs from ``torch.optim``, softipu follows torch (the project's
goal is PyTorch's results; PopTorch documents its optimizers as matching torch's):

* SGD with dampening: PopART starts the velocity at zero and damps the first gradient too
  (``v1 = (1-dm) g``), and with momentum 0 still scales the step by ``1-dm`` (SGD0's
  ``lr*(1-dm)/ls``); torch starts the buffer at the undamped gradient and ignores dampening without
  momentum. Equal when dampening is 0 (the default).
* Global-norm clip: PopART multiplies by ``max_norm / max(max_norm, norm)``; torch's
  ``clip_grad_norm_`` by ``min(1, max_norm / (norm + 1e-6))`` (used here): they differ by ~1e-6/norm.
* PopART's Separate SGD keeps the velocity times the loss scaling (velocity scaling glued to loss
  scaling) and Combined SGD applies part of the next velocity update early ("lagged" when
  hyper-parameters change); here the velocity is kept unscaled (Combined: times velocity_scaling) and
  updated in one place, which is the same arithmetic for fixed hyper-parameters.
* Adam/AdamW/LAMB: PopART's ``m̂ / (sqrt(v̂) + eps)`` is torch's (eps outside the root of the
  bias-corrected second moment); LAMB follows PopTorch's own reference step; RMSprop's TF variant
  follows PopART's Adaptive documentation.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

__all__ = ["Scalar", "Scalars", "sgd", "adam", "rmsprop", "lamb", "clip_by_global_norm", "bias_correction"]

Scalar = float | torch.Tensor
Scalars = Mapping[str, Scalar]
State = dict[str, torch.Tensor]


def _is_const(value: Scalar, number: float) -> bool:
    """True only for a constant equal to ``number`` (a variable may change through setOptimizer)."""
    return not isinstance(value, torch.Tensor) and value == number


def bias_correction(log_beta: Scalar, step: torch.Tensor) -> torch.Tensor:
    """``1 - beta**step`` as ``-expm1(step * log(beta))``: accurate for beta near 1 in float32, where
    ``1 - pow(beta, step)`` would lose most digits (``log(beta)`` comes from the host in double)."""
    return -torch.expm1(step * log_beta)


def clip_by_global_norm(grads: dict[str, torch.Tensor], max_norm: Scalar) -> dict[str, torch.Tensor]:
    """``torch.nn.utils.clip_grad_norm_`` over all gradients together (PopART's ``clipAllWeights``):
    every gradient times ``min(1, max_norm / (norm + 1e-6))``, norm the 2-norm of all of them."""
    total: torch.Tensor | None = None
    for g in grads.values():
        sq = torch.sum(g * g)
        total = sq if total is None else total + sq
    if total is None:
        return dict(grads)
    coef = torch.clamp(max_norm / (torch.sqrt(total) + 1e-6), max=1.0)
    return {name: g * coef for name, g in grads.items()}


def sgd(p: torch.Tensor, g: torch.Tensor, state: State, s: Scalars, step: torch.Tensor, *,
        nesterov: bool, combined: bool) -> tuple[torch.Tensor, State]:
    """``torch.optim.SGD``: ``g += wd*w``; ``b = g`` on the first step, else ``b = mm*b + (1-dm)*g``;
    ``w -= lr * (g + mm*b if nesterov else b)``.

    State ``momentum_buffer`` exists when momentum may be non-zero. With ``combined`` (PopART's
    Combined accumulator) it holds the velocity times ``velocity_scaling`` and the update divides it
    out; PopART's Separate variant ignores velocity scaling, as PopTorch documents.
    """
    if not _is_const(s["weight_decay"], 0.0):
        g = g + p * s["weight_decay"]
    if "momentum_buffer" not in state:
        return p - g * s["lr"], {}
    mm, undamped = s["momentum"], s["one_minus_dampening"]
    vs = s.get("velocity_scaling", 1.0) if combined else 1.0
    scaled = not _is_const(vs, 1.0)
    buf = state["momentum_buffer"].to(torch.float32)
    if scaled:
        buf = buf / vs
    new_buf = buf * mm + g * undamped
    if not _is_const(undamped, 1.0):
        # torch starts the buffer at the gradient itself, undamped (PopART starts it at zero and
        # damps the first gradient too: the two differ only when dampening is non-zero).
        new_buf = torch.where(step <= 1.0, g, new_buf)
    d = g + new_buf * mm if nesterov else new_buf
    if isinstance(mm, torch.Tensor):
        # A variable momentum set to 0 is plain SGD, as in torch (which then ignores dampening).
        d = torch.where(mm == 0.0, g, d)
    return p - d * s["lr"], {"momentum_buffer": new_buf * vs if scaled else new_buf}


def adam(p: torch.Tensor, g: torch.Tensor, state: State, s: Scalars, step: torch.Tensor, *,
         decoupled: bool, bias_corrected: bool) -> tuple[torch.Tensor, State]:
    """``torch.optim.Adam`` (``decoupled=False``: L2, PopART ``WeightDecayMode::L2Regularization``) and
    ``AdamW`` (``decoupled=True``: ``w *= 1 - lr*wd`` first, PopART's ``Decay``):
    ``m = lerp(m, g, 1-b1)``, ``v = b2*v + (1-b2)*g*g``,
    ``w -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps)`` with ``bc = 1 - beta**step`` (1 without bias
    correction). PopART's ``m̂ / (sqrt(v̂) + eps)`` is the same expression: eps outside the root.
    """
    lr = s["lr"]
    if not _is_const(s["weight_decay"], 0.0):
        if decoupled:
            p = p * (1.0 - lr * s["weight_decay"])
        else:
            g = g + p * s["weight_decay"]
    m, v = _moments(g, state, s)
    if bias_corrected:
        step_size = lr / bias_correction(s["log_beta1"], step)
        denom = torch.sqrt(v) / torch.sqrt(bias_correction(s["log_beta2"], step)) + s["eps"]
    else:
        step_size = lr
        denom = torch.sqrt(v) + s["eps"]
    return p - (m / denom) * step_size, {"exp_avg": m, "exp_avg_sq": v}


def _moments(g: torch.Tensor, state: State, s: Scalars) -> tuple[torch.Tensor, torch.Tensor]:
    """Adam's and LAMB's moments after this gradient, in float32: ``m = lerp(m, g, 1-b1)`` and
    ``v = b2*v + (1-b2)*g*g``."""
    m = state["exp_avg"].to(torch.float32)
    v = state["exp_avg_sq"].to(torch.float32)
    return m + (g - m) * s["one_minus_beta1"], v * s["beta2"] + g * g * s["one_minus_beta2"]


def rmsprop(p: torch.Tensor, g: torch.Tensor, state: State, s: Scalars, step: torch.Tensor, *,
            centered: bool, tf_variant: bool) -> tuple[torch.Tensor, State]:
    """``torch.optim.RMSprop``: ``g += wd*w``; ``v = a*v + (1-a)*g*g``; centered: ``ga = lerp(ga, g,
    1-a)`` and ``avg = sqrt(v - ga*ga)``, else ``sqrt(v)``; ``avg += eps``; with momentum
    ``b = mm*b + g/avg`` and ``w -= lr*b``, else ``w -= lr*g/avg``.

    ``tf_variant`` (PopTorch's ``use_tf_variant``, TensorFlow's RMSprop): ``v`` starts at one, eps
    goes inside the root, and the learning rate enters the momentum buffer (``b = mm*b + lr*g/avg``,
    ``w -= b``).
    """
    del step
    if not _is_const(s["weight_decay"], 0.0):
        g = g + p * s["weight_decay"]
    v = state["square_avg"].to(torch.float32)
    v = v * s["alpha"] + g * g * s["one_minus_alpha"]
    new: State = {"square_avg": v}
    var = v
    if centered:
        ga = state["grad_avg"].to(torch.float32)
        ga = ga + (g - ga) * s["one_minus_alpha"]
        new["grad_avg"] = ga
        var = v - ga * ga
    avg = torch.sqrt(var + s["eps"]) if tf_variant else torch.sqrt(var) + s["eps"]
    if "momentum_buffer" in state:
        buf = state["momentum_buffer"].to(torch.float32)
        if tf_variant:
            buf = buf * s["momentum"] + (g / avg) * s["lr"]
            new["momentum_buffer"] = buf
            return p - buf, new
        buf = buf * s["momentum"] + g / avg
        new["momentum_buffer"] = buf
        return p - buf * s["lr"], new
    return p - (g / avg) * s["lr"], new


def lamb(p: torch.Tensor, g: torch.Tensor, state: State, s: Scalars, step: torch.Tensor, *,
         bias_corrected: bool) -> tuple[torch.Tensor, State]:
    """LAMB (You et al. 2019, Algorithm 2) as PopTorch defines it: Adam's moments,
    ``r = m̂/(sqrt(v̂)+eps) + wd*w``, trust ratio ``min(|w|, max_weight_norm) / |r|`` (1 when either
    norm is zero), ``w -= lr * trust * r``; norms over the whole tensor (one "layer" per parameter).
    """
    m, v = _moments(g, state, s)
    if bias_corrected:
        m_hat = m / bias_correction(s["log_beta1"], step)
        v_hat = v / bias_correction(s["log_beta2"], step)
    else:
        m_hat, v_hat = m, v
    r = m_hat / (torch.sqrt(v_hat) + s["eps"])
    if not _is_const(s["weight_decay"], 0.0):
        r = r + p * s["weight_decay"]
    w_norm = torch.sqrt(torch.sum(p * p))
    r_norm = torch.sqrt(torch.sum(r * r))
    mwn = s["max_weight_norm"]
    w_norm = torch.minimum(w_norm, mwn) if isinstance(mwn, torch.Tensor) else torch.clamp(w_norm, max=mwn)
    both = torch.logical_and(w_norm > 0.0, r_norm > 0.0)
    # NOTE: the ratio is computed with a safe divisor so no inf/nan is formed where it is not taken.
    trust = torch.where(both, w_norm / torch.where(both, r_norm, 1.0), 1.0)
    return p - r * (trust * s["lr"]), {"exp_avg": m, "exp_avg_sq": v}
