"""Shared fixtures: small graphs on small chips, so multi-tile tests stay fast."""

from __future__ import annotations

import pytest

import softipu as sp


@pytest.fixture
def graph() -> sp.Graph:
    """A fresh graph on a 4-tile ipu_model."""
    return sp.Graph(sp.targets.ipu_model(tiles=4))
