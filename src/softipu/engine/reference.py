"""The reference interpreter: one vertex at a time, the living definition of what a compute set does.

Slow and plain on purpose. Every vertex reads its inputs from a snapshot taken when the compute
set starts (BSP: no vertex sees another's writes), gets its fields through explicit element
addresses rather than views, and its outputs are written back after every vertex has run.
Tests run it beside the fast path on random graphs and compare every byte.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from softipu.compiler.executable import VertexGroup
from softipu.engine.fast import _codelet_failure
from softipu.engine.interpreter import ProgramInterpreter
from softipu.graph.tensor import Tensor
from softipu.graph.vertex import Direction

__all__ = ["ReferenceInterpreter"]


class ReferenceInterpreter(ProgramInterpreter):
    by_address = True  # cross-replica copies too (engine/replicas.py)

    def execute(self, compute_set_id: int) -> None:
        compiled = self.executable.compute_sets[compute_set_id]
        snapshot = {d: buf.copy() for d, buf in self.storage.buffers.items()}
        writes: list[tuple[Any, np.ndarray, np.ndarray]] = []
        where = f"compute set {compiled.compute_set.name!r}"
        for group in compiled.groups:
            for v in range(group.num_vertices):
                for r in range(self.storage.replicas):
                    writes += self._run_vertex(group, v, r, snapshot, where)
        for dtype, addresses, values in writes:
            self.storage.buffers[dtype][addresses[0], addresses[1]] = values

    def _run_vertex(self, group: VertexGroup, v: int, replica: int,
                    snapshot: dict[Any, np.ndarray], where: str) -> list:
        args: dict[str, Any] = {}
        rows: dict[str, list[np.ndarray]] = {}
        lead = (1,) if self.storage.replicas > 1 else ()  # the contract's (replicas, vertices, n)
        for name, f in group.codelet.fields.items():
            if f.direction is Direction.PARAM:
                args[name] = np.array([[group.fields[name][v]]])
                args[name].flags.writeable = False
                continue
            arrays = []
            for t in group.tensors(name):
                addresses = t.addresses()[v]
                arr = snapshot[t.dtype][replica, addresses].reshape(lead + (1, -1))
                arr.flags.writeable = f.direction.writes
                arrays.append(arr)
            rows[name] = arrays
            args[name] = arrays if isinstance(group.fields[name], tuple) else arrays[0]
        try:
            group.codelet.compute(**args)
        except Exception as exc:
            raise _codelet_failure(group, where, exc) from exc
        out = []
        for name, _ in group.field_items(Direction.OUTPUT, Direction.INOUT):
            for t, arr in zip(group.tensors(name), rows[name], strict=True):
                addresses = t.addresses()[v]
                out.append((t.dtype, (replica, addresses), arr.reshape(-1).copy()))
        return out

    def copy_tensor(self, src: Tensor, dst: Tensor) -> None:
        """Element by element through addresses, independent of the views the fast path uses."""
        buf = self.storage.buffers[src.dtype]
        buf[:, dst.addresses().reshape(-1)] = buf[:, src.addresses().reshape(-1)]
