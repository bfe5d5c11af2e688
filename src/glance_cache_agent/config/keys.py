"""The table of configuration keys: the one place a key is described.

Each row names a leaf key of the YAML (dotted: ``cache.max_size``,
``tasks.clean.interval``, ``metrics.tls.cert_file``), its kind, its default
written as an operator would write it, and a one-line doc. Everything else
follows from this table: the reader's key set and did-you-mean candidates,
each value's check (``validate.check_for``), the typed model's defaults
(``model``), how ``check-config`` prints a value (``render``), and the
generated ``config.example.yaml`` and Ansible argument specs (``generate``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "KEYS",
    "SECTION_DOCS",
    "SECTION_NAMES",
    "TASK_NAMES",
    "Key",
    "Kind",
    "key",
    "section_keys",
]


class Kind(enum.Enum):
    """What a key's value is; decides its check, its printing and its Ansible type."""

    ABSOLUTE_PATH = "absolute path"
    FILE_NAME = "file name"
    EXISTING_FILE = "existing file"
    PATH_LIST = "path list"
    SIZE = "size"
    DURATION = "duration"
    #: a duration that must not be 0 (0 would mean "everything at once")
    POSITIVE_DURATION = "positive duration"
    FRACTION = "fraction"
    MIN_FREE = "size or percentage"
    INTEGER = "integer"
    BOOLEAN = "boolean"
    CHOICE = "choice"
    LISTEN = "listen address"
    CRON = "cron"
    IMAGE_IDS = "image ids"
    #: an SQLAlchemy database URL; shown with its password masked
    DATABASE_URL = "database URL"
    #: free text, compared exactly (``cache.node_url``)
    TEXT = "text"
    #: a nested mapping whose own keys are rows of the table (metrics.tls)
    MAPPING = "mapping"


@dataclass(frozen=True)
class Key:
    """One leaf key of the YAML."""

    name: str
    kind: Kind
    #: as written in YAML (``"10GiB"``, ``"24h"``, ``None``); parsed by the key's check
    default: object
    doc: str
    #: ``null`` is a valid value (disabled / none / from elsewhere)
    nullable: bool = False
    #: smallest value (INTEGER: a count, DURATION: seconds)
    minimum: float = 0
    #: CHOICE: the accepted values, lower case
    choices: tuple[str, ...] = ()
    #: must be set whenever its mapping is (metrics.tls.cert_file)
    required: bool = False
    #: extra comment lines shown under the doc in config.example.yaml
    example: tuple[str, ...] = ()

    @property
    def section(self) -> str:
        return self.name.partition(".")[0]

    @property
    def parent(self) -> str:
        return self.name.rpartition(".")[0]

    @property
    def leaf(self) -> str:
        return self.name.rpartition(".")[2]


#: The maintenance tasks, in the order ``check-config`` lists them.
TASK_NAMES = ("clean", "prune", "reconcile")

#: Top-level sections in the order they are documented and printed, with their doc.
SECTION_DOCS: dict[str, str] = {
    "cache": "Which cache, and Glance's own settings for it.",
    "tasks": (
        "Each task runs on `interval` or on `cron` (five fields, UTC; setting it replaces"
        " interval), plus a random delay of up to `jitter` so nodes rolled out together do not"
        " run in step."
    ),
    "prune": "Eviction policy beyond Glance's max_size.",
    "clean": "How clean treats invalid/ and incomplete/.",
    "reconcile": "What to do with orphans, and when a file is one.",
    "metrics": "The HTTP endpoint and how much it exports.",
    "logging": "Level and renderer.",
    "agent": "The process itself.",
}
SECTION_NAMES = tuple(SECTION_DOCS)

_ENABLED = "Turn a task off without deleting its schedule."
_CRON = "A crontab expression instead of interval."
_JITTER = "Spread load across nodes."


def _task(name: str, interval: str, interval_doc: str, jitter: str, cron_doc: str) -> list[Key]:
    """The four keys of one task; only their defaults and docs differ between tasks."""
    return [
        Key(f"tasks.{name}.enabled", Kind.BOOLEAN, True, _ENABLED),
        Key(f"tasks.{name}.interval", Kind.DURATION, interval, interval_doc, minimum=1),
        Key(f"tasks.{name}.cron", Kind.CRON, None, cron_doc, nullable=True),
        Key(f"tasks.{name}.jitter", Kind.DURATION, jitter, _JITTER),
    ]


