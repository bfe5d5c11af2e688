"""The project's own line-tracking YAML reader.

The YAML is composed (not just loaded) so every value keeps the line it was
written on: each error names the file, the 1-based line and the dotted key,
an unknown key gets a did-you-mean, and ``check-config`` can show where
every effective value came from. Which keys exist, and how each is checked,
comes from the key table (``keys``, ``validate``).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import yaml

from .errors import ConfigError
from .keys import SECTION_NAMES, TASK_NAMES, Key, Kind, section_keys
from .units import show
from .validate import Check, check_for, item_check

__all__ = ["Value", "read_yaml"]

_NULL_TAG = "tag:yaml.org,2002:null"


@dataclass(frozen=True)
class Value:
    """A parsed value and where it came from (for sources and later errors)."""

    value: Any
    source: str
    path: str | None
    line: int | None
    key: str
    #: for lists: the line of each item
    item_lines: tuple[int, ...] = ()

    def error(self, message: str, item: int | None = None) -> ConfigError:
        """An error about this value (or about item ``item`` of a list)."""
        if item is None:
            return ConfigError(message, path=self.path, line=self.line, key=self.key)
        line = self.item_lines[item] if item < len(self.item_lines) else self.line
        return ConfigError(message, path=self.path, line=line, key=f"{self.key}[{item}]")


class _Reader:
    """Walks the composed YAML document, checking keys and collecting values."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.values: dict[str, Value] = {}
        self._constructor = yaml.SafeLoader("")

    def error(self, node: yaml.Node | int, key: str | None, message: str) -> ConfigError:
        line = node if isinstance(node, int) else node.start_mark.line + 1
        return ConfigError(message, path=self.path, line=line, key=key)

    def source(self, line: int) -> str:
        return f"{self.path or '<config>'}:{line}"

    def construct(self, node: yaml.Node, key: str) -> Any:
        """The Python value of ``node`` (SafeLoader semantics)."""
        try:
            return self._constructor.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc)
            raise self.error(node, key, f"invalid value: {problem}") from None

    def items(self, node: yaml.Node, where: str) -> Iterator[tuple[str, yaml.Node, yaml.Node]]:
        """(name, key node, value node) of a mapping; duplicate keys are errors."""
        seen: dict[str, int] = {}
        assert isinstance(node, yaml.MappingNode)
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise self.error(
                    key_node, where or None, "YAML merge keys ('<<') are not supported"
                )
            if not isinstance(key_node, yaml.ScalarNode):
                raise self.error(key_node, where or None, "keys must be plain names")
            name = str(key_node.value)
            dotted = f"{where}.{name}" if where else name
            line = key_node.start_mark.line + 1
            if name in seen:
                raise self.error(line, dotted, f"duplicate key (first set on line {seen[name]})")
            seen[name] = line
            yield name, key_node, value_node

    def mapping_or_empty(self, node: yaml.Node, key: str, line: int) -> yaml.MappingNode | None:
        """A section's mapping node; ``null`` (all keys commented out) is empty."""
        if isinstance(node, yaml.MappingNode):
            return node
        if isinstance(node, yaml.ScalarNode) and node.tag == _NULL_TAG:
            return None
        raise self.error(line, key, f"must be a mapping, got {show(self.construct(node, key))}")

    def unknown(self, line: int, dotted: str, name: str, known: list[str], what: str) -> NoReturn:
        """Raise the did-you-mean error for an unknown key."""
        parent = dotted.rpartition(".")[0]
        prefix = f"{parent}." if parent else ""
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        if close:
            hint = f"did you mean {prefix}{close[0]}?"
        else:
            hint = f"{parent or 'the top level'} accepts {', '.join(known)}"
        raise self.error(line, dotted, f"unknown {what} ({hint})")

    def read_keys(self, node: yaml.Node, where: str, line: int, spec: Mapping[str, Key]) -> None:
        """Check and store every key of one mapping (written on ``line``) against ``spec``."""
        mapping = self.mapping_or_empty(node, where, line)
        if mapping is None:
            return
        for name, key_node, value_node in self.items(mapping, where):
            dotted = f"{where}.{name}"
            line = key_node.start_mark.line + 1
            row = spec.get(name)
            if row is None:
                self.unknown(line, dotted, name, list(spec), "key")
            if row.kind is Kind.MAPPING:
                self.read_mapping(value_node, row, line)
            elif row.kind in (Kind.PATH_LIST, Kind.IMAGE_IDS):
                self.read_list(value_node, dotted, line, row)
            else:
                self.read_scalar(value_node, dotted, line, check_for(row))

    def read_scalar(self, node: yaml.Node, dotted: str, line: int, check: Check) -> None:
        value = self.construct(node, dotted)
        try:
            parsed = check(value)
        except ValueError as exc:
            raise self.error(line, dotted, str(exc)) from None
        self.values[dotted] = Value(parsed, self.source(line), self.path, line, dotted)

    def read_list(self, node: yaml.Node, dotted: str, line: int, row: Key) -> None:
        """A list (a single path is a one-item path list); items checked one by one."""
        paths = row.kind is Kind.PATH_LIST
        if isinstance(node, yaml.ScalarNode) and node.tag == _NULL_TAG:
            items: list[yaml.Node] = []
        elif isinstance(node, yaml.SequenceNode):
            items = list(node.value)
        elif paths and node.tag == "tag:yaml.org,2002:str":
            items = [node]  # a single path
        else:
            value = self.construct(node, dotted)
            what = "a path or a list of paths" if paths else "a list"
            raise self.error(line, dotted, f"must be {what}, got {show(value)}")
        check = item_check(row)
        parsed = []
        for index, item in enumerate(items):
            item_key = f"{dotted}[{index}]"
            try:
                parsed.append(check(self.construct(item, item_key)))
            except ValueError as exc:
                raise self.error(item, item_key, str(exc)) from None
        item_lines = tuple(item.start_mark.line + 1 for item in items)
        self.values[dotted] = Value(
            tuple(parsed), self.source(line), self.path, line, dotted, item_lines
        )

    def read_mapping(self, node: yaml.Node, row: Key, line: int) -> None:
        """A nested mapping (``metrics.tls``): null (unset) or its own keys, required ones set."""
        where = row.name
        mapping = self.mapping_or_empty(node, where, line)
        if mapping is None:
            self.values[where] = Value(None, self.source(line), self.path, line, where)
            return
        spec = section_keys(where)
        self.read_keys(mapping, where, line, spec)
        for name, nested in spec.items():
            if nested.required and nested.name not in self.values:
                raise self.error(line, where, f"missing required key {name!r}")
        auth = self.values.get("metrics.tls.client_auth_required")
        if auth is not None and auth.value and "metrics.tls.client_ca_file" not in self.values:
            raise auth.error("needs metrics.tls.client_ca_file to verify client certificates")
        self.values[where] = Value(True, self.source(line), self.path, line, where)

    def read_tasks(self, node: yaml.Node, line: int) -> None:
        mapping = self.mapping_or_empty(node, "tasks", line)
        if mapping is None:
            return
        for name, key_node, value_node in self.items(mapping, "tasks"):
            task_line = key_node.start_mark.line + 1
            if name not in TASK_NAMES:
                self.unknown(task_line, f"tasks.{name}", name, list(TASK_NAMES), "task")
            self.read_keys(value_node, f"tasks.{name}", task_line, section_keys(f"tasks.{name}"))
            interval = self.values.get(f"tasks.{name}.interval")
            cron = self.values.get(f"tasks.{name}.cron")
            if interval is not None and cron is not None and cron.value is not None:
                raise cron.error(f"set either interval or cron for task {name}, not both")

    def read_document(self, root: yaml.Node | None) -> None:
        if root is None:
            return
        if not isinstance(root, yaml.MappingNode):
            found = show(self.construct(root, "top level"))
            raise self.error(
                root, None, f"the top level must be a mapping of sections, got {found}"
            )
        for name, key_node, value_node in self.items(root, ""):
            line = key_node.start_mark.line + 1
            if name == "tasks":
                self.read_tasks(value_node, line)
            elif name in SECTION_NAMES:
                self.read_keys(value_node, name, line, section_keys(name))
            else:
                self.unknown(line, name, name, list(SECTION_NAMES), "section")


def _compose(text: str, path: str | None) -> yaml.Node | None:
    """Compose the YAML text, turning syntax errors into located ConfigErrors."""
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = None if mark is None else mark.line + 1
        problem = exc.problem or "invalid YAML"
        context = f" ({exc.context})" if exc.context else ""
        raise ConfigError(f"YAML syntax error: {problem}{context}", path=path, line=line) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"YAML syntax error: {exc}", path=path) from None


def read_yaml(text: str, path: str | None) -> dict[str, Value]:
    """Every key set in YAML ``text``, checked, by dotted name; ``path`` labels errors."""
    reader = _Reader(path)
    reader.read_document(_compose(text, path))
    return reader.values
