"""Reading an ONNX model: bytes or a path -> a checked, shape-inferred ``ModelProto``.

Every failure is a :class:`~softipu.frontends.onnx.errors.OnnxModelError` naming the file and what
to do: a truncated or corrupt file, an opset newer than the ``onnx`` package knows, an external
data file whose path leaves the model's folder (checked BEFORE anything is read, so no byte outside
the folder is ever opened), a tensor bigger than the host's memory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from softipu.frontends.onnx.errors import OnnxModelError

__all__ = ["IPU_NUMBERS", "PIPELINE_STAGES", "load_model", "MAX_TENSOR_BYTES", "OLDEST_OPSET", "to_numpy"]

OLDEST_OPSET = 7  # older models are converted up to this opset (onnx's version converter)
MAX_TENSOR_BYTES = 16 << 30  # one initializer bigger than this is refused before it is read


def load_model(model: Any, *, check: bool = True) -> tuple[onnx.ModelProto, str]:
    """``(model, label)``: a ModelProto from a path, bytes or a ModelProto, checked and with its
    shapes inferred; ``label`` names it in errors (the file name, or "<bytes>")."""
    try:
        return _load(model, check)
    except OnnxModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - a malformed model trips onnx in many ways: one clear error
        raise OnnxModelError(f"the ONNX model is malformed ({type(exc).__name__}: {_first_line(exc)}); "
                             "export it again") from exc


def _load(model: Any, check: bool) -> tuple[onnx.ModelProto, str]:
    folder: Path | None = None
    if isinstance(model, onnx.ModelProto):
        proto, label = model, "<ModelProto>"
    elif isinstance(model, (bytes, bytearray, memoryview)):
        proto, label = _parse(bytes(model), "<bytes>"), "<bytes>"
    elif isinstance(model, (str, os.PathLike)):
        path = Path(model)
        label = str(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise OnnxModelError(f"cannot read ONNX model {label}: {exc.strerror or exc}") from None
        proto = _parse(data, label)
        folder = path.resolve().parent
    else:
        raise OnnxModelError(f"an ONNX model is a path, bytes or an onnx.ModelProto, got "
                             f"{type(model).__name__}")
    _strip_annotations(proto)
    _load_external(proto, folder, label)
    _check_sizes(proto, label)
    proto = _convert_opset(proto, label)
    if check:
        try:
            onnx.checker.check_model(proto)
        except (onnx.checker.ValidationError, ValueError) as exc:
            raise OnnxModelError(f"ONNX model {label} is not valid: {_first_line(exc)}") from None
    try:
        proto = onnx.shape_inference.infer_shapes(proto, strict_mode=False)
    except Exception as exc:  # noqa: BLE001 - onnx raises several unrelated types here
        raise OnnxModelError(f"ONNX shape inference failed on {label}: {_first_line(exc)}") from None
    return proto, label


def _parse(data: bytes, label: str) -> onnx.ModelProto:
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends
        raise OnnxModelError(f"{label} is not an ONNX model (truncated or corrupt protobuf: "
                             f"{_first_line(exc)}); export it again") from None
    if not proto.graph.node and not proto.graph.output:
        raise OnnxModelError(f"{label} holds no ONNX graph (an empty or non-ONNX file)")
    return proto


IPU_NUMBERS = "softipu.ipu_numbers"  # metadata: {a node's first output: its __ipu_number}
PIPELINE_STAGES = "softipu.pipeline_stages"  # metadata: {a node's first output: its __pipeline_stage}


def _strip_annotations(proto: onnx.ModelProto) -> None:
    """PopART's placement annotations (``__ipu_number``...) are not ONNX attributes: the checker
    would refuse them. They are dropped from the nodes; each node's ``__ipu_number`` (its virtual
    graph) and ``__pipeline_stage`` are kept in the model's metadata (:data:`IPU_NUMBERS`,
    :data:`PIPELINE_STAGES`) for the lowering and the training session."""
    kept: dict[str, dict[str, int]] = {"__ipu_number": {}, "__pipeline_stage": {}}
    for node in proto.graph.node:
        keep = [a for a in node.attribute if not str(a.name).startswith("__")]
        if len(keep) != len(node.attribute):
            for a in node.attribute:
                if a.name in kept and node.output:
                    kept[a.name][node.output[0]] = int(a.i)
            del node.attribute[:]
            node.attribute.extend(keep)
    pairs = ((IPU_NUMBERS, "__ipu_number"), (PIPELINE_STAGES, "__pipeline_stage"))
    props = {key: json.dumps(kept[attr]) for key, attr in pairs if kept[attr]}
    if props:
        onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props}, **props})


def _all_tensors(proto: onnx.ModelProto) -> list[onnx.TensorProto]:
    """Every tensor of the model: initializers (sparse ones too) and attribute tensors of the graph,
    of its subgraphs (If, Loop, Scan bodies) and of its functions. NOTE: any of them may name an
    external file, and onnx reads one it meets later relative to the current folder, not the model's."""
    found: list[onnx.TensorProto] = []
    _graph_tensors(proto.graph, found)
    for f in proto.functions:
        _node_tensors(f.node, found)
    return found


