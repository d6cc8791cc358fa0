"""Walking programs: one method per program kind, shared by every interpreter.

Subclasses decide how a compute set runs (``run_execute``) and how data moves (``run_copy``);
control flow, functions and printing are the same for all of them.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from softipu.compiler.executable import Executable
from softipu.debug import at
from softipu.engine.replicas import RemoteMemory, cross_replica_copy, remote_copy
from softipu.engine.storage import Storage
from softipu.engine.streams import HostStreams
from softipu.errors import EngineError
from softipu.graph import program as P
from softipu.graph.streams import DataStream
from softipu.graph.tensor import Tensor

__all__ = ["ProgramInterpreter", "RunLog"]

# Trace events kept per engine (for save_trace); later steps are counted, not traced.
TRACE_LIMIT = 200_000


class RunLog:
    """What ran: modeled cycles, how often each step ran, and a timeline for traces."""

    def __init__(self, num_steps: int) -> None:
        self.cycles = 0
        self.runs: list[tuple[int, int]] = []  # (program index, cycles)
        self.step_counts = [0] * num_steps
        self.trace: list[tuple[int, int, int]] = []  # (step index, start cycle, times in a row)
        self.trace_dropped = 0

    def add(self, step: int, cycles: int, times: int = 1) -> None:
        if len(self.trace) < TRACE_LIMIT:
            self.trace.append((step, self.cycles, times))
        else:
            self.trace_dropped += 1
        self.cycles += cycles * times
        self.step_counts[step] += times


class ProgramInterpreter:
    """Runs programs against a storage and host streams, adding up each step's modeled cycles."""

    def __init__(self, executable: Executable, storage: Storage, streams: HostStreams,
                 log: RunLog, out: Any = None) -> None:
        self.executable = executable
        self.storage = storage
        self.streams = streams
        self.log = log
        self.out = out
        self._methods = {kind: getattr(self, f"run_{kind.name.lower()}") for kind in P.ProgramKind}
        self._step_of = executable.step_of
        self._step_cycles = [step.cycles for step in executable.steps]
        self.remote = RemoteMemory(storage.replicas, storage.poison)  # remote buffers' contents

    def run(self, node: P.Program) -> None:
        self._methods[node.kind](node)

    def account(self, node: P.Program) -> None:
        i = self._step_of.get(id(node))
        if i is not None:
            self.log.add(i, self._step_cycles[i])

    # -- control flow --------------------------------------------------------------------------
    def run_sequence(self, node: P.Sequence) -> None:
        run = self.run
        for child in node.programs:
            run(child)

    def run_repeat(self, node: P.Repeat) -> None:
        whole = getattr(node, "whole", None)  # a collective's ring run whole (collectives/whole.py)
        if whole is not None and not self.by_address and whole(self.storage):
            for _ in range(node.count):  # the steps' cycles and counts, as if they ran
                self.account(node)
                self.account_tree(node.body)
            return
        for _ in range(node.count):
            self.account(node)
            self.run(node.body)

    def account_tree(self, node: P.Program) -> None:
        self.account(node)
        for child in node.children():
            self.account_tree(child)

    def run_repeat_while(self, node: P.RepeatWhileTrue) -> None:
        while True:
            self.run(node.condition)
            self.account(node)
            if bool(self.scalar(node.predicate, node)) != node.run_while:
                return
            self.run(node.body)

    def run_if(self, node: P.If) -> None:
        self.account(node)
        if self.scalar(node.predicate, node):
            self.run(node.then)
        elif node.else_ is not None:
            self.run(node.else_)

    def run_switch(self, node: P.Switch) -> None:
        self.account(node)
        branch = node.cases.get(int(self.scalar(node.control, node)), node.default)
        if branch is not None:
            self.run(branch)

    def run_call(self, node: P.Call) -> None:
        self.account(node)
        self.run(self.executable.functions[node.function.id])

    def run_write_undef(self, node: P.WriteUndef) -> None:
        """Values stay as they are (liveness is the memory planner's business), or become poison
        under ``debug.poisonUnwritten``."""
        self.storage.undefine(node.tensor)

    def run_sync(self, node: P.Sync) -> None:
        """Replicas and tiles already run in lockstep here; syncs only cost cycles."""
        self.account(node)

    def run_cycle_count(self, node: P.CycleCount) -> None:
        start = self.log.cycles
        if node.body is not None:
            self.run(node.body)
        value = self.log.cycles - start if node.body is not None else self.log.cycles
        self.storage.write(node.counter, np.array([value & 0xFFFFFFFF, value >> 32], np.uint32))

    def run_print_tensor(self, node: P.PrintTensor) -> None:
        self.account(node)
        values = self.storage.read(node.tensor)
        title = node.title or node.tensor.name
        print(f"{title}: {np.array2string(values, threshold=64)}", file=self.out or sys.stdout)

    # -- data ----------------------------------------------------------------------------------
    def run_copy(self, node: P.Copy) -> None:
        self.account(node)
        src, dst, where = node.src, node.dst, at(node.location)
        if isinstance(src, DataStream):
            data = self.streams.pull(src, where).reshape((self.storage.replicas,) + dst.shape)
            self.storage.scatter(dst, data, replica_axis=True)
        elif isinstance(dst, DataStream):
            self.streams.push(dst, self.storage.gather(src, replica_axis=True), where)
        else:
            self.copy_tensor(src, dst)

    def copy_tensor(self, src: Tensor, dst: Tensor) -> None:
        storage = self.storage
        if src.index is None and dst.index is None:  # view to view, in one pass
            # (numpy copies through a buffer where the two overlap)
            storage.view(dst, writeable=True, replica_axis=True)[...] = storage.view(
                src, writeable=False, replica_axis=True)
            return
        storage.scatter(dst, storage.gather(src, replica_axis=True), replica_axis=True)

    def run_execute(self, node: P.Execute) -> None:
        self.account(node)
        self.execute(node.compute_set.id)

    def run_cross_replica_copy(self, node: P.CrossReplicaCopy) -> None:
        """Data moved between replicas along storage's replica axis (``engine/replicas.py``)."""
        self.account(node)
        cross_replica_copy(self.storage, node, by_address=self.by_address)

    def run_remote_copy(self, node: P.RemoteCopy) -> None:
        """Rows to or from a remote buffer in Streaming Memory (``engine/replicas.py``)."""
        self.account(node)
        remote_copy(self.storage, self.remote, node)

    by_address = False  # the reference interpreter moves data through element addresses

    def execute(self, compute_set_id: int) -> None:
        """Run every vertex of a compute set (how is the subclass's business)."""
        raise NotImplementedError

    def scalar(self, t: Tensor, node: P.Program) -> Any:
        """The value of a 1-element tensor, which every replica must agree on."""
        values = self.storage.gather(t, replica_axis=True).reshape(-1)
        if values.size > 1 and np.any(values != values[0]):
            raise EngineError(
                f"{node.kind.value}{at(node.location)}: replicas disagree on {t.name} "
                f"({values.tolist()}); softipu runs replicas in lockstep, so control flow must be "
                "the same on every replica"
            )
        return values[0].item()
