"""``poptorch.enums``: PopTorch's enumerations, importable as PopTorch's code imports them
(``from softipu.poptorch.enums import OutputMode``)."""

from softipu.frontends.poptorch_enums import *  # noqa: F403
from softipu.frontends.poptorch_enums import __all__  # noqa: F401
