"""Authentication, tenants, scopes and limits over real gRPC on loopback, with real signed tokens: HS256 with a
shared secret, RS256 from a JWKS file and ES256 from a JWKS served over a real local HTTP server."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import sys
import threading
import time
from collections.abc import AsyncIterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from pydantic import ValidationError

from orchestrator.errors import PermissionDenied, ResourceExhausted, Unauthenticated, Unavailable
from service import auth, logs
from service.app import App
from service.errors import CODES
from service.gen.orchestrator.v1 import enums_pb2 as enums
from service.gen.orchestrator.v1 import orchestrator_service_pb2 as pb
from service.gen.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc
from service.limits import TokenBuckets
from tests.conftest import make_settings
from tests.runners import ScriptedRunner
from tests.service.test_grpc_api import wait_for

ROOT = Path(__file__).resolve().parents[2]
ISSUER = "https://issuer.test"
AUDIENCE = "orchestrator"
SECRET = secrets.token_hex(32)
SERVICE = "orchestrator.v1.OrchestratorService"
NOWHERE = "00000000-0000-0000-0000-000000000000"
BOTH = "workflows:read workflows:write"
pytestmark = pytest.mark.timeout(60)

Metadata = tuple[tuple[str, str], ...]


# Keys and tokens ------------------------------------------------------------------------------------------------


class Keys:
    def __init__(self) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.other_rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwks(self, *extra: dict[str, Any]) -> dict[str, Any]:
        rsa_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.rsa.public_key()))
        ec_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.ec.public_key()))
        return {
            "keys": [
                {**rsa_jwk, "kid": "rsa-1", "use": "sig", "alg": "RS256"},
                {**ec_jwk, "kid": "ec-1", "use": "sig"},
                *extra,
            ]
        }


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys()


def claims(tenant: str = "tenant-a", scope: str | list[str] | None = BOTH, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    values: dict[str, Any] = {"sub": tenant, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 300}
    if scope is not None:
        values["scope"] = scope
    values.update(overrides)
    return {k: v for k, v in values.items() if v is not None}


def hs256(**overrides: Any) -> str:
    return jwt.encode(claims(**overrides), SECRET, algorithm="HS256")


def rs256(keys: Keys, key: Any = None, kid: str = "rsa-1", **overrides: Any) -> str:
    return jwt.encode(claims(**overrides), key or keys.rsa, algorithm="RS256", headers={"kid": kid})


def es256(keys: Keys, kid: str = "ec-1", key: Any = None, **overrides: Any) -> str:
    return jwt.encode(claims(**overrides), key or keys.ec, algorithm="ES256", headers={"kid": kid})


def bearer(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


# Servers --------------------------------------------------------------------------------------------------------


class JwksServer:
    """A real HTTP server on 127.0.0.1 serving a JWKS document, counting the fetches."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.fetches = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.fetches += 1
                body = json.dumps(outer.document).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/.well-known/jwks.json"

    def __enter__(self) -> JwksServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def jwks_file(tmp_path: Path, keys: Keys) -> Path:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(keys.jwks()))
    return path


class Starter:
    """Starts the real service with auth on (HS256 by default) and the given overrides; one per test."""

    def __init__(self, data_dir: Path, runner: ScriptedRunner) -> None:
        self._data_dir = data_dir
        self._runner = runner
        self._channel: grpc.aio.Channel | None = None
        self.app: App | None = None

    async def __call__(
        self, auth_overrides: dict[str, Any] | None = None, *, offline_model: bool = False, **overrides: Any
    ) -> pb_grpc.OrchestratorServiceStub:
        """`offline_model` runs the real agents on the built-in offline model instead of the scripted runner."""
        assert self.app is None, "one service per test"
        auth_settings: dict[str, Any] = {
            "enabled": True,
            "hs256_secret": SECRET,
            "issuer": ISSUER,
            "audience": AUDIENCE,
            **(auth_overrides or {}),
        }
        runner = None if offline_model else self._runner
        self.app = App(make_settings(self._data_dir, auth=auth_settings, **overrides), runner=runner)
        await self.app.start()
        self._channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.app.grpc_port}")
        return pb_grpc.OrchestratorServiceStub(self._channel)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
        if self.app is not None:
            await self.app.stop(grace=0.5)


