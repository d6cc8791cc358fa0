"""Custom torch ops that carry IPU intent through ``torch.export`` (``softipu::*``).

Each is an identity (or close to it) in eager PyTorch and has a lowering that does the IPU
thing, e.g. ``softipu::ipu_print_tensor`` becomes a ``program.PrintTensor``.

Host calls (``softipu::host_call``) run a Python function on the host in the middle of the device
program: the lowering (``lowerings/poptorch_ops.py``) streams the inputs out and the outputs back
in, on streams named ``host_call/<key>/<n>/in|out/<k>/<shape>``; :func:`connect_host_calls` connects
them to the function registered under ``key`` (:func:`register_host_call`), or to one a
resolver rebuilds from the key itself (formatted printing), so a cached or exported executable
finds its callbacks again in a new process.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from softipu.frontends.errors import FrontendError

__all__ = ["HOST_CALL_PREFIX", "NAME_SCOPES", "HostCall", "connect_host_calls", "host_call", "ipu_print_op",
           "nop_op", "print_format_key", "register_host_call"]

HOST_CALL_PREFIX = "host_call/"
# How many poptorch.NameScope blocks were entered in this process: exports keep node annotations
# (fx preserve_node_meta) only once there were some (see runtime._export).
NAME_SCOPES = [0]


@torch.library.custom_op("softipu::ipu_print_tensor", mutates_args=())
def ipu_print_op(x: torch.Tensor, title: str, fmt: str = "") -> torch.Tensor:
    """``x`` unchanged; on the IPU, printed on the host each time it is computed (``fmt``: the
    host-call key of PopTorch's format options, :func:`print_format_key`; "" prints as
    ``program.PrintTensor`` does)."""
    return x.clone()


@ipu_print_op.register_fake
def _ipu_print_fake(x: torch.Tensor, title: str, fmt: str = "") -> torch.Tensor:
    return torch.empty_like(x)


@torch.library.custom_op("softipu::nop", mutates_args=())
def nop_op(x: torch.Tensor) -> torch.Tensor:
    """PopTorch's ``nop``: ``x`` unchanged, as an op the graph keeps."""
    return x.clone()


