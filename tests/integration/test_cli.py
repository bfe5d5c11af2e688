"""The command line as operators run it: a real subprocess on a real cache.

Every command of DESIGN section 4 (except ``run``, covered by the daemon
tests) is run through ``python -m glance_cache_agent.cli`` against a cache
directory in ``tmp_path`` with its own YAML config; each test checks the
exit code, the JSON document or the human output, and the disk and database
afterwards. Subprocess start costs ~0.3 s, so each invocation earns its place.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from glance_cache_agent.exporter.cache_state import compute_cache_state
from tests.helpers.cache import cache_image, full_state, read_image, rows, set_row, uid, write_file
from tests.helpers.cli import (
    ENV_VAR,
    Cache,
    clean_env,
    cli,
    cli_json,
    make_cache,
    one_line,
)


@pytest.fixture
def cache(tmp_path: Path) -> Cache:
    return make_cache(tmp_path)


def _three_images(cache: Cache) -> None:
    """a, b, c of 1 KiB each; a is the least recently accessed."""
    for name in (uid("c"), uid("a"), uid("b")):
        cache_image(cache.driver, name, 1024)
    now = time.time()
    for offset, name in enumerate((uid("a"), uid("b"), uid("c"))):
        set_row(cache.driver, name, last_accessed=now - 5400 + offset)


def _integers(document: dict[str, Any], *keys: str) -> None:
    for key in keys:
        assert type(document[key]) is int, (key, document[key])


@contextlib.contextmanager
def holding(code: str, *args: str) -> Iterator[subprocess.Popen[str]]:
    """Run ``code`` in another process; it prints 'held' once it holds its lock
    and keeps it until its stdin closes."""
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "held\n"
        yield proc
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=10)


HOLD_MAINTENANCE = """\
import sys
from glance_cache_agent.service.locks import maintenance_lock
with maintenance_lock(sys.argv[1], 0):
    print("held", flush=True)
    sys.stdin.read()
"""

HOLD_GLANCE = """\
import sys
from glance_cache_agent.driver import external_lock
with external_lock(sys.argv[1], sys.argv[2], timeout=0):
    print("held", flush=True)
    sys.stdin.read()
