"""Glance's ini files as oslo.config reads them, and the config file's own safety.

The substitution cases are cross-checked against the real oslo.config with
Glance's real option definitions (the ``interop`` extra): both readers parse
the same files, and the agent must produce oslo's value, or fail wherever
oslo fails. The CLI cases run the agent as a real subprocess with a
generous timeout as a hang guard (a fifo or /dev/zero must not block it).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest

from glance_cache_agent.config import ConfigError, load_config
from glance_cache_agent.config.glance_ini import (
    GLANCE_DEFAULTS,
    IniError,
    Resolver,
    read_glance_files,
)

ENV_VAR = "GLANCE_CACHE_AGENT_CONFIG"
HANG_GUARD = 60  # seconds; only ever reached if the agent hangs


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------
# Cross-checked with the real oslo.config
# --------------------------------------------------------------------------

#: Runs in a subprocess (importing Glance has process-wide side effects):
#: reads a JSON list of cases on stdin, prints one result per case.
OSLO_REFERENCE = """
import json, sys, warnings
warnings.simplefilter("ignore")
from oslo_config import cfg
from glance.image_cache import image_cache_opts
from glance.image_cache.drivers.sqlite import sqlite_opts
from oslo_concurrency import lockutils

results = []
for case in json.load(sys.stdin):
    conf = cfg.ConfigOpts()
    conf.register_opts(image_cache_opts + sqlite_opts)
    conf.register_opts(lockutils._opts, group="oslo_concurrency")
    for group, name in case["extra"]:
        conf.register_opt(cfg.StrOpt(name), group=None if group == "DEFAULT" else group)
    conf(args=[], project="glance", default_config_files=case["files"],
         default_config_dirs=case["dirs"])
    group, name = case["query"]
    try:
        value = getattr(conf if group == "DEFAULT" else getattr(conf, group), name)
        results.append({"value": "" if value is None else str(value)})
    except Exception as exc:
        results.append({"error": type(exc).__name__})
