"""configure_logging: JSON with journald priorities, console on a TTY, one pipeline."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from glance_cache_agent.driver import Driver
from glance_cache_agent.maintenance.results import try_remove
from glance_cache_agent.service.logs import configure_logging, get_logger

LINE = re.compile(r"^<(\d)>(\{.*\})$")
ANSI = "\x1b["


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    executors = logging.getLogger("apscheduler.executors")
    executors_level = executors.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    executors.setLevel(executors_level)
    logging.captureWarnings(False)
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


def json_lines(stream: io.StringIO) -> list[tuple[int, dict[str, Any]]]:
    """Each line as (priority, object); fails on a line that is not ``<N>{json}``."""
    out = []
    for line in stream.getvalue().splitlines():
        match = LINE.match(line)
        assert match, f"not a prefixed JSON line: {line!r}"
        out.append((int(match.group(1)), json.loads(match.group(2))))
    return out


def test_json_lines_carry_the_syslog_priority_of_their_level() -> None:
    stream = io.StringIO()
    configure_logging("debug", "json", stream)
    log = get_logger("glance_cache_agent.test")
    log.debug("d")
    log.info("i", images=3)
    log.warning("w")
    log.error("e")
    log.critical("c")

    lines = json_lines(stream)
    assert [prio for prio, _ in lines] == [7, 6, 4, 3, 2]
    assert [obj["event"] for _, obj in lines] == ["d", "i", "w", "e", "c"]
    assert [obj["level"] for _, obj in lines] == ["debug", "info", "warning", "error", "critical"]
    info = lines[1][1]
    assert info["images"] == 3
    assert info["logger"] == "glance_cache_agent.test"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", info["timestamp"])


def test_level_filters_ours_and_foreign_records() -> None:
    stream = io.StringIO()
    configure_logging("WARNING", "json", stream)
    get_logger("x").info("dropped")
    logging.getLogger("some.lib").info("dropped too")
    get_logger("x").warning("kept")
    assert [obj["event"] for _, obj in json_lines(stream)] == ["kept"]


def test_foreign_records_go_through_the_same_pipeline() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    with structlog.contextvars.bound_contextvars(task="prune"):
        get_logger("glance_cache_agent.service.scheduler").warning("ours")
        logging.getLogger("apscheduler.scheduler").warning(
            'Run time of job "%s" was missed by %s', "prune", "0:00:02"
        )
        logging.getLogger("some.lib").info("with extra", extra={"images": 7})

    (p1, ours), (p2, theirs), (_, extra) = json_lines(stream)
    assert p1 == p2 == 4
    assert theirs["event"] == 'Run time of job "prune" was missed by 0:00:02'
    assert theirs["logger"] == "apscheduler.scheduler"
    assert theirs["task"] == "prune"
    assert set(ours) - {"event"} == set(theirs) - {"event"}
    assert extra["images"] == 7


def test_apscheduler_per_run_chatter_is_quiet_unless_debug() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    logging.getLogger("apscheduler.executors.default").info('Running job "prune"')
    logging.getLogger("apscheduler.executors.default").error('Job "prune" raised')
    assert [obj["event"] for _, obj in json_lines(stream)] == ['Job "prune" raised']

    configure_logging("debug", "json", stream)
    logging.getLogger("apscheduler.executors.default").info('Running job "clean"')
    assert json_lines(stream)[-1][1]["event"] == 'Running job "clean"'


def _fail_with_secret() -> None:
    secret_password = "s3cr3t-hunter2"
    raise RuntimeError(f"failed after {len(secret_password)} chars")


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_exceptions_render_without_locals(fmt: str) -> None:
    stream = io.StringIO()
    configure_logging("info", fmt, stream)
    try:
        _fail_with_secret()
    except RuntimeError:
        get_logger("x").exception("task failed")
        logging.getLogger("apscheduler.executors.default").exception("Job raised")

    text = stream.getvalue()
    assert "s3cr3t-hunter2" not in text
    assert "RuntimeError" in text
    assert "failed after 14 chars" in text
    if fmt == "json":
        lines = json_lines(stream)
        assert [prio for prio, _ in lines] == [3, 3]
        for _, obj in lines:
            (exc,) = obj["exception"]
            assert exc["exc_type"] == "RuntimeError"
            assert all("locals" not in frame for frame in exc["frames"])
            assert exc["frames"][-1]["name"] == "_fail_with_secret"


def test_auto_is_console_with_colours_on_a_tty() -> None:
    tty = FakeTTY()
    configure_logging("info", "auto", tty)
    get_logger("x").info("hello tty", images=2)
    text = tty.getvalue()
    assert "hello tty" in text
    assert ANSI in text
    assert not text.startswith("<")


def test_auto_is_json_when_not_a_tty() -> None:
    stream = io.StringIO()
    configure_logging("info", "auto", stream)
    get_logger("x").info("hello pipe")
    assert json_lines(stream)[0][1]["event"] == "hello pipe"


def test_forced_console_off_a_tty_has_no_colours() -> None:
    stream = io.StringIO()
    configure_logging("info", "console", stream)
    get_logger("x").info("plain", images=2)
    logging.getLogger("apscheduler.scheduler").warning("Run time of job was missed")
    text = stream.getvalue()
    assert ANSI not in text
    assert "plain" in text
    assert "images=2" in text
    assert "Run time of job was missed" in text
    assert "[apscheduler.scheduler]" in text


def test_json_to_a_tty_when_forced() -> None:
    tty = FakeTTY()
    configure_logging("info", "json", tty)
    get_logger("x").info("forced")
    assert json_lines(tty)[0][1]["event"] == "forced"


def test_configuring_twice_does_not_duplicate_and_switches_stream() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("info", "json", first)
    configure_logging("info", "json", first)
    get_logger("x").info("once")
    assert len(json_lines(first)) == 1

    configure_logging("debug", "json", second)
    get_logger("x").debug("moved")
    logging.getLogger("lib").info("foreign moved")
    assert len(json_lines(first)) == 1
    assert [obj["event"] for _, obj in json_lines(second)] == ["moved", "foreign moved"]
    ours = [h for h in logging.getLogger().handlers if isinstance(h, logging.StreamHandler)]
    assert sum(h.stream is second for h in ours) == 1
    assert not any(h.stream is first for h in ours)


def test_default_stream_is_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json")
    get_logger("x").info("to stderr")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert '"event": "to stderr"' in captured.err


def test_python_warnings_are_logged() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    logging.getLogger("py.warnings").warning("x.py:1: DeprecationWarning: old")
    ((prio, obj),) = json_lines(stream)
    assert prio == 4
    assert obj["logger"] == "py.warnings"


@pytest.mark.parametrize(
    ("level", "fmt", "message"),
    [
        ("verbose", "json", "unknown log level 'verbose'"),
        ("info", "xml", "unknown log format 'xml'"),
    ],
)
def test_bad_level_or_format_is_refused(level: str, fmt: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        configure_logging(level, fmt, io.StringIO())


def test_module_loggers_reach_stdlib_whatever_structlog_global_config() -> None:
    """Loggers are wired to stdlib ``logging`` themselves: a reset (by a test, or a
    host program) of structlog's global configuration does not send them to stdout."""
    structlog.reset_defaults()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        get_logger("glance_cache_agent.test").warning("to stdlib", image_id="a" * 8)
    finally:
        root.removeHandler(handler)
    assert "to stdlib" in stream.getvalue()
    assert "'image_id': 'aaaaaaaa'" in stream.getvalue()


def test_driver_and_maintenance_events_carry_fields_not_formatted_text(
    make_driver: Callable[..., Driver], tmp_path: Path
) -> None:
    """The driver's and maintenance's events are key-value like the agent's: the
    path and the error are JSON fields journald can search, the event is constant."""
    driver = make_driver()
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    image_id = "6f1c0c3e-3b3a-4c1e-9a47-2f0b8d7e5a10"
    assert driver.queue_image(image_id)
    assert not driver.queue_image(image_id)  # the driver logs "already queued"
    directory = tmp_path / "a-directory"
    directory.mkdir()
    assert not try_remove(str(directory), [])  # unlink(2) of a directory fails

    (_, queued), (_, failed) = json_lines(stream)
    assert queued["event"] == "not queueing image: already queued"
    assert queued["image_id"] == image_id
    assert queued["logger"].startswith("glance_cache_agent.driver.")
    assert failed["event"] == "failed to remove file; skipping it"
    assert failed["path"] == str(directory)
    assert "directory" in failed["error"].lower()
