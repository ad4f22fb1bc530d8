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

STATUS_FIELDS = {"session_id", "state", "progress", "current_phase", "phases_completed", "errors", "partial_results"}


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
    for detail in body.get("details", []):
        if detail.get("@type", "").endswith("google.rpc.BadRequest"):
            return {v["field"]: v["description"] for v in detail["field_violations"]}
    raise AssertionError(f"no BadRequest detail in {body}")


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
                if event["type"] != "EVENT_TYPE_HEARTBEAT":
                    events.append(event)
    return events


async def test_execute_status_and_documented_fields(http: httpx.AsyncClient) -> None:
    submitted = await execute(http, priority="PRIORITY_HIGH", configuration={"language": "python"})
    assert submitted["state"] == "WORKFLOW_STATE_QUEUED"
    assert submitted["created"] is True
    assert {"session_id", "message", "created_at"} <= set(submitted)
    events = await ndjson_events(http, f"/workflow-events/{submitted['session_id']}")
    assert events[-1]["type"] == "EVENT_TYPE_WORKFLOW_COMPLETED"
    response = await http.get(f"/workflow-status/{submitted['session_id']}")
    assert response.status_code == 200
    status = response.json()
    assert set(status) >= STATUS_FIELDS
    assert status["state"] == "WORKFLOW_STATE_COMPLETED"
    assert status["progress"] == 100
    assert status["priority"] == "PRIORITY_HIGH"
    assert status["current_phase"] == ""  # zero values are printed, not dropped
    assert status["errors"] == []
    assert status["phases_completed"][0] == "requirements"
    assert status["result"]["generated_code"][0]["path"] == "app.py"
    assert status["result"]["usage"]["input_tokens"] == "60"  # int64 is a JSON string in proto3 JSON
    versioned = await http.get(f"/api/v1/workflow-status/{submitted['session_id']}")
    assert versioned.json() == status
    assert "x-request-id" in response.headers
    assert "grpc-status" not in response.headers
    assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    ("body", "field", "text"),
    [
        ({"workflow_type": "full"}, "requirements", "required"),
        ({"requirements": "x" * 50_001, "workflow_type": "full"}, "requirements", "limit is 50000"),
        ({"requirements": "r", "workflow_type": "nope"}, "workflow_type", "Unknown workflow type"),
        (
            {"requirements": "r", "workflow_type": "full", "configuration": {"bogus": True}},
            "configuration.bogus",
            "unknown key",
        ),
    ],
)
async def test_bad_input_is_400_with_field_violations(
    http: httpx.AsyncClient, body: dict[str, Any], field: str, text: str
) -> None:
    response = await http.post("/execute-workflow", json=body, headers={"x-request-id": "rest-req-1"})
    assert response.status_code == 400, response.text
    payload = response.json()
    assert payload["code"] == 3
    assert text in field_violations(payload)[field]
    infos = [d for d in payload["details"] if d["@type"].endswith("google.rpc.RequestInfo")]
    assert infos and infos[0]["request_id"] == "rest-req-1"


async def test_bad_priority_and_malformed_json_are_400_json(http: httpx.AsyncClient) -> None:
    for content in ('{"requirements": "r", "workflow_type": "full", "priority": "SUPER"}', '{"requirements": '):
        response = await http.post("/execute-workflow", content=content, headers={"content-type": "application/json"})
        assert response.status_code == 400, response.text
        payload = response.json()
        assert payload["code"] == 3
        assert field_violations(payload)


async def test_unknown_query_parameter_and_paths(http: httpx.AsyncClient) -> None:
    response = await http.get("/workflow-types", params={"bogus": "1"})
    assert response.status_code == 400
    assert response.json()["code"] == 3
    response = await http.get("/no-such-path")
    assert response.status_code == 404
    assert response.json()["code"] == 5
    response = await http.get("/workflow-status/00000000-0000-0000-0000-000000000000")
    assert response.status_code == 404
    body = response.json()
    assert body["code"] == 5 and "No workflow session" in body["message"]


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
    assert sse[-1]["type"] == "EVENT_TYPE_WORKFLOW_COMPLETED"


async def test_live_watch_over_rest_sees_every_event(http: httpx.AsyncClient, runner: ScriptedRunner) -> None:
    gate = runner.gate("review")
    submitted = await execute(http)
    watcher = asyncio.create_task(ndjson_events(http, f"/workflow-events/{submitted['session_id']}"))
    await asyncio.wait_for(runner.started_event(submitted["session_id"], "review").wait(), 10)
    gate.set()
    events = await asyncio.wait_for(watcher, 20)
    assert [int(e["sequence"]) for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["type"] == "EVENT_TYPE_WORKFLOW_COMPLETED"


async def test_idempotent_execute_cancel_and_list(http: httpx.AsyncClient, runner: ScriptedRunner) -> None:
    runner.gate("requirements")
    first = await execute(http, request_id="rest-key")
    second = await execute(http, request_id="rest-key")
    assert first["session_id"] == second["session_id"]
    assert first["created"] is True and second["created"] is False

    cancelled = await http.post(f"/cancel-workflow/{first['session_id']}", json={"reason": "test"})
    assert cancelled.status_code == 200
    assert cancelled.json()["state"] == "WORKFLOW_STATE_CANCELLED"
    again = await http.post(f"/api/v1/cancel-workflow/{first['session_id']}", json={})
    assert again.status_code == 400  # FAILED_PRECONDITION
    assert again.json()["code"] == 9

    for i in range(3):
        await execute(http, requirements=f"r{i}", workflow_type="design")
    page = (await http.get("/workflows", params={"page_size": 2})).json()
    assert len(page["workflows"]) == 2 and page["next_page_token"]
    rest = (await http.get("/api/v1/workflows", params={"page_size": 2, "page_token": page["next_page_token"]})).json()
    assert len(rest["workflows"]) == 2 and rest["next_page_token"] == ""
    ids = [w["session_id"] for w in page["workflows"] + rest["workflows"]]
    assert len(set(ids)) == 4 and first["session_id"] in ids
    cancelled_only = (await http.get("/workflows", params={"state": "WORKFLOW_STATE_CANCELLED"})).json()
    assert [w["session_id"] for w in cancelled_only["workflows"]] == [first["session_id"]]


async def test_types_health_and_metrics(http: httpx.AsyncClient) -> None:
    types = (await http.get("/workflow-types")).json()["workflow_types"]
    assert "full" in {t["name"] for t in types}
    assert (await http.get("/api/v1/workflow-types")).json()["workflow_types"] == types
    health = await http.get("/health")
    assert health.status_code == 200
    assert health.json()["status"] == "SERVING_STATUS_SERVING"
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
            assert body["code"] == 16
            reasons = [d["reason"] for d in body["details"] if d["@type"].endswith("google.rpc.ErrorInfo")]
            assert reasons == ["TOKEN_MISSING"]
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
            assert "full" in {t["name"] for t in response.json()["workflow_types"]}
            response = await http.post(
                "/execute-workflow",
                json={"requirements": "r", "workflow_type": "full"},
                headers={"authorization": f"Bearer {token}"},
            )
            assert response.status_code == 403 and response.json()["code"] == 7  # read-only token
            assert (await http.get("/health")).status_code == 200  # probes need no token
    finally:
        await application.stop(grace=0.5)
