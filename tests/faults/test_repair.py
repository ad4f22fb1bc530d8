"""Sessions whose durable workflow ended without a terminal event: the repair pass finishes them (watchers get the
terminal event, not heartbeats forever), and the per-tenant active cap never counts them.

The fault is injected into the real engine on SQLite: the store loses one write of each workflow's body with an
error that is not an outage, so the error leaves the body and DBOS records the workflow as ERROR while the session
still says running (what a database outage did before outages were waited out).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from dbos import DBOS

from orchestrator.settings import Settings
from service.app import App
from service.gen.orchestrator.v1 import enums_pb2 as enums
from service.gen.orchestrator.v1 import orchestrator_service_pb2 as pb
from service.gen.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc
from tests.conftest import make_settings
from tests.runners import ScriptedRunner
from tests.service.test_grpc_api import submit, wait_for, watch_all

pytestmark = pytest.mark.faults

STRANDING_KEY = "phase:design:started"


@pytest.fixture
def repair_interval() -> float:
    """Seconds between repair passes: by default none runs during a test, so only the cap's own repair does."""
    return 3600.0


@pytest.fixture
def settings(tmp_path: Path, repair_interval: float) -> Settings:
    return make_settings(tmp_path / "data", max_active_workflows_per_tenant=2, repair_interval_seconds=repair_interval)


@pytest.fixture
def strand(app: App) -> Iterator[list[str]]:
    """Makes the store fail the body's write of STRANDING_KEY once per session; yields the sessions it hit."""
    store = app.engine.store
    original = store.append_many
    hit: list[str] = []

    def append_many(session_id: str, drafts: list[Any], **kwargs: Any) -> Any:
        if any(d.key == STRANDING_KEY for d in drafts) and session_id not in hit:
            hit.append(session_id)
            raise RuntimeError("injected: the store lost this write")
        return original(session_id, drafts, **kwargs)

    store.append_many = append_many  # type: ignore[method-assign]
    try:
        yield hit
    finally:
        store.append_many = original  # type: ignore[method-assign]


async def _stranded(stub: pb_grpc.OrchestratorServiceStub, count: int) -> list[str]:
    """Submits `count` workflows and waits until DBOS has ended each in ERROR while its session still runs."""
    ids = [(await submit(stub, f"stranded {i}")).session_id for i in range(count)]

    async def ended() -> bool:
        found = [await DBOS.get_workflow_status_async(s) for s in ids]
        return all(w is not None and w.status == "ERROR" for w in found)

    await wait_for(ended, timeout=20)
    for session_id in ids:
        status = await stub.GetWorkflowStatus(pb.GetWorkflowStatusRequest(session_id=session_id))
        assert status.state == enums.WORKFLOW_STATE_RUNNING, "the fault should leave the session running"
    return ids


@pytest.mark.timeout(60)
async def test_the_active_cap_does_not_count_stranded_sessions(
    stub: pb_grpc.OrchestratorServiceStub, strand: list[str], runner: ScriptedRunner
) -> None:
    stranded = await _stranded(stub, 2)  # the tenant's whole cap
    # Without the repair at the cap, this was RESOURCE_EXHAUSTED for good: both slots held by sessions that never end.
    accepted = await submit(stub, "after the strand", workflow_type="implement")
    assert accepted.created
    for session_id in stranded:
        status = await stub.GetWorkflowStatus(pb.GetWorkflowStatusRequest(session_id=session_id))
        assert status.state == enums.WORKFLOW_STATE_FAILED
        assert status.error_details[-1].code == "workflow_failed"
        assert status.error_details[-1].message == (
            "the workflow stopped before it finished: internal error (RuntimeError); see the server log"
        )
    events = await asyncio.wait_for(watch_all(stub, accepted.session_id), 20)
    assert events[-1].type == enums.EVENT_TYPE_WORKFLOW_COMPLETED
    # A real cap still holds: two running sessions fill it.
    gate = runner.gate("implementation")
    try:
        for i in range(2):
            await submit(stub, f"fill {i}", workflow_type="implement")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await submit(stub, "one too many", workflow_type="implement")
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        gate.set()


@pytest.mark.parametrize("repair_interval", [0.2])
@pytest.mark.timeout(60)
async def test_the_repair_pass_finishes_a_stranded_session_and_its_watchers_see_it_end(
    stub: pb_grpc.OrchestratorServiceStub, strand: list[str]
) -> None:
    (session_id,) = [(await submit(stub, "to be stranded")).session_id]
    # A watcher from the start: before the repair it got heartbeats only, forever.
    events = await asyncio.wait_for(watch_all(stub, session_id), 20)
    assert strand == [session_id]
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert events[-1].type == enums.EVENT_TYPE_WORKFLOW_FAILED
    assert events[-1].message.startswith("the workflow stopped before it finished: internal error (RuntimeError)")
    status = await stub.GetWorkflowStatus(pb.GetWorkflowStatusRequest(session_id=session_id))
    assert status.state == enums.WORKFLOW_STATE_FAILED
    assert list(status.phases_completed) == ["requirements"]  # what ran before the strand is kept


@pytest.mark.parametrize("repair_interval", [0.2])
@pytest.mark.timeout(60)
async def test_a_workflow_that_returned_completed_without_its_event_is_completed_from_its_recorded_phases(
    app: App, stub: pb_grpc.OrchestratorServiceStub, runner: ScriptedRunner
) -> None:
    reference = (await submit(stub, "the same request")).session_id
    expected = await asyncio.wait_for(watch_all(stub, reference), 20)
    store = app.engine.store
    original = store.append_many

    def append_many(session_id: str, drafts: list[Any], **kwargs: Any) -> Any:
        kept = [d for d in drafts if d.key != "completed"]  # the body's final event is lost
        return original(session_id, kept, **kwargs)

    store.append_many = append_many  # type: ignore[method-assign]
    try:
        session_id = (await submit(stub, "the same request")).session_id

        async def returned() -> bool:
            found = await DBOS.get_workflow_status_async(session_id)
            return found is not None and found.status == "SUCCESS"

        await wait_for(returned, timeout=20)
    finally:
        store.append_many = original  # type: ignore[method-assign]
    events = await asyncio.wait_for(watch_all(stub, session_id), 20)
    assert events[-1].type == enums.EVENT_TYPE_WORKFLOW_COMPLETED
    assert events[-1].message == expected[-1].message
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    status = await stub.GetWorkflowStatus(pb.GetWorkflowStatusRequest(session_id=session_id))
    done = await stub.GetWorkflowStatus(pb.GetWorkflowStatusRequest(session_id=reference))
    assert status.state == enums.WORKFLOW_STATE_COMPLETED
    assert status.result == done.result
    assert list(status.phases_completed) == list(done.phases_completed)
    assert all(n == 1 for (s, _), n in runner.counts.items() if s == session_id)  # nothing ran again
