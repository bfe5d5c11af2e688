"""Load, validate and explain the agent's YAML configuration.

The YAML is composed (not just loaded) so every value keeps the line it was
written on: each error names the file, the 1-based line and the dotted key,
and ``check-config`` shows where every effective value came from. Glance's own
ini files (``cache.glance_config``) are read for the ``image_cache_*``
options, so the agent and glance-api agree on the cache without the operator
copying values; a cache whose Glance driver is not ``sqlite`` is refused.

Sizes are bytes (int) and durations seconds (float) once parsed; the unit
syntax is documented in ``config.example.yaml``.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal, localcontext
from typing import Any, NoReturn, TypeVar

import yaml

from . import glance_ini
from .config_model import (
    TASK_NAMES,
    AgentConfig,
    CacheConfig,
    CleanConfig,
    Config,
    LoggingConfig,
    MetricsConfig,
    PruneConfig,
    ReconcileConfig,
    TaskSchedule,
    TlsConfig,
)
from .driver import image_id_problem
from .maintenance import OrphanPolicy
from .textfile import UnsafeFile, read_small_file

DEFAULT_CONFIG_PATH = "/etc/glance-cache-agent/config.yaml"
ENV_VAR = "GLANCE_CACHE_AGENT_CONFIG"

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "ENV_VAR",
    "ConfigError",
    "config_warnings",
    "effective_config_dict",
    "format_duration",
    "format_size",
    "load_config",
    "parse_config_text",
    "parse_duration",
    "parse_size",
    "render_effective_config",
    "resolve_config_path",
]


class ConfigError(Exception):
    """A configuration problem, located as precisely as we know.

    ``path`` is the YAML or Glance file (None for built-in text), ``line`` is
    1-based, ``key`` the dotted YAML key path (or ``[SECTION] option`` for
    Glance files). The CLI turns this into exit code 78.
    """

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


# --------------------------------------------------------------------------
# Sizes and durations
# --------------------------------------------------------------------------

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
_IEC_DESCENDING: tuple[tuple[str, int], ...] = (
    ("PiB", 1024**5),
    ("TiB", 1024**4),
    ("GiB", 1024**3),
    ("MiB", 1024**2),
    ("KiB", 1024),
)

_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_SIZE_RE = re.compile(rf"(?P<num>{_NUMBER})\s*(?P<unit>[A-Za-z]*)")

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
_DURATION_PART = re.compile(rf"\s*({_NUMBER})\s*(ms|[a-zA-Z]+)")
_PLAIN_NUMBER = re.compile(_NUMBER)


def _show(value: object) -> str:
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


def parse_size(value: object) -> int:
    """Parse a size into bytes.

    Accepts an int (bytes) or a string: a number of bytes, or a decimal number
    with a case-sensitive unit from ``SIZE_UNITS`` (``10GiB``, ``500MB``,
    ``1.5 GiB``). Fractions of a byte left by a decimal value are rounded
    down. Raises ValueError saying what is wrong.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"must be a size such as 10GiB or 500MB, got {_show(value)}")
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


def _human_size(size: int) -> str:
    """``format_size`` plus an approximate IEC figure when it printed bytes."""
    exact = format_size(size)
    if exact.endswith("iB") or size < 1024:
        return exact
    unit, factor = next((u, f) for u, f in _IEC_DESCENDING if size >= f)
    return f"{exact} (~{size / factor:.2f}{unit})"


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
            f" got {_show(value)}"
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
        for unit, factor in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
            count, remaining = divmod(remaining, factor)
            if count:
                parts.append(f"{count}{unit}")
        return "".join(parts)
    millis = round(seconds * 1000)
    if seconds < 1 and float(Decimal(millis) / 1000) == seconds:
        return f"{millis}ms"
    return f"{Decimal(repr(float(seconds))):f}s"


# --------------------------------------------------------------------------
# Value checks: each takes a constructed YAML value and raises ValueError
# --------------------------------------------------------------------------

Check = Callable[[Any], Any]


def _duration(*, minimum: float = 0.0, nullable: bool = False) -> Check:
    """A duration of at least ``minimum`` seconds (``null`` allowed if nullable)."""

    def check(value: Any) -> float | None:
        if value is None and nullable:
            return None
        seconds = parse_duration(value)
        if seconds < minimum:
            raise ValueError(f"must be at least {format_duration(minimum)}, got {_show(value)}")
        return seconds

    return check


def _positive_duration(*, nullable: bool) -> Check:
    """A duration greater than zero: 0 would mean "everything at once"."""
    base = _duration(nullable=nullable)

    def check(value: Any) -> float | None:
        seconds: float | None = base(value)
        if seconds == 0:
            suffix = " (or null to disable)" if nullable else ""
            raise ValueError(f"must be longer than 0{suffix}, got {_show(value)}")
        return seconds

    return check


def _size(value: Any) -> int:
    return parse_size(value)


def _integer(*, minimum: int, nullable: bool = False) -> Check:
    def check(value: Any) -> int | None:
        if value is None and nullable:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            what = "a whole number" if minimum <= 0 else "a positive whole number"
            null = " (or null)" if nullable else ""
            raise ValueError(f"must be {what}{null}, got {_show(value)}")
        if value < minimum:
            raise ValueError(f"must be at least {minimum}, got {value}")
        return value

    return check


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {_show(value)}")
    return value


