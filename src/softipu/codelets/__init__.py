"""Library vertex types (popops-style codelets), built on ``softipu.graph``'s Vertex contract."""

__all__: list[str] = []
