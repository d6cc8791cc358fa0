"""``poptorch.optim``: SGD, Adam, AdamW, RMSprop and LAMB with PopTorch's extra arguments.

Each is a subclass of the matching ``torch.optim`` class (LAMB of ``torch.optim.Optimizer``), so it
also steps on the CPU. The extras (loss scaling, accumulator dtypes, ``max_grad_norm``...) are read by
``optimizer_spec``; arguments passed explicitly become device variables (``variable_attrs``).

Example::

    opt = poptorch.optim.AdamW(model.parameters(), lr=1e-3, loss_scaling=128.0,
                               first_order_momentum_accum_type=torch.float16)
    opt.variable_attrs.markAsConstant("loss_scaling")
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch

from softipu.frontends.torch.optim import rules
from softipu.frontends.torch.optim.attrs import ACCUM_DTYPES, OptimizerError, VariableAttributes

__all__ = ["SGD", "Adam", "AdamW", "RMSprop", "LAMB", "VariableAttributes"]

_ACCUM_MESSAGE = "Accumulation types must be either torch.float32 or torch.float16"


def _passed(args: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The arguments given explicitly (not None) and their names: PopTorch's variables."""
    given = {k: v for k, v in args.items() if v is not None and k not in ("self", "params", "__class__")}
    return given, list(given)


def _accum_type(value: torch.dtype | None, name: str) -> torch.dtype:
    value = torch.float32 if value is None else value
    if value not in ACCUM_DTYPES:
        raise OptimizerError(f"{_ACCUM_MESSAGE} ({name} is {value})")
    return value


_PICKLED = ("variable_attrs", "loss_scaling", "use_combined_accum", "accum_type", "velocity_accum_type",
            "first_order_momentum_accum_type", "second_order_momentum_accum_type", "max_grad_norm",
            "bias_correction", "use_tf_variant", "max_weight_norm", "_ipu_state")


class _IpuOptimizer:
    """PopTorch's additions to an optimizer: ``variable_attrs`` and a state dict the training
    executor backs with the device state (``ipu_state_source`` reads it back; ``load_state_dict``
    marks what it loads for upload)."""

    variable_attrs: VariableAttributes
    loss_scaling: float

    def _init_ipu(self, variables: list[str], global_attrs: dict[str, Any]) -> None:
        for name, value in global_attrs.items():
            setattr(self, name, value)
        self.variable_attrs = VariableAttributes(variables, [*self.defaults, "loss_scaling"])
        self._ipu_state: dict[str, Any] = {"ipu_state": None, "ipu_param": None}
        self.ipu_state_source: Callable[[], dict[str, Any]] | None = None
        self.ipu_state_is_dirty = False
        self.host_state_is_dirty = False

    def state_dict(self) -> dict[str, Any]:
        """torch's state dict (so LR schedulers work) plus ``ipu_state`` / ``ipu_param`` from the IPU."""
        if self.ipu_state_source is not None and self.host_state_is_dirty:
            self._ipu_state = dict(self.ipu_state_source())
            self.host_state_is_dirty = False
        return {**self._ipu_state, **torch.optim.Optimizer.state_dict(self)}  # type: ignore[arg-type]

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load torch's part on the host and keep the IPU part for upload on the next call."""
        if not state_dict:
            raise OptimizerError("Cannot load optimizer state dictionary because it is empty.")
        torch.optim.Optimizer.load_state_dict(self, {k: v for k, v in state_dict.items()  # type: ignore[arg-type]
                                                     if k in ("state", "param_groups")})
        if state_dict.get("ipu_state") is not None:
            self._ipu_state = {"ipu_state": state_dict["ipu_state"], "ipu_param": state_dict.get("ipu_param")}
            self.ipu_state_is_dirty = True
            self.host_state_is_dirty = False

    def has_ipu_state(self) -> bool:
        return self._ipu_state.get("ipu_state") is not None

    def take_ipu_state_to_upload(self) -> dict[str, Any] | None:
        """The IPU state ``load_state_dict`` loaded, once (the executor writes it to the device on the
        next call; ``OptimizerSpec.load_state_dict`` checks and unpacks it); None when nothing is due."""
        if not self.ipu_state_is_dirty:
            return None
        self.ipu_state_is_dirty = False
        return dict(self._ipu_state)

    def __getstate__(self) -> dict[str, Any]:
        # torch's Optimizer pickles only defaults, state and param_groups: keep PopTorch's attributes
        # too (not the executor's reader; a loaded optimizer uploads the IPU state it carries).
        state = torch.optim.Optimizer.__getstate__(self)  # type: ignore[arg-type]
        state.update({k: v for k, v in self.__dict__.items() if k in _PICKLED})
        state.update(ipu_state_source=None, ipu_state_is_dirty=self.has_ipu_state(),
                     host_state_is_dirty=False)
        return state