def _choice(*choices: str) -> Check:
    """One of ``choices``, case-insensitively; returned in lower case."""

    def check(value: Any) -> str:
        if isinstance(value, str) and value.lower() in choices:
            return value.lower()
        hint = ""
        if isinstance(value, str):
            close = difflib.get_close_matches(value.lower(), choices, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"must be one of {', '.join(choices)}, got {_show(value)}{hint}")

    return check


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"must be a non-empty string, got {_show(value)}")
    if "\x00" in value:
        raise ValueError("must not contain a NUL byte")
    return value


def _absolute_path(*, nullable: bool = False) -> Check:
    def check(value: Any) -> str | None:
        if value is None and nullable:
            return None
        text = _text(value)
        if not os.path.isabs(text):
            raise ValueError(f"must be an absolute path, got {_show(value)}")
        return _normalize(text)

    return check


def _existing_file(value: Any) -> str:
    path: str = _absolute_path()(value)
    if not os.path.isfile(path):
        raise ValueError(f"no such file: {path}")
    return path


def _db_name(value: Any) -> str:
    text = _text(value)
    if text.endswith("/") or os.path.basename(text) in (".", ".."):
        raise ValueError(f"must name a file, got {_show(value)}")
    return text


def _fraction(value: Any) -> float:
    """``low_watermark``: a fraction in (0, 1] or a percentage in (0%, 100%]."""
    message = f"must be a fraction between 0 and 1 or a percentage, got {_show(value)}"
    fraction: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        fraction = float(value)
    elif isinstance(value, str):
        percent = _parse_percent(value)
        fraction = None if percent is None else percent / 100
    if fraction is None or not 0 < fraction <= 1:
        raise ValueError(message)
    return fraction


def _parse_percent(text: str) -> float | None:
    """``'90%'`` -> 90.0; None when ``text`` is not a percentage."""
    match = re.fullmatch(rf"\s*({_NUMBER})\s*%\s*", text)
    return None if match is None else float(Decimal(match[1]))


def _min_free_space(value: Any) -> tuple[int, float]:
    """``min_free_space``: bytes/units -> (bytes, 0), or ``'10%'`` -> (0, 10.0)."""
    if isinstance(value, str) and "%" in value:
        percent = _parse_percent(value)
        if percent is None or not 0 <= percent < 100:
            raise ValueError(
                f"must be a size such as 20GiB or a percentage from 0% to below 100%,"
                f" got {_show(value)}"
            )
        return 0, percent
    return parse_size(value), 0.0


_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?")


def _listen(value: Any) -> tuple[str, int]:
    """``host:port`` or ``[ipv6]:port`` -> (host, port)."""
    usage = "must be host:port or [ipv6]:port, e.g. 127.0.0.1:9742"
    if not isinstance(value, str):
        raise ValueError(f"{usage}, got {_show(value)}")
    match = re.fullmatch(r"\[([^\]]*)\]:([^:]*)|([^:\[\]]*):([^:]*)", value.strip())
    if match is None and value.count(":") > 1 and "[" not in value:
        raise ValueError(f"an IPv6 address needs brackets, e.g. [::1]:9742, got {_show(value)}")
    if match is None:
        raise ValueError(f"{usage}, got {_show(value)}")
    bracketed = match[1] is not None
    host, port_text = (match[1], match[2]) if bracketed else (match[3], match[4])
    if not host:
        raise ValueError(f"{usage}; the host is missing in {_show(value)}")
    if bracketed:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address in {_show(value)}") from None
    elif not _HOSTNAME.fullmatch(host):
        raise ValueError(f"{host!r} is not a host name or IPv4 address in {_show(value)}")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"port must be a number from 1 to 65535, got {port_text!r}")
    return host, int(port_text)


_CRON_FIELD = re.compile(r"[0-9A-Za-z*/,?#-]+")


def _cron(value: Any) -> str | None:
    """A five-field crontab expression or a macro such as ``@daily`` (null: none).

    Only the shape is checked here; ``_check_schedules`` asks the scheduler's
    own parser (which imports APScheduler, so only commands that schedule
    pay for it).
    """
    if value is None:
        return None
    text = _text(value)
    fields = text.split()
    macro = len(fields) == 1 and fields[0].startswith("@")
    if not macro and (len(fields) != 5 or not all(_CRON_FIELD.fullmatch(f) for f in fields)):
        raise ValueError(
            f"invalid crontab expression {text!r}: expected five fields"
            " (minute hour day-of-month month day-of-week) or a macro such as @daily"
        )
    return text


def _check_schedules(values: Mapping[str, _Value]) -> None:
    """Every cron expression parses as the scheduler will run it (else the
    error names its line)."""
    from .scheduler import build_trigger

    for name in TASK_NAMES:
        entry = values.get(f"tasks.{name}.cron")
        if entry is None or entry.value is None:
            continue
        try:
            build_trigger(TaskSchedule(name, cron=entry.value))
        except ValueError as exc:
            reason = str(exc).removeprefix(f"cron {entry.value!r}: ")
            raise entry.error(f"invalid crontab expression {entry.value!r}: {reason}") from None


