"""Sizes and durations: the syntax operators write and the text they read.

One module for both directions so the units a config accepts and the units
the agent prints cannot drift apart. Parsers take YAML values (or CLI
strings) and return bytes (int) or seconds (float), raising ValueError with
the message an operator sees; formatters come in two strengths: exact
(``format_size``/``format_duration``, which parse back to the same value)
and approximate (``iec``/``age``, for status lines and tables).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from decimal import Decimal, localcontext
from itertools import pairwise

__all__ = [
    "DURATION_UNITS",
    "MAX_DURATION",
    "MAX_SIZE",
    "NUMBER",
    "SIZE_UNITS",
    "age",
    "format_duration",
    "format_size",
    "human_size",
    "iec",
    "parse_duration",
    "parse_size",
    "show",
]

#: Case-sensitive size units. Single letters (K, M, G, ...) are refused as
#: ambiguous: ``10G`` means 10*1000**3 to some tools and 10*1024**3 to others.
SIZE_UNITS: dict[str, int] = {
    "B": 1,
    "kB": 1000,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
    "PB": 1000**5,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
    "TiB": 1024**4,
    "PiB": 1024**5,
}
_AMBIGUOUS_UNITS = {"k": "K", "K": "K", "M": "M", "G": "G", "T": "T", "P": "P"}
#: Largest size we accept: SQLite's (and Glance's BigInteger) integer limit.
MAX_SIZE = 2**63 - 1
#: IEC units from the largest down, for printing.
_IEC_DESCENDING: tuple[tuple[str, int], ...] = (
    ("PiB", 1024**5),
    ("TiB", 1024**4),
    ("GiB", 1024**3),
    ("MiB", 1024**2),
    ("KiB", 1024),
)

#: A decimal number as the config syntax writes it (no sign, no exponent).
NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_SIZE_RE = re.compile(rf"(?P<num>{NUMBER})\s*(?P<unit>[A-Za-z]*)")

#: Duration units; ``w`` is accepted but never printed.
DURATION_UNITS: dict[str, Decimal] = {
    "ms": Decimal("0.001"),
    "s": Decimal(1),
    "m": Decimal(60),
    "h": Decimal(3600),
    "d": Decimal(86400),
    "w": Decimal(604800),
}
#: Longest duration we accept (about 100 years); far below datetime's limits.
MAX_DURATION = 100 * 366 * 86400.0
_DURATION_PART = re.compile(rf"\s*({NUMBER})\s*(ms|[a-zA-Z]+)")
_PLAIN_NUMBER = re.compile(NUMBER)
#: Whole-second units from the largest down, for printing.
_SECOND_UNITS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))


def show(value: object) -> str:
    """Render a user-supplied value for an error message, YAML-style."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (int, float)):
        return repr(value)
    return f"a {type(value).__name__}"


def _unit_hint(unit: str, known: Mapping[str, object]) -> str:
    """``(did you mean 'GiB'?)`` for a unit written in the wrong case."""
    for candidate in known:
        if candidate.lower() == unit.lower():
            return f" (did you mean {candidate!r}?)"
    return ""


# --------------------------------------------------------------------------
# Sizes
# --------------------------------------------------------------------------


