"""The command line: ``glance-cache-agent = glance_cache_agent.cli:main``.

``parser`` builds the argument parser, ``commands`` holds one module per
family of commands, ``render`` the human output, ``output`` the JSON/text
switch, ``errors`` the mapping from exceptions to exit codes and ``app``
ties them together in ``main``.
"""

from __future__ import annotations

from ..errors import ExitCode
from .app import main
from .parser import build_parser

__all__ = ["EXIT_FAILED", "EXIT_OK", "ExitCode", "build_parser", "main"]

#: exit codes by their old names, for callers that compare ``main``'s result
EXIT_OK = ExitCode.OK
EXIT_FAILED = ExitCode.FAILED