def _orphan_policy(value: Any) -> OrphanPolicy:
    return OrphanPolicy(_choice(*(p.value for p in OrphanPolicy))(value))


def _image_id(value: Any) -> str:
    problem = image_id_problem(value)
    if problem is not None:
        raise ValueError(f"{_show(value)} is not a valid image id: it {problem}")
    return str(value)


# --------------------------------------------------------------------------
# Schema: YAML keys, their checks, and how they print
# --------------------------------------------------------------------------

LIST = "list"  # a list whose items are checked one by one with the key's check
MAPPING = "mapping"  # a nested mapping with its own keys (metrics.tls)


@dataclass(frozen=True)
class _Key:
    """One YAML key: its check and how ``check-config`` prints it."""

    check: Check
    kind: str = "plain"  # plain | size | duration | fraction | min_free | list | mapping


def _nested(value: Any) -> Any:
    """Placeholder check of a MAPPING key: its own keys are checked instead."""
    return value


_SECTIONS: dict[str, dict[str, _Key]] = {
    "cache": {
        "dir": _Key(_absolute_path()),
        "db": _Key(_db_name),
        "max_size": _Key(_size, "size"),
        "stall_time": _Key(_duration(), "duration"),
        "lock_path": _Key(_absolute_path(nullable=True)),
        "glance_config": _Key(_text, LIST),
        "busy_timeout": _Key(_duration(), "duration"),
    },
    "prune": {
        "low_watermark": _Key(_fraction, "fraction"),
        "min_free_space": _Key(_min_free_space, "min_free"),
        "max_idle": _Key(_positive_duration(nullable=True), "duration"),
        "protected_images": _Key(_image_id, LIST),
        "max_images_per_run": _Key(_integer(minimum=1, nullable=True)),
        "time_budget": _Key(_positive_duration(nullable=True), "duration"),
        "batch_size": _Key(_integer(minimum=1)),
        "batch_pause": _Key(_duration(), "duration"),
    },
    "clean": {
        "invalid_grace": _Key(_duration(), "duration"),
        "settle_time": _Key(_duration(), "duration"),
    },
    "reconcile": {
        "orphan_grace": _Key(_duration(), "duration"),
        "orphans": _Key(_orphan_policy),
    },
    "metrics": {
        "listen": _Key(_listen),
        "per_image": _Key(_boolean),
        "per_image_limit": _Key(_integer(minimum=0)),
        "state_max_age": _Key(_duration(), "duration"),
        "tls": _Key(_nested, MAPPING),
    },
    "logging": {
        "level": _Key(_choice("debug", "info", "warning", "error", "critical")),
        "format": _Key(_choice("auto", "json", "console")),
    },
    "agent": {
        "runtime_dir": _Key(_absolute_path()),
        "lock_timeout": _Key(_duration(), "duration"),
        "glance_lock_timeout": _Key(_duration(), "duration"),
        "first_run_delay": _Key(_duration(), "duration"),
        "max_task_runtime": _Key(_positive_duration(nullable=True), "duration"),
    },
}

_TASK_KEYS: dict[str, _Key] = {
    "enabled": _Key(_boolean),
    "interval": _Key(_duration(minimum=1.0), "duration"),
    "cron": _Key(_cron),
    "jitter": _Key(_duration(), "duration"),
}

_TLS_KEYS: dict[str, _Key] = {
    "cert_file": _Key(_existing_file),
    "key_file": _Key(_existing_file),
    "client_ca_file": _Key(_existing_file),
    "client_auth_required": _Key(_boolean),
}

#: Top-level sections in the order they are documented and printed.
SECTION_NAMES = ("cache", "tasks", "prune", "clean", "reconcile", "metrics", "logging", "agent")


# --------------------------------------------------------------------------
# Reading the composed YAML
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Value:
    """A parsed value and where it came from (for sources and later errors)."""

    value: Any
    source: str
    path: str | None
    line: int | None
    key: str
    #: for lists: the line of each item
    item_lines: tuple[int, ...] = ()

    def error(self, message: str, item: int | None = None) -> ConfigError:
        """An error about this value (or about item ``item`` of a list)."""
        if item is None:
            return ConfigError(message, path=self.path, line=self.line, key=self.key)
        line = self.item_lines[item] if item < len(self.item_lines) else self.line
        return ConfigError(message, path=self.path, line=line, key=f"{self.key}[{item}]")


