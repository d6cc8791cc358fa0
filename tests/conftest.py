"""Shared fixtures: small graphs on small chips, so multi-tile tests stay fast; op-level tests run
every engine with unwritten memory poisoned, so an op that reads values it never wrote fails."""

from __future__ import annotations

import json

import pytest

import softipu as sp

# Test files whose engines run with ``debug.poisonUnwritten`` (their chips are small, so filling
# memory with poison instead of lazily committed zeros costs nothing measurable).
POISONED = ("test_ops", "test_correctness_review", "test_graph", "test_tensor", "test_frontend", "test_training")


@pytest.fixture(autouse=True)
def poison_unwritten_memory(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """NaN / 0xDEADBEEF in memory nothing wrote, for the engines of the files in ``POISONED``."""
    if request.path.name.startswith(POISONED):
        monkeypatch.setenv(sp.EngineOptions.ENVIRONMENT, json.dumps({"debug.poisonUnwritten": True}))


@pytest.fixture
def graph() -> sp.Graph:
    """A fresh graph on a 4-tile ipu_model."""
    return sp.Graph(sp.targets.ipu_model(tiles=4))
