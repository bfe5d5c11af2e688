"""The rooms of DESIGN section 2 and which way their dependencies point.

cli/service -> maintenance -> driver: the driver knows nothing of the agent,
maintenance nothing of the CLI, the service or the exporter; nothing below
the CLI imports it. Every module logs through ``glance_cache_agent.log``
(structlog key-value events); only the logging set-up touches stdlib
``logging`` directly, and no module shadows the standard library's name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import glance_cache_agent

PACKAGE = Path(glance_cache_agent.__file__).parent

#: room -> the package's top-level modules and rooms it may import
ALLOWED: dict[str, set[str]] = {
    "driver": {"driver", "log"},
    "maintenance": {"maintenance", "driver", "log"},
    "config": {"config", "maintenance", "driver", "log", "errors", "redact"},
    "exporter": {
        "exporter", "maintenance", "driver", "config", "service", "log", "errors", "redact"
    },
    "service": {
        "service", "exporter", "maintenance", "driver", "config", "log", "errors", "redact"
    },
}  # fmt: skip

#: the only modules that may import stdlib ``logging`` (the others use ``log.get_logger``)
STDLIB_LOGGING = {"log.py", "service/logs.py"}


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _package_of(path: Path) -> list[str]:
    return ["glance_cache_agent", *path.relative_to(PACKAGE).parent.parts]


def _imported(path: Path) -> set[str]:
    """Absolute names of everything ``path`` imports (relative imports resolved)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            package = _package_of(path)
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names.add(module)
            if node.module is None:  # from . import x
                names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def _room(name: str) -> str | None:
    """The room (or top-level module) ``name`` lives in; None outside the package
    and for the package root itself (``__version__``)."""
    parts = name.split(".")
    if parts[0] != "glance_cache_agent" or len(parts) < 2 or parts[1] == "__version__":
        return None
    return parts[1]


@pytest.mark.parametrize("room", sorted(ALLOWED))
def test_a_room_imports_only_the_rooms_below_it(room: str) -> None:
    assert (PACKAGE / room / "__init__.py").is_file()
    wrong = {
        f"{path.relative_to(PACKAGE)}: {name}"
        for path in (PACKAGE / room).rglob("*.py")
        for name in _imported(path)
        if (target := _room(name)) is not None and target not in ALLOWED[room]
    }
    assert not wrong


def test_only_the_logging_set_up_uses_stdlib_logging() -> None:
    users = {
        str(path.relative_to(PACKAGE))
        for path in _modules()
        if "logging" in _imported(path)
    }
    assert users == STDLIB_LOGGING


def test_no_module_shadows_a_standard_library_module() -> None:
    import sys

    shadowing = {
        str(path.relative_to(PACKAGE))
        for path in _modules()
        if path.stem in sys.stdlib_module_names and path.stem not in {"__init__", "__main__"}
    }
    assert not shadowing
