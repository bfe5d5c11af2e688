"""The agent's configuration as typed, immutable values.

The loader parses and validates YAML (and Glance's ini files) into these
classes; everything else in the agent reads only these. Durations are
seconds (float), sizes bytes (int). Every default is the key table's
(``keys.KEYS``), parsed by the key's own check, so the model, the example
file and the role cannot disagree; they equal Glance's where Glance has one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..driver import CacheSettings
from ..maintenance import CleanPolicy, OrphanPolicy, PrunePolicy, ReconcilePolicy
from .keys import TASK_NAMES, key
from .validate import parse_default

GIB = 1024**3


def default(name: str) -> Any:
    """The parsed default of dotted key ``name``."""
    return parse_default(key(name))


_MIN_FREE_BYTES, _MIN_FREE_PERCENT = default("prune.min_free_space")
_HOST, _PORT = default("metrics.listen")


@dataclass(frozen=True)
class CacheConfig:
    """``cache:`` -- which cache, and Glance's own settings for it."""

    dir: str = default("cache.dir")
    db: str = default("cache.db")
    max_size: int = default("cache.max_size")
    stall_time: float = default("cache.stall_time")
    lock_path: str | None = default("cache.lock_path")
    glance_config: tuple[str, ...] = default("cache.glance_config")
    #: how long our own database connections wait for a lock
    busy_timeout: float = default("cache.busy_timeout")
    #: the metadata store: ``sqlite`` or ``centralized_db`` (the loader resolves null)
    driver: str = default("cache.driver") or "sqlite"
    #: centralized_db: the SQLAlchemy URL of Glance's database (holds its password)
    database: str | None = field(default=default("cache.database"), repr=False)
    #: centralized_db: this node's ``node_reference_url``
    node_url: str | None = default("cache.node_url")


@dataclass(frozen=True)
class TaskSchedule:
    """``tasks.<name>:`` -- when one maintenance task runs."""

    name: str
    enabled: bool = True
    #: seconds between runs (used when ``cron`` is None)
    interval: float | None = None
    #: a five-field crontab expression, evaluated in UTC
    cron: str | None = None
    #: random delay of up to this many seconds added to each run
    jitter: float = 0.0


def _default_task(name: str) -> TaskSchedule:
    return TaskSchedule(
        name,
        enabled=default(f"tasks.{name}.enabled"),
        interval=default(f"tasks.{name}.interval"),
        cron=default(f"tasks.{name}.cron"),
        jitter=default(f"tasks.{name}.jitter"),
    )


def _default_tasks() -> dict[str, TaskSchedule]:
    return {name: _default_task(name) for name in TASK_NAMES}


@dataclass(frozen=True)
class PruneConfig:
    """``prune:`` -- eviction policy beyond Glance's ``max_size``."""

    low_watermark: float = default("prune.low_watermark")
    min_free_bytes: int = _MIN_FREE_BYTES
    min_free_percent: float = _MIN_FREE_PERCENT
    max_idle: float | None = default("prune.max_idle")
    protected_images: frozenset[str] = frozenset(default("prune.protected_images"))
    max_images_per_run: int | None = default("prune.max_images_per_run")
    time_budget: float | None = default("prune.time_budget")
    batch_size: int = default("prune.batch_size")
    batch_pause: float = default("prune.batch_pause")


@dataclass(frozen=True)
class CleanConfig:
    """``clean:`` -- how clean treats ``invalid/`` and ``incomplete/``."""

    invalid_grace: float = default("clean.invalid_grace")
    settle_time: float = default("clean.settle_time")


@dataclass(frozen=True)
class ReconcileConfig:
    """``reconcile:`` -- what to do with orphans, and when a file is one."""

    orphan_grace: float = default("reconcile.orphan_grace")
    orphans: OrphanPolicy = OrphanPolicy(default("reconcile.orphans"))