def parse_size(value: object) -> int:
    """Parse a size into bytes.

    Accepts an int (bytes) or a string: a number of bytes, or a decimal number
    with a case-sensitive unit from ``SIZE_UNITS`` (``10GiB``, ``500MB``,
    ``1.5 GiB``). Fractions of a byte left by a decimal value are rounded
    down. Raises ValueError saying what is wrong.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"must be a size such as 10GiB or 500MB, got {show(value)}")
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise ValueError(f"must be a whole number of bytes, got {value!r}")
        value = int(value)
    if isinstance(value, int):
        return _check_size_range(value, repr(value))
    return _parse_size_text(value)


def _parse_size_text(text: str) -> int:
    stripped = text.strip()
    if stripped.startswith("-"):
        raise ValueError(f"must not be negative, got {text!r}")
    match = _SIZE_RE.fullmatch(stripped)
    if match is None:
        raise ValueError(f"must be a size such as 10GiB or 500MB, got {text!r}")
    unit = match["unit"] or "B"
    if unit in _AMBIGUOUS_UNITS:
        letter = _AMBIGUOUS_UNITS[unit]
        raise ValueError(
            f"ambiguous unit {unit!r} in {text!r}: write {letter}iB (powers of 1024)"
            f" or {letter}B (powers of 1000)"
        )
    if unit not in SIZE_UNITS:
        raise ValueError(
            f"unknown size unit {unit!r} in {text!r}{_unit_hint(unit, SIZE_UNITS)};"
            " use B, KB, MB, GB, TB, PB, KiB, MiB, GiB, TiB or PiB"
        )
    with localcontext() as context:
        context.prec = 200  # exact for every size below MAX_SIZE
        number = Decimal(match["num"])
        if unit == "B" and number != number.to_integral_value():
            raise ValueError(f"must be a whole number of bytes, got {text!r}")
        size = int(number * SIZE_UNITS[unit])
    return _check_size_range(size, repr(text))


def _check_size_range(size: int, shown: str) -> int:
    if size < 0:
        raise ValueError(f"must not be negative, got {shown}")
    if size > MAX_SIZE:
        raise ValueError(f"is too large (at most {MAX_SIZE} bytes), got {shown}")
    return size


def format_size(size: int) -> str:
    """Format bytes with the largest IEC unit that shows them exactly.

    Up to two decimals are used (``1.5GiB``); anything else is printed in
    bytes (``1234567B``). ``parse_size(format_size(n)) == n`` always holds.
    """
    for unit, factor in _IEC_DESCENDING:
        if size >= factor and (size * 100) % factor == 0:
            quantity = Decimal(size * 100 // factor) / 100
            return f"{quantity.normalize():f}{unit}"
    return f"{size}B"


def _largest_iec_unit(size: float) -> tuple[str, float]:
    """The largest IEC unit not above ``size`` (bytes below 1 KiB)."""
    magnitude = abs(size)
    return next(((u, f) for u, f in _IEC_DESCENDING if magnitude >= f), ("B", 1))


def human_size(size: int) -> str:
    """``format_size`` plus an approximate IEC figure when it printed bytes."""
    exact = format_size(size)
    if exact.endswith("iB") or size < 1024:
        return exact
    unit, factor = _largest_iec_unit(size)
    return f"{exact} (~{size / factor:.2f}{unit})"


def iec(size: float) -> str:
    """``1536`` -> ``1.5 KiB``; whole bytes below 1 KiB (for status lines)."""
    unit, factor = _largest_iec_unit(size)
    return f"{int(size)} B" if unit == "B" else f"{size / factor:.1f} {unit}"


# --------------------------------------------------------------------------
# Durations
# --------------------------------------------------------------------------


def parse_duration(value: object) -> float:
    """Parse a duration into seconds.

    Accepts a number of seconds (int or float) or a string: a plain number
    (seconds) or one or more ``<number><unit>`` parts with units ms, s, m, h,
    d, w, e.g. ``30s``, ``1h30m``, ``500ms``, ``1.5h``. Raises ValueError
    saying what is wrong.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(
            f"must be a duration such as 30s, 15m or 1h30m, or a number of seconds,"
            f" got {show(value)}"
        )
    if isinstance(value, str):
        return _parse_duration_text(value)
    try:
        seconds = float(value)
    except OverflowError:
        raise ValueError(f"is too large (at most 100 years), got {value!r}") from None
    return _check_duration_range(seconds, repr(value))


def _parse_duration_text(text: str) -> float:
    stripped = text.strip()
    if stripped.startswith("-"):
        raise ValueError(f"must not be negative, got {text!r}")
    if _PLAIN_NUMBER.fullmatch(stripped):
        return _check_duration_range(float(Decimal(stripped)), repr(text))
    with localcontext() as context:
        context.prec = 200  # sums stay exact; only the final float() rounds
        total, position = _sum_duration_parts(text, stripped)
    if position == 0 or position != len(stripped):
        raise ValueError(
            f"must be a duration such as 30s, 15m or 1h30m, or a number of seconds, got {text!r}"
        )
    return _check_duration_range(float(total), repr(text))


def _sum_duration_parts(text: str, stripped: str) -> tuple[Decimal, int]:
    """Sum the leading ``<number><unit>`` parts; also return where they stopped."""
    total = Decimal(0)
    position = 0
    for part in _DURATION_PART.finditer(stripped):
        if part.start() != position:
            break
        number, unit = part.groups()
        if unit not in DURATION_UNITS:
            raise ValueError(
                f"unknown duration unit {unit!r} in {text!r}{_unit_hint(unit, DURATION_UNITS)};"
                " use ms, s, m, h, d or w"
            )
        total += Decimal(number) * DURATION_UNITS[unit]
        position = part.end()
    return total, position


def _check_duration_range(seconds: float, shown: str) -> float:
    if math.isnan(seconds):
        raise ValueError(f"must be a number of seconds, got {shown}")
    if seconds < 0:
        raise ValueError(f"must not be negative, got {shown}")
    if seconds > MAX_DURATION:
        raise ValueError(f"is too large (at most 100 years), got {shown}")
    return seconds


def format_duration(seconds: float) -> str:
    """Format seconds for people: ``1d``, ``1h30m``, ``500ms``, ``2.5s``.

    ``parse_duration(format_duration(x)) == x`` always holds.
    """
    if float(seconds).is_integer():
        remaining = int(seconds)
        if remaining == 0:
            return "0s"
        parts = []
        for unit, factor in _SECOND_UNITS:
            count, remaining = divmod(remaining, factor)
            if count:
                parts.append(f"{count}{unit}")
        return "".join(parts)
    millis = round(seconds * 1000)
    if seconds < 1 and float(Decimal(millis) / 1000) == seconds:
        return f"{millis}ms"
    return f"{Decimal(repr(float(seconds))):f}s"


def age(seconds: float | None) -> str:
    """``5400`` -> ``1h30m``, at most two units (for tables); ``None`` -> ``-``;
    negative (future) -> ``in the future``."""
    if seconds is None:
        return "-"
    if seconds < 0:
        return "in the future"
    whole = int(seconds)
    for (unit, span), (sub_unit, sub_span) in pairwise(_SECOND_UNITS):
        if whole >= span:
            main, rest = divmod(whole, span)
            minor = rest // sub_span
            return f"{main}{unit}{minor}{sub_unit}" if minor else f"{main}{unit}"
    return f"{whole}s"