def _graph_tensors(graph: onnx.GraphProto, found: list[onnx.TensorProto]) -> None:
    found += graph.initializer
    for s in graph.sparse_initializer:
        found += (s.values, s.indices)
    _node_tensors(graph.node, found)


def _node_tensors(nodes: Any, found: list[onnx.TensorProto]) -> None:
    for node in nodes:
        for a in node.attribute:
            found += [a.t] if a.HasField("t") else []
            found += a.tensors
            for s in [a.sparse_tensor] if a.HasField("sparse_tensor") else []:
                found += (s.values, s.indices)
            for s in a.sparse_tensors:
                found += (s.values, s.indices)
            for g in [a.g] if a.HasField("g") else []:
                _graph_tensors(g, found)
            for g in a.graphs:
                _graph_tensors(g, found)


def _external_tensors(proto: onnx.ModelProto) -> list[onnx.TensorProto]:
    return [t for t in _all_tensors(proto) if t.data_location == onnx.TensorProto.EXTERNAL]


def _load_external(proto: onnx.ModelProto, folder: Path | None, label: str) -> None:
    """Read external data files, each only after checking it lies inside the model's folder."""
    tensors = _external_tensors(proto)
    if not tensors:
        return
    if folder is None:
        raise OnnxModelError(f"ONNX model {label} keeps tensor {tensors[0].name!r} in an external "
                             "file: load it from its path (not bytes) so the file can be found")
    for t in tensors:
        info = {e.key: e.value for e in t.external_data}
        location = info.get("location", "")
        target = (folder / location).resolve()
        if not location or os.path.isabs(location) or not target.is_relative_to(folder):
            raise OnnxModelError(f"tensor {t.name!r} of {label} names external data {location!r}, "
                                 f"outside the model's folder {folder}: softipu reads external data "
                                 "only from the model's folder; move the file next to the model")
        if not target.is_file():
            raise OnnxModelError(f"tensor {t.name!r} of {label}: external data file {location!r} "
                                 f"not found in {folder}")
        offset, length = int(info.get("offset", 0) or 0), info.get("length")
        size = target.stat().st_size
        want = int(length) if length else size - offset
        if offset < 0 or want < 0 or offset + want > size:
            raise OnnxModelError(f"tensor {t.name!r} of {label}: external data {location!r} is "
                                 f"{size} bytes, too short for offset {offset} + length {want}")
        with open(target, "rb") as f:
            f.seek(offset)
            t.raw_data = f.read(want)
        del t.external_data[:]
        t.data_location = onnx.TensorProto.DEFAULT


def _check_sizes(proto: onnx.ModelProto, label: str) -> None:
    for t in _all_tensors(proto):
        count = int(np.prod([max(int(d), 0) for d in t.dims], dtype=np.float64))
        itemsize = _itemsize(t.data_type)
        if count * itemsize > MAX_TENSOR_BYTES:
            raise OnnxModelError(f"initializer {t.name!r} of {label} has dims {list(t.dims)}: "
                                 f"{count * itemsize / 2**30:.1f} GiB, more than the host can hold "
                                 f"({MAX_TENSOR_BYTES >> 30} GiB per tensor)")


def _itemsize(data_type: int) -> int:
    try:
        return int(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type)).itemsize)
    except Exception:  # noqa: BLE001 - an unknown or sub-byte type
        return 1


def _default_opset(proto: onnx.ModelProto) -> int:
    for o in proto.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    return 0


def _convert_opset(proto: onnx.ModelProto, label: str) -> onnx.ModelProto:
    version = _default_opset(proto)
    newest = onnx.defs.onnx_opset_version()
    if version > newest:
        raise OnnxModelError(f"ONNX model {label} uses opset {version}; the installed onnx package "
                             f"knows opsets up to {newest}: export with opset <= {newest} (or "
                             "upgrade onnx)")
    if 0 < version < OLDEST_OPSET:
        try:
            return onnx.version_converter.convert_version(proto, OLDEST_OPSET)
        except Exception as exc:  # noqa: BLE001
            raise OnnxModelError(f"ONNX model {label} uses opset {version}; converting it to opset "
                                 f"{OLDEST_OPSET} failed: {_first_line(exc)}") from None
    return proto


def to_numpy(t: onnx.TensorProto, label: str = "") -> np.ndarray:
    """An initializer or attribute tensor as a numpy array (clear error on a broken one)."""
    try:
        return numpy_helper.to_array(t)
    except Exception as exc:  # noqa: BLE001
        raise OnnxModelError(f"tensor {t.name!r}{' of ' + label if label else ''} cannot be read: "
                             f"{_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
