"""Store outages inside a workflow body, injected into the real engine on SQLite: a write that fails with a
database outage (here "database is locked", as a busy SQLite raises it) is retried until the database answers,
and only an outage longer than database_retry_limit_seconds fails the workflow, saying so.

The PostgreSQL tests (test_database_outage.py) inject the real thing; these pin the limit down deterministically.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from orchestrator.settings import Settings
from service.app import App
from service.gen.orchestrator.v1 import enums_pb2 as enums
from service.gen.orchestrator.v1 import orchestrator_service_pb2 as pb
from service.gen.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc
from tests.conftest import make_settings
from tests.runners import ScriptedRunner
from tests.service.test_grpc_api import submit, watch_all

pytestmark = pytest.mark.faults

KEY = "phase:design:started"  # the body's write that opens the design phase
LIMIT_SECONDS = 1.0


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "data", database_retry_limit_seconds=LIMIT_SECONDS, repair_interval_seconds=0.2)


def _locked() -> sa.exc.OperationalError:
    return sa.exc.OperationalError("UPDATE orch_sessions ...", None, sqlite3.OperationalError("database is locked"))


@pytest.fixture
def outage(app: App) -> Iterator[Callable[[float], list[float]]]:
    """`outage(seconds)`: from the first write of KEY on, every write of KEY fails as a locked database does, for
    `seconds`; returns the list the failed attempts' times go into."""
    store = app.engine.store
    original = store.append_many
    attempts: list[float] = []
    length: list[float] = []

    def append_many(session_id: str, drafts: list[Any], **kwargs: Any) -> Any:
        if length and any(d.key == KEY for d in drafts):
            now = time.monotonic()
            if not attempts or now - attempts[0] < length[0]:
                attempts.append(now)
                raise _locked()
        return original(session_id, drafts, **kwargs)

    def start(seconds: float) -> list[float]:
        length.append(seconds)
        return attempts

    store.append_many = append_many  # type: ignore[method-assign]
    try:
        yield start
    finally:
        store.append_many = original  # type: ignore[method-assign]


@pytest.mark.timeout(60)
async def test_a_store_outage_inside_a_workflow_is_waited_out(
    stub: pb_grpc.OrchestratorServiceStub, runner: ScriptedRunner, outage: Callable[[float], list[float]]
) -> None:
    attempts = outage(LIMIT_SECONDS / 2)
    session_id = (await submit(stub, "waits out a short outage")).session_id
    events = await asyncio.wait_for(watch_all(stub, session_id), 20)
    assert len(attempts) >= 2, "the outage should have failed the write more than once"
    assert events[-1].type == enums.EVENT_TYPE_WORKFLOW_COMPLETED
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert max(runner.counts.values()) == 1  # no phase ran twice


@pytest.mark.timeout(60)
async def test_an_outage_past_the_retry_limit_fails_the_workflow_saying_why(
    stub: pb_grpc.OrchestratorServiceStub, runner: ScriptedRunner, outage: Callable[[float], list[float]]
) -> None:
    attempts = outage(3600)
    session_id = (await submit(stub, "outlasts the limit")).session_id
    # The body gives up after the limit; the repair pass then writes the failure (every 0.2 s here).
    events = await asyncio.wait_for(watch_all(stub, session_id), 20)
    assert attempts[-1] - attempts[0] >= LIMIT_SECONDS * 0.9
    assert events[-1].type == enums.EVENT_TYPE_WORKFLOW_FAILED
    status = await stub.GetWorkflowStatus(pb.GetWorkflowStatusRequest(session_id=session_id))
    assert status.state == enums.WORKFLOW_STATE_FAILED
    error = status.error_details[-1]
    assert error.code == "workflow_failed"
    prefix = "the workflow stopped before it finished: recording the workflow's progress: the database stayed "
    assert error.message.startswith(prefix), error.message
    assert f"longer than the {LIMIT_SECONDS:g}s a workflow waits for it (database_retry_limit_seconds)" in error.message
    assert error.message.endswith(": the database is unavailable (database is locked); retry later")
    assert list(status.phases_completed) == ["requirements"]
    assert runner.counts[(session_id, "requirements")] == 1
