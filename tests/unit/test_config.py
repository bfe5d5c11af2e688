"""Configuration: YAML validation with located errors, Glance's ini files, sources.

Every malformed config asserts the exact one-line message an operator sees
(``file:line: key: message``), because that line is the whole user interface
of a configuration error.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from glance_cache_agent.config import (
    DEFAULT_CONFIG_PATH,
    DURATION_UNITS,
    ENV_VAR,
    GIB,
    MAX_DURATION,
    MAX_SIZE,
    SIZE_UNITS,
    Config,
    ConfigError,
    TaskSchedule,
    TlsConfig,
    effective_config_dict,
    format_duration,
    format_size,
    load_config,
    parse_config_text,
    parse_duration,
    parse_size,
    render_effective_config,
    resolve_config_path,
)
from glance_cache_agent.config import loader as config_module
from glance_cache_agent.maintenance import OrphanPolicy

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config.example.yaml"
UUID_A = "0b5c7f1e-3d0a-4c59-9f7e-2a1b3c4d5e6f"
UUID_B = "f4e3d2c1-b0a9-4876-8543-210fedcba987"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def load_text(tmp_path: Path, text: str) -> Config:
    return load_config(str(write(tmp_path / "config.yaml", text)))


def error_of(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    return info.value


# --------------------------------------------------------------------------
# Malformed configs: the exact message
# --------------------------------------------------------------------------

MALFORMED = [
    # unknown names, with and without a close match
    (
        "cache:\n  max_szie: 10GiB\n",
        "{cfg}:2: cache.max_szie: unknown key (did you mean cache.max_size?)",
    ),
    (
        "clean:\n  zzz: 1\n",
        "{cfg}:2: clean.zzz: unknown key (clean accepts invalid_grace, settle_time)",
    ),
    ("cahce:\n  dir: /srv/c\n", "{cfg}:1: cahce: unknown section (did you mean cache?)"),
    (
        "foo: 1\n",
        "{cfg}:1: foo: unknown section (the top level accepts cache, tasks, prune, clean,"
        " reconcile, metrics, logging, agent)",
    ),
    (
        "tasks:\n  prun:\n    interval: 1h\n",
        "{cfg}:2: tasks.prun: unknown task (did you mean tasks.prune?)",
    ),
    (
        "tasks:\n  prune:\n    intervall: 1h\n",
        "{cfg}:3: tasks.prune.intervall: unknown key (did you mean tasks.prune.interval?)",
    ),
    (
        "metrics:\n  tls:\n    cert: /x\n",
        "{cfg}:3: metrics.tls.cert: unknown key (did you mean metrics.tls.cert_file?)",
    ),
    # document shape and YAML syntax
    ("- cache\n", "{cfg}:1: the top level must be a mapping of sections, got a list"),
    ("hello\n", "{cfg}:1: the top level must be a mapping of sections, got 'hello'"),
    (
        "cache:\n  dir: /srv/c\n dir2: x\n",
        "{cfg}:3: YAML syntax error: expected <block end>, but found '<block mapping start>'"
        " (while parsing a block mapping)",
    ),
    (
        "cache:\n  max_size: 1GiB\n\tdb: x\n",
        "{cfg}:3: YAML syntax error: found character '\\t' that cannot start any token"
        " (while scanning for the next token)",
    ),
    (
        "cache:\n  max_size: 1GiB\n  max_size: 2GiB\n",
        "{cfg}:3: cache.max_size: duplicate key (first set on line 2)",
    ),
    ("cache: {}\nprune: {}\ncache: {}\n", "{cfg}:3: cache: duplicate key (first set on line 1)"),
    ("cache:\n  <<: {dir: /srv/c}\n", "{cfg}:2: cache: YAML merge keys ('<<') are not supported"),
    ("cache: 5\n", "{cfg}:1: cache: must be a mapping, got 5"),
    ("tasks:\n  clean: [1h]\n", "{cfg}:2: tasks.clean: must be a mapping, got a list"),
    (
        "cache:\n  max_size: !!python/object:os.system x\n",
        "{cfg}:2: cache.max_size: invalid value: could not determine a constructor for the tag"
        " 'tag:yaml.org,2002:python/object:os.system'",
    ),
    # sizes
    (
        "cache:\n  max_size: 10G\n",
        "{cfg}:2: cache.max_size: ambiguous unit 'G' in '10G': write GiB (powers of 1024)"
        " or GB (powers of 1000)",
    ),
    (
        "cache:\n  max_size: 10gib\n",
        "{cfg}:2: cache.max_size: unknown size unit 'gib' in '10gib' (did you mean 'GiB'?);"
        " use B, KB, MB, GB, TB, PB, KiB, MiB, GiB, TiB or PiB",
    ),
    ("cache:\n  max_size: -1GiB\n", "{cfg}:2: cache.max_size: must not be negative, got '-1GiB'"),
    ("cache:\n  max_size: -5\n", "{cfg}:2: cache.max_size: must not be negative, got -5"),
    (
        "cache:\n  max_size: 1.5\n",
        "{cfg}:2: cache.max_size: must be a whole number of bytes, got 1.5",
    ),
    (
        "cache:\n  max_size: [1]\n",
        "{cfg}:2: cache.max_size: must be a size such as 10GiB or 500MB, got a list",
    ),
    # durations
    (
        "cache:\n  stall_time: soon\n",
        "{cfg}:2: cache.stall_time: must be a duration such as 30s, 15m or 1h30m, or a number"
        " of seconds, got 'soon'",
    ),
    ("cache:\n  stall_time: -5m\n", "{cfg}:2: cache.stall_time: must not be negative, got '-5m'"),
    (
        "cache:\n  stall_time: 10min\n",
        "{cfg}:2: cache.stall_time: unknown duration unit 'min' in '10min';"
        " use ms, s, m, h, d or w",
    ),
    (
        "clean:\n  settle_time: 1H\n",
        "{cfg}:2: clean.settle_time: unknown duration unit 'H' in '1H' (did you mean 'h'?);"
        " use ms, s, m, h, d or w",
    ),
    (
        "cache:\n  stall_time: .nan\n",
        "{cfg}:2: cache.stall_time: must be a number of seconds, got nan",
    ),
    (
        "agent:\n  lock_timeout: 200y\n",
        "{cfg}:2: agent.lock_timeout: unknown duration unit 'y' in '200y'; use ms, s, m, h, d or w",
    ),
    (
        "agent:\n  lock_timeout: 40000d\n",
        "{cfg}:2: agent.lock_timeout: is too large (at most 100 years), got '40000d'",
    ),
    (
        "prune:\n  max_idle: 0\n",
        "{cfg}:2: prune.max_idle: must be longer than 0 (or null to disable), got 0",
    ),
    (
        "prune:\n  time_budget: 0s\n",
        "{cfg}:2: prune.time_budget: must be longer than 0 (or null to disable), got '0s'",
    ),
    (
        "tasks:\n  clean:\n    interval: 500ms\n",
        "{cfg}:3: tasks.clean.interval: must be at least 1s, got '500ms'",
    ),
    (
        "tasks:\n  clean:\n    interval: null\n",
        "{cfg}:3: tasks.clean.interval: must be a duration such as 30s, 15m or 1h30m,"
        " or a number of seconds, got null",
    ),
    # prune policy
    (
        "prune:\n  low_watermark: 150%\n",
        "{cfg}:2: prune.low_watermark: must be a fraction between 0 and 1 or a percentage,"
        " got '150%'",
    ),
    (
        "prune:\n  low_watermark: 0\n",
        "{cfg}:2: prune.low_watermark: must be a fraction between 0 and 1 or a percentage, got 0",
    ),
    (
        "prune:\n  low_watermark: 90\n",
        "{cfg}:2: prune.low_watermark: must be a fraction between 0 and 1 or a percentage, got 90",
    ),
    (
        "prune:\n  min_free_space: 100%\n",
        "{cfg}:2: prune.min_free_space: must be a size such as 20GiB or a percentage from 0%"
        " to below 100%, got '100%'",
    ),
    (
        "prune:\n  max_images_per_run: 0\n",
        "{cfg}:2: prune.max_images_per_run: must be at least 1, got 0",
    ),
    (
        "prune:\n  max_images_per_run: 1.5\n",
        "{cfg}:2: prune.max_images_per_run: must be a positive whole number (or null), got 1.5",
    ),
    (
        "prune:\n  batch_size: true\n",
        "{cfg}:2: prune.batch_size: must be a positive whole number, got true",
    ),
    (
        f"prune:\n  protected_images:\n    - {UUID_A}\n    - a/b\n",
        "{cfg}:4: prune.protected_images[1]: 'a/b' is not a valid image id:"
        " it contains a path separator",
    ),
    (
        f"prune:\n  protected_images: [{UUID_A}, '42']\n",
        "{cfg}:2: prune.protected_images[1]: '42' is not a valid image id:"
        " it is not a UUID (Glance issues only UUIDs: 8-4-4-4-12 hex digits)",
    ),
    (
        "prune:\n  protected_images: abc\n",
        "{cfg}:2: prune.protected_images: must be a list, got 'abc'",
    ),
    # enumerations
    (
        "reconcile:\n  orphans: keep\n",
        "{cfg}:2: reconcile.orphans: must be one of adopt, delete, report, got 'keep'",
    ),
    (
        "logging:\n  level: warn\n",
        "{cfg}:2: logging.level: must be one of debug, info, warning, error, critical, got 'warn'"
        " (did you mean 'warning'?)",
    ),
    (
        "logging:\n  format: text\n",
        "{cfg}:2: logging.format: must be one of auto, json, console, got 'text'",
    ),
    (
        "metrics:\n  per_image: 'yes'\n",
        "{cfg}:2: metrics.per_image: must be true or false, got 'yes'",
    ),
    (
        "metrics:\n  per_image_limit: -1\n",
        "{cfg}:2: metrics.per_image_limit: must be at least 0, got -1",
    ),
    # metrics.listen
    (
        "metrics:\n  listen: ':9742'\n",
        "{cfg}:2: metrics.listen: must be host:port or [ipv6]:port, e.g. 127.0.0.1:9742;"
        " the host is missing in ':9742'",
    ),
    (
        "metrics:\n  listen: localhost:abc\n",
        "{cfg}:2: metrics.listen: port must be a number from 1 to 65535, got 'abc'",
    ),
    (
        "metrics:\n  listen: localhost:70000\n",
        "{cfg}:2: metrics.listen: port must be a number from 1 to 65535, got '70000'",
    ),
    (
        "metrics:\n  listen: localhost:0\n",
        "{cfg}:2: metrics.listen: port must be a number from 1 to 65535, got '0'",
    ),
    (
        "metrics:\n  listen: '::1:9742'\n",
        "{cfg}:2: metrics.listen: an IPv6 address needs brackets, e.g. [::1]:9742, got '::1:9742'",
    ),
    (
        "metrics:\n  listen: '[::zz]:9742'\n",
        "{cfg}:2: metrics.listen: '::zz' is not an IPv6 address in '[::zz]:9742'",
    ),
    (
        "metrics:\n  listen: 9742\n",
        "{cfg}:2: metrics.listen: must be host:port or [ipv6]:port, e.g. 127.0.0.1:9742, got 9742",
    ),
    # tasks
    (
        "tasks:\n  prune:\n    interval: 1h\n    cron: '0 * * * *'\n",
        "{cfg}:4: tasks.prune.cron: set either interval or cron for task prune, not both",
    ),
    (
        "tasks:\n  prune:\n    cron: '61 * * * *'\n",
        "{cfg}:3: tasks.prune.cron: invalid crontab expression '61 * * * *': Error validating"
        " expression '61': the last value (61) is higher than the maximum value (59)",
    ),
    (
        "tasks:\n  clean:\n    enabled: 'true'\n",
        "{cfg}:3: tasks.clean.enabled: must be true or false, got 'true'",
    ),
    (
        "tasks:\n  clean:\n    jitter: -1\n",
        "{cfg}:3: tasks.clean.jitter: must not be negative, got -1",
    ),
    # paths
    (
        "cache:\n  dir: image-cache\n",
        "{cfg}:2: cache.dir: must be an absolute path, got 'image-cache'",
    ),
    (
        "cache:\n  lock_path: locks\n",
        "{cfg}:2: cache.lock_path: must be an absolute path, got 'locks'",
    ),
    ("cache:\n  db: ''\n", "{cfg}:2: cache.db: must be a non-empty string, got ''"),
    ("cache:\n  db: sub/\n", "{cfg}:2: cache.db: must name a file, got 'sub/'"),
    (
        "agent:\n  runtime_dir: run\n",
        "{cfg}:2: agent.runtime_dir: must be an absolute path, got 'run'",
    ),
    (
        "cache:\n  glance_config: 5\n",
        "{cfg}:2: cache.glance_config: must be a path or a list of paths, got 5",
    ),
    (
        "cache:\n  glance_config:\n    - missing.conf\n",
        "{cfg}:3: cache.glance_config[0]: cannot read Glance config {dir}/missing.conf:"
        " no such file or directory",
    ),
    # TLS
    (
        "metrics:\n  tls:\n    cert_file: {dir}/cert.pem\n",
        "{cfg}:2: metrics.tls: missing required key 'key_file'",
    ),
    (
        "metrics:\n  tls:\n    cert_file: {dir}/cert.pem\n    key_file: {dir}/key.pem\n"
        "    client_auth_required: true\n",
        "{cfg}:5: metrics.tls.client_auth_required: needs metrics.tls.client_ca_file to verify"
        " client certificates",
    ),
    (
        "metrics:\n  tls:\n    cert_file: {dir}/nope.pem\n    key_file: {dir}/key.pem\n",
        "{cfg}:3: metrics.tls.cert_file: no such file: {dir}/nope.pem",
    ),
    ("metrics:\n  tls: yes\n", "{cfg}:2: metrics.tls: must be a mapping, got true"),
    # dangerous cache dirs
    (
        "cache:\n  dir: /\n",
        "{cfg}:2: cache.dir: refusing to manage / as an image cache: it is a system directory",
    ),
    (
        "cache:\n  dir: /usr/\n",
        "{cfg}:2: cache.dir: refusing to manage /usr as an image cache: it is a system directory",
    ),
    (
        "cache:\n  dir: /var/lib/glance/../../lib\n",
        "{cfg}:2: cache.dir: refusing to manage /var/lib as an image cache:"
        " it is a system directory",
    ),
    (
        "cache:\n  dir: //etc\n",
        "{cfg}:2: cache.dir: refusing to manage /etc as an image cache: it is a system directory",
    ),
    (
        "cache:\n  dir: /var/lib/glance/images/\n",
        "{cfg}:2: cache.dir: refusing to manage /var/lib/glance/images as an image cache: it is"
        " Glance's filesystem store (image data, not a cache)",
    ),
]


@pytest.mark.parametrize(("text", "expected"), MALFORMED)
def test_malformed_config_exact_message(tmp_path: Path, text: str, expected: str) -> None:
    write(tmp_path / "cert.pem", "cert")
    write(tmp_path / "key.pem", "key")
    cfg = tmp_path / "config.yaml"
    text = text.replace("{dir}", str(tmp_path))
    error = error_of(tmp_path, text)
    assert str(error) == expected.format(cfg=cfg, dir=tmp_path)
    assert error.path == str(cfg)
    assert error.line is not None and error.line >= 1


def test_malformed_list_is_long_enough() -> None:
    assert len(MALFORMED) >= 25


def test_error_attributes_name_file_line_and_key(tmp_path: Path) -> None:
    error = error_of(tmp_path, "# comment\nprune:\n  batch_pause: 1\n  low_watermark: 2\n")
    assert (error.path, error.line, error.key) == (
        str(tmp_path / "config.yaml"),
        4,
        "prune.low_watermark",
    )
    assert error.message == "must be a fraction between 0 and 1 or a percentage, got 2"


def test_error_rendering_without_file_or_line() -> None:
    assert str(ConfigError("boom")) == "boom"
    assert str(ConfigError("boom", path="/a.conf")) == "/a.conf: boom"
    assert (
        str(ConfigError("boom", path="/a.conf", key="[DEFAULT] x")) == "/a.conf: [DEFAULT] x: boom"
    )
    assert str(ConfigError("boom", line=3, key="cache.dir")) == "line 3: cache.dir: boom"


def test_yaml_error_without_path_uses_line_only() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config_text("cache:\n  max_size: 10G\n", None)
    assert str(info.value).startswith("line 2: cache.max_size: ambiguous unit 'G'")


def test_config_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(b"cache:\n  dir: /srv/\xff\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert str(info.value) == f"{path}:2: config file is not valid UTF-8"


def test_config_path_that_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path))
    assert str(info.value) == (
        f"{tmp_path}: cannot read config file: it is a directory, not a regular file"
    )


# --------------------------------------------------------------------------
# Valid configs
# --------------------------------------------------------------------------


def test_empty_file_and_no_file_give_the_defaults(tmp_path: Path) -> None:
    empty = load_text(tmp_path, "# nothing here\n")
    builtin = load_config(None)
    assert empty == Config(path=str(tmp_path / "config.yaml"))
    assert builtin == Config()
    assert set(builtin.sources.values()) == {"default"}
    assert "cache.max_size" in builtin.sources and "tasks.reconcile.jitter" in builtin.sources


def test_empty_sections_keep_defaults(tmp_path: Path) -> None:
    config = load_text(tmp_path, "cache:\nprune:\n  # all commented out\ntasks:\n  clean:\n")
    assert config == Config(path=config.path)


def test_units_are_parsed(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        "cache:\n"
        "  dir: /srv/glance/cache/\n"
        "  max_size: 1.5GiB\n"
        "  stall_time: 1h30m\n"
        "  busy_timeout: 500ms\n"
        "prune:\n"
        "  low_watermark: 90%\n"
        "  min_free_space: 20GB\n"
        "  max_idle: 7d\n"
        f"  protected_images: [{UUID_A}, {UUID_B.upper()}]\n"
        "  max_images_per_run: 100\n"
        "  time_budget: null\n"
        "  batch_pause: 0\n"
        "metrics:\n"
        "  listen: '[::1]:9100'\n"
        "  per_image_limit: 0\n"
        "logging:\n"
        "  level: DEBUG\n"
        "reconcile:\n"
        "  orphans: report\n",
    )
    assert config.cache.dir == "/srv/glance/cache"
    assert config.cache.max_size == 3 * GIB // 2
    assert config.cache.stall_time == 5400.0
    assert config.cache.busy_timeout == 0.5
    assert config.prune.low_watermark == 0.9
    assert (config.prune.min_free_bytes, config.prune.min_free_percent) == (20 * 10**9, 0.0)
    assert config.prune.max_idle == 7 * 86400.0
    assert config.prune.protected_images == frozenset({UUID_A, UUID_B.upper()})
    assert config.prune.max_images_per_run == 100
    assert config.prune.time_budget is None
    assert config.prune.batch_pause == 0.0
    assert (config.metrics.host, config.metrics.port, config.metrics.listen) == (
        "::1",
        9100,
        "[::1]:9100",
    )
    assert config.metrics.per_image_limit == 0
    assert config.logging.level == "debug"
    assert config.reconcile.orphans is OrphanPolicy.REPORT
    policy = config.prune_policy()
    assert policy.max_size == 3 * GIB // 2 and policy.low_watermark == 0.9


def test_min_free_space_percentage(tmp_path: Path) -> None:
    config = load_text(tmp_path, "prune:\n  min_free_space: '12.5%'\n")
    assert (config.prune.min_free_bytes, config.prune.min_free_percent) == (0, 12.5)


def test_cron_replaces_the_default_interval(tmp_path: Path) -> None:
    config = load_text(tmp_path, "tasks:\n  prune:\n    cron: '*/15 * * * *'\n    jitter: 0\n")
    cfg = tmp_path / "config.yaml"
    assert config.tasks["prune"] == TaskSchedule(
        "prune", interval=None, cron="*/15 * * * *", jitter=0.0
    )
    assert config.tasks["clean"] == Config().tasks["clean"]
    assert config.sources["tasks.prune.cron"] == f"{cfg}:3"
    assert config.sources["tasks.prune.interval"] == f"{cfg}:3"
    assert config.sources["tasks.clean.interval"] == "default"


def test_disabled_task_and_one_second_durations(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        "tasks:\n  clean:\n    enabled: false\n    interval: 1s\n"
        "cache:\n  stall_time: 1s\nreconcile:\n  orphan_grace: 1\n",
    )
    assert config.tasks["clean"].enabled is False
    assert config.tasks["clean"].interval == 1.0
    assert config.cache.stall_time == 1.0
    assert config.reconcile.orphan_grace == 1.0


def test_tls_section(tmp_path: Path) -> None:
    cert, key, ca = (write(tmp_path / n, "x") for n in ("cert.pem", "key.pem", "ca.pem"))
    config = load_text(
        tmp_path,
        f"metrics:\n  tls:\n    cert_file: {cert}\n    key_file: {key}\n"
        f"    client_ca_file: {ca}\n    client_auth_required: true\n",
    )
    assert config.metrics.tls == TlsConfig(str(cert), str(key), str(ca), True)
    assert config.sources["metrics.tls.cert_file"] == f"{tmp_path / 'config.yaml'}:3"


def test_sources_name_file_and_line_for_every_key_set(tmp_path: Path) -> None:
    config = load_text(tmp_path, "# header\ncache:\n  max_size: 1GiB\n\nlogging:\n  format: json\n")
    cfg = tmp_path / "config.yaml"
    assert config.sources["cache.max_size"] == f"{cfg}:3"
    assert config.sources["logging.format"] == f"{cfg}:6"
    assert config.sources["cache.stall_time"] == "default"
    leaf_count = len(config.sources)
    assert leaf_count == len(load_config(None).sources)


# --------------------------------------------------------------------------
# config.example.yaml
# --------------------------------------------------------------------------


def test_example_config_loads_and_equals_the_defaults() -> None:
    config = load_config(str(EXAMPLE))
    assert config == Config(path=str(EXAMPLE))


def test_example_config_sets_every_key_explicitly() -> None:
    config = load_config(str(EXAMPLE))
    defaulted = [key for key, source in config.sources.items() if source == "default"]
    assert defaulted == []
    assert set(config.sources) == set(load_config(None).sources)


def test_example_config_comments_every_key() -> None:
    lines = EXAMPLE.read_text().splitlines()
    for index, line in enumerate(lines):
        match = re.fullmatch(r"\s+(\w+): .*", line)
        if match and not line.lstrip().startswith("#"):
            assert lines[index - 1].lstrip().startswith("#"), f"no comment above {line!r}"


# --------------------------------------------------------------------------
# Glance's ini files
# --------------------------------------------------------------------------

REALISTIC_GLANCE_API = """\
[DEFAULT]
# A realistic oslo-style file: comments, quoted values, percent signs,
# repeated sections and keys, multi-line values and unrelated sections.
debug = False
log_file = /var/log/glance/api.log
enabled_backends = fast:rbd, cheap:file
image_cache_driver = sqlite
image_cache_dir = /var/lib/glance/old-cache
image_cache_max_size = 1073741824
transport_url = rabbit://glance:p%40ss%@rabbit:5672/
logging_context_format_string = %(asctime)s.%(msecs)03d %(process)d %(levelname)s %(name)s
    [%(request_id)s %(user_identity)s] %(instance)s%(message)s