class SGD(_IpuOptimizer, torch.optim.SGD):
    """``torch.optim.SGD`` with PopTorch's loss scaling, velocity scaling (Combined variant only),
    accumulator dtypes and ``max_grad_norm`` (a global-norm clip, ``inf`` = none).

    ``use_combined_accum=False`` (default) is PopART's Separate variant (a gradient accumulator and a
    velocity tensor); ``True`` keeps one tensor for both (velocity scaling applies there)."""

    def __init__(self, params: Iterable, lr: float, momentum: float | None = None,
                 dampening: float | None = None, weight_decay: float | None = None,
                 nesterov: bool | None = None, maximize: bool | None = None, foreach: bool | None = None,
                 differentiable: bool | None = None, loss_scaling: float | None = None,
                 velocity_scaling: float | None = None, use_combined_accum: bool | None = None,
                 accum_type: torch.dtype | None = None, velocity_accum_type: torch.dtype | None = None,
                 max_grad_norm: float | None = None) -> None:
        given, variables = _passed(dict(locals()))
        torch_args = {k: v for k, v in given.items() if k in ("lr", "momentum", "dampening", "weight_decay",
                                                                "nesterov", "maximize", "foreach",
                                                                "differentiable")}
        torch.optim.SGD.__init__(self, params, **torch_args)
        combined = bool(use_combined_accum)
        if velocity_scaling is not None and not combined:
            warnings.warn("velocity_scaling value ignored when using the separate variant "
                          "(use_combined_accum=False)", stacklevel=2)
        if combined:
            vs = 1.0 if velocity_scaling is None else float(velocity_scaling)
            self.defaults["velocity_scaling"] = vs
            for group in self.param_groups:
                group.setdefault("velocity_scaling", vs)
        self._init_ipu(variables, {
            "loss_scaling": 1.0 if loss_scaling is None else loss_scaling,
            "use_combined_accum": combined,
            "accum_type": _accum_type(accum_type, "accum_type"),
            "velocity_accum_type": _accum_type(velocity_accum_type, "velocity_accum_type"),
            "max_grad_norm": math.inf if max_grad_norm is None else float(max_grad_norm)})


class _AdamArgs:
    @staticmethod
    def split(given: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in given.items() if k in ("lr", "betas", "eps", "weight_decay", "amsgrad",
                                                          "foreach", "maximize", "capturable",
                                                          "differentiable", "fused")}

    @staticmethod
    def extras(loss_scaling: float | None, accum_type: Any, first: Any, second: Any,
               max_grad_norm: float | None) -> dict[str, Any]:
        return {"loss_scaling": 1.0 if loss_scaling is None else loss_scaling,
                "accum_type": _accum_type(accum_type, "accum_type"),
                "first_order_momentum_accum_type": _accum_type(first, "first_order_momentum_accum_type"),
                "second_order_momentum_accum_type": _accum_type(second, "second_order_momentum_accum_type"),
                "max_grad_norm": math.inf if max_grad_norm is None else float(max_grad_norm)}


class Adam(_IpuOptimizer, torch.optim.Adam):
    """``torch.optim.Adam`` (L2 weight decay) with loss scaling, accumulator dtypes and
    ``max_grad_norm``. AMSGrad is not supported."""

    def __init__(self, params: Iterable, lr: float | None = None, betas: tuple[float, float] | None = None,
                 eps: float | None = None, weight_decay: float | None = None, amsgrad: bool | None = None,
                 foreach: bool | None = None, maximize: bool | None = None, capturable: bool | None = None,
                 differentiable: bool | None = None, fused: bool | None = None,
                 loss_scaling: float | None = None, accum_type: torch.dtype | None = None,
                 first_order_momentum_accum_type: torch.dtype | None = None,
                 second_order_momentum_accum_type: torch.dtype | None = None,
                 max_grad_norm: float | None = None) -> None:
        given, variables = _passed(dict(locals()))
        torch.optim.Adam.__init__(self, params, **_AdamArgs.split(given))
        self._init_ipu(variables, _AdamArgs.extras(loss_scaling, accum_type, first_order_momentum_accum_type,
                                                   second_order_momentum_accum_type, max_grad_norm))


class AdamW(_IpuOptimizer, torch.optim.AdamW):
    """``torch.optim.AdamW`` (decoupled weight decay, default 1e-2) with loss scaling,
    ``bias_correction``, accumulator dtypes and ``max_grad_norm``. AMSGrad is not supported."""

    def __init__(self, params: Iterable, lr: float | None = None, betas: tuple[float, float] | None = None,
                 eps: float | None = None, weight_decay: float | None = None, amsgrad: bool | None = None,
                 maximize: bool | None = None, foreach: bool | None = None, capturable: bool | None = None,
                 differentiable: bool | None = None, fused: bool | None = None,
                 loss_scaling: float | None = None, bias_correction: bool | None = None,
                 accum_type: torch.dtype | None = None,
                 first_order_momentum_accum_type: torch.dtype | None = None,
                 second_order_momentum_accum_type: torch.dtype | None = None,
                 max_grad_norm: float | None = None) -> None:
        given, variables = _passed(dict(locals()))
        torch.optim.AdamW.__init__(self, params, **_AdamArgs.split(given))
        extras = _AdamArgs.extras(loss_scaling, accum_type, first_order_momentum_accum_type,
                                  second_order_momentum_accum_type, max_grad_norm)
        extras["bias_correction"] = True if bias_correction is None else bool(bias_correction)
        self._init_ipu(variables, extras)


