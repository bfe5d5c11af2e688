"""The agent's error base class and its exit codes (DESIGN section 4).

Every error the agent raises on purpose derives from ``AgentError`` and names
its own exit code, so the CLI maps a failure to an exit code by asking the
error rather than by testing a list of types. The driver's errors cannot
derive from it (the driver knows nothing of the agent); ``cli.errors`` maps
them in one table.
"""

from __future__ import annotations

from enum import IntEnum
from typing import ClassVar

__all__ = ["AgentError", "ExitCode"]


class ExitCode(IntEnum):
    """The documented exit codes of every command."""

    OK = 0
    FAILED = 1
    USAGE = 2
    LOCKED = 75  # EX_TEMPFAIL: another maintenance run holds the lock
    CONFIG = 78  # EX_CONFIG


class AgentError(Exception):
    """Base class of the agent's own errors; ``exit_code`` is the CLI's exit status.

    ``label`` prefixes the one error line the CLI prints (e.g.
    ``configuration error: ...``); empty means the message stands alone.
    """

    exit_code: ClassVar[ExitCode] = ExitCode.FAILED
    label: ClassVar[str] = ""

    def describe(self) -> str:
        """The one line the CLI prints after ``glance-cache-agent: ``."""
        return f"{self.label}: {self}" if self.label else str(self)