[database]
connection = mysql+pymysql://glance:secret@db/glance?charset=utf8

[keystone_authtoken]
www_authenticate_uri = http://keystone:5000
memcached_servers = a:11211
memcached_servers = b:11211

[paste_deploy]
flavor = keystone+cachemanagement

[DEFAULT]
image_cache_dir = "/var/lib/glance/image-cache"
image_cache_stall_time = 3600

[oslo_concurrency]
lock_path = /var/lock/glance
"""


def glance_files(tmp_path: Path, api: str, cache: str | None = None) -> list[Path]:
    files = [write(tmp_path / "glance" / "glance-api.conf", api)]
    if cache is not None:
        files.append(write(tmp_path / "glance" / "glance-cache.conf", cache))
    return files


def yaml_for(files: list[Path], extra: str = "") -> str:
    listed = "".join(f"\n    - {f}" for f in files)
    return f"cache:\n  glance_config:{listed}\n{extra}"


def test_realistic_glance_api_conf_is_read(tmp_path: Path) -> None:
    files = glance_files(tmp_path, REALISTIC_GLANCE_API)
    config = load_text(tmp_path, yaml_for(files))
    api = files[0]
    assert config.cache.dir == "/var/lib/glance/image-cache"  # later [DEFAULT] wins, quotes gone
    assert config.cache.max_size == GIB
    assert config.cache.stall_time == 3600.0
    assert config.cache.lock_path == "/var/lock/glance"
    assert config.cache.db == "cache.db"
    assert config.cache.glance_config == (str(api),)
    assert config.sources["cache.dir"] == f"{api} [DEFAULT] image_cache_dir"
    assert config.sources["cache.lock_path"] == f"{api} [oslo_concurrency] lock_path"
    assert config.sources["cache.db"] == "default"
    assert config.cache_settings().effective_lock_path == "/var/lock/glance"


def test_later_glance_file_overrides_and_yaml_overrides_both(tmp_path: Path) -> None:
    files = glance_files(
        tmp_path,
        REALISTIC_GLANCE_API,
        "[DEFAULT]\nimage_cache_max_size = 2147483648\nimage_cache_sqlite_db = other.db\n",
    )
    config = load_text(tmp_path, yaml_for(files, "  stall_time: 2h\n"))
    api, cache = files
    cfg = tmp_path / "config.yaml"
    assert config.cache.max_size == 2 * GIB
    assert config.sources["cache.max_size"] == f"{cache} [DEFAULT] image_cache_max_size"
    assert config.cache.db == "other.db"
    assert config.sources["cache.db"] == f"{cache} [DEFAULT] image_cache_sqlite_db"
    assert config.cache.stall_time == 7200.0
    assert config.sources["cache.stall_time"] == f"{cfg}:5"
    assert config.cache.dir == "/var/lib/glance/image-cache"
    assert config.sources["cache.dir"] == f"{api} [DEFAULT] image_cache_dir"


def test_yaml_key_before_glance_config_still_wins(tmp_path: Path) -> None:
    files = glance_files(tmp_path, REALISTIC_GLANCE_API)
    listed = "".join(f"\n    - {f}" for f in files)
    config = load_text(tmp_path, f"cache:\n  max_size: 5GiB\n  glance_config:{listed}\n")
    assert config.cache.max_size == 5 * GIB
    assert config.sources["cache.max_size"] == f"{tmp_path / 'config.yaml'}:2"


def test_glance_config_as_a_single_relative_path(tmp_path: Path) -> None:
    glance_files(tmp_path, REALISTIC_GLANCE_API)
    config = load_text(tmp_path, "cache:\n  glance_config: glance/glance-api.conf\n")
    assert config.cache.glance_config == (str(tmp_path / "glance" / "glance-api.conf"),)
    assert config.cache.max_size == GIB


SQLITE_DEFAULT = "[DEFAULT]\nimage_cache_driver = sqlite\nimage_cache_dir = /srv/c\n"


def driver_error(tmp_path: Path, api: str, cache: str | None = None) -> str:
    files = glance_files(tmp_path, api, cache)
    return str(error_of(tmp_path, yaml_for(files)))


def test_xattr_and_unknown_drivers_are_refused(tmp_path: Path) -> None:
    xattr = driver_error(
        tmp_path, "[DEFAULT]\nimage_cache_dir = /srv/c\nimage_cache_driver = xattr\n"
    )
    assert "is 'xattr': image metadata lives in extended attributes on the files" in xattr
    other = driver_error(
        tmp_path, "[DEFAULT]\nimage_cache_dir = /srv/c\nimage_cache_driver = redis\n"
    )
    assert other.endswith(
        "is 'redis': it is not a driver this agent knows, so this agent refuses to manage this"
        " cache; only the sqlite and centralized_db drivers are supported"
    )


def test_later_file_switching_the_driver_is_refused(tmp_path: Path) -> None:
    message = driver_error(
        tmp_path,
        "[DEFAULT]\nimage_cache_dir = /srv/c\nimage_cache_driver = sqlite\n",
        "[DEFAULT]\nimage_cache_driver = xattr\n",
    )
    assert message.startswith(
        f"{tmp_path / 'glance' / 'glance-cache.conf'}:2: [DEFAULT] image_cache_driver"
    )


def test_driver_in_another_section_does_not_count(tmp_path: Path) -> None:
    message = driver_error(
        tmp_path,
        "[DEFAULT]\nimage_cache_dir = /srv/c\n[glance_store]\nimage_cache_driver = sqlite\n",
    )
    assert "centralized_db (Glance's default: no Glance config file sets [DEFAULT]" in message


def test_sqlite_driver_any_case_is_accepted_and_yaml_needs_no_driver(tmp_path: Path) -> None:
    files = glance_files(
        tmp_path, "[DEFAULT]\nimage_cache_driver = SQLite\nimage_cache_dir = /srv/c\n"
    )
    assert load_text(tmp_path, yaml_for(files)).cache.dir == "/srv/c"
    # without glance_config there is nothing to check: the operator set the keys directly
    assert load_text(tmp_path, "cache:\n  dir: /srv/c\n").cache.dir == "/srv/c"


def test_glance_files_without_a_cache_dir(tmp_path: Path) -> None:
    files = glance_files(tmp_path, "[DEFAULT]\nimage_cache_driver = sqlite\n")
    message = str(error_of(tmp_path, yaml_for(files)))
    assert message == (
        f"{tmp_path / 'config.yaml'}:2: cache.glance_config: no Glance config file sets"
        " [DEFAULT] image_cache_dir (Glance's cache is disabled without it); set it there"
        " or set cache.dir"
    )
    assert load_text(tmp_path, yaml_for(files, "  dir: /srv/c\n")).cache.dir == "/srv/c"


@pytest.mark.parametrize(
    ("ini", "expected"),
    [
        (
            f"{SQLITE_DEFAULT}image_cache_max_size = 10GB\n",
            "{conf}:4: [DEFAULT] image_cache_max_size: must be a whole number >= 0, got '10GB'",
        ),
        (
            f"{SQLITE_DEFAULT}image_cache_stall_time = -1\n",
            "{conf}:4: [DEFAULT] image_cache_stall_time: must be a whole number >= 0, got '-1'",
        ),
        (
            "[DEFAULT]\nimage_cache_driver = sqlite\nimage_cache_dir = cache\n",
            "{conf}:3: [DEFAULT] image_cache_dir: must be an absolute path, got 'cache'",
        ),
        (
            "[DEFAULT]\nimage_cache_driver = sqlite\nimage_cache_dir = /var/\n",
            "{conf}:3: [DEFAULT] image_cache_dir: refusing to manage /var as an image cache:"
            " it is a"
            " system directory",
        ),
        (
            "image_cache_dir = /srv/c\n",
            "{conf}:1: cannot parse Glance config: option 'image_cache_dir' comes before any"
            " [section] header",
        ),
    ],
)
def test_bad_glance_values_name_the_glance_file(tmp_path: Path, ini: str, expected: str) -> None:
    files = glance_files(tmp_path, ini)
    assert str(error_of(tmp_path, yaml_for(files))) == expected.format(conf=files[0])


def test_second_missing_glance_file_is_named_at_its_line(tmp_path: Path) -> None:
    files = glance_files(tmp_path, REALISTIC_GLANCE_API)
    missing = tmp_path / "glance" / "glance-cache.conf"
    error = error_of(tmp_path, yaml_for([*files, missing]))
    assert str(error) == (
        f"{tmp_path / 'config.yaml'}:4: cache.glance_config[1]: cannot read Glance config"
        f" {missing}: no such file or directory"
    )


# --------------------------------------------------------------------------
# Dangerous cache directories
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "directory",
    [
        "/",
        "/etc",
        "/usr",
        "/var",
        "/home",
        "/root",
        "/tmp/",
        "/usr/local",
        "/var/lib",
        "/boot/.",
        "/opt/x/..",
    ],
)
def test_system_directories_are_refused(tmp_path: Path, directory: str) -> None:
    error = error_of(tmp_path, f"cache:\n  dir: {directory}\n")
    assert error.key == "cache.dir"
    assert error.message.endswith("as an image cache: it is a system directory")


def test_symlink_to_a_system_directory_is_refused(tmp_path: Path) -> None:
    link = tmp_path / "cache-link"
    link.symlink_to("/usr")
    error = error_of(tmp_path, f"cache:\n  dir: {link}/\n")
    assert str(error) == (
        f"{tmp_path / 'config.yaml'}:2: cache.dir: refusing to manage {link} as an image cache:"
        " it resolves to /usr, which is a system directory"
    )


@pytest.mark.parametrize(
    "directory",
    ["/var/lib/glance/image-cache", "/srv/glance", "/var/cache/glance/api", "/home/glance/cache"],
)
def test_subdirectories_are_fine(tmp_path: Path, directory: str) -> None:
    assert load_text(tmp_path, f"cache:\n  dir: {directory}/\n").cache.dir == directory


def test_real_directory_under_tmp_is_fine(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    assert load_text(tmp_path, f"cache:\n  dir: {cache}\n").cache.dir == str(cache)


# --------------------------------------------------------------------------
# Choosing the config file
# --------------------------------------------------------------------------


@pytest.fixture
def default_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the default config path into tmp_path; the real /etc is never touched."""
    path = tmp_path / "etc" / "config.yaml"
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_PATH", str(path))
    return path