print(json.dumps(results))
"""


@dataclass(frozen=True)
class Case:
    """Glance files (``name: text``; a name ending in ``/`` is a config dir)."""

    name: str
    files: dict[str, str]
    query: tuple[str, str] = ("DEFAULT", "image_cache_dir")
    #: options glance-api would have to register for oslo to resolve them
    extra: tuple[tuple[str, str], ...] = ()
    dirs: tuple[str, ...] = field(default=())


STATE = (("DEFAULT", "state_path"),)
LOCK = ("oslo_concurrency", "lock_path")

CASES = [
    Case(
        "state-path-style",
        {
            "api.conf": "[DEFAULT]\nstate_path = /srv/g\n[oslo_concurrency]\n"
            "lock_path = $state_path/lock\n"
        },
        LOCK,
        STATE,
    ),
    Case(
        "braces",
        {"api.conf": "[DEFAULT]\nstate_path = /srv/g\nimage_cache_dir = ${state_path}c\n"},
        extra=STATE,
    ),
    Case(
        "dollar-escapes",
        {"api.conf": "[DEFAULT]\nimage_cache_dir = /a/$$x/\\$y/$$$image_cache_sqlite_db\n"},
    ),
    Case(
        "group-form",
        {
            "api.conf": "[DEFAULT]\nimage_cache_dir = ${oslo_concurrency.lock_path}/c\n"
            "[oslo_concurrency]\nlock_path = /L\n"
        },
    ),
    Case(
        "falls-back-to-default",
        {
            "api.conf": "[DEFAULT]\nimage_cache_dir = /c\n[oslo_concurrency]\n"
            "lock_path = $image_cache_dir/locks\n"
        },
        LOCK,
    ),
    Case(
        "glance-defaults",
        {
            "api.conf": "[DEFAULT]\n"
            "image_cache_dir = /c/$image_cache_sqlite_db/$image_cache_max_size"
            "/$image_cache_stall_time/$image_cache_driver\n"
        },
    ),
    Case(
        "unset-without-default-is-empty",
        {"api.conf": "[oslo_concurrency]\nlock_path = $image_cache_dir/locks\n"},
        LOCK,
    ),
    Case(
        "chained",
        {
            "api.conf": "[DEFAULT]\nstate_path = $base/g\nbase = /srv\n"
            "image_cache_dir = $state_path/c\n"
        },
        extra=(*STATE, ("DEFAULT", "base")),
    ),
    Case("not-a-placeholder", {"api.conf": "[DEFAULT]\nimage_cache_dir = /a/$/b/${x/$1\n"}),
    Case(
        "quoted-and-continued",
        {
            "api.conf": '[DEFAULT]\nimage_cache_dir = "$image_cache_sqlite_db"\n'
            "image_cache_sqlite_db: x\n  y\n"
        },
    ),
    Case(
        "repeated-keys-and-sections",
        {
            "api.conf": "[DEFAULT]\nimage_cache_dir = /one\n[x]\na = 1\n[DEFAULT]\n"
            "image_cache_dir = /two/$image_cache_sqlite_db\nimage_cache_sqlite_db = s.db\n"
        },
    ),
    Case(
        "section-case",
        {
            "api.conf": "[Oslo_Concurrency]\nlock_path = /L\n[default]\n"
            "image_cache_dir = /not-default\n"
        },
    ),
    Case("section-case-lock", {"api.conf": "[Oslo_Concurrency]\nlock_path = /L\n"}, LOCK),
    Case(
        "later-file-sets-the-variable",
        {
            "api.conf": "[DEFAULT]\nstate_path = /one\nimage_cache_dir = $state_path/c\n",
            "cache.conf": "[DEFAULT]\nstate_path = /two\n",
        },
        extra=STATE,
    ),
    Case(
        "config-dir-order",
        {
            "api.conf": "[DEFAULT]\nimage_cache_max_size = 1\n",
            "api.conf.d/20-b.conf": "[DEFAULT]\nimage_cache_max_size = 7\n",
            "api.conf.d/10-a.conf": "[DEFAULT]\nimage_cache_max_size = 5\n",
            "api.conf.d/.hidden.conf": "[DEFAULT]\nimage_cache_max_size = 9\n",
            "api.conf.d/notes.txt": "[DEFAULT]\nimage_cache_max_size = 11\n",
        },
        ("DEFAULT", "image_cache_max_size"),
        dirs=("api.conf.d",),
    ),
    # oslo.config fails on every one of these; so must the agent
    Case("undefined", {"api.conf": "[DEFAULT]\nimage_cache_dir = /a/$nope\n"}),
    Case(
        "state-path-unregistered",
        {"api.conf": "[oslo_concurrency]\nlock_path = $state_path/lock\n"},
        LOCK,
    ),
    Case("self-reference", {"api.conf": "[DEFAULT]\nimage_cache_dir = /a/$image_cache_dir\n"}),
    Case(
        "loop",
        {"api.conf": "[DEFAULT]\na = $b\nb = x$a\nimage_cache_dir = /a/$a\n"},
        extra=(("DEFAULT", "a"), ("DEFAULT", "b")),
    ),
    Case(
        "same-group-first",
        {"api.conf": "[DEFAULT]\nlock_path = /D\n[oslo_concurrency]\nlock_path = /L/$lock_path\n"},
        LOCK,
    ),
    Case(
        "no-default-group-form",
        {"api.conf": "[DEFAULT]\nimage_cache_dir = /x/${DEFAULT.image_cache_sqlite_db}\n"},
    ),
    Case(
        "dots-belong-to-the-name",
        {"api.conf": "[DEFAULT]\nimage_cache_dir = /x/$image_cache_sqlite_db.x\n"},
    ),
    Case(
        "names-are-case-sensitive",
        {"api.conf": "[DEFAULT]\nimage_cache_dir = /x/$Image_Cache_Sqlite_Db\n"},
    ),
    Case(
        "group-is-not-a-value", {"api.conf": "[DEFAULT]\nimage_cache_dir = /x/$oslo_concurrency\n"}
    ),
    Case(
        "group-name-is-exact",
        {
            "api.conf": "[DEFAULT]\nimage_cache_dir = /x/${OSLO_CONCURRENCY.lock_path}\n"
            "[oslo_concurrency]\nlock_path = /L\n"
        },
    ),
]


def _case_paths(case: Case, base: Path) -> tuple[list[str], list[str]]:
    """Write ``case``'s files under ``base``: (config files, config dirs)."""
    for name, text in case.files.items():
        write(base / name, text)
    files = [str(base / n) for n in case.files if "/" not in n]
    return files, [str(base / d) for d in case.dirs]


