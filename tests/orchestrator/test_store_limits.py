"""The per-tenant cap on active workflows holds under concurrent submissions, on SQLite and on PostgreSQL."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest

from orchestrator.errors import ResourceExhausted
from orchestrator.models import EventType, Priority, WorkflowState, WorkflowStatus
from orchestrator.progress import EventDraft
from orchestrator.store import NewSession, Store
from tests.orchestrator.test_durability import pg_database  # noqa: F401 - a fixture

pytestmark = pytest.mark.timeout(60)


def new_session(tenant: str, request_id: str | None = None) -> NewSession:
    now = datetime.now(UTC)
    session_id = str(uuid.uuid4())
    status = WorkflowStatus(
        session_id=session_id,
        workflow_type="design",
        state=WorkflowState.QUEUED,
        priority=Priority.NORMAL,
        created_at=now,
        updated_at=now,
        tenant=tenant,
        request_id=request_id or "",
    )
    return NewSession(
        session_id=session_id,
        tenant=tenant,
        request_id=request_id,
        fingerprint=request_id or session_id,
        workflow_type="design",
        request={},
        status=status,
    )


def submit_many(store: Store, tenant: str, count: int, cap: int) -> tuple[int, int]:
    """`count` concurrent submissions of one tenant: (created, refused)."""

    def one(_: int) -> bool:
        try:
            store.create_session(new_session(tenant), EventDraft("queued", EventType.WORKFLOW_QUEUED), max_active=cap)
            return True
        except ResourceExhausted as exc:
            assert exc.code == "TOO_MANY_ACTIVE_WORKFLOWS"
            return False

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(one, range(count)))
    return results.count(True), results.count(False)


def check_cap(store: Store) -> None:
    store.create_schema()
    assert submit_many(store, "tenant-a", 12, cap=3) == (3, 9)
    assert store.count_active("tenant-a") == 3
    assert submit_many(store, "tenant-b", 2, cap=3) == (2, 0)  # per tenant
    # A retry of an accepted request gets its session even at the cap.
    store.create_session(new_session("tenant-b", "k"), EventDraft("queued", EventType.WORKFLOW_QUEUED), max_active=3)
    status, created = store.create_session(
        new_session("tenant-b", "k"), EventDraft("queued", EventType.WORKFLOW_QUEUED), max_active=3
    )
    assert not created and status.tenant == "tenant-b"


def test_the_cap_holds_on_sqlite(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'store.sqlite'}")
    try:
        check_cap(store)
    finally:
        store.dispose()


@pytest.mark.postgres
def test_the_cap_holds_on_postgresql(pg_database: str) -> None:  # noqa: F811 - the fixture
    store = Store(pg_database.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        check_cap(store)
    finally:
        store.dispose()