def test_published_constants() -> None:
    assert DEFAULT_CONFIG_PATH == "/etc/glance-cache-agent/config.yaml"
    assert ENV_VAR == "GLANCE_CACHE_AGENT_CONFIG"


def test_cli_path_wins_over_env(tmp_path: Path, default_path: Path) -> None:
    cli = write(tmp_path / "cli.yaml", "")
    env = write(tmp_path / "env.yaml", "")
    assert resolve_config_path(str(cli), {ENV_VAR: str(env)}) == (str(cli), True)


def test_env_path_is_used_without_cli(tmp_path: Path, default_path: Path) -> None:
    env = write(tmp_path / "env.yaml", "")
    write(default_path, "")
    assert resolve_config_path(None, {ENV_VAR: str(env)}) == (str(env), True)


def test_default_path_when_nothing_given(default_path: Path) -> None:
    assert resolve_config_path(None, {}) == (None, False)
    write(default_path, "")
    assert resolve_config_path(None, {ENV_VAR: ""}) == (str(default_path), False)


def test_missing_explicit_paths_are_errors(tmp_path: Path, default_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError) as from_cli:
        resolve_config_path(str(missing), {})
    assert str(from_cli.value) == f"{missing}: config file not found (given with -c)"
    with pytest.raises(ConfigError) as from_env:
        resolve_config_path(None, {ENV_VAR: str(missing)})
    assert (
        str(from_env.value) == f"{missing}: config file not found (from $GLANCE_CACHE_AGENT_CONFIG)"
    )
    with pytest.raises(ConfigError) as directory:
        resolve_config_path(str(tmp_path), {})
    assert str(directory.value) == f"{tmp_path}: is a directory, not a config file (given with -c)"


