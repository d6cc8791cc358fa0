"""Pricing a program without running it: the estimate-only engine's interpreter.

Without data, control flow cannot be decided, so the price is static: a ``Repeat`` costs its
count times its body; an ``If`` or ``Switch`` the dearer branch (an upper bound); a
``RepeatWhileTrue`` the body ``while_iterations`` times (an option). Nothing is unrolled, so a
loop of a billion turns prices as fast as one, and cost grows with program size, not data size.
"""

from __future__ import annotations

from collections import Counter

from softipu.compiler.executable import Executable
from softipu.graph import program as P

__all__ = ["StaticCost"]


class StaticCost:
    """Cycles and step execution counts of a program, from the executable's step costs."""

    def __init__(self, executable: Executable, while_iterations: int) -> None:
        self.executable = executable
        self.while_iterations = while_iterations
        self._step_cycles = [s.cycles for s in executable.steps]
        self._memo: dict[int, tuple[int, Counter]] = {}

    def cost(self, node: P.Program) -> tuple[int, Counter]:
        key = id(node)
        if key not in self._memo:
            self._memo[key] = getattr(self, f"cost_{node.kind.name.lower()}", self._leaf)(node)
        return self._memo[key]

    def _own(self, node: P.Program, times: int = 1) -> tuple[int, Counter]:
        i = self.executable.step_of.get(id(node))
        if i is None:
            return 0, Counter()
        return self._step_cycles[i] * times, Counter({i: times})

    def _leaf(self, node: P.Program) -> tuple[int, Counter]:
        return self._own(node)

    @staticmethod
    def _add(*parts: tuple[int, Counter], times: int = 1) -> tuple[int, Counter]:
        cycles, counts = 0, Counter()
        for c, n in parts:
            cycles += c * times
            for k, v in n.items():
                counts[k] += v * times
        return cycles, counts

    def cost_sequence(self, node: P.Sequence) -> tuple[int, Counter]:
        return self._add(*(self.cost(p) for p in node.programs))

    def cost_repeat(self, node: P.Repeat) -> tuple[int, Counter]:
        return self._add(self._own(node), self.cost(node.body), times=node.count)

    def cost_repeat_while(self, node: P.RepeatWhileTrue) -> tuple[int, Counter]:
        test = self._add(self.cost(node.condition), self._own(node))
        turns = self._add(test, self.cost(node.body), times=self.while_iterations)
        return self._add(turns, test)

    def cost_if(self, node: P.If) -> tuple[int, Counter]:
        branches = [self.cost(b) for b in node.children()] or [(0, Counter())]
        return self._add(self._own(node), max(branches, key=lambda b: b[0]))

    cost_switch = cost_if

    def cost_call(self, node: P.Call) -> tuple[int, Counter]:
        return self._add(self._own(node), self.cost(self.executable.functions[node.function.id]))

    def cost_cycle_count(self, node: P.CycleCount) -> tuple[int, Counter]:
        return self.cost(node.body) if node.body is not None else (0, Counter())
