"""The joint forward + backward graph of a training step, from PyTorch's own autograd machinery.

:func:`joint_graph` runs forward once on fake tensors (no arithmetic; eagerly with copies of the
buffers when fake tensors cannot run it) to find the loss (:mod:`.losses`) and the output
structure, then traces the joint graph with AOTAutograd (``aot_export_module(trace_joint=True)``)
decomposed to Core ATen as ``torch.export`` decomposes. Attention runs as its math form, so its
backward decomposes too.
"""

from __future__ import annotations

import contextlib
import operator
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils import _pytree as pytree

from softipu.frontends.errors import ExportError, FrontendError
from softipu.frontends.torch.export import _explain, _quiet_torch
from softipu.frontends.torch.training import nll_mask  # noqa: F401 - registers softipu::label_mask
from softipu.frontends.torch.training.losses import find_loss, recording

__all__ = ["Joint", "joint_graph"]


@dataclass
class Joint:
    """A traced training step: the graph and what its placeholders and outputs are."""

    gm: torch.fx.GraphModule
    params: list[str]  # parameter names, in placeholder order (all parameters)
    buffers: list[str]  # buffer names, after the parameters
    trainable: list[str]  # parameters with a gradient output, in output order
    mutated: list[str]  # buffers written back (running statistics), in output order
    num_user_outputs: int
    loss_index: int  # among the user outputs
    out_spec: Any
    forward_nodes: set[torch.fx.Node]
    scaled: bool = False  # the last user input is the loss scaling the differentiated loss is multiplied by


class _Flat(torch.nn.Module):
    """The user's module with flat inputs and flat outputs, every output but the loss detached."""

    def __init__(self, module: torch.nn.Module, in_spec: Any, loss_index: int | None, position: int,
                 scaled: bool) -> None:
        super().__init__()
        self.m = module
        self.in_spec = in_spec
        self.loss_index = loss_index
        self.position = position  # the loss among the recorded losses, when forward does not return it
        self.scaled = scaled

    def forward(self, *flat: Any) -> tuple[Any, ...]:
        scale = flat[-1] if self.scaled else None
        flat = flat[:-1] if self.scaled else flat
        args, kwargs = pytree.tree_unflatten(list(flat), self.in_spec)
        with recording(type(self.m).__name__) as rec:
            outs = pytree.tree_leaves(self.m(*args, **kwargs))
        if self.loss_index is None or scale is not None:
            # The differentiated loss as one more output (times the loss scaling when there is one).
            loss = rec.losses[self.position][0] if self.loss_index is None else outs[self.loss_index]
            return (*(o.detach() if isinstance(o, torch.Tensor) else o for o in outs),
                    loss if scale is None else loss * scale)
        return tuple(o if i == self.loss_index or not isinstance(o, torch.Tensor) else o.detach()
                     for i, o in enumerate(outs))


