"""The engine: runs compiled programs on simulated device memory."""

from softipu.engine.engine import Engine, EngineOptions

__all__ = ["Engine", "EngineOptions"]
