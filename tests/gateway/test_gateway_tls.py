"""Envoy's upstream TLS to a real grpc.aio server that requires client certificates: the sidecar presents its own,
checks the server's certificate against the CA and the expected name, and health-checks over the same TLS."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from gateway.config import UPSTREAM_HEALTH_NAME
from gateway.sidecar import EnvoySidecar
from service.gen.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc
from tests.certs import TestCA
from tests.gateway.gateway_fakes import FakeOrchestrator, Upstream, gateway_options, wait_upstream_healthy

pytestmark = [pytest.mark.envoy, pytest.mark.timeout(60)]


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path / "pki")


@pytest.fixture
async def tls_upstream(ca: TestCA, metrics_port: int) -> AsyncIterator[Upstream]:
    """The fake service on mutual TLS: only clients with a certificate from `ca` get through."""
    server_cert = ca.server()
    server = grpc.aio.server()
    servicer = FakeOrchestrator()
    pb_grpc.add_OrchestratorServiceServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    # "" for readiness; the sidecar checks its upstream by the liveness name.
    for name in ("", UPSTREAM_HEALTH_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    credentials = grpc.ssl_server_credentials(
        [(server_cert.key_pem, server_cert.cert_pem)], root_certificates=ca.ca.cert_pem, require_client_auth=True
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    yield Upstream(servicer, port, metrics_port)
    await server.stop(grace=None)


def tls_options(upstream: Upstream, ca: TestCA, **overrides: Any) -> Any:
    envoy_cert = ca.client("envoy")
    values: dict[str, Any] = {
        "upstream_ca_file": ca.cert_file,
        "upstream_cert_file": envoy_cert.cert_file,
        "upstream_key_file": envoy_cert.key_file,
    }
    return gateway_options(upstream, **(values | overrides))


async def test_envoy_presents_its_certificate_and_health_checks_over_tls(
    tls_upstream: Upstream, ca: TestCA, tmp_path: Path
) -> None:
    async with EnvoySidecar(tls_options(tls_upstream, ca), work_dir=tmp_path / "envoy") as envoy:
        await wait_upstream_healthy(envoy)
        async with httpx.AsyncClient(base_url=envoy.url, timeout=10) as http:
            response = await http.get("/workflow-status/abc")
        assert response.status_code == 200, response.text
        assert response.json()["session_id"] == "abc"


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"upstream_cert_file": None, "upstream_key_file": None}, id="no client certificate"),
        pytest.param({"upstream_server_name": "orchestrator.internal"}, id="name not in the server certificate"),
        pytest.param({"upstream_ca_file": "other"}, id="server certificate from an untrusted CA"),
    ],
)
async def test_envoy_refuses_an_upstream_it_cannot_verify_or_that_refuses_it(
    tls_upstream: Upstream, ca: TestCA, tmp_path: Path, overrides: dict[str, Any]
) -> None:
    if overrides.get("upstream_ca_file") == "other":
        overrides["upstream_ca_file"] = TestCA(tmp_path / "other", name="other-ca").cert_file
    async with EnvoySidecar(tls_options(tls_upstream, ca, **overrides), work_dir=tmp_path / "envoy") as envoy:
        async with httpx.AsyncClient(base_url=envoy.url, timeout=10) as http:
            response = await http.get("/workflow-status/abc")
        # No healthy upstream: Envoy's own 503, as JSON, and nothing reached the service.
        assert response.status_code == 503, response.text
        assert response.json()["error"] == "UNAVAILABLE"
        _, body = await envoy.admin_get("/clusters")
        flags = [line for line in body.decode().splitlines() if line.startswith("orchestrator_grpc::127.0.0.1:")]
        assert flags and not [line for line in flags if line.endswith("::health_flags::healthy")], flags
    assert tls_upstream.servicer.seen.requests == []