@pytest.fixture
async def start(tmp_path: Path, runner: ScriptedRunner) -> AsyncIterator[Starter]:
    starter = Starter(tmp_path / "data", runner)
    try:
        yield starter
    finally:
        await starter.close()


# Calls ----------------------------------------------------------------------------------------------------------


async def call(stub: pb_grpc.OrchestratorServiceStub, rpc: str, metadata: Metadata, session_id: str = NOWHERE) -> Any:
    match rpc:
        case "ExecuteWorkflow":
            return await stub.ExecuteWorkflow(
                pb.ExecuteWorkflowRequest(requirements="a todo list API", workflow_type="full"), metadata=metadata
            )
        case "GetWorkflowStatus":
            return await stub.GetWorkflowStatus(pb.GetWorkflowStatusRequest(session_id=session_id), metadata=metadata)
        case "WatchWorkflow":
            events = []
            async for event in stub.WatchWorkflow(pb.WatchWorkflowRequest(session_id=session_id), metadata=metadata):
                if event.type != enums.EVENT_TYPE_HEARTBEAT:
                    events.append(event)
            return events
        case "CancelWorkflow":
            return await stub.CancelWorkflow(pb.CancelWorkflowRequest(session_id=session_id), metadata=metadata)
        case "ListWorkflows":
            return await stub.ListWorkflows(pb.ListWorkflowsRequest(), metadata=metadata)
        case "ListWorkflowTypes":
            return await stub.ListWorkflowTypes(pb.ListWorkflowTypesRequest(), metadata=metadata)
    raise AssertionError(rpc)


GUARDED_RPCS = [
    "ExecuteWorkflow",
    "GetWorkflowStatus",
    "WatchWorkflow",
    "CancelWorkflow",
    "ListWorkflows",
    "ListWorkflowTypes",
]


def error_details(error: grpc.aio.AioRpcError) -> dict[str, Any]:
    status = rpc_status.from_call(error)
    assert status is not None, f"no google.rpc.Status in {error.code()} {error.details()}"
    found: dict[str, Any] = {}
    for detail in status.details:
        for kind in (error_details_pb2.ErrorInfo, error_details_pb2.RequestInfo, error_details_pb2.RetryInfo):
            if detail.Is(kind.DESCRIPTOR):
                message = kind()
                detail.Unpack(message)
                found[kind.DESCRIPTOR.name] = message
    return found


async def refused(coro: Any, code: grpc.StatusCode, reason: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await coro
    error = caught.value
    assert error.code() == code, (error.code(), error.details())
    found = error_details(error)
    assert found["ErrorInfo"].reason == reason, error.details()
    assert found["RequestInfo"].request_id
    return error


# The policy table -----------------------------------------------------------------------------------------------


def test_every_rpc_but_health_is_classified_and_tested() -> None:
    service = pb.DESCRIPTOR.services_by_name["OrchestratorService"]
    methods = {f"/{service.full_name}/{m.name}" for m in service.methods}
    assert methods - set(auth.RULES) == {f"/{service.full_name}/Health"}
    assert {f"/{service.full_name}/{name}" for name in GUARDED_RPCS} == set(auth.RULES)
    assert auth.is_public("/grpc.health.v1.Health/Check") and auth.is_public("/grpc.health.v1.Health/Watch")
    assert not auth.is_public(f"/{service.full_name}/ListWorkflowTypes")


def test_every_reason_maps_to_its_status_code() -> None:
    for reason in Unauthenticated.REASONS:
        assert CODES[reason] is grpc.StatusCode.UNAUTHENTICATED
    for reason in PermissionDenied.REASONS:
        assert CODES[reason] is grpc.StatusCode.PERMISSION_DENIED
    for reason in ResourceExhausted.REASONS:
        assert CODES[reason] is grpc.StatusCode.RESOURCE_EXHAUSTED
    for reason in Unavailable.REASONS:
        assert CODES[reason] is grpc.StatusCode.UNAVAILABLE


def test_token_bucket_refills_at_its_rate() -> None:
    now = [0.0]
    buckets = TokenBuckets(rate=2.0, burst=3, clock=lambda: now[0])
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)
    assert buckets.take("b") == 0.0  # its own bucket
    now[0] = 0.5
    assert buckets.take("a") == 0.0
    assert buckets.take("a") == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("peer", "address"),
    [("ipv4:127.0.0.1:5555", "127.0.0.1"), ("ipv6:[::1]:5555", "::1"), ("ipv6:%5B::1%5D:5555", "::1")],
)
def test_peer_address_drops_the_port(peer: str, address: str) -> None:
    assert auth.peer_address(peer) == address


