"""Fuzz campaign for the ONNX frontend (issue 18): mutants of valid models must load and run, or fail
as a softipu error — never another exception, never a hang, never a read outside the model's folder.

Eight seed models are built in code (tiny shapes, so an input costs milliseconds): an MLP, a small
CNN, an attention block (MatMul, Transpose, Softmax), Conv + BatchNormalization + Relu, Gather /
Slice / Concat / Reshape with int64 shapes computed in the graph, If and Loop with subgraphs, a
chain of Casts, and an MLP whose initializers are external data files next to it. Each input writes
one seed into a fresh folder, applies a byte-level mutation (bit flips, truncation) or one to three
protobuf-level ones (op types, domains, attributes of the wrong type or value, subgraph attributes
mutated recursively, value_info that lies, duplicate names, cycles, node order, graph outputs,
input dims and dtypes, opsets, huge dims in initializers and Constants, int64 shape values,
external data paths that leave the folder — ``../``, absolute, through a symlink — with odd
offsets and lengths), then loads it (from its path, or from bytes) with ``InferenceSession`` and,
when it loads, runs it on inputs of ones, under a time bound. Outcomes:

* ``ran`` (loaded and ran), ``refused`` (a SoftIPUError while loading or compiling),
  ``run_refused`` (a SoftIPUError from ``run``);
* ``other`` (any other exception: a bug), ``hang`` (over the time bound), ``escaped`` (a file
  outside the model's folder was opened, seen by an audit hook on ``open``, or changed).

One JSON line with the counts, the most common bad details and the first few reproducers. An input
is rerun alone with ``--seed S --first I --count 1 --verbose``.

    .venv/bin/python bench/bench_onnx_fuzz.py --count 100000 --seconds 3600 --seed 0
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import random
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper, numpy_helper

import softipu as sp
import softipu.onnx as so

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _fuzz_common import Timeout, alarm_handler, bounded, campaign_parser  # noqa: E402

BAD = ("other", "hang", "escaped")
OPTS = so.Options(target=sp.targets.ipu_model(tiles=4, bytes_per_tile=1 << 20))
HUGE = (0, -1, 2**31, 2**40, 2**62, 10**12, -(2**40))
OUT_PATHS = ("bait.bin", "w.bin", "../outside/bait.bin", "../../outside/bait.bin",
             "sub/../../outside/bait.bin", "/etc/passwd", "../../../../../../etc/passwd", "/dev/zero",
             "missing.bin", "", ".", "link.bin", "w.bin\x00x")
OP_TYPES = ("Frob", "", "Add", "Conv", "Loop", "If", "MatMul", "Gather", "TopK", "Reshape", "Concat",
            "Slice", "Softmax", "Transpose", "Cast", "Identity", "Scan", "Expand", "Tile", "Range",
            "ConstantOfShape", "BatchNormalization", "Einsum", "Resize", "NonZero", "Split")


def _vi(name: str, elem: int, shape: list[Any]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def _init(rng: np.random.Generator, name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
    return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)


def _i64(name: str, values: list[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, np.int64), name)


def _model(graph: onnx.GraphProto, opset: int = 13) -> onnx.ModelProto:
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


# -- seeds ---------------------------------------------------------------------------------------
def _mlp(rng: np.random.Generator) -> onnx.GraphProto:
    n = helper.make_node
    return helper.make_graph(
        [n("MatMul", ["x", "w"], ["h"]), n("Relu", ["h"], ["r"]), n("Reshape", ["r", "shape"], ["s"]),
         n("Softmax", ["s"], ["y"], axis=1)],
        "mlp", [_vi("x", T.FLOAT, [4, 4])], [_vi("y", T.FLOAT, [3, 4])],
        initializer=[_init(rng, "w", (4, 3)), _i64("shape", [3, 4])])


def _cnn(rng: np.random.Generator) -> onnx.GraphProto:
    n = helper.make_node
    return helper.make_graph(
        [n("Conv", ["x", "k"], ["c"], pads=[1, 1, 1, 1]),
         n("MaxPool", ["c"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
         n("Flatten", ["p"], ["f"]), n("ReduceSum", ["f"], ["y"], keepdims=0)],
        "cnn", [_vi("x", T.FLOAT, [1, 1, 4, 4])], [_vi("y", T.FLOAT, [1])],
        initializer=[_init(rng, "k", (2, 1, 3, 3))])


def _attention(rng: np.random.Generator) -> onnx.GraphProto:
    n = helper.make_node
    return helper.make_graph(
        [n("MatMul", ["x", "wq"], ["q"]), n("MatMul", ["x", "wk"], ["k"]), n("MatMul", ["x", "wv"], ["v"]),
         n("Transpose", ["k"], ["kt"], perm=[0, 2, 1]), n("MatMul", ["q", "kt"], ["s"]),
         n("Mul", ["s", "scale"], ["ss"]), n("Softmax", ["ss"], ["p"], axis=-1),
         n("MatMul", ["p", "v"], ["o"]), n("Add", ["o", "x"], ["y"])],
        "attention", [_vi("x", T.FLOAT, [1, 3, 4])], [_vi("y", T.FLOAT, [1, 3, 4])],
        initializer=[_init(rng, "wq", (4, 4)), _init(rng, "wk", (4, 4)), _init(rng, "wv", (4, 4)),
                     numpy_helper.from_array(np.array(0.5, np.float32), "scale")])


def _conv_bn_relu(rng: np.random.Generator) -> onnx.GraphProto:
    n = helper.make_node
    c = 2
    bn = [numpy_helper.from_array(v.astype(np.float32), name) for v, name in
          ((rng.random(c) + 0.5, "gamma"), (rng.standard_normal(c), "beta"),
           (rng.standard_normal(c), "mean"), (rng.random(c) + 0.5, "var"))]
    return helper.make_graph(
        [n("Conv", ["x", "k", "b"], ["c"], pads=[1, 1, 1, 1], strides=[1, 1]),
         n("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["n"], epsilon=1e-5),
         n("Relu", ["n"], ["r"]), n("GlobalAveragePool", ["r"], ["y"])],
        "conv_bn_relu", [_vi("x", T.FLOAT, [1, 1, 4, 4])], [_vi("y", T.FLOAT, [1, c, 1, 1])],
        initializer=[_init(rng, "k", (c, 1, 3, 3)), _init(rng, "b", (c,)), *bn])


def _gather_slice(rng: np.random.Generator) -> onnx.GraphProto:
    n = helper.make_node
    return helper.make_graph(
        [n("Gather", ["x", "idx"], ["g"], axis=0),
         n("Slice", ["x", "starts", "ends", "axes", "steps"], ["sl"]),
         n("Concat", ["g", "sl"], ["c"], axis=0), n("Shape", ["c"], ["shp"]),
         n("Gather", ["shp", "zero"], ["rows"], axis=0), n("Concat", ["rows", "minus1"], ["new"], axis=0),
         n("Reshape", ["c", "new"], ["y"])],
        "gather_slice", [_vi("x", T.FLOAT, [4, 6])], [_vi("y", T.FLOAT, [5, 6])],
        initializer=[_i64("idx", [3, 0, 1]), _i64("starts", [1]), _i64("ends", [3]), _i64("axes", [0]),
                     _i64("steps", [1]), _i64("zero", [0]), _i64("minus1", [-1])])


def _control(rng: np.random.Generator) -> onnx.GraphProto:
    n = helper.make_node
    then_g = helper.make_graph([n("Mul", ["x", "two"], ["t"])], "then", [], [_vi("t", T.FLOAT, [2, 3])],
                               initializer=[numpy_helper.from_array(np.array(2.0, np.float32), "two")])
    else_g = helper.make_graph([n("Sub", ["half", "x"], ["e"])], "else", [], [_vi("e", T.FLOAT, [2, 3])],
                               initializer=[numpy_helper.from_array(np.array(0.5, np.float32), "half")])
    body = helper.make_graph(
        [n("Identity", ["cond_in"], ["cond_out"]), n("Add", ["acc_in", "x"], ["sum"]),
         n("Mul", ["sum", "decay"], ["acc_out"]),
         n("Cast", ["i"], ["fi"], to=T.FLOAT), n("Mul", ["acc_out", "fi"], ["scan"])],
        "body", [_vi("i", T.INT64, []), _vi("cond_in", T.BOOL, []), _vi("acc_in", T.FLOAT, [2, 3])],
        [_vi("cond_out", T.BOOL, []), _vi("acc_out", T.FLOAT, [2, 3]), _vi("scan", T.FLOAT, [2, 3])],
        initializer=[numpy_helper.from_array(np.array(0.75, np.float32), "decay")])
    return helper.make_graph(
        [n("ReduceSum", ["x"], ["total"], keepdims=0), n("Greater", ["total", "zero"], ["cond"]),
         n("If", ["cond"], ["branch"], then_branch=then_g, else_branch=else_g),
         n("Loop", ["trips", "", "branch"], ["acc", "scans"], body=body),
         n("ReduceSum", ["scans", "axis0"], ["s"], keepdims=0), n("Add", ["acc", "s"], ["y"])],
        "control", [_vi("x", T.FLOAT, [2, 3])], [_vi("y", T.FLOAT, [2, 3])],
        initializer=[numpy_helper.from_array(np.array(0.0, np.float32), "zero"), _i64("trips", [3]),
                     _i64("axis0", [0])])


def _casts(rng: np.random.Generator) -> onnx.GraphProto:
    n = helper.make_node
    return helper.make_graph(
        [n("Cast", ["x"], ["a"], to=T.INT32), n("Cast", ["a"], ["b"], to=T.FLOAT16),
         n("Cast", ["b"], ["c"], to=T.FLOAT), n("Cast", ["x"], ["d"], to=T.BOOL),
         n("Cast", ["d"], ["e"], to=T.FLOAT), n("Add", ["c", "e"], ["f"]),
         n("Cast", ["f"], ["g"], to=T.INT64), n("Cast", ["g"], ["y"], to=T.FLOAT)],
        "casts", [_vi("x", T.FLOAT, [2, 4])], [_vi("y", T.FLOAT, [2, 4])])


def seeds() -> dict[str, tuple[onnx.ModelProto, dict[str, bytes]]]:
    """``{name: (model, files)}``: the seed models and the files beside them (``external`` keeps its
    weight ``w`` in ``w.bin``)."""
    rng = np.random.default_rng(0)
    built = {f.__name__[1:]: (_model(f(rng)), {}) for f in
             (_mlp, _cnn, _attention, _conv_bn_relu, _gather_slice, _control, _casts)}
    ext = _model(_mlp(rng))
    (w,) = [t for t in ext.graph.initializer if t.name == "w"]
    raw = w.raw_data
    onnx.external_data_helper.set_external_data(w, "w.bin", offset=0, length=len(raw))
    w.ClearField("raw_data")
    built["external"] = (ext, {"w.bin": raw})
    return built


# -- mutations -----------------------------------------------------------------------------------
def _graphs(g: onnx.GraphProto) -> list[onnx.GraphProto]:
    """``g`` and every subgraph in it."""
    found = [g]
    for node in g.node:
        for a in node.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                found += _graphs(sub)
    return found


def _odd_attribute(rnd: random.Random, name: str, graph: onnx.GraphProto) -> onnx.AttributeProto:
    value = rnd.choice([-(2**40), -3, 0, 1, 7, 2**31, 2**63 - 1, 1.5, float("nan"), "x", b"\xff",
                        [0, -1], [99, 99], [], [1.0, 2.0], ["a", "b"],
                        numpy_helper.from_array(np.zeros((2, 2))), graph])
    if isinstance(value, list) and not value:
        return helper.make_attribute(name, [], attr_type=onnx.AttributeProto.INTS)
    return helper.make_attribute(name, value)


def m_op_type(m: onnx.ModelProto, g: onnx.GraphProto, rnd: random.Random) -> str:
    node = rnd.choice(g.node)
    node.op_type = rnd.choice(OP_TYPES)
    return f"op_type {node.name or node.output[0]} = {node.op_type}"


def m_domain(m: onnx.ModelProto, g: onnx.GraphProto, rnd: random.Random) -> str:
    node = rnd.choice(g.node)
    node.domain = rnd.choice(["com.microsoft", "ai.graphcore", "bogus", "ai.onnx.ml", "ai.onnx"])
    if rnd.random() < 0.5:
        m.opset_import.append(helper.make_opsetid(node.domain, rnd.choice([1, 99, -1])))
    return f"domain {node.op_type} = {node.domain}"


def m_input_name(m: onnx.ModelProto, g: onnx.GraphProto, rnd: random.Random) -> str:
    at = rnd.randrange(len(g.node))
    node = g.node[at]
    earlier = [o for nd in g.node[:at] for o in nd.output]  # keeps the graph sorted: past the checker
    names = ["", "nope", *earlier, *earlier, *[t.name for t in g.initializer], *[vi.name for vi in g.input]]
    if node.input and rnd.random() < 0.8:
        i = rnd.randrange(len(node.input))
        node.input[i] = rnd.choice(names)
        return f"input {i} of {node.op_type} = {node.input[i]!r}"
    node.input.append(rnd.choice(names))
    return f"extra input to {node.op_type}"


def m_attribute(m: onnx.ModelProto, g: onnx.GraphProto, rnd: random.Random) -> str:
    node = rnd.choice(g.node)
    own = [a.name for a in node.attribute]
    name = rnd.choice(own + ["axis", "pads", "kernel_shape", "perm", "to", "axes", "keepdims", "strides",
                             "dilations", "group", "epsilon", "then_branch", "body", "value"])
    keep = [a for a in node.attribute if a.name != name or rnd.random() < 0.2]  # sometimes a duplicate
    del node.attribute[:]
    node.attribute.extend(keep)
    if rnd.random() < 0.9:
        node.attribute.append(_odd_attribute(rnd, name, rnd.choice(_graphs(m.graph))))
    return f"attribute {node.op_type}.{name}"


def m_subgraph(m: onnx.ModelProto, g: onnx.GraphProto, rnd: random.Random) -> str:
    subs = _graphs(m.graph)[1:]
    if not subs:
        node = rnd.choice(g.node)
        node.attribute.append(helper.make_attribute(rnd.choice(["body", "then_branch", "x"]), m.graph))
        return f"graph attribute on {node.op_type}"
    sub = rnd.choice(subs)
    action = rnd.random()
    if action < 0.2:
        del sub.output[rnd.randrange(len(sub.output))]
        return f"subgraph {sub.name} loses an output"
    if action < 0.3:
        sub.input.append(_vi("extra", T.FLOAT, [2]))
        return f"subgraph {sub.name} gains an input"
    if not sub.node:
        return "empty subgraph"
    if action < 0.65:  # a subgraph's tensors are easy to forget: external data in them, often
        return f"in subgraph {sub.name}: " + m_external(m, sub, rnd)
    return f"in subgraph {sub.name}: " + rnd.choices(PROTO[:-2], WEIGHTS[:-2])[0](m, sub, rnd)


def m_value_info(m: onnx.ModelProto, g: onnx.GraphProto, rnd: random.Random) -> str:
    names = [o for nd in g.node for o in nd.output] + [vi.name for vi in g.input]
    name = rnd.choice(names)
    elem = rnd.choice([T.FLOAT, T.INT64, T.BOOL, T.STRING, T.FLOAT16, 0, 999])
    shape = rnd.choice([[], [1], [2, 3], [10**9], [-1, 4], ["n", 4], [0], None])
    g.value_info.append(_vi(name, elem, shape))
    return f"value_info {name} = {elem} {shape}"


def m_duplicate(m: onnx.ModelProto, g: onnx.GraphProto, rnd: random.Random) -> str:
    action = rnd.randrange(4)
    if action == 0 and len(g.node) > 1:
        a, b = rnd.sample(list(g.node), 2)
        b.output[0] = a.output[0]
        return f"{b.op_type} writes {a.output[0]} too"
    if action == 1 and g.initializer:
        dup = onnx.TensorProto()
        dup.CopyFrom(rnd.choice(g.initializer))
        g.initializer.append(dup)
        return f"duplicate initializer {dup.name}"
    if action == 2 and g.input:
        g.input.append(g.input[0])
        return f"duplicate input {g.input[0].name}"
    node = rnd.choice(g.node)
    if g.input:
        node.output[0] = g.input[0].name
        return f"{node.op_type} writes the input {g.input[0].name}"
    g.node.append(node)
    return f"duplicate node {node.op_type}"


def m_cycle(m: onnx.ModelProto, g: onnx.GraphProto, rnd: random.Random) -> str:
    i = rnd.randrange(len(g.node))
    j = rnd.randrange(i, len(g.node))
    node = g.node[i]
    if not node.input:
        node.input.append(g.node[j].output[0])
    else:
        node.input[rnd.randrange(len(node.input))] = g.node[j].output[0]
    return f"{node.op_type} reads {g.node[j].output[0]} (a cycle)"


def m_order(m: onnx.ModelProto, g: onnx.GraphProto, rnd: random.Random) -> str:
    nodes = list(g.node)
    rnd.shuffle(nodes)
    del g.node[:]
    g.node.extend(nodes)
    return "nodes shuffled"


def m_outputs(m: onnx.ModelProto, g: onnx.GraphProto, rnd: random.Random) -> str:
    action = rnd.randrange(3)
    if action == 0:
        g.output[0].name = rnd.choice(["nope", "", g.node[0].output[0], *[t.name for t in g.initializer]])
        return f"output named {g.output[0].name!r}"
    if action == 1:
        g.output.append(g.output[0])
        return "duplicate output"
    del g.output[:]
    return "no outputs"


def m_input_type(m: onnx.ModelProto, g: onnx.GraphProto, rnd: random.Random) -> str:
    if not g.input:
        return "no input to change"
    vi = rnd.choice(g.input)
    tt = vi.type.tensor_type
    if rnd.random() < 0.5 and tt.shape.dim:
        dim = rnd.choice(tt.shape.dim)
        if rnd.random() < 0.3:
            dim.dim_param = rnd.choice(["n", "batch", ""])
        else:
            dim.dim_value = rnd.choice([0, 1, 3, 10**9, 2**40])
        return f"input {vi.name} dims {[d.dim_value or d.dim_param for d in tt.shape.dim]}"
    tt.elem_type = rnd.choice([0, T.STRING, T.BFLOAT16, T.INT64, T.INT32, T.BOOL, T.FLOAT16, T.DOUBLE,
                               T.COMPLEX64, T.UINT8, 999])
    return f"input {vi.name} type {tt.elem_type}"


def m_opset(m: onnx.ModelProto, g: onnx.GraphProto, rnd: random.Random) -> str:
    m.opset_import[0].version = rnd.choice([0, 1, 6, 9, 11, 17, 21, 99, -1])
    if rnd.random() < 0.2:
        m.ir_version = rnd.choice([0, 3, 99])
    return f"opset {m.opset_import[0].version}"


def m_initializer(m: onnx.ModelProto, g: onnx.GraphProto, rnd: random.Random) -> str:
    inits = [t for t in g.initializer if t.data_location != T.EXTERNAL] or list(g.initializer)
    if not inits:
        return "no initializer"
    t = rnd.choice(inits)
    action = rnd.randrange(5)
    if action == 0:
        t.raw_data = t.raw_data[: rnd.randrange(len(t.raw_data) + 1)]
        return f"initializer {t.name} truncated"
    if action == 1:
        del t.dims[:]
        t.dims.extend(rnd.choice([[2**40], [2**31, 2**31], [-1], [0], [10**12, 0], [5], [2**62, 4]]))
        return f"initializer {t.name} dims {list(t.dims)}"
    if action == 2:
        t.data_type = rnd.choice([0, T.STRING, T.BFLOAT16, T.INT4 if hasattr(T, "INT4") else 22, T.BOOL,
                                  T.FLOAT16, T.COMPLEX128, 999])
        return f"initializer {t.name} type {t.data_type}"
    if action == 3 and t.data_type == T.INT64:  # a shape, index or trip count
        values = [rnd.choice([*HUGE, -2, 1, 5]) for _ in range(max(1, len(t.raw_data) // 8))]
        t.raw_data = np.array(values, np.int64).tobytes()
        return f"int64 initializer {t.name} = {values}"
    t.ClearField("raw_data")
    t.float_data.extend([1.0] * rnd.randrange(3))
    return f"initializer {t.name} data in float_data"


def m_external(m: onnx.ModelProto, g: onnx.GraphProto, rnd: random.Random) -> str:
    owners = [t for t in g.initializer] + [a.t for nd in g.node for a in nd.attribute if a.HasField("t")]
    if not owners:
        return "no tensor for external data"
    t = rnd.choice(owners)
    t.ClearField("raw_data")
    del t.external_data[:]
    t.data_location = T.EXTERNAL
    info = {"location": rnd.choice(OUT_PATHS if rnd.random() < 0.7 else OUT_PATHS[:2])}
    if rnd.random() < 0.4:
        info["offset"] = str(rnd.choice([*HUGE, 3, "x"]))
    if rnd.random() < 0.4:
        info["length"] = str(rnd.choice([*HUGE, 4, "", "x"]))
    for k, v in info.items():
        e = t.external_data.add()
        e.key, e.value = k, v
    return f"external data of {t.name}: {info}"


def m_constant(m: onnx.ModelProto, g: onnx.GraphProto, rnd: random.Random) -> str:
    dims = rnd.choice([[2**40], [3], [2, 2], [], [0], [-1], [1]])
    elem = rnd.choice([T.FLOAT, T.INT64, T.BOOL, T.INT32])
    size = int(np.prod(dims)) * _itemsize(elem) if rnd.random() < 0.7 and max(dims, default=1) < 99 else 5
    t = onnx.TensorProto(name="cv", data_type=elem, dims=dims, raw_data=bytes(max(size, 0)))
    node = helper.make_node("Constant", [], [rnd.choice([g.node[0].input[0] if g.node[0].input else "c",
                                                         "c"])], value=t)
    g.node.insert(rnd.randrange(len(g.node) + 1), node)
    return f"Constant {dims} -> {node.output[0]}"


def m_remove(m: onnx.ModelProto, g: onnx.GraphProto, rnd: random.Random) -> str:
    at = rnd.randrange(len(g.node))
    node = g.node[at]
    del g.node[at]
    if node.input and node.output and rnd.random() < 0.7:  # bypass it: readers read its first input
        for later in g.node[at:]:
            for i, name in enumerate(later.input):
                if name == node.output[0]:
                    later.input[i] = node.input[0]
        for out in g.output:
            if out.name == node.output[0]:
                out.name = node.input[0]
    return f"removed {node.op_type}"


def m_attribute_value(m: onnx.ModelProto, g: onnx.GraphProto, rnd: random.Random) -> str:
    """An attribute keeps its type with another value (past the checker, into the lowerings)."""
    owners = [(nd, a) for nd in g.node for a in nd.attribute
              if a.type in (onnx.AttributeProto.INT, onnx.AttributeProto.INTS, onnx.AttributeProto.FLOAT)]
    if not owners:
        return m_attribute(m, g, rnd)
    node, a = rnd.choice(owners)
    small = (-(2**31), -5, -2, -1, 0, 1, 2, 3, 5, 2**31, 2**62)
    if a.type == onnx.AttributeProto.INT:
        a.i = rnd.choice(small)
    elif a.type == onnx.AttributeProto.FLOAT:
        a.f = rnd.choice((0.0, -1.0, 1e30, float("nan"), float("inf"), 1e-30))
    else:
        values = list(a.ints)
        if values and rnd.random() < 0.6:
            values[rnd.randrange(len(values))] = rnd.choice(small)
        else:
            values = values[: rnd.randrange(len(values) + 1)] + [rnd.choice(small)] * rnd.randrange(3)
        del a.ints[:]
        a.ints.extend(values)
    return f"attribute value {node.op_type}.{a.name}"


def _itemsize(elem: int) -> int:
    return int(np.dtype(helper.tensor_dtype_to_np_dtype(elem)).itemsize)


# the weights favour mutations that pass onnx's checker (so the lowerings see them); the last two
# are left out when a subgraph is mutated
PROTO = (m_op_type, m_domain, m_input_name, m_attribute, m_attribute_value, m_value_info, m_duplicate,
         m_cycle, m_order, m_outputs, m_input_type, m_initializer, m_constant, m_remove, m_external,
         m_opset, m_subgraph)
WEIGHTS = (2, 1, 3, 2, 6, 3, 1, 1, 1, 1, 4, 5, 2, 3, 2, 2, 6)


def mutant(model: onnx.ModelProto, rnd: random.Random) -> tuple[bytes, list[str]]:
    """The mutated model's bytes and what was done to it."""
    data = model.SerializeToString()
    kind = rnd.random()
    if kind < 0.08:
        buf = bytearray(data)
        for _ in range(rnd.randint(1, 4)):
            buf[rnd.randrange(len(buf))] ^= 1 << rnd.randrange(8)
        return bytes(buf), ["bit flips"]
    if kind < 0.12:
        return data[: rnd.randrange(len(data))], ["truncated"]
    m = onnx.ModelProto.FromString(data)
    done = []
    for _ in range(rnd.choice((1, 1, 1, 2, 3))):
        if not m.graph.node:
            break
        try:
            done.append(rnd.choices(PROTO, WEIGHTS)[0](m, m.graph, rnd))
        except (IndexError, ValueError):  # nothing left to mutate there (no output, no input...)
            done.append("(a mutation found nothing to change)")
    return m.SerializeToString(), done


