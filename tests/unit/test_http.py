"""The metrics endpoint: routes, health, TLS and client certificates, slow
clients, and ``promtool check metrics`` on a live scrape (issue 3 section 4)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Gauge

from glance_cache_agent.config import TASK_NAMES, MetricsConfig, TlsConfig
from glance_cache_agent.driver import Driver
from glance_cache_agent.exporter.endpoint import MetricsServer, MetricsServerError
from glance_cache_agent.exporter.metrics import AgentMetrics, CacheStateCollector, build_registry
from tests.helpers.populated_cache import MAX_SIZE, populate_cache

OPENSSL = shutil.which("openssl")
PROMTOOL = shutil.which("promtool")


class Health:
    """A health check the test can flip."""

    def __init__(self) -> None:
        self.ok = True
        self.details: dict[str, Any] = {"scheduler": "running"}

    def __call__(self) -> tuple[bool, dict[str, Any]]:
        return self.ok, dict(self.details)


def small_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Gauge("glance_cache_test_value", "A test value.", registry=registry).set(42)
    return registry


@pytest.fixture
def health() -> Health:
    return Health()


@pytest.fixture
def server(health: Health) -> Iterator[MetricsServer]:
    with MetricsServer(MetricsConfig(port=0), small_registry(), health) as running:
        yield running


def get(url: str, **kwargs: Any) -> tuple[int, str, str]:
    """(status, content type, body) of a GET; HTTP errors are answers too."""
    try:
        with urllib.request.urlopen(url, timeout=5, **kwargs) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers["Content-Type"], exc.read().decode()


# ------------------------------------------------------------------ routes


def test_metrics_route(server: MetricsServer) -> None:
    status, content_type, body = get(server.url + "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain")
    assert "glance_cache_test_value 42.0" in body


def test_healthz_200_then_503_with_reason(server: MetricsServer, health: Health) -> None:
    status, content_type, body = get(server.url + "/healthz")
    assert (status, content_type) == (200, "application/json")
    assert json.loads(body) == {"status": "ok", "scheduler": "running"}

    health.ok = False
    health.details = {"reason": "task prune failed its last run: OSError: boom"}
    status, content_type, body = get(server.url + "/healthz")
    assert (status, content_type) == (503, "application/json")
    assert json.loads(body) == {
        "status": "unhealthy",
        "reason": "task prune failed its last run: OSError: boom",
    }


def test_healthz_503_when_the_check_itself_raises(health: Health) -> None:
    def broken() -> tuple[bool, dict[str, Any]]:
        raise RuntimeError("scheduler gone")

    with MetricsServer(MetricsConfig(port=0), small_registry(), broken) as server:
        status, _, body = get(server.url + "/healthz")
    assert status == 503
    assert json.loads(body) == {
        "status": "unhealthy",
        "reason": "health check failed: scheduler gone",
    }


def test_landing_page_links_both_endpoints(server: MetricsServer) -> None:
    status, content_type, body = get(server.url + "/")
    assert (status, content_type) == (200, "text/html; charset=utf-8")
    assert '<a href="/metrics">' in body and '<a href="/healthz">' in body


@pytest.mark.parametrize("path", ["/nope", "/metrics/", "/healthz/x", "/index.html"])
def test_unknown_paths_are_404(server: MetricsServer, path: str) -> None:
    assert get(server.url + path)[0] == 404


def test_wrong_method_is_405(server: MetricsServer) -> None:
    for path in ("/healthz", "/", "/metrics"):
        request = urllib.request.Request(server.url + path, data=b"x", method="POST")
        assert get(request)[0] == 405  # type: ignore[arg-type]


# ------------------------------------------------------------ start / stop


def test_port_zero_reports_the_real_port_and_stop_frees_it(health: Health) -> None:
    server = MetricsServer(MetricsConfig(port=0), small_registry(), health)
    server.start()
    host, port = server.address
    assert host == "127.0.0.1" and port > 0
    assert server.url == f"http://127.0.0.1:{port}"
    server.stop()
    server.stop()  # idempotent
    with socket.create_server(("127.0.0.1", port)):
        pass  # the port is free again


def test_port_in_use_is_a_clear_error(health: Health) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        server = MetricsServer(MetricsConfig(port=port), small_registry(), health)
        with pytest.raises(MetricsServerError, match=f"127.0.0.1:{port}: address already in use"):
            server.start()


def test_silent_client_does_not_block_other_scrapes(health: Health) -> None:
    config = MetricsConfig(port=0)
    with (
        MetricsServer(config, small_registry(), health, request_timeout=1.0) as server,
        socket.create_connection(server.address) as silent,
    ):
        silent.sendall(b"GET /metr")  # and then nothing
        assert get(server.url + "/metrics")[0] == 200
        silent.settimeout(5)
        assert silent.recv(1024) == b""  # closed by the server's timeout


# --------------------------------------------------------------------- TLS


@dataclass(frozen=True)
class Certs:
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str


def self_signed(directory: Path, name: str) -> tuple[str, str]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        [
            str(OPENSSL),
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            f"/CN={name}",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return str(cert), str(key)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    if OPENSSL is None:
        pytest.skip("the openssl CLI is not installed")
    directory = tmp_path_factory.mktemp("certs")
    return Certs(*self_signed(directory, "127.0.0.1"), *self_signed(directory, "prometheus"))


def client_context(certs: Certs, with_cert: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=certs.server_cert)
    if with_cert:
        context.load_cert_chain(certs.client_cert, certs.client_key)
    return context


def test_tls(certs: Certs, health: Health) -> None:
    config = MetricsConfig(port=0, tls=TlsConfig(certs.server_cert, certs.server_key))
    with MetricsServer(config, small_registry(), health) as server:
        assert server.url.startswith("https://127.0.0.1:")
        status, _, body = get(server.url + "/metrics", context=client_context(certs, False))
        assert status == 200 and "glance_cache_test_value 42.0" in body
        with pytest.raises(OSError):  # plain HTTP gets no answer
            get(server.url.replace("https", "http") + "/metrics")


def test_client_certificate_required(certs: Certs, health: Health) -> None:
    tls = TlsConfig(
        certs.server_cert,
        certs.server_key,
        client_ca_file=certs.client_cert,
        client_auth_required=True,
    )
    with MetricsServer(MetricsConfig(port=0, tls=tls), small_registry(), health) as server:
        assert get(server.url + "/metrics", context=client_context(certs, True))[0] == 200
        with pytest.raises(OSError):  # TLS alert or reset, depending on the TLS version
            get(server.url + "/metrics", context=client_context(certs, False))
        # a refused client does not take the server down
        assert get(server.url + "/healthz", context=client_context(certs, True))[0] == 200


def test_silent_client_does_not_block_the_tls_handshake_of_others(
    certs: Certs, health: Health
) -> None:
    config = MetricsConfig(port=0, tls=TlsConfig(certs.server_cert, certs.server_key))
    with (
        MetricsServer(config, small_registry(), health, request_timeout=1.0) as server,
        socket.create_connection(server.address),  # never sends a ClientHello
    ):
        status, _, _ = get(server.url + "/metrics", context=client_context(certs, False))
        assert status == 200


def test_tls_configuration_errors_name_the_file(certs: Certs, health: Health) -> None:
    missing = TlsConfig("/nonexistent/cert.pem", certs.server_key)
    with pytest.raises(MetricsServerError, match="/nonexistent/cert.pem"):
        MetricsServer(MetricsConfig(port=0, tls=missing), small_registry(), health).start()
    no_ca = TlsConfig(certs.server_cert, certs.server_key, client_auth_required=True)
    with pytest.raises(MetricsServerError, match="client_ca_file"):
        MetricsServer(MetricsConfig(port=0, tls=no_ca), small_registry(), health).start()


# ----------------------------------------------------------------- promtool


def test_promtool_check_metrics_on_a_live_scrape(driver: Driver, health: Health) -> None:
    if PROMTOOL is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is required in CI (Debian package 'prometheus')")
        pytest.skip("promtool is not installed (Debian package 'prometheus')")
    populate_cache(driver)
    agent = AgentMetrics(TASK_NAMES)
    config = MetricsConfig(port=0)
    collector = CacheStateCollector(lambda: driver, MAX_SIZE, config)
    collector.refresh()
    with MetricsServer(config, build_registry(agent, collector), health) as server:
        status, _, body = get(server.url + "/metrics")
    assert status == 200 and "glance_cache_image_hits_total{" in body
    check = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=body, capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 0, check.stdout + check.stderr
