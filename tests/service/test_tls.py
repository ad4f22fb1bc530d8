"""TLS and mutual TLS on the gRPC port, with a throwaway CA made here: the real App, a real Envoy presenting its
own client certificate upstream, real gRPC clients with and without certificates, and the start-up checks."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from pydantic import ValidationError

from service.app import App
from service.gen.orchestrator.v1 import enums_pb2 as enums
from service.gen.orchestrator.v1 import orchestrator_service_pb2 as pb
from service.gen.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc
from tests.certs import Issued, TestCA
from tests.conftest import make_settings
from tests.runners import ScriptedRunner
from tests.service.test_grpc_api import wait_for

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(60)


@dataclass
class Pki:
    ca: TestCA
    server: Issued
    envoy: Issued
    client: Issued
    stranger: Issued  # a client certificate from another CA

    def tls(self, *, mutual: bool = True, **overrides: Any) -> dict[str, Any]:
        values: dict[str, Any] = {
            "cert_file": self.server.cert_file,
            "key_file": self.server.key_file,
            "ca_file": self.ca.cert_file,
        }
        if mutual:
            values |= {
                "client_ca_file": self.ca.cert_file,
                "envoy_cert_file": self.envoy.cert_file,
                "envoy_key_file": self.envoy.key_file,
            }
        return values | overrides


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    ca = TestCA(tmp_path_factory.mktemp("pki"))
    other = TestCA(tmp_path_factory.mktemp("other-pki"), name="other-ca")
    return Pki(ca, ca.server(), ca.client("envoy"), ca.client("client"), other.client("stranger"))


@pytest.fixture
async def start(tmp_path: Path, runner: ScriptedRunner) -> AsyncIterator[Any]:
    apps: list[App] = []

    async def starter(tls: dict[str, Any], **overrides: Any) -> App:
        application = App(make_settings(tmp_path / f"data{len(apps)}", tls=tls, **overrides), runner=runner)
        apps.append(application)
        await application.start()
        return application

    try:
        yield starter
    finally:
        for application in apps:
            await application.stop(grace=0.5)


def secure(app: App, pki: Pki, client: Issued | None) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.ca.cert_pem,
        private_key=client.key_pem if client else None,
        certificate_chain=client.cert_pem if client else None,
    )
    return grpc.aio.secure_channel(f"127.0.0.1:{app.grpc_port}", credentials)


async def types_over(channel: grpc.aio.Channel) -> list[str]:
    async with channel:
        response = await pb_grpc.OrchestratorServiceStub(channel).ListWorkflowTypes(
            pb.ListWorkflowTypesRequest(), timeout=10
        )
    return [t.name for t in response.workflow_types]


async def refused(channel: grpc.aio.Channel) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async with channel:
            await pb_grpc.OrchestratorServiceStub(channel).Health(pb.HealthRequest(), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, caught.value
    return caught.value


async def envoy_sees_upstream_healthy(app: App) -> None:
    sidecar: Any = app._envoy  # the running EnvoySidecar

    async def healthy() -> bool:
        status, body = await sidecar.admin_get("/clusters")
        return status == 200 and any(
            line.startswith("orchestrator_grpc::") and line.endswith("::health_flags::healthy")
            for line in body.decode().splitlines()
        )

    await wait_for(healthy, timeout=15)


# Serving ----------------------------------------------------------------------------------------------------


@pytest.mark.envoy
async def test_mutual_tls_grpc_and_rest_through_envoy(start: Any, pki: Pki) -> None:
    app = await start(pki.tls(), envoy=True)
    assert "full" in await types_over(secure(app, pki, pki.client))

    # Refused at the handshake, before any RPC (not even Health) is reached.
    await refused(secure(app, pki, None))  # TLS, but no client certificate
    await refused(secure(app, pki, pki.stranger))  # a certificate another CA issued
    await refused(grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}"))  # plaintext to the TLS port

    # Envoy's gRPC health check passes over mutual TLS, and REST reaches the service through it.
    await envoy_sees_upstream_healthy(app)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.http_port}", timeout=20) as http:
        types = await http.get("/workflow-types")
        assert types.status_code == 200, types.text
        submitted = await http.post(
            "/execute-workflow", json={"requirements": "a URL shortener", "workflow_type": "design"}
        )
        assert submitted.status_code == 200, submitted.text
        session_id = submitted.json()["session_id"]
        async with http.stream("GET", f"/workflow-events/{session_id}") as stream:
            lines = [line async for line in stream.aiter_lines() if line.strip()]
        assert '"workflow_completed"' in lines[-1]  # the live endpoint's REST-face JSON
        health = await http.get("/health")
        assert health.status_code == 200 and health.json()["status"] == "serving"


@pytest.mark.envoy
async def test_tls_without_a_client_ca_takes_any_tls_client(start: Any, pki: Pki) -> None:
    app = await start(pki.tls(mutual=False), envoy=True)
    assert "full" in await types_over(secure(app, pki, None))
    await refused(grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}"))
    await envoy_sees_upstream_healthy(app)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.http_port}", timeout=20) as http:
        assert (await http.get("/workflow-types")).status_code == 200


async def test_a_client_that_does_not_trust_the_servers_ca_is_refused(start: Any, pki: Pki, tmp_path: Path) -> None:
    app = await start(pki.tls())
    other = TestCA(tmp_path / "elsewhere", name="elsewhere-ca")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=other.ca.cert_pem, private_key=pki.client.key_pem, certificate_chain=pki.client.cert_pem
    )
    await refused(grpc.aio.secure_channel(f"127.0.0.1:{app.grpc_port}", credentials))


async def test_workflows_run_over_mutual_tls(start: Any, pki: Pki) -> None:
    app = await start(pki.tls())
    async with secure(app, pki, pki.client) as channel:
        stub = pb_grpc.OrchestratorServiceStub(channel)
        submitted = await stub.ExecuteWorkflow(
            pb.ExecuteWorkflowRequest(requirements="a todo API", workflow_type="design")
        )
        events = [e async for e in stub.WatchWorkflow(pb.WatchWorkflowRequest(session_id=submitted.session_id))]
    assert events[-1].type == enums.EVENT_TYPE_WORKFLOW_COMPLETED


# Start-up checks --------------------------------------------------------------------------------------------


def broken_files(pki: Pki, tmp_path: Path) -> dict[str, Path]:
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        pki.server.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    expired = pki.ca.issue("expired", dns=("localhost",), expired=True)
    other_ca = TestCA(tmp_path / "other", name="another-ca")
    only_ip = pki.ca.issue("only-ip", ips=("127.0.0.1",))
    return {
        "encrypted": encrypted,
        "garbage": garbage,
        "expired_cert": expired.cert_file,
        "expired_key": expired.key_file,
        "other_ca": other_ca.cert_file,
        "only_ip_cert": only_ip.cert_file,
        "only_ip_key": only_ip.key_file,
        "missing": tmp_path / "missing.pem",
    }


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("cert without key", "set cert_file and key_file together"),
        ("missing cert", "cert_file: cannot read"),
        ("not a certificate", "cert_file: "),
        ("key of another certificate", "is not the key of the first certificate"),
        ("encrypted key", "encrypted private key"),
        ("expired certificate", "expired on"),
        ("client CA not a certificate", "client_ca_file: "),
        ("ca_file did not issue the server's certificate", "was not issued by a CA in it"),
        ("envoy certificate from another CA", "so the service would refuse the Envoy sidecar"),
        ("client CA without TLS", "need TLS on"),
        ("sidecar without ca_file", "ORCHESTRATOR_TLS__CA_FILE"),
        ("mutual TLS sidecar without a certificate", "ORCHESTRATOR_TLS__ENVOY_CERT_FILE"),
        ("server name not in the certificate", "names only 127.0.0.1"),
    ],
)
def test_bad_tls_settings_stop_the_start_with_a_clear_error(pki: Pki, tmp_path: Path, case: str, message: str) -> None:
    files = broken_files(pki, tmp_path)
    other_envoy = TestCA(tmp_path / "o2", name="o2").client("other-envoy")
    tls: dict[str, Any] = {
        "cert without key": {"cert_file": pki.server.cert_file},
        "missing cert": pki.tls(cert_file=files["missing"]),
        "not a certificate": pki.tls(cert_file=files["garbage"]),
        "key of another certificate": pki.tls(key_file=pki.client.key_file),
        "encrypted key": pki.tls(key_file=files["encrypted"]),
        "expired certificate": pki.tls(cert_file=files["expired_cert"], key_file=files["expired_key"]),
        "client CA not a certificate": pki.tls(client_ca_file=files["garbage"]),
        "ca_file did not issue the server's certificate": pki.tls(ca_file=files["other_ca"]),
        "envoy certificate from another CA": pki.tls(
            envoy_cert_file=other_envoy.cert_file, envoy_key_file=other_envoy.key_file
        ),
        "client CA without TLS": {"client_ca_file": pki.ca.cert_file},
        "sidecar without ca_file": pki.tls(mutual=False, ca_file=None),
        "mutual TLS sidecar without a certificate": pki.tls(envoy_cert_file=None, envoy_key_file=None),
        "server name not in the certificate": pki.tls(cert_file=files["only_ip_cert"], key_file=files["only_ip_key"]),
    }[case]
    with pytest.raises(ValidationError) as caught:
        make_settings(tmp_path / "data", tls=tls, envoy=True)
    assert message in str(caught.value), str(caught.value)


def test_tls_settings_without_the_sidecar_need_no_ca_file(pki: Pki, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, tls=pki.tls(ca_file=None, envoy_cert_file=None, envoy_key_file=None))
    assert settings.tls.enabled and settings.tls.mutual


async def test_serve_refuses_to_start_with_a_bad_tls_file(pki: Pki, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    env |= {
        "ORCHESTRATOR_AUTH__ENABLED": "false",
        "ORCHESTRATOR_TLS__CERT_FILE": str(pki.server.cert_file),
        "ORCHESTRATOR_TLS__KEY_FILE": str(pki.client.key_file),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service", "serve", "--no-envoy", "--data-dir", str(tmp_path / "data"),
        "--grpc-port", "0", "--metrics-port", "0",
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    text = err.decode()
    assert "invalid setting tls" in text and "is not the key of the first certificate" in text
    assert "BEGIN" not in text  # no key material in the message
