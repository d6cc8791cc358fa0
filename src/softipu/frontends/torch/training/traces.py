"""One traced optimizer update for parameters of every shape.

``make_fx`` has a fixed cost per trace (a fifth of a second of CPU each), and a model's parameters
come in a dozen shapes (BERT: tables, square and wide weights, biases...). An update that is
pointwise (SGD, Adam, AdamW, RMSprop: every op elementwise over the parameter, its gradient and
state, or over 0-d hyper-parameters) is traced once per rank at a small canonical shape; each
parameter lowers a copy of that graph whose values carry the parameter's own shape. Updates
that are not (LAMB's norms, a shape that does not follow) are traced per shape as before.
"""

from __future__ import annotations

import torch

__all__ = ["canonical_shape", "is_pointwise", "with_shape"]

_aten = torch.ops.aten
_PASS_THROUGH = {_aten._to_copy.default, _aten.lift_fresh_copy.default}
_DIMS = (2, 3, 5, 7, 11, 13, 17, 19)  # distinct primes: no dimension can be mistaken for another


def canonical_shape(rank: int) -> tuple[int, ...] | None:
    """The shape a rank-``rank`` update is traced at; None for ranks it is not shared across."""
    return _DIMS[:rank] if 0 < rank <= len(_DIMS) else None


def is_pointwise(gm: torch.fx.GraphModule, shape: tuple[int, ...]) -> bool:
    """Whether every op of ``gm`` is elementwise (``torch.Tag.pointwise``, or a dtype conversion)
    and every value is either 0-d or of ``shape``: the graph then computes the same thing on
    operands of any other shape of that rank."""
    for node in gm.graph.nodes:
        if node.op == "call_function":
            target = node.target
            if target not in _PASS_THROUGH and torch.Tag.pointwise not in getattr(target, "tags", ()):
                return False
        elif node.op not in ("placeholder", "output"):
            return False
        val = node.meta.get("val")
        if node.op != "output" and not (isinstance(val, torch.Tensor) and tuple(val.shape) in ((), shape)):
            return False
    return True


def with_shape(gm: torch.fx.GraphModule, canonical: tuple[int, ...],
               shape: tuple[int, ...]) -> torch.fx.GraphModule:
    """A copy of the pointwise graph ``gm`` (traced at ``canonical``) whose values of that shape
    carry ``shape`` instead (meta tensors: only shapes and dtypes are read when lowering)."""
    graph = torch.fx.Graph()
    copies: dict[torch.fx.Node, torch.fx.Node] = {}
    graph.output(graph.graph_copy(gm.graph, copies))
    for node in copies.values():
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor) and tuple(val.shape) == canonical:
            node.meta = {**node.meta, "val": torch.empty(shape, dtype=val.dtype, device="meta")}
    return torch.fx.GraphModule(gm, graph)