class _Reader:
    """Walks the composed YAML document, checking keys and collecting values."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.values: dict[str, _Value] = {}
        self._constructor = yaml.SafeLoader("")

    def error(self, node: yaml.Node | int, key: str | None, message: str) -> ConfigError:
        line = node if isinstance(node, int) else node.start_mark.line + 1
        return ConfigError(message, path=self.path, line=line, key=key)

    def source(self, line: int) -> str:
        return f"{self.path or '<config>'}:{line}"

    def construct(self, node: yaml.Node, key: str) -> Any:
        """The Python value of ``node`` (SafeLoader semantics)."""
        try:
            return self._constructor.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc)
            raise self.error(node, key, f"invalid value: {problem}") from None

    def items(self, node: yaml.Node, where: str) -> Iterator[tuple[str, yaml.Node, yaml.Node]]:
        """(name, key node, value node) of a mapping; duplicate keys are errors."""
        seen: dict[str, int] = {}
        assert isinstance(node, yaml.MappingNode)
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise self.error(
                    key_node, where or None, "YAML merge keys ('<<') are not supported"
                )
            if not isinstance(key_node, yaml.ScalarNode):
                raise self.error(key_node, where or None, "keys must be plain names")
            name = str(key_node.value)
            dotted = f"{where}.{name}" if where else name
            line = key_node.start_mark.line + 1
            if name in seen:
                raise self.error(line, dotted, f"duplicate key (first set on line {seen[name]})")
            seen[name] = line
            yield name, key_node, value_node

    def mapping_or_empty(self, node: yaml.Node, key: str, line: int) -> yaml.MappingNode | None:
        """A section's mapping node; ``null`` (all keys commented out) is empty."""
        if isinstance(node, yaml.MappingNode):
            return node
        if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
            return None
        raise self.error(line, key, f"must be a mapping, got {_show(self.construct(node, key))}")

    def unknown(self, line: int, dotted: str, name: str, known: list[str], what: str) -> NoReturn:
        """Raise the did-you-mean error for an unknown key."""
        parent = dotted.rpartition(".")[0]
        prefix = f"{parent}." if parent else ""
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        if close:
            hint = f"did you mean {prefix}{close[0]}?"
        else:
            hint = f"{parent or 'the top level'} accepts {', '.join(known)}"
        raise self.error(line, dotted, f"unknown {what} ({hint})")

    def read_keys(self, node: yaml.Node, where: str, line: int, spec: Mapping[str, _Key]) -> None:
        """Check and store every key of one mapping (written on ``line``) against ``spec``."""
        mapping = self.mapping_or_empty(node, where, line)
        if mapping is None:
            return
        for name, key_node, value_node in self.items(mapping, where):
            dotted = f"{where}.{name}"
            line = key_node.start_mark.line + 1
            key = spec.get(name)
            if key is None:
                self.unknown(line, dotted, name, list(spec), "key")
            if key.kind == MAPPING:
                self.read_tls(value_node, line)
            elif key.kind == LIST:
                self.read_list(value_node, dotted, line, key)
            else:
                self.read_scalar(value_node, dotted, line, key.check)

    def read_scalar(self, node: yaml.Node, dotted: str, line: int, check: Check) -> None:
        value = self.construct(node, dotted)
        try:
            parsed = check(value)
        except ValueError as exc:
            raise self.error(line, dotted, str(exc)) from None
        self.values[dotted] = _Value(parsed, self.source(line), self.path, line, dotted)

    def read_list(self, node: yaml.Node, dotted: str, line: int, key: _Key) -> None:
        """A list (a single string is a one-item list); items checked one by one."""
        item_check = key.check
        if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
            items: list[yaml.Node] = []
        elif isinstance(node, yaml.SequenceNode):
            items = list(node.value)
        elif dotted == "cache.glance_config" and node.tag == "tag:yaml.org,2002:str":
            items = [node]  # a single path
        else:
            value = self.construct(node, dotted)
            what = "a path or a list of paths" if dotted == "cache.glance_config" else "a list"
            raise self.error(line, dotted, f"must be {what}, got {_show(value)}")
        parsed = []
        for index, item in enumerate(items):
            item_key = f"{dotted}[{index}]"
            try:
                parsed.append(item_check(self.construct(item, item_key)))
            except ValueError as exc:
                raise self.error(item, item_key, str(exc)) from None
        item_lines = tuple(item.start_mark.line + 1 for item in items)
        self.values[dotted] = _Value(
            tuple(parsed), self.source(line), self.path, line, dotted, item_lines
        )

    def read_tls(self, node: yaml.Node, line: int) -> None:
        """``metrics.tls``: null (plain HTTP) or a mapping with cert and key."""
        mapping = self.mapping_or_empty(node, "metrics.tls", line)
        if mapping is None:
            self.values["metrics.tls"] = _Value(
                None, self.source(line), self.path, line, "metrics.tls"
            )
            return
        self.read_keys(mapping, "metrics.tls", line, _TLS_KEYS)
        for required in ("cert_file", "key_file"):
            if f"metrics.tls.{required}" not in self.values:
                raise self.error(line, "metrics.tls", f"missing required key {required!r}")
        auth = self.values.get("metrics.tls.client_auth_required")
        if auth is not None and auth.value and "metrics.tls.client_ca_file" not in self.values:
            raise auth.error("needs metrics.tls.client_ca_file to verify client certificates")
        self.values["metrics.tls"] = _Value(True, self.source(line), self.path, line, "metrics.tls")

    def read_tasks(self, node: yaml.Node, line: int) -> None:
        mapping = self.mapping_or_empty(node, "tasks", line)
        if mapping is None:
            return
        for name, key_node, value_node in self.items(mapping, "tasks"):
            task_line = key_node.start_mark.line + 1
            if name not in TASK_NAMES:
                self.unknown(task_line, f"tasks.{name}", name, list(TASK_NAMES), "task")
            self.read_keys(value_node, f"tasks.{name}", task_line, _TASK_KEYS)
            interval = self.values.get(f"tasks.{name}.interval")
            cron = self.values.get(f"tasks.{name}.cron")
            if interval is not None and cron is not None and cron.value is not None:
                raise cron.error(f"set either interval or cron for task {name}, not both")

    def read_document(self, root: yaml.Node | None) -> None:
        if root is None:
            return
        if not isinstance(root, yaml.MappingNode):
            found = _show(self.construct(root, "top level"))
            raise self.error(
                root, None, f"the top level must be a mapping of sections, got {found}"
            )
        for name, key_node, value_node in self.items(root, ""):
            line = key_node.start_mark.line + 1
            if name == "tasks":
                self.read_tasks(value_node, line)
            elif name in _SECTIONS:
                self.read_keys(value_node, name, line, _SECTIONS[name])
            else:
                self.unknown(line, name, name, list(SECTION_NAMES), "section")


