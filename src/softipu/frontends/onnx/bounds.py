"""How big an ONNX node's output will be, worked out from its inputs' values BEFORE it is lowered or
folded, for the ops whose output size is set by a value rather than by their inputs' sizes
(``ConstantOfShape``, ``Expand``, ``Tile``, ``Range``, ``Resize``, ``Upsample``, ``Pad``,
``OneHot``, ``TopK``): a damaged or hostile model with a shape of 2**40 must be refused with a clear error,
not allocated on the host (MemoryError, or gigabytes of swapping) nor folded element by element by
onnx's reference evaluator (hours).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx

__all__ = ["check_output_size"]


def _prod(values: Any) -> float:
    return math.prod(float(abs(v)) for v in np.asarray(values, np.float64).reshape(-1))


def _range(host: list[Any], shapes: list[Any], node: onnx.NodeProto) -> float | None:
    start, limit, delta = (None if h is None else np.asarray(h, np.float64).reshape(-1)[:1] for h in host[:3])
    if start is None or limit is None or delta is None or not start.size or not delta.size or delta[0] == 0:
        return None
    return max(math.ceil(float((limit[0] - start[0]) / delta[0])), 0)


def _resize(host: list[Any], shapes: list[Any], node: onnx.NodeProto) -> float | None:
    sizes = host[3] if len(host) > 3 else None
    if sizes is not None and np.size(sizes):
        return _prod(sizes)
    scales = host[1] if node.op_type == "Upsample" or len(host) == 2 else host[2] if len(host) > 2 else None
    if scales is None or shapes[0] is None or np.size(scales) != len(shapes[0]):
        return None
    return _prod(np.asarray(shapes[0], np.float64) * np.abs(np.asarray(scales, np.float64).reshape(-1)))


def _pad(host: list[Any], shapes: list[Any], node: onnx.NodeProto) -> float | None:
    pads = host[1] if len(host) > 1 and host[1] is not None else None
    if pads is None or shapes[0] is None or np.size(pads) != 2 * len(shapes[0]):
        return None
    p = np.asarray(pads, np.float64).reshape(2, -1)
    return _prod(np.maximum(np.asarray(shapes[0], np.float64) + p[0] + p[1], 0))


_ESTIMATES: dict[str, Callable[[list[Any], list[Any], onnx.NodeProto], float | None]] = {
    "ConstantOfShape": lambda h, s, n: None if h[0] is None else _prod(h[0]),
    "Expand": lambda h, s, n: None if h[1] is None else _prod(np.maximum(np.abs(h[1]), 1)),
    "Tile": lambda h, s, n: None if h[1] is None or s[0] is None else _prod(s[0]) * _prod(h[1]),
    "Range": _range,
    "Resize": _resize,
    "Upsample": _resize,
    "Pad": _pad,
    "TopK": lambda h, s, n: None if h[1] is None else _prod(h[1]),
    "OneHot": lambda h, s, n: None if h[1] is None or s[0] is None else _prod(s[0]) * _prod(h[1]),
}


def check_output_size(node: onnx.NodeProto, host: list[Any], shapes: list[Any], limit_bytes: int) -> None:
    """Raise ValueError when ``node``'s output would hold more than ``limit_bytes`` (counting one byte
    an element: a lower bound). ``host``: each input's value when known on the host, else None;
    ``shapes``: each input's shape when known, else None."""
    estimate = _ESTIMATES.get(node.op_type) if node.domain in ("", "ai.onnx") else None
    if estimate is None:
        return
    try:
        elements = estimate(host, shapes, node)
    except (ValueError, TypeError, IndexError, OverflowError, ZeroDivisionError):
        return  # malformed inputs: the lowering says what is wrong with them
    if elements is not None and elements > limit_bytes:
        raise ValueError(f"its output would hold {elements:.3g} elements, more than the {limit_bytes} "
                         "bytes this target (or the host, per tensor) can hold: check the values that set "
                         "its shape")
