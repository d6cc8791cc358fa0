"""``softipu.poptorch``: PopTorch's API on a simulated IPU (defined in ``softipu.frontends.poptorch``
and its sibling modules).

An existing PopTorch script runs with only its import changed::

    import softipu.poptorch as poptorch

``docs/poptorch_coverage.md`` lists every public name of PopTorch's Python API and what softipu does
with it. ``poptorch.enums`` is importable as PopTorch's code imports it.
"""

from softipu.frontends import poptorch as _frontend
from softipu.frontends import poptorch_enums as enums  # noqa: F401 - poptorch.enums.X (and softipu.poptorch.enums)
from softipu.frontends.poptorch import *  # noqa: F403 - PopTorch's whole public surface
from softipu.frontends.torch import optim  # noqa: F401 - poptorch.optim.SGD... (as softipu.poptorch.optim)

__all__ = [name for name in _frontend.__all__ if not name.startswith("_")] + ["enums", "optim"]
