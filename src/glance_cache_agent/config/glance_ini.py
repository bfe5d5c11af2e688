"""Glance's ini files, read the way oslo.config reads them.

glance-api reads its options with oslo.config, so the agent reads the same
files with the same rules and arrives at the same values:

- the ini dialect of ``oslo_config.iniparser``: ``key = value`` or
  ``key: value``, one pair of matching quotes stripped, indented
  continuation lines joined with newlines, ``#``/``;`` comments, repeated
  sections and keys allowed (the last value wins), option names
  case-sensitive, ``[DEFAULT]`` exact and other section names in any case;
- ``--config-dir``: a directory stands for its ``*.conf`` files in sorted
  order (hidden files excluded, as ``glob`` does); files read later win;
- template substitution (``ConfigOpts._substitute``): ``$name`` and
  ``${name}`` name another option of the same section, else of
  ``[DEFAULT]``; ``${group.name}`` names an option of another section;
  ``$$`` and ``\\$`` are a literal ``$``; a ``$`` that starts no name stays
  as it is. Values are substituted when read, so an unresolvable reference
  in an option the agent does not read is harmless, as in oslo.config.

oslo.config resolves a reference only to an option glance-api registers;
this reader cannot know every one, so it resolves a name the files set, or
one of the few Glance options in ``GLANCE_DEFAULTS`` with Glance's default.
Anything else, and a reference that leads back to itself, is an error
naming the file and line where the reference is written.
"""

from __future__ import annotations

import difflib
import glob
import os
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import cast

from .textfile import UnsafeFile, read_small_file

__all__ = [
    "GLANCE_DEFAULTS",
    "IniError",
    "IniValue",
    "Resolver",
    "config_files",
    "parse_ini",
    "read_glance_files",
]

#: (section, option); ``DEFAULT`` as written, every other section lower-case.
Key = tuple[str, str]

#: Glance's defaults of the options a reference may name without the files
#: setting them (oslo.config substitutes an unset option's default; ``None``
#: becomes the empty string).
GLANCE_DEFAULTS: dict[Key, str] = {
    ("DEFAULT", "image_cache_dir"): "",
    ("DEFAULT", "image_cache_sqlite_db"): "cache.db",
    ("DEFAULT", "image_cache_driver"): "centralized_db",
    ("DEFAULT", "image_cache_max_size"): "10737418240",
    ("DEFAULT", "image_cache_stall_time"): "86400",
    ("DEFAULT", "worker_self_reference_url"): "",
    ("oslo_concurrency", "lock_path"): "",
    ("database", "connection"): "",
}

#: Longest chain of references followed before giving up.
_MAX_DEPTH = 64


class IniError(Exception):
    """A problem in a Glance file, located by path, 1-based line and option."""

    def __init__(
        self, message: str, *, path: str, line: int | None = None, key: str | None = None
    ) -> None:
        self.message = message
        self.path = path
        self.line = line
        self.key = key
        super().__init__(message)


@dataclass(frozen=True)
class IniValue:
    """One option's raw text (before substitution) and where it was written."""

    text: str
    path: str
    line: int
    section: str
    option: str

    @property
    def key(self) -> Key:
        return (self.section, self.option)

    @property
    def label(self) -> str:
        return f"[{self.section}] {self.option}"

    def error(self, message: str) -> IniError:
        return IniError(message, path=self.path, line=self.line, key=self.label)


# --------------------------------------------------------------------------
# Files and directories
# --------------------------------------------------------------------------


def config_files(paths: Iterable[str]) -> list[str]:
    """``paths`` with each directory replaced by its ``*.conf`` files, sorted."""
    files: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            files += sorted(glob.glob(os.path.join(glob.escape(path), "*.conf")))
        else:
            files.append(path)
    return files


def _read_text(path: str) -> str:
    try:
        data = read_small_file(path)
    except UnsafeFile as exc:
        raise IniError(f"cannot read Glance config: {exc}", path=path) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise IniError("cannot read Glance config: not valid UTF-8", path=path, line=line) from None


def read_glance_files(paths: Iterable[str]) -> dict[Key, IniValue]:
    """Every option of the files (directories expanded), later files winning."""
    merged: dict[Key, IniValue] = {}
    for path in config_files(paths):
        merged.update(parse_ini(_read_text(path), path))
    return merged


# --------------------------------------------------------------------------
# The ini dialect
# --------------------------------------------------------------------------


def _section_key(section: str) -> str:
    """oslo.config's group-name normalisation."""
    return section if section == "DEFAULT" else section.lower()


