"""How every module logs: structlog key-value events, delivered by stdlib ``logging``.

``get_logger(__name__)`` gives a structlog logger whose events become stdlib
``LogRecord``s, whatever structlog's global configuration is (a host program
or a test may reset it). So every room -- the driver and maintenance
included, which know nothing of the agent -- logs one way:
``LOG.warning("cannot delete file", path=path, error=str(exc))``, fields as
keywords, never %-formatting. Until an output is configured the records go
wherever stdlib logging sends them (nowhere but warnings to stderr, as for
any library); ``service.logs.configure_logging`` renders them as journald
JSON or console lines, every field a searchable key.

A leaf module: it imports only structlog and the standard library.
"""

from __future__ import annotations

import logging
from typing import cast

import structlog
from structlog.types import Processor

__all__ = ["event_processors", "get_logger", "logger_processors"]


def event_processors() -> list[Processor]:
    """Keys every line carries: bound context (``task``...), ``level``, ``logger``, ``timestamp``.

    Applied to our events here and, by ``service.logs``, to foreign records.
    """
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def logger_processors() -> list[Processor]:
    """A logger's whole chain: level filter, the keys, then hand-over to stdlib."""
    return [
        structlog.stdlib.filter_by_level,
        *event_processors(),
        structlog.stdlib.PositionalArgumentsFormatter(),
        structlog.processors.StackInfoRenderer(),
        structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
    ]


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    """A structlog logger over the stdlib logger ``name`` (the ``logger`` key)."""
    return cast(
        structlog.stdlib.BoundLogger,
        structlog.wrap_logger(
            logging.getLogger(name),
            processors=logger_processors(),
            wrapper_class=structlog.stdlib.BoundLogger,
            cache_logger_on_first_use=True,
        ),
    )
