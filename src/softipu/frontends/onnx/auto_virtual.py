"""``VirtualGraphMode.Auto``: PopART's AutoVirtualGraph transform, placing every op on an IPU.

PopART (``willow/src/transforms/auto_virtual_graph.cpp``) splits the main graph for model
parallelism in three steps, which this module follows on the ONNX graph:

1. **Subgraphs.** A subgraph starts at each consumer of each input stream; an op joins the
   subgraph of the op that makes its input; an op fed from two subgraphs starts a new one (unless
   the one it sits in is a single op of no cost, which moves instead). Ops are visited in
   topological order (ONNX nodes are stored in one).
2. **Costs and split points.** The cost of an op is the bytes of its weight inputs (initializers;
   doubled under gradient accumulation, for the accumulator beside each weight), plus in training
   the bytes of the forward tensors its gradient reads. An op is a *split point* of its subgraph
   when, after it, the subgraph's frontier is empty: all data has collapsed into that op. Each is
   recorded with the subgraph's cumulative cost up to it.
3. **Assignment.** IPU ``i`` (of ``n``) takes subgraphs in order until their cost passes
   ``(i + 1) / n`` of the total; the subgraph that passes it is cut at the split point whose
   cumulative cost is nearest the budget, the split op staying on the earlier IPU. Too few split
   points is PopART's error "Couldn't find enough splits for n IPUs".

What the gradient of an op reads is PopART's per-op ``gradInputInfo``; here it is summarised by op
type (:data:`_GRAD_READS`): most ops' gradients read their inputs, activations such as ``Relu`` read
their output, and data-movement ops read neither. The placement is written into a copy of the model
(as the loader keeps ``__ipu_number``), so the rest of the session treats it as ``VirtualGraphMode.Manual``.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from softipu.frontends.onnx.errors import PopartError
from softipu.frontends.onnx.load import IPU_NUMBERS, PIPELINE_STAGES

__all__ = ["auto_virtual_graphs", "with_auto_virtual_graphs"]

# What an op's gradient reads of the forward pass, by op type: "in" its non-weight inputs, "out"
# its outputs, "none" nothing (only the incoming gradient). Every other op type: "in".
_GRAD_READS = {
    **dict.fromkeys(("Relu", "Sigmoid", "Tanh", "Softmax", "LogSoftmax", "Exp", "Sqrt", "Elu"), "out"),
    **dict.fromkeys(("Add", "Sub", "Neg", "Identity", "Reshape", "Flatten", "Transpose", "Squeeze",
                     "Unsqueeze", "Concat", "Split", "Slice", "Gather", "Cast", "Pad", "Expand",
                     "Dropout", "GlobalAveragePool", "AveragePool", "ReduceSum", "ReduceMean"), "none"),
}


@dataclass
class _Subgraph:
    cost: float = 0.0
    frontier: set[int] = field(default_factory=set)  # ops still to come whose input is here
    splits: list[tuple[float, int]] = field(default_factory=list)  # (cumulative cost, op), ascending
    cuts: set[int] = field(default_factory=set)  # chosen split ops: the next op starts a new IPU
    ipu: int = 0
    has_been_split: bool = False

    def best_split(self, budget: float) -> int | None:
        """The split op whose cumulative cost is nearest ``budget`` from above or just below it
        (PopART's ``best_split``); None when every split point lies below the budget."""
        costs = [c for c, _ in self.splits]
        k = bisect.bisect_left(costs, budget)
        if k == len(costs):
            return None
        if k > 0 and budget - costs[k - 1] < costs[k] - budget:
            k -= 1
        return self.splits.pop(k)[1]


def _nbytes(shapes: dict[str, tuple[list[int], int]], name: str) -> float:
    if name not in shapes:
        return 0.0
    dims, elem = shapes[name]
    if any(d <= 0 for d in dims):
        return 0.0  # an unknown dimension: PopART's shapes are all known; ours may not be
    return float(np.prod(dims, dtype=np.float64)) * np.dtype(helper.tensor_dtype_to_np_dtype(elem)).itemsize


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[list[int], int]]:
    inferred = onnx.shape_inference.infer_shapes(model)
    out = {}
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        t = vi.type.tensor_type
        if t.HasField("shape"):
            out[vi.name] = ([int(d.dim_value) if d.HasField("dim_value") else -1 for d in t.shape.dim],
                            t.elem_type)
    for init in inferred.graph.initializer:
        out[init.name] = (list(init.dims), init.data_type)
    return out


def _op_cost(node: onnx.NodeProto, weights: set[str], shapes: dict, training: bool,
             w_weights: float) -> float:
    total = sum(w_weights * _nbytes(shapes, i) for i in set(node.input) if i in weights)
    if training:
        reads = _GRAD_READS.get(node.op_type, "in")
        if reads == "in":
            total += sum(_nbytes(shapes, i) for i in set(node.input) if i and i not in weights)
        elif reads == "out":
            total += sum(_nbytes(shapes, o) for o in set(node.output) if o)
    return total