def _compose(text: str, path: str | None) -> yaml.Node | None:
    """Compose the YAML text, turning syntax errors into located ConfigErrors."""
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = None if mark is None else mark.line + 1
        problem = exc.problem or "invalid YAML"
        context = f" ({exc.context})" if exc.context else ""
        raise ConfigError(f"YAML syntax error: {problem}{context}", path=path, line=line) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"YAML syntax error: {exc}", path=path) from None


# --------------------------------------------------------------------------
# Glance's ini files
# --------------------------------------------------------------------------

#: (section, option) in Glance's files -> our YAML key.
GLANCE_OPTIONS: tuple[tuple[str, str, str], ...] = (
    ("DEFAULT", "image_cache_dir", "cache.dir"),
    ("DEFAULT", "image_cache_max_size", "cache.max_size"),
    ("DEFAULT", "image_cache_stall_time", "cache.stall_time"),
    ("DEFAULT", "image_cache_sqlite_db", "cache.db"),
    ("oslo_concurrency", "lock_path", "cache.lock_path"),
)
_DRIVER_OPTION = ("DEFAULT", "image_cache_driver")

_DRIVER_REFUSALS = {
    "centralized_db": "its cache.db is stale or empty (image metadata lives in Glance's database)",
    "xattr": "image metadata lives in extended attributes on the files, not in cache.db",
}


def _glance_int(found: glance_ini.IniValue, text: str) -> int:
    """An oslo IntOpt with ``min=0``."""
    if not re.fullmatch(r"[+]?\d+", text.strip()):
        raise found.error(f"must be a whole number >= 0, got {text!r}")
    return int(text)


def _glance_value(found: glance_ini.IniValue, yaml_key: str, text: str) -> Any:
    """The substituted ``text`` of ``found``, checked like its YAML key."""
    if yaml_key == "cache.max_size":
        return _glance_int(found, text)
    if yaml_key == "cache.stall_time":
        return float(_glance_int(found, text))
    check = _absolute_path() if yaml_key in ("cache.dir", "cache.lock_path") else _db_name
    try:
        return check(text)
    except ValueError as exc:
        shown = "" if text == found.text else f" (from {found.text!r})"
        raise found.error(f"{exc}{shown}") from None


def _glance_entry(
    resolver: glance_ini.Resolver, section: str, option: str, yaml_key: str | None
) -> _Value | None:
    """One Glance option as a YAML-keyed value; None when unset or empty.

    An empty value leaves Glance's default in place.
    """
    found = resolver.options.get((section, option))
    if found is None or not found.text.strip():
        return None
    text = resolver.value(found)
    parsed = text if yaml_key is None else _glance_value(found, yaml_key, text)
    source = f"{found.path} {found.label}"
    return _Value(parsed, source, found.path, found.line, found.label)


def _read_glance_files(files: tuple[str, ...]) -> tuple[dict[str, _Value], _Value | None]:
    """Glance's options (files and ``--config-dir`` directories, later ones
    winning, ``$references`` substituted) as YAML-keyed values, plus the driver."""
    try:
        resolver = glance_ini.Resolver(glance_ini.read_glance_files(files))
        values: dict[str, _Value] = {}
        for section, option, yaml_key in GLANCE_OPTIONS:
            entry = _glance_entry(resolver, section, option, yaml_key)
            if entry is not None:
                values[yaml_key] = entry
        driver = _glance_entry(resolver, *_DRIVER_OPTION, None)
    except glance_ini.IniError as exc:
        raise ConfigError(exc.message, path=exc.path, line=exc.line, key=exc.key) from None
    return values, driver


def _check_glance_driver(driver: _Value | None, files: _Value) -> None:
    """Refuse any cache that Glance does not manage with its sqlite driver.

    Unset is refused too: Glance 28.0.0 (2024.1) and later default to
    ``centralized_db``; setting ``image_cache_driver = sqlite`` explicitly is
    harmless on older Glance, whose default it already is.
    """
    if driver is None:
        raise files.error(
            "no Glance config file sets [DEFAULT] image_cache_driver; Glance 2024.1 (28.0.0)"
            " and later default to centralized_db, which this agent cannot manage, so set"
            " image_cache_driver = sqlite explicitly in the Glance config"
        )
    name = driver.value.strip().lower()
    if name == "sqlite":
        return
    why = _DRIVER_REFUSALS.get(name, "it is not a driver this agent knows")
    raise driver.error(
        f"is {driver.value!r}: {why}, so this agent refuses to manage this cache;"
        " only the sqlite driver is supported"
    )


