"""The configuration error every part of the config package raises."""

from __future__ import annotations

from ..errors import AgentError, ExitCode

__all__ = ["ConfigError"]


class ConfigError(AgentError):
    """A configuration problem, located as precisely as we know.

    ``path`` is the YAML or Glance file (None for built-in text), ``line`` is
    1-based, ``key`` the dotted YAML key path (or ``[SECTION] option`` for
    Glance files). The CLI turns this into exit code 78.
    """

    exit_code = ExitCode.CONFIG
    label = "configuration error"

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        line: int | None = None,
        key: str | None = None,
    ) -> None:
        self.path = path
        self.line = line
        self.key = key
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        parts = []
        if self.path is not None:
            parts.append(self.path if self.line is None else f"{self.path}:{self.line}")
        elif self.line is not None:
            parts.append(f"line {self.line}")
        if self.key:
            parts.append(self.key)
        parts.append(self.message)
        return ": ".join(parts)
