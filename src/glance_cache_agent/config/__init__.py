"""The agent's configuration: one table of keys, and everything that follows from it.

Rooms: ``keys`` (the table), ``units`` (sizes and durations, both ways),
``validate`` (value checks), ``reader`` (the line-tracking YAML reader),
``glance_ini`` + ``glance`` (Glance's ini files), ``crosscheck`` (checks
beyond one value, warnings), ``model`` (typed values whose defaults come
from the table), ``loader`` (choose, read, merge, build), ``render``
(``check-config`` output) and ``generate`` (``config.example.yaml`` and the
Ansible role's specs, ``make generate``). Importers use this package root.
"""

from __future__ import annotations

from .crosscheck import config_warnings
from .errors import ConfigError
from .keys import TASK_NAMES
from .loader import (
    DEFAULT_CONFIG_PATH,
    ENV_VAR,
    load_config,
    parse_config_text,
    resolve_config_path,
)
from .model import (
    GIB,
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
from .render import effective_config_dict, render_effective_config
from .units import (
    DURATION_UNITS,
    MAX_DURATION,
    MAX_SIZE,
    SIZE_UNITS,
    age,
    format_duration,
    format_size,
    iec,
    parse_duration,
    parse_size,
)

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "DURATION_UNITS",
    "ENV_VAR",
    "GIB",
    "MAX_DURATION",
    "MAX_SIZE",
    "SIZE_UNITS",
    "TASK_NAMES",
    "AgentConfig",
    "CacheConfig",
    "CleanConfig",
    "Config",
    "ConfigError",
    "LoggingConfig",
    "MetricsConfig",
    "PruneConfig",
    "ReconcileConfig",
    "TaskSchedule",
    "TlsConfig",
    "age",
    "config_warnings",
    "effective_config_dict",
    "format_duration",
    "format_size",
    "iec",
    "load_config",
    "parse_config_text",
    "parse_duration",
    "parse_size",
    "render_effective_config",
    "resolve_config_path",
]
