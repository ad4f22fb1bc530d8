"""The status fold on its own: events in, status out, no engine, no server. Its errors are what a client reads
to learn why a workflow failed, was cancelled, or completed with generated tests that failed or never ran."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from orchestrator.models import (
    EventType,
    PhaseState,
    PhaseStatus,
    Priority,
    WorkflowError,
    WorkflowErrorCode,
    WorkflowResult,
    WorkflowState,
    WorkflowStatus,
)
from orchestrator.models import TestReport as Report  # not `Test*`: pytest would try to collect it
from orchestrator.progress import EventDraft, apply, failure_data

pytestmark = pytest.mark.timeout(10)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
BUDGET = failure_data(WorkflowErrorCode.BUDGET_EXCEEDED)
ROLES = {
    "requirements": "analyst",
    "design": "architect",
    "implementation": "engineer",
    "tests": "tester",
    "review": "reviewer",
    "documentation": "documenter",
}


def queued() -> WorkflowStatus:
    return WorkflowStatus(
        session_id="s-1",
        workflow_type="full",
        state=WorkflowState.QUEUED,
        priority=Priority.NORMAL,
        phases=[PhaseStatus(name=name, agent_role=role) for name, role in ROLES.items()],
        created_at=T0,
        updated_at=T0,
    )


def fold(*drafts: EventDraft, status: WorkflowStatus | None = None) -> WorkflowStatus:
    status = status or queued()
    for draft in drafts:
        status, _ = apply(status, draft, status.last_sequence + 1, T0 + timedelta(seconds=status.last_sequence + 1))
    return status


def started(*phases: str) -> list[EventDraft]:
    """The workflow's start, then each phase started and completed, the last one left running."""
    drafts = [EventDraft("started", EventType.WORKFLOW_STARTED)]
    for i, phase in enumerate(phases):
        drafts.append(EventDraft(f"phase:{phase}:started", EventType.PHASE_STARTED, phase=phase))
        if i < len(phases) - 1:
            drafts.append(EventDraft(f"phase:{phase}:completed", EventType.PHASE_COMPLETED, phase=phase, data={}))
    return drafts


def completed(report: Report | None) -> list[EventDraft]:
    drafts = started(*ROLES)
    last = list(ROLES)[-1]
    drafts.append(EventDraft(f"phase:{last}:completed", EventType.PHASE_COMPLETED, phase=last, data={}))
    result = WorkflowResult(test_report=report)
    drafts.append(EventDraft("completed", EventType.WORKFLOW_COMPLETED, message="workflow completed", result=result))
    return drafts


def test_a_failed_phase_is_one_error_naming_the_phase() -> None:
    status = fold(
        *started("requirements", "design"),
        EventDraft("phase:design:failed", EventType.PHASE_FAILED, phase="design", message="invalid output 3 times"),
        EventDraft("failed", EventType.WORKFLOW_FAILED, message="phase design failed: invalid output 3 times"),
    )
    assert status.state is WorkflowState.FAILED
    assert status.errors == [
        WorkflowError(phase="design", code="phase_failed", message="phase design failed: invalid output 3 times")
    ]


def test_a_budget_that_runs_out_in_a_phase_says_budget_exceeded() -> None:
    status = fold(
        *started("requirements"),
        EventDraft("phase:requirements:failed", EventType.PHASE_FAILED, phase="requirements", message="token budget"),
        EventDraft("failed", EventType.WORKFLOW_FAILED, message="phase requirements failed: token budget", data=None),
    )
    assert [(e.phase, e.code) for e in status.errors] == [("requirements", "phase_failed")]
    status = fold(
        *started("requirements"),
        EventDraft("phase:requirements:failed", EventType.PHASE_FAILED, phase="requirements", message="token budget"),
        EventDraft("failed", EventType.WORKFLOW_FAILED, message="token budget", data=BUDGET),
    )
    assert [(e.phase, e.code) for e in status.errors] == [("requirements", "budget_exceeded")]


def test_a_budget_exceeded_between_phases_concerns_the_whole_workflow() -> None:
    over = "token budget exceeded: used 45 tokens of 40"
    status = fold(
        *started("requirements", "design"),
        EventDraft("phase:design:completed", EventType.PHASE_COMPLETED, phase="design", data={}),
        EventDraft("failed", EventType.WORKFLOW_FAILED, message=over, data=BUDGET),
    )
    assert status.errors == [WorkflowError(phase="", code="budget_exceeded", message=over)]