class _Parser:
    """``oslo_config.iniparser.BaseParser``'s rules, keeping line numbers."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.options: dict[Key, IniValue] = {}
        self.section: str | None = None
        self.pending: tuple[str, list[str], int] | None = None  # key, lines, line number

    def error(self, line: int, message: str) -> IniError:
        return IniError(f"cannot parse Glance config: {message}", path=self.path, line=line)

    def flush(self) -> None:
        """Store the option being read, if any (a blank or new line ends it)."""
        if self.pending is None:
            return
        option, lines, number = self.pending
        self.pending = None
        if self.section is None:
            raise self.error(number, f"option {option!r} comes before any [section] header")
        section = _section_key(self.section)
        value = IniValue("\n".join(lines), self.path, number, section, option)
        self.options[(section, option)] = value

    def header(self, line: str, number: int) -> None:
        if not line.endswith("]"):
            raise self.error(number, f"section header {line!r} does not end with ']'")
        if len(line) <= 2:
            raise self.error(number, "empty section name '[]'")
        self.section = line[1:-1]

    def assignment(self, line: str, number: int) -> None:
        colon, equal = line.find(":"), line.find("=")
        if colon < 0 and equal < 0:
            raise self.error(number, f"no '=' or ':' in {line!r}")
        split = equal if colon < 0 or 0 <= equal < colon else colon
        option, value = line[:split].strip(), line[split + 1 :].strip()
        if not option:
            raise self.error(number, f"empty option name in {line!r}")
        if value and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        self.pending = (option, [value], number)

    def parse(self, text: str) -> dict[Key, IniValue]:
        lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        for number, raw in enumerate(lines, 1):
            line = raw.rstrip()
            if not line:
                self.flush()
            elif line[0] in " \t":
                if self.pending is None:
                    raise self.error(number, "indented continuation line with no option above")
                self.pending[1].append(line.lstrip())
            else:
                self.flush()
                if line.startswith("["):
                    self.header(line, number)
                elif not line.startswith(("#", ";")):
                    self.assignment(line, number)
        self.flush()
        return self.options


def parse_ini(text: str, path: str) -> dict[Key, IniValue]:
    """The options of one file's ``text``; the last value of a repeated key wins."""
    return _Parser(path).parse(text)


# --------------------------------------------------------------------------
# Substitution
# --------------------------------------------------------------------------


class _Template(string.Template):
    # oslo.config's pattern; string.Template matches it case-insensitively
    idpattern = r"[_a-z][\._a-z0-9]*"


class _Lookup:
    """The mapping a template substitutes from (oslo's ``StrSubWrapper``)."""

    def __init__(self, resolver: Resolver, where: IniValue) -> None:
        self.resolver = resolver
        self.where = where

    def __getitem__(self, name: str) -> str:
        return self.resolver.reference(name, self.where)


class Resolver:
    """Substitutes ``$references`` in option values, as oslo.config does."""

    def __init__(self, options: Mapping[Key, IniValue]) -> None:
        self.options = options
        self._chain: list[IniValue] = []  # the values being substituted, outermost first

    def value(self, found: IniValue) -> str:
        """``found``'s text with every reference substituted."""
        if any(active.key == found.key for active in self._chain):
            raise self._cycle(found)
        if len(self._chain) >= _MAX_DEPTH:
            raise found.error(f"references nest more than {_MAX_DEPTH} deep")
        self._chain.append(found)
        try:
            template = _Template(found.text.replace("\\$", "$$"))
            return template.safe_substitute(cast(Mapping[str, object], _Lookup(self, found)))
        finally:
            self._chain.pop()

    def reference(self, name: str, where: IniValue) -> str:
        """The substituted value ``$name`` stands for inside ``where``."""
        for key in self._candidates(name, where.section):
            if key in self.options:
                return self.value(self.options[key])
            if key in GLANCE_DEFAULTS:
                return GLANCE_DEFAULTS[key]
        raise where.error(self._undefined(name, where.section))

    @staticmethod
    def _candidates(name: str, section: str) -> list[Key]:
        """Where ``name`` is looked up, in oslo.config's order."""
        group, dot, option = name.partition(".")
        if dot:  # ${group.option}; oslo has no group called DEFAULT
            return [] if group == "DEFAULT" else [(group, option)]
        return list(dict.fromkeys([(section, name), ("DEFAULT", name)]))

    def _undefined(self, name: str, section: str) -> str:
        group, dot, _ = name.partition(".")
        where = f"[{group}]" if dot else " or ".join(dict.fromkeys([f"[{section}]", "[DEFAULT]"]))
        known = {
            option if s == section or s == "DEFAULT" else f"{s}.{option}"
            for s, option in [*self.options, *GLANCE_DEFAULTS]
        }
        close = difflib.get_close_matches(name, sorted(known), n=1)
        if name == "state_path":
            hint = " (Glance, unlike Nova, has no state_path option: write the path out)"
        elif close:
            hint = f" (did you mean ${close[0]}?)"
        else:
            hint = ""
        return f"cannot substitute ${name}: no such option in {where}{hint}"

    def _cycle(self, found: IniValue) -> IniError:
        start = next(i for i, active in enumerate(self._chain) if active.key == found.key)
        loop = [v.option for v in self._chain[start:]] + [found.option]
        innermost = self._chain[-1]
        return innermost.error(f"references form a loop: {' -> '.join(loop)}")