# --------------------------------------------------------------------------
# Showing the effective config
# --------------------------------------------------------------------------


def test_render_aligns_and_shows_units_and_sources(tmp_path: Path) -> None:
    config = load_text(
        tmp_path, "cache:\n  max_size: 1536MiB\n  stall_time: 90m\nprune:\n  low_watermark: 0.9\n"
    )
    text = render_effective_config(config)
    lines = text.splitlines()
    assert lines[0] == f"# effective configuration from {tmp_path / 'config.yaml'}"
    body = lines[1:]
    assert len({line.index(" = ") for line in body}) == 1
    assert len({line.index("  (") for line in body}) == 1
    rows = {line.split(" = ")[0].strip(): line for line in body}
    assert rows["cache.max_size"].split(" = ")[1].split()[0] == "1.5GiB"
    assert rows["cache.max_size"].endswith(f"({tmp_path / 'config.yaml'}:2)")
    assert rows["cache.stall_time"].split(" = ")[1].split()[0] == "1h30m"
    assert rows["prune.low_watermark"].split(" = ")[1].startswith("0.9 (90%)")
    assert rows["prune.batch_pause"].split(" = ")[1].split()[0] == "100ms"
    assert rows["cache.busy_timeout"].endswith("(default)")


def test_render_shows_odd_sizes_in_bytes_with_an_approximation(tmp_path: Path) -> None:
    config = load_text(tmp_path, "cache:\n  max_size: 1234567\n")
    row = next(
        line
        for line in render_effective_config(config).splitlines()
        if line.startswith("cache.max_size")
    )
    assert "= 1234567B (~1.18MiB)" in row


