"""A test whose tool is missing: skipped on a developer's machine, failed in CI.

``.ci/run`` installs every tool the suite needs, so under ``CI`` a missing one
means the run would otherwise pass without testing anything.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def ci() -> bool:
    """True when running in CI (``CI`` set to anything but an explicit no)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no", "off")


def unavailable(reason: str, what: str = "these tests") -> NoReturn:
    """Skip the test for ``reason``; in CI, where the tool must exist, fail it."""
    if ci():
        pytest.fail(f"CI must run {what}: {reason}", pytrace=False)
    pytest.skip(reason)
