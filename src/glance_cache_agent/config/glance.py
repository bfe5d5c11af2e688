"""Glance's own settings as config values: ``cache.glance_config``.

glance-api's ini files (read by ``glance_ini`` with oslo.config's rules)
supply the ``image_cache_*`` options, ``lock_path``, ``worker_self_reference_url``
and ``[database] connection``, so the agent and glance-api agree on the
cache without the operator copying values (nor the database password).
Each option is checked like the YAML key it fills, errors name the Glance
file and line (never the password), and a driver other than ``sqlite`` or
``centralized_db`` is refused. An unset ``image_cache_driver`` means
``centralized_db``, Glance's default since 2024.1.
"""

from __future__ import annotations

import os
import re
from typing import Any

from ..redact import mask_url
from . import glance_ini
from .errors import ConfigError
from .reader import Value
from .validate import absolute_path, database_url, db_name, normalize
from .validate import text as non_empty_text

__all__ = [
    "GLANCE_DEFAULT_DRIVER",
    "GLANCE_OPTIONS",
    "check_glance_files",
    "merge_glance",
    "resolve_glance_paths",
]

#: (section, option) in Glance's files -> our YAML key.
GLANCE_OPTIONS: tuple[tuple[str, str, str], ...] = (
    ("DEFAULT", "image_cache_dir", "cache.dir"),
    ("DEFAULT", "image_cache_max_size", "cache.max_size"),
    ("DEFAULT", "image_cache_stall_time", "cache.stall_time"),
    ("DEFAULT", "image_cache_sqlite_db", "cache.db"),
    ("oslo_concurrency", "lock_path", "cache.lock_path"),
    ("DEFAULT", "worker_self_reference_url", "cache.node_url"),
    ("database", "connection", "cache.database"),
)
_DRIVER_OPTION = ("DEFAULT", "image_cache_driver")
#: Glance's default driver since 2024.1 (28.0.0), and the drivers the agent manages.
GLANCE_DEFAULT_DRIVER = "centralized_db"
_DRIVERS = ("sqlite", "centralized_db")
#: keys whose YAML ``null`` means "what Glance's files say" (not "none")
_NULL_MEANS_GLANCE = ("cache.driver", "cache.database", "cache.node_url")

_DRIVER_REFUSALS = {
    "xattr": "image metadata lives in extended attributes on the files, in no database",
}
_CHECKS = {
    "cache.dir": absolute_path,
    "cache.lock_path": absolute_path,
    "cache.db": db_name,
    "cache.node_url": non_empty_text,
    "cache.database": database_url,
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
    try:
        return _CHECKS[yaml_key](text)
    except ValueError as exc:
        shown = "" if text == found.text else f" (from {mask_url(found.text)!r})"
        raise found.error(f"{exc}{shown}") from None


def _glance_entry(
    resolver: glance_ini.Resolver, section: str, option: str, yaml_key: str | None
) -> Value | None:
    """One Glance option as a YAML-keyed value; None when unset or empty.

    An empty value leaves Glance's default in place.
    """
    found = resolver.options.get((section, option))
    if found is None or not found.text.strip():
        return None
    text = resolver.value(found)
    parsed = text if yaml_key is None else _glance_value(found, yaml_key, text)
    source = f"{found.path} {found.label}"
    return Value(parsed, source, found.path, found.line, found.label)


def _read_glance_files(files: tuple[str, ...]) -> tuple[dict[str, Value], Value | None]:
    """Glance's options (files and ``--config-dir`` directories, later ones
    winning, ``$references`` substituted) as YAML-keyed values, plus the driver."""
    try:
        resolver = glance_ini.Resolver(glance_ini.read_glance_files(files))
        values: dict[str, Value] = {}
        for section, option, yaml_key in GLANCE_OPTIONS:
            entry = _glance_entry(resolver, section, option, yaml_key)
            if entry is not None:
                values[yaml_key] = entry
        driver = _glance_entry(resolver, *_DRIVER_OPTION, None)
    except glance_ini.IniError as exc:
        raise ConfigError(exc.message, path=exc.path, line=exc.line, key=exc.key) from None
    return values, driver


def _glance_driver(driver: Value | None, files: Value) -> Value:
    """``cache.driver`` as Glance's files set it; any driver but ours is refused.

    Unset means ``centralized_db``: Glance 28.0.0 (2024.1) and later default
    to it (older Glance defaulted to sqlite and is past its end of life).
    """
    if driver is None:
        source = "Glance's default: no Glance config file sets [DEFAULT] image_cache_driver"
        return Value(GLANCE_DEFAULT_DRIVER, source, files.path, files.line, files.key)
    name = driver.value.strip().lower()
    if name in _DRIVERS:
        return Value(name, driver.source, driver.path, driver.line, driver.key)
    why = _DRIVER_REFUSALS.get(name, "it is not a driver this agent knows")
    raise driver.error(
        f"is {driver.value!r}: {why}, so this agent refuses to manage this cache;"
        " only the sqlite and centralized_db drivers are supported"
    )


def resolve_glance_paths(found: Value, config_path: str | None) -> Value:
    """Relative Glance config paths are relative to the YAML file's directory."""
    base = os.path.dirname(os.path.abspath(config_path)) if config_path else os.getcwd()
    paths = tuple(normalize(os.path.join(base, p)) for p in found.value)
    if not paths:
        return found
    return Value(paths, found.source, found.path, found.line, found.key, found.item_lines)


def _glance_path_problem(path: str) -> str | None:
    """Why ``path`` is neither a readable file nor a config directory (or None)."""
    if not os.path.exists(path):
        return "no such file or directory"
    if os.path.isdir(path):
        return None if os.access(path, os.R_OK | os.X_OK) else "a directory that cannot be listed"
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        return "not a readable file"
    return None


def check_glance_files(files: Value) -> None:
    """A missing or unreadable Glance file or directory is reported at its YAML item."""
    for index, path in enumerate(files.value):
        problem = _glance_path_problem(path)
        if problem is not None:
            raise files.error(f"cannot read Glance config {path}: {problem}", item=index)


def merge_glance(values: dict[str, Value]) -> None:
    """Fill in Glance's options, then let the YAML's own keys win."""
    files = values.get("cache.glance_config")
    if files is None or not files.value:
        return
    glance_values, driver = _read_glance_files(files.value)
    glance_values["cache.driver"] = _glance_driver(driver, files)
    if "cache.dir" not in glance_values and "cache.dir" not in values:
        raise files.error(
            "no Glance config file sets [DEFAULT] image_cache_dir (Glance's cache is disabled"
            " without it); set it there or set cache.dir"
        )
    for key, found in glance_values.items():
        current = values.get(key)
        if current is None or (key in _NULL_MEANS_GLANCE and current.value is None):
            values[key] = found