def _ours(paths: list[str], query: tuple[str, str]) -> dict[str, str]:
    try:
        options = read_glance_files(paths)
        found = options.get(query)
        value = Resolver(options).value(found) if found else GLANCE_DEFAULTS.get(query, "")
    except IniError as exc:
        return {"error": exc.message}
    return {"value": value}


@pytest.fixture(scope="module")
def oslo_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    """Every case's result from the real oslo.config, in one subprocess."""
    if find_spec("glance") is None or find_spec("oslo_config") is None:
        pytest.skip("needs the interop extra (glance, oslo.config)")
    specs = []
    for case in CASES:
        files, dirs = _case_paths(case, tmp_path_factory.mktemp(case.name))
        specs.append({"files": files, "dirs": dirs, "extra": case.extra, "query": case.query})
    proc = subprocess.run(
        [sys.executable, "-c", OSLO_REFERENCE],
        input=json.dumps(specs),
        capture_output=True,
        text=True,
        timeout=HANG_GUARD * 2,
        check=True,
    )
    return dict(zip((c.name for c in CASES), json.loads(proc.stdout), strict=True))


@pytest.mark.interop
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_substitution_agrees_with_oslo_config(
    case: Case, tmp_path: Path, oslo_results: dict[str, dict[str, str]]
) -> None:
    files, dirs = _case_paths(case, tmp_path)
    ours = _ours(files + dirs, case.query)
    reference = oslo_results[case.name]
    if "error" in reference:
        assert "error" in ours, f"oslo.config fails ({reference['error']}), the agent gave {ours}"
    else:
        assert ours == reference


def test_cross_check_cases_cover_the_tricky_results(tmp_path: Path) -> None:
    """Pin the agent's side of the cross-check, also where the extra is missing."""
    expected = {
        "state-path-style": "/srv/g/lock",
        "dollar-escapes": "/a/$x/$y/$cache.db",
        "glance-defaults": "/c/cache.db/10737418240/86400/centralized_db",
        "unset-without-default-is-empty": "/locks",
        "not-a-placeholder": "/a/$/b/${x/$1",
        "quoted-and-continued": "x\ny",
        "later-file-sets-the-variable": "/two/c",
        "config-dir-order": "7",
        "section-case": "",
    }
    for case in CASES:
        files, dirs = _case_paths(case, tmp_path / case.name)
        if case.name in expected:
            assert _ours(files + dirs, case.query) == {"value": expected[case.name]}, case.name


# --------------------------------------------------------------------------
# Through the agent's config: located errors, config dirs
# --------------------------------------------------------------------------


def yaml_with(tmp_path: Path, *glance: Path, extra: str = "") -> Path:
    listed = "".join(f"\n    - {p}" for p in glance)
    return write(tmp_path / "config.yaml", f"cache:\n  glance_config:{listed}\n{extra}")


