"""The in-memory history watchers replay from: only ever complete, else the store is read."""

from __future__ import annotations

from datetime import UTC, datetime

from orchestrator.events import EventHub
from orchestrator.models import EventType, WorkflowEvent, WorkflowState


def event(sequence: int, kind: EventType = EventType.PHASE_STARTED) -> WorkflowEvent:
    return WorkflowEvent(
        session_id="s", sequence=sequence, type=kind, time=datetime.now(UTC), state=WorkflowState.RUNNING
    )


def test_history_is_replayed_only_while_complete() -> None:
    hub = EventHub()
    hub.publish(event(2))
    assert hub.replay("s", 0) is None  # it did not start at the first event
    hub.publish(event(1, EventType.WORKFLOW_QUEUED))
    hub.publish(event(2))
    hub.publish(event(3))
    assert [e.sequence for e in hub.replay("s", 0) or []] == [1, 2, 3]
    assert [e.sequence for e in hub.replay("s", 2) or []] == [3]
    hub.publish(event(5))  # 4 was written elsewhere
    assert hub.replay("s", 0) is None


def test_history_ends_with_the_workflow() -> None:
    hub = EventHub()
    hub.publish(event(1, EventType.WORKFLOW_QUEUED))
    hub.publish(event(2, EventType.WORKFLOW_COMPLETED))
    assert hub.replay("s", 0) is None