class _Splitter:
    """Steps 1 and 2: the subgraphs of the ops, in topological order, with their split points."""

    def __init__(self, nodes: list[onnx.NodeProto], streams: list[str]) -> None:
        self.subgraphs: list[_Subgraph] = []
        self.home: dict[int, int] = {}  # op -> its subgraph
        self.consumers: dict[str, list[int]] = {}
        for k, node in enumerate(nodes):
            for name in dict.fromkeys(node.input):
                self.consumers.setdefault(name, []).append(k)
        for name in streams:
            for op in self.consumers.get(name, []):
                self.start(op)

    def start(self, op: int) -> int:
        self.home[op] = len(self.subgraphs)
        self.subgraphs.append(_Subgraph(frontier={op}))
        return self.home[op]

    def visit(self, k: int, node: onnx.NodeProto, cost: float) -> None:
        here = self.home[k] if k in self.home else self.start(k)
        sg = self.subgraphs[here]
        sg.cost += cost
        if k in sg.frontier:
            sg.frontier.discard(k)
            if not sg.frontier:  # all data of the subgraph passes through this op
                sg.splits.append((sg.cost, k))
        for c in (c for out in node.output for c in self.consumers.get(out, [])):
            if c not in self.home:
                self.home[c] = here
                sg.frontier.add(c)
            elif self.home[c] != here:
                other = self.subgraphs[self.home[c]]
                if other.frontier == {c} and other.cost == 0.0:  # a lone free op moves over
                    other.frontier.discard(c)
                    sg.frontier.add(c)
                    self.home[c] = here
                else:
                    self.start(c)


def auto_virtual_graphs(model: onnx.ModelProto, num_ipus: int, training: bool = False,
                        accumulation: bool = False) -> list[int]:
    """The IPU of each node of ``model`` (in ``model.graph.node`` order) as PopART's Auto mode
    places it over ``num_ipus`` IPUs (a replica's)."""
    nodes = list(model.graph.node)
    if num_ipus < 2 or not nodes:
        return [0] * len(nodes)
    weights = {t.name for t in model.graph.initializer}
    shapes = _shapes(model)
    splitter = _Splitter(nodes, [vi.name for vi in model.graph.input if vi.name not in weights])
    total, w_weights = 0.0, 2.0 if accumulation else 1.0  # an accumulator beside each weight
    for k, node in enumerate(nodes):
        cost = _op_cost(node, weights, shapes, training, w_weights)
        total += cost
        splitter.visit(k, node, cost)
    _assign(splitter.subgraphs, num_ipus, total)
    placement = []
    for k in range(len(nodes)):
        sg = splitter.subgraphs[splitter.home[k]]
        placement.append(sg.ipu)
        if k in sg.cuts:
            sg.cuts.discard(k)
            sg.ipu += 1  # the split op stays on the earlier IPU
    return placement


def _assign(subgraphs: list[_Subgraph], num_ipus: int, total: float) -> None:
    """Give each subgraph its first IPU and choose its cuts (PopART's four cases in one loop)."""
    spent, ipu, s = 0.0, 0, 0
    for i in range(1, num_ipus + 1):
        budget = i / num_ipus * total
        while s < len(subgraphs):
            sg = subgraphs[s]
            over = sg.cost + spent > budget and sg.cost > 0  # a free subgraph stays on this IPU
            at_end = sg.cost + spent - budget == 0.0
            if over and i != num_ipus:
                cut = sg.best_split(budget - spent)
                if cut is not None:
                    sg.cuts.add(cut)
                    if not sg.has_been_split:
                        sg.ipu = ipu
                    sg.has_been_split = True
                    ipu += 1
                    break
                at_end = True
            spent += sg.cost
            s += 1
            if not sg.has_been_split:
                sg.ipu = ipu
            if at_end and i != num_ipus and s != len(subgraphs):
                ipu += 1
                break
    if ipu != num_ipus - 1:
        raise PopartError(f"[AutoVirtualGraph] Couldn't find enough splits for {num_ipus} IPUs. Only found "
                          f"{ipu}: the graph has too few points where all data passes through one op; "
                          "use fewer IPUs or VirtualGraphMode.Manual with builder.virtualGraph")


def with_auto_virtual_graphs(model: onnx.ModelProto, num_ipus: int, training: bool = False,
                             accumulation: bool = False, stages: bool = False) -> onnx.ModelProto:
    """A copy of ``model`` whose nodes are placed where Auto mode puts them (and, with ``stages``,
    pipelined one stage per IPU, as PopART pipelines an Auto placement), in the metadata the loader
    keeps ``__ipu_number`` and ``__pipeline_stage`` in; attributes a user set are dropped."""
    placement = auto_virtual_graphs(model, num_ipus, training, accumulation)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for node in out.graph.node:
        kept = [a for a in node.attribute if a.name not in ("__ipu_number", "__pipeline_stage")]
        del node.attribute[:]
        node.attribute.extend(kept)
    placed = {node.output[0]: ipu for node, ipu in zip(out.graph.node, placement, strict=True) if node.output}
    keys = {IPU_NUMBERS: placed, PIPELINE_STAGES: placed if stages else {}}
    props = [p for p in out.metadata_props if p.key not in keys]
    del out.metadata_props[:]
    out.metadata_props.extend(props)
    for key, value in keys.items():
        out.metadata_props.add(key=key, value=json.dumps(value))
    return out