def test_state_path_style_values_are_read(tmp_path: Path) -> None:
    api = write(
        tmp_path / "glance-api.conf",
        "[DEFAULT]\nimage_cache_driver = sqlite\nstate_path = /var/lib/glance\n"
        "image_cache_dir = $state_path/image-cache\n"
        "[oslo_concurrency]\nlock_path = ${state_path}/lock\n",
    )
    config = load_config(str(yaml_with(tmp_path, api)))
    assert config.cache.dir == "/var/lib/glance/image-cache"
    assert config.cache.lock_path == "/var/lib/glance/lock"


def test_undefined_reference_is_located_with_a_hint(tmp_path: Path) -> None:
    api = write(
        tmp_path / "glance-api.conf",
        "[DEFAULT]\nimage_cache_driver = sqlite\nimage_cache_dir = /srv/c\n"
        "[oslo_concurrency]\nlock_path = $image_cache_dri/locks\n",
    )
    with pytest.raises(ConfigError) as info:
        load_config(str(yaml_with(tmp_path, api)))
    assert str(info.value) == (
        f"{api}:5: [oslo_concurrency] lock_path: cannot substitute $image_cache_dri: no such"
        " option in [oslo_concurrency] or [DEFAULT] (did you mean $image_cache_dir?)"
    )


def test_unset_state_path_is_refused_with_the_reason(tmp_path: Path) -> None:
    api = write(
        tmp_path / "glance-api.conf",
        "[DEFAULT]\nimage_cache_driver = sqlite\nimage_cache_dir = $state_path/cache\n",
    )
    with pytest.raises(ConfigError) as info:
        load_config(str(yaml_with(tmp_path, api)))
    assert str(info.value) == (
        f"{api}:3: [DEFAULT] image_cache_dir: cannot substitute $state_path: no such option in"
        " [DEFAULT] (Glance, unlike Nova, has no state_path option: write the path out)"
    )


def test_reference_loop_is_refused(tmp_path: Path) -> None:
    api = write(
        tmp_path / "glance-api.conf",
        "[DEFAULT]\nimage_cache_driver = sqlite\na = $b\nb = /x$a\nimage_cache_dir = $a\n",
    )
    with pytest.raises(ConfigError) as info:
        load_config(str(yaml_with(tmp_path, api)))
    assert str(info.value) == f"{api}:4: [DEFAULT] b: references form a loop: a -> b -> a"


def test_config_dir_is_read_after_the_file_in_sorted_order(tmp_path: Path) -> None:
    api = write(
        tmp_path / "glance-api.conf",
        "[DEFAULT]\nimage_cache_driver = sqlite\nimage_cache_dir = /srv/c\n"
        "image_cache_max_size = 1\n",
    )
    conf_d = tmp_path / "glance-api.conf.d"
    write(conf_d / "20-b.conf", "[DEFAULT]\nimage_cache_max_size = 7\n")
    write(
        conf_d / "10-a.conf", "[DEFAULT]\nimage_cache_max_size = 5\nimage_cache_stall_time = 60\n"
    )
    write(conf_d / "99-skipped.conf.bak", "[DEFAULT]\nimage_cache_max_size = 9\n")
    config = load_config(str(yaml_with(tmp_path, api, conf_d)))
    assert (config.cache.max_size, config.cache.stall_time) == (7, 60.0)
    assert (
        config.sources["cache.max_size"] == f"{conf_d / '20-b.conf'} [DEFAULT] image_cache_max_size"
    )


def test_empty_config_dir_changes_nothing(tmp_path: Path) -> None:
    api = write(
        tmp_path / "glance-api.conf",
        "[DEFAULT]\nimage_cache_driver = sqlite\nimage_cache_dir = /srv/c\n",
    )
    (tmp_path / "empty.d").mkdir()
    assert load_config(str(yaml_with(tmp_path, api, tmp_path / "empty.d"))).cache.dir == "/srv/c"