# Refusals -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rpc", GUARDED_RPCS)
async def test_bad_tokens_are_refused_on_every_rpc(start: Starter, keys: Keys, jwks_file: Path, rpc: str) -> None:
    stub = await start({"jwks_file": jwks_file})
    now = int(time.time())
    bad: list[tuple[str, Metadata, str]] = [
        ("missing", (), "TOKEN_MISSING"),
        ("not a JWT", bearer("not.a-jwt"), "TOKEN_MALFORMED"),
        ("not bearer", (("authorization", "Basic dXNlcjpwYXNz"),), "TOKEN_MALFORMED"),
        ("expired", bearer(hs256(exp=now - 120, iat=now - 600)), "TOKEN_EXPIRED"),
        ("wrong issuer", bearer(hs256(iss="https://someone-else.test")), "TOKEN_ISSUER_INVALID"),
        ("wrong audience", bearer(rs256(keys, aud="another-service")), "TOKEN_AUDIENCE_INVALID"),
        ("no audience", bearer(hs256(aud=None)), "TOKEN_AUDIENCE_INVALID"),
        ("bad signature", bearer(jwt.encode(claims(), "x" * 40, algorithm="HS256")), "TOKEN_SIGNATURE_INVALID"),
        ("bad RS256 signature", bearer(rs256(keys, key=keys.other_rsa)), "TOKEN_SIGNATURE_INVALID"),
        ("unknown kid", bearer(es256(keys, kid="nobody")), "TOKEN_KEY_UNKNOWN"),
        ("alg none", bearer(jwt.encode(claims(), None, algorithm="none")), "TOKEN_ALGORITHM_NOT_ALLOWED"),
        ("no exp", bearer(hs256(exp=None)), "TOKEN_CLAIMS_INVALID"),
        ("no tenant", bearer(hs256(tenant=None)), "TOKEN_CLAIMS_INVALID"),
    ]
    for name, metadata, reason in bad:
        error = await refused(call(stub, rpc, metadata), grpc.StatusCode.UNAUTHENTICATED, reason)
        for _, value in metadata:
            token = value.partition(" ")[2]
            assert token not in (error.details() or ""), name  # never echoed
    if rpc == "ListWorkflowTypes":
        assert (await call(stub, rpc, bearer(hs256()))).workflow_types  # and a good token passes


async def test_health_needs_no_token_and_refusals_are_counted(start: Starter) -> None:
    stub = await start()
    assert (await stub.Health(pb.HealthRequest())).status == enums.SERVING_STATUS_SERVING
    assert (await stub.Health(pb.HealthRequest(), metadata=bearer("garbage"))).replica_id == "test-replica"
    assert start.app is not None
    async with grpc.aio.insecure_channel(f"127.0.0.1:{start.app.grpc_port}") as channel:
        check = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
        assert check.status == health_pb2.HealthCheckResponse.SERVING
        # Reflection describes the public contract only; tools discover the API without a token.
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        async for response in reflection.ServerReflectionInfo(iter([request])):
            assert SERVICE in {s.name for s in response.list_services_response.service}
            break
    for _ in range(2):
        await refused(call(stub, "ListWorkflows", ()), grpc.StatusCode.UNAUTHENTICATED, "TOKEN_MISSING")
    handled = [
        sample.value
        for metric in start.app.registry.collect()
        for sample in metric.samples
        if sample.name == "grpc_server_handled_total"
        and sample.labels["grpc_method"] == "ListWorkflows"
        # The label's spelling (UNAUTHENTICATED or go-grpc-prometheus's Unauthenticated) is the metrics' business.
        and sample.labels["grpc_code"].upper() == "UNAUTHENTICATED"
    ]
    assert handled == [2]


