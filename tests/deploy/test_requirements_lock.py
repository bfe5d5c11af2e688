"""The role's lock of runtime dependencies (files/requirements.lock) stays in step with
pyproject.toml: every dependency pinned within its range, nothing missing from what they
pull in, nothing extra, and every pin with hashes (pip --require-hashes needs them)."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.helpers.deployment import LOCK
from tests.helpers.unit_files import REPO

_PIN = re.compile(r"^([A-Za-z0-9._-]+)==(\S+)$")


def _locked() -> dict[str, tuple[str, list[str]]]:
    """Name -> (version, hashes) of each entry (continuation lines joined)."""
    text = re.sub(r"\\\n\s*", " ", LOCK.read_text())
    entries: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        pin, *options = line.split()
        match = _PIN.match(pin)
        assert match, f"not pinned with ==: {line}"
        hashes = [option.removeprefix("--hash=sha256:") for option in options]
        assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), line
        entries[canonicalize_name(match.group(1))] = (match.group(2), hashes)
    return entries


def _dependencies() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [Requirement(spec) for spec in project["dependencies"]]


def _applies(requirement: Requirement) -> bool:
    """On a Linux host, without extras (what the agent installs)."""
    environment = {key: str(value) for key, value in default_environment().items()}
    environment["extra"] = ""
    return requirement.marker is None or requirement.marker.evaluate(environment)


def test_every_dependency_is_pinned_within_its_range() -> None:
    locked = _locked()
    for requirement in _dependencies():
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{name} is not in {LOCK.name}: run make lock"
        version = locked[name][0]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{name}=={version} does not satisfy pyproject's {requirement}: run make lock"
        )


def test_the_lock_holds_exactly_what_the_dependencies_pull_in() -> None:
    """The closure of pyproject's dependencies (their metadata, as installed here)."""
    wanted: set[str] = set()
    todo = [r for r in _dependencies() if _applies(r)]
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in wanted:
            continue
        wanted.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            pytest.fail(f"{name} is not installed here: make install")
        todo += [Requirement(r) for r in requires]
        todo = [r for r in todo if _applies(r)]
    assert set(_locked()) == wanted


def test_every_pin_has_hashes() -> None:
    for name, (_version, hashes) in _locked().items():
        assert hashes, f"{name} has no --hash: pip --require-hashes would refuse the lock"