# -- the campaign --------------------------------------------------------------------------------
_FEED_DTYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32,
                "tensor(bool)": np.bool_, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def try_one(source: Any) -> str:
    """Load ``source`` (a path or bytes) and run it on ones: 'ran', 'refused' or 'run_refused', or raise."""
    try:
        sess = so.InferenceSession(source, OPTS)
    except sp.SoftIPUError:
        return "refused"
    feeds = {}
    for arg in sess.get_inputs():
        shape = [d if isinstance(d, int) else 2 for d in arg.shape]
        if int(np.prod(shape, dtype=np.float64)) > 1 << 20:  # the harness's own memory: refused later
            return "refused"
        feeds[arg.name] = np.ones(shape, _FEED_DTYPES.get(arg.type, np.float32))
    try:
        sess.run(None, feeds)
    except sp.SoftIPUError:
        return "run_refused"
    return "ran"


class _Opens:
    """An audit hook that records the paths opened while armed (``sys.addaudithook`` hooks cannot be
    removed: one per process)."""

    armed: list[str] | None = None

    @classmethod
    def hook(cls, event: str, args: tuple) -> None:
        if event != "open" or cls.armed is None:
            return
        if isinstance(args[0], int):  # os.fdopen of a descriptor opened in C (onnx's external data)
            with contextlib.suppress(OSError):
                cls.armed.append(os.readlink(f"/proc/self/fd/{args[0]}"))
        elif isinstance(args[0], (str, bytes, os.PathLike)):
            cls.armed.append(os.fsdecode(args[0]))


