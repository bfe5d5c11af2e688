"""Image-id validation: every id is refused or accepted before a path is built.

Ids become file names (``<base>/<id>``, ``<base>/<state>/<id>``), so a bad id
must be refused with ``InvalidImageId`` before anything touches the disk.
Differs from Glance: Glance accepts any ``str()``-able id as a file name; we
accept only what Glance issues, a UUID (8-4-4-4-12 hex digits, either case).
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from glance_cache_agent.driver import (
    CacheLayout,
    Driver,
    DriverError,
    InvalidImageId,
    image_id_problem,
    is_uuid,
    validate_image_id,
)
from tests.helpers.cache import cache_image, rows, uid

U = "3f1e8b6a-9c2d-4e5f-8a7b-1c2d3e4f5a6b"

# (bad id, substring the error message must contain)
BAD_IDS: list[tuple[object, str]] = [
    ("..", "'..'"),
    ("a..b", "'..'"),
    ("a/b", "path separator"),
    ("a\\b", "path separator"),
    ("../escape", "path separator"),
    ("/etc/passwd", "path separator"),
    ("a\x00b", "NUL"),
    (".hidden", "starts with a dot"),
    ("", "empty"),
    ("x" * 10000, "10000 characters"),
    ("x" * 256, "256 characters"),
    ("cache.db", "'.'"),
    ("cache.db-journal", "'.'"),
    ("image_cache_db_init", "reserved"),
    ("glance-cache-prune", "reserved"),
    ("glance-cache-clean", "reserved"),
    ("glance-cache", "reserved"),
    ("checkme", "reserved"),
    ("sqlite_centralized_migrate", "reserved"),
    ("img a", "' '"),
    ("-leading-dash", "must start with a letter or digit"),
    ("_leading_underscore", "must start with a letter or digit"),
    # id-shaped names Glance never issues: an operator's files, state dirs, ints
    ("README", "not a UUID"),
    ("backup", "not a UUID"),
    ("incomplete", "not a UUID"),
    ("invalid", "not a UUID"),
    ("queue", "not a UUID"),
    ("img-a", "not a UUID"),
    ("fake-image-id", "not a UUID"),
    ("7", "not a UUID"),
    (7, "not a UUID"),
    ("x" * 255, "not a UUID"),
    (U.replace("-", ""), "not a UUID"),  # dashes are required
    (U[:-1], "not a UUID"),
    (U + "0", "not a UUID"),
    (U[:-1] + "g", "not a UUID"),
    ("{" + U + "}", "'{'"),
    (None, "not NoneType"),
    (1.5, "not float"),
    (b"x", "not bytes"),
    (True, "not bool"),
    (["a"], "not list"),
]

GOOD_IDS: list[tuple[object, str]] = [
    (U, U),
    (U.upper(), U.upper()),  # either hex case (Glance itself writes lowercase)
    ("00000000-0000-0000-0000-000000000000", "00000000-0000-0000-0000-000000000000"),
    (uid("img-a"), uid("img-a")),
]


def _tree(root: Path) -> dict[str, tuple[bool, int]]:
    """Every path under ``root`` with (is_dir, size): to prove nothing was created."""
    found: dict[str, tuple[bool, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st_ = os.lstat(path)
            found[os.path.relpath(path, root)] = (os.path.isdir(path), st_.st_size)
    return found


# ------------------------------------------------------------- pure validation


@pytest.mark.parametrize(("bad", "reason"), BAD_IDS, ids=lambda v: repr(v)[:30])
def test_bad_ids_are_refused_with_a_reason(driver: Driver, bad: object, reason: str) -> None:
    with pytest.raises(InvalidImageId) as info:
        driver.get_image_filepath(bad)
    assert reason in str(info.value)
    assert reason in info.value.reason
    assert info.value.image_id is bad
    # InvalidImageId is both a driver error and a ValueError.
    assert isinstance(info.value, DriverError)
    assert isinstance(info.value, ValueError)


def test_long_id_is_shortened_in_the_message() -> None:
    with pytest.raises(InvalidImageId) as info:
        validate_image_id("x" * 10000)
    assert len(str(info.value)) < 200
    assert "..." in str(info.value)


@pytest.mark.parametrize(("good", "on_disk"), GOOD_IDS, ids=lambda v: repr(v)[:30])
def test_good_ids_are_accepted(driver: Driver, good: object, on_disk: str) -> None:
    assert image_id_problem(good, driver.layout.reserved_names) is None
    assert validate_image_id(good, driver.layout.reserved_names) == on_disk
    path = driver.get_image_filepath(good)
    assert path == os.path.join(driver.base_dir, on_disk)
    assert driver.get_image_filepath(good, "queue") == os.path.join(
        driver.base_dir, "queue", on_disk
    )


def test_reserved_names_only_apply_when_given() -> None:
    # The module function knows no cache: a UUID-named database is an ordinary id there.
    assert validate_image_id(U) == U
    layout = CacheLayout.create("/tmp/somewhere", U)
    with pytest.raises(InvalidImageId, match="reserved"):
        validate_image_id(U, layout.reserved_names)
    with pytest.raises(InvalidImageId, match="reserved"):
        validate_image_id("image_cache_db_init", layout.reserved_names)


def test_db_name_without_a_dot_and_its_side_files_are_reserved(
    make_driver: Callable[..., Driver],
) -> None:
    driver = make_driver(db="cachedb")
    for name in ("cachedb", "cachedb-journal", "cachedb-wal", "cachedb-shm"):
        with pytest.raises(InvalidImageId, match="reserved"):
            driver.queue_image(name)
    assert os.listdir(os.path.join(driver.base_dir, "queue")) == []
    # With the db outside the base dir, its name is an ordinary id again.
    assert "cachedb" in driver.layout.reserved_names
    outside = CacheLayout.create("/tmp/x", "/var/lib/cachedb")
    assert "cachedb" not in outside.reserved_names


def test_s14_integer_id_is_refused(driver: Driver, cache_dir: Path) -> None:
    """s14, differs from Glance: cache(7) writes B/7 there; Glance only issues
    UUIDs, so we refuse 7 and '7' before anything touches the disk."""
    before = _tree(cache_dir)
    for bad in (7, "7"):
        with pytest.raises(InvalidImageId, match="not a UUID"):
            cache_image(driver, bad, size=10)  # type: ignore[arg-type]
        with pytest.raises(InvalidImageId, match="not a UUID"):
            driver.is_cached(bad)
    assert _tree(cache_dir) == before
    assert rows(driver) == {}


def test_a_uuid_is_stored_as_text_exactly_as_given(driver: Driver) -> None:
    """An upper-case UUID is an image too; its file and row keep its spelling."""
    path = cache_image(driver, U.upper(), size=10)
    assert path == Path(driver.base_dir) / U.upper()
    assert driver.is_cached(U.upper()) and driver.get_image_size(U.upper()) == 10
    assert set(rows(driver)) == {U.upper()}
    with sqlite3.connect(driver.db_path) as conn:
        assert conn.execute("SELECT typeof(image_id) FROM cached_images").fetchall() == [("text",)]


def test_is_uuid() -> None:
    u = str(uuid.uuid4())
    assert is_uuid(u)
    assert is_uuid(u.upper())
    assert not is_uuid(u.replace("-", ""))  # Glance's ids always have their dashes
    assert not is_uuid("img-a")
    assert not is_uuid(u + "0")
    assert not is_uuid(u + "\n")
    assert not is_uuid("image_cache_db_init")


# --------------------------------------------------- every method refuses early


def _methods() -> list[tuple[str, Callable[[Driver, object], Any]]]:
    def ctx(name: str) -> Callable[[Driver, object], Any]:
        def run(d: Driver, image_id: object) -> None:
            with getattr(d, name)(image_id) as f:
                f.write(b"must never run") if name == "open_for_write" else f.read()
                raise AssertionError("body must not run for a bad id")

        return run

    simple = [
        "get_image_filepath",
        "get_image_size",
        "is_cached",
        "is_being_cached",
        "is_queued",
        "is_cacheable",
        "queue_image",
        "delete_queued_image",
        "delete_cached_image",
        "get_hit_count",
    ]
    methods: list[tuple[str, Callable[[Driver, object], Any]]] = [
        (name, (lambda n: lambda d, i: getattr(d, n)(i))(name)) for name in simple
    ]
    methods.append(
        ("get_image_filepath(incomplete)", lambda d, i: d.get_image_filepath(i, "incomplete"))
    )
    methods.append(("open_for_read", ctx("open_for_read")))
    methods.append(("open_for_write", ctx("open_for_write")))
    return methods


METHODS = _methods()
TRAVERSAL_IDS = [
    "..",
    "../escape",
    "../../etc/x",
    "a/b",
    "queue/x",
    ".hidden",
    "a\x00b",
    "",
    "cache.db",
    "image_cache_db_init",
    "cache.db-journal",
    "README",
    "queue",
    "incomplete",
    7,
    None,
    1.5,
    b"x",
    True,
]


@pytest.mark.parametrize("method", METHODS, ids=[m[0] for m in METHODS])
def test_every_method_taking_an_id_refuses_a_bad_one_before_touching_disk(
    driver: Driver, tmp_path: Path, method: tuple[str, Callable[[Driver, object], Any]]
) -> None:
    """Nothing under tmp_path (the cache and its parent) changes; no path is built."""
    cache_image(driver, uid("keep"), size=5)
    (tmp_path / "escape").write_bytes(b"outside")
    before_tree = _tree(tmp_path)
    before_rows = rows(driver)
    _, call = method
    for bad in TRAVERSAL_IDS:
        with (
            mock.patch.object(CacheLayout, "image_path", side_effect=AssertionError("path built")),
            pytest.raises(InvalidImageId),
        ):
            call(driver, bad)
        assert _tree(tmp_path) == before_tree, bad
        assert rows(driver) == before_rows, bad
    assert (tmp_path / "escape").read_bytes() == b"outside"


# ------------------------------------------------------------------- property


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.one_of(
        st.text(max_size=300),
        st.integers(),
        st.binary(max_size=5),
        st.none(),
        st.floats(),
        st.uuids().map(str),
    )
)
def test_accepted_ids_are_always_one_safe_path_component(candidate: object) -> None:
    base = "/srv/cache"
    layout = CacheLayout.create(base)
    try:
        name = validate_image_id(candidate, layout.reserved_names)
    except InvalidImageId as exc:
        assert exc.reason  # a refusal always says why
        return
    assert isinstance(candidate, str)
    assert name == candidate and is_uuid(name)
    assert len(name) == 36
    assert not name.startswith(".")
    assert "/" not in name and "\\" not in name and "\x00" not in name
    for state in ("active", "incomplete", "invalid", "queue"):
        path = layout.image_path(name, state)
        assert os.path.normpath(path) == path
        assert os.path.basename(path) == name
    assert layout.classify(name).value == "image"


@settings(max_examples=100, deadline=None)
@given(st.uuids(), st.booleans())
def test_every_uuid_is_accepted_in_either_case(value: uuid.UUID, upper: bool) -> None:
    name = str(value).upper() if upper else str(value)
    layout = CacheLayout.create("/srv/cache")
    assert validate_image_id(name, layout.reserved_names) == name
    assert layout.classify(name).value == "image"


@settings(max_examples=100, deadline=None)
@given(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,254}", fullmatch=True))
def test_every_other_name_of_the_old_alphabet_is_refused(name: str) -> None:
    """Names the agent once took for ids (``README``, ``7``) are refused and foreign."""
    layout = CacheLayout.create("/srv/cache")
    if is_uuid(name):
        return
    reason = "reserved" if name in layout.reserved_names else "not a UUID"
    with pytest.raises(InvalidImageId, match=reason):
        validate_image_id(name, layout.reserved_names)
    assert layout.classify(name).value != "image"


@settings(max_examples=500, deadline=None)
@given(
    st.text(max_size=300)
    | st.from_regex(r"[A-Za-z0-9._-]{0,260}", fullmatch=True)
    | st.from_regex(r"[0-9a-fA-F-]{34,38}", fullmatch=True)
    | st.uuids().map(str)
)
def test_fast_syntax_check_agrees_with_the_full_validator(name: str) -> None:
    """Directory scans use the one-regex check; it must accept exactly what
    validate_image_id accepts (reserved names aside)."""
    assert is_uuid(name) == (image_id_problem(name) is None)