KEYS: tuple[Key, ...] = (
    # --- cache
    Key("cache.dir", Kind.ABSOLUTE_PATH, "/var/lib/glance/image-cache",
        "Glance's image_cache_dir; / and system directories (/var, /usr, ...) are refused."),
    Key("cache.db", Kind.FILE_NAME, "cache.db",
        "Glance's image_cache_sqlite_db, relative to dir (an absolute path is used as is,"
        " like Glance)."),
    Key("cache.max_size", Kind.SIZE, "10GiB",
        "Glance's image_cache_max_size: prune evicts least-recently-used images above this."),
    Key("cache.stall_time", Kind.DURATION, "24h",
        "Glance's image_cache_stall_time: incomplete downloads older than this are removed"
        " by clean."),
    Key("cache.lock_path", Kind.ABSOLUTE_PATH, None,
        "Glance's [oslo_concurrency] lock_path for the prune/clean lock files; null = the"
        " cache dir.", nullable=True),
    Key("cache.glance_config", Kind.PATH_LIST, [],
        "glance-api.conf / glance-cache.conf files (a path or a list; relative to this file)"
        " to read image_cache_dir, image_cache_max_size, image_cache_stall_time,"
        " image_cache_sqlite_db, image_cache_driver, worker_self_reference_url, [database]"
        " connection and [oslo_concurrency] lock_path from; later files override earlier ones"
        " and keys set in this file override both. With no files, the agent trusts the keys"
        " of this file."),
    Key("cache.driver", Kind.CHOICE, None,
        "Glance's image_cache_driver: sqlite (rows in cache.db) or centralized_db (rows in"
        " Glance's database); null = what the Glance config says (unset there means"
        " centralized_db, Glance's default since 2024.1), or sqlite without glance_config.",
        nullable=True, choices=("sqlite", "centralized_db")),
    Key("cache.database", Kind.DATABASE_URL, None,
        "centralized_db: the SQLAlchemy URL of Glance's database (postgresql://, mysql+pymysql://);"
        " null = Glance's [database] connection. Its password is never shown.", nullable=True),
    Key("cache.node_url", Kind.TEXT, None,
        "centralized_db: this node's node_reference_url, matched exactly; null = Glance's"
        " worker_self_reference_url.", nullable=True),
    Key("cache.busy_timeout", Kind.DURATION, "5s",
        "How long the agent's own database connections wait for a lock (Glance's wait 0s and"
        " retry 2s)."),
    # --- tasks
    *_task("clean", "1h",
           "Glance's deprecated glance-cache-cleaner ran daily; hourly keeps stalled files"
           " from piling up.", "1m", 'e.g. "15 3 * * *" for 03:15 UTC every day.'),
    *_task("prune", "30m", "Matches the common every-30-minutes glance-cache-pruner cron job.",
           "1m", _CRON),
    *_task("reconcile", "6h",
           "Orphans and phantom rows appear rarely; a few runs a day keep accounting honest.",
           "5m", _CRON),
    # --- prune
    Key("prune.low_watermark", Kind.FRACTION, 1.0,
        "Once over max_size, prune down to this fraction (or percentage, e.g. 90%) of it;"
        " 1 = Glance."),
    Key("prune.min_free_space", Kind.MIN_FREE, 0,
        "Also prune while the filesystem has less free space than this size or percentage"
        " (e.g. 10%)."),
    Key("prune.max_idle", Kind.POSITIVE_DURATION, None,
        "Also evict images not read for this long, whatever the size; null = never (Glance).",
        nullable=True),
    Key("prune.protected_images", Kind.IMAGE_IDS, [],
        "Image ids prune never evicts (e.g. golden images every node boots from)."),
    Key("prune.max_images_per_run", Kind.INTEGER, None,
        "Most images one prune run may evict; null = no limit (Glance).",
        nullable=True, minimum=1),
    Key("prune.time_budget", Kind.POSITIVE_DURATION, "10m",
        "Longest one prune run may spend evicting before it stops and waits for the next run.",
        nullable=True),
    Key("prune.batch_size", Kind.INTEGER, 500,
        "Images evicted per database transaction; small batches keep Glance's writers"
        " unblocked.", minimum=1),
    Key("prune.batch_pause", Kind.DURATION, "100ms",
        "Pause between batches so Glance's lock polling gets a turn; 0 = none."),
    # --- clean
    Key("clean.invalid_grace", Kind.DURATION, "0s",
        "Keep files in invalid/ this long for debugging; 0 = remove at once (Glance)."),
    Key("clean.settle_time", Kind.DURATION, "1s",
        "Pause between the two looks at a stalled file, so one still being written is kept;"
        " 0 = none."),
    # --- reconcile
    Key("reconcile.orphan_grace", Kind.DURATION, "10m",
        "Files newer than this are never orphans (Glance renames a file before inserting"
        " its row)."),
    Key("reconcile.orphans", Kind.CHOICE, "adopt",
        "Image files without a row: adopt (give them a row so prune can evict them), delete,"
        " or report.", choices=("adopt", "delete", "report")),
    # --- metrics
    Key("metrics.listen", Kind.LISTEN, "127.0.0.1:9742",
        "host:port or [ipv6]:port of /metrics and /healthz; loopback unless you add TLS or"
        " a firewall."),
    Key("metrics.per_image", Kind.BOOLEAN, True,
        "Export image_hits_total and image_size_bytes per image."),
    Key("metrics.per_image_limit", Kind.INTEGER, 50,
        "At most this many per-image series (top by hits), so scrape cost does not grow with"
        " the cache."),
    Key("metrics.state_max_age", Kind.DURATION, "30s",
        "Cache state older than this is refreshed in the background on scrape."),
    Key("metrics.tls", Kind.MAPPING, None,
        "HTTPS for the endpoint; null = plain HTTP. When set, cert_file and key_file are"
        " required:", nullable=True, example=(
            "  tls:",
            "    cert_file: /etc/glance-cache-agent/tls/cert.pem",
            "    key_file: /etc/glance-cache-agent/tls/key.pem",
            "    client_ca_file: /etc/glance-cache-agent/tls/ca.pem  # verifies client certs",
            "    client_auth_required: true                           # needs client_ca_file",
        )),
    Key("metrics.tls.cert_file", Kind.EXISTING_FILE, None,
        "The server certificate (PEM).", required=True),
    Key("metrics.tls.key_file", Kind.EXISTING_FILE, None,
        "The certificate's private key (PEM).", required=True),
    Key("metrics.tls.client_ca_file", Kind.EXISTING_FILE, None,
        "CA certificates that verify client certificates."),
    Key("metrics.tls.client_auth_required", Kind.BOOLEAN, False,
        "Refuse clients without a certificate (needs client_ca_file)."),
    # --- logging
    Key("logging.level", Kind.CHOICE, "info",
        "debug, info, warning, error or critical (--log-level overrides).",
        choices=("debug", "info", "warning", "error", "critical")),
    Key("logging.format", Kind.CHOICE, "auto",
        "auto (console on a TTY, JSON lines otherwise), json or console (--log-format"
        " overrides).", choices=("auto", "json", "console")),
    # --- agent
    Key("agent.runtime_dir", Kind.ABSOLUTE_PATH, "/run/glance-cache-agent",
        "Holds the maintenance lock shared by the daemon and ad-hoc runs."),
    Key("agent.lock_timeout", Kind.DURATION, "1m",
        "How long an ad-hoc run waits for that lock before exiting 75."),
    Key("agent.glance_lock_timeout", Kind.DURATION, "1m",
        "How long a task waits for Glance's own prune/clean lock file."),
    Key("agent.first_run_delay", Kind.DURATION, "5s",
        "The daemon first runs every enabled task this long after start-up, then on its"
        " schedule."),
    Key("agent.max_task_runtime", Kind.POSITIVE_DURATION, "1h",
        "A task running longer than this stops the daemon's WATCHDOG=1 pings, so systemd"
        " (WatchdogSec=) restarts a hung agent. Keep it well above glance_lock_timeout plus the"
        " longest run you expect (prune.time_budget); null: no limit.", nullable=True),
)  # fmt: skip

_BY_NAME = {k.name: k for k in KEYS}


def key(name: str) -> Key:
    """The row of dotted key ``name`` (KeyError for an unknown one)."""
    return _BY_NAME[name]


def section_keys(parent: str) -> dict[str, Key]:
    """The keys directly under ``parent`` (``cache``, ``tasks.clean``, ``metrics.tls``)
    by leaf name, in table order."""
    return {k.leaf: k for k in KEYS if k.parent == parent}