# --------------------------------------------------------------------------
# Cross-checks
# --------------------------------------------------------------------------

#: Directories that must never be treated as an image cache, and why.
DANGEROUS_DIRS: dict[str, str] = {
    path: "a system directory"
    for path in (
        "/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/libx32",
        "/lost+found", "/media", "/mnt", "/opt", "/proc", "/root", "/run", "/run/lock", "/sbin",
        "/snap", "/srv", "/sys", "/tmp", "/usr", "/usr/bin", "/usr/include", "/usr/lib",
        "/usr/lib32", "/usr/lib64", "/usr/libexec", "/usr/local", "/usr/local/bin",
        "/usr/local/etc", "/usr/local/lib", "/usr/local/sbin", "/usr/local/share", "/usr/sbin",
        "/usr/share", "/usr/src", "/var", "/var/backups", "/var/cache", "/var/lib", "/var/local",
        "/var/lock", "/var/log", "/var/mail", "/var/opt", "/var/run", "/var/spool", "/var/tmp",
        "/etc/glance",
    )
}  # fmt: skip
DANGEROUS_DIRS["/var/lib/glance"] = "Glance's state directory, not its image cache"
DANGEROUS_DIRS["/var/lib/glance/images"] = "Glance's filesystem store (image data, not a cache)"


def _normalize(path: str) -> str:
    """Absolute path without ``..``, ``//`` or a trailing slash (symlinks kept)."""
    normalized = os.path.normpath(path)
    return "/" + normalized.lstrip("/") if normalized.startswith("/") else normalized


def _check_cache_dir(value: _Value) -> None:
    """Refuse ``/`` and system directories, also when reached through a symlink."""
    normalized = _normalize(value.value)
    reason = DANGEROUS_DIRS.get(normalized)
    if reason is not None:
        raise value.error(f"refusing to manage {normalized} as an image cache: it is {reason}")
    resolved = os.path.realpath(normalized)
    reason = DANGEROUS_DIRS.get(resolved)
    if reason is not None:
        raise value.error(
            f"refusing to manage {normalized} as an image cache: it resolves to {resolved},"
            f" which is {reason}"
        )


# --------------------------------------------------------------------------
# Building the Config
# --------------------------------------------------------------------------


def _leaf_keys() -> list[str]:
    """Every leaf YAML key, in documentation order (``tasks`` expanded)."""
    keys: list[str] = []
    for section in SECTION_NAMES:
        if section == "tasks":
            keys += [f"tasks.{t}.{k}" for t in TASK_NAMES for k in _TASK_KEYS]
        else:
            keys += [f"{section}.{k}" for k in _SECTIONS[section]]
    return keys


#: Keys whose YAML value maps onto other model fields (see the _build_* helpers).
_SPECIAL_KEYS = frozenset({"min_free_space", "listen", "tls"})


_Section = TypeVar("_Section")


def _section(base: _Section, values: Mapping[str, _Value], section: str) -> _Section:
    """``base`` with every plain key of ``section`` set in ``values`` replaced."""
    changes = {}
    for name in _SECTIONS[section]:
        found = values.get(f"{section}.{name}")
        if found is not None and name not in _SPECIAL_KEYS:
            changes[name] = found.value
    return replace(base, **changes)  # type: ignore[type-var]


def _build_tasks(values: Mapping[str, _Value], defaults: Config) -> dict[str, TaskSchedule]:
    tasks = {}
    for name in TASK_NAMES:
        task = defaults.tasks[name]
        changes = {
            k: values[f"tasks.{name}.{k}"].value
            for k in _TASK_KEYS
            if f"tasks.{name}.{k}" in values
        }
        if changes.get("cron") is not None:
            changes["interval"] = None  # a cron replaces the default interval
        tasks[name] = replace(task, **changes)
    return tasks


def _build_prune(values: Mapping[str, _Value]) -> PruneConfig:
    prune = _section(PruneConfig(), values, "prune")
    found = values.get("prune.min_free_space")
    if found is not None:
        free_bytes, free_percent = found.value
        prune = replace(prune, min_free_bytes=free_bytes, min_free_percent=free_percent)
    return replace(prune, protected_images=frozenset(prune.protected_images))


def _build_metrics(values: Mapping[str, _Value]) -> MetricsConfig:
    metrics = _section(MetricsConfig(), values, "metrics")
    listen = values.get("metrics.listen")
    if listen is not None:
        host, port = listen.value
        metrics = replace(metrics, host=host, port=port)
    tls = None
    if values.get("metrics.tls") is not None and values["metrics.tls"].value:
        fields = {
            k: values[f"metrics.tls.{k}"].value for k in _TLS_KEYS if f"metrics.tls.{k}" in values
        }
        tls = TlsConfig(**fields)
    return replace(metrics, tls=tls)


