"""The metrics endpoint: ``/metrics``, ``/healthz`` and a landing page at ``/``.

Built on prometheus_client's thread-per-request WSGI server. Two details
differ from ``prometheus_client.start_http_server``:

* TLS is negotiated in the request's own thread (the listening socket is not
  wrapped), so a client that connects and never completes the handshake
  cannot stall the accept loop and every other scrape with it;
* every connection gets a socket timeout, and nothing is printed per request
  or per failed connection (failures are logged at debug level).
"""

from __future__ import annotations

import errno
import html
import json
import socket
import ssl
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from prometheus_client import make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

from .. import __version__
from ..config import MetricsConfig, TlsConfig
from ..log import get_logger

LOG = get_logger(__name__)

Health = Callable[[], tuple[bool, dict[str, Any]]]

#: Seconds a connection may stay silent (handshake, request, reading the reply).
DEFAULT_REQUEST_TIMEOUT = 10.0


class MetricsServerError(Exception):
    """The endpoint cannot start: address in use, bad TLS files..."""


def make_ssl_context(tls: TlsConfig) -> ssl.SSLContext:
    """A server context (TLS 1.2+) for ``tls``; client certificates are
    verified against ``client_ca_file`` when given, and required when
    ``client_auth_required``."""
    if tls.client_auth_required and not tls.client_ca_file:
        raise MetricsServerError("metrics.tls.client_auth_required needs client_ca_file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise MetricsServerError(
            f"cannot load metrics.tls.cert_file {tls.cert_file!r}"
            f" with key_file {tls.key_file!r}: {exc}"
        ) from exc
    if tls.client_ca_file:
        try:
            context.load_verify_locations(cafile=tls.client_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise MetricsServerError(
                f"cannot load metrics.tls.client_ca_file {tls.client_ca_file!r}: {exc}"
            ) from exc
        context.verify_mode = ssl.CERT_REQUIRED if tls.client_auth_required else ssl.CERT_OPTIONAL
    return context


class _QuietHandler(WSGIRequestHandler):
    """One request per connection, with a timeout, logged only at debug level."""

    server: _Server

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.request_timeout)

    def log_message(self, format: str, *args: Any) -> None:
        LOG.debug("http request", client=self.address_string(), request=format % args)


class _Server(ThreadingWSGIServer):
    """prometheus_client's threading WSGI server with per-connection TLS."""

    def __init__(
        self,
        address: tuple[Any, ...],
        family: socket.AddressFamily,
        ssl_context: ssl.SSLContext | None,
        request_timeout: float,
    ) -> None:
        self.address_family = family
        self.ssl_context = ssl_context
        self.request_timeout = request_timeout
        super().__init__(address, _QuietHandler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = self.socket.accept()
        if self.ssl_context is not None:
            # the handshake happens on first read, in the request's thread
            sock = self.ssl_context.wrap_socket(
                sock, server_side=True, do_handshake_on_connect=False
            )
        return sock, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        LOG.debug("http request failed", client=str(client_address), exc_info=True)


def _landing_page(scheme: str) -> bytes:
    version = html.escape(__version__)
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        "<title>glance-cache-agent</title></head>\n<body>\n"
        f"<h1>glance-cache-agent {version}</h1>\n"
        "<p>Maintenance agent and Prometheus exporter for Glance's image cache.</p>\n"
        '<ul>\n<li><a href="/metrics">/metrics</a>: Prometheus metrics</li>\n'
        '<li><a href="/healthz">/healthz</a>: health (200 healthy, 503 not)</li>\n</ul>\n'
        f"<p>Served over {html.escape(scheme)}.</p>\n</body></html>\n"
    ).encode()


