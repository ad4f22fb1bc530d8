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

def client(envoy: EnvoySidecar) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=envoy.url, timeout=10)


def assert_error(response: httpx.Response, status: int, error: str) -> dict[str, Any]:
    """The guide's ErrorResponse, plus FastAPI's `detail`."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert body["error"] == error, body
    assert isinstance(body["message"], str) and body["message"] and body["detail"] == body["message"]
    assert isinstance(body["details"], dict) and body["timestamp"]
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
    # The guide's response: `status` is "accepted" on submit, whatever the state (the guide's own unit test).
    assert response.json() == {
        "session_id": "session-1",
        "status": "accepted",
        "message": "",
        "created_at": "2023-11-14T22:13:20Z",
        "created": False,
        "warnings": [],
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
    assert body["status"] == "running"
    assert body["progress"] == 0
    assert body["last_sequence"] == "2"  # int64 is a JSON string


async def test_large_responses_are_not_cut_at_envoys_default_buffer(envoy: EnvoySidecar) -> None:
    async with client(envoy) as http:
        status = await http.get(f"/workflow-status/{BIG_SESSION}")
    assert status.status_code == 200, status.text[:300]
    assert len(status.json()["documentation"]) == BIG_TEXT_CHARS  # the result, at the top level


# --- errors --------------------------------------------------------------------------------------------------


async def test_invalid_argument_keeps_the_servicers_details(envoy: EnvoySidecar) -> None:
    async with client(envoy) as http:
        response = await http.post(
            "/execute-workflow",
            json={"requirements": INVALID_REQUIREMENTS, "workflow_type": "full"},
            headers={"x-request-id": "rid-invalid"},
        )
    body = assert_error(response, 400, "INVALID_ARGUMENT")
    assert body["message"] == "invalid request"
    violations = body["details"]["field_violations"]
    assert [(v["field"], v["description"]) for v in violations] == [("requirements", "too vague")]
    assert body["request_id"] == "rid-invalid"


async def test_not_found_from_the_servicer_is_404(envoy: EnvoySidecar) -> None:
    async with client(envoy) as http:
        response = await http.get(f"/workflow-status/{MISSING_SESSION}")
    body = assert_error(response, 404, "NOT_FOUND")
    assert MISSING_SESSION in body["message"]


async def test_unknown_path_is_404_json(envoy: EnvoySidecar) -> None:
    async with client(envoy) as http:
        response = await http.get("/no-such-thing", headers={"x-request-id": "rid-404"})
    body = assert_error(response, 404, "NOT_FOUND")
    assert body["request_id"] == "rid-404"


async def test_unknown_query_parameter_is_400_json(envoy: EnvoySidecar) -> None:
    async with client(envoy) as http:
        response = await http.get("/workflows", params={"bogus": "1"})
    body = assert_error(response, 400, "INVALID_ARGUMENT")
    assert "bogus" in body["details"]["field_violations"][0]["description"]


@pytest.mark.parametrize(
    ("content", "kind"),
    [
        (b"{not json", "json_invalid"),
        (b'{"requirements": 5, "workflow_type": "full"}', "string_type"),
        (b'{"requirements": "r", "workflow_type": "full", "priority": "NO_SUCH_PRIORITY"}', "string_pattern_mismatch"),
    ],
    ids=["malformed", "wrong-type", "unknown-enum"],
)
async def test_a_body_that_fails_the_request_model_is_422_and_never_reaches_the_service(
    envoy: EnvoySidecar, upstream: Upstream, content: bytes, kind: str
) -> None:
    seen = len(upstream.servicer.seen.requests)
    async with client(envoy) as http:
        response = await http.post("/execute-workflow", content=content, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "VALIDATION_ERROR"
    assert [problem["type"] for problem in body["detail"]] == [kind]  # FastAPI's list
    assert len(upstream.servicer.seen.requests) == seen


async def test_body_over_the_limit_is_413_json(envoy: EnvoySidecar, upstream: Upstream) -> None:
    seen = len(upstream.servicer.seen.requests)
    async with client(envoy) as http:
        response = await http.post(
            "/execute-workflow", json={"requirements": "x" * MAX_REQUEST_BYTES, "workflow_type": "full"}
        )
    assert_error(response, 413, "PAYLOAD_TOO_LARGE")
    assert len(upstream.servicer.seen.requests) == seen


# --- streams -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("accept", ["application/x-ndjson", "text/event-stream"])
async def test_watch_paths_go_to_the_live_endpoint_untranscoded(envoy: EnvoySidecar, accept: str) -> None:
    """NDJSON and SSE alike are the service's live endpoint's; the transcoder never frames a watch stream."""
    async with client(envoy) as http:
        for path in ("/workflow-events/abc", "/api/v1/workflow-events/abc?after_sequence=2"):
            response = await http.get(path, headers={"accept": accept})
            assert response.status_code == 200, response.text
            assert response.headers["content-type"] == "application/x-ndjson"  # the fake's, passed through
            seen = json.loads(response.text)
            assert seen == {
                "path": path,
                "accept": accept,
                "forwarded_port": str(envoy.http_port),
                "transcoded": False,
            }


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