def test_tls_key_contents_are_never_printed(tmp_path: Path) -> None:
    secret = "-----BEGIN PRIVATE KEY----- s3cr3t"
    cert, key = write(tmp_path / "cert.pem", "cert"), write(tmp_path / "key.pem", secret)
    config = load_text(tmp_path, f"metrics:\n  tls:\n    cert_file: {cert}\n    key_file: {key}\n")
    text = render_effective_config(config)
    dumped = json.dumps(effective_config_dict(config))
    assert str(key) in text and str(key) in dumped
    assert "s3cr3t" not in text and "s3cr3t" not in dumped


def test_effective_config_dict_is_json_with_bytes_and_seconds(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        "cache:\n  max_size: 2GiB\n"
        f"prune:\n  min_free_space: 10%\n  protected_images: [{UUID_B}, {UUID_A}]\n",
    )
    data = json.loads(json.dumps(effective_config_dict(config)))
    assert data["path"] == str(tmp_path / "config.yaml")
    assert data["config"]["cache"]["max_size"] == 2 * GIB
    assert data["config"]["cache"]["stall_time"] == 86400
    assert data["config"]["tasks"]["prune"] == {
        "enabled": True,
        "interval": 1800,
        "cron": None,
        "jitter": 60,
    }
    assert data["config"]["prune"]["min_free_bytes"] == 0
    assert data["config"]["prune"]["min_free_percent"] == 10
    assert data["config"]["prune"]["protected_images"] == sorted([UUID_A, UUID_B])
    assert data["config"]["metrics"]["listen"] == "127.0.0.1:9742"
    assert data["config"]["metrics"]["tls"] is None
    assert data["config"]["reconcile"]["orphans"] == "adopt"
    assert data["sources"]["prune.min_free_space"] == f"{tmp_path / 'config.yaml'}:4"