def make_app(registry: Collector, health: Health, scheme: str = "http") -> WSGIApplication:
    """The endpoint's WSGI application (routing only; usable without a server)."""
    metrics_app = make_wsgi_app(registry)
    landing = _landing_page(scheme)

    def respond(
        start_response: StartResponse, status: str, content_type: str, body: bytes, method: str
    ) -> Iterable[bytes]:
        headers = [("Content-Type", content_type), ("Content-Length", str(len(body)))]
        if status.startswith("405"):
            headers.append(("Allow", "GET, HEAD"))
        start_response(status, headers)
        return [b"" if method == "HEAD" else body]

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "GET")
        if path == "/metrics":
            result: Iterable[bytes] = metrics_app(environ, start_response)
            return result
        if path not in ("/", "/healthz"):
            return respond(start_response, "404 Not Found", "text/plain", b"not found\n", method)
        if method not in ("GET", "HEAD"):
            body = b"method not allowed\n"
            return respond(start_response, "405 Method Not Allowed", "text/plain", body, method)
        if path == "/":
            return respond(start_response, "200 OK", "text/html; charset=utf-8", landing, method)
        status, document = _health_document(health)
        body = (json.dumps(document, sort_keys=True) + "\n").encode()
        return respond(start_response, status, "application/json", body, method)

    return app


def _health_document(health: Health) -> tuple[str, dict[str, Any]]:
    try:
        ok, details = health()
    except Exception as exc:  # noqa: BLE001 - a broken check is reported, not raised
        LOG.warning("health check failed", error=str(exc), exc_info=True)
        return "503 Service Unavailable", {
            "status": "unhealthy",
            "reason": f"health check failed: {exc}",
        }
    document = {"status": "ok" if ok else "unhealthy", **details}
    return ("200 OK" if ok else "503 Service Unavailable"), document


class MetricsServer:
    """Serves ``/metrics``, ``/healthz`` and ``/`` from a daemon thread.

    ``health()`` returns ``(ok, details)``: ``/healthz`` answers 200 with
    ``{"status": "ok", **details}`` or 503 with ``{"status": "unhealthy",
    **details}`` (put the reason in ``details``).
    """

    def __init__(
        self,
        config: MetricsConfig,
        registry: Collector,
        health: Health,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    ) -> None:
        self.config = config
        self.registry = registry
        self.health = health
        self.request_timeout = request_timeout
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.config.tls else "http"

    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(host, port)``; the real port when configured as 0."""
        if self._server is None:
            raise RuntimeError("the metrics server is not started")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        """Base URL of the running endpoint, e.g. ``http://127.0.0.1:9742``."""
        host, port = self.address
        return f"{self.scheme}://{f'[{host}]' if ':' in host else host}:{port}"

    def start(self) -> None:
        """Bind and serve in a daemon thread; raise MetricsServerError on failure."""
        if self._server is not None:
            raise RuntimeError("the metrics server is already started")
        context = make_ssl_context(self.config.tls) if self.config.tls else None
        server = self._bind(context)
        server.set_app(make_app(self.registry, self.health, self.scheme))
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True
        )
        thread.name = "metrics-http"
        thread.start()
        self._server, self._thread = server, thread
        LOG.info("serving metrics", url=f"{self.url}/metrics")

    def _bind(self, context: ssl.SSLContext | None) -> _Server:
        listen = self.config.listen
        try:
            infos = socket.getaddrinfo(
                self.config.host, self.config.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
            family, _, _, _, sockaddr = infos[0]
            return _Server(sockaddr, family, context, self.request_timeout)
        except socket.gaierror as exc:
            raise MetricsServerError(f"cannot listen on {listen}: {exc.strerror}") from exc
        except OSError as exc:
            reason = exc.strerror or str(exc)
            if exc.errno == errno.EADDRINUSE:
                reason = "address already in use (is another agent or exporter running?)"
            raise MetricsServerError(f"cannot listen on {listen}: {reason}") from exc

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, close the socket and join the thread (idempotent)."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout)

    def __enter__(self) -> MetricsServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


__all__ = ["MetricsServer", "MetricsServerError", "make_app", "make_ssl_context"]
