"""Engine options every frontend starts from: what PopART does by default, since PopTorch and
PopART programs reach Poplar through PopART (the Poplar-level ``sp.Engine`` keeps Poplar's own
defaults).

* ``opt.enableOutlining``: PopART's ``SessionOptions.enableOutlining`` is true by default, so a
  repeated subgraph (a transformer's layers) keeps one copy of its code
  (``compiler/outline.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["ENGINE_DEFAULTS", "engine_options"]

ENGINE_DEFAULTS: Mapping[str, Any] = {"opt.enableOutlining": True}


def engine_options(given: Mapping[str, Any]) -> dict[str, Any]:
    """The engine options a frontend compiles with: the defaults, overridden by ``given``."""
    return {**ENGINE_DEFAULTS, **given}
