"""Library vertex types (popops/popnn/poprand-style codelets), built on ``softipu.graph``'s
Vertex contract; each family's module keeps compute and cycle estimate side by side."""

from softipu.codelets.elementwise import BinaryOp, UnaryOp, binary_op_codelet, unary_op_codelet

__all__ = ["BinaryOp", "UnaryOp", "binary_op_codelet", "unary_op_codelet"]
