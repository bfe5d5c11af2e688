"""Value checks: what each kind of key accepts, and the message when it does not.

Each check takes a value constructed from YAML and returns the parsed value
(bytes, seconds, a normalised path, ...) or raises ValueError with the text
that follows ``file:line: key:`` in the operator's error. ``check_for``
picks a key's check from its row of the key table.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from ..driver import image_id_problem
from ..redact import mask_url, url_scheme
from .keys import Key, Kind
from .units import NUMBER, format_duration, parse_duration, parse_size, show

__all__ = [
    "SUPPORTED_DATABASES",
    "Check",
    "check_for",
    "database_url",
    "item_check",
    "normalize",
    "parse_default",
]

#: SQLAlchemy dialects the centralized_db store runs on (sqlite: for tests).
SUPPORTED_DATABASES = ("postgresql", "mysql", "mariadb", "sqlite")

Check = Callable[[Any], Any]


def normalize(path: str) -> str:
    """Absolute path without ``..``, ``//`` or a trailing slash (symlinks kept)."""
    normalized = os.path.normpath(path)
    return "/" + normalized.lstrip("/") if normalized.startswith("/") else normalized


def _nullable(check: Check, nullable: bool) -> Check:
    """``check``, letting ``null`` through as None when the key allows it."""
    if not nullable:
        return check
    return lambda value: None if value is None else check(value)


def _duration(minimum: float) -> Check:
    """A duration of at least ``minimum`` seconds."""

    def check(value: Any) -> float:
        seconds = parse_duration(value)
        if seconds < minimum:
            raise ValueError(f"must be at least {format_duration(minimum)}, got {show(value)}")
        return seconds

    return check


def _positive_duration(nullable: bool) -> Check:
    """A duration greater than zero: 0 would mean "everything at once"."""

    def check(value: Any) -> float:
        seconds = parse_duration(value)
        if seconds == 0:
            suffix = " (or null to disable)" if nullable else ""
            raise ValueError(f"must be longer than 0{suffix}, got {show(value)}")
        return seconds

    return check


def _integer(minimum: int, nullable: bool) -> Check:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            what = "a whole number" if minimum <= 0 else "a positive whole number"
            null = " (or null)" if nullable else ""
            raise ValueError(f"must be {what}{null}, got {show(value)}")
        if value < minimum:
            raise ValueError(f"must be at least {minimum}, got {value}")
        return value

    return check


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {show(value)}")
    return value


def _choice(choices: tuple[str, ...]) -> Check:
    """One of ``choices``, case-insensitively; returned in lower case."""

    def check(value: Any) -> str:
        if isinstance(value, str) and value.lower() in choices:
            return value.lower()
        hint = ""
        if isinstance(value, str):
            close = difflib.get_close_matches(value.lower(), choices, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"must be one of {', '.join(choices)}, got {show(value)}{hint}")

    return check


