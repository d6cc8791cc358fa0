"""Shared fixtures: small graphs on small chips, so multi-tile tests stay fast; op-level tests run
every engine with unwritten memory poisoned, so an op that reads values it never wrote fails."""

from __future__ import annotations

import contextlib
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


@pytest.fixture
def step_fails_after_running(monkeypatch: pytest.MonkeyPatch):
    """``with step_fails_after_running(engine): model(...)``: the engine's runs inside do all their
    work, then raise SoftIPUError("simulated failure") (expected here); the engine runs as before
    after the block. For tests that nothing a failing step wrote is kept."""

    @contextlib.contextmanager
    def failing(engine):
        run = engine.run

        def run_then_fail(index: int = 0) -> None:
            run(index)  # the step ran and updated everything, then something fails
            raise sp.SoftIPUError("simulated failure")

        monkeypatch.setattr(engine, "run", run_then_fail)
        try:
            with pytest.raises(sp.SoftIPUError, match="simulated"):
                yield
        finally:
            monkeypatch.setattr(engine, "run", run)

    return failing
