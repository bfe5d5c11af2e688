"""Checks that look beyond one value: at the filesystem, the scheduler, other keys.

Errors (a cache dir that is a system directory, a cron expression the
scheduler refuses) stop the load; warnings (``config_warnings``) are legal
settings that are probably not what the operator meant, shown by
``check-config``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace

from .keys import TASK_NAMES
from .model import Config, TaskSchedule
from .reader import Value
from .validate import normalize

__all__ = [
    "DANGEROUS_DIRS",
    "GLANCE_INIT_LOCK",
    "check_cache_dir",
    "check_driver",
    "check_schedules",
    "config_warnings",
]

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

#: The lock file glance-api's cache driver creates in its lock_path whenever it starts.
GLANCE_INIT_LOCK = "image_cache_db_init"


def check_cache_dir(value: Value) -> None:
    """Refuse ``/`` and system directories, also when reached through a symlink."""
    normalized = normalize(value.value)
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


#: what centralized_db needs, and the Glance option it defaults to
_CENTRALIZED_NEEDS = (
    ("cache.database", "[database] connection"),
    ("cache.node_url", "[DEFAULT] worker_self_reference_url"),
)


def check_driver(values: dict[str, Value]) -> None:
    """Resolve a null ``cache.driver`` (sqlite) and refuse a centralized_db
    cache without a database URL or a node URL, naming where each comes from.

    Runs after Glance's files are merged, so a null driver here means no
    ``glance_config`` was given.
    """
    driver = values.get("cache.driver")
    if driver is not None and driver.value is None:
        values["cache.driver"] = replace(driver, value="sqlite")
        return
    if driver is None or driver.value != "centralized_db":
        return
    files = values.get("cache.glance_config")
    for key, glance_option in _CENTRALIZED_NEEDS:
        found = values.get(key)
        if found is not None and found.value is not None:
            continue
        if files is not None and files.value:
            raise files.error(
                f"cache.driver is centralized_db ({driver.source}), but {key} is not set here"
                f" and no Glance config file sets {glance_option}; set one of them"
            )
        raise driver.error(
            f"is centralized_db but {key} is not set: set it, or name glance-api.conf in"
            f" cache.glance_config to read it from {glance_option}"
        )


def check_schedules(values: Mapping[str, Value]) -> None:
    """Every cron expression parses as the scheduler will run it (else the
    error names its line)."""
    from .cron import build_trigger

    for name in TASK_NAMES:
        entry = values.get(f"tasks.{name}.cron")
        if entry is None or entry.value is None:
            continue
        try:
            build_trigger(TaskSchedule(name, cron=entry.value))
        except ValueError as exc:
            reason = str(exc).removeprefix(f"cron {entry.value!r}: ")
            raise entry.error(f"invalid crontab expression {entry.value!r}: {reason}") from None


def config_warnings(config: Config) -> list[str]:
    """What ``check-config`` warns about without failing.

    A missing cache or lock directory (glance-api may simply not have run
    yet), and a lock directory glance-api evidently does not use: its driver
    leaves ``image_cache_db_init`` in its lock_path when it creates
    ``cache.db``, so a cache.db without that file beside our lock_path means
    the agent's locks would not exclude Glance's own prune and clean (sqlite
    only: with centralized_db a leftover ``cache.db`` proves nothing).
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
    sqlite = cache.driver == "sqlite"  # centralized_db never creates the marker
    if sqlite and os.path.isfile(db) and os.path.isdir(lock_dir) and not os.path.lexists(marker):
        warnings.append(
            f"{db} exists but {marker} does not: glance-api takes its locks in another"
            " directory, so its prune and clean would not exclude the agent's; set"
            " cache.lock_path (or [oslo_concurrency] lock_path in the Glance config) to"
            " glance-api's lock_path"
        )
    return warnings
