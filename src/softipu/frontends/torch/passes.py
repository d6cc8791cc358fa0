"""Frontend graph passes: what PopTorch/PopART rewrite in an inference graph before Poplar sees it.

Each pass reads an exported, decomposed program (``torch.export``, Core ATen) and rewrites its
graph in place; what it did is returned as one line per rewrite, which the lowering keeps
(``Lowered.rewrites``) and logs, so a user sees exactly what was rewritten.

* :func:`fold_batch_norms` — a batch norm in eval mode that follows a convolution is folded into
  the convolution's weights and bias. PopART's ``ConvBatchNormFold`` pattern ("fuse a
  convolution followed by batch normalization in inference", PopART user guide, Patterns) and
  PopTorch, which runs an inference model through PopART's inference patterns, do this; the
  arithmetic is the standard fold: with ``s = gamma / sqrt(running_var + eps)``,
  ``W' = W * s`` (per output channel) and ``b' = (b - running_mean) * s + beta``.
  The folded values are new weights: they are computed once on the host (in float32, then cast
  to the model's precision like any weight) and streamed as ``weights/<name>#folded``, so
  ``copy_weights_to_device`` does not overwrite them with the module's unfolded values.
"""

from __future__ import annotations

import logging
import operator
from typing import Any

import torch

__all__ = ["FOLDED_SUFFIX", "Folded", "conv_weight_use", "fold_batch_norms", "inference_passes"]

logger = logging.getLogger("softipu.frontends.torch")

FOLDED_SUFFIX = "#folded"
Folded = dict[str, tuple[str, torch.Tensor]]  # placeholder target -> (stream name, new host value)

_CONV = "aten::convolution"
_BN = "aten::_native_batch_norm_legit_no_training"


def _op_name(node: torch.fx.Node) -> str | None:
    if node.op != "call_function" or not hasattr(node.target, "name"):
        return None
    name = node.target.name()
    return name.split(".")[0] if isinstance(name, str) else None


def _state(ep: Any) -> dict[str, tuple[torch.fx.Node, str, torch.Tensor]]:
    """Placeholder node name -> (node, state target, host value) for parameters, buffers, constants."""
    from torch.export.graph_signature import InputKind  # noqa: PLC0415

    nodes = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    out = {}
    for spec in ep.graph_signature.input_specs:
        if spec.kind not in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
            continue
        value = ep.state_dict.get(spec.target)
        if value is None:
            value = ep.constants.get(spec.target)
        node = nodes.get(spec.arg.name)
        if isinstance(value, torch.Tensor) and node is not None:
            out[node.name] = (node, spec.target, value)
    return out


def _only_user(node: Any, user: torch.fx.Node) -> bool:
    return isinstance(node, torch.fx.Node) and list(node.users) == [user]


def _bn_output(bn: torch.fx.Node) -> torch.fx.Node | None:
    """The ``getitem(bn, 0)`` that is the normalized output, when it is the batch norm's only use."""
    users = list(bn.users)
    if len(users) == 1 and users[0].target is operator.getitem and users[0].args[1] == 0:
        return users[0]
    return None


