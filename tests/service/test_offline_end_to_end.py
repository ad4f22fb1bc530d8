"""The product as a user first meets it: the built-in offline model, the real sandbox, through the API."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest
from google.protobuf import struct_pb2

from service.app import App
from service.gen.orchestrator.v1 import enums_pb2 as enums
from service.gen.orchestrator.v1 import orchestrator_service_pb2 as pb
from service.gen.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc
from tests.conftest import make_settings
from tests.service.test_grpc_api import watch_all

pytestmark = pytest.mark.slow


@pytest.fixture
async def offline_app(tmp_path: Path) -> AsyncIterator[App]:
    application = App(make_settings(tmp_path / "data", envoy=True))  # no runner given: the real one, offline
    await application.start()
    try:
        yield application
    finally:
        await application.stop(grace=0.5)


async def test_full_workflow_over_rest_generates_code_whose_tests_pass(offline_app: App) -> None:
    base = f"http://127.0.0.1:{offline_app.http_port}"
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        submitted = (
            await http.post(
                "/execute-workflow",
                json={
                    "requirements": "A todo list with items that can be added and completed",
                    "workflow_type": "full",
                },
            )
        ).json()
        assert "offline" in submitted["message"] and "real model" in submitted["message"]
        phases = []
        async with http.stream("GET", f"/workflow-events/{submitted['session_id']}") as response:
            async for line in response.aiter_lines():
                if line.strip():
                    event = json.loads(line)
                    if event["type"] == "phase_completed":
                        phases.append(event["phase"])
        assert phases == ["requirements", "design", "implementation", "tests", "review", "documentation"]
        status = (await http.get(f"/workflow-status/{submitted['session_id']}")).json()
    assert status["status"] == "completed"
    result = status  # REST puts the results at the top level of the status, where the guide looks
    paths = [f["path"] for f in result["generated_code"]]
    assert any(p.endswith(".py") and "test" not in p for p in paths)
    assert any("test" in p for p in paths)
    report = result["test_report"]
    assert report["success"] is True and report["passed"] > 0 and report["failed"] == 0
    assert result["review"]["summary"] and result["documentation"]
    assert result["usage"]["models"] == ["offline"] and result["usage"]["cost_usd"] == 0
    assert int(result["usage"]["input_tokens"]) > 0
    assert status["model"] == "offline"


async def test_a_broken_generated_test_is_reported_failing(offline_app: App) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{offline_app.grpc_port}") as channel:
        stub = pb_grpc.OrchestratorServiceStub(channel)
        config = struct_pb2.Struct()
        config.update({"simulate_failing_test": True, "max_fix_iterations": 1})
        response = await stub.ExecuteWorkflow(
            pb.ExecuteWorkflowRequest(
                requirements="A temperature converter", workflow_type="implement", configuration=config
            )
        )
        events = await watch_all(stub, response.session_id)
        assert events[-1].type == enums.EVENT_TYPE_WORKFLOW_COMPLETED
        report = events[-1].result.test_report
        assert report.failed >= 1 and not report.success
        assert "test_deliberately_failing" in report.output
        assert report.iterations == 2
        # "completed" alone would read as a clean run: the status's errors say the tests failed.
        status = await stub.GetWorkflowStatus(pb.GetWorkflowStatusRequest(session_id=response.session_id))
        assert [(e.phase, e.code) for e in status.error_details] == [("tests", "tests_failed")]
        assert "failed" in status.error_details[0].message
        assert list(status.errors) == [status.error_details[0].message]
