"""GET /metrics of a real server: the standard gRPC server metrics with go-grpc-prometheus's names and labels,
the domain metrics after real workflows (scripted and the built-in offline model with the real sandbox), and
`promtool check metrics` on the output."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import CollectorRegistry, generate_latest

from service.app import App
from service.gen.orchestrator.v1 import enums_pb2 as enums
from service.gen.orchestrator.v1 import orchestrator_service_pb2 as pb
from service.gen.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc
from service.metrics import MAX_MODEL_LABELS, OTHER_MODEL, ServiceMetrics
from tests.conftest import make_settings
from tests.observability import promtool, run_workflow, samples, scrape, total, value, wait_for
from tests.runners import ScriptedRunner

pytestmark = pytest.mark.timeout(90)

SERVICE = "orchestrator.v1.OrchestratorService"
HEALTH = "grpc.health.v1.Health"
REFLECTION = "grpc.reflection.v1alpha.ServerReflection"


def rpc(grpc_type: str, method: str, service: str = SERVICE) -> dict[str, str]:
    return {"grpc_type": grpc_type, "grpc_service": service, "grpc_method": method}


async def test_standard_grpc_server_metrics(
    app: App, channel: grpc.aio.Channel, stub: pb_grpc.OrchestratorServiceStub
) -> None:
    before = samples(await scrape(app))
    # Every method exists at zero before its first call, every code included (as go-grpc-prometheus does).
    assert value(before, "grpc_server_started_total", **rpc("unary", "ListWorkflowTypes")) == 0
    assert value(before, "grpc_server_handled_total", **rpc("unary", "ExecuteWorkflow"), grpc_code="Unavailable") == 0
    assert value(before, "grpc_server_handling_seconds_count", **rpc("server_stream", "WatchWorkflow")) == 0
    assert value(before, "grpc_server_started_total", **rpc("server_stream", "Watch", HEALTH)) == 0

    submitted = await stub.ExecuteWorkflow(pb.ExecuteWorkflowRequest(requirements="a clock", workflow_type="design"))
    events = [
        e
        async for e in stub.WatchWorkflow(pb.WatchWorkflowRequest(session_id=submitted.session_id))
        if e.type != enums.EVENT_TYPE_HEARTBEAT
    ]
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.GetWorkflowStatus(pb.GetWorkflowStatusRequest(session_id="no-such-session"))
    assert missing.value.code() is grpc.StatusCode.NOT_FOUND
    await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=SERVICE))
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    ask = reflection_pb2.ServerReflectionRequest(list_services="")
    replies = [r async for r in reflection.ServerReflectionInfo(iter([ask]))]
    assert len(replies) == 1

    parsed = samples(await scrape(app))
    assert value(parsed, "grpc_server_started_total", **rpc("unary", "ExecuteWorkflow")) == 1
    assert value(parsed, "grpc_server_handled_total", **rpc("unary", "ExecuteWorkflow"), grpc_code="OK") == 1
    assert value(parsed, "grpc_server_msg_received_total", **rpc("unary", "ExecuteWorkflow")) == 1
    assert value(parsed, "grpc_server_msg_sent_total", **rpc("unary", "ExecuteWorkflow")) == 1
    assert value(parsed, "grpc_server_handling_seconds_count", **rpc("unary", "ExecuteWorkflow")) == 1
    assert value(parsed, "grpc_server_handled_total", **rpc("unary", "GetWorkflowStatus"), grpc_code="NotFound") == 1
    assert value(parsed, "grpc_server_msg_sent_total", **rpc("unary", "GetWorkflowStatus")) == 0
    assert value(parsed, "grpc_server_handled_total", **rpc("server_stream", "WatchWorkflow"), grpc_code="OK") == 1
    assert value(parsed, "grpc_server_msg_sent_total", **rpc("server_stream", "WatchWorkflow")) >= len(events)
    assert value(parsed, "grpc_server_handled_total", **rpc("unary", "Check", HEALTH), grpc_code="OK") == 1
    bidi = rpc("bidi_stream", "ServerReflectionInfo", REFLECTION)
    assert value(parsed, "grpc_server_handled_total", **bidi, grpc_code="OK") == 1
    assert value(parsed, "grpc_server_msg_received_total", **bidi) == 1
    assert value(parsed, "grpc_server_msg_sent_total", **bidi) == 1
    grpc_types = {dict(series)["grpc_type"] for name, series in parsed if name == "grpc_server_started_total"}
    assert grpc_types == {"unary", "server_stream", "bidi_stream"}


async def test_a_watch_the_client_drops_is_counted_as_cancelled(
    app: App, runner: ScriptedRunner, stub: pb_grpc.OrchestratorServiceStub
) -> None:
    gate = runner.gate("design")
    submitted = await stub.ExecuteWorkflow(pb.ExecuteWorkflowRequest(requirements="a clock", workflow_type="design"))
    call = stub.WatchWorkflow(pb.WatchWorkflowRequest(session_id=submitted.session_id))
    await call.read()  # the stream is open and serving
    opened = samples(await scrape(app))
    assert value(opened, "orchestrator_watch_streams_open") == 1
    call.cancel()

    async def cancelled() -> bool:
        parsed = samples(await scrape(app))
        return (
            value(parsed, "grpc_server_handled_total", **rpc("server_stream", "WatchWorkflow"), grpc_code="Canceled")
            == 1
            and value(parsed, "orchestrator_watch_streams_open") == 0
        )

    await wait_for(cancelled, 10, "the dropped watch to be counted as CANCELLED")
    gate.set()


@pytest.fixture
async def one_at_a_time(tmp_path: Path, runner: ScriptedRunner) -> AsyncIterator[App]:
    application = App(make_settings(tmp_path / "data", max_running_workflows=1), runner=runner)
    try:
        await application.start()
        yield application
    finally:
        await application.stop(grace=0.5)


async def test_queued_and_running_gauges(one_at_a_time: App, runner: ScriptedRunner) -> None:
    app = one_at_a_time
    gate = runner.gate("requirements")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
        stub = pb_grpc.OrchestratorServiceStub(channel)
        for _ in range(3):
            await stub.ExecuteWorkflow(pb.ExecuteWorkflowRequest(requirements="a clock", workflow_type="full"))

        async def one_running_two_queued() -> bool:
            parsed = samples(await scrape(app))
            return (
                value(parsed, "orchestrator_workflows_running") == 1
                and value(parsed, "orchestrator_workflows_queued", workflow_type="full") == 2
            )

        await wait_for(one_running_two_queued, 20, "one workflow running and two queued")
        parsed = samples(await scrape(app))
        assert value(parsed, "orchestrator_workflows_queued", workflow_type="design") == 0  # every type, at zero
        gate.set()

        async def all_done() -> bool:
            parsed = samples(await scrape(app))
            return (
                value(parsed, "orchestrator_workflows_finished_total", workflow_type="full", state="completed") == 3
                and value(parsed, "orchestrator_workflows_queued", workflow_type="full") == 0
                and value(parsed, "orchestrator_workflows_running") == 0
            )

        await wait_for(all_done, 30, "the three workflows to finish")
    parsed = samples(await scrape(app))
    assert value(parsed, "orchestrator_workflows_submitted_total", workflow_type="full") == 3
    assert value(parsed, "orchestrator_queue_wait_seconds_count", workflow_type="full") == 3
    # The two that waited behind the gated one waited at least until it was released.
    assert (value(parsed, "orchestrator_queue_wait_seconds_sum", workflow_type="full") or 0) > 0


async def test_a_failed_phase_and_workflow_are_counted(app: App, runner: ScriptedRunner) -> None:
    runner.fail("design", "the architect gave up")
    _, types = await run_workflow(app, "design")
    assert types[-1] == "EVENT_TYPE_WORKFLOW_FAILED"
    parsed = samples(await scrape(app))
    assert value(parsed, "orchestrator_workflows_finished_total", workflow_type="design", state="failed") == 1
    labels = {"workflow_type": "design", "phase": "design", "outcome": "failed"}
    assert value(parsed, "orchestrator_phase_duration_seconds_count", **labels) == 1


@pytest.fixture
async def offline_app(tmp_path: Path) -> AsyncIterator[App]:
    application = App(make_settings(tmp_path / "data"))  # no runner: the real one, on the offline model
    try:
        await application.start()
        yield application
    finally:
        await application.stop(grace=0.5)


async def test_domain_metrics_after_a_real_workflow_and_promtool_accepts_them(offline_app: App) -> None:
    session_id, types = await run_workflow(offline_app, "full", request_id="metrics-request-1")
    assert types[-1] == "EVENT_TYPE_WORKFLOW_COMPLETED"
    text = await scrape(offline_app)
    parsed = samples(text)

    assert value(parsed, "orchestrator_workflows_submitted_total", workflow_type="full") == 1
    assert value(parsed, "orchestrator_workflows_finished_total", workflow_type="full", state="completed") == 1
    assert value(parsed, "orchestrator_queue_wait_seconds_count", workflow_type="full") == 1
    for phase in ("requirements", "design", "implementation", "tests", "review", "documentation"):
        labels = {"workflow_type": "full", "phase": phase, "outcome": "completed"}
        assert value(parsed, "orchestrator_phase_duration_seconds_count", **labels) == 1, phase
    # Six roles, one model request each at least; the tester's fix rounds may add more.
    requests = value(parsed, "orchestrator_model_requests_total", model="offline", outcome="ok") or 0
    assert requests >= 6
    assert value(parsed, "orchestrator_model_request_duration_seconds_count", model="offline") == requests
    assert (value(parsed, "orchestrator_model_tokens_total", model="offline", token_type="input") or 0) > 0
    assert (value(parsed, "orchestrator_model_tokens_total", model="offline", token_type="output") or 0) > 0
    assert value(parsed, "orchestrator_model_cost_usd_total", model="offline") == 0  # priced at 0 in the table
    assert value(parsed, "orchestrator_sandbox_runs_total", outcome="passed") == 1
    assert value(parsed, "orchestrator_sandbox_run_duration_seconds_count") == 1
    assert total(parsed, "orchestrator_model_retries_total") == 0
    assert value(parsed, "orchestrator_workflows_running") == 0
    assert value(parsed, "orchestrator_workflows_queued", workflow_type="full") == 0
    assert value(parsed, "process_resident_memory_bytes") is not None

    # No session id, request id or other per-request value ever becomes a label.
    assert session_id not in text and "metrics-request-1" not in text

    checked = promtool("check", "metrics", stdin=text)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_model_labels_are_bounded() -> None:
    # Model ids come from request configurations: a client must not be able to mint series without end.
    metrics = ServiceMetrics(CollectorRegistry())
    for n in range(MAX_MODEL_LABELS + 5):
        metrics.model_usage(f"openai:model-{n}", 1, 1, 0.0)
    parsed = samples(generate_latest(metrics.registry).decode())
    models = {dict(series)["model"] for name, series in parsed if name == "orchestrator_model_cost_usd_total"}
    assert len(models) == MAX_MODEL_LABELS + 1 and OTHER_MODEL in models
    assert value(parsed, "orchestrator_model_tokens_total", model=OTHER_MODEL, token_type="input") == 5


async def test_metrics_token_guards_the_endpoint_when_set(tmp_path: Path) -> None:
    from pydantic import SecretStr

    application = App(
        make_settings(tmp_path / "data", auth={"enabled": False, "metrics_token": SecretStr("scrape-me")})
    )
    await application.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{application.metrics_port}", timeout=10) as http:
            assert (await http.get("/metrics")).status_code == 401
            assert (await http.get("/metrics", headers={"Authorization": "Bearer wrong"})).status_code == 401
            ok = await http.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
            assert ok.status_code == 200 and "grpc_server_started_total" in ok.text
    finally:
        await application.stop(grace=0.5)
