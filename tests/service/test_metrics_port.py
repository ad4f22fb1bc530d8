"""The metrics/docs HTTP server under hostile use (issue 12): idle connections cannot pin threads forever, the
number of threads is bounded, and it binds to loopback unless told otherwise."""

from __future__ import annotations

import socket
import time
import urllib.request

import pytest
from prometheus_client import CollectorRegistry

from orchestrator.settings import Settings
from service.metrics import MetricsServer

pytestmark = pytest.mark.timeout(60)


def wait_closed(connection: socket.socket, deadline: float) -> bool:
    connection.settimeout(max(0.1, deadline - time.monotonic()))
    try:
        return connection.recv(1) == b""
    except (TimeoutError, ConnectionResetError):
        return False


def scrape(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return int(response.status)


def test_idle_connections_are_closed_and_their_threads_freed() -> None:
    server = MetricsServer(CollectorRegistry(), "127.0.0.1", 0, idle_timeout=0.5, max_connections=4)
    server.start()
    try:
        idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(4)]
        # The four slots are taken: a fifth connection is closed at once rather than given a fifth thread.
        extra = socket.create_connection(("127.0.0.1", server.port))
        assert wait_closed(extra, time.monotonic() + 5)
        # The idle ones are closed by the server after the idle timeout...
        assert all(wait_closed(c, time.monotonic() + 5) for c in idle)
        # ...and a scrape is served again.
        assert scrape(server.port) == 200
        for connection in [*idle, extra]:
            connection.close()
    finally:
        server.stop()


def test_the_metrics_server_binds_to_loopback_unless_told_otherwise() -> None:
    settings = Settings(host="0.0.0.0", auth={"enabled": False})  # type: ignore[arg-type]
    assert settings.metrics_host == "127.0.0.1"
    server = MetricsServer(CollectorRegistry(), settings.metrics_host, 0)
    server.start()
    try:
        assert server._server.server_address[0] == "127.0.0.1"
    finally:
        server.stop()
