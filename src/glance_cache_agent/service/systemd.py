"""sd_notify(3) for ``Type=notify`` units, stdlib only.

The protocol: newline-separated ``KEY=VALUE`` fields in one datagram on the
``AF_UNIX``/``SOCK_DGRAM`` socket named by ``$NOTIFY_SOCKET`` (a leading ``@``
is an abstract socket). ``WatchdogSec=`` exports ``WATCHDOG_USEC`` (and
``WATCHDOG_PID``); ``WATCHDOG=1`` should then be sent every half interval.
See systemd's ``man/notify-selfcontained-example.py``.

Nothing here raises into the caller: outside systemd every call is a no-op,
and a send that fails (socket gone, permission, buffer full) is logged at
debug level and reported as ``False`` -- notification is best effort and must
never take the daemon down.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

from ..log import get_logger

__all__ = ["Notifier"]

_log = get_logger(__name__)


def _monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, as ``RELOADING=1`` wants it (systemd >= 253)."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def _one_line(text: str) -> str:
    """A field value must not contain newlines: they would start new fields."""
    return " ".join(text.splitlines())


class Notifier:
    """Sends readiness, status, watchdog and lifecycle messages to systemd.

    The environment is read once, at construction (pass ``environ`` in tests);
    the socket is opened per message, so the object is thread-safe and stays
    valid across ``fork``.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address = self._parse_address(env.get("NOTIFY_SOCKET", ""))
        self._watchdog_usec = self._parse_watchdog_usec(env.get("WATCHDOG_USEC", ""))
        self._watchdog_pid = self._parse_pid(env.get("WATCHDOG_PID", ""))

    @staticmethod
    def _parse_address(value: str) -> str | None:
        if value.startswith("/"):
            return value
        if value.startswith("@") and len(value) > 1:
            return "\0" + value[1:]
        if value:
            # e.g. vsock:CID:PORT (VMs); not needed for a node-local agent
            _log.debug("unsupported NOTIFY_SOCKET; notifications disabled", address=value)
        return None

    @staticmethod
    def _parse_watchdog_usec(value: str) -> int | None:
        try:
            usec = int(value)
        except ValueError:
            return None
        return usec if usec > 0 else None

    @staticmethod
    def _parse_pid(value: str) -> int | None:
        try:
            return int(value)
        except ValueError:
            return None

    @property
    def enabled(self) -> bool:
        """True when running under systemd with a usable ``NOTIFY_SOCKET``."""
        return self._address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between ``WATCHDOG=1`` pings (half of ``WatchdogSec=``), or None if off.

        None also when ``WATCHDOG_PID`` names another process (the watchdog is
        meant for that one) or notifications are disabled.
        """
        if self._watchdog_usec is None or self._address is None:
            return None
        if self._watchdog_pid is not None and self._watchdog_pid != os.getpid():
            return None
        return self._watchdog_usec / 1_000_000 / 2

    def notify(self, *fields: str) -> bool:
        """Send ``KEY=VALUE`` fields in one datagram; True if it was sent."""
        if self._address is None or not fields:
            return False
        payload = "\n".join(fields).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(payload, self._address)
        except OSError as exc:
            _log.debug("sd_notify failed", message=fields[0], error=str(exc))
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``: startup finished (endpoint bound, scheduler running) or reload done."""
        fields = ["READY=1"]
        if status is not None:
            fields.append(f"STATUS={_one_line(status)}")
        return self.notify(*fields)

    def status(self, text: str) -> bool:
        """``STATUS=``: one line shown by ``systemctl status``."""
        return self.notify(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the daemon is alive; send only after a liveness check passed."""
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: shutdown has begun."""
        fields = ["STOPPING=1"]
        if status is not None:
            fields.append(f"STATUS={_one_line(status)}")
        return self.notify(*fields)

    def reloading(self) -> bool:
        """``RELOADING=1`` with ``MONOTONIC_USEC`` (mandatory on systemd >= 257).

        Send ``ready()`` again when the reload is done (or was refused).
        """
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={_monotonic_usec()}")
