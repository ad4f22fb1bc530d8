"""Status as a fold over events: one pure function gives the status after each event, so the status a client
polls and the events it watched are the same record and cannot disagree."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from orchestrator.models import (
    EventType,
    PhaseState,
    PhaseStatus,
    TestReport,
    Usage,
    WorkflowError,
    WorkflowErrorCode,
    WorkflowEvent,
    WorkflowResult,
    WorkflowState,
    WorkflowStatus,
)
from orchestrator.outcome import classify_test_report


@dataclass(frozen=True)
class EventDraft:
    """An event before it has a sequence number. `key` makes writing it idempotent: the workflow body re-runs
    after a crash and writes its events again, and a key already stored is not written twice."""

    key: str
    type: EventType
    phase: str = ""
    message: str = ""
    data: dict[str, Any] | None = None
    result: WorkflowResult | None = None
    usage: Usage | None = None


_STATE_AFTER = {
    EventType.WORKFLOW_QUEUED: WorkflowState.QUEUED,
    EventType.WORKFLOW_COMPLETED: WorkflowState.COMPLETED,
    EventType.WORKFLOW_FAILED: WorkflowState.FAILED,
    EventType.WORKFLOW_CANCELLED: WorkflowState.CANCELLED,
}


def apply(
    status: WorkflowStatus, draft: EventDraft, sequence: int, now: datetime
) -> tuple[WorkflowStatus, WorkflowEvent]:
    """Returns the status after `draft` and the stored event. Never called on a finished workflow."""
    phases = list(status.phases)
    index = next((i for i, p in enumerate(phases) if p.name == draft.phase), None)
    update: dict[str, Any] = {"updated_at": now, "last_sequence": sequence}
    state = _STATE_AFTER.get(draft.type, WorkflowState.RUNNING)
    errors = list(status.errors)

    def set_phase(**changes: Any) -> None:
        if index is not None:
            phases[index] = phases[index].model_copy(update=changes)

    match draft.type:
        case EventType.WORKFLOW_STARTED:
            update["started_at"] = status.started_at or now
        case EventType.PHASE_STARTED:
            set_phase(state=PhaseState.RUNNING, started_at=now, error="")
            update["current_phase"] = draft.phase
        case EventType.PHASE_COMPLETED:
            set_phase(state=PhaseState.COMPLETED, finished_at=now)
            update["current_phase"] = ""
            update["phases_completed"] = [*status.phases_completed, draft.phase]
            update["partial_results"] = {**status.partial_results, draft.phase: draft.data or {}}
        case EventType.PHASE_SKIPPED:
            set_phase(state=PhaseState.SKIPPED)
        case EventType.PHASE_FAILED:
            # The workflow's failure, written with it, carries the error into `errors` once.
            set_phase(state=PhaseState.FAILED, finished_at=now, error=draft.message)
            update["current_phase"] = ""
        case EventType.WORKFLOW_COMPLETED:
            update["result"] = draft.result
            update["current_phase"] = ""
            if draft.result is not None and draft.result.test_report is not None:
                problem = _tests_problem(draft.result.test_report, phases)
                if problem is not None:
                    errors.append(problem)
        case EventType.WORKFLOW_FAILED | EventType.WORKFLOW_CANCELLED:
            if draft.message and not any(draft.message in e.message for e in errors):
                errors.append(_failure(status, phases, draft))
            final = PhaseState.CANCELLED if draft.type is EventType.WORKFLOW_CANCELLED else None
            if final is not None:
                phases = [
                    p.model_copy(update={"state": final, "finished_at": p.finished_at or now})
                    if p.state in (PhaseState.PENDING, PhaseState.RUNNING)
                    else p
                    for p in phases
                ]
            update["current_phase"] = ""
        case _:
            pass
    if state.terminal:
        update["finished_at"] = now
    if draft.usage is not None:
        update["usage"] = status.usage.plus(draft.usage)
    update.update(state=state, phases=phases, errors=errors, progress=_progress(phases, state))
    new = status.model_copy(update=update)
    event = WorkflowEvent(
        session_id=status.session_id,
        sequence=sequence,
        type=draft.type,
        time=now,
        phase=draft.phase,
        state=new.state,
        progress=new.progress,
        message=draft.message,
        data=draft.data,
        result=draft.result,
    )
    return new, event


def failure_data(code: WorkflowErrorCode) -> dict[str, Any]:
    """The `data` of a failure event whose cause the fold cannot tell from the event type alone (a budget). Kept
    in the stored event, so the status stays a fold over events and watchers see the same code."""
    return {"code": code.value}


def _failure(status: WorkflowStatus, phases: list[PhaseStatus], draft: EventDraft) -> WorkflowError:
    """The error a WORKFLOW_FAILED or WORKFLOW_CANCELLED event adds, with the phase it happened in."""
    if draft.type is EventType.WORKFLOW_CANCELLED:
        # The phase the cancel interrupted; empty for a workflow cancelled while queued or between phases.
        return WorkflowError(phase=status.current_phase, code=WorkflowErrorCode.CANCELLED.value, message=draft.message)
    # A phase failure is written as PHASE_FAILED then WORKFLOW_FAILED; the latter names no phase of its own.
    failed = draft.phase or next((p.name for p in reversed(phases) if p.state is PhaseState.FAILED), "")
    code = (draft.data or {}).get("code")
    if not isinstance(code, str) or code not in {c.value for c in WorkflowErrorCode}:
        code = WorkflowErrorCode.PHASE_FAILED.value if failed else WorkflowErrorCode.WORKFLOW_FAILED.value
    return WorkflowError(phase=failed, code=code, message=draft.message)


def _tests_problem(report: TestReport, phases: list[PhaseStatus]) -> WorkflowError | None:
    """A completed workflow whose generated tests failed or never ran says so in its errors: the state alone
    (`completed`) would let a client believe the code was tested. Worded by orchestrator.outcome, like the
    completion event and the viewer."""
    outcome = classify_test_report(report)
    if outcome.kind == "passed":
        return None
    code = WorkflowErrorCode.TESTS_FAILED if outcome.kind == "failed" else WorkflowErrorCode.TESTS_NOT_RUN
    phase = next((p.name for p in phases if p.agent_role == "tester"), "")
    return WorkflowError(phase=phase, code=code.value, message=outcome.message)


def _progress(phases: list[PhaseStatus], state: WorkflowState) -> int:
    if state is WorkflowState.COMPLETED:
        return 100
    done = sum(p.state in (PhaseState.COMPLETED, PhaseState.SKIPPED) for p in phases)
    return (100 * done) // max(len(phases), 1)
