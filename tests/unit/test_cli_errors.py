"""From an exception to the CLI's error line and exit code: one table, no type chain."""

from __future__ import annotations

import errno

import pytest

from glance_cache_agent.cli.errors import UsageError, failure
from glance_cache_agent.config import ConfigError
from glance_cache_agent.driver import (
    CacheDirectoryError,
    DatabaseLocked,
    DriverError,
    InvalidImageId,
    LockTimeout,
)
from glance_cache_agent.errors import AgentError, ExitCode
from glance_cache_agent.service.locks import LockBusy

IMAGE_ID = "0b4f5b0e-8d2a-4a57-9a0e-6b1f2c3d4e5f"


@pytest.mark.parametrize(
    ("exc", "line", "code"),
    [
        (ConfigError("bad value", path="/etc/a.yaml", line=3), "configuration error: ", 78),
        (UsageError("--max-size: bad size"), "--max-size: bad size", 2),
        (LockBusy("/run/x/maintenance.lock", 42, 1.0), "another maintenance run holds", 75),
        (LockTimeout("/c/locks/glance-x", 2.0), "is held by another process", 75),
        (InvalidImageId("../x", "not a UUID"), "invalid image id '../x': not a UUID", 2),
        (DatabaseLocked("/c/cache.db", "database is locked"), "/c/cache.db: database is locked", 1),
        (CacheDirectoryError("/c: missing"), "/c: missing", 1),
        (OSError(errno.EACCES, "Permission denied", "/c/x"), "Permission denied (/c/x)", 1),
        (OSError(errno.EIO, "Input/output error"), "Input/output error", 1),
    ],
)
def test_known_failures_map_to_their_documented_exit_code(
    exc: Exception, line: str, code: int
) -> None:
    known = failure(exc)
    assert known is not None
    text, exit_code = known
    assert line in text
    assert exit_code == code


def test_agent_errors_name_their_own_exit_code() -> None:
    """A new AgentError subclass needs no edit in the CLI to get its exit code."""

    class Refused(AgentError):
        exit_code = ExitCode.LOCKED
        label = "refused"

    assert failure(Refused("busy")) == ("refused: busy", ExitCode.LOCKED)
    assert issubclass(ConfigError, AgentError) and issubclass(LockBusy, AgentError)


def test_a_new_driver_error_is_a_failure_by_its_base_class() -> None:
    class Unforeseen(DriverError):
        pass

    assert failure(Unforeseen("oops")) == ("oops", ExitCode.FAILED)


def test_anything_else_is_a_bug_not_a_failure() -> None:
    assert failure(KeyError("x")) is None
    assert failure(ValueError("x")) is None