# --------------------------------------------------------------------------
# parse_size / parse_duration
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [
        (0, 0),
        (10737418240, 10 * GIB),
        ("1024", 1024),
        ("10GiB", 10 * GIB),
        ("10 GiB", 10 * GIB),
        ("500MB", 500 * 10**6),
        ("1kB", 1000),
        ("1.5GiB", 3 * GIB // 2),
        ("1.3KiB", 1331),  # rounded down to whole bytes
        (".5MiB", 512 * 1024),
        ("7B", 7),
        (2.0, 2),
    ],
)
def test_parse_size_values(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (0, 0.0),
        (90, 90.0),
        (1.5, 1.5),
        ("30", 30.0),
        ("30s", 30.0),
        ("30m", 1800.0),
        ("24h", 86400.0),
        ("7d", 604800.0),
        ("2w", 1209600.0),
        ("1h30m", 5400.0),
        ("1h 30m", 5400.0),
        ("500ms", 0.5),
        ("1.5h", 5400.0),
        ("1m0.1s", 60.1),
    ],
)
def test_parse_duration_values(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "bad", [True, None, [], "", "GiB", "1.2.3GiB", "1e3", "ten", "5 5", "1GiB5"]
)
def test_parse_size_rejects(bad: object) -> None:
    with pytest.raises(ValueError, match="must be a size such as 10GiB or 500MB"):
        parse_size(bad)


