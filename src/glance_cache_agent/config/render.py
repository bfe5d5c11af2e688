"""The effective configuration, for ``check-config``: aligned text and JSON.

Every leaf key is shown with its effective value and where it came from;
how a value prints follows from its kind in the key table (sizes in IEC
units, durations with units). TLS files are shown by path only, and a
database URL with its password masked (``***``), in text and JSON alike.
"""

from __future__ import annotations

from typing import Any

from ..redact import mask_url
from .keys import KEYS, Kind
from .loader import leaf_keys
from .model import Config
from .units import format_duration, human_size

__all__ = ["effective_config_dict", "render_effective_config"]

_TLS = "metrics.tls"
_KINDS = {row.name: row.kind for row in KEYS}


def _effective_items(config: Config) -> list[tuple[str, Any]]:
    """(YAML key, effective value) for every leaf, in documentation order."""
    items: list[tuple[str, Any]] = []
    for name in leaf_keys():
        section, _, rest = name.partition(".")
        if section == "tasks":
            task, _, field_name = rest.partition(".")
            items.append((name, getattr(config.tasks[task], field_name)))
        elif name == "prune.min_free_space":
            items.append((name, (config.prune.min_free_bytes, config.prune.min_free_percent)))
        elif name == "prune.protected_images":
            items.append((name, sorted(config.prune.protected_images)))
        elif name == "metrics.listen":
            items.append((name, config.metrics.listen))
        elif name == _TLS and config.metrics.tls is not None:
            tls = config.metrics.tls
            items += [(row.name, getattr(tls, row.leaf)) for row in KEYS if row.parent == _TLS]
        elif name == "reconcile.orphans":
            items.append((name, config.reconcile.orphans.value))
        elif _KINDS[name] is Kind.DATABASE_URL:
            url = getattr(getattr(config, section), rest)
            items.append((name, None if url is None else mask_url(url)))
        else:
            items.append((name, getattr(getattr(config, section), rest)))
    return items


def _render_value(kind: Kind | None, value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if kind is Kind.SIZE:
        return human_size(value)
    if kind in (Kind.DURATION, Kind.POSITIVE_DURATION):
        return format_duration(value)
    if kind is Kind.FRACTION:
        return f"{value:g} ({value * 100:g}%)"
    if kind is Kind.MIN_FREE:
        free_bytes, free_percent = value
        return f"{free_percent:g}%" if free_percent else human_size(free_bytes)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


def render_effective_config(config: Config) -> str:
    """Aligned ``key = value  (source)`` lines, sizes in IEC units, for people.

    TLS files are shown by path only; nothing is ever read from them here.
    """
    rows = [
        (name, _render_value(_KINDS.get(name), value), config.sources.get(name, "default"))
        for name, value in _effective_items(config)
    ]
    key_width = max(len(k) for k, _, _ in rows)
    value_width = max(len(v) for _, v, _ in rows)
    lines = [f"{k.ljust(key_width)} = {v.ljust(value_width)}  ({s})" for k, v, s in rows]
    header = f"# effective configuration from {config.path or 'built-in defaults'}"
    return "\n".join([header, *lines]) + "\n"


def effective_config_dict(config: Config) -> dict[str, Any]:
    """The effective config for ``--json``: sizes in bytes, durations in seconds.

    ``config`` nests like the YAML, except that ``prune.min_free_space`` is
    given as ``min_free_bytes`` and ``min_free_percent``. ``sources`` maps
    dotted YAML keys to where each value came from.
    """
    tree: dict[str, Any] = {}
    for name, value in _effective_items(config):
        *parents, leaf = name.split(".")
        node = tree
        for parent in parents:
            node = node.setdefault(parent, {})
        if name == "prune.min_free_space":
            node["min_free_bytes"], node["min_free_percent"] = value
        elif isinstance(value, tuple):
            node[leaf] = list(value)
        else:
            node[leaf] = value
    return {"path": config.path, "config": tree, "sources": dict(config.sources)}
