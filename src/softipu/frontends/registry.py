"""One explicit registry type for everything looked up by name (style rule 4).

ATen lowerings, ONNX lowerings and the like all use :class:`Registry`: registering a name twice
is an error unless the caller says ``override=True``, and a miss names the registry, the
closest names it holds and how to add one.

>>> r = Registry("colour", hint="add one with ...")
>>> r.register("red", 1)
>>> r["red"]
1
>>> r.lookup("rde")
Traceback (most recent call last):
...
softipu.frontends.errors.RegistryError: no colour named 'rde'; did you mean 'red'? (add one with ...)
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from softipu.frontends.errors import RegistryError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Names to values; refuses duplicates, lists near names on a miss, iterates in name order."""

    def __init__(self, kind: str, hint: str = "") -> None:
        self.kind = kind
        self.hint = hint
        self._items: dict[str, T] = {}

    def register(self, name: str, value: T | None = None, *, override: bool = False) -> Any:
        """Register ``value`` under ``name``; with no value, return a decorator that does.

        A name already registered is refused unless ``override=True`` (then the new value
        replaces the old one, e.g. a user's lowering replacing a built-in one).
        """
        if value is None:
            def decorator(fn: T) -> T:
                self.register(name, fn, override=override)
                return fn
            return decorator
        if not isinstance(name, str) or not name:
            raise RegistryError(f"a {self.kind} name must be a non-empty string, got {name!r}")
        if name in self._items and not override:
            raise RegistryError(f"{self.kind} {name!r} is already registered "
                                f"({_describe(self._items[name])}); pass override=True to replace it")
        self._items[name] = value
        return None

    def unregister(self, name: str) -> T:
        """Remove ``name`` and return its value (a miss is an error, as in :meth:`lookup`)."""
        value = self.lookup(name)
        del self._items[name]
        return value

    def get(self, name: str, default: T | None = None) -> T | None:
        return self._items.get(name, default)

    def lookup(self, name: str) -> T:
        """The value of ``name``; a miss raises :class:`RegistryError` naming the near names."""
        try:
            return self._items[name]
        except KeyError:
            raise RegistryError(self.miss_message(name)) from None

    def miss_message(self, name: str) -> str:
        near = self.near(name)
        text = f"no {self.kind} named {name!r}"
        if near:
            text += f"; did you mean {' or '.join(map(repr, near))}?"
        elif not self._items:
            text += " (the registry is empty)"
        return text + (f" ({self.hint})" if self.hint else "")

    def near(self, name: str, n: int = 3) -> list[str]:
        """Registered names that look like ``name`` (difflib), best first."""
        return difflib.get_close_matches(str(name), list(self._items), n=n, cutoff=0.6)

    __getitem__ = lookup

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._items.items())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._items)} entries)"


def _describe(value: Any) -> str:
    fn: Callable[..., Any] | Any = getattr(value, "fn", value)
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    return f"{module}.{qualname}" if module and qualname else type(value).__name__