def _find_loss(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[int | None, int, Any]:
    """Run forward once to find the loss: (its flat output index or None, its index among the
    recorded losses, the output spec). It runs on fake tensors (shapes, dtypes and autograd links,
    no arithmetic: an fp16 model's eager forward on the CPU is slow); a forward fake tensors cannot
    run (one that reads a value) runs eagerly with its buffers copied, so running statistics are
    untouched either way."""
    from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: PLC0415 - torch internals

    label = type(module).__name__
    params = dict(module.named_parameters(remove_duplicate=False))
    buffers = dict(module.named_buffers(remove_duplicate=False))
    try:
        fake = FakeTensorMode(allow_non_fake_inputs=True)
        real = {**params, **buffers}
        state = {k: fake.from_tensor(v) for k, v in real.items()}
        fargs, fkwargs = pytree.tree_map_only(torch.Tensor, fake.from_tensor, (tuple(args), dict(kwargs)))
        with fake:
            return _record_loss(module, state, fargs, fkwargs, label)
    except FrontendError:
        raise
    except Exception:  # noqa: BLE001, S110 - the eager forward below reports what is wrong
        pass
    copied = {**params, **{k: v.clone() for k, v in buffers.items()}}
    return _record_loss(module, copied, tuple(args), dict(kwargs), label)


def _record_loss(module: torch.nn.Module, state: dict[str, Any], args: tuple, kwargs: dict,
                 label: str) -> tuple[int | None, int, Any]:
    with recording(label) as rec, torch.enable_grad():
        out = torch.func.functional_call(module, state, tuple(args), dict(kwargs))
    flat, spec = pytree.tree_flatten(out)
    index, position = find_loss(rec.losses, flat, label)
    return index, position, spec


@contextlib.contextmanager
def _user_stack_traces() -> Iterator[None]:
    """AOTAutograd traces the joint graph without stack traces; here its trace records the user's
    stack, so a fault on the device names the line of ``forward`` as inference does
    (:func:`_backward_lines` gives the backward nodes their forward op's line)."""
    import torch._functorch._aot_autograd.graph_capture as capture  # noqa: PLC0415 - torch internals

    make_fx = capture.make_fx

    def traced(*args: Any, **kwargs: Any) -> Any:
        return make_fx(*args, **{**kwargs, "record_stack_traces": True})

    capture.make_fx = traced
    try:
        yield
    finally:
        capture.make_fx = make_fx


def _export_joint(flat: torch.nn.Module, args: tuple, loss_index: int, decompositions: Any
                  ) -> tuple[torch.fx.GraphModule, dict[str, Any]]:
    """``aot_export_module(trace_joint=True)`` in one trace: AOTAutograd's joint graph is used as
    traced, its tangent inputs dropped and its outputs flattened to (forward outputs, gradients of
    the inputs that require grad) in place, where ``aot_export_module`` traces the whole graph a
    second time (``make_fx`` of an interpreter over it) to do the same: that retrace was a third of
    the first call's export. Returns the graph and what its signature needs."""
    from torch._functorch._aot_autograd.graph_capture_wrappers import (  # noqa: PLC0415 - torch internals
        create_functional_call,
    )
    from torch._functorch.aot_autograd import _aot_export_function  # noqa: PLC0415

    named = {**dict(flat.named_parameters(remove_duplicate=False)),
             **dict(flat.named_buffers(remove_duplicate=False))}
    state, state_spec = pytree.tree_flatten(named)
    call = create_functional_call(flat, state_spec, len(state), store_orig_mod=True)
    num_outs: list[int] = []

    def forward(*inputs: Any) -> Any:
        out = call(*inputs)
        out = (out,) if isinstance(out, torch.Tensor) else out
        loss = out[loss_index]
        if not loss.requires_grad or loss.numel() != 1:  # aot_export_module's own checks
            raise RuntimeError(f"The output at index {loss_index} was marked as the loss, but it "
                               + ("is not a scalar" if loss.requires_grad else "does not require gradients"))
        num_outs.append(len(out))
        return out

    full = (*state, *args)
    fx_g, meta, _, _ = _aot_export_function(forward, full, decompositions=decompositions,
                                            num_params_buffers=len(state), no_tangents=True,
                                            trace_joint=True)
    graph = fx_g.graph
    inputs = [n for n in graph.nodes if n.op == "placeholder"]
    for tangent in inputs[len(full):]:
        if tangent.users:
            raise AssertionError(f"the joint graph reads its tangent input {tangent.name}")
        graph.erase_node(tangent)
    output = next(n for n in reversed(graph.nodes) if n.op == "output")
    outs = list(output.args[0])
    n_fwd = len(outs) - len(full)
    grads = []
    for a, g in zip(full, outs[n_fwd:], strict=True):
        if isinstance(a, torch.Tensor) and a.requires_grad:
            if g is None:
                raise AssertionError("a parameter that requires grad got no gradient in the joint graph")
            grads.append(g)
    output.args = ((*outs[:n_fwd], *grads),)
    graph._codegen = torch.fx.graph.CodeGen()
    fx_g.recompile()
    n_params = sum(1 for _ in flat.named_parameters(remove_duplicate=False))
    names = list(named)
    return fx_g, {"param_names": names[:n_params], "buffer_names": names[n_params:], "fw_metadata": meta,
                  "params_and_buffers_flat": state, "num_user_fw_outs": num_outs[-1]}


def _backward_lines(graph: torch.fx.Graph) -> None:
    """A backward node takes the stack trace of the forward op it differentiates, the first node
    with its autograd ``seq_nr`` (its own trace names the frames that called the training step)."""
    traces: dict[int, str | None] = {}
    for n in graph.nodes:
        seq = n.meta.get("seq_nr")
        if seq is None:
            continue
        if seq not in traces:
            traces[seq] = n.meta.get("stack_trace")
        elif traces[seq]:
            n.meta["stack_trace"] = traces[seq]


def joint_graph(module: torch.nn.Module, args: tuple, kwargs: dict, scaled: bool = False) -> Joint:
    """Trace ``module``'s forward and backward on these (micro-batch) inputs; with ``scaled`` the
    backward starts from the loss times a loss-scaling input (the last user input)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: PLC0415

    label = type(module).__name__
    trainable = [n for n, p in module.named_parameters(remove_duplicate=False) if p.requires_grad]
    if not trainable:
        raise FrontendError(f"{label} has no parameter that requires grad: there is nothing to train. "
                            "Set requires_grad=True on the parameters to train, or use inferenceModel")
    flat_in, in_spec = pytree.tree_flatten((tuple(args), dict(kwargs)))
    returned, position, out_spec = _find_loss(module, args, kwargs)
    loss_index = returned if returned is not None and not scaled else out_spec.num_leaves
    flat = _Flat(module, in_spec, returned, position, scaled)
    if scaled:
        flat_in = [*flat_in, torch.ones((), dtype=torch.float32)]
    try:
        # Attention as its math form and RNNs without oneDNN: their backwards then decompose too.
        with _quiet_torch(), warnings.catch_warnings(), sdpa_kernel([SDPBackend.MATH]), _user_stack_traces():
            # NOTE: torch warns about oneDNN's TF32 (for Intel GPUs) whenever its flags are set.
            warnings.filterwarnings("ignore", message=".*TF32 acceleration on top of oneDNN")
            with torch.backends.mkldnn.flags(enabled=False):
                gm, captured = _export_joint(flat, tuple(flat_in), loss_index, _decompositions())
        _backward_lines(gm.graph)
    except FrontendError:
        raise
    except Exception as exc:  # noqa: BLE001 - every trace failure is reported the same way
        text = _explain(module, exc).replace("torch.export", "AOTAutograd", 1)
        if "DataDependent" in type(exc).__name__ or "_local_scalar_dense" in str(exc):
            text = (f"{text}\nThe training step reads a tensor's value into Python (.item(), float(t), "
                    "bool(t) or an `if` on a tensor): IPU graphs are static, so keep it a tensor "
                    "(torch.where(cond, a, b), masks, clamp) or use torch.cond")
        raise ExportError(text) from exc
    params = [n.removeprefix("m.") for n in captured["param_names"]]
    buffers = [n.removeprefix("m.") for n in captured["buffer_names"]]
    meta = captured["fw_metadata"]
    n_pb = len(params) + len(buffers)
    mutated = []
    for i in meta.mutated_inp_runtime_indices:
        if not len(params) <= i < n_pb:
            raise FrontendError(f"{label}.forward writes in place into an input or a parameter; only "
                                "buffers (running statistics) may change in a training step")
        mutated.append(buffers[i - len(params)])
    requires = [p.requires_grad for p in captured["params_and_buffers_flat"][:len(params)]]
    grads = [n for n, r in zip(params, requires, strict=True) if r]
    num_user = int(captured["num_user_fw_outs"])
    _drop_pool_indices(gm.graph)
    output = next(n for n in reversed(gm.graph.nodes) if n.op == "output")
    fwd_outs = list(output.args[0][:len(mutated) + num_user])
    return Joint(gm, params, buffers, grads, mutated, num_user, loss_index, out_spec,
                 _ancestors(fwd_outs), scaled)


def _decompositions() -> Any:
    """torch.export's Core ATen decompositions, with the softmaxes decomposed too (with their
    backwards) and the negative log-likelihood as a mask of the labels instead of a gather."""
    from torch._decomp import decomposition_table  # noqa: PLC0415 - torch's own table

    table = torch.export.default_decompositions()
    aten = torch.ops.aten
    table[aten.nll_loss_forward.default] = _nll_forward
    table[aten.nll_loss_backward.default] = _nll_backward
    # NOTE: ops.nn's (log_)softmax keeps each row on one tile, which a vocabulary-wide row (an LM
    # head) overflows; as elementwise ops and reductions it spreads over the chip.
    for op in (aten._log_softmax.default, aten._softmax.default):
        table[op] = decomposition_table[op]
    return table


def _label_mask(logp: torch.Tensor, target: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, ...]:
    # The one-hot in the log-probabilities' layout (PopART clones them for it): .nll_mask.
    return torch.ops.softipu.label_mask(logp, target, ignore_index), target != ignore_index


def _nll_forward(logp: torch.Tensor, target: torch.Tensor, weight: Any, reduction: int,
                 ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``nll_loss_forward`` with the labels as a mask: elementwise ops and reductions spread over the
    chip, where a gather of a vocabulary-wide row gathers from few tiles."""
    if weight is not None:
        from torch._decomp import decomposition_table  # noqa: PLC0415

        return decomposition_table[torch.ops.aten.nll_loss_forward.default](logp, target, weight, reduction,
                                                                             ignore_index)
    hit, valid = _label_mask(logp, target, ignore_index)
    per_row = -torch.where(hit, logp, torch.zeros((), dtype=logp.dtype)).sum(-1)
    total = valid.sum().to(logp.dtype)
    if reduction == 0:
        return per_row, total
    summed = per_row.sum()
    return (summed / total if reduction == 1 else summed), total


