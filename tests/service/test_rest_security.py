"""The REST edge through a real Envoy in front of the real service with auth on: allowed Host names, CORS, the
one request-size limit, security headers on every reply, and authentication, tenants and rate limits on every
documented REST path."""

from __future__ import annotations

import json
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import pytest
import pytest_asyncio

from gateway.config import API_HEADERS, SECURITY_HEADERS
from service.app import App
from tests.conftest import make_settings
from tests.runners import ScriptedRunner
from tests.service.test_auth import AUDIENCE, ISSUER, SECRET, claims, hs256

pytestmark = [pytest.mark.envoy, pytest.mark.timeout(60)]
module_loop = pytest.mark.asyncio(loop_scope="module")

ORIGIN = "https://console.example.com"
MAX_REQUEST_BYTES = 64 * 1024
# Reads per tenant: enough for every test here but the one that spends a fresh tenant's burst.
READ_BURST, READ_RATE = 30, 0.5
NOWHERE = "00000000-0000-0000-0000-000000000000"
AUTH = {"enabled": True, "hs256_secret": SECRET, "issuer": ISSUER, "audience": AUDIENCE}

# Every documented REST path (README, docs/openapi.json) but /health: (method, path, JSON body).
GUARDED_PATHS = [
    ("POST", "/execute-workflow", {"requirements": "a todo API", "workflow_type": "design"}),
    ("GET", f"/workflow-status/{NOWHERE}", None),
    ("GET", f"/workflow-events/{NOWHERE}", None),
    ("POST", f"/cancel-workflow/{NOWHERE}", {"reason": "r"}),
    ("GET", "/workflows", None),
    ("GET", "/workflow-types", None),
]
ALL_GUARDED = [(m, prefix + p, b) for prefix in ("", "/api/v1") for m, p, b in GUARDED_PATHS]


def bad_tokens() -> list[tuple[str, dict[str, str], str]]:
    now = int(time.time())
    forged = jwt.encode(claims(), "x" * 40, algorithm="HS256")
    return [
        ("missing", {}, "TOKEN_MISSING"),
        ("malformed", {"authorization": "Bearer not.a-jwt"}, "TOKEN_MALFORMED"),
        ("not bearer", {"authorization": "Basic dXNlcjpwYXNz"}, "TOKEN_MALFORMED"),
        ("expired", {"authorization": f"Bearer {hs256(exp=now - 120, iat=now - 600)}"}, "TOKEN_EXPIRED"),
        ("wrong issuer", {"authorization": f"Bearer {hs256(iss='https://elsewhere.test')}"}, "TOKEN_ISSUER_INVALID"),
        ("wrong audience", {"authorization": f"Bearer {hs256(aud='another-service')}"}, "TOKEN_AUDIENCE_INVALID"),
        ("bad signature", {"authorization": f"Bearer {forged}"}, "TOKEN_SIGNATURE_INVALID"),
    ]


def bearer(tenant: str = "tenant-a", **overrides: Any) -> dict[str, str]:
    return {"authorization": f"Bearer {hs256(tenant=tenant, **overrides)}"}