@nop_op.register_fake
def _nop_fake(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


# -- host calls ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class HostCall:
    """A host function called inside the device program: ``fn(*tensors) -> tensors`` (a tensor, a
    sequence of them, or None), and ``shapes(*tensors)`` giving its outputs' example tensors (run
    on fake tensors while exporting)."""

    fn: Callable[..., Any]
    shapes: Callable[..., Any]


_HOST_CALLS: dict[str, HostCall] = {}
_RESOLVERS: dict[str, Callable[[str], HostCall]] = {}


def register_host_call(key: str, call: HostCall) -> None:
    """Make ``key`` name ``call`` for :func:`host_call` (a later registration replaces it)."""
    _HOST_CALLS[key] = call


def _find(key: str) -> HostCall:
    found = _HOST_CALLS.get(key)
    if found is None:
        prefix = key.split(":", 1)[0]
        if prefix in _RESOLVERS:
            found = _RESOLVERS[prefix](key)
    if found is None:
        raise FrontendError(f"no host function is registered as {key!r}: a poptorch.CPU(layer, ID) wrapper "
                            "registers its ID when it is made; make it (with the same ID) before calling or "
                            "loading the model")
    return found


def _as_list(result: Any) -> list[torch.Tensor]:
    if result is None:
        return []
    if isinstance(result, torch.Tensor):
        return [result]
    return list(result)


@torch.library.custom_op("softipu::host_call", mutates_args=())
def _host_call_op(inputs: list[torch.Tensor], key: str) -> list[torch.Tensor]:
    return [t.clone() for t in _as_list(_find(key).fn(*inputs))]


@_host_call_op.register_fake
def _host_call_fake(inputs: list[torch.Tensor], key: str) -> list[torch.Tensor]:
    return [torch.empty_like(t) for t in _as_list(_find(key).shapes(*inputs))]


def host_call(key: str, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Call the host function ``key`` on ``inputs`` inside the model (eagerly: just call it)."""
    return list(_host_call_op(list(inputs), key))


def connect_host_calls(engine: Any, graph: Any, replicas: int) -> None:
    """Connect the streams of every host call in ``graph`` to its function, per replica: the
    inputs' device-to-host callbacks keep the values, the first output's host-to-device callback
    runs the function on them."""
    calls: dict[str, dict[str, Any]] = {}
    for name in graph.streams:
        if name.startswith(HOST_CALL_PREFIX):
            base, direction, k, shape = name.rsplit("/", 3)
            dims = tuple(int(d) for d in shape.split("x") if d)
            calls.setdefault(base, {"in": {}, "out": {}})[direction][int(k)] = (name, dims)
    for base, ends in calls.items():
        key = base[len(HOST_CALL_PREFIX):].rsplit("/", 1)[0]
        call = _find(key)
        for r in range(replicas):
            _connect_one(engine, call, ends, r)


def _connect_one(engine: Any, call: HostCall, ends: dict[str, dict[int, Any]], replica: int) -> None:
    received: dict[int, np.ndarray] = {}
    results: list[np.ndarray] = []
    ins, outs = ends["in"], ends["out"]

    def receive(k: int) -> Callable[[np.ndarray], None]:
        def push(data: np.ndarray) -> None:
            received[k] = data.reshape(ins[k][1])
        return push

    def run() -> None:
        tensors = [torch.from_numpy(np.asarray(received.get(k, np.zeros(0)))) for k in range(len(ins))]
        results[:] = [t.detach().cpu().numpy().reshape(-1) for t in _as_list(call.fn(*tensors))]

    def send(k: int) -> Callable[[np.ndarray], np.ndarray]:
        def pull(buffer: np.ndarray) -> np.ndarray:
            if k == 0:
                run()
            return results[k].astype(buffer.dtype, copy=False)
        return pull

    for k, (name, _) in ins.items():
        engine.connect_stream(name, receive(k), replica=replica)
    for k, (name, _) in outs.items():
        engine.connect_stream(name, send(k), replica=replica)
    if not outs:  # a call without outputs (printing) runs when its last input arrives
        last = max(ins, default=None)
        if last is not None:
            def push_last(data: np.ndarray, k: int = last) -> None:
                receive(k)(data)
                run()
            engine.connect_stream(ins[last][0], push_last, replica=replica)


# -- formatted printing (poptorch.ipu_print_tensor's format options) ------------------------------
def print_format_key(title: str, options: dict[str, Any]) -> str:
    """The host-call key of a formatted print: the title and options themselves, so any process
    can rebuild the call from a cached executable's stream names."""
    text = json.dumps({"title": title, **options}, sort_keys=True)
    return "print:" + base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _resolve_print(key: str) -> HostCall:
    text = key.split(":", 1)[1]
    spec = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode())
    title = spec.pop("title")

    def show(x: torch.Tensor) -> None:
        print(f"{title}: {format_tensor(x.numpy(), **spec)}", flush=True)

    return HostCall(show, lambda x: None)


_RESOLVERS["print"] = _resolve_print


def format_tensor(values: np.ndarray, summarise_threshold: int = 1000, edge_items: int = 3,
                  max_line_width: int = 80, digits: int = 4, float_format: str = "auto",
                  separator: str = ", ", open_bracket: str = "(", close_bracket: str = ")") -> str:
    """``values`` as PopTorch's ``ipu_print_tensor`` formats them: summarised past
    ``summarise_threshold`` elements to ``edge_items`` at each edge, ``digits`` digits in
    ``float_format`` ("auto", "fixed", "scientific" or "none"), with the given separator and
    brackets."""
    formatter: dict[str, Any] = {}
    if values.dtype.kind == "f":
        styles = {"fixed": f"{{:.{digits}f}}", "scientific": f"{{:.{digits}e}}", "none": "{}"}
        if float_format in styles:
            formatter["float_kind"] = styles[float_format].format
    text = np.array2string(values, max_line_width=max_line_width, precision=digits,
                           separator=separator, threshold=summarise_threshold, edgeitems=edge_items,
                           formatter=formatter or None)
    return text.replace("[", open_bracket).replace("]", close_bracket)