async def test_clock_skew_is_tolerated_only_a_little(start: Starter) -> None:
    stub = await start({"clock_skew_seconds": 30})
    now = int(time.time())
    await call(stub, "ListWorkflows", bearer(hs256(exp=now - 5)))
    await refused(
        call(stub, "ListWorkflows", bearer(hs256(exp=now - 60))), grpc.StatusCode.UNAUTHENTICATED, "TOKEN_EXPIRED"
    )
    await refused(
        call(stub, "ListWorkflows", bearer(hs256(nbf=now + 120))),
        grpc.StatusCode.UNAUTHENTICATED,
        "TOKEN_NOT_YET_VALID",
    )


# Accepted tokens ------------------------------------------------------------------------------------------------


async def test_hs256_and_rs256_from_a_jwks_file_are_accepted(start: Starter, keys: Keys, jwks_file: Path) -> None:
    stub = await start({"jwks_file": jwks_file})
    for token in (hs256(), rs256(keys), es256(keys)):
        submitted = await call(stub, "ExecuteWorkflow", bearer(token))
        events = await call(stub, "WatchWorkflow", bearer(token), submitted.session_id)
        assert events[-1].type == enums.EVENT_TYPE_WORKFLOW_COMPLETED


async def test_es256_from_a_jwks_url_is_accepted_and_cached(start: Starter, keys: Keys) -> None:
    with JwksServer(keys.jwks()) as server:
        stub = await start({"hs256_secret": None, "jwks_url": server.url})
        for _ in range(3):
            await call(stub, "ListWorkflows", bearer(es256(keys)))
        await call(stub, "ListWorkflows", bearer(rs256(keys)))
        for _ in range(3):  # unknown key ids do not make every call refetch
            await refused(
                call(stub, "ListWorkflows", bearer(es256(keys, kid="nobody"))),
                grpc.StatusCode.UNAUTHENTICATED,
                "TOKEN_KEY_UNKNOWN",
            )
        assert server.fetches == 1
        await refused(
            call(stub, "ListWorkflows", bearer(hs256())),
            grpc.StatusCode.UNAUTHENTICATED,
            "TOKEN_ALGORITHM_NOT_ALLOWED",  # no HS256 secret configured: never a public key as an HMAC secret
        )


async def test_a_key_rotated_in_at_the_jwks_url_is_picked_up(start: Starter, keys: Keys) -> None:
    with JwksServer(keys.jwks()) as server:
        stub = await start({"hs256_secret": None, "jwks_url": server.url, "jwks_cache_seconds": 0.2})
        await call(stub, "ListWorkflows", bearer(es256(keys)))
        rotated = ec.generate_private_key(ec.SECP256R1())
        new_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(rotated.public_key()))
        server.document = keys.jwks({**new_jwk, "kid": "ec-2"})

        async def accepted() -> bool:
            try:
                await call(stub, "ListWorkflows", bearer(es256(keys, kid="ec-2", key=rotated)))
                return True
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
                return False

        await wait_for(accepted, timeout=10)


