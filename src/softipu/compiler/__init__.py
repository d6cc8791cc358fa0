"""The compiler: named passes from a graph and programs to an :class:`Executable`."""

from softipu.compiler.executable import CompiledComputeSet, Executable, VertexGroup
from softipu.compiler.passes import PASSES, CompileState, compile_graph

__all__ = ["CompiledComputeSet", "CompileState", "Executable", "PASSES", "VertexGroup", "compile_graph"]