def _nll_backward(grad: torch.Tensor, logp: torch.Tensor, target: torch.Tensor, weight: Any, reduction: int,
                  ignore_index: int, total_weight: torch.Tensor) -> torch.Tensor:
    if weight is not None:
        from torch._decomp import decomposition_table  # noqa: PLC0415

        return decomposition_table[torch.ops.aten.nll_loss_backward.default](
            grad, logp, target, weight, reduction, ignore_index, total_weight)
    hit, _ = _label_mask(logp, target, ignore_index)
    g = grad.unsqueeze(-1) if reduction == 0 else grad
    if reduction == 1:
        g = g / total_weight
    return torch.where(hit, -g, torch.zeros((), dtype=logp.dtype)).to(logp.dtype)


def _ancestors(nodes: list[Any]) -> set[torch.fx.Node]:
    seen: set[torch.fx.Node] = set()
    todo = [n for n in nodes if isinstance(n, torch.fx.Node)]
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        todo.extend(n.all_input_nodes)
    return seen


def _drop_pool_indices(graph: torch.fx.Graph) -> None:
    """max_pool2d's backward is lowered from the input and the gradient (``max_pool_grad``), so the
    pooling's indices output, used only by the backward, is dropped."""
    bwd = torch.ops.aten.max_pool2d_with_indices_backward.default
    for node in list(graph.nodes):
        if node.target is bwd and isinstance(node.args[7], torch.fx.Node):
            idx = node.args[7]
            node.args = (*node.args[:7], None)
            if idx.target is operator.getitem and not idx.users:
                graph.erase_node(idx)