def _build(path: str | None, values: Mapping[str, _Value]) -> Config:
    defaults = Config()
    config = Config(
        path=path,
        cache=_section(CacheConfig(), values, "cache"),
        tasks=_build_tasks(values, defaults),
        prune=_build_prune(values),
        clean=_section(CleanConfig(), values, "clean"),
        reconcile=_section(ReconcileConfig(), values, "reconcile"),
        metrics=_build_metrics(values),
        logging=_section(LoggingConfig(), values, "logging"),
        agent=_section(AgentConfig(), values, "agent"),
    )
    sources = {key: "default" for key in _leaf_keys()}
    if config.metrics.tls is not None:
        sources.update({f"metrics.tls.{k}": "default" for k in _TLS_KEYS})
    for key, found in values.items():
        sources[key] = found.source
    for name in TASK_NAMES:  # a cron replaces the default interval
        cron = values.get(f"tasks.{name}.cron")
        if cron is not None and cron.value is not None:
            sources[f"tasks.{name}.interval"] = cron.source
    config.sources.update(sources)
    return config


def _resolve_glance_paths(found: _Value, config_path: str | None) -> _Value:
    """Relative Glance config paths are relative to the YAML file's directory."""
    base = os.path.dirname(os.path.abspath(config_path)) if config_path else os.getcwd()
    paths = tuple(_normalize(os.path.join(base, p)) for p in found.value)
    if not paths:
        return found
    return replace(found, value=paths)


def _merge_glance(values: dict[str, _Value]) -> None:
    """Fill in Glance's options, then let the YAML's own keys win."""
    files = values.get("cache.glance_config")
    if files is None or not files.value:
        return
    glance_values, driver = _read_glance_files(files.value)
    _check_glance_driver(driver, files)
    if "cache.dir" not in glance_values and "cache.dir" not in values:
        raise files.error(
            "no Glance config file sets [DEFAULT] image_cache_dir (Glance's cache is disabled"
            " without it); set it there or set cache.dir"
        )
    for key, found in glance_values.items():
        values.setdefault(key, found)


def _glance_path_problem(path: str) -> str | None:
    """Why ``path`` is neither a readable file nor a config directory (or None)."""
    if not os.path.exists(path):
        return "no such file or directory"
    if os.path.isdir(path):
        return None if os.access(path, os.R_OK | os.X_OK) else "a directory that cannot be listed"
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        return "not a readable file"
    return None


def _glance_file_errors(values: dict[str, _Value]) -> None:
    """A missing or unreadable Glance file or directory is reported at its YAML item."""
    files = values.get("cache.glance_config")
    if files is None:
        return
    for index, path in enumerate(files.value):
        problem = _glance_path_problem(path)
        if problem is not None:
            raise files.error(f"cannot read Glance config {path}: {problem}", item=index)


def parse_config_text(text: str, path: str | None = None, check_schedules: bool = True) -> Config:
    """Parse and validate YAML ``text``; ``path`` only labels errors and sources.

    ``check_schedules`` False skips parsing cron expressions with the
    scheduler (their shape is still checked): for commands that never
    schedule, it saves importing APScheduler.
    """
    reader = _Reader(path)
    reader.read_document(_compose(text, path))
    values = reader.values
    if check_schedules:
        _check_schedules(values)
    if "cache.glance_config" in values:
        values["cache.glance_config"] = _resolve_glance_paths(values["cache.glance_config"], path)
        _glance_file_errors(values)
    _merge_glance(values)
    if "cache.dir" in values:
        _check_cache_dir(values["cache.dir"])
    return _build(path, values)


def load_config(path: str | None, check_schedules: bool = True) -> Config:
    """Load ``path``; None means the built-in defaults (no file at all).

    See ``parse_config_text`` for ``check_schedules``.
    """
    if path is None:
        return _build(None, {})
    try:
        data = read_small_file(path)
    except UnsafeFile as exc:
        raise ConfigError(f"cannot read config file: {exc}", path=path) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError("config file is not valid UTF-8", path=path, line=line) from None
    return parse_config_text(text, path, check_schedules)


def resolve_config_path(
    cli_path: str | None, environ: Mapping[str, str]
) -> tuple[str | None, bool]:
    """Choose the config file: ``-c``, else ``$GLANCE_CACHE_AGENT_CONFIG``, else the default.

    Returns (path, explicit). An explicit path that does not exist is an
    error; a missing default path gives (None, False): built-in defaults.
    """
    if cli_path:
        chosen, origin = cli_path, "given with -c"
    elif environ.get(ENV_VAR):
        chosen, origin = environ[ENV_VAR], f"from ${ENV_VAR}"
    else:
        if os.path.exists(DEFAULT_CONFIG_PATH):
            return DEFAULT_CONFIG_PATH, False
        return None, False
    if os.path.isdir(chosen):
        raise ConfigError(f"is a directory, not a config file ({origin})", path=chosen)
    if not os.path.exists(chosen):
        raise ConfigError(f"config file not found ({origin})", path=chosen)
    return chosen, True


