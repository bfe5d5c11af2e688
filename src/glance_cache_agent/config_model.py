"""The agent's configuration as typed, immutable values.

``config.py`` parses and validates YAML (and Glance's ini files) into these
classes; everything else in the agent reads only these. Durations are
seconds (float), sizes bytes (int). The defaults equal Glance's where Glance
has one, so an empty config file behaves like Glance's cron tools would.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .driver import CacheSettings
from .maintenance import CleanPolicy, OrphanPolicy, PrunePolicy, ReconcilePolicy

GIB = 1024**3

#: The maintenance tasks, in the order ``check-config`` lists them.
TASK_NAMES = ("clean", "prune", "reconcile")


@dataclass(frozen=True)
class CacheConfig:
    """``cache:`` -- which cache, and Glance's own settings for it."""

    dir: str = "/var/lib/glance/image-cache"
    db: str = "cache.db"
    max_size: int = 10 * GIB
    stall_time: float = 86400.0
    lock_path: str | None = None
    glance_config: tuple[str, ...] = ()
    #: how long our own database connections wait for a lock
    busy_timeout: float = 5.0


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


def _default_tasks() -> dict[str, TaskSchedule]:
    return {
        "clean": TaskSchedule("clean", interval=3600.0, jitter=60.0),
        "prune": TaskSchedule("prune", interval=1800.0, jitter=60.0),
        "reconcile": TaskSchedule("reconcile", interval=21600.0, jitter=300.0),
    }


@dataclass(frozen=True)
class PruneConfig:
    """``prune:`` -- eviction policy beyond Glance's ``max_size``."""

    low_watermark: float = 1.0
    min_free_bytes: int = 0
    min_free_percent: float = 0.0
    max_idle: float | None = None
    protected_images: frozenset[str] = frozenset()
    max_images_per_run: int | None = None
    time_budget: float | None = 600.0
    batch_size: int = 500
    batch_pause: float = 0.1


@dataclass(frozen=True)
class CleanConfig:
    """``clean:`` -- how clean treats ``invalid/`` and ``incomplete/``."""

    invalid_grace: float = 0.0
    settle_time: float = 1.0


@dataclass(frozen=True)
class ReconcileConfig:
    """``reconcile:`` -- what to do with orphans, and when a file is one."""

    orphan_grace: float = 600.0
    orphans: OrphanPolicy = OrphanPolicy.ADOPT


@dataclass(frozen=True)
class TlsConfig:
    """``metrics.tls:`` -- HTTPS and optional client certificates."""

    cert_file: str
    key_file: str
    client_ca_file: str | None = None
    client_auth_required: bool = False


@dataclass(frozen=True)
class MetricsConfig:
    """``metrics:`` -- the HTTP endpoint and how much it exports."""

    host: str = "127.0.0.1"
    port: int = 9742
    per_image: bool = True
    per_image_limit: int = 50
    #: cache state older than this is refreshed (in the background) on scrape
    state_max_age: float = 30.0
    tls: TlsConfig | None = None

    @property
    def listen(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class LoggingConfig:
    """``logging:`` -- level and renderer (``auto``: console on a TTY, else JSON)."""

    level: str = "info"
    format: str = "auto"


@dataclass(frozen=True)
class AgentConfig:
    """``agent:`` -- the process itself."""

    #: holds the maintenance lock shared by the daemon and ad-hoc runs
    runtime_dir: str = "/run/glance-cache-agent"
    #: how long an ad-hoc run waits for the maintenance lock before exit 75
    lock_timeout: float = 60.0
    #: how long a task may wait for Glance's own prune/clean lock
    glance_lock_timeout: float = 60.0
    #: the daemon runs every enabled task this long after start-up (then on schedule)
    first_run_delay: float = 5.0
    #: a task running longer than this (monotonic clock) stops the daemon's
    #: WATCHDOG=1, so systemd restarts a hung agent; None: no limit
    max_task_runtime: float | None = 3600.0


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