_HOOKED: list[bool] = []
_ALLOWED = (*(str(Path(p).resolve()) for p in {sys.prefix, sys.base_prefix, *sys.path} if p),
            "/proc/", "/sys/")  # system facts (the engine reads /proc/loadavg), never a model's data


def _escapes(opened: list[str], case: Path) -> list[str]:
    """The opened paths outside the case folder (and outside Python's own files)."""
    out = []
    for p in opened:
        resolved = str(Path(p).resolve()) if p.startswith("/") else str((Path.cwd() / p).resolve())
        if not resolved.startswith(str(case)) and not resolved.startswith(_ALLOWED):
            out.append(p)
    return out


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.lstat().st_mtime_ns, p.lstat().st_size) for p in sorted(folder.rglob("*"))}


def _classify(outcome: str | None, exc: BaseException | None) -> tuple[str, str]:
    if exc is None or isinstance(exc, Timeout):
        return outcome or "hang", ""
    frame = traceback.extract_tb(exc.__traceback__)[-1]
    where = f"[{Path(frame.filename).name}:{frame.lineno}]"
    return "other", f"{type(exc).__name__}: {str(exc)[:160]} {where}"


def run_one(seeds: dict[str, Any], rng: random.Random, work: Path, limit: float,
            verbose: bool = False) -> tuple[str, str, list[str], str]:
    """(outcome, seed name, mutations, detail) of one input."""
    name = rng.choice(sorted(seeds))
    model, files = seeds[name]
    data, mutations = mutant(model, rng)
    case = work / "case"
    folder = case / "model"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():  # (unlinking the files is cheaper than removing the folder)
        old.unlink()
    path = folder / "model.onnx"
    path.write_bytes(data)
    for fname, raw in files.items():
        (folder / fname).write_bytes(raw)
    if rng.random() < 0.1:  # an external data name that is a link out of the folder
        (folder / "link.bin").symlink_to(work / "outside" / "bait.bin")
        mutations.append("link.bin -> ../outside/bait.bin")
    source = path if rng.random() < 0.8 else data
    before = _snapshot(work / "outside"), _snapshot(work / "cwd")
    _Opens.armed = []
    outcome, exc, hang = bounded(lambda: try_one(source), limit)
    opened, _Opens.armed = _Opens.armed, None
    outcome, detail = _classify(outcome, exc)
    if verbose and exc is not None and not isinstance(exc, Timeout):
        traceback.print_exception(exc)
    if hang:
        outcome, detail = "hang", f"over {limit} CPU s ({outcome}: {detail})"
    escaped = _escapes(opened, case)
    if escaped or (_snapshot(work / "outside"), _snapshot(work / "cwd")) != before:
        outcome, detail = "escaped", f"opened {escaped[:3]} ({outcome}: {detail})"
    return outcome, name, mutations, detail


