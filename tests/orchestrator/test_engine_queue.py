"""Queue behaviour of the real engine on SQLite files: priorities, limits, estimates, retention, restarts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2

from service.app import App
from service.gen.orchestrator.v1 import enums_pb2 as enums
from service.gen.orchestrator.v1 import orchestrator_service_pb2 as pb
from service.gen.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc
from tests.conftest import make_settings
from tests.runners import ScriptedRunner
from tests.service.test_grpc_api import submit, wait_for, watch_all


async def started_app(tmp_path: Path, runner: ScriptedRunner, **overrides: object) -> tuple[App, grpc.aio.Channel]:
    app = App(make_settings(tmp_path / "data", **overrides), runner=runner)
    await app.start()
    return app, grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}")


async def test_waiting_work_starts_in_priority_order(tmp_path: Path, runner: ScriptedRunner) -> None:
    app, channel = await started_app(tmp_path, runner, max_running_workflows=1)
    try:
        stub = pb_grpc.OrchestratorServiceStub(channel)
        gate = runner.gate("requirements")
        blocker = await submit(stub, "blocker", workflow_type="design")
        await asyncio.wait_for(runner.started_event(blocker.session_id, "requirements").wait(), 10)
        waiting = {}
        for name in ("low", "normal", "high", "critical", "low", "critical"):
            priority = enums.Priority.Value(f"PRIORITY_{name.upper()}")
            response = await submit(stub, name, workflow_type="design", priority=priority)
            waiting[response.session_id] = name
        gate.set()
        for session_id in waiting:
            await watch_all(stub, session_id)
        order = [waiting[s] for s, phase in runner.calls if phase == "requirements" and s in waiting]
        assert order == ["critical", "critical", "high", "normal", "low", "low"]
    finally:
        await channel.close()
        await app.stop(grace=0.5)


class _Tracking(ScriptedRunner):
    def __init__(self) -> None:
        super().__init__()
        self.in_flight: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.total_peak = 0

    async def run(self, request):  # type: ignore[no-untyped-def]
        kind = request.workflow_type
        self.in_flight[kind] = self.in_flight.get(kind, 0) + 1
        self.peak[kind] = max(self.peak.get(kind, 0), self.in_flight[kind])
        self.total_peak = max(self.total_peak, sum(self.in_flight.values()))
        try:
            return await super().run(request)
        finally:
            self.in_flight[kind] -= 1


async def test_global_and_per_type_concurrency_limits_hold(tmp_path: Path) -> None:
    runner = _Tracking()
    runner.delay = 0.05
    app, channel = await started_app(tmp_path, runner, max_running_workflows=3, max_running_per_type=2)
    try:
        stub = pb_grpc.OrchestratorServiceStub(channel)
        ids = []
        for i in range(4):
            ids.append((await submit(stub, f"d{i}", workflow_type="design")).session_id)
            ids.append((await submit(stub, f"i{i}", workflow_type="implement")).session_id)
        for session_id in ids:
            assert (await watch_all(stub, session_id))[-1].type == enums.EVENT_TYPE_WORKFLOW_COMPLETED
        assert runner.peak == {"design": 2, "implement": 2}
        assert runner.total_peak == 3
    finally:
        await channel.close()
        await app.stop(grace=0.5)


def _estimate_seconds(response: pb.ExecuteWorkflowResponse | pb.GetWorkflowStatusResponse) -> float:
    assert response.HasField("estimated_completion")
    return (response.estimated_completion.ToDatetime() - response.created_at.ToDatetime()).total_seconds()


async def test_estimate_comes_from_earlier_runs_and_retention_purges(tmp_path: Path, runner: ScriptedRunner) -> None:
    # Retention 0.72 s; 100 s per phase to tell the nominal estimate from the history one.
    app, channel = await started_app(tmp_path, runner, retention_hours=0.0002, nominal_phase_seconds=100.0)
    try:
        stub = pb_grpc.OrchestratorServiceStub(channel)
        # No history yet: the type's phases at the nominal seconds each (design has 2), skipped ones left out.
        first = await submit(stub, workflow_type="design")
        assert _estimate_seconds(first) == 200.0
        status = await stub.GetWorkflowStatus(pb.GetWorkflowStatusRequest(session_id=first.session_id))
        assert status.estimated_completion == first.estimated_completion
        config = struct_pb2.Struct()
        config.update({"skip_phases": ["design"]})
        skipping = await submit(stub, "skip", workflow_type="design", configuration=config)
        assert _estimate_seconds(skipping) == 100.0
        await watch_all(stub, first.session_id)
        await watch_all(stub, skipping.session_id)
        app.engine._durations.clear()  # type: ignore[union-attr]  # the 10 s cache, not the estimate itself
        # With history: the mean of the earlier runs, which took well under a second here.
        second = await submit(stub, workflow_type="design")
        assert 0 < _estimate_seconds(second) < 10
        await watch_all(stub, second.session_id)

        async def purged() -> bool:
            await app.engine.purge_now()  # type: ignore[union-attr]
            try:
                await stub.GetWorkflowStatus(pb.GetWorkflowStatusRequest(session_id=first.session_id))
            except grpc.aio.AioRpcError as exc:
                return exc.code() == grpc.StatusCode.NOT_FOUND
            return False

        await wait_for(purged, timeout=10)
    finally:
        await channel.close()
        await app.stop(grace=0.5)


async def test_events_and_status_survive_a_restart_and_watch_resumes(tmp_path: Path, runner: ScriptedRunner) -> None:
    app, channel = await started_app(tmp_path, runner)
    stub = pb_grpc.OrchestratorServiceStub(channel)
    response = await submit(stub)
    events = await watch_all(stub, response.session_id)
    await channel.close()
    await app.stop(grace=0.5)

    app, channel = await started_app(tmp_path, runner)
    try:
        stub = pb_grpc.OrchestratorServiceStub(channel)
        resumed = await watch_all(stub, response.session_id, after=3)
        assert resumed == events[3:]
        status = await stub.GetWorkflowStatus(pb.GetWorkflowStatusRequest(session_id=response.session_id))
        assert status.state == enums.WORKFLOW_STATE_COMPLETED and status.last_sequence == events[-1].sequence
    finally:
        await channel.close()
        await app.stop(grace=0.5)


async def test_shutdown_refuses_new_work_and_the_restart_finishes_running_work(tmp_path: Path) -> None:
    runner = ScriptedRunner()
    gate = runner.gate("design")
    app, channel = await started_app(tmp_path, runner)
    stub = pb_grpc.OrchestratorServiceStub(channel)
    response = await submit(stub)
    await asyncio.wait_for(runner.started_event(response.session_id, "design").wait(), 10)
    app.engine.stop_accepting()  # type: ignore[union-attr]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await submit(stub)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    await channel.close()
    await app.stop(grace=0.5)
    assert runner.counts[(response.session_id, "requirements")] == 1

    gate.set()
    app, channel = await started_app(tmp_path, runner)
    try:
        stub = pb_grpc.OrchestratorServiceStub(channel)
        events = await watch_all(stub, response.session_id)
        assert events[-1].type == enums.EVENT_TYPE_WORKFLOW_COMPLETED
        assert [e.sequence for e in events] == list(range(1, len(events) + 1))
        assert runner.counts[(response.session_id, "requirements")] == 1  # finished before the stop: not re-run
        assert runner.counts[(response.session_id, "design")] == 2  # in flight at the stop: run again
    finally:
        await channel.close()
        await app.stop(grace=0.5)


async def test_cancelling_a_queued_workflow_means_it_never_runs(tmp_path: Path, runner: ScriptedRunner) -> None:
    app, channel = await started_app(tmp_path, runner, max_running_workflows=1)
    try:
        stub = pb_grpc.OrchestratorServiceStub(channel)
        gate = runner.gate("requirements")
        blocker = await submit(stub, "blocker", workflow_type="design")
        await asyncio.wait_for(runner.started_event(blocker.session_id, "requirements").wait(), 10)
        queued = await submit(stub, "queued", workflow_type="design")
        await stub.CancelWorkflow(pb.CancelWorkflowRequest(session_id=queued.session_id))
        gate.set()
        assert (await watch_all(stub, blocker.session_id))[-1].type == enums.EVENT_TYPE_WORKFLOW_COMPLETED
        events = await watch_all(stub, queued.session_id)
        assert [e.type for e in events] == [enums.EVENT_TYPE_WORKFLOW_QUEUED, enums.EVENT_TYPE_WORKFLOW_CANCELLED]
        after = await submit(stub, "after", workflow_type="design")  # the queue moved on past the cancelled one
        await watch_all(stub, after.session_id)
        assert all(session != queued.session_id for session, _ in runner.calls)
    finally:
        await channel.close()
        await app.stop(grace=0.5)


async def test_health_is_not_serving_once_shutdown_begins(tmp_path: Path, runner: ScriptedRunner) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    app, channel = await started_app(tmp_path, runner)
    stopping = None
    try:
        # A balancer's health watch stream, open before shutdown, sees NOT_SERVING before the server goes.
        updates = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        first = await updates.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        stopping = asyncio.create_task(app.stop(grace=2))
        second = await asyncio.wait_for(updates.read(), 5)
        assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        if stopping is None:
            await app.stop(grace=0.5)
        else:
            await stopping
        await channel.close()


async def test_a_session_stored_but_never_enqueued_is_run_by_the_orphan_pass(tmp_path: Path) -> None:
    import time as _time
    from datetime import UTC, datetime

    from orchestrator.models import EventType, PhaseStatus, Priority, WorkflowState, WorkflowStatus
    from orchestrator.progress import EventDraft
    from orchestrator.store import NewSession

    runner = ScriptedRunner()
    app, channel = await started_app(tmp_path, runner)
    try:
        engine = app.engine
        assert engine is not None
        now = datetime.now(UTC)
        # What a replica that died between storing the session and enqueueing it leaves behind.
        orphan = NewSession(
            session_id="orphan-1",
            tenant="",
            request_id=None,
            fingerprint="x",
            workflow_type="design",
            request={"requirements": "r", "workflow_type": "design", "configuration": {}, "priority": "normal"},
            status=WorkflowStatus(
                session_id="orphan-1",
                workflow_type="design",
                state=WorkflowState.QUEUED,
                priority=Priority.NORMAL,
                phases=[
                    PhaseStatus(name="requirements", agent_role="analyst"),
                    PhaseStatus(name="design", agent_role="architect"),
                ],
                created_at=now,
                updated_at=now,
            ),
        )
        engine.store.create_session(orphan, EventDraft("queued", EventType.WORKFLOW_QUEUED))
        await engine._requeue_orphans(created_before=_time.time() + 1, limit=100)
        stub = pb_grpc.OrchestratorServiceStub(channel)
        events = await asyncio.wait_for(watch_all(stub, "orphan-1"), 30)
        assert events[-1].type == enums.EVENT_TYPE_WORKFLOW_COMPLETED
        assert runner.counts[("orphan-1", "design")] == 1
    finally:
        await channel.close()
        await app.stop(grace=0.5)
