"""softipu.log: SOFTIPU_LOG_LEVEL / SOFTIPU_LOG_DEST, and the progress line by stage."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys

import pytest

from softipu import log


@pytest.fixture
def softipu_logger():
    logger = logging.getLogger("softipu")
    level, handlers = logger.level, list(logger.handlers)
    yield logger
    for h in list(logger.handlers):
        if h not in handlers:
            logger.removeHandler(h)
            h.close()
    logger.setLevel(level)


@pytest.mark.parametrize(("name", "level"), [("ERR", logging.ERROR), ("WARN", logging.WARNING),
                                             ("INFO", logging.INFO), ("DEBUG", logging.DEBUG),
                                             ("TRACE", 5), ("trace", 5), ("warning", logging.WARNING)])
def test_levels_follow_poptorch_names(softipu_logger, name, level):
    log.configure(name, io.StringIO())
    assert softipu_logger.level == level
    assert logging.getLevelName(5) == "TRACE"


def test_a_file_destination_gets_messages_at_and_above_the_level(softipu_logger, tmp_path):
    dest = tmp_path / "softipu.log"
    log.configure_from_env({"SOFTIPU_LOG_LEVEL": "INFO", "SOFTIPU_LOG_DEST": str(dest)})
    child = logging.getLogger("softipu.frontends.torch.cache")
    child.debug("not this")
    child.info("executable cache hit %s", "abc")
    log.configure_from_env({"SOFTIPU_LOG_LEVEL": "ERR", "SOFTIPU_LOG_DEST": str(dest)})  # replaces
    child.warning("nor this")
    for h in softipu_logger.handlers:
        h.flush()
    lines = dest.read_text().splitlines()
    assert len(lines) == 1
    assert "INFO" in lines[0] and "softipu.frontends.torch.cache: executable cache hit abc" in lines[0]


def test_unset_variables_leave_logging_alone(softipu_logger):
    before = list(softipu_logger.handlers), softipu_logger.level
    log.configure_from_env({})
    assert (list(softipu_logger.handlers), softipu_logger.level) == before


def test_a_bad_level_is_reported_not_raised(softipu_logger, capsys):
    log.configure_from_env({"SOFTIPU_LOG_LEVEL": "LOUD"})
    err = capsys.readouterr().err
    assert "LOUD" in err and "ERR, WARN, INFO, DEBUG, TRACE" in err
    with pytest.raises(ValueError, match="unknown softipu log level"):
        log.configure("LOUD")


def test_the_environment_is_read_when_softipu_is_imported(tmp_path):
    env = dict(os.environ, SOFTIPU_LOG_LEVEL="DEBUG", SOFTIPU_LOG_DEST="stdout")
    code = "import logging, softipu; logging.getLogger('softipu.engine').debug('hello %d', 7)"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "DEBUG" in done.stdout and "softipu.engine: hello 7" in done.stdout


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def bar(stream: io.StringIO, clock: Clock) -> log.Progress:
    return log.Progress("Bert", ("export", "lower", "compile", "load"), stream=stream, enabled=True,
                        clock=clock)


def test_progress_draws_stages_after_a_second_and_ends_with_the_times():
    stream, clock = io.StringIO(), Clock()
    with bar(stream, clock) as b:
        clock.now += 0.5
        b.draw()
        assert stream.getvalue() == ""  # quick jobs stay silent
        clock.now += 1.0
        log.progress_stage("lower")  # from deep inside the job: finds this bar
        assert stream.getvalue().endswith("softipu: compiling Bert 1.5s: export 1.5s | [lower 0.0s] | compile | load")
        clock.now += 2.0
        b.stage("compile")
        log.progress_detail("plan_memory")  # a compiler pass, shown beside its stage
        clock.now += 4.0
        b.draw()
        assert stream.getvalue().endswith("[compile 4.0s: plan_memory] | load")
        b.stage("load")
        clock.now += 0.25
    final = stream.getvalue().split("\r\x1b[2K")[-1]
    assert final == "softipu: done in Bert 7.8s: export 1.5s | lower 2.0s | compile 4.0s | load 0.2s\n"
    log.progress_stage("export")  # no job in progress: nothing happens
    assert stream.getvalue().split("\r\x1b[2K")[-1] == final


def test_a_failed_job_clears_its_line():
    stream, clock = io.StringIO(), Clock()
    with pytest.raises(RuntimeError), bar(stream, clock) as b:
        clock.now += 2.0
        b.draw()
        raise RuntimeError("lowering failed")
    assert stream.getvalue().endswith("\r\x1b[2K")
    assert b.finished


def test_no_progress_in_a_pipe_under_pytest_or_when_turned_off(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert not log.progress_enabled(io.StringIO())  # a pipe or a file
    assert not log.progress_enabled(Tty())  # under pytest (PYTEST_CURRENT_TEST is set)
    monkeypatch.delenv("PYTEST_CURRENT_TEST")
    monkeypatch.delenv("CI", raising=False)
    assert log.progress_enabled(Tty())
    monkeypatch.setenv("SOFTIPU_PROGRESS", "0")
    assert not log.progress_enabled(Tty())


def test_the_torch_frontend_marks_its_stages(monkeypatch):
    torch = pytest.importorskip("torch")
    import softipu as sp
    import softipu.torch as st
    from softipu.frontends.torch import runtime

    bars: list[log.Progress] = []

    def recording(name, stages):
        bars.append(log.Progress(name, stages, stream=io.StringIO(), enabled=False))
        return bars[-1]

    monkeypatch.setattr(runtime, "progress_task", recording)
    model = st.inference_model(torch.nn.Linear(4, 3), st.Options(target=sp.targets.ipu_model(tiles=4)))
    model(torch.randn(2, 4))
    (bar,) = bars
    assert bar.finished and list(bar.times) == ["export", "lower", "compile", "load"]


def test_options_stored_without_effect_are_logged_at_info(caplog):
    pytest.importorskip("torch")
    from softipu.frontends.torch.options import warn_unused

    with caplog.at_level(logging.INFO, logger="softipu"), pytest.warns(UserWarning):
        warn_unused(["h8.test_option_never_used"])
    assert "option(s) stored without effect: h8.test_option_never_used" in caplog.text


def test_a_plain_engine_compile_has_a_progress_line_by_stage(monkeypatch):
    """sp.Engine(graph, programs) draws ``compile | load`` on a terminal (drawn here into a string
    with a clock that jumps a second at each reading, so the line appears at once)."""
    import softipu as sp
    from softipu import program as P
    from softipu.engine import engine as engine_module

    stream, bars = io.StringIO(), []

    class Jumps(Clock):
        def __call__(self) -> float:
            self.now += 1.0
            return self.now

    def terminal(name, stages):
        bars.append(log.Progress(name, stages, stream=stream, enabled=True, clock=Jumps()))
        return bars[-1]

    monkeypatch.setattr(log, "progress_task", terminal)
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    x = g.add_variable(sp.float32, (8,), name="x")
    g.set_tile_mapping(x, 0)
    assert engine_module.progress_job is log.progress_job
    sp.Engine(g, P.Sequence(P.Copy(x, x)))
    (b,) = bars
    assert b.finished and b.name == f"Engine on {g.target.name}" and list(b.times) == ["compile", "load"]
    final = stream.getvalue().split("\r\x1b[2K")[-1]
    assert final.startswith(f"softipu: done in Engine on {g.target.name} ") and final.endswith("s\n")
    assert " | load " in final and ": compile " in final
    # Inside a job already in progress (a model's compile), the engine adds no bar of its own.
    with log.Progress("Bert", ("export", "compile"), stream=io.StringIO(), enabled=False) as outer:
        outer.stage("compile")
        sp.Engine(g, P.Sequence(P.Copy(x, x)))
        assert outer.current == "compile"
    assert len(bars) == 1
    # Under pytest (and in a pipe) the real bar never draws.
    assert not log.Progress("Engine", ("compile", "load")).enabled