@dataclass(frozen=True)
class TlsConfig:
    """``metrics.tls:`` -- HTTPS and optional client certificates."""

    cert_file: str
    key_file: str
    client_ca_file: str | None = default("metrics.tls.client_ca_file")
    client_auth_required: bool = default("metrics.tls.client_auth_required")


@dataclass(frozen=True)
class MetricsConfig:
    """``metrics:`` -- the HTTP endpoint and how much it exports."""

    host: str = _HOST
    port: int = _PORT
    per_image: bool = default("metrics.per_image")
    per_image_limit: int = default("metrics.per_image_limit")
    #: cache state older than this is refreshed (in the background) on scrape
    state_max_age: float = default("metrics.state_max_age")
    tls: TlsConfig | None = None

    @property
    def listen(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class LoggingConfig:
    """``logging:`` -- level and renderer (``auto``: console on a TTY, else JSON)."""

    level: str = default("logging.level")
    format: str = default("logging.format")


@dataclass(frozen=True)
class AgentConfig:
    """``agent:`` -- the process itself."""

    #: holds the maintenance lock shared by the daemon and ad-hoc runs
    runtime_dir: str = default("agent.runtime_dir")
    #: how long an ad-hoc run waits for the maintenance lock before exit 75
    lock_timeout: float = default("agent.lock_timeout")
    #: how long a task may wait for Glance's own prune/clean lock
    glance_lock_timeout: float = default("agent.glance_lock_timeout")
    #: the daemon runs every enabled task this long after start-up (then on schedule)
    first_run_delay: float = default("agent.first_run_delay")
    #: a task running longer than this (monotonic clock) stops the daemon's
    #: WATCHDOG=1, so systemd restarts a hung agent; None: no limit
    max_task_runtime: float | None = default("agent.max_task_runtime")


@dataclass(frozen=True)
class Config:
    """The whole effective configuration.

    ``sources`` maps dotted key paths (``cache.max_size``) to where the value
    came from: ``default``, ``<file>:<line>`` or ``<glance.conf> [DEFAULT]
    image_cache_max_size``. ``check-config`` prints it.
    """

    path: str | None = None
    cache: CacheConfig = field(default_factory=CacheConfig)
    tasks: dict[str, TaskSchedule] = field(default_factory=_default_tasks)
    prune: PruneConfig = field(default_factory=PruneConfig)
    clean: CleanConfig = field(default_factory=CleanConfig)
    reconcile: ReconcileConfig = field(default_factory=ReconcileConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    sources: dict[str, str] = field(default_factory=dict, compare=False)

    def cache_settings(self) -> CacheSettings:
        """What the driver needs."""
        c = self.cache
        return CacheSettings(
            cache_dir=c.dir,
            db=c.db,
            max_size=c.max_size,
            stall_time=c.stall_time,
            lock_path=c.lock_path,
            busy_timeout=c.busy_timeout,
        )

    def prune_policy(self, max_size: int | None = None) -> PrunePolicy:
        """The prune policy; ``max_size`` overrides ``cache.max_size`` (CLI)."""
        p = self.prune
        return PrunePolicy(
            max_size=self.cache.max_size if max_size is None else max_size,
            low_watermark=p.low_watermark,
            min_free_bytes=p.min_free_bytes,
            min_free_percent=p.min_free_percent,
            max_idle=p.max_idle,
            protected_images=p.protected_images,
            max_images_per_run=p.max_images_per_run,
            time_budget=p.time_budget,
            batch_size=p.batch_size,
            batch_pause=p.batch_pause,
        )

    def clean_policy(self, stall_time: float | None = None) -> CleanPolicy:
        """The clean policy; ``stall_time`` overrides ``cache.stall_time`` (CLI)."""
        return CleanPolicy(
            stall_time=self.cache.stall_time if stall_time is None else stall_time,
            invalid_grace=self.clean.invalid_grace,
            settle_time=self.clean.settle_time,
        )

    def reconcile_policy(self) -> ReconcilePolicy:
        return ReconcilePolicy(
            orphan_grace=self.reconcile.orphan_grace, orphans=self.reconcile.orphans
        )
