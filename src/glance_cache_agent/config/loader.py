"""Load a config file: choose it, read it safely, merge Glance's, build the model.

Sizes are bytes (int) and durations seconds (float) once parsed; the unit
syntax is documented in ``config.example.yaml``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from typing import TypeVar

from ..maintenance import OrphanPolicy
from . import crosscheck, model
from .errors import ConfigError
from .glance import check_glance_files, merge_glance, resolve_glance_paths
from .keys import KEYS, TASK_NAMES, Kind, section_keys
from .model import Config, TaskSchedule
from .reader import Value, read_yaml
from .textfile import UnsafeFile, read_small_file

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "ENV_VAR",
    "leaf_keys",
    "load_config",
    "parse_config_text",
    "resolve_config_path",
]

DEFAULT_CONFIG_PATH = "/etc/glance-cache-agent/config.yaml"
ENV_VAR = "GLANCE_CACHE_AGENT_CONFIG"

#: Keys whose value is a pair that fills two model fields.
_PAIRS = {
    "prune.min_free_space": ("min_free_bytes", "min_free_percent"),
    "metrics.listen": ("host", "port"),
}
_TLS = "metrics.tls"


def leaf_keys() -> list[str]:
    """Every leaf YAML key outside nested mappings, in documentation order."""
    return [k.name for k in KEYS if k.parent != _TLS]


_Section = TypeVar("_Section")


def _section(base: _Section, values: Mapping[str, Value], section: str) -> _Section:
    """``base`` with every key of ``section`` set in ``values`` replaced (not nested mappings)."""
    changes = {}
    for name, row in section_keys(section).items():
        found = values.get(row.name)
        if found is None or row.kind is Kind.MAPPING:
            continue
        pair = _PAIRS.get(row.name)
        if pair is None:
            changes[name] = found.value
        else:
            changes.update(zip(pair, found.value, strict=True))
    return replace(base, **changes)  # type: ignore[type-var]


def _build_tasks(values: Mapping[str, Value], defaults: Config) -> dict[str, TaskSchedule]:
    tasks = {}
    for name in TASK_NAMES:
        task = defaults.tasks[name]
        changes = {
            k: values[f"tasks.{name}.{k}"].value
            for k in section_keys(f"tasks.{name}")
            if f"tasks.{name}.{k}" in values
        }
        if changes.get("cron") is not None:
            changes["interval"] = None  # a cron replaces the default interval
        tasks[name] = replace(task, **changes)
    return tasks


def _build_prune(values: Mapping[str, Value]) -> model.PruneConfig:
    prune = _section(model.PruneConfig(), values, "prune")
    return replace(prune, protected_images=frozenset(prune.protected_images))


def _build_reconcile(values: Mapping[str, Value]) -> model.ReconcileConfig:
    reconcile = _section(model.ReconcileConfig(), values, "reconcile")
    return replace(reconcile, orphans=OrphanPolicy(reconcile.orphans))


def _build_metrics(values: Mapping[str, Value]) -> model.MetricsConfig:
    metrics = _section(model.MetricsConfig(), values, "metrics")
    tls = None
    if values.get(_TLS) is not None and values[_TLS].value:
        fields = {
            k: values[row.name].value for k, row in section_keys(_TLS).items() if row.name in values
        }
        tls = model.TlsConfig(**fields)
    return replace(metrics, tls=tls)


def _sources(config: Config, values: Mapping[str, Value]) -> dict[str, str]:
    """Where each effective value came from (``default`` unless set)."""
    sources = {key: "default" for key in leaf_keys()}
    if config.metrics.tls is not None:
        sources.update({row.name: "default" for row in section_keys(_TLS).values()})
    for key, found in values.items():
        sources[key] = found.source
    for name in TASK_NAMES:  # a cron replaces the default interval
        cron = values.get(f"tasks.{name}.cron")
        if cron is not None and cron.value is not None:
            sources[f"tasks.{name}.interval"] = cron.source
    return sources


def _build(path: str | None, values: Mapping[str, Value]) -> Config:
    config = Config(
        path=path,
        cache=_section(model.CacheConfig(), values, "cache"),
        tasks=_build_tasks(values, Config()),
        prune=_build_prune(values),
        clean=_section(model.CleanConfig(), values, "clean"),
        reconcile=_build_reconcile(values),
        metrics=_build_metrics(values),
        logging=_section(model.LoggingConfig(), values, "logging"),
        agent=_section(model.AgentConfig(), values, "agent"),
    )
    config.sources.update(_sources(config, values))
    return config


def parse_config_text(text: str, path: str | None = None, check_schedules: bool = True) -> Config:
    """Parse and validate YAML ``text``; ``path`` only labels errors and sources.

    ``check_schedules`` False skips parsing cron expressions with the
    scheduler (their shape is still checked): for commands that never
    schedule, it saves importing APScheduler.
    """
    values = read_yaml(text, path)
    if check_schedules:
        crosscheck.check_schedules(values)
    if "cache.glance_config" in values:
        values["cache.glance_config"] = resolve_glance_paths(values["cache.glance_config"], path)
        check_glance_files(values["cache.glance_config"])
    merge_glance(values)
    crosscheck.check_driver(values)
    if "cache.dir" in values:
        crosscheck.check_cache_dir(values["cache.dir"])
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