@pytest.mark.parametrize("bad", [False, None, {}, "", "h", "1h30", "30s5", "1.2.3s", "1e3", "--1s"])
def test_parse_duration_rejects(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_size_limits() -> None:
    assert parse_size(f"{MAX_SIZE}") == MAX_SIZE
    with pytest.raises(ValueError, match="too large"):
        parse_size(MAX_SIZE + 1)
    with pytest.raises(ValueError, match="too large"):
        parse_size("9000000PiB")
    with pytest.raises(ValueError, match="must be a whole number of bytes, got '1.5B'"):
        parse_size("1.5B")


def test_format_examples() -> None:
    assert format_size(10 * GIB) == "10GiB"
    assert format_size(3 * GIB // 2) == "1.5GiB"
    assert format_size(1000) == "1000B"
    assert format_size(0) == "0B"
    assert format_duration(86400) == "1d"
    assert format_duration(5400) == "1h30m"
    assert format_duration(90061) == "1d1h1m1s"
    assert format_duration(0.1) == "100ms"
    assert format_duration(90.5) == "90.5s"
    assert format_duration(1e-05) == "0.00001s"


SIZE_UNIT_NAMES = sorted(SIZE_UNITS)
DURATION_UNIT_NAMES = sorted(DURATION_UNITS)


@given(st.integers(min_value=0, max_value=MAX_SIZE))
def test_size_format_round_trips(size: int) -> None:
    assert parse_size(format_size(size)) == size


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(SIZE_UNIT_NAMES), st.booleans())
def test_size_with_unit_is_count_times_factor(count: int, unit: str, space: bool) -> None:
    text = f"{count}{' ' if space else ''}{unit}"
    expected = count * SIZE_UNITS[unit]
    if expected > MAX_SIZE:
        with pytest.raises(ValueError, match="is too large"):
            parse_size(text)
    else:
        assert parse_size(text) == expected


@given(st.text(alphabet="0123456789.-+ eEkKMGTPiB%x", max_size=12))
def test_size_is_never_negative(text: str) -> None:
    try:
        size = parse_size(text)
    except ValueError:
        return
    assert 0 <= size <= MAX_SIZE
    assert "-" not in text


@given(st.text(alphabet="acdfjlnopqruvwxyzACDFHJ!?,;", min_size=1, max_size=8), st.integers(0, 100))
def test_size_rejects_garbage_units(garbage: str, count: int) -> None:
    with pytest.raises(ValueError):
        parse_size(f"{count}{garbage}")


@given(st.floats(min_value=0, max_value=MAX_DURATION, allow_nan=False))
def test_duration_format_round_trips(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@given(
    st.integers(0, 10**4),
    st.integers(0, 23),
    st.integers(0, 59),
    st.integers(0, 59),
    st.integers(0, 999),
)
def test_duration_parts_add_up(
    days: int, hours: int, minutes: int, seconds: int, millis: int
) -> None:
    text = f"{days}d{hours}h{minutes}m{seconds}s{millis}ms"
    expected = (
        Decimal(days * 86400 + hours * 3600 + minutes * 60 + seconds) + Decimal(millis) / 1000
    )
    assert parse_duration(text) == float(expected)


@given(st.text(alphabet="0123456789.-+ smhdwMSH:x", max_size=12))
def test_duration_is_never_negative(text: str) -> None:
    try:
        seconds = parse_duration(text)
    except ValueError:
        return
    assert 0 <= seconds <= MAX_DURATION


@given(st.text(alphabet="abcefgijklnopqrtuvxyz!?,;", min_size=1, max_size=8), st.integers(0, 100))
def test_duration_rejects_garbage_units(garbage: str, count: int) -> None:
    with pytest.raises(ValueError):
        parse_duration(f"{count}{garbage}")


@given(st.floats(max_value=-1e-9) | st.integers(max_value=-1))
def test_negative_numbers_are_refused(value: float) -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        parse_duration(value)
    with pytest.raises(ValueError, match="must not be negative|whole number"):
        parse_size(value)


def test_cron_macros_and_sunday_as_seven_are_accepted_as_the_scheduler_runs_them() -> None:
    """Validation uses the scheduler's own cron parser: what loads is what runs."""
    config = parse_config_text(
        "tasks:\n  clean:\n    cron: '@daily'\n  prune:\n    cron: '0 3 * * 7'\n"
    )
    assert config.tasks["clean"].cron == "@daily"
    assert config.tasks["prune"].cron == "0 3 * * 7"


def test_commands_that_do_not_schedule_skip_parsing_cron_but_still_check_its_shape() -> None:
    text = "tasks:\n  prune:\n    cron: '61 * * * *'\n"
    assert parse_config_text(text, check_schedules=False).tasks["prune"].cron == "61 * * * *"
    with pytest.raises(ConfigError, match="61"):
        parse_config_text(text)
    with pytest.raises(ConfigError, match="expected five fields"):
        parse_config_text("tasks:\n  prune:\n    cron: '* *'\n", check_schedules=False)


def test_a_maintenance_command_does_not_import_apscheduler(tmp_path: Path) -> None:
    """Quick commands stay quick: a cron schedule costs them no APScheduler import."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("tasks:\n  clean:\n    cron: '1 0 * * *'\n")

    def imports_apscheduler(*argv: str) -> bool:
        probe = (
            "import sys\nfrom glance_cache_agent.cli import main\n"
            f"main({['-c', str(cfg), *argv]!r})\n"
            "print('apscheduler' in sys.modules)\n"
        )
        run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
        return run.stdout.strip().splitlines()[-1] == "True"

    assert imports_apscheduler("check-config")  # validates the schedule for real
    assert not imports_apscheduler("list-queued")  # fails on the missing cache, unhurried
