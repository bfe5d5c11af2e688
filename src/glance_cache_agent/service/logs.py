"""Logging output: one handler renders our structlog events and everyone else's records.

Every module logs through ``glance_cache_agent.log.get_logger`` (structlog
key-value events delivered as stdlib records). One ``StreamHandler`` on the
root logger formats every record -- ours and foreign ones (APScheduler,
``warnings``) -- with one ``structlog.stdlib.ProcessorFormatter``, so all
lines carry the same keys (``event``, ``level``, ``logger``, ``timestamp``
and any bound context such as ``task``).

Renderers:

* ``json``: one JSON object per line, prefixed with ``<N>``, the syslog
  priority, which journald (``SyslogLevelPrefix=yes``, the default) strips
  and stores as the record's priority -- so ``journalctl -p warning`` works.
* ``console``: structlog's ``ConsoleRenderer``; colours only on a TTY.
* ``auto``: ``console`` when the stream is a TTY, else ``json``.

Exceptions never render local variables (they could hold secrets or whole
config objects): JSON uses ``ExceptionDictTransformer(show_locals=False)`` and
the console uses the plain traceback formatter (structlog's default, ``rich``,
shows locals).

It imports the stdlib ``logging`` as ``std_logging`` (``logging`` reads as
the standard module everywhere in this package).
"""

from __future__ import annotations

import logging as std_logging
import sys
from typing import TextIO

import structlog
from structlog.types import EventDict, Processor, WrappedLogger

from ..log import event_processors, get_logger, logger_processors
from ..redact import mask_text

__all__ = ["FORMATS", "LEVELS", "configure_logging", "get_logger", "syslog_priority"]

#: accepted ``logging.level`` values (case-insensitive)
LEVELS: dict[str, int] = {
    "debug": std_logging.DEBUG,
    "info": std_logging.INFO,
    "warning": std_logging.WARNING,
    "warn": std_logging.WARNING,
    "error": std_logging.ERROR,
    "critical": std_logging.CRITICAL,
}

#: accepted ``logging.format`` / ``--log-format`` values
FORMATS = ("auto", "json", "console")

#: APScheduler logs two INFO lines per job run ("Running job", "executed
#: successfully"); the daemon logs its own summary line, so these loggers are
#: raised to WARNING unless the level is DEBUG.
_CHATTY_LOGGERS = ("apscheduler.executors", "apscheduler.scheduler")

#: marks the handler we installed, so reconfiguring replaces it (idempotency)
_HANDLER_MARK = "_glance_cache_agent_handler"


def syslog_priority(levelno: int) -> int:
    """The syslog priority (``<N>`` prefix) for a stdlib level number."""
    if levelno >= std_logging.CRITICAL:
        return 2
    if levelno >= std_logging.ERROR:
        return 3
    if levelno >= std_logging.WARNING:
        return 4
    if levelno >= std_logging.INFO:
        return 6
    return 7


class _JournalJSONRenderer:
    """Final processor: drop structlog's record metadata, render JSON, prefix ``<N>``.

    The priority comes from the ``LogRecord``'s level number, which exists for
    both structlog and foreign records, so custom levels map sensibly too.
    """

    def __init__(self) -> None:
        self._json = structlog.processors.JSONRenderer()

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> str:
        record = event_dict.pop("_record", None)
        event_dict.pop("_from_structlog", None)
        if isinstance(record, std_logging.LogRecord):
            priority = syslog_priority(record.levelno)
        else:
            priority = syslog_priority(LEVELS.get(method_name, std_logging.INFO))
        rendered = self._json(logger, method_name, event_dict)
        if isinstance(rendered, bytes):  # only with a bytes-producing serializer
            rendered = rendered.decode()
        return f"<{priority}>{rendered}"


class _MaskingFormatter(structlog.stdlib.ProcessorFormatter):
    """Renders like its base, then masks the password of any URL in the line.

    Whatever quotes Glance's database URL (an exception from a driver, a
    library's log line), the password never reaches the journal.
    """

    def format(self, record: std_logging.LogRecord) -> str:
        return mask_text(super().format(record))


def _drop_formatter_attributes(
    logger: WrappedLogger, method_name: str, event_dict: EventDict
) -> EventDict:
    """Undo what ``ExtraAdder`` copies from a record another handler formatted first.

    ``logging.Formatter.format`` sets ``record.message`` (and ``asctime``);
    ``extra=`` may not use these names, so they are never user fields.
    """
    event_dict.pop("message", None)
    event_dict.pop("asctime", None)
    return event_dict


def _parse_level(level: str) -> int:
    try:
        return LEVELS[level.strip().lower()]
    except KeyError:
        raise ValueError(
            f"unknown log level {level!r}; expected one of debug, info, warning, error, critical"
        ) from None


def _is_tty(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except (OSError, ValueError):  # closed or detached stream
        return False


def _final_processors(fmt: str, colors: bool) -> list[Processor]:
    if fmt == "json":
        return [
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            ),
            _JournalJSONRenderer(),
        ]
    return [
        structlog.stdlib.ProcessorFormatter.remove_processors_meta,
        structlog.dev.ConsoleRenderer(
            colors=colors, exception_formatter=structlog.dev.plain_traceback
        ),
    ]


def configure_logging(level: str, fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Route structlog and stdlib logging through one handler on ``stream``.

    ``stream`` defaults to ``sys.stderr`` (CLI commands print their JSON
    documents on stdout); the daemon passes ``sys.stdout`` under systemd.
    Calling this again replaces the handler installed before (log level,
    format and stream can change on reload); handlers installed by others
    (e.g. pytest's) are left alone. Raises ``ValueError`` for an unknown level
    or format.
    """
    levelno = _parse_level(level)
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r}; expected one of {', '.join(FORMATS)}")
    out: TextIO = sys.stderr if stream is None else stream
    tty = _is_tty(out)
    resolved = ("console" if tty else "json") if fmt == "auto" else fmt

    # structlog.get_logger() users (libraries) take the same route as ours
    structlog.configure(
        processors=logger_processors(),
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Safe with reconfiguration: the level is checked by the stdlib logger
        # on every call and rendering happens in the (replaced) handler.
        cache_logger_on_first_use=True,
    )

    formatter = _MaskingFormatter(
        foreign_pre_chain=[
            *event_processors(),
            structlog.stdlib.ExtraAdder(),
            _drop_formatter_attributes,
        ],
        processors=_final_processors(resolved, colors=tty),
    )
    handler = std_logging.StreamHandler(out)
    handler.setFormatter(formatter)
    setattr(handler, _HANDLER_MARK, True)

    root = std_logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _HANDLER_MARK, False):
            root.removeHandler(old)
            old.close()
    root.addHandler(handler)
    root.setLevel(levelno)

    chatty_level = std_logging.NOTSET if levelno <= std_logging.DEBUG else std_logging.WARNING
    for name in _CHATTY_LOGGERS:
        std_logging.getLogger(name).setLevel(chatty_level)
    # Python warnings (e.g. DeprecationWarning) go through the same pipeline.
    std_logging.captureWarnings(True)