async def test_jwks_url_down_is_unavailable_not_unauthenticated(start: Starter, keys: Keys) -> None:
    with JwksServer(keys.jwks()) as server:
        url = server.url
    stub = await start({"hs256_secret": None, "jwks_url": url})  # the server is gone: connection refused
    await refused(call(stub, "ListWorkflows", bearer(es256(keys))), grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE")


# Tenants and scopes ---------------------------------------------------------------------------------------------


async def test_tenants_see_only_their_own_workflows(start: Starter, runner: ScriptedRunner) -> None:
    stub = await start()
    runner.gate("requirements")
    a, b = bearer(hs256(tenant="tenant-a")), bearer(hs256(tenant="tenant-b"))
    mine = await stub.ExecuteWorkflow(
        pb.ExecuteWorkflowRequest(requirements="a", workflow_type="full", request_id="same-key"), metadata=a
    )
    for rpc in ("GetWorkflowStatus", "WatchWorkflow", "CancelWorkflow"):
        error = await refused(call(stub, rpc, b, mine.session_id), grpc.StatusCode.NOT_FOUND, "NOT_FOUND")
        assert mine.session_id in (error.details() or "")  # the same answer as for a session that does not exist
    assert list((await call(stub, "ListWorkflows", b)).workflows) == []
    assert [w.session_id for w in (await call(stub, "ListWorkflows", a)).workflows] == [mine.session_id]
    # Idempotency keys are per tenant: B's "same-key" is a new workflow of B's.
    theirs = await stub.ExecuteWorkflow(
        pb.ExecuteWorkflowRequest(requirements="a", workflow_type="full", request_id="same-key"), metadata=b
    )
    assert theirs.created and theirs.session_id != mine.session_id
    assert [w.session_id for w in (await call(stub, "ListWorkflows", b)).workflows] == [theirs.session_id]
    assert (await call(stub, "GetWorkflowStatus", a, mine.session_id)).state != enums.WORKFLOW_STATE_CANCELLED
    cancelled = await call(stub, "CancelWorkflow", a, mine.session_id)
    assert cancelled.state == enums.WORKFLOW_STATE_CANCELLED


async def test_the_tenant_claim_is_configurable(start: Starter) -> None:
    stub = await start({"tenant_claim": "org"})
    a1 = bearer(hs256(tenant="user-1", org="acme"))
    a2 = bearer(hs256(tenant="user-2", org="acme"))
    submitted = await call(stub, "ExecuteWorkflow", a1)
    assert (await call(stub, "GetWorkflowStatus", a2, submitted.session_id)).session_id == submitted.session_id
    await refused(call(stub, "ListWorkflows", bearer(hs256())), grpc.StatusCode.UNAUTHENTICATED, "TOKEN_CLAIMS_INVALID")


async def test_read_only_tokens_cannot_submit_or_cancel(start: Starter, runner: ScriptedRunner) -> None:
    stub = await start()
    runner.gate("requirements")
    writer = bearer(hs256())
    reader = bearer(hs256(scope="workflows:read"))
    submitted = await call(stub, "ExecuteWorkflow", writer)
    for rpc in ("ExecuteWorkflow", "CancelWorkflow"):
        error = await refused(
            call(stub, rpc, reader, submitted.session_id), grpc.StatusCode.PERMISSION_DENIED, "SCOPE_MISSING"
        )
        assert "workflows:write" in (error.details() or "")
    assert (await call(stub, "GetWorkflowStatus", reader, submitted.session_id)).session_id == submitted.session_id
    assert len((await call(stub, "ListWorkflows", reader)).workflows) == 1
    # Write does not imply read; scopes may also come as a list in `scp`; no scope at all grants nothing.
    await refused(
        call(stub, "ListWorkflows", bearer(hs256(scope="workflows:write"))),
        grpc.StatusCode.PERMISSION_DENIED,
        "SCOPE_MISSING",
    )
    await call(stub, "CancelWorkflow", bearer(hs256(scope=None, scp=["workflows:write"])), submitted.session_id)
    await refused(
        call(stub, "ListWorkflowTypes", bearer(hs256(scope=None))), grpc.StatusCode.PERMISSION_DENIED, "SCOPE_MISSING"
    )


async def test_role_claims_and_names_are_configurable(start: Starter) -> None:
    stub = await start({"scope_claims": ["roles"], "read_scope": "viewer", "write_scope": "operator"})
    await call(stub, "ExecuteWorkflow", bearer(hs256(scope=None, roles=["operator"])))
    await refused(call(stub, "ExecuteWorkflow", bearer(hs256())), grpc.StatusCode.PERMISSION_DENIED, "SCOPE_MISSING")


# Limits ---------------------------------------------------------------------------------------------------------


async def test_submissions_are_rate_limited_per_tenant_with_retry_info(start: Starter) -> None:
    stub = await start(write_rate_per_second=0.01, write_burst=2, read_rate_per_second=0.01, read_burst=3)
    a, b = bearer(hs256(tenant="tenant-a")), bearer(hs256(tenant="tenant-b"))
    for _ in range(2):
        await call(stub, "ExecuteWorkflow", a)
    error = await refused(call(stub, "ExecuteWorkflow", a), grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
    delay = error_details(error)["RetryInfo"].retry_delay
    assert 50 <= delay.seconds <= 100  # one token at 0.01 per second
    await call(stub, "ExecuteWorkflow", b)  # another tenant is unaffected
    # Reads have their own bucket: A's writes did not use it.
    for _ in range(3):
        await call(stub, "ListWorkflows", a)
    await refused(call(stub, "GetWorkflowStatus", a), grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
    await call(stub, "ListWorkflows", b)


async def test_active_workflows_are_capped_per_tenant(start: Starter, runner: ScriptedRunner) -> None:
    stub = await start(max_active_workflows_per_tenant=2)
    runner.gate("requirements")
    a, b = bearer(hs256(tenant="tenant-a")), bearer(hs256(tenant="tenant-b"))
    first = await stub.ExecuteWorkflow(
        pb.ExecuteWorkflowRequest(requirements="one", workflow_type="full", request_id="k1"), metadata=a
    )
    await call(stub, "ExecuteWorkflow", a)
    error = await refused(
        call(stub, "ExecuteWorkflow", a), grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_ACTIVE_WORKFLOWS"
    )
    assert error_details(error)["RetryInfo"].retry_delay.seconds > 0
    # A retry of an accepted request still gets its session; another tenant is unaffected.
    again = await stub.ExecuteWorkflow(
        pb.ExecuteWorkflowRequest(requirements="one", workflow_type="full", request_id="k1"), metadata=a
    )
    assert again.session_id == first.session_id and not again.created
    await call(stub, "ExecuteWorkflow", b)
    await call(stub, "CancelWorkflow", a, first.session_id)
    await call(stub, "ExecuteWorkflow", a)  # a slot is free again


async def test_watch_streams_are_capped_per_tenant(start: Starter, runner: ScriptedRunner) -> None:
    stub = await start(max_watch_streams_per_tenant=2)
    runner.gate("requirements")
    a, b = bearer(hs256(tenant="tenant-a")), bearer(hs256(tenant="tenant-b"))
    submitted = await call(stub, "ExecuteWorkflow", a)
    request = pb.WatchWorkflowRequest(session_id=submitted.session_id)

    async def open_stream(metadata: Metadata) -> Any:
        stream = stub.WatchWorkflow(request, metadata=metadata)
        first = await stream.read()  # the stored QUEUED event: the stream is open on the server
        assert first.type == enums.EVENT_TYPE_WORKFLOW_QUEUED
        return stream

    streams = [await open_stream(a) for _ in range(2)]
    await refused(open_stream(a), grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_WATCH_STREAMS")
    submitted_b = await call(stub, "ExecuteWorkflow", b)
    other = stub.WatchWorkflow(pb.WatchWorkflowRequest(session_id=submitted_b.session_id), metadata=b)
    assert (await other.read()).type == enums.EVENT_TYPE_WORKFLOW_QUEUED
    other.cancel()
    streams[0].cancel()  # closing one frees its slot

    async def reopened() -> bool:
        try:
            streams.append(await open_stream(a))
            return True
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            return False

    await wait_for(reopened, timeout=10)
    for stream in streams:
        stream.cancel()


async def test_oversize_requests_are_refused_by_grpc(start: Starter) -> None:
    stub = await start(max_request_bytes=64 * 1024)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ExecuteWorkflow(
            pb.ExecuteWorkflowRequest(requirements="x" * 70_000, workflow_type="full"), metadata=bearer(hs256())
        )
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


# Start-up -------------------------------------------------------------------------------------------------------


def test_settings_refuse_auth_without_a_key(tmp_path: Path, keys: Keys) -> None:
    with pytest.raises(ValidationError) as caught:
        make_settings(tmp_path, auth={"enabled": True, "issuer": ISSUER, "audience": AUDIENCE})
    assert "authentication is on but no key is configured" in str(caught.value)
    with pytest.raises(ValidationError) as caught:
        make_settings(tmp_path, auth={"enabled": True, "hs256_secret": SECRET})
    assert "ORCHESTRATOR_AUTH__ISSUER" in str(caught.value)
    with pytest.raises(ValidationError) as caught:
        make_settings(tmp_path, auth={"enabled": True, "hs256_secret": "short-secret", "issuer": "i", "audience": "a"})
    assert "at least 32 bytes" in str(caught.value) and "short-secret" not in str(caught.value)
    (tmp_path / "bad.json").write_text('{"keys": []}')
    with pytest.raises(ValidationError) as caught:
        make_settings(
            tmp_path, auth={"enabled": True, "jwks_file": tmp_path / "bad.json", "issuer": "i", "audience": "a"}
        )
    assert "not a JWKS" in str(caught.value)


async def test_serve_refuses_to_start_with_auth_on_and_no_key(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service", "serve", "--no-envoy", "--data-dir", str(tmp_path / "data"),
        "--grpc-port", "0", "--metrics-port", "0",
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    text = err.decode()
    assert "authentication is on but no key is configured" in text
    assert "ORCHESTRATOR_AUTH__ENABLED=false" in text


async def test_cli_sends_the_token_from_flag_or_environment(start: Starter) -> None:
    await start()
    assert start.app is not None
    port = start.app.grpc_port
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}

    async def cli(*args: str, token_env: str | None = None) -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "service", *args, "--target", f"127.0.0.1:{port}",
            cwd=ROOT, env={**env, **({"ORCHESTRATOR_TOKEN": token_env} if token_env else {})},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(process.communicate(), 30)
        return process.returncode or 0, out.decode(), err.decode()

    token = hs256()
    code, out, err = await cli("types")
    assert code == 1 and "UNAUTHENTICATED" in err and token not in err
    code, out, _ = await cli("types", "--token", token)
    assert code == 0 and "full" in out
    code, out, _ = await cli("list", token_env=token)
    assert code == 0 and json.loads(out) == {}


# Logs -----------------------------------------------------------------------------------------------------------


async def test_logs_never_hold_tokens_secrets_or_whole_requirements(
    start: Starter, keys: Keys, jwks_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.handler.addFilter(logs._ContextFilter())
    caplog.set_level(logging.DEBUG)
    stub = await start({"jwks_file": jwks_file}, offline_model=True)  # the real agents log too
    now = int(time.time())
    expired = hs256(exp=now - 120, iat=now - 600)
    forged = jwt.encode(claims(), "y" * 40, algorithm="HS256")
    for token in (expired, forged, "not.a-jwt"):
        with pytest.raises(grpc.aio.AioRpcError):
            await call(stub, "ExecuteWorkflow", bearer(token))
    good = rs256(keys)
    requirements = "A service that " + " ".join(f"does-thing-{i}" for i in range(400))
    submitted = await stub.ExecuteWorkflow(
        pb.ExecuteWorkflowRequest(requirements=requirements, workflow_type="design"), metadata=bearer(good)
    )
    events = await call(stub, "WatchWorkflow", bearer(good), submitted.session_id)
    assert events[-1].type == enums.EVENT_TYPE_WORKFLOW_COMPLETED
    await call(stub, "GetWorkflowStatus", bearer(good), submitted.session_id)

    formatter = logs.JsonFormatter()
    text = "\n".join(formatter.format(record) for record in caplog.records)
    assert "UNAUTHENTICATED" in text and "phase design" in text  # the refusals and the phases were logged ...
    for secret in (expired, forged, good, SECRET, requirements):
        assert secret not in text  # ... without the token, the secret or the whole requirements
    for part in (good.split(".")[2], expired.split(".")[2]):
        assert part not in text  # not even a signature
