"""The registry of ONNX lowerings: ``"OpType"`` (default domain) or ``"domain::OpType"`` ->
:class:`OnnxLowering`, in the same :class:`~softipu.frontends.registry.Registry` type as the
ATen lowerings (style rule 4).

A lowering is ``fn(ctx, node) -> value | tuple of values`` where a value is a softipu Tensor (on
the device) or a numpy array (known when compiling: shapes, folded constants). ``ctx``
(:class:`~softipu.frontends.onnx.lower.OnnxContext`) gives the node's inputs and attributes.
``static`` lists the input positions whose VALUES the lowering needs when compiling (a Reshape's
shape, a Slice's starts...); ``check(ctx)`` returns why a particular use is not supported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from softipu.frontends.errors import RegistryError
from softipu.frontends.registry import Registry

__all__ = ["OnnxLowering", "ONNX_LOWERINGS", "register_onnx_lowering", "onnx_op_name"]


@dataclass(frozen=True, slots=True)
class OnnxLowering:
    """A lowering function, the inputs it needs as compile-time values, a check and a note."""

    fn: Callable[..., Any]
    static: tuple[int, ...] = ()
    check: Callable[[Any], str | None] | None = None
    note: str = ""


ONNX_LOWERINGS: Registry[OnnxLowering] = Registry(
    "ONNX lowering", hint='add one with softipu.onnx.register_lowering("OpType", fn); '
                          "see docs/onnx_coverage.md")


def onnx_op_name(domain: str, op_type: str) -> str:
    """The registry name of a node: ``"Add"`` (default domain) or ``"com.graphcore::NllLoss"``."""
    return op_type if domain in ("", "ai.onnx") else f"{domain}::{op_type}"


def register_onnx_lowering(name: str | tuple[str, ...], fn: Callable[..., Any] | None = None, *,
                           static: tuple[int, ...] = (), check: Callable[[Any], str | None] | None = None,
                           note: str = "", override: bool = False) -> Any:
    """Register ``fn(ctx, node)`` as the lowering of ONNX op ``name`` (or of each of several names).

    >>> from softipu.frontends.onnx.registry import ONNX_LOWERINGS, register_onnx_lowering
    >>> @register_onnx_lowering("my.domain::Twice")
    ... def lower_twice(ctx, node):
    ...     return ctx.ops.mul(ctx.graph, ctx.input(0), 2.0, ctx.prog, name=ctx.name)
    >>> "my.domain::Twice" in ONNX_LOWERINGS
    True
    >>> _ = ONNX_LOWERINGS.unregister("my.domain::Twice")
    """
    if fn is None:
        def decorator(f: Callable[..., Any]) -> Callable[..., Any]:
            register_onnx_lowering(name, f, static=static, check=check, note=note, override=override)
            return f
        return decorator
    if not callable(fn):
        raise RegistryError(f"the lowering of {name!r} must be callable, got {type(fn).__name__}")
    for n in (name,) if isinstance(name, str) else name:
        ONNX_LOWERINGS.register(n, OnnxLowering(fn, tuple(static), check, note), override=override)
    return fn
