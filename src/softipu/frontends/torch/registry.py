"""The registry of ATen lowerings: ``"aten::op[.overload]"`` -> :class:`Lowering`.

A lowering is ``fn(ctx, node, *args, **kwargs) -> softipu Tensor | tuple of Tensors``: ``args``
and ``kwargs`` are the FX node's, with every input node replaced by the softipu tensor it lowered
to; ``ctx`` (:class:`~softipu.frontends.torch.lower.LoweringContext`) holds the graph, the program
to append to and helpers. Lowerings call :mod:`softipu.ops` (or make zero-copy tensor views).

A name without an overload (``"aten::add"``) covers every overload not registered by its full name.
``check(node)`` (optional) returns why a particular use is not supported (a dilation, a mode...),
so such uses are listed with the unsupported ops before anything is compiled.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from softipu.frontends.errors import RegistryError
from softipu.frontends.registry import Registry

__all__ = ["Lowering", "LOWERINGS", "register_lowering", "find_lowering", "op_name"]


@dataclass(frozen=True, slots=True)
class Lowering:
    """A lowering function, its optional applicability check and a note for the coverage table."""

    fn: Callable[..., Any]
    check: Callable[[Any], str | None] | None = None
    note: str = ""


LOWERINGS: Registry[Lowering] = Registry(
    "ATen lowering",
    hint='add one with softipu.torch.register_lowering("aten::name", fn); see docs/torch_coverage.md')


def register_lowering(name: str, fn: Callable[..., Any] | None = None, *,
                      check: Callable[[Any], str | None] | None = None, note: str = "",
                      override: bool = False) -> Any:
    """Register ``fn(ctx, node, *args, **kwargs)`` as the lowering of ATen op ``name``.

    ``name`` is ``"aten::op"`` (every overload) or ``"aten::op.overload"``. Registering a name
    twice is an error unless ``override=True`` (e.g. to replace a built-in lowering). Without
    ``fn``, returns a decorator.

    >>> import softipu.torch as st
    >>> from softipu.ops import elementwise as ew
    >>> @st.register_lowering("aten::my_square_example")
    ... def lower_square(ctx, node, x):
    ...     return ew.square(ctx.graph, x, ctx.prog, name=ctx.name)
    >>> "aten::my_square_example" in st.LOWERINGS
    True
    >>> _ = st.LOWERINGS.unregister("aten::my_square_example")
    """
    if not isinstance(name, str) or "::" not in name:
        hint = f"; did you mean 'aten::{name}'?" if isinstance(name, str) and name else ""
        raise RegistryError(f"an ATen lowering is registered under 'namespace::op' (like "
                            f"'aten::add.Tensor'), got {name!r}{hint}")
    if name.endswith(".default"):
        raise RegistryError(f"the default overload of an op is named without '.default': register "
                            f"{name.removesuffix('.default')!r}, not {name!r}")
    if fn is None:
        def decorator(f: Callable[..., Any]) -> Callable[..., Any]:
            register_lowering(name, f, check=check, note=note, override=override)
            return f
        return decorator
    if not callable(fn):
        raise RegistryError(f"the lowering of {name!r} must be callable, got {type(fn).__name__}")
    LOWERINGS.register(name, Lowering(fn, check, note), override=override)
    return fn


def op_name(target: Any) -> str:
    """The registry name of an FX node target: ``"aten::add.Tensor"``, ``"aten::relu"``..."""
    name = getattr(target, "name", None)
    if callable(name) and hasattr(target, "_schema"):
        return target.name()  # an OpOverload: "aten::add.Tensor"; the default overload has no suffix
    if callable(name):  # a higher-order operator (torch.cond...)
        return f"higher_order::{target.name()}"
    module = getattr(target, "__module__", None) or "python"
    return f"{module}::{getattr(target, '__name__', repr(target))}"


def find_lowering(target: Any) -> tuple[str, Lowering | None]:
    """(the op's name, its lowering or None): the exact overload first, then the whole op."""
    name = op_name(target)
    found = LOWERINGS.get(name)
    if found is None and "." in name.split("::", 1)[1]:
        found = LOWERINGS.get(name.rsplit(".", 1)[0])
    return name, found
