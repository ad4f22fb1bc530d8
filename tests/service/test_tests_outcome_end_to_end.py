"""A workflow whose generated tests never ran, or failed, says so: in its events, its status and the quick start's
viewer, never as `0 passed, 0 failed` under a clean-looking `completed`."""

from __future__ import annotations

import subprocess
import sys
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

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]


def view_status(body: str) -> str:
    """What the quick start prints for a status: scripts/quickstart_view.py, fed the REST body."""
    shown = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "quickstart_view.py"), "status"],
        input=body,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    return shown.stdout


async def run_implement(app: App, configuration: dict[str, object]) -> tuple[list[pb.WatchWorkflowResponse], str]:
    """Runs an `implement` workflow (code, then tests in the sandbox) over gRPC; its events and REST status body."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
        stub = pb_grpc.OrchestratorServiceStub(channel)
        config = struct_pb2.Struct()
        config.update(configuration)
        submitted = await stub.ExecuteWorkflow(
            pb.ExecuteWorkflowRequest(
                requirements="A temperature converter", workflow_type="implement", configuration=config
            )
        )
        events = await watch_all(stub, submitted.session_id)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.http_port}", timeout=30) as http:
        response = await http.get(f"/workflow-status/{submitted.session_id}")
    assert response.status_code == 200, response.text
    return events, response.text


@pytest.fixture
def python_without_pytest(tmp_path: Path) -> str:
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True, timeout=60)
    return str(bare / "bin" / "python")


@pytest.fixture
async def app_without_pytest(tmp_path: Path, python_without_pytest: str) -> AsyncIterator[App]:
    """The service as a fresh clone's quick start used to run it: an interpreter for the sandbox without pytest."""
    settings = make_settings(tmp_path / "data", envoy=True, agents={"sandbox": {"python": python_without_pytest}})
    application = App(settings)
    await application.start()
    try:
        yield application
    finally:
        await application.stop(grace=0.5)


@pytest.fixture
async def offline_app(tmp_path: Path) -> AsyncIterator[App]:
    application = App(make_settings(tmp_path / "data", envoy=True))
    await application.start()
    try:
        yield application
    finally:
        await application.stop(grace=0.5)


async def test_tests_that_never_ran_are_reported_as_not_run(app_without_pytest: App) -> None:
    events, body = await run_implement(app_without_pytest, {"max_fix_iterations": 0})
    done = events[-1]
    assert done.type == enums.EVENT_TYPE_WORKFLOW_COMPLETED
    assert done.message.startswith("workflow completed, but tests did not run: the test runner did not start")
    assert "No module named pytest" in done.message
    tests_phase = next(e for e in events if e.type == enums.EVENT_TYPE_PHASE_COMPLETED and e.phase == "tests")
    assert tests_phase.message.startswith("tests did not run:")
    assert tests_phase.data["report"]["summary"] == tests_phase.message

    shown = view_status(body)
    assert "Tests did not run: the test runner did not start" in shown, shown
    assert "No module named pytest" in shown
    assert "0 passed, 0 failed" not in shown


async def test_failing_generated_tests_are_counted_in_the_completion(offline_app: App) -> None:
    events, body = await run_implement(offline_app, {"simulate_failing_test": True, "max_fix_iterations": 0})
    done = events[-1]
    assert done.type == enums.EVENT_TYPE_WORKFLOW_COMPLETED
    report = done.result.test_report
    assert report.failed == 1 and not report.success
    total = report.passed + report.failed + report.errors
    expected = f"1 of {total} generated tests failed"
    assert done.message == f"workflow completed, but {expected}"
    assert expected in view_status(body)


async def test_passing_generated_tests_say_so(offline_app: App) -> None:
    events, body = await run_implement(offline_app, {})
    done = events[-1]
    report = done.result.test_report
    assert report.success and report.passed > 0
    assert done.message == f"workflow completed; {report.passed} generated tests passed"
    assert f"{report.passed} generated tests passed" in view_status(body)