def fold_batch_norms(ep: Any, folded: Folded) -> list[str]:
    """Fold each eval-mode batch norm whose input is a convolution used nowhere else into it.

    Rewrites ``ep.graph``; adds the new weight and bias values to ``folded``. A convolution with
    no bias takes the batch norm's ``beta`` (or running mean) placeholder as its bias, whose value
    becomes the folded bias. Folds only where every value involved is a parameter or buffer used
    by this pair alone (a shared weight is left as it is).
    """
    state = _state(ep)
    done = []
    for bn in list(ep.graph.nodes):
        if _op_name(bn) != _BN:
            continue
        conv = bn.args[0]
        out = _bn_output(bn)
        if out is None or not isinstance(conv, torch.fx.Node) or _op_name(conv) != _CONV \
                or not _only_user(conv, bn) or conv.args[6]:  # transposed
            continue
        gamma, beta, mean, var = bn.args[1:5]
        eps = float(bn.args[6])
        weight, bias = conv.args[1], conv.args[2]
        pieces = [weight, mean, var] + [p for p in (gamma, beta, bias) if p is not None]
        if any(not isinstance(p, torch.fx.Node) or p.name not in state for p in pieces):
            continue
        if not (_only_user(weight, conv) and _only_user(mean, bn) and _only_user(var, bn)
                and all(_only_user(p, bn) for p in (gamma, beta) if p is not None)
                and (bias is None or _only_user(bias, conv))):
            continue
        _, w_target, w = state[weight.name]
        o = w.shape[0]
        mean_v, var_v = state[mean.name][2].float(), state[var.name][2].float()
        scale = torch.rsqrt(var_v + eps)
        if gamma is not None:
            scale = scale * state[gamma.name][2].float()
        shift = -mean_v * scale
        if bias is not None:
            shift = shift + state[bias.name][2].float() * scale
        if beta is not None:
            shift = shift + state[beta.name][2].float()
        new_w = (w.float() * scale.reshape((o,) + (1,) * (w.ndim - 1))).to(w.dtype)
        carrier = bias if bias is not None else (beta if beta is not None else mean)
        _, b_target, b_old = state[carrier.name]
        folded[w_target] = (f"weights/{w_target}{FOLDED_SUFFIX}", new_w)
        folded[b_target] = (f"weights/{b_target}{FOLDED_SUFFIX}", shift.to(b_old.dtype))
        conv.args = conv.args[:2] + (carrier,) + conv.args[3:]
        out.replace_all_uses_with(conv)
        ep.graph.erase_node(out)
        ep.graph.erase_node(bn)
        done.append(f"fold_batch_norms: {bn.name} (eps={eps:g}) folded into {conv.name}: weight "
                    f"{w_target!r} scaled, bias {b_target!r} = (b - mean) * gamma / sqrt(var + eps) + beta")
    return done


def inference_passes(ep: Any) -> tuple[Folded, list[str]]:
    """Run the inference passes on ``ep`` in order: ``(folded weights, rewrites)``."""
    folded: Folded = {}
    rewrites = fold_batch_norms(ep, folded)
    if rewrites:
        ep.graph.lint()
        logger.info("graph passes: %d rewrites (%s)", len(rewrites),
                    f"{len(rewrites)} batch norms folded into convolutions")
    return folded, rewrites


def _weights_of_backward(user: torch.fx.Node, node: torch.fx.Node, conv: torch.fx.Node) -> bool:
    """Whether ``user`` is the ``convolution_backward`` of ``conv`` reading ``node`` as its weights."""
    if _op_name(user) != "aten::convolution_backward" or len(user.args) < 10 or len(conv.args) < 9 \
            or user.args[2] is not node:
        return False
    return list(user.args[4:8]) + [user.args[9]] == list(conv.args[3:7]) + [conv.args[8]]


def conv_weight_use(node: torch.fx.Node) -> dict[str, Any] | None:
    """The ``create_conv_weights`` arguments for a weight placeholder whose only use is as the
    weights of one (not transposed) convolution; else None. The lowering then lays the weights out
    as the convolution's plan wants them, as poplin's ``createWeights`` does."""
    convs = [u for u in node.users if _op_name(u) == _CONV]
    # training: the backward's convolution_backward reads the same weights (its argument 2),
    # as PopART's ConvFlipWeights reads the weights createWeights laid out for the forward
    if len(convs) != 1 or any(u is not convs[0] and not _weights_of_backward(u, node, convs[0])
                              for u in node.users):
        return None
    conv = convs[0]
    args = list(conv.args) + [None] * 9
    x = args[0].meta.get("val") if isinstance(args[0], torch.fx.Node) else None
    if args[1] is not node or args[6] or x is None or x.ndim not in (3, 4) \
            or any(int(p) for p in args[7] or []):
        return None
    spatial = x.ndim - 2

    def pair(v: Any) -> tuple[int, ...]:
        v = [int(i) for i in v]
        return tuple(v * spatial if len(v) == 1 else v)

    return {"input_shape": tuple(int(d) for d in x.shape), "stride": pair(args[3]),
            "padding": pair(args[4]), "dilation": pair(args[5]), "groups": int(args[8])}