# --------------------------------------------------------------------------
# Warnings: legal but probably not what the operator meant
# --------------------------------------------------------------------------

#: The lock file glance-api's cache driver creates in its lock_path whenever it starts.
GLANCE_INIT_LOCK = "image_cache_db_init"


def config_warnings(config: Config) -> list[str]:
    """What ``check-config`` warns about without failing.

    A missing cache or lock directory (glance-api may simply not have run
    yet), and a lock directory glance-api evidently does not use: its driver
    leaves ``image_cache_db_init`` in its lock_path when it creates
    ``cache.db``, so a cache.db without that file beside our lock_path means
    the agent's locks would not exclude Glance's own prune and clean.
    """
    cache = config.cache
    warnings = []
    if not os.path.isdir(cache.dir):
        warnings.append(
            f"cache.dir {cache.dir} does not exist: glance-api creates it when it starts;"
            " maintenance commands fail until then"
        )
    if cache.lock_path is not None and not os.path.isdir(cache.lock_path):
        warnings.append(
            f"cache.lock_path {cache.lock_path} does not exist: the agent cannot take"
            " Glance's locks until it does"
        )
    lock_dir = cache.lock_path or cache.dir
    db = os.path.join(cache.dir, cache.db)
    marker = os.path.join(lock_dir, GLANCE_INIT_LOCK)
    if os.path.isfile(db) and os.path.isdir(lock_dir) and not os.path.lexists(marker):
        warnings.append(
            f"{db} exists but {marker} does not: glance-api takes its locks in another"
            " directory, so its prune and clean would not exclude the agent's; set"
            " cache.lock_path (or [oslo_concurrency] lock_path in the Glance config) to"
            " glance-api's lock_path"
        )
    return warnings


# --------------------------------------------------------------------------
# Showing the effective configuration
# --------------------------------------------------------------------------


def _key_kind(key: str) -> str:
    section, _, rest = key.partition(".")
    if section == "tasks":
        spec = _TASK_KEYS.get(rest.rpartition(".")[2])
    elif key.startswith("metrics.tls."):
        spec = _TLS_KEYS.get(rest.rpartition(".")[2])
    else:
        spec = _SECTIONS.get(section, {}).get(rest)
    return "plain" if spec is None else spec.kind


def _effective_items(config: Config) -> list[tuple[str, Any]]:
    """(YAML key, effective value) for every leaf, in documentation order."""
    items: list[tuple[str, Any]] = []
    for key in _leaf_keys():
        section, _, name = key.partition(".")
        if section == "tasks":
            task, _, field_name = name.partition(".")
            items.append((key, getattr(config.tasks[task], field_name)))
        elif key == "prune.min_free_space":
            items.append((key, (config.prune.min_free_bytes, config.prune.min_free_percent)))
        elif key == "prune.protected_images":
            items.append((key, sorted(config.prune.protected_images)))
        elif key == "metrics.listen":
            items.append((key, config.metrics.listen))
        elif key == "metrics.tls" and config.metrics.tls is not None:
            tls = config.metrics.tls
            items += [(f"metrics.tls.{k}", getattr(tls, k)) for k in _TLS_KEYS]
        elif key == "reconcile.orphans":
            items.append((key, config.reconcile.orphans.value))
        else:
            items.append((key, getattr(getattr(config, section), name)))
    return items


def _render_value(kind: str, value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if kind == "size":
        return _human_size(value)
    if kind == "duration":
        return format_duration(value)
    if kind == "fraction":
        return f"{value:g} ({value * 100:g}%)"
    if kind == "min_free":
        free_bytes, free_percent = value
        return f"{free_percent:g}%" if free_percent else _human_size(free_bytes)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


def render_effective_config(config: Config) -> str:
    """Aligned ``key = value  (source)`` lines, sizes in IEC units, for people.

    TLS files are shown by path only; nothing is ever read from them here.
    """
    rows = [
        (key, _render_value(_key_kind(key), value), config.sources.get(key, "default"))
        for key, value in _effective_items(config)
    ]
    key_width = max(len(k) for k, _, _ in rows)
    value_width = max(len(v) for _, v, _ in rows)
    lines = [f"{k.ljust(key_width)} = {v.ljust(value_width)}  ({s})" for k, v, s in rows]
    header = f"# effective configuration from {config.path or 'built-in defaults'}"
    return "\n".join([header, *lines]) + "\n"


def effective_config_dict(config: Config) -> dict[str, Any]:
    """The effective config for ``--json``: sizes in bytes, durations in seconds.

    ``config`` nests like the YAML, except that ``prune.min_free_space`` is
    given as ``min_free_bytes`` and ``min_free_percent``. ``sources`` maps
    dotted YAML keys to where each value came from.
    """
    tree: dict[str, Any] = {}
    for key, value in _effective_items(config):
        *parents, leaf = key.split(".")
        node = tree
        for parent in parents:
            node = node.setdefault(parent, {})
        if key == "prune.min_free_space":
            node["min_free_bytes"], node["min_free_percent"] = value
        elif isinstance(value, tuple):
            node[leaf] = list(value)
        else:
            node[leaf] = value
    return {"path": config.path, "config": tree, "sources": dict(config.sources)}
