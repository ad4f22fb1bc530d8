"""Every RPC over real gRPC on loopback against the real engine on SQLite files; the model is scripted."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from service.app import App
from service.gen.orchestrator.v1 import enums_pb2 as enums
from service.gen.orchestrator.v1 import orchestrator_service_pb2 as pb
from service.gen.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc
from tests.runners import ScriptedRunner

FULL_PHASES = ["requirements", "design", "implementation", "tests", "review", "documentation"]
TERMINAL = {enums.EVENT_TYPE_WORKFLOW_COMPLETED, enums.EVENT_TYPE_WORKFLOW_FAILED, enums.EVENT_TYPE_WORKFLOW_CANCELLED}


def details(error: grpc.aio.AioRpcError) -> dict[str, Any]:
    """The google.rpc details of an error, by type name."""
    status = rpc_status.from_call(error)
    assert status is not None, "error carries no google.rpc.Status"
    found: dict[str, Any] = {}
    for detail in status.details:
        for kind in (error_details_pb2.BadRequest, error_details_pb2.RequestInfo, error_details_pb2.ErrorInfo):
            if detail.Is(kind.DESCRIPTOR):
                message = kind()
                detail.Unpack(message)
                found[kind.DESCRIPTOR.name] = message
    return found


def violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    bad = details(error).get("BadRequest")
    assert bad is not None, f"no BadRequest in {error.details()}"
    return {v.field: v.description for v in bad.field_violations}


async def submit(
    stub: pb_grpc.OrchestratorServiceStub, requirements: str = "a todo list API", **fields: Any
) -> pb.ExecuteWorkflowResponse:
    fields.setdefault("workflow_type", "full")
    return await stub.ExecuteWorkflow(pb.ExecuteWorkflowRequest(requirements=requirements, **fields))


async def watch_all(stub: pb_grpc.OrchestratorServiceStub, session_id: str, after: int = 0) -> list[Any]:
    events = []
    async for response in stub.WatchWorkflow(pb.WatchWorkflowRequest(session_id=session_id, after_sequence=after)):
        if response.type != enums.EVENT_TYPE_HEARTBEAT:
            events.append(response)
    return events


async def wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.01)


async def test_execute_then_status_shows_the_completed_result(stub: pb_grpc.OrchestratorServiceStub) -> None:
    response = await submit(stub, configuration=struct_pb2.Struct())
    assert response.session_id and response.created
    assert response.state == enums.WORKFLOW_STATE_QUEUED
    assert "scripted" in response.message
    events = await watch_all(stub, response.session_id)
    assert events[-1].type == enums.EVENT_TYPE_WORKFLOW_COMPLETED
    status = await stub.GetWorkflowStatus(pb.GetWorkflowStatusRequest(session_id=response.session_id))
    assert status.state == enums.WORKFLOW_STATE_COMPLETED
    assert status.progress == 100
    assert list(status.phases_completed) == FULL_PHASES
    assert [p.state for p in status.phases] == [enums.PHASE_STATE_COMPLETED] * 6
    assert set(status.partial_results.keys()) == set(FULL_PHASES)
    assert [f.path for f in status.result.generated_code] == ["app.py"]
    assert status.result.usage.input_tokens == 60 and status.result.usage.requests == 6
    assert status.last_sequence == events[-1].sequence
    assert status.finished_at.seconds > 0
    assert list(status.error_details) == [] and list(status.errors) == []


async def test_status_progress_while_a_phase_runs(
    stub: pb_grpc.OrchestratorServiceStub, runner: ScriptedRunner
) -> None:
    gate = runner.gate("implementation")
    response = await submit(stub)
    await asyncio.wait_for(runner.started_event(response.session_id, "implementation").wait(), 10)
    status = await stub.GetWorkflowStatus(pb.GetWorkflowStatusRequest(session_id=response.session_id))
    assert status.state == enums.WORKFLOW_STATE_RUNNING
    assert status.current_phase == "implementation"
    assert list(status.phases_completed) == ["requirements", "design"]
    assert status.progress == 33
    assert set(status.partial_results.keys()) == {"requirements", "design"}
    gate.set()
    assert (await watch_all(stub, response.session_id))[-1].type == enums.EVENT_TYPE_WORKFLOW_COMPLETED


@pytest.mark.parametrize(
    ("fields", "field", "text"),
    [
        ({"requirements": ""}, "requirements", "required"),
        ({"requirements": "   "}, "requirements", "required"),
        ({"requirements": "x" * 50_001}, "requirements", "limit is 50000"),
        ({"workflow_type": ""}, "workflow_type", "required"),
        ({"workflow_type": "nope"}, "workflow_type", "Unknown workflow type"),
        ({"priority": 99}, "priority", "unknown value"),
        ({"request_id": "r" * 129}, "request_id", "at most 128"),
        ({"configuration": {"max_fix_iterations": "two"}}, "configuration.max_fix_iterations", "integer"),
        ({"configuration": {"skip_phases": ["nope"]}}, "configuration.skip_phases", "not a phase"),
    ],
)
async def test_bad_input_is_invalid_argument_with_field_violations(
    stub: pb_grpc.OrchestratorServiceStub, fields: dict[str, Any], field: str, text: str
) -> None:
    request: dict[str, Any] = {"requirements": "build it", "workflow_type": "full"}
    request.update(fields)
    if "configuration" in request:
        config = struct_pb2.Struct()
        config.update(request["configuration"])
        request["configuration"] = config
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ExecuteWorkflow(pb.ExecuteWorkflowRequest(**request), metadata=(("x-request-id", "req-123"),))
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert text in violations(error)[field]
    if field == "workflow_type" and text.startswith("Unknown"):
        assert "Unknown workflow type" in error.details()
    assert details(error)["RequestInfo"].request_id == "req-123"


async def test_undocumented_configuration_keys_are_passed_on_with_a_warning(
    stub: pb_grpc.OrchestratorServiceStub, runner: ScriptedRunner
) -> None:
    config = struct_pb2.Struct()
    config.update({"bogus": 1, "team": {"name": "blue"}, "language": "python"})
    response = await submit(stub, configuration=config)
    assert response.created
    assert len(response.warnings) == 2
    assert "'bogus'" in response.warnings[0] and "'team'" in response.warnings[1]
    assert "passed on" in response.warnings[0] and "language" in response.warnings[0]  # names the documented keys
    assert "warning" in response.message
    assert (await watch_all(stub, response.session_id))[-1].type == enums.EVENT_TYPE_WORKFLOW_COMPLETED
    seen = runner.configurations[(response.session_id, "requirements")]
    assert seen["bogus"] == 1 and seen["team"] == {"name": "blue"}
    plain = await submit(stub)
    assert list(plain.warnings) == [] and "warning" not in plain.message


async def test_server_makes_a_request_id_when_none_is_sent(stub: pb_grpc.OrchestratorServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetWorkflowStatus(pb.GetWorkflowStatusRequest(session_id="missing"))
    request_id = details(caught.value)["RequestInfo"].request_id
    assert len(request_id) == 36
    assert ("x-request-id", request_id) in tuple(caught.value.trailing_metadata() or ())


async def test_unknown_session_is_not_found_everywhere(stub: pb_grpc.OrchestratorServiceStub) -> None:
    calls = [
        stub.GetWorkflowStatus(pb.GetWorkflowStatusRequest(session_id="0000")),
        stub.CancelWorkflow(pb.CancelWorkflowRequest(session_id="0000")),
        watch_all(stub, "0000"),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert details(caught.value)["ErrorInfo"].reason == "NOT_FOUND"


async def test_malformed_session_id_and_negative_sequence_are_invalid(stub: pb_grpc.OrchestratorServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetWorkflowStatus(pb.GetWorkflowStatusRequest(session_id="../etc/passwd"))
    assert "session_id" in violations(caught.value)
    response = await submit(stub)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await watch_all(stub, response.session_id, after=-1)
    assert "after_sequence" in violations(caught.value)


async def test_unexpected_errors_are_internal_without_their_text(
    app: App, stub: pb_grpc.OrchestratorServiceStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret database password in a traceback")

    assert app.engine is not None
    monkeypatch.setattr(app.engine, "status", broken)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetWorkflowStatus(
            pb.GetWorkflowStatusRequest(session_id="abc"), metadata=(("x-request-id", "rid-9"),)
        )
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in caught.value.details()
    assert "rid-9" in caught.value.details()
    assert details(caught.value)["RequestInfo"].request_id == "rid-9"


async def test_same_request_id_gives_one_workflow(
    stub: pb_grpc.OrchestratorServiceStub, runner: ScriptedRunner
) -> None:
    responses = await asyncio.gather(*(submit(stub, request_id="order-42") for _ in range(10)))
    assert len({r.session_id for r in responses}) == 1
    assert sum(r.created for r in responses) == 1
    session_id = responses[0].session_id
    await watch_all(stub, session_id)
    assert runner.counts[(session_id, "requirements")] == 1
    page = await stub.ListWorkflows(pb.ListWorkflowsRequest())
    assert [w.session_id for w in page.workflows] == [session_id]


async def test_reused_request_id_for_another_request_is_refused(stub: pb_grpc.OrchestratorServiceStub) -> None:
    await submit(stub, "first", request_id="key-1")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await submit(stub, "something else", request_id="key-1")
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "key-1" in caught.value.details()


async def test_watch_replays_then_follows_and_resumes_without_gaps(
    stub: pb_grpc.OrchestratorServiceStub, runner: ScriptedRunner
) -> None:
    gate = runner.gate("tests")
    response = await submit(stub)
    before = asyncio.create_task(watch_all(stub, response.session_id))
    await asyncio.wait_for(runner.started_event(response.session_id, "tests").wait(), 10)
    during = asyncio.create_task(watch_all(stub, response.session_id))
    resumed = asyncio.create_task(watch_all(stub, response.session_id, after=5))
    await asyncio.sleep(0)  # let the watchers subscribe before the phase finishes
    gate.set()
    full = await asyncio.wait_for(before, 10)
    sequences = [e.sequence for e in full]
    assert sequences == list(range(1, len(full) + 1))
    types = [e.type for e in full]
    assert types[0] == enums.EVENT_TYPE_WORKFLOW_QUEUED and types[1] == enums.EVENT_TYPE_WORKFLOW_STARTED
    assert types.count(enums.EVENT_TYPE_PHASE_COMPLETED) == 6 and types[-1] == enums.EVENT_TYPE_WORKFLOW_COMPLETED
    assert full[-1].result.generated_code[0].path == "app.py"
    assert [e.sequence for e in await during] == sequences
    assert [e.sequence for e in await resumed] == sequences[5:]
    after = await watch_all(stub, response.session_id)
    assert [e.sequence for e in after] == sequences
    assert await watch_all(stub, response.session_id, after=sequences[-1] - 1) == [full[-1]]


async def test_idle_watch_gets_heartbeats(stub: pb_grpc.OrchestratorServiceStub, runner: ScriptedRunner) -> None:
    gate = runner.gate("requirements")
    response = await submit(stub)
    call = stub.WatchWorkflow(pb.WatchWorkflowRequest(session_id=response.session_id))
    seen = []
    async for item in call:
        seen.append(item)
        if item.type == enums.EVENT_TYPE_HEARTBEAT:
            break
    heartbeat = seen[-1]
    assert heartbeat.sequence == max(e.sequence for e in seen[:-1])
    call.cancel()
    gate.set()


async def test_cancel_interrupts_the_running_model_call(
    stub: pb_grpc.OrchestratorServiceStub, runner: ScriptedRunner
) -> None:
    runner.gate("design")
    response = await submit(stub)
    await asyncio.wait_for(runner.started_event(response.session_id, "design").wait(), 10)
    cancelled = await stub.CancelWorkflow(
        pb.CancelWorkflowRequest(session_id=response.session_id, reason="changed my mind")
    )
    assert cancelled.state == enums.WORKFLOW_STATE_CANCELLED

    async def call_cancelled() -> bool:
        return (response.session_id, "design") in runner.cancelled

    await wait_for(call_cancelled, timeout=1.0)
    events = await watch_all(stub, response.session_id)
    assert events[-1].type == enums.EVENT_TYPE_WORKFLOW_CANCELLED
    status = await stub.GetWorkflowStatus(pb.GetWorkflowStatusRequest(session_id=response.session_id))
    assert status.state == enums.WORKFLOW_STATE_CANCELLED
    assert [(e.phase, e.code) for e in status.error_details] == [("design", "cancelled")]
    assert "changed my mind" in status.error_details[0].message
    assert list(status.errors) == [status.error_details[0].message]  # the deprecated field keeps the messages
    assert runner.counts[(response.session_id, "design")] == 1  # not retried
    assert (response.session_id, "implementation") not in runner.counts
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CancelWorkflow(pb.CancelWorkflowRequest(session_id=response.session_id))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_cancel_of_a_finished_workflow_is_failed_precondition(stub: pb_grpc.OrchestratorServiceStub) -> None:
    response = await submit(stub)
    await watch_all(stub, response.session_id)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CancelWorkflow(pb.CancelWorkflowRequest(session_id=response.session_id))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "completed" in caught.value.details()


async def test_a_failing_phase_fails_the_workflow_with_its_error(
    stub: pb_grpc.OrchestratorServiceStub, runner: ScriptedRunner
) -> None:
    runner.fail("design", "the model returned invalid output 3 times")
    response = await submit(stub)
    events = await watch_all(stub, response.session_id)
    assert events[-1].type == enums.EVENT_TYPE_WORKFLOW_FAILED
    assert "invalid output" in events[-1].message
    status = await stub.GetWorkflowStatus(pb.GetWorkflowStatusRequest(session_id=response.session_id))
    assert status.state == enums.WORKFLOW_STATE_FAILED
    assert status.phases[1].state == enums.PHASE_STATE_FAILED
    assert "invalid output" in status.phases[1].error
    assert [e for e in status.errors if "invalid output" in e] == [events[-1].message]  # reported once
    assert [(e.phase, e.code, e.message) for e in status.error_details] == [
        ("design", "phase_failed", events[-1].message)
    ]
    # The tokens of the completed phase and of the failed one both count.
    assert (status.usage.input_tokens, status.usage.output_tokens, status.usage.requests) == (10 + 7, 5 + 3, 1 + 2)
    assert runner.counts[(response.session_id, "design")] == 1  # PhaseFailed is final: the runner retried already


async def test_skip_phases_and_token_budget(stub: pb_grpc.OrchestratorServiceStub, runner: ScriptedRunner) -> None:
    config = struct_pb2.Struct()
    config.update({"skip_phases": ["review", "documentation"]})
    response = await submit(stub, configuration=config)
    events = await watch_all(stub, response.session_id)
    assert [e.phase for e in events if e.type == enums.EVENT_TYPE_PHASE_SKIPPED] == ["review", "documentation"]
    assert events[-1].type == enums.EVENT_TYPE_WORKFLOW_COMPLETED and events[-1].progress == 100

    config = struct_pb2.Struct()
    config.update({"budget_tokens": 40})  # each scripted phase uses 15
    response = await submit(stub, configuration=config)
    events = await watch_all(stub, response.session_id)
    assert events[-1].type == enums.EVENT_TYPE_WORKFLOW_FAILED
    assert "token budget exceeded: used 45 tokens of 40" in events[-1].message
    assert (response.session_id, "review") not in runner.counts
    status = await stub.GetWorkflowStatus(pb.GetWorkflowStatusRequest(session_id=response.session_id))
    assert [(e.phase, e.code) for e in status.error_details] == [("", "budget_exceeded")]  # no phase failed
    assert status.error_details[0].message == events[-1].message


async def test_a_budget_running_out_inside_a_phase_is_budget_exceeded(
    stub: pb_grpc.OrchestratorServiceStub, runner: ScriptedRunner
) -> None:
    runner.fail("design", "token budget exceeded: 5 tokens were left for the workflow", budget=True)
    response = await submit(stub)
    events = await watch_all(stub, response.session_id)
    assert events[-1].type == enums.EVENT_TYPE_WORKFLOW_FAILED
    status = await stub.GetWorkflowStatus(pb.GetWorkflowStatusRequest(session_id=response.session_id))
    assert [(e.phase, e.code) for e in status.error_details] == [("design", "budget_exceeded")]
    assert "token budget exceeded" in status.error_details[0].message


async def test_list_pages_through_everything_once_with_filters(
    stub: pb_grpc.OrchestratorServiceStub, runner: ScriptedRunner
) -> None:
    ids = [(await submit(stub, f"req {i}", workflow_type="design")).session_id for i in range(5)]
    runner.gate("implementation")  # only `full` has it: the design workflows run through
    gated = (await submit(stub, "gated", workflow_type="full")).session_id
    seen, token, pages = [], "", 0
    while True:
        page = await stub.ListWorkflows(pb.ListWorkflowsRequest(page_size=2, page_token=token))
        seen += [w.session_id for w in page.workflows]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert pages == 3
    assert seen == [gated, *reversed(ids)]
    only_design = await stub.ListWorkflows(pb.ListWorkflowsRequest(workflow_type="design"))
    assert {w.session_id for w in only_design.workflows} == set(ids)
    for session_id in ids:
        await watch_all(stub, session_id)
    completed = await stub.ListWorkflows(pb.ListWorkflowsRequest(state=enums.WORKFLOW_STATE_COMPLETED))
    assert {w.session_id for w in completed.workflows} == set(ids)
    for bad, field in [
        ({"page_token": "garbage!"}, "page_token"),
        ({"page_size": -1}, "page_size"),
        ({"state": 42}, "state"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ListWorkflows(pb.ListWorkflowsRequest(**bad))
        assert field in violations(caught.value)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListWorkflows(pb.ListWorkflowsRequest(workflow_type="nope"))
    assert "Unknown workflow type" in caught.value.details()


async def test_workflow_types_describe_phases_and_configuration(stub: pb_grpc.OrchestratorServiceStub) -> None:
    response = await stub.ListWorkflowTypes(pb.ListWorkflowTypesRequest())
    types = {t.name: t for t in response.workflow_types}
    assert list(response.names) == [t.name for t in response.workflow_types] == sorted(types)
    assert {"full", "design", "implement", "review", "bugfix"} <= set(types)
    assert [p.name for p in types["full"].phases] == FULL_PHASES
    assert [p.agent_role for p in types["full"].phases] == [
        "analyst",
        "architect",
        "engineer",
        "tester",
        "reviewer",
        "documenter",
    ]
    keys = {k.name: k for k in types["full"].configuration_keys}
    assert {"language", "model", "max_fix_iterations", "skip_phases", "budget_tokens", "budget_usd"} <= set(keys)
    assert keys["language"].default_value.string_value == "python"
    assert keys["max_fix_iterations"].type == "integer"


async def test_workflow_types_carry_a_stable_strong_etag(stub: pb_grpc.OrchestratorServiceStub) -> None:
    tags = []
    for _ in range(2):
        call = stub.ListWorkflowTypes(pb.ListWorkflowTypesRequest())
        response = await call
        metadata = dict(await call.initial_metadata() or ())
        tags.append((metadata.get("etag"), response.SerializeToString(deterministic=True)))
    (etag, body), again = tags
    assert again == (etag, body)
    assert isinstance(etag, str) and re.fullmatch(r'"[0-9a-f]{32}"', etag)  # strong: quoted, no W/ prefix


async def test_health_reports_each_dependency(stub: pb_grpc.OrchestratorServiceStub, channel: grpc.aio.Channel) -> None:
    response = await stub.Health(pb.HealthRequest())
    assert response.status == enums.SERVING_STATUS_SERVING
    assert {d.name for d in response.dependencies} == {"database", "engine", "model_provider"}
    assert response.replica_id == "test-replica"
    standard = health_pb2_grpc.HealthStub(channel)
    for service in ("", "orchestrator.v1.OrchestratorService"):
        check = await standard.Check(health_pb2.HealthCheckRequest(service=service))
        assert check.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_the_service(channel: grpc.aio.Channel) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    async for response in responses:
        names = {s.name for s in response.list_services_response.service}
        assert "orchestrator.v1.OrchestratorService" in names
        break
