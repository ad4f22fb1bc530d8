"""Fixtures: a real grpc.aio server (fake servicer + grpc.health.v1), a metrics HTTP server and a real Envoy."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from http.server import ThreadingHTTPServer

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from gateway.config import UPSTREAM_HEALTH_NAME
from gateway.sidecar import EnvoySidecar
from service.gen.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc
from tests.gateway.gateway_fakes import (
    FakeOrchestrator,
    MetricsHandler,
    Upstream,
    gateway_options,
    wait_upstream_healthy,
)


@pytest.fixture(scope="package")
def metrics_port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), MetricsHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def upstream(metrics_port: int) -> AsyncIterator[Upstream]:
    servicer = FakeOrchestrator()
    server = grpc.aio.server()
    pb_grpc.add_OrchestratorServiceServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    # "" for readiness; the sidecar checks its upstream by the liveness name.
    for name in ("", UPSTREAM_HEALTH_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield Upstream(servicer, port, metrics_port)
    await server.stop(grace=None)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def envoy(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EnvoySidecar]:
    sidecar = EnvoySidecar(gateway_options(upstream), work_dir=tmp_path_factory.mktemp("envoy"))
    await sidecar.start()
    try:
        await wait_upstream_healthy(sidecar)
        yield sidecar
    finally:
        await sidecar.stop()
