"""Command-line entry point (the full CLI arrives with the agent)."""

from __future__ import annotations

import sys

from . import __version__


def main(argv: list[str] | None = None) -> int:
    """Print the version; every other command is not yet available."""
    args = sys.argv[1:] if argv is None else argv
    if args in (["--version"], ["-V"]):
        print(f"glance-cache-agent {__version__}")
        return 0
    print(
        "glance-cache-agent: the agent CLI is not yet available (driver core only)", file=sys.stderr
    )
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
