"""Human-readable sizes, ages and tables."""

from __future__ import annotations

import pytest

from glance_cache_agent.cli.render import table
from glance_cache_agent.config import age, iec


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (10 * 1024**3, "10.0 GiB"),
    ],
)
def test_iec(size: int, text: str) -> None:
    assert iec(size) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "-"),
        (-5, "in the future"),
        (0, "0s"),
        (59, "59s"),
        (60, "1m"),
        (5400, "1h30m"),
        (86400, "1d"),
        (90000, "1d1h"),
    ],
)
def test_age(seconds: float | None, text: str) -> None:
    assert age(seconds) == text


def test_table_aligns_columns() -> None:
    out = table(["ID", "SIZE"], [["a", "1 B"], ["long-id", "10.0 GiB"]], right=(1,))
    assert out.splitlines() == ["ID           SIZE", "a             1 B", "long-id  10.0 GiB"]