class RMSprop(_IpuOptimizer, torch.optim.RMSprop):
    """``torch.optim.RMSprop`` (L2 weight decay) with loss scaling and accumulator dtypes;
    ``use_tf_variant=True`` follows TensorFlow's RMSprop (mean square starts at one, eps inside the
    root, learning rate inside the momentum)."""

    def __init__(self, params: Iterable, lr: float | None = None, alpha: float | None = None,
                 eps: float | None = None, weight_decay: float | None = None, momentum: float | None = None,
                 centered: bool | None = None, foreach: bool | None = None, maximize: bool | None = None,
                 differentiable: bool | None = None, loss_scaling: float | None = None,
                 accum_type: torch.dtype | None = None,
                 first_order_momentum_accum_type: torch.dtype | None = None,
                 second_order_momentum_accum_type: torch.dtype | None = None,
                 use_tf_variant: bool | None = None) -> None:
        given, variables = _passed(dict(locals()))
        torch_names = ("lr", "alpha", "eps", "weight_decay", "momentum", "centered", "foreach", "maximize",
                       "differentiable")
        torch_args = {k: v for k, v in given.items() if k in torch_names}
        torch.optim.RMSprop.__init__(self, params, **torch_args)
        extras = _AdamArgs.extras(loss_scaling, accum_type, first_order_momentum_accum_type,
                                  second_order_momentum_accum_type, None)
        del extras["max_grad_norm"]  # PopTorch's RMSprop has none
        extras["use_tf_variant"] = bool(use_tf_variant)
        self._init_ipu(variables, extras)


class LAMB(_IpuOptimizer, torch.optim.Optimizer):
    """Layer-wise Adaptive Moments (You et al. 2019, "Large Batch Optimization for Deep Learning"),
    PopTorch's variant: Adam's moments (bias-corrected unless ``bias_correction=False``), update
    ``r = m̂/(sqrt(v̂)+eps) + wd*w`` and trust ratio ``phi(|w|)/|r|`` with
    ``phi(z) = min(z, max_weight_norm)`` (65500, fp16's largest, by default)."""

    def __init__(self, params: Iterable, lr: float | None = None, betas: tuple[float, float] | None = None,
                 eps: float | None = None, weight_decay: float | None = None,
                 bias_correction: bool | None = None, loss_scaling: float | None = None,
                 max_weight_norm: float | None = None, accum_type: torch.dtype | None = None,
                 first_order_momentum_accum_type: torch.dtype | None = None,
                 second_order_momentum_accum_type: torch.dtype | None = None) -> None:
        _, variables = _passed(dict(locals()))
        defaults = {"lr": 1e-3 if lr is None else lr,
                    "betas": (0.9, 0.999) if betas is None else tuple(betas),
                    "eps": 1e-8 if eps is None else eps,
                    "weight_decay": 1e-2 if weight_decay is None else weight_decay,
                    "max_weight_norm": 65500.0 if max_weight_norm is None else max_weight_norm}
        torch.optim.Optimizer.__init__(self, params, defaults)
        extras = _AdamArgs.extras(loss_scaling, accum_type, first_order_momentum_accum_type,
                                  second_order_momentum_accum_type, None)
        del extras["max_grad_norm"]  # PopTorch's LAMB has none
        extras["bias_correction"] = True if bias_correction is None else bool(bias_correction)
        extras["max_weight_norm"] = defaults["max_weight_norm"]
        self._init_ipu(variables, extras)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One LAMB step on the host (the same rule the IPU runs)."""
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            b1, b2 = group["betas"]
            s = {"lr": group["lr"], "eps": group["eps"], "weight_decay": group["weight_decay"],
                 "max_weight_norm": group["max_weight_norm"], "beta2": b2, "one_minus_beta1": 1.0 - b1,
                 "one_minus_beta2": 1.0 - b2, "log_beta1": math.log(b1) if b1 > 0 else -math.inf,
                 "log_beta2": math.log(b2) if b2 > 0 else -math.inf}
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                state["step"] += 1.0
                new_p, new = rules.lamb(p.float(), p.grad.float(),
                                        {"exp_avg": state["exp_avg"], "exp_avg_sq": state["exp_avg_sq"]}, s,
                                        state["step"], bias_corrected=self.bias_correction)
                p.copy_(new_p)
                state["exp_avg"], state["exp_avg_sq"] = new["exp_avg"], new["exp_avg_sq"]
        return loss
