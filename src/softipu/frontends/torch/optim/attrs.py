"""Which optimizer attributes are device variables and which are compiled-in constants.

PopTorch's rules: for a ``poptorch.optim`` optimizer, the attributes passed to the constructor are
variables and the rest constants (``variable_attrs.markAsConstant`` / ``markAsVariable`` change that);
for a plain ``torch.optim`` optimizer, an attribute at its default value is a constant. ``lr`` is always
a variable. Variables are written by ``setOptimizer`` without recompiling; changing a constant after
compile is an error.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from softipu.frontends.errors import FrontendError

__all__ = ["OptimizerError", "VariableAttributes", "ACCUM_DTYPES", "is_constant", "derived_scalars"]

ACCUM_DTYPES = (torch.float16, torch.float32)


class OptimizerError(FrontendError, ValueError):
    """An optimizer softipu cannot train with, or one that does not fit the compiled model."""


class VariableAttributes:
    """Tracks which attributes of a ``poptorch.optim`` optimizer are variables (``variable_attrs``).

    >>> import torch, softipu.poptorch as poptorch
    >>> opt = poptorch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1, momentum=0.9)
    >>> opt.variable_attrs.isConstant("momentum"), opt.variable_attrs.isConstant("dampening")
    (False, True)
    """

    def __init__(self, variables: list[str], allowed: list[str]) -> None:
        self._variables = list(dict.fromkeys(variables))
        self._allowed = list(dict.fromkeys(allowed))

    def isConstant(self, attr: str) -> bool:  # noqa: N802 - PopTorch's name
        """True when ``attr`` is compiled in as a constant."""
        return attr not in self._variables

    def markAsConstant(self, attr: str) -> None:  # noqa: N802 - PopTorch's name
        """Compile ``attr`` in as a constant (changing it later needs a new model)."""
        self._check(attr)
        self._variables = [a for a in self._variables if a != attr]

    def markAsVariable(self, attr: str) -> None:  # noqa: N802 - PopTorch's name
        """Keep ``attr`` in a device variable that ``setOptimizer`` writes."""
        self._check(attr)
        if attr not in self._variables:
            self._variables.append(attr)

    def _check(self, attr: str) -> None:
        if attr not in self._allowed:
            raise OptimizerError(f"Unknown attribute {attr!r}, allowed values: {self._allowed}")

    def __repr__(self) -> str:
        return f"VariableAttributes(variables={self._variables})"


# For a plain torch.optim optimizer: the value at which an attribute is a constant (None: always).
_TORCH_CONSTANT_AT: dict[str, float | None] = {
    "loss_scaling": 1.0, "weight_decay": 0.0, "momentum": 0.0, "velocity_scaling": 1.0,
    "dampening": 0.0, "eps": 1e-8, "alpha": None, "betas": None, "max_weight_norm": None,
}


def is_constant(optimizer: Any, attr: str, value: Any, *, adamw: bool = False) -> bool:
    """PopTorch's rule for whether ``attr`` (at ``value``) is compiled in as a constant."""
    if attr == "lr":
        return False
    variable_attrs = getattr(optimizer, "variable_attrs", None)
    if isinstance(variable_attrs, VariableAttributes):
        return variable_attrs.isConstant(attr)
    if attr == "weight_decay" and adamw:
        return value == 1e-2  # torch's AdamW default
    at = _TORCH_CONSTANT_AT.get(attr)
    return at is None or value == at


def _log(beta: float) -> float:
    return math.log(beta) if beta > 0.0 else -math.inf


def derived_scalars(attr: str, value: Any) -> dict[str, float]:
    """The scalars an attribute gives the update rules, worked out in double on the host (as torch
    works them out in Python): ``betas`` gives ``beta1``, ``one_minus_beta1``, ``log_beta1``..."""
    if attr == "betas":
        b1, b2 = (float(b) for b in value)
        return {"beta1": b1, "one_minus_beta1": 1.0 - b1, "log_beta1": _log(b1),
                "beta2": b2, "one_minus_beta2": 1.0 - b2, "log_beta2": _log(b2)}
    if attr == "dampening":
        return {"one_minus_dampening": 1.0 - float(value)}
    if attr == "alpha":
        return {"alpha": float(value), "one_minus_alpha": 1.0 - float(value)}
    return {attr: float(value)}
