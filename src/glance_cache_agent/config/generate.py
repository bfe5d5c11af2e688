"""Write what follows from the key table: ``config.example.yaml`` and the role's specs.

``make generate`` runs ``python -m glance_cache_agent.config.generate`` in
the repository; ``--check`` only reports drift (exit 1), which a unit test
also asserts. In ``argument_specs.yml`` only the blocks between
``# BEGIN generated: <section>`` and ``# END generated`` markers are
rewritten, so the role's own variables stay hand-written.
"""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

import yaml

from .keys import SECTION_DOCS, SECTION_NAMES, TASK_NAMES, Key, Kind, section_keys

__all__ = ["EXAMPLE_PATH", "SPECS_PATH", "example_yaml", "main", "role_specs"]

EXAMPLE_PATH = "config.example.yaml"
SPECS_PATH = "ansible/roles/glance_cache_agent/meta/argument_specs.yml"
_WIDTH = 96

_HEADER = """\
# glance-cache-agent configuration: every key, set to its default.
# Generated from src/glance_cache_agent/config/keys.py by `make generate`: edit the table there.
#
# Where the agent looks: -c PATH, else $GLANCE_CACHE_AGENT_CONFIG, else
# /etc/glance-cache-agent/config.yaml (when that file is missing, these
# built-in defaults apply). `glance-cache-agent check-config [PATH]` validates
# a file and prints every effective value with where it came from.
#
# Unknown keys are errors (with a did-you-mean); a section left empty, or
# with all its keys commented out, keeps its defaults.
#
# Sizes: a number of bytes, or a number (decimals allowed) with a unit, case
# sensitive: B; KB MB GB TB PB (powers of 1000; kB also accepted); KiB MiB
# GiB TiB PiB (powers of 1024). Single letters (10G, 500M) are refused as
# ambiguous. A decimal value is rounded down to whole bytes ('1.5GiB' is fine).
#
# Durations: a number of seconds, or parts with units ms, s, m, h, d, w, e.g.
# 30s, 15m, 24h, 7d, 1h30m, 500ms. Durations down to 1s are valid everywhere;
# a task interval must be at least 1s; keys that say so accept 0 (none) or
# null (disabled).
"""

#: The Ansible argument-spec type of each kind (others are ``raw``: units or numbers).
_ANSIBLE_TYPES = {
    Kind.ABSOLUTE_PATH: "path",
    Kind.FILE_NAME: "str",
    Kind.EXISTING_FILE: "path",
    Kind.PATH_LIST: "list",
    Kind.IMAGE_IDS: "list",
    Kind.INTEGER: "int",
    Kind.BOOLEAN: "bool",
    Kind.CHOICE: "str",
    Kind.LISTEN: "str",
    Kind.CRON: "str",
    Kind.MAPPING: "dict",
}
_LIST_ELEMENTS = {Kind.PATH_LIST: "path", Kind.IMAGE_IDS: "str"}


def _comment(text: str, indent: str) -> list[str]:
    return textwrap.wrap(
        text, _WIDTH, initial_indent=f"{indent}# ", subsequent_indent=f"{indent}# "
    )


def _scalar(value: object) -> str:
    """``value`` as a YAML flow scalar, unquoted whenever YAML reads it back unchanged."""
    if isinstance(value, str) and yaml.safe_load(value) == value:
        return value
    return (
        yaml.safe_dump(value, default_flow_style=True, width=10**6).removesuffix("\n...\n").strip()
    )


def _key_lines(row: Key, indent: str) -> list[str]:
    lines = _comment(row.doc, indent)
    lines += [f"{indent}# {line}" for line in row.example]
    lines.append(f"{indent}{row.leaf}: {_scalar(row.default)}")
    return lines


def _section_lines(section: str) -> list[str]:
    lines = ["", *_comment(SECTION_DOCS[section], ""), f"{section}:"]
    if section == "tasks":
        for task in TASK_NAMES:
            lines.append(f"  {task}:")
            for row in section_keys(f"tasks.{task}").values():
                lines += _key_lines(row, "    ")
        return lines
    for row in section_keys(section).values():
        lines += _key_lines(row, "  ")
    return lines


def example_yaml() -> str:
    """The text of ``config.example.yaml``: every key, commented, at its default."""
    lines = _HEADER.splitlines()
    for section in SECTION_NAMES:
        lines += _section_lines(section)
    return "\n".join(lines) + "\n"


def _option_spec(row: Key) -> dict[str, Any]:
    """One key as an Ansible argument spec option."""
    spec: dict[str, Any] = {"type": _ANSIBLE_TYPES.get(row.kind, "raw")}
    if row.kind in _LIST_ELEMENTS:
        spec["elements"] = _LIST_ELEMENTS[row.kind]
    if row.choices:
        spec["choices"] = list(row.choices)
    spec["description"] = row.doc
    return spec


def _section_options(section: str) -> dict[str, Any]:
    """The ``options`` of the role variable that holds one config section."""
    if section == "tasks":
        return {
            task: {
                "type": "dict",
                "description": f"Schedule of the {task} task.",
                "options": _section_options(f"tasks.{task}"),
            }
            for task in TASK_NAMES
        }
    return {row.leaf: _option_spec(row) for row in section_keys(section).values()}


class _SpecDumper(yaml.SafeDumper):
    """Block mappings with flow lists (``choices: [a, b]``), as yamllint wants them."""


_SpecDumper.add_representer(
    list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, True)
)

_BLOCK = re.compile(
    r"^(?P<indent>[ ]*)# BEGIN generated: (?P<section>[\w.]+)[^\n]*\n"
    r".*?^(?P=indent)# END generated\n",
    re.MULTILINE | re.DOTALL,
)


def _block(match: re.Match[str]) -> str:
    indent, section = match["indent"], match["section"]
    body = yaml.dump(_section_options(section), Dumper=_SpecDumper, sort_keys=False, width=10**6)
    lines = [f"{indent}{line}" for line in body.splitlines()]
    begin = f"{indent}# BEGIN generated: {section} (make generate, from config/keys.py)"
    return "\n".join([begin, *lines, f"{indent}# END generated"]) + "\n"


def role_specs(text: str) -> str:
    """``text`` of argument_specs.yml with every generated block rewritten."""
    return _BLOCK.sub(_block, text)


def _outputs(root: Path) -> dict[Path, str]:
    """Each generated file and the text it should have."""
    specs = root / SPECS_PATH
    return {root / EXAMPLE_PATH: example_yaml(), specs: role_specs(specs.read_text())}


def main(argv: list[str] | None = None) -> int:
    """Write the generated files (or, with ``--check``, list the stale ones)."""
    parser = argparse.ArgumentParser(prog="python -m glance_cache_agent.config.generate")
    parser.add_argument("--root", type=Path, default=Path("."), help="the repository")
    parser.add_argument("--check", action="store_true", help="only report files out of date")
    args = parser.parse_args(argv)
    stale = [path for path, text in _outputs(args.root).items() if path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"{path} is out of date: run make generate", file=sys.stderr)
        return 1 if stale else 0
    for path, text in _outputs(args.root).items():
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