def test_the_failure_event_itself_carries_the_code_for_watchers() -> None:
    status = fold(*started("requirements"))
    draft = EventDraft("failed", EventType.WORKFLOW_FAILED, message="m", data=BUDGET)
    _, event = apply(status, draft, status.last_sequence + 1, T0)
    assert event.data == {"code": "budget_exceeded"}


def test_a_failure_outside_any_phase_is_workflow_failed() -> None:
    status = fold(
        EventDraft("started", EventType.WORKFLOW_STARTED),
        EventDraft("failed", EventType.WORKFLOW_FAILED, message="Unknown workflow type: 'gone'"),
    )
    assert status.errors == [WorkflowError(phase="", code="workflow_failed", message="Unknown workflow type: 'gone'")]


def test_an_unknown_code_in_the_event_falls_back_to_the_plain_one() -> None:
    status = fold(
        *started("requirements"),
        EventDraft("phase:requirements:failed", EventType.PHASE_FAILED, phase="requirements", message="x"),
        EventDraft("failed", EventType.WORKFLOW_FAILED, message="phase requirements failed: x", data={"code": "??"}),
    )
    assert [e.code for e in status.errors] == ["phase_failed"]


def test_cancelling_names_the_interrupted_phase_or_none() -> None:
    cancel = EventDraft("cancelled", EventType.WORKFLOW_CANCELLED, message="cancelled by request: changed my mind")
    running = fold(*started("requirements", "design"), cancel)
    assert running.state is WorkflowState.CANCELLED
    assert running.errors == [
        WorkflowError(phase="design", code="cancelled", message="cancelled by request: changed my mind")
    ]
    assert [p.state for p in running.phases][1:3] == [PhaseState.CANCELLED, PhaseState.CANCELLED]
    waiting = fold(EventDraft("queued", EventType.WORKFLOW_QUEUED), cancel)
    assert [(e.phase, e.code) for e in waiting.errors] == [("", "cancelled")]


@pytest.mark.parametrize(
    "report",
    [
        None,  # the tests phase was skipped, or the type has none: nothing to report
        Report(passed=8, failed=0, errors=0, success=True, output="8 passed in 0.10s"),
    ],
)
def test_a_completed_workflow_whose_tests_passed_has_no_errors(report: Report | None) -> None:
    status = fold(*completed(report))
    assert status.state is WorkflowState.COMPLETED and status.progress == 100
    assert status.errors == []


def test_a_completed_workflow_whose_tests_failed_says_so() -> None:
    report = Report(passed=2, failed=1, errors=0, success=False, output="= 1 failed, 2 passed in 0.20s =")
    status = fold(*completed(report))
    assert status.state is WorkflowState.COMPLETED  # the workflow did its work; the tests are what failed
    assert [(e.phase, e.code) for e in status.errors] == [("tests", "tests_failed")]
    assert "failed" in status.errors[0].message


@pytest.mark.parametrize(
    ("report", "reason"),
    [
        # The first-run bug: the sandbox had no pytest, and `0 passed, 0 failed` looked like a clean run.
        (
            Report(passed=0, failed=0, errors=0, success=False, output="/usr/bin/python3: No module named pytest"),
            "No module named pytest",
        ),
        (
            Report(passed=0, failed=0, errors=0, success=False, output="no tests ran in 0.01s"),
            "no tests ran",
        ),
        (  # the sandbox names the reason itself
            Report(success=False, output="...", not_run_reason="pytest is not installed in the sandbox"),
            "pytest is not installed in the sandbox",
        ),
    ],
)
def test_a_completed_workflow_whose_tests_never_ran_says_so(report: Report, reason: str) -> None:
    status = fold(*completed(report))
    assert [(e.phase, e.code) for e in status.errors] == [("tests", "tests_not_run")]
    assert "did not run" in status.errors[0].message and reason in status.errors[0].message


def test_statuses_stored_with_plain_string_errors_still_load() -> None:
    # As today's main stores a status: its JSON, with errors as a list of strings.
    stored = queued().model_dump(mode="json") | {"state": "failed", "errors": ["phase design failed: boom"]}
    status = WorkflowStatus.model_validate_json(json.dumps(stored))
    assert status.errors == [WorkflowError(phase="", code="", message="phase design failed: boom")]


def test_structured_errors_survive_the_stores_json_round_trip() -> None:
    status = fold(
        *started("requirements"),
        EventDraft("cancelled", EventType.WORKFLOW_CANCELLED, message="cancelled by request"),
    )
    again = WorkflowStatus.model_validate_json(status.model_dump_json())
    assert again.errors == status.errors
    assert status.errors == [WorkflowError(phase="requirements", code="cancelled", message="cancelled by request")]
