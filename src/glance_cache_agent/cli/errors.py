"""From an exception to the one error line and the exit code (DESIGN section 4).

The agent's own errors carry their exit code (``AgentError.exit_code``); the
driver's cannot (the driver knows nothing of the agent), so ``DRIVER_EXIT_CODES``
maps them here, in one table. An exception found in neither is a bug and is
re-raised with its traceback.
"""

from __future__ import annotations

from ..driver import DriverError, InvalidImageId, LockTimeout
from ..driver.errors import (
    DatabaseUnavailable,
    GlanceSchemaMismatch,
    NodeNotRegistered,
    UnsupportedDatabase,
)
from ..errors import AgentError, ExitCode
from ..redact import mask_text

__all__ = ["DRIVER_EXIT_CODES", "UsageError", "failure"]


class UsageError(AgentError):
    """Bad command-line input found after parsing (exit 2)."""

    exit_code = ExitCode.USAGE


#: exit codes of the driver's errors and of plain OS errors; an exception's
#: classes are looked up along its MRO, so the most specific entry wins
DRIVER_EXIT_CODES: dict[type[BaseException], ExitCode] = {
    LockTimeout: ExitCode.LOCKED,
    InvalidImageId: ExitCode.USAGE,
    # the database the config names is not one the agent can work on: fix the config
    GlanceSchemaMismatch: ExitCode.CONFIG,
    NodeNotRegistered: ExitCode.CONFIG,
    UnsupportedDatabase: ExitCode.CONFIG,
    # the server is down or refuses the login: a failed run, retried on schedule
    DatabaseUnavailable: ExitCode.FAILED,
    DriverError: ExitCode.FAILED,
    OSError: ExitCode.FAILED,
}


def _describe(exc: BaseException) -> str:
    """The error line's text: an OSError as ``strerror (filename)``, else ``str``."""
    if isinstance(exc, AgentError):
        return exc.describe()
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror or exc}{where}"
    return str(exc)


def _exit_code(exc: BaseException) -> ExitCode | None:
    if isinstance(exc, AgentError):
        return exc.exit_code
    for cls in type(exc).__mro__:
        if cls in DRIVER_EXIT_CODES:
            return DRIVER_EXIT_CODES[cls]
    return None


def failure(exc: BaseException) -> tuple[str, ExitCode] | None:
    """The error line and exit code for ``exc``; None when it is not a known failure.

    A database URL quoted in the line never shows its password.
    """
    code = _exit_code(exc)
    return None if code is None else (mask_text(_describe(exc)), code)