def assert_json_error(response: httpx.Response, status: int, error: str | None = None) -> dict[str, Any]:
    """The guide's ErrorResponse (plus FastAPI's `detail`), whoever answered: the service or Envoy itself."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body: dict[str, Any] = response.json()
    assert set(body) == {"error", "message", "detail", "details", "timestamp", "request_id"}, body
    assert isinstance(body["message"], str) and body["message"] and body["detail"] == body["message"], body
    assert isinstance(body["details"], dict) and body["timestamp"].endswith("Z"), body
    assert body["request_id"] == response.headers["x-request-id"], body
    if error is not None:
        assert body["error"] == error, body
    assert_security_headers(response)
    return body


def assert_security_headers(response: httpx.Response) -> None:
    for name, value in {**SECURITY_HEADERS, **API_HEADERS}.items():
        assert response.headers.get(name) == value, (name, response.headers)


async def send(
    http: httpx.AsyncClient, method: str, path: str, body: Any, headers: dict[str, str] | None = None
) -> httpx.Response:
    return await http.request(method, path, json=body, headers=headers)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def edge(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[App]:
    """One service for the module (DBOS allows one per process): auth on, one CORS origin, a 64 KiB request
    limit, a small read burst, the default allowed hosts."""
    runner = ScriptedRunner()
    runner.gate("requirements")  # submitted workflows stay queued/running, so cancel has something to cancel
    settings = make_settings(
        tmp_path_factory.mktemp("edge") / "data",
        envoy=True,
        auth=AUTH,
        cors_allowed_origins=ORIGIN,  # as the environment or a flag gives it: text
        max_request_bytes=MAX_REQUEST_BYTES,
        read_burst=READ_BURST,
        read_rate_per_second=READ_RATE,
    )
    application = App(settings, runner=runner)
    await application.start()
    try:
        yield application
    finally:
        await application.stop(grace=0.5)


@pytest_asyncio.fixture(loop_scope="module")
async def http(edge: App) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{edge.http_port}", timeout=20) as client:
        yield client


# Authentication on every path ---------------------------------------------------------------------------------


@module_loop
@pytest.mark.parametrize(("method", "path", "body"), ALL_GUARDED, ids=[f"{m} {p}" for m, p, _ in ALL_GUARDED])
async def test_bad_tokens_are_401_json_on_every_rest_path(
    http: httpx.AsyncClient, method: str, path: str, body: Any
) -> None:
    for name, headers, reason in bad_tokens():
        response = await send(http, method, path, body, headers)
        assert_json_error(response, 401, reason)
        token = headers.get("authorization", "").partition(" ")[2]
        assert not token or token not in response.text, name  # never echoed
        assert not [h for h in response.headers if h.startswith("grpc-")], (name, response.headers)


@module_loop
async def test_health_and_metrics_need_no_token(http: httpx.AsyncClient) -> None:
    health = await http.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "serving"
    assert (await http.get("/api/v1/health")).status_code == 200
    metrics = await http.get("/metrics")
    assert metrics.status_code == 200 and "grpc_server_handled_total" in metrics.text


@module_loop
async def test_a_good_token_passes_on_every_rest_path(http: httpx.AsyncClient) -> None:
    submitted = await http.post("/execute-workflow", json=GUARDED_PATHS[0][2], headers=bearer())
    assert submitted.status_code == 200, submitted.text
    session_id = submitted.json()["session_id"]
    assert (await http.get(f"/workflow-status/{session_id}", headers=bearer())).status_code == 200
    assert (await http.get("/workflows", headers=bearer())).status_code == 200
    assert (await http.get("/workflow-types", headers=bearer())).status_code == 200
    async with http.stream("GET", f"/workflow-events/{session_id}", headers=bearer()) as stream:
        assert stream.status_code == 200
        first = json.loads(await anext(stream.aiter_lines()))
        assert first["sequence"] == "1"
    cancelled = await http.post(f"/cancel-workflow/{session_id}", json={}, headers=bearer())
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"


@module_loop
async def test_tenants_are_isolated_over_rest(http: httpx.AsyncClient) -> None:
    a, b = bearer("rest-tenant-a"), bearer("rest-tenant-b")
    submitted = await http.post("/execute-workflow", json=GUARDED_PATHS[0][2], headers=a)
    assert submitted.status_code == 200, submitted.text
    session_id = submitted.json()["session_id"]
    for method, path in [
        ("GET", f"/workflow-status/{session_id}"),
        ("GET", f"/workflow-events/{session_id}"),
        ("POST", f"/cancel-workflow/{session_id}"),
    ]:
        response = await send(http, method, path, {} if method == "POST" else None, b)
        body = assert_json_error(response, 404, "NOT_FOUND")
        assert session_id in body["message"]  # the same answer as for a session that does not exist
    listed = (await http.get("/workflows", headers=b)).json()
    assert listed["workflows"] == []
    mine = (await http.get("/workflows", headers=a)).json()
    assert [w["session_id"] for w in mine["workflows"]] == [session_id]
    assert (await http.get(f"/workflow-status/{session_id}", headers=a)).status_code == 200


@module_loop
async def test_a_read_only_token_cannot_submit_over_rest(http: httpx.AsyncClient) -> None:
    response = await http.post("/execute-workflow", json=GUARDED_PATHS[0][2], headers=bearer(scope="workflows:read"))
    assert_json_error(response, 403, "SCOPE_MISSING")


# Hosts, CORS, size, headers -----------------------------------------------------------------------------------


@module_loop
@pytest.mark.parametrize(
    "host", ["evil.example", "evil.example:80", "localhost.evil.example", "127.0.0.2", "127.0.0.1:1"]
)
@pytest.mark.parametrize("path", ["/workflow-types", "/health", "/metrics", "/no-such-path"])
async def test_a_host_not_allowed_is_400_json_on_every_path(http: httpx.AsyncClient, host: str, path: str) -> None:
    response = await http.get(path, headers={"host": host, **bearer()})
    # Starlette's TrustedHostMiddleware, which the guide uses, answers 400 "Invalid host header".
    body = assert_json_error(response, 400, "INVALID_HOST")
    assert body["detail"] == "Invalid host header"


@module_loop
async def test_the_default_allowed_hosts_with_and_without_the_port(edge: App, http: httpx.AsyncClient) -> None:
    for host in ("localhost", f"localhost:{edge.http_port}", "127.0.0.1", f"127.0.0.1:{edge.http_port}"):
        response = await http.get("/health", headers={"host": host})
        assert response.status_code == 200, (host, response.text)


@module_loop
async def test_an_allowed_origin_gets_cors_headers_and_others_do_not(http: httpx.AsyncClient) -> None:
    preflight = await http.options(
        "/execute-workflow",
        headers={
            "origin": ORIGIN,
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 200, preflight.text
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    assert "authorization" in preflight.headers["access-control-allow-headers"]
    actual = await http.get("/workflow-types", headers={"origin": ORIGIN, **bearer()})
    assert actual.status_code == 200
    assert actual.headers["access-control-allow-origin"] == ORIGIN
    refused = await http.get("/workflow-types", headers={"origin": "https://evil.example", **bearer()})
    assert "access-control-allow-origin" not in refused.headers
    # A refusal is readable by the allowed origin's page too (it can show why).
    unauthenticated = await http.get("/workflow-types", headers={"origin": ORIGIN})
    assert unauthenticated.status_code == 401
    assert unauthenticated.headers["access-control-allow-origin"] == ORIGIN


@module_loop
async def test_a_body_over_max_request_bytes_is_413_json_at_envoy(edge: App, http: httpx.AsyncClient) -> None:
    before = handled(edge, "ExecuteWorkflow")
    body = {"requirements": "x" * MAX_REQUEST_BYTES, "workflow_type": "design"}
    assert_json_error(await http.post("/execute-workflow", json=body, headers=bearer()), 413, "PAYLOAD_TOO_LARGE")
    assert handled(edge, "ExecuteWorkflow") == before  # refused before the service saw it
    body = {"requirements": "x" * 45_000, "workflow_type": "design"}  # under both limits: accepted
    response = await http.post("/execute-workflow", json=body, headers=bearer())
    assert response.status_code == 200, response.text


def handled(app: App, method: str) -> float:
    return sum(
        sample.value
        for metric in app.registry.collect()
        for sample in metric.samples
        if sample.name == "grpc_server_handled_total" and sample.labels["grpc_method"] == method
    )


@module_loop
async def test_security_headers_on_every_kind_of_reply(http: httpx.AsyncClient) -> None:
    replies = [
        await http.get("/workflows", headers=bearer()),  # 200 from the service
        await http.get("/workflow-types"),  # 401 from the service
        await http.get(f"/workflow-status/{NOWHERE}", headers=bearer()),  # 404 from the service
        await http.get("/workflows", params={"page_size": -1}, headers=bearer()),  # 400 from the service
        await http.get("/no-such-path"),  # 404 from Envoy
        await http.get("/workflows", params={"bogus": 1}),  # 400 from Envoy
        await http.post("/execute-workflow", content=b"{", headers={"content-type": "application/json"}),  # 422
        await http.get("/health", headers={"host": "evil.example"}),  # 400 from Envoy
    ]
    for response in replies:
        assert_security_headers(response)
        assert response.headers["content-type"].startswith("application/json"), response.headers
    ok = replies[0]
    assert ok.status_code == 200 and not [h for h in ok.headers if h.startswith("grpc-")], ok.headers


# Rate limits --------------------------------------------------------------------------------------------------


@module_loop
async def test_the_burst_then_429_json_with_retry_info(http: httpx.AsyncClient) -> None:
    token = bearer("bursty")
    for _ in range(READ_BURST):
        assert (await http.get("/workflows", headers=token)).status_code == 200
    response = await http.get("/workflow-types", headers=token)
    body = assert_json_error(response, 429, "RATE_LIMITED")
    assert 0 < body["details"]["retry_after_seconds"] <= 1 / READ_RATE
    # Retry-After in whole seconds (RFC 9110), never 0, beside the exact figure in the body.
    assert int(response.headers["retry-after"]) == max(1, math.ceil(body["details"]["retry_after_seconds"]))
    # Per tenant: another tenant still gets through, and probes are never limited.
    assert (await http.get("/workflows", headers=bearer("calm"))).status_code == 200
    assert (await http.get("/health")).status_code == 200
