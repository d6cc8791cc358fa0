"""PopTorch's ops and model-building helpers (``poptorch.for_loop``, ``cond``, ``CPU``...).

Each behaves in eager PyTorch as PopTorch documents it, and inside a model compiled by
``softipu.poptorch`` becomes graph ops the IPU runs:

* :func:`for_loop` runs its body ``count`` times (unrolled into the graph: the same values and
  cycles as PopTorch's on-device loop; each iteration's ops are their own compute sets).
* :func:`cond` is ``torch.cond`` (both branches compiled, one run: a ``program.If``).
* :func:`dynamic_slice` / :func:`dynamic_update` index with a start held in a tensor (a gather /
  an index copy, the start read on the device).
* :class:`CPU` runs a layer on the host in the middle of the model: its inputs stream to the host,
  the layer runs in Python, its outputs stream back; both transfers are priced as host I/O.
* :func:`serializedMatMul` splits a matmul into ``factor`` smaller ones along the chosen dimension.
* :func:`ctc_beam_search_decoder` decodes on the host (a host call, priced as host transfers).
* :func:`custom_op` runs the Python implementation registered with
  :func:`register_custom_op` (softipu's stand-in for a compiled PopART custom op).
* :class:`NameScope` prefixes the names of the ops made inside it (visible in the report).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.fx.traceback as fx_traceback
from torch._subclasses.fake_tensor import unset_fake_temporarily
from torch.utils import _pytree as pytree
from torch.utils.hooks import RemovableHandle

from softipu.frontends.errors import FrontendError
from softipu.frontends.poptorch_enums import MatMulSerializationMode, MultiConvPlanType, OverlapMode
from softipu.frontends.torch.custom_ops import NAME_SCOPES, HostCall, host_call, nop_op, register_host_call
from softipu.frontends.torch.options import warn_unused

__all__ = ["CPU", "ICustomArgParser", "MultiConv", "NameScope", "POST_COMPILE_HOOKS", "cond",
           "ctc_beam_search_decoder", "custom_op", "dynamic_slice", "dynamic_update", "for_loop",
           "isRunningOnIpu", "nop", "registerCustomArgParser", "registerPostCompileHook",
           "register_custom_op", "serializedMatMul", "set_overlap_for_input", "set_overlap_for_output"]


def isRunningOnIpu() -> bool:  # noqa: N802 - PopTorch's name
    """True while the model is being captured for the (simulated) IPU, False when it runs in eager
    PyTorch on the CPU (PopTorch's ``isRunningOnIpu``)."""
    return bool(torch.compiler.is_exporting())


def nop(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` unchanged, through an op the graph keeps (PopTorch's ``nop``)."""
    return nop_op(tensor)


def for_loop(count: int, body: Callable[..., Any], inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Run ``body`` ``count`` times, each iteration's outputs the next one's inputs; returns the
    last outputs as a list (PopTorch's ``for_loop``: ``body`` returns as many tensors, of the same
    shapes, as it takes)."""
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise FrontendError(f"for_loop: count must be an int >= 0, got {count!r}")
    values = list(inputs)
    for _ in range(count):
        out = body(*values)
        out = [out] if isinstance(out, torch.Tensor) else list(out)
        if len(out) != len(values) or any(a.shape != b.shape for a, b in zip(out, values, strict=True)):
            raise FrontendError(f"for_loop: the body takes {len(values)} tensors of shapes "
                                f"{[list(v.shape) for v in values]} and must return as many of the same "
                                f"shapes, but returned {[list(o.shape) for o in out]}")
        values = out
    return values


def cond(condition: torch.Tensor, then_body: Callable[..., Any], then_inputs: Sequence[torch.Tensor],
         else_body: Callable[..., Any], else_inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``then_body(*then_inputs)`` if ``condition`` (a one-element bool tensor) else
    ``else_body(*else_inputs)``; both return the same number of tensors of the same shapes.
    On the IPU both branches are compiled and one runs (``torch.cond``: a ``program.If``)."""
    n = len(then_inputs)

    def then_fn(*operands: torch.Tensor) -> list[torch.Tensor]:
        out = then_body(*operands[:n])
        return [out] if isinstance(out, torch.Tensor) else list(out)

    def else_fn(*operands: torch.Tensor) -> list[torch.Tensor]:
        out = else_body(*operands[n:])
        return [out] if isinstance(out, torch.Tensor) else list(out)

    pred = condition.reshape(()) if isinstance(condition, torch.Tensor) else condition
    return list(torch.cond(pred, then_fn, else_fn, (*then_inputs, *else_inputs)))


def _positions(start: Any, size: int, step: int, device: Any) -> torch.Tensor:
    offsets = torch.arange(0, size * step, step, device=device)
    if isinstance(start, torch.Tensor):
        return start.reshape(()).to(torch.long) + offsets
    return int(start) + offsets


def dynamic_slice(tensor: torch.Tensor, dim: int, start: torch.Tensor | int, size: int,
                  step: int = 1) -> torch.Tensor:
    """``size`` elements of ``tensor`` along ``dim`` from ``start`` (a tensor: read on the
    device), every ``step``-th (PopTorch's ``dynamic_slice``)."""
    return torch.index_select(tensor, dim, _positions(start, int(size), int(step), tensor.device))


def dynamic_update(input: torch.Tensor, src: torch.Tensor, dim: int, start: torch.Tensor | int,  # noqa: A002
                   size: int) -> torch.Tensor:
    """``input`` with ``size`` elements along ``dim`` from ``start`` (a tensor) replaced by
    ``src`` (PopTorch's ``dynamic_update``)."""
    if src.shape[dim] != size:
        raise FrontendError(f"dynamic_update: src has {src.shape[dim]} elements along dim {dim}, size "
                            f"is {size}")
    return input.index_copy(dim, _positions(start, int(size), 1, input.device), src)


# -- host calls: poptorch.CPU ---------------------------------------------------------------------
class CPU:
    """Run ``layer_to_call`` on the host (the CPU) in the middle of a model (PopTorch's ``CPU``).

    ``ID`` names the callback (unique per model). In eager PyTorch the layer is simply called; on
    the IPU its tensor inputs stream to the host, the layer runs in Python and its outputs stream
    back, each transfer priced as host I/O in the report.
    """

    def __init__(self, layer_to_call: Callable[..., Any], ID: str) -> None:  # noqa: N803 - PopTorch's name
        if not callable(layer_to_call):
            raise FrontendError(f"poptorch.CPU needs a callable layer, got {type(layer_to_call).__name__}")
        self.layer = layer_to_call
        self.ID = str(ID)
        self.key = f"cpu:{self.ID}"

        def run(*tensors: torch.Tensor) -> Any:
            with torch.no_grad():
                return self.layer(*tensors)

        def shapes(*fakes: torch.Tensor) -> Any:
            try:  # torch code runs on the fake tensors of the capture
                return run(*fakes)
            except Exception:  # noqa: BLE001 - numpy or other host code: run it once on zeros
                with unset_fake_temporarily():
                    out = run(*(torch.zeros(t.shape, dtype=t.dtype) for t in fakes))
                outs = [out] if isinstance(out, torch.Tensor) else list(out)
                return [torch.empty(o.shape, dtype=o.dtype) for o in outs]

        register_host_call(self.key, HostCall(run, shapes))

    def __call__(self, *args: torch.Tensor) -> Any:
        if not isRunningOnIpu():
            return self.layer(*args)
        if not all(isinstance(a, torch.Tensor) for a in args):
            raise FrontendError(f"poptorch.CPU({self.ID!r}): its inputs must be tensors")
        outs = host_call(self.key, args)
        return outs[0] if len(outs) == 1 else tuple(outs)


# -- MultiConv --------------------------------------------------------------------------------------
class MultiConv:
    """PopTorch's ``with poptorch.MultiConv():`` grouping of convolutions: accepted. The
    convolutions inside are planned one by one (their values and costs as without the group);
    each setter chains and is stored, with a one-time warning."""

    def __init__(self) -> None:
        self.stored: dict[str, Any] = {}

    def _store(self, name: str, value: Any) -> MultiConv:
        self.stored[name] = value
        warn_unused([f"MultiConv.{name}"], "PopTorch option")
        return self

    def availableMemoryProportions(self, value: Any) -> MultiConv:  # noqa: N802 - PopTorch's names
        return self._store("availableMemoryProportions", value)

    def partialsTypes(self, value: Any) -> MultiConv:  # noqa: N802
        return self._store("partialsTypes", value)

    def planType(self, value: MultiConvPlanType) -> MultiConv:  # noqa: N802
        return self._store("planType", MultiConvPlanType(value))

    def perConvReservedTiles(self, value: int) -> MultiConv:  # noqa: N802
        return self._store("perConvReservedTiles", int(value))

    def cycleBackOff(self, value: float) -> MultiConv:  # noqa: N802
        return self._store("cycleBackOff", float(value))

    def enableConvDithering(self, value: Any) -> MultiConv:  # noqa: N802
        return self._store("enableConvDithering", value)

    def __enter__(self) -> MultiConv:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


# -- serialized matmul --------------------------------------------------------------------------------
def serializedMatMul(lhs: torch.Tensor, rhs: torch.Tensor, mode: MatMulSerializationMode,  # noqa: N802
                     factor: int = 0, keep_precision: bool = False) -> torch.Tensor:
    """``lhs @ rhs`` as ``factor`` smaller matmuls (PopTorch's ``serializedMatMul``): split along
    the lhs rows (``InputChannels``), the reduced dimension (``ReducingDim``, partial products
    added up, in float32 when ``keep_precision`` and the inputs are float16) or the rhs columns
    (``OutputChannels``). Each piece needs less temporary memory; the result is the matmul's."""
    mode = MatMulSerializationMode(mode)
    if mode is MatMulSerializationMode.Disabled or factor <= 1:
        return lhs @ rhs
    dims = {MatMulSerializationMode.InputChannels: lhs.shape[-2], MatMulSerializationMode.ReducingDim:
            lhs.shape[-1], MatMulSerializationMode.OutputChannels: rhs.shape[-1]}
    if dims[mode] % factor:
        raise FrontendError(f"serializedMatMul: the {mode.name} dimension ({dims[mode]}) is not a multiple "
                            f"of the factor {factor}")
    if mode is MatMulSerializationMode.InputChannels:
        return torch.cat([part @ rhs for part in lhs.chunk(factor, dim=-2)], dim=-2)
    if mode is MatMulSerializationMode.OutputChannels:
        return torch.cat([lhs @ part for part in rhs.chunk(factor, dim=-1)], dim=-1)
    wide = keep_precision and lhs.dtype == torch.half
    pieces = zip(lhs.chunk(factor, dim=-1), rhs.chunk(factor, dim=-2), strict=True)
    total = None
    for a, b in pieces:
        part = (a.float() @ b.float()) if wide else a @ b
        total = part if total is None else total + part
    return total.to(lhs.dtype)


# -- CTC beam search (on the host) ----------------------------------------------------------------------
def ctc_beam_search_decoder(probs: torch.Tensor, lengths: torch.Tensor, blank: int = 0, beam_width: int = 100,
                            top_paths: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PopTorch's CTC beam search: ``probs`` are log probabilities ``(T, batch, classes)``,
    ``lengths`` the valid steps per batch item. Returns ``(path_probs (batch, top_paths),
    paths (batch, top_paths, T), path_lengths (batch, top_paths))``: the best label sequences
    (blanks and repeats collapsed) with their log probabilities. On the IPU it runs on the host
    (a host call, priced as host transfers)."""
    key = f"ctc:{int(blank)}:{int(beam_width)}:{int(top_paths)}"
    if not isRunningOnIpu():
        return _ctc_call(key).fn(probs, lengths)
    return tuple(host_call(key, [probs, lengths.to(torch.int32)]))  # type: ignore[return-value]


def _ctc_call(key: str) -> HostCall:
    blank, beam, top = (int(v) for v in key.split(":")[1:])

    def shapes(probs: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, ...]:
        steps, batch = probs.shape[0], probs.shape[1]
        return (probs.new_empty((batch, top)), torch.empty((batch, top, steps), dtype=torch.int32),
                torch.empty((batch, top), dtype=torch.int32))

    def decode(probs: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, ...]:
        lp = probs.detach().double().cpu().numpy()
        steps, batch = lp.shape[0], lp.shape[1]
        out_p = np.full((batch, top), -np.inf)
        out_paths = np.zeros((batch, top, steps), np.int32)
        out_len = np.zeros((batch, top), np.int32)
        for b in range(batch):
            best = _prefix_beam_search(lp[: int(lengths[b]), b], blank, beam)[:top]
            for k, (prefix, score) in enumerate(best):
                out_p[b, k], out_len[b, k] = score, len(prefix)
                out_paths[b, k, : len(prefix)] = prefix
        return (torch.from_numpy(out_p).to(probs.dtype), torch.from_numpy(out_paths),
                torch.from_numpy(out_len))

    return HostCall(decode, shapes)


def _prefix_beam_search(lp: np.ndarray, blank: int, beam: int) -> list[tuple[tuple[int, ...], float]]:
    """CTC prefix beam search over log probabilities ``(T, classes)``: the prefixes with the
    largest total probability (over all alignments), best first."""
    # beams: prefix -> (log p ending in blank, log p ending in a label)
    beams: dict[tuple[int, ...], tuple[float, float]] = {(): (0.0, -math.inf)}
    for t in range(lp.shape[0]):
        nxt: dict[tuple[int, ...], list[float]] = {}

        def add(prefix: tuple[int, ...], which: int, value: float, nxt: dict = nxt) -> None:
            slot = nxt.setdefault(prefix, [-math.inf, -math.inf])
            slot[which] = np.logaddexp(slot[which], value)

        for prefix, (pb, pnb) in beams.items():
            total = np.logaddexp(pb, pnb)
            for c in range(lp.shape[1]):
                p = lp[t, c]
                if c == blank:
                    add(prefix, 0, total + p)
                elif prefix and prefix[-1] == c:
                    add(prefix, 1, pnb + p)  # a repeat without a blank between collapses
                    add(prefix + (c,), 1, pb + p)
                else:
                    add(prefix + (c,), 1, total + p)
        ranked = sorted(nxt.items(), key=lambda kv: -np.logaddexp(*kv[1]))[:beam]
        beams = {k: (v[0], v[1]) for k, v in ranked}
    final = [(k, float(np.logaddexp(*v))) for k, v in beams.items()]
    return sorted(final, key=lambda kv: -kv[1])


def _resolve_ctc(key: str) -> HostCall:
    return _ctc_call(key)


from softipu.frontends.torch import custom_ops as _custom_ops  # noqa: E402 - registers the resolver

_custom_ops._RESOLVERS["ctc"] = _resolve_ctc


# -- custom ops -----------------------------------------------------------------------------------------
_CUSTOM_OPS: dict[tuple[str, str], Callable[..., Any]] = {}


def register_custom_op(name: str, domain: str, implementation: Callable[..., Any]) -> None:
    """softipu's extension: the Python implementation (torch ops) of the PopART custom op
    ``domain::name``, which :func:`custom_op` runs; its ops are compiled onto the IPU like the
    rest of the model. ``implementation(*inputs, **attributes)`` returns a tensor or a list."""
    _CUSTOM_OPS[(str(domain), str(name))] = implementation


def custom_op(inputs: Sequence[torch.Tensor], name: str, domain: str, domain_version: int,
              example_outputs: Sequence[torch.Tensor], attributes: dict[str, Any] | None = None
              ) -> list[torch.Tensor]:
    """PopTorch's ``custom_op``: the outputs of the custom op ``domain::name`` on ``inputs``, of
    the shapes and dtypes of ``example_outputs``. softipu runs the implementation registered with
    :func:`register_custom_op` (a compiled PopART op cannot run on a simulator)."""
    impl = _CUSTOM_OPS.get((str(domain), str(name)))
    if impl is None:
        raise FrontendError(f"custom_op {domain}::{name} has no implementation in softipu: register its "
                            "Python implementation first with poptorch.register_custom_op(name, domain, fn) "
                            "(fn(*inputs, **attributes) -> tensors, written with torch ops)")
    out = impl(*inputs, **dict(attributes or {}))
    outs = [out] if isinstance(out, torch.Tensor) else list(out)
    expected = list(example_outputs)
    if len(outs) != len(expected) or any(o.shape != e.shape or o.dtype != e.dtype
                                         for o, e in zip(outs, expected, strict=True)):
        raise FrontendError(
            f"custom_op {domain}::{name}: the implementation returned "
            f"{[(list(o.shape), o.dtype) for o in outs]} but example_outputs are "
            f"{[(list(e.shape), e.dtype) for e in expected]}")
    return outs


# -- naming -----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def NameScope(name: str) -> Iterator[None]:  # noqa: N802 - PopTorch's name
    """Ops made inside ``with poptorch.NameScope("encoder"):`` are named ``encoder/<op>`` in the
    report (nested scopes join with "/")."""
    outer = _current_scope()
    scope = f"{outer}/{name}" if outer else str(name)
    NAME_SCOPES[0] += 1  # exports keep node annotations from now on (runtime._export)
    with fx_traceback.annotate({"poptorch_scope": scope}):
        yield


def _current_scope() -> str:
    meta = fx_traceback.current_meta or {}
    return (meta.get("custom") or {}).get("poptorch_scope", "")


# -- custom argument parsers -------------------------------------------------------------------------------
class ICustomArgParser:
    """PopTorch's interface for inputs of a custom type: ``yieldTensors(struct)`` yields its
    tensors in order, ``reconstruct(original, tensor_iterator)`` builds one like ``original``
    from tensors taken from the iterator."""

    def yieldTensors(self, struct: Any) -> Iterator[torch.Tensor]:  # noqa: N802 - PopTorch's names
        raise NotImplementedError

    def reconstruct(self, original_structure: Any, tensor_iterator: Iterator[torch.Tensor]) -> Any:
        raise NotImplementedError


def registerCustomArgParser(arg_type: type, parser: ICustomArgParser) -> None:  # noqa: N802
    """Let model inputs be of ``arg_type``: their tensors (from ``parser.yieldTensors``) are
    streamed to the IPU and the model receives ``parser.reconstruct``'s object."""

    def flatten(obj: Any) -> tuple[list[torch.Tensor], Any]:
        return list(parser.yieldTensors(obj)), _Original(obj)

    def flatten_with_keys(obj: Any) -> tuple[list[tuple[Any, torch.Tensor]], Any]:
        values, context = flatten(obj)
        return [(pytree.SequenceKey(i), v) for i, v in enumerate(values)], context

    def unflatten(values: Any, context: Any) -> Any:
        return parser.reconstruct(context.obj, iter(list(values)))

    try:
        pytree.register_pytree_node(arg_type, flatten, unflatten, flatten_with_keys_fn=flatten_with_keys,
                                    serialized_type_name=f"{arg_type.__module__}.{arg_type.__qualname__}")
    except ValueError:  # registered already (a second parser for the type): keep the first
        warn_unused([f"registerCustomArgParser({arg_type.__name__}) again"], "PopTorch call")


class _Original:
    """A custom input's original object as its pytree context: equal to any other (a call with
    another object of the type matches the compiled model by its tensors)."""

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Original)

    def __hash__(self) -> int:
        return 0

    def __deepcopy__(self, memo: dict) -> _Original:  # the capture copies specs: share the object
        return self

    def __repr__(self) -> str:
        return f"<{type(self.obj).__name__}>"


# -- hooks and annotations ---------------------------------------------------------------------
class _Hooks(dict):
    """The registered hooks by handle id (a dict a ``RemovableHandle`` can refer to weakly)."""


POST_COMPILE_HOOKS: dict[int, Callable[[], Any]] = _Hooks()


def registerPostCompileHook(hook: Callable[[], Any]) -> RemovableHandle:  # noqa: N802
    """Call ``hook()`` after every compile (and executable load) of a PopTorch model; returns a
    handle whose ``remove()`` unregisters it."""
    handle = RemovableHandle(POST_COMPILE_HOOKS)
    POST_COMPILE_HOOKS[handle.id] = hook
    return handle


def set_overlap_for_input(input_tensors: Any,
                          mode: OverlapMode = OverlapMode.OverlapAccumulationLoop) -> Any:
    """Accepted: softipu prices host transfers without overlapping compute (one-time warning)."""
    OverlapMode(mode)
    warn_unused(["set_overlap_for_input"], "PopTorch annotation")
    return input_tensors


def set_overlap_for_output(output_tensors: Any,
                           mode: OverlapMode = OverlapMode.OverlapAccumulationLoop) -> Any:
    """Accepted: softipu prices host transfers without overlapping compute (one-time warning)."""
    OverlapMode(mode)
    warn_unused(["set_overlap_for_output"], "PopTorch annotation")
    return output_tensors
