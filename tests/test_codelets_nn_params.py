"""The nn codelets read a vertex group's geometry params as one value each: every vertex of the group
must carry the same value, and a group that does not is a CodeletError, not a silent first value."""

from __future__ import annotations

import numpy as np
import pytest

from softipu.codelets.nn._common import _int_params, _param
from softipu.errors import CodeletError


def test_group_params_read_as_python_ints_and_only_those_present():
    params = {"H": np.full((3, 1), 8, np.int32), "W": np.int32(5), "kh": np.array([[2], [2], [2]], np.int32)}
    got = _int_params(params, ("H", "W", "kh", "sw"))
    assert got == {"H": 8, "W": 5, "kh": 2} and all(type(v) is int for v in got.values())
    assert _int_params(params, ("sw",)) == {}
    assert got == {k: int(_param(np.asarray(params[k]))) for k in got}  # the one-param reader agrees


def test_a_group_whose_vertices_disagree_is_refused():
    params = {"H": np.full((3, 1), 8, np.int32), "row0": np.array([[0], [4], [0]], np.int32)}
    with pytest.raises(CodeletError, match="one param value per vertex group"):
        _int_params(params, ("H", "row0"))
    with pytest.raises(CodeletError, match="one param value per vertex group"):
        _param(params["row0"])
