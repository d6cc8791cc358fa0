"""``optimizer_spec``: a PopTorch or torch optimizer read into what the device needs to run it.

The spec lists the optimizer state tensors (one per parameter and slot), the device variables (the
variable attributes, per param group), and holds ``update``: a pure torch function the training
executor traces after the backward pass and lowers into the weight-update compute sets.

Example::

    spec = optimizer_spec(opt, dict(model.named_parameters()))
    new_params, new_state = spec.update(params, grads, state, hyper, step)
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from softipu.frontends.torch.optim import rules
from softipu.frontends.torch.optim.attrs import ACCUM_DTYPES, OptimizerError, derived_scalars, is_constant

__all__ = ["Kind", "StateSlot", "HyperSlot", "GroupSpec", "OptimizerSpec", "optimizer_spec"]


class Kind(enum.Enum):
    """The update rule an optimizer lowers to (PopART's optimizer in the comment)."""

    SGD = "SGD"            # popart::SGD, Separate or Combined accumulator and momentum
    ADAM = "Adam"          # popart::Adam, AdamMode::Adam, L2 regularization
    ADAMW = "AdamW"        # popart::Adam, WeightDecayMode::Decay (AdamNoBias without bias correction)
    RMSPROP = "RMSprop"    # popart::Adaptive, RMSProp / CenteredRMSProp
    LAMB = "LAMB"          # popart::Adam, AdamMode::Lamb / LambNoBias


# The per-group attributes of each kind, in the names ``variable_attrs`` uses.
_GROUP_ATTRS = {
    Kind.SGD: ("lr", "momentum", "dampening", "weight_decay"),
    Kind.ADAM: ("lr", "betas", "eps", "weight_decay"),
    Kind.ADAMW: ("lr", "betas", "eps", "weight_decay"),
    Kind.RMSPROP: ("lr", "alpha", "eps", "weight_decay", "momentum"),
    Kind.LAMB: ("lr", "betas", "eps", "weight_decay", "max_weight_norm"),
}
_HAS_MAX_GRAD_NORM = {Kind.SGD, Kind.ADAM, Kind.ADAMW}
_SUPPORTED = ("poptorch.optim SGD, Adam, AdamW, RMSprop and LAMB, and torch.optim SGD, Adam, AdamW "
              "and RMSprop")


@dataclass(frozen=True, slots=True)
class StateSlot:
    """One optimizer state tensor of one parameter, e.g. ``("fc.weight", "exp_avg", (4, 3), fp32, 0.0)``."""

    param_name: str
    name: str
    shape: tuple[int, ...]
    torch_dtype: torch.dtype
    initial: float

    def __post_init__(self) -> None:
        if self.torch_dtype not in ACCUM_DTYPES:
            raise OptimizerError(f"state {self.name} of {self.param_name}: dtype {self.torch_dtype} is "
                                 "not float16 or float32")


@dataclass(frozen=True, slots=True)
class HyperSlot:
    """One device variable: a 0-d tensor named ``group<i>.<scalar>`` or ``loss_scaling``."""

    name: str
    torch_dtype: torch.dtype = torch.float32


@dataclass(frozen=True, slots=True)
class GroupSpec:
    """One param group: its parameters, attribute values and which attributes are variables."""

    index: int
    params: tuple[str, ...]
    values: tuple[tuple[str, Any], ...]     # attribute -> value at compile time
    variables: frozenset[str]               # the attributes kept in device variables
    nesterov: bool = False

    def value(self, attr: str) -> Any:
        return dict(self.values)[attr]

    def scalars(self, hyper: Mapping[str, torch.Tensor] | None) -> dict[str, rules.Scalar]:
        """The rule's scalars: Python floats for constants, ``hyper`` tensors for variables."""
        out: dict[str, rules.Scalar] = {}
        for attr, value in self.values:
            for name, number in derived_scalars(attr, value).items():
                if attr in self.variables and hyper is not None:
                    out[name] = hyper[f"group{self.index}.{name}"]
                else:
                    out[name] = number
        return out


@dataclass(frozen=True, slots=True)
class OptimizerSpec:
    """What the device needs to run an optimizer: state tensors, device variables and ``update``."""

    kind: Kind
    groups: tuple[GroupSpec, ...]
    state: tuple[StateSlot, ...]
    hyper: tuple[HyperSlot, ...]
    loss_scaling: float
    loss_scaling_variable: bool
    max_grad_norm: float                   # inf: no clipping
    accum_type: torch.dtype                # the gradient accumulators' dtype (gradient accumulation)
    options: tuple[tuple[str, Any], ...]   # structural settings: combined, bias_correction, centered...
    # The model's parameters by name, to read a later optimizer (check_compatible) the same way.
    named_params: Mapping[str, torch.nn.Parameter] = field(compare=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        names = self.param_names
        if len(set(names)) != len(names):
            raise OptimizerError(f"a parameter is in more than one param group: {sorted(names)}")
        keys = [(s.param_name, s.name) for s in self.state]
        if len(set(keys)) != len(keys) or not {k[0] for k in keys} <= set(names):
            raise OptimizerError(f"state slots {keys} are not one per parameter and name")
        hyper = [h.name for h in self.hyper]
        if len(set(hyper)) != len(hyper):
            raise OptimizerError(f"device variables named twice: {hyper}")

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(n for g in self.groups for n in g.params)

    def option(self, name: str) -> Any:
        return dict(self.options)[name]

    # ------------------------------------------------------------------ values for setOptimizer
    def hyper_values(self, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        """The current values of the device variables, read from ``optimizer`` (for setOptimizer)."""
        new = optimizer_spec(optimizer, self.named_params)
        out: dict[str, float] = {}
        if self.loss_scaling_variable:
            out["loss_scaling"] = new.loss_scaling
        for group, new_group in zip(self.groups, new.groups, strict=False):
            for attr in sorted(group.variables):
                for name, number in derived_scalars(attr, new_group.value(attr)).items():
                    out[f"group{group.index}.{name}"] = number
        return out

    def check_compatible(self, optimizer: torch.optim.Optimizer) -> None:
        """Raise :class:`OptimizerError` when ``optimizer`` cannot replace the compiled one without
        recompiling: another type or structure, other param groups, or a changed constant."""
        new = optimizer_spec(optimizer, self.named_params, auto_loss_scaling=self.loss_scaling_variable)
        if new.kind is not self.kind:
            raise OptimizerError(f"setOptimizer: the model was compiled with a {self.kind.value} optimizer "
                                 f"and the new one is {new.kind.value}; another optimizer type needs a new "
                                 "trainingModel")
        if [g.params for g in new.groups] != [g.params for g in self.groups]:
            raise OptimizerError("setOptimizer: the new optimizer's param groups hold other parameters "
                                 f"({[list(g.params) for g in new.groups]}) than the compiled one's "
                                 f"({[list(g.params) for g in self.groups]}); keep the same groups")
        for name, old, now in _structure_changes(self, new):
            raise OptimizerError(f"setOptimizer: {name} was {old!r} when the model was compiled and is "
                                 f"now {now!r}; it is part of the compiled program, so changing it "
                                 "needs a new trainingModel")
        if not self.loss_scaling_variable and new.loss_scaling != self.loss_scaling:
            raise OptimizerError(_constant_message("loss_scaling", None, self.loss_scaling,
                                                   new.loss_scaling))
        for old_g, new_g in zip(self.groups, new.groups, strict=True):
            for attr, old_value in old_g.values:
                if attr not in old_g.variables and new_g.value(attr) != old_value:
                    raise OptimizerError(_constant_message(attr, old_g.index, old_value, new_g.value(attr)))

    # ------------------------------------------------------------------ the update rule
    def update(self, params: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor],
               state: Mapping[tuple[str, str], torch.Tensor], hyper: Mapping[str, torch.Tensor],
               step: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[tuple[str, str], torch.Tensor]]:
        """One optimizer step, as a pure torch function (it traces with ``torch.export``).

        ``grads`` are the loss gradients times the loss scaling (already reduced over gradient
        accumulation); they are divided by the loss scaling, clipped to ``max_grad_norm`` by their
        global norm, then each parameter is updated by its group's rule, in float32. ``step`` is
        the number of this update (1 on the first) as a float32 0-d tensor. Returns the new
        parameters (in their dtypes) and state (in the state dtypes) of every parameter in
        ``grads``; parameters without a gradient are left out (unchanged).
        """
        scaled = {n: grads[n].to(torch.float32) for n in self.param_names if n in grads}
        ls: rules.Scalar = hyper["loss_scaling"] if self.loss_scaling_variable else self.loss_scaling
        unscaled = not isinstance(ls, torch.Tensor) and ls == 1.0
        g32 = scaled if unscaled else {n: g / ls for n, g in scaled.items()}
        if math.isfinite(self.max_grad_norm):
            g32 = rules.clip_by_global_norm(g32, self.max_grad_norm)
        rule = self._rule()
        slots = _slots_by_param(self.state)
        new_params: dict[str, torch.Tensor] = {}
        new_state: dict[tuple[str, str], torch.Tensor] = {}
        for group in self.groups:
            scalars = group.scalars(hyper)
            for name in group.params:
                if name not in g32:
                    continue
                mine = {slot.name: state[(name, slot.name)] for slot in slots.get(name, ())}
                p, st = rule(params[name].to(torch.float32), g32[name], mine, scalars, step, group)
                new_params[name] = p.to(params[name].dtype)
                for slot in slots.get(name, ()):
                    new_state[(name, slot.name)] = st[slot.name].to(slot.torch_dtype)
        return new_params, new_state

    def _rule(self) -> Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        opts = dict(self.options)
        if self.kind is Kind.SGD:
            return lambda p, g, st, s, step, grp: rules.sgd(p, g, st, s, step, nesterov=grp.nesterov,
                                                            combined=opts["use_combined_accum"])
        if self.kind in (Kind.ADAM, Kind.ADAMW):
            return lambda p, g, st, s, step, grp: rules.adam(
                p, g, st, s, step, decoupled=self.kind is Kind.ADAMW, bias_corrected=opts["bias_correction"])
        if self.kind is Kind.RMSPROP:
            return lambda p, g, st, s, step, grp: rules.rmsprop(
                p, g, st, s, step, centered=opts["centered"], tf_variant=opts["use_tf_variant"])
        return lambda p, g, st, s, step, grp: rules.lamb(p, g, st, s, step,
                                                         bias_corrected=opts["bias_correction"])

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self, values: Mapping[tuple[str, str], torch.Tensor], optimizer: torch.optim.Optimizer,
                   step: int | None = None) -> dict[str, Any]:
        """PopTorch-shaped optimizer checkpoint: ``{"ipu_state": {"<slot>/<param>": tensor, "step": n},
        "ipu_param": {scalar: value}}`` (keys are not torch.optim's, as in PopTorch)."""
        ipu_state: dict[str, Any] = {f"{slot}/{param}": t.detach().clone()
                                     for (param, slot), t in values.items()}
        if step is not None:
            ipu_state["step"] = int(step)
        ipu_param = {"loss_scaling": float(getattr(optimizer, "loss_scaling", 1.0))}
        for i, group in enumerate(optimizer.param_groups):
            for attr in _GROUP_ATTRS[self.kind]:
                value = _group_value(optimizer, group, attr)
                for name, number in derived_scalars(attr, value).items():
                    ipu_param[f"group{i}.{name}"] = number
        return {"ipu_state": ipu_state, "ipu_param": ipu_param}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> tuple[dict[tuple[str, str], torch.Tensor],
                                                                        int | None]:
        """The device state (and step) in a checkpoint from :meth:`state_dict`, checked against the slots."""
        ipu_state = state_dict.get("ipu_state") if isinstance(state_dict, Mapping) else None
        if not isinstance(ipu_state, Mapping):
            raise OptimizerError("Only IPU optimizer states can be loaded onto the IPU: the state dict has "
                                 "no 'ipu_state' (save it with optimizer.state_dict() after training on the "
                                 "IPU)")
        out: dict[tuple[str, str], torch.Tensor] = {}
        for slot in self.state:
            key = f"{slot.name}/{slot.param_name}"
            if key not in ipu_state:
                raise OptimizerError(f"optimizer state dict: no {key!r}; it was saved for another model or "
                                     "optimizer")
            t = torch.as_tensor(ipu_state[key])
            if tuple(t.shape) != slot.shape:
                raise OptimizerError(f"optimizer state dict: {key!r} has shape {list(t.shape)}, the model "
                                     f"needs {list(slot.shape)}")
            out[(slot.param_name, slot.name)] = t.to(slot.torch_dtype)
        step = ipu_state.get("step")
        return out, None if step is None else int(step)


def _constant_message(attr: str, group: int | None, old: Any, new: Any) -> str:
    where = f"of param group {group} " if group is not None else ""
    return (f"setOptimizer: optimizer attribute {attr!r} {where}is a constant compiled into the model "
            f"({old!r}) and the new optimizer changes it to {new!r}; constants cannot change without "
            f"recompiling. Make it a variable before the first call: pass {attr} to the poptorch.optim "
            f"constructor, or call optimizer.variable_attrs.markAsVariable({attr!r})")


def _structure_changes(old: OptimizerSpec, new: OptimizerSpec) -> list[tuple[str, Any, Any]]:
    now = dict(new.options)
    out = [(name, a, now.get(name)) for name, a in old.options if now.get(name) != a]
    out += [(f"param group {g.index} nesterov", g.nesterov, h.nesterov)
            for g, h in zip(old.groups, new.groups, strict=True) if g.nesterov != h.nesterov]
    if new.max_grad_norm != old.max_grad_norm:
        out.append(("max_grad_norm", old.max_grad_norm, new.max_grad_norm))
    if new.accum_type != old.accum_type:
        out.append(("accum_type", old.accum_type, new.accum_type))
    if {(s.param_name, s.name, s.torch_dtype) for s in new.state} - {(s.param_name, s.name, s.torch_dtype)
                                                                      for s in old.state}:
        out.append(("the optimizer state", [s.name for s in old.state][:4], [s.name for s in new.state][:4]))
    return out


def _slots_by_param(state: tuple[StateSlot, ...]) -> dict[str, list[StateSlot]]:
    out: dict[str, list[StateSlot]] = {}
    for slot in state:
        out.setdefault(slot.param_name, []).append(slot)
    return out


# ---------------------------------------------------------------------- reading an optimizer
def kind_of(optimizer: Any) -> Kind:
    """The update rule of ``optimizer``, or a clear error for optimizers PopTorch does not train with."""
    from softipu.frontends.torch.optim.classes import LAMB

    if isinstance(optimizer, LAMB):
        return Kind.LAMB
    if isinstance(optimizer, torch.optim.AdamW) or (
            isinstance(optimizer, torch.optim.Adam) and optimizer.defaults.get("decoupled_weight_decay")):
        return Kind.ADAMW
    if isinstance(optimizer, torch.optim.Adam):
        return Kind.ADAM
    if isinstance(optimizer, torch.optim.SGD):
        return Kind.SGD
    if isinstance(optimizer, torch.optim.RMSprop):
        return Kind.RMSPROP
    name = f"{type(optimizer).__module__}.{type(optimizer).__qualname__}"
    raise OptimizerError(f"Unsupported optimizer type {name}: softipu, like PopTorch, trains with "
                         f"{_SUPPORTED}; use one of those (poptorch.optim.LAMB for LAMB)")


def _number(value: Any, what: str) -> Any:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise OptimizerError(f"{what} must be a number, got a tensor of shape {list(value.shape)}")
        return float(value.item())
    if isinstance(value, tuple):
        return tuple(_number(v, what) for v in value)
    if not isinstance(value, (int, float)):
        raise OptimizerError(f"Expected a number for {what} but got {value!r} instead")
    return float(value)


def _group_value(optimizer: Any, group: Mapping[str, Any], attr: str) -> Any:
    if attr == "max_weight_norm" and attr not in group:
        value = getattr(optimizer, "max_weight_norm", None)
        return 65500.0 if value is None else _number(value, attr)
    if attr == "velocity_scaling":
        return _number(group.get(attr, 1.0), attr)
    return _number(group[attr], f"{attr} (param group)")


def _check_group(index: int, group: Mapping[str, Any]) -> None:
    if group.get("amsgrad"):
        raise OptimizerError("Only non-amsgrad Adam/AdamW optimizers are supported (param group "
                             f"{index} has amsgrad=True)")
    if group.get("maximize"):
        raise OptimizerError(f"maximize=True is not supported on the IPU (param group {index}); "
                             "negate the loss instead")


def _accum(optimizer: Any, attr: str) -> torch.dtype:
    dtype = getattr(optimizer, attr, None) or torch.float32
    if dtype not in ACCUM_DTYPES:
        raise OptimizerError(f"{attr} must be set to either torch.float16 or torch.float32 not {dtype}")
    return dtype


def _options(kind: Kind, optimizer: Any) -> dict[str, Any]:
    if kind is Kind.SGD:
        return {"use_combined_accum": bool(getattr(optimizer, "use_combined_accum", False))}
    if kind in (Kind.ADAM, Kind.ADAMW, Kind.LAMB):
        return {"bias_correction": bool(getattr(optimizer, "bias_correction", True))}
    centered = {bool(g.get("centered", False)) for g in optimizer.param_groups}
    if len(centered) > 1:
        values = [bool(g.get("centered", False)) for g in optimizer.param_groups]
        raise OptimizerError("All parameter groups must have the same value for the 'centered' attribute "
                             f"(per group: {values})")
    return {"centered": centered.pop() if centered else False,
            "use_tf_variant": bool(getattr(optimizer, "use_tf_variant", False))}


def _names_of(optimizer: Any, named_params: Mapping[str, torch.nn.Parameter]) -> list[list[str]]:
    """Each group's parameter names, or one error naming every parameter that is not the model's."""
    by_id = {id(p): n for n, p in named_params.items()}  # a local lookup, not a cache
    names: list[list[str]] = []
    foreign: list[str] = []
    for gi, group in enumerate(optimizer.param_groups):
        names.append([])
        for pi, p in enumerate(group["params"]):
            if id(p) in by_id:
                names[-1].append(by_id[id(p)])
            elif p.requires_grad:  # a frozen parameter gets no gradient: torch's step skips it too
                foreign.append(f"param group {gi}, parameter {pi} (shape {list(p.shape)}, {p.dtype})")
    if foreign:
        raise OptimizerError(f"the optimizer holds {len(foreign)} parameter(s) that are not the model's: "
                             + "; ".join(foreign[:8]) + ("; ..." if len(foreign) > 8 else "")
                             + ". Build the optimizer from the trained model's parameters "
                             "(optimizer = poptorch.optim.SGD(model.parameters(), ...))")
    return names


def _state_slots(kind: Kind, groups: list[GroupSpec], options: dict[str, Any], optimizer: Any,
                 named_params: Mapping[str, torch.nn.Parameter]) -> list[StateSlot]:
    out: list[StateSlot] = []
    for group in groups:
        for name in group.params:
            p = named_params[name]
            for slot, dtype, initial in _slots_of(kind, group, options, optimizer, p.dtype):
                out.append(StateSlot(name, slot, tuple(p.shape), dtype, initial))
    return out


def _momentum_may_be_nonzero(group: GroupSpec) -> bool:
    return "momentum" in group.variables or group.value("momentum") != 0.0


def _slots_of(kind: Kind, group: GroupSpec, options: dict[str, Any], optimizer: Any,
              param_dtype: torch.dtype) -> list[tuple[str, torch.dtype, float]]:
    first = _accum(optimizer, "first_order_momentum_accum_type")
    second = _accum(optimizer, "second_order_momentum_accum_type")
    if kind is Kind.SGD:
        if not _momentum_may_be_nonzero(group):
            return []
        combined = options["use_combined_accum"]
        dtype = param_dtype if combined else _accum(optimizer, "velocity_accum_type")
        return [("momentum_buffer", dtype if dtype in ACCUM_DTYPES else torch.float32, 0.0)]
    if kind is Kind.RMSPROP:
        # PopART's Adaptive: accl1 (the mean square) takes the first-order type, accl2 (the centered
        # mean) the second-order type, and accl3 (momentum) is always float32, as PopTorch builds it.
        out = [("square_avg", first, 1.0 if options["use_tf_variant"] else 0.0)]
        if options["centered"]:
            out.append(("grad_avg", second, 0.0))
        if _momentum_may_be_nonzero(group):
            out.append(("momentum_buffer", torch.float32, 0.0))
        return out
    return [("exp_avg", first, 0.0), ("exp_avg_sq", second, 0.0)]


def optimizer_spec(optimizer: torch.optim.Optimizer, named_params: Mapping[str, torch.nn.Parameter], *,
                   auto_loss_scaling: bool = False) -> OptimizerSpec:
    """Read ``optimizer`` (a ``poptorch.optim`` or accepted ``torch.optim`` optimizer) for the model
    whose parameters are ``named_params``. ``auto_loss_scaling`` makes the loss scaling a variable
    (PopART's automatic loss scaling writes it)."""
    kind = kind_of(optimizer)
    options = _options(kind, optimizer)
    names = _names_of(optimizer, named_params)
    attrs = _GROUP_ATTRS[kind] + (("velocity_scaling",) if options.get("use_combined_accum") else ())
    groups: list[GroupSpec] = []
    for index, (group, params) in enumerate(zip(optimizer.param_groups, names, strict=True)):
        _check_group(index, group)
        values = tuple((a, _group_value(optimizer, group, a)) for a in attrs)
        variables = frozenset(a for a, v in values
                              if not is_constant(optimizer, a, v, adamw=kind is Kind.ADAMW))
        groups.append(GroupSpec(index, tuple(params), values, variables, bool(group.get("nesterov", False))))
    loss_scaling = _number(getattr(optimizer, "loss_scaling", 1.0), "loss_scaling")
    ls_variable = auto_loss_scaling or not is_constant(optimizer, "loss_scaling", loss_scaling)
    max_grad_norm = _number(getattr(optimizer, "max_grad_norm", math.inf), "max_grad_norm")
    if math.isnan(max_grad_norm):
        raise OptimizerError("Maximum norm of gradients cannot be NaN (max_grad_norm)")
    if kind not in _HAS_MAX_GRAD_NORM:
        max_grad_norm = math.inf
    hyper = [HyperSlot("loss_scaling")] if ls_variable else []
    for g in groups:
        for attr, value in g.values:
            if attr in g.variables:
                hyper += [HyperSlot(f"group{g.index}.{n}") for n in derived_scalars(attr, value)]
    return OptimizerSpec(
        kind=kind, groups=tuple(groups),
        state=tuple(_state_slots(kind, groups, options, optimizer, named_params)), hyper=tuple(hyper),
        loss_scaling=loss_scaling, loss_scaling_variable=ls_variable, max_grad_norm=max_grad_norm,
        accum_type=_accum(optimizer, "accum_type"), options=tuple(sorted(options.items())),
        named_params=named_params)