# --------------------------------------------------------------------------
# The CLI: unsafe config paths, check-config warnings
# --------------------------------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    return subprocess.run(
        [sys.executable, "-m", "glance_cache_agent.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=HANG_GUARD,
        check=False,
    )


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "directory", "huge"])
def test_unsafe_main_config_is_refused_without_hanging(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "config.yaml"
    if kind == "fifo":
        os.mkfifo(path)
        reason = "it is a fifo, not a regular file"
    elif kind == "dev-zero":
        path = Path("/dev/zero")
        reason = "it is a character device, not a regular file"
    elif kind == "directory":
        path.mkdir()
        reason = "is a directory, not a config file (given with -c)"
    else:
        path.write_text("# padding\n" * 200_000)
        reason = "it is larger than 1048576 bytes: too large for a config file"
    proc = cli("-c", str(path), "check-config")
    assert proc.returncode == 78, proc.stderr
    assert reason in proc.stderr
    assert str(path) in proc.stderr


def test_fifo_in_a_glance_config_dir_is_refused_without_hanging(tmp_path: Path) -> None:
    api = write(
        tmp_path / "glance-api.conf",
        "[DEFAULT]\nimage_cache_driver = sqlite\nimage_cache_dir = /srv/c\n",
    )
    conf_d = tmp_path / "glance-api.conf.d"
    conf_d.mkdir()
    os.mkfifo(conf_d / "50-pipe.conf")
    proc = cli("-c", str(yaml_with(tmp_path, api, conf_d)), "check-config")
    assert proc.returncode == 78
    assert proc.stderr.strip() == (
        f"glance-cache-agent: configuration error: {conf_d / '50-pipe.conf'}: cannot read Glance"
        " config: it is a fifo, not a regular file"
    )


@pytest.mark.parametrize(
    "argv", [["-c", "", "check-config"], ["check-config", ""], ["-c", "", "status"]]
)
def test_empty_config_path_is_a_usage_error(argv: list[str]) -> None:
    proc = cli(*argv)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "glance-cache-agent: error: the config path is empty"


def check_config(tmp_path: Path, yaml: str) -> tuple[dict[str, Any], str]:
    proc = cli("-c", str(write(tmp_path / "config.yaml", yaml)), "check-config", "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), proc.stderr


def test_check_config_warns_about_missing_directories(tmp_path: Path) -> None:
    cache, locks = tmp_path / "cache", tmp_path / "locks"
    document, stderr = check_config(tmp_path, f"cache:\n  dir: {cache}\n  lock_path: {locks}\n")
    assert document["warnings"] == [
        f"cache.dir {cache} does not exist: glance-api creates it when it starts; maintenance"
        " commands fail until then",
        f"cache.lock_path {locks} does not exist: the agent cannot take Glance's locks until it"
        " does",
    ]
    assert stderr.splitlines() == [
        f"glance-cache-agent: warning: {w}" for w in document["warnings"]
    ]


def test_check_config_warns_when_glance_locks_elsewhere(tmp_path: Path) -> None:
    cache, glance_locks = tmp_path / "cache", tmp_path / "glance-locks"
    cache.mkdir()
    glance_locks.mkdir()
    sqlite3.connect(cache / "cache.db").close()  # glance-api made the db...
    (glance_locks / "image_cache_db_init").touch()  # ...and locked in its own lock_path
    document, stderr = check_config(tmp_path, f"cache:\n  dir: {cache}\n")
    marker = cache / "image_cache_db_init"
    assert document["warnings"] == [
        f"{cache / 'cache.db'} exists but {marker} does not: glance-api takes its locks in another"
        " directory, so its prune and clean would not exclude the agent's; set cache.lock_path"
        " (or [oslo_concurrency] lock_path in the Glance config) to glance-api's lock_path"
    ]
    assert "warning: " in stderr
    fixed, stderr = check_config(tmp_path, f"cache:\n  dir: {cache}\n  lock_path: {glance_locks}\n")
    assert (fixed["warnings"], stderr) == ([], "")
