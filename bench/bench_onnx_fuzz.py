"""Fuzzing the ONNX frontend: mutants of valid models (byte flips, truncations, and protobuf-level
edits: op types, attributes, dims, dtypes, opsets, external data paths) are loaded and, when they
load, run. Every failure must be a softipu error (``sp.SoftIPUError``); anything else is counted.

    python bench/bench_onnx_fuzz.py [--mutants 10000] [--seed 0]

Prints one JSON line: mutants, how many loaded, ran, failed cleanly, and ``not_softipu_errors``
(the figure that must be 0) with the first few of them.
"""

from __future__ import annotations

import argparse
import json
import random
import time
import traceback

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper

import softipu as sp
import softipu.onnx as so

OPTS = so.Options(target=sp.targets.ipu_model(tiles=4, bytes_per_tile=1 << 20))


def seeds() -> list[onnx.ModelProto]:
    rng = np.random.default_rng(0)
    w = onnx.numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "w")
    shape = onnx.numpy_helper.from_array(np.array([3, 4], np.int64), "shape")
    mlp = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Reshape", ["r", "shape"], ["s"]),
         helper.make_node("Softmax", ["s"], ["y"], axis=1)],
        "mlp", [helper.make_tensor_value_info("x", T.FLOAT, [4, 4])],
        [helper.make_tensor_value_info("y", T.FLOAT, [3, 4])], initializer=[w, shape])
    k = onnx.numpy_helper.from_array(rng.standard_normal((2, 1, 3, 3)).astype(np.float32), "k")
    cnn = helper.make_graph(
        [helper.make_node("Conv", ["x", "k"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("MaxPool", ["c"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
         helper.make_node("Flatten", ["p"], ["f"]), helper.make_node("ReduceSum", ["f"], ["y"], keepdims=0)],
        "cnn", [helper.make_tensor_value_info("x", T.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("y", T.FLOAT, [1])], initializer=[k])
    return [helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]) for g in (mlp, cnn)]


def _proto_mutant(model: onnx.ModelProto, rnd: random.Random) -> bytes:
    m = onnx.ModelProto.FromString(model.SerializeToString())
    g = m.graph
    choice = rnd.randrange(9)
    node = rnd.choice(g.node)
    if choice == 0:
        node.op_type = rnd.choice(["Frob", "", "Add", "Conv", "Loop", "MatMul", "Gather", "TopK"])
    elif choice == 1 and node.input:
        node.input[rnd.randrange(len(node.input))] = rnd.choice(["", "nope", g.node[0].output[0]])
    elif choice == 2:
        name = rnd.choice(["axis", "pads", "kernel_shape", "perm", "to"])
        value = rnd.choice([-(2**40), -3, 0, 7, 2**31, [0, -1], [99, 99]])
        node.attribute.append(helper.make_attribute(name, value))
    elif choice == 3 and g.input[0].type.tensor_type.shape.dim:
        dim = rnd.choice(g.input[0].type.tensor_type.shape.dim)
        dim.dim_value = rnd.choice([0, 1, 3, 10**9, 2**40])
    elif choice == 4:
        g.input[0].type.tensor_type.elem_type = rnd.choice([0, T.STRING, T.BFLOAT16, T.INT64, T.COMPLEX64,
                                                            999])
    elif choice == 5:
        m.opset_import[0].version = rnd.choice([0, 1, 6, 99, -1])
    elif choice == 6 and g.initializer:
        init = rnd.choice(g.initializer)
        if rnd.random() < 0.5:
            init.raw_data = init.raw_data[: rnd.randrange(len(init.raw_data) + 1)]
        else:
            init.dims[0] = rnd.choice([0, 10**12, 5])
    elif choice == 7 and g.initializer:
        init = rnd.choice(g.initializer)
        init.ClearField("raw_data")
        init.data_location = T.EXTERNAL
        e = init.external_data.add()
        e.key, e.value = "location", rnd.choice(["../../etc/passwd", "/etc/passwd", "missing.bin", ""])
    else:
        g.node.remove(node)
    return m.SerializeToString()


def mutant(model: onnx.ModelProto, rnd: random.Random) -> bytes:
    data = model.SerializeToString()
    kind = rnd.randrange(3)
    if kind == 0:
        buf = bytearray(data)
        for _ in range(rnd.randint(1, 4)):
            buf[rnd.randrange(len(buf))] = rnd.randrange(256)
        return bytes(buf)
    if kind == 1:
        return data[: rnd.randrange(len(data))]
    return _proto_mutant(model, rnd)


def try_one(data: bytes, rnd: random.Random) -> str:
    try:
        sess = so.InferenceSession(data, OPTS)
    except sp.SoftIPUError:
        return "refused"
    feeds = {}
    for arg in sess.get_inputs():
        shape = [d if isinstance(d, int) else 2 for d in arg.shape]
        dtype = {"tensor(float)": np.float32, "tensor(int64)": np.int64}.get(arg.type, np.float32)
        feeds[arg.name] = np.ones(shape, dtype)
    try:
        sess.run(None, feeds)
    except sp.SoftIPUError:
        return "run_refused"
    return "ran"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mutants", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rnd = random.Random(args.seed)
    models = seeds()
    counts = {"refused": 0, "run_refused": 0, "ran": 0}
    bad: list[str] = []
    start = time.perf_counter()
    for _ in range(args.mutants):
        data = mutant(rnd.choice(models), rnd)
        try:
            counts[try_one(data, rnd)] += 1
        except Exception as exc:  # noqa: BLE001 - the figure: failures that are not softipu errors
            where = traceback.extract_tb(exc.__traceback__)[-1]
            bad.append(f"{type(exc).__name__}: {str(exc)[:120]} at {where.filename}:{where.lineno}")
    print(json.dumps({"bench": "onnx_fuzz", "mutants": args.mutants, **counts, "not_softipu_errors": len(bad),
                      "examples": sorted(set(bad))[:8], "seconds": round(time.perf_counter() - start, 1)}))


if __name__ == "__main__":
    main()
