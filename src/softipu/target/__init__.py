"""Hardware descriptions: frozen :class:`Target` chips and their presets (``sp.targets``)."""

from softipu.target.targets import BOW, GC2, GC200, Target, ipu_model

__all__ = ["Target", "GC2", "GC200", "BOW", "ipu_model"]
