"""The engine's public vocabulary: pydantic models the transport converts to and from protobuf."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Priority(StrEnum):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    CRITICAL = "critical"


# DBOS runs LOWER numbers first and an unset priority (0) before everything, so every enqueue sets one of these.
QUEUE_PRIORITY = {Priority.CRITICAL: 1, Priority.HIGH: 2, Priority.NORMAL: 3, Priority.LOW: 4}


class WorkflowState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (WorkflowState.COMPLETED, WorkflowState.FAILED, WorkflowState.CANCELLED)


class PhaseState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


class EventType(StrEnum):
    WORKFLOW_QUEUED = "workflow_queued"
    WORKFLOW_STARTED = "workflow_started"
    PHASE_STARTED = "phase_started"
    PHASE_COMPLETED = "phase_completed"
    PHASE_FAILED = "phase_failed"
    PHASE_SKIPPED = "phase_skipped"
    WORKFLOW_COMPLETED = "workflow_completed"
    WORKFLOW_FAILED = "workflow_failed"
    WORKFLOW_CANCELLED = "workflow_cancelled"
    HEARTBEAT = "heartbeat"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_EVENTS


TERMINAL_EVENTS = frozenset({EventType.WORKFLOW_COMPLETED, EventType.WORKFLOW_FAILED, EventType.WORKFLOW_CANCELLED})


class ServingStatus(StrEnum):
    SERVING = "serving"
    DEGRADED = "degraded"
    NOT_SERVING = "not_serving"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class SubmitRequest(_Model):
    requirements: str
    workflow_type: str
    configuration: dict[str, Any] = Field(default_factory=dict)
    priority: Priority = Priority.NORMAL
    request_id: str | None = None
    tenant: str = ""


class SubmitResult(_Model):
    session_id: str
    state: WorkflowState
    message: str
    created_at: datetime
    estimated_completion: datetime | None
    created: bool
    warnings: list[str] = Field(default_factory=list)


class PhaseStatus(_Model):
    name: str
    agent_role: str
    state: PhaseState = PhaseState.PENDING
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str = ""


class GeneratedFile(_Model):
    path: str
    language: str = ""
    content: str = ""


class TestReport(_Model):
    passed: int = 0
    failed: int = 0
    errors: int = 0
    success: bool = False
    output: str = ""
    iterations: int = 0
    # Why no test ran (orchestrator/sandbox.py); empty when they ran. orchestrator.outcome words the outcome.
    not_run_reason: str = ""


class ReviewFinding(_Model):
    severity: str = "info"
    path: str = ""
    message: str = ""


class Review(_Model):
    summary: str = ""
    approved: bool = False
    findings: list[ReviewFinding] = Field(default_factory=list)


class Usage(_Model):
    input_tokens: int = 0
    output_tokens: int = 0
    requests: int = 0
    cost_usd: float = 0.0
    models: list[str] = Field(default_factory=list)

    def plus(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            requests=self.requests + other.requests,
            cost_usd=round(self.cost_usd + other.cost_usd, 10),
            models=sorted(set(self.models) | set(other.models)),
        )


class WorkflowResult(_Model):
    generated_code: list[GeneratedFile] = Field(default_factory=list)
    test_report: TestReport | None = None
    review: Review | None = None
    documentation: str = ""
    usage: Usage = Field(default_factory=Usage)
    outputs: dict[str, Any] = Field(default_factory=dict)


class WorkflowErrorCode(StrEnum):
    """Stable codes of WorkflowError: clients branch on these, so they never change meaning."""

    PHASE_FAILED = "phase_failed"
    BUDGET_EXCEEDED = "budget_exceeded"
    WORKFLOW_FAILED = "workflow_failed"  # a failure outside any phase, e.g. its type vanished from the catalog
    CANCELLED = "cancelled"
    TESTS_FAILED = "tests_failed"
    TESTS_NOT_RUN = "tests_not_run"


class WorkflowError(_Model):
    """An error a workflow met. `phase` is empty when it concerns the whole workflow."""

    phase: str = ""
    code: str = ""
    message: str = ""


class WorkflowStatus(_Model):
    session_id: str
    workflow_type: str
    state: WorkflowState
    priority: Priority
    progress: int = 0
    current_phase: str = ""
    phases_completed: list[str] = Field(default_factory=list)
    phases: list[PhaseStatus] = Field(default_factory=list)
    errors: list[WorkflowError] = Field(default_factory=list)
    partial_results: dict[str, Any] = Field(default_factory=dict)
    result: WorkflowResult | None = None
    usage: Usage = Field(default_factory=Usage)
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    estimated_completion: datetime | None = None
    last_sequence: int = 0
    model: str = ""
    request_id: str = ""
    tenant: str = ""

    @field_validator("errors", mode="before")
    @classmethod
    def _errors_from_strings(cls, value: Any) -> Any:
        # Statuses stored before errors were structured hold plain strings; they must still load.
        if isinstance(value, list):
            return [WorkflowError(message=item) if isinstance(item, str) else item for item in value]
        return value


class WorkflowEvent(_Model):
    session_id: str
    sequence: int
    type: EventType
    time: datetime
    phase: str = ""
    state: WorkflowState
    progress: int = 0
    message: str = ""
    data: dict[str, Any] | None = None
    result: WorkflowResult | None = None


class ListQuery(_Model):
    page_size: int = 50
    page_token: str = ""
    state: WorkflowState | None = None
    workflow_type: str = ""
    tenant: str = ""


class WorkflowSummary(_Model):
    session_id: str
    workflow_type: str
    state: WorkflowState
    priority: Priority
    progress: int
    current_phase: str
    created_at: datetime
    updated_at: datetime


class WorkflowPage(_Model):
    workflows: list[WorkflowSummary]
    next_page_token: str = ""


class DependencyHealth(_Model):
    name: str
    status: ServingStatus
    message: str = ""


class HealthReport(_Model):
    status: ServingStatus
    dependencies: list[DependencyHealth]
    version: str
    replica_id: str
    time: datetime