def campaign(count: int, seconds: float, seed: int, limit: float = 5.0, first: int = 0,
             verbose: bool = False) -> dict[str, Any]:
    """Run up to ``count`` inputs for at most ``seconds``; the counts and a few reproducers."""
    if not _HOOKED:
        sys.addaudithook(_Opens.hook)
        _HOOKED.append(True)
    logging.getLogger("softipu").setLevel(logging.ERROR)
    counts: Counter = Counter()
    by_seed: dict[str, Counter] = {}
    details: Counter = Counter()
    examples: list[dict[str, Any]] = []
    models = seeds()
    start = time.perf_counter()
    tried = first
    printed = io.StringIO()
    with tempfile.TemporaryDirectory(prefix="softipu-onnx-fuzz-") as tmp, alarm_handler(), \
            warnings.catch_warnings(), contextlib.redirect_stdout(sys.stdout if verbose else printed), \
            contextlib.ExitStack() as stack:
        warnings.simplefilter("ignore")
        work = Path(tmp).resolve()
        (work / "outside").mkdir()
        (work / "outside" / "bait.bin").write_bytes(np.ones(12, np.float32).tobytes())
        (work / "cwd").mkdir()  # the current folder holds bait too: a relative name must not reach it
        for bait in ("bait.bin", "w.bin"):
            (work / "cwd" / bait).write_bytes(np.ones(12, np.float32).tobytes())
        stack.enter_context(contextlib.chdir(work / "cwd"))
        while tried < first + count and time.perf_counter() - start < seconds:
            rng = random.Random(f"{seed}-{tried}")  # each input reproducible alone: --seed S --first I
            outcome, name, mutations, detail = run_one(models, rng, work, limit, verbose)
            counts[outcome] += 1
            by_seed.setdefault(name, Counter())[outcome] += 1
            if verbose:
                print(tried, name, outcome, mutations, detail, file=sys.stderr)
            if outcome in BAD:
                details[f"{outcome}: {detail[:100]}"] += 1
                if sum(e["outcome"] == outcome for e in examples) < 5:
                    examples.append({"outcome": outcome, "seed_model": name, "mutations": mutations,
                                     "detail": detail, "input": tried})
            tried += 1
            printed.seek(0)
            printed.truncate()
    return {"bench": "onnx_fuzz", "seed": seed, "tried": tried - first, "ran": counts["ran"],
            "refused": counts["refused"], "run_refused": counts["run_refused"],
            "other_exceptions": counts["other"], "hangs": counts["hang"], "escaped": counts["escaped"],
            "seconds": round(time.perf_counter() - start, 1),
            "by_seed": {k: dict(v) for k, v in sorted(by_seed.items())},
            "top_bad": dict(details.most_common(12)), "examples": examples}


def main(argv: list[str] | None = None) -> int:
    parser = campaign_parser(__doc__)
    parser.add_argument("--verbose", action="store_true", help="print each input and its traceback")
    args = parser.parse_args(argv)
    result = campaign(args.count, args.seconds, args.seed, args.limit, args.first, args.verbose)
    print(json.dumps(result))
    return 1 if any(result[k] for k in ("other_exceptions", "hangs", "escaped")) else 0


if __name__ == "__main__":
    sys.exit(main())
