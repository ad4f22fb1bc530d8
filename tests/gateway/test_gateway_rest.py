"""REST and native gRPC through a real Envoy in front of a real grpc.aio server (with a fake servicer)."""

from __future__ import annotations

import json
from typing import Any

import grpc
import httpx
import pytest

from gateway.config import API_HEADERS, SECURITY_HEADERS
from gateway.sidecar import EnvoySidecar
from service.gen.orchestrator.v1 import orchestrator_service_pb2 as pb
from service.gen.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc
from tests.gateway.gateway_fakes import (
    BIG_SESSION,
    BIG_TEXT_CHARS,
    CORS_ORIGIN,
    INVALID_REQUIREMENTS,
    MAX_REQUEST_BYTES,
    METRICS_TEXT,
    MISSING_SESSION,
    Upstream,
)

pytestmark = [pytest.mark.envoy, pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(30)]

BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"
REQUEST_INFO = "type.googleapis.com/google.rpc.RequestInfo"


def client(envoy: EnvoySidecar) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=envoy.url, timeout=10)


def detail(body: dict[str, Any], type_url: str) -> dict[str, Any]:
    matches = [d for d in body["details"] if d["@type"] == type_url]
    assert len(matches) == 1, body
    return matches[0]


def assert_error(response: httpx.Response, status: int, code: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert body["code"] == code
    assert isinstance(body["message"], str) and body["message"]
    return body


# --- unary calls ---------------------------------------------------------------------------------------------


async def test_execute_workflow_reaches_servicer_and_prints_snake_case_with_zero_values(
    envoy: EnvoySidecar, upstream: Upstream
) -> None:
    async with client(envoy) as http:
        response = await http.post(
            "/execute-workflow",
            json={"requirements": "a todo app", "workflow_type": "full", "configuration": {"language": "go"}},
        )
    assert response.status_code == 200, response.text
    request = upstream.servicer.seen.requests[-1]
    assert isinstance(request, pb.ExecuteWorkflowRequest)
    assert request.requirements == "a todo app"
    assert request.configuration["language"] == "go"
    assert response.json() == {
        "session_id": "session-1",
        "state": "WORKFLOW_STATE_QUEUED",
        "message": "",
        "created_at": "2023-11-14T22:13:20Z",
        "created": False,
    }


async def test_api_v1_prefix_works_too(envoy: EnvoySidecar) -> None:
    async with client(envoy) as http:
        response = await http.post("/api/v1/execute-workflow", json={"requirements": "x", "workflow_type": "full"})
    assert response.status_code == 200
    assert response.json()["session_id"] == "session-1"


async def test_request_id_is_generated_forwarded_and_returned(envoy: EnvoySidecar, upstream: Upstream) -> None:
    async with client(envoy) as http:
        response = await http.get("/health")
    assert response.status_code == 200
    request_id = response.headers["x-request-id"]
    assert request_id
    assert upstream.servicer.seen.request_ids[-1] == request_id


async def test_client_request_id_is_kept(envoy: EnvoySidecar, upstream: Upstream) -> None:
    async with client(envoy) as http:
        response = await http.get("/health", headers={"x-request-id": "client-chosen-1"})
    assert response.headers["x-request-id"] == "client-chosen-1"
    assert upstream.servicer.seen.request_ids[-1] == "client-chosen-1"


@pytest.mark.parametrize("prefix", ["", "/api/v1"])
async def test_workflow_status_is_a_flat_json_object(envoy: EnvoySidecar, prefix: str) -> None:
    async with client(envoy) as http:
        response = await http.get(f"{prefix}/workflow-status/abc")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["session_id"] == "abc"
    assert body["state"] == "WORKFLOW_STATE_RUNNING"
    assert body["progress"] == 0
    assert body["last_sequence"] == "2"  # int64 is a JSON string


async def test_large_responses_are_not_cut_at_envoys_default_buffer(envoy: EnvoySidecar) -> None:
    async with client(envoy) as http:
        status = await http.get(f"/workflow-status/{BIG_SESSION}")
        events = await http.get(f"/workflow-events/{BIG_SESSION}")
    assert status.status_code == 200, status.text[:300]
    assert len(status.json()["result"]["documentation"]) == BIG_TEXT_CHARS
    assert events.status_code == 200
    messages = [json.loads(line)["message"] for line in events.text.splitlines() if line]
    assert [len(m) for m in messages] == [BIG_TEXT_CHARS] * 3


# --- errors --------------------------------------------------------------------------------------------------


async def test_invalid_argument_keeps_the_servicers_details(envoy: EnvoySidecar) -> None:
    async with client(envoy) as http:
        response = await http.post(
            "/execute-workflow",
            json={"requirements": INVALID_REQUIREMENTS},
            headers={"x-request-id": "rid-invalid"},
        )
    body = assert_error(response, 400, 3)
    assert body["message"] == "invalid request"
    violations = detail(body, BAD_REQUEST)["field_violations"]
    assert [(v["field"], v["description"]) for v in violations] == [("requirements", "too vague")]
    assert detail(body, REQUEST_INFO)["request_id"] == "rid-invalid"


async def test_not_found_from_the_servicer_is_404(envoy: EnvoySidecar) -> None:
    async with client(envoy) as http:
        response = await http.get(f"/workflow-status/{MISSING_SESSION}")
    body = assert_error(response, 404, 5)
    assert MISSING_SESSION in body["message"]


async def test_unknown_path_is_404_json(envoy: EnvoySidecar) -> None:
    async with client(envoy) as http:
        response = await http.get("/no-such-thing", headers={"x-request-id": "rid-404"})
    body = assert_error(response, 404, 5)
    assert detail(body, REQUEST_INFO)["request_id"] == "rid-404"


async def test_unknown_query_parameter_is_400_json(envoy: EnvoySidecar) -> None:
    async with client(envoy) as http:
        response = await http.get("/workflows", params={"bogus": "1"})
    body = assert_error(response, 400, 3)
    assert "bogus" in detail(body, BAD_REQUEST)["field_violations"][0]["description"]


@pytest.mark.parametrize(
    "content",
    [b"{not json", b'{"requirements": 5}', b'{"priority": "NO_SUCH_PRIORITY"}'],
    ids=["malformed", "wrong-type", "unknown-enum"],
)
async def test_bad_json_body_is_400_json(envoy: EnvoySidecar, content: bytes) -> None:
    async with client(envoy) as http:
        response = await http.post("/execute-workflow", content=content, headers={"content-type": "application/json"})
    body = assert_error(response, 400, 3)
    violation = detail(body, BAD_REQUEST)["field_violations"][0]
    assert violation["field"] == "body"
    assert violation["description"] == body["message"]


async def test_body_over_the_limit_is_413_json(envoy: EnvoySidecar, upstream: Upstream) -> None:
    seen = len(upstream.servicer.seen.requests)
    async with client(envoy) as http:
        response = await http.post(
            "/execute-workflow", json={"requirements": "x" * MAX_REQUEST_BYTES, "workflow_type": "full"}
        )
    assert_error(response, 413, 8)
    assert len(upstream.servicer.seen.requests) == seen


# --- streams -------------------------------------------------------------------------------------------------


async def test_watch_streams_ndjson_events(envoy: EnvoySidecar) -> None:
    async with client(envoy) as http, http.stream("GET", "/workflow-events/abc") as response:
        assert response.status_code == 200
        lines = [line async for line in response.aiter_lines() if line]
    events = [json.loads(line) for line in lines]
    assert [e["sequence"] for e in events] == ["1", "2", "3"]
    assert events[-1]["type"] == "EVENT_TYPE_WORKFLOW_COMPLETED"
    assert all(e["session_id"] == "abc" for e in events)
    assert events[0]["data"] == {"n": 1}


async def test_watch_resumes_after_a_sequence(envoy: EnvoySidecar) -> None:
    async with client(envoy) as http:
        response = await http.get("/api/v1/workflow-events/abc", params={"after_sequence": "2"})
    assert response.status_code == 200
    assert [json.loads(line)["sequence"] for line in response.text.splitlines() if line] == ["3"]


async def test_watch_streams_server_sent_events_when_asked(envoy: EnvoySidecar) -> None:
    headers = {"accept": "text/event-stream"}
    async with (
        client(envoy) as http,
        http.stream("GET", "/workflow-events/abc?after_sequence=0", headers=headers) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line async for line in response.aiter_lines() if line]
    assert all(line.startswith("data: ") for line in lines), lines
    events = [json.loads(line.removeprefix("data: ")) for line in lines]
    assert [e["type"] for e in events] == [
        "EVENT_TYPE_WORKFLOW_QUEUED",
        "EVENT_TYPE_WORKFLOW_STARTED",
        "EVENT_TYPE_WORKFLOW_COMPLETED",
    ]


# --- pass-through routes, headers, CORS ----------------------------------------------------------------------


async def test_metrics_pass_through_untouched(envoy: EnvoySidecar) -> None:
    async with client(envoy) as http:
        response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.content == METRICS_TEXT
    assert response.headers["content-type"].startswith("text/plain")


async def test_docs_and_openapi_pass_through(envoy: EnvoySidecar) -> None:
    async with client(envoy) as http:
        docs = await http.get("/docs")
        openapi = await http.get("/openapi.json")
    assert docs.status_code == 200 and docs.text == "<html>docs</html>"
    assert "content-security-policy" not in docs.headers  # the docs page brings its own
    assert docs.headers["x-frame-options"] == "DENY"
    assert openapi.status_code == 200 and openapi.json() == {"openapi": "3.0.0"}


async def test_successful_rest_reply_has_security_headers_and_no_grpc_headers(envoy: EnvoySidecar) -> None:
    async with client(envoy) as http:
        response = await http.get("/workflow-status/abc")
    assert response.status_code == 200
    for name, value in {**SECURITY_HEADERS, **API_HEADERS}.items():
        assert response.headers[name] == value
    assert not [name for name in response.headers if name.startswith("grpc-")], response.headers


async def test_envoys_own_errors_have_security_headers(envoy: EnvoySidecar) -> None:
    async with client(envoy) as http:
        response = await http.get("/no-such-thing")
    assert response.status_code == 404
    for name, value in {**SECURITY_HEADERS, **API_HEADERS}.items():
        assert response.headers[name] == value


async def test_cors_preflight_from_an_allowed_origin(envoy: EnvoySidecar) -> None:
    async with client(envoy) as http:
        response = await http.options(
            "/execute-workflow",
            headers={
                "origin": CORS_ORIGIN,
                "access-control-request-method": "POST",
                "access-control-request-headers": "content-type",
            },
        )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == CORS_ORIGIN
    assert "POST" in response.headers["access-control-allow-methods"]
    assert "content-type" in response.headers["access-control-allow-headers"]


async def test_cors_preflight_from_another_origin_gets_no_allow_headers(envoy: EnvoySidecar) -> None:
    async with client(envoy) as http:
        response = await http.options(
            "/execute-workflow",
            headers={"origin": "https://evil.example", "access-control-request-method": "POST"},
        )
    assert "access-control-allow-origin" not in response.headers
    assert "access-control-allow-methods" not in response.headers


async def test_cors_actual_request_from_an_allowed_origin(envoy: EnvoySidecar) -> None:
    async with client(envoy) as http:
        response = await http.get("/health", headers={"origin": CORS_ORIGIN})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == CORS_ORIGIN
    assert "x-request-id" in response.headers["access-control-expose-headers"]


# --- native gRPC through the same listener -------------------------------------------------------------------


async def test_native_grpc_calls_work_through_envoy(envoy: EnvoySidecar) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{envoy.http_port}") as channel:
        stub = pb_grpc.OrchestratorServiceStub(channel)
        status = await stub.GetWorkflowStatus(pb.GetWorkflowStatusRequest(session_id="abc"), timeout=10)
        assert status.session_id == "abc"
        events = [e async for e in stub.WatchWorkflow(pb.WatchWorkflowRequest(session_id="abc"), timeout=10)]
        assert [e.sequence for e in events] == [1, 2, 3]
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetWorkflowStatus(pb.GetWorkflowStatusRequest(session_id=MISSING_SESSION), timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert MISSING_SESSION in (caught.value.details() or "")


async def test_native_grpc_error_details_survive(envoy: EnvoySidecar) -> None:
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    async with grpc.aio.insecure_channel(f"127.0.0.1:{envoy.http_port}") as channel:
        stub = pb_grpc.OrchestratorServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ExecuteWorkflow(pb.ExecuteWorkflowRequest(requirements=INVALID_REQUIREMENTS), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(caught.value)
    assert status is not None
    assert any(d.Is(error_details_pb2.BadRequest.DESCRIPTOR) for d in status.details)