def text(value: Any) -> str:
    """A non-empty string without NUL bytes."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"must be a non-empty string, got {show(value)}")
    if "\x00" in value:
        raise ValueError("must not contain a NUL byte")
    return value


def absolute_path(value: Any) -> str:
    """An absolute path, normalised."""
    path = text(value)
    if not os.path.isabs(path):
        raise ValueError(f"must be an absolute path, got {show(value)}")
    return normalize(path)


def _existing_file(value: Any) -> str:
    path = absolute_path(value)
    if not os.path.isfile(path):
        raise ValueError(f"no such file: {path}")
    return path


def db_name(value: Any) -> str:
    """A file name (or path) for the database: not a directory."""
    name = text(value)
    if name.endswith("/") or os.path.basename(name) in (".", ".."):
        raise ValueError(f"must name a file, got {show(value)}")
    return name


def database_url(value: Any) -> str:
    """An SQLAlchemy URL of a supported database; errors never show its password."""
    url = text(value)
    scheme = url_scheme(url)
    if scheme is None:
        raise ValueError(
            "must be an SQLAlchemy URL such as mysql+pymysql://glance:PASSWORD@db/glance"
            " (no scheme:// found)"
        )
    dialect = scheme.partition("+")[0].lower()
    if dialect not in SUPPORTED_DATABASES:
        raise ValueError(
            f"database {dialect!r} in {mask_url(url)!r} is not supported: use postgresql://,"
            " mysql+pymysql:// (MySQL, MariaDB) or sqlite:// (tests)"
        )
    return url


def _fraction(value: Any) -> float:
    """``low_watermark``: a fraction in (0, 1] or a percentage in (0%, 100%]."""
    message = f"must be a fraction between 0 and 1 or a percentage, got {show(value)}"
    fraction: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        fraction = float(value)
    elif isinstance(value, str):
        percent = _parse_percent(value)
        fraction = None if percent is None else percent / 100
    if fraction is None or not 0 < fraction <= 1:
        raise ValueError(message)
    return fraction


def _parse_percent(value: str) -> float | None:
    """``'90%'`` -> 90.0; None when ``value`` is not a percentage."""
    match = re.fullmatch(rf"\s*({NUMBER})\s*%\s*", value)
    return None if match is None else float(Decimal(match[1]))


def _min_free_space(value: Any) -> tuple[int, float]:
    """``min_free_space``: bytes/units -> (bytes, 0), or ``'10%'`` -> (0, 10.0)."""
    if isinstance(value, str) and "%" in value:
        percent = _parse_percent(value)
        if percent is None or not 0 <= percent < 100:
            raise ValueError(
                f"must be a size such as 20GiB or a percentage from 0% to below 100%,"
                f" got {show(value)}"
            )
        return 0, percent
    return parse_size(value), 0.0


_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?")


def _listen(value: Any) -> tuple[str, int]:
    """``host:port`` or ``[ipv6]:port`` -> (host, port)."""
    usage = "must be host:port or [ipv6]:port, e.g. 127.0.0.1:9742"
    if not isinstance(value, str):
        raise ValueError(f"{usage}, got {show(value)}")
    match = re.fullmatch(r"\[([^\]]*)\]:([^:]*)|([^:\[\]]*):([^:]*)", value.strip())
    if match is None and value.count(":") > 1 and "[" not in value:
        raise ValueError(f"an IPv6 address needs brackets, e.g. [::1]:9742, got {show(value)}")
    if match is None:
        raise ValueError(f"{usage}, got {show(value)}")
    bracketed = match[1] is not None
    host, port_text = (match[1], match[2]) if bracketed else (match[3], match[4])
    if not host:
        raise ValueError(f"{usage}; the host is missing in {show(value)}")
    if bracketed:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address in {show(value)}") from None
    elif not _HOSTNAME.fullmatch(host):
        raise ValueError(f"{host!r} is not a host name or IPv4 address in {show(value)}")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"port must be a number from 1 to 65535, got {port_text!r}")
    return host, int(port_text)


_CRON_FIELD = re.compile(r"[0-9A-Za-z*/,?#-]+")


def _cron(value: Any) -> str:
    """A five-field crontab expression or a macro such as ``@daily``.

    Only the shape is checked here; ``crosscheck.check_schedules`` asks the
    scheduler's own parser (which imports APScheduler, so only commands that
    schedule pay for it).
    """
    expression = text(value)
    fields = expression.split()
    macro = len(fields) == 1 and fields[0].startswith("@")
    if not macro and (len(fields) != 5 or not all(_CRON_FIELD.fullmatch(f) for f in fields)):
        raise ValueError(
            f"invalid crontab expression {expression!r}: expected five fields"
            " (minute hour day-of-month month day-of-week) or a macro such as @daily"
        )
    return expression


def _image_id(value: Any) -> str:
    problem = image_id_problem(value)
    if problem is not None:
        raise ValueError(f"{show(value)} is not a valid image id: it {problem}")
    return str(value)


def _nested(value: Any) -> Any:
    """Placeholder check of a MAPPING key: its own keys are checked instead."""
    return value


def _base_check(row: Key) -> Check:
    """The check of ``row``'s kind, before ``null`` handling."""
    simple: dict[Kind, Check] = {
        Kind.ABSOLUTE_PATH: absolute_path,
        Kind.FILE_NAME: db_name,
        Kind.EXISTING_FILE: _existing_file,
        Kind.SIZE: parse_size,
        Kind.FRACTION: _fraction,
        Kind.MIN_FREE: _min_free_space,
        Kind.BOOLEAN: _boolean,
        Kind.LISTEN: _listen,
        Kind.CRON: _cron,
        Kind.DATABASE_URL: database_url,
        Kind.TEXT: text,
        Kind.MAPPING: _nested,
    }
    if row.kind in simple:
        return simple[row.kind]
    if row.kind is Kind.DURATION:
        return _duration(row.minimum)
    if row.kind is Kind.POSITIVE_DURATION:
        return _positive_duration(row.nullable)
    if row.kind is Kind.INTEGER:
        return _integer(int(row.minimum), row.nullable)
    if row.kind is Kind.CHOICE:
        return _choice(row.choices)
    raise ValueError(f"{row.name}: a {row.kind.value} is checked item by item")


def check_for(row: Key) -> Check:
    """The check of a scalar key (lists: see ``item_check``)."""
    return _nullable(_base_check(row), row.nullable)


def item_check(row: Key) -> Check:
    """The check of each item of a list key."""
    return _image_id if row.kind is Kind.IMAGE_IDS else text


def parse_default(row: Key) -> Any:
    """``row``'s default as the model holds it (a list becomes a tuple)."""
    if row.default is None:
        return None
    if isinstance(row.default, list):
        return tuple(item_check(row)(item) for item in row.default)
    return check_for(row)(row.default)
