"""Library vertex types (popops-style codelets), built on ``softipu.graph``'s Vertex contract."""

from softipu.codelets.elementwise import BinaryOp, UnaryOp, binary_op_codelet, unary_op_codelet

__all__ = ["BinaryOp", "UnaryOp", "binary_op_codelet", "unary_op_codelet"]
