"""Every documented REST path through a real Envoy in front of the real service (scripted model)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from service.app import App
from tests.conftest import make_settings
from tests.runners import ScriptedRunner

pytestmark = pytest.mark.envoy

# The guide's WorkflowProgressResponse fields.
STATUS_FIELDS = {"session_id", "status", "progress", "current_phase", "phases_completed", "errors", "partial_results"}


@pytest.fixture
async def rest_app(tmp_path: Path, runner: ScriptedRunner) -> AsyncIterator[App]:
    application = App(make_settings(tmp_path / "data", envoy=True), runner=runner)
    await application.start()
    try:
        yield application
    finally:
        await application.stop(grace=0.5)


@pytest.fixture
async def http(rest_app: App) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{rest_app.http_port}", timeout=20) as client:
        yield client


def field_violations(body: dict[str, Any]) -> dict[str, str]:
    """The guide's ErrorResponse carries invalid fields in `details.field_violations`."""
    assert {"error", "message", "detail", "details", "timestamp", "request_id"} <= set(body), body
    return {v["field"]: v["description"] for v in body["details"]["field_violations"]}


async def execute(http: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    body.setdefault("requirements", "a URL shortener")
    body.setdefault("workflow_type", "full")
    response = await http.post("/execute-workflow", json=body)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def ndjson_events(http: httpx.AsyncClient, path: str) -> list[dict[str, Any]]:
    events = []
    async with http.stream("GET", path) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.strip():
                event = json.loads(line)
                if event["type"] != "heartbeat":
                    events.append(event)
    return events


async def test_execute_status_and_documented_fields(http: httpx.AsyncClient) -> None:
    submitted = await execute(http, priority="high", configuration={"language": "python"})
    assert submitted["status"] == "accepted"  # the guide's unit test; its handler says "queued" (see README)
    assert submitted["created"] is True
    assert {"session_id", "message", "created_at", "estimated_completion"} <= set(submitted)
    events = await ndjson_events(http, f"/workflow-events/{submitted['session_id']}")
    assert events[-1]["type"] == "workflow_completed"
    response = await http.get(f"/workflow-status/{submitted['session_id']}")
    assert response.status_code == 200
    status = response.json()
    assert set(status) >= STATUS_FIELDS
    assert status["status"] == "completed"
    assert status["progress"] == 100
    assert status["priority"] == "high"
    assert status["current_phase"] == ""  # zero values are printed, not dropped
    assert status["errors"] == []
    assert status["phases_completed"][0] == "requirements"
    assert {p["state"] for p in status["phases"]} == {"completed"}
    # The results at the top level, where the guide's integration test looks for them.
    assert status["generated_code"][0]["path"] == "app.py"
    assert "result" not in status and "state" not in status
    assert status["usage"]["input_tokens"] == "60"  # int64 is a JSON string in proto3 JSON
    versioned = await http.get(f"/api/v1/workflow-status/{submitted['session_id']}")
    assert versioned.json() == status
    assert "x-request-id" in response.headers
    assert "grpc-status" not in response.headers
    assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    ("body", "field", "text"),
    [
        ({"requirements": "x" * 50_001, "workflow_type": "full"}, "requirements", "limit is 50000"),
        ({"requirements": "r", "workflow_type": "nope"}, "workflow_type", "Unknown workflow type"),
        (  # keys a type does not document are passed on with a warning; a documented one must fit its type
            {"requirements": "r", "workflow_type": "full", "configuration": {"max_fix_iterations": "two"}},
            "configuration.max_fix_iterations",
            "integer",
        ),
    ],
)
async def test_bad_input_is_400_with_field_violations(
    http: httpx.AsyncClient, body: dict[str, Any], field: str, text: str
) -> None:
    response = await http.post("/execute-workflow", json=body, headers={"x-request-id": "rest-req-1"})
    assert response.status_code == 400, response.text
    payload = response.json()
    assert payload["error"] in {"INVALID_ARGUMENT", "UNKNOWN_WORKFLOW_TYPE"}
    assert text in field_violations(payload)[field]
    assert payload["detail"] == payload["message"]
    assert payload["request_id"] == "rest-req-1"


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('{"workflow_type": "full"}', {"type": "missing", "loc": ["body", "requirements"], "msg": "Field required"}),
        (
            '{"requirements": 5, "workflow_type": "full"}',
            {"type": "string_type", "loc": ["body", "requirements"], "msg": "Input should be a valid string"},
        ),
        (
            '{"requirements": "r", "workflow_type": "full", "configuration": []}',
            {"type": "dict_type", "loc": ["body", "configuration"], "msg": "Input should be a valid dictionary"},
        ),
        (
            '{"requirements": "r", "workflow_type": "full", "priority": "SUPER"}',
            {"type": "string_pattern_mismatch", "loc": ["body", "priority"]},
        ),
        ('{"requirements": ', {"type": "json_invalid", "msg": "JSON decode error"}),
        ("[1, 2]", {"type": "model_attributes_type", "loc": ["body"]}),
        ("", {"type": "missing", "loc": ["body"]}),
    ],
)
async def test_a_body_that_fails_the_request_model_is_fastapis_422(
    http: httpx.AsyncClient, content: str, problem: dict[str, Any]
) -> None:
    response = await http.post("/execute-workflow", content=content, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    payload = response.json()
    assert payload["error"] == "VALIDATION_ERROR"
    [found] = payload["detail"]
    assert problem.items() <= found.items(), found
    assert payload["request_id"] == response.headers["x-request-id"]


async def test_priority_words_reach_grpc_as_the_enum(http: httpx.AsyncClient, rest_app: App) -> None:
    import grpc

    from service.gen.orchestrator.v1 import orchestrator_service_pb2 as pb
    from service.gen.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc
    from service.gen.orchestrator.v1.enums_pb2 import Priority

    submitted = await execute(http, priority="critical", configuration={"team": "blue"})
    assert submitted["warnings"] and "team" in submitted["warnings"][0]  # kept and passed on, not refused
    async with grpc.aio.insecure_channel(f"127.0.0.1:{rest_app.grpc_port}") as channel:
        status = await pb_grpc.OrchestratorServiceStub(channel).GetWorkflowStatus(
            pb.GetWorkflowStatusRequest(session_id=submitted["session_id"])
        )
    assert status.priority == Priority.PRIORITY_CRITICAL


async def test_unknown_query_parameter_and_paths(http: httpx.AsyncClient) -> None:
    response = await http.get("/workflow-types", params={"bogus": "1"})
    assert response.status_code == 400
    assert response.json()["error"] == "INVALID_ARGUMENT"
    response = await http.get("/no-such-path")
    assert response.status_code == 404
    assert response.json()["error"] == "NOT_FOUND"
    response = await http.get("/workflow-status/00000000-0000-0000-0000-000000000000")
    assert response.status_code == 404
    body = response.json()
    assert body["error"] == "NOT_FOUND" and "No workflow session" in body["detail"]
    for query, field in (({"status": "bogus"}, "status"), ({"page_size": "ten"}, "page_size")):
        response = await http.get("/workflows", params=query)
        assert response.status_code == 400, response.text
        assert field in field_violations(response.json())


async def test_watch_as_ndjson_and_sse_and_resume(http: httpx.AsyncClient) -> None:
    submitted = await execute(http)
    session_id = submitted["session_id"]
    events = await ndjson_events(http, f"/workflow-events/{session_id}")
    sequences = [int(e["sequence"]) for e in events]
    assert sequences == list(range(1, len(events) + 1))
    assert events[-1]["result"]["generated_code"]

    resumed = await ndjson_events(http, f"/api/v1/workflow-events/{session_id}?after_sequence=4")
    assert [int(e["sequence"]) for e in resumed] == sequences[4:]

    sse = []
    async with http.stream(
        "GET", f"/workflow-events/{session_id}", headers={"accept": "text/event-stream"}
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                sse.append(json.loads(line.removeprefix("data:").strip()))
    assert [int(e["sequence"]) for e in sse] == sequences
    assert sse[-1]["type"] == "workflow_completed"


async def test_live_watch_over_rest_sees_every_event(http: httpx.AsyncClient, runner: ScriptedRunner) -> None:
    gate = runner.gate("review")
    submitted = await execute(http)
    watcher = asyncio.create_task(ndjson_events(http, f"/workflow-events/{submitted['session_id']}"))
    await asyncio.wait_for(runner.started_event(submitted["session_id"], "review").wait(), 10)
    gate.set()
    events = await asyncio.wait_for(watcher, 20)
    assert [int(e["sequence"]) for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["type"] == "workflow_completed"


async def test_idempotent_execute_cancel_and_list(http: httpx.AsyncClient, runner: ScriptedRunner) -> None:
    runner.gate("requirements")
    first = await execute(http, request_id="rest-key")
    second = await execute(http, request_id="rest-key")
    assert first["session_id"] == second["session_id"]
    assert first["created"] is True and second["created"] is False

    cancelled = await http.post(f"/cancel-workflow/{first['session_id']}", json={"reason": "test"})
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    again = await http.post(f"/api/v1/cancel-workflow/{first['session_id']}", json={})
    assert again.status_code == 400  # FAILED_PRECONDITION
    assert again.json()["error"] == "FAILED_PRECONDITION"

    for i in range(3):
        await execute(http, requirements=f"r{i}", workflow_type="design")
    page = (await http.get("/workflows", params={"page_size": 2})).json()
    assert len(page["workflows"]) == 2 and page["next_page_token"]
    rest = (await http.get("/api/v1/workflows", params={"page_size": 2, "page_token": page["next_page_token"]})).json()
    assert len(rest["workflows"]) == 2 and rest["next_page_token"] == ""
    ids = [w["session_id"] for w in page["workflows"] + rest["workflows"]]
    assert len(set(ids)) == 4 and first["session_id"] in ids
    cancelled_only = (await http.get("/workflows", params={"status": "cancelled"})).json()
    assert [w["session_id"] for w in cancelled_only["workflows"]] == [first["session_id"]]
    assert cancelled_only["workflows"][0]["status"] == "cancelled"


async def test_types_health_and_metrics(http: httpx.AsyncClient) -> None:
    response = await http.get("/workflow-types")
    body = response.json()
    # The guide's handler: {"workflow_types": [names]}; the descriptions beside them.
    assert "full" in body["workflow_types"]
    assert [t["name"] for t in body["workflow_type_details"]] == body["workflow_types"]
    assert (await http.get("/api/v1/workflow-types")).json() == body
    # Cacheable: a max-age, an ETag, and 304 when it still matches.
    assert "max-age=" in response.headers["cache-control"]
    etag = response.headers["etag"]
    again = await http.get("/workflow-types", headers={"if-none-match": etag})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == etag
    stale = await http.get("/workflow-types", headers={"if-none-match": '"stale"'})
    assert stale.status_code == 200 and stale.json() == body
    health = await http.get("/health")
    assert health.status_code == 200
    assert health.json()["status"] == "serving"
    metrics = await http.get("/metrics")
    assert metrics.status_code == 200
    assert 'grpc_server_handled_total{grpc_code="OK",grpc_method="Health"' in metrics.text


async def test_auth_through_envoy_is_401_json_without_a_token_and_200_with_one(
    tmp_path: Path, runner: ScriptedRunner
) -> None:
    secret = "s" * 32
    auth = {"enabled": True, "hs256_secret": secret, "issuer": "https://issuer.test", "audience": "orchestrator"}
    application = App(make_settings(tmp_path / "data", envoy=True, auth=auth), runner=runner)
    await application.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{application.http_port}", timeout=20) as http:
            response = await http.get("/workflow-types")
            assert response.status_code == 401, response.text
            body = response.json()
            assert body["error"] == "TOKEN_MISSING"
            assert body["detail"] == body["message"] and body["request_id"]
            now = int(time.time())
            token = jwt.encode(
                {
                    "sub": "t1",
                    "iss": auth["issuer"],
                    "aud": auth["audience"],
                    "exp": now + 60,
                    "scope": "workflows:read",
                },
                secret,
                algorithm="HS256",
            )
            response = await http.get("/workflow-types", headers={"authorization": f"Bearer {token}"})
            assert response.status_code == 200, response.text
            assert "full" in response.json()["workflow_types"]
            response = await http.post(
                "/execute-workflow",
                json={"requirements": "r", "workflow_type": "full"},
                headers={"authorization": f"Bearer {token}"},
            )
            assert response.status_code == 403, response.text  # a read-only token
            assert response.json()["error"] == "SCOPE_MISSING"
            assert (await http.get("/health")).status_code == 200  # probes need no token
    finally:
        await application.stop(grace=0.5)


async def test_the_envoy_face_and_the_python_face_agree(http: httpx.AsyncClient, rest_app: App) -> None:
    """Envoy's Lua filter and gateway.restface.to_rest (which the live endpoint uses) are one transform."""
    import grpc
    from google.protobuf import json_format

    from gateway import restface
    from service.gen.orchestrator.v1 import orchestrator_service_pb2 as pb
    from service.gen.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc

    submitted = await execute(http, priority="low", configuration={"language": "python", "extra": {"a": [1, None]}})
    async with grpc.aio.insecure_channel(f"127.0.0.1:{rest_app.grpc_port}") as channel:
        stub = pb_grpc.OrchestratorServiceStub(channel)
        # The stream ends after the terminal event: then the status holds the whole result.
        async for _ in stub.WatchWorkflow(pb.WatchWorkflowRequest(session_id=submitted["session_id"])):
            pass
        status = await stub.GetWorkflowStatus(pb.GetWorkflowStatusRequest(session_id=submitted["session_id"]))
        types = await stub.ListWorkflowTypes(pb.ListWorkflowTypesRequest())
    pairs = [
        (status, f"/workflow-status/{submitted['session_id']}"),
        (types, "/workflow-types"),
    ]
    for message, path in pairs:
        proto_json = json_format.MessageToDict(
            message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
        expected = restface.to_rest(message.DESCRIPTOR.full_name, proto_json)
        assert (await http.get(path)).json() == expected, path


async def test_trailing_slashes_and_grpc_web_content_types_get_the_rest_face_too(http: httpx.AsyncClient) -> None:
    # The transcoder ignores a trailing slash and serves application/grpc-web bodies as JSON: the REST face must
    # not be skipped by either.
    body = {"requirements": "r", "workflow_type": "full", "priority": "PRIORITY_HIGH"}
    response = await http.post("/execute-workflow/", json=body)
    assert response.status_code == 422, response.text
    submitted = await execute(http)
    for headers in ({}, {"content-type": "application/grpc-web+json"}):
        status = await http.get(f"/workflow-status/{submitted['session_id']}/", headers=headers)
        assert status.status_code == 200, status.text
        assert status.json()["status"] in {"queued", "running", "completed"} and "state" not in status.json()


@pytest.mark.parametrize(
    "content",
    [
        '{"requirements": "r", "workflow_type": "full", "configuration": {"n": 1e400}}',
        '{"requirements": "\\ud800", "workflow_type": "full"}',
        '{"requirements": "\\udc00x", "workflow_type": "full"}',
    ],
    ids=["infinite number", "lone high surrogate", "lone low surrogate"],
)
async def test_json_protobuf_cannot_hold_is_refused_not_altered(http: httpx.AsyncClient, content: str) -> None:
    response = await http.post("/execute-workflow", content=content, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert [p["type"] for p in response.json()["detail"]] == ["json_invalid"]


async def test_workflow_types_are_cacheable_only_privately(http: httpx.AsyncClient) -> None:
    # An answer to an authenticated request: a shared cache must not hand it to others (RFC 9111, 3.5).
    assert (await http.get("/workflow-types")).headers["cache-control"].startswith("private, max-age=")
