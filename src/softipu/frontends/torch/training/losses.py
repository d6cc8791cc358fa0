"""Finding the loss as PopTorch finds it.

Every torch loss (``torch.nn.functional.*_loss``, ``cross_entropy``...) and every
``poptorch.identity_loss`` called while forward runs is recorded; a loss that feeds another loss
is folded into it (it is in the other's autograd graph). Exactly one independent loss must remain,
and forward must return it.
"""

from __future__ import annotations

import contextvars
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - torch's own alias
from torch.overrides import TorchFunctionMode

from softipu.frontends.errors import FrontendError
from softipu.frontends.torch.export import _is_user_file

__all__ = ["LossRecorder", "record_loss", "find_loss"]

_LOSS_FUNCTIONS = frozenset(getattr(F, name) for name in (
    "cross_entropy", "nll_loss", "mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss",
    "binary_cross_entropy", "binary_cross_entropy_with_logits", "kl_div", "soft_margin_loss",
    "multilabel_soft_margin_loss", "multi_margin_loss", "multilabel_margin_loss", "hinge_embedding_loss",
    "cosine_embedding_loss", "margin_ranking_loss", "poisson_nll_loss", "gaussian_nll_loss",
    "triplet_margin_loss", "ctc_loss") if hasattr(F, name))

_ACTIVE: contextvars.ContextVar[LossRecorder | None] = contextvars.ContextVar("softipu_losses", default=None)


class LossRecorder(TorchFunctionMode):
    """Records the result of every loss function called while it is active."""

    def __init__(self, label: str = "the model") -> None:
        super().__init__()
        self.label = label
        self.losses: list[tuple[torch.Tensor, str]] = []

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func in _BACKWARD:
            raise FrontendError(backward_message(self.label))
        out = func(*args, **(kwargs or {}))
        if func in _LOSS_FUNCTIONS and isinstance(out, torch.Tensor):
            self.losses.append((out, f"torch.nn.functional.{func.__name__}"))
        return out


_BACKWARD = frozenset((torch.Tensor.backward, torch.autograd.backward, torch.autograd.grad))


def backward_message(label: str) -> str:
    """What to do when forward calls ``.backward()``, with the user's line."""
    frames = [f for f in traceback.extract_stack() if _is_user_file(f.filename)]
    last = frames[-1] if frames else None
    where = f" at {last.filename}:{last.lineno}: {(last.line or '').strip()}" if last else ""
    return (f"{label}.forward calls .backward() (or torch.autograd.grad){where}: on the IPU the backward "
            "pass and the optimizer step are part of the compiled training step. Return the loss from "
            "forward instead; trainingModel differentiates it and steps the optimizer")


@contextmanager
def recording(label: str = "the model") -> Iterator[LossRecorder]:
    recorder = LossRecorder(label)
    token = _ACTIVE.set(recorder)
    try:
        with recorder:
            yield recorder
    finally:
        _ACTIVE.reset(token)


def record_loss(t: torch.Tensor, what: str = "poptorch.identity_loss") -> None:
    """Mark ``t`` as a loss (``poptorch.identity_loss`` calls this)."""
    recorder = _ACTIVE.get()
    if recorder is not None and isinstance(t, torch.Tensor):
        recorder.losses.append((t, what))


def _reaches(start: Any, target: Any) -> bool:
    """Whether autograd node ``target`` is in the graph below ``start``."""
    if start is None or target is None:
        return False
    seen, todo = set(), [start]
    while todo:
        fn = todo.pop()
        if fn is target:
            return True
        if id(fn) in seen:
            continue
        seen.add(id(fn))
        todo.extend(f for f, _ in getattr(fn, "next_functions", ()) if f is not None)
    return False


def find_loss(losses: list[tuple[torch.Tensor, str]], flat_outputs: list[Any],
              label: str) -> tuple[int | None, int]:
    """(the index among ``flat_outputs`` of the one independent loss or None when forward does not
    return it, its index among ``losses``); PopTorch's errors when there is none or several."""
    unique: list[tuple[torch.Tensor, str]] = []
    for t, what in losses:
        if not any(t is u for u, _ in unique):
            unique.append((t, what))
    independent = [(t, w) for t, w in unique
                   if not any(u is not t and (u.grad_fn is t.grad_fn or _reaches(u.grad_fn, t.grad_fn))
                              for u, _ in unique if u.grad_fn is not None)]
    # Two losses with the same autograd node (identity_loss(l, "none") of a loss) are one loss.
    if not independent:
        raise FrontendError(
            f"Couldn't find a loss in graph! {label}.forward must compute its loss with a torch loss "
            "(torch.nn.functional.cross_entropy, torch.nn.MSELoss()...) or mark it with "
            "poptorch.identity_loss(x, reduction='sum'|'mean'|'none'), and return it")
    if len(independent) > 1:
        names = ", ".join(w for _, w in independent)
        raise FrontendError(
            f"Multiple independent losses found in {label}.forward ({names}). Wrap final graph loss in "
            "poptorch.identity_loss, e.g. return poptorch.identity_loss(loss_a + loss_b, reduction='none')")
    loss = independent[0][0]
    if loss.numel() != 1:
        raise FrontendError(f"the loss of {label} has shape {list(loss.shape)}; it must be a "
                            "scalar: use poptorch.identity_loss(x, reduction='sum' or 'mean')")
    position = next(k for k, (t, _) in enumerate(losses) if t is loss)
    index = next((i for i, out in enumerate(flat_outputs) if out is loss), None)
    if index is None:
        # forward returns a scalar made from the loss (``0.5 * F.l1_loss(...)``, ``loss + aux``):
        # that returned value is what is differentiated, as eager ``.backward()`` on it would.
        derived = [i for i, out in enumerate(flat_outputs)
                   if isinstance(out, torch.Tensor) and out.numel() == 1 and out.grad_fn is not None
                   and _reaches(out.grad_fn, loss.grad_fn)]
        index = derived[0] if len(derived) == 1 else None
    return index, position
