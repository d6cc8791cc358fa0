"""Hardware descriptions: frozen :class:`Target` chips and their presets (``sp.targets``)."""

from softipu.target.targets import BOW, C600, GC2, GC200, Target, ipu_model

__all__ = ["Target", "GC2", "GC200", "BOW", "C600", "ipu_model"]