"""


# ------------------------------------------------------------------ basics


def test_version_and_usage_errors(cache: Cache) -> None:
    version = cli("--version")
    assert version.returncode == 0
    assert version.stdout.startswith("glance-cache-agent ") and version.stdout.strip()[-1].isdigit()

    before = full_state(cache.driver)
    for args in (("defrag",), ("queue",), ("prune", "--bogus")):
        proc = cli(*args, config=cache.config)
        assert proc.returncode == 2, (args, proc.stderr)
        assert "error:" in proc.stderr and proc.stdout == ""

    bad_size = cli("prune", "--max-size", "10G", config=cache.config)
    assert bad_size.returncode == 2
    assert "--max-size" in one_line(bad_size.stderr) and "ambiguous" in bad_size.stderr
    assert full_state(cache.driver) == before
    assert not cache.run_dir.exists()


# ------------------------------------------------------------------ status


def test_status_json_equals_the_drivers_view(cache: Cache) -> None:
    _three_images(cache)
    read_image(cache.driver, uid("a"))
    cache_image(cache.driver, uid("gone"), 100)
    os.remove(cache.path(uid("gone")))  # phantom row
    write_file(cache.path(uid("orphan")), 500, age=3600)  # image file without a row
    write_file(cache.path("incomplete", uid("partial")), 10)
    write_file(cache.path("invalid", uid("broken")), 20)
    for name in (uid("q1"), uid("q2")):
        cache.driver.queue_image(name)

    status = cli_json(cache, "status")

    keys = (
        "size_bytes",
        "max_size_bytes",
        "cached_images",
        "queued_images",
        "incomplete_files",
        "invalid_files",
        "orphan_files",
        "phantom_rows",
    )
    _integers(status, *keys)
    assert status["cache_dir"] == str(cache.dir)
    assert {k: status[k] for k in keys} == {
        "size_bytes": 3 * 1024 + 500,
        "max_size_bytes": 2048,
        "cached_images": 4,
        "queued_images": 2,
        "incomplete_files": 1,
        "invalid_files": 1,
        "orphan_files": 1,
        "phantom_rows": 1,
    }
    state = compute_cache_state(cache.driver, 2048, per_image_limit=0)
    assert status["size_bytes"] == state.size_bytes == cache.driver.get_cache_size()
    assert status["cached_images"] == state.cached_images
    assert status["orphan_files"] == state.orphan_files
    assert status["phantom_rows"] == state.phantom_rows
    assert status["hits"] == 1

    # The human form, with the config named by $GLANCE_CACHE_AGENT_CONFIG.
    human = cli("status", env=clean_env(**{ENV_VAR: str(cache.config)}))
    assert human.returncode == 0, human.stderr
    lines = {}
    for line in human.stdout.splitlines():
        key, _, value = line.partition("  ")
        lines[key.strip()] = value.strip()
    assert lines["cache"] == str(cache.dir)
    assert lines["size"] == "3.5 KiB of 2.0 KiB"
    assert lines["cached images"] == "4"
    assert lines["queued images"] == "2"
    assert lines["phantom rows"] == "1"


# ------------------------------------------------------------------ listing


def test_list_cached_json_and_table(cache: Cache) -> None:
    _three_images(cache)
    read_image(cache.driver, uid("b"))
    read_image(cache.driver, uid("b"))
    set_row(cache.driver, uid("a"), last_accessed=time.time() - 5400)

    listed = cli_json(cache, "list-cached")

    assert [e["image_id"] for e in listed] == [uid("a"), uid("b"), uid("c")]
    db = rows(cache.driver)
    for entry in listed:
        assert set(entry) == {"image_id", "size", "hits", "last_accessed", "last_modified"}
        _integers(entry, "size", "hits")
        last_accessed, last_modified, size, hits = db[entry["image_id"]]
        assert (entry["size"], entry["hits"]) == (size, hits)
        assert entry["last_accessed"] == pytest.approx(last_accessed)
        assert entry["last_modified"] == pytest.approx(last_modified)
    assert [e["hits"] for e in listed] == [0, 2, 0]

    human = cli("list-cached", config=cache.config)
    assert human.returncode == 0, human.stderr
    header, *body = human.stdout.splitlines()
    assert header.split() == ["IMAGE", "ID", "SIZE", "HITS", "LAST", "ACCESSED", "CACHED"]
    assert [line.split()[0] for line in body] == [uid("a"), uid("b"), uid("c")]
    a_row = body[0]
    assert "1.0 KiB" in a_row and "1h30m ago" in a_row
    # right-aligned SIZE and HITS columns end where their headers end
    assert a_row.index("1.0 KiB") + len("1.0 KiB") == header.index("SIZE") + len("SIZE")
    assert body[1].index(" 2 ") + 2 == header.index("HITS") + len("HITS")


def test_queue_list_and_delete_queued(cache: Cache) -> None:
    cache_image(cache.driver, uid("cached"), 10)

    queued = cli_json(cache, "queue", uid("q-old"), uid("q-new"), uid("q-mid"), uid("cached"))

    assert queued == {
        "queued": [uid("q-old"), uid("q-new"), uid("q-mid")],
        "not_queued": {uid("cached"): "already cached"},
    }
    queue_dir = cache.path("queue")
    assert sorted(os.listdir(queue_dir)) == [uid("q-mid"), uid("q-new"), uid("q-old")]
    now = time.time()
    for name, age in ((uid("q-old"), 300), (uid("q-mid"), 200), (uid("q-new"), 100)):
        os.utime(queue_dir / name, (now - age, now - age))

    # FIFO, not by name
    assert cli_json(cache, "list-queued") == [uid("q-old"), uid("q-mid"), uid("q-new")]

    deleted = cli("delete-queued", uid("q-old"), uid("q-new"), uid("nope"), config=cache.config)
    assert deleted.returncode == 0, deleted.stderr
    assert deleted.stdout.splitlines() == [
        f"deleted {uid('q-old')}",
        f"deleted {uid('q-new')}",
        f"not queued: {uid('nope')}",
    ]
    assert os.listdir(queue_dir) == [uid("q-mid")]

    human = cli("list-queued", config=cache.config)
    assert human.stdout == uid("q-mid") + "\n"
    assert cache.driver.is_cached(uid("cached"))


def test_delete_cached_several_ids(cache: Cache) -> None:
    _three_images(cache)

    deleted = cli_json(cache, "delete-cached", uid("a"), uid("c"), uid("nope"))

    assert deleted == {"deleted": [uid("a"), uid("c")], "not_found": [uid("nope")]}
    assert not cache.path(uid("a")).exists() and not cache.path(uid("c")).exists()
    assert set(rows(cache.driver)) == {uid("b")}
    assert cache.path(uid("b")).stat().st_size == 1024


def test_delete_all_needs_yes_and_keeps_lock_files(cache: Cache) -> None:
    _three_images(cache)
    for name in (uid("q1"), uid("q2")):
        cache.driver.queue_image(name)
    write_file(cache.path("glance-cache-prune"), 0)  # an oslo lock file
    before = full_state(cache.driver)

    for command in ("delete-all-cached", "delete-all-queued"):
        refused = cli(command, config=cache.config)
        assert refused.returncode == 2
        assert "--yes" in one_line(refused.stderr) and refused.stdout == ""
    assert full_state(cache.driver) == before

    cached = cli("delete-all-cached", "--yes", config=cache.config)
    assert cached.returncode == 0, cached.stderr
    assert cached.stdout == "deleted 3 cached images\n"
    assert rows(cache.driver) == {}
    assert sorted(p.name for p in cache.dir.iterdir() if p.is_file()) == [
        "cache.db",
        "glance-cache-prune",
        "image_cache_db_init",
    ]
    assert sorted(os.listdir(cache.path("queue"))) == [uid("q1"), uid("q2")]

    assert cli_json(cache, "delete-all-queued", "--yes") == {"deleted": 2}
    assert os.listdir(cache.path("queue")) == []
    assert (cache.run_dir / "maintenance.lock").is_file()


# ------------------------------------------------------------- maintenance


def test_clean_dry_run_override_and_real_run(cache: Cache) -> None:
    invalid = write_file(cache.path("invalid", uid("broken")), 20)
    stalled = write_file(cache.path("incomplete", uid("stalled")), 30, age=7200)
    fresh = write_file(cache.path("incomplete", uid("fresh")), 40, age=60)
    _three_images(cache)
    before = full_state(cache.driver)

    default = cli_json(cache, "clean", "--dry-run")  # stall_time 24h: only the invalid file
    assert (default["invalid_removed"], default["stalled_removed"]) == (1, 0)

    dry = cli_json(cache, "clean", "--dry-run", "--stall-time", "1h")
    assert full_state(cache.driver) == before
    _integers(dry, "invalid_removed", "stalled_removed", "bytes_freed")
    assert dry["dry_run"] is True
    assert (dry["invalid_removed"], dry["stalled_removed"], dry["bytes_freed"]) == (1, 1, 50)
    assert sorted(dry["files"]) == sorted([str(invalid), str(stalled)])

    real = cli("clean", "--stall-time", "1h", config=cache.config)
    assert real.returncode == 0, real.stderr
    out = real.stdout.splitlines()
    assert out[0] == "Removed 1 invalid and 1 stalled files (50 B)"
    assert sorted(line.strip() for line in out[1:]) == sorted([str(invalid), str(stalled)])
    assert "task finished" in real.stderr  # the log line goes to stderr
    assert not invalid.exists() and not stalled.exists() and fresh.exists()
    after_files, after_rows, _ = full_state(cache.driver)
    assert after_rows == before[1]
    assert set(before[0]) - set(after_files) == {
        f"invalid/{uid('broken')}",
        f"incomplete/{uid('stalled')}",
    }


def test_prune_dry_run_then_max_size_override(cache: Cache) -> None:
    _three_images(cache)
    before = full_state(cache.driver)

    dry = cli_json(cache, "prune", "--dry-run")

    assert full_state(cache.driver) == before
    assert dry["dry_run"] is True
    _integers(dry, "target_bytes", "size_before", "size_after", "pruned_images", "pruned_bytes")
    assert dry["images"] == [uid("a")]
    assert (dry["target_bytes"], dry["size_before"], dry["size_after"]) == (2048, 3072, 2048)
    assert (dry["pruned_images"], dry["pruned_bytes"]) == (1, 1024)

    real = cli("prune", "--max-size", "1KiB", config=cache.config)

    assert real.returncode == 0, real.stderr
    out = real.stdout.splitlines()
    assert out[0].startswith("Evicted 2 images (2.0 KiB): 3.0 KiB -> 1.0 KiB, target 1.0 KiB")
    assert [line.strip() for line in out[1:]] == [uid("a"), uid("b")]
    assert set(rows(cache.driver)) == {uid("c")}
    assert not cache.path(uid("a")).exists() and not cache.path(uid("b")).exists()
    assert cache.path(uid("c")).exists()


def test_reconcile_dry_run_then_real(cache: Cache) -> None:
    _three_images(cache)
    write_file(cache.path(uid("orphan")), 500, age=3600)
    cache_image(cache.driver, uid("phantom"), 100)
    os.remove(cache.path(uid("phantom")))
    set_row(cache.driver, uid("b"), size=999)  # size drift
    write_file(cache.path("queue", uid("c")), 0)  # queue entry of a cached image
    before = full_state(cache.driver)

    dry = cli_json(cache, "reconcile", "--dry-run")

    assert full_state(cache.driver) == before
    keys = ("orphans_adopted", "orphans_removed", "phantoms_removed", "sizes_fixed")
    _integers(dry, *keys)
    assert dry["dry_run"] is True
    assert {k: dry[k] for k in keys} == {
        "orphans_adopted": 1,
        "orphans_removed": 0,
        "phantoms_removed": 1,
        "sizes_fixed": 1,
    }

    real = cli("reconcile", config=cache.config)

    assert real.returncode == 0, real.stderr
    assert real.stdout.splitlines() == [
        "orphans: adopt 1, remove 0, report 0, within grace 0",
        "phantom rows: remove 1",
        "sizes: fix 1",
        "queue entries of cached images: remove 1",
        f"  orphan {uid('orphan')}: adopt",
        f"  phantom row {uid('phantom')}: remove",
    ]
    after = rows(cache.driver)
    assert set(after) == {uid("a"), uid("b"), uid("c"), uid("orphan")}
    assert after[uid("orphan")][2] == 500 and after[uid("b")][2] == 1024
    assert not cache.path("queue", uid("c")).exists()
    assert cache.path(uid("orphan")).exists()


# ------------------------------------------------------------------ config


def test_check_config_human_json_and_broken(cache: Cache, tmp_path: Path) -> None:
    human = cli("check-config", str(cache.config))
    assert human.returncode == 0, human.stderr
    assert human.stdout.startswith(f"{cache.config}: OK")
    lines = {line.split(" = ")[0].strip(): line for line in human.stdout.splitlines()}
    assert lines["cache.max_size"].rstrip().endswith(f"({cache.config}:3)")
    assert "2KiB" in lines["cache.max_size"]
    assert lines["cache.stall_time"].rstrip().endswith("(default)")

    doc = cli_json(cache, "check-config", str(cache.config))
    assert set(doc) >= {"path", "config", "sources"}
    assert doc["path"] == str(cache.config)
    assert doc["config"]["cache"]["dir"] == str(cache.dir)
    assert doc["config"]["cache"]["max_size"] == 2048
    assert doc["config"]["agent"]["lock_timeout"] == pytest.approx(0.2)
    assert doc["sources"]["cache.max_size"] == f"{cache.config}:3"

    broken = tmp_path / "broken.yaml"
    broken.write_text(f"cache:\n  dir: {cache.dir}\n  max_sise: 1GiB\n")
    for args in (("check-config", str(broken)), ("-c", str(broken), "status")):
        proc = cli(*args)
        assert proc.returncode == 78, proc.stderr
        message = one_line(proc.stderr)
        assert f"{broken}:3" in message and "cache.max_sise" in message
        assert "did you mean cache.max_size" in message
        assert proc.stdout == ""


def test_missing_config_files_are_config_errors(cache: Cache, tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"

    with_c = cli("status", config=missing)
    from_env = cli("status", env=clean_env(**{ENV_VAR: str(missing)}))

    assert with_c.returncode == 78
    assert str(missing) in one_line(with_c.stderr) and "-c" in with_c.stderr
    assert from_env.returncode == 78
    assert str(missing) in one_line(from_env.stderr) and ENV_VAR in from_env.stderr
    assert not missing.exists()


# ------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("args", "shown", "problem"),
    [
        (("queue", uid("good"), "../etc"), "'../etc'", "path separator"),
        (("delete-cached", "a/b"), "'a/b'", "path separator"),
        (("delete-queued", ".hidden"), "'.hidden'", "dot"),
        (("queue", "x" * 300), "'xxxx", "300 characters"),
        # Glance issues only UUIDs: id-shaped names are refused, whatever the cache holds
        (("delete-cached", "README"), "'README'", "not a UUID"),
        (("delete-cached", "incomplete"), "'incomplete'", "not a UUID"),
        (("delete-cached", uid("a"), "backup"), "'backup'", "not a UUID"),
        (("queue", "queue"), "'queue'", "not a UUID"),
        (("delete-queued", "7"), "'7'", "not a UUID"),
    ],
)
def test_invalid_image_ids_are_usage_errors(
    cache: Cache, args: tuple[str, ...], shown: str, problem: str
) -> None:
    cache_image(cache.driver, uid("a"), 10)
    before = full_state(cache.driver)

    proc = cli(*args, config=cache.config)

    assert proc.returncode == 2
    message = one_line(proc.stderr)
    assert "invalid image id" in message and shown in message and problem in message
    assert len(message) < 200
    assert proc.stdout == ""
    assert full_state(cache.driver) == before  # nothing queued, nothing deleted
    assert not cache.run_dir.exists()
    assert not (cache.dir.parent / "etc").exists()


def test_missing_dir_missing_db_and_corrupt_db_fail_cleanly(tmp_path: Path) -> None:
    # missing directory
    missing = make_cache(tmp_path / "m")
    config = missing.config.read_text().replace(str(missing.dir), str(tmp_path / "m" / "nope"))
    missing.config.write_text(config)
    proc = cli("status", "--json", config=missing.config)
    assert proc.returncode == 1
    assert "nope does not exist" in one_line(proc.stderr) and proc.stdout == ""
    assert not (tmp_path / "m" / "nope").exists()

    # a directory without cache.db: prune must not even create lock files
    no_db = make_cache(tmp_path / "n")
    os.remove(no_db.driver.db_path)
    listing = sorted(os.listdir(no_db.dir))
    proc = cli("prune", config=no_db.config)
    assert proc.returncode == 1
    assert "cache.db" in one_line(proc.stderr) and "does not exist" in proc.stderr
    assert sorted(os.listdir(no_db.dir)) == listing
    assert not no_db.run_dir.exists()

    # a zeroed database header
    corrupt = make_cache(tmp_path / "c")
    _three_images(corrupt)
    with open(corrupt.driver.db_path, "r+b") as handle:
        handle.write(b"\0" * 100)
    listing = sorted(os.listdir(corrupt.dir))
    proc = cli("clean", config=corrupt.config)
    assert proc.returncode == 1
    assert "corrupt" in one_line(proc.stderr)
    assert sorted(os.listdir(corrupt.dir)) == listing
    assert not corrupt.run_dir.exists()


# ------------------------------------------------------------------- locks


def test_maintenance_lock_held_by_another_process(cache: Cache) -> None:
    _three_images(cache)
    before = full_state(cache.driver)

    with holding(HOLD_MAINTENANCE, str(cache.run_dir)) as holder:
        prune = cli("prune", config=cache.config)
        delete = cli("delete-cached", uid("a"), config=cache.config)
        dry = cli("prune", "--dry-run", "--json", config=cache.config)

    for proc in (prune, delete):
        assert proc.returncode == 75, proc.stderr
        message = one_line(proc.stderr)
        assert f"pid {holder.pid}" in message and "maintenance.lock" in message
    assert full_state(cache.driver) == before
    assert dry.returncode == 0  # a dry run changes nothing and takes no lock
    assert json.loads(dry.stdout)["images"] == [uid("a")]


def test_glance_prune_lock_held_by_another_process(cache: Cache) -> None:
    _three_images(cache)

    with holding(HOLD_GLANCE, str(cache.dir), "glance-cache-prune"):
        before = full_state(cache.driver)  # the holder created the lock file
        proc = cli("prune", config=cache.config)
        dry = cli("prune", "--dry-run", config=cache.config)

    assert proc.returncode == 75, proc.stderr
    assert "glance-cache-prune" in one_line(proc.stderr)
    # a dry run takes no lock and says what it would do
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines()[0].startswith("Would evict 1 images (1.0 KiB)")
    assert dry.stdout.splitlines()[1:] == [f"  {uid('a')}"]
    assert full_state(cache.driver) == before


def test_sigterm_ends_an_adhoc_prune_at_a_safe_point(cache: Cache) -> None:
    """``systemctl stop glance-cache-agent-run@prune`` sends SIGTERM: the run ends
    between two batches, reports ``stopped``, and leaves no row without its file."""
    _three_images(cache)
    slow = cache.config.read_text().replace("batch_pause: 0s", "batch_pause: 30s")
    slow = slow.replace("prune:\n", "prune:\n  batch_size: 1\n", 1)
    cache.config.write_text(slow)
    argv = [sys.executable, "-m", "glance_cache_agent.cli", "-c", str(cache.config)]
    proc = subprocess.Popen(
        [*argv, "prune", "--max-size", "0", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    try:
        deadline = time.monotonic() + 20
        while cache.path(uid("a")).exists():  # the first batch is done: now in its 30 s pause
            assert time.monotonic() < deadline and proc.poll() is None, proc.poll()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    result = json.loads(out)
    assert result["stopped_by"] == "stopped"
    assert result["images"] == [uid("a")]
    assert cache.path(uid("b")).exists() and cache.path(uid("c")).exists()
    assert set(rows(cache.driver)) == {uid("b"), uid("c")}
